//! Slots made ahead of need, so that a VM's network setup is a lookup plus
//! the VM's own part: two addresses, its mode's route and, if it asked for
//! them, its allowlist and port forwards.
//!
//! Ready slots are not in the store: they belong to no VM yet. A daemon that
//! dies with slots ready leaves them for start-up reconciliation, which
//! removes every object of ours that no record owns (`crate::reconcile`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tfc_core::net::{NetConfig, NetMode};
use tfc_core::VmId;
use tfc_store::Store;

use crate::host::HostNet;
use crate::slot::{Recorder, SetupError, Slot, TeardownError, VmNetwork};

/// Ready slots of one host.
///
/// Invariant: every slot in `ready` is complete (every step of
/// [`Slot::create`] done) and held by no VM; a slot leaves `ready` exactly
/// once, to a VM or to its destruction.
#[derive(Debug)]
pub struct SlotPool {
    host: Arc<HostNet>,
    ready: Mutex<VecDeque<Slot>>,
    target: usize,
}

impl SlotPool {
    /// A pool that [`SlotPool::fill`] keeps at `target` ready slots.
    pub fn new(host: Arc<HostNet>, target: usize) -> Self {
        Self {
            host,
            ready: Mutex::new(VecDeque::new()),
            target,
        }
    }

    pub fn host(&self) -> &Arc<HostNet> {
        &self.host
    }

    /// Ready slots now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Slot>> {
        // Each critical section is one push or pop: a panic elsewhere leaves
        // the queue whole.
        self.ready.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes slots until `target` are ready; returns how many it made. Blocks
    /// for each slot's setup (the ruleset load dominates): call it off the
    /// request path. Stops at the first failure, keeping what it made.
    pub fn fill(&self) -> Result<usize, SetupError> {
        let mut made = 0;
        while self.fill_one()? {
            made += 1;
        }
        Ok(made)
    }

    /// Makes one slot if fewer than `target` are ready; `false` if none was
    /// needed.
    pub fn fill_one(&self) -> Result<bool, SetupError> {
        if self.len() >= self.target {
            return Ok(false);
        }
        let slot = Slot::create(&self.host)?;
        self.lock().push_back(slot);
        Ok(true)
    }

    /// Gives `vm` a network as `config` asks: leases its address, takes a
    /// ready slot (or makes one, recorded under the VM, when none is ready),
    /// records the VM's objects and configures its part. A VM has at most
    /// one network at a time ([`SetupError::AlreadyAttached`]). On failure
    /// nothing is left: the slot is destroyed and the lease released; only if
    /// the destruction fails too ([`SetupError::Leaked`]) do the record, the
    /// lease and the VM's claim stay, for reconciliation (the leftovers may
    /// still hold the address).
    pub fn acquire(
        &self,
        vm: &VmId,
        config: &NetConfig,
        store: &dyn Store,
    ) -> Result<VmNetwork, SetupError> {
        config.validate()?;
        match config.mode {
            NetMode::None => return Err(SetupError::NoNetwork),
            NetMode::Nat if self.host.config().uplink.is_none() => {
                return Err(SetupError::NoUplink)
            }
            NetMode::Isolated | NetMode::Nat => {}
        }
        if !self.host.claim_vm(vm) {
            return Err(SetupError::AlreadyAttached { vm: vm.clone() });
        }
        let attached = store
            .lease_block(&self.host.config().pool, vm)
            .map_err(|source| SetupError::Lease {
                vm: vm.clone(),
                source: Box::new(source),
            })
            .and_then(|lease| {
                let pooled = self.lock().pop_front();
                let attached = match pooled {
                    Some(slot) => slot.attach(&self.host, store, lease, config),
                    None => Slot::create_recorded(&self.host, Recorder::Vm { vm, store })
                        .and_then(|slot| slot.attach(&self.host, store, lease, config)),
                };
                if matches!(&attached, Err(err) if !matches!(err, SetupError::Leaked { .. })) {
                    if let Err(err) = store.release_block(vm) {
                        tracing::error!(vm = %vm, error = %tfc_core::error_chain(&err),
                            "cannot release the lease of a network that failed to set up");
                    }
                }
                attached
            });
        if matches!(&attached, Err(err) if !matches!(err, SetupError::Leaked { .. })) {
            self.host.release_vm(vm);
        }
        attached
    }

    /// Removes every ready slot. Tries them all; returns the first failure.
    pub fn drain(&self) -> Result<(), TeardownError> {
        let slots: Vec<Slot> = self.lock().drain(..).collect();
        let mut first = Ok(());
        for slot in slots {
            let result = slot.destroy(&self.host);
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}
