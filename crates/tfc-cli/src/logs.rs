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
    /// Print the guest's bytes as they are, control characters included
    /// (by default, on a terminal, they are shown escaped: the guest is
    /// untrusted, and escape sequences could drive the terminal).
    #[arg(long)]
    raw: bool,
}

/// Prints the log to `out`; with `--follow`, polls for more until the VM
/// has stopped (and its last lines are printed) or is deleted.
pub async fn run(args: LogsArgs, client: &Client, out: &mut impl Write) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let escape = !args.raw && std::io::stdout().is_terminal();
    let show = |text: bytes::Bytes| {
        if escape {
            escaped(&text)
        } else {
            text.to_vec()
        }
    };
    let tail = args.tail.map(|n| n as usize);
    let (text, mut offset) = client.logs(&args.id, args.vmm, tail, None).await?;
    out.write_all(&show(text))?;
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
        out.write_all(&show(text))?;
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

/// `text` with every control character but newline and tab shown as `\xNN`
/// (escape sequences included), so that it cannot drive a terminal.
fn escaped(text: &[u8]) -> Vec<u8> {
    let mut shown = Vec::with_capacity(text.len());
    for &byte in text {
        if byte.is_ascii_control() && byte != b'\n' && byte != b'\t' {
            shown.extend_from_slice(format!("\\x{byte:02x}").as_bytes());
        } else {
            shown.push(byte);
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped_but_lines_and_tabs_stay() {
        let text = b"ok\tline\n\x1b]0;owned\x07\x1b[2Jbye\r\n";
        assert_eq!(
            String::from_utf8(escaped(text)).unwrap(),
            "ok\tline\n\\x1b]0;owned\\x07\\x1b[2Jbye\\x0d\n"
        );
        // UTF-8 passes through untouched.
        assert_eq!(escaped("héllo ✓".as_bytes()), "héllo ✓".as_bytes());
    }
}
