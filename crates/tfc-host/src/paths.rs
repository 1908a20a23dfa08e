//! Standard locations. Root gets system paths; other users get XDG paths; the
//! `TFC_SOCKET` and `TFC_DATA_DIR` environment variables override both.

use std::path::PathBuf;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Directory for the daemon's runtime files (socket): `/run/tfc` as root,
/// `$XDG_RUNTIME_DIR/tfc` otherwise (falling back to `/tmp/tfc-$UID`).
pub fn runtime_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/tfc");
    }
    match env_path("XDG_RUNTIME_DIR") {
        Some(dir) => dir.join("tfc"),
        // SAFETY: getuid has no preconditions and cannot fail.
        None => PathBuf::from(format!("/tmp/tfc-{}", unsafe { libc::getuid() })),
    }
}

/// The daemon's API socket: `TFC_SOCKET`, else `runtime_dir()/tfc.sock`.
pub fn socket_path() -> PathBuf {
    env_path("TFC_SOCKET").unwrap_or_else(|| runtime_dir().join("tfc.sock"))
}

/// The data directory (assets, VM directories, state): `TFC_DATA_DIR`, else
/// `/var/lib/tfc` as root, else `$XDG_DATA_HOME/tfc` (or `~/.local/share/tfc`).
pub fn data_dir() -> PathBuf {
    if let Some(dir) = env_path("TFC_DATA_DIR") {
        return dir;
    }
    if is_root() {
        return PathBuf::from("/var/lib/tfc");
    }
    if let Some(dir) = env_path("XDG_DATA_HOME") {
        return dir.join("tfc");
    }
    env_path("HOME")
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join(".local/share/tfc")
}
