//! Named network namespaces, kept the way `ip netns` keeps them: a bind mount
//! of the namespace on `/run/netns/<name>`, so that `ip netns exec <name>` and
//! the jailer's `--netns /run/netns/<name>` work on ours too, and the
//! namespace lives with no process inside it.
//!
//! Entering one is per thread: [`Netns::run`] runs a closure on a dedicated
//! thread that joins the namespace with `setns(2)` and goes back before it
//! ends, so no other work ever runs in a namespace by accident.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where named namespaces are mounted (as by `ip netns`).
pub const NETNS_DIR: &str = "/run/netns";

/// The calling thread's own network namespace.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot prepare {NETNS_DIR} for namespace mounts (needs root)")]
    PrepareDir(#[source] io::Error),
    #[error("network namespace {name} already exists")]
    Exists { name: String },
    #[error("network namespace {name} does not exist")]
    NotFound { name: String },
    #[error("cannot create the mount point of network namespace {name}")]
    CreateFile {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create a new network namespace (needs root: CAP_SYS_ADMIN)")]
    Unshare(#[source] io::Error),
    #[error("cannot bind-mount network namespace {name} on {}", path.display())]
    Mount {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open network namespace {name}")]
    Open {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace {name}")]
    Enter {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot unmount network namespace {name}")]
    Unmount {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove {}", path.display())]
    RemoveFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list {NETNS_DIR}")]
    List(#[source] io::Error),
    #[error("cannot start a thread to work in network namespace {name}")]
    Thread {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{name:?} is not a usable namespace name: use 1 to 64 characters a-z, 0-9, '-' or '_'"
    )]
    BadName { name: String },
}

/// An open handle on a named network namespace. The namespace outlives the
/// handle: only [`Netns::delete`] removes it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    file: File,
}

fn check_name(name: &str) -> Result<(), NetnsError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(NetnsError::BadName {
            name: name.to_owned(),
        })
    }
}

fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn cstring(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("our paths hold no NUL")
}

fn mount(source: &Path, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let (source, target) = (cstring(source), cstring(target));
    let fstype = c"none";
    // SAFETY: every pointer is a valid NUL-terminated string for the call; the
    // data argument may be null.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes [`NETNS_DIR`] exist and be a shared mount point, as `ip netns add`
/// does: a namespace mounted under it then shows in every mount namespace,
/// and unmounting it here unmounts it everywhere, so nothing keeps a deleted
/// namespace alive in some other mount namespace.
fn prepare_dir() -> Result<(), NetnsError> {
    let dir = Path::new(NETNS_DIR);
    fs::create_dir_all(dir).map_err(NetnsError::PrepareDir)?;
    let shared = libc::MS_SHARED | libc::MS_REC;
    match mount(Path::new(""), dir, shared) {
        Ok(()) => Ok(()),
        // Not a mount point yet: make it one by binding it on itself.
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
            mount(dir, dir, libc::MS_BIND | libc::MS_REC).map_err(NetnsError::PrepareDir)?;
            mount(Path::new(""), dir, shared).map_err(NetnsError::PrepareDir)
        }
        Err(err) => Err(NetnsError::PrepareDir(err)),
    }
}

fn setns(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `fd` is an open namespace descriptor for the whole call.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a new thread, returning its result; a panic in `f` is resumed
/// here.
fn on_thread<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name(format!("netns {name}"))
            .spawn_scoped(scope, f)
            .map_err(|source| NetnsError::Thread {
                name: name.to_owned(),
                source,
            })?;
        match handle.join() {
            Ok(value) => Ok(value),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

impl Netns {
    /// Creates network namespace `name` and mounts it at `/run/netns/<name>`.
    /// Refuses a name that is taken ([`NetnsError::Exists`]); on failure
    /// leaves nothing behind.
    pub fn create(name: &str) -> Result<Self, NetnsError> {
        check_name(name)?;
        prepare_dir()?;
        let path = path_of(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
        {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                return Err(NetnsError::Exists {
                    name: name.to_owned(),
                })
            }
            Err(source) => {
                return Err(NetnsError::CreateFile {
                    name: name.to_owned(),
                    source,
                })
            }
        }
        // A dedicated thread leaves the current one for a new namespace and
        // pins it with the bind mount; the thread then ends, so nothing else
        // ever runs in it.
        let made = on_thread(name, || {
            // SAFETY: unshare(2) with a flag constant changes only this thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
                return Err(NetnsError::Unshare(io::Error::last_os_error()));
            }
            mount(Path::new(THREAD_NETNS), &path, libc::MS_BIND).map_err(|source| {
                NetnsError::Mount {
                    name: name.to_owned(),
                    path: path.clone(),
                    source,
                }
            })
        })
        .and_then(|made| made);
        if let Err(err) = made {
            let _ = fs::remove_file(&path);
            return Err(err);
        }
        match Self::open(name) {
            Ok(netns) => Ok(netns),
            Err(err) => {
                let _ = Self::delete(name);
                Err(err)
            }
        }
    }

    /// Opens the existing namespace `name`.
    pub fn open(name: &str) -> Result<Self, NetnsError> {
        check_name(name)?;
        match File::open(path_of(name)) {
            Ok(file) => Ok(Self {
                name: name.to_owned(),
                file,
            }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Err(NetnsError::NotFound {
                name: name.to_owned(),
            }),
            Err(source) => Err(NetnsError::Open {
                name: name.to_owned(),
                source,
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The mount point, `/run/netns/<name>`: what the jailer's `--netns` takes.
    pub fn path(&self) -> PathBuf {
        path_of(&self.name)
    }

    /// Runs `f` inside the namespace, on a dedicated thread that enters it,
    /// runs `f` and returns to its original namespace before ending. Sockets
    /// and devices `f` opens stay bound to this namespace after it returns.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let enter = |source| NetnsError::Enter {
            name: self.name.clone(),
            source,
        };
        on_thread(&self.name, || {
            let original = File::open(THREAD_NETNS).map_err(enter)?;
            setns(self.file.as_fd()).map_err(enter)?;
            let value = f();
            // The thread ends right after, so a failed return cannot leak
            // the namespace into other work; it is only reported.
            if let Err(err) = setns(original.as_fd()) {
                tracing::warn!(netns = %self.name, error = %err, "cannot leave network namespace");
            }
            Ok(value)
        })?
    }

    /// Removes namespace `name`: unmounts it and removes its mount point. The
    /// namespace itself ends when nothing else holds it (a process inside, an
    /// open handle or socket). `false` if it did not exist; safe to repeat.
    pub fn delete(name: &str) -> Result<bool, NetnsError> {
        check_name(name)?;
        let path = path_of(name);
        let target = cstring(&path);
        // SAFETY: `target` is a valid NUL-terminated path for the call.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                // Not mounted (a half-made namespace) or no file at all.
                Some(libc::EINVAL) | Some(libc::ENOENT) => {}
                _ => {
                    return Err(NetnsError::Unmount {
                        name: name.to_owned(),
                        source: err,
                    })
                }
            }
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(NetnsError::RemoveFile { path, source }),
        }
    }

    /// Names of every namespace in [`NETNS_DIR`].
    pub fn list() -> Result<Vec<String>, NetnsError> {
        let entries = match fs::read_dir(NETNS_DIR) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(NetnsError::List(err)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(NetnsError::List)?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_path_is_built() {
        for bad in ["", "../x", "a/b", "-x", "UP", "x".repeat(65).as_str()] {
            assert!(
                matches!(check_name(bad), Err(NetnsError::BadName { .. })),
                "{bad:?}"
            );
            assert!(matches!(
                Netns::delete(bad),
                Err(NetnsError::BadName { .. })
            ));
        }
        check_name("tfc-1a").unwrap();
        assert_eq!(path_of("tfc-1a"), Path::new("/run/netns/tfc-1a"));
    }
}
