//! What the daemon's integration tests share: one HTTP exchange through the real
//! router.

pub mod tier1;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// Sends one request through `app`; the answer's status and JSON body (`Null`
/// when empty). A body that is not JSON fails the test: every answer of this API
/// is JSON or empty.
pub async fn send(
    app: &axum::Router,
    method: Method,
    uri: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(Body::from(body.unwrap_or_default().to_owned()))
        .expect("valid request");
    let response = app.clone().oneshot(request).await.expect("router answers");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body readable")
        .to_bytes();
    if bytes.is_empty() {
        return (status, Value::Null);
    }
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("non-JSON answer: {}", String::from_utf8_lossy(&bytes)));
    (status, value)
}

/// Tiny stand-in kernel and rootfs files in `dir` (made once), for configs of
/// fake-backend tests: snapshot manifests and templates digest them.
#[allow(dead_code)]
pub fn tiny_assets(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let kernel = dir.join("vmlinux");
    let rootfs = dir.join("rootfs.ext4");
    if !kernel.exists() {
        std::fs::write(&kernel, b"kernel").unwrap();
        std::fs::write(&rootfs, b"rootfs").unwrap();
    }
    (kernel, rootfs)
}

/// A fake-backend config whose default VM type, `box`, runs the tiny assets
/// of `dir` (see [`tiny_assets`]); `extra` (TOML) follows the type's keys,
/// e.g. `[vm_types.box.pool]` or `[alerts]` sections.
#[allow(dead_code)]
pub fn box_config(dir: &std::path::Path, extra: &str) -> tfc_daemon::config::Config {
    let (kernel, rootfs) = tiny_assets(dir);
    let text = format!(
        "[daemon]\nbackend = \"fake\"\ndefault_vm_type = \"box\"\n\
         [vm_types.box]\nkernel = {:?}\nrootfs = {:?}\nboot_args = \"console=ttyS0\"\n{extra}\n",
        kernel.display().to_string(),
        rootfs.display().to_string(),
    );
    tfc_daemon::config::Config::parse(&text, "test").unwrap()
}

/// The `tfc-agent` binary the fake backend runs behind fake VMs' vsock
/// sockets, built now when needed (`cargo build -p tfc-agent`, into the
/// same target directory), once per test process.
#[allow(dead_code)]
pub fn agent_binary() -> std::path::PathBuf {
    static BINARY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            let output = std::process::Command::new(env!("CARGO"))
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "tfc-agent",
                    "--bin",
                    "tfc-agent",
                    "--message-format=json",
                ])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("cargo runs");
            assert!(output.status.success(), "building tfc-agent failed");
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|message| {
                    message["reason"] == "compiler-artifact"
                        && message["target"]["name"] == "tfc-agent"
                        && message["executable"].is_string()
                })
                .map(|message| message["executable"].as_str().unwrap().into())
                .expect("cargo named the tfc-agent executable")
        })
        .clone()
}

/// One exec's answer through `POST /v1/vms/{id}/exec`: its NDJSON events,
/// in order.
#[allow(dead_code)]
#[derive(Debug)]
pub struct Exec {
    pub events: Vec<Value>,
}

#[allow(dead_code)]
impl Exec {
    /// The bytes of one stream (`stdout`, `stderr`), decoded, in order.
    pub fn stream(&self, name: &str) -> Vec<u8> {
        use base64::Engine;
        self.events
            .iter()
            .filter(|e| e["event"] == name)
            .flat_map(|e| {
                base64::engine::general_purpose::STANDARD
                    .decode(e["data"].as_str().unwrap())
                    .unwrap()
            })
            .collect()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8(self.stream("stdout")).unwrap()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8(self.stream("stderr")).unwrap()
    }

    /// The final event, checked to be the only final one and the last.
    pub fn last(&self) -> &Value {
        let finals: Vec<&Value> = self
            .events
            .iter()
            .filter(|e| e["event"] == "exit" || e["event"] == "error")
            .collect();
        assert_eq!(finals.len(), 1, "one final event: {:?}", self.events);
        assert_eq!(self.events.last(), Some(finals[0]), "{:?}", self.events);
        finals[0]
    }

    /// The final event, checked to be an `exit`.
    pub fn exit(&self) -> &Value {
        let last = self.last();
        assert_eq!(last["event"], "exit", "{:?}", self.events);
        last
    }
}
