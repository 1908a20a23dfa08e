//! Waiting for a just-spawned VMM to accept connections on its Unix socket.
//!
//! The wait sleeps until something changes instead of retrying on a timer:
//! it wakes when an entry appears in the socket's directory (inotify) or
//! when the process ends (its pidfd turns readable). A timer retry every
//! 50 µs kept a thread waking ~10,000 times a second for the VMM's whole
//! start-up, which on a small host took CPU from the requests served beside
//! a pool's refill.
//!
//! Closing an inotify instance waits for an RCU grace period (5-20 ms
//! measured here), so a [`SocketWatch`] is dropped after its answer has been
//! passed on, never on a timed path.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::pidfd::Pidfd;
use tfc_core::ExitReason;

/// Longest sleep between checks when nothing wakes the wait: a bound on how
/// late an event the wait cannot watch (a directory it could not watch, the
/// exit of a process it holds no pidfd of) is noticed.
const MAX_SLEEP: Duration = Duration::from_millis(10);

/// First retry delay once the socket exists but refuses connections (bound
/// but not yet listening: a few microseconds in practice); doubles up to
/// [`MAX_SLEEP`].
const REFUSED_RETRY: Duration = Duration::from_micros(20);

/// Why the socket was not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// The process ended first.
    Exited(ExitReason),
    /// The deadline passed.
    TimedOut,
}

/// A wait for one socket to accept connections. Slow to drop (see the
/// module's docs): drop it after passing its answer on.
pub struct SocketWatch {
    /// `None` when no inotify instance or watch was left for this user: the
    /// wait still works, on the [`MAX_SLEEP`] timer.
    watch: Option<DirWatch>,
}

impl SocketWatch {
    /// Starts watching the directory `socket` will appear in.
    pub fn new(socket: &Path) -> Self {
        Self {
            watch: watched_dir(socket).and_then(|dir| DirWatch::new(&dir).ok()),
        }
    }

    /// Blocks until `socket` accepts a connection, `ended` reports the
    /// process's end (checked whenever `pidfd` turns readable, and at least
    /// every [`MAX_SLEEP`]), or `deadline` passes. For a blocking thread.
    pub fn wait(
        &self,
        socket: &Path,
        pidfd: &Pidfd,
        deadline: Instant,
        ended: impl Fn() -> Option<ExitReason>,
    ) -> Result<(), NotReady> {
        wait_for(self.watch.as_ref(), socket, pidfd, deadline, ended)
    }
}

impl std::fmt::Debug for SocketWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketWatch")
            .field("inotify", &self.watch.is_some())
            .finish()
    }
}

/// Where `socket`'s entry will be created: its own directory, or, when it
/// is a link (a jailed VMM's socket, reached through a link into its
/// chroot), the directory of the link's target, where the VMM binds.
fn watched_dir(socket: &Path) -> Option<PathBuf> {
    let dir = socket.parent()?;
    match std::fs::read_link(socket) {
        // `join` keeps an absolute target as it is.
        Ok(target) => dir.join(target).parent().map(Path::to_path_buf),
        Err(_) => Some(dir.to_path_buf()),
    }
}

fn wait_for(
    watch: Option<&DirWatch>,
    socket: &Path,
    pidfd: &Pidfd,
    deadline: Instant,
    ended: impl Fn() -> Option<ExitReason>,
) -> Result<(), NotReady> {
    let mut refused_retry = REFUSED_RETRY;
    loop {
        if let Some(reason) = ended() {
            return Err(NotReady::Exited(reason));
        }
        let sleep = match std::os::unix::net::UnixStream::connect(socket) {
            Ok(_) => return Ok(()),
            // Bound, not yet listening: moments away, and no event announces it.
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                let sleep = refused_retry;
                refused_retry = (refused_retry * 2).min(MAX_SLEEP);
                sleep
            }
            Err(_) => MAX_SLEEP,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(NotReady::TimedOut);
        }
        let sleep = sleep.min(deadline - now);
        wait_event(watch, pidfd, sleep);
        if let Some(watch) = watch {
            watch.drain();
        }
    }
}

/// Sleeps up to `timeout`, waking early when the watched directory changes
/// or the process ends.
fn wait_event(watch: Option<&DirWatch>, pidfd: &Pidfd, timeout: Duration) {
    let mut fds = [
        libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: watch.map_or(-1, |w| w.fd.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // Rounded up: a 20 µs retry must not become a busy 0 ms poll.
    let ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
    // SAFETY: two valid pollfd entries (a negative fd is ignored by poll).
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}

/// An inotify watch for entries created in (or moved into) one directory.
struct DirWatch {
    fd: OwnedFd,
}

impl DirWatch {
    fn new(dir: &Path) -> io::Result<Self> {
        // SAFETY: inotify_init1 takes flags and returns a new fd or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a valid inotify fd and a NUL-terminated path.
        let rc = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                path.as_ptr(),
                libc::IN_CREATE | libc::IN_MOVED_TO,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Reads the pending events; only their arrival matters.
    fn drain(&self) {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into a buffer of the given length.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    buf.len(),
                )
            };
            if n <= 0 {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn child(script: &str) -> (std::process::Child, Pidfd) {
        let child = std::process::Command::new("sh")
            .args(["-c", script])
            .spawn()
            .unwrap();
        let pidfd = Pidfd::open(child.id()).unwrap();
        (child, pidfd)
    }

    /// Waits on `socket` while a listener is bound at `bound` (the same
    /// path, or a link's target) 100 ms later, beside a live process.
    fn waits_for_a_listener_bound_later(socket: &Path, bound: PathBuf) {
        let (mut process, pidfd) = child("sleep 30");
        let binder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            UnixListener::bind(&bound).unwrap()
        });
        let waited = SocketWatch::new(socket).wait(
            socket,
            &pidfd,
            Instant::now() + Duration::from_secs(10),
            || None,
        );
        assert_eq!(waited, Ok(()));
        drop(binder.join().unwrap());
        process.kill().unwrap();
        process.wait().unwrap();
    }

    #[test]
    fn returns_once_a_listener_appears_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        waits_for_a_listener_bound_later(&socket, socket.clone());
    }

    /// A jailed VMM binds in its chroot; the VM's directory holds a link.
    #[test]
    fn a_socket_behind_a_link_is_watched_where_it_is_bound() {
        let dir = tempfile::tempdir().unwrap();
        let chroot = dir.path().join("root");
        std::fs::create_dir(&chroot).unwrap();
        let bound = chroot.join("api.sock");
        let socket = dir.path().join("api.sock");
        std::os::unix::fs::symlink(&bound, &socket).unwrap();
        assert_eq!(watched_dir(&socket), Some(chroot.clone()));
        assert_eq!(
            watched_dir(&dir.path().join("plain.sock")),
            Some(dir.path().to_path_buf())
        );
        waits_for_a_listener_bound_later(&socket, bound);
    }

    #[test]
    fn reports_the_end_of_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let (mut process, pidfd) = child("exit 3");
        let waited_for = pidfd.try_clone().unwrap();
        let reason = ExitReason {
            code: Some(3),
            signal: None,
        };
        let started = Instant::now();
        let socket = dir.path().join("api.sock");
        let waited = SocketWatch::new(&socket).wait(
            &socket,
            &waited_for,
            Instant::now() + Duration::from_secs(10),
            // The exit watch stands in for the daemon's: ended once the
            // pidfd says so.
            || pidfd.wait_exited(Duration::ZERO).then_some(reason),
        );
        assert_eq!(waited, Err(NotReady::Exited(reason)));
        assert!(started.elapsed() < Duration::from_secs(10));
        process.wait().unwrap();
    }

    #[test]
    fn gives_up_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let (mut process, pidfd) = child("sleep 30");
        let socket = dir.path().join("api.sock");
        let waited = SocketWatch::new(&socket).wait(
            &socket,
            &pidfd,
            Instant::now() + Duration::from_millis(50),
            || None,
        );
        assert_eq!(waited, Err(NotReady::TimedOut));
        process.kill().unwrap();
        process.wait().unwrap();
    }

    #[test]
    fn a_socket_nobody_listens_on_is_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        // Bound and closed: the file stays, connections are refused.
        drop(UnixListener::bind(&socket).unwrap());
        let (mut process, pidfd) = child("sleep 30");
        let waited = SocketWatch::new(&socket).wait(
            &socket,
            &pidfd,
            Instant::now() + Duration::from_millis(100),
            || None,
        );
        assert_eq!(waited, Err(NotReady::TimedOut));
        process.kill().unwrap();
        process.wait().unwrap();
    }
}
