//! Allocation strategies: which of a pool's ready VMs to hand out. Pure: the
//! pool supplies its candidates and, for the weighted strategy, a random
//! number; the choice is decided and tested here.
//!
//! | strategy | picks |
//! |---|---|
//! | `first_available` | the candidate that has been ready longest (first in the pool's order) |
//! | `best_performance` | the lowest measured resume latency; unmeasured ones after measured ones, freshest first |
//! | `least_recently_used` | the candidate whose slot was used longest ago (never used first) |
//! | `round_robin` | the next candidate after the one picked last, by id, wrapping around |
//! | `weighted_random` | at random, in proportion to each candidate's weight |

use serde::{Deserialize, Serialize};

/// How a pool chooses among its ready VMs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AllocationStrategy {
    #[default]
    FirstAvailable,
    BestPerformance,
    LeastRecentlyUsed,
    RoundRobin,
    WeightedRandom,
}

/// One VM a pool could hand out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    /// When it became ready, ms since the Unix epoch.
    pub ready_since_ms: u64,
    /// When its slot was last handed out, if ever.
    pub last_used_ms: Option<u64>,
    /// Its measured resume latency, when measured.
    pub resume_latency_us: Option<u64>,
    /// Relative share for `weighted_random` (0 = never picked by it).
    pub weight: u32,
}

/// A strategy with the little state one needs (round robin's position).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocator {
    strategy: AllocationStrategy,
    last_id: Option<String>,
}

impl Allocator {
    pub fn new(strategy: AllocationStrategy) -> Self {
        Self {
            strategy,
            last_id: None,
        }
    }

    pub fn strategy(&self) -> AllocationStrategy {
        self.strategy
    }

    /// The index in `candidates` to hand out, or `None` when there is none.
    /// `random` is any uniformly distributed number (only `weighted_random`
    /// reads it).
    pub fn pick(&mut self, candidates: &[Candidate], random: u64) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let indices = 0..candidates.len();
        let picked = match self.strategy {
            AllocationStrategy::FirstAvailable => {
                indices.min_by_key(|&i| (candidates[i].ready_since_ms, &candidates[i].id))
            }
            AllocationStrategy::BestPerformance => indices.min_by_key(|&i| {
                let c = &candidates[i];
                // Measured before unmeasured; then faster; then fresher.
                (
                    c.resume_latency_us.is_none(),
                    c.resume_latency_us.unwrap_or(0),
                    std::cmp::Reverse(c.ready_since_ms),
                    &c.id,
                )
            }),
            AllocationStrategy::LeastRecentlyUsed => indices.min_by_key(|&i| {
                let c = &candidates[i];
                (c.last_used_ms.is_some(), c.last_used_ms, &c.id)
            }),
            AllocationStrategy::RoundRobin => {
                let after = |i: &usize| match &self.last_id {
                    Some(last) => candidates[*i].id > *last,
                    None => true,
                };
                indices
                    .clone()
                    .filter(after)
                    .min_by_key(|&i| &candidates[i].id)
                    .or_else(|| indices.min_by_key(|&i| &candidates[i].id))
            }
            AllocationStrategy::WeightedRandom => {
                let total: u64 = candidates.iter().map(|c| u64::from(c.weight)).sum();
                if total == 0 {
                    None
                } else {
                    let mut point = random % total;
                    indices.into_iter().find(|&i| {
                        let w = u64::from(candidates[i].weight);
                        if point < w {
                            true
                        } else {
                            point -= w;
                            false
                        }
                    })
                }
            }
        };
        if let Some(i) = picked {
            self.last_id = Some(candidates[i].id.clone());
        }
        picked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, ready: u64, used: Option<u64>, latency: Option<u64>, weight: u32) -> Candidate {
        Candidate {
            id: id.to_owned(),
            ready_since_ms: ready,
            last_used_ms: used,
            resume_latency_us: latency,
            weight,
        }
    }

    fn pool() -> Vec<Candidate> {
        vec![
            c("vm-c", 300, Some(50), Some(900), 1),
            c("vm-a", 100, Some(70), None, 2),
            c("vm-b", 200, None, Some(400), 1),
            c("vm-d", 400, Some(10), Some(400), 0),
        ]
    }

    fn ids(strategy: AllocationStrategy, random: &[u64]) -> Vec<String> {
        // Picks until the pool is empty, removing each pick, as acquires do.
        let mut pool = pool();
        let mut alloc = Allocator::new(strategy);
        let mut order = Vec::new();
        let mut rolls = random.iter().copied().cycle();
        while let Some(i) = alloc.pick(&pool, rolls.next().unwrap_or(0)) {
            order.push(pool.remove(i).id);
        }
        order
    }

    #[test]
    fn first_available_hands_out_the_longest_ready_first() {
        assert_eq!(
            ids(AllocationStrategy::FirstAvailable, &[0]),
            ["vm-a", "vm-b", "vm-c", "vm-d"]
        );
    }

    #[test]
    fn best_performance_prefers_measured_fast_then_fresh() {
        // vm-b and vm-d tie at 400 us: vm-d became ready later (fresher).
        assert_eq!(
            ids(AllocationStrategy::BestPerformance, &[0]),
            ["vm-d", "vm-b", "vm-c", "vm-a"]
        );
    }

    #[test]
    fn least_recently_used_prefers_never_used_then_oldest_use() {
        assert_eq!(
            ids(AllocationStrategy::LeastRecentlyUsed, &[0]),
            ["vm-b", "vm-d", "vm-c", "vm-a"]
        );
    }

    #[test]
    fn round_robin_cycles_by_id_and_wraps() {
        let pool = pool();
        let mut alloc = Allocator::new(AllocationStrategy::RoundRobin);
        let picks: Vec<&str> = (0..6)
            .map(|_| pool[alloc.pick(&pool, 0).unwrap()].id.as_str())
            .collect();
        assert_eq!(picks, ["vm-a", "vm-b", "vm-c", "vm-d", "vm-a", "vm-b"]);
        // A candidate that left is skipped; the cycle goes on after it.
        let fewer: Vec<Candidate> = pool.into_iter().filter(|c| c.id != "vm-c").collect();
        assert_eq!(fewer[alloc.pick(&fewer, 0).unwrap()].id, "vm-d");
    }

    #[test]
    fn weighted_random_follows_the_weights_and_skips_weight_zero() {
        let pool = pool();
        let mut alloc = Allocator::new(AllocationStrategy::WeightedRandom);
        // Weights in pool order: c=1, a=2, b=1, d=0 (total 4).
        let picks: Vec<&str> = (0..8)
            .map(|r| pool[alloc.pick(&pool, r).unwrap()].id.as_str())
            .collect();
        assert_eq!(
            picks,
            ["vm-c", "vm-a", "vm-a", "vm-b", "vm-c", "vm-a", "vm-a", "vm-b"]
        );
        let mut counts = std::collections::HashMap::new();
        for r in 0..4000u64 {
            let pick = alloc
                .pick(&pool, r.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .unwrap();
            *counts.entry(pool[pick].id.clone()).or_insert(0u32) += 1;
        }
        assert!(!counts.contains_key("vm-d"), "{counts:?}");
        let a = counts["vm-a"] as f64;
        let b = counts["vm-b"] as f64;
        assert!((1.6..2.4).contains(&(a / b)), "{counts:?}");
        // All weights zero: nothing can be picked.
        let zero = vec![c("vm-z", 1, None, None, 0)];
        assert_eq!(alloc.pick(&zero, 7), None);
    }

    #[test]
    fn an_empty_pool_yields_nothing() {
        for strategy in [
            AllocationStrategy::FirstAvailable,
            AllocationStrategy::BestPerformance,
            AllocationStrategy::LeastRecentlyUsed,
            AllocationStrategy::RoundRobin,
            AllocationStrategy::WeightedRandom,
        ] {
            assert_eq!(Allocator::new(strategy).pick(&[], 1), None);
        }
    }
}
