//! Supervision of one VM's processes: `vhost-device-vsock` (when the VM has
//! a vsock device) and QEMU, both in the VM's working directory.
//!
//! Files made there, besides those of [`crate::command`]: the process
//! records [`QEMU_RECORD`] and [`VHOST_RECORD`] (pid and start time, written
//! right after each spawn, so a later daemon can adopt or end the processes),
//! and the console log. Sockets are removed once QEMU has ended; logs stay
//! until the owner removes the directory.
//!
//! The two processes live and die together: a supervisor task waits for
//! both, ends the vsock backend once QEMU has ended (it would otherwise wait
//! for a new QEMU forever), and ends QEMU if the vsock backend dies under it
//! (its guest would have lost vsock for good). A VM's exit is published only
//! after both have ended. Signals go through pidfds, never to a recycled pid.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tfc_firecracker::console::{self, ConsoleWatch};
use tfc_firecracker::pidfd::Pidfd;
use tfc_firecracker::process::{process_start_ticks, ProcessRecord};
use tokio::process::{Child, Command};
use tokio::sync::watch;

pub use tfc_core::ExitReason;

use crate::command::{
    self, MachineConfig, CONSOLE_LOG, QEMU_STDERR, QMP_SOCKET, ROOTFS_LINK, VHOST_LOG,
    VHOST_SOCKET, VSOCK_SOCKET,
};
use crate::qmp::{QmpClient, QmpError, Status};

/// QEMU's process record.
pub const QEMU_RECORD: &str = "qemu.process.json";
/// `vhost-device-vsock`'s process record.
pub const VHOST_RECORD: &str = "vhost-device-vsock.process.json";

/// `vhost-device-vsock` listens within milliseconds; this bounds a wedged start.
const VHOST_LISTEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the vsock backend may take to go after SIGTERM once QEMU has ended.
const VHOST_TERM_GRACE: Duration = Duration::from_secs(2);

/// How to start one VM.
#[derive(Debug, Clone)]
pub struct SpawnConfig {
    pub qemu: PathBuf,
    pub vhost_vsock: PathBuf,
    /// Must exist; both processes run with it as their working directory.
    pub workdir: PathBuf,
    pub machine: MachineConfig,
    /// Bytes of console output kept before rotating.
    pub console_log_limit: u64,
    /// Console texts to watch for (readiness markers, panics).
    pub watch_for: Vec<String>,
    /// Bound on one QMP command.
    pub qmp_timeout: Duration,
    /// A network namespace for QEMU (`/run/netns/NAME`), holding the tap of
    /// `machine.network`; the caller's own if `None`. The vsock backend
    /// stays in the caller's: it talks over Unix sockets only.
    pub netns: Option<PathBuf>,
}

/// A failure to start, adopt or talk to a VM's processes.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{what} not found at {path}")]
    BinaryMissing { what: &'static str, path: PathBuf },
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
    #[error("cannot run QEMU in the VM's network namespace")]
    Netns(#[source] Box<tfc_firecracker::ProcessError>),
    #[error("cannot keep hold of the process (pidfd)")]
    Pidfd(#[source] std::io::Error),
    #[error("cannot record the process in {path}")]
    Record {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vhost-device-vsock {reason} before it listened on {socket}{log}")]
    VhostExited {
        reason: ExitReason,
        socket: PathBuf,
        log: String,
    },
    #[error("vhost-device-vsock did not listen on {socket} within {timeout:?}")]
    VhostTimeout { socket: PathBuf, timeout: Duration },
    #[error("QEMU {reason} before its QMP socket answered{stderr}")]
    ExitedEarly { reason: ExitReason, stderr: String },
    #[error("QEMU's QMP socket did not answer within {timeout:?}")]
    QmpTimeout {
        timeout: Duration,
        #[source]
        source: QmpError,
    },
    #[error("no running {what} is recorded in {workdir}")]
    NotRunning {
        what: &'static str,
        workdir: PathBuf,
    },
    #[error("QEMU {pid} runs but its QMP socket does not answer")]
    QmpUnresponsive {
        pid: u32,
        #[source]
        source: QmpError,
    },
}

/// One process of the VM, held by a pidfd.
#[derive(Debug)]
struct Held {
    pid: u32,
    pidfd: Pidfd,
}

impl Held {
    fn signal(&self, signal: i32) {
        // ESRCH (already exited) is the only failure, and harmless.
        let _ = self.pidfd.send_signal(signal);
    }
}

/// How the supervisor learns that a process ended.
type ExitWait = std::pin::Pin<Box<dyn Future<Output = ExitReason> + Send>>;

/// One VM's QEMU (and vsock backend), running or ended.
#[derive(Debug)]
pub struct QemuVm {
    workdir: PathBuf,
    qemu: Held,
    vhost: Option<Held>,
    qmp: QmpClient,
    console: ConsoleWatch,
    exit: watch::Receiver<Option<ExitReason>>,
    /// Set by [`Self::detach`]: the processes outlive this handle.
    detached: Arc<AtomicBool>,
}

impl QemuVm {
    /// Starts the VM's processes with the guest's vCPUs stopped: the vsock
    /// backend first (QEMU connects to it at start), then QEMU. Returns once
    /// both exist; see [`Self::wait_qmp_ready`]. On failure nothing is left
    /// running.
    pub async fn spawn(config: &SpawnConfig) -> Result<Self, ProcessError> {
        for (what, path) in [("qemu-system-x86_64", &config.qemu)].into_iter().chain(
            config
                .machine
                .vsock
                .then_some(("vhost-device-vsock", &config.vhost_vsock)),
        ) {
            if !path.is_file() {
                return Err(ProcessError::BinaryMissing {
                    what,
                    path: path.clone(),
                });
            }
        }
        let workdir = &config.workdir;
        remove_sockets(workdir);
        link_rootfs(&config.machine.rootfs, workdir).map_err(|source| {
            ProcessError::PrepareFile {
                path: workdir.join(ROOTFS_LINK),
                source,
            }
        })?;
        let vhost = if config.machine.vsock {
            Some(spawn_vhost(config).await?)
        } else {
            None
        };
        let qemu = spawn_qemu(config).await;
        let (qemu_child, qemu) = match qemu {
            Ok(spawned) => spawned,
            Err(err) => {
                if let Some((mut child, held)) = vhost {
                    held.signal(libc::SIGKILL);
                    let _ = child.wait().await;
                }
                remove_sockets(workdir);
                return Err(err);
            }
        };
        let qemu_exit: ExitWait = Box::pin(child_exit(qemu_child));
        let (vhost, vhost_exit) = match vhost {
            Some((child, held)) => (Some(held), Some(Box::pin(child_exit(child)) as ExitWait)),
            None => (None, None),
        };
        Self::supervised(config, qemu, qemu_exit, vhost, vhost_exit).await
    }

    /// Takes charge of the processes an earlier daemon started in
    /// `config.workdir` that still run: identified by their records (pid and
    /// start time), held by pidfds, QEMU's QMP socket checked, the console
    /// tailed from the start of its file. Their exit statuses cannot be known
    /// (they are not our children), only that they ended.
    pub async fn adopt(config: &SpawnConfig) -> Result<Self, ProcessError> {
        let workdir = &config.workdir;
        let qemu = recorded(workdir, QEMU_RECORD).ok_or_else(|| ProcessError::NotRunning {
            what: "QEMU",
            workdir: workdir.clone(),
        })?;
        let vhost = if config.machine.vsock {
            Some(
                recorded(workdir, VHOST_RECORD).ok_or_else(|| ProcessError::NotRunning {
                    what: "vhost-device-vsock",
                    workdir: workdir.clone(),
                })?,
            )
        } else {
            None
        };
        let qmp = QmpClient::new(workdir.join(QMP_SOCKET), config.qmp_timeout);
        if let Err(source) = qmp.query_status().await {
            return Err(ProcessError::QmpUnresponsive {
                pid: qemu.pid,
                source,
            });
        }
        let qemu_exit = pidfd_exit(&qemu)?;
        let vhost_exit = match &vhost {
            Some(held) => Some(pidfd_exit(held)?),
            None => None,
        };
        Self::supervised(config, qemu, qemu_exit, vhost, vhost_exit).await
    }

    /// Completes a handle: starts the supervisor and the console tailer.
    async fn supervised(
        config: &SpawnConfig,
        qemu: Held,
        qemu_exit: ExitWait,
        vhost: Option<Held>,
        vhost_exit: Option<ExitWait>,
    ) -> Result<Self, ProcessError> {
        let workdir = config.workdir.clone();
        let detached = Arc::new(AtomicBool::new(false));
        let (exit_tx, exit_rx) = watch::channel(None);
        let kill_both = || {
            qemu.signal(libc::SIGKILL);
            if let Some(vhost) = &vhost {
                vhost.signal(libc::SIGKILL);
            }
        };
        let duplicates = qemu.pidfd.try_clone().and_then(|q| {
            let v = vhost.as_ref().map(|h| h.pidfd.try_clone()).transpose()?;
            Ok((q, v))
        });
        let (qemu_fd, vhost_fd) = match duplicates {
            Ok(fds) => fds,
            Err(source) => {
                kill_both();
                return Err(ProcessError::Pidfd(source));
            }
        };
        tokio::spawn(supervise(
            workdir.clone(),
            (qemu_fd, qemu_exit),
            vhost_fd.zip(vhost_exit),
            detached.clone(),
            exit_tx,
        ));
        let mut ended = exit_rx.clone();
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
                kill_both();
                return Err(ProcessError::PrepareFile {
                    path: workdir.join(CONSOLE_LOG),
                    source,
                });
            }
        };
        Ok(Self {
            qmp: QmpClient::new(workdir.join(QMP_SOCKET), config.qmp_timeout),
            workdir,
            qemu,
            vhost,
            console,
            exit: exit_rx,
            detached,
        })
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.qemu.pid
    }

    /// `vhost-device-vsock`'s pid, when the VM has a vsock device.
    pub fn vhost_pid(&self) -> Option<u32> {
        self.vhost.as_ref().map(|h| h.pid)
    }

    pub fn qmp(&self) -> &QmpClient {
        &self.qmp
    }

    pub fn console(&self) -> &ConsoleWatch {
        &self.console
    }

    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// From now on, dropping this handle leaves the processes running (a
    /// daemon that exits and lets its successor adopt the VM).
    pub fn detach(&self) {
        self.detached.store(true, Ordering::SeqCst);
    }

    /// How QEMU ended, once it and the vsock backend have.
    pub fn exited(&self) -> Option<ExitReason> {
        *self.exit.borrow()
    }

    /// Resolves when QEMU and the vsock backend have ended.
    pub async fn wait_exit(&self) -> ExitReason {
        let mut rx = self.exit.clone();
        let result = rx.wait_for(Option::is_some).await.map(|r| *r);
        match result {
            Ok(reason) => reason.expect("waited for Some"),
            // The supervisor always sends before it ends; a lost sender is
            // an unknown end rather than a hang.
            Err(_) => ExitReason {
                code: None,
                signal: None,
            },
        }
    }

    /// Waits until QMP answers, and returns the guest's status then.
    pub async fn wait_qmp_ready(&self, timeout: Duration) -> Result<Status, ProcessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut period = Duration::from_millis(1);
        loop {
            if let Some(reason) = self.exited() {
                return Err(ProcessError::ExitedEarly {
                    reason,
                    stderr: self.stderr_excerpt(),
                });
            }
            let last = match self.qmp.query_status().await {
                Ok(status) => return Ok(status),
                Err(err) => err,
            };
            if tokio::time::Instant::now() >= deadline {
                // It may have died while we asked: say so rather than "no answer".
                if let Some(reason) = self.exited() {
                    return Err(ProcessError::ExitedEarly {
                        reason,
                        stderr: self.stderr_excerpt(),
                    });
                }
                return Err(ProcessError::QmpTimeout {
                    timeout,
                    source: last,
                });
            }
            tokio::time::sleep(period).await;
            period = (period * 2).min(Duration::from_millis(50));
        }
    }

    /// The last lines of QEMU's and the vsock backend's own output, for
    /// error messages.
    pub fn stderr_excerpt(&self) -> String {
        excerpt(&self.workdir, &[QEMU_STDERR, VHOST_LOG])
    }

    /// Sends `signal` to QEMU if it still runs.
    pub fn signal(&self, signal: i32) {
        self.qemu.signal(signal);
    }

    /// Stops the VM: QMP `quit`, then SIGTERM, then SIGKILL, each after
    /// `grace` if the step before did not end QEMU. Returns how QEMU ended,
    /// once the vsock backend has ended too.
    pub async fn stop(&self, grace: Duration) -> ExitReason {
        if let Some(reason) = self.exited() {
            return reason;
        }
        if self.qmp.quit().await.is_ok() {
            if let Ok(reason) = tokio::time::timeout(grace, self.wait_exit()).await {
                return reason;
            }
        }
        self.signal(libc::SIGTERM);
        if let Ok(reason) = tokio::time::timeout(grace, self.wait_exit()).await {
            return reason;
        }
        self.signal(libc::SIGKILL);
        self.wait_exit().await
    }
}

/// A handle dropped while the VM still runs (a panicking owner, an
/// interrupted test) takes the processes with it rather than leaking them.
impl Drop for QemuVm {
    fn drop(&mut self) {
        if self.exited().is_none() && !self.detached.load(Ordering::SeqCst) {
            self.qemu.signal(libc::SIGKILL);
            if let Some(vhost) = &self.vhost {
                vhost.signal(libc::SIGKILL);
            }
        }
    }
}

/// Waits for both processes. Once QEMU has ended the vsock backend is ended
/// too; if the backend ends first, QEMU is asked to end (unless the handle
/// was detached: then the VM is a later daemon's to judge). The sockets go
/// once both have ended, then the exit is published.
async fn supervise(
    workdir: PathBuf,
    (qemu_fd, qemu_exit): (Pidfd, ExitWait),
    vhost: Option<(Pidfd, ExitWait)>,
    detached: Arc<AtomicBool>,
    exit_tx: watch::Sender<Option<ExitReason>>,
) {
    let mut qemu_exit = qemu_exit;
    let reason = match vhost {
        None => qemu_exit.await,
        Some((vhost_fd, mut vhost_exit)) => {
            tokio::select! {
                reason = &mut qemu_exit => {
                    let _ = vhost_fd.send_signal(libc::SIGTERM);
                    if tokio::time::timeout(VHOST_TERM_GRACE, &mut vhost_exit).await.is_err() {
                        let _ = vhost_fd.send_signal(libc::SIGKILL);
                        vhost_exit.await;
                    }
                    reason
                }
                vhost_reason = &mut vhost_exit => {
                    if !detached.load(Ordering::SeqCst) {
                        tracing::warn!(
                            workdir = %workdir.display(),
                            "vhost-device-vsock {vhost_reason}; ending QEMU, whose vsock device it served{}",
                            excerpt(&workdir, &[VHOST_LOG]),
                        );
                        let _ = qemu_fd.send_signal(libc::SIGTERM);
                    }
                    qemu_exit.await
                }
            }
        }
    };
    remove_sockets(&workdir);
    let _ = exit_tx.send(Some(reason));
}

/// Links the root image into `workdir` as [`ROOTFS_LINK`], which QEMU
/// opens relative to its working directory.
fn link_rootfs(rootfs: &Path, workdir: &Path) -> std::io::Result<()> {
    let link = workdir.join(ROOTFS_LINK);
    match std::fs::remove_file(&link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(rootfs, link)
}

/// Removes the VM's sockets (a stale one would make the next bind fail).
fn remove_sockets(workdir: &Path) {
    for name in [QMP_SOCKET, VHOST_SOCKET, VSOCK_SOCKET] {
        let _ = std::fs::remove_file(workdir.join(name));
    }
}

/// The exit of a child we spawned (and alone reap).
async fn child_exit(mut child: Child) -> ExitReason {
    match child.wait().await {
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
    }
}

/// The exit of an adopted process: its pidfd turns readable when it ends.
fn pidfd_exit(held: &Held) -> Result<ExitWait, ProcessError> {
    let waiter = held.pidfd.try_clone().map_err(ProcessError::Pidfd)?;
    // SAFETY: the AsyncFd owns `waiter`, an OwnedFd-backed pidfd that stays
    // open, and names the same process, until the AsyncFd is dropped.
    let waiter = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(waiter, tokio::io::Interest::READABLE)
    }
    .map_err(|e| ProcessError::Pidfd(std::io::Error::from(e)))?;
    Ok(Box::pin(async move {
        let _ = waiter.readable().await;
        ExitReason {
            code: None,
            signal: None,
        }
    }))
}

/// Writes `pid`'s record to `workdir/name`.
fn write_record(workdir: &Path, name: &str, pid: u32) -> Result<(), ProcessError> {
    let record = ProcessRecord {
        pid,
        start_ticks: process_start_ticks(pid).unwrap_or(0),
    };
    let path = workdir.join(name);
    let bytes = serde_json::to_vec(&record).map_err(std::io::Error::other);
    bytes
        .and_then(|bytes| std::fs::write(&path, bytes))
        .map_err(|source| ProcessError::Record { path, source })
}

/// The recorded process in `workdir/name`, if it still runs.
fn recorded(workdir: &Path, name: &str) -> Option<Held> {
    let bytes = std::fs::read(workdir.join(name)).ok()?;
    let record: ProcessRecord = serde_json::from_slice(&bytes).ok()?;
    let pidfd = record.pidfd()?;
    Some(Held {
        pid: record.pid,
        pidfd,
    })
}

/// Spawns `binary` with `args` in `config.workdir`, in its own process group
/// (a Ctrl-C aimed at the daemon's terminal must not reach the VMs), holds it
/// by a pidfd and records it as `record`. On failure nothing runs.
async fn spawn_held(
    command: &mut Command,
    binary: &Path,
    workdir: &Path,
    record: &str,
) -> Result<(Child, Held), ProcessError> {
    command
        .current_dir(workdir)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(false);
    let mut child = command.spawn().map_err(|source| ProcessError::Spawn {
        binary: binary.to_owned(),
        source,
    })?;
    let pid = child.id().expect("a just-spawned child has a pid");
    // The child is unreaped, so the pid is ours to open a pidfd on.
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
    if let Err(err) = write_record(workdir, record, pid) {
        let _ = pidfd.send_signal(libc::SIGKILL);
        let _ = child.wait().await;
        return Err(err);
    }
    Ok((child, Held { pid, pidfd }))
}

fn create_file(path: PathBuf) -> Result<std::fs::File, ProcessError> {
    std::fs::File::create(&path).map_err(|source| ProcessError::PrepareFile { path, source })
}

/// Starts `vhost-device-vsock` and waits until it listens for QEMU.
async fn spawn_vhost(config: &SpawnConfig) -> Result<(Child, Held), ProcessError> {
    let workdir = &config.workdir;
    let log = create_file(workdir.join(VHOST_LOG))?;
    let log2 = log
        .try_clone()
        .map_err(|source| ProcessError::PrepareFile {
            path: workdir.join(VHOST_LOG),
            source,
        })?;
    let mut command = Command::new(&config.vhost_vsock);
    command
        .args(command::vhost_vsock_args(workdir))
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    let (mut child, held) =
        spawn_held(&mut command, &config.vhost_vsock, workdir, VHOST_RECORD).await?;
    let socket = workdir.join(VHOST_SOCKET);
    let deadline = tokio::time::Instant::now() + VHOST_LISTEN_TIMEOUT;
    let mut period = Duration::from_micros(200);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            use std::os::unix::process::ExitStatusExt;
            return Err(ProcessError::VhostExited {
                reason: ExitReason {
                    code: status.code(),
                    signal: status.signal(),
                },
                socket,
                log: excerpt(workdir, &[VHOST_LOG]),
            });
        }
        if is_listening(&socket) {
            return Ok((child, held));
        }
        if tokio::time::Instant::now() >= deadline {
            held.signal(libc::SIGKILL);
            let _ = child.wait().await;
            return Err(ProcessError::VhostTimeout {
                socket,
                timeout: VHOST_LISTEN_TIMEOUT,
            });
        }
        tokio::time::sleep(period).await;
        period = (period * 2).min(Duration::from_millis(20));
    }
}

/// Starts QEMU with its serial console on the console file.
async fn spawn_qemu(config: &SpawnConfig) -> Result<(Child, Held), ProcessError> {
    let workdir = &config.workdir;
    let stderr = create_file(workdir.join(QEMU_STDERR))?;
    let console_path = workdir.join(CONSOLE_LOG);
    // A file opened for appending, not a pipe: the console must outlive this
    // daemon, and the tailer's rotation truncates it under the writer.
    let console_file = console::create_console_file(&console_path).map_err(|source| {
        ProcessError::PrepareFile {
            path: console_path.clone(),
            source,
        }
    })?;
    let mut command = Command::new(&config.qemu);
    command
        .args(command::qemu_args(&config.machine, workdir))
        .stdout(Stdio::from(console_file))
        .stderr(Stdio::from(stderr));
    let _netns = match &config.netns {
        Some(path) => Some(
            tfc_firecracker::process::enter_netns_at_exec(&mut command, path)
                .map_err(|e| ProcessError::Netns(Box::new(e)))?,
        ),
        None => None,
    };
    spawn_held(&mut command, &config.qemu, workdir, QEMU_RECORD).await
}

/// Whether a Unix socket is bound at `path` and listening, read from
/// `/proc/net/unix` (connecting to find out would be taken as QEMU's
/// connection by a vhost-user backend, which serves one). Where that file
/// cannot be read, a socket file existing counts.
fn is_listening(path: &Path) -> bool {
    /// `__SO_ACCEPTCON` in the Flags column: the socket listens.
    const ACCEPTING: u32 = 0x10000;
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        use std::os::unix::fs::FileTypeExt;
        return std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket());
    };
    let wanted = path.as_os_str().to_string_lossy();
    table.lines().skip(1).any(|line| {
        // Num RefCount Protocol Flags Type St Inode Path; the path may hold spaces.
        let mut rest = line;
        let mut fields = Vec::with_capacity(7);
        for _ in 0..7 {
            rest = rest.trim_start();
            let end = rest.find(' ').unwrap_or(rest.len());
            fields.push(&rest[..end]);
            rest = &rest[end..];
        }
        let flags = u32::from_str_radix(fields[3], 16).unwrap_or(0);
        flags & ACCEPTING != 0 && rest.trim() == wanted
    })
}

/// The last three lines of each of `files` in `workdir`, indented.
fn excerpt(workdir: &Path, files: &[&str]) -> String {
    let mut text = String::new();
    for name in files {
        if let Ok(content) = std::fs::read_to_string(workdir.join(name)) {
            let lines: Vec<&str> = content.lines().collect();
            for line in &lines[lines.len().saturating_sub(3)..] {
                text.push_str("\n  ");
                text.push_str(line);
            }
        }
    }
    text
}

/// The processes serving the VM in `workdir`, if any still run: by their
/// records, or, when a crash came between a spawn and its record, by their
/// command lines (QEMU's QMP socket, the backend's `--uds-path`). Each with a
/// pidfd opened before its identity was checked a second time.
pub fn find_processes(workdir: &Path) -> Vec<(u32, Pidfd)> {
    let mut found: Vec<(u32, Pidfd)> = [QEMU_RECORD, VHOST_RECORD]
        .into_iter()
        .filter_map(|name| recorded(workdir, name))
        .map(|held| (held.pid, held.pidfd))
        .collect();
    let qmp_arg = command::qmp_arg(workdir);
    let uds = workdir.join(VSOCK_SOCKET);
    let serves = |pid: u32| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        args.contains(&qmp_arg.as_encoded_bytes())
            || args
                .windows(2)
                .any(|w| w[0] == b"--uds-path" && w[1] == uds.as_os_str().as_encoded_bytes())
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    let pids = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()));
    for pid in pids {
        if found.iter().any(|(p, _)| *p == pid) || !serves(pid) {
            continue;
        }
        let Ok(pidfd) = Pidfd::open(pid) else {
            continue;
        };
        // Still the same process after the open: the fd names it.
        if serves(pid) {
            found.push((pid, pidfd));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_seen_and_a_plain_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sock");
        assert!(!is_listening(&path));
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(is_listening(&path));
        drop(listener);
        // The file stays after the listener is gone; it no longer listens.
        // A child another test forks at this moment holds a copy of the
        // descriptor until it execs, so the socket may outlive the drop
        // briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while is_listening(&path) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!is_listening(&path));
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"").unwrap();
        assert!(!is_listening(&plain));
    }

    /// A stand-in whose command line names the VM's sockets the way QEMU's and
    /// vhost-device-vsock's do. It waits on a builtin (`read` from a pipe
    /// nobody writes), so it never forks a child with the same command line.
    fn stand_in(args: &[std::ffi::OsString]) -> std::process::Child {
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg("read line")
            .args(args)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        // `spawn` may return before the exec has replaced the command line.
        let cmdline = format!("/proc/{}/cmdline", child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read(&cmdline)
            .unwrap_or_default()
            .windows(4)
            .any(|w| w == b"read")
        {
            assert!(std::time::Instant::now() < deadline, "child never exec-ed");
            std::thread::sleep(Duration::from_millis(1));
        }
        child
    }

    #[test]
    fn processes_without_records_are_found_by_their_command_lines() {
        let dir = tempfile::tempdir().unwrap();
        let workdir = dir.path().join("vm,1");
        std::fs::create_dir(&workdir).unwrap();
        let machine = MachineConfig {
            kernel: "/k".into(),
            boot_args: String::new(),
            rootfs: "/r".into(),
            vcpus: 1,
            memory_mib: 64,
            vsock: true,
            network: None,
        };
        let mut qemu = stand_in(&command::qemu_args(&machine, &workdir));
        let mut vhost = stand_in(&command::vhost_vsock_args(&workdir));
        // Another VM's processes are not this one's.
        let other = dir.path().join("vm2");
        let mut unrelated = stand_in(&command::vhost_vsock_args(&other));
        let mut found: Vec<u32> = find_processes(&workdir).iter().map(|(p, _)| *p).collect();
        found.sort_unstable();
        let mut expected = vec![qemu.id(), vhost.id()];
        expected.sort_unstable();
        assert_eq!(found, expected);
        for (_, pidfd) in find_processes(&workdir) {
            pidfd.send_signal(libc::SIGKILL).unwrap();
        }
        qemu.wait().unwrap();
        vhost.wait().unwrap();
        assert!(find_processes(&workdir).is_empty());
        unrelated.kill().unwrap();
        unrelated.wait().unwrap();
    }

    #[test]
    fn records_name_running_processes_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        write_record(dir.path(), QEMU_RECORD, child.id()).unwrap();
        let held = recorded(dir.path(), QEMU_RECORD).expect("running");
        assert_eq!(held.pid, child.id());
        held.signal(libc::SIGKILL);
        child.wait().unwrap();
        assert!(recorded(dir.path(), QEMU_RECORD).is_none());
        assert!(recorded(dir.path(), VHOST_RECORD).is_none());
    }
}
