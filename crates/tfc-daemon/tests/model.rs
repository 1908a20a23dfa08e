//! Property test: no sequence of API calls, clock steps and VMM deaths drives a
//! VM into a state the state machine does not allow, and the daemon's answers
//! always agree with a model built from `tfc_core::transition` alone (fake
//! backend on tokio's paused clock, so boots finish exactly when the test says).

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use proptest::prelude::*;
use serde_json::Value;
use tfc_core::{transition, VmEvent, VmId, VmState};
use tfc_daemon::backend::{Backend, FakeBackend};
use tfc_daemon::config::Config;
use tfc_daemon::manager::VmManager;

/// The fake's boot time.
const BOOT: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
enum Call {
    /// `POST /v1/vms`, with or without waiting for readiness.
    Create {
        wait: bool,
    },
    Pause(usize),
    Resume(usize),
    Stop(usize),
    Delete(usize, bool),
    /// The VMM of VM i dies (SIGKILL from outside).
    Kill(usize),
    /// The clock moves on by one boot time: every booting VM becomes ready.
    Advance,
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        2 => any::<bool>().prop_map(|wait| Call::Create { wait }),
        2 => (0..4usize).prop_map(Call::Pause),
        2 => (0..4usize).prop_map(Call::Resume),
        1 => (0..4usize).prop_map(Call::Stop),
        1 => (0..4usize, any::<bool>()).prop_map(|(i, f)| Call::Delete(i, f)),
        1 => (0..4usize).prop_map(Call::Kill),
        1 => Just(Call::Advance),
    ]
}

fn parse_state(v: &Value) -> VmState {
    serde_json::from_value(v["state"].clone()).unwrap()
}

/// Booting VMs become Ready when the clock passes their boot time.
fn finish_boots(model: &mut [(String, VmState)]) {
    for (_, state) in model.iter_mut() {
        if *state == VmState::Booting {
            *state = transition(*state, VmEvent::BootCompleted).unwrap();
        }
    }
}

async fn run(calls: Vec<Call>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse("[daemon]\nbackend = \"fake\"\n", "test").unwrap();
    let fake = FakeBackend::new(BOOT);
    let manager = VmManager::in_memory(Backend::Fake(fake.clone()), config, dir.path().to_owned());
    let app = tfc_daemon::api::router(manager);
    // The model: (id, state) of every VM that exists.
    let mut model: Vec<(String, VmState)> = Vec::new();
    for call in calls {
        match call {
            Call::Create { wait } => {
                let body = format!(r#"{{"wait": {wait}}}"#);
                let (status, vm) = common::send(&app, Method::POST, "/v1/vms", Some(&body)).await;
                prop_assert_eq!(status, StatusCode::CREATED);
                let id = vm["id"].as_str().unwrap().to_owned();
                if wait {
                    // Waiting let the clock run to this boot's end, and every
                    // earlier boot ends no later.
                    prop_assert_eq!(parse_state(&vm), VmState::Ready);
                    finish_boots(&mut model);
                    model.push((id, VmState::Ready));
                } else {
                    model.push((id, VmState::Booting));
                }
            }
            Call::Pause(i) | Call::Resume(i) | Call::Stop(i) if i < model.len() => {
                let (verb, event) = match call {
                    Call::Pause(_) => ("pause", VmEvent::Pause),
                    Call::Resume(_) => ("resume", VmEvent::Resume),
                    _ => ("stop", VmEvent::Stop),
                };
                let (id, state) = model[i].clone();
                let uri = format!("/v1/vms/{id}/{verb}");
                let (status, body) = common::send(&app, Method::POST, &uri, None).await;
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
                let uri = format!("/v1/vms/{id}?force={force}");
                let (status, body) = common::send(&app, Method::DELETE, &uri, None).await;
                if force || state.is_deletable() {
                    prop_assert_eq!(status, StatusCode::NO_CONTENT, "{}", body);
                    model.remove(i);
                } else {
                    prop_assert_eq!(status, StatusCode::CONFLICT);
                }
            }
            Call::Kill(i) if i < model.len() => {
                let (id, state) = model[i].clone();
                prop_assert!(fake.kill(&VmId::new(id).unwrap()) || state.is_terminal());
                if let Ok(to) = transition(state, VmEvent::Fail) {
                    model[i].1 = to;
                }
            }
            Call::Advance => {
                tokio::time::advance(BOOT).await;
                finish_boots(&mut model);
            }
            _ => {}
        }
        // After every call the daemon agrees with the model on every VM, once the
        // owners have run (changes after a kill or a clock step are asynchronous).
        let (_, list) = common::send(&app, Method::GET, "/v1/vms", None).await;
        prop_assert_eq!(list["vms"].as_array().unwrap().len(), model.len());
        for (id, want) in &model {
            let mut got = VmState::Creating;
            for _ in 0..1000 {
                let (status, vm) =
                    common::send(&app, Method::GET, &format!("/v1/vms/{id}"), None).await;
                prop_assert_eq!(status, StatusCode::OK);
                got = parse_state(&vm);
                if got == *want {
                    if got == VmState::Failed {
                        prop_assert_eq!(&vm["exit"]["signal"], &Value::from(9), "{}", vm);
                    }
                    break;
                }
                tokio::task::yield_now().await;
            }
            prop_assert_eq!(got, *want, "VM {}", id);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn api_sequences_agree_with_the_state_machine(calls in proptest::collection::vec(call(), 1..32)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(run(calls))?;
    }
}
