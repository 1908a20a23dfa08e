//! Exclusive advisory locks on files (`flock`). The kernel drops a lock when its
//! file closes, including when the holder dies, so a lock never outlives a crash.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct LockFile {
    _file: File,
}

fn open(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

fn flock(file: &File, operation: i32) -> io::Result<()> {
    // SAFETY: flock on an fd that stays open for the duration of the call.
    if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl LockFile {
    /// Takes the lock on `path` (created if missing) without waiting; `None` when
    /// another holder has it.
    pub fn try_acquire(path: &Path) -> io::Result<Option<LockFile>> {
        let file = open(path)?;
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(Some(LockFile { _file: file })),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes the lock on `path`, waiting for another holder to release it.
    pub fn acquire(path: &Path) -> io::Result<LockFile> {
        let file = open(path)?;
        flock(&file, libc::LOCK_EX)?;
        Ok(LockFile { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = LockFile::try_acquire(&path).unwrap().expect("free lock");
        assert!(LockFile::try_acquire(&path).unwrap().is_none());
        drop(first);
        assert!(LockFile::try_acquire(&path).unwrap().is_some());
        assert!(LockFile::acquire(&path).is_ok());
    }
}
