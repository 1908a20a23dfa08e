//! The API's optional TCP listener (`api.tcp`), plain or TLS (`api.tls_cert`
//! and `api.tls_key`, rustls).
//!
//! TLS handshakes run in their own tasks, each bounded in time, so a client
//! that stalls its handshake holds up no one else; the listener hands the
//! server only connections whose handshake finished.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::access::ClientAddr;
use crate::config::ApiConfig;

/// Longest a client may take over its TLS handshake.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(3);

/// Most TLS handshakes under way at once; connections beyond are closed.
const MAX_HANDSHAKES: usize = 128;

/// Most TCP connections open at once, and per client address: beyond, a
/// new connection is closed at once. Unauthenticated clients cannot run the
/// daemon out of file descriptors (which its VMs and the Unix socket need),
/// and one client cannot take every slot.
const MAX_CONNECTIONS: usize = 512;
const MAX_CONNECTIONS_PER_CLIENT: usize = 32;

/// Why the TCP listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("cannot read {key} {path}")]
    ReadPem {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("api.tls_cert {0} holds no certificate (PEM `BEGIN CERTIFICATE`)")]
    NoCertificate(PathBuf),
    #[error("api.tls_key does not fit api.tls_cert, or is of a kind rustls cannot use")]
    Tls(#[source] rustls::Error),
    #[error("cannot listen on api.tcp {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The TLS setup of `api.tls_cert` and `api.tls_key`, if both are set.
pub fn tls_acceptor(config: &ApiConfig) -> Result<Option<TlsAcceptor>, TcpError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TcpError::ReadPem {
            key: "api.tls_cert",
            path: cert.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TcpError::NoCertificate(cert.clone()));
    }
    let key = private_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TcpError::Tls)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TcpError::Tls)?;
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TcpError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TcpError::ReadPem {
        key: "api.tls_key",
        path: path.to_owned(),
        source,
    })
}

/// A connection's byte stream, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Open connections, in all and per client address.
#[derive(Debug)]
struct Connections {
    all: Arc<tokio::sync::Semaphore>,
    per_client: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One open connection's place, given back when the connection is dropped.
#[derive(Debug)]
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    client: std::net::IpAddr,
    connections: Arc<Connections>,
}

impl Connections {
    fn take(self: &Arc<Self>, client: std::net::IpAddr) -> Option<Slot> {
        let permit = self.all.clone().try_acquire_owned().ok()?;
        let mut per_client = self.per_client.lock().expect("connections lock");
        let open = per_client.entry(client).or_default();
        if *open >= MAX_CONNECTIONS_PER_CLIENT {
            return None;
        }
        *open += 1;
        Some(Slot {
            _permit: permit,
            client,
            connections: self.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_client = self
            .connections
            .per_client
            .lock()
            .expect("connections lock");
        if let Some(open) = per_client.get_mut(&self.client) {
            *open -= 1;
            if *open == 0 {
                per_client.remove(&self.client);
            }
        }
    }
}

/// A connection's stream holding its [`Slot`].
struct Counted {
    stream: Box<dyn Stream>,
    _slot: Slot,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The TCP listener as the server sees it: connections ready for HTTP,
/// with their peers.
#[derive(Debug)]
pub struct TcpApiListener {
    ready: mpsc::Receiver<(Box<dyn Stream>, SocketAddr)>,
    local: SocketAddr,
    /// Accepts and handshakes; ended when the listener is dropped.
    accepting: tokio::task::JoinHandle<()>,
    tls: bool,
}

impl TcpApiListener {
    /// Listens on `addr`, speaking TLS when `tls` is given.
    pub async fn bind(addr: SocketAddr, tls: Option<TlsAcceptor>) -> Result<Self, TcpError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| TcpError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| TcpError::Bind { addr, source })?;
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let is_tls = tls.is_some();
        let accepting = tokio::spawn(accept_loop(listener, tls, tx));
        Ok(Self {
            ready,
            local,
            accepting,
            tls: is_tls,
        })
    }

    /// The address it listens on (the port chosen, when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether it speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

impl Drop for TcpApiListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    ready: mpsc::Sender<(Box<dyn Stream>, SocketAddr)>,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let connections = Arc::new(Connections {
        all: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        per_client: Default::default(),
    });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: wait for some to
                // be released rather than spin.
                tracing::warn!(error = %err, "cannot accept a TCP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = connections.take(peer.ip()) else {
            tracing::debug!(%peer, "too many TCP connections open: connection closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Some(acceptor) = &tls else {
            let counted = Counted {
                stream: Box::new(stream),
                _slot: slot,
            };
            if ready.send((Box::new(counted), peer)).await.is_err() {
                return;
            }
            continue;
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many TLS handshakes under way: connection closed");
            continue;
        };
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let counted = Counted {
                        stream: Box::new(stream),
                        _slot: slot,
                    };
                    let _ = ready.send((Box::new(counted), peer)).await;
                }
                Ok(Err(err)) => tracing::info!(%peer, error = %err, "TLS handshake failed"),
                Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TcpApiListener {
    type Io = Box<dyn Stream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accept loop only ends when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpApiListener>>
    for ClientAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpApiListener>) -> Self {
        ClientAddr::Tcp(*stream.remote_addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_per_client_and_given_back() {
        let connections = Arc::new(Connections {
            all: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            per_client: Default::default(),
        });
        // Addresses as values only: nothing is sent anywhere.
        let one: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let other: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        let slots: Vec<Slot> = (0..MAX_CONNECTIONS_PER_CLIENT)
            .map(|_| connections.take(one).expect("under the cap"))
            .collect();
        assert!(connections.take(one).is_none(), "over the client's cap");
        let theirs = connections.take(other).expect("another client has room");
        assert_eq!(
            connections.all.available_permits(),
            MAX_CONNECTIONS - MAX_CONNECTIONS_PER_CLIENT - 1
        );
        drop(slots);
        drop(theirs);
        assert_eq!(connections.all.available_permits(), MAX_CONNECTIONS);
        assert!(connections.per_client.lock().unwrap().is_empty());
        assert!(connections.take(one).is_some());
    }
}
