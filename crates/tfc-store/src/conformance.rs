//! The behaviour every [`Store`] must have. Each backend's tests call
//! [`conformance_tests!`] with a constructor for a fresh, empty store; the macro
//! expands to one `#[test]` per check below plus a property test against a
//! model of two `BTreeMap`s, one per table.
//!
//! VM rows and snapshot rows obey the same rules; the snapshot checks (`snapshot_*`)
//! mirror the VM checks of the same name. Address leases (`lease_*`) follow
//! [`tfc_core::net::AddressAllocator`], which a second property test uses as
//! their model, and stay unique under concurrent leasing; network-object
//! records (`net_objects_*`) keep each VM's list in order.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tfc_core::net::{AddressAllocator, AllocError, Ipv4Pool, Lease, NetObject};
use tfc_core::{SnapshotId, VmId, VmState};

use crate::error::StoreError;
use crate::schema::{SCHEMA_VERSION, TABLES};
use crate::store::{now_ms, NetObjectsRow, SnapshotRow, Store, VmRow, MAX_TIMESTAMP_MS};

/// Expands to the conformance suite for one backend.
///
/// `make` returns a fresh, empty store and a guard (e.g. its temp dir) that must
/// outlive it. `cases` is the number of property-test cases; `restart`, if given,
/// closes a store and opens it again on the same data, and the property test then
/// also checks that a restart loses nothing.
macro_rules! conformance_tests {
    ($make:expr, cases = $cases:expr, restart = $restart:expr) => {
        mod conformance {
            use super::*;

            fn run(check: fn(&dyn $crate::Store)) {
                let (store, _guard) = ($make)();
                check(&store);
            }

            #[test]
            fn put_then_get() {
                run($crate::conformance::put_then_get)
            }
            #[test]
            fn put_overwrites() {
                run($crate::conformance::put_overwrites)
            }
            #[test]
            fn delete_removes_once() {
                run($crate::conformance::delete_removes_once)
            }
            #[test]
            fn missing_ids() {
                run($crate::conformance::missing_ids)
            }
            #[test]
            fn list_is_ordered_by_id() {
                run($crate::conformance::list_is_ordered_by_id)
            }
            #[test]
            fn every_state_round_trips() {
                run($crate::conformance::every_state_round_trips)
            }
            #[test]
            fn records_round_trip() {
                run($crate::conformance::records_round_trip)
            }
            #[test]
            fn timestamps_in_range_only() {
                run($crate::conformance::timestamps_in_range_only)
            }
            #[test]
            fn stats_count_rows() {
                run($crate::conformance::stats_count_rows)
            }
            #[test]
            fn last_write_advances() {
                run($crate::conformance::last_write_advances)
            }
            #[test]
            fn snapshot_put_then_get() {
                run($crate::conformance::snapshot_put_then_get)
            }
            #[test]
            fn snapshot_put_overwrites() {
                run($crate::conformance::snapshot_put_overwrites)
            }
            #[test]
            fn snapshot_delete_removes_once() {
                run($crate::conformance::snapshot_delete_removes_once)
            }
            #[test]
            fn snapshot_missing_ids() {
                run($crate::conformance::snapshot_missing_ids)
            }
            #[test]
            fn snapshot_list_is_ordered_by_id() {
                run($crate::conformance::snapshot_list_is_ordered_by_id)
            }
            #[test]
            fn snapshot_records_round_trip() {
                run($crate::conformance::snapshot_records_round_trip)
            }
            #[test]
            fn snapshot_timestamps_in_range_only() {
                run($crate::conformance::snapshot_timestamps_in_range_only)
            }
            #[test]
            fn snapshot_last_write_advances() {
                run($crate::conformance::snapshot_last_write_advances)
            }
            #[test]
            fn vms_and_snapshots_are_separate() {
                run($crate::conformance::vms_and_snapshots_are_separate)
            }
            #[test]
            fn lease_fresh_blocks_in_order() {
                run($crate::conformance::lease_fresh_blocks_in_order)
            }
            #[test]
            fn lease_reuses_released_blocks_last() {
                run($crate::conformance::lease_reuses_released_blocks_last)
            }
            #[test]
            fn lease_exhaustion_is_refused() {
                run($crate::conformance::lease_exhaustion_is_refused)
            }
            #[test]
            fn lease_pool_changes_only_when_empty() {
                run($crate::conformance::lease_pool_changes_only_when_empty)
            }
            #[test]
            fn lease_no_double_lease_under_concurrency() {
                run($crate::conformance::lease_no_double_lease_under_concurrency)
            }
            #[test]
            fn net_objects_round_trip() {
                run($crate::conformance::net_objects_round_trip)
            }
            #[test]
            fn net_writes_advance_last_write() {
                run($crate::conformance::net_writes_advance_last_write)
            }
            #[test]
            fn agrees_with_model() {
                $crate::conformance::agrees_with_model($cases, $make, $restart)
            }
            #[test]
            fn leases_agree_with_allocator() {
                $crate::conformance::leases_agree_with_allocator($cases, $make, $restart)
            }
        }
    };
}
pub(crate) use conformance_tests;

fn id(s: &str) -> VmId {
    VmId::new(s).unwrap()
}

fn row(id_: &str, state: VmState, record: &str, updated_at_ms: u64) -> VmRow {
    VmRow {
        id: id(id_),
        state,
        record: record.to_owned(),
        updated_at_ms,
    }
}

fn snap_id(s: &str) -> SnapshotId {
    SnapshotId::new(s).unwrap()
}

fn snapshot(id_: &str, record: &str, updated_at_ms: u64) -> SnapshotRow {
    SnapshotRow {
        id: snap_id(id_),
        record: record.to_owned(),
        updated_at_ms,
    }
}

/// Rows in `table` according to the store's stats.
fn count(store: &dyn Store, table: &str) -> u64 {
    let stats = store.stats().unwrap();
    let counts: BTreeMap<_, _> = stats.rows.iter().cloned().collect();
    counts[table]
}

fn vms_count(store: &dyn Store) -> u64 {
    count(store, "vms")
}

fn snapshots_count(store: &dyn Store) -> u64 {
    count(store, "snapshots")
}

pub(crate) fn put_then_get(store: &dyn Store) {
    let a = row("vm-a", VmState::Creating, r#"{"spec":{"vcpus":2}}"#, 17);
    store.put_vm(&a).unwrap();
    assert_eq!(store.get_vm(&a.id).unwrap(), Some(a.clone()));
    assert_eq!(store.list_vms().unwrap(), vec![a]);
}

pub(crate) fn put_overwrites(store: &dyn Store) {
    let first = row("vm-a", VmState::Creating, "{}", 1);
    let second = row("vm-a", VmState::Running, r#"{"pid":42}"#, 2);
    let other = row("vm-b", VmState::Ready, "{}", 1);
    store.put_vm(&first).unwrap();
    store.put_vm(&other).unwrap();
    store.put_vm(&second).unwrap();
    assert_eq!(store.get_vm(&first.id).unwrap(), Some(second.clone()));
    assert_eq!(store.get_vm(&other.id).unwrap(), Some(other.clone()));
    assert_eq!(store.list_vms().unwrap(), vec![second, other]);
}

pub(crate) fn delete_removes_once(store: &dyn Store) {
    let a = row("vm-a", VmState::Stopped, "{}", 1);
    let b = row("vm-b", VmState::Failed, "{}", 1);
    store.put_vm(&a).unwrap();
    store.put_vm(&b).unwrap();
    assert!(store.delete_vm(&a.id).unwrap());
    assert!(!store.delete_vm(&a.id).unwrap());
    assert_eq!(store.get_vm(&a.id).unwrap(), None);
    assert_eq!(store.list_vms().unwrap(), vec![b.clone()]);
    // A deleted id can be used again.
    store.put_vm(&a).unwrap();
    assert_eq!(store.list_vms().unwrap(), vec![a, b]);
}

pub(crate) fn missing_ids(store: &dyn Store) {
    let ghost = id("vm-ghost");
    assert_eq!(store.get_vm(&ghost).unwrap(), None);
    assert!(!store.delete_vm(&ghost).unwrap());
    assert_eq!(store.list_vms().unwrap(), vec![]);
    store
        .put_vm(&row("vm-real", VmState::Ready, "{}", 1))
        .unwrap();
    assert_eq!(store.get_vm(&ghost).unwrap(), None);
    assert!(!store.delete_vm(&ghost).unwrap());
    assert_eq!(vms_count(store), 1);
}

pub(crate) fn list_is_ordered_by_id(store: &dyn Store) {
    // Byte order, not numeric: "vm-10" sorts before "vm-2".
    let ids = ["vm-2", "a", "vm-10", "vm-1", "z_9", "0", "vm-"];
    for (i, s) in ids.iter().enumerate() {
        store
            .put_vm(&row(s, VmState::Ready, "{}", i as u64))
            .unwrap();
    }
    let listed: Vec<String> = store
        .list_vms()
        .unwrap()
        .into_iter()
        .map(|r| r.id.to_string())
        .collect();
    assert_eq!(listed, ["0", "a", "vm-", "vm-1", "vm-10", "vm-2", "z_9"]);
}

pub(crate) fn every_state_round_trips(store: &dyn Store) {
    for (i, state) in VmState::ALL.into_iter().enumerate() {
        let r = row(&format!("vm-{i:02}"), state, "{}", i as u64);
        store.put_vm(&r).unwrap();
        assert_eq!(store.get_vm(&r.id).unwrap(), Some(r));
    }
    let states: Vec<VmState> = store
        .list_vms()
        .unwrap()
        .into_iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(states, VmState::ALL);
}

pub(crate) fn records_round_trip(store: &dyn Store) {
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(1 << 20));
    let records = [
        "",
        r#"{"quote":"\"","backslash":"\\","nl":"\n"}"#,
        "snowman ☃, emoji 🦀, CJK 漢字",
        "'; DROP TABLE vms; --",
        "with\0nul",
        big.as_str(),
    ];
    for (i, record) in records.iter().enumerate() {
        let r = row(&format!("vm-{i}"), VmState::Running, record, 1);
        store.put_vm(&r).unwrap();
        assert_eq!(
            store.get_vm(&r.id).unwrap().as_ref(),
            Some(&r),
            "record {i}"
        );
    }
    assert_eq!(vms_count(store), records.len() as u64);
}

pub(crate) fn timestamps_in_range_only(store: &dyn Store) {
    for ts in [0, 1_700_000_000_000, MAX_TIMESTAMP_MS] {
        let r = row("vm-t", VmState::Ready, "{}", ts);
        store.put_vm(&r).unwrap();
        assert_eq!(store.get_vm(&r.id).unwrap(), Some(r));
    }
    let too_big = row("vm-t", VmState::Failed, "new", MAX_TIMESTAMP_MS + 1);
    match store.put_vm(&too_big) {
        Err(StoreError::TimestampOutOfRange { kind, id, value }) => {
            assert_eq!((kind, id.as_str()), ("VM", too_big.id.as_str()));
            assert_eq!(value, MAX_TIMESTAMP_MS + 1);
        }
        other => panic!("expected TimestampOutOfRange, got {other:?}"),
    }
    // The refused write changed nothing.
    assert_eq!(
        store.get_vm(&too_big.id).unwrap().map(|r| r.record),
        Some("{}".to_owned())
    );
}

pub(crate) fn stats_count_rows(store: &dyn Store) {
    let stats = store.stats().unwrap();
    // Every backend reports every table of the schema, in the schema's order.
    let empty: Vec<(String, u64)> = TABLES.iter().map(|t| ((*t).to_owned(), 0)).collect();
    assert_eq!(stats.rows, empty);
    assert_eq!(stats.schema_version, SCHEMA_VERSION);
    for s in ["vm-a", "vm-b", "vm-c"] {
        store.put_vm(&row(s, VmState::Ready, "{}", 1)).unwrap();
    }
    assert_eq!(vms_count(store), 3);
    store
        .put_vm(&row("vm-b", VmState::Running, "{}", 2))
        .unwrap();
    assert_eq!(vms_count(store), 3, "overwrite adds no row");
    store.delete_vm(&id("vm-a")).unwrap();
    assert_eq!(vms_count(store), 2);
    assert_eq!(snapshots_count(store), 0);

    for s in ["snap-a", "snap-b"] {
        store.put_snapshot(&snapshot(s, "{}", 1)).unwrap();
    }
    store.put_snapshot(&snapshot("snap-a", "{}", 2)).unwrap();
    assert_eq!(snapshots_count(store), 2, "overwrite adds no row");
    store.delete_snapshot(&snap_id("snap-b")).unwrap();
    assert_eq!(snapshots_count(store), 1);
    assert_eq!(vms_count(store), 2);

    let stats = store.stats().unwrap();
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["backend"], stats.backend);
    assert_eq!(
        json["rows"],
        serde_json::json!([
            ["vms", 2],
            ["snapshots", 1],
            ["net_leases", 0],
            ["net_released", 0],
            ["net_objects", 0]
        ])
    );

    let pool = small_pool();
    store.lease_block(&pool, &id("vm-a")).unwrap();
    store.lease_block(&pool, &id("vm-b")).unwrap();
    store.release_block(&id("vm-a")).unwrap();
    store
        .put_net_objects(&id("vm-b"), &sample_objects("tfc-1"))
        .unwrap();
    assert_eq!(count(store, "net_leases"), 1);
    assert_eq!(count(store, "net_released"), 1);
    assert_eq!(count(store, "net_objects"), 4);
    assert_eq!(json["schema_version"], SCHEMA_VERSION);
    match stats.backend {
        "memory" => assert_eq!((stats.path, stats.size_bytes), (None, None)),
        "sqlite" => {
            let path = stats.path.expect("sqlite stats name the file");
            assert!(path.is_file());
            assert!(stats.size_bytes.unwrap() >= std::fs::metadata(&path).unwrap().len());
        }
        other => panic!("unknown backend {other}"),
    }
}

pub(crate) fn last_write_advances(store: &dyn Store) {
    assert_eq!(store.stats().unwrap().last_write_ms, None);
    let last_write = || store.stats().unwrap().last_write_ms.expect("written");

    let before = now_ms();
    store.put_vm(&row("vm-a", VmState::Ready, "{}", 1)).unwrap();
    let first = last_write();
    assert!(first >= before);

    // Reads and no-op deletes are not writes.
    std::thread::sleep(Duration::from_millis(5));
    store.get_vm(&id("vm-a")).unwrap();
    store.list_vms().unwrap();
    assert!(!store.delete_vm(&id("vm-none")).unwrap());
    assert_eq!(last_write(), first);

    let before = now_ms();
    store
        .put_vm(&row("vm-a", VmState::Running, "{}", 2))
        .unwrap();
    let second = last_write();
    assert!(second >= before && second > first, "{first} -> {second}");

    std::thread::sleep(Duration::from_millis(5));
    let before = now_ms();
    assert!(store.delete_vm(&id("vm-a")).unwrap());
    let third = last_write();
    assert!(third >= before && third > second, "{second} -> {third}");
}

pub(crate) fn snapshot_put_then_get(store: &dyn Store) {
    let a = snapshot("snap-a", r#"{"vm":"vm-a","mem_file":"a.mem"}"#, 17);
    store.put_snapshot(&a).unwrap();
    assert_eq!(store.get_snapshot(&a.id).unwrap(), Some(a.clone()));
    assert_eq!(store.list_snapshots().unwrap(), vec![a]);
}

pub(crate) fn snapshot_put_overwrites(store: &dyn Store) {
    let first = snapshot("snap-a", r#"{"status":"creating"}"#, 1);
    let second = snapshot("snap-a", r#"{"status":"ready"}"#, 2);
    let other = snapshot("snap-b", "{}", 1);
    store.put_snapshot(&first).unwrap();
    store.put_snapshot(&other).unwrap();
    store.put_snapshot(&second).unwrap();
    assert_eq!(store.get_snapshot(&first.id).unwrap(), Some(second.clone()));
    assert_eq!(store.get_snapshot(&other.id).unwrap(), Some(other.clone()));
    assert_eq!(store.list_snapshots().unwrap(), vec![second, other]);
}

pub(crate) fn snapshot_delete_removes_once(store: &dyn Store) {
    let a = snapshot("snap-a", "{}", 1);
    let b = snapshot("snap-b", "{}", 1);
    store.put_snapshot(&a).unwrap();
    store.put_snapshot(&b).unwrap();
    assert!(store.delete_snapshot(&a.id).unwrap());
    assert!(!store.delete_snapshot(&a.id).unwrap());
    assert_eq!(store.get_snapshot(&a.id).unwrap(), None);
    assert_eq!(store.list_snapshots().unwrap(), vec![b.clone()]);
    // A deleted id can be used again.
    store.put_snapshot(&a).unwrap();
    assert_eq!(store.list_snapshots().unwrap(), vec![a, b]);
}

pub(crate) fn snapshot_missing_ids(store: &dyn Store) {
    let ghost = snap_id("snap-ghost");
    assert_eq!(store.get_snapshot(&ghost).unwrap(), None);
    assert!(!store.delete_snapshot(&ghost).unwrap());
    assert_eq!(store.list_snapshots().unwrap(), vec![]);
    store.put_snapshot(&snapshot("snap-real", "{}", 1)).unwrap();
    assert_eq!(store.get_snapshot(&ghost).unwrap(), None);
    assert!(!store.delete_snapshot(&ghost).unwrap());
    assert_eq!(snapshots_count(store), 1);
}

pub(crate) fn snapshot_list_is_ordered_by_id(store: &dyn Store) {
    // Byte order, not numeric: "snap-10" sorts before "snap-2".
    let ids = ["snap-2", "a", "snap-10", "snap-1", "z_9", "0", "snap-"];
    for (i, s) in ids.iter().enumerate() {
        store.put_snapshot(&snapshot(s, "{}", i as u64)).unwrap();
    }
    let listed: Vec<String> = store
        .list_snapshots()
        .unwrap()
        .into_iter()
        .map(|r| r.id.to_string())
        .collect();
    assert_eq!(
        listed,
        ["0", "a", "snap-", "snap-1", "snap-10", "snap-2", "z_9"]
    );
}

pub(crate) fn snapshot_records_round_trip(store: &dyn Store) {
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(1 << 20));
    let records = [
        "",
        r#"{"quote":"\"","backslash":"\\","nl":"\n"}"#,
        "snowman ☃, emoji 🦀, CJK 漢字",
        "'; DROP TABLE snapshots; --",
        "with\0nul",
        big.as_str(),
    ];
    for (i, record) in records.iter().enumerate() {
        let r = snapshot(&format!("snap-{i}"), record, 1);
        store.put_snapshot(&r).unwrap();
        assert_eq!(
            store.get_snapshot(&r.id).unwrap().as_ref(),
            Some(&r),
            "record {i}"
        );
    }
    assert_eq!(snapshots_count(store), records.len() as u64);
}

pub(crate) fn snapshot_timestamps_in_range_only(store: &dyn Store) {
    for ts in [0, 1_700_000_000_000, MAX_TIMESTAMP_MS] {
        let r = snapshot("snap-t", "{}", ts);
        store.put_snapshot(&r).unwrap();
        assert_eq!(store.get_snapshot(&r.id).unwrap(), Some(r));
    }
    let too_big = snapshot("snap-t", "new", MAX_TIMESTAMP_MS + 1);
    match store.put_snapshot(&too_big) {
        Err(StoreError::TimestampOutOfRange { kind, id, value }) => {
            assert_eq!((kind, id.as_str()), ("snapshot", too_big.id.as_str()));
            assert_eq!(value, MAX_TIMESTAMP_MS + 1);
        }
        other => panic!("expected TimestampOutOfRange, got {other:?}"),
    }
    // The refused write changed nothing.
    assert_eq!(
        store.get_snapshot(&too_big.id).unwrap().map(|r| r.record),
        Some("{}".to_owned())
    );
}

pub(crate) fn snapshot_last_write_advances(store: &dyn Store) {
    assert_eq!(store.stats().unwrap().last_write_ms, None);
    let last_write = || store.stats().unwrap().last_write_ms.expect("written");

    let before = now_ms();
    store.put_snapshot(&snapshot("snap-a", "{}", 1)).unwrap();
    let first = last_write();
    assert!(first >= before);

    // Reads and no-op deletes are not writes.
    std::thread::sleep(Duration::from_millis(5));
    store.get_snapshot(&snap_id("snap-a")).unwrap();
    store.list_snapshots().unwrap();
    assert!(!store.delete_snapshot(&snap_id("snap-none")).unwrap());
    assert_eq!(last_write(), first);

    let before = now_ms();
    store.put_snapshot(&snapshot("snap-a", "{}", 2)).unwrap();
    let second = last_write();
    assert!(second >= before && second > first, "{first} -> {second}");

    std::thread::sleep(Duration::from_millis(5));
    let before = now_ms();
    assert!(store.delete_snapshot(&snap_id("snap-a")).unwrap());
    let third = last_write();
    assert!(third >= before && third > second, "{second} -> {third}");
}

/// A VM and a snapshot may share an id string; each table keeps its own row.
pub(crate) fn vms_and_snapshots_are_separate(store: &dyn Store) {
    let vm = row("same", VmState::Running, r#"{"kind":"vm"}"#, 1);
    let snap = snapshot("same", r#"{"kind":"snapshot"}"#, 2);
    store.put_vm(&vm).unwrap();
    store.put_snapshot(&snap).unwrap();
    assert_eq!(store.get_vm(&vm.id).unwrap(), Some(vm.clone()));
    assert_eq!(store.get_snapshot(&snap.id).unwrap(), Some(snap.clone()));

    assert!(store.delete_snapshot(&snap.id).unwrap());
    assert_eq!(store.list_vms().unwrap(), vec![vm.clone()]);
    assert_eq!(store.list_snapshots().unwrap(), vec![]);

    store.put_snapshot(&snap).unwrap();
    assert!(store.delete_vm(&vm.id).unwrap());
    assert_eq!(store.list_vms().unwrap(), vec![]);
    assert_eq!(store.list_snapshots().unwrap(), vec![snap]);
}

/// Ids chosen to exercise ordering ("vm-10" < "vm-2") and collisions, both within
/// a table and between the two tables.
const MODEL_IDS: [&str; 6] = ["a", "vm-1", "vm-10", "vm-2", "z_9", "0"];

#[derive(Clone, Debug)]
enum Op {
    Put(VmRow),
    Delete(VmId),
    PutSnapshot(SnapshotRow),
    DeleteSnapshot(SnapshotId),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let id = proptest::sample::select(&MODEL_IDS[..]).prop_map(id);
    let state = proptest::sample::select(&VmState::ALL[..]);
    let put = (id.clone(), state, "\\PC{0,24}", 0..=MAX_TIMESTAMP_MS).prop_map(
        |(id, state, record, updated_at_ms)| {
            Op::Put(VmRow {
                id,
                state,
                record,
                updated_at_ms,
            })
        },
    );
    let snap_id = proptest::sample::select(&MODEL_IDS[..]).prop_map(snap_id);
    let put_snapshot = (snap_id.clone(), "\\PC{0,24}", 0..=MAX_TIMESTAMP_MS).prop_map(
        |(id, record, updated_at_ms)| {
            Op::PutSnapshot(SnapshotRow {
                id,
                record,
                updated_at_ms,
            })
        },
    );
    prop_oneof![
        6 => put,
        3 => id.prop_map(Op::Delete),
        4 => put_snapshot,
        2 => snap_id.prop_map(Op::DeleteSnapshot),
        1 => Just(Op::Restart),
    ]
}

/// Random sequences of puts and deletes of both kinds of row and (where the
/// backend survives one) restarts leave the store agreeing with a `BTreeMap` per
/// table after every step.
pub(crate) fn agrees_with_model<S: Store, G>(
    cases: u32,
    make: impl Fn() -> (S, G),
    restart: Option<fn(S) -> S>,
) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 0..40), |ops| {
        let (mut store, _guard) = make();
        let mut model: BTreeMap<VmId, VmRow> = BTreeMap::new();
        let mut snapshots: BTreeMap<SnapshotId, SnapshotRow> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Put(row) => {
                    store.put_vm(&row).unwrap();
                    let stored = store.get_vm(&row.id).unwrap();
                    prop_assert_eq!(stored.as_ref(), Some(&row));
                    model.insert(row.id.clone(), row);
                }
                Op::Delete(id) => {
                    let existed = model.remove(&id).is_some();
                    prop_assert_eq!(store.delete_vm(&id).unwrap(), existed);
                    prop_assert_eq!(store.get_vm(&id).unwrap(), None);
                }
                Op::PutSnapshot(row) => {
                    store.put_snapshot(&row).unwrap();
                    let stored = store.get_snapshot(&row.id).unwrap();
                    prop_assert_eq!(stored.as_ref(), Some(&row));
                    snapshots.insert(row.id.clone(), row);
                }
                Op::DeleteSnapshot(id) => {
                    let existed = snapshots.remove(&id).is_some();
                    prop_assert_eq!(store.delete_snapshot(&id).unwrap(), existed);
                    prop_assert_eq!(store.get_snapshot(&id).unwrap(), None);
                }
                Op::Restart => {
                    if let Some(restart) = restart {
                        store = restart(store);
                    }
                }
            }
            let expected: Vec<VmRow> = model.values().cloned().collect();
            prop_assert_eq!(store.list_vms().unwrap(), expected);
            prop_assert_eq!(vms_count(&store), model.len() as u64);
            let expected: Vec<SnapshotRow> = snapshots.values().cloned().collect();
            prop_assert_eq!(store.list_snapshots().unwrap(), expected);
            prop_assert_eq!(snapshots_count(&store), snapshots.len() as u64);
        }
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}

/// A pool of 4 blocks.
fn small_pool() -> Ipv4Pool {
    "192.0.2.0/28".parse().unwrap()
}

fn leased_index(store: &dyn Store, pool: &Ipv4Pool, vm: &str) -> u32 {
    store.lease_block(pool, &id(vm)).unwrap().block.index()
}

/// The objects one slot is made of, named after `slot`.
fn sample_objects(slot: &str) -> Vec<NetObject> {
    vec![
        NetObject::Namespace { name: slot.into() },
        NetObject::NftTable {
            namespace: Some(slot.into()),
            name: "tfc".into(),
        },
        NetObject::Veth { name: slot.into() },
        NetObject::Tap {
            namespace: slot.into(),
            name: "tap0".into(),
        },
    ]
}

pub(crate) fn lease_fresh_blocks_in_order(store: &dyn Store) {
    assert_eq!(store.list_leases().unwrap(), vec![]);
    let pool: Ipv4Pool = "10.200.0.0/16".parse().unwrap();
    let a = store.lease_block(&pool, &id("vm-a")).unwrap();
    assert_eq!(a.block.to_string(), "10.200.0.0/30");
    assert_eq!(a.block.vm().to_string(), "10.200.0.2");
    assert_eq!(leased_index(store, &pool, "vm-b"), 1);
    // Leasing again is harmless: the same block, nothing new taken.
    assert_eq!(store.lease_block(&pool, &id("vm-a")).unwrap(), a);
    assert_eq!(leased_index(store, &pool, "vm-c"), 2);
    let leases: Vec<(String, u32)> = store
        .list_leases()
        .unwrap()
        .into_iter()
        .map(|l| (l.vm.to_string(), l.block.index()))
        .collect();
    assert_eq!(
        leases,
        [("vm-a".into(), 0), ("vm-b".into(), 1), ("vm-c".into(), 2)]
    );
    assert_eq!(store.release_block(&id("vm-ghost")).unwrap(), None);
}

pub(crate) fn lease_reuses_released_blocks_last(store: &dyn Store) {
    let pool = small_pool();
    for vm in ["vm-a", "vm-b"] {
        leased_index(store, &pool, vm);
    }
    let released = store.release_block(&id("vm-a")).unwrap().unwrap();
    assert_eq!((released.vm.as_str(), released.block.index()), ("vm-a", 0));
    assert_eq!(store.release_block(&id("vm-a")).unwrap(), None);
    // Block 0 is free, but fresh blocks go first.
    assert_eq!(leased_index(store, &pool, "vm-c"), 2);
    store.release_block(&id("vm-b")).unwrap();
    assert_eq!(leased_index(store, &pool, "vm-d"), 3);
    // Fresh blocks are used up: the longest-released block comes back first.
    assert_eq!(leased_index(store, &pool, "vm-e"), 0);
    assert_eq!(leased_index(store, &pool, "vm-f"), 1);
}

pub(crate) fn lease_exhaustion_is_refused(store: &dyn Store) {
    let pool = small_pool();
    for vm in ["vm-a", "vm-b", "vm-c", "vm-d"] {
        leased_index(store, &pool, vm);
    }
    let before = store.list_leases().unwrap();
    match store.lease_block(&pool, &id("vm-e")) {
        Err(StoreError::Lease {
            vm,
            source: AllocError::Exhausted { capacity: 4, .. },
        }) => assert_eq!(vm.as_str(), "vm-e"),
        other => panic!("expected an exhausted pool, got {other:?}"),
    }
    let err = store.lease_block(&pool, &id("vm-e")).unwrap_err();
    let message = tfc_core::error_chain(&err);
    assert!(message.contains("configure a larger pool"), "{message}");
    assert_eq!(
        store.list_leases().unwrap(),
        before,
        "a refused lease took a block"
    );
    store.release_block(&id("vm-c")).unwrap();
    assert_eq!(leased_index(store, &pool, "vm-e"), 2);
}

pub(crate) fn lease_pool_changes_only_when_empty(store: &dyn Store) {
    let old = small_pool();
    let new: Ipv4Pool = "198.51.100.0/24".parse().unwrap();
    leased_index(store, &old, "vm-a");
    leased_index(store, &old, "vm-b");
    store.release_block(&id("vm-a")).unwrap();
    match store.lease_block(&new, &id("vm-c")) {
        Err(StoreError::Lease {
            source:
                AllocError::PoolChanged {
                    recorded,
                    configured,
                    leases: 1,
                },
            ..
        }) => assert_eq!((recorded, configured), (old, new)),
        other => panic!("expected a changed pool, got {other:?}"),
    }
    assert_eq!(store.list_leases().unwrap().len(), 1);
    store.release_block(&id("vm-b")).unwrap();
    // Nothing leased: the store moves to the new pool, its old order forgotten.
    let c = store.lease_block(&new, &id("vm-c")).unwrap();
    assert_eq!(c.block.to_string(), "198.51.100.0/30");
    assert_eq!(count(store, "net_released"), 0);
    assert_eq!(store.list_leases().unwrap(), vec![c]);
}

/// Threads leasing at once never share a block, and exactly the pool's
/// capacity of them succeed; every other one is told the pool is exhausted.
pub(crate) fn lease_no_double_lease_under_concurrency(store: &dyn Store) {
    // Two at a time, started together, many rounds.
    let pool: Ipv4Pool = "10.200.0.0/16".parse().unwrap();
    for round in 0..25 {
        let barrier = std::sync::Barrier::new(2);
        let blocks: Vec<u32> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|t| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        leased_index(store, &pool, &format!("vm-{round}-{t}"))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_ne!(
            blocks[0], blocks[1],
            "round {round}: both got block {}",
            blocks[0]
        );
    }
    assert_eq!(store.list_leases().unwrap().len(), 50);

    // Eight threads racing for the last blocks of a small pool.
    let small: Ipv4Pool = "192.0.2.0/26".parse().unwrap(); // 16 blocks
    for vm in store.list_leases().unwrap() {
        store.release_block(&vm.vm).unwrap();
    }
    let barrier = std::sync::Barrier::new(8);
    let results: Vec<Result<Lease, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    (0..4)
                        .map(|i| store.lease_block(&small, &id(&format!("vm-x{t}-{i}"))))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut won = Vec::new();
    for result in results {
        match result {
            Ok(lease) => won.push(lease.block.index()),
            Err(StoreError::Lease {
                source: AllocError::Exhausted { .. },
                ..
            }) => {}
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    won.sort_unstable();
    assert_eq!(
        won,
        (0..16).collect::<Vec<u32>>(),
        "a block twice or one lost"
    );
    assert_eq!(store.list_leases().unwrap().len(), 16);
}

pub(crate) fn net_objects_round_trip(store: &dyn Store) {
    assert_eq!(store.list_net_objects().unwrap(), vec![]);
    let b = sample_objects("tfc-2");
    let a = sample_objects("tfc-1");
    store.put_net_objects(&id("vm-b"), &b).unwrap();
    store.put_net_objects(&id("vm-a"), &a[..2]).unwrap();
    // Replacing a record keeps the new list, in its order.
    store.put_net_objects(&id("vm-a"), &a).unwrap();
    let rows = store.list_net_objects().unwrap();
    assert_eq!(
        rows,
        vec![
            NetObjectsRow {
                vm: id("vm-a"),
                objects: a.clone()
            },
            NetObjectsRow {
                vm: id("vm-b"),
                objects: b.clone()
            },
        ]
    );
    // Order is creation order, not sorted.
    let mut reversed = a.clone();
    reversed.reverse();
    store.put_net_objects(&id("vm-a"), &reversed).unwrap();
    assert_eq!(store.list_net_objects().unwrap()[0].objects, reversed);

    assert!(store.delete_net_objects(&id("vm-a")).unwrap());
    assert!(!store.delete_net_objects(&id("vm-a")).unwrap());
    // An empty list removes the record.
    store.put_net_objects(&id("vm-b"), &[]).unwrap();
    assert_eq!(store.list_net_objects().unwrap(), vec![]);
    assert_eq!(count(store, "net_objects"), 0);
    // Network records are apart from VM records.
    assert_eq!(store.list_vms().unwrap(), vec![]);
}

pub(crate) fn net_writes_advance_last_write(store: &dyn Store) {
    let last_write = || store.stats().unwrap().last_write_ms;
    assert_eq!(last_write(), None);
    let pool = small_pool();
    // Reads and no-ops are not writes.
    store.list_leases().unwrap();
    store.release_block(&id("vm-a")).unwrap();
    store.put_net_objects(&id("vm-a"), &[]).unwrap();
    assert!(!store.delete_net_objects(&id("vm-a")).unwrap());
    store.list_net_objects().unwrap();
    assert_eq!(last_write(), None);

    let before = now_ms();
    store.lease_block(&pool, &id("vm-a")).unwrap();
    let first = last_write().expect("a lease is a write");
    assert!(first >= before);
    std::thread::sleep(Duration::from_millis(5));
    store.lease_block(&pool, &id("vm-a")).unwrap();
    assert_eq!(
        last_write(),
        Some(first),
        "leasing a held block again is no write"
    );
    store
        .put_net_objects(&id("vm-a"), &sample_objects("tfc-1"))
        .unwrap();
    let second = last_write().unwrap();
    assert!(second > first, "{first} -> {second}");
    std::thread::sleep(Duration::from_millis(5));
    store.release_block(&id("vm-a")).unwrap();
    assert!(last_write().unwrap() > second);
}

#[derive(Clone, Debug)]
enum LeaseOp {
    Lease(usize),
    Release(usize),
    Restart,
}

fn lease_op() -> impl Strategy<Value = LeaseOp> {
    prop_oneof![
        5 => (0..8usize).prop_map(LeaseOp::Lease),
        3 => (0..8usize).prop_map(LeaseOp::Release),
        1 => Just(LeaseOp::Restart),
    ]
}

/// Random leases and releases by 8 VMs of a 4-block pool, with restarts where
/// the backend survives one, give exactly the allocator's answers: the same
/// blocks (so the same reuse order) and the same refusals.
pub(crate) fn leases_agree_with_allocator<S: Store, G>(
    cases: u32,
    make: impl Fn() -> (S, G),
    restart: Option<fn(S) -> S>,
) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let pool = small_pool();
    let result = runner.run(&proptest::collection::vec(lease_op(), 0..60), |ops| {
        let (mut store, _guard) = make();
        let mut model = AddressAllocator::new(pool);
        for op in ops {
            match op {
                LeaseOp::Lease(n) => {
                    let vm = id(&format!("vm-{n}"));
                    let expected = model.lease(&vm);
                    match (store.lease_block(&pool, &vm), expected) {
                        (Ok(got), Ok(want)) => prop_assert_eq!(got, want),
                        (Err(StoreError::Lease { source, .. }), Err(want)) => {
                            prop_assert_eq!(source, want)
                        }
                        (got, want) => prop_assert!(false, "store {:?}, model {:?}", got, want),
                    }
                }
                LeaseOp::Release(n) => {
                    let vm = id(&format!("vm-{n}"));
                    prop_assert_eq!(store.release_block(&vm).unwrap(), model.release(&vm));
                }
                LeaseOp::Restart => {
                    if let Some(restart) = restart {
                        store = restart(store);
                    }
                }
            }
            prop_assert_eq!(store.list_leases().unwrap(), model.leases());
            prop_assert_eq!(count(&store, "net_leases"), model.leases().len() as u64);
            prop_assert_eq!(count(&store, "net_released"), model.released().len() as u64);
        }
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}
