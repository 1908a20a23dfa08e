//! Typed client of the daemon's REST API (`tfc-api`) over its Unix socket,
//! or over TCP (plain or TLS, with the API's bearer token) when the daemon
//! serves `api.tcp`.
//!
//! Plain requests share one kept-alive HTTP/1.1 connection, used by one
//! request at a time (a client that runs many, like `tfc top` or the
//! benchmarks, saves a connect, an accept and a handshake on each); a kept
//! connection the daemon has closed is replaced before the request is sent.
//! Streamed answers (exec, logs, files) each get a connection of their own.
//! Every answer is kept both decoded and as the JSON the daemon sent, so
//! `--json` prints exactly what the daemon said.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tfc_api::{
    AcquireRequest, AcquireResponse, CreateSnapshotRequest, CreateVmRequest, ErrorBody, ExecEvent,
    ExecRequest, GuestFile, PoolInfo, PoolList, ResizePoolRequest, SnapshotInfo, SnapshotList,
    TemplateInfo, TemplateList, VmInfo, VmList,
};
use tfc_core::{SnapshotId, VmId, VmTypeName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

/// How long an ordinary request may take. The daemon is local and answers
/// from memory, or after a bounded stop; silence this long means it is stuck.
const REQUEST_LIMIT: Duration = Duration::from_secs(120);

/// How long taking a snapshot may take. The VMM writes all of guest memory
/// to disk (up to 64 GiB), which a slow disk does at tens of MiB/s.
const SNAPSHOT_LIMIT: Duration = Duration::from_secs(30 * 60);

/// How long reaching a daemon over TCP may take: the connection and, with
/// TLS, the handshake (which the daemon itself bounds to 3 s). A host that
/// drops packets, or a server that accepts and says nothing, gets this
/// long, not the system's minutes of SYN retries.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// Extra time a waiting create gets beyond its own wait timeout, so the
/// daemon's timeout answer arrives before ours fires.
const WAIT_MARGIN: Duration = Duration::from_secs(30);

/// Longest excerpt of an unexpected answer quoted in an error.
const EXCERPT_CHARS: usize = 200;

/// How long an unused connection is kept for the next request. Well under
/// the daemon's own idle limit, so the daemon does not close it as a
/// request goes out (a request it never received is sent again on a fresh
/// connection; one it may have received cannot be).
const KEEP_IDLE: Duration = Duration::from_secs(5);

/// The sending half of an open HTTP/1.1 connection to the daemon.
type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// An exchange with the daemon that did not produce the expected answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the tfc daemon at {target}: is `tfc serve` running?")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the tfc daemon at {target} did not accept a connection within {} s: is the address right, and the daemon reachable from here?", limit.as_secs())]
    ConnectTimedOut { target: String, limit: Duration },
    #[error("--host {host:?}: {reason}")]
    BadHost { host: String, reason: &'static str },
    #[error("cannot read the CA certificate {path}")]
    ReadCaCert {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the CA certificate {path} cannot be used")]
    BadCaCert {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS with the tfc daemon at {target} failed: is --ca-cert the daemon's certificate (api.tls_cert) or its CA?")]
    Tls {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the tfc daemon at {target} needs its API token: pass --token-file FILE (or TFC_TOKEN_FILE), set TFC_TOKEN, or --token")]
    NoToken { target: String },
    #[error("the tfc daemon at {target} refused the token: it must be the one in the daemon's api.token_file (or its TFC_TOKEN)")]
    WrongToken { target: String },
    #[error("cannot build the request {method} {path}")]
    BuildRequest {
        method: Method,
        path: String,
        #[source]
        source: http::Error,
    },
    #[error("HTTP exchange with the tfc daemon failed")]
    Exchange(#[source] hyper::Error),
    #[error("the tfc daemon did not answer {method} {path} within {} s", limit.as_secs())]
    TimedOut {
        method: Method,
        path: String,
        limit: Duration,
    },
    /// The daemon refused the request and said why.
    #[error("{0}")]
    Refused(Refusal),
    #[error(
        "the tfc daemon answered {status} with a body that is not an error document: {excerpt}"
    )]
    UnexpectedAnswer { status: StatusCode, excerpt: String },
    #[error("cannot encode the request body")]
    Encode(#[source] serde_json::Error),
    #[error("cannot decode the tfc daemon's answer to {method} {path}")]
    Decode {
        method: Method,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the tfc daemon's answer to {method} {path} ended in the middle of a line")]
    Truncated { method: Method, path: String },
    #[error("the API token may contain only printable ASCII without spaces")]
    BadToken,
}

/// A non-2xx answer carrying the daemon's [`ErrorBody`]. Displays as the
/// daemon's message, plus the VM's state when the daemon reported it and the
/// message does not already say it, plus when to try again when the daemon
/// said (`Retry-After`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub body: ErrorBody,
    /// The answer's `Retry-After`, in seconds: trying again after this long
    /// may succeed (a pool with nothing to hand out).
    pub retry_after_secs: Option<u64>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.body.message)?;
        if let Some(state) = self.body.state {
            if !self.body.message.contains(state.as_str()) {
                write!(f, " (state: {state})")?;
            }
        }
        if let Some(secs) = self.retry_after_secs {
            write!(f, "; retry after {secs} s")?;
        }
        Ok(())
    }
}

/// A decoded answer and the JSON document it was decoded from.
#[derive(Debug)]
pub struct Answer<T> {
    pub value: T,
    pub json: serde_json::Value,
}

/// A lifecycle verb with its own endpoint, `POST /v1/vms/{id}/{verb}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmAction {
    Pause,
    Resume,
    Stop,
}

impl VmAction {
    fn as_str(self) -> &'static str {
        match self {
            VmAction::Pause => "pause",
            VmAction::Resume => "resume",
            VmAction::Stop => "stop",
        }
    }
}

/// Where the daemon listens.
#[derive(Clone)]
enum Endpoint {
    Unix(PathBuf),
    Tcp {
        /// `http://host:port` or `https://host:port`, for messages.
        url: String,
        /// `host:port`, to connect to and as the `Host` header.
        authority: String,
        tls: Option<(
            tokio_rustls::TlsConnector,
            rustls_pki_types::ServerName<'static>,
        )>,
    },
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(socket) => write!(f, "Unix({})", socket.display()),
            Endpoint::Tcp { url, .. } => write!(f, "Tcp({url})"),
        }
    }
}

/// A connection's byte stream: a Unix socket, TCP, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The daemon's API, one method per endpoint the CLI uses.
#[derive(Clone)]
pub struct Client {
    endpoint: Endpoint,
    /// The API token, sent as `Authorization: Bearer` over TCP.
    token: Option<String>,
    /// The connection kept after the last plain request, and when it was
    /// left; shared by the clones, taken by one request at a time.
    idle: Arc<std::sync::Mutex<Option<(Sender, std::time::Instant)>>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token.
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    /// A client of the daemon's Unix socket, which needs no token.
    pub fn new(socket: PathBuf) -> Self {
        Self {
            endpoint: Endpoint::Unix(socket),
            token: None,
            idle: Arc::default(),
        }
    }

    /// A client of a daemon's TCP listener: `host` is `http://HOST:PORT`
    /// or `https://HOST:PORT`; https trusts `ca_cert` (PEM: the daemon's
    /// own certificate, or the CA that signed it) and nothing else.
    pub fn remote(
        host: &str,
        token: Option<String>,
        ca_cert: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let bad = |reason| ClientError::BadHost {
            host: host.to_owned(),
            reason,
        };
        let url = host.trim_end_matches('/');
        let (tls, authority) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad(
                "give a scheme and port: http://HOST:PORT or https://HOST:PORT",
            ));
        };
        if authority.contains(['/', '?', '#', '@']) {
            return Err(bad("give only http(s)://HOST:PORT, without a path or user"));
        }
        let (name, port) = authority
            .rsplit_once(':')
            .filter(|(name, _)| !name.is_empty())
            .ok_or_else(|| bad("give the port, e.g. http://127.0.0.1:7700"))?;
        if port.parse::<u16>().is_err() || name.ends_with(':') {
            return Err(bad("give the port, e.g. http://127.0.0.1:7700"));
        }
        let tls = match (tls, ca_cert) {
            (true, Some(ca_cert)) => {
                let name = name.trim_start_matches('[').trim_end_matches(']');
                let server = rustls_pki_types::ServerName::try_from(name.to_owned())
                    .map_err(|_| bad("the host is not a valid DNS name or IP address"))?;
                Some((tls_connector(ca_cert)?, server))
            }
            (true, None) => {
                return Err(bad(
                    "https needs --ca-cert FILE (or TFC_CA_CERT): the daemon's certificate or its CA, PEM",
                ))
            }
            (false, Some(_)) => {
                return Err(bad("--ca-cert is for https:// hosts; this one is http://"))
            }
            (false, None) => None,
        };
        Ok(Self {
            endpoint: Endpoint::Tcp {
                url: url.to_owned(),
                authority: authority.to_owned(),
                tls,
            },
            token,
            idle: Arc::default(),
        })
    }

    /// Where the daemon is, as messages name it.
    fn target(&self) -> String {
        match &self.endpoint {
            Endpoint::Unix(socket) => socket.display().to_string(),
            Endpoint::Tcp { url, .. } => url.clone(),
        }
    }

    /// A fresh connection to the daemon.
    async fn connect(&self) -> Result<Box<dyn Stream>, ClientError> {
        let connect_err = |source| ClientError::Connect {
            target: self.target(),
            source,
        };
        match &self.endpoint {
            Endpoint::Unix(socket) => Ok(Box::new(
                UnixStream::connect(socket).await.map_err(connect_err)?,
            )),
            Endpoint::Tcp { authority, tls, .. } => {
                let reach = async {
                    let stream = TcpStream::connect(authority.as_str())
                        .await
                        .map_err(connect_err)?;
                    let _ = stream.set_nodelay(true);
                    match tls {
                        None => Ok::<Box<dyn Stream>, _>(Box::new(stream)),
                        Some((connector, server)) => {
                            let stream = connector.connect(server.clone(), stream).await.map_err(
                                |source| ClientError::Tls {
                                    target: self.target(),
                                    source,
                                },
                            )?;
                            Ok(Box::new(stream) as Box<dyn Stream>)
                        }
                    }
                };
                tokio::time::timeout(CONNECT_LIMIT, reach)
                    .await
                    .map_err(|_| ClientError::ConnectTimedOut {
                        target: self.target(),
                        limit: CONNECT_LIMIT,
                    })?
            }
        }
    }

    /// Addresses `request` to the daemon: its `Host`, and the token over
    /// TCP.
    fn address<B>(&self, request: &mut Request<B>) -> Result<(), ClientError> {
        let Endpoint::Tcp { authority, .. } = &self.endpoint else {
            return Ok(());
        };
        let headers = request.headers_mut();
        if let Ok(host) = http::HeaderValue::from_str(authority) {
            headers.insert(header::HOST, host);
        }
        if let Some(token) = &self.token {
            let mut value = http::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::BadToken)?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        Ok(())
    }

    /// A non-2xx answer as an error; a 401 says how to pass the token.
    fn refused(&self, status: StatusCode, retry_after: Option<u64>, bytes: &[u8]) -> ClientError {
        if status == StatusCode::UNAUTHORIZED {
            let target = self.target();
            return match self.token {
                None => ClientError::NoToken { target },
                Some(_) => ClientError::WrongToken { target },
            };
        }
        refusal(status, retry_after, bytes)
    }

    /// `POST /v1/vms`. A waiting create may take as long as the boot, so it is
    /// bounded by its own timeout (plus a margin) or, without one, only by the
    /// daemon's boot timeout.
    pub async fn create_vm(
        &self,
        request: &CreateVmRequest,
    ) -> Result<Answer<VmInfo>, ClientError> {
        let limit = match (request.wait, request.wait_timeout_ms) {
            (false, _) => Some(REQUEST_LIMIT),
            (true, Some(ms)) => Some(Duration::from_millis(ms) + WAIT_MARGIN),
            (true, None) => None,
        };
        let body = serde_json::to_vec(request).map_err(ClientError::Encode)?;
        self.call(Method::POST, "/v1/vms".to_owned(), Some(body), limit)
            .await
    }

    /// `GET /v1/vms`.
    pub async fn list_vms(&self) -> Result<Answer<VmList>, ClientError> {
        self.call(Method::GET, "/v1/vms".to_owned(), None, Some(REQUEST_LIMIT))
            .await
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Answer<tfc_api::Health>, ClientError> {
        self.call(
            Method::GET,
            "/healthz".to_owned(),
            None,
            Some(REQUEST_LIMIT),
        )
        .await
    }

    /// `GET /v1/vms/{id}`.
    pub async fn get_vm(&self, id: &VmId) -> Result<Answer<VmInfo>, ClientError> {
        self.call(
            Method::GET,
            format!("/v1/vms/{id}"),
            None,
            Some(REQUEST_LIMIT),
        )
        .await
    }

    /// `PATCH /v1/vms/{id}/rate-limits`.
    pub async fn set_rate_limits(
        &self,
        id: &VmId,
        update: &tfc_core::limits::RateLimits,
    ) -> Result<Answer<VmInfo>, ClientError> {
        let body = serde_json::to_vec(update).map_err(ClientError::Encode)?;
        let path = format!("/v1/vms/{id}/rate-limits");
        self.call(Method::PATCH, path, Some(body), Some(REQUEST_LIMIT))
            .await
    }

    /// `POST /v1/vms/{id}/pause|resume|stop`.
    pub async fn act(&self, id: &VmId, action: VmAction) -> Result<Answer<VmInfo>, ClientError> {
        let path = format!("/v1/vms/{id}/{}", action.as_str());
        self.call(Method::POST, path, None, Some(REQUEST_LIMIT))
            .await
    }

    /// `DELETE /v1/vms/{id}?force=...`.
    pub async fn delete_vm(&self, id: &VmId, force: bool) -> Result<(), ClientError> {
        let path = format!("/v1/vms/{id}?force={force}");
        self.exchange(Method::DELETE, path, None, Some(REQUEST_LIMIT))
            .await
            .map(drop)
    }

    /// `POST /v1/vms/{id}/snapshots`.
    pub async fn snapshot_vm(
        &self,
        id: &VmId,
        request: &CreateSnapshotRequest,
    ) -> Result<Answer<SnapshotInfo>, ClientError> {
        let body = serde_json::to_vec(request).map_err(ClientError::Encode)?;
        let path = format!("/v1/vms/{id}/snapshots");
        self.call(Method::POST, path, Some(body), Some(SNAPSHOT_LIMIT))
            .await
    }

    /// `GET /v1/snapshots`.
    pub async fn list_snapshots(&self) -> Result<Answer<SnapshotList>, ClientError> {
        let path = "/v1/snapshots".to_owned();
        self.call(Method::GET, path, None, Some(REQUEST_LIMIT))
            .await
    }

    /// `GET /v1/snapshots/{id_or_name}`. Names share the id alphabet, so a
    /// [`SnapshotId`] carries either safely into the path.
    pub async fn get_snapshot(
        &self,
        id_or_name: &SnapshotId,
    ) -> Result<Answer<SnapshotInfo>, ClientError> {
        let path = format!("/v1/snapshots/{id_or_name}");
        self.call(Method::GET, path, None, Some(REQUEST_LIMIT))
            .await
    }

    /// `DELETE /v1/snapshots/{id_or_name}?force=...`.
    pub async fn delete_snapshot(
        &self,
        id_or_name: &SnapshotId,
        force: bool,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/snapshots/{id_or_name}?force={force}");
        self.exchange(Method::DELETE, path, None, Some(REQUEST_LIMIT))
            .await
            .map(drop)
    }

    /// `GET /v1/templates`.
    pub async fn list_templates(&self) -> Result<Answer<TemplateList>, ClientError> {
        let path = "/v1/templates".to_owned();
        self.call(Method::GET, path, None, Some(REQUEST_LIMIT))
            .await
    }

    /// `POST /v1/templates/{vm_type}/build`. The daemon boots a VM and
    /// snapshots it before answering; like a waiting create without a timeout,
    /// the call is bounded by the daemon's boot timeout, not by ours.
    pub async fn build_template(
        &self,
        vm_type: &VmTypeName,
    ) -> Result<Answer<TemplateInfo>, ClientError> {
        let path = format!("/v1/templates/{vm_type}/build");
        self.call(Method::POST, path, None, None).await
    }

    /// `GET /v1/network`.
    pub async fn network(&self) -> Result<Answer<tfc_api::NetworkStatus>, ClientError> {
        self.call(
            Method::GET,
            "/v1/network".to_owned(),
            None,
            Some(REQUEST_LIMIT),
        )
        .await
    }

    /// `GET /v1/alerts`.
    pub async fn alerts(&self) -> Result<Answer<tfc_api::AlertList>, ClientError> {
        self.call(
            Method::GET,
            "/v1/alerts".to_owned(),
            None,
            Some(REQUEST_LIMIT),
        )
        .await
    }

    /// `GET /v1/pools`.
    pub async fn list_pools(&self) -> Result<Answer<PoolList>, ClientError> {
        self.call(
            Method::GET,
            "/v1/pools".to_owned(),
            None,
            Some(REQUEST_LIMIT),
        )
        .await
    }

    /// `GET /v1/pools/{vm_type}`.
    pub async fn get_pool(&self, vm_type: &VmTypeName) -> Result<Answer<PoolInfo>, ClientError> {
        let path = format!("/v1/pools/{vm_type}");
        self.call(Method::GET, path, None, Some(REQUEST_LIMIT))
            .await
    }

    /// `PATCH /v1/pools/{vm_type}`.
    pub async fn resize_pool(
        &self,
        vm_type: &VmTypeName,
        request: &ResizePoolRequest,
    ) -> Result<Answer<PoolInfo>, ClientError> {
        let body = serde_json::to_vec(request).map_err(ClientError::Encode)?;
        let path = format!("/v1/pools/{vm_type}");
        self.call(Method::PATCH, path, Some(body), Some(REQUEST_LIMIT))
            .await
    }

    /// `POST /v1/pools/{vm_type}/acquire`. Bounded by the caller's wait (plus
    /// a margin); without one, by the pool's own acquire timeout, which only
    /// the daemon knows.
    pub async fn acquire(
        &self,
        vm_type: &VmTypeName,
        request: &AcquireRequest,
    ) -> Result<Answer<AcquireResponse>, ClientError> {
        let limit = request
            .wait_ms
            .map(|ms| Duration::from_millis(ms) + WAIT_MARGIN);
        let body = serde_json::to_vec(request).map_err(ClientError::Encode)?;
        let path = format!("/v1/pools/{vm_type}/acquire");
        self.call(Method::POST, path, Some(body), limit).await
    }

    /// `POST /v1/vms/{id}/release`.
    pub async fn release_vm(&self, id: &VmId) -> Result<(), ClientError> {
        let path = format!("/v1/vms/{id}/release");
        self.exchange(Method::POST, path, None, Some(REQUEST_LIMIT))
            .await
            .map(drop)
    }

    /// `POST /v1/vms/{id}/exec`: once the command runs, its events as the
    /// daemon streams them. Only the start is bounded in time; the command
    /// may run as long as it likes.
    pub async fn exec(&self, id: &VmId, request: &ExecRequest) -> Result<ExecStream, ClientError> {
        let body = serde_json::to_vec(request).map_err(ClientError::Encode)?;
        let path = format!("/v1/vms/{id}/exec");
        let request = build_request(&Method::POST, &path, Some(body))?;
        let response = self.open(request, Some(REQUEST_LIMIT)).await?;
        Ok(ExecStream {
            body: response.into_body(),
            pending: Vec::new(),
            path,
        })
    }

    /// `PUT /v1/vms/{id}/files?path=...&mode=...`: uploads `size` bytes of
    /// `contents`, which the daemon streams to the guest's agent.
    pub async fn put_file<B>(
        &self,
        id: &VmId,
        guest_path: &str,
        mode: Option<u32>,
        size: u64,
        contents: B,
    ) -> Result<Answer<GuestFile>, ClientError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut path = format!("/v1/vms/{id}/files?path={}", query_value(guest_path));
        if let Some(mode) = mode {
            path.push_str(&format!("&mode={mode:04o}"));
        }
        let request = Request::builder()
            .method(Method::PUT)
            .uri(&path)
            .header(header::HOST, "localhost")
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, size)
            .body(contents)
            .map_err(|source| ClientError::BuildRequest {
                method: Method::PUT,
                path: path.clone(),
                source,
            })?;
        // The answer comes after the whole upload, which takes as long as
        // the file is large.
        let response = self.open(request, None).await?;
        let bytes = body_bytes(response).await?;
        let decode = |source| ClientError::Decode {
            method: Method::PUT,
            path: path.clone(),
            source,
        };
        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(decode)?;
        let value = GuestFile::deserialize(&json).map_err(decode)?;
        Ok(Answer { value, json })
    }

    /// `GET /v1/vms/{id}/files?path=...`: the file's announced size and
    /// mode, and its contents to read as they stream.
    pub async fn get_file(&self, id: &VmId, guest_path: &str) -> Result<Download, ClientError> {
        let path = format!("/v1/vms/{id}/files?path={}", query_value(guest_path));
        let request = build_request(&Method::GET, &path, None)?;
        let response = self.open(request, Some(REQUEST_LIMIT)).await?;
        let headers = response.headers();
        let number = |name: &str, radix| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| u64::from_str_radix(value, radix).ok())
        };
        Ok(Download {
            size: number(header::CONTENT_LENGTH.as_str(), 10),
            mode: number(MODE_HEADER, 8).and_then(|mode| u32::try_from(mode).ok()),
            body: response.into_body(),
        })
    }

    /// `GET /v1/vms/{id}/logs`: the log's text as asked (`tail` lines, or
    /// what came after `since`) and its length after the read, the `since`
    /// of the next.
    pub async fn logs(
        &self,
        id: &VmId,
        vmm: bool,
        tail: Option<usize>,
        since: Option<u64>,
    ) -> Result<(Bytes, u64), ClientError> {
        let mut path = format!(
            "/v1/vms/{id}/logs?source={}",
            if vmm { "vmm" } else { "console" }
        );
        if let Some(tail) = tail {
            path.push_str(&format!("&tail={tail}"));
        }
        if let Some(since) = since {
            path.push_str(&format!("&since={since}"));
        }
        let request = build_request(&Method::GET, &path, None)?;
        let response = self.open(request, Some(REQUEST_LIMIT)).await?;
        let offset = response
            .headers()
            .get(LOG_OFFSET_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        let text = body_bytes(response).await?;
        Ok((text, offset))
    }

    /// Sends `request` on a fresh connection and returns the answer once
    /// its head arrived (within `limit`), its body unread; a non-2xx answer
    /// is read whole and becomes [`ClientError::Refused`].
    async fn open<B>(
        &self,
        mut request: Request<B>,
        limit: Option<Duration>,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (method, path) = (request.method().clone(), request.uri().to_string());
        self.address(&mut request)?;
        let stream = self.connect().await?;
        tracing::debug!(%method, %path, daemon = %self.target(), "request");
        let head = async {
            handshake(stream)
                .await?
                .send_request(request)
                .await
                .map_err(ClientError::Exchange)
        };
        let response =
            match limit {
                Some(limit) => tokio::time::timeout(limit, head).await.map_err(|_| {
                    ClientError::TimedOut {
                        method: method.clone(),
                        path: path.clone(),
                        limit,
                    }
                })??,
                None => head.await?,
            };
        let status = response.status();
        tracing::debug!(%method, %path, %status, "answer head");
        if status.is_success() {
            return Ok(response);
        }
        let (status, retry_after, bytes) = read_whole(response).await?;
        Err(self.refused(status, retry_after, &bytes))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
        limit: Option<Duration>,
    ) -> Result<Answer<T>, ClientError> {
        let bytes = self
            .exchange(method.clone(), path.clone(), body, limit)
            .await?;
        let decode = |source| ClientError::Decode {
            method: method.clone(),
            path: path.clone(),
            source,
        };
        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(decode)?;
        let value = T::deserialize(&json).map_err(decode)?;
        Ok(Answer { value, json })
    }

    /// Sends one request (on the kept connection when there is one); returns
    /// the body of a 2xx answer and turns anything else into
    /// [`ClientError::Refused`].
    async fn exchange(
        &self,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
        limit: Option<Duration>,
    ) -> Result<Bytes, ClientError> {
        let mut request = build_request(&method, &path, body)?;
        self.address(&mut request)?;
        tracing::debug!(%method, %path, daemon = %self.target(), "request");
        let answer = self.send(request);
        let (status, retry_after, bytes) =
            match limit {
                Some(limit) => tokio::time::timeout(limit, answer).await.map_err(|_| {
                    ClientError::TimedOut {
                        method: method.clone(),
                        path: path.clone(),
                        limit,
                    }
                })??,
                None => answer.await?,
            };
        tracing::debug!(%method, %path, %status, bytes = bytes.len(), "answer");
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(self.refused(status, retry_after, &bytes))
        }
    }

    /// Sends `request` and reads its whole answer, on the kept connection if
    /// it is still open, else on a fresh one, which is kept afterwards.
    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Option<u64>, Bytes), ClientError> {
        let kept = self
            .idle
            .lock()
            .expect("idle connection lock")
            .take()
            .filter(|(_, since)| since.elapsed() < KEEP_IDLE);
        let (mut sender, response) = match kept {
            Some((mut sender, _)) => match sender.try_send_request(request).await {
                Ok(response) => (sender, response),
                // The daemon closed it before the request went out: nothing
                // reached it, so the request goes on a fresh connection.
                Err(mut err) => match err.take_message() {
                    Some(request) => self.send_fresh(request).await?,
                    None => return Err(ClientError::Exchange(err.into_error())),
                },
            },
            None => self.send_fresh(request).await?,
        };
        let answer = read_whole(response).await?;
        // Kept only once it can carry another request, and only one: a
        // clone that finds one kept already closes its own.
        if sender.ready().await.is_ok() {
            let mut idle = self.idle.lock().expect("idle connection lock");
            if idle.is_none() {
                *idle = Some((sender, std::time::Instant::now()));
            }
        }
        Ok(answer)
    }

    /// Opens a connection and sends `request` on it.
    async fn send_fresh(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(Sender, http::Response<hyper::body::Incoming>), ClientError> {
        let mut sender = handshake(self.connect().await?).await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(ClientError::Exchange)?;
        Ok((sender, response))
    }
}

/// The header that carries a downloaded guest file's permission bits, in
/// octal (the daemon's `tfc_daemon::api::MODE_HEADER`).
const MODE_HEADER: &str = "x-tfc-file-mode";

/// The header that carries a log's length after a read (the daemon's
/// `tfc_daemon::api::LOG_OFFSET_HEADER`).
const LOG_OFFSET_HEADER: &str = "x-tfc-log-offset";

/// An exec's events, read as the daemon streams them.
#[derive(Debug)]
pub struct ExecStream {
    body: hyper::body::Incoming,
    /// Bytes of the line not complete yet.
    pending: Vec<u8>,
    path: String,
}

impl ExecStream {
    /// The next event and its line as the daemon sent it, or `None` once
    /// the answer ended.
    pub async fn next_event(&mut self) -> Result<Option<(String, ExecEvent)>, ClientError> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..end]).into_owned();
                let event = serde_json::from_str(&line).map_err(|source| ClientError::Decode {
                    method: Method::POST,
                    path: self.path.clone(),
                    source,
                })?;
                return Ok(Some((line, event)));
            }
            match self.body.frame().await {
                Some(frame) => {
                    if let Ok(data) = frame.map_err(ClientError::Exchange)?.into_data() {
                        self.pending.extend_from_slice(&data);
                    }
                }
                None if self.pending.is_empty() => return Ok(None),
                None => {
                    return Err(ClientError::Truncated {
                        method: Method::POST,
                        path: self.path.clone(),
                    })
                }
            }
        }
    }
}

/// A guest file being downloaded.
#[derive(Debug)]
pub struct Download {
    /// Its length, as the daemon announced it.
    pub size: Option<u64>,
    /// Its permission bits, as the daemon announced them.
    pub mode: Option<u32>,
    pub body: hyper::body::Incoming,
}

/// `text` percent-encoded for a query string: everything but unreserved
/// characters and `/` is escaped (`+` too, which a form decoder reads as a
/// space).
fn query_value(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                encoded.push(byte as char)
            }
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

fn build_request(
    method: &Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Request<Full<Bytes>>, ClientError> {
    let builder = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(header::HOST, "localhost")
        .header(header::ACCEPT, "application/json");
    let built = match body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body))),
        None => builder.body(Full::new(Bytes::new())),
    };
    built.map_err(|source| ClientError::BuildRequest {
        method: method.clone(),
        path: path.to_owned(),
        source,
    })
}

/// Sends `request` and returns the answer's status, its `Retry-After` (whole
/// seconds; the HTTP-date form is not used by the daemon) and its body.
/// Starts HTTP/1.1 on `stream`. The connection task drives the socket; its
/// failures also fail `send_request`, which is where they are reported.
async fn handshake<B>(
    stream: Box<dyn Stream>,
) -> Result<hyper::client::conn::http1::SendRequest<B>, ClientError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ClientError::Exchange)?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "connection to the daemon ended with an error");
        }
    });
    Ok(sender)
}

/// An answer read whole: its status, its `Retry-After` in seconds, its body.
async fn read_whole(
    response: http::Response<hyper::body::Incoming>,
) -> Result<(StatusCode, Option<u64>, Bytes), ClientError> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok());
    Ok((status, retry_after, body_bytes(response).await?))
}

/// The whole body of `response`.
async fn body_bytes(response: http::Response<hyper::body::Incoming>) -> Result<Bytes, ClientError> {
    Ok(response
        .into_body()
        .collect()
        .await
        .map_err(ClientError::Exchange)?
        .to_bytes())
}

/// A TLS client that trusts only the certificates in the PEM file `ca_cert`.
fn tls_connector(ca_cert: &Path) -> Result<tokio_rustls::TlsConnector, ClientError> {
    use rustls_pki_types::pem::PemObject;
    let read_err = |source| ClientError::ReadCaCert {
        path: ca_cert.to_owned(),
        source,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca_cert).map_err(read_err)? {
        roots
            .add(cert.map_err(read_err)?)
            .map_err(|source| ClientError::BadCaCert {
                path: ca_cert.to_owned(),
                source,
            })?;
    }
    if roots.is_empty() {
        return Err(read_err(rustls_pki_types::pem::Error::NoItemsFound));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| ClientError::BadCaCert {
            path: ca_cert.to_owned(),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A non-2xx answer: the daemon's [`ErrorBody`] if it sent one.
fn refusal(status: StatusCode, retry_after_secs: Option<u64>, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => ClientError::Refused(Refusal {
            body,
            retry_after_secs,
        }),
        Err(_) => {
            let text = String::from_utf8_lossy(bytes);
            let mut excerpt: String = text.trim().chars().take(EXCERPT_CHARS).collect();
            if text.trim().chars().count() > EXCERPT_CHARS {
                excerpt.push('…');
            }
            if excerpt.is_empty() {
                excerpt.push_str("(empty)");
            }
            ClientError::UnexpectedAnswer { status, excerpt }
        }
    }
}

#[cfg(test)]
mod tests {
    use tfc_api::ErrorCode;
    use tfc_core::VmState;

    use super::*;

    #[test]
    fn a_refusal_adds_the_state_only_when_the_message_lacks_it() {
        let body = br#"{"code":"invalid_state","message":"VM busy","state":"paused"}"#;
        assert_eq!(
            refusal(StatusCode::CONFLICT, None, body).to_string(),
            "VM busy (state: paused)"
        );
    }

    #[test]
    fn a_refusal_reads_as_the_daemons_message_and_state() {
        let body = br#"{"code":"invalid_state","message":"cannot pause VM vm-1: it is stopped","state":"stopped"}"#;
        let err = refusal(StatusCode::CONFLICT, None, body);
        assert_eq!(err.to_string(), "cannot pause VM vm-1: it is stopped");
        match err {
            ClientError::Refused(r) => {
                assert_eq!(r.body.code, ErrorCode::InvalidState);
                assert_eq!(r.body.state, Some(VmState::Stopped));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A daemon stand-in on a Unix socket that answers every request with an
    /// empty pool list and counts the connections it accepts; with
    /// `close_each` it closes each connection after one answer, as a daemon
    /// closing idle connections does.
    async fn counting_server(
        socket: &Path,
        close_each: bool,
    ) -> Arc<std::sync::atomic::AtomicUsize> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const ANSWER: &[u8] =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n{\"pools\":[]}";
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        head.drain(..end + 4);
                        stream.write_all(ANSWER).await.unwrap();
                        if close_each {
                            return;
                        }
                    }
                });
            }
        });
        accepted
    }

    #[tokio::test]
    async fn plain_requests_share_one_kept_connection() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let accepted = counting_server(&socket, false).await;
        let client = Client::new(socket);
        for _ in 0..3 {
            assert!(client.list_pools().await.unwrap().value.pools.is_empty());
        }
        // A clone shares the kept connection.
        assert!(client.clone().list_pools().await.is_ok());
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_kept_connection_the_daemon_closed_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let accepted = counting_server(&socket, true).await;
        let client = Client::new(socket);
        for _ in 0..3 {
            assert!(client.list_pools().await.unwrap().value.pools.is_empty());
            // Time for the close to reach the client, as between a daemon's
            // idle close and a request much later.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn a_refusal_without_state_is_just_the_message() {
        let err = refusal(
            StatusCode::NOT_FOUND,
            None,
            br#"{"code":"not_found","message":"no VM with id vm-000000000000"}"#,
        );
        assert_eq!(err.to_string(), "no VM with id vm-000000000000");
    }

    #[test]
    fn a_refusal_with_retry_after_says_when_to_try_again() {
        let body = br#"{"code":"unavailable","message":"no VM of type small could be handed out within 50 ms: no prewarmed VM waiting (0 starting)"}"#;
        let err = refusal(StatusCode::SERVICE_UNAVAILABLE, Some(3), body);
        assert_eq!(
            err.to_string(),
            "no VM of type small could be handed out within 50 ms: no prewarmed VM waiting \
             (0 starting); retry after 3 s"
        );
        match err {
            ClientError::Refused(r) => assert_eq!(r.retry_after_secs, Some(3)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_non_json_error_is_quoted_briefly() {
        let err = refusal(StatusCode::BAD_GATEWAY, None, "x".repeat(500).as_bytes());
        let text = err.to_string();
        assert!(
            text.starts_with("the tfc daemon answered 502 Bad Gateway"),
            "{text}"
        );
        assert!(text.ends_with('…') && text.len() < 300, "{text}");
        let empty = refusal(StatusCode::INTERNAL_SERVER_ERROR, None, b"").to_string();
        assert!(empty.ends_with("(empty)"), "{empty}");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("/etc/hosts"), "/etc/hosts");
        assert_eq!(
            query_value("/tmp/a b&c=d+e%f#g"),
            "/tmp/a%20b%26c%3Dd%2Be%25f%23g"
        );
        assert_eq!(query_value("/tmp/é"), "/tmp/%C3%A9");
    }

    #[test]
    fn hosts_need_a_scheme_and_a_port_and_https_a_ca() {
        let err =
            |host: &str, ca: Option<&Path>| Client::remote(host, None, ca).unwrap_err().to_string();
        assert!(err("127.0.0.1:7700", None).contains("give a scheme"));
        assert!(err("http://127.0.0.1", None).contains("give the port"));
        assert!(err("http://127.0.0.1:x", None).contains("give the port"));
        assert!(err("http://h:1/v1", None).contains("without a path"));
        assert!(err("https://127.0.0.1:7700", None).contains("needs --ca-cert"));
        let ca = Path::new("/ca.pem");
        assert!(err("http://127.0.0.1:7700", Some(ca)).contains("for https://"));
        let err = err(
            "https://127.0.0.1:7700",
            Some(Path::new("/nonexistent/ca.pem")),
        );
        assert!(err.contains("cannot read the CA certificate"), "{err}");
        for host in [
            "http://127.0.0.1:7700",
            "http://[::1]:7700/",
            "http://tfc.example:80",
        ] {
            let client = Client::remote(host, Some("t".repeat(20)), None).unwrap();
            assert_eq!(client.target(), host.trim_end_matches('/'));
            assert!(!format!("{client:?}").contains("tttt"), "{client:?}");
        }
    }

    /// A daemon serving TLS on 127.0.0.1 (port 0) with a fresh self-signed
    /// certificate; its URL, the certificate's file, and the daemon's stop.
    async fn tls_daemon(
        dir: &Path,
        token: &str,
    ) -> (String, PathBuf, tokio::sync::oneshot::Sender<()>) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
        let text = format!(
            "[daemon]\nbackend = \"fake\"\n[api]\ntcp = \"127.0.0.1:0\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n"
        );
        let config = tfc_daemon::config::Config::parse(&text, "test").unwrap();
        let tcp = tfc_daemon::bind_tcp(&config, Some(token)).await.unwrap();
        let port = tcp.as_ref().unwrap().0.local_addr().port();
        let unix = tfc_daemon::bind(&dir.join("run/tfc.sock")).unwrap();
        let fake = tfc_daemon::backend::FakeBackend::new(Duration::from_millis(5));
        let manager = tfc_daemon::manager::VmManager::in_memory(
            tfc_daemon::backend::Backend::Fake(fake),
            config,
            dir.join("data"),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(tfc_daemon::serve_until(
            tfc_daemon::Listeners { unix, tcp },
            manager,
            tfc_daemon::config::ShutdownPolicy::Stop,
            async {
                let _ = stopped.await;
            },
        ));
        (format!("https://localhost:{port}"), cert, stop)
    }

    #[tokio::test]
    #[ignore = "network lane: needs root (TCP inside a network namespace of its own); run by the project's test command"]
    async fn a_tcp_daemon_is_reached_over_tls_with_its_token() {
        if !crate::net_testing::private_netns("a_tcp_daemon_is_reached_over_tls_with_its_token") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let token = "cli-test-token-0123456789";
        let (url, cert, _stop) = tls_daemon(dir.path(), token).await;
        let client = Client::remote(&url, Some(token.to_owned()), Some(&cert)).unwrap();
        let vms = client.list_vms().await.unwrap();
        assert!(vms.value.vms.is_empty());
        let created = client
            .create_vm(&CreateVmRequest {
                wait: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(created.value.state, tfc_core::VmState::Ready);

        let anonymous = Client::remote(&url, None, Some(&cert)).unwrap();
        let err = anonymous.list_vms().await.unwrap_err();
        assert!(matches!(err, ClientError::NoToken { .. }), "{err:?}");
        assert!(err.to_string().contains("--token-file"), "{err}");
        let wrong = Client::remote(&url, Some("x".repeat(24)), Some(&cert)).unwrap();
        let err = wrong.list_vms().await.unwrap_err();
        assert!(matches!(err, ClientError::WrongToken { .. }), "{err:?}");
        assert!(!err.to_string().contains(&"x".repeat(24)), "{err}");

        // A certificate the client was not told to trust.
        let other = tempfile::tempdir().unwrap();
        let stranger = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let stranger_pem = other.path().join("other.pem");
        std::fs::write(&stranger_pem, stranger.cert.pem()).unwrap();
        let distrustful =
            Client::remote(&url, Some(token.to_owned()), Some(&stranger_pem)).unwrap();
        let err = distrustful.list_vms().await.unwrap_err();
        assert!(matches!(err, ClientError::Tls { .. }), "{err:?}");
    }

    /// A server that accepts the connection and never answers the TLS
    /// handshake: the client gives up after its limit (on tokio's paused
    /// clock, which moves on while nothing else can happen) and says so.
    #[tokio::test]
    #[ignore = "network lane: needs root (TCP inside a network namespace of its own); run by the project's test command"]
    async fn a_server_that_never_answers_the_handshake_is_given_up_on() {
        if !crate::net_testing::private_netns(
            "a_server_that_never_answers_the_handshake_is_given_up_on",
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, cert.cert.pem()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://localhost:{}",
            listener.local_addr().unwrap().port()
        );
        let silent = tokio::spawn(async move {
            // Held open, never written to.
            let (_stream, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
        });
        tokio::time::pause();
        let client = Client::remote(&url, Some("t".repeat(24)), Some(&pem)).unwrap();
        let err = client.list_vms().await.unwrap_err();
        assert!(
            matches!(err, ClientError::ConnectTimedOut { limit, .. } if limit == CONNECT_LIMIT),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("did not accept a connection within 10 s"),
            "{err}"
        );
        silent.abort();
    }

    #[tokio::test]
    async fn a_missing_socket_says_to_start_the_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("absent.sock");
        let err = Client::new(socket.clone()).list_vms().await.unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot reach the tfc daemon at {}: is `tfc serve` running?",
                socket.display()
            )
        );
    }
}
