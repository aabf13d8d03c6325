//! The trash: pruning a snapshot creates a tombstone ("snapshot X pruned at T",
//! records/trash.rs) and leaves its manifest where it is; from then on the snapshot is out
//! of every listing, its chunks are still protected from garbage collection (the mark reads
//! every stored manifest), and `undelete` brings it back during `retention.trash_grace` by
//! creating an undeleted record and a hold. Only after the grace period does the purge
//! remove the manifest, then its records. Nothing is ever renamed or rewritten, so an
//! object store implements the same thing with create-only objects (docs/adr/0010).
//! Times are the receiver's clock; nothing here runs on a network request.

use std::time::Duration;

use backup_common::durable::Published;
use backup_common::manifest::Manifest;
use chrono::{DateTime, Utc};

use crate::store::backend::valid_name;
use crate::store::error::{StoreError, StoreErrorKind};
use crate::store::record::Record;
use crate::store::records::hold::Hold;
use crate::store::records::trash::{Tombstone, Undeleted};
use crate::store::repository::{Maintainer, RepoError, Repository};

/// One snapshot in the trash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrashEntry {
    pub id: String,
    pub pruned_at: DateTime<Utc>,
}

impl TrashEntry {
    /// When the grace period ends and the entry may be removed for real.
    pub fn expires(&self, grace: Duration) -> DateTime<Utc> {
        self.pruned_at + chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UndeleteError {
    #[error(
        "no snapshot {0:?} in the trash (it was never pruned, or its grace period has passed)"
    )]
    NotInTrash(String),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl From<StoreError> for UndeleteError {
    fn from(e: StoreError) -> Self {
        UndeleteError::Repo(e.into())
    }
}

/// Puts snapshot `id` in the trash at `now`. Returns false when it is not a snapshot
/// (purged, or never there) or already in the trash.
pub fn put(repo: &Maintainer, id: &str, now: DateTime<Utc>) -> Result<bool, RepoError> {
    Repository::check_name(id)?;
    if !repo.exists::<Manifest>(&id.to_string())? {
        return Ok(false);
    }
    if repo.trashed()?.contains_key(id) {
        return Ok(false);
    }
    let stone = Tombstone {
        snapshot: id.to_string(),
        pruned_at: now,
    };
    match repo.create(&stone)? {
        Published::Created => Ok(true),
        // A concurrent prune (the CLI's and the schedule's) trashed it in the same second.
        Published::AlreadyExisted if !repo.exists::<Undeleted>(&stone.key())? => Ok(false),
        // Pruned, undeleted and pruned again within one second of the receiver's clock:
        // the tombstone's name is taken by the undone one.
        Published::AlreadyExisted => Err(StoreError::new(
            StoreErrorKind::AlreadyExists,
            repo.locate::<Tombstone>(&stone.key()),
        )
        .with_detail("undeleted in this same second; prune again later")
        .into()),
    }
}

/// Every snapshot in the trash, oldest prune first.
pub fn entries(repo: &Repository) -> Result<Vec<TrashEntry>, RepoError> {
    let mut out: Vec<TrashEntry> = repo
        .trashed()?
        .into_iter()
        .map(|(id, pruned_at)| TrashEntry { id, pruned_at })
        .collect();
    out.sort_by(|a, b| (a.pruned_at, &a.id).cmp(&(b.pruned_at, &b.id)));
    Ok(out)
}

/// Removes, for good, the snapshots whose grace period has passed at `now`, and the
/// records of prunes that were undone; returns the snapshots. Under the mark lock, so an
/// `undelete` is either before (and the snapshot stays) or after (and finds nothing). The
/// manifest goes first: a crash between leaves a tombstone without a manifest, which the
/// next purge removes; never a manifest that came back to life.
pub fn purge(
    repo: &Maintainer,
    now: DateTime<Utc>,
    grace: Duration,
    dry_run: bool,
) -> Result<Vec<TrashEntry>, RepoError> {
    let expired = || -> Result<Vec<TrashEntry>, RepoError> {
        Ok(entries(repo)?
            .into_iter()
            .filter(|e| e.expires(grace) <= now)
            .collect())
    };
    if dry_run {
        return expired();
    }
    let _lock = repo.lock_mark(true)?.expect("a waiting lock is taken");
    let expired = expired()?;
    let tombstones = repo.keys::<Tombstone>()?;
    // Each is read before any is removed: a trash entry from before tombstones holds the
    // only copy of its manifest (docs/adr/0010) and must stop the purge, not go with it.
    for k in &tombstones {
        repo.read::<Tombstone>(k)?;
    }
    let undone = repo.keys::<Undeleted>()?;
    for e in &expired {
        repo.remove::<Manifest>(&e.id)?;
        for k in tombstones.iter().filter(|k| k.snapshot == e.id) {
            repo.remove::<Tombstone>(k)?;
        }
        for k in undone.iter().filter(|k| k.snapshot == e.id) {
            repo.remove::<Undeleted>(k)?;
        }
    }
    // Undone prunes of snapshots that stay, once as old as the grace period (history
    // until then): the tombstone first, so a crash leaves an inert undeleted record,
    // never a tombstone that counts again.
    let old = |k: &&crate::store::records::trash::Pruned| {
        (TrashEntry {
            id: k.snapshot.clone(),
            pruned_at: k.at,
        })
        .expires(grace)
            <= now
    };
    for k in undone
        .iter()
        .filter(old)
        .filter(|k| expired.iter().all(|e| e.id != k.snapshot))
    {
        repo.remove::<Tombstone>(k)?;
        repo.remove::<Undeleted>(k)?;
    }
    // Tombstones whose manifest is gone (a purge that crashed half-way).
    let stored: std::collections::BTreeSet<String> =
        repo.stored_snapshot_ids()?.into_iter().collect();
    for k in tombstones.iter().filter(|k| !stored.contains(&k.snapshot)) {
        repo.remove::<Tombstone>(k)?;
    }
    Ok(expired)
}

/// Brings a pruned snapshot back from the trash and places a hold on it, so the next
/// prune keeps it (remove `holds/<id>.json` to release it to the calendar again). Takes
/// the mark lock, so it never runs while a purge removes what it would bring back.
pub fn undelete(
    repo: &Maintainer,
    id: &str,
    now: DateTime<Utc>,
) -> Result<TrashEntry, UndeleteError> {
    if id.contains('@') || !valid_name(id) {
        return Err(UndeleteError::NotInTrash(id.to_string()));
    }
    let _lock = match repo.lock_mark(false)? {
        Some(l) => l,
        None => {
            tracing::warn!("garbage collection is marking; undelete waits for it to finish");
            backup_common::stderr::line("garbage collection is marking; waiting for it to finish");
            repo.lock_mark(true)?.expect("a waiting lock is taken")
        }
    };
    let pruned_at = *repo
        .trashed()?
        .get(id)
        .ok_or_else(|| UndeleteError::NotInTrash(id.to_string()))?;
    // Every tombstone still counting for it (two prunes may have raced), each read first:
    // one that is not a tombstone (a trash entry from before tombstones) stops the
    // undelete before anything is written, and so does a manifest that is not there.
    let stones: Vec<_> = repo
        .keys::<Tombstone>()?
        .into_iter()
        .filter(|k| k.snapshot == id)
        .collect();
    for k in &stones {
        repo.read::<Tombstone>(k)?;
    }
    if !repo.exists::<Manifest>(&id.to_string())? {
        return Err(UndeleteError::NotInTrash(id.to_string()));
    }
    repo.create(&Hold {
        snapshot: id.to_string(),
        reason: "undeleted".into(),
        pruned_at: Some(pruned_at),
    })?;
    for k in stones {
        repo.create(&Undeleted {
            snapshot: k.snapshot.clone(),
            pruned_at: k.at,
            undeleted_at: now,
        })?;
    }
    Ok(TrashEntry {
        id: id.to_string(),
        pruned_at,
    })
}

/// Whether an operator brought snapshot `id` back with `undelete` (and the hold stands).
pub fn is_held(repo: &Repository, id: &str) -> Result<bool, RepoError> {
    Ok(repo.exists::<Hold>(&id.to_string())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemStore;
    use backup_common::manifest::{SnapshotStats, FORMAT_VERSION};

    #[test]
    fn a_snapshot_is_trashed_once_and_an_undone_prune_of_the_same_second_is_refused() {
        let repo = Maintainer::new(MemStore::new());
        let t: DateTime<Utc> = "2026-03-01T02:30:00Z".parse().unwrap();
        let m = Manifest {
            format: FORMAT_VERSION,
            id: "s1".into(),
            time: t,
            sender_time: None,
            source_host: "vps".into(),
            peer_identity: "prod-vps".into(),
            bucket: "b".into(),
            dump: None,
            objects: vec![],
            stats: SnapshotStats::default(),
            suspect: None,
            measured: None,
        };
        assert!(repo.publish_manifest(&m).unwrap());
        assert!(!put(&repo, "s9", t).unwrap(), "no such snapshot");
        assert!(put(&repo, "s1", t).unwrap());
        assert!(!put(&repo, "s1", t).unwrap(), "in the trash already");
        assert_eq!(entries(&repo).unwrap()[0].id, "s1");
        assert!(repo.snapshot_ids().unwrap().is_empty());
        undelete(&repo, "s1", t).unwrap();
        assert_eq!(repo.snapshot_ids().unwrap(), ["s1"]);
        // The undone tombstone holds the name of a prune in the same second.
        let e = put(&repo, "s1", t).unwrap_err();
        assert!(
            e.to_string().contains("undeleted in this same second"),
            "{e}"
        );
        assert!(put(&repo, "s1", t + chrono::Duration::seconds(1)).unwrap());
        assert!(entries(&repo).unwrap().len() == 1);
    }
}
