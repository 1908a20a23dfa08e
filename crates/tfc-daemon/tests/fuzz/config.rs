//! `Config::parse` against generated and mutated TOML: it never panics; a
//! text that is not TOML (or not our schema) is a `Parse` error; a config
//! that parses either validates, and then every accessor the daemon calls
//! at start works, or fails with `Invalid` naming a real key.

use proptest::prelude::*;
use tfc_core::Vmm;
use tfc_daemon::config::{Config, ConfigError, DEFAULT_CONFIG};
use toml::Value;

use crate::fuzz_config;

/// Every key of the schema, as it appears in an `Invalid` error; `*` stands
/// for a VM type's name.
const KEYS: &[&str] = &[
    "daemon.socket",
    "daemon.data_dir",
    "daemon.backend",
    "daemon.shutdown_policy",
    "daemon.storage",
    "daemon.shutdown_deadline_secs",
    "daemon.default_vm_type",
    "firecracker.binary",
    "firecracker.boot_timeout_secs",
    "firecracker.console_log_limit_kib",
    "firecracker.stop_grace_ms",
    "firecracker.ctrl_alt_del_grace_ms",
    "firecracker.jailer",
    "firecracker.jailer_binary",
    "firecracker.jail_ids",
    "firecracker.uid",
    "firecracker.gid",
    "firecracker.chroot_base",
    "firecracker.cgroup_version",
    "firecracker.parent_cgroup",
    "firecracker.new_pid_ns",
    "api.tcp",
    "api.token_file",
    "api.tls_cert",
    "api.tls_key",
    "api.rate_limit_per_sec",
    "api.rate_limit_burst",
    "api.max_concurrent_creates",
    "api.max_concurrent_execs",
    "alerts.interval_secs",
    "alerts.window_secs",
    "alerts.min_samples",
    "alerts.clear_margin",
    "alerts.webhook",
    "alerts.webhook_timeout_ms",
    "qemu.binary",
    "qemu.vhost_device_vsock",
    "qemu.boot_timeout_secs",
    "qemu.console_log_limit_kib",
    "qemu.stop_grace_ms",
    "fake.boot_ms",
    "fake.agent",
    "agent.max_file_mib",
    "network.enabled",
    "network.pool",
    "network.prefix",
    "network.uplink",
    "network.ready_slots",
    "network.host_netns",
    "vm_types",
    "vm_types.*",
    "vm_types.*.vcpus",
    "vm_types.*.memory_mib",
    "vm_types.*.kernel",
    "vm_types.*.rootfs",
    "vm_types.*.image",
    "vm_types.*.boot_args",
    "vm_types.*.readiness_line",
    "vm_types.*.diff_snapshots",
    "vm_types.*.backend",
    "vm_types.*.agent",
    "vm_types.*.agent_port",
    "vm_types.*.network",
    "vm_types.*.rate_limits",
    "vm_types.*.rate_limits.net_rx",
    "vm_types.*.rate_limits.net_tx",
    "vm_types.*.rate_limits.disk",
    "vm_types.*.targets.boot_p99_ms",
    "vm_types.*.targets.acquire_p99_ms",
    "vm_types.*.targets.pool_hit_rate",
    "vm_types.*.targets.allocation_success_rate",
    "vm_types.*.pool.target",
    "vm_types.*.pool.min",
    "vm_types.*.pool.max",
    "vm_types.*.pool.running",
    "vm_types.*.pool.tiers",
    "vm_types.*.pool.strategy",
    "vm_types.*.pool.prewarm_concurrency",
    "vm_types.*.pool.prewarm_priority",
    "vm_types.*.pool.max_age_secs",
    "vm_types.*.pool.health_interval_ms",
    "vm_types.*.pool.acquire_timeout_ms",
    "vm_types.*.pool.autoscale",
    "vm_types.*.pool.autoscale.up_threshold",
    "vm_types.*.pool.autoscale.down_threshold",
    "vm_types.*.pool.autoscale.window_secs",
    "vm_types.*.pool.autoscale.step",
];

/// Where the generator sets values: the schema's keys, plus a few that are
/// not in it (which must be refused as unknown).
fn key() -> impl Strategy<Value = String> {
    let type_name = prop_oneof![
        Just("default".to_owned()),
        Just("small".to_owned()),
        Just("Bad Name".to_owned()),
        "[a-z0-9_-]{0,70}",
    ];
    let known = proptest::sample::select(KEYS).prop_filter("a leaf or table key", |k| {
        *k != "vm_types" && *k != "vm_types.*"
    });
    prop_oneof![
        8 => (known, type_name).prop_map(|(k, name)| k.replace('*', &name)),
        1 => Just("daemon.sokcet".to_owned()),
        1 => Just("vm_types.default.pool.autoscale.bogus".to_owned()),
    ]
}

/// Values of every TOML type, biased to the edges of the checked ranges
/// and to the spellings the enums accept.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(-1),
            Just(4),
            Just(255),
            Just(256),
            Just(3600),
            Just(3601),
            Just(60_000),
            Just(60_001),
            Just(600_000),
            Just(1 << 20),
            Just(u32::MAX as i64),
            Just(i64::MAX),
            Just(i64::MIN),
            any::<i64>(),
            0i64..100,
        ]
        .prop_map(Value::Integer),
        prop_oneof![
            Just(0.5f64),
            Just(-0.1),
            Just(1.5),
            Just(f64::NAN),
            any::<f64>()
        ]
        .prop_map(Value::Float),
        any::<bool>().prop_map(Value::Boolean),
        prop_oneof![
            proptest::sample::select(vec![
                "fake",
                "firecracker",
                "qemu-tcg",
                "stop",
                "leave_running",
                "memory",
                "sqlite",
                "busybox",
                "debian",
                "on",
                "off",
                "auto",
                "none",
                "isolated",
                "nat",
                "first_available",
                "round_robin",
                "hot",
                "warm",
                "cold",
                "running",
                "/abs/path",
                "relative/path",
                "",
                "10.200.0.0/16",
                "10.0.0.0/31",
                "300.1.1.1/8",
                "tfc",
                "TFC",
                "averylongprefix",
                "eth0",
                "eth0;drop",
                "console=null",
                "quiet",
                "init=/bin/sh",
                "virtio_mmio.device=1",
                "default",
                "small",
                "1879048192:65536",
                "0:1",
                "4294967294:1",
                "4294967294:2",
                "1:4294967295",
                ":",
            ])
            .prop_map(str::to_owned),
            any::<String>(),
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("bytes_per_sec".to_owned()),
                    Just("ops_per_sec".to_owned()),
                    Just("burst_bytes".to_owned()),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..3
            )
            .prop_map(|m| Value::Table(m.into_iter().collect())),
        ]
    })
}

/// Sets `path` (dotted) in `table`, replacing whatever is in the way.
fn set(table: &mut toml::Table, path: &str, value: Value) {
    let mut parts: Vec<&str> = path.split('.').collect();
    // A VM type's name may itself hold no dot: the generator's names do not.
    let last = parts.pop().expect("a key has a name");
    let mut here = table;
    for part in parts {
        let entry = here
            .entry(part.to_owned())
            .or_insert_with(|| Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(toml::Table::new());
        }
        here = entry.as_table_mut().expect("made a table above");
    }
    here.insert(last.to_owned(), value);
}

/// Whether `key` (from an `Invalid` error) is a key of the schema.
fn names_a_real_key(key: &str, config_text: &str) -> bool {
    let parts: Vec<&str> = key.split('.').collect();
    let pattern = if parts.len() >= 2 && parts[0] == "vm_types" {
        // The type's name must be one the config defines.
        if !config_text.contains(parts[1]) {
            return false;
        }
        let mut p = parts.clone();
        p[1] = "*";
        p.join(".")
    } else {
        key.to_owned()
    };
    // Rate-limit errors may add the device's field (`...rate_limits`).
    KEYS.contains(&pattern.as_str())
}

/// What the daemon calls on a configuration that validated: none of it may
/// fail or panic.
fn use_validated(config: &Config) {
    config.network.pool().expect("a validated pool parses");
    config.network.prefix().expect("a validated prefix parses");
    for vmm in [Vmm::Firecracker, Vmm::QemuTcg] {
        assert!(config.boot_timeout(vmm).as_secs() >= 1);
    }
    assert!(config.vm_types.contains_key(&config.daemon.default_vm_type));
    for vm_type in config.vm_types.values() {
        let _ = config.vmm_of(vm_type);
        vm_type.rate_limits.validate().expect("validated limits");
    }
    assert!(config.agent.max_file_bytes() >= 1 << 20);
}

fn check(text: &str) -> Result<(), TestCaseError> {
    match Config::parse(text, "fuzz") {
        Ok(config) => use_validated(&config),
        Err(ConfigError::Invalid { key, reason }) => {
            prop_assert!(
                names_a_real_key(&key, text),
                "error names {key:?}, not a key of the schema ({reason})"
            );
            prop_assert!(!reason.is_empty(), "no reason for {key}");
        }
        Err(err @ ConfigError::Parse { .. }) => {
            let source = std::error::Error::source(&err).map(|s| s.to_string());
            prop_assert!(source.is_some_and(|s| !s.is_empty()), "{err}");
        }
        Err(err @ ConfigError::Read { .. }) => {
            prop_assert!(false, "parsing text cannot fail reading: {err}")
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(fuzz_config())]

    /// The embedded defaults with keys set to random values (and keys
    /// removed): validates, or names the key that is wrong.
    #[test]
    fn edited_defaults_validate_or_name_a_key(
        edits in proptest::collection::vec((key(), proptest::option::of(value())), 1..6),
    ) {
        let mut table: toml::Table = toml::from_str(DEFAULT_CONFIG).unwrap();
        for (path, value) in edits {
            match value {
                Some(value) => set(&mut table, &path, value),
                None => {
                    let (section, leaf) = path.rsplit_once('.').unwrap();
                    let mut here = Some(&mut table);
                    for part in section.split('.') {
                        here = here.and_then(|t| t.get_mut(part)).and_then(Value::as_table_mut);
                    }
                    if let Some(t) = here {
                        t.remove(leaf);
                    }
                }
            }
        }
        // NaN and the infinities have TOML spellings; a value TOML cannot
        // write (none today) would only skip this case.
        let Ok(text) = toml::to_string(&table) else { return Ok(()) };
        check(&text)?;
    }

    /// Valid edits only where the value is in range: these configs must
    /// pass, so that the generator is known to reach the success path.
    #[test]
    fn in_range_edits_validate(
        vcpus in 1i64..=32,
        memory_mib in 128i64..=4096,
        boot_timeout in 1i64..=3600,
        target in 0i64..=8,
        tiers in proptest::sample::subsequence(vec!["running", "hot", "warm", "cold"], 1..=4),
    ) {
        let mut table: toml::Table = toml::from_str(DEFAULT_CONFIG).unwrap();
        set(&mut table, "vm_types.default.vcpus", Value::Integer(vcpus));
        set(&mut table, "vm_types.default.memory_mib", Value::Integer(memory_mib));
        set(&mut table, "firecracker.boot_timeout_secs", Value::Integer(boot_timeout));
        // A hot target needs the hot tier (the running tier's size is 0
        // in the defaults).
        let target = if tiers.contains(&"hot") { target } else { 0 };
        set(&mut table, "vm_types.default.pool.target", Value::Integer(target));
        let tiers = tiers.into_iter().map(|t| Value::String(t.into())).collect();
        set(&mut table, "vm_types.default.pool.tiers", Value::Array(tiers));
        let text = toml::to_string(&table).unwrap();
        let parsed = Config::parse(&text, "fuzz");
        prop_assert!(parsed.is_ok(), "{:?}\n{text}", parsed.err().map(|e| tfc_core::error_chain(&e)));
        use_validated(&parsed.unwrap());
    }

    /// The defaults' text with bytes flipped, inserted or removed: any
    /// outcome but a panic, and each error clean.
    #[test]
    fn mutated_default_text_never_panics(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = DEFAULT_CONFIG.as_bytes().to_vec();
        for (at, op, byte) in edits {
            let at = at % bytes.len().max(1);
            match op % 3 {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at.min(bytes.len()), byte),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        check(&String::from_utf8_lossy(&bytes))?;
    }
}
