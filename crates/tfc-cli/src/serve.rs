//! `tfc serve`: runs the daemon in this process until SIGTERM or SIGINT.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

/// Options of `tfc serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML) [default: the embedded defaults, see --print-default-config]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the embedded default configuration, which documents every key, and exit.
    #[arg(long, conflicts_with = "config")]
    print_default_config: bool,
}

/// The global `--socket` and `--data-dir`, when given.
#[derive(Debug)]
pub struct Overrides {
    pub socket: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
}

/// Serves the API until a shutdown signal, then stops the VMs and returns.
pub fn run(args: ServeArgs, overrides: Overrides, out: &mut impl Write) -> anyhow::Result<()> {
    if args.print_default_config {
        out.write_all(tfc_daemon::config::DEFAULT_CONFIG.as_bytes())?;
        return Ok(());
    }
    // Before the runtime's threads exist: the environment may only change
    // while no other thread can read it.
    let env_token = tfc_daemon::access::take_env_token();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(tfc_daemon::serve(tfc_daemon::ServeOptions {
        config_path: args.config,
        socket: overrides.socket,
        data_dir: overrides.data_dir,
        env_token,
    }))?;
    Ok(())
}
