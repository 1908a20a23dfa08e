//! A scriptable stand-in for a VMM, for tests and demos of everything above the
//! backend seam. It runs on tokio's clock, so tests can pause and advance time.
//! It never stands in for Firecracker in a test that claims to test Firecracker.
//!
//! Scripted with [`FakeScript::agent`], a fake VM runs a real `tfc-agent`
//! process on the host (its `--unix` mode) behind the VM's vsock socket, with
//! a small relay that plays the VMM's part of the vsock handshake
//! (`CONNECT <port>\n` / `OK <port>\n`). Pausing the VM stops the agent
//! process (SIGSTOP), as a paused guest's agent would stop answering. Tests
//! built on this are "fake VMM + real agent": they test the daemon's agent
//! paths against the agent's real code, and never Firecracker's vsock.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tfc_core::limits::RateLimits;
use tfc_core::{BootPhase, VmId};
use tokio::sync::watch;

use std::path::Path;

use tfc_api::SnapshotKind;

use super::{BackendError, CreateRequest, ExitReason, RestoreRequest, VmBackend, VmMachine};

/// The version the fake reports for snapshots it writes.
pub const FAKE_VERSION: &str = "Fake v0";
/// Length of the memory files the fake writes.
pub const FAKE_MEMORY_BYTES: u64 = 1 << 20;
/// First bytes of a state file the fake writes, checked when it restores one.
const FAKE_STATE_MAGIC: &[u8] = b"tfc-fake-vmstate\n";

/// What the fake does next. Shared by the backend and the test that scripts it.
#[derive(Debug, Clone, Default)]
pub struct FakeScript {
    /// Time from `boot` to ready.
    pub boot_latency: Duration,
    /// Fail the next `create` with this message.
    pub fail_next_create: Option<String>,
    /// Fail the next `wait_ready` with this message.
    pub fail_next_boot: Option<String>,
    /// Machines created from now on "crash" (exit by SIGKILL) this long after boot.
    pub crash_after: Option<Duration>,
    /// Fail every pause/resume with this message.
    pub fail_pause_resume: Option<String>,
    /// Fail the next snapshot with this message.
    pub fail_next_snapshot: Option<String>,
    /// Time a restore takes (spawn to loaded).
    pub restore_latency: Duration,
    /// Fail every restore with this message while set.
    pub fail_restores: Option<String>,
    /// Time a resume takes.
    pub resume_latency: Duration,
    /// Machines whose health checks fail, with the reason.
    pub unhealthy: HashMap<VmId, String>,
    /// Machines booted or restored from now on run this guest agent.
    pub agent: Option<FakeAgent>,
}

/// A real agent behind a fake VM's vsock socket.
#[derive(Debug, Clone)]
pub struct FakeAgent {
    /// The `tfc-agent` binary.
    pub binary: PathBuf,
    /// Start it with `--clock-file <workdir>/`[`FAKE_CLOCK_FILE`]: its
    /// `sync_clock` then records the time asked for instead of refusing (a
    /// host's clock is never set). Without it, the agent refuses
    /// `sync_clock` as it does on any host, so a fix-up fails.
    pub record_clock: bool,
    /// Never start the agent: every vsock connection is refused, as by a
    /// guest whose agent never comes up.
    pub silent: bool,
}

/// Where a fake VM's agent records the clock it was asked to set, in the
/// VM's directory.
pub const FAKE_CLOCK_FILE: &str = "guest-clock";
/// The fake VM's agent's own socket, in the VM's directory.
pub const FAKE_AGENT_SOCKET: &str = "agent.sock";
/// The fake VM's agent's log, in the VM's directory.
pub const FAKE_AGENT_LOG: &str = "agent.log";

/// The fake backend.
#[derive(Debug, Clone, Default)]
pub struct FakeBackend {
    script: Arc<Mutex<FakeScript>>,
    /// Exit channel of every live machine, so a test can "kill" one. Weak: an
    /// entry dies with its machine and is pruned on the next create.
    machines: Arc<Mutex<HashMap<VmId, Weak<ExitChannel>>>>,
    /// Connections each machine's vsock relay passed to its agent, so tests
    /// can see the daemon keep one connection per VM.
    agent_connections: Arc<Mutex<HashMap<VmId, Arc<RelayControl>>>>,
    /// The CPU priority of each machine (see [`FakeBackend::priority`]).
    priorities: Arc<Mutex<HashMap<VmId, Arc<Mutex<FakePriorities>>>>>,
}

/// The CPU priority a fake VM's threads run at, as a VMM's would (see
/// [`VmMachine::foreground`] and [`VmMachine::foreground_control`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FakePriority {
    /// Every thread at normal priority.
    #[default]
    Normal,
    /// Restored in the background: every thread idle.
    Background,
    /// The threads that answer the API at normal priority, the vCPUs idle.
    VcpusIdle,
}

/// A fake VM's priority now, and what it was when its last resume ended.
#[derive(Debug, Clone, Copy, Default)]
struct FakePriorities {
    now: FakePriority,
    at_resume: Option<FakePriority>,
}

type ExitChannel = watch::Sender<Option<ExitReason>>;
type ExitSender = Arc<ExitChannel>;

impl FakeBackend {
    pub fn new(boot_latency: Duration) -> Self {
        Self {
            script: Arc::new(Mutex::new(FakeScript {
                boot_latency,
                ..FakeScript::default()
            })),
            machines: Arc::default(),
            agent_connections: Arc::default(),
            priorities: Arc::default(),
        }
    }

    /// The priority machine `id` runs at; `None` for a machine never created.
    pub fn priority(&self, id: &VmId) -> Option<FakePriority> {
        let priorities = self.priorities.lock().expect("fake priorities lock");
        priorities
            .get(id)
            .map(|p| p.lock().expect("fake priority lock").now)
    }

    /// The priority machine `id` ran at when its last resume ended; `None`
    /// before any resume.
    pub fn priority_at_resume(&self, id: &VmId) -> Option<FakePriority> {
        let priorities = self.priorities.lock().expect("fake priorities lock");
        priorities
            .get(id)
            .and_then(|p| p.lock().expect("fake priority lock").at_resume)
    }

    /// How many connections machine `id`'s vsock relay has passed to its
    /// agent so far; `None` for a machine without a scripted agent.
    pub fn agent_connections(&self, id: &VmId) -> Option<u64> {
        let counters = self.agent_connections.lock().expect("fake counters lock");
        counters
            .get(id)
            .map(|relay| relay.passed.load(Ordering::SeqCst))
    }

    /// Breaks every connection machine `id`'s vsock relay carries now, as a
    /// transport failure would (the agent and the relay go on). Returns
    /// false for a machine without a scripted agent.
    pub fn cut_agent_connections(&self, id: &VmId) -> bool {
        let counters = self.agent_connections.lock().expect("fake counters lock");
        match counters.get(id) {
            Some(relay) => {
                relay.cut.notify_one();
                true
            }
            None => false,
        }
    }

    /// Changes what the fake does next.
    pub fn script(&self, change: impl FnOnce(&mut FakeScript)) {
        change(&mut self.script.lock().expect("fake script lock"));
    }

    /// Ends machine `id` as if its process were killed with SIGKILL from outside.
    /// Returns false when no such machine was created.
    pub fn kill(&self, id: &VmId) -> bool {
        let machines = self.machines.lock().expect("fake machines lock");
        match machines.get(id).and_then(Weak::upgrade) {
            Some(tx) => {
                end(&tx, ExitReason::KILLED);
                true
            }
            None => false,
        }
    }

    fn snapshot(&self) -> FakeScript {
        self.script.lock().expect("fake script lock").clone()
    }

    /// The script for a create or restore, or its scripted failure (used once).
    fn next_create(&self) -> Result<FakeScript, BackendError> {
        let next = self.snapshot();
        if let Some(message) = next.fail_next_create {
            self.script(|s| s.fail_next_create = None);
            return Err(BackendError::Scripted(message));
        }
        Ok(next)
    }

    fn machine(
        &self,
        id: &VmId,
        next: &FakeScript,
        spec: &tfc_core::VmSpec,
        workdir: &Path,
    ) -> FakeMachine {
        let (exit_tx, exit_rx) = watch::channel(None);
        let exit_tx = Arc::new(exit_tx);
        let mut machines = self.machines.lock().expect("fake machines lock");
        machines.retain(|_, tx| tx.strong_count() > 0);
        machines.insert(id.clone(), Arc::downgrade(&exit_tx));
        drop(machines);
        // A guest agent needs the VM's vsock device and a port to serve.
        let agent = match (&next.agent, spec.readiness.agent_port()) {
            (Some(agent), Some(port)) if spec.vsock => Some((agent.clone(), port)),
            _ => None,
        };
        let priority = Arc::new(Mutex::new(FakePriorities::default()));
        let mut priorities = self.priorities.lock().expect("fake priorities lock");
        // An entry no machine holds any more is of a machine gone.
        priorities.retain(|_, p| Arc::strong_count(p) > 1);
        priorities.insert(id.clone(), priority.clone());
        drop(priorities);
        let connections = Arc::new(RelayControl::default());
        if agent.is_some() {
            let mut counters = self.agent_connections.lock().expect("fake counters lock");
            counters.insert(id.clone(), connections.clone());
        }
        FakeMachine {
            id: id.clone(),
            paused: Default::default(),
            script: self.script.clone(),
            boot_latency: next.boot_latency,
            crash_after: next.crash_after,
            exit_tx,
            exit_rx,
            workdir: workdir.to_owned(),
            agent,
            guest: Mutex::default(),
            connections,
            priority,
        }
    }
}

/// One fake VM.
#[derive(Debug)]
pub struct FakeMachine {
    id: VmId,
    /// The guest's vCPUs are paused (as a VMM would report it).
    paused: std::sync::atomic::AtomicBool,
    script: Arc<Mutex<FakeScript>>,
    boot_latency: Duration,
    crash_after: Option<Duration>,
    exit_tx: ExitSender,
    exit_rx: watch::Receiver<Option<ExitReason>>,
    workdir: PathBuf,
    /// The agent to run once the guest runs, and its vsock port.
    agent: Option<(FakeAgent, u32)>,
    /// The running guest's agent, while the machine runs (boxed: the
    /// process handle is large, and `Machine` holds a fake by value).
    guest: Mutex<Option<Box<FakeGuest>>>,
    /// Its relay's count and cut (see [`FakeBackend::agent_connections`]).
    connections: Arc<RelayControl>,
    /// The priority its threads run at.
    priority: Arc<Mutex<FakePriorities>>,
}

/// A fake VM's guest: the agent process and the relay that plays the
/// VMM's side of the vsock socket. Dropping it kills the agent (and the
/// commands it runs, whose connections close), ends the relay and removes
/// both sockets.
#[derive(Debug)]
struct FakeGuest {
    /// `None` for a silent agent.
    agent: Option<tokio::process::Child>,
    relay: tokio::task::JoinHandle<()>,
    sockets: [PathBuf; 2],
}

impl FakeGuest {
    fn start(
        agent: &FakeAgent,
        port: u32,
        workdir: &Path,
        connections: Arc<RelayControl>,
    ) -> std::io::Result<Self> {
        let vsock = workdir.join(tfc_firecracker::vm_config::VSOCK_SOCKET);
        let agent_socket = workdir.join(FAKE_AGENT_SOCKET);
        let _ = std::fs::remove_file(&vsock);
        let _ = std::fs::remove_file(&agent_socket);
        let listener = tokio::net::UnixListener::bind(&vsock)?;
        let process = if agent.silent {
            None
        } else {
            let log = std::fs::File::create(workdir.join(FAKE_AGENT_LOG))?;
            let mut command = tokio::process::Command::new(&agent.binary);
            command
                .arg("--unix")
                .arg(&agent_socket)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .kill_on_drop(true);
            if agent.record_clock {
                command
                    .arg("--clock-file")
                    .arg(workdir.join(FAKE_CLOCK_FILE));
            }
            // SAFETY: the closure runs in the forked child before exec and
            // only makes one async-signal-safe system call.
            unsafe {
                command.pre_exec(|| {
                    // A daemon killed outright takes its fake guests along,
                    // as a VMM's death takes its guest.
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            Some(command.spawn()?)
        };
        let relay = tokio::spawn(relay(listener, port, agent_socket.clone(), connections));
        Ok(Self {
            agent: process,
            relay,
            sockets: [vsock, agent_socket],
        })
    }

    /// Stops (`SIGSTOP`) or continues (`SIGCONT`) the agent, as pausing and
    /// resuming the guest would.
    fn freeze(&self, frozen: bool) {
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        if let Some(pid) = self.agent.as_ref().and_then(|child| child.id()) {
            // SAFETY: kill has no memory effects; `pid` is this guest's own
            // child, not yet reaped (the Child is alive).
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    }
}

impl Drop for FakeGuest {
    fn drop(&mut self) {
        self.relay.abort();
        // In a VM, the commands die with the guest; here they are host
        // processes that would outlive their agent. Frozen first, the agent
        // starts no more while its commands are found and killed; then the
        // Child's kill_on_drop ends the agent itself.
        if let Some(pid) = self.agent.as_ref().and_then(|child| child.id()) {
            self.freeze(true);
            for group in command_groups(pid) {
                // SAFETY: killpg has no memory effects; each group was
                // started by this guest's agent, which is stopped and has
                // not reaped its leader (its parent is still the agent).
                unsafe { libc::killpg(group, libc::SIGKILL) };
            }
        }
        for socket in &self.sockets {
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// The process groups of the commands the agent `agent` runs: its children,
/// each of which leads a group of its own (the agent makes every command a
/// process-group leader).
fn command_groups(agent: u32) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|pid| {
            // `pid (comm) state ppid ...`; comm may hold spaces and parens.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            ppid == Some(agent)
        })
        .collect()
}

/// Plays the VMM's side of the vsock socket: `CONNECT <port>\n` reaches the
/// agent when `port` is its port and it listens, and is answered
/// `OK <port>\n`; anything else is refused by closing the connection, as
/// a guest kernel with no listener does. Connections end with the relay.
async fn relay(
    listener: tokio::net::UnixListener,
    port: u32,
    agent_socket: PathBuf,
    control: Arc<RelayControl>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => return,
            },
            _ = control.cut.notified() => {
                connections.abort_all();
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let agent_socket = agent_socket.clone();
        let passed = control.clone();
        connections.spawn(async move {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
            let mut host = tokio::io::BufReader::new(stream);
            let mut line = Vec::new();
            let read = tokio::io::AsyncReadExt::take(&mut host, 64)
                .read_until(b'\n', &mut line)
                .await;
            if read.is_err() || line != format!("CONNECT {port}\n").as_bytes() {
                return;
            }
            let Ok(mut agent) = tokio::net::UnixStream::connect(&agent_socket).await else {
                return;
            };
            // The host's own end of a vsock connection has a port number
            // too; the fake's is fixed.
            if host.get_mut().write_all(b"OK 1073741824\n").await.is_err() {
                return;
            }
            passed.passed.fetch_add(1, Ordering::SeqCst);
            // Bytes the host sent after its CONNECT line are in `host`'s
            // buffer and go first.
            let _ = tokio::io::copy_bidirectional(&mut host, &mut agent).await;
        });
    }
}

/// What a test sees of and does to a fake VM's vsock relay.
#[derive(Debug, Default)]
struct RelayControl {
    /// Connections passed to the agent so far.
    passed: AtomicU64,
    /// Signalled to break every connection the relay carries.
    cut: tokio::sync::Notify,
}

/// Records the first way the machine ended; later ones are ignored, as with a
/// real process.
fn end(tx: &watch::Sender<Option<ExitReason>>, reason: ExitReason) {
    tx.send_if_modified(|slot| {
        let first = slot.is_none();
        if first {
            *slot = Some(reason);
        }
        first
    });
}

impl VmBackend for FakeBackend {
    type Machine = FakeMachine;

    async fn create(
        &self,
        request: CreateRequest<'_>,
        mark: &mut (dyn FnMut(BootPhase) + Send),
    ) -> Result<FakeMachine, BackendError> {
        let next = self.next_create()?;
        for phase in [
            BootPhase::Spawned,
            BootPhase::ApiReady,
            BootPhase::Configured,
        ] {
            mark(phase);
        }
        Ok(self.machine(request.id, &next, request.spec, request.workdir))
    }

    async fn restore(
        &self,
        request: RestoreRequest<'_>,
        mark: &mut (dyn FnMut(BootPhase) + Send),
    ) -> Result<FakeMachine, BackendError> {
        let next = self.next_create()?;
        tokio::time::sleep(next.restore_latency).await;
        if let Some(message) = next.fail_restores {
            return Err(BackendError::Scripted(message));
        }
        mark(BootPhase::Spawned);
        mark(BootPhase::ApiReady);
        let machine = self.machine(request.id, &next, request.spec, request.workdir);
        if request.background {
            machine.priority.lock().expect("fake priority lock").now = FakePriority::Background;
        }
        Ok(machine)
    }

    /// Answers unless the script names the VM unhealthy.
    async fn probe_guest(
        &self,
        id: &VmId,
        _spec: &tfc_core::VmSpec,
        _workdir: &Path,
    ) -> Result<(), BackendError> {
        let scripted = self.snapshot().unhealthy.get(id).cloned();
        scripted.map_or(Ok(()), |reason| Err(BackendError::Unhealthy(reason)))
    }

    /// Fake machines die with the daemon that made them, so there is never one
    /// to adopt: after a restart their VMs are reported Failed.
    async fn adopt(&self, request: CreateRequest<'_>) -> Result<FakeMachine, BackendError> {
        Err(BackendError::Scripted(format!(
            "fake VM {} did not survive the daemon restart",
            request.id
        )))
    }
}

impl FakeMachine {
    /// Moves the machine from priority `from` to `to`; nothing when it runs
    /// at another.
    fn set_priority(&self, from: FakePriority, to: FakePriority) {
        let mut priority = self.priority.lock().expect("fake priority lock");
        if priority.now == from {
            priority.now = to;
        }
    }

    fn exited(&self) -> Option<ExitReason> {
        *self.exit_rx.borrow()
    }

    fn end(&self, reason: ExitReason) {
        end(&self.exit_tx, reason);
    }

    fn guest(&self) -> std::sync::MutexGuard<'_, Option<Box<FakeGuest>>> {
        self.guest.lock().expect("fake guest lock")
    }

    /// Starts the guest's agent, when scripted and not already running.
    fn start_guest(&self) -> Result<(), BackendError> {
        let Some((agent, port)) = &self.agent else {
            return Ok(());
        };
        let mut guest = self.guest();
        if guest.is_none() {
            let started = FakeGuest::start(agent, *port, &self.workdir, self.connections.clone());
            *guest = Some(Box::new(started.map_err(BackendError::Workdir)?));
        }
        Ok(())
    }

    /// Ends the guest's agent and its relay.
    fn end_guest(&self) {
        let guest = self.guest().take();
        drop(guest);
    }

    fn pause_or_resume(&self, verb: &str, pause: bool) -> Result<(), BackendError> {
        self.gone(verb)?;
        let failure = self
            .script
            .lock()
            .expect("fake script lock")
            .fail_pause_resume
            .clone();
        if let Some(message) = failure {
            return Err(BackendError::Scripted(message));
        }
        self.paused
            .store(pause, std::sync::atomic::Ordering::SeqCst);
        if let Some(guest) = self.guest().as_ref() {
            guest.freeze(pause);
        }
        Ok(())
    }

    fn gone(&self, verb: &str) -> Result<(), BackendError> {
        match self.exited() {
            Some(reason) => Err(BackendError::Scripted(format!(
                "cannot {verb}: process {reason}"
            ))),
            None => Ok(()),
        }
    }
}

impl VmMachine for FakeMachine {
    fn pid(&self) -> Option<u32> {
        None
    }

    async fn boot(&self) -> Result<(), BackendError> {
        self.gone("boot")?;
        self.start_guest()?;
        if let Some(after) = self.crash_after {
            let tx = self.exit_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                end(&tx, ExitReason::KILLED);
            });
        }
        Ok(())
    }

    async fn wait_ready(&self) -> Result<(), BackendError> {
        tokio::select! {
            _ = tokio::time::sleep(self.boot_latency) => {}
            reason = self.wait_exit() => {
                return Err(BackendError::ExitedDuringBoot { reason, tail: String::new() });
            }
        }
        let failure = self
            .script
            .lock()
            .expect("fake script lock")
            .fail_next_boot
            .take();
        match failure {
            Some(message) => Err(BackendError::Scripted(message)),
            None => Ok(()),
        }
    }

    async fn pause(&self) -> Result<(), BackendError> {
        self.pause_or_resume("pause", true)
    }

    async fn resume(&self) -> Result<(), BackendError> {
        let latency = self.script.lock().expect("fake script lock").resume_latency;
        tokio::time::sleep(latency).await;
        self.pause_or_resume("resume", false)?;
        let mut priority = self.priority.lock().expect("fake priority lock");
        priority.at_resume = Some(priority.now);
        Ok(())
    }

    /// Checks the snapshot's files the way a VMM's load would (present, and a
    /// state file the fake wrote), then runs.
    async fn load_snapshot(
        &self,
        state_file: &Path,
        memory_file: &Path,
        _track_dirty_pages: bool,
        resume: bool,
    ) -> Result<(), BackendError> {
        let state = std::fs::read(state_file).map_err(BackendError::Workdir)?;
        if !state.starts_with(FAKE_STATE_MAGIC) {
            return Err(BackendError::Scripted(format!(
                "{} is not a snapshot state file",
                state_file.display()
            )));
        }
        std::fs::metadata(memory_file).map_err(BackendError::Workdir)?;
        self.paused
            .store(!resume, std::sync::atomic::Ordering::SeqCst);
        self.boot().await?;
        if let Some(guest) = self.guest().as_ref() {
            guest.freeze(!resume);
        }
        Ok(())
    }

    /// Healthy while it runs in the state asked, unless the script says
    /// otherwise.
    async fn check_health(&self, running: bool) -> Result<(), BackendError> {
        if let Some(reason) = self.exited() {
            return Err(BackendError::Unhealthy(format!("the VMM {reason}")));
        }
        let paused = self.paused.load(std::sync::atomic::Ordering::SeqCst);
        if paused == running {
            return Err(BackendError::Unhealthy(format!(
                "the guest is {}, not {}",
                if paused { "paused" } else { "running" },
                if running { "running" } else { "paused" }
            )));
        }
        let scripted = self
            .script
            .lock()
            .expect("fake script lock")
            .unhealthy
            .get(&self.id)
            .cloned();
        scripted.map_or(Ok(()), |reason| Err(BackendError::Unhealthy(reason)))
    }

    /// A fake machine is never adopted, so it never needs reconciling.
    async fn ensure_running(&self) -> Result<(), BackendError> {
        self.gone("run")
    }

    /// Nothing to limit: the limits live in the VM's record only.
    async fn set_rate_limits(&self, _: &RateLimits) -> Result<(), BackendError> {
        self.gone("change rate limits")
    }

    /// Writes a state file with a marker and a sparse memory file (no data, so
    /// it costs no disk) of a fixed size.
    async fn snapshot(
        &self,
        kind: SnapshotKind,
        state_file: &Path,
        memory_file: &Path,
    ) -> Result<(), BackendError> {
        self.gone("snapshot")?;
        let failure = self
            .script
            .lock()
            .expect("fake script lock")
            .fail_next_snapshot
            .take();
        if let Some(message) = failure {
            return Err(BackendError::Scripted(message));
        }
        let mut state = FAKE_STATE_MAGIC.to_vec();
        state.extend_from_slice(format!("{kind:?}\n").as_bytes());
        std::fs::write(state_file, state).map_err(BackendError::Workdir)?;
        let memory = std::fs::File::create(memory_file).map_err(BackendError::Workdir)?;
        memory
            .set_len(FAKE_MEMORY_BYTES)
            .map_err(BackendError::Workdir)?;
        Ok(())
    }

    async fn stop(&self) -> ExitReason {
        self.end_guest();
        self.end(ExitReason {
            code: Some(0),
            signal: None,
        });
        self.wait_exit().await
    }

    async fn wait_exit(&self) -> ExitReason {
        let mut rx = self.exit_rx.clone();
        let reason = rx.wait_for(Option::is_some).await.map(|r| *r);
        reason.ok().flatten().unwrap_or(ExitReason::KILLED)
    }

    fn console_tail(&self) -> Vec<String> {
        Vec::new()
    }

    /// A fake machine lives in the daemon's memory; it cannot outlive it.
    fn detach(&self) {}

    fn foreground(&self) -> Result<(), BackendError> {
        self.set_priority(FakePriority::Background, FakePriority::Normal);
        self.set_priority(FakePriority::VcpusIdle, FakePriority::Normal);
        Ok(())
    }

    fn foreground_control(&self) -> Result<(), BackendError> {
        self.set_priority(FakePriority::Background, FakePriority::VcpusIdle);
        Ok(())
    }

    fn background_vcpus(&self) -> Result<(), BackendError> {
        self.set_priority(FakePriority::Normal, FakePriority::VcpusIdle);
        Ok(())
    }
}
