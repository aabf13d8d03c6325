//! The store interface: what the receiver may do to the repository, as two capabilities.
//!
//! [`AppendStore`] is what the network service holds: it can tell which chunks are
//! missing, mark present ones in use, put a chunk under its content name, wait for a write
//! barrier, create a named metadata object if the name is free, and read and list. Nothing
//! in it removes, replaces or moves anything. [`MaintainStore`] adds what only the NAS's own
//! maintenance may do (sweep, remove metadata, quarantine, the mark lock). The service is
//! constructed with an `AppendStore` only, so "the network path cannot delete" is a fact
//! the compiler checks.
//!
//! The semantics are store-neutral: no mtimes, renames or directory fsyncs appear here, so
//! an object store with retention locks can implement the same traits (docs/adr/0006,
//! 0010). Every query returns `Result<_, StoreError>` (store/error.rs): what a store could
//! not find out is an error, never a "no".
//!
//! These traits speak in raw names; only `store/` calls them. Everything else reads and
//! writes typed records (store/record.rs), each space one record type with its own names.

use std::collections::HashSet;
use std::time::SystemTime;

use backup_common::chunk::ChunkId;
use backup_common::durable::Published;

use crate::store::error::StoreError;

/// A namespace of named metadata objects (a directory on disk, a key prefix in S3). Each
/// holds one record type (store/records/), which alone knows its names.
///
/// Adding a space: a variant here and its `dir`, then a record type in
/// `store/records/<space>.rs` implementing `Record` (see store/record.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// `<id>.json`: one manifest per committed snapshot (records/snapshot.rs), also while
    /// the snapshot is in the trash.
    Snapshots,
    /// `<id>@<time>.json`: tombstones, "snapshot id pruned at time" (records/trash.rs).
    Trash,
    /// `<id>@<time>.json`: "the tombstone id@time was undone" (records/trash.rs).
    Undeleted,
    /// `<id>.json`: undeleted snapshots that prune must keep (records/hold.rs).
    Holds,
    /// `<id>.json`: operator acknowledgements (records/verdict.rs).
    Acks,
    /// `<id>.json`: operator rejections (records/verdict.rs).
    Rejects,
    /// `<id>.json`: passed restore drills (records/verdict.rs).
    Drills,
    /// `<id>.json`: days whose second commit was refused (records/verdict.rs).
    Contested,
    /// `<session>.open` / `<session>.closed`: upload sessions `serve` has open, for a
    /// garbage collection in another process (records/lease.rs).
    Leases,
    /// `<hex>[.N]`: chunks verification found damaged, moved aside (records/quarantine.rs).
    Quarantine,
    /// `<n>.json`: the verification schedule's state, the newest number wins
    /// (records/verify_state.rs).
    VerifyState,
}

impl Space {
    /// The directory (file store) or key prefix (object store) of the namespace.
    pub fn dir(self) -> &'static str {
        match self {
            Space::Snapshots => "snapshots",
            Space::Trash => "trash",
            Space::Undeleted => "undeleted",
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
///
/// Every query can fail, and a failure never reads as an answer: `has_chunk` answers
/// `Ok(false)` only when the store says the chunk is not there, never because it could
/// not tell (after PBS's `cond_touch_chunk(…) -> Result<bool, _>`).
pub trait AppendStore: Send + Sync + std::fmt::Debug {
    /// Whether the chunk is stored.
    fn has_chunk(&self, id: &ChunkId) -> Result<bool, StoreError>;
    /// The chunks of `ids` the store does not hold, in the order given (one batched
    /// question, as bupstash's `filter_existing_chunks`; an object store answers it from
    /// a listing or its index).
    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, StoreError> {
        let mut out = Vec::new();
        for id in ids {
            if !self.has_chunk(id)? {
                out.push(*id);
            }
        }
        Ok(out)
    }
    /// If the chunk is stored, records that it is in use at `at` (never moving that time
    /// back) and returns true: a sweep with an earlier cut-off leaves it alone. False
    /// only when the chunk is not stored; a mark that could not be recorded is an error.
    fn mark_in_use(&self, id: &ChunkId, at: SystemTime) -> Result<bool, StoreError>;
    /// Stores a chunk under its content name, write-once (the caller has verified that
    /// `parts`, concatenated, is the stored form of `id`), in use at `at`. Durable under
    /// its name only after the next [`AppendStore::barrier`].
    fn put_chunk(
        &self,
        id: &ChunkId,
        parts: &[&[u8]],
        at: SystemTime,
    ) -> Result<Published, StoreError>;
    /// Makes every chunk put so far (by this store or a process before it) durable under
    /// its name; runs before a manifest refers to them.
    fn barrier(&self) -> Result<(), StoreError>;
    /// The stored form of a chunk, `None` if absent.
    fn read_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError>;
    /// Size of the stored form of a chunk, `None` if absent.
    fn chunk_size(&self, id: &ChunkId) -> Result<Option<u64>, StoreError>;
    /// Calls `visit` with every stored chunk and its stored size, in no particular order
    /// (one at a time: a repository holds millions). A chunk that cannot be looked at
    /// stops the walk with its error.
    fn for_each_chunk(&self, visit: &mut dyn FnMut(ChunkId, u64)) -> Result<(), StoreError>;
    /// Creates `space/name` durably if the name is free; an existing object is left as it
    /// is and reported as [`Published::AlreadyExisted`].
    fn create_object(
        &self,
        space: Space,
        name: &str,
        bytes: &[u8],
    ) -> Result<Published, StoreError>;
    /// Reads `space/name`, `None` if absent.
    fn read_object(&self, space: Space, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Whether `space/name` exists.
    fn has_object(&self, space: Space, name: &str) -> Result<bool, StoreError>;
    /// The names in `space`, sorted.
    fn list(&self, space: Space) -> Result<Vec<String>, StoreError>;
    /// Bytes the store can still take.
    fn free_space(&self) -> Result<u64, StoreError>;
    /// Where the store is, for messages.
    fn describe(&self) -> String;
    /// Where `space/name` is, for messages (a path, or a key).
    fn locate(&self, space: Space, name: &str) -> String {
        format!("{}/{}/{name}", self.describe(), space.dir())
    }
}

/// The maintain capability: the append capability plus what only the NAS's maintenance
/// (prune, gc, verify, undelete) may do. Never handed to the network service. Nothing in
/// it renames: an object store has no rename, so the trash is tombstone records
/// (store/trash.rs) and only `quarantine` moves anything (on S3: a marker object).
pub trait MaintainStore: AppendStore {
    /// Removes every chunk that `keep` rejects and whose in-use time is before `cutoff`
    /// (read again right before each removal).
    fn sweep(
        &self,
        keep: &dyn Fn(&ChunkId) -> bool,
        cutoff: SystemTime,
        dry_run: bool,
    ) -> Result<Swept, StoreError>;
    /// Removes staging left by writes that never finished, older than `before` on the
    /// store's own clock; returns how many.
    fn sweep_staging(&self, before: SystemTime, dry_run: bool) -> Result<u64, StoreError>;
    /// Removes `space/name`; an absent object is not an error.
    fn remove_object(&self, space: Space, name: &str) -> Result<(), StoreError>;
    /// Moves a chunk into [`Space::Quarantine`] (as `<hex>` or `<hex>.N`, never replacing
    /// an earlier copy); returns the name it got.
    fn quarantine(&self, id: &ChunkId) -> Result<String, StoreError>;
    /// Takes the store's mark lock (garbage collection's mark, `undelete`, the trash's
    /// purge), waiting for it when `wait`; `None` when it is held elsewhere and `wait` is
    /// false.
    fn lock_mark(&self, wait: bool) -> Result<Option<Box<dyn LockGuard>>, StoreError>;
}

/// The chunks a sweep must keep: a marked set.
pub fn keep_marked(marked: &HashSet<ChunkId>) -> impl Fn(&ChunkId) -> bool + '_ {
    move |id| marked.contains(id)
}
