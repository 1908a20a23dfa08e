//! Builds the guest assets like `tfc assets build`, then prints the manifest.
//!
//! `cargo run -p tfc-host --example build_assets -- [--data-dir DIR]
//! [--profile default|nested] [--firecracker PATH] [--jailer PATH]`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use tfc_host::assets::{self, BuildOptions};

fn main() -> ExitCode {
    let mut opts = BuildOptions::default();
    let mut data_dir = tfc_host::paths::data_dir();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            eprintln!("{flag} needs a value");
            return ExitCode::from(2);
        };
        match flag.as_str() {
            "--data-dir" => data_dir = PathBuf::from(value),
            "--firecracker" => opts.firecracker = Some(PathBuf::from(value)),
            "--jailer" => opts.jailer = Some(PathBuf::from(value)),
            "--profile" => match value.parse() {
                Ok(p) => opts.profile = Some(p),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("unknown option {flag}");
                return ExitCode::from(2);
            }
        }
    }
    let started = Instant::now();
    match assets::build(&data_dir, &opts, &mut |line| eprintln!("{line}")) {
        Ok(report) => {
            for s in &report.steps {
                eprintln!(
                    "{:<12} {:?} in {:.1} s",
                    s.asset,
                    s.outcome,
                    s.elapsed.as_secs_f64()
                );
            }
            eprintln!(
                "total {:.1} s; manifest {} {}",
                started.elapsed().as_secs_f64(),
                report.manifest_path.display(),
                if report.manifest_written {
                    "written"
                } else {
                    "unchanged"
                }
            );
            match serde_json::to_string_pretty(&report.manifest) {
                Ok(json) => println!("{json}"),
                Err(e) => eprintln!("cannot print the manifest: {e}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
