//! How a daemon command prints its answer: the daemon's JSON with `--json`,
//! else a human view (see [`crate::view`]) rendered against the current time.

use std::io::Write;
use std::time::SystemTime;

use anyhow::Context;
use clap::Args;

use crate::client::Answer;

/// How a command prints its answer.
#[derive(Debug, Args)]
pub struct Output {
    /// Print the daemon's JSON answer instead of a human view.
    #[arg(long)]
    pub json: bool,
}

/// Prints the document exactly as the daemon sent it, fields this CLI does
/// not know included.
pub fn print_json<T>(out: &mut impl Write, answer: &Answer<T>) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(&answer.json).context("cannot format JSON")?;
    writeln!(out, "{text}")?;
    Ok(())
}

/// "Now" for the views' ages, in Unix milliseconds.
pub fn now_ms() -> u64 {
    // A clock before 1970 shows everything as created "now"; nothing else depends on it.
    tfc_core::unix_ms(SystemTime::now())
}
