//! Tier 0: snapshots, restores, templates and optimization levels through the
//! real HTTP router against the fake backend: the catalog, its dependency
//! rules, the restore checks and the recovery of interrupted snapshots. (The
//! same paths against real Firecracker are in `firecracker.rs`.)

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use tfc_daemon::backend::{Backend, FakeBackend};
use tfc_daemon::config::Config;
use tfc_daemon::manager::VmManager;
use tfc_store::VmRow;
use tfc_store::{AnyStore, SnapshotRow, Store, StoreKind};

struct Harness {
    app: axum::Router,
    manager: VmManager,
    dir: tempfile::TempDir,
}

/// A config whose VM types name real (tiny) kernel and rootfs files, so
/// snapshot manifests can digest them. `default` tracks dirty pages; `plain`
/// does not.
fn config(dir: &Path) -> Config {
    let (kernel, rootfs) = common::tiny_assets(dir);
    let text = format!(
        r#"
[daemon]
backend = "fake"
[vm_types.default]
kernel = "{k}"
rootfs = "{r}"
boot_args = "console=ttyS0"
diff_snapshots = true
[vm_types.plain]
kernel = "{k}"
rootfs = "{r}"
boot_args = "console=ttyS0"
"#,
        k = kernel.display(),
        r = rootfs.display()
    );
    Config::parse(&text, "test").unwrap()
}

fn harness_with(dir: tempfile::TempDir, store: AnyStore) -> Harness {
    harness_with_fake(dir, store, FakeBackend::new(Duration::from_millis(5)))
}

fn harness_with_fake(dir: tempfile::TempDir, store: AnyStore, fake: FakeBackend) -> Harness {
    let manager = VmManager::new(
        Backend::Fake(fake),
        config(dir.path()),
        dir.path().to_owned(),
        store,
    );
    Harness {
        app: tfc_daemon::api::router(manager.clone()),
        manager,
        dir,
    }
}

fn harness() -> Harness {
    harness_with(
        tempfile::tempdir().unwrap(),
        AnyStore::Memory(tfc_store::MemoryStore::new()),
    )
}

impl Harness {
    async fn send(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        common::send(&self.app, method, uri, body.as_deref()).await
    }

    async fn ready_vm(&self, vm_type: &str) -> String {
        let (status, vm) = self
            .send(
                Method::POST,
                "/v1/vms",
                Some(json!({"vm_type": vm_type, "wait": true})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{vm}");
        assert_eq!(vm["state"], "ready", "{vm}");
        vm["id"].as_str().unwrap().to_owned()
    }

    async fn snapshot(&self, vm: &str, body: Value) -> (StatusCode, Value) {
        self.send(Method::POST, &format!("/v1/vms/{vm}/snapshots"), Some(body))
            .await
    }

    async fn restore(&self, snapshot: &str) -> (StatusCode, Value) {
        self.send(
            Method::POST,
            "/v1/vms",
            Some(json!({"from_snapshot": snapshot})),
        )
        .await
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

    fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join("snapshots").join(id)
    }
}

#[tokio::test]
async fn a_snapshot_pauses_resumes_and_records_a_manifest() {
    let h = harness();
    let vm = h.ready_vm("default").await;
    let (status, snap) = h.snapshot(&vm, json!({"name": "first"})).await;
    assert_eq!(status, StatusCode::CREATED, "{snap}");
    assert_eq!(snap["kind"], "full");
    assert_eq!(snap["state"], "ready");
    assert_eq!(snap["source_vm"], vm.as_str());
    let m = &snap["manifest"];
    assert_eq!(m["firecracker_version"], "Fake v0");
    assert!(m["kernel"]["sha256"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert!(m["rootfs"]["path"]
        .as_str()
        .unwrap()
        .ends_with("rootfs.ext4"));
    assert!(!m["cpu"]["flags"].as_array().unwrap().is_empty());
    assert_eq!(m["devices"][0]["path_on_host"], "rootfs.ext4");
    assert_eq!(m["devices"][1]["uds_path"], "vsock.sock");
    let id = snap["id"].as_str().unwrap();
    assert!(h.snapshot_dir(id).join("manifest.json").is_file());
    assert!(h.snapshot_dir(id).join("vmstate").is_file());
    // Ready before, so resumed after: the state machine passes through paused.
    let (_, info) = h.send(Method::GET, &format!("/v1/vms/{vm}"), None).await;
    assert_eq!(info["state"], "running");
    assert_eq!(info["last_snapshot"], id);
    // Found by id and by name; names are unique.
    let (status, by_name) = h.send(Method::GET, "/v1/snapshots/first", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_name["id"], id);
    let (status, err) = h.snapshot(&vm, json!({"name": "first"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    // Without resume, the VM stays paused (snapshotted).
    let (status, _) = h.snapshot(&vm, json!({"resume": false})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, info) = h.send(Method::GET, &format!("/v1/vms/{vm}"), None).await;
    assert_eq!(info["state"], "snapshotted");
    let (_, list) = h.send(Method::GET, "/v1/snapshots", None).await;
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn clones_restore_into_their_own_directories() {
    let h = harness();
    let vm = h.ready_vm("default").await;
    let (_, snap) = h.snapshot(&vm, json!({})).await;
    let snap = snap["id"].as_str().unwrap();
    let mut dirs = std::collections::HashSet::new();
    for _ in 0..3 {
        let (status, clone) = h.restore(snap).await;
        assert_eq!(status, StatusCode::CREATED, "{clone}");
        assert_eq!(clone["state"], "ready");
        assert_eq!(clone["start"]["method"], "restore");
        assert_eq!(clone["start"]["level"], "ultra_fast");
        assert_eq!(clone["start"]["snapshot"], snap);
        assert_eq!(clone["last_snapshot"], snap);
        let phases: Vec<&str> = clone["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["phase"].as_str().unwrap())
            .collect();
        assert_eq!(phases, ["spawned", "api_ready", "snapshot_loaded", "ready"]);
        assert!(dirs.insert(clone["workdir"].as_str().unwrap().to_owned()));
    }
    assert_eq!(h.vm_count().await, 4);
    // A restore may not change the machine.
    let (status, _) = h
        .send(
            Method::POST,
            "/v1/vms",
            Some(json!({"from_snapshot": snap, "vcpus": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = h.restore("snap-000000000000").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn diffs_need_tracking_and_a_parent_and_protect_it() {
    let h = harness();
    let plain = h.ready_vm("plain").await;
    let (status, err) = h.snapshot(&plain, json!({"kind": "diff"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        err["message"].as_str().unwrap().contains("diff_snapshots"),
        "{err}"
    );

    let vm = h.ready_vm("default").await;
    let (status, err) = h.snapshot(&vm, json!({"kind": "diff"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("full snapshot first"),
        "{err}"
    );
    let (_, base) = h.snapshot(&vm, json!({})).await;
    let base = base["id"].as_str().unwrap().to_owned();
    let (status, diff) = h.snapshot(&vm, json!({"kind": "diff"})).await;
    assert_eq!(status, StatusCode::CREATED, "{diff}");
    assert_eq!(diff["parent"], base.as_str());
    let diff = diff["id"].as_str().unwrap().to_owned();
    assert!(h.snapshot_dir(&diff).join("memory.diff").is_file());

    // The base cannot go while the diff needs it.
    let (status, err) = h
        .send(Method::DELETE, &format!("/v1/snapshots/{base}"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(err["message"].as_str().unwrap().contains(&diff), "{err}");
    // A diff restores by merging onto its parent.
    let (status, clone) = h.restore(&diff).await;
    assert_eq!(status, StatusCode::CREATED, "{clone}");
    assert!(h.snapshot_dir(&diff).join("memory").is_file());
    // Forced, the base goes and the diff stays restorable on its own.
    let (status, _) = h
        .send(
            Method::DELETE,
            &format!("/v1/snapshots/{base}?force=true"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!h.snapshot_dir(&base).exists());
    let (_, d) = h
        .send(Method::GET, &format!("/v1/snapshots/{diff}"), None)
        .await;
    assert!(d.get("parent").is_none(), "{d}");
    let (status, _) = h.restore(&diff).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn restores_refuse_changed_inputs_and_damaged_files_leaving_nothing() {
    let h = harness();
    let vm = h.ready_vm("default").await;
    let (_, snap) = h.snapshot(&vm, json!({})).await;
    let id = snap["id"].as_str().unwrap().to_owned();
    let before = (h.vm_count().await, h.vm_dirs());

    // Truncated state file.
    let state = h.snapshot_dir(&id).join("vmstate");
    let original = std::fs::read(&state).unwrap();
    std::fs::write(&state, &original[..original.len() - 1]).unwrap();
    let (status, err) = h.restore(&id).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("truncated"),
        "{err}"
    );

    // Same length, damaged content: the VMM refuses to load it.
    let mut damaged = original.clone();
    damaged[0] ^= 0xff;
    std::fs::write(&state, &damaged).unwrap();
    let (status, err) = h.restore(&id).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{err}");
    assert_eq!(
        (h.vm_count().await, h.vm_dirs()),
        before,
        "a failed restore left a VM behind"
    );
    std::fs::write(&state, &original).unwrap();

    // The rootfs changed since the snapshot.
    let rootfs = h.dir.path().join("rootfs.ext4");
    std::fs::write(&rootfs, b"rootfs, edited").unwrap();
    let (status, err) = h.restore(&id).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert!(err["message"].as_str().unwrap().contains("rootfs"), "{err}");
    std::fs::write(&rootfs, b"rootfs").unwrap();

    // Made by another VMM version, or on another CPU: edit the manifest in the
    // store's copy by taking the record through the catalog's files.
    for (field, value, expect) in [
        (
            "firecracker_version",
            json!("Firecracker v0.0.1"),
            "this daemon runs",
        ),
        (
            "cpu",
            json!({"vendor": "OtherVendor", "model_name": "x", "family": 1, "model": 1, "flags": []}),
            "family",
        ),
    ] {
        let mut record = snap.clone();
        record["manifest"][field] = value;
        let h2 = harness_from_record(&h, &record).await;
        let (status, err) = h2.restore(&id).await;
        assert_eq!(status, StatusCode::CONFLICT, "{err}");
        assert!(
            err["message"].as_str().unwrap().contains(expect),
            "{field}: {err}"
        );
    }
    let (status, _) = h.restore(&id).await;
    assert_eq!(status, StatusCode::CREATED);
}

/// A second daemon over a copy of `h`'s data directory whose store holds
/// `record` as the only snapshot (the files are shared).
async fn harness_from_record(h: &Harness, record: &Value) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let id = record["id"].as_str().unwrap();
    let src = h.snapshot_dir(id);
    let dst = dir.path().join("snapshots").join(id);
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["vmstate", "memory", "manifest.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let mut record = record.clone();
    record["dir"] = json!(dst.display().to_string());
    let store = AnyStore::open(StoreKind::Sqlite, dir.path()).unwrap();
    store
        .put_snapshot(&SnapshotRow {
            id: id.parse().unwrap(),
            record: record.to_string(),
            updated_at_ms: 1,
        })
        .unwrap();
    // The kernel and rootfs stay where the manifest names them (in `h`'s dir).
    let h2 = harness_with(dir, store);
    h2.manager.recover().await.unwrap();
    h2
}

#[tokio::test]
async fn templates_serve_ultra_fast_and_rebuild_when_inputs_change() {
    let h = harness();
    let (_, list) = h.send(Method::GET, "/v1/templates", None).await;
    assert_eq!(list["templates"][0]["status"], "missing");
    // Without a template, ultra_fast boots and says why.
    let (status, vm) = h
        .send(
            Method::POST,
            "/v1/vms",
            Some(json!({"optimization_level": "ultra_fast", "wait": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(vm["start"]["method"], "cold_boot");
    assert!(
        vm["start"]["note"].as_str().unwrap().contains("template"),
        "{vm}"
    );

    let (status, t) = h
        .send(Method::POST, "/v1/templates/default/build", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(t["status"], "ready");
    let template = t["snapshot"].as_str().unwrap().to_owned();
    // The build's VM is gone; only the first VM remains.
    assert_eq!(h.vm_count().await, 1);

    let (status, vm) = h
        .send(
            Method::POST,
            "/v1/vms",
            Some(json!({"optimization_level": "ultra_fast"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{vm}");
    assert_eq!(vm["state"], "ready");
    assert_eq!(vm["start"]["method"], "restore");
    assert_eq!(vm["start"]["snapshot"], template.as_str());
    // sub2_second: a restore is the only way under 2 s here, and it is known.
    let (_, vm) = h
        .send(
            Method::POST,
            "/v1/vms",
            Some(json!({"optimization_level": "sub2_second"})),
        )
        .await;
    assert_eq!(vm["start"]["method"], "restore", "{vm}");
    // instant: the type's pool holds nothing (target 0), so its warm tier
    // restores the template for the caller.
    let (status, vm) = h
        .send(
            Method::POST,
            "/v1/vms",
            Some(json!({"optimization_level": "instant"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{vm}");
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["pool"]["tier"], "warm");
    assert_eq!(vm["start"]["snapshot"], template.as_str());

    // The template's snapshot is protected.
    let (status, _) = h
        .send(Method::DELETE, &format!("/v1/snapshots/{template}"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // An input changes: the template is stale, the next ultra_fast boots and
    // a rebuild starts by itself.
    std::fs::write(h.dir.path().join("vmlinux"), b"kernel v2").unwrap();
    let (_, vm) = h
        .send(
            Method::POST,
            "/v1/vms",
            Some(json!({"optimization_level": "ultra_fast", "wait": true})),
        )
        .await;
    assert_eq!(vm["start"]["method"], "cold_boot", "{vm}");
    let mut rebuilt = None;
    for _ in 0..200 {
        let (_, list) = h.send(Method::GET, "/v1/templates", None).await;
        let t = &list["templates"][0];
        if t["status"] == "ready" && t["snapshot"] != template.as_str() {
            rebuilt = Some(t["snapshot"].as_str().unwrap().to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rebuilt = rebuilt.expect("the stale template was rebuilt");
    // The old template went with the rebuild.
    let (status, _) = h
        .send(Method::GET, &format!("/v1/snapshots/{template}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = h.send(Method::GET, "/v1/templates", None).await;
    let starts = list["templates"][0]["starts"].as_array().unwrap();
    assert!(
        starts
            .iter()
            .any(|s| s["method"] == "restore" && s["count"] == 3),
        "{list}"
    );
    assert!(starts.iter().any(|s| s["method"] == "cold_boot"), "{list}");
    let (status, _) = h.send(Method::POST, "/v1/templates/nope/build", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_ne!(rebuilt, template);
}

#[tokio::test]
async fn fast_level_boots_with_tuned_arguments_and_no_vsock() {
    let h = harness();
    let (_, vm) = h
        .send(
            Method::POST,
            "/v1/vms",
            Some(json!({"optimization_level": "fast", "wait": true})),
        )
        .await;
    assert_eq!(vm["start"]["method"], "tuned_boot");
    assert!(vm["spec"]["boot_args"]
        .as_str()
        .unwrap()
        .ends_with(tfc_core::level::FAST_BOOT_ARGS));
    assert_eq!(vm["spec"]["vsock"], false);
    let (status, _) = h
        .send(
            Method::POST,
            "/v1/vms",
            Some(json!({"optimization_level": "warp"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn interrupted_snapshots_and_orphaned_directories_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = AnyStore::open(StoreKind::Sqlite, dir.path()).unwrap();
    let h = harness_with(dir, store);
    h.manager.recover().await.unwrap();
    let vm = h.ready_vm("default").await;
    let (_, snap) = h.snapshot(&vm, json!({})).await;
    let kept = snap["id"].as_str().unwrap().to_owned();
    // A snapshot a dead daemon was writing, and a directory nobody claims.
    let mut creating = snap.clone();
    creating["id"] = json!("snap-0123456789ab");
    creating["state"] = json!("creating");
    h.manager
        .store()
        .put_snapshot(&SnapshotRow {
            id: "snap-0123456789ab".parse().unwrap(),
            record: creating.to_string(),
            updated_at_ms: 1,
        })
        .unwrap();
    std::fs::create_dir_all(h.snapshot_dir("snap-0123456789ab")).unwrap();
    std::fs::create_dir_all(h.snapshot_dir("snap-ffffffffffff")).unwrap();
    let data = h.dir.path().to_owned();
    let Harness { dir, manager, .. } = h;
    drop(manager);
    let store = AnyStore::open(StoreKind::Sqlite, &data).unwrap();
    let h = harness_with(dir, store);
    h.manager.recover().await.unwrap();
    let ids: Vec<String> = h.manager.snapshots().into_iter().map(|s| s.id).collect();
    assert_eq!(ids, std::slice::from_ref(&kept));
    assert!(!h.snapshot_dir("snap-0123456789ab").exists());
    assert!(!h.snapshot_dir("snap-ffffffffffff").exists());
    assert!(h.snapshot_dir(&kept).is_dir());
    assert_eq!(h.manager.store().list_snapshots().unwrap().len(), 1);
}

#[tokio::test]
async fn a_failed_snapshot_leaves_no_base_for_a_diff_and_names_cannot_pose_as_ids() {
    let fake = FakeBackend::new(Duration::from_millis(5));
    let h = harness_with_fake(
        tempfile::tempdir().unwrap(),
        AnyStore::Memory(tfc_store::MemoryStore::new()),
        fake.clone(),
    );
    let vm = h.ready_vm("default").await;
    let (status, _) = h.snapshot(&vm, json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    // The VMM resets its dirty-page log as it writes; a failed snapshot
    // leaves no valid base, so the next diff is refused rather than wrong.
    fake.script(|s| s.fail_next_snapshot = Some("disk full".into()));
    let (status, err) = h.snapshot(&vm, json!({"kind": "diff"})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{err}");
    let (_, info) = h.send(Method::GET, &format!("/v1/vms/{vm}"), None).await;
    assert_eq!(
        info["state"], "running",
        "resumed after the failure: {info}"
    );
    assert!(info.get("last_snapshot").is_none(), "{info}");
    let (status, err) = h.snapshot(&vm, json!({"kind": "diff"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    let (_, list) = h.send(Method::GET, "/v1/snapshots", None).await;
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1);
    assert_eq!(
        std::fs::read_dir(h.dir.path().join("snapshots"))
            .unwrap()
            .count(),
        1,
        "the failed snapshot's directory stayed"
    );
    let (status, err) = h.snapshot(&vm, json!({"name": "snap-0123456789ab"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
}

#[tokio::test]
async fn the_vm_of_an_interrupted_template_build_is_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = AnyStore::open(StoreKind::Sqlite, dir.path()).unwrap();
    let h = harness_with(dir, store);
    let vm = h.ready_vm("default").await;
    // The owner stores `ready` just after publishing it; let that land first.
    let id: tfc_core::VmId = vm.parse().unwrap();
    for _ in 0..500 {
        let row = h.manager.store().get_vm(&id).unwrap().unwrap();
        if row.state == tfc_core::VmState::Ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (_, mut record) = h.send(Method::GET, &format!("/v1/vms/{vm}"), None).await;
    record["template_build"] = json!(true);
    h.manager
        .store()
        .put_vm(&VmRow {
            id: vm.parse().unwrap(),
            state: tfc_core::VmState::Ready,
            record: record.to_string(),
            updated_at_ms: 1,
        })
        .unwrap();
    let Harness { dir, manager, .. } = h;
    drop(manager);
    let store = AnyStore::open(StoreKind::Sqlite, dir.path()).unwrap();
    let h = harness_with(dir, store);
    h.manager.recover().await.unwrap();
    let (_, list) = h.send(Method::GET, "/v1/vms", None).await;
    assert_eq!(list["vms"].as_array().unwrap().len(), 0, "{list}");
    assert_eq!(h.vm_dirs(), 0);
    assert!(h.manager.store().list_vms().unwrap().is_empty());
}
