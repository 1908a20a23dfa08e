//! Pools of prewarmed VMs, the pure part: the tiers that serve an acquire, how
//! many VMs a refill starts, how long it backs off after failures, how the
//! hot tier's target scales with demand, and the percentiles pool stats
//! report. The daemon's pool engine acts on these decisions.
//!
//! Tiers, in the order an acquire tries them:
//!
//! | tier | what waits | an acquire costs |
//! |---|---|---|
//! | `running` | restored VMs left running | nothing from the VMM: a handover |
//! | `hot` | restored VMs left paused (no CPU) | one resume |
//! | `warm` | the VM type's template on disk | one restore |
//! | `cold` | nothing | a kernel boot |

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a pooled VM waits, or what served an acquire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PoolTier {
    Running,
    Hot,
    Warm,
    Cold,
}

impl PoolTier {
    /// Every tier, in the order an acquire tries them.
    pub const ALL: [PoolTier; 4] = [
        PoolTier::Running,
        PoolTier::Hot,
        PoolTier::Warm,
        PoolTier::Cold,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PoolTier::Running => "running",
            PoolTier::Hot => "hot",
            PoolTier::Warm => "warm",
            PoolTier::Cold => "cold",
        }
    }

    /// Tiers whose VMs wait in the pool (the others are served on demand).
    pub fn is_prewarmed(self) -> bool {
        matches!(self, PoolTier::Running | PoolTier::Hot)
    }
}

impl fmt::Display for PoolTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many VMs a refill should start now: enough to bring `ready` plus
/// `starting` up to `target`, never more than `concurrency` starting at once.
pub fn refill_count(target: u32, ready: u32, starting: u32, concurrency: u32) -> u32 {
    let missing = target.saturating_sub(ready.saturating_add(starting));
    missing.min(concurrency.saturating_sub(starting))
}

/// The wait before the next refill attempt after `failures` consecutive
/// failures: none after none, then `base`, doubling each time, at most `cap`.
pub fn backoff(failures: u32, base: Duration, cap: Duration) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
    base.checked_mul(factor).map_or(cap, |d| d.min(cap))
}

/// When and how far the hot tier's target moves with demand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoscalePolicy {
    /// Scale up when the window's peak utilisation reaches this (0-1), or any
    /// acquire in the window found the tier empty.
    pub up_threshold: f64,
    /// Scale down when the window's peak utilisation stayed at or below this.
    pub down_threshold: f64,
    /// VMs added per scale-up (a scale-down removes one).
    pub step: u32,
}

/// What one window of a pool's life looked like, for [`scaled_target`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DemandWindow {
    /// Most hot VMs handed out and not yet replaced at any moment of the
    /// window.
    pub peak_in_use: u32,
    /// Acquires in the window that found no hot VM waiting.
    pub misses: u64,
}

/// The hot tier's target for the next window, within `min..=max`.
///
/// Utilisation is `peak_in_use / target` (a target of 0 with any demand counts
/// as full). Reaching `up_threshold`, or any miss, scales up by `step`;
/// staying at or below `down_threshold` scales down by one.
pub fn scaled_target(
    target: u32,
    min: u32,
    max: u32,
    window: DemandWindow,
    policy: AutoscalePolicy,
) -> u32 {
    let utilisation = if target == 0 {
        if window.peak_in_use > 0 || window.misses > 0 {
            1.0
        } else {
            0.0
        }
    } else {
        f64::from(window.peak_in_use) / f64::from(target)
    };
    let next = if window.misses > 0 || utilisation >= policy.up_threshold {
        target.saturating_add(policy.step)
    } else if utilisation <= policy.down_threshold {
        target.saturating_sub(1)
    } else {
        target
    };
    next.clamp(min, max.max(min))
}

/// The `p`-th percentile (0-100) of ascending `sorted` by nearest rank, or
/// `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refill_fills_the_gap_within_the_concurrency() {
        assert_eq!(refill_count(4, 0, 0, 2), 2);
        assert_eq!(refill_count(4, 1, 1, 2), 1);
        assert_eq!(refill_count(4, 2, 2, 2), 0);
        assert_eq!(refill_count(4, 4, 0, 2), 0);
        assert_eq!(refill_count(4, 6, 0, 2), 0, "over target starts nothing");
        assert_eq!(refill_count(4, 0, 3, 2), 0, "already over the concurrency");
        assert_eq!(refill_count(0, 0, 0, 2), 0);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let base = Duration::from_millis(500);
        let cap = Duration::from_secs(60);
        let waits: Vec<u64> = (0..10)
            .map(|n| backoff(n, base, cap).as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [0, 500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        assert_eq!(backoff(u32::MAX, base, cap), cap);
    }

    const POLICY: AutoscalePolicy = AutoscalePolicy {
        up_threshold: 0.75,
        down_threshold: 0.25,
        step: 2,
    };

    fn window(peak_in_use: u32, misses: u64) -> DemandWindow {
        DemandWindow {
            peak_in_use,
            misses,
        }
    }

    #[test]
    fn autoscale_moves_with_utilisation_within_bounds() {
        // 3 of 4 in use = 0.75: up by the step.
        assert_eq!(scaled_target(4, 1, 10, window(3, 0), POLICY), 6);
        // A miss scales up whatever the peak.
        assert_eq!(scaled_target(4, 1, 10, window(0, 1), POLICY), 6);
        // Up, but not past max.
        assert_eq!(scaled_target(9, 1, 10, window(9, 0), POLICY), 10);
        // 2 of 4 = 0.5: between the thresholds, unchanged.
        assert_eq!(scaled_target(4, 1, 10, window(2, 0), POLICY), 4);
        // 1 of 4 = 0.25: down by one.
        assert_eq!(scaled_target(4, 1, 10, window(1, 0), POLICY), 3);
        // Down, but not below min.
        assert_eq!(scaled_target(1, 1, 10, window(0, 0), POLICY), 1);
        // A target of 0 with demand counts as full.
        assert_eq!(scaled_target(0, 0, 10, window(0, 3), POLICY), 2);
        assert_eq!(scaled_target(0, 0, 10, window(0, 0), POLICY), 0);
        // A target outside the bounds (a resize) is brought back in.
        assert_eq!(scaled_target(20, 1, 10, window(10, 0), POLICY), 10);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn tiers_are_tried_in_order() {
        let mut sorted = PoolTier::ALL;
        sorted.sort();
        assert_eq!(sorted, PoolTier::ALL);
        assert!(PoolTier::Hot.is_prewarmed() && !PoolTier::Warm.is_prewarmed());
    }
}
