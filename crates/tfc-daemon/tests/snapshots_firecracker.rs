//! Tier 1: snapshots and restores with the real `firecracker` binary: clones
//! that do not collide, diffs merged onto their parent, templates serving
//! `ultra_fast`, and restores refused when an input changed or a file is
//! damaged, leaving nothing behind. Two guests boot (concurrently); everything
//! else is restores, which take milliseconds.
//!
//! `#[ignore]`d like every tier-1 test: the project's test command runs it
//! where the host can.

mod common;

use common::tier1::{alive, firecrackers_under};

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use tfc_daemon::config::Config;
use tfc_daemon::manager::VmManager;

struct Daemon {
    app: axum::Router,
    _manager: VmManager,
    dir: tempfile::TempDir,
    kernel: PathBuf,
    rootfs: PathBuf,
}

/// A daemon whose `default` type boots from copies of the assets in the
/// test's own directory (so the test can change them) with dirty-page
/// tracking, and whose `gold` type uses the built assets for a template.
fn daemon() -> Daemon {
    let manifest = common::tier1::assets();
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    let rootfs = dir.path().join("rootfs.ext4");
    std::fs::copy(&manifest.kernel.vmlinux, &kernel).unwrap();
    std::fs::copy(&manifest.rootfs.path, &rootfs).unwrap();
    let config = format!(
        "[firecracker]\nbinary = {:?}\njailer = false\nboot_timeout_secs = 240\nstop_grace_ms = 1000\n\
         [vm_types.default]\nkernel = {kernel:?}\nrootfs = {rootfs:?}\nboot_args = {args:?}\n\
         diff_snapshots = true\n\
         [vm_types.gold]\nkernel = {:?}\nrootfs = {:?}\nboot_args = {args:?}\n",
        manifest.firecracker.path,
        manifest.kernel.vmlinux,
        manifest.rootfs.path,
        args = manifest.boot_args,
    );
    let config = Config::parse(&config, "tier-1 test").unwrap();
    let backend = tfc_daemon::build_backend(&config, dir.path()).unwrap();
    let manager = VmManager::in_memory(backend, config, dir.path().to_owned());
    Daemon {
        app: tfc_daemon::api::router(manager.clone()),
        _manager: manager,
        dir,
        kernel,
        rootfs,
    }
}

impl Daemon {
    async fn send(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        common::send(&self.app, method, uri, body.as_deref()).await
    }

    async fn restore(&self, snapshot: &str) -> (StatusCode, Value) {
        self.send(
            Method::POST,
            "/v1/vms",
            Some(json!({"from_snapshot": snapshot})),
        )
        .await
    }

    async fn delete_vm(&self, vm: &Value) {
        let id = vm["id"].as_str().unwrap();
        let (status, body) = self
            .send(Method::DELETE, &format!("/v1/vms/{id}?force=true"), None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        if let Some(pid) = vm["pid"].as_u64() {
            assert!(!alive(pid), "firecracker {pid} of {id} survived its delete");
        }
        assert!(!Path::new(vm["workdir"].as_str().unwrap()).exists());
    }

    async fn vm_count(&self) -> usize {
        let (_, list) = self.send(Method::GET, "/v1/vms", None).await;
        list["vms"].as_array().unwrap().len()
    }

    fn vm_dirs(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("vms"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

/// Rewrites `path` through `change`, runs `check`, and puts the file back.
async fn with_changed<F: std::future::Future<Output = ()>>(
    path: &Path,
    change: impl FnOnce(&mut Vec<u8>),
    check: impl FnOnce() -> F,
) {
    let original = std::fs::read(path).unwrap();
    let mut changed = original.clone();
    change(&mut changed);
    std::fs::write(path, &changed).unwrap();
    check().await;
    std::fs::write(path, &original).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tier 1: needs KVM, firecracker and built assets; run by the project's test command"]
async fn snapshots_clone_diff_and_refuse_what_does_not_match() {
    let d = daemon();
    let (vm, template) = tokio::join!(
        d.send(Method::POST, "/v1/vms", Some(json!({"wait": true}))),
        d.send(Method::POST, "/v1/templates/gold/build", None),
    );
    let (status, vm) = vm;
    assert_eq!(
        (status, vm["state"].as_str()),
        (StatusCode::CREATED, Some("ready")),
        "{vm}"
    );
    let (status, template) = template;
    assert_eq!(
        (status, template["status"].as_str()),
        (StatusCode::OK, Some("ready")),
        "{template}"
    );
    let id = vm["id"].as_str().unwrap().to_owned();

    // A full snapshot of the running VM; it runs again afterwards.
    let (status, base) = d
        .send(
            Method::POST,
            &format!("/v1/vms/{id}/snapshots"),
            Some(json!({"name": "base"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{base}");
    eprintln!("full snapshot: {}", base["timing"]);
    let base_id = base["id"].as_str().unwrap().to_owned();
    let base_dir = PathBuf::from(base["dir"].as_str().unwrap());
    let memory = base_dir.join("memory");
    assert_eq!(
        std::fs::metadata(&memory).unwrap().len(),
        128 << 20,
        "the memory file holds all of guest memory"
    );
    let (_, now) = d.send(Method::GET, &format!("/v1/vms/{id}"), None).await;
    assert_eq!(now["state"], "running", "{now}");

    // Ten clones at once: each runs in its own directory with its own API
    // socket, vsock socket, console and root-drive link, and maps the one
    // memory file rather than copying it.
    let mut restores = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let app = d.app.clone();
        let body = json!({"from_snapshot": base_id}).to_string();
        restores
            .spawn(async move { common::send(&app, Method::POST, "/v1/vms", Some(&body)).await });
    }
    let mut clones = Vec::new();
    while let Some(done) = restores.join_next().await {
        let (status, clone) = done.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{clone}");
        assert_eq!(clone["state"], "ready", "{clone}");
        clones.push(clone);
    }
    let mut dirs = HashSet::new();
    let mut pids = HashSet::new();
    for clone in &clones {
        let workdir = PathBuf::from(clone["workdir"].as_str().unwrap());
        assert!(dirs.insert(workdir.clone()));
        let pid = clone["pid"].as_u64().unwrap();
        assert!(pids.insert(pid) && alive(pid));
        for file in ["api.sock", "vsock.sock", "console.log"] {
            assert!(
                workdir.join(file).exists(),
                "{} has no {file}",
                workdir.display()
            );
        }
        assert_eq!(
            std::fs::read_link(workdir.join("rootfs.ext4")).unwrap(),
            d.rootfs
        );
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(
            maps.contains(memory.to_str().unwrap()),
            "clone {pid} does not map {}",
            memory.display()
        );
        let copied: u64 = std::fs::read_dir(&workdir)
            .unwrap()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .sum();
        assert!(
            copied < 8 << 20,
            "{} holds {copied} bytes",
            workdir.display()
        );
    }
    let loads: Vec<f64> = clones
        .iter()
        .map(|c| {
            c["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["phase"] == "ready")
                .unwrap()["at_us"]
                .as_f64()
                .unwrap()
                / 1000.0
        })
        .collect();
    eprintln!("10 concurrent restores, ms to ready: {loads:?}");
    for clone in &clones {
        d.delete_vm(clone).await;
    }

    // A diff of the same VM, restored by merging it onto the base.
    let (status, diff) = d
        .send(
            Method::POST,
            &format!("/v1/vms/{id}/snapshots"),
            Some(json!({"kind": "diff"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{diff}");
    assert_eq!(diff["parent"], base_id.as_str());
    eprintln!(
        "diff snapshot: {} ({} bytes on disk)",
        diff["timing"], diff["size_bytes"]
    );
    let diff_id = diff["id"].as_str().unwrap().to_owned();
    let (status, clone) = d.restore(&diff_id).await;
    assert_eq!(
        (status, clone["state"].as_str()),
        (StatusCode::CREATED, Some("ready")),
        "{clone}"
    );
    assert!(Path::new(diff["dir"].as_str().unwrap())
        .join("memory")
        .is_file());
    d.delete_vm(&clone).await;
    let (status, err) = d
        .send(Method::DELETE, &format!("/v1/snapshots/{base_id}"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");

    // ultra_fast restores the gold type's template.
    let (status, fast) = d
        .send(
            Method::POST,
            "/v1/vms",
            Some(json!({"vm_type": "gold", "optimization_level": "ultra_fast"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{fast}");
    assert_eq!(fast["start"]["method"], "restore", "{fast}");
    assert_eq!(fast["start"]["snapshot"], template["snapshot"]);
    d.delete_vm(&fast).await;

    // Refusals: each leaves no VM, directory or process behind.
    let vms_before = d.vm_count().await;
    let fc_before = firecrackers_under(d.dir.path()).len();
    let nothing_left = || async {
        assert_eq!(d.vm_count().await, vms_before);
        assert_eq!(d.vm_dirs(), vms_before);
        assert_eq!(firecrackers_under(d.dir.path()).len(), fc_before);
    };
    let state = base_dir.join("vmstate");
    with_changed(
        &state,
        |b| b.truncate(b.len() - 7),
        || async {
            let (status, err) = d.restore(&base_id).await;
            assert_eq!(status, StatusCode::CONFLICT, "{err}");
            assert!(message(&err).contains("truncated"), "{err}");
            nothing_left().await;
        },
    )
    .await;
    with_changed(
        &state,
        |b| {
            let mid = b.len() / 2;
            for byte in &mut b[mid..mid + 64] {
                *byte ^= 0x5a;
            }
        },
        || async {
            let (status, err) = d.restore(&base_id).await;
            assert_eq!(status, StatusCode::BAD_GATEWAY, "{err}");
            assert!(message(&err).contains("load the snapshot"), "{err}");
            nothing_left().await;
        },
    )
    .await;
    with_changed(
        &d.rootfs,
        |b| b.push(0),
        || async {
            let (status, err) = d.restore(&base_id).await;
            assert_eq!(status, StatusCode::CONFLICT, "{err}");
            assert!(message(&err).contains("rootfs"), "{err}");
            nothing_left().await;
        },
    )
    .await;
    with_changed(
        &d.kernel,
        |b| b.push(0),
        || async {
            let (status, err) = d.restore(&base_id).await;
            assert_eq!(status, StatusCode::CONFLICT, "{err}");
            assert!(message(&err).contains("kernel"), "{err}");
            nothing_left().await;
        },
    )
    .await;
    // Everything back as it was: the snapshot restores again.
    let (status, clone) = d.restore(&base_id).await;
    assert_eq!(status, StatusCode::CREATED, "{clone}");
    d.delete_vm(&clone).await;

    // Clean up: the VM, then the diff and its base.
    d.delete_vm(&vm).await;
    for snap in [&diff_id, &base_id] {
        let (status, err) = d
            .send(Method::DELETE, &format!("/v1/snapshots/{snap}"), None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{err}");
    }
    assert_eq!(d.vm_dirs(), 0);
    assert!(firecrackers_under(d.dir.path()).is_empty());
}
