//! What one durable write costs on this disk: times `put_vm` on a fresh SQLite
//! store (WAL, `synchronous=FULL`, so one fsync per put) and prints
//! min/median/max.
//!
//! `cargo run --release -p tfc-store --example put_latency -- [DIR] [PUTS]`
//! DIR defaults to a temporary directory under the current one (not /tmp, which
//! may be tmpfs, where fsync costs nothing); PUTS defaults to 200.

use std::time::{Duration, Instant};

use tfc_core::{VmId, VmState};
use tfc_store::{SqliteStore, Store, VmRow, STATE_DB_FILE};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = tempfile::Builder::new()
        .prefix("put-latency-")
        .tempdir_in(args.next().unwrap_or_else(|| ".".to_owned()))
        .expect("cannot create a temporary directory");
    let puts: usize = args
        .next()
        .map_or(200, |n| n.parse().expect("PUTS must be a number"));

    let store = SqliteStore::open(&dir.path().join(STATE_DB_FILE)).expect("open store");
    // A record of the size the daemon writes: a VM's spec, paths and timeline.
    let record = format!(
        r#"{{"spec":{{"vcpus":2,"mem_mib":512}},"pad":"{}"}}"#,
        "x".repeat(1500)
    );
    let mut times: Vec<Duration> = (0..puts)
        .map(|i| {
            let row = VmRow {
                // A few VMs changing state, as in real use: mostly overwrites.
                id: VmId::new(format!("vm-{:02}", i % 16)).unwrap(),
                state: VmState::ALL[i % VmState::ALL.len()],
                record: record.clone(),
                updated_at_ms: i as u64,
            };
            let start = Instant::now();
            store.put_vm(&row).expect("put_vm");
            start.elapsed()
        })
        .collect();
    times.sort();
    let Some((min, max)) = times.first().zip(times.last()) else {
        println!("no puts");
        return;
    };
    println!(
        "put_vm x{puts} in {}: min {min:?}, median {:?}, p90 {:?}, max {max:?}",
        dir.path().display(),
        times[times.len() / 2],
        times[times.len() * 9 / 10],
    );
}
