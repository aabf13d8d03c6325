//! The gRPC service the sender talks to. It can add chunks and commit snapshots, and read
//! the previous snapshot's object metadata; it has no call that deletes, overwrites or
//! returns chunk data. Every handler first admits the peer, then checks its session.
//! Blocking file and hashing work runs on tokio's blocking pool.
//!
//! The handlers are in [`handlers`]; the session table in `sessions`, the replay cache in
//! `replay`, chunk upload and quota bookkeeping in `uploads`, the commit (stream, checks,
//! manifest, snapshot id) in `commit`, the per-day cap in `daily_cap`, and the announcement
//! of a committed snapshot in `announce`. What a commit claims is checked in [`validate`]
//! before it becomes a manifest; what the network may learn about stored chunks is limited
//! to [`known`] ones. The service is built with the append capability only, by `serve`'s
//! composition root outside this folder (crate::serve).

pub mod admission;
mod announce;
mod commit;
pub mod commit_watch;
mod daily_cap;
mod dump_check;
pub mod handlers;
mod known;
mod refusals;
mod replay;
mod sessions;
pub(crate) mod status;
mod uploads;
pub mod validate;

pub use dump_check::DumpReader;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::ReceiverConfig;

use crate::clock::Clock;
use crate::monitoring::audit::AuditLog;
use crate::monitoring::events::Events;
use crate::monitoring::monitor::Monitor;
use crate::service::admission::quota::Quota;
use crate::service::admission::tailscale::TailscaleAdmission;
use crate::store::repository::Repository;
use known::{KnownChunks, RecentUploads};
use replay::CommittedSession;
use sessions::Session;

/// Chunk ids per MissingChunks request, and object entries per batch.
pub const MAX_IDS_PER_REQUEST: usize = 20_000;
pub const OBJECTS_PER_BATCH: usize = 1_000;
/// Objects one snapshot may hold.
pub const MAX_OBJECTS: u64 = 5_000_000;
/// Chunk references one snapshot may hold: about 1 TiB at the chunker's average size,
/// eighty times today's archive.
pub const MAX_REFS: u64 = 1_000_000;
/// Estimated memory of one commit's entries while it is checked.
pub const MAX_MANIFEST_BYTES: u64 = 256 * 1024 * 1024;

pub struct BackupService {
    repo: Repository,
    config: ReceiverConfig,
    clock: Clock,
    audit: Arc<AuditLog>,
    sessions: Mutex<HashMap<String, Session>>,
    quota: Quota,
    tailscale: Option<TailscaleAdmission>,
    /// Serialises commits so snapshot ids and per-day counts cannot race.
    commit_lock: tokio::sync::Mutex<()>,
    /// Recently committed sessions and their replies, so a commit retried because its
    /// reply was lost gets the same snapshot back instead of making a second one.
    committed: Mutex<HashMap<String, CommittedSession>>,
    monitor: Arc<Monitor>,
    /// Where refusals and rejections are recorded (log, audit, metric in one call).
    events: Arc<Events>,
    /// Chunks the network may be told exist.
    known: Arc<KnownChunks>,
    /// What each identity uploaded lately.
    uploads: Arc<RecentUploads>,
    /// One commit's content checks at a time.
    validation: Arc<tokio::sync::Semaphore>,
    /// PutChunks streams open per connection and per identity.
    put_streams: crate::service::admission::streams::StreamLimits,
}

impl BackupService {
    pub fn new(repo: Repository, config: ReceiverConfig, clock: Clock) -> Self {
        let audit = Arc::new(AuditLog::with_rotation(
            &crate::monitoring::audit::dir_for(&config.repo),
            config.limits.audit_log_max_bytes,
            config.limits.audit_log_generations.get(),
        ));
        let quota = Quota::new(&config.limits, &repo, clock(), config.retention.time_zone)
            .with_audit_reserve(audit.max_disk_bytes());
        let tailscale = config
            .admission
            .tailscale
            .clone()
            .map(TailscaleAdmission::new);
        let monitor = Monitor::new(&config.monitoring, repo.clone(), clock.clone());
        let events = Arc::new(Events::new(audit.clone(), monitor.clone(), clock.clone()));
        BackupService {
            put_streams: crate::service::admission::streams::StreamLimits::new(
                config.limits.max_put_streams_per_connection.get(),
                config.limits.max_put_streams_per_identity.get(),
            ),
            monitor,
            events,
            repo,
            config,
            clock,
            audit,
            sessions: Mutex::new(HashMap::new()),
            quota,
            tailscale,
            commit_lock: tokio::sync::Mutex::new(()),
            committed: Mutex::new(HashMap::new()),
            known: Arc::default(),
            uploads: Arc::default(),
            validation: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// The monitor this service reports commits and rejections to; its owner runs it.
    pub fn monitor(&self) -> Arc<Monitor> {
        self.monitor.clone()
    }

    /// The audit log.
    pub fn audit(&self) -> Arc<AuditLog> {
        self.audit.clone()
    }

    /// Where refusals are recorded, shared with the TLS layer.
    pub fn events(&self) -> Arc<Events> {
        self.events.clone()
    }

    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }
}
