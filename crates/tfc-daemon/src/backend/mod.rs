//! The seam between the control plane and a VMM. [`VmBackend`] creates machines;
//! [`VmMachine`] has the lifecycle verbs of one VM. Firecracker implements both;
//! so does a scriptable fake for fast tests of everything above the seam. The
//! daemon holds the [`Backend`] enum, which dispatches without boxing.

pub mod fake;
pub mod firecracker;

use std::future::Future;
use std::path::Path;

use tfc_api::SnapshotKind;

use tfc_core::{BootPhase, VmId, VmSpec};

pub use self::fake::{FakeAgent, FakeBackend, FakeMachine, FakeScript};
pub use self::firecracker::{FirecrackerBackend, FirecrackerMachine};

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
    #[error("the VMM could not load the snapshot")]
    Restore(#[source] tfc_firecracker::ApiError),
    #[error("the VMM runs no guest: {0}")]
    NotStarted(String),
    #[error("health check failed: {0}")]
    Unhealthy(String),
    #[error("fake backend: {0}")]
    Scripted(String),
}

/// What a backend needs to create one VM.
#[derive(Debug, Clone, Copy)]
pub struct CreateRequest<'a> {
    pub id: &'a VmId,
    pub spec: &'a VmSpec,
    /// The VM's own directory; it exists and is empty.
    pub workdir: &'a Path,
}

/// What a backend needs to restore one VM from a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct RestoreRequest<'a> {
    pub id: &'a VmId,
    /// The snapshotted VM's spec (its rootfs is linked into the new directory).
    pub spec: &'a VmSpec,
    /// The VM's own directory; it exists and is empty.
    pub workdir: &'a Path,
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
}

/// The backend the daemon runs with, chosen from configuration.
#[derive(Debug, Clone)]
pub enum Backend {
    Firecracker(FirecrackerBackend),
    Fake(FakeBackend),
}

/// A machine of either backend.
#[derive(Debug)]
pub enum Machine {
    Firecracker(FirecrackerMachine),
    Fake(FakeMachine),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Firecracker(_) => "firecracker",
            Backend::Fake(_) => "fake",
        }
    }

    /// The VMM's version, as snapshots record it.
    pub fn vmm_version(&self) -> &str {
        match self {
            Backend::Firecracker(b) => &b.version,
            Backend::Fake(_) => fake::FAKE_VERSION,
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
        match self {
            Backend::Firecracker(b) => b.create(request, mark).await.map(Machine::Firecracker),
            Backend::Fake(b) => b.create(request, mark).await.map(Machine::Fake),
        }
    }

    async fn restore(
        &self,
        request: RestoreRequest<'_>,
        mark: &mut (dyn FnMut(BootPhase) + Send),
    ) -> Result<Machine, BackendError> {
        match self {
            Backend::Firecracker(b) => b.restore(request, mark).await.map(Machine::Firecracker),
            Backend::Fake(b) => b.restore(request, mark).await.map(Machine::Fake),
        }
    }

    async fn probe_guest(
        &self,
        id: &VmId,
        spec: &VmSpec,
        workdir: &Path,
    ) -> Result<(), BackendError> {
        match self {
            Backend::Firecracker(b) => b.probe_guest(id, spec, workdir).await,
            Backend::Fake(b) => b.probe_guest(id, spec, workdir).await,
        }
    }

    async fn adopt(&self, request: CreateRequest<'_>) -> Result<Machine, BackendError> {
        match self {
            Backend::Firecracker(b) => b.adopt(request).await.map(Machine::Firecracker),
            Backend::Fake(b) => b.adopt(request).await.map(Machine::Fake),
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $m:ident => $body:expr) => {
        match $self {
            Machine::Firecracker($m) => $body,
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
}
