//! The bucket side of a run: list every object, compare key/size/ETag with the previous
//! snapshot, and stream only new or changed objects through the chunker. Unchanged
//! objects are carried over without being read; deleted ones simply drop out of the new
//! manifest (nothing is ever removed on the receiver).

use std::collections::HashMap;

use crate::config::{read_secret, ObjectsConfig};
use aws_sdk_s3::Client as S3;
use backup_common::chunk::{chunk_stream, Chunk, ChunkError, ChunkId, StreamSummary, MAX_CHUNK};
use backup_common::keys;
use backup_common::manifest::{ChunkRef, ObjectEntry};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::progress::Progress;
use crate::upload::{ChunkSink, UploadClosed};

/// One object as the bucket listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    pub etag: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("bucket {bucket:?}: {message}")]
    Bucket { bucket: String, message: String },
    #[error("object {key:?}: {message}")]
    Object { key: String, message: String },
    #[error(transparent)]
    Upload(#[from] UploadClosed),
    #[error(transparent)]
    Config(#[from] backup_common::config::ConfigError),
}

impl From<ChunkError> for ObjectError {
    fn from(e: ChunkError) -> Self {
        ObjectError::Object {
            key: String::new(),
            message: e.to_string(),
        }
    }
}

/// What changed since the previous snapshot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delta {
    pub total: u64,
    pub new: u64,
    pub changed: u64,
    pub unchanged: u64,
    pub gone: u64,
    pub bytes_read: u64,
}

pub fn client(cfg: &ObjectsConfig) -> Result<S3, ObjectError> {
    let access = read_secret("objects.access_key_file", &cfg.access_key_file)?;
    let secret = read_secret("objects.secret_key_file", &cfg.secret_key_file)?;
    Ok(backup_common::s3::client(
        cfg.endpoint.as_str(),
        &cfg.region,
        access,
        secret,
        "backup-sender",
    ))
}

/// An SDK error as its chain of messages (`dispatch failure: io error: … Connection
/// refused`), without the debug dump `DisplayErrorContext` appends.
fn s3_message<E: std::error::Error + 'static>(e: E) -> String {
    backup_common::error_chain(&e)
}

/// Lists the whole bucket. Folder markers (`dir/`, empty) are skipped; any other key that
/// cannot be restored safely fails the run, since a silently skipped object is data loss.
pub async fn list(s3: &S3, bucket: &str) -> Result<Vec<Listed>, ObjectError> {
    let mut out = Vec::new();
    let mut pages = s3.list_objects_v2().bucket(bucket).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| ObjectError::Bucket {
            bucket: bucket.to_string(),
            message: format!("listing failed: {}", s3_message(e)),
        })?;
        for o in page.contents() {
            let key = o.key().unwrap_or_default().to_string();
            let size = o.size().unwrap_or(0).max(0) as u64;
            if key.ends_with('/') && size == 0 {
                tracing::debug!(key, "skipping folder marker");
                continue;
            }
            keys::validate(&key).map_err(|e| ObjectError::Object {
                key: key.clone(),
                message: format!("cannot be backed up safely: {e}"),
            })?;
            out.push(Listed {
                key,
                size,
                etag: o.e_tag().unwrap_or_default().to_string(),
            });
        }
    }
    Ok(out)
}

/// Downloads one object and streams it through the chunker.
async fn read_object(
    s3: &S3,
    bucket: &str,
    listed: &Listed,
    sink: ChunkSink,
) -> Result<ObjectEntry, ObjectError> {
    let obj_err = |message: String| ObjectError::Object {
        key: listed.key.clone(),
        message,
    };
    let resp = s3
        .get_object()
        .bucket(bucket)
        .key(&listed.key)
        .send()
        .await
        .map_err(|e| obj_err(format!("download failed: {}", s3_message(e))))?;
    // The object may have been replaced since the listing: record what was read.
    let etag = resp
        .e_tag()
        .map(str::to_string)
        .unwrap_or_else(|| listed.etag.clone());
    let length = resp
        .content_length()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(listed.size);
    let mut body = resp.body;
    let mut head = bytes::BytesMut::new();
    if length <= u64::from(MAX_CHUNK) {
        // Into one buffer of the announced size, but never past one chunk's worth: a body
        // longer than announced goes on to the chunker with what was read so far.
        head.reserve(length as usize);
        while head.len() <= MAX_CHUNK as usize {
            match body
                .try_next()
                .await
                .map_err(|e| obj_err(format!("download failed: {e}")))?
            {
                Some(piece) => head.extend_from_slice(&piece),
                None => return whole_object(&listed.key, etag, head.freeze(), sink).await,
            }
        }
    }
    let key = listed.key.clone();
    let rest = body.into_async_read();
    let (summary, chunks) = tokio::task::spawn_blocking(move || {
        let reader = std::io::Read::chain(
            std::io::Cursor::new(head.freeze()),
            tokio_util::io::SyncIoBridge::new(rest),
        );
        cut_object(&key, reader, &sink)
    })
    .await
    .map_err(|e| obj_err(format!("chunker task: {e}")))??;
    Ok(ObjectEntry {
        key: listed.key.clone(),
        size: summary.size,
        etag,
        hash: summary.hash,
        chunks,
    })
}

/// Cuts an object's bytes by content and queues the chunks (on a blocking thread).
fn cut_object(
    key: &str,
    reader: impl std::io::Read,
    sink: &ChunkSink,
) -> Result<(StreamSummary, Vec<ChunkRef>), ObjectError> {
    let mut chunks = Vec::new();
    let summary = chunk_stream::<_, ObjectError>(reader, |c| {
        chunks.push(ChunkRef {
            id: c.id,
            len: c.data.len() as u32,
        });
        sink.send_blocking(c)?;
        Ok(())
    })
    .map_err(|e| match e {
        ObjectError::Object { message, .. } => ObjectError::Object {
            key: key.to_string(),
            message,
        },
        other => other,
    })?;
    Ok((summary, chunks))
}

/// An object no larger than the largest chunk (`body`) becomes a single chunk.
///
/// Content-defined cuts pay off when a later version shares content with an earlier one
/// at shifted offsets; the archive's small objects are scans and documents that change
/// whole, if at all, and identical copies still deduplicate as one chunk. A single chunk
/// skips the cut, the copy through the chunker's buffer and the second hash (the chunk
/// id *is* the object's hash), and the receiver stores one file instead of up to four.
async fn whole_object(
    key: &str,
    etag: String,
    body: Bytes,
    sink: ChunkSink,
) -> Result<ObjectEntry, ObjectError> {
    let object_err = |message: String| ObjectError::Object {
        key: key.to_string(),
        message,
    };
    debug_assert!(body.len() <= MAX_CHUNK as usize);
    let (hash, chunks) = tokio::task::spawn_blocking(move || {
        let id = ChunkId::of(&body);
        let chunks = if body.is_empty() {
            Vec::new()
        } else {
            let len = body.len() as u32;
            sink.send_blocking(Chunk { id, data: body })?;
            vec![ChunkRef { id, len }]
        };
        Ok::<_, ObjectError>((id, chunks))
    })
    .await
    .map_err(|e| object_err(format!("hashing task: {e}")))??;
    Ok(ObjectEntry {
        key: key.to_string(),
        size: chunks.iter().map(|c| u64::from(c.len)).sum(),
        etag,
        hash,
        chunks,
    })
}

/// Builds tonight's object entries: unchanged ones carried over from `previous`, new and
/// changed ones read and chunked, `concurrency` at a time. Entries come back sorted by key.
pub async fn sync(
    s3: &S3,
    bucket: &str,
    listed: Vec<Listed>,
    previous: &HashMap<String, ObjectEntry>,
    concurrency: usize,
    sink: ChunkSink,
    progress: &Progress,
) -> Result<(Vec<ObjectEntry>, Delta), ObjectError> {
    let mut delta = Delta {
        total: listed.len() as u64,
        ..Delta::default()
    };
    let mut entries = Vec::with_capacity(listed.len());
    let mut to_read = Vec::new();
    for l in listed {
        match previous.get(&l.key) {
            Some(p) if p.size == l.size && p.etag == l.etag => {
                delta.unchanged += 1;
                entries.push(p.clone());
            }
            Some(_) => {
                delta.changed += 1;
                to_read.push(l);
            }
            None => {
                delta.new += 1;
                to_read.push(l);
            }
        }
    }
    let listed_keys: std::collections::HashSet<&str> = entries
        .iter()
        .map(|e| e.key.as_str())
        .chain(to_read.iter().map(|l| l.key.as_str()))
        .collect();
    delta.gone = previous
        .keys()
        .filter(|k| !listed_keys.contains(k.as_str()))
        .count() as u64;
    drop(listed_keys);

    progress.objects_total(to_read.len() as u64);
    let read: Vec<ObjectEntry> = futures::stream::iter(to_read.iter())
        .map(|l| async {
            let entry = read_object(s3, bucket, l, sink.clone()).await;
            progress.object_done();
            entry
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    delta.bytes_read = read.iter().map(|e| e.size).sum();
    entries.extend(read);
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    Ok((entries, delta))
}

/// Checks the bucket can be listed (pre-flight).
pub async fn check_bucket(s3: &S3, bucket: &str) -> Result<(), ObjectError> {
    s3.list_objects_v2()
        .bucket(bucket)
        .max_keys(1)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| ObjectError::Bucket {
            bucket: bucket.to_string(),
            message: s3_message(e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize) -> Bytes {
        use rand::{RngCore, SeedableRng};
        let mut data = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut data);
        data.into()
    }

    /// Runs `whole_object` on `body` and returns its entry and the chunks it queued.
    async fn whole(body: Bytes) -> (ObjectEntry, Vec<Chunk>) {
        let (sink, mut rx) = ChunkSink::for_test(64);
        let entry = whole_object("k", "\"etag\"".into(), body, sink)
            .await
            .unwrap();
        let mut queued = Vec::new();
        while let Some(c) = rx.recv().await {
            queued.push(c);
        }
        (entry, queued)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_object_is_one_chunk_named_by_its_hash() {
        let body = noise(1_500_000);
        let (entry, queued) = whole(body.clone()).await;
        assert_eq!(entry.size, body.len() as u64);
        assert_eq!(entry.hash, ChunkId::of(&body));
        assert_eq!(entry.chunks.len(), 1);
        assert_eq!(entry.chunks[0].id, entry.hash);
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].data, body);

        let (empty, queued) = whole(Bytes::new()).await;
        assert_eq!((empty.size, empty.chunks.len(), queued.len()), (0, 0, 0));
        assert_eq!(empty.hash, ChunkId::of(b""));
    }

    #[test]
    fn a_larger_object_is_cut_by_content_across_the_bytes_read_ahead() {
        // A body announced small that turned out larger: the first ~4 MiB were read into
        // memory before the chunker took over the rest of the stream.
        let body = noise(MAX_CHUNK as usize + 1_000_000);
        let (head, rest) = body.split_at(MAX_CHUNK as usize + 10);
        let (sink, mut rx) = ChunkSink::for_test(64);
        let reader = std::io::Read::chain(std::io::Cursor::new(head), rest);
        let (summary, chunks) = cut_object("k", reader, &sink).unwrap();
        drop(sink);
        assert!(chunks.len() >= 2, "{chunks:?}");
        assert_eq!(summary.size, body.len() as u64);
        assert_eq!(summary.hash, ChunkId::of(&body));
        let mut joined = Vec::new();
        let mut ids = Vec::new();
        while let Ok(c) = rx.try_recv() {
            joined.extend_from_slice(&c.data);
            ids.push(c.id);
        }
        assert_eq!(joined, body);
        assert_eq!(ids, chunks.iter().map(|c| c.id).collect::<Vec<_>>());
    }
}
