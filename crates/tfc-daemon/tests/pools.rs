//! Tier 0: pools of prewarmed VMs through the real HTTP router against the
//! fake backend, on tokio's paused clock: refill to target, acquire per tier,
//! 503 with Retry-After beyond capacity, back-off after failures,
//! autoscaling, health checks and max age, a VM dying in the pool, restarts
//! and shutdowns, and (property test) concurrent acquires racing refills
//! never hand a VM out twice. The same against real Firecracker is in
//! `pools_firecracker.rs`.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use tfc_core::VmId;
use tfc_daemon::backend::{Backend, FakeBackend, FakePriority};
use tfc_daemon::config::{Config, ShutdownPolicy};
use tfc_daemon::manager::VmManager;
use tfc_store::AnyStore;

struct Harness {
    app: axum::Router,
    manager: VmManager,
    fake: FakeBackend,
    dir: tempfile::TempDir,
}

/// A config with one VM type, `box`, whose pool section is `pool` (TOML
/// lines), and real (tiny) kernel and rootfs files for template digests.
fn config(dir: &Path, pool: &str) -> Config {
    common::box_config(dir, &format!("[vm_types.box.pool]\n{pool}"))
}

async fn harness_in(dir: tempfile::TempDir, store: AnyStore, pool: &str) -> Harness {
    let fake = FakeBackend::new(Duration::from_millis(20));
    fake.script(|s| s.restore_latency = Duration::from_millis(10));
    let manager = VmManager::new(
        Backend::Fake(fake.clone()),
        config(dir.path(), pool),
        dir.path().to_owned(),
        store,
    );
    manager.recover().await.unwrap();
    manager.start_pools();
    Harness {
        app: tfc_daemon::api::router(manager.clone()),
        manager,
        fake,
        dir,
    }
}

async fn harness(pool: &str) -> Harness {
    harness_in(
        tempfile::tempdir().unwrap(),
        AnyStore::Memory(tfc_store::MemoryStore::new()),
        pool,
    )
    .await
}

impl Harness {
    async fn send(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        common::send(&self.app, method, uri, body.as_deref()).await
    }

    async fn pool(&self) -> Value {
        let (status, pool) = self.send(Method::GET, "/v1/pools/box", None).await;
        assert_eq!(status, StatusCode::OK, "{pool}");
        pool
    }

    /// Waits (on the paused clock) until the pool satisfies `done`.
    async fn until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..2000 {
            let pool = self.pool().await;
            if done(&pool) {
                return pool;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("pool never reached: {what}: {}", self.pool().await);
    }

    async fn hot(&self, n: u64) -> Value {
        self.until(&format!("{n} hot"), |p| {
            p["sizes"]["hot"] == n && p["sizes"]["starting"] == 0
        })
        .await
    }

    async fn acquire(&self, body: Value) -> (StatusCode, Value) {
        self.send(Method::POST, "/v1/pools/box/acquire", Some(body))
            .await
    }

    async fn release(&self, id: &str) -> StatusCode {
        self.send(Method::POST, &format!("/v1/vms/{id}/release"), None)
            .await
            .0
    }

    async fn vm(&self, id: &str) -> Value {
        self.send(Method::GET, &format!("/v1/vms/{id}"), None)
            .await
            .1
    }

    async fn vms(&self) -> Vec<Value> {
        let (_, list) = self.send(Method::GET, "/v1/vms", None).await;
        list["vms"].as_array().unwrap().clone()
    }

    /// Ids of VMs waiting in the pool (not acquired, not terminal).
    async fn waiting_ids(&self) -> HashSet<String> {
        self.vms()
            .await
            .into_iter()
            .filter(|vm| {
                vm["pool"].is_object()
                    && vm["pool"]["acquired_at_ms"].is_null()
                    && !["stopped", "failed"].contains(&vm["state"].as_str().unwrap())
                    && vm["template_build"].is_null()
            })
            .map(|vm| vm["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn id(v: &Value) -> String {
    v["vm"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test(start_paused = true)]
async fn a_pool_fills_to_target_and_hands_out_hot_vms_by_resuming_them() {
    let h = harness("target = 3").await;
    let pool = h.hot(3).await;
    assert!(pool["template"].as_str().unwrap().starts_with("snap-"));
    assert_eq!(pool["stats"]["prewarmed"], 3);
    // Waiting VMs are paused clones of the template, marked as pool members.
    let waiting = h.waiting_ids().await;
    assert_eq!(waiting.len(), 3);
    for vm in &waiting {
        let vm = h.vm(vm).await;
        assert_eq!(vm["state"], "paused", "{vm}");
        assert_eq!(vm["pool"]["tier"], "hot");
        assert_eq!(vm["start"]["method"], "pool");
        assert_eq!(vm["start"]["level"], "instant");
    }

    let (status, got) = h.acquire(json!({})).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["tier"], "hot");
    assert_eq!(got["vm"]["state"], "running");
    assert!(got["vm"]["pool"]["acquired_at_ms"].as_u64().is_some());
    assert!(got["acquire_us"].as_u64().is_some());
    assert!(waiting.contains(&id(&got)), "handed out a waiting VM");
    // A waiting VM is the pool's: it cannot be used without an acquire.
    let other = waiting.iter().find(|v| **v != id(&got)).unwrap();
    let (status, err) = h
        .send(Method::POST, &format!("/v1/vms/{other}/resume"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("pool acquire"),
        "{err}"
    );
    let (status, _) = h
        .send(
            Method::POST,
            &format!("/v1/vms/{other}/snapshots"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // A wait beyond the limit is the caller's mistake.
    let (status, _) = h.acquire(json!({"wait_ms": u64::MAX})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let vm = h.vm(&id(&got)).await;
    assert_eq!(vm["state"], "running");
    assert!(vm["pool"]["acquire_us"].as_u64().is_some(), "{vm}");

    // The pool refills behind the acquire; the acquired VM is not counted.
    let pool = h.hot(3).await;
    assert_eq!(pool["sizes"]["acquired"], 1);
    assert_eq!(pool["stats"]["acquires"], 1);
    assert_eq!(pool["stats"]["tiers"][0]["tier"], "hot");
    assert_eq!(pool["stats"]["tiers"][0]["hit_rate"], 1.0);
    assert!(!h.waiting_ids().await.contains(&id(&got)));

    // No wait needed for a VM that is there.
    let (status, now) = h.acquire(json!({"wait_ms": 0})).await;
    assert_eq!(status, StatusCode::OK, "{now}");
    assert_eq!(now["tier"], "hot");
    assert_eq!(h.release(&id(&now)).await, StatusCode::NO_CONTENT);

    // Release destroys it: never handed to anyone else.
    assert_eq!(h.release(&id(&got)).await, StatusCode::NO_CONTENT);
    let (status, _) = h
        .send(Method::GET, &format!("/v1/vms/{}", id(&got)), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Only pool VMs can be released.
    let (_, plain) = h
        .send(Method::POST, "/v1/vms", Some(json!({"wait": true})))
        .await;
    let plain = plain["id"].as_str().unwrap();
    assert_eq!(h.release(plain).await, StatusCode::CONFLICT);
}

#[tokio::test(start_paused = true)]
async fn waiting_vms_run_in_the_background_until_handed_out() {
    let h = harness("target = 2\nrunning = 1").await;
    h.until("1 running + 2 hot", |p| {
        p["sizes"]["running"] == 1 && p["sizes"]["hot"] == 2 && p["sizes"]["starting"] == 0
    })
    .await;
    let vm_id = |id: &str| VmId::new(id.to_owned()).unwrap();
    let priority = |id: &str| h.fake.priority(&vm_id(id));
    let waiting = h.waiting_ids().await;
    assert_eq!(waiting.len(), 3);
    for vm in &waiting {
        assert_eq!(
            priority(vm),
            Some(FakePriority::Background),
            "waiting VM {vm}"
        );
    }
    // A hot VM is resumed with the VMM's own threads at normal priority and
    // its vCPUs still idle; a running VM's hand-over (no VMM call) changes
    // nothing. Either gets normal priority on every thread a moment after
    // the answer.
    for (tier, answered) in [
        ("running", FakePriority::Background),
        ("hot", FakePriority::VcpusIdle),
    ] {
        let (status, got) = h.acquire(json!({})).await;
        assert_eq!(status, StatusCode::OK, "{got}");
        assert_eq!(got["tier"], tier);
        let vm = id(&got);
        assert_eq!(priority(&vm), Some(answered), "{got}");
        let at_resume = h.fake.priority_at_resume(&vm_id(&vm));
        let expected = (tier == "hot").then_some(FakePriority::VcpusIdle);
        assert_eq!(at_resume, expected, "{tier}");
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(priority(&vm), Some(FakePriority::Normal), "{got}");
    }
    // A VM a caller asks for is never in the background.
    let (_, plain) = h
        .send(Method::POST, "/v1/vms", Some(json!({"wait": true})))
        .await;
    let plain = plain["id"].as_str().unwrap();
    assert_eq!(priority(plain), Some(FakePriority::Normal));
    // Its resume, like a hand-over, runs with its vCPUs idle until the
    // answer is out.
    for op in ["pause", "resume"] {
        let (status, body) = h
            .send(Method::POST, &format!("/v1/vms/{plain}/{op}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{op}: {body}");
    }
    let plain_id = vm_id(plain);
    assert_eq!(
        h.fake.priority_at_resume(&plain_id),
        Some(FakePriority::VcpusIdle)
    );
    assert_eq!(priority(plain), Some(FakePriority::VcpusIdle));
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(priority(plain), Some(FakePriority::Normal));

    // Anything asked of the VM meanwhile gives it normal priority first.
    let h = harness("target = 1\ntiers = [\"hot\"]").await;
    let priority = |id: &str| h.fake.priority(&vm_id(id));
    h.hot(1).await;
    let (_, got) = h.acquire(json!({})).await;
    let vm = id(&got);
    assert_eq!(priority(&vm), Some(FakePriority::VcpusIdle));
    let (status, paused) = h
        .send(Method::POST, &format!("/v1/vms/{vm}/pause"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(priority(&vm), Some(FakePriority::Normal));
    // A resume that takes long does not wait for idle vCPUs to take it up.
    h.hot(1).await;
    h.fake
        .script(|s| s.resume_latency = Duration::from_millis(20));
    let (status, got) = h.acquire(json!({})).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let vm = vm_id(&id(&got));
    assert_eq!(h.fake.priority_at_resume(&vm), Some(FakePriority::Normal));

    // A pool can keep its VMs at normal priority.
    let h = harness("target = 1\nprewarm_priority = \"normal\"").await;
    h.hot(1).await;
    for vm in h.waiting_ids().await {
        assert_eq!(
            h.fake.priority(&VmId::new(vm).unwrap()),
            Some(FakePriority::Normal)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_running_tier_is_tried_first_and_needs_no_resume() {
    let h = harness("target = 1\nrunning = 1").await;
    h.until("1 running + 1 hot", |p| {
        p["sizes"]["running"] == 1 && p["sizes"]["hot"] == 1
    })
    .await;
    let running: Vec<String> = h
        .vms()
        .await
        .into_iter()
        .filter(|vm| vm["pool"]["tier"] == "running")
        .map(|vm| {
            assert_eq!(vm["state"], "ready", "a running-tier VM waits running");
            vm["id"].as_str().unwrap().to_owned()
        })
        .collect();
    // Resumes fail from now on: only a handover can succeed.
    h.fake
        .script(|s| s.fail_pause_resume = Some("no resumes".to_owned()));
    let (status, got) = h.acquire(json!({})).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["tier"], "running");
    assert_eq!(id(&got), running[0]);
    assert_eq!(got["vm"]["state"], "running");
}

#[tokio::test(start_paused = true)]
async fn beyond_capacity_an_acquire_gets_503_with_retry_after_not_a_hang() {
    // Only the hot tier may serve, and it holds one VM.
    let h = harness("target = 1\ntiers = [\"hot\"]").await;
    h.hot(1).await;
    // Restores are slow now: the refill cannot keep up.
    h.fake
        .script(|s| s.restore_latency = Duration::from_secs(30));
    let (status, _) = h.acquire(json!({"wait_ms": 100})).await;
    assert_eq!(status, StatusCode::OK);
    let started = tokio::time::Instant::now();
    let request = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/v1/pools/box/acquire")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(r#"{"wait_ms": 100}"#))
        .unwrap();
    use tower::ServiceExt;
    let response = h.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "bounded by wait_ms"
    );
    let pool = h.pool().await;
    assert_eq!(pool["stats"]["unserved"], 1);
    // With a budget that covers the refill, the same acquire waits for the
    // VM that is being restored and gets it.
    let (status, got) = h.acquire(json!({"wait_ms": 60_000})).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["tier"], "hot");
}

#[tokio::test(start_paused = true)]
async fn warm_and_cold_tiers_serve_when_nothing_waits() {
    let h = harness("target = 0\ntiers = [\"warm\"]").await;
    // No template yet: the warm tier cannot serve (and starts building one).
    let (status, err) = h.acquire(json!({"wait_ms": 10})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{err}");
    assert!(err["message"].as_str().unwrap().contains("warm:"), "{err}");
    let (status, built) = h.send(Method::POST, "/v1/templates/box/build", None).await;
    assert_eq!(status, StatusCode::OK, "{built}");
    let (status, got) = h.acquire(json!({})).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["tier"], "warm");
    assert_eq!(got["vm"]["state"], "running");
    assert_eq!(got["vm"]["pool"]["tier"], "warm");
    assert_eq!(got["vm"]["start"]["method"], "restore");
    assert!(got["vm"]["pool"]["acquired_at_ms"].is_u64());
    assert_eq!(got["vm"]["start"]["snapshot"], built["snapshot"]);
    assert_eq!(h.release(&id(&got)).await, StatusCode::NO_CONTENT);

    let h = harness("target = 0\ntiers = [\"cold\"]").await;
    let (status, got) = h.acquire(json!({})).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["tier"], "cold");
    assert_eq!(got["vm"]["state"], "running");
    assert_eq!(got["vm"]["start"]["method"], "cold_boot");
    assert_eq!(got["vm"]["start"]["level"], "instant");
    assert_eq!(h.release(&id(&got)).await, StatusCode::NO_CONTENT);
    // Once boots are measured slower than the budget, cold does not even try.
    // (Start times are wall-clock, so on the paused test clock only a zero
    // budget is certainly shorter than the measured boot.)
    let (status, err) = h.acquire(json!({"wait_ms": 0})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("a boot takes"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn level_instant_is_served_by_the_pool() {
    let h = harness("target = 1").await;
    h.hot(1).await;
    let (status, vm) = h
        .send(
            Method::POST,
            "/v1/vms",
            Some(json!({"optimization_level": "instant"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{vm}");
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["start"]["method"], "pool");
    assert_eq!(vm["pool"]["tier"], "hot");
    let (status, err) = h
        .send(
            Method::POST,
            "/v1/vms",
            Some(json!({"optimization_level": "instant", "vcpus": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
}

#[tokio::test(start_paused = true)]
async fn failed_refills_back_off_exponentially_and_say_why() {
    let h = harness("target = 2\nprewarm_concurrency = 1").await;
    h.hot(2).await;
    h.fake
        .script(|s| s.fail_restores = Some("disk on fire".to_owned()));
    let (status, _) = h.acquire(json!({})).await;
    assert_eq!(status, StatusCode::OK);
    // Failures pile up, each retry later than the last.
    let mut retries = Vec::new();
    let mut last = 0;
    while retries.len() < 4 {
        let pool = h
            .until("another failure", |p| {
                p["stats"]["consecutive_failures"].as_u64().unwrap() > last
            })
            .await;
        last = pool["stats"]["consecutive_failures"].as_u64().unwrap();
        assert!(pool["stats"]["last_failure"]
            .as_str()
            .unwrap()
            .contains("disk on fire"));
        retries.push((tokio::time::Instant::now(), last));
    }
    let gaps: Vec<u128> = retries
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).as_millis())
        .collect();
    // 500 ms, 1 s, 2 s, ... (as observed through 50 ms polling).
    for pair in gaps.windows(2) {
        assert!(
            pair[1] >= pair[0] * 3 / 2,
            "back-off does not grow: {gaps:?}"
        );
    }
    // Fixed: the pool recovers and the failure clears.
    h.fake.script(|s| s.fail_restores = None);
    let pool = h.hot(2).await;
    assert_eq!(pool["stats"]["consecutive_failures"], 0);
    assert!(pool["stats"]["last_failure"].is_null());
    assert!(pool["stats"]["prewarm_failures"].as_u64().unwrap() >= 4);
}

#[tokio::test(start_paused = true)]
async fn autoscaling_raises_the_target_under_demand_and_lowers_it_when_idle() {
    let h = harness(
        "target = 2\nmin = 1\nmax = 5\n[vm_types.box.pool.autoscale]\nwindow_secs = 10\nstep = 2",
    )
    .await;
    h.hot(2).await;
    // Two acquires in a window: peak use 2 of 2.
    for _ in 0..2 {
        let (status, got) = h.acquire(json!({})).await;
        assert_eq!(status, StatusCode::OK, "{got}");
    }
    let pool = h.until("scaled up", |p| p["target"] == 4).await;
    assert_eq!(pool["stats"]["scaled_up"], 1);
    h.hot(4).await;
    // Idle windows: down one per window, to min.
    let pool = h.until("scaled down to min", |p| p["target"] == 1).await;
    assert_eq!(pool["stats"]["scaled_down"], 3);
    h.hot(1).await;
}

#[tokio::test(start_paused = true)]
async fn unhealthy_dead_and_old_vms_are_replaced() {
    let h = harness("target = 2\nhealth_interval_ms = 1000\nmax_age_secs = 3600").await;
    h.hot(2).await;
    let first: Vec<String> = h.waiting_ids().await.into_iter().collect();
    // One fails its health check, one's VMM dies.
    let sick = VmId::new(first[0].clone()).unwrap();
    h.fake.script(|s| {
        s.unhealthy
            .insert(sick.clone(), "VMM reports NotStarted".to_owned());
    });
    assert!(h.fake.kill(&VmId::new(first[1].clone()).unwrap()));
    let pool = h
        .until("both replaced", |p| {
            p["stats"]["replaced_unhealthy"] == 2 && p["sizes"]["hot"] == 2
        })
        .await;
    assert!(pool["stats"]["last_replacement"].is_string(), "{pool}");
    let now: HashSet<String> = h.waiting_ids().await;
    assert!(
        first.iter().all(|id| !now.contains(id)),
        "{now:?} {first:?}"
    );
    for gone in &first {
        let (status, _) = h.send(Method::GET, &format!("/v1/vms/{gone}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "a replaced VM is removed");
    }
    // An hour later every VM has been replaced for its age.
    tokio::time::sleep(Duration::from_secs(3601)).await;
    let pool = h
        .until("aged out", |p| {
            p["stats"]["replaced_aged"] == 2 && p["sizes"]["hot"] == 2
        })
        .await;
    assert_eq!(pool["sizes"]["needs_maintenance"], 0);
    assert!(h.waiting_ids().await.is_disjoint(&now));
}

#[tokio::test(start_paused = true)]
async fn a_dead_vm_is_never_handed_out() {
    // Health checks far apart: only the acquire can notice.
    let h = harness("target = 2\nhealth_interval_ms = 3600000").await;
    h.hot(2).await;
    for vm in h.waiting_ids().await {
        h.fake.kill(&VmId::new(vm).unwrap());
    }
    let (status, got) = h.acquire(json!({"wait_ms": 60_000})).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["vm"]["state"], "running");
    let pool = h.pool().await;
    assert_eq!(pool["stats"]["replaced_unhealthy"], 2);
}

#[tokio::test(start_paused = true)]
async fn a_hand_over_that_hangs_is_given_up_and_the_vm_replaced() {
    let h = harness("target = 1\ntiers = [\"hot\"]").await;
    h.hot(1).await;
    let stuck = h.waiting_ids().await.into_iter().next().unwrap();
    // The VMM takes a minute to resume: past the wait and the hand-over's
    // own limit.
    h.fake
        .script(|s| s.resume_latency = Duration::from_secs(60));
    let started = tokio::time::Instant::now();
    let (status, err) = h.acquire(json!({"wait_ms": 100})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded: {:?}",
        started.elapsed()
    );
    h.fake.script(|s| s.resume_latency = Duration::ZERO);
    // The VM is removed once its owner has finished, and replaced.
    let pool = h
        .until("replaced", |p| {
            p["stats"]["replaced_unhealthy"] == 1 && p["sizes"]["hot"] == 1
        })
        .await;
    assert_eq!(pool["sizes"]["needs_maintenance"], 1, "{pool}");
    let mut gone = false;
    for _ in 0..2000 {
        let (status, _) = h.send(Method::GET, &format!("/v1/vms/{stuck}"), None).await;
        if status == StatusCode::NOT_FOUND {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the stuck VM was never removed");
    let pool = h.pool().await;
    assert_eq!(pool["sizes"]["acquired"], 0, "{pool}");
    assert_eq!(pool["sizes"]["needs_maintenance"], 0, "{pool}");
}

#[tokio::test(start_paused = true)]
async fn resizing_fills_and_sheds() {
    let h = harness("target = 1\nmax = 4").await;
    h.hot(1).await;
    let (status, pool) = h
        .send(Method::PATCH, "/v1/pools/box", Some(json!({"target": 3})))
        .await;
    assert_eq!(status, StatusCode::OK, "{pool}");
    assert_eq!(pool["target"], 3);
    h.hot(3).await;
    let (status, _) = h
        .send(Method::PATCH, "/v1/pools/box", Some(json!({"target": 0})))
        .await;
    assert_eq!(status, StatusCode::OK);
    h.hot(0).await;
    // The shed VMs are removed, not just forgotten.
    let mut left = usize::MAX;
    for _ in 0..200 {
        left = h.vms().await.len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0, "shed VMs still listed: {:?}", h.vms().await);
    for (body, field) in [
        (json!({"target": 5}), "target"),
        (json!({"min": 3, "target": 2}), "target"),
        (json!({"max": 1000}), "max"),
    ] {
        let (status, err) = h.send(Method::PATCH, "/v1/pools/box", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
        assert!(err["message"].as_str().unwrap().contains(field), "{err}");
    }
    let (status, _) = h
        .send(Method::PATCH, "/v1/pools/box", Some(json!({"colour": 1})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = h.send(Method::GET, "/v1/pools/nope", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(start_paused = true)]
async fn a_restart_discards_waiting_vms_and_keeps_acquired_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_owned();
    let store = || AnyStore::open(tfc_store::StoreKind::Sqlite, &data).unwrap();
    let h = harness_in(dir, store(), "target = 2").await;
    h.hot(2).await;
    let (_, got) = h.acquire(json!({})).await;
    h.hot(2).await;
    let waiting = h.waiting_ids().await;
    // The first daemon "dies": its pool stops; nothing is cleaned up.
    h.manager.pools().close();
    let dir = h.dir;
    // A new manager on the same store, as after a crash (the fake's VMs die
    // with their daemon, so the acquired one is found failed, not lost).
    let h = harness_in(dir, store(), "target = 0").await;
    let ids: HashSet<String> = h
        .vms()
        .await
        .iter()
        .map(|vm| vm["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.contains(&id(&got)), "the acquired VM is still recorded");
    assert!(
        ids.is_disjoint(&waiting),
        "waiting VMs were removed: {ids:?}"
    );
    for gone in waiting {
        assert!(!h.dir.path().join("vms").join(gone).exists());
    }
}

/// A running VM's hand-over writes its record on the worker thread itself
/// (no VMM call to overlap it with), before the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_vm_is_recorded_as_handed_out_before_the_answer() {
    use tfc_store::Store;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_owned();
    let store = || AnyStore::open(tfc_store::StoreKind::Sqlite, &data).unwrap();
    let h = harness_in(dir, store(), "target = 0\nrunning = 1").await;
    h.until("1 running", |p| {
        p["sizes"]["running"] == 1 && p["sizes"]["starting"] == 0
    })
    .await;
    let (status, got) = h.acquire(json!({})).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["tier"], "running");
    let row = store()
        .get_vm(&VmId::new(id(&got)).unwrap())
        .unwrap()
        .expect("recorded");
    let record: Value = serde_json::from_str(&row.record).unwrap();
    assert_eq!(record["state"], "running", "{record}");
    assert!(record["pool"]["acquired_at_ms"].is_u64(), "{record}");
}

#[tokio::test(start_paused = true)]
async fn shutdown_removes_waiting_vms_whatever_the_policy() {
    let h = harness("target = 2").await;
    h.hot(2).await;
    let (_, got) = h.acquire(json!({})).await;
    h.manager.shutdown(ShutdownPolicy::LeaveRunning).await;
    let left: Vec<String> = h.manager.list().into_iter().map(|vm| vm.id).collect();
    assert_eq!(left, [id(&got)], "only the caller's VM stays");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    /// Concurrent acquires and releases racing the refill: every acquire
    /// that succeeds gets a running VM nobody else got.
    #[test]
    fn no_vm_is_handed_out_twice(
        target in 1u32..4,
        running in 0u32..2,
        rounds in proptest::collection::vec((1usize..6, proptest::bool::ANY), 1..6),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async move {
            let h = harness(&format!("target = {target}\nrunning = {running}\nmax = 8\nprewarm_concurrency = 2\ntiers = [\"running\", \"hot\"]")).await;
            // Filled first: the rounds race the refills, not the template build.
            h.until("filled", |p| {
                p["sizes"]["hot"] == target && p["sizes"]["running"] == running
            })
            .await;
            let mut handed = HashSet::new();
            for (parallel, release) in rounds {
                let mut tasks = tokio::task::JoinSet::new();
                for _ in 0..parallel {
                    let app = h.app.clone();
                    tasks.spawn(async move {
                        common::send(&app, Method::POST, "/v1/pools/box/acquire", Some(r#"{"wait_ms": 2000}"#)).await
                    });
                }
                let mut got = Vec::new();
                while let Some(done) = tasks.join_next().await {
                    let (status, body) = done.unwrap();
                    match status {
                        StatusCode::OK => {
                            assert_eq!(body["vm"]["state"], "running");
                            let vm = id(&body);
                            assert!(handed.insert(vm.clone()), "{vm} handed out twice");
                            got.push(vm);
                        }
                        StatusCode::SERVICE_UNAVAILABLE => {}
                        other => panic!("unexpected {other}: {body}"),
                    }
                }
                if release {
                    for vm in got {
                        assert_eq!(h.release(&vm).await, StatusCode::NO_CONTENT);
                    }
                }
            }
            assert!(!handed.is_empty(), "within capacity, something was served");
            // Nothing leaks: with every VM released, the pool settles at its
            // targets and holds exactly those VMs.
            let (_, list) = h.send(Method::GET, "/v1/vms", None).await;
            for vm in list["vms"].as_array().unwrap() {
                if vm["pool"]["acquired_at_ms"].is_u64() {
                    assert_eq!(h.release(vm["id"].as_str().unwrap()).await, StatusCode::NO_CONTENT);
                }
            }
            let settled = |p: &Value| {
                p["sizes"]["hot"] == target
                    && p["sizes"]["running"] == running
                    && p["sizes"]["starting"] == 0
                    && p["sizes"]["needs_maintenance"] == 0
                    && p["sizes"]["acquired"] == 0
            };
            h.until("settled", settled).await;
            let mut count = 0;
            for _ in 0..200 {
                count = h.vms().await.len();
                if count == (target + running) as usize {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(count, (target + running) as usize, "VMs leaked: {:?}", h.vms().await);
        });
    }
}
