//! The qemu-tcg backend: one QEMU (`microvm` machine, TCG software emulation)
//! and one `vhost-device-vsock` per VM, controlled over QMP, readiness read
//! from the serial console. It needs no KVM and runs guest userspace on hosts
//! whose KVM cannot; it takes no snapshots, so restores, templates and pools
//! are refused with [`BackendError::Unsupported`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use tfc_api::SnapshotKind;
use tfc_core::limits::RateLimits;
use tfc_core::net::guest;
use tfc_core::{BootPhase, VmId, VmSpec, Vmm};
use tfc_qemu::{ExitReason, MachineConfig, NetDevice, QemuVm, SpawnConfig};

use super::{
    console_ready, probe_vsock, require_file, BackendError, CreateRequest, RestoreRequest,
    VmBackend, VmMachine, PANIC_LINE,
};

/// Bound on one QMP command. QEMU answers in a millisecond when idle; its
/// main loop shares the host's cores with emulated vCPUs.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// QEMU opens its QMP socket within ~100 ms of exec; this bounds a wedged start.
const QMP_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings shared by every qemu-tcg VM of the daemon.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    pub qemu: PathBuf,
    /// What `qemu-system-x86_64 --version` printed after its banner.
    pub qemu_version: String,
    pub vhost_vsock: PathBuf,
    pub vhost_vsock_version: String,
    pub boot_timeout: Duration,
    pub console_log_limit: u64,
    /// Each step of a stop (QMP quit, SIGTERM, SIGKILL) waits this long.
    pub stop_grace: Duration,
}

/// One VM backed by QEMU.
#[derive(Debug)]
pub struct QemuMachine {
    vm: QemuVm,
    readiness: String,
    boot_timeout: Duration,
    stop_grace: Duration,
}

fn unsupported(operation: &'static str) -> BackendError {
    BackendError::Unsupported {
        vmm: Vmm::QemuTcg,
        operation,
    }
}

fn qmp_error(verb: &'static str) -> impl FnOnce(tfc_qemu::QmpError) -> BackendError {
    move |source| BackendError::Qmp { verb, source }
}

impl QemuBackend {
    fn spawn_config(&self, spec: &VmSpec, workdir: &Path, netns: Option<PathBuf>) -> SpawnConfig {
        SpawnConfig {
            qemu: self.qemu.clone(),
            vhost_vsock: self.vhost_vsock.clone(),
            workdir: workdir.to_owned(),
            machine: MachineConfig {
                kernel: spec.kernel.clone(),
                boot_args: spec.boot_args.clone(),
                rootfs: spec.rootfs.clone(),
                vcpus: spec.vcpus,
                memory_mib: spec.memory_mib,
                vsock: spec.vsock,
                network: spec.network.as_ref().map(|_| NetDevice {
                    tap: guest::TAP_NAME.to_owned(),
                    mac: guest::mac_string(guest::GUEST_MAC),
                }),
            },
            console_log_limit: self.console_log_limit,
            watch_for: vec![
                spec.readiness.console_marker().to_owned(),
                PANIC_LINE.to_owned(),
            ],
            qmp_timeout: QMP_TIMEOUT,
            netns,
        }
    }

    fn machine(&self, vm: QemuVm, spec: &VmSpec) -> QemuMachine {
        QemuMachine {
            vm,
            readiness: spec.readiness.console_marker().to_owned(),
            boot_timeout: self.boot_timeout,
            stop_grace: self.stop_grace,
        }
    }
}

impl VmBackend for QemuBackend {
    type Machine = QemuMachine;

    /// Spawns the VM's processes with its vCPUs stopped and waits for QMP
    /// (`boot` starts the guest). A failure after the spawn stops what was
    /// started: nothing is left behind.
    async fn create(
        &self,
        request: CreateRequest<'_>,
        mark: &mut (dyn FnMut(BootPhase) + Send),
    ) -> Result<QemuMachine, BackendError> {
        let spec = request.spec;
        require_file("kernel", &spec.kernel)?;
        require_file("rootfs", &spec.rootfs)?;
        let vm = QemuVm::spawn(&self.spawn_config(spec, request.workdir, request.netns.clone()))
            .await
            .map_err(BackendError::QemuSpawn)?;
        mark(BootPhase::Spawned);
        match vm.wait_qmp_ready(QMP_READY_TIMEOUT).await {
            Ok(_) => {
                mark(BootPhase::ApiReady);
                Ok(self.machine(vm, spec))
            }
            Err(err) => {
                vm.stop(self.stop_grace).await;
                Err(BackendError::QemuSpawn(err))
            }
        }
    }

    async fn restore(
        &self,
        _request: RestoreRequest<'_>,
        _mark: &mut (dyn FnMut(BootPhase) + Send),
    ) -> Result<QemuMachine, BackendError> {
        Err(unsupported("snapshot restores"))
    }

    async fn probe_guest(
        &self,
        _id: &VmId,
        spec: &VmSpec,
        workdir: &Path,
    ) -> Result<(), BackendError> {
        probe_vsock(spec, workdir).await
    }

    async fn adopt(&self, request: CreateRequest<'_>) -> Result<QemuMachine, BackendError> {
        let vm = QemuVm::adopt(&self.spawn_config(request.spec, request.workdir, None))
            .await
            .map_err(BackendError::QemuAdopt)?;
        Ok(self.machine(vm, request.spec))
    }
}

impl VmMachine for QemuMachine {
    fn pid(&self) -> Option<u32> {
        Some(self.vm.pid())
    }

    async fn boot(&self) -> Result<(), BackendError> {
        self.vm
            .qmp()
            .cont()
            .await
            .map_err(qmp_error("start the guest"))
    }

    async fn wait_ready(&self) -> Result<(), BackendError> {
        console_ready(
            self.vm.console(),
            &self.readiness,
            self.boot_timeout,
            self.vm.wait_exit(),
        )
        .await
    }

    async fn pause(&self) -> Result<(), BackendError> {
        self.vm.qmp().stop().await.map_err(qmp_error("pause"))
    }

    async fn resume(&self) -> Result<(), BackendError> {
        self.vm.qmp().cont().await.map_err(qmp_error("resume"))
    }

    async fn load_snapshot(
        &self,
        _state_file: &Path,
        _memory_file: &Path,
        _track_dirty_pages: bool,
        _resume: bool,
    ) -> Result<(), BackendError> {
        Err(unsupported("snapshot restores"))
    }

    async fn check_health(&self, running: bool) -> Result<(), BackendError> {
        let unhealthy = |what: String| Err(BackendError::Unhealthy(what));
        if let Some(reason) = self.vm.exited() {
            return unhealthy(format!("QEMU {reason}"));
        }
        let status = match self.vm.qmp().query_status().await {
            Ok(status) => status,
            Err(err) => {
                return unhealthy(format!(
                    "QEMU does not answer: {}",
                    tfc_core::error_chain(&err)
                ))
            }
        };
        let expected = if running { "running" } else { "paused" };
        if status.status != expected {
            return unhealthy(format!(
                "QEMU reports the guest {}, not {expected}",
                status.status
            ));
        }
        Ok(())
    }

    async fn set_rate_limits(&self, _: &RateLimits) -> Result<(), BackendError> {
        Err(BackendError::Unsupported {
            vmm: Vmm::QemuTcg,
            operation: "rate limits",
        })
    }

    async fn ensure_running(&self) -> Result<(), BackendError> {
        let status = self
            .vm
            .qmp()
            .query_status()
            .await
            .map_err(qmp_error("report the guest's status"))?;
        match status.status.as_str() {
            "running" => Ok(()),
            "paused" => self.resume().await,
            "prelaunch" => Err(BackendError::NotStarted(
                "QEMU never started the guest".to_owned(),
            )),
            other => Err(BackendError::Unhealthy(format!(
                "QEMU reports the guest {other}"
            ))),
        }
    }

    async fn snapshot(
        &self,
        _kind: SnapshotKind,
        _state_file: &Path,
        _memory_file: &Path,
    ) -> Result<(), BackendError> {
        Err(unsupported("snapshots"))
    }

    async fn stop(&self) -> ExitReason {
        self.vm.stop(self.stop_grace).await
    }

    async fn wait_exit(&self) -> ExitReason {
        self.vm.wait_exit().await
    }

    fn console_tail(&self) -> Vec<String> {
        self.vm.console().tail()
    }

    fn detach(&self) {
        self.vm.detach();
    }

    fn foreground(&self) -> Result<(), BackendError> {
        // Never in the background: this backend takes no snapshots, so it
        // restores nothing and no pool prewarms its VMs.
        Ok(())
    }

    fn foreground_control(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn background_vcpus(&self) -> Result<(), BackendError> {
        Ok(())
    }
}
