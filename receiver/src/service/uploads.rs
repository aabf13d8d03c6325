//! Chunk upload bookkeeping for PutChunks: verifying an uploaded chunk, reserving and
//! releasing its bytes against the session's and the day's quotas, and counting the reply
//! so it is no oracle for what else the repository holds.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use backup_common::chunk::{self, ChunkId, MAX_CHUNK};
use backup_common::durable::Published;
use backup_common::proto;
use tonic::Status;

use super::status::{join_status, repo_status, ServiceError};
use super::BackupService;
use crate::service::admission::Peer;
use crate::store::repository::Repository;

/// What one chunk store task of a PutChunks stream returns: its session, the bytes
/// reserved for it, the chunk, and whether it was stored (`None`: the repository had it).
pub(super) type StoreOutcome = (
    String,
    u64,
    Option<ChunkId>,
    Result<Option<Published>, Status>,
);
/// Chunks a PutChunks reply may call duplicates: kept good snapshots' and the identity's own.
pub(super) type Known = (Arc<HashSet<ChunkId>>, HashSet<ChunkId>);

/// Chunks of one PutChunks stream verified and stored at the same time.
pub(super) const STORE_PARALLEL: usize = 8;

impl BackupService {
    /// How long an identity's own uploads count as present to it: GC's grace, during which
    /// they are safe from garbage collection.
    pub(super) fn upload_window(&self) -> std::time::Duration {
        self.config.retention.gc_grace
    }

    /// Verifies one uploaded chunk. Returns its id when it must be stored, or
    /// `None` when the repository has it already (nothing to store).
    pub(super) fn verify_chunk(
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
        if repo.touch_chunk(&id, now).map_err(repo_status)? {
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
    pub(super) fn count_stored(
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
    pub(super) fn reserve_bytes(&self, session_id: &str, bytes: u64) -> Result<(), Status> {
        let mut sessions = self.sessions.lock().unwrap();
        let s = sessions
            .get_mut(session_id)
            .ok_or_else(|| ServiceError::SessionLost(session_id.to_string()))?;
        self.quota
            .reserve((self.clock)(), s.new_bytes, bytes)
            .map_err(|e| e.status())?;
        s.new_chunks += 1;
        s.new_bytes += bytes;
        Ok(())
    }

    /// Gives back a reservation whose chunk was not stored by this upload.
    pub(super) fn release_bytes(&self, session_id: &str, bytes: u64) {
        self.quota.release((self.clock)(), bytes);
        if let Some(s) = self.sessions.lock().unwrap().get_mut(session_id) {
            s.new_chunks = s.new_chunks.saturating_sub(1);
            s.new_bytes = s.new_bytes.saturating_sub(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::error::StoreErrorKind;
    use crate::store::memory::{MemStore, Op};

    #[test]
    fn a_chunk_whose_in_use_mark_fails_is_an_error_not_a_new_chunk() {
        let mem = MemStore::new();
        let repo = Repository::new(Arc::new(mem.clone()));
        let data = b"uploaded twice".to_vec();
        let id = ChunkId::of(&data);
        repo.put_chunk(&id, false, &data).unwrap();
        let up = proto::ChunkUpload {
            session_id: "s".into(),
            id: id.0.to_vec(),
            raw_len: data.len() as u32,
            zstd: false,
            data: data.into(),
        };
        let now = SystemTime::now();
        assert_eq!(BackupService::verify_chunk(&repo, &up, now).unwrap(), None);
        mem.fail(Op::MarkInUse, None, StoreErrorKind::Unavailable);
        let e = BackupService::verify_chunk(&repo, &up, now).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    }
}
