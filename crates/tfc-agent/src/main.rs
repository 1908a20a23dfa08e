//! `tfc-agent`: parses arguments, starts logging, serves until killed.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tfc_agent::server::{self, AgentConfig};

/// The Terraphim Firecracker guest agent.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Serve on this Unix socket (host-side tests, debugging).
    #[arg(long)]
    unix: PathBuf,
    /// Allow requests that change the machine: the clock, credited entropy.
    /// Only inside a guest; never on a host.
    #[arg(long, conflicts_with = "clock_file")]
    guest: bool,
    /// Host tests only: answer `sync_clock` by writing the requested time
    /// (Unix ns) to this file instead of setting any clock.
    #[arg(long, value_name = "PATH")]
    clock_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = AgentConfig {
        guest: args.guest,
        clock_file: args.clock_file,
    };
    server::serve_unix(&args.unix, config)
        .await
        .with_context(|| format!("serving on {}", args.unix.display()))
}
