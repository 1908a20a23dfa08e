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
