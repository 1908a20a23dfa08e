//! `tfc logs ID`: a VM's serial console (or its VMM's log), whole, its last
//! lines, or followed as it grows.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use tfc_core::{VmId, VmState};

use crate::client::Client;

/// How often `--follow` asks for what is new.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

/// Options of `tfc logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    id: VmId,
    /// Only the last N lines.
    #[arg(long, short = 'n', value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    tail: Option<u64>,
    /// Keep printing what is written, until the VM stops or Ctrl-C.
    #[arg(long, short = 'f')]
    follow: bool,
    /// The VMM's own log (Firecracker's log file, QEMU's stderr) instead of
    /// the guest's serial console.
    #[arg(long)]
    vmm: bool,
}

/// Prints the log to `out`; with `--follow`, polls for more until the VM
/// has stopped (and its last lines are printed) or is deleted.
pub async fn run(args: LogsArgs, client: &Client, out: &mut impl Write) -> anyhow::Result<()> {
    let tail = args.tail.map(|n| n as usize);
    let (text, mut offset) = client.logs(&args.id, args.vmm, tail, None).await?;
    out.write_all(&text)?;
    out.flush()?;
    if !args.follow {
        return Ok(());
    }
    loop {
        // Checked before the read, so the lines a VM wrote before it
        // stopped are still printed.
        let ended = matches!(
            client.get_vm(&args.id).await?.value.state,
            VmState::Stopped | VmState::Failed
        );
        let (text, next) = client.logs(&args.id, args.vmm, None, Some(offset)).await?;
        out.write_all(&text)?;
        out.flush()?;
        offset = next;
        if ended {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
