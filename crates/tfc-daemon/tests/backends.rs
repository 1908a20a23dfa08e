//! Tier 0: choosing a VM's backend (the request's, else its type's, else the
//! daemon's), what a qemu-tcg VM refuses (snapshots, restores, templates,
//! pools: 501), a backend this host lacks (503, saying what to install), and
//! the daemon refusing to start on a configured backend it cannot run.
//!
//! The fake runs every VM here, whatever its spec's backend: these tests are
//! about the daemon's decisions above the backend seam. The real qemu-tcg
//! backend is tested against real QEMU in `qemu.rs`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::Value;
use tfc_core::Vmm;
use tfc_daemon::backend::{Backend, FakeBackend, Vmms};
use tfc_daemon::config::Config;
use tfc_daemon::manager::VmManager;

/// Writes an assets manifest into `data_dir` naming two distinct kernel
/// files, so a spec's kernel shows which one the daemon picked.
fn assets(data_dir: &Path) {
    let (vmlinux, rootfs) = common::tiny_assets(data_dir);
    let bzimage = data_dir.join("bzImage");
    std::fs::write(&bzimage, b"bzimage").unwrap();
    let binary = |name: &str| tfc_host::assets::BinaryAsset {
        path: data_dir.join(name),
        version: "v1.12.1".into(),
        sha256: String::new(),
        source: tfc_host::assets::BinarySource::Path,
    };
    let manifest = tfc_host::assets::Manifest {
        format: tfc_host::assets::MANIFEST_FORMAT,
        profile: tfc_host::profile::Profile::Default,
        firecracker: binary("firecracker"),
        jailer: binary("jailer"),
        kernel: tfc_host::assets::KernelAsset {
            vmlinux,
            bzimage,
            key: "k".into(),
        },
        rootfs: tfc_host::assets::RootfsAsset {
            path: rootfs,
            key: "r".into(),
            agent_sha256: None,
        },
        debian: None,
        boot_args: "console=ttyS0".into(),
        created: "2026-01-01T00:00:00Z".into(),
    };
    let path = tfc_host::assets::manifest_path(data_dir);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

struct Harness {
    app: axum::Router,
    dir: tempfile::TempDir,
}

/// A daemon over `backend` whose `default` type runs on the daemon's
/// backend (`daemon_backend`, a config value) and whose `emu` type names
/// qemu-tcg.
fn harness(daemon_backend: &str, backend: impl FnOnce(&Path) -> Backend) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    assets(dir.path());
    let config = Config::parse(
        &format!(
            "[daemon]\nbackend = \"{daemon_backend}\"\n[vm_types.default]\n[vm_types.emu]\nbackend = \"qemu-tcg\"\n"
        ),
        "test",
    )
    .unwrap();
    let manager = VmManager::in_memory(backend(dir.path()), config, dir.path().to_owned());
    Harness {
        app: tfc_daemon::api::router(manager),
        dir,
    }
}

fn fake(_: &Path) -> Backend {
    Backend::Fake(FakeBackend::new(Duration::from_millis(5)))
}

impl Harness {
    async fn send(&self, method: Method, uri: &str, body: Option<&str>) -> (StatusCode, Value) {
        common::send(&self.app, method, uri, body).await
    }

    async fn create(&self, body: &str) -> Value {
        let (status, vm) = self.send(Method::POST, "/v1/vms", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{vm}");
        vm
    }

    fn vm_dirs(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("vms"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str, says: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["code"], code, "{body}");
    let message = body["message"].as_str().unwrap_or("");
    assert!(message.contains(says), "{says:?} not in {body}");
}

#[tokio::test]
async fn a_vm_runs_on_its_requests_backend_else_its_types_else_the_daemons() {
    let h = harness("fake", fake);
    // (request, expected backend, expected kernel file)
    let cases = [
        ("{}", "firecracker", "vmlinux"),
        (r#"{"vm_type": "emu"}"#, "qemu-tcg", "bzImage"),
        (r#"{"backend": "qemu-tcg"}"#, "qemu-tcg", "bzImage"),
        (
            r#"{"vm_type": "emu", "backend": "firecracker"}"#,
            "firecracker",
            "vmlinux",
        ),
    ];
    for (request, backend, kernel) in cases {
        let vm = h.create(request).await;
        assert_eq!(vm["spec"]["vmm"], backend, "{request}: {vm}");
        let path = vm["spec"]["kernel"].as_str().unwrap();
        assert!(path.ends_with(kernel), "{request}: {path}");
    }
    let (_, list) = h.send(Method::GET, "/v1/vms", None).await;
    let mut shown: Vec<&str> = list["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| vm["spec"]["vmm"].as_str().unwrap())
        .collect();
    shown.sort_unstable();
    assert_eq!(
        shown,
        ["firecracker", "firecracker", "qemu-tcg", "qemu-tcg"]
    );
    let (status, body) = h
        .send(Method::POST, "/v1/vms", Some(r#"{"backend": "kvm"}"#))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "invalid_request");

    // `daemon.backend = "qemu-tcg"`: types that name no backend run on it.
    let h = harness("qemu-tcg", fake);
    let vm = h.create("{}").await;
    assert_eq!(vm["spec"]["vmm"], "qemu-tcg", "{vm}");
}

#[tokio::test]
async fn qemu_vms_refuse_snapshots_templates_and_pools_with_501() {
    let h = harness("fake", fake);
    let vm = h.create(r#"{"vm_type": "emu", "wait": true}"#).await;
    assert_eq!(vm["state"], "ready", "{vm}");
    let id = vm["id"].as_str().unwrap();

    let (status, body) = h
        .send(Method::POST, &format!("/v1/vms/{id}/snapshots"), Some("{}"))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_IMPLEMENTED,
        "unsupported",
        "not supported by the qemu-tcg backend",
    );
    // Refused before anything was touched: still running, nothing recorded.
    let (_, vm) = h.send(Method::GET, &format!("/v1/vms/{id}"), None).await;
    assert_eq!(vm["state"], "ready", "{vm}");
    let (_, snapshots) = h.send(Method::GET, "/v1/snapshots", None).await;
    assert_eq!(snapshots["snapshots"], serde_json::json!([]));

    let (status, body) = h.send(Method::POST, "/v1/templates/emu/build", None).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_IMPLEMENTED,
        "unsupported",
        "template",
    );
    let (status, body) = h
        .send(Method::PATCH, "/v1/pools/emu", Some(r#"{"target": 1}"#))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_IMPLEMENTED,
        "unsupported",
        "snapshots are not supported by the qemu-tcg backend",
    );

    // A Firecracker VM's snapshot cannot be restored onto qemu-tcg.
    let fc = h.create(r#"{"wait": true}"#).await;
    let (status, snapshot) = h
        .send(
            Method::POST,
            &format!("/v1/vms/{}/snapshots", fc["id"].as_str().unwrap()),
            Some("{}"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{snapshot}");
    let restore = format!(
        r#"{{"from_snapshot": "{}", "backend": "qemu-tcg"}}"#,
        snapshot["id"].as_str().unwrap()
    );
    let (status, body) = h.send(Method::POST, "/v1/vms", Some(&restore)).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_IMPLEMENTED,
        "unsupported",
        "snapshot restores are not supported by the qemu-tcg backend",
    );

    // ultra_fast has no template to restore: a cold boot that says why.
    let vm = h
        .create(r#"{"vm_type": "emu", "optimization_level": "ultra_fast"}"#)
        .await;
    assert_eq!(vm["start"]["method"], "cold_boot", "{vm}");
    let note = vm["start"]["note"].as_str().unwrap();
    assert!(note.contains("takes no snapshots"), "{note}");
    // A pooled VM is of its type's backend.
    let (status, body) = h
        .send(
            Method::POST,
            "/v1/vms",
            Some(
                r#"{"vm_type": "emu", "optimization_level": "instant", "backend": "firecracker"}"#,
            ),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "runs on qemu-tcg",
    );
}

#[tokio::test]
async fn a_qemu_pool_never_prewarms_and_acquires_boot_instead() {
    let h = harness("fake", fake);
    let (status, acquired) = h
        .send(Method::POST, "/v1/pools/emu/acquire", Some("{}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{acquired}");
    assert_eq!(acquired["tier"], "cold", "{acquired}");
    assert_eq!(acquired["vm"]["spec"]["vmm"], "qemu-tcg");
    let (_, pool) = h.send(Method::GET, "/v1/pools/emu", None).await;
    assert_eq!(pool["sizes"]["starting"], 0, "{pool}");
    // The warm tier said why it could not serve, without starting a build.
    let (_, templates) = h.send(Method::GET, "/v1/templates", None).await;
    let emu = templates["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["vm_type"] == "emu")
        .unwrap();
    assert_eq!(emu["status"], "missing", "{emu}");
}

#[tokio::test]
async fn a_backend_missing_on_this_host_is_refused_with_what_to_install() {
    let h = harness("firecracker", |_| {
        Backend::Vmms(Arc::new(Vmms {
            default: Vmm::Firecracker,
            firecracker: Err("firecracker not found: run `tfc assets build`".to_owned()),
            qemu: Err(
                "qemu-system-x86_64 not found on PATH: apt install qemu-system-x86".to_owned(),
            ),
        }))
    });
    for (request, says) in [
        (r#"{"vm_type": "emu"}"#, "apt install qemu-system-x86"),
        (r#"{"backend": "qemu-tcg"}"#, "apt install qemu-system-x86"),
        ("{}", "tfc assets build"),
    ] {
        let (status, body) = h.send(Method::POST, "/v1/vms", Some(request)).await;
        assert_error(
            status,
            &body,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            says,
        );
    }
    assert_eq!(h.vm_dirs(), 0, "a refused VM left its directory");
}

/// An executable script at `path` that prints `version_line` for `--version`.
fn program(path: &Path, version_line: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\necho '{version_line}'\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn the_daemon_does_not_start_on_a_configured_backend_it_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = dir.path().join("qemu-system-x86_64");
    program(&qemu, "QEMU emulator version 7.2.22");
    let cases = [
        (
            "[daemon]\nbackend = \"qemu-tcg\"\n[qemu]\nbinary = \"/nonexistent/qemu\"\n".to_owned(),
            &["daemon.backend", "/nonexistent/qemu", "qemu.binary"][..],
        ),
        (
            format!(
                "[daemon]\nbackend = \"qemu-tcg\"\n[qemu]\nbinary = {qemu:?}\nvhost_device_vsock = \"/nonexistent/vhost\"\n"
            ),
            &["daemon.backend", "qemu.vhost_device_vsock"][..],
        ),
    ];
    for (text, says) in cases {
        let config = Config::parse(&text, "test").unwrap();
        let err = tfc_daemon::build_backend(&config, dir.path()).unwrap_err();
        let err = tfc_core::error_chain(&err);
        for word in says {
            assert!(err.contains(word), "{word:?} not in {err}");
        }
    }
    // Found and recognized: the daemon's default is qemu-tcg.
    let vhost = dir.path().join("vhost-device-vsock");
    program(&vhost, "vhost-device-vsock 0.3.0");
    let config = Config::parse(
        &format!(
            "[daemon]\nbackend = \"qemu-tcg\"\n[qemu]\nbinary = {qemu:?}\nvhost_device_vsock = {vhost:?}\n"
        ),
        "test",
    )
    .unwrap();
    let backend = tfc_daemon::build_backend(&config, dir.path()).unwrap();
    assert_eq!(backend.name(), "qemu-tcg");
    assert!(backend.check_available(Vmm::QemuTcg).is_ok());
}
