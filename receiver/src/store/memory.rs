//! An in-memory store for unit tests: the same two capabilities with nothing on disk, so
//! the interface cannot lean on file-system facts without a test noticing. Any operation
//! can be made to fail ([`MemStore::fail`]), per operation and space, with any
//! [`StoreErrorKind`]: the tests that a failed query stops its decision inject through it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use backup_common::chunk::ChunkId;
use backup_common::durable::Published;

use crate::store::backend::{valid_name, AppendStore, LockGuard, MaintainStore, Space, Swept};
use crate::store::error::{StoreError, StoreErrorKind};

/// A store operation, for [`MemStore::fail`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    HasChunk,
    MarkInUse,
    PutChunk,
    Barrier,
    ReadChunk,
    ChunkSize,
    ForEachChunk,
    CreateObject,
    ReadObject,
    HasObject,
    List,
    FreeSpace,
    Sweep,
    SweepStaging,
    RemoveObject,
    Quarantine,
    LockMark,
}

#[derive(Debug, Default)]
struct State {
    /// Stored form and in-use time of each chunk.
    chunks: HashMap<ChunkId, (Vec<u8>, SystemTime)>,
    objects: BTreeMap<(Space, String), Vec<u8>>,
    /// Puts not yet covered by a barrier.
    unsynced: u64,
    /// Injected failures: an operation on one space (`Some`) or on all (`None`).
    failing: HashMap<(Op, Option<Space>), StoreErrorKind>,
}

#[derive(Debug, Default, Clone)]
pub struct MemStore {
    state: Arc<Mutex<State>>,
    lock: Arc<(Mutex<bool>, Condvar)>,
}

fn at(space: Space, name: &str) -> String {
    format!("memory:{}/{name}", space.dir())
}

fn check(space: Space, name: &str) -> Result<(), StoreError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(StoreError::new(StoreErrorKind::Other, at(space, name))
            .with_detail("not an object name"))
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

    /// From now on, `op` fails with `kind`: on objects of `space` only, or (`None`) on
    /// every space and on chunks.
    pub fn fail(&self, op: Op, space: Option<Space>, kind: StoreErrorKind) {
        self.state.lock().unwrap().failing.insert((op, space), kind);
    }

    /// Ends every injected failure.
    pub fn heal(&self) {
        self.state.lock().unwrap().failing.clear();
    }

    /// The injected failure of `op` on `space` (or a chunk, `None`), if any.
    fn injected(&self, op: Op, space: Option<Space>, name: &str) -> Result<(), StoreError> {
        let s = self.state.lock().unwrap();
        let kind = space
            .and_then(|sp| s.failing.get(&(op, Some(sp))))
            .or_else(|| s.failing.get(&(op, None)));
        match kind {
            Some(&kind) => Err(StoreError::new(
                kind,
                match space {
                    Some(sp) => at(sp, name),
                    None => format!("memory:chunks/{name}"),
                },
            )
            .with_detail(format!("injected {op:?} failure"))),
            None => Ok(()),
        }
    }

    fn chunk_op(&self, op: Op, id: &ChunkId) -> Result<(), StoreError> {
        self.injected(op, None, &id.to_hex())
    }
}

impl AppendStore for MemStore {
    fn has_chunk(&self, id: &ChunkId) -> Result<bool, StoreError> {
        self.chunk_op(Op::HasChunk, id)?;
        Ok(self.state.lock().unwrap().chunks.contains_key(id))
    }

    fn mark_in_use(&self, id: &ChunkId, at: SystemTime) -> Result<bool, StoreError> {
        self.chunk_op(Op::MarkInUse, id)?;
        Ok(match self.state.lock().unwrap().chunks.get_mut(id) {
            Some((_, t)) => {
                *t = (*t).max(at);
                true
            }
            None => false,
        })
    }

    fn put_chunk(
        &self,
        id: &ChunkId,
        parts: &[&[u8]],
        at: SystemTime,
    ) -> Result<Published, StoreError> {
        self.chunk_op(Op::PutChunk, id)?;
        let mut s = self.state.lock().unwrap();
        if s.chunks.contains_key(id) {
            return Ok(Published::AlreadyExisted);
        }
        s.chunks.insert(*id, (parts.concat(), at));
        s.unsynced += 1;
        Ok(Published::Created)
    }

    fn barrier(&self) -> Result<(), StoreError> {
        self.injected(Op::Barrier, None, "")?;
        self.state.lock().unwrap().unsynced = 0;
        Ok(())
    }

    fn read_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        self.chunk_op(Op::ReadChunk, id)?;
        Ok(self
            .state
            .lock()
            .unwrap()
            .chunks
            .get(id)
            .map(|c| c.0.clone()))
    }

    fn chunk_size(&self, id: &ChunkId) -> Result<Option<u64>, StoreError> {
        self.chunk_op(Op::ChunkSize, id)?;
        let s = self.state.lock().unwrap();
        Ok(s.chunks.get(id).map(|c| c.0.len() as u64))
    }

    fn for_each_chunk(&self, visit: &mut dyn FnMut(ChunkId, u64)) -> Result<(), StoreError> {
        self.injected(Op::ForEachChunk, None, "")?;
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
    ) -> Result<Published, StoreError> {
        check(space, name)?;
        self.injected(Op::CreateObject, Some(space), name)?;
        let mut s = self.state.lock().unwrap();
        let key = (space, name.to_string());
        if s.objects.contains_key(&key) {
            return Ok(Published::AlreadyExisted);
        }
        s.objects.insert(key, bytes.to_vec());
        Ok(Published::Created)
    }

    fn read_object(&self, space: Space, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check(space, name)?;
        self.injected(Op::ReadObject, Some(space), name)?;
        let s = self.state.lock().unwrap();
        Ok(s.objects.get(&(space, name.to_string())).cloned())
    }

    fn has_object(&self, space: Space, name: &str) -> Result<bool, StoreError> {
        self.injected(Op::HasObject, Some(space), name)?;
        let s = self.state.lock().unwrap();
        Ok(s.objects.contains_key(&(space, name.to_string())))
    }

    fn list(&self, space: Space) -> Result<Vec<String>, StoreError> {
        self.injected(Op::List, Some(space), "")?;
        let s = self.state.lock().unwrap();
        Ok(s.objects
            .keys()
            .filter(|(sp, _)| *sp == space)
            .map(|(_, n)| n.clone())
            .collect())
    }

    fn free_space(&self) -> Result<u64, StoreError> {
        self.injected(Op::FreeSpace, None, "")?;
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
    ) -> Result<Swept, StoreError> {
        self.injected(Op::Sweep, None, "")?;
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

    fn sweep_staging(&self, _before: SystemTime, _dry_run: bool) -> Result<u64, StoreError> {
        self.injected(Op::SweepStaging, None, "")?;
        Ok(0)
    }

    fn remove_object(&self, space: Space, name: &str) -> Result<(), StoreError> {
        check(space, name)?;
        self.injected(Op::RemoveObject, Some(space), name)?;
        self.state
            .lock()
            .unwrap()
            .objects
            .remove(&(space, name.to_string()));
        Ok(())
    }

    fn quarantine(&self, id: &ChunkId) -> Result<String, StoreError> {
        self.chunk_op(Op::Quarantine, id)?;
        let mut s = self.state.lock().unwrap();
        let hex = id.to_hex();
        let (bytes, _) = s.chunks.remove(id).ok_or_else(|| {
            StoreError::new(StoreErrorKind::NotFound, format!("memory:chunks/{hex}"))
        })?;
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

    fn lock_mark(&self, wait: bool) -> Result<Option<Box<dyn LockGuard>>, StoreError> {
        self.injected(Op::LockMark, None, "")?;
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
