//! One connection to the agent, multiplexed by request id.
//!
//! Two tasks own the socket. The reader task alone reads: it hands each frame
//! to the call whose id it carries, through a channel per call. The writer
//! task alone writes, taking frames from one bounded channel
//! ([`OUTBOX_FRAMES`]), so a call dropped halfway (a timeout) can never leave
//! half a frame on the wire.
//!
//! Flow control: the reader never waits for a call, so one slow caller
//! cannot hold back the other calls on the connection. Instead each call
//! may fall at most [`CALL_BACKLOG_BYTES`] behind: a call whose unread frames
//! pass that is ended alone, with [`AgentError::FellBehind`] after the frames
//! that had arrived, and its request is cancelled in the guest (the exec
//! killed, the file transfer stopped). The same cancel goes out, reliably,
//! when a caller drops an exec or a download before its end; their further
//! frames are discarded.
//!
//! When either task fails, or the agent closes the connection, every pending
//! call and every later call fails with the same error: no call waits on a
//! connection that is gone.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tfc_agent_proto::nonblocking::{AsyncFrameReader, AsyncFrameWriter};
use tfc_agent_proto::{DataKind, ErrorCode, Frame, FrameBody, FrameError, Reply, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::AgentError;

/// Frames waiting for the writer task.
pub const OUTBOX_FRAMES: usize = 16;

/// Bytes of unread frames one call may have waiting before it is ended as
/// fallen behind (see the module's flow control). Bounds the memory one slow
/// caller can hold: a data frame counts its payload, every frame
/// [`FRAME_WEIGHT`] more.
pub const CALL_BACKLOG_BYTES: usize = 8 * 1024 * 1024;

/// What a frame counts towards [`CALL_BACKLOG_BYTES`] beyond its payload, so
/// many tiny frames are bounded too.
const FRAME_WEIGHT: usize = 64;

/// SIGKILL's number, the same on every Linux architecture the guest runs; the
/// agent takes it as "cancel" for any running request.
pub(crate) const SIGKILL: i32 = 9;

/// Bytes per data frame sent to the agent: well under
/// [`tfc_agent_proto::MAX_PAYLOAD`], the size the agent itself uses.
pub const CHUNK: usize = 64 * 1024;

/// What one call receives: a frame of its id, or why a frame of its id could
/// not be understood (the connection itself went on).
type Inbound = Result<FrameBody, AgentError>;

/// The agent's answer to a ping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pong {
    /// The protocol version the agent speaks.
    pub version: u8,
    pub agent_version: String,
    /// Time since the guest kernel booted.
    pub uptime: Duration,
    /// Changes on every boot of the guest, not on a snapshot restore.
    pub boot_id: String,
}

/// What the agent reported about a file before sending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
}

/// A connection to the agent. Cloning it is cheap and shares the connection;
/// it closes when the last clone and the last [`crate::ExecHandle`] are gone.
#[derive(Debug, Clone)]
pub struct AgentConnection {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    outbox: mpsc::Sender<Frame>,
    /// Ids are never reused on a connection, so a late frame of a finished
    /// call can never reach a newer one. 0 is the agent's connection-error id.
    next_id: AtomicU64,
    reader: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer task ends by itself once `outbox` is dropped, after
        // writing what is queued and shutting the write side down.
        self.reader.abort();
    }
}

/// What the reader and writer tasks share with the callers.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
}

/// Invariant: once `closed` is set, `routes` is empty and stays empty, so a
/// call either registered before the close (and sees its channel end) or is
/// refused at registration: none waits on a dead connection.
///
/// `fell_behind` holds the ids of calls ended for their backlog, until the
/// call is dropped.
#[derive(Debug, Default)]
struct State {
    routes: HashMap<u64, Route>,
    fell_behind: HashSet<u64>,
    closed: Option<Closed>,
}

/// Where the reader hands a call's frames, and how many bytes of them wait.
#[derive(Debug)]
struct Route {
    sender: mpsc::UnboundedSender<Inbound>,
    backlog: Arc<AtomicUsize>,
}

/// What `inbound` counts towards its call's backlog.
fn weight(inbound: &Inbound) -> usize {
    match inbound {
        Ok(FrameBody::Data { bytes, .. }) => FRAME_WEIGHT + bytes.len(),
        _ => FRAME_WEIGHT,
    }
}

/// Why the connection ended.
#[derive(Debug, Clone)]
enum Closed {
    Eof,
    Read(Arc<FrameError>),
    Write(Arc<FrameError>),
    /// The agent's last word, an error under id 0, before it closed.
    Agent {
        code: ErrorCode,
        message: String,
    },
}

impl Closed {
    fn error(&self) -> AgentError {
        match self {
            Closed::Eof => AgentError::ConnectionClosed,
            Closed::Read(e) => AgentError::Receive(e.clone()),
            Closed::Write(e) => AgentError::Send(e.clone()),
            Closed::Agent { code, message } => AgentError::Agent {
                code: *code,
                message: message.clone(),
            },
        }
    }
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("connection state lock poisoned")
    }

    /// Records why the connection ended (the first reason wins) and fails
    /// every pending call by dropping its channel.
    fn close(&self, why: Closed) {
        let mut state = self.state();
        state.closed.get_or_insert(why);
        state.routes.clear();
    }

    fn closed_error(&self) -> AgentError {
        self.state()
            .closed
            .as_ref()
            .map_or(AgentError::ConnectionClosed, Closed::error)
    }

    fn register(
        &self,
        id: u64,
    ) -> Result<(mpsc::UnboundedReceiver<Inbound>, Arc<AtomicUsize>), AgentError> {
        let mut state = self.state();
        if let Some(closed) = &state.closed {
            return Err(closed.error());
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        state.routes.insert(
            id,
            Route {
                sender,
                backlog: backlog.clone(),
            },
        );
        Ok((receiver, backlog))
    }

    fn remove(&self, id: u64) {
        let mut state = self.state();
        state.routes.remove(&id);
        state.fell_behind.remove(&id);
    }

    /// Why call `id` gets no more frames.
    fn ended_error(&self, id: u64) -> AgentError {
        let state = self.state();
        if state.fell_behind.contains(&id) {
            return AgentError::FellBehind {
                limit: CALL_BACKLOG_BYTES,
            };
        }
        state
            .closed
            .as_ref()
            .map_or(AgentError::ConnectionClosed, Closed::error)
    }
}

impl AgentConnection {
    /// Starts the reader and writer tasks on an open byte stream.
    pub(crate) fn start<R, W>(read_half: R, write_half: W) -> Self
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared::default());
        let (outbox, outgoing) = mpsc::channel(OUTBOX_FRAMES);
        tokio::spawn(write_loop(
            AsyncFrameWriter::new(write_half),
            outgoing,
            shared.clone(),
        ));
        // Weak: the writer ends once the callers' senders are gone.
        let reader = tokio::spawn(read_loop(
            AsyncFrameReader::new(read_half),
            shared.clone(),
            outbox.downgrade(),
        ));
        AgentConnection {
            inner: Arc::new(Inner {
                shared,
                outbox,
                next_id: AtomicU64::new(1),
                reader,
            }),
        }
    }

    /// Registers a new id and sends `request` under it.
    pub(crate) async fn call(&self, request: Request) -> Result<Call, AgentError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (inbound, backlog) = self.inner.shared.register(id)?;
        let call = Call {
            id,
            inbound,
            backlog,
            connection: self.clone(),
        };
        call.send(Frame::request(id, request)).await?;
        Ok(call)
    }

    /// Asks the agent to cancel the request `id` (kill an exec, stop a
    /// transfer), without waiting: callable from `Drop`. The frame is queued
    /// by a task of its own when the outbox is full, so it is not lost; only
    /// a connection that is gone (whose end cancels everything in the
    /// agent anyway) or a caller outside any runtime can lose it.
    pub(crate) fn cancel(&self, id: u64) {
        cancel(self.inner.outbox.clone(), id);
    }

    async fn request(&self, request: Request) -> Result<Reply, AgentError> {
        self.call(request).await?.reply().await
    }

    /// Checks the agent answers, and who it is.
    pub async fn ping(&self) -> Result<Pong, AgentError> {
        match self.request(Request::Ping).await? {
            Reply::Pong {
                version,
                agent_version,
                uptime_ms,
                boot_id,
            } => Ok(Pong {
                version,
                agent_version,
                uptime: Duration::from_millis(uptime_ms),
                boot_id,
            }),
            other => Err(AgentError::unexpected("pong", other)),
        }
    }

    /// Sets the guest's realtime clock to `now` (after a snapshot restore the
    /// guest's clock is as old as the snapshot). Only an agent started in
    /// guest mode as root does this; others refuse with `permission_denied`.
    pub async fn sync_clock(&self, now: SystemTime) -> Result<(), AgentError> {
        // A clock before 1970 or past 2554 is not one the guest can be set to;
        // clamping keeps the call total and the agent's answer meaningful.
        let unix_ns = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
            });
        match self.request(Request::SyncClock { unix_ns }).await? {
            Reply::Done => Ok(()),
            other => Err(AgentError::unexpected("done", other)),
        }
    }

    /// Asks the guest to power off. The agent answers before it goes; the
    /// VM's VMM then exits. Only an agent that is the guest's init does this;
    /// others refuse with `unsupported`.
    pub async fn shutdown(&self) -> Result<(), AgentError> {
        match self.request(Request::Shutdown).await? {
            Reply::Done => Ok(()),
            other => Err(AgentError::unexpected("done", other)),
        }
    }

    /// Mixes `seed` into the guest's random pool; returns whether the guest
    /// kernel also credited it as entropy.
    pub async fn reseed_entropy(&self, seed: &[u8]) -> Result<bool, AgentError> {
        let request = Request::ReseedEntropy {
            seed: seed.to_vec(),
        };
        match self.request(request).await? {
            Reply::Reseeded { credited } => Ok(credited),
            other => Err(AgentError::unexpected("reseeded", other)),
        }
    }

    /// Writes `bytes` to the absolute guest `path` with permission bits
    /// `mode`, atomically (readers see the old file or the whole new one).
    pub async fn put_file(&self, path: &str, mode: u32, bytes: &[u8]) -> Result<(), AgentError> {
        self.put_file_from(path, mode, bytes.len() as u64, bytes)
            .await
    }

    /// Writes the first `size` bytes of `source` to the guest `path`, as
    /// [`AgentConnection::put_file`] does.
    pub async fn put_file_from(
        &self,
        path: &str,
        mode: u32,
        size: u64,
        source: impl AsyncRead + Unpin,
    ) -> Result<(), AgentError> {
        let request = Request::PutFile {
            path: path.into(),
            mode,
            size,
            atomic: true,
        };
        let mut call = self.call(request).await?;
        let mut source = source.take(size);
        let mut buf = vec![0u8; CHUNK];
        let mut sent = 0u64;
        let local_failure = loop {
            // An early refusal (a relative path, a size over the agent's
            // limit) ends the request at the agent: stop sending data.
            if let Some(inbound) = call.try_recv()? {
                return Err(Call::unexpected_or_agent_error("done", inbound?));
            }
            match source.read(&mut buf).await {
                Ok(0) if sent == size => break None,
                Ok(0) => {
                    break Some(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the source ended after {sent} of {size} bytes"),
                    ))
                }
                Ok(n) => {
                    call.send(Frame::data(call.id, DataKind::File, buf[..n].to_vec()))
                        .await?;
                    sent += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e),
            }
        };
        // Sent even after a local failure: the agent then sees a short file,
        // refuses it and removes its scratch file, instead of waiting for the
        // rest until the connection closes.
        call.send(Frame::eof(call.id, DataKind::File)).await?;
        if let Some(e) = local_failure {
            return Err(AgentError::ReadSource(e));
        }
        match call.reply().await? {
            Reply::Done => Ok(()),
            other => Err(AgentError::unexpected("done", other)),
        }
    }

    /// Reads the guest file at `path`, refused by the agent with `too_large`
    /// when it holds more than `max_size` bytes.
    pub async fn get_file(&self, path: &str, max_size: u64) -> Result<Vec<u8>, AgentError> {
        let mut contents = Vec::new();
        self.get_file_to(path, max_size, &mut contents).await?;
        Ok(contents)
    }

    /// Streams the guest file at `path` into `sink` as it arrives.
    pub async fn get_file_to(
        &self,
        path: &str,
        max_size: u64,
        mut sink: impl AsyncWrite + Unpin,
    ) -> Result<FileInfo, AgentError> {
        let mut download = self.open_file(path, max_size).await?;
        while let Some(bytes) = download.next_chunk().await? {
            sink.write_all(&bytes)
                .await
                .map_err(AgentError::WriteSink)?;
        }
        sink.flush().await.map_err(AgentError::WriteSink)?;
        Ok(download.info())
    }

    /// Starts reading the guest file at `path` and returns once the agent
    /// said what it is (size and mode, so a caller can announce the length
    /// before any byte); the contents follow through
    /// [`FileDownload::next_chunk`]. Refused with `too_large` when the file
    /// holds more than `max_size` bytes.
    pub async fn open_file(&self, path: &str, max_size: u64) -> Result<FileDownload, AgentError> {
        let request = Request::GetFile {
            path: path.into(),
            max_size: Some(max_size),
        };
        let mut call = self.call(request).await?;
        let info = match call.reply().await? {
            Reply::FileInfo { size, mode } => FileInfo { size, mode },
            other => return Err(AgentError::unexpected("file_info", other)),
        };
        Ok(FileDownload {
            call,
            info,
            arrived: 0,
            done: false,
        })
    }

    /// Whether the connection has ended (the agent closed it, or reading or
    /// writing failed): every call on it fails from now on, so a caller that
    /// keeps connections opens a new one.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.state().closed.is_some()
    }
}

/// A guest file being read: what the agent announced, then its contents in
/// chunks. Dropping it before the end cancels the transfer in the guest
/// (chunks still on their way are discarded).
#[derive(Debug)]
pub struct FileDownload {
    call: Call,
    info: FileInfo,
    arrived: u64,
    done: bool,
}

impl Drop for FileDownload {
    fn drop(&mut self) {
        if !self.done {
            self.call.connection.cancel(self.call.id);
        }
    }
}

impl FileDownload {
    /// The size and mode the agent announced.
    pub fn info(&self) -> FileInfo {
        self.info
    }

    /// The next chunk of the contents, or `None` after the last one. Fails
    /// when the agent sends more or fewer bytes than it announced.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, AgentError> {
        if self.done {
            return Ok(None);
        }
        match self.call.recv().await? {
            FrameBody::Data {
                kind: DataKind::File,
                bytes,
            } => {
                self.arrived += bytes.len() as u64;
                // The agent promised `size` bytes; more is a broken agent,
                // and must not be passed on past what was announced.
                if self.arrived > self.info.size {
                    return Err(AgentError::unexpected(
                        "no more file data",
                        format!("{} bytes of a {}-byte file", self.arrived, self.info.size),
                    ));
                }
                Ok(Some(bytes))
            }
            FrameBody::Eof(DataKind::File) => {
                self.done = true;
                if self.arrived != self.info.size {
                    return Err(AgentError::unexpected(
                        "the whole file",
                        format!("{} of {} bytes", self.arrived, self.info.size),
                    ));
                }
                Ok(None)
            }
            other => Err(Call::unexpected_or_agent_error("file data", other)),
        }
    }
}

/// One request in flight: its id and the frames the reader routes to it.
/// Dropping it gives the id up; frames that still come for it are discarded.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) id: u64,
    inbound: mpsc::UnboundedReceiver<Inbound>,
    /// Bytes of this call's frames that the reader routed and `recv` has
    /// not taken yet (see [`CALL_BACKLOG_BYTES`]).
    backlog: Arc<AtomicUsize>,
    connection: AgentConnection,
}

impl Drop for Call {
    fn drop(&mut self) {
        self.connection.inner.shared.remove(self.id);
    }
}

impl Call {
    pub(crate) fn connection(&self) -> &AgentConnection {
        &self.connection
    }

    pub(crate) async fn send(&self, frame: Frame) -> Result<(), AgentError> {
        send(&self.connection, frame).await
    }

    /// The next frame of this call.
    pub(crate) async fn recv(&mut self) -> Result<FrameBody, AgentError> {
        match self.inbound.recv().await {
            Some(inbound) => {
                self.backlog.fetch_sub(weight(&inbound), Ordering::AcqRel);
                inbound
            }
            None => Err(self.connection.inner.shared.ended_error(self.id)),
        }
    }

    /// A frame of this call that already arrived, if any.
    fn try_recv(&mut self) -> Result<Option<Inbound>, AgentError> {
        match self.inbound.try_recv() {
            Ok(inbound) => {
                self.backlog.fetch_sub(weight(&inbound), Ordering::AcqRel);
                Ok(Some(inbound))
            }
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => {
                Err(self.connection.inner.shared.ended_error(self.id))
            }
        }
    }

    /// The next frame, which must be a reply; an error reply is an error.
    pub(crate) async fn reply(&mut self) -> Result<Reply, AgentError> {
        match self.recv().await? {
            FrameBody::Reply(Reply::Error { code, message }) => {
                Err(AgentError::Agent { code, message })
            }
            FrameBody::Reply(reply) => Ok(reply),
            other => Err(AgentError::unexpected("a reply", other)),
        }
    }

    /// The error for a frame that is not the one `expected`: the agent's own
    /// error when it sent one.
    pub(crate) fn unexpected_or_agent_error(expected: &'static str, body: FrameBody) -> AgentError {
        match body {
            FrameBody::Reply(Reply::Error { code, message }) => AgentError::Agent { code, message },
            other => AgentError::unexpected(expected, other),
        }
    }
}

/// Queues `frame` for the writer task.
pub(crate) async fn send(connection: &AgentConnection, frame: Frame) -> Result<(), AgentError> {
    let inner = &connection.inner;
    inner
        .outbox
        .send(frame)
        .await
        .map_err(|_| inner.shared.closed_error())
}

/// Queues a cancel of request `id` on `outbox`: at once when there is room,
/// else from a task that waits for room (when a runtime runs this).
fn cancel(outbox: mpsc::Sender<Frame>, id: u64) {
    let frame = Frame::request(id, Request::Signal { signal: SIGKILL });
    match outbox.try_send(frame) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(frame)) => {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = outbox.send(frame).await;
                });
            }
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: AsyncFrameReader<R>,
    shared: Arc<Shared>,
    outbox: mpsc::WeakSender<Frame>,
) {
    let mut last_word = None;
    let why = loop {
        let frame = match reader.read_frame().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break last_word.take().unwrap_or(Closed::Eof),
            // A frame read whole but not understood fails its own call only.
            Err(e) if e.stream_in_sync() => {
                let id = e.frame_id().unwrap_or(0);
                tracing::warn!(id, error = %e, "the agent sent a frame this client cannot read");
                route(&shared, &outbox, id, Err(AgentError::Receive(Arc::new(e))));
                continue;
            }
            Err(e) => break Closed::Read(Arc::new(e)),
        };
        match (frame.id, frame.body) {
            // Id 0 is the agent's error about the connection itself; it closes
            // the connection next, and this is why.
            (0, FrameBody::Reply(Reply::Error { code, message })) => {
                tracing::warn!(?code, %message, "the agent reported a connection error");
                last_word = Some(Closed::Agent { code, message });
            }
            (id, body) => route(&shared, &outbox, id, Ok(body)),
        }
    };
    shared.close(why);
}

/// Hands `inbound` to the call `id` without waiting; frames of ids no call
/// owns any more (a dropped handle, a call that gave up) are discarded. A
/// call whose backlog would pass [`CALL_BACKLOG_BYTES`] is ended instead
/// (its route goes, so it reads what arrived, then `FellBehind`) and its
/// request cancelled in the guest.
fn route(shared: &Shared, outbox: &mpsc::WeakSender<Frame>, id: u64, inbound: Inbound) {
    let mut state = shared.state();
    let Some(route) = state.routes.get(&id) else {
        tracing::debug!(id, "discarding a frame of an id no call owns");
        return;
    };
    let weight = weight(&inbound);
    let backlog = route.backlog.fetch_add(weight, Ordering::AcqRel) + weight;
    if backlog > CALL_BACKLOG_BYTES {
        route.backlog.fetch_sub(weight, Ordering::AcqRel);
        state.routes.remove(&id);
        state.fell_behind.insert(id);
        drop(state);
        tracing::warn!(
            id,
            limit = CALL_BACKLOG_BYTES,
            "a caller fell behind reading its call; ending that call"
        );
        if let Some(outbox) = outbox.upgrade() {
            cancel(outbox, id);
        }
        return;
    }
    if route.sender.send(inbound).is_err() {
        state.routes.remove(&id);
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: AsyncFrameWriter<W>,
    mut outgoing: mpsc::Receiver<Frame>,
    shared: Arc<Shared>,
) {
    while let Some(frame) = outgoing.recv().await {
        if let Err(e) = writer.write_frame(&frame).await {
            shared.close(Closed::Write(Arc::new(e)));
            return;
        }
    }
    // Every sender is gone: tell the agent we are done, so it ends the
    // connection and kills whatever still runs for it.
    let _ = writer.into_inner().shutdown().await;
}
