//! The chunks the network may learn exist: those that a kept good snapshot references.
//! MissingChunks answers "present" only for these (and for chunks the asking identity
//! uploaded itself lately, [`RecentUploads`]), and a commit may reference only those, so a
//! compromised sender can
//! neither test whether a file it knows was ever backed up nor keep chunks it recorded
//! long ago alive by naming them.
//!
//! The set is rebuilt, one manifest at a time, whenever the snapshot list or a verdict
//! (ack, reject) changed; a good commit adds its chunks at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backup_common::chunk::ChunkId;
use backup_common::manifest::Manifest;

use crate::store::repository::{RepoError, Repository};
use crate::store::verdicts::{self, Acked, Contested, Rejected};

/// What the cached set was built from: snapshot ids, acks, rejects and contested days.
type Fingerprint = (Vec<String>, Vec<String>, Vec<String>, Vec<String>);

#[derive(Default)]
pub struct KnownChunks {
    cached: Mutex<Option<(Fingerprint, Arc<HashSet<ChunkId>>)>>,
}

fn fingerprint(repo: &Repository) -> Result<Fingerprint, RepoError> {
    Ok((
        repo.snapshot_ids()?,
        verdicts::ids::<Acked>(repo)?,
        verdicts::ids::<Rejected>(repo)?,
        verdicts::ids::<Contested>(repo)?,
    ))
}

impl KnownChunks {
    /// The current set (blocking: may read every manifest once).
    pub fn current(&self, repo: &Repository) -> Result<Arc<HashSet<ChunkId>>, RepoError> {
        let now = fingerprint(repo)?;
        if let Some((fp, set)) = &*self.cached.lock().unwrap() {
            if *fp == now {
                return Ok(set.clone());
            }
        }
        let mut set = HashSet::new();
        repo.try_for_each_manifest(|m| {
            if verdicts::is_good(repo, &m)? {
                set.extend(m.chunk_refs().map(|r| r.id));
            }
            Ok::<_, RepoError>(true)
        })?;
        let set = Arc::new(set);
        // Built from at least `now`; a change meanwhile makes the next call rebuild.
        *self.cached.lock().unwrap() = Some((now, set.clone()));
        Ok(set)
    }

    /// Adds the chunks of a good snapshot just published, so the set need not be rebuilt.
    pub fn committed(&self, manifest: &Manifest) {
        let mut cached = self.cached.lock().unwrap();
        let Some((fp, set)) = cached.as_mut() else {
            return;
        };
        if manifest.suspect.is_some() {
            fp.0.push(manifest.id.clone());
            fp.0.sort();
            return;
        }
        let mut grown: HashSet<ChunkId> = (**set).clone();
        grown.extend(manifest.chunk_refs().map(|r| r.id));
        *set = Arc::new(grown);
        fp.0.push(manifest.id.clone());
        fp.0.sort();
    }
}

/// Chunks each sender identity uploaded in this process within a window (GC's grace, during
/// which the chunks are safe from GC anyway): a run retried after a cut connection, or the
/// next run after an interrupted one, may name what its predecessor stored instead of
/// sending it again. Only an identity's own uploads count, so this reveals nothing it did
/// not send itself.
#[derive(Default)]
pub struct RecentUploads {
    by_identity: Mutex<HashMap<String, HashMap<ChunkId, Instant>>>,
}

impl RecentUploads {
    pub fn add(&self, identity: &str, id: ChunkId) {
        self.by_identity
            .lock()
            .unwrap()
            .entry(identity.to_string())
            .or_default()
            .insert(id, Instant::now());
    }

    /// The identity's uploads younger than `window` (older ones are forgotten).
    pub fn of(&self, identity: &str, window: Duration) -> HashSet<ChunkId> {
        let mut all = self.by_identity.lock().unwrap();
        let Some(mine) = all.get_mut(identity) else {
            return HashSet::new();
        };
        mine.retain(|_, at| at.elapsed() < window);
        mine.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backend::Space;
    use crate::store::error::StoreErrorKind;
    use crate::store::memory::{MemStore, Op};
    use backup_common::manifest::{ChunkRef, ObjectEntry, SnapshotStats, FORMAT_VERSION};

    #[test]
    fn a_verdict_that_cannot_be_read_tells_the_network_nothing() {
        let mem = MemStore::new();
        let repo = Repository::new(Arc::new(mem.clone()));
        let id = ChunkId([3; 32]);
        let m = Manifest {
            format: FORMAT_VERSION,
            id: "s1".into(),
            time: chrono::Utc::now(),
            sender_time: None,
            source_host: "vps".into(),
            peer_identity: "prod-vps".into(),
            bucket: "b".into(),
            dump: None,
            objects: vec![ObjectEntry {
                key: "k".into(),
                size: 1,
                etag: String::new(),
                hash: id,
                chunks: vec![ChunkRef { id, len: 1 }],
            }],
            stats: SnapshotStats::default(),
            suspect: None,
            measured: None,
        };
        assert!(repo.publish_manifest(&m).unwrap());
        for kind in [
            StoreErrorKind::PermissionDenied,
            StoreErrorKind::Unavailable,
        ] {
            for (op, space) in [
                (Op::HasObject, Space::Rejects),
                (Op::HasObject, Space::Contested),
                (Op::List, Space::Acks),
                (Op::List, Space::Trash),
            ] {
                mem.fail(op, Some(space), kind);
                match KnownChunks::default().current(&repo) {
                    Err(RepoError::Store(e)) => assert_eq!(e.kind(), kind),
                    other => panic!("{op:?} {space:?}: {other:?}"),
                }
                mem.heal();
            }
        }
        assert!(KnownChunks::default().current(&repo).unwrap().contains(&id));
    }
}
