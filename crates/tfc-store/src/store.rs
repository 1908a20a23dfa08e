//! The storage seam: what the daemon persists (VMs and snapshots, each one row
//! per id; address leases and the network objects made for each VM) and the
//! verbs it persists it with.
//! Backends are interchangeable; `conformance` holds them to the same behaviour.

use std::fmt::Debug;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::Serialize;
use tfc_core::net::{Ipv4Pool, Lease, NetObject};
use tfc_core::{SnapshotId, VmId, VmState};

use crate::error::StoreError;

/// Largest `updated_at_ms` a store accepts: SQLite integers are signed 64-bit, and
/// every backend refuses the same values so that they stay interchangeable.
pub const MAX_TIMESTAMP_MS: u64 = i64::MAX as u64;

/// One VM as the daemon persists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmRow {
    pub id: VmId,
    /// Kept beside `record` so that recovery can find VMs by state without
    /// parsing records. The daemon keeps the two consistent.
    pub state: VmState,
    /// The daemon's full VM record as JSON. Opaque to the store.
    pub record: String,
    /// When the daemon last changed this VM, in milliseconds since the Unix epoch.
    /// At most [`MAX_TIMESTAMP_MS`].
    pub updated_at_ms: u64,
}

impl VmRow {
    /// Refuses rows that some backend could not store, before any backend is touched.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        check_timestamp("VM", self.id.as_str(), self.updated_at_ms)
    }
}

/// One snapshot as the daemon persists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRow {
    pub id: SnapshotId,
    /// The daemon's full snapshot record as JSON. Opaque to the store.
    pub record: String,
    /// When the daemon last changed this snapshot, in milliseconds since the Unix
    /// epoch. At most [`MAX_TIMESTAMP_MS`].
    pub updated_at_ms: u64,
}

impl SnapshotRow {
    /// Refuses rows that some backend could not store, before any backend is touched.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        check_timestamp("snapshot", self.id.as_str(), self.updated_at_ms)
    }
}

fn check_timestamp(kind: &'static str, id: &str, value: u64) -> Result<(), StoreError> {
    if value > MAX_TIMESTAMP_MS {
        return Err(StoreError::TimestampOutOfRange {
            kind,
            id: id.to_owned(),
            value,
        });
    }
    Ok(())
}

/// The network objects recorded for one VM, in the order they were created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetObjectsRow {
    pub vm: VmId,
    pub objects: Vec<NetObject>,
}

/// What a store holds and how big it is, for `tfc doctor` and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// `"memory"` or `"sqlite"`.
    pub backend: &'static str,
    /// The database file, for backends that have one.
    pub path: Option<PathBuf>,
    /// Rows per table, in a fixed order.
    pub rows: Vec<(String, u64)>,
    /// Bytes on disk: the database file plus its write-ahead log.
    pub size_bytes: Option<u64>,
    /// Wall-clock time of the last write that changed a row, in milliseconds since
    /// the Unix epoch; never decreases, even if the clock steps back. `None` until
    /// the first such write.
    pub last_write_ms: Option<u64>,
    /// Schema version of the data, see [`crate::schema`].
    pub schema_version: u32,
}

/// Durable state of the daemon. Every call is synchronous and, once it returns
/// `Ok`, durable to the degree the backend promises (the SQLite store: on disk,
/// fsynced). Writes are atomic: a crash leaves either the old row or the new one.
pub trait Store: Send + Sync + Debug {
    /// Inserts the row, or replaces the row with the same id.
    fn put_vm(&self, row: &VmRow) -> Result<(), StoreError>;

    /// Removes the row with this id; `false` if there was none.
    fn delete_vm(&self, id: &VmId) -> Result<bool, StoreError>;

    /// The row with this id, if any.
    fn get_vm(&self, id: &VmId) -> Result<Option<VmRow>, StoreError>;

    /// Every row, ordered by id (byte order of the id string).
    fn list_vms(&self) -> Result<Vec<VmRow>, StoreError>;

    /// Inserts the snapshot row, or replaces the row with the same id.
    fn put_snapshot(&self, row: &SnapshotRow) -> Result<(), StoreError>;

    /// Removes the snapshot row with this id; `false` if there was none.
    fn delete_snapshot(&self, id: &SnapshotId) -> Result<bool, StoreError>;

    /// The snapshot row with this id, if any.
    fn get_snapshot(&self, id: &SnapshotId) -> Result<Option<SnapshotRow>, StoreError>;

    /// Every snapshot row, ordered by id (byte order of the id string).
    fn list_snapshots(&self) -> Result<Vec<SnapshotRow>, StoreError>;

    /// Leases a block of `pool` to `vm`: the block it holds already, else the next
    /// one by the allocator's reuse rule ([`tfc_core::net::alloc::pick`]: fresh
    /// blocks lowest first, then the block released longest ago). Atomic: two
    /// calls at once never get the same block. Refused ([`StoreError::Lease`])
    /// when every block is leased, or when `pool` differs from the pool of the
    /// leases held (with no lease held, the store moves to `pool`).
    fn lease_block(&self, pool: &Ipv4Pool, vm: &VmId) -> Result<Lease, StoreError>;

    /// Gives `vm`'s block back, to be reused last; `None` if it held none.
    fn release_block(&self, vm: &VmId) -> Result<Option<Lease>, StoreError>;

    /// Every lease, ordered by block.
    fn list_leases(&self) -> Result<Vec<Lease>, StoreError>;

    /// Records the network objects of `vm`, in creation order, replacing what was
    /// recorded for it. An empty list removes the record.
    fn put_net_objects(&self, vm: &VmId, objects: &[NetObject]) -> Result<(), StoreError>;

    /// Removes the record of `vm`'s network objects; `false` if there was none.
    fn delete_net_objects(&self, vm: &VmId) -> Result<bool, StoreError>;

    /// Every VM's recorded network objects, ordered by VM id.
    fn list_net_objects(&self) -> Result<Vec<NetObjectsRow>, StoreError>;

    fn stats(&self) -> Result<StoreStats, StoreError>;
}

/// Wall clock in milliseconds since the Unix epoch, for `last_write_ms`.
pub(crate) fn now_ms() -> u64 {
    tfc_core::unix_ms(SystemTime::now()).min(MAX_TIMESTAMP_MS)
}
