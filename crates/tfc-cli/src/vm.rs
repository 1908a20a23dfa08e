//! `tfc vm ...`: one function per subcommand. Each makes its request through
//! [`Client`] and prints either the daemon's JSON (`--json`) or a human view.

use std::io::Write;
use std::time::SystemTime;

use anyhow::Context;
use clap::builder::RangedI64ValueParser;
use clap::{Args, Subcommand};
use tfc_api::{CreateVmRequest, VmInfo};
use tfc_core::spec::{MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
use tfc_core::{VmId, VmState};

use crate::client::{Answer, Client, VmAction};
use crate::view;

/// Subcommands of `tfc vm`.
#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// Create a VM and start booting it; prints its id.
    Create(CreateArgs),
    /// List VMs.
    #[command(visible_alias = "list")]
    Ls {
        #[command(flatten)]
        output: Output,
    },
    /// Show one VM: its spec, state, boot timeline, and why it failed or exited.
    Show(Target),
    /// Pause a VM's vCPUs; its memory is kept. Allowed when ready or running.
    Pause(Target),
    /// Resume a paused VM.
    Resume(Target),
    /// Stop a VM: its VMM process is ended, its record stays until `vm rm`.
    Stop(Target),
    /// Delete a stopped or failed VM's record and files.
    Rm {
        /// The VM's id, as printed by `tfc vm create` and `tfc vm ls`.
        id: VmId,
        /// Stop the VM first if it is still alive.
        #[arg(long, short)]
        force: bool,
    },
}

/// How a command prints its answer.
#[derive(Debug, Args)]
pub struct Output {
    /// Print the daemon's JSON answer instead of a human view.
    #[arg(long)]
    json: bool,
}

/// One VM, and how to print the answer about it.
#[derive(Debug, Args)]
pub struct Target {
    /// The VM's id, as printed by `tfc vm create` and `tfc vm ls`.
    id: VmId,
    #[command(flatten)]
    output: Output,
}

/// Options of `tfc vm create`. Anything left out comes from the VM type.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// VM type from the daemon's configuration [default: the configured default type]
    #[arg(long = "type", value_name = "TYPE")]
    vm_type: Option<String>,
    /// Number of vCPUs (1-32) [default: the VM type's]
    #[arg(long, value_name = "N", value_parser = vcpus_range())]
    vcpus: Option<u8>,
    /// Guest memory in MiB (32-65536) [default: the VM type's]
    #[arg(long, value_name = "MIB", value_parser = memory_range())]
    memory: Option<u32>,
    /// Extra kernel argument, appended to the VM type's; repeat for several.
    #[arg(long = "boot-arg", value_name = "ARG")]
    boot_args: Vec<String>,
    /// Answer once the VM is ready (or has failed), with its boot timeline.
    #[arg(long)]
    wait: bool,
    /// Longest wait for readiness, in seconds [default: the daemon's boot timeout]
    #[arg(long, value_name = "SECS", requires = "wait")]
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    timeout: Option<u64>,
    #[command(flatten)]
    output: Output,
}

// The limits are the domain's, so a value the daemon would refuse is refused
// here, before any request, with the accepted range in the message.
fn vcpus_range() -> RangedI64ValueParser<u8> {
    RangedI64ValueParser::new().range(1..=i64::from(MAX_VCPUS))
}

fn memory_range() -> RangedI64ValueParser<u32> {
    RangedI64ValueParser::new().range(i64::from(MIN_MEMORY_MIB)..=i64::from(MAX_MEMORY_MIB))
}

/// Runs one `tfc vm` subcommand, printing to `out`.
pub async fn run(cmd: VmCmd, client: &Client, out: &mut impl Write) -> anyhow::Result<()> {
    match cmd {
        VmCmd::Create(args) => create(args, client, out).await,
        VmCmd::Ls { output } => {
            let answer = client.list_vms().await?;
            if output.json {
                return print_json(out, &answer);
            }
            write!(out, "{}", view::list(&answer.value.vms, now_ms()))?;
            Ok(())
        }
        VmCmd::Show(target) => {
            let answer = client.get_vm(&target.id).await?;
            if target.output.json {
                return print_json(out, &answer);
            }
            write!(out, "{}", view::detail(&answer.value, now_ms()))?;
            Ok(())
        }
        VmCmd::Pause(target) => act(target, VmAction::Pause, client, out).await,
        VmCmd::Resume(target) => act(target, VmAction::Resume, client, out).await,
        VmCmd::Stop(target) => act(target, VmAction::Stop, client, out).await,
        VmCmd::Rm { id, force } => {
            client.delete_vm(&id, force).await?;
            writeln!(out, "{id}")?;
            Ok(())
        }
    }
}

async fn create(args: CreateArgs, client: &Client, out: &mut impl Write) -> anyhow::Result<()> {
    let request = CreateVmRequest {
        vm_type: args.vm_type,
        vcpus: args.vcpus,
        memory_mib: args.memory,
        extra_boot_args: (!args.boot_args.is_empty()).then(|| args.boot_args.join(" ")),
        wait: args.wait,
        wait_timeout_ms: args.timeout.map(|secs| secs.saturating_mul(1000)),
    };
    let answer = client.create_vm(&request).await?;
    let vm = &answer.value;
    if args.output.json {
        print_json(out, &answer)?;
    } else if args.wait {
        write!(out, "{}", view::created(vm))?;
    } else {
        writeln!(out, "{}", vm.id)?;
    }
    // The daemon answers 201 for a VM that failed to boot: the record is the
    // answer, and it says why. For the caller it is still a failure.
    if vm.state == VmState::Failed {
        anyhow::bail!(failure(vm));
    }
    // A wait that ran out leaves the VM booting; the caller asked for a ready one.
    if args.wait && vm.state != VmState::Ready {
        anyhow::bail!(
            "VM {} is still {} after the wait; it keeps booting (see `tfc vm show {}`)",
            vm.id,
            vm.state,
            vm.id
        );
    }
    Ok(())
}

async fn act(
    target: Target,
    action: VmAction,
    client: &Client,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let answer = client.act(&target.id, action).await?;
    if target.output.json {
        return print_json(out, &answer);
    }
    writeln!(out, "{}: {}", answer.value.id, answer.value.state)?;
    Ok(())
}

fn failure(vm: &VmInfo) -> String {
    let reason = vm
        .failure
        .as_deref()
        .unwrap_or("the daemon recorded no reason");
    format!("VM {} failed: {reason}", vm.id)
}

fn print_json<T>(out: &mut impl Write, answer: &Answer<T>) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(&answer.json).context("cannot format JSON")?;
    writeln!(out, "{text}")?;
    Ok(())
}

fn now_ms() -> u64 {
    // A clock before 1970 shows every VM as created "now"; nothing else depends on it.
    tfc_core::unix_ms(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    use super::*;

    /// Answers the first request on `socket` with `status` and `body`, and
    /// returns the request's head and body as text.
    async fn answer_once(
        socket: &Path,
        status: &'static str,
        body: String,
    ) -> tokio::task::JoinHandle<String> {
        let listener = UnixListener::bind(socket).unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head, then as much body as Content-Length announces.
            let complete = |r: &[u8]| {
                let text = String::from_utf8_lossy(r);
                let Some((head, body)) = text.split_once("\r\n\r\n") else {
                    return false;
                };
                let length = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, n)| n.trim().parse::<usize>().unwrap());
                body.len() >= length
            };
            while !complete(&request) {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "client hung up mid-request");
                request.extend_from_slice(&buf[..n]);
            }
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(response.as_bytes()).await.unwrap();
            String::from_utf8(request).unwrap()
        })
    }

    fn failed_vm() -> serde_json::Value {
        serde_json::json!({
            "id": "vm-0123456789ab",
            "state": "failed",
            "spec": {
                "vm_type": "default", "vcpus": 1, "memory_mib": 128,
                "kernel": "/k", "rootfs": "/r", "boot_args": "console=ttyS0",
                "readiness": {"kind": "console_line", "contains": "Run /init"}
            },
            "created_at_ms": 1, "updated_at_ms": 2,
            "timeline": [{"phase": "spawned", "at_us": 300}],
            "failure": "boot timed out after 180 s",
            "exit": {"signal": 9, "description": "killed by signal 9 (SIGKILL)"},
            "workdir": "/w", "console_log": "/w/console.log",
            "added_by_a_newer_daemon": true
        })
    }

    fn create_args(json: bool) -> CreateArgs {
        CreateArgs {
            vm_type: None,
            vcpus: Some(2),
            memory: None,
            boot_args: vec!["nokaslr".to_owned(), "loglevel=8".to_owned()],
            wait: true,
            timeout: Some(5),
            output: Output { json },
        }
    }

    #[tokio::test]
    async fn a_vm_that_failed_to_boot_is_printed_then_reported_as_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("d.sock");
        let server = answer_once(&socket, "201 Created", failed_vm().to_string()).await;
        let mut out = Vec::new();
        let err = run(
            VmCmd::Create(create_args(false)),
            &Client::new(socket),
            &mut out,
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "VM vm-0123456789ab failed: boot timed out after 180 s"
        );
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with("vm-0123456789ab\nstate:       failed\n"),
            "{out}"
        );
        assert!(out.contains("killed by signal 9"), "{out}");

        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /v1/vms HTTP/1.1\r\n"),
            "{request}"
        );
        let body: serde_json::Value =
            serde_json::from_str(request.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "vcpus": 2, "extra_boot_args": "nokaslr loglevel=8",
                "wait": true, "wait_timeout_ms": 5000
            })
        );
    }

    #[tokio::test]
    async fn json_output_is_the_daemons_document_even_with_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("d.sock");
        let _server = answer_once(&socket, "201 Created", failed_vm().to_string()).await;
        let mut out = Vec::new();
        let err = run(
            VmCmd::Create(create_args(true)),
            &Client::new(socket),
            &mut out,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("failed"), "{err}");
        let printed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(printed, failed_vm());
    }

    #[tokio::test]
    async fn a_non_json_error_answer_is_reported_with_its_status() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("d.sock");
        let _server = answer_once(&socket, "502 Bad Gateway", "upstream broke".into()).await;
        let mut out = Vec::new();
        let err = run(
            VmCmd::Ls {
                output: Output { json: false },
            },
            &Client::new(socket),
            &mut out,
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the tfc daemon answered 502 Bad Gateway with a body that is not an error \
             document: upstream broke"
        );
        assert!(out.is_empty());
    }
}
