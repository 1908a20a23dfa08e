//! Human views of the daemon's records. Here: VMs (the `vm ls` table, the
//! `vm show` page, the summary printed by `vm create --wait`, the boot
//! timeline they share) and the units every view prints times and sizes in.
//! Snapshots are in [`snapshot`], templates in [`template`], pools in
//! [`pool`].
//!
//! The views are pure: "now" is a parameter (Unix milliseconds), so the same
//! record always renders the same text.

pub mod alerts;
pub mod net;
pub mod pool;
pub mod snapshot;
pub mod template;

use tfc_api::{StartInfo, VmInfo};
use tfc_core::{BootPhase, BootTimeline, Readiness};

use crate::table::{Align, Fields, Table};

/// `vm ls`: one row per VM, oldest first. A pooled VM's method names its
/// tier: `pool/hot`.
pub fn list(vms: &[VmInfo], now_ms: u64) -> String {
    let mut vms: Vec<&VmInfo> = vms.iter().collect();
    vms.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("TYPE", Align::Left),
        ("BACKEND", Align::Left),
        ("STATE", Align::Left),
        ("VCPUS", Align::Right),
        ("MEM", Align::Right),
        ("PID", Align::Right),
        ("AGE", Align::Right),
        ("METHOD", Align::Left),
        ("BOOT", Align::Right),
    ]);
    for vm in vms {
        table.push(vec![
            vm.id.clone(),
            vm.spec.vm_type.to_string(),
            vm.spec.vmm.to_string(),
            vm.state.to_string(),
            vm.spec.vcpus.to_string(),
            format!("{}MiB", vm.spec.memory_mib),
            vm.pid.map_or_else(|| "-".to_owned(), |pid| pid.to_string()),
            age(now_ms.saturating_sub(vm.created_at_ms)),
            method(vm),
            boot_time(&vm.timeline).unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    table.to_string()
}

/// `vm show`: every field as `key: value`, then the boot timeline.
pub fn detail(vm: &VmInfo, now_ms: u64) -> String {
    let mut fields = Fields::default();
    fields.push("id", vm.id.as_str());
    fields.push("state", vm.state.as_str());
    fields.push("type", vm.spec.vm_type.as_str());
    fields.push("backend", vm.spec.vmm.as_str());
    fields.push("vcpus", vm.spec.vcpus.to_string());
    fields.push("memory", format!("{} MiB", vm.spec.memory_mib));
    fields.push(
        "pid",
        vm.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
    );
    fields.push("created", moment(vm.created_at_ms, now_ms));
    fields.push("updated", moment(vm.updated_at_ms, now_ms));
    if let Some(boot) = boot_time(&vm.timeline) {
        fields.push("boot", boot);
    }
    push_start(&mut fields, &vm.start);
    if let Some(slot) = &vm.pool {
        fields.push("pool", pool::slot(slot, now_ms));
    }
    if let Some(network) = &vm.network {
        fields.push("network", net::summary(network));
    }
    if !vm.spec.rate_limits.is_empty() {
        fields.push("rate limits", rate_limits(&vm.spec.rate_limits));
    }
    if let Some(snapshot) = &vm.last_snapshot {
        fields.push("last snapshot", snapshot.as_str());
    }
    if let Some(fixup) = &vm.identity_fixup {
        let entropy = if fixup.entropy_credited {
            "credited"
        } else {
            "mixed in, not credited"
        };
        fields.push(
            "identity fix-up",
            format!(
                "clock set, entropy {entropy}, in {}, at {}",
                ms(fixup.duration_us),
                moment(fixup.at_ms, now_ms)
            ),
        );
    }
    fields.push("kernel", vm.spec.kernel.display().to_string());
    fields.push("rootfs", vm.spec.rootfs.display().to_string());
    fields.push("boot args", vm.spec.boot_args.as_str());
    fields.push("readiness", readiness(&vm.spec.readiness));
    fields.push("workdir", vm.workdir.as_str());
    fields.push("console log", vm.console_log.as_str());
    if let Some(failure) = &vm.failure {
        fields.push("failure", failure.as_str());
    }
    if let Some(exit) = &vm.exit {
        fields.push("exit", exit.description.as_str());
    }
    format!("{fields}\n{}", timeline(&vm.timeline))
}

/// `net rx 1000000 B/s, disk 500 ops/s`; `none` when nothing is limited.
pub fn rate_limits(limits: &tfc_core::limits::RateLimits) -> String {
    let mut parts = Vec::new();
    for (name, limit) in [
        ("net rx", limits.net_rx),
        ("net tx", limits.net_tx),
        ("disk", limits.disk),
    ] {
        let Some(limit) = limit.filter(|l| !l.is_unlimited()) else {
            continue;
        };
        let mut rates = Vec::new();
        if let Some(bytes) = limit.bytes_per_sec {
            rates.push(format!("{bytes} B/s"));
        }
        if let Some(ops) = limit.ops_per_sec {
            rates.push(format!("{ops} ops/s"));
        }
        if let Some(burst) = limit.burst_bytes {
            rates.push(format!("burst {burst} B"));
        }
        parts.push(format!("{name} {}", rates.join(" ")));
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// After `vm create --wait`: the id alone on the first line (as without
/// `--wait`), a short summary, then the boot timeline.
pub fn created(vm: &VmInfo) -> String {
    let mut fields = Fields::default();
    let state = match boot_time(&vm.timeline) {
        Some(boot) => format!("{} (boot {boot})", vm.state),
        None => vm.state.to_string(),
    };
    fields.push("state", state);
    fields.push(
        "type",
        format!(
            "{} on {}, {} vCPU, {} MiB",
            vm.spec.vm_type, vm.spec.vmm, vm.spec.vcpus, vm.spec.memory_mib
        ),
    );
    push_start(&mut fields, &vm.start);
    if let Some(exit) = &vm.exit {
        fields.push("exit", exit.description.as_str());
    }
    fields.push("console log", vm.console_log.as_str());
    format!("{}\n{fields}\n{}", vm.id, timeline(&vm.timeline))
}

/// How the VM was started, for `vm ls`: the method, with the tier for a
/// pooled VM.
fn method(vm: &VmInfo) -> String {
    match &vm.pool {
        Some(slot) => format!("{}/{}", vm.start.method, slot.tier),
        None => vm.start.method.to_string(),
    }
}

/// How the VM was started: `restore of snap-1 (level ultra_fast)`, and the
/// daemon's note when it chose or fell back.
fn push_start(fields: &mut Fields, start: &StartInfo) {
    let mut line = start.method.to_string();
    if let Some(snapshot) = &start.snapshot {
        line.push_str(&format!(" of {snapshot}"));
    }
    line.push_str(&format!(" (level {})", start.level));
    fields.push("start", line);
    if let Some(note) = &start.note {
        fields.push("start note", note.as_str());
    }
}

/// Each boot phase with its time since the create request and the time it
/// took after the phase before it.
pub fn timeline(timeline: &BootTimeline) -> String {
    if timeline.0.is_empty() {
        return "timeline: no boot phase reached\n".to_owned();
    }
    let mut table = Table::new(&[
        ("PHASE", Align::Left),
        ("AT", Align::Right),
        ("DELTA", Align::Right),
    ]);
    let mut previous_us = 0;
    for mark in &timeline.0 {
        table.push(vec![
            mark.phase.as_str().to_owned(),
            ms(mark.at_us),
            format!("+{}", ms(mark.at_us.saturating_sub(previous_us))),
        ]);
        previous_us = mark.at_us;
    }
    table.to_string()
}

fn readiness(readiness: &Readiness) -> String {
    match readiness {
        Readiness::ConsoleLine { contains } => format!("console line containing {contains:?}"),
        Readiness::Agent { port } => format!("guest agent answers on vsock port {port}"),
    }
}

/// Time from the create request to Ready, if the VM got there. A restored
/// VM is ready once its snapshot is loaded, should no Ready mark follow.
fn boot_time(timeline: &BootTimeline) -> Option<String> {
    timeline
        .at(BootPhase::Ready)
        .or_else(|| timeline.at(BootPhase::SnapshotLoaded))
        .map(ms)
}

/// Microseconds as milliseconds with one decimal: `21.3ms`.
fn ms(us: u64) -> String {
    format!("{}.{}ms", us / 1000, us % 1000 / 100)
}

/// Fractional milliseconds (a measured statistic) as [`ms`] prints them.
fn ms_f64(ms_value: f64) -> String {
    // Negative or NaN statistics cannot be measured; they print as 0.
    ms((ms_value * 1000.0).max(0.0) as u64)
}

const MIB: u64 = 1024 * 1024;

/// Bytes in MiB with one decimal: `256.0MiB`, the unit of guest memory.
fn mib(bytes: u64) -> String {
    format!("{:.1}MiB", bytes as f64 / MIB as f64)
}

/// Bytes in the largest binary unit that keeps a whole number in front:
/// `512B`, `14.2KiB`, `256.0MiB`, `1.5GiB`.
fn size(bytes: u64) -> String {
    let units = [("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1 << 10)];
    match units.into_iter().find(|(_, unit)| bytes >= *unit) {
        Some((name, unit)) => format!("{:.1}{name}", bytes as f64 / unit as f64),
        None => format!("{bytes}B"),
    }
}

/// An age in its largest whole unit: `42s`, `5m`, `3h`, `2d`.
fn age(elapsed_ms: u64) -> String {
    let secs = elapsed_ms / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// A Unix time in milliseconds as `2023-11-14 22:13:20 UTC (5m ago)`.
fn moment(unix_ms: u64, now_ms: u64) -> String {
    format!(
        "{} ({} ago)",
        utc(unix_ms),
        age(now_ms.saturating_sub(unix_ms))
    )
}

/// A Unix time in milliseconds as a UTC date and time, to the second.
pub fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (hour, minute, second) = (of_day / 3600, of_day % 3600 / 60, of_day % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's `civil_from_days`):
    // count from 0000-03-01 so the leap day ends each 400-year era's years.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02} UTC")
}

#[cfg(test)]
mod tests {
    use tfc_api::ExitInfo;
    use tfc_core::{OptimizationLevel, PhaseMark, StartMethod, VmSpec, VmState, VmTypeName};

    use super::*;

    const NOW_MS: u64 = 1_700_000_000_000;

    fn vm(id: &str, state: VmState, created_at_ms: u64) -> VmInfo {
        VmInfo {
            id: id.to_owned(),
            state,
            spec: VmSpec {
                vm_type: VmTypeName::new("default").unwrap(),
                vcpus: 2,
                memory_mib: 256,
                kernel: "/data/assets/vmlinux".into(),
                rootfs: "/data/assets/rootfs.ext4".into(),
                boot_args: "console=ttyS0 reboot=k panic=1".to_owned(),
                readiness: Readiness::default(),
                diff_snapshots: false,
                vsock: true,
                vmm: tfc_core::Vmm::Firecracker,
                network: None,
                rate_limits: Default::default(),
            },
            pid: Some(4242),
            created_at_ms,
            updated_at_ms: created_at_ms + 30,
            timeline: BootTimeline(vec![
                PhaseMark {
                    phase: BootPhase::Spawned,
                    at_us: 412,
                },
                PhaseMark {
                    phase: BootPhase::ApiReady,
                    at_us: 3_100,
                },
                PhaseMark {
                    phase: BootPhase::Ready,
                    at_us: 21_345,
                },
            ]),
            failure: None,
            exit: None,
            workdir: format!("/data/vms/{id}"),
            console_log: format!("/data/vms/{id}/console.log"),
            start: StartInfo::default(),
            last_snapshot: None,
            template_build: false,
            pool: None,
            identity_fixup: None,
            network: None,
        }
    }

    /// A VM restored from a snapshot: no boot phases, a loaded snapshot.
    fn restored(id: &str, created_at_ms: u64) -> VmInfo {
        let mut vm = vm(id, VmState::Ready, created_at_ms);
        vm.timeline = BootTimeline(vec![
            PhaseMark {
                phase: BootPhase::Spawned,
                at_us: 390,
            },
            PhaseMark {
                phase: BootPhase::ApiReady,
                at_us: 2_950,
            },
            PhaseMark {
                phase: BootPhase::SnapshotLoaded,
                at_us: 11_420,
            },
        ]);
        vm.start = StartInfo {
            level: OptimizationLevel::UltraFast,
            method: StartMethod::Restore,
            snapshot: Some("snap-0123456789ab".to_owned()),
            note: None,
        };
        vm.last_snapshot = Some("snap-0123456789ab".to_owned());
        vm
    }

    #[test]
    fn timeline_shows_time_since_request_and_delta() {
        assert_eq!(
            timeline(&vm("vm-a", VmState::Ready, 0).timeline),
            "PHASE          AT    DELTA\n\
             spawned     0.4ms   +0.4ms\n\
             api_ready   3.1ms   +2.6ms\n\
             ready      21.3ms  +18.2ms\n"
        );
        assert_eq!(
            timeline(&BootTimeline::default()),
            "timeline: no boot phase reached\n"
        );
    }

    #[test]
    fn a_restore_timeline_ends_with_the_snapshot_loaded() {
        assert_eq!(
            timeline(&restored("vm-a", 0).timeline),
            "PHASE                AT   DELTA\n\
             spawned           0.3ms  +0.3ms\n\
             api_ready         2.9ms  +2.5ms\n\
             snapshot_loaded  11.4ms  +8.4ms\n"
        );
        assert_eq!(boot_time(&restored("vm-a", 0).timeline).unwrap(), "11.4ms");
    }

    #[test]
    fn list_is_sorted_oldest_first_with_placeholders_for_missing_values() {
        let mut young = vm("vm-b", VmState::Booting, NOW_MS - 5_000);
        young.spec.vmm = tfc_core::Vmm::QemuTcg;
        young.pid = None;
        young.timeline.0.truncate(1);
        let old = vm("vm-a", VmState::Paused, NOW_MS - 7_200_000);
        let clone = restored("vm-c", NOW_MS - 1_000);
        assert_eq!(
            list(&[young, old, clone], NOW_MS),
            "ID    TYPE     BACKEND      STATE    VCPUS     MEM   PID  AGE  METHOD       BOOT\n\
             vm-a  default  firecracker  paused       2  256MiB  4242   2h  cold_boot  21.3ms\n\
             vm-b  default  qemu-tcg     booting      2  256MiB     -   5s  cold_boot       -\n\
             vm-c  default  firecracker  ready        2  256MiB  4242   1s  restore    11.4ms\n"
        );
        assert_eq!(
            list(&[], NOW_MS),
            "ID  TYPE  BACKEND  STATE  VCPUS  MEM  PID  AGE  METHOD  BOOT\n"
        );
    }

    #[test]
    fn detail_names_every_field_and_the_failure() {
        let mut failed = vm("vm-a", VmState::Failed, NOW_MS - 90_000);
        failed.pid = None;
        failed.failure = Some("boot timed out after 180 s".to_owned());
        failed.exit = Some(ExitInfo {
            code: None,
            signal: Some(9),
            description: "killed by signal 9 (SIGKILL)".to_owned(),
        });
        let text = detail(&failed, NOW_MS);
        for line in [
            "id:          vm-a\n",
            "state:       failed\n",
            "backend:     firecracker\n",
            "memory:      256 MiB\n",
            "pid:         -\n",
            "created:     2023-11-14 22:11:50 UTC (1m ago)\n",
            "boot:        21.3ms\n",
            "start:       cold_boot (level standard)\n",
            "readiness:   console line containing \"Run /init as init process\"\n",
            "console log: /data/vms/vm-a/console.log\n",
            "failure:     boot timed out after 180 s\n",
            "exit:        killed by signal 9 (SIGKILL)\n",
            "\nPHASE ",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        assert!(!text.contains("last snapshot"), "{text}");
    }

    #[test]
    fn detail_says_how_the_vm_started_and_its_last_snapshot() {
        let text = detail(&restored("vm-a", NOW_MS), NOW_MS);
        assert!(!text.contains("identity fix-up"), "{text}");
        for line in [
            "boot:          11.4ms\n",
            "start:         restore of snap-0123456789ab (level ultra_fast)\n",
            "last snapshot: snap-0123456789ab\n",
            "\nsnapshot_loaded ",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        let mut fallback = vm("vm-b", VmState::Ready, NOW_MS);
        fallback.start.level = OptimizationLevel::UltraFast;
        fallback.start.note = Some("no current golden snapshot; cold boot instead".to_owned());
        let text = detail(&fallback, NOW_MS);
        assert!(
            text.contains(
                "start:       cold_boot (level ultra_fast)\n\
                 start note:  no current golden snapshot; cold boot instead\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn detail_shows_the_identity_fixup_of_a_restored_agent_vm() {
        let mut fixed = restored("vm-a", NOW_MS);
        fixed.identity_fixup = Some(tfc_api::IdentityFixup {
            at_ms: NOW_MS - 1_000,
            duration_us: 2_300,
            entropy_credited: false,
        });
        let text = detail(&fixed, NOW_MS);
        let line = "identity fix-up: clock set, entropy mixed in, not credited, in 2.3ms, \
                    at 2023-11-14 22:13:19 UTC (1s ago)\n";
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }

    #[test]
    fn a_pooled_vm_shows_its_tier_in_the_list_and_its_slot_in_detail() {
        let mut pooled = restored("vm-p", NOW_MS - 2_000);
        pooled.state = VmState::Running;
        pooled.start = StartInfo {
            level: OptimizationLevel::Instant,
            method: StartMethod::Pool,
            snapshot: Some("snap-0123456789ab".to_owned()),
            note: Some("hot tier: prewarmed from the template".to_owned()),
        };
        pooled.pool = Some(tfc_api::PoolSlot {
            tier: tfc_api::PoolTier::Hot,
            acquired_at_ms: Some(NOW_MS - 1_000),
            acquire_us: Some(420),
        });
        let table = list(&[pooled.clone()], NOW_MS);
        assert_eq!(
            table.lines().nth(1),
            Some("vm-p  default  firecracker  running      2  256MiB  4242   2s  pool/hot  11.4ms"),
            "{table}"
        );
        let text = detail(&pooled, NOW_MS);
        assert!(
            text.contains(
                "start:         pool of snap-0123456789ab (level instant)\n\
                 start note:    hot tier: prewarmed from the template\n\
                 pool:          hot tier, acquired 2023-11-14 22:13:19 UTC (1s ago) in 0.42ms\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn created_starts_with_the_id_alone() {
        let text = created(&vm("vm-a", VmState::Ready, NOW_MS));
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("vm-a"));
        assert_eq!(lines.next(), Some("state:       ready (boot 21.3ms)"));
        assert_eq!(
            lines.next(),
            Some("type:        default on firecracker, 2 vCPU, 256 MiB")
        );
        assert_eq!(
            lines.next(),
            Some("start:       cold_boot (level standard)")
        );
        assert!(text.contains("\nready "), "{text}");
        let text = created(&restored("vm-c", NOW_MS));
        assert!(
            text.starts_with(
                "vm-c\n\
                 state:       ready (boot 11.4ms)\n\
                 type:        default on firecracker, 2 vCPU, 256 MiB\n\
                 start:       restore of snap-0123456789ab (level ultra_fast)\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn ages_use_their_largest_whole_unit() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(59_999), "59s");
        assert_eq!(age(60_000), "1m");
        assert_eq!(age(3_599_999), "59m");
        assert_eq!(age(3_600_000), "1h");
        assert_eq!(age(86_400_000 * 3), "3d");
    }

    #[test]
    fn milliseconds_truncate_to_one_decimal() {
        assert_eq!(ms(0), "0.0ms");
        assert_eq!(ms(999), "0.9ms");
        assert_eq!(ms(25_431_112), "25431.1ms");
    }

    #[test]
    fn sizes_use_their_largest_binary_unit() {
        assert_eq!(size(0), "0B");
        assert_eq!(size(1023), "1023B");
        assert_eq!(size(14_540), "14.2KiB");
        assert_eq!(size(256 * MIB), "256.0MiB");
        assert_eq!(size(3 << 29), "1.5GiB");
        assert_eq!(mib(0), "0.0MiB");
        assert_eq!(mib(39 * MIB / 2), "19.5MiB");
        assert_eq!(mib(8 << 30), "8192.0MiB");
    }

    #[test]
    fn fractional_milliseconds_print_like_measured_ones() {
        assert_eq!(ms_f64(27_012.36), "27012.3ms");
        assert_eq!(ms_f64(11.0), "11.0ms");
        assert_eq!(ms_f64(-1.0), "0.0ms");
        assert_eq!(ms_f64(f64::NAN), "0.0ms");
    }

    #[test]
    fn utc_dates_match_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(951_868_799_999), "2000-02-29 23:59:59 UTC");
        assert_eq!(utc(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(4_107_542_400_000), "2100-03-01 00:00:00 UTC");
    }
}
