//! The guest agent: serves the `tfc-agent-proto` protocol to the host.
//!
//! Layout:
//! - [`server`]: the listener (a Unix socket; vsock is the next slice), one
//!   task per connection, the routing of frames to requests by id, the writer task
//!   that alone writes to the connection.
//! - [`exec`]: running a process: output streamed as it comes with
//!   backpressure, stdin from data frames, timeout and signals on the
//!   process group.
//! - [`files`]: `put_file` (atomic by rename, size-checked) and `get_file`.
//! - [`system`]: ping facts, the clock, entropy.
//!
//! The binary (`src/main.rs`) only parses arguments, starts logging and runs
//! [`server::serve`].

pub mod exec;
pub mod files;
pub mod server;
pub mod system;

pub use server::{serve, AgentConfig, ServeError};

/// Bytes read from a pipe or file per data frame. Far below
/// [`tfc_agent_proto::MAX_PAYLOAD`] so an output line shows up promptly.
pub const CHUNK: usize = 64 * 1024;
