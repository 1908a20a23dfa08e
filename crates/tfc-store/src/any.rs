//! [`AnyStore`]: the backend chosen by configuration, as one concrete type.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tfc_core::net::{Ipv4Pool, Lease, NetObject};
use tfc_core::{SnapshotId, VmId};

use crate::error::StoreError;
use crate::memory::MemoryStore;
use crate::sqlite::{SqliteStore, STATE_DB_FILE};
use crate::store::{NetObjectsRow, SnapshotRow, Store, StoreStats, VmRow};

/// Which backend keeps the daemon's state: `storage = "sqlite"` (the default) or
/// `"memory"` (nothing survives a restart).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Memory,
    #[default]
    Sqlite,
}

#[derive(Debug)]
pub enum AnyStore {
    Memory(MemoryStore),
    Sqlite(SqliteStore),
}

impl AnyStore {
    /// Opens the store of this kind for the data directory; the SQLite store lives
    /// in `<data_dir>/state.db`.
    pub fn open(kind: StoreKind, data_dir: &Path) -> Result<Self, StoreError> {
        Ok(match kind {
            StoreKind::Memory => AnyStore::Memory(MemoryStore::new()),
            StoreKind::Sqlite => {
                AnyStore::Sqlite(SqliteStore::open(&data_dir.join(STATE_DB_FILE))?)
            }
        })
    }

    pub fn kind(&self) -> StoreKind {
        match self {
            AnyStore::Memory(_) => StoreKind::Memory,
            AnyStore::Sqlite(_) => StoreKind::Sqlite,
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Memory($store) => $call,
            AnyStore::Sqlite($store) => $call,
        }
    };
}

impl Store for AnyStore {
    fn put_vm(&self, row: &VmRow) -> Result<(), StoreError> {
        dispatch!(self, store => store.put_vm(row))
    }

    fn delete_vm(&self, id: &VmId) -> Result<bool, StoreError> {
        dispatch!(self, store => store.delete_vm(id))
    }

    fn get_vm(&self, id: &VmId) -> Result<Option<VmRow>, StoreError> {
        dispatch!(self, store => store.get_vm(id))
    }

    fn list_vms(&self) -> Result<Vec<VmRow>, StoreError> {
        dispatch!(self, store => store.list_vms())
    }

    fn put_snapshot(&self, row: &SnapshotRow) -> Result<(), StoreError> {
        dispatch!(self, store => store.put_snapshot(row))
    }

    fn delete_snapshot(&self, id: &SnapshotId) -> Result<bool, StoreError> {
        dispatch!(self, store => store.delete_snapshot(id))
    }

    fn get_snapshot(&self, id: &SnapshotId) -> Result<Option<SnapshotRow>, StoreError> {
        dispatch!(self, store => store.get_snapshot(id))
    }

    fn list_snapshots(&self) -> Result<Vec<SnapshotRow>, StoreError> {
        dispatch!(self, store => store.list_snapshots())
    }

    fn lease_block(&self, pool: &Ipv4Pool, vm: &VmId) -> Result<Lease, StoreError> {
        dispatch!(self, store => store.lease_block(pool, vm))
    }

    fn release_block(&self, vm: &VmId) -> Result<Option<Lease>, StoreError> {
        dispatch!(self, store => store.release_block(vm))
    }

    fn list_leases(&self) -> Result<Vec<Lease>, StoreError> {
        dispatch!(self, store => store.list_leases())
    }

    fn put_net_objects(&self, vm: &VmId, objects: &[NetObject]) -> Result<(), StoreError> {
        dispatch!(self, store => store.put_net_objects(vm, objects))
    }

    fn delete_net_objects(&self, vm: &VmId) -> Result<bool, StoreError> {
        dispatch!(self, store => store.delete_net_objects(vm))
    }

    fn list_net_objects(&self) -> Result<Vec<NetObjectsRow>, StoreError> {
        dispatch!(self, store => store.list_net_objects())
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        dispatch!(self, store => store.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_reads_lowercase_names_and_defaults_to_sqlite() {
        let kind = |s: &str| serde_json::from_str::<StoreKind>(s);
        assert_eq!(kind("\"memory\"").unwrap(), StoreKind::Memory);
        assert_eq!(kind("\"sqlite\"").unwrap(), StoreKind::Sqlite);
        assert!(kind("\"Sqlite\"").is_err());
        assert!(kind("\"postgres\"").is_err());
        assert_eq!(StoreKind::default(), StoreKind::Sqlite);
        assert_eq!(
            serde_json::to_string(&StoreKind::Memory).unwrap(),
            "\"memory\""
        );
    }

    #[test]
    fn sqlite_kind_opens_state_db_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let store = AnyStore::open(StoreKind::Sqlite, &data_dir).unwrap();
        assert_eq!(store.kind(), StoreKind::Sqlite);
        let stats = store.stats().unwrap();
        assert_eq!(stats.backend, "sqlite");
        assert_eq!(stats.path, Some(data_dir.join("state.db")));
        assert!(data_dir.join("state.db").is_file());
    }

    #[test]
    fn memory_kind_touches_no_files() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let store = AnyStore::open(StoreKind::Memory, &data_dir).unwrap();
        assert_eq!(store.kind(), StoreKind::Memory);
        assert_eq!(store.stats().unwrap().backend, "memory");
        assert!(!data_dir.exists());
    }

    mod memory {
        use super::*;
        crate::conformance::conformance_tests!(
            || {
                let store = AnyStore::open(StoreKind::Memory, Path::new("/nonexistent")).unwrap();
                (store, ())
            },
            cases = 64,
            restart = None
        );
    }

    mod sqlite {
        use super::*;
        crate::conformance::conformance_tests!(
            || {
                let dir = tempfile::tempdir().unwrap();
                let store = AnyStore::open(StoreKind::Sqlite, dir.path()).unwrap();
                (store, dir)
            },
            cases = 16,
            restart = None
        );
    }
}
