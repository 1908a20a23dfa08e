//! `tfc-agent`: parses arguments, starts logging, then runs init (as PID 1
//! or with `--init`) or serves directly.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tfc_agent::server::{self, error_chain, AgentConfig, Endpoint, Listener};
use tfc_agent::supervisor::{self, InitOptions};
use tfc_agent::{init, vsock};

/// The Terraphim Firecracker guest agent. As PID 1 it mounts the guest's
/// filesystems, sets its hostname and network, reaps orphans and serves on
/// vsock port `tfc.agent_port` (kernel command line, default 1024).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Serve on this Unix socket (host-side tests, debugging).
    #[arg(long, conflicts_with = "vsock")]
    unix: Option<PathBuf>,
    /// Serve on this vsock port.
    #[arg(long)]
    vsock: Option<u32>,
    /// Listen on this CID only instead of any (1: the local loopback, so a
    /// test agent is not reachable from outside the machine).
    #[arg(long, requires = "vsock")]
    vsock_cid: Option<u32>,
    /// Allow requests that change the machine: the clock, credited entropy,
    /// the network. Only inside a guest; never on a host. Implied for the
    /// PID 1 of a machine.
    #[arg(long, conflicts_with = "clock_file")]
    guest: bool,
    /// Host tests only: answer `sync_clock` by writing the requested time
    /// (Unix ns) to this file instead of setting any clock.
    #[arg(long, value_name = "PATH", conflicts_with = "init")]
    clock_file: Option<PathBuf>,
    /// Do init's duties (mounts, hostname, network, reaping, restarting the
    /// agent) without being PID 1. Refused unless the agent runs in mount,
    /// UTS and network namespaces of its own.
    #[arg(long)]
    init: bool,
    /// Read the kernel parameters from this file.
    #[arg(long, default_value = "/proc/cmdline")]
    cmdline: PathBuf,
}

impl Args {
    /// What PID 1 runs with when the kernel handed it arguments it does not
    /// understand (the words of the kernel command line it does not know).
    fn pid1_defaults() -> Self {
        Args {
            unix: None,
            vsock: None,
            vsock_cid: None,
            guest: false,
            clock_file: None,
            init: false,
            cmdline: PathBuf::from("/proc/cmdline"),
        }
    }

    fn endpoint(&self) -> Option<Endpoint> {
        if let Some(path) = &self.unix {
            return Some(Endpoint::Unix(path.clone()));
        }
        self.vsock.map(|port| Endpoint::Vsock {
            cid: self.vsock_cid.unwrap_or(vsock::CID_ANY),
            port,
        })
    }
}

fn start_logging(init_mode: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    if init_mode {
        // On the console: a guest's clock is wrong until the host syncs it,
        // so the time is the agent's own, from its start.
        log.with_timer(tracing_subscriber::fmt::time::uptime())
            .with_target(false)
            .init();
    } else {
        log.init();
    }
}

fn main() -> ExitCode {
    // The clock the serving line's "after start" counts from.
    tfc_agent::system::started();
    let pid1 = init::own_pid() == 1;
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if pid1 => {
            eprintln!("tfc-agent: ignoring the arguments init was given: {e}");
            Args::pid1_defaults()
        }
        Err(e) => e.exit(),
    };
    start_logging(pid1 || args.init);
    let endpoint = args.endpoint();

    if pid1 || args.init {
        let options = InitOptions {
            endpoint,
            guest: args.guest,
            cmdline: args.cmdline,
        };
        return match supervisor::run(options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{}", error_chain(&e));
                if pid1 && init::in_initial_pid_namespace() {
                    // Exiting would panic the kernel; the console has the reason.
                    supervisor::reap_forever();
                }
                ExitCode::FAILURE
            }
        };
    }

    let Some(endpoint) = endpoint else {
        eprintln!("tfc-agent: say where to serve: --unix PATH or --vsock PORT");
        return ExitCode::from(2);
    };
    let config = AgentConfig {
        guest: args.guest,
        clock_file: args.clock_file,
        init: None,
    };
    match Listener::bind(&endpoint).and_then(|listener| server::run(listener, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
