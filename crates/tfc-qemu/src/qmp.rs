//! A small client of QEMU's machine protocol (QMP) on its Unix socket: the
//! greeting, capabilities negotiation, and the few commands the daemon needs
//! (`stop`, `cont`, `query-status`, `quit`).
//!
//! QMP is newline-delimited JSON. The server speaks first (`{"QMP": ...}`),
//! accepts commands only after `qmp_capabilities`, and answers each command
//! with `{"return": ...}` or `{"error": {"class", "desc"}}`; asynchronous
//! events (`{"event": ...}`) may come before an answer and are skipped.
//!
//! One connection per command. QEMU serves one QMP client at a time on a
//! socket, so a connection held open would lock out a later daemon that
//! adopts the VM; and a fresh connection never carries events or a half-read
//! answer left over from a call that timed out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Longest QMP message read; the answers this client asks for are far smaller.
const MAX_MESSAGE: u64 = 64 * 1024;

/// A failed QMP exchange.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to the QMP socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the QMP connection failed")]
    Io(#[source] std::io::Error),
    #[error("QEMU closed the QMP connection before answering `{0}`")]
    Closed(String),
    #[error("QEMU did not answer `{command}` within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("QEMU sent something that is not QMP: {0}")]
    Protocol(String),
    #[error("QEMU refused `{command}`: {class}: {desc}")]
    Refused {
        command: String,
        class: String,
        desc: String,
    },
}

/// What `query-status` reports about the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// QEMU's run state: `prelaunch` (started with `-S`, never run),
    /// `running`, `paused`, `shutdown`, `internal-error`, ...
    pub status: String,
    /// The vCPUs run.
    pub running: bool,
}

/// The QMP socket of one QEMU process.
#[derive(Debug, Clone)]
pub struct QmpClient {
    socket: PathBuf,
    timeout: Duration,
}

impl QmpClient {
    /// A client of `socket`; every command (connection included) must finish
    /// within `timeout`.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs `command` (no arguments) and returns its `return` value.
    pub async fn execute(&self, command: &str) -> Result<Value, QmpError> {
        let exchange = async {
            let stream =
                UnixStream::connect(&self.socket)
                    .await
                    .map_err(|source| QmpError::Connect {
                        path: self.socket.clone(),
                        source,
                    })?;
            session(stream, command).await
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| QmpError::Timeout {
                command: command.to_owned(),
                timeout: self.timeout,
            })?
    }

    /// Pauses the vCPUs.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute("stop").await.map(drop)
    }

    /// Runs the vCPUs: starts a guest spawned with `-S`, resumes a paused one.
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont").await.map(drop)
    }

    pub async fn query_status(&self) -> Result<Status, QmpError> {
        let value = self.execute("query-status").await?;
        let status = value
            .get("status")
            .and_then(Value::as_str)
            .ok_or_else(|| QmpError::Protocol(format!("query-status answered {value}")))?;
        let running = value
            .get("running")
            .and_then(Value::as_bool)
            .ok_or_else(|| QmpError::Protocol(format!("query-status answered {value}")))?;
        Ok(Status {
            status: status.to_owned(),
            running,
        })
    }

    /// Asks QEMU to exit. QEMU may close the connection as it goes, before
    /// or after its answer; either way the request was taken.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute("quit").await {
            Ok(_) | Err(QmpError::Closed(_)) => Ok(()),
            // QEMU exiting with our `quit` unread may reset the connection
            // rather than close it: the same answer.
            Err(QmpError::Io(err))
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        }
    }
}

/// One QMP session on `stream`: greeting, negotiation, `command`.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    command: &str,
) -> Result<Value, QmpError> {
    let mut stream = BufReader::new(stream);
    let greeting = read_message(&mut stream, command).await?;
    if greeting.get("QMP").is_none() {
        return Err(QmpError::Protocol(format!("greeting {greeting}")));
    }
    call(&mut stream, "qmp_capabilities").await?;
    call(&mut stream, command).await
}

/// Sends `command` and reads up to its answer, skipping events.
async fn call<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    command: &str,
) -> Result<Value, QmpError> {
    let mut request = serde_json::json!({ "execute": command }).to_string();
    request.push('\n');
    stream
        .get_mut()
        .write_all(request.as_bytes())
        .await
        .map_err(QmpError::Io)?;
    loop {
        let mut message = read_message(stream, command).await?;
        if let Some(value) = message.get_mut("return") {
            return Ok(value.take());
        }
        if let Some(error) = message.get("error") {
            let field = |name| {
                error
                    .get(name)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            return Err(QmpError::Refused {
                command: command.to_owned(),
                class: field("class"),
                desc: field("desc"),
            });
        }
        if message.get("event").is_none() {
            return Err(QmpError::Protocol(message.to_string()));
        }
    }
}

/// Reads one JSON object line (at most [`MAX_MESSAGE`] bytes).
async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut BufReader<S>,
    command: &str,
) -> Result<Value, QmpError> {
    let mut line = Vec::new();
    let n = (&mut *stream)
        .take(MAX_MESSAGE)
        .read_until(b'\n', &mut line)
        .await
        .map_err(QmpError::Io)?;
    if n == 0 {
        return Err(QmpError::Closed(command.to_owned()));
    }
    if line.last() != Some(&b'\n') {
        return Err(QmpError::Protocol(format!(
            "a message cut off or longer than {MAX_MESSAGE} bytes"
        )));
    }
    match serde_json::from_slice::<Value>(&line) {
        Ok(value) if value.is_object() => Ok(value),
        _ => Err(QmpError::Protocol(
            String::from_utf8_lossy(&line).trim_end().to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncBufReadExt};

    const GREETING: &str =
        "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}}, \"capabilities\": [\"oob\"]}}\r\n";

    /// Plays the server's side of a session from a script: for each line the
    /// client sends, the expected request and the lines to answer with.
    async fn server(
        stream: tokio::io::DuplexStream,
        script: Vec<(&'static str, Vec<&'static str>)>,
    ) {
        let mut stream = BufReader::new(stream);
        stream
            .get_mut()
            .write_all(GREETING.as_bytes())
            .await
            .unwrap();
        for (expected, answers) in script {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            let request: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(request["execute"], expected, "{line}");
            for answer in answers {
                stream.get_mut().write_all(answer.as_bytes()).await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn negotiates_then_runs_the_command_skipping_events() {
        let (client, server_end) = duplex(4096);
        let server = tokio::spawn(server(
            server_end,
            vec![
                ("qmp_capabilities", vec!["{\"return\": {}}\r\n"]),
                (
                    "query-status",
                    vec![
                        "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"RESUME\"}\r\n",
                        "{\"return\": {\"status\": \"running\", \"singlestep\": false, \"running\": true}}\r\n",
                    ],
                ),
            ],
        ));
        let value = session(client, "query-status").await.unwrap();
        assert_eq!(value["status"], "running");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn an_error_answer_names_the_command_and_class() {
        let (client, server_end) = duplex(4096);
        let server = tokio::spawn(server(
            server_end,
            vec![
                ("qmp_capabilities", vec!["{\"return\": {}}\r\n"]),
                (
                    "cont",
                    vec!["{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}}\r\n"],
                ),
            ],
        ));
        let err = session(client, "cont").await.unwrap_err();
        assert!(
            matches!(&err, QmpError::Refused { command, class, desc }
                if command == "cont" && class == "GenericError" && desc == "no"),
            "{err:?}"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_peer_that_is_not_qmp_is_refused() {
        let (client, mut server_end) = duplex(4096);
        server_end.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        let err = session(client, "stop").await.unwrap_err();
        assert!(matches!(err, QmpError::Protocol(_)), "{err:?}");

        let (client, mut server_end) = duplex(4096);
        server_end.write_all(b"{\"hello\": 1}\n").await.unwrap();
        let err = session(client, "stop").await.unwrap_err();
        assert!(matches!(err, QmpError::Protocol(_)), "{err:?}");

        let (client, server_end) = duplex(4096);
        drop(server_end);
        let err = session(client, "stop").await.unwrap_err();
        assert!(matches!(err, QmpError::Closed(_)), "{err:?}");
    }

    #[tokio::test]
    async fn quit_accepts_a_close_before_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            // Answers the negotiation, then goes away on `quit` as QEMU may.
            let script = vec![
                ("qmp_capabilities", vec!["{\"return\": {}}\n"]),
                ("quit", vec![]),
            ];
            server(stream_into_duplex(stream).await, script).await;
        });
        let client = QmpClient::new(&path, Duration::from_secs(5));
        client.quit().await.unwrap();
        server.await.unwrap();
        // Nobody listens any more: a clear connect error, bounded in time.
        let err = client.stop().await.unwrap_err();
        assert!(matches!(err, QmpError::Connect { .. }), "{err:?}");
    }

    /// Bridges a Unix stream to the duplex the scripted server speaks; the
    /// bridge ends (closing the client's connection) when the script does.
    async fn stream_into_duplex(stream: UnixStream) -> tokio::io::DuplexStream {
        let (ours, theirs) = duplex(4096);
        tokio::spawn(async move {
            let (mut a, mut b) = (stream, theirs);
            let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
        });
        ours
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_server_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let _held = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(stream);
        });
        let client = QmpClient::new(&path, Duration::from_secs(2));
        let err = client.query_status().await.unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err:?}");
    }
}
