//! The VM lifecycle. [`transition`] is the only place that decides whether a state
//! change is legal; the daemon's VM owner calls it before acting and records the
//! result, so an illegal request is refused before anything touches the VMM.
//!
//! ```text
//!  Creating ──Restored (snapshot loaded and resumed)──▶ Ready
//!  Creating ──RestoredPaused (snapshot loaded, vCPUs left paused: a pool's hot tier)──▶ Paused
//!  Creating ──StartBoot──▶ Booting ─────┐
//!     │                                  ├─BootCompleted─▶ Ready ◀──Repaired── NeedsMaintenance
//!     └──StartPrewarm──▶ Prewarming ────┘                    │ │                      ▲
//!                                          Allocate ◀────────┘ └─Pause─▶ Paused ──────┤ HealthCheckFailed
//!                                             │                            │   ▲      │ (from Ready, Running,
//!                            Allocating ─Allocated─▶ Running ◀──Resume─────┘   │      │  Paused, Snapshotted)
//!                                                      └──────Pause────────────┘
//!  Paused ──SnapshotTaken──▶ Snapshotted ──Resume──▶ Running
//!  any live state ──Stop──▶ Stopping ──Exited──▶ Stopped
//!  Ready, Running, NeedsMaintenance ──GuestShutdown (the guest powered off)──▶ Stopped
//!  any state but Stopped/Failed ──Fail──▶ Failed
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Record made; VMM process being spawned and configured.
    Creating,
    /// `InstanceStart` sent; waiting for the readiness check.
    Booting,
    /// Booting to fill a pool rather than for a caller.
    Prewarming,
    /// Readiness check passed; running, not yet used by a caller.
    Ready,
    /// Being handed to a caller (resumed, identity fixed up).
    Allocating,
    /// Running in a caller's hands (after allocation or a resume).
    Running,
    /// vCPUs paused; memory kept. Costs no CPU.
    Paused,
    /// Paused, and at least one snapshot has been taken since the pause.
    Snapshotted,
    /// Failed a health check or exceeded its age; to be repaired or replaced.
    NeedsMaintenance,
    /// Stop requested; waiting for the VMM process to exit.
    Stopping,
    /// VMM process exited after a stop. Terminal.
    Stopped,
    /// Something went wrong; `failure` on the record says what. Terminal.
    Failed,
}

impl VmState {
    pub const ALL: [VmState; 12] = [
        VmState::Creating,
        VmState::Booting,
        VmState::Prewarming,
        VmState::Ready,
        VmState::Allocating,
        VmState::Running,
        VmState::Paused,
        VmState::Snapshotted,
        VmState::NeedsMaintenance,
        VmState::Stopping,
        VmState::Stopped,
        VmState::Failed,
    ];

    /// Terminal states: the VMM process is gone and only deletion remains.
    pub fn is_terminal(self) -> bool {
        matches!(self, VmState::Stopped | VmState::Failed)
    }

    /// A record may be deleted only once its VMM process is gone.
    pub fn is_deletable(self) -> bool {
        self.is_terminal()
    }

    /// The VMM process is expected to be alive in this state.
    pub fn has_process(self) -> bool {
        !self.is_terminal()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Creating => "creating",
            VmState::Booting => "booting",
            VmState::Prewarming => "prewarming",
            VmState::Ready => "ready",
            VmState::Allocating => "allocating",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Snapshotted => "snapshotted",
            VmState::NeedsMaintenance => "needs_maintenance",
            VmState::Stopping => "stopping",
            VmState::Stopped => "stopped",
            VmState::Failed => "failed",
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happens to a VM: a request, or an observation of the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmEvent {
    /// VMM configured, `InstanceStart` about to be sent for a caller.
    StartBoot,
    /// Same, but to fill a pool.
    StartPrewarm,
    /// The VMM loaded a snapshot and resumed the guest: ready without a boot.
    Restored,
    /// The VMM loaded a snapshot and left the guest paused (a pool's hot
    /// tier: no CPU cost until it is handed out).
    RestoredPaused,
    /// The readiness check passed.
    BootCompleted,
    /// A caller takes the VM.
    Allocate,
    /// Allocation finished; the caller has it.
    Allocated,
    /// Pause the vCPUs.
    Pause,
    /// Resume the vCPUs.
    Resume,
    /// A snapshot of the paused VM was written.
    SnapshotTaken,
    /// A health check or the age limit says the VM is no longer fit.
    HealthCheckFailed,
    /// Maintenance brought the VM back.
    Repaired,
    /// Stop requested.
    Stop,
    /// The VMM process exited after a stop.
    Exited,
    /// The guest powered itself off (or reset: a microVM's reset ends its
    /// VMM), and the VMM exited cleanly with it.
    GuestShutdown,
    /// Anything fatal: process died, boot timed out, VMM refused a call.
    Fail,
}

impl VmEvent {
    pub const ALL: [VmEvent; 16] = [
        VmEvent::StartBoot,
        VmEvent::StartPrewarm,
        VmEvent::Restored,
        VmEvent::RestoredPaused,
        VmEvent::BootCompleted,
        VmEvent::Allocate,
        VmEvent::Allocated,
        VmEvent::Pause,
        VmEvent::Resume,
        VmEvent::SnapshotTaken,
        VmEvent::HealthCheckFailed,
        VmEvent::Repaired,
        VmEvent::Stop,
        VmEvent::Exited,
        VmEvent::GuestShutdown,
        VmEvent::Fail,
    ];
}

/// `event` is not allowed while the VM is in `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event:?} a VM that is {from}")]
pub struct InvalidTransition {
    pub from: VmState,
    pub event: VmEvent,
}

/// The lifecycle's single transition function.
pub fn transition(from: VmState, event: VmEvent) -> Result<VmState, InvalidTransition> {
    use VmEvent as E;
    use VmState as S;
    let to = match (from, event) {
        (S::Creating, E::StartBoot) => S::Booting,
        (S::Creating, E::StartPrewarm) => S::Prewarming,
        (S::Creating, E::Restored) => S::Ready,
        (S::Creating, E::RestoredPaused) => S::Paused,
        (S::Booting | S::Prewarming, E::BootCompleted) => S::Ready,
        (S::Ready | S::Paused | S::Snapshotted, E::Allocate) => S::Allocating,
        (S::Allocating, E::Allocated) => S::Running,
        (S::Ready | S::Running, E::Pause) => S::Paused,
        (S::Paused | S::Snapshotted, E::Resume) => S::Running,
        (S::Paused | S::Snapshotted, E::SnapshotTaken) => S::Snapshotted,
        (S::Ready | S::Running | S::Paused | S::Snapshotted, E::HealthCheckFailed) => {
            S::NeedsMaintenance
        }
        (S::NeedsMaintenance, E::Repaired) => S::Ready,
        (s, E::Stop) if s.has_process() && s != S::Stopping => S::Stopping,
        (S::Stopping, E::Exited) => S::Stopped,
        // Only a guest that runs can power off; one that never became ready
        // failed to boot.
        (S::Ready | S::Running | S::NeedsMaintenance, E::GuestShutdown) => S::Stopped,
        (s, E::Fail) if !s.is_terminal() => S::Failed,
        _ => return Err(InvalidTransition { from, event }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use VmEvent as E;
    use VmState as S;

    /// Every legal (state, event) pair and its result. Any pair not listed must be
    /// refused; the test walks the full product to check both directions.
    fn legal() -> HashMap<(VmState, VmEvent), VmState> {
        let mut t = HashMap::new();
        t.insert((S::Creating, E::StartBoot), S::Booting);
        t.insert((S::Creating, E::StartPrewarm), S::Prewarming);
        t.insert((S::Creating, E::Restored), S::Ready);
        t.insert((S::Creating, E::RestoredPaused), S::Paused);
        t.insert((S::Booting, E::BootCompleted), S::Ready);
        t.insert((S::Prewarming, E::BootCompleted), S::Ready);
        for s in [S::Ready, S::Paused, S::Snapshotted] {
            t.insert((s, E::Allocate), S::Allocating);
        }
        t.insert((S::Allocating, E::Allocated), S::Running);
        t.insert((S::Ready, E::Pause), S::Paused);
        t.insert((S::Running, E::Pause), S::Paused);
        t.insert((S::Paused, E::Resume), S::Running);
        t.insert((S::Snapshotted, E::Resume), S::Running);
        t.insert((S::Paused, E::SnapshotTaken), S::Snapshotted);
        t.insert((S::Snapshotted, E::SnapshotTaken), S::Snapshotted);
        for s in [S::Ready, S::Running, S::Paused, S::Snapshotted] {
            t.insert((s, E::HealthCheckFailed), S::NeedsMaintenance);
        }
        t.insert((S::NeedsMaintenance, E::Repaired), S::Ready);
        for s in [
            S::Creating,
            S::Booting,
            S::Prewarming,
            S::Ready,
            S::Allocating,
            S::Running,
            S::Paused,
            S::Snapshotted,
            S::NeedsMaintenance,
        ] {
            t.insert((s, E::Stop), S::Stopping);
        }
        t.insert((S::Stopping, E::Exited), S::Stopped);
        for s in [S::Ready, S::Running, S::NeedsMaintenance] {
            t.insert((s, E::GuestShutdown), S::Stopped);
        }
        for s in VmState::ALL {
            if !s.is_terminal() {
                t.insert((s, E::Fail), S::Failed);
            }
        }
        t
    }

    #[test]
    fn every_pair_matches_the_table() {
        let table = legal();
        let mut checked = 0;
        for from in VmState::ALL {
            for event in VmEvent::ALL {
                let got = transition(from, event);
                match table.get(&(from, event)) {
                    Some(to) => assert_eq!(got, Ok(*to), "{from:?} + {event:?}"),
                    None => assert_eq!(
                        got,
                        Err(InvalidTransition { from, event }),
                        "{from:?} + {event:?} should be refused"
                    ),
                }
                checked += 1;
            }
        }
        assert_eq!(checked, VmState::ALL.len() * VmEvent::ALL.len());
    }

    #[test]
    fn terminal_states_accept_nothing() {
        for from in [S::Stopped, S::Failed] {
            for event in VmEvent::ALL {
                assert!(transition(from, event).is_err());
            }
        }
    }

    #[test]
    fn state_names_round_trip_through_json() {
        for s in VmState::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            let back: VmState = serde_json::from_str(&json).unwrap();
            assert_eq!(back, s);
        }
    }

    proptest::proptest! {
        /// Whatever sequence of events arrives, the machine only moves along legal
        /// edges, and once terminal it stays put.
        #[test]
        fn random_event_sequences_stay_consistent(events in proptest::collection::vec(0..VmEvent::ALL.len(), 0..64)) {
            let table = legal();
            let mut state = S::Creating;
            for i in events {
                let event = VmEvent::ALL[i];
                let before = state;
                match transition(state, event) {
                    Ok(to) => {
                        proptest::prop_assert_eq!(table.get(&(before, event)), Some(&to));
                        proptest::prop_assert!(!before.is_terminal());
                        state = to;
                    }
                    Err(e) => proptest::prop_assert_eq!(e.from, before),
                }
            }
        }
    }
}
