//! `restore --objects-to-s3`: objects uploaded to an S3 bucket, each stream verified on
//! the way (chunk ids, then the whole size and blake3 before the object becomes visible,
//! or before a multipart upload completes).
//!
//! The bucket may be the live one, so an object that is there already is looked at
//! first: HEAD gives its size; when the size equals the snapshot's, the object is read
//! (GET) and its blake3 compared with the snapshot's hash. (The ETag is not used: the
//! snapshot's is the sender's claim, and a multipart or SSE-KMS ETag is no MD5 of the
//! content.) The same content is left alone ("identical"); other content is left alone
//! and reported ("skipped") unless `overwrite`. The check and the upload are not atomic:
//! a writer that changes the object in between is overwritten.

use std::io::{self, Write};

use backup_common::keys;
use backup_common::manifest::{Manifest, ObjectEntry};

use crate::operator::progress::Progress;
use crate::operator::restore::{write_stream, ObjectTotals, RestoreError};
use crate::store::repository::Repository;

/// Where `--objects-to-s3` uploads.
pub struct S3Target {
    pub client: aws_sdk_s3::Client,
    pub bucket: String,
}

/// Parts of at least this size go into a multipart upload (S3's minimum is 5 MiB).
const PART_BYTES: usize = 16 * 1024 * 1024;

/// What an upload to S3 did.
#[derive(Debug, Default)]
pub struct S3Outcome {
    pub uploaded: ObjectTotals,
    /// Objects already in the bucket with the snapshot's content (not uploaded again).
    pub identical: Vec<String>,
    /// Objects in the bucket with other content, left as they are (no `overwrite`).
    pub skipped: Vec<Skipped>,
    /// Objects in the bucket with other content that were replaced (`overwrite`).
    pub overwritten: Vec<String>,
}

/// An object left alone because the bucket holds other content at its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub key: String,
    pub live_size: u64,
    /// The live object's blake3, when its size matched and it was read.
    pub live_hash: Option<String>,
}

/// The bucket's object at a key, as far as the comparison needs it.
enum Live {
    Absent,
    Same,
    Other { size: u64, hash: Option<String> },
}

async fn live_state(target: &S3Target, o: &ObjectEntry) -> Result<Live, RestoreError> {
    let s3err = |e: &(dyn std::error::Error + 'static)| RestoreError::S3 {
        key: o.key.clone(),
        // The chain of messages, never the SDK's debug dump (`DispatchFailure { … }`).
        message: backup_common::error_chain(e),
    };
    let head = target
        .client
        .head_object()
        .bucket(&target.bucket)
        .key(&o.key)
        .send()
        .await;
    let size = match head {
        Ok(h) => h.content_length().unwrap_or(0).max(0) as u64,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {
            return Ok(Live::Absent)
        }
        Err(e) => return Err(s3err(&e)),
    };
    if size != o.size {
        return Ok(Live::Other { size, hash: None });
    }
    let got = target
        .client
        .get_object()
        .bucket(&target.bucket)
        .key(&o.key)
        .send()
        .await
        .map_err(|e| s3err(&e))?;
    let mut body = got.body;
    let mut hasher = blake3::Hasher::new();
    let mut read = 0u64;
    while let Some(bytes) = body.try_next().await.map_err(|e| s3err(&e))? {
        read += bytes.len() as u64;
        hasher.update(&bytes);
    }
    let hash = hasher.finalize();
    if read == o.size && hash.as_bytes() == &o.hash.0 {
        Ok(Live::Same)
    } else {
        Ok(Live::Other {
            size: read,
            hash: Some(hash.to_hex().to_string()),
        })
    }
}

/// Uploads the snapshot's objects to the bucket, verifying each stream on the way, and
/// leaves alone every object the bucket already holds with the same content, and, unless
/// `overwrite`, with other content (reported in [`S3Outcome::skipped`]). Memory stays at
/// about one part per object: large objects go up as multipart uploads.
pub async fn objects_to_s3(
    repo: &Repository,
    manifest: &Manifest,
    target: &S3Target,
    overwrite: bool,
    progress: &Progress,
) -> Result<S3Outcome, RestoreError> {
    let mut outcome = S3Outcome::default();
    progress.start(
        Some(manifest.objects.len() as u64),
        Some(manifest.objects.iter().map(|o| o.size).sum()),
        "objects",
    );
    for o in &manifest.objects {
        keys::validate(&o.key).map_err(|first| RestoreError::UnsafeKeys { count: 1, first })?;
        match live_state(target, o).await? {
            Live::Same => {
                outcome.identical.push(o.key.clone());
                progress.item(o.size);
                continue;
            }
            Live::Other { size, hash } if !overwrite => {
                outcome.skipped.push(Skipped {
                    key: o.key.clone(),
                    live_size: size,
                    live_hash: hash,
                });
                progress.item(o.size);
                continue;
            }
            Live::Other { .. } => outcome.overwritten.push(o.key.clone()),
            Live::Absent => {}
        }
        upload_object(repo, o, target).await?;
        outcome.uploaded.objects += 1;
        outcome.uploaded.bytes += o.size;
        progress.item(o.size);
    }
    progress.finish();
    Ok(outcome)
}

async fn upload_object(
    repo: &Repository,
    o: &ObjectEntry,
    target: &S3Target,
) -> Result<(), RestoreError> {
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let s3err = |e: &(dyn std::error::Error + 'static)| RestoreError::S3 {
        key: o.key.clone(),
        // The chain of messages, never the SDK's debug dump (`DispatchFailure { … }`).
        message: backup_common::error_chain(e),
    };
    // Parts are assembled on a blocking thread and handed over one at a time.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let repo2 = repo.clone();
    let entry = o.clone();
    let producer = tokio::task::spawn_blocking(move || -> Result<(), RestoreError> {
        struct PartWriter {
            buf: Vec<u8>,
            tx: tokio::sync::mpsc::Sender<Vec<u8>>,
        }
        impl Write for PartWriter {
            fn write(&mut self, data: &[u8]) -> io::Result<usize> {
                self.buf.extend_from_slice(data);
                if self.buf.len() >= PART_BYTES {
                    let part = std::mem::take(&mut self.buf);
                    self.tx
                        .blocking_send(part)
                        .map_err(|_| io::Error::other("upload stopped"))?;
                }
                Ok(data.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = PartWriter {
            buf: Vec::new(),
            tx,
        };
        write_stream(
            &repo2,
            &entry.key,
            &entry.chunks,
            entry.size,
            entry.hash,
            &mut w,
        )?;
        if !w.buf.is_empty() || entry.size == 0 {
            let _ = w.tx.blocking_send(std::mem::take(&mut w.buf));
        }
        Ok(())
    });
    let first = rx.recv().await.unwrap_or_default();
    let second = rx.recv().await;
    match second {
        None => {
            // Single part: wait for verification before the object becomes visible.
            producer.await.map_err(|e| s3err(&e))??;
            target
                .client
                .put_object()
                .bucket(&target.bucket)
                .key(&o.key)
                .body(ByteStream::from(first))
                .send()
                .await
                .map_err(|e| s3err(&e))?;
        }
        Some(second) => {
            let upload = target
                .client
                .create_multipart_upload()
                .bucket(&target.bucket)
                .key(&o.key)
                .send()
                .await
                .map_err(|e| s3err(&e))?;
            let upload_id = upload.upload_id().unwrap_or_default().to_string();
            let mut parts = Vec::new();
            let mut next = Some(first);
            let mut pending = Some(second);
            let mut number = 1;
            let result: Result<(), RestoreError> = async {
                while let Some(body) = next.take() {
                    let out = target
                        .client
                        .upload_part()
                        .bucket(&target.bucket)
                        .key(&o.key)
                        .upload_id(&upload_id)
                        .part_number(number)
                        .body(ByteStream::from(body))
                        .send()
                        .await
                        .map_err(|e| s3err(&e))?;
                    parts.push(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(out.e_tag().map(str::to_string))
                            .build(),
                    );
                    number += 1;
                    next = match pending.take() {
                        Some(p) => Some(p),
                        None => rx.recv().await,
                    };
                }
                producer.await.map_err(|e| s3err(&e))??;
                Ok(())
            }
            .await;
            if let Err(e) = result {
                let _ = target
                    .client
                    .abort_multipart_upload()
                    .bucket(&target.bucket)
                    .key(&o.key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                return Err(e);
            }
            target
                .client
                .complete_multipart_upload()
                .bucket(&target.bucket)
                .key(&o.key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| s3err(&e))?;
        }
    }
    Ok(())
}
