//! Start-up cleanup of what no record claims: a VM directory the store does not
//! know (a record lost with a memory store, or a directory made just before a
//! crash) has its recorded VMM processes (Firecracker, or QEMU and its vsock
//! backend) ended and is removed, so nothing leaks.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

/// What start-up cleanup found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReapReport {
    /// Leftover VM directories removed.
    pub dirs_removed: usize,
    /// Leftover VMM processes ended (pids).
    pub killed: Vec<u32>,
}

/// Ends the VMM processes of `workdir` that still run (Firecracker, or QEMU
/// and its vsock backend; found by their process records or command lines,
/// signalled through pidfds) and returns their pids.
pub fn end_vmm(workdir: &Path) -> Vec<u32> {
    let mut found: Vec<(u32, tfc_firecracker::pidfd::Pidfd)> =
        tfc_firecracker::process::find_vmm(workdir)
            .into_iter()
            .collect();
    found.extend(tfc_qemu::process::find_processes(workdir));
    for (_, pidfd) in &found {
        let _ = pidfd.send_signal(libc::SIGKILL);
    }
    for (pid, pidfd) in &found {
        if !pidfd.wait_exited(Duration::from_secs(5)) {
            tracing::warn!(pid, "VMM did not exit within 5 s of SIGKILL");
        }
    }
    found.into_iter().map(|(pid, _)| pid).collect()
}

/// [`end_vmm`] for async callers: its waits (up to 5 s per process) run on
/// a blocking thread, not on a runtime thread that serves other VMs.
pub async fn end_vmm_blocking(workdir: &Path) -> Vec<u32> {
    let workdir = workdir.to_owned();
    tokio::task::spawn_blocking(move || end_vmm(&workdir))
        .await
        .expect("ending VMM processes does not panic")
}

/// Ends leftover VMM processes recorded under `vms_dir` and removes their
/// directories, except those of the VMs in `recorded` (the store knows them).
pub fn reap_orphans(vms_dir: &Path, recorded: &HashSet<String>) -> ReapReport {
    let mut report = ReapReport::default();
    let Ok(entries) = std::fs::read_dir(vms_dir) else {
        return report;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !dir.is_dir() || recorded.contains(&name) {
            continue;
        }
        for pid in end_vmm(&dir) {
            tracing::warn!(pid, dir = %dir.display(), "ended VMM left by an earlier daemon");
            report.killed.push(pid);
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => report.dirs_removed += 1,
            Err(err) => {
                tracing::warn!(dir = %dir.display(), %err, "cannot remove leftover VM directory")
            }
        }
    }
    if report.dirs_removed > 0 {
        tracing::info!(
            dirs = report.dirs_removed,
            killed = report.killed.len(),
            "cleaned up after an earlier daemon"
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use tfc_firecracker::process::{ProcessRecord, PROCESS_RECORD};

    use super::*;

    #[test]
    fn kills_recorded_process_and_removes_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        let live = dir.path().join("vm-live");
        std::fs::create_dir(&live).unwrap();
        let record = ProcessRecord {
            pid,
            start_ticks: tfc_firecracker::process::process_start_ticks(pid).unwrap(),
        };
        std::fs::write(
            live.join(PROCESS_RECORD),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        // A record whose start time does not match must not be signalled.
        let stale = dir.path().join("vm-stale");
        std::fs::create_dir(&stale).unwrap();
        let me = std::process::id();
        let wrong = ProcessRecord {
            pid: me,
            start_ticks: 1,
        };
        std::fs::write(
            stale.join(PROCESS_RECORD),
            serde_json::to_vec(&wrong).unwrap(),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("vm-empty")).unwrap();

        let keep = dir.path().join("vm-kept");
        std::fs::create_dir(&keep).unwrap();
        let report = reap_orphans(dir.path(), &HashSet::from(["vm-kept".to_owned()]));
        assert_eq!(report.killed, vec![pid]);
        assert_eq!(report.dirs_removed, 3);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(keep.is_dir());
    }

    /// A qemu-tcg VM's directory holds two records, QEMU's and its vsock
    /// backend's: both processes are ended.
    #[test]
    fn ends_both_processes_of_a_qemu_vm() {
        let dir = tempfile::tempdir().unwrap();
        let vm = dir.path().join("vm-qemu");
        std::fs::create_dir(&vm).unwrap();
        let mut children = Vec::new();
        for record in [
            tfc_qemu::process::QEMU_RECORD,
            tfc_qemu::process::VHOST_RECORD,
        ] {
            let child = std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap();
            let pid = child.id();
            let start_ticks = tfc_firecracker::process::process_start_ticks(pid).unwrap();
            let bytes = serde_json::to_vec(&ProcessRecord { pid, start_ticks }).unwrap();
            std::fs::write(vm.join(record), bytes).unwrap();
            children.push(child);
        }
        let report = reap_orphans(dir.path(), &HashSet::new());
        let mut expected: Vec<u32> = children.iter().map(|c| c.id()).collect();
        let mut killed = report.killed.clone();
        expected.sort_unstable();
        killed.sort_unstable();
        assert_eq!(killed, expected);
        assert_eq!(report.dirs_removed, 1);
        for mut child in children {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        }
    }
}
