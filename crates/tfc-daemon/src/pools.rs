//! Pools of prewarmed VMs, one per VM type: VMs restored from the type's
//! template wait in the `running` tier (left running) or the `hot` tier (left
//! paused), and an acquire hands one out, falling back to restoring the
//! template (`warm`) or booting (`cold`) as the pool's configuration allows.
//!
//! Each pool has one task that keeps it at its targets (refills after every
//! acquire, a bounded number of restores at once, exponential back-off after
//! failures), checks its waiting VMs (process, VMM state, guest kernel),
//! replaces the ones that fail or grow too old, and scales the hot target with
//! demand. Acquires run on the caller's task.
//!
//! Invariants, kept under each pool's lock: a VM is in `waiting` only while
//! nobody has it; taking it out of `waiting` is the one way to hand it out,
//! so no VM is handed out twice; `starting` counts restores under way, so a
//! refill never starts more than `prewarm_concurrency` at once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tfc_api::{AutoscaleInfo, PoolInfo, PoolSizes, PoolStats, StartInfo, TierStats, VmInfo};
use tfc_core::allocation::{AllocationStrategy, Allocator, Candidate};
use tfc_core::pool::{self as decide, AutoscalePolicy, DemandWindow};
use tfc_core::{OptimizationLevel, PoolTier, StartMethod, VmId};
use tokio::sync::{watch, Notify};

use crate::config::{Config, PoolConfig};
use crate::manager::{BootExtras, ManagerError, RestoreFor, VmManager};
use crate::vm::{VmHandle, HANDOVER_SETTLE};

/// Acquire latencies kept per tier for the stats.
const LATENCY_SAMPLES: usize = 1000;
/// First back-off after a failed refill; doubles per failure.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Longest a hand-over of a waiting VM may take beyond the acquire's wait.
const HANDOVER_LIMIT: Duration = Duration::from_secs(1);
/// Longest wait an acquire may ask for (as `acquire_timeout_ms` allows).
pub const MAX_WAIT_MS: u64 = 600_000;
/// With no boot measured yet, the least time left for the cold tier to try.
const UNMEASURED_BOOT_FLOOR: Duration = Duration::from_secs(1);
/// How often a pool waiting for its template looks again.
const TEMPLATE_POLL: Duration = Duration::from_secs(1);

/// Every VM type's pool.
#[derive(Debug)]
pub struct Pools {
    by_type: BTreeMap<String, Arc<Pool>>,
}

#[derive(Debug)]
struct Pool {
    vm_type: String,
    /// The VMM of the type's VMs; one that takes no snapshots has no
    /// template, so its pool never prewarms (configuration and resizes keep
    /// its targets at 0).
    vmm: tfc_core::Vmm,
    config: PoolConfig,
    state: Mutex<PoolState>,
    /// Wakes the pool's task: a VM was taken, the sizes changed, the template
    /// was built.
    wake: Notify,
    /// Counts VMs that joined `waiting`; acquires waiting for one watch it.
    joined: watch::Sender<u64>,
    /// Restores for acquires (the warm tier) under way at once.
    on_demand: Arc<tokio::sync::Semaphore>,
}

/// A VM waiting in the pool.
#[derive(Debug)]
struct Member {
    handle: VmHandle,
    tier: PoolTier,
    /// When it joined (the pool's clock, for its age).
    since: tokio::time::Instant,
    since_ms: u64,
    slot: u32,
    /// When the slot's previous VM was handed out, if ever.
    slot_used_ms: Option<u64>,
    /// Its restore took this long (BestPerformance prefers the fastest).
    restore_us: Option<u64>,
    /// The template it was restored from.
    template: Option<String>,
}

#[derive(Debug)]
struct PoolState {
    target: u32,
    min: u32,
    max: u32,
    running: u32,
    allocator: Allocator,
    waiting: Vec<Member>,
    starting_running: u32,
    starting_hot: u32,
    /// Taken out of `waiting` to be replaced, not yet removed.
    retiring: u32,
    /// Slots free for a new member, with when their last VM was handed out.
    free_slots: Vec<(u32, Option<u64>)>,
    next_slot: u32,
    stats: PoolStats,
    served: BTreeMap<PoolTier, (u64, VecDeque<f64>)>,
    retry_at: Option<tokio::time::Instant>,
    window: DemandWindow,
    /// Why the pool cannot prewarm now.
    waiting_for: Option<String>,
    template: Option<String>,
    closed: bool,
}

impl Pools {
    pub fn new(daemon: &Config) -> Self {
        let by_type = daemon
            .vm_types
            .iter()
            .map(|(name, vm_type)| {
                let config = vm_type.pool.clone();
                let state = PoolState {
                    target: config.target,
                    min: config.min,
                    max: config.max,
                    running: config.running,
                    allocator: Allocator::new(config.strategy),
                    waiting: Vec::new(),
                    starting_running: 0,
                    starting_hot: 0,
                    retiring: 0,
                    free_slots: Vec::new(),
                    next_slot: 0,
                    stats: PoolStats::default(),
                    served: BTreeMap::new(),
                    retry_at: None,
                    window: DemandWindow::default(),
                    waiting_for: None,
                    template: None,
                    closed: false,
                };
                let on_demand = Arc::new(tokio::sync::Semaphore::new(
                    config.prewarm_concurrency as usize,
                ));
                let pool = Pool {
                    on_demand,
                    vm_type: name.clone(),
                    vmm: daemon.vmm_of(vm_type),
                    config,
                    state: Mutex::new(state),
                    wake: Notify::new(),
                    joined: watch::channel(0).0,
                };
                (name.clone(), Arc::new(pool))
            })
            .collect();
        Self { by_type }
    }

    fn pool(&self, vm_type: &str) -> Result<&Arc<Pool>, ManagerError> {
        self.by_type
            .get(vm_type)
            .ok_or_else(|| ManagerError::UnknownType {
                name: vm_type.to_owned(),
                known: self.by_type.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    pub fn contains(&self, vm_type: &str) -> bool {
        self.by_type.contains_key(vm_type)
    }

    /// Starts every pool's task (once the daemon serves).
    pub fn start(&self, manager: &VmManager) {
        for pool in self.by_type.values() {
            tokio::spawn(run(manager.clone(), pool.clone()));
        }
    }

    /// Wakes the task of `vm_type`'s pool.
    pub fn wake(&self, vm_type: &str) {
        if let Some(pool) = self.by_type.get(vm_type) {
            pool.wake.notify_one();
        }
    }

    /// Stops every pool's task; the manager removes their waiting VMs.
    pub fn close(&self) {
        for pool in self.by_type.values() {
            pool.lock().closed = true;
            pool.wake.notify_one();
        }
    }

    /// Every pool's status.
    pub fn list(&self, manager: &VmManager) -> Vec<PoolInfo> {
        let vms = manager.list();
        self.by_type.values().map(|pool| pool.info(&vms)).collect()
    }

    pub fn info(&self, manager: &VmManager, vm_type: &str) -> Result<PoolInfo, ManagerError> {
        Ok(self.pool(vm_type)?.info(&manager.list()))
    }

    /// Sets new sizes (omitted ones stay); a smaller pool sheds its extra VMs,
    /// a larger one fills.
    pub fn resize(
        &self,
        manager: &VmManager,
        vm_type: &str,
        request: &tfc_api::ResizePoolRequest,
    ) -> Result<PoolInfo, ManagerError> {
        let pool = self.pool(vm_type)?;
        {
            let mut state = pool.lock();
            let min = request.min.unwrap_or(state.min);
            let max = request.max.unwrap_or(state.max);
            let target = request.target.unwrap_or(state.target);
            let running = request.running.unwrap_or(state.running);
            if (target > 0 || running > 0) && !pool.vmm.takes_snapshots() {
                return Err(crate::manager::no_snapshots(
                    pool.vmm,
                    format!("keep VMs of type {vm_type} waiting in its pool (they are restored from its template, a snapshot)"),
                    "snapshots",
                ));
            }
            crate::config::check_sizes(min, target, max, running, &pool.config.tiers).map_err(
                |(field, reason)| ManagerError::BadRequest(format!("{field}: {reason}")),
            )?;
            state.min = min;
            state.max = max;
            state.target = target;
            state.running = running;
        }
        tracing::info!(vm_type, ?request, "pool resized");
        pool.wake.notify_one();
        Ok(pool.info(&manager.list()))
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().expect("pool lock")
    }

    /// Wakes the pool's task `delay` from now.
    fn wake_after(self: &Arc<Self>, delay: Duration) {
        let pool = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            pool.wake.notify_one();
        });
    }

    fn allows(&self, tier: PoolTier) -> bool {
        self.config.tiers.contains(&tier)
    }

    fn info(&self, vms: &[VmInfo]) -> PoolInfo {
        let state = self.lock();
        let count = |tier| state.waiting.iter().filter(|m| m.tier == tier).count() as u32;
        let acquired = vms
            .iter()
            .filter(|vm| {
                vm.spec.vm_type.as_str() == self.vm_type
                    && !vm.state.is_terminal()
                    && vm.pool.as_ref().is_some_and(|s| s.acquired_at_ms.is_some())
            })
            .count() as u32;
        let total: u64 = state.served.values().map(|(n, _)| n).sum();
        let mut stats = state.stats.clone();
        stats.tiers = state
            .served
            .iter()
            .map(|(tier, (n, samples))| {
                let mut ms: Vec<f64> = samples.iter().copied().collect();
                ms.sort_by(f64::total_cmp);
                TierStats {
                    tier: *tier,
                    count: *n,
                    hit_rate: if total == 0 {
                        0.0
                    } else {
                        *n as f64 / total as f64
                    },
                    min_ms: ms.first().copied(),
                    p50_ms: decide::percentile(&ms, 50.0),
                    p99_ms: decide::percentile(&ms, 99.0),
                    max_ms: ms.last().copied(),
                }
            })
            .collect();
        stats.retry_at_ms = state.retry_at.map(|at| {
            let left = at.saturating_duration_since(tokio::time::Instant::now());
            crate::vm::now_ms() + left.as_millis() as u64
        });
        let mut tiers = self.config.tiers.clone();
        tiers.sort();
        PoolInfo {
            vm_type: self.vm_type.clone(),
            tiers,
            strategy: self.config.strategy,
            target: state.target,
            min: state.min,
            max: state.max,
            running: state.running,
            prewarm_concurrency: self.config.prewarm_concurrency,
            max_age_secs: self.config.max_age_secs,
            autoscale: self.config.autoscale.as_ref().map(|a| AutoscaleInfo {
                up_threshold: a.up_threshold,
                down_threshold: a.down_threshold,
                window_secs: a.window_secs,
                step: a.step,
            }),
            template: state.template.clone(),
            waiting_for: state.waiting_for.clone(),
            sizes: PoolSizes {
                running: count(PoolTier::Running),
                hot: count(PoolTier::Hot),
                starting: state.starting_running + state.starting_hot,
                needs_maintenance: state.retiring,
                acquired,
            },
            stats,
        }
    }

    /// Takes the VM the strategy picks among those waiting in `tier`, if any.
    fn take(&self, tier: PoolTier) -> Option<Member> {
        let mut state = self.lock();
        if state.closed {
            return None;
        }
        let indices: Vec<usize> = (0..state.waiting.len())
            .filter(|&i| state.waiting[i].tier == tier)
            .collect();
        let candidates: Vec<Candidate> = indices
            .iter()
            .map(|&i| {
                let m = &state.waiting[i];
                Candidate {
                    id: m.handle.id().to_string(),
                    ready_since_ms: m.since_ms,
                    last_used_ms: m.slot_used_ms,
                    resume_latency_us: m.restore_us,
                    // Faster restores weigh more: 1 per 10 ms, at least 1.
                    weight: m
                        .restore_us
                        .map_or(1, |us| (100_000 / us.max(1)).clamp(1, 100) as u32),
                }
            })
            .collect();
        // Only the weighted strategy reads the random number: no system
        // call on the hand-out path for the others.
        let mut random = [0u8; 8];
        if state.allocator.strategy() == AllocationStrategy::WeightedRandom {
            let _ = getrandom::getrandom(&mut random);
        }
        let picked = state
            .allocator
            .pick(&candidates, u64::from_le_bytes(random))?;
        let member = state.waiting.swap_remove(indices[picked]);
        // The slot is free again, last used now.
        state
            .free_slots
            .push((member.slot, Some(crate::vm::now_ms())));
        if tier == PoolTier::Hot {
            let waiting_hot = state
                .waiting
                .iter()
                .filter(|m| m.tier == PoolTier::Hot)
                .count() as u32;
            let in_use = state.target.saturating_sub(waiting_hot);
            state.window.peak_in_use = state.window.peak_in_use.max(in_use);
        }
        Some(member)
    }

    /// Counts a tier's attempt to serve that failed (not one that was
    /// skipped or ran out of time).
    fn failed(&self) {
        self.lock().stats.failed += 1;
    }

    fn served(&self, tier: PoolTier, us: u64) {
        let mut state = self.lock();
        let (count, samples) = state.served.entry(tier).or_default();
        *count += 1;
        if samples.len() == LATENCY_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(us as f64 / 1000.0);
    }

    /// A slot for a new member, and when the slot's last VM was handed out:
    /// the free slot used longest ago (never used first), else a new one.
    fn slot(state: &mut PoolState) -> (u32, Option<u64>) {
        let best = state
            .free_slots
            .iter()
            .enumerate()
            .min_by_key(|(_, (slot, used))| (used.is_some(), *used, *slot))
            .map(|(i, _)| i);
        match best {
            Some(i) => state.free_slots.swap_remove(i),
            None => {
                state.next_slot += 1;
                (state.next_slot - 1, None)
            }
        }
    }

    /// Why acquires may want to retry later, in whole seconds (at least 1).
    fn retry_after_secs(&self) -> u64 {
        let state = self.lock();
        state.retry_at.map_or(1, |at| {
            at.saturating_duration_since(tokio::time::Instant::now())
                .as_secs()
                .max(1)
        })
    }

    /// Whether a VM may join before `deadline`: restores are under way, or
    /// the pool wants VMs and is neither waiting for its template nor
    /// backing off past the deadline.
    fn prewarming(&self, deadline: tokio::time::Instant) -> bool {
        let state = self.lock();
        let starting = state.starting_hot + state.starting_running > 0;
        let wants = state.target + state.running > 0
            && state.waiting_for.is_none()
            && state.retry_at.is_none_or(|at| at < deadline);
        !state.closed && (starting || wants)
    }
}

/// Hands out a VM of `vm_type`: a waiting one (running, then hot tier, by the
/// pool's strategy), else a restore of the template (warm), else a boot
/// (cold), as the pool's tiers allow and within `wait_ms` (the pool's
/// `acquire_timeout_ms` when `None`). When nothing can serve in time the
/// answer is [`ManagerError::PoolExhausted`], never a hang. Returns the VM
/// (running, the caller's), the tier that served it and the time taken.
pub(crate) async fn acquire(
    manager: &VmManager,
    vm_type: &str,
    wait_ms: Option<u64>,
    requested_at: Instant,
) -> Result<(VmInfo, PoolTier, u64), ManagerError> {
    let pool = manager.pools().pool(vm_type)?.clone();
    let wait_ms = wait_ms.unwrap_or(pool.config.acquire_timeout_ms);
    if wait_ms > MAX_WAIT_MS {
        return Err(ManagerError::BadRequest(format!(
            "a wait of {wait_ms} ms is longer than the {MAX_WAIT_MS} ms an acquire may wait"
        )));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    pool.lock().stats.acquires += 1;
    let mut joined = pool.joined.subscribe();
    let mut reasons: Vec<String> = Vec::new();
    let mut tried_on_demand = false;
    let mut missed = false;
    loop {
        for tier in [PoolTier::Running, PoolTier::Hot] {
            if !pool.allows(tier) {
                continue;
            }
            // A waiting VM is taken even with no wait left (it is there now);
            // after a failed hand-over, the next only while time is left.
            while let Some(member) = pool.take(tier) {
                // The refill starts once the VM is handed over and the answer
                // is out: a restore spawned meanwhile would compete with the
                // resume, then the answer, for CPU.
                let allocated = hand_over(manager, &pool, member, requested_at, deadline).await;
                if let Some(vm) = allocated {
                    pool.wake_after(HANDOVER_SETTLE);
                    return Ok(served(&pool, vm, tier, requested_at));
                }
                pool.wake.notify_one();
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
        }
        if !missed {
            missed = true;
            pool.lock().window.misses += 1;
        }
        if !tried_on_demand {
            tried_on_demand = true;
            if pool.allows(PoolTier::Warm) {
                match warm(manager, vm_type, &pool, requested_at, deadline).await {
                    Ok(vm) => return Ok(served(&pool, vm, PoolTier::Warm, requested_at)),
                    Err(reason) => reasons.push(format!("warm: {reason}")),
                }
            }
            if pool.allows(PoolTier::Cold) {
                match cold(manager, vm_type, &pool, requested_at, deadline).await {
                    Ok(vm) => return Ok(served(&pool, vm, PoolTier::Cold, requested_at)),
                    Err(reason) => reasons.push(format!("cold: {reason}")),
                }
            }
        }
        // Wait for a VM to join the pool, as long as the budget lasts and
        // the pool is filling.
        let prewarmed = pool.allows(PoolTier::Running) || pool.allows(PoolTier::Hot);
        if !prewarmed || !pool.prewarming(deadline) || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            _ = joined.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
        if tokio::time::Instant::now() >= deadline && pool.lock().waiting.is_empty() {
            break;
        }
    }
    if pool.allows(PoolTier::Running) || pool.allows(PoolTier::Hot) {
        let state = pool.lock();
        let why = state.waiting_for.clone().unwrap_or_else(|| {
            format!(
                "no prewarmed VM waiting ({} starting)",
                state.starting_hot + state.starting_running
            )
        });
        reasons.insert(0, why);
    }
    pool.lock().stats.unserved += 1;
    Err(ManagerError::PoolExhausted {
        vm_type: vm_type.to_owned(),
        wait_ms,
        reason: reasons.join("; "),
        retry_after_secs: pool.retry_after_secs(),
    })
}

/// Hands `member` to the caller. The wait budget bounds the search for a
/// VM, not a hand-over once begun (a resume and a record write, a few
/// milliseconds; cutting it short would waste a good VM): that is bounded by
/// [`HANDOVER_LIMIT`], past which the VMM counts as wedged. A VM that cannot
/// be handed out is replaced; one handed out too late belongs to nobody and
/// is removed once its owner has finished (the owner, not this future,
/// carries the hand-over out).
async fn hand_over(
    manager: &VmManager,
    pool: &Arc<Pool>,
    member: Member,
    requested_at: Instant,
    deadline: tokio::time::Instant,
) -> Option<VmInfo> {
    let id = member.handle.id().clone();
    let limit = deadline.max(tokio::time::Instant::now() + HANDOVER_LIMIT);
    // Dropping the hand-over when it takes too long does not stop it: its
    // owner finishes it, then takes the retirement queued after it.
    match tokio::time::timeout_at(limit, member.handle.allocate(requested_at)).await {
        Ok(Ok(vm)) => Some(vm),
        Ok(Err(err)) => {
            pool.failed();
            tracing::warn!(vm = %id, error = %tfc_core::error_chain(&err), "pooled VM could not be handed out; replacing it");
            retire(manager, pool, id, false);
            None
        }
        Err(_) => {
            tracing::warn!(vm = %id, "pooled VM not handed out in time; replacing it");
            retire(manager, pool, id, false);
            None
        }
    }
}

fn served(
    pool: &Pool,
    vm: VmInfo,
    tier: PoolTier,
    requested_at: Instant,
) -> (VmInfo, PoolTier, u64) {
    // One figure: the VM's record holds the time its owner answered.
    let us = vm
        .pool
        .as_ref()
        .and_then(|s| s.acquire_us)
        .unwrap_or_else(|| requested_at.elapsed().as_micros() as u64);
    pool.served(tier, us);
    tracing::debug!(vm = %vm.id, %tier, us, "VM handed out");
    (vm, tier, us)
}

/// How a pool's VM was started: `pool` for the tiers that wait, the method
/// that made it for the tiers that serve on demand (so measured start times
/// per method stay true).
fn start_info(tier: PoolTier, snapshot: Option<&str>, note: &str) -> StartInfo {
    StartInfo {
        level: OptimizationLevel::Instant,
        method: match tier {
            PoolTier::Running | PoolTier::Hot => StartMethod::Pool,
            PoolTier::Warm => StartMethod::Restore,
            PoolTier::Cold => StartMethod::ColdBoot,
        },
        snapshot: snapshot.map(str::to_owned),
        note: Some(format!("{tier} tier: {note}")),
    }
}

/// The warm tier: a restore of the template for this caller.
async fn warm(
    manager: &VmManager,
    vm_type: &str,
    pool: &Pool,
    requested_at: Instant,
    deadline: tokio::time::Instant,
) -> Result<VmInfo, String> {
    if tokio::time::Instant::now() >= deadline {
        return Err("no time left for a restore".to_owned());
    }
    let template = manager.pool_template(vm_type).await?;
    let start = start_info(
        PoolTier::Warm,
        Some(&template),
        "restored from the template on demand",
    );
    // Restores on demand are bounded like the pool's own: a burst of
    // acquires cannot start a VMM each.
    let slot = tokio::time::timeout_at(deadline, pool.on_demand.clone().acquire_owned())
        .await
        .map_err(|_| "every restore slot stayed busy".to_owned())?
        .map_err(|_| "the daemon is shutting down".to_owned())?;
    // On its own task: a restore is never cut short between its steps. One
    // that outlives the wait finishes, belongs to nobody, and is removed.
    let mut restore = tokio::spawn({
        let manager = manager.clone();
        async move {
            let _slot = slot;
            // The VM's own timeline starts now; the acquire's time is kept
            // apart for its `acquire_us`.
            manager
                .restore(
                    &template,
                    start,
                    Instant::now(),
                    RestoreFor::Acquire(PoolTier::Warm, requested_at),
                )
                .await
        }
    });
    match tokio::time::timeout_at(deadline, &mut restore).await {
        Ok(done) => done.expect("restores do not panic").map_err(|e| {
            pool.failed();
            tfc_core::error_chain(&e)
        }),
        Err(_) => {
            let manager = manager.clone();
            tokio::spawn(async move {
                if let Ok(Ok(vm)) = restore.await {
                    if let Err(err) = manager.delete(&vm.id, true).await {
                        tracing::warn!(vm = %vm.id, error = %tfc_core::error_chain(&err), "cannot remove a VM restored too late for its acquire");
                    }
                }
            });
            Err("the restore did not finish within the wait".to_owned())
        }
    }
}

/// The cold tier: a boot for this caller, when one can finish in time.
async fn cold(
    manager: &VmManager,
    vm_type: &str,
    pool: &Pool,
    requested_at: Instant,
    deadline: tokio::time::Instant,
) -> Result<VmInfo, String> {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let expected = manager
        .start_stats(vm_type)
        .into_iter()
        .find(|s| s.method == StartMethod::ColdBoot)
        .map(|s| s.median_ms);
    match expected {
        Some(ms) if ms > left.as_millis() as f64 => {
            return Err(format!(
                "a boot takes {ms:.0} ms here (median), more than the {} ms left",
                left.as_millis()
            ));
        }
        None if left < UNMEASURED_BOOT_FLOOR => {
            return Err(format!(
                "boots are not measured here yet, and {} ms is too short to try one",
                left.as_millis()
            ));
        }
        _ => {}
    }
    let _slot = tokio::time::timeout(left, manager.boot_slots().acquire())
        .await
        .map_err(|_| "every boot slot stayed busy".to_owned())?
        .map_err(|_| "the daemon is shutting down".to_owned())?;
    let request = tfc_api::CreateVmRequest {
        vm_type: Some(vm_type.to_owned()),
        wait: true,
        wait_timeout_ms: Some(
            deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .as_millis() as u64,
        ),
        ..Default::default()
    };
    let spec = manager
        .resolve_spec(&request)
        .map_err(|e| tfc_core::error_chain(&e))?;
    let start = start_info(PoolTier::Cold, None, "booted on demand");
    let extras = BootExtras {
        template_build: false,
        pool: Some(tfc_api::PoolSlot {
            tier: PoolTier::Cold,
            acquired_at_ms: None,
            acquire_us: None,
        }),
    };
    // The VM's own timeline starts now (its start time is a boot's, for the
    // statistics); the acquire's time is kept for `acquire_us`.
    let vm = manager
        .boot(&request, spec, start, Instant::now(), extras)
        .await
        .map_err(|e| {
            pool.failed();
            tfc_core::error_chain(&e)
        })?;
    let outcome = if vm.state == tfc_core::VmState::Ready {
        match manager.op_allocate(&vm.id, requested_at).await {
            Ok(vm) => return Ok(vm),
            Err(err) => {
                pool.failed();
                tfc_core::error_chain(&err)
            }
        }
    } else if let Some(failure) = &vm.failure {
        pool.failed();
        format!("the boot failed: {failure}")
    } else {
        "the boot did not finish within the wait".to_owned()
    };
    // Removed in the background: the caller's answer does not wait for it.
    let manager = manager.clone();
    tokio::spawn(async move {
        if let Err(err) = manager.delete(&vm.id, true).await {
            tracing::warn!(vm = %vm.id, error = %tfc_core::error_chain(&err), "cannot remove an unused cold-tier VM");
        }
    });
    Err(outcome)
}

/// Removes a VM that left the pool without being handed out; the pool's task
/// replaces it.
fn retire(manager: &VmManager, pool: &Arc<Pool>, id: VmId, aged: bool) {
    {
        let mut state = pool.lock();
        state.retiring += 1;
        if aged {
            state.stats.replaced_aged += 1;
        } else {
            state.stats.replaced_unhealthy += 1;
        }
    }
    let (manager, pool) = (manager.clone(), pool.clone());
    tokio::spawn(async move {
        if let Err(err) = manager.delete(id.as_str(), true).await {
            tracing::warn!(vm = %id, error = %tfc_core::error_chain(&err), "cannot remove a retired pooled VM");
        }
        pool.lock().retiring -= 1;
        pool.wake.notify_one();
    });
}

/// A pool's task: refill, health checks, autoscaling, until the pool closes.
async fn run(manager: VmManager, pool: Arc<Pool>) {
    let now = tokio::time::Instant::now();
    let health_every = Duration::from_millis(pool.config.health_interval_ms);
    let window = pool
        .config
        .autoscale
        .as_ref()
        .map(|a| Duration::from_secs(a.window_secs));
    let mut next_health = now + health_every;
    let mut window_end = window.map(|w| now + w);
    // Checks run on their own task, so a slow guest never holds up a
    // refill; one round at a time.
    let mut checks: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        if pool.lock().closed {
            return;
        }
        refill(&manager, &pool).await;
        let now = tokio::time::Instant::now();
        if now >= next_health && checks.as_ref().is_none_or(|c| c.is_finished()) {
            checks = Some(tokio::spawn({
                let (manager, pool) = (manager.clone(), pool.clone());
                async move { maintain(&manager, &pool).await }
            }));
            next_health = now + health_every;
        }
        if let (Some(end), Some(window)) = (window_end, window) {
            if now >= end {
                autoscale(&pool);
                window_end = Some(now + window);
            }
        }
        let mut wake_at = next_health;
        if let Some(end) = window_end {
            wake_at = wake_at.min(end);
        }
        {
            let state = pool.lock();
            if let Some(at) = state.retry_at {
                wake_at = wake_at.min(at);
            }
            if state.waiting_for.is_some() {
                wake_at = wake_at.min(now + TEMPLATE_POLL);
            }
        }
        tokio::select! {
            _ = pool.wake.notified() => {}
            _ = tokio::time::sleep_until(wake_at) => {}
        }
    }
}

/// Brings the waiting tiers to their targets: sheds VMs above a target,
/// starts restores for the missing ones (at most `prewarm_concurrency` under
/// way), unless backing off after failures.
async fn refill(manager: &VmManager, pool: &Arc<Pool>) {
    let now = tokio::time::Instant::now();
    let (excess, want_running, want_hot) = {
        let mut state = pool.lock();
        if state.closed {
            return;
        }
        let mut excess = Vec::new();
        for (tier, target) in [
            (PoolTier::Running, state.running),
            (PoolTier::Hot, state.target),
        ] {
            loop {
                let of_tier: Vec<usize> = (0..state.waiting.len())
                    .filter(|&i| state.waiting[i].tier == tier)
                    .collect();
                if of_tier.len() as u32 <= target {
                    break;
                }
                // The oldest goes first.
                let oldest = *of_tier
                    .iter()
                    .min_by_key(|&&i| state.waiting[i].since)
                    .expect("more than target, so not empty");
                let member = state.waiting.swap_remove(oldest);
                state.free_slots.push((member.slot, None));
                excess.push(member.handle.id().clone());
            }
        }
        // Shed first: a smaller target applies even while backing off.
        if state.retry_at.is_some_and(|at| at > now) {
            (excess, 0, 0)
        } else {
            state.retry_at = None;
            let concurrency = pool.config.prewarm_concurrency;
            let count = |tier| state.waiting.iter().filter(|m| m.tier == tier).count() as u32;
            let busy = state.starting_running + state.starting_hot;
            let want_running = decide::refill_count(
                state.running,
                count(PoolTier::Running),
                state.starting_running,
                concurrency.saturating_sub(busy - state.starting_running),
            );
            let want_hot = decide::refill_count(
                state.target,
                count(PoolTier::Hot),
                state.starting_hot,
                concurrency.saturating_sub(busy + want_running - state.starting_hot),
            );
            (excess, want_running, want_hot)
        }
    };
    for id in excess {
        let manager = manager.clone();
        tokio::spawn(async move {
            if let Err(err) = manager.delete(id.as_str(), true).await {
                tracing::warn!(vm = %id, error = %tfc_core::error_chain(&err), "cannot remove a VM above the pool's target");
            }
        });
    }
    if want_running + want_hot == 0 {
        let mut state = pool.lock();
        if state.target + state.running == 0 {
            // Wanting nothing, it waits for nothing.
            state.waiting_for = None;
        }
        return;
    }
    let template = match manager.pool_template(&pool.vm_type).await {
        Ok(template) => template,
        Err(reason) => {
            let mut state = pool.lock();
            state.waiting_for = Some(format!("the template: {reason}"));
            return;
        }
    };
    {
        let mut state = pool.lock();
        state.waiting_for = None;
        state.template = Some(template.clone());
        state.starting_running += want_running;
        state.starting_hot += want_hot;
    }
    let tiers = std::iter::repeat_n(PoolTier::Running, want_running as usize)
        .chain(std::iter::repeat_n(PoolTier::Hot, want_hot as usize));
    for tier in tiers {
        tokio::spawn(prewarm(
            manager.clone(),
            pool.clone(),
            template.clone(),
            tier,
        ));
    }
}

/// Restores one VM into `tier` and adds it to the pool.
async fn prewarm(manager: VmManager, pool: Arc<Pool>, template: String, tier: PoolTier) {
    let started = Instant::now();
    let start = start_info(tier, Some(&template), "prewarmed from the template");
    let restored = manager
        .restore(
            &template,
            start,
            started,
            RestoreFor::Pool(tier, pool.config.prewarm_priority),
        )
        .await;
    let handle = restored.and_then(|vm| {
        let handle = manager.handle_of(&vm.id)?;
        Ok((vm, handle))
    });
    let mut state = pool.lock();
    match tier {
        PoolTier::Running => state.starting_running -= 1,
        _ => state.starting_hot -= 1,
    }
    match handle {
        Ok((vm, handle)) => {
            state.stats.prewarmed += 1;
            state.stats.consecutive_failures = 0;
            state.stats.last_failure = None;
            if state.closed {
                // The daemon is shutting down; its manager removes the VM.
                return;
            }
            let (slot, slot_used_ms) = Pool::slot(&mut state);
            state.waiting.push(Member {
                handle,
                tier,
                since: tokio::time::Instant::now(),
                since_ms: crate::vm::now_ms(),
                slot,
                slot_used_ms,
                restore_us: vm.timeline.at(tfc_core::BootPhase::Ready),
                template: Some(template),
            });
            drop(state);
            pool.joined.send_modify(|n| *n += 1);
        }
        Err(err) => {
            let reason = tfc_core::error_chain(&err);
            state.stats.prewarm_failures += 1;
            state.stats.consecutive_failures += 1;
            let wait = decide::backoff(state.stats.consecutive_failures, BACKOFF_BASE, BACKOFF_CAP);
            state.retry_at = Some(tokio::time::Instant::now() + wait);
            tracing::warn!(vm_type = %pool.vm_type, %tier, error = %reason, retry_in_ms = wait.as_millis() as u64, "prewarming a pooled VM failed");
            state.stats.last_failure = Some(reason);
            drop(state);
        }
    }
    pool.wake.notify_one();
}

/// Checks every waiting VM; replaces those that fail, are older than the
/// pool's `max_age_secs`, or come from a template that was replaced.
async fn maintain(manager: &VmManager, pool: &Arc<Pool>) {
    if pool.lock().waiting.is_empty() {
        // Nothing to check; and no template lookup, which could start a
        // build for a pool that holds nothing.
        return;
    }
    let max_age = Duration::from_secs(pool.config.max_age_secs);
    let current = manager.pool_template(&pool.vm_type).await.ok();
    let now = tokio::time::Instant::now();
    let members: Vec<(VmHandle, PoolTier, Option<String>)> = pool
        .lock()
        .waiting
        .iter()
        .map(|m| {
            let retire_for = if now.duration_since(m.since) >= max_age {
                Some(format!("older than max_age_secs ({})", max_age.as_secs()))
            } else if current.is_some() && m.template != current {
                Some("its template was replaced".to_owned())
            } else {
                None
            };
            (m.handle.clone(), m.tier, retire_for)
        })
        .collect();
    for (handle, tier, retire_for) in members {
        let id = handle.id().clone();
        let aged = retire_for.is_some();
        let reason = match retire_for {
            Some(reason) => {
                if !leave(pool, &id) {
                    continue; // handed out meanwhile
                }
                let _ = handle.check(Some(reason.clone())).await;
                reason
            }
            None => match check(manager, &handle, tier).await {
                Ok(()) => continue,
                Err(reason) => {
                    // Only a VM the pool still holds is its to replace: one
                    // handed out meanwhile is the caller's.
                    if !leave(pool, &id) {
                        continue;
                    }
                    // Marked needs_maintenance, unless its owner already did.
                    let _ = handle.check(Some(reason.clone())).await;
                    reason
                }
            },
        };
        pool.lock().stats.last_replacement = Some(format!("VM {id}: {reason}"));
        tracing::info!(vm = %id, %reason, "replacing a pooled VM");
        retire(manager, pool, id, aged);
    }
}

/// One waiting VM's health. The VMM's own state is asked through the VM's
/// owner (about a millisecond: an acquire arriving meanwhile waits that
/// long); a running guest's probe, which a busy guest may answer slowly,
/// goes around the owner, so the VM stays available while it runs.
async fn check(manager: &VmManager, handle: &VmHandle, tier: PoolTier) -> Result<(), String> {
    handle.check(None).await.map_err(|e| e.to_string())?;
    if tier == PoolTier::Running {
        let vm = handle.info();
        manager
            .probe_guest(handle.id(), &vm.spec, std::path::Path::new(&vm.workdir))
            .await
            .map_err(|e| tfc_core::error_chain(&e))?;
    }
    Ok(())
}

/// Takes `id` out of the pool's waiting VMs; false when it is not there
/// (handed out, or already taken out).
fn leave(pool: &Pool, id: &VmId) -> bool {
    let mut state = pool.lock();
    let Some(at) = state.waiting.iter().position(|m| m.handle.id() == id) else {
        return false;
    };
    let member = state.waiting.swap_remove(at);
    state.free_slots.push((member.slot, None));
    true
}

/// Moves the hot target by the window's demand, within min..=max.
fn autoscale(pool: &Pool) {
    let Some(config) = &pool.config.autoscale else {
        return;
    };
    let policy = AutoscalePolicy {
        up_threshold: config.up_threshold,
        down_threshold: config.down_threshold,
        step: config.step,
    };
    let mut state = pool.lock();
    let mut window = std::mem::take(&mut state.window);
    if state.stats.consecutive_failures > 0 {
        // Misses while the pool cannot fill say nothing about demand: more
        // VMs would not have been there either.
        window.misses = 0;
    }
    let next = decide::scaled_target(state.target, state.min, state.max, window, policy);
    if next != state.target {
        tracing::info!(vm_type = %pool.vm_type, from = state.target, to = next, ?window, "autoscaling the pool");
        if next > state.target {
            state.stats.scaled_up += 1;
        } else {
            state.stats.scaled_down += 1;
        }
        state.target = next;
        drop(state);
        pool.wake.notify_one();
    }
}
