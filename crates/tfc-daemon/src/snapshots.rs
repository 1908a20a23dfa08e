//! The snapshot catalog: one directory per snapshot under `<data_dir>/snapshots`
//! (state file, memory file, `manifest.json`) and one store row per snapshot.
//!
//! Invariants: a row is written (state `creating`) before its directory is
//! filled and marked `ready` only once the files and manifest are complete, so a
//! daemon that dies in between finds a `creating` row and removes it; a
//! directory no row claims is an orphan and is removed at start. A snapshot
//! that a diff depends on (its parent) or that is a VM type's template is
//! deleted only with `force`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tfc_api::{
    CpuInfo, FileDigest, SnapshotInfo, SnapshotKind, SnapshotManifest, SnapshotState, VmInfo,
};
use tfc_core::{SnapshotId, VmSpec};
use tfc_store::{AnyStore, SnapshotRow, Store};

use crate::vm::{now_ms, with_store};

/// File names inside a snapshot's directory.
pub const STATE_FILE: &str = "vmstate";
pub const MEMORY_FILE: &str = "memory";
/// A diff's own memory file: only the pages written since its parent, at their
/// offsets (a sparse file). Merged onto the parent's memory into
/// [`MEMORY_FILE`] when first restored.
pub const DIFF_MEMORY_FILE: &str = "memory.diff";
pub const MANIFEST_FILE: &str = "manifest.json";

/// Why a catalog request was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("no snapshot with id or name {0:?}")]
    NotFound(String),
    #[error("a snapshot named {0:?} already exists")]
    NameTaken(String),
    #[error("invalid snapshot name")]
    BadName(#[source] tfc_core::IdError),
    #[error("snapshot name {0:?} starts with `snap-`, which is for snapshot ids")]
    NameLikeId(String),
    #[error("snapshot {id} has dependents ({dependents}); delete them first or delete with force")]
    HasDependents { id: String, dependents: String },
    #[error("snapshot {id} is the template of VM type {vm_type}; delete with force (restores of that type then boot until the template is rebuilt)")]
    IsTemplate { id: String, vm_type: String },
    #[error("snapshot {0} is still being written")]
    NotReady(String),
    #[error("snapshot {0} is being restored; try again once the restore is done")]
    InUse(String),
    #[error("cannot restore snapshot {id}: {reason}")]
    Refused { id: String, reason: String },
    #[error("snapshot file {path}: {what}")]
    Files { path: PathBuf, what: String },
    #[error("cannot write snapshot directory {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the state store refused the change")]
    Store(#[source] tfc_store::StoreError),
}

/// The catalog.
#[derive(Debug)]
pub struct Catalog {
    dir: PathBuf,
    store: Arc<AnyStore>,
    entries: Mutex<BTreeMap<SnapshotId, SnapshotInfo>>,
    /// Serialises merges of diff memory files (a merge writes a large file once).
    merging: tokio::sync::Mutex<()>,
    /// Held by whoever adds or removes snapshots (a whole snapshot, from its
    /// intent to its `ready` row, or a delete), so a diff's parent cannot go
    /// while the diff is taken, and two snapshots of one VM cannot interleave
    /// (a diff is relative to the snapshot before it).
    writer: tokio::sync::Mutex<()>,
    /// Restores under way per snapshot id; a snapshot in use is not deleted.
    in_use: Mutex<BTreeMap<String, usize>>,
}

/// A restore's hold on a snapshot; released when dropped.
#[derive(Debug)]
pub struct InUse<'a> {
    catalog: &'a Catalog,
    id: String,
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        let mut in_use = self.catalog.in_use.lock().expect("catalog lock");
        if let Some(n) = in_use.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                in_use.remove(&self.id);
            }
        }
    }
}

/// Directory of all snapshots.
pub fn snapshots_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshots")
}

fn random_id() -> SnapshotId {
    let mut bytes = [0u8; 6];
    let _ = getrandom::getrandom(&mut bytes);
    SnapshotId::from_random(bytes)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CatalogError + '_ {
    move |source| CatalogError::Io {
        path: path.to_owned(),
        source,
    }
}

fn row(info: &SnapshotInfo) -> SnapshotRow {
    SnapshotRow {
        id: SnapshotId::new(info.id.clone()).expect("catalog ids are valid"),
        record: serde_json::to_string(info).expect("snapshot records serialize"),
        updated_at_ms: now_ms(),
    }
}

/// The host facts a restore is checked against.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub vmm_version: String,
    pub cpu: Option<CpuInfo>,
}

/// What a new snapshot is of.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    pub name: Option<String>,
    pub kind: SnapshotKind,
    pub parent: Option<String>,
    pub vm: VmInfo,
    pub template_for: Option<String>,
}

impl Catalog {
    /// An empty catalog over `<data_dir>/snapshots`; [`Catalog::recover`]
    /// loads what the store holds.
    pub fn new(data_dir: &Path, store: Arc<AnyStore>) -> Self {
        Self {
            dir: snapshots_dir(data_dir),
            store,
            entries: Mutex::default(),
            merging: tokio::sync::Mutex::new(()),
            writer: tokio::sync::Mutex::new(()),
            in_use: Mutex::default(),
        }
    }

    /// Excludes other snapshot writers and deletes while held.
    pub async fn writer(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writer.lock().await
    }

    /// The snapshot with this id or name, held against deletion until the
    /// returned guard drops.
    pub fn use_snapshot(
        &self,
        id_or_name: &str,
    ) -> Result<(SnapshotInfo, InUse<'_>), CatalogError> {
        let entries = self.entries();
        let info = find(&entries, id_or_name)?;
        *self
            .in_use
            .lock()
            .expect("catalog lock")
            .entry(info.id.clone())
            .or_default() += 1;
        drop(entries);
        let guard = InUse {
            catalog: self,
            id: info.id.clone(),
        };
        Ok((info, guard))
    }

    /// Loads the catalog from the store, finishing what a dead daemon left:
    /// `creating` snapshots and directories no row claims are removed.
    pub async fn recover(&self) -> Result<(), CatalogError> {
        let dir = &self.dir;
        let store = &self.store;
        private_dir(dir).map_err(io_err(dir))?;
        let rows = with_store(store, |s| s.list_snapshots())
            .await
            .map_err(CatalogError::Store)?;
        let mut entries = BTreeMap::new();
        for r in rows {
            match serde_json::from_str::<SnapshotInfo>(&r.record) {
                Ok(info) if info.state == SnapshotState::Ready => {
                    entries.insert(r.id, info);
                }
                Ok(info) => {
                    tracing::warn!(snapshot = %info.id, "removing a snapshot whose creation was interrupted");
                    let _ = std::fs::remove_dir_all(dir.join(&info.id));
                    let id = r.id.clone();
                    with_store(store, move |s| s.delete_snapshot(&id))
                        .await
                        .map_err(CatalogError::Store)?;
                }
                Err(err) => {
                    // Perhaps from a newer tfc: keep its row and files.
                    tracing::error!(snapshot = %r.id, %err, "unreadable snapshot record; leaving it untouched");
                    entries.insert(
                        r.id.clone(),
                        SnapshotInfo {
                            id: r.id.to_string(),
                            name: None,
                            kind: SnapshotKind::Full,
                            state: SnapshotState::Creating,
                            parent: None,
                            source_vm: String::new(),
                            vm_type: String::new(),
                            template_for: None,
                            created_at_ms: 0,
                            size_bytes: 0,
                            dir: dir.join(r.id.as_str()).display().to_string(),
                            manifest: None,
                            timing: None,
                        },
                    );
                }
            }
        }
        if let Ok(listing) = std::fs::read_dir(dir) {
            for entry in listing.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let claimed =
                    SnapshotId::new(name.as_str()).is_ok_and(|id| entries.contains_key(&id));
                if !claimed {
                    tracing::warn!(path = %entry.path().display(), "removing an orphaned snapshot directory");
                    let _ = std::fs::remove_dir_all(entry.path());
                    continue;
                }
                // A merge a dead daemon left half-written (temporary files
                // start with a dot; see `memfile::merge_diff`).
                for file in std::fs::read_dir(entry.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if file.file_name().to_string_lossy().starts_with('.') {
                        tracing::warn!(path = %file.path().display(), "removing an unfinished merge");
                        let _ = std::fs::remove_file(file.path());
                    }
                }
            }
        }
        *self.entries() = entries;
        Ok(())
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<SnapshotId, SnapshotInfo>> {
        self.entries.lock().expect("catalog lock")
    }

    /// Every snapshot, oldest first.
    pub fn list(&self) -> Vec<SnapshotInfo> {
        let mut all: Vec<SnapshotInfo> = self.entries().values().cloned().collect();
        all.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        all
    }

    /// The snapshot with this id or name.
    pub fn get(&self, id_or_name: &str) -> Result<SnapshotInfo, CatalogError> {
        find(&self.entries(), id_or_name)
    }

    /// The newest ready template snapshot of `vm_type`.
    pub fn template(&self, vm_type: &str) -> Option<SnapshotInfo> {
        self.entries()
            .values()
            .filter(|s| {
                s.state == SnapshotState::Ready && s.template_for.as_deref() == Some(vm_type)
            })
            .max_by_key(|s| (s.created_at_ms, s.id.clone()))
            .cloned()
    }

    fn dependents(&self, id: &str) -> Vec<String> {
        self.entries()
            .values()
            .filter(|s| s.parent.as_deref() == Some(id))
            .map(|s| s.id.clone())
            .collect()
    }

    /// Records the intent to take a snapshot: a `creating` row and an empty
    /// directory. Returns the record to fill in.
    pub async fn begin(&self, new: NewSnapshot) -> Result<SnapshotInfo, CatalogError> {
        if let Some(name) = &new.name {
            SnapshotId::new(name.as_str()).map_err(CatalogError::BadName)?;
            if name.starts_with("snap-") {
                return Err(CatalogError::NameLikeId(name.clone()));
            }
        }
        let id = {
            let mut entries = self.entries();
            if let Some(name) = &new.name {
                if entries.values().any(|s| s.name.as_ref() == Some(name)) {
                    return Err(CatalogError::NameTaken(name.clone()));
                }
            }
            let mut id = random_id();
            while entries.contains_key(&id) {
                id = random_id();
            }
            let info = SnapshotInfo {
                id: id.to_string(),
                name: new.name,
                kind: new.kind,
                state: SnapshotState::Creating,
                parent: new.parent,
                source_vm: new.vm.id.clone(),
                vm_type: new.vm.spec.vm_type.to_string(),
                template_for: new.template_for,
                created_at_ms: now_ms(),
                size_bytes: 0,
                dir: self.dir.join(id.as_str()).display().to_string(),
                manifest: None,
                timing: None,
            };
            // Reserve id and name before the slow part.
            entries.insert(id.clone(), info);
            id
        };
        let info = self.get(id.as_str())?;
        let dir = PathBuf::from(&info.dir);
        let written = async {
            private_dir(&self.dir).map_err(io_err(&self.dir))?;
            std::fs::create_dir(&dir).map_err(io_err(&dir))?;
            let r = row(&info);
            with_store(&self.store, move |s| s.put_snapshot(&r))
                .await
                .map_err(CatalogError::Store)
        }
        .await;
        if let Err(err) = written {
            self.entries().remove(&id);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(err);
        }
        Ok(info)
    }

    /// Completes a snapshot whose files are written: manifest file, sizes,
    /// `ready` row.
    pub async fn finish(&self, mut info: SnapshotInfo) -> Result<SnapshotInfo, CatalogError> {
        let dir = PathBuf::from(&info.dir);
        info.size_bytes = dir_data_bytes(&dir);
        info.state = SnapshotState::Ready;
        let manifest = serde_json::to_vec_pretty(&info).expect("snapshot records serialize");
        tfc_host::assets::write_atomic(&dir.join(MANIFEST_FILE), &manifest)
            .map_err(io_err(&dir))?;
        let r = row(&info);
        with_store(&self.store, move |s| s.put_snapshot(&r))
            .await
            .map_err(CatalogError::Store)?;
        let id = SnapshotId::new(info.id.clone()).expect("catalog ids are valid");
        self.entries().insert(id, info.clone());
        Ok(info)
    }

    /// Undoes [`Catalog::begin`] after a failed snapshot.
    pub async fn abort(&self, info: &SnapshotInfo) {
        let _ = std::fs::remove_dir_all(&info.dir);
        let id = SnapshotId::new(info.id.clone()).expect("catalog ids are valid");
        let key = id.clone();
        if let Err(err) = with_store(&self.store, move |s| s.delete_snapshot(&key)).await {
            tracing::error!(snapshot = %id, error = %tfc_core::error_chain(&err), "cannot remove the row of a failed snapshot; the next start removes it");
        }
        self.entries().remove(&id);
    }

    /// Deletes a snapshot. Without `force`, one that a diff depends on or that
    /// is a template is refused. With it, dependent diffs are first merged so
    /// they no longer need it.
    pub async fn delete(&self, id_or_name: &str, force: bool) -> Result<(), CatalogError> {
        let _writer = self.writer().await;
        let info = self.get(id_or_name)?;
        if info.state != SnapshotState::Ready {
            return Err(CatalogError::NotReady(info.id));
        }
        let dependents = self.dependents(&info.id);
        if !force {
            if !dependents.is_empty() {
                return Err(CatalogError::HasDependents {
                    id: info.id,
                    dependents: dependents.join(", "),
                });
            }
            if let Some(vm_type) = info.template_for.clone() {
                return Err(CatalogError::IsTemplate {
                    id: info.id,
                    vm_type,
                });
            }
        }
        if self
            .in_use
            .lock()
            .expect("catalog lock")
            .contains_key(&info.id)
        {
            return Err(CatalogError::InUse(info.id));
        }
        for dependent in &dependents {
            let dep = self.get(dependent)?;
            self.memory_for_restore(&dep).await?;
            let mut dep = dep;
            dep.parent = None;
            self.finish(dep).await?;
        }
        let id = SnapshotId::new(info.id.clone()).expect("catalog ids are valid");
        {
            // Checked and removed under one lock with `use_snapshot`, so a
            // restore either holds the snapshot or does not find it.
            let mut entries = self.entries();
            if self
                .in_use
                .lock()
                .expect("catalog lock")
                .contains_key(&info.id)
            {
                return Err(CatalogError::InUse(info.id));
            }
            entries.remove(&id);
        }
        let key = id.clone();
        // The row goes first: a crash after it leaves an orphan directory, which
        // the next start removes; the other order would leave a row whose files
        // are gone.
        if let Err(err) = with_store(&self.store, move |s| s.delete_snapshot(&key)).await {
            self.entries().insert(id, info);
            return Err(CatalogError::Store(err));
        }
        crate::crash::point("snapshot_delete.after_row");
        let dir = PathBuf::from(&info.dir);
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir))
            .await
            .expect("remove does not panic");
        if let Err(err) = removed {
            // The snapshot is gone from the catalog; the next start removes
            // the directory as an orphan.
            tracing::warn!(snapshot = %info.id, %err, "cannot remove the snapshot's directory yet");
        }
        tracing::info!(snapshot = %info.id, "snapshot deleted");
        Ok(())
    }

    /// The full memory file to restore `info` from. A diff's memory is merged
    /// onto its parent's (recursively) the first time and kept.
    pub async fn memory_for_restore(&self, info: &SnapshotInfo) -> Result<PathBuf, CatalogError> {
        let dir = PathBuf::from(&info.dir);
        let full = dir.join(MEMORY_FILE);
        if info.kind == SnapshotKind::Full || full.is_file() {
            return Ok(full);
        }
        let _merging = self.merging.lock().await;
        if full.is_file() {
            return Ok(full);
        }
        // The chain from this diff up to its full ancestor.
        let mut diffs = vec![dir.join(DIFF_MEMORY_FILE)];
        let mut parent = info.parent.clone();
        let base = loop {
            let Some(id) = parent else {
                return Err(CatalogError::Refused {
                    id: info.id.clone(),
                    reason: "its diff chain has no full snapshot at its root".to_owned(),
                });
            };
            let p = self.get(&id).map_err(|_| CatalogError::Refused {
                id: info.id.clone(),
                reason: format!("its parent snapshot {id} is gone"),
            })?;
            let p_dir = PathBuf::from(&p.dir);
            let p_full = p_dir.join(MEMORY_FILE);
            if p.kind == SnapshotKind::Full || p_full.is_file() {
                break p_full;
            }
            diffs.push(p_dir.join(DIFF_MEMORY_FILE));
            parent = p.parent.clone();
        };
        diffs.reverse();
        let out = full.clone();
        let merged = tokio::task::spawn_blocking(move || {
            let refs: Vec<&Path> = diffs.iter().map(PathBuf::as_path).collect();
            tfc_firecracker::memfile::merge_diff(&base, &refs, &out)
        })
        .await
        .expect("merge task does not panic");
        let stats = merged.map_err(|err| CatalogError::Files {
            path: full.clone(),
            what: format!("cannot be merged from the diff chain: {err}"),
        })?;
        tracing::info!(snapshot = %info.id, bytes = stats.bytes_copied_from_diffs, "merged diff snapshot onto its parent");
        Ok(full)
    }

    /// Checks that `info` can be restored on this host: ready, its files whole,
    /// and made by the same VMM version, from the same kernel and rootfs, on a
    /// compatible CPU.
    pub fn verify(&self, info: &SnapshotInfo, host: &HostFacts) -> Result<(), CatalogError> {
        let refuse = |reason: String| CatalogError::Refused {
            id: info.id.clone(),
            reason,
        };
        if info.state != SnapshotState::Ready {
            return Err(CatalogError::NotReady(info.id.clone()));
        }
        let manifest = info
            .manifest
            .as_ref()
            .ok_or_else(|| refuse("it has no manifest".to_owned()))?;
        if manifest.firecracker_version != host.vmm_version {
            return Err(refuse(format!(
                "it was taken by {}, and this daemon runs {}",
                manifest.firecracker_version, host.vmm_version
            )));
        }
        for (what, file) in [("kernel", &manifest.kernel), ("rootfs", &manifest.rootfs)] {
            match tfc_host::digest::file_sha256(Path::new(&file.path)) {
                Ok(digest) if digest == file.sha256 => {}
                Ok(_) => {
                    return Err(refuse(format!(
                        "its {what} {} has changed since it was taken",
                        file.path
                    )))
                }
                Err(err) => {
                    return Err(refuse(format!(
                        "its {what} {} cannot be read: {err}",
                        file.path
                    )))
                }
            }
        }
        match (&host.cpu, &manifest.cpu) {
            (Some(here), taken_on) => taken_on
                .compatibility(here)
                .map_err(|e| refuse(e.to_string()))?,
            (None, _) => return Err(refuse("this host's CPU cannot be identified".to_owned())),
        }
        let dir = Path::new(&info.dir);
        let state = dir.join(&manifest.state_file);
        check_len(&state, manifest.state_bytes)?;
        // The memory: a full snapshot's own file, or, for a diff not merged
        // yet, every file of its chain down to the full snapshot at its root.
        let mut link = info.clone();
        loop {
            let dir = PathBuf::from(&link.dir);
            let m = link
                .manifest
                .as_ref()
                .ok_or_else(|| refuse(format!("snapshot {} has no manifest", link.id)))?;
            if link.kind == SnapshotKind::Full {
                check_len(&dir.join(&m.memory_file), m.memory_bytes)?;
                return Ok(());
            }
            if dir.join(MEMORY_FILE).is_file() {
                return Ok(());
            }
            check_len(&dir.join(DIFF_MEMORY_FILE), m.memory_bytes)?;
            let parent = link.parent.clone().ok_or_else(|| {
                refuse("its diff chain has no full snapshot at its root".to_owned())
            })?;
            link = self
                .get(&parent)
                .map_err(|_| refuse(format!("its parent snapshot {parent} is gone")))?;
        }
    }
}

fn find(
    entries: &BTreeMap<SnapshotId, SnapshotInfo>,
    id_or_name: &str,
) -> Result<SnapshotInfo, CatalogError> {
    if let Ok(id) = SnapshotId::new(id_or_name) {
        if let Some(info) = entries.get(&id) {
            return Ok(info.clone());
        }
    }
    entries
        .values()
        .find(|s| s.name.as_deref() == Some(id_or_name))
        .cloned()
        .ok_or_else(|| CatalogError::NotFound(id_or_name.to_owned()))
}

/// Creates `dir` (and missing parents) readable by this user only: snapshots
/// hold guest memory.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Makes the snapshot's files readable by this user only and durable before
/// its row says `ready` (the VMM writes them with its own mode and no sync).
pub fn seal_files(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        std::fs::File::open(&path)?.sync_all()?;
    }
    std::fs::File::open(dir)?.sync_all()
}

fn check_len(path: &Path, expected: u64) -> Result<(), CatalogError> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() == expected => Ok(()),
        Ok(m) => Err(CatalogError::Files {
            path: path.to_owned(),
            what: format!(
                "is {} bytes, the manifest says {expected}: truncated or replaced",
                m.len()
            ),
        }),
        Err(err) => Err(CatalogError::Files {
            path: path.to_owned(),
            what: format!("cannot be read: {err}"),
        }),
    }
}

/// Bytes the files of `dir` occupy (allocated blocks, so sparse diffs count
/// only their data).
fn dir_data_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|listing| {
            listing
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// Digest of everything a template's snapshot is built from; equal digests
/// mean a rebuild would make the same snapshot.
pub fn template_inputs(vmm_version: &str, kernel: &str, rootfs: &str, spec: &VmSpec) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let spec = serde_json::to_string(&(
        spec.vcpus,
        spec.memory_mib,
        &spec.boot_args,
        &spec.readiness,
        spec.diff_snapshots,
        spec.vsock,
    ))
    .expect("spec serializes");
    for part in [vmm_version, kernel, rootfs, spec.as_str()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// The manifest of a snapshot of `vm` just written into `dir`.
pub fn manifest(
    vm: &VmInfo,
    host: &HostFacts,
    kind: SnapshotKind,
    dir: &Path,
) -> Result<SnapshotManifest, CatalogError> {
    let spec = &vm.spec;
    let digest = |path: &Path| -> Result<FileDigest, CatalogError> {
        let sha256 = tfc_host::digest::file_sha256(path).map_err(|err| CatalogError::Files {
            path: path.to_owned(),
            what: format!("cannot be hashed: {err}"),
        })?;
        Ok(FileDigest {
            path: path.display().to_string(),
            sha256,
        })
    };
    let kernel = digest(&spec.kernel)?;
    let rootfs = digest(&spec.rootfs)?;
    let memory_file = match kind {
        SnapshotKind::Full => MEMORY_FILE,
        SnapshotKind::Diff => DIFF_MEMORY_FILE,
    };
    let len = |name: &str| -> Result<u64, CatalogError> {
        let path = dir.join(name);
        std::fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|err| CatalogError::Files {
                path,
                what: format!("was not written: {err}"),
            })
    };
    let mut devices = vec![tfc_api::SnapshotDevice::Drive {
        id: tfc_firecracker::vm_config::ROOT_DRIVE_ID.to_owned(),
        path_on_host: tfc_firecracker::vm_config::ROOTFS_LINK.to_owned(),
        read_only: true,
        root: true,
    }];
    if spec.vsock {
        devices.push(tfc_api::SnapshotDevice::Vsock {
            guest_cid: tfc_firecracker::vm_config::GUEST_CID,
            uds_path: tfc_firecracker::vm_config::VSOCK_SOCKET.to_owned(),
        });
    }
    if spec.network.is_some() {
        use tfc_core::net::guest;
        devices.push(tfc_api::SnapshotDevice::Network {
            iface_id: tfc_firecracker::vm_config::NET_IFACE_ID.to_owned(),
            host_dev_name: guest::TAP_NAME.to_owned(),
            guest_mac: guest::mac_string(guest::GUEST_MAC),
        });
    }
    let cpu = host.cpu.clone().ok_or_else(|| CatalogError::Files {
        path: PathBuf::from("/proc/cpuinfo"),
        what: "does not identify this host's CPU".to_owned(),
    })?;
    Ok(SnapshotManifest {
        inputs: template_inputs(&host.vmm_version, &kernel.sha256, &rootfs.sha256, spec),
        firecracker_version: host.vmm_version.clone(),
        kernel,
        rootfs,
        spec: spec.clone(),
        devices,
        cpu,
        state_file: STATE_FILE.to_owned(),
        memory_file: memory_file.to_owned(),
        state_bytes: len(STATE_FILE)?,
        memory_bytes: len(memory_file)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tfc_store::MemoryStore;

    fn catalog(data_dir: &Path) -> Catalog {
        Catalog::new(data_dir, Arc::new(AnyStore::Memory(MemoryStore::new())))
    }

    fn record(catalog: &Catalog, state: SnapshotState, kind: SnapshotKind) -> SnapshotInfo {
        let id = random_id();
        let dir = catalog.dir.join(id.as_str());
        std::fs::create_dir_all(&dir).unwrap();
        SnapshotInfo {
            id: id.to_string(),
            name: None,
            kind,
            state,
            parent: None,
            source_vm: "vm-0123456789ab".to_owned(),
            vm_type: "default".to_owned(),
            template_for: None,
            created_at_ms: 1,
            size_bytes: 0,
            dir: dir.display().to_string(),
            manifest: None,
            timing: None,
        }
    }

    fn put(catalog: &Catalog, info: &SnapshotInfo) {
        catalog.store.put_snapshot(&row(info)).unwrap();
    }

    #[tokio::test]
    async fn recover_finishes_what_a_dead_daemon_left() {
        let data = tempfile::tempdir().unwrap();
        let catalog = catalog(data.path());
        let ready = record(&catalog, SnapshotState::Ready, SnapshotKind::Full);
        put(&catalog, &ready);
        let ready_dir = PathBuf::from(&ready.dir);
        std::fs::write(ready_dir.join(MEMORY_FILE), b"m").unwrap();
        std::fs::write(ready_dir.join(".memory.merging"), b"half").unwrap();
        let creating = record(&catalog, SnapshotState::Creating, SnapshotKind::Full);
        put(&catalog, &creating);
        // A record this daemon cannot read (from a newer tfc, say).
        let unreadable = random_id();
        let unreadable_dir = catalog.dir.join(unreadable.as_str());
        std::fs::create_dir_all(&unreadable_dir).unwrap();
        catalog
            .store
            .put_snapshot(&SnapshotRow {
                id: unreadable.clone(),
                record: "{\"from\": \"the future\"}".to_owned(),
                updated_at_ms: 1,
            })
            .unwrap();
        let orphan = catalog.dir.join(random_id().as_str());
        std::fs::create_dir_all(&orphan).unwrap();
        let junk = catalog.dir.join("not-a-snapshot-id");
        std::fs::create_dir_all(&junk).unwrap();

        catalog.recover().await.unwrap();

        assert_eq!(catalog.get(&ready.id).unwrap(), ready);
        assert!(ready_dir.join(MEMORY_FILE).is_file());
        assert!(
            !ready_dir.join(".memory.merging").exists(),
            "half merge left"
        );
        assert!(matches!(
            catalog.get(&creating.id),
            Err(CatalogError::NotFound(_))
        ));
        assert!(!Path::new(&creating.dir).exists());
        let creating_id = SnapshotId::new(creating.id.clone()).unwrap();
        assert_eq!(catalog.store.get_snapshot(&creating_id).unwrap(), None);
        // The unreadable one is kept, files and row, but never restorable.
        let kept = catalog.get(unreadable.as_str()).unwrap();
        assert_eq!(kept.state, SnapshotState::Creating);
        assert!(unreadable_dir.is_dir());
        assert!(catalog.store.get_snapshot(&unreadable).unwrap().is_some());
        assert!(matches!(
            catalog.delete(unreadable.as_str(), true).await,
            Err(CatalogError::NotReady(_))
        ));
        assert!(!orphan.exists() && !junk.exists(), "orphans left");
    }

    #[tokio::test]
    async fn a_snapshot_in_use_is_not_deleted_until_released() {
        let data = tempfile::tempdir().unwrap();
        let catalog = catalog(data.path());
        let ready = record(&catalog, SnapshotState::Ready, SnapshotKind::Full);
        put(&catalog, &ready);
        catalog.recover().await.unwrap();
        let (info, guard) = catalog.use_snapshot(&ready.id).unwrap();
        assert_eq!(info.id, ready.id);
        assert!(matches!(
            catalog.delete(&ready.id, true).await,
            Err(CatalogError::InUse(id)) if id == ready.id
        ));
        assert!(Path::new(&ready.dir).is_dir());
        drop(guard);
        catalog.delete(&ready.id, false).await.unwrap();
        assert!(!Path::new(&ready.dir).exists());
        let id = SnapshotId::new(ready.id.clone()).unwrap();
        assert_eq!(catalog.store.get_snapshot(&id).unwrap(), None);
    }

    #[tokio::test]
    async fn a_diff_without_its_full_ancestor_is_refused_for_restore() {
        let data = tempfile::tempdir().unwrap();
        let catalog = catalog(data.path());
        let rootless = record(&catalog, SnapshotState::Ready, SnapshotKind::Diff);
        let mut orphaned = record(&catalog, SnapshotState::Ready, SnapshotKind::Diff);
        orphaned.parent = Some(random_id().to_string());
        for info in [&rootless, &orphaned] {
            put(&catalog, info);
        }
        catalog.recover().await.unwrap();
        let refused = |result| match result {
            Err(CatalogError::Refused { reason, .. }) => reason,
            other => panic!("not refused: {other:?}"),
        };
        let reason = refused(catalog.memory_for_restore(&rootless).await);
        assert!(reason.contains("no full snapshot at its root"), "{reason}");
        let reason = refused(catalog.memory_for_restore(&orphaned).await);
        assert!(reason.contains("is gone"), "{reason}");
        // Nothing was written in their directories.
        for info in [&rootless, &orphaned] {
            assert!(!Path::new(&info.dir).join(MEMORY_FILE).exists());
        }
    }
}
