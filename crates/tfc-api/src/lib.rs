//! Wire types of the tfc daemon's REST API (`/v1/...`). The daemon serializes
//! them and the CLI deserializes them, so both sides agree by construction; the
//! OpenAPI document is generated from the same types.
//!
//! Request bodies reject unknown fields: a misspelt option is an error, not a
//! silently ignored default.

use serde::{Deserialize, Serialize};
use tfc_core::{BootTimeline, OptimizationLevel, StartMethod, VmSpec, VmState};

pub use tfc_core::allocation::AllocationStrategy;
pub use tfc_core::PoolTier;
use utoipa::ToSchema;

/// Body of `POST /v1/vms`. Every field is optional: omitted fields come from the
/// VM type (`vm_type`, default from the configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    /// VM type from the daemon's configuration; the configured default if omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_type: Option<String>,
    /// Number of vCPUs (1-32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u8>,
    /// Guest memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Extra kernel arguments appended to the VM type's; may not declare devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_boot_args: Option<String>,
    /// Answer only once the VM is Ready, or has Failed (then the record says why).
    #[serde(default)]
    pub wait: bool,
    /// Longest time to wait when `wait` is set; the daemon's boot timeout if omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_timeout_ms: Option<u64>,
    /// Restore this snapshot (id or name) instead of booting. The VM gets the
    /// snapshot's type and machine size, so `vm_type`, `vcpus`, `memory_mib`
    /// and `extra_boot_args` may not be given with it. A restore answers once
    /// the VM runs (milliseconds), or fails leaving nothing behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<String>,
    /// How to start the VM; `standard` (cold boot) if omitted. See the API
    /// documentation for what each level does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimization_level: Option<OptimizationLevel>,
    /// The VMM to run the VM on; the VM type's if omitted. `qemu-tcg` runs the
    /// same kernel, rootfs and agent under software emulation (no KVM needed,
    /// much slower, no snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<tfc_core::Vmm>,
    /// The VM's network, replacing the VM type's `network` (mode `none`: no
    /// network interface). Needs networking enabled in the daemon's
    /// configuration for any other mode. Not with `from_snapshot` or a
    /// pooled level: those VMs get the network their template was made with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<tfc_core::net::NetConfig>,
    /// I/O limits, each device given replacing the VM type's (an empty one
    /// removes the type's limit). Firecracker only; `net_rx` and `net_tx`
    /// need a network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<tfc_core::limits::RateLimits>,
}

/// How a VM was started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StartInfo {
    /// The level asked for (`standard` when none was).
    pub level: OptimizationLevel,
    /// What served it.
    pub method: StartMethod,
    /// The snapshot restored, for `restore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Why the method differs from the level's own, or how it was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// How a VMM process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExitInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Human description, e.g. "killed by signal 9 (SIGKILL)".
    pub description: String,
}

/// One VM as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmInfo {
    pub id: String,
    pub state: VmState,
    pub spec: VmSpec,
    /// Process id of the VMM while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Unix time in milliseconds.
    pub created_at_ms: u64,
    /// Unix time in milliseconds of the last state change.
    pub updated_at_ms: u64,
    /// Boot phases reached, in microseconds since the create request.
    #[schema(value_type = Vec<tfc_core::PhaseMark>)]
    pub timeline: BootTimeline,
    /// Why the VM is Failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// How the VMM process ended, once it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
    /// The VM's working directory on the host.
    pub workdir: String,
    /// Serial console log (bounded; older output rotates to `.1`).
    pub console_log: String,
    /// How the VM was started (older records: a cold boot).
    #[serde(default)]
    pub start: StartInfo,
    /// The newest snapshot of this VM's memory lineage: the one it was restored
    /// from or last took. A diff snapshot is taken relative to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot: Option<String>,
    /// The VM exists only to build its type's template; it is removed when
    /// the build ends, or at the next start of a daemon that died during it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub template_build: bool,
    /// The VM's place in its type's pool: waiting in a tier, or handed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolSlot>,
    /// The last identity fix-up of this VM (guest clock set, entropy
    /// reseeded through its agent): after its restore for a caller, or at
    /// its hand-over from a pool. Absent for VMs without an agent and for
    /// VMs that were booted, not restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_fixup: Option<IdentityFixup>,
    /// The VM's network, while it has one (from its setup until the VM
    /// stops or fails).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<VmNetworkInfo>,
}

/// A VM's network as set up: its own namespace holding the tap the VMM
/// uses, and a veth pair to the host. The guest's side is the same in every
/// VM (clone-safe); the VM's own address is translated to it inside the
/// namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmNetworkInfo {
    pub mode: tfc_core::net::NetMode,
    /// The VM's address: the host and port forwards reach the guest here,
    /// and its traffic leaves from here.
    #[schema(value_type = String)]
    pub address: std::net::Ipv4Addr,
    /// The host's end of the VM's link (the guest's way out).
    #[schema(value_type = String)]
    pub host_address: std::net::Ipv4Addr,
    /// The guest's own address on its `eth0` (the same in every VM).
    #[schema(value_type = String)]
    pub guest_address: std::net::Ipv4Addr,
    /// The guest's gateway: the tap's address inside the namespace.
    #[schema(value_type = String)]
    pub guest_gateway: std::net::Ipv4Addr,
    /// The VM's network namespace (`ip netns exec NAME ...`).
    pub namespace: String,
    /// The tap the VMM opens, inside the namespace.
    pub tap: String,
    /// The host's end of the veth pair.
    pub host_link: String,
    /// Present only when egress is limited (mode `nat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_allow: Option<Vec<tfc_core::net::EgressRule>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_forwards: Vec<tfc_core::net::PortForward>,
}

/// Answer of `GET /v1/network`: the daemon's networking, its address pool
/// and every lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkStatus {
    /// Off: VMs asking for a network are refused; the rest is absent.
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// `/30` blocks in the pool, one per VM.
    #[serde(default)]
    pub blocks: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
    /// Networks made ahead of demand, and how many are kept.
    #[serde(default)]
    pub ready_slots: u32,
    #[serde(default)]
    pub ready_slots_target: u32,
    #[serde(default)]
    pub leases: Vec<NetworkLease>,
}

/// One VM's address block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkLease {
    pub vm_id: String,
    /// Index of the block in the pool.
    pub block: u32,
    #[schema(value_type = String)]
    pub address: std::net::Ipv4Addr,
    #[schema(value_type = String)]
    pub host_address: std::net::Ipv4Addr,
}

/// An identity fix-up: a restored guest is as old as its snapshot and
/// shares its random state with every other clone, so before it is handed
/// to a caller its agent sets its clock to the host's and mixes fresh host
/// randomness into its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IdentityFixup {
    /// When it finished (Unix ms).
    pub at_ms: u64,
    /// How long it took, connecting to the agent included, in microseconds.
    pub duration_us: u64,
    /// Whether the guest kernel also counted the seed as entropy (the agent
    /// runs as root in its guest mode); it is mixed into the pool either way.
    pub entropy_credited: bool,
}

/// A VM that belongs to a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolSlot {
    /// The tier it waits in (`running`, `hot`), or the tier that made it for
    /// the caller that acquired it (`warm`, `cold`).
    pub tier: PoolTier,
    /// When a caller acquired it (Unix ms); absent while it waits. An
    /// acquired VM is never handed to anyone else: release destroys it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acquired_at_ms: Option<u64>,
    /// How long the acquire took, request to answer, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acquire_us: Option<u64>,
}

/// Body of `GET /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmList {
    pub vms: Vec<VmInfo>,
}

/// Every error answer has this body; `code` is stable, `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// The VM's current state, for `invalid_state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<VmState>,
}

/// Stable error codes. HTTP status per code: `not_found` 404, `invalid_request`
/// 400, `permission_denied` 403, `invalid_state` 409, `too_large` 413,
/// `backend_error` 502, `unavailable` 503, `unsupported` 501, `timeout` 504,
/// `internal` 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    InvalidRequest,
    /// The guest agent may not do it (e.g. run as another uid without root).
    PermissionDenied,
    InvalidState,
    /// A file or input over a size limit.
    TooLarge,
    BackendError,
    Unavailable,
    /// The VM's backend cannot do this at all (snapshots, restores,
    /// templates and pools on `qemu-tcg`).
    Unsupported,
    /// The guest agent did not answer in time.
    Timeout,
    Internal,
    /// The request did not carry the API's token (TCP listener only).
    Unauthorized,
    /// The client sent more requests than its rate limit allows; see
    /// `Retry-After`.
    RateLimited,
}

/// Body of `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always "ok" when the daemon answers.
    pub status: String,
    /// Daemon version.
    pub version: String,
    /// The daemon's configured backend: "firecracker", "qemu-tcg" or "fake".
    /// A real daemon runs each VM on its spec's `vmm`.
    pub backend: String,
    /// Number of VM records.
    pub vms: usize,
}

/// Full or diff snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    /// All of guest memory.
    #[default]
    Full,
    /// Only the guest pages written since the VM's previous snapshot (or the
    /// restore it came from); needs a VM type with `diff_snapshots = true`.
    /// Restoring one merges it onto its parent's memory.
    Diff,
}

/// Body of `POST /v1/vms/{id}/snapshots`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    #[serde(default)]
    pub kind: SnapshotKind,
    /// A unique name to refer to the snapshot by, besides its id
    /// (`[a-z0-9_-]`, at most 64 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Resume the VM after the snapshot if it was running before (default
    /// true). A VM that was paused stays paused either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<bool>,
}

/// Where a snapshot is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    /// Being written; not restorable. A daemon that finds one at start removes it.
    Creating,
    /// Complete and restorable.
    Ready,
}

/// A file a snapshot depends on, with its content digest when it was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileDigest {
    pub path: String,
    /// `sha256:<hex>`.
    pub sha256: String,
}

/// A device of the snapshotted VM, as its VMM recorded it. Paths are relative
/// to each VM's own directory, which is what lets many clones run at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SnapshotDevice {
    Drive {
        id: String,
        path_on_host: String,
        read_only: bool,
        root: bool,
    },
    Vsock {
        guest_cid: u32,
        uds_path: String,
    },
    /// A network interface on a tap of this name, which every clone's
    /// network namespace has.
    Network {
        iface_id: String,
        host_dev_name: String,
        guest_mac: String,
    },
}

/// The CPU of the host that took a snapshot (see [`tfc_core::CpuIdentity`]).
pub use tfc_core::CpuIdentity as CpuInfo;

/// What a snapshot was made from and on; a restore checks each against the
/// host and refuses on any mismatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotManifest {
    /// `firecracker --version` of the VMM that wrote it.
    pub firecracker_version: String,
    pub kernel: FileDigest,
    pub rootfs: FileDigest,
    /// The VM's spec: machine config (vCPUs, memory, dirty-page tracking), boot
    /// arguments, readiness.
    pub spec: VmSpec,
    pub devices: Vec<SnapshotDevice>,
    pub cpu: CpuInfo,
    /// File names inside the snapshot's directory.
    pub state_file: String,
    pub memory_file: String,
    /// Exact byte lengths of the two files when written, to catch truncation.
    pub state_bytes: u64,
    pub memory_bytes: u64,
    /// Digest of everything a template's snapshot is built from (Firecracker
    /// version, kernel and rootfs digests, spec); a template whose inputs'
    /// digest changed is stale and is rebuilt.
    pub inputs: String,
}

/// How long taking a snapshot took, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotTiming {
    pub pause_us: u64,
    pub create_us: u64,
    pub resume_us: u64,
    pub total_us: u64,
}

/// One snapshot in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotInfo {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub kind: SnapshotKind,
    pub state: SnapshotState,
    /// For a diff: the snapshot its memory is relative to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The VM it was taken of.
    pub source_vm: String,
    pub vm_type: String,
    /// Set when this is a VM type's golden snapshot (its template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_for: Option<String>,
    /// Unix time in milliseconds.
    pub created_at_ms: u64,
    /// Bytes on disk (sparse files count their data only).
    pub size_bytes: u64,
    /// The snapshot's directory on the host.
    pub dir: String,
    /// Filled in once the snapshot is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<SnapshotManifest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<SnapshotTiming>,
}

/// Body of `GET /v1/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotList {
    pub snapshots: Vec<SnapshotInfo>,
}

/// Where a VM type's template (golden snapshot) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TemplateStatus {
    /// Never built.
    Missing,
    /// A build is under way.
    Building,
    /// Built, and its inputs are unchanged: restores serve `ultra_fast`.
    Ready,
    /// Built, but an input changed since; a rebuild is due (automatic).
    Stale,
    /// The last build failed; `reason` says why.
    Failed,
}

/// Start times measured on this host for one way of starting a VM type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StartStats {
    pub method: StartMethod,
    pub count: u64,
    /// Request to Ready, in milliseconds.
    pub min_ms: f64,
    pub median_ms: f64,
    pub max_ms: f64,
}

/// One VM type: its template and how fast its VMs start here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TemplateInfo {
    pub vm_type: String,
    pub status: TemplateStatus,
    /// The golden snapshot, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Why it is stale or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Measured start times per method (VMs started since the daemon began,
    /// and those recorded in the store).
    pub starts: Vec<StartStats>,
}

/// Body of `GET /v1/templates`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<TemplateInfo>,
}

/// Body of `POST /v1/pools/{vm_type}/acquire`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    /// Longest the acquire may take, in milliseconds; the pool's
    /// `acquire_timeout_ms` if omitted. When no tier can serve within it the
    /// answer is 503 with `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// Answer of `POST /v1/pools/{vm_type}/acquire`: a running VM that is the
/// caller's alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AcquireResponse {
    pub vm: VmInfo,
    /// The tier that served it.
    pub tier: PoolTier,
    /// Request to answer, in microseconds, as the daemon measured it.
    pub acquire_us: u64,
}

/// Body of `PATCH /v1/pools/{vm_type}`: new sizes (omitted ones stay).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizePoolRequest {
    /// Hot VMs to keep waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// Running VMs to keep waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<u32>,
}

/// VMs of one pool by where they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolSizes {
    /// Waiting, running (acquire = handover).
    pub running: u32,
    /// Waiting, paused (acquire = resume).
    pub hot: u32,
    /// Being restored into the pool.
    pub starting: u32,
    /// Failed a health check or passed their age; being replaced.
    pub needs_maintenance: u32,
    /// Handed out and not yet released.
    pub acquired: u32,
}

/// Acquires one tier served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TierStats {
    pub tier: PoolTier,
    pub count: u64,
    /// Of every acquire that was served.
    pub hit_rate: f64,
    /// Request-to-answer latency of the most recent acquires (up to 1000), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
}

/// A pool's counters since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolStats {
    /// Acquires asked for.
    pub acquires: u64,
    /// Acquires answered 503 (nothing could serve within the wait).
    pub unserved: u64,
    /// Attempts to serve that failed (a VMM or store error in a hand-over,
    /// restore or boot); the acquire went on to the next tier.
    pub failed: u64,
    /// Per tier that served at least one acquire.
    pub tiers: Vec<TierStats>,
    /// VMs started into the pool, and starts that failed.
    pub prewarmed: u64,
    pub prewarm_failures: u64,
    /// Failures in a row; refills back off exponentially while > 0.
    pub consecutive_failures: u32,
    /// The last refill failure, while it is unresolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// When the next refill attempt is due while backing off (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<u64>,
    /// Waiting VMs replaced because a health check failed, or for their age.
    pub replaced_unhealthy: u64,
    pub replaced_aged: u64,
    /// The last waiting VM replaced, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_replacement: Option<String>,
    /// Times autoscaling moved the target.
    pub scaled_up: u64,
    pub scaled_down: u64,
}

/// Autoscaling of the hot tier's target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AutoscaleInfo {
    pub up_threshold: f64,
    pub down_threshold: f64,
    pub window_secs: u64,
    pub step: u32,
}

/// One VM type's pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolInfo {
    pub vm_type: String,
    /// Tiers allowed to serve, in the order they are tried.
    pub tiers: Vec<PoolTier>,
    pub strategy: AllocationStrategy,
    /// Hot tier: VMs to keep waiting, and the autoscaling bounds.
    pub target: u32,
    pub min: u32,
    pub max: u32,
    /// Running tier: VMs to keep waiting.
    pub running: u32,
    pub prewarm_concurrency: u32,
    pub max_age_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleInfo>,
    /// The template the pool restores from, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Why the pool cannot prewarm now (no template yet, backing off...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    pub sizes: PoolSizes,
    pub stats: PoolStats,
}

/// Body of `GET /v1/pools`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolList {
    pub pools: Vec<PoolInfo>,
}

/// Body of `POST /v1/vms/{id}/exec`: a command to run in the guest through
/// its agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments; `argv[0]` is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Environment of the command. Nothing is inherited from the agent: the
    /// command gets a standard `PATH` and these variables (which may
    /// replace `PATH`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// Working directory in the guest (absolute); the agent's if omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Input for the command, all of it (at most [`MAX_EXEC_STDIN`] bytes
    /// once decoded); without it the command reads an empty stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<ExecStdin>,
    /// The agent kills the command's process group after this long; the
    /// `exit` event then has `timed_out`. No limit if omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Run as this uid (and its gid); needs an agent running as root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

/// The most stdin an exec request may carry, decoded.
pub const MAX_EXEC_STDIN: usize = 4 * 1024 * 1024;

/// An exec's stdin, as text or as base64 for bytes that are not UTF-8:
/// `{"text": "hello\n"}` or `{"base64": "aGVsbG8K"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ExecStdin {
    Text(String),
    Base64(String),
}

/// One line of the `application/x-ndjson` answer of `POST
/// /v1/vms/{id}/exec`, in the order things happened in the guest: `started`,
/// then `stdout`/`stderr` chunks as the command writes them, then exactly
/// one final `exit` or `error`. Nothing follows the final event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ExecEvent {
    /// The command runs, as this process id in the guest.
    Started { pid: u32 },
    /// Bytes the command wrote to stdout, base64.
    Stdout { data: String },
    /// Bytes the command wrote to stderr, base64.
    Stderr { data: String },
    /// The command ended: `code` when it exited, `signal` when a signal
    /// ended it; `timed_out` when the agent killed it for `timeout_ms`.
    Exit {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        #[serde(default)]
        timed_out: bool,
        /// From the start of the command to its end, as the daemon saw it.
        duration_ms: u64,
    },
    /// The exec ended without an exit to report (the VM was paused or
    /// stopped, the agent's connection broke, the agent gave no exit in
    /// time); whether the command still runs in the guest is not known,
    /// though the daemon has asked the agent to kill it.
    Error { code: ErrorCode, message: String },
}

/// What `PUT /v1/vms/{id}/files` wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GuestFile {
    pub path: String,
    pub size: u64,
    /// Permission bits, e.g. 420 (0644).
    pub mode: u32,
}

/// A performance target of a VM type that the daemon watches.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AlertTarget {
    /// 99th percentile of request-to-ready times of VMs started for callers, ms.
    BootP99Ms,
    /// 99th percentile of served pool acquires, ms.
    AcquireP99Ms,
    /// Share of acquires served by a waiting VM (running or hot tier).
    PoolHitRate,
    /// Share of acquires served at all (not answered 503).
    AllocationSuccessRate,
}

impl AlertTarget {
    pub const ALL: [AlertTarget; 4] = [
        AlertTarget::BootP99Ms,
        AlertTarget::AcquireP99Ms,
        AlertTarget::PoolHitRate,
        AlertTarget::AllocationSuccessRate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertTarget::BootP99Ms => "boot_p99_ms",
            AlertTarget::AcquireP99Ms => "acquire_p99_ms",
            AlertTarget::PoolHitRate => "pool_hit_rate",
            AlertTarget::AllocationSuccessRate => "allocation_success_rate",
        }
    }

    /// Latency targets are met at or below the threshold; rates at or above.
    pub fn lower_is_better(self) -> bool {
        matches!(self, AlertTarget::BootP99Ms | AlertTarget::AcquireP99Ms)
    }
}

/// A missed target: raised when the figure over the window misses it,
/// cleared once it is met again with a margin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Alert {
    pub vm_type: String,
    pub target: AlertTarget,
    /// The configured target.
    pub threshold: f64,
    /// The figure over the window when the alert was raised, then at each
    /// evaluation while it is active, then when it cleared.
    pub value: f64,
    /// Samples behind `value`.
    pub samples: u64,
    pub raised_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_at_ms: Option<u64>,
    pub message: String,
}

/// Body of `GET /v1/alerts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertList {
    /// Alerts raised and not cleared, by VM type and target.
    pub active: Vec<Alert>,
    /// Cleared alerts, newest first (at most 100).
    pub recent: Vec<Alert>,
}
