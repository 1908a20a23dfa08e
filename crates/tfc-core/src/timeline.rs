//! Per-phase boot timing. Phases are recorded as offsets from the moment the
//! request was accepted, so a timeline reads as "where did the time go".

use serde::{Deserialize, Serialize};

/// A point in a VM's start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BootPhase {
    /// VMM process spawned.
    Spawned,
    /// VMM API socket accepted a connection.
    ApiReady,
    /// Boot source, machine config and drives accepted by the VMM.
    Configured,
    /// `InstanceStart` accepted: the guest is running.
    InstanceStarted,
    /// A restore's snapshot loaded and the guest resumed (one VMM call).
    SnapshotLoaded,
    /// The guest agent answered its first `ping` (VMs whose readiness is the agent).
    AgentReady,
    /// Readiness check passed.
    Ready,
}

impl BootPhase {
    /// The phase's name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            BootPhase::Spawned => "spawned",
            BootPhase::ApiReady => "api_ready",
            BootPhase::Configured => "configured",
            BootPhase::InstanceStarted => "instance_started",
            BootPhase::SnapshotLoaded => "snapshot_loaded",
            BootPhase::AgentReady => "agent_ready",
            BootPhase::Ready => "ready",
        }
    }
}

/// One phase and when it was reached, in microseconds since the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PhaseMark {
    pub phase: BootPhase,
    pub at_us: u64,
}

/// The phases reached so far, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct BootTimeline(pub Vec<PhaseMark>);

impl BootTimeline {
    pub fn mark(&mut self, phase: BootPhase, at_us: u64) {
        self.0.push(PhaseMark { phase, at_us });
    }

    pub fn at(&self, phase: BootPhase) -> Option<u64> {
        self.0.iter().find(|m| m.phase == phase).map(|m| m.at_us)
    }

    /// Time from the request to the last recorded phase.
    pub fn total_us(&self) -> Option<u64> {
        self.0.last().map(|m| m.at_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_names_are_the_api_spelling() {
        use BootPhase::*;
        for phase in [
            Spawned,
            ApiReady,
            Configured,
            InstanceStarted,
            SnapshotLoaded,
            AgentReady,
            Ready,
        ] {
            let json = serde_json::to_string(&phase).unwrap();
            assert_eq!(json, format!("\"{}\"", phase.as_str()));
        }
    }
}
