//! The address allocator: leases the pool's blocks to VMs by VM id.
//!
//! Reuse rule ([`pick`]), the same in every store: a lease takes the lowest
//! block never handed out; only when every block has been handed out once does
//! it take a released block, the one released longest ago. A block a VM has
//! just given back is thus the last one reused, which gives late packets for
//! the old VM (a peer's retransmissions, conntrack entries, ARP caches) the
//! longest time to die out before another VM holds its address. Fresh blocks
//! are taken in order, so the never-used blocks are always the pool's tail:
//! the whole state is the leases, the released blocks in release order and
//! one high-water mark.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use crate::id::VmId;
use crate::net::addr::{Block, Ipv4Pool};

/// Why a lease was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error(
        "address pool {pool} is exhausted: all {capacity} blocks are leased; delete VMs \
         with networking, or configure a larger pool"
    )]
    Exhausted { pool: Ipv4Pool, capacity: u32 },
    #[error(
        "the address pool changed from {recorded} to {configured} while {leases} VMs hold \
         leases in it: delete those VMs first, or set the pool back to {recorded}"
    )]
    PoolChanged {
        recorded: Ipv4Pool,
        configured: Ipv4Pool,
        leases: usize,
    },
}

/// Where a lease's block came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// A block never handed out before.
    Fresh(u32),
    /// The block released longest ago.
    Released(u32),
}

impl Pick {
    pub fn index(self) -> u32 {
        match self {
            Pick::Fresh(i) | Pick::Released(i) => i,
        }
    }
}

/// The reuse rule (see the module docs), given the pool's `capacity`, the
/// lowest never-used block `next_fresh` and the block released longest ago.
/// `None`: nothing is free.
pub fn pick(capacity: u32, next_fresh: u32, oldest_released: Option<u32>) -> Option<Pick> {
    if next_fresh < capacity {
        Some(Pick::Fresh(next_fresh))
    } else {
        oldest_released.map(Pick::Released)
    }
}

/// A block leased to a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub vm: VmId,
    pub block: Block,
}

/// Leases of one pool's blocks.
///
/// Invariants, checked by [`AddressAllocator::check`] after every step of the
/// property test:
/// - `by_vm` and `by_block` are each other's inverse: a VM holds at most one
///   block and a block has at most one holder.
/// - every block below `next_fresh` is either leased (in `by_block`) or
///   released (in `released`, exactly once), never both, never neither;
/// - no block at or above `next_fresh` is leased or released;
/// - `next_fresh <= pool.capacity()`.
///
/// Hence leased + free = capacity at all times: no block is handed out twice
/// and none is lost.
#[derive(Debug, Clone)]
pub struct AddressAllocator {
    pool: Ipv4Pool,
    by_vm: BTreeMap<VmId, u32>,
    by_block: BTreeMap<u32, VmId>,
    /// Released blocks, the longest-released first.
    released: VecDeque<u32>,
    next_fresh: u32,
}

impl AddressAllocator {
    /// An allocator with nothing leased.
    pub fn new(pool: Ipv4Pool) -> Self {
        Self {
            pool,
            by_vm: BTreeMap::new(),
            by_block: BTreeMap::new(),
            released: VecDeque::new(),
            next_fresh: 0,
        }
    }

    pub fn pool(&self) -> Ipv4Pool {
        self.pool
    }

    /// Moves to `pool`. Allowed while nothing is leased (the released blocks'
    /// order is forgotten: they belong to the old pool); a different pool with
    /// leases outstanding is refused, since those VMs keep their addresses.
    pub fn set_pool(&mut self, pool: Ipv4Pool) -> Result<(), AllocError> {
        if pool == self.pool {
            return Ok(());
        }
        if !self.by_vm.is_empty() {
            return Err(AllocError::PoolChanged {
                recorded: self.pool,
                configured: pool,
                leases: self.by_vm.len(),
            });
        }
        *self = Self::new(pool);
        Ok(())
    }

    /// The VM's block: the one it holds already, else a new one by [`pick`].
    /// Leasing again is therefore harmless (a retried setup gets the same block).
    pub fn lease(&mut self, vm: &VmId) -> Result<Lease, AllocError> {
        if let Some(lease) = self.get(vm) {
            return Ok(lease);
        }
        let capacity = self.pool.capacity();
        let chosen = pick(capacity, self.next_fresh, self.released.front().copied()).ok_or(
            AllocError::Exhausted {
                pool: self.pool,
                capacity,
            },
        )?;
        match chosen {
            Pick::Fresh(_) => self.next_fresh += 1,
            Pick::Released(_) => {
                self.released.pop_front();
            }
        }
        let index = chosen.index();
        self.by_vm.insert(vm.clone(), index);
        self.by_block.insert(index, vm.clone());
        Ok(self.lease_of(vm.clone(), index))
    }

    /// Gives the VM's block back; `None` if it held none.
    pub fn release(&mut self, vm: &VmId) -> Option<Lease> {
        let index = self.by_vm.remove(vm)?;
        self.by_block.remove(&index);
        self.released.push_back(index);
        Some(self.lease_of(vm.clone(), index))
    }

    /// The VM's lease, if it holds one.
    pub fn get(&self, vm: &VmId) -> Option<Lease> {
        let index = *self.by_vm.get(vm)?;
        Some(self.lease_of(vm.clone(), index))
    }

    /// Every lease, by block.
    pub fn leases(&self) -> Vec<Lease> {
        self.by_block
            .iter()
            .map(|(index, vm)| self.lease_of(vm.clone(), *index))
            .collect()
    }

    /// Released blocks waiting to be reused, the one released longest ago first.
    pub fn released(&self) -> Vec<Block> {
        self.released
            .iter()
            .map(|index| {
                self.pool
                    .block(*index)
                    .expect("invariant: every released index lies below next_fresh <= capacity")
            })
            .collect()
    }

    /// Blocks a lease could take now.
    pub fn free(&self) -> u32 {
        self.pool.capacity() - self.by_block.len() as u32
    }

    fn lease_of(&self, vm: VmId, index: u32) -> Lease {
        let block = self
            .pool
            .block(index)
            .expect("invariant: every leased index lies below next_fresh <= capacity");
        Lease { vm, block }
    }

    /// Checks the invariants in the type's docs; `Err` names the first broken one.
    pub fn check(&self) -> Result<(), String> {
        let capacity = self.pool.capacity();
        if self.next_fresh > capacity {
            return Err(format!(
                "next_fresh {} > capacity {capacity}",
                self.next_fresh
            ));
        }
        if self.by_vm.len() != self.by_block.len() {
            return Err("by_vm and by_block differ in size".into());
        }
        for (vm, index) in &self.by_vm {
            if self.by_block.get(index) != Some(vm) {
                return Err(format!("{vm} holds block {index}, which does not name it"));
            }
        }
        let mut seen = vec![false; self.next_fresh as usize];
        for index in self.by_block.keys().chain(&self.released) {
            let slot = seen
                .get_mut(*index as usize)
                .ok_or_else(|| format!("block {index} is in use but was never handed out"))?;
            if *slot {
                return Err(format!(
                    "block {index} is both leased and released, or twice"
                ));
            }
            *slot = true;
        }
        if let Some(lost) = seen.iter().position(|s| !s) {
            return Err(format!("block {lost} was handed out and is now lost"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn vm(s: &str) -> VmId {
        VmId::new(s).unwrap()
    }

    fn pool(s: &str) -> Ipv4Pool {
        s.parse().unwrap()
    }

    fn index(alloc: &mut AddressAllocator, id: &str) -> u32 {
        alloc.lease(&vm(id)).unwrap().block.index()
    }

    #[test]
    fn fresh_blocks_go_lowest_first() {
        let mut alloc = AddressAllocator::new(pool("10.200.0.0/16"));
        let a = alloc.lease(&vm("a")).unwrap();
        assert_eq!(a.block.to_string(), "10.200.0.0/30");
        assert_eq!(index(&mut alloc, "b"), 1);
        assert_eq!(index(&mut alloc, "c"), 2);
        assert_eq!(alloc.free(), 16384 - 3);
    }

    #[test]
    fn leasing_twice_returns_the_same_block() {
        let mut alloc = AddressAllocator::new(pool("10.200.0.0/16"));
        let first = alloc.lease(&vm("a")).unwrap();
        assert_eq!(alloc.lease(&vm("a")).unwrap(), first);
        assert_eq!(alloc.leases(), vec![first]);
    }

    #[test]
    fn released_blocks_wait_while_fresh_ones_remain() {
        let mut alloc = AddressAllocator::new(pool("192.0.2.0/28"));
        assert_eq!(index(&mut alloc, "a"), 0);
        assert_eq!(index(&mut alloc, "b"), 1);
        assert_eq!(alloc.release(&vm("a")).unwrap().block.index(), 0);
        // Block 0 is free, but fresh blocks come first.
        assert_eq!(index(&mut alloc, "c"), 2);
        assert_eq!(index(&mut alloc, "d"), 3);
        // The pool is used up: now released blocks come back, oldest release first.
        alloc.release(&vm("d")).unwrap();
        assert_eq!(index(&mut alloc, "e"), 0);
        assert_eq!(index(&mut alloc, "f"), 3);
    }

    #[test]
    fn exhaustion_is_an_error_that_says_what_to_do() {
        let mut alloc = AddressAllocator::new(pool("192.0.2.0/29"));
        index(&mut alloc, "a");
        index(&mut alloc, "b");
        let err = alloc.lease(&vm("c")).unwrap_err();
        assert_eq!(
            err,
            AllocError::Exhausted {
                pool: pool("192.0.2.0/29"),
                capacity: 2
            }
        );
        assert!(err.to_string().contains("configure a larger pool"));
        // Refused leases change nothing; a release makes room.
        assert_eq!(alloc.free(), 0);
        alloc.release(&vm("a"));
        assert_eq!(index(&mut alloc, "c"), 0);
    }

    #[test]
    fn release_of_an_unknown_vm_is_none() {
        let mut alloc = AddressAllocator::new(pool("192.0.2.0/29"));
        assert_eq!(alloc.release(&vm("ghost")), None);
        index(&mut alloc, "a");
        assert!(alloc.release(&vm("a")).is_some());
        assert_eq!(alloc.release(&vm("a")), None);
        alloc.check().unwrap();
    }

    #[test]
    fn the_pool_changes_only_while_nothing_is_leased() {
        let mut alloc = AddressAllocator::new(pool("10.200.0.0/16"));
        index(&mut alloc, "a");
        let err = alloc.set_pool(pool("10.201.0.0/16")).unwrap_err();
        assert!(matches!(err, AllocError::PoolChanged { leases: 1, .. }));
        assert!(err
            .to_string()
            .contains("set the pool back to 10.200.0.0/16"));
        alloc.set_pool(pool("10.200.0.0/16")).unwrap();
        alloc.release(&vm("a"));
        alloc.set_pool(pool("10.201.0.0/16")).unwrap();
        let lease = alloc.lease(&vm("b")).unwrap();
        assert_eq!(lease.block.to_string(), "10.201.0.0/30");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Lease(usize),
        Release(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            3 => (0..12usize).prop_map(Op::Lease),
            2 => (0..12usize).prop_map(Op::Release),
        ];
        proptest::collection::vec(op, 0..200)
    }

    proptest! {
        /// Random lease/release sequences on a pool smaller than the VMs that want
        /// it: no block is ever held by two VMs, none is lost, exhaustion happens
        /// exactly when every block is leased, and fresh blocks go before
        /// released ones.
        #[test]
        fn never_twice_never_lost(ops in ops()) {
            let pool = pool("192.0.2.0/27"); // 8 blocks for 12 VMs
            let mut alloc = AddressAllocator::new(pool);
            let mut held: BTreeMap<usize, u32> = BTreeMap::new();
            let mut ever_used: BTreeSet<u32> = BTreeSet::new();
            let mut released: VecDeque<u32> = VecDeque::new();
            for op in ops {
                match op {
                    Op::Lease(n) => {
                        let id = vm(&format!("vm-{n}"));
                        match alloc.lease(&id) {
                            Ok(lease) => {
                                let index = lease.block.index();
                                if let Some(before) = held.get(&n) {
                                    prop_assert_eq!(*before, index, "a lease moved");
                                } else {
                                    prop_assert!(
                                        !held.values().any(|i| *i == index),
                                        "block {} handed out twice", index
                                    );
                                    let fresh_left = (ever_used.len() as u32) < pool.capacity();
                                    prop_assert_eq!(
                                        !ever_used.contains(&index),
                                        fresh_left,
                                        "a released block was reused while fresh ones remained"
                                    );
                                    if fresh_left {
                                        prop_assert_eq!(index, ever_used.len() as u32, "not the lowest fresh block");
                                    } else {
                                        prop_assert_eq!(Some(index), released.pop_front(), "not the longest-released block");
                                    }
                                    held.insert(n, index);
                                    ever_used.insert(index);
                                }
                            }
                            Err(AllocError::Exhausted { .. }) => {
                                prop_assert_eq!(held.len() as u32, pool.capacity());
                                prop_assert!(!held.contains_key(&n));
                            }
                            Err(other) => prop_assert!(false, "{}", other),
                        }
                    }
                    Op::Release(n) => {
                        let expected = held.remove(&n);
                        prop_assert_eq!(alloc.release(&vm(&format!("vm-{n}"))).map(|l| l.block.index()), expected);
                        released.extend(expected);
                    }
                }
                prop_assert_eq!(alloc.check(), Ok(()));
                prop_assert_eq!(alloc.free() + held.len() as u32, pool.capacity());
                let leased: Vec<u32> = alloc.leases().iter().map(|l| l.block.index()).collect();
                let mut expected: Vec<u32> = held.values().copied().collect();
                expected.sort_unstable();
                prop_assert_eq!(leased, expected);
            }
        }
    }
}
