//! `tfc net ...`: the daemon's per-VM networking: its address pool, the
//! ready network slots and which VM holds which address.

use std::io::Write;

use clap::Subcommand;

use crate::client::Client;
use crate::output::{print_json, Output};
use crate::view;

/// Subcommands of `tfc net`.
#[derive(Debug, Subcommand)]
pub enum NetCmd {
    /// Show the address pool and every VM's lease.
    #[command(visible_alias = "list")]
    Ls {
        #[command(flatten)]
        output: Output,
    },
}

/// Runs one `tfc net` subcommand, printing to `out`.
pub async fn run(cmd: NetCmd, client: &Client, out: &mut impl Write) -> anyhow::Result<()> {
    match cmd {
        NetCmd::Ls { output } => {
            let answer = client.network().await?;
            if output.json {
                return print_json(out, &answer);
            }
            write!(out, "{}", view::net::status(&answer.value))?;
            Ok(())
        }
    }
}
