//! The host side of the guest agent protocol (`tfc-agent-proto`): how the
//! daemon reaches the agent in a VM and asks it to run processes and move
//! files.
//!
//! Layout:
//! - [`handshake`]: opening the byte stream, either through Firecracker's
//!   vsock Unix socket (`CONNECT <port>\n` / `OK <host port>\n`) or straight
//!   to an agent listening on a Unix socket (the agent's `--unix` mode).
//! - [`connection`]: [`AgentConnection`], one multiplexed connection: a reader
//!   task routes frames by id to the call that owns the id, a writer task alone
//!   writes; the request/reply calls (`ping`, files, clock, entropy).
//! - [`exec`]: running a process: [`ExecHandle`] for streamed stdin, output
//!   events and signals, and the collecting convenience [`ExecOutput`].
//! - [`error`]: [`AgentError`], every way a call fails.
//!
//! Every call is cancel-safe: dropping its future (e.g. under
//! `tokio::time::timeout`) gives up the call's id and leaves the connection
//! usable, because frames only reach the socket through the writer task.

pub mod connection;
pub mod error;
pub mod exec;
pub mod handshake;

pub use connection::{AgentConnection, FileDownload, FileInfo, Pong};
pub use error::AgentError;
pub use exec::{ExecEvent, ExecHandle, ExecOutput, ExecRequest, ExitStatus};
pub use handshake::{connect_unix, connect_vsock};
pub use tfc_agent_proto::ErrorCode;
