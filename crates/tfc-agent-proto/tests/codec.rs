//! The codec against every message, every data kind and every malformed input.

use std::collections::BTreeMap;
use std::io::Cursor;

use proptest::prelude::*;
use tfc_agent_proto::nonblocking::{AsyncFrameReader, AsyncFrameWriter};
use tfc_agent_proto::{
    DataKind, ErrorCode, Frame, FrameError, FrameKind, FrameReader, FrameWriter, Header, Reply,
    Request, HEADER_LEN, MAX_PAYLOAD, PROTOCOL_VERSION,
};

fn every_request() -> Vec<Request> {
    vec![
        Request::Ping,
        Request::Exec {
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: BTreeMap::from([("PATH".into(), "/bin".into())]),
            cwd: Some("/tmp".into()),
            stdin: true,
            timeout_ms: Some(1500),
            uid: Some(1000),
        },
        Request::Signal { signal: 15 },
        Request::PutFile {
            path: "/etc/motd".into(),
            mode: 0o644,
            size: 12,
            atomic: true,
        },
        Request::GetFile {
            path: "/etc/hostname".into(),
            max_size: Some(4096),
        },
        Request::SetNetwork {
            interface: "eth0".into(),
            address_cidr: "10.0.0.2/24".into(),
            gateway: Some("10.0.0.1".into()),
            nameservers: vec!["10.0.0.1".into(), "2001:db8::53".into()],
        },
        Request::SyncClock {
            unix_ns: 1_700_000_000_123_456_789,
        },
        Request::ReseedEntropy {
            seed: (0..=255).collect(),
        },
        Request::Shutdown,
    ]
}

fn every_reply() -> Vec<Reply> {
    vec![
        Reply::Pong {
            version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            uptime_ms: 42,
            boot_id: "b0".into(),
        },
        Reply::ExecStarted { pid: 7 },
        Reply::Exit {
            code: Some(3),
            signal: None,
            timed_out: false,
        },
        Reply::Exit {
            code: None,
            signal: Some(9),
            timed_out: true,
        },
        Reply::FileInfo {
            size: 10,
            mode: 0o600,
        },
        Reply::Done,
        Reply::Reseeded { credited: false },
        Reply::error(ErrorCode::NotFound, "no such file"),
    ]
}

fn every_frame() -> Vec<Frame> {
    let mut frames = Vec::new();
    for (i, request) in every_request().into_iter().enumerate() {
        frames.push(Frame::request(i as u64, request));
    }
    for (i, reply) in every_reply().into_iter().enumerate() {
        frames.push(Frame::reply(u64::MAX - i as u64, reply));
    }
    for kind in [
        DataKind::Stdin,
        DataKind::Stdout,
        DataKind::Stderr,
        DataKind::File,
    ] {
        frames.push(Frame::data(5, kind, b"chunk\0\xff".to_vec()));
        frames.push(Frame::data(5, kind, Vec::new()));
        frames.push(Frame::eof(5, kind));
    }
    frames.push(Frame::data(
        6,
        DataKind::File,
        vec![0xab; MAX_PAYLOAD as usize],
    ));
    frames
}

#[test]
fn every_frame_round_trips_through_the_blocking_codec() {
    let frames = every_frame();
    let mut writer = FrameWriter::new(Vec::new());
    for frame in &frames {
        writer.write_frame(frame).unwrap();
    }
    let mut reader = FrameReader::new(Cursor::new(writer.into_inner()));
    for frame in &frames {
        assert_eq!(reader.read_frame().unwrap().as_ref(), Some(frame));
    }
    assert!(reader.read_frame().unwrap().is_none(), "clean end");
}

#[tokio::test]
async fn every_frame_round_trips_through_the_async_codec() {
    let frames = every_frame();
    let (client, server) = tokio::io::duplex(64 * 1024);
    let sent = frames.clone();
    let writing = tokio::spawn(async move {
        let mut writer = AsyncFrameWriter::new(client);
        for frame in &sent {
            writer.write_frame(frame).await.unwrap();
        }
    });
    let mut reader = AsyncFrameReader::new(server);
    for frame in &frames {
        assert_eq!(reader.read_frame().await.unwrap().as_ref(), Some(frame));
    }
    writing.await.unwrap();
    assert!(reader.read_frame().await.unwrap().is_none(), "clean end");
}

#[test]
fn the_reader_stops_exactly_at_the_end_of_a_frame() {
    let first = Frame::request(1, Request::Ping).to_bytes().unwrap();
    let mut bytes = first.clone();
    bytes.extend_from_slice(&Frame::eof(2, DataKind::Stdin).to_bytes().unwrap());
    let mut reader = FrameReader::new(Cursor::new(bytes));
    reader.read_frame().unwrap().unwrap();
    assert_eq!(reader.into_inner().position(), first.len() as u64);
}

fn read_one(bytes: Vec<u8>) -> (Result<Option<Frame>, FrameError>, u64) {
    let mut reader = FrameReader::new(Cursor::new(bytes));
    let result = reader.read_frame();
    (result, reader.into_inner().position())
}

fn raw_header(len: u32, version: u8, kind: u8, id: u64) -> Vec<u8> {
    let mut bytes = len.to_be_bytes().to_vec();
    bytes.push(version);
    bytes.push(kind);
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes
}

#[test]
fn another_version_is_a_typed_error() {
    let mut bytes = raw_header(2, 2, FrameKind::Request as u8, 1);
    bytes.extend_from_slice(b"{}");
    let (result, _) = read_one(bytes);
    match result {
        Err(FrameError::UnsupportedVersion { got, supported }) => {
            assert_eq!((got, supported), (2, PROTOCOL_VERSION));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_oversized_length_fails_before_reading_the_payload() {
    for len in [MAX_PAYLOAD + 1, u32::MAX] {
        // Only the header is there: a reader that tried to read (or allocate
        // for) the payload first would report truncation instead.
        let (result, position) = read_one(raw_header(len, 1, FrameKind::Stdout as u8, 1));
        match result {
            Err(FrameError::FrameTooLarge { len: got, max }) => {
                assert_eq!((got, max), (u64::from(len), MAX_PAYLOAD));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(position, HEADER_LEN as u64);
    }
}

#[test]
fn an_unknown_kind_is_a_typed_error() {
    let (result, _) = read_one(raw_header(0, 1, 99, 1));
    assert!(
        matches!(result, Err(FrameError::UnknownKind(99))),
        "{result:?}"
    );
}

#[test]
fn clean_end_truncated_header_and_truncated_payload_differ() {
    let (result, _) = read_one(Vec::new());
    assert!(matches!(result, Ok(None)), "{result:?}");

    let (result, _) = read_one(raw_header(0, 1, 1, 1)[..5].to_vec());
    assert!(
        matches!(result, Err(FrameError::TruncatedHeader { got: 5 })),
        "{result:?}"
    );

    let mut bytes = raw_header(10, 1, FrameKind::Stdout as u8, 1);
    bytes.extend_from_slice(b"abc");
    let (result, _) = read_one(bytes);
    assert!(
        matches!(
            result,
            Err(FrameError::TruncatedPayload {
                expected: 10,
                got: 3
            })
        ),
        "{result:?}"
    );
}

#[test]
fn malformed_json_and_unknown_ops_leave_the_stream_in_sync() {
    for payload in [
        &b"{not json"[..],
        br#"{"op":"format_disk"}"#,
        br#"{"op":"exec","argv":[],"x":1}"#,
    ] {
        let mut bytes = raw_header(payload.len() as u32, 1, FrameKind::Request as u8, 3);
        bytes.extend_from_slice(payload);
        bytes.extend_from_slice(&Frame::request(4, Request::Ping).to_bytes().unwrap());
        let mut reader = FrameReader::new(Cursor::new(bytes));
        let err = reader.read_frame().unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::MalformedControl {
                    kind: FrameKind::Request,
                    id: 3,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.stream_in_sync());
        assert_eq!(err.frame_id(), Some(3));
        let next = reader.read_frame().unwrap().unwrap();
        assert_eq!(next, Frame::request(4, Request::Ping));
    }
}

#[test]
fn a_header_encodes_what_parse_reads() {
    let bytes = Header::encode(FrameKind::Eof, 9, 1).unwrap();
    assert_eq!(bytes.to_vec(), raw_header(1, 1, FrameKind::Eof as u8, 9));
}

/// Reads frames until the stream ends or fails; it must never panic.
fn drain(bytes: Vec<u8>) -> Result<usize, FrameError> {
    let mut reader = FrameReader::new(Cursor::new(bytes));
    let mut frames = 0;
    loop {
        match reader.read_frame() {
            Ok(Some(_)) => frames += 1,
            Ok(None) => return Ok(frames),
            Err(e) if e.stream_in_sync() => {}
            Err(e) => return Err(e),
        }
    }
}

proptest! {
    #[test]
    fn random_bytes_decode_or_fail_typed(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = drain(bytes);
    }

    /// Random payloads behind well-formed headers reach the payload decoders.
    #[test]
    fn random_payloads_behind_valid_headers(
        kind in prop_oneof![Just(1u8), Just(2), Just(16), Just(17), Just(18), Just(19), Just(20), any::<u8>()],
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        declared_extra in 0u32..4,
    ) {
        let mut bytes = raw_header(payload.len() as u32 + declared_extra, 1, kind, 1);
        bytes.extend_from_slice(&payload);
        match drain(bytes) {
            Ok(_) => {}
            Err(FrameError::UnknownKind(k)) => prop_assert_eq!(k, kind),
            Err(FrameError::TruncatedPayload { .. }) => prop_assert!(declared_extra > 0),
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }
}
