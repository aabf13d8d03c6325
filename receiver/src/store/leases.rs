//! Upload-session leases: how a garbage collection in another process (the operator's
//! `gc`) learns which sessions `serve` has open, so it never sweeps a chunk an open session
//! uploaded before its commit.
//!
//! `serve` creates `leases/<session>.open` (the session's start and the end of its
//! lifetime, `limits.max_session_age` later, both on the receiver's clock) when a session
//! begins, and `leases/<session>.closed` when it commits or is dropped; at start-up it
//! closes every lease a previous process left open. Both are created, never changed or
//! removed by the network path: closing is one more create-if-absent. A lease is live
//! while it is open, not closed and not past its end; garbage collection's cut-off stays
//! before the start of the oldest live one. Only maintenance removes leases (closed or
//! past their end).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::backend::Space;
use crate::store::repository::{Maintainer, RepoError, Repository};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lease {
    pub session: String,
    pub started: DateTime<Utc>,
    /// After this the lease is ignored (the session is older than `max_session_age`).
    pub ends: DateTime<Utc>,
}

fn open_name(session: &str) -> String {
    format!("{session}.open")
}
fn closed_name(session: &str) -> String {
    format!("{session}.closed")
}

/// Records that `session` began at `started` and lives at most `max_age`.
pub fn open(
    repo: &Repository,
    session: &str,
    started: DateTime<Utc>,
    max_age: std::time::Duration,
) -> Result<(), RepoError> {
    let lease = Lease {
        session: session.to_string(),
        started,
        // A `max_session_age` beyond the calendar means the lease never ends (no overflow).
        ends: chrono::Duration::from_std(max_age)
            .ok()
            .and_then(|age| started.checked_add_signed(age))
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
    };
    let bytes = serde_json::to_vec(&lease).expect("lease serializes");
    repo.store()
        .create_object(Space::Leases, &open_name(session), &bytes)
        .map(drop)
}

/// Records that `session` ended (committed or dropped).
pub fn close(repo: &Repository, session: &str) -> Result<(), RepoError> {
    repo.store()
        .create_object(Space::Leases, &closed_name(session), b"")
        .map(drop)
}

/// Every open lease and whether it is closed.
fn all(repo: &Repository) -> Result<Vec<(Lease, bool)>, RepoError> {
    let names = repo.store().list(Space::Leases)?;
    let mut out = Vec::new();
    for name in &names {
        let Some(session) = name.strip_suffix(".open") else {
            continue;
        };
        let Some(bytes) = repo.store().read_object(Space::Leases, name)? else {
            continue; // removed by a concurrent clean-up
        };
        match serde_json::from_slice::<Lease>(&bytes) {
            Ok(mut lease) => {
                // The object's name is what clean-up removes and `.closed` pairs with; a
                // body that says otherwise does not redirect either.
                lease.session = session.to_string();
                let closed = names.binary_search(&closed_name(session)).is_ok();
                out.push((lease, closed));
            }
            Err(e) => tracing::warn!(lease = %name, error = %e, "unreadable lease; ignored"),
        }
    }
    Ok(out)
}

/// The start of the oldest live lease at `now`.
pub fn oldest_live(
    repo: &Repository,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, RepoError> {
    Ok(all(repo)?
        .into_iter()
        .filter(|(l, closed)| !closed && l.ends > now)
        .map(|(l, _)| l.started)
        .min())
}

/// Closes every lease still open: at start-up, the sessions of a previous process are gone.
pub fn close_all(repo: &Repository) -> Result<u64, RepoError> {
    let mut n = 0;
    for (lease, closed) in all(repo)? {
        if !closed {
            close(repo, &lease.session)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Removes closed leases and leases past their end; returns how many sessions it cleared.
pub fn clean(repo: &Maintainer, now: DateTime<Utc>) -> Result<u64, RepoError> {
    let store = repo.maintain_store();
    let mut n = 0;
    for (lease, closed) in all(repo)? {
        if closed || lease.ends <= now {
            store.remove_object(Space::Leases, &open_name(&lease.session))?;
            store.remove_object(Space::Leases, &closed_name(&lease.session))?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemStore;
    use std::time::Duration;

    #[test]
    fn a_lease_is_live_until_closed_or_past_its_end() {
        let m = Maintainer::new(MemStore::new());
        let t0 = DateTime::parse_from_rfc3339("2026-03-01T02:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let day = Duration::from_secs(86400);
        open(&m, "s1", t0, day).unwrap();
        open(&m, "s2", t0 + chrono::Duration::hours(1), day).unwrap();
        assert_eq!(oldest_live(&m, t0).unwrap(), Some(t0));
        close(&m, "s1").unwrap();
        assert_eq!(
            oldest_live(&m, t0).unwrap(),
            Some(t0 + chrono::Duration::hours(1))
        );
        // Past its end (max_session_age), a lease no longer holds anything back.
        let later = t0 + chrono::Duration::hours(26);
        assert_eq!(oldest_live(&m, later).unwrap(), None);
        assert_eq!(clean(&m, later).unwrap(), 2);
        assert!(m.store().list(Space::Leases).unwrap().is_empty());
    }
}
