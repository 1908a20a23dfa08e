//! Domain model of Terraphim Firecracker. Pure logic, no I/O: everything here is
//! decided from its inputs alone, so it is tested exhaustively without a VMM.
//!
//! Layout:
//! - [`allocation`]: which of a pool's ready VMs to hand out (the strategies).
//! - [`cpu`]: a host CPU's identity and whether a snapshot may move between two.
//! - [`exit`]: how a VMM process ended.
//! - [`error`]: printing an error with its causes, once, at the edge.
//! - [`id`]: validated identifiers of VMs, snapshots and VM types.
//! - [`level`]: optimization levels and the start method that serves each.
//! - [`net`]: per-VM networking: the address pool and its allocator, network modes,
//!   the fixed guest link, and the names and records of network objects.
//! - [`pool`]: pool tiers and the pure decisions of a pool (refill, back-off, autoscaling).
//! - [`spec`]: what a VM is made of (kernel, rootfs, vCPUs, memory, boot args, readiness).
//! - [`state`]: the VM lifecycle, [`VmState`], and its single transition function.
//! - [`time`]: wall-clock instants as Unix milliseconds.
//! - [`timeline`]: per-phase boot timing of one VM.

pub mod allocation;
pub mod cpu;
pub mod error;
pub mod exit;
pub mod id;
pub mod level;
pub mod limits;
pub mod net;
pub mod pool;
pub mod spec;
pub mod state;
pub mod time;
pub mod timeline;

pub use cpu::CpuIdentity;
pub use error::error_chain;
pub use exit::ExitReason;
pub use id::{IdError, SnapshotId, VmId, VmTypeName};
pub use level::{OptimizationLevel, StartMethod};
pub use pool::PoolTier;
pub use spec::{Readiness, SpecError, VmSpec, Vmm};
pub use state::{transition, InvalidTransition, VmEvent, VmState};
pub use time::unix_ms;
pub use timeline::{BootPhase, BootTimeline, PhaseMark};
