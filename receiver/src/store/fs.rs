//! The file-system store: the only code that changes anything under the repository root.
//!
//! ```text
//! REPO/repository.json        marker + format version
//! REPO/chunks/ab/abcdef…      one file per chunk (tag byte + raw or zstd payload), mode 0400
//! REPO/<space>/<name>         metadata objects (see `Space`), write-once, mode 0400
//! REPO/tmp/                   staging for write-once publishes (same file system)
//! REPO/locks/mark.lock        the mark lock (flock), taken by gc's mark, `undelete` and
//!                             the trash's purge
//! ```
//!
//! How the interface's neutral terms are made of file-system facts: "in use at t" is the
//! chunk file's mtime (moved forward only), the write barrier is one fsync per chunk
//! directory that received names since the last one, create-if-absent is
//! `durable::write_once` (a hard link, which cannot replace), and quarantine is a hard
//! link into `quarantine/`, then the chunk name's removal, each followed by a directory
//! fsync. Nothing else is ever renamed. Every errno becomes a `StoreError` in
//! [`errno`]: ENOENT is the only one a query turns into "absent".

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use backup_common::chunk::ChunkId;
use backup_common::durable::{self, Published};

use crate::store::backend::{valid_name, AppendStore, LockGuard, MaintainStore, Space, Swept};
use crate::store::error::{StoreError, StoreErrorKind};
use crate::testhook;

mod errno;
mod marker;

pub use marker::MARKER;

/// Maps an `io::Error` at `path` of the repository at `root`.
fn io_err<'a>(root: &'a Path, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |e| errno::store_error(root, path, e)
}

/// `Ok(None)` for ENOENT, the error otherwise.
fn absent_ok<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
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
    /// Opens an existing repository (through store/open.rs, which puts the capabilities
    /// over it).
    pub(in crate::store) fn open(root: &Path) -> Result<Self, StoreError> {
        marker::check(root)?;
        let store = FsStore {
            root: root.to_path_buf(),
            unsynced: Arc::default(),
            first_barrier: Arc::new(Mutex::new(true)),
        };
        for dir in [store.chunks_dir(), root.join("snapshots"), store.tmp_dir()] {
            durable::create_private_dir_all(&dir).map_err(io_err(root, &dir))?;
        }
        Ok(store)
    }

    /// Opens the repository at `root`, creating an empty one if there is none (only when
    /// there is none: a marker that cannot be read is an error, not an absence).
    pub(in crate::store) fn open_or_init(root: &Path) -> Result<Self, StoreError> {
        if let Err(e) = marker::check(root) {
            if !e.is_not_found() {
                return Err(e);
            }
            durable::create_private_dir_all(root).map_err(io_err(root, root))?;
            let tmp = root.join("tmp");
            durable::create_private_dir_all(&tmp).map_err(io_err(root, &tmp))?;
            marker::write(root, &tmp).map_err(io_err(root, root))?;
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
    fn err<'a>(&'a self, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
        io_err(&self.root, path)
    }
    fn object_path(&self, space: Space, name: &str) -> Result<PathBuf, StoreError> {
        if !valid_name(name) {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                self.root.join(space.dir()).display().to_string(),
            )
            .with_detail(format!("{name:?} is not an object name")));
        }
        Ok(self.root.join(space.dir()).join(name))
    }

    /// The chunk directories (`chunks/ab`), sorted; one that cannot be listed is an error.
    fn chunk_dirs(&self) -> Result<Vec<PathBuf>, StoreError> {
        let chunks = self.chunks_dir();
        let mut dirs = Vec::new();
        for entry in fs::read_dir(&chunks).map_err(self.err(&chunks))? {
            let entry = entry.map_err(self.err(&chunks))?;
            let path = entry.path();
            if entry.file_type().map_err(self.err(&path))?.is_dir() {
                dirs.push(path);
            }
        }
        dirs.sort();
        Ok(dirs)
    }

    fn sync_all_chunk_dirs(&self) -> Result<(), StoreError> {
        for dir in self.chunk_dirs()? {
            durable::sync_dir(&dir).map_err(self.err(&dir))?;
        }
        Ok(())
    }

    /// Calls `visit` with every chunk file name that is a chunk id, directory by directory;
    /// `visit` returns whether it removed something from that directory.
    fn walk_chunks(
        &self,
        mut visit: impl FnMut(ChunkId, PathBuf) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        for dir in self.chunk_dirs()? {
            let mut removed_here = false;
            for entry in fs::read_dir(&dir).map_err(self.err(&dir))? {
                let entry = entry.map_err(self.err(&dir))?;
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
                durable::sync_dir(&dir).map_err(self.err(&dir))?;
            }
        }
        Ok(())
    }
}

fn mtime(path: &Path) -> io::Result<SystemTime> {
    fs::metadata(path)?.modified()
}

impl AppendStore for FsStore {
    fn has_chunk(&self, id: &ChunkId) -> Result<bool, StoreError> {
        let path = self.chunk_path(id);
        Ok(absent_ok(fs::metadata(&path))
            .map_err(self.err(&path))?
            .is_some_and(|m| m.is_file()))
    }

    fn mark_in_use(&self, id: &ChunkId, at: SystemTime) -> Result<bool, StoreError> {
        let path = self.chunk_path(id);
        let Some(file) = absent_ok(fs::File::open(&path)).map_err(self.err(&path))? else {
            return Ok(false);
        };
        let mtime = file
            .metadata()
            .and_then(|m| m.modified())
            .map_err(self.err(&path))?;
        if mtime < at {
            file.set_modified(at).map_err(self.err(&path))?;
        }
        Ok(true)
    }

    fn put_chunk(
        &self,
        id: &ChunkId,
        parts: &[&[u8]],
        at: SystemTime,
    ) -> Result<Published, StoreError> {
        let path = self.chunk_path(id);
        let dir = path.parent().expect("chunk path has a parent");
        if absent_ok(fs::metadata(dir))
            .map_err(self.err(dir))?
            .is_none()
        {
            durable::create_private_dir_all(dir).map_err(self.err(dir))?;
            durable::sync_dir(&self.chunks_dir()).map_err(self.err(dir))?;
        }
        let name = path.file_name().and_then(|n| n.to_str()).expect("hex name");
        let published = durable::write_once_unsynced_dir(&self.tmp_dir(), dir, name, |f| {
            for p in parts {
                f.write_all(p)?;
            }
            f.set_modified(at)
        })
        .map_err(self.err(&path))?;
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

    fn barrier(&self) -> Result<(), StoreError> {
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
            durable::sync_dir(&dir).map_err(self.err(&dir))?;
            let mut unsynced = self.unsynced.lock().unwrap();
            // A publish that raced with this fsync bumped the count: keep the entry.
            if unsynced.get(&dir) == Some(&count) {
                unsynced.remove(&dir);
            }
        }
        Ok(())
    }

    fn read_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.chunk_path(id);
        absent_ok(fs::read(&path)).map_err(self.err(&path))
    }

    fn chunk_size(&self, id: &ChunkId) -> Result<Option<u64>, StoreError> {
        let path = self.chunk_path(id);
        Ok(absent_ok(fs::metadata(&path))
            .map_err(self.err(&path))?
            .map(|m| m.len()))
    }

    fn for_each_chunk(&self, visit: &mut dyn FnMut(ChunkId, u64)) -> Result<(), StoreError> {
        self.walk_chunks(|id, path| {
            // Gone since the directory was listed (a sweep): not a chunk any more.
            if let Some(md) = absent_ok(fs::metadata(&path)).map_err(self.err(&path))? {
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
    ) -> Result<Published, StoreError> {
        let path = self.object_path(space, name)?;
        let dir = path.parent().expect("object has a directory");
        durable::create_private_dir_all(dir).map_err(self.err(dir))?;
        durable::write_once(&self.tmp_dir(), dir, name, bytes).map_err(self.err(&path))
    }

    fn read_object(&self, space: Space, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.object_path(space, name)?;
        absent_ok(fs::read(&path)).map_err(self.err(&path))
    }

    fn has_object(&self, space: Space, name: &str) -> Result<bool, StoreError> {
        let path = self.object_path(space, name)?;
        Ok(absent_ok(fs::metadata(&path))
            .map_err(self.err(&path))?
            .is_some_and(|m| m.is_file()))
    }

    fn list(&self, space: Space) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join(space.dir());
        let Some(read) = absent_ok(fs::read_dir(&dir)).map_err(self.err(&dir))? else {
            return Ok(Vec::new());
        };
        let mut names = Vec::new();
        for entry in read {
            let entry = entry.map_err(self.err(&dir))?;
            // A name that is not UTF-8 or not an object name is not ours (staging, a
            // hidden file an editor left).
            if let Some(n) = entry.file_name().to_str().filter(|n| valid_name(n)) {
                names.push(n.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    fn free_space(&self) -> Result<u64, StoreError> {
        backup_common::disk::free_bytes(&self.root).map_err(self.err(&self.root))
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
    ) -> Result<Swept, StoreError> {
        let mut swept = Swept::default();
        self.walk_chunks(|id, path| {
            swept.seen += 1;
            if keep(&id) {
                return Ok(false);
            }
            // Gone since the listing (another sweep): nothing to do. Any other error
            // stops the sweep: an in-use time that cannot be read is not "old".
            let Some(meta) = absent_ok(fs::metadata(&path)).map_err(self.err(&path))? else {
                return Ok(false);
            };
            if meta.modified().map_err(self.err(&path))? >= cutoff {
                swept.young += 1;
                return Ok(false);
            }
            if !dry_run {
                // Read the mtime again right before removing: a session may have just
                // found this chunk present and marked it in use.
                let Some(again) = absent_ok(mtime(&path)).map_err(self.err(&path))? else {
                    return Ok(false);
                };
                if again >= cutoff {
                    swept.young += 1;
                    return Ok(false);
                }
                if absent_ok(fs::remove_file(&path))
                    .map_err(self.err(&path))?
                    .is_none()
                {
                    return Ok(false);
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

    fn sweep_staging(&self, before: SystemTime, dry_run: bool) -> Result<u64, StoreError> {
        // Staging files carry the receiver clock's mtime, so their age is read from the
        // ctime, which only the kernel sets.
        let tmp = self.tmp_dir();
        let mut removed = 0;
        for entry in fs::read_dir(&tmp).map_err(self.err(&tmp))? {
            let entry = entry.map_err(self.err(&tmp))?;
            let path = entry.path();
            // Published or removed by its writer since the listing: not staging any more.
            let Some(meta) = absent_ok(fs::symlink_metadata(&path)).map_err(self.err(&path))?
            else {
                continue;
            };
            let changed = SystemTime::UNIX_EPOCH + Duration::from_secs(meta.ctime().max(0) as u64);
            if meta.is_file() && changed < before {
                if !dry_run {
                    absent_ok(fs::remove_file(&path)).map_err(self.err(&path))?;
                }
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn remove_object(&self, space: Space, name: &str) -> Result<(), StoreError> {
        let path = self.object_path(space, name)?;
        if absent_ok(fs::remove_file(&path))
            .map_err(self.err(&path))?
            .is_none()
        {
            return Ok(());
        }
        let dir = path.parent().expect("object has a directory");
        durable::sync_dir(dir).map_err(self.err(dir))
    }

    fn quarantine(&self, id: &ChunkId) -> Result<String, StoreError> {
        let from = self.chunk_path(id);
        let dir = self.root.join(Space::Quarantine.dir());
        durable::create_private_dir_all(&dir).map_err(self.err(&dir))?;
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
                    durable::sync_dir(&dir).map_err(self.err(&dir))?;
                    fs::remove_file(&from).map_err(self.err(&from))?;
                    let chunk_dir = from.parent().expect("chunk dir");
                    durable::sync_dir(chunk_dir).map_err(self.err(chunk_dir))?;
                    return Ok(name);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(errno::store_error(&self.root, &from, e)),
            }
        }
        unreachable!("an unbounded range ends only by returning")
    }

    fn lock_mark(&self, wait: bool) -> Result<Option<Box<dyn LockGuard>>, StoreError> {
        use rustix::fs::{flock, FlockOperation};
        let dir = self.root.join("locks");
        durable::create_private_dir_all(&dir).map_err(self.err(&dir))?;
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
                .map_err(self.err(&path))?
        };
        let op = if wait {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::NonBlockingLockExclusive
        };
        match flock(&file, op) {
            Ok(()) => Ok(Some(Box::new(FlockGuard(file)))),
            Err(e) if !wait && e == rustix::io::Errno::WOULDBLOCK => Ok(None),
            Err(e) => Err(errno::store_error(&self.root, &path, e.into())),
        }
    }
}

#[cfg(test)]
mod tests;
