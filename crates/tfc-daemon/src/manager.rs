//! The VM manager: resolves create requests into specs, keeps the table of VMs and
//! routes operations to each VM's owner.
//!
//! Invariants: every entry of the table has a directory `vms_dir/<id>`, created
//! before the entry is inserted and removed only after the entry is removed; once
//! `closing` is set (under the table's write lock) no entry is added.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tfc_api::{
    CreateSnapshotRequest, CreateVmRequest, PoolSlot, SnapshotInfo, SnapshotKind, StartInfo,
    StartStats, TemplateInfo, TemplateStatus, VmInfo, VmNetworkInfo,
};
use tfc_core::level::{self, StartFacts};
use tfc_core::limits::RateLimits;
use tfc_core::net::{NetConfig, NetMode};
use tfc_core::{
    spec, transition, BootPhase, OptimizationLevel, PoolTier, Readiness, SpecError, StartMethod,
    VmEvent, VmId, VmSpec, VmState, VmTypeName, Vmm,
};
use tfc_store::{AnyStore, MemoryStore, Store};

use crate::agent::{AgentAddress, LinkError, SessionEnd};
use crate::alerts::Monitor;
use crate::backend::{Backend, BackendError, RestoreRequest, VmBackend, VmMachine};
use crate::config::{AgentMode, Config, Image, PrewarmPriority, ShutdownPolicy};
use crate::metrics::Metrics;
use crate::network::{self, NetworkError, Networking};
use crate::pools::{self, Pools};
use crate::snapshots::{self, Catalog, CatalogError, HostFacts, NewSnapshot};
use crate::vm::{self, SnapshotJob, VmError, VmHandle, VmOp};
use tfc_agent_client::AgentConnection;

/// Why a manager request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("no VM with id {0}")]
    NotFound(String),
    #[error("invalid VM id: {0}")]
    BadId(#[source] tfc_core::IdError),
    #[error("unknown VM type {name:?}; configured types: {known}")]
    UnknownType { name: String, known: String },
    #[error("invalid VM spec")]
    BadSpec(#[source] SpecError),
    #[error("VM type {vm_type} has no {what}: set vm_types.{vm_type}.{what} or run `tfc assets build` ({reason})")]
    NoAsset {
        vm_type: String,
        what: &'static str,
        reason: String,
    },
    #[error("cannot delete VM {id}: it is {state}; stop it first or delete with force")]
    NotDeletable { id: VmId, state: VmState },
    #[error("cannot create the VM directory {path}")]
    Workdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unservable(String),
    #[error("cannot take a diff snapshot of VM {id}: {reason}")]
    NoDiff { id: String, reason: String },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("restoring the snapshot failed; nothing was left behind")]
    Restore(#[source] BackendError),
    #[error(
        "the restored VM's identity fix-up failed, so it was removed; nothing was left behind"
    )]
    Fixup(#[source] LinkError),
    #[error("VM {id} has no guest agent: {reason}")]
    NoAgent { id: String, reason: String },
    #[error("VM {id} is {state}: its guest does not run, so its agent cannot be reached{hint}", hint = not_running_hint(*.state, id))]
    GuestNotRunning { id: String, state: VmState },
    #[error("cannot reach the guest agent of VM {id}")]
    Agent {
        id: String,
        #[source]
        source: LinkError,
    },
    #[error("building the template of VM type {vm_type} failed: {reason}")]
    TemplateBuild { vm_type: String, reason: String },
    #[error("the state store refused the change")]
    Store(#[source] tfc_store::StoreError),
    #[error("cannot encode the VM record: {0}")]
    Record(String),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("VM {0} was not handed out by a pool; delete it instead")]
    NotPooled(String),
    /// The VM's VMM cannot do this at all (snapshots on qemu-tcg).
    #[error("cannot {action}")]
    Unsupported {
        action: String,
        #[source]
        source: BackendError,
    },
    /// The VMM the VM would run on is not usable on this host.
    #[error("cannot start the VM")]
    VmmUnavailable(#[source] BackendError),
    #[error("VM {id} waits in the pool of VM type {vm_type}; acquire one with `tfc pool acquire {vm_type}`")]
    WaitingInPool { id: String, vm_type: String },
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("no VM of type {vm_type} could be handed out within {wait_ms} ms: {reason}")]
    PoolExhausted {
        vm_type: String,
        wait_ms: u64,
        reason: String,
        /// When trying again is likely to succeed.
        retry_after_secs: u64,
    },
}

/// Extras of a boot: what the VM is for.
#[derive(Debug, Clone, Default)]
pub(crate) struct BootExtras {
    pub template_build: bool,
    pub pool: Option<PoolSlot>,
}

/// Whom a restore is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestoreFor {
    /// A caller of `POST /v1/vms`: the VM is ready and theirs.
    Caller,
    /// A pool's tier: a running VM waits (`running`), a paused one (`hot`),
    /// at the pool's CPU priority until it is handed out.
    Pool(PoolTier, PrewarmPriority),
    /// A caller of acquire (asked at the instant given), served by this
    /// tier: the VM is theirs, recorded as handed out.
    Acquire(PoolTier, Instant),
}

impl RestoreFor {
    fn slot(self) -> Option<PoolSlot> {
        match self {
            RestoreFor::Caller => None,
            RestoreFor::Pool(tier, _) => Some(PoolSlot {
                tier,
                acquired_at_ms: None,
                acquire_us: None,
            }),
            RestoreFor::Acquire(tier, _) => Some(PoolSlot {
                tier,
                acquired_at_ms: Some(vm::now_ms()),
                acquire_us: None,
            }),
        }
    }
}

/// The daemon's table of VMs.
#[derive(Debug, Clone)]
pub struct VmManager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: Backend,
    config: Config,
    data_dir: PathBuf,
    store: Arc<AnyStore>,
    vms: RwLock<Table>,
    catalog: Catalog,
    host: HostFacts,
    templates: std::sync::Mutex<HashMap<String, TemplateBuild>>,
    /// Request-to-Ready times of deleted VMs, per (VM type, method); the live
    /// ones are read from the table.
    start_history: std::sync::Mutex<Vec<(String, StartMethod, f64)>>,
    pools: Pools,
    pools_started: std::sync::atomic::AtomicBool,
    /// Boots the daemon starts on its own (template builds, a pool's cold
    /// tier) take one of these: about one booting VM per core is what a host
    /// carries.
    boot_slots: tokio::sync::Semaphore,
    /// Per-VM networking, once enabled ([`VmManager::enable_network`]).
    net: std::sync::OnceLock<Arc<Networking>>,
    metrics: Metrics,
    monitor: Arc<Monitor>,
}

/// The template builds of one VM type.
#[derive(Debug, Default)]
struct TemplateBuild {
    /// Held by the build under way.
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Builds under way or queued on `lock`.
    building: usize,
    /// The last failure and the inputs digest it failed with: a stale template
    /// is not rebuilt automatically again for the same inputs.
    failure: Option<(String, String)>,
}

/// Why a template no longer matches its VM type, and the type's current
/// inputs digest (`None` when an input cannot be read).
#[derive(Debug)]
struct Stale {
    reason: String,
    inputs: Option<String>,
}

/// Most start times kept per manager for deleted VMs.
const START_HISTORY_LIMIT: usize = 10_000;

#[derive(Debug, Default)]
struct Table {
    vms: HashMap<VmId, VmHandle>,
    /// Set by `shutdown`; refuses new VMs.
    closing: bool,
}

/// Directory holding one subdirectory per VM.
pub fn vms_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("vms")
}

fn random_id() -> VmId {
    let mut bytes = [0u8; 6];
    // The kernel's RNG does not fail once booted; a zero id would still be unique
    // enough to be caught by the collision check below.
    let _ = getrandom::getrandom(&mut bytes);
    VmId::from_random(bytes)
}

impl VmManager {
    pub fn new(backend: Backend, config: Config, data_dir: PathBuf, store: AnyStore) -> Self {
        let store = Arc::new(store);
        let host = HostFacts {
            vmm_version: backend.vmm_version().to_owned(),
            cpu: match tfc_host::cpu::read() {
                Ok(cpu) => Some(cpu),
                Err(err) => {
                    tracing::warn!(%err, "cannot identify this host's CPU; snapshots cannot be taken or restored");
                    None
                }
            },
        };
        Self {
            inner: Arc::new(Inner {
                catalog: Catalog::new(&data_dir, store.clone()),
                backend,
                data_dir,
                store,
                vms: RwLock::new(Table::default()),
                host,
                templates: Default::default(),
                start_history: Default::default(),
                pools: Pools::new(&config),
                pools_started: Default::default(),
                boot_slots: tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(1, |n| n.get()),
                ),
                net: std::sync::OnceLock::new(),
                metrics: Metrics::default(),
                monitor: Arc::new(Monitor::new(
                    config.alerts.clone(),
                    config
                        .vm_types
                        .iter()
                        .filter(|(_, t)| t.targets != crate::alerts::Targets::default())
                        .map(|(name, t)| (name.clone(), t.targets))
                        .collect(),
                )),
                config,
            }),
        }
    }

    /// A manager with an in-memory store (tests, demos, benchmarks).
    pub fn in_memory(backend: Backend, config: Config, data_dir: PathBuf) -> Self {
        Self::new(
            backend,
            config,
            data_dir,
            AnyStore::Memory(MemoryStore::new()),
        )
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn monitor(&self) -> &Arc<Monitor> {
        &self.inner.monitor
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    pub fn store(&self) -> &AnyStore {
        &self.inner.store
    }

    pub fn backend_name(&self) -> &'static str {
        self.inner.backend.name()
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    fn handle(&self, id: &str) -> Result<VmHandle, ManagerError> {
        let id = VmId::new(id).map_err(ManagerError::BadId)?;
        self.inner
            .vms
            .read()
            .expect("vm table lock")
            .vms
            .get(&id)
            .cloned()
            .ok_or_else(|| ManagerError::NotFound(id.to_string()))
    }

    pub(crate) fn handle_of(&self, id: &str) -> Result<VmHandle, ManagerError> {
        self.handle(id)
    }

    /// Hands a ready or paused VM to a caller (see [`VmHandle::allocate`]).
    pub(crate) async fn op_allocate(
        &self,
        id: &str,
        requested_at: Instant,
    ) -> Result<VmInfo, ManagerError> {
        Ok(self.handle(id)?.allocate(requested_at).await?)
    }

    /// Merges the VM type with the request's overrides into a validated spec.
    pub fn resolve_spec(&self, request: &CreateVmRequest) -> Result<VmSpec, ManagerError> {
        let config = &self.inner.config;
        let type_name = request
            .vm_type
            .clone()
            .unwrap_or_else(|| config.daemon.default_vm_type.clone());
        let vm_type = config
            .vm_types
            .get(&type_name)
            .ok_or_else(|| ManagerError::UnknownType {
                name: type_name.clone(),
                known: config
                    .vm_types
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let vmm = request.backend.unwrap_or_else(|| config.vmm_of(vm_type));
        let assets = match (&vm_type.kernel, &vm_type.rootfs, &vm_type.boot_args) {
            (Some(_), Some(_), Some(_)) => None,
            _ => Some(tfc_host::assets::load_manifest(&self.inner.data_dir)),
        };
        let from_assets = |what: &'static str,
                           pick: &dyn Fn(&tfc_host::assets::Manifest) -> String|
         -> Result<String, ManagerError> {
            match &assets {
                Some(Ok(manifest)) => Ok(pick(manifest)),
                // The fake never reads kernel or rootfs; it needs no built assets.
                Some(Err(_)) if matches!(self.inner.backend, Backend::Fake(_)) => Ok(match what {
                    "boot_args" => "console=ttyS0".to_owned(),
                    _ => format!("/nonexistent/fake-{what}"),
                }),
                Some(Err(err)) => Err(ManagerError::NoAsset {
                    vm_type: type_name.clone(),
                    what,
                    reason: tfc_core::error_chain(err),
                }),
                None => unreachable!("assets are loaded whenever a field is missing"),
            }
        };
        // QEMU boots the kernel's bzImage; Firecracker its ELF vmlinux.
        let kernel = match &vm_type.kernel {
            Some(path) => path.clone(),
            None => from_assets("kernel", &|m| match vmm {
                Vmm::Firecracker => m.kernel.vmlinux.display().to_string(),
                Vmm::QemuTcg => m.kernel.bzimage.display().to_string(),
            })?
            .into(),
        };
        let rootfs = match (&vm_type.rootfs, vm_type.image) {
            (Some(path), _) => path.clone(),
            (None, Image::Busybox) => {
                from_assets("rootfs", &|m| m.rootfs.path.display().to_string())?.into()
            }
            (None, Image::Debian) => {
                let path = from_assets("rootfs", &|m| {
                    m.debian
                        .as_ref()
                        .map(|d| d.path.display().to_string())
                        .unwrap_or_default()
                })?;
                if path.is_empty() {
                    return Err(ManagerError::NoAsset {
                        vm_type: type_name.clone(),
                        what: "rootfs",
                        reason: "the type's image is debian, which is not built: run `tfc assets build --debian`".to_owned(),
                    });
                }
                path.into()
            }
        };
        let mut boot_args = match &vm_type.boot_args {
            Some(args) => args.clone(),
            None => from_assets("boot_args", &|m| m.boot_args.clone())?,
        };
        let profile = || match &assets {
            Some(Ok(manifest)) => manifest.profile,
            _ => match tfc_host::assets::load_manifest(&self.inner.data_dir) {
                Ok(manifest) => manifest.profile,
                // No assets to say: the host's own KVM does.
                Err(_) => tfc_host::kvm::detect().kind.recommended_profile(),
            },
        };
        // A type whose own boot arguments start another init runs that init:
        // `auto` leaves the agent off there (`on` trusts that init to start it).
        let own_init = vm_type.boot_args.as_deref().is_some_and(starts_other_init);
        let mode = match vm_type.agent {
            AgentMode::Auto if own_init => AgentMode::Off,
            mode => mode,
        };
        let agent_port =
            agent_wanted(mode, vmm, &self.inner.backend, profile).then_some(vm_type.agent_port);
        if let Some(port) = agent_port {
            boot_args = agent_boot_args(&boot_args, vm_type.boot_args.is_some(), port);
        }
        let network = request.network.clone().unwrap_or_else(|| NetConfig {
            mode: vm_type.network,
            ..NetConfig::default()
        });
        let network = (network.mode != NetMode::None).then_some(network);
        if network.is_some() {
            if self.inner.net.get().is_none() {
                return Err(NetworkError::Disabled.into());
            }
            // The kernel configures eth0 itself: no guest userspace needed,
            // and the agent leaves a configured eth0 alone.
            boot_args.push(' ');
            boot_args.push_str(&tfc_core::net::guest::kernel_ip_arg());
        }
        if let Some(extra) = &request.extra_boot_args {
            spec::validate_boot_args(extra).map_err(ManagerError::BadSpec)?;
            // Appended last, they would win: the VM would boot without the
            // agent its readiness waits for.
            let overrides_agent = extra
                .split_whitespace()
                .any(|w| w.starts_with("init=") || w.starts_with("tfc.agent_port="));
            if agent_port.is_some() && overrides_agent {
                return Err(ManagerError::BadRequest(format!(
                    "extra_boot_args may not set init= or tfc.agent_port= on a VM of type {type_name}, whose init is the guest agent; to boot another init, use a VM type with agent = \"off\" and init= in its boot_args"
                )));
            }
            if !extra.trim().is_empty() {
                boot_args.push(' ');
                boot_args.push_str(extra.trim());
            }
        }
        let spec = VmSpec {
            vm_type: VmTypeName::new(type_name.as_str()).map_err(ManagerError::BadId)?,
            vcpus: request.vcpus.unwrap_or(vm_type.vcpus),
            memory_mib: request.memory_mib.unwrap_or(vm_type.memory_mib),
            kernel,
            rootfs,
            boot_args,
            readiness: match agent_port {
                Some(port) => Readiness::Agent { port },
                None => Readiness::ConsoleLine {
                    contains: vm_type.readiness_line.clone(),
                },
            },
            diff_snapshots: vm_type.diff_snapshots,
            vsock: true,
            vmm,
            network,
            rate_limits: {
                let update = request.rate_limits.unwrap_or_default();
                update
                    .validate()
                    .map_err(|e| ManagerError::BadSpec(SpecError::RateLimits(e)))?;
                vm_type.rate_limits.merged(&update)
            },
        };
        spec.validate().map_err(ManagerError::BadSpec)?;
        Ok(spec)
    }

    /// Creates a VM by the requested optimization level (or restores the named
    /// snapshot) and starts its owner. A boot with `wait` returns once the VM is
    /// Ready or terminal (or the wait times out, returning the VM as it is
    /// then); a restore returns once the VM runs, or fails leaving nothing.
    pub async fn create(&self, request: CreateVmRequest) -> Result<VmInfo, ManagerError> {
        // On its own task: a caller that goes away (a closed connection) does
        // not cut a restore short between its steps.
        let manager = self.clone();
        let task = tokio::spawn(async move { manager.create_now(request, false).await });
        // A pooled VM (`instant`) whose caller went away belongs to nobody.
        let manager = self.clone();
        claim(task, move |created| {
            if let Ok(vm) = created {
                if vm.pool.is_some() {
                    manager.release_unclaimed(vm.id);
                }
            }
        })
        .await
    }

    /// `template_build` marks a VM that only exists to build its type's
    /// template.
    async fn create_now(
        &self,
        request: CreateVmRequest,
        template_build: bool,
    ) -> Result<VmInfo, ManagerError> {
        let requested_at = Instant::now();
        let level = request.optimization_level.unwrap_or_default();
        if let Some(snapshot) = &request.from_snapshot {
            if request.vm_type.is_some()
                || request.vcpus.is_some()
                || request.memory_mib.is_some()
                || request.extra_boot_args.is_some()
                || request.network.is_some()
            {
                return Err(ManagerError::BadRequest(
                    "from_snapshot restores the snapshot's VM type, machine size and network; vm_type, vcpus, memory_mib, extra_boot_args and network may not be given with it".to_owned(),
                ));
            }
            if let Some(vmm) = request.backend.filter(|v| !v.takes_snapshots()) {
                return Err(no_snapshots(
                    vmm,
                    format!("restore snapshot {snapshot} on {vmm}"),
                    "snapshot restores",
                ));
            }
            let start = StartInfo {
                level: request
                    .optimization_level
                    .unwrap_or(OptimizationLevel::UltraFast),
                method: StartMethod::Restore,
                snapshot: None,
                note: None,
            };
            return self
                .restore(snapshot, start, requested_at, RestoreFor::Caller)
                .await;
        }
        let type_name = self.type_name(&request);
        let type_vmm = self.type_vmm(&type_name);
        let vmm = request.backend.or(type_vmm).unwrap_or(Vmm::Firecracker);
        let facts = self.start_facts(&type_name, level, vmm).await;
        let mut choice = level::choose(level, &facts).map_err(|e| ManagerError::Unservable(e.0))?;
        if choice.method == StartMethod::ColdBoot
            && level == OptimizationLevel::UltraFast
            && !vmm.takes_snapshots()
        {
            choice.note = Some(format!(
                "the {vmm} backend takes no snapshots, so there is no golden snapshot to restore; cold boot instead"
            ));
        }
        let start = StartInfo {
            level,
            method: choice.method,
            snapshot: None,
            note: choice.note,
        };
        match choice.method {
            StartMethod::Restore => {
                let template = self.inner.catalog.template(&type_name).ok_or_else(|| {
                    ManagerError::Unservable(format!("VM type {type_name} has no template"))
                })?;
                if request.vcpus.is_some()
                    || request.memory_mib.is_some()
                    || request.extra_boot_args.is_some()
                    || request.network.is_some()
                {
                    return Err(ManagerError::BadRequest(format!(
                        "{level} restores the template of VM type {type_name} as it was built; vcpus, memory_mib, extra_boot_args and network cannot change it"
                    )));
                }
                self.restore(&template.id, start, requested_at, RestoreFor::Caller)
                    .await
            }
            StartMethod::ColdBoot | StartMethod::TunedBoot => {
                let mut spec = self.resolve_spec(&request)?;
                if choice.method == StartMethod::TunedBoot {
                    spec.boot_args.push(' ');
                    spec.boot_args.push_str(level::FAST_BOOT_ARGS);
                    // The agent talks over vsock: only a VM without one
                    // saves the device.
                    spec.vsock = spec.readiness.agent_port().is_some();
                    spec.diff_snapshots = false;
                    spec.validate().map_err(ManagerError::BadSpec)?;
                }
                let extras = BootExtras {
                    template_build,
                    pool: None,
                };
                self.boot(&request, spec, start, requested_at, extras).await
            }
            StartMethod::Pool => {
                if request.backend.is_some() && request.backend != type_vmm {
                    return Err(ManagerError::BadRequest(format!(
                        "{level} hands out a pooled VM of type {type_name}, which runs on {}; omit backend or ask for that one",
                        type_vmm.unwrap_or_default()
                    )));
                }
                if request.vcpus.is_some()
                    || request.memory_mib.is_some()
                    || request.extra_boot_args.is_some()
                    || request.network.is_some()
                {
                    return Err(ManagerError::BadRequest(format!(
                        "{level} hands out a pooled VM of type {type_name} as it was prewarmed; vcpus, memory_mib, extra_boot_args and network cannot change it"
                    )));
                }
                let (vm, _, _) =
                    pools::acquire(self, &type_name, request.wait_timeout_ms, requested_at).await?;
                Ok(vm)
            }
        }
    }

    fn type_name(&self, request: &CreateVmRequest) -> String {
        request
            .vm_type
            .clone()
            .unwrap_or_else(|| self.inner.config.daemon.default_vm_type.clone())
    }

    /// The VMM of VM type `type_name`, when there is such a type.
    fn type_vmm(&self, type_name: &str) -> Option<Vmm> {
        let config = &self.inner.config;
        config.vm_types.get(type_name).map(|t| config.vmm_of(t))
    }

    /// A new, empty VM directory with a fresh id.
    fn new_workdir(&self) -> Result<(VmId, PathBuf), ManagerError> {
        let vms_dir = vms_dir(&self.inner.data_dir);
        loop {
            let id = random_id();
            let workdir = vms_dir.join(id.as_str());
            snapshots::private_dir(&vms_dir).map_err(|source| ManagerError::Workdir {
                path: vms_dir.clone(),
                source,
            })?;
            match std::fs::create_dir(&workdir) {
                Ok(()) => return Ok((id, workdir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(ManagerError::Workdir {
                        path: workdir,
                        source,
                    })
                }
            }
        }
    }

    /// Boots a VM: its owner creates, boots and watches it.
    pub(crate) async fn boot(
        &self,
        request: &CreateVmRequest,
        spec: VmSpec,
        start: StartInfo,
        requested_at: Instant,
        extras: BootExtras,
    ) -> Result<VmInfo, ManagerError> {
        self.inner
            .backend
            .check_available(spec.vmm)
            .map_err(ManagerError::VmmUnavailable)?;
        let (id, workdir) = self.new_workdir()?;
        // The intent is stored before anything is started: a daemon that dies
        // from here on finds a `creating` record and rolls it back.
        let mut record = vm::new_record(&id, &spec, &workdir, start);
        record.template_build = extras.template_build;
        record.pool = extras.pool;
        if let Err(err) = self.write_row(&record).await {
            let _ = std::fs::remove_dir(&workdir);
            return Err(err);
        }
        crate::crash::point("create.after_intent");
        if let Some(config) = &spec.network {
            match self.attach_network(&id, config).await {
                Ok(network) => record.network = Some(network),
                Err(err) => {
                    let _ = std::fs::remove_dir(&workdir);
                    let key = id.clone();
                    let _ = vm::with_store(&self.inner.store, move |s| s.delete_vm(&key)).await;
                    return Err(err);
                }
            }
        }
        let handle = {
            let mut table = self.inner.vms.write().expect("vm table lock");
            if table.closing {
                drop(table);
                let _ = std::fs::remove_dir(&workdir);
                self.detach_network_later(&id);
                let _ = self.inner.store.delete_vm(&id);
                return Err(ManagerError::ShuttingDown);
            }
            tracing::info!(vm = %id, vm_type = %spec.vm_type, "creating VM");
            let handle = vm::spawn(
                record,
                self.inner.backend.clone(),
                requested_at,
                self.inner.store.clone(),
                self.boot_timeout(spec.vmm),
            );
            table.vms.insert(id, handle.clone());
            handle
        };
        self.watch_network(&handle);
        self.watch_vm(&handle, true);
        if !request.wait {
            return Ok(handle.info());
        }
        let timeout = request.wait_timeout_ms.map_or_else(
            || self.inner.config.boot_timeout(spec.vmm) + Duration::from_secs(10),
            Duration::from_millis,
        );
        Ok(handle
            .wait_until(timeout, |r| {
                r.state == VmState::Ready || r.state.is_terminal()
            })
            .await)
    }

    /// Restores a VM from `snapshot`: checked against this host, loaded into a
    /// new VMM in its own directory, resumed. The VM is recorded `creating`
    /// first, so a daemon that dies mid-restore rolls it back; a restore that
    /// fails removes everything it made before answering.
    pub(crate) async fn restore(
        &self,
        snapshot: &str,
        mut start: StartInfo,
        requested_at: Instant,
        purpose: RestoreFor,
    ) -> Result<VmInfo, ManagerError> {
        // Held until the VM runs: the snapshot cannot be deleted under it.
        let (snapshot, _in_use) = self.inner.catalog.use_snapshot(snapshot)?;
        if let Some(vmm) = snapshot
            .manifest
            .as_ref()
            .map(|m| m.spec.vmm)
            .filter(|v| !v.takes_snapshots())
        {
            return Err(no_snapshots(
                vmm,
                format!("restore snapshot {}, which is of a {vmm} VM", snapshot.id),
                "snapshot restores",
            ));
        }
        if let Some(manifest) = &snapshot.manifest {
            self.inner
                .backend
                .check_available(manifest.spec.vmm)
                .map_err(ManagerError::VmmUnavailable)?;
        }
        start.snapshot = Some(snapshot.id.clone());
        // Digests read files (cached after the first time): off the async threads.
        let (manager, checked) = (self.clone(), snapshot.clone());
        tokio::task::spawn_blocking(move || {
            manager.inner.catalog.verify(&checked, &manager.inner.host)
        })
        .await
        .expect("verify does not panic")?;
        let memory = self.inner.catalog.memory_for_restore(&snapshot).await?;
        let manifest = snapshot
            .manifest
            .clone()
            .expect("verified snapshots have manifests");
        let spec = manifest.spec;
        if self.inner.vms.read().expect("vm table lock").closing {
            return Err(ManagerError::ShuttingDown);
        }
        let (id, workdir) = self.new_workdir()?;
        // The directory is this restore's intent: the VMM writes its process
        // record into it right after spawning, and a daemon that dies before
        // the VM's row exists finds an unclaimed directory at start and ends
        // the VMM in it. (A row here would cost a store write per restore.)
        let mut record = vm::new_record(&id, &spec, &workdir, start);
        record.pool = purpose.slot();
        // The clone's network: its own namespace, with the tap and guest
        // addresses its snapshot names. Recorded under the VM's id before it
        // is made, so a daemon that dies from here on tears it down at start.
        if let Some(config) = &spec.network {
            match self.attach_network(&id, config).await {
                Ok(network) => record.network = Some(network),
                Err(err) => {
                    let _ = std::fs::remove_dir_all(&workdir);
                    return Err(err);
                }
            }
        }
        let state_file = PathBuf::from(&snapshot.dir).join(&manifest.state_file);
        let mut phases = Vec::new();
        let mut mark = |phase| phases.push((phase, requested_at.elapsed().as_micros() as u64));
        let started = self
            .inner
            .backend
            .restore(
                RestoreRequest {
                    id: &id,
                    spec: &spec,
                    workdir: &workdir,
                    netns: record.network.as_ref().map(network::netns_path),
                    background: matches!(purpose, RestoreFor::Pool(_, PrewarmPriority::Idle)),
                },
                &mut mark,
            )
            .await;
        // Row first, checked: a directory left behind is reaped at start, a
        // row left behind would name a VM that is gone.
        let undo = async |manager: &Self| {
            let key = id.clone();
            manager.detach_network(&id).await;
            match vm::with_store(&manager.inner.store, move |s| s.delete_vm(&key)).await {
                Ok(_) => {
                    let _ = std::fs::remove_dir_all(&workdir);
                }
                Err(err) => {
                    tracing::error!(vm = %id, error = %tfc_core::error_chain(&err), "cannot remove the record of a failed restore; the next start accounts for it");
                }
            }
        };
        let machine = match started {
            Ok(machine) => machine,
            Err(err) => {
                undo(self).await;
                tracing::warn!(snapshot = %snapshot.id, error = %tfc_core::error_chain(&err), "restore failed");
                return Err(ManagerError::Restore(err));
            }
        };
        crate::crash::point("restore.after_spawn");
        for (phase, at) in phases {
            record.timeline.mark(phase, at);
        }
        let resume = !matches!(purpose, RestoreFor::Pool(PoolTier::Hot, _));
        record.state = if resume {
            transition(record.state, VmEvent::Restored).expect("creating may restore")
        } else {
            transition(record.state, VmEvent::RestoredPaused).expect("creating may restore")
        };
        if let RestoreFor::Acquire(..) = purpose {
            // Handed out as it is made: stored as the caller's from the start.
            for event in [VmEvent::Allocate, VmEvent::Allocated] {
                record.state =
                    transition(record.state, event).expect("a restored VM may be handed out");
            }
        }
        record.pid = machine.pid();
        record.updated_at_ms = vm::now_ms();
        // The record is stored while the VMM loads the snapshot and resumes
        // the guest (one call), and the caller is answered only once both are
        // done. A daemon that dies before the row exists leaves an unclaimed
        // directory (its VMM is ended at start); one that dies after it finds
        // the VM recorded ready and, at re-adoption, checks that its guest
        // runs (a load that never finished fails the VM).
        let (stored, loaded) = tokio::join!(
            async {
                self.write_row(&record).await?;
                crate::crash::point("restore.after_record");
                Ok(())
            },
            machine.load_snapshot(&state_file, &memory, spec.diff_snapshots, resume)
        );
        let failed = match (stored, loaded) {
            (Ok(()), Ok(())) => None,
            (Err(err), _) => Some(err),
            (Ok(()), Err(err)) => Some(ManagerError::Restore(err)),
        };
        if let Some(err) = failed {
            machine.stop().await;
            undo(self).await;
            tracing::warn!(snapshot = %snapshot.id, error = %tfc_core::error_chain(&err), "restore failed");
            return Err(err);
        }
        let at = requested_at.elapsed().as_micros() as u64;
        record.timeline.mark(BootPhase::SnapshotLoaded, at);
        // A VM for a caller gets its own clock and randomness before anyone
        // sees it; one that waits in a pool gets them at its hand-over.
        let mut agent = None;
        if let (Some(port), RestoreFor::Caller | RestoreFor::Acquire(..)) =
            (spec.readiness.agent_port(), purpose)
        {
            match AgentAddress::new(&workdir, port).fix_identity().await {
                Ok((connection, fixup)) => {
                    record.identity_fixup = Some(fixup);
                    agent = Some(connection);
                }
                Err(err) => {
                    machine.stop().await;
                    undo(self).await;
                    let err = ManagerError::Fixup(err);
                    tracing::warn!(snapshot = %snapshot.id, error = %tfc_core::error_chain(&err), "restore failed");
                    return Err(err);
                }
            }
        }
        let at = requested_at.elapsed().as_micros() as u64;
        record.timeline.mark(BootPhase::Ready, at);
        if let (Some(slot), RestoreFor::Acquire(_, asked)) = (record.pool.as_mut(), purpose) {
            slot.acquire_us = Some(asked.elapsed().as_micros() as u64);
        }
        // A shutdown that began during the restore gets the machine back: the
        // caller gets nothing, so nothing stays.
        let refused = {
            let mut table = self.inner.vms.write().expect("vm table lock");
            if table.closing {
                Some(machine)
            } else {
                let handle =
                    vm::spawn_running(record.clone(), machine, self.inner.store.clone(), agent);
                self.watch_network(&handle);
                self.watch_vm(&handle, true);
                table.vms.insert(id.clone(), handle);
                None
            }
        };
        if let Some(machine) = refused {
            machine.stop().await;
            undo(self).await;
            return Err(ManagerError::ShuttingDown);
        }
        tracing::info!(vm = %id, snapshot = %snapshot.id, us = requested_at.elapsed().as_micros() as u64, "VM restored");
        Ok(record)
    }

    /// Releases a VM handed out by a pool: it is stopped and removed (a used
    /// VM is never handed to anyone else); the pool has already started its
    /// replacement.
    pub async fn release(&self, id: &str) -> Result<(), ManagerError> {
        let vm = self.get(id)?;
        if vm.pool.as_ref().is_none_or(|s| s.acquired_at_ms.is_none()) {
            return Err(ManagerError::NotPooled(vm.id));
        }
        self.delete(id, true).await?;
        self.inner.pools.wake(vm.spec.vm_type.as_str());
        Ok(())
    }

    /// The pools of every VM type.
    pub fn pools(&self) -> &Pools {
        &self.inner.pools
    }

    /// Starts the pools' tasks (refill, health checks, autoscaling); once,
    /// after `recover`. Until then pools hold no VMs and acquires fall back
    /// to the warm and cold tiers.
    pub fn start_pools(&self) {
        if !self
            .inner
            .pools_started
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            self.inner.pools.start(self);
        }
    }

    /// Hands out a VM of `vm_type` from its pool (see [`pools::acquire`]).
    pub async fn acquire(
        &self,
        vm_type: &str,
        wait_ms: Option<u64>,
    ) -> Result<tfc_api::AcquireResponse, ManagerError> {
        let requested_at = Instant::now();
        // On its own task: a caller that goes away does not cut it short.
        let manager = self.clone();
        let pool_type = vm_type.to_owned();
        let vm_type = vm_type.to_owned();
        let task =
            tokio::spawn(
                async move { pools::acquire(&manager, &vm_type, wait_ms, requested_at).await },
            );
        // A VM handed out after its caller went away belongs to nobody.
        let manager = self.clone();
        let acquired = claim(task, move |acquired| {
            if let Ok((vm, _, _)) = acquired {
                manager.release_unclaimed(vm.id);
            }
        })
        .await;
        let (vm, tier, acquire_us) = match acquired {
            Ok(served) => served,
            Err(err) => {
                if matches!(err, ManagerError::PoolExhausted { .. }) {
                    self.inner.monitor.unserved(&pool_type);
                }
                return Err(err);
            }
        };
        self.inner
            .metrics
            .acquired(&pool_type, tier.as_str(), acquire_us);
        let hit = matches!(tier, PoolTier::Running | PoolTier::Hot);
        self.inner
            .monitor
            .acquired(&pool_type, acquire_us as f64 / 1000.0, hit);
        Ok(tfc_api::AcquireResponse {
            vm,
            tier,
            acquire_us,
        })
    }

    /// Releases a VM handed out to a caller that went away before the
    /// answer (in the background).
    fn release_unclaimed(&self, id: String) {
        tracing::warn!(vm = %id, "the caller went away before its VM was handed out; releasing it");
        let manager = self.clone();
        tokio::spawn(async move {
            if let Err(err) = manager.release(&id).await {
                tracing::warn!(vm = %id, error = %tfc_core::error_chain(&err), "cannot release an unclaimed VM");
            }
        });
    }

    /// How long a booting VM's agent may take to answer, on `vmm`.
    fn boot_timeout(&self, vmm: tfc_core::Vmm) -> Duration {
        self.inner.config.boot_timeout(vmm)
    }

    /// The connection to VM `id`'s guest agent, and the end of the session
    /// it belongs to (the guest pausing or stopping), for a call into the
    /// guest. Allowed in `ready` and `running`, for a VM whose readiness is
    /// the agent and that no pool holds.
    pub async fn agent(&self, id: &str) -> Result<(AgentConnection, SessionEnd), ManagerError> {
        let handle = self.handle(id)?;
        let info = handle.info();
        refuse_waiting(&info)?;
        let not_running = |state| ManagerError::GuestNotRunning {
            id: info.id.clone(),
            state,
        };
        let Some(link) = handle.agent() else {
            return Err(ManagerError::NoAgent {
                id: info.id.clone(),
                reason: self.why_no_agent(&info.spec),
            });
        };
        if !matches!(info.state, VmState::Ready | VmState::Running) {
            return Err(not_running(info.state));
        }
        link.connection().await.map_err(|err| match err {
            LinkError::Ended => not_running(handle.info().state),
            source => ManagerError::Agent {
                id: info.id.clone(),
                source,
            },
        })
    }

    /// Why VMs of `spec` have no agent, and what to do about it.
    fn why_no_agent(&self, spec: &VmSpec) -> String {
        let type_name = spec.vm_type.as_str();
        let mode = self.inner.config.vm_types.get(type_name).map(|t| t.agent);
        match mode {
            Some(AgentMode::Off) => format!(
                "VM type {type_name} has agent = \"off\"; set vm_types.{type_name}.agent = \"on\" (its root filesystem must hold {}) and create a new VM",
                spec::AGENT_INIT
            ),
            _ if matches!(self.inner.backend, Backend::Fake(_)) => format!(
                "the fake backend runs no guest; set vm_types.{type_name}.agent = \"on\" and fake.agent to a tfc-agent binary to try the agent paths"
            ),
            _ => match spec.vmm {
                tfc_core::Vmm::Firecracker => "guest userspace cannot run under Firecracker on this host (its assets are for a nested host); create the VM with --backend qemu-tcg".to_owned(),
                tfc_core::Vmm::QemuTcg => format!(
                    "it was created without one; create a new VM of type {type_name}"
                ),
            },
        }
    }

    /// See [`VmBackend::probe_guest`].
    pub(crate) async fn probe_guest(
        &self,
        id: &VmId,
        spec: &VmSpec,
        workdir: &Path,
    ) -> Result<(), BackendError> {
        self.inner.backend.probe_guest(id, spec, workdir).await
    }

    pub(crate) fn boot_slots(&self) -> &tokio::sync::Semaphore {
        &self.inner.boot_slots
    }

    /// The ready template a pool of `type_name` restores from, or why there
    /// is none now. A missing or stale template is (re)built in the
    /// background unless the last build with the same inputs failed.
    pub(crate) async fn pool_template(&self, type_name: &str) -> Result<String, String> {
        if let Some(vmm) = self.type_vmm(type_name).filter(|v| !v.takes_snapshots()) {
            return Err(format!(
                "VM type {type_name} runs on {vmm}, which takes no snapshots, so it has no template"
            ));
        }
        let stale = match self.inner.catalog.template(type_name) {
            Some(template) => match self.template_check(type_name, &template).await {
                Ok(()) => return Ok(template.id),
                Err(stale) => stale,
            },
            None => Stale {
                reason: "there is no template yet".to_owned(),
                inputs: self.template_inputs(type_name).await.ok(),
            },
        };
        self.rebuild_if_due(type_name, &stale);
        let templates = self.inner.templates.lock().expect("templates lock");
        let entry = templates.get(type_name);
        Err(match entry {
            Some(t) if t.building > 0 => format!("{}; building one", stale.reason),
            Some(TemplateBuild {
                failure: Some((_, failure)),
                ..
            }) => format!("{}; building one failed: {failure}", stale.reason),
            _ => stale.reason,
        })
    }

    /// What decides how a VM of `type_name` is started at each level.
    /// For a VM on `vmm`: a template is of the type's own VMM, and only one
    /// that takes snapshots has any.
    async fn start_facts(&self, type_name: &str, level: OptimizationLevel, vmm: Vmm) -> StartFacts {
        // Only levels that may restore look at (and may start rebuilding) the
        // template.
        let may_restore = matches!(
            level,
            OptimizationLevel::UltraFast | OptimizationLevel::Sub2Second
        ) && vmm.takes_snapshots()
            && self.type_vmm(type_name) == Some(vmm);
        let template = if may_restore {
            self.inner.catalog.template(type_name)
        } else {
            None
        };
        let template_ready = match template {
            Some(template) => match self.template_check(type_name, &template).await {
                Ok(()) => true,
                Err(stale) => {
                    self.rebuild_if_due(type_name, &stale);
                    false
                }
            },
            None => false,
        };
        let measured_ms = self
            .start_stats(type_name)
            .into_iter()
            .map(|s| (s.method, s.median_ms))
            .collect();
        StartFacts {
            template_ready,
            pool_available: self.inner.pools.contains(type_name),
            measured_ms,
        }
    }

    /// Request-to-Ready times measured for VMs of `type_name`, per method.
    pub fn start_stats(&self, type_name: &str) -> Vec<StartStats> {
        let mut samples: HashMap<StartMethod, Vec<f64>> = HashMap::new();
        for (t, method, ms) in self
            .inner
            .start_history
            .lock()
            .expect("history lock")
            .iter()
        {
            if t == type_name {
                samples.entry(*method).or_default().push(*ms);
            }
        }
        for vm in self.list() {
            // A pooled VM's start was a prewarm nobody waited for; acquire
            // times are the pool's statistics.
            if vm.spec.vm_type.as_str() != type_name || vm.start.method == StartMethod::Pool {
                continue;
            }
            if let Some(us) = vm.timeline.at(BootPhase::Ready) {
                samples
                    .entry(vm.start.method)
                    .or_default()
                    .push(us as f64 / 1000.0);
            }
        }
        let mut stats: Vec<StartStats> = samples
            .into_iter()
            .map(|(method, mut ms)| {
                ms.sort_by(f64::total_cmp);
                let n = ms.len();
                let median = if n % 2 == 1 {
                    ms[n / 2]
                } else {
                    (ms[n / 2 - 1] + ms[n / 2]) / 2.0
                };
                StartStats {
                    method,
                    count: n as u64,
                    min_ms: ms[0],
                    median_ms: median,
                    max_ms: ms[n - 1],
                }
            })
            .collect();
        stats.sort_by_key(|s| s.method.as_str());
        stats
    }

    /// The handles of every VM in the table, in no order.
    fn handles(&self) -> Vec<VmHandle> {
        self.inner
            .vms
            .read()
            .expect("vm table lock")
            .vms
            .values()
            .cloned()
            .collect()
    }

    /// Every VM, oldest first.
    pub fn list(&self) -> Vec<VmInfo> {
        let mut vms: Vec<VmInfo> = self.handles().iter().map(VmHandle::info).collect();
        vms.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        vms
    }

    pub fn count(&self) -> usize {
        self.inner.vms.read().expect("vm table lock").vms.len()
    }

    pub fn get(&self, id: &str) -> Result<VmInfo, ManagerError> {
        Ok(self.handle(id)?.info())
    }

    pub async fn op(&self, id: &str, op: VmOp) -> Result<VmInfo, ManagerError> {
        let handle = self.handle(id)?;
        if op != VmOp::Stop {
            refuse_waiting(&handle.info())?;
        }
        Ok(handle.op(op).await?)
    }

    /// Changes a VM's I/O limits: `update`'s devices replace the VM's (an
    /// unlimited one removes that limit), checked as a spec is.
    pub async fn set_rate_limits(
        &self,
        id: &str,
        update: RateLimits,
    ) -> Result<VmInfo, ManagerError> {
        let handle = self.handle(id)?;
        let info = handle.info();
        refuse_waiting(&info)?;
        // The update itself first: a device given only a burst would
        // otherwise read as "remove the limit".
        update
            .validate()
            .map_err(|e| ManagerError::BadSpec(SpecError::RateLimits(e)))?;
        let mut spec = info.spec;
        spec.rate_limits = spec.rate_limits.merged(&update);
        spec.validate().map_err(ManagerError::BadSpec)?;
        Ok(handle.set_rate_limits(spec.rate_limits).await?)
    }

    /// Removes a VM and its directory. Without `force` only a Stopped or Failed VM
    /// may be deleted; with it, a live VM is stopped first.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), ManagerError> {
        let handle = self.handle(id)?;
        let mut state = handle.info().state;
        if !state.is_deletable() {
            if !force {
                return Err(ManagerError::NotDeletable {
                    id: handle.id().clone(),
                    state,
                });
            }
            // A concurrent stop may win the race; either way the VM ends terminal.
            let _ = handle.op(VmOp::Stop).await;
            state = handle
                .wait_until(Duration::from_secs(30), |r| r.state.is_terminal())
                .await
                .state;
            if !state.is_deletable() {
                return Err(ManagerError::NotDeletable {
                    id: handle.id().clone(),
                    state,
                });
            }
        }
        self.inner
            .vms
            .write()
            .expect("vm table lock")
            .vms
            .remove(handle.id());
        let info = handle.info();
        let ready = info.timeline.at(BootPhase::Ready);
        if let Some(us) = ready.filter(|_| info.start.method != StartMethod::Pool) {
            let mut history = self.inner.start_history.lock().expect("history lock");
            if history.len() >= START_HISTORY_LIMIT {
                history.remove(0);
            }
            history.push((
                info.spec.vm_type.to_string(),
                info.start.method,
                us as f64 / 1000.0,
            ));
        }
        // Before the row goes: a VM's network outlives nothing it names.
        self.detach_network(handle.id()).await;
        let (manager, id) = (self.clone(), handle.id().to_string());
        let _ = tokio::task::spawn_blocking(move || manager.inner.metrics.vm_ended(&id)).await;
        let workdir = vms_dir(&self.inner.data_dir).join(handle.id().as_str());
        if let Err(err) = std::fs::remove_dir_all(&workdir) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(vm = %handle.id(), %err, "cannot remove VM directory");
            }
        }
        crate::crash::point("delete.after_files");
        // Last: until the row is gone, a restart would find the VM and finish
        // the cleanup.
        let id = handle.id().clone();
        vm::with_store(&self.inner.store, move |s| s.delete_vm(&id))
            .await
            .map_err(ManagerError::Store)?;
        tracing::info!(vm = %handle.id(), "VM deleted");
        Ok(())
    }

    /// Takes a snapshot of a VM (pausing it for the duration, and resuming it
    /// after unless asked not to) and records it in the catalog.
    pub async fn snapshot(
        &self,
        vm_id: &str,
        request: CreateSnapshotRequest,
    ) -> Result<SnapshotInfo, ManagerError> {
        // On its own task, for the same reason as `create`.
        let manager = self.clone();
        let vm_id = vm_id.to_owned();
        tokio::spawn(async move { manager.snapshot_as(&vm_id, request, None).await })
            .await
            .expect("snapshots do not panic")
    }

    async fn snapshot_as(
        &self,
        vm_id: &str,
        request: CreateSnapshotRequest,
        template_for: Option<String>,
    ) -> Result<SnapshotInfo, ManagerError> {
        let handle = self.handle(vm_id)?;
        refuse_waiting(&handle.info())?;
        // Refused before anything is paused or recorded.
        let vmm = handle.info().spec.vmm;
        if !vmm.takes_snapshots() {
            return Err(no_snapshots(
                vmm,
                format!("snapshot VM {}", handle.id()),
                "snapshots",
            ));
        }
        let catalog = &self.inner.catalog;
        // One snapshot writer at a time: the VM's lineage (`last_snapshot`)
        // read here is the one the VMM's dirty pages are relative to.
        let _writer = catalog.writer().await;
        let vm = handle.info();
        let parent = match request.kind {
            SnapshotKind::Full => None,
            SnapshotKind::Diff => Some(self.diff_parent(&vm)?),
        };
        let mut info = catalog
            .begin(NewSnapshot {
                name: request.name,
                kind: request.kind,
                parent,
                vm,
                template_for,
            })
            .await?;
        crate::crash::point("snapshot.after_intent");
        let dir = PathBuf::from(&info.dir);
        let memory_name = match request.kind {
            SnapshotKind::Full => snapshots::MEMORY_FILE,
            SnapshotKind::Diff => snapshots::DIFF_MEMORY_FILE,
        };
        let job = SnapshotJob {
            id: info.id.clone(),
            kind: request.kind,
            state_file: dir.join(snapshots::STATE_FILE),
            memory_file: dir.join(memory_name),
            resume: request.resume.unwrap_or(true),
        };
        let (vm, timing) = match handle.snapshot(job).await {
            Ok(taken) => taken,
            Err(err) => {
                catalog.abort(&info).await;
                return Err(err.into());
            }
        };
        crate::crash::point("snapshot.after_files");
        let host = self.inner.host.clone();
        let (kind, manifest_dir) = (request.kind, dir.clone());
        let manifest = tokio::task::spawn_blocking(move || {
            snapshots::seal_files(&manifest_dir).map_err(|err| CatalogError::Files {
                path: manifest_dir.clone(),
                what: format!("cannot be made private and durable: {err}"),
            })?;
            snapshots::manifest(&vm, &host, kind, &manifest_dir)
        })
        .await
        .expect("manifest does not panic");
        let manifest = match manifest {
            Ok(manifest) => manifest,
            Err(err) => {
                catalog.abort(&info).await;
                return Err(err.into());
            }
        };
        info.manifest = Some(manifest);
        info.timing = Some(timing);
        match catalog.finish(info.clone()).await {
            Ok(done) => {
                tracing::info!(snapshot = %done.id, vm = %vm_id, kind = ?done.kind, us = timing.total_us, "snapshot taken");
                Ok(done)
            }
            Err(err) => {
                catalog.abort(&info).await;
                Err(err.into())
            }
        }
    }

    /// The snapshot a diff of `vm` would be relative to.
    fn diff_parent(&self, vm: &VmInfo) -> Result<String, ManagerError> {
        let refuse = |reason: String| ManagerError::NoDiff {
            id: vm.id.clone(),
            reason,
        };
        if !vm.spec.diff_snapshots {
            return Err(refuse(format!(
                "it does not track dirty pages; set vm_types.{}.diff_snapshots = true for VMs of its type",
                vm.spec.vm_type
            )));
        }
        let last = vm.last_snapshot.clone().ok_or_else(|| {
            refuse(
                "it has no earlier snapshot to be relative to; take a full snapshot first"
                    .to_owned(),
            )
        })?;
        self.inner.catalog.get(&last).map_err(|_| {
            refuse(format!(
                "its last snapshot {last} is gone; take a full snapshot first"
            ))
        })?;
        Ok(last)
    }

    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        self.inner.catalog.list()
    }

    pub fn get_snapshot(&self, id_or_name: &str) -> Result<SnapshotInfo, ManagerError> {
        Ok(self.inner.catalog.get(id_or_name)?)
    }

    pub async fn delete_snapshot(&self, id_or_name: &str, force: bool) -> Result<(), ManagerError> {
        let manager = self.clone();
        let id_or_name = id_or_name.to_owned();
        tokio::spawn(async move { manager.inner.catalog.delete(&id_or_name, force).await })
            .await
            .expect("deletes do not panic")?;
        Ok(())
    }

    /// Whether `template` still matches the current inputs of `type_name`
    /// (VMM version, kernel and rootfs contents, spec); `Err` says what changed.
    async fn template_check(&self, type_name: &str, template: &SnapshotInfo) -> Result<(), Stale> {
        let current = self
            .template_inputs(type_name)
            .await
            .map_err(|reason| Stale {
                reason,
                inputs: None,
            })?;
        let reason = match &template.manifest {
            Some(m) if m.inputs == current => return Ok(()),
            Some(m) if m.firecracker_version != self.inner.host.vmm_version => format!(
                "the VMM changed ({} -> {})",
                m.firecracker_version, self.inner.host.vmm_version
            ),
            Some(_) => {
                "the VM type's kernel, rootfs or settings changed since it was built".to_owned()
            }
            None => "it has no manifest".to_owned(),
        };
        Err(Stale {
            reason,
            inputs: Some(current),
        })
    }

    /// Digest of what a template of `type_name` would be built from now.
    async fn template_inputs(&self, type_name: &str) -> Result<String, String> {
        let spec = self
            .resolve_spec(&CreateVmRequest {
                vm_type: Some(type_name.to_owned()),
                ..CreateVmRequest::default()
            })
            .map_err(|e| tfc_core::error_chain(&e))?;
        let version = self.inner.host.vmm_version.clone();
        tokio::task::spawn_blocking(move || {
            let digest = |what: &str, path: &Path| {
                tfc_host::digest::file_sha256(path)
                    .map_err(|e| format!("its {what} {} cannot be read: {e}", path.display()))
            };
            let kernel = digest("kernel", &spec.kernel)?;
            let rootfs = digest("rootfs", &spec.rootfs)?;
            Ok(snapshots::template_inputs(
                &version, &kernel, &rootfs, &spec,
            ))
        })
        .await
        .expect("digest does not panic")
    }

    /// Starts a background rebuild of a stale template, unless one runs or the
    /// last one failed with the same inputs.
    fn rebuild_if_due(&self, type_name: &str, stale: &Stale) {
        if self
            .type_vmm(type_name)
            .is_some_and(|v| !v.takes_snapshots())
        {
            // Its VMM takes no snapshots: a build would fail every time.
            return;
        }
        let Some(inputs) = &stale.inputs else {
            // An input cannot even be read: a build would fail the same way.
            return;
        };
        let reason = &stale.reason;
        let mut templates = self.inner.templates.lock().expect("templates lock");
        let entry = templates.entry(type_name.to_owned()).or_default();
        let failed_alike = entry
            .failure
            .as_ref()
            .is_some_and(|(failed, _)| failed == inputs);
        if entry.building > 0 || failed_alike {
            return;
        }
        entry.building += 1;
        let lock = entry.lock.clone();
        drop(templates);
        tracing::info!(vm_type = %type_name, %reason, "template is stale; rebuilding it");
        let manager = self.clone();
        let type_name = type_name.to_owned();
        tokio::spawn(async move {
            if let Err(err) = manager.run_build(&type_name, lock).await {
                tracing::warn!(vm_type = %type_name, error = %tfc_core::error_chain(&err), "template rebuild failed");
            }
        });
    }

    /// Checks every VM type's template and rebuilds the stale ones in the
    /// background (called once the daemon serves).
    pub async fn refresh_templates(&self) {
        for type_name in self.inner.config.vm_types.keys() {
            if let Some(template) = self.inner.catalog.template(type_name) {
                if let Err(stale) = self.template_check(type_name, &template).await {
                    self.rebuild_if_due(type_name, &stale);
                }
            }
        }
    }

    /// Builds the template of `type_name`: boots a VM of the type, waits for
    /// it to be ready, takes a full snapshot of it recorded as the type's
    /// template, and removes the VM and older templates nothing depends on.
    pub async fn build_template(&self, type_name: &str) -> Result<TemplateInfo, ManagerError> {
        if let Some(vmm) = self.type_vmm(type_name).filter(|v| !v.takes_snapshots()) {
            return Err(no_snapshots(
                vmm,
                format!("build the template of VM type {type_name} (a template is a snapshot)"),
                "snapshots",
            ));
        }
        if !self.inner.config.vm_types.contains_key(type_name) {
            return Err(ManagerError::UnknownType {
                name: type_name.to_owned(),
                known: self
                    .inner
                    .config
                    .vm_types
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let lock = {
            let mut templates = self.inner.templates.lock().expect("templates lock");
            let entry = templates.entry(type_name.to_owned()).or_default();
            entry.building += 1;
            entry.lock.clone()
        };
        // On its own task: a caller that goes away does not cut a build short.
        let manager = self.clone();
        let name = type_name.to_owned();
        tokio::spawn(async move { manager.run_build(&name, lock).await })
            .await
            .expect("template builds do not panic")?;
        Ok(self.template_info(type_name).await)
    }

    /// Runs one build queued by the caller (who counted it in `building`).
    async fn run_build(
        &self,
        type_name: &str,
        lock: Arc<tokio::sync::Mutex<()>>,
    ) -> Result<SnapshotInfo, ManagerError> {
        let _building = lock.lock().await;
        let inputs = self.template_inputs(type_name).await.unwrap_or_default();
        let built = {
            // A build boots a VM: it counts against the host's boot slots.
            let _slot = self.inner.boot_slots.acquire().await;
            self.build_template_once(type_name).await
        };
        self.inner.pools.wake(type_name);
        let mut templates = self.inner.templates.lock().expect("templates lock");
        let entry = templates.entry(type_name.to_owned()).or_default();
        entry.building -= 1;
        entry.failure = match &built {
            Ok(_) => None,
            Err(err) => Some((inputs, tfc_core::error_chain(err))),
        };
        built
    }

    async fn build_template_once(&self, type_name: &str) -> Result<SnapshotInfo, ManagerError> {
        let failed = |reason: String| ManagerError::TemplateBuild {
            vm_type: type_name.to_owned(),
            reason,
        };
        tracing::info!(vm_type = %type_name, "building template: booting a VM");
        let vm = self
            .create_now(
                CreateVmRequest {
                    vm_type: Some(type_name.to_owned()),
                    optimization_level: Some(OptimizationLevel::Standard),
                    wait: true,
                    ..CreateVmRequest::default()
                },
                true,
            )
            .await?;
        let snapshot = if vm.state == VmState::Ready {
            self.snapshot_as(
                &vm.id,
                CreateSnapshotRequest {
                    kind: SnapshotKind::Full,
                    name: None,
                    resume: Some(false),
                },
                Some(type_name.to_owned()),
            )
            .await
        } else {
            Err(failed(match &vm.failure {
                Some(failure) => format!("its VM failed: {failure}"),
                None => format!("its VM was still {} when the boot timeout passed", vm.state),
            }))
        };
        if let Err(err) = self.delete(&vm.id, true).await {
            tracing::warn!(vm = %vm.id, error = %tfc_core::error_chain(&err), "cannot remove the template's VM");
        }
        let snapshot = snapshot?;
        for old in self.inner.catalog.list() {
            if old.template_for.as_deref() == Some(type_name) && old.id != snapshot.id {
                // Older templates go unless a diff depends on them.
                if let Err(err) = self.inner.catalog.delete(&old.id, false).await {
                    if !matches!(err, CatalogError::IsTemplate { .. }) {
                        tracing::info!(snapshot = %old.id, error = %tfc_core::error_chain(&err), "keeping an older template");
                        continue;
                    }
                    if let Err(err) = self.inner.catalog.delete(&old.id, true).await {
                        tracing::warn!(snapshot = %old.id, error = %tfc_core::error_chain(&err), "keeping an older template for now");
                    }
                }
            }
        }
        tracing::info!(vm_type = %type_name, snapshot = %snapshot.id, "template built");
        Ok(snapshot)
    }

    /// One VM type's template status and measured start times.
    pub async fn template_info(&self, type_name: &str) -> TemplateInfo {
        let (building, failure) = {
            let templates = self.inner.templates.lock().expect("templates lock");
            templates.get(type_name).map_or((false, None), |t| {
                (t.building > 0, t.failure.as_ref().map(|f| f.1.clone()))
            })
        };
        let template = self.inner.catalog.template(type_name);
        let (status, reason) = match &template {
            _ if building => (TemplateStatus::Building, None),
            Some(t) => match self.template_check(type_name, t).await {
                Ok(()) => (TemplateStatus::Ready, None),
                Err(Stale { reason, .. }) => match failure {
                    Some(failure) => (
                        TemplateStatus::Failed,
                        Some(format!("{reason}; the rebuild failed: {failure}")),
                    ),
                    None => (TemplateStatus::Stale, Some(reason)),
                },
            },
            None => match failure {
                Some(failure) => (TemplateStatus::Failed, Some(failure)),
                None => (TemplateStatus::Missing, None),
            },
        };
        TemplateInfo {
            vm_type: type_name.to_owned(),
            status,
            snapshot: template.map(|t| t.id),
            reason,
            starts: self.start_stats(type_name),
        }
    }

    /// Every configured VM type's template.
    pub async fn templates(&self) -> Vec<TemplateInfo> {
        let mut all = Vec::new();
        for type_name in self.inner.config.vm_types.keys() {
            all.push(self.template_info(type_name).await);
        }
        all
    }

    /// Turns on per-VM networking: opens the host side and installs its
    /// ruleset. Once, before [`Self::recover`].
    pub fn enable_network(&self) -> Result<(), NetworkError> {
        let net = Networking::open(&self.inner.config.network, self.inner.store.clone())?;
        if self.inner.net.set(Arc::new(net)).is_err() {
            tracing::warn!("networking was enabled twice; keeping the first");
        }
        Ok(())
    }

    /// The daemon's networking, when enabled.
    pub fn network(&self) -> Option<&Arc<Networking>> {
        self.inner.net.get()
    }

    /// After [`Self::recover`]: removes the networks of VMs that are over
    /// or gone, takes back those of live VMs, watches them, and starts
    /// making ready slots.
    pub async fn reconcile_network(&self) -> Result<(), ManagerError> {
        let Some(net) = self.inner.net.get().cloned() else {
            return Ok(());
        };
        let handles = self.handles();
        let live: HashMap<VmId, Option<NetConfig>> = handles
            .iter()
            .map(|h| h.info())
            .filter(|info| !info.state.is_terminal())
            .filter_map(|info| {
                let id = VmId::new(info.id).ok()?;
                Some((id, info.spec.network))
            })
            .collect();
        let report = tokio::task::spawn_blocking(move || net.reconcile(&live))
            .await
            .expect("reconcile does not panic")?;
        if !report.torn_down.is_empty() || !report.unowned.is_empty() {
            tracing::info!(
                vms = report.torn_down.len(),
                leases = report.released.len(),
                unowned = report.unowned.len(),
                "removed VM networks the previous daemon left"
            );
        }
        for failure in &report.failures {
            tracing::warn!(%failure, "network leftover kept for the next start");
        }
        // By the spec, not the record: a VM that failed meanwhile has no
        // network in its record any more, but its objects may be left.
        for handle in &handles {
            if handle.info().spec.network.is_some() {
                self.watch_network(handle);
            }
        }
        self.fill_network_slots();
        Ok(())
    }

    /// Gives VM `id` the network `config` asks for, off the async threads;
    /// then tops the ready slots up.
    async fn attach_network(
        &self,
        id: &VmId,
        config: &NetConfig,
    ) -> Result<VmNetworkInfo, ManagerError> {
        let net = self
            .inner
            .net
            .get()
            .cloned()
            .ok_or(NetworkError::Disabled)?;
        let (vm, config) = (id.clone(), config.clone());
        let attached = tokio::task::spawn_blocking(move || net.attach(&vm, &config))
            .await
            .expect("attach does not panic")?;
        self.fill_network_slots();
        Ok(attached)
    }

    /// Removes VM `id`'s network, if it has one; failures are logged (the
    /// records stay for the next start's reconciliation).
    async fn detach_network(&self, id: &VmId) {
        let Some(net) = self.inner.net.get().cloned() else {
            return;
        };
        let vm = id.clone();
        let detached = tokio::task::spawn_blocking(move || net.detach(&vm))
            .await
            .expect("detach does not panic");
        if let Err(err) = detached {
            tracing::warn!(vm = %id, error = %tfc_core::error_chain(&err), "cannot remove the VM's network; the next start does");
        }
    }

    fn detach_network_later(&self, id: &VmId) {
        let (manager, id) = (self.clone(), id.clone());
        tokio::spawn(async move { manager.detach_network(&id).await });
    }

    /// Tears the VM's network down once the VM is over (stopped or failed):
    /// its addresses are free for other VMs from then on. A VM let go
    /// without ending (the daemon exits and leaves it running) keeps it.
    fn watch_network(&self, handle: &VmHandle) {
        if self.inner.net.get().is_none() {
            return;
        }
        let (manager, id, mut record) = (self.clone(), handle.id().clone(), handle.subscribe());
        tokio::spawn(async move {
            if record.wait_for(|r| r.state.is_terminal()).await.is_ok() {
                manager.detach_network(&id).await;
            }
        });
    }

    /// Follows VM `handle` for the metrics: its start once it is ready (when
    /// `fresh`: a re-adopted VM's start was counted by its first daemon),
    /// its VMM's own counters while it lives.
    fn watch_vm(&self, handle: &VmHandle, fresh: bool) {
        let info = handle.info();
        if info.state.is_terminal() {
            return;
        }
        let id = info.id.clone();
        if info.spec.vmm == tfc_core::Vmm::Firecracker {
            self.inner.metrics.follow_firecracker(
                &id,
                info.spec.vm_type.as_str(),
                &vms_dir(&self.inner.data_dir).join(&id),
            );
        }
        let (manager, mut record) = (self.clone(), handle.subscribe());
        tokio::spawn(async move {
            if fresh {
                let started = record
                    .wait_for(|r| {
                        r.timeline.at(BootPhase::Ready).is_some() || r.state.is_terminal()
                    })
                    .await
                    .map(|r| r.clone());
                if let Ok(info) = started {
                    if info.timeline.at(BootPhase::Ready).is_some() {
                        manager.record_start(&info);
                    }
                }
            }
            let _ = record.wait_for(|r| r.state.is_terminal()).await;
            let _ = tokio::task::spawn_blocking(move || manager.inner.metrics.vm_ended(&id)).await;
        });
    }

    /// A VM reached Ready: its phases go to the metrics; a start for a
    /// caller (not a pool's prewarm) to the monitor.
    fn record_start(&self, info: &VmInfo) {
        let vm_type = info.spec.vm_type.as_str();
        self.inner.metrics.vm_started(crate::metrics::Start {
            vm_type,
            level: info.start.level.as_str(),
            method: info.start.method.as_str(),
            timeline: &info.timeline,
        });
        if let (Some(us), false) = (
            info.timeline.at(BootPhase::Ready),
            info.start.method == StartMethod::Pool,
        ) {
            self.inner.monitor.boot(vm_type, us as f64 / 1000.0);
        }
    }

    fn fill_network_slots(&self) {
        if let Some(net) = self.inner.net.get().cloned() {
            tokio::task::spawn_blocking(move || net.fill());
        }
    }

    /// Stores `record` now (off the async threads), failing the caller's request
    /// when the store cannot take it.
    async fn write_row(&self, record: &VmInfo) -> Result<(), ManagerError> {
        let row = vm::row(record).map_err(|e| ManagerError::Record(e.to_string()))?;
        vm::with_store(&self.inner.store, move |s| s.put_vm(&row))
            .await
            .map_err(ManagerError::Store)
    }

    /// Reconciles the stored VM records with what is running, before the API
    /// serves: VMs whose VMM still runs are re-adopted; VMs whose VMM is gone are
    /// recorded Failed; half-created VMs are rolled back; half-stopped ones are
    /// finished. Returns the ids that now have records (their directories are
    /// not orphans).
    pub async fn recover(&self) -> Result<std::collections::HashSet<String>, ManagerError> {
        self.inner.catalog.recover().await?;
        let mut abandoned_builds = Vec::new();
        let rows = vm::with_store(&self.inner.store, |s| s.list_vms())
            .await
            .map_err(ManagerError::Store)?;
        let mut kept = std::collections::HashSet::new();
        for row in rows {
            let mut info: VmInfo = match serde_json::from_str(&row.record) {
                Ok(info) => info,
                Err(err) => {
                    // Perhaps written by a newer tfc: leave the record, its
                    // directory and any VMM it names exactly as they are.
                    tracing::error!(vm = %row.id, %err, "unreadable VM record; leaving the VM untouched and unmanaged");
                    kept.insert(row.id.to_string());
                    continue;
                }
            };
            let workdir = PathBuf::from(&info.workdir);
            // A template build the previous daemon did not finish, or a VM
            // that waited in its pools: nobody else uses them. (A pooled VM
            // is cheap to replace, and whether a caller was about to get it
            // is not known: it is never handed out after a restart.)
            let waiting_in_pool = info
                .pool
                .as_ref()
                .is_some_and(|s| s.acquired_at_ms.is_none());
            let daemons_own = info.template_build || waiting_in_pool;
            let handle = match info.state {
                VmState::Creating => {
                    // Never finished creating: undo it.
                    crate::reaper::end_vmm_blocking(&workdir).await;
                    let _ = std::fs::remove_dir_all(&workdir);
                    let _ = self.inner.store.delete_vm(&row.id);
                    tracing::warn!(vm = %row.id, "rolled back a VM whose creation was interrupted");
                    continue;
                }
                VmState::Stopping => {
                    // The stop was under way: finish it.
                    crate::reaper::end_vmm_blocking(&workdir).await;
                    remove_socket(&workdir);
                    info.state = VmState::Stopped;
                    info.pid = None;
                    info.updated_at_ms = vm::now_ms();
                    info.exit.get_or_insert_with(|| {
                        vm::exit_info(tfc_core::ExitReason {
                            code: None,
                            signal: None,
                        })
                    });
                    self.write_row(&info).await?;
                    vm::terminal(info, self.inner.store.clone())
                }
                state if state.is_terminal() => vm::terminal(info, self.inner.store.clone()),
                _ => {
                    let timeout = self.boot_timeout(info.spec.vmm);
                    vm::adopt(
                        info,
                        self.inner.backend.clone(),
                        self.inner.store.clone(),
                        timeout,
                    )
                }
            };
            kept.insert(row.id.to_string());
            if daemons_own {
                abandoned_builds.push(row.id.to_string());
            }
            self.watch_vm(&handle, false);
            self.inner
                .vms
                .write()
                .expect("vm table lock")
                .vms
                .insert(row.id.clone(), handle);
        }
        for id in abandoned_builds {
            tracing::warn!(vm = %id, "removing a VM the previous daemon kept for itself (template build or pool)");
            match self.delete(&id, true).await {
                Ok(()) => {
                    kept.remove(&id);
                }
                Err(err) => {
                    tracing::warn!(vm = %id, error = %tfc_core::error_chain(&err), "cannot remove it");
                }
            }
        }
        Ok(kept)
    }

    /// Refuses new VMs, then, by `policy`, stops every VM and removes its files,
    /// or lets every VM run on for the next daemon to adopt (records stay).
    /// VMs waiting in pools are removed either way: they are the daemon's,
    /// not a caller's.
    pub async fn shutdown(&self, policy: ShutdownPolicy) {
        // Pools first: from here on nothing more is handed out.
        self.inner.pools.close();
        let handles: Vec<VmHandle> = {
            let mut table = self.inner.vms.write().expect("vm table lock");
            table.closing = true;
            table.vms.values().cloned().collect()
        };
        let mut tasks = tokio::task::JoinSet::new();
        for handle in handles {
            let manager = self.clone();
            tasks.spawn(async move {
                // Asked of the VM's owner, after any hand-over it has queued:
                // a VM still waiting is retired (and goes), one handed out
                // follows the policy.
                let pooled = handle.info().pool.is_some() && !handle.info().state.is_terminal();
                let waiting_in_pool = pooled
                    && match handle
                        .check(Some("the daemon is shutting down".to_owned()))
                        .await
                    {
                        // It was waiting; it is retired now.
                        Err(crate::vm::CheckError::Unfit(_)) => true,
                        // Handed out (or rolled back to waiting by a failed
                        // hand-over): the record says which.
                        _ => handle.info().pool.is_some_and(|s| s.acquired_at_ms.is_none()),
                    };
                let policy = if waiting_in_pool {
                    ShutdownPolicy::Stop
                } else {
                    policy
                };
                match policy {
                    ShutdownPolicy::LeaveRunning => handle.detach().await,
                    ShutdownPolicy::Stop => {
                        if let Err(err) = manager.delete(handle.id().as_str(), true).await {
                            tracing::warn!(vm = %handle.id(), error = %tfc_core::error_chain(&err), "VM not cleaned up at shutdown");
                        }
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        if let Some(net) = self.inner.net.get().cloned() {
            // VMs left running keep their networks, and those need the
            // host's ruleset; ready slots go either way.
            let _ = tokio::task::spawn_blocking(move || net.close()).await;
        }
    }
}

/// Awaits `task` for a caller. A caller that goes away (its future dropped,
/// e.g. a closed connection) does not stop the task; `unclaimed` gets the
/// task's result when it ends, to undo what nobody will use.
async fn claim<T: Send + 'static>(
    task: tokio::task::JoinHandle<T>,
    unclaimed: impl FnOnce(T) + Send + 'static,
) -> T {
    struct Claim<T: Send + 'static, F: FnOnce(T) + Send + 'static> {
        pending: Option<(tokio::task::JoinHandle<T>, F)>,
    }
    impl<T: Send + 'static, F: FnOnce(T) + Send + 'static> Drop for Claim<T, F> {
        fn drop(&mut self) {
            if let Some((task, unclaimed)) = self.pending.take() {
                tokio::spawn(async move {
                    if let Ok(result) = task.await {
                        unclaimed(result);
                    }
                });
            }
        }
    }
    let mut claim = Claim {
        pending: Some((task, unclaimed)),
    };
    let (task, _) = claim.pending.as_mut().expect("pending until taken");
    let result = task.await;
    claim.pending = None;
    match result {
        Ok(result) => result,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

/// `action` cannot be done because `vmm` takes no snapshots (the API's 501).
pub(crate) fn no_snapshots(vmm: Vmm, action: String, operation: &'static str) -> ManagerError {
    ManagerError::Unsupported {
        action,
        source: BackendError::Unsupported { vmm, operation },
    }
}

/// What to do about a VM whose guest does not run, for the error message.
fn not_running_hint(state: VmState, id: &str) -> String {
    match state {
        VmState::Paused | VmState::Snapshotted => {
            format!("; resume it first (`tfc vm resume {id}`)")
        }
        VmState::Creating | VmState::Booting | VmState::Prewarming | VmState::Allocating => {
            "; wait until it is ready".to_owned()
        }
        _ => String::new(),
    }
}

/// Whether a VM type's VMs run the guest agent. `auto` means: where guest
/// userspace runs. QEMU TCG always runs it; Firecracker does unless the
/// guest profile (`profile`, asked only then) is for a nested host, whose
/// emulated CPU faults on every system call. The fake backend runs no guest
/// at all, so `auto` never turns the agent on there.
fn agent_wanted(
    mode: AgentMode,
    vmm: tfc_core::Vmm,
    backend: &Backend,
    profile: impl FnOnce() -> tfc_host::profile::Profile,
) -> bool {
    match mode {
        AgentMode::On => true,
        AgentMode::Off => false,
        AgentMode::Auto => match (backend, vmm) {
            (Backend::Fake(_), _) => false,
            (_, tfc_core::Vmm::QemuTcg) => true,
            (_, tfc_core::Vmm::Firecracker) => profile() != tfc_host::profile::Profile::Nested,
        },
    }
}

/// Whether kernel arguments name an init other than the guest agent.
fn starts_other_init(args: &str) -> bool {
    args.split_whitespace().any(|w| {
        w.strip_prefix("init=")
            .is_some_and(|init| init != spec::AGENT_INIT)
    })
}

/// `args` with the agent as init: `init=` the agent unless the VM type's own
/// boot arguments (`type_args`) chose an init, and the agent's port when it
/// is not the default (the agent reads `tfc.agent_port=` from the kernel
/// command line).
fn agent_boot_args(args: &str, type_args: bool, port: u32) -> String {
    let has_init = args.split_whitespace().any(|w| w.starts_with("init="));
    let mut words: Vec<String> = args
        .split_whitespace()
        // The assets' default init is replaced; a type's own is kept.
        .filter(|w| type_args || !w.starts_with("init="))
        .map(str::to_owned)
        .collect();
    if !(type_args && has_init) {
        words.push(format!("init={}", spec::AGENT_INIT));
    }
    if port != spec::DEFAULT_AGENT_PORT {
        words.push(format!("tfc.agent_port={port}"));
    }
    words.join(" ")
}

/// A VM waiting in its pool is the pool's: only stopping or deleting it is
/// allowed (the pool replaces it); using it takes an acquire.
fn refuse_waiting(vm: &VmInfo) -> Result<(), ManagerError> {
    match &vm.pool {
        Some(slot) if slot.acquired_at_ms.is_none() && !vm.state.is_terminal() => {
            Err(ManagerError::WaitingInPool {
                id: vm.id.clone(),
                vm_type: vm.spec.vm_type.to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// Removes the sockets a VMM ended from outside leaves behind.
fn remove_socket(workdir: &Path) {
    use tfc_qemu::command::{QMP_SOCKET, VHOST_SOCKET, VSOCK_SOCKET};
    for name in [
        tfc_firecracker::process::API_SOCKET,
        QMP_SOCKET,
        VHOST_SOCKET,
        VSOCK_SOCKET,
    ] {
        let _ = std::fs::remove_file(workdir.join(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FakeBackend;
    use tfc_core::Vmm;
    use tfc_host::profile::Profile;

    fn firecracker() -> Backend {
        Backend::Vmms(std::sync::Arc::new(crate::backend::Vmms {
            default: Vmm::Firecracker,
            firecracker: Ok(crate::backend::FirecrackerBackend {
                binary: "/nonexistent/firecracker".into(),
                version: "Firecracker v1.12.1".into(),
                boot_timeout: Duration::from_secs(1),
                console_log_limit: 4096,
                stop: tfc_firecracker::StopPolicy::default(),
                jailer: None,
                idle_priority: false,
            }),
            qemu: Err("not needed".to_owned()),
        }))
    }

    #[test]
    fn a_type_starting_another_init_is_told_apart() {
        assert!(starts_other_init("console=ttyS0 init=/init.sh"));
        assert!(!starts_other_init("console=ttyS0 init=/sbin/tfc-agent"));
        assert!(!starts_other_init("console=ttyS0 rdinit=/x"));
        assert!(!starts_other_init("console=ttyS0"));
    }

    #[test]
    fn auto_runs_the_agent_where_guest_userspace_runs() {
        let fake = Backend::Fake(FakeBackend::default());
        let fc = firecracker();
        let never = || -> Profile { panic!("the profile was not needed") };
        let cases = [
            (AgentMode::Auto, Vmm::QemuTcg, &fc, Profile::Nested, true),
            (
                AgentMode::Auto,
                Vmm::Firecracker,
                &fc,
                Profile::Default,
                true,
            ),
            (
                AgentMode::Auto,
                Vmm::Firecracker,
                &fc,
                Profile::Nested,
                false,
            ),
            (
                AgentMode::Auto,
                Vmm::Firecracker,
                &fake,
                Profile::Default,
                false,
            ),
            (
                AgentMode::Auto,
                Vmm::QemuTcg,
                &fake,
                Profile::Default,
                false,
            ),
            (AgentMode::On, Vmm::Firecracker, &fc, Profile::Nested, true),
            (
                AgentMode::On,
                Vmm::Firecracker,
                &fake,
                Profile::Nested,
                true,
            ),
            (AgentMode::Off, Vmm::QemuTcg, &fc, Profile::Default, false),
        ];
        for (mode, vmm, backend, profile, want) in cases {
            assert_eq!(
                agent_wanted(mode, vmm, backend, || profile),
                want,
                "{mode:?} {vmm} {} {profile}",
                backend.name()
            );
        }
        // Only auto under Firecracker asks for the profile (it may read files).
        assert!(agent_wanted(AgentMode::On, Vmm::Firecracker, &fc, never));
        assert!(agent_wanted(AgentMode::Auto, Vmm::QemuTcg, &fc, never));
    }

    #[test]
    fn the_agent_becomes_init_unless_the_type_chose_one() {
        let assets = "console=ttyS0 reboot=k init=/init noxsave";
        assert_eq!(
            agent_boot_args(assets, false, spec::DEFAULT_AGENT_PORT),
            "console=ttyS0 reboot=k noxsave init=/sbin/tfc-agent"
        );
        assert_eq!(
            agent_boot_args("console=ttyS0", true, 5000),
            "console=ttyS0 init=/sbin/tfc-agent tfc.agent_port=5000"
        );
        assert_eq!(
            agent_boot_args("console=ttyS0 init=/bin/my-init", true, 1024),
            "console=ttyS0 init=/bin/my-init"
        );
    }
}
