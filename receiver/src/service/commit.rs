//! A commit: its stream read under the commit limits, its claims checked against the store
//! ([`super::validate`]), the manifest assembled from what the receiver measured, and its
//! snapshot id allocated and published. One commit is checked and published at a time.

use std::collections::HashSet;
use std::sync::Arc;

use backup_common::chunk::ChunkId;
use backup_common::manifest::{Manifest, SnapshotStats, FORMAT_VERSION};
use backup_common::proto::{self, commit_part};
use backup_common::wire;
use chrono::{DateTime, Utc};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::sessions::CommitReset;
use super::status::{join_status, refusal_status, repo_status, ServiceError};
use super::validate::{self, Claimed, CommitLimits, Incoming, StoreFacts};
use super::{BackupService, MAX_MANIFEST_BYTES, MAX_OBJECTS, MAX_REFS};
use crate::monitoring::guard;
use crate::service::admission::Peer;
use crate::store::repository::{RepoError, Repository};

/// The store as one committing session sees it.
struct SessionFacts<'a> {
    repo: &'a Repository,
    known: Arc<HashSet<ChunkId>>,
    own: &'a HashSet<ChunkId>,
    /// The delta base's id: compared with already, so left out of `older_good`.
    base: Option<String>,
}

impl StoreFacts for SessionFacts<'_> {
    fn usable(&self, id: &ChunkId) -> Result<bool, RepoError> {
        Ok((self.known.contains(id) || self.own.contains(id)) && self.repo.has_chunk(id)?)
    }

    fn read(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, RepoError> {
        match self.repo.read_chunk(id) {
            Ok(raw) => Ok(Some(raw)),
            Err(RepoError::MissingChunk { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn older_good(&self, visit: &mut dyn FnMut(&Manifest) -> bool) -> Result<(), RepoError> {
        self.repo.try_for_each_manifest_newest_first(|m| {
            if Some(&m.id) == self.base.as_ref()
                || !m.content_verified()
                || !crate::store::verdicts::is_good(self.repo, &m)?
            {
                return Ok(true);
            }
            Ok(visit(&m))
        })
    }
}

impl BackupService {
    pub(super) async fn commit_inner(
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
                return Err(
                    ServiceError::Conflict("this session is already committing".into()).into(),
                );
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
            self.remember_commit(peer, &header.session_id, reply);
        }
        result
    }

    pub(super) fn snapshot_id_base(now: DateTime<Utc>) -> String {
        now.format("%Y%m%dT%H%M%SZ").to_string()
    }

    /// The bounds a commit is held to while it streams in.
    pub(super) fn commit_limits(&self) -> CommitLimits {
        CommitLimits {
            max_objects: MAX_OBJECTS,
            max_refs: MAX_REFS,
            max_manifest_bytes: MAX_MANIFEST_BYTES,
            max_read_bytes: self.config.limits.max_session_bytes.get(),
        }
    }

    /// Reads the commit's object batches into an [`Incoming`], refusing as soon as a bound
    /// or a shape rule breaks (nothing more of the stream is buffered after that).
    pub(super) async fn receive_commit(
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

    pub(super) async fn commit_session(
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
            repo.barrier().map_err(repo_status)?;
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
            repo.publish_snapshot(&mut manifest, &base)?;
            Ok(manifest)
        })
        .await
        .map_err(join_status)?
        .map_err(repo_status)?;
        self.known.committed(&manifest);
        self.announce_commit(
            peer,
            &header.session_id,
            &manifest,
            previous_good.as_ref(),
            now,
        );
        Ok(proto::CommitResponse {
            snapshot_id: manifest.id.clone(),
            time_unix: manifest.time.timestamp(),
            object_count: manifest.stats.object_count,
            total_bytes: manifest.total_bytes(),
            suspect: manifest.suspect.is_some(),
            suspect_reason: manifest.suspect.clone().unwrap_or_default(),
        })
    }
}
