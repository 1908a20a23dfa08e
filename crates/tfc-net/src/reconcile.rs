//! Start-up reconciliation: after a crash, remove every network object and
//! lease that no live VM owns.
//!
//! Two sources, because a crash can come at any point:
//! - the store's records: every object made for a VM was recorded under its
//!   id before it was made, so the records of VMs that are not live name
//!   everything those VMs may have left;
//! - our names: ready slots of the pool are recorded nowhere, and an object
//!   could in principle outlive its record. Every namespace, host link and
//!   host nftables table named `<prefix>-<hex>` that no live VM's record
//!   names is removed too (taps live inside namespaces and go with them).
//!
//! Run it before the slot pool fills: a ready slot is, by design, owned by
//! no record, and the name scan would remove it.

use std::collections::HashSet;

use tfc_core::net::{Lease, NetObject};
use tfc_core::VmId;
use tfc_store::{Store, StoreError};

use crate::host::{HostError, HostNet};
use crate::netns::{Netns, NetnsError};
use crate::nft;
use crate::slot::remove_objects;

/// Why reconciliation could not even start: it could not read what there is.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot read the network records")]
    ReadRecords(#[source] StoreError),
    #[error("cannot read the address leases")]
    ReadLeases(#[source] StoreError),
    #[error("cannot list what exists on the host")]
    ListHost(#[source] HostError),
    #[error("cannot list the network namespaces")]
    ListNamespaces(#[source] NetnsError),
}

/// What reconciliation did. Failures are kept for the next start (records
/// and leases of what could not be removed stay in the store).
#[derive(Debug, Default)]
pub struct ReconcileReport {
    /// VMs whose recorded objects were removed and record forgotten.
    pub torn_down: Vec<VmId>,
    /// Leases released, of VMs not live.
    pub released: Vec<Lease>,
    /// Objects of ours that no record owned, removed.
    pub unowned: Vec<NetObject>,
    /// What could not be removed or forgotten, one line each.
    pub failures: Vec<String>,
}

/// Removes the objects and leases of VMs for which `live` says no, and every
/// object named with our prefix that no live VM's record owns.
pub fn reconcile(
    host: &HostNet,
    store: &dyn Store,
    live: &dyn Fn(&VmId) -> bool,
) -> Result<ReconcileReport, ReconcileError> {
    let mut report = ReconcileReport::default();
    // Objects the name scan must leave alone: live VMs', and those of
    // records that could not be torn down (their failure is reported once).
    let mut keep: HashSet<NetObject> = HashSet::new();
    let mut kept_vms: HashSet<VmId> = HashSet::new();

    for row in store
        .list_net_objects()
        .map_err(ReconcileError::ReadRecords)?
    {
        if live(&row.vm) {
            keep.extend(row.objects);
            kept_vms.insert(row.vm);
            continue;
        }
        match remove_objects(host, &row.objects) {
            Ok(()) => match store.delete_net_objects(&row.vm) {
                Ok(_) => report.torn_down.push(row.vm),
                Err(err) => {
                    report.failures.push(format!(
                        "VM {}: cannot forget its network record: {}",
                        row.vm,
                        tfc_core::error_chain(&err)
                    ));
                    kept_vms.insert(row.vm);
                }
            },
            Err(failures) => {
                for (object, err) in failures {
                    report.failures.push(format!(
                        "VM {}: cannot remove {object}: {}",
                        row.vm,
                        tfc_core::error_chain(&err)
                    ));
                }
                keep.extend(row.objects);
                kept_vms.insert(row.vm);
            }
        }
    }

    for lease in store.list_leases().map_err(ReconcileError::ReadLeases)? {
        if live(&lease.vm) || kept_vms.contains(&lease.vm) {
            continue;
        }
        match store.release_block(&lease.vm) {
            Ok(_) => report.released.push(lease),
            Err(err) => report.failures.push(format!(
                "VM {}: cannot release its address lease: {}",
                lease.vm,
                tfc_core::error_chain(&err)
            )),
        }
    }

    let prefix = &host.config().prefix;
    let ours = |name: &str| prefix.slot_of(name).is_some();
    let mut unowned = Vec::new();
    for link in host.links().map_err(ReconcileError::ListHost)? {
        let object = NetObject::Veth { name: link.name };
        if ours(object.name()) && !keep.contains(&object) {
            unowned.push(object);
        }
    }
    for name in host.nft_tables().map_err(ReconcileError::ListHost)? {
        let object = NetObject::NftTable {
            namespace: None,
            name,
        };
        if ours(object.name()) && !keep.contains(&object) {
            unowned.push(object);
        }
    }
    for name in Netns::list().map_err(ReconcileError::ListNamespaces)? {
        let object = NetObject::Namespace { name };
        if ours(object.name()) && !keep.contains(&object) {
            unowned.push(object);
        }
    }
    for object in unowned {
        let removed = match &object {
            NetObject::Veth { name } => host
                .rtnl()
                .delete_link(name)
                .map(drop)
                .map_err(|e| tfc_core::error_chain(&e)),
            NetObject::NftTable { name, .. } => {
                nft::delete_table(host.netns(), name).map_err(|e| tfc_core::error_chain(&e))
            }
            NetObject::Namespace { name } => Netns::delete(name)
                .map(drop)
                .map_err(|e| tfc_core::error_chain(&e)),
            NetObject::Tap { .. } => Ok(()),
        };
        match removed {
            Ok(()) => report.unowned.push(object),
            Err(err) => report
                .failures
                .push(format!("cannot remove unowned {object}: {err}")),
        }
    }
    Ok(report)
}
