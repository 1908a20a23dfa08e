//! `tfc serve` configuration: TOML, unknown keys refused, validated at start with
//! errors that name the offending key. The embedded defaults
//! (`default-config.toml`) are the documentation of every key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tfc_core::limits::RateLimits;
use tfc_core::net::{AddrError, Ipv4Pool, NamePrefix, NetMode, ObjectError};
use tfc_core::{spec, IdError, VmTypeName, Vmm};

/// The embedded default configuration.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid")]
    Parse {
        path: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub firecracker: FirecrackerConfig,
    #[serde(default)]
    pub qemu: QemuConfig,
    #[serde(default)]
    pub fake: FakeConfig,
    #[serde(default)]
    pub agent: AgentConfig,
    #[serde(default)]
    pub network: NetworkConfig,
    /// Performance targets' checking ([`crate::alerts`]).
    #[serde(default)]
    pub alerts: crate::alerts::AlertsConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default = "default_vm_types")]
    pub vm_types: BTreeMap<String, VmTypeConfig>,
}

/// The daemon's backend: the VMM its VM types run on unless they name
/// another (`firecracker`, `qemu-tcg`), or the fake for tests, which then
/// runs every VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    Firecracker,
    #[serde(rename = "qemu-tcg")]
    QemuTcg,
    Fake,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Firecracker => "firecracker",
            BackendKind::QemuTcg => "qemu-tcg",
            BackendKind::Fake => "fake",
        }
    }

    /// The VMM of VM types that name none.
    pub fn default_vmm(self) -> Vmm {
        match self {
            BackendKind::QemuTcg => Vmm::QemuTcg,
            BackendKind::Firecracker | BackendKind::Fake => Vmm::Firecracker,
        }
    }
}

/// What SIGTERM does to VMs that are running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownPolicy {
    /// Leave every VM running; the next daemon re-adopts them from the store
    /// (so a daemon upgrade does not kill workloads).
    LeaveRunning,
    /// Stop every VM and remove its files.
    Stop,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    pub socket: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    #[serde(default = "default_backend")]
    pub backend: BackendKind,
    #[serde(default = "default_shutdown_policy")]
    pub shutdown_policy: ShutdownPolicy,
    /// Where VM records live: "sqlite" (`<data_dir>/state.db`, durable) or
    /// "memory" (lost on exit; VMs left running are then ended at next start).
    #[serde(default)]
    pub storage: tfc_store::StoreKind,
    /// After SIGTERM, how long in-flight requests may take before the daemon
    /// exits anyway.
    #[serde(default = "default_shutdown_deadline")]
    pub shutdown_deadline_secs: u64,
    #[serde(default = "default_vm_type_name")]
    pub default_vm_type: String,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            socket: None,
            data_dir: None,
            backend: default_backend(),
            shutdown_policy: default_shutdown_policy(),
            storage: tfc_store::StoreKind::default(),
            shutdown_deadline_secs: default_shutdown_deadline(),
            default_vm_type: default_vm_type_name(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirecrackerConfig {
    pub binary: Option<PathBuf>,
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_secs: u64,
    #[serde(default = "default_console_limit")]
    pub console_log_limit_kib: u64,
    #[serde(default = "default_stop_grace")]
    pub stop_grace_ms: u64,
    /// Before SIGTERM, send Ctrl+Alt+Del and wait this long for the guest to shut
    /// down; 0 skips it (x86 guests need an i8042 driver to act on it).
    #[serde(default)]
    pub ctrl_alt_del_grace_ms: u64,
    /// Whether Firecracker runs under the jailer; see [`JailerSetting`].
    #[serde(default)]
    pub jailer: JailerSetting,
    /// The jailer binary; default: the one `tfc assets build` installed, else PATH.
    pub jailer_binary: Option<PathBuf>,
    /// The ids jailed VMMs run as, one per jail (uid = gid): `"START:COUNT"`;
    /// default [`DEFAULT_JAIL_IDS`]. Read through [`Self::jail_ids`].
    pub jail_ids: Option<String>,
    /// One user (and group, default: the same id) every jailed VMM runs as,
    /// instead of an id per jail.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Where the jails are made; default: `<data_dir>/jail`.
    pub chroot_base: Option<PathBuf>,
    #[serde(default)]
    pub cgroup_version: CgroupVersionSetting,
    /// Each VM's cgroup is `<parent_cgroup>/<vm id>` in every hierarchy.
    #[serde(default = "default_parent_cgroup")]
    pub parent_cgroup: String,
    /// Start each jailed VMM as pid 1 of a new PID namespace.
    #[serde(default = "default_true")]
    pub new_pid_ns: bool,
}

impl FirecrackerConfig {
    /// The users jailed VMMs run as: `uid`/`gid` shared by all when set,
    /// else an id per jail from `jail_ids` (validated at load).
    pub fn jail_ids(&self) -> tfc_firecracker::JailIds {
        use tfc_firecracker::{JailIds, JailUser};
        if let Some(uid) = self.uid {
            return JailIds::Shared(JailUser {
                uid,
                gid: self.gid.unwrap_or(uid),
            });
        }
        let (start, count) = self
            .jail_ids
            .as_deref()
            .and_then(|text| parse_jail_ids(text).ok())
            .unwrap_or(DEFAULT_JAIL_IDS);
        JailIds::PerJail { start, count }
    }
}

/// `firecracker.jailer`: `true`, `false` or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JailerSetting {
    /// Under the jailer when the daemon runs as root and finds the jailer
    /// binary; otherwise unconfined, and the log says why.
    #[default]
    Auto,
    /// Always under the jailer: a daemon that cannot jail refuses to start.
    On,
    /// Never.
    Off,
}

impl<'de> Deserialize<'de> for JailerSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = JailerSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false or \"auto\"")
            }
            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<JailerSetting, E> {
                Ok(if on {
                    JailerSetting::On
                } else {
                    JailerSetting::Off
                })
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<JailerSetting, E> {
                match text {
                    "auto" => Ok(JailerSetting::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(text), &self)),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `firecracker.cgroup_version`: the hierarchy the jailer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupVersionSetting {
    /// What is mounted at /sys/fs/cgroup.
    #[default]
    Auto,
    V1,
    V2,
}

/// The default `firecracker.jail_ids`: 65536 ids from 0x70000000, above the
/// ids user accounts, `/etc/subuid` ranges and systemd-nspawn's containers
/// are usually given, and below 2^31, which some tools mishandle. No
/// account has them, so they own no file outside the jails.
pub const DEFAULT_JAIL_IDS: (u32, u32) = (0x7000_0000, 65_536);

/// Parses `"START:COUNT"`: ids START to START + COUNT - 1, none of them 0
/// (root) or `u32::MAX` (which the kernel reads as "no id").
fn parse_jail_ids(text: &str) -> Result<(u32, u32), String> {
    let usage = "give \"START:COUNT\" (e.g. \"1879048192:65536\"): COUNT ids from START, uid = gid";
    let (start, count) = text
        .split_once(':')
        .and_then(|(s, c)| Some((s.trim().parse::<u32>().ok()?, c.trim().parse::<u32>().ok()?)))
        .ok_or_else(|| format!("`{text}` is not two whole numbers: {usage}"))?;
    if start == 0 {
        return Err(format!(
            "must not start at 0: jailed VMMs must not run as root; {usage}"
        ));
    }
    if count == 0 {
        return Err(format!("must hold at least one id; {usage}"));
    }
    if u64::from(start) + u64::from(count) > u64::from(u32::MAX) {
        return Err(format!(
            "{start}:{count} runs past the last id, {}: start lower or give fewer",
            u32::MAX - 1
        ));
    }
    Ok((start, count))
}

fn default_parent_cgroup() -> String {
    "tfc".to_owned()
}

fn default_true() -> bool {
    true
}

impl Default for FirecrackerConfig {
    fn default() -> Self {
        Self {
            binary: None,
            boot_timeout_secs: default_boot_timeout(),
            console_log_limit_kib: default_console_limit(),
            stop_grace_ms: default_stop_grace(),
            ctrl_alt_del_grace_ms: 0,
            jailer: JailerSetting::Auto,
            jailer_binary: None,
            jail_ids: None,
            uid: None,
            gid: None,
            chroot_base: None,
            cgroup_version: CgroupVersionSetting::Auto,
            parent_cgroup: default_parent_cgroup(),
            new_pid_ns: true,
        }
    }
}

/// The qemu-tcg backend: QEMU's `microvm` machine under software emulation,
/// with `vhost-device-vsock` for the vsock device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuConfig {
    /// `qemu-system-x86_64`; searched on PATH when omitted.
    pub binary: Option<PathBuf>,
    /// `vhost-device-vsock`; searched on PATH, then in cargo's install
    /// directory, when omitted.
    pub vhost_device_vsock: Option<PathBuf>,
    #[serde(default = "default_qemu_boot_timeout")]
    pub boot_timeout_secs: u64,
    #[serde(default = "default_console_limit")]
    pub console_log_limit_kib: u64,
    /// A stop asks QEMU to quit, then sends SIGTERM, then SIGKILL, each after
    /// this long.
    #[serde(default = "default_stop_grace")]
    pub stop_grace_ms: u64,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            binary: None,
            vhost_device_vsock: None,
            boot_timeout_secs: default_qemu_boot_timeout(),
            console_log_limit_kib: default_console_limit(),
            stop_grace_ms: default_stop_grace(),
        }
    }
}

/// The fake backend's defaults; tests script it further in code.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeConfig {
    #[serde(default = "default_fake_boot_ms")]
    pub boot_ms: u64,
    /// A `tfc-agent` binary to run on the host (its `--unix` mode, with a
    /// clock file) behind each fake VM's vsock socket, so the daemon's agent
    /// paths can be tried without a VMM. Tests and demos only.
    #[serde(default)]
    pub agent: Option<PathBuf>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            boot_ms: default_fake_boot_ms(),
            agent: None,
        }
    }
}

/// How the daemon uses the guest agents of its VMs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The largest file `PUT`/`GET /v1/vms/{id}/files` moves, in MiB.
    #[serde(default = "default_max_file_mib")]
    pub max_file_mib: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            max_file_mib: default_max_file_mib(),
        }
    }
}

impl AgentConfig {
    pub fn max_file_bytes(&self) -> u64 {
        self.max_file_mib * 1024 * 1024
    }
}

/// Who may reach the API and how much they may ask of it
/// ([docs/api.md](../../../docs/api.md#access)). The Unix socket is always
/// served; a TCP listener only when `tcp` is set, and then only with a token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `host:port` of a TCP listener; none when unset.
    pub tcp: Option<String>,
    /// A file holding the TCP listener's token (not accessible to every
    /// user); without it, the `TFC_TOKEN` environment variable.
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain and private key: with both, the TCP listener
    /// speaks HTTPS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Requests per second each TCP client may make on average; 0: no limit.
    #[serde(default)]
    pub rate_limit_per_sec: u32,
    /// Requests a TCP client may make at once before the rate applies.
    #[serde(default = "default_rate_limit_burst")]
    pub rate_limit_burst: u32,
    /// `POST /v1/vms` requests in flight at once, over both listeners.
    #[serde(default = "default_max_concurrent_creates")]
    pub max_concurrent_creates: u32,
    /// Execs in flight at once (until their output ends), over both
    /// listeners.
    #[serde(default = "default_max_concurrent_execs")]
    pub max_concurrent_execs: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            tcp: None,
            token_file: None,
            tls_cert: None,
            tls_key: None,
            rate_limit_per_sec: 0,
            rate_limit_burst: default_rate_limit_burst(),
            max_concurrent_creates: default_max_concurrent_creates(),
            max_concurrent_execs: default_max_concurrent_execs(),
        }
    }
}

fn default_rate_limit_burst() -> u32 {
    100
}
fn default_max_concurrent_creates() -> u32 {
    32
}
fn default_max_concurrent_execs() -> u32 {
    256
}

/// Largest `api.rate_limit_*` and `api.max_concurrent_*`.
pub const MAX_API_LIMIT: u32 = 1_000_000;

impl ApiConfig {
    /// The TCP listener's address; valid once the configuration has been
    /// validated.
    pub fn tcp_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        self.tcp
            .as_deref()
            .map(|text| {
                text.parse().map_err(|_| {
                    invalid(
                        "api.tcp",
                        format!("{text:?} is not an address with a port, e.g. \"127.0.0.1:7700\""),
                    )
                })
            })
            .transpose()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.tcp_addr()?;
        for (key, path) in [
            ("api.token_file", &self.token_file),
            ("api.tls_cert", &self.tls_cert),
            ("api.tls_key", &self.tls_key),
        ] {
            if path.as_ref().is_some_and(|p| !p.is_absolute()) {
                return Err(invalid(key, "must be an absolute path"));
            }
            if path.is_some() && self.tcp.is_none() {
                return Err(invalid(
                    key,
                    "is used only by the TCP listener: set api.tcp too, or remove it",
                ));
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(invalid(
                    "api.tls_cert",
                    "needs api.tls_key (the certificate's private key, PEM)",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "api.tls_key",
                    "needs api.tls_cert (the certificate chain, PEM)",
                ))
            }
            _ => {}
        }
        for (key, value, min) in [
            ("api.rate_limit_per_sec", self.rate_limit_per_sec, 0),
            ("api.rate_limit_burst", self.rate_limit_burst, 1),
            ("api.max_concurrent_creates", self.max_concurrent_creates, 1),
            ("api.max_concurrent_execs", self.max_concurrent_execs, 1),
        ] {
            if !(min..=MAX_API_LIMIT).contains(&value) {
                return Err(invalid(
                    key,
                    format!("must be between {min} and {MAX_API_LIMIT}"),
                ));
            }
        }
        Ok(())
    }
}

/// Which built root image a VM type uses when it names no `rootfs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Image {
    /// Static busybox with the guest agent (always built).
    #[default]
    Busybox,
    /// Debian 12 minbase with the guest agent (`tfc assets build --debian`).
    Debian,
}

impl Image {
    pub fn as_str(self) -> &'static str {
        match self {
            Image::Busybox => "busybox",
            Image::Debian => "debian",
        }
    }
}

/// Whether a VM type's VMs run the guest agent as their init.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentMode {
    /// On when the VM's VMM can run guest userspace: always under QEMU TCG;
    /// under Firecracker unless the built assets are for a nested host.
    #[default]
    Auto,
    On,
    Off,
}

impl AgentMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentMode::Auto => "auto",
            AgentMode::On => "on",
            AgentMode::Off => "off",
        }
    }
}

/// A VM type: the recipe callers name in `POST /v1/vms`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmTypeConfig {
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// Kernel image; the built assets' kernel if omitted.
    pub kernel: Option<PathBuf>,
    /// Root filesystem image, attached read-only; the built assets' `image`
    /// if omitted.
    pub rootfs: Option<PathBuf>,
    /// Which built root image to use when `rootfs` is omitted.
    #[serde(default)]
    pub image: Image,
    /// Kernel command line; the built assets' profile args if omitted.
    pub boot_args: Option<String>,
    /// Console text that marks the VM Ready.
    #[serde(default = "default_readiness_line")]
    pub readiness_line: String,
    /// Track dirty guest pages from boot, so diff snapshots can be taken of
    /// this type's VMs.
    #[serde(default)]
    pub diff_snapshots: bool,
    /// The VMM this type's VMs run on; the daemon's backend if omitted.
    pub backend: Option<Vmm>,
    /// Run the guest agent as the VMs' init: readiness is then its answer,
    /// `exec` and files work, restores fix the guest's clock and entropy.
    #[serde(default)]
    pub agent: AgentMode,
    /// The agent's vsock port.
    #[serde(default = "default_agent_port")]
    pub agent_port: u32,
    /// The type's pool of prewarmed VMs.
    #[serde(default)]
    pub pool: PoolConfig,
    /// The VMs' network; `none` (no NIC) unless set, which needs
    /// `network.enabled`.
    #[serde(default)]
    pub network: NetMode,
    /// I/O limits of the type's VMs (none: unlimited).
    #[serde(default)]
    pub rate_limits: RateLimits,
    /// Performance targets; a missed one raises an alert.
    #[serde(default)]
    pub targets: crate::alerts::Targets,
}

/// A VM type's pool: how many VMs wait in each tier, which tiers may serve an
/// acquire, and how the pool looks after itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Hot tier (restored, paused): VMs to keep waiting.
    #[serde(default)]
    pub target: u32,
    /// Bounds of the hot target (resizes and autoscaling stay within them).
    #[serde(default)]
    pub min: u32,
    #[serde(default = "default_pool_max")]
    pub max: u32,
    /// Running tier (restored, left running): VMs to keep waiting. Each costs
    /// what its guest does while idle.
    #[serde(default)]
    pub running: u32,
    /// Tiers allowed to serve an acquire; they are tried in the order
    /// running, hot, warm, cold whatever the order here.
    #[serde(default = "default_pool_tiers")]
    pub tiers: Vec<tfc_core::PoolTier>,
    #[serde(default)]
    pub strategy: tfc_core::allocation::AllocationStrategy,
    /// Restores into the pool at once.
    #[serde(default = "default_prewarm_concurrency")]
    pub prewarm_concurrency: u32,
    /// Waiting VMs older than this are replaced.
    #[serde(default = "default_max_age")]
    pub max_age_secs: u64,
    /// How often waiting VMs are checked (process, VMM state, guest).
    #[serde(default = "default_health_interval")]
    pub health_interval_ms: u64,
    /// An acquire's budget when the caller gives none.
    #[serde(default = "default_acquire_timeout")]
    pub acquire_timeout_ms: u64,
    /// Scale the hot target with demand; off when absent.
    pub autoscale: Option<AutoscaleConfig>,
    /// The CPU priority of VMs being prewarmed and waiting (see
    /// [`PrewarmPriority`]).
    #[serde(default)]
    pub prewarm_priority: PrewarmPriority,
}

/// `pool.prewarm_priority`: the CPU priority a pool's VMs get from their
/// restore until they are handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrewarmPriority {
    /// Linux's `SCHED_IDLE`: restores and waiting guests use only CPU time
    /// nothing else wants, so they never hold up VMs in use or the API.
    /// The hand-over gives the VMM's own threads normal priority before its
    /// resume, and its vCPUs once the answer is out. A
    /// daemon without `CAP_SYS_NICE` (not root) could not give it back, and
    /// uses `normal`.
    #[default]
    Idle,
    /// The same priority as every other VM.
    Normal,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            target: 0,
            min: 0,
            max: default_pool_max(),
            running: 0,
            tiers: default_pool_tiers(),
            strategy: Default::default(),
            prewarm_concurrency: default_prewarm_concurrency(),
            max_age_secs: default_max_age(),
            health_interval_ms: default_health_interval(),
            acquire_timeout_ms: default_acquire_timeout(),
            autoscale: None,
            prewarm_priority: PrewarmPriority::Idle,
        }
    }
}

/// Autoscaling of a pool's hot target, decided once per window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleConfig {
    #[serde(default = "default_up_threshold")]
    pub up_threshold: f64,
    #[serde(default = "default_down_threshold")]
    pub down_threshold: f64,
    #[serde(default = "default_window")]
    pub window_secs: u64,
    #[serde(default = "default_step")]
    pub step: u32,
}

fn default_backend() -> BackendKind {
    BackendKind::Firecracker
}
fn default_shutdown_policy() -> ShutdownPolicy {
    ShutdownPolicy::LeaveRunning
}
fn default_shutdown_deadline() -> u64 {
    10
}
fn default_vm_type_name() -> String {
    "default".to_owned()
}
fn default_boot_timeout() -> u64 {
    180
}
fn default_qemu_boot_timeout() -> u64 {
    120
}
fn default_console_limit() -> u64 {
    1024
}
fn default_stop_grace() -> u64 {
    2000
}
fn default_fake_boot_ms() -> u64 {
    20
}
fn default_max_file_mib() -> u64 {
    256
}
fn default_agent_port() -> u32 {
    tfc_core::spec::DEFAULT_AGENT_PORT
}
fn default_vcpus() -> u8 {
    1
}
fn default_memory() -> u32 {
    128
}
fn default_readiness_line() -> String {
    "Run /init as init process".to_owned()
}
fn default_pool_max() -> u32 {
    8
}
fn default_pool_tiers() -> Vec<tfc_core::PoolTier> {
    tfc_core::PoolTier::ALL.to_vec()
}
fn default_prewarm_concurrency() -> u32 {
    2
}
fn default_max_age() -> u64 {
    3600
}
fn default_health_interval() -> u64 {
    10_000
}
fn default_acquire_timeout() -> u64 {
    60_000
}
fn default_up_threshold() -> f64 {
    0.75
}
fn default_down_threshold() -> f64 {
    0.25
}
fn default_window() -> u64 {
    60
}
fn default_step() -> u32 {
    1
}
fn default_vm_types() -> BTreeMap<String, VmTypeConfig> {
    BTreeMap::from([(
        "default".to_owned(),
        VmTypeConfig {
            vcpus: default_vcpus(),
            memory_mib: default_memory(),
            kernel: None,
            rootfs: None,
            image: Image::default(),
            boot_args: None,
            readiness_line: default_readiness_line(),
            diff_snapshots: false,
            backend: None,
            agent: AgentMode::default(),
            agent_port: default_agent_port(),
            pool: PoolConfig::default(),
            network: NetMode::None,
            rate_limits: RateLimits::default(),
            targets: crate::alerts::Targets::default(),
        },
    )])
}

/// Per-VM networking ([docs/networking.md](../../../docs/networking.md)).
/// The pool, prefix and uplink are kept as written and parsed by
/// [`Config::validate`], so that a bad value is reported with its key rather
/// than as a TOML parse error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Off: VMs asking for a network are refused, and the daemon touches
    /// nothing of the host's network.
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_network_pool")]
    pub pool: String,
    #[serde(default = "default_network_prefix")]
    pub prefix: String,
    /// The interface mode `nat` sends egress out of; without one, `nat` is
    /// refused.
    #[serde(default)]
    pub uplink: Option<String>,
    /// Networks made ahead of demand, so a VM's network costs a lease only.
    #[serde(default = "default_ready_slots")]
    pub ready_slots: u32,
    /// A network namespace (under `/run/netns`) that plays the host: the
    /// host ends of VM links, the host's ruleset and port forwards go there
    /// instead of the real host's namespace. For tests and demos that must
    /// leave the host untouched; it must exist.
    #[serde(default)]
    pub host_netns: Option<String>,
}

fn default_network_pool() -> String {
    Ipv4Pool::DEFAULT.to_string()
}

fn default_network_prefix() -> String {
    NamePrefix::standard().as_str().to_owned()
}

fn default_ready_slots() -> u32 {
    2
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            pool: default_network_pool(),
            prefix: default_network_prefix(),
            uplink: None,
            ready_slots: default_ready_slots(),
            host_netns: None,
        }
    }
}

/// Most ready network slots: each is a namespace, a tap and a veth pair.
pub const MAX_READY_SLOTS: u32 = 64;

impl NetworkConfig {
    /// The address pool; valid once the configuration has been validated.
    pub fn pool(&self) -> Result<Ipv4Pool, ConfigError> {
        self.pool
            .parse()
            .map_err(|e: AddrError| invalid("network.pool", e.to_string()))
    }

    /// The name prefix; valid once the configuration has been validated.
    pub fn prefix(&self) -> Result<NamePrefix, ConfigError> {
        self.prefix
            .parse()
            .map_err(|e: ObjectError| invalid("network.prefix", e.to_string()))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.pool()?;
        self.prefix()?;
        if let Some(uplink) = &self.uplink {
            // The kernel's interface-name rule, narrowed to characters that
            // are safe inside an nftables ruleset (as tfc-net checks too).
            let ok = (1..=15).contains(&uplink.len())
                && uplink
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !ok {
                return Err(invalid(
                    "network.uplink",
                    "must be an interface name: 1 to 15 characters a-z, A-Z, 0-9, '.', '_' or '-'",
                ));
            }
        }
        if self.ready_slots > MAX_READY_SLOTS {
            return Err(invalid(
                "network.ready_slots",
                format!("must be at most {MAX_READY_SLOTS}"),
            ));
        }
        Ok(())
    }
}

/// The largest `agent.max_file_mib`: the agent itself refuses files over
/// 1 GiB.
pub const MAX_FILE_MIB: u64 = 1024;

/// Most VMs one tier of a pool may hold.
pub const MAX_POOL_SIZE: u32 = 256;

impl PoolConfig {
    fn validate(&self, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        check_sizes(self.min, self.target, self.max, self.running, &self.tiers)
            .map_err(|(field, reason)| invalid(key(field), reason))?;
        if !(1..=64).contains(&self.prewarm_concurrency) {
            return Err(invalid(
                key("prewarm_concurrency"),
                "must be between 1 and 64",
            ));
        }
        if self.tiers.is_empty() {
            return Err(invalid(key("tiers"), "must name at least one tier"));
        }
        let mut seen = self.tiers.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != self.tiers.len() {
            return Err(invalid(key("tiers"), "names a tier twice"));
        }
        if self.max_age_secs == 0 {
            return Err(invalid(key("max_age_secs"), "must be at least 1"));
        }
        if !(100..=3_600_000).contains(&self.health_interval_ms) {
            return Err(invalid(
                key("health_interval_ms"),
                "must be between 100 and 3600000",
            ));
        }
        if self.acquire_timeout_ms > 600_000 {
            return Err(invalid(key("acquire_timeout_ms"), "must be at most 600000"));
        }
        if let Some(a) = &self.autoscale {
            if !self.tiers.contains(&tfc_core::PoolTier::Hot) {
                return Err(invalid(
                    key("autoscale"),
                    "scales the hot tier, which the pool's tiers do not include",
                ));
            }
            let in_unit = |v: f64| (0.0..=1.0).contains(&v);
            if !in_unit(a.up_threshold)
                || !in_unit(a.down_threshold)
                || a.down_threshold >= a.up_threshold
            {
                return Err(invalid(
                    key("autoscale"),
                    "needs 0 <= down_threshold < up_threshold <= 1",
                ));
            }
            if !(1..=86_400).contains(&a.window_secs) {
                return Err(invalid(
                    key("autoscale.window_secs"),
                    "must be between 1 and 86400",
                ));
            }
            if !(1..=MAX_POOL_SIZE).contains(&a.step) {
                return Err(invalid(
                    key("autoscale.step"),
                    format!("must be between 1 and {MAX_POOL_SIZE}"),
                ));
            }
        }
        Ok(())
    }
}

/// Checks a pool's sizes; on error, the field at fault and why.
pub fn check_sizes(
    min: u32,
    target: u32,
    max: u32,
    running: u32,
    tiers: &[tfc_core::PoolTier],
) -> Result<(), (&'static str, String)> {
    if max > MAX_POOL_SIZE {
        return Err(("max", format!("must be at most {MAX_POOL_SIZE}")));
    }
    if running > MAX_POOL_SIZE {
        return Err(("running", format!("must be at most {MAX_POOL_SIZE}")));
    }
    if min > max {
        return Err(("min", format!("{min} is above max {max}")));
    }
    if target < min || target > max {
        return Err((
            "target",
            format!("{target} is outside min..=max ({min}..={max}); change the bound with it"),
        ));
    }
    // VMs in a tier that may not serve would wait for nothing.
    if target > 0 && !tiers.contains(&tfc_core::PoolTier::Hot) {
        return Err((
            "target",
            "must be 0 unless the pool's tiers include \"hot\"".to_owned(),
        ));
    }
    if running > 0 && !tiers.contains(&tfc_core::PoolTier::Running) {
        return Err((
            "running",
            "must be 0 unless the pool's tiers include \"running\"".to_owned(),
        ));
    }
    Ok(())
}

impl Config {
    /// Reads `path`, or the embedded defaults when `None`, and validates it.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::parse(&text, &path.display().to_string())
            }
            None => Self::parse(DEFAULT_CONFIG, "<embedded defaults>"),
        }
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            source: Box::new(e),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let fc = &self.firecracker;
        if !(1..=3600).contains(&fc.boot_timeout_secs) {
            return Err(invalid(
                "firecracker.boot_timeout_secs",
                "must be between 1 and 3600",
            ));
        }
        if !(4..=1024 * 1024).contains(&fc.console_log_limit_kib) {
            return Err(invalid(
                "firecracker.console_log_limit_kib",
                "must be between 4 and 1048576",
            ));
        }
        for (key, value) in [
            ("firecracker.stop_grace_ms", fc.stop_grace_ms),
            (
                "firecracker.ctrl_alt_del_grace_ms",
                fc.ctrl_alt_del_grace_ms,
            ),
        ] {
            if value > 60_000 {
                return Err(invalid(key, "must be at most 60000"));
            }
        }
        for (key, path) in [
            ("firecracker.binary", &fc.binary),
            ("firecracker.jailer_binary", &fc.jailer_binary),
            ("firecracker.chroot_base", &fc.chroot_base),
        ] {
            if path.as_ref().is_some_and(|p| !p.is_absolute()) {
                return Err(invalid(key, "must be an absolute path"));
            }
        }
        let cgroup_name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if fc.parent_cgroup.is_empty()
            || fc.parent_cgroup.starts_with('.')
            || !fc.parent_cgroup.chars().all(cgroup_name_ok)
        {
            return Err(invalid(
                "firecracker.parent_cgroup",
                "must be one cgroup name: letters, digits, '-', '_' or '.', not starting with '.'",
            ));
        }
        if let Some(text) = &fc.jail_ids {
            parse_jail_ids(text).map_err(|reason| invalid("firecracker.jail_ids", reason))?;
            if fc.uid.is_some() {
                return Err(invalid(
                    "firecracker.uid",
                    "a uid shared by every jail and firecracker.jail_ids (an id per jail) exclude each other: remove one",
                ));
            }
        }
        if fc.gid.is_some() && fc.uid.is_none() {
            return Err(invalid(
                "firecracker.gid",
                "a shared group needs a shared user: set firecracker.uid too (or remove gid for an id per jail)",
            ));
        }
        if fc.uid == Some(0) || fc.gid == Some(0) {
            return Err(invalid(
                "firecracker.uid",
                "the jailed VMM must not run as root (uid or gid 0): choose an unprivileged id",
            ));
        }
        let qemu = &self.qemu;
        if !(1..=3600).contains(&qemu.boot_timeout_secs) {
            return Err(invalid(
                "qemu.boot_timeout_secs",
                "must be between 1 and 3600",
            ));
        }
        if !(4..=1024 * 1024).contains(&qemu.console_log_limit_kib) {
            return Err(invalid(
                "qemu.console_log_limit_kib",
                "must be between 4 and 1048576",
            ));
        }
        if qemu.stop_grace_ms > 60_000 {
            return Err(invalid("qemu.stop_grace_ms", "must be at most 60000"));
        }
        for (key, path) in [
            ("qemu.binary", &qemu.binary),
            ("qemu.vhost_device_vsock", &qemu.vhost_device_vsock),
        ] {
            if path.as_ref().is_some_and(|p| !p.is_absolute()) {
                return Err(invalid(key, "must be an absolute path"));
            }
        }
        if self.daemon.shutdown_deadline_secs > 3600 {
            return Err(invalid(
                "daemon.shutdown_deadline_secs",
                "must be at most 3600",
            ));
        }
        if self.fake.boot_ms > 600_000 {
            return Err(invalid("fake.boot_ms", "must be at most 600000"));
        }
        if let Some(agent) = &self.fake.agent {
            if !agent.is_absolute() {
                return Err(invalid("fake.agent", "must be an absolute path"));
            }
        }
        if !(1..=MAX_FILE_MIB).contains(&self.agent.max_file_mib) {
            return Err(invalid(
                "agent.max_file_mib",
                format!("must be between 1 and {}", MAX_FILE_MIB),
            ));
        }
        for (key, path) in [
            ("daemon.socket", &self.daemon.socket),
            ("daemon.data_dir", &self.daemon.data_dir),
        ] {
            if path.as_ref().is_some_and(|p| !p.is_absolute()) {
                return Err(invalid(key, "must be an absolute path"));
            }
        }
        self.network.validate()?;
        self.api.validate()?;
        if self.vm_types.is_empty() {
            return Err(invalid("vm_types", "at least one VM type is required"));
        }
        for (name, vm_type) in &self.vm_types {
            let key = |field: &str| format!("vm_types.{name}.{field}");
            VmTypeName::new(name.as_str())
                .map_err(|e: IdError| invalid(format!("vm_types.{name}"), e.to_string()))?;
            if vm_type.vcpus == 0 || vm_type.vcpus > spec::MAX_VCPUS {
                return Err(invalid(
                    key("vcpus"),
                    format!("must be between 1 and {}", spec::MAX_VCPUS),
                ));
            }
            if !(spec::MIN_MEMORY_MIB..=spec::MAX_MEMORY_MIB).contains(&vm_type.memory_mib) {
                return Err(invalid(
                    key("memory_mib"),
                    format!(
                        "must be between {} and {}",
                        spec::MIN_MEMORY_MIB,
                        spec::MAX_MEMORY_MIB
                    ),
                ));
            }
            for (field, path) in [("kernel", &vm_type.kernel), ("rootfs", &vm_type.rootfs)] {
                if path.as_ref().is_some_and(|p| !p.is_absolute()) {
                    return Err(invalid(key(field), "must be an absolute path"));
                }
            }
            if let Some(args) = &vm_type.boot_args {
                spec::validate_boot_args(args)
                    .map_err(|e| invalid(key("boot_args"), e.to_string()))?;
                if let Some(word) = spec::console_silencer(args) {
                    return Err(invalid(
                        key("boot_args"),
                        format!("{word:?} would hide the console line readiness waits for"),
                    ));
                }
            }
            if vm_type.readiness_line.is_empty() {
                return Err(invalid(key("readiness_line"), "must not be empty"));
            }
            if vm_type.rootfs.is_some() && vm_type.image != Image::Busybox {
                return Err(invalid(
                    key("image"),
                    "names a built image, and `rootfs` names a file: give one of them",
                ));
            }
            if vm_type.agent_port == 0 || vm_type.agent_port == u32::MAX {
                return Err(invalid(
                    key("agent_port"),
                    format!("must be between 1 and {}", u32::MAX - 1),
                ));
            }
            vm_type
                .pool
                .validate(&|field| key(&format!("pool.{field}")))?;
            if !self.vmm_of(vm_type).takes_snapshots() {
                let vmm = self.vmm_of(vm_type);
                let refuse = |field: &str, what: &str| {
                    invalid(
                        key(field),
                        format!("{what}, and the {vmm} backend takes no snapshots: set it to 0/false, or run this type on firecracker (vm_types.{name}.backend = \"firecracker\")"),
                    )
                };
                if vm_type.pool.target > 0 {
                    return Err(refuse(
                        "pool.target",
                        "a pool keeps VMs restored from the type's template snapshot",
                    ));
                }
                if vm_type.pool.running > 0 {
                    return Err(refuse(
                        "pool.running",
                        "a pool keeps VMs restored from the type's template snapshot",
                    ));
                }
                if vm_type.diff_snapshots {
                    return Err(refuse("diff_snapshots", "diff snapshots are snapshots"));
                }
            }
        }
        self.alerts.validate()?;
        for (name, vm_type) in &self.vm_types {
            vm_type
                .targets
                .validate(&format!("vm_types.{name}.targets"))?;
            self.validate_type_network(name, vm_type)?;
            let key = format!("vm_types.{name}.rate_limits");
            vm_type
                .rate_limits
                .validate()
                .map_err(|e| invalid(key.clone(), e.to_string()))?;
            if !vm_type.rate_limits.is_empty() && self.vmm_of(vm_type) != Vmm::Firecracker {
                return Err(invalid(key, "only firecracker VMs have rate limits"));
            }
            let net_limited = [vm_type.rate_limits.net_rx, vm_type.rate_limits.net_tx]
                .iter()
                .any(|l| l.is_some_and(|l| !l.is_unlimited()));
            if net_limited && vm_type.network == NetMode::None {
                return Err(invalid(
                    key,
                    "net_rx and net_tx need a network: set network = \"isolated\" or \"nat\", or limit only the disk",
                ));
            }
        }
        if !self.vm_types.contains_key(&self.daemon.default_vm_type) {
            return Err(invalid(
                "daemon.default_vm_type",
                format!(
                    "names VM type {:?}, which is not defined under [vm_types]",
                    self.daemon.default_vm_type
                ),
            ));
        }
        Ok(())
    }

    /// A type's network mode against what the daemon's networking offers.
    fn validate_type_network(&self, name: &str, vm_type: &VmTypeConfig) -> Result<(), ConfigError> {
        let mode = vm_type.network;
        if mode == NetMode::None {
            return Ok(());
        }
        let key = format!("vm_types.{name}.network");
        if !self.network.enabled {
            return Err(invalid(
                key,
                format!(
                    "{mode:?} needs networking: set network.enabled = true, or network = \"none\"",
                    mode = mode.as_str()
                ),
            ));
        }
        if mode == NetMode::Nat && self.network.uplink.is_none() {
            return Err(invalid(
                key,
                "\"nat\" needs an uplink: set network.uplink (e.g. \"eth0\"), or use \"isolated\"",
            ));
        }
        Ok(())
    }

    /// The VMM VMs of `vm_type` run on.
    pub fn vmm_of(&self, vm_type: &VmTypeConfig) -> Vmm {
        vm_type
            .backend
            .unwrap_or_else(|| self.daemon.backend.default_vmm())
    }

    /// How long a VM on `vmm` may take from boot to ready.
    pub fn boot_timeout(&self, vmm: Vmm) -> std::time::Duration {
        std::time::Duration::from_secs(match vmm {
            Vmm::Firecracker => self.firecracker.boot_timeout_secs,
            Vmm::QemuTcg => self.qemu.boot_timeout_secs,
        })
    }

    /// The socket path: `TFC_SOCKET`, else the config, else the standard path.
    pub fn socket_path(&self) -> PathBuf {
        match std::env::var_os("TFC_SOCKET").filter(|v| !v.is_empty()) {
            Some(path) => PathBuf::from(path),
            None => self
                .daemon
                .socket
                .clone()
                .unwrap_or_else(tfc_host::paths::socket_path),
        }
    }

    /// The data directory: `TFC_DATA_DIR`, else the config, else the standard path.
    pub fn data_dir(&self) -> PathBuf {
        match std::env::var_os("TFC_DATA_DIR").filter(|v| !v.is_empty()) {
            Some(path) => PathBuf::from(path),
            None => self
                .daemon
                .data_dir
                .clone()
                .unwrap_or_else(tfc_host::paths::data_dir),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_valid() {
        let config = Config::load(None).unwrap();
        assert_eq!(config.daemon.backend, BackendKind::Firecracker);
        assert_eq!(config.vm_types["default"].memory_mib, 128);
    }

    #[test]
    fn vm_types_run_on_their_own_backend_else_the_daemons() {
        let config = Config::parse(
            "[daemon]\nbackend = \"qemu-tcg\"\n[vm_types.default]\n[vm_types.fc]\nbackend = \"firecracker\"\n[vm_types.fc.pool]\ntarget = 1",
            "t",
        )
        .unwrap();
        assert_eq!(config.daemon.backend, BackendKind::QemuTcg);
        assert_eq!(config.vmm_of(&config.vm_types["default"]), Vmm::QemuTcg);
        assert_eq!(config.vmm_of(&config.vm_types["fc"]), Vmm::Firecracker);
        assert_eq!(config.boot_timeout(Vmm::QemuTcg).as_secs(), 120);
        let fake = Config::parse("[daemon]\nbackend = \"fake\"", "t").unwrap();
        assert_eq!(fake.vmm_of(&fake.vm_types["default"]), Vmm::Firecracker);
        // The refusal says why and what to do instead.
        let err = Config::parse(
            "[vm_types.default]\nbackend = \"qemu-tcg\"\n[vm_types.default.pool]\ntarget = 1",
            "t",
        )
        .unwrap_err();
        let err = tfc_core::error_chain(&err);
        assert!(
            err.contains("takes no snapshots") && err.contains("backend = \"firecracker\""),
            "{err}"
        );
    }

    #[test]
    fn networking_is_off_by_default_and_bad_values_name_their_key() {
        let config = Config::parse("", "t").unwrap();
        assert!(!config.network.enabled);
        assert_eq!(config.network.pool().unwrap(), Ipv4Pool::DEFAULT);
        assert_eq!(config.network.prefix().unwrap(), NamePrefix::standard());
        let config = Config::parse(
            "[network]\nenabled = true\npool = \"10.77.0.0/24\"\nprefix = \"tfx\"\n\
             uplink = \"eth0\"\nready_slots = 4",
            "t",
        )
        .unwrap();
        assert!(config.network.enabled);
        assert_eq!(config.network.pool().unwrap().to_string(), "10.77.0.0/24");
        assert_eq!(config.network.prefix().unwrap().as_str(), "tfx");
        assert_eq!(config.network.uplink.as_deref(), Some("eth0"));
        assert_eq!(config.network.ready_slots, 4);
        for (text, key) in [
            ("pool = \"10.77.0.1/24\"", "network.pool"),
            ("pool = \"10.77.0.0/31\"", "network.pool"),
            ("pool = \"nope\"", "network.pool"),
            ("prefix = \"Tfc-x\"", "network.prefix"),
            ("uplink = \"eth0; drop\"", "network.uplink"),
            ("uplink = \"\"", "network.uplink"),
            ("ready_slots = 65", "network.ready_slots"),
        ] {
            let err = Config::parse(&format!("[network]\n{text}"), "t").unwrap_err();
            let err = tfc_core::error_chain(&err);
            assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        }
    }

    #[test]
    fn a_types_network_needs_networking_enabled_and_nat_an_uplink() {
        let config = Config::parse("", "t").unwrap();
        assert_eq!(config.vm_types["default"].network, NetMode::None);
        let on = "[network]\nenabled = true\nuplink = \"eth0\"\n";
        let config = Config::parse(
            &format!(
                "[daemon]\ndefault_vm_type = \"a\"\n{on}\
                 [vm_types.a]\nnetwork = \"isolated\"\n[vm_types.b]\nnetwork = \"nat\""
            ),
            "t",
        )
        .unwrap();
        assert_eq!(config.vm_types["a"].network, NetMode::Isolated);
        assert_eq!(config.vm_types["b"].network, NetMode::Nat);
        for (text, needle) in [
            (
                "[vm_types.a]\nnetwork = \"isolated\"",
                "network.enabled = true",
            ),
            (
                "[network]\nenabled = true\n[vm_types.a]\nnetwork = \"nat\"",
                "network.uplink",
            ),
        ] {
            let err = Config::parse(text, "t").unwrap_err();
            let err = tfc_core::error_chain(&err);
            assert!(
                err.contains("`vm_types.a.network`") && err.contains(needle),
                "{text}: {err}"
            );
        }
        let err = Config::parse("[vm_types.a]\nnetwork = \"bridged\"", "t").unwrap_err();
        assert!(tfc_core::error_chain(&err).contains("network"), "{err}");
    }

    #[test]
    fn the_jailer_is_automatic_by_default_and_its_keys_parse() {
        let config = Config::parse("", "t").unwrap();
        let fc = &config.firecracker;
        assert_eq!(fc.jailer, JailerSetting::Auto);
        assert_eq!(
            fc.jail_ids(),
            tfc_firecracker::JailIds::PerJail {
                start: 0x7000_0000,
                count: 65536
            }
        );
        assert_eq!(fc.cgroup_version, CgroupVersionSetting::Auto);
        assert_eq!(fc.parent_cgroup, "tfc");
        assert!(fc.new_pid_ns && fc.chroot_base.is_none() && fc.jailer_binary.is_none());
        let config = Config::parse(
            "[firecracker]\njailer = true\nuid = 1234\ngid = 4321\nchroot_base = \"/srv/j\"\n\
             cgroup_version = \"v2\"\nnew_pid_ns = false\njailer_binary = \"/opt/jailer\"",
            "t",
        )
        .unwrap();
        let fc = &config.firecracker;
        assert!(fc.jailer == JailerSetting::On && !fc.new_pid_ns);
        assert_eq!(
            fc.jail_ids(),
            tfc_firecracker::JailIds::Shared(tfc_firecracker::JailUser {
                uid: 1234,
                gid: 4321
            })
        );
        assert_eq!(fc.cgroup_version, CgroupVersionSetting::V2);
        assert_eq!(fc.chroot_base.as_deref(), Some(Path::new("/srv/j")));
        assert_eq!(fc.jailer_binary.as_deref(), Some(Path::new("/opt/jailer")));
    }

    #[test]
    fn the_jailer_setting_is_a_flag_or_auto() {
        let setting = |text: &str| {
            Config::parse(&format!("[firecracker]\njailer = {text}"), "t")
                .map(|c| c.firecracker.jailer)
                .map_err(|e| tfc_core::error_chain(&e))
        };
        assert_eq!(setting("true"), Ok(JailerSetting::On));
        assert_eq!(setting("false"), Ok(JailerSetting::Off));
        assert_eq!(setting("\"auto\""), Ok(JailerSetting::Auto));
        for bad in ["\"yes\"", "1", "\"Auto\""] {
            let err = setting(bad).unwrap_err();
            assert!(
                err.contains("jailer") && err.contains("true, false or \"auto\""),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn jail_ids_are_a_range_or_one_shared_user() {
        use tfc_firecracker::{JailIds, JailUser};
        let ids = |text: &str| Config::parse(text, "t").unwrap().firecracker.jail_ids();
        assert_eq!(
            ids("[firecracker]\njail_ids = \"200000:16\""),
            JailIds::PerJail {
                start: 200_000,
                count: 16
            }
        );
        // The range may end at the last id there is, u32::MAX - 1.
        assert_eq!(
            ids("[firecracker]\njail_ids = \"4294967290:5\""),
            JailIds::PerJail {
                start: 4_294_967_290,
                count: 5
            }
        );
        assert_eq!(
            ids("[firecracker]\nuid = 65534"),
            JailIds::Shared(JailUser {
                uid: 65534,
                gid: 65534
            })
        );
        let err = Config::parse("[firecracker]\njail_ids = \"4294967290:6\"", "t").unwrap_err();
        assert!(
            tfc_core::error_chain(&err).contains("runs past the last id, 4294967294"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_file_means_defaults() {
        let config = Config::parse("", "t").unwrap();
        assert!(config.vm_types.contains_key("default"));
        assert_eq!(config.firecracker.boot_timeout_secs, 180);
    }

    /// Each bad config names the key at fault.
    #[test]
    fn invalid_configs_name_the_key() {
        let cases = [
            ("[daemon]\nbackend = \"qemu\"", "backend"),
            ("[daemon]\nbogus = 1", "bogus"),
            ("[nonsense]\nx = 1", "nonsense"),
            ("[daemon]\nsocket = \"relative.sock\"", "daemon.socket"),
            ("[daemon]\ndata_dir = \"rel\"", "daemon.data_dir"),
            (
                "[daemon]\ndefault_vm_type = \"big\"",
                "daemon.default_vm_type",
            ),
            ("[daemon]\nshutdown_policy = \"explode\"", "shutdown_policy"),
            ("[daemon]\nstorage = \"postgres\"", "storage"),
            (
                "[daemon]\nshutdown_deadline_secs = 9999",
                "daemon.shutdown_deadline_secs",
            ),
            (
                "[firecracker]\nboot_timeout_secs = 0",
                "firecracker.boot_timeout_secs",
            ),
            (
                "[firecracker]\nconsole_log_limit_kib = 1",
                "firecracker.console_log_limit_kib",
            ),
            (
                "[firecracker]\nstop_grace_ms = 100000",
                "firecracker.stop_grace_ms",
            ),
            (
                "[firecracker]\nctrl_alt_del_grace_ms = 100000",
                "firecracker.ctrl_alt_del_grace_ms",
            ),
            ("[firecracker]\nbinary = \"fc\"", "firecracker.binary"),
            (
                "[firecracker]\njailer_binary = \"jailer\"",
                "firecracker.jailer_binary",
            ),
            (
                "[firecracker]\nchroot_base = \"jails\"",
                "firecracker.chroot_base",
            ),
            (
                "[firecracker]\nparent_cgroup = \"a/b\"",
                "firecracker.parent_cgroup",
            ),
            (
                "[firecracker]\nparent_cgroup = \"..\"",
                "firecracker.parent_cgroup",
            ),
            (
                "[firecracker]\njailer = true\nuid = 0",
                "firecracker.uid",
            ),
            ("[firecracker]\ngid = 7", "firecracker.gid"),
            (
                "[firecracker]\nuid = 7\njail_ids = \"100:10\"",
                "firecracker.uid",
            ),
            ("[firecracker]\njail_ids = \"0:10\"", "firecracker.jail_ids"),
            ("[firecracker]\njail_ids = \"100:0\"", "firecracker.jail_ids"),
            ("[firecracker]\njail_ids = \"100\"", "firecracker.jail_ids"),
            ("[firecracker]\njail_ids = \"-1:10\"", "firecracker.jail_ids"),
            (
                "[firecracker]\njail_ids = \"4294967290:6\"",
                "firecracker.jail_ids",
            ),
            ("[firecracker]\njail_ids = 100", "jail_ids"),
            ("[firecracker]\ncgroup_version = \"3\"", "cgroup_version"),
            (
                "[firecracker]\nboot_timeout_secs = \"long\"",
                "boot_timeout_secs",
            ),
            ("[fake]\nboot_ms = 9999999", "fake.boot_ms"),
            ("[fake]\nagent = \"tfc-agent\"", "fake.agent"),
            ("[agent]\nmax_file_mib = 0", "agent.max_file_mib"),
            ("[agent]\nmax_file_mib = 4096", "agent.max_file_mib"),
            ("[agent]\nmax_file = 1", "max_file"),
            ("[vm_types.default]\nagent = \"yes\"", "agent"),
            ("[vm_types.default]\nimage = \"alpine\"", "image"),
            (
                "[vm_types.default]\nrootfs = \"/r.ext4\"\nimage = \"debian\"",
                "vm_types.default.image",
            ),
            (
                "[vm_types.default]\nagent_port = 0",
                "vm_types.default.agent_port",
            ),
            (
                "[vm_types.default]\nagent_port = 4294967295",
                "vm_types.default.agent_port",
            ),
            ("[vm_types.default]\nvcpus = 0", "vm_types.default.vcpus"),
            ("[vm_types.default]\nvcpus = 300", "vcpus"),
            (
                "[vm_types.default]\nmemory_mib = 1",
                "vm_types.default.memory_mib",
            ),
            (
                "[vm_types.default]\nkernel = \"vmlinux\"",
                "vm_types.default.kernel",
            ),
            (
                "[vm_types.default]\nrootfs = \"r.ext4\"",
                "vm_types.default.rootfs",
            ),
            (
                "[vm_types.default]\nboot_args = \"virtio_mmio.device=4K@0x1:5\"",
                "vm_types.default.boot_args",
            ),
            (
                "[vm_types.default]\nboot_args = \"console=ttyS0 quiet\"",
                "vm_types.default.boot_args",
            ),
            (
                "[vm_types.default]\nreadiness_line = \"\"",
                "vm_types.default.readiness_line",
            ),
            ("[vm_types.default]\ncolour = \"red\"", "colour"),
            ("[vm_types.\"Bad Name\"]\nvcpus = 1", "vm_types.Bad Name"),
            ("[vm_types]", "vm_types"),
            ("daemon = 3", "daemon"),
            (
                "[vm_types.default.pool]\ntarget = 9",
                "vm_types.default.pool.target",
            ),
            (
                "[vm_types.default.pool]\nmin = 3\nmax = 2",
                "vm_types.default.pool.min",
            ),
            (
                "[vm_types.default.pool]\nmax = 1000",
                "vm_types.default.pool.max",
            ),
            (
                "[vm_types.default.pool]\ntiers = []",
                "vm_types.default.pool.tiers",
            ),
            (
                "[vm_types.default.pool]\ntiers = [\"hot\", \"hot\"]",
                "vm_types.default.pool.tiers",
            ),
            (
                "[vm_types.default.pool]\ntiers = [\"lukewarm\"]",
                "lukewarm",
            ),
            (
                "[vm_types.default.pool]\nprewarm_concurrency = 0",
                "vm_types.default.pool.prewarm_concurrency",
            ),
            ("[vm_types.default.pool]\nstrategy = \"fastest\"", "fastest"),
            (
                "[vm_types.default.pool]\nhealth_interval_ms = 1",
                "vm_types.default.pool.health_interval_ms",
            ),
            (
                "[vm_types.default.pool]\ntarget = 1\ntiers = [\"warm\"]",
                "vm_types.default.pool.target",
            ),
            (
                "[vm_types.default.pool]\nrunning = 1\ntiers = [\"hot\"]",
                "vm_types.default.pool.running",
            ),
            (
                "[vm_types.default.pool]\nmax_age_secs = 0",
                "vm_types.default.pool.max_age_secs",
            ),
            (
                "[vm_types.default.pool.autoscale]\nup_threshold = 0.2\ndown_threshold = 0.5",
                "vm_types.default.pool.autoscale",
            ),
            (
                "[vm_types.default.pool.autoscale]\nwindow_secs = 0",
                "vm_types.default.pool.autoscale.window_secs",
            ),
            ("[qemu]\nboot_timeout_secs = 0", "qemu.boot_timeout_secs"),
            (
                "[qemu]\nconsole_log_limit_kib = 1",
                "qemu.console_log_limit_kib",
            ),
            ("[qemu]\nstop_grace_ms = 100000", "qemu.stop_grace_ms"),
            ("[qemu]\nbinary = \"qemu\"", "qemu.binary"),
            (
                "[qemu]\nvhost_device_vsock = \"vhost\"",
                "qemu.vhost_device_vsock",
            ),
            ("[qemu]\naccel = \"kvm\"", "accel"),
            ("[vm_types.default]\nbackend = \"kvm\"", "kvm"),
            (
                "[vm_types.default]\nbackend = \"qemu-tcg\"\n[vm_types.default.pool]\ntarget = 1",
                "vm_types.default.pool.target",
            ),
            (
                "[daemon]\nbackend = \"qemu-tcg\"\n[vm_types.default.pool]\nrunning = 1\ntiers = [\"running\"]",
                "vm_types.default.pool.running",
            ),
            (
                "[vm_types.default]\nbackend = \"qemu-tcg\"\ndiff_snapshots = true",
                "vm_types.default.diff_snapshots",
            ),
        ];
        for (text, key) in cases {
            let err = tfc_core::error_chain(&Config::parse(text, "case").expect_err(text));
            assert!(
                err.contains(key),
                "error for {text:?} does not name {key:?}: {err}"
            );
        }
    }
}
