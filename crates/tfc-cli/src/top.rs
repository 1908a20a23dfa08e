//! `tfc top`: a live view of the daemon for operators, redrawn every
//! interval: VM counts per state, pools (sizes, acquires, hit rate, hot-tier
//! latencies), active alerts, and the newest VMs with their start times.
//! `tfc alerts`: the daemon's alerts once.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Args;

use crate::client::Client;
use crate::output::{now_ms, print_json, Output};
use crate::view;

/// Options of `tfc top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Seconds between refreshes.
    #[arg(long, short = 'n', default_value_t = 1.0, value_parser = interval)]
    interval: f64,
    /// Print one view and exit (no screen clearing): for scripts and logs.
    #[arg(long)]
    once: bool,
    /// VMs shown, newest first.
    #[arg(long, default_value_t = 20)]
    vms: usize,
}

fn interval(text: &str) -> Result<f64, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(0.1..=3600.0).contains(&secs) {
        return Err("must be between 0.1 and 3600 seconds".to_owned());
    }
    Ok(secs)
}

/// Options of `tfc alerts`.
#[derive(Debug, Args)]
pub struct AlertsArgs {
    #[command(flatten)]
    output: Output,
}

/// Prints the alerts once.
pub async fn alerts(args: AlertsArgs, client: &Client, out: &mut impl Write) -> anyhow::Result<()> {
    let answer = client.alerts().await?;
    if args.output.json {
        return print_json(out, &answer);
    }
    write!(out, "{}", view::alerts::list(&answer.value, now_ms()))?;
    Ok(())
}

/// Redraws the view until interrupted (or once, with `--once`). A daemon
/// that stops answering is shown as such, and the view goes on trying.
pub async fn run(args: TopArgs, client: &Client, out: &mut impl Write) -> anyhow::Result<()> {
    let redraw = !args.once && std::io::stdout().is_terminal();
    loop {
        let frame = match frame(client, args.vms).await {
            Ok(frame) => frame,
            Err(err) if !args.once => format!("cannot reach the daemon: {err:#}\n"),
            Err(err) => return Err(err),
        };
        if redraw {
            // Home, clear the screen.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        write!(out, "{frame}")?;
        out.flush()?;
        if args.once {
            return Ok(());
        }
        if !redraw {
            writeln!(out)?;
        }
        tokio::time::sleep(Duration::from_secs_f64(args.interval)).await;
    }
}

/// One view of the daemon, as text.
async fn frame(client: &Client, max_vms: usize) -> anyhow::Result<String> {
    let (vms, pools, alerts) =
        tokio::try_join!(client.list_vms(), client.list_pools(), client.alerts())?;
    let now = now_ms();
    let mut vms = vms.value.vms;
    let mut states: BTreeMap<&'static str, usize> = BTreeMap::new();
    for vm in &vms {
        *states.entry(vm.state.as_str()).or_default() += 1;
    }
    let counts: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let mut text = format!(
        "tfc top   {}   {} VMs{}   {} active alert{}\n",
        view::utc(now),
        vms.len(),
        if counts.is_empty() {
            String::new()
        } else {
            format!(" ({})", counts.join(", "))
        },
        alerts.value.active.len(),
        if alerts.value.active.len() == 1 {
            ""
        } else {
            "s"
        },
    );
    if !pools.value.pools.is_empty() {
        text.push_str("\nPOOLS\n");
        text.push_str(&view::pool::list(&pools.value.pools));
    }
    if !alerts.value.active.is_empty() {
        text.push_str("\nALERTS\n");
        text.push_str(&view::alerts::list(
            &tfc_api::AlertList {
                active: alerts.value.active,
                recent: Vec::new(),
            },
            now,
        ));
    }
    vms.sort_by(|a, b| (b.created_at_ms, &b.id).cmp(&(a.created_at_ms, &a.id)));
    let shown = vms.len().min(max_vms);
    text.push_str(&format!("\nVMS ({shown} of {}, newest first)\n", vms.len()));
    vms.truncate(shown);
    text.push_str(&view::list(&vms, now));
    Ok(text)
}
