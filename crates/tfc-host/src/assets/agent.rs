//! The guest agent binary baked into the rootfs at [`tfc_core::spec::AGENT_INIT`].
//!
//! It must be a static executable: the busybox image has no C library. Unless
//! a path is given, it is looked for next to the running `tfc` (how a release
//! ships them) and where Cargo puts a musl build of this workspace
//! (`target/x86_64-unknown-linux-musl/release/tfc-agent` beside
//! `target/release/tfc`), which `./scripts/setup-host` builds.

use std::path::{Path, PathBuf};

use super::elf;
use super::key;

/// The binary's file name.
pub const AGENT_FILE: &str = "tfc-agent";
/// The Rust target a static agent is built for.
pub const AGENT_TARGET: &str = "x86_64-unknown-linux-musl";

/// A guest agent found and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentBinary {
    pub path: PathBuf,
    pub sha256: String,
}

/// The agent named for the build cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot read the guest agent at {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest agent at {} is not a static executable: build it with `cargo build --release --target {AGENT_TARGET} -p tfc-agent`", .path.display())]
    NotStatic { path: PathBuf },
}

/// The agent to bake in: `explicit` when given (it must be usable), else the
/// first usable one of [`candidates`]; `Ok(None)` when there is none, and the
/// rootfs is built without an agent. `note` hears about candidates skipped.
pub fn locate(
    explicit: Option<&Path>,
    note: &mut dyn FnMut(&str),
) -> Result<Option<AgentBinary>, AgentError> {
    if let Some(path) = explicit {
        return check(path).map(Some);
    }
    for path in candidates() {
        if !path.is_file() {
            continue;
        }
        match check(&path) {
            Ok(agent) => return Ok(Some(agent)),
            Err(e) => note(&format!("[rootfs] skipping {}: {e}", path.display())),
        }
    }
    Ok(None)
}

/// Where an agent is looked for when none is named.
pub fn candidates() -> Vec<PathBuf> {
    let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    else {
        return Vec::new();
    };
    let mut paths = vec![dir.join(AGENT_FILE)];
    // `target/<profile>/tfc` → `target/<musl target>/release/tfc-agent`.
    if let Some(target_dir) = dir.parent() {
        paths.push(
            target_dir
                .join(AGENT_TARGET)
                .join("release")
                .join(AGENT_FILE),
        );
    }
    paths
}

/// Reads `path` and checks it is a static ELF executable.
pub fn check(path: &Path) -> Result<AgentBinary, AgentError> {
    let bytes = std::fs::read(path).map_err(|source| AgentError::Read {
        path: path.to_owned(),
        source,
    })?;
    if !elf::parse(&bytes).is_some_and(|info| info.is_static()) {
        return Err(AgentError::NotStatic {
            path: path.to_owned(),
        });
    }
    Ok(AgentBinary {
        path: path.to_owned(),
        sha256: key::sha256_hex(&bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_static_elf_is_accepted_and_hashed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(AGENT_FILE);
        std::fs::write(&path, elf::spin_init()).expect("write");
        let agent = locate(Some(&path), &mut |_| {})
            .expect("usable")
            .expect("some");
        assert_eq!(agent.path, path);
        assert_eq!(agent.sha256, key::sha256_hex(&elf::spin_init()));
    }

    #[test]
    fn a_dynamic_or_missing_agent_is_refused_with_the_build_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(AGENT_FILE);
        let mut dynamic = elf::spin_init();
        dynamic[64..68].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
        std::fs::write(&path, dynamic).expect("write");
        let err = locate(Some(&path), &mut |_| {}).expect_err("dynamic");
        assert!(err
            .to_string()
            .contains("--target x86_64-unknown-linux-musl"));
        let missing = dir.path().join("absent");
        assert!(matches!(
            locate(Some(&missing), &mut |_| {}),
            Err(AgentError::Read { .. })
        ));
    }

    #[test]
    fn candidates_sit_beside_the_executable_and_in_the_musl_target_dir() {
        let candidates = candidates();
        let exe_dir = std::env::current_exe().expect("exe");
        let exe_dir = exe_dir.parent().expect("dir");
        assert_eq!(candidates[0], exe_dir.join(AGENT_FILE));
        assert!(candidates[1].ends_with("x86_64-unknown-linux-musl/release/tfc-agent"));
    }
}
