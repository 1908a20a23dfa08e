//! Tier 1: a pool on the real `firecracker` binary. One guest boots (the
//! template); everything else is restores: a pool of 3 hot VMs (restored,
//! paused) and 1 running VM, 50 acquire/release cycles, health checks that
//! ask the VMM for its state and the running guest's kernel over vsock, a
//! waiting VMM killed from outside and replaced, and nothing left behind
//! afterwards: no process, no directory.
//!
//! `#[ignore]`d like every tier-1 test: the project's test command runs it
//! where the host can.

mod common;

use common::tier1::{alive, firecrackers_under};

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use tfc_daemon::config::{Config, ShutdownPolicy};
use tfc_daemon::manager::VmManager;
use tfc_firecracker::models::InstanceState;

struct Daemon {
    app: axum::Router,
    manager: VmManager,
    dir: tempfile::TempDir,
}

fn daemon() -> Daemon {
    let manifest = common::tier1::assets();
    let dir = tempfile::tempdir().unwrap();
    // Hot target 3 and one running VM: the running one spins a core on a
    // nested-KVM host, so no more than one.
    let config = format!(
        "[firecracker]\nbinary = {:?}\njailer = false\nboot_timeout_secs = 240\nstop_grace_ms = 1000\n\
         [vm_types.default]\nkernel = {:?}\nrootfs = {:?}\nboot_args = {args:?}\n\
         [vm_types.default.pool]\ntarget = 3\nrunning = 1\nhealth_interval_ms = 500\n\
         tiers = [\"running\", \"hot\"]\n",
        manifest.firecracker.path,
        manifest.kernel.vmlinux,
        manifest.rootfs.path,
        args = manifest.boot_args,
    );
    let config = Config::parse(&config, "tier-1 test").unwrap();
    let backend = tfc_daemon::build_backend(&config, dir.path()).unwrap();
    let manager = VmManager::in_memory(backend, config, dir.path().to_owned());
    manager.start_pools();
    Daemon {
        app: tfc_daemon::api::router(manager.clone()),
        manager,
        dir,
    }
}

impl Daemon {
    async fn send(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        common::send(&self.app, method, uri, body.as_deref()).await
    }

    async fn pool(&self) -> Value {
        self.send(Method::GET, "/v1/pools/default", None).await.1
    }

    /// Waits until the pool satisfies `done`, at most `limit`.
    async fn until(&self, what: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let started = std::time::Instant::now();
        loop {
            let pool = self.pool().await;
            if done(&pool) {
                return pool;
            }
            assert!(
                started.elapsed() < limit,
                "pool never reached {what} in {limit:?}: {pool}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn full(&self, limit: Duration) -> Value {
        self.until("full", limit, |p| {
            p["sizes"]["hot"] == 3 && p["sizes"]["running"] == 1 && p["sizes"]["starting"] == 0
        })
        .await
    }
}

/// What the VMM itself says about its guest.
/// The scheduling policies the threads of process `pid` run under, each
/// once.
fn policies(pid: u64) -> Vec<i32> {
    let mut seen = std::collections::BTreeSet::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid: i32 = task.unwrap().file_name().to_str().unwrap().parse().unwrap();
        // SAFETY: sched_getscheduler only reads the scheduler's state.
        seen.insert(unsafe { libc::sched_getscheduler(tid) });
    }
    seen.into_iter().collect()
}

async fn vmm_state(vm: &Value) -> InstanceState {
    let socket = Path::new(vm["workdir"].as_str().unwrap()).join("api.sock");
    tfc_firecracker::ApiClient::new(socket)
        .describe_instance()
        .await
        .unwrap()
        .state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tier 1: needs KVM, firecracker and built assets; run by the project's test command"]
async fn a_pool_serves_fifty_cycles_and_leaves_nothing_behind() {
    let d = daemon();
    // The template is built first (one boot), then the pool fills by
    // restoring it.
    let pool = d.full(Duration::from_secs(300)).await;
    eprintln!("pool full: {pool}");
    let (_, list) = d.send(Method::GET, "/v1/vms", None).await;
    for vm in list["vms"].as_array().unwrap() {
        let expected = match vm["pool"]["tier"].as_str() {
            Some("hot") => InstanceState::Paused,
            Some("running") => InstanceState::Running,
            other => panic!("unexpected VM outside the pool ({other:?}): {vm}"),
        };
        assert_eq!(vmm_state(vm).await, expected, "{vm}");
        // Firecracker's seccomp filters are on: every thread of the VMM
        // (main, API, vCPUs) runs under a filter. And a waiting VM runs at
        // idle CPU priority, every thread of it (the tests run as root,
        // which can give it normal priority back).
        let pid = vm["pid"].as_u64().unwrap();
        assert_eq!(policies(pid), vec![libc::SCHED_IDLE], "{vm}");
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
            assert!(
                status.lines().any(|l| l == "Seccomp:\t2"),
                "a firecracker thread without a seccomp filter: {status}"
            );
        }
    }
    // The guest probe is not vacuous: the running guest's kernel refuses a
    // connection at once; a paused guest cannot answer, and the VMM's own
    // timeout closing the request is not taken for a refusal.
    for vm in list["vms"].as_array().unwrap() {
        let uds = Path::new(vm["workdir"].as_str().unwrap()).join("vsock.sock");
        let running = vm["pool"]["tier"] == "running";
        let wait = Duration::from_secs(if running { 10 } else { 3 });
        let answer = tfc_firecracker::vsock::probe(&uds, 52, wait).await;
        match vm["pool"]["tier"].as_str() {
            Some("running") => assert!(
                matches!(answer, Ok(tfc_firecracker::vsock::ProbeAnswer::Refused)),
                "running guest: {answer:?}"
            ),
            _ => assert!(answer.is_err(), "paused guest answered: {answer:?}"),
        }
    }
    // Health checks ran (every 500 ms) on real VMMs, and the running
    // guest's kernel answered on vsock: nothing was replaced.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pool = d.pool().await;
    assert_eq!(pool["stats"]["replaced_unhealthy"], 0, "{pool}");

    let mut handed = HashSet::new();
    let mut tiers = std::collections::BTreeMap::<String, u32>::new();
    for cycle in 0..50 {
        let (status, got) = d
            .send(
                Method::POST,
                "/v1/pools/default/acquire",
                Some(json!({"wait_ms": 30_000})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "cycle {cycle}: {got}");
        let vm = &got["vm"];
        let id = vm["id"].as_str().unwrap().to_owned();
        assert!(handed.insert(id.clone()), "{id} handed out twice");
        assert_eq!(vm["state"], "running");
        assert_eq!(vmm_state(vm).await, InstanceState::Running, "{vm}");
        // At normal priority, every thread of it, a moment after the
        // answer (its vCPUs wait idle until the answer is out).
        let pid = vm["pid"].as_u64().unwrap();
        let mut settled = false;
        for _ in 0..100 {
            if policies(pid) == vec![libc::SCHED_OTHER] {
                settled = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(settled, "{vm}: policies {:?}", policies(pid));
        *tiers
            .entry(got["tier"].as_str().unwrap().to_owned())
            .or_default() += 1;
        let pid = vm["pid"].as_u64().unwrap();
        let (status, body) = d
            .send(Method::POST, &format!("/v1/vms/{id}/release"), None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        assert!(!alive(pid), "firecracker {pid} survived its release");
        assert!(!Path::new(vm["workdir"].as_str().unwrap()).exists());
    }
    eprintln!("tiers that served: {tiers:?}");
    // Every VMM wrote its counters (the template's boot and each released
    // clone flushed theirs when stopped); the daemon summed them.
    let text = tfc_daemon::metrics::render(&d.manager);
    let counter = |name: &str| -> f64 {
        let series = format!("tfc_firecracker_{name}_total{{vm_type=\"default\"}} ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&series))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        line[series.len()..].parse().unwrap()
    };
    for line in text.lines().filter(|l| l.starts_with("tfc_firecracker_")) {
        eprintln!("{line}");
    }
    // The template's guest wrote its boot log to the serial port.
    assert!(counter("vcpu_exit_io_out") > 0.0);
    // Its kernel read its root filesystem.
    assert!(counter("block_read_bytes") > 0.0);
    // The running guests' virtio queues were notified (vsock probes).
    assert!(counter("vcpu_exit_mmio_write") > 0.0);
    let pool = d.full(Duration::from_secs(60)).await;
    eprintln!("after 50 cycles: {}", pool["stats"]);
    assert_eq!(pool["stats"]["acquires"], 50);
    assert_eq!(pool["stats"]["unserved"], 0);

    // A waiting VMM killed from outside is found and replaced.
    let (_, list) = d.send(Method::GET, "/v1/vms", None).await;
    let victim = list["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|vm| vm["pool"]["tier"] == "hot")
        .unwrap()
        .clone();
    let pid = victim["pid"].as_u64().unwrap();
    // SAFETY: plain kill(2) of a firecracker this test's daemon started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let pool = d
        .until("the killed VM replaced", Duration::from_secs(30), |p| {
            p["stats"]["replaced_unhealthy"].as_u64() >= Some(1)
                && p["sizes"]["hot"] == 3
                && p["sizes"]["starting"] == 0
        })
        .await;
    eprintln!("after the kill: {}", pool["stats"]);
    let (status, _) = d
        .send(
            Method::GET,
            &format!("/v1/vms/{}", victim["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Shut down: every waiting VM goes; nothing is left.
    d.manager.shutdown(ShutdownPolicy::LeaveRunning).await;
    assert!(d.manager.list().is_empty(), "{:?}", d.manager.list());
    let left = firecrackers_under(d.dir.path());
    assert!(left.is_empty(), "firecracker processes left: {left:?}");
    let dirs = std::fs::read_dir(d.dir.path().join("vms"))
        .map(|e| e.count())
        .unwrap_or(0);
    assert_eq!(dirs, 0, "VM directories left");
}
