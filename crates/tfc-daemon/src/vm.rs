//! The owner of one VM. A task per VM is the only code that changes that VM's
//! state: API handlers send it [`VmOp`]s and read its record through a watch
//! channel. Every change goes through `tfc_core::transition` first, so an illegal
//! request is refused before the VMM is touched, and every change is written to
//! the store: transitional states (`creating`, `stopping`) before the action they
//! announce, results after, so a daemon that dies at any point can reconcile.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tfc_api::{ExitInfo, SnapshotKind, SnapshotTiming, StartInfo, VmInfo};
use tfc_core::{error_chain, transition, BootPhase, BootTimeline, VmEvent, VmId, VmSpec, VmState};
use tfc_store::{AnyStore, Store, VmRow};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::agent::{AgentAddress, AgentLink, LinkError};
use crate::backend::{
    Backend, BackendError, CreateRequest, ExitReason, Machine, VmBackend, VmMachine,
};
use tfc_agent_client::AgentConnection;
use tfc_core::limits::RateLimits;

/// An operation a caller asks of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmOp {
    Pause,
    Resume,
    Stop,
    Snapshot,
    Allocate,
    /// Change the I/O rate limits (no state change).
    Limit,
}

impl VmOp {
    /// The state machine's event of an operation that changes the state.
    fn event(self) -> Option<VmEvent> {
        match self {
            VmOp::Pause => Some(VmEvent::Pause),
            VmOp::Resume => Some(VmEvent::Resume),
            VmOp::Stop => Some(VmEvent::Stop),
            VmOp::Snapshot => Some(VmEvent::SnapshotTaken),
            VmOp::Allocate => Some(VmEvent::Allocate),
            VmOp::Limit => None,
        }
    }

    pub fn verb(self) -> &'static str {
        match self {
            VmOp::Pause => "pause",
            VmOp::Resume => "resume",
            VmOp::Stop => "stop",
            VmOp::Snapshot => "snapshot",
            VmOp::Allocate => "hand out",
            VmOp::Limit => "change the rate limits of",
        }
    }
}

/// A snapshot the owner is asked to take.
#[derive(Debug, Clone)]
pub struct SnapshotJob {
    /// Catalog id; becomes the VM's `last_snapshot`.
    pub id: String,
    pub kind: SnapshotKind,
    pub state_file: PathBuf,
    pub memory_file: PathBuf,
    /// Resume afterwards if the VM was running before.
    pub resume: bool,
}

/// Why an operation on a VM was not done.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot {verb} VM {id}: it is {state}", verb = op.verb())]
    InvalidState { id: VmId, op: VmOp, state: VmState },
    #[error("cannot record VM {id} before its snapshot (nothing was taken): {reason}")]
    Record { id: VmId, reason: String },
    #[error("cannot {verb} VM {id}", verb = op.verb())]
    Backend {
        id: VmId,
        op: VmOp,
        // Boxed: backend errors are large and this one is rare.
        #[source]
        source: Box<BackendError>,
    },
    #[error("cannot hand out VM {id}: its identity fix-up failed, so it was stopped")]
    Fixup {
        id: VmId,
        #[source]
        source: LinkError,
    },
}

type Reply = oneshot::Sender<Result<VmInfo, VmError>>;
type CheckReply = oneshot::Sender<Result<(), CheckError>>;

/// Why a waiting VM did not pass [`VmHandle::check`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// It is not waiting (handed out meanwhile, stopping, gone): nothing
    /// was checked or changed.
    #[error("it is {0}")]
    NotWaiting(VmState),
    /// It failed the check, or was retired: now `needs_maintenance`.
    #[error("{0}")]
    Unfit(String),
}
type SnapshotReply = oneshot::Sender<Result<(VmInfo, SnapshotTiming), VmError>>;

enum Command {
    Op {
        op: VmOp,
        reply: Reply,
    },
    Snapshot {
        job: SnapshotJob,
        reply: SnapshotReply,
    },
    /// Let go of the VM without stopping it (the daemon exits, the VM stays for
    /// the next daemon to adopt).
    Detach {
        done: oneshot::Sender<()>,
    },
    /// Hand the VM to a caller (see [`VmHandle::allocate`]).
    Allocate {
        requested_at: Instant,
        reply: Reply,
    },
    /// Check a waiting VM (see [`VmHandle::check`]).
    Check {
        retire: Option<String>,
        reply: CheckReply,
    },
    /// Replace the VM's I/O limits (see [`VmHandle::set_rate_limits`]).
    Limit {
        limits: RateLimits,
        reply: Reply,
    },
}

/// A handle on one VM: its current record and a way to ask its owner for changes.
#[derive(Debug, Clone)]
pub struct VmHandle {
    id: VmId,
    record: watch::Receiver<VmInfo>,
    commands: mpsc::Sender<Command>,
    /// The VM's agent, for VMs whose readiness is the agent. Its session is
    /// open while the guest runs; the owner alone opens and closes it.
    agent: Option<Arc<AgentLink>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Op { op, .. } => write!(f, "Op({op:?})"),
            Command::Snapshot { job, .. } => write!(f, "Snapshot({})", job.id),
            Command::Detach { .. } => f.write_str("Detach"),
            Command::Allocate { .. } => f.write_str("Allocate"),
            Command::Check { .. } => f.write_str("Check"),
            Command::Limit { .. } => f.write_str("Limit"),
        }
    }
}

impl VmHandle {
    pub fn id(&self) -> &VmId {
        &self.id
    }

    /// The VM's record, followed as it changes.
    pub fn subscribe(&self) -> watch::Receiver<VmInfo> {
        self.record.clone()
    }

    /// The VM's record as of now.
    pub fn info(&self) -> VmInfo {
        self.record.borrow().clone()
    }

    /// The VM's agent link, when its readiness is the agent.
    pub fn agent(&self) -> Option<&Arc<AgentLink>> {
        self.agent.as_ref()
    }

    /// Asks the owner to do `op` and waits for the result.
    pub async fn op(&self, op: VmOp) -> Result<VmInfo, VmError> {
        let (reply, answer) = oneshot::channel();
        let refused = || VmError::InvalidState {
            id: self.id.clone(),
            op,
            state: self.info().state,
        };
        // A closed channel means the owner has ended: the VM is terminal.
        if self.commands.send(Command::Op { op, reply }).await.is_err() {
            return Err(refused());
        }
        answer.await.unwrap_or_else(|_| Err(refused()))
    }

    /// Replaces the VM's I/O limits while its guest runs or is paused; the
    /// record's spec follows.
    pub async fn set_rate_limits(&self, limits: RateLimits) -> Result<VmInfo, VmError> {
        let (reply, answer) = oneshot::channel();
        let refused = || VmError::InvalidState {
            id: self.id.clone(),
            op: VmOp::Limit,
            state: self.info().state,
        };
        if self
            .commands
            .send(Command::Limit { limits, reply })
            .await
            .is_err()
        {
            return Err(refused());
        }
        answer.await.unwrap_or_else(|_| Err(refused()))
    }

    /// Asks the owner to snapshot the VM (pausing it first if it runs).
    pub async fn snapshot(&self, job: SnapshotJob) -> Result<(VmInfo, SnapshotTiming), VmError> {
        let (reply, answer) = oneshot::channel();
        let refused = || VmError::InvalidState {
            id: self.id.clone(),
            op: VmOp::Snapshot,
            state: self.info().state,
        };
        if self
            .commands
            .send(Command::Snapshot { job, reply })
            .await
            .is_err()
        {
            return Err(refused());
        }
        answer.await.unwrap_or_else(|_| Err(refused()))
    }

    /// Hands a pooled VM to a caller: allowed in `ready` (no VMM call),
    /// `paused` and `snapshotted` (resumed); results in `running` with the
    /// pool slot marked acquired. The record is stored while the VMM
    /// resumes, and the answer waits for both. `requested_at` is when the
    /// caller asked, for the recorded acquire time.
    pub async fn allocate(&self, requested_at: Instant) -> Result<VmInfo, VmError> {
        let (reply, answer) = oneshot::channel();
        let refused = || VmError::InvalidState {
            id: self.id.clone(),
            op: VmOp::Allocate,
            state: self.info().state,
        };
        if self
            .commands
            .send(Command::Allocate {
                requested_at,
                reply,
            })
            .await
            .is_err()
        {
            return Err(refused());
        }
        answer.await.unwrap_or_else(|_| Err(refused()))
    }

    /// Checks a VM waiting in a pool (with `retire`, skips the check and
    /// retires it for that reason). A VM that fails goes to
    /// `needs_maintenance` and the answer says why; a VM that is not waiting
    /// (handed out, stopping, gone) fails with what it is.
    pub async fn check(&self, retire: Option<String>) -> Result<(), CheckError> {
        let (reply, answer) = oneshot::channel();
        let gone = || CheckError::NotWaiting(self.info().state);
        if self
            .commands
            .send(Command::Check { retire, reply })
            .await
            .is_err()
        {
            return Err(gone());
        }
        answer.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Asks the owner to let the VM run on without it; resolves once it has (or
    /// at once when there is no owner).
    pub async fn detach(&self) {
        let (done, finished) = oneshot::channel();
        if self.commands.send(Command::Detach { done }).await.is_ok() {
            let _ = finished.await;
        }
    }

    /// Waits until `done` holds for the record, or `timeout` passes; returns the
    /// record either way.
    pub async fn wait_until(
        &self,
        timeout: std::time::Duration,
        done: impl Fn(&VmInfo) -> bool,
    ) -> VmInfo {
        let mut rx = self.record.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|r| done(r))).await;
        self.info()
    }
}

pub fn now_ms() -> u64 {
    tfc_core::unix_ms(SystemTime::now())
}

pub fn exit_info(reason: ExitReason) -> ExitInfo {
    ExitInfo {
        code: reason.code,
        signal: reason.signal,
        description: reason.to_string(),
    }
}

/// The store's row for `info`.
pub fn row(info: &VmInfo) -> Result<VmRow, serde_json::Error> {
    Ok(VmRow {
        id: VmId::new(info.id.clone()).map_err(serde::de::Error::custom)?,
        state: info.state,
        record: serde_json::to_string(info)?,
        updated_at_ms: info.updated_at_ms,
    })
}

/// Runs `call` on the store: inline for the in-memory store, which never
/// blocks, and on a blocking thread for SQLite, whose writes wait for fsync.
pub async fn with_store<T: Send + 'static>(
    store: &Arc<AnyStore>,
    call: impl FnOnce(&AnyStore) -> Result<T, tfc_store::StoreError> + Send + 'static,
) -> Result<T, tfc_store::StoreError> {
    if matches!(**store, AnyStore::Memory(_)) {
        return call(store);
    }
    let store = store.clone();
    match tokio::task::spawn_blocking(move || call(&store)).await {
        Ok(result) => result,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

/// [`with_store`] for a write an answer waits on with nothing to overlap it
/// (a running VM's hand-over): on a runtime with worker threads it runs on
/// this one, the runtime told so ([`tokio::task::block_in_place`]), rather
/// than on a blocking thread. The hop there and back cost ~0.1 ms on a
/// 2-core host, more than the write itself (~0.07 ms).
pub async fn with_store_now<T: Send + 'static>(
    store: &Arc<AnyStore>,
    call: impl FnOnce(&AnyStore) -> Result<T, tfc_store::StoreError> + Send + 'static,
) -> Result<T, tfc_store::StoreError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if !matches!(**store, AnyStore::Memory(_))
        && Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread
    {
        return tokio::task::block_in_place(|| call(store));
    }
    with_store(store, call).await
}

/// Writes `info` to the store. A failed write is logged: the VM keeps running,
/// and the next write (or the next start's reconciliation) catches up.
pub async fn persist(store: &Arc<AnyStore>, info: VmInfo) {
    let id = info.id.clone();
    let row = match row(&info) {
        Ok(row) => row,
        Err(err) => {
            tracing::error!(vm = %id, %err, "cannot encode VM record");
            return;
        }
    };
    if let Err(err) = with_store(store, move |s| s.put_vm(&row)).await {
        tracing::error!(vm = %id, error = %error_chain(&err), "cannot write VM record");
    }
}

/// The record of a VM that is about to be created.
pub fn new_record(id: &VmId, spec: &VmSpec, workdir: &std::path::Path, start: StartInfo) -> VmInfo {
    let now = now_ms();
    VmInfo {
        id: id.to_string(),
        state: VmState::Creating,
        spec: spec.clone(),
        pid: None,
        created_at_ms: now,
        updated_at_ms: now,
        timeline: BootTimeline::default(),
        failure: None,
        exit: None,
        workdir: workdir.display().to_string(),
        console_log: workdir
            .join(tfc_firecracker::process::CONSOLE_LOG)
            .display()
            .to_string(),
        last_snapshot: start.snapshot.clone(),
        start,
        template_build: false,
        pool: None,
        identity_fixup: None,
        network: None,
    }
}

fn handle_and_owner(
    info: VmInfo,
    requested_at: Instant,
    store: Arc<AnyStore>,
) -> (VmHandle, Owner) {
    let id = VmId::new(info.id.clone()).expect("records hold valid ids");
    let agent = info.spec.readiness.agent_port().map(|port| {
        Arc::new(AgentLink::new(AgentAddress::new(
            std::path::Path::new(&info.workdir),
            port,
        )))
    });
    let (record, record_rx) = watch::channel(info);
    let (commands_tx, commands) = mpsc::channel(16);
    let owner = Owner {
        id: id.clone(),
        record,
        commands,
        requested_at,
        store,
        agent: agent.clone(),
        boot_timeout: Duration::ZERO,
    };
    let handle = VmHandle {
        id,
        record: record_rx,
        commands: commands_tx,
        agent,
    };
    (handle, owner)
}

/// Starts the owner of a new VM (its `creating` record already stored), which
/// creates and boots it. A VM whose readiness is the agent is ready once the
/// agent answers, within `boot_timeout` of the boot.
pub fn spawn(
    info: VmInfo,
    backend: Backend,
    requested_at: Instant,
    store: Arc<AnyStore>,
    boot_timeout: Duration,
) -> VmHandle {
    let (handle, mut owner) = handle_and_owner(info, requested_at, store);
    owner.boot_timeout = boot_timeout;
    let span = owner_span(&owner.id);
    tokio::spawn(owner.run(backend).instrument(span));
    handle
}

/// Starts the owner of a VM an earlier daemon left running: it adopts the VMM,
/// or records the VM Failed when there is nothing to adopt.
pub fn adopt(
    info: VmInfo,
    backend: Backend,
    store: Arc<AnyStore>,
    boot_timeout: Duration,
) -> VmHandle {
    let (handle, mut owner) = handle_and_owner(info, Instant::now(), store);
    owner.boot_timeout = boot_timeout;
    let span = owner_span(&owner.id);
    tokio::spawn(owner.readopt(backend).instrument(span));
    handle
}

/// Starts the owner of a VM restored from a snapshot, which already runs (its
/// `ready` record already stored). `agent` is the connection its identity
/// fix-up used: the VM's agent session opens with it before the handle is
/// returned, so no caller finds the VM ready with its agent closed. Without
/// one (a VM waiting in a pool) the session opens at the hand-over.
pub fn spawn_running(
    info: VmInfo,
    machine: Machine,
    store: Arc<AnyStore>,
    agent: Option<AgentConnection>,
) -> VmHandle {
    let (handle, owner) = handle_and_owner(info, Instant::now(), store);
    if let (Some(link), Some(connection)) = (&owner.agent, agent) {
        link.open(Some(connection));
    }
    let span = owner_span(&owner.id);
    tokio::spawn(owner.run_restored(machine).instrument(span));
    handle
}

/// The span every line an owner logs is in: it names the VM, so one VM's
/// story can be picked out of the log (the requests that reach it are in
/// spans naming it too, see `api::observe_request`).
fn owner_span(id: &VmId) -> tracing::Span {
    tracing::info_span!("vm_owner", vm = %id)
}

/// The agent port of a re-adopted VM that needs the identity fix-up now: it
/// was restored from a snapshot, has an agent, is in a caller's hands (not
/// waiting in a pool, whose hand-over runs the fix-up) and has no fix-up
/// recorded.
fn fixup_due(info: &VmInfo) -> Option<u32> {
    let port = info.spec.readiness.agent_port()?;
    let due = info.start.snapshot.is_some()
        && info.identity_fixup.is_none()
        && matches!(info.state, VmState::Ready | VmState::Running)
        && !waiting_in_pool(info);
    due.then_some(port)
}

/// How long a resume (a hand-over's or any other) runs with the guest's
/// vCPUs still idle before they are given normal priority anyway: where
/// normal threads take every CPU, an idle vCPU could wait long to take up
/// the resume.
const IDLE_RESUME_LIMIT: Duration = Duration::from_millis(2);

/// How long after a hand-over's answer a pooled VM's vCPUs wait at idle
/// priority, and a resumed VM's after the resume's answer (less when the VM
/// is asked anything meanwhile): long enough for the answer to reach the
/// caller without waiting behind the guest for a CPU (see
/// [`tfc_firecracker::priority`]). The guest runs meanwhile, on any CPU no
/// normal thread wants. The record's final write and the pool's refill wait
/// as long, for the same reason.
pub(crate) const HANDOVER_SETTLE: Duration = Duration::from_millis(2);

/// What a hand-over left of the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handover {
    /// Not handed out (refused, or not recorded): as it was.
    Unchanged,
    /// Handed out; its vCPUs get normal priority at this instant at the
    /// latest.
    Settling(tokio::time::Instant),
    /// Stopped: the hand-over failed past the point of return.
    Ended,
}

/// Resumes a VM whose vCPUs may be idle (a pool's at its hand-over, any at
/// a resume), giving them normal priority if the resume outlasts
/// [`IDLE_RESUME_LIMIT`].
async fn resume_idle(machine: &Machine) -> Result<(), BackendError> {
    let resume = machine.resume();
    tokio::pin!(resume);
    if let Ok(resumed) = tokio::time::timeout(IDLE_RESUME_LIMIT, &mut resume).await {
        return resumed;
    }
    machine.foreground()?;
    resume.await
}

/// Bytes read from the end of the console and QEMU's stderr: the lines that
/// tell a panic or an outside signal from a power-off are the last ones.
const END_TAIL_BYTES: u64 = 16 * 1024;

/// The kernel's last console lines on a clean end of the guest: a power-off
/// (an agent's `shutdown`, busybox `poweroff` through the agent as init), a
/// halt, or a restart (how a Firecracker guest ends itself: `reboot`). A
/// panic under `panic=1` resets the guest without any of them.
const CLEAN_END_LINES: [&str; 3] = [
    "reboot: Power down",
    "reboot: System halted",
    "reboot: Restarting system",
];

/// Why a VMM that ended cleanly did not end with a guest that powered off:
/// the guest kernel panicked (its console's last lines say so), QEMU was
/// ended by a signal (its stderr says so), or the console does not end
/// with the kernel's own power-off or restart line (a reset the guest did
/// not ask for). Read from the files themselves, to their end: the console
/// watcher may not have seen the last lines yet when the exit is noticed.
fn unclean_end(console_log: &Path, workdir: &Path) -> Option<String> {
    let tail = |path: &Path| -> String {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut file) = std::fs::File::open(path) else {
            return String::new();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(END_TAIL_BYTES)));
        let mut bytes = Vec::new();
        let _ = file.take(END_TAIL_BYTES).read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let console = tail(console_log);
    if let Some(line) = console
        .lines()
        .find(|l| l.contains(crate::backend::PANIC_LINE))
    {
        return Some(format!("the guest kernel panicked: {}", line.trim()));
    }
    let stderr = tail(&workdir.join(tfc_qemu::command::QEMU_STDERR));
    if let Some(line) = stderr.lines().find(|l| l.contains("terminating on signal")) {
        return Some(format!("it was ended from outside: {}", line.trim()));
    }
    if !console
        .lines()
        .any(|l| CLEAN_END_LINES.iter().any(|clean| l.contains(clean)))
    {
        return Some(format!(
            "the guest ended without powering off: its console ({}) does not end with the kernel's \"reboot: Power down\" or \"reboot: Restarting system\" line, so it crashed or was reset",
            console_log.display()
        ));
    }
    None
}

/// A VM that waits in its pool: handed out to nobody yet.
fn waiting_in_pool(info: &VmInfo) -> bool {
    info.pool
        .as_ref()
        .is_some_and(|slot| slot.acquired_at_ms.is_none())
}

/// A handle on a VM that is over (stopped or failed): readable and deletable,
/// every operation refused.
pub fn terminal(info: VmInfo, store: Arc<AnyStore>) -> VmHandle {
    let (handle, owner) = handle_and_owner(info, Instant::now(), store);
    drop(owner);
    handle
}

struct Owner {
    id: VmId,
    record: watch::Sender<VmInfo>,
    commands: mpsc::Receiver<Command>,
    requested_at: Instant,
    store: Arc<AnyStore>,
    agent: Option<Arc<AgentLink>>,
    /// How long after the boot the agent may take to answer.
    boot_timeout: Duration,
}

/// How the wait for readiness ended.
enum BootOutcome {
    /// Ready; for an agent VM, with the connection that answered and when
    /// it did (microseconds since the request).
    Ready(Option<(AgentConnection, u64)>),
    Failed(BackendError),
    AgentSilent(LinkError),
    Exited(ExitReason),
    StopRequested(Reply),
    Detached(oneshot::Sender<()>),
}

impl Owner {
    fn state(&self) -> VmState {
        self.record.borrow().state
    }

    async fn commit(&self) {
        let info = self.record.borrow().clone();
        persist(&self.store, info).await;
    }

    /// Applies `event` and stores the result.
    async fn apply(&self, event: VmEvent) -> Result<VmState, tfc_core::InvalidTransition> {
        let to = transition(self.state(), event)?;
        self.record.send_modify(|r| {
            r.state = to;
            r.updated_at_ms = now_ms();
            // An ended VM's network is torn down (the manager watches for
            // this), and its addresses go to other VMs.
            if to.is_terminal() {
                r.network = None;
            }
        });
        self.commit().await;
        Ok(to)
    }

    fn mark(&self, phase: BootPhase) {
        let at = self.requested_at.elapsed().as_micros() as u64;
        self.record.send_modify(|r| r.timeline.mark(phase, at));
    }

    /// The guest runs: its agent may be called (see [`AgentLink::open`]).
    fn open_agent(&self, connection: Option<AgentConnection>) {
        if let Some(link) = &self.agent {
            link.open(connection);
        }
    }

    /// The guest is about to stop running, or has: calls to its agent end.
    fn close_agent(&self) {
        if let Some(link) = &self.agent {
            link.close();
        }
    }

    async fn fail(&self, failure: String, exit: Option<ExitReason>) {
        self.close_agent();
        tracing::warn!(vm = %self.id, %failure, "VM failed");
        self.record.send_modify(|r| {
            r.failure = Some(failure);
            if let Some(exit) = exit {
                r.exit = Some(exit_info(exit));
            }
            r.pid = None;
        });
        let _ = self.apply(VmEvent::Fail).await;
    }

    /// The VMM ended with no stop asked for. A clean exit is taken for the
    /// guest powering off (or rebooting, which ends a VM) only when the
    /// guest's console ends with the kernel's own power-off or restart line:
    /// the VM is stopped, like a container whose process exited 0. A panic
    /// (`panic=1` resets the guest, which ends the VMM cleanly too), QEMU
    /// ended by a signal from outside, or a reset without that line is a
    /// failure, with the reason; so is any other exit.
    async fn exited(&self, reason: ExitReason) {
        let state = self.state();
        let unclean = reason
            .success()
            .then(|| {
                let info = self.record.borrow();
                unclean_end(Path::new(&info.console_log), Path::new(&info.workdir))
            })
            .flatten();
        if let Some(cause) = unclean {
            self.fail(format!("VMM {reason} after {cause}"), Some(reason))
                .await;
            return;
        }
        if reason.success() && transition(state, VmEvent::GuestShutdown).is_ok() {
            self.close_agent();
            tracing::info!(vm = %self.id, %reason, "the guest powered off");
            self.record.send_modify(|r| {
                r.exit = Some(exit_info(reason));
                r.pid = None;
            });
            let _ = self.apply(VmEvent::GuestShutdown).await;
            return;
        }
        self.fail(format!("VMM {reason} unexpectedly"), Some(reason))
            .await;
    }

    fn refuse(&self, op: VmOp) -> VmError {
        VmError::InvalidState {
            id: self.id.clone(),
            op,
            state: self.state(),
        }
    }

    fn request<'a>(&'a self, spec: &'a VmSpec, workdir: &'a std::path::Path) -> CreateRequest<'a> {
        CreateRequest {
            id: &self.id,
            spec,
            workdir,
            netns: self
                .record
                .borrow()
                .network
                .as_ref()
                .map(crate::network::netns_path),
        }
    }

    async fn run(mut self, backend: Backend) {
        let Some(machine) = self.create(&backend).await else {
            return;
        };
        crate::crash::point("create.after_spawn");
        if let Err(err) = self.apply(VmEvent::StartBoot).await {
            tracing::error!(vm = %self.id, %err, "state machine refused boot");
        }
        if let Err(err) = machine.boot().await {
            let exit = machine.stop().await;
            self.fail(error_chain(&err), Some(exit)).await;
            return self.drain().await;
        }
        self.mark(BootPhase::InstanceStarted);
        self.commit().await;
        crate::crash::point("create.after_start");
        self.finish_boot(&machine).await;
    }

    async fn run_restored(mut self, machine: Machine) {
        // The stored record predates the resume; bring it up to date.
        self.commit().await;
        if self.serve(&machine).await {
            self.drain().await;
        }
    }

    /// Takes over a VM from an earlier daemon.
    async fn readopt(mut self, backend: Backend) {
        let info = self.record.borrow().clone();
        let workdir = PathBuf::from(&info.workdir);
        let adopted = backend.adopt(self.request(&info.spec, &workdir)).await;
        let machine = match adopted {
            Ok(machine) => machine,
            Err(err) => {
                // A VMM that still runs but cannot be taken over (it does not
                // answer, or its backend is no longer installed) would run on
                // unmanaged: it is ended with the VM.
                for pid in crate::reaper::end_vmm_blocking(&workdir).await {
                    tracing::warn!(vm = %self.id, pid, "ended a VMM process that could not be adopted");
                }
                let failure = format!(
                    "the VMM did not survive the daemon restart: {}",
                    error_chain(&err)
                );
                self.fail(failure, None).await;
                return self.drain().await;
            }
        };
        tracing::info!(vm = %self.id, state = %info.state, "re-adopted VM");
        self.record.send_modify(|r| r.pid = machine.pid());
        self.commit().await;
        if matches!(info.state, VmState::Ready | VmState::Running) {
            // A restore records `ready` while the VMM loads the snapshot; a
            // daemon that died then may have left a guest that never started.
            match machine.ensure_running().await {
                Ok(()) => {}
                Err(err @ BackendError::NotStarted(_)) => {
                    machine.stop().await;
                    let failure = format!(
                        "the VM's guest was not running when the daemon restarted: {}",
                        error_chain(&err)
                    );
                    self.fail(failure, None).await;
                    return self.drain().await;
                }
                // The VMM answers but could not say: keep it, as adopted.
                Err(err) => {
                    tracing::warn!(vm = %self.id, error = %error_chain(&err), "cannot check the adopted VM's guest");
                }
            }
        }
        // A pool's VM handed out by a daemon that died before giving it
        // normal priority still runs idle; one still waiting stays so.
        if !waiting_in_pool(&info) {
            if let Err(err) = machine.foreground() {
                tracing::warn!(vm = %self.id, error = %error_chain(&err), "the adopted VM runs at idle CPU priority");
            }
        }
        // A clone whose fix-up the previous daemon did not finish (it died
        // between recording the VM ready and the fix-up) must not be used
        // as it is: it shares its template's clock and random state.
        if let Some(port) = fixup_due(&info) {
            match AgentAddress::new(&workdir, port).fix_identity().await {
                Ok((connection, fixup)) => {
                    tracing::warn!(vm = %self.id, "ran the identity fix-up the previous daemon did not finish");
                    self.record.send_modify(|r| r.identity_fixup = Some(fixup));
                    self.commit().await;
                    self.open_agent(Some(connection));
                }
                Err(err) => {
                    machine.stop().await;
                    let failure = format!(
                        "the VM was restored, but its identity fix-up (clock and entropy) had not run when the daemon restarted and cannot be run now, so it was stopped: {}",
                        error_chain(&err)
                    );
                    self.fail(failure, None).await;
                    return self.drain().await;
                }
            }
        } else if matches!(info.state, VmState::Ready | VmState::Running) && !waiting_in_pool(&info)
        {
            // Connected on first use: the guest's agent has been running.
            self.open_agent(None);
        }
        if matches!(info.state, VmState::Booting | VmState::Prewarming) {
            self.finish_boot(&machine).await;
        } else {
            self.serve(&machine).await;
            self.drain().await;
        }
    }

    async fn finish_boot(&mut self, machine: &Machine) {
        match self.await_ready(machine).await {
            BootOutcome::Ready(agent) => {
                if let Some((connection, at)) = agent {
                    self.record
                        .send_modify(|r| r.timeline.mark(BootPhase::AgentReady, at));
                    // Open before the VM is recorded ready: a caller that
                    // sees it ready finds its agent callable.
                    self.open_agent(Some(connection));
                }
                self.mark(BootPhase::Ready);
                let _ = self.apply(VmEvent::BootCompleted).await;
                tracing::info!(vm = %self.id, ms = self.requested_at.elapsed().as_millis() as u64, "VM ready");
            }
            BootOutcome::Failed(err) => {
                let exit = machine.stop().await;
                self.fail(error_chain(&err), Some(exit)).await;
                return self.drain().await;
            }
            BootOutcome::AgentSilent(err) => {
                let tail = machine.console_tail();
                let exit = machine.stop().await;
                let tail = if tail.is_empty() {
                    "(no console output)".to_owned()
                } else {
                    tail.join("\n  ")
                };
                self.fail(
                    format!("{}; last console lines:\n  {tail}", error_chain(&err)),
                    Some(exit),
                )
                .await;
                return self.drain().await;
            }
            BootOutcome::Exited(reason) => {
                let tail = machine.console_tail().join("\n  ");
                self.fail(
                    format!("VMM {reason} during boot; last console lines:\n  {tail}"),
                    Some(reason),
                )
                .await;
                return self.drain().await;
            }
            BootOutcome::StopRequested(reply) => {
                self.stop(machine, reply).await;
                return self.drain().await;
            }
            BootOutcome::Detached(done) => {
                machine.detach();
                let _ = done.send(());
                return;
            }
        }
        if self.serve(machine).await {
            self.drain().await;
        }
    }

    async fn create(&mut self, backend: &Backend) -> Option<Machine> {
        let spec = self.record.borrow().spec.clone();
        let workdir = PathBuf::from(&self.record.borrow().workdir);
        let mut phases = Vec::new();
        let started = self.requested_at;
        let mut mark = |phase| phases.push((phase, started.elapsed().as_micros() as u64));
        let created = backend
            .create(self.request(&spec, &workdir), &mut mark)
            .await;
        self.record.send_modify(|r| {
            for (phase, at) in phases {
                r.timeline.mark(phase, at);
            }
        });
        match created {
            Ok(machine) => {
                self.record.send_modify(|r| r.pid = machine.pid());
                Some(machine)
            }
            Err(err) => {
                self.fail(error_chain(&err), None).await;
                self.drain().await;
                None
            }
        }
    }

    /// Waits for readiness, still answering callers: a stop ends the boot, a
    /// detach lets the VM boot on without us, anything else is refused as the
    /// state machine says.
    async fn await_ready(&mut self, machine: &Machine) -> BootOutcome {
        // The agent's deadline counts from the boot, like the backend's own
        // wait for the console.
        let deadline = tokio::time::Instant::now() + self.boot_timeout;
        let (agent, requested_at) = (self.agent.clone(), self.requested_at);
        let ready = async move {
            if let Err(err) = machine.wait_ready().await {
                return match err {
                    BackendError::ExitedDuringBoot { reason, .. } => BootOutcome::Exited(reason),
                    err => BootOutcome::Failed(err),
                };
            }
            let Some(link) = agent else {
                return BootOutcome::Ready(None);
            };
            match link.address().wait_until_answers(deadline).await {
                Ok((connection, pong)) => {
                    let at = requested_at.elapsed().as_micros() as u64;
                    tracing::debug!(agent_version = %pong.agent_version, boot_id = %pong.boot_id, "guest agent answered");
                    BootOutcome::Ready(Some((connection, at)))
                }
                Err(err) => BootOutcome::AgentSilent(err),
            }
        };
        tokio::pin!(ready);
        loop {
            tokio::select! {
                outcome = &mut ready => return outcome,
                reason = machine.wait_exit() => return BootOutcome::Exited(reason),
                Some(command) = self.commands.recv() => match command {
                    Command::Op { op: VmOp::Stop, reply } => return BootOutcome::StopRequested(reply),
                    Command::Op { op, reply } => {
                        let _ = reply.send(Err(self.refuse(op)));
                    }
                    Command::Snapshot { reply, .. } => {
                        let _ = reply.send(Err(self.refuse(VmOp::Snapshot)));
                    }
                    Command::Allocate { reply, .. } => {
                        let _ = reply.send(Err(self.refuse(VmOp::Allocate)));
                    }
                    Command::Check { reply, .. } => {
                        let _ = reply.send(Err(CheckError::NotWaiting(self.state())));
                    }
                    Command::Limit { reply, .. } => {
                        let _ = reply.send(Err(self.refuse(VmOp::Limit)));
                    }
                    Command::Detach { done } => return BootOutcome::Detached(done),
                },
            }
        }
    }

    /// Serves operations until the VM reaches a terminal state (true) or is
    /// detached (false).
    async fn serve(&mut self, machine: &Machine) -> bool {
        // The instant by which a VM just handed out or resumed gets normal
        // priority on its vCPUs too (see `HANDOVER_SETTLE`).
        let mut settling: Option<tokio::time::Instant> = None;
        loop {
            let settled =
                tokio::time::sleep_until(settling.unwrap_or_else(tokio::time::Instant::now));
            tokio::select! {
                reason = machine.wait_exit() => {
                    self.exited(reason).await;
                    return true;
                }
                () = settled, if settling.is_some() => {
                    settling = None;
                    self.settle(machine).await;
                }
                command = self.commands.recv() => {
                    if settling.take().is_some() {
                        self.settle(machine).await;
                    }
                    match command {
                        // Every handle is gone: the manager forgot this VM.
                        None => {
                            self.close_agent();
                            machine.stop().await;
                            return true;
                        }
                        Some(Command::Detach { done }) => {
                            self.close_agent();
                            machine.detach();
                            let _ = done.send(());
                            return false;
                        }
                        Some(Command::Op { op: VmOp::Stop, reply }) => {
                            self.stop(machine, reply).await;
                            return true;
                        }
                        Some(Command::Op { op, reply }) => {
                            let result = self.pause_or_resume(machine, op).await;
                            // A resumed guest's vCPUs wait idle until the
                            // answer is out, as at a hand-over.
                            if op == VmOp::Resume && result.is_ok() {
                                settling = Some(tokio::time::Instant::now() + HANDOVER_SETTLE);
                            }
                            let _ = reply.send(result);
                        }
                        Some(Command::Snapshot { job, reply }) => {
                            let result = self.snapshot(machine, job).await;
                            let _ = reply.send(result);
                        }
                        Some(Command::Allocate { requested_at, reply }) => {
                            match self.allocate(machine, requested_at, reply).await {
                                Handover::Ended => return true,
                                Handover::Settling(at) => settling = Some(at),
                                Handover::Unchanged => {}
                            }
                        }
                        Some(Command::Check { retire, reply }) => {
                            let _ = reply.send(self.check(machine, retire).await);
                        }
                        Some(Command::Limit { limits, reply }) => {
                            let _ = reply.send(self.set_rate_limits(machine, limits).await);
                        }
                    }
                }
            }
        }
    }

    /// Ends a hand-over or a resume once its answer is out: the VM gets
    /// normal priority on every thread, and its record is stored (a
    /// hand-over's with the acquire time).
    async fn settle(&self, machine: &Machine) {
        self.foreground(machine);
        self.commit().await;
    }

    /// Gives a VM handed out or resumed its normal priority on every thread.
    fn foreground(&self, machine: &Machine) {
        if let Err(err) = machine.foreground() {
            tracing::warn!(vm = %self.id, error = %error_chain(&err), "the VM runs at idle CPU priority");
        }
    }

    async fn pause_or_resume(&self, machine: &Machine, op: VmOp) -> Result<VmInfo, VmError> {
        if !matches!(op, VmOp::Pause | VmOp::Resume) {
            return Err(self.refuse(op));
        }
        let event = op.event().expect("pause and resume change the state");
        transition(self.state(), event).map_err(|_| self.refuse(op))?;
        let done = match op {
            VmOp::Pause => {
                // Calls in flight end now, not when the frozen agent would
                // have answered.
                self.close_agent();
                let paused = machine.pause().await;
                if paused.is_err() {
                    self.open_agent(None);
                }
                paused
            }
            _ => {
                // Resumed with its vCPUs idle, as a pool's VM at its
                // hand-over (see `foreground_control`).
                if let Err(err) = machine.background_vcpus() {
                    tracing::warn!(vm = %self.id, error = %error_chain(&err), "cannot resume the VM with its vCPUs idle");
                }
                resume_idle(machine).await
            }
        };
        done.map_err(|source| VmError::Backend {
            id: self.id.clone(),
            op,
            source: Box::new(source),
        })?;
        if op == VmOp::Resume {
            self.open_agent(None);
        }
        let _ = self.apply(event).await;
        Ok(self.record.borrow().clone())
    }

    /// Changes the VMM's limits, then the record: the record never claims
    /// limits the VMM does not enforce.
    async fn set_rate_limits(
        &self,
        machine: &Machine,
        limits: RateLimits,
    ) -> Result<VmInfo, VmError> {
        if !matches!(
            self.state(),
            VmState::Ready | VmState::Running | VmState::Paused
        ) {
            return Err(self.refuse(VmOp::Limit));
        }
        machine
            .set_rate_limits(&limits)
            .await
            .map_err(|source| VmError::Backend {
                id: self.id.clone(),
                op: VmOp::Limit,
                source: Box::new(source),
            })?;
        self.record.send_modify(|r| {
            r.spec.rate_limits = limits;
            r.updated_at_ms = now_ms();
        });
        self.commit().await;
        Ok(self.record.borrow().clone())
    }

    /// Pauses a running VM (the state machine allows snapshots of paused VMs
    /// only), has the VMM write the snapshot, and resumes the VM if it ran
    /// before and the job says so. Each step is stored as it happens. A failed
    /// snapshot still resumes a VM this call paused.
    async fn snapshot(
        &self,
        machine: &Machine,
        job: SnapshotJob,
    ) -> Result<(VmInfo, SnapshotTiming), VmError> {
        let started = Instant::now();
        let was_running = matches!(self.state(), VmState::Ready | VmState::Running);
        let allowed = match self.state() {
            VmState::Paused | VmState::Snapshotted => true,
            _ => was_running,
        };
        if !allowed {
            return Err(self.refuse(VmOp::Snapshot));
        }
        let backend_err = |op, source| VmError::Backend {
            id: self.id.clone(),
            op,
            source: Box::new(source),
        };
        let mut timing = SnapshotTiming::default();
        if was_running {
            self.close_agent();
            if let Err(err) = machine.pause().await {
                self.open_agent(None);
                return Err(backend_err(VmOp::Pause, err));
            }
            let _ = self.apply(VmEvent::Pause).await;
        }
        timing.pause_us = started.elapsed().as_micros() as u64;
        crate::crash::point("snapshot.after_pause");
        if self.record.borrow().spec.diff_snapshots && self.record.borrow().last_snapshot.is_some()
        {
            // The VMM resets its dirty-page log as it writes a snapshot. Until
            // this one is complete, no earlier snapshot is a valid base for a
            // diff: a failed or interrupted one must not leave one recorded.
            self.record.send_modify(|r| r.last_snapshot = None);
            let encoded = row(&self.record.borrow());
            let stored = match encoded {
                Ok(row) => with_store(&self.store, move |s| s.put_vm(&row))
                    .await
                    .map_err(|e| error_chain(&e)),
                Err(err) => Err(err.to_string()),
            };
            if let Err(err) = stored {
                // Unrecorded, a later restart could still offer the old base.
                if was_running && machine.resume().await.is_ok() {
                    self.open_agent(None);
                    let _ = self.apply(VmEvent::Resume).await;
                }
                return Err(VmError::Record {
                    id: self.id.clone(),
                    reason: err,
                });
            }
        }
        let created = machine
            .snapshot(job.kind, &job.state_file, &job.memory_file)
            .await;
        timing.create_us = started.elapsed().as_micros() as u64 - timing.pause_us;
        if created.is_ok() {
            self.record
                .send_modify(|r| r.last_snapshot = Some(job.id.clone()));
            let _ = self.apply(VmEvent::SnapshotTaken).await;
        } else {
            // Partial files go at once: on a full disk they hold the space the
            // resume's record needs.
            let _ = std::fs::remove_file(&job.memory_file);
            let _ = std::fs::remove_file(&job.state_file);
        }
        let resumed_at = started.elapsed().as_micros() as u64;
        if was_running && (job.resume || created.is_err()) {
            match machine.resume().await {
                Ok(()) => {
                    self.open_agent(None);
                    let _ = self.apply(VmEvent::Resume).await;
                }
                Err(err) => {
                    tracing::warn!(vm = %self.id, error = %error_chain(&err), "cannot resume the VM after its snapshot");
                }
            }
        }
        timing.resume_us = started.elapsed().as_micros() as u64 - resumed_at;
        timing.total_us = started.elapsed().as_micros() as u64;
        created.map_err(|e| backend_err(VmOp::Snapshot, e))?;
        Ok((self.record.borrow().clone(), timing))
    }

    /// See [`VmHandle::allocate`]. The caller is answered before the final
    /// record (`running`, with the acquire time) is stored: the record stored
    /// with the resume already names the VM `running` and acquired, so a
    /// daemon that dies in between re-adopts it as the caller's.
    ///
    /// A pool's VM is resumed with its vCPUs still idle, and keeps them so
    /// until [`HANDOVER_SETTLE`] after the answer (see the returned
    /// [`Handover`]).
    async fn allocate(&self, machine: &Machine, requested_at: Instant, reply: Reply) -> Handover {
        let from = self.state();
        let Ok(allocating) = transition(from, VmEvent::Allocate) else {
            let _ = reply.send(Err(self.refuse(VmOp::Allocate)));
            return Handover::Unchanged;
        };
        let running = transition(allocating, VmEvent::Allocated).expect("allocating ends running");
        let before = self.record.borrow().clone();
        self.record.send_modify(|r| {
            r.state = running;
            r.updated_at_ms = now_ms();
            if let Some(slot) = &mut r.pool {
                slot.acquired_at_ms = Some(r.updated_at_ms);
            }
        });
        let resumes = matches!(from, VmState::Paused | VmState::Snapshotted);
        let encoded = row(&self.record.borrow());
        let store = self.store.clone();
        let stored = async move {
            match encoded {
                // Beside a resume the write overlaps it on a blocking
                // thread; alone it is the hand-over's whole wait.
                Ok(row) if resumes => with_store(&store, move |s| s.put_vm(&row))
                    .await
                    .map_err(|e| error_chain(&e)),
                Ok(row) => with_store_now(&store, move |s| s.put_vm(&row))
                    .await
                    .map_err(|e| error_chain(&e)),
                Err(err) => Err(err.to_string()),
            }
        };
        let resume = async {
            // A pool's VM waited at idle priority, and its vCPUs keep it
            // until the answer is out. A resume needs the VMM's own threads
            // at normal priority first; a running VM's hand-over makes no
            // VMM call.
            if resumes {
                machine.foreground_control()?;
                resume_idle(machine).await
            } else {
                Ok(())
            }
        };
        let (stored, resumed) = tokio::join!(stored, resume);
        match (stored, resumed) {
            (Ok(()), Ok(())) => {
                if let Err(source) = self.hand_over_agent(machine).await {
                    // Recorded as handed out, but with the snapshot's clock
                    // and random state: the caller must not get it.
                    let failure = format!(
                        "the identity fix-up of its hand-over failed: {}",
                        error_chain(&source)
                    );
                    let _ = reply.send(Err(VmError::Fixup {
                        id: self.id.clone(),
                        source,
                    }));
                    let exit = machine.stop().await;
                    self.fail(failure, Some(exit)).await;
                    return Handover::Ended;
                }
                self.record.send_modify(|r| {
                    if let Some(slot) = &mut r.pool {
                        slot.acquire_us = Some(requested_at.elapsed().as_micros() as u64);
                    }
                });
                let _ = reply.send(Ok(self.record.borrow().clone()));
                Handover::Settling(tokio::time::Instant::now() + HANDOVER_SETTLE)
            }
            (Err(reason), resumed) => {
                // Unrecorded, the VM must not run for anyone: back as it was.
                if resumed.is_ok() && from != VmState::Ready {
                    let _ = machine.pause().await;
                }
                self.record.send_replace(before);
                let _ = reply.send(Err(VmError::Record {
                    id: self.id.clone(),
                    reason,
                }));
                Handover::Unchanged
            }
            (Ok(()), Err(source)) => {
                // Recorded as handed out, but its guest does not run (or
                // not at its priority): the caller cannot use it and nobody
                // else may.
                let failure = format!("its hand-over failed: {}", error_chain(&source));
                let _ = reply.send(Err(VmError::Backend {
                    id: self.id.clone(),
                    op: VmOp::Allocate,
                    source: Box::new(source),
                }));
                let exit = machine.stop().await;
                self.fail(failure, Some(exit)).await;
                Handover::Ended
            }
        }
    }

    /// Readies a VM's agent for the caller it is handed to: a VM restored
    /// from a snapshot gets its identity fix-up first (after the resume, so
    /// its agent runs), a booted one only its session. Costs nothing for a
    /// VM without an agent.
    async fn hand_over_agent(&self, machine: &Machine) -> Result<(), LinkError> {
        let Some(link) = &self.agent else {
            return Ok(());
        };
        if self.record.borrow().start.snapshot.is_none() {
            // A booted VM's session (opened at readiness) goes on.
            if !link.is_open() {
                link.open(None);
            }
            return Ok(());
        }
        // The guest answers the fix-up: its vCPUs must not wait behind
        // anything for a CPU.
        self.foreground(machine);
        let (connection, fixup) = link.address().fix_identity().await?;
        tracing::debug!(vm = %self.id, us = fixup.duration_us, "identity fixed up at hand-over");
        self.record.send_modify(|r| r.identity_fixup = Some(fixup));
        link.open(Some(connection));
        Ok(())
    }

    /// See [`VmHandle::check`].
    async fn check(&self, machine: &Machine, retire: Option<String>) -> Result<(), CheckError> {
        let state = self.state();
        let handed_out = self
            .record
            .borrow()
            .pool
            .as_ref()
            .is_some_and(|s| s.acquired_at_ms.is_some());
        let running = match state {
            _ if handed_out => return Err(CheckError::NotWaiting(state)),
            VmState::Ready => true,
            VmState::Paused | VmState::Snapshotted => false,
            _ => return Err(CheckError::NotWaiting(state)),
        };
        let reason = match retire {
            Some(reason) => reason,
            None => match machine.check_health(running).await {
                Ok(()) => return Ok(()),
                Err(err) => error_chain(&err),
            },
        };
        tracing::info!(vm = %self.id, %reason, "VM needs maintenance");
        let _ = self.apply(VmEvent::HealthCheckFailed).await;
        Err(CheckError::Unfit(reason))
    }

    async fn stop(&self, machine: &Machine, reply: Reply) {
        // `stopping` is stored before the VMM is signalled: a daemon that dies
        // mid-stop finishes the stop when it comes back.
        if self.apply(VmEvent::Stop).await.is_err() {
            let _ = reply.send(Err(self.refuse(VmOp::Stop)));
            return;
        }
        self.close_agent();
        crate::crash::point("stop.after_intent");
        let reason = machine.stop().await;
        crate::crash::point("stop.after_exit");
        self.record.send_modify(|r| {
            r.exit = Some(exit_info(reason));
            r.pid = None;
        });
        let _ = self.apply(VmEvent::Exited).await;
        tracing::info!(vm = %self.id, %reason, "VM stopped");
        let _ = reply.send(Ok(self.record.borrow().clone()));
    }

    /// After a terminal state, refuse whatever is still queued, then end.
    async fn drain(&mut self) {
        self.close_agent();
        self.commands.close();
        while let Some(command) = self.commands.recv().await {
            match command {
                Command::Op { op, reply } => {
                    let _ = reply.send(Err(self.refuse(op)));
                }
                Command::Snapshot { reply, .. } => {
                    let _ = reply.send(Err(self.refuse(VmOp::Snapshot)));
                }
                Command::Allocate { reply, .. } => {
                    let _ = reply.send(Err(self.refuse(VmOp::Allocate)));
                }
                Command::Check { reply, .. } => {
                    let _ = reply.send(Err(CheckError::NotWaiting(self.state())));
                }
                Command::Limit { reply, .. } => {
                    let _ = reply.send(Err(self.refuse(VmOp::Limit)));
                }
                Command::Detach { done } => {
                    let _ = done.send(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tfc_api::{IdentityFixup, PoolSlot};
    use tfc_core::{Readiness, VmTypeName};

    fn restored(state: VmState) -> VmInfo {
        let spec = VmSpec {
            vm_type: VmTypeName::new("default").unwrap(),
            vcpus: 1,
            memory_mib: 128,
            kernel: "/k".into(),
            rootfs: "/r".into(),
            boot_args: String::new(),
            readiness: Readiness::Agent { port: 1024 },
            diff_snapshots: false,
            vsock: true,
            vmm: tfc_core::Vmm::Firecracker,
            network: None,
            rate_limits: Default::default(),
        };
        let start = StartInfo {
            snapshot: Some("snap-1".to_owned()),
            ..StartInfo::default()
        };
        let mut info = new_record(
            &VmId::new("vm-0123456789ab").unwrap(),
            &spec,
            std::path::Path::new("/w"),
            start,
        );
        info.state = state;
        info
    }

    #[test]
    fn a_panic_or_an_outside_signal_is_told_from_a_power_off() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        std::fs::write(&console, "Run /init as init process\nreboot: Power down\n").unwrap();
        assert_eq!(unclean_end(&console, dir.path()), None);
        // A guest that rebooted (how a Firecracker guest ends itself) too.
        std::fs::write(&console, "reboot: Restarting system\n").unwrap();
        assert_eq!(unclean_end(&console, dir.path()), None);
        // Only the end is read: an early panic line in a long log is gone.
        let mut long = "Kernel panic - not syncing: early\n".to_owned();
        long.push_str(&"x".repeat(END_TAIL_BYTES as usize));
        long.push_str("\nreboot: Power down\n");
        std::fs::write(&console, &long).unwrap();
        assert_eq!(unclean_end(&console, dir.path()), None);
        std::fs::write(
            &console,
            "ok\nKernel panic - not syncing: Attempted to kill init!\nRebooting in 1 seconds..\n",
        )
        .unwrap();
        let cause = unclean_end(&console, dir.path()).unwrap();
        assert!(
            cause.contains("panicked") && cause.contains("kill init"),
            "{cause}"
        );
        // No panic, but no power-off either: a reset nobody asked for.
        std::fs::write(&console, "Run /init as init process\n").unwrap();
        let cause = unclean_end(&console, dir.path()).unwrap();
        assert!(cause.contains("without powering off"), "{cause}");
        std::fs::write(&console, "fine\nreboot: Power down\n").unwrap();
        std::fs::write(
            dir.path().join(tfc_qemu::command::QEMU_STDERR),
            "qemu-system-x86_64: terminating on signal 15 from pid 42 (sh)\n",
        )
        .unwrap();
        let cause = unclean_end(&console, dir.path()).unwrap();
        assert!(cause.contains("signal 15"), "{cause}");
        // A console that cannot be read shows no power-off either.
        assert!(unclean_end(&dir.path().join("none"), &dir.path().join("none")).is_some());
    }

    /// Console lines for the fuzzer below: ordinary kernel output, junk
    /// bytes, and the lines the verdict depends on, whole or inside others.
    fn console_piece() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            4 => "\\[ *[0-9]{1,4}\\.[0-9]{6}\\] [ -~]{0,80}\n".prop_map(String::into_bytes),
            1 => proptest::sample::select(CLEAN_END_LINES.to_vec())
                .prop_map(|l| format!("[   9.9] {l}\r\n").into_bytes()),
            1 => Just(b"Kernel panic - not syncing: Attempted to kill init!\n".to_vec()),
            1 => proptest::collection::vec(any::<u8>(), 0..200),
            1 => (1usize..(END_TAIL_BYTES as usize)).prop_map(|n| vec![b'.'; n]),
        ]
    }

    proptest::proptest! {
        // 256 cases in CI; TFC_FUZZ_CASES for a long run (docs/testing.md).
        #![proptest_config(proptest::test_runner::Config::with_cases(
            std::env::var("TFC_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
        ))]

        /// Whatever a guest's console and QEMU's stderr end with (junk
        /// bytes, cut lines, logs far longer than the window read), the
        /// verdict never panics and follows its rule over the last
        /// `END_TAIL_BYTES` of each file: a panic line first, then an
        /// outside signal, else a clean end line or a failure saying so.
        #[test]
        fn fuzzed_consoles_get_the_verdict_of_their_tail(
            pieces in proptest::collection::vec(console_piece(), 0..30),
            signalled in proptest::bool::ANY,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let console = dir.path().join("console.log");
            let bytes = pieces.concat();
            std::fs::write(&console, &bytes).unwrap();
            if signalled {
                std::fs::write(
                    dir.path().join(tfc_qemu::command::QEMU_STDERR),
                    "qemu-system-x86_64: terminating on signal 9\n",
                )
                .unwrap();
            }
            let window = &bytes[bytes.len().saturating_sub(END_TAIL_BYTES as usize)..];
            let window = String::from_utf8_lossy(window);
            let verdict = unclean_end(&console, dir.path());
            if window.contains(crate::backend::PANIC_LINE) {
                let cause = verdict.unwrap();
                proptest::prop_assert!(
                    cause.starts_with("the guest kernel panicked: ") && cause.contains("Kernel panic"),
                    "{}",
                    cause
                );
            } else if signalled {
                proptest::prop_assert!(verdict.unwrap().contains("terminating on signal 9"));
            } else if CLEAN_END_LINES.iter().any(|l| window.contains(l)) {
                proptest::prop_assert_eq!(verdict, None);
            } else {
                proptest::prop_assert!(verdict.unwrap().contains("without powering off"));
            }
        }
    }

    #[test]
    fn a_restored_vm_without_its_fixup_gets_it_at_readoption() {
        assert_eq!(fixup_due(&restored(VmState::Ready)), Some(1024));
        assert_eq!(fixup_due(&restored(VmState::Running)), Some(1024));
        // Done already, or not restored, or not in a caller's hands yet.
        let mut done = restored(VmState::Ready);
        done.identity_fixup = Some(IdentityFixup {
            at_ms: 1,
            duration_us: 1,
            entropy_credited: true,
        });
        assert_eq!(fixup_due(&done), None);
        let mut booted = restored(VmState::Ready);
        booted.start.snapshot = None;
        assert_eq!(fixup_due(&booted), None);
        let mut waiting = restored(VmState::Paused);
        waiting.pool = Some(PoolSlot {
            tier: tfc_core::PoolTier::Hot,
            acquired_at_ms: None,
            acquire_us: None,
        });
        assert_eq!(fixup_due(&waiting), None);
        waiting.state = VmState::Ready;
        assert_eq!(fixup_due(&waiting), None, "the hand-over runs it");
        let mut handed_out = waiting.clone();
        handed_out.pool.as_mut().unwrap().acquired_at_ms = Some(5);
        handed_out.state = VmState::Running;
        assert_eq!(fixup_due(&handed_out), Some(1024));
        // Without an agent there is nothing to run.
        let mut plain = restored(VmState::Ready);
        plain.spec.readiness = Readiness::ConsoleLine {
            contains: "x".to_owned(),
        };
        assert_eq!(fixup_due(&plain), None);
        // A paused restored VM has had its fix-up: nobody can pause a VM
        // before its restore (fix-up included) has answered.
        assert_eq!(fixup_due(&restored(VmState::Paused)), None);
    }
}
