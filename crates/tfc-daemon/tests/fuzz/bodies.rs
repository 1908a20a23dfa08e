//! The API's request bodies as typed values: JSON generated from each
//! body's schema in the committed document, valid and broken, decoded as
//! the daemon decodes it. Decoding never panics; a body that decodes
//! serializes to JSON that fits the documented schema and decodes to the
//! same value (so what the CLI sends, the daemon reads as meant); a broken
//! body is refused with a serde error that says what is wrong.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tfc_api::{
    AcquireRequest, CreateSnapshotRequest, CreateVmRequest, ExecRequest, ResizePoolRequest,
};
use tfc_core::limits::RateLimits;

use crate::schema::{Doc, Rng};

/// Counts of one type's run, so that a generator that never reaches the
/// success path (or never the error path) is noticed.
#[derive(Debug, Default)]
struct Outcomes {
    decoded: u32,
    refused: u32,
}

fn fuzz_type<T>(doc: &Doc, name: &str, rng: &mut Rng, cases: u32) -> Outcomes
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let schema = serde_json::json!({ "$ref": format!("#/components/schemas/{name}") });
    let mut outcomes = Outcomes::default();
    for _ in 0..cases {
        let mut value = doc.generate(&schema, rng, 0);
        if rng.one_in(2) {
            value = doc.mutate(&schema, value, rng);
        }
        let text = value.to_string();
        match serde_json::from_str::<T>(&text) {
            Ok(decoded) => {
                outcomes.decoded += 1;
                let again = serde_json::to_value(&decoded).expect("a request serializes");
                if let Some(m) = doc.mismatch(&schema, &again, "") {
                    panic!("{name} {text} decodes, but serializes to {again}, which does not fit its schema: {m}");
                }
                let back: T = serde_json::from_value(again.clone())
                    .unwrap_or_else(|e| panic!("{name} {again} does not decode again: {e}"));
                assert_eq!(back, decoded, "{name} round trip of {text}");
            }
            Err(e) => {
                outcomes.refused += 1;
                assert!(!e.is_io() && !e.is_eof(), "{name} {text}: {e}");
                assert!(!e.to_string().is_empty());
            }
        }
    }
    outcomes
}

/// One body type's run.
type FuzzOne = fn(&Doc, &str, &mut Rng, u32) -> Outcomes;

#[test]
fn request_bodies_decode_round_trip_or_refuse() {
    let doc = crate::committed_openapi();
    let seed = crate::fuzz_seed();
    let cases = crate::fuzz_cases();
    let mut rng = Rng::new(seed);
    let runs: [(&str, FuzzOne); 6] = [
        ("CreateVmRequest", fuzz_type::<CreateVmRequest>),
        ("AcquireRequest", fuzz_type::<AcquireRequest>),
        ("ResizePoolRequest", fuzz_type::<ResizePoolRequest>),
        ("CreateSnapshotRequest", fuzz_type::<CreateSnapshotRequest>),
        ("ExecRequest", fuzz_type::<ExecRequest>),
        ("RateLimits", fuzz_type::<RateLimits>),
    ];
    for (name, run) in runs {
        let outcomes = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(&doc, name, &mut rng, cases)
        }))
        .unwrap_or_else(|_| panic!("{name} failed (seed {seed}; TFC_FUZZ_SEED={seed} repeats)"));
        eprintln!("{name}: {outcomes:?}");
        assert!(
            outcomes.decoded > 0,
            "{name}: no generated body decoded (seed {seed})"
        );
        assert!(
            outcomes.refused > 0,
            "{name}: no broken body refused (seed {seed})"
        );
    }
}

/// Scalars and `null` are refused for every body, never taken as the
/// defaults. (An array is not refused: serde reads a struct from a JSON
/// array by position, so `[]` is every field's default. Pinned here, so
/// that a change either way is noticed.)
#[test]
fn scalar_bodies_are_refused_and_arrays_are_positional() {
    for text in ["null", "7", "\"x\"", "true"] {
        let value: Value = serde_json::from_str(text).unwrap();
        assert!(
            serde_json::from_value::<CreateVmRequest>(value.clone()).is_err(),
            "{text}"
        );
        assert!(
            serde_json::from_value::<AcquireRequest>(value.clone()).is_err(),
            "{text}"
        );
        assert!(
            serde_json::from_value::<ResizePoolRequest>(value.clone()).is_err(),
            "{text}"
        );
        assert!(
            serde_json::from_value::<CreateSnapshotRequest>(value.clone()).is_err(),
            "{text}"
        );
        assert!(
            serde_json::from_value::<ExecRequest>(value.clone()).is_err(),
            "{text}"
        );
        assert!(
            serde_json::from_value::<RateLimits>(value).is_err(),
            "{text}"
        );
    }
    let empty: CreateVmRequest = serde_json::from_str("[]").unwrap();
    assert_eq!(empty, CreateVmRequest::default());
    let sized: CreateVmRequest = serde_json::from_str(r#"[null, 2]"#).unwrap();
    assert_eq!(sized.vcpus, Some(2));
}
