//! The table of open upload sessions: opening, touching, superseding and expiring them.
//! A session is owned by the identity that began it; nothing here reads the repository.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::status::ServiceError;
use super::BackupService;
use crate::service::admission::Peer;
use crate::store::leases;

pub(super) struct Session {
    pub(super) peer_identity: String,
    pub(super) source_host: String,
    pub(super) sender_time: Option<DateTime<Utc>>,
    /// Receiver clock at BeginSession: garbage collection's cut-off stays before it.
    pub(super) started: DateTime<Utc>,
    /// Orders the sessions by use (which one is least recent).
    pub(super) last_seen: Instant,
    /// Receiver clock at the last request: `limits.idle_timeout` counts from here, so
    /// tests drive it with the fake clock.
    pub(super) last_active: DateTime<Utc>,
    /// When BeginSession opened it: `limits.max_session_age` counts from here.
    pub(super) opened: Instant,
    pub(super) new_chunks: u64,
    pub(super) new_bytes: u64,
    pub(super) committing: bool,
    /// While a commit is still receiving: cancels it (see `commit_watch`). `None` once its
    /// last message arrived; from then on the session is the receiver's to finish.
    pub(super) commit_cancel: Option<CancellationToken>,
}

impl BackupService {
    /// When the oldest open upload session began (receiver clock), for garbage collection.
    pub fn oldest_session_start(&self) -> Option<DateTime<Utc>> {
        self.reap_idle();
        let sessions = self.sessions.lock().unwrap();
        sessions.values().map(|s| s.started).min()
    }

    /// Drops sessions idle longer than the configured timeout, and sessions older than
    /// `limits.max_session_age` unless their commit has fully arrived (a commit still
    /// receiving is cancelled), so no peer holds GC's cut-off back beyond that age.
    pub(super) fn reap_idle(&self) {
        let timeout = chrono::TimeDelta::from_std(self.config.limits.idle_timeout)
            .unwrap_or(chrono::TimeDelta::MAX);
        let max_age = self.config.limits.max_session_age;
        let now = (self.clock)();
        let (mut expired, mut idle) = (Vec::new(), Vec::new());
        let mut sessions = self.sessions.lock().unwrap();
        sessions.retain(|id, s| {
            let receiving = !s.committing || s.commit_cancel.is_some();
            if receiving && s.opened.elapsed() >= max_age {
                if let Some(c) = &s.commit_cancel {
                    c.cancel();
                }
                expired.push((id.clone(), s.peer_identity.clone()));
                return false;
            }
            let keep = s.committing || now.signed_duration_since(s.last_active) < timeout;
            if !keep {
                tracing::info!(session = %id, "dropping idle session");
                idle.push(id.clone());
            }
            keep
        });
        drop(sessions);
        for id in idle.iter().chain(expired.iter().map(|(id, _)| id)) {
            self.close_lease(id);
        }
        for (id, identity) in expired {
            tracing::warn!(session = %id, identity = %identity, "dropping a session older than limits.max_session_age");
            self.audit.record(
                (self.clock)(),
                "session_expired",
                json!({ "session": id, "identity": identity, "reason": "limits.max_session_age" }),
            );
        }
    }

    /// Records that a session ended, for a `gc` in another process (store/leases.rs).
    pub(super) fn close_lease(&self, session: &str) {
        if let Err(e) = leases::close(&self.repo, session) {
            tracing::error!(session = %session, error = %e, "cannot close the session lease");
        }
    }

    /// At the session limit, a sender beginning a new session has given up on its older
    /// ones (a run killed or retried by hand): its least recently used session that is not
    /// committing makes room, instead of the retry being refused until the idle timeout.
    /// Only the same identity's sessions are touched, so one sender cannot end another's.
    /// When all of them are committing, the least recently used commit that is still
    /// receiving is cancelled (a stalled commit must not lock its own sender out); a commit
    /// whose last message has arrived is never touched. Returns the session and whether
    /// its commit was cancelled.
    pub(super) fn supersede_oldest(
        sessions: &mut HashMap<String, Session>,
        identity: &str,
    ) -> Option<(String, bool)> {
        let oldest = |committing: bool| {
            sessions
                .iter()
                .filter(|(_, s)| s.peer_identity == identity)
                .filter(|(_, s)| {
                    if committing {
                        s.committing && s.commit_cancel.is_some()
                    } else {
                        !s.committing
                    }
                })
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(id, _)| id.clone())
        };
        let (oldest, committing) = match oldest(false) {
            Some(id) => (id, false),
            None => (oldest(true)?, true),
        };
        if let Some(cancel) = sessions.remove(&oldest).and_then(|s| s.commit_cancel) {
            cancel.cancel();
        }
        Some((oldest, committing))
    }

    /// Looks up a live session owned by `peer` and marks it used.
    pub(super) fn touch(&self, peer: &Peer, session_id: &str) -> Result<(), Status> {
        let mut sessions = self.sessions.lock().unwrap();
        match sessions.get_mut(session_id) {
            Some(s) if s.peer_identity == peer.identity => {
                s.last_seen = Instant::now();
                s.last_active = (self.clock)();
                Ok(())
            }
            _ => Err(ServiceError::SessionLost(session_id.to_string()).into()),
        }
    }

    pub(super) fn new_session_id(&self, now: DateTime<Utc>) -> String {
        format!(
            "{}-{:08x}",
            now.format("%Y%m%dT%H%M%SZ"),
            rand::random::<u32>()
        )
    }
}

/// Ends the committing state of a session when its commit is over (or dropped).
pub(super) struct CommitReset<'a> {
    pub(super) sessions: &'a Mutex<HashMap<String, Session>>,
    pub(super) id: &'a str,
    pub(super) clock: &'a crate::clock::Clock,
}

impl Drop for CommitReset<'_> {
    fn drop(&mut self) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sessions.get_mut(self.id) {
            s.committing = false;
            s.commit_cancel = None;
            s.last_seen = Instant::now();
            s.last_active = (self.clock)();
        }
    }
}
