//! Supervision of one `firecracker` process.
//!
//! Files the process makes, all inside its working directory: `api.sock`,
//! `console.log` (and `console.log.1` after rotation), `firecracker.log` and
//! `firecracker.stderr`. The socket is removed once the process has ended; the
//! logs stay until the owner removes the directory.
//!
//! Exit is observed by a supervisor task that owns the child and is the only one
//! that reaps it; signals go through that task too, so a signal can never reach a
//! recycled pid.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use crate::client::ApiClient;
use crate::console::{self, ConsoleWatch};

pub const API_SOCKET: &str = "api.sock";
pub const CONSOLE_LOG: &str = "console.log";
pub const VMM_LOG: &str = "firecracker.log";
pub const VMM_STDERR: &str = "firecracker.stderr";

/// How to start one Firecracker process.
#[derive(Debug, Clone)]
pub struct SpawnConfig {
    pub binary: PathBuf,
    /// Must exist; the process runs with it as its working directory, so relative
    /// paths given to the API resolve per VM (clone-safe restores rely on this).
    pub workdir: PathBuf,
    /// Firecracker's instance id (shown in its logs).
    pub id: String,
    /// Bytes of console output kept before rotating.
    pub console_log_limit: u64,
    /// Console texts to watch for (readiness markers, panics).
    pub watch_for: Vec<String>,
    /// Further command-line arguments (e.g. `--config-file`).
    pub extra_args: Vec<String>,
}

/// How a Firecracker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitReason {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitReason {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exited with code {code}"),
            (None, Some(sig)) => write!(f, "killed by signal {sig} ({})", signal_name(sig)),
            (None, None) => f.write_str("ended for an unknown reason"),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSYS => "SIGSYS",
        _ => "other",
    }
}

/// A failure to start or talk to the process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(
        "firecracker binary not found at {0}: run `tfc assets build` or set firecracker.binary"
    )]
    BinaryMissing(PathBuf),
    #[error("cannot prepare file {path}")]
    PrepareFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot spawn {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("firecracker {reason} before its API socket was ready{stderr}")]
    ExitedEarly { reason: ExitReason, stderr: String },
    #[error("firecracker API socket {socket} not ready within {timeout:?}")]
    ApiTimeout { socket: PathBuf, timeout: Duration },
}

/// How to stop a process. Each step runs only if the previous one did not end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopPolicy {
    /// Send Ctrl+Alt+Del and wait this long (x86 guests need an i8042 driver).
    pub ctrl_alt_del_grace: Option<Duration>,
    /// After SIGTERM, wait this long before SIGKILL.
    pub term_grace: Duration,
}

impl Default for StopPolicy {
    fn default() -> Self {
        Self {
            ctrl_alt_del_grace: None,
            term_grace: Duration::from_secs(2),
        }
    }
}

/// One running (or ended) Firecracker process.
#[derive(Debug)]
pub struct FirecrackerProcess {
    pid: u32,
    workdir: PathBuf,
    api: ApiClient,
    console: ConsoleWatch,
    exit: watch::Receiver<Option<ExitReason>>,
    signals: mpsc::UnboundedSender<i32>,
    spawned_at: Instant,
}

impl FirecrackerProcess {
    /// Spawns the process with its API socket, logs and console in `workdir`.
    /// Returns as soon as the process exists; see [`Self::wait_api_ready`].
    pub async fn spawn(config: &SpawnConfig) -> Result<Self, ProcessError> {
        if !config.binary.is_file() {
            return Err(ProcessError::BinaryMissing(config.binary.clone()));
        }
        let socket = config.workdir.join(API_SOCKET);
        let prepare = |path: PathBuf| {
            std::fs::File::create(&path).map_err(|source| ProcessError::PrepareFile {
                path: path.clone(),
                source,
            })
        };
        // A stale socket from an earlier process would make bind fail.
        let _ = std::fs::remove_file(&socket);
        // Firecracker opens its log path but does not create it.
        prepare(config.workdir.join(VMM_LOG))?;
        let stderr = prepare(config.workdir.join(VMM_STDERR))?;

        let mut command = Command::new(&config.binary);
        command
            .arg("--api-sock")
            .arg(&socket)
            .arg("--id")
            .arg(&config.id)
            .arg("--log-path")
            .arg(config.workdir.join(VMM_LOG))
            .arg("--level")
            .arg("Info")
            .args(&config.extra_args)
            .current_dir(&config.workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            // Own process group: a Ctrl-C aimed at the daemon's terminal must not
            // reach the VMs; the daemon decides what happens to them.
            .process_group(0)
            .kill_on_drop(false);
        let spawned_at = Instant::now();
        let mut child = command.spawn().map_err(|source| ProcessError::Spawn {
            binary: config.binary.clone(),
            source,
        })?;
        let pid = child.id().expect("a just-spawned child has a pid");
        let stdout = child.stdout.take().expect("stdout was piped");
        let console = console::capture(
            stdout,
            &config.workdir.join(CONSOLE_LOG),
            config.console_log_limit,
            config.watch_for.clone(),
        )
        .await
        .map_err(|source| ProcessError::PrepareFile {
            path: config.workdir.join(CONSOLE_LOG),
            source,
        })?;

        let (exit_tx, exit_rx) = watch::channel(None);
        let (sig_tx, mut sig_rx) = mpsc::unbounded_channel::<i32>();
        tokio::spawn(async move {
            let status = loop {
                tokio::select! {
                    status = child.wait() => break status,
                    Some(sig) = sig_rx.recv() => {
                        // SAFETY: the child is not yet reaped (only this task reaps
                        // it), so `pid` still names our process.
                        unsafe { libc::kill(pid as libc::pid_t, sig) };
                    }
                }
            };
            let reason = match status {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    ExitReason {
                        code: status.code(),
                        signal: status.signal(),
                    }
                }
                Err(_) => ExitReason {
                    code: None,
                    signal: None,
                },
            };
            let _ = exit_tx.send(Some(reason));
        });

        Ok(Self {
            pid,
            workdir: config.workdir.clone(),
            api: ApiClient::new(socket),
            console,
            exit: exit_rx,
            signals: sig_tx,
            spawned_at,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    pub fn console(&self) -> &ConsoleWatch {
        &self.console
    }

    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// The exit reason, once the process has ended.
    pub fn exited(&self) -> Option<ExitReason> {
        *self.exit.borrow()
    }

    /// Resolves when the process has ended.
    pub async fn wait_exit(&self) -> ExitReason {
        let mut rx = self.exit.clone();
        let result = rx.wait_for(Option::is_some).await.map(|r| *r);
        match result {
            Ok(reason) => reason.expect("waited for Some"),
            // The supervisor always sends before it ends; treat a lost sender as
            // an unknown end rather than hanging.
            Err(_) => ExitReason {
                code: None,
                signal: None,
            },
        }
    }

    /// Waits until the API socket accepts a connection.
    ///
    /// Firecracker listens ~1-2 ms after exec. tokio's timer ticks in whole
    /// milliseconds, which would add up to a millisecond to every VM start, so
    /// the wait polls on a blocking thread with a 50 µs period instead.
    pub async fn wait_api_ready(&self, timeout: Duration) -> Result<(), ProcessError> {
        let socket = self.api.socket().to_owned();
        let exit = self.exit.clone();
        let ready = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + timeout;
            loop {
                if let Some(reason) = *exit.borrow() {
                    return Err(Some(reason));
                }
                if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(None);
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        })
        .await
        .unwrap_or(Err(None));
        match ready {
            Ok(()) => Ok(()),
            Err(Some(reason)) => Err(ProcessError::ExitedEarly {
                reason,
                stderr: self.stderr_excerpt(),
            }),
            Err(None) => Err(ProcessError::ApiTimeout {
                socket: self.api.socket().to_owned(),
                timeout,
            }),
        }
    }

    /// Last lines of Firecracker's own log and stderr, for error messages.
    pub fn stderr_excerpt(&self) -> String {
        let mut text = String::new();
        for name in [VMM_STDERR, VMM_LOG] {
            if let Ok(content) = std::fs::read_to_string(self.workdir.join(name)) {
                for line in content
                    .lines()
                    .rev()
                    .take(3)
                    .collect::<Vec<_>>()
                    .iter()
                    .rev()
                {
                    text.push_str("\n  ");
                    text.push_str(line);
                }
            }
        }
        text
    }

    /// Sends `signal` if the process is still running.
    pub fn signal(&self, signal: i32) {
        if self.exited().is_none() {
            let _ = self.signals.send(signal);
        }
    }

    /// Stops the process following `policy` and returns how it ended.
    pub async fn stop(&self, policy: StopPolicy) -> ExitReason {
        if let Some(reason) = self.exited() {
            return reason;
        }
        if let Some(grace) = policy.ctrl_alt_del_grace {
            if self.api.send_ctrl_alt_del().await.is_ok() {
                if let Ok(reason) = tokio::time::timeout(grace, self.wait_exit()).await {
                    return reason;
                }
            }
        }
        self.signal(libc::SIGTERM);
        if let Ok(reason) = tokio::time::timeout(policy.term_grace, self.wait_exit()).await {
            return reason;
        }
        self.signal(libc::SIGKILL);
        self.wait_exit().await
    }

    /// Removes the API socket, which Firecracker leaves behind when it is
    /// killed; logs stay for inspection until the VM directory is removed.
    pub fn remove_socket(&self) {
        let _ = std::fs::remove_file(self.api.socket());
    }
}

/// A process handle dropped while the process still runs (a panicking owner, an
/// interrupted benchmark) takes the process with it rather than leaking it.
impl Drop for FirecrackerProcess {
    fn drop(&mut self) {
        if self.exited().is_none() {
            // SAFETY: kill has no memory-safety preconditions. The supervisor has
            // not published an exit, so it has not reaped the child and `pid`
            // still names our process (barring a reap in the last microseconds).
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Start time of a process in clock ticks since boot (field 22 of
/// `/proc/PID/stat`). With the pid it identifies a process across pid reuse.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after
    // the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reasons_read_well() {
        let killed = ExitReason {
            code: None,
            signal: Some(9),
        };
        assert_eq!(killed.to_string(), "killed by signal 9 (SIGKILL)");
        assert_eq!(
            ExitReason {
                code: Some(1),
                signal: None
            }
            .to_string(),
            "exited with code 1"
        );
    }

    #[test]
    fn start_ticks_of_this_process_are_stable() {
        let me = std::process::id();
        let a = process_start_ticks(me).expect("own stat readable");
        assert_eq!(process_start_ticks(me), Some(a));
        assert_eq!(process_start_ticks(u32::MAX), None);
    }
}
