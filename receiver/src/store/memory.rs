//! An in-memory store for unit tests: the same two capabilities with nothing on disk, so
//! the interface cannot lean on file-system facts without a test noticing.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use backup_common::chunk::ChunkId;
use backup_common::durable::Published;

use crate::store::backend::{valid_name, AppendStore, LockGuard, MaintainStore, Space, Swept};
use crate::store::repository::RepoError;

#[derive(Debug, Default)]
struct State {
    /// Stored form and in-use time of each chunk.
    chunks: HashMap<ChunkId, (Vec<u8>, SystemTime)>,
    objects: BTreeMap<(Space, String), Vec<u8>>,
    /// Puts not yet covered by a barrier.
    unsynced: u64,
}

#[derive(Debug, Default, Clone)]
pub struct MemStore {
    state: Arc<Mutex<State>>,
    lock: Arc<(Mutex<bool>, Condvar)>,
}

fn err(space: Space, name: &str, kind: io::ErrorKind) -> RepoError {
    RepoError::Io {
        path: PathBuf::from(format!("memory:{}/{name}", space.dir())),
        source: io::Error::from(kind),
    }
}

fn check(space: Space, name: &str) -> Result<(), RepoError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(err(space, name, io::ErrorKind::InvalidInput))
    }
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts not yet covered by a barrier (tests check that commits wait for one).
    pub fn unsynced(&self) -> u64 {
        self.state.lock().unwrap().unsynced
    }
}

impl AppendStore for MemStore {
    fn has_chunk(&self, id: &ChunkId) -> bool {
        self.state.lock().unwrap().chunks.contains_key(id)
    }

    fn mark_in_use(&self, id: &ChunkId, at: SystemTime) -> bool {
        match self.state.lock().unwrap().chunks.get_mut(id) {
            Some((_, t)) => {
                *t = (*t).max(at);
                true
            }
            None => false,
        }
    }

    fn put_chunk(
        &self,
        id: &ChunkId,
        parts: &[&[u8]],
        at: SystemTime,
    ) -> Result<Published, RepoError> {
        let mut s = self.state.lock().unwrap();
        if s.chunks.contains_key(id) {
            return Ok(Published::AlreadyExisted);
        }
        s.chunks.insert(*id, (parts.concat(), at));
        s.unsynced += 1;
        Ok(Published::Created)
    }

    fn barrier(&self) -> Result<(), RepoError> {
        self.state.lock().unwrap().unsynced = 0;
        Ok(())
    }

    fn read_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, RepoError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .chunks
            .get(id)
            .map(|c| c.0.clone()))
    }

    fn chunk_size(&self, id: &ChunkId) -> Option<u64> {
        let s = self.state.lock().unwrap();
        s.chunks.get(id).map(|c| c.0.len() as u64)
    }

    fn for_each_chunk(&self, visit: &mut dyn FnMut(ChunkId, u64)) -> Result<(), RepoError> {
        let s = self.state.lock().unwrap();
        for (id, c) in &s.chunks {
            visit(*id, c.0.len() as u64);
        }
        Ok(())
    }

    fn create_object(
        &self,
        space: Space,
        name: &str,
        bytes: &[u8],
    ) -> Result<Published, RepoError> {
        check(space, name)?;
        let mut s = self.state.lock().unwrap();
        let key = (space, name.to_string());
        if s.objects.contains_key(&key) {
            return Ok(Published::AlreadyExisted);
        }
        s.objects.insert(key, bytes.to_vec());
        Ok(Published::Created)
    }

    fn read_object(&self, space: Space, name: &str) -> Result<Option<Vec<u8>>, RepoError> {
        check(space, name)?;
        let s = self.state.lock().unwrap();
        Ok(s.objects.get(&(space, name.to_string())).cloned())
    }

    fn has_object(&self, space: Space, name: &str) -> bool {
        let s = self.state.lock().unwrap();
        s.objects.contains_key(&(space, name.to_string()))
    }

    fn list(&self, space: Space) -> Result<Vec<String>, RepoError> {
        let s = self.state.lock().unwrap();
        Ok(s.objects
            .keys()
            .filter(|(sp, _)| *sp == space)
            .map(|(_, n)| n.clone())
            .collect())
    }

    fn free_space(&self) -> Result<u64, RepoError> {
        Ok(u64::MAX)
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

struct MemGuard(Arc<(Mutex<bool>, Condvar)>);
impl LockGuard for MemGuard {}
impl Drop for MemGuard {
    fn drop(&mut self) {
        *self.0 .0.lock().unwrap() = false;
        self.0 .1.notify_all();
    }
}

impl MaintainStore for MemStore {
    fn sweep(
        &self,
        keep: &dyn Fn(&ChunkId) -> bool,
        cutoff: SystemTime,
        dry_run: bool,
    ) -> Result<Swept, RepoError> {
        let mut s = self.state.lock().unwrap();
        let mut swept = Swept::default();
        let mut gone = Vec::new();
        for (id, (bytes, t)) in &s.chunks {
            swept.seen += 1;
            if keep(id) {
                continue;
            }
            if *t >= cutoff {
                swept.young += 1;
                continue;
            }
            swept.removed += 1;
            swept.removed_bytes += bytes.len() as u64;
            gone.push(*id);
        }
        if !dry_run {
            for id in gone {
                s.chunks.remove(&id);
            }
        }
        Ok(swept)
    }

    fn sweep_staging(&self, _before: SystemTime, _dry_run: bool) -> Result<u64, RepoError> {
        Ok(0)
    }

    fn move_object(
        &self,
        from: Space,
        name: &str,
        to: Space,
        to_name: &str,
    ) -> Result<(), RepoError> {
        check(from, name)?;
        check(to, to_name)?;
        let mut s = self.state.lock().unwrap();
        let src = (from, name.to_string());
        let dst = (to, to_name.to_string());
        if !s.objects.contains_key(&src) {
            return Err(err(from, name, io::ErrorKind::NotFound));
        }
        if s.objects.contains_key(&dst) {
            return Err(err(to, to_name, io::ErrorKind::AlreadyExists));
        }
        let bytes = s.objects.remove(&src).expect("checked above");
        s.objects.insert(dst, bytes);
        Ok(())
    }

    fn remove_object(&self, space: Space, name: &str) -> Result<(), RepoError> {
        check(space, name)?;
        self.state
            .lock()
            .unwrap()
            .objects
            .remove(&(space, name.to_string()));
        Ok(())
    }

    fn quarantine(&self, id: &ChunkId) -> Result<String, RepoError> {
        let mut s = self.state.lock().unwrap();
        let hex = id.to_hex();
        let (bytes, _) = s
            .chunks
            .remove(id)
            .ok_or_else(|| err(Space::Quarantine, &hex, io::ErrorKind::NotFound))?;
        let name = (0..)
            .map(|n| {
                if n == 0 {
                    hex.clone()
                } else {
                    format!("{hex}.{n}")
                }
            })
            .find(|n| !s.objects.contains_key(&(Space::Quarantine, n.clone())))
            .expect("an unbounded range has a free name");
        s.objects.insert((Space::Quarantine, name.clone()), bytes);
        Ok(name)
    }

    fn lock_mark(&self, wait: bool) -> Result<Option<Box<dyn LockGuard>>, RepoError> {
        let (held, cv) = &*self.lock;
        let mut h = held.lock().unwrap();
        if *h && !wait {
            return Ok(None);
        }
        while *h {
            h = cv.wait(h).unwrap();
        }
        *h = true;
        Ok(Some(Box::new(MemGuard(self.lock.clone()))))
    }
}
