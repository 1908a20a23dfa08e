//! Wire types of the tfc daemon's REST API (`/v1/...`). The daemon serializes
//! them and the CLI deserializes them, so both sides agree by construction; the
//! OpenAPI document is generated from the same types.
//!
//! Request bodies reject unknown fields: a misspelt option is an error, not a
//! silently ignored default.

use serde::{Deserialize, Serialize};
use tfc_core::{BootTimeline, VmSpec, VmState};
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
/// 400, `invalid_state` 409, `backend_error` 502, `unavailable` 503, `internal`
/// 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    InvalidRequest,
    InvalidState,
    BackendError,
    Unavailable,
    Internal,
}

/// Body of `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always "ok" when the daemon answers.
    pub status: String,
    /// Daemon version.
    pub version: String,
    /// "firecracker" or "fake".
    pub backend: String,
    /// Number of VM records.
    pub vms: usize,
}
