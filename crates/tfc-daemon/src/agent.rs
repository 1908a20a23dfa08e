//! The daemon's side of the guest agent: waiting for it at boot, the
//! identity fix-up after a restore, and the one connection per VM that
//! exec and file requests share.
//!
//! Invariant of [`AgentLink`]: a session is open exactly while the VM's
//! guest runs (its owner opens one when the VM becomes ready or resumes and
//! closes it before the guest pauses or stops). Closing a session drops its
//! connection and ends every call made through it (they watch
//! [`SessionEnd`]), so nothing waits on the agent of a paused guest, which
//! would never answer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tfc_agent_client::{AgentConnection, AgentError, Pong};
use tfc_api::IdentityFixup;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long one connection attempt (the vsock `CONNECT` handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request/reply call (ping, clock, entropy, a file's first
/// answer, an exec's start) may take before the agent counts as wedged.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause between attempts while a booting guest's agent does not answer
/// yet: a refused `CONNECT` costs the guest kernel little, and the agent
/// comes up within a few such pauses of its init starting.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// How long the identity fix-up of a restored VM may take in all: the
/// connection and both calls. The agent ran when the snapshot was taken, so it answers at
/// once; this bounds a guest that does not.
pub const FIXUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of host randomness given to a restored guest: well above the 32
/// bytes that fully seed the kernel's pool, within the agent's limit.
pub const SEED_BYTES: usize = 64;

/// Why talking to a VM's agent failed: a call, a connection, the wait for a
/// booting guest's agent, or a restored guest's identity fix-up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The session ended (the VM was paused, stopped or is gone) before or
    /// while the call ran.
    #[error("the VM's guest stopped running during the call (paused, stopped or failed)")]
    Ended,
    #[error("cannot connect to the guest agent through {socket}")]
    Connect {
        socket: String,
        #[source]
        source: AgentError,
    },
    #[error("the guest agent did not answer the {what} call within {} s", after.as_secs())]
    Timeout { what: &'static str, after: Duration },
    #[error("the {what} call to the guest agent failed")]
    Call {
        what: &'static str,
        #[source]
        source: AgentError,
    },
    #[error("the guest agent never answered a ping on vsock port {port} within {} s (last attempt: {last})", waited.as_secs_f64().round())]
    NeverAnswered {
        port: u32,
        waited: Duration,
        /// Why the last attempt failed.
        last: String,
    },
    #[error("the host's random source failed: {0}")]
    HostRandom(String),
}

/// The host side of one VM's vsock socket and agent port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAddress {
    pub socket: PathBuf,
    pub port: u32,
}

impl AgentAddress {
    /// The agent of the VM in `workdir`, on `port`.
    pub fn new(workdir: &Path, port: u32) -> Self {
        Self {
            socket: workdir.join(tfc_firecracker::vm_config::VSOCK_SOCKET),
            port,
        }
    }

    /// One connection attempt: the vsock handshake, then a ping.
    async fn connect_and_ping(&self) -> Result<(AgentConnection, Pong), LinkError> {
        let connection = tfc_agent_client::connect_vsock(&self.socket, self.port, CONNECT_TIMEOUT)
            .await
            .map_err(|source| LinkError::Connect {
                socket: self.socket.display().to_string(),
                source,
            })?;
        let pong = call("ping", connection.ping()).await?;
        Ok((connection, pong))
    }

    /// Connects and pings until the agent answers or `deadline` passes.
    /// Refused and reset connections are what a booting guest gives before
    /// its agent listens, so every failure is retried.
    /// Fails with [`LinkError::NeverAnswered`].
    pub async fn wait_until_answers(
        &self,
        deadline: Instant,
    ) -> Result<(AgentConnection, Pong), LinkError> {
        let started = Instant::now();
        let mut last = "no attempt was made".to_owned();
        loop {
            match tokio::time::timeout_at(deadline, self.connect_and_ping()).await {
                Ok(Ok(answered)) => return Ok(answered),
                Ok(Err(err)) => last = tfc_core::error_chain(&err),
                Err(_) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(LinkError::NeverAnswered {
                    port: self.port,
                    waited: now - started,
                    last,
                });
            }
            tokio::time::sleep_until(deadline.min(now + RETRY_INTERVAL)).await;
        }
    }

    /// Connects to a restored guest's agent and fixes up its identity: the
    /// clock set to the host's, fresh host randomness mixed into its pool.
    /// Returns the connection, for the VM's session to keep.
    pub async fn fix_identity(&self) -> Result<(AgentConnection, IdentityFixup), LinkError> {
        let started = Instant::now();
        // One bound for the whole fix-up, connection and both calls.
        let deadline = started + FIXUP_TIMEOUT;
        let (connection, _) = self.wait_until_answers(deadline).await?;
        let calls = async {
            // Read as late as possible: the guest's clock is as right as the
            // host's at the moment the agent sets it, less the call's latency.
            call("sync_clock", connection.sync_clock(SystemTime::now())).await?;
            let mut seed = [0u8; SEED_BYTES];
            getrandom::getrandom(&mut seed).map_err(|e| LinkError::HostRandom(e.to_string()))?;
            call("reseed_entropy", connection.reseed_entropy(&seed)).await
        };
        let credited = tokio::time::timeout_at(deadline, calls)
            .await
            .map_err(|_| LinkError::Timeout {
                what: "identity fix-up",
                after: FIXUP_TIMEOUT,
            })??;
        let fixup = IdentityFixup {
            at_ms: tfc_core::unix_ms(SystemTime::now()),
            duration_us: started.elapsed().as_micros() as u64,
            entropy_credited: credited,
        };
        Ok((connection, fixup))
    }
}

/// Runs a request/reply call bounded by [`CALL_TIMEOUT`].
pub async fn call<T>(
    what: &'static str,
    future: impl std::future::Future<Output = Result<T, AgentError>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(CALL_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(LinkError::Call { what, source }),
        Err(_) => Err(LinkError::Timeout {
            what,
            after: CALL_TIMEOUT,
        }),
    }
}

/// The daemon's connection to one VM's agent, shared by every request to
/// it, and the session that says whether the guest runs (see the module's
/// invariant).
#[derive(Debug)]
pub struct AgentLink {
    address: AgentAddress,
    session: Mutex<Option<Session>>,
    /// Held while a connection is being opened, so concurrent callers make
    /// one connection rather than one each.
    connecting: tokio::sync::Mutex<()>,
    sessions: AtomicU64,
}

#[derive(Debug)]
struct Session {
    number: u64,
    connection: Option<AgentConnection>,
    /// Dropped when the session closes, which wakes every [`SessionEnd`].
    _alive: watch::Sender<()>,
    ended: watch::Receiver<()>,
}

/// Resolves when the session a call was made in closes.
#[derive(Debug, Clone)]
pub struct SessionEnd(watch::Receiver<()>);

impl SessionEnd {
    /// Waits until the session closes (at once if it already has).
    pub async fn wait(&mut self) {
        // The sender never sends: this returns only once it is dropped.
        while self.0.changed().await.is_ok() {}
    }
}

impl AgentLink {
    pub fn new(address: AgentAddress) -> Self {
        Self {
            address,
            session: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            sessions: AtomicU64::new(0),
        }
    }

    pub fn address(&self) -> &AgentAddress {
        &self.address
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Option<Session>> {
        self.session.lock().expect("agent session lock")
    }

    /// The guest runs: calls may reach its agent from now on, through
    /// `connection` when the caller has one (from readiness or a fix-up),
    /// else through one opened on first use. Replaces any open session.
    pub fn open(&self, connection: Option<AgentConnection>) {
        let (alive, ended) = watch::channel(());
        let number = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        *self.session() = Some(Session {
            number,
            connection,
            _alive: alive,
            ended,
        });
    }

    /// The guest stops running (it is about to pause or stop, or has
    /// ended): drops the connection and ends every call made in the
    /// session. Closing a closed link does nothing.
    pub fn close(&self) {
        let closed = self.session().take();
        drop(closed);
    }

    pub fn is_open(&self) -> bool {
        self.session().is_some()
    }

    /// The session's connection (opened now if it has none, or if the one it
    /// had broke) and the end of the session, which a long call (an exec, a
    /// transfer) watches. Fails with [`LinkError::Ended`] when no session is
    /// open.
    pub async fn connection(&self) -> Result<(AgentConnection, SessionEnd), LinkError> {
        if let Some(open) = self.current()? {
            return Ok(open);
        }
        let _connecting = self.connecting.lock().await;
        // Another caller may have connected while this one waited.
        if let Some(open) = self.current()? {
            return Ok(open);
        }
        let (number, mut end) = {
            let session = self.session();
            let session = session.as_ref().ok_or(LinkError::Ended)?;
            (session.number, SessionEnd(session.ended.clone()))
        };
        let (connection, _) = tokio::select! {
            connected = self.address.connect_and_ping() => connected?,
            _ = end.wait() => return Err(LinkError::Ended),
        };
        let mut session = self.session();
        match session.as_mut() {
            Some(session) if session.number == number => {
                session.connection = Some(connection.clone());
                Ok((connection, end))
            }
            // Closed (or closed and reopened) meanwhile: this connection
            // belongs to a session that is over.
            _ => Err(LinkError::Ended),
        }
    }

    /// The open session's live connection, `None` when it needs one.
    fn current(&self) -> Result<Option<(AgentConnection, SessionEnd)>, LinkError> {
        let mut session = self.session();
        let session = session.as_mut().ok_or(LinkError::Ended)?;
        match &session.connection {
            Some(connection) if !connection.is_closed() => Ok(Some((
                connection.clone(),
                SessionEnd(session.ended.clone()),
            ))),
            Some(_) => {
                tracing::debug!(socket = %self.address.socket.display(), "the agent connection broke; reconnecting");
                session.connection = None;
                Ok(None)
            }
            None => Ok(None),
        }
    }
}
