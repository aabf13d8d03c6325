//! The gRPC handlers: each admits its peer, checks its session, and hands the work to the
//! session table, the upload bookkeeping or the commit.

use std::pin::Pin;
use std::time::{Instant, SystemTime};

use backup_common::bounded::bounded;
use backup_common::chunk::{ChunkId, MAX_CHUNK};
use backup_common::manifest::Manifest;
use backup_common::proto;
use backup_common::proto::backup_server::Backup;
use backup_common::wire;
use chrono::DateTime;
use futures::Stream;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::sessions::Session;
use super::status::{join_status, repo_status, ServiceError};
use super::uploads::{Known, StoreOutcome, STORE_PARALLEL};
use super::{BackupService, MAX_IDS_PER_REQUEST, OBJECTS_PER_BATCH};
use crate::store::leases;
use crate::store::repository::RepoError;

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
                    ServiceError::Limit(format!(
                        "{} upload sessions are open already (limits.max_sessions)",
                        self.config.limits.max_sessions
                    ))
                    .into(),
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
            self.close_lease(&old);
            tracing::warn!(session = %old, by = %id, identity = %peer.identity, committing, "session superseded by a new one of the same sender");
            self.audit.record(
                now,
                "session_superseded",
                json!({ "session": old, "by": id, "identity": peer.identity, "commit_cancelled": committing }),
            );
        }
        // Visible to a `gc` run from the CLI: its cut-off stays before this session.
        if let Err(e) = leases::open(&self.repo, &id, now, self.config.limits.max_session_age) {
            tracing::error!(session = %id, error = %e, "cannot write the session lease");
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
        let latest = tokio::task::spawn_blocking(move || -> Result<Option<Manifest>, RepoError> {
            let Some(mut m) = repo.latest_good()?.filter(Manifest::content_verified) else {
                return Ok(None);
            };
            // A chunk the store cannot mark is an error for the whole call: offering the
            // object would let the sender skip it on a chunk GC may take.
            let mut kept = Vec::with_capacity(m.objects.len());
            'objects: for o in std::mem::take(&mut m.objects) {
                for c in &o.chunks {
                    if !repo.touch_chunk(&c.id, now)? {
                        continue 'objects;
                    }
                }
                kept.push(o);
            }
            m.objects = kept;
            Ok(Some(m))
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
            let mut missing = Vec::new();
            for (id, own) in ids.into_iter().zip(own) {
                // A chunk the store cannot look up or mark fails the call, never reads as
                // present (GC might take it) or as missing.
                if !((own || known.contains(&id)) && repo.touch_chunk(&id, now)?) {
                    missing.push(id.0.to_vec());
                }
            }
            Ok(missing)
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
        let synced = tokio::task::spawn_blocking(move || repo.barrier())
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
