//! `tfc bench exec`: the guest agent's exec round trip, and how long a
//! guest takes to have its agent answer.
//!
//! - Host transport: the real `tfc-agent` as a host process on a Unix socket,
//!   `exec true` through one multiplexed connection, from the request to the
//!   exit event. Next to it, in the same run, the baseline is the host
//!   spawning and reaping `true` itself: what any exec costs before a
//!   protocol is involved. The difference is what the agent adds.
//! - QEMU TCG guest: a `tfc serve` child process boots VMs with
//!   `"backend": "qemu-tcg"` one after another (request to `agent_ready`, as
//!   the daemon's timeline records it), then times `exec true` through the
//!   REST API into one of them (client to daemon to vsock to the agent in
//!   the guest and back), as a caller sees it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tfc_agent_client::AgentConnection;
use tfc_api::{CreateVmRequest, ExecEvent, ExecRequest};
use tfc_core::{BootPhase, VmId, Vmm};
use tfc_store::StoreKind;

use crate::bench::{Comparison, Stats};

/// The target for the host-transport lane's median round trip.
const TARGET_MEDIAN_MS: f64 = 1.0;
/// Longest a single `true` may take before the run is called broken.
const EXEC_TIMEOUT: Duration = Duration::from_secs(10);
/// Guest output kept per exec; `true` writes none.
const OUTPUT_CAP: usize = 4096;
/// How long the agent may take to start listening.
const AGENT_START: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Measured execs of each kind.
    #[arg(long, default_value_t = 200)]
    count: usize,
    /// Unmeasured execs of each kind first.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// The agent binary to run; by default the one `tfc assets build` bakes in.
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// QEMU TCG guests to boot to agent-ready, one after another (0 skips
    /// the guest lane).
    #[arg(long, default_value_t = 3)]
    qemu_boots: usize,
    /// Execs through the daemon into one QEMU guest.
    #[arg(long, default_value_t = 100)]
    guest_count: usize,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    count: usize,
    agent: PathBuf,
    /// `raw` is the host spawning `true`; `tfc` is `exec true` through the agent.
    host_transport: Comparison,
    /// Median through the agent minus the local spawn's median.
    agent_overhead_median_ms: f64,
    target_median_ms: f64,
    met: bool,
    qemu_guest: Option<GuestReport>,
}

#[derive(Debug, Serialize)]
struct GuestReport {
    boots: usize,
    /// From the create request to the agent's first answer.
    boot_to_agent_ready: Stats,
    execs: usize,
    /// `exec true` through the daemon's REST API into the guest.
    exec_via_daemon: Stats,
}

pub async fn run(args: ExecArgs, data_dir: &Path) -> anyhow::Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    // On the host any build of the agent runs; only the guest needs it static.
    let agent = match args.agent {
        Some(path) => path,
        None => tfc_host::assets::agent::locate(None, &mut |note| eprintln!("{note}"))?
            .with_context(|| {
                format!(
                    "no tfc-agent binary found (looked in {}): run ./scripts/setup-host or pass --agent PATH",
                    tfc_host::assets::agent::candidates()
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?
            .path,
    };
    let scratch = tempfile::Builder::new()
        .prefix("tfc-bench-exec-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    let socket = scratch.path().join("agent.sock");
    let mut child = tokio::process::Command::new(&agent)
        .arg("--unix")
        .arg(&socket)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", agent.display()))?;
    let measured = async {
        let connection = connect(&socket).await?;
        eprintln!(
            "  host transport: {} warm-up + {} measured execs of `true` each way, alternating",
            args.warmup, args.count
        );
        let mut through_agent = Vec::with_capacity(args.count);
        let mut local = Vec::with_capacity(args.count);
        for i in 0..args.warmup + args.count {
            let agent_first = i % 2 == 0;
            let (a, l) = if agent_first {
                let a = exec_via_agent(&connection).await?;
                (a, spawn_locally().await?)
            } else {
                let l = spawn_locally().await?;
                (exec_via_agent(&connection).await?, l)
            };
            if i >= args.warmup {
                through_agent.push(a);
                local.push(l);
            }
        }
        anyhow::Ok((local, through_agent))
    }
    .await;
    // Ours, by PID, whatever happened above.
    let _ = child.start_kill();
    let _ = child.wait().await;
    let (local, through_agent) = measured?;

    let host_transport = Comparison::of(&local, &through_agent);
    let qemu_guest = if args.qemu_boots > 0 {
        Some(guest_lane(args.qemu_boots, args.guest_count, data_dir, scratch.path()).await?)
    } else {
        None
    };
    let report = Report {
        count: args.count,
        agent,
        agent_overhead_median_ms: host_transport.tfc.median_ms - host_transport.raw.median_ms,
        met: host_transport.tfc.median_ms <= TARGET_MEDIAN_MS,
        target_median_ms: TARGET_MEDIAN_MS,
        host_transport,
        qemu_guest,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

async fn connect(socket: &std::path::Path) -> anyhow::Result<AgentConnection> {
    let deadline = Instant::now() + AGENT_START;
    loop {
        match tfc_agent_client::connect_unix(socket).await {
            Ok(connection) => return Ok(connection),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).context("the agent did not start listening")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn exec_via_agent(connection: &AgentConnection) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let output = connection
        .exec_collect(["true"], EXEC_TIMEOUT, OUTPUT_CAP)
        .await
        .context("exec through the agent failed")?;
    let took = started.elapsed();
    if !output.status.success() {
        bail!("`true` through the agent ended with {:?}", output.status);
    }
    Ok(took)
}

async fn spawn_locally() -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = tokio::process::Command::new("true")
        .status()
        .await
        .context("cannot run `true` on the host")?;
    let took = started.elapsed();
    if !status.success() {
        bail!("`true` on the host ended with {status}");
    }
    Ok(took)
}

/// Boots `boots` QEMU guests through a `tfc serve` child and times
/// `execs` execs into the last one.
async fn guest_lane(
    boots: usize,
    execs: usize,
    data_dir: &Path,
    scratch: &Path,
) -> anyhow::Result<GuestReport> {
    if execs == 0 {
        bail!("--guest-count must be at least 1");
    }
    let manifest = tfc_host::assets::load_manifest(data_dir)?;
    // The child daemon's data directory gets the built assets' manifest: its
    // embedded VM type boots the bzImage and the agent's rootfs from it.
    let daemon_dir = scratch.join("daemon");
    let manifest_path = tfc_host::assets::manifest_path(&daemon_dir);
    std::fs::create_dir_all(manifest_path.parent().context("manifest directory")?)?;
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest)?)?;
    let config = format!(
        "[daemon]\nbackend = \"firecracker\"\n[firecracker]\nbinary = {:?}\njailer = false\n[qemu]\nboot_timeout_secs = 300\n",
        manifest.firecracker.path
    );
    eprintln!("  qemu-tcg guest: {boots} boots to agent-ready, then {execs} execs of `true` through the daemon");
    crate::bench::with_daemon_process(&config, scratch, StoreKind::Memory, async |client| {
        let mut ready = Vec::with_capacity(boots);
        let mut last: Option<VmId> = None;
        for _ in 0..boots {
            if let Some(id) = last.take() {
                client.delete_vm(&id, true).await?;
            }
            let request = CreateVmRequest {
                wait: true,
                backend: Some(Vmm::QemuTcg),
                ..CreateVmRequest::default()
            };
            let vm = client.create_vm(&request).await?.value;
            let at_us = vm.timeline.at(BootPhase::AgentReady).with_context(|| {
                format!("VM {} has no agent_ready phase: {:?}", vm.id, vm.failure)
            })?;
            ready.push(Duration::from_micros(at_us));
            last = Some(VmId::new(&vm.id)?);
        }
        let id = last.context("no VM booted")?;
        let request = ExecRequest {
            argv: vec!["true".to_owned()],
            ..ExecRequest::default()
        };
        let mut times = Vec::with_capacity(execs);
        for i in 0..execs + 1 {
            let started = Instant::now();
            let mut events = client.exec(&id, &request).await?;
            let mut exited = false;
            while let Some((line, event)) = events.next_event().await? {
                match event {
                    ExecEvent::Exit { code: Some(0), .. } => exited = true,
                    ExecEvent::Exit { .. } | ExecEvent::Error { .. } => {
                        bail!("`true` in the guest ended with {line}")
                    }
                    _ => {}
                }
            }
            if !exited {
                bail!("the exec's answer ended without an exit");
            }
            // The first exec is a warm-up, not counted: the daemon's
            // connection to the agent is open since readiness, but the
            // guest loads the command's pages from disk on its first run.
            if i > 0 {
                times.push(started.elapsed());
            }
        }
        client.delete_vm(&id, true).await?;
        Ok(GuestReport {
            boots,
            boot_to_agent_ready: Stats::of(&ready),
            execs,
            exec_via_daemon: Stats::of(&times),
        })
    })
    .await
}

fn print_report(r: &Report) {
    let row = |name: &str, s: &Stats| {
        println!(
            "  {name:<28} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            s.min_ms, s.median_ms, s.p99_ms, s.max_ms
        );
    };
    println!(
        "exec round trip, host transport ({} execs, agent {})",
        r.count,
        r.agent.display()
    );
    println!(
        "  {:<28} {:>8} {:>8} {:>8} {:>8}",
        "ms", "min", "median", "p99", "max"
    );
    row("host spawns `true` (raw)", &r.host_transport.raw);
    row("exec `true` via tfc-agent", &r.host_transport.tfc);
    println!(
        "  ratio of medians {:.2}; the agent adds {:.3} ms",
        r.host_transport.ratio, r.agent_overhead_median_ms
    );
    println!(
        "  target: median <= {:.1} ms: {}",
        r.target_median_ms,
        if r.met { "met" } else { "MISSED" }
    );
    if let Some(g) = &r.qemu_guest {
        println!("qemu-tcg guest (software emulation)");
        println!(
            "  {:<28} {:>8} {:>8} {:>8} {:>8}",
            "ms", "min", "median", "p99", "max"
        );
        row(
            &format!("boot to agent_ready (n={})", g.boots),
            &g.boot_to_agent_ready,
        );
        row(
            &format!("exec `true` via daemon (n={})", g.execs),
            &g.exec_via_daemon,
        );
    }
}
