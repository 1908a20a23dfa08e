//! `tfc bench net`: a VM network's setup and teardown, from the pool of
//! ready slots and on demand, with a SQLite store for leases and records (as
//! the daemon's default). Runs entirely inside namespaces it creates and
//! removes (`tfc_net::bench`); needs root.

use anyhow::Context;
use tfc_core::net::{EgressRule, NetMode, PortForward, Protocol};
use tfc_net::bench::{self, BenchOptions};
use tfc_store::{MemoryStore, SqliteStore, Store, STATE_DB_FILE};

#[derive(Debug, clap::Args)]
pub struct NetArgs {
    /// Measured samples per path.
    #[arg(long, default_value_t = 50)]
    count: usize,
    /// Unmeasured samples per path first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// The VMs' mode: isolated or nat.
    #[arg(long, default_value = "isolated", value_parser = ["isolated", "nat"])]
    mode: String,
    /// Give each VM a one-rule egress allowlist (mode nat): one `nft` run more.
    #[arg(long)]
    allow: bool,
    /// Give each VM one port forward: one `nft` run more.
    #[arg(long)]
    forward: bool,
    /// Keep leases and records in memory instead of SQLite.
    #[arg(long)]
    memory: bool,
}

pub fn run(args: NetArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("tfc bench net makes namespaces, taps and nftables tables: run it as root");
    }
    let mut options = BenchOptions {
        count: args.count,
        warmup: args.warmup,
        ..BenchOptions::default()
    };
    options.config.mode = if args.mode == "nat" {
        NetMode::Nat
    } else {
        NetMode::Isolated
    };
    if args.allow {
        options.config.egress_allow = Some(vec![EgressRule {
            to: "192.0.2.0/24".parse().expect("a network"),
            protocol: Some(Protocol::Tcp),
            ports: vec!["443".parse().expect("a port")],
        }]);
    }
    if args.forward {
        options.config.port_forwards.push(PortForward {
            host_port: 8080,
            vm_port: 80,
            protocol: Protocol::Tcp,
        });
    }
    let dir = tempfile::tempdir().context("cannot create a scratch directory")?;
    let store: Box<dyn Store> = if args.memory {
        Box::new(MemoryStore::new())
    } else {
        Box::new(SqliteStore::open(&dir.path().join(STATE_DB_FILE))?)
    };
    let report = bench::run(&options, store.as_ref())?;
    println!("store: {}", if args.memory { "memory" } else { "sqlite" });
    println!("{report}");
    Ok(())
}
