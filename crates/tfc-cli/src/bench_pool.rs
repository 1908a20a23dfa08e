//! `tfc bench pool`: acquire + release cycles against a pool of a `tfc serve`
//! process (default SQLite store, driven over its socket by the CLI's client),
//! next to raw Firecracker doing the same VMM step in the same run.
//!
//! Phases, after the template is built (one cold boot, whose time is the
//! cold-boot figure) and the pool has filled:
//!
//! 1. hot: `cycles` acquire + release cycles, back to back, from a pool of
//!    `target` paused VMs; each acquire timed from request to answer at the
//!    client. The first `raw` cycles each alternate with a raw sample: a
//!    fresh Firecracker loads the template paused, the guest stays paused a
//!    while (as pooled VMs wait), then one `PATCH /vm {"state":"Resumed"}` is
//!    timed (the hot tier's VMM step),
//!    raw first on even cycles and second on odd ones, so both meet the same
//!    host conditions.
//! 2. running: one VM kept running (acquire = handover); its idle CPU cost
//!    is measured first. Each cycle waits until the pool holds it again.
//! 3. warm: the pool emptied; each acquire restores the template, alternating
//!    with raw restores (new process, load with `resume_vm`).
//! 4. beyond capacity: a burst of `target + 4` concurrent acquires with a
//!    wait shorter than a restore: the pool's VMs are served, the rest must
//!    be clean 503s (with `Retry-After`), never failures.
//!
//! Releases are not timed. Each phase reports the tiers that served it; the
//! targets of the pools issue are judged on the tier the phase is about.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tfc_api::{AcquireRequest, PoolTier, ResizePoolRequest, SnapshotInfo};
use tfc_core::{StartMethod, VmId, VmTypeName};
use tfc_host::assets::Manifest;
use tfc_store::StoreKind;

use crate::bench::Stats;
use crate::bench_restore::{raw_sample, RawStep, Snapshot, PAUSED_FOR};
use crate::client::{Client, ClientError};

#[derive(Debug, clap::Args)]
pub struct PoolArgs {
    /// Acquire + release cycles against the hot tier.
    #[arg(long, default_value_t = 1000)]
    cycles: usize,
    /// The pool's hot target.
    #[arg(long, default_value_t = 4)]
    target: u32,
    /// Raw Firecracker resumes of a paused restore, alternating with the
    /// first hot-tier cycles (at most `cycles`; the warm phase takes one raw
    /// restore per cycle).
    #[arg(long, default_value_t = 1000)]
    raw: usize,
    /// Cycles served by the running tier (0 skips the phase).
    #[arg(long, default_value_t = 50)]
    running: usize,
    /// Cycles served by the warm tier (0 skips the phase).
    #[arg(long, default_value_t = 50)]
    warm: usize,
    /// Longest wait for the template's boot, in seconds.
    #[arg(long, default_value_t = 240)]
    timeout: u64,
    /// The daemon's in-memory store instead of its default SQLite one, to
    /// show what the record write costs.
    #[arg(long)]
    memory_store: bool,
    /// Run the daemon's VMs under the jailer (needs root), as a root
    /// daemon does by default. The raw samples stay unconfined: the
    /// comparison then includes what the jail costs.
    #[arg(long)]
    jailer: bool,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Phase {
    /// Acquires asked for, answered 503 (with `Retry-After`), failed
    /// otherwise (any other error, or a 503 without `Retry-After`).
    asked: usize,
    unavailable: usize,
    failed: usize,
    /// The served acquires, per tier that served them.
    served: Vec<Served>,
}

#[derive(Debug, Serialize)]
struct Served {
    tier: PoolTier,
    count: usize,
    /// Client-side request to answer.
    latency: Stats,
    /// The daemon's own figure for the same (request accepted to answer).
    daemon_latency: Stats,
}

impl Phase {
    fn served(&self) -> usize {
        self.served.iter().map(|s| s.count).sum()
    }

    fn tier(&self, tier: PoolTier) -> Option<&Served> {
        self.served.iter().find(|s| s.tier == tier)
    }
}

#[derive(Debug, Serialize)]
struct Report {
    firecracker: String,
    /// The daemon's VMs ran under the jailer (`--jailer`).
    jailed: bool,
    store: String,
    memory_mib: u32,
    target: u32,
    cold_boot_ms: Option<f64>,
    raw_resume: Stats,
    raw_restore: Option<Stats>,
    hot: Phase,
    running: Option<Phase>,
    /// CPU share of one core used by the idle running-tier VM.
    running_idle_cpu: Option<f64>,
    /// `GET /healthz` round trips, one right before each running-tier
    /// acquire: what any request costs here, handover or not.
    request_floor: Option<Stats>,
    warm: Option<Phase>,
    beyond_capacity: Phase,
    /// Resident memory of the pool's paused VMMs, MiB each (median).
    paused_vmm_rss_mib: Option<f64>,
}

pub async fn run(args: PoolArgs, data_dir: &Path) -> anyhow::Result<()> {
    if args.cycles == 0 || args.raw == 0 {
        bail!("--cycles and --raw must be at least 1");
    }
    if args.target == 0 {
        bail!("--target must be at least 1");
    }
    let manifest = tfc_host::assets::load_manifest(data_dir)?;
    let scratch = tempfile::Builder::new()
        .prefix("tfc-bench-pool-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    // Health checks every second: the pool under test does its maintenance
    // while it serves. No cold tier: a boot would only blur the figures
    // (each phase reports the tiers that served it).
    let pool = format!(
        "[vm_types.default.pool]\ntarget = {}\nmax = {}\nhealth_interval_ms = 1000\n\
         tiers = [\"running\", \"hot\", \"warm\"]\n",
        args.target,
        args.target.max(8),
    );
    let mut config = crate::bench::daemon_config(&manifest, args.timeout, &pool);
    if args.jailer {
        config = config.replacen("jailer = false\n", "jailer = true\n", 1);
    }
    let store = if args.memory_store {
        StoreKind::Memory
    } else {
        StoreKind::Sqlite
    };
    // A daemon process of its own, as callers meet it (and as the raw
    // samples meet Firecracker): the client does not share the daemon's
    // runtime.
    let measured =
        crate::bench::with_daemon_process(&config, scratch.path(), store, async |client| {
            measure(&args, &manifest, scratch.path(), client).await
        })
        .await;
    let report = measured?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn default_type() -> VmTypeName {
    VmTypeName::new("default").expect("a valid name")
}

async fn measure(
    args: &PoolArgs,
    manifest: &Manifest,
    scratch: &Path,
    client: &Client,
) -> anyhow::Result<Report> {
    let vm_type = default_type();
    eprintln!("  building the template (one cold boot)");
    let template = client.build_template(&vm_type).await?.value;
    let cold_boot_ms = template
        .starts
        .iter()
        .find(|s| s.method == StartMethod::ColdBoot)
        .map(|s| s.median_ms);
    let snapshot_id = template
        .snapshot
        .context("the template build produced no snapshot")?;
    let info: SnapshotInfo = client
        .get_snapshot(&tfc_core::SnapshotId::new(snapshot_id)?)
        .await?
        .value;
    let m = info.manifest.clone().context("snapshot without manifest")?;
    let files = Snapshot {
        state: Path::new(&info.dir).join(&m.state_file),
        memory: Path::new(&info.dir).join(&m.memory_file),
        rootfs: m.spec.rootfs.clone(),
    };
    let binary = &manifest.firecracker.path;

    // The pool fills first, so its restores do not run beside the raw
    // samples.
    eprintln!("  waiting for the pool to fill ({} hot)", args.target);
    until(client, Duration::from_secs(120), |p| {
        p.sizes.hot == args.target && p.sizes.starting == 0
    })
    .await?;
    let paused_vmm_rss_mib = paused_rss(client).await;

    let mut sampler = RawSampler {
        binary,
        files: &files,
        scratch,
        taken: 0,
    };
    // Raw samples alternate with the acquires (raw first on even cycles,
    // second on odd ones), so both meet the same host conditions.
    eprintln!(
        "  hot tier: {} acquire + release cycles, alternating with {} raw resumes",
        args.cycles, args.raw
    );
    let mut raw_resume = Vec::new();
    let hot = cycles(
        client,
        args.cycles,
        async |_| Ok(()),
        async |i| {
            if i < args.raw {
                raw_resume.push(
                    sampler
                        .sample(RawStep::Resume {
                            paused_for: PAUSED_FOR,
                        })
                        .await?,
                );
            }
            Ok(())
        },
    )
    .await?;

    let (running, running_idle_cpu, request_floor) = if args.running > 0 {
        eprintln!("  running tier: 1 VM kept running, {} cycles", args.running);
        resize(client, Some(args.target), Some(1)).await?;
        until(client, Duration::from_secs(60), |p| {
            p.sizes.running == 1 && p.sizes.starting == 0
        })
        .await?;
        let cpu = idle_cpu(client).await;
        let floor = std::cell::RefCell::new(Vec::new());
        let phase = cycles(
            client,
            args.running,
            async |client| {
                until(client, Duration::from_secs(60), |p| p.sizes.running == 1).await?;
                let started = Instant::now();
                client.health().await?;
                floor.borrow_mut().push(started.elapsed());
                Ok(())
            },
            async |_| Ok(()),
        )
        .await?;
        resize(client, None, Some(0)).await?;
        (Some(phase), cpu, Some(Stats::of(&floor.into_inner())))
    } else {
        (None, None, None)
    };

    let mut raw_restore = Vec::new();
    let warm = if args.warm > 0 {
        eprintln!(
            "  warm tier: the pool emptied, {} cycles alternating with as many raw restores",
            args.warm
        );
        resize(client, Some(0), Some(0)).await?;
        until(client, Duration::from_secs(60), |p| {
            p.sizes.hot == 0 && p.sizes.running == 0 && p.sizes.starting == 0
        })
        .await?;
        // Removal of the shed VMs runs in the background; let it finish.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Some(
            cycles(
                client,
                args.warm,
                async |_| Ok(()),
                async |_| {
                    raw_restore.push(sampler.sample(RawStep::Restore).await?);
                    Ok(())
                },
            )
            .await?,
        )
    } else {
        None
    };

    let burst = args.target as usize + 4;
    eprintln!(
        "  beyond capacity: {burst} concurrent acquires with a 5 ms wait against {} hot",
        args.target
    );
    resize(client, Some(args.target), Some(0)).await?;
    until(client, Duration::from_secs(60), |p| {
        p.sizes.hot == args.target && p.sizes.starting == 0
    })
    .await?;
    let beyond_capacity = burst_phase(client, burst, 5).await?;

    Ok(Report {
        firecracker: manifest.firecracker.version.clone(),
        jailed: args.jailer,
        store: if args.memory_store {
            "memory"
        } else {
            "sqlite"
        }
        .to_owned(),
        memory_mib: m.spec.memory_mib,
        target: args.target,
        cold_boot_ms,
        raw_resume: Stats::of(&raw_resume),
        raw_restore: (!raw_restore.is_empty()).then(|| Stats::of(&raw_restore)),
        hot,
        running,
        running_idle_cpu,
        request_floor,
        warm,
        beyond_capacity,
        paused_vmm_rss_mib,
    })
}

/// `n` acquire + release cycles, one at a time. `before` runs (untimed)
/// before each acquire; `beside(i)` (a raw sample) runs before the acquire
/// of even cycles and after that of odd ones.
async fn cycles(
    client: &Client,
    n: usize,
    before: impl AsyncFn(&Client) -> anyhow::Result<()>,
    mut beside: impl AsyncFnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<Phase> {
    let vm_type = default_type();
    let mut tally = Tally::default();
    for i in 0..n {
        if i % 2 == 0 {
            beside(i).await?;
        }
        before(client).await?;
        let started = Instant::now();
        let answer = client
            .acquire(&vm_type, &AcquireRequest { wait_ms: None })
            .await;
        let took = started.elapsed();
        if let Some(id) = tally.add(answer, took) {
            client.release_vm(&id).await?;
        }
        if i % 2 == 1 {
            beside(i).await?;
        }
        if (i + 1) % 100 == 0 {
            eprintln!("    {} cycles", i + 1);
        }
    }
    Ok(tally.phase())
}

/// Raw Firecracker samples, each in a fresh directory.
struct RawSampler<'a> {
    binary: &'a Path,
    files: &'a Snapshot,
    scratch: &'a Path,
    taken: usize,
}

impl RawSampler<'_> {
    async fn sample(&mut self, step: RawStep) -> anyhow::Result<Duration> {
        self.taken += 1;
        let dir = self.scratch.join(format!("raw-{}", self.taken));
        raw_sample(self.binary, self.files, &dir, step).await
    }
}

/// `n` acquires at once, each with `wait_ms`; the served VMs are released
/// afterwards.
async fn burst_phase(client: &Client, n: usize, wait_ms: u64) -> anyhow::Result<Phase> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let client = client.clone();
        tasks.spawn(async move {
            let started = Instant::now();
            let answer = client
                .acquire(
                    &default_type(),
                    &AcquireRequest {
                        wait_ms: Some(wait_ms),
                    },
                )
                .await;
            (answer, started.elapsed())
        });
    }
    let mut tally = Tally::default();
    let mut served = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (answer, took) = done?;
        served.extend(tally.add(answer, took));
    }
    for id in served {
        client.release_vm(&id).await?;
    }
    Ok(tally.phase())
}

#[derive(Default)]
struct Tally {
    asked: usize,
    unavailable: usize,
    failed: usize,
    /// Per tier: client and daemon latencies.
    served: std::collections::BTreeMap<PoolTier, (Vec<Duration>, Vec<Duration>)>,
}

impl Tally {
    /// Counts one answer; the VM to release when one was served.
    fn add(
        &mut self,
        answer: Result<crate::client::Answer<tfc_api::AcquireResponse>, ClientError>,
        took: Duration,
    ) -> Option<VmId> {
        self.asked += 1;
        match answer {
            Ok(answer) => {
                let got = answer.value;
                let (client, daemon) = self.served.entry(got.tier).or_default();
                client.push(took);
                daemon.push(Duration::from_micros(got.acquire_us));
                VmId::new(got.vm.id).ok()
            }
            // A clean refusal: 503 and when to come back.
            Err(ClientError::Refused(refusal))
                if refusal.body.code == tfc_api::ErrorCode::Unavailable
                    && refusal.retry_after_secs.is_some() =>
            {
                self.unavailable += 1;
                None
            }
            Err(err) => {
                eprintln!("    acquire failed: {err}");
                self.failed += 1;
                None
            }
        }
    }

    fn phase(self) -> Phase {
        Phase {
            asked: self.asked,
            unavailable: self.unavailable,
            failed: self.failed,
            served: self
                .served
                .into_iter()
                .map(|(tier, (client, daemon))| Served {
                    tier,
                    count: client.len(),
                    latency: Stats::of(&client),
                    daemon_latency: Stats::of(&daemon),
                })
                .collect(),
        }
    }
}

async fn resize(client: &Client, target: Option<u32>, running: Option<u32>) -> anyhow::Result<()> {
    client
        .resize_pool(
            &default_type(),
            &ResizePoolRequest {
                target,
                running,
                ..ResizePoolRequest::default()
            },
        )
        .await?;
    Ok(())
}

/// Polls the pool until `done` holds, at most `limit`.
async fn until(
    client: &Client,
    limit: Duration,
    done: impl Fn(&tfc_api::PoolInfo) -> bool,
) -> anyhow::Result<tfc_api::PoolInfo> {
    let started = Instant::now();
    loop {
        let pool = client.get_pool(&default_type()).await?.value;
        if done(&pool) {
            return Ok(pool);
        }
        if started.elapsed() > limit {
            bail!(
                "the pool did not get there in {limit:?}: sizes {:?}, waiting for {:?}, last failure {:?}",
                pool.sizes,
                pool.waiting_for,
                pool.stats.last_failure
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The pool's waiting VMs (VMM pids) in `tier`.
async fn waiting_pids(client: &Client, tier: PoolTier) -> Vec<u32> {
    let Ok(list) = client.list_vms().await else {
        return Vec::new();
    };
    list.value
        .vms
        .iter()
        .filter(|vm| {
            vm.pool
                .as_ref()
                .is_some_and(|s| s.tier == tier && s.acquired_at_ms.is_none())
        })
        .filter_map(|vm| vm.pid)
        .collect()
}

/// Median resident memory of the hot tier's VMMs, MiB.
async fn paused_rss(client: &Client) -> Option<f64> {
    let mut rss: Vec<f64> = waiting_pids(client, PoolTier::Hot)
        .await
        .into_iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024.0)
        })
        .collect();
    rss.sort_by(f64::total_cmp);
    (!rss.is_empty()).then(|| crate::bench::median(&rss))
}

/// Share of one core the running tier's VMM uses over two idle seconds.
async fn idle_cpu(client: &Client) -> Option<f64> {
    let pid = *waiting_pids(client, PoolTier::Running).await.first()?;
    let ticks = || -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after = stat.rsplit_once(") ")?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime: fields 14 and 15 of the line, 12 and 13 here.
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let before = ticks()?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = (ticks()? - before) as f64 / hz;
    Some(used / started.elapsed().as_secs_f64())
}

fn print_stats(name: &str, s: &Stats) {
    println!(
        "  {name:<30} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        s.min_ms, s.median_ms, s.p99_ms, s.max_ms
    );
}

fn print_phase(title: &str, p: &Phase) {
    println!(
        "\n{title}: {} asked, {} served, {} answered 503 (with Retry-After), {} failed",
        p.asked,
        p.served(),
        p.unavailable,
        p.failed,
    );
    for s in &p.served {
        println!("  served by the {} tier: {}", s.tier, s.count);
        print_stats("  acquire (client round trip)", &s.latency);
        print_stats("  acquire (daemon's own figure)", &s.daemon_latency);
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn print_report(r: &Report) {
    println!(
        "pool of {} hot VMs ({} MiB each), {}, daemon store {}, {}",
        r.target,
        r.memory_mib,
        r.firecracker,
        r.store,
        if r.jailed {
            "daemon's VMMs jailed, raw ones unconfined"
        } else {
            "every VMM unconfined (--jailer jails the daemon's)"
        }
    );
    println!(
        "\n  {:<30} {:>9} {:>9} {:>9} {:>9}",
        "ms", "min", "median", "p99", "max"
    );
    print_stats("raw resume (PATCH /vm)", &r.raw_resume);
    if let Some(s) = &r.raw_restore {
        print_stats("raw restore (spawn to running)", s);
    }
    print_phase("hot tier (acquire = resume)", &r.hot);
    if let Some(p) = &r.running {
        print_phase("running tier (acquire = handover)", p);
    }
    if let Some(s) = &r.request_floor {
        print_stats("  GET /healthz (any request)", s);
    }
    if let Some(cpu) = r.running_idle_cpu {
        println!(
            "  an idle running-tier VM used {:.0}% of a core while it waited",
            cpu * 100.0
        );
    }
    if let Some(p) = &r.warm {
        print_phase("warm tier (acquire = restore)", p);
    }
    print_phase("beyond capacity (burst, 5 ms wait)", &r.beyond_capacity);
    if let Some(rss) = r.paused_vmm_rss_mib {
        println!("\npaused pool VMM resident memory: {rss:.1} MiB (median)");
    }

    println!("\ntargets:");
    let raw = &r.raw_resume;
    let hot = r.hot.tier(PoolTier::Hot);
    let hot_count = hot.map_or(0, |h| h.count);
    println!(
        "  hot phase: {hot_count}/{} acquires served by the hot tier (100% within capacity): {}",
        r.hot.asked,
        verdict(hot_count == r.hot.asked)
    );
    if let Some(hot) = hot.map(|h| &h.latency) {
        println!(
            "  hot p50 {:.3} <= raw resume p50 {:.3} + 0.5 ms: {}",
            hot.median_ms,
            raw.median_ms,
            verdict(hot.median_ms <= raw.median_ms + 0.5)
        );
        println!(
            "  hot p99 {:.3} <= raw resume p99 {:.3} + 1 ms: {}",
            hot.p99_ms,
            raw.p99_ms,
            verdict(hot.p99_ms <= raw.p99_ms + 1.0)
        );
        if let Some(cold) = r.cold_boot_ms {
            let factor = cold / hot.median_ms;
            println!(
                "  hot acquire {factor:.0}x faster than a cold boot ({cold:.0} ms) >= 1000x: {}",
                verdict(factor >= 1000.0)
            );
        }
    }
    if let Some(phase) = &r.running {
        let running = phase.tier(PoolTier::Running);
        println!(
            "  running phase: {}/{} served by the running tier",
            running.map_or(0, |s| s.count),
            phase.asked
        );
        if let Some(running) = running {
            println!(
                "  running p50 {:.3} <= 0.5 ms: {}",
                running.latency.median_ms,
                verdict(running.latency.median_ms <= 0.5)
            );
        }
    }
    if let (Some(phase), Some(raw)) = (&r.warm, &r.raw_restore) {
        if let Some(warm) = phase.tier(PoolTier::Warm) {
            println!(
                "  warm p50 {:.3} <= 1.2 x raw restore p50 {:.3}: {} (ratio {:.3}; {}/{} served by the warm tier)",
                warm.latency.median_ms,
                raw.median_ms,
                verdict(warm.latency.median_ms <= 1.2 * raw.median_ms),
                warm.latency.median_ms / raw.median_ms,
                warm.count,
                phase.asked
            );
        }
    }
    let b = &r.beyond_capacity;
    let clean = b.failed == 0
        && b.served() >= r.target as usize
        && b.served() + b.unavailable == b.asked
        && b.unavailable > 0;
    println!(
        "  beyond capacity: {} served (capacity {}), {} clean 503, {} failures: {}",
        b.served(),
        r.target,
        b.unavailable,
        b.failed,
        verdict(clean)
    );
}
