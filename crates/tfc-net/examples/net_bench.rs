//! Measures a VM network's setup and teardown, from the slot pool and on
//! demand, with a SQLite store for leases and records (as the daemon's
//! default). Runs entirely inside namespaces it creates and removes; needs
//! root.
//!
//! ```sh
//! cargo run --release -p tfc-net --example net_bench -- [COUNT] [isolated|nat] [allow] [forward] [memory]
//! ```
//!
//! `allow` gives each VM a one-rule egress allowlist (mode nat), `forward`
//! one port forward; `memory` uses the in-memory store.

use std::process::ExitCode;

use tfc_core::net::{EgressRule, NetMode, PortForward, Protocol};
use tfc_net::bench::{self, BenchOptions};
use tfc_store::{MemoryStore, SqliteStore, Store, STATE_DB_FILE};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut options = BenchOptions::default();
    let mut memory = false;
    for arg in &args {
        match arg.as_str() {
            "isolated" => options.config.mode = NetMode::Isolated,
            "nat" => options.config.mode = NetMode::Nat,
            "allow" => {
                options.config.egress_allow = Some(vec![EgressRule {
                    to: "192.0.2.0/24".parse().expect("a network"),
                    protocol: Some(Protocol::Tcp),
                    ports: vec!["443".parse().expect("a port")],
                }])
            }
            "forward" => options.config.port_forwards.push(PortForward {
                host_port: 8080,
                vm_port: 80,
                protocol: Protocol::Tcp,
            }),
            "memory" => memory = true,
            n => match n.parse() {
                Ok(count) => options.count = count,
                Err(_) => {
                    eprintln!("usage: net_bench [COUNT] [isolated|nat] [allow] [forward] [memory]");
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
