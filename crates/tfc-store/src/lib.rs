//! Durable state of the tfc daemon. The daemon writes every VM record here before
//! it acts on it and again after, so that a restarted daemon can reconcile what it
//! recorded with what is actually running; snapshot records are kept the same way.
//!
//! Layout:
//! - [`store`]: the [`Store`] trait, the rows it keeps ([`VmRow`], [`SnapshotRow`],
//!   [`NetObjectsRow`]; address leases are [`tfc_core::net::Lease`]s) and its [`StoreStats`].
//! - [`error`]: [`StoreError`], one enum for every backend, with messages that say what to do.
//! - [`memory`]: [`MemoryStore`], a map behind a mutex, for tests and `storage = "memory"`.
//! - [`sqlite`]: [`SqliteStore`], the default: one SQLite file in WAL mode, `synchronous=FULL`
//!   (its `net` part keeps address leases and network-object records).
//! - [`schema`]: the SQLite schema as an ordered list of migrations keyed on `user_version`.
//! - [`any`]: [`AnyStore`], the backend chosen by configuration ([`StoreKind`]).
//!
//! Every backend passes the same conformance suite (`conformance`, test builds only).

pub mod any;
pub mod error;
pub mod memory;
pub mod schema;
pub mod sqlite;
pub mod store;

#[cfg(test)]
mod conformance;

pub use any::{AnyStore, StoreKind};
pub use error::{Corruption, StoreError};
pub use memory::MemoryStore;
pub use schema::SCHEMA_VERSION;
pub use sqlite::{SqliteStore, STATE_DB_FILE};
pub use store::{NetObjectsRow, SnapshotRow, Store, StoreStats, VmRow, MAX_TIMESTAMP_MS};
