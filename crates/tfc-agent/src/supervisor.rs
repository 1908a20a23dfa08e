//! Init: the agent as the guest's PID 1.
//!
//! PID 1 prepares the system ([`crate::init`]), binds the listening socket,
//! forks the agent, and from then on only waits for signals:
//!
//! - `SIGCHLD`: it reaps every child that ended, with `waitpid(-1)`. The
//!   processes `exec` starts are children of the agent, not of PID 1, and the
//!   agent waits for each by pid, so PID 1 never takes an exit status the
//!   agent needs: it only ever gets the agent itself and orphans (processes
//!   whose parent died, such as a command's background job).
//! - The agent ended (crash, panic, fatal error): logged and started again
//!   after a backoff ([`RESTART_BACKOFF_MIN`] doubling to
//!   [`RESTART_BACKOFF_MAX`], reset once an agent ran [`STABLE_AFTER`]).
//!   The listening socket stays open in PID 1, so connections waiting in its
//!   backlog are served by the next agent.
//! - [`POWER_OFF_SIGNAL`] (the agent's `shutdown`), `SIGINT`
//!   (ctrl-alt-del), `SIGTERM`, `SIGPWR`: power off (`power_off`).
//!
//! PID 1 never starts a runtime or a thread, so forking it is sound, and a
//! panic in the agent takes down the agent only. A panic in PID 1's own loop
//! is caught, logged and the loop goes on: PID 1 exiting would panic the
//! kernel.
//!
//! With `--init` on a process that is not PID 1 (in namespaces of its own)
//! the same loop runs as a child subreaper; it cannot power off, and stops
//! (stopping the agent) on the power-off signals instead.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cmdline;
use crate::init::{self, InitError};
use crate::server::{self, AgentConfig, Endpoint, InitLink, Listener};
use crate::vsock;

/// What the agent sends its init to ask for the power-off.
pub const POWER_OFF_SIGNAL: libc::c_int = libc::SIGUSR2;

/// The first wait before starting a dead agent again.
pub const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait before starting a dead agent again.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// An agent that ran this long resets the backoff when it dies.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long processes get between SIGTERM and SIGKILL at power-off.
pub const TERM_GRACE: Duration = Duration::from_secs(3);
/// How long PID 1 waits for the killed processes to be reaped.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// The signals PID 1 waits for; blocked so that they queue.
const SIGNALS: [libc::c_int; 5] = [
    libc::SIGCHLD,
    POWER_OFF_SIGNAL,
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGPWR,
];

/// How init was asked to run.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Where to serve; by default vsock, any CID, on `tfc.agent_port`.
    pub endpoint: Option<Endpoint>,
    /// `--guest` was given: machine-wide changes (clock, credited entropy)
    /// are allowed even when init is not the machine's (a PID namespace's).
    pub guest: bool,
    /// Where the kernel command line is read (`/proc/cmdline`).
    pub cmdline: PathBuf,
}

/// Why init did not get to supervise the agent.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("refusing init mode")]
    Namespaces(#[source] InitError),
    #[error("becoming the subreaper of the agent's orphans failed")]
    Subreaper(#[source] io::Error),
    #[error("blocking the signals init waits for failed")]
    BlockSignals(#[source] io::Error),
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// The set of [`SIGNALS`].
fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for signal in SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
    }
    set
}

fn set_signal_mask(how: libc::c_int, set: &libc::sigset_t) -> io::Result<()> {
    // SAFETY: `set` is a valid sigset_t; the old mask is not asked for.
    if unsafe { libc::sigprocmask(how, set, std::ptr::null_mut()) } != 0 {
        return Err(last_error());
    }
    Ok(())
}

/// Waits up to `timeout` for one of the blocked [`SIGNALS`].
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<libc::c_int> {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as _,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` and `timeout` are valid for the call; no siginfo is
    // asked for.
    let signal = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) };
    // -1: the timeout passed (EAGAIN) or another signal interrupted (EINTR).
    (signal > 0).then_some(signal)
}

/// How a child ended, for the log.
fn describe(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("was killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("ended with wait status {status:#x}")
    }
}

/// Reaps children until none has ended; returns the ones reaped.
fn reap_ready() -> Vec<(libc::pid_t, libc::c_int)> {
    let mut reaped = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: `status` is writable; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            // 0: children left, none ended; -1: ECHILD, no children at all.
            return reaped;
        }
        reaped.push((pid, status));
    }
}

/// Reaps until no child is left or `grace` passed; whether none is left.
fn reap_all(grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    loop {
        let mut status = 0;
        // SAFETY: `status` is writable; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            continue;
        }
        if pid < 0 && last_error().raw_os_error() == Some(libc::ECHILD) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The number of threads of this process; forking is sound only at one.
/// `None` without /proc.
fn threads() -> Option<usize> {
    std::fs::read_dir("/proc/self/task")
        .ok()
        .map(|tasks| tasks.count())
}

/// Forks the agent: the child serves `listener` and never returns here.
fn fork_agent(listener: Listener, config: AgentConfig) -> io::Result<libc::pid_t> {
    if let Some(count) = threads().filter(|count| *count != 1) {
        return Err(io::Error::other(format!(
            "init has {count} threads; forking it would not be sound"
        )));
    }
    // SAFETY: init is single-threaded (checked above, and it never starts a
    // thread or a runtime), so the child may run any code: no lock can be
    // held by a thread that does not exist in the child.
    match unsafe { libc::fork() } {
        -1 => Err(last_error()),
        0 => {
            // The agent. A panic must end it here, not unwind into init's
            // loop, which would then run twice.
            let code = panic::catch_unwind(AssertUnwindSafe(|| agent_main(listener, config)))
                .unwrap_or(101);
            std::process::exit(code)
        }
        pid => Ok(pid),
    }
}

/// The agent process: its own signal mask, a runtime, the serving.
fn agent_main(listener: Listener, config: AgentConfig) -> i32 {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    let mut none: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `none` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut none) };
    if let Err(e) = set_signal_mask(libc::SIG_SETMASK, &none) {
        tracing::error!(error = %e, "unblocking signals in the agent failed");
        return 1;
    }
    // An agent under an `--init` that is not PID 1 must not outlive it.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    match server::run(listener, config) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %server::error_chain(&e), "the agent stopped serving");
            1
        }
    }
}

/// The agent as init sees it.
#[derive(Debug)]
struct Running {
    pid: libc::pid_t,
    since: Instant,
}

/// Init's state between signals.
#[derive(Debug)]
struct Supervisor {
    endpoint: Endpoint,
    config: AgentConfig,
    /// Made on the first start and kept across restarts.
    listener: Option<Listener>,
    agent: Option<Running>,
    next_start: Instant,
    backoff: Duration,
    /// PID 1 of the machine (a VM), not of a PID namespace.
    machine: bool,
    pid1: bool,
}

/// What one turn of the loop decided.
enum Turn {
    Go,
    /// A power-off signal arrived.
    Stop(libc::c_int),
}

impl Supervisor {
    fn schedule_start(&mut self) {
        self.next_start = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(RESTART_BACKOFF_MAX);
    }

    fn start_agent_if_due(&mut self) {
        if self.agent.is_some() || Instant::now() < self.next_start {
            return;
        }
        if self.listener.is_none() {
            match Listener::bind(&self.endpoint) {
                Ok(listener) => self.listener = Some(listener),
                Err(e) => {
                    tracing::error!(error = %server::error_chain(&e), retry_in = ?self.backoff, "cannot listen");
                    self.schedule_start();
                    return;
                }
            }
        }
        let handle = match self.listener.as_ref().map(Listener::try_clone) {
            Some(Ok(handle)) => handle,
            Some(Err(e)) => {
                tracing::error!(error = %e, "duplicating the listening socket failed");
                self.schedule_start();
                return;
            }
            None => return,
        };
        match fork_agent(handle, self.config.clone()) {
            Ok(pid) => {
                tracing::debug!(pid, "agent started");
                self.agent = Some(Running {
                    pid,
                    since: Instant::now(),
                });
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?self.backoff, "starting the agent failed");
                self.schedule_start();
            }
        }
    }

    fn reap(&mut self) {
        for (pid, status) in reap_ready() {
            match &self.agent {
                Some(agent) if agent.pid == pid => {
                    if agent.since.elapsed() >= STABLE_AFTER {
                        self.backoff = RESTART_BACKOFF_MIN;
                    }
                    tracing::error!(
                        pid,
                        "the agent {}; starting it again in {:?}",
                        describe(status),
                        self.backoff
                    );
                    self.agent = None;
                    self.schedule_start();
                }
                _ => tracing::debug!(pid, "reaped an orphan that {}", describe(status)),
            }
        }
    }

    fn turn(&mut self, signals: &libc::sigset_t) -> Turn {
        self.start_agent_if_due();
        // A periodic wake-up even with nothing due: reaping does not depend
        // on a SIGCHLD that might have been missed.
        let wait = match self.agent {
            Some(_) => Duration::from_secs(30),
            None => self
                .next_start
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        };
        let signal = wait_signal(signals, wait);
        self.reap();
        match signal {
            Some(libc::SIGCHLD) | None => Turn::Go,
            Some(signal) => Turn::Stop(signal),
        }
    }

    /// Runs until a power-off signal; as PID 1 then powers off and never
    /// returns.
    fn supervise(mut self, signals: &libc::sigset_t) {
        loop {
            match panic::catch_unwind(AssertUnwindSafe(|| self.turn(signals))) {
                Ok(Turn::Go) => {}
                Ok(Turn::Stop(signal)) if self.pid1 => power_off(signal, self.machine),
                Ok(Turn::Stop(signal)) => {
                    self.stop_agent(signal);
                    return;
                }
                Err(_) => {
                    // The panic hook printed the message to the console.
                    tracing::error!("init's loop panicked; going on");
                    std::thread::sleep(RESTART_BACKOFF_MIN);
                }
            }
        }
    }

    /// Stops the agent of an `--init` that is not PID 1.
    fn stop_agent(&mut self, signal: libc::c_int) {
        tracing::info!(signal, "stopping");
        if let Some(agent) = self.agent.take() {
            // SAFETY: kill has no memory effects; the pid is our unreaped
            // child, so it cannot have been reused.
            unsafe { libc::kill(agent.pid, libc::SIGTERM) };
            let deadline = Instant::now() + TERM_GRACE;
            let mut status = 0;
            // SAFETY: `status` is writable.
            while unsafe { libc::waitpid(agent.pid, &mut status, libc::WNOHANG) } == 0 {
                if Instant::now() >= deadline {
                    // SAFETY: as above.
                    unsafe { libc::kill(agent.pid, libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        reap_ready();
    }
}

/// Runs init: prepares the system, then supervises the agent. As PID 1 this
/// returns only when init mode was refused; otherwise on a stop signal.
pub fn run(options: InitOptions) -> Result<(), SupervisorError> {
    let pid1 = init::own_pid() == 1;
    init::check_own_namespaces().map_err(SupervisorError::Namespaces)?;
    if !pid1 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(SupervisorError::Subreaper(last_error()));
        }
    }
    let signals = signal_set();
    set_signal_mask(libc::SIG_BLOCK, &signals).map_err(SupervisorError::BlockSignals)?;

    let mounted = init::mount_filesystems();
    init::open_console();
    if !mounted.mounted.is_empty() {
        tracing::info!("mounted {}", mounted.mounted.join(" "));
    }
    if !mounted.already.is_empty() {
        tracing::debug!("already mounted: {}", mounted.already.join(" "));
    }
    for failure in &mounted.failed {
        tracing::warn!("{}", server::error_chain(failure));
    }
    let text = std::fs::read_to_string(&options.cmdline).unwrap_or_else(|e| {
        tracing::warn!(path = %options.cmdline.display(), error = %e, "no kernel command line; using defaults");
        String::new()
    });
    let (params, warnings) = cmdline::parse(&text);
    for warning in &warnings {
        tracing::warn!("{}", server::error_chain(warning));
    }
    for failure in init::configure_system(&params) {
        tracing::warn!("{}", server::error_chain(&failure));
    }

    let machine = pid1 && init::in_initial_pid_namespace();
    if machine {
        // Ctrl-alt-del (the VMM's graceful stop) then reaches init as SIGINT
        // instead of rebooting at once.
        // SAFETY: reboot with RB_DISABLE_CAD only sets a kernel flag.
        unsafe { libc::reboot(libc::RB_DISABLE_CAD) };
    }
    let endpoint = options.endpoint.unwrap_or(Endpoint::Vsock {
        cid: vsock::CID_ANY,
        port: params.agent_port,
    });
    let supervisor = Supervisor {
        endpoint,
        config: AgentConfig {
            guest: options.guest || machine,
            clock_file: None,
            init: Some(InitLink {
                pid: init::own_pid(),
                can_power_off: pid1,
            }),
        },
        listener: None,
        agent: None,
        next_start: Instant::now(),
        backoff: RESTART_BACKOFF_MIN,
        machine,
        pid1,
    };
    supervisor.supervise(&signals);
    Ok(())
}

/// Unmounts everything but the root, innermost first; on a machine also
/// makes the root read-only. Within a PID namespace the root's superblock is
/// the host's, so it is left as it is.
fn unmount_all(machine: bool) {
    let points = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| init::mount_points(&text))
        .unwrap_or_default();
    for point in points.iter().rev().filter(|point| *point != "/") {
        let Ok(target) = std::ffi::CString::new(point.as_str()) else {
            continue;
        };
        // SAFETY: `target` is a NUL-terminated string alive for the calls.
        unsafe {
            if libc::umount2(target.as_ptr(), 0) != 0 {
                libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
    if machine {
        let root = c"/";
        // SAFETY: `root` is NUL-terminated; the other pointers may be null
        // for a remount.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            tracing::warn!(error = %last_error(), "making the root filesystem read-only failed");
        }
    }
}

/// The `reboot` command that ends this machine's VM. Without ACPI
/// (Firecracker; QEMU's microvm with `acpi=off`) the kernel cannot switch
/// the machine off: `RB_POWER_OFF` only halts the CPUs and the VMM runs on
/// (seen under QEMU). A reset is what these VMMs take as the end: with
/// `reboot=k` it is a keyboard-controller reset, on which Firecracker exits,
/// and QEMU too under `-no-reboot`. With ACPI, `RB_POWER_OFF` works.
fn machine_off_command() -> libc::c_int {
    if Path::new("/sys/firmware/acpi").exists() {
        libc::RB_POWER_OFF
    } else {
        libc::RB_AUTOBOOT
    }
}

/// Powers off: sync, SIGTERM to every process, SIGKILL to what is left after
/// [`TERM_GRACE`], unmount, sync, `reboot`.
///
/// Only PID 1 calls this. On a machine (`machine`) `reboot` ends the VM (see
/// [`machine_off_command`]). In a PID namespace it is `RB_POWER_OFF`, which
/// the kernel turns into the end of the namespace: it kills the namespace's
/// init, and with it every process in it, and reports the init killed by
/// SIGINT (`reboot(2)`, "Behavior inside PID namespaces"); the host is not
/// touched. `kill(-1, ...)` likewise reaches only the processes of init's
/// PID namespace.
fn power_off(signal: libc::c_int, machine: bool) -> ! {
    tracing::info!(signal, "powering off");
    // Decided while /sys is still mounted.
    let command = if machine {
        machine_off_command()
    } else {
        libc::RB_POWER_OFF
    };
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    // SAFETY: kill has no memory effects; as PID 1, -1 means every other
    // process of this PID namespace.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    if !reap_all(TERM_GRACE) {
        tracing::warn!("processes still running after SIGTERM; killing them");
        // SAFETY: as above.
        unsafe { libc::kill(-1, libc::SIGKILL) };
        reap_all(KILL_GRACE);
    }
    unmount_all(machine);
    // SAFETY: as above.
    unsafe { libc::sync() };
    // SAFETY: reboot takes no pointers with these commands.
    unsafe { libc::reboot(command) };
    // Still here: the kernel refused.
    tracing::error!(error = %last_error(), "power-off failed; exiting, which panics the kernel (panic=1 then ends the VM)");
    std::process::exit(1)
}

/// The last resort of a PID 1 whose init failed: reap forever, since
/// exiting would panic the kernel.
pub fn reap_forever() -> ! {
    loop {
        let mut status = 0;
        // SAFETY: `status` is writable.
        if unsafe { libc::waitpid(-1, &mut status, 0) } < 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}
