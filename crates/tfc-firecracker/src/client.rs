//! HTTP/1.1 client for Firecracker's API socket. One connection per call: the
//! API server is local, a connect costs microseconds, and a fresh connection never
//! carries state from a call that timed out halfway.

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

/// Client of one Firecracker process's API socket.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
}

impl ApiClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
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
