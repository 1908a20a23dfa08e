//! The guest agent: serves the `tfc-agent-proto` protocol to the host, and
//! as the guest's PID 1 also does init's duties.
//!
//! Layout:
//! - [`server`]: the listeners (a Unix socket, vsock), one task per
//!   connection, the routing of frames to requests by id, the writer task
//!   that alone writes to the connection.
//! - [`vsock`]: AF_VSOCK listener and streams for tokio, over `libc`.
//! - [`exec`]: running a process: output streamed as it comes with
//!   backpressure, stdin from data frames, timeout and signals on the
//!   process group.
//! - [`files`]: `put_file` (atomic by rename, size-checked) and `get_file`.
//! - [`system`]: ping facts, the clock, entropy, and who may change the
//!   network or power off.
//! - [`network`]: interfaces up, `set_network` (address, default route,
//!   resolv.conf); [`rtnetlink`] holds its few netlink messages.
//! - [`supervisor`]: PID 1: forks the agent, reaps orphans, restarts the
//!   agent, powers off.
//! - [`init`]: PID 1's boot steps: mounts, console, hostname, `lo`;
//!   [`cmdline`] reads the `tfc.` kernel parameters.
//!
//! The binary (`src/main.rs`) only parses arguments, starts logging and runs
//! [`supervisor::run`] (PID 1, `--init`) or [`server::run`].

pub mod cmdline;
pub mod exec;
pub mod files;
pub mod init;
pub mod network;
pub mod rtnetlink;
pub mod server;
pub mod supervisor;
pub mod system;
pub mod vsock;

pub use server::{serve, AgentConfig, ServeError};

/// Bytes read from a pipe or file per data frame. Far below
/// [`tfc_agent_proto::MAX_PAYLOAD`] so an output line shows up promptly.
pub const CHUNK: usize = 64 * 1024;
