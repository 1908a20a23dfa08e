//! Running Firecracker under the jailer: its own uid/gid (see
//! [`crate::jail_ids`]), a chroot, cgroup limits, optionally a new PID
//! namespace, and Firecracker's seccomp filters left on.
//!
//! A [`Jail`] is one VM's chroot, `<chroot_base>/<exec file name>/<id>/root`
//! (the layout the jailer itself uses), plus the cgroups the jailer makes,
//! `<cgroup mount>/<parent_cgroup>/<id>`. Inside the chroot the VMM's working
//! directory is `/`, so the relative paths the VM configuration uses (root
//! drive link, vsock socket) resolve in the chroot exactly as they resolve in
//! the VM's directory without the jailer. Files from outside (kernel, root
//! image, snapshot files) are hard-linked in (copied across filesystems), and
//! the host side of the VMM's sockets is reached through symlinks in the VM's
//! directory (see [`crate::process`]).
//!
//! Invariant: a jail directory exists before the jailer can create the jail's
//! cgroups, and [`Jail::remove`] removes the cgroups before the directory, so
//! a jail's cgroups are always found through its directory.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::jail_ids::{JailIds, JailUser};

/// The pid file the jailer writes in the chroot when it starts Firecracker in
/// a new PID namespace: `<exec file name>.pid`.
const PID_FILE_SUFFIX: &str = ".pid";
/// Jail ids the jailer accepts: letters, digits and `-`, at most 64.
const MAX_JAIL_ID_LEN: usize = 64;

/// The cgroup hierarchy the jailer places the VMM in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    /// The version mounted at `root` (normally `/sys/fs/cgroup`): v2 when the
    /// unified hierarchy is mounted there (it has `cgroup.controllers`), v1
    /// when controllers are mounted below it; `None` when neither.
    pub fn detect(root: &Path) -> Option<Self> {
        if root.join("cgroup.controllers").is_file() {
            return Some(Self::V2);
        }
        let v1 = std::fs::read_dir(root).ok()?.flatten().any(|e| {
            let dir = e.path();
            dir.join("tasks").is_file() && dir.join("cgroup.procs").is_file()
        });
        v1.then_some(Self::V1)
    }

    /// The value of the jailer's `--cgroup-version`.
    pub fn as_arg(self) -> &'static str {
        match self {
            Self::V1 => "1",
            Self::V2 => "2",
        }
    }
}

/// How to run Firecracker under the jailer (shared by every VM of a daemon).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerConfig {
    pub binary: PathBuf,
    /// The users VMMs switch to after their jail is set up.
    pub ids: JailIds,
    /// Jails are made under `<chroot_base>/<exec file name>/`.
    pub chroot_base: PathBuf,
    pub cgroup_version: CgroupVersion,
    /// Every VM's cgroup is `<parent_cgroup>/<id>` in each hierarchy.
    pub parent_cgroup: String,
    /// Start Firecracker as pid 1 of a new PID namespace.
    pub new_pid_ns: bool,
}

/// A jail step that failed.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("the jailer accepts ids of letters, digits and `-` only (at most {MAX_JAIL_ID_LEN}), not `{0}`: choose such a VM id")]
    InvalidId(String),
    #[error("the jailer runs only an exec file whose name contains \"firecracker\", not {0}: rename the binary or link it under such a name")]
    ExecFileName(PathBuf),
    #[error(
        "jailer binary not found at {0}: run `tfc assets build` or set firecracker.jailer_binary"
    )]
    BinaryMissing(PathBuf),
    #[error("cannot create the jail directory {path}")]
    CreateRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot put {from} into the jail as {to}")]
    LinkIn {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot let the jail user read {path}")]
    GrantRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot move {from} out of the jail to {to}")]
    MoveOut {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the jail's cgroup {path}")]
    RemoveCgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the jail directory {path}")]
    RemoveDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One VM's jail: where its chroot and cgroups are, how to start the jailer
/// for it, and how to move files in and out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    config: JailerConfig,
    id: String,
    /// The firecracker binary; the jailer copies it into the chroot.
    exec_file: PathBuf,
    /// Its file name: the jail directory's parent and the pid file's stem.
    exec_name: String,
    /// The user and group the VMM runs as, which own its chroot.
    user: JailUser,
}

impl Jail {
    /// The jail of VM `id` running `exec_file` (which the jailer requires to
    /// be named `*firecracker*`) as `user`.
    pub fn new(
        config: &JailerConfig,
        exec_file: &Path,
        id: &str,
        user: JailUser,
    ) -> Result<Self, JailError> {
        let valid_id = !id.is_empty()
            && id.len() <= MAX_JAIL_ID_LEN
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !valid_id {
            return Err(JailError::InvalidId(id.to_owned()));
        }
        let exec_name = exec_file
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.contains("firecracker"))
            .ok_or_else(|| JailError::ExecFileName(exec_file.to_owned()))?
            .to_owned();
        Ok(Self {
            config: config.clone(),
            id: id.to_owned(),
            exec_file: exec_file.to_owned(),
            exec_name,
            user,
        })
    }

    /// The jail of VM `id` as an earlier daemon made it: its user is the
    /// owner of its chroot, which [`Self::prepare`] set and which only root
    /// can change. A jail without a chroot (its removal was cut short) gets
    /// [`JailUser::NONE`]: nothing remains of it but to remove it.
    pub fn found(config: &JailerConfig, exec_file: &Path, id: &str) -> Result<Self, JailError> {
        let mut jail = Self::new(config, exec_file, id, JailUser::NONE)?;
        if let Ok(root) = std::fs::symlink_metadata(jail.root()) {
            if root.is_dir() {
                jail.user = JailUser {
                    uid: root.uid(),
                    gid: root.gid(),
                };
            }
        }
        Ok(jail)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The user and group the VMM runs as.
    pub fn user(&self) -> JailUser {
        self.user
    }

    pub fn config(&self) -> &JailerConfig {
        &self.config
    }

    /// `<chroot_base>/<exec name>/<id>`: everything of this jail on disk.
    pub fn dir(&self) -> PathBuf {
        self.config.chroot_base.join(&self.exec_name).join(&self.id)
    }

    /// The chroot: the VMM's `/` and working directory.
    pub fn root(&self) -> PathBuf {
        self.dir().join("root")
    }

    /// Where a path the VMM sees (absolute, or relative to its working
    /// directory `/`) is on the host.
    pub fn host_path(&self, jailed: &str) -> PathBuf {
        self.root().join(jailed.trim_start_matches('/'))
    }

    /// The file in which the jailer records the VMM's pid (new PID namespace only).
    pub fn pid_file(&self) -> PathBuf {
        self.root()
            .join(format!("{}{PID_FILE_SUFFIX}", self.exec_name))
    }

    /// The jailer's command line: its own options, then `--` and
    /// `firecracker_args` (the jailer adds `--id` to them itself). Limits
    /// are `(cgroup file, value)` pairs of the configured cgroup version.
    pub fn command_args(
        &self,
        netns: Option<&Path>,
        cgroups: &[(String, String)],
        firecracker_args: &[OsString],
    ) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |flag: &str, value: OsString| {
            args.push(flag.into());
            args.push(value);
        };
        push("--id", self.id.clone().into());
        push("--exec-file", self.exec_file.clone().into());
        push("--uid", self.user.uid.to_string().into());
        push("--gid", self.user.gid.to_string().into());
        push("--chroot-base-dir", self.config.chroot_base.clone().into());
        push(
            "--cgroup-version",
            self.config.cgroup_version.as_arg().into(),
        );
        push("--parent-cgroup", self.config.parent_cgroup.clone().into());
        for (file, value) in cgroups {
            push("--cgroup", format!("{file}={value}").into());
        }
        if let Some(netns) = netns {
            push("--netns", netns.into());
        }
        if self.config.new_pid_ns {
            args.push("--new-pid-ns".into());
        }
        args.push("--".into());
        args.extend(firecracker_args.iter().cloned());
        args
    }

    /// Makes an empty chroot (a stale one of an earlier VM with this id is
    /// removed first), owned by the jail user, which the VMM must be able to
    /// create its sockets and snapshot files in.
    pub fn prepare(&self) -> Result<(), JailError> {
        self.remove()?;
        let root = self.root();
        let failed = |source| JailError::CreateRoot {
            path: root.clone(),
            source,
        };
        std::fs::create_dir_all(&root).map_err(failed)?;
        std::os::unix::fs::chown(&root, Some(self.user.uid), Some(self.user.gid))
            .map_err(failed)?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).map_err(failed)
    }

    /// Creates an empty file in the chroot that the VMM may write (its log:
    /// Firecracker opens its log path but does not create it). Returns its
    /// host path.
    pub fn create_writable(&self, name: &str) -> Result<PathBuf, JailError> {
        let path = self.host_path(name);
        let failed = |source| JailError::CreateRoot {
            path: path.clone(),
            source,
        };
        std::fs::File::create(&path).map_err(failed)?;
        std::os::unix::fs::chown(&path, Some(self.user.uid), Some(self.user.gid))
            .map_err(failed)?;
        Ok(path)
    }

    /// Puts `source` into the chroot as `name`, for the VMM to read: a hard
    /// link (so a shared image or memory file is not copied), or a copy when
    /// `source` is on another filesystem. The VMM opens such files read-only;
    /// a file the jail user cannot read is made readable (never writable) by
    /// others, which, on a hard link, its original gets too: see
    /// [`Self::grant_read`].
    pub fn link_in(&self, source: &Path, name: &str) -> Result<(), JailError> {
        let target = self.host_path(name);
        let failed = |err| JailError::LinkIn {
            from: source.to_owned(),
            to: target.clone(),
            source: err,
        };
        match std::fs::remove_file(&target) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(e)),
            _ => {}
        }
        match std::fs::hard_link(source, &target) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                std::fs::copy(source, &target).map_err(failed)?;
            }
            Err(e) => return Err(failed(e)),
        }
        self.grant_read(&target)
    }

    /// Lets the jail's user read `path`, a file just placed in the chroot,
    /// by adding read for others (never write), owner and group unchanged.
    ///
    /// Not by giving the file the jail's group: a file linked into several
    /// jails at once (a template's snapshot, restored by concurrent pool
    /// refills) has one group, and each jail taking it in turn took it from
    /// a jail whose VMM had not opened the file yet (its load failed with
    /// "permission denied"). Read for others reaches no one else: a name of
    /// the file is reached only through the data directory (0700, the
    /// daemon's) or a chroot (0700, its own jail's user).
    ///
    /// Through a descriptor opened without following links: the chroot is
    /// the jail user's, so whatever is at `path` now may not be what was
    /// placed there, and a link must not turn this into a change of a host
    /// file.
    fn grant_read(&self, path: &Path) -> Result<(), JailError> {
        let failed = |source| JailError::GrantRead {
            path: path.to_owned(),
            source,
        };
        let file = open_untrusted(path).map_err(failed)?;
        let meta = file.metadata().map_err(failed)?;
        let mode = meta.mode();
        let readable = mode & 0o004 != 0
            || (meta.uid() == self.user.uid && mode & 0o400 != 0)
            || (meta.gid() == self.user.gid && mode & 0o040 != 0);
        if readable {
            return Ok(());
        }
        let mode = (mode | 0o004) & !0o002 & 0o7777;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(failed)
    }

    /// Moves a file the VMM wrote in the chroot (`name`) to `dest` outside,
    /// owned by this process's user and group from then on.
    ///
    /// The chroot is the jail user's, and the guest has run: only a regular
    /// file that user owns, with no other name, is taken (not a link to a
    /// host file, not a FIFO), and the file moved is checked to be the one
    /// examined. Ownership changes go through the descriptor.
    pub fn move_out(&self, name: &str, dest: &Path) -> Result<(), JailError> {
        let from = self.host_path(name);
        let failed = |source| JailError::MoveOut {
            from: from.clone(),
            to: dest.to_owned(),
            source,
        };
        let refused = |why: &str| {
            failed(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("refused: {why}"),
            ))
        };
        let mut source = open_untrusted(&from).map_err(failed)?;
        let meta = source.metadata().map_err(failed)?;
        if meta.uid() != self.user.uid {
            return Err(refused("not owned by the jail's user"));
        }
        if meta.nlink() != 1 {
            return Err(refused("the file has other names"));
        }
        // SAFETY: geteuid and getegid only read this process's credentials.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        match std::fs::rename(&from, dest) {
            Ok(()) => {
                // What the name pointed to when renamed must be what was examined.
                let moved = std::fs::symlink_metadata(dest).map_err(failed)?;
                if (moved.dev(), moved.ino()) != (meta.dev(), meta.ino()) {
                    let _ = std::fs::remove_file(dest);
                    return Err(refused("the file changed while it was moved"));
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let mut copy = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(dest)
                    .map_err(failed)?;
                std::io::copy(&mut source, &mut copy).map_err(failed)?;
                copy.sync_all().map_err(failed)?;
                std::fs::remove_file(&from).map_err(failed)?;
            }
            Err(e) => return Err(failed(e)),
        }
        let moved = open_untrusted(dest).map_err(failed)?;
        std::os::unix::fs::fchown(&moved, Some(uid), Some(gid)).map_err(failed)
    }

    /// The cgroups of this jail that exist, in every mounted hierarchy.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_mounts()
            .into_iter()
            .map(|mount| mount.join(&self.config.parent_cgroup).join(&self.id))
            .filter(|dir| dir.is_dir())
            .collect()
    }

    /// Whether process `pid` runs inside this jail (its root directory is
    /// the chroot: same device and inode, which also holds across the mount
    /// namespace the jailer gives it).
    pub fn holds(&self, pid: u32) -> bool {
        let Ok(root) = std::fs::metadata(self.root()) else {
            return false;
        };
        std::fs::metadata(format!("/proc/{pid}/root"))
            .is_ok_and(|m| m.dev() == root.dev() && m.ino() == root.ino())
    }

    /// The processes running inside this jail.
    pub fn processes(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| self.holds(*pid))
            .collect()
    }

    /// Removes the jail's cgroups, then its directory. Call once no process
    /// runs in it (a cgroup with processes cannot be removed). Removing a
    /// jail that is not there succeeds.
    pub fn remove(&self) -> Result<(), JailError> {
        for dir in self.cgroup_dirs() {
            std::fs::remove_dir(&dir).map_err(|source| JailError::RemoveCgroup {
                path: dir.clone(),
                source,
            })?;
        }
        let dir = self.dir();
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(JailError::RemoveDir {
                path: dir,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// The jails of `exec_file` that exist under `config.chroot_base`
    /// (see [`Self::found`]).
    pub fn all(config: &JailerConfig, exec_file: &Path) -> Vec<Jail> {
        let Ok(probe) = Jail::new(config, exec_file, "x", JailUser::NONE) else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(config.chroot_base.join(&probe.exec_name)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| Jail::found(config, exec_file, e.file_name().to_str()?).ok())
            .collect()
    }
}

/// Mount points of the cgroup hierarchies (v1 controllers and v2), from
/// `/proc/self/mounts`.
fn cgroup_mounts() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(unescape_mount(dir)))
        })
        .collect()
}

/// `/proc/self/mounts` writes space, tab, newline and backslash in paths as
/// three-digit octal escapes.
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process runs as root, which the jailer needs (chroot, setuid,
/// cgroups, device nodes).
/// Opens `path` for reading when its last component is a regular file, not
/// following a symbolic link there and not blocking on a FIFO: for files in
/// places another user controls (a jail's chroot is its user's). The
/// directories above `path` must be trusted.
pub fn open_untrusted(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

/// [`open_untrusted`] of `path`, or, when `path` is a symbolic link (the
/// links the daemon makes from a VM's directory into its jail), of the
/// link's target: the link is trusted, the file it names is not.
pub fn open_untrusted_link(path: &Path) -> std::io::Result<std::fs::File> {
    if std::fs::symlink_metadata(path)?.file_type().is_symlink() {
        let target = std::fs::read_link(path)?;
        let target = match path.parent() {
            Some(dir) if target.is_relative() => dir.join(target),
            _ => target,
        };
        return open_untrusted(&target);
    }
    open_untrusted(path)
}

pub fn running_as_root() -> bool {
    // SAFETY: geteuid only reads this process's credentials.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The jail user of the tests' jails.
    const USER: JailUser = JailUser { uid: 123, gid: 456 };

    fn config(base: &Path) -> JailerConfig {
        JailerConfig {
            binary: "/opt/fc/jailer".into(),
            ids: JailIds::PerJail {
                start: 1000,
                count: 10,
            },
            chroot_base: base.to_owned(),
            cgroup_version: CgroupVersion::V1,
            parent_cgroup: "tfc".into(),
            new_pid_ns: true,
        }
    }

    #[test]
    fn the_command_line_has_every_jailer_option_then_firecrackers() {
        let jail = Jail::new(
            &config(Path::new("/srv/jails")),
            Path::new("/opt/fc/firecracker"),
            "vm-1a",
            USER,
        )
        .unwrap();
        let args = jail.command_args(
            Some(Path::new("/run/netns/tfc-1")),
            &[
                ("memory.limit_in_bytes".into(), "1024".into()),
                ("cpu.cfs_quota_us".into(), "200000".into()),
            ],
            &["--api-sock".into(), "/api.sock".into()],
        );
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--id",
                "vm-1a",
                "--exec-file",
                "/opt/fc/firecracker",
                "--uid",
                "123",
                "--gid",
                "456",
                "--chroot-base-dir",
                "/srv/jails",
                "--cgroup-version",
                "1",
                "--parent-cgroup",
                "tfc",
                "--cgroup",
                "memory.limit_in_bytes=1024",
                "--cgroup",
                "cpu.cfs_quota_us=200000",
                "--netns",
                "/run/netns/tfc-1",
                "--new-pid-ns",
                "--",
                "--api-sock",
                "/api.sock",
            ]
        );
    }

    #[test]
    fn without_a_netns_or_pid_namespace_those_options_are_left_out() {
        let mut config = config(Path::new("/srv/jails"));
        config.new_pid_ns = false;
        config.cgroup_version = CgroupVersion::V2;
        let jail = Jail::new(&config, Path::new("/bin/firecracker-v1.12"), "a", USER).unwrap();
        let args = jail.command_args(None, &[], &[]);
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert!(!args.contains(&"--netns") && !args.contains(&"--new-pid-ns"));
        assert_eq!(
            &args[10..],
            ["--cgroup-version", "2", "--parent-cgroup", "tfc", "--"]
        );
    }

    #[test]
    fn paths_are_remapped_into_the_chroot() {
        let jail = Jail::new(
            &config(Path::new("/srv/jails")),
            Path::new("/opt/fc/firecracker"),
            "vm-1",
            USER,
        )
        .unwrap();
        assert_eq!(jail.dir(), Path::new("/srv/jails/firecracker/vm-1"));
        assert_eq!(jail.root(), Path::new("/srv/jails/firecracker/vm-1/root"));
        assert_eq!(
            jail.host_path("/api.sock"),
            Path::new("/srv/jails/firecracker/vm-1/root/api.sock")
        );
        assert_eq!(
            jail.host_path("rootfs.ext4"),
            Path::new("/srv/jails/firecracker/vm-1/root/rootfs.ext4")
        );
        assert_eq!(
            jail.pid_file(),
            Path::new("/srv/jails/firecracker/vm-1/root/firecracker.pid")
        );
    }

    #[test]
    fn ids_and_exec_files_the_jailer_refuses_are_refused_here() {
        let config = config(Path::new("/j"));
        let fc = Path::new("/bin/firecracker");
        for id in ["", "vm_1", "vm/1", "vm.1", &"a".repeat(65)] {
            let err = Jail::new(&config, fc, id, USER).unwrap_err();
            assert!(matches!(err, JailError::InvalidId(_)), "{id}: {err}");
        }
        let err = Jail::new(&config, Path::new("/bin/fc"), "vm-1", USER).unwrap_err();
        assert!(matches!(err, JailError::ExecFileName(_)));
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount("/sys/fs/cgroup/cpu"), "/sys/fs/cgroup/cpu");
        assert_eq!(unescape_mount("/a\\040b\\134c"), "/a b\\c");
    }

    /// Needs root (chown to another user); says so rather than passing.
    #[test]
    fn files_linked_in_stay_read_only_and_become_readable_by_the_jail_user() {
        if !running_as_root() {
            eprintln!("NOT RUN (needs root): files_linked_in_stay_read_only_and_become_readable_by_the_jail_user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let jail = Jail::new(
            &config(&dir.path().join("jails")),
            Path::new("/bin/firecracker"),
            "vm-1",
            USER,
        )
        .unwrap();
        jail.prepare().unwrap();
        let root = std::fs::metadata(jail.root()).unwrap();
        assert_eq!(
            (root.uid(), root.gid(), root.mode() & 0o777),
            (123, 456, 0o700)
        );
        // A later daemon finds the jail's user in its chroot's owner.
        let found = Jail::found(jail.config(), Path::new("/bin/firecracker"), "vm-1").unwrap();
        assert_eq!(found.user(), USER);
        assert_eq!(
            Jail::all(jail.config(), Path::new("/bin/firecracker")),
            [found]
        );

        let open = dir.path().join("image");
        std::fs::write(&open, b"image").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o444)).unwrap();
        jail.link_in(&open, "rootfs.ext4").unwrap();
        let linked = std::fs::metadata(jail.host_path("rootfs.ext4")).unwrap();
        assert_eq!(linked.ino(), std::fs::metadata(&open).unwrap().ino());
        assert_eq!(
            linked.mode() & 0o777,
            0o444,
            "a readable file is left as it is"
        );

        let private = dir.path().join("memory");
        std::fs::write(&private, b"memory").unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
        jail.link_in(&private, "snapshot.mem").unwrap();
        let linked = std::fs::metadata(jail.host_path("snapshot.mem")).unwrap();
        assert_eq!(linked.gid(), 0, "the group is left as it was");
        assert_eq!(linked.mode() & 0o777, 0o604, "read for others, never write");
        // A second jail linking the same file at once leaves the first
        // able to read it (one group could not serve both).
        let other = Jail::new(
            jail.config(),
            Path::new("/bin/firecracker"),
            "vm-2",
            JailUser { uid: 124, gid: 457 },
        )
        .unwrap();
        other.prepare().unwrap();
        other.link_in(&private, "snapshot.mem").unwrap();
        let linked = std::fs::metadata(jail.host_path("snapshot.mem")).unwrap();
        assert_eq!((linked.gid(), linked.mode() & 0o777), (0, 0o604));
        other.remove().unwrap();

        // What the VMM wrote (as the jail's user) comes out, ours.
        std::fs::write(jail.host_path("out"), b"written").unwrap();
        std::os::unix::fs::chown(jail.host_path("out"), Some(123), Some(456)).unwrap();
        let dest = dir.path().join("out");
        jail.move_out("out", &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"written");
        assert_eq!(std::fs::metadata(&dest).unwrap().uid(), 0);
        assert!(!jail.host_path("out").exists());

        // The jail's user controls the chroot: a link to a host file, a
        // second name of a file, or a file it does not own is refused, and
        // the host file is left as it was.
        let host_file = dir.path().join("host-secret");
        std::fs::write(&host_file, b"secret").unwrap();
        std::fs::set_permissions(&host_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&host_file, jail.host_path("snapshot.state")).unwrap();
        let taken = dir.path().join("taken");
        assert!(jail.move_out("snapshot.state", &taken).is_err());
        assert!(!taken.exists());
        let linked = jail.host_path("twice");
        std::fs::write(&linked, b"x").unwrap();
        std::os::unix::fs::chown(&linked, Some(123), Some(456)).unwrap();
        std::fs::hard_link(&linked, jail.host_path("twice-too")).unwrap();
        assert!(jail.move_out("twice", &taken).is_err());
        std::fs::write(jail.host_path("roots"), b"x").unwrap();
        assert!(jail.move_out("roots", &taken).is_err());
        // Nor a file of another jail's user.
        std::fs::write(jail.host_path("neighbours"), b"x").unwrap();
        std::os::unix::fs::chown(jail.host_path("neighbours"), Some(124), Some(124)).unwrap();
        assert!(jail.move_out("neighbours", &taken).is_err());
        assert!(!taken.exists());
        // Nor does granting read follow a link out of the jail.
        assert!(jail.grant_read(&jail.host_path("snapshot.state")).is_err());
        let host = std::fs::metadata(&host_file).unwrap();
        assert_eq!((host.gid(), host.mode() & 0o777), (0, 0o600));

        jail.remove().unwrap();
        assert!(!jail.dir().exists());
        assert!(dir.path().join("jails/firecracker").is_dir());
        // A jail whose chroot is gone has no user a file could have.
        std::fs::create_dir_all(jail.dir()).unwrap();
        let found = Jail::found(jail.config(), Path::new("/bin/firecracker"), "vm-1").unwrap();
        assert_eq!(found.user(), JailUser::NONE);
        found.remove().unwrap();
    }

    #[test]
    fn this_hosts_cgroup_version_is_detected() {
        let root = Path::new("/sys/fs/cgroup");
        let detected = CgroupVersion::detect(root);
        let v2 = root.join("cgroup.controllers").is_file();
        let v1 = root.join("memory/tasks").is_file() || root.join("cpu/tasks").is_file();
        match detected {
            Some(CgroupVersion::V2) => assert!(v2),
            Some(CgroupVersion::V1) => assert!(v1 && !v2),
            None => assert!(!v1 && !v2),
        }
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(CgroupVersion::detect(empty.path()), None);
    }
}
