//! `tfc doctor`: what this host can run, and why.

use std::path::Path;

use anyhow::Context;
use clap::Args;
use tfc_core::error_chain;
use tfc_host::probe::{self, boot, CheckStatus, HostReport};

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the full report (with evidence) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Boot the built kernel and rootfs under Firecracker to learn whether
    /// guest userspace runs here (up to 2 minutes; the verdict is cached).
    #[arg(long)]
    pub boot_probe: bool,
}

/// Prints the report; the exit code is 1 when a required check failed (or
/// a requested boot probe could not run), 130 when the boot probe was
/// interrupted (no report then).
pub fn run(args: DoctorArgs, data_dir: &Path) -> anyhow::Result<i32> {
    let mut probe_failed = false;
    if args.boot_probe {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime for the boot probe")?;
        let mut print = |line: &str| eprintln!("{line}");
        let verdict = runtime.block_on(async {
            tokio::select! {
                v = boot::run(data_dir, boot::DEFAULT_TIMEOUT, &mut print) => Some(v),
                () = interrupted() => None,
            }
        });
        let Some(verdict) = verdict else {
            eprintln!("[boot-probe] interrupted; no verdict");
            return Ok(130);
        };
        match verdict {
            Ok(v) => eprintln!(
                "[boot-probe] guest userspace: {} after {:.1} s (init reached: {}): {}",
                v.guest_userspace.as_str(),
                v.seconds_to_verdict,
                v.seconds_to_init
                    .map(|s| format!("{s:.1} s"))
                    .unwrap_or_else(|| "no".to_string()),
                v.evidence
            ),
            Err(e) => {
                probe_failed = true;
                eprintln!("[boot-probe] failed: {}", error_chain(&e));
            }
        }
    }
    let report = probe::probe(data_dir);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(i32::from(report.failed() || probe_failed))
}

fn print_table(r: &HostReport) {
    println!(
        "host kernel {}, kvm {}, recommended profile {}, guest userspace {}",
        r.host_kernel,
        r.kvm.as_str(),
        r.recommended_profile,
        r.guest_userspace.as_str()
    );
    for b in &r.backends {
        if b.usable {
            println!(
                "backend {}: usable, guest userspace {} ({})",
                b.backend,
                b.guest_userspace.as_str(),
                b.summary
            );
        } else {
            println!("backend {}: NOT usable: {}", b.backend, b.summary);
        }
    }
    let name_w = r.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &r.checks {
        println!(
            "{:<name_w$}  {:<7}  {}",
            c.name,
            status_word(c.status),
            c.summary
        );
    }
    let count = |s: CheckStatus| r.checks.iter().filter(|c| c.status == s).count();
    println!(
        "{} ok, {} warn, {} fail, {} unknown (evidence: `tfc doctor --json`)",
        count(CheckStatus::Ok),
        count(CheckStatus::Warn),
        count(CheckStatus::Fail),
        count(CheckStatus::Unknown)
    );
}

fn status_word(s: CheckStatus) -> &'static str {
    match s {
        CheckStatus::Ok => "ok",
        CheckStatus::Warn => "warn",
        CheckStatus::Fail => "FAIL",
        CheckStatus::Unknown => "unknown",
    }
}

/// Resolves on SIGINT or SIGTERM. The probe's Firecracker runs in its own
/// process group, so a Ctrl-C does not reach it: the probe must be dropped
/// (which kills its Firecracker) instead of `tfc` just dying.
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without handlers the default actions apply, as before.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
