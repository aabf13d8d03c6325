//! Chunk upload pipeline. Producers (the dump and object readers, on blocking threads)
//! hand chunks into a bounded channel; one task batches them, asks the receiver which it
//! lacks, compresses only those (off the async executor) and uploads them. Memory is
//! bounded by the channel and the batches in flight, whatever the data size.

use std::collections::HashSet;
use std::sync::Arc;

use backup_common::chunk::{compress_if_worth, Chunk, ChunkId};
use backup_common::proto;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::Status;

use crate::client::Client;
use crate::progress::Progress;
use crate::session::Session;

/// A batch is sent when it holds this many bytes or chunks.
const BATCH_BYTES: usize = 16 * 1024 * 1024;
const BATCH_CHUNKS: usize = 256;
/// Batches uploading at once.
const IN_FLIGHT: usize = 3;
/// Chunks waiting between producers and the batcher.
const QUEUE: usize = 8;

/// Totals of what crossed the network.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UploadStats {
    pub chunks_seen: u64,
    pub chunks_sent: u64,
    /// Raw bytes of the chunks that were sent.
    pub raw_bytes_sent: u64,
    /// Bytes on the wire for chunk payloads (after compression).
    pub wire_bytes_sent: u64,
}

/// Handle producers use to submit chunks. Cloneable; the pipeline ends when every handle
/// is dropped and [`Uploader::finish`] is awaited.
#[derive(Clone)]
pub struct ChunkSink {
    tx: mpsc::Sender<Chunk>,
    progress: Progress,
}

impl ChunkSink {
    /// Blocks the calling (blocking-pool) thread until the chunk is queued.
    pub fn send_blocking(&self, chunk: Chunk) -> Result<(), UploadClosed> {
        self.progress.read(chunk.data.len() as u64);
        self.tx.blocking_send(chunk).map_err(|_| UploadClosed)
    }
}

#[cfg(test)]
impl ChunkSink {
    /// A sink whose chunks go to the returned receiver instead of the network.
    pub(crate) fn for_test(capacity: usize) -> (ChunkSink, mpsc::Receiver<Chunk>) {
        let (tx, rx) = mpsc::channel(capacity);
        let progress = Progress::for_stderr();
        (ChunkSink { tx, progress }, rx)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the upload pipeline stopped (see the upload error)")]
pub struct UploadClosed;

pub struct Uploader {
    sink: Option<ChunkSink>,
    task: tokio::task::JoinHandle<Result<UploadStats, Status>>,
}

struct Ctx {
    client: Client,
    session: Arc<Session>,
    progress: Progress,
}

impl Uploader {
    pub fn start(client: Client, session: Arc<Session>, progress: Progress) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let ctx = Arc::new(Ctx {
            client,
            session,
            progress: progress.clone(),
        });
        let task = tokio::spawn(run(ctx, rx));
        Uploader {
            sink: Some(ChunkSink { tx, progress }),
            task,
        }
    }

    pub fn sink(&self) -> ChunkSink {
        self.sink.clone().expect("uploader not finished")
    }

    /// Waits until every submitted chunk is stored on the receiver.
    pub async fn finish(mut self) -> Result<UploadStats, Status> {
        self.sink.take();
        self.task
            .await
            .map_err(|e| Status::internal(format!("upload task: {e}")))?
    }
}

async fn run(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<Chunk>) -> Result<UploadStats, Status> {
    let mut stats = UploadStats::default();
    // Ids already known to be on the receiver or queued for it in this run.
    let mut known: HashSet<ChunkId> = HashSet::new();
    let mut batch: Vec<Chunk> = Vec::new();
    let mut batch_bytes = 0;
    let mut inflight: JoinSet<Result<UploadStats, Status>> = JoinSet::new();
    loop {
        let next = rx.recv().await;
        let closed = next.is_none();
        if let Some(chunk) = next {
            stats.chunks_seen += 1;
            if known.insert(chunk.id) {
                batch_bytes += chunk.data.len();
                batch.push(chunk);
            }
        }
        if !batch.is_empty()
            && (closed || batch_bytes >= BATCH_BYTES || batch.len() >= BATCH_CHUNKS)
        {
            while inflight.len() >= IN_FLIGHT {
                add(&mut stats, inflight.join_next().await.expect("non-empty"))?;
            }
            inflight.spawn(send_batch(ctx.clone(), std::mem::take(&mut batch)));
            batch_bytes = 0;
        }
        if closed {
            break;
        }
    }
    while let Some(done) = inflight.join_next().await {
        add(&mut stats, done)?;
    }
    Ok(stats)
}

fn add(
    stats: &mut UploadStats,
    done: Result<Result<UploadStats, Status>, tokio::task::JoinError>,
) -> Result<(), Status> {
    let s = done.map_err(|e| Status::internal(format!("upload batch task: {e}")))??;
    stats.chunks_sent += s.chunks_sent;
    stats.raw_bytes_sent += s.raw_bytes_sent;
    stats.wire_bytes_sent += s.wire_bytes_sent;
    Ok(())
}

/// Uploads the chunks of `batch` the receiver lacks. A failed attempt (a cut connection,
/// a lost session) asks again which chunks are missing, so chunks that arrived before the
/// failure are not sent twice.
async fn send_batch(ctx: Arc<Ctx>, batch: Vec<Chunk>) -> Result<UploadStats, Status> {
    let batch = Arc::new(batch);
    let stats = ctx
        .session
        .call("upload batch", |session_id| {
            let (client, batch) = (ctx.client.clone(), batch.clone());
            async move { upload_missing(client, session_id, &batch).await }
        })
        .await?;
    ctx.progress.sent(stats.wire_bytes_sent);
    Ok(stats)
}

async fn upload_missing(
    mut client: Client,
    session_id: String,
    batch: &[Chunk],
) -> Result<UploadStats, Status> {
    let req = proto::MissingChunksRequest {
        session_id: session_id.clone(),
        ids: batch.iter().map(|c| c.id.0.to_vec()).collect(),
    };
    let missing: HashSet<Vec<u8>> = client
        .missing_chunks(req)
        .await?
        .into_inner()
        .missing
        .into_iter()
        .collect();
    let to_send: Vec<(ChunkId, Bytes)> = batch
        .iter()
        .filter(|c| missing.contains(&c.id.0[..]))
        .map(|c| (c.id, c.data.clone()))
        .collect();
    if to_send.is_empty() {
        return Ok(UploadStats::default());
    }
    let uploads: Vec<proto::ChunkUpload> = tokio::task::spawn_blocking(move || {
        to_send
            .into_iter()
            .map(|(id, data)| {
                let raw_len = data.len() as u32;
                let (zstd, data) = match compress_if_worth(&data) {
                    Some(packed) => (true, Bytes::from(packed)),
                    None => (false, data),
                };
                proto::ChunkUpload {
                    session_id: session_id.clone(),
                    id: id.0.to_vec(),
                    raw_len,
                    zstd,
                    data,
                }
            })
            .collect()
    })
    .await
    .map_err(|e| Status::internal(format!("compression task: {e}")))?;
    let stats = UploadStats {
        chunks_seen: 0,
        chunks_sent: uploads.len() as u64,
        raw_bytes_sent: uploads.iter().map(|u| u64::from(u.raw_len)).sum(),
        wire_bytes_sent: uploads.iter().map(|u| u.data.len() as u64).sum(),
    };
    client.put_chunks(tokio_stream::iter(uploads)).await?;
    Ok(stats)
}
