//! Connections: reading frames, routing them to requests by id, writing
//! replies from one writer task.
//!
//! Flow control: every frame to the host goes through one bounded channel per
//! connection ([`OUTBOX_FRAMES`]) to the writer task, so a host that reads
//! slowly makes the senders (exec output pumps, file readers) wait instead of
//! the agent buffering; the memory held per connection is bounded by
//! `OUTBOX_FRAMES * CHUNK` plus the kernel's socket buffer. Frames from the
//! host for a running request (stdin, file contents) go through a bounded
//! channel per request; when one is full the reader waits, which holds back
//! the whole connection (head-of-line blocking). A host must therefore read
//! replies while it writes data, as with any pair of pipes.
//!
//! Id 0 is reserved for errors about the connection itself (a frame that
//! could not be read); requests under id 0 are refused.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tfc_agent_proto::nonblocking::{AsyncFrameReader, AsyncFrameWriter};
use tfc_agent_proto::{DataKind, ErrorCode, Frame, FrameBody, FrameError, Reply, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::{exec, files, network, system, vsock};

/// Frames waiting for the writer, per connection.
pub const OUTBOX_FRAMES: usize = 16;

/// Data frames from the host waiting for one request.
pub const INBOX_FRAMES: usize = 16;

/// How long a `shutdown` waits for its `done` to reach the connection
/// before the power-off starts anyway (a host that stopped reading must not
/// keep the guest up).
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);

/// How the agent was started.
#[derive(Debug, Clone, Default)]
pub struct AgentConfig {
    /// The agent runs inside a guest and may change the machine it runs on
    /// (clock, credited entropy, network). Off on a host, where such a
    /// request must never touch the host's clock, even when the agent runs
    /// as root.
    pub guest: bool,
    /// Host tests only: `sync_clock` writes the time it was asked to set
    /// (Unix nanoseconds, one line) to this file instead of setting a clock,
    /// so a test on a host can see the request arrive while the host's clock
    /// stays untouched.
    pub clock_file: Option<std::path::PathBuf>,
    /// The agent was started by its own init ([`crate::supervisor`]): it may
    /// configure the network of its (network namespace of the) guest, and
    /// ask init to power off.
    pub init: Option<InitLink>,
}

/// How the agent reaches the init that started it.
#[derive(Debug, Clone, Copy)]
pub struct InitLink {
    /// The init process, which powers off on [`crate::supervisor::POWER_OFF_SIGNAL`].
    pub pid: i32,
    /// Init is PID 1 (of the machine or of its PID namespace) and so can
    /// power it off; an `--init` agent that is not PID 1 cannot.
    pub can_power_off: bool,
}

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Vsock { cid: u32, port: u32 },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix socket {}", path.display()),
            Endpoint::Vsock { cid, port } if *cid == vsock::CID_ANY => {
                write!(f, "vsock port {port}")
            }
            Endpoint::Vsock { cid, port } => write!(f, "vsock port {port} of cid {cid}"),
        }
    }
}

/// A listening socket made without a runtime (so init can make it before it
/// forks the agent, and keep it across the agent's restarts).
#[derive(Debug)]
pub enum Listener {
    Unix(std::os::unix::net::UnixListener, PathBuf),
    Vsock(OwnedFd, Endpoint),
}

impl Listener {
    /// Creates and binds the listening socket of `endpoint`.
    pub fn bind(endpoint: &Endpoint) -> Result<Self, ServeError> {
        match endpoint {
            Endpoint::Unix(path) => {
                let listener = std::os::unix::net::UnixListener::bind(path)
                    .and_then(|listener| {
                        listener.set_nonblocking(true)?;
                        Ok(listener)
                    })
                    .map_err(|source| ServeError::BindUnix {
                        path: path.display().to_string(),
                        source,
                    })?;
                Ok(Listener::Unix(listener, path.clone()))
            }
            Endpoint::Vsock { cid, port } => {
                let fd = vsock::bind(*cid, *port).map_err(|source| ServeError::BindVsock {
                    port: *port,
                    source,
                })?;
                Ok(Listener::Vsock(fd, endpoint.clone()))
            }
        }
    }

    /// A second handle on the same socket, for one run of the agent.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(match self {
            Listener::Unix(listener, path) => Listener::Unix(listener.try_clone()?, path.clone()),
            Listener::Vsock(fd, endpoint) => Listener::Vsock(fd.try_clone()?, endpoint.clone()),
        })
    }

    pub fn endpoint(&self) -> Endpoint {
        match self {
            Listener::Unix(_, path) => Endpoint::Unix(path.clone()),
            Listener::Vsock(_, endpoint) => endpoint.clone(),
        }
    }
}

/// The line the agent prints to stderr (the console, as PID 1) when it
/// starts serving, followed by the endpoint and its timing: "tfc-agent:
/// serving on vsock port 1024 (1.9 ms after start, 812 ms after boot)". A
/// host watching the console can wait for it.
pub const SERVING_LINE: &str = "tfc-agent: serving on ";

/// Why the agent stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on the Unix socket {path}")]
    BindUnix {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on vsock port {port}")]
    BindVsock {
        port: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the runtime failed (a guest kernel needs CONFIG_EPOLL and CONFIG_EVENTFD)")]
    Runtime(#[source] std::io::Error),
    #[error("registering the listening socket with the runtime failed")]
    Register(#[source] std::io::Error),
    #[error("accepting a connection failed")]
    Accept(#[source] std::io::Error),
}

/// What the writer task takes.
#[derive(Debug)]
enum Outgoing {
    Frame(Frame),
    /// Answered once every item queued before it has been written.
    Flushed(oneshot::Sender<()>),
}

/// The connection's writer went away: the host is gone.
#[derive(Debug)]
pub struct Closed;

/// Where frames to the host go: a bounded queue to the connection's writer
/// task.
#[derive(Debug, Clone)]
pub struct Outbox {
    queue: mpsc::Sender<Outgoing>,
}

impl Outbox {
    /// Queues `frame`, waiting for room (the backpressure).
    pub async fn send(&self, frame: Frame) -> Result<(), Closed> {
        self.queue
            .send(Outgoing::Frame(frame))
            .await
            .map_err(|_| Closed)
    }

    /// Waits until every frame this caller queued before has been written
    /// to the connection.
    pub async fn flush(&self) -> Result<(), Closed> {
        let (done, written) = oneshot::channel();
        self.queue
            .send(Outgoing::Flushed(done))
            .await
            .map_err(|_| Closed)?;
        written.await.map_err(|_| Closed)
    }
}

/// What the reader hands a running request.
#[derive(Debug)]
pub enum Inbound {
    Data(DataKind, Vec<u8>),
    Eof(DataKind),
}

/// A running request, as the reader sees it.
#[derive(Debug)]
struct Route {
    inbox: mpsc::Sender<Inbound>,
    /// The process group of a running exec, 0 before it started and after it
    /// was reaped: `signal` requests go here.
    process_group: Arc<AtomicI32>,
    /// The task of a running file transfer: a `signal` request cancels it
    /// (the host gave the transfer up).
    transfer: Option<tokio::task::AbortHandle>,
}

/// Running requests by id. Invariant: an id is removed before its final
/// frame is sent, so a host that reuses an id after the final frame never
/// finds it still in use.
type Routes = Arc<Mutex<HashMap<u64, Route>>>;

/// Serves `listener` on a runtime of its own until serving fails for good.
pub fn run(listener: Listener, config: AgentConfig) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(serve_listener(listener, config))
}

/// Binds a Unix socket at `path` and serves it until accepting fails for
/// good. Must run inside a tokio runtime.
pub async fn serve_unix(path: &Path, config: AgentConfig) -> Result<(), ServeError> {
    let listener = Listener::bind(&Endpoint::Unix(path.to_owned()))?;
    serve_listener(listener, config).await
}

/// Serves connections on `listener` until accepting fails for good. Prints
/// [`SERVING_LINE`] once connections are being accepted. Must run inside a
/// tokio runtime.
pub async fn serve_listener(listener: Listener, config: AgentConfig) -> Result<(), ServeError> {
    let endpoint = listener.endpoint();
    match listener {
        Listener::Unix(listener, _) => {
            let listener = UnixListener::from_std(listener).map_err(ServeError::Register)?;
            announce(&endpoint);
            serve(
                || async { listener.accept().await.map(|(stream, _)| stream) },
                config,
            )
            .await
        }
        Listener::Vsock(fd, _) => {
            let listener = vsock::VsockListener::from_fd(fd).map_err(ServeError::Register)?;
            announce(&endpoint);
            // In a guest only the host may drive the agent: a guest process
            // reaching it through vsock loopback (CID 1) would get root's
            // exec and files.
            let host_only = config.guest;
            serve(
                || async {
                    loop {
                        let (stream, (cid, port)) = listener.accept().await?;
                        if host_only && cid != libc::VMADDR_CID_HOST {
                            tracing::warn!(
                                cid,
                                port,
                                "refusing a vsock connection that is not from the host"
                            );
                            drop(stream);
                            continue;
                        }
                        tracing::debug!(cid, port, "vsock connection");
                        return Ok(stream);
                    }
                },
                config,
            )
            .await
        }
    }
}

fn announce(endpoint: &Endpoint) {
    // One plain line, whatever the log format: hosts match on it.
    let since_start = system::started().elapsed().as_secs_f64() * 1000.0;
    let since_boot = system::kernel_uptime()
        .map(|uptime| format!(", {} ms after boot", uptime.as_millis()))
        .unwrap_or_default();
    let line = format!("{SERVING_LINE}{endpoint} ({since_start:.1} ms after start{since_boot})\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

/// Whether accepting may work again later: the listener is fine, the
/// connection or the machine was short of something.
fn transient_accept_error(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::EINTR
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EPROTO
                | libc::EPERM
        )
    )
}

/// Serves every connection `accept` yields, each in a task of its own.
/// Transient accept errors (a connection reset before it was accepted, out
/// of fds) are logged and waited out; others end the serving.
pub async fn serve<S, F, Fut>(mut accept: F, config: AgentConfig) -> Result<(), ServeError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<S>>,
{
    const ACCEPT_RETRY: Duration = Duration::from_millis(100);
    loop {
        let stream = match accept().await {
            Ok(stream) => stream,
            Err(e) if transient_accept_error(&e) => {
                tracing::warn!(error = %e, "accepting a connection failed; retrying");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
            Err(e) => return Err(ServeError::Accept(e)),
        };
        let config = config.clone();
        tokio::spawn(async move {
            serve_connection(stream, config).await;
        });
    }
}

/// Serves one connection until the host closes it or sends an unreadable
/// frame. Requests still running then are aborted (their process groups
/// killed): nobody is left to read what they produce.
pub async fn serve_connection<S>(stream: S, config: AgentConfig)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let (queue, mut outgoing) = mpsc::channel::<Outgoing>(OUTBOX_FRAMES);
    let outbox = Outbox { queue };
    let writer = tokio::spawn(async move {
        let mut writer = AsyncFrameWriter::new(write_half);
        while let Some(item) = outgoing.recv().await {
            match item {
                Outgoing::Frame(frame) => {
                    if let Err(e) = writer.write_frame(&frame).await {
                        tracing::debug!(error = %e, "the host stopped reading");
                        return;
                    }
                }
                Outgoing::Flushed(done) => {
                    let _ = done.send(());
                }
            }
        }
        // The host sees a clean end after the last frame.
        let _ = writer.into_inner().shutdown().await;
    });

    let routes: Routes = Arc::default();
    let mut requests = JoinSet::new();
    let mut reader = AsyncFrameReader::new(read_half);
    let mut unreadable = false;
    loop {
        // Reap finished request tasks so the set does not grow with the
        // connection's age.
        while requests.try_join_next().is_some() {}
        let frame = match reader.read_frame().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) if e.stream_in_sync() => {
                let id = e.frame_id().unwrap_or(0);
                let reply = Reply::error(ErrorCode::BadRequest, error_chain(&e));
                if outbox.send(Frame::reply(id, reply)).await.is_err() {
                    break;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "closing a connection on an unreadable frame");
                let code = match e {
                    FrameError::FrameTooLarge { .. } => ErrorCode::TooLarge,
                    _ => ErrorCode::Protocol,
                };
                let _ = outbox
                    .send(Frame::reply(0, Reply::error(code, error_chain(&e))))
                    .await;
                unreadable = true;
                break;
            }
        };
        match frame.body {
            FrameBody::Request(request) => {
                if let Some(reply) =
                    route_request(frame.id, request, &routes, &outbox, &config, &mut requests)
                {
                    if outbox.send(Frame::reply(frame.id, reply)).await.is_err() {
                        break;
                    }
                }
            }
            FrameBody::Data { kind, bytes } => {
                deliver(&routes, frame.id, Inbound::Data(kind, bytes)).await
            }
            FrameBody::Eof(kind) => deliver(&routes, frame.id, Inbound::Eof(kind)).await,
            FrameBody::Reply(_) => {
                let reply = Reply::error(
                    ErrorCode::BadRequest,
                    "the agent takes requests, not replies",
                );
                if outbox.send(Frame::reply(frame.id, reply)).await.is_err() {
                    break;
                }
            }
        }
    }
    // Dropping the set aborts the requests; their guards kill what they started.
    requests.shutdown().await;
    drop(outbox);
    let _ = writer.await;
    if unreadable {
        linger(reader.into_inner()).await;
    }
}

/// Reads and discards what the host still sends, for a bounded time and
/// amount, before the connection is dropped: closing a socket with unread
/// input resets it, and the reset can destroy the error reply just written
/// before the host reads it.
async fn linger(mut read_half: impl AsyncRead + Unpin) {
    const LINGER: Duration = Duration::from_secs(1);
    const LINGER_BYTES: u64 = 1024 * 1024;
    let mut sink = tokio::io::sink();
    let mut limited = (&mut read_half).take(LINGER_BYTES);
    let _ = tokio::time::timeout(LINGER, tokio::io::copy(&mut limited, &mut sink)).await;
}

/// Hands data to the running request `id`; data for an id that is not
/// running (a request that already failed, late stdin after an exit) is
/// dropped, since the host learnt the outcome from that request's reply.
async fn deliver(routes: &Routes, id: u64, inbound: Inbound) {
    let inbox = routes
        .lock()
        .expect("routes lock poisoned")
        .get(&id)
        .map(|route| route.inbox.clone());
    match inbox {
        Some(inbox) => {
            let _ = inbox.send(inbound).await;
        }
        None => tracing::debug!(id, "dropping data for an id that is not running"),
    }
}

/// Starts `request` as a task, or answers at once (the returned reply).
fn route_request(
    id: u64,
    request: Request,
    routes: &Routes,
    outbox: &Outbox,
    config: &AgentConfig,
    requests: &mut JoinSet<()>,
) -> Option<Reply> {
    if id == 0 {
        return Some(Reply::error(
            ErrorCode::BadRequest,
            "id 0 is reserved for connection errors: number requests from 1",
        ));
    }
    let mut table = routes.lock().expect("routes lock poisoned");
    if let Request::Signal { signal } = request {
        return signal_request(&mut table, id, signal);
    }
    if let Request::Shutdown = request {
        let power_off = match system::power_off(config) {
            Ok(power_off) => power_off,
            Err(e) => return Some(Reply::error(e.code(), error_chain(&e))),
        };
        let outbox = outbox.clone();
        // Not in `requests`: a host that closes the connection right after
        // asking must not cancel the power-off.
        tokio::spawn(async move {
            // The host learns that the guest accepted before it goes.
            let _ = outbox.send(Frame::reply(id, Reply::Done)).await;
            let _ = tokio::time::timeout(SHUTDOWN_FLUSH, outbox.flush()).await;
            if let Err(e) = power_off.start() {
                tracing::error!(error = %e, "asking init to power off failed");
            }
        });
        return None;
    }
    if table.contains_key(&id) {
        return Some(Reply::error(
            ErrorCode::BadRequest,
            format!("id {id} is already in use by a running request"),
        ));
    }
    let (inbox, inbound) = mpsc::channel(INBOX_FRAMES);
    let process_group = Arc::new(AtomicI32::new(0));
    let transfer = matches!(request, Request::GetFile { .. } | Request::PutFile { .. });
    table.insert(
        id,
        Route {
            inbox,
            process_group: process_group.clone(),
            transfer: None,
        },
    );
    drop(table);

    let routes = routes.clone();
    let outbox = outbox.clone();
    let config = config.clone();
    let task_routes = routes.clone();
    let task = requests.spawn(async move {
        let last = run_request(id, request, inbound, &outbox, &config, &process_group).await;
        task_routes
            .lock()
            .expect("routes lock poisoned")
            .remove(&id);
        let _ = outbox.send(Frame { id, body: last }).await;
    });
    if transfer {
        // Absent when the task has already finished (and removed it).
        if let Some(route) = routes.lock().expect("routes lock poisoned").get_mut(&id) {
            route.transfer = Some(task);
        }
    }
    None
}

/// Answers a `signal` request for `id`: signals an exec's process group, or
/// cancels a file transfer (any signal does; the host sends one when it
/// gives the transfer up, and wants no final frame).
fn signal_request(table: &mut HashMap<u64, Route>, id: u64, signal: i32) -> Option<Reply> {
    if !(1..=64).contains(&signal) {
        return Some(Reply::error(
            ErrorCode::BadRequest,
            format!("{signal} is not a signal number (1 to 64)"),
        ));
    }
    if let Some(task) = table.get_mut(&id).and_then(|route| route.transfer.take()) {
        // Aborted, the task neither removes its route nor sends its final
        // frame: both are done here. An upload's scratch file goes with it.
        task.abort();
        table.remove(&id);
        return Some(Reply::Done);
    }
    let route = table.get(&id);
    let group = route.map_or(0, |route| route.process_group.load(Ordering::Acquire));
    if group <= 0 {
        return Some(Reply::error(
            ErrorCode::NotFound,
            "no process is running under this id",
        ));
    }
    // SAFETY: killpg has no memory effects; `group` is a process group this
    // agent created and has not reaped (the route clears it on reaping).
    if unsafe { libc::killpg(group, signal) } != 0 {
        let e = std::io::Error::last_os_error();
        // ESRCH: the group ended between the lookup and the kill; the exit
        // reply is on its way and tells the host.
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Some(Reply::error(ErrorCode::Io, format!("killpg: {e}")));
        }
    }
    None
}

/// Runs one request to its final frame.
async fn run_request(
    id: u64,
    request: Request,
    inbound: mpsc::Receiver<Inbound>,
    outbox: &Outbox,
    config: &AgentConfig,
    process_group: &AtomicI32,
) -> FrameBody {
    let failed = |code: ErrorCode, message: String| FrameBody::Reply(Reply::error(code, message));
    match request {
        Request::Ping => FrameBody::Reply(system::pong()),
        Request::Exec {
            argv,
            env,
            cwd,
            stdin,
            timeout_ms,
            uid,
        } => {
            let spec = exec::ExecSpec {
                argv,
                env,
                cwd,
                stdin,
                timeout_ms,
                uid,
            };
            match exec::run(id, spec, inbound, outbox, process_group).await {
                Ok(exit) => FrameBody::Reply(exit),
                Err(e) => failed(e.code(), error_chain(&e)),
            }
        }
        Request::PutFile {
            path,
            mode,
            size,
            atomic,
        } => match files::put(id, &path, mode, size, atomic, inbound).await {
            Ok(()) => FrameBody::Reply(Reply::Done),
            Err(e) => failed(e.code(), error_chain(&e)),
        },
        Request::GetFile { path, max_size } => {
            match files::get(id, &path, max_size, outbox).await {
                Ok(()) => FrameBody::Eof(DataKind::File),
                Err(e) => failed(e.code(), error_chain(&e)),
            }
        }
        Request::SyncClock { unix_ns } => match system::sync_clock(unix_ns, config) {
            Ok(()) => FrameBody::Reply(Reply::Done),
            Err(e) => failed(e.code(), error_chain(&e)),
        },
        Request::ReseedEntropy { seed } => match system::reseed_entropy(&seed, config) {
            Ok(credited) => FrameBody::Reply(Reply::Reseeded { credited }),
            Err(e) => failed(e.code(), error_chain(&e)),
        },
        Request::SetNetwork {
            interface,
            address_cidr,
            gateway,
            nameservers,
        } => {
            if let Err(e) = system::may_configure_network(config) {
                return failed(e.code(), error_chain(&e));
            }
            let wanted = match network::InterfaceConfig::parse(
                &interface,
                &address_cidr,
                gateway.as_deref(),
                &nameservers,
            ) {
                Ok(wanted) => wanted,
                Err(e) => return failed(e.code(), error_chain(&e)),
            };
            // A few blocking round trips to the kernel, off the runtime.
            match tokio::task::spawn_blocking(move || network::configure(&wanted)).await {
                Ok(Ok(())) => FrameBody::Reply(Reply::Done),
                Ok(Err(e)) => failed(e.code(), error_chain(&e)),
                Err(e) => failed(
                    ErrorCode::Io,
                    format!("configuring the network failed: {e}"),
                ),
            }
        }
        // The reader answers signals and shutdowns itself; kept total rather
        // than panicking.
        Request::Signal { .. } => failed(
            ErrorCode::BadRequest,
            "a signal is for a running exec".into(),
        ),
        Request::Shutdown => failed(
            ErrorCode::BadRequest,
            "shutdown is answered by the connection".into(),
        ),
    }
}

/// An error and its causes on one line: the chain is printed here, at the
/// edge, once.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
