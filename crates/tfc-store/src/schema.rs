//! The SQLite schema, as an ordered list of migrations. `PRAGMA user_version` holds
//! the number of migrations applied; opening a database applies the missing ones,
//! each in its own transaction together with the version bump, so a crash leaves
//! the database at one version or the next, never between.
//!
//! To add a table: append a step to [`MIGRATIONS`]
//! and the table's name to [`TABLES`]. Never edit a step that has shipped: databases
//! in the field have already run it.

use rusqlite::{Connection, TransactionBehavior};

/// One schema change: plain SQL, run as a batch.
#[derive(Debug)]
pub struct Migration {
    /// What the step does, for the log.
    pub summary: &'static str,
    pub sql: &'static str,
}

/// Step `i` takes a database from version `i` to version `i + 1`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        summary: "create vms and meta",
        sql: "
        CREATE TABLE vms (
            id            TEXT    NOT NULL PRIMARY KEY,
            state         TEXT    NOT NULL,
            record        TEXT    NOT NULL,
            updated_at_ms INTEGER NOT NULL
        ) STRICT;
        -- Facts about the store itself, e.g. last_write_ms.
        CREATE TABLE meta (
            key   TEXT NOT NULL PRIMARY KEY,
            value ANY
        ) STRICT;
    ",
    },
    Migration {
        summary: "create snapshots",
        sql: "
        CREATE TABLE snapshots (
            id            TEXT    NOT NULL PRIMARY KEY,
            record        TEXT    NOT NULL,
            updated_at_ms INTEGER NOT NULL
        ) STRICT;
    ",
    },
    Migration {
        summary: "create net_leases, net_released and net_objects",
        sql: "
        -- One row per VM holding a block of the address pool; block is the
        -- block's index in the pool named by meta.net_pool.
        CREATE TABLE net_leases (
            block        INTEGER NOT NULL PRIMARY KEY,
            vm_id        TEXT    NOT NULL UNIQUE,
            leased_at_ms INTEGER NOT NULL
        ) STRICT;
        -- Blocks handed out once and given back, reused lowest seq first.
        -- Together with net_leases and meta.net_next_fresh this is the whole
        -- allocator state (tfc_core::net::AddressAllocator).
        CREATE TABLE net_released (
            seq   INTEGER NOT NULL PRIMARY KEY,
            block INTEGER NOT NULL UNIQUE
        ) STRICT;
        -- Network objects made for a VM, seq in creation order.
        CREATE TABLE net_objects (
            vm_id     TEXT    NOT NULL,
            seq       INTEGER NOT NULL,
            kind      TEXT    NOT NULL,
            name      TEXT    NOT NULL,
            namespace TEXT,
            PRIMARY KEY (vm_id, seq)
        ) STRICT;
    ",
    },
];

/// The schema version this build writes and the newest it can read.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Tables whose row counts [`crate::StoreStats`] reports, in report order: every
/// table the migrations create except `meta` (a test holds the two together).
pub const TABLES: &[&str] = &[
    "vms",
    "snapshots",
    "net_leases",
    "net_released",
    "net_objects",
];

/// `meta` key of the wall-clock time of the last write, see [`crate::StoreStats`].
pub(crate) const META_LAST_WRITE_MS: &str = "last_write_ms";
/// `meta` key of the address pool the leases are in (`10.200.0.0/16`); absent
/// until the first lease.
pub(crate) const META_NET_POOL: &str = "net_pool";
/// `meta` key of the lowest block of the pool never handed out.
pub(crate) const META_NET_NEXT_FRESH: &str = "net_next_fresh";

pub(crate) fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Applies the migrations after `from`. The caller has checked `from <= SCHEMA_VERSION`.
pub(crate) fn migrate(conn: &mut Connection, from: u32) -> rusqlite::Result<()> {
    for (index, step) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        let to = index as u32 + 1;
        // IMMEDIATE: take the write lock before reading, so two openers cannot
        // both decide to run the same step.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = user_version(&tx)?;
        if current >= to {
            continue;
        }
        tx.execute_batch(step.sql)?;
        tx.pragma_update(None, "user_version", to)?;
        tx.commit()?;
        tracing::info!(version = to, step = step.summary, "migrated state database");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_is_created_by_a_migration() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, 0).unwrap();
        assert_eq!(user_version(&conn).unwrap(), SCHEMA_VERSION);
        for table in TABLES {
            let n: u64 = conn
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 0, "{table}");
        }
    }

    #[test]
    fn every_migrated_table_is_counted_in_stats() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, 0).unwrap();
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name != 'meta' ORDER BY name")
            .unwrap();
        let mut created: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        created.sort();
        let mut listed: Vec<&str> = TABLES.to_vec();
        listed.sort();
        assert_eq!(created, listed);
    }

    #[test]
    fn migrating_from_version_1_runs_only_the_later_steps() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0].sql).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO vms (id, state, record, updated_at_ms) VALUES ('vm-a', 'ready', '{}', 1)",
            [],
        )
        .unwrap();
        migrate(&mut conn, 1).unwrap();
        assert_eq!(user_version(&conn).unwrap(), SCHEMA_VERSION);
        let count = |table: &str| -> u64 {
            conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!((count("vms"), count("snapshots")), (1, 0));
    }

    #[test]
    fn migrating_twice_is_a_no_op() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, 0).unwrap();
        migrate(&mut conn, 0).unwrap();
        migrate(&mut conn, SCHEMA_VERSION).unwrap();
        assert_eq!(user_version(&conn).unwrap(), SCHEMA_VERSION);
    }
}
