//! The owner of one VM. A task per VM is the only code that changes that VM's
//! state: API handlers send it [`VmOp`]s and read its record through a watch
//! channel. Every change goes through `tfc_core::transition` first, so an illegal
//! request is refused before the VMM is touched.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tfc_api::{ExitInfo, VmInfo};
use tfc_core::{error_chain, transition, BootPhase, BootTimeline, VmEvent, VmId, VmSpec, VmState};
use tokio::sync::{mpsc, oneshot, watch};

use crate::backend::{
    Backend, BackendError, CreateRequest, ExitReason, Machine, VmBackend, VmMachine,
};

/// An operation a caller asks of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmOp {
    Pause,
    Resume,
    Stop,
}

impl VmOp {
    fn event(self) -> VmEvent {
        match self {
            VmOp::Pause => VmEvent::Pause,
            VmOp::Resume => VmEvent::Resume,
            VmOp::Stop => VmEvent::Stop,
        }
    }

    pub fn verb(self) -> &'static str {
        match self {
            VmOp::Pause => "pause",
            VmOp::Resume => "resume",
            VmOp::Stop => "stop",
        }
    }
}

/// Why an operation on a VM was not done.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot {verb} VM {id}: it is {state}", verb = op.verb())]
    InvalidState { id: VmId, op: VmOp, state: VmState },
    #[error("cannot {verb} VM {id}", verb = op.verb())]
    Backend {
        id: VmId,
        op: VmOp,
        // Boxed: backend errors are large and this one is rare.
        #[source]
        source: Box<BackendError>,
    },
}

struct Command {
    op: VmOp,
    reply: oneshot::Sender<Result<VmInfo, VmError>>,
}

/// A handle on one VM: its current record and a way to ask its owner for changes.
#[derive(Debug, Clone)]
pub struct VmHandle {
    id: VmId,
    record: watch::Receiver<VmInfo>,
    commands: mpsc::Sender<Command>,
}

impl VmHandle {
    pub fn id(&self) -> &VmId {
        &self.id
    }

    /// The VM's record as of now.
    pub fn info(&self) -> VmInfo {
        self.record.borrow().clone()
    }

    /// Asks the owner to do `op` and waits for the result.
    pub async fn op(&self, op: VmOp) -> Result<VmInfo, VmError> {
        let (reply, answer) = oneshot::channel();
        let refused = || VmError::InvalidState {
            id: self.id.clone(),
            op,
            state: self.info().state,
        };
        // A closed channel means the owner has ended: the VM is terminal.
        if self.commands.send(Command { op, reply }).await.is_err() {
            return Err(refused());
        }
        answer.await.unwrap_or_else(|_| Err(refused()))
    }

    /// Waits until `done` holds for the record, or `timeout` passes; returns the
    /// record either way.
    pub async fn wait_until(
        &self,
        timeout: std::time::Duration,
        done: impl Fn(&VmInfo) -> bool,
    ) -> VmInfo {
        let mut rx = self.record.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|r| done(r))).await;
        self.info()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn exit_info(reason: ExitReason) -> ExitInfo {
    ExitInfo {
        code: reason.code,
        signal: reason.signal,
        description: reason.to_string(),
    }
}

/// Starts the owner of a new VM, which creates and boots it.
pub fn spawn(
    id: VmId,
    spec: VmSpec,
    workdir: PathBuf,
    backend: Backend,
    requested_at: Instant,
) -> VmHandle {
    let now = now_ms();
    let info = VmInfo {
        id: id.to_string(),
        state: VmState::Creating,
        spec: spec.clone(),
        pid: None,
        created_at_ms: now,
        updated_at_ms: now,
        timeline: BootTimeline::default(),
        failure: None,
        exit: None,
        workdir: workdir.display().to_string(),
        console_log: workdir
            .join(tfc_firecracker::process::CONSOLE_LOG)
            .display()
            .to_string(),
    };
    let (record, record_rx) = watch::channel(info);
    let (commands_tx, commands) = mpsc::channel(16);
    let owner = Owner {
        id: id.clone(),
        record,
        commands,
        requested_at,
    };
    tokio::spawn(owner.run(spec, workdir, backend));
    VmHandle {
        id,
        record: record_rx,
        commands: commands_tx,
    }
}

struct Owner {
    id: VmId,
    record: watch::Sender<VmInfo>,
    commands: mpsc::Receiver<Command>,
    requested_at: Instant,
}

/// How the wait for readiness ended.
enum BootOutcome {
    Ready,
    Failed(BackendError),
    Exited(ExitReason),
    StopRequested(oneshot::Sender<Result<VmInfo, VmError>>),
}

impl Owner {
    fn state(&self) -> VmState {
        self.record.borrow().state
    }

    /// Applies `event`; the caller has checked it is legal or treats refusal as a bug.
    fn apply(&self, event: VmEvent) -> Result<VmState, tfc_core::InvalidTransition> {
        let to = transition(self.state(), event)?;
        self.record.send_modify(|r| {
            r.state = to;
            r.updated_at_ms = now_ms();
        });
        Ok(to)
    }

    fn mark(&self, phase: BootPhase) {
        let at = self.requested_at.elapsed().as_micros() as u64;
        self.record.send_modify(|r| r.timeline.mark(phase, at));
    }

    fn fail(&self, failure: String, exit: Option<ExitReason>) {
        tracing::warn!(vm = %self.id, %failure, "VM failed");
        let _ = self.apply(VmEvent::Fail);
        self.record.send_modify(|r| {
            r.failure = Some(failure);
            if let Some(exit) = exit {
                r.exit = Some(exit_info(exit));
            }
            r.pid = None;
        });
    }

    fn refuse(&self, op: VmOp) -> VmError {
        VmError::InvalidState {
            id: self.id.clone(),
            op,
            state: self.state(),
        }
    }

    async fn run(mut self, spec: VmSpec, workdir: PathBuf, backend: Backend) {
        let Some(machine) = self.create(&spec, &workdir, &backend).await else {
            return;
        };
        match self.boot(&machine).await {
            BootOutcome::Ready => {
                self.mark(BootPhase::Ready);
                let _ = self.apply(VmEvent::BootCompleted);
                tracing::info!(vm = %self.id, ms = self.requested_at.elapsed().as_millis() as u64, "VM ready");
            }
            BootOutcome::Failed(err) => {
                let exit = machine.stop().await;
                self.fail(error_chain(&err), Some(exit));
                return self.drain().await;
            }
            BootOutcome::Exited(reason) => {
                let tail = machine.console_tail().join("\n  ");
                self.fail(
                    format!("VMM {reason} during boot; last console lines:\n  {tail}"),
                    Some(reason),
                );
                return self.drain().await;
            }
            BootOutcome::StopRequested(reply) => {
                self.stop(&machine, reply).await;
                return self.drain().await;
            }
        }
        self.serve(&machine).await;
        self.drain().await;
    }

    async fn create(
        &mut self,
        spec: &VmSpec,
        workdir: &Path,
        backend: &Backend,
    ) -> Option<Machine> {
        let request = CreateRequest {
            id: &self.id,
            spec,
            workdir,
        };
        let mut phases = Vec::new();
        let started = self.requested_at;
        let mut mark = |phase| phases.push((phase, started.elapsed().as_micros() as u64));
        let created = backend.create(request, &mut mark).await;
        self.record.send_modify(|r| {
            for (phase, at) in phases {
                r.timeline.mark(phase, at);
            }
        });
        match created {
            Ok(machine) => {
                if let Some(pid) = machine.pid() {
                    self.record.send_modify(|r| r.pid = Some(pid));
                }
                Some(machine)
            }
            Err(err) => {
                self.fail(error_chain(&err), None);
                self.drain().await;
                None
            }
        }
    }

    /// Starts the guest and waits for readiness, still answering callers: a stop
    /// ends the boot, anything else is refused as the state machine says.
    async fn boot(&mut self, machine: &Machine) -> BootOutcome {
        if let Err(err) = self.apply(VmEvent::StartBoot) {
            tracing::error!(vm = %self.id, %err, "state machine refused boot");
        }
        if let Err(err) = machine.boot().await {
            return BootOutcome::Failed(err);
        }
        self.mark(BootPhase::InstanceStarted);
        let ready = machine.wait_ready();
        tokio::pin!(ready);
        loop {
            tokio::select! {
                result = &mut ready => {
                    return match result {
                        Ok(()) => BootOutcome::Ready,
                        Err(BackendError::ExitedDuringBoot { reason, .. }) => BootOutcome::Exited(reason),
                        Err(err) => BootOutcome::Failed(err),
                    };
                }
                reason = machine.wait_exit() => return BootOutcome::Exited(reason),
                Some(command) = self.commands.recv() => {
                    if command.op == VmOp::Stop {
                        return BootOutcome::StopRequested(command.reply);
                    }
                    let _ = command.reply.send(Err(self.refuse(command.op)));
                }
            }
        }
    }

    /// Serves operations until the VM reaches a terminal state.
    async fn serve(&mut self, machine: &Machine) {
        loop {
            tokio::select! {
                reason = machine.wait_exit() => {
                    self.fail(format!("VMM {reason} unexpectedly"), Some(reason));
                    return;
                }
                command = self.commands.recv() => {
                    // Every handle is gone: the manager forgot this VM.
                    let Some(command) = command else {
                        machine.stop().await;
                        return;
                    };
                    if command.op == VmOp::Stop {
                        self.stop(machine, command.reply).await;
                        return;
                    }
                    let result = self.pause_or_resume(machine, command.op).await;
                    let _ = command.reply.send(result);
                }
            }
        }
    }

    async fn pause_or_resume(&self, machine: &Machine, op: VmOp) -> Result<VmInfo, VmError> {
        transition(self.state(), op.event()).map_err(|_| self.refuse(op))?;
        let done = match op {
            VmOp::Pause => machine.pause().await,
            _ => machine.resume().await,
        };
        done.map_err(|source| VmError::Backend {
            id: self.id.clone(),
            op,
            source: Box::new(source),
        })?;
        let _ = self.apply(op.event());
        Ok(self.record.borrow().clone())
    }

    async fn stop(&self, machine: &Machine, reply: oneshot::Sender<Result<VmInfo, VmError>>) {
        if self.apply(VmEvent::Stop).is_err() {
            let _ = reply.send(Err(self.refuse(VmOp::Stop)));
            return;
        }
        let reason = machine.stop().await;
        let _ = self.apply(VmEvent::Exited);
        self.record.send_modify(|r| {
            r.exit = Some(exit_info(reason));
            r.pid = None;
        });
        tracing::info!(vm = %self.id, %reason, "VM stopped");
        let _ = reply.send(Ok(self.record.borrow().clone()));
    }

    /// After a terminal state, refuse whatever is still queued, then end.
    async fn drain(&mut self) {
        self.commands.close();
        while let Some(command) = self.commands.recv().await {
            let _ = command.reply.send(Err(self.refuse(command.op)));
        }
    }
}
