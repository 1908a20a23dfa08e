//! `tfc vm ...`: one function per subcommand. Each makes its request through
//! [`Client`] and prints either the daemon's JSON (`--json`) or a human view.

use std::io::Write;

use clap::builder::RangedI64ValueParser;
use clap::{Args, Subcommand};
use tfc_api::{CreateSnapshotRequest, CreateVmRequest, SnapshotKind, VmInfo};
use tfc_core::limits::{IoLimit, RateLimits};
use tfc_core::net::{EgressRule, NetConfig, NetMode, PortForward};
use tfc_core::spec::{MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
use tfc_core::{OptimizationLevel, SnapshotId, VmId, VmState, Vmm};

use crate::client::{Client, VmAction};
use crate::output::{now_ms, print_json, Output};
use crate::view;

/// Subcommands of `tfc vm`.
#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// Create a VM and start booting it (or restore a snapshot); prints its id.
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
    /// Snapshot a VM's memory and device state; prints the new snapshot.
    /// Allowed when ready, running or paused.
    Snapshot(SnapshotArgs),
    /// Change a running or paused VM's I/O limits (Firecracker): each option
    /// replaces that limit, --unlimit removes a device's; limits not named are
    /// kept. Prints the limits in force.
    Limit(LimitArgs),
    /// Give back a VM taken with `tfc pool acquire`: it is stopped and removed
    /// (never handed out again) and its pool replaces it.
    Release {
        /// The VM's id, as printed by `tfc pool acquire`.
        id: VmId,
    },
    /// Delete a stopped or failed VM's record and files.
    Rm {
        /// The VM's id, as printed by `tfc vm create` and `tfc vm ls`.
        id: VmId,
        /// Stop the VM first if it is still alive.
        #[arg(long, short)]
        force: bool,
    },
}

/// One VM, and how to print the answer about it.
#[derive(Debug, Args)]
pub struct Target {
    /// The VM's id, as printed by `tfc vm create` and `tfc vm ls`.
    id: VmId,
    #[command(flatten)]
    output: Output,
}

/// Options of `tfc vm create`. Anything left out comes from the VM type, or
/// with `--from-snapshot` from the snapshot.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Restore this snapshot (id or name) instead of booting; answers once the VM runs.
    /// The VM gets the snapshot's type and machine size, so --type, --vcpus, --memory
    /// and --boot-arg cannot be given with it.
    #[arg(long, value_name = "ID_OR_NAME")]
    #[arg(conflicts_with_all = ["vm_type", "vcpus", "memory", "boot_args", "network"])]
    from_snapshot: Option<SnapshotId>,
    /// How to start the VM: standard (cold boot), fast (tuned cold boot), ultra_fast
    /// (restore of the type's template), sub2_second (fastest method measured under
    /// 2 s here), instant (a prewarmed VM from a pool) [default: standard]
    #[arg(long, value_name = "LEVEL")]
    level: Option<OptimizationLevel>,
    /// VM type from the daemon's configuration [default: the configured default type]
    #[arg(long = "type", value_name = "TYPE")]
    vm_type: Option<String>,
    /// The VMM to run it on: firecracker, or qemu-tcg (software emulation: no KVM
    /// needed, slower, no snapshots) [default: the VM type's]
    #[arg(long, value_name = "BACKEND")]
    backend: Option<Vmm>,
    /// Number of vCPUs (1-32) [default: the VM type's]
    #[arg(long, value_name = "N", value_parser = vcpus_range())]
    vcpus: Option<u8>,
    /// Guest memory in MiB (32-65536) [default: the VM type's]
    #[arg(long, value_name = "MIB", value_parser = memory_range())]
    memory: Option<u32>,
    /// Extra kernel argument, appended to the VM type's; repeat for several.
    #[arg(long = "boot-arg", value_name = "ARG")]
    boot_args: Vec<String>,
    /// The VM's network: none, isolated (host <-> VM only) or nat (also egress
    /// through the daemon's uplink) [default: the VM type's]
    #[arg(long, value_name = "MODE", value_parser = net_mode)]
    network: Option<NetMode>,
    /// Forward a port of the host to the VM: HOST_PORT:VM_PORT, optionally
    /// /udp (e.g. 8080:80); repeat for several. Needs --network.
    #[arg(long = "publish", short = 'p', value_name = "HOST:VM[/PROTO]")]
    #[arg(requires = "network")]
    publish: Vec<PortForward>,
    /// Let the VM reach only these destinations (mode nat): TO[:tcp|udp][:PORTS],
    /// e.g. 192.0.2.0/24:tcp:443; repeat for several. Needs --network nat.
    #[arg(long = "allow", value_name = "RULE", requires = "network")]
    allow: Vec<EgressRule>,
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

/// Options of `tfc vm limit`. Rates are per second.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("limits").required(true).multiple(true)))]
pub struct LimitArgs {
    /// The VM's id, as printed by `tfc vm create` and `tfc vm ls`.
    id: VmId,
    /// Bytes per second the guest may receive over its network.
    #[arg(long, value_name = "BYTES", group = "limits")]
    net_rx_bytes: Option<u64>,
    /// Packets per second the guest may receive.
    #[arg(long, value_name = "N", group = "limits")]
    net_rx_ops: Option<u64>,
    /// Bytes per second the guest may send over its network.
    #[arg(long, value_name = "BYTES", group = "limits")]
    net_tx_bytes: Option<u64>,
    /// Packets per second the guest may send.
    #[arg(long, value_name = "N", group = "limits")]
    net_tx_ops: Option<u64>,
    /// Bytes per second of root drive reads and writes.
    #[arg(long, value_name = "BYTES", group = "limits")]
    disk_bytes: Option<u64>,
    /// Root drive requests per second.
    #[arg(long, value_name = "N", group = "limits")]
    disk_ops: Option<u64>,
    /// Remove a device's limits: net-rx, net-tx or disk; repeat for several.
    #[arg(long, value_name = "DEVICE", group = "limits", value_parser = ["net-rx", "net-tx", "disk"])]
    unlimit: Vec<String>,
    #[command(flatten)]
    output: Output,
}

/// Options of `tfc vm snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The VM's id, as printed by `tfc vm create` and `tfc vm ls`.
    id: VmId,
    /// Save only the memory written since the VM's last snapshot (or the restore it
    /// came from); needs a VM type with diff snapshots enabled.
    #[arg(long)]
    diff: bool,
    /// A unique name to refer to the snapshot by, besides its id (a-z, 0-9, '-', '_').
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Leave the VM paused after the snapshot [default: resume it if it was running]
    #[arg(long)]
    no_resume: bool,
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

fn net_mode(value: &str) -> Result<NetMode, String> {
    match value {
        "none" => Ok(NetMode::None),
        "isolated" => Ok(NetMode::Isolated),
        "nat" => Ok(NetMode::Nat),
        _ => Err("use none, isolated or nat".to_owned()),
    }
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
        VmCmd::Snapshot(args) => snapshot(args, client, out).await,
        VmCmd::Limit(args) => limit(args, client, out).await,
        VmCmd::Release { id } => {
            client.release_vm(&id).await?;
            writeln!(out, "{id}: released")?;
            Ok(())
        }
        VmCmd::Rm { id, force } => {
            client.delete_vm(&id, force).await?;
            writeln!(out, "{id}")?;
            Ok(())
        }
    }
}

/// The update `tfc vm limit` sends: a device named by an option gets a
/// limit with the rates given for it (the VM's other rate of that device is
/// kept), and an unlimited one for --unlimit.
fn limit_update(args: &LimitArgs, now: &RateLimits) -> RateLimits {
    let device = |name: &str, old: Option<IoLimit>, bytes: Option<u64>, ops: Option<u64>| {
        if args.unlimit.iter().any(|u| u == name) {
            return Some(IoLimit::default());
        }
        if bytes.is_none() && ops.is_none() {
            return None;
        }
        let old = old.unwrap_or_default();
        Some(IoLimit {
            bytes_per_sec: bytes.or(old.bytes_per_sec),
            ops_per_sec: ops.or(old.ops_per_sec),
            burst_bytes: old.burst_bytes,
        })
    };
    RateLimits {
        net_rx: device("net-rx", now.net_rx, args.net_rx_bytes, args.net_rx_ops),
        net_tx: device("net-tx", now.net_tx, args.net_tx_bytes, args.net_tx_ops),
        disk: device("disk", now.disk, args.disk_bytes, args.disk_ops),
    }
}

async fn limit(args: LimitArgs, client: &Client, out: &mut impl Write) -> anyhow::Result<()> {
    let now = client.get_vm(&args.id).await?.value.spec.rate_limits;
    let answer = client
        .set_rate_limits(&args.id, &limit_update(&args, &now))
        .await?;
    if args.output.json {
        return print_json(out, &answer);
    }
    writeln!(
        out,
        "{}: {}",
        args.id,
        view::rate_limits(&answer.value.spec.rate_limits)
    )?;
    Ok(())
}

async fn create(args: CreateArgs, client: &Client, out: &mut impl Write) -> anyhow::Result<()> {
    let request = CreateVmRequest {
        vm_type: args.vm_type,
        vcpus: args.vcpus,
        memory_mib: args.memory,
        extra_boot_args: (!args.boot_args.is_empty()).then(|| args.boot_args.join(" ")),
        wait: args.wait,
        wait_timeout_ms: args.timeout.map(|secs| secs.saturating_mul(1000)),
        from_snapshot: args.from_snapshot.map(String::from),
        optimization_level: args.level,
        backend: args.backend,
        network: args.network.map(|mode| NetConfig {
            mode,
            egress_allow: (!args.allow.is_empty()).then_some(args.allow),
            port_forwards: args.publish,
        }),
        rate_limits: None,
    };
    let answer = client.create_vm(&request).await?;
    let vm = &answer.value;
    if args.output.json {
        print_json(out, &answer)?;
    } else if args.wait {
        write!(out, "{}", view::created(vm))?;
    } else {
        writeln!(out, "{}", vm.id)?;
        // Stdout stays the id alone for scripts; a level served another way
        // than asked (a fallback) is worth telling the person who asked.
        if let Some(note) = &vm.start.note {
            eprintln!("note: {note}");
        }
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

async fn snapshot(args: SnapshotArgs, client: &Client, out: &mut impl Write) -> anyhow::Result<()> {
    let request = CreateSnapshotRequest {
        kind: if args.diff {
            SnapshotKind::Diff
        } else {
            SnapshotKind::Full
        },
        name: args.name,
        resume: args.no_resume.then_some(false),
    };
    let answer = client.snapshot_vm(&args.id, &request).await?;
    if args.output.json {
        return print_json(out, &answer);
    }
    write!(out, "{}", view::snapshot::taken(&answer.value))?;
    Ok(())
}

fn failure(vm: &VmInfo) -> String {
    let reason = vm
        .failure
        .as_deref()
        .unwrap_or("the daemon recorded no reason");
    format!("VM {} failed: {reason}", vm.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_daemon::answer_once;

    #[test]
    fn vm_limit_changes_the_named_rates_and_keeps_the_rest() {
        let now = RateLimits {
            net_rx: Some(IoLimit {
                bytes_per_sec: Some(1000),
                ops_per_sec: Some(10),
                burst_bytes: Some(5000),
            }),
            net_tx: Some(IoLimit {
                bytes_per_sec: Some(2000),
                ..IoLimit::default()
            }),
            disk: None,
        };
        let args = LimitArgs {
            id: VmId::new("vm-0123456789ab").unwrap(),
            net_rx_bytes: Some(4000),
            net_rx_ops: None,
            net_tx_bytes: None,
            net_tx_ops: None,
            disk_bytes: None,
            disk_ops: Some(100),
            unlimit: vec!["net-tx".to_owned()],
            output: Output { json: false },
        };
        let update = limit_update(&args, &now);
        assert_eq!(
            update.net_rx,
            Some(IoLimit {
                bytes_per_sec: Some(4000),
                ops_per_sec: Some(10),
                burst_bytes: Some(5000),
            })
        );
        assert_eq!(update.net_tx, Some(IoLimit::default()));
        assert_eq!(update.disk.unwrap().ops_per_sec, Some(100));
        let merged = now.merged(&update);
        assert_eq!(merged.net_tx, None);
        assert_eq!(
            view::rate_limits(&merged),
            "net rx 4000 B/s 10 ops/s burst 5000 B, disk 100 ops/s"
        );
        assert_eq!(view::rate_limits(&RateLimits::default()), "none");
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
            from_snapshot: None,
            level: None,
            vm_type: None,
            backend: Some(Vmm::QemuTcg),
            vcpus: Some(2),
            memory: None,
            boot_args: vec!["nokaslr".to_owned(), "loglevel=8".to_owned()],
            network: Some(NetMode::Nat),
            publish: vec!["8080:80".parse().unwrap(), "5353:53/udp".parse().unwrap()],
            allow: vec!["192.0.2.0/24:tcp:443".parse().unwrap()],
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
                "wait": true, "wait_timeout_ms": 5000, "backend": "qemu-tcg",
                "network": {"mode": "nat",
                    "egress_allow": [{"to": "192.0.2.0/24", "protocol": "tcp", "ports": ["443"]}],
                    "port_forwards": [{"host_port": 8080, "vm_port": 80, "protocol": "tcp"},
                                      {"host_port": 5353, "vm_port": 53, "protocol": "udp"}]}
            })
        );
    }

    #[tokio::test]
    async fn a_restore_sends_the_snapshot_and_level_and_prints_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("d.sock");
        let mut vm = failed_vm();
        vm["state"] = "ready".into();
        vm["start"] =
            serde_json::json!({"level": "ultra_fast", "method": "restore", "snapshot": "golden"});
        let server = answer_once(&socket, "201 Created", vm.to_string()).await;
        let args = CreateArgs {
            from_snapshot: Some(SnapshotId::new("golden").unwrap()),
            level: Some(OptimizationLevel::UltraFast),
            vm_type: None,
            backend: None,
            vcpus: None,
            memory: None,
            boot_args: vec![],
            network: None,
            publish: vec![],
            allow: vec![],
            wait: false,
            timeout: None,
            output: Output { json: false },
        };
        let mut out = Vec::new();
        run(VmCmd::Create(args), &Client::new(socket), &mut out)
            .await
            .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "vm-0123456789ab\n");
        let request = server.await.unwrap();
        let body: serde_json::Value =
            serde_json::from_str(request.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "wait": false, "from_snapshot": "golden", "optimization_level": "ultra_fast"
            })
        );
    }

    #[tokio::test]
    async fn a_snapshot_request_carries_kind_name_and_resume() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("d.sock");
        let snapshot = serde_json::json!({
            "id": "snap-0123456789ab", "name": "after-setup", "kind": "diff",
            "state": "ready", "parent": "snap-aaaaaaaaaaaa", "source_vm": "vm-0123456789ab",
            "vm_type": "default", "created_at_ms": 1, "size_bytes": 2_097_152,
            "dir": "/d/snap-0123456789ab",
            "timing": {"pause_us": 200, "create_us": 9_000, "resume_us": 800, "total_us": 10_000}
        });
        let server = answer_once(&socket, "201 Created", snapshot.to_string()).await;
        let args = SnapshotArgs {
            id: VmId::new("vm-0123456789ab").unwrap(),
            diff: true,
            name: Some("after-setup".to_owned()),
            no_resume: true,
            output: Output { json: false },
        };
        let mut out = Vec::new();
        run(VmCmd::Snapshot(args), &Client::new(socket), &mut out)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "snap-0123456789ab\n\
             name:   after-setup\n\
             kind:   diff\n\
             parent: snap-aaaaaaaaaaaa\n\
             size:   2.0MiB on disk\n\
             timing: total 10.0ms (pause 0.2ms, create 9.0ms, resume 0.8ms)\n"
        );
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /v1/vms/vm-0123456789ab/snapshots HTTP/1.1\r\n"),
            "{request}"
        );
        let body: serde_json::Value =
            serde_json::from_str(request.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"kind": "diff", "name": "after-setup", "resume": false})
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
    async fn release_posts_to_the_vm_and_says_it_released_it() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("d.sock");
        let server = answer_once(&socket, "204 No Content", String::new()).await;
        let cmd = VmCmd::Release {
            id: VmId::new("vm-0123456789ab").unwrap(),
        };
        let mut out = Vec::new();
        run(cmd, &Client::new(socket), &mut out).await.unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "vm-0123456789ab: released\n"
        );
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /v1/vms/vm-0123456789ab/release HTTP/1.1\r\n"),
            "{request}"
        );
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
