//! A VM's log files, as `GET /v1/vms/{id}/logs` serves them: the guest's
//! serial console (`console.log`, which the backends rotate into
//! `console.log.1`) and the VMM's own log (Firecracker's `firecracker.log`,
//! QEMU's stderr).
//!
//! Two ways to read: the last lines (`tail`), or everything written after
//! a byte offset an earlier read returned (`since`), which is how a client
//! follows a log by polling. Offsets count bytes of the current file; a file
//! shorter than the offset was rotated, and is then read from its start.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tfc_core::Vmm;

/// Most bytes one read returns; older ones are left out (a `tail` of a
/// huge log, or a follower far behind).
pub const MAX_LOG_READ: u64 = 4 * 1024 * 1024;

/// Most lines a `tail` may ask for.
pub const MAX_TAIL_LINES: usize = 100_000;

/// Which of a VM's logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogSource {
    /// The guest's serial console.
    #[default]
    Console,
    /// The VMM's own log: Firecracker's log file, or QEMU's stderr.
    Vmm,
}

/// A log file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("cannot read the log {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tail must be between 1 and {MAX_TAIL_LINES}")]
    BadTail(usize),
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRead {
    pub text: Vec<u8>,
    /// The current file's length after the read: the `since` of the next.
    pub offset: u64,
}

/// The file of `source` for a VM on `vmm` working in `workdir`.
pub fn log_path(workdir: &Path, vmm: Vmm, source: LogSource) -> PathBuf {
    workdir.join(match (source, vmm) {
        (LogSource::Console, _) => tfc_firecracker::process::CONSOLE_LOG,
        (LogSource::Vmm, Vmm::Firecracker) => tfc_firecracker::process::VMM_LOG,
        (LogSource::Vmm, Vmm::QemuTcg) => tfc_qemu::command::QEMU_STDERR,
    })
}

/// Reads `path` as asked: the bytes after `since`, else the last `tail`
/// lines (with the rotated `<path>.1` in front, so a tail spans a
/// rotation), else all of it; never more than [`MAX_LOG_READ`] bytes, the
/// newest kept. A file that does not exist (yet) reads as empty.
pub fn read_log(
    path: &Path,
    tail: Option<usize>,
    since: Option<u64>,
) -> Result<LogRead, LogsError> {
    if let Some(lines) = tail {
        if !(1..=MAX_TAIL_LINES).contains(&lines) {
            return Err(LogsError::BadTail(lines));
        }
    }
    let read_err = |source| LogsError::Read {
        path: path.to_owned(),
        source,
    };
    let (current, offset) = match since {
        Some(since) => {
            let (bytes, len) = read_from(path, since).map_err(read_err)?;
            return Ok(LogRead {
                text: bytes,
                offset: len,
            });
        }
        None => read_from(path, 0).map_err(read_err)?,
    };
    let Some(lines) = tail else {
        return Ok(LogRead {
            text: current,
            offset,
        });
    };
    let mut text = current;
    if count_lines(&text) < lines {
        let mut rotated = path.as_os_str().to_owned();
        rotated.push(".1");
        let rotated = PathBuf::from(rotated);
        if let Ok((mut older, _)) = read_from(&rotated, 0) {
            older.extend_from_slice(&text);
            text = older;
        }
    }
    Ok(LogRead {
        text: last_lines(&text, lines).to_vec(),
        offset,
    })
}

/// The bytes of `path` from `since` (from its start when the file is
/// shorter, i.e. was rotated), at most the last [`MAX_LOG_READ`] of them,
/// and the file's length.
fn read_from(path: &Path, since: u64) -> std::io::Result<(Vec<u8>, u64)> {
    // A jailed VMM's log is a link into its jail, whose user could put a
    // link to a host file or a FIFO there.
    let mut file = match tfc_firecracker::open_untrusted_link(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(err) => return Err(err),
    };
    let len = file.metadata()?.len();
    let start = if since > len { 0 } else { since };
    let start = start.max(len.saturating_sub(MAX_LOG_READ));
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    // Read up to the length seen: what is written meanwhile comes next time.
    file.take(len - start).read_to_end(&mut bytes)?;
    let end = start + bytes.len() as u64;
    Ok((bytes, end))
}

/// Lines in `text`, a last line without its newline included.
fn count_lines(text: &[u8]) -> usize {
    let newlines = text.iter().filter(|b| **b == b'\n').count();
    newlines + usize::from(text.last().is_some_and(|b| *b != b'\n'))
}

/// The last `n` lines of `text`.
fn last_lines(text: &[u8], n: usize) -> &[u8] {
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_count_lines_from_the_end() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(last_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(last_lines(b"", 1), b"");
        assert_eq!(count_lines(b"a\nb"), 2);
        assert_eq!(count_lines(b"a\nb\n"), 2);
        assert_eq!(count_lines(b""), 0);
    }

    #[test]
    fn reads_follow_offsets_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        // Absent: empty, offset 0.
        assert_eq!(read_log(&path, None, None).unwrap().offset, 0);
        std::fs::write(&path, b"one\ntwo\n").unwrap();
        let first = read_log(&path, None, Some(0)).unwrap();
        assert_eq!(
            (first.text.as_slice(), first.offset),
            (&b"one\ntwo\n"[..], 8)
        );
        std::fs::write(&path, b"one\ntwo\nthree\n").unwrap();
        let next = read_log(&path, None, Some(first.offset)).unwrap();
        assert_eq!((next.text.as_slice(), next.offset), (&b"three\n"[..], 14));
        // Rotated: the old content moved to .1, the file started again.
        std::fs::rename(&path, dir.path().join("console.log.1")).unwrap();
        std::fs::write(&path, b"four\n").unwrap();
        let after = read_log(&path, None, Some(next.offset)).unwrap();
        assert_eq!((after.text.as_slice(), after.offset), (&b"four\n"[..], 5));
        // A tail reaches into the rotated file when it must.
        let tail = read_log(&path, Some(2), None).unwrap();
        assert_eq!(
            (tail.text.as_slice(), tail.offset),
            (&b"three\nfour\n"[..], 5)
        );
        assert!(matches!(
            read_log(&path, Some(0), None),
            Err(LogsError::BadTail(0))
        ));
    }
}
