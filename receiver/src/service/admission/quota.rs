//! Byte limits on what the network may make the receiver store: per upload session, per
//! day of the receiver's clock, and a free-space reserve on the repository's filesystem.
//! Every check runs before a chunk is written, so hitting a limit stores nothing and never
//! touches what is stored already; the sender gets RESOURCE_EXHAUSTED naming the limit.

use std::path::PathBuf;
use std::sync::Mutex;

use crate::config::Limits;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

use crate::store::repository::Repository;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("this upload session has stored {used} bytes; {more} more would exceed limits.max_session_bytes ({limit})")]
    Session { used: u64, more: u64, limit: u64 },
    #[error("{used} bytes were stored today (receiver clock); {more} more would exceed limits.max_daily_bytes ({limit})")]
    Daily { used: u64, more: u64, limit: u64 },
    #[error("the repository's filesystem has {free} bytes free; storing {more} more would eat into limits.min_free_bytes ({limit}) plus the {audit} bytes kept for the audit log")]
    Reserve {
        free: u64,
        more: u64,
        limit: u64,
        audit: u64,
    },
    #[error("cannot measure the free space of {path}: {message}")]
    Statvfs { path: PathBuf, message: String },
}

impl QuotaError {
    /// The status the peer gets (mapped in `service::status`).
    pub fn status(&self) -> tonic::Status {
        crate::service::status::ServiceError::Quota(self.clone()).into()
    }
}

struct Daily {
    day: NaiveDate,
    bytes: u64,
}

pub struct Quota {
    max_session_bytes: u64,
    max_daily_bytes: u64,
    min_free_bytes: u64,
    /// Kept free besides `min_free_bytes`: the most the rotated audit log can grow to.
    audit_bytes: u64,
    repo: Repository,
    tz: Tz,
    daily: Mutex<Daily>,
}

impl Quota {
    /// Starts the day's count (a calendar day of `tz`, as retention counts days) from what
    /// today's committed snapshots stored. Uploads of sessions that never committed before
    /// a restart are not counted again.
    pub fn new(limits: &Limits, repo: &Repository, now: DateTime<Utc>, tz: Tz) -> Self {
        let today = now.with_timezone(&tz).date_naive();
        let mut bytes = 0;
        let counted = repo
            .for_each_manifest(|m| {
                if m.time.with_timezone(&tz).date_naive() == today {
                    bytes += m.stats.new_bytes;
                }
                true
            })
            .map(|()| bytes)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot count today's stored bytes; starting from 0");
                0
            });
        Quota {
            max_session_bytes: limits.max_session_bytes.get(),
            max_daily_bytes: limits.max_daily_bytes.get(),
            min_free_bytes: limits.min_free_bytes,
            audit_bytes: 0,
            repo: repo.clone(),
            tz,
            daily: Mutex::new(Daily {
                day: today,
                bytes: counted,
            }),
        }
    }

    /// Keeps `bytes` free on top of `limits.min_free_bytes` for the audit log (its
    /// [`crate::monitoring::audit::AuditLog::max_disk_bytes`]), so what the network makes the receiver
    /// store and log together never eats into the reserve.
    pub fn with_audit_reserve(mut self, bytes: u64) -> Self {
        self.audit_bytes = bytes;
        self
    }

    /// Checks that `more` bytes fit above the free-space reserve.
    pub fn check_free(&self, more: u64) -> Result<(), QuotaError> {
        let free = self.repo.free_space().map_err(|e| QuotaError::Statvfs {
            path: PathBuf::from(self.repo.describe()),
            message: e.to_string(),
        })?;
        if free.saturating_sub(more) < self.min_free_bytes.saturating_add(self.audit_bytes) {
            return Err(QuotaError::Reserve {
                free,
                more,
                limit: self.min_free_bytes,
                audit: self.audit_bytes,
            });
        }
        Ok(())
    }

    /// Reserves `more` bytes for a session that stored `session_used` so far: checks the
    /// session limit, the day's limit and the free-space reserve, then counts them for today.
    pub fn reserve(
        &self,
        now: DateTime<Utc>,
        session_used: u64,
        more: u64,
    ) -> Result<(), QuotaError> {
        if session_used.saturating_add(more) > self.max_session_bytes {
            return Err(QuotaError::Session {
                used: session_used,
                more,
                limit: self.max_session_bytes,
            });
        }
        let mut daily = self.daily.lock().unwrap_or_else(|p| p.into_inner());
        let today = now.with_timezone(&self.tz).date_naive();
        if daily.day != today {
            *daily = Daily {
                day: today,
                bytes: 0,
            };
        }
        if daily.bytes.saturating_add(more) > self.max_daily_bytes {
            return Err(QuotaError::Daily {
                used: daily.bytes,
                more,
                limit: self.max_daily_bytes,
            });
        }
        self.check_free(more)?;
        daily.bytes += more;
        Ok(())
    }

    /// Gives back a reservation whose chunk was not stored after all.
    pub fn release(&self, now: DateTime<Utc>, bytes: u64) {
        let mut daily = self.daily.lock().unwrap_or_else(|p| p.into_inner());
        if daily.day == now.with_timezone(&self.tz).date_naive() {
            daily.bytes = daily.bytes.saturating_sub(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(session: u64, daily: u64, reserve: u64) -> (tempfile::TempDir, Quota) {
        let d = tempfile::tempdir().unwrap();
        let repo = crate::store::open::create_or_open(d.path())
            .unwrap()
            .repository();
        let limits = Limits {
            max_session_bytes: std::num::NonZeroU64::new(session).unwrap(),
            max_daily_bytes: std::num::NonZeroU64::new(daily).unwrap(),
            min_free_bytes: reserve,
            ..Limits::default()
        };
        let q = Quota::new(&limits, &repo, Utc::now(), chrono_tz::UTC);
        (d, q)
    }

    #[test]
    fn free_space_is_measured() {
        use backup_common::disk::free_bytes;
        let d = tempfile::tempdir().unwrap();
        assert!(free_bytes(d.path()).unwrap() > 0);
        assert!(free_bytes(&d.path().join("missing")).is_err());
    }

    #[test]
    fn each_limit_refuses_with_its_key() {
        let now = Utc::now();
        let (_d, q) = quota(100, 150, 0);
        q.reserve(now, 0, 100).unwrap();
        let e = q.reserve(now, 100, 1).unwrap_err();
        assert!(e.to_string().contains("limits.max_session_bytes"), "{e}");
        let e = q.reserve(now, 0, 51).unwrap_err();
        assert!(e.to_string().contains("limits.max_daily_bytes"), "{e}");
        q.release(now, 100);
        q.reserve(now, 0, 100).unwrap();
        // A new day starts a new count.
        q.reserve(now + chrono::Duration::days(1), 0, 100).unwrap();

        let (_d, q) = quota(u64::MAX, u64::MAX, u64::MAX);
        let e = q.reserve(now, 0, 1).unwrap_err();
        assert!(e.to_string().contains("limits.min_free_bytes"), "{e}");
        assert_eq!(e.status().code(), tonic::Code::ResourceExhausted);
    }
}
