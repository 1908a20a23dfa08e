//! `tfc doctor`: what this host can do, as a list of checks with evidence
//! plus typed answers other code uses to pick lanes and profiles (which
//! backends can run VMs here, and whether their guests run userspace).
//!
//! Modules:
//! - [`boot`]: the boot probe that answers "can guest userspace run under
//!   Firecracker here?" by booting the built assets, with a cached verdict.

pub mod boot;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use tfc_core::error_chain;

use crate::assets::binaries::{self, Binary, BinaryAsset, BinarySource};
use tfc_store::{Store, StoreStats};

use crate::assets::{self, find_on_path, AssetState, HostTools, Manifest};
use crate::kvm::{self, KvmKind};
use crate::profile::Profile;
use crate::qemu;

/// One check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Ok,
    /// Works with limits, or something optional is missing.
    Warn,
    /// Something the daemon needs is missing; `tfc doctor` exits non-zero.
    Fail,
    /// Not determined (e.g. the boot probe has not run).
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub status: CheckStatus,
    pub summary: String,
    /// The command or file looked at, and what it showed.
    pub evidence: String,
}

impl Check {
    fn new(
        name: &str,
        status: CheckStatus,
        summary: impl Into<String>,
        evidence: impl Into<String>,
    ) -> Self {
        Check {
            name: name.to_string(),
            status,
            summary: summary.into(),
            evidence: evidence.into(),
        }
    }
}

/// Can a Firecracker guest run userspace (init scripts, the agent) here?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestUserspace {
    Yes,
    No,
    Unknown,
}

impl GuestUserspace {
    pub fn as_str(self) -> &'static str {
        match self {
            GuestUserspace::Yes => "yes",
            GuestUserspace::No => "no",
            GuestUserspace::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    V1,
    V2,
    Unknown,
}

/// Everything `tfc doctor` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostReport {
    /// The data directory whose assets and cached verdicts were examined.
    pub data_dir: PathBuf,
    /// `uname -r`.
    pub host_kernel: String,
    pub kvm: KvmKind,
    /// `/dev/kvm` opened and answered API version 12.
    pub kvm_usable: bool,
    pub recommended_profile: Profile,
    pub guest_userspace: GuestUserspace,
    pub cgroup: CgroupVersion,
    pub firecracker: Option<BinaryAsset>,
    pub jailer: Option<BinaryAsset>,
    /// The manifest exists and every asset in it is present and current.
    pub assets_ready: bool,
    /// What the daemon's state database holds, when there is one.
    pub store: Option<StoreStats>,
    /// Which backends can run VMs on this host.
    pub backends: Vec<BackendSupport>,
    pub checks: Vec<Check>,
}

/// Whether this host can run VMs on one backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendSupport {
    pub backend: tfc_core::Vmm,
    pub usable: bool,
    /// Whether guest userspace (init scripts, the agent) runs under it: for
    /// Firecracker the boot probe's verdict; software emulation runs it
    /// whenever the backend is usable.
    pub guest_userspace: GuestUserspace,
    /// Versions when usable, else what is missing and how to get it.
    pub summary: String,
}

impl HostReport {
    /// A required check failed.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == CheckStatus::Fail)
    }

    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// `uname -r`, read from procfs.
pub fn host_kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Runs every check. Never fails: what cannot be determined is reported.
pub fn probe(data_dir: &Path) -> HostReport {
    let tools = HostTools::system();
    let host_kernel = host_kernel_release();
    let mut checks = Vec::new();

    let (kvm_check, kvm_usable) = kvm_device_check(Path::new(kvm::KVM_DEVICE));
    checks.push(kvm_check);
    let detection = kvm::detect();
    checks.push(kvm_kind_check(&detection));
    let recommended_profile = detection.kind.recommended_profile();

    let manifest = assets::load_manifest(data_dir).ok();
    let (fc_check, firecracker) = binary_check(
        &tools,
        binaries::FIRECRACKER,
        manifest.as_ref().map(|m| &m.firecracker),
    );
    checks.push(fc_check);
    let (jailer_check, jailer) = binary_check(
        &tools,
        binaries::JAILER,
        manifest.as_ref().map(|m| &m.jailer),
    );
    checks.push(jailer_check);

    let (assets_check, assets_ready) = assets_check(data_dir, &tools, recommended_profile);
    checks.push(assets_check);

    let (gu_check, guest_userspace) =
        guest_userspace_check(data_dir, manifest.as_ref(), &host_kernel, detection.kind);
    checks.push(gu_check);

    let (store_check, store) = store_check(data_dir);
    checks.push(store_check);
    let qemu = qemu::QEMU.find(None);
    let vhost_vsock = qemu::VHOST_VSOCK.find(None);
    checks.push(qemu_check(&qemu));
    checks.push(tun_check(Path::new("/dev/net/tun")));
    checks.push(netns_check());
    checks.push(nft_check());
    let (cg_check, cgroup) = cgroup_check(Path::new("/sys/fs/cgroup"));
    checks.push(cg_check);
    checks.push(vhost_vsock_check(&vhost_vsock));
    let backends = vec![
        firecracker_support(kvm_usable, firecracker.as_ref(), guest_userspace),
        qemu_support(&qemu, &vhost_vsock),
    ];

    HostReport {
        data_dir: data_dir.to_owned(),
        host_kernel,
        kvm: detection.kind,
        kvm_usable,
        recommended_profile,
        guest_userspace,
        cgroup,
        firecracker,
        jailer,
        assets_ready,
        store,
        backends,
        checks,
    }
}

fn firecracker_support(
    kvm_usable: bool,
    firecracker: Option<&BinaryAsset>,
    guest_userspace: GuestUserspace,
) -> BackendSupport {
    let (usable, summary) = match (kvm_usable, firecracker) {
        (true, Some(fc)) => (true, format!("{}, /dev/kvm usable", fc.version)),
        (false, Some(_)) => (false, "/dev/kvm is not usable".to_owned()),
        (true, None) => (
            false,
            "firecracker not found: run `tfc assets build`".to_owned(),
        ),
        (false, None) => (
            false,
            "/dev/kvm is not usable and firecracker is not found".to_owned(),
        ),
    };
    BackendSupport {
        backend: tfc_core::Vmm::Firecracker,
        usable,
        guest_userspace: if usable {
            guest_userspace
        } else {
            GuestUserspace::No
        },
        summary,
    }
}

fn qemu_support(
    qemu: &Result<qemu::Found, qemu::ProgramError>,
    vhost_vsock: &Result<qemu::Found, qemu::ProgramError>,
) -> BackendSupport {
    let (usable, summary) = match (qemu, vhost_vsock) {
        (Ok(q), Ok(v)) => (
            true,
            format!("QEMU {}, vhost-device-vsock {}", q.version, v.version),
        ),
        (q, v) => {
            let missing: Vec<String> = [q.as_ref().err(), v.as_ref().err()]
                .into_iter()
                .flatten()
                .map(|e| e.to_string())
                .collect();
            (false, missing.join("; "))
        }
    };
    BackendSupport {
        backend: tfc_core::Vmm::QemuTcg,
        usable,
        guest_userspace: if usable {
            GuestUserspace::Yes
        } else {
            GuestUserspace::No
        },
        summary,
    }
}

fn kvm_device_check(path: &Path) -> (Check, bool) {
    match kvm::check_device(path) {
        Ok(v) => (
            Check::new(
                "kvm",
                CheckStatus::Ok,
                format!("{} usable", path.display()),
                format!(
                    "open({}, O_RDWR) ok; ioctl KVM_GET_API_VERSION = {v}",
                    path.display()
                ),
            ),
            true,
        ),
        Err(e) => (
            Check::new("kvm", CheckStatus::Fail, e.to_string(), error_chain(&e)),
            false,
        ),
    }
}

fn kvm_kind_check(d: &kvm::KvmDetection) -> Check {
    let (status, summary) = match d.kind {
        KvmKind::Pvm => (
            CheckStatus::Warn,
            "kvm_pvm (this host is itself a VM): use the nested profile; guests boot in ~25 s",
        ),
        KvmKind::Intel => (CheckStatus::Ok, "kvm_intel (hardware virtualization)"),
        KvmKind::Amd => (CheckStatus::Ok, "kvm_amd (hardware virtualization)"),
        KvmKind::None => (
            CheckStatus::Warn,
            "no KVM module loaded: load kvm_intel or kvm_amd",
        ),
    };
    Check::new("kvm-kind", status, summary, d.evidence.clone())
}

/// The binary from the manifest if there is one, else from `$PATH`.
fn binary_check(
    tools: &HostTools,
    bin: Binary,
    recorded: Option<&BinaryAsset>,
) -> (Check, Option<BinaryAsset>) {
    let found = match recorded {
        Some(r) => Some((r.path.clone(), r.source, "assets manifest")),
        None => tools
            .find_program(bin.name)
            .map(|p| (p, BinarySource::Path, "PATH")),
    };
    let Some((path, source, origin)) = found else {
        return (
            Check::new(
                bin.name,
                CheckStatus::Fail,
                format!(
                    "{} not found: run `tfc assets build` (downloads it) or install it on PATH",
                    bin.name
                ),
                format!("no assets manifest; `{}` not on PATH", bin.name),
            ),
            None,
        );
    };
    match binaries::describe(&path, bin, source) {
        Ok(asset) => {
            let status = if asset.is_supported_version() {
                CheckStatus::Ok
            } else {
                CheckStatus::Warn
            };
            let summary = if status == CheckStatus::Ok {
                format!("{} at {}", asset.version, path.display())
            } else {
                format!(
                    "{} at {}: tfc is written for v1.12",
                    asset.version,
                    path.display()
                )
            };
            let evidence = format!(
                "from {origin}; `{} --version`: {}; sha256 {}",
                path.display(),
                asset.version,
                asset.sha256
            );
            (Check::new(bin.name, status, summary, evidence), Some(asset))
        }
        Err(e) => (
            Check::new(
                bin.name,
                CheckStatus::Fail,
                format!(
                    "{} at {} does not run: run `tfc assets build`",
                    bin.name,
                    path.display()
                ),
                format!("from {origin}: {}", error_chain(&e)),
            ),
            None,
        ),
    }
}

fn assets_check(data_dir: &Path, tools: &HostTools, recommended: Profile) -> (Check, bool) {
    let st = assets::status_with(data_dir, tools);
    let evidence = st
        .items
        .iter()
        .map(|i| format!("{} {} {}", i.name, i.state.as_str(), i.path.display()))
        .collect::<Vec<_>>()
        .join("; ");
    let not_ready: Vec<String> = st
        .items
        .iter()
        .filter(|i| i.state != AssetState::Present)
        .map(|i| format!("{} {}", i.name, i.state.as_str()))
        .collect();
    let check = match st.profile {
        None => Check::new(
            "assets",
            CheckStatus::Warn,
            "no assets: run `tfc assets build`",
            evidence,
        ),
        Some(_) if !not_ready.is_empty() => Check::new(
            "assets",
            CheckStatus::Warn,
            format!("{}: run `tfc assets build`", not_ready.join(", ")),
            evidence,
        ),
        Some(p) if p != recommended => Check::new(
            "assets",
            CheckStatus::Warn,
            format!("built for profile {p}, this host wants {recommended}: run `tfc assets build --profile {recommended}`"),
            evidence,
        ),
        Some(p) => Check::new(
            "assets",
            CheckStatus::Ok,
            format!("profile {p}, all present ({})", st.manifest_path.display()),
            evidence,
        ),
    };
    (check, st.ready())
}

fn guest_userspace_check(
    data_dir: &Path,
    manifest: Option<&Manifest>,
    host_kernel: &str,
    kind: KvmKind,
) -> (Check, GuestUserspace) {
    let name = "guest-userspace";
    let cached = manifest.and_then(|m| boot::cached_verdict(data_dir, m, host_kernel));
    match cached {
        Some(v) if v.guest_userspace == GuestUserspace::Yes => (
            Check::new(
                name,
                CheckStatus::Ok,
                format!("yes: the boot probe reached GUEST-READY ({})", v.probed_at),
                v.evidence,
            ),
            GuestUserspace::Yes,
        ),
        Some(v) if v.guest_userspace == GuestUserspace::No => (
            Check::new(
                name,
                CheckStatus::Warn,
                format!(
                    "no: guest userspace does not run under Firecracker here ({}); guest-userspace tests use QEMU TCG",
                    v.probed_at
                ),
                v.evidence,
            ),
            GuestUserspace::No,
        ),
        _ => {
            let mut summary = "unknown: run `tfc doctor --boot-probe`".to_string();
            if kind == KvmKind::Pvm {
                summary.push_str(
                    " (hint: on kvm_pvm hosts HOST-NOTES expects no: guest system calls fault)",
                );
            }
            let evidence = match manifest {
                None => "no assets manifest, so no boot probe can run yet".to_string(),
                Some(_) => format!(
                    "no cached verdict for these assets and host kernel in {}",
                    boot::cache_path(data_dir).display()
                ),
            };
            (
                Check::new(name, CheckStatus::Unknown, summary, evidence),
                GuestUserspace::Unknown,
            )
        }
    }
}

/// First line of a command's stdout (or stderr), or why it did not run.
/// The program is looked up like [`find_on_path`] does, so tools in the sbin
/// directories (`nft`) count even when a user's `$PATH` lacks them.
fn first_line_of(program: &str, args: &[&str]) -> Result<String, String> {
    let shown = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let Some(path) = find_on_path(program) else {
        return Err(format!(
            "`{program}` is not on PATH (nor in /usr/sbin, /sbin, /usr/local/sbin)"
        ));
    };
    match crate::assets::tool::output_within(
        Command::new(path).args(args),
        std::time::Duration::from_secs(5),
    ) {
        Ok(out) if out.status.success() => {
            let text = if out.stdout.is_empty() {
                &out.stderr
            } else {
                &out.stdout
            };
            Ok(first_line(&String::from_utf8_lossy(text)))
        }
        Ok(out) => Err(format!(
            "`{shown}` failed ({}): {}",
            out.status,
            first_line(&String::from_utf8_lossy(&out.stderr))
        )),
        Err(e) => Err(format!("`{shown}` did not run: {e}")),
    }
}

/// The first non-empty line, trimmed.
pub fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

fn qemu_check(found: &Result<qemu::Found, qemu::ProgramError>) -> Check {
    match found {
        Ok(q) => Check::new(
            "qemu-tcg",
            CheckStatus::Ok,
            format!(
                "QEMU {} at {}: the qemu-tcg backend can run guests (with vhost-device-vsock)",
                q.version,
                q.path.display()
            ),
            format!("`{} --version`: {}", q.path.display(), q.version),
        ),
        Err(e) => Check::new(
            "qemu-tcg",
            CheckStatus::Warn,
            format!("{e} (needed by the qemu-tcg backend)"),
            error_chain(e),
        ),
    }
}

/// The daemon's state database: readable, and what it holds.
fn store_check(data_dir: &Path) -> (Check, Option<StoreStats>) {
    let path = data_dir.join(tfc_store::STATE_DB_FILE);
    if !path.exists() {
        let check = Check::new(
            "state-store",
            CheckStatus::Ok,
            "no state database yet (`tfc serve` creates it)",
            format!("{} does not exist", path.display()),
        );
        return (check, None);
    }
    match tfc_store::SqliteStore::open(&path).and_then(|store| store.stats()) {
        Ok(stats) => {
            let rows: Vec<String> = stats
                .rows
                .iter()
                .map(|(table, n)| format!("{n} {table}"))
                .collect();
            let age = stats.last_write_ms.map_or_else(
                || "never written".to_owned(),
                |ms| {
                    let now = tfc_core::unix_ms(std::time::SystemTime::now());
                    format!("last write {} s ago", now.saturating_sub(ms) / 1000)
                },
            );
            let check = Check::new(
                "state-store",
                CheckStatus::Ok,
                format!(
                    "sqlite schema v{}: {}; {} KiB; {age}",
                    stats.schema_version,
                    rows.join(", "),
                    stats.size_bytes.unwrap_or(0) / 1024
                ),
                format!("opened {} (quick_check passed)", path.display()),
            );
            (check, Some(stats))
        }
        Err(e) => (
            Check::new(
                "state-store",
                CheckStatus::Fail,
                error_chain(&e),
                format!("opening {}", path.display()),
            ),
            None,
        ),
    }
}

fn tun_check(path: &Path) -> Check {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => Check::new(
            "tun",
            CheckStatus::Ok,
            format!("{} openable", path.display()),
            format!("open({}, O_RDWR) ok", path.display()),
        ),
        Err(e) => {
            let fix = match e.kind() {
                std::io::ErrorKind::NotFound => "load the tun module (`modprobe tun`)",
                std::io::ErrorKind::PermissionDenied => "run as root (or grant CAP_NET_ADMIN)",
                _ => "check the tun driver",
            };
            Check::new(
                "tun",
                CheckStatus::Fail,
                format!("cannot open {}: {fix}", path.display()),
                format!("open({}, O_RDWR): {e}", path.display()),
            )
        }
    }
}

fn netns_check() -> Check {
    match first_line_of("unshare", &["-n", "true"]) {
        Ok(_) => Check::new(
            "netns",
            CheckStatus::Ok,
            "network namespaces can be created",
            "`unshare -n true`: exit 0",
        ),
        Err(e) => Check::new(
            "netns",
            CheckStatus::Fail,
            "cannot create a network namespace: run as root (CAP_SYS_ADMIN)",
            e,
        ),
    }
}

fn nft_check() -> Check {
    match first_line_of("nft", &["--version"]) {
        Ok(v) => Check::new(
            "nftables",
            CheckStatus::Ok,
            v.clone(),
            format!("`nft --version`: {v}"),
        ),
        Err(e) => Check::new(
            "nftables",
            CheckStatus::Warn,
            "nft missing: install nftables (needed for VM NAT)",
            e,
        ),
    }
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Classifies `/sys/fs/cgroup` by its filesystem magic. A tmpfs there holds
/// one directory per v1 controller (and `unified` on hybrid systems).
pub fn cgroup_version(fs_magic: i64, entries: &[String]) -> (CgroupVersion, String) {
    match fs_magic {
        CGROUP2_SUPER_MAGIC => (CgroupVersion::V2, "cgroup v2 (unified)".to_string()),
        TMPFS_MAGIC => {
            let mut controllers: Vec<&str> = entries
                .iter()
                .map(String::as_str)
                .filter(|e| *e != "unified" && *e != "systemd")
                .collect();
            controllers.sort_unstable();
            let hybrid = if entries.iter().any(|e| e == "unified") {
                ", hybrid (v2 at unified/)"
            } else {
                ""
            };
            (
                CgroupVersion::V1,
                format!("cgroup v1{hybrid}; controllers: {}", controllers.join(" ")),
            )
        }
        other => (
            CgroupVersion::Unknown,
            format!("unrecognized filesystem magic {other:#x}"),
        ),
    }
}

fn statfs_magic(path: &Path) -> std::io::Result<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: an all-zero statfs is a valid value of a plain C struct.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `buf` is a valid, writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut buf) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // f_type's width differs between libcs; the magic fits either way.
    #[allow(clippy::unnecessary_cast)]
    Ok(buf.f_type as i64)
}

fn cgroup_check(path: &Path) -> (Check, CgroupVersion) {
    match statfs_magic(path) {
        Ok(magic) => {
            let entries: Vec<String> = std::fs::read_dir(path)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let (version, summary) = cgroup_version(magic, &entries);
            let status = if version == CgroupVersion::Unknown {
                CheckStatus::Unknown
            } else {
                CheckStatus::Ok
            };
            (
                Check::new(
                    "cgroup",
                    status,
                    summary,
                    format!("statfs({}).f_type = {magic:#x}", path.display()),
                ),
                version,
            )
        }
        Err(e) => (
            Check::new(
                "cgroup",
                CheckStatus::Unknown,
                format!("cannot statfs {}", path.display()),
                format!("statfs({}): {e}", path.display()),
            ),
            CgroupVersion::Unknown,
        ),
    }
}

fn vhost_vsock_check(found: &Result<qemu::Found, qemu::ProgramError>) -> Check {
    match found {
        Ok(v) if v.version == qemu::VHOST_VSOCK_VERSION => Check::new(
            "vhost-device-vsock",
            CheckStatus::Ok,
            format!(
                "{} at {}: vsock for qemu-tcg guests",
                v.version,
                v.path.display()
            ),
            format!("`{} --version`: {}", v.path.display(), v.version),
        ),
        Ok(v) => Check::new(
            "vhost-device-vsock",
            CheckStatus::Warn,
            format!(
                "{} at {}: tfc is tested with {}; {}",
                v.version,
                v.path.display(),
                qemu::VHOST_VSOCK_VERSION,
                qemu::VHOST_VSOCK.install
            ),
            format!("`{} --version`: {}", v.path.display(), v.version),
        ),
        Err(e) => Check::new(
            "vhost-device-vsock",
            CheckStatus::Warn,
            format!("{e} (gives qemu-tcg guests their vsock)"),
            error_chain(e),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_cgroup_filesystems() {
        let v1: Vec<String> = ["cpu", "memory", "unified", "systemd", "blkio"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (v, s) = cgroup_version(TMPFS_MAGIC, &v1);
        assert_eq!(v, CgroupVersion::V1);
        assert_eq!(
            s,
            "cgroup v1, hybrid (v2 at unified/); controllers: blkio cpu memory"
        );
        assert_eq!(
            cgroup_version(CGROUP2_SUPER_MAGIC, &[]).0,
            CgroupVersion::V2
        );
        assert_eq!(cgroup_version(0xEF53, &[]).0, CgroupVersion::Unknown);
    }

    #[test]
    fn first_line_skips_blanks() {
        assert_eq!(
            first_line("\n  nftables v1.0.6 (Lester Gooch #5)\nmore"),
            "nftables v1.0.6 (Lester Gooch #5)"
        );
        assert_eq!(first_line(""), "");
    }

    #[test]
    fn tun_and_kvm_failures_say_what_to_do() {
        let c = tun_check(Path::new("/nonexistent/tun"));
        assert_eq!(c.status, CheckStatus::Fail);
        assert!(c.summary.contains("modprobe tun"), "{}", c.summary);
        let (c, usable) = kvm_device_check(Path::new("/nonexistent/kvm"));
        assert!(!usable);
        assert_eq!(c.status, CheckStatus::Fail);
        assert!(
            c.summary.contains("run on a host with virtualization"),
            "{}",
            c.summary
        );
    }

    #[test]
    fn unknown_guest_userspace_hints_for_pvm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, gu) = guest_userspace_check(dir.path(), None, "6.1", KvmKind::Pvm);
        assert_eq!(gu, GuestUserspace::Unknown);
        assert_eq!(c.status, CheckStatus::Unknown);
        assert!(
            c.summary
                .starts_with("unknown: run `tfc doctor --boot-probe`"),
            "{}",
            c.summary
        );
        assert!(c.summary.contains("HOST-NOTES expects no"), "{}", c.summary);
        let (c, _) = guest_userspace_check(dir.path(), None, "6.1", KvmKind::Intel);
        assert!(!c.summary.contains("HOST-NOTES"), "{}", c.summary);
    }

    #[test]
    fn missing_binary_fails_with_a_fix() {
        let tools = HostTools::with_root("/nonexistent");
        let (c, asset) = binary_check(&tools, binaries::FIRECRACKER, None);
        assert_eq!(c.status, CheckStatus::Fail);
        assert!(asset.is_none());
        assert!(
            c.summary.contains("run `tfc assets build`"),
            "{}",
            c.summary
        );
    }

    #[test]
    fn probe_runs_on_any_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = probe(dir.path());
        assert!(!report.checks.is_empty());
        assert_eq!(report.guest_userspace, GuestUserspace::Unknown);
        assert!(report
            .check("assets")
            .is_some_and(|c| c.status == CheckStatus::Warn));
        let json = serde_json::to_value(&report).expect("serialize");
        assert!(json["checks"][0]["status"].is_string());
        let backends: Vec<&str> = json["backends"]
            .as_array()
            .expect("backends listed")
            .iter()
            .map(|b| b["backend"].as_str().expect("named"))
            .collect();
        assert_eq!(backends, ["firecracker", "qemu-tcg"]);
    }

    #[test]
    fn backends_say_what_they_lack() {
        let fc = firecracker_support(false, None, GuestUserspace::Unknown);
        assert!(!fc.usable);
        assert_eq!(fc.guest_userspace, GuestUserspace::No);
        assert!(fc.summary.contains("/dev/kvm"), "{}", fc.summary);
        let asset = BinaryAsset {
            path: "/fc".into(),
            version: "Firecracker v1.12.1".into(),
            sha256: String::new(),
            source: BinarySource::Path,
        };
        let fc = firecracker_support(true, Some(&asset), GuestUserspace::No);
        assert!(fc.usable);
        assert_eq!(fc.guest_userspace, GuestUserspace::No);
        assert!(fc.summary.contains("v1.12.1"), "{}", fc.summary);

        let found = |version: &str| qemu::Found {
            path: "/q".into(),
            version: version.into(),
            origin: qemu::Origin::Path,
        };
        let missing = || {
            Err(qemu::ProgramError::NotFound {
                name: "vhost-device-vsock",
                key: "qemu.vhost_device_vsock",
                install: "cargo install vhost-device-vsock",
                cargo_bin: "~/.cargo/bin".into(),
            })
        };
        let q = qemu_support(&Ok(found("7.2.22")), &missing());
        assert!(!q.usable);
        assert!(q.summary.contains("cargo install"), "{}", q.summary);
        let q = qemu_support(&Ok(found("7.2.22")), &Ok(found("0.3.0")));
        assert!(q.usable);
        assert_eq!(q.guest_userspace, GuestUserspace::Yes);
        assert_eq!(q.summary, "QEMU 7.2.22, vhost-device-vsock 0.3.0");
    }
}
