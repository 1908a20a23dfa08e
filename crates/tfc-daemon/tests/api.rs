//! Tier 0: the daemon through its real HTTP router against the fake backend.
//! Every endpoint, every error code, bad bodies, illegal transitions.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use tfc_daemon::backend::{Backend, FakeBackend};
use tfc_daemon::config::{Config, ShutdownPolicy};
use tfc_daemon::manager::VmManager;
use tower::ServiceExt;

struct Harness {
    app: axum::Router,
    manager: VmManager,
    fake: FakeBackend,
    dir: tempfile::TempDir,
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse("[daemon]\nbackend = \"fake\"\n", "test").unwrap();
    let fake = FakeBackend::new(Duration::from_millis(20));
    let manager = VmManager::in_memory(Backend::Fake(fake.clone()), config, dir.path().to_owned());
    Harness {
        app: tfc_daemon::api::router(manager.clone()),
        manager,
        fake,
        dir,
    }
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

    async fn op(&self, id: &str, op: &str) -> (StatusCode, Value) {
        self.send(Method::POST, &format!("/v1/vms/{id}/{op}"), None)
            .await
    }

    async fn state_of(&self, id: &str) -> String {
        let (_, vm) = self.send(Method::GET, &format!("/v1/vms/{id}"), None).await;
        vm["state"].as_str().unwrap().to_owned()
    }

    async fn wait_state(&self, id: &str, want: &str) {
        for _ in 0..500 {
            if self.state_of(id).await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("VM {id} never reached {want}: {}", self.state_of(id).await);
    }
}

fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(!body["message"].as_str().unwrap_or("").is_empty(), "{body}");
}

#[tokio::test]
async fn health_reports_backend_and_count() {
    let h = harness();
    let (status, body) = h.send(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["backend"], "fake");
    assert_eq!(body["vms"], 0);
}

#[tokio::test]
async fn full_lifecycle_through_the_api() {
    let h = harness();
    let vm = h
        .create(r#"{"wait": true, "vcpus": 2, "memory_mib": 256}"#)
        .await;
    let id = vm["id"].as_str().unwrap().to_owned();
    assert_eq!(vm["state"], "ready");
    assert_eq!(vm["spec"]["vcpus"], 2);
    assert_eq!(vm["spec"]["memory_mib"], 256);
    let phases: Vec<&str> = vm["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "spawned",
            "api_ready",
            "configured",
            "instance_started",
            "ready"
        ]
    );
    let times: Vec<u64> = vm["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["at_us"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(std::path::Path::new(vm["workdir"].as_str().unwrap()).is_dir());

    let (status, list) = h.send(Method::GET, "/v1/vms", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["vms"].as_array().unwrap().len(), 1);

    let (status, vm) = h.op(&id, "pause").await;
    assert_eq!(
        (status, vm["state"].as_str()),
        (StatusCode::OK, Some("paused"))
    );
    let (status, body) = h.op(&id, "pause").await;
    assert_error(status, &body, StatusCode::CONFLICT, "invalid_state");
    assert_eq!(body["state"], "paused");

    let (status, vm) = h.op(&id, "resume").await;
    assert_eq!(
        (status, vm["state"].as_str()),
        (StatusCode::OK, Some("running"))
    );
    let (status, body) = h.op(&id, "resume").await;
    assert_error(status, &body, StatusCode::CONFLICT, "invalid_state");

    let (status, vm) = h.op(&id, "stop").await;
    assert_eq!(
        (status, vm["state"].as_str()),
        (StatusCode::OK, Some("stopped"))
    );
    assert_eq!(vm["exit"]["code"], 0);
    for op in ["stop", "pause", "resume"] {
        let (status, body) = h.op(&id, op).await;
        assert_error(status, &body, StatusCode::CONFLICT, "invalid_state");
        assert_eq!(body["state"], "stopped");
    }

    let (status, body) = h.send(Method::DELETE, &format!("/v1/vms/{id}"), None).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    let (status, body) = h.send(Method::GET, &format!("/v1/vms/{id}"), None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        std::fs::read_dir(h.dir.path().join("vms")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn create_without_wait_answers_at_once_then_boots() {
    let h = harness();
    h.fake
        .script(|s| s.boot_latency = Duration::from_millis(200));
    let vm = h.create("{}").await;
    assert_eq!(vm["state"], "creating");
    let id = vm["id"].as_str().unwrap();
    assert_eq!(vm["spec"]["vm_type"], "default");
    // Booting refuses pause and resume but accepts stop.
    h.wait_state(id, "booting").await;
    let (status, body) = h.op(id, "pause").await;
    assert_error(status, &body, StatusCode::CONFLICT, "invalid_state");
    assert_eq!(body["state"], "booting");
    let (status, vm) = h.op(id, "stop").await;
    assert_eq!(
        (status, vm["state"].as_str()),
        (StatusCode::OK, Some("stopped"))
    );
}

#[tokio::test]
async fn delete_refuses_live_vms_unless_forced() {
    let h = harness();
    let vm = h.create(r#"{"wait": true}"#).await;
    let id = vm["id"].as_str().unwrap();
    let (status, body) = h.send(Method::DELETE, &format!("/v1/vms/{id}"), None).await;
    assert_error(status, &body, StatusCode::CONFLICT, "invalid_state");
    assert_eq!(body["state"], "ready");
    let (status, body) = h
        .send(Method::DELETE, &format!("/v1/vms/{id}?force=maybe"), None)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, _) = h
        .send(Method::DELETE, &format!("/v1/vms/{id}?force=true"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!std::path::Path::new(vm["workdir"].as_str().unwrap()).exists());
}

#[tokio::test]
async fn bad_bodies_are_refused_with_clear_errors() {
    let h = harness();
    let cases = [
        ("{", "EOF"),
        ("\"text\"", "invalid type"),
        ("null", "invalid type"),
        (r#"{"vcpus": "two"}"#, "vcpus"),
        (r#"{"colour": "red"}"#, "unknown field `colour`"),
        (r#"{"vcpus": 0}"#, "vcpus"),
        (r#"{"vcpus": 33}"#, "vcpus"),
        (r#"{"vcpus": 300}"#, "vcpus"),
        (r#"{"memory_mib": 4}"#, "memory_mib"),
        (r#"{"vm_type": "huge"}"#, "unknown VM type \"huge\""),
        (r#"{"vm_type": "../x"}"#, "unknown VM type"),
        (
            r#"{"extra_boot_args": "virtio_mmio.device=4K@0xd0000000:5"}"#,
            "must not declare devices",
        ),
        (r#"{"extra_boot_args": "a\nb"}"#, "one line"),
        (
            r#"{"extra_boot_args": "quiet"}"#,
            "hide the kernel's console",
        ),
        (
            r#"{"extra_boot_args": "loglevel=3"}"#,
            "hide the kernel's console",
        ),
    ];
    for (body, needle) in cases {
        let (status, answer) = h.send(Method::POST, "/v1/vms", Some(body)).await;
        assert_error(status, &answer, StatusCode::BAD_REQUEST, "invalid_request");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    // A body without a JSON content type.
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/vms")
        .body(Body::from("{}"))
        .unwrap();
    let response = h.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // Oversized bodies.
    let huge = format!(r#"{{"extra_boot_args": "{}"}}"#, "a".repeat(100_000));
    let (status, body) = h.send(Method::POST, "/v1/vms", Some(&huge)).await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    // Nothing was created by any of it.
    let (_, list) = h.send(Method::GET, "/v1/vms", None).await;
    assert_eq!(list["vms"], json!([]));
}

#[tokio::test]
async fn unknown_ids_and_routes() {
    let h = harness();
    let (status, body) = h.send(Method::GET, "/v1/vms/vm-000000000000", None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = h.op("vm-000000000000", "pause").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = h
        .send(Method::DELETE, "/v1/vms/vm-000000000000", None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = h.send(Method::GET, "/v1/vms/Bad.Id", None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, body) = h.send(Method::GET, "/v1/nothing", None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, _) = h.send(Method::PUT, "/v1/vms", Some("{}")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn backend_failures_surface_in_the_record_and_status() {
    let h = harness();
    h.fake
        .script(|s| s.fail_next_create = Some("no room".into()));
    let vm = h.create(r#"{"wait": true}"#).await;
    assert_eq!(vm["state"], "failed");
    assert!(vm["failure"].as_str().unwrap().contains("no room"), "{vm}");

    h.fake
        .script(|s| s.fail_next_boot = Some("guest hung".into()));
    let vm = h.create(r#"{"wait": true}"#).await;
    assert_eq!(vm["state"], "failed");
    assert!(
        vm["failure"].as_str().unwrap().contains("guest hung"),
        "{vm}"
    );

    let vm = h.create(r#"{"wait": true}"#).await;
    let id = vm["id"].as_str().unwrap();
    h.fake
        .script(|s| s.fail_pause_resume = Some("vmm said no".into()));
    let (status, body) = h.op(id, "pause").await;
    assert_error(status, &body, StatusCode::BAD_GATEWAY, "backend_error");
    assert!(body["message"].as_str().unwrap().contains("vmm said no"));
    assert_eq!(
        h.state_of(id).await,
        "ready",
        "a refused pause changes nothing"
    );
}

#[tokio::test]
async fn a_vmm_that_dies_leaves_a_failed_vm_with_the_exit_reason() {
    let h = harness();
    h.fake
        .script(|s| s.crash_after = Some(Duration::from_millis(100)));
    let vm = h.create(r#"{"wait": true}"#).await;
    let id = vm["id"].as_str().unwrap();
    assert_eq!(vm["state"], "ready");
    h.wait_state(id, "failed").await;
    let (_, vm) = h.send(Method::GET, &format!("/v1/vms/{id}"), None).await;
    assert_eq!(vm["exit"]["signal"], 9, "{vm}");
    assert!(vm["failure"].as_str().unwrap().contains("SIGKILL"), "{vm}");
    // A failed VM may be deleted without force.
    let (status, _) = h.send(Method::DELETE, &format!("/v1/vms/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn wait_timeout_returns_the_vm_as_it_is() {
    let h = harness();
    h.fake.script(|s| s.boot_latency = Duration::from_secs(5));
    let vm = h.create(r#"{"wait": true, "wait_timeout_ms": 50}"#).await;
    assert_eq!(vm["state"], "booting");
}

#[tokio::test]
async fn openapi_document_is_served_and_matches_the_committed_copy() {
    let h = harness();
    let (status, doc) = h.send(Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/v1/vms/{id}/pause"]["post"].is_object());
    let generated = tfc_daemon::api::openapi_json();
    let committed_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&committed_path, format!("{generated}\n")).unwrap();
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "docs/openapi.json is stale: run `UPDATE_OPENAPI=1 cargo test -p tfc-daemon --test api` and commit it"
    );
}

/// The fake runs on tokio's clock: with time paused, an hour-long scripted boot
/// completes as soon as the runtime is idle, and a scripted crash lands exactly
/// when the clock says.
#[tokio::test(start_paused = true)]
async fn the_fake_backend_follows_tokios_clock() {
    let h = harness();
    h.fake.script(|s| {
        s.boot_latency = Duration::from_secs(3600);
        s.crash_after = Some(Duration::from_secs(7200));
    });
    let started = tokio::time::Instant::now();
    let vm = h
        .create(r#"{"wait": true, "wait_timeout_ms": 4000000}"#)
        .await;
    assert_eq!(vm["state"], "ready", "{vm}");
    assert!(started.elapsed() >= Duration::from_secs(3600));
    let id = vm["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_secs(3599)).await;
    assert_eq!(h.state_of(id).await, "ready");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.state_of(id).await, "failed");
}

#[tokio::test]
async fn a_shutting_down_daemon_refuses_new_vms_and_stops_the_rest() {
    let h = harness();
    let vm = h.create(r#"{"wait": true}"#).await;
    h.manager.shutdown(ShutdownPolicy::Stop).await;
    let (status, body) = h
        .send(
            Method::GET,
            &format!("/v1/vms/{}", vm["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = h.send(Method::POST, "/v1/vms", Some("{}")).await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    assert!(
        body["message"].as_str().unwrap().contains("shutting down"),
        "{body}"
    );
    assert_eq!(
        std::fs::read_dir(h.dir.path().join("vms")).unwrap().count(),
        0
    );
}

/// A firecracker-backed daemon without built assets answers 503 and says what
/// to do; one whose data directory is unusable answers 500. Neither needs KVM:
/// both fail before any VMM is started.
#[tokio::test]
async fn missing_assets_and_a_broken_data_dir_have_their_own_codes() {
    let dir = tempfile::tempdir().unwrap();
    // Stands in for the binary only as far as `--version`; no VMM is started.
    let binary = dir.path().join("firecracker");
    std::fs::write(&binary, "#!/bin/sh\necho Firecracker v1.12.1\n").unwrap();
    std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = Config::parse(
        &format!(
            "[firecracker]\nbinary = \"{}\"\njailer = false\n",
            binary.display()
        ),
        "test",
    )
    .unwrap();
    let backend = tfc_daemon::build_backend(&config, dir.path()).unwrap();
    let no_assets = Harness {
        app: tfc_daemon::api::router(VmManager::in_memory(backend, config, dir.path().to_owned())),
        ..harness()
    };
    let (status, body) = no_assets.send(Method::POST, "/v1/vms", Some("{}")).await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("tfc assets build"),
        "{body}"
    );

    let broken = harness();
    // A file where the VM directories should go.
    std::fs::write(broken.dir.path().join("vms"), b"not a directory").unwrap();
    let (status, body) = broken.send(Method::POST, "/v1/vms", Some("{}")).await;
    assert_error(status, &body, StatusCode::INTERNAL_SERVER_ERROR, "internal");
    assert!(
        body["message"].as_str().unwrap().contains("VM directory"),
        "{body}"
    );
}

/// `GET uri`: status, `X-Tfc-Log-Offset`, and the body as text.
async fn get_text(h: &Harness, uri: &str) -> (StatusCode, Option<u64>, String) {
    use http_body_util::BodyExt;
    let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let response = h.app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let offset = response
        .headers()
        .get(tfc_daemon::api::LOG_OFFSET_HEADER)
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, offset, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn a_vms_logs_are_read_whole_by_tail_or_from_an_offset() {
    let h = harness();
    let vm = h.create(r#"{"wait": true}"#).await;
    let id = vm["id"].as_str().unwrap();
    let workdir = std::path::Path::new(vm["workdir"].as_str().unwrap());
    // The fake runs no VMM: nothing written yet reads as empty.
    let (status, offset, text) = get_text(&h, &format!("/v1/vms/{id}/logs")).await;
    assert_eq!(
        (status, offset, text.as_str()),
        (StatusCode::OK, Some(0), "")
    );
    // The files the backends write (console, and Firecracker's own log).
    let console = std::path::Path::new(vm["console_log"].as_str().unwrap());
    assert_eq!(console.parent(), Some(workdir));
    std::fs::write(console, "boot 1\nboot 2\nRun /init as init process\n").unwrap();
    std::fs::write(workdir.join("firecracker.log"), "vmm started\n").unwrap();

    let (status, offset, text) = get_text(&h, &format!("/v1/vms/{id}/logs")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text, "boot 1\nboot 2\nRun /init as init process\n");
    let offset = offset.unwrap();
    assert_eq!(offset, text.len() as u64);
    let (_, _, text) = get_text(&h, &format!("/v1/vms/{id}/logs?tail=1")).await;
    assert_eq!(text, "Run /init as init process\n");
    let (_, _, text) = get_text(&h, &format!("/v1/vms/{id}/logs?source=vmm")).await;
    assert_eq!(text, "vmm started\n");
    // Following: only what came after the offset.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(console)
        .unwrap();
    std::io::Write::write_all(&mut file, b"later\n").unwrap();
    let uri = format!("/v1/vms/{id}/logs?since={offset}");
    let (_, next, text) = get_text(&h, &uri).await;
    assert_eq!((text.as_str(), next), ("later\n", Some(offset + 6)));

    for (query, needle) in [
        ("tail=0", "tail must be between"),
        ("tail=2&since=0", "not both"),
        ("source=serial", "source"),
        ("lines=3", "unknown field"),
    ] {
        let (status, body) = h
            .send(Method::GET, &format!("/v1/vms/{id}/logs?{query}"), None)
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(
            body["message"].as_str().unwrap().contains(needle),
            "{query}: {body}"
        );
    }
    let (status, body) = h
        .send(Method::GET, "/v1/vms/vm-000000000000/logs", None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    // A jailed VMM's log is a link into its jail, whose user may replace
    // the file there with a link to a host file: refused, never followed.
    let secret = workdir.join("host-secret");
    std::fs::write(&secret, "secret\n").unwrap();
    let jailed = workdir.join("jail-log");
    std::os::unix::fs::symlink(&secret, &jailed).unwrap();
    std::fs::remove_file(workdir.join("firecracker.log")).unwrap();
    std::os::unix::fs::symlink(&jailed, workdir.join("firecracker.log")).unwrap();
    let (status, body) = h
        .send(Method::GET, &format!("/v1/vms/{id}/logs?source=vmm"), None)
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "invalid_state");
    assert!(!body.to_string().contains("secret\\n"), "{body}");
}
