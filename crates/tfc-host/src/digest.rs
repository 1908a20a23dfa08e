//! Content digests of large files (guest kernel, rootfs), remembered for the
//! life of the process so that checking an unchanged file again costs one
//! `stat` instead of reading tens of megabytes.
//!
//! A remembered digest is trusted while the file's key (device, inode,
//! size, mtime) is unchanged: every write moves mtime. Two writes within one
//! tick of the filesystem's timestamp clock could leave it where it was, the
//! first of which we hashed between them; to close that gap a digest is only
//! remembered once the file's mtime is `SETTLE` (2 s) older than the moment
//! hashing began, so a file still being written is re-hashed on every call
//! until it settles.
//!
//! ctime is not part of the key, though it would also catch a write followed
//! by a deliberate reset of mtime to its old value, to the nanosecond: ctime
//! moves whenever a hard link to the file is made or removed, and a jailed
//! VM has the kernel and rootfs linked into its chroot. With ctime in
//! the key, every jailed VM started or removed would make the next check
//! read the whole rootfs again (tens of milliseconds per pool acquire,
//! measured).

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How much older than the start of hashing a file's mtime and ctime must be
/// before its digest is remembered. Covers coarse timestamp clocks (one
/// scheduler tick on Linux, up to 2 s on FAT-like filesystems).
const SETTLE: Duration = Duration::from_secs(2);

/// How often hashing is retried when the file changes under the reader.
const ATTEMPTS: usize = 3;

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl FileKey {
    fn of(meta: &Metadata) -> Self {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }

    /// Whether mtime lies at least `SETTLE` before `started`, so that a
    /// later write is bound to move it.
    fn settled(&self, started: SystemTime) -> bool {
        let Ok(since_epoch) = started.duration_since(UNIX_EPOCH) else {
            return false;
        };
        let limit = since_epoch.saturating_sub(SETTLE).as_nanos() as i128;
        let nanos = |(sec, nsec): (i64, i64)| i128::from(sec) * 1_000_000_000 + i128::from(nsec);
        nanos(self.mtime) < limit
    }
}

/// Canonical path -> the key of the version that was hashed and its digest.
static CACHE: LazyLock<Mutex<HashMap<PathBuf, (FileKey, String)>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn cache() -> std::sync::MutexGuard<'static, HashMap<PathBuf, (FileKey, String)>> {
    // A panic while holding the lock cannot leave an entry half-written.
    CACHE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The sha256 of the file at `path` as `"sha256:<hex>"`. Repeated calls for
/// an unchanged file return the remembered digest (see the module doc).
pub fn file_sha256(path: &Path) -> io::Result<String> {
    digest_at(path, SystemTime::now())
}

/// [`file_sha256`] with the clock passed in, so tests can make fresh files
/// count as settled.
fn digest_at(path: &Path, now: SystemTime) -> io::Result<String> {
    let canonical = std::fs::canonicalize(path)?;
    let mut file = File::open(&canonical)?;
    for _ in 0..ATTEMPTS {
        let key = FileKey::of(&file.metadata()?);
        if let Some((k, digest)) = cache().get(&canonical) {
            if *k == key {
                return Ok(digest.clone());
            }
        }
        let digest = hash(&mut file)?;
        if FileKey::of(&file.metadata()?) != key {
            // Written to while we read it: the digest may mix two versions.
            continue;
        }
        if key.settled(now) {
            cache().insert(canonical, (key, digest.clone()));
        }
        return Ok(digest);
    }
    Err(io::Error::other(format!(
        "{} kept changing while it was being hashed",
        canonical.display()
    )))
}

fn hash(file: &mut File) -> io::Result<String> {
    use std::io::Seek;
    file.rewind()?;
    Ok(format!(
        "sha256:{}",
        crate::assets::key::reader_sha256(file)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock far enough ahead that every file in a test counts as settled,
    /// so digests are remembered and the cache itself is under test.
    fn later() -> SystemTime {
        SystemTime::now() + Duration::from_secs(3600)
    }

    #[test]
    fn digest_has_the_sha256_prefix_and_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux");
        std::fs::write(&path, b"abc").unwrap();
        let first = file_sha256(&path).unwrap();
        assert_eq!(
            first,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(file_sha256(&path).unwrap(), first);
        assert_eq!(digest_at(&path, later()).unwrap(), first);
        assert_eq!(digest_at(&path, later()).unwrap(), first);
    }

    #[test]
    fn an_unchanged_file_is_answered_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rootfs.ext4");
        std::fs::write(&path, vec![7u8; 3 * (1 << 20) + 5]).unwrap();
        let real = digest_at(&path, later()).unwrap();
        let canonical = std::fs::canonicalize(&path).unwrap();
        let entry = cache().get(&canonical).cloned();
        let (key, digest) = entry.expect("a settled file is remembered");
        assert_eq!(digest, real);
        // Swap in a marker: only a cache hit can return it.
        cache().insert(canonical, (key, "sha256:marker".into()));
        assert_eq!(digest_at(&path, later()).unwrap(), "sha256:marker");
        assert_eq!(file_sha256(&path).unwrap(), "sha256:marker");
    }

    #[test]
    fn a_rewrite_of_the_same_size_is_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux");
        std::fs::write(&path, b"first version").unwrap();
        let first = digest_at(&path, later()).unwrap();
        let canonical = std::fs::canonicalize(&path).unwrap();
        assert!(cache().contains_key(&canonical));

        std::fs::write(&path, b"other version").unwrap();
        // ctime moves on every write, but on a coarse clock possibly not
        // within one test; an explicit mtime makes the change certain.
        let file = File::options().write(true).open(&path).unwrap();
        file.set_modified(UNIX_EPOCH + Duration::from_secs(1_000_000_000))
            .unwrap();
        drop(file);

        let second = digest_at(&path, later()).unwrap();
        assert_ne!(second, first);
        assert_eq!(
            second,
            format!(
                "sha256:{}",
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"other version"))
            )
        );
    }

    #[test]
    fn a_fresh_file_is_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fresh");
        std::fs::write(&path, b"x").unwrap();
        file_sha256(&path).unwrap();
        let canonical = std::fs::canonicalize(&path).unwrap();
        assert!(!cache().contains_key(&canonical));
    }

    #[test]
    fn settled_needs_an_old_enough_mtime() {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let key = |mtime: i64| FileKey {
            dev: 1,
            ino: 2,
            size: 3,
            mtime: (mtime, 0),
        };
        assert!(key(secs - 60).settled(now));
        assert!(!key(secs).settled(now));
        assert!(!key(secs + 60).settled(now));
    }

    /// A jail's hard link to the rootfs moves the file's ctime, not its
    /// content: the remembered digest stays in use.
    #[test]
    fn a_new_hard_link_keeps_the_remembered_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rootfs.ext4");
        std::fs::write(&path, vec![3u8; 1 << 20]).unwrap();
        digest_at(&path, later()).unwrap();
        let canonical = std::fs::canonicalize(&path).unwrap();
        let (key, _) = cache().get(&canonical).cloned().expect("remembered");
        cache().insert(canonical, (key, "sha256:marker".into()));
        let ctime = |p: &Path| std::fs::metadata(p).unwrap().ctime_nsec();
        let before = ctime(&path);
        // ctime's clock may be coarse: link until it moves.
        let mut links = 0;
        while ctime(&path) == before && links < 200 {
            links += 1;
            std::fs::hard_link(&path, dir.path().join(format!("link-{links}"))).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_ne!(ctime(&path), before, "linking never moved ctime");
        assert_eq!(digest_at(&path, later()).unwrap(), "sha256:marker");
    }

    #[test]
    fn a_missing_file_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = file_sha256(&dir.path().join("absent")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
