//! Address leases and network-object records in SQLite.
//!
//! The allocator's state is three things (see [`tfc_core::net::alloc`]): the
//! leases (`net_leases`), the released blocks in release order
//! (`net_released`) and the lowest never-used block (`meta.net_next_fresh`),
//! in the pool `meta.net_pool`. A lease reads the two facts the reuse rule
//! needs and lets [`pick`] decide, all in one IMMEDIATE transaction: the
//! write lock is held from the first read, so concurrent leases are
//! serialised and never see the same free block.
//!
//! Durability: like VM records, these describe things that die with the host
//! (namespaces under `/run`, links, nftables tables), so they survive the
//! daemon's crash but need not wait for the disk
//! ([`Durability::ProcessCrash`]).

use rusqlite::{params, OptionalExtension, Transaction};
use tfc_core::net::alloc::pick;
use tfc_core::net::{AllocError, Ipv4Pool, Lease, NetObject, Pick};
use tfc_core::VmId;

use super::{Durability, SqliteStore, TxError};
use crate::error::StoreError;
use crate::schema::{META_NET_NEXT_FRESH, META_NET_POOL};
use crate::store::NetObjectsRow;

fn decode(table: &'static str, key: &str, column: &'static str, value: String) -> StoreError {
    StoreError::Decode {
        table,
        key: key.to_owned(),
        column,
        value,
    }
}

/// The pool the leases are in; `None` before the first lease.
fn recorded_pool(tx: &Transaction<'_>) -> Result<Option<Ipv4Pool>, TxError> {
    let value: Option<String> = tx
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([META_NET_POOL], |row| row.get(0))
        .optional()?;
    let Some(value) = value else {
        return Ok(None);
    };
    let pool = value
        .parse()
        .map_err(|_| decode("meta", META_NET_POOL, "value", value.clone()))?;
    Ok(Some(pool))
}

fn next_fresh(tx: &Transaction<'_>) -> Result<u32, TxError> {
    let value: Option<i64> = tx
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([META_NET_NEXT_FRESH], |row| row.get(0))
        .optional()?;
    let value = value.unwrap_or(0);
    Ok(u32::try_from(value)
        .map_err(|_| decode("meta", META_NET_NEXT_FRESH, "value", value.to_string()))?)
}

fn set_meta(tx: &Transaction<'_>, key: &str, value: &dyn rusqlite::ToSql) -> Result<(), TxError> {
    tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

fn count_leases(tx: &Transaction<'_>) -> Result<usize, TxError> {
    let n: i64 = tx.query_row("SELECT count(*) FROM net_leases", [], |row| row.get(0))?;
    Ok(n as usize)
}

/// The lease of block `index` (as stored) of `pool` to `vm`.
fn lease_of(pool: &Ipv4Pool, vm: &VmId, index: i64) -> Result<Lease, StoreError> {
    let block = u32::try_from(index)
        .ok()
        .and_then(|i| pool.block(i))
        .ok_or_else(|| decode("net_leases", vm.as_str(), "block", index.to_string()))?;
    Ok(Lease {
        vm: vm.clone(),
        block,
    })
}

fn held_block(tx: &Transaction<'_>, vm: &VmId) -> Result<Option<i64>, TxError> {
    Ok(tx
        .prepare_cached("SELECT block FROM net_leases WHERE vm_id = ?1")?
        .query_row([vm.as_str()], |row| row.get(0))
        .optional()?)
}

pub(super) fn lease_block(
    store: &SqliteStore,
    pool: &Ipv4Pool,
    vm: &VmId,
) -> Result<Lease, StoreError> {
    let refused = |source| StoreError::Lease {
        vm: vm.clone(),
        source,
    };
    store.transact("lease an address block", Durability::ProcessCrash, |tx| {
        let mut changed = false;
        let recorded = recorded_pool(tx)?;
        if recorded != Some(*pool) {
            let leases = count_leases(tx)?;
            match recorded {
                Some(recorded) if leases > 0 => {
                    return Err(refused(AllocError::PoolChanged {
                        recorded,
                        configured: *pool,
                        leases,
                    })
                    .into());
                }
                None if leases > 0 => {
                    return Err(decode("meta", META_NET_POOL, "value", "(missing)".into()).into())
                }
                // Nothing is leased: the released blocks' order belongs to
                // the old pool, which is forgotten, as the allocator does.
                _ => {}
            }
            tx.execute("DELETE FROM net_released", [])?;
            set_meta(tx, META_NET_POOL, &pool.to_string())?;
            set_meta(tx, META_NET_NEXT_FRESH, &0)?;
            changed = true;
        }
        if let Some(index) = held_block(tx, vm)? {
            return Ok((lease_of(pool, vm, index)?, changed));
        }
        let fresh = next_fresh(tx)?;
        let oldest: Option<i64> = tx
            .prepare_cached("SELECT block FROM net_released ORDER BY seq LIMIT 1")?
            .query_row([], |row| row.get(0))
            .optional()?;
        let oldest = oldest
            .map(|b| {
                u32::try_from(b)
                    .map_err(|_| decode("net_released", &b.to_string(), "block", b.to_string()))
            })
            .transpose()?;
        let capacity = pool.capacity();
        let chosen = pick(capacity, fresh, oldest).ok_or_else(|| {
            refused(AllocError::Exhausted {
                pool: *pool,
                capacity,
            })
        })?;
        match chosen {
            Pick::Fresh(index) => set_meta(tx, META_NET_NEXT_FRESH, &(index + 1))?,
            Pick::Released(index) => {
                tx.prepare_cached("DELETE FROM net_released WHERE block = ?1")?
                    .execute([index])?;
            }
        }
        let index = i64::from(chosen.index());
        tx.prepare_cached(
            "INSERT INTO net_leases (block, vm_id, leased_at_ms) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![index, vm.as_str(), crate::store::now_ms()])?;
        Ok((lease_of(pool, vm, index)?, true))
    })
}

pub(super) fn release_block(store: &SqliteStore, vm: &VmId) -> Result<Option<Lease>, StoreError> {
    store.transact("release an address block", Durability::ProcessCrash, |tx| {
        let Some(index) = held_block(tx, vm)? else {
            return Ok((None, false));
        };
        let pool = recorded_pool(tx)?
            .ok_or_else(|| decode("meta", META_NET_POOL, "value", "(missing)".into()))?;
        let lease = lease_of(&pool, vm, index)?;
        tx.prepare_cached("DELETE FROM net_leases WHERE vm_id = ?1")?
            .execute([vm.as_str()])?;
        tx.prepare_cached(
            "INSERT INTO net_released (seq, block)
                 VALUES ((SELECT coalesce(max(seq), 0) + 1 FROM net_released), ?1)",
        )?
        .execute([index])?;
        Ok((Some(lease), true))
    })
}

pub(super) fn list_leases(store: &SqliteStore) -> Result<Vec<Lease>, StoreError> {
    // Read-only; a transaction keeps the pool and the rows consistent.
    store.transact("list address leases", Durability::ProcessCrash, |tx| {
        let Some(pool) = recorded_pool(tx)? else {
            return Ok((Vec::new(), false));
        };
        let raws = tx
            .prepare_cached("SELECT block, vm_id FROM net_leases ORDER BY block")?
            .query_map([], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut leases = Vec::with_capacity(raws.len());
        for (index, vm) in raws {
            let vm = VmId::new(vm.as_str())
                .map_err(|_| decode("net_leases", &vm, "vm_id", vm.clone()))?;
            leases.push(lease_of(&pool, &vm, index)?);
        }
        Ok((leases, false))
    })
}

pub(super) fn put_net_objects(
    store: &SqliteStore,
    vm: &VmId,
    objects: &[NetObject],
) -> Result<(), StoreError> {
    store.transact(
        "record a VM's network objects",
        Durability::ProcessCrash,
        |tx| {
            let deleted = tx
                .prepare_cached("DELETE FROM net_objects WHERE vm_id = ?1")?
                .execute([vm.as_str()])?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO net_objects (vm_id, seq, kind, name, namespace)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (seq, object) in objects.iter().enumerate() {
                insert.execute(params![
                    vm.as_str(),
                    seq as i64,
                    object.kind(),
                    object.name(),
                    object.namespace()
                ])?;
            }
            Ok(((), deleted > 0 || !objects.is_empty()))
        },
    )
}

pub(super) fn list_net_objects(store: &SqliteStore) -> Result<Vec<NetObjectsRow>, StoreError> {
    type Raw = (String, String, String, Option<String>);
    store.transact("list network objects", Durability::ProcessCrash, |tx| {
        let raws: Vec<Raw> = tx
            .prepare_cached(
                "SELECT vm_id, kind, name, namespace FROM net_objects ORDER BY vm_id, seq",
            )?
            .query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut rows: Vec<NetObjectsRow> = Vec::new();
        for (vm, kind, name, namespace) in raws {
            let object = NetObject::from_parts(&kind, name, namespace)
                .map_err(|_| decode("net_objects", &vm, "kind", kind.clone()))?;
            match rows.last_mut() {
                Some(row) if row.vm.as_str() == vm => row.objects.push(object),
                _ => {
                    let id = VmId::new(vm.as_str())
                        .map_err(|_| decode("net_objects", &vm, "vm_id", vm.clone()))?;
                    rows.push(NetObjectsRow {
                        vm: id,
                        objects: vec![object],
                    });
                }
            }
        }
        Ok((rows, false))
    })
}
