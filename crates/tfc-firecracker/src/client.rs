//! HTTP/1.1 client for Firecracker's API socket. One connection per call: the
//! API server is local, a connect costs microseconds, and a fresh connection never
//! carries state from a call that timed out halfway.
//!
//! A jailed VMM's socket is in its chroot, which the jail's user controls:
//! whatever listens at that path is not trusted until the kernel says who it
//! is. A client given the VMM's identity ([`ApiClient::with_peer`]) checks
//! every connection's peer credentials (`SO_PEERCRED`: the pid and uid of
//! the process that listened) and refuses any other server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use crate::models::{
    ActionType, BootSource, Drive, FaultBody, FirecrackerVersion, InstanceActionInfo, InstanceInfo,
    Logger, MachineConfiguration, Metrics, NetworkInterface, PartialDrive, PartialNetworkInterface,
    SnapshotCreateParams, SnapshotLoadParams, Vm, VmRunState, Vsock,
};

/// Default bound on one API call. Snapshot calls get their own, longer bound.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Writing a snapshot of a large guest can take seconds.
pub const SNAPSHOT_CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A failed call to the Firecracker API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot connect to Firecracker API socket {socket}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("refused the Firecracker API socket {socket}: it is served by {found}, not by the VMM (pid {expected_pid}, uid {expected_uid}); something in the VM's jail replaced the socket")]
    WrongPeer {
        socket: PathBuf,
        found: String,
        expected_pid: u32,
        expected_uid: u32,
    },
    #[error("HTTP exchange with Firecracker failed on {method} {path}")]
    Http {
        method: Method,
        path: String,
        #[source]
        source: hyper::Error,
    },
    #[error("Firecracker did not answer {method} {path} within {timeout:?}")]
    Timeout {
        method: Method,
        path: String,
        timeout: Duration,
    },
    /// Firecracker refused the call; `message` is its `fault_message`.
    #[error("Firecracker refused {method} {path} ({status}): {message}")]
    Fault {
        method: Method,
        path: String,
        status: StatusCode,
        message: String,
    },
    #[error("cannot encode the body of {path}")]
    Encode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot decode Firecracker's answer to {path}")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The process that must be serving an API socket: the VMM, by its pid as
/// this process sees it, and the user it runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedPeer {
    pub pid: u32,
    pub uid: u32,
}

/// Client of one Firecracker process's API socket.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    /// When set, every connection's peer must be this process.
    peer: Option<ExpectedPeer>,
}

impl ApiClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            peer: None,
        }
    }

    /// The same client, refusing every connection not served by `peer`.
    pub fn with_peer(self, peer: ExpectedPeer) -> Self {
        Self {
            peer: Some(peer),
            ..self
        }
    }

    /// Fails unless `stream`'s peer is the expected process (when there is
    /// one). The credentials are the listener's, fixed by the kernel when
    /// it listened: a process cannot claim another's.
    fn check_peer(&self, stream: &UnixStream) -> Result<(), ApiError> {
        let Some(expected) = self.peer else {
            return Ok(());
        };
        let cred = stream.peer_cred().map_err(|source| ApiError::Connect {
            socket: self.socket.clone(),
            source,
        })?;
        let pid = cred.pid().and_then(|p| u32::try_from(p).ok());
        if pid == Some(expected.pid) && cred.uid() == expected.uid {
            return Ok(());
        }
        let found = match pid {
            Some(pid) => format!("pid {pid}, uid {}", cred.uid()),
            None => format!("an unknown pid, uid {}", cred.uid()),
        };
        Err(ApiError::WrongPeer {
            socket: self.socket.clone(),
            found,
            expected_pid: expected.pid,
            expected_uid: expected.uid,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request and returns the body of a 2xx answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Bytes, ApiError> {
        let exchange = self.exchange(method.clone(), path, body);
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::Timeout {
                method,
                path: path.to_owned(),
                timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ApiError> {
        let http_err = |source| ApiError::Http {
            method: method.clone(),
            path: path.to_owned(),
            source,
        };
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ApiError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        self.check_peer(&stream)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_err)?;
        // The connection task ends when the exchange is over or the socket closes.
        tokio::spawn(conn);

        let has_body = body.is_some();
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::HOST, "localhost")
            .header(http::header::ACCEPT, "application/json");
        if has_body {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("request parts are valid by construction");
        let response = sender.send_request(request).await.map_err(http_err)?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(http_err)?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        let message = serde_json::from_slice::<FaultBody>(&bytes)
            .map(|f| f.fault_message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        Err(ApiError::Fault {
            method,
            path: path.to_owned(),
            status,
            message,
        })
    }

    async fn send<T: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: &T,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        let body = serde_json::to_vec(body).map_err(|source| ApiError::Encode {
            path: path.to_owned(),
            source,
        })?;
        self.call(method, path, Some(body), timeout).await.map(drop)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let bytes = self
            .call(Method::GET, path, None, DEFAULT_CALL_TIMEOUT)
            .await?;
        serde_json::from_slice(&bytes).map_err(|source| ApiError::Decode {
            path: path.to_owned(),
            source,
        })
    }

    /// Allowed before boot.
    pub async fn put_boot_source(&self, body: &BootSource) -> Result<(), ApiError> {
        self.send(Method::PUT, "/boot-source", body, DEFAULT_CALL_TIMEOUT)
            .await
    }

    /// Allowed before boot.
    pub async fn put_machine_config(&self, body: &MachineConfiguration) -> Result<(), ApiError> {
        self.send(Method::PUT, "/machine-config", body, DEFAULT_CALL_TIMEOUT)
            .await
    }

    /// Allowed before boot.
    pub async fn put_drive(&self, body: &Drive) -> Result<(), ApiError> {
        let path = format!("/drives/{}", body.drive_id);
        self.send(Method::PUT, &path, body, DEFAULT_CALL_TIMEOUT)
            .await
    }

    /// Allowed before boot.
    pub async fn put_network_interface(&self, body: &NetworkInterface) -> Result<(), ApiError> {
        let path = format!("/network-interfaces/{}", body.iface_id);
        self.send(Method::PUT, &path, body, DEFAULT_CALL_TIMEOUT)
            .await
    }

    /// Allowed after boot: changes a drive's rate limiter.
    pub async fn patch_drive(&self, body: &PartialDrive) -> Result<(), ApiError> {
        let path = format!("/drives/{}", body.drive_id);
        self.send(Method::PATCH, &path, body, DEFAULT_CALL_TIMEOUT)
            .await
    }

    /// Allowed after boot: changes an interface's rate limiters.
    pub async fn patch_network_interface(
        &self,
        body: &PartialNetworkInterface,
    ) -> Result<(), ApiError> {
        let path = format!("/network-interfaces/{}", body.iface_id);
        self.send(Method::PATCH, &path, body, DEFAULT_CALL_TIMEOUT)
            .await
    }

    /// Allowed before boot.
    pub async fn put_vsock(&self, body: &Vsock) -> Result<(), ApiError> {
        self.send(Method::PUT, "/vsock", body, DEFAULT_CALL_TIMEOUT)
            .await
    }

    /// Allowed before boot.
    pub async fn put_logger(&self, body: &Logger) -> Result<(), ApiError> {
        self.send(Method::PUT, "/logger", body, DEFAULT_CALL_TIMEOUT)
            .await
    }

    /// Allowed before boot.
    pub async fn put_metrics(&self, body: &Metrics) -> Result<(), ApiError> {
        self.send(Method::PUT, "/metrics", body, DEFAULT_CALL_TIMEOUT)
            .await
    }

    async fn action(&self, action_type: ActionType) -> Result<(), ApiError> {
        let body = InstanceActionInfo { action_type };
        self.send(Method::PUT, "/actions", &body, DEFAULT_CALL_TIMEOUT)
            .await
    }

    /// Starts the guest. Allowed once, after configuration.
    pub async fn instance_start(&self) -> Result<(), ApiError> {
        self.action(ActionType::InstanceStart).await
    }

    /// Asks the guest to reboot (x86: needs the guest's i8042 driver).
    pub async fn send_ctrl_alt_del(&self) -> Result<(), ApiError> {
        self.action(ActionType::SendCtrlAltDel).await
    }

    pub async fn flush_metrics(&self) -> Result<(), ApiError> {
        self.action(ActionType::FlushMetrics).await
    }

    /// Allowed on a running guest.
    pub async fn pause(&self) -> Result<(), ApiError> {
        self.set_run_state(VmRunState::Paused).await
    }

    /// Allowed on a paused guest.
    pub async fn resume(&self) -> Result<(), ApiError> {
        self.set_run_state(VmRunState::Resumed).await
    }

    async fn set_run_state(&self, state: VmRunState) -> Result<(), ApiError> {
        self.send(Method::PATCH, "/vm", &Vm { state }, DEFAULT_CALL_TIMEOUT)
            .await
    }

    /// Allowed on a paused guest.
    pub async fn create_snapshot(&self, body: &SnapshotCreateParams) -> Result<(), ApiError> {
        self.send(Method::PUT, "/snapshot/create", body, SNAPSHOT_CALL_TIMEOUT)
            .await
    }

    /// Allowed only on a fresh process, before any configuration.
    pub async fn load_snapshot(&self, body: &SnapshotLoadParams) -> Result<(), ApiError> {
        self.send(Method::PUT, "/snapshot/load", body, SNAPSHOT_CALL_TIMEOUT)
            .await
    }

    pub async fn describe_instance(&self) -> Result<InstanceInfo, ApiError> {
        self.get("/").await
    }

    /// `GET /vm/config`: the whole configuration as the VMM holds it now
    /// (devices with their rate limiters), as JSON.
    pub async fn vm_config(&self) -> Result<serde_json::Value, ApiError> {
        self.get("/vm/config").await
    }

    pub async fn version(&self) -> Result<FirecrackerVersion, ApiError> {
        self.get("/version").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves `/` on a socket in this process: answers every connection
    /// with one `GET /` answer, as Firecracker would.
    fn serve(socket: &Path) -> tokio::task::JoinHandle<()> {
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let _ = stream.read(&mut request).await;
                    let body = r#"{"id":"vm","state":"Running","vmm_version":"1.12.1","app_name":"Firecracker"}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        })
    }

    fn own_uid() -> u32 {
        // SAFETY: geteuid only reads this process's credentials.
        unsafe { libc::geteuid() }
    }

    #[tokio::test]
    async fn a_socket_served_by_the_expected_process_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let server = serve(&socket);
        let me = ExpectedPeer {
            pid: std::process::id(),
            uid: own_uid(),
        };
        let api = ApiClient::new(&socket).with_peer(me);
        let info = api.describe_instance().await.unwrap();
        assert_eq!(info.id, "vm");
        server.abort();
    }

    /// The socket is served by this test process, not by the process the
    /// client expects (a real other process, here `sleep`), or by the right
    /// pid under another user: both are refused before a byte is sent.
    #[tokio::test]
    async fn a_socket_served_by_another_process_or_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let server = serve(&socket);
        let mut other = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let cases = [
            ExpectedPeer {
                pid: other.id(),
                uid: own_uid(),
            },
            ExpectedPeer {
                pid: std::process::id(),
                uid: own_uid().wrapping_add(1),
            },
        ];
        for expected in cases {
            let api = ApiClient::new(&socket).with_peer(expected);
            let err = api.describe_instance().await.unwrap_err();
            let message = err.to_string();
            assert!(
                matches!(err, ApiError::WrongPeer { .. })
                    && message.contains(&format!("served by pid {}", std::process::id()))
                    && message.contains(&format!("not by the VMM (pid {}", expected.pid)),
                "{message}"
            );
        }
        // Without an expected peer (a VMM not confined), it is used.
        assert!(ApiClient::new(&socket).describe_instance().await.is_ok());
        other.kill().unwrap();
        other.wait().unwrap();
        server.abort();
    }
}
