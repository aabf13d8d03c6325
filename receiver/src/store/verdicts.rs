//! Verdicts on snapshots that come from the NAS side, never from the network: an
//! operator's acknowledgement of a suspect snapshot (`ack`), an operator's rejection of any
//! snapshot (`reject`), and a passed restore drill. Each is a write-once file:
//!
//! ```text
//! REPO/acks/<id>.json      acknowledged: a suspect snapshot counts as good
//! REPO/rejects/<id>.json   rejected: out of every decision (delta base, baseline, latest,
//!                          retention slots); kept on disk for forensics until retention
//! REPO/drills/<id>.json    the newest such snapshot is kept by retention ("drilled")
//! REPO/contested/<id>.json written by the receiver itself when a later commit of the same
//!                          day was refused by `limits.max_snapshots_per_day`: one of the
//!                          two was not the nightly job, and the receiver cannot tell
//!                          which, so the earlier one counts as suspect until acknowledged
//! ```
//!
//! The contract other modules rely on: a snapshot is *good* iff it is not rejected and
//! either not flagged by the guard or acknowledged. Only good snapshots are a delta base,
//! a guard baseline, `latest`, or the source of chunks the network may be told exist.

use std::path::PathBuf;

use backup_common::durable::Published;
use backup_common::manifest::Manifest;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::backend::{valid_name, Space};
use crate::store::repository::{json_names, RepoError, Repository};

/// The three kinds of verdict file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ack,
    Reject,
    DrillPassed,
    Contested,
}

impl Kind {
    fn space(self) -> Space {
        match self {
            Kind::Ack => Space::Acks,
            Kind::Reject => Space::Rejects,
            Kind::DrillPassed => Space::Drills,
            Kind::Contested => Space::Contested,
        }
    }
}

/// An operator's or the drill's word on one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub snapshot: String,
    pub time: DateTime<Utc>,
    pub operator: String,
    pub note: Option<String>,
}

impl Ack {
    fn new(snapshot: &str, operator: &str, note: Option<&str>, now: DateTime<Utc>) -> Ack {
        Ack {
            snapshot: snapshot.to_string(),
            time: now,
            operator: operator.to_string(),
            note: note.map(str::to_string),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("snapshot {0} is not suspect; there is nothing to acknowledge")]
    NotSuspect(String),
    #[error("snapshot {0} was rejected; a rejected snapshot cannot be acknowledged")]
    Rejected(String),
    #[error("snapshot {0} was already acknowledged ({1})")]
    AlreadyAcknowledged(String, PathBuf),
    #[error("snapshot {0} was already rejected ({1})")]
    AlreadyRejected(String, PathBuf),
}

/// The one definition of "this verdict exists": its object is in the store.
fn exists(repo: &Repository, kind: Kind, snapshot_id: &str) -> bool {
    valid_name(snapshot_id)
        && repo
            .store()
            .has_object(kind.space(), &format!("{snapshot_id}.json"))
}

/// Ids with a verdict of `kind`, sorted (for caches that must notice a new verdict).
pub fn ids(repo: &Repository, kind: Kind) -> Result<Vec<String>, RepoError> {
    Ok(json_names(repo.store().list(kind.space())?))
}

/// Where a verdict is, relative to the repository (for messages).
pub fn location(kind: Kind, snapshot_id: &str) -> PathBuf {
    PathBuf::from(kind.space().dir()).join(format!("{snapshot_id}.json"))
}

/// Where an acknowledgement is, for messages.
pub fn ack_path(repo: &Repository, snapshot_id: &str) -> PathBuf {
    PathBuf::from(repo.describe()).join(location(Kind::Ack, snapshot_id))
}

/// Where a rejection is, for messages.
pub fn reject_path(repo: &Repository, snapshot_id: &str) -> PathBuf {
    PathBuf::from(repo.describe()).join(location(Kind::Reject, snapshot_id))
}

/// Whether an operator acknowledged snapshot `snapshot_id`.
pub fn is_acknowledged(repo: &Repository, snapshot_id: &str) -> bool {
    exists(repo, Kind::Ack, snapshot_id)
}

/// Whether an operator rejected snapshot `snapshot_id`.
pub fn is_rejected(repo: &Repository, snapshot_id: &str) -> bool {
    exists(repo, Kind::Reject, snapshot_id)
}

/// Whether a refused second commit of its day contested snapshot `snapshot_id`.
pub fn is_contested(repo: &Repository, snapshot_id: &str) -> bool {
    exists(repo, Kind::Contested, snapshot_id)
}

/// Whether a drill passed on snapshot `snapshot_id`.
pub fn drill_passed(repo: &Repository, snapshot_id: &str) -> bool {
    exists(repo, Kind::DrillPassed, snapshot_id)
}

/// Flagged by the guard and not acknowledged (a rejected snapshot is not "suspect": it is
/// out of every decision, including the pin a suspect one holds).
pub fn is_suspect(repo: &Repository, manifest: &Manifest) -> bool {
    (manifest.suspect.is_some() || is_contested(repo, &manifest.id))
        && !is_acknowledged(repo, &manifest.id)
        && !is_rejected(repo, &manifest.id)
}

/// Counts as good: not rejected, and not flagged (by the guard or a contested day) or
/// acknowledged.
pub fn is_good(repo: &Repository, manifest: &Manifest) -> bool {
    !is_rejected(repo, &manifest.id)
        && ((manifest.suspect.is_none() && !is_contested(repo, &manifest.id))
            || is_acknowledged(repo, &manifest.id))
}

/// Why a snapshot is not good, for a message; `None` when it is good.
pub fn not_good_because(repo: &Repository, manifest: &Manifest) -> Option<String> {
    if is_rejected(repo, &manifest.id) {
        return Some("rejected by an operator".into());
    }
    if is_suspect(repo, manifest) {
        return Some(match &manifest.suspect {
            Some(why) => format!("suspect ({why})"),
            None => "suspect (contested: another commit of its day was refused)".into(),
        });
    }
    None
}

fn write(repo: &Repository, kind: Kind, record: &Ack) -> Result<Published, AckError> {
    let bytes = serde_json::to_vec_pretty(record).expect("verdict serializes");
    let name = format!("{}.json", record.snapshot);
    Ok(repo.store().create_object(kind.space(), &name, &bytes)?)
}

/// Acknowledges a suspect snapshot (`name` is an id; `latest` means the newest snapshot,
/// good or not, since that is what an operator acknowledges after a flagged night).
pub fn acknowledge(
    repo: &Repository,
    name: &str,
    operator: &str,
    note: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Ack, AckError> {
    let manifest = repo.resolve_any(name)?;
    if is_rejected(repo, &manifest.id) {
        return Err(AckError::Rejected(manifest.id));
    }
    if manifest.suspect.is_none() && !is_contested(repo, &manifest.id) {
        return Err(AckError::NotSuspect(manifest.id));
    }
    let ack = Ack::new(&manifest.id, operator, note, now);
    match write(repo, Kind::Ack, &ack)? {
        Published::Created => Ok(ack),
        Published::AlreadyExisted => Err(AckError::AlreadyAcknowledged(
            manifest.id.clone(),
            ack_path(repo, &manifest.id),
        )),
    }
}

/// Rejects a snapshot (suspect or not; `name` is an id): from now on it is no delta base,
/// baseline or `latest`, takes no retention slot and pins nothing.
pub fn reject(
    repo: &Repository,
    name: &str,
    operator: &str,
    note: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Ack, AckError> {
    if name == "latest" {
        // "latest" is a good snapshot by definition; rejecting needs the id in front of you.
        return Err(AckError::Repo(RepoError::NoSuchSnapshot(
            "latest (give the snapshot id; `backup-receiver snapshots` lists them)".into(),
        )));
    }
    let manifest = repo.resolve_any(name)?;
    let record = Ack::new(&manifest.id, operator, note, now);
    match write(repo, Kind::Reject, &record)? {
        Published::Created => Ok(record),
        Published::AlreadyExisted => Err(AckError::AlreadyRejected(
            manifest.id.clone(),
            reject_path(repo, &manifest.id),
        )),
    }
}

/// Marks `snapshot_id` contested (a second commit of its day was refused), write-once.
pub fn contest(
    repo: &Repository,
    snapshot_id: &str,
    note: &str,
    now: DateTime<Utc>,
) -> Result<(), AckError> {
    write(
        repo,
        Kind::Contested,
        &Ack::new(snapshot_id, "receiver", Some(note), now),
    )
    .map(drop)
}

/// Records that a drill passed on `snapshot_id` (a second pass keeps the first record).
pub fn record_drill_passed(
    repo: &Repository,
    snapshot_id: &str,
    note: &str,
    now: DateTime<Utc>,
) -> Result<(), AckError> {
    write(
        repo,
        Kind::DrillPassed,
        &Ack::new(snapshot_id, "drill", Some(note), now),
    )
    .map(drop)
}

/// Choosing snapshots by their verdicts. Here, not in repository.rs, so the repository does
/// not depend on its verdicts (they depend on it).
impl Repository {
    /// Resolves a snapshot name for an operator: an id (any status), or `latest` for the
    /// newest good snapshot. With `allow_suspect` false, a snapshot that is not good (the
    /// guard flagged it and nobody acknowledged it, or an operator rejected it) is refused
    /// with the reason; the caller says so when it is allowed.
    pub fn resolve(&self, name: &str, allow_suspect: bool) -> Result<Manifest, RepoError> {
        if name == "latest" {
            return self.latest_good()?.ok_or_else(|| {
                if self.snapshot_ids().is_ok_and(|ids| ids.is_empty()) {
                    RepoError::Empty
                } else {
                    RepoError::NoGoodSnapshot
                }
            });
        }
        Self::check_name(name)?;
        let m = self.load_manifest(name)?;
        if !allow_suspect {
            if let Some(why) = not_good_because(self, &m) {
                return Err(RepoError::NotGood { id: m.id, why });
            }
        }
        Ok(m)
    }

    /// Resolves an id, or `latest` for the newest snapshot whatever its status (what `ack`
    /// acknowledges after a flagged night).
    pub fn resolve_any(&self, name: &str) -> Result<Manifest, RepoError> {
        if name == "latest" {
            let ids = self.snapshot_ids()?;
            let newest = ids.last().ok_or(RepoError::Empty)?;
            return self.load_manifest(newest);
        }
        Self::check_name(name)?;
        self.load_manifest(name)
    }

    /// The newest good snapshot (see this module): the base for the next delta, the
    /// guard's baseline, and `latest`.
    pub fn latest_good(&self) -> Result<Option<Manifest>, RepoError> {
        let mut found = None;
        self.for_each_manifest_newest_first(|m| {
            if is_good(self, &m) {
                found = Some(m);
                return false;
            }
            true
        })?;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backup_common::manifest::{SnapshotStats, FORMAT_VERSION};

    fn snap(id: &str, suspect: Option<&str>) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            id: id.into(),
            time: Utc::now(),
            sender_time: None,
            source_host: "vps".into(),
            peer_identity: "prod-vps".into(),
            bucket: "b".into(),
            dump: None,
            objects: vec![],
            stats: SnapshotStats::default(),
            suspect: suspect.map(str::to_string),
            measured: None,
        }
    }

    #[test]
    fn acks_are_write_once_and_make_a_snapshot_good() {
        let d = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_init(d.path()).unwrap();
        let good = snap("20260101T000000Z", None);
        let bad = snap("20260102T000000Z", Some("empty"));
        assert!(repo.publish_manifest(&good).unwrap());
        assert!(repo.publish_manifest(&bad).unwrap());
        assert_eq!(repo.latest_good().unwrap().unwrap().id, good.id);
        assert!(is_suspect(&repo, &bad));
        assert!(matches!(
            acknowledge(&repo, &good.id, "op", None, Utc::now()),
            Err(AckError::NotSuspect(_))
        ));
        let ack = acknowledge(
            &repo,
            "latest",
            "op",
            Some("bucket emptied on purpose"),
            Utc::now(),
        )
        .unwrap();
        assert_eq!(ack.snapshot, bad.id);
        assert!(is_acknowledged(&repo, &bad.id));
        assert!(!is_suspect(&repo, &bad));
        assert_eq!(repo.latest_good().unwrap().unwrap().id, bad.id);
        assert!(matches!(
            acknowledge(&repo, &bad.id, "op", None, Utc::now()),
            Err(AckError::AlreadyAcknowledged(..))
        ));
        assert!(!is_acknowledged(&repo, "../snapshots/20260102T000000Z"));
    }

    #[test]
    fn a_rejected_snapshot_is_out_of_every_decision() {
        let d = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_init(d.path()).unwrap();
        let first = snap("20260101T000000Z", None);
        let attacker = snap("20260102T000000Z", None);
        let flagged = snap("20260103T000000Z", Some("inflated"));
        for m in [&first, &attacker, &flagged] {
            assert!(repo.publish_manifest(m).unwrap());
        }
        assert_eq!(repo.latest_good().unwrap().unwrap().id, attacker.id);
        assert!(reject(&repo, "latest", "op", None, Utc::now()).is_err());
        reject(&repo, &attacker.id, "op", Some("not ours"), Utc::now()).unwrap();
        assert!(!is_good(&repo, &attacker));
        assert_eq!(repo.latest_good().unwrap().unwrap().id, first.id);
        assert!(matches!(
            reject(&repo, &attacker.id, "op", None, Utc::now()),
            Err(AckError::AlreadyRejected(..))
        ));
        reject(&repo, &flagged.id, "op", None, Utc::now()).unwrap();
        assert!(!is_suspect(&repo, &flagged), "rejected: pins nothing");
        assert!(matches!(
            acknowledge(&repo, &flagged.id, "op", None, Utc::now()),
            Err(AckError::Rejected(_))
        ));
        assert_eq!(
            ids(&repo, Kind::Reject).unwrap(),
            vec![attacker.id.clone(), flagged.id.clone()]
        );
    }
}
