//! Who may use the API and how much of it: the bearer token of the TCP
//! listener, per-client rate limits, and caps on operations in flight.
//!
//! The Unix socket is protected by its file mode (0600, in a 0700 directory
//! of the daemon's user): whoever can open it is the daemon's user. The TCP
//! listener has no such protection, so every request on it must carry the
//! token, and it is the side that is rate limited. The caps on creations
//! and execs protect the host itself and apply to both sides.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tfc_api::ErrorCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::api::ApiError;
use crate::config::ApiConfig;

/// Shortest token accepted: shorter ones can be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

/// The environment variable that gives the daemon its token when
/// `api.token_file` is not set.
pub const TOKEN_ENV: &str = "TFC_TOKEN";

/// Why the API's access settings cannot be used. Each message names the
/// configuration key or variable at fault and what to do.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("api.tcp is set but there is no token: set api.token_file (a file only the daemon's user can read) or the environment variable {TOKEN_ENV}")]
    NoToken,
    #[error("cannot read api.token_file {path}")]
    ReadToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("api.token_file {path} is accessible to every user (mode {mode:04o}): run `chmod 600 {path}`")]
    TokenFileExposed { path: PathBuf, mode: u32 },
    #[error("the token from {origin} is too short ({len} characters): use at least {MIN_TOKEN_LEN}, e.g. `head -c 32 /dev/urandom | base64`")]
    WeakToken { origin: String, len: usize },
    #[error("the token from {origin} may contain only printable ASCII without spaces")]
    BadToken { origin: String },
}

/// The API token. Only its SHA-256 digest is kept, and comparisons are
/// between digests, in constant time: neither the token's length nor how
/// much of a guess matched shows in the time an answer takes.
#[derive(Clone)]
pub struct Token {
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A token from its text (surrounding whitespace, such as a file's final
    /// newline, removed); `origin` names where it came from in errors.
    pub fn new(text: &str, origin: &str) -> Result<Self, AccessError> {
        let secret = text.trim();
        // Header-safe: what a client can send in `Authorization` as is.
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AccessError::BadToken {
                origin: origin.to_owned(),
            });
        }
        if secret.len() < MIN_TOKEN_LEN {
            return Err(AccessError::WeakToken {
                origin: origin.to_owned(),
                len: secret.len(),
            });
        }
        Ok(Self {
            digest: Sha256::digest(secret.as_bytes()).into(),
        })
    }

    /// Reads the token from `api.token_file`, which must not be readable or
    /// writable by every user.
    pub fn from_file(path: &Path) -> Result<Self, AccessError> {
        use std::os::unix::fs::PermissionsExt;
        let read_err = |source| AccessError::ReadToken {
            path: path.to_owned(),
            source,
        };
        let mode = std::fs::metadata(path)
            .map_err(read_err)?
            .permissions()
            .mode()
            & 0o7777;
        if mode & 0o006 != 0 {
            return Err(AccessError::TokenFileExposed {
                path: path.to_owned(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Self::new(&text, &format!("api.token_file {}", path.display()))
    }

    /// The TCP listener's token: `api.token_file`, else `env_token` (the
    /// value of [`TOKEN_ENV`]); `None` when the API has no TCP listener.
    pub fn for_config(
        config: &ApiConfig,
        env_token: Option<&str>,
    ) -> Result<Option<Self>, AccessError> {
        if config.tcp.is_none() {
            return Ok(None);
        }
        match (&config.token_file, env_token.filter(|t| !t.is_empty())) {
            (Some(path), _) => Self::from_file(path).map(Some),
            (None, Some(text)) => Self::new(text, TOKEN_ENV).map(Some),
            (None, None) => Err(AccessError::NoToken),
        }
    }

    /// Whether `presented` is the token.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        bool::from(digest.ct_eq(&self.digest))
    }
}

/// The value [`TOKEN_ENV`] had when the daemon started; it is no longer in
/// the environment (see [`take_env_token`]). Its `Debug` shows no token.
#[derive(Clone)]
pub struct EnvToken(String);

impl EnvToken {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for EnvToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnvToken(..)")
    }
}

/// Reads [`TOKEN_ENV`] and removes it from this process's environment, so
/// no process the daemon starts (VMMs, the jailer, QEMU, helpers) inherits
/// the API's token. Call it before any other thread of the process starts:
/// changing the environment while another thread may read it is unsound.
pub fn take_env_token() -> Option<EnvToken> {
    let token = std::env::var(TOKEN_ENV).ok();
    std::env::remove_var(TOKEN_ENV);
    token.map(EnvToken)
}

/// `a == b`, in time that depends on neither the contents nor the lengths:
/// both are hashed and the digests compared in constant time.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let a: [u8; 32] = Sha256::digest(a).into();
    let b: [u8; 32] = Sha256::digest(b).into();
    bool::from(a.ct_eq(&b))
}

/// Who sent a request: a TCP peer, or a process on the Unix socket (which
/// is the daemon's own user).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientAddr {
    Tcp(SocketAddr),
    Local,
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAddr::Tcp(addr) => addr.fmt(f),
            ClientAddr::Local => f.write_str("unix socket"),
        }
    }
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for ClientAddr
{
    fn connect_info(_: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        ClientAddr::Local
    }
}

/// The client of `request`, as the listener recorded it; a request that
/// did not come through a listener (a test driving the router) is local.
fn client_of(request: &Request) -> ClientAddr {
    request
        .extensions()
        .get::<ConnectInfo<ClientAddr>>()
        .map_or(ClientAddr::Local, |ConnectInfo(client)| *client)
}

/// The TCP side's token check: the token, and the log of refusals.
#[derive(Debug)]
pub struct TokenGate {
    token: Token,
    refusals: RefusalLog,
}

impl TokenGate {
    pub fn new(token: Token) -> Self {
        Self {
            token,
            refusals: RefusalLog::default(),
        }
    }
}

/// How often a refusal of one client is logged, at most.
pub const REFUSAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Which refusals are logged: at most one line per client (see
/// [`client_key`]) per [`REFUSAL_LOG_INTERVAL`], so a flood of bad requests
/// cannot fill the log; the next line says how many were left out.
#[derive(Debug, Default)]
pub struct RefusalLog {
    clients: Mutex<HashMap<Option<IpAddr>, Refusals>>,
}

#[derive(Debug, Clone, Copy)]
struct Refusals {
    logged_at: Instant,
    /// Refusals since `logged_at` that were not logged.
    suppressed: u64,
}

impl RefusalLog {
    /// Whether a refusal of `client` at `now` is logged: `Some(n)` with the
    /// number of its refusals left out since its last line, or `None` when
    /// this one is left out.
    pub fn admit(&self, client: ClientAddr, now: Instant) -> Option<u64> {
        let key = match client {
            ClientAddr::Tcp(addr) => Some(client_key(addr.ip())),
            ClientAddr::Local => None,
        };
        let mut clients = self.clients.lock().expect("refusal log lock");
        if clients.len() >= MAX_TRACKED_CLIENTS && !clients.contains_key(&key) {
            clients
                .retain(|_, r| now.saturating_duration_since(r.logged_at) < REFUSAL_LOG_INTERVAL);
        }
        match clients.get_mut(&key) {
            Some(r) if now.saturating_duration_since(r.logged_at) < REFUSAL_LOG_INTERVAL => {
                r.suppressed += 1;
                None
            }
            Some(r) => {
                let suppressed = r.suppressed;
                *r = Refusals {
                    logged_at: now,
                    suppressed: 0,
                };
                Some(suppressed)
            }
            None => {
                clients.insert(
                    key,
                    Refusals {
                        logged_at: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

/// Middleware of the TCP side: a request without `Authorization: Bearer
/// <token>` gets 401 and a log line with its peer (never what it sent), at
/// most one per client per second (see [`RefusalLog`]).
pub async fn require_token(
    State(gate): State<Arc<TokenGate>>,
    request: Request,
    next: Next,
) -> Response {
    let token = &gate.token;
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.as_bytes());
    let verdict = match presented {
        None => Err("no Authorization header"),
        Some(value) => match bearer(value) {
            None => Err("not a bearer token"),
            Some(secret) if token.matches(secret) => Ok(()),
            Some(_) => Err("wrong token"),
        },
    };
    if let Err(reason) = verdict {
        let client = client_of(&request);
        if let Some(suppressed) = gate.refusals.admit(client, Instant::now()) {
            tracing::warn!(
                peer = %client,
                method = %request.method(),
                path = %request.uri().path(),
                reason,
                suppressed,
                "refused an API request without a valid token"
            );
        }
        let mut response = ApiError::new(
            ErrorCode::Unauthorized,
            "this API needs its token: send `Authorization: Bearer <token>` (tfc: --token-file, TFC_TOKEN or --token)",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}

/// The secret of an `Authorization: Bearer <secret>` value (scheme
/// case-insensitive, as HTTP has it).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// The client `ip` is counted as: IPv6 clients per /64, which one host
/// usually has whole, so new addresses do not make a new client; an
/// IPv4-mapped address as its IPv4 one.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let seg = v6.segments();
            IpAddr::V6(Ipv6Addr::new(seg[0], seg[1], seg[2], seg[3], 0, 0, 0, 0))
        }
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().expect("checked above")),
        v4 => v4,
    }
}

/// Most clients tracked at once; past it, clients whose buckets are full
/// again (idle ones) are forgotten.
const MAX_TRACKED_CLIENTS: usize = 4096;

/// A token bucket per client: `burst` requests at once, refilled at
/// `per_sec`. IPv6 clients are counted per /64, which one host usually has
/// whole, so new addresses do not buy new buckets.
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `per_sec` > 0 and `burst` >= 1 (the configuration checks both).
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The limiter `config` asks for, if any.
    pub fn for_config(config: &ApiConfig) -> Option<Arc<Self>> {
        (config.rate_limit_per_sec > 0).then(|| {
            Arc::new(Self::new(
                config.rate_limit_per_sec,
                config.rate_limit_burst,
            ))
        })
    }

    /// Takes one request from `ip`'s bucket at `now`; when it is empty, the
    /// whole seconds until it holds one again.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let key = client_key(ip);
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        if buckets.len() >= MAX_TRACKED_CLIENTS && !buckets.contains_key(&key) {
            buckets.retain(|_, b| self.refilled(*b, now) < self.burst);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let tokens = self.refilled(*bucket, now);
        if tokens >= 1.0 {
            *bucket = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            Ok(())
        } else {
            *bucket = Bucket { tokens, at: now };
            Err((((1.0 - tokens) / self.per_sec).ceil() as u64).max(1))
        }
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.per_sec).min(self.burst)
    }
}

/// Middleware of the TCP side: 429 with `Retry-After` once a client has
/// used its burst. Outside the token check, so guessing tokens is limited
/// too.
pub async fn rate_limit(
    State(limiter): State<Arc<RateLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    let ClientAddr::Tcp(addr) = client_of(&request) else {
        return next.run(request).await;
    };
    match limiter.check(addr.ip(), Instant::now()) {
        Ok(()) => next.run(request).await,
        Err(retry_after) => {
            tracing::debug!(peer = %addr, retry_after, "rate limited");
            ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "too many requests from {}: try again in {retry_after} s",
                    addr.ip()
                ),
            )
            .retry_after(retry_after)
            .into_response()
        }
    }
}

/// A cap on one kind of operation in flight, shared by both listeners.
#[derive(Debug, Clone)]
pub struct Cap {
    what: &'static str,
    key: &'static str,
    limit: usize,
    permits: Arc<Semaphore>,
}

impl Cap {
    /// At most `limit` of `what` at once; `key` is the configuration key
    /// that sets it, named in refusals.
    pub fn new(what: &'static str, key: &'static str, limit: u32) -> Self {
        let limit = limit as usize;
        Self {
            what,
            key,
            limit,
            permits: Arc::new(Semaphore::new(limit)),
        }
    }
}

/// Middleware of capped routes: 503 with `Retry-After` when the cap is
/// reached. The permit is held until the answer's body ends, so a streamed
/// exec counts for as long as its command runs.
pub async fn at_most(State(cap): State<Cap>, request: Request, next: Next) -> Response {
    let Ok(permit) = cap.permits.clone().try_acquire_owned() else {
        return ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "{} {} already in flight ({} = {}): try again shortly",
                cap.limit, cap.what, cap.key, cap.limit
            ),
        )
        .retry_after(1)
        .into_response();
    };
    next.run(request).await.map(|body| {
        axum::body::Body::new(Holding {
            body,
            _permit: permit,
        })
    })
}

/// A body that holds a cap's permit until it ends or is dropped.
struct Holding {
    body: axum::body::Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Holding {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokem"));
        assert!(!constant_time_eq(b"secret-token", b"secret-token "));
        assert!(!constant_time_eq(b"secret", b"secret-token"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn a_token_matches_only_itself() {
        let token = Token::new("0123456789abcdef\n", "test").unwrap();
        assert!(token.matches(b"0123456789abcdef"));
        assert!(!token.matches(b"0123456789abcdeF"));
        assert!(!token.matches(b"0123456789abcdef0"));
        assert!(!token.matches(b""));
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    }

    #[test]
    fn weak_and_odd_tokens_are_refused() {
        let err = Token::new("short", "TFC_TOKEN").unwrap_err();
        assert!(
            err.to_string().contains("too short (5 characters)"),
            "{err}"
        );
        let err = Token::new("has a space inside it", "TFC_TOKEN").unwrap_err();
        assert!(err.to_string().contains("printable ASCII"), "{err}");
    }

    #[test]
    fn bearer_values_are_parsed() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
    }

    #[test]
    fn refusals_are_logged_once_per_client_per_interval_with_a_count() {
        let log = RefusalLog::default();
        let client = |addr: &str| ClientAddr::Tcp(addr.parse().unwrap());
        let t0 = Instant::now();
        assert_eq!(log.admit(client("192.0.2.1:1000"), t0), Some(0));
        // A flood from the same host, whatever its ports, is left out...
        for port in 1001..1100 {
            assert_eq!(log.admit(client(&format!("192.0.2.1:{port}")), t0), None);
        }
        // ...but not another host's refusals.
        assert_eq!(log.admit(client("192.0.2.2:1000"), t0), Some(0));
        let later = t0 + REFUSAL_LOG_INTERVAL;
        assert_eq!(log.admit(client("192.0.2.1:2000"), later), Some(99));
        assert_eq!(log.admit(client("192.0.2.1:2001"), later), None);
        // One IPv6 /64 is one client.
        assert_eq!(log.admit(client("[2001:db8::1]:1"), t0), Some(0));
        assert_eq!(log.admit(client("[2001:db8::2]:1"), t0), None);
    }

    #[test]
    fn a_bucket_empties_and_refills() {
        let limiter = RateLimiter::new(2, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.check(ip, t0).unwrap();
        }
        assert_eq!(limiter.check(ip, t0), Err(1));
        // Another client has its own bucket.
        limiter.check(other, t0).unwrap();
        // Half a second refills one request at 2 per second.
        limiter.check(ip, t0 + Duration::from_millis(500)).unwrap();
        assert!(limiter.check(ip, t0 + Duration::from_millis(500)).is_err());
        // A long pause refills up to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            limiter.check(ip, later).unwrap();
        }
        assert!(limiter.check(ip, later).is_err());
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        let limiter = RateLimiter::new(1, 1);
        let t0 = Instant::now();
        limiter.check("2001:db8::1".parse().unwrap(), t0).unwrap();
        assert!(limiter.check("2001:db8::2".parse().unwrap(), t0).is_err());
        limiter
            .check("2001:db8:0:1::1".parse().unwrap(), t0)
            .unwrap();
    }
}
