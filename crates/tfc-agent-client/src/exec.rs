//! Running a process in the guest.
//!
//! [`AgentConnection::exec`] returns once the agent started the process (a
//! program that cannot start is an error there, not an event). The
//! [`ExecHandle`] then yields the output in the order the agent sent it and
//! the exit last; [`ExecControl`] writes stdin and sends signals, and can be
//! moved to another task so that stdin is written while the output is read
//! (as with any pair of pipes, writing without reading can deadlock).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tfc_agent_proto::{DataKind, ErrorCode, Frame, FrameBody, Reply, Request};

use crate::connection::{send, AgentConnection, Call, CHUNK};
use crate::error::AgentError;

/// How long [`AgentConnection::exec_collect`] waits past its timeout, for the
/// agent to kill the process and report the exit, before giving up on it.
pub const COLLECT_GRACE: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// The whole environment of the process: the agent passes on nothing of
    /// its own.
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// Whether stdin is written through [`ExecControl`]; otherwise the
    /// process reads `/dev/null`.
    pub stdin: bool,
    /// The agent kills the process group after this long.
    pub timeout: Option<Duration>,
    /// Run as this uid; only an agent running as root can.
    pub uid: Option<u32>,
}

impl ExecRequest {
    /// The `PATH` a request starts with, since nothing is inherited.
    pub const DEFAULT_PATH: &'static str =
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

    /// Runs `argv` with only `PATH` set, stdin from `/dev/null`, no timeout.
    pub fn new(argv: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            env: BTreeMap::from([("PATH".into(), Self::DEFAULT_PATH.into())]),
            cwd: None,
            stdin: false,
            timeout: None,
            uid: None,
        }
    }

    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    pub fn stdin(mut self) -> Self {
        self.stdin = true;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn uid(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        self
    }

    fn into_wire(self) -> Request {
        Request::Exec {
            argv: self.argv,
            env: self.env,
            cwd: self.cwd,
            stdin: self.stdin,
            // Rounded up: a sub-millisecond timeout must not become "none".
            timeout_ms: self
                .timeout
                .map(|t| u64::try_from(t.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)),
            uid: self.uid,
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// The agent killed it for its timeout.
    pub timed_out: bool,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// What a running exec reports, in the agent's order; `Exit` comes last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The agent refused a signal sent with [`ExecControl::signal`] (the
    /// process had already ended, or the number is not a signal). The exec
    /// goes on.
    SignalRefused {
        code: ErrorCode,
        message: String,
    },
    Exit(ExitStatus),
}

/// A running exec.
#[derive(Debug)]
pub struct ExecHandle {
    call: Call,
    pid: u32,
    control: ExecControl,
    exited: bool,
}

/// Writes stdin to and signals one exec; clones share it.
#[derive(Debug, Clone)]
pub struct ExecControl {
    id: u64,
    connection: AgentConnection,
    stdin_open: Arc<AtomicBool>,
    /// Signals sent whose refusal may still come. The agent answers a signal
    /// only when it refuses it, so an error reply for a running exec is a
    /// refusal while this is above zero, and the end of the exec otherwise.
    signals_unanswered: Arc<AtomicU32>,
}

/// Everything a collected exec wrote, up to the cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Output past the cap was read and discarded.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

impl AgentConnection {
    /// Starts `request` and returns once the process runs.
    pub async fn exec(&self, request: ExecRequest) -> Result<ExecHandle, AgentError> {
        let stdin = request.stdin;
        let mut call = self.call(request.into_wire()).await?;
        let pid = match call.reply().await? {
            Reply::ExecStarted { pid } => pid,
            other => return Err(AgentError::unexpected("exec_started", other)),
        };
        let control = ExecControl {
            id: call.id,
            connection: call.connection().clone(),
            stdin_open: Arc::new(AtomicBool::new(stdin)),
            signals_unanswered: Arc::default(),
        };
        Ok(ExecHandle {
            call,
            pid,
            control,
            exited: false,
        })
    }

    /// Runs `argv` (with [`ExecRequest::new`]'s defaults) to its end and
    /// returns its exit and output, keeping at most `output_cap` bytes of
    /// each stream. The agent kills the process after `timeout`.
    pub async fn exec_collect(
        &self,
        argv: impl IntoIterator<Item = impl Into<String>>,
        timeout: Duration,
        output_cap: usize,
    ) -> Result<ExecOutput, AgentError> {
        let request = ExecRequest::new(argv).timeout(timeout);
        let limit = timeout + COLLECT_GRACE;
        let run = async {
            let handle = self.exec(request).await?;
            handle.collect(output_cap).await
        };
        tokio::time::timeout(limit, run)
            .await
            .map_err(|_| AgentError::Timeout(limit))?
    }
}

impl ExecHandle {
    /// The process id in the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Stdin and signals for this exec, to use from another task.
    pub fn control(&self) -> ExecControl {
        self.control.clone()
    }

    pub async fn write_stdin(&self, bytes: &[u8]) -> Result<(), AgentError> {
        self.control.write_stdin(bytes).await
    }

    pub async fn close_stdin(&self) -> Result<(), AgentError> {
        self.control.close_stdin().await
    }

    pub async fn signal(&self, signal: i32) -> Result<(), AgentError> {
        self.control.signal(signal).await
    }

    /// The next event, or `None` after the exit.
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>, AgentError> {
        if self.exited {
            return Ok(None);
        }
        loop {
            match self.call.recv().await? {
                FrameBody::Data {
                    kind: DataKind::Stdout,
                    bytes,
                } => return Ok(Some(ExecEvent::Stdout(bytes))),
                FrameBody::Data {
                    kind: DataKind::Stderr,
                    bytes,
                } => return Ok(Some(ExecEvent::Stderr(bytes))),
                // The exit follows the ends of both streams; it alone matters.
                FrameBody::Eof(DataKind::Stdout | DataKind::Stderr) => continue,
                FrameBody::Reply(Reply::Exit {
                    code,
                    signal,
                    timed_out,
                }) => {
                    self.exited = true;
                    self.control.stdin_open.store(false, Ordering::Release);
                    return Ok(Some(ExecEvent::Exit(ExitStatus {
                        code,
                        signal,
                        timed_out,
                    })));
                }
                FrameBody::Reply(Reply::Error { code, message }) => {
                    let unanswered = &self.control.signals_unanswered;
                    let refusal = unanswered
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                        .is_ok();
                    if refusal {
                        return Ok(Some(ExecEvent::SignalRefused { code, message }));
                    }
                    self.exited = true;
                    return Err(AgentError::Agent { code, message });
                }
                other => return Err(AgentError::unexpected("exec output or exit", other)),
            }
        }
    }

    /// Reads the exec to its end, keeping at most `cap` bytes of each stream
    /// and discarding the rest (still read, so the process is not blocked).
    pub async fn collect(mut self, cap: usize) -> Result<ExecOutput, AgentError> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let (mut stdout_truncated, mut stderr_truncated) = (false, false);
        let keep = |kept: &mut Vec<u8>, truncated: &mut bool, bytes: Vec<u8>| {
            let room = cap.saturating_sub(kept.len());
            *truncated |= bytes.len() > room;
            kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
        };
        loop {
            match self.next_event().await? {
                Some(ExecEvent::Stdout(bytes)) => keep(&mut stdout, &mut stdout_truncated, bytes),
                Some(ExecEvent::Stderr(bytes)) => keep(&mut stderr, &mut stderr_truncated, bytes),
                Some(ExecEvent::SignalRefused { .. }) => {}
                Some(ExecEvent::Exit(status)) => {
                    return Ok(ExecOutput {
                        status,
                        stdout,
                        stderr,
                        stdout_truncated,
                        stderr_truncated,
                    })
                }
                None => return Err(AgentError::unexpected("an exit", "nothing after the exit")),
            }
        }
    }
}

impl Drop for ExecHandle {
    /// An exec nobody reads any more (its caller gave up, e.g. on a timeout)
    /// is killed rather than left running in the guest. The kill is queued
    /// even when the outbox is full (see [`AgentConnection::cancel`]); when
    /// the connection is gone, the agent kills the process group itself.
    fn drop(&mut self) {
        if !self.exited {
            self.control.connection.cancel(self.call.id);
        }
    }
}

impl ExecControl {
    /// Sends `bytes` to the process's stdin.
    pub async fn write_stdin(&self, bytes: &[u8]) -> Result<(), AgentError> {
        for chunk in bytes.chunks(CHUNK) {
            if !self.stdin_open.load(Ordering::Acquire) {
                return Err(AgentError::StdinNotOpen);
            }
            let frame = Frame::data(self.id, DataKind::Stdin, chunk.to_vec());
            send(&self.connection, frame).await?;
        }
        Ok(())
    }

    /// Ends the process's stdin; closing it again does nothing.
    pub async fn close_stdin(&self) -> Result<(), AgentError> {
        if self.stdin_open.swap(false, Ordering::AcqRel) {
            send(&self.connection, Frame::eof(self.id, DataKind::Stdin)).await?;
        }
        Ok(())
    }

    /// Sends `signal` to the process group. Success is silent; a refusal
    /// arrives as [`ExecEvent::SignalRefused`].
    pub async fn signal(&self, signal: i32) -> Result<(), AgentError> {
        self.signals_unanswered.fetch_add(1, Ordering::AcqRel);
        let frame = Frame::request(self.id, Request::Signal { signal });
        send(&self.connection, frame).await
    }
}
