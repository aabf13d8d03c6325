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

use crate::store::records::verdict::VerdictKind;
pub use crate::store::records::verdict::{Ack, Acked, Contested, Drilled, Rejected, Verdict};
use crate::store::repository::{Maintainer, RepoError, Repository};

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

impl From<crate::store::error::StoreError> for AckError {
    fn from(e: crate::store::error::StoreError) -> Self {
        AckError::Repo(e.into())
    }
}

/// The one definition of "this verdict exists": its record is in the store. A store that
/// cannot tell is an error, never a "no".
fn exists<K: VerdictKind>(repo: &Repository, snapshot_id: &str) -> Result<bool, RepoError> {
    Ok(repo.exists::<Verdict<K>>(&snapshot_id.to_string())?)
}

/// Ids with a verdict of kind `K`, sorted (for caches that must notice a new verdict).
pub fn ids<K: VerdictKind>(repo: &Repository) -> Result<Vec<String>, RepoError> {
    Ok(repo.keys::<Verdict<K>>()?)
}

/// Where an acknowledgement is, for messages.
pub fn ack_path(repo: &Repository, snapshot_id: &str) -> PathBuf {
    PathBuf::from(repo.locate::<Verdict<Acked>>(&snapshot_id.to_string()))
}

/// Where a rejection is, for messages.
pub fn reject_path(repo: &Repository, snapshot_id: &str) -> PathBuf {
    PathBuf::from(repo.locate::<Verdict<Rejected>>(&snapshot_id.to_string()))
}

/// Whether an operator acknowledged snapshot `snapshot_id`.
pub fn is_acknowledged(repo: &Repository, snapshot_id: &str) -> Result<bool, RepoError> {
    exists::<Acked>(repo, snapshot_id)
}

/// Whether an operator rejected snapshot `snapshot_id`.
pub fn is_rejected(repo: &Repository, snapshot_id: &str) -> Result<bool, RepoError> {
    exists::<Rejected>(repo, snapshot_id)
}

/// Whether a refused second commit of its day contested snapshot `snapshot_id`.
pub fn is_contested(repo: &Repository, snapshot_id: &str) -> Result<bool, RepoError> {
    exists::<Contested>(repo, snapshot_id)
}

/// Whether a drill passed on snapshot `snapshot_id`.
pub fn drill_passed(repo: &Repository, snapshot_id: &str) -> Result<bool, RepoError> {
    exists::<Drilled>(repo, snapshot_id)
}

/// Flagged by the guard and not acknowledged (a rejected snapshot is not "suspect": it is
/// out of every decision, including the pin a suspect one holds).
pub fn is_suspect(repo: &Repository, manifest: &Manifest) -> Result<bool, RepoError> {
    Ok(
        (manifest.suspect.is_some() || is_contested(repo, &manifest.id)?)
            && !is_acknowledged(repo, &manifest.id)?
            && !is_rejected(repo, &manifest.id)?,
    )
}

/// Counts as good: not rejected, and not flagged (by the guard or a contested day) or
/// acknowledged. Every verdict it needs is read; one that cannot be is an error, so no
/// snapshot becomes good on a store that could not say.
pub fn is_good(repo: &Repository, manifest: &Manifest) -> Result<bool, RepoError> {
    Ok(!is_rejected(repo, &manifest.id)?
        && ((manifest.suspect.is_none() && !is_contested(repo, &manifest.id)?)
            || is_acknowledged(repo, &manifest.id)?))
}

/// Why a snapshot is not good, for a message; `None` when it is good.
pub fn not_good_because(
    repo: &Repository,
    manifest: &Manifest,
) -> Result<Option<String>, RepoError> {
    if is_rejected(repo, &manifest.id)? {
        return Ok(Some("rejected by an operator".into()));
    }
    if is_suspect(repo, manifest)? {
        return Ok(Some(match &manifest.suspect {
            Some(why) => format!("suspect ({why})"),
            None => "suspect (contested: another commit of its day was refused)".into(),
        }));
    }
    Ok(None)
}

/// Acknowledges a suspect snapshot (`name` is an id; `latest` means the newest snapshot,
/// good or not, since that is what an operator acknowledges after a flagged night).
pub fn acknowledge(
    repo: &Maintainer,
    name: &str,
    operator: &str,
    note: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Ack, AckError> {
    let manifest = repo.resolve_any(name)?;
    if is_rejected(repo, &manifest.id)? {
        return Err(AckError::Rejected(manifest.id));
    }
    if manifest.suspect.is_none() && !is_contested(repo, &manifest.id)? {
        return Err(AckError::NotSuspect(manifest.id));
    }
    let ack = Ack::new(&manifest.id, operator, note, now);
    match repo.create(&Verdict::<Acked>::new(ack.clone()))? {
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
    repo: &Maintainer,
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
    match repo.create(&Verdict::<Rejected>::new(record.clone()))? {
        Published::Created => Ok(record),
        Published::AlreadyExisted => Err(AckError::AlreadyRejected(
            manifest.id.clone(),
            reject_path(repo, &manifest.id),
        )),
    }
}

/// Marks `snapshot_id` contested (a second commit of its day was refused), write-once.
/// Written by `serve`, so through the append capability.
pub fn contest(
    repo: &Repository,
    snapshot_id: &str,
    note: &str,
    now: DateTime<Utc>,
) -> Result<(), AckError> {
    let record = Verdict::<Contested>::new(Ack::new(snapshot_id, "receiver", Some(note), now));
    repo.create(&record)?;
    Ok(())
}

/// Records that a drill passed on `snapshot_id` (a second pass keeps the first record).
pub fn record_drill_passed(
    repo: &Maintainer,
    snapshot_id: &str,
    note: &str,
    now: DateTime<Utc>,
) -> Result<(), AckError> {
    let record = Verdict::<Drilled>::new(Ack::new(snapshot_id, "drill", Some(note), now));
    repo.create(&record)?;
    Ok(())
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
            return match self.latest_good()? {
                Some(m) => Ok(m),
                None if self.snapshot_ids()?.is_empty() => Err(RepoError::Empty),
                None => Err(RepoError::NoGoodSnapshot),
            };
        }
        Self::check_name(name)?;
        let m = self.load_manifest(name)?;
        if !allow_suspect {
            if let Some(why) = not_good_because(self, &m)? {
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
        // A verdict that cannot be read stops the choice: an older snapshot is not
        // `latest` because a newer one's rejection could not be read.
        self.try_for_each_manifest_newest_first(|m| {
            if is_good(self, &m)? {
                found = Some(m);
                return Ok::<_, RepoError>(false);
            }
            Ok(true)
        })?;
        Ok(found)
    }
}

#[cfg(test)]
mod tests;
