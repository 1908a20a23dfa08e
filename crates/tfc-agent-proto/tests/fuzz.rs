//! Fuzzing the frame decoder with proptest, as an ordinary test: random and
//! mutated byte streams never panic the reader, every error is typed, and a
//! frame that decodes re-encodes to the bytes it came from (data and eof
//! frames byte for byte; control frames to JSON that decodes to the same
//! message, and byte for byte when the input was this codec's own output).
//!
//! Cases per property: 256 by default (CI); `TFC_FUZZ_CASES=100000` for a
//! long run.

use std::collections::BTreeMap;
use std::io::Cursor;

use proptest::prelude::*;
use tfc_agent_proto::{
    DataKind, ErrorCode, Frame, FrameBody, FrameError, FrameReader, Reply, Request, HEADER_LEN,
    MAX_PAYLOAD, PROTOCOL_VERSION,
};

fn fuzz_config() -> ProptestConfig {
    let cases = std::env::var("TFC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        // A long run should not stop at the first few hundred rejected
        // inputs of a filtered strategy.
        max_global_rejects: cases.saturating_mul(4).max(1024),
        ..ProptestConfig::default()
    }
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including control characters, quotes and backslashes,
    // which JSON must escape.
    prop_oneof![any::<String>(), "[\"\\\\\\x00-\\x1f/a-z]{0,24}"]
}

fn data_kind() -> impl Strategy<Value = DataKind> {
    prop_oneof![
        Just(DataKind::Stdin),
        Just(DataKind::Stdout),
        Just(DataKind::Stderr),
        Just(DataKind::File),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::BadRequest),
        Just(ErrorCode::NotFound),
        Just(ErrorCode::PermissionDenied),
        Just(ErrorCode::TooLarge),
        Just(ErrorCode::Timeout),
        Just(ErrorCode::Unsupported),
        Just(ErrorCode::Io),
        Just(ErrorCode::Protocol),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Ping),
        Just(Request::Shutdown),
        (
            proptest::collection::vec(text(), 0..4),
            proptest::collection::btree_map(text(), text(), 0..3),
            proptest::option::of(text()),
            any::<bool>(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u32>()),
        )
            .prop_map(|(argv, env, cwd, stdin, timeout_ms, uid)| Request::Exec {
                argv,
                env,
                cwd,
                stdin,
                timeout_ms,
                uid
            }),
        any::<i32>().prop_map(|signal| Request::Signal { signal }),
        (text(), any::<u32>(), any::<u64>(), any::<bool>()).prop_map(
            |(path, mode, size, atomic)| Request::PutFile {
                path,
                mode,
                size,
                atomic
            }
        ),
        (text(), proptest::option::of(any::<u64>()))
            .prop_map(|(path, max_size)| Request::GetFile { path, max_size }),
        (
            text(),
            text(),
            proptest::option::of(text()),
            proptest::collection::vec(text(), 0..3)
        )
            .prop_map(|(interface, address_cidr, gateway, nameservers)| {
                Request::SetNetwork {
                    interface,
                    address_cidr,
                    gateway,
                    nameservers,
                }
            }),
        any::<u64>().prop_map(|unix_ns| Request::SyncClock { unix_ns }),
        proptest::collection::vec(any::<u8>(), 0..64)
            .prop_map(|seed| Request::ReseedEntropy { seed }),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        Just(Reply::Done),
        (any::<u8>(), text(), any::<u64>(), text()).prop_map(
            |(version, agent_version, uptime_ms, boot_id)| Reply::Pong {
                version,
                agent_version,
                uptime_ms,
                boot_id
            }
        ),
        any::<u32>().prop_map(|pid| Reply::ExecStarted { pid }),
        (
            proptest::option::of(any::<i32>()),
            proptest::option::of(any::<i32>()),
            any::<bool>()
        )
            .prop_map(|(code, signal, timed_out)| Reply::Exit {
                code,
                signal,
                timed_out
            }),
        (any::<u64>(), any::<u32>()).prop_map(|(size, mode)| Reply::FileInfo { size, mode }),
        any::<bool>().prop_map(|credited| Reply::Reseeded { credited }),
        (error_code(), text()).prop_map(|(code, message)| Reply::Error { code, message }),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    let body = prop_oneof![
        request().prop_map(FrameBody::Request),
        reply().prop_map(FrameBody::Reply),
        (data_kind(), proptest::collection::vec(any::<u8>(), 0..256))
            .prop_map(|(kind, bytes)| FrameBody::Data { kind, bytes }),
        data_kind().prop_map(FrameBody::Eof),
    ];
    (any::<u64>(), body).prop_map(|(id, body)| Frame { id, body })
}

/// Decodes every frame of `bytes`, each with the exact bytes it was read
/// from, until the stream ends or loses sync. A frame refused whole (bad
/// JSON, bad eof) is skipped, as a peer does. It must never panic.
fn decode_all(bytes: &[u8]) -> (Vec<(Frame, Vec<u8>)>, Option<FrameError>) {
    let mut cursor = Cursor::new(bytes);
    let mut frames = Vec::new();
    loop {
        // The reader keeps no state between frames, so one per frame lets
        // the cursor tell where each frame began and ended.
        let start = cursor.position() as usize;
        match FrameReader::new(&mut cursor).read_frame() {
            Ok(Some(frame)) => {
                let end = cursor.position() as usize;
                frames.push((frame, bytes[start..end].to_vec()));
            }
            Ok(None) => return (frames, None),
            Err(e) if e.stream_in_sync() => {
                assert!(e.frame_id().is_some(), "an in-sync error names its frame");
            }
            Err(e) => return (frames, Some(e)),
        }
    }
}

/// A stream-ending error is one of the typed ways a stream can be wrong,
/// and says so in a message.
fn assert_clean_error(err: &FrameError) {
    assert!(!err.to_string().is_empty());
    match err {
        FrameError::TruncatedHeader { got } => assert!(*got < HEADER_LEN),
        FrameError::TruncatedPayload { expected, got } => {
            assert!((*got as u64) < u64::from(*expected))
        }
        FrameError::UnsupportedVersion { got, .. } => assert_ne!(*got, PROTOCOL_VERSION),
        FrameError::FrameTooLarge { len, max } => assert!(*len > u64::from(*max)),
        FrameError::UnknownKind(_) => {}
        other => panic!("a reader over bytes in memory cannot fail with {other:?}"),
    }
}

/// Checks that every decoded frame re-encodes faithfully.
fn assert_re_encodes(frames: &[(Frame, Vec<u8>)]) {
    for (frame, wire) in frames {
        let again = frame.to_bytes().expect("a decoded frame encodes");
        match frame.body {
            FrameBody::Data { .. } | FrameBody::Eof(_) => assert_eq!(&again, wire),
            FrameBody::Request(_) | FrameBody::Reply(_) => {
                // JSON has many spellings of one message; ours is canonical.
                // Version, kind and id are kept; only the length may differ.
                assert_eq!(again[4..HEADER_LEN], wire[4..HEADER_LEN]);
                let (decoded, _) = decode_all(&again);
                assert_eq!(decoded.len(), 1);
                assert_eq!(&decoded[0].0, frame);
                assert_eq!(decoded[0].1, again, "canonical bytes are a fixed point");
            }
        }
    }
}

/// Flips, inserts and deletes bytes of `bytes` at positions from `edits`.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(at, op, value) in edits {
        if bytes.is_empty() {
            bytes.push(value);
            continue;
        }
        let at = at % bytes.len();
        match op % 4 {
            0 => bytes[at] ^= value | 1,
            1 => bytes.insert(at, value),
            2 => {
                bytes.remove(at);
            }
            _ => bytes[at] = value,
        }
    }
    bytes
}

proptest! {
    #![proptest_config(fuzz_config())]

    /// Any frame this codec writes reads back as itself from exactly its
    /// own bytes, and its bytes are what encoding it again gives.
    #[test]
    fn encoded_frames_decode_to_themselves(frames in proptest::collection::vec(frame(), 1..6)) {
        let mut wire = Vec::new();
        let mut each = Vec::new();
        for frame in &frames {
            let bytes = frame.to_bytes().unwrap();
            wire.extend_from_slice(&bytes);
            each.push(bytes);
        }
        let (decoded, err) = decode_all(&wire);
        prop_assert!(err.is_none(), "{err:?}");
        prop_assert_eq!(decoded.len(), frames.len());
        for ((frame, bytes), (want, want_bytes)) in decoded.iter().zip(frames.iter().zip(&each)) {
            prop_assert_eq!(frame, want);
            prop_assert_eq!(bytes, want_bytes);
            prop_assert_eq!(&frame.to_bytes().unwrap(), want_bytes);
        }
    }

    /// A valid stream with bytes flipped, inserted or removed never panics
    /// the reader; what still decodes re-encodes faithfully, and what does
    /// not is a typed error.
    #[test]
    fn mutated_streams_decode_or_fail_typed(
        frames in proptest::collection::vec(frame(), 1..4),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let mut wire = Vec::new();
        for frame in &frames {
            wire.extend_from_slice(&frame.to_bytes().unwrap());
        }
        let (decoded, err) = decode_all(&mutate(wire, &edits));
        assert_re_encodes(&decoded);
        if let Some(err) = err {
            assert_clean_error(&err);
        }
    }

    /// Arbitrary JSON-ish payloads behind well-formed control headers: a
    /// message either decodes (and re-encodes to itself) or is refused
    /// whole, leaving the stream in sync.
    #[test]
    fn control_payloads_decode_or_are_refused_whole(
        reply_kind in any::<bool>(),
        payload in prop_oneof![
            "\\{\"op\":\"[a-z_]{0,14}\"(,\"[a-z_]{1,12}\":(null|true|[0-9]{1,25}|-1|\"[ -~]{0,8}\"|\\[\\]|\\{\\}))*\\}",
            any::<String>(),
        ],
    ) {
        let mut wire = (payload.len() as u32).to_be_bytes().to_vec();
        wire.push(PROTOCOL_VERSION);
        wire.push(if reply_kind { 2 } else { 1 });
        wire.extend_from_slice(&7u64.to_be_bytes());
        wire.extend_from_slice(payload.as_bytes());
        let mut cursor = Cursor::new(&wire[..]);
        match FrameReader::new(&mut cursor).read_frame() {
            Ok(Some(frame)) => {
                prop_assert_eq!(frame.id, 7);
                let (again, _) = decode_all(&frame.to_bytes().unwrap());
                prop_assert_eq!(&again[0].0, &frame);
            }
            Err(e @ FrameError::MalformedControl { .. }) => {
                prop_assert_eq!(e.frame_id(), Some(7));
                prop_assert_eq!(cursor.position() as usize, wire.len());
            }
            other => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    /// Headers with any length, version, kind and id: refused before any
    /// payload is allocated when the length is over the limit.
    #[test]
    fn any_header_is_checked_before_its_payload(
        len in prop_oneof![0u32..64, Just(MAX_PAYLOAD), Just(MAX_PAYLOAD + 1), any::<u32>()],
        version in prop_oneof![Just(PROTOCOL_VERSION), any::<u8>()],
        kind in any::<u8>(),
        id in any::<u64>(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut wire = len.to_be_bytes().to_vec();
        wire.push(version);
        wire.push(kind);
        wire.extend_from_slice(&id.to_be_bytes());
        wire.extend_from_slice(&payload);
        let (decoded, err) = decode_all(&wire);
        assert_re_encodes(&decoded);
        if version != PROTOCOL_VERSION {
            prop_assert!(matches!(err, Some(FrameError::UnsupportedVersion { .. })), "{err:?}");
        } else if len > MAX_PAYLOAD {
            prop_assert!(matches!(err, Some(FrameError::FrameTooLarge { .. })), "{err:?}");
        }
        if let Some(err) = err {
            assert_clean_error(&err);
        }
    }
}

#[test]
fn an_exec_with_every_field_re_encodes_byte_for_byte() {
    let frame = Frame::request(
        3,
        Request::Exec {
            argv: vec!["sh".into(), "-c".into(), "printf '\\0'".into()],
            env: BTreeMap::from([("K\u{1}".into(), "\"v\"".into())]),
            cwd: Some("/".into()),
            stdin: true,
            timeout_ms: Some(u64::MAX),
            uid: Some(0),
        },
    );
    let bytes = frame.to_bytes().unwrap();
    let (decoded, err) = decode_all(&bytes);
    assert!(err.is_none());
    assert_eq!(decoded, vec![(frame, bytes)]);
}
