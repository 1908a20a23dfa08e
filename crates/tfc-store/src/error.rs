//! Why a store operation failed. Messages name the file and, where the user can
//! fix it, what to do; causes are in `#[source]`, printed once by
//! [`tfc_core::error_chain`] at the edge.

use std::io;
use std::path::PathBuf;

use rusqlite::ErrorCode;
use tfc_core::net::AllocError;
use tfc_core::VmId;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create {}", .path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "state database {} has schema version {found}, but this tfc supports versions up to \
         {supported}: run a newer tfc, or stop tfc and move the file aside, together with its \
         -wal and -shm files, to start with an empty store",
        .path.display()
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    #[error(
        "state database {} is damaged or is not a SQLite database: stop tfc and move the file \
         aside, together with its -wal and -shm files (keep them for inspection); tfc will then \
         start with an empty store and clean up the VMs that no record claims",
        .path.display()
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: Corruption,
    },

    #[error("the disk holding {} is full: free space on the data disk", .path.display())]
    DiskFull {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error(
        "cannot switch {} to write-ahead logging (SQLite kept journal mode {mode:?}): put the \
         data directory on a local filesystem",
        .path.display()
    )]
    JournalMode { path: PathBuf, mode: String },

    #[error("cannot read the size of {}", .path.display())]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// `kind` names the row: `"VM"` or `"snapshot"`.
    #[error("{kind} {id}: updated_at_ms {value} is larger than a store can hold")]
    TimestampOutOfRange {
        kind: &'static str,
        id: String,
        value: u64,
    },

    #[error(
        "row {key:?} of table {table} has {column} = {value:?}, which this tfc cannot read; \
         a newer tfc may have written it"
    )]
    Decode {
        table: &'static str,
        key: String,
        column: &'static str,
        value: String,
    },

    /// The allocator refused: the pool is exhausted, or it changed under
    /// held leases. The source says what to do.
    #[error("cannot lease an address block to VM {vm}")]
    Lease {
        vm: VmId,
        #[source]
        source: AllocError,
    },

    #[error("cannot {op}")]
    Sqlite {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
}

/// What showed that a database is damaged.
#[derive(Debug, thiserror::Error)]
pub enum Corruption {
    /// SQLite refused to read it (`SQLITE_NOTADB` or `SQLITE_CORRUPT`).
    #[error(transparent)]
    Sqlite(rusqlite::Error),
    /// `PRAGMA quick_check` reported problems (its first lines).
    #[error("quick_check: {0}")]
    QuickCheck(String),
}

impl StoreError {
    /// Sorts a SQLite error from operation `op` on the database at `path` into the
    /// variant that tells the user what to do.
    pub(crate) fn sqlite(
        path: &std::path::Path,
        op: &'static str,
        source: rusqlite::Error,
    ) -> Self {
        match source.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
                path: path.to_owned(),
                source: Corruption::Sqlite(source),
            },
            Some(ErrorCode::DiskFull) => StoreError::DiskFull {
                path: path.to_owned(),
                source,
            },
            _ => StoreError::Sqlite { op, source },
        }
    }
}
