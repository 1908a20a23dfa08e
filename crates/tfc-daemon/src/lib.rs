//! The tfc daemon: owns every VM on the host and serves the REST API on a Unix
//! socket.
//!
//! Layout:
//! - [`config`]: TOML configuration, validated at start.
//! - [`agent`]: the daemon's side of the guest agent: readiness, the identity
//!   fix-up after restores, one kept connection per VM.
//! - [`guest`]: commands and files in a guest through its agent, streamed
//!   as HTTP bodies.
//! - [`crash`]: named crash points for fault-injection tests.
//! - [`backend`]: the VMM seam (Firecracker, QEMU TCG, and a scriptable fake for
//!   tests), dispatched per VM by its spec's VMM.
//! - [`vm`]: the owner task of one VM; the only code that changes its state.
//! - [`manager`]: the table of VMs; resolves requests into specs.
//! - [`snapshots`]: the snapshot catalog, restore checks, templates' files.
//! - [`pools`]: pools of prewarmed VMs per VM type: tiers, acquire, refill, health.
//! - [`network`]: per-VM networks (namespace, tap, veth, nftables) on
//!   `tfc-net`: set up before a VM's VMM starts, torn down when it ends.
//! - [`logs`]: a VM's console and VMM logs: tails and reads from an offset.
//! - [`api`]: HTTP routes, OpenAPI document, error-to-status mapping.
//! - [`access`]: who may use the API and how much: the TCP listener's token,
//!   per-client rate limits, caps on creations and execs in flight.
//! - [`tcp`]: the API's optional TCP listener, plain or TLS.
//! - [`reaper`]: start-up cleanup of what an earlier daemon left behind.
//! - [`metrics`]: Prometheus metrics (`GET /metrics`), including each
//!   Firecracker's own counters.
//! - [`alerts`]: per VM type performance targets checked over a window;
//!   missed ones raise alerts (`GET /v1/alerts`, log, metric, webhook).

pub mod access;
pub mod agent;
pub mod alerts;
pub mod api;
pub mod backend;
pub mod config;
pub mod crash;
pub mod guest;
pub mod logs;
pub mod manager;
pub mod metrics;
pub mod network;
pub mod pools;
pub mod reaper;
pub mod snapshots;
pub mod tcp;
pub mod vm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tfc_host::lockfile::LockFile;
use tokio::net::UnixListener;

use tfc_core::Vmm;

use crate::backend::{Backend, FakeBackend, FirecrackerBackend, QemuBackend, Vmms};
use crate::config::{BackendKind, Config, ConfigError, JailerSetting, ShutdownPolicy};
use crate::manager::VmManager;

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    #[error("cannot set up the API's access control")]
    Access(#[from] access::AccessError),
    #[error("cannot start the API's TCP listener")]
    Tcp(#[from] tcp::TcpError),
    #[error("cannot start VM networking")]
    Network(#[from] network::NetworkError),
    #[error("cannot create directory {path}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("firecracker binary not found (tried: {tried}): run `tfc assets build`, put firecracker on PATH, or set firecracker.binary")]
    NoFirecracker { tried: String },
    #[error("cannot use the firecracker binary")]
    FirecrackerUnusable(#[source] tfc_host::assets::binaries::BinaryError),
    #[error("firecracker.jailer = true needs the daemon to run as root (the jailer makes chroots, device nodes and cgroups and switches user): run `tfc serve` as root, or set firecracker.jailer = false")]
    JailerNeedsRoot,
    #[error("jailer binary not found (tried: {tried}): run `tfc assets build`, put jailer on PATH, or set firecracker.jailer_binary")]
    NoJailer { tried: String },
    #[error("cannot tell the cgroup version: neither cgroup v2 nor v1 controllers are mounted at /sys/fs/cgroup; mount them, or set firecracker.cgroup_version")]
    NoCgroups,
    #[error(
        "cannot run firecracker under the jailer (firecracker.jailer = false runs VMs unconfined)"
    )]
    Jailer(#[source] tfc_firecracker::JailError),
    #[error("the qemu-tcg backend is configured ({by}) but cannot run here")]
    NoQemu {
        by: String,
        #[source]
        source: tfc_host::qemu::ProgramError,
    },
    #[error("a tfc daemon is already serving on {0}")]
    AlreadyRunning(PathBuf),
    #[error("another tfc daemon is using the data directory {0} (it holds daemon.lock); stop it or choose another data_dir")]
    DataDirInUse(PathBuf),
    #[error("the socket directory {path} belongs to uid {owner}, not to this user: remove it or set TFC_SOCKET")]
    ForeignDirectory { path: PathBuf, owner: u32 },
    #[error("cannot lock the data directory {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("API server failed")]
    Serve(#[source] std::io::Error),
    #[error("cannot open the state store")]
    Store(#[source] tfc_store::StoreError),
    #[error("cannot reconcile the stored VMs with what runs")]
    Recover(#[source] manager::ManagerError),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

/// Options of `tfc serve`.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Configuration file; the embedded defaults when `None`.
    pub config_path: Option<PathBuf>,
    /// API socket; overrides `TFC_SOCKET` and the configuration.
    pub socket: Option<PathBuf>,
    /// Data directory; overrides `TFC_DATA_DIR` and the configuration.
    pub data_dir: Option<PathBuf>,
    /// The API token from the environment, taken out of it before the
    /// runtime started ([`access::take_env_token`]).
    pub env_token: Option<access::EnvToken>,
}

/// Finds the firecracker binary: configuration, then the built assets, then PATH.
fn resolve_firecracker(config: &Config, data_dir: &Path) -> Result<PathBuf, DaemonError> {
    let mut tried = Vec::new();
    if let Some(binary) = &config.firecracker.binary {
        if binary.is_file() {
            return Ok(binary.clone());
        }
        tried.push(format!("firecracker.binary = {}", binary.display()));
    }
    match tfc_host::assets::load_manifest(data_dir) {
        Ok(manifest) if manifest.firecracker.path.is_file() => {
            return Ok(manifest.firecracker.path.clone())
        }
        Ok(manifest) => tried.push(format!("assets: {}", manifest.firecracker.path.display())),
        Err(_) => tried.push(format!("assets in {} (none built)", data_dir.display())),
    }
    if let Some(path) = tfc_host::find_on_path("firecracker") {
        return Ok(path);
    }
    tried.push("PATH".to_owned());
    Err(DaemonError::NoFirecracker {
        tried: tried.join(", "),
    })
}

/// Finds the jailer binary: configuration, then the built assets, then PATH.
fn resolve_jailer(config: &Config, data_dir: &Path) -> Result<PathBuf, DaemonError> {
    let mut tried = Vec::new();
    if let Some(binary) = &config.firecracker.jailer_binary {
        if binary.is_file() {
            return Ok(binary.clone());
        }
        tried.push(format!("firecracker.jailer_binary = {}", binary.display()));
    }
    match tfc_host::assets::load_manifest(data_dir) {
        Ok(manifest) if manifest.jailer.path.is_file() => return Ok(manifest.jailer.path.clone()),
        Ok(manifest) => tried.push(format!("assets: {}", manifest.jailer.path.display())),
        Err(_) => tried.push(format!("assets in {} (none built)", data_dir.display())),
    }
    if let Some(path) = tfc_host::find_on_path("jailer") {
        return Ok(path);
    }
    tried.push("PATH".to_owned());
    Err(DaemonError::NoJailer {
        tried: tried.join(", "),
    })
}

/// How the daemon runs `firecracker` under the jailer, checked against this
/// host: root, the jailer binary, a cgroup hierarchy, an exec file name the
/// jailer accepts. The jails' base directory is created.
fn jailer_config(
    config: &Config,
    data_dir: &Path,
    firecracker: &Path,
) -> Result<tfc_firecracker::JailerConfig, DaemonError> {
    use crate::config::CgroupVersionSetting;
    use tfc_firecracker::CgroupVersion;
    let fc = &config.firecracker;
    if !tfc_firecracker::jailer::running_as_root() {
        return Err(DaemonError::JailerNeedsRoot);
    }
    let binary = resolve_jailer(config, data_dir)?;
    let cgroup_version = match fc.cgroup_version {
        CgroupVersionSetting::Auto => {
            CgroupVersion::detect(Path::new("/sys/fs/cgroup")).ok_or(DaemonError::NoCgroups)?
        }
        CgroupVersionSetting::V1 => CgroupVersion::V1,
        CgroupVersionSetting::V2 => CgroupVersion::V2,
    };
    let chroot_base = fc
        .chroot_base
        .clone()
        .unwrap_or_else(|| data_dir.join("jail"));
    create_dir(&chroot_base)?;
    let jailer = tfc_firecracker::JailerConfig {
        binary,
        ids: fc.jail_ids(),
        chroot_base,
        cgroup_version,
        parent_cgroup: fc.parent_cgroup.clone(),
        new_pid_ns: fc.new_pid_ns,
    };
    // Refused at start rather than at the first VM.
    tfc_firecracker::Jail::new(
        &jailer,
        firecracker,
        "check",
        tfc_firecracker::JailUser::NONE,
    )
    .map_err(DaemonError::Jailer)?;
    Ok(jailer)
}

/// `firecracker.jailer = "auto"`: the jailer when this daemon runs as root
/// and finds its binary; else none, and the log says why. Any other reason
/// the jailer cannot be used (a `jailer_binary` named but missing, no
/// cgroups, an unusable binary) stops the start: that host is set up for
/// jailing, and wrongly.
fn auto_jailer(
    config: &Config,
    data_dir: &Path,
    firecracker: &Path,
) -> Result<Option<tfc_firecracker::JailerConfig>, DaemonError> {
    if !tfc_firecracker::jailer::running_as_root() {
        tracing::info!("Firecracker VMs run unconfined: the jailer needs the daemon to run as root (firecracker.jailer = \"auto\")");
        return Ok(None);
    }
    match jailer_config(config, data_dir, firecracker) {
        Ok(jailer) => Ok(Some(jailer)),
        Err(DaemonError::NoJailer { tried }) if config.firecracker.jailer_binary.is_none() => {
            tracing::warn!("Firecracker VMs run unconfined: no jailer binary was found (tried: {tried}); run `tfc assets build` or set firecracker.jailer_binary to jail them, or firecracker.jailer = false to silence this");
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// The Firecracker backend, if its binary is found and runs.
fn firecracker_backend(
    config: &Config,
    data_dir: &Path,
) -> Result<FirecrackerBackend, DaemonError> {
    let fc = &config.firecracker;
    let binary = resolve_firecracker(config, data_dir)?;
    let version = tfc_host::assets::binaries::describe(
        &binary,
        tfc_host::assets::binaries::FIRECRACKER,
        tfc_host::assets::BinarySource::Explicit,
    )
    .map_err(DaemonError::FirecrackerUnusable)?
    .version;
    let jailer = match fc.jailer {
        JailerSetting::On => Some(jailer_config(config, data_dir, &binary)?),
        JailerSetting::Off => None,
        JailerSetting::Auto => auto_jailer(config, data_dir, &binary)?,
    }
    .map(|jailer| crate::backend::Jailer::new(jailer, &binary));
    match &jailer {
        Some(_) => tracing::info!("Firecracker VMs run under the jailer"),
        None if fc.jailer == JailerSetting::Off => {
            tracing::info!("Firecracker VMs run unconfined: firecracker.jailer = false")
        }
        None => {}
    }
    // Asked once: a VMM started idle must be given its priority back.
    let idle_priority = tfc_firecracker::priority::can_leave_idle();
    if !idle_priority {
        tracing::info!("pools prewarm at normal CPU priority: this daemon cannot give a VMM started at idle priority its normal priority back (it needs CAP_SYS_NICE)");
    }
    Ok(FirecrackerBackend {
        binary,
        version,
        jailer,
        idle_priority,
        boot_timeout: Duration::from_secs(fc.boot_timeout_secs),
        console_log_limit: fc.console_log_limit_kib * 1024,
        stop: tfc_firecracker::StopPolicy {
            ctrl_alt_del_grace: (fc.ctrl_alt_del_grace_ms > 0)
                .then(|| Duration::from_millis(fc.ctrl_alt_del_grace_ms)),
            term_grace: Duration::from_millis(fc.stop_grace_ms),
        },
    })
}

/// The qemu-tcg backend, if QEMU and vhost-device-vsock are found and run.
fn qemu_backend(config: &Config) -> Result<QemuBackend, tfc_host::qemu::ProgramError> {
    use tfc_host::qemu::{QEMU, VHOST_VSOCK, VHOST_VSOCK_VERSION};
    let q = &config.qemu;
    let qemu = QEMU.find(q.binary.as_deref())?;
    let vhost = VHOST_VSOCK.find(q.vhost_device_vsock.as_deref())?;
    if vhost.version != VHOST_VSOCK_VERSION {
        tracing::warn!(
            path = %vhost.path.display(),
            version = %vhost.version,
            "tfc is tested with vhost-device-vsock {VHOST_VSOCK_VERSION}; {}",
            VHOST_VSOCK.install
        );
    }
    Ok(QemuBackend {
        qemu: qemu.path,
        qemu_version: qemu.version,
        vhost_vsock: vhost.path,
        vhost_vsock_version: vhost.version,
        boot_timeout: Duration::from_secs(q.boot_timeout_secs),
        console_log_limit: q.console_log_limit_kib * 1024,
        stop_grace: Duration::from_millis(q.stop_grace_ms),
    })
}

/// The configuration key that makes the daemon run VMs on `vmm`, if any:
/// `daemon.backend`, or the first VM type that names it.
fn configured_by(config: &Config, vmm: Vmm) -> Option<String> {
    if config.daemon.backend.default_vmm() == vmm {
        return Some("daemon.backend".to_owned());
    }
    config
        .vm_types
        .iter()
        .find(|(_, t)| t.backend == Some(vmm))
        .map(|(name, _)| format!("vm_types.{name}.backend"))
}

/// Builds the configured backend. A VMM the configuration names (as the
/// daemon's backend or a VM type's) must be usable, or the daemon does not
/// start: the error says what to install. The other VMM is used when this
/// host has it (a request's `backend` may ask for it) and refused with the
/// reason otherwise. Firecracker is never replaced by the fake when it is
/// missing.
pub fn build_backend(config: &Config, data_dir: &Path) -> Result<Backend, DaemonError> {
    if config.daemon.backend == BackendKind::Fake {
        let fake = FakeBackend::new(Duration::from_millis(config.fake.boot_ms));
        if let Some(binary) = &config.fake.agent {
            // The agent records the clock it is asked to set, so restores'
            // fix-ups succeed without touching the host.
            fake.script(|s| {
                s.agent = Some(backend::FakeAgent {
                    binary: binary.clone(),
                    record_clock: true,
                    silent: false,
                })
            });
        }
        return Ok(Backend::Fake(fake));
    }
    let firecracker = match firecracker_backend(config, data_dir) {
        Ok(backend) => Ok(backend),
        Err(err) if configured_by(config, Vmm::Firecracker).is_some() => return Err(err),
        Err(err) => Err(tfc_core::error_chain(&err)),
    };
    let qemu = match qemu_backend(config) {
        Ok(backend) => Ok(backend),
        Err(source) => match configured_by(config, Vmm::QemuTcg) {
            Some(by) => return Err(DaemonError::NoQemu { by, source }),
            None => Err(tfc_core::error_chain(&source)),
        },
    };
    Ok(Backend::Vmms(std::sync::Arc::new(Vmms {
        default: config.daemon.backend.default_vmm(),
        firecracker,
        qemu,
    })))
}

fn create_dir(path: &Path) -> Result<(), DaemonError> {
    std::fs::create_dir_all(path).map_err(|source| DaemonError::Directory {
        path: path.to_owned(),
        source,
    })
}

/// Makes the data directory, which holds guest memory (snapshots), VM
/// records and the VMMs' sockets, this user's alone: mode 0700, tightened
/// (with a warning) when it was created looser.
fn restrict_data_dir(dir: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let dir_err = |source| DaemonError::Directory {
        path: dir.to_owned(),
        source,
    };
    let mode = std::fs::metadata(dir)
        .map_err(dir_err)?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            data_dir = %dir.display(),
            mode = format!("{mode:04o}"),
            "the data directory was open to other users; making it 0700 (it holds guest memory in snapshots)"
        );
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o7700))
            .map_err(dir_err)?;
    }
    Ok(())
}

/// Makes sure `dir` exists and belongs to this user, creating it mode 0700. A
/// socket directory someone else made (e.g. a pre-created `/tmp/tfc-$UID`) could
/// let them replace the socket, so it is refused.
fn private_dir(dir: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir_err = |source| DaemonError::Directory {
        path: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(dir_err)?;
    let owner = std::fs::metadata(dir).map_err(dir_err)?.uid();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if owner != me {
        return Err(DaemonError::ForeignDirectory {
            path: dir.to_owned(),
            owner,
        });
    }
    Ok(())
}

/// Takes `<data_dir>/daemon.lock` for as long as the returned file lives. Start-up
/// cleanup ends every VMM recorded in the data directory, so two daemons on one
/// directory would destroy each other's VMs: the second must not get that far.
pub fn lock_data_dir(data_dir: &Path) -> Result<LockFile, DaemonError> {
    let path = data_dir.join("daemon.lock");
    match LockFile::try_acquire(&path) {
        Ok(Some(lock)) => Ok(lock),
        Ok(None) => Err(DaemonError::DataDirInUse(data_dir.to_owned())),
        Err(source) => Err(DaemonError::Lock { path, source }),
    }
}

/// Binds the API socket, mode 0600. A socket file nobody answers on is stale and
/// replaced; one that answers belongs to a running daemon and is left alone.
pub fn bind(socket: &Path) -> Result<UnixListener, DaemonError> {
    if let Some(parent) = socket.parent() {
        private_dir(parent)?;
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(DaemonError::AlreadyRunning(socket.to_owned()));
        }
        let _ = std::fs::remove_file(socket);
    }
    let bind_err = |source| DaemonError::Bind {
        path: socket.to_owned(),
        source,
    };
    let listener = UnixListener::bind(socket).map_err(bind_err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Installs the SIGTERM and SIGINT handlers now, so a signal that arrives while
/// the daemon starts up is not lost, and resolves on the first signal.
fn termination_signal() -> Result<impl std::future::Future<Output = ()>, DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received: shutting down"),
        }
    })
}

/// Where the API is served: always the Unix socket; a TCP listener too when
/// `api.tcp` is set, with the token every request on it must carry.
#[derive(Debug)]
pub struct Listeners {
    pub unix: UnixListener,
    pub tcp: Option<(tcp::TcpApiListener, access::Token)>,
}

impl From<UnixListener> for Listeners {
    fn from(unix: UnixListener) -> Self {
        Self { unix, tcp: None }
    }
}

/// Opens the TCP listener `config.api` asks for, if any, with its token
/// (`api.token_file`, else `env_token`) and TLS. Every refusal names the
/// key at fault.
pub async fn bind_tcp(
    config: &Config,
    env_token: Option<&str>,
) -> Result<Option<(tcp::TcpApiListener, access::Token)>, DaemonError> {
    let Some(addr) = config.api.tcp_addr()? else {
        return Ok(None);
    };
    let token = access::Token::for_config(&config.api, env_token)?
        .expect("a token is required when api.tcp is set");
    let tls = tcp::tls_acceptor(&config.api)?;
    if tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "the API's TCP listener is not on loopback and has no TLS: its token crosses the \
             network in clear; set api.tls_cert and api.tls_key"
        );
    }
    let listener = tcp::TcpApiListener::bind(addr, tls).await?;
    Ok(Some((listener, token)))
}

/// Serves the API on `listeners` until `stop` resolves; then stops taking
/// requests on all of them and, by `policy`, stops every VM of `manager`
/// (which also ends requests still waiting on a boot, so the servers can
/// drain) or lets them run on for the next daemon.
pub async fn serve_until(
    listeners: impl Into<Listeners>,
    manager: VmManager,
    policy: ShutdownPolicy,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let Listeners { unix, tcp } = listeners.into();
    let deadline = Duration::from_secs(manager.config().daemon.shutdown_deadline_secs);
    let limiter = access::RateLimiter::for_config(&manager.config().api);
    // Pools fill while the API serves (once: a caller may have started them).
    manager.start_pools();
    manager.monitor().start();
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    // One router for both listeners, so they share the caps on operations
    // in flight.
    let app = api::router(manager.clone());
    let shutdown = {
        let manager = manager.clone();
        tokio::spawn(async move {
            stop.await;
            let _ = stopping_tx.send(true);
            manager.shutdown(policy).await;
        })
    };
    let graceful = |mut stopping: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    let unix_server = axum::serve(
        unix,
        app.clone()
            .into_make_service_with_connect_info::<access::ClientAddr>(),
    )
    .with_graceful_shutdown(graceful(stopping.clone()));
    let tcp_stopping = stopping.clone();
    let tcp_server = async move {
        let Some((listener, token)) = tcp else {
            return Ok(());
        };
        // Outermost first: the rate limit, then the token check, so
        // guessing tokens is rate limited too.
        let mut app = app.layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::new(access::TokenGate::new(token)),
            access::require_token,
        ));
        if let Some(limiter) = limiter {
            app = app.layer(axum::middleware::from_fn_with_state(
                limiter,
                access::rate_limit,
            ));
        }
        tracing::info!(addr = %listener.local_addr(), tls = listener.is_tls(), "API listening on TCP");
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<access::ClientAddr>(),
        )
        .with_graceful_shutdown(graceful(tcp_stopping))
        .await
    };
    let servers = async {
        let (unix_served, tcp_served) = tokio::join!(async { unix_server.await }, tcp_server);
        unix_served.and(tcp_served)
    };
    let mut late = stopping;
    // In-flight requests get `shutdown_deadline_secs` to finish; then the
    // daemon exits regardless (its state is already stored).
    let served = tokio::select! {
        served = servers => served,
        _ = async move {
            let _ = late.wait_for(|s| *s).await;
            tokio::time::sleep(deadline).await;
        } => {
            tracing::warn!(?deadline, "requests still in flight at the shutdown deadline; exiting");
            Ok(())
        }
    };
    let _ = shutdown.await;
    served.map_err(DaemonError::Serve)
}

/// Runs the daemon until SIGTERM or SIGINT: opens the store, reconciles the
/// recorded VMs with what runs, serves; at the signal applies the shutdown
/// policy, removes the socket and returns.
pub async fn serve(options: ServeOptions) -> Result<(), DaemonError> {
    let stop = termination_signal()?;
    let config = Config::load(options.config_path.as_deref())?;
    // The token and TLS files are checked first, so a refused access
    // configuration stops the daemon before it touches anything.
    let env_token = options.env_token.as_ref().map(access::EnvToken::as_str);
    let tcp = bind_tcp(&config, env_token).await?;
    let data_dir = options.data_dir.unwrap_or_else(|| config.data_dir());
    create_dir(&data_dir)?;
    restrict_data_dir(&data_dir)?;
    let _lock = lock_data_dir(&data_dir)?;
    let backend = build_backend(&config, &data_dir)?;
    let jailed = backend.jailed_firecracker().cloned();
    let store =
        tfc_store::AnyStore::open(config.daemon.storage, &data_dir).map_err(DaemonError::Store)?;
    let policy = config.daemon.shutdown_policy;
    let socket = options.socket.unwrap_or_else(|| config.socket_path());
    let backend_name = backend.name();
    let network = config.network.enabled;
    let manager = VmManager::new(backend, config, data_dir.clone(), store);
    if network {
        manager.enable_network()?;
    }
    // Reconciled before the socket exists, so no request sees a half-known state.
    let recorded = manager.recover().await.map_err(DaemonError::Recover)?;
    manager
        .reconcile_network()
        .await
        .map_err(DaemonError::Recover)?;
    reaper::reap_orphans(&manager::vms_dir(&data_dir), &recorded);
    if let Some(fc) = &jailed {
        fc.reap_jails(&recorded);
    }
    let listener = bind(&socket)?;
    tracing::info!(
        socket = %socket.display(),
        data_dir = %data_dir.display(),
        backend = backend_name,
        vms = recorded.len(),
        "tfc daemon listening"
    );
    // Templates whose inputs changed while the daemon was down rebuild in the
    // background; requests are served meanwhile (ultra_fast boots instead).
    tokio::spawn({
        let manager = manager.clone();
        async move { manager.refresh_templates().await }
    });
    let listeners = Listeners {
        unix: listener,
        tcp,
    };
    let served = serve_until(listeners, manager, policy, stop).await;
    let _ = std::fs::remove_file(&socket);
    served?;
    tracing::info!("tfc daemon stopped");
    Ok(())
}
