//! Commands and files in a guest, through its agent, as HTTP bodies: an
//! exec's events as NDJSON lines while the command runs, a file's contents
//! in either direction.
//!
//! Each answer body is fed by a task of its own through a bounded channel
//! ([`ChannelBody`]): a client that reads slowly slows the agent (and the
//! command's output pipe) down instead of making the daemon buffer, and a
//! client that goes away drops the channel, which ends the task; for an
//! exec, dropping its handle asks the agent to kill the command.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tfc_agent_client::{AgentError, ExecHandle, FileInfo};
use tfc_api::{ErrorCode, ExecEvent, ExecRequest, ExecStdin, GuestFile, MAX_EXEC_STDIN};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::agent::{self, LinkError, SessionEnd};
use crate::manager::{ManagerError, VmManager};

/// Lines (or chunks) waiting for the client: with the agent's own
/// buffering, enough to keep a fast client busy, few enough that a slow one
/// holds back the command soon.
const BODY_CHUNKS: usize = 16;

/// How long past an exec's own timeout the agent may take to report the
/// exit (it kills the process group at the timeout) before the daemon gives
/// up on it.
pub const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Why a request into a guest was refused or failed before its answer began.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("argv is empty: name the program to run")]
    EmptyArgv,
    #[error("stdin.base64 is not valid base64")]
    StdinBase64(#[source] base64::DecodeError),
    #[error("stdin holds {0} bytes, over the limit of {MAX_EXEC_STDIN}")]
    StdinTooLarge(usize),
    #[error("path {0:?} is not absolute: give the file's full path in the guest")]
    RelativePath(String),
    #[error("mode {0:?} is not an octal permission mode such as 0644")]
    BadMode(String),
    #[error("an upload needs a Content-Length header: the agent writes exactly that many bytes")]
    NoLength,
    #[error("the file holds {size} bytes, over the daemon's limit of {limit} bytes (agent.max_file_mib)")]
    TooLarge { size: u64, limit: u64 },
    #[error(transparent)]
    Vm(#[from] ManagerError),
    #[error("VM {id}: {what} in the guest failed")]
    Agent {
        id: String,
        what: &'static str,
        #[source]
        source: LinkError,
    },
    #[error("reading the upload's request body failed")]
    UploadBody(#[source] axum::Error),
    #[error("the upload's request body ended before the length its Content-Length announced")]
    ShortBody(#[source] std::io::Error),
    #[error("VM {id}: writing {path} in the guest failed")]
    Upload {
        id: String,
        path: String,
        #[source]
        source: AgentError,
    },
    #[error("VM {id}: the guest stopped running during the upload (paused or stopped)")]
    UploadEnded { id: String },
}

/// An answer body fed through a channel by the task that produces it. An
/// error in the channel cuts the connection, so the client sees an
/// incomplete body, never a complete-looking wrong one.
#[derive(Debug)]
pub struct ChannelBody {
    chunks: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    /// The exact length, when known before the first byte.
    size: Option<u64>,
}

impl ChannelBody {
    fn channel(size: Option<u64>) -> (mpsc::Sender<Result<Bytes, std::io::Error>>, Self) {
        let (sender, chunks) = mpsc::channel(BODY_CHUNKS);
        (sender, Self { chunks, size })
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.chunks
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| chunk.map(Frame::data)))
    }

    fn size_hint(&self) -> SizeHint {
        self.size
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// The agent's request for `request`, and its stdin decoded.
fn prepare_exec(
    request: ExecRequest,
) -> Result<(tfc_agent_client::ExecRequest, Option<Vec<u8>>), GuestError> {
    if request.argv.is_empty() {
        return Err(GuestError::EmptyArgv);
    }
    let stdin = match request.stdin {
        None => None,
        Some(ExecStdin::Text(text)) => Some(text.into_bytes()),
        Some(ExecStdin::Base64(text)) => {
            Some(BASE64.decode(text).map_err(GuestError::StdinBase64)?)
        }
    };
    if let Some(bytes) = &stdin {
        if bytes.len() > MAX_EXEC_STDIN {
            return Err(GuestError::StdinTooLarge(bytes.len()));
        }
    }
    let mut agent_request = tfc_agent_client::ExecRequest::new(request.argv);
    agent_request.env.extend(request.env);
    agent_request.cwd = request.cwd;
    agent_request.stdin = stdin.is_some();
    agent_request.timeout = request.timeout_ms.map(Duration::from_millis);
    agent_request.uid = request.uid;
    Ok((agent_request, stdin))
}

/// Starts `request` in VM `id`'s guest; the body streams its events (see
/// [`ExecEvent`]). Refusals before the command starts (no agent, a VM that
/// does not run, a program that does not exist) are errors; everything after
/// is an event.
pub async fn exec(
    manager: &VmManager,
    id: &str,
    request: ExecRequest,
) -> Result<ChannelBody, GuestError> {
    let (agent_request, stdin) = prepare_exec(request)?;
    let timeout = agent_request.timeout;
    let (connection, mut end) = manager.agent(id).await?;
    let started = Instant::now();
    // A guest paused meanwhile would never answer: its session's end says
    // so at once (409), rather than the call's timeout later (504).
    let handle = tokio::select! {
        started = agent::call("exec", connection.exec(agent_request)) => started,
        _ = end.wait() => Err(LinkError::Ended),
    }
    .map_err(|source| GuestError::Agent {
        id: id.to_owned(),
        what: "starting the command",
        source,
    })?;
    tracing::debug!(vm = %id, pid = handle.pid(), "exec started");
    let (lines, body) = ChannelBody::channel(None);
    tokio::spawn(pump_exec(handle, stdin, end, lines, started, timeout));
    Ok(body)
}

fn line(event: &ExecEvent) -> Bytes {
    let mut text = serde_json::to_vec(event).expect("exec events serialize");
    text.push(b'\n');
    Bytes::from(text)
}

/// Feeds an exec's events to its client until the final one. Returns early,
/// without a final event, only when the client has gone (then dropping
/// `handle` has the agent kill the command).
async fn pump_exec(
    mut handle: ExecHandle,
    stdin: Option<Vec<u8>>,
    mut end: SessionEnd,
    lines: mpsc::Sender<Result<Bytes, std::io::Error>>,
    started: Instant,
    timeout: Option<Duration>,
) {
    if lines
        .send(Ok(line(&ExecEvent::Started { pid: handle.pid() })))
        .await
        .is_err()
    {
        return;
    }
    // Written beside the reads: a command that fills its output pipe before
    // it reads all its input would otherwise block both sides.
    let writer = stdin.map(|bytes| {
        let control = handle.control();
        tokio::spawn(async move {
            if let Err(err) = control.write_stdin(&bytes).await {
                tracing::debug!(error = %tfc_core::error_chain(&err), "exec stdin not fully written");
            }
            let _ = control.close_stdin().await;
        })
    });
    // The agent kills the command at its timeout and reports the exit; one
    // that stays silent past the grace is wedged.
    let deadline = timeout.map(|t| started + t + EXIT_GRACE);
    let last = loop {
        let event = tokio::select! {
            event = handle.next_event() => event,
            _ = end.wait() => break ExecEvent::Error {
                code: ErrorCode::InvalidState,
                message: "the VM's guest stopped running (paused or stopped) while the command ran; \
                          the agent was asked to kill it".to_owned(),
            },
            _ = lines.closed() => {
                tracing::debug!(pid = handle.pid(), "the exec's client went away; killing the command");
                return;
            }
            _ = sleep_until(deadline) => break ExecEvent::Error {
                code: ErrorCode::Timeout,
                message: format!(
                    "the agent reported no exit within {} s of the command's timeout; it was asked to kill it",
                    EXIT_GRACE.as_secs()
                ),
            },
        };
        let event = match event {
            Ok(Some(tfc_agent_client::ExecEvent::Stdout(bytes))) => ExecEvent::Stdout {
                data: BASE64.encode(bytes),
            },
            Ok(Some(tfc_agent_client::ExecEvent::Stderr(bytes))) => ExecEvent::Stderr {
                data: BASE64.encode(bytes),
            },
            // No signals are sent through this API.
            Ok(Some(tfc_agent_client::ExecEvent::SignalRefused { .. })) => continue,
            Ok(Some(tfc_agent_client::ExecEvent::Exit(status))) => {
                break ExecEvent::Exit {
                    code: status.code,
                    signal: status.signal,
                    timed_out: status.timed_out,
                    duration_ms: started.elapsed().as_millis() as u64,
                }
            }
            Ok(None) => {
                break ExecEvent::Error {
                    code: ErrorCode::BackendError,
                    message: "the agent ended the exec without an exit".to_owned(),
                }
            }
            Err(err) => {
                break ExecEvent::Error {
                    code: crate::api::agent_error_code(&err),
                    message: tfc_core::error_chain(&err),
                }
            }
        };
        if lines.send(Ok(line(&event))).await.is_err() {
            return;
        }
    };
    if let Some(writer) = writer {
        writer.abort();
    }
    let _ = lines.send(Ok(line(&last))).await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn check_path(path: &str) -> Result<(), GuestError> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(GuestError::RelativePath(path.to_owned()))
    }
}

/// Parses an octal permission mode ("0644", "644", "0o755").
pub fn parse_mode(text: &str) -> Result<u32, GuestError> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if !digits.is_empty() && mode <= 0o7777 => Ok(mode),
        _ => Err(GuestError::BadMode(text.to_owned())),
    }
}

/// The mode of a file uploaded without one.
pub const DEFAULT_MODE: u32 = 0o644;

/// Writes the request body (`size` bytes, as its Content-Length said) to
/// `path` in VM `id`'s guest with permission bits `mode` (octal text; 0644
/// when `None`), atomically: the guest sees the old file or the whole new
/// one. A body that ends early or fails leaves nothing.
///
/// A refused upload still reads (and drops) the body its client is
/// sending, when its length is within `limit`: a client whose body is cut
/// off mid-write sees a broken pipe instead of the answer that says why.
pub async fn put_file(
    manager: &VmManager,
    id: &str,
    path: &str,
    mode: Option<&str>,
    size: Option<u64>,
    limit: u64,
    body: axum::body::Body,
) -> Result<GuestFile, GuestError> {
    let checked = async {
        check_path(path)?;
        let mode = mode.map_or(Ok(DEFAULT_MODE), parse_mode)?;
        let size = size.ok_or(GuestError::NoLength)?;
        if size > limit {
            return Err(GuestError::TooLarge { size, limit });
        }
        let (connection, end) = manager.agent(id).await?;
        Ok((mode, size, connection, end))
    };
    let (mode, size, connection, mut end) = match checked.await {
        Ok(checked) => checked,
        Err(err) => {
            if size.is_some_and(|size| size <= limit) {
                discard(body).await;
            }
            return Err(err);
        }
    };
    let (mut writer, reader) = tokio::io::duplex(tfc_agent_client::connection::CHUNK);
    let feed = async move {
        let mut body = body;
        let mut refused = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(GuestError::UploadBody)?;
            if let Ok(data) = frame.into_data() {
                // The agent's side fails only when it refused the file,
                // which it reports; the rest of the body is dropped.
                if !refused && writer.write_all(&data).await.is_err() {
                    refused = true;
                }
            }
        }
        // Dropping the writer ends the agent's source: a short body is a
        // short file, which the agent refuses and removes.
        Ok::<(), GuestError>(())
    };
    let write = async {
        connection
            .put_file_from(path, mode, size, reader)
            .await
            .map_err(|err| match err {
                // The agent then has removed what it began writing.
                AgentError::ReadSource(short) => GuestError::ShortBody(short),
                source => GuestError::Upload {
                    id: id.to_owned(),
                    path: path.to_owned(),
                    source,
                },
            })
    };
    let upload = async {
        let (fed, written) = tokio::join!(feed, write);
        // The agent's verdict first: a refusal explains a stalled body.
        written?;
        fed
    };
    tokio::select! {
        outcome = upload => outcome?,
        _ = end.wait() => return Err(GuestError::UploadEnded { id: id.to_owned() }),
    };
    Ok(GuestFile {
        path: path.to_owned(),
        size,
        mode,
    })
}

/// How long a refused upload's body is read at most before the connection
/// is dropped anyway.
const DISCARD_LIMIT: Duration = Duration::from_secs(60);

/// Reads and drops `body` (its length was checked against the limit).
async fn discard(mut body: axum::body::Body) {
    let drained = async { while let Some(Ok(_)) = body.frame().await {} };
    let _ = tokio::time::timeout(DISCARD_LIMIT, drained).await;
}

/// Starts reading `path` from VM `id`'s guest: what the agent announced
/// (size, mode), and the body that streams the contents.
pub async fn get_file(
    manager: &VmManager,
    id: &str,
    path: &str,
    limit: u64,
) -> Result<(FileInfo, ChannelBody), GuestError> {
    check_path(path)?;
    let (connection, mut end) = manager.agent(id).await?;
    let mut download = tokio::select! {
        opened = agent::call("get_file", connection.open_file(path, limit)) => opened,
        _ = end.wait() => Err(LinkError::Ended),
    }
    .map_err(|source| GuestError::Agent {
        id: id.to_owned(),
        what: "reading the file",
        source,
    })?;
    let info = download.info();
    let (chunks, body) = ChannelBody::channel(Some(info.size));
    tokio::spawn(async move {
        loop {
            let chunk = tokio::select! {
                chunk = download.next_chunk() => chunk,
                _ = end.wait() => Err(AgentError::ConnectionClosed),
                _ = chunks.closed() => return,
            };
            let sent = match chunk {
                Ok(Some(bytes)) => chunks.send(Ok(Bytes::from(bytes))).await,
                Ok(None) => return,
                Err(err) => {
                    let err = std::io::Error::other(format!(
                        "the download failed: {}",
                        tfc_core::error_chain(&err)
                    ));
                    chunks.send(Err(err)).await
                }
            };
            if sent.is_err() {
                return;
            }
        }
    });
    Ok((info, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("0644").unwrap(), 0o644);
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        assert_eq!(parse_mode("0o4750").unwrap(), 0o4750);
        for bad in ["", "0o", "0999", "rwx", "17777", "-1"] {
            assert!(
                matches!(parse_mode(bad), Err(GuestError::BadMode(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn exec_requests_are_checked_and_decoded() {
        let request = |stdin| ExecRequest {
            argv: vec!["cat".into()],
            stdin,
            ..ExecRequest::default()
        };
        let (agent, stdin) = prepare_exec(request(Some(ExecStdin::Base64("AAH/".into())))).unwrap();
        assert_eq!(stdin.unwrap(), [0, 1, 255]);
        assert!(agent.stdin);
        assert_eq!(
            agent.env["PATH"],
            tfc_agent_client::ExecRequest::DEFAULT_PATH
        );
        let (agent, stdin) = prepare_exec(request(None)).unwrap();
        assert!(!agent.stdin && stdin.is_none());
        assert!(matches!(
            prepare_exec(request(Some(ExecStdin::Base64("!!".into())))),
            Err(GuestError::StdinBase64(_))
        ));
        let big = "x".repeat(MAX_EXEC_STDIN + 1);
        assert!(matches!(
            prepare_exec(request(Some(ExecStdin::Text(big)))),
            Err(GuestError::StdinTooLarge(_))
        ));
        assert!(matches!(
            prepare_exec(ExecRequest::default()),
            Err(GuestError::EmptyArgv)
        ));
        let mut env = ExecRequest {
            argv: vec!["env".into()],
            ..ExecRequest::default()
        };
        env.env.insert("PATH".into(), "/opt/bin".into());
        env.env.insert("A".into(), "1".into());
        let (agent, _) = prepare_exec(env).unwrap();
        assert_eq!(agent.env["PATH"], "/opt/bin");
        assert_eq!(agent.env["A"], "1");
    }
}
