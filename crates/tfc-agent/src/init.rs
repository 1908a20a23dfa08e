//! What the agent does as the guest's init before it serves: the
//! filesystems, the console, the hostname, the network.
//!
//! Everything here runs in PID 1 before it forks the agent (single-threaded,
//! no runtime). A step that fails is logged and the boot goes on: an agent
//! that serves with, say, no /run is more use to the host than a kernel
//! panic.
//!
//! The same code runs in tests as PID 1 of new namespaces on a host. Before
//! changing anything, [`check_own_namespaces`] makes sure the mount, UTS and
//! network namespaces are not the host's, so a mistaken `--init` on a host
//! refuses instead of mounting over the host's /tmp.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::cmdline::BootParams;
use crate::network;

/// A filesystem PID 1 mounts.
#[derive(Debug, Clone, Copy)]
pub struct Mount {
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: libc::c_ulong,
    pub data: &'static str,
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// In mount order: parents before the mounts inside them.
pub const MOUNTS: [Mount; 7] = [
    Mount {
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    Mount {
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    // The kernel mounts devtmpfs itself with CONFIG_DEVTMPFS_MOUNT.
    Mount {
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: "mode=0755",
    },
    Mount {
        target: "/dev/pts",
        fstype: "devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: "gid=5,mode=0620,ptmxmode=0666",
    },
    Mount {
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=1777",
    },
    Mount {
        target: "/tmp",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=1777",
    },
    Mount {
        target: "/run",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=0755",
    },
];

/// Why init refused or failed a step.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "the agent shares the {0} namespace of this system's init, so init mode would change \
         the host: run it as a VM's PID 1, or in namespaces of its own \
         (unshare --pid --fork --mount --uts --net)"
    )]
    SharedNamespace(&'static str),
    #[error("reading {path} failed")]
    ReadNamespace {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("making the mounts private failed")]
    MakePrivate(#[source] io::Error),
    #[error("mounting {fstype} on {target} failed")]
    Mount {
        target: &'static str,
        fstype: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("setting the hostname to {name:?} failed")]
    Hostname {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("bringing lo up failed")]
    Loopback(#[source] io::Error),
    #[error("configuring the network from the kernel command line failed")]
    Network(#[source] network::NetworkError),
}

fn c_string(text: &str) -> CString {
    CString::new(text).expect("no NUL in a constant")
}

/// The pid of this process.
pub fn own_pid() -> libc::pid_t {
    // SAFETY: getpid cannot fail and touches no memory.
    unsafe { libc::getpid() }
}

/// The kernel's id of the initial PID namespace (`PROC_PID_INIT_INO`), the
/// one a machine boots in: fixed since Linux 3.8.
const INITIAL_PID_NAMESPACE: &str = "pid:[4026531836]";

/// Whether this process runs in the machine's initial PID namespace (as in a
/// VM) rather than in a PID namespace of its own (as in the tests). Needs
/// /proc; without it the answer is yes: only a freshly booted machine has
/// no /proc.
pub fn in_initial_pid_namespace() -> bool {
    match std::fs::read_link("/proc/self/ns/pid") {
        Ok(link) => link.as_os_str() == INITIAL_PID_NAMESPACE,
        Err(_) => true,
    }
}

/// The namespace of `kind` ("mnt", "uts", "net") the host's processes use:
/// PID 1's, or, when its namespaces cannot be read (a PID 1 that forbids
/// it), kthreadd's, which as a kernel thread holds the initial ones.
fn host_namespace(kind: &str) -> Result<std::path::PathBuf, InitError> {
    let init = format!("/proc/1/ns/{kind}");
    match std::fs::read_link(&init) {
        Ok(link) => Ok(link),
        Err(first) => {
            let kthreadd = std::fs::read_to_string("/proc/2/comm")
                .map(|comm| comm.trim() == "kthreadd")
                .unwrap_or(false);
            if kthreadd {
                if let Ok(link) = std::fs::read_link(format!("/proc/2/ns/{kind}")) {
                    return Ok(link);
                }
            }
            Err(InitError::ReadNamespace {
                path: init,
                source: first,
            })
        }
    }
}

/// Refuses init mode when it would change the host: when the /proc already
/// mounted shows another process as PID 1 (the agent is not the init of the
/// machine or of its PID namespace) and the agent shares the host's mount,
/// UTS or network namespace. Without /proc the machine has just booted:
/// nothing to protect. When the host's namespaces cannot be read, init mode
/// is refused too.
pub fn check_own_namespaces() -> Result<(), InitError> {
    let Ok(seen_as) = std::fs::read_link("/proc/self") else {
        return Ok(());
    };
    if seen_as.as_os_str() == "1" {
        // The agent is PID 1 of the PID namespace this /proc shows.
        return Ok(());
    }
    for kind in ["mnt", "uts", "net"] {
        let path = format!("/proc/self/ns/{kind}");
        let own = std::fs::read_link(&path)
            .map_err(|source| InitError::ReadNamespace { path, source })?;
        if own == host_namespace(kind)? {
            return Err(InitError::SharedNamespace(kind));
        }
    }
    Ok(())
}

/// Whether the /proc mounted now is this PID namespace's own (in a new PID
/// namespace the inherited one shows the parent's processes).
fn own_proc_mounted() -> bool {
    std::fs::read_link("/proc/self")
        .map(|link| link.as_os_str() == own_pid().to_string().as_str())
        .unwrap_or(false)
}

/// Undoes octal escapes (`\040` for a space) in a mountinfo field.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(code) = u8::from_str_radix(digits, 8) {
                out.push(code);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points in `mountinfo` text (the fifth field of each line), in
/// the order they were mounted.
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .collect()
}

fn current_mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| mount_points(&text))
        .unwrap_or_default()
}

fn mount(entry: &Mount) -> io::Result<()> {
    // A read-only root may lack a mount point: nothing to be done then.
    if !Path::new(entry.target).is_dir() {
        std::fs::create_dir_all(entry.target)?;
    }
    let (source, target, fstype, data) = (
        c_string(entry.fstype),
        c_string(entry.target),
        c_string(entry.fstype),
        c_string(entry.data),
    );
    // SAFETY: every pointer is a NUL-terminated string alive for the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            entry.flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What [`mount_filesystems`] did, for the log.
#[derive(Debug, Default)]
pub struct Mounted {
    pub mounted: Vec<&'static str>,
    pub already: Vec<&'static str>,
    pub failed: Vec<InitError>,
}

/// Mounts [`MOUNTS`], each unless something is mounted there already (the
/// kernel's devtmpfs; /proc only when it is this PID namespace's own).
pub fn mount_filesystems() -> Mounted {
    let mut report = Mounted::default();
    // Mounts made from here on stay in this mount namespace even if it was
    // created with shared propagation. On a booted VM this changes nothing.
    // SAFETY: the strings are NUL-terminated and alive for the call; the
    // other pointers may be null for MS_PRIVATE.
    let root = c_string("/");
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        report
            .failed
            .push(InitError::MakePrivate(io::Error::last_os_error()));
    }
    // Read once /proc is there (it comes first), then kept up to date.
    let mut points: Option<Vec<String>> = None;
    for entry in &MOUNTS {
        let present = if entry.target == "/proc" {
            own_proc_mounted()
        } else {
            points
                .get_or_insert_with(current_mount_points)
                .iter()
                .any(|p| p == entry.target)
        };
        if present {
            report.already.push(entry.target);
            continue;
        }
        match mount(entry) {
            Ok(()) => {
                report.mounted.push(entry.target);
                if let Some(points) = points.as_mut() {
                    points.push(entry.target.into());
                }
            }
            Err(source) => report.failed.push(InitError::Mount {
                target: entry.target,
                fstype: entry.fstype,
                source,
            }),
        }
    }
    report
}

/// Makes sure fds 0, 1 and 2 are open: the kernel opens /dev/console for
/// init when the root filesystem has one at boot; otherwise the agent opens
/// it (devtmpfs is mounted by now) so its log reaches the console.
pub fn open_console() {
    // SAFETY: fcntl(F_GETFD) only queries the fd table.
    let stderr_open = unsafe { libc::fcntl(2, libc::F_GETFD) } != -1;
    if stderr_open {
        return;
    }
    let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard fds, which are closed or ours;
        // `console` stays open for the call.
        unsafe { libc::dup2(console.as_raw_fd(), fd) };
    }
}

/// Sets the hostname of this UTS namespace.
pub fn set_hostname(name: &str) -> Result<(), InitError> {
    // SAFETY: `name` is readable for its length, which the caller bounded.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(InitError::Hostname {
            name: name.into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Runs the boot steps after the mounts: hostname, `lo`, and the interface
/// the kernel command line configures (unless the kernel's `ip=` did).
/// Returns what failed; each failure is independent of the others.
pub fn configure_system(params: &BootParams) -> Vec<InitError> {
    let mut failed = Vec::new();
    if let Err(e) = set_hostname(&params.hostname) {
        failed.push(e);
    }
    if let Err(e) = network::link_up("lo") {
        failed.push(InitError::Loopback(e));
    }
    if let Some(config) = &params.network {
        if let Err(e) = network::configure(config) {
            failed.push(InitError::Network(e));
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped_in_order() {
        let text = "22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    23 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw\n\
                    40 22 0:40 / /mnt/with\\040space rw - tmpfs tmpfs rw\n";
        assert_eq!(mount_points(text), ["/", "/dev", "/mnt/with space"]);
    }

    #[test]
    fn mounts_come_after_their_parents() {
        for (i, entry) in MOUNTS.iter().enumerate() {
            for later in &MOUNTS[i + 1..] {
                assert!(
                    !entry.target.starts_with(&format!("{}/", later.target)),
                    "{} is mounted before its parent {}",
                    entry.target,
                    later.target
                );
            }
        }
    }

    #[test]
    fn on_the_host_init_mode_is_refused() {
        // Meaningful when this test process shares the mount namespace of
        // the machine's init, as it does when run on a host.
        let own = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        if own_pid() == 1 || host_namespace("mnt").ok() != Some(own) {
            println!("SKIPPED on_the_host_init_mode_is_refused: the test does not share the mount namespace of PID 1");
            return;
        }
        let err = check_own_namespaces().unwrap_err();
        assert!(matches!(err, InitError::SharedNamespace("mnt")), "{err}");
    }
}
