//! Frames: the unit on the byte stream.
//!
//! ```text
//! [u32 BE payload length][u8 version][u8 kind][u64 BE id][payload ...]
//! ```
//!
//! Invariant kept by every reader in this crate: a frame is read exactly, never
//! a byte past it, and the payload length is checked against [`MAX_PAYLOAD`]
//! before any buffer for it is allocated.

use std::io;

use crate::message::{Reply, Request};

/// The version every frame carries; a frame with another is refused.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 14;

/// The largest payload of one frame. Bulk data is cut into chunks of at most
/// this; a control message never comes near it.
pub const MAX_PAYLOAD: u32 = 1024 * 1024;

/// What a frame's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// JSON [`Request`], host to agent.
    Request = 1,
    /// JSON [`Reply`] (answers and events), agent to host.
    Reply = 2,
    Stdin = 16,
    Stdout = 17,
    Stderr = 18,
    File = 19,
    /// The end of one data stream of the id; the payload is the one byte of
    /// the data kind that ended (an empty payload could not tell stdout's end
    /// from stderr's).
    Eof = 20,
}

impl FrameKind {
    /// The kind with this wire byte.
    pub fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => FrameKind::Request,
            2 => FrameKind::Reply,
            16 => FrameKind::Stdin,
            17 => FrameKind::Stdout,
            18 => FrameKind::Stderr,
            19 => FrameKind::File,
            20 => FrameKind::Eof,
            _ => return None,
        })
    }
}

/// The kinds of raw-byte streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataKind {
    Stdin,
    Stdout,
    Stderr,
    /// File contents, either direction.
    File,
}

impl DataKind {
    /// The frame kind that carries this stream's chunks.
    pub fn frame_kind(self) -> FrameKind {
        match self {
            DataKind::Stdin => FrameKind::Stdin,
            DataKind::Stdout => FrameKind::Stdout,
            DataKind::Stderr => FrameKind::Stderr,
            DataKind::File => FrameKind::File,
        }
    }

    fn from_frame_kind(kind: FrameKind) -> Option<Self> {
        Some(match kind {
            FrameKind::Stdin => DataKind::Stdin,
            FrameKind::Stdout => DataKind::Stdout,
            FrameKind::Stderr => DataKind::Stderr,
            FrameKind::File => DataKind::File,
            _ => return None,
        })
    }
}

/// Every way reading or writing a frame fails.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("reading a frame failed")]
    Read(#[source] io::Error),
    #[error("writing a frame failed")]
    Write(#[source] io::Error),
    #[error("the stream ended inside a frame header ({got} of {HEADER_LEN} bytes)")]
    TruncatedHeader { got: usize },
    #[error("the stream ended inside a frame payload ({got} of {expected} bytes)")]
    TruncatedPayload { expected: u32, got: usize },
    #[error("frame has protocol version {got}; this side speaks version {supported}")]
    UnsupportedVersion { got: u8, supported: u8 },
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u64, max: u32 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("the {kind:?} frame of id {id} does not hold a valid message")]
    MalformedControl {
        kind: FrameKind,
        id: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("the eof frame of id {id} must name one data kind in a one-byte payload")]
    MalformedEof { id: u64 },
    #[error("encoding a control message failed")]
    Encode(#[source] serde_json::Error),
}

impl FrameError {
    /// Whether the reader is still at a frame boundary after this error, so
    /// the connection can go on (the bad frame was read whole). After any
    /// other error the position of the next frame is unknown.
    pub fn stream_in_sync(&self) -> bool {
        matches!(
            self,
            FrameError::MalformedControl { .. } | FrameError::MalformedEof { .. }
        )
    }

    /// The id of the frame that was read whole but could not be understood,
    /// so the peer can be told which request failed.
    pub fn frame_id(&self) -> Option<u64> {
        match self {
            FrameError::MalformedControl { id, .. } | FrameError::MalformedEof { id } => Some(*id),
            _ => None,
        }
    }
}

/// A checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub kind: FrameKind,
    pub id: u64,
}

impl Header {
    /// Checks a raw header: version first (another version may lay out the
    /// rest differently), then the length, then the kind.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Self, FrameError> {
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let version = bytes[4];
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion {
                got: version,
                supported: PROTOCOL_VERSION,
            });
        }
        if len > MAX_PAYLOAD {
            return Err(FrameError::FrameTooLarge {
                len: len.into(),
                max: MAX_PAYLOAD,
            });
        }
        let kind = FrameKind::from_byte(bytes[5]).ok_or(FrameError::UnknownKind(bytes[5]))?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[6..]);
        Ok(Header {
            len,
            kind,
            id: u64::from_be_bytes(id),
        })
    }

    /// The wire bytes of a header; fails when `len` is over [`MAX_PAYLOAD`].
    pub fn encode(kind: FrameKind, id: u64, len: usize) -> Result<[u8; HEADER_LEN], FrameError> {
        let len = u32::try_from(len)
            .ok()
            .filter(|len| *len <= MAX_PAYLOAD)
            .ok_or(FrameError::FrameTooLarge {
                len: len as u64,
                max: MAX_PAYLOAD,
            })?;
        let mut bytes = [0u8; HEADER_LEN];
        bytes[..4].copy_from_slice(&len.to_be_bytes());
        bytes[4] = PROTOCOL_VERSION;
        bytes[5] = kind as u8;
        bytes[6..].copy_from_slice(&id.to_be_bytes());
        Ok(bytes)
    }
}

/// What a frame says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameBody {
    Request(Request),
    Reply(Reply),
    Data { kind: DataKind, bytes: Vec<u8> },
    Eof(DataKind),
}

impl FrameBody {
    /// Interprets a payload read whole for the frame `header` describes.
    pub fn decode(header: &Header, payload: Vec<u8>) -> Result<Self, FrameError> {
        let Header { kind, id, .. } = *header;
        let malformed = |source| FrameError::MalformedControl { kind, id, source };
        Ok(match kind {
            FrameKind::Request => {
                FrameBody::Request(serde_json::from_slice(&payload).map_err(malformed)?)
            }
            FrameKind::Reply => {
                FrameBody::Reply(serde_json::from_slice(&payload).map_err(malformed)?)
            }
            FrameKind::Eof => match payload[..] {
                [byte] => FrameBody::Eof(
                    FrameKind::from_byte(byte)
                        .and_then(DataKind::from_frame_kind)
                        .ok_or(FrameError::MalformedEof { id })?,
                ),
                _ => return Err(FrameError::MalformedEof { id }),
            },
            data => FrameBody::Data {
                kind: DataKind::from_frame_kind(data).expect("every other kind is a data kind"),
                bytes: payload,
            },
        })
    }

    /// The frame kind and payload bytes of this body.
    pub fn encode(&self) -> Result<(FrameKind, Vec<u8>), FrameError> {
        Ok(match self {
            FrameBody::Request(request) => (
                FrameKind::Request,
                serde_json::to_vec(request).map_err(FrameError::Encode)?,
            ),
            FrameBody::Reply(reply) => (
                FrameKind::Reply,
                serde_json::to_vec(reply).map_err(FrameError::Encode)?,
            ),
            FrameBody::Data { kind, bytes } => (kind.frame_kind(), bytes.clone()),
            FrameBody::Eof(kind) => (FrameKind::Eof, vec![kind.frame_kind() as u8]),
        })
    }
}

/// One frame: the id of the request it belongs to and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub id: u64,
    pub body: FrameBody,
}

impl Frame {
    pub fn request(id: u64, request: Request) -> Self {
        Frame {
            id,
            body: FrameBody::Request(request),
        }
    }

    pub fn reply(id: u64, reply: Reply) -> Self {
        Frame {
            id,
            body: FrameBody::Reply(reply),
        }
    }

    pub fn data(id: u64, kind: DataKind, bytes: Vec<u8>) -> Self {
        Frame {
            id,
            body: FrameBody::Data { kind, bytes },
        }
    }

    pub fn eof(id: u64, kind: DataKind) -> Self {
        Frame {
            id,
            body: FrameBody::Eof(kind),
        }
    }

    /// The whole frame as wire bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, FrameError> {
        let (kind, payload) = self.body.encode()?;
        let header = Header::encode(kind, self.id, payload.len())?;
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&payload);
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let bytes = Header::encode(FrameKind::Stdout, 0x0102_0304_0506_0708, 5).unwrap();
        assert_eq!(bytes, [0, 0, 0, 5, 1, 17, 1, 2, 3, 4, 5, 6, 7, 8]);
        let header = Header::parse(&bytes).unwrap();
        assert_eq!(
            header,
            Header {
                len: 5,
                kind: FrameKind::Stdout,
                id: 0x0102_0304_0506_0708
            }
        );
    }

    #[test]
    fn encoding_refuses_payloads_over_the_limit() {
        let err = Header::encode(FrameKind::File, 1, MAX_PAYLOAD as usize + 1).unwrap_err();
        assert!(matches!(err, FrameError::FrameTooLarge { .. }), "{err:?}");
        assert!(Header::encode(FrameKind::File, 1, MAX_PAYLOAD as usize).is_ok());
    }

    #[test]
    fn every_kind_byte_round_trips() {
        for kind in [
            FrameKind::Request,
            FrameKind::Reply,
            FrameKind::Stdin,
            FrameKind::Stdout,
            FrameKind::Stderr,
            FrameKind::File,
            FrameKind::Eof,
        ] {
            assert_eq!(FrameKind::from_byte(kind as u8), Some(kind));
        }
        assert_eq!(FrameKind::from_byte(0), None);
        assert_eq!(FrameKind::from_byte(3), None);
    }

    #[test]
    fn eof_payload_must_name_a_data_kind() {
        for payload in [vec![], vec![1], vec![17, 17], vec![20]] {
            let header = Header {
                len: payload.len() as u32,
                kind: FrameKind::Eof,
                id: 4,
            };
            let err = FrameBody::decode(&header, payload.clone()).unwrap_err();
            assert!(
                matches!(err, FrameError::MalformedEof { id: 4 }),
                "{payload:?}: {err:?}"
            );
            assert!(err.stream_in_sync());
            assert_eq!(err.frame_id(), Some(4));
        }
    }
}
