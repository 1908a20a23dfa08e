//! `tfc exec` and `tfc cp`: commands and files in a VM's guest, through the
//! daemon and the guest's agent.
//!
//! `tfc exec` exits with the command's own code, 128+N when signal N ended
//! it, 124 when its `--timeout` killed it, and [`TFC_FAILURE`] when tfc
//! could not run it or lost it (the daemon refused, the VM paused, a
//! connection broke): a message on stderr then says which.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use clap::Args;
use http_body_util::BodyExt;
use tfc_api::{ExecEvent, ExecRequest, ExecStdin, MAX_EXEC_STDIN};
use tfc_core::VmId;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use crate::client::Client;

/// The exit code of `tfc exec` when tfc itself failed: the command did not
/// run, or what became of it is not known.
pub const TFC_FAILURE: u8 = 255;

/// The exit code of a command its `--timeout` killed (as timeout(1) has it).
pub const TIMED_OUT: u8 = 124;

/// Options of `tfc exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The VM's id.
    id: VmId,
    /// Kill the command (its whole process group) after this many seconds.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    timeout: Option<Duration>,
    /// Set an environment variable for the command (repeatable). The
    /// command inherits nothing else but a standard PATH.
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Working directory in the guest.
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// Run as this uid (the agent must run as root).
    #[arg(long = "user", short = 'u', value_name = "UID")]
    user: Option<u32>,
    /// Do not send this process's stdin, even when it is not a terminal.
    #[arg(long, short = 'n')]
    no_stdin: bool,
    /// Print the daemon's events (one JSON object per line) instead of the
    /// command's output.
    #[arg(long)]
    json: bool,
    /// The command and its arguments, after `--`.
    #[arg(required = true, last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds <= 86_400.0 * 365.0 => {
            Ok(Duration::from_secs_f64(seconds))
        }
        _ => Err(format!(
            "{text:?} is not a number of seconds above 0, e.g. 30 or 0.5"
        )),
    }
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

/// Reads what is piped to this process, bounded by what an exec request
/// carries.
fn read_stdin() -> anyhow::Result<Option<ExecStdin>> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_EXEC_STDIN as u64 + 1)
        .read_to_end(&mut bytes)
        .context("cannot read stdin")?;
    if bytes.len() > MAX_EXEC_STDIN {
        bail!(
            "stdin holds more than {MAX_EXEC_STDIN} bytes, more than `tfc exec` sends; copy it \
             into the guest with `tfc cp - ID:PATH` and read it from there, or pass -n"
        );
    }
    Ok((!bytes.is_empty()).then(|| ExecStdin::Base64(BASE64.encode(bytes))))
}

/// Runs `tfc exec` and returns its exit code; `Err` when tfc failed (the
/// caller prints it and exits [`TFC_FAILURE`]).
pub async fn exec(
    args: ExecArgs,
    client: &Client,
    out: &mut impl Write,
    err: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let stdin = if args.no_stdin || std::io::stdin().is_terminal() {
        None
    } else {
        read_stdin()?
    };
    let request = ExecRequest {
        argv: args.command,
        env: args.env.into_iter().collect(),
        cwd: args.cwd,
        stdin,
        timeout_ms: args.timeout.map(|t| t.as_millis().max(1) as u64),
        uid: args.user,
    };
    let mut events = client.exec(&args.id, &request).await?;
    while let Some((line, event)) = events.next_event().await? {
        if args.json {
            writeln!(out, "{line}")?;
            out.flush()?;
        }
        match event {
            ExecEvent::Started { .. } => {}
            ExecEvent::Stdout { data } if !args.json => {
                out.write_all(&decode(&data)?)?;
                out.flush()?;
            }
            ExecEvent::Stderr { data } if !args.json => {
                err.write_all(&decode(&data)?)?;
                err.flush()?;
            }
            ExecEvent::Stdout { .. } | ExecEvent::Stderr { .. } => {}
            ExecEvent::Exit {
                code,
                signal,
                timed_out,
                ..
            } => {
                if timed_out {
                    let after = args.timeout.unwrap_or_default().as_secs_f64();
                    writeln!(
                        err,
                        "tfc: the command was killed after its --timeout of {after} s"
                    )?;
                    return Ok(ExitCode::from(TIMED_OUT));
                }
                return Ok(ExitCode::from(exit_code(code, signal)));
            }
            ExecEvent::Error { message, .. } => {
                bail!("the command's stream ended without its exit: {message}")
            }
        }
    }
    bail!("the daemon's answer ended without the command's exit")
}

fn decode(data: &str) -> anyhow::Result<Vec<u8>> {
    BASE64
        .decode(data)
        .context("the daemon sent output that is not base64")
}

/// A shell's exit code for how a command ended: its own code, or 128+N for
/// signal N.
fn exit_code(code: Option<i32>, signal: Option<i32>) -> u8 {
    match (code, signal) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(signal)) => (128 + (signal & 0x7f)) as u8,
        (None, None) => TFC_FAILURE,
    }
}

/// Options of `tfc cp`.
#[derive(Debug, Args)]
pub struct CpArgs {
    /// What to copy: a local file, `-` for stdin, or ID:PATH in a VM's guest.
    source: String,
    /// Where to: ID:PATH in a VM's guest, or a local path (a directory keeps
    /// the file's name), `-` for stdout.
    destination: String,
    /// Print what was copied as JSON.
    #[arg(long)]
    json: bool,
}

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    Local(PathBuf),
    /// stdin or stdout.
    Stdio,
    Guest(VmId, String),
}

impl Place {
    fn parse(text: &str) -> Place {
        if text == "-" {
            return Place::Stdio;
        }
        // A VM id never holds a `:` or a `/`, so `./a:b` stays a local path.
        if let Some((id, path)) = text.split_once(':') {
            if let Ok(id) = VmId::new(id) {
                return Place::Guest(id, path.to_owned());
            }
        }
        Place::Local(PathBuf::from(text))
    }
}

/// The last component of a path, as a file name.
fn base_name(path: &str) -> Option<&str> {
    path.rsplit('/').next().filter(|name| !name.is_empty())
}

/// Runs `tfc cp`.
pub async fn cp(args: CpArgs, client: &Client, out: &mut impl Write) -> anyhow::Result<()> {
    match (Place::parse(&args.source), Place::parse(&args.destination)) {
        (Place::Guest(..), Place::Guest(..)) => {
            bail!("tfc cp copies between this host and one guest; copy through a local file")
        }
        (from, Place::Guest(id, path)) => upload(from, &id, &path, args.json, client, out).await,
        (Place::Guest(id, path), to) => download(&id, &path, to, args.json, client, out).await,
        _ => bail!("one side of tfc cp must be in a VM's guest, written ID:PATH (e.g. vm-0123456789ab:/etc/hosts)"),
    }
}

async fn upload(
    from: Place,
    id: &VmId,
    path: &str,
    json: bool,
    client: &Client,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (file, name, mode) = match &from {
        Place::Local(local) => {
            let file = std::fs::File::open(local)
                .with_context(|| format!("cannot open {}", local.display()))?;
            let metadata = file
                .metadata()
                .with_context(|| format!("cannot read {}", local.display()))?;
            if !metadata.is_file() {
                bail!("{} is not a regular file", local.display());
            }
            use std::os::unix::fs::PermissionsExt;
            let name = local.file_name().map(|n| n.to_string_lossy().into_owned());
            (file, name, Some(metadata.permissions().mode() & 0o7777))
        }
        // Spooled: the daemon needs the length before the first byte.
        _ => {
            let mut spool = tempfile::tempfile().context("cannot make a temporary file")?;
            std::io::copy(&mut std::io::stdin().lock(), &mut spool).context("cannot read stdin")?;
            std::io::Seek::rewind(&mut spool).context("cannot reread stdin's copy")?;
            (spool, None, None)
        }
    };
    let path = match (path.ends_with('/'), name) {
        (true, Some(name)) => format!("{path}{name}"),
        (true, None) => bail!("{path} names a directory; give the file's name in the guest"),
        (false, _) => path.to_owned(),
    };
    let size = file
        .metadata()
        .context("cannot read the source's size")?
        .len();
    let body = ReaderBody::new(tokio::fs::File::from_std(file), size);
    let written = client.put_file(id, &path, mode, size, body).await?;
    if json {
        crate::output::print_json(out, &written)?;
    }
    Ok(())
}

async fn download(
    id: &VmId,
    path: &str,
    to: Place,
    json: bool,
    client: &Client,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut download = client.get_file(id, path).await?;
    let target = match to {
        Place::Local(local) if local.is_dir() => {
            let name = base_name(path).with_context(|| format!("{path} has no file name"))?;
            Some(local.join(name))
        }
        Place::Local(local) => Some(local),
        _ => None,
    };
    let mut received = 0u64;
    match &target {
        // Written beside the target and renamed into place: a failed copy
        // leaves no part of a file.
        Some(target) => {
            let dir = match target.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            let part = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("cannot write in {}", dir.display()))?;
            let mut file = tokio::fs::File::from_std(part.reopen().context("cannot reopen")?);
            while let Some(frame) = download.body.frame().await {
                let frame = frame.context("the download broke off")?;
                if let Ok(data) = frame.into_data() {
                    received += data.len() as u64;
                    file.write_all(&data).await.context("cannot write")?;
                }
            }
            // Checked before the rename: a body that ended short without an
            // error must not leave a short file in place of the target.
            if download.size.is_some_and(|size| size != received) {
                bail!("the download broke off after {received} bytes; nothing was written");
            }
            file.sync_all().await.context("cannot write")?;
            part.persist(target)
                .with_context(|| format!("cannot write {}", target.display()))?;
        }
        None => {
            while let Some(frame) = download.body.frame().await {
                let frame = frame.context("the download broke off")?;
                if let Ok(data) = frame.into_data() {
                    received += data.len() as u64;
                    out.write_all(&data)?;
                }
            }
            out.flush()?;
        }
    }
    if download.size.is_some_and(|size| size != received) {
        bail!("the download broke off after {received} bytes");
    }
    if json {
        let copied = serde_json::json!({
            "path": path,
            "size": received,
            "mode": download.mode,
            "to": target.map_or_else(|| "-".to_owned(), |t| t.display().to_string()),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&copied)?)?;
    }
    Ok(())
}

/// An upload's body: `size` bytes read from `reader` as the connection
/// takes them.
struct ReaderBody<R> {
    reader: R,
    buffer: Box<[u8]>,
    remaining: u64,
}

impl<R> ReaderBody<R> {
    fn new(reader: R, size: u64) -> Self {
        Self {
            reader,
            buffer: vec![0; 64 * 1024].into_boxed_slice(),
            remaining: size,
        }
    }
}

impl<R: AsyncRead + Unpin> hyper::body::Body for ReaderBody<R> {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = this.buffer.len().min(this.remaining as usize);
        let mut buffer = ReadBuf::new(&mut this.buffer[..want]);
        match Pin::new(&mut this.reader).poll_read(cx, &mut buffer) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(err)) => Poll::Ready(Some(Err(err))),
            Poll::Ready(Ok(())) if buffer.filled().is_empty() => {
                Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was sent",
                ))))
            }
            Poll::Ready(Ok(())) => {
                let data = Bytes::copy_from_slice(buffer.filled());
                this.remaining -= data.len() as u64;
                Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_guest_paths_only_with_a_vm_id() {
        let id = VmId::new("vm-0123456789ab").unwrap();
        assert_eq!(
            Place::parse("vm-0123456789ab:/etc/hosts"),
            Place::Guest(id.clone(), "/etc/hosts".into())
        );
        assert_eq!(Place::parse("-"), Place::Stdio);
        assert_eq!(Place::parse("./a:b"), Place::Local("./a:b".into()));
        assert_eq!(Place::parse("notes.txt"), Place::Local("notes.txt".into()));
        assert_eq!(
            Place::parse("vm-0123456789ab:rel"),
            Place::Guest(id, "rel".into())
        );
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(Some(0), None), 0);
        assert_eq!(exit_code(Some(3), None), 3);
        assert_eq!(exit_code(Some(256 + 7), None), 7);
        assert_eq!(exit_code(None, Some(9)), 137);
        assert_eq!(exit_code(None, Some(15)), 143);
        assert_eq!(exit_code(None, None), TFC_FAILURE);
    }

    #[test]
    fn env_and_timeouts_are_checked() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(parse_env("A=").unwrap(), ("A".into(), String::new()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
        assert_eq!(parse_seconds("0.5").unwrap(), Duration::from_millis(500));
        for bad in ["0", "-1", "soon", "NaN"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }
}
