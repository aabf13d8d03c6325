//! The trash: a pruned snapshot's manifest is moved (renamed, never rewritten) to
//! `REPO/trash/<id>@<prune time>.json` and stays there for `retention.trash_grace`, during
//! which its chunks are still protected from garbage collection and `undelete` brings it
//! back. Only after the grace period is the file really removed. The prune time in the
//! name is the receiver's clock; nothing here runs on a network request.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backup_common::durable;
use backup_common::manifest::Manifest;
use chrono::{DateTime, NaiveDateTime, Utc};

use crate::store::repository::{RepoError, Repository};

const TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// One pruned manifest waiting in the trash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrashEntry {
    pub id: String,
    pub pruned_at: DateTime<Utc>,
    pub path: PathBuf,
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

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RepoError + '_ {
    move |source| RepoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn entry_name(id: &str, pruned_at: DateTime<Utc>) -> String {
    format!("{id}@{}.json", pruned_at.format(TIME_FORMAT))
}

fn parse_name(name: &str) -> Option<(String, DateTime<Utc>)> {
    let (id, time) = name.strip_suffix(".json")?.rsplit_once('@')?;
    let t = NaiveDateTime::parse_from_str(time, TIME_FORMAT).ok()?;
    Some((id.to_string(), t.and_utc()))
}

/// Moves `snapshots/<id>.json` to the trash, stamped with `now`. The rename is atomic: a
/// crash leaves the manifest in exactly one of the two places.
pub fn move_to_trash(
    repo: &Repository,
    id: &str,
    now: DateTime<Utc>,
) -> Result<PathBuf, RepoError> {
    let trash = repo.trash_dir();
    durable::create_private_dir_all(&trash).map_err(io_err(&trash))?;
    let from = repo.snapshots_dir().join(format!("{id}.json"));
    let to = trash.join(entry_name(id, now));
    if to.exists() {
        // A concurrent prune (the CLI and `serve`'s schedule) moved it this very second.
        let kind = if from.exists() {
            io::ErrorKind::AlreadyExists
        } else {
            io::ErrorKind::NotFound
        };
        return Err(RepoError::Io {
            path: to,
            source: io::Error::from(kind),
        });
    }
    fs::rename(&from, &to).map_err(io_err(&from))?;
    durable::sync_dir(&trash).map_err(io_err(&trash))?;
    durable::sync_dir(&repo.snapshots_dir()).map_err(io_err(&from))?;
    Ok(to)
}

/// Every manifest in the trash, oldest prune first.
pub fn entries(repo: &Repository) -> Result<Vec<TrashEntry>, RepoError> {
    let dir = repo.trash_dir();
    let read = match fs::read_dir(&dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(RepoError::Io { path: dir, source }),
    };
    let mut out = Vec::new();
    for e in read {
        let e = e.map_err(io_err(&dir))?;
        let name = e.file_name();
        match name.to_str().and_then(parse_name) {
            Some((id, pruned_at)) => out.push(TrashEntry {
                id,
                pruned_at,
                path: e.path(),
            }),
            None => tracing::warn!(file = ?name, "unexpected file in the trash; left alone"),
        }
    }
    out.sort_by(|a, b| (a.pruned_at, &a.id).cmp(&(b.pruned_at, &b.id)));
    Ok(out)
}

/// The manifests in the trash (garbage collection keeps their chunks).
pub fn manifests(repo: &Repository) -> Result<Vec<Manifest>, RepoError> {
    entries(repo)?
        .iter()
        .map(|e| repo.load_manifest_at(&e.path, &e.id))
        .collect()
}

/// Removes the entries whose grace period has passed at `now`; returns them.
pub fn purge(
    repo: &Repository,
    now: DateTime<Utc>,
    grace: Duration,
    dry_run: bool,
) -> Result<Vec<TrashEntry>, RepoError> {
    let expired: Vec<TrashEntry> = entries(repo)?
        .into_iter()
        .filter(|e| e.expires(grace) <= now)
        .collect();
    if !dry_run && !expired.is_empty() {
        for e in &expired {
            match fs::remove_file(&e.path) {
                Ok(()) => {}
                // Another prune (CLI and schedule) got there first.
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(RepoError::Io {
                        path: e.path.clone(),
                        source,
                    })
                }
            }
        }
        durable::sync_dir(&repo.trash_dir()).map_err(io_err(&repo.trash_dir()))?;
    }
    Ok(expired)
}

/// Brings a pruned snapshot back from the trash and places a hold on it, so the next
/// prune keeps it (remove `holds/<id>.json` to release it to the calendar again).
pub fn undelete(repo: &Repository, id: &str) -> Result<TrashEntry, UndeleteError> {
    if id.contains(['/', '\\', '\0', '@']) || id.starts_with('.') || id.is_empty() {
        return Err(UndeleteError::NotInTrash(id.to_string()));
    }
    let entry = entries(repo)?
        .into_iter()
        .filter(|e| e.id == id)
        .max_by_key(|e| e.pruned_at)
        .ok_or_else(|| UndeleteError::NotInTrash(id.to_string()))?;
    let holds = repo.holds_dir();
    durable::create_private_dir_all(&holds).map_err(io_err(&holds))?;
    let hold =
        serde_json::json!({ "snapshot": id, "reason": "undeleted", "pruned_at": entry.pruned_at });
    durable::write_once(
        &repo.tmp_dir(),
        &holds,
        &format!("{id}.json"),
        hold.to_string().as_bytes(),
    )
    .map_err(io_err(&holds))?;
    let target = repo.snapshots_dir().join(format!("{id}.json"));
    // A hard link cannot replace an existing name; the trash copy goes only afterwards,
    // so a crash leaves the manifest in one place or both, never in none.
    match fs::hard_link(&entry.path, &target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(UndeleteError::Exists(id.to_string()))
        }
        Err(source) => {
            return Err(RepoError::Io {
                path: target,
                source,
            }
            .into())
        }
    }
    durable::sync_dir(&repo.snapshots_dir()).map_err(io_err(&target))?;
    fs::remove_file(&entry.path).map_err(io_err(&entry.path))?;
    durable::sync_dir(&repo.trash_dir()).map_err(io_err(&entry.path))?;
    Ok(entry)
}

/// Snapshots an operator brought back with `undelete`.
pub fn is_held(repo: &Repository, id: &str) -> bool {
    repo.holds_dir().join(format!("{id}.json")).is_file()
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
