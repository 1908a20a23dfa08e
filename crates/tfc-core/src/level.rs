//! Optimization levels: what a caller asks for, and the start method that serves
//! it. The choice is pure (from what is available and what was measured), so it
//! is decided and tested here; the daemon supplies the facts.
//!
//! | level        | method                                                        |
//! |--------------|---------------------------------------------------------------|
//! | `standard`   | cold boot with the VM type's boot arguments and devices        |
//! | `fast`       | cold boot, tuned: [`FAST_BOOT_ARGS`] appended, no vsock device, no dirty-page tracking |
//! | `ultra_fast` | restore of the VM type's golden snapshot (its template)        |
//! | `sub2_second`| the cheapest method measured under [`SUB2_SECOND_TARGET_MS`] on this host |
//! | `instant`    | a prewarmed VM from the type's pool                            |

use std::fmt;

use serde::{Deserialize, Serialize};

/// Boot arguments the `fast` level appends. Each skips work a microVM does not
/// need: TSC stability checks and the timer sanity check (the hypervisor's clock
/// is trusted), and waiting for entropy (the CPU's RNG seeds the pool).
pub const FAST_BOOT_ARGS: &str = "tsc=reliable no_timer_check random.trust_cpu=on";

/// The `sub2_second` level's target, from request to Ready.
pub const SUB2_SECOND_TARGET_MS: f64 = 2000.0;

/// How fast the caller wants the VM, trading setup for speed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OptimizationLevel {
    #[default]
    Standard,
    Fast,
    UltraFast,
    Sub2Second,
    Instant,
}

impl OptimizationLevel {
    pub const ALL: [OptimizationLevel; 5] = [
        OptimizationLevel::Standard,
        OptimizationLevel::Fast,
        OptimizationLevel::UltraFast,
        OptimizationLevel::Sub2Second,
        OptimizationLevel::Instant,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OptimizationLevel::Standard => "standard",
            OptimizationLevel::Fast => "fast",
            OptimizationLevel::UltraFast => "ultra_fast",
            OptimizationLevel::Sub2Second => "sub2_second",
            OptimizationLevel::Instant => "instant",
        }
    }
}

impl fmt::Display for OptimizationLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for OptimizationLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| {
                format!("unknown optimization level {s:?}: use standard, fast, ultra_fast, sub2_second or instant")
            })
    }
}

/// How a VM was actually started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StartMethod {
    /// Kernel boot with the VM type's configuration.
    #[default]
    ColdBoot,
    /// Kernel boot with the `fast` level's tuning.
    TunedBoot,
    /// Snapshot loaded into a new VMM and resumed.
    Restore,
    /// Handed out from a pool of prewarmed VMs.
    Pool,
}

impl StartMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            StartMethod::ColdBoot => "cold_boot",
            StartMethod::TunedBoot => "tuned_boot",
            StartMethod::Restore => "restore",
            StartMethod::Pool => "pool",
        }
    }
}

impl fmt::Display for StartMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the daemon knows when it picks a method for a VM type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StartFacts {
    /// The type's golden snapshot exists and matches its current inputs.
    pub template_ready: bool,
    /// The type has a pool that can hand out a VM.
    pub pool_available: bool,
    /// Median request-to-Ready time measured on this host per method, in ms.
    pub measured_ms: Vec<(StartMethod, f64)>,
}

impl StartFacts {
    fn median(&self, method: StartMethod) -> Option<f64> {
        self.measured_ms
            .iter()
            .find(|(m, _)| *m == method)
            .map(|(_, ms)| *ms)
    }
}

/// The method chosen for a level, and why when it is not the level's own.
#[derive(Debug, Clone, PartialEq)]
pub struct StartChoice {
    pub method: StartMethod,
    /// Set when the level could not be served as asked (a fallback), or to say
    /// how `sub2_second` decided.
    pub note: Option<String>,
}

/// `level` cannot be served at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unservable(pub String);

/// Picks the start method for `level`. Missing templates fall back to a cold
/// boot with a note (the VM still starts, more slowly); a missing pool for
/// `instant` is an error, since the caller asked for a VM that is already up.
pub fn choose(level: OptimizationLevel, facts: &StartFacts) -> Result<StartChoice, Unservable> {
    use OptimizationLevel as L;
    let plain = |method| StartChoice { method, note: None };
    match level {
        L::Standard => Ok(plain(StartMethod::ColdBoot)),
        L::Fast => Ok(plain(StartMethod::TunedBoot)),
        L::UltraFast if facts.template_ready => Ok(plain(StartMethod::Restore)),
        L::UltraFast => Ok(StartChoice {
            method: StartMethod::ColdBoot,
            note: Some(
                "no current golden snapshot for this VM type (run `tfc template build`); cold boot instead"
                    .to_owned(),
            ),
        }),
        L::Instant if facts.pool_available => Ok(plain(StartMethod::Pool)),
        L::Instant => Err(Unservable(
            "optimization level instant needs a pool of prewarmed VMs of this type, and there is none".to_owned(),
        )),
        L::Sub2Second => Ok(choose_sub2_second(facts)),
    }
}

/// Candidates in order of expected speed; the first one available whose
/// measured median meets the target wins. A method not yet measured is trusted
/// only when it is a restore (loading a snapshot takes milliseconds on any host
/// that runs Firecracker); a boot's time depends too much on the host.
fn choose_sub2_second(facts: &StartFacts) -> StartChoice {
    let target = SUB2_SECOND_TARGET_MS;
    let mut candidates = Vec::new();
    if facts.template_ready {
        candidates.push(StartMethod::Restore);
    }
    candidates.extend([StartMethod::TunedBoot, StartMethod::ColdBoot]);
    for method in &candidates {
        match facts.median(*method) {
            Some(ms) if ms <= target => {
                return StartChoice {
                    method: *method,
                    note: Some(format!(
                        "{method} measured {ms:.0} ms median on this host, within {target:.0} ms"
                    )),
                }
            }
            None if *method == StartMethod::Restore => {
                return StartChoice {
                    method: *method,
                    note: Some(
                        "restore not yet measured on this host; expected within target".to_owned(),
                    ),
                }
            }
            _ => {}
        }
    }
    // Nothing meets the target: take the fastest measured (or the first
    // candidate) and say so.
    let fastest = candidates
        .iter()
        .filter_map(|m| facts.median(*m).map(|ms| (*m, ms)))
        .min_by(|a, b| a.1.total_cmp(&b.1));
    let (method, why) = match fastest {
        Some((m, ms)) => (m, format!("fastest measured is {m} at {ms:.0} ms median")),
        None => (candidates[0], "nothing measured yet".to_owned()),
    };
    StartChoice {
        method,
        note: Some(format!(
            "no method meets {target:.0} ms on this host ({why}); used {method}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OptimizationLevel as L;
    use StartMethod as M;

    fn facts(template_ready: bool, measured: &[(StartMethod, f64)]) -> StartFacts {
        StartFacts {
            template_ready,
            pool_available: false,
            measured_ms: measured.to_vec(),
        }
    }

    #[test]
    fn fixed_levels_map_to_their_method() {
        let f = facts(true, &[]);
        assert_eq!(choose(L::Standard, &f).unwrap().method, M::ColdBoot);
        assert_eq!(choose(L::Fast, &f).unwrap().method, M::TunedBoot);
        assert_eq!(
            choose(L::UltraFast, &f).unwrap(),
            StartChoice {
                method: M::Restore,
                note: None
            }
        );
    }

    #[test]
    fn ultra_fast_without_a_template_boots_and_says_why() {
        let c = choose(L::UltraFast, &facts(false, &[])).unwrap();
        assert_eq!(c.method, M::ColdBoot);
        assert!(c.note.unwrap().contains("tfc template build"));
    }

    #[test]
    fn instant_needs_a_pool() {
        assert!(choose(L::Instant, &facts(true, &[])).is_err());
        let mut f = facts(true, &[]);
        f.pool_available = true;
        assert_eq!(choose(L::Instant, &f).unwrap().method, M::Pool);
    }

    #[test]
    fn sub2_second_prefers_a_measured_method_within_target() {
        // Real KVM: boots take 150 ms, so even without a template it is met.
        let c = choose(
            L::Sub2Second,
            &facts(false, &[(M::ColdBoot, 150.0), (M::TunedBoot, 120.0)]),
        )
        .unwrap();
        assert_eq!(c.method, M::TunedBoot);
        // A template wins when its restores are measured fast.
        let c = choose(
            L::Sub2Second,
            &facts(true, &[(M::Restore, 11.0), (M::TunedBoot, 120.0)]),
        )
        .unwrap();
        assert_eq!(c.method, M::Restore);
        // Unmeasured restores are trusted; unmeasured boots are not.
        assert_eq!(
            choose(L::Sub2Second, &facts(true, &[])).unwrap().method,
            M::Restore
        );
    }

    #[test]
    fn sub2_second_on_a_slow_host_takes_the_fastest_and_says_none_meet_it() {
        let c = choose(
            L::Sub2Second,
            &facts(false, &[(M::ColdBoot, 27_000.0), (M::TunedBoot, 26_000.0)]),
        )
        .unwrap();
        assert_eq!(c.method, M::TunedBoot);
        assert!(c.note.unwrap().contains("no method meets"));
        let c = choose(L::Sub2Second, &facts(false, &[])).unwrap();
        assert_eq!(c.method, M::TunedBoot);
        // A restore measured slow (a loaded host) loses to nothing faster.
        let c = choose(
            L::Sub2Second,
            &facts(true, &[(M::Restore, 2500.0), (M::ColdBoot, 27_000.0)]),
        )
        .unwrap();
        assert_eq!(c.method, M::Restore);
    }

    #[test]
    fn level_names_round_trip() {
        for l in OptimizationLevel::ALL {
            assert_eq!(l.as_str().parse::<OptimizationLevel>(), Ok(l));
            assert_eq!(serde_json::to_string(&l).unwrap(), format!("\"{l}\""));
        }
        assert!("turbo".parse::<OptimizationLevel>().is_err());
    }
}
