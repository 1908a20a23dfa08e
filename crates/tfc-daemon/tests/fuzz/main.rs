//! Fuzzing the daemon's inputs, as ordinary tests (tier 0, fake backend):
//! the configuration parser ([`config`]), the REST API's request bodies as
//! typed values ([`bodies`]), and the whole API over its Unix socket driven
//! by the committed OpenAPI document ([`openapi`], on the [`schema`]
//! walker).
//!
//! Short in CI: 256 cases per property, 64 requests per operation.
//! Longer: `TFC_FUZZ_CASES=100000 cargo test -p tfc-daemon --test fuzz`
//! (the OpenAPI run sends a quarter of that per operation). A failing
//! OpenAPI or body run prints its seed; `TFC_FUZZ_SEED=<seed>` repeats it.

#[path = "../common/mod.rs"]
#[allow(dead_code)]
mod common;

mod bodies;
mod config;
mod openapi;
mod schema;

use proptest::test_runner::Config as ProptestConfig;
use serde_json::json;

/// Cases per property: `TFC_FUZZ_CASES`, 256 by default.
pub fn fuzz_cases() -> u32 {
    std::env::var("TFC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

pub fn fuzz_config() -> ProptestConfig {
    ProptestConfig {
        cases: fuzz_cases(),
        ..ProptestConfig::default()
    }
}

/// `TFC_FUZZ_SEED`, or a new seed each run (printed, for a repeat).
pub fn fuzz_seed() -> u64 {
    std::env::var("TFC_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// The committed OpenAPI document (what clients are given), not the one
/// the code generates; a separate test keeps the two equal.
pub fn committed_openapi() -> schema::Doc {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let text = std::fs::read_to_string(path).expect("docs/openapi.json is readable");
    let hints = [
        ("vm_type", vec![json!("default"), json!("pooled")]),
        ("path", vec![json!("/etc/hostname"), json!("/tmp/fuzz")]),
        ("mode", vec![json!("0644"), json!("755")]),
        ("argv", vec![json!(["true"])]),
        (
            "optimization_level",
            vec![json!("standard"), json!("instant")],
        ),
    ];
    schema::Doc {
        root: serde_json::from_str(&text).expect("docs/openapi.json is JSON"),
        hints: hints.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_operations_answer_as_documented() {
    let doc = committed_openapi();
    let dir = tempfile::tempdir().unwrap();
    let seed = fuzz_seed();
    let problems = openapi::run(&doc, dir.path(), seed).await;
    assert!(
        problems.is_empty(),
        "{} kinds of wrong answers (seed {seed}; TFC_FUZZ_SEED={seed} repeats the run):\n{}",
        problems.len(),
        problems.join("\n")
    );
}
