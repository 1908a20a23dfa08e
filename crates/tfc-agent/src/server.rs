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
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;
use tfc_agent_proto::nonblocking::{AsyncFrameReader, AsyncFrameWriter};
use tfc_agent_proto::{DataKind, ErrorCode, Frame, FrameBody, FrameError, Reply, Request};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::{exec, files, system};

/// Frames waiting for the writer, per connection.
pub const OUTBOX_FRAMES: usize = 16;

/// Data frames from the host waiting for one request.
pub const INBOX_FRAMES: usize = 16;

/// How the agent was started.
#[derive(Debug, Clone, Default)]
pub struct AgentConfig {
    /// The agent runs inside a guest and may change the machine it runs on
    /// (clock, credited entropy). Off on a host, where such a request must
    /// never touch the host's clock, even when the agent runs as root.
    pub guest: bool,
    /// Host tests only: `sync_clock` writes the time it was asked to set
    /// (Unix nanoseconds, one line) to this file instead of setting a clock,
    /// so a test on a host can see the request arrive while the host's clock
    /// stays untouched.
    pub clock_file: Option<std::path::PathBuf>,
}

/// Why the agent stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on the Unix socket {path}")]
    BindUnix {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("accepting a connection failed")]
    Accept(#[source] std::io::Error),
}

/// Where frames to the host go.
pub type Outbox = mpsc::Sender<Frame>;

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
}

/// Running requests by id. Invariant: an id is removed before its final
/// frame is sent, so a host that reuses an id after the final frame never
/// finds it still in use.
type Routes = Arc<Mutex<HashMap<u64, Route>>>;

/// Serves connections on a Unix socket until accepting fails.
pub async fn serve_unix(path: &Path, config: AgentConfig) -> Result<(), ServeError> {
    let listener = UnixListener::bind(path).map_err(|source| ServeError::BindUnix {
        path: path.display().to_string(),
        source,
    })?;
    tracing::info!(path = %path.display(), "serving on a Unix socket");
    serve(
        || async { listener.accept().await.map(|(stream, _)| stream) },
        config,
    )
    .await
}

/// Serves every connection `accept` yields, each in a task of its own.
pub async fn serve<S, F, Fut>(mut accept: F, config: AgentConfig) -> Result<(), ServeError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<S>>,
{
    loop {
        let stream = accept().await.map_err(ServeError::Accept)?;
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
    let (outbox, mut outgoing) = mpsc::channel::<Frame>(OUTBOX_FRAMES);
    let writer = tokio::spawn(async move {
        let mut writer = AsyncFrameWriter::new(write_half);
        while let Some(frame) = outgoing.recv().await {
            if let Err(e) = writer.write_frame(&frame).await {
                tracing::debug!(error = %e, "the host stopped reading");
                return;
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
        return signal_request(table.get(&id), signal);
    }
    if table.contains_key(&id) {
        return Some(Reply::error(
            ErrorCode::BadRequest,
            format!("id {id} is already in use by a running request"),
        ));
    }
    let (inbox, inbound) = mpsc::channel(INBOX_FRAMES);
    let process_group = Arc::new(AtomicI32::new(0));
    table.insert(
        id,
        Route {
            inbox,
            process_group: process_group.clone(),
        },
    );
    drop(table);

    let routes = routes.clone();
    let outbox = outbox.clone();
    let config = config.clone();
    requests.spawn(async move {
        let last = run_request(id, request, inbound, &outbox, &config, &process_group).await;
        routes.lock().expect("routes lock poisoned").remove(&id);
        let _ = outbox.send(Frame { id, body: last }).await;
    });
    None
}

fn signal_request(route: Option<&Route>, signal: i32) -> Option<Reply> {
    if !(1..=64).contains(&signal) {
        return Some(Reply::error(
            ErrorCode::BadRequest,
            format!("{signal} is not a signal number (1 to 64)"),
        ));
    }
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
        Request::SetNetwork { .. } => failed(
            ErrorCode::Unsupported,
            "set_network is not implemented by this agent yet".into(),
        ),
        Request::Shutdown => failed(
            ErrorCode::Unsupported,
            "shutdown is not implemented by this agent yet".into(),
        ),
        // The reader answers signals itself; kept total rather than panicking.
        Request::Signal { .. } => failed(
            ErrorCode::BadRequest,
            "a signal is for a running exec".into(),
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
