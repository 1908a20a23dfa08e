//! The Debian root filesystem, for users who want a full distribution in the
//! guest: a `debootstrap --variant=minbase` tree of Debian 12 with the guest
//! agent as init at [`tfc_core::spec::AGENT_INIT`], packed into an ext4 image.
//!
//! Optional (`tfc assets build --debian`): it downloads ~60 MiB of packages and
//! needs root. The cache key covers what we ask for (suite, variant, mirror,
//! extra packages, agent); the packages debootstrap picks are whatever the
//! mirror has that day, so a rebuild is not byte-identical, and `--rebuild`
//! is not needed to pick up security updates: delete the image.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::agent::AgentBinary;
use super::key::{self, KeyBuilder};
use super::prereq::{HostTools, PrereqError, Requirement};
use super::rootfs::PackError;
use super::tool::{ToolError, ToolLog};

/// Debian 12, the release the project builds on.
pub const SUITE: &str = "bookworm";
pub const VARIANT: &str = "minbase";
pub const MIRROR: &str = "http://deb.debian.org/debian";
/// Beyond minbase: enough to be useful from `tfc exec` without apt.
pub const EXTRA_PACKAGES: &[&str] = &["iproute2", "procps", "ca-certificates"];
/// Free space left in the image beyond the tree, for the guest's writes.
const HEADROOM_BYTES: u64 = 256 << 20;
/// The image file name inside its cache directory.
pub const IMAGE_FILE: &str = "debian.ext4";

const PREREQS: [Requirement; 2] = [
    Requirement::Program {
        name: "debootstrap",
        package: "debootstrap",
    },
    Requirement::Program {
        name: "mkfs.ext4",
        package: "e2fsprogs",
    },
];

/// Building the Debian image failed.
#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error(transparent)]
    Prereq(#[from] PrereqError),
    #[error("debootstrap needs root: run `tfc assets build --debian` as root")]
    NotRoot,
    #[error("the Debian image runs the guest agent as init, and none was found: build it with `cargo build --release --target x86_64-unknown-linux-musl -p tfc-agent` or pass --agent PATH")]
    NoAgent,
    #[error("cannot prepare {}: check permissions and free space", .path.display())]
    Workdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(ToolError),
    #[error("debootstrap failed (is {MIRROR} reachable?)")]
    Debootstrap(#[source] ToolError),
    #[error(transparent)]
    Pack(#[from] PackError),
}

/// The cache key of an image built with `agent_sha256`.
pub fn cache_key(agent_sha256: &str) -> String {
    KeyBuilder::new("rootfs-debian")
        .part("suite", SUITE)
        .part("variant", VARIANT)
        .part("mirror", MIRROR)
        .part("packages", EXTRA_PACKAGES.join(","))
        .part("headroom", HEADROOM_BYTES.to_string())
        .part("agent-sha256", agent_sha256)
        .finish()
}

pub fn image_path(assets_dir: &Path, key: &str) -> PathBuf {
    assets_dir
        .join("rootfs")
        .join(key::short(key))
        .join(IMAGE_FILE)
}

/// A Debian image in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltDebian {
    pub key: String,
    pub image: PathBuf,
    pub cached: bool,
}

/// Builds (or finds cached) the Debian image with `agent` as its init.
pub fn build(
    tools: &HostTools,
    assets_dir: &Path,
    agent: Option<&AgentBinary>,
    progress: &mut dyn FnMut(&str),
) -> Result<BuiltDebian, DebianError> {
    let agent = agent.ok_or(DebianError::NoAgent)?;
    let key = cache_key(&agent.sha256);
    let image = image_path(assets_dir, &key);
    if image.is_file() {
        return Ok(BuiltDebian {
            key,
            image,
            cached: true,
        });
    }
    tools.require(&PREREQS)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(DebianError::NotRoot);
    }
    let short = key::short(&key);
    let mut log = ToolLog::open(
        "debian",
        assets_dir.join(format!("logs/debian-{short}.log")),
    )
    .map_err(DebianError::Log)?;
    progress(&format!(
        "[debian] debootstrap {SUITE} ({VARIANT}) from {MIRROR} (key {short})"
    ));
    let wd = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DebianError::Workdir { path, source }
    };
    let build_root = assets_dir.join("build");
    std::fs::create_dir_all(&build_root).map_err(wd(&build_root))?;
    let staging = tempfile::Builder::new()
        .prefix("debian-")
        .tempdir_in(&build_root)
        .map_err(wd(&build_root))?;
    let tree = staging.path().join("tree");
    let program = |name: &str| {
        tools
            .find_program(name)
            .unwrap_or_else(|| PathBuf::from(name))
    };
    log.run(
        "debootstrap",
        Command::new(program("debootstrap"))
            .arg(format!("--variant={VARIANT}"))
            .arg(format!("--include={}", EXTRA_PACKAGES.join(",")))
            .arg(SUITE)
            .arg(&tree)
            .arg(MIRROR),
        progress,
    )
    .map_err(DebianError::Debootstrap)?;
    finish_tree(&tree, &agent.path)?;
    let size = tree_bytes(&tree).map_err(wd(&tree))? + HEADROOM_BYTES;

    let size = format!("{}M", size.div_ceil(1 << 20));
    super::rootfs::pack(
        &mut log,
        &program("mkfs.ext4"),
        &tree,
        &image,
        &size,
        progress,
    )?;
    Ok(BuiltDebian {
        key,
        image,
        cached: false,
    })
}

/// Puts the agent in, names the host, and drops what only apt's next run
/// would need (downloaded packages and indexes: a third of the tree).
fn finish_tree(tree: &Path, agent: &Path) -> Result<(), DebianError> {
    let wd = |path: PathBuf| move |source| DebianError::Workdir { path, source };
    let target = tree.join(tfc_core::spec::AGENT_INIT.trim_start_matches('/'));
    std::fs::copy(agent, &target).map_err(wd(target.clone()))?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
        .map_err(wd(target))?;
    let hostname = tree.join("etc/hostname");
    std::fs::write(&hostname, "tfc\n").map_err(wd(hostname))?;
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let dir = tree.join(dir);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                std::fs::remove_file(&path).map_err(wd(path))?;
            }
        }
    }
    Ok(())
}

/// Bytes the tree's files occupy, counting each inode once (debootstrap
/// leaves hard links).
fn tree_bytes(root: &Path) -> std::io::Result<u64> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            }
            if seen.insert((meta.dev(), meta.ino())) {
                // Allocated blocks, so sparse files count for what they hold.
                total += meta.blocks() * 512;
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_the_agent() {
        assert_eq!(cache_key("a"), cache_key("a"));
        assert_ne!(cache_key("a"), cache_key("b"));
    }

    #[test]
    fn an_image_without_an_agent_is_refused_before_any_download() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tools = HostTools::with_root(dir.path());
        let err = build(&tools, dir.path(), None, &mut |_| {}).expect_err("no agent");
        assert!(matches!(err, DebianError::NoAgent), "{err}");
    }

    #[test]
    fn missing_debootstrap_is_named_by_package() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tools = HostTools::with_root(dir.path());
        let agent = AgentBinary {
            path: dir.path().join("agent"),
            sha256: "00".repeat(32),
        };
        let msg = build(&tools, dir.path(), Some(&agent), &mut |_| {})
            .expect_err("no debootstrap")
            .to_string();
        assert!(msg.contains("apt-get install debootstrap"), "{msg}");
    }

    #[test]
    fn finishing_the_tree_installs_the_agent_and_drops_package_caches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        for d in ["sbin", "etc", "var/cache/apt/archives", "var/lib/apt/lists"] {
            std::fs::create_dir_all(tree.join(d)).expect("mkdir");
        }
        std::fs::write(tree.join("var/cache/apt/archives/x.deb"), b"deb").expect("write");
        std::fs::write(tree.join("var/lib/apt/lists/index"), b"idx").expect("write");
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"agent").expect("write");
        finish_tree(&tree, &agent).expect("finish");
        assert_eq!(
            std::fs::read(tree.join("sbin/tfc-agent")).expect("agent"),
            b"agent"
        );
        let mode = std::fs::metadata(tree.join("sbin/tfc-agent"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(!tree.join("var/cache/apt/archives/x.deb").exists());
        assert!(!tree.join("var/lib/apt/lists/index").exists());
        assert_eq!(
            std::fs::read_to_string(tree.join("etc/hostname")).expect("hostname"),
            "tfc\n"
        );
        assert!(tree_bytes(&tree).expect("size") > 0);
    }
}
