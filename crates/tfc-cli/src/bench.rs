//! `tfc bench boot`: boots VMs with raw Firecracker (`--config-file`, same
//! kernel, rootfs, boot args, vCPUs and memory) and through tfc (an in-process
//! daemon on its own socket, driven over HTTP like any client), alternating which
//! goes first, and prints min/median/max of each and the ratio of medians.
//!
//! Both clocks start just before the work begins (process spawn for raw, the
//! create request for tfc) and stop when the kernel prints the readiness line.
//! For tfc that moment is when the daemon reports the VM ready, i.e. including
//! the daemon's own overhead: API handling, spawn, configuration over the socket.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tfc_api::CreateVmRequest;
use tfc_core::{BootPhase, VmState};
use tfc_daemon::config::Config;
use tfc_daemon::manager::VmManager;
use tfc_firecracker::models::{BootSource, ConfigFile, Drive, MachineConfiguration};
use tfc_firecracker::{FirecrackerProcess, SpawnConfig, StopPolicy};
use tfc_host::assets::Manifest;

use crate::client::Client;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCmd {
    /// Cold boot to the kernel's readiness line: raw Firecracker vs tfc.
    Boot(BootArgs),
}

#[derive(Debug, clap::Args)]
pub struct BootArgs {
    /// Boots of each kind.
    #[arg(long, default_value_t = 3)]
    count: usize,
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
struct Stats {
    min_ms: f64,
    median_ms: f64,
    max_ms: f64,
    samples_ms: Vec<f64>,
}

impl Stats {
    fn of(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        Stats {
            min_ms: ms[0],
            median_ms: median(&ms),
            max_ms: ms[ms.len() - 1],
            samples_ms: ms,
        }
    }
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

#[derive(Debug, Serialize)]
struct Report {
    count: usize,
    firecracker: String,
    kernel: PathBuf,
    raw: Stats,
    tfc: Stats,
    /// tfc median / raw median: the manager's overhead factor on a cold boot.
    ratio: f64,
    /// Medians of tfc's own phases, ms since the create request.
    tfc_phase_medians_ms: Vec<(BootPhase, f64)>,
}

pub async fn run(cmd: BenchCmd, data_dir: &Path) -> anyhow::Result<()> {
    let BenchCmd::Boot(args) = cmd;
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
    let config = format!(
        "[daemon]\nbackend = \"firecracker\"\n[firecracker]\nbinary = {:?}\nboot_timeout_secs = {}\n\
         [vm_types.default]\nvcpus = {VCPUS}\nmemory_mib = {MEMORY_MIB}\nkernel = {:?}\nrootfs = {:?}\n\
         boot_args = {:?}\nreadiness_line = {READY_LINE:?}\n",
        manifest.firecracker.path,
        args.timeout,
        manifest.kernel.vmlinux,
        manifest.rootfs.path,
        manifest.boot_args,
    );
    let config = Config::parse(&config, "bench")?;
    let daemon_dir = scratch.path().join("daemon");
    let backend = tfc_daemon::build_backend(&config, &daemon_dir)?;
    let socket = scratch.path().join("tfc.sock");
    let listener = tfc_daemon::bind(&socket)?;
    let manager = VmManager::new(backend, config, daemon_dir);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tfc_daemon::serve_until(listener, manager, async {
        let _ = stop_rx.await;
    }));
    let client = Client::new(socket);

    let mut raw = Vec::new();
    let mut tfc = Vec::new();
    let mut phases: Vec<Vec<(BootPhase, f64)>> = Vec::new();
    for i in 0..args.count {
        // Alternate the order so neither kind always runs on a warmer host.
        for raw_turn in [i % 2 == 0, i % 2 != 0] {
            if raw_turn {
                let took = boot_raw(&manifest, &scratch.path().join(format!("raw-{i}")), timeout)
                    .await
                    .with_context(|| format!("raw boot {i}"))?;
                eprintln!(
                    "  raw firecracker boot {i}: {:.1} ms",
                    took.as_secs_f64() * 1e3
                );
                raw.push(took);
            } else {
                let (took, marks) = boot_tfc(&client, timeout)
                    .await
                    .with_context(|| format!("tfc boot {i}"))?;
                eprintln!(
                    "  tfc boot {i}:             {:.1} ms",
                    took.as_secs_f64() * 1e3
                );
                tfc.push(took);
                phases.push(marks);
            }
        }
    }
    let _ = stop_tx.send(());
    server.await??;

    let raw = Stats::of(&raw);
    let tfc_stats = Stats::of(&tfc);
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
        ratio: tfc_stats.median_ms / raw.median_ms,
        raw,
        tfc: tfc_stats,
        tfc_phase_medians_ms,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &Report) {
    println!(
        "boot to {READY_LINE:?}, {} boots each, {VCPUS} vCPU, {MEMORY_MIB} MiB, {}",
        r.count, r.firecracker
    );
    println!(
        "{:<18} {:>12} {:>12} {:>12}",
        "", "min ms", "median ms", "max ms"
    );
    for (name, s) in [("raw firecracker", &r.raw), ("tfc", &r.tfc)] {
        println!(
            "{name:<18} {:>12.1} {:>12.1} {:>12.1}",
            s.min_ms, s.median_ms, s.max_ms
        );
    }
    println!("ratio tfc/raw (medians): {:.4}", r.ratio);
    println!("tfc phases (median ms since request):");
    for (phase, ms) in &r.tfc_phase_medians_ms {
        println!("  {:<18} {ms:>10.2}", format!("{phase:?}"));
    }
}

/// One boot of Firecracker on its own, configured by file, no manager.
async fn boot_raw(manifest: &Manifest, dir: &Path, timeout: Duration) -> anyhow::Result<Duration> {
    std::fs::create_dir_all(dir)?;
    let config = ConfigFile {
        boot_source: BootSource {
            kernel_image_path: manifest.kernel.vmlinux.display().to_string(),
            boot_args: Some(manifest.boot_args.clone()),
            initrd_path: None,
        },
        drives: vec![Drive {
            drive_id: "rootfs".to_owned(),
            path_on_host: Some(manifest.rootfs.path.display().to_string()),
            is_root_device: true,
            is_read_only: Some(true),
            partuuid: None,
            cache_type: None,
            io_engine: None,
            rate_limiter: None,
        }],
        machine_config: MachineConfiguration {
            vcpu_count: VCPUS,
            mem_size_mib: MEMORY_MIB,
            smt: None,
            track_dirty_pages: None,
            huge_pages: None,
        },
        network_interfaces: Vec::new(),
        vsock: None,
        logger: None,
    };
    std::fs::write(dir.join("vm.json"), serde_json::to_vec_pretty(&config)?)?;
    let started = Instant::now();
    let process = FirecrackerProcess::spawn(&SpawnConfig {
        binary: manifest.firecracker.path.clone(),
        workdir: dir.to_owned(),
        id: "bench-raw".to_owned(),
        console_log_limit: 1024 * 1024,
        watch_for: vec![READY_LINE.to_owned()],
        extra_args: vec!["--config-file".to_owned(), "vm.json".to_owned()],
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
    let _ = std::fs::remove_dir_all(dir);
    match ready {
        Ok(Ok(_)) => Ok(took),
        Ok(Err(e)) => bail!("{e}; last console lines: {:?}", process.console().tail()),
        Err(_) => bail!("not ready within {timeout:?}"),
    }
}

/// One boot through the daemon's API; returns the wall time and tfc's phases.
async fn boot_tfc(
    client: &Client,
    timeout: Duration,
) -> anyhow::Result<(Duration, Vec<(BootPhase, f64)>)> {
    let request = CreateVmRequest {
        wait: true,
        wait_timeout_ms: Some(timeout.as_millis() as u64),
        ..CreateVmRequest::default()
    };
    let started = Instant::now();
    let vm = client.create_vm(&request).await?.value;
    let took = started.elapsed();
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
    let marks = vm
        .timeline
        .0
        .iter()
        .map(|m| (m.phase, m.at_us as f64 / 1e3))
        .collect();
    Ok((took, marks))
}
