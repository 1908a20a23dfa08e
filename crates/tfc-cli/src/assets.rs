//! `tfc assets build|status`: guest assets under `<data_dir>/assets/`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use tfc_host::assets::{self, AssetState, BuildOptions, StepOutcome};
use tfc_host::profile::Profile;

#[derive(Debug, Subcommand)]
pub enum AssetsCmd {
    /// Build firecracker/jailer, the guest kernel and the rootfs (cached: a
    /// second run only checks hashes).
    Build(BuildArgs),
    /// Show each asset as present, missing or stale.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Guest profile: `default` (real KVM) or `nested` (kvm_pvm hosts).
    /// Without it, the host probe decides.
    #[arg(long, value_name = "default|nested")]
    pub profile: Option<Profile>,
    /// Use this firecracker binary instead of searching PATH or downloading.
    #[arg(long, value_name = "PATH")]
    pub firecracker: Option<PathBuf>,
    /// Use this jailer binary instead of searching PATH or downloading.
    #[arg(long, value_name = "PATH")]
    pub jailer: Option<PathBuf>,
    /// Bake this static guest agent into the rootfs instead of looking beside
    /// `tfc` and in Cargo's musl target directory.
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
    /// Also build the Debian 12 image (debootstrap minbase with the agent as
    /// init; needs root and the Debian mirror). Once built, later builds keep
    /// it up to date.
    #[arg(long)]
    pub debian: bool,
    /// Print the resulting manifest as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: AssetsCmd, data_dir: &Path) -> anyhow::Result<()> {
    match cmd {
        AssetsCmd::Build(args) => build(args, data_dir),
        AssetsCmd::Status { json } => status(json, data_dir),
    }
}

fn build(args: BuildArgs, data_dir: &Path) -> anyhow::Result<()> {
    let opts = BuildOptions {
        profile: args.profile,
        firecracker: args.firecracker,
        jailer: args.jailer,
        agent: args.agent,
        debian: args.debian,
        ..BuildOptions::default()
    };
    // Progress goes to stderr so that `--json` output stays parseable.
    let report = assets::build(data_dir, &opts, &mut |line| eprintln!("{line}"))
        .context("tfc assets build failed")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.manifest)?);
        return Ok(());
    }
    for step in &report.steps {
        let outcome = match step.outcome {
            StepOutcome::Cached => "cached",
            StepOutcome::Built => "built",
        };
        println!(
            "{:<12} {outcome:<7} {:>6.1} s",
            step.asset,
            step.elapsed.as_secs_f64()
        );
    }
    let m = &report.manifest;
    println!(
        "profile {}: {}, kernel {}, rootfs {}",
        m.profile,
        m.firecracker.version,
        m.kernel.vmlinux.display(),
        m.rootfs.path.display()
    );
    println!(
        "manifest {} ({})",
        report.manifest_path.display(),
        if report.manifest_written {
            "written"
        } else {
            "unchanged"
        }
    );
    Ok(())
}

fn status(json: bool, data_dir: &Path) -> anyhow::Result<()> {
    let report = assets::status(data_dir);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let name_w = report.items.iter().map(|i| i.name.len()).max().unwrap_or(0);
    for item in &report.items {
        let state = match item.state {
            AssetState::Present => "present",
            AssetState::Missing => "MISSING",
            AssetState::Stale => "STALE",
        };
        let size = item.size_bytes.map(human_size).unwrap_or_default();
        println!(
            "{:<name_w$}  {state:<7}  {size:>9}  {}",
            item.name,
            item.path.display()
        );
        if !item.detail.is_empty() {
            println!("{:<name_w$}  {:<7}  {:>9}  {}", "", "", "", item.detail);
        }
    }
    if !report.ready() {
        println!("assets are not ready: run `tfc assets build`");
    }
    Ok(())
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(64 * 1024 * 1024), "64.0 MiB");
        assert_eq!(human_size(17_500_000), "16.7 MiB");
    }
}
