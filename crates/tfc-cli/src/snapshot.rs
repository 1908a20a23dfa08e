//! `tfc snapshot ...`: the daemon's snapshot catalog. Snapshots are taken with
//! `tfc vm snapshot` and restored with `tfc vm create --from-snapshot`.

use std::io::Write;

use clap::Subcommand;
use tfc_core::SnapshotId;

use crate::client::Client;
use crate::output::{now_ms, print_json, Output};
use crate::view;

/// Subcommands of `tfc snapshot`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// List snapshots, oldest first.
    #[command(visible_alias = "list")]
    Ls {
        #[command(flatten)]
        output: Output,
    },
    /// Show one snapshot: what it was taken of, and on which host and VMM.
    Show {
        /// The snapshot's id or name.
        #[arg(value_name = "ID_OR_NAME")]
        id: SnapshotId,
        #[command(flatten)]
        output: Output,
    },
    /// Delete a snapshot's record and files.
    Rm {
        /// The snapshot's id or name.
        #[arg(value_name = "ID_OR_NAME")]
        id: SnapshotId,
        /// Delete it even if a diff snapshot or a template depends on it; those
        /// stop being restorable.
        #[arg(long, short)]
        force: bool,
    },
}

/// Runs one `tfc snapshot` subcommand, printing to `out`.
pub async fn run(cmd: SnapshotCmd, client: &Client, out: &mut impl Write) -> anyhow::Result<()> {
    match cmd {
        SnapshotCmd::Ls { output } => {
            let answer = client.list_snapshots().await?;
            if output.json {
                return print_json(out, &answer);
            }
            write!(
                out,
                "{}",
                view::snapshot::list(&answer.value.snapshots, now_ms())
            )?;
            Ok(())
        }
        SnapshotCmd::Show { id, output } => {
            let answer = client.get_snapshot(&id).await?;
            if output.json {
                return print_json(out, &answer);
            }
            write!(out, "{}", view::snapshot::detail(&answer.value, now_ms()))?;
            Ok(())
        }
        SnapshotCmd::Rm { id, force } => {
            client.delete_snapshot(&id, force).await?;
            writeln!(out, "{id}")?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_daemon::answer_once;

    fn id(s: &str) -> SnapshotId {
        SnapshotId::new(s).unwrap()
    }

    #[tokio::test]
    async fn rm_sends_force_and_prints_what_it_removed() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("d.sock");
        let server = answer_once(&socket, "204 No Content", String::new()).await;
        let cmd = SnapshotCmd::Rm {
            id: id("golden"),
            force: true,
        };
        let mut out = Vec::new();
        run(cmd, &Client::new(socket), &mut out).await.unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "golden\n");
        let request = server.await.unwrap();
        assert!(
            request.starts_with("DELETE /v1/snapshots/golden?force=true HTTP/1.1\r\n"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn rm_of_a_snapshot_others_depend_on_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("d.sock");
        let refusal = r#"{"code":"invalid_state","message":"snapshot snap-aa is the parent of snap-bb: delete that first, or use --force"}"#;
        let _server = answer_once(&socket, "409 Conflict", refusal.to_owned()).await;
        let cmd = SnapshotCmd::Rm {
            id: id("snap-aa"),
            force: false,
        };
        let err = run(cmd, &Client::new(socket), &mut Vec::new())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "snapshot snap-aa is the parent of snap-bb: delete that first, or use --force"
        );
    }

    #[tokio::test]
    async fn show_asks_by_name_and_json_is_the_daemons_document() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("d.sock");
        let snapshot = serde_json::json!({
            "id": "snap-0123456789ab", "name": "golden", "kind": "full", "state": "creating",
            "source_vm": "vm-0123456789ab", "vm_type": "default", "created_at_ms": 1,
            "size_bytes": 0, "dir": "/d", "added_by_a_newer_daemon": true
        });
        let server = answer_once(&socket, "200 OK", snapshot.to_string()).await;
        let cmd = SnapshotCmd::Show {
            id: id("golden"),
            output: Output { json: true },
        };
        let mut out = Vec::new();
        run(cmd, &Client::new(socket), &mut out).await.unwrap();
        let printed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(printed, snapshot);
        let request = server.await.unwrap();
        assert!(
            request.starts_with("GET /v1/snapshots/golden HTTP/1.1\r\n"),
            "{request}"
        );
    }
}
