//! Runs the external build tools (tar, make, pip, mkfs.ext4) with their full
//! output in a log file and a throttled progress line for the user.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often a long step reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Output lines kept for an error message.
const TAIL_LINES: usize = 15;

/// An external tool could not be run or failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot write the build log {}", .path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start `{program}`: is it installed and on PATH?")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}); full log: {}; last output:\n{tail}", .log.display())]
    Failed {
        command: String,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
}

/// What a successful run printed, for callers that parse it.
#[derive(Debug, Clone, Default)]
pub struct ToolOutput {
    pub lines: Vec<String>,
}

/// One asset's build log; every command run through it is appended with a
/// header line, and progress lines are prefixed with `[label]`.
#[derive(Debug)]
pub struct ToolLog {
    label: &'static str,
    path: PathBuf,
    file: File,
}

impl ToolLog {
    pub fn open(label: &'static str, path: PathBuf) -> Result<Self, ToolError> {
        let log_err = |source| ToolError::Log {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(log_err)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(log_err)?;
        Ok(ToolLog { label, path, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn label(&self) -> &'static str {
        self.label
    }

    /// Writes a note (not tool output) into the log.
    pub fn note(&mut self, text: &str) -> Result<(), ToolError> {
        writeln!(self.file, "### {text}").map_err(|source| ToolError::Log {
            path: self.path.clone(),
            source,
        })
    }

    /// Runs `cmd` to completion. `step` names it in progress lines; output
    /// lines go to the log, and to `progress` as a count at most every
    /// `PROGRESS_EVERY` (5 s).
    pub fn run(
        &mut self,
        step: &str,
        cmd: &mut Command,
        progress: &mut dyn FnMut(&str),
    ) -> Result<ToolOutput, ToolError> {
        let command = describe(cmd);
        self.note(&format!("$ {command}"))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| ToolError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;

        let (tx, rx) = mpsc::channel::<String>();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(spawn_line_reader(out, tx.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(spawn_line_reader(err, tx.clone()));
        }
        // The channel disconnects once both readers hit EOF.
        drop(tx);

        let started = Instant::now();
        let mut last_report = started;
        let mut count = 0usize;
        let mut lines = Vec::new();
        let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
        let mut write_result = Ok(());
        loop {
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(line) => {
                    count += 1;
                    if write_result.is_ok() {
                        write_result = writeln!(self.file, "{line}");
                    }
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line.clone());
                    lines.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                progress(&format!(
                    "[{}] {step}: {count} lines of output, {} s so far (log: {})",
                    self.label,
                    started.elapsed().as_secs(),
                    self.path.display()
                ));
            }
        }
        for r in readers {
            let _ = r.join();
        }
        let status = child.wait().map_err(|source| ToolError::Spawn {
            program: command.clone(),
            source,
        })?;
        write_result.map_err(|source| ToolError::Log {
            path: self.path.clone(),
            source,
        })?;
        self.note(&format!(
            "{status} after {:.1} s",
            started.elapsed().as_secs_f64()
        ))?;
        if !status.success() {
            return Err(ToolError::Failed {
                command,
                status,
                log: self.path.clone(),
                tail: Vec::from(tail).join("\n"),
            });
        }
        Ok(ToolOutput { lines })
    }
}

fn spawn_line_reader<R: Read + Send + 'static>(
    stream: R,
    tx: mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        // Tool output is not always UTF-8 (compiler quotes, tar names), and a
        // lossy line is still worth logging.
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
            buf.clear();
            if tx.send(line).is_err() {
                break;
            }
        }
    })
}

/// `program arg arg` for logs and error messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a short query command (`--version` and the like) and collects its
/// output, but gives up after `limit`: a wedged binary must not hang `tfc
/// doctor` or `tfc assets`. On time-out the command is killed (through a pidfd,
/// so never another process) and an error of kind `TimedOut` returned.
pub fn output_within(cmd: &mut Command, limit: Duration) -> io::Result<std::process::Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // The child is not reaped until wait_with_output below, so its pid is ours.
    let pidfd = tfc_firecracker::pidfd::Pidfd::open(child.id())?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output,
        Err(_) => {
            let _ = pidfd.send_signal(libc::SIGKILL);
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("`{}` did not finish within {limit:?}", describe(cmd)),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_output_and_reports_failure_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = ToolLog::open("test", dir.path().join("logs/t.log")).expect("log");
        let mut seen = Vec::new();
        let out = log
            .run(
                "echo",
                Command::new("sh").args(["-c", "echo one; echo two >&2"]),
                &mut |l| seen.push(l.to_string()),
            )
            .expect("run");
        assert_eq!(out.lines.len(), 2);
        let err = log
            .run(
                "fail",
                Command::new("sh").args(["-c", "echo boom; exit 3"]),
                &mut |_| {},
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("`sh -c echo boom; exit 3` failed"), "{err}");
        assert!(err.ends_with("boom"), "{err}");
        let text = std::fs::read_to_string(log.path()).expect("read log");
        assert!(text.contains("$ sh -c echo one; echo two >&2"));
        assert!(text.contains("two"));
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = ToolLog::open("test", dir.path().join("t.log")).expect("log");
        let err = log.run("x", &mut Command::new("/nonexistent/tool"), &mut |_| {});
        assert!(matches!(err, Err(ToolError::Spawn { .. })));
    }

    #[test]
    fn query_commands_are_bounded_in_time() {
        let out = output_within(Command::new("echo").arg("hi"), Duration::from_secs(5)).unwrap();
        assert_eq!(out.stdout, b"hi\n");
        let started = Instant::now();
        let err =
            output_within(Command::new("sleep").arg("30"), Duration::from_millis(100)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
