//! The repository: write-once chunks named by blake3, one immutable manifest per
//! snapshot, over a store (backend.rs). [`Repository`] holds the append capability only
//! (what the network service gets); [`Maintainer`] adds the maintain capability (what
//! prune, gc, verify and `undelete` get). Where things are on disk is the file store's
//! business (fs.rs); the audit log is not in the repository (monitoring/audit.rs).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use backup_common::chunk::{self, ChunkError, ChunkId};
use backup_common::durable::Published;
use backup_common::manifest::{Manifest, READABLE_FORMATS};

use crate::store::backend::{AppendStore, MaintainStore, Space};
use crate::store::fs::{FsStore, MARKER};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{path} is not a backup repository (no {MARKER}); run `backup-receiver serve` once to create it")]
    NotARepository { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("chunk {id} is missing from the repository")]
    MissingChunk { id: ChunkId },
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("manifest {path}: {message}")]
    BadManifest { path: PathBuf, message: String },
    #[error("no snapshot named {0:?}; `backup-receiver snapshots` lists them")]
    NoSuchSnapshot(String),
    #[error("the repository has no snapshots yet")]
    Empty,
    #[error("the repository has no good snapshot: every snapshot is suspect or rejected (`backup-receiver snapshots` lists them; name one by its id with --allow-suspect)")]
    NoGoodSnapshot,
    #[error("snapshot {id} is {why}; name it with --allow-suspect to use it anyway")]
    NotGood { id: String, why: String },
}

/// The `<name>` of every `<name>.json` among `names`, sorted (snapshot ids, verdict ids).
pub(crate) fn json_names(names: Vec<String>) -> Vec<String> {
    let mut ids: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_suffix(".json"))
        .map(str::to_string)
        .collect();
    ids.sort();
    ids
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

    /// Opens an existing file-system repository for maintenance.
    pub fn open(root: &Path) -> Result<Self, RepoError> {
        Ok(Self::new(FsStore::open(root)?))
    }

    /// Opens the file-system repository at `root`, creating an empty one if there is none.
    pub fn open_or_init(root: &Path) -> Result<Self, RepoError> {
        Ok(Self::new(FsStore::open_or_init(root)?))
    }

    /// The append capability alone, for the network service.
    pub fn repository(&self) -> Repository {
        self.repo.clone()
    }

    pub fn maintain_store(&self) -> &dyn MaintainStore {
        &*self.store
    }
}

impl Repository {
    /// The append capability over `store`.
    pub fn new(store: Arc<dyn AppendStore>) -> Self {
        Repository { store }
    }

    /// Opens an existing file-system repository.
    pub fn open(root: &Path) -> Result<Self, RepoError> {
        Ok(Repository {
            store: Arc::new(FsStore::open(root)?),
        })
    }

    /// Opens the file-system repository at `root`, creating an empty one if there is none.
    pub fn open_or_init(root: &Path) -> Result<Self, RepoError> {
        Ok(Repository {
            store: Arc::new(FsStore::open_or_init(root)?),
        })
    }

    pub fn store(&self) -> &dyn AppendStore {
        &*self.store
    }

    /// Where the repository is, for messages.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        self.store.has_chunk(id)
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
    ) -> Result<Published, RepoError> {
        self.store
            .put_chunk(id, &[&[u8::from(zstd_framed)], payload], now)
    }

    /// As [`Repository::put_chunk_at`], in use now.
    pub fn put_chunk(
        &self,
        id: &ChunkId,
        zstd_framed: bool,
        payload: &[u8],
    ) -> Result<Published, RepoError> {
        self.put_chunk_at(id, zstd_framed, payload, SystemTime::now())
    }

    /// Makes every chunk put so far (by any clone, or a process before this one) durable.
    pub fn barrier(&self) -> Result<(), RepoError> {
        self.store.barrier()
    }

    /// If the chunk exists, marks it in use at `now` (never moving that back) and returns
    /// true. A session that relies on an existing chunk marks it, so garbage collection's
    /// cut-off protects it until the snapshot that references it is committed.
    pub fn touch_chunk(&self, id: &ChunkId, now: SystemTime) -> bool {
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

    /// Publishes a manifest under `snapshots/<id>.json`. Returns false when that id is taken.
    pub fn publish_manifest(&self, manifest: &Manifest) -> Result<bool, RepoError> {
        let name = format!("{}.json", manifest.id);
        let bytes = serde_json::to_vec(manifest).expect("manifest serializes");
        let published = self.store.create_object(Space::Snapshots, &name, &bytes)?;
        Ok(published == Published::Created)
    }

    /// Publishes `manifest` under the first free id of `base`, `base-1`, … `base-99`
    /// (create-if-absent, so two commits can never take the same id) and sets its id.
    pub fn publish_snapshot(&self, manifest: &mut Manifest, base: &str) -> Result<(), RepoError> {
        for n in 0..100 {
            manifest.id = if n == 0 {
                base.to_string()
            } else {
                format!("{base}-{n}")
            };
            if self.publish_manifest(manifest)? {
                return Ok(());
            }
        }
        Err(RepoError::Io {
            path: PathBuf::from(self.describe()).join(Space::Snapshots.dir()),
            source: io::Error::other("no free snapshot id"),
        })
    }

    /// Snapshot ids, oldest first (ids sort by the receiver's commit time).
    pub fn snapshot_ids(&self) -> Result<Vec<String>, RepoError> {
        Ok(json_names(self.store.list(Space::Snapshots)?))
    }

    pub fn load_manifest(&self, id: &str) -> Result<Manifest, RepoError> {
        Self::check_name(id)?;
        self.load_manifest_in(Space::Snapshots, &format!("{id}.json"), id)
    }

    /// Reads and checks the manifest object `space/name` (in snapshots or the trash).
    pub(crate) fn load_manifest_in(
        &self,
        space: Space,
        name: &str,
        id: &str,
    ) -> Result<Manifest, RepoError> {
        let path = PathBuf::from(self.describe()).join(space.dir()).join(name);
        let bytes = self
            .store
            .read_object(space, name)?
            .ok_or_else(|| RepoError::NoSuchSnapshot(id.to_string()))?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| RepoError::BadManifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if !READABLE_FORMATS.contains(&m.format) {
            return Err(RepoError::BadManifest {
                path,
                message: format!(
                    "format {} is not supported (this receiver reads {READABLE_FORMATS:?})",
                    m.format
                ),
            });
        }
        Ok(m)
    }

    /// Calls `visit` with every manifest, oldest first, one at a time (never all in memory),
    /// until it returns false. A manifest that vanishes meanwhile (a concurrent prune moved
    /// it) is skipped; any other error stops.
    pub fn for_each_manifest(&self, visit: impl FnMut(Manifest) -> bool) -> Result<(), RepoError> {
        self.visit_manifests(self.snapshot_ids()?, visit)
    }

    /// As [`Repository::for_each_manifest`], newest first.
    pub fn for_each_manifest_newest_first(
        &self,
        visit: impl FnMut(Manifest) -> bool,
    ) -> Result<(), RepoError> {
        let mut ids = self.snapshot_ids()?;
        ids.reverse();
        self.visit_manifests(ids, visit)
    }

    fn visit_manifests(
        &self,
        ids: Vec<String>,
        mut visit: impl FnMut(Manifest) -> bool,
    ) -> Result<(), RepoError> {
        for id in ids {
            match self.load_manifest(&id) {
                Ok(m) => {
                    if !visit(m) {
                        break;
                    }
                }
                Err(RepoError::NoSuchSnapshot(_)) => continue,
                Err(e) => return Err(e),
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
