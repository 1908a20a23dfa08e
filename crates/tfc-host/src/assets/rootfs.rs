//! The guest root filesystem: an ext4 image with static busybox, an init
//! chosen by profile and, when one was built, the guest agent at
//! [`tfc_core::spec::AGENT_INIT`] (VMs that run it boot with `init=` its path).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::agent::AgentBinary;
use super::elf;
use super::key::{self, KeyBuilder};
use super::prereq::{HostTools, PrereqError, Requirement};
use super::tool::{ToolError, ToolLog};
use crate::profile::Profile;

/// Leaves room for a guest agent and its files next to busybox (~2 MiB).
pub const IMAGE_SIZE: &str = "64M";

const PREREQS: [Requirement; 2] = [
    Requirement::Program {
        name: "busybox",
        package: "busybox-static",
    },
    Requirement::Program {
        name: "mkfs.ext4",
        package: "e2fsprogs",
    },
];

/// Applets linked in `/bin`; `busybox --install` would need to run busybox
/// inside the guest tree, which the host build avoids.
pub const APPLETS: &[&str] = &[
    "sh", "ash", "cat", "chmod", "cp", "date", "dd", "df", "dmesg", "echo", "env", "false", "free",
    "grep", "halt", "head", "hostname", "ifconfig", "ip", "kill", "ln", "ls", "mkdir", "mknod",
    "mount", "mv", "nc", "ping", "poweroff", "ps", "pwd", "reboot", "rm", "rmdir", "route", "sed",
    "sleep", "stat", "sync", "tail", "test", "top", "touch", "tr", "true", "umount", "uname", "vi",
    "wc",
];

/// The busybox init. As PID 1 it must reap orphans: `wait` after a
/// background `sleep` collects any exited child, not only the sleep.
pub const INIT_SCRIPT: &str = "#!/bin/sh
# tfc guest init (busybox). PID 1: mount the API filesystems, announce
# readiness on the console, then reap children forever.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# The kernel has usually mounted it already (CONFIG_DEVTMPFS_MOUNT).
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
echo GUEST-READY > /dev/console
while :; do
    sleep 3600 &
    wait
done
";

/// `/init` for a profile. Nested guests cannot make system calls, so their
/// init is the spin-only ELF; the script stays available as `/init.sh`.
pub fn init_bytes(profile: Profile) -> Vec<u8> {
    match profile {
        Profile::Default => INIT_SCRIPT.as_bytes().to_vec(),
        Profile::Nested => elf::spin_init(),
    }
}

/// Building the rootfs image failed.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Prereq(#[from] PrereqError),
    #[error("{} is dynamically linked (Debian package busybox): install busybox-static, which replaces it", .path.display())]
    BusyboxNotStatic { path: PathBuf },
    #[error("cannot read busybox at {}", .path.display())]
    ReadBusybox {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare {}: check permissions and free space", .path.display())]
    Workdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(ToolError),
    #[error(transparent)]
    Pack(#[from] PackError),
}

/// Packing a guest tree into an ext4 image failed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot prepare {}: check permissions and free space", .path.display())]
    Workdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the ext4 image failed")]
    Mkfs(#[source] ToolError),
}

/// Packs `tree` into the ext4 image `image`, `size` in mkfs.ext4's syntax
/// (`64M`). The image's directory is made as a `.partial` sibling and
/// renamed into place, so an image that exists is a whole one.
pub(super) fn pack(
    log: &mut ToolLog,
    mkfs: &Path,
    tree: &Path,
    image: &Path,
    size: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<(), PackError> {
    let wd = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackError::Workdir { path, source }
    };
    let out_dir = image.parent().map(Path::to_path_buf).unwrap_or_default();
    let file_name = image.file_name().unwrap_or_default();
    let partial = out_dir.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(wd(&partial))?;
    }
    std::fs::create_dir_all(&partial).map_err(wd(&partial))?;
    log.run(
        "mkfs.ext4",
        Command::new(mkfs)
            .args(["-q", "-F", "-L", "root", "-d"])
            .arg(tree)
            .arg(partial.join(file_name))
            .arg(size),
        progress,
    )
    .map_err(PackError::Mkfs)?;
    // An output directory without an image is debris from an interrupted run.
    if out_dir.exists() {
        std::fs::remove_dir_all(&out_dir).map_err(wd(&out_dir))?;
    }
    std::fs::rename(&partial, &out_dir).map_err(wd(&out_dir))?;
    Ok(())
}

/// A rootfs image in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltRootfs {
    pub key: String,
    pub image: PathBuf,
    pub cached: bool,
}

/// The cache key: busybox, init content, applets, image size, profile, agent.
pub fn cache_key(busybox_sha256: &str, profile: Profile, agent_sha256: Option<&str>) -> String {
    KeyBuilder::new("rootfs")
        .part("busybox-sha256", busybox_sha256)
        .part("init", key::sha256_hex(&init_bytes(profile)))
        .part("init.sh", INIT_SCRIPT)
        .part("applets", APPLETS.join(","))
        .part("size", IMAGE_SIZE)
        .part("profile", profile.as_str())
        .part("agent-sha256", agent_sha256.unwrap_or("none"))
        .finish()
}

/// The static busybox and its sha256.
fn busybox(tools: &HostTools) -> Result<(PathBuf, String), RootfsError> {
    tools.require(&PREREQS)?;
    let path = tools.find_program("busybox").ok_or_else(|| {
        RootfsError::from(PrereqError::Missing {
            missing: vec![PREREQS[0]],
        })
    })?;
    let read_err = |source| RootfsError::ReadBusybox {
        path: path.clone(),
        source,
    };
    let bytes = std::fs::read(&path).map_err(read_err)?;
    if !elf::parse(&bytes).is_some_and(|i| i.is_static()) {
        return Err(RootfsError::BusyboxNotStatic { path });
    }
    Ok((path, key::sha256_hex(&bytes)))
}

/// The key a build with today's inputs would produce.
pub fn expected_key(
    tools: &HostTools,
    profile: Profile,
    agent: Option<&AgentBinary>,
) -> Option<String> {
    let agent = agent.map(|a| a.sha256.as_str());
    busybox(tools)
        .ok()
        .map(|(_, sha)| cache_key(&sha, profile, agent))
}

pub fn image_path(assets_dir: &Path, key: &str) -> PathBuf {
    assets_dir
        .join("rootfs")
        .join(key::short(key))
        .join("rootfs.ext4")
}

/// Builds (or finds cached) the rootfs image for `profile`.
pub fn build(
    tools: &HostTools,
    assets_dir: &Path,
    profile: Profile,
    agent: Option<&AgentBinary>,
    progress: &mut dyn FnMut(&str),
) -> Result<BuiltRootfs, RootfsError> {
    let (busybox_path, busybox_sha) = busybox(tools)?;
    let key = cache_key(&busybox_sha, profile, agent.map(|a| a.sha256.as_str()));
    let image = image_path(assets_dir, &key);
    if image.is_file() {
        return Ok(BuiltRootfs {
            key,
            image,
            cached: true,
        });
    }
    let short = key::short(&key);
    let mkfs = tools
        .find_program("mkfs.ext4")
        .unwrap_or_else(|| PathBuf::from("mkfs.ext4"));
    let mut log = ToolLog::open(
        "rootfs",
        assets_dir.join(format!("logs/rootfs-{short}.log")),
    )
    .map_err(RootfsError::Log)?;
    progress(&format!(
        "[rootfs] building profile {profile} (key {short})"
    ));

    let build_root = assets_dir.join("build");
    let wd = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RootfsError::Workdir { path, source }
    };
    std::fs::create_dir_all(&build_root).map_err(wd(&build_root))?;
    let staging = tempfile::Builder::new()
        .prefix("rootfs-")
        .tempdir_in(&build_root)
        .map_err(wd(&build_root))?;
    populate(
        staging.path(),
        &busybox_path,
        profile,
        agent.map(|a| a.path.as_path()),
    )?;

    pack(
        &mut log,
        &mkfs,
        staging.path(),
        &image,
        IMAGE_SIZE,
        progress,
    )?;
    Ok(BuiltRootfs {
        key,
        image,
        cached: false,
    })
}

/// Lays out the guest tree in `root`.
fn populate(
    root: &Path,
    busybox: &Path,
    profile: Profile,
    agent: Option<&Path>,
) -> Result<(), RootfsError> {
    let wd = |path: PathBuf| move |source| RootfsError::Workdir { path, source };
    for d in [
        "bin", "sbin", "dev", "proc", "sys", "tmp", "run", "etc", "root",
    ] {
        std::fs::create_dir(root.join(d)).map_err(wd(root.join(d)))?;
    }
    let tmp = root.join("tmp");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).map_err(wd(tmp))?;

    let bb = root.join("bin/busybox");
    std::fs::copy(busybox, &bb).map_err(wd(bb.clone()))?;
    std::fs::set_permissions(&bb, std::fs::Permissions::from_mode(0o755)).map_err(wd(bb))?;
    for applet in APPLETS {
        let link = root.join("bin").join(applet);
        std::os::unix::fs::symlink("busybox", &link).map_err(wd(link))?;
    }

    for (name, bytes) in [
        ("init", init_bytes(profile)),
        ("init.sh", INIT_SCRIPT.as_bytes().to_vec()),
    ] {
        let path = root.join(name);
        std::fs::write(&path, bytes).map_err(wd(path.clone()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(wd(path))?;
    }
    if let Some(agent) = agent {
        let path = root.join(tfc_core::spec::AGENT_INIT.trim_start_matches('/'));
        std::fs::copy(agent, &path).map_err(wd(path.clone()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(wd(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_init_is_the_spin_elf_and_default_is_the_script() {
        assert_eq!(init_bytes(Profile::Nested), elf::spin_init());
        assert!(init_bytes(Profile::Default).starts_with(b"#!/bin/sh\n"));
        assert!(INIT_SCRIPT.contains("echo GUEST-READY"));
    }

    #[test]
    fn key_depends_on_busybox_and_profile() {
        let k = cache_key("bb", Profile::Nested, None);
        assert_eq!(k, cache_key("bb", Profile::Nested, None));
        assert_ne!(k, cache_key("bb", Profile::Default, None));
        assert_ne!(k, cache_key("cc", Profile::Nested, None));
        assert_ne!(k, cache_key("bb", Profile::Nested, Some("agent")));
        assert_ne!(
            cache_key("bb", Profile::Nested, Some("agent")),
            cache_key("bb", Profile::Nested, Some("agent2"))
        );
    }

    #[test]
    fn missing_packages_are_named() {
        let root = tempfile::tempdir().expect("tempdir");
        let tools = HostTools::with_root(root.path());
        let msg = build(&tools, root.path(), Profile::Default, None, &mut |_| {})
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("apt-get install busybox-static e2fsprogs"),
            "{msg}"
        );
    }

    #[test]
    fn dynamic_busybox_is_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let bin = root.path().join("bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        let mut dynamic = elf::spin_init();
        dynamic[64..68].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
        for (name, bytes) in [("busybox", dynamic), ("mkfs.ext4", b"#!/bin/sh\n".to_vec())] {
            std::fs::write(bin.join(name), bytes).expect("write");
            std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        let tools = HostTools::with_root(root.path());
        let err = build(&tools, root.path(), Profile::Default, None, &mut |_| {});
        assert!(matches!(err, Err(RootfsError::BusyboxNotStatic { .. })));
    }

    #[test]
    fn populates_the_tree() {
        let root = tempfile::tempdir().expect("tempdir");
        let bb = root.path().join("busybox-src");
        std::fs::write(&bb, elf::spin_init()).expect("write");
        let tree = root.path().join("tree");
        std::fs::create_dir(&tree).expect("mkdir");
        let agent = root.path().join("agent-src");
        std::fs::write(&agent, b"agent").expect("write");
        populate(&tree, &bb, Profile::Nested, Some(&agent)).expect("populate");
        assert_eq!(
            std::fs::read(tree.join("sbin/tfc-agent")).expect("agent"),
            b"agent"
        );
        assert_eq!(
            std::fs::read(tree.join("init")).expect("init"),
            elf::spin_init()
        );
        assert_eq!(
            std::fs::read_to_string(tree.join("init.sh")).expect("init.sh"),
            INIT_SCRIPT
        );
        assert_eq!(
            std::fs::read_link(tree.join("bin/sh")).expect("link"),
            PathBuf::from("busybox")
        );
        let mode = std::fs::metadata(tree.join("init"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}
