//! The REST API: routes, handlers, the OpenAPI document and the single mapping of
//! domain errors to HTTP answers. Handlers only translate; the manager decides.

use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde::Deserialize;
use tfc_agent_client::AgentError;
use tfc_api::{
    AcquireRequest, AcquireResponse, CreateSnapshotRequest, CreateVmRequest, ErrorBody, ErrorCode,
    ExecEvent, ExecRequest, ExecStdin, GuestFile, Health, PoolInfo, PoolList, ResizePoolRequest,
    SnapshotInfo, SnapshotList, TemplateInfo, TemplateList, VmInfo, VmList,
};
use utoipa::OpenApi;

use crate::access::{self, Cap};
use crate::agent::LinkError;
use crate::backend::BackendError;
use crate::guest::{self, GuestError};
use crate::logs::{LogSource, LogsError};
use crate::manager::{ManagerError, VmManager};
use crate::network::NetworkError;
use crate::snapshots::CatalogError;
use crate::vm::{VmError, VmOp};

/// Largest request body accepted; every body of this API is small, but for
/// an exec's stdin and uploaded files, which have their own limits.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Largest exec request: its stdin, base64-encoded, and room for the rest.
const MAX_EXEC_BODY_BYTES: usize = tfc_api::MAX_EXEC_STDIN / 3 * 4 + 64 * 1024;

/// The media type of an exec's answer: one JSON [`ExecEvent`] per line.
pub const NDJSON: &str = "application/x-ndjson";

/// The header that carries a downloaded guest file's permission bits, in
/// octal (`0644`).
pub const MODE_HEADER: &str = "x-tfc-file-mode";

/// The header that carries a log's length after a read: the `since` of the
/// next read, to follow the log.
pub const LOG_OFFSET_HEADER: &str = "x-tfc-log-offset";

/// An error answer: status from [`status_for`], JSON [`ErrorBody`], and a
/// `Retry-After` header when trying again later may succeed.
#[derive(Debug)]
pub struct ApiError(ErrorBody, Option<u64>);

/// The one place that maps error codes to HTTP statuses.
pub fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorCode::InvalidState => StatusCode::CONFLICT,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::BackendError => StatusCode::BAD_GATEWAY,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unsupported => StatusCode::NOT_IMPLEMENTED,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
    }
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(
            ErrorBody {
                code,
                message: message.into(),
                state: None,
            },
            None,
        )
    }

    /// The same error, telling the caller to try again after `secs`.
    pub(crate) fn retry_after(self, secs: u64) -> Self {
        Self(self.0, Some(secs))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (status_for(self.0.code), Json(self.0)).into_response();
        if let Some(secs) = self.1 {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

impl From<ManagerError> for ApiError {
    fn from(err: ManagerError) -> Self {
        manager_error(&err)
    }
}

fn manager_error(err: &ManagerError) -> ApiError {
    let message = tfc_core::error_chain(err);
    let (code, state) = match err {
        ManagerError::NotFound(_) => (ErrorCode::NotFound, None),
        ManagerError::BadId(_) | ManagerError::UnknownType { .. } | ManagerError::BadSpec(_) => {
            (ErrorCode::InvalidRequest, None)
        }
        ManagerError::NoAsset { .. } | ManagerError::ShuttingDown => (ErrorCode::Unavailable, None),
        ManagerError::NotDeletable { state, .. } => (ErrorCode::InvalidState, Some(*state)),
        ManagerError::Workdir { .. } | ManagerError::Record(_) => (ErrorCode::Internal, None),
        ManagerError::Store(_) => (ErrorCode::Unavailable, None),
        ManagerError::Vm(VmError::InvalidState { state, .. }) => {
            (ErrorCode::InvalidState, Some(*state))
        }
        ManagerError::Vm(VmError::Backend { source, .. })
            if matches!(**source, BackendError::Unsupported { .. }) =>
        {
            (ErrorCode::Unsupported, None)
        }
        ManagerError::Vm(VmError::Backend { .. } | VmError::Fixup { .. }) => {
            (ErrorCode::BackendError, None)
        }
        ManagerError::Fixup(_) => (ErrorCode::BackendError, None),
        ManagerError::NoAgent { .. } => (ErrorCode::InvalidState, None),
        ManagerError::GuestNotRunning { state, .. } => (ErrorCode::InvalidState, Some(*state)),
        ManagerError::Agent { source, .. } => (link_error_code(source), None),
        ManagerError::Vm(VmError::Record { .. }) => (ErrorCode::Unavailable, None),
        ManagerError::BadRequest(_) => (ErrorCode::InvalidRequest, None),
        ManagerError::Unservable(_) => (ErrorCode::Unavailable, None),
        ManagerError::NoDiff { .. } => (ErrorCode::InvalidState, None),
        ManagerError::Unsupported { .. }
        | ManagerError::Restore(BackendError::Unsupported { .. }) => (ErrorCode::Unsupported, None),
        ManagerError::VmmUnavailable(_)
        | ManagerError::Restore(BackendError::Unavailable { .. } | BackendError::NoJailId(_)) => {
            (ErrorCode::Unavailable, None)
        }
        ManagerError::Restore(_) | ManagerError::TemplateBuild { .. } => {
            (ErrorCode::BackendError, None)
        }
        ManagerError::NotPooled(_) | ManagerError::WaitingInPool { .. } => {
            (ErrorCode::InvalidState, None)
        }
        ManagerError::PoolExhausted { .. } => (ErrorCode::Unavailable, None),
        ManagerError::Network(err) => (network_error_code(err), None),
        ManagerError::Catalog(catalog) => match catalog {
            CatalogError::NotFound(_) => (ErrorCode::NotFound, None),
            CatalogError::NameTaken(_) | CatalogError::BadName(_) | CatalogError::NameLikeId(_) => {
                (ErrorCode::InvalidRequest, None)
            }
            CatalogError::HasDependents { .. }
            | CatalogError::IsTemplate { .. }
            | CatalogError::NotReady(_)
            | CatalogError::InUse(_)
            | CatalogError::Refused { .. }
            | CatalogError::Files { .. } => (ErrorCode::InvalidState, None),
            CatalogError::Io { .. } => (ErrorCode::Internal, None),
            CatalogError::Store(_) => (ErrorCode::Unavailable, None),
        },
    };
    let retry_after = match err {
        ManagerError::PoolExhausted {
            retry_after_secs, ..
        } => Some(*retry_after_secs),
        _ => None,
    };
    ApiError(
        ErrorBody {
            code,
            message,
            state,
        },
        retry_after,
    )
}

/// The code of a failed call to a guest agent: the agent's own verdict
/// when it gave one, else what the transport failure means to a caller.
pub fn agent_error_code(err: &AgentError) -> ErrorCode {
    use tfc_agent_client::ErrorCode as Agent;
    match err {
        AgentError::Agent { code, .. } => match code {
            Agent::NotFound => ErrorCode::NotFound,
            Agent::BadRequest | Agent::Unsupported => ErrorCode::InvalidRequest,
            Agent::PermissionDenied => ErrorCode::PermissionDenied,
            Agent::TooLarge => ErrorCode::TooLarge,
            Agent::Timeout => ErrorCode::Timeout,
            Agent::Io | Agent::Protocol => ErrorCode::BackendError,
        },
        AgentError::Timeout(_) | AgentError::HandshakeTimeout(_) => ErrorCode::Timeout,
        _ => ErrorCode::BackendError,
    }
}

/// A refused network (bad or unservable request) is the caller's to fix; a
/// full address pool passes when VMs go; the rest is the host's failure.
fn network_error_code(err: &NetworkError) -> ErrorCode {
    use tfc_net::SetupError;
    match err {
        NetworkError::Disabled => ErrorCode::InvalidRequest,
        NetworkError::Setup { source, .. } => match source.as_ref() {
            SetupError::Config(_) | SetupError::NoNetwork | SetupError::NoUplink => {
                ErrorCode::InvalidRequest
            }
            SetupError::PortTaken { .. } | SetupError::AlreadyAttached { .. } => {
                ErrorCode::InvalidState
            }
            SetupError::Lease { .. } => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        },
        _ => ErrorCode::Internal,
    }
}

fn link_error_code(err: &LinkError) -> ErrorCode {
    match err {
        LinkError::Ended => ErrorCode::InvalidState,
        LinkError::Connect { .. } | LinkError::HostRandom(_) => ErrorCode::BackendError,
        LinkError::Timeout { .. } | LinkError::NeverAnswered { .. } => ErrorCode::Timeout,
        LinkError::Call { source, .. } => agent_error_code(source),
    }
}

impl From<GuestError> for ApiError {
    fn from(err: GuestError) -> Self {
        let code = match &err {
            GuestError::Vm(err) => return manager_error(err),
            GuestError::EmptyArgv
            | GuestError::StdinBase64(_)
            | GuestError::RelativePath(_)
            | GuestError::BadMode(_)
            | GuestError::NoLength => ErrorCode::InvalidRequest,
            GuestError::StdinTooLarge(_) | GuestError::TooLarge { .. } => ErrorCode::TooLarge,
            GuestError::Agent { source, .. } => link_error_code(source),
            GuestError::UploadBody(_) | GuestError::ShortBody(_) => ErrorCode::InvalidRequest,
            GuestError::Upload { source, .. } => agent_error_code(source),
            GuestError::UploadEnded { .. } => ErrorCode::InvalidState,
        };
        ApiError::new(code, tfc_core::error_chain(&err))
    }
}

impl From<LogsError> for ApiError {
    fn from(err: LogsError) -> Self {
        let code = match &err {
            LogsError::BadTail(_) => ErrorCode::InvalidRequest,
            // Not a regular file, or a link: what a jailed VMM's user may
            // leave in its jail instead of its log. Refused, not followed.
            LogsError::Read { source, .. }
                if source.raw_os_error() == Some(libc::ELOOP)
                    || source.kind() == std::io::ErrorKind::InvalidInput =>
            {
                ErrorCode::InvalidState
            }
            LogsError::Read { .. } => ErrorCode::Internal,
        };
        ApiError::new(code, tfc_core::error_chain(&err))
    }
}

/// A query string that does not parse is the caller's mistake.
fn query<T>(params: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    params
        .map(|Query(params)| params)
        .map_err(|r| ApiError::new(ErrorCode::InvalidRequest, r.body_text()))
}

/// The one path parameter of a route (an id or a VM type). A path that
/// does not decode (a bad percent escape, bytes that are not UTF-8) is the
/// caller's mistake, answered like every other error: a JSON [`ErrorBody`]
/// with `invalid_request`, not axum's plain-text rejection.
#[derive(Debug)]
struct ApiPath(String);

impl<S: Send + Sync> FromRequestParts<S> for ApiPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|r| ApiError::new(ErrorCode::InvalidRequest, r.body_text()))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        body_refused(rejection.status(), rejection.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        body_refused(rejection.status(), rejection.body_text())
    }
}

/// A body the handler could not take: over its route's limit (413, with
/// the limit's size in the message), else malformed.
fn body_refused(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            ErrorCode::TooLarge,
            format!("request body over this endpoint's limit ({text})"),
        )
    } else {
        ApiError::new(ErrorCode::InvalidRequest, text)
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Terraphim Firecracker API",
        description = "Manage Firecracker microVMs on one host. Served on a Unix socket (mode 0600), and on TCP when `api.tcp` is configured: there every request, `/healthz` included, needs `Authorization: Bearer <token>` (401 without it) and each client may be rate limited (429 with `Retry-After`). Creations and execs in flight are capped (503 with `Retry-After`); request bodies over an endpoint's limit get 413."
    ),
    paths(
        health,
        create_vm,
        list_vms,
        get_vm,
        pause_vm,
        resume_vm,
        stop_vm,
        delete_vm,
        snapshot_vm,
        list_snapshots,
        get_snapshot,
        delete_snapshot,
        list_templates,
        build_template,
        list_pools,
        get_pool,
        resize_pool,
        acquire,
        release_vm,
        exec_vm,
        put_file,
        get_file,
        network_status,
        set_rate_limits,
        list_alerts,
        metrics,
        vm_logs
    ),
    components(schemas(
        CreateVmRequest,
        VmInfo,
        VmList,
        CreateSnapshotRequest,
        SnapshotInfo,
        SnapshotList,
        TemplateInfo,
        TemplateList,
        PoolInfo,
        PoolList,
        ResizePoolRequest,
        AcquireRequest,
        AcquireResponse,
        ErrorBody,
        ErrorCode,
        Health,
        tfc_api::ExitInfo,
        tfc_api::IdentityFixup,
        ExecRequest,
        ExecStdin,
        ExecEvent,
        GuestFile,
        tfc_api::VmNetworkInfo,
        tfc_api::NetworkStatus,
        tfc_api::NetworkLease,
        tfc_core::limits::RateLimits,
        tfc_core::limits::IoLimit,
        tfc_api::Alert,
        tfc_api::AlertList,
        tfc_api::AlertTarget,
        LogSource
    ))
)]
struct ApiDoc;

/// The OpenAPI document of this API, pretty-printed.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}

/// The API router over `manager`, with the caps of `api.max_concurrent_*`
/// (one count per router: listeners serving clones of it share them).
pub fn router(manager: VmManager) -> Router {
    let api = &manager.config().api;
    let creates = Cap::new(
        "VM creations",
        "api.max_concurrent_creates",
        api.max_concurrent_creates,
    );
    let execs = Cap::new(
        "execs",
        "api.max_concurrent_execs",
        api.max_concurrent_execs,
    );
    let capped = |cap: &Cap| axum::middleware::from_fn_with_state(cap.clone(), access::at_most);
    Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/alerts", get(list_alerts))
        .route("/v1/openapi.json", get(openapi))
        .route(
            "/v1/vms",
            post(create_vm).layer(capped(&creates)).get(list_vms),
        )
        .route("/v1/vms/{id}", get(get_vm).delete(delete_vm))
        .route("/v1/vms/{id}/pause", post(pause_vm))
        .route("/v1/vms/{id}/resume", post(resume_vm))
        .route("/v1/vms/{id}/stop", post(stop_vm))
        .route("/v1/vms/{id}/logs", get(vm_logs))
        .route("/v1/vms/{id}/rate-limits", patch(set_rate_limits))
        .route("/v1/vms/{id}/snapshots", post(snapshot_vm))
        .route("/v1/snapshots", get(list_snapshots))
        .route(
            "/v1/snapshots/{id}",
            get(get_snapshot).delete(delete_snapshot),
        )
        .route("/v1/templates", get(list_templates))
        // Acquires may restore or boot (warm and cold tiers) and builds
        // boot: they count as creations.
        .route(
            "/v1/templates/{vm_type}/build",
            post(build_template).layer(capped(&creates)),
        )
        .route("/v1/network", get(network_status))
        .route("/v1/pools", get(list_pools))
        .route("/v1/pools/{vm_type}", get(get_pool).patch(resize_pool))
        .route(
            "/v1/pools/{vm_type}/acquire",
            post(acquire).layer(capped(&creates)),
        )
        .route("/v1/vms/{id}/release", post(release_vm))
        .route(
            "/v1/vms/{id}/exec",
            post(exec_vm)
                .layer(DefaultBodyLimit::max(MAX_EXEC_BODY_BYTES))
                .layer(capped(&execs)),
        )
        .route(
            "/v1/vms/{id}/files",
            // The upload's body is streamed to the agent, bounded by
            // `agent.max_file_mib`, not read here.
            get(get_file)
                .put(put_file)
                .layer(DefaultBodyLimit::disable()),
        )
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            manager.clone(),
            observe_request,
        ))
        .with_state(manager)
}

/// Every request runs in a span (method, route, and the VM id when the path
/// names one), is logged when answered, and is counted in the metrics by
/// its route's template, so ids do not multiply the series.
async fn observe_request(
    State(manager): State<VmManager>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let vm = route
        .starts_with("/v1/vms/{id}")
        .then(|| request.uri().path().split('/').nth(3).map(str::to_owned))
        .flatten();
    let span = tracing::info_span!("request", %method, route = %route, vm = vm.as_deref());
    let response = next.run(request).instrument(span.clone()).await;
    let took = started.elapsed();
    let status = response.status();
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(
                status = status.as_u16(),
                ms = took.as_secs_f64() * 1000.0,
                "answered"
            );
        } else {
            tracing::debug!(
                status = status.as_u16(),
                ms = took.as_secs_f64() * 1000.0,
                "answered"
            );
        }
    });
    // The method is the client's to choose: unknown ones share one series.
    let method_label = match method.as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "other",
    };
    manager
        .metrics()
        .request(method_label, &route, status.as_u16(), took);
    response
}

async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such endpoint; see /v1/openapi.json",
    )
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi_json(),
    )
        .into_response()
}

/// Prometheus metrics, in the text exposition format (docs/observability.md
/// lists the families).
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, content_type = "text/plain; version=0.0.4", body = String)
))]
async fn metrics(State(manager): State<VmManager>) -> Result<Response, ApiError> {
    let text = tokio::task::spawn_blocking(move || crate::metrics::render(&manager))
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("rendering the metrics failed: {e}"),
            )
        })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Alerts: targets of VM types missed over the monitor's window (active),
/// and those cleared lately.
#[utoipa::path(get, path = "/v1/alerts", responses((status = 200, body = tfc_api::AlertList)))]
async fn list_alerts(State(manager): State<VmManager>) -> Json<tfc_api::AlertList> {
    Json(manager.monitor().list())
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
async fn health(State(manager): State<VmManager>) -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        backend: manager.backend_name().to_owned(),
        vms: manager.count(),
    })
}

/// Create a VM. A boot without `wait` answers at once with state `creating`;
/// with it, once the VM is `ready` or has `failed` (the record says why). A
/// restore (`from_snapshot`, or `ultra_fast` with a template) answers once the
/// VM runs, or fails leaving nothing behind.
#[utoipa::path(post, path = "/v1/vms", request_body = CreateVmRequest, responses(
    (status = 201, body = VmInfo),
    (status = 400, body = ErrorBody, description = "bad body, unknown VM type, invalid spec"),
    (status = 404, body = ErrorBody, description = "no such snapshot"),
    (status = 409, body = ErrorBody, description = "the snapshot does not match this host (VMM version, kernel, rootfs, CPU) or its files are damaged"),
    (status = 501, body = ErrorBody, description = "a restore onto (or of a snapshot of) a backend that takes no snapshots (`qemu-tcg`)"),
    (status = 413, body = ErrorBody, description = "body over 64 KiB"),
    (status = 502, body = ErrorBody, description = "the VMM could not load the snapshot"),
    (status = 503, body = ErrorBody, description = "assets missing; the VM's backend is not installed here; level `instant` without a pool; `api.max_concurrent_creates` creations already in flight (see Retry-After)")
))]
async fn create_vm(
    State(manager): State<VmManager>,
    body: Result<Json<CreateVmRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<VmInfo>), ApiError> {
    let Json(request) = body?;
    let info = manager.create(request).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

#[utoipa::path(get, path = "/v1/vms", responses((status = 200, body = VmList)))]
async fn list_vms(State(manager): State<VmManager>) -> Json<VmList> {
    Json(VmList {
        vms: manager.list(),
    })
}

#[utoipa::path(get, path = "/v1/vms/{id}", params(("id" = String, Path)), responses(
    (status = 200, body = VmInfo),
    (status = 400, body = ErrorBody, description = "malformed id"),
    (status = 404, body = ErrorBody)
))]
async fn get_vm(
    State(manager): State<VmManager>,
    ApiPath(id): ApiPath,
) -> Result<Json<VmInfo>, ApiError> {
    Ok(Json(manager.get(&id)?))
}

/// Change a VM's I/O limits while it runs or is paused (Firecracker). Each
/// device given replaces that device's limit; an empty object (`"disk":
/// {}`) removes it; devices left out keep theirs. The VM's record shows the
/// limits in force.
#[utoipa::path(patch, path = "/v1/vms/{id}/rate-limits", params(("id" = String, Path)),
    request_body = tfc_core::limits::RateLimits, responses(
    (status = 200, body = VmInfo),
    (status = 400, body = ErrorBody, description = "invalid limits (a rate of 0, net limits without a network)"),
    (status = 413, body = ErrorBody, description = "body over the endpoint's limit"),
    (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody, description = "not allowed in the VM's state"),
    (status = 501, body = ErrorBody, description = "the VM's backend has no rate limits"),
    (status = 502, body = ErrorBody, description = "the VMM refused")
))]
async fn set_rate_limits(
    State(manager): State<VmManager>,
    ApiPath(id): ApiPath,
    body: Result<Json<tfc_core::limits::RateLimits>, JsonRejection>,
) -> Result<Json<VmInfo>, ApiError> {
    let Json(update) = body?;
    Ok(Json(manager.set_rate_limits(&id, update).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LogsParams {
    /// `console` (the guest's serial console, the default) or `vmm` (the
    /// VMM's own log: Firecracker's log file, QEMU's stderr).
    #[serde(default)]
    #[param(required = false, inline)]
    source: LogSource,
    /// Only the last N lines (1 to 100000), reaching into the rotated file
    /// when the current one has fewer.
    #[param(required = false)]
    tail: Option<usize>,
    /// Only what was written after this byte offset (the `X-Tfc-Log-Offset`
    /// of an earlier read); from the start if the log was rotated since.
    #[param(required = false)]
    since: Option<u64>,
}

/// A VM's log as text: its serial console or its VMM's log, all of it (at
/// most the newest 4 MiB), its last lines, or what came after an offset.
/// `X-Tfc-Log-Offset` is the log's length after the read: pass it as
/// `since` to read only what comes next (how `tfc logs --follow` polls). A
/// log not written yet reads as empty. Any state, until the VM is deleted.
#[utoipa::path(get, path = "/v1/vms/{id}/logs", params(("id" = String, Path), LogsParams), responses(
    (status = 200, content_type = "text/plain", body = String, description = "the log's text",
        headers(("x-tfc-log-offset" = u64, description = "the log's length after this read: the next read's `since`"))),
    (status = 400, body = ErrorBody, description = "a bad tail, or both tail and since"),
    (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody, description = "the log is not a regular file (a link or a FIFO a jailed VMM's user put in its jail): refused, not followed")
))]
async fn vm_logs(
    State(manager): State<VmManager>,
    ApiPath(id): ApiPath,
    params: Result<Query<LogsParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(params)?;
    if params.tail.is_some() && params.since.is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "give tail or since, not both",
        ));
    }
    let vm = manager.get(&id)?;
    let path = crate::logs::log_path(
        std::path::Path::new(&vm.workdir),
        vm.spec.vmm,
        params.source,
    );
    let read = tokio::task::spawn_blocking(move || {
        crate::logs::read_log(&path, params.tail, params.since)
    })
    .await
    .expect("reading a log does not panic")?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain".to_owned()),
            (
                header::HeaderName::from_static(LOG_OFFSET_HEADER),
                read.offset.to_string(),
            ),
        ],
        read.text,
    )
        .into_response())
}

async fn vm_op(manager: &VmManager, id: &str, op: VmOp) -> Result<Json<VmInfo>, ApiError> {
    Ok(Json(manager.op(id, op).await?))
}

/// Pause the vCPUs. Allowed in `ready` and `running`; results in `paused`.
#[utoipa::path(post, path = "/v1/vms/{id}/pause", params(("id" = String, Path)), responses(
    (status = 200, body = VmInfo),
    (status = 400, body = ErrorBody, description = "malformed id"),
    (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody, description = "not allowed in the VM's state"),
    (status = 502, body = ErrorBody, description = "the VMM refused")
))]
async fn pause_vm(
    State(manager): State<VmManager>,
    ApiPath(id): ApiPath,
) -> Result<Json<VmInfo>, ApiError> {
    vm_op(&manager, &id, VmOp::Pause).await
}

/// Resume the vCPUs. Allowed in `paused` and `snapshotted`; results in `running`.
#[utoipa::path(post, path = "/v1/vms/{id}/resume", params(("id" = String, Path)), responses(
    (status = 200, body = VmInfo),
    (status = 400, body = ErrorBody, description = "malformed id"),
    (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody, description = "not allowed in the VM's state"),
    (status = 502, body = ErrorBody, description = "the VMM refused")
))]
async fn resume_vm(
    State(manager): State<VmManager>,
    ApiPath(id): ApiPath,
) -> Result<Json<VmInfo>, ApiError> {
    vm_op(&manager, &id, VmOp::Resume).await
}

/// Stop the VMM (SIGTERM, then SIGKILL after the grace period). Allowed in every
/// state but `stopping`, `stopped` and `failed`; results in `stopped`.
#[utoipa::path(post, path = "/v1/vms/{id}/stop", params(("id" = String, Path)), responses(
    (status = 200, body = VmInfo),
    (status = 400, body = ErrorBody, description = "malformed id"),
    (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody, description = "not allowed in the VM's state")
))]
async fn stop_vm(
    State(manager): State<VmManager>,
    ApiPath(id): ApiPath,
) -> Result<Json<VmInfo>, ApiError> {
    vm_op(&manager, &id, VmOp::Stop).await
}

/// Take a snapshot of a VM. A running VM is paused for the duration and
/// resumed after (unless `resume` is false); a paused one stays paused.
#[utoipa::path(post, path = "/v1/vms/{id}/snapshots", params(("id" = String, Path)), request_body = CreateSnapshotRequest, responses(
    (status = 201, body = SnapshotInfo),
    (status = 400, body = ErrorBody, description = "bad body or name taken"),
    (status = 413, body = ErrorBody, description = "body over the endpoint's limit"),
    (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody, description = "not allowed in the VM's state, or a diff without dirty-page tracking or a parent"),
    (status = 501, body = ErrorBody, description = "the VM's backend takes no snapshots (`qemu-tcg`)"),
    (status = 502, body = ErrorBody, description = "the VMM refused (e.g. no space left for the files)")
))]
async fn snapshot_vm(
    State(manager): State<VmManager>,
    ApiPath(id): ApiPath,
    body: Result<Json<CreateSnapshotRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<SnapshotInfo>), ApiError> {
    let Json(request) = body?;
    let info = manager.snapshot(&id, request).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

#[utoipa::path(get, path = "/v1/snapshots", responses((status = 200, body = SnapshotList)))]
async fn list_snapshots(State(manager): State<VmManager>) -> Json<SnapshotList> {
    Json(SnapshotList {
        snapshots: manager.snapshots(),
    })
}

/// One snapshot, by id or name.
#[utoipa::path(get, path = "/v1/snapshots/{id}", params(("id" = String, Path, description = "id or name")), responses(
    (status = 200, body = SnapshotInfo),
    (status = 400, body = ErrorBody, description = "malformed id or name"),
    (status = 404, body = ErrorBody)
))]
async fn get_snapshot(
    State(manager): State<VmManager>,
    ApiPath(id): ApiPath,
) -> Result<Json<SnapshotInfo>, ApiError> {
    Ok(Json(manager.get_snapshot(&id)?))
}

/// Delete a snapshot and its files. One that a diff depends on, or that is a
/// VM type's template, needs `force=true` (dependent diffs are merged first so
/// they stay restorable).
#[utoipa::path(delete, path = "/v1/snapshots/{id}", params(("id" = String, Path, description = "id or name"), DeleteParams), responses(
    (status = 204),
    (status = 400, body = ErrorBody, description = "malformed id or name, or a bad query (only `force`, true or false)"),
    (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody, description = "something depends on it and force not set")
))]
async fn delete_snapshot(
    State(manager): State<VmManager>,
    ApiPath(id): ApiPath,
    params: Result<Query<DeleteParams>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    manager.delete_snapshot(&id, query(params)?.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every VM type's template (golden snapshot) and the start times measured
/// here per start method.
#[utoipa::path(get, path = "/v1/templates", responses((status = 200, body = TemplateList)))]
async fn list_templates(State(manager): State<VmManager>) -> Json<TemplateList> {
    Json(TemplateList {
        templates: manager.templates().await,
    })
}

/// Build a VM type's template: boot a VM of the type, wait until it is ready,
/// take a full snapshot, record it as the type's template. Answers when done
/// (a boot: up to the daemon's boot timeout).
#[utoipa::path(post, path = "/v1/templates/{vm_type}/build", params(("vm_type" = String, Path)), responses(
    (status = 200, body = TemplateInfo),
    (status = 400, body = ErrorBody, description = "unknown VM type"),
    (status = 501, body = ErrorBody, description = "the type's backend takes no snapshots (`qemu-tcg`), so it has no template"),
    (status = 502, body = ErrorBody, description = "the build failed"),
    (status = 503, body = ErrorBody, description = "`api.max_concurrent_creates` creations in flight; see Retry-After")
))]
async fn build_template(
    State(manager): State<VmManager>,
    ApiPath(vm_type): ApiPath,
) -> Result<Json<TemplateInfo>, ApiError> {
    Ok(Json(manager.build_template(&vm_type).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    /// VMs: stop the VM first if it is still live. Snapshots: delete even one
    /// that a diff depends on or that is a template.
    #[serde(default)]
    #[param(required = false)]
    force: bool,
}

/// Delete a VM and its files. Allowed in `stopped` and `failed`, or in any state
/// with `force=true` (the VM is stopped first).
#[utoipa::path(delete, path = "/v1/vms/{id}", params(("id" = String, Path), DeleteParams), responses(
    (status = 204),
    (status = 400, body = ErrorBody, description = "malformed id, or a bad query (only `force`, true or false)"),
    (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody, description = "VM still live and force not set")
))]
async fn delete_vm(
    State(manager): State<VmManager>,
    ApiPath(id): ApiPath,
    params: Result<Query<DeleteParams>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    manager.delete(&id, query(params)?.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The daemon's networking: whether it is on, the address pool, the ready
/// slots and every VM's lease.
#[utoipa::path(get, path = "/v1/network", responses(
    (status = 200, body = tfc_api::NetworkStatus),
    (status = 503, body = ErrorBody, description = "the leases cannot be read")
))]
async fn network_status(
    State(manager): State<VmManager>,
) -> Result<Json<tfc_api::NetworkStatus>, ApiError> {
    let Some(net) = manager.network().cloned() else {
        return Ok(Json(crate::network::disabled_status()));
    };
    let status = tokio::task::spawn_blocking(move || net.status())
        .await
        .expect("status does not panic")
        .map_err(|err| {
            ApiError(
                ErrorBody {
                    code: ErrorCode::Unavailable,
                    message: tfc_core::error_chain(&err),
                    state: None,
                },
                None,
            )
        })?;
    Ok(Json(status))
}

/// Every VM type's pool: sizes per tier, targets, acquire statistics.
#[utoipa::path(get, path = "/v1/pools", responses((status = 200, body = PoolList)))]
async fn list_pools(State(manager): State<VmManager>) -> Json<PoolList> {
    Json(PoolList {
        pools: manager.pools().list(&manager),
    })
}

/// One VM type's pool.
#[utoipa::path(get, path = "/v1/pools/{vm_type}", params(("vm_type" = String, Path)), responses(
    (status = 200, body = PoolInfo),
    (status = 400, body = ErrorBody, description = "unknown VM type")
))]
async fn get_pool(
    State(manager): State<VmManager>,
    ApiPath(vm_type): ApiPath,
) -> Result<Json<PoolInfo>, ApiError> {
    Ok(Json(manager.pools().info(&manager, &vm_type)?))
}

/// Change a pool's sizes (omitted ones stay). The pool fills or sheds VMs to
/// the new targets in the background; `min <= target <= max` must hold.
#[utoipa::path(patch, path = "/v1/pools/{vm_type}", params(("vm_type" = String, Path)), request_body = ResizePoolRequest, responses(
    (status = 200, body = PoolInfo),
    (status = 400, body = ErrorBody, description = "unknown VM type, or sizes out of bounds"),
    (status = 413, body = ErrorBody, description = "body over the endpoint's limit"),
    (status = 501, body = ErrorBody, description = "waiting VMs for a type whose backend takes no snapshots (`qemu-tcg`)")
))]
async fn resize_pool(
    State(manager): State<VmManager>,
    ApiPath(vm_type): ApiPath,
    body: Result<Json<ResizePoolRequest>, JsonRejection>,
) -> Result<Json<PoolInfo>, ApiError> {
    let Json(request) = body?;
    Ok(Json(manager.pools().resize(&manager, &vm_type, &request)?))
}

/// Hand out a running VM of the type, the caller's alone: a waiting one
/// (running tier: a handover; hot tier: one resume), else a restore of the
/// template (warm), else a boot (cold), as the pool allows. The body is
/// optional. When nothing can serve within `wait_ms`: 503 with
/// `Retry-After`.
#[utoipa::path(post, path = "/v1/pools/{vm_type}/acquire", params(("vm_type" = String, Path)), request_body(content = AcquireRequest, description = "optional"), responses(
    (status = 200, body = AcquireResponse),
    (status = 400, body = ErrorBody, description = "unknown VM type or bad body"),
    (status = 413, body = ErrorBody, description = "body over the endpoint's limit"),
    (status = 503, body = ErrorBody, description = "nothing could serve within the wait; see Retry-After")
))]
async fn acquire(
    State(manager): State<VmManager>,
    ApiPath(vm_type): ApiPath,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Json<AcquireResponse>, ApiError> {
    let body = body?;
    let request: AcquireRequest = if body.iter().all(u8::is_ascii_whitespace) {
        AcquireRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("invalid acquire body: {e}"),
            )
        })?
    };
    Ok(Json(manager.acquire(&vm_type, request.wait_ms).await?))
}

/// Give back a VM acquired from a pool: it is stopped and removed (a used VM
/// is never handed to anyone else); the pool replaces it.
#[utoipa::path(post, path = "/v1/vms/{id}/release", params(("id" = String, Path)), responses(
    (status = 204),
    (status = 400, body = ErrorBody, description = "malformed id"),
    (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody, description = "the VM was not handed out by a pool")
))]
async fn release_vm(
    State(manager): State<VmManager>,
    ApiPath(id): ApiPath,
) -> Result<StatusCode, ApiError> {
    manager.release(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Run a command in the VM's guest through its agent. Allowed in `ready`
/// and `running`, for VMs whose readiness is the agent. The answer is
/// `application/x-ndjson`, one JSON event per line as things happen: a
/// `started` line, `stdout`/`stderr` lines (base64 chunks) as the command
/// writes, then exactly one final `exit` line (code or signal, duration) or
/// `error` line (the VM paused or stopped meanwhile, the agent's connection
/// broke). Closing the connection before the final line kills the command
/// in the guest. Refusals before the command starts are ordinary error
/// answers.
#[utoipa::path(post, path = "/v1/vms/{id}/exec", params(("id" = String, Path)), request_body = ExecRequest, responses(
    (status = 200, content_type = "application/x-ndjson", body = ExecEvent, description = "one ExecEvent per line, the last one `exit` or `error`"),
    (status = 400, body = ErrorBody, description = "bad body: empty argv, bad base64 stdin, an invalid uid or cwd"),
    (status = 403, body = ErrorBody, description = "the agent may not run it (another uid without root)"),
    (status = 404, body = ErrorBody, description = "no such VM, or no such program in the guest"),
    (status = 409, body = ErrorBody, description = "the VM is not running, has no agent, or waits in a pool; the message says what to do"),
    (status = 413, body = ErrorBody, description = "stdin over its limit"),
    (status = 502, body = ErrorBody, description = "the agent's connection failed"),
    (status = 503, body = ErrorBody, description = "`api.max_concurrent_execs` execs already in flight (see Retry-After)"),
    (status = 504, body = ErrorBody, description = "the agent did not answer in time")
))]
async fn exec_vm(
    State(manager): State<VmManager>,
    ApiPath(id): ApiPath,
    body: Result<Json<ExecRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let events = guest::exec(&manager, &id, request).await?;
    Ok((
        [(header::CONTENT_TYPE, NDJSON)],
        axum::body::Body::new(events),
    )
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct PutFileParams {
    /// Absolute path in the guest.
    path: String,
    /// Permission bits in octal (`0644`, `755`); 0644 if omitted.
    #[param(required = false)]
    mode: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct GetFileParams {
    /// Absolute path in the guest.
    path: String,
}

/// Write a file in the VM's guest: the request body, streamed to the agent,
/// which writes it atomically (a temporary file renamed into place: the
/// guest sees the old file or the whole new one, and a failed upload leaves
/// nothing). Needs `Content-Length`; at most `agent.max_file_mib`. Allowed
/// in `ready` and `running`.
#[utoipa::path(put, path = "/v1/vms/{id}/files", params(("id" = String, Path), PutFileParams),
    request_body(content = String, content_type = "application/octet-stream", description = "the file's contents"),
    responses(
    (status = 200, body = GuestFile),
    (status = 400, body = ErrorBody, description = "a relative path, a bad mode, no Content-Length, a body shorter than announced"),
    (status = 403, body = ErrorBody, description = "the agent may not write there"),
    (status = 404, body = ErrorBody, description = "no such VM, or the file's directory does not exist"),
    (status = 409, body = ErrorBody, description = "the VM is not running or has no agent"),
    (status = 413, body = ErrorBody, description = "over the size limit"),
    (status = 502, body = ErrorBody, description = "the agent's connection failed"),
    (status = 504, body = ErrorBody, description = "the agent did not answer in time")
))]
async fn put_file(
    State(manager): State<VmManager>,
    ApiPath(id): ApiPath,
    params: Result<Query<PutFileParams>, QueryRejection>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<GuestFile>, ApiError> {
    let params = query(params)?;
    let size = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let limit = manager.config().agent.max_file_bytes();
    let mode = params.mode.as_deref();
    let written = guest::put_file(&manager, &id, &params.path, mode, size, limit, body).await?;
    Ok(Json(written))
}

/// Read a file from the VM's guest, streamed as the agent sends it, with
/// its length in `Content-Length` and its permission bits (octal) in
/// `X-Tfc-File-Mode`. At most `agent.max_file_mib`. Allowed in `ready` and
/// `running`.
#[utoipa::path(get, path = "/v1/vms/{id}/files", params(("id" = String, Path), GetFileParams), responses(
    (status = 200, content_type = "application/octet-stream", body = String, description = "the file's contents",
        headers(("x-tfc-file-mode" = String, description = "permission bits in octal, e.g. 0644"))),
    (status = 400, body = ErrorBody, description = "a relative path, or not a regular file"),
    (status = 403, body = ErrorBody, description = "the agent may not read it"),
    (status = 404, body = ErrorBody, description = "no such VM, or no such file in the guest"),
    (status = 409, body = ErrorBody, description = "the VM is not running or has no agent"),
    (status = 413, body = ErrorBody, description = "over the size limit"),
    (status = 502, body = ErrorBody, description = "the agent's connection failed"),
    (status = 504, body = ErrorBody, description = "the agent did not answer in time")
))]
async fn get_file(
    State(manager): State<VmManager>,
    ApiPath(id): ApiPath,
    params: Result<Query<GetFileParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(params)?;
    let limit = manager.config().agent.max_file_bytes();
    let (info, contents) = guest::get_file(&manager, &id, &params.path, limit).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, info.size.to_string()),
            (
                header::HeaderName::from_static(MODE_HEADER),
                format!("{:04o}", info.mode),
            ),
        ],
        axum::body::Body::new(contents),
    )
        .into_response())
}
