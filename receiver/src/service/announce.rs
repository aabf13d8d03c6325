//! The one place a committed snapshot (suspect or not) is announced: logs, the audit log,
//! and the monitor (healthcheck pings, metrics).

use backup_common::manifest::Manifest;
use chrono::{DateTime, Utc};
use serde_json::json;

use super::BackupService;
use crate::service::admission::Peer;

impl BackupService {
    pub(super) fn announce_commit(
        &self,
        peer: &Peer,
        session_id: &str,
        manifest: &Manifest,
        previous_good: Option<&Manifest>,
        now: DateTime<Utc>,
    ) {
        tracing::info!(
            snapshot = %manifest.id,
            identity = %peer.identity,
            objects = manifest.stats.object_count,
            dump_bytes = manifest.stats.dump_bytes,
            new_bytes = manifest.stats.new_bytes,
            suspect = manifest.suspect.is_some(),
            "snapshot committed"
        );
        if let Some(reason) = &manifest.suspect {
            tracing::error!(
                snapshot = %manifest.id,
                identity = %peer.identity,
                reason = %reason,
                "SUSPECT snapshot committed: the last good snapshot is pinned until an operator runs `backup-receiver ack`"
            );
            self.audit.record(
                now,
                "suspect",
                json!({
                    "snapshot": manifest.id,
                    "identity": peer.identity,
                    "peer": peer.addr.map(|a| a.to_string()),
                    "reason": reason,
                    "previous_good": previous_good.map(|m| m.id.clone()),
                }),
            );
        }
        self.audit.record(
            now,
            "commit",
            json!({
                "session": session_id,
                "snapshot": manifest.id,
                "identity": peer.identity,
                "peer": peer.addr.map(|a| a.to_string()),
                "objects": manifest.stats.object_count,
                "total_bytes": manifest.total_bytes(),
                "new_bytes": manifest.stats.new_bytes,
                "suspect": manifest.suspect,
            }),
        );
        self.monitor.snapshot_committed(manifest);
    }
}
