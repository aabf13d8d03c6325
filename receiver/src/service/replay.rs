//! The replay cache: recently committed sessions and their replies, so a commit retried
//! because its reply was lost gets the same snapshot back instead of making a second one.

use std::time::Instant;

use backup_common::proto;
use serde_json::json;

use super::BackupService;
use crate::service::admission::Peer;

pub(super) struct CommittedSession {
    identity: String,
    at: Instant,
    reply: proto::CommitResponse,
}

impl BackupService {
    /// The reply of a commit this session already made (within `limits.idle_timeout`), for
    /// a sender that retries because the first reply was lost on the way.
    pub(super) fn replay_commit(
        &self,
        peer: &Peer,
        session_id: &str,
    ) -> Option<proto::CommitResponse> {
        let keep = self.config.limits.idle_timeout;
        let reply = {
            let committed = self.committed.lock().unwrap();
            let c = committed.get(session_id)?;
            (c.identity == peer.identity && c.at.elapsed() < keep).then(|| c.reply.clone())?
        };
        tracing::warn!(session = %session_id, snapshot = %reply.snapshot_id, "commit repeated: replaying the reply");
        self.audit.record(
            (self.clock)(),
            "commit_replayed",
            json!({ "session": session_id, "snapshot": reply.snapshot_id, "identity": peer.identity }),
        );
        Some(reply)
    }

    /// Ends a session that committed, and keeps its reply for a retry within
    /// `limits.idle_timeout`.
    pub(super) fn remember_commit(
        &self,
        peer: &Peer,
        session_id: &str,
        reply: &proto::CommitResponse,
    ) {
        self.sessions.lock().unwrap().remove(session_id);
        self.close_lease(session_id);
        let keep = self.config.limits.idle_timeout;
        let mut committed = self.committed.lock().unwrap();
        committed.retain(|_, c| c.at.elapsed() < keep);
        committed.insert(
            session_id.to_string(),
            CommittedSession {
                identity: peer.identity.clone(),
                at: Instant::now(),
                reply: reply.clone(),
            },
        );
    }
}
