//! [`SqliteStore`]: the default store, one SQLite file in the data directory.
//!
//! Durability: WAL journal. Each write is one transaction, and every committed
//! write survives the daemon's crash (or `kill -9`) at any point, whatever the
//! sync mode: it is in the WAL file. What a write must also survive decides
//! its mode ([`Durability`]): snapshot records describe files that outlive the
//! host, so they are fsynced before the call returns (`synchronous=FULL`); VM
//! records describe processes that die with the host, so they need not wait
//! for the disk (`synchronous=NORMAL`, ~0.3 ms less per write here): after a
//! power loss the last ones may be missing, and every VM they named is gone
//! anyway. A FULL commit also syncs every NORMAL one before it.
//!
//! Opening reads before it writes: a file that is not a database of ours (garbage,
//! damaged, or from a newer tfc) is reported and left exactly as it was.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use tfc_core::net::{Ipv4Pool, Lease, NetObject};
use tfc_core::{SnapshotId, VmId, VmState};

use crate::error::{Corruption, StoreError};
use crate::schema::{self, META_LAST_WRITE_MS, SCHEMA_VERSION, TABLES};
use crate::store::{now_ms, NetObjectsRow, SnapshotRow, Store, StoreStats, VmRow};

mod net;

/// Name of the database file in the data directory.
pub const STATE_DB_FILE: &str = "state.db";

/// How long a write waits for another connection's lock before failing. Only one
/// daemon uses a data directory (it holds `daemon.lock`), so this covers
/// short-lived readers such as an operator's `sqlite3` shell.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How many problems `quick_check` reports at most.
const QUICK_CHECK_LINES: u32 = 5;

#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens the database at `path`, creating it and its parent directories if
    /// needed, checks it, and brings its schema up to [`SCHEMA_VERSION`].
    ///
    /// Refuses a database from a newer tfc ([`StoreError::TooNew`]) and one that is
    /// damaged or not a database ([`StoreError::Corrupt`]); neither is modified.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| StoreError::Create {
                path: dir.to_owned(),
                source,
            })?;
        }
        // Create the file ourselves, owner-only: records may carry secrets, and
        // SQLite gives the -wal and -shm files the database file's permissions.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(StoreError::Create {
                    path: path.to_owned(),
                    source,
                })
            }
        }

        let fail = |op| move |err| StoreError::sqlite(path, op, err);
        let mut conn = Connection::open(path).map_err(fail("open the state database"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(fail("set the busy timeout"))?;

        // Nothing above wrote to the file. Check it before anything does.
        let found = schema::user_version(&conn).map_err(fail("read the schema version"))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.to_owned(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        quick_check(&conn, path)?;

        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(fail("switch to write-ahead logging"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::JournalMode {
                path: path.to_owned(),
                mode,
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(fail("set synchronous=FULL"))?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(fail("enable foreign keys"))?;
        schema::migrate(&mut conn, found).map_err(fail("migrate the state database"))?;

        tracing::info!(
            path = %path.display(),
            schema_version = SCHEMA_VERSION,
            migrated_from = found,
            "opened state database"
        );
        Ok(Self {
            path: path.to_owned(),
            conn: Mutex::new(conn),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held dropped any open transaction, which
        // rolled it back: the connection is usable as it is.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fail(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        move |err| StoreError::sqlite(&self.path, op, err)
    }

    /// Runs `change` in its own IMMEDIATE transaction and commits it together with
    /// `last_write_ms`, so a crash keeps both or neither, as durable as
    /// `durability` says. A change that touched no row is rolled back instead:
    /// it is not a write, and there is nothing to sync. Returns the number of
    /// rows changed.
    fn write(
        &self,
        op: &'static str,
        durability: Durability,
        change: impl FnOnce(&Connection) -> rusqlite::Result<usize>,
    ) -> Result<usize, StoreError> {
        let fail = || self.fail(op);
        let mut conn = self.lock();
        // Outside the transaction: SQLite reads the mode when it commits.
        conn.pragma_update(None, "synchronous", durability.synchronous())
            .map_err(fail())?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail())?;
        let changed = change(&tx).map_err(fail())?;
        if changed == 0 {
            return Ok(0);
        }
        touch(&tx).map_err(fail())?;
        tx.commit().map_err(fail())?;
        Ok(changed)
    }

    /// Runs `change` in its own IMMEDIATE transaction, like [`Self::write`], for
    /// changes that decide from what they read and may fail for reasons of
    /// their own. `change` returns its result and whether it changed a row; a
    /// change is committed together with `last_write_ms`, anything else
    /// (no change, or an error) is rolled back.
    fn transact<T>(
        &self,
        op: &'static str,
        durability: Durability,
        change: impl FnOnce(&Transaction<'_>) -> Result<(T, bool), TxError>,
    ) -> Result<T, StoreError> {
        let fail = |err| StoreError::sqlite(&self.path, op, err);
        let mut conn = self.lock();
        conn.pragma_update(None, "synchronous", durability.synchronous())
            .map_err(fail)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        let (value, changed) = change(&tx).map_err(|err| match err {
            TxError::Sqlite(err) => fail(err),
            TxError::Store(err) => err,
        })?;
        if changed {
            touch(&tx).map_err(fail)?;
            tx.commit().map_err(fail)?;
        }
        Ok(value)
    }

    fn wal_path(&self) -> PathBuf {
        let mut wal = OsString::from(self.path.as_os_str());
        wal.push("-wal");
        PathBuf::from(wal)
    }
}

/// `PRAGMA quick_check`: catches damage that reading the header does not, such as a
/// truncated file or a scribbled page. Linear in the size of the database.
fn quick_check(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let fail = |err| StoreError::sqlite(path, "check the state database", err);
    let mut stmt = conn
        .prepare(&format!("PRAGMA quick_check({QUICK_CHECK_LINES})"))
        .map_err(fail)?;
    let lines = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(fail)?;
    if lines.len() == 1 && lines[0] == "ok" {
        return Ok(());
    }
    Err(StoreError::Corrupt {
        path: path.to_owned(),
        source: Corruption::QuickCheck(lines.join("; ").replace('\n', " ")),
    })
}

/// Records the wall-clock time of a write, never moving it backwards.
fn touch(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
    )?
    .execute(params![META_LAST_WRITE_MS, now_ms()])?;
    Ok(())
}

const SELECT_VM: &str = "SELECT id, state, record, updated_at_ms FROM vms";

/// A `vms` row as SQLite holds it, before it is checked.
type RawVm = (String, String, String, i64);

fn raw_vm(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawVm> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn decode_vm((id, state, record, updated_at_ms): RawVm) -> Result<VmRow, StoreError> {
    let bad = |key: &str, column, value: String| StoreError::Decode {
        table: "vms",
        key: key.to_owned(),
        column,
        value,
    };
    let state = VmState::ALL
        .into_iter()
        .find(|s| s.as_str() == state)
        .ok_or_else(|| bad(&id, "state", state.clone()))?;
    let updated_at_ms = u64::try_from(updated_at_ms)
        .map_err(|_| bad(&id, "updated_at_ms", updated_at_ms.to_string()))?;
    let id = VmId::new(id.as_str()).map_err(|_| bad(&id, "id", id.clone()))?;
    Ok(VmRow {
        id,
        state,
        record,
        updated_at_ms,
    })
}

const SELECT_SNAPSHOT: &str = "SELECT id, record, updated_at_ms FROM snapshots";

/// A `snapshots` row as SQLite holds it, before it is checked.
type RawSnapshot = (String, String, i64);

fn raw_snapshot(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawSnapshot> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

fn decode_snapshot((id, record, updated_at_ms): RawSnapshot) -> Result<SnapshotRow, StoreError> {
    let bad = |key: &str, column, value: String| StoreError::Decode {
        table: "snapshots",
        key: key.to_owned(),
        column,
        value,
    };
    let updated_at_ms = u64::try_from(updated_at_ms)
        .map_err(|_| bad(&id, "updated_at_ms", updated_at_ms.to_string()))?;
    let id = SnapshotId::new(id.as_str()).map_err(|_| bad(&id, "id", id.clone()))?;
    Ok(SnapshotRow {
        id,
        record,
        updated_at_ms,
    })
}

/// Why a [`SqliteStore::transact`] change failed: SQLite, or a refusal of our own.
#[derive(Debug)]
enum TxError {
    Sqlite(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for TxError {
    fn from(err: rusqlite::Error) -> Self {
        TxError::Sqlite(err)
    }
}

impl From<StoreError> for TxError {
    fn from(err: StoreError) -> Self {
        TxError::Store(err)
    }
}

/// What a committed write must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// The daemon's crash: the WAL file holds it (`synchronous=NORMAL`).
    ProcessCrash,
    /// The host's crash or power loss: fsynced (`synchronous=FULL`).
    HostCrash,
}

impl Durability {
    fn synchronous(self) -> &'static str {
        match self {
            Durability::ProcessCrash => "NORMAL",
            Durability::HostCrash => "FULL",
        }
    }
}

impl Store for SqliteStore {
    fn put_vm(&self, row: &VmRow) -> Result<(), StoreError> {
        row.check()?;
        // An upsert changes one row whether it inserts or updates.
        self.write("write a VM record", Durability::ProcessCrash, |tx| {
            tx.prepare_cached(
                "INSERT INTO vms (id, state, record, updated_at_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET
                     state = excluded.state,
                     record = excluded.record,
                     updated_at_ms = excluded.updated_at_ms",
            )?
            .execute(params![
                row.id.as_str(),
                row.state.as_str(),
                row.record,
                row.updated_at_ms
            ])
        })?;
        Ok(())
    }

    fn delete_vm(&self, id: &VmId) -> Result<bool, StoreError> {
        let deleted = self.write("delete a VM record", Durability::ProcessCrash, |tx| {
            tx.prepare_cached("DELETE FROM vms WHERE id = ?1")?
                .execute([id.as_str()])
        })?;
        Ok(deleted > 0)
    }

    fn get_vm(&self, id: &VmId) -> Result<Option<VmRow>, StoreError> {
        let conn = self.lock();
        let raw = conn
            .prepare_cached(&format!("{SELECT_VM} WHERE id = ?1"))
            .and_then(|mut stmt| stmt.query_row([id.as_str()], raw_vm).optional())
            .map_err(self.fail("read a VM record"))?;
        raw.map(decode_vm).transpose()
    }

    fn list_vms(&self) -> Result<Vec<VmRow>, StoreError> {
        let conn = self.lock();
        let raws = conn
            .prepare_cached(&format!("{SELECT_VM} ORDER BY id"))
            .and_then(|mut stmt| stmt.query_map([], raw_vm)?.collect::<Result<Vec<_>, _>>())
            .map_err(self.fail("list VM records"))?;
        drop(conn);
        raws.into_iter().map(decode_vm).collect()
    }

    fn put_snapshot(&self, row: &SnapshotRow) -> Result<(), StoreError> {
        row.check()?;
        self.write("write a snapshot record", Durability::HostCrash, |tx| {
            tx.prepare_cached(
                "INSERT INTO snapshots (id, record, updated_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET
                     record = excluded.record,
                     updated_at_ms = excluded.updated_at_ms",
            )?
            .execute(params![row.id.as_str(), row.record, row.updated_at_ms])
        })?;
        Ok(())
    }

    fn delete_snapshot(&self, id: &SnapshotId) -> Result<bool, StoreError> {
        let deleted = self.write("delete a snapshot record", Durability::HostCrash, |tx| {
            tx.prepare_cached("DELETE FROM snapshots WHERE id = ?1")?
                .execute([id.as_str()])
        })?;
        Ok(deleted > 0)
    }

    fn get_snapshot(&self, id: &SnapshotId) -> Result<Option<SnapshotRow>, StoreError> {
        let conn = self.lock();
        let raw = conn
            .prepare_cached(&format!("{SELECT_SNAPSHOT} WHERE id = ?1"))
            .and_then(|mut stmt| stmt.query_row([id.as_str()], raw_snapshot).optional())
            .map_err(self.fail("read a snapshot record"))?;
        raw.map(decode_snapshot).transpose()
    }

    fn list_snapshots(&self) -> Result<Vec<SnapshotRow>, StoreError> {
        let conn = self.lock();
        let raws = conn
            .prepare_cached(&format!("{SELECT_SNAPSHOT} ORDER BY id"))
            .and_then(|mut stmt| {
                stmt.query_map([], raw_snapshot)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(self.fail("list snapshot records"))?;
        drop(conn);
        raws.into_iter().map(decode_snapshot).collect()
    }

    fn lease_block(&self, pool: &Ipv4Pool, vm: &VmId) -> Result<Lease, StoreError> {
        net::lease_block(self, pool, vm)
    }

    fn release_block(&self, vm: &VmId) -> Result<Option<Lease>, StoreError> {
        net::release_block(self, vm)
    }

    fn list_leases(&self) -> Result<Vec<Lease>, StoreError> {
        net::list_leases(self)
    }

    fn put_net_objects(&self, vm: &VmId, objects: &[NetObject]) -> Result<(), StoreError> {
        net::put_net_objects(self, vm, objects)
    }

    fn delete_net_objects(&self, vm: &VmId) -> Result<bool, StoreError> {
        let deleted = self.write(
            "delete a VM's network objects",
            Durability::ProcessCrash,
            |tx| {
                tx.prepare_cached("DELETE FROM net_objects WHERE vm_id = ?1")?
                    .execute([vm.as_str()])
            },
        )?;
        Ok(deleted > 0)
    }

    fn list_net_objects(&self) -> Result<Vec<NetObjectsRow>, StoreError> {
        net::list_net_objects(self)
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        let fail = || self.fail("read store statistics");
        let conn = self.lock();
        let mut rows = Vec::with_capacity(TABLES.len());
        for table in TABLES {
            // Table names come from our own constant list, never from input.
            let count: u64 = conn
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                    row.get(0)
                })
                .map_err(fail())?;
            rows.push(((*table).to_owned(), count));
        }
        let last_write_ms: Option<u64> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [META_LAST_WRITE_MS],
                |row| row.get(0),
            )
            .optional()
            .map_err(fail())?;
        let schema_version = schema::user_version(&conn).map_err(fail())?;
        drop(conn);

        let mut size_bytes = 0;
        for file in [self.path.clone(), self.wal_path()] {
            match fs::metadata(&file) {
                Ok(meta) => size_bytes += meta.len(),
                // No WAL between a checkpoint-on-close and the next write.
                Err(err) if err.kind() == io::ErrorKind::NotFound && file != self.path => {}
                Err(source) => return Err(StoreError::Size { path: file, source }),
            }
        }
        Ok(StoreStats {
            backend: "sqlite",
            path: Some(self.path.clone()),
            rows,
            size_bytes: Some(size_bytes),
            last_write_ms,
            schema_version,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};
    use std::sync::Arc;

    use tfc_core::error_chain;

    use super::*;

    fn fresh() -> (SqliteStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join(STATE_DB_FILE)).unwrap();
        (store, dir)
    }

    fn reopen(store: SqliteStore) -> SqliteStore {
        let path = store.path().to_owned();
        drop(store);
        SqliteStore::open(&path).unwrap()
    }

    crate::conformance::conformance_tests!(fresh, cases = 48, restart = Some(reopen));

    /// The row counts stats report for every table: those given, 0 for the rest.
    fn table_rows(given: &[(&str, u64)]) -> Vec<(String, u64)> {
        TABLES
            .iter()
            .map(|table| {
                let n = given
                    .iter()
                    .find(|(t, _)| t == table)
                    .map_or(0, |(_, n)| *n);
                ((*table).to_owned(), n)
            })
            .collect()
    }

    fn row(id: &str, state: VmState, record: &str) -> VmRow {
        VmRow {
            id: VmId::new(id).unwrap(),
            state,
            record: record.to_owned(),
            updated_at_ms: 1_700_000_000_000,
        }
    }

    fn snapshot(id: &str, record: &str) -> SnapshotRow {
        SnapshotRow {
            id: SnapshotId::new(id).unwrap(),
            record: record.to_owned(),
            updated_at_ms: 1_700_000_000_000,
        }
    }

    /// A closed database holding `n` rows of about 1 KiB each, all checkpointed
    /// into the main file (closing the last connection checkpoints the WAL).
    fn closed_db_with_rows(n: usize) -> (tempfile::TempDir, PathBuf) {
        let (store, dir) = fresh();
        for i in 0..n {
            let record = format!("{i:04}{}", "r".repeat(1000));
            store
                .put_vm(&row(&format!("vm-{i:04}"), VmState::Running, &record))
                .unwrap();
        }
        let path = store.path().to_owned();
        drop(store);
        assert!(
            !dir.path().join("state.db-wal").exists(),
            "WAL not checkpointed"
        );
        (dir, path)
    }

    #[test]
    fn open_creates_directories_and_an_owner_only_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/state.db");
        let store = SqliteStore::open(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let conn = store.lock();
        let journal: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        let synchronous: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        let foreign_keys: bool = conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        assert_eq!(synchronous, 2, "FULL");
        assert!(foreign_keys);
        assert_eq!(schema::user_version(&conn).unwrap(), SCHEMA_VERSION);
    }

    /// VM records need not wait for the disk; snapshot records do.
    #[test]
    fn each_write_syncs_as_its_records_need() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        let mode = |store: &SqliteStore| -> i64 {
            store
                .lock()
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap()
        };
        store
            .put_vm(&row("vm-000000000001", VmState::Ready, "{}"))
            .unwrap();
        assert_eq!(mode(&store), 1, "NORMAL");
        store
            .put_snapshot(&SnapshotRow {
                id: SnapshotId::new("snap-000000000001").unwrap(),
                record: "{}".to_owned(),
                updated_at_ms: 1,
            })
            .unwrap();
        assert_eq!(mode(&store), 2, "FULL");
    }

    #[test]
    fn data_survives_reopen() {
        let (store, _dir) = fresh();
        let a = row("vm-a", VmState::Running, r#"{"pid":1}"#);
        let b = row("vm-b", VmState::Paused, r#"{"pid":2}"#);
        store.put_vm(&a).unwrap();
        store.put_vm(&b).unwrap();
        store.delete_vm(&b.id).unwrap();
        let last_write = store.stats().unwrap().last_write_ms;

        let store = reopen(store);
        assert_eq!(store.list_vms().unwrap(), vec![a]);
        assert_eq!(store.stats().unwrap().last_write_ms, last_write);
    }

    #[test]
    fn snapshots_survive_reopen() {
        let (store, _dir) = fresh();
        let a = snapshot("snap-a", r#"{"vm":"vm-a"}"#);
        let b = snapshot("snap-b", r#"{"vm":"vm-b"}"#);
        store.put_snapshot(&a).unwrap();
        store.put_snapshot(&b).unwrap();
        store.delete_snapshot(&b.id).unwrap();
        let last_write = store.stats().unwrap().last_write_ms;

        let store = reopen(store);
        assert_eq!(store.list_snapshots().unwrap(), vec![a]);
        assert_eq!(store.stats().unwrap().last_write_ms, last_write);
    }

    #[test]
    fn leases_and_net_objects_survive_reopen() {
        let (store, _dir) = fresh();
        let pool: Ipv4Pool = "10.200.0.0/16".parse().unwrap();
        let vm = |s: &str| VmId::new(s).unwrap();
        for name in ["vm-a", "vm-b", "vm-c"] {
            store.lease_block(&pool, &vm(name)).unwrap();
        }
        store.release_block(&vm("vm-b")).unwrap();
        let objects = vec![
            NetObject::Namespace {
                name: "tfc-1".into(),
            },
            NetObject::Veth {
                name: "tfc-1".into(),
            },
        ];
        store.put_net_objects(&vm("vm-a"), &objects).unwrap();
        let leases = store.list_leases().unwrap();

        let store = reopen(store);
        assert_eq!(store.list_leases().unwrap(), leases);
        assert_eq!(
            store.list_net_objects().unwrap(),
            vec![NetObjectsRow {
                vm: vm("vm-a"),
                objects
            }]
        );
        // The allocator's state came back whole: the next fresh block is 3,
        // and the released block 1 waits until the fresh ones are gone.
        let d = store.lease_block(&pool, &vm("vm-d")).unwrap();
        assert_eq!(d.block.index(), 3);
    }

    /// Two connections to one database (the mutex of one store does not
    /// serialise them): leases made at once still never share a block,
    /// because each lease reads and writes under SQLite's write lock.
    #[test]
    fn two_connections_never_lease_one_block_twice() {
        let (first, _dir) = fresh();
        let second = SqliteStore::open(first.path()).unwrap();
        let pool: Ipv4Pool = "10.200.0.0/16".parse().unwrap();
        let barrier = std::sync::Barrier::new(2);
        let leased: Vec<Vec<u32>> = std::thread::scope(|scope| {
            [&first, &second]
                .into_iter()
                .enumerate()
                .map(|(t, store)| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        (0..100)
                            .map(|i| {
                                let vm = VmId::new(format!("vm-{t}-{i}")).unwrap();
                                store.lease_block(&pool, &vm).unwrap().block.index()
                            })
                            .collect()
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect()
        });
        let mut all: Vec<u32> = leased.concat();
        all.sort_unstable();
        assert_eq!(all, (0..200).collect::<Vec<u32>>());
    }

    #[test]
    fn a_version_1_database_migrates_forward() {
        // The database a build with only the first migration left behind: WAL
        // mode, user_version 1, one VM row, no snapshots table.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_DB_FILE);
        {
            let mut conn = Connection::open(&path).unwrap();
            let _: String = conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
                .unwrap();
            let tx = conn.transaction().unwrap();
            tx.execute_batch(schema::MIGRATIONS[0].sql).unwrap();
            tx.pragma_update(None, "user_version", 1).unwrap();
            tx.execute(
                "INSERT INTO vms (id, state, record, updated_at_ms)
                 VALUES ('vm-old', 'running', '{}', 5)",
                [],
            )
            .unwrap();
            tx.commit().unwrap();
        }

        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(schema::user_version(&store.lock()).unwrap(), SCHEMA_VERSION);
        let old = store.get_vm(&VmId::new("vm-old").unwrap()).unwrap();
        assert_eq!(
            old.map(|r| (r.state, r.updated_at_ms)),
            Some((VmState::Running, 5))
        );
        let s = snapshot("snap-new", "{}");
        store.put_snapshot(&s).unwrap();
        assert_eq!(store.list_snapshots().unwrap(), vec![s.clone()]);
        assert_eq!(
            store.stats().unwrap().rows,
            table_rows(&[("vms", 1), ("snapshots", 1)])
        );

        // Migrated once: opening again changes nothing and loses nothing.
        let store = reopen(store);
        assert_eq!(store.list_snapshots().unwrap(), vec![s]);
        assert_eq!(store.list_vms().unwrap().len(), 1);
    }

    #[test]
    fn data_survives_an_unclosed_connection() {
        // Leaking the store skips the checkpoint on close, as a crash would: the
        // rows exist only in the WAL, and the next open must replay it.
        let (store, dir) = fresh();
        let path = store.path().to_owned();
        let a = row("vm-a", VmState::Running, "{}");
        store.put_vm(&a).unwrap();
        std::mem::forget(store);
        assert!(dir.path().join("state.db-wal").exists());
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.list_vms().unwrap(), vec![a]);
    }

    const CRASH_CHILD_DB: &str = "TFC_STORE_CRASH_CHILD_DB";

    /// The child side of `acknowledged_puts_survive_kill_9`: puts rows forever,
    /// printing `ack N` after each put returns. Runs inside the same test,
    /// re-executed with `CRASH_CHILD_DB` set, so no separate helper test exists
    /// for a plain or `--ignored` run to trip over.
    fn crash_child(path: PathBuf) -> ! {
        let store = SqliteStore::open(&path).unwrap();
        let mut out = std::io::stdout().lock();
        for i in 0.. {
            let record = format!(r#"{{"n":{i},"pad":"{}"}}"#, "p".repeat(i % 5000));
            store
                .put_vm(&row(&format!("vm-{i:06}"), VmState::Running, &record))
                .unwrap();
            writeln!(out, "ack {i}").unwrap();
            out.flush().unwrap();
        }
        unreachable!("the loop above never ends")
    }

    #[test]
    fn acknowledged_puts_survive_kill_9() {
        if let Some(path) = std::env::var_os(CRASH_CHILD_DB) {
            crash_child(PathBuf::from(path));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_DB_FILE);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "sqlite::tests::acknowledged_puts_survive_kill_9"])
            .args(["--nocapture", "--test-threads=1"])
            .env(CRASH_CHILD_DB, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut acked = None;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            if let Some(n) = line.unwrap().strip_prefix("ack ") {
                let n: usize = n.parse().unwrap();
                acked = Some(n);
                if n >= 100 {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL, likely in the middle of a put
        child.wait().unwrap();
        let acked = acked.expect("the child acknowledged no put");
        assert!(acked >= 100, "the child stopped after {acked} puts");

        let store = SqliteStore::open(&path).unwrap();
        let rows = store.list_vms().unwrap();
        // Every acknowledged put is there; a put the child never acknowledged may
        // be there too (committed just before the kill), but nothing is partial.
        assert!(
            rows.len() > acked,
            "{} rows, {acked} acknowledged",
            rows.len()
        );
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r.id.as_str(), format!("vm-{i:06}"));
            assert!(r.record.starts_with(&format!(r#"{{"n":{i},"#)), "row {i}");
            assert!(r.record.ends_with("\"}"), "row {i} is cut short");
        }
    }

    #[test]
    fn newer_schema_is_refused_and_left_alone() {
        let (store, _dir) = fresh();
        let path = store.path().to_owned();
        drop(store);
        let newer = SCHEMA_VERSION + 1;
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", newer)
            .unwrap();
        let before = fs::read(&path).unwrap();

        let err = SqliteStore::open(&path).unwrap_err();
        match &err {
            StoreError::TooNew {
                path: p,
                found,
                supported,
            } => {
                assert_eq!((p, *found, *supported), (&path, newer, SCHEMA_VERSION));
            }
            other => panic!("expected TooNew, got {other:?}"),
        }
        let message = error_chain(&err);
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("run a newer tfc"), "{message}");
        assert!(
            message.contains("move the file aside, together with its -wal"),
            "{message}"
        );
        assert_eq!(fs::read(&path).unwrap(), before);
    }

    fn assert_corrupt(path: &Path) -> String {
        let before = fs::read(path).unwrap();
        let err = SqliteStore::open(path).unwrap_err();
        let StoreError::Corrupt { path: p, .. } = &err else {
            panic!("expected Corrupt, got {err:?}");
        };
        assert_eq!(p, path);
        let message = error_chain(&err);
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(
            message.contains("move the file aside, together with its -wal"),
            "{message}"
        );
        assert!(message.contains("empty store"), "{message}");
        assert_eq!(fs::read(path).unwrap(), before, "the file was modified");
        message
    }

    #[test]
    fn garbage_files_are_corrupt_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.db");
        fs::write(&short, b"not a database").unwrap();
        assert_corrupt(&short);

        let long = dir.path().join("long.db");
        let garbage: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(&long, garbage).unwrap();
        let message = assert_corrupt(&long);
        assert!(message.contains("not a database"), "{message}");
    }

    #[test]
    fn a_truncated_database_is_corrupt() {
        let (_dir, path) = closed_db_with_rows(200);
        let len = fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len / 2).unwrap();
        drop(file);
        assert_corrupt(&path);
    }

    #[test]
    fn a_scribbled_page_is_caught_by_quick_check() {
        let (_dir, path) = closed_db_with_rows(200);
        let mut bytes = fs::read(&path).unwrap();
        let page: usize = 4096;
        assert!(bytes.len() > 8 * page);
        // Page 4 is a b-tree page of the vms table; wreck its header.
        for b in &mut bytes[3 * page..3 * page + 64] {
            *b = 0xa5;
        }
        fs::write(&path, bytes).unwrap();
        assert_corrupt(&path);
    }

    #[test]
    fn damage_only_quick_check_sees_is_corrupt() {
        // A wrong free-page count: SQLite reads and writes such a file without
        // complaint, so only the check at open notices.
        let (store, _dir) = fresh();
        for i in 0..50 {
            let r = row(&format!("vm-{i:02}"), VmState::Ready, &"x".repeat(1000));
            store.put_vm(&r).unwrap();
        }
        for i in 0..20 {
            store
                .delete_vm(&VmId::new(format!("vm-{i:02}")).unwrap())
                .unwrap();
        }
        let path = store.path().to_owned();
        drop(store);
        let mut bytes = fs::read(&path).unwrap();
        let free_pages = u32::from_be_bytes(bytes[36..40].try_into().unwrap());
        assert!(free_pages > 0);
        bytes[36..40].copy_from_slice(&(free_pages + 3).to_be_bytes());
        fs::write(&path, bytes).unwrap();

        let message = assert_corrupt(&path);
        assert!(message.contains("quick_check: "), "{message}");
        assert!(message.contains("Freelist"), "{message}");
    }

    #[test]
    fn a_full_disk_is_reported_and_recovered_from() {
        let (store, _dir) = fresh();
        let small = row("vm-small", VmState::Running, "{}");
        store.put_vm(&small).unwrap();
        {
            // Cap the file at its current size: the next page SQLite needs fails
            // with SQLITE_FULL, the error a full disk gives.
            let conn = store.lock();
            let pages: u64 = conn
                .pragma_query_value(None, "page_count", |r| r.get(0))
                .unwrap();
            conn.pragma_update(None, "max_page_count", pages).unwrap();
        }
        let big = row("vm-big", VmState::Running, &"b".repeat(256 * 1024));
        let err = store.put_vm(&big).unwrap_err();
        let StoreError::DiskFull { path, .. } = &err else {
            panic!("expected DiskFull, got {err:?}");
        };
        assert_eq!(path, store.path());
        let message = error_chain(&err);
        assert!(message.contains("free space on the data disk"), "{message}");

        // The failed write left nothing behind, and the store still works.
        assert_eq!(store.list_vms().unwrap(), vec![small.clone()]);
        store
            .lock()
            .pragma_update(None, "max_page_count", 1_000_000)
            .unwrap();
        store.put_vm(&big).unwrap();
        assert_eq!(store.list_vms().unwrap(), vec![big, small]);
    }

    #[test]
    fn a_full_disk_refuses_a_snapshot_and_keeps_the_old_one() {
        let (store, _dir) = fresh();
        let small = snapshot("snap-a", "{}");
        store.put_snapshot(&small).unwrap();
        let last_write = store.stats().unwrap().last_write_ms;
        {
            let conn = store.lock();
            let pages: u64 = conn
                .pragma_query_value(None, "page_count", |r| r.get(0))
                .unwrap();
            conn.pragma_update(None, "max_page_count", pages).unwrap();
        }
        let big = snapshot("snap-a", &"b".repeat(256 * 1024));
        let err = store.put_snapshot(&big).unwrap_err();
        assert!(matches!(&err, StoreError::DiskFull { .. }), "{err:?}");
        assert_eq!(store.list_snapshots().unwrap(), vec![small]);
        assert_eq!(store.stats().unwrap().last_write_ms, last_write);
    }

    #[test]
    fn unreadable_snapshot_rows_are_reported_not_skipped() {
        let (store, _dir) = fresh();
        store.put_snapshot(&snapshot("snap-a", "{}")).unwrap();
        store
            .lock()
            .execute(
                "UPDATE snapshots SET updated_at_ms = -1 WHERE id = 'snap-a'",
                [],
            )
            .unwrap();
        let err = store.list_snapshots().unwrap_err();
        assert!(
            matches!(
                &err,
                StoreError::Decode { table: "snapshots", key, column: "updated_at_ms", value }
                    if key == "snap-a" && value == "-1"
            ),
            "{err:?}"
        );
        assert!(matches!(
            store.get_snapshot(&SnapshotId::new("snap-a").unwrap()),
            Err(StoreError::Decode { .. })
        ));
    }

    #[test]
    fn unreadable_rows_are_reported_not_skipped() {
        let (store, _dir) = fresh();
        store.put_vm(&row("vm-a", VmState::Running, "{}")).unwrap();
        store
            .lock()
            .execute("UPDATE vms SET state = 'hibernating' WHERE id = 'vm-a'", [])
            .unwrap();
        let err = store.list_vms().unwrap_err();
        assert!(
            matches!(
                &err,
                StoreError::Decode { table: "vms", key, column: "state", value }
                    if key == "vm-a" && value == "hibernating"
            ),
            "{err:?}"
        );
        assert!(matches!(
            store.get_vm(&VmId::new("vm-a").unwrap()),
            Err(StoreError::Decode { .. })
        ));
    }

    #[test]
    fn concurrent_puts_from_threads() {
        let (store, _dir) = fresh();
        let store = Arc::new(store);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let own = row(&format!("vm-{t}-{i:02}"), VmState::Ready, "{}");
                        store.put_vm(&own).unwrap();
                        // Every thread also fights over one shared row.
                        let shared = row("vm-shared", VmState::Running, &format!("{t}/{i}"));
                        store.put_vm(&shared).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let rows = store.list_vms().unwrap();
        assert_eq!(rows.len(), 8 * 25 + 1);
        let shared = store.get_vm(&VmId::new("vm-shared").unwrap()).unwrap();
        let last = shared.unwrap().record;
        assert!(
            last.ends_with("/24"),
            "last write of some thread wins: {last}"
        );
        assert_eq!(store.stats().unwrap().rows, table_rows(&[("vms", 201)]));
    }

    #[test]
    fn stats_count_the_wal() {
        let (store, _dir) = fresh();
        store
            .put_vm(&row("vm-a", VmState::Running, &"w".repeat(100_000)))
            .unwrap();
        let db = fs::metadata(store.path()).unwrap().len();
        let wal = fs::metadata(store.wal_path()).unwrap().len();
        assert!(wal > 100_000, "the row is still in the WAL");
        assert_eq!(store.stats().unwrap().size_bytes, Some(db + wal));
    }
}
