//! Tier 0, fake VMM + real agent: the daemon's guest-agent paths (readiness,
//! the identity fix-up after restores and hand-overs, exec, files, the kept
//! connection) through the real HTTP router, against a real `tfc-agent`
//! process that the fake backend runs on the host behind each fake VM's
//! vsock socket. No VMM runs: these tests say nothing about Firecracker's or
//! QEMU's vsock, only about the daemon and the agent. Commands "in the
//! guest" run on this host, as this user, so they only touch the test's
//! own temporary directory.

mod common;

use common::Exec;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tfc_core::VmId;
use tfc_daemon::backend::{Backend, FakeAgent, FakeBackend};
use tfc_daemon::config::Config;
use tfc_daemon::manager::VmManager;
use tower::ServiceExt;

struct Harness {
    app: axum::Router,
    manager: VmManager,
    fake: FakeBackend,
    dir: tempfile::TempDir,
}

/// The agent the fake runs: it records the clock it is asked to set.
fn agent() -> FakeAgent {
    FakeAgent {
        binary: common::agent_binary(),
        record_clock: true,
        silent: false,
    }
}

/// Three VM types: `default` runs the agent, `plain` has it off, `auto`
/// leaves it to the daemon (off under the fake, which runs no guest).
fn config(dir: &Path, boot_timeout_secs: u64, pool: &str) -> Config {
    let (kernel, rootfs) = common::tiny_assets(dir);
    let machine = format!(
        "kernel = \"{}\"\nrootfs = \"{}\"\nboot_args = \"console=ttyS0\"\n",
        kernel.display(),
        rootfs.display()
    );
    let text = format!(
        "[daemon]\nbackend = \"fake\"\n\
         [firecracker]\nboot_timeout_secs = {boot_timeout_secs}\n\
         [agent]\nmax_file_mib = 1\n\
         [vm_types.default]\n{machine}agent = \"on\"\n\
         [vm_types.default.pool]\n{pool}\n\
         [vm_types.plain]\n{machine}agent = \"off\"\n\
         [vm_types.auto]\n{machine}"
    );
    Config::parse(&text, "test").unwrap()
}

fn harness_with(agent: FakeAgent, boot_timeout_secs: u64, pool: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeBackend::new(Duration::from_millis(20));
    fake.script(|s| s.agent = Some(agent));
    let manager = VmManager::in_memory(
        Backend::Fake(fake.clone()),
        config(dir.path(), boot_timeout_secs, pool),
        dir.path().to_owned(),
    );
    Harness {
        app: tfc_daemon::api::router(manager.clone()),
        manager,
        fake,
        dir,
    }
}

fn harness() -> Harness {
    harness_with(agent(), 20, "")
}

fn ndjson(bytes: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(bytes).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "{text}");
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

impl Harness {
    async fn send(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        common::send(&self.app, method, uri, body.as_deref()).await
    }

    async fn create(&self, vm_type: &str) -> Value {
        let body = json!({"vm_type": vm_type, "wait": true});
        let (status, vm) = self.send(Method::POST, "/v1/vms", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{vm}");
        vm
    }

    async fn ready(&self) -> String {
        let vm = self.create("default").await;
        assert_eq!(vm["state"], "ready", "{vm}");
        vm["id"].as_str().unwrap().to_owned()
    }

    async fn vm(&self, id: &str) -> Value {
        self.send(Method::GET, &format!("/v1/vms/{id}"), None)
            .await
            .1
    }

    async fn op(&self, id: &str, op: &str) -> Value {
        let (status, vm) = self
            .send(Method::POST, &format!("/v1/vms/{id}/{op}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{op}: {vm}");
        vm
    }

    /// Starts an exec; the raw answer.
    async fn exec_response(&self, id: &str, body: Value) -> axum::response::Response {
        let request = Request::post(format!("/v1/vms/{id}/exec"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.app.clone().oneshot(request).await.unwrap()
    }

    /// Runs an exec to its end: its events, or the error answer.
    async fn exec(&self, id: &str, body: Value) -> Result<Exec, (StatusCode, Value)> {
        let response = self.exec_response(id, body).await;
        let status = response.status();
        let content_type = response.headers()[header::CONTENT_TYPE].clone();
        let bytes = within(response.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        if status != StatusCode::OK {
            return Err((status, serde_json::from_slice(&bytes).unwrap()));
        }
        assert_eq!(content_type, "application/x-ndjson");
        let events = ndjson(&bytes);
        assert_eq!(events[0]["event"], "started", "{events:?}");
        Ok(Exec { events })
    }

    async fn sh(&self, id: &str, script: &str) -> Exec {
        self.exec(id, json!({"argv": ["sh", "-c", script]}))
            .await
            .unwrap()
    }

    async fn put(
        &self,
        id: &str,
        query: &str,
        contents: Vec<u8>,
        length: Option<u64>,
    ) -> (StatusCode, Value) {
        let mut request = Request::put(format!("/v1/vms/{id}/files?{query}"));
        if let Some(length) = length {
            request = request.header(header::CONTENT_LENGTH, length);
        }
        let response = self
            .app
            .clone()
            .oneshot(request.body(Body::from(contents)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    async fn get(&self, id: &str, query: &str) -> (StatusCode, HeaderMap, Vec<u8>) {
        let request = Request::get(format!("/v1/vms/{id}/files?{query}"))
            .body(Body::empty())
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let bytes = within(response.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        (status, headers, bytes.to_vec())
    }

    /// A path in the test's directory, for files "in the guest" (the agent
    /// runs on this host).
    fn guest_path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn connections(&self, id: &str) -> u64 {
        self.fake
            .agent_connections(&VmId::new(id).unwrap())
            .expect("the VM runs an agent")
    }
}

/// Bounds a step that must not hang.
async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .expect("the step hung")
}

fn assert_error(answer: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["code"], code, "{}", answer.1);
}

fn query_path(path: &str) -> String {
    format!("path={path}")
}

/// Whether the process `pid` is gone (or a zombie its parent will reap).
fn process_gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn until_gone(pid: u64) {
    for _ in 0..200 {
        if process_gone(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("process {pid} still runs");
}

#[tokio::test]
async fn an_agent_vm_is_ready_once_its_agent_answers() {
    let h = harness();
    let vm = h.create("default").await;
    assert_eq!(vm["state"], "ready", "{vm}");
    assert_eq!(
        vm["spec"]["readiness"],
        json!({"kind": "agent", "port": 1024})
    );
    let args = vm["spec"]["boot_args"].as_str().unwrap();
    assert!(args.ends_with("init=/sbin/tfc-agent"), "{args}");
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
            "agent_ready",
            "ready"
        ]
    );
    // The connection that answered readiness is the one calls use.
    let id = vm["id"].as_str().unwrap();
    assert_eq!(h.connections(id), 1);
    assert_eq!(h.sh(id, "echo hi").await.stdout(), "hi\n");
    assert_eq!(h.connections(id), 1);
}

#[tokio::test]
async fn an_agent_that_never_answers_fails_the_boot_at_the_deadline() {
    let silent = FakeAgent {
        silent: true,
        ..agent()
    };
    let h = harness_with(silent, 1, "");
    let vm = h.create("default").await;
    assert_eq!(vm["state"], "failed", "{vm}");
    let failure = vm["failure"].as_str().unwrap();
    assert!(
        failure.contains("the guest agent never answered a ping on vsock port 1024 within 1 s"),
        "{failure}"
    );
    assert!(failure.contains("last console lines"), "{failure}");
    assert!(
        !Path::new(vm["workdir"].as_str().unwrap())
            .join("vsock.sock")
            .exists(),
        "the failed VM's socket was left behind"
    );
}

#[tokio::test]
async fn extra_boot_args_cannot_replace_the_agent_as_init() {
    let h = harness();
    for extra in ["init=/bin/sh", "quiet tfc.agent_port=2000"] {
        let body = json!({"vm_type": "default", "extra_boot_args": extra});
        let refused = h.send(Method::POST, "/v1/vms", Some(body)).await;
        assert_error(&refused, StatusCode::BAD_REQUEST, "invalid_request");
        let message = refused.1["message"].as_str().unwrap();
        assert!(message.contains("agent = \"off\""), "{message}");
    }
    // Without the agent, another init is the caller's choice.
    let body = json!({"vm_type": "plain", "extra_boot_args": "init=/bin/sh", "wait": true});
    let (status, vm) = h.send(Method::POST, "/v1/vms", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{vm}");
    assert!(
        vm["spec"]["boot_args"]
            .as_str()
            .unwrap()
            .ends_with("init=/bin/sh"),
        "{vm}"
    );
}

#[tokio::test]
async fn exec_reports_output_exit_codes_and_signals() {
    let h = harness();
    let id = h.ready().await;
    let run = h.sh(&id, "echo out; echo err >&2; exit 3").await;
    assert_eq!(run.stdout(), "out\n");
    assert_eq!(run.stderr(), "err\n");
    let exit = run.last();
    assert_eq!(exit["event"], "exit");
    assert_eq!(exit["code"], 3);
    assert!(exit.get("signal").is_none(), "{exit}");
    assert_eq!(exit["timed_out"], false);
    assert!(exit["duration_ms"].is_u64(), "{exit}");
    assert!(run.events[0]["pid"].as_u64().unwrap() > 0);

    let killed = h.sh(&id, "kill -TERM $$").await;
    assert_eq!(killed.last()["signal"], 15, "{:?}", killed.events);
    assert!(killed.last().get("code").is_none());

    let env = h
        .exec(
            &id,
            json!({"argv": ["sh", "-c", "echo $GREETING; pwd"], "env": {"GREETING": "hello"}, "cwd": "/"}),
        )
        .await
        .unwrap();
    assert_eq!(env.stdout(), "hello\n/\n");
}

#[tokio::test]
async fn exec_output_arrives_while_the_command_runs() {
    let h = harness();
    let id = h.ready().await;
    let gate = h.guest_path("gate");
    // The command prints, then waits for a file only this test creates after
    // it has read the first line: the line cannot have come with the exit.
    let script = format!("echo first; while [ ! -e {gate} ]; do sleep 0.02; done; echo second");
    let response = h
        .exec_response(&id, json!({"argv": ["sh", "-c", script]}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut seen = Vec::new();
    while !ndjson_prefix(&seen).iter().any(|e| e["event"] == "stdout") {
        let frame = within(body.frame()).await.unwrap().unwrap();
        seen.extend_from_slice(&frame.into_data().unwrap());
    }
    let early = ndjson_prefix(&seen);
    assert!(early.iter().all(|e| e["event"] != "exit"), "{early:?}");
    std::fs::write(&gate, b"").unwrap();
    let rest = within(body.collect()).await.unwrap().to_bytes();
    seen.extend_from_slice(&rest);
    let run = Exec {
        events: ndjson(&seen),
    };
    assert_eq!(run.stdout(), "first\nsecond\n");
    assert_eq!(run.last()["code"], 0);
}

/// The complete lines of `bytes`, as events.
fn ndjson_prefix(bytes: &[u8]) -> Vec<Value> {
    let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    ndjson(&bytes[..end])
}

#[tokio::test]
async fn large_output_arrives_whole_and_in_order() {
    let h = harness();
    let id = h.ready().await;
    let run = h.sh(&id, "seq 1 2000000; echo done >&2").await;
    let expected: String = (1..=2_000_000).map(|n| format!("{n}\n")).collect();
    assert!(expected.len() > 14_000_000);
    let stdout = run.stdout();
    assert_eq!(stdout.len(), expected.len());
    assert!(stdout == expected, "the output came back altered");
    assert_eq!(run.stderr(), "done\n");
    assert_eq!(run.last()["code"], 0);
}

#[tokio::test]
async fn stdin_reaches_the_command_as_text_or_bytes() {
    let h = harness();
    let id = h.ready().await;
    let text = h
        .exec(
            &id,
            json!({"argv": ["cat"], "stdin": {"text": "hello\nworld\n"}}),
        )
        .await
        .unwrap();
    assert_eq!(text.stdout(), "hello\nworld\n");
    let bytes: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let binary = h
        .exec(
            &id,
            json!({"argv": ["cat"], "stdin": {"base64": BASE64.encode(&bytes)}}),
        )
        .await
        .unwrap();
    assert!(binary.stream("stdout") == bytes, "stdin came back altered");
    let none = h.exec(&id, json!({"argv": ["cat"]})).await.unwrap();
    assert_eq!(none.stdout(), "");
    assert_eq!(none.last()["code"], 0);
}

#[tokio::test]
async fn a_timeout_kills_the_command() {
    let h = harness();
    let id = h.ready().await;
    let run = h
        .exec(&id, json!({"argv": ["sleep", "30"], "timeout_ms": 300}))
        .await
        .unwrap();
    let exit = run.last();
    assert_eq!(exit["event"], "exit", "{exit}");
    assert_eq!(exit["timed_out"], true, "{exit}");
    assert_eq!(exit["signal"], 9, "{exit}");
}

#[tokio::test]
async fn a_timeout_ends_an_exec_whose_background_child_holds_its_output() {
    let h = harness();
    let id = h.ready().await;
    // The shell exits at once; the sleep it leaves behind keeps stdout open.
    let run = h
        .exec(
            &id,
            json!({"argv": ["sh", "-c", "sleep 300 & echo $!"], "timeout_ms": 500}),
        )
        .await
        .unwrap();
    let exit = run.last();
    assert_eq!(exit["event"], "exit", "{exit}");
    assert_eq!(exit["timed_out"], true, "{exit}");
    assert_eq!(exit["code"], 0, "the shell itself exited: {exit}");
    let child: u64 = run.stdout().trim().parse().unwrap();
    until_gone(child).await;
}

#[tokio::test]
async fn a_client_that_goes_away_kills_the_command() {
    let h = harness();
    let id = h.ready().await;
    let response = h
        .exec_response(&id, json!({"argv": ["sh", "-c", "echo $$; exec sleep 60"]}))
        .await;
    let mut body = response.into_body();
    let mut seen = Vec::new();
    while !ndjson_prefix(&seen).iter().any(|e| e["event"] == "stdout") {
        let frame = within(body.frame()).await.unwrap().unwrap();
        seen.extend_from_slice(&frame.into_data().unwrap());
    }
    let run = Exec {
        events: ndjson_prefix(&seen),
    };
    let pid: u64 = run.stdout().trim().parse().unwrap();
    assert!(!process_gone(pid));
    drop(body);
    until_gone(pid).await;
    // The VM and its connection serve the next command.
    assert_eq!(h.sh(&id, "echo again").await.stdout(), "again\n");
}

#[tokio::test]
async fn a_client_that_stops_reading_does_not_stall_the_vms_other_calls() {
    let h = harness();
    let id = h.ready().await;
    // Far more output than a call may leave unread on the shared connection.
    let response = h
        .exec_response(
            &id,
            json!({"argv": ["sh", "-c", "echo $$; exec cat /dev/zero"]}),
        )
        .await;
    let mut body = response.into_body();
    let mut seen = Vec::new();
    while !ndjson_prefix(&seen).iter().any(|e| e["event"] == "stdout") {
        let frame = within(body.frame()).await.unwrap().unwrap();
        seen.extend_from_slice(&frame.into_data().unwrap());
    }
    let first = ndjson_prefix(&seen)
        .into_iter()
        .find(|e| e["event"] == "stdout")
        .unwrap();
    let pid: u64 = String::from_utf8(BASE64.decode(first["data"].as_str().unwrap()).unwrap())
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // The body is left unread: other calls on the VM still get through...
    assert_eq!(
        within(h.sh(&id, "echo meanwhile")).await.stdout(),
        "meanwhile\n"
    );
    let file = h.guest_path("meanwhile");
    std::fs::write(&file, b"still served").unwrap();
    let (status, _, contents) = within(h.get(&id, &query_path(&file))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(contents, b"still served");
    // ...the slow call alone was ended, and its command killed in the guest.
    until_gone(pid).await;
    let rest = within(body.collect()).await.unwrap().to_bytes();
    seen.extend_from_slice(&rest);
    let events = ndjson(&seen);
    let last = events.last().unwrap();
    assert_eq!(last["event"], "error", "{last}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("read too slowly"),
        "{last}"
    );
    assert_eq!(h.connections(&id), 1, "the connection itself went on");
}

#[tokio::test]
async fn exec_refusals_say_why_and_what_to_do() {
    let h = harness();
    let id = h.ready().await;
    let refused = |body: Value| {
        let h = &h;
        let id = id.clone();
        async move { h.exec(&id, body).await.unwrap_err() }
    };
    assert_error(
        &refused(json!({"argv": []})).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_error(
        &refused(json!({"argv": ["true"], "stdin": {"base64": "!!"}})).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_error(
        &refused(json!({"argv": ["true"], "timout_ms": 5})).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    let missing = refused(json!({"argv": ["/nonexistent/program"]})).await;
    assert_error(&missing, StatusCode::NOT_FOUND, "not_found");
    let no_cwd = refused(json!({"argv": ["true"], "cwd": "/nonexistent/dir"})).await;
    assert_error(&no_cwd, StatusCode::NOT_FOUND, "not_found");
    let message = no_cwd.1["message"].as_str().unwrap();
    assert!(
        message.contains("working directory /nonexistent/dir does not exist")
            && !message.contains("cannot start"),
        "{message}"
    );
    let unknown = h
        .exec("vm-000000000000", json!({"argv": ["true"]}))
        .await
        .unwrap_err();
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found");

    h.op(&id, "pause").await;
    let paused = refused(json!({"argv": ["true"]})).await;
    assert_error(&paused, StatusCode::CONFLICT, "invalid_state");
    assert_eq!(paused.1["state"], "paused");
    let message = paused.1["message"].as_str().unwrap();
    assert!(message.contains("resume it first"), "{message}");
    h.op(&id, "resume").await;
    assert_eq!(h.sh(&id, "echo back").await.stdout(), "back\n");

    let plain = h.create("plain").await;
    let plain = h
        .exec(plain["id"].as_str().unwrap(), json!({"argv": ["true"]}))
        .await
        .unwrap_err();
    assert_error(&plain, StatusCode::CONFLICT, "invalid_state");
    let message = plain.1["message"].as_str().unwrap();
    assert!(
        message.contains("has no guest agent") && message.contains("agent = \"off\""),
        "{message}"
    );
    let auto = h.create("auto").await;
    assert_eq!(auto["spec"]["readiness"]["kind"], "console_line", "{auto}");
    let auto = h
        .exec(auto["id"].as_str().unwrap(), json!({"argv": ["true"]}))
        .await
        .unwrap_err();
    assert_error(&auto, StatusCode::CONFLICT, "invalid_state");
    assert!(
        auto.1["message"].as_str().unwrap().contains("fake backend"),
        "{}",
        auto.1
    );
}

#[tokio::test]
async fn pausing_the_vm_ends_a_running_exec() {
    let h = harness();
    let id = h.ready().await;
    let response = h
        .exec_response(&id, json!({"argv": ["sh", "-c", "echo $$; exec sleep 60"]}))
        .await;
    let mut body = response.into_body();
    let mut seen = Vec::new();
    while !ndjson_prefix(&seen).iter().any(|e| e["event"] == "stdout") {
        let frame = within(body.frame()).await.unwrap().unwrap();
        seen.extend_from_slice(&frame.into_data().unwrap());
    }
    h.op(&id, "pause").await;
    seen.extend_from_slice(&within(body.collect()).await.unwrap().to_bytes());
    let run = Exec {
        events: ndjson(&seen),
    };
    let last = run.last();
    assert_eq!(last["event"], "error", "{last}");
    assert_eq!(last["code"], "invalid_state", "{last}");
    // The command dies with its VM (here: a host process the fake kills
    // with its agent), not later.
    let pid: u64 = run.stdout().trim().parse().unwrap();
    let (status, _) = h
        .send(Method::DELETE, &format!("/v1/vms/{id}?force=true"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    until_gone(pid).await;
}

/// The pid of the `tfc-agent` process serving the fake VM in `workdir`.
fn fake_agent_pid(workdir: &str) -> i32 {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("tfc-agent") && cmdline.contains(workdir)
        })
        .expect("the fake VM's agent runs")
}

#[tokio::test]
async fn pausing_the_vm_while_an_exec_starts_refuses_it_at_once() {
    let h = harness();
    let vm = h.create("default").await;
    let id = vm["id"].as_str().unwrap();
    // Held so that the exec is still starting when the pause comes.
    let agent = fake_agent_pid(vm["workdir"].as_str().unwrap());
    // SAFETY: kill has no memory effects; `agent` is this test's process.
    assert_eq!(unsafe { libc::kill(agent, libc::SIGSTOP) }, 0);
    let (refused, _) = tokio::join!(within(h.exec(id, json!({"argv": ["true"]}))), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        h.op(id, "pause").await
    });
    let refused = refused.unwrap_err();
    assert_error(&refused, StatusCode::CONFLICT, "invalid_state");
    h.op(id, "resume").await;
    assert_eq!(h.sh(id, "echo resumed").await.stdout(), "resumed\n");
}

#[tokio::test]
async fn files_round_trip_with_their_mode() {
    let h = harness();
    let id = h.ready().await;
    let path = h.guest_path("uploaded.bin");
    let contents: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    let (status, written) = h
        .put(
            &id,
            &format!("{}&mode=0751", query_path(&path)),
            contents.clone(),
            Some(contents.len() as u64),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{written}");
    assert_eq!(
        written,
        json!({"path": path, "size": contents.len(), "mode": 0o751})
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o751);
    assert!(std::fs::read(&path).unwrap() == contents);

    let (status, headers, back) = h.get(&id, &query_path(&path)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_LENGTH], contents.len().to_string());
    assert_eq!(headers["x-tfc-file-mode"], "0751");
    assert!(back == contents, "the file came back altered");

    // Without a mode: 0644; an empty file is a file.
    let empty = h.guest_path("empty");
    let (status, written) = h.put(&id, &query_path(&empty), Vec::new(), Some(0)).await;
    assert_eq!(status, StatusCode::OK, "{written}");
    assert_eq!(written["mode"], 0o644);
    let (status, headers, back) = h.get(&id, &query_path(&empty)).await;
    assert_eq!((status, back.len()), (StatusCode::OK, 0));
    assert_eq!(headers["x-tfc-file-mode"], "0644");
}

#[tokio::test]
async fn file_errors_have_their_own_codes() {
    let h = harness();
    let id = h.ready().await;
    let missing = h.get(&id, &query_path(&h.guest_path("missing"))).await;
    assert_eq!(missing.0, StatusCode::NOT_FOUND);
    let body: Value = serde_json::from_slice(&missing.2).unwrap();
    assert_eq!(body["code"], "not_found", "{body}");

    let relative = h.get(&id, "path=relative/file").await;
    assert_eq!(relative.0, StatusCode::BAD_REQUEST);
    let relative = h.put(&id, "path=relative/file", vec![1], Some(1)).await;
    assert_error(&relative, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(relative.1["message"]
        .as_str()
        .unwrap()
        .contains("not absolute"));

    let target = h.guest_path("big");
    // `agent.max_file_mib = 1` here.
    let limit = 1024 * 1024;
    let over = h
        .put(
            &id,
            &query_path(&target),
            vec![0; limit + 1],
            Some(limit as u64 + 1),
        )
        .await;
    assert_error(&over, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    assert!(!Path::new(&target).exists());
    std::fs::write(&target, vec![7u8; limit + 1]).unwrap();
    let (status, _, body) = h.get(&id, &query_path(&target)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], "too_large", "{body}");

    let unannounced = h
        .put(&id, &query_path(&h.guest_path("x")), vec![1], None)
        .await;
    assert_error(&unannounced, StatusCode::BAD_REQUEST, "invalid_request");
    let bad_mode = h
        .put(
            &id,
            &format!("{}&mode=rwx", query_path(&h.guest_path("x"))),
            vec![1],
            Some(1),
        )
        .await;
    assert_error(&bad_mode, StatusCode::BAD_REQUEST, "invalid_request");
    let no_dir = h
        .put(
            &id,
            &query_path(&h.guest_path("no/such/dir/f")),
            vec![1],
            Some(1),
        )
        .await;
    assert_error(&no_dir, StatusCode::NOT_FOUND, "not_found");
    // A body shorter than its Content-Length: refused, nothing written.
    let short_path = h.guest_path("short");
    let short = h
        .put(&id, &query_path(&short_path), vec![1; 10], Some(100))
        .await;
    assert_error(&short, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        short.1["message"]
            .as_str()
            .unwrap()
            .contains("Content-Length"),
        "{}",
        short.1
    );
    assert!(!Path::new(&short_path).exists());
    // A FIFO would block the reader until a writer came: refused at once.
    let fifo = h.guest_path("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let (status, _, body) = within(h.get(&id, &query_path(&fifo))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("is not a regular file"),
        "{body}"
    );
    assert_eq!(h.connections(&id), 1, "refusals kept the connection");
}

#[tokio::test]
async fn one_connection_per_vm_dropped_while_the_guest_is_paused() {
    let h = harness();
    let id = h.ready().await;
    let path = h.guest_path("f");
    for n in 0..3 {
        assert_eq!(
            h.sh(&id, &format!("echo {n}")).await.stdout(),
            format!("{n}\n")
        );
    }
    let put = h.put(&id, &query_path(&path), b"x".to_vec(), Some(1)).await;
    assert_eq!(put.0, StatusCode::OK);
    assert_eq!(h.get(&id, &query_path(&path)).await.2, b"x");
    assert_eq!(h.connections(&id), 1);

    h.op(&id, "pause").await;
    h.op(&id, "resume").await;
    assert_eq!(h.sh(&id, "echo resumed").await.stdout(), "resumed\n");
    assert_eq!(h.connections(&id), 2, "a resume starts a new connection");

    // A snapshot pauses the VM too; after it, the VM's next call reconnects.
    let (status, snapshot) = h
        .send(
            Method::POST,
            &format!("/v1/vms/{id}/snapshots"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{snapshot}");
    assert_eq!(h.sh(&id, "echo after").await.stdout(), "after\n");
    assert_eq!(h.connections(&id), 3);
}

#[tokio::test]
async fn a_broken_connection_is_replaced_on_the_next_call() {
    let h = harness();
    let id = h.ready().await;
    assert_eq!(h.sh(&id, "echo before").await.stdout(), "before\n");
    assert!(h.fake.cut_agent_connections(&VmId::new(&id).unwrap()));
    // A call that races the daemon's noticing the break may fail (on a
    // connection that was already gone, nothing reached the agent); the
    // next one reconnects.
    let mut failures = 0;
    let run = loop {
        match h.exec(&id, json!({"argv": ["echo", "after"]})).await {
            Ok(run) => break run,
            Err(answer) => {
                assert_error(&answer, StatusCode::BAD_GATEWAY, "backend_error");
                failures += 1;
                assert!(
                    failures <= 1,
                    "the broken connection was reused: {}",
                    answer.1
                );
            }
        }
    };
    assert_eq!(run.stdout(), "after\n");
    assert_eq!(h.connections(&id), 2);
}

/// The clock the restored guest's agent was asked to set, Unix ns.
fn recorded_clock(vm: &Value) -> u128 {
    let file = PathBuf::from(vm["workdir"].as_str().unwrap()).join("guest-clock");
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .parse()
        .unwrap()
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn snapshot_of_a_ready_vm(h: &Harness) -> String {
    let id = h.ready().await;
    let (status, snapshot) = h
        .send(
            Method::POST,
            &format!("/v1/vms/{id}/snapshots"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{snapshot}");
    snapshot["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_restore_fixes_up_the_guests_clock_and_entropy() {
    let h = harness();
    let snapshot = snapshot_of_a_ready_vm(&h).await;
    let before = now_ns();
    let (status, vm) = h
        .send(
            Method::POST,
            "/v1/vms",
            Some(json!({"from_snapshot": snapshot})),
        )
        .await;
    let after = now_ns();
    assert_eq!(status, StatusCode::CREATED, "{vm}");
    assert_eq!(vm["state"], "ready");
    let fixup = &vm["identity_fixup"];
    assert!(fixup["duration_us"].as_u64().unwrap() > 0, "{vm}");
    // The host-mode agent mixes the seed into the pool but cannot credit it:
    // its answer, passed on, proves the reseed reached it.
    assert_eq!(fixup["entropy_credited"], false, "{vm}");
    let clock = recorded_clock(&vm);
    assert!(
        before <= clock && clock <= after,
        "{before} <= {clock} <= {after}"
    );
    // The fix-up's connection is the VM's: the first call reuses it.
    let id = vm["id"].as_str().unwrap();
    assert_eq!(h.sh(id, "echo restored").await.stdout(), "restored\n");
    assert_eq!(h.connections(id), 1);
}

#[tokio::test]
async fn a_failed_fixup_removes_the_restored_vm() {
    let h = harness();
    let snapshot = snapshot_of_a_ready_vm(&h).await;
    let vms_before = h.manager.list().len();
    let dirs = || std::fs::read_dir(h.dir.path().join("vms")).unwrap().count();
    let dirs_before = dirs();
    // An agent that refuses to set the clock, as any agent outside a guest.
    h.fake.script(|s| {
        s.agent = Some(FakeAgent {
            record_clock: false,
            ..agent()
        })
    });
    let (status, body) = h
        .send(
            Method::POST,
            "/v1/vms",
            Some(json!({"from_snapshot": snapshot})),
        )
        .await;
    assert_error(
        &(status, body.clone()),
        StatusCode::BAD_GATEWAY,
        "backend_error",
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("identity fix-up failed")
            && message.contains("the sync_clock call to the guest agent failed"),
        "{message}"
    );
    assert_eq!(h.manager.list().len(), vms_before, "the VM was left behind");
    assert_eq!(dirs(), dirs_before, "the VM's directory was left behind");
}

#[tokio::test]
async fn a_pooled_vm_is_fixed_up_when_it_is_handed_out() {
    let h = harness_with(agent(), 20, "target = 1\ntiers = [\"hot\"]");
    let (status, template) = h
        .send(Method::POST, "/v1/templates/default/build", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{template}");
    h.manager.start_pools();
    let waiting = loop {
        let waiting: Vec<Value> = h
            .manager
            .list()
            .into_iter()
            .map(|vm| serde_json::to_value(vm).unwrap())
            .filter(|vm| vm["pool"].is_object() && vm["state"] == "paused")
            .collect();
        if let Some(vm) = waiting.into_iter().next() {
            break vm;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Waiting in the pool: no fix-up yet, and no calls into it.
    assert!(waiting.get("identity_fixup").is_none(), "{waiting}");
    let workdir = PathBuf::from(waiting["workdir"].as_str().unwrap());
    assert!(!workdir.join("guest-clock").exists());
    let refused = h
        .exec(waiting["id"].as_str().unwrap(), json!({"argv": ["true"]}))
        .await
        .unwrap_err();
    assert_error(&refused, StatusCode::CONFLICT, "invalid_state");

    let before = now_ns();
    let (status, acquired) = h
        .send(Method::POST, "/v1/pools/default/acquire", Some(json!({})))
        .await;
    let after = now_ns();
    assert_eq!(status, StatusCode::OK, "{acquired}");
    assert_eq!(acquired["tier"], "hot");
    let vm = &acquired["vm"];
    assert_eq!(vm["id"], waiting["id"]);
    assert!(vm["identity_fixup"].is_object(), "{vm}");
    let clock = recorded_clock(vm);
    assert!(
        before <= clock && clock <= after,
        "{before} <= {clock} <= {after}"
    );
    let id = vm["id"].as_str().unwrap();
    assert_eq!(h.sh(id, "echo mine").await.stdout(), "mine\n");
    let vm = h.vm(id).await;
    assert_eq!(vm["state"], "running");
}

#[tokio::test]
async fn a_failed_fixup_at_hand_over_replaces_the_pooled_vm() {
    let h = harness_with(agent(), 20, "target = 1\ntiers = [\"hot\"]");
    let (status, template) = h
        .send(Method::POST, "/v1/templates/default/build", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{template}");
    // Pooled VMs restored from now on run an agent that refuses the clock.
    h.fake.script(|s| {
        s.agent = Some(FakeAgent {
            record_clock: false,
            ..agent()
        })
    });
    h.manager.start_pools();
    let waiting = loop {
        let pool = h.send(Method::GET, "/v1/pools/default", None).await.1;
        if pool["sizes"]["hot"] == 1 {
            let vm = h.manager.list().into_iter().find(|vm| vm.pool.is_some());
            break vm.expect("the pool's VM is listed");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (status, body) = h
        .send(
            Method::POST,
            "/v1/pools/default/acquire",
            Some(json!({"wait_ms": 0})),
        )
        .await;
    assert_error(
        &(status, body.clone()),
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    let pool = h.send(Method::GET, "/v1/pools/default", None).await.1;
    assert_eq!(pool["stats"]["failed"], 1, "{pool}");
    // The VM that could not be fixed up is gone, directory and all.
    let workdir = PathBuf::from(&waiting.workdir);
    for _ in 0..500 {
        let listed = h.manager.list().iter().any(|vm| vm.id == waiting.id);
        if !listed && !workdir.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the VM whose fix-up failed was left behind");
}
