//! `tfc doctor`: what this host can run, and why.

use std::path::Path;

use clap::Args;
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
/// a requested boot probe could not run).
pub fn run(args: DoctorArgs, data_dir: &Path) -> anyhow::Result<i32> {
    let mut probe_failed = false;
    if args.boot_probe {
        match boot::run(data_dir, boot::DEFAULT_TIMEOUT, &mut |l| eprintln!("{l}")) {
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
                eprintln!("[boot-probe] failed: {}", chain(&e));
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

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}
