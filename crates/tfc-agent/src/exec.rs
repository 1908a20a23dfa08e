//! Running a process for an `exec` request.
//!
//! The process leads a new process group, so a timeout or a `signal` request
//! reaches everything it started, and a request aborted with its connection
//! kills the group (`GroupGuard`). Output is read in [`crate::CHUNK`]s and
//! sent as it comes; each send waits for room in the connection's bounded
//! outbox, so a slow host stops the reads, the pipe fills and the process
//! blocks on its next write: memory stays bounded whatever the output size.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tfc_agent_proto::{DataKind, ErrorCode, Frame, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, Command};
use tokio::sync::mpsc;

use crate::server::{Inbound, Outbox};
use crate::CHUNK;

/// How long output of a timed-out exec is still read after its process
/// group was killed: a process that left the group may hold the pipes open
/// for good.
const ESCAPED_OUTPUT_WAIT: Duration = Duration::from_millis(500);

/// What to run.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub stdin: bool,
    pub timeout_ms: Option<u64>,
    pub uid: Option<u32>,
}

/// Why an exec did not run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("argv is empty: name the program to run")]
    EmptyArgv,
    #[error(
        "running as uid {requested} needs an agent running as root (it runs as uid {current})"
    )]
    UidNotPermitted { requested: u32, current: u32 },
    #[error("the working directory {cwd} does not exist or is not a directory: give an existing directory as cwd")]
    NoCwd { cwd: String },
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for the process failed")]
    Wait(#[source] std::io::Error),
    #[error("the connection closed while the process ran")]
    ConnectionClosed,
}

impl ExecError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ExecError::EmptyArgv => ErrorCode::BadRequest,
            ExecError::NoCwd { .. } => ErrorCode::NotFound,
            ExecError::UidNotPermitted { .. } => ErrorCode::PermissionDenied,
            ExecError::Spawn { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => ErrorCode::NotFound,
                std::io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
                _ => ErrorCode::Io,
            },
            ExecError::Wait(_) | ExecError::ConnectionClosed => ErrorCode::Io,
        }
    }
}

/// Whether an agent running as `current` may run a process as `requested`.
pub fn uid_permitted(current: u32, requested: Option<u32>) -> Result<(), ExecError> {
    match requested {
        Some(requested) if requested != current && current != 0 => {
            Err(ExecError::UidNotPermitted { requested, current })
        }
        _ => Ok(()),
    }
}

/// Kills a process group with SIGKILL when dropped while armed: the exec
/// task is aborted when its connection goes, and the processes must not
/// outlive it unobserved.
#[derive(Debug)]
struct GroupGuard {
    group: i32,
    armed: bool,
}

impl GroupGuard {
    fn kill(&self) {
        // SAFETY: killpg has no memory effects; `group` was created by this
        // exec and its leader is not reaped while the guard is armed.
        unsafe { libc::killpg(self.group, libc::SIGKILL) };
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            self.kill();
        }
    }
}

/// Runs `spec` for request `id`: sends `exec_started`, the output, an `eof`
/// per output stream, and returns the `exit` reply for the caller to send
/// last.
pub async fn run(
    id: u64,
    spec: ExecSpec,
    inbound: mpsc::Receiver<Inbound>,
    outbox: &Outbox,
    process_group: &AtomicI32,
) -> Result<Reply, ExecError> {
    let program = spec.argv.first().ok_or(ExecError::EmptyArgv)?.clone();
    // SAFETY: geteuid cannot fail and touches no memory.
    let current = unsafe { libc::geteuid() };
    uid_permitted(current, spec.uid)?;

    let mut command = Command::new(&program);
    command
        .args(&spec.argv[1..])
        .env_clear()
        .envs(&spec.env)
        .process_group(0)
        .stdin(if spec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cwd) = &spec.cwd {
        // Checked here because a missing cwd fails the spawn with the same
        // "not found" as a missing program, which would name the program.
        if !tokio::fs::metadata(cwd).await.is_ok_and(|m| m.is_dir()) {
            return Err(ExecError::NoCwd { cwd: cwd.clone() });
        }
        command.current_dir(cwd);
    }
    if let Some(uid) = spec.uid.filter(|uid| *uid != current) {
        command.uid(uid).gid(primary_gid(uid));
    }
    let mut child = command.spawn().map_err(|source| ExecError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pid = child.id().ok_or(ExecError::ConnectionClosed)?;
    let group = pid as i32;
    let mut guard = GroupGuard { group, armed: true };
    process_group.store(group, Ordering::Release);

    outbox
        .send(Frame::reply(id, Reply::ExecStarted { pid }))
        .await
        .map_err(|_| ExecError::ConnectionClosed)?;

    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let pumps = [
        tokio::spawn(pump(id, DataKind::Stdout, stdout, outbox.clone())),
        tokio::spawn(pump(id, DataKind::Stderr, stderr, outbox.clone())),
    ];
    // Ends at the host's eof, when the process is reaped (aborted below), or
    // when the route and so its inbox go with the connection.
    let feeder = tokio::spawn(feed_stdin(child.stdin.take(), inbound));

    let mut timed_out = false;
    let deadline = spec
        .timeout_ms
        .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let status = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                timed_out = true;
                guard.kill();
                child.wait().await
            }
        },
        None => child.wait().await,
    };
    // Reaped: the pid may be reused from now on, so `signal` requests stop
    // here. The group may live on in children the process left behind; they
    // keep the pipes open, and the pumps below wait for them like a shell
    // would, but no longer than the timeout.
    process_group.store(0, Ordering::Release);
    guard.armed = false;
    let status = status.map_err(ExecError::Wait)?;
    feeder.abort();
    // Each pump leaves the list as soon as it has finished (in the same
    // poll), so a drain cut short by a timeout never polls a finished
    // pump's handle again.
    let mut pending: Vec<(tokio::task::JoinHandle<()>, DataKind)> = pumps
        .into_iter()
        .zip([DataKind::Stdout, DataKind::Stderr])
        .collect();
    let drained = match deadline {
        None => {
            drain(&mut pending).await;
            true
        }
        Some(deadline) => tokio::time::timeout_at(deadline, drain(&mut pending))
            .await
            .is_ok(),
    };
    if !drained {
        timed_out = true;
        // The timeout covers what the process started too. A pid (so this
        // group's id) is only reused once no process is left in the group,
        // and then killpg finds nothing of ours; a reuse within this window
        // would need the pid space to wrap meanwhile.
        GroupGuard { group, armed: true }.kill();
        // Killed, the group's members close the pipes at once; a process
        // that left the group (setsid) keeps them, so the output is cut off
        // after a short wait rather than waited for.
        if tokio::time::timeout(ESCAPED_OUTPUT_WAIT, drain(&mut pending))
            .await
            .is_err()
        {
            for (pump, kind) in pending {
                pump.abort();
                let _ = outbox.send(Frame::eof(id, kind)).await;
            }
        }
    }
    Ok(Reply::Exit {
        code: status.code(),
        signal: status.signal(),
        timed_out,
    })
}

/// Sends what `source` yields as data frames of `kind`, then an `eof`.
/// Waits for the output pumps in order, removing each from `pending` as it
/// finishes.
async fn drain(pending: &mut Vec<(tokio::task::JoinHandle<()>, DataKind)>) {
    while let Some((pump, _)) = pending.first_mut() {
        let _ = pump.await;
        pending.remove(0);
    }
}

async fn pump(id: u64, kind: DataKind, mut source: impl AsyncRead + Unpin, outbox: Outbox) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match source.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if outbox
                    .send(Frame::data(id, kind, buf[..n].to_vec()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(id, ?kind, error = %e, "reading process output failed");
                break;
            }
        }
    }
    let _ = outbox.send(Frame::eof(id, kind)).await;
}

/// Writes stdin frames to the process until the host's `eof`, then closes
/// its stdin. Without a stdin pipe, stdin frames are dropped.
async fn feed_stdin(mut stdin: Option<ChildStdin>, mut inbound: mpsc::Receiver<Inbound>) {
    while let Some(message) = inbound.recv().await {
        match message {
            Inbound::Data(DataKind::Stdin, bytes) => {
                if let Some(pipe) = stdin.as_mut() {
                    // A process that closed its stdin gets no more; the
                    // host learns the outcome from the exit.
                    if pipe.write_all(&bytes).await.is_err() {
                        stdin = None;
                    }
                }
            }
            Inbound::Eof(DataKind::Stdin) => stdin = None,
            other => tracing::debug!(?other, "ignoring a non-stdin frame sent to an exec"),
        }
    }
}

/// The primary group of `uid` from the passwd database, or a group of the
/// same number when it has no entry (the usual convention for system ids).
fn primary_gid(uid: u32) -> u32 {
    // SAFETY: `passwd` is plain data (integers and pointers); all-zero is a
    // valid value that getpwuid_r overwrites.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers point at live, writable memory of the stated
    // sizes; the strings in `entry` point into `buf` and are not used.
    let rc = unsafe { libc::getpwuid_r(uid, &mut entry, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc == 0 && !result.is_null() {
        entry.pw_gid
    } else {
        uid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_may_switch_uid() {
        assert!(uid_permitted(1000, None).is_ok());
        assert!(uid_permitted(1000, Some(1000)).is_ok());
        assert!(uid_permitted(0, Some(1000)).is_ok());
        let err = uid_permitted(1000, Some(0)).unwrap_err();
        assert_eq!(err.code(), ErrorCode::PermissionDenied);
    }
}
