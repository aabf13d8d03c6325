//! The store interface: what the receiver may do to the repository, as two capabilities.
//!
//! [`AppendStore`] is what the network service holds: it can tell which chunks are
//! missing, mark present ones in use, put a chunk under its content name, wait for a write
//! barrier, create a named metadata object if the name is free, and read and list. Nothing
//! in it removes, replaces or moves anything. [`MaintainStore`] adds what only the NAS's own
//! maintenance may do (sweep, move without replacing, remove metadata, quarantine, the mark
//! lock). The service is constructed with an `AppendStore` only, so "the network path
//! cannot delete" is a fact the compiler checks.
//!
//! The semantics are store-neutral: no mtimes, renames or directory fsyncs appear here, so
//! an object store with retention locks can implement the same traits (docs/adr/0006).

use std::collections::HashSet;
use std::time::SystemTime;

use backup_common::chunk::ChunkId;
use backup_common::durable::Published;

use crate::store::repository::RepoError;

/// A namespace of named metadata objects (a directory on disk, a key prefix in S3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// `<id>.json`: one manifest per committed snapshot.
    Snapshots,
    /// `<id>@<time>.json`: pruned manifests during their grace period.
    Trash,
    /// `<id>.json`: undeleted snapshots that prune must keep.
    Holds,
    /// `<id>.json`: operator acknowledgements.
    Acks,
    /// `<id>.json`: operator rejections.
    Rejects,
    /// `<id>.json`: passed restore drills.
    Drills,
    /// `<id>.json`: days whose second commit was refused.
    Contested,
    /// `<session>.open` / `<session>.closed`: upload sessions `serve` has open, for a
    /// garbage collection in another process.
    Leases,
    /// `<hex>[.N]`: chunks verification found damaged, moved aside.
    Quarantine,
    /// `<n>.json`: the verification schedule's state, the newest number wins.
    VerifyState,
}

impl Space {
    /// The directory (file store) or key prefix (object store) of the namespace.
    pub fn dir(self) -> &'static str {
        match self {
            Space::Snapshots => "snapshots",
            Space::Trash => "trash",
            Space::Holds => "holds",
            Space::Acks => "acks",
            Space::Rejects => "rejects",
            Space::Drills => "drills",
            Space::Contested => "contested",
            Space::Leases => "leases",
            Space::Quarantine => "quarantine",
            Space::VerifyState => "verify-state",
        }
    }
}

/// A metadata object name: no path separators, not hidden, not empty.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '\\', '\0']) && !name.starts_with('.')
}

/// What a sweep found and removed (or, dry, would remove).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub seen: u64,
    /// Unreferenced but in use at or after the cut-off: left for a later sweep.
    pub young: u64,
    pub removed: u64,
    pub removed_bytes: u64,
}

/// Held while garbage collection marks; dropping it releases the lock.
pub trait LockGuard: Send {}

/// The append capability: everything the network service may do.
pub trait AppendStore: Send + Sync + std::fmt::Debug {
    /// Whether the chunk is stored.
    fn has_chunk(&self, id: &ChunkId) -> bool;
    /// The chunks of `ids` the store does not hold.
    fn missing(&self, ids: &[ChunkId]) -> Vec<ChunkId> {
        ids.iter()
            .filter(|id| !self.has_chunk(id))
            .copied()
            .collect()
    }
    /// If the chunk is stored, records that it is in use at `at` (never moving that time
    /// back) and returns true: a sweep with an earlier cut-off leaves it alone.
    fn mark_in_use(&self, id: &ChunkId, at: SystemTime) -> bool;
    /// Stores a chunk under its content name, write-once (the caller has verified that
    /// `parts`, concatenated, is the stored form of `id`), in use at `at`. Durable under
    /// its name only after the next [`AppendStore::barrier`].
    fn put_chunk(
        &self,
        id: &ChunkId,
        parts: &[&[u8]],
        at: SystemTime,
    ) -> Result<Published, RepoError>;
    /// Makes every chunk put so far (by this store or a process before it) durable under
    /// its name; runs before a manifest refers to them.
    fn barrier(&self) -> Result<(), RepoError>;
    /// The stored form of a chunk, `None` if absent.
    fn read_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, RepoError>;
    /// Size of the stored form of a chunk.
    fn chunk_size(&self, id: &ChunkId) -> Option<u64>;
    /// Calls `visit` with every stored chunk and its stored size, in no particular order
    /// (one at a time: a repository holds millions).
    fn for_each_chunk(&self, visit: &mut dyn FnMut(ChunkId, u64)) -> Result<(), RepoError>;
    /// Creates `space/name` durably if the name is free; an existing object is left as it
    /// is and reported as [`Published::AlreadyExisted`].
    fn create_object(&self, space: Space, name: &str, bytes: &[u8])
        -> Result<Published, RepoError>;
    /// Reads `space/name`, `None` if absent.
    fn read_object(&self, space: Space, name: &str) -> Result<Option<Vec<u8>>, RepoError>;
    /// Whether `space/name` exists.
    fn has_object(&self, space: Space, name: &str) -> bool;
    /// The names in `space`, sorted.
    fn list(&self, space: Space) -> Result<Vec<String>, RepoError>;
    /// Bytes the store can still take.
    fn free_space(&self) -> Result<u64, RepoError>;
    /// Where the store is, for messages.
    fn describe(&self) -> String;
}

/// The maintain capability: the append capability plus what only the NAS's maintenance
/// (prune, gc, verify, undelete) may do. Never handed to the network service.
pub trait MaintainStore: AppendStore {
    /// Removes every chunk that `keep` rejects and whose in-use time is before `cutoff`
    /// (read again right before each removal).
    fn sweep(
        &self,
        keep: &dyn Fn(&ChunkId) -> bool,
        cutoff: SystemTime,
        dry_run: bool,
    ) -> Result<Swept, RepoError>;
    /// Removes staging left by writes that never finished, older than `before` on the
    /// store's own clock; returns how many.
    fn sweep_staging(&self, before: SystemTime, dry_run: bool) -> Result<u64, RepoError>;
    /// Moves `from/name` to `to/to_name`, never replacing: an existing target fails with
    /// [`std::io::ErrorKind::AlreadyExists`], a missing source with `NotFound`. A crash
    /// leaves the object in one place or both, never in none.
    fn move_object(
        &self,
        from: Space,
        name: &str,
        to: Space,
        to_name: &str,
    ) -> Result<(), RepoError>;
    /// Removes `space/name`; an absent object is not an error.
    fn remove_object(&self, space: Space, name: &str) -> Result<(), RepoError>;
    /// Moves a chunk into [`Space::Quarantine`] (as `<hex>` or `<hex>.N`, never replacing
    /// an earlier copy); returns the name it got.
    fn quarantine(&self, id: &ChunkId) -> Result<String, RepoError>;
    /// Takes the store's mark lock (garbage collection's mark, `undelete`), waiting for
    /// it when `wait`; `None` when it is held elsewhere and `wait` is false.
    fn lock_mark(&self, wait: bool) -> Result<Option<Box<dyn LockGuard>>, RepoError>;
}

/// The chunks a sweep must keep: a marked set.
pub fn keep_marked(marked: &HashSet<ChunkId>) -> impl Fn(&ChunkId) -> bool + '_ {
    move |id| marked.contains(id)
}
