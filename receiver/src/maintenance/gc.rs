//! Garbage collection, in two phases on the receiver's own clock (after Proxmox Backup
//! Server): mark every chunk that any stored manifest (kept or in the trash) references,
//! then sweep only chunks that are unmarked AND not in use since a cut-off. Upload sessions
//! mark a chunk in use when they store it and again when they find it already present
//! (MissingChunks), so a cut-off before the oldest live session (`serve`'s own, and every
//! live session lease in the store, for a `gc` run from the CLI) and `retention.gc_grace`
//! back (for abandoned sessions that may resume) protects every chunk a not-yet-committed
//! snapshot may reference. Backups keep running; the mark holds the store's mark lock,
//! which `undelete` takes too. It never runs on a network request.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use backup_common::chunk::ChunkId;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::backend::keep_marked;
use crate::store::leases;
use crate::store::records::trash::Tombstone;
use crate::store::repository::{Maintainer, RepoError, Repository};
use crate::testhook;

/// What a collection found and freed (or, dry, would free).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct GcReport {
    pub manifests: u64,
    pub referenced_chunks: u64,
    pub chunks_seen: u64,
    /// Unreferenced but younger than the cut-off: left for a later run.
    pub young_unreferenced: u64,
    pub removed_chunks: u64,
    pub removed_bytes: u64,
    /// Leftover staging files of crashed writes.
    pub removed_tmp_files: u64,
    pub dry_run: bool,
}

/// The sweep cut-off: `gc_grace` before `now`, and never after the start of the oldest
/// upload session that is still open.
pub fn cutoff(
    now: DateTime<Utc>,
    gc_grace: Duration,
    oldest_session: Option<DateTime<Utc>>,
) -> SystemTime {
    let mut t = now - chrono::Duration::from_std(gc_grace).unwrap_or(chrono::Duration::MAX);
    if let Some(s) = oldest_session {
        t = t.min(s);
    }
    SystemTime::from(t)
}

/// The cut-off of [`cutoff`], held back further by the oldest live session lease in the
/// store (sessions `serve` has open, seen from any process).
pub fn cutoff_with_leases(
    repo: &Repository,
    now: DateTime<Utc>,
    gc_grace: Duration,
    oldest_session: Option<DateTime<Utc>>,
) -> Result<SystemTime, RepoError> {
    let leased = leases::oldest_live(repo, now)?;
    let oldest = match (oldest_session, leased) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(cutoff(now, gc_grace, oldest))
}

/// The mark phase: every chunk id some stored manifest references (a snapshot in the
/// trash keeps its manifest where it is until the purge), read one manifest at a time,
/// under the store's mark lock, which the purge takes too: a manifest is removed only
/// before or after a mark, never while one reads. An unreadable one stops the collection:
/// nothing is swept on a mark that could not read everything.
pub fn mark(repo: &Maintainer) -> Result<(HashSet<ChunkId>, u64), RepoError> {
    let _lock = repo.lock_mark(true)?.expect("a waiting lock is taken");
    let mut set = HashSet::new();
    let mut count = 0;
    for id in repo.stored_snapshot_ids()? {
        match repo.load_stored_manifest(&id) {
            Ok(m) => {
                set.extend(m.chunk_refs().map(|r| r.id));
                count += 1;
            }
            Err(RepoError::NoSuchSnapshot(_)) => continue, // purged before the lock
            Err(e) => return Err(e),
        }
    }
    // Every tombstone must be one: a trash entry of a receiver before tombstones holds the
    // whole manifest (docs/adr/0010), and its chunks would be swept unmarked.
    for k in repo.keys::<Tombstone>()? {
        repo.read::<Tombstone>(&k)?;
    }
    testhook::pause(testhook::GC_MARK_DONE);
    Ok((set, count))
}

/// Marks, then sweeps chunks that are unreferenced and not in use since `cutoff`.
/// `tmp_cutoff` (wall clock) bounds the staging it removes.
pub fn collect(
    repo: &Maintainer,
    cutoff: SystemTime,
    tmp_cutoff: SystemTime,
    dry_run: bool,
) -> Result<GcReport, RepoError> {
    let (marked, manifests) = mark(repo)?;
    let swept = repo.sweep(&keep_marked(&marked), cutoff, dry_run)?;
    let removed_tmp_files = repo.sweep_staging(tmp_cutoff, dry_run)?;
    Ok(GcReport {
        manifests,
        referenced_chunks: marked.len() as u64,
        chunks_seen: swept.seen,
        young_unreferenced: swept.young,
        removed_chunks: swept.removed,
        removed_bytes: swept.removed_bytes,
        removed_tmp_files,
        dry_run,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::trash;
    use backup_common::chunk::ChunkId;
    use backup_common::manifest::{ChunkRef, Manifest, ObjectEntry, SnapshotStats, FORMAT_VERSION};

    fn chunk(repo: &Maintainer, data: &[u8], at: SystemTime) -> ChunkId {
        let id = ChunkId(*blake3::hash(data).as_bytes());
        repo.put_chunk_at(&id, false, data, at).unwrap();
        id
    }

    fn manifest(id: &str, chunks: &[ChunkId]) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            id: id.into(),
            time: Utc::now(),
            sender_time: None,
            source_host: "t".into(),
            peer_identity: "t".into(),
            bucket: "b".into(),
            dump: None,
            objects: vec![ObjectEntry {
                key: "k".into(),
                size: 0,
                etag: String::new(),
                hash: chunks[0],
                chunks: chunks.iter().map(|&id| ChunkRef { id, len: 1 }).collect(),
            }],
            stats: SnapshotStats::default(),
            suspect: None,
            measured: None,
        }
    }

    #[test]
    fn sweeps_only_old_unreferenced_chunks_and_keeps_trash_references() {
        let d = tempfile::tempdir().unwrap();
        let repo = crate::store::open::create_or_open(d.path()).unwrap();
        let now = SystemTime::now();
        let old = now - Duration::from_secs(3 * 86400);
        let kept = chunk(&repo, b"kept", old);
        let trashed = chunk(&repo, b"in trash", old);
        let garbage = chunk(&repo, b"garbage", old);
        let young = chunk(&repo, b"young, maybe an open session", now);
        repo.publish_manifest(&manifest("s1", &[kept])).unwrap();
        repo.publish_manifest(&manifest("s2", &[trashed])).unwrap();
        assert!(trash::put(&repo, "s2", Utc::now()).unwrap());
        let cut = cutoff(Utc::now(), Duration::from_secs(48 * 3600), None);

        let dry = collect(&repo, cut, cut, true).unwrap();
        assert_eq!((dry.removed_chunks, dry.young_unreferenced), (1, 1));
        assert!(repo.has_chunk(&garbage).unwrap(), "dry run removes nothing");

        let r = collect(&repo, cut, cut, false).unwrap();
        assert_eq!(r.manifests, 2);
        assert_eq!(r.referenced_chunks, 2);
        assert_eq!(r.removed_chunks, 1);
        assert_eq!(r.removed_bytes, 1 + b"garbage".len() as u64);
        assert!(!repo.has_chunk(&garbage).unwrap());
        for id in [kept, trashed, young] {
            assert!(repo.has_chunk(&id).unwrap());
        }
        // Touching (a session found it present) protects an old chunk.
        let stale = chunk(&repo, b"stale but reused", old);
        assert!(repo.touch_chunk(&stale, now).unwrap());
        assert_eq!(collect(&repo, cut, cut, false).unwrap().removed_chunks, 0);
        // An open session that started before the grace window holds the cut-off back.
        let early = Utc::now() - chrono::Duration::days(4);
        assert_eq!(
            cutoff(Utc::now(), Duration::from_secs(3600), Some(early)),
            SystemTime::from(early)
        );
    }

    #[test]
    fn the_memory_store_collects_alike_and_the_mark_lock_keeps_undelete_out() {
        use crate::store::memory::MemStore;
        let repo = Maintainer::new(MemStore::new());
        let now = SystemTime::now();
        let old = now - Duration::from_secs(3 * 86400);
        let kept = chunk(&repo, b"kept", old);
        let trashed = chunk(&repo, b"in trash", old);
        let garbage = chunk(&repo, b"garbage", old);
        let young = chunk(&repo, b"young", now);
        repo.publish_manifest(&manifest("s1", &[kept])).unwrap();
        repo.publish_manifest(&manifest("s2", &[trashed])).unwrap();
        assert!(trash::put(&repo, "s2", Utc::now()).unwrap());
        let cut = cutoff(Utc::now(), Duration::from_secs(48 * 3600), None);

        // While a mark holds the lock, an undelete cannot take it.
        let marking = repo.lock_mark(true).unwrap().unwrap();
        assert!(repo.lock_mark(false).unwrap().is_none());
        drop(marking);

        let r = collect(&repo, cut, cut, false).unwrap();
        assert_eq!((r.manifests, r.referenced_chunks), (2, 2));
        assert_eq!((r.removed_chunks, r.young_unreferenced), (1, 1));
        assert!(!repo.has_chunk(&garbage).unwrap());
        for id in [kept, trashed, young] {
            assert!(repo.has_chunk(&id).unwrap());
        }
        // Undelete brings the snapshot back (nothing moves); its chunks stay marked.
        trash::undelete(&repo, "s2", Utc::now()).unwrap();
        assert!(trash::entries(&repo).unwrap().is_empty());
        assert_eq!(collect(&repo, cut, cut, false).unwrap().removed_chunks, 0);
        assert!(repo.has_chunk(&trashed).unwrap());
    }
}
