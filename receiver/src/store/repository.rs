//! The repository: write-once chunks named by blake3, one immutable manifest per
//! snapshot, over a store (backend.rs). [`Repository`] holds the append capability only
//! (what the network service gets); [`Maintainer`] adds the maintain capability (what
//! prune, gc, verify and `undelete` get). Both hold the raw store privately: outside
//! `store/`, objects are read and written as typed records (record.rs). Which store is
//! behind them is decided where they are opened (open.rs), never here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use backup_common::chunk::{self, ChunkError, ChunkId};
use backup_common::durable::Published;
use backup_common::manifest::Manifest;
use chrono::{DateTime, Utc};

use crate::store::backend::{AppendStore, LockGuard, MaintainStore, Swept};
use crate::store::error::{StoreError, StoreErrorKind};
use crate::store::records::trash::{in_trash, Tombstone, Undeleted};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The store could not do or tell what was asked (see [`StoreError::kind`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("chunk {id} is missing from the repository")]
    MissingChunk { id: ChunkId },
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("no snapshot named {0:?}; `backup-receiver snapshots` lists them")]
    NoSuchSnapshot(String),
    #[error("the repository has no snapshots yet")]
    Empty,
    #[error("the repository has no good snapshot: every snapshot is suspect or rejected (`backup-receiver snapshots` lists them; name one by its id with --allow-suspect)")]
    NoGoodSnapshot,
    #[error("snapshot {id} is {why}; name it with --allow-suspect to use it anyway")]
    NotGood { id: String, why: String },
}

/// The repository with the append capability: read, list, put chunks, create metadata.
/// Nothing reachable from it removes, replaces or moves anything.
#[derive(Debug, Clone)]
pub struct Repository {
    store: Arc<dyn AppendStore>,
}

/// The repository with the maintain capability as well (prune, gc, verify, undelete).
/// Never handed to the network service; derefs to the [`Repository`] it extends.
#[derive(Debug, Clone)]
pub struct Maintainer {
    repo: Repository,
    store: Arc<dyn MaintainStore>,
}

impl std::ops::Deref for Maintainer {
    type Target = Repository;
    fn deref(&self) -> &Repository {
        &self.repo
    }
}

impl Maintainer {
    /// Both capabilities over one store.
    pub fn new<S: MaintainStore + 'static>(store: S) -> Self {
        let store = Arc::new(store);
        Maintainer {
            repo: Repository {
                store: store.clone(),
            },
            store,
        }
    }

    /// The append capability alone, for the network service.
    pub fn repository(&self) -> Repository {
        self.repo.clone()
    }

    pub(in crate::store) fn maintain_store(&self) -> &dyn MaintainStore {
        &*self.store
    }

    /// Removes every chunk `keep` rejects whose in-use time is before `cutoff`.
    pub fn sweep(
        &self,
        keep: &dyn Fn(&ChunkId) -> bool,
        cutoff: SystemTime,
        dry_run: bool,
    ) -> Result<Swept, StoreError> {
        self.store.sweep(keep, cutoff, dry_run)
    }

    /// Removes staging of unfinished writes older than `before`; returns how many.
    pub fn sweep_staging(&self, before: SystemTime, dry_run: bool) -> Result<u64, StoreError> {
        self.store.sweep_staging(before, dry_run)
    }

    /// Moves a damaged chunk aside (never deleting it); returns where it went.
    pub fn quarantine(&self, id: &ChunkId) -> Result<String, StoreError> {
        let name = self.store.quarantine(id)?;
        Ok(self
            .store
            .locate(crate::store::backend::Space::Quarantine, &name))
    }

    /// Takes the mark lock (gc's mark, `undelete`, the purge); `None` when `wait` is false
    /// and it is held elsewhere.
    pub fn lock_mark(&self, wait: bool) -> Result<Option<Box<dyn LockGuard>>, StoreError> {
        self.store.lock_mark(wait)
    }
}

impl Repository {
    /// The append capability over `store`.
    pub fn new(store: Arc<dyn AppendStore>) -> Self {
        Repository { store }
    }

    pub(in crate::store) fn store(&self) -> &dyn AppendStore {
        &*self.store
    }

    /// Where the repository is, for messages.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool, StoreError> {
        self.store.has_chunk(id)
    }

    /// The chunks of `ids` the store does not hold, in the order given.
    pub fn missing(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, StoreError> {
        self.store.missing(ids)
    }

    /// Size of the stored form of a chunk, `None` if absent.
    pub fn chunk_size(&self, id: &ChunkId) -> Result<Option<u64>, StoreError> {
        self.store.chunk_size(id)
    }

    /// Every stored chunk and its stored size, one at a time.
    pub fn for_each_chunk(&self, visit: &mut dyn FnMut(ChunkId, u64)) -> Result<(), StoreError> {
        self.store.for_each_chunk(visit)
    }

    /// Bytes the store can still take.
    pub fn free_space(&self) -> Result<u64, StoreError> {
        self.store.free_space()
    }

    /// Stores an already verified chunk payload write-once, in use at `now` (the
    /// receiver's clock; garbage collection's grace period reads it). An existing chunk is
    /// left as it is. Durable under its name after the next [`Repository::barrier`], which
    /// must run before a manifest refers to it.
    pub fn put_chunk_at(
        &self,
        id: &ChunkId,
        zstd_framed: bool,
        payload: &[u8],
        now: SystemTime,
    ) -> Result<Published, StoreError> {
        self.store
            .put_chunk(id, &[&[u8::from(zstd_framed)], payload], now)
    }

    /// As [`Repository::put_chunk_at`], in use now.
    pub fn put_chunk(
        &self,
        id: &ChunkId,
        zstd_framed: bool,
        payload: &[u8],
    ) -> Result<Published, StoreError> {
        self.put_chunk_at(id, zstd_framed, payload, SystemTime::now())
    }

    /// Makes every chunk put so far (by any clone, or a process before this one) durable.
    pub fn barrier(&self) -> Result<(), StoreError> {
        self.store.barrier()
    }

    /// If the chunk exists, marks it in use at `now` (never moving that back) and returns
    /// true. A session that relies on an existing chunk marks it, so garbage collection's
    /// cut-off protects it until the snapshot that references it is committed. An error
    /// means the chunk may not be protected: the caller must not rely on it.
    pub fn touch_chunk(&self, id: &ChunkId, now: SystemTime) -> Result<bool, StoreError> {
        self.store.mark_in_use(id, now)
    }

    /// Reads, decompresses and verifies a chunk.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, RepoError> {
        let stored = self
            .store
            .read_chunk(id)?
            .ok_or(RepoError::MissingChunk { id: *id })?;
        Ok(chunk::decode_stored(*id, &stored)?)
    }

    /// Publishes a manifest under its id. Returns false when that id is taken.
    pub fn publish_manifest(&self, manifest: &Manifest) -> Result<bool, StoreError> {
        Ok(self.create(manifest)? == Published::Created)
    }

    /// Publishes `manifest` under the first free id of `base`, `base-1`, … `base-99`
    /// (create-if-absent, so two commits can never take the same id) and sets its id. An
    /// id the trash still names is not free: its tombstone would hide the new snapshot.
    pub fn publish_snapshot(&self, manifest: &mut Manifest, base: &str) -> Result<(), RepoError> {
        let tombstoned: BTreeSet<String> = self
            .keys::<Tombstone>()?
            .into_iter()
            .map(|k| k.snapshot)
            .collect();
        for n in 0..100 {
            manifest.id = if n == 0 {
                base.to_string()
            } else {
                format!("{base}-{n}")
            };
            if !tombstoned.contains(&manifest.id) && self.publish_manifest(manifest)? {
                return Ok(());
            }
        }
        Err(StoreError::new(
            StoreErrorKind::AlreadyExists,
            self.store
                .locate(crate::store::backend::Space::Snapshots, base),
        )
        .with_detail("no free snapshot id among 100 suffixes")
        .into())
    }

    /// The snapshots in the trash, each with its prune time (see records/trash.rs).
    pub fn trashed(&self) -> Result<BTreeMap<String, DateTime<Utc>>, StoreError> {
        Ok(in_trash(
            &self.keys::<Tombstone>()?,
            &self.keys::<Undeleted>()?,
        ))
    }

    /// Snapshot ids, oldest first (ids sort by the receiver's commit time); a snapshot in
    /// the trash is not among them.
    pub fn snapshot_ids(&self) -> Result<Vec<String>, StoreError> {
        let trashed = self.trashed()?;
        Ok(self
            .keys::<Manifest>()?
            .into_iter()
            .filter(|id| !trashed.contains_key(id))
            .collect())
    }

    /// Every stored manifest's id, in the trash or not (what garbage collection keeps).
    pub fn stored_snapshot_ids(&self) -> Result<Vec<String>, StoreError> {
        self.keys::<Manifest>()
    }

    /// The manifest of snapshot `id`; one in the trash is not found.
    pub fn load_manifest(&self, id: &str) -> Result<Manifest, RepoError> {
        Self::check_name(id)?;
        if self.trashed()?.contains_key(id) {
            return Err(RepoError::NoSuchSnapshot(id.to_string()));
        }
        self.load_stored_manifest(id)
    }

    /// The manifest stored under `id`, in the trash or not.
    pub fn load_stored_manifest(&self, id: &str) -> Result<Manifest, RepoError> {
        Self::check_name(id)?;
        self.read::<Manifest>(&id.to_string())?
            .ok_or_else(|| RepoError::NoSuchSnapshot(id.to_string()))
    }

    /// Calls `visit` with every manifest, oldest first, one at a time (never all in memory),
    /// until it returns false. A manifest that vanishes meanwhile (a concurrent purge
    /// removed it) is skipped; any other error stops.
    pub fn for_each_manifest(
        &self,
        mut visit: impl FnMut(Manifest) -> bool,
    ) -> Result<(), RepoError> {
        self.try_for_each_manifest(|m| Ok::<_, RepoError>(visit(m)))
    }

    /// As [`Repository::for_each_manifest`], newest first.
    pub fn for_each_manifest_newest_first(
        &self,
        mut visit: impl FnMut(Manifest) -> bool,
    ) -> Result<(), RepoError> {
        self.try_for_each_manifest_newest_first(|m| Ok::<_, RepoError>(visit(m)))
    }

    /// As [`Repository::for_each_manifest`], with a `visit` that can fail: its error stops
    /// the walk and is returned.
    pub fn try_for_each_manifest<E: From<RepoError>>(
        &self,
        visit: impl FnMut(Manifest) -> Result<bool, E>,
    ) -> Result<(), E> {
        let ids = self.snapshot_ids().map_err(RepoError::from)?;
        self.visit_manifests(ids, visit)
    }

    /// As [`Repository::try_for_each_manifest`], newest first.
    pub fn try_for_each_manifest_newest_first<E: From<RepoError>>(
        &self,
        visit: impl FnMut(Manifest) -> Result<bool, E>,
    ) -> Result<(), E> {
        let mut ids = self.snapshot_ids().map_err(RepoError::from)?;
        ids.reverse();
        self.visit_manifests(ids, visit)
    }

    fn visit_manifests<E: From<RepoError>>(
        &self,
        ids: Vec<String>,
        mut visit: impl FnMut(Manifest) -> Result<bool, E>,
    ) -> Result<(), E> {
        for id in ids {
            match self.load_stored_manifest(&id) {
                Ok(m) => {
                    if !visit(m)? {
                        break;
                    }
                }
                Err(RepoError::NoSuchSnapshot(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    pub(crate) fn check_name(name: &str) -> Result<(), RepoError> {
        if name.contains(['/', '\\', '\0']) || name.starts_with('.') {
            return Err(RepoError::NoSuchSnapshot(name.to_string()));
        }
        Ok(())
    }
}
