//! The seam between the control plane and a VMM. [`VmBackend`] creates machines;
//! [`VmMachine`] has the lifecycle verbs of one VM. Firecracker implements both,
//! and so does QEMU under TCG (no snapshots); so does a scriptable fake for fast
//! tests of everything above the seam. The daemon holds the [`Backend`] enum,
//! which dispatches without boxing: the real VMMs per VM by its spec's `vmm`
//! ([`Vmms`]), or the fake for every VM.

pub mod fake;
pub mod firecracker;
pub mod qemu;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tfc_api::SnapshotKind;

use tfc_core::limits::RateLimits;
use tfc_core::{BootPhase, VmId, VmSpec, Vmm};
use tfc_firecracker::ConsoleWatch;

pub use self::fake::{FakeAgent, FakeBackend, FakeMachine, FakePriority, FakeScript};
pub use self::firecracker::{FirecrackerBackend, FirecrackerMachine, Jailer};
pub use self::qemu::{QemuBackend, QemuMachine};

pub use tfc_core::ExitReason;

/// A backend step that failed. The message says what to do where a user can act.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "{what} not found at {path}: run `tfc assets build` or fix the VM type's `{what}` path"
    )]
    AssetMissing { what: &'static str, path: String },
    #[error("KVM is not usable: {0}")]
    NoKvm(String),
    #[error("starting the VMM failed")]
    Spawn(#[source] tfc_firecracker::ProcessError),
    #[error("configuring the VMM failed")]
    Configure(#[source] tfc_firecracker::ApiError),
    #[error("starting the guest failed")]
    InstanceStart(#[source] tfc_firecracker::ApiError),
    #[error("the VMM refused to {verb}")]
    Api {
        verb: &'static str,
        #[source]
        source: tfc_firecracker::ApiError,
    },
    #[error("guest kernel panicked: {line}")]
    GuestPanic { line: String },
    #[error("guest not ready within {timeout_s} s; last console lines:\n{tail}")]
    ReadyTimeout { timeout_s: u64, tail: String },
    #[error("VMM {reason} during boot; last console lines:\n{tail}")]
    ExitedDuringBoot { reason: ExitReason, tail: String },
    #[error("cannot adopt the VMM: {0}")]
    Adopt(#[source] tfc_firecracker::ProcessError),
    #[error("cannot prepare the VM directory")]
    Workdir(#[source] std::io::Error),
    #[error("cannot change the CPU priority of the VMM")]
    Priority(#[source] tfc_firecracker::priority::PriorityError),
    #[error("cannot prepare or use the VM's jail")]
    Jail(#[source] tfc_firecracker::JailError),
    /// Every jail id is taken: the host is full until a VM goes (503).
    #[error("no user for the VM's jail")]
    NoJailId(#[source] tfc_firecracker::JailIdError),
    #[error("the VMM could not load the snapshot")]
    Restore(#[source] tfc_firecracker::ApiError),
    #[error("the VMM runs no guest: {0}")]
    NotStarted(String),
    #[error("health check failed: {0}")]
    Unhealthy(String),
    #[error("fake backend: {0}")]
    Scripted(String),
    /// The VM's VMM cannot do this at all (the API answers 501).
    #[error("{operation} are not supported by the {vmm} backend")]
    Unsupported { vmm: Vmm, operation: &'static str },
    /// The VM's VMM is not installed or usable on this host.
    #[error("the {vmm} backend is not available on this host: {reason}")]
    Unavailable { vmm: Vmm, reason: String },
    #[error("starting QEMU failed")]
    QemuSpawn(#[source] tfc_qemu::ProcessError),
    #[error("cannot adopt the VM's QEMU")]
    QemuAdopt(#[source] tfc_qemu::ProcessError),
    #[error("QEMU refused to {verb}")]
    Qmp {
        verb: &'static str,
        #[source]
        source: tfc_qemu::QmpError,
    },
}

/// Console text the kernel prints when it panics; a boot that shows it has failed.
pub(crate) const PANIC_LINE: &str = "Kernel panic";

/// Waits up to `timeout` for the serial console to show `readiness`, for
/// the backends that read readiness from it (the console must watch for
/// `readiness` and [`PANIC_LINE`]). A panic fails at once; a console that
/// closes means the VMM has ended, and `exited` says how.
pub(crate) async fn console_ready(
    console: &ConsoleWatch,
    readiness: &str,
    timeout: Duration,
    exited: impl Future<Output = ExitReason>,
) -> Result<(), BackendError> {
    let outcome = tokio::time::timeout(timeout, async {
        tokio::select! {
            ready = console.wait_for(readiness) => ready.map(drop).map_err(|_| None),
            panic = console.wait_for(PANIC_LINE) => match panic {
                Ok(line) => Err(Some(line)),
                Err(_) => Err(None),
            },
        }
    })
    .await;
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(Some(line))) => Err(BackendError::GuestPanic { line }),
        // The console closed: the process is gone.
        Ok(Err(None)) => {
            let reason = exited.await;
            Err(BackendError::ExitedDuringBoot {
                reason,
                tail: tail_text(console),
            })
        }
        Err(_) => Err(BackendError::ReadyTimeout {
            timeout_s: timeout.as_secs(),
            tail: tail_text(console),
        }),
    }
}

/// The console's last lines, indented, for error messages.
pub(crate) fn tail_text(console: &ConsoleWatch) -> String {
    let tail = console.tail();
    if tail.is_empty() {
        "  (no console output)".to_owned()
    } else {
        tail.iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The guest port a health probe asks for; nothing listens there, so a live
/// guest kernel refuses at once.
const PROBE_PORT: u32 = 52;
/// How long a live guest kernel may take to answer a probe: 6-29 ms measured
/// on an idle nested-KVM host, but seconds when its vCPU competes with
/// spinning guests for the host's cores.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the guest behind the vsock socket in `workdir` for a connection and
/// passes on any answer in time (a VM without a vsock device passes). The
/// same for every VMM whose vsock speaks Firecracker's `CONNECT` protocol.
pub(crate) async fn probe_vsock(spec: &VmSpec, workdir: &Path) -> Result<(), BackendError> {
    if !spec.vsock {
        return Ok(());
    }
    let uds = workdir.join(tfc_firecracker::vm_config::VSOCK_SOCKET);
    tfc_firecracker::vsock::probe(&uds, PROBE_PORT, PROBE_TIMEOUT)
        .await
        .map(drop)
        .map_err(|err| {
            BackendError::Unhealthy(format!(
                "the guest kernel does not answer on vsock: {}",
                tfc_core::error_chain(&err)
            ))
        })
}

/// A kernel or root image a VM needs, or an error that says what to do.
pub(crate) fn require_file(what: &'static str, path: &Path) -> Result<(), BackendError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(BackendError::AssetMissing {
            what,
            path: path.display().to_string(),
        })
    }
}

/// What a backend needs to create one VM.
#[derive(Debug, Clone)]
pub struct CreateRequest<'a> {
    pub id: &'a VmId,
    pub spec: &'a VmSpec,
    /// The VM's own directory; it exists and is empty.
    pub workdir: &'a Path,
    /// The network namespace the VMM runs in, holding the tap of the VM's
    /// network (`spec.network`); the daemon's own when the VM has none.
    pub netns: Option<PathBuf>,
}

/// What a backend needs to restore one VM from a snapshot.
#[derive(Debug, Clone)]
pub struct RestoreRequest<'a> {
    pub id: &'a VmId,
    /// The snapshotted VM's spec (its rootfs is linked into the new directory).
    pub spec: &'a VmSpec,
    /// The VM's own directory; it exists and is empty.
    pub workdir: &'a Path,
    /// As [`CreateRequest::netns`]: the clone's network namespace, whose tap
    /// has the name the snapshot recorded.
    pub netns: Option<PathBuf>,
    /// Start the VMM at idle CPU priority (a pool's prewarmed VM): until
    /// [`VmMachine::foreground`] it runs only on CPU time nothing else wants.
    /// Ignored by a backend (or a daemon) that could not undo it.
    pub background: bool,
}

/// Creates machines.
pub trait VmBackend {
    type Machine: VmMachine;

    /// Prepares a VM up to the point of booting (VMM spawned and configured),
    /// calling `mark` as each phase is reached.
    fn create(
        &self,
        request: CreateRequest<'_>,
        mark: &mut (dyn FnMut(BootPhase) + Send),
    ) -> impl Future<Output = Result<Self::Machine, BackendError>> + Send;

    /// Starts a VMM ready to load a snapshot of `request.spec` (root image
    /// linked into the VM's directory), calling `mark` as each phase is
    /// reached. On failure nothing is left running.
    fn restore(
        &self,
        request: RestoreRequest<'_>,
        mark: &mut (dyn FnMut(BootPhase) + Send),
    ) -> impl Future<Output = Result<Self::Machine, BackendError>> + Send;

    /// Asks the running guest of the VM in `workdir` whether its kernel
    /// answers (a vsock connection request; a VM without a vsock device
    /// passes). Needs no machine, so it can run beside the VM's owner.
    fn probe_guest(
        &self,
        id: &VmId,
        spec: &VmSpec,
        workdir: &Path,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Takes charge of the VM an earlier daemon created in `request.workdir`,
    /// whose VMM still runs. Fails when there is no such VMM to adopt.
    fn adopt(
        &self,
        request: CreateRequest<'_>,
    ) -> impl Future<Output = Result<Self::Machine, BackendError>> + Send;
}

/// The lifecycle verbs of one VM. Each is called only in the states the VM
/// state machine allows (the VM owner checks before calling).
pub trait VmMachine: Send + Sync {
    /// Process id of the VMM, when it is a real process.
    fn pid(&self) -> Option<u32>;

    /// Starts the guest. Allowed once, after `create`.
    fn boot(&self) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Resolves once the spec's readiness check passes (bounded by the backend's
    /// boot timeout).
    fn wait_ready(&self) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Allowed on a running guest.
    fn pause(&self) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Allowed on a paused guest.
    fn resume(&self) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Loads a snapshot into a VMM from [`VmBackend::restore`] and, with
    /// `resume`, resumes the guest (else it stays paused). `memory_file` is a
    /// full memory file (a diff is merged before it gets here), mapped
    /// privately: shared, unchanged, by every VM restored from it.
    /// `track_dirty_pages` keeps diff snapshots possible.
    fn load_snapshot(
        &self,
        state_file: &Path,
        memory_file: &Path,
        track_dirty_pages: bool,
        resume: bool,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Checks that the VMM is alive, answers, and reports its guest running
    /// (`running`) or paused, as the daemon believes.
    fn check_health(&self, running: bool) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// For a VM recorded as running, found by a new daemon: resumes a guest
    /// left paused; fails when the VMM never started one (a restore that did
    /// not finish).
    fn ensure_running(&self) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Replaces the VM's I/O limits while its guest runs (or is paused):
    /// each device's limit is set to `limits`' (unlimited where it has
    /// none).
    fn set_rate_limits(
        &self,
        limits: &RateLimits,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Writes a snapshot of the paused guest to the two files (absolute paths).
    fn snapshot(
        &self,
        kind: SnapshotKind,
        state_file: &Path,
        memory_file: &Path,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Stops the VMM, escalating as needed, and reports how it ended.
    fn stop(&self) -> impl Future<Output = ExitReason> + Send;

    /// Resolves when the VMM has ended, for whatever reason.
    fn wait_exit(&self) -> impl Future<Output = ExitReason> + Send;

    /// Last console lines, for failure reports.
    fn console_tail(&self) -> Vec<String>;

    /// Lets the VM outlive this handle (and this daemon): dropping the machine
    /// afterwards leaves its VMM running for a later daemon to adopt.
    fn detach(&self);

    /// Gives a VMM started in the background (see
    /// [`RestoreRequest::background`]) normal CPU priority, on every thread;
    /// nothing for one that runs at normal priority already. A VM handed to
    /// anyone gets it, at the latest right after the hand-over's answer.
    fn foreground(&self) -> Result<(), BackendError>;

    /// Gives normal CPU priority to the threads of a VMM started in the
    /// background that carry out and answer its API, leaving its vCPUs as
    /// they are (idle) until [`VmMachine::foreground`]. A hand-over resumes
    /// the guest this way: a vCPU woken at normal priority would hold the CPU
    /// the resume's answer needs (see [`tfc_firecracker::priority`]).
    /// Nothing for a VMM at normal priority, or one without such threads.
    fn foreground_control(&self) -> Result<(), BackendError>;

    /// Moves the vCPUs of a VM at normal priority to idle for a resume of
    /// it, where [`VmMachine::foreground`] can give them normal priority
    /// back afterwards (see [`VmMachine::foreground_control`] for why).
    /// Nothing for a backend or a daemon that cannot.
    fn background_vcpus(&self) -> Result<(), BackendError>;
}

/// The backend the daemon runs with, chosen from configuration: the real
/// VMMs, picked per VM by its spec's `vmm`, or the fake for every VM.
/// Cloned into every VM's owner, so the VMMs' settings are shared.
#[derive(Debug, Clone)]
pub enum Backend {
    Vmms(std::sync::Arc<Vmms>),
    Fake(FakeBackend),
}

/// The real VMMs of a daemon. Each is there when this host can run it; an
/// absent one keeps the reason, which its VMs are refused with.
#[derive(Debug, Clone)]
pub struct Vmms {
    /// The daemon's configured backend (VM types that name none run on it).
    pub default: Vmm,
    pub firecracker: Result<FirecrackerBackend, String>,
    pub qemu: Result<QemuBackend, String>,
}

/// A machine of any backend.
#[derive(Debug)]
pub enum Machine {
    Firecracker(FirecrackerMachine),
    Qemu(QemuMachine),
    Fake(FakeMachine),
}

impl Vmms {
    fn firecracker(&self) -> Result<&FirecrackerBackend, BackendError> {
        self.firecracker
            .as_ref()
            .map_err(|reason| BackendError::Unavailable {
                vmm: Vmm::Firecracker,
                reason: reason.clone(),
            })
    }

    fn qemu(&self) -> Result<&QemuBackend, BackendError> {
        self.qemu
            .as_ref()
            .map_err(|reason| BackendError::Unavailable {
                vmm: Vmm::QemuTcg,
                reason: reason.clone(),
            })
    }
}

impl Backend {
    /// The daemon's backend: its default VMM, or the fake.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Vmms(v) => v.default.as_str(),
            Backend::Fake(_) => "fake",
        }
    }

    /// The version of the VMM that takes snapshots, as they record it.
    pub fn vmm_version(&self) -> &str {
        match self {
            Backend::Vmms(v) => match &v.firecracker {
                Ok(fc) => &fc.version,
                Err(_) => "(firecracker not available)",
            },
            Backend::Fake(_) => fake::FAKE_VERSION,
        }
    }

    /// The Firecracker backend, when it runs its VMMs under the jailer.
    pub fn jailed_firecracker(&self) -> Option<&FirecrackerBackend> {
        match self {
            Backend::Vmms(v) => v.firecracker.as_ref().ok().filter(|fc| fc.jailer.is_some()),
            Backend::Fake(_) => None,
        }
    }

    /// Whether VMs on `vmm` can run here; the error says what to install,
    /// or that every jail id is taken. The fake runs every VM.
    pub fn check_available(&self, vmm: Vmm) -> Result<(), BackendError> {
        match (self, vmm) {
            (Backend::Fake(_), _) => Ok(()),
            (Backend::Vmms(v), Vmm::Firecracker) => v.firecracker()?.check_jail_ids(),
            (Backend::Vmms(v), Vmm::QemuTcg) => v.qemu().map(drop),
        }
    }
}

impl VmBackend for Backend {
    type Machine = Machine;

    async fn create(
        &self,
        request: CreateRequest<'_>,
        mark: &mut (dyn FnMut(BootPhase) + Send),
    ) -> Result<Machine, BackendError> {
        match (self, request.spec.vmm) {
            (Backend::Vmms(v), Vmm::Firecracker) => v
                .firecracker()?
                .create(request, mark)
                .await
                .map(Machine::Firecracker),
            (Backend::Vmms(v), Vmm::QemuTcg) => {
                v.qemu()?.create(request, mark).await.map(Machine::Qemu)
            }
            (Backend::Fake(b), _) => b.create(request, mark).await.map(Machine::Fake),
        }
    }

    async fn restore(
        &self,
        request: RestoreRequest<'_>,
        mark: &mut (dyn FnMut(BootPhase) + Send),
    ) -> Result<Machine, BackendError> {
        match (self, request.spec.vmm) {
            (Backend::Vmms(v), Vmm::Firecracker) => v
                .firecracker()?
                .restore(request, mark)
                .await
                .map(Machine::Firecracker),
            (Backend::Vmms(v), Vmm::QemuTcg) => {
                v.qemu()?.restore(request, mark).await.map(Machine::Qemu)
            }
            (Backend::Fake(b), _) => b.restore(request, mark).await.map(Machine::Fake),
        }
    }

    async fn probe_guest(
        &self,
        id: &VmId,
        spec: &VmSpec,
        workdir: &Path,
    ) -> Result<(), BackendError> {
        match (self, spec.vmm) {
            (Backend::Vmms(v), Vmm::Firecracker) => {
                v.firecracker()?.probe_guest(id, spec, workdir).await
            }
            (Backend::Vmms(v), Vmm::QemuTcg) => v.qemu()?.probe_guest(id, spec, workdir).await,
            (Backend::Fake(b), _) => b.probe_guest(id, spec, workdir).await,
        }
    }

    async fn adopt(&self, request: CreateRequest<'_>) -> Result<Machine, BackendError> {
        match (self, request.spec.vmm) {
            (Backend::Vmms(v), Vmm::Firecracker) => v
                .firecracker()?
                .adopt(request)
                .await
                .map(Machine::Firecracker),
            (Backend::Vmms(v), Vmm::QemuTcg) => v.qemu()?.adopt(request).await.map(Machine::Qemu),
            (Backend::Fake(b), _) => b.adopt(request).await.map(Machine::Fake),
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $m:ident => $body:expr) => {
        match $self {
            Machine::Firecracker($m) => $body,
            Machine::Qemu($m) => $body,
            Machine::Fake($m) => $body,
        }
    };
}

impl VmMachine for Machine {
    fn pid(&self) -> Option<u32> {
        dispatch!(self, m => m.pid())
    }
    async fn boot(&self) -> Result<(), BackendError> {
        dispatch!(self, m => m.boot().await)
    }
    async fn wait_ready(&self) -> Result<(), BackendError> {
        dispatch!(self, m => m.wait_ready().await)
    }
    async fn pause(&self) -> Result<(), BackendError> {
        dispatch!(self, m => m.pause().await)
    }
    async fn resume(&self) -> Result<(), BackendError> {
        dispatch!(self, m => m.resume().await)
    }
    async fn snapshot(
        &self,
        kind: SnapshotKind,
        state_file: &Path,
        memory_file: &Path,
    ) -> Result<(), BackendError> {
        dispatch!(self, m => m.snapshot(kind, state_file, memory_file).await)
    }
    async fn load_snapshot(
        &self,
        state_file: &Path,
        memory_file: &Path,
        track_dirty_pages: bool,
        resume: bool,
    ) -> Result<(), BackendError> {
        dispatch!(self, m => m.load_snapshot(state_file, memory_file, track_dirty_pages, resume).await)
    }
    async fn check_health(&self, running: bool) -> Result<(), BackendError> {
        dispatch!(self, m => m.check_health(running).await)
    }
    async fn ensure_running(&self) -> Result<(), BackendError> {
        dispatch!(self, m => m.ensure_running().await)
    }
    async fn set_rate_limits(&self, limits: &RateLimits) -> Result<(), BackendError> {
        dispatch!(self, m => m.set_rate_limits(limits).await)
    }
    async fn stop(&self) -> ExitReason {
        dispatch!(self, m => m.stop().await)
    }
    async fn wait_exit(&self) -> ExitReason {
        dispatch!(self, m => m.wait_exit().await)
    }
    fn console_tail(&self) -> Vec<String> {
        dispatch!(self, m => m.console_tail())
    }
    fn detach(&self) {
        dispatch!(self, m => m.detach())
    }

    fn foreground(&self) -> Result<(), BackendError> {
        dispatch!(self, m => m.foreground())
    }
    fn foreground_control(&self) -> Result<(), BackendError> {
        dispatch!(self, m => m.foreground_control())
    }
    fn background_vcpus(&self) -> Result<(), BackendError> {
        dispatch!(self, m => m.background_vcpus())
    }
}
