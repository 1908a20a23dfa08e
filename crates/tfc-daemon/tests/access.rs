//! Access control and input limits. The daemon serves its real router on a
//! Unix socket and on TCP (127.0.0.1, port 0) against the fake backend;
//! clients speak HTTP/1.1, plain or TLS, over real connections. The tests
//! that connect over TCP run in a network namespace of their own (network
//! lane: root); the rest are tier 0.

mod common;
#[path = "../../tfc-net/tests/common/mod.rs"]
mod net;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tfc_daemon::access::{self, ClientAddr, RateLimiter};
use tfc_daemon::backend::{Backend, FakeBackend};
use tfc_daemon::config::{Config, ShutdownPolicy};
use tfc_daemon::manager::VmManager;
use tfc_daemon::{DaemonError, Listeners};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789abcdef";

/// A daemon on a Unix socket and a TCP port, stopped when dropped.
struct Daemon {
    socket: std::path::PathBuf,
    tcp: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<Result<(), DaemonError>>>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Serves `extra` configuration (an `[api]` table without `tcp`, which
    /// is added) with the token given as if by `TFC_TOKEN`.
    async fn start(api: &str, dir: tempfile::TempDir) -> Daemon {
        let text = format!("[daemon]\nbackend = \"fake\"\n[api]\ntcp = \"127.0.0.1:0\"\n{api}");
        let config = Config::parse(&text, "test").unwrap();
        let tcp = tfc_daemon::bind_tcp(&config, Some(TOKEN)).await.unwrap();
        let tcp_addr = tcp.as_ref().unwrap().0.local_addr();
        let socket = dir.path().join("run/tfc.sock");
        let unix = tfc_daemon::bind(&socket).unwrap();
        let fake = FakeBackend::new(Duration::from_millis(5));
        let manager = VmManager::in_memory(Backend::Fake(fake), config, dir.path().join("data"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(tfc_daemon::serve_until(
            Listeners { unix, tcp },
            manager,
            ShutdownPolicy::Stop,
            async {
                let _ = stopped.await;
            },
        ));
        Daemon {
            socket,
            tcp: tcp_addr,
            stop: Some(stop),
            served: Some(served),
            _dir: dir,
        }
    }

    /// Stops the daemon and waits until both listeners have closed.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.served.take().unwrap().await.unwrap().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(served) = &self.served {
            served.abort();
        }
    }
}

/// One request over `io`; the answer's status, headers and JSON body.
async fn exchange<I>(
    io: I,
    method: Method,
    path: &str,
    auth: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, Value)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("HTTP handshake");
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "localhost");
    if let Some(auth) = auth {
        request = request.header(header::AUTHORIZATION, auth);
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    let response = sender.send_request(request).await.expect("an answer");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON answer")
    };
    (parts.status, parts.headers, json)
}

async fn over_tcp(addr: SocketAddr, path: &str, auth: Option<&str>) -> (StatusCode, Value) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (status, headers, body) = exchange(stream, Method::GET, path, auth).await;
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    }
    (status, body)
}

#[tokio::test]
#[ignore = "network lane: needs root (TCP inside a network namespace of its own); run by the project's test command"]
async fn tcp_requests_need_the_token_and_the_socket_does_not() {
    if !net::private_netns("tcp_requests_need_the_token_and_the_socket_does_not") {
        return;
    }
    let daemon = Daemon::start("", tempfile::tempdir().unwrap()).await;
    let bearer = format!("Bearer {TOKEN}");
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789abcdef"),
        Some(&format!("Bearer {TOKEN}x")[..]),
        Some(&format!("Basic {TOKEN}")[..]),
        Some("Bearer "),
    ] {
        for path in ["/v1/vms", "/healthz", "/v1/no-such-route"] {
            let (status, body) = over_tcp(daemon.tcp, path, auth).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?} {path}: {body}");
            assert_eq!(body["code"], "unauthorized");
            let message = body["message"].as_str().unwrap();
            assert!(message.contains("Authorization: Bearer"), "{message}");
            assert!(!message.contains(TOKEN), "{message}");
        }
    }
    let (status, body) = over_tcp(daemon.tcp, "/v1/vms", Some(&bearer)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["vms"], Value::Array(vec![]));
    let (status, body) = over_tcp(daemon.tcp, "/healthz", Some(&bearer)).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &Value::from("ok"))
    );
    // The scheme is case-insensitive.
    let (status, _) = over_tcp(daemon.tcp, "/v1/vms", Some(&format!("bearer {TOKEN}"))).await;
    assert_eq!(status, StatusCode::OK);

    // The Unix socket's protection is its mode: no token there.
    let unix = tokio::net::UnixStream::connect(&daemon.socket)
        .await
        .unwrap();
    let (status, _, body) = exchange(unix, Method::GET, "/v1/vms", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Both listeners close on shutdown.
    let (tcp, socket) = (daemon.tcp, daemon.socket.clone());
    daemon.stop().await;
    assert!(tokio::net::TcpStream::connect(tcp).await.is_err());
    assert!(tokio::net::UnixStream::connect(&socket).await.is_err());
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM
/// into `dir`; its DER for the client's trust store.
fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    (cert, key, certified.cert.der().to_vec())
}

fn tls_connector(trusted: Vec<u8>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(trusted))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
#[ignore = "network lane: needs root (TCP inside a network namespace of its own); run by the project's test command"]
async fn the_tcp_listener_speaks_tls_with_a_configured_certificate() {
    if !net::private_netns("the_tcp_listener_speaks_tls_with_a_configured_certificate") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = self_signed(dir.path());
    let api = format!("tls_cert = {cert:?}\ntls_key = {key:?}\n");
    let daemon = Daemon::start(&api, dir).await;
    let connector = tls_connector(der);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();

    let tcp = tokio::net::TcpStream::connect(daemon.tcp).await.unwrap();
    let tls = connector.connect(name.clone(), tcp).await.unwrap();
    let auth = format!("Bearer {TOKEN}");
    let (status, _, body) = exchange(tls, Method::GET, "/v1/vms", Some(&auth)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The token is still required inside TLS.
    let tcp = tokio::net::TcpStream::connect(daemon.tcp).await.unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (status, _, body) = exchange(tls, Method::GET, "/v1/vms", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // A client that does not trust the certificate gets no connection.
    let elsewhere = tempfile::tempdir().unwrap();
    let stranger = tls_connector(self_signed(elsewhere.path()).2);
    let tcp = tokio::net::TcpStream::connect(daemon.tcp).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    assert!(stranger.connect(name, tcp).await.is_err());

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut tcp = tokio::net::TcpStream::connect(daemon.tcp).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /v1/vms HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    daemon.stop().await;
}

#[test]
fn the_socket_is_mode_0600_owned_by_the_daemons_user_in_a_private_dir() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/tfc.sock");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _listener = runtime
        .block_on(async { tfc_daemon::bind(&socket) })
        .unwrap();
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), me);
    let parent = std::fs::metadata(socket.parent().unwrap()).unwrap();
    assert_eq!(parent.permissions().mode() & 0o777, 0o700);
    assert_eq!(parent.uid(), me);
}

fn router(api: &str) -> (axum::Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("[daemon]\nbackend = \"fake\"\n[api]\n{api}");
    let config = Config::parse(&text, "test").unwrap();
    let fake = FakeBackend::new(Duration::from_millis(20));
    let manager = VmManager::in_memory(Backend::Fake(fake), config, dir.path().to_owned());
    (tfc_daemon::api::router(manager), dir)
}

#[tokio::test]
async fn bodies_over_an_endpoints_limit_get_413() {
    let (app, _dir) = router("");
    let small = format!(r#"{{"x": "{}"}}"#, "a".repeat(100_000));
    let exec = format!(r#"{{"argv": ["{}"]}}"#, "a".repeat(6 * 1024 * 1024));
    let cases = [
        (Method::POST, "/v1/vms", &small),
        (Method::PATCH, "/v1/vms/vm-000000000000/rate-limits", &small),
        (Method::POST, "/v1/vms/vm-000000000000/snapshots", &small),
        (Method::PATCH, "/v1/pools/default", &small),
        (Method::POST, "/v1/pools/default/acquire", &small),
        (Method::POST, "/v1/vms/vm-000000000000/exec", &exec),
    ];
    for (method, uri, body) in cases {
        let (status, answer) = common::send(&app, method.clone(), uri, Some(body)).await;
        assert_eq!(
            status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{method} {uri}: {answer}"
        );
        assert_eq!(answer["code"], "too_large", "{method} {uri}");
    }
    // Under the exec limit, the same route reads the body (and refuses the
    // unknown VM).
    let (status, answer) = common::send(
        &app,
        Method::POST,
        "/v1/vms/vm-000000000000/exec",
        Some(r#"{"argv": ["true"]}"#),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
}

/// `request` as if it came from `peer` over TCP.
fn from_peer(peer: &str, uri: &str) -> Request<Body> {
    let mut request = Request::builder().uri(uri).body(Body::empty()).unwrap();
    request
        .extensions_mut()
        .insert(ConnectInfo(ClientAddr::Tcp(peer.parse().unwrap())));
    request
}

#[tokio::test(start_paused = true)]
async fn a_client_over_its_rate_gets_429_then_recovers() {
    let (app, _dir) = router("");
    let app = app.layer(axum::middleware::from_fn_with_state(
        Arc::new(RateLimiter::new(1, 3)),
        access::rate_limit,
    ));
    let status = |peer: &'static str| {
        let app = app.clone();
        async move {
            let response = app.oneshot(from_peer(peer, "/v1/vms")).await.unwrap();
            let retry = response
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.to_str().unwrap().to_owned());
            (response.status(), retry)
        }
    };
    for _ in 0..3 {
        assert_eq!(status("192.0.2.1:5000").await, (StatusCode::OK, None));
    }
    let (code, retry) = status("192.0.2.1:5001").await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry.as_deref(), Some("1"));
    // Another client is not held back.
    assert_eq!(status("192.0.2.2:5000").await.0, StatusCode::OK);
    // The local socket is never rate limited.
    let local = app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/v1/vms")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(local.status(), StatusCode::OK);
    // A second later the client has one request again, and only one.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(status("192.0.2.1:5000").await.0, StatusCode::OK);
    assert_eq!(
        status("192.0.2.1:5000").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(start_paused = true)]
async fn creations_beyond_the_cap_get_503_until_one_finishes() {
    let (app, _dir) = router("max_concurrent_creates = 1\n");
    let create = |app: axum::Router| async move {
        common::send(&app, Method::POST, "/v1/vms", Some(r#"{"wait": true}"#)).await
    };
    // The first create waits for its 20 ms boot on the paused clock.
    let first = tokio::spawn(create(app.clone()));
    tokio::task::yield_now().await;
    while !first.is_finished() && app_count(&app).await == 0 {
        tokio::task::yield_now().await;
    }
    let (status, body) = create(app.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "unavailable");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("api.max_concurrent_creates = 1"),
        "{body}"
    );
    let (status, body) = first.await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = create(app.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// How many VMs the daemon has a record of.
async fn app_count(app: &axum::Router) -> usize {
    let (_, list) = common::send(app, Method::GET, "/v1/vms", None).await;
    list["vms"].as_array().unwrap().len()
}

fn tcp_config(api: &str) -> Result<Config, String> {
    let text = format!("[api]\ntcp = \"127.0.0.1:0\"\n{api}");
    Config::parse(&text, "test").map_err(|e| tfc_core::error_chain(&e))
}

async fn tcp_refusal(api: &str, env_token: Option<&str>) -> String {
    let config = tcp_config(api).unwrap();
    match tfc_daemon::bind_tcp(&config, env_token).await {
        Ok(_) => panic!("{api:?} was accepted"),
        Err(err) => tfc_core::error_chain(&err),
    }
}

#[tokio::test]
async fn access_configurations_that_cannot_be_safe_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // No token at all, or an empty TFC_TOKEN.
    for env in [None, Some("")] {
        let err = tcp_refusal("", env).await;
        assert!(
            err.contains("api.token_file") && err.contains("TFC_TOKEN"),
            "{err}"
        );
    }
    // A token file every user can read.
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let api = format!("token_file = {file:?}\n");
    let err = tcp_refusal(&api, Some(TOKEN)).await;
    assert!(
        err.contains("accessible to every user (mode 0644)") && err.contains("chmod 600"),
        "{err}"
    );
    // The same file, private, is taken.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = tcp_config(&api).unwrap();
    assert!(tfc_daemon::bind_tcp(&config, None).await.unwrap().is_some());
    // A missing token file.
    let api = format!("token_file = {:?}\n", dir.path().join("absent"));
    let err = tcp_refusal(&api, None).await;
    assert!(err.contains("cannot read api.token_file"), "{err}");
    // A short token.
    let err = tcp_refusal("", Some("short")).await;
    assert!(err.contains("too short"), "{err}");
    // A certificate file without a certificate.
    let (cert, key, _) = self_signed(dir.path());
    let api = format!("tls_cert = {key:?}\ntls_key = {key:?}\n");
    let err = tcp_refusal(&api, Some(TOKEN)).await;
    assert!(
        err.contains("api.tls_cert") && err.contains("no certificate"),
        "{err}"
    );
    // A key file without a key.
    let api = format!("tls_cert = {cert:?}\ntls_key = {cert:?}\n");
    let err = tcp_refusal(&api, Some(TOKEN)).await;
    assert!(err.contains("api.tls_key"), "{err}");

    // Refused by the configuration itself, naming the key.
    let cases = [
        (
            format!("tls_key = {key:?}\n"),
            "config key `api.tls_key`: needs api.tls_cert",
        ),
        (
            format!("tls_cert = {cert:?}\n"),
            "config key `api.tls_cert`: needs api.tls_key",
        ),
        (
            "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n".to_owned(),
            "`api.tls_cert`: must be an absolute path",
        ),
        (
            "rate_limit_burst = 0\n".to_owned(),
            "`api.rate_limit_burst`: must be between 1",
        ),
        (
            "max_concurrent_execs = 0\n".to_owned(),
            "`api.max_concurrent_execs`: must be between 1",
        ),
    ];
    for (api, want) in cases {
        let err = tcp_config(&api).unwrap_err();
        assert!(err.contains(want), "{api:?}: {err}");
    }
    let err = Config::parse("[api]\ntcp = \"localhost\"\n", "test").unwrap_err();
    assert!(tfc_core::error_chain(&err).contains("`api.tcp`"), "{err}");
    let err = Config::parse("[api]\ntoken_file = \"/etc/tfc/token\"\n", "test").unwrap_err();
    assert!(
        tfc_core::error_chain(&err).contains("set api.tcp too"),
        "{err}"
    );
    // Without api.tcp there is no listener and no token is needed.
    let config = Config::parse("", "test").unwrap();
    assert!(tfc_daemon::bind_tcp(&config, None).await.unwrap().is_none());
}
