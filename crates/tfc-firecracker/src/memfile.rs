//! Guest memory files of Firecracker snapshots, and merging diffs into them.
//!
//! A diff snapshot's memory file holds only the guest pages dirtied since the
//! snapshot before it, each at its offset in guest memory, with holes
//! elsewhere. Overlaying the diffs, oldest first, onto the full memory file of
//! the snapshot they build on gives a full memory file Firecracker can restore.
//!
//! Data extents are found with `lseek(SEEK_DATA / SEEK_HOLE)`. A filesystem
//! without hole support answers that the whole file is data: for the base
//! that is still correct (its holes are copied as zeros, only slower), but for
//! a diff it is not, because a hole is what tells an untouched page from a
//! dirtied page of zeros, and the diff's untouched pages would overwrite the
//! base with zeros. So [`merge_diff`] refuses a diff whose reported data
//! exceeds the space the filesystem allocated for it (a sparse file on such a
//! filesystem). Keep diffs on ext4, xfs, btrfs or tmpfs. A filesystem with
//! transparent compression can make a fully written diff look the same and
//! have it refused too; that errs on the safe side.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest single read/write while copying.
const CHUNK: usize = 1 << 20;

/// What [`merge_diff`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MergeStats {
    /// Bytes of the diffs' data extents written over the base.
    pub bytes_copied_from_diffs: u64,
    /// Number of data extents across all diffs.
    pub extents: u64,
    /// Length of the merged file.
    pub out_len: u64,
}

/// Writes to `out` the memory file `base` with each of `diffs` overlaid in
/// order (a later diff wins where two overlap). The merged file is as long as
/// the longest input, keeps the base's holes, and is created mode 0600 (it
/// holds guest memory).
///
/// `out` is replaced atomically: the merge is written to a temporary file in
/// `out`'s directory, synced, renamed over `out`, and the directory synced.
/// On error the temporary file is removed and `out` is untouched. `out` may
/// name `base` or one of the diffs.
pub fn merge_diff(base: &Path, diffs: &[&Path], out: &Path) -> io::Result<MergeStats> {
    let base = File::open(base)?;
    let base_len = base.metadata()?.len();
    let mut out_len = base_len;
    let mut overlays = Vec::with_capacity(diffs.len());
    for path in diffs {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        let extents = data_extents(&file, meta.len())?;
        let data: u64 = extents.iter().map(|&(_, len)| len).sum();
        let allocated = meta.blocks() * 512;
        if data > allocated {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "diff memory file {} reports {data} bytes of data but only {allocated} \
                     are allocated: its filesystem does not report holes, so untouched \
                     pages cannot be told from zeroed ones; keep snapshots on ext4, xfs, \
                     btrfs or tmpfs",
                    path.display()
                ),
            ));
        }
        out_len = out_len.max(meta.len());
        overlays.push((file, extents));
    }

    let pending = PendingFile::create(out)?;
    pending.file.set_len(out_len)?;
    let mut buf = vec![0u8; CHUNK];
    for (offset, len) in data_extents(&base, base_len)? {
        copy_range(&base, &pending.file, offset, len, &mut buf)?;
    }
    let mut stats = MergeStats {
        out_len,
        ..MergeStats::default()
    };
    for (file, extents) in &overlays {
        for &(offset, len) in extents {
            copy_range(file, &pending.file, offset, len, &mut buf)?;
            stats.extents += 1;
            stats.bytes_copied_from_diffs += len;
        }
    }
    pending.commit(out)?;
    Ok(stats)
}

/// The bytes of `path` held in data extents: the real size of a sparse diff.
/// On a filesystem without hole support this is the file's length.
pub fn data_bytes(path: &Path) -> io::Result<u64> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    Ok(data_extents(&file, len)?.iter().map(|&(_, l)| l).sum())
}

/// `(offset, len)` of each data extent of `file` (of length `len`), in order.
fn data_extents(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut extents = Vec::new();
    let mut pos = 0;
    while pos < len {
        let start = match seek(file, pos, libc::SEEK_DATA) {
            Ok(start) => start,
            // No data at or after `pos`.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            Err(e) => return Err(e),
        };
        if start >= len {
            break;
        }
        // There is always a hole at the end of the file, so this succeeds.
        let end = seek(file, start, libc::SEEK_HOLE)?.min(len);
        extents.push((start, end - start));
        pos = end;
    }
    Ok(extents)
}

fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<u64> {
    let offset = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset beyond off_t"))?;
    // SAFETY: lseek on an fd that `file` keeps open for the whole call; it
    // touches no memory of ours. Moving the file position is harmless since
    // all reads and writes here are positional.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

fn copy_range(src: &File, dst: &File, offset: u64, len: u64, buf: &mut [u8]) -> io::Result<()> {
    let end = offset + len;
    let mut pos = offset;
    while pos < end {
        let n = (end - pos).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], pos)?;
        dst.write_all_at(&buf[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// Distinguishes concurrent merges within one process.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// The file a merge is written to before it replaces `out`. Dropped before
/// [`PendingFile::commit`] renames it, it removes itself.
struct PendingFile {
    path: PathBuf,
    dir: PathBuf,
    file: File,
    /// Set once `path` has become `out`: nothing is left to remove.
    renamed: bool,
}

impl PendingFile {
    /// `.<name>.tmp-<pid>-<n>` beside `out`, so the rename stays within one
    /// filesystem.
    fn create(out: &Path) -> io::Result<PendingFile> {
        let name = out.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} does not name a file", out.display()),
            )
        })?;
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let path = dir.join(format!(
            ".{}.tmp-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            NEXT_TEMP.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of a crashed process that had our pid is garbage.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok(PendingFile {
            path,
            dir,
            file,
            renamed: false,
        })
    }

    fn commit(mut self, out: &Path) -> io::Result<()> {
        self.file.sync_all()?;
        std::fs::rename(&self.path, out)?;
        self.renamed = true;
        File::open(&self.dir)?.sync_all()
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;
    const PAGE: usize = 4096;

    /// A file of `len` bytes, holes except for `pages` of (offset, byte).
    fn sparse(path: &Path, len: u64, pages: &[(u64, u8)]) {
        let file = File::create(path).unwrap();
        file.set_len(len).unwrap();
        for &(offset, byte) in pages {
            file.write_all_at(&[byte; PAGE], offset).unwrap();
        }
    }

    /// Whether the filesystem under `dir` reports holes.
    fn holes_work(dir: &Path) -> bool {
        let probe = dir.join("hole-probe");
        sparse(&probe, 1 << 20, &[]);
        let ok = data_bytes(&probe).unwrap() == 0;
        std::fs::remove_file(&probe).unwrap();
        ok
    }

    /// Tests of merging need a filesystem that reports holes (as the merge
    /// itself does); on one that does not they fail saying so rather than
    /// pass having checked nothing.
    fn require_holes(dir: &Path) {
        assert!(
            holes_work(dir),
            "{} does not report holes (SEEK_DATA): sparse diffs cannot be tested here; \
             point TMPDIR at ext4, xfs or tmpfs",
            dir.display()
        );
    }

    fn base_file(dir: &Path) -> PathBuf {
        let path = dir.join("base.mem");
        std::fs::write(&path, vec![0xAA; 64 * KIB as usize]).unwrap();
        path
    }

    fn page(bytes: &[u8], offset: u64) -> &[u8] {
        &bytes[offset as usize..offset as usize + PAGE]
    }

    /// Temporary files left in `dir`.
    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect()
    }

    #[test]
    fn a_diff_replaces_only_its_pages() {
        let dir = tempfile::tempdir().unwrap();
        require_holes(dir.path());
        let base = base_file(dir.path());
        let diff = dir.path().join("diff.mem");
        sparse(&diff, 64 * KIB, &[(8 * KIB, 0x11), (40 * KIB, 0x22)]);
        let out = dir.path().join("merged.mem");

        let stats = merge_diff(&base, &[diff.as_path()], &out).unwrap();
        assert_eq!(
            stats,
            MergeStats {
                bytes_copied_from_diffs: 8192,
                extents: 2,
                out_len: 64 * KIB,
            }
        );
        let mut expected = vec![0xAA; 64 * KIB as usize];
        expected[8 * 1024..12 * 1024].fill(0x11);
        expected[40 * 1024..44 * 1024].fill(0x22);
        assert!(std::fs::read(&out).unwrap() == expected);
        assert_eq!(std::fs::read(&base).unwrap(), vec![0xAA; 64 * KIB as usize]);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn diffs_apply_in_order_and_may_grow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        require_holes(dir.path());
        let base = base_file(dir.path());
        let first = dir.path().join("1.mem");
        let second = dir.path().join("2.mem");
        sparse(&first, 64 * KIB, &[(8 * KIB, 0x11), (40 * KIB, 0x22)]);
        sparse(&second, 80 * KIB, &[(8 * KIB, 0x33), (64 * KIB, 0x44)]);
        let out = dir.path().join("merged.mem");

        let stats = merge_diff(&base, &[first.as_path(), second.as_path()], &out).unwrap();
        assert_eq!(stats.out_len, 80 * KIB);
        assert_eq!(stats.extents, 4);
        assert_eq!(stats.bytes_copied_from_diffs, 4 * PAGE as u64);
        let merged = std::fs::read(&out).unwrap();
        assert_eq!(merged.len() as u64, 80 * KIB);
        assert_eq!(page(&merged, 0), [0xAA; PAGE]);
        assert_eq!(page(&merged, 8 * KIB), [0x33; PAGE], "later diff wins");
        assert_eq!(page(&merged, 40 * KIB), [0x22; PAGE]);
        assert_eq!(page(&merged, 60 * KIB), [0xAA; PAGE]);
        assert_eq!(page(&merged, 64 * KIB), [0x44; PAGE]);
        assert!(merged[68 * KIB as usize..].iter().all(|&b| b == 0));
        // The tail no diff wrote stays a hole.
        assert_eq!(data_bytes(&out).unwrap(), 68 * KIB);
    }

    #[test]
    fn a_dense_diff_replaces_everything() {
        // Accepted even where holes are not reported: a fully written diff
        // has every byte allocated.
        let dir = tempfile::tempdir().unwrap();
        let base = base_file(dir.path());
        let diff = dir.path().join("diff.mem");
        std::fs::write(&diff, vec![0x55; 64 * KIB as usize]).unwrap();
        let out = dir.path().join("merged.mem");
        let stats = merge_diff(&base, &[diff.as_path()], &out).unwrap();
        assert_eq!(stats.bytes_copied_from_diffs, 64 * KIB);
        assert_eq!(std::fs::read(&out).unwrap(), vec![0x55; 64 * KIB as usize]);
    }

    #[test]
    fn out_is_replaced_by_rename_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_file(dir.path());
        let out = dir.path().join("merged.mem");
        std::fs::write(&out, b"previous merge").unwrap();
        // A reader holding the old file keeps seeing it whole.
        let held = File::open(&out).unwrap();

        merge_diff(&base, &[], &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), vec![0xAA; 64 * KIB as usize]);
        let mut old = vec![0u8; 14];
        held.read_exact_at(&mut old, 0).unwrap();
        assert_eq!(old, b"previous merge");
        let mode = std::fs::metadata(&out).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn out_may_be_the_base_itself() {
        let dir = tempfile::tempdir().unwrap();
        require_holes(dir.path());
        let base = base_file(dir.path());
        let diff = dir.path().join("diff.mem");
        sparse(&diff, 64 * KIB, &[(0, 0x11)]);
        merge_diff(&base, &[diff.as_path()], &base).unwrap();
        let merged = std::fs::read(&base).unwrap();
        assert_eq!(page(&merged, 0), [0x11; PAGE]);
        assert_eq!(page(&merged, 4 * KIB), [0xAA; PAGE]);
    }

    #[test]
    fn a_missing_input_fails_without_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("merged.mem");
        let err = merge_diff(&dir.path().join("absent.mem"), &[], &out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let base = base_file(dir.path());
        let missing = dir.path().join("absent-diff.mem");
        let err = merge_diff(&base, &[missing.as_path()], &out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(!out.exists());
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn a_failed_rename_removes_the_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_file(dir.path());
        // A non-empty directory cannot be renamed over.
        let out = dir.path().join("merged.mem");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("keep"), b"x").unwrap();

        assert!(merge_diff(&base, &[], &out).is_err());
        assert!(leftovers(dir.path()).is_empty());
        assert_eq!(std::fs::read(out.join("keep")).unwrap(), b"x");
    }

    #[test]
    fn data_bytes_counts_only_data_extents() {
        let dir = tempfile::tempdir().unwrap();
        let dense = base_file(dir.path());
        assert_eq!(data_bytes(&dense).unwrap(), 64 * KIB);
        let diff = dir.path().join("diff.mem");
        sparse(&diff, 64 * KIB, &[(8 * KIB, 0x11), (40 * KIB, 0x22)]);
        let data = data_bytes(&diff).unwrap();
        if holes_work(dir.path()) {
            assert_eq!(data, 8192);
        } else {
            assert_eq!(data, 64 * KIB);
        }
        assert!(data_bytes(&dir.path().join("absent")).is_err());
    }
}
