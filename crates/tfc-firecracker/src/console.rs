//! Serial console capture. Firecracker writes the guest's serial port to its
//! stdout; a task copies it into a bounded log file and watches lines for the
//! texts registered at spawn (readiness markers, panics). Memory is bounded too:
//! only the last few lines are kept, and an over-long line is cut.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Longest line kept for matching; the log file gets everything.
const MAX_LINE: usize = 4096;
/// Lines kept in memory for error reports.
const TAIL_LINES: usize = 20;

/// Why waiting for a console line ended without it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsoleError {
    #[error("text {0:?} was not registered for watching at spawn")]
    NotWatched(String),
    #[error("console closed (VMM exited) before {0:?} appeared")]
    Closed(String),
}

#[derive(Debug, Clone, Default)]
struct Status {
    /// For each watched text, the first line that contained it.
    seen: Vec<Option<String>>,
    closed: bool,
}

/// Handle for waiting on console lines. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConsoleWatch {
    needles: Arc<Vec<String>>,
    status: watch::Receiver<Status>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl ConsoleWatch {
    /// Resolves with the first line containing `needle`, including lines that
    /// arrived before the call.
    pub async fn wait_for(&self, needle: &str) -> Result<String, ConsoleError> {
        let index = self
            .needles
            .iter()
            .position(|n| n == needle)
            .ok_or_else(|| ConsoleError::NotWatched(needle.to_owned()))?;
        let mut rx = self.status.clone();
        let status = rx
            .wait_for(|s| s.seen[index].is_some() || s.closed)
            .await
            .map_err(|_| ConsoleError::Closed(needle.to_owned()))?;
        status.seen[index]
            .clone()
            .ok_or_else(|| ConsoleError::Closed(needle.to_owned()))
    }

    /// Resolves once the console has closed (the VMM ended) and its last line
    /// and the log file are complete.
    pub async fn closed(&self) {
        let mut rx = self.status.clone();
        let _ = rx.wait_for(|s| s.closed).await;
    }

    /// The first line seen containing `needle`, if any yet.
    pub fn seen(&self, needle: &str) -> Option<String> {
        let index = self.needles.iter().position(|n| n == needle)?;
        self.status.borrow().seen[index].clone()
    }

    /// The last lines of output, oldest first.
    pub fn tail(&self) -> Vec<String> {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// A log file that rotates to `<name>.1` when it reaches its limit, so it never
/// holds more than twice `limit` bytes on disk.
struct BoundedLog {
    path: PathBuf,
    file: Option<File>,
    written: u64,
    limit: u64,
}

impl BoundedLog {
    async fn open(path: &Path, limit: u64) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .await?;
        Ok(Self {
            path: path.to_owned(),
            file: Some(file),
            written: 0,
            limit,
        })
    }

    async fn write(&mut self, data: &[u8]) {
        if let Some(file) = &mut self.file {
            // A full disk must not stop the VM: the console is best effort.
            if file.write_all(data).await.is_err() {
                self.file = None;
            }
        }
        self.written += data.len() as u64;
        if self.written >= self.limit {
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            let _ = tokio::fs::rename(&self.path, &rotated).await;
            self.file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&self.path)
                .await
                .ok();
            self.written = 0;
        }
    }
}

/// Starts copying `reader` into `log_path` and watching for `needles`.
pub async fn capture<R>(
    reader: R,
    log_path: &Path,
    limit: u64,
    needles: Vec<String>,
) -> std::io::Result<ConsoleWatch>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let mut log = BoundedLog::open(log_path, limit).await?;
    let needles = Arc::new(needles);
    let (tx, rx) = watch::channel(Status {
        seen: vec![None; needles.len()],
        closed: false,
    });
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let watch = ConsoleWatch {
        needles: needles.clone(),
        status: rx,
        tail: tail.clone(),
    };
    tokio::spawn(async move {
        let mut reader = reader;
        let mut buf = vec![0u8; 16 * 1024];
        let mut line: Vec<u8> = Vec::with_capacity(256);
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            log.write(&buf[..n]).await;
            for &byte in &buf[..n] {
                if byte == b'\n' {
                    finish_line(&line, &needles, &tx, &tail);
                    line.clear();
                } else if line.len() < MAX_LINE {
                    line.push(byte);
                }
            }
        }
        if !line.is_empty() {
            finish_line(&line, &needles, &tx, &tail);
        }
        if let Some(file) = &mut log.file {
            let _ = file.flush().await;
        }
        tx.send_modify(|s| s.closed = true);
    });
    Ok(watch)
}

fn finish_line(
    raw: &[u8],
    needles: &[String],
    tx: &watch::Sender<Status>,
    tail: &Mutex<VecDeque<String>>,
) {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end_matches('\r');
    if let Ok(mut tail) = tail.lock() {
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(text.to_owned());
    }
    let hits: Vec<usize> = needles
        .iter()
        .enumerate()
        .filter(|(_, n)| text.contains(n.as_str()))
        .map(|(i, _)| i)
        .collect();
    if !hits.is_empty() {
        tx.send_modify(|s| {
            for i in hits {
                s.seen[i].get_or_insert_with(|| text.to_owned());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_lines_and_bounds_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let (mut writer, reader) = tokio::io::duplex(1024);
        let watch = capture(
            reader,
            &log,
            64,
            vec!["Run /init".into(), "Kernel panic".into()],
        )
        .await
        .unwrap();
        writer
            .write_all(b"[ 0.1] booting\r\n[ 0.2] Run /init as init process\n")
            .await
            .unwrap();
        let line = watch.wait_for("Run /init").await.unwrap();
        assert_eq!(line, "[ 0.2] Run /init as init process");
        // Already-seen lines resolve immediately.
        assert_eq!(watch.seen("Run /init").as_deref(), Some(line.as_str()));
        writer.write_all(&[b'x'; 200]).await.unwrap();
        drop(writer);
        assert_eq!(
            watch.wait_for("Kernel panic").await,
            Err(ConsoleError::Closed("Kernel panic".into()))
        );
        watch.closed().await;
        assert_eq!(
            watch.wait_for("other").await,
            Err(ConsoleError::NotWatched("other".into()))
        );
        let main_len = std::fs::metadata(&log).unwrap().len();
        let rotated_len = std::fs::metadata(dir.path().join("console.log.1"))
            .unwrap()
            .len();
        assert!(
            main_len <= 200 && rotated_len >= 64,
            "{main_len} {rotated_len}"
        );
        assert_eq!(watch.tail().len(), 3);
        assert_eq!(watch.tail()[0], "[ 0.1] booting");
    }
}
