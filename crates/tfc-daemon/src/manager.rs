//! The VM manager: resolves create requests into specs, keeps the table of VMs and
//! routes operations to each VM's owner.
//!
//! Invariants: every entry of the table has a directory `vms_dir/<id>`, created
//! before the entry is inserted and removed only after the entry is removed; once
//! `closing` is set (under the table's write lock) no entry is added.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tfc_api::{CreateVmRequest, VmInfo};
use tfc_core::{spec, Readiness, SpecError, VmId, VmSpec, VmState, VmTypeName};
use tfc_store::{AnyStore, MemoryStore, Store};

use crate::backend::Backend;
use crate::config::{Config, ShutdownPolicy};
use crate::vm::{self, VmError, VmHandle, VmOp};

/// Why a manager request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("no VM with id {0}")]
    NotFound(String),
    #[error("invalid VM id: {0}")]
    BadId(#[source] tfc_core::IdError),
    #[error("unknown VM type {name:?}; configured types: {known}")]
    UnknownType { name: String, known: String },
    #[error("invalid VM spec")]
    BadSpec(#[source] SpecError),
    #[error("VM type {vm_type} has no {what}: set vm_types.{vm_type}.{what} or run `tfc assets build` ({reason})")]
    NoAsset {
        vm_type: String,
        what: &'static str,
        reason: String,
    },
    #[error("cannot delete VM {id}: it is {state}; stop it first or delete with force")]
    NotDeletable { id: VmId, state: VmState },
    #[error("cannot create the VM directory {path}")]
    Workdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("the state store refused the change")]
    Store(#[source] tfc_store::StoreError),
    #[error("cannot encode the VM record: {0}")]
    Record(String),
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// The daemon's table of VMs.
#[derive(Debug, Clone)]
pub struct VmManager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: Backend,
    config: Config,
    data_dir: PathBuf,
    store: Arc<AnyStore>,
    vms: RwLock<Table>,
}

#[derive(Debug, Default)]
struct Table {
    vms: HashMap<VmId, VmHandle>,
    /// Set by `shutdown`; refuses new VMs.
    closing: bool,
}

/// Directory holding one subdirectory per VM.
pub fn vms_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("vms")
}

fn random_id() -> VmId {
    let mut bytes = [0u8; 6];
    // The kernel's RNG does not fail once booted; a zero id would still be unique
    // enough to be caught by the collision check below.
    let _ = getrandom::getrandom(&mut bytes);
    VmId::from_random(bytes)
}

impl VmManager {
    pub fn new(backend: Backend, config: Config, data_dir: PathBuf, store: AnyStore) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                config,
                data_dir,
                store: Arc::new(store),
                vms: RwLock::new(Table::default()),
            }),
        }
    }

    /// A manager with an in-memory store (tests, demos, benchmarks).
    pub fn in_memory(backend: Backend, config: Config, data_dir: PathBuf) -> Self {
        Self::new(
            backend,
            config,
            data_dir,
            AnyStore::Memory(MemoryStore::new()),
        )
    }

    pub fn store(&self) -> &AnyStore {
        &self.inner.store
    }

    pub fn backend_name(&self) -> &'static str {
        self.inner.backend.name()
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    fn handle(&self, id: &str) -> Result<VmHandle, ManagerError> {
        let id = VmId::new(id).map_err(ManagerError::BadId)?;
        self.inner
            .vms
            .read()
            .expect("vm table lock")
            .vms
            .get(&id)
            .cloned()
            .ok_or_else(|| ManagerError::NotFound(id.to_string()))
    }

    /// Merges the VM type with the request's overrides into a validated spec.
    pub fn resolve_spec(&self, request: &CreateVmRequest) -> Result<VmSpec, ManagerError> {
        let config = &self.inner.config;
        let type_name = request
            .vm_type
            .clone()
            .unwrap_or_else(|| config.daemon.default_vm_type.clone());
        let vm_type = config
            .vm_types
            .get(&type_name)
            .ok_or_else(|| ManagerError::UnknownType {
                name: type_name.clone(),
                known: config
                    .vm_types
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let assets = match (&vm_type.kernel, &vm_type.rootfs, &vm_type.boot_args) {
            (Some(_), Some(_), Some(_)) => None,
            _ => Some(tfc_host::assets::load_manifest(&self.inner.data_dir)),
        };
        let from_assets = |what: &'static str,
                           pick: &dyn Fn(&tfc_host::assets::Manifest) -> String|
         -> Result<String, ManagerError> {
            match &assets {
                Some(Ok(manifest)) => Ok(pick(manifest)),
                // The fake never reads kernel or rootfs; it needs no built assets.
                Some(Err(_)) if matches!(self.inner.backend, Backend::Fake(_)) => Ok(match what {
                    "boot_args" => "console=ttyS0".to_owned(),
                    _ => format!("/nonexistent/fake-{what}"),
                }),
                Some(Err(err)) => Err(ManagerError::NoAsset {
                    vm_type: type_name.clone(),
                    what,
                    reason: tfc_core::error_chain(err),
                }),
                None => unreachable!("assets are loaded whenever a field is missing"),
            }
        };
        let kernel = match &vm_type.kernel {
            Some(path) => path.clone(),
            None => from_assets("kernel", &|m| m.kernel.vmlinux.display().to_string())?.into(),
        };
        let rootfs = match &vm_type.rootfs {
            Some(path) => path.clone(),
            None => from_assets("rootfs", &|m| m.rootfs.path.display().to_string())?.into(),
        };
        let mut boot_args = match &vm_type.boot_args {
            Some(args) => args.clone(),
            None => from_assets("boot_args", &|m| m.boot_args.clone())?,
        };
        if let Some(extra) = &request.extra_boot_args {
            spec::validate_boot_args(extra).map_err(ManagerError::BadSpec)?;
            if !extra.trim().is_empty() {
                boot_args.push(' ');
                boot_args.push_str(extra.trim());
            }
        }
        let spec = VmSpec {
            vm_type: VmTypeName::new(type_name.as_str()).map_err(ManagerError::BadId)?,
            vcpus: request.vcpus.unwrap_or(vm_type.vcpus),
            memory_mib: request.memory_mib.unwrap_or(vm_type.memory_mib),
            kernel,
            rootfs,
            boot_args,
            readiness: Readiness::ConsoleLine {
                contains: vm_type.readiness_line.clone(),
            },
        };
        spec.validate().map_err(ManagerError::BadSpec)?;
        Ok(spec)
    }

    /// Creates a VM and starts its owner. With `wait`, returns once the VM is Ready
    /// or terminal (or the wait times out, returning the VM as it is then).
    pub async fn create(&self, request: CreateVmRequest) -> Result<VmInfo, ManagerError> {
        let requested_at = Instant::now();
        let spec = self.resolve_spec(&request)?;
        let vms_dir = vms_dir(&self.inner.data_dir);
        let (id, workdir) = loop {
            let id = random_id();
            let workdir = vms_dir.join(id.as_str());
            std::fs::create_dir_all(&vms_dir).map_err(|source| ManagerError::Workdir {
                path: vms_dir.clone(),
                source,
            })?;
            match std::fs::create_dir(&workdir) {
                Ok(()) => break (id, workdir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(ManagerError::Workdir {
                        path: workdir,
                        source,
                    })
                }
            }
        };
        // The intent is stored before anything is started: a daemon that dies
        // from here on finds a `creating` record and rolls it back.
        let record = vm::new_record(&id, &spec, &workdir);
        if let Err(err) = self.write_row(&record).await {
            let _ = std::fs::remove_dir(&workdir);
            return Err(err);
        }
        crate::crash::point("create.after_intent");
        let handle = {
            let mut table = self.inner.vms.write().expect("vm table lock");
            if table.closing {
                drop(table);
                let _ = std::fs::remove_dir(&workdir);
                let _ = self.inner.store.delete_vm(&id);
                return Err(ManagerError::ShuttingDown);
            }
            tracing::info!(vm = %id, vm_type = %spec.vm_type, "creating VM");
            let handle = vm::spawn(
                record,
                self.inner.backend.clone(),
                requested_at,
                self.inner.store.clone(),
            );
            table.vms.insert(id, handle.clone());
            handle
        };
        if !request.wait {
            return Ok(handle.info());
        }
        let timeout = request.wait_timeout_ms.map_or_else(
            || Duration::from_secs(self.inner.config.firecracker.boot_timeout_secs + 10),
            Duration::from_millis,
        );
        Ok(handle
            .wait_until(timeout, |r| {
                r.state == VmState::Ready || r.state.is_terminal()
            })
            .await)
    }

    /// Every VM, oldest first.
    pub fn list(&self) -> Vec<VmInfo> {
        let mut vms: Vec<VmInfo> = self
            .inner
            .vms
            .read()
            .expect("vm table lock")
            .vms
            .values()
            .map(VmHandle::info)
            .collect();
        vms.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        vms
    }

    pub fn count(&self) -> usize {
        self.inner.vms.read().expect("vm table lock").vms.len()
    }

    pub fn get(&self, id: &str) -> Result<VmInfo, ManagerError> {
        Ok(self.handle(id)?.info())
    }

    pub async fn op(&self, id: &str, op: VmOp) -> Result<VmInfo, ManagerError> {
        Ok(self.handle(id)?.op(op).await?)
    }

    /// Removes a VM and its directory. Without `force` only a Stopped or Failed VM
    /// may be deleted; with it, a live VM is stopped first.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), ManagerError> {
        let handle = self.handle(id)?;
        let mut state = handle.info().state;
        if !state.is_deletable() {
            if !force {
                return Err(ManagerError::NotDeletable {
                    id: handle.id().clone(),
                    state,
                });
            }
            // A concurrent stop may win the race; either way the VM ends terminal.
            let _ = handle.op(VmOp::Stop).await;
            state = handle
                .wait_until(Duration::from_secs(30), |r| r.state.is_terminal())
                .await
                .state;
            if !state.is_deletable() {
                return Err(ManagerError::NotDeletable {
                    id: handle.id().clone(),
                    state,
                });
            }
        }
        self.inner
            .vms
            .write()
            .expect("vm table lock")
            .vms
            .remove(handle.id());
        let workdir = vms_dir(&self.inner.data_dir).join(handle.id().as_str());
        if let Err(err) = std::fs::remove_dir_all(&workdir) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(vm = %handle.id(), %err, "cannot remove VM directory");
            }
        }
        crate::crash::point("delete.after_files");
        // Last: until the row is gone, a restart would find the VM and finish
        // the cleanup.
        let id = handle.id().clone();
        vm::with_store(&self.inner.store, move |s| s.delete_vm(&id))
            .await
            .map_err(ManagerError::Store)?;
        tracing::info!(vm = %handle.id(), "VM deleted");
        Ok(())
    }

    /// Stores `record` now (off the async threads), failing the caller's request
    /// when the store cannot take it.
    async fn write_row(&self, record: &VmInfo) -> Result<(), ManagerError> {
        let row = vm::row(record).map_err(|e| ManagerError::Record(e.to_string()))?;
        vm::with_store(&self.inner.store, move |s| s.put_vm(&row))
            .await
            .map_err(ManagerError::Store)
    }

    /// Reconciles the stored VM records with what is running, before the API
    /// serves: VMs whose VMM still runs are re-adopted; VMs whose VMM is gone are
    /// recorded Failed; half-created VMs are rolled back; half-stopped ones are
    /// finished. Returns the ids that now have records (their directories are
    /// not orphans).
    pub async fn recover(&self) -> Result<std::collections::HashSet<String>, ManagerError> {
        let rows = vm::with_store(&self.inner.store, |s| s.list_vms())
            .await
            .map_err(ManagerError::Store)?;
        let mut kept = std::collections::HashSet::new();
        for row in rows {
            let mut info: VmInfo = match serde_json::from_str(&row.record) {
                Ok(info) => info,
                Err(err) => {
                    // Perhaps written by a newer tfc: leave the record, its
                    // directory and any VMM it names exactly as they are.
                    tracing::error!(vm = %row.id, %err, "unreadable VM record; leaving the VM untouched and unmanaged");
                    kept.insert(row.id.to_string());
                    continue;
                }
            };
            let workdir = PathBuf::from(&info.workdir);
            let handle = match info.state {
                VmState::Creating => {
                    // Never finished creating: undo it.
                    crate::reaper::end_vmm(&workdir);
                    let _ = std::fs::remove_dir_all(&workdir);
                    let _ = self.inner.store.delete_vm(&row.id);
                    tracing::warn!(vm = %row.id, "rolled back a VM whose creation was interrupted");
                    continue;
                }
                VmState::Stopping => {
                    // The stop was under way: finish it.
                    crate::reaper::end_vmm(&workdir);
                    remove_socket(&workdir);
                    info.state = VmState::Stopped;
                    info.pid = None;
                    info.updated_at_ms = vm::now_ms();
                    info.exit.get_or_insert_with(|| {
                        vm::exit_info(tfc_core::ExitReason {
                            code: None,
                            signal: None,
                        })
                    });
                    self.write_row(&info).await?;
                    vm::terminal(info, self.inner.store.clone())
                }
                state if state.is_terminal() => vm::terminal(info, self.inner.store.clone()),
                _ => vm::adopt(info, self.inner.backend.clone(), self.inner.store.clone()),
            };
            kept.insert(row.id.to_string());
            self.inner
                .vms
                .write()
                .expect("vm table lock")
                .vms
                .insert(row.id.clone(), handle);
        }
        Ok(kept)
    }

    /// Refuses new VMs, then, by `policy`, stops every VM and removes its files,
    /// or lets every VM run on for the next daemon to adopt (records stay).
    pub async fn shutdown(&self, policy: ShutdownPolicy) {
        let handles: Vec<VmHandle> = {
            let mut table = self.inner.vms.write().expect("vm table lock");
            table.closing = true;
            table.vms.values().cloned().collect()
        };
        let mut tasks = tokio::task::JoinSet::new();
        for handle in handles {
            let manager = self.clone();
            tasks.spawn(async move {
                match policy {
                    ShutdownPolicy::LeaveRunning => handle.detach().await,
                    ShutdownPolicy::Stop => {
                        if let Err(err) = manager.delete(handle.id().as_str(), true).await {
                            tracing::warn!(vm = %handle.id(), error = %tfc_core::error_chain(&err), "VM not cleaned up at shutdown");
                        }
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}

fn remove_socket(workdir: &Path) {
    let _ = std::fs::remove_file(workdir.join(tfc_firecracker::process::API_SOCKET));
}
