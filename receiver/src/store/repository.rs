//! The filesystem repository: write-once chunks named by blake3, one immutable manifest per
//! snapshot. Every file goes through `durable::write_once`; nothing in this module replaces,
//! truncates or deletes a published file (retention and garbage collection live elsewhere
//! and run only on the NAS, never on a network request).
//!
//! ```text
//! REPO/repository.json        marker + format version
//! REPO/chunks/ab/abcdef…      one file per chunk (tag byte + raw or zstd payload), mode 0400
//! REPO/snapshots/<id>.json    one manifest per snapshot, mode 0400
//! REPO/acks/<id>.json         operator acknowledgements of suspect snapshots, mode 0400
//! REPO/rejects/<id>.json      operator rejections (verdicts.rs)
//! REPO/drills/<id>.json       passed restore drills (verdicts.rs)
//! REPO/tmp/                   staging for write-once publishes (same filesystem)
//! REPO/trash/<id>@<time>.json pruned manifests during their grace period (trash.rs)
//! REPO/holds/<id>.json         undeleted snapshots that prune must keep (trash.rs)
//! REPO/quarantine/<hex>        chunks that failed verification, moved aside (verify.rs)
//! REPO/audit.log              append-only log of sessions, commits and rejections
//! ```

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use backup_common::chunk::{self, ChunkError, ChunkId};
use backup_common::durable::{self, Published};
use backup_common::manifest::{Manifest, FORMAT_VERSION, READABLE_FORMATS};
use serde::{Deserialize, Serialize};

const MARKER: &str = "repository.json";

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

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RepoError + '_ {
    move |source| RepoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The `<name>` of every `<name>.json` in `dir`, sorted (snapshot ids, verdict ids).
pub(crate) fn json_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names)
}

#[derive(Serialize, Deserialize)]
struct Marker {
    format: u32,
    kind: String,
}

#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
    /// Chunk directories holding names published since their last fsync, each with a
    /// count of such publishes (see [`Repository::sync_chunk_dirs`]). Shared by clones.
    unsynced: Arc<Mutex<HashMap<PathBuf, u64>>>,
}

impl Repository {
    /// Opens an existing repository.
    pub fn open(root: &Path) -> Result<Self, RepoError> {
        let marker = root.join(MARKER);
        if !marker.is_file() {
            return Err(RepoError::NotARepository {
                path: root.to_path_buf(),
            });
        }
        let repo = Repository {
            root: root.to_path_buf(),
            unsynced: Arc::default(),
        };
        for dir in [repo.chunks_dir(), repo.snapshots_dir(), repo.tmp_dir()] {
            durable::create_private_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(repo)
    }

    /// Opens the repository at `root`, creating an empty one if there is none.
    pub fn open_or_init(root: &Path) -> Result<Self, RepoError> {
        if !root.join(MARKER).is_file() {
            durable::create_private_dir_all(root).map_err(io_err(root))?;
            let tmp = root.join("tmp");
            durable::create_private_dir_all(&tmp).map_err(io_err(&tmp))?;
            let marker = serde_json::to_vec_pretty(&Marker {
                format: FORMAT_VERSION,
                kind: "familienarchiv-backup".into(),
            })
            .expect("marker serializes");
            durable::write_once(&tmp, root, MARKER, &marker).map_err(io_err(root))?;
        }
        Self::open(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn chunks_dir(&self) -> PathBuf {
        self.root.join("chunks")
    }
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn trash_dir(&self) -> PathBuf {
        self.root.join("trash")
    }
    pub fn holds_dir(&self) -> PathBuf {
        self.root.join("holds")
    }
    pub fn acks_dir(&self) -> PathBuf {
        self.root.join("acks")
    }
    pub fn quarantine_dir(&self) -> PathBuf {
        self.root.join("quarantine")
    }

    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.chunks_dir().join(&hex[..2]).join(hex)
    }

    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        self.chunk_path(id).is_file()
    }

    /// Stores an already verified chunk payload write-once. An existing chunk is left as it is.
    /// The chunk's bytes are durable when this returns, its directory entry only after the
    /// next [`Repository::sync_chunk_dirs`], which must run before a manifest refers to it.
    pub fn put_chunk(
        &self,
        id: &ChunkId,
        zstd_framed: bool,
        payload: &[u8],
    ) -> Result<Published, RepoError> {
        self.put_chunk_at(id, zstd_framed, payload, SystemTime::now())
    }

    /// As [`Repository::put_chunk`], with the file's mtime set to `now` (the receiver's
    /// clock) before it is published: garbage collection's grace period reads it.
    pub fn put_chunk_at(
        &self,
        id: &ChunkId,
        zstd_framed: bool,
        payload: &[u8],
        now: SystemTime,
    ) -> Result<Published, RepoError> {
        let path = self.chunk_path(id);
        let dir = path.parent().expect("chunk path has a parent");
        if !dir.is_dir() {
            durable::create_private_dir_all(dir).map_err(io_err(dir))?;
            durable::sync_dir(&self.chunks_dir()).map_err(io_err(dir))?;
        }
        let name = path.file_name().and_then(|n| n.to_str()).expect("hex name");
        let published = durable::write_once_unsynced_dir(&self.tmp_dir(), dir, name, |f| {
            use std::io::Write;
            f.write_all(&[u8::from(zstd_framed)])?;
            f.write_all(payload)?;
            f.set_modified(now)
        })
        .map_err(io_err(&path))?;
        if published == Published::Created {
            *self
                .unsynced
                .lock()
                .unwrap()
                .entry(dir.to_path_buf())
                .or_default() += 1;
        }
        Ok(published)
    }

    /// Makes every chunk published so far (by any clone of this repository) durable under
    /// its name: one fsync per directory that received new chunks, instead of one per chunk.
    pub fn sync_chunk_dirs(&self) -> Result<(), RepoError> {
        let pending: Vec<(PathBuf, u64)> = self
            .unsynced
            .lock()
            .unwrap()
            .iter()
            .map(|(d, n)| (d.clone(), *n))
            .collect();
        for (dir, count) in pending {
            durable::sync_dir(&dir).map_err(io_err(&dir))?;
            let mut unsynced = self.unsynced.lock().unwrap();
            // A publish that raced with this fsync bumped the count: keep the entry.
            if unsynced.get(&dir) == Some(&count) {
                unsynced.remove(&dir);
            }
        }
        Ok(())
    }

    /// fsyncs every chunk directory: after a restart, chunks published by a process that
    /// died before syncing them are made durable before any new commit can refer to them.
    pub fn sync_all_chunk_dirs(&self) -> Result<(), RepoError> {
        let dir = self.chunks_dir();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path();
            if path.is_dir() {
                durable::sync_dir(&path).map_err(io_err(&path))?;
            }
        }
        Ok(())
    }

    /// If the chunk exists, moves its mtime forward to `now` (never back) and returns true.
    /// A session that relies on an existing chunk touches it, so garbage collection's
    /// cut-off protects it until the snapshot that references it is committed.
    pub fn touch_chunk(&self, id: &ChunkId, now: SystemTime) -> bool {
        let Ok(file) = fs::File::open(self.chunk_path(id)) else {
            return false;
        };
        match file.metadata().and_then(|m| m.modified()) {
            Ok(mtime) if mtime >= now => {}
            _ => {
                if let Err(e) = file.set_modified(now) {
                    tracing::warn!(chunk = %id, error = %e, "cannot refresh chunk mtime");
                }
            }
        }
        true
    }

    /// Reads, decompresses and verifies a chunk.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, RepoError> {
        let path = self.chunk_path(id);
        let stored = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RepoError::MissingChunk { id: *id })
            }
            Err(source) => return Err(RepoError::Io { path, source }),
        };
        Ok(chunk::decode_stored(*id, &stored)?)
    }

    /// Size of the stored (possibly compressed) chunk file.
    pub fn stored_size(&self, id: &ChunkId) -> Option<u64> {
        fs::metadata(self.chunk_path(id)).ok().map(|m| m.len())
    }

    /// Publishes a manifest under `snapshots/<id>.json`. Returns false when that id is taken.
    pub fn publish_manifest(&self, manifest: &Manifest) -> Result<bool, RepoError> {
        let name = format!("{}.json", manifest.id);
        let bytes = serde_json::to_vec(manifest).expect("manifest serializes");
        let published = durable::write_once(&self.tmp_dir(), &self.snapshots_dir(), &name, &bytes)
            .map_err(io_err(&self.snapshots_dir()))?;
        Ok(published == Published::Created)
    }

    pub fn snapshot_exists(&self, id: &str) -> bool {
        self.snapshots_dir().join(format!("{id}.json")).exists()
    }

    /// Snapshot ids, oldest first (ids sort by the receiver's commit time).
    pub fn snapshot_ids(&self) -> Result<Vec<String>, RepoError> {
        let dir = self.snapshots_dir();
        json_names(&dir).map_err(io_err(&dir))
    }

    pub fn load_manifest(&self, id: &str) -> Result<Manifest, RepoError> {
        self.load_manifest_at(&self.snapshots_dir().join(format!("{id}.json")), id)
    }

    /// Reads and checks the manifest file at `path` (in `snapshots/` or `trash/`).
    pub fn load_manifest_at(&self, path: &Path, id: &str) -> Result<Manifest, RepoError> {
        let path = path.to_path_buf();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RepoError::NoSuchSnapshot(id.to_string()))
            }
            Err(source) => return Err(RepoError::Io { path, source }),
        };
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

    /// Resolves a snapshot name for an operator: an id (any status), or `latest` for the
    /// newest good snapshot. With `allow_suspect` false, a snapshot that is not good (the
    /// guard flagged it and nobody acknowledged it, or an operator rejected it) is refused
    /// with the reason; the caller says so when it is allowed.
    pub fn resolve(&self, name: &str, allow_suspect: bool) -> Result<Manifest, RepoError> {
        if name == "latest" {
            return self.latest_good()?.ok_or_else(|| {
                if self.snapshot_ids().is_ok_and(|ids| ids.is_empty()) {
                    RepoError::Empty
                } else {
                    RepoError::NoGoodSnapshot
                }
            });
        }
        Self::check_name(name)?;
        let m = self.load_manifest(name)?;
        if !allow_suspect {
            if let Some(why) = crate::store::verdicts::not_good_because(self, &m) {
                return Err(RepoError::NotGood { id: m.id, why });
            }
        }
        Ok(m)
    }

    /// Resolves an id, or `latest` for the newest snapshot whatever its status (what `ack`
    /// acknowledges after a flagged night).
    pub fn resolve_any(&self, name: &str) -> Result<Manifest, RepoError> {
        if name == "latest" {
            let ids = self.snapshot_ids()?;
            let newest = ids.last().ok_or(RepoError::Empty)?;
            return self.load_manifest(newest);
        }
        Self::check_name(name)?;
        self.load_manifest(name)
    }

    /// The newest good snapshot (see [`crate::store::verdicts`]): the base for the next delta, the
    /// guard's baseline, and `latest`.
    pub fn latest_good(&self) -> Result<Option<Manifest>, RepoError> {
        let mut found = None;
        self.for_each_manifest_newest_first(|m| {
            if crate::store::verdicts::is_good(self, &m) {
                found = Some(m);
                return false;
            }
            true
        })?;
        Ok(found)
    }
}
