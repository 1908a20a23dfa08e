//! Serial console capture. Firecracker writes the guest's serial port to its
//! stdout, which is a file in the VM's directory opened for appending, not a
//! pipe: the console then outlives the daemon, and a daemon that re-adopts a
//! running VM picks it up where it is. A tailer task reads the file, watches
//! lines for the texts registered at start (readiness markers, panics), and keeps
//! the file bounded by moving its content to `<name>.1` and truncating it (the
//! writer appends, so it carries on at the new end). Memory is bounded too: only
//! the last few lines are kept, and an over-long line is cut.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

/// Longest line kept for matching; the log file gets everything.
const MAX_LINE: usize = 4096;
/// Lines kept in memory for error reports.
const TAIL_LINES: usize = 20;
/// The tailer polls fast while output flows (a boot) and backs off to this when
/// the console is quiet, so idle VMs cost next to nothing.
const MAX_IDLE_POLL: Duration = Duration::from_millis(250);

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

/// Opens (truncating) the console file a new VMM's stdout will append to.
pub fn create_console_file(path: &Path) -> std::io::Result<std::fs::File> {
    // std refuses truncate together with append; empty it after opening.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.set_len(0)?;
    Ok(file)
}

/// Moves the console file's content to `<name>.1` and empties it, once it holds
/// `limit` bytes or more, so it never holds much more than twice `limit` on disk.
async fn rotate(path: &Path) -> std::io::Result<()> {
    let mut rotated = path.as_os_str().to_owned();
    rotated.push(".1");
    tokio::fs::copy(path, &rotated).await?;
    let file = tokio::fs::OpenOptions::new().write(true).open(path).await?;
    file.set_len(0).await
}

/// Starts tailing the console file at `log_path` (from its start, so lines
/// written before the call count) and watching for `needles`. The tailer ends,
/// closing the console, once `ended` resolves and the file is read to its end.
pub async fn tail_file(
    log_path: &Path,
    limit: u64,
    needles: Vec<String>,
    ended: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<ConsoleWatch> {
    let mut file = File::open(log_path).await?;
    let path = log_path.to_owned();
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
        tokio::pin!(ended);
        let mut ended_seen = false;
        let mut buf = vec![0u8; 16 * 1024];
        let mut line: Vec<u8> = Vec::with_capacity(256);
        let mut offset: u64 = 0;
        let mut idle = Duration::from_millis(1);
        loop {
            let n = file.read(&mut buf).await.unwrap_or(0);
            if n > 0 {
                offset += n as u64;
                idle = Duration::from_millis(1);
                for &byte in &buf[..n] {
                    if byte == b'\n' {
                        finish_line(&line, &needles, &tx, &tail);
                        line.clear();
                    } else if line.len() < MAX_LINE {
                        line.push(byte);
                    }
                }
                continue;
            }
            // At the end of what is written so far.
            if ended_seen {
                break;
            }
            if offset >= limit && rotate(&path).await.is_ok() {
                offset = 0;
                let _ = file.seek(std::io::SeekFrom::Start(0)).await;
                continue;
            }
            tokio::select! {
                _ = &mut ended => ended_seen = true,
                _ = tokio::time::sleep(idle) => idle = (idle * 2).min(MAX_IDLE_POLL),
            }
        }
        if !line.is_empty() {
            finish_line(&line, &needles, &tx, &tail);
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
        use std::io::Write;

        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut writer = create_console_file(&log).unwrap();
        writer
            .write_all(b"[ 0.1] booting\r\n[ 0.2] Run /init as init process\n")
            .unwrap();
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
        let watch = tail_file(
            &log,
            64,
            vec!["Run /init".into(), "Kernel panic".into()],
            async {
                let _ = end_rx.await;
            },
        )
        .await
        .unwrap();
        // Lines written before the tailer started count.
        let line = watch.wait_for("Run /init").await.unwrap();
        assert_eq!(line, "[ 0.2] Run /init as init process");
        assert_eq!(watch.seen("Run /init").as_deref(), Some(line.as_str()));
        // Past the limit the content moves to console.log.1; the appending writer
        // carries on at the start of the emptied file.
        writer.write_all(&[b'x'; 200]).unwrap();
        writer.write_all(b"\nafter rotation\n").unwrap();
        for _ in 0..200 {
            if watch.tail().iter().any(|l| l == "after rotation") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = end_tx.send(());
        assert_eq!(
            watch.wait_for("Kernel panic").await,
            Err(ConsoleError::Closed("Kernel panic".into()))
        );
        watch.closed().await;
        assert_eq!(
            watch.wait_for("other").await,
            Err(ConsoleError::NotWatched("other".into()))
        );
        let rotated = std::fs::read(dir.path().join("console.log.1")).unwrap();
        assert!(rotated.starts_with(b"[ 0.1] booting"), "{rotated:?}");
        let main_len = std::fs::metadata(&log).unwrap().len();
        assert!(main_len < 300, "{main_len}");
        assert!(watch.tail().contains(&"after rotation".to_owned()));
        assert_eq!(watch.tail()[0], "[ 0.1] booting");
    }
}
