//! Human views of VM types' pools: the `pool ls` table, the `pool show`
//! page, the summaries `pool acquire` and `pool resize` print, and the line
//! `vm show` gives a pooled VM.

use tfc_api::{
    AcquireResponse, AllocationStrategy, AutoscaleInfo, PoolInfo, PoolSlot, PoolTier, TierStats,
};

use super::{moment, utc};
use crate::table::{Align, Fields, Table};

/// `pool ls`: one row per VM type. Waiting tiers read `waiting/target`; the
/// latencies are the hot tier's, the tier a sized pool mostly serves from.
pub fn list(pools: &[PoolInfo]) -> String {
    let mut pools: Vec<&PoolInfo> = pools.iter().collect();
    pools.sort_by(|a, b| a.vm_type.cmp(&b.vm_type));
    let mut table = Table::new(&[
        ("TYPE", Align::Left),
        ("TIERS", Align::Left),
        ("RUNNING", Align::Right),
        ("HOT", Align::Right),
        ("STARTING", Align::Right),
        ("ACQUIRED", Align::Right),
        ("ACQUIRES", Align::Right),
        ("HIT%", Align::Right),
        ("HOT P50", Align::Right),
        ("HOT P99", Align::Right),
        ("STATUS", Align::Left),
    ]);
    for pool in pools {
        let hot = tier_stats(pool, PoolTier::Hot);
        table.push(vec![
            pool.vm_type.clone(),
            tiers(&pool.tiers, ","),
            format!("{}/{}", pool.sizes.running, pool.running),
            format!("{}/{}", pool.sizes.hot, pool.target),
            pool.sizes.starting.to_string(),
            pool.sizes.acquired.to_string(),
            pool.stats.acquires.to_string(),
            hit_percent(&pool.stats.tiers).unwrap_or_else(|| "-".to_owned()),
            latency(hot.and_then(|t| t.p50_ms)),
            latency(hot.and_then(|t| t.p99_ms)),
            status(pool),
        ]);
    }
    table.to_string()
}

/// `pool show`: the pool's configuration, where its VMs are, its counters,
/// then the acquires each tier served and how fast.
pub fn detail(pool: &PoolInfo, now_ms: u64) -> String {
    let mut fields = Fields::default();
    fields.push("type", pool.vm_type.as_str());
    fields.push("tiers", tiers(&pool.tiers, ", "));
    fields.push("strategy", strategy(pool.strategy));
    fields.push(
        "running",
        format!("{} waiting, target {}", pool.sizes.running, pool.running),
    );
    fields.push(
        "hot",
        format!(
            "{} waiting, target {} (min {}, max {})",
            pool.sizes.hot, pool.target, pool.min, pool.max
        ),
    );
    fields.push("starting", pool.sizes.starting.to_string());
    fields.push("replacing", pool.sizes.needs_maintenance.to_string());
    fields.push("acquired", pool.sizes.acquired.to_string());
    fields.push("prewarm", format!("{} at once", pool.prewarm_concurrency));
    fields.push("max age", format!("{} s", pool.max_age_secs));
    fields.push(
        "autoscale",
        pool.autoscale
            .as_ref()
            .map_or_else(|| "off".to_owned(), autoscale),
    );
    fields.push("template", pool.template.as_deref().unwrap_or("-"));
    if let Some(waiting_for) = &pool.waiting_for {
        fields.push("waiting for", waiting_for.as_str());
    }
    let stats = &pool.stats;
    fields.push(
        "acquires",
        format!(
            "{} ({} unserved, {} failed)",
            stats.acquires, stats.unserved, stats.failed
        ),
    );
    fields.push(
        "prewarmed",
        format!(
            "{} ({} failed, {} in a row)",
            stats.prewarmed, stats.prewarm_failures, stats.consecutive_failures
        ),
    );
    if let Some(failure) = &stats.last_failure {
        fields.push("last failure", failure.as_str());
    }
    if let Some(at) = stats.retry_at_ms {
        let wait = at.saturating_sub(now_ms);
        fields.push(
            "retry at",
            format!("{} (in {}.{} s)", utc(at), wait / 1000, wait % 1000 / 100),
        );
    }
    fields.push(
        "replaced",
        format!(
            "{} unhealthy, {} aged",
            stats.replaced_unhealthy, stats.replaced_aged
        ),
    );
    if let Some(replacement) = &stats.last_replacement {
        fields.push("last replaced", replacement.as_str());
    }
    fields.push(
        "autoscaled",
        format!("{} up, {} down", stats.scaled_up, stats.scaled_down),
    );
    format!("{fields}\n{}", served(&stats.tiers))
}

/// After `pool acquire`: the id alone on the first line (as `vm create`
/// prints it, for scripts), then the tier that served it and how fast.
pub fn acquired(answer: &AcquireResponse) -> String {
    let mut fields = Fields::default();
    fields.push("tier", answer.tier.as_str());
    fields.push("acquire", fine_ms(answer.acquire_us));
    format!("{}\n{fields}", answer.vm.id)
}

/// After `pool resize`: the new sizes; the pool fills or sheds VMs to them
/// in the background.
pub fn resized(pool: &PoolInfo) -> String {
    format!(
        "{}: running target {}, hot target {} (min {}, max {})\n",
        pool.vm_type, pool.running, pool.target, pool.min, pool.max
    )
}

/// A pooled VM's place, for `vm show`: `hot tier, acquired <when> in 1.23ms`
/// once handed out, `waiting in hot tier` before.
pub fn slot(slot: &PoolSlot, now_ms: u64) -> String {
    match slot.acquired_at_ms {
        Some(at) => {
            let mut line = format!("{} tier, acquired {}", slot.tier, moment(at, now_ms));
            if let Some(us) = slot.acquire_us {
                line.push_str(&format!(" in {}", fine_ms(us)));
            }
            line
        }
        None if slot.tier.is_prewarmed() => format!("waiting in {} tier", slot.tier),
        // Warm and cold VMs are made for one caller; they never wait.
        None => format!("starting for an acquire ({} tier)", slot.tier),
    }
}

/// Each tier that served an acquire: how many, its share, its latencies.
fn served(tiers: &[TierStats]) -> String {
    if tiers.is_empty() {
        return "served: no acquire yet\n".to_owned();
    }
    let mut table = Table::new(&[
        ("TIER", Align::Left),
        ("SERVED", Align::Right),
        ("HIT%", Align::Right),
        ("MIN", Align::Right),
        ("P50", Align::Right),
        ("P99", Align::Right),
        ("MAX", Align::Right),
    ]);
    let mut tiers: Vec<&TierStats> = tiers.iter().collect();
    tiers.sort_by_key(|t| t.tier);
    for t in tiers {
        table.push(vec![
            t.tier.to_string(),
            t.count.to_string(),
            percent(t.hit_rate),
            latency(t.min_ms),
            latency(t.p50_ms),
            latency(t.p99_ms),
            latency(t.max_ms),
        ]);
    }
    table.to_string()
}

fn tier_stats(pool: &PoolInfo, tier: PoolTier) -> Option<&TierStats> {
    pool.stats.tiers.iter().find(|t| t.tier == tier)
}

/// Share of the served acquires that a waiting VM served (running or hot
/// tier), or `None` before any was served.
fn hit_percent(tiers: &[TierStats]) -> Option<String> {
    let total: u64 = tiers.iter().map(|t| t.count).sum();
    let hits: u64 = tiers
        .iter()
        .filter(|t| t.tier.is_prewarmed())
        .map(|t| t.count)
        .sum();
    (total > 0).then(|| percent(hits as f64 / total as f64))
}

/// A share (0-1) as whole percent, rounded down so that 99.9% of hits does
/// not read as all of them. The nudge keeps a quotient such as 29/100, which
/// lands a hair below 0.29 in binary, at 29%.
fn percent(share: f64) -> String {
    format!("{}%", (share * 100.0 + 1e-9).floor().max(0.0) as u64)
}

fn latency(ms: Option<f64>) -> String {
    // Negative or NaN statistics cannot be measured; they print as 0.
    ms.map_or_else(
        || "-".to_owned(),
        |ms| fine_ms((ms * 1000.0).max(0.0) as u64),
    )
}

/// Microseconds as milliseconds with two decimals: `0.42ms`. Acquires from a
/// waiting tier take well under a millisecond, where the one decimal of
/// boot times would print 0.0ms.
fn fine_ms(us: u64) -> String {
    format!("{}.{:02}ms", us / 1000, us % 1000 / 10)
}

fn tiers(tiers: &[PoolTier], separator: &str) -> String {
    let names: Vec<&str> = tiers.iter().map(|t| t.as_str()).collect();
    names.join(separator)
}

/// Why the pool is short, if it is: what it waits for, else its last failure.
fn status(pool: &PoolInfo) -> String {
    pool.waiting_for
        .clone()
        .or_else(|| pool.stats.last_failure.clone())
        .unwrap_or_else(|| "ok".to_owned())
}

fn autoscale(a: &AutoscaleInfo) -> String {
    format!(
        "up at {} use, down at {}, every {} s, step {}",
        percent(a.up_threshold),
        percent(a.down_threshold),
        a.window_secs,
        a.step
    )
}

fn strategy(strategy: AllocationStrategy) -> &'static str {
    match strategy {
        AllocationStrategy::FirstAvailable => "first_available",
        AllocationStrategy::BestPerformance => "best_performance",
        AllocationStrategy::LeastRecentlyUsed => "least_recently_used",
        AllocationStrategy::RoundRobin => "round_robin",
        AllocationStrategy::WeightedRandom => "weighted_random",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use tfc_api::{PoolSizes, PoolStats};

    use super::*;

    const NOW_MS: u64 = 1_700_000_000_000;

    fn tier(
        tier: PoolTier,
        count: u64,
        hit_rate: f64,
        [min, p50, p99, max]: [f64; 4],
    ) -> TierStats {
        TierStats {
            tier,
            count,
            hit_rate,
            min_ms: Some(min),
            p50_ms: Some(p50),
            p99_ms: Some(p99),
            max_ms: Some(max),
        }
    }

    /// A busy pool: one running and three hot VMs waiting, ten acquires
    /// served (eight hot, two warm), one refused.
    pub(crate) fn pool() -> PoolInfo {
        PoolInfo {
            vm_type: "small".to_owned(),
            tiers: PoolTier::ALL.to_vec(),
            strategy: AllocationStrategy::FirstAvailable,
            target: 4,
            min: 0,
            max: 8,
            running: 1,
            prewarm_concurrency: 2,
            max_age_secs: 3600,
            autoscale: None,
            template: Some("snap-0123456789ab".to_owned()),
            waiting_for: None,
            sizes: PoolSizes {
                running: 1,
                hot: 3,
                starting: 1,
                needs_maintenance: 0,
                acquired: 2,
            },
            stats: PoolStats {
                acquires: 11,
                unserved: 1,
                failed: 0,
                tiers: vec![
                    tier(PoolTier::Warm, 2, 0.2, [9.5, 10.2, 12.0, 12.0]),
                    tier(PoolTier::Hot, 8, 0.8, [0.41, 0.623, 1.9, 2.05]),
                ],
                prewarmed: 12,
                prewarm_failures: 1,
                consecutive_failures: 0,
                last_failure: None,
                retry_at_ms: None,
                replaced_unhealthy: 1,
                replaced_aged: 2,
                last_replacement: Some(
                    "VM vm-0123456789ab: older than max_age_secs (3600)".to_owned(),
                ),
                scaled_up: 0,
                scaled_down: 0,
            },
        }
    }

    /// A hot-only pool that has never had a template, backing off.
    fn starved() -> PoolInfo {
        let mut pool = pool();
        pool.vm_type = "gpu".to_owned();
        pool.tiers = vec![PoolTier::Hot];
        pool.strategy = AllocationStrategy::BestPerformance;
        pool.running = 0;
        pool.template = None;
        pool.waiting_for = Some("the template: there is no template yet".to_owned());
        pool.autoscale = Some(AutoscaleInfo {
            up_threshold: 0.75,
            down_threshold: 0.25,
            window_secs: 60,
            step: 2,
        });
        pool.sizes = PoolSizes::default();
        pool.stats = PoolStats {
            acquires: 3,
            unserved: 3,
            prewarm_failures: 4,
            consecutive_failures: 4,
            last_failure: Some("restoring the snapshot failed".to_owned()),
            retry_at_ms: Some(NOW_MS + 3_250),
            scaled_up: 1,
            ..PoolStats::default()
        };
        pool
    }

    #[test]
    fn list_has_a_row_per_type_with_waiting_over_target() {
        let mut failing = pool();
        failing.vm_type = "big".to_owned();
        failing.stats.last_failure = Some("VM vm-1: guest stopped answering".to_owned());
        assert_eq!(
            list(&[pool(), starved(), failing]),
            "TYPE   TIERS                  RUNNING  HOT  STARTING  ACQUIRED  ACQUIRES  HIT%  HOT P50  HOT P99  STATUS\n\
             big    running,hot,warm,cold      1/1  3/4         1         2        11   80%   0.62ms   1.90ms  VM vm-1: guest stopped answering\n\
             gpu    hot                        0/0  0/4         0         0         3     -        -        -  the template: there is no template yet\n\
             small  running,hot,warm,cold      1/1  3/4         1         2        11   80%   0.62ms   1.90ms  ok\n"
        );
        assert_eq!(
            list(&[]),
            "TYPE  TIERS  RUNNING  HOT  STARTING  ACQUIRED  ACQUIRES  HIT%  HOT P50  HOT P99  STATUS\n"
        );
    }

    #[test]
    fn detail_shows_sizes_counters_and_latency_per_tier() {
        assert_eq!(
            detail(&pool(), NOW_MS),
            "type:          small\n\
             tiers:         running, hot, warm, cold\n\
             strategy:      first_available\n\
             running:       1 waiting, target 1\n\
             hot:           3 waiting, target 4 (min 0, max 8)\n\
             starting:      1\n\
             replacing:     0\n\
             acquired:      2\n\
             prewarm:       2 at once\n\
             max age:       3600 s\n\
             autoscale:     off\n\
             template:      snap-0123456789ab\n\
             acquires:      11 (1 unserved, 0 failed)\n\
             prewarmed:     12 (1 failed, 0 in a row)\n\
             replaced:      1 unhealthy, 2 aged\n\
             last replaced: VM vm-0123456789ab: older than max_age_secs (3600)\n\
             autoscaled:    0 up, 0 down\n\
             \n\
             TIER  SERVED  HIT%     MIN      P50      P99      MAX\n\
             hot        8   80%  0.41ms   0.62ms   1.90ms   2.05ms\n\
             warm       2   20%  9.50ms  10.20ms  12.00ms  12.00ms\n"
        );
    }

    #[test]
    fn detail_of_a_starved_pool_says_what_it_waits_for_and_when_it_retries() {
        let text = detail(&starved(), NOW_MS);
        for line in [
            "tiers:        hot\n",
            "strategy:     best_performance\n",
            "autoscale:    up at 75% use, down at 25%, every 60 s, step 2\n",
            "template:     -\n",
            "waiting for:  the template: there is no template yet\n",
            "acquires:     3 (3 unserved, 0 failed)\n",
            "prewarmed:    0 (4 failed, 4 in a row)\n",
            "last failure: restoring the snapshot failed\n",
            "retry at:     2023-11-14 22:13:23 UTC (in 3.2 s)\n",
            "autoscaled:   1 up, 0 down\n",
            "\nserved: no acquire yet\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }

    #[test]
    fn a_pooled_vm_says_where_it_waits_or_when_it_was_acquired() {
        let acquired = PoolSlot {
            tier: PoolTier::Hot,
            acquired_at_ms: Some(NOW_MS - 90_000),
            acquire_us: Some(1_234),
        };
        assert_eq!(
            slot(&acquired, NOW_MS),
            "hot tier, acquired 2023-11-14 22:11:50 UTC (1m ago) in 1.23ms"
        );
        let waiting = PoolSlot {
            tier: PoolTier::Running,
            acquired_at_ms: None,
            acquire_us: None,
        };
        assert_eq!(slot(&waiting, NOW_MS), "waiting in running tier");
        let cold = PoolSlot {
            tier: PoolTier::Cold,
            ..waiting
        };
        assert_eq!(slot(&cold, NOW_MS), "starting for an acquire (cold tier)");
    }

    #[test]
    fn hit_rates_count_waiting_tiers_and_round_down() {
        assert_eq!(hit_percent(&[]), None);
        let served = |t, count| tier(t, count, 0.0, [0.0; 4]);
        assert_eq!(
            hit_percent(&[
                served(PoolTier::Running, 20),
                served(PoolTier::Hot, 9),
                served(PoolTier::Cold, 71)
            ]),
            Some("29%".to_owned())
        );
        assert_eq!(
            hit_percent(&[served(PoolTier::Hot, 999), served(PoolTier::Warm, 1)]),
            Some("99%".to_owned())
        );
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(0.0), "0%");
    }

    #[test]
    fn acquire_times_keep_two_decimals() {
        assert_eq!(fine_ms(0), "0.00ms");
        assert_eq!(fine_ms(87), "0.08ms");
        assert_eq!(fine_ms(1_239), "1.23ms");
        assert_eq!(latency(Some(10.199)), "10.19ms");
        assert_eq!(latency(Some(f64::NAN)), "0.00ms");
        assert_eq!(latency(None), "-");
    }
}
