//! Property test: no sequence of API calls drives a VM into a state the state
//! machine does not allow, and the daemon's answers always agree with a model
//! built from `tfc_core::transition` alone (fake backend).

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use proptest::prelude::*;
use serde_json::Value;
use tfc_core::{transition, VmEvent, VmState};
use tfc_daemon::backend::{Backend, FakeBackend};
use tfc_daemon::config::Config;
use tfc_daemon::manager::VmManager;

#[derive(Debug, Clone)]
enum Call {
    Create,
    Pause(usize),
    Resume(usize),
    Stop(usize),
    Delete(usize, bool),
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        1 => Just(Call::Create),
        2 => (0..3usize).prop_map(Call::Pause),
        2 => (0..3usize).prop_map(Call::Resume),
        1 => (0..3usize).prop_map(Call::Stop),
        1 => (0..3usize, any::<bool>()).prop_map(|(i, f)| Call::Delete(i, f)),
    ]
}

fn parse_state(v: &Value) -> VmState {
    serde_json::from_value(v["state"].clone()).unwrap()
}

async fn run(calls: Vec<Call>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse("[daemon]\nbackend = \"fake\"\n", "test").unwrap();
    let manager = VmManager::new(
        Backend::Fake(FakeBackend::new(Duration::ZERO)),
        config,
        dir.path().to_owned(),
    );
    let app = tfc_daemon::api::router(manager);
    // The model: (id, state) of every VM that exists.
    let mut model: Vec<(String, VmState)> = Vec::new();
    for call in calls {
        match call {
            Call::Create => {
                let (status, vm) =
                    common::send(&app, Method::POST, "/v1/vms", Some(r#"{"wait":true}"#)).await;
                prop_assert_eq!(status, StatusCode::CREATED);
                prop_assert_eq!(parse_state(&vm), VmState::Ready);
                model.push((vm["id"].as_str().unwrap().to_owned(), VmState::Ready));
            }
            Call::Pause(i) | Call::Resume(i) | Call::Stop(i) if i < model.len() => {
                let (verb, event) = match call {
                    Call::Pause(_) => ("pause", VmEvent::Pause),
                    Call::Resume(_) => ("resume", VmEvent::Resume),
                    _ => ("stop", VmEvent::Stop),
                };
                let (id, state) = model[i].clone();
                let (status, body) =
                    common::send(&app, Method::POST, &format!("/v1/vms/{id}/{verb}"), None).await;
                match transition(state, event) {
                    Ok(mut to) => {
                        if to == VmState::Stopping {
                            to = transition(to, VmEvent::Exited).unwrap();
                        }
                        prop_assert_eq!(status, StatusCode::OK, "{} {}: {}", verb, state, body);
                        prop_assert_eq!(parse_state(&body), to);
                        model[i].1 = to;
                    }
                    Err(_) => {
                        prop_assert_eq!(
                            status,
                            StatusCode::CONFLICT,
                            "{} {}: {}",
                            verb,
                            state,
                            body
                        );
                        prop_assert_eq!(parse_state(&body), state);
                    }
                }
            }
            Call::Delete(i, force) if i < model.len() => {
                let (id, state) = model[i].clone();
                let (status, body) = common::send(
                    &app,
                    Method::DELETE,
                    &format!("/v1/vms/{id}?force={force}"),
                    None,
                )
                .await;
                if force || state.is_deletable() {
                    prop_assert_eq!(status, StatusCode::NO_CONTENT, "{}", body);
                    model.remove(i);
                } else {
                    prop_assert_eq!(status, StatusCode::CONFLICT);
                }
            }
            _ => {}
        }
        // After every call the daemon agrees with the model on every VM.
        let (_, list) = common::send(&app, Method::GET, "/v1/vms", None).await;
        let listed = list["vms"].as_array().unwrap();
        prop_assert_eq!(listed.len(), model.len());
        for (id, state) in &model {
            let (status, vm) =
                common::send(&app, Method::GET, &format!("/v1/vms/{id}"), None).await;
            prop_assert_eq!(status, StatusCode::OK);
            prop_assert_eq!(parse_state(&vm), *state);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn api_sequences_agree_with_the_state_machine(calls in proptest::collection::vec(call(), 1..24)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run(calls))?;
    }
}
