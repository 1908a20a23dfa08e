//! Tier 0: the built `tfc-agent` binary on a Unix socket in a tempdir, driven
//! by a client on the blocking codec. No VM.

mod common;

use common::{
    absorb, exec, exited, expect_error, mounts_at_agent_targets, with_stdin, Client, ExecOutput,
};

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tfc_agent_proto::{DataKind, ErrorCode, FrameBody, Reply, Request, PROTOCOL_VERSION};

/// The agent binary, killed and reaped on drop.
struct Agent {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Agent {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_tfc-agent"))
            .arg("--unix")
            .arg(&socket)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let agent = Agent { child, socket, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&agent.socket).is_err() {
            assert!(Instant::now() < deadline, "the agent never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    fn connect(&self) -> Client {
        Client::connect(&self.socket).unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn assert_alive(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "the agent exited");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ping_answers_with_version_and_boot_id() {
    let agent = Agent::start();
    let mut client = agent.connect();
    match client.request(1, Request::Ping) {
        Reply::Pong {
            version,
            agent_version,
            boot_id,
            ..
        } => {
            assert_eq!(version, PROTOCOL_VERSION);
            assert_eq!(agent_version, env!("CARGO_PKG_VERSION"));
            assert!(!boot_id.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn exit_codes_are_reported() {
    let agent = Agent::start();
    let mut client = agent.connect();
    for (id, argv, code) in [
        (1, vec!["true"], 0),
        (2, vec!["false"], 1),
        (3, vec!["sh", "-c", "exit 3"], 3),
    ] {
        let out = client.run(id, exec(&argv));
        assert!(out.pid.is_some());
        assert_eq!(out.exit, exited(code), "{argv:?}");
        assert_eq!(out.eofs.len(), 2, "an eof per output stream");
    }
    // An id can be used again once its request finished.
    assert_eq!(client.run(1, exec(&["true"])).exit, exited(0));
}

#[test]
fn a_missing_program_is_not_found_and_empty_argv_a_bad_request() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let reply = client.request(1, exec(&["/nonexistent/program"]));
    expect_error(reply, ErrorCode::NotFound);
    expect_error(client.request(2, exec(&[])), ErrorCode::BadRequest);
}

#[test]
fn stdout_and_stderr_arrive_separately_and_in_order() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let out = client.run(
        1,
        exec(&[
            "sh",
            "-c",
            "echo one; echo two >&2; echo three; echo four >&2",
        ]),
    );
    assert_eq!(out.stdout, b"one\nthree\n");
    assert_eq!(out.stderr, b"two\nfour\n");
    assert_eq!(out.exit, exited(0));
}

#[test]
fn output_is_streamed_while_the_process_runs() {
    let agent = Agent::start();
    let mut client = agent.connect();
    // The process prints, then waits for stdin: "first" can only arrive
    // before stdin is sent if the agent streams instead of buffering.
    client.send(
        1,
        with_stdin(exec(&[
            "sh",
            "-c",
            "echo first; read line; echo \"got $line\"",
        ])),
    );
    let mut out = ExecOutput::default();
    while out.stdout != b"first\n" {
        absorb(&mut out, client.recv().body);
        assert!(out.exit.is_none(), "exited before its stdin: {out:?}");
    }
    client.send_data(1, DataKind::Stdin, b"go\n");
    client.send_eof(1, DataKind::Stdin);
    let rest = client.collect(1);
    assert_eq!(rest.stdout, b"got go\n");
    assert_eq!(rest.exit, exited(0));
}

#[test]
fn stdin_is_echoed_by_cat() {
    let agent = Agent::start();
    let mut client = agent.connect();
    client.send(1, with_stdin(exec(&["cat"])));
    client.send_data(1, DataKind::Stdin, b"hello ");
    client.send_data(1, DataKind::Stdin, b"world\n");
    client.send_eof(1, DataKind::Stdin);
    let out = client.collect(1);
    assert_eq!(out.stdout, b"hello world\n");
    assert_eq!(out.exit, exited(0));
}

/// The agent's peak resident memory (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn seventy_megabytes_of_output_arrive_complete() {
    const SIZE: u64 = 70_000_000; // more than 64 MiB
    let agent = Agent::start();
    let mut client = agent.connect();
    // Random bytes, so a lost, repeated or reordered chunk changes the
    // checksum; the command prints its own checksum on stderr first.
    let data = agent.path("random.bin");
    let script = format!(
        "head -c {SIZE} /dev/urandom > {0} && sha256sum {0} >&2 && cat {0}",
        data.display()
    );
    client.send(1, exec(&["sh", "-c", &script]));
    // Hashed as it arrives; the test holds one frame at a time.
    let (mut received, mut largest_frame) = (0u64, 0usize);
    let mut hash = Sha256::new();
    let mut stderr = Vec::new();
    loop {
        let frame = client.recv();
        match frame.body {
            FrameBody::Data {
                kind: DataKind::Stdout,
                bytes,
            } => {
                hash.update(&bytes);
                received += bytes.len() as u64;
                largest_frame = largest_frame.max(bytes.len());
            }
            FrameBody::Data {
                kind: DataKind::Stderr,
                bytes,
            } => stderr.extend(bytes),
            FrameBody::Reply(reply @ Reply::Exit { .. }) => {
                assert_eq!(Some(reply), exited(0));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(received, SIZE);
    let expected = String::from_utf8(stderr).unwrap();
    let expected = expected.split_whitespace().next().unwrap().to_owned();
    let got: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(got, expected, "the stream's checksum");
    assert!(largest_frame <= tfc_agent::CHUNK);
    // Streaming, not buffering: the agent never held more than a few MiB of
    // the 70 MB at once.
    let peak = peak_rss(agent.child.id());
    assert!(peak < 48 << 20, "agent peak RSS {peak} bytes");
}

#[test]
fn a_slow_reader_throttles_the_process() {
    const SIZE: u64 = 20_000_000;
    let agent = Agent::start();
    let marker = agent.path("finished");
    let mut client = agent.connect();
    let script = format!("head -c {SIZE} /dev/zero; touch {}", marker.display());
    client.send(1, exec(&["sh", "-c", &script]));
    assert!(matches!(client.recv_reply(1), Reply::ExecStarted { .. }));
    // Without backpressure the agent would take all 20 MB at once and the
    // process would finish in milliseconds. With it, at most the outbox
    // (16 x 64 KiB), a pipe and the socket buffers are in flight.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        !marker.exists(),
        "the process finished while nobody read its output"
    );
    // Stalled, the agent holds only its bounded queues.
    let stalled_peak = peak_rss(agent.child.id());
    assert!(
        stalled_peak < 48 << 20,
        "agent peak RSS {stalled_peak} bytes"
    );
    let out = client.collect(1);
    assert_eq!(out.stdout.len() as u64, SIZE);
    assert_eq!(out.exit, exited(0));
    assert!(marker.exists());
}

#[test]
fn a_timeout_kills_the_process_group() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let mut request = exec(&["sh", "-c", "sleep 30 & sleep 30"]);
    if let Request::Exec { timeout_ms, .. } = &mut request {
        *timeout_ms = Some(300);
    }
    let started = Instant::now();
    let out = client.run(1, request);
    assert_eq!(
        out.exit,
        Some(Reply::Exit {
            code: None,
            signal: Some(9),
            timed_out: true
        })
    );
    // The background sleep held stdout open too: the eofs came, so the whole
    // group died, not only the shell.
    assert_eq!(out.eofs.len(), 2);
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_timeout_with_one_stream_closed_and_the_other_held_ends_cleanly() {
    // The shell exits at once, closing stdout; its background child holds
    // stderr past the timeout. The drain that the timeout cuts short has
    // finished stdout's pump already: the agent must not poll it again.
    let agent = Agent::start();
    let mut client = agent.connect();
    let mut request = exec(&["sh", "-c", "sleep 30 >/dev/null & exit 0"]);
    if let Request::Exec { timeout_ms, .. } = &mut request {
        *timeout_ms = Some(300);
    }
    let out = client.run(1, request);
    assert!(
        matches!(
            out.exit,
            Some(Reply::Exit {
                timed_out: true,
                ..
            })
        ),
        "{:?}",
        out.exit
    );
    assert_eq!(out.eofs.len(), 2);
    // The agent is still there and serves the same connection.
    let out = client.run(2, exec(&["true"]));
    assert!(
        matches!(out.exit, Some(Reply::Exit { code: Some(0), .. })),
        "{:?}",
        out.exit
    );
}

#[test]
fn a_signal_reaches_a_running_exec() {
    let agent = Agent::start();
    let mut client = agent.connect();
    client.send(1, exec(&["sleep", "30"]));
    assert!(matches!(client.recv_reply(1), Reply::ExecStarted { .. }));
    client.send(1, Request::Signal { signal: 15 });
    let out = client.collect(1);
    assert_eq!(
        out.exit,
        Some(Reply::Exit {
            code: None,
            signal: Some(15),
            timed_out: false
        })
    );
    let reply = client.request(2, Request::Signal { signal: 15 });
    expect_error(reply, ErrorCode::NotFound);
    let reply = client.request(3, Request::Signal { signal: 0 });
    expect_error(reply, ErrorCode::BadRequest);
}

#[test]
fn two_execs_are_multiplexed_on_one_connection() {
    let agent = Agent::start();
    let mut client = agent.connect();
    // `cat` runs until its stdin ends; `echo` finishes meanwhile on the same
    // connection.
    client.send(1, with_stdin(exec(&["cat"])));
    client.send(2, exec(&["echo", "second"]));
    let (mut cat, mut echo) = (ExecOutput::default(), ExecOutput::default());
    // Until echo ended and cat started: cat's `exec_started` may come after
    // echo's whole run.
    while echo.exit.is_none() || cat.pid.is_none() {
        let frame = client.recv();
        match frame.id {
            1 => absorb(&mut cat, frame.body),
            2 => absorb(&mut echo, frame.body),
            other => panic!("frame for id {other}"),
        }
    }
    assert_eq!(echo.stdout, b"second\n");
    assert!(cat.exit.is_none(), "cat ended before its stdin did");
    // A new request under the running id is refused; cat runs on.
    client.send(1, Request::Ping);
    let message = expect_error(client.recv_reply(1), ErrorCode::BadRequest);
    assert!(message.contains("in use"), "{message}");
    client.send_data(1, DataKind::Stdin, b"first\n");
    client.send_eof(1, DataKind::Stdin);
    while cat.exit.is_none() {
        let frame = client.recv();
        assert_eq!(frame.id, 1);
        absorb(&mut cat, frame.body);
    }
    assert_eq!(cat.stdout, b"first\n");
    assert_eq!(cat.exit, exited(0));
}

#[test]
fn closing_the_connection_kills_running_processes() {
    let agent = Agent::start();
    let mut client = agent.connect();
    client.send(1, exec(&["sleep", "30"]));
    let pid = match client.recv_reply(1) {
        Reply::ExecStarted { pid } => pid as i32,
        other => panic!("{other:?}"),
    };
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    // SAFETY: signal 0 only checks that the process exists. The agent reaps
    // it, so the pid stops existing once it is dead.
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(
            Instant::now() < deadline,
            "process {pid} outlived its connection"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn exec_as_another_uid_needs_root() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let mut request = exec(&["id", "-u"]);
    if let Request::Exec { uid, .. } = &mut request {
        *uid = Some(65534);
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let out = client.run(1, request);
        assert_eq!(out.stdout, b"65534\n");
        assert_eq!(out.exit, exited(0));
    } else {
        expect_error(client.request(1, request), ErrorCode::PermissionDenied);
    }
}

fn put(
    client: &mut Client,
    id: u64,
    path: &Path,
    mode: u32,
    declared: u64,
    chunks: &[&[u8]],
) -> Reply {
    client.send(
        id,
        Request::PutFile {
            path: path.display().to_string(),
            mode,
            size: declared,
            atomic: true,
        },
    );
    for chunk in chunks {
        client.send_data(id, DataKind::File, chunk);
    }
    client.send_eof(id, DataKind::File);
    client.recv_reply(id)
}

fn get(
    client: &mut Client,
    id: u64,
    path: &Path,
    max_size: Option<u64>,
) -> Result<(u64, u32, Vec<u8>), Reply> {
    client.send(
        id,
        Request::GetFile {
            path: path.display().to_string(),
            max_size,
        },
    );
    let (size, mode) = match client.recv_reply(id) {
        Reply::FileInfo { size, mode } => (size, mode),
        other => return Err(other),
    };
    let mut contents = Vec::new();
    loop {
        let frame = client.recv();
        assert_eq!(frame.id, id);
        match frame.body {
            FrameBody::Data {
                kind: DataKind::File,
                bytes,
            } => contents.extend(bytes),
            FrameBody::Eof(DataKind::File) => return Ok((size, mode, contents)),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn put_then_get_round_trips_contents_and_mode() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let path = agent.path("put.bin");
    let contents: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<&[u8]> = contents.chunks(65_536).collect();
    let reply = put(&mut client, 1, &path, 0o640, contents.len() as u64, &chunks);
    assert_eq!(reply, Reply::Done);
    assert_eq!(std::fs::read(&path).unwrap(), contents);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    let (size, mode, got) = get(&mut client, 2, &path, None).unwrap();
    assert_eq!((size, mode), (contents.len() as u64, 0o640));
    assert_eq!(got, contents);
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_put_of_the_wrong_size_leaves_no_file() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let before = files_in(agent.dir.path());
    let path = agent.path("short.bin");
    let reply = put(&mut client, 1, &path, 0o644, 10, &[b"abc"]);
    expect_error(reply, ErrorCode::BadRequest);
    let reply = put(&mut client, 2, &path, 0o644, 2, &[b"abc"]);
    expect_error(reply, ErrorCode::BadRequest);
    assert_eq!(
        files_in(agent.dir.path()),
        before,
        "no target, no temp file"
    );
    // An existing file is left as it was by a failed atomic put.
    std::fs::write(&path, b"old").unwrap();
    let reply = put(&mut client, 3, &path, 0o644, 10, &[b"new"]);
    expect_error(reply, ErrorCode::BadRequest);
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    // The connection still serves after the failures and their ignored data.
    assert!(matches!(
        client.request(4, Request::Ping),
        Reply::Pong { .. }
    ));
}

#[test]
fn oversized_files_are_refused() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let path = agent.path("huge.bin");
    let reply = client.request(
        1,
        Request::PutFile {
            path: path.display().to_string(),
            mode: 0o644,
            size: 2 << 30,
            atomic: true,
        },
    );
    expect_error(reply, ErrorCode::TooLarge);
    assert!(!path.exists());

    std::fs::write(&path, vec![1u8; 1000]).unwrap();
    let reply = get(&mut client, 2, &path, Some(999)).unwrap_err();
    expect_error(reply, ErrorCode::TooLarge);
    let reply = get(&mut client, 3, &agent.path("missing"), None).unwrap_err();
    expect_error(reply, ErrorCode::NotFound);
}

#[test]
fn machine_changes_are_refused_outside_guest_mode() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let reply = client.request(1, Request::SyncClock { unix_ns: 0 });
    let message = expect_error(reply, ErrorCode::PermissionDenied);
    assert!(message.contains("--guest"), "{message}");
    let reply = client.request(2, Request::ReseedEntropy { seed: vec![9; 64] });
    assert_eq!(reply, Reply::Reseeded { credited: false });
    let reply = client.request(
        3,
        Request::SetNetwork {
            interface: "eth0".into(),
            address_cidr: "10.0.0.2/24".into(),
            gateway: None,
            nameservers: Vec::new(),
        },
    );
    let message = expect_error(reply, ErrorCode::PermissionDenied);
    assert!(message.contains("--guest"), "{message}");
    let message = expect_error(client.request(4, Request::Shutdown), ErrorCode::Unsupported);
    assert!(message.contains("PID 1"), "{message}");
    expect_error(client.request(0, Request::Ping), ErrorCode::BadRequest);
}

fn raw_header(len: u32, version: u8, kind: u8, id: u64) -> Vec<u8> {
    let mut bytes = len.to_be_bytes().to_vec();
    bytes.push(version);
    bytes.push(kind);
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes
}

#[test]
fn malformed_requests_get_an_error_and_the_connection_goes_on() {
    let agent = Agent::start();
    let mut client = agent.connect();
    for (id, payload) in [
        (5u64, &b"{not json"[..]),
        (6, br#"{"op":"format_disk"}"#),
        (7, br#"{"op":"exec","argv":["true"],"timout_ms":1}"#),
    ] {
        let mut frame = raw_header(payload.len() as u32, PROTOCOL_VERSION, 1, id);
        frame.extend_from_slice(payload);
        client.writer.write_raw(&frame).unwrap();
        expect_error(client.recv_reply(id), ErrorCode::BadRequest);
    }
    assert!(matches!(
        client.request(8, Request::Ping),
        Reply::Pong { .. }
    ));
}

#[test]
fn unreadable_frames_close_only_their_connection() {
    let mut agent = Agent::start();
    let mut cases = vec![
        (raw_header(2, 2, 1, 1), ErrorCode::Protocol),
        (
            raw_header(u32::MAX, PROTOCOL_VERSION, 17, 1),
            ErrorCode::TooLarge,
        ),
        (raw_header(0, PROTOCOL_VERSION, 99, 1), ErrorCode::Protocol),
    ];
    cases[0].0.extend_from_slice(b"{}");
    let mut bystander = agent.connect();
    for (bytes, code) in cases {
        let mut client = agent.connect();
        client.writer.write_raw(&bytes).unwrap();
        expect_error(client.recv_reply(0), code);
        assert!(
            client.reader.read_frame().unwrap().is_none(),
            "the connection is closed after an unreadable frame"
        );
    }
    // A truncated header then a close: nothing to answer, nothing broken.
    let mut client = agent.connect();
    client
        .writer
        .write_raw(&raw_header(0, 1, 1, 1)[..5])
        .unwrap();
    client
        .writer
        .get_mut()
        .shutdown(std::net::Shutdown::Write)
        .unwrap();
    let _ = client.reader.read_frame();
    agent.assert_alive();
    assert!(matches!(
        bystander.request(1, Request::Ping),
        Reply::Pong { .. }
    ));
    assert!(matches!(
        agent.connect().request(1, Request::Ping),
        Reply::Pong { .. }
    ));
    // A garbage stream from a non-agent client.
    let mut raw = UnixStream::connect(&agent.socket).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    drop(raw);
    agent.assert_alive();
    assert!(matches!(
        bystander.request(2, Request::Ping),
        Reply::Pong { .. }
    ));
}

#[test]
fn init_mode_is_refused_on_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let before = mounts_at_agent_targets();
    let out = Command::new(env!("CARGO_BIN_EXE_tfc-agent"))
        .arg("--init")
        .arg("--unix")
        .arg(dir.path().join("agent.sock"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("refusing init mode"), "{stderr}");
    assert!(!dir.path().join("agent.sock").exists());
    assert_eq!(mounts_at_agent_targets(), before, "nothing mounted");
}

#[test]
fn a_transport_must_be_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_tfc-agent"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--unix PATH or --vsock PORT"), "{stderr}");
}

#[test]
fn a_signal_cancels_a_running_download() {
    let agent = Agent::start();
    let mut client = agent.connect();
    let path = agent.path("big");
    let size = 32 * 1024 * 1024;
    std::fs::write(&path, vec![5u8; size]).unwrap();
    client.send(
        1,
        Request::GetFile {
            path: path.display().to_string(),
            max_size: None,
        },
    );
    // The host gives the download up after its first chunk.
    let mut arrived = 0;
    let mut cancelled = false;
    let mut ended = false;
    loop {
        let frame = client.recv();
        match (frame.id, frame.body) {
            (1, FrameBody::Reply(Reply::FileInfo { .. })) => {}
            (1, FrameBody::Data { bytes, .. }) => {
                if arrived == 0 {
                    client.send(1, Request::Signal { signal: 9 });
                }
                arrived += bytes.len();
            }
            // The signal's answer: the transfer is over.
            (1, FrameBody::Reply(Reply::Done)) => {
                cancelled = true;
                break;
            }
            (1, FrameBody::Eof(_)) => {
                ended = true;
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(cancelled && !ended, "the download ran to its end");
    assert!(arrived < size, "all {arrived} bytes were sent");
    // The connection goes on; at most a chunk already on its way follows.
    client.send(2, Request::Ping);
    loop {
        let frame = client.recv();
        match (frame.id, frame.body) {
            (2, FrameBody::Reply(Reply::Pong { .. })) => break,
            (1, FrameBody::Data { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
