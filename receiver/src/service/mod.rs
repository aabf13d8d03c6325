//! The gRPC service the sender talks to. It can add chunks and commit snapshots, and read
//! the previous snapshot's object metadata; it has no call that deletes, overwrites or
//! returns chunk data. Every handler first admits the peer, then checks its session.
//! Blocking file and hashing work runs on tokio's blocking pool.
//!
//! What a commit claims is checked in [`validate`] before it becomes a manifest; what the
//! network may learn about stored chunks is limited to [`known`] ones.

pub mod admission;
pub mod commit_watch;
mod dump_check;
mod known;
pub mod server;
pub mod validate;

pub use dump_check::DumpReader;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::config::ReceiverConfig;
use backup_common::bounded::{bounded, bounded_join, quoted};
use backup_common::chunk::{self, ChunkId, MAX_CHUNK};
use backup_common::durable::Published;
use backup_common::manifest::{Manifest, SnapshotStats, FORMAT_VERSION};
use backup_common::proto::backup_server::Backup;
use backup_common::proto::{self, commit_part};
use backup_common::wire;
use chrono::{DateTime, Utc};
use futures::Stream;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::clock::Clock;
use crate::monitoring::audit::AuditLog;
use crate::monitoring::guard;
use crate::monitoring::monitor::{self, Monitor};
use crate::service::admission::quota::Quota;
use crate::service::admission::tailscale::{TailscaleAdmission, Verdict};
use crate::service::admission::{admit, Peer};
use crate::store::repository::{RepoError, Repository};
use known::{KnownChunks, RecentUploads};
use validate::{Claimed, CommitLimits, Incoming, Refusal, StoreFacts};

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
/// What one chunk store task of a PutChunks stream returns: its session, the bytes
/// reserved for it, the chunk, and whether it was stored (`None`: the repository had it).
type StoreOutcome = (
    String,
    u64,
    Option<ChunkId>,
    Result<Option<Published>, Status>,
);
/// Chunks a PutChunks reply may call duplicates: kept good snapshots' and the identity's own.
type Known = (Arc<HashSet<ChunkId>>, HashSet<ChunkId>);

/// Chunks of one PutChunks stream verified and stored at the same time.
const STORE_PARALLEL: usize = 8;

struct Session {
    peer_identity: String,
    source_host: String,
    sender_time: Option<DateTime<Utc>>,
    /// Receiver clock at BeginSession: garbage collection's cut-off stays before it.
    started: DateTime<Utc>,
    /// Orders the sessions by use (which one is least recent).
    last_seen: Instant,
    /// Receiver clock at the last request: `limits.idle_timeout` counts from here, so
    /// tests drive it with the fake clock.
    last_active: DateTime<Utc>,
    /// When BeginSession opened it: `limits.max_session_age` counts from here.
    opened: Instant,
    new_chunks: u64,
    new_bytes: u64,
    committing: bool,
    /// While a commit is still receiving: cancels it (see `commit_watch`). `None` once its
    /// last message arrived; from then on the session is the receiver's to finish.
    commit_cancel: Option<CancellationToken>,
}

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
    /// Chunks the network may be told exist.
    known: Arc<KnownChunks>,
    /// What each identity uploaded lately.
    uploads: Arc<RecentUploads>,
    /// One commit's content checks at a time.
    validation: Arc<tokio::sync::Semaphore>,
    /// PutChunks streams open per connection and per identity.
    put_streams: crate::service::admission::streams::StreamLimits,
}

struct CommittedSession {
    identity: String,
    at: Instant,
    reply: proto::CommitResponse,
}

fn repo_status(e: RepoError) -> Status {
    match e {
        RepoError::MissingChunk { .. } => Status::failed_precondition(e.to_string()),
        RepoError::NoSuchSnapshot(_) | RepoError::Empty => Status::not_found(e.to_string()),
        RepoError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
            tracing::error!(error = %e, "repository filesystem is full");
            Status::resource_exhausted(format!("receiver storage is full: {e}"))
        }
        _ => {
            tracing::error!(error = %e, "repository error");
            Status::internal(format!("receiver storage error: {e}"))
        }
    }
}

/// The one mapping of a commit refusal to a gRPC status.
fn refusal_status(r: Refusal) -> Status {
    match r {
        Refusal::Invalid(m) => Status::invalid_argument(m),
        Refusal::TooLarge(m) => Status::resource_exhausted(m),
        r @ Refusal::MissingChunks(_) => Status::failed_precondition(r.to_string()),
        Refusal::Store(e) => repo_status(e),
    }
}

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

/// The store as one committing session sees it.
struct SessionFacts<'a> {
    repo: &'a Repository,
    known: Arc<HashSet<ChunkId>>,
    own: &'a HashSet<ChunkId>,
    /// The delta base's id: compared with already, so left out of `older_good`.
    base: Option<String>,
}

impl StoreFacts for SessionFacts<'_> {
    fn usable(&self, id: &ChunkId) -> bool {
        (self.known.contains(id) || self.own.contains(id)) && self.repo.has_chunk(id)
    }

    fn read(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, RepoError> {
        match self.repo.read_chunk(id) {
            Ok(raw) => Ok(Some(raw)),
            Err(RepoError::MissingChunk { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn older_good(&self, visit: &mut dyn FnMut(&Manifest) -> bool) -> Result<(), RepoError> {
        self.repo.for_each_manifest_newest_first(|m| {
            if Some(&m.id) == self.base.as_ref()
                || !m.content_verified()
                || !crate::store::verdicts::is_good(self.repo, &m)
            {
                return true;
            }
            visit(&m)
        })
    }
}

fn join_status(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("receiver task failed: {e}"))
}

impl BackupService {
    pub fn new(repo: Repository, config: ReceiverConfig, clock: Clock) -> Self {
        let audit = Arc::new(AuditLog::with_rotation(
            repo.root(),
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
        BackupService {
            put_streams: crate::service::admission::streams::StreamLimits::new(
                config.limits.max_put_streams_per_connection.get(),
                config.limits.max_put_streams_per_identity.get(),
            ),
            monitor,
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

    /// The audit log, shared with the TLS layer's refusals.
    pub fn audit(&self) -> Arc<AuditLog> {
        self.audit.clone()
    }

    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// Admits the peer of `request`: network and certificate rules, then (when configured)
    /// the Tailscale identity check. The future does not hold on to the request.
    fn admit<T>(
        &self,
        request: &Request<T>,
        call: &'static str,
    ) -> impl Future<Output = Result<Peer, Status>> + Send + '_ {
        let admitted = self.admit_tls(request, call);
        if let Ok(peer) = &admitted {
            if let Some(not_after) = peer.cert_not_after {
                self.monitor.certificate_admitted(
                    &peer.cert_fingerprint,
                    &peer.identity,
                    not_after,
                );
            }
        }
        async move {
            let peer = admitted?;
            self.admit_tailscale(peer, call).await
        }
    }

    async fn admit_tailscale(&self, peer: Peer, call: &'static str) -> Result<Peer, Status> {
        let (Some(ts), Some(addr)) = (&self.tailscale, peer.addr) else {
            return Ok(peer);
        };
        let (status, node) = match ts.check(addr).await {
            Verdict::Allowed(_) => return Ok(peer),
            Verdict::MissingTag(node) => (
                Status::permission_denied(format!(
                    "tailscale node {:?} has tags {:?}, none of admission.tailscale.required_tags {:?}",
                    node.name,
                    node.tags,
                    ts.required_tags()
                )),
                Some(node),
            ),
            Verdict::UnknownPeer => (
                Status::permission_denied(format!(
                    "tailscaled does not know peer {addr}; only tailnet nodes are admitted"
                )),
                None,
            ),
            Verdict::Failed(e) => {
                tracing::error!(error = %e, "tailscale whois failed; refusing the peer");
                (
                    Status::unavailable(format!(
                        "the receiver cannot verify the peer's tailscale identity: {e}"
                    )),
                    None,
                )
            }
        };
        let detail = bounded(status.message());
        let recorded = self.audit.refused(
            (self.clock)(),
            Some(addr.ip()),
            "tailscale",
            &format!("{call} {detail}"),
            json!({
                "call": call,
                "peer": addr.to_string(),
                "identity": peer.identity,
                "reason": "tailscale",
                "tailscale_node": node.as_ref().map(|n| bounded(&n.name)),
                "tailscale_tags": node.as_ref().map(|n| n.tags.iter().take(8).map(|t| bounded(t)).collect::<Vec<_>>()),
                "tailscale_login": node.as_ref().map(|n| bounded(&n.login)),
                "detail": detail,
            }),
        );
        if recorded {
            tracing::warn!(call, peer = %addr, identity = %peer.identity, tailscale_node = ?node.as_ref().map(|n| bounded(&n.name)), "refused peer (tailscale)");
        }
        Err(status)
    }

    fn admit_tls<T>(&self, request: &Request<T>, call: &str) -> Result<Peer, Status> {
        admit(&self.config.admission, request).map_err(|(refusal, addr)| {
            let status = refusal.status();
            let peer = addr.map(|a| a.to_string()).unwrap_or_default();
            self.monitor.rejected(refusal.reason());
            let recorded = self.audit.refused(
                (self.clock)(),
                addr.map(|a| a.ip()),
                refusal.reason(),
                &format!("{call} {}", status.message()),
                json!({
                    "call": call,
                    "peer": peer,
                    "reason": refusal.reason(),
                    "identity": match &refusal {
                        crate::service::admission::Refusal::Identity(ids) => bounded_join(ids, 4),
                        _ => String::new(),
                    },
                    "detail": status.message(),
                }),
            );
            if recorded {
                tracing::warn!(call, peer = %peer, reason = refusal.reason(), "refused peer");
            }
            status
        })
    }

    fn reject(&self, peer: &Peer, call: &str, status: Status) -> Status {
        // Messages name peer strings only bounded; this caps whatever else slipped in.
        let status = if status.message().len() > 2048 {
            Status::new(status.code(), bounded(status.message()))
        } else {
            status
        };
        tracing::warn!(call, identity = %peer.identity, code = ?status.code(), message = status.message(), "rejected request");
        self.monitor.rejected(&monitor::code_label(status.code()));
        self.audit.record(
            (self.clock)(),
            "rejected",
            json!({
                "call": call,
                "identity": peer.identity,
                "peer": peer.addr.map(|a| a.to_string()),
                "code": format!("{:?}", status.code()),
                "message": status.message(),
            }),
        );
        status
    }

    /// When the oldest open upload session began (receiver clock), for garbage collection.
    pub fn oldest_session_start(&self) -> Option<DateTime<Utc>> {
        self.reap_idle();
        let sessions = self.sessions.lock().unwrap();
        sessions.values().map(|s| s.started).min()
    }

    /// Drops sessions idle longer than the configured timeout, and sessions older than
    /// `limits.max_session_age` unless their commit has fully arrived (a commit still
    /// receiving is cancelled), so no peer holds GC's cut-off back beyond that age.
    fn reap_idle(&self) {
        let timeout = chrono::TimeDelta::from_std(self.config.limits.idle_timeout)
            .unwrap_or(chrono::TimeDelta::MAX);
        let max_age = self.config.limits.max_session_age;
        let now = (self.clock)();
        let mut expired = Vec::new();
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
            }
            keep
        });
        drop(sessions);
        for (id, identity) in expired {
            tracing::warn!(session = %id, identity = %identity, "dropping a session older than limits.max_session_age");
            self.audit.record(
                (self.clock)(),
                "session_expired",
                json!({ "session": id, "identity": identity, "reason": "limits.max_session_age" }),
            );
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
    fn supersede_oldest(
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
    fn touch(&self, peer: &Peer, session_id: &str) -> Result<(), Status> {
        let mut sessions = self.sessions.lock().unwrap();
        match sessions.get_mut(session_id) {
            Some(s) if s.peer_identity == peer.identity => {
                s.last_seen = Instant::now();
                s.last_active = (self.clock)();
                Ok(())
            }
            _ => Err(Status::failed_precondition(format!(
                "unknown or expired session {}; begin a new session",
                quoted(session_id)
            ))),
        }
    }

    fn new_session_id(&self, now: DateTime<Utc>) -> String {
        format!(
            "{}-{:08x}",
            now.format("%Y%m%dT%H%M%SZ"),
            rand::random::<u32>()
        )
    }

    fn snapshot_id_base(now: DateTime<Utc>) -> String {
        now.format("%Y%m%dT%H%M%SZ").to_string()
    }

    async fn commit_inner(
        &self,
        peer: &Peer,
        parts: Streaming<proto::CommitPart>,
    ) -> Result<proto::CommitResponse, Status> {
        // The whole stream, header included, is read under the commit limits.
        let cancel = CancellationToken::new();
        let stall = Arc::new(std::sync::OnceLock::new());
        let committing_id: Arc<std::sync::OnceLock<String>> = Arc::new(std::sync::OnceLock::new());
        let ended_id = committing_id.clone();
        let mut parts = crate::service::commit_watch::watch(
            parts,
            &self.config.limits,
            cancel.clone(),
            stall.clone(),
            move || {
                // The last message arrived: beyond cancellation from here on, unless the
                // session was superseded or expired meanwhile.
                let Some(id) = ended_id.get() else {
                    return true;
                };
                match self.sessions.lock().unwrap().get_mut(id) {
                    Some(s) => {
                        s.commit_cancel = None;
                        true
                    }
                    None => false,
                }
            },
        );
        let header = match parts.next().await {
            Some(Ok(proto::CommitPart {
                part: Some(commit_part::Part::Header(h)),
            })) => h,
            Some(Ok(_)) => {
                return Err(Status::invalid_argument(
                    "a commit must start with its header",
                ))
            }
            Some(Err(e)) => return Err(e),
            None => return Err(Status::invalid_argument("empty commit")),
        };
        if let Some(reply) = self.replay_commit(peer, &header.session_id) {
            return Ok(reply);
        }
        self.touch(peer, &header.session_id)?;
        {
            let mut sessions = self.sessions.lock().unwrap();
            let s = sessions.get_mut(&header.session_id).expect("touched above");
            if s.committing {
                return Err(Status::already_exists("this session is already committing"));
            }
            s.committing = true;
            s.commit_cancel = Some(cancel);
            let _ = committing_id.set(header.session_id.clone());
        }
        tracing::info!(session = %header.session_id, identity = %peer.identity, "commit receiving");
        // Whatever ends this commit (an error, a stall, the peer going away and the
        // future being dropped) leaves its session open for a retry but no longer committing.
        let _reset = CommitReset {
            sessions: &self.sessions,
            id: &header.session_id,
            clock: &self.clock,
        };
        let result = self.commit_session(peer, &header, &mut parts).await;
        if let Some(stall) = stall.get() {
            tracing::warn!(session = %header.session_id, identity = %peer.identity, reason = stall.label(), "stalled commit dropped");
        }
        // A session commits once: success ends it (on failure `_reset` reopens it).
        if let Ok(reply) = &result {
            self.sessions.lock().unwrap().remove(&header.session_id);
            let keep = self.config.limits.idle_timeout;
            let mut committed = self.committed.lock().unwrap();
            committed.retain(|_, c| c.at.elapsed() < keep);
            committed.insert(
                header.session_id.clone(),
                CommittedSession {
                    identity: peer.identity.clone(),
                    at: Instant::now(),
                    reply: reply.clone(),
                },
            );
        }
        result
    }

    /// The reply of a commit this session already made (within `limits.idle_timeout`), for
    /// a sender that retries because the first reply was lost on the way.
    fn replay_commit(&self, peer: &Peer, session_id: &str) -> Option<proto::CommitResponse> {
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

    /// How long an identity's own uploads count as present to it: GC's grace, during which
    /// they are safe from garbage collection.
    fn upload_window(&self) -> std::time::Duration {
        self.config.retention.gc_grace
    }

    /// Refuses a commit beyond `limits.max_snapshots_per_day` (days of
    /// `retention.time_zone`) and returns the receiver's time. The nightly job commits once:
    /// a refused commit means one of the day's commits was not the nightly job, and the
    /// receiver cannot tell which, so the day's earlier snapshots become *contested*
    /// (suspect until acknowledged): a commit placed before the honest night can then not
    /// become the delta base the next night copies from.
    async fn check_daily_cap(&self, peer: &Peer) -> Result<DateTime<Utc>, Status> {
        let now = (self.clock)();
        let cap = self.config.limits.max_snapshots_per_day.get();
        let tz = self.config.retention.time_zone;
        let repo = self.repo.clone();
        let today: Vec<String> = tokio::task::spawn_blocking(move || {
            repo.snapshot_ids()
                .map(|ids| snapshots_on_local_day(&ids, now, tz))
        })
        .await
        .map_err(join_status)?
        .map_err(repo_status)?;
        if (today.len() as u32) < cap {
            return Ok(now);
        }
        let note = format!(
            "a commit by {} was refused by limits.max_snapshots_per_day ({cap}) on {}",
            backup_common::bounded::bounded(&peer.identity),
            now.with_timezone(&tz).format("%Y-%m-%d")
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
        Err(Status::resource_exhausted(format!(
            "{} snapshot(s) were already committed today ({} in {tz}, receiver clock); limits.max_snapshots_per_day is {cap}",
            today.len(),
            now.with_timezone(&tz).format("%Y-%m-%d")
        )))
    }

    /// The bounds a commit is held to while it streams in.
    fn commit_limits(&self) -> CommitLimits {
        CommitLimits {
            max_objects: MAX_OBJECTS,
            max_refs: MAX_REFS,
            max_manifest_bytes: MAX_MANIFEST_BYTES,
            max_read_bytes: self.config.limits.max_session_bytes.get(),
        }
    }

    /// Reads the commit's object batches into an [`Incoming`], refusing as soon as a bound
    /// or a shape rule breaks (nothing more of the stream is buffered after that).
    async fn receive_commit(
        &self,
        header: &proto::CommitHeader,
        parts: &mut crate::service::commit_watch::Watched<'_, proto::CommitPart>,
    ) -> Result<Claimed, Status> {
        wire::check_name("bucket name", &header.bucket)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let dump = header
            .dump
            .clone()
            .map(wire::dump_from_proto)
            .transpose()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut incoming = Incoming::new(self.commit_limits(), dump, header.object_count)
            .map_err(refusal_status)?;
        while let Some(part) = parts.next().await {
            let batch = match part?.part {
                Some(commit_part::Part::Objects(b)) => b,
                _ => {
                    return Err(Status::invalid_argument(
                        "only object batches may follow the commit header",
                    ))
                }
            };
            for o in batch.objects {
                let entry = wire::object_from_proto(o)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                incoming.add(entry).map_err(refusal_status)?;
            }
        }
        incoming.finish().map_err(refusal_status)
    }

    async fn commit_session(
        &self,
        peer: &Peer,
        header: &proto::CommitHeader,
        parts: &mut crate::service::commit_watch::Watched<'_, proto::CommitPart>,
    ) -> Result<proto::CommitResponse, Status> {
        let claimed = self.receive_commit(header, parts).await?;
        // The day's cap before the expensive checks (and again under the commit lock).
        self.check_daily_cap(peer).await?;
        // One commit is checked at a time: the task below runs to its end even if this
        // call is dropped, and holds the permit until then, so dropped and repeated
        // commits cannot pile up checks (memory, CPU).
        let permit = self
            .validation
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("the receiver is shutting down"))?;
        let own_uploads = self.uploads.of(&peer.identity, self.upload_window());
        let (source_host, sender_time, new_chunks, new_bytes) = {
            let sessions = self.sessions.lock().unwrap();
            let s = sessions
                .get(&header.session_id)
                .expect("session is committing");
            (
                s.source_host.clone(),
                s.sender_time,
                s.new_chunks,
                s.new_bytes,
            )
        };

        // Everything a decision will use is checked against the store, on the blocking
        // pool: presence, bindings against the delta base, and new content read back.
        let repo = self.repo.clone();
        let known = self.known.clone();
        let validated = tokio::task::spawn_blocking(move || -> Result<_, Status> {
            let _permit = permit;
            let base = repo.latest_good().map_err(repo_status)?;
            let facts = SessionFacts {
                repo: &repo,
                known: known.current(&repo).map_err(repo_status)?,
                own: &own_uploads,
                base: base.as_ref().map(|b| b.id.clone()),
            };
            let validated =
                validate::validate(claimed, base.as_ref(), &facts).map_err(refusal_status)?;
            // A chunk another stream published but has not synced yet must be durable
            // under its name before this manifest can refer to it.
            repo.sync_chunk_dirs().map_err(repo_status)?;
            Ok(validated)
        })
        .await
        .map_err(join_status)??;

        let _guard = self.commit_lock.lock().await;
        let now = self.check_daily_cap(peer).await?;
        let repo = self.repo.clone();
        // The anomaly guard decides before publishing: a manifest is never changed afterwards.
        let previous_good = {
            let repo = repo.clone();
            tokio::task::spawn_blocking(move || repo.latest_good())
                .await
                .map_err(join_status)?
                .map_err(repo_status)?
        };
        let objects = validated.objects;
        let mut manifest = Manifest {
            format: FORMAT_VERSION,
            id: String::new(),
            time: now,
            sender_time,
            source_host,
            peer_identity: peer.identity.clone(),
            bucket: header.bucket.clone(),
            stats: SnapshotStats {
                object_count: objects.len() as u64,
                object_bytes: objects.iter().map(|o| o.size).sum(),
                dump_bytes: validated.dump.as_ref().map_or(0, |d| d.size),
                new_chunks,
                new_bytes,
            },
            dump: validated.dump,
            objects,
            suspect: None,
            measured: Some(validated.measured),
        };
        manifest.suspect = guard::assess(&self.config.guard, previous_good.as_ref(), &manifest);
        self.quota
            .check_free(manifest.objects.len() as u64 * 512 + 64 * 1024)
            .map_err(|e| e.status())?;
        let base = Self::snapshot_id_base(now);
        let manifest = tokio::task::spawn_blocking(move || -> Result<Manifest, RepoError> {
            crate::testhook::pause(crate::testhook::COMMIT_BEFORE_PUBLISH);
            for n in 0..100 {
                manifest.id = if n == 0 {
                    base.clone()
                } else {
                    format!("{base}-{n}")
                };
                if repo.publish_manifest(&manifest)? {
                    return Ok(manifest);
                }
            }
            Err(RepoError::Io {
                path: repo.snapshots_dir(),
                source: std::io::Error::other("no free snapshot id"),
            })
        })
        .await
        .map_err(join_status)?
        .map_err(repo_status)?;
        self.known.committed(&manifest);
        // The one place a committed snapshot (suspect or not) is announced: logs, audit
        // log, and the hook for alerts (healthcheck pings, metrics).
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
                    "previous_good": previous_good.as_ref().map(|m| m.id.clone()),
                }),
            );
        }
        self.audit.record(
            now,
            "commit",
            json!({
                "session": header.session_id,
                "snapshot": manifest.id,
                "identity": peer.identity,
                "peer": peer.addr.map(|a| a.to_string()),
                "objects": manifest.stats.object_count,
                "total_bytes": manifest.total_bytes(),
                "new_bytes": manifest.stats.new_bytes,
                "suspect": manifest.suspect,
            }),
        );
        self.monitor.snapshot_committed(&manifest);
        Ok(proto::CommitResponse {
            snapshot_id: manifest.id.clone(),
            time_unix: manifest.time.timestamp(),
            object_count: manifest.stats.object_count,
            total_bytes: manifest.total_bytes(),
            suspect: manifest.suspect.is_some(),
            suspect_reason: manifest.suspect.clone().unwrap_or_default(),
        })
    }

    /// Verifies one uploaded chunk. Returns its id when it must be stored, or
    /// `None` when the repository has it already (nothing to store).
    fn verify_chunk(
        repo: &Repository,
        up: &proto::ChunkUpload,
        now: SystemTime,
    ) -> Result<Option<ChunkId>, Status> {
        let id =
            ChunkId::from_slice(&up.id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if up.raw_len == 0 || up.raw_len > MAX_CHUNK {
            return Err(Status::invalid_argument(format!(
                "chunk {id}: raw_len {} is outside 1..={MAX_CHUNK}",
                up.raw_len
            )));
        }
        // Verified even when the chunk exists: a mismatching upload is an attack or a bug
        // and must be reported, not silently dropped.
        chunk::check_chunk(id, up.zstd, &up.data, up.raw_len as usize)
            .map_err(|e| Status::invalid_argument(format!("chunk rejected: {e}")))?;
        if repo.touch_chunk(&id, now) {
            return Ok(None);
        }
        Ok(Some(id))
    }

    /// Counts one finished chunk store of a PutChunks stream, giving its reservation back
    /// when this upload did not store it (a duplicate, or an error).
    ///
    /// A chunk that existed already counts as a duplicate only when a kept good snapshot
    /// references it (`known`); otherwise the reply calls it stored, so an upload is no
    /// oracle for what else the repository holds. Either way the session may now name it.
    fn count_stored(
        &self,
        peer: &Peer,
        reply: &mut proto::PutChunksResponse,
        known: &Known,
        done: Result<StoreOutcome, tokio::task::JoinError>,
    ) -> Result<(), Status> {
        let (session_id, bytes, id, result) = done.map_err(join_status)?;
        match result {
            Ok(Some(Published::Created)) => {
                reply.stored += 1;
                reply.stored_bytes += bytes;
                Ok(())
            }
            Ok(None | Some(Published::AlreadyExisted)) => {
                if id.is_some_and(|id| known.0.contains(&id) || known.1.contains(&id)) {
                    self.release_bytes(&session_id, bytes);
                    reply.duplicates += 1;
                } else {
                    // Charged like a new chunk: giving the reservation back would let the
                    // quota tell which chunks exist.
                    reply.stored += 1;
                    reply.stored_bytes += bytes;
                }
                Ok(())
            }
            Err(status) => {
                self.release_bytes(&session_id, bytes);
                Err(self.reject(peer, "PutChunks", status))
            }
        }
    }

    /// Counts `bytes` against the session's and the day's limits and the free-space
    /// reserve before a chunk is written.
    fn reserve_bytes(&self, session_id: &str, bytes: u64) -> Result<(), Status> {
        let mut sessions = self.sessions.lock().unwrap();
        let s = sessions.get_mut(session_id).ok_or_else(|| {
            Status::failed_precondition(format!(
                "unknown or expired session {}; begin a new session",
                quoted(session_id)
            ))
        })?;
        self.quota
            .reserve((self.clock)(), s.new_bytes, bytes)
            .map_err(|e| e.status())?;
        s.new_chunks += 1;
        s.new_bytes += bytes;
        Ok(())
    }

    /// Gives back a reservation whose chunk was not stored by this upload.
    fn release_bytes(&self, session_id: &str, bytes: u64) {
        self.quota.release((self.clock)(), bytes);
        if let Some(s) = self.sessions.lock().unwrap().get_mut(session_id) {
            s.new_chunks = s.new_chunks.saturating_sub(1);
            s.new_bytes = s.new_bytes.saturating_sub(bytes);
        }
    }
}

/// Ends the committing state of a session when its commit is over (or dropped).
struct CommitReset<'a> {
    sessions: &'a Mutex<HashMap<String, Session>>,
    id: &'a str,
    clock: &'a Clock,
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

type BatchStream = Pin<Box<dyn Stream<Item = Result<proto::ObjectBatch, Status>> + Send>>;

#[tonic::async_trait]
impl Backup for BackupService {
    async fn begin_session(
        &self,
        request: Request<proto::BeginSessionRequest>,
    ) -> Result<Response<proto::BeginSessionResponse>, Status> {
        let peer = self.admit(&request, "BeginSession").await?;
        let req = request.into_inner();
        self.reap_idle();
        let now = (self.clock)();
        let id = self.new_session_id(now);
        let superseded = {
            let mut sessions = self.sessions.lock().unwrap();
            let superseded = if sessions.len() >= self.config.limits.max_sessions.get() {
                Self::supersede_oldest(&mut sessions, &peer.identity)
            } else {
                None
            };
            if sessions.len() >= self.config.limits.max_sessions.get() {
                drop(sessions);
                return Err(self.reject(
                    &peer,
                    "BeginSession",
                    Status::resource_exhausted(format!(
                        "{} upload sessions are open already (limits.max_sessions)",
                        self.config.limits.max_sessions
                    )),
                ));
            }
            sessions.insert(
                id.clone(),
                Session {
                    peer_identity: peer.identity.clone(),
                    source_host: req.source_host.chars().take(255).collect(),
                    sender_time: DateTime::from_timestamp(req.sender_time_unix, 0),
                    started: now,
                    last_seen: Instant::now(),
                    last_active: now,
                    opened: Instant::now(),
                    new_chunks: 0,
                    new_bytes: 0,
                    committing: false,
                    commit_cancel: None,
                },
            );
            superseded
        };
        if let Some((old, committing)) = superseded {
            tracing::warn!(session = %old, by = %id, identity = %peer.identity, committing, "session superseded by a new one of the same sender");
            self.audit.record(
                now,
                "session_superseded",
                json!({ "session": old, "by": id, "identity": peer.identity, "commit_cancelled": committing }),
            );
        }
        tracing::info!(session = %id, identity = %peer.identity, "session opened");
        self.audit.record(
            now,
            "session",
            json!({ "session": id, "identity": peer.identity, "peer": peer.addr.map(|a| a.to_string()), "source_host": bounded(&req.source_host) }),
        );
        Ok(Response::new(proto::BeginSessionResponse {
            session_id: id,
            receiver_time_unix: now.timestamp(),
            max_chunk_bytes: MAX_CHUNK,
        }))
    }

    type PreviousObjectsStream = BatchStream;

    async fn previous_objects(
        &self,
        request: Request<proto::PreviousObjectsRequest>,
    ) -> Result<Response<Self::PreviousObjectsStream>, Status> {
        let peer = self.admit(&request, "PreviousObjects").await?;
        self.touch(&peer, &request.get_ref().session_id)?;
        let repo = self.repo.clone();
        // The delta base is the newest good snapshot whose content the receiver checked
        // (format 2); after an upgrade from format 1 it offers nothing, so the sender reads
        // every object once and any entry a hostile commit slipped into the old manifests
        // is replaced by what the bucket really holds. Objects with a chunk that is missing
        // or quarantined are left out, so the sender reads them again and the chunk heals.
        // The chunks of the objects the sender will carry over are touched, for GC.
        let now = SystemTime::from((self.clock)());
        let latest = tokio::task::spawn_blocking(move || {
            repo.latest_good().map(|m| {
                m.filter(Manifest::content_verified).map(|mut m| {
                    m.objects
                        .retain(|o| o.chunks.iter().all(|c| repo.touch_chunk(&c.id, now)));
                    m
                })
            })
        })
        .await
        .map_err(join_status)?
        .map_err(repo_status)?;
        let batches: Vec<Result<proto::ObjectBatch, Status>> = match latest {
            None => Vec::new(),
            Some(m) => m
                .objects
                .chunks(OBJECTS_PER_BATCH)
                .map(|batch| {
                    Ok(proto::ObjectBatch {
                        snapshot_id: m.id.clone(),
                        objects: batch.iter().map(wire::object_to_proto).collect(),
                    })
                })
                .collect(),
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn missing_chunks(
        &self,
        request: Request<proto::MissingChunksRequest>,
    ) -> Result<Response<proto::MissingChunksResponse>, Status> {
        let peer = self.admit(&request, "MissingChunks").await?;
        let req = request.into_inner();
        self.touch(&peer, &req.session_id)?;
        if req.ids.len() > MAX_IDS_PER_REQUEST {
            return Err(self.reject(
                &peer,
                "MissingChunks",
                Status::invalid_argument(format!("at most {MAX_IDS_PER_REQUEST} ids per request")),
            ));
        }
        let ids = req
            .ids
            .iter()
            .map(|b| ChunkId::from_slice(b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                self.reject(
                    &peer,
                    "MissingChunks",
                    Status::invalid_argument(e.to_string()),
                )
            })?;
        // Only chunks a kept good snapshot references, or this identity uploaded, are
        // "present": anything else is reported missing and simply sent again, so the
        // answer reveals nothing about what else is stored, and names alone keep no
        // chunk alive. A present chunk is touched: this session relies on it, so GC
        // must not take it.
        let own_uploads = self.uploads.of(&peer.identity, self.upload_window());
        let own: Vec<bool> = ids.iter().map(|id| own_uploads.contains(id)).collect();
        let repo = self.repo.clone();
        let known = self.known.clone();
        let now = SystemTime::from((self.clock)());
        let missing = tokio::task::spawn_blocking(move || -> Result<Vec<Vec<u8>>, RepoError> {
            let known = known.current(&repo)?;
            Ok(ids
                .into_iter()
                .zip(own)
                .filter(|(id, own)| !((*own || known.contains(id)) && repo.touch_chunk(id, now)))
                .map(|(id, _)| id.0.to_vec())
                .collect())
        })
        .await
        .map_err(join_status)?
        .map_err(repo_status)?;
        Ok(Response::new(proto::MissingChunksResponse { missing }))
    }

    async fn put_chunks(
        &self,
        request: Request<Streaming<proto::ChunkUpload>>,
    ) -> Result<Response<proto::PutChunksResponse>, Status> {
        let peer = self.admit(&request, "PutChunks").await?;
        let _open = self
            .put_streams
            .acquire(peer.addr, &peer.identity)
            .map_err(|s| self.reject(&peer, "PutChunks", s))?;
        let mut stream = request.into_inner();
        let mut reply = proto::PutChunksResponse::default();
        // Several chunks are verified and stored at once: hashing uses every core and their
        // fsyncs overlap. A chunk's bytes are reserved against the quotas before its task
        // starts (a duplicate gives them back), and each task verifies and stores its chunk
        // whole: a started task finishes even if the stream breaks off, so a retry only
        // sends what did not arrive.
        let mut tasks: JoinSet<StoreOutcome> = JoinSet::new();
        // What this stream may call a duplicate: chunks of kept good snapshots, and this
        // identity's own uploads from before the stream began.
        let known: Known = {
            let (repo, known) = (self.repo.clone(), self.known.clone());
            let set = tokio::task::spawn_blocking(move || known.current(&repo))
                .await
                .map_err(join_status)?
                .map_err(repo_status)?;
            (set, self.uploads.of(&peer.identity, self.upload_window()))
        };
        let received: Result<(), Status> = async {
            while let Some(up) = stream.next().await {
                let up = up?;
                self.touch(&peer, &up.session_id)?;
                while tasks.len() >= STORE_PARALLEL {
                    let done = tasks.join_next().await.expect("non-empty");
                    self.count_stored(&peer, &mut reply, &known, done)?;
                }
                // The stored file: one tag byte and the payload.
                let bytes = up.data.len() as u64 + 1;
                self.reserve_bytes(&up.session_id, bytes)
                    .map_err(|s| self.reject(&peer, "PutChunks", s))?;
                let repo = self.repo.clone();
                // The receiver's clock stamps (or touches) the chunk: GC's grace counts from it.
                let now = SystemTime::from((self.clock)());
                let id = ChunkId::from_slice(&up.id).ok();
                let (uploads, identity) = (self.uploads.clone(), peer.identity.clone());
                tasks.spawn_blocking(move || {
                    let result = Self::verify_chunk(&repo, &up, now).and_then(|checked| {
                        checked
                            .map(|id| {
                                repo.put_chunk_at(&id, up.zstd, &up.data, now)
                                    .map_err(repo_status)
                            })
                            .transpose()
                    });
                    // Recorded here, not when the reply is counted: a stream cut mid-way
                    // drops the handler, and the retry must still find these present.
                    if let (Ok(_), Some(id)) = (&result, id) {
                        uploads.add(&identity, id);
                    }
                    (up.session_id, bytes, id, result)
                });
            }
            while let Some(done) = tasks.join_next().await {
                self.count_stored(&peer, &mut reply, &known, done)?;
            }
            Ok(())
        }
        .await;
        // Chunks still being stored when the stream failed are counted (their errors no
        // longer matter to this reply).
        while let Some(done) = tasks.join_next().await {
            let _ = self.count_stored(&peer, &mut reply, &known, done);
        }
        // Whatever happened, the chunks published so far get their directory entries
        // synced before this call returns: an acknowledged chunk is a durable chunk.
        let repo = self.repo.clone();
        let synced = tokio::task::spawn_blocking(move || repo.sync_chunk_dirs())
            .await
            .map_err(join_status)?
            .map_err(repo_status);
        received?;
        synced?;
        Ok(Response::new(reply))
    }

    async fn commit(
        &self,
        request: Request<Streaming<proto::CommitPart>>,
    ) -> Result<Response<proto::CommitResponse>, Status> {
        let peer = self.admit(&request, "Commit").await?;
        self.commit_inner(&peer, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|s| self.reject(&peer, "Commit", s))
    }
}
