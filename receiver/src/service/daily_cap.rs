//! The per-day cap on commits (`limits.max_snapshots_per_day`, days of
//! `retention.time_zone`), and contesting the day's snapshots when it refuses one.

use chrono::{DateTime, Utc};
use serde_json::json;
use tonic::Status;

use super::status::{join_status, repo_status, ServiceError};
use super::BackupService;
use crate::service::admission::Peer;

/// Which of `ids` (receiver-made, `YYYYMMDDTHHMMSSZ…`) fall on the calendar day of `now`
/// in `tz`: the per-day cap counts the days retention counts.
fn snapshots_on_local_day(ids: &[String], now: DateTime<Utc>, tz: chrono_tz::Tz) -> Vec<String> {
    let today = now.with_timezone(&tz).date_naive();
    ids.iter()
        .filter(|id| {
            id.get(..16)
                .and_then(|stamp| {
                    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok()
                })
                .is_some_and(|t| t.and_utc().with_timezone(&tz).date_naive() == today)
        })
        .cloned()
        .collect()
}

impl BackupService {
    /// Refuses a commit beyond `limits.max_snapshots_per_day` (days of
    /// `retention.time_zone`) and returns the receiver's time. The nightly job commits once:
    /// a refused commit means one of the day's commits was not the nightly job, and the
    /// receiver cannot tell which, so the day's earlier snapshots become *contested*
    /// (suspect until acknowledged): a commit placed before the honest night can then not
    /// become the delta base the next night copies from.
    pub(super) async fn check_daily_cap(&self, peer: &Peer) -> Result<DateTime<Utc>, Status> {
        let now = (self.clock)();
        let cap = self.config.limits.max_snapshots_per_day;
        let tz = self.config.retention.time_zone;
        let repo = self.repo.clone();
        let today: Vec<String> = tokio::task::spawn_blocking(move || {
            repo.snapshot_ids()
                .map(|ids| snapshots_on_local_day(&ids, now, tz))
        })
        .await
        .map_err(join_status)?
        .map_err(repo_status)?;
        if (today.len() as u32) < cap.get() {
            return Ok(now);
        }
        let note = format!(
            "a commit by {} was refused by limits.max_snapshots_per_day ({cap}) on {} ({tz}) at {}",
            backup_common::bounded::bounded(&peer.identity),
            now.with_timezone(&tz).format("%Y-%m-%d"),
            crate::clock::on_screen(now, tz)
        );
        let repo = self.repo.clone();
        let (ids, n) = (today.clone(), note.clone());
        let contested = tokio::task::spawn_blocking(move || {
            ids.iter()
                .filter(|id| crate::store::verdicts::contest(&repo, id, &n, now).is_ok())
                .count()
        })
        .await
        .map_err(join_status)?;
        tracing::error!(snapshots = ?today, "second commit of the day refused; the day's snapshots are contested");
        self.audit.record(
            now,
            "contested",
            json!({ "snapshots": today, "identity": peer.identity, "note": note, "written": contested }),
        );
        Err(ServiceError::Limit(format!(
            "{} snapshot(s) were already committed today ({} in {tz}, receiver clock {}); limits.max_snapshots_per_day is {cap}",
            today.len(),
            now.with_timezone(&tz).format("%Y-%m-%d"),
            crate::clock::on_screen(now, tz)
        ))
        .into())
    }
}
