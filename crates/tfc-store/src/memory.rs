//! [`MemoryStore`]: the store for tests and `storage = "memory"`. Nothing survives
//! the process; everything else behaves as the SQLite store does.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tfc_core::net::{AddressAllocator, Ipv4Pool, Lease, NetObject};
use tfc_core::{SnapshotId, VmId};

use crate::error::StoreError;
use crate::schema::SCHEMA_VERSION;
use crate::store::{now_ms, NetObjectsRow, SnapshotRow, Store, StoreStats, VmRow};

#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    vms: BTreeMap<VmId, VmRow>,
    snapshots: BTreeMap<SnapshotId, SnapshotRow>,
    /// `None` until the first lease names a pool.
    addresses: Option<AddressAllocator>,
    /// Never holds an empty list: putting one removes the entry.
    net_objects: BTreeMap<VmId, Vec<NetObject>>,
    last_write_ms: Option<u64>,
}

impl Inner {
    fn wrote(&mut self) {
        let now = now_ms();
        self.last_write_ms = Some(self.last_write_ms.map_or(now, |last| last.max(now)));
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section below completes its one map operation or makes
        // none, so a panic elsewhere while the lock was held leaves the map valid.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn put_vm(&self, row: &VmRow) -> Result<(), StoreError> {
        row.check()?;
        let mut inner = self.lock();
        inner.vms.insert(row.id.clone(), row.clone());
        inner.wrote();
        Ok(())
    }

    fn delete_vm(&self, id: &VmId) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let existed = inner.vms.remove(id).is_some();
        if existed {
            inner.wrote();
        }
        Ok(existed)
    }

    fn get_vm(&self, id: &VmId) -> Result<Option<VmRow>, StoreError> {
        Ok(self.lock().vms.get(id).cloned())
    }

    fn list_vms(&self) -> Result<Vec<VmRow>, StoreError> {
        Ok(self.lock().vms.values().cloned().collect())
    }

    fn put_snapshot(&self, row: &SnapshotRow) -> Result<(), StoreError> {
        row.check()?;
        let mut inner = self.lock();
        inner.snapshots.insert(row.id.clone(), row.clone());
        inner.wrote();
        Ok(())
    }

    fn delete_snapshot(&self, id: &SnapshotId) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let existed = inner.snapshots.remove(id).is_some();
        if existed {
            inner.wrote();
        }
        Ok(existed)
    }

    fn get_snapshot(&self, id: &SnapshotId) -> Result<Option<SnapshotRow>, StoreError> {
        Ok(self.lock().snapshots.get(id).cloned())
    }

    fn list_snapshots(&self) -> Result<Vec<SnapshotRow>, StoreError> {
        Ok(self.lock().snapshots.values().cloned().collect())
    }

    fn lease_block(&self, pool: &Ipv4Pool, vm: &VmId) -> Result<Lease, StoreError> {
        let mut inner = self.lock();
        let refused = |source| StoreError::Lease {
            vm: vm.clone(),
            source,
        };
        let addresses = inner
            .addresses
            .get_or_insert_with(|| AddressAllocator::new(*pool));
        addresses.set_pool(*pool).map_err(refused)?;
        if let Some(held) = addresses.get(vm) {
            return Ok(held);
        }
        let lease = addresses.lease(vm).map_err(refused)?;
        inner.wrote();
        Ok(lease)
    }

    fn release_block(&self, vm: &VmId) -> Result<Option<Lease>, StoreError> {
        let mut inner = self.lock();
        let released = inner.addresses.as_mut().and_then(|a| a.release(vm));
        if released.is_some() {
            inner.wrote();
        }
        Ok(released)
    }

    fn list_leases(&self) -> Result<Vec<Lease>, StoreError> {
        Ok(self
            .lock()
            .addresses
            .as_ref()
            .map(AddressAllocator::leases)
            .unwrap_or_default())
    }

    fn put_net_objects(&self, vm: &VmId, objects: &[NetObject]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let changed = if objects.is_empty() {
            inner.net_objects.remove(vm).is_some()
        } else {
            inner.net_objects.insert(vm.clone(), objects.to_vec());
            true
        };
        if changed {
            inner.wrote();
        }
        Ok(())
    }

    fn delete_net_objects(&self, vm: &VmId) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let existed = inner.net_objects.remove(vm).is_some();
        if existed {
            inner.wrote();
        }
        Ok(existed)
    }

    fn list_net_objects(&self) -> Result<Vec<NetObjectsRow>, StoreError> {
        Ok(self
            .lock()
            .net_objects
            .iter()
            .map(|(vm, objects)| NetObjectsRow {
                vm: vm.clone(),
                objects: objects.clone(),
            })
            .collect())
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        let inner = self.lock();
        let (leases, released) = inner.addresses.as_ref().map_or((0, 0), |a| {
            (a.leases().len() as u64, a.released().len() as u64)
        });
        let objects: usize = inner.net_objects.values().map(Vec::len).sum();
        Ok(StoreStats {
            backend: "memory",
            path: None,
            // The order of `schema::TABLES`, as the SQLite store reports them.
            rows: vec![
                ("vms".to_owned(), inner.vms.len() as u64),
                ("snapshots".to_owned(), inner.snapshots.len() as u64),
                ("net_leases".to_owned(), leases),
                ("net_released".to_owned(), released),
                ("net_objects".to_owned(), objects as u64),
            ],
            size_bytes: None,
            last_write_ms: inner.last_write_ms,
            schema_version: SCHEMA_VERSION,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::conformance::conformance_tests!(
        || (MemoryStore::new(), ()),
        cases = 256,
        restart = None
    );
}
