//! Which KVM this host has and whether `/dev/kvm` answers.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::profile::Profile;

/// The KVM device Firecracker opens.
pub const KVM_DEVICE: &str = "/dev/kvm";
/// `_IO(KVMIO, 0x00)`; every KVM since Linux 2.6.22 answers 12.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
pub const KVM_API_VERSION: i32 = 12;

/// The KVM implementation behind `/dev/kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvmKind {
    /// `kvm_pvm`: this host is itself a VM without hardware virtualization.
    #[serde(rename = "kvm_pvm")]
    Pvm,
    #[serde(rename = "kvm_intel")]
    Intel,
    #[serde(rename = "kvm_amd")]
    Amd,
    /// No KVM module is loaded (or sysfs is unreadable).
    #[serde(rename = "none")]
    None,
}

impl KvmKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KvmKind::Pvm => "kvm_pvm",
            KvmKind::Intel => "kvm_intel",
            KvmKind::Amd => "kvm_amd",
            KvmKind::None => "none",
        }
    }

    pub fn recommended_profile(self) -> Profile {
        match self {
            KvmKind::Pvm => Profile::Nested,
            KvmKind::Intel | KvmKind::Amd | KvmKind::None => Profile::Default,
        }
    }
}

/// What [`detect`] decided and what it looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmDetection {
    pub kind: KvmKind,
    /// The CPU advertises `vmx` or `svm`.
    pub hw_virt_flag: Option<&'static str>,
    pub evidence: String,
}

/// Looks at `/sys/module` and `/proc/cpuinfo`.
pub fn detect() -> KvmDetection {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    detect_in(Path::new("/sys/module"), &cpuinfo)
}

/// [`detect`] against a given sysfs module directory and cpuinfo text.
/// `kvm_pvm` wins over the hardware modules: it can be loaded on a host whose
/// CPU flags are passed through, and it is what `/dev/kvm` then talks to.
pub fn detect_in(sys_module: &Path, cpuinfo: &str) -> KvmDetection {
    let flag = hw_virt_flag(cpuinfo);
    let loaded: Vec<&str> = ["kvm_pvm", "kvm_intel", "kvm_amd"]
        .into_iter()
        .filter(|m| sys_module.join(m).exists())
        .collect();
    let kind = if loaded.contains(&"kvm_pvm") {
        KvmKind::Pvm
    } else if loaded.contains(&"kvm_intel") {
        KvmKind::Intel
    } else if loaded.contains(&"kvm_amd") {
        KvmKind::Amd
    } else {
        KvmKind::None
    };
    let modules = if loaded.is_empty() {
        "none of kvm_pvm/kvm_intel/kvm_amd".to_string()
    } else {
        loaded.join(", ")
    };
    let evidence = format!(
        "{}: {modules}; /proc/cpuinfo flags: {}",
        sys_module.display(),
        flag.unwrap_or("no vmx/svm")
    );
    KvmDetection {
        kind,
        hw_virt_flag: flag,
        evidence,
    }
}

/// The hardware virtualization flag of the first CPU in `/proc/cpuinfo` text.
pub fn hw_virt_flag(cpuinfo: &str) -> Option<&'static str> {
    let flags = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags").map(str::trim_start))
        .and_then(|l| l.strip_prefix(':'))?;
    flags.split_whitespace().find_map(|f| match f {
        "vmx" => Some("vmx"),
        "svm" => Some("svm"),
        _ => None,
    })
}

/// `/dev/kvm` is missing or does not behave like KVM. Each message says
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("{path} does not exist: enable KVM (load kvm_intel/kvm_amd, enable virtualization in firmware) or run on a host with virtualization")]
    Missing { path: String },
    #[error("cannot open {path} read-write: run as root or add the user to the `kvm` group")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ioctl KVM_GET_API_VERSION on {path} failed: the device is not KVM")]
    ApiVersionIoctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} reports KVM API version {found}, expected {KVM_API_VERSION}")]
    ApiVersion { path: String, found: i32 },
}

/// Whether the KVM device at `path` (normally [`KVM_DEVICE`]) is usable by
/// this process, the way Firecracker uses it: opens it read-write and asks
/// for its API version with `KVM_GET_API_VERSION`.
///
/// Returns the API version, always [`KVM_API_VERSION`]. Fails with a
/// [`KvmError`] whose message names the device and the fix: missing device,
/// no permission to open it (not root, not in the `kvm` group), not a KVM
/// device, or an unexpected API version.
///
/// Blocking but quick (one `open` and one `ioctl`); creates no VM and leaves
/// nothing open.
pub fn check_device(path: &Path) -> Result<i32, KvmError> {
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(KvmError::Missing { path: shown });
    }
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| KvmError::Open {
            path: shown.clone(),
            source,
        })?;
    // SAFETY: the fd is open for the duration of the call and
    // KVM_GET_API_VERSION takes no argument and writes no memory.
    let version = unsafe { libc::ioctl(dev.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if version < 0 {
        return Err(KvmError::ApiVersionIoctl {
            path: shown,
            source: std::io::Error::last_os_error(),
        });
    }
    if version != KVM_API_VERSION {
        return Err(KvmError::ApiVersion {
            path: shown,
            found: version,
        });
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO_VMX: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\n\
        flags\t\t: fpu vme de pse vmx sse2\nbugs\t\t: spectre\n\nprocessor\t: 1\nflags\t\t: fpu vmx\n";
    const CPUINFO_PLAIN: &str = "processor\t: 0\nflags\t\t: fpu vme de pse sse2 hypervisor\n";

    #[test]
    fn finds_virt_flag() {
        assert_eq!(hw_virt_flag(CPUINFO_VMX), Some("vmx"));
        assert_eq!(hw_virt_flag("flags : fpu svm lm\n"), Some("svm"));
        assert_eq!(hw_virt_flag(CPUINFO_PLAIN), None);
        assert_eq!(hw_virt_flag(""), None);
    }

    #[test]
    fn pvm_module_means_nested() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("kvm")).expect("mkdir");
        std::fs::create_dir(dir.path().join("kvm_pvm")).expect("mkdir");
        let d = detect_in(dir.path(), CPUINFO_PLAIN);
        assert_eq!(d.kind, KvmKind::Pvm);
        assert_eq!(d.kind.recommended_profile(), Profile::Nested);
        assert_eq!(serde_json::to_value(d.kind).ok(), Some("kvm_pvm".into()));
        assert!(d.evidence.contains("kvm_pvm"), "{}", d.evidence);
        assert!(d.evidence.contains("no vmx/svm"), "{}", d.evidence);
    }

    #[test]
    fn intel_and_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(detect_in(dir.path(), CPUINFO_VMX).kind, KvmKind::None);
        std::fs::create_dir(dir.path().join("kvm_intel")).expect("mkdir");
        let d = detect_in(dir.path(), CPUINFO_VMX);
        assert_eq!(d.kind, KvmKind::Intel);
        assert_eq!(d.hw_virt_flag, Some("vmx"));
        assert_eq!(d.kind.recommended_profile(), Profile::Default);
    }

    #[test]
    fn missing_device_says_what_to_do() {
        let err = check_device(Path::new("/nonexistent/kvm")).err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("enable KVM"), "{msg}");
    }

    #[test]
    fn a_device_that_is_not_kvm_is_refused() {
        let err = check_device(Path::new("/dev/null")).err();
        assert!(
            matches!(
                err,
                Some(KvmError::ApiVersionIoctl { .. } | KvmError::Open { .. })
            ),
            "{err:?}"
        );
    }
}
