//! Human views of snapshots: the `snapshot ls` table, the `snapshot show`
//! page, and the summary `vm snapshot` prints.

use tfc_api::{
    CpuInfo, FileDigest, SnapshotDevice, SnapshotInfo, SnapshotKind, SnapshotManifest,
    SnapshotState, SnapshotTiming,
};

use super::{age, mib, moment, ms, size};
use crate::table::{Align, Fields, Table};

/// Hex digits of a digest worth showing to tell files apart.
const SHORT_DIGEST: usize = 12;

/// `snapshot ls`: one row per snapshot, oldest first.
pub fn list(snapshots: &[SnapshotInfo], now_ms: u64) -> String {
    let mut snapshots: Vec<&SnapshotInfo> = snapshots.iter().collect();
    snapshots.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("NAME", Align::Left),
        ("KIND", Align::Left),
        ("STATE", Align::Left),
        ("PARENT", Align::Left),
        ("TYPE", Align::Left),
        ("TEMPLATE", Align::Left),
        ("SIZE", Align::Right),
        ("AGE", Align::Right),
    ]);
    for snapshot in snapshots {
        table.push(vec![
            snapshot.id.clone(),
            or_dash(snapshot.name.as_deref()),
            kind(snapshot.kind).to_owned(),
            state(snapshot.state).to_owned(),
            or_dash(snapshot.parent.as_deref()),
            snapshot.vm_type.clone(),
            or_dash(snapshot.template_for.as_deref()),
            mib(snapshot.size_bytes),
            age(now_ms.saturating_sub(snapshot.created_at_ms)),
        ]);
    }
    table.to_string()
}

/// `snapshot show`: the catalog record, then the manifest a restore checks
/// against the host.
pub fn detail(snapshot: &SnapshotInfo, now_ms: u64) -> String {
    let mut fields = Fields::default();
    fields.push("id", snapshot.id.as_str());
    fields.push("name", or_dash(snapshot.name.as_deref()));
    fields.push("kind", kind(snapshot.kind));
    fields.push("state", state(snapshot.state));
    fields.push("parent", or_dash(snapshot.parent.as_deref()));
    fields.push("source vm", snapshot.source_vm.as_str());
    fields.push("type", snapshot.vm_type.as_str());
    fields.push("template for", or_dash(snapshot.template_for.as_deref()));
    fields.push("created", moment(snapshot.created_at_ms, now_ms));
    fields.push("size", format!("{} on disk", size(snapshot.size_bytes)));
    fields.push("dir", snapshot.dir.as_str());
    if let Some(t) = &snapshot.timing {
        fields.push("timing", timing(t));
    }
    match &snapshot.manifest {
        Some(m) => push_manifest(&mut fields, m),
        None => fields.push("manifest", "none yet: the snapshot is still being written"),
    }
    fields.to_string()
}

/// After `vm snapshot`: the id alone on the first line (as `vm create`
/// prints it), then what was saved and how long it took.
pub fn taken(snapshot: &SnapshotInfo) -> String {
    let mut fields = Fields::default();
    if let Some(name) = &snapshot.name {
        fields.push("name", name.as_str());
    }
    fields.push("kind", kind(snapshot.kind));
    if let Some(parent) = &snapshot.parent {
        fields.push("parent", parent.as_str());
    }
    fields.push("size", format!("{} on disk", size(snapshot.size_bytes)));
    if let Some(t) = &snapshot.timing {
        fields.push("timing", timing(t));
    }
    format!("{}\n{fields}", snapshot.id)
}

fn push_manifest(fields: &mut Fields, m: &SnapshotManifest) {
    fields.push("firecracker", m.firecracker_version.as_str());
    fields.push("kernel", file(&m.kernel));
    fields.push("rootfs", file(&m.rootfs));
    let tracking = if m.spec.diff_snapshots { "on" } else { "off" };
    fields.push(
        "machine",
        format!(
            "{} vCPU, {} MiB, dirty-page tracking {tracking}",
            m.spec.vcpus, m.spec.memory_mib
        ),
    );
    fields.push("boot args", m.spec.boot_args.as_str());
    fields.push("devices", devices(&m.devices));
    fields.push("cpu", cpu(&m.cpu));
    fields.push(
        "state file",
        format!("{}, {}", m.state_file, size(m.state_bytes)),
    );
    fields.push(
        "memory file",
        format!("{}, {}", m.memory_file, size(m.memory_bytes)),
    );
    fields.push("inputs", short_digest(&m.inputs));
}

/// `total 130.2ms (pause 0.3ms, create 125.1ms, resume 4.8ms)`.
fn timing(t: &SnapshotTiming) -> String {
    format!(
        "total {} (pause {}, create {}, resume {})",
        ms(t.total_us),
        ms(t.pause_us),
        ms(t.create_us),
        ms(t.resume_us)
    )
}

/// `/data/assets/vmlinux (sha256:0123456789ab)`.
fn file(f: &FileDigest) -> String {
    format!("{} ({})", f.path, short_digest(&f.sha256))
}

/// `sha256:<hex>` shortened to its first [`SHORT_DIGEST`] hex digits.
fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algorithm, hex)) => {
            let short: String = hex.chars().take(SHORT_DIGEST).collect();
            format!("{algorithm}:{short}")
        }
        None => digest.chars().take(SHORT_DIGEST).collect(),
    }
}

/// One device per line.
fn devices(devices: &[SnapshotDevice]) -> String {
    if devices.is_empty() {
        return "none".to_owned();
    }
    let lines: Vec<String> = devices
        .iter()
        .map(|device| match device {
            SnapshotDevice::Drive {
                id,
                path_on_host,
                read_only,
                root,
            } => {
                let access = if *read_only {
                    "read-only"
                } else {
                    "read-write"
                };
                let role = if *root { "root, " } else { "" };
                format!("drive {id}: {path_on_host} ({role}{access})")
            }
            SnapshotDevice::Vsock {
                guest_cid,
                uds_path,
            } => format!("vsock cid {guest_cid}: {uds_path}"),
            SnapshotDevice::Network {
                iface_id,
                host_dev_name,
                guest_mac,
            } => format!("network {iface_id}: tap {host_dev_name} (guest MAC {guest_mac})"),
        })
        .collect();
    lines.join("\n")
}

/// `GenuineIntel, Intel(R) Xeon(R) ... (family 6, model 85, stepping 7), 94 flags`.
fn cpu(cpu: &CpuInfo) -> String {
    let stepping = cpu
        .stepping
        .map_or_else(String::new, |s| format!(", stepping {s}"));
    format!(
        "{}, {} (family {}, model {}{stepping}), {} flags",
        cpu.vendor,
        cpu.model_name,
        cpu.family,
        cpu.model,
        cpu.flags.len()
    )
}

fn kind(kind: SnapshotKind) -> &'static str {
    match kind {
        SnapshotKind::Full => "full",
        SnapshotKind::Diff => "diff",
    }
}

fn state(state: SnapshotState) -> &'static str {
    match state {
        SnapshotState::Creating => "creating",
        SnapshotState::Ready => "ready",
    }
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

#[cfg(test)]
mod tests {
    use tfc_api::SnapshotManifest;
    use tfc_core::{Readiness, VmSpec, VmTypeName};

    use super::*;
    use crate::view::MIB;

    const NOW_MS: u64 = 1_700_000_000_000;

    fn full(id: &str, created_at_ms: u64) -> SnapshotInfo {
        SnapshotInfo {
            id: id.to_owned(),
            name: Some("golden".to_owned()),
            kind: SnapshotKind::Full,
            state: SnapshotState::Ready,
            parent: None,
            source_vm: "vm-0123456789ab".to_owned(),
            vm_type: "default".to_owned(),
            template_for: Some("default".to_owned()),
            created_at_ms,
            size_bytes: 39 * MIB / 2,
            dir: format!("/data/snapshots/{id}"),
            manifest: Some(SnapshotManifest {
                firecracker_version: "Firecracker v1.12.1".to_owned(),
                kernel: FileDigest {
                    path: "/data/assets/vmlinux".to_owned(),
                    sha256: format!("sha256:{}", "0123456789abcdef".repeat(4)),
                },
                rootfs: FileDigest {
                    path: "/data/assets/rootfs.ext4".to_owned(),
                    sha256: format!("sha256:{}", "fedcba9876543210".repeat(4)),
                },
                spec: VmSpec {
                    vm_type: VmTypeName::new("default").unwrap(),
                    vcpus: 2,
                    memory_mib: 256,
                    kernel: "/data/assets/vmlinux".into(),
                    rootfs: "/data/assets/rootfs.ext4".into(),
                    boot_args: "console=ttyS0 reboot=k panic=1".to_owned(),
                    readiness: Readiness::default(),
                    diff_snapshots: true,
                    vsock: true,
                    vmm: tfc_core::Vmm::Firecracker,
                    network: None,
                    rate_limits: Default::default(),
                },
                devices: vec![
                    SnapshotDevice::Drive {
                        id: "rootfs".to_owned(),
                        path_on_host: "rootfs.ext4".to_owned(),
                        read_only: false,
                        root: true,
                    },
                    SnapshotDevice::Vsock {
                        guest_cid: 3,
                        uds_path: "vsock.sock".to_owned(),
                    },
                ],
                cpu: CpuInfo {
                    vendor: "GenuineIntel".to_owned(),
                    model_name: "Intel(R) Xeon(R) CPU @ 2.20GHz".to_owned(),
                    family: 6,
                    model: 85,
                    stepping: Some(7),
                    flags: vec!["avx2".to_owned(), "fpu".to_owned(), "sse4_2".to_owned()],
                },
                state_file: "vmstate".to_owned(),
                memory_file: "memory".to_owned(),
                state_bytes: 14_540,
                memory_bytes: 256 * MIB,
                inputs: format!("sha256:{}", "00112233445566778899".repeat(3)),
            }),
            timing: Some(SnapshotTiming {
                pause_us: 310,
                create_us: 125_120,
                resume_us: 4_870,
                total_us: 130_300,
            }),
        }
    }

    fn diff(id: &str, parent: &str, created_at_ms: u64) -> SnapshotInfo {
        SnapshotInfo {
            name: None,
            kind: SnapshotKind::Diff,
            parent: Some(parent.to_owned()),
            template_for: None,
            size_bytes: 3 * MIB / 10,
            ..full(id, created_at_ms)
        }
    }

    #[test]
    fn list_is_sorted_oldest_first_with_placeholders_for_missing_values() {
        let mut writing = diff("snap-cc", "snap-aa", NOW_MS - 1_000);
        writing.state = SnapshotState::Creating;
        let snapshots = [
            writing,
            full("snap-aa", NOW_MS - 7_200_000),
            diff("snap-bb", "snap-aa", NOW_MS - 300_000),
        ];
        assert_eq!(
            list(&snapshots, NOW_MS),
            "ID       NAME    KIND  STATE     PARENT   TYPE     TEMPLATE     SIZE  AGE\n\
             snap-aa  golden  full  ready     -        default  default   19.5MiB   2h\n\
             snap-bb  -       diff  ready     snap-aa  default  -          0.3MiB   5m\n\
             snap-cc  -       diff  creating  snap-aa  default  -          0.3MiB   1s\n"
        );
        assert_eq!(
            list(&[], NOW_MS),
            "ID  NAME  KIND  STATE  PARENT  TYPE  TEMPLATE  SIZE  AGE\n"
        );
    }

    #[test]
    fn detail_shows_the_record_then_the_manifest() {
        let text = detail(&full("snap-aa", NOW_MS - 90_000), NOW_MS);
        assert_eq!(
            text,
            "id:           snap-aa\n\
             name:         golden\n\
             kind:         full\n\
             state:        ready\n\
             parent:       -\n\
             source vm:    vm-0123456789ab\n\
             type:         default\n\
             template for: default\n\
             created:      2023-11-14 22:11:50 UTC (1m ago)\n\
             size:         19.5MiB on disk\n\
             dir:          /data/snapshots/snap-aa\n\
             timing:       total 130.3ms (pause 0.3ms, create 125.1ms, resume 4.8ms)\n\
             firecracker:  Firecracker v1.12.1\n\
             kernel:       /data/assets/vmlinux (sha256:0123456789ab)\n\
             rootfs:       /data/assets/rootfs.ext4 (sha256:fedcba987654)\n\
             machine:      2 vCPU, 256 MiB, dirty-page tracking on\n\
             boot args:    console=ttyS0 reboot=k panic=1\n\
             devices:      drive rootfs: rootfs.ext4 (root, read-write)\n              \
                           vsock cid 3: vsock.sock\n\
             cpu:          GenuineIntel, Intel(R) Xeon(R) CPU @ 2.20GHz \
                           (family 6, model 85, stepping 7), 3 flags\n\
             state file:   vmstate, 14.2KiB\n\
             memory file:  memory, 256.0MiB\n\
             inputs:       sha256:001122334455\n"
        );
    }

    #[test]
    fn detail_of_a_snapshot_being_written_says_so() {
        let mut writing = diff("snap-cc", "snap-aa", NOW_MS);
        writing.state = SnapshotState::Creating;
        writing.manifest = None;
        writing.timing = None;
        let text = detail(&writing, NOW_MS);
        for line in [
            "kind:         diff\n",
            "state:        creating\n",
            "parent:       snap-aa\n",
            "manifest:     none yet: the snapshot is still being written\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        assert!(!text.contains("timing"), "{text}");
    }

    #[test]
    fn taken_starts_with_the_id_alone() {
        assert_eq!(
            taken(&full("snap-aa", NOW_MS)),
            "snap-aa\n\
             name:   golden\n\
             kind:   full\n\
             size:   19.5MiB on disk\n\
             timing: total 130.3ms (pause 0.3ms, create 125.1ms, resume 4.8ms)\n"
        );
        let text = taken(&diff("snap-bb", "snap-aa", NOW_MS));
        assert!(
            text.starts_with("snap-bb\nkind:   diff\nparent: snap-aa\n"),
            "{text}"
        );
    }

    #[test]
    fn digests_are_shortened_to_their_first_hex_digits() {
        assert_eq!(
            short_digest(&format!("sha256:{}", "ab".repeat(32))),
            "sha256:abababababab"
        );
        assert_eq!(short_digest("sha256:abc"), "sha256:abc");
        assert_eq!(short_digest("0123456789abcdef"), "0123456789ab");
    }
}
