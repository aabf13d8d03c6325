//! The file-system store: the only code that changes anything under the repository root.
//!
//! ```text
//! REPO/repository.json        marker + format version
//! REPO/chunks/ab/abcdef…      one file per chunk (tag byte + raw or zstd payload), mode 0400
//! REPO/<space>/<name>         metadata objects (see `Space`), write-once, mode 0400
//! REPO/tmp/                   staging for write-once publishes (same file system)
//! REPO/locks/mark.lock        the mark lock (flock), taken by gc's mark and `undelete`
//! ```
//!
//! How the interface's neutral terms are made of file-system facts: "in use at t" is the
//! chunk file's mtime (moved forward only), the write barrier is one fsync per chunk
//! directory that received names since the last one, create-if-absent is
//! `durable::write_once` (a hard link, which cannot replace), and "move without replacing"
//! is a hard link to the new name, then the old name's removal, each followed by a
//! directory fsync.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use backup_common::chunk::ChunkId;
use backup_common::durable::{self, Published};
use backup_common::manifest::FORMAT_VERSION;
use serde::{Deserialize, Serialize};

use crate::store::backend::{valid_name, AppendStore, LockGuard, MaintainStore, Space, Swept};
use crate::store::repository::RepoError;
use crate::testhook;

pub const MARKER: &str = "repository.json";

#[derive(Serialize, Deserialize)]
struct Marker {
    format: u32,
    kind: String,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RepoError + '_ {
    move |source| RepoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The file of chunk `id` under repository `root` (for messages and tests that damage
/// a chunk on purpose).
pub fn chunk_path(root: &Path, id: &ChunkId) -> PathBuf {
    let hex = id.to_hex();
    root.join("chunks").join(&hex[..2]).join(hex)
}

#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
    /// Chunk directories holding names published since their last fsync, each with a
    /// count of such publishes. Shared by clones.
    unsynced: Arc<Mutex<HashMap<PathBuf, u64>>>,
    /// Until the first barrier: chunks an earlier process put may not be durable yet, so
    /// that barrier syncs every chunk directory.
    first_barrier: Arc<Mutex<bool>>,
}

impl FsStore {
    /// Opens an existing repository.
    pub fn open(root: &Path) -> Result<Self, RepoError> {
        if !root.join(MARKER).is_file() {
            return Err(RepoError::NotARepository {
                path: root.to_path_buf(),
            });
        }
        let store = FsStore {
            root: root.to_path_buf(),
            unsynced: Arc::default(),
            first_barrier: Arc::new(Mutex::new(true)),
        };
        for dir in [store.chunks_dir(), root.join("snapshots"), store.tmp_dir()] {
            durable::create_private_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(store)
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
    fn chunks_dir(&self) -> PathBuf {
        self.root.join("chunks")
    }
    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        chunk_path(&self.root, id)
    }
    fn object_path(&self, space: Space, name: &str) -> Result<PathBuf, RepoError> {
        if !valid_name(name) {
            return Err(RepoError::Io {
                path: self.root.join(space.dir()),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name:?} is not an object name"),
                ),
            });
        }
        Ok(self.root.join(space.dir()).join(name))
    }

    fn chunk_dirs(&self) -> Result<Vec<PathBuf>, RepoError> {
        let chunks = self.chunks_dir();
        let mut dirs: Vec<_> = fs::read_dir(&chunks)
            .map_err(io_err(&chunks))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        Ok(dirs)
    }

    fn sync_all_chunk_dirs(&self) -> Result<(), RepoError> {
        for dir in self.chunk_dirs()? {
            durable::sync_dir(&dir).map_err(io_err(&dir))?;
        }
        Ok(())
    }

    /// Calls `visit` with every chunk file name that is a chunk id, directory by directory;
    /// `visit` returns whether it removed something from that directory.
    fn walk_chunks(
        &self,
        mut visit: impl FnMut(ChunkId, PathBuf) -> Result<bool, RepoError>,
    ) -> Result<(), RepoError> {
        for dir in self.chunk_dirs()? {
            let mut removed_here = false;
            for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let entry = entry.map_err(io_err(&dir))?;
                let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| ChunkId::from_hex(n).ok())
                else {
                    continue; // not a chunk: not ours
                };
                removed_here |= visit(id, entry.path())?;
            }
            if removed_here {
                durable::sync_dir(&dir).map_err(io_err(&dir))?;
            }
        }
        Ok(())
    }
}

fn mtime(path: &Path) -> io::Result<SystemTime> {
    fs::metadata(path)?.modified()
}

impl AppendStore for FsStore {
    fn has_chunk(&self, id: &ChunkId) -> bool {
        self.chunk_path(id).is_file()
    }

    fn mark_in_use(&self, id: &ChunkId, at: SystemTime) -> bool {
        let Ok(file) = fs::File::open(self.chunk_path(id)) else {
            return false;
        };
        match file.metadata().and_then(|m| m.modified()) {
            Ok(mtime) if mtime >= at => {}
            _ => {
                if let Err(e) = file.set_modified(at) {
                    tracing::warn!(chunk = %id, error = %e, "cannot refresh chunk mtime");
                }
            }
        }
        true
    }

    fn put_chunk(
        &self,
        id: &ChunkId,
        parts: &[&[u8]],
        at: SystemTime,
    ) -> Result<Published, RepoError> {
        let path = self.chunk_path(id);
        let dir = path.parent().expect("chunk path has a parent");
        if !dir.is_dir() {
            durable::create_private_dir_all(dir).map_err(io_err(dir))?;
            durable::sync_dir(&self.chunks_dir()).map_err(io_err(dir))?;
        }
        let name = path.file_name().and_then(|n| n.to_str()).expect("hex name");
        let published = durable::write_once_unsynced_dir(&self.tmp_dir(), dir, name, |f| {
            for p in parts {
                f.write_all(p)?;
            }
            f.set_modified(at)
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

    fn barrier(&self) -> Result<(), RepoError> {
        {
            let mut first = self.first_barrier.lock().unwrap();
            if *first {
                self.sync_all_chunk_dirs()?;
                *first = false;
            }
        }
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

    fn read_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, RepoError> {
        let path = self.chunk_path(id);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RepoError::Io { path, source }),
        }
    }

    fn chunk_size(&self, id: &ChunkId) -> Option<u64> {
        fs::metadata(self.chunk_path(id)).ok().map(|m| m.len())
    }

    fn for_each_chunk(&self, visit: &mut dyn FnMut(ChunkId, u64)) -> Result<(), RepoError> {
        self.walk_chunks(|id, path| {
            if let Ok(md) = fs::metadata(&path) {
                if md.is_file() {
                    visit(id, md.len());
                }
            }
            Ok(false)
        })
    }

    fn create_object(
        &self,
        space: Space,
        name: &str,
        bytes: &[u8],
    ) -> Result<Published, RepoError> {
        let path = self.object_path(space, name)?;
        let dir = path.parent().expect("object has a directory");
        durable::create_private_dir_all(dir).map_err(io_err(dir))?;
        durable::write_once(&self.tmp_dir(), dir, name, bytes).map_err(io_err(dir))
    }

    fn read_object(&self, space: Space, name: &str) -> Result<Option<Vec<u8>>, RepoError> {
        let path = self.object_path(space, name)?;
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RepoError::Io { path, source }),
        }
    }

    fn has_object(&self, space: Space, name: &str) -> bool {
        self.object_path(space, name).is_ok_and(|p| p.is_file())
    }

    fn list(&self, space: Space) -> Result<Vec<String>, RepoError> {
        let dir = self.root.join(space.dir());
        let read = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(RepoError::Io { path: dir, source }),
        };
        let mut names: Vec<String> = read
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| valid_name(n))
            .collect();
        names.sort();
        Ok(names)
    }

    fn free_space(&self) -> Result<u64, RepoError> {
        backup_common::disk::free_bytes(&self.root).map_err(io_err(&self.root))
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

/// The mark lock: an exclusive `flock` on `REPO/locks/mark.lock`, released when the
/// file is closed (also when the process dies).
struct FlockGuard(#[allow(dead_code)] fs::File);
impl LockGuard for FlockGuard {}

impl MaintainStore for FsStore {
    fn sweep(
        &self,
        keep: &dyn Fn(&ChunkId) -> bool,
        cutoff: SystemTime,
        dry_run: bool,
    ) -> Result<Swept, RepoError> {
        let mut swept = Swept::default();
        self.walk_chunks(|id, path| {
            swept.seen += 1;
            if keep(&id) {
                return Ok(false);
            }
            let Ok(meta) = fs::metadata(&path) else {
                return Ok(false);
            };
            if meta.modified().map_or(true, |t| t >= cutoff) {
                swept.young += 1;
                return Ok(false);
            }
            if !dry_run {
                // Read the mtime again right before removing: a session may have just
                // found this chunk present and marked it in use.
                if mtime(&path).map_or(true, |t| t >= cutoff) {
                    swept.young += 1;
                    return Ok(false);
                }
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                    Err(source) => return Err(RepoError::Io { path, source }),
                }
            }
            swept.removed += 1;
            swept.removed_bytes += meta.len();
            if !dry_run {
                testhook::pause(testhook::GC_AFTER_FIRST_REMOVE);
            }
            Ok(!dry_run)
        })?;
        Ok(swept)
    }

    fn sweep_staging(&self, before: SystemTime, dry_run: bool) -> Result<u64, RepoError> {
        // Staging files carry the receiver clock's mtime, so their age is read from the
        // ctime, which only the kernel sets.
        let tmp = self.tmp_dir();
        let mut removed = 0;
        for entry in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let entry = entry.map_err(io_err(&tmp))?;
            let path = entry.path();
            let changed = fs::metadata(&path)
                .map(|m| SystemTime::UNIX_EPOCH + Duration::from_secs(m.ctime().max(0) as u64));
            if path.is_file() && changed.is_ok_and(|t| t < before) {
                if !dry_run {
                    let _ = fs::remove_file(&path);
                }
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn move_object(
        &self,
        from: Space,
        name: &str,
        to: Space,
        to_name: &str,
    ) -> Result<(), RepoError> {
        let src = self.object_path(from, name)?;
        let dst = self.object_path(to, to_name)?;
        let dst_dir = dst.parent().expect("object has a directory");
        durable::create_private_dir_all(dst_dir).map_err(io_err(dst_dir))?;
        // A hard link cannot replace an existing name; the old name goes only afterwards,
        // so a crash leaves the object in one place or both, never in none.
        fs::hard_link(&src, &dst).map_err(|source| RepoError::Io {
            path: if source.kind() == io::ErrorKind::NotFound {
                src.clone()
            } else {
                dst.clone()
            },
            source,
        })?;
        durable::sync_dir(dst_dir).map_err(io_err(&dst))?;
        fs::remove_file(&src).map_err(io_err(&src))?;
        durable::sync_dir(src.parent().expect("object has a directory")).map_err(io_err(&src))
    }

    fn remove_object(&self, space: Space, name: &str) -> Result<(), RepoError> {
        let path = self.object_path(space, name)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(RepoError::Io { path, source }),
        }
        let dir = path.parent().expect("object has a directory");
        durable::sync_dir(dir).map_err(io_err(dir))
    }

    fn quarantine(&self, id: &ChunkId) -> Result<String, RepoError> {
        let from = self.chunk_path(id);
        let dir = self.root.join(Space::Quarantine.dir());
        durable::create_private_dir_all(&dir).map_err(io_err(&dir))?;
        let hex = id.to_hex();
        for n in 0.. {
            let name = if n == 0 {
                hex.clone()
            } else {
                format!("{hex}.{n}")
            };
            let to = dir.join(&name);
            // Link then unlink: no existing quarantined copy is ever replaced.
            match fs::hard_link(&from, &to) {
                Ok(()) => {
                    durable::sync_dir(&dir).map_err(io_err(&from))?;
                    fs::remove_file(&from).map_err(io_err(&from))?;
                    durable::sync_dir(from.parent().expect("chunk dir")).map_err(io_err(&from))?;
                    return Ok(name);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(RepoError::Io { path: from, source }),
            }
        }
        unreachable!("an unbounded range ends only by returning")
    }

    fn lock_mark(&self, wait: bool) -> Result<Option<Box<dyn LockGuard>>, RepoError> {
        use rustix::fs::{flock, FlockOperation};
        let dir = self.root.join("locks");
        durable::create_private_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join("mark.lock");
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(io_err(&path))?
        };
        let op = if wait {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::NonBlockingLockExclusive
        };
        match flock(&file, op) {
            Ok(()) => Ok(Some(Box::new(FlockGuard(file)))),
            Err(e) if !wait && e == rustix::io::Errno::WOULDBLOCK => Ok(None),
            Err(e) => Err(RepoError::Io {
                path,
                source: e.into(),
            }),
        }
    }
}
