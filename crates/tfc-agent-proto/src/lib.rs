//! The wire protocol between the host and the guest agent, shared by both.
//!
//! Layout, bottom up:
//! - [`frame`]: the fixed frame header, frame kinds, the [`Frame`] type and its
//!   byte encoding; every way a frame can be wrong is a [`FrameError`].
//! - [`message`]: the control messages ([`Request`], [`Reply`]) carried as JSON
//!   in control frames, and the stable [`ErrorCode`]s.
//! - [`blocking`]: [`FrameReader`]/[`FrameWriter`] over `std::io::Read`/`Write`.
//! - [`nonblocking`] (feature `tokio`): the same over tokio's `AsyncRead`/`AsyncWrite`.
//!
//! # Why this shape
//!
//! A frame is `[u32 BE payload length][u8 version][u8 kind][u64 BE id]` then the
//! payload. The length comes first so a reader knows how much to read before it
//! looks at anything else, and checks it against [`MAX_PAYLOAD`] *before*
//! allocating: a corrupt or hostile prefix cannot make either side allocate 4 GiB.
//! The version is in every frame (not only in a hello) so a mismatched peer is
//! caught on its first frame with [`FrameError::UnsupportedVersion`], whatever it
//! sends first.
//!
//! Control frames (requests, replies, events) carry JSON: they are small next to
//! the work they ask for (spawning a process, writing a file), JSON is readable
//! in a packet capture, and `#[serde(default)]` fields let either side grow
//! without a version bump. Data frames (stdin, stdout, stderr, file contents)
//! carry raw bytes: a 64 MiB output is neither base64-inflated by a third nor
//! parsed as JSON, and each chunk is at most [`MAX_PAYLOAD`], so a stream of any
//! length is sent in bounded pieces.
//!
//! The `id` multiplexes one connection: a request and every frame that belongs
//! to it (its data, its events, its reply) share the id the host chose, so
//! several execs and file transfers run at once on one vsock connection.
//!
//! Requests refuse unknown fields: an agent must not let a host believe that a
//! field it does not know (a newer `uid`, a misspelt `timeout_ms`) was honoured.
//! (serde checks the fields of struct variants only: the field-less `ping` and
//! `shutdown` ignore extras.) Replies accept unknown fields, so an older host
//! can talk to a newer agent.

pub mod blocking;
pub mod frame;
pub mod message;
#[cfg(feature = "tokio")]
pub mod nonblocking;

pub use blocking::{FrameReader, FrameWriter};
pub use frame::{
    DataKind, Frame, FrameBody, FrameError, FrameKind, Header, HEADER_LEN, MAX_PAYLOAD,
    PROTOCOL_VERSION,
};
pub use message::{ErrorCode, Reply, Request};
