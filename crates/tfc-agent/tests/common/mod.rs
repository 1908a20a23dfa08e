//! What the agent's test binaries share: a client on the blocking codec
//! and helpers for exec requests and their replies.

#![allow(dead_code)] // each test binary uses its own part

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use tfc_agent_proto::{
    DataKind, ErrorCode, Frame, FrameBody, FrameReader, FrameWriter, Reply, Request,
};

/// This process's mountinfo lines for the places init mode mounts on
/// (other tests on the machine may mount elsewhere meanwhile): what a test
/// compares before and after, to see that nothing was mounted on the host.
pub fn mounts_at_agent_targets() -> Vec<String> {
    let targets: Vec<&str> = tfc_agent::init::MOUNTS.iter().map(|m| m.target).collect();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|line| {
            line.split(' ')
                .nth(4)
                .is_some_and(|point| targets.contains(&point))
        })
        .map(String::from)
        .collect()
}

/// The PATH exec'd commands get.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct Client {
    pub reader: FrameReader<UnixStream>,
    pub writer: FrameWriter<UnixStream>,
}

/// Everything one exec sent, in order.
#[derive(Debug, Default)]
pub struct ExecOutput {
    pub pid: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub eofs: Vec<DataKind>,
    pub exit: Option<Reply>,
}

pub fn exec(argv: &[&str]) -> Request {
    Request::Exec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::from([("PATH".into(), PATH.into())]),
        cwd: None,
        stdin: false,
        timeout_ms: None,
        uid: None,
    }
}

pub fn with_stdin(mut request: Request) -> Request {
    if let Request::Exec { stdin, .. } = &mut request {
        *stdin = true;
    }
    request
}

impl Client {
    /// Connects to an agent's Unix socket; a hung agent fails the test
    /// instead of hanging it.
    pub fn connect(socket: &std::path::Path) -> std::io::Result<Self> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Client {
            reader: FrameReader::new(stream.try_clone()?),
            writer: FrameWriter::new(stream),
        })
    }

    /// Runs `sh -c script`; its stdout as text and its exit code.
    pub fn sh(&mut self, id: u64, script: &str) -> (String, Option<i32>) {
        let out = self.run(id, exec(&["sh", "-c", script]));
        let code = match out.exit {
            Some(Reply::Exit { code, .. }) => code,
            other => panic!("{script}: {other:?}"),
        };
        (String::from_utf8_lossy(&out.stdout).into_owned(), code)
    }
    pub fn send(&mut self, id: u64, request: Request) {
        self.writer
            .write_frame(&Frame::request(id, request))
            .unwrap();
    }

    pub fn send_data(&mut self, id: u64, kind: DataKind, bytes: &[u8]) {
        self.writer.write_data(id, kind, bytes).unwrap();
    }

    pub fn send_eof(&mut self, id: u64, kind: DataKind) {
        self.writer.write_frame(&Frame::eof(id, kind)).unwrap();
    }

    pub fn recv(&mut self) -> Frame {
        self.reader
            .read_frame()
            .unwrap()
            .expect("the agent closed the connection")
    }

    pub fn recv_reply(&mut self, id: u64) -> Reply {
        let frame = self.recv();
        assert_eq!(frame.id, id, "{frame:?}");
        match frame.body {
            FrameBody::Reply(reply) => reply,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    pub fn request(&mut self, id: u64, request: Request) -> Reply {
        self.send(id, request);
        self.recv_reply(id)
    }

    /// Reads frames of `id` until its exit, keeping the output.
    pub fn collect(&mut self, id: u64) -> ExecOutput {
        let mut out = ExecOutput::default();
        while out.exit.is_none() {
            let frame = self.recv();
            assert_eq!(frame.id, id, "{frame:?}");
            absorb(&mut out, frame.body);
        }
        out
    }

    pub fn run(&mut self, id: u64, request: Request) -> ExecOutput {
        self.send(id, request);
        self.collect(id)
    }
}

pub fn absorb(out: &mut ExecOutput, body: FrameBody) {
    match body {
        FrameBody::Reply(Reply::ExecStarted { pid }) => {
            assert!(out.pid.is_none(), "started twice");
            out.pid = Some(pid);
        }
        FrameBody::Reply(reply @ Reply::Exit { .. }) => out.exit = Some(reply),
        FrameBody::Data {
            kind: DataKind::Stdout,
            bytes,
        } => {
            assert!(
                !out.eofs.contains(&DataKind::Stdout),
                "stdout after its eof"
            );
            out.stdout.extend(bytes);
        }
        FrameBody::Data {
            kind: DataKind::Stderr,
            bytes,
        } => {
            assert!(
                !out.eofs.contains(&DataKind::Stderr),
                "stderr after its eof"
            );
            out.stderr.extend(bytes);
        }
        FrameBody::Eof(kind) => out.eofs.push(kind),
        other => panic!("unexpected in an exec: {other:?}"),
    }
}

pub fn exited(code: i32) -> Option<Reply> {
    Some(Reply::Exit {
        code: Some(code),
        signal: None,
        timed_out: false,
    })
}

pub fn expect_error(reply: Reply, code: ErrorCode) -> String {
    match reply {
        Reply::Error { code: got, message } => {
            assert_eq!(got, code, "{message}");
            message
        }
        other => panic!("expected {code:?}, got {other:?}"),
    }
}
