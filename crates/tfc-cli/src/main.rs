//! `tfc`: the command-line face of Terraphim Firecracker. `tfc serve` runs the
//! daemon; every other command is a client of its API on the Unix socket, or a
//! host-side tool (`doctor`, `assets`) that needs no daemon.
//!
//! Layout:
//! - [`client`]: typed client of the daemon's REST API over its Unix socket.
//! - [`vm`]: `tfc vm ...`, the VM lifecycle commands (and taking snapshots).
//! - [`snapshot`]: `tfc snapshot ...`, the snapshot catalog.
//! - [`template`]: `tfc template ...`, VM types' golden snapshots and start times.
//! - [`pool`]: `tfc pool ...`, VM types' pools of prewarmed VMs.
//! - [`guest`]: `tfc exec` and `tfc cp`, commands and files in a VM's guest.
//! - [`top`]: `tfc top`, a live view for operators, and `tfc alerts`.
//! - [`logs`]: `tfc logs`, a VM's console or VMM log, tailed or followed.
//! - [`output`]: `--json` or a human view, for every command that asks the daemon.
//! - [`view`]: human views of VMs, snapshots, templates and pools.
//! - [`table`]: column-aligned text.
//! - [`serve`]: `tfc serve`, the daemon in this process.
//! - [`doctor`]: `tfc doctor`, checks that this host can run VMs.
//! - [`assets`]: `tfc assets`, the kernel, root filesystem and Firecracker binary.
//! - [`bench`]: `tfc bench`, raw Firecracker vs tfc, measured in the same run
//!   (`bench_restore`, `bench_pool`, `bench_exec` for the other subcommands).
//! - `fake_daemon` (tests only): a one-shot stand-in for the daemon's socket;
//!   `net_testing` (tests only): the network tests' helpers, from tfc-net.

mod assets;
mod bench;
mod bench_exec;
mod bench_net;
mod bench_pool;
mod bench_restore;
mod client;
mod doctor;
#[cfg(test)]
mod fake_daemon;
mod guest;
mod logs;
mod net;
/// The network tests' shared helpers (a private namespace for TCP tests).
#[cfg(test)]
#[path = "../../tfc-net/tests/common/mod.rs"]
mod net_testing;
mod output;
mod pool;
mod serve;
mod snapshot;
mod table;
mod template;
mod top;
mod view;
mod vm;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Help heading of the options every command takes.
const GLOBAL: &str = "Global options";

/// Manage Firecracker microVMs.
#[derive(Debug, Parser)]
#[command(name = "tfc", version)]
struct Cli {
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Data directory (assets, VM directories) [default: $TFC_DATA_DIR, else /var/lib/tfc
    /// as root, else ~/.local/share/tfc]
    #[arg(long, global = true, value_name = "DIR", help_heading = GLOBAL)]
    data_dir: Option<PathBuf>,
    /// Log filter, e.g. `debug` or `tfc_daemon=debug` [default: $RUST_LOG, else `info`
    /// for serve and `warn` otherwise]
    #[arg(long, global = true, value_name = "FILTER", help_heading = GLOBAL)]
    log_level: Option<String>,
    /// Log format: `text` for people, `json` (one object per line, with the
    /// request's and VM's span fields) for log collectors
    #[arg(long, global = true, value_enum, env = "TFC_LOG_FORMAT", default_value = "text", help_heading = GLOBAL)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// Where the daemon is and how to prove the right to use it.
#[derive(Debug, clap::Args)]
struct DaemonArgs {
    /// The daemon's API socket [default: $TFC_SOCKET, else /run/tfc/tfc.sock as root,
    /// else $XDG_RUNTIME_DIR/tfc/tfc.sock]
    #[arg(long, global = true, value_name = "PATH", help_heading = GLOBAL)]
    socket: Option<PathBuf>,
    /// Reach a daemon's TCP listener (its `api.tcp`) instead of the socket:
    /// http://HOST:PORT, or https://HOST:PORT with --ca-cert
    #[arg(long, global = true, env = "TFC_HOST", value_name = "URL", help_heading = GLOBAL,
          conflicts_with = "socket")]
    host: Option<String>,
    /// File holding the API token for --host (the daemon's `api.token_file`)
    #[arg(long, global = true, env = "TFC_TOKEN_FILE", value_name = "FILE", help_heading = GLOBAL)]
    token_file: Option<PathBuf>,
    /// The API token for --host; prefer TFC_TOKEN or --token-file, which other
    /// users cannot see in the process list
    #[arg(long, global = true, env = "TFC_TOKEN", hide_env_values = true, value_name = "TOKEN",
          help_heading = GLOBAL, conflicts_with = "token_file")]
    token: Option<String>,
    /// PEM certificate an https --host must present, or the CA that signed it
    #[arg(long, global = true, env = "TFC_CA_CERT", value_name = "FILE", help_heading = GLOBAL)]
    ca_cert: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: own this host's VMs and serve the API on the socket.
    Serve(serve::ServeArgs),
    /// Create, inspect and control VMs (needs `tfc serve`).
    #[command(subcommand)]
    Vm(vm::VmCmd),
    /// List, inspect and delete snapshots (needs `tfc serve`).
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCmd),
    /// Build VM types' templates and see how fast their VMs start (needs `tfc serve`).
    #[command(subcommand)]
    Template(template::TemplateCmd),
    /// Acquire prewarmed VMs and size VM types' pools (needs `tfc serve`).
    #[command(subcommand)]
    Pool(pool::PoolCmd),
    /// Show the daemon's VM networking: address pool, leases (needs `tfc serve`).
    #[command(subcommand)]
    Net(net::NetCmd),
    /// A live view of the daemon: VMs, pools, alerts, start times (needs `tfc serve`).
    Top(top::TopArgs),
    /// Show missed performance targets: active alerts and those cleared lately
    /// (needs `tfc serve`).
    Alerts(top::AlertsArgs),
    /// Run a command in a VM's guest through its agent, streaming its output;
    /// exits with the command's code (128+N for signal N, 124 for --timeout,
    /// 255 when tfc could not run it). Needs `tfc serve`.
    #[command(after_help = "Example: tfc exec vm-0123456789ab --timeout 30 -- uname -a")]
    Exec(guest::ExecArgs),
    /// Copy a file into or out of a VM's guest: `tfc cp LOCAL ID:PATH` (keeps
    /// the file's mode) or `tfc cp ID:PATH LOCAL`; `-` is stdin or stdout.
    /// Needs `tfc serve`.
    Cp(guest::CpArgs),
    /// Print a VM's serial console (or with --vmm its VMM's log); --tail N
    /// for the last lines, --follow to keep printing. Needs `tfc serve`.
    Logs(logs::LogsArgs),
    /// Check that this host can run Firecracker VMs.
    Doctor(doctor::DoctorArgs),
    /// Build or inspect the kernel, root filesystem and Firecracker binary.
    #[command(subcommand)]
    Assets(assets::AssetsCmd),
    /// Measure tfc against raw Firecracker on this host (needs built assets).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Print the socket and data directory this invocation would use.
    Paths {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", render_error(&err));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    init_logging(cli.log_level.as_deref(), default_level, cli.log_format)?;
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(tfc_host::paths::data_dir);
    let mut stdout = std::io::stdout();
    match cli.command {
        Command::Serve(args) => {
            let overrides = serve::Overrides {
                socket: cli.daemon.socket,
                data_dir: cli.data_dir,
            };
            serve::run(args, overrides, &mut stdout)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Vm(cmd) => {
            let (runtime, client) = daemon_client(&cli.daemon)?;
            runtime.block_on(vm::run(cmd, &client, &mut stdout))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot(cmd) => {
            let (runtime, client) = daemon_client(&cli.daemon)?;
            runtime.block_on(snapshot::run(cmd, &client, &mut stdout))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Template(cmd) => {
            let (runtime, client) = daemon_client(&cli.daemon)?;
            runtime.block_on(template::run(cmd, &client, &mut stdout))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pool(cmd) => {
            let (runtime, client) = daemon_client(&cli.daemon)?;
            runtime.block_on(pool::run(cmd, &client, &mut stdout))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Net(cmd) => {
            let (runtime, client) = daemon_client(&cli.daemon)?;
            runtime.block_on(net::run(cmd, &client, &mut stdout))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Top(args) => {
            let (runtime, client) = daemon_client(&cli.daemon)?;
            runtime.block_on(top::run(args, &client, &mut stdout))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Alerts(args) => {
            let (runtime, client) = daemon_client(&cli.daemon)?;
            runtime.block_on(top::alerts(args, &client, &mut stdout))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec(args) => {
            let (runtime, client) = daemon_client(&cli.daemon)?;
            let mut stderr = std::io::stderr();
            match runtime.block_on(guest::exec(args, &client, &mut stdout, &mut stderr)) {
                Ok(code) => Ok(code),
                // Not 1: that is as likely the command's own code.
                Err(err) => {
                    eprintln!("error: {}", render_error(&err));
                    Ok(ExitCode::from(guest::TFC_FAILURE))
                }
            }
        }
        Command::Cp(args) => {
            let (runtime, client) = daemon_client(&cli.daemon)?;
            runtime.block_on(guest::cp(args, &client, &mut stdout))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs(args) => {
            let (runtime, client) = daemon_client(&cli.daemon)?;
            runtime.block_on(logs::run(args, &client, &mut stdout))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor(args) => {
            let code = doctor::run(args, &data_dir)?;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Command::Assets(cmd) => {
            assets::run(cmd, &data_dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(cmd) => {
            let runtime = cmd.runtime().context("cannot start the async runtime")?;
            runtime.block_on(bench::run(cmd, &data_dir))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Paths { json } => {
            let socket = cli
                .daemon
                .socket
                .unwrap_or_else(tfc_host::paths::socket_path);
            if json {
                let paths = serde_json::json!({"socket": socket, "data_dir": data_dir});
                println!("{}", serde_json::to_string_pretty(&paths)?);
            } else {
                println!("socket:   {}", socket.display());
                println!("data_dir: {}", data_dir.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The client of the daemon at `--host` (with its token), else at
/// `--socket` (or the default socket), and the runtime to drive it: one
/// request at a time, so one thread.
fn daemon_client(cli: &DaemonArgs) -> anyhow::Result<(tokio::runtime::Runtime, client::Client)> {
    let client = match &cli.host {
        Some(host) => {
            let token = match (&cli.token, &cli.token_file) {
                (Some(token), _) => Some(token.trim().to_owned()),
                (None, Some(file)) => Some(read_token(file)?),
                (None, None) => None,
            };
            client::Client::remote(host, token, cli.ca_cert.as_deref())?
        }
        None => {
            let socket = cli
                .socket
                .clone()
                .unwrap_or_else(tfc_host::paths::socket_path);
            client::Client::new(socket)
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok((runtime, client))
}

/// The token in `file`, without surrounding whitespace.
fn read_token(file: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the token file {}", file.display()))?;
    let token = text.trim();
    anyhow::ensure!(
        !token.is_empty(),
        "the token file {} is empty",
        file.display()
    );
    Ok(token.to_owned())
}

/// Logs go to stderr, filtered by `--log-level`, else `RUST_LOG`, else `default`.
fn init_logging(flag: Option<&str>, default: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = match (flag, std::env::var("RUST_LOG")) {
        (Some(flag), _) => {
            EnvFilter::try_new(flag).with_context(|| format!("invalid --log-level {flag:?}"))?
        }
        (None, Ok(env)) if !env.is_empty() => {
            EnvFilter::try_new(&env).with_context(|| format!("invalid RUST_LOG {env:?}"))?
        }
        (None, _) => EnvFilter::new(default),
    };
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => log.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => log
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
    Ok(())
}

/// One line: what failed, then every cause once, in parentheses:
/// `cannot reach the tfc daemon at /x: is ... running? (No such file ...)`.
fn render_error(err: &anyhow::Error) -> String {
    let mut chain = err.chain().map(ToString::to_string);
    let mut line = chain.next().unwrap_or_default();
    let causes: Vec<String> = chain.collect();
    if !causes.is_empty() {
        line.push_str(&format!(" ({})", causes.join(": ")));
    }
    line
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn an_error_chain_is_printed_once_on_one_line() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let err = anyhow::Error::new(io).context("cannot reach the tfc daemon at /s");
        assert_eq!(
            render_error(&err),
            "cannot reach the tfc daemon at /s (entity not found)"
        );
        let err = anyhow::Error::new(std::io::Error::other("inner"))
            .context("middle")
            .context("outer");
        assert_eq!(render_error(&err), "outer (middle: inner)");
        assert_eq!(render_error(&anyhow::anyhow!("alone")), "alone");
    }

    #[test]
    fn timeout_needs_wait_and_vcpus_has_limits() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(args)
                .map(drop)
                .map_err(|e| e.to_string())
        };
        let err = parse(&["tfc", "vm", "create", "--timeout", "5"]).unwrap_err();
        assert!(err.contains("--wait"), "{err}");
        let err = parse(&["tfc", "vm", "create", "--vcpus", "0"]).unwrap_err();
        assert!(err.contains("--vcpus") && err.contains("1..=32"), "{err}");
        let err = parse(&["tfc", "vm", "show", "../healthz"]).unwrap_err();
        assert!(err.contains("may contain only"), "{err}");
        parse(&[
            "tfc",
            "--socket",
            "/s",
            "vm",
            "create",
            "--wait",
            "--timeout",
            "5",
            "--json",
        ])
        .unwrap();
    }

    #[test]
    fn a_restore_takes_its_machine_from_the_snapshot() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(args)
                .map(drop)
                .map_err(|e| e.to_string())
        };
        for flag in [
            &["--type", "default"][..],
            &["--vcpus", "2"],
            &["--memory", "512"],
            &["--boot-arg", "quiet"],
        ] {
            let mut args = vec!["tfc", "vm", "create", "--from-snapshot", "golden"];
            args.extend(flag);
            let err = parse(&args).unwrap_err();
            assert!(
                err.contains("'--from-snapshot <ID_OR_NAME>' cannot be used with")
                    && err.contains(flag[0]),
                "{err}"
            );
        }
        parse(&[
            "tfc",
            "vm",
            "create",
            "--from-snapshot",
            "golden",
            "--level",
            "ultra_fast",
            "--json",
        ])
        .unwrap();
        let err = parse(&["tfc", "snapshot", "show", "../healthz"]).unwrap_err();
        assert!(err.contains("may contain only"), "{err}");
        let err = parse(&["tfc", "template", "build", "Default"]).unwrap_err();
        assert!(err.contains("may contain only"), "{err}");
    }

    #[test]
    fn a_resize_needs_a_size_and_pool_commands_check_the_type() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(args)
                .map(drop)
                .map_err(|e| e.to_string())
        };
        let err = parse(&["tfc", "pool", "resize", "small"]).unwrap_err();
        assert!(
            err.contains("--target") && err.contains("--running"),
            "{err}"
        );
        let err = parse(&["tfc", "pool", "resize", "small", "--target", "-1"]).unwrap_err();
        assert!(err.contains("--target"), "{err}");
        let err = parse(&["tfc", "pool", "acquire", "../vms"]).unwrap_err();
        assert!(err.contains("may contain only"), "{err}");
        parse(&["tfc", "pool", "resize", "small", "--min", "1", "--max", "4"]).unwrap();
        parse(&[
            "tfc",
            "pool",
            "acquire",
            "small",
            "--wait-ms",
            "50",
            "--json",
        ])
        .unwrap();
    }

    #[test]
    fn levels_are_named_in_the_help_and_checked() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(args)
                .map(drop)
                .map_err(|e| e.to_string())
        };
        let err = parse(&["tfc", "vm", "create", "--level", "turbo"]).unwrap_err();
        assert!(
            err.contains("unknown optimization level \"turbo\"")
                && err.contains("standard, fast, ultra_fast, sub2_second or instant"),
            "{err}"
        );
        let mut cmd = Cli::command();
        let create = cmd
            .find_subcommand_mut("vm")
            .and_then(|vm| vm.find_subcommand_mut("create"))
            .unwrap();
        let help = create.render_long_help().to_string();
        for level in tfc_core::OptimizationLevel::ALL {
            assert!(
                help.contains(level.as_str()),
                "{level} missing from:\n{help}"
            );
        }
    }
}
