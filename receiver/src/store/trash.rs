//! The trash: a pruned snapshot's manifest is moved (renamed, never rewritten) to
//! `REPO/trash/<id>@<prune time>.json` and stays there for `retention.trash_grace`, during
//! which its chunks are still protected from garbage collection and `undelete` brings it
//! back. Only after the grace period is the file really removed. The prune time in the
//! name is the receiver's clock; nothing here runs on a network request.

use std::io;
use std::time::Duration;

use backup_common::manifest::Manifest;
use chrono::{DateTime, NaiveDateTime, Utc};

use crate::store::backend::{valid_name, Space};
use crate::store::repository::{Maintainer, RepoError, Repository};

const TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// One pruned manifest waiting in the trash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrashEntry {
    pub id: String,
    pub pruned_at: DateTime<Utc>,
    /// The object's name in the trash.
    pub name: String,
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
    #[error("snapshot {0:?} exists already; nothing to undelete")]
    Exists(String),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

fn entry_name(id: &str, pruned_at: DateTime<Utc>) -> String {
    format!("{id}@{}.json", pruned_at.format(TIME_FORMAT))
}

fn parse_name(name: &str) -> Option<(String, DateTime<Utc>)> {
    let (id, time) = name.strip_suffix(".json")?.rsplit_once('@')?;
    let t = NaiveDateTime::parse_from_str(time, TIME_FORMAT).ok()?;
    Some((id.to_string(), t.and_utc()))
}

fn io_kind(e: &RepoError) -> Option<io::ErrorKind> {
    match e {
        RepoError::Io { source, .. } => Some(source.kind()),
        _ => None,
    }
}

/// Moves snapshot `id`'s manifest to the trash, stamped with `now`, without ever
/// replacing: a crash leaves it in one place or both (the mark reads both), never in none.
/// Returns the name it got in the trash.
pub fn move_to_trash(repo: &Maintainer, id: &str, now: DateTime<Utc>) -> Result<String, RepoError> {
    Repository::check_name(id)?;
    let to = entry_name(id, now);
    repo.maintain_store().move_object(
        Space::Snapshots,
        &format!("{id}.json"),
        Space::Trash,
        &to,
    )?;
    Ok(to)
}

/// Every manifest in the trash, oldest prune first.
pub fn entries(repo: &Repository) -> Result<Vec<TrashEntry>, RepoError> {
    let mut out = Vec::new();
    for name in repo.store().list(Space::Trash)? {
        match parse_name(&name) {
            Some((id, pruned_at)) => out.push(TrashEntry {
                id,
                pruned_at,
                name,
            }),
            None => tracing::warn!(file = ?name, "unexpected file in the trash; left alone"),
        }
    }
    out.sort_by(|a, b| (a.pruned_at, &a.id).cmp(&(b.pruned_at, &b.id)));
    Ok(out)
}

/// Reads the manifest of a trash entry; `None` when it left the trash meanwhile.
pub fn load(repo: &Repository, e: &TrashEntry) -> Result<Option<Manifest>, RepoError> {
    match repo.load_manifest_in(Space::Trash, &e.name, &e.id) {
        Ok(m) => Ok(Some(m)),
        Err(RepoError::NoSuchSnapshot(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the entries whose grace period has passed at `now`; returns them.
pub fn purge(
    repo: &Maintainer,
    now: DateTime<Utc>,
    grace: Duration,
    dry_run: bool,
) -> Result<Vec<TrashEntry>, RepoError> {
    let expired: Vec<TrashEntry> = entries(repo)?
        .into_iter()
        .filter(|e| e.expires(grace) <= now)
        .collect();
    if !dry_run {
        for e in &expired {
            // An entry another prune (CLI and schedule) removed first is no error.
            repo.maintain_store().remove_object(Space::Trash, &e.name)?;
        }
    }
    Ok(expired)
}

/// Brings a pruned snapshot back from the trash and places a hold on it, so the next
/// prune keeps it (remove `holds/<id>.json` to release it to the calendar again). Takes
/// the mark lock, so a garbage collection never marks while a manifest moves back.
pub fn undelete(repo: &Maintainer, id: &str) -> Result<TrashEntry, UndeleteError> {
    if id.contains('@') || !valid_name(id) {
        return Err(UndeleteError::NotInTrash(id.to_string()));
    }
    let store = repo.maintain_store();
    let _lock = match store.lock_mark(false)? {
        Some(l) => l,
        None => {
            tracing::warn!("garbage collection is marking; undelete waits for it to finish");
            eprintln!("garbage collection is marking; waiting for it to finish");
            store.lock_mark(true)?.expect("a waiting lock is taken")
        }
    };
    let entry = entries(repo)?
        .into_iter()
        .filter(|e| e.id == id)
        .max_by_key(|e| e.pruned_at)
        .ok_or_else(|| UndeleteError::NotInTrash(id.to_string()))?;
    let hold =
        serde_json::json!({ "snapshot": id, "reason": "undeleted", "pruned_at": entry.pruned_at });
    store.create_object(
        Space::Holds,
        &format!("{id}.json"),
        hold.to_string().as_bytes(),
    )?;
    match store.move_object(
        Space::Trash,
        &entry.name,
        Space::Snapshots,
        &format!("{id}.json"),
    ) {
        Ok(()) => Ok(entry),
        Err(e) if io_kind(&e) == Some(io::ErrorKind::AlreadyExists) => {
            Err(UndeleteError::Exists(id.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Snapshots an operator brought back with `undelete`.
pub fn is_held(repo: &Repository, id: &str) -> bool {
    valid_name(id) && repo.store().has_object(Space::Holds, &format!("{id}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let t = DateTime::parse_from_rfc3339("2026-03-01T02:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let n = entry_name("20260201T023000Z-1", t);
        assert_eq!(n, "20260201T023000Z-1@20260301T023000Z.json");
        assert_eq!(parse_name(&n), Some(("20260201T023000Z-1".to_string(), t)));
        assert_eq!(parse_name("junk.json"), None);
    }
}
