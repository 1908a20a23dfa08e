//! The qemu-tcg lane: the daemon's router driving real QEMU (`microvm`, TCG)
//! and vhost-device-vsock on this host, booting the built bzImage and root
//! image to guest userspace (`init=/init.sh`, which prints GUEST-READY).
//!
//! `#[ignore]`d like every real-VMM test: the project's test command runs
//! them with `--ignored` where `tfc doctor` reports the qemu-tcg backend
//! usable. Run by hand with
//! `cargo test -p tfc-daemon --test qemu -- --ignored --test-threads=1`.
//! When QEMU, vhost-device-vsock or the assets are missing, each test says
//! loudly that it did not run, or fails with `TFC_REQUIRE_TIER1=1`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::Value;
use tfc_core::Vmm;
use tfc_daemon::backend::{Backend, Vmms};
use tfc_daemon::config::{Config, ShutdownPolicy};
use tfc_daemon::manager::VmManager;
use tfc_store::{AnyStore, StoreKind};

use common::tier1::{alive, qemu_processes_under};

/// Boot arguments of the lane's VM type: the built kernel's console, and
/// the root image's busybox init script, which reports readiness.
const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off 8250.nr_uarts=1 init=/init.sh";
const READY_LINE: &str = "GUEST-READY";

struct Daemon {
    app: axum::Router,
    manager: VmManager,
}

/// A config whose default VM type runs on qemu-tcg (the daemon's backend)
/// with the kernel left to the daemon: it must pick the assets' bzImage.
fn config() -> Config {
    let text = format!(
        "[daemon]\nbackend = \"qemu-tcg\"\n[qemu]\nboot_timeout_secs = 120\nstop_grace_ms = 2000\n\
         [vm_types.default]\nmemory_mib = 128\nboot_args = {BOOT_ARGS:?}\nreadiness_line = {READY_LINE:?}\n"
    );
    Config::parse(&text, "qemu lane").unwrap()
}

/// A data directory holding the built assets' manifest (its paths point at
/// the built kernel and rootfs).
fn data_dir(manifest: &tfc_host::assets::Manifest) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = tfc_host::assets::manifest_path(dir.path());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_vec(manifest).unwrap()).unwrap();
    dir
}

fn daemon(dir: &Path, store: AnyStore) -> Daemon {
    let config = config();
    let backend = tfc_daemon::build_backend(&config, dir).unwrap();
    let manager = VmManager::new(backend, config, dir.to_owned(), store);
    Daemon {
        app: tfc_daemon::api::router(manager.clone()),
        manager,
    }
}

impl Daemon {
    async fn send(&self, method: Method, uri: &str, body: Option<&str>) -> (StatusCode, Value) {
        common::send(&self.app, method, uri, body).await
    }

    async fn op(&self, id: &str, op: &str, want: &str) -> Value {
        let (status, vm) = self
            .send(Method::POST, &format!("/v1/vms/{id}/{op}"), None)
            .await;
        assert_eq!(
            (status, vm["state"].as_str()),
            (StatusCode::OK, Some(want)),
            "{op}: {vm}"
        );
        vm
    }

    async fn wait_for(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..3000 {
            let (_, vm) = self.send(Method::GET, &format!("/v1/vms/{id}"), None).await;
            if done(&vm) {
                return vm;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (_, vm) = self.send(Method::GET, &format!("/v1/vms/{id}"), None).await;
        panic!("VM {id} did not get there: {vm}");
    }
}

fn ready_ms(vm: &Value) -> f64 {
    vm["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["phase"] == "ready")
        .map(|m| m["at_us"].as_f64().unwrap() / 1000.0)
        .unwrap_or_else(|| panic!("no ready phase in {vm}"))
}

fn qmp(vm: &Value) -> tfc_qemu::QmpClient {
    let workdir = PathBuf::from(vm["workdir"].as_str().unwrap());
    tfc_qemu::QmpClient::new(
        workdir.join(tfc_qemu::command::QMP_SOCKET),
        Duration::from_secs(10),
    )
}

/// Asks the guest's kernel for a vsock connection through the same socket
/// and handshake as a Firecracker VM's: nothing listens on the port, so a
/// live kernel refuses at once.
async fn vsock_answers(vm: &Value) {
    let uds = PathBuf::from(vm["workdir"].as_str().unwrap())
        .join(tfc_firecracker::vm_config::VSOCK_SOCKET);
    let answer = tfc_firecracker::vsock::probe(&uds, 52, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("vsock probe: {}", tfc_core::error_chain(&e)));
    assert_eq!(answer, tfc_firecracker::vsock::ProbeAnswer::Refused);
}

/// Boots two VMs at once. One goes through its whole life (pause, resume,
/// vsock, snapshot refused, stop, delete); the other has its QEMU killed
/// from outside and must end Failed, its vsock backend gone with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "qemu-tcg lane: needs qemu-system-x86_64, vhost-device-vsock and built assets; run by the project's test command"]
async fn qemu_tcg_vm_lifecycle_and_external_kill() {
    let Some(manifest) = common::tier1::qemu_lane("qemu_tcg_vm_lifecycle_and_external_kill") else {
        return;
    };
    let dir = data_dir(&manifest);
    let d = daemon(dir.path(), AnyStore::Memory(tfc_store::MemoryStore::new()));
    let (a, b) = tokio::join!(
        d.send(Method::POST, "/v1/vms", Some(r#"{"wait": true}"#)),
        d.send(
            Method::POST,
            "/v1/vms",
            Some(r#"{"wait": true, "memory_mib": 96}"#)
        ),
    );
    for (status, vm) in [&a, &b] {
        assert_eq!(*status, StatusCode::CREATED, "{vm}");
        assert_eq!(vm["state"], "ready", "boot failed: {vm}");
        assert_eq!(vm["spec"]["vmm"], "qemu-tcg", "{vm}");
        assert_eq!(
            vm["spec"]["kernel"].as_str(),
            manifest.kernel.bzimage.to_str(),
            "the daemon must boot the bzImage"
        );
    }
    let (a, b) = (a.1, b.1);
    eprintln!(
        "qemu-tcg boot to ready (request to GUEST-READY, two VMs booting at once): {:.0} ms, {:.0} ms",
        ready_ms(&a),
        ready_ms(&b)
    );
    let id = a["id"].as_str().unwrap().to_owned();
    let console = std::fs::read_to_string(a["console_log"].as_str().unwrap()).unwrap();
    assert!(
        console.contains("Run /init.sh as init process"),
        "{console}"
    );
    let processes = qemu_processes_under(Path::new(a["workdir"].as_str().unwrap()));
    assert_eq!(
        processes.len(),
        2,
        "QEMU and vhost-device-vsock: {processes:?}"
    );
    assert!(processes.contains(&a["pid"].as_u64().unwrap()));

    d.op(&id, "pause", "paused").await;
    assert_eq!(qmp(&a).query_status().await.unwrap().status, "paused");
    d.op(&id, "resume", "running").await;
    assert_eq!(qmp(&a).query_status().await.unwrap().status, "running");
    vsock_answers(&a).await;

    let (status, body) = d
        .send(Method::POST, &format!("/v1/vms/{id}/snapshots"), Some("{}"))
        .await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    assert_eq!(body["code"], "unsupported", "{body}");
    let (_, vm) = d.send(Method::GET, &format!("/v1/vms/{id}"), None).await;
    assert_eq!(
        vm["state"], "running",
        "a refused snapshot changed the VM: {vm}"
    );

    let vm = d.op(&id, "stop", "stopped").await;
    assert!(vm["exit"]["description"].is_string(), "{vm}");
    for pid in &processes {
        assert!(!alive(*pid), "process {pid} survived the stop");
    }
    let workdir = PathBuf::from(a["workdir"].as_str().unwrap());
    for socket in [
        tfc_qemu::command::QMP_SOCKET,
        tfc_qemu::command::VHOST_SOCKET,
        tfc_qemu::command::VSOCK_SOCKET,
    ] {
        assert!(!workdir.join(socket).exists(), "{socket} left behind");
    }
    let (status, _) = d.send(Method::DELETE, &format!("/v1/vms/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!workdir.exists());

    // Kill B's QEMU from outside: the VM fails, its vsock backend goes too.
    let b_id = b["id"].as_str().unwrap().to_owned();
    let b_processes = qemu_processes_under(Path::new(b["workdir"].as_str().unwrap()));
    let b_pid = b["pid"].as_u64().unwrap();
    // SAFETY: plain kill(2) of the QEMU process this test's daemon started.
    unsafe { libc::kill(b_pid as i32, libc::SIGKILL) };
    let vm = d.wait_for(&b_id, |vm| vm["state"] == "failed").await;
    assert_eq!(vm["exit"]["signal"], 9, "{vm}");
    for pid in &b_processes {
        assert!(!alive(*pid), "process {pid} outlived the killed QEMU");
    }
    let (status, _) = d
        .send(Method::DELETE, &format!("/v1/vms/{b_id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(qemu_processes_under(dir.path()).is_empty());
    let vms = std::fs::read_dir(dir.path().join("vms")).unwrap().count();
    assert_eq!(vms, 0, "VM directories left behind");
}

/// A daemon that exits leaving two qemu-tcg VMs running; the next daemon on
/// the same data directory re-adopts them (process records, QMP) and
/// controls them: one is paused, resumed, probed and stopped; the other's
/// vsock backend is killed from outside, which ends its QEMU and fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "qemu-tcg lane: needs qemu-system-x86_64, vhost-device-vsock and built assets; run by the project's test command"]
async fn qemu_tcg_vms_are_readopted_by_a_restarted_daemon() {
    let Some(manifest) =
        common::tier1::qemu_lane("qemu_tcg_vms_are_readopted_by_a_restarted_daemon")
    else {
        return;
    };
    let dir = data_dir(&manifest);
    let store = || AnyStore::open(StoreKind::Sqlite, dir.path()).unwrap();
    let first = daemon(dir.path(), store());
    let (a, b) = tokio::join!(
        first.send(Method::POST, "/v1/vms", Some(r#"{"wait": true}"#)),
        first.send(Method::POST, "/v1/vms", Some(r#"{"wait": true}"#)),
    );
    for (status, vm) in [&a, &b] {
        assert_eq!(
            (*status, vm["state"].as_str()),
            (StatusCode::CREATED, Some("ready")),
            "{vm}"
        );
    }
    let (a, b) = (a.1, b.1);
    let all = qemu_processes_under(dir.path());
    assert_eq!(all.len(), 4, "{all:?}");
    first.manager.shutdown(ShutdownPolicy::LeaveRunning).await;
    drop(first);
    for pid in &all {
        assert!(alive(*pid), "process {pid} did not outlive its daemon");
    }

    let second = daemon(dir.path(), store());
    let kept = second.manager.recover().await.unwrap();
    for vm in [&a, &b] {
        let id = vm["id"].as_str().unwrap();
        assert!(kept.contains(id), "{kept:?}");
        let pid = vm["pid"].as_u64();
        let adopted = second.wait_for(id, |vm| vm["pid"].as_u64() == pid).await;
        assert_eq!(adopted["state"], "ready", "{adopted}");
    }

    let id = a["id"].as_str().unwrap();
    let processes = qemu_processes_under(Path::new(a["workdir"].as_str().unwrap()));
    second.op(id, "pause", "paused").await;
    assert_eq!(qmp(&a).query_status().await.unwrap().status, "paused");
    second.op(id, "resume", "running").await;
    vsock_answers(&a).await;
    second.op(id, "stop", "stopped").await;
    for pid in &processes {
        assert!(!alive(*pid), "process {pid} survived the stop");
    }

    let b_id = b["id"].as_str().unwrap();
    let b_qemu = b["pid"].as_u64().unwrap();
    let b_vhost = qemu_processes_under(Path::new(b["workdir"].as_str().unwrap()))
        .into_iter()
        .find(|pid| *pid != b_qemu)
        .expect("B's vhost-device-vsock");
    // SAFETY: plain kill(2) of the vsock backend this test's first daemon started.
    unsafe { libc::kill(b_vhost as i32, libc::SIGKILL) };
    let vm = second.wait_for(b_id, |vm| vm["state"] == "failed").await;
    assert!(!alive(b_qemu), "QEMU outlived its vsock backend: {vm}");

    for id in [id, b_id] {
        let (status, _) = second
            .send(Method::DELETE, &format!("/v1/vms/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    assert!(qemu_processes_under(dir.path()).is_empty());
}

/// A daemon that finds a running qemu-tcg VM it cannot take over (here: its
/// QEMU is no longer installed as far as the new daemon knows) records the
/// VM failed with the reason and ends its processes rather than leaving
/// them running unmanaged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "qemu-tcg lane: needs qemu-system-x86_64, vhost-device-vsock and built assets; run by the project's test command"]
async fn a_qemu_tcg_vm_that_cannot_be_adopted_is_ended() {
    let Some(manifest) = common::tier1::qemu_lane("a_qemu_tcg_vm_that_cannot_be_adopted_is_ended")
    else {
        return;
    };
    let dir = data_dir(&manifest);
    let store = || AnyStore::open(StoreKind::Sqlite, dir.path()).unwrap();
    let first = daemon(dir.path(), store());
    let (status, vm) = first
        .send(Method::POST, "/v1/vms", Some(r#"{"wait": true}"#))
        .await;
    assert_eq!(
        (status, vm["state"].as_str()),
        (StatusCode::CREATED, Some("ready")),
        "{vm}"
    );
    let id = vm["id"].as_str().unwrap().to_owned();
    let processes = qemu_processes_under(dir.path());
    assert_eq!(processes.len(), 2, "{processes:?}");
    first.manager.shutdown(ShutdownPolicy::LeaveRunning).await;
    drop(first);

    let backend = Backend::Vmms(Arc::new(Vmms {
        default: Vmm::QemuTcg,
        firecracker: Err("not installed".to_owned()),
        qemu: Err("qemu-system-x86_64 was removed".to_owned()),
    }));
    let manager = VmManager::new(backend, config(), dir.path().to_owned(), store());
    let second = Daemon {
        app: tfc_daemon::api::router(manager.clone()),
        manager,
    };
    second.manager.recover().await.unwrap();
    let vm = second.wait_for(&id, |vm| vm["state"] == "failed").await;
    let failure = vm["failure"].as_str().unwrap();
    assert!(
        failure.contains("qemu-system-x86_64 was removed"),
        "{failure}"
    );
    for pid in &processes {
        assert!(!alive(*pid), "process {pid} left running unmanaged");
    }
    let (status, _) = second
        .send(Method::DELETE, &format!("/v1/vms/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}
