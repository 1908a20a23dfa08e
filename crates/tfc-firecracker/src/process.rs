//! Supervision of one `firecracker` process.
//!
//! Files the process makes, all inside its working directory: `api.sock`,
//! `console.log` (and `console.log.1` after rotation), `firecracker.log`,
//! `firecracker.stderr` and `process.json` (the [`ProcessRecord`]). The socket
//! is removed once the process has ended; the logs stay until the owner removes
//! the directory.
//!
//! Exit is observed by a supervisor task that owns the child and is the only one
//! that reaps it. Signals go through a pidfd opened while the child was still
//! unreaped, so a signal can never reach a recycled pid.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tokio::sync::watch;

use crate::client::{ApiClient, ExpectedPeer};
use crate::console::{self, ConsoleWatch};
use crate::jailer::{Jail, JailError};
use crate::listener;
use crate::pidfd::Pidfd;
use crate::priority::{Priority, PriorityError, Threads};
pub use tfc_core::ExitReason;

pub const API_SOCKET: &str = "api.sock";
pub const CONSOLE_LOG: &str = "console.log";
pub const VMM_LOG: &str = "firecracker.log";
pub const VMM_STDERR: &str = "firecracker.stderr";
/// Identity of the process, written right after spawn (see [`ProcessRecord`]).
pub const PROCESS_RECORD: &str = "process.json";

/// What identifies a VMM process across daemon restarts: pid plus start time
/// (clock ticks since boot), which together survive pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub pid: u32,
    pub start_ticks: u64,
}

impl ProcessRecord {
    /// Reads the record in `workdir`, if there is a readable one.
    pub fn read(workdir: &Path) -> Option<Self> {
        let bytes = std::fs::read(workdir.join(PROCESS_RECORD)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn write(&self, workdir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(workdir.join(PROCESS_RECORD), bytes)
    }

    /// The recorded process still runs (same pid, same start time, not a zombie).
    pub fn is_running(&self) -> bool {
        if process_start_ticks(self.pid) != Some(self.start_ticks) {
            return false;
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next());
        !matches!(state, Some("Z") | Some("X") | None)
    }

    /// Opens a pidfd for the recorded process if it still runs. The start time is
    /// checked again after the open, so the fd cannot name a recycled pid.
    pub fn pidfd(&self) -> Option<Pidfd> {
        if !self.is_running() {
            return None;
        }
        let pidfd = Pidfd::open(self.pid).ok()?;
        self.is_running().then_some(pidfd)
    }
}

/// The Firecracker process that serves `workdir`'s API socket, if one runs:
/// by its process record, or, when a crash came between spawn and record, by
/// its command line (`--api-sock <workdir>/api.sock`). Returns its pid and a
/// pidfd opened before the identity was checked a second time.
pub fn find_vmm(workdir: &Path) -> Option<(u32, Pidfd)> {
    if let Some(record) = ProcessRecord::read(workdir) {
        if let Some(pidfd) = record.pidfd() {
            return Some((record.pid, pidfd));
        }
    }
    let socket = workdir.join(API_SOCKET);
    let serves = |pid: u32| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let mut args = cmdline.split(|b| *b == 0);
        args.any(|a| a == b"--api-sock")
            && args.next() == Some(socket.as_os_str().as_encoded_bytes())
    };
    let pids = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()));
    for pid in pids.filter(|pid| serves(*pid)) {
        let Ok(pidfd) = Pidfd::open(pid) else {
            continue;
        };
        // Still the same process after the open: the fd names it.
        if serves(pid) {
            return Some((pid, pidfd));
        }
    }
    None
}

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
    /// A network namespace to run the process in (`/run/netns/NAME`), where
    /// the taps of its network interfaces are; the caller's own if `None`.
    pub netns: Option<PathBuf>,
    /// Run under the jailer in this jail (see [`crate::jailer`]). The API
    /// socket and Firecracker's log are then in the chroot, reached through
    /// symlinks in `workdir`; console and stderr stay in `workdir`.
    pub jail: Option<Jail>,
    /// The jail's cgroup limits, `(cgroup file, value)`; unused without a jail.
    pub cgroups: Vec<(String, String)>,
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
    #[error("cannot open network namespace {path}")]
    Netns {
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
    #[error("cannot keep hold of the firecracker process (pidfd)")]
    Pidfd(#[source] std::io::Error),
    #[error("no running firecracker is recorded in {0}")]
    NotRunning(PathBuf),
    #[error("firecracker {pid} runs but its API socket does not answer")]
    ApiUnresponsive {
        pid: u32,
        #[source]
        source: crate::client::ApiError,
    },
    #[error("cannot set up the jail")]
    Jail(#[source] JailError),
    #[error("cannot link {link} to the jail's {target}")]
    JailLink {
        link: PathBuf,
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the jailer {reason} without starting firecracker{stderr}")]
    JailerFailed { reason: ExitReason, stderr: String },
    #[error("the jailer did not report firecracker's pid in {path} within {timeout:?}")]
    JailerPid { path: PathBuf, timeout: Duration },
    #[error("cannot record the firecracker process in {path}")]
    Record {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Makes `command`'s child enter the network namespace at `path` (e.g.
/// `/run/netns/NAME`) before it execs; the caller stays in its own. The
/// namespace is opened here, so a missing one fails before any spawn; keep
/// the returned file until the command has been spawned.
pub fn enter_netns_at_exec(
    command: &mut Command,
    path: &Path,
) -> Result<std::fs::File, ProcessError> {
    use std::os::fd::AsRawFd;
    let netns = std::fs::File::open(path).map_err(|source| ProcessError::Netns {
        path: path.to_owned(),
        source,
    })?;
    let fd = netns.as_raw_fd();
    // SAFETY: runs in the forked child before exec, where only
    // async-signal-safe calls are allowed; setns is a plain system call on a
    // descriptor the child inherited (the caller keeps the file open until
    // the spawn has returned).
    unsafe {
        command.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    Ok(netns)
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
    pidfd: Pidfd,
    /// Set by [`Self::detach`]: dropping the handle leaves the process running.
    detached: AtomicBool,
    /// The process is the first of its own PID namespace (the jailer's
    /// `--new-pid-ns`), which the kernel shields from every signal sent from
    /// outside that it has no handler for: SIGTERM does nothing to it.
    namespace_init: bool,
}

impl FirecrackerProcess {
    /// Spawns the process with its API socket, logs and console in `workdir`
    /// (under the jailer: in a jail the caller has prepared, see
    /// [`SpawnConfig::jail`]). Returns as soon as the process exists; see
    /// [`Self::wait_api_ready`].
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
        let stderr = prepare(config.workdir.join(VMM_STDERR))?;
        let console_path = config.workdir.join(CONSOLE_LOG);
        let console_file = console::create_console_file(&console_path).map_err(|source| {
            ProcessError::PrepareFile {
                path: console_path.clone(),
                source,
            }
        })?;

        let mut netns_file = None;
        let mut command = match &config.jail {
            Some(jail) => jailed_command(config, jail)?,
            None => {
                // Firecracker opens its log path but does not create it.
                prepare(config.workdir.join(VMM_LOG))?;
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
                    .args(&config.extra_args);
                if let Some(path) = &config.netns {
                    netns_file = Some(enter_netns_at_exec(&mut command, path)?);
                }
                command
            }
        };
        command
            .current_dir(&config.workdir)
            .stdin(Stdio::null())
            // A file, not a pipe: the console must outlive this daemon.
            .stdout(Stdio::from(console_file))
            .stderr(Stdio::from(stderr))
            // Own process group: a Ctrl-C aimed at the daemon's terminal must not
            // reach the VMs; the daemon decides what happens to them.
            .process_group(0)
            .kill_on_drop(false);
        let spawned = command.spawn();
        drop(netns_file);
        let spawned_binary = || match &config.jail {
            Some(jail) => jail.config().binary.clone(),
            None => config.binary.clone(),
        };
        let mut child = spawned.map_err(|source| ProcessError::Spawn {
            binary: spawned_binary(),
            source,
        })?;
        if let Some(jail) = config.jail.as_ref().filter(|j| j.config().new_pid_ns) {
            return Self::jailed_in_new_pid_ns(config, jail, child).await;
        }
        let pid = child.id().expect("a just-spawned child has a pid");
        // The child is unreaped, so the pid is ours to open a pidfd on; from here
        // on every signal goes through the pidfd.
        let pidfd = match Pidfd::open(pid) {
            Ok(pidfd) => pidfd,
            Err(source) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(ProcessError::Pidfd(source));
            }
        };
        // Recorded before anything can fail slowly, so a daemon that dies from
        // here on leaves a process the next one can find.
        let start_ticks = process_start_ticks(pid).unwrap_or(0);
        if let Err(source) = (ProcessRecord { pid, start_ticks }).write(&config.workdir) {
            let _ = pidfd.send_signal(libc::SIGKILL);
            let _ = child.wait().await;
            return Err(ProcessError::Record {
                path: config.workdir.join(PROCESS_RECORD),
                source,
            });
        }
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(async move {
            let reason = match child.wait().await {
                Ok(status) => exit_reason(status),
                Err(_) => ExitReason {
                    code: None,
                    signal: None,
                },
            };
            let _ = exit_tx.send(Some(reason));
        });
        Self::with_console(config.workdir.clone(), pid, pidfd, exit_rx, config).await
    }

    /// Completes a spawn under a jailer that starts Firecracker in a new PID
    /// namespace: the jailer forks, records Firecracker's pid in the chroot
    /// and exits. Firecracker is then not this process's child, so, as with
    /// [`Self::adopt`], its end is seen through a pidfd and its exit status
    /// is not known.
    async fn jailed_in_new_pid_ns(
        config: &SpawnConfig,
        jail: &Jail,
        mut child: tokio::process::Child,
    ) -> Result<Self, ProcessError> {
        let pid_file = jail.pid_file();
        let no_pid = || ProcessError::JailerPid {
            path: pid_file.clone(),
            timeout: JAILER_TIMEOUT,
        };
        let status = match tokio::time::timeout(JAILER_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(_)) => return Err(no_pid()),
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(no_pid());
            }
        };
        if !status.success() {
            return Err(ProcessError::JailerFailed {
                reason: exit_reason(status),
                stderr: log_excerpt(&config.workdir),
            });
        }
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
            .ok_or_else(no_pid)?;
        let pidfd = Pidfd::open(pid).map_err(ProcessError::Pidfd)?;
        // Checked after the open: the fd names a process inside this jail,
        // not one that took a recycled pid.
        if !jail.holds(pid) {
            return Err(ProcessError::ExitedEarly {
                reason: ExitReason {
                    code: None,
                    signal: None,
                },
                stderr: log_excerpt(&config.workdir),
            });
        }
        let start_ticks = process_start_ticks(pid).unwrap_or(0);
        if let Err(source) = (ProcessRecord { pid, start_ticks }).write(&config.workdir) {
            let _ = pidfd.send_signal(libc::SIGKILL);
            return Err(ProcessError::Record {
                path: config.workdir.join(PROCESS_RECORD),
                source,
            });
        }
        let exit = match watch_exit(&pidfd) {
            Ok(exit) => exit,
            Err(e) => {
                let _ = pidfd.send_signal(libc::SIGKILL);
                return Err(e);
            }
        };
        Self::with_console(config.workdir.clone(), pid, pidfd, exit, config).await
    }

    /// Takes charge of a Firecracker process that an earlier daemon started in
    /// `config.workdir` and that still runs: identified by its process record
    /// (pid and start time), held by a pidfd, its API socket checked, its
    /// console tailed from the start of the file. Its exit status cannot be
    /// known (it is not our child), only that it ended.
    pub async fn adopt(config: &SpawnConfig) -> Result<Self, ProcessError> {
        let workdir = &config.workdir;
        let record = ProcessRecord::read(workdir)
            .ok_or_else(|| ProcessError::NotRunning(workdir.clone()))?;
        let pidfd = record
            .pidfd()
            .ok_or_else(|| ProcessError::NotRunning(workdir.clone()))?;
        let api = api_client(workdir, record.pid, config);
        if let Err(source) = tokio::time::timeout(Duration::from_secs(2), api.describe_instance())
            .await
            .unwrap_or_else(|_| {
                Err(crate::client::ApiError::Timeout {
                    method: http::Method::GET,
                    path: "/".to_owned(),
                    timeout: Duration::from_secs(2),
                })
            })
        {
            return Err(ProcessError::ApiUnresponsive {
                pid: record.pid,
                source,
            });
        }
        let exit_rx = watch_exit(&pidfd)?;
        Self::with_console(workdir.clone(), record.pid, pidfd, exit_rx, config).await
    }

    /// Completes a handle: starts tailing the console until the process ends.
    async fn with_console(
        workdir: PathBuf,
        pid: u32,
        pidfd: Pidfd,
        exit: watch::Receiver<Option<ExitReason>>,
        config: &SpawnConfig,
    ) -> Result<Self, ProcessError> {
        let mut ended = exit.clone();
        let console = console::tail_file(
            &workdir.join(CONSOLE_LOG),
            config.console_log_limit,
            config.watch_for.clone(),
            async move {
                let _ = ended.wait_for(Option::is_some).await;
            },
        )
        .await;
        let console = match console {
            Ok(console) => console,
            Err(source) => {
                let _ = pidfd.send_signal(libc::SIGKILL);
                return Err(ProcessError::PrepareFile {
                    path: workdir.join(CONSOLE_LOG),
                    source,
                });
            }
        };
        Ok(Self {
            pid,
            api: api_client(&workdir, pid, config),
            workdir,
            console,
            exit,
            pidfd,
            detached: AtomicBool::new(false),
            namespace_init: config
                .jail
                .as_ref()
                .is_some_and(|jail| jail.config().new_pid_ns),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Moves the VMM's threads that `which` names to `priority` (a hand-over
    /// gives a VMM started idle its normal priority back).
    pub fn set_priority(&self, priority: Priority, which: Threads) -> Result<(), PriorityError> {
        crate::priority::set_process(self.pid, priority, which)
    }

    /// The priority the VMM runs at: idle when any of its threads is.
    pub fn priority(&self) -> Result<Priority, PriorityError> {
        crate::priority::process_priority(self.pid)
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

    /// From now on, dropping this handle leaves the process running (a daemon
    /// that exits and lets its successor re-adopt the VM).
    pub fn detach(&self) {
        self.detached.store(true, Ordering::SeqCst);
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
        // Woken by the process's end as well as by the socket's creation.
        let pidfd = self.pidfd.try_clone().map_err(ProcessError::Pidfd)?;
        let (answer, ready) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + timeout;
            let watch = listener::SocketWatch::new(&socket);
            let _ = answer.send(watch.wait(&socket, &pidfd, deadline, || *exit.borrow()));
            // Closing the watch takes milliseconds: here, after the answer.
            drop(watch);
        });
        let ready = ready.await.unwrap_or(Err(listener::NotReady::TimedOut));
        match ready {
            Ok(()) => Ok(()),
            Err(listener::NotReady::Exited(reason)) => Err(ProcessError::ExitedEarly {
                reason,
                stderr: self.stderr_excerpt(),
            }),
            Err(listener::NotReady::TimedOut) => Err(ProcessError::ApiTimeout {
                socket: self.api.socket().to_owned(),
                timeout,
            }),
        }
    }

    /// Last lines of Firecracker's own log and stderr, for error messages.
    pub fn stderr_excerpt(&self) -> String {
        log_excerpt(&self.workdir)
    }

    /// Sends `signal` if the process is still running.
    pub fn signal(&self, signal: i32) {
        // ESRCH (already exited) is the only failure, and harmless.
        let _ = self.pidfd.send_signal(signal);
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
        // Firecracker has no SIGTERM handler: outside a PID namespace of its
        // own SIGTERM ends it at once, and inside one it is ignored, so a
        // namespace's init would only sit out the grace.
        if !self.namespace_init {
            self.signal(libc::SIGTERM);
            if let Ok(reason) = tokio::time::timeout(policy.term_grace, self.wait_exit()).await {
                return reason;
            }
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
        if self.exited().is_none() && !self.detached.load(Ordering::SeqCst) {
            self.signal(libc::SIGKILL);
        }
    }
}

/// How long the jailer may take to set up a jail and start Firecracker.
const JAILER_TIMEOUT: Duration = Duration::from_secs(5);

/// The files of a jailed VMM that the host reaches from the VM's directory,
/// through symlinks into the chroot (the vsock socket's link dangles in a VM
/// without a vsock device).
const JAIL_LINKS: [&str; 3] = [API_SOCKET, VMM_LOG, crate::vm_config::VSOCK_SOCKET];

/// The jailer's command for `config`. The jail must have been prepared
/// ([`Jail::prepare`]) with the files the VM needs linked in.
fn jailed_command(config: &SpawnConfig, jail: &Jail) -> Result<Command, ProcessError> {
    let jailer = &jail.config().binary;
    if !jailer.is_file() {
        return Err(ProcessError::Jail(JailError::BinaryMissing(jailer.clone())));
    }
    jail.create_writable(VMM_LOG).map_err(ProcessError::Jail)?;
    for name in JAIL_LINKS {
        let link = config.workdir.join(name);
        let target = jail.host_path(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).map_err(|source| ProcessError::JailLink {
            link,
            target,
            source,
        })?;
    }
    // Paths as the VMM sees them: its root and working directory are the
    // chroot. The jailer adds `--id` itself.
    let mut args: Vec<std::ffi::OsString> = vec![
        "--api-sock".into(),
        format!("/{API_SOCKET}").into(),
        "--log-path".into(),
        VMM_LOG.into(),
        "--level".into(),
        "Info".into(),
    ];
    args.extend(config.extra_args.iter().map(Into::into));
    let mut command = Command::new(jailer);
    command.args(jail.command_args(config.netns.as_deref(), &config.cgroups, &args));
    Ok(command)
}

/// The client of the API socket in `workdir`, which only the VMM `pid`
/// may serve: running as its jail's user, or, unjailed, as this process's.
/// (The socket of a jailed VMM is in its chroot, where the jail's user may
/// put anything.)
fn api_client(workdir: &Path, pid: u32, config: &SpawnConfig) -> ApiClient {
    let uid = match &config.jail {
        Some(jail) => jail.user().uid,
        // SAFETY: geteuid only reads this process's credentials.
        None => unsafe { libc::geteuid() },
    };
    ApiClient::new(workdir.join(API_SOCKET)).with_peer(ExpectedPeer { pid, uid })
}

fn exit_reason(status: std::process::ExitStatus) -> ExitReason {
    use std::os::unix::process::ExitStatusExt;
    ExitReason {
        code: status.code(),
        signal: status.signal(),
    }
}

/// A channel that gets an (unknown) exit reason once the process of
/// `pidfd` has ended: for processes that are not this process's children.
fn watch_exit(pidfd: &Pidfd) -> Result<watch::Receiver<Option<ExitReason>>, ProcessError> {
    let waiter = pidfd.try_clone().map_err(ProcessError::Pidfd)?;
    // SAFETY: the AsyncFd owns `waiter`, an OwnedFd-backed pidfd that stays
    // open, and names the same process, until the AsyncFd is dropped.
    let waiter = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(waiter, tokio::io::Interest::READABLE)
    }
    .map_err(|e| ProcessError::Pidfd(std::io::Error::from(e)))?;
    let (exit_tx, exit_rx) = watch::channel(None);
    tokio::spawn(async move {
        // A pidfd turns readable when its process exits.
        let _ = waiter.readable().await;
        let _ = exit_tx.send(Some(ExitReason {
            code: None,
            signal: None,
        }));
    });
    Ok(exit_rx)
}

/// Last lines of Firecracker's own log and stderr in `workdir`.
/// How much of the end of each VMM log an error quotes from.
const EXCERPT_BYTES: u64 = 16 * 1024;

fn log_excerpt(workdir: &Path) -> String {
    let mut text = String::new();
    for name in [VMM_STDERR, VMM_LOG] {
        // The VMM's log may be in its jail: opened as untrusted, and only
        // its end read.
        let content = crate::jailer::open_untrusted_link(&workdir.join(name)).and_then(|file| {
            use std::io::{Read, Seek, SeekFrom};
            let mut file = file;
            let len = file.metadata()?.len();
            file.seek(SeekFrom::Start(len.saturating_sub(EXCERPT_BYTES)))?;
            let mut bytes = Vec::new();
            file.take(EXCERPT_BYTES).read_to_end(&mut bytes)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        });
        if let Ok(content) = content {
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
    fn a_vmm_without_a_record_is_found_by_its_socket_argument() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join(API_SOCKET);
        // A stand-in whose command line carries the socket the way Firecracker's
        // does. It waits on a builtin (`read` from a pipe nobody writes), so it
        // never forks a child that would show the same command line.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("read line")
            .arg("--api-sock")
            .arg(&socket)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // `spawn` returns once the child exists, which may be before its exec
        // has replaced the command line; wait for the new one to show.
        let cmdline = format!("/proc/{}/cmdline", child.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read(&cmdline)
            .unwrap_or_default()
            .windows(10)
            .any(|w| w == b"--api-sock")
        {
            assert!(std::time::Instant::now() < deadline, "child never exec-ed");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let (pid, pidfd) = find_vmm(dir.path()).expect("found by command line");
        assert_eq!(pid, child.id());
        pidfd.send_signal(libc::SIGKILL).unwrap();
        child.wait().unwrap();
        assert!(find_vmm(dir.path()).is_none());
    }

    #[test]
    fn start_ticks_of_this_process_are_stable() {
        let me = std::process::id();
        let a = process_start_ticks(me).expect("own stat readable");
        assert_eq!(process_start_ticks(me), Some(a));
        assert_eq!(process_start_ticks(u32::MAX), None);
    }
}
