//! Per-VM networks through the daemon: set up before a VM starts, shown in its
//! record, torn down when it ends, reconciled after a daemon dies.
//!
//! The tests with real networks need root, `/dev/net/tun`, `ip` and `nft`, so
//! they are `#[ignore]`d and run by the project's test command in its tier-1
//! pass; without what they need they say loudly that they did not run. They
//! work only inside namespaces they create (a stand-in for the host, which
//! the daemon is told to use as its host side, and one for the world), and
//! send traffic only to addresses inside them.

mod common;
#[path = "../../tfc-net/tests/common/mod.rs"]
mod net;

use std::path::Path;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use tfc_daemon::backend::{Backend, FakeBackend};
use tfc_daemon::config::{Config, ShutdownPolicy};
use tfc_daemon::manager::VmManager;
use tfc_net::Netns;
use tfc_store::{AnyStore, StoreKind};

/// The daemon's `[network]` section on the test's namespaces.
fn network_section(t: &net::TestNet) -> String {
    format!(
        "[network]\nenabled = true\nprefix = \"{}\"\nuplink = \"{}\"\nhost_netns = \"{}\"\n\
         ready_slots = 1\n",
        t.prefix,
        net::UPLINK,
        t.host_ns_name()
    )
}

/// A manager on `dir` with a SQLite store (so a second one can take over
/// after the first "dies"), networking on, recovered and reconciled as
/// `tfc serve` does.
async fn manager(config: &str, backend: Backend, dir: &Path) -> VmManager {
    let config = Config::parse(config, "network test").unwrap();
    let store = AnyStore::open(StoreKind::Sqlite, dir).unwrap();
    let manager = VmManager::new(backend, config, dir.to_owned(), store);
    manager.enable_network().unwrap();
    manager.recover().await.unwrap();
    manager.reconcile_network().await.unwrap();
    manager
}

fn fake() -> Backend {
    Backend::Fake(FakeBackend::new(Duration::from_millis(5)))
}

async fn send(app: &axum::Router, method: Method, uri: &str, body: Value) -> (StatusCode, Value) {
    let body = (!body.is_null()).then(|| body.to_string());
    common::send(app, method, uri, body.as_deref()).await
}

/// Namespaces of the test's prefix other than its own stand-ins.
fn vm_namespaces(t: &net::TestNet) -> Vec<String> {
    let own = [t.host_ns_name(), format!("{}-wan", t.prefix)];
    Netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{}-", t.prefix)) && !own.contains(n))
        .filter(|n| !n.contains("-g"))
        .collect()
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..250 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} did not happen within 5 s");
}

#[tokio::test]
async fn without_networking_a_vm_asking_for_a_network_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse("[daemon]\nbackend = \"fake\"\n", "test").unwrap();
    let app = tfc_daemon::api::router(VmManager::in_memory(fake(), config, dir.path().to_owned()));
    let (status, body) = send(
        &app,
        Method::POST,
        "/v1/vms",
        json!({"network": {"mode": "isolated"}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("network.enabled = true"),
        "{body}"
    );
    // Mode none is no network, and needs none.
    let (status, body) = send(
        &app,
        Method::POST,
        "/v1/vms",
        json!({"network": {"mode": "none"}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body.get("network").is_none(), "{body}");
    assert!(!body["spec"].to_string().contains("ip="), "{body}");
    let (status, body) = send(&app, Method::GET, "/v1/network", Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"enabled": false, "blocks": 0, "ready_slots": 0, "ready_slots_target": 0, "leases": []})
    );
    // A restore takes its snapshot's network: none may be asked for.
    let (status, body) = send(
        &app,
        Method::POST,
        "/v1/vms",
        json!({"from_snapshot": "x", "network": {"mode": "isolated"}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Bad network requests are refused with what to change.
    let (status, body) = send(
        &app,
        Method::POST,
        "/v1/vms",
        json!({"network": {"mode": "bridged"}}),
    )
    .await;
    assert!(status.is_client_error(), "{status} {body}");
}

/// Limits come from the VM type and the request, are checked, are changed
/// while the VM runs (each device given replaces that device's), and shown.
#[tokio::test]
async fn rate_limits_are_set_at_create_checked_and_changed_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(
        "[daemon]\nbackend = \"fake\"\n\
         [vm_types.default.rate_limits]\ndisk = { ops_per_sec = 500 }\n",
        "test",
    )
    .unwrap();
    let app = tfc_daemon::api::router(VmManager::in_memory(fake(), config, dir.path().to_owned()));
    let (status, vm) = send(
        &app,
        Method::POST,
        "/v1/vms",
        json!({"wait": true, "rate_limits": {"disk": {"bytes_per_sec": 1000000, "burst_bytes": 5000000}}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{vm}");
    // The request's disk limit replaced the type's.
    assert_eq!(
        vm["spec"]["rate_limits"],
        json!({"disk": {"bytes_per_sec": 1000000, "burst_bytes": 5000000}})
    );
    let id = vm["id"].as_str().unwrap();
    let uri = format!("/v1/vms/{id}/rate-limits");
    let (status, vm) = send(
        &app,
        Method::PATCH,
        &uri,
        json!({"disk": {"ops_per_sec": 100}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert_eq!(
        vm["spec"]["rate_limits"],
        json!({"disk": {"ops_per_sec": 100}})
    );
    for (body, needle) in [
        (json!({"disk": {"ops_per_sec": 0}}), "disk.ops_per_sec"),
        (json!({"net_rx": {"bytes_per_sec": 10}}), "need a network"),
        (json!({"disk": {"burst_bytes": 10}}), "burst_bytes"),
        (json!({"gpu": {}}), "gpu"),
    ] {
        let (status, err) = send(&app, Method::PATCH, &uri, body.clone()).await;
        assert!(status.is_client_error(), "{body}: {status} {err}");
        assert!(err.to_string().contains(needle), "{body}: {err}");
    }
    // An empty limit removes the device's.
    let (status, vm) = send(&app, Method::PATCH, &uri, json!({"disk": {}})).await;
    assert_eq!(status, StatusCode::OK, "{vm}");
    assert!(vm["spec"].get("rate_limits").is_none(), "{vm}");
    // Not on a stopped VM.
    send(
        &app,
        Method::POST,
        &format!("/v1/vms/{id}/stop"),
        Value::Null,
    )
    .await;
    let (status, err) = send(
        &app,
        Method::PATCH,
        &uri,
        json!({"disk": {"ops_per_sec": 1}}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    // Bad limits in a VM type are refused at start, naming the key.
    let err = Config::parse(
        "[vm_types.default.rate_limits]\nnet_tx = { bytes_per_sec = 5 }\n",
        "test",
    )
    .unwrap_err();
    let err = tfc_core::error_chain(&err);
    assert!(
        err.contains("vm_types.default.rate_limits") && err.contains("need a network"),
        "{err}"
    );
}

/// VMs of the fake backend (no VMM) with real networks: each gets its own
/// namespace, tap and address; a guest stand-in behind the tap answers at
/// that address; a stopped VM's network goes at once, a deleted VM's before
/// the delete answers; at shutdown nothing of ours is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "network lane: needs root, /dev/net/tun, ip and nft; run by the project's test command"]
async fn network_vms_get_their_own_network_and_leave_nothing() {
    if !net::lane("network_vms_get_their_own_network_and_leave_nothing") {
        return;
    }
    let t = net::TestNet::new();
    let before = t.inventory();
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[daemon]\nbackend = \"fake\"\n{}", network_section(&t));
    let manager = manager(&config, fake(), dir.path()).await;
    let app = tfc_daemon::api::router(manager.clone());

    let (status, a) = send(
        &app,
        Method::POST,
        "/v1/vms",
        json!({"network": {"mode": "nat"}, "wait": true}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    let (status, b) = send(
        &app,
        Method::POST,
        "/v1/vms",
        json!({"network": {"mode": "isolated",
            "port_forwards": [{"host_port": 8080, "vm_port": 80}]}, "wait": true}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    for vm in [&a, &b] {
        let network = &vm["network"];
        assert_eq!(network["guest_address"], "172.16.0.2", "{vm}");
        assert_eq!(network["guest_gateway"], "172.16.0.1", "{vm}");
        assert_eq!(network["tap"], "tap0", "{vm}");
        assert!(
            network["address"].as_str().unwrap().starts_with("10.200."),
            "{vm}"
        );
        // The kernel configures the guest's eth0 itself.
        assert!(
            vm["spec"]["boot_args"]
                .as_str()
                .unwrap()
                .contains("ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off"),
            "{vm}"
        );
    }
    assert_eq!(a["network"]["mode"], "nat");
    assert_eq!(b["network"]["port_forwards"][0]["host_port"], 8080);
    assert_ne!(a["network"]["address"], b["network"]["address"]);
    assert_ne!(a["network"]["namespace"], b["network"]["namespace"]);

    // The VM's namespace holds the tap the VMM would open, with the same
    // hardware address in every VM; a guest stand-in behind it answers the
    // host at the VM's address.
    let ns_a = a["network"]["namespace"].as_str().unwrap().to_owned();
    let tap = &net::ip_json(&ns_a, &["link", "show", "tap0"])[0];
    assert_eq!(tap["address"], "06:00:ac:10:00:01", "{tap}");
    let guest = t.guest(&Netns::open(&ns_a).unwrap());
    let addr_a: std::net::Ipv4Addr = a["network"]["address"].as_str().unwrap().parse().unwrap();
    net::ping(&t.host_ns, addr_a, net::REPLY).expect("the host reaches VM a");
    drop(guest);

    // A host port is held by one VM.
    let (status, c) = send(
        &app,
        Method::POST,
        "/v1/vms",
        json!({"network": {"mode": "isolated",
            "port_forwards": [{"host_port": 8080, "vm_port": 81}]}}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{c}");
    assert!(c["message"].as_str().unwrap().contains("8080"), "{c}");
    // An allowlist needs mode nat.
    let (status, c) = send(
        &app,
        Method::POST,
        "/v1/vms",
        json!({"network": {"mode": "isolated", "egress_allow": []}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{c}");

    let (_, status) = send(&app, Method::GET, "/v1/network", Value::Null).await;
    assert_eq!(status["enabled"], true, "{status}");
    assert_eq!(status["pool"], "10.200.0.0/16", "{status}");
    assert_eq!(status["leases"].as_array().unwrap().len(), 2, "{status}");

    // Stopped: the network goes (the record stays, without it).
    let id_a = a["id"].as_str().unwrap();
    let (status, stopped) = send(
        &app,
        Method::POST,
        &format!("/v1/vms/{id_a}/stop"),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{stopped}");
    assert!(stopped.get("network").is_none(), "{stopped}");
    eventually("VM a's namespace removed", || {
        !Netns::list().unwrap().contains(&ns_a)
    })
    .await;
    let (_, status) = send(&app, Method::GET, "/v1/network", Value::Null).await;
    assert_eq!(status["leases"].as_array().unwrap().len(), 1, "{status}");

    // Deleted: gone before the delete answers.
    let id_b = b["id"].as_str().unwrap();
    let ns_b = b["network"]["namespace"].as_str().unwrap().to_owned();
    let (status, _) = send(
        &app,
        Method::DELETE,
        &format!("/v1/vms/{id_b}?force=true"),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!Netns::list().unwrap().contains(&ns_b));

    manager.shutdown(ShutdownPolicy::Stop).await;
    assert_eq!(vm_namespaces(&t), Vec::<String>::new());
    assert_eq!(t.inventory(), before);
}

/// A pool of VMs with networks (fake VMMs, real networks): each waiting VM
/// was restored from the template with a network of its own; an acquired
/// one keeps it; a released one's goes; the pool's replacements get new
/// ones; nothing is left at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "network lane: needs root, /dev/net/tun, ip and nft; run by the project's test command"]
async fn network_pooled_vms_have_networks_of_their_own() {
    if !net::lane("network_pooled_vms_have_networks_of_their_own") {
        return;
    }
    let t = net::TestNet::new();
    let before = t.inventory();
    let dir = tempfile::tempdir().unwrap();
    let (kernel, rootfs) = common::tiny_assets(dir.path());
    let config = format!(
        "[daemon]\nbackend = \"fake\"\n{}\
         [vm_types.default]\nkernel = {:?}\nrootfs = {:?}\nboot_args = \"console=ttyS0\"\n\
         network = \"nat\"\n[vm_types.default.pool]\ntarget = 2\n",
        network_section(&t),
        kernel,
        rootfs,
    );
    let manager = manager(&config, fake(), dir.path()).await;
    manager.start_pools();
    let app = tfc_daemon::api::router(manager.clone());
    let waiting = || {
        let manager = manager.clone();
        move || {
            manager
                .list()
                .iter()
                .filter(|vm| {
                    vm.pool.as_ref().is_some_and(|s| s.acquired_at_ms.is_none())
                        && vm.state.as_str() == "paused"
                })
                .count()
        }
    };
    let count = waiting();
    for _ in 0..500 {
        if count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(), 2, "the pool filled");
    let (status, acquired) = send(&app, Method::POST, "/v1/pools/default/acquire", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{acquired}");
    let vm = &acquired["vm"];
    assert_eq!(vm["network"]["mode"], "nat", "{vm}");
    let namespace = vm["network"]["namespace"].as_str().unwrap().to_owned();
    assert!(Netns::list().unwrap().contains(&namespace));
    let guest = t.guest(&Netns::open(&namespace).unwrap());
    let address: std::net::Ipv4Addr = vm["network"]["address"].as_str().unwrap().parse().unwrap();
    net::ping(&t.host_ns, address, net::REPLY).expect("the host reaches the acquired VM");
    drop(guest);
    // Every VM, waiting or handed out, has its own address.
    let addresses: std::collections::BTreeSet<String> = manager
        .list()
        .iter()
        .filter(|vm| !vm.template_build)
        .filter_map(|vm| vm.network.as_ref().map(|n| n.address.to_string()))
        .collect();
    let live = manager
        .list()
        .iter()
        .filter(|vm| !vm.state.is_terminal() && !vm.template_build)
        .count();
    assert_eq!(addresses.len(), live, "{addresses:?}");

    let id = vm["id"].as_str().unwrap();
    let (status, _) = send(
        &app,
        Method::POST,
        &format!("/v1/vms/{id}/release"),
        Value::Null,
    )
    .await;
    assert!(status.is_success(), "{status}");
    assert!(!Netns::list().unwrap().contains(&namespace));
    for _ in 0..500 {
        if count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(), 2, "the pool refilled");

    manager.shutdown(ShutdownPolicy::Stop).await;
    assert_eq!(vm_namespaces(&t), Vec::<String>::new());
    assert_eq!(t.inventory(), before);
}

/// A daemon that dies leaves VM networks, their records and a ready slot;
/// the next one finds its VMs gone, and removes all of it at start.
#[test]
#[ignore = "network lane: needs root, /dev/net/tun, ip and nft; run by the project's test command"]
fn network_a_restarted_daemon_removes_what_a_dead_one_left() {
    if !net::lane("network_a_restarted_daemon_removes_what_a_dead_one_left") {
        return;
    }
    let t = net::TestNet::new();
    let before = t.inventory();
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[daemon]\nbackend = \"fake\"\n{}", network_section(&t));

    // The first daemon, on a runtime of its own that is then dropped: its
    // tasks end mid-flight, as a killed process's would.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let namespaces = runtime.block_on(async {
        let manager = manager(&config, fake(), dir.path()).await;
        let app = tfc_daemon::api::router(manager.clone());
        for mode in ["nat", "isolated"] {
            let (status, vm) = send(
                &app,
                Method::POST,
                "/v1/vms",
                json!({"network": {"mode": mode}, "wait": true}),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{vm}");
        }
        // The ready slot that replaces the taken ones.
        eventually("a ready slot", || vm_namespaces(&t).len() >= 3).await;
        vm_namespaces(&t)
    });
    drop(runtime);
    assert!(namespaces.len() >= 3, "{namespaces:?}");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let manager = manager(&config, fake(), dir.path()).await;
        // The ready slot went at start. The VMs' VMMs are gone: once the
        // re-adoption finds that (its own task), they are failed and their
        // networks go. Nothing of the dead daemon is left.
        let app = tfc_daemon::api::router(manager.clone());
        let (_, list) = send(&app, Method::GET, "/v1/vms", Value::Null).await;
        assert_eq!(list["vms"].as_array().unwrap().len(), 2, "{list}");
        eventually("the dead daemon's networks removed", || {
            vm_namespaces(&t).iter().all(|n| !namespaces.contains(n))
        })
        .await;
        let (_, list) = send(&app, Method::GET, "/v1/vms", Value::Null).await;
        for vm in list["vms"].as_array().unwrap() {
            assert_eq!(vm["state"], "failed", "{vm}");
            assert!(vm.get("network").is_none(), "{vm}");
        }
        let (_, status) = send(&app, Method::GET, "/v1/network", Value::Null).await;
        assert_eq!(status["leases"], json!([]), "{status}");
        manager.shutdown(ShutdownPolicy::Stop).await;
    });
    assert_eq!(vm_namespaces(&t), Vec::<String>::new());
    assert_eq!(t.inventory(), before);
}

/// Real Firecracker VMs with networks: the guest kernel, configured by the
/// `ip=` boot argument (no guest userspace needed), answers the host at the
/// VM's address; two VMs restored from one snapshot (same guest address and
/// hardware addresses, each in its own namespace) answer at theirs; nothing
/// is left afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tier 1: needs KVM, firecracker, built assets and root; run by the project's test command"]
async fn network_real_vms_and_their_clones_answer_at_their_addresses() {
    if !net::lane("network_real_vms_and_their_clones_answer_at_their_addresses") {
        return;
    }
    let manifest = common::tier1::assets();
    let t = net::TestNet::new();
    let before = t.inventory();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[firecracker]\nbinary = {:?}\njailer = false\nboot_timeout_secs = 240\nstop_grace_ms = 1000\n\
         {}\
         [vm_types.default]\nkernel = {:?}\nrootfs = {:?}\nboot_args = {:?}\nnetwork = \"isolated\"\n\
         [vm_types.default.rate_limits]\nnet_rx = {{ bytes_per_sec = 1000000 }}\n\
         disk = {{ ops_per_sec = 1000 }}\n",
        manifest.firecracker.path,
        network_section(&t),
        manifest.kernel.vmlinux,
        manifest.rootfs.path,
        manifest.boot_args,
    );
    let parsed = Config::parse(&config, "network test").unwrap();
    let backend = tfc_daemon::build_backend(&parsed, dir.path()).unwrap();
    let manager = manager(&config, backend, dir.path()).await;
    let app = tfc_daemon::api::router(manager.clone());

    let (status, vm) = send(&app, Method::POST, "/v1/vms", json!({"wait": true})).await;
    assert_eq!(status, StatusCode::CREATED, "{vm}");
    assert_eq!(vm["state"], "ready", "{vm}");
    let id = vm["id"].as_str().unwrap().to_owned();
    let address: std::net::Ipv4Addr = vm["network"]["address"].as_str().unwrap().parse().unwrap();
    // The VMM runs inside the VM's namespace.
    let pid = vm["pid"].as_u64().unwrap();
    let own = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let ns_path = format!(
        "/run/netns/{}",
        vm["network"]["namespace"].as_str().unwrap()
    );
    let ns_inode = std::fs::metadata(&ns_path).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        own.to_string_lossy(),
        format!("net:[{}]", ns_inode.ino()),
        "firecracker {pid} is in the VM's namespace"
    );
    net::ping(&t.host_ns, address, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("the guest kernel answers at {address}: {e}"));

    // The type's limits are the VMM's, and change while the guest runs.
    let workdir = Path::new(vm["workdir"].as_str().unwrap());
    let api = tfc_firecracker::ApiClient::new(workdir.join(tfc_firecracker::process::API_SOCKET));
    let config = api.vm_config().await.unwrap();
    let nic = &config["network-interfaces"][0];
    assert_eq!(nic["host_dev_name"], "tap0", "{config}");
    assert_eq!(nic["guest_mac"], "06:00:ac:10:00:02", "{config}");
    assert_eq!(
        nic["rx_rate_limiter"]["bandwidth"]["size"], 1_000_000,
        "{config}"
    );
    assert_eq!(
        config["drives"][0]["rate_limiter"]["ops"]["size"], 1000,
        "{config}"
    );
    let (status, limited) = send(
        &app,
        Method::PATCH,
        &format!("/v1/vms/{id}/rate-limits"),
        json!({"net_tx": {"ops_per_sec": 2000}, "disk": {}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{limited}");
    assert_eq!(
        limited["spec"]["rate_limits"],
        json!({"net_rx": {"bytes_per_sec": 1000000}, "net_tx": {"ops_per_sec": 2000}})
    );
    let config = api.vm_config().await.unwrap();
    let nic = &config["network-interfaces"][0];
    assert_eq!(nic["tx_rate_limiter"]["ops"]["size"], 2000, "{config}");
    assert_eq!(
        nic["rx_rate_limiter"]["bandwidth"]["size"], 1_000_000,
        "{config}"
    );
    let disk_ops = &config["drives"][0]["rate_limiter"]["ops"];
    assert!(
        disk_ops.is_null() || disk_ops["size"] == 0,
        "the disk's limit is gone: {config}"
    );

    // Clones: same guest inside, a distinct address outside, both answer.
    let (status, snapshot) = send(
        &app,
        Method::POST,
        &format!("/v1/vms/{id}/snapshots"),
        json!({"kind": "full"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{snapshot}");
    let snapshot_id = snapshot["id"].as_str().unwrap();
    assert!(
        snapshot["manifest"]["devices"]
            .to_string()
            .contains("\"host_dev_name\":\"tap0\""),
        "{snapshot}"
    );
    // The snapshotted VM runs on with its limits and its network.
    net::ping(&t.host_ns, address, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the snapshotted guest still answers at {address}: {e}"));
    let config = api.vm_config().await.unwrap();
    assert_eq!(
        config["network-interfaces"][0]["rx_rate_limiter"]["bandwidth"]["size"], 1_000_000,
        "{config}"
    );
    let mut clones = Vec::new();
    for _ in 0..2 {
        let (status, clone) = send(
            &app,
            Method::POST,
            "/v1/vms",
            json!({"from_snapshot": snapshot_id}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{clone}");
        clones.push(clone);
    }
    assert_ne!(
        clones[0]["network"]["address"],
        clones[1]["network"]["address"]
    );
    for clone in &clones {
        let address: std::net::Ipv4Addr = clone["network"]["address"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        // On this nested-KVM host a restored guest kernel answers only a
        // while after its restore: 3 s to 149 s measured here, and then
        // both clones at once (whichever is asked first waits, the other
        // answers within 0.2 s), with or without limits. The tap and the
        // namespace exist when the restore answers; the wait is the
        // restored guest's, and why is not known yet. Hence the long bound.
        let took = net::ping(&t.host_ns, address, Duration::from_secs(300))
            .unwrap_or_else(|e| panic!("clone {} answers at {address}: {e}", clone["id"]));
        eprintln!("clone {} answered after {took:?}", clone["id"]);
        // Its limits are its spec's, given to its VMM after the resume.
        assert_eq!(clone["spec"]["rate_limits"], limited["spec"]["rate_limits"]);
        let workdir = Path::new(clone["workdir"].as_str().unwrap());
        let api =
            tfc_firecracker::ApiClient::new(workdir.join(tfc_firecracker::process::API_SOCKET));
        let config = api.vm_config().await.unwrap();
        let nic = &config["network-interfaces"][0];
        assert_eq!(
            nic["rx_rate_limiter"]["bandwidth"]["size"], 1_000_000,
            "{config}"
        );
        assert_eq!(nic["tx_rate_limiter"]["ops"]["size"], 2000, "{config}");
    }

    manager.shutdown(ShutdownPolicy::Stop).await;
    assert_eq!(
        common::tier1::firecrackers_under(dir.path()),
        Vec::<u64>::new()
    );
    assert_eq!(vm_namespaces(&t), Vec::<String>::new());
    assert_eq!(t.inventory(), before);
}
