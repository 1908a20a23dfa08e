//! Per-VM isolated networking (Linux, as root): each VM gets its own network
//! namespace holding a tap for Firecracker and one end of a veth pair to the
//! host; the guest sees the same address in every namespace (clone-safe), the
//! namespace translates it to the VM's own address from the pool, and
//! nftables enforces the VM's mode. Design and rationale: docs/networking.md.
//!
//! Layout, bottom up:
//! - [`netns`]: named network namespaces under `/run/netns`, entered per thread.
//! - [`netlink`]: a minimal synchronous rtnetlink client (veth pairs, links,
//!   addresses, routes, one policy rule).
//! - [`tun`]: persistent taps through `/dev/net/tun`, with Firecracker's flags.
//! - [`sysctl`]: a namespace's network sysctls.
//! - [`nft`]: our nftables rulesets (VM namespace, host, port forwards) and
//!   `nft -f -` to load them, each in a table of our own.
//! - [`host`]: [`HostNet`], the host side shared by all VM networks.
//! - [`slot`]: a [`Slot`] (one VM network, ready) and a [`VmNetwork`] (a slot
//!   held by a VM), their setup recorded before each step and their teardown
//!   in reverse, safe to repeat.
//! - [`pool`]: [`SlotPool`], slots made ahead of need.
//! - [`mod@reconcile`]: start-up removal of what no live VM owns.
//! - [`mod@bench`]: setup and teardown timings, pooled vs on demand.
//! - `crash`: named crash points for fault-injection tests (`TFC_CRASH_AT`).
//!
//! Leases and records go through `tfc_store::Store`; the pure rules (pool,
//! allocator, modes, names) are in `tfc_core::net`.

pub mod bench;
mod crash;
pub mod host;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod pool;
pub mod reconcile;
pub mod slot;
pub mod sysctl;
pub mod tun;

pub use host::{HostConfig, HostError, HostNet};
pub use netns::{Netns, NetnsError};
pub use pool::SlotPool;
pub use reconcile::{reconcile, ReconcileError, ReconcileReport};
pub use slot::{teardown_recorded, SetupError, Slot, TeardownError, VmNetwork};
