//! Opening the byte stream to the agent.
//!
//! Firecracker's vsock device exposes the guest's ports on one Unix socket:
//! the host sends `CONNECT <port>\n`, and the VMM answers `OK <host port>\n`
//! once the guest accepted, or closes the connection when nothing listens on
//! that port. The agent may speak right after the `OK` line and both can land
//! in one read, so the line is read through the same buffered reader that the
//! frame reader then keeps: bytes past the newline stay in its buffer instead
//! of being lost.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::connection::AgentConnection;
use crate::error::AgentError;

/// The longest answer line accepted; `OK 4294967295` is 13 bytes.
const MAX_ANSWER: u64 = 64;

/// Connects to guest vsock `port` through the VMM's vsock Unix socket `uds`,
/// within `timeout` for the connect and the handshake.
pub async fn connect_vsock(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<AgentConnection, AgentError> {
    let (reader, writer) = tokio::time::timeout(timeout, async {
        let stream = connect(uds).await?;
        handshake(stream, port).await
    })
    .await
    .map_err(|_| AgentError::HandshakeTimeout(timeout))??;
    Ok(AgentConnection::start(reader, writer))
}

/// Connects straight to an agent listening on the Unix socket `path` (its
/// `--unix` mode: the host lane and tests).
pub async fn connect_unix(path: &Path) -> Result<AgentConnection, AgentError> {
    let (read_half, write_half) = connect(path).await?.into_split();
    Ok(AgentConnection::start(
        BufReader::new(read_half),
        write_half,
    ))
}

async fn connect(path: &Path) -> Result<UnixStream, AgentError> {
    UnixStream::connect(path)
        .await
        .map_err(|source| AgentError::Connect {
            path: path.display().to_string(),
            source,
        })
}

/// Runs the `CONNECT`/`OK` exchange on `stream`. The returned reader holds
/// any bytes the peer sent after the `OK` line.
pub(crate) async fn handshake(
    stream: UnixStream,
    port: u32,
) -> Result<(BufReader<OwnedReadHalf>, OwnedWriteHalf), AgentError> {
    let (read_half, mut write_half) = stream.into_split();
    write_half
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(AgentError::HandshakeWrite)?;
    let mut reader = BufReader::new(read_half);
    let mut line = Vec::new();
    // `take` bounds the line so a peer that never sends a newline cannot make
    // us buffer without end; it only limits what read_until consumes, the
    // rest stays in `reader`'s buffer.
    let read = (&mut reader)
        .take(MAX_ANSWER)
        .read_until(b'\n', &mut line)
        .await;
    match read {
        Ok(0) => return Err(AgentError::Refused { port }),
        Ok(_) => {}
        // A reset is how some VMM versions pass on the guest's refusal.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            return Err(AgentError::Refused { port })
        }
        Err(e) => return Err(AgentError::HandshakeRead(e)),
    }
    let answer = String::from_utf8_lossy(&line).into_owned();
    let host_port = answer
        .strip_suffix('\n')
        .and_then(|text| text.strip_prefix("OK "))
        .and_then(|number| number.parse::<u32>().ok());
    match host_port {
        Some(_) => Ok((reader, write_half)),
        None => Err(AgentError::UnexpectedAnswer { port, answer }),
    }
}

#[cfg(test)]
mod tests {
    //! A tiny listener plays the VMM's side of the handshake only, to test
    //! this module's parsing of the answer; it never stands in for
    //! Firecracker in a test that claims to test Firecracker.

    use super::*;
    use tfc_agent_proto::nonblocking::AsyncFrameReader;
    use tfc_agent_proto::{Frame, Reply};
    use tokio::net::UnixListener;

    /// A VMM stand-in that reads `CONNECT 1024\n`, then writes `answer` in one
    /// write (or closes the connection when `None`) and keeps it open.
    fn vmm(answer: Option<Vec<u8>>) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 32];
            let n = stream.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"CONNECT 1024\n");
            match answer {
                Some(bytes) => {
                    stream.write_all(&bytes).await.unwrap();
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                None => drop(stream),
            }
        });
        (dir, path)
    }

    fn pong(id: u64) -> Frame {
        Frame::reply(
            id,
            Reply::Pong {
                version: 1,
                agent_version: "test".into(),
                uptime_ms: 5,
                boot_id: "b".into(),
            },
        )
    }

    #[tokio::test]
    async fn frames_in_the_same_write_as_the_ok_line_are_kept() {
        let mut answer = b"OK 1073741824\n".to_vec();
        answer.extend(pong(7).to_bytes().unwrap());
        answer.extend(pong(8).to_bytes().unwrap());
        let (_dir, path) = vmm(Some(answer));
        let stream = connect(&path).await.unwrap();
        let (reader, _writer) = handshake(stream, 1024).await.unwrap();
        let mut frames = AsyncFrameReader::new(reader);
        // The stand-in sends nothing more: a lost byte shows as a hang here.
        let patience = Duration::from_secs(5);
        for id in [7, 8] {
            let frame = tokio::time::timeout(patience, frames.read_frame())
                .await
                .expect("bytes after the OK line were lost");
            assert_eq!(frame.unwrap(), Some(pong(id)));
        }
    }

    #[tokio::test]
    async fn a_closed_connection_is_a_refusal() {
        let (_dir, path) = vmm(None);
        let err = connect_vsock(&path, 1024, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::Refused { port: 1024 }), "{err:?}");
    }

    #[tokio::test]
    async fn garbage_answers_are_refused_by_name() {
        for answer in [
            &b"NO\n"[..],
            b"OK\n",
            b"OK notaport\n",
            b"OK 5",
            &[b'O'; 100],
        ] {
            // "OK 5" without its newline and the long line: the VMM then goes
            // silent, so only a bounded read with a complete line may pass.
            let (_dir, path) = vmm(Some(answer.to_vec()));
            let err = connect_vsock(&path, 1024, Duration::from_millis(500))
                .await
                .unwrap_err();
            match answer {
                b"OK 5" => assert!(matches!(err, AgentError::HandshakeTimeout(_)), "{err:?}"),
                _ => assert!(
                    matches!(err, AgentError::UnexpectedAnswer { port: 1024, .. }),
                    "{answer:?}: {err:?}"
                ),
            }
        }
    }

    #[tokio::test]
    async fn silence_times_out_and_a_missing_socket_fails_to_connect() {
        let (_dir, path) = vmm(Some(Vec::new()));
        let err = connect_vsock(&path, 1024, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::HandshakeTimeout(_)), "{err:?}");
        let err = connect_vsock(
            Path::new("/nonexistent/v.sock"),
            1024,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, AgentError::Connect { .. }), "{err:?}");
    }
}
