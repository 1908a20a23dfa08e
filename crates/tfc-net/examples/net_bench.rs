//! Measures a VM network's setup and teardown, from the slot pool and on
//! demand, with a SQLite store for leases and records (as the daemon's
//! default). Runs entirely inside namespaces it creates and removes; needs
//! root.
//!
//! ```sh
//! cargo run --release -p tfc-net --example net_bench -- [COUNT] [isolated|nat] [memory]
//! ```

use std::process::ExitCode;

use tfc_core::net::NetMode;
use tfc_net::bench::{self, BenchOptions};
use tfc_store::{MemoryStore, SqliteStore, Store, STATE_DB_FILE};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut options = BenchOptions::default();
    let mut memory = false;
    for arg in &args {
        match arg.as_str() {
            "isolated" => options.mode = NetMode::Isolated,
            "nat" => options.mode = NetMode::Nat,
            "memory" => memory = true,
            n => match n.parse() {
                Ok(count) => options.count = count,
                Err(_) => {
                    eprintln!("usage: net_bench [COUNT] [isolated|nat] [memory]");
                    return ExitCode::from(2);
                }
            },
        }
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let store: Box<dyn Store> = if memory {
        Box::new(MemoryStore::new())
    } else {
        Box::new(SqliteStore::open(&dir.path().join(STATE_DB_FILE)).expect("a SQLite store"))
    };
    match bench::run(&options, store.as_ref()) {
        Ok(report) => {
            println!("store: {}", if memory { "memory" } else { "sqlite" });
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("net_bench: {}", tfc_core::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}
