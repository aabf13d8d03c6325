//! Garbage collection, in two phases on the receiver's own clock (after Proxmox Backup
//! Server): mark every chunk that any manifest in `snapshots/` or `trash/` references, then
//! sweep only chunks that are unmarked AND whose mtime is older than a cut-off. Upload
//! sessions set a chunk's mtime when they store it and move it forward when they find it
//! already present (MissingChunks), so a cut-off before the oldest live session (and
//! `retention.gc_grace` back, for abandoned sessions that may resume) protects every chunk
//! a not-yet-committed snapshot may reference. No lock is taken: backups keep running.
//! It never runs on a network request.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use backup_common::chunk::ChunkId;
use backup_common::durable;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::repository::{RepoError, Repository};
use crate::store::trash;
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

/// The mark phase: every chunk id some manifest (kept or in the trash) references, read one
/// manifest at a time. Snapshots are listed, then the trash, then the snapshots again: a
/// manifest an `undelete` moves back while we read the trash is caught by the second
/// listing, one a prune moves to the trash was read in the first. A manifest that vanishes
/// mid-read makes us start over; an unreadable one stops the collection.
pub fn mark(repo: &Repository) -> Result<(HashSet<ChunkId>, u64), RepoError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = (|| {
            let mut set = HashSet::new();
            let mut seen = HashSet::new();
            for id in repo.snapshot_ids()? {
                let m = repo.load_manifest(&id)?;
                set.extend(m.chunk_refs().map(|r| r.id));
                seen.insert(id);
            }
            let trashed = trash::manifests(repo)?;
            let mut count = seen.len() as u64 + trashed.len() as u64;
            for m in &trashed {
                set.extend(m.chunk_refs().map(|r| r.id));
            }
            drop(trashed);
            for id in repo.snapshot_ids()? {
                if !seen.contains(&id) {
                    let m = repo.load_manifest(&id)?;
                    set.extend(m.chunk_refs().map(|r| r.id));
                    count += 1;
                }
            }
            Ok((set, count))
        })();
        match result {
            Err(RepoError::NoSuchSnapshot(_)) if attempt < 5 => continue,
            other => return other,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RepoError + '_ {
    move |source| RepoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn mtime(path: &Path) -> io::Result<SystemTime> {
    fs::metadata(path)?.modified()
}

/// Marks, then sweeps chunks that are unreferenced and older than `cutoff`.
/// `tmp_cutoff` (wall clock) bounds the staging files it removes from `tmp/`.
pub fn collect(
    repo: &Repository,
    cutoff: SystemTime,
    tmp_cutoff: SystemTime,
    dry_run: bool,
) -> Result<GcReport, RepoError> {
    let (marked, manifests) = mark(repo)?;
    let mut report = GcReport {
        manifests,
        referenced_chunks: marked.len() as u64,
        dry_run,
        ..GcReport::default()
    };
    let chunks = repo.chunks_dir();
    let mut dirs: Vec<_> = fs::read_dir(&chunks)
        .map_err(io_err(&chunks))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let mut removed_here = false;
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| ChunkId::from_hex(n).ok())
            else {
                continue; // not a chunk: not ours to remove
            };
            report.chunks_seen += 1;
            if marked.contains(&id) {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if meta.modified().map_or(true, |t| t >= cutoff) {
                report.young_unreferenced += 1;
                continue;
            }
            if !dry_run {
                // Read the mtime again right before removing: a session may have just
                // found this chunk present and touched it.
                if mtime(&path).map_or(true, |t| t >= cutoff) {
                    report.young_unreferenced += 1;
                    continue;
                }
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(RepoError::Io { path, source }),
                }
                removed_here = true;
            }
            report.removed_chunks += 1;
            report.removed_bytes += meta.len();
            if !dry_run {
                testhook::pause(testhook::GC_AFTER_FIRST_REMOVE);
            }
        }
        if removed_here {
            durable::sync_dir(&dir).map_err(io_err(&dir))?;
        }
    }
    // Staging files carry the receiver clock's mtime, so their age is read from the
    // ctime, which only the kernel sets.
    let tmp = repo.tmp_dir();
    for entry in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
        let entry = entry.map_err(io_err(&tmp))?;
        let path = entry.path();
        let changed = fs::metadata(&path)
            .map(|m| SystemTime::UNIX_EPOCH + Duration::from_secs(m.ctime().max(0) as u64));
        if path.is_file() && changed.is_ok_and(|t| t < tmp_cutoff) {
            if !dry_run {
                let _ = fs::remove_file(&path);
            }
            report.removed_tmp_files += 1;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use backup_common::chunk::ChunkId;
    use backup_common::manifest::{ChunkRef, Manifest, ObjectEntry, SnapshotStats, FORMAT_VERSION};

    fn chunk(repo: &Repository, data: &[u8], at: SystemTime) -> ChunkId {
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
        let repo = Repository::open_or_init(d.path()).unwrap();
        let now = SystemTime::now();
        let old = now - Duration::from_secs(3 * 86400);
        let kept = chunk(&repo, b"kept", old);
        let trashed = chunk(&repo, b"in trash", old);
        let garbage = chunk(&repo, b"garbage", old);
        let young = chunk(&repo, b"young, maybe an open session", now);
        repo.publish_manifest(&manifest("s1", &[kept])).unwrap();
        repo.publish_manifest(&manifest("s2", &[trashed])).unwrap();
        trash::move_to_trash(&repo, "s2", Utc::now()).unwrap();
        let cut = cutoff(Utc::now(), Duration::from_secs(48 * 3600), None);

        let dry = collect(&repo, cut, cut, true).unwrap();
        assert_eq!((dry.removed_chunks, dry.young_unreferenced), (1, 1));
        assert!(repo.has_chunk(&garbage), "dry run removes nothing");

        let r = collect(&repo, cut, cut, false).unwrap();
        assert_eq!(r.manifests, 2);
        assert_eq!(r.referenced_chunks, 2);
        assert_eq!(r.removed_chunks, 1);
        assert_eq!(r.removed_bytes, 1 + b"garbage".len() as u64);
        assert!(!repo.has_chunk(&garbage));
        for id in [kept, trashed, young] {
            assert!(repo.has_chunk(&id));
        }
        // Touching (a session found it present) protects an old chunk.
        let stale = chunk(&repo, b"stale but reused", old);
        assert!(repo.touch_chunk(&stale, now));
        assert_eq!(collect(&repo, cut, cut, false).unwrap().removed_chunks, 0);
        // An open session that started before the grace window holds the cut-off back.
        let early = Utc::now() - chrono::Duration::days(4);
        assert_eq!(
            cutoff(Utc::now(), Duration::from_secs(3600), Some(early)),
            SystemTime::from(early)
        );
    }
}
