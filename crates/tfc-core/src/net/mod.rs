//! Per-VM networking, the pure part: addresses, the address allocator, what a
//! VM asks of its network, the fixed addressing inside every VM's namespace,
//! and the names and records of the host objects a VM's network is made of.
//! The adapter that creates those objects is `tfc-net`; the store that keeps
//! leases and records across restarts is `tfc-store`.
//!
//! Layout:
//! - [`addr`]: IPv4 networks ([`Ipv4Cidr`]), the configured pool ([`Ipv4Pool`]) and its
//!   `/30` [`Block`]s, one per VM.
//! - [`alloc`]: [`AddressAllocator`], leases blocks by VM id with deterministic reuse.
//! - [`config`]: what a VM asks for ([`NetConfig`]): mode, egress allowlist, port forwards.
//! - [`guest`]: the guest link every VM namespace has, identical in all of them.
//! - [`object`]: names of the objects tfc creates ([`NamePrefix`]) and the record of
//!   each ([`NetObject`]), for teardown and start-up reconciliation.

pub mod addr;
pub mod alloc;
pub mod config;
pub mod guest;
pub mod object;

pub use addr::{AddrError, Block, Ipv4Cidr, Ipv4Pool};
pub use alloc::{AddressAllocator, AllocError, Lease, Pick};
pub use config::{
    EgressRule, NetConfig, NetConfigError, NetMode, PortForward, PortRange, Protocol,
};
pub use object::{NamePrefix, NetObject, ObjectError};
