//! `tfc pool ...`: each VM type's pool of prewarmed VMs. An acquire hands out
//! a running VM that is the caller's alone; `tfc vm release` gives it back
//! (it is removed, never reused) and the pool replaces it.

use std::io::Write;

use clap::{ArgGroup, Args, Subcommand};
use tfc_api::{AcquireRequest, ResizePoolRequest};
use tfc_core::VmTypeName;

use crate::client::Client;
use crate::output::{now_ms, print_json, Output};
use crate::view;

/// Subcommands of `tfc pool`.
#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// List VM types' pools: VMs waiting per tier, acquires served and how fast.
    #[command(visible_alias = "list")]
    Ls {
        #[command(flatten)]
        output: Output,
    },
    /// Show one pool: its sizes, configuration, counters and per-tier latencies.
    Show {
        /// VM type from the daemon's configuration.
        #[arg(value_name = "TYPE")]
        vm_type: VmTypeName,
        #[command(flatten)]
        output: Output,
    },
    /// Take a running VM from a pool; prints its id, the tier that served it and
    /// how long it took. Give it back with `tfc vm release ID`.
    Acquire(AcquireArgs),
    /// Change a pool's targets; it fills or sheds VMs to them in the background.
    Resize(ResizeArgs),
}

/// Options of `tfc pool acquire`.
#[derive(Debug, Args)]
pub struct AcquireArgs {
    /// VM type from the daemon's configuration.
    #[arg(value_name = "TYPE")]
    vm_type: VmTypeName,
    /// Longest the acquire may take, in milliseconds; when no tier can serve in
    /// time the daemon refuses and says when to retry [default: the pool's
    /// acquire_timeout_ms]
    #[arg(long, value_name = "MS")]
    wait_ms: Option<u64>,
    #[command(flatten)]
    output: Output,
}

/// Options of `tfc pool resize`; the daemon checks that
/// `min <= target <= max` still holds.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("size").required(true).multiple(true)))]
pub struct ResizeArgs {
    /// VM type from the daemon's configuration.
    #[arg(value_name = "TYPE")]
    vm_type: VmTypeName,
    /// Hot tier: paused VMs to keep waiting.
    #[arg(long, value_name = "N", group = "size")]
    target: Option<u32>,
    /// Lowest hot target autoscaling may set.
    #[arg(long, value_name = "N", group = "size")]
    min: Option<u32>,
    /// Highest hot target autoscaling may set.
    #[arg(long, value_name = "N", group = "size")]
    max: Option<u32>,
    /// Running tier: running VMs to keep waiting (each costs an idle guest's CPU).
    #[arg(long, value_name = "N", group = "size")]
    running: Option<u32>,
    #[command(flatten)]
    output: Output,
}

/// Runs one `tfc pool` subcommand, printing to `out`.
pub async fn run(cmd: PoolCmd, client: &Client, out: &mut impl Write) -> anyhow::Result<()> {
    match cmd {
        PoolCmd::Ls { output } => {
            let answer = client.list_pools().await?;
            if output.json {
                return print_json(out, &answer);
            }
            write!(out, "{}", view::pool::list(&answer.value.pools))?;
        }
        PoolCmd::Show { vm_type, output } => {
            let answer = client.get_pool(&vm_type).await?;
            if output.json {
                return print_json(out, &answer);
            }
            write!(out, "{}", view::pool::detail(&answer.value, now_ms()))?;
        }
        PoolCmd::Acquire(args) => {
            let request = AcquireRequest {
                wait_ms: args.wait_ms,
            };
            let answer = client.acquire(&args.vm_type, &request).await?;
            if args.output.json {
                return print_json(out, &answer);
            }
            write!(out, "{}", view::pool::acquired(&answer.value))?;
        }
        PoolCmd::Resize(args) => {
            let request = ResizePoolRequest {
                target: args.target,
                min: args.min,
                max: args.max,
                running: args.running,
            };
            let answer = client.resize_pool(&args.vm_type, &request).await?;
            if args.output.json {
                return print_json(out, &answer);
            }
            write!(out, "{}", view::pool::resized(&answer.value))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_daemon::{answer_once, answer_once_with};

    fn vm_type(name: &str) -> VmTypeName {
        VmTypeName::new(name).unwrap()
    }

    /// A running VM handed out from the hot tier.
    fn acquired_vm() -> serde_json::Value {
        serde_json::json!({
            "id": "vm-0123456789ab",
            "state": "running",
            "spec": {
                "vm_type": "small", "vcpus": 1, "memory_mib": 128,
                "kernel": "/k", "rootfs": "/r", "boot_args": "console=ttyS0",
                "readiness": {"kind": "console_line", "contains": "Run /init"}
            },
            "created_at_ms": 1, "updated_at_ms": 2,
            "timeline": [{"phase": "snapshot_loaded", "at_us": 9000}],
            "workdir": "/w", "console_log": "/w/console.log",
            "start": {"level": "instant", "method": "pool", "snapshot": "snap-0123456789ab"},
            "pool": {"tier": "hot", "acquired_at_ms": 5, "acquire_us": 1234}
        })
    }

    fn body(request: &str) -> serde_json::Value {
        serde_json::from_str(request.split_once("\r\n\r\n").unwrap().1).unwrap()
    }

    #[tokio::test]
    async fn acquire_sends_the_wait_and_prints_id_tier_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("d.sock");
        let answer = serde_json::json!({"vm": acquired_vm(), "tier": "hot", "acquire_us": 1234});
        let server = answer_once(&socket, "200 OK", answer.to_string()).await;
        let cmd = PoolCmd::Acquire(AcquireArgs {
            vm_type: vm_type("small"),
            wait_ms: Some(250),
            output: Output { json: false },
        });
        let mut out = Vec::new();
        run(cmd, &Client::new(socket), &mut out).await.unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "vm-0123456789ab\n\
             tier:    hot\n\
             acquire: 1.23ms\n"
        );
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /v1/pools/small/acquire HTTP/1.1\r\n"),
            "{request}"
        );
        assert_eq!(body(&request), serde_json::json!({"wait_ms": 250}));
    }

    #[tokio::test]
    async fn an_exhausted_pool_says_when_to_retry() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("d.sock");
        let refusal = r#"{"code":"unavailable","message":"no VM of type small could be handed out within 50 ms: no prewarmed VM waiting (0 starting)"}"#;
        let _server = answer_once_with(
            &socket,
            "503 Service Unavailable",
            "retry-after: 4\r\n",
            refusal.to_owned(),
        )
        .await;
        let cmd = PoolCmd::Acquire(AcquireArgs {
            vm_type: vm_type("small"),
            wait_ms: Some(50),
            output: Output { json: true },
        });
        let mut out = Vec::new();
        let err = run(cmd, &Client::new(socket), &mut out).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "no VM of type small could be handed out within 50 ms: no prewarmed VM waiting \
             (0 starting); retry after 4 s"
        );
        assert!(out.is_empty(), "nothing on stdout for a refusal");
    }

    #[tokio::test]
    async fn resize_patches_only_the_sizes_given() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("d.sock");
        let pool = serde_json::to_string(&view::pool::tests::pool()).unwrap();
        let server = answer_once(&socket, "200 OK", pool).await;
        let cmd = PoolCmd::Resize(ResizeArgs {
            vm_type: vm_type("small"),
            target: Some(4),
            min: None,
            max: Some(8),
            running: None,
            output: Output { json: false },
        });
        let mut out = Vec::new();
        run(cmd, &Client::new(socket), &mut out).await.unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "small: running target 1, hot target 4 (min 0, max 8)\n"
        );
        let request = server.await.unwrap();
        assert!(
            request.starts_with("PATCH /v1/pools/small HTTP/1.1\r\n"),
            "{request}"
        );
        assert_eq!(body(&request), serde_json::json!({"target": 4, "max": 8}));
    }
}
