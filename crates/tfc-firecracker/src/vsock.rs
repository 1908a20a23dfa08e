//! The host side of Firecracker's vsock device: a Unix socket on which the
//! host opens a connection to a guest port by sending `CONNECT <port>\n`; the
//! VMM answers `OK <host port>\n` once the guest accepted, and closes the
//! connection when the guest refused it.
//!
//! [`probe`] uses the refusal as a liveness check of the guest kernel: only a
//! running guest kernel answers, either way, so an answer in time proves the
//! guest runs without needing anything in its userspace. The VMM also closes
//! a request the guest never answered, after its own connect timeout (2 s in
//! Firecracker v1.12.1); a close that late is not a refusal but silence.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// What the guest said to a connection request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeAnswer {
    /// Something in the guest listens on the port.
    Accepted,
    /// The guest kernel refused: nothing listens there.
    Refused,
}

/// Why a probe got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect to the vsock socket {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the vsock connection failed")]
    Io(#[source] std::io::Error),
    #[error("the guest did not answer a vsock connection within {0:?}")]
    Timeout(Duration),
    #[error("unexpected answer on the vsock socket: {0:?}")]
    Unexpected(String),
    #[error("the guest never answered; the VMM gave up on the connection after {0:?}")]
    Unanswered(Duration),
}

/// A close later than this after the request is the VMM's own connect
/// timeout (2 s), not the guest's refusal (milliseconds).
pub const REFUSAL_WINDOW: Duration = Duration::from_millis(1500);

/// Asks the guest behind `uds` for a connection to `port` and reports its
/// answer, within `timeout`. The connection is closed afterwards.
pub async fn probe(uds: &Path, port: u32, timeout: Duration) -> Result<ProbeAnswer, ProbeError> {
    let started = tokio::time::Instant::now();
    let exchange = async {
        let mut stream = UnixStream::connect(uds)
            .await
            .map_err(|source| ProbeError::Connect {
                path: uds.display().to_string(),
                source,
            })?;
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .await
            .map_err(ProbeError::Io)?;
        // The answer is one short line; read byte by byte so nothing past it
        // is consumed (a caller that goes on talking would lose it).
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte).await {
                Ok(0) if line.is_empty() => return refused(started),
                Ok(0) => {
                    return Err(ProbeError::Unexpected(
                        String::from_utf8_lossy(&line).into_owned(),
                    ))
                }
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) if line.len() < 64 => line.push(byte[0]),
                Ok(_) => {
                    return Err(ProbeError::Unexpected(
                        String::from_utf8_lossy(&line).into_owned(),
                    ))
                }
                // A reset is how some VMM versions pass on the refusal.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return refused(started)
                }
                Err(e) => return Err(ProbeError::Io(e)),
            }
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        if text.starts_with("OK ") {
            Ok(ProbeAnswer::Accepted)
        } else {
            Err(ProbeError::Unexpected(text))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
}

/// A close of the connection, by the guest (in time) or by the VMM's own
/// timeout (too late to be the guest's).
fn refused(started: tokio::time::Instant) -> Result<ProbeAnswer, ProbeError> {
    let after = started.elapsed();
    if after < REFUSAL_WINDOW {
        Ok(ProbeAnswer::Refused)
    } else {
        Err(ProbeError::Unanswered(after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A stand-in for the VMM's side of the socket, answering `answer` (or
    /// closing when `None`) after reading the request line.
    async fn vmm(answer: Option<&'static str>) -> (tempfile::TempDir, std::path::PathBuf) {
        vmm_after(answer, Duration::ZERO).await
    }

    /// The same, answering (or closing) after `delay`.
    async fn vmm_after(
        answer: Option<&'static str>,
        delay: Duration,
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 32];
            let n = stream.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"CONNECT 52\n");
            tokio::time::sleep(delay).await;
            match answer {
                Some(text) => {
                    stream.write_all(text.as_bytes()).await.unwrap();
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                None => drop(stream),
            }
        });
        (dir, path)
    }

    #[tokio::test]
    async fn a_closed_connection_is_a_refusal() {
        let (_dir, path) = vmm(None).await;
        let answer = probe(&path, 52, Duration::from_secs(2)).await.unwrap();
        assert_eq!(answer, ProbeAnswer::Refused);
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_as_late_as_the_vmms_own_timeout_is_silence() {
        let (_dir, path) = vmm_after(None, Duration::from_secs(2)).await;
        let answer = probe(&path, 52, Duration::from_secs(10)).await;
        assert!(
            matches!(answer, Err(ProbeError::Unanswered(_))),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn an_ok_line_is_an_acceptance() {
        let (_dir, path) = vmm(Some("OK 1073741824\nrest")).await;
        let answer = probe(&path, 52, Duration::from_secs(2)).await.unwrap();
        assert_eq!(answer, ProbeAnswer::Accepted);
    }

    #[tokio::test]
    async fn silence_times_out_and_garbage_is_an_error() {
        let (_dir, path) = vmm(Some("")).await;
        let err = probe(&path, 52, Duration::from_millis(100)).await;
        assert!(matches!(err, Err(ProbeError::Timeout(_))), "{err:?}");
        let (_dir, path) = vmm(Some("NO\n")).await;
        let err = probe(&path, 52, Duration::from_secs(2)).await;
        assert!(matches!(err, Err(ProbeError::Unexpected(_))), "{err:?}");
        let missing = probe(Path::new("/nonexistent/v.sock"), 52, Duration::from_secs(1)).await;
        assert!(matches!(missing, Err(ProbeError::Connect { .. })));
    }
}
