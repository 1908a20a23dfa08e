//! The Firecracker backend: one `firecracker` process per VM, configured through
//! its API socket, readiness read from its serial console.

use std::path::{Path, PathBuf};
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
use tfc_firecracker::{ExitReason, FirecrackerProcess, SpawnConfig, StopPolicy, VmConfig};

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
}

/// One VM backed by a Firecracker process.
#[derive(Debug)]
pub struct FirecrackerMachine {
    process: FirecrackerProcess,
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
    fn spawn_config(
        &self,
        id: &VmId,
        spec: &VmSpec,
        workdir: &Path,
        netns: Option<PathBuf>,
    ) -> SpawnConfig {
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
        }
    }

    /// Links the root image into `workdir`, spawns the VMM there, waits for its
    /// API and runs `then` on it, marking each phase (`then` returns the one it
    /// reached, if any). A failure after the spawn stops the process: nothing
    /// is left behind.
    async fn launch(
        &self,
        id: &VmId,
        spec: &VmSpec,
        workdir: &Path,
        netns: Option<PathBuf>,
        mark: &mut (dyn FnMut(BootPhase) + Send),
        then: impl AsyncFnOnce(&tfc_firecracker::ApiClient) -> Result<Option<BootPhase>, BackendError>,
    ) -> Result<FirecrackerMachine, BackendError> {
        vm_config(spec)
            .link_into(workdir)
            .map_err(BackendError::Workdir)?;
        let process = FirecrackerProcess::spawn(&self.spawn_config(id, spec, workdir, netns))
            .await
            .map_err(BackendError::Spawn)?;
        mark(BootPhase::Spawned);
        let machine = self.machine(process, spec);
        let prepared = async {
            machine
                .process
                .wait_api_ready(API_READY_TIMEOUT)
                .await
                .map_err(BackendError::Spawn)?;
            mark(BootPhase::ApiReady);
            enable_metrics(machine.process.api(), workdir).await;
            if let Some(reached) = then(machine.process.api()).await? {
                mark(reached);
            }
            Ok::<(), BackendError>(())
        }
        .await;
        match prepared {
            Ok(()) => Ok(machine),
            Err(e) => {
                machine.process.stop(StopPolicy::default()).await;
                Err(e)
            }
        }
    }

    fn machine(&self, process: FirecrackerProcess, spec: &VmSpec) -> FirecrackerMachine {
        FirecrackerMachine {
            process,
            readiness: spec.readiness.console_marker().to_owned(),
            boot_timeout: self.boot_timeout,
            stop: self.stop,
            limits: std::sync::Mutex::new(spec.rate_limits),
            limits_pending: std::sync::atomic::AtomicBool::new(false),
            network: spec.network.is_some(),
        }
    }
}

/// Has the VMM write its counters to [`FIRECRACKER_METRICS_FILE`] in
/// `workdir` (relative: the VMM runs there), which the daemon's metrics sum.
/// Allowed before a boot and before a snapshot load. Metrics are not worth
/// a failed start: a failure is logged.
async fn enable_metrics(api: &tfc_firecracker::ApiClient, workdir: &Path) {
    // The VMM opens the file without creating it.
    let path = workdir.join(FIRECRACKER_METRICS_FILE);
    if let Err(err) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        tracing::warn!(path = %path.display(), %err, "cannot create the VMM's metrics file; no VMM metrics for this VM");
        return;
    }
    let body = tfc_firecracker::models::Metrics {
        metrics_path: FIRECRACKER_METRICS_FILE.to_owned(),
    };
    if let Err(err) = api.put_metrics(&body).await {
        tracing::warn!(error = %tfc_core::error_chain(&err), "the VMM refused its metrics file; no VMM metrics for this VM");
    }
}

impl FirecrackerMachine {
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
        let config = self.spawn_config(request.id, request.spec, request.workdir, None);
        let process = FirecrackerProcess::adopt(&config)
            .await
            .map_err(BackendError::Adopt)?;
        Ok(self.machine(process, request.spec))
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
        self.launch(
            request.id,
            spec,
            request.workdir,
            request.netns,
            mark,
            async |_| Ok(None),
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
        let vm = vm_config(spec);
        self.launch(
            request.id,
            spec,
            request.workdir,
            request.netns,
            mark,
            async |api| {
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
        let load = SnapshotLoadParams {
            snapshot_path: state_file.display().to_string(),
            mem_backend: Some(MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: memory_file.display().to_string(),
            }),
            enable_diff_snapshots: track_dirty_pages.then_some(true),
            // A VM with limits is loaded paused and resumed here, which
            // gives it its limits (the snapshot holds none: see `snapshot`).
            resume_vm: Some(resume && limits.is_empty()),
            network_overrides: Vec::new(),
        };
        self.process
            .api()
            .load_snapshot(&load)
            .await
            .map_err(BackendError::Restore)?;
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
        let params = SnapshotCreateParams {
            snapshot_path: state_file.display().to_string(),
            mem_file_path: memory_file.display().to_string(),
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
        taken
    }

    async fn stop(&self) -> ExitReason {
        // The counters since the last periodic flush, while the VMM can
        // still write them; bounded, as a wedged VMM must still be stopped.
        if self.process.exited().is_none() {
            let flush = self.process.api().flush_metrics();
            let _ = tokio::time::timeout(FINAL_FLUSH_LIMIT, flush).await;
        }
        let reason = self.process.stop(self.stop).await;
        self.process.remove_socket();
        reason
    }

    async fn wait_exit(&self) -> ExitReason {
        let reason = self.process.wait_exit().await;
        self.process.remove_socket();
        reason
    }

    fn console_tail(&self) -> Vec<String> {
        self.process.console().tail()
    }

    fn detach(&self) {
        self.process.detach();
    }
}
