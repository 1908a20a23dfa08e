//! `tfc bench boot`: boots VMs with raw Firecracker (`--config-file`, same
//! kernel, rootfs, boot args, vCPUs and memory) and through tfc (an in-process
//! daemon on its own socket, driven over HTTP like any client), alternating which
//! goes first, and prints min/median/max of each and the ratio of medians.
//!
//! Two intervals are measured for each boot, both from the client's side and
//! both starting just before the work begins (the spawn for raw, the create
//! request for tfc):
//! - *to guest start*: until Firecracker's own log line saying it kicked the
//!   guest's devices, which it prints in both modes when the vCPUs start (read
//!   from its log's wall-clock stamp). This is what a manager adds: spawn, API
//!   handling, configuration over the socket.
//! - *to ready*: until the kernel's readiness console line is seen (raw) or the
//!   daemon's answer that the VM is ready arrives (tfc). On a nested-KVM host
//!   this is dominated by the emulated guest boot (~25 s) and its noise; on real
//!   KVM it is ~0.1 s and the manager's share shows.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use serde::Serialize;
use tfc_api::CreateVmRequest;
use tfc_core::{BootPhase, VmState};
use tfc_daemon::config::{Config, ShutdownPolicy};
use tfc_daemon::manager::VmManager;
use tfc_firecracker::{FirecrackerProcess, SpawnConfig, StopPolicy, VmConfig};
use tfc_host::assets::Manifest;

use tfc_store::{AnyStore, StoreKind};

use crate::client::Client;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCmd {
    /// Cold boot to the kernel's readiness line: raw Firecracker vs tfc.
    Boot(BootArgs),
    /// Snapshot restore to a running guest: raw Firecracker vs tfc.
    Restore(crate::bench_restore::RestoreArgs),
    /// Acquire + release cycles against a pool, per tier, next to raw
    /// Firecracker's resume and restore measured in the same run.
    Pool(crate::bench_pool::PoolArgs),
    /// The guest agent's exec round trip on the host transport, next to the
    /// host spawning the same command itself.
    Exec(crate::bench_exec::ExecArgs),
    /// A VM network's setup and teardown, from ready slots and on demand,
    /// inside namespaces of its own (needs root).
    Net(crate::bench_net::NetArgs),
}

#[derive(Debug, clap::Args)]
pub struct BootArgs {
    /// Boots of each kind.
    #[arg(long, default_value_t = 3)]
    count: usize,
    /// Unmeasured boots of each kind first (cold caches, the daemon's first
    /// request).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Longest wait for one boot, in seconds.
    #[arg(long, default_value_t = 240)]
    timeout: u64,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

const READY_LINE: &str = "Run /init as init process";
const VCPUS: u8 = 1;
const MEMORY_MIB: u32 = 128;

#[derive(Debug, Serialize)]
pub(crate) struct Stats {
    pub(crate) min_ms: f64,
    pub(crate) median_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    samples_ms: Vec<f64>,
}

impl Stats {
    pub(crate) fn of(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        Stats {
            min_ms: ms[0],
            median_ms: median(&ms),
            p99_ms: tfc_core::pool::percentile(&ms, 99.0).unwrap_or(f64::NAN),
            max_ms: ms[ms.len() - 1],
            samples_ms: ms,
        }
    }
}

/// Median of sorted values (NaN for none).
pub(crate) fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Raw and tfc figures for one interval, and tfc median / raw median.
#[derive(Debug, Serialize)]
pub(crate) struct Comparison {
    pub(crate) raw: Stats,
    pub(crate) tfc: Stats,
    pub(crate) ratio: f64,
}

impl Comparison {
    pub(crate) fn of(raw: &[Duration], tfc: &[Duration]) -> Self {
        let (raw, tfc) = (Stats::of(raw), Stats::of(tfc));
        Comparison {
            ratio: tfc.median_ms / raw.median_ms,
            raw,
            tfc,
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    count: usize,
    firecracker: String,
    kernel: PathBuf,
    to_guest_start: Comparison,
    to_ready: Comparison,
    /// Medians of tfc's own phases, ms since the create request.
    tfc_phase_medians_ms: Vec<(BootPhase, f64)>,
}

/// One boot's two intervals.
#[derive(Debug, Clone, Copy)]
struct Sample {
    start: Duration,
    ready: Duration,
}

impl BenchCmd {
    /// The runtime this bench runs on. The pool bench is one caller of a
    /// daemon of its own process: one thread, as the CLI's client has. The
    /// others that run a daemon run it in this process, on worker threads
    /// as `tfc serve` has them.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match self {
            BenchCmd::Pool(_) => tokio::runtime::Builder::new_current_thread(),
            _ => tokio::runtime::Builder::new_multi_thread(),
        };
        builder.enable_all().build()
    }
}

pub async fn run(cmd: BenchCmd, data_dir: &Path) -> anyhow::Result<()> {
    let args = match cmd {
        BenchCmd::Boot(args) => args,
        BenchCmd::Restore(args) => return crate::bench_restore::run(args, data_dir).await,
        BenchCmd::Pool(args) => return crate::bench_pool::run(args, data_dir).await,
        BenchCmd::Exec(args) => return crate::bench_exec::run(args, data_dir).await,
        BenchCmd::Net(args) => return crate::bench_net::run(args),
    };
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let manifest = tfc_host::assets::load_manifest(data_dir)?;
    let scratch = tempfile::Builder::new()
        .prefix("tfc-bench-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    let timeout = Duration::from_secs(args.timeout);

    // The daemon under test, with the same inputs the raw boots get.
    let config = daemon_config(
        &manifest,
        args.timeout,
        &format!("vcpus = {VCPUS}\nmemory_mib = {MEMORY_MIB}\nreadiness_line = {READY_LINE:?}\n"),
    );
    let boots = with_daemon(&config, scratch.path(), StoreKind::Memory, async |client| {
        if args.warmup > 0 {
            eprintln!("  warm-up ({} of each, not measured)", args.warmup);
            run_boots(&manifest, scratch.path(), client, args.warmup, timeout).await?;
        }
        run_boots(&manifest, scratch.path(), client, args.count, timeout).await
    })
    .await;
    let (raw, tfc, phases) = boots?;

    let starts = |s: &[Sample]| s.iter().map(|s| s.start).collect::<Vec<_>>();
    let readies = |s: &[Sample]| s.iter().map(|s| s.ready).collect::<Vec<_>>();
    let phase_names = [
        BootPhase::Spawned,
        BootPhase::ApiReady,
        BootPhase::Configured,
        BootPhase::InstanceStarted,
        BootPhase::Ready,
    ];
    let tfc_phase_medians_ms = phase_names
        .iter()
        .map(|phase| {
            let mut values: Vec<f64> = phases
                .iter()
                .filter_map(|marks| marks.iter().find(|(p, _)| p == phase).map(|(_, v)| *v))
                .collect();
            values.sort_by(f64::total_cmp);
            (
                *phase,
                if values.is_empty() {
                    f64::NAN
                } else {
                    median(&values)
                },
            )
        })
        .collect();
    let report = Report {
        count: args.count,
        firecracker: manifest.firecracker.version.clone(),
        kernel: manifest.kernel.vmlinux.clone(),
        to_guest_start: Comparison::of(&starts(&raw), &starts(&tfc)),
        to_ready: Comparison::of(&readies(&raw), &readies(&tfc)),
        tfc_phase_medians_ms,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// The configuration of a benchmark's in-process daemon: the Firecracker
/// backend and the `default` VM type on the built assets; `extra` (TOML)
/// follows, still in the `default` type's table. Its VMMs run unconfined,
/// like the raw Firecracker they are compared with (`tfc bench pool
/// --jailer` jails them).
pub(crate) fn daemon_config(manifest: &Manifest, boot_timeout_secs: u64, extra: &str) -> String {
    format!(
        "[daemon]\nbackend = \"firecracker\"\n[firecracker]\nbinary = {:?}\njailer = false\njailer_binary = {:?}\n\
         boot_timeout_secs = {boot_timeout_secs}\n\
         [vm_types.default]\nkernel = {:?}\nrootfs = {:?}\nboot_args = {:?}\n{extra}",
        manifest.firecracker.path,
        manifest.jailer.path,
        manifest.kernel.vmlinux,
        manifest.rootfs.path,
        manifest.boot_args,
    )
}

/// Runs `work` against an in-process daemon configured by `config`, serving
/// on a private socket in `scratch`, and stops the daemon (and its VMs)
/// afterwards. Ctrl-C ends the run the same way (a raw process in flight is
/// killed when its handle drops).
pub(crate) async fn with_daemon<T>(
    config: &str,
    scratch: &Path,
    store: StoreKind,
    work: impl AsyncFnOnce(&Client) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let config = Config::parse(config, "bench")?;
    let daemon_dir = scratch.join("daemon");
    std::fs::create_dir_all(&daemon_dir)?;
    let backend = tfc_daemon::build_backend(&config, &daemon_dir)?;
    let store = AnyStore::open(store, &daemon_dir)?;
    let socket = scratch.join("tfc.sock");
    let listener = tfc_daemon::bind(&socket)?;
    let manager = VmManager::new(backend, config, daemon_dir, store);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tfc_daemon::serve_until(
        listener,
        manager,
        ShutdownPolicy::Stop,
        async {
            let _ = stop_rx.await;
        },
    ));
    let client = Client::new(socket);
    let result = tokio::select! {
        result = work(&client) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let _ = stop_tx.send(());
    server.await??;
    result
}

/// Runs `work` against a `tfc serve` child process configured by `config`
/// (plus `store` and the `stop` shutdown policy), on a private socket and data
/// directory in `scratch`, as a caller of a real daemon sees it; then stops
/// it with SIGTERM (its VMs with it) and waits for it. Ctrl-C ends the run the
/// same way.
pub(crate) async fn with_daemon_process<T>(
    config: &str,
    scratch: &Path,
    store: StoreKind,
    work: impl AsyncFnOnce(&Client) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let store = match store {
        StoreKind::Sqlite => "sqlite",
        StoreKind::Memory => "memory",
    };
    let config = config.replacen(
        "[daemon]\n",
        &format!("[daemon]\nstorage = {store:?}\nshutdown_policy = \"stop\"\n"),
        1,
    );
    // Checked here, so a mistake reads as one, not as a daemon that died.
    Config::parse(&config, "bench")?;
    let config_file = scratch.join("tfc.toml");
    std::fs::write(&config_file, &config)?;
    let socket = scratch.join("tfc.sock");
    let data_dir = scratch.join("daemon");
    let log = std::fs::File::create(scratch.join("serve.log"))?;
    let mut daemon = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--socket")
        .arg(&socket)
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("serve")
        .arg("--config")
        .arg(&config_file)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start `tfc serve`")?;
    let pid = daemon.id().context("`tfc serve` exited at once")?;
    let client = Client::new(socket.clone());
    let started = std::time::Instant::now();
    while client.list_vms().await.is_err() {
        if let Some(status) = daemon.try_wait()? {
            bail!(
                "`tfc serve` exited ({status}); the end of its log:\n{}",
                log_tail(&scratch.join("serve.log"))
            );
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "`tfc serve` did not answer on {} within 60 s",
                socket.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let result = tokio::select! {
        result = work(&client) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // SAFETY: kill(2) of the child this function started, still unreaped.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = daemon.wait().await?;
    if !status.success() && result.is_ok() {
        bail!(
            "`tfc serve` ended with {status}; the end of its log:\n{}",
            log_tail(&scratch.join("serve.log"))
        );
    }
    result
}

/// The last lines of the daemon's log, quoted in an error: the scratch
/// directory holding the log is gone once the error is printed.
fn log_tail(path: &Path) -> String {
    const LINES: usize = 20;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LINES)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

fn progress(kind: &str, i: usize, sample: Sample) {
    eprintln!(
        "  {kind:<16} boot {i}: guest start {:>8.2} ms, ready {:>10.1} ms",
        sample.start.as_secs_f64() * 1e3,
        sample.ready.as_secs_f64() * 1e3
    );
}

/// One interval's min/median/max for raw and tfc, and the ratio of medians.
pub(crate) fn print_comparison(title: &str, c: &Comparison) {
    println!("\n{title}");
    println!(
        "  {:<18} {:>12} {:>12} {:>12}",
        "", "min ms", "median ms", "max ms"
    );
    for (name, s) in [("raw firecracker", &c.raw), ("tfc", &c.tfc)] {
        println!(
            "  {name:<18} {:>12.2} {:>12.2} {:>12.2}",
            s.min_ms, s.median_ms, s.max_ms
        );
    }
    println!("  ratio tfc/raw (medians): {:.4}", c.ratio);
}

fn print_report(r: &Report) {
    println!(
        "{} boots each, {VCPUS} vCPU, {MEMORY_MIB} MiB, {}, kernel {}",
        r.count,
        r.firecracker,
        r.kernel.display()
    );
    for (title, c) in [
        ("to guest start", &r.to_guest_start),
        ("to ready (the \"Run /init\" console line)", &r.to_ready),
    ] {
        print_comparison(title, c);
    }
    println!();
    println!("tfc phases (median ms since request):");
    for (phase, ms) in &r.tfc_phase_medians_ms {
        println!("  {:<18} {ms:>10.2}", format!("{phase:?}"));
    }
}

type Phases = Vec<(BootPhase, f64)>;

/// Alternates raw and tfc boots; returns the samples and tfc's phases.
async fn run_boots(
    manifest: &Manifest,
    scratch: &Path,
    client: &Client,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<(Vec<Sample>, Vec<Sample>, Vec<Phases>)> {
    let mut raw: Vec<Sample> = Vec::new();
    let mut tfc: Vec<Sample> = Vec::new();
    let mut phases: Vec<Phases> = Vec::new();
    for i in 0..count {
        // Alternate the order so neither kind always runs on a warmer host.
        for raw_turn in [i % 2 == 0, i % 2 != 0] {
            if raw_turn {
                let dir = scratch.join(format!("raw-{i}"));
                let sample = boot_raw(manifest, &dir, timeout)
                    .await
                    .with_context(|| format!("raw boot {i}"))?;
                progress("raw firecracker", i, sample);
                raw.push(sample);
            } else {
                let (sample, marks) = boot_tfc(client, timeout)
                    .await
                    .with_context(|| format!("tfc boot {i}"))?;
                progress("tfc", i, sample);
                tfc.push(sample);
                phases.push(marks);
            }
        }
    }
    Ok((raw, tfc, phases))
}

/// Firecracker's log line when it starts the guest's vCPUs, API-driven or not.
const GUEST_STARTED_LINE: &str = "Artificially kick devices";

/// One boot of Firecracker on its own, configured by file, no manager.
async fn boot_raw(manifest: &Manifest, dir: &Path, timeout: Duration) -> anyhow::Result<Sample> {
    std::fs::create_dir_all(dir)?;
    let config = VmConfig {
        kernel: manifest.kernel.vmlinux.clone(),
        boot_args: manifest.boot_args.clone(),
        rootfs: manifest.rootfs.path.clone(),
        vcpus: VCPUS,
        memory_mib: MEMORY_MIB,
        // The same devices as the default VM type's VMs.
        vsock: true,
        track_dirty_pages: false,
        network: None,
        rootfs_rate_limiter: None,
    };
    config.link_into(dir)?;
    let config = config.to_config_file();
    std::fs::write(dir.join("vm.json"), serde_json::to_vec_pretty(&config)?)?;
    let started = Instant::now();
    let started_wall = SystemTime::now();
    let process = FirecrackerProcess::spawn(&SpawnConfig {
        binary: manifest.firecracker.path.clone(),
        workdir: dir.to_owned(),
        id: "bench-raw".to_owned(),
        console_log_limit: 1024 * 1024,
        watch_for: vec![READY_LINE.to_owned()],
        extra_args: vec!["--config-file".to_owned(), "vm.json".to_owned()],
        netns: None,
        jail: None,
        cgroups: Vec::new(),
    })
    .await?;
    let ready = tokio::time::timeout(timeout, process.console().wait_for(READY_LINE)).await;
    let took = started.elapsed();
    process
        .stop(StopPolicy {
            ctrl_alt_del_grace: None,
            term_grace: Duration::from_millis(500),
        })
        .await;
    let start = guest_start_time(dir, started_wall);
    let _ = std::fs::remove_dir_all(dir);
    match (ready, start) {
        (Ok(Ok(_)), Some(start)) => Ok(Sample { start, ready: took }),
        (Ok(Ok(_)), None) => bail!("no {GUEST_STARTED_LINE:?} line in Firecracker's log"),
        (Ok(Err(e)), _) => bail!("{e}; last console lines: {:?}", process.console().tail()),
        (Err(_), _) => bail!("not ready within {timeout:?}"),
    }
}

/// Time from `started` to the stamp of the guest-start line in the Firecracker
/// log of the VM whose directory is `workdir`. Firecracker stamps its log lines
/// with UTC wall-clock time, `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn`.
fn guest_start_time(workdir: &Path, started: SystemTime) -> Option<Duration> {
    let log = workdir.join(tfc_firecracker::process::VMM_LOG);
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains(GUEST_STARTED_LINE))?;
    let stamp = line.split_whitespace().next()?;
    let at = parse_utc(stamp)?;
    at.duration_since(started).ok()
}

/// Parses `YYYY-MM-DDTHH:MM:SS.fraction` (UTC) into a system time.
fn parse_utc(stamp: &str) -> Option<SystemTime> {
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (t.next()??, t.next()??, t.next()??);
    let nanos: u32 = format!("{fraction:0<9}").get(..9)?.parse().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
    // well-known civil-from-days inverse).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

/// One boot through the daemon's API; returns its sample and tfc's phases.
async fn boot_tfc(client: &Client, timeout: Duration) -> anyhow::Result<(Sample, Phases)> {
    let request = CreateVmRequest {
        wait: true,
        wait_timeout_ms: Some(timeout.as_millis() as u64),
        ..CreateVmRequest::default()
    };
    let started = Instant::now();
    let started_wall = SystemTime::now();
    let vm = client.create_vm(&request).await?.value;
    let took = started.elapsed();
    let start = guest_start_time(Path::new(&vm.workdir), started_wall);
    let id = tfc_core::VmId::new(vm.id.clone())?;
    client.delete_vm(&id, true).await?;
    if vm.state != VmState::Ready {
        bail!(
            "VM {} ended {}: {}",
            vm.id,
            vm.state,
            vm.failure.unwrap_or_default()
        );
    }
    let start = start
        .with_context(|| format!("no {GUEST_STARTED_LINE:?} line in the VM's Firecracker log"))?;
    let marks = vm
        .timeline
        .0
        .iter()
        .map(|m| (m.phase, m.at_us as f64 / 1e3))
        .collect();
    Ok((Sample { start, ready: took }, marks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_log_stamps_parse_as_utc() {
        let t = parse_utc("2026-11-26T08:50:11.608336258").unwrap();
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(since.as_secs(), 1_795_683_011);
        assert_eq!(since.subsec_nanos(), 608_336_258);
        assert_eq!(
            parse_utc("1970-01-01T00:00:01.5"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1500))
        );
        assert_eq!(parse_utc("garbage"), None);
    }

    #[test]
    fn stats_are_sorted_with_a_true_median() {
        let s = Stats::of(&[
            Duration::from_millis(30),
            Duration::from_millis(10),
            Duration::from_millis(20),
            Duration::from_millis(40),
        ]);
        assert_eq!((s.min_ms, s.median_ms, s.max_ms), (10.0, 25.0, 40.0));
    }
}
