//! `tfc bench exec`: the guest agent's exec round trip.
//!
//! The host-transport lane runs the real `tfc-agent` as a host process on a
//! Unix socket and times `exec true` through one multiplexed connection, from
//! the request to the exit event. Next to it, in the same run, the baseline
//! is the host spawning and reaping `true` itself: what any exec costs before
//! a protocol is involved. The difference is what the agent adds.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tfc_agent_client::AgentConnection;

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
}

pub async fn run(args: ExecArgs) -> anyhow::Result<()> {
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
    let report = Report {
        count: args.count,
        agent,
        agent_overhead_median_ms: host_transport.tfc.median_ms - host_transport.raw.median_ms,
        met: host_transport.tfc.median_ms <= TARGET_MEDIAN_MS,
        target_median_ms: TARGET_MEDIAN_MS,
        host_transport,
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
}
