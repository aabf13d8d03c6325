//! `serve`'s own maintenance schedule: every `retention.interval`, prune (with the trash's
//! grace period) and then garbage-collect, on the receiver's clock. The task is owned by
//! the server and aborted when it stops; the work itself runs on a blocking thread.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::RetentionConfig;
use chrono::{DateTime, Utc};

use crate::clock::Clock;
use crate::maintenance::gc::{self, GcReport};
use crate::maintenance::prune::{self, PruneReport};
use crate::store::leases;
use crate::store::repository::{Maintainer, RepoError};

/// Start time of the oldest upload session still open, if any.
pub type OldestSession = Arc<dyn Fn() -> Option<DateTime<Utc>> + Send + Sync>;

/// One maintenance pass: prune, purge expired trash, collect garbage.
pub fn run_once(
    repo: &Maintainer,
    cfg: &RetentionConfig,
    now: DateTime<Utc>,
    oldest_session: Option<DateTime<Utc>>,
) -> Result<(PruneReport, GcReport), RepoError> {
    let pruned = prune::prune(repo, cfg, now, false)?;
    let cut = gc::cutoff_with_leases(repo, now, cfg.gc_grace, oldest_session)?;
    let tmp_cut = SystemTime::now()
        .checked_sub(cfg.gc_grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let collected = gc::collect(repo, cut, tmp_cut, false)?;
    leases::clean(repo, now)?;
    Ok((pruned, collected))
}

/// Aborts the maintenance task when dropped.
pub struct Maintenance(Option<tokio::task::JoinHandle<()>>);

impl Drop for Maintenance {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// Starts the schedule; an interval of zero turns it off.
pub fn spawn(
    repo: Maintainer,
    cfg: RetentionConfig,
    clock: Clock,
    oldest_session: OldestSession,
) -> Maintenance {
    let interval: Duration = cfg.interval;
    if interval.is_zero() {
        tracing::info!("retention schedule is off (retention.interval = 0)");
        return Maintenance(None);
    }
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let (repo, cfg) = (repo.clone(), cfg.clone());
            let now = clock();
            let oldest = oldest_session();
            let done =
                tokio::task::spawn_blocking(move || run_once(&repo, &cfg, now, oldest)).await;
            match done {
                Ok(Ok((p, g))) => tracing::info!(
                    pruned = p.pruned.len(),
                    trash_removed = p.purged.len(),
                    chunks_removed = g.removed_chunks,
                    bytes_removed = g.removed_bytes,
                    young_unreferenced = g.young_unreferenced,
                    "maintenance done"
                ),
                Ok(Err(e)) => tracing::error!(error = %e, "maintenance failed"),
                Err(e) => tracing::error!(error = %e, "maintenance task failed"),
            }
        }
    });
    Maintenance(Some(task))
}
