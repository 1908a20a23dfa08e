//! `tfc bench restore`: restores one snapshot many times with raw Firecracker
//! (a new process, then `PUT /snapshot/load` with `resume_vm`) and through tfc
//! (`POST /v1/vms` with `from_snapshot` to an in-process daemon over its
//! socket, with its default SQLite store), alternating which goes first, and
//! prints min/median/max of each and the ratio of medians. Then the resume
//! of a paused guest, raw (`PATCH /vm`) and through tfc (`POST
//! /v1/vms/{id}/resume`), and restores per second with concurrent workers,
//! for both.
//!
//! Each sample runs from just before the work begins (the VM directory and
//! its root-drive link, then the spawn, for raw; the request for tfc, which
//! does the same inside) to the moment the guest is running again: the resume
//! (raw: the load with `resume_vm`) or the daemon's answer that the VM is
//! ready (tfc). The VM is
//! removed after each sample, outside the measured interval.
//!
//! The snapshot is the default VM type's template, built by the daemon under
//! test at the start of the run (one cold boot).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tfc_api::{CreateVmRequest, SnapshotInfo};
use tfc_core::{BootPhase, VmTypeName};
use tfc_firecracker::models::{MemoryBackend, MemoryBackendType, SnapshotLoadParams};
use tfc_firecracker::{FirecrackerProcess, SpawnConfig, StopPolicy, VmConfig};
use tfc_host::assets::Manifest;
use tfc_store::StoreKind;

use crate::bench::{median, Comparison};
use crate::client::{Client, VmAction};

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Restores of each kind.
    #[arg(long, default_value_t = 20)]
    count: usize,
    /// Unmeasured restores of each kind first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Workers of the throughput run.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Restores per worker in the throughput run (0 skips it).
    #[arg(long, default_value_t = 10)]
    per_worker: usize,
    /// Longest wait for the template's boot, in seconds.
    #[arg(long, default_value_t = 240)]
    timeout: u64,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Throughput {
    workers: usize,
    restores: usize,
    raw_per_second: f64,
    tfc_per_second: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    count: usize,
    firecracker: String,
    snapshot: String,
    memory_mib: u32,
    restore_to_running: Comparison,
    /// Medians of tfc's own phases, ms since the request.
    tfc_phase_medians_ms: Vec<(BootPhase, f64)>,
    /// Resumes of a running guest paused [`PAUSED_FOR`] before, each kind in
    /// one VM kept for all of them.
    resume_paused: Comparison,
    throughput: Option<Throughput>,
}

/// How long a guest stays paused before each measured resume: a pooled VM
/// waits before its hand-over (`target` VMs served by back-to-back cycles of
/// a few milliseconds wait some tens of milliseconds), and a resume right
/// after a load is faster than one after a wait on a small host (0.5 against
/// ~2.4 ms median, measured).
pub(crate) const PAUSED_FOR: Duration = Duration::from_millis(50);

/// The files of the snapshot under test, as raw Firecracker needs them.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) state: PathBuf,
    pub(crate) memory: PathBuf,
    pub(crate) rootfs: PathBuf,
}

pub async fn run(args: RestoreArgs, data_dir: &Path) -> anyhow::Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let manifest = tfc_host::assets::load_manifest(data_dir)?;
    let scratch = tempfile::Builder::new()
        .prefix("tfc-bench-restore-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    let config = crate::bench::daemon_config(&manifest, args.timeout, "");
    // The daemon's default store, so each restore pays its real write.
    let measured =
        crate::bench::with_daemon(&config, scratch.path(), StoreKind::Sqlite, async |client| {
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

async fn measure(
    args: &RestoreArgs,
    manifest: &Manifest,
    scratch: &Path,
    client: &Client,
) -> anyhow::Result<Report> {
    eprintln!("  building the template (one cold boot)");
    let template = client
        .build_template(&VmTypeName::new("default")?)
        .await?
        .value;
    let snapshot_id = template
        .snapshot
        .context("the template build produced no snapshot")?;
    let info: SnapshotInfo = client
        .get_snapshot(&tfc_core::SnapshotId::new(snapshot_id.clone())?)
        .await?
        .value;
    let m = info.manifest.clone().context("snapshot without manifest")?;
    let snapshot = Snapshot {
        state: Path::new(&info.dir).join(&m.state_file),
        memory: Path::new(&info.dir).join(&m.memory_file),
        rootfs: m.spec.rootfs.clone(),
    };
    let binary = manifest.firecracker.path.clone();
    let mut n = 0usize;
    let mut next_dir = || {
        n += 1;
        scratch.join(format!("raw-{n}"))
    };
    if args.warmup > 0 {
        eprintln!("  warm-up ({} of each, not measured)", args.warmup);
        for _ in 0..args.warmup {
            restore_raw(&binary, &snapshot, &next_dir()).await?;
            restore_tfc(client, &snapshot_id).await?;
        }
    }
    let (mut raw, mut tfc, mut phases) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.count {
        for raw_turn in [i % 2 == 0, i % 2 != 0] {
            if raw_turn {
                let took = restore_raw(&binary, &snapshot, &next_dir())
                    .await
                    .with_context(|| format!("raw restore {i}"))?;
                eprintln!("  raw firecracker  restore {i}: {:>8.2} ms", ms(took));
                raw.push(took);
            } else {
                let (took, marks) = restore_tfc(client, &snapshot_id)
                    .await
                    .with_context(|| format!("tfc restore {i}"))?;
                eprintln!("  tfc              restore {i}: {:>8.2} ms", ms(took));
                tfc.push(took);
                phases.push(marks);
            }
        }
    }
    let tfc_phase_medians_ms = [
        BootPhase::Spawned,
        BootPhase::ApiReady,
        BootPhase::SnapshotLoaded,
        BootPhase::Ready,
    ]
    .iter()
    .map(|phase| {
        let mut values: Vec<f64> = phases
            .iter()
            .filter_map(|marks: &Vec<(BootPhase, f64)>| {
                marks.iter().find(|(p, _)| p == phase).map(|(_, v)| *v)
            })
            .collect();
        values.sort_by(f64::total_cmp);
        (*phase, median(&values))
    })
    .collect();
    eprintln!(
        "  resume after {PAUSED_FOR:?} paused: {} of each kind, alternating",
        args.count
    );
    let resume_paused = resumes(
        args.count,
        &binary,
        &snapshot,
        &next_dir(),
        client,
        &snapshot_id,
    )
    .await?;
    let throughput = if args.per_worker > 0 && args.workers > 0 {
        eprintln!(
            "  throughput: {} workers x {} restores, raw then tfc",
            args.workers, args.per_worker
        );
        Some(throughput(args, &binary, &snapshot, scratch, client, &snapshot_id).await?)
    } else {
        None
    };
    Ok(Report {
        count: args.count,
        firecracker: manifest.firecracker.version.clone(),
        snapshot: snapshot_id,
        memory_mib: m.spec.memory_mib,
        restore_to_running: Comparison::of(&raw, &tfc),
        tfc_phase_medians_ms,
        resume_paused,
        throughput,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `count` resumes of a running guest after [`PAUSED_FOR`] paused, raw (one
/// process loaded from `snapshot` in `dir`) and through the daemon (one VM
/// restored from `snapshot_id`), alternating; the pauses are not timed.
async fn resumes(
    count: usize,
    binary: &Path,
    snapshot: &Snapshot,
    dir: &Path,
    client: &Client,
    snapshot_id: &str,
) -> anyhow::Result<Comparison> {
    let process = raw_loaded(binary, snapshot, dir, true).await?;
    let request = CreateVmRequest {
        from_snapshot: Some(snapshot_id.to_owned()),
        ..CreateVmRequest::default()
    };
    let vm = tfc_core::VmId::new(client.create_vm(&request).await?.value.id)?;
    let measured = async {
        let (mut raw, mut tfc) = (Vec::new(), Vec::new());
        for _ in 0..count {
            process.api().pause().await?;
            tokio::time::sleep(PAUSED_FOR).await;
            let started = Instant::now();
            process.api().resume().await?;
            raw.push(started.elapsed());

            client.act(&vm, VmAction::Pause).await?;
            tokio::time::sleep(PAUSED_FOR).await;
            let started = Instant::now();
            client.act(&vm, VmAction::Resume).await?;
            tfc.push(started.elapsed());
        }
        Ok::<_, anyhow::Error>(Comparison::of(&raw, &tfc))
    }
    .await;
    stop_raw(process, dir).await;
    client.delete_vm(&vm, true).await?;
    measured
}

/// One restore by hand: new process, wait for its socket, load and resume.
async fn restore_raw(binary: &Path, snapshot: &Snapshot, dir: &Path) -> anyhow::Result<Duration> {
    raw_sample(binary, snapshot, dir, RawStep::Restore).await
}

/// What a raw sample times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawStep {
    /// From creating the VM directory to the answer of a load that resumes.
    Restore,
    /// The one `PATCH /vm` resuming a guest loaded paused, after it has
    /// stayed paused this long (as a pooled VM waits before its hand-over).
    Resume { paused_for: Duration },
}

/// One raw Firecracker sample in the fresh directory `dir`: a new process
/// loads `snapshot` and `step` is timed. The process is stopped afterwards.
pub(crate) async fn raw_sample(
    binary: &Path,
    snapshot: &Snapshot,
    dir: &Path,
    step: RawStep,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let process = raw_loaded(binary, snapshot, dir, step == RawStep::Restore).await?;
    let took = match step {
        RawStep::Restore => started.elapsed(),
        RawStep::Resume { paused_for } => {
            tokio::time::sleep(paused_for).await;
            let resumed = Instant::now();
            process.api().resume().await?;
            resumed.elapsed()
        }
    };
    stop_raw(process, dir).await;
    Ok(took)
}

/// A new Firecracker process in the fresh directory `dir` that has loaded
/// `snapshot`, its guest resumed or not.
async fn raw_loaded(
    binary: &Path,
    snapshot: &Snapshot,
    dir: &Path,
    resume: bool,
) -> anyhow::Result<FirecrackerProcess> {
    std::fs::create_dir_all(dir)?;
    // The snapshot names its root drive by the relative link, as every tfc VM
    // directory has it.
    VmConfig {
        kernel: PathBuf::new(),
        boot_args: String::new(),
        rootfs: snapshot.rootfs.clone(),
        vcpus: 1,
        memory_mib: 0,
        vsock: false,
        track_dirty_pages: false,
        network: None,
        rootfs_rate_limiter: None,
    }
    .link_into(dir)?;
    let process = FirecrackerProcess::spawn(&SpawnConfig {
        binary: binary.to_owned(),
        workdir: dir.to_owned(),
        id: "bench-raw".to_owned(),
        console_log_limit: 1024 * 1024,
        watch_for: Vec::new(),
        extra_args: Vec::new(),
        netns: None,
        jail: None,
        cgroups: Vec::new(),
    })
    .await?;
    process.wait_api_ready(Duration::from_secs(5)).await?;
    process
        .api()
        .load_snapshot(&SnapshotLoadParams {
            snapshot_path: snapshot.state.display().to_string(),
            mem_backend: Some(MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: snapshot.memory.display().to_string(),
            }),
            enable_diff_snapshots: None,
            resume_vm: Some(resume),
            network_overrides: Vec::new(),
        })
        .await?;
    Ok(process)
}

/// Stops a raw sample's process and removes its directory.
async fn stop_raw(process: FirecrackerProcess, dir: &Path) {
    process
        .stop(StopPolicy {
            ctrl_alt_del_grace: None,
            term_grace: Duration::from_secs(2),
        })
        .await;
    let _ = std::fs::remove_dir_all(dir);
}

/// One restore through the daemon's API; the VM is deleted afterwards.
async fn restore_tfc(
    client: &Client,
    snapshot: &str,
) -> anyhow::Result<(Duration, Vec<(BootPhase, f64)>)> {
    let request = CreateVmRequest {
        from_snapshot: Some(snapshot.to_owned()),
        ..CreateVmRequest::default()
    };
    let started = Instant::now();
    let vm = client.create_vm(&request).await?.value;
    let took = started.elapsed();
    client
        .delete_vm(&tfc_core::VmId::new(vm.id.clone())?, true)
        .await?;
    let marks = vm
        .timeline
        .0
        .iter()
        .map(|m| (m.phase, m.at_us as f64 / 1e3))
        .collect();
    Ok((took, marks))
}

/// Restores per second with `args.workers` concurrent workers, raw and tfc.
async fn throughput(
    args: &RestoreArgs,
    binary: &Path,
    snapshot: &Snapshot,
    scratch: &Path,
    client: &Client,
    snapshot_id: &str,
) -> anyhow::Result<Throughput> {
    let total = args.workers * args.per_worker;
    let started = Instant::now();
    let mut raw_workers = tokio::task::JoinSet::new();
    let shared = Arc::new((binary.to_owned(), snapshot.clone()));
    for w in 0..args.workers {
        let shared = shared.clone();
        let dir = scratch.join(format!("tput-{w}"));
        let per_worker = args.per_worker;
        raw_workers.spawn(async move {
            for i in 0..per_worker {
                restore_raw(&shared.0, &shared.1, &dir.join(i.to_string())).await?;
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(done) = raw_workers.join_next().await {
        done??;
    }
    let raw_per_second = total as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut tfc_workers = tokio::task::JoinSet::new();
    for _ in 0..args.workers {
        let client = client.clone();
        let snapshot_id = snapshot_id.to_owned();
        let per_worker = args.per_worker;
        tfc_workers.spawn(async move {
            for _ in 0..per_worker {
                restore_tfc(&client, &snapshot_id).await?;
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(done) = tfc_workers.join_next().await {
        done??;
    }
    let tfc_per_second = total as f64 / started.elapsed().as_secs_f64();
    Ok(Throughput {
        workers: args.workers,
        restores: total,
        raw_per_second,
        tfc_per_second,
    })
}

fn print_report(r: &Report) {
    println!(
        "{} restores each of {} ({} MiB), {}",
        r.count, r.snapshot, r.memory_mib, r.firecracker
    );
    crate::bench::print_comparison(
        "restore to running (request to guest resumed)",
        &r.restore_to_running,
    );
    println!("\ntfc phases (median ms since request):");
    for (phase, ms) in &r.tfc_phase_medians_ms {
        println!("  {:<18} {ms:>10.2}", format!("{phase:?}"));
    }
    crate::bench::print_comparison(
        &format!(
            "resume of a running guest paused {} ms before (one VM each)",
            PAUSED_FOR.as_millis()
        ),
        &r.resume_paused,
    );
    if let Some(t) = &r.throughput {
        println!(
            "\nthroughput, {} workers, {} restores (each followed by a delete): raw {:.1}/s, tfc {:.1}/s (ratio {:.3})",
            t.workers,
            t.restores,
            t.raw_per_second,
            t.tfc_per_second,
            t.tfc_per_second / t.raw_per_second
        );
    }
}
