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

pub use crate::store::records::lease::Lease;
use crate::store::records::lease::{LeaseKey, LeaseRecord};
use crate::store::repository::{Maintainer, RepoError, Repository};

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
    repo.create(&LeaseRecord::Open(lease))?;
    Ok(())
}

/// Records that `session` ended (committed or dropped).
pub fn close(repo: &Repository, session: &str) -> Result<(), RepoError> {
    repo.create(&LeaseRecord::Closed(session.to_string()))?;
    Ok(())
}

/// The sessions with an open lease, and those with a closed one (by name alone).
fn names(repo: &Repository) -> Result<(Vec<String>, Vec<String>), RepoError> {
    let (mut open, mut closed) = (Vec::new(), Vec::new());
    for key in repo.keys::<LeaseRecord>()? {
        match key {
            LeaseKey::Open(s) => open.push(s),
            LeaseKey::Closed(s) => closed.push(s),
        }
    }
    closed.sort();
    Ok((open, closed))
}

/// Every open lease and whether it is closed. A lease that cannot be read stops the
/// caller: garbage collection must not sweep past a session it cannot see the start of.
fn all(repo: &Repository) -> Result<Vec<(Lease, bool)>, RepoError> {
    let (open, closed) = names(repo)?;
    let mut out = Vec::new();
    for session in open {
        let is_closed = closed.binary_search(&session).is_ok();
        match repo.read::<LeaseRecord>(&LeaseKey::Open(session))? {
            Some(LeaseRecord::Open(lease)) => out.push((lease, is_closed)),
            // Removed by a concurrent clean-up: it held nothing back any more.
            _ => continue,
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
/// By name alone, so one unreadable lease does not keep `serve` from starting.
pub fn close_all(repo: &Repository) -> Result<u64, RepoError> {
    let (open, closed) = names(repo)?;
    let mut n = 0;
    for session in open {
        if closed.binary_search(&session).is_err() {
            close(repo, &session)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Removes closed leases and leases past their end; returns how many sessions it cleared.
/// A closed lease goes by its names alone; an open one is read for its end.
pub fn clean(repo: &Maintainer, now: DateTime<Utc>) -> Result<u64, RepoError> {
    let (open, closed) = names(repo)?;
    let mut n = 0;
    for session in open {
        let done = closed.binary_search(&session).is_ok()
            || match repo.read::<LeaseRecord>(&LeaseKey::Open(session.clone()))? {
                Some(LeaseRecord::Open(lease)) => lease.ends <= now,
                _ => false,
            };
        if done {
            repo.remove::<LeaseRecord>(&LeaseKey::Open(session.clone()))?;
            repo.remove::<LeaseRecord>(&LeaseKey::Closed(session))?;
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
        assert!(m.keys::<LeaseRecord>().unwrap().is_empty());
    }
}
