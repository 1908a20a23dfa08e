//! Tier 0: the client against the real agent (`tfc_agent::server`), served
//! in-process on a Unix socket in a tempdir. No VM.
//!
//! Where a test needs to cut the connection or speak the vsock handshake, a
//! relay sits between client and agent. The relay that answers `CONNECT` plays
//! Firecracker's side of the vsock handshake only, to test the client's
//! handling of it; it does not stand in for Firecracker.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tfc_agent::AgentConfig;
use tfc_agent_client::{
    connect_unix, connect_vsock, AgentConnection, AgentError, ErrorCode, ExecEvent, ExecRequest,
    ExitStatus,
};
use tfc_agent_proto::nonblocking::{AsyncFrameReader, AsyncFrameWriter};
use tfc_agent_proto::{Frame, FrameBody, Reply, Request, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// Bounds every wait on the agent, so a hang fails the test instead.
const PATIENCE: Duration = Duration::from_secs(30);

/// The agent serving on a socket in a tempdir, in host mode.
struct Agent {
    dir: tempfile::TempDir,
    socket: PathBuf,
    server: JoinHandle<()>,
}

impl Agent {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let path = socket.clone();
        let server = tokio::spawn(async move {
            tfc_agent::server::serve_unix(&path, AgentConfig::default())
                .await
                .unwrap();
        });
        for _ in 0..500 {
            if UnixStream::connect(&socket).await.is_ok() {
                return Agent {
                    dir,
                    socket,
                    server,
                };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the agent never listened on {}", socket.display());
    }

    async fn connect(&self) -> AgentConnection {
        connect_unix(&self.socket).await.unwrap()
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Relays one connection on a new socket to the agent; with `vsock_port`, it
/// first answers `CONNECT <port>\n` with an `OK` line as the VMM would.
/// Aborting the returned task drops both sides: the agent "goes away".
fn relay(agent: &Agent, vsock_port: Option<u32>) -> (PathBuf, JoinHandle<()>) {
    let path = agent
        .dir
        .path()
        .join(format!("relay-{}.sock", rand_suffix()));
    let listener = UnixListener::bind(&path).unwrap();
    let target = agent.socket.clone();
    let task = tokio::spawn(async move {
        let (mut host, _) = listener.accept().await.unwrap();
        if let Some(port) = vsock_port {
            let expected = format!("CONNECT {port}\n");
            let mut line = vec![0u8; expected.len()];
            host.read_exact(&mut line).await.unwrap();
            assert_eq!(line, expected.as_bytes());
            host.write_all(b"OK 1073741824\n").await.unwrap();
        }
        let mut guest = UnixStream::connect(&target).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut host, &mut guest).await;
    });
    (path, task)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .expect("the agent did not answer in time")
}

fn exited(code: i32) -> ExitStatus {
    ExitStatus {
        code: Some(code),
        signal: None,
        timed_out: false,
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

#[tokio::test]
async fn ping_reports_the_agent() {
    let agent = Agent::start().await;
    let connection = agent.connect().await;
    let pong = within(connection.ping()).await.unwrap();
    assert_eq!(pong.version, PROTOCOL_VERSION);
    assert!(!pong.boot_id.is_empty());
    assert!(!pong.agent_version.is_empty());
}

#[tokio::test]
async fn exec_reports_exit_codes_and_signals() {
    let agent = Agent::start().await;
    let connection = agent.connect().await;
    for (script, status) in [
        ("true", exited(0)),
        ("exit 3", exited(3)),
        (
            "kill -9 $$",
            ExitStatus {
                code: None,
                signal: Some(9),
                timed_out: false,
            },
        ),
    ] {
        let output = within(connection.exec_collect(sh(script), PATIENCE, 1024))
            .await
            .unwrap();
        assert_eq!(output.status, status, "{script}");
    }
    let output = within(connection.exec_collect(sh("sleep 10"), Duration::from_millis(200), 1024))
        .await
        .unwrap();
    assert!(output.status.timed_out, "{:?}", output.status);
}

#[tokio::test]
async fn output_streams_in_order_and_exit_comes_last() {
    let agent = Agent::start().await;
    let connection = agent.connect().await;
    let request = ExecRequest::new(sh("echo out; echo err >&2; echo \"$GREETING\""))
        .env("GREETING", "out2")
        .cwd("/");
    let mut handle = within(connection.exec(request)).await.unwrap();
    assert!(handle.pid() > 0);
    let (mut stdout, mut stderr, mut exit) = (Vec::new(), Vec::new(), None);
    while let Some(event) = within(handle.next_event()).await.unwrap() {
        assert!(exit.is_none(), "{event:?} after the exit");
        match event {
            ExecEvent::Stdout(bytes) => stdout.extend(bytes),
            ExecEvent::Stderr(bytes) => stderr.extend(bytes),
            ExecEvent::Exit(status) => exit = Some(status),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(stdout, b"out\nout2\n");
    assert_eq!(stderr, b"err\n");
    assert_eq!(exit, Some(exited(0)));
    assert_eq!(handle.next_event().await.unwrap(), None);
}

#[tokio::test]
async fn stdin_reaches_the_process_while_output_is_read() {
    let agent = Agent::start().await;
    let connection = agent.connect().await;
    let handle = within(connection.exec(ExecRequest::new(["cat"]).stdin()))
        .await
        .unwrap();
    handle.write_stdin(b"hello ").await.unwrap();
    handle.write_stdin(b"world").await.unwrap();
    handle.close_stdin().await.unwrap();
    handle.close_stdin().await.unwrap();
    let err = handle.write_stdin(b"late").await.unwrap_err();
    assert!(matches!(err, AgentError::StdinNotOpen), "{err:?}");
    let output = within(handle.collect(1024)).await.unwrap();
    assert_eq!(output.stdout, b"hello world");

    // More stdin than every buffer on the way holds: written from another
    // task while this one reads, as a caller must.
    let handle = within(connection.exec(ExecRequest::new(["cat"]).stdin()))
        .await
        .unwrap();
    let control = handle.control();
    let input: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let sent = input.clone();
    let writer = tokio::spawn(async move {
        control.write_stdin(&sent).await.unwrap();
        control.close_stdin().await.unwrap();
    });
    let output = within(handle.collect(8_000_000)).await.unwrap();
    writer.await.unwrap();
    assert_eq!(output.status, exited(0));
    assert!(output.stdout == input, "stdin came back altered");

    let handle = within(connection.exec(ExecRequest::new(["true"])))
        .await
        .unwrap();
    let err = handle.write_stdin(b"x").await.unwrap_err();
    assert!(matches!(err, AgentError::StdinNotOpen), "{err:?}");
}

#[tokio::test]
async fn two_execs_share_one_connection() {
    let agent = Agent::start().await;
    let connection = agent.connect().await;
    // The first waits on stdin, so the second can only finish if the two are
    // truly interleaved on the connection.
    let waiting = within(connection.exec(ExecRequest::new(["cat"]).stdin()))
        .await
        .unwrap();
    let quick = within(connection.exec_collect(sh("echo quick; echo q >&2"), PATIENCE, 64))
        .await
        .unwrap();
    assert_eq!(quick.stdout, b"quick\n");
    assert_eq!(quick.stderr, b"q\n");
    waiting.write_stdin(b"slow").await.unwrap();
    waiting.close_stdin().await.unwrap();
    let slow = within(waiting.collect(64)).await.unwrap();
    assert_eq!(slow.stdout, b"slow");

    let (a, b) = tokio::join!(
        connection.exec_collect(sh("sleep 0.2; echo a"), PATIENCE, 64),
        connection.exec_collect(sh("echo b >&2; exit 4"), PATIENCE, 64),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.stdout, a.status), (b"a\n".to_vec(), exited(0)));
    assert_eq!((b.stderr, b.status), (b"b\n".to_vec(), exited(4)));
}

#[tokio::test]
async fn large_output_is_read_whole_and_capped() {
    let agent = Agent::start().await;
    let connection = agent.connect().await;
    const SIZE: usize = 20_000_000;
    const CAP: usize = 1024 * 1024;
    let output = within(connection.exec_collect(
        sh(&format!("head -c {SIZE} /dev/zero; echo done >&2")),
        PATIENCE,
        CAP,
    ))
    .await
    .unwrap();
    assert_eq!(output.status, exited(0));
    assert_eq!(output.stdout.len(), CAP);
    assert!(output.stdout_truncated);
    assert_eq!(output.stderr, b"done\n");
    assert!(!output.stderr_truncated);

    // Streamed, every byte arrives.
    let mut handle =
        within(connection.exec(ExecRequest::new(sh(&format!("head -c {SIZE} /dev/zero")))))
            .await
            .unwrap();
    let mut total = 0;
    while let Some(event) = within(handle.next_event()).await.unwrap() {
        if let ExecEvent::Stdout(bytes) = event {
            total += bytes.len();
        }
    }
    assert_eq!(total, SIZE);
}

#[tokio::test]
async fn signals_reach_the_process_and_refusals_are_events() {
    let agent = Agent::start().await;
    let connection = agent.connect().await;
    let mut handle = within(connection.exec(ExecRequest::new(["sleep", "30"])))
        .await
        .unwrap();
    handle.signal(99).await.unwrap();
    let refused = within(handle.next_event()).await.unwrap();
    assert!(
        matches!(
            refused,
            Some(ExecEvent::SignalRefused {
                code: ErrorCode::BadRequest,
                ..
            })
        ),
        "{refused:?}"
    );
    handle.signal(15).await.unwrap();
    let exit = within(handle.collect(64)).await.unwrap();
    assert_eq!(exit.status.signal, Some(15));
}

#[tokio::test]
async fn a_dropped_exec_is_killed() {
    let agent = Agent::start().await;
    let connection = agent.connect().await;
    let handle = within(connection.exec(ExecRequest::new(["sleep", "30"])))
        .await
        .unwrap();
    // The in-process agent runs the process on this host, so it can be seen.
    let proc_dir = PathBuf::from(format!("/proc/{}", handle.pid()));
    assert!(proc_dir.exists());
    drop(handle);
    within(async {
        while proc_dir.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    within(connection.ping()).await.unwrap();
}

#[tokio::test]
async fn agent_errors_are_typed() {
    let agent = Agent::start().await;
    let connection = agent.connect().await;
    let err = within(connection.exec(ExecRequest::new(["/nonexistent/program"])))
        .await
        .unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::NotFound), "{err:?}");
    // A host-mode agent must never set the host's clock.
    let err = within(connection.sync_clock(std::time::SystemTime::now()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::Agent {
                code: ErrorCode::PermissionDenied,
                ..
            }
        ),
        "{err:?}"
    );
    // Mixed in but not credited: crediting needs guest mode and root.
    assert!(!within(connection.reseed_entropy(&[7; 32])).await.unwrap());
    let err = within(connection.reseed_entropy(&[])).await.unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::BadRequest), "{err:?}");
}

#[tokio::test]
async fn files_round_trip() {
    let agent = Agent::start().await;
    let connection = agent.connect().await;
    let path = agent.path("data.bin");
    let contents: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    within(connection.put_file(&path, 0o640, &contents))
        .await
        .unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640);
    let back = within(connection.get_file(&path, 10_000_000))
        .await
        .unwrap();
    assert!(back == contents, "the file came back altered");

    let mut sink = Vec::new();
    let info = within(connection.get_file_to(&path, 10_000_000, &mut sink))
        .await
        .unwrap();
    assert_eq!((info.size, info.mode), (contents.len() as u64, 0o640));
    assert_eq!(sink.len(), contents.len());

    let empty = agent.path("empty");
    within(connection.put_file(&empty, 0o600, b""))
        .await
        .unwrap();
    assert_eq!(within(connection.get_file(&empty, 0)).await.unwrap(), b"");
}

#[tokio::test]
async fn a_download_announces_size_and_mode_before_the_contents() {
    let agent = Agent::start().await;
    let connection = agent.connect().await;
    let path = agent.path("announced");
    let contents: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    within(connection.put_file(&path, 0o751, &contents))
        .await
        .unwrap();
    let mut download = within(connection.open_file(&path, 1_000_000))
        .await
        .unwrap();
    assert_eq!(download.info().size, contents.len() as u64);
    assert_eq!(download.info().mode, 0o751);
    let mut back = Vec::new();
    while let Some(chunk) = within(download.next_chunk()).await.unwrap() {
        assert!(!chunk.is_empty());
        back.extend(chunk);
    }
    assert!(back == contents, "the file came back altered");
    assert_eq!(within(download.next_chunk()).await.unwrap(), None);
    // A download given up halfway leaves the connection usable.
    let mut abandoned = within(connection.open_file(&path, 1_000_000))
        .await
        .unwrap();
    within(abandoned.next_chunk()).await.unwrap();
    drop(abandoned);
    within(connection.ping()).await.unwrap();
}

#[tokio::test]
async fn file_refusals_are_typed_and_leave_the_connection_usable() {
    let agent = Agent::start().await;
    let connection = agent.connect().await;
    let path = agent.path("big");
    within(connection.put_file(&path, 0o600, &[1; 4096]))
        .await
        .unwrap();
    let err = within(connection.get_file(&path, 100)).await.unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::TooLarge), "{err:?}");
    let err = within(connection.get_file(&agent.path("missing"), 100))
        .await
        .unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::NotFound), "{err:?}");
    let err = within(connection.put_file("relative/path", 0o600, &[0; 1_000_000]))
        .await
        .unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::BadRequest), "{err:?}");

    // A source shorter than announced: a local error, and no file appears.
    let short = agent.path("short");
    let err = within(connection.put_file_from(&short, 0o600, 100, &b"only ten b"[..]))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::ReadSource(_)), "{err:?}");
    within(connection.ping()).await.unwrap();
    assert!(!Path::new(&short).exists());
}

#[tokio::test]
async fn the_agent_going_away_fails_pending_and_later_calls() {
    let agent = Agent::start().await;
    let (path, relay) = relay(&agent, None);
    let connection = connect_unix(&path).await.unwrap();
    assert!(!connection.is_closed());
    let mut handle = within(connection.exec(ExecRequest::new(["sleep", "30"])))
        .await
        .unwrap();
    let pending = tokio::spawn(async move { handle.next_event().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    relay.abort();
    let result = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("a pending call hung on a dead connection")
        .unwrap();
    assert!(
        matches!(result, Err(AgentError::ConnectionClosed)),
        "{result:?}"
    );
    let err = within(connection.ping()).await.unwrap_err();
    assert!(matches!(err, AgentError::ConnectionClosed), "{err:?}");
    assert!(connection.is_closed());
}

#[tokio::test]
async fn vsock_handshake_then_the_protocol() {
    let agent = Agent::start().await;
    let (path, _relay) = relay(&agent, Some(1024));
    let connection = connect_vsock(&path, 1024, Duration::from_secs(5))
        .await
        .unwrap();
    within(connection.ping()).await.unwrap();
    let output = within(connection.exec_collect(sh("echo via vsock"), PATIENCE, 64))
        .await
        .unwrap();
    assert_eq!(output.stdout, b"via vsock\n");
}

/// A peer that reads the client's frames itself: ids start at 1 and rise.
#[tokio::test]
async fn request_ids_count_from_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("peer.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let peer = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read_half, write_half) = stream.into_split();
        let mut reader = AsyncFrameReader::new(read_half);
        let mut writer = AsyncFrameWriter::new(write_half);
        let mut ids = Vec::new();
        for _ in 0..3 {
            let frame = reader.read_frame().await.unwrap().unwrap();
            assert_eq!(frame.body, FrameBody::Request(Request::Ping));
            ids.push(frame.id);
            let pong = Reply::Pong {
                version: PROTOCOL_VERSION,
                agent_version: "peer".into(),
                uptime_ms: 1,
                boot_id: "b".into(),
            };
            writer
                .write_frame(&Frame::reply(frame.id, pong))
                .await
                .unwrap();
        }
        ids
    });
    let connection = connect_unix(&path).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            within(connection.ping()).await.unwrap().agent_version,
            "peer"
        );
    }
    assert_eq!(within(peer).await.unwrap(), vec![1, 2, 3]);
}
