//! A schemathesis-style run: for every operation of the committed
//! `docs/openapi.json`, requests generated from its schemas (valid bodies,
//! and bodies broken on purpose: wrong types, missing and unknown fields,
//! edge numbers, junk bytes, other JSON, no content type, deep nesting,
//! oversized bodies; path ids that exist, that do not, and that are junk;
//! query values of the wrong type) are sent over the Unix socket to a
//! daemon serving with the fake backend, and every answer is checked:
//!
//! - its status is one the document lists for the operation;
//! - no 5xx other than 501 (`unsupported`: the backend cannot do it at all)
//!   and 503 (`unavailable`: e.g. networking off, a pool empty within the
//!   wait). Those two are honest answers the document promises for a
//!   request that is fine but cannot be served here. 500 (our bug), 502
//!   (the VMM failed: the fake does not fail unless told to) and 504 (an
//!   agent timed out: no fake VM here runs an agent) are failures;
//! - every error answer is a JSON `ErrorBody` whose `code` maps to the
//!   status by `api::status_for`;
//! - every success answer with a JSON schema fits it, and a 204 is empty.
//!
//! Ids the daemon hands out (VMs, snapshots) are fed back into later path
//! parameters, so operations on real objects are reached too.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::{json, Value};
use tfc_api::ErrorBody;
use tfc_daemon::backend::{Backend, FakeBackend};
use tfc_daemon::config::{Config, ShutdownPolicy};
use tfc_daemon::manager::VmManager;

use crate::schema::{Doc, Rng};

/// One documented operation.
#[derive(Debug)]
struct Operation {
    method: String,
    path: String,
    spec: Value,
}

fn operations(doc: &Doc) -> Vec<Operation> {
    let mut ops = Vec::new();
    for (path, methods) in doc.root["paths"].as_object().expect("paths") {
        for (method, spec) in methods.as_object().expect("methods") {
            ops.push(Operation {
                method: method.to_uppercase(),
                path: path.clone(),
                spec: spec.clone(),
            });
        }
    }
    ops
}

/// What a request was, for a failure report.
#[derive(Debug, Clone)]
struct Sent {
    method: String,
    uri: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

impl std::fmt::Display for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = String::from_utf8_lossy(&self.body);
        let body: String = body.chars().take(300).collect();
        write!(
            f,
            "{} {} (content-type {:?}) body {:?}",
            self.method, self.uri, self.content_type, body
        )
    }
}

/// Bytes outside the URL path's unreserved set, percent-encoded.
fn encode_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A path parameter: a real id or type (when there is one), or a bad one.
fn path_value(rng: &mut Rng, name: &str, known: &Known) -> String {
    let real: Vec<String> = match name {
        "vm_type" => vec!["default".into(), "pooled".into()],
        _ => known.ids.clone(),
    };
    if !real.is_empty() && rng.below(3) > 0 {
        return encode_segment(rng.pick(&real).as_str());
    }
    match rng.below(6) {
        0 => encode_segment(&"a".repeat(rng.below(5000) + 1)),
        // Percent-encoded bytes that are not UTF-8, and a bad escape.
        1 => "%FF%FE".into(),
        2 => "%zz".into(),
        // Any bytes, escaped: NULs, slashes, invalid UTF-8.
        3 => {
            let bytes = rng.bytes(20);
            let escaped: String = bytes.iter().map(|b| format!("%{b:02X}")).collect();
            escaped + "x"
        }
        _ => encode_segment(&format!("vm-{:08x}", rng.next() as u32)),
    }
}

fn query_value(rng: &mut Rng, name: &str, schema: &Value, doc: &Doc) -> String {
    if rng.one_in(3) {
        let junk = ["maybe", "", "-1", "99999999999999999999", "%", "\u{0}"];
        let pick = *rng.pick(&junk);
        return encode_segment(pick);
    }
    let value = match doc.hints.get(name) {
        Some(hints) if rng.one_in(2) => rng.pick(hints).clone(),
        _ => doc.generate(schema, rng, 0),
    };
    match value {
        Value::String(s) => encode_segment(&s),
        other => encode_segment(&other.to_string()),
    }
}

/// Ids seen in the daemon's answers, fed back into path parameters.
#[derive(Debug, Default)]
struct Known {
    ids: Vec<String>,
}

impl Known {
    fn learn(&mut self, answer: &Value) {
        for value in [&answer["id"], &answer["vm"]["id"], &answer["name"]] {
            if let Some(id) = value.as_str() {
                if !self.ids.iter().any(|k| k == id) {
                    if self.ids.len() >= 32 {
                        self.ids.remove(0);
                    }
                    self.ids.push(id.to_owned());
                }
            }
        }
    }
}

/// A request body for `op`: from its schema, broken or not.
fn body(rng: &mut Rng, doc: &Doc, op: &Operation) -> (Option<&'static str>, Vec<u8>, &'static str) {
    let content = &op.spec["requestBody"]["content"];
    if let Some(schema) = content
        .get("application/octet-stream")
        .map(|c| &c["schema"])
    {
        let _ = schema;
        return (
            Some("application/octet-stream"),
            rng.bytes(4096),
            "file bytes",
        );
    }
    let Some(schema) = content.get("application/json").map(|c| c["schema"].clone()) else {
        // No body documented: mostly none, sometimes junk (ignored).
        return if rng.one_in(4) {
            (
                Some("application/json"),
                rng.bytes(64),
                "junk to a bodyless op",
            )
        } else {
            (None, Vec::new(), "no body")
        };
    };
    let valid = doc.generate(&schema, rng, 0);
    let json_ct = Some("application/json");
    match rng.below(12) {
        0..=3 => (json_ct, valid.to_string().into_bytes(), "valid"),
        4..=6 => {
            let broken = doc.mutate(&schema, valid, rng);
            (json_ct, broken.to_string().into_bytes(), "mutated")
        }
        7 => (json_ct, rng.bytes(200), "junk bytes"),
        8 => {
            let text = valid.to_string();
            let cut = rng.below(text.len().max(1));
            (json_ct, text.as_bytes()[..cut].to_vec(), "truncated")
        }
        9 => {
            let others = [json!([]), json!("x"), json!(7), Value::Null, json!(true)];
            let other = rng.pick(&others);
            (json_ct, other.to_string().into_bytes(), "other JSON")
        }
        10 => {
            let types = [
                None,
                Some("text/plain"),
                Some("application/json; charset=utf-8"),
            ];
            (
                *rng.pick(&types),
                valid.to_string().into_bytes(),
                "other content type",
            )
        }
        _ => {
            if rng.one_in(2) {
                let depth = 10_000;
                let nested = "[".repeat(depth) + &"]".repeat(depth);
                (json_ct, nested.into_bytes(), "deep nesting")
            } else {
                // Over the 64 KiB limit of JSON bodies (exec's is larger, and
                // its stdin limit has its own tests), small enough that the
                // socket takes it whole before the daemon answers.
                let mut big = b"{\"name\":\"".to_vec();
                big.extend(std::iter::repeat_n(b'a', 96 * 1024));
                big.extend_from_slice(b"\"}");
                (json_ct, big, "oversized")
            }
        }
    }
}

/// Sends one request on a new connection to `socket`; the status, the
/// content type and the whole body.
async fn send(socket: &Path, sent: &Sent) -> Result<(u16, Option<String>, Bytes), String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(sent.method.as_str())
        .uri(&sent.uri)
        .header("host", "tfc");
    if let Some(ct) = sent.content_type {
        request = request.header("content-type", ct);
    }
    let request = request
        .body(Full::new(Bytes::from(sent.body.clone())))
        .map_err(|e| format!("building the request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, content_type, body))
}

/// The 5xx answers the document may promise for a request this run
/// sends: the backend cannot do it at all (501), or cannot now (503).
const HONEST_5XX: [u16; 2] = [501, 503];

/// Checks one answer; each problem as a line.
fn check(
    doc: &Doc,
    op: &Operation,
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Vec<String> {
    let mut problems = Vec::new();
    let responses = &op.spec["responses"];
    let documented = responses.get(status.to_string());
    if documented.is_none() {
        let listed: Vec<&String> = responses.as_object().unwrap().keys().collect();
        problems.push(format!(
            "status {status} is not documented (only {listed:?})"
        ));
    }
    if status >= 500 && !HONEST_5XX.contains(&status) {
        problems.push(format!("a {status} answer"));
    }
    let text = String::from_utf8_lossy(body);
    if status >= 400 {
        if !content_type.is_some_and(|ct| ct.starts_with("application/json")) {
            problems.push(format!(
                "error answer with content type {content_type:?}: {text:.200}"
            ));
        }
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(error) => {
                let mapped = tfc_daemon::api::status_for(error.code).as_u16();
                if mapped != status {
                    problems.push(format!(
                        "code {:?} means {mapped}, answered {status}",
                        error.code
                    ));
                }
                if error.message.trim().is_empty() {
                    problems.push("error answer with an empty message".into());
                }
            }
            Err(e) => problems.push(format!(
                "error answer is not an ErrorBody ({e}): {text:.200}"
            )),
        }
        return problems;
    }
    if status == 204 {
        if !body.is_empty() {
            problems.push(format!("204 with a body: {text:.200}"));
        }
        return problems;
    }
    let schema = documented
        .and_then(|d| d["content"].get("application/json"))
        .map(|c| &c["schema"]);
    if let Some(schema) = schema {
        match serde_json::from_slice::<Value>(body) {
            Ok(value) => {
                if let Some(m) = doc.mismatch(schema, &value, "") {
                    problems.push(format!("answer does not fit its schema: {m}"));
                }
            }
            Err(e) => problems.push(format!("{status} answer is not JSON ({e}): {text:.200}")),
        }
    }
    problems
}

pub fn cases_per_operation() -> usize {
    (crate::fuzz_cases() as usize / 4).max(16)
}

pub async fn run(doc: &Doc, dir: &Path, seed: u64) -> Vec<String> {
    let (kernel, rootfs) = crate::common::tiny_assets(dir);
    let text = format!(
        "[daemon]\nbackend = \"fake\"\nstorage = \"memory\"\n\
         [vm_types.default]\nkernel = {k:?}\nrootfs = {r:?}\n\
         [vm_types.pooled]\nkernel = {k:?}\nrootfs = {r:?}\n\
         [vm_types.pooled.pool]\ntarget = 1\nmax = 2\n",
        k = kernel.display().to_string(),
        r = rootfs.display().to_string(),
    );
    let config = Config::parse(&text, "fuzz").expect("the run's config is valid");
    let fake = FakeBackend::new(Duration::from_millis(1));
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let manager = VmManager::in_memory(Backend::Fake(fake), config, data);
    let socket = dir.join("api.sock");
    let listener = tfc_daemon::bind(&socket).expect("bind the API socket");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tfc_daemon::serve_until(
        listener,
        manager,
        ShutdownPolicy::Stop,
        async move {
            let _ = stop_rx.await;
        },
    ));

    let ops = operations(doc);
    let mut rng = Rng::new(seed);
    let mut known = Known::default();
    let mut problems: BTreeMap<String, String> = BTreeMap::new();
    let mut statuses: BTreeMap<String, BTreeMap<u16, usize>> = BTreeMap::new();
    let total = ops.len() * cases_per_operation();
    for _ in 0..total {
        let op = &ops[rng.below(ops.len())];
        let mut uri = String::new();
        for part in op.path.split('/').skip(1) {
            uri.push('/');
            match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(name) => uri.push_str(&path_value(&mut rng, name, &known)),
                None => uri.push_str(part),
            }
        }
        let mut query = Vec::new();
        for param in op.spec["parameters"].as_array().into_iter().flatten() {
            if param["in"] == "query" && !rng.one_in(3) {
                let name = param["name"].as_str().expect("a parameter has a name");
                let value = query_value(&mut rng, name, &param["schema"], doc);
                query.push(format!("{name}={value}"));
            }
        }
        if rng.one_in(20) {
            query.push("unknown=1".into());
        }
        if !query.is_empty() {
            uri.push('?');
            uri.push_str(&query.join("&"));
        }
        let (content_type, body, what) = body(&mut rng, doc, op);
        let sent = Sent {
            method: op.method.clone(),
            uri,
            content_type,
            body,
        };
        let key = format!("{} {}", op.method, op.path);
        let answer = tokio::time::timeout(Duration::from_secs(30), send(&socket, &sent)).await;
        let found = match answer {
            Err(_) => vec!["no answer within 30 s".to_owned()],
            Ok(Err(e)) => vec![format!("transport: {e}")],
            Ok(Ok((status, ct, bytes))) => {
                *statuses
                    .entry(key.clone())
                    .or_default()
                    .entry(status)
                    .or_default() += 1;
                if (200..300).contains(&status) {
                    if let Ok(value) = serde_json::from_slice::<Value>(&bytes) {
                        known.learn(&value);
                    }
                }
                check(doc, op, status, ct.as_deref(), &bytes)
            }
        };
        for problem in found {
            // One example per operation and kind of problem.
            let kind: String = problem.chars().take(40).collect();
            problems
                .entry(format!("{key}: {kind}"))
                .or_insert_with(|| format!("{key} [{what}]: {problem}\n    request: {sent}"));
        }
    }
    let _ = stop_tx.send(());
    server
        .await
        .expect("the server task ends")
        .expect("the server stops cleanly");
    eprintln!("openapi fuzz: {total} requests, seed {seed}; answers per operation:");
    for (key, counts) in &statuses {
        eprintln!("  {key}: {counts:?}");
    }
    problems.into_values().collect()
}
