//! `tfc template ...`: each VM type's template (golden snapshot), which the
//! `ultra_fast` level restores, and how fast VMs of each type start here.

use std::io::Write;

use clap::Subcommand;
use tfc_api::TemplateStatus;
use tfc_core::VmTypeName;

use crate::client::Client;
use crate::output::{print_json, Output};
use crate::view;

/// Subcommands of `tfc template`.
#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    /// List VM types with their template's status and measured start times.
    #[command(visible_alias = "list")]
    Ls {
        #[command(flatten)]
        output: Output,
    },
    /// Build (or rebuild) a VM type's template: boot a VM, snapshot it once ready.
    /// Waits for the build, which takes as long as a boot (minutes on a slow host).
    Build {
        /// VM type from the daemon's configuration.
        #[arg(value_name = "TYPE")]
        vm_type: VmTypeName,
        #[command(flatten)]
        output: Output,
    },
}

/// Runs one `tfc template` subcommand, printing to `out`.
pub async fn run(cmd: TemplateCmd, client: &Client, out: &mut impl Write) -> anyhow::Result<()> {
    match cmd {
        TemplateCmd::Ls { output } => {
            let answer = client.list_templates().await?;
            if output.json {
                return print_json(out, &answer);
            }
            write!(out, "{}", view::template::list(&answer.value.templates))?;
            Ok(())
        }
        TemplateCmd::Build { vm_type, output } => {
            let started = format!(
                "building the template of VM type {vm_type}: a boot and a snapshot, \
                 which may take minutes on a slow host"
            );
            // Stdout carries only the daemon's document with --json.
            if output.json {
                eprintln!("{started}");
            } else {
                writeln!(out, "{started}")?;
                out.flush()?;
            }
            let answer = client.build_template(&vm_type).await?;
            if output.json {
                print_json(out, &answer)?;
            } else {
                write!(out, "{}", view::template::detail(&answer.value))?;
            }
            // A build that failed is answered with the template's record, which
            // says why; for the caller it is still a failure.
            let template = &answer.value;
            if template.status == TemplateStatus::Failed {
                let reason = template
                    .reason
                    .as_deref()
                    .unwrap_or("the daemon recorded no reason");
                anyhow::bail!("template of VM type {vm_type} failed to build: {reason}");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_daemon::answer_once;

    fn build(vm_type: &str) -> TemplateCmd {
        TemplateCmd::Build {
            vm_type: VmTypeName::new(vm_type).unwrap(),
            output: Output { json: false },
        }
    }

    #[tokio::test]
    async fn build_says_it_started_then_prints_the_template() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("d.sock");
        let template = serde_json::json!({
            "vm_type": "default", "status": "ready", "snapshot": "snap-0123456789ab",
            "starts": [{"method": "cold_boot", "count": 1,
                        "min_ms": 27012.0, "median_ms": 27012.0, "max_ms": 27012.0}]
        });
        let server = answer_once(&socket, "200 OK", template.to_string()).await;
        let mut out = Vec::new();
        run(build("default"), &Client::new(socket), &mut out)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "building the template of VM type default: a boot and a snapshot, which may take \
             minutes on a slow host\n\
             type:     default\n\
             status:   ready\n\
             snapshot: snap-0123456789ab\n\
             starts:   cold_boot 27012.0ms median (min 27012.0ms, max 27012.0ms, n=1)\n"
        );
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /v1/templates/default/build HTTP/1.1\r\n"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn a_failed_build_is_printed_then_reported_as_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("d.sock");
        let template = serde_json::json!({
            "vm_type": "default", "status": "failed",
            "reason": "boot timed out after 180 s", "starts": []
        });
        let _server = answer_once(&socket, "200 OK", template.to_string()).await;
        let mut out = Vec::new();
        let err = run(build("default"), &Client::new(socket), &mut out)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "template of VM type default failed to build: boot timed out after 180 s"
        );
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("reason:   boot timed out after 180 s\n"),
            "{out}"
        );
    }
}
