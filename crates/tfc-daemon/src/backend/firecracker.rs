//! The Firecracker backend: one `firecracker` process per VM, configured through
//! its API socket, readiness read from its serial console; optionally under
//! the jailer, one jail per VM (see [`tfc_firecracker::jailer`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tfc_api::SnapshotKind;
use tfc_core::limits::{IoLimit, RateLimits};
use tfc_core::net::guest;
use tfc_core::{BootPhase, VmId, VmSpec};

use crate::metrics::FIRECRACKER_METRICS_FILE;
use tfc_firecracker::models::{
    InstanceState, MemoryBackend, MemoryBackendType, NetworkInterface, PartialDrive,
    PartialNetworkInterface, RateLimiter, SnapshotCreateParams, SnapshotLoadParams, SnapshotType,
    TokenBucket,
};
use tfc_firecracker::priority::{Priority, Threads};
use tfc_firecracker::{
    CgroupVersion, ExitReason, FirecrackerProcess, Jail, JailIdPool, JailerConfig, SpawnConfig,
    StopPolicy, VmConfig,
};

use super::{
    console_ready, probe_vsock, require_file, BackendError, CreateRequest, RestoreRequest,
    VmBackend, VmMachine, PANIC_LINE,
};

/// Firecracker itself starts in a few milliseconds; this only bounds a wedged start.
const API_READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the VMM may take to write its last counters when stopped.
const FINAL_FLUSH_LIMIT: Duration = Duration::from_millis(500);

/// Settings shared by every Firecracker VM of the daemon.
#[derive(Debug, Clone)]
pub struct FirecrackerBackend {
    pub binary: PathBuf,
    /// First line of `firecracker --version`, recorded in every snapshot.
    pub version: String,
    pub boot_timeout: Duration,
    pub console_log_limit: u64,
    pub stop: StopPolicy,
    /// Run each VMM under the jailer; `None`: as the daemon's user, unconfined.
    pub jailer: Option<Jailer>,
    /// VMMs asked for in the background start at idle CPU priority; false
    /// when this daemon could not give them normal priority back (see
    /// [`tfc_firecracker::priority::can_leave_idle`]).
    pub idle_priority: bool,
}

/// How the VMMs run under the jailer: its settings, and the ids their jails
/// run as (shared by every clone of the backend).
#[derive(Debug, Clone)]
pub struct Jailer {
    pub config: JailerConfig,
    pub ids: Arc<JailIdPool>,
}

impl Jailer {
    /// The jailer of `config` running `exec_file`. Every jail already on
    /// disk (of VMs an earlier daemon left running, or stale ones the
    /// reaper will remove) holds its user's id from the start, before any
    /// VM is adopted, created or reaped: whatever becomes of such a jail,
    /// its id is given back exactly when it is removed.
    pub fn new(config: JailerConfig, exec_file: &Path) -> Self {
        let ids = Arc::new(JailIdPool::new(config.ids));
        for jail in Jail::all(&config, exec_file) {
            ids.mark(jail.user(), jail.id());
        }
        Self { config, ids }
    }
}

/// A VM's jail and the pool its user's id came from.
#[derive(Debug, Clone)]
struct HeldJail {
    jail: Jail,
    ids: Arc<JailIdPool>,
}

/// The kernel's name in a jail (the VMM's working directory there).
const JAIL_KERNEL: &str = "vmlinux";
/// Snapshot files in a jail: written there by the VMM and moved to the
/// catalog, or linked in from the catalog for a load.
const JAIL_SNAPSHOT_STATE: &str = "snapshot.state";
const JAIL_SNAPSHOT_MEMORY: &str = "snapshot.mem";
/// A jailed VMM's memory limit above its guest's memory: the VMM itself
/// (~22 MB resident per booted VM measured here), its page cache reads of
/// kernel and images, and room to spare, since hitting the limit kills the VM.
const VMM_MEMORY_OVERHEAD_MIB: u64 = 128;
/// The CPU quota's period.
const CPU_PERIOD_US: u64 = 100_000;

/// The cgroup limits of a jailed VM of `vcpus` and `memory_mib`: its guest's
/// memory plus [`VMM_MEMORY_OVERHEAD_MIB`], and one core per vCPU plus one for
/// the VMM's own threads (device emulation, API), so no VM takes more CPU
/// than it was sized for.
pub fn cgroup_limits(version: CgroupVersion, vcpus: u8, memory_mib: u32) -> Vec<(String, String)> {
    let memory = (u64::from(memory_mib) + VMM_MEMORY_OVERHEAD_MIB) * 1024 * 1024;
    let quota = (u64::from(vcpus) + 1) * CPU_PERIOD_US;
    let pairs = match version {
        CgroupVersion::V1 => vec![
            ("memory.limit_in_bytes", memory.to_string()),
            ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
            ("cpu.cfs_quota_us", quota.to_string()),
        ],
        CgroupVersion::V2 => vec![
            ("memory.max", memory.to_string()),
            ("cpu.max", format!("{quota} {CPU_PERIOD_US}")),
        ],
    };
    pairs
        .into_iter()
        .map(|(file, value)| (file.to_owned(), value))
        .collect()
}

/// Removes `jail` once no process runs in it: the VMM has ended (or been
/// sent SIGKILL) when this is called, but a killed process leaves its
/// cgroup only as it finishes exiting, so this waits up to a second. Its
/// user's id goes back to `ids` once the jail is gone, never before: a jail
/// that cannot be removed (a process still in it) keeps its id until the
/// next daemon start.
fn release_jail(jail: &Jail, ids: &JailIdPool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let result = if jail.processes().is_empty() {
            jail.remove()
        } else {
            Err(tfc_firecracker::JailError::RemoveDir {
                path: jail.dir(),
                source: std::io::Error::from_raw_os_error(libc::EBUSY),
            })
        };
        match result {
            Ok(()) => {
                ids.release(jail.user(), jail.id());
                return;
            }
            Err(err) if std::time::Instant::now() >= deadline => {
                tracing::warn!(jail = %jail.dir().display(), error = %tfc_core::error_chain(&err), "cannot remove the VM's jail; the next daemon start removes it");
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Ends every process running in `jail` (signalled through pidfds, each
/// checked to be in the jail after its open) and returns their pids.
fn end_jailed(jail: &Jail) -> Vec<u32> {
    let mut ended = Vec::new();
    for pid in jail.processes() {
        let Ok(pidfd) = tfc_firecracker::pidfd::Pidfd::open(pid) else {
            continue;
        };
        if jail.holds(pid) && pidfd.send_signal(libc::SIGKILL).is_ok() {
            pidfd.wait_exited(Duration::from_secs(5));
            ended.push(pid);
        }
    }
    ended
}

/// One VM backed by a Firecracker process.
#[derive(Debug)]
pub struct FirecrackerMachine {
    process: FirecrackerProcess,
    /// The VM's jail, when its VMM runs under the jailer; removed once the
    /// VMM has ended (see [`release_jail`]), unless the VM is detached.
    /// Boxed: most machines have none.
    jail: Option<Box<HeldJail>>,
    /// Set by [`VmMachine::detach`]: the VMM and its jail outlive this handle.
    detached: std::sync::atomic::AtomicBool,
    /// The jail has been removed (the VMM ended).
    released: std::sync::atomic::AtomicBool,
    readiness: String,
    boot_timeout: Duration,
    stop: StopPolicy,
    /// The limits in force (the spec's, then each change's).
    limits: std::sync::Mutex<RateLimits>,
    /// `limits` are to be given to the VMM at the next resume (see
    /// [`FirecrackerMachine::set_rate_limits`]).
    limits_pending: std::sync::atomic::AtomicBool,
    /// The VM has a network interface.
    network: bool,
    /// The VMM runs at idle CPU priority until [`VmMachine::foreground`].
    background: std::sync::atomic::AtomicBool,
    /// This daemon can give a thread normal priority back (see
    /// [`FirecrackerBackend::idle_priority`]).
    can_idle: bool,
}

/// Firecracker reports a missing or unusable /dev/kvm only at `InstanceStart`, as a
/// generic fault; the host probe's check first gives an error that says what to do.
fn check_kvm() -> Result<(), BackendError> {
    tfc_host::kvm::check_device(std::path::Path::new(tfc_host::kvm::KVM_DEVICE))
        .map(drop)
        .map_err(|e| BackendError::NoKvm(tfc_core::error_chain(&e)))
}

/// The VMM configuration of a cold boot of `spec`. A VM with a network gets
/// one interface on the tap of its namespace, with the hardware address
/// every VM's guest has (clone-safe, like its IP address).
fn vm_config(spec: &VmSpec) -> VmConfig {
    VmConfig {
        kernel: spec.kernel.clone(),
        boot_args: spec.boot_args.clone(),
        rootfs: spec.rootfs.clone(),
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        vsock: spec.vsock,
        track_dirty_pages: spec.diff_snapshots,
        network: spec.network.as_ref().map(|_| NetworkInterface {
            iface_id: tfc_firecracker::vm_config::NET_IFACE_ID.to_owned(),
            host_dev_name: guest::TAP_NAME.to_owned(),
            guest_mac: Some(guest::mac_string(guest::GUEST_MAC)),
            rx_rate_limiter: spec.rate_limits.net_rx.and_then(limiter),
            tx_rate_limiter: spec.rate_limits.net_tx.and_then(limiter),
        }),
        rootfs_rate_limiter: spec.rate_limits.disk.and_then(limiter),
    }
}

/// Token buckets refill over one second: a rate of N per second is a bucket
/// of N refilled every second.
const REFILL_MS: u64 = 1000;

fn bucket(per_sec: u64, burst: Option<u64>) -> TokenBucket {
    TokenBucket {
        size: per_sec,
        one_time_burst: burst,
        refill_time: REFILL_MS,
    }
}

/// The VMM's limiter for `limit` at boot; `None` when nothing is limited.
fn limiter(limit: IoLimit) -> Option<RateLimiter> {
    (!limit.is_unlimited()).then(|| RateLimiter {
        bandwidth: limit.bytes_per_sec.map(|b| bucket(b, limit.burst_bytes)),
        ops: limit.ops_per_sec.map(|o| bucket(o, None)),
    })
}

/// The VMM's limiter to change a running device to `limit`. Both buckets
/// are always given: the VMM keeps a bucket left out as it was, and takes a
/// bucket of size 0 to mean "no limit".
fn patch_limiter(limit: Option<IoLimit>) -> RateLimiter {
    let off = || TokenBucket {
        size: 0,
        one_time_burst: None,
        refill_time: 0,
    };
    let limit = limit.unwrap_or_default();
    RateLimiter {
        bandwidth: Some(
            limit
                .bytes_per_sec
                .map_or_else(off, |b| bucket(b, limit.burst_bytes)),
        ),
        ops: Some(limit.ops_per_sec.map_or_else(off, |o| bucket(o, None))),
    }
}

impl FirecrackerBackend {
    /// A new jail for VM `id`, when VMMs run under the jailer, with a user
    /// of its own from the pool (held until the jail is removed: see
    /// [`release_jail`]).
    fn new_jail(&self, id: &VmId) -> Result<Option<HeldJail>, BackendError> {
        let Some(jailer) = &self.jailer else {
            return Ok(None);
        };
        let user = jailer
            .ids
            .allocate(id.as_str())
            .map_err(BackendError::NoJailId)?;
        match Jail::new(&jailer.config, &self.binary, id.as_str(), user) {
            Ok(jail) => Ok(Some(HeldJail {
                jail,
                ids: jailer.ids.clone(),
            })),
            Err(err) => {
                jailer.ids.release(user, id.as_str());
                Err(BackendError::Jail(err))
            }
        }
    }

    /// The jail an earlier daemon made for VM `id`, its user read from the
    /// jail (see [`Jail::found`]).
    fn found_jail(&self, id: &VmId) -> Result<Option<Jail>, BackendError> {
        self.jailer
            .as_ref()
            .map(|jailer| Jail::found(&jailer.config, &self.binary, id.as_str()))
            .transpose()
            .map_err(BackendError::Jail)
    }

    /// Fails when a new VM could not get a jail now (every jail id is
    /// taken), before anything of it is started.
    pub fn check_jail_ids(&self) -> Result<(), BackendError> {
        match &self.jailer {
            Some(jailer) => jailer.ids.check_free().map_err(BackendError::NoJailId),
            None => Ok(()),
        }
    }

    fn spawn_config(
        &self,
        id: &VmId,
        spec: &VmSpec,
        workdir: &Path,
        netns: Option<PathBuf>,
        jail: Option<Jail>,
    ) -> SpawnConfig {
        let cgroups = jail
            .as_ref()
            .map(|j| cgroup_limits(j.config().cgroup_version, spec.vcpus, spec.memory_mib))
            .unwrap_or_default();
        SpawnConfig {
            binary: self.binary.clone(),
            workdir: workdir.to_owned(),
            id: id.to_string(),
            console_log_limit: self.console_log_limit,
            watch_for: vec![
                spec.readiness.console_marker().to_owned(),
                PANIC_LINE.to_owned(),
            ],
            extra_args: Vec::new(),
            netns,
            jail,
            cgroups,
        }
    }

    /// Puts the files the VMM opens where it looks for them: the root image
    /// as the relative link in `workdir`, or, under the jailer, the root
    /// image (and, for a boot, the kernel) linked into a fresh jail. Returns
    /// the VM's configuration with paths as the VMM sees them.
    fn place_files(
        &self,
        spec: &VmSpec,
        workdir: &Path,
        held: Option<&HeldJail>,
        boot: bool,
    ) -> Result<VmConfig, BackendError> {
        let mut vm = vm_config(spec);
        let Some(jail) = held else {
            vm.link_into(workdir).map_err(BackendError::Workdir)?;
            return Ok(vm);
        };
        if let Err(err) = jail.jail.prepare() {
            release_jail(&jail.jail, &jail.ids);
            return Err(BackendError::Jail(err));
        }
        let linked = (|| {
            let jail = &jail.jail;
            jail.link_in(&spec.rootfs, tfc_firecracker::vm_config::ROOTFS_LINK)?;
            if boot {
                jail.link_in(&spec.kernel, JAIL_KERNEL)?;
            }
            Ok(())
        })();
        if let Err(err) = linked {
            release_jail(&jail.jail, &jail.ids);
            return Err(BackendError::Jail(err));
        }
        vm.kernel = PathBuf::from(JAIL_KERNEL);
        Ok(vm)
    }

    /// Places the VM's files (see [`Self::place_files`]), spawns the VMM in
    /// `workdir`, waits for its API and runs `then` on it, marking each phase
    /// (`then` returns the one it reached, if any). A failure after the
    /// spawn stops the process: nothing is left behind, jail included.
    #[allow(clippy::too_many_arguments)]
    async fn launch(
        &self,
        id: &VmId,
        spec: &VmSpec,
        workdir: &Path,
        netns: Option<PathBuf>,
        boot: bool,
        priority: Priority,
        mark: &mut (dyn FnMut(BootPhase) + Send),
        then: impl AsyncFnOnce(
            &tfc_firecracker::ApiClient,
            &VmConfig,
        ) -> Result<Option<BootPhase>, BackendError>,
    ) -> Result<FirecrackerMachine, BackendError> {
        let jail = self.new_jail(id)?;
        let vm = self.place_files(spec, workdir, jail.as_ref(), boot)?;
        let mut config = self.spawn_config(
            id,
            spec,
            workdir,
            netns,
            jail.as_ref().map(|h| h.jail.clone()),
        );
        config
            .extra_args
            .extend(metrics_args(workdir, config.jail.as_ref()));
        let process = match FirecrackerProcess::spawn(&config).await {
            Ok(process) => process,
            Err(err) => {
                if let Some(held) = jail {
                    // The VMM may run though the spawn failed (the jailer
                    // forked it, then its pid could not be confirmed): it is
                    // ended before its jail goes. Off the async threads.
                    let _ = tokio::task::spawn_blocking(move || {
                        end_jailed(&held.jail);
                        release_jail(&held.jail, &held.ids);
                    })
                    .await;
                }
                return Err(BackendError::Spawn(err));
            }
        };
        mark(BootPhase::Spawned);
        let machine = self.machine(process, spec, jail, priority);
        let prepared = async {
            // Made idle now and again once its API answers: a thread it
            // started meanwhile may have been missed, and the threads it
            // starts from then on (vCPUs) inherit its main thread's policy.
            let background = async || {
                if priority == Priority::Idle {
                    machine
                        .process
                        .set_priority(Priority::Idle, Threads::All)
                        .map_err(BackendError::Priority)?;
                }
                Ok::<(), BackendError>(())
            };
            background().await?;
            machine
                .process
                .wait_api_ready(API_READY_TIMEOUT)
                .await
                .map_err(BackendError::Spawn)?;
            background().await?;
            mark(BootPhase::ApiReady);
            if let Some(reached) = then(machine.process.api(), &vm).await? {
                mark(reached);
            }
            Ok::<(), BackendError>(())
        }
        .await;
        match prepared {
            Ok(()) => Ok(machine),
            Err(e) => {
                machine.stop().await;
                Err(e)
            }
        }
    }

    fn machine(
        &self,
        process: FirecrackerProcess,
        spec: &VmSpec,
        jail: Option<HeldJail>,
        priority: Priority,
    ) -> FirecrackerMachine {
        FirecrackerMachine {
            background: std::sync::atomic::AtomicBool::new(priority == Priority::Idle),
            process,
            jail: jail.map(Box::new),
            detached: std::sync::atomic::AtomicBool::new(false),
            released: std::sync::atomic::AtomicBool::new(false),
            readiness: spec.readiness.console_marker().to_owned(),
            boot_timeout: self.boot_timeout,
            stop: self.stop,
            limits: std::sync::Mutex::new(spec.rate_limits),
            limits_pending: std::sync::atomic::AtomicBool::new(false),
            network: spec.network.is_some(),
            can_idle: self.idle_priority,
        }
    }

    /// Start-up cleanup of jails: a jail no process runs in is removed (the
    /// VM it served has ended); one whose VM is not in `recorded` has its
    /// processes ended first. Jails of recorded VMs whose VMM runs stay.
    /// (Their ids were marked taken when the backend was made.)
    pub fn reap_jails(&self, recorded: &std::collections::HashSet<String>) -> Vec<u32> {
        let Some(jailer) = &self.jailer else {
            return Vec::new();
        };
        let mut killed = Vec::new();
        for jail in Jail::all(&jailer.config, &self.binary) {
            let pids = jail.processes();
            if !pids.is_empty() && recorded.contains(jail.id()) {
                continue;
            }
            for pid in end_jailed(&jail) {
                tracing::warn!(pid, jail = %jail.dir().display(), "ended VMM left in a jail by an earlier daemon");
                killed.push(pid);
            }
            release_jail(&jail, &jailer.ids);
        }
        killed
    }

    /// The VM's jail as it is on disk, for tests and tools: `None` without
    /// the jailer.
    pub fn jail_of(&self, id: &VmId) -> Option<Jail> {
        self.found_jail(id).ok().flatten()
    }

    /// The pool of the jails' ids, for tests and tools: `None` without the
    /// jailer.
    pub fn jail_ids(&self) -> Option<&JailIdPool> {
        self.jailer.as_ref().map(|j| &*j.ids)
    }
}

/// The VMM's arguments that have it write its counters to
/// [`FIRECRACKER_METRICS_FILE`] in `workdir` (relative: the VMM runs there,
/// or in its jail's root), which the daemon's metrics sum; made now, before
/// the spawn. Metrics are not worth a failed start: a failure is logged and
/// the VMM runs without.
fn metrics_args(workdir: &Path, jail: Option<&Jail>) -> Vec<String> {
    let path = workdir.join(FIRECRACKER_METRICS_FILE);
    match metrics_file(&path, jail) {
        // On the command line, not through the API: no call is added to a
        // boot's or a restore's path.
        Ok(()) => vec![
            "--metrics-path".to_owned(),
            FIRECRACKER_METRICS_FILE.to_owned(),
        ],
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "cannot create the VMM's metrics file; no VMM metrics for this VM");
            Vec::new()
        }
    }
}

/// Creates the empty metrics file at `path` (the VMM opens it without
/// creating it). A jailed VMM writes it through a hard link in its jail,
/// owned by the jail's user; the file in `workdir` outlives the jail, so the
/// VMM's last flush is still read after the jail is gone. A jail on another
/// filesystem gets no metrics file: a link into the jail would let its user
/// choose what the daemon reads.
fn metrics_file(path: &Path, jail: Option<&Jail>) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let Some(jail) = jail else {
        return Ok(());
    };
    let user = jail.user();
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))?;
    let inside = jail.host_path(FIRECRACKER_METRICS_FILE);
    let _ = std::fs::remove_file(&inside);
    std::fs::hard_link(path, &inside)
}

impl FirecrackerMachine {
    /// Removes the VM's jail, once: call after the VMM has ended.
    async fn release(&self) {
        let Some(held) = self.jail.as_deref().cloned() else {
            return;
        };
        if self
            .released
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || release_jail(&held.jail, &held.ids)).await;
    }

    /// The VM's jail, when its VMM runs under the jailer.
    pub fn jail(&self) -> Option<&Jail> {
        self.jail.as_deref().map(|held| &held.jail)
    }

    /// The guest's state as the VMM reports it.
    async fn instance_state(&self) -> Result<InstanceState, BackendError> {
        self.process
            .api()
            .describe_instance()
            .await
            .map(|info| info.state)
            .map_err(|source| BackendError::Api {
                verb: "describe the instance",
                source,
            })
    }

    fn limits(&self) -> RateLimits {
        *self
            .limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets every device's limiter to `limits`' (none: unlimited).
    async fn apply_limits(&self, limits: &RateLimits) -> Result<(), BackendError> {
        let api = self.process.api();
        let failed = |source| BackendError::Api {
            verb: "change the rate limits",
            source,
        };
        api.patch_drive(&PartialDrive {
            drive_id: tfc_firecracker::vm_config::ROOT_DRIVE_ID.to_owned(),
            path_on_host: None,
            rate_limiter: Some(patch_limiter(limits.disk)),
        })
        .await
        .map_err(failed)?;
        if self.network {
            api.patch_network_interface(&PartialNetworkInterface {
                iface_id: tfc_firecracker::vm_config::NET_IFACE_ID.to_owned(),
                rx_rate_limiter: Some(patch_limiter(limits.net_rx)),
                tx_rate_limiter: Some(patch_limiter(limits.net_tx)),
            })
            .await
            .map_err(failed)?;
        }
        Ok(())
    }
}

impl VmBackend for FirecrackerBackend {
    type Machine = FirecrackerMachine;

    async fn probe_guest(
        &self,
        _id: &VmId,
        spec: &VmSpec,
        workdir: &Path,
    ) -> Result<(), BackendError> {
        probe_vsock(spec, workdir).await
    }

    async fn adopt(&self, request: CreateRequest<'_>) -> Result<FirecrackerMachine, BackendError> {
        let jail = self.found_jail(request.id)?;
        let config = self.spawn_config(request.id, request.spec, request.workdir, None, jail);
        match FirecrackerProcess::adopt(&config).await {
            Ok(process) => {
                // A pool's VM waiting when the earlier daemon ended still
                // runs idle; the priority it runs at is the one to undo.
                let priority = process.priority().unwrap_or(Priority::Normal);
                // The adopted VMM keeps running as its jail's user: that id
                // stays taken (marked when the backend was made) until the
                // jail is removed.
                let held = config.jail.zip(self.jailer.as_ref()).map(|(jail, jailer)| {
                    jailer.ids.mark(jail.user(), jail.id());
                    HeldJail {
                        jail,
                        ids: jailer.ids.clone(),
                    }
                });
                Ok(self.machine(process, request.spec, held, priority))
            }
            Err(err) => {
                // A VMM that cannot be taken over is ended by the caller
                // (found by its record); its jail goes here, with whatever
                // still runs in it, or it would outlive the VM.
                if let Some((jail, jailer)) = config.jail.zip(self.jailer.clone()) {
                    tokio::task::spawn_blocking(move || {
                        for pid in end_jailed(&jail) {
                            tracing::warn!(pid, "ended a jailed VMM that could not be adopted");
                        }
                        release_jail(&jail, &jailer.ids);
                    })
                    .await
                    .expect("ending a jail's processes does not panic");
                }
                Err(BackendError::Adopt(err))
            }
        }
    }

    async fn restore(
        &self,
        request: RestoreRequest<'_>,
        mark: &mut (dyn FnMut(BootPhase) + Send),
    ) -> Result<FirecrackerMachine, BackendError> {
        let spec = request.spec;
        require_file("rootfs", &spec.rootfs)?;
        check_kvm()?;
        // The snapshot names the root drive by the relative link, which
        // `launch` creates in this VM's own directory.
        let priority = if request.background && self.idle_priority {
            Priority::Idle
        } else {
            Priority::Normal
        };
        self.launch(
            request.id,
            spec,
            request.workdir,
            request.netns,
            false,
            priority,
            mark,
            async |_, _| Ok(None),
        )
        .await
    }

    async fn create(
        &self,
        request: CreateRequest<'_>,
        mark: &mut (dyn FnMut(BootPhase) + Send),
    ) -> Result<FirecrackerMachine, BackendError> {
        let spec = request.spec;
        require_file("kernel", &spec.kernel)?;
        require_file("rootfs", &spec.rootfs)?;
        check_kvm()?;
        self.launch(
            request.id,
            spec,
            request.workdir,
            request.netns,
            true,
            Priority::Normal,
            mark,
            async |api, vm| {
                vm.apply(api).await.map_err(BackendError::Configure)?;
                Ok(Some(BootPhase::Configured))
            },
        )
        .await
    }
}

impl VmMachine for FirecrackerMachine {
    fn pid(&self) -> Option<u32> {
        Some(self.process.pid())
    }

    async fn boot(&self) -> Result<(), BackendError> {
        self.process
            .api()
            .instance_start()
            .await
            .map_err(BackendError::InstanceStart)
    }

    async fn wait_ready(&self) -> Result<(), BackendError> {
        console_ready(
            self.process.console(),
            &self.readiness,
            self.boot_timeout,
            self.process.wait_exit(),
        )
        .await
    }

    async fn pause(&self) -> Result<(), BackendError> {
        self.process
            .api()
            .pause()
            .await
            .map_err(|source| BackendError::Api {
                verb: "pause",
                source,
            })
    }

    async fn load_snapshot(
        &self,
        state_file: &Path,
        memory_file: &Path,
        track_dirty_pages: bool,
        resume: bool,
    ) -> Result<(), BackendError> {
        let limits = self.limits();
        // A jailed VMM sees only its chroot: the files are linked in for
        // the load and unlinked after it (the VMM keeps its mapping).
        let (state_path, memory_path) = match self.jail() {
            None => (
                state_file.display().to_string(),
                memory_file.display().to_string(),
            ),
            Some(jail) => {
                jail.link_in(state_file, JAIL_SNAPSHOT_STATE)
                    .and_then(|()| jail.link_in(memory_file, JAIL_SNAPSHOT_MEMORY))
                    .map_err(BackendError::Jail)?;
                (
                    JAIL_SNAPSHOT_STATE.to_owned(),
                    JAIL_SNAPSHOT_MEMORY.to_owned(),
                )
            }
        };
        let load = SnapshotLoadParams {
            snapshot_path: state_path,
            mem_backend: Some(MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: memory_path,
            }),
            enable_diff_snapshots: track_dirty_pages.then_some(true),
            // A VM with limits is loaded paused and resumed here, which
            // gives it its limits (the snapshot holds none: see `snapshot`).
            resume_vm: Some(resume && limits.is_empty()),
            network_overrides: Vec::new(),
        };
        let loaded = self.process.api().load_snapshot(&load).await;
        if let Some(jail) = self.jail() {
            for name in [JAIL_SNAPSHOT_STATE, JAIL_SNAPSHOT_MEMORY] {
                let _ = std::fs::remove_file(jail.host_path(name));
            }
        }
        loaded.map_err(BackendError::Restore)?;
        if !limits.is_empty() {
            self.limits_pending
                .store(true, std::sync::atomic::Ordering::Release);
            if resume {
                self.resume().await?;
            }
        }
        Ok(())
    }

    async fn check_health(&self, running: bool) -> Result<(), BackendError> {
        let unhealthy = |what: String| Err(BackendError::Unhealthy(what));
        if let Some(reason) = self.process.exited() {
            return unhealthy(format!("the VMM {reason}"));
        }
        let state = match self.process.api().describe_instance().await {
            Ok(info) => info.state,
            Err(err) => {
                return unhealthy(format!(
                    "the VMM does not answer: {}",
                    tfc_core::error_chain(&err)
                ))
            }
        };
        let expected = if running {
            InstanceState::Running
        } else {
            InstanceState::Paused
        };
        if state != expected {
            return unhealthy(format!(
                "the VMM reports the guest {state:?}, not {expected:?}"
            ));
        }
        Ok(())
    }

    async fn ensure_running(&self) -> Result<(), BackendError> {
        match self.instance_state().await? {
            InstanceState::Running => Ok(()),
            InstanceState::Paused => self.resume().await,
            InstanceState::NotStarted => Err(BackendError::NotStarted(
                "it never loaded a snapshot or started a guest".to_owned(),
            )),
        }
    }

    /// Limits are only ever given to a running VM: those of a paused VM
    /// are kept and given to the VMM right after its next resume. (A limiter
    /// counts time; one set while the vCPUs are stopped is, at best, spent
    /// on a guest that cannot use it. In early runs here, restored VMs given
    /// a network limiter while paused did not receive after the resume; a
    /// loaded host confounded those runs, so this is a precaution.)
    async fn set_rate_limits(&self, limits: &RateLimits) -> Result<(), BackendError> {
        if self.instance_state().await? == InstanceState::Running {
            self.apply_limits(limits).await?;
        } else {
            self.limits_pending
                .store(true, std::sync::atomic::Ordering::Release);
        }
        *self
            .limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = *limits;
        Ok(())
    }

    async fn resume(&self) -> Result<(), BackendError> {
        self.process
            .api()
            .resume()
            .await
            .map_err(|source| BackendError::Api {
                verb: "resume",
                source,
            })?;
        if self
            .limits_pending
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            // The guest runs: a failure here must not read as a failed
            // resume. Kept pending for the next resume instead.
            if let Err(err) = self.apply_limits(&self.limits()).await {
                self.limits_pending
                    .store(true, std::sync::atomic::Ordering::Release);
                tracing::warn!(error = %tfc_core::error_chain(&err), "cannot give the resumed VM its rate limits");
            }
        }
        Ok(())
    }

    async fn snapshot(
        &self,
        kind: SnapshotKind,
        state_file: &Path,
        memory_file: &Path,
    ) -> Result<(), BackendError> {
        // A jailed VMM writes into its chroot; the files are moved out after.
        let (state_path, memory_path) = match self.jail() {
            None => (
                state_file.display().to_string(),
                memory_file.display().to_string(),
            ),
            Some(_) => (
                JAIL_SNAPSHOT_STATE.to_owned(),
                JAIL_SNAPSHOT_MEMORY.to_owned(),
            ),
        };
        let params = SnapshotCreateParams {
            snapshot_path: state_path,
            mem_file_path: memory_path,
            snapshot_type: Some(match kind {
                SnapshotKind::Full => SnapshotType::Full,
                SnapshotKind::Diff => SnapshotType::Diff,
            }),
        };
        // A snapshot is taken without limiters: a limiter's state is this
        // VM's (its buckets' spent budget), not something every clone should
        // start from, and a clone must not load one while paused (see
        // `set_rate_limits`). Each clone gets its spec's limits, full, at
        // its first resume; this VM gets them back at its next.
        let limits = self.limits();
        if !limits.is_empty() {
            self.apply_limits(&RateLimits::default()).await?;
        }
        let taken = self
            .process
            .api()
            .create_snapshot(&params)
            .await
            .map_err(|source| BackendError::Api {
                verb: "take a snapshot",
                source,
            });
        if !limits.is_empty() {
            self.limits_pending
                .store(true, std::sync::atomic::Ordering::Release);
        }
        taken?;
        if let Some(jail) = self.jail() {
            jail.move_out(JAIL_SNAPSHOT_STATE, state_file)
                .and_then(|()| jail.move_out(JAIL_SNAPSHOT_MEMORY, memory_file))
                .map_err(BackendError::Jail)?;
        }
        Ok(())
    }

    async fn stop(&self) -> ExitReason {
        // An idle VMM on a CPU kept busy by running guests would take its
        // time to flush and exit: it stops at normal priority.
        if let Err(err) = self.foreground() {
            tracing::debug!(error = %tfc_core::error_chain(&err), "cannot give a stopping VMM normal priority");
        }
        // The counters since the last periodic flush, while the VMM can
        // still write them; bounded, as a wedged VMM must still be stopped.
        if self.process.exited().is_none() {
            let flush = self.process.api().flush_metrics();
            let _ = tokio::time::timeout(FINAL_FLUSH_LIMIT, flush).await;
        }
        let reason = self.process.stop(self.stop).await;
        self.process.remove_socket();
        self.release().await;
        reason
    }

    async fn wait_exit(&self) -> ExitReason {
        let reason = self.process.wait_exit().await;
        self.process.remove_socket();
        self.release().await;
        reason
    }

    fn console_tail(&self) -> Vec<String> {
        self.process.console().tail()
    }

    fn detach(&self) {
        self.detached
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.process.detach();
    }

    fn foreground(&self) -> Result<(), BackendError> {
        use std::sync::atomic::Ordering;
        if !self.background.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.process
            .set_priority(Priority::Normal, Threads::All)
            .map_err(BackendError::Priority)?;
        self.background.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn foreground_control(&self) -> Result<(), BackendError> {
        use std::sync::atomic::Ordering;
        if !self.background.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.process
            .set_priority(Priority::Normal, Threads::Control)
            .map_err(BackendError::Priority)
    }

    fn background_vcpus(&self) -> Result<(), BackendError> {
        use std::sync::atomic::Ordering;
        if !self.can_idle || self.background.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Marked first: a failure half-way leaves threads idle that the
        // next foreground must find.
        self.background.store(true, Ordering::SeqCst);
        self.process
            .set_priority(Priority::Idle, Threads::Vcpus)
            .map_err(BackendError::Priority)
    }
}

/// A machine dropped without a stop (a panicking owner) takes its VMM with
/// it (see [`FirecrackerProcess`]'s drop) and its jail too. This blocks its
/// thread until the killed VMM has left the jail (bounded: [`release_jail`]);
/// done here rather than on another thread so that a VM relaunched with the
/// same id never finds its new jail removed under it.
impl Drop for FirecrackerMachine {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        let Some(held) = &self.jail else {
            return;
        };
        if self.detached.load(Ordering::SeqCst) || self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        self.process.signal(libc::SIGKILL);
        release_jail(&held.jail, &held.ids);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_limits_follow_the_vm_size_in_each_version() {
        let v1 = cgroup_limits(CgroupVersion::V1, 2, 256);
        let mib = 1024 * 1024;
        assert_eq!(
            v1,
            [
                ("memory.limit_in_bytes".to_owned(), (384 * mib).to_string()),
                ("cpu.cfs_period_us".to_owned(), "100000".to_owned()),
                ("cpu.cfs_quota_us".to_owned(), "300000".to_owned()),
            ]
        );
        let v2 = cgroup_limits(CgroupVersion::V2, 1, 128);
        assert_eq!(
            v2,
            [
                ("memory.max".to_owned(), (256 * mib).to_string()),
                ("cpu.max".to_owned(), "200000 100000".to_owned()),
            ]
        );
    }
}
