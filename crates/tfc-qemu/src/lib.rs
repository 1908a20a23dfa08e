//! QEMU TCG adapter: one VM as QEMU's `microvm` machine under software
//! emulation (no KVM needed), with `vhost-device-vsock` serving its vsock
//! device. It runs the same kernel (as `bzImage`), root image and guest agent
//! as a Firecracker VM, and its vsock has the host-side socket and
//! `CONNECT <port>` protocol of Firecracker's, so code that talks to a
//! Firecracker VM's vsock talks to this one unchanged. It cannot take
//! snapshots.
//!
//! Layout, bottom up:
//! - [`qmp`]: a small client of QEMU's machine protocol on its Unix socket
//!   (negotiation, `stop`, `cont`, `query-status`, `quit`).
//! - [`command`]: the two processes' command lines and the files they use
//!   in the VM's directory, built from a [`MachineConfig`].
//! - [`process`]: spawning both processes, process records for adoption by a
//!   later daemon, a supervisor that ends them together, stop with
//!   escalation, and finding leftovers for start-up cleanup.
//!
//! Shared with the Firecracker adapter rather than duplicated: the console
//! capture (`tfc_firecracker::console`), pidfds, process records and the
//! VM-directory names of the console log, root image link and vsock socket.

pub mod command;
pub mod process;
pub mod qmp;

pub use command::{MachineConfig, NetDevice};
pub use process::{ExitReason, ProcessError, QemuVm, SpawnConfig};
pub use qmp::{QmpClient, QmpError};
