//! What the tier-1 tests (real `firecracker`) share: the built assets, and
//! the processes they must leave behind (none).
//!
//! Not every test binary uses every helper.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The built assets: from `TFC_ASSETS_DATA_DIR`, else the standard data
/// dir. Panics with what to do when they are missing or KVM is not usable.
pub fn assets() -> tfc_host::assets::Manifest {
    let dir = std::env::var_os("TFC_ASSETS_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(tfc_host::paths::data_dir);
    let manifest = tfc_host::assets::load_manifest(&dir).unwrap_or_else(|e| {
        panic!("tier-1 tests need built assets ({e}); run `tfc assets build` first")
    });
    if let Err(e) = tfc_host::kvm::check_device(Path::new(tfc_host::kvm::KVM_DEVICE)) {
        panic!(
            "tier-1 tests need a usable /dev/kvm: {}",
            tfc_core::error_chain(&e)
        );
    }
    manifest
}

/// Whether `pid` runs (a zombie has exited; only its parent's wait is
/// pending).
pub fn alive(pid: u64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z ")
}

/// Firecracker processes whose working directory is under `dir`.
pub fn firecrackers_under(dir: &Path) -> Vec<u64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            comm.trim() == "firecracker" && cwd.starts_with(dir) && alive(*pid)
        })
        .collect()
}

/// QEMU and vhost-device-vsock processes whose working directory is under
/// `dir` (names as `/proc/PID/comm` cuts them, at 15 bytes).
pub fn qemu_processes_under(dir: &Path) -> Vec<u64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            matches!(comm.trim(), "qemu-system-x86" | "vhost-device-vs")
                && cwd.starts_with(dir)
                && alive(*pid)
        })
        .collect()
}

/// What the qemu-tcg lane needs: the built assets (their bzImage and root
/// image), `qemu-system-x86_64` and `vhost-device-vsock`, found the way the
/// daemon finds them. Returns the manifest, or `None` after saying loudly
/// that `test` did not run; with `TFC_REQUIRE_TIER1=1` a missing part fails
/// the test instead.
pub fn qemu_lane(test: &str) -> Option<tfc_host::assets::Manifest> {
    let dir = std::env::var_os("TFC_ASSETS_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(tfc_host::paths::data_dir);
    let mut missing = Vec::new();
    let manifest = match tfc_host::assets::load_manifest(&dir) {
        Ok(m) if m.kernel.bzimage.is_file() && m.rootfs.path.is_file() => Some(m),
        Ok(m) => {
            missing.push(format!(
                "the built bzImage or rootfs is missing ({}, {}): run `tfc assets build`",
                m.kernel.bzimage.display(),
                m.rootfs.path.display()
            ));
            None
        }
        Err(e) => {
            missing.push(tfc_core::error_chain(&e));
            None
        }
    };
    for program in [tfc_host::qemu::QEMU, tfc_host::qemu::VHOST_VSOCK] {
        if let Err(e) = program.find(None) {
            missing.push(tfc_core::error_chain(&e));
        }
    }
    if missing.is_empty() {
        return manifest;
    }
    let why = missing.join("; ");
    if std::env::var("TFC_REQUIRE_TIER1").as_deref() == Ok("1") {
        panic!("the qemu-tcg lane is required (TFC_REQUIRE_TIER1=1) but cannot run: {why}");
    }
    // Straight to the process's stderr: the test harness captures
    // `eprintln!` of passing tests, and this must be seen.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !! {test}: qemu-tcg lane NOT RUN (this is not a pass): {why}\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
    None
}
