//! Firecracker adapter, pinned to Firecracker v1.12.1.
//!
//! Layout, bottom up:
//! - [`models`]: hand-written wire structs of the Firecracker API we use. Private
//!   to the adapter's callers' concerns: the daemon's domain types live in `tfc-core`.
//! - [`client`]: HTTP/1.1 over the API Unix socket; Firecracker's `fault_message`
//!   becomes part of our error.
//! - [`console`]: bounded capture of the serial console with line watching (readiness).
//! - [`pidfd`]: process file descriptors, so signals never reach a recycled pid.
//! - [`priority`]: VMMs started at idle CPU priority and given normal priority back.
//! - [`process`]: spawn, wait for the API socket, detect exit, graceful stop, cleanup.
//! - [`listener`]: waiting, without a busy timer, for a new VMM's socket to accept.
//! - [`jailer`]: running the process under Firecracker's jailer: chroot, uid/gid,
//!   cgroups, PID namespace; files moved in and out of the chroot.
//! - [`jail_ids`]: the user each jail runs as: one id per jail from a range, or
//!   one shared user.
//! - [`vm_config`]: a VM's boot configuration, applied over the API or as a config file.
//! - [`memfile`]: snapshot memory files; merging diff snapshots onto their base.
//! - [`vsock`]: the host side of the vsock device's connect handshake; a guest liveness probe.

pub mod client;
pub mod console;
pub mod jail_ids;
pub mod jailer;
pub mod listener;
pub mod memfile;
pub mod models;
pub mod pidfd;
pub mod priority;
pub mod process;
pub mod vm_config;
pub mod vsock;

pub use client::{ApiClient, ApiError, ExpectedPeer};
pub use console::{ConsoleError, ConsoleWatch};
pub use jail_ids::{JailIdError, JailIdPool, JailIds, JailUser};
pub use jailer::{
    open_untrusted, open_untrusted_link, CgroupVersion, Jail, JailError, JailerConfig,
};
pub use process::{
    ExitReason, FirecrackerProcess, ProcessError, ProcessRecord, SpawnConfig, StopPolicy,
};
pub use vm_config::VmConfig;

/// The Firecracker release whose API these models follow.
pub const FIRECRACKER_API_VERSION: &str = "1.12.1";
