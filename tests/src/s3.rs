//! An in-process S3 server for tests.
//!
//! Owns one s3s service backed by s3s-fs on a temporary directory, served over
//! plain HTTP on `127.0.0.1:<port>` by a tokio task that is aborted on
//! [`Drop`]. Requests must be SigV4-signed with [`ACCESS_KEY`]/[`SECRET_KEY`].
//! Also offers an AWS SDK client for it and small helpers that tests use to
//! arrange and inspect bucket contents.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::dto::{
    self, HeadObjectInput, ListObjectsInput, ListObjectsOutput, ListObjectsV2Input,
    ListObjectsV2Output, Object,
};
use s3s::service::S3ServiceBuilder;
use s3s::{S3ErrorCode, S3Request, S3Response, S3Result, S3};
use s3s_fs::FileSystem;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Access key the server accepts.
pub const ACCESS_KEY: &str = "test-access";
/// Secret key belonging to [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "test-secret-key-0123";
/// Region the SDK clients sign for.
pub const REGION: &str = "us-east-1";

/// One listed object: key, size in bytes, ETag as the server reports it
/// (with its surrounding double quotes).
pub type Listed = (String, u64, String);

/// A running S3 server on loopback; stops when dropped.
pub struct S3Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
    /// Declared last so the files outlive the serving task.
    dir: TempDir,
}

impl S3Server {
    /// Starts a server on a free loopback port with an empty data directory.
    pub async fn start() -> Result<S3Server> {
        let dir = tempfile::Builder::new()
            .prefix("s3-server-")
            .tempdir()
            .context("creating the S3 data directory")?;
        let fs = FileSystem::new(dir.path())
            .map_err(|e| anyhow::anyhow!("{e:?}"))
            .context("opening the s3s-fs store")?;
        let service = {
            let mut b = S3ServiceBuilder::new(HarnessFs {
                inner: fs,
                root: dir.path().to_path_buf(),
            });
            b.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            b.build()
        };

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the S3 listener")?;
        let addr = listener
            .local_addr()
            .context("reading the S3 listener address")?;

        let task = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            // Dropping the set (when this task is aborted) aborts every connection.
            let mut conns = JoinSet::new();
            loop {
                let socket = match listener.accept().await {
                    // Like MinIO (Go sets TCP_NODELAY): without it, a response's header and
                    // body writes wait on the client's delayed ACK, ~40 ms per request.
                    Ok((socket, _)) => {
                        let _ = socket.set_nodelay(true);
                        socket
                    }
                    Err(_) => {
                        // E.g. out of file descriptors; retry shortly.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let conn = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                conns.spawn(async move {
                    let _ = conn.await;
                });
                while conns.try_join_next().is_some() {}
            }
        });

        Ok(S3Server { addr, task, dir })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The s3s-fs data directory: one subdirectory per bucket, keys with
    /// slashes as nested paths, plus s3s-fs bookkeeping files at the top level.
    pub fn root_dir(&self) -> &Path {
        self.dir.path()
    }

    /// SDK client with the right credentials (path-style, region
    /// [`REGION`], latest behaviour version).
    pub fn client(&self) -> Client {
        self.client_with_credentials(ACCESS_KEY, SECRET_KEY)
    }

    /// SDK client for this server signing with the given keys, e.g. wrong ones.
    pub fn client_with_credentials(&self, access_key: &str, secret_key: &str) -> Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(self.endpoint())
            .credentials_provider(Credentials::new(
                access_key,
                secret_key,
                None,
                None,
                "backup-tests",
            ))
            .force_path_style(true)
            .build();
        Client::from_conf(config)
    }

    /// Creates bucket `name`.
    pub async fn create_bucket(&self, name: &str) -> Result<()> {
        self.client()
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .with_context(|| format!("creating bucket {name:?}"))?;
        Ok(())
    }

    /// Uploads `bytes` as `bucket/key` in one PUT; returns the ETag.
    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        bytes: impl Into<bytes::Bytes>,
    ) -> Result<String> {
        let out = self
            .client()
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(bytes.into()))
            .send()
            .await
            .with_context(|| format!("putting {bucket}/{key}"))?;
        out.e_tag
            .with_context(|| format!("no ETag for {bucket}/{key}"))
    }

    /// Uploads `bytes` as `bucket/key` by multipart upload in parts of
    /// `part_size` bytes (S3 wants at least 5 MiB for all but the last);
    /// returns the ETag (`"<md5-of-md5s>-<parts>"`).
    pub async fn put_multipart(
        &self,
        bucket: &str,
        key: &str,
        bytes: &[u8],
        part_size: usize,
    ) -> Result<String> {
        if part_size == 0 {
            bail!("part size must be positive");
        }
        let client = self.client();
        let ctx = || format!("multipart upload of {bucket}/{key}");
        let upload = client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .with_context(ctx)?;
        let upload_id = upload
            .upload_id
            .with_context(|| format!("{}: no upload id", ctx()))?;

        let mut parts = Vec::new();
        for (i, chunk) in bytes.chunks(part_size).enumerate() {
            let number = i32::try_from(i + 1).context("too many parts")?;
            let part = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(number)
                .body(ByteStream::from(chunk.to_vec()))
                .send()
                .await
                .with_context(|| format!("{}: part {number}", ctx()))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag)
                    .build(),
            );
        }

        let done = client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .with_context(|| format!("{}: complete", ctx()))?;
        done.e_tag.with_context(|| format!("{}: no ETag", ctx()))
    }

    /// Downloads `bucket/key`.
    pub async fn get(&self, bucket: &str, key: &str) -> Result<Vec<u8>> {
        let out = self
            .client()
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .with_context(|| format!("getting {bucket}/{key}"))?;
        let body = out
            .body
            .collect()
            .await
            .with_context(|| format!("reading the body of {bucket}/{key}"))?;
        Ok(body.to_vec())
    }

    /// Deletes `bucket/key` (succeeds if it does not exist).
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        self.client()
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .with_context(|| format!("deleting {bucket}/{key}"))?;
        Ok(())
    }

    /// Every object in `bucket`, sorted by key, following continuation tokens.
    pub async fn list(&self, bucket: &str) -> Result<Vec<Listed>> {
        let mut pages = self
            .client()
            .list_objects_v2()
            .bucket(bucket)
            .into_paginator()
            .send();
        let mut listed = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.with_context(|| format!("listing bucket {bucket:?}"))?;
            for obj in page.contents.unwrap_or_default() {
                let key = obj.key.context("listed object without a key")?;
                let size = obj.size.with_context(|| format!("no size for {key:?}"))?;
                let size =
                    u64::try_from(size).with_context(|| format!("negative size for {key:?}"))?;
                let etag = obj.e_tag.with_context(|| format!("no ETag for {key:?}"))?;
                listed.push((key, size, etag));
            }
        }
        Ok(listed)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// s3s-fs made to behave like a real S3 server where the tests and the benchmark notice.
///
/// - s3s-fs 0.14 leaves `ETag` out of `ListObjects(V2)` results, which real S3
///   always includes: they are filled in from `HeadObject`.
/// - Listings without a delimiter are walked with plain blocking calls
///   ([`list_page`]) instead of one blocking-pool task per entry.
/// - Whole-object `GetObject` bodies are streamed in 1 MiB reads: s3s-fs reads
///   in 4 KiB steps, one tokio blocking-pool task each, which cost the benchmark
///   about a third of the machine's CPU (docs/PERFORMANCE.md, section 8).
///
/// Every other operation passes through unchanged.
struct HarnessFs {
    inner: FileSystem,
    /// s3s-fs's root: an object lives at `<root>/<bucket>/<key>`.
    root: std::path::PathBuf,
}

/// Read size for GetObject bodies (MinIO reads in 1 MiB blocks too).
const GET_READ_BYTES: usize = 1024 * 1024;

impl HarnessFs {
    /// Sets the ETag of each object that lacks one.
    async fn fill_etags(&self, bucket: &str, objects: Option<&mut Vec<Object>>) -> S3Result<()> {
        for obj in objects.into_iter().flatten() {
            let Some(key) = obj.key.clone().filter(|_| obj.e_tag.is_none()) else {
                continue;
            };
            let head = HeadObjectInput {
                bucket: bucket.to_owned(),
                key,
                ..Default::default()
            };
            match self.inner.head_object(internal_request(head)).await {
                Ok(resp) => obj.e_tag = resp.output.e_tag,
                // Deleted between listing and now: leave it without an ETag.
                Err(e) if *e.code() == S3ErrorCode::NoSuchKey => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn get(
        &self,
        req: S3Request<dto::GetObjectInput>,
    ) -> S3Result<S3Response<dto::GetObjectOutput>> {
        use tokio::io::AsyncReadExt;
        let whole = req.input.range.is_none() && req.input.part_number.is_none();
        let path = self.root.join(&req.input.bucket).join(&req.input.key);
        // s3s-fs validates the names, opens the file and computes the headers.
        let mut resp = self.inner.get_object(req).await?;
        let length = resp.output.content_length.unwrap_or(0);
        if whole {
            if let Ok(file) = tokio::fs::File::open(&path).await {
                let body = tokio_util::io::ReaderStream::with_capacity(
                    file.take(length as u64),
                    GET_READ_BYTES,
                );
                resp.output.body = Some(dto::StreamingBlob::wrap(body));
            }
        }
        Ok(resp)
    }

    async fn list_v1(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let bucket = req.input.bucket.clone();
        let mut resp = self.inner.list_objects(req).await?;
        self.fill_etags(&bucket, resp.output.contents.as_mut())
            .await?;
        Ok(resp)
    }

    async fn list_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let bucket = req.input.bucket.clone();
        let bucket_dir = self.root.join(&bucket);
        let mut resp = if req.input.delimiter.is_none() && bucket_dir.is_dir() {
            let input = req.input;
            let prefix = input.prefix.clone().unwrap_or_default();
            let after = input
                .continuation_token
                .clone()
                .max(input.start_after.clone());
            let max_keys = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
            let (page, truncated) = tokio::task::spawn_blocking(move || {
                list_page(&bucket_dir, &prefix, after.as_deref(), max_keys)
            })
            .await
            .map_err(|e| s3s::s3_error!(InternalError, "listing task: {e}"))?
            .map_err(|e| s3s::s3_error!(InternalError, "listing: {e}"))?;
            let next = truncated
                .then(|| page.last().and_then(|o| o.key.clone()))
                .flatten();
            S3Response::new(ListObjectsV2Output {
                name: Some(bucket.clone()),
                prefix: input.prefix,
                max_keys: input.max_keys,
                key_count: Some(page.len() as i32),
                is_truncated: Some(truncated),
                continuation_token: input.continuation_token,
                next_continuation_token: next,
                start_after: input.start_after,
                contents: Some(page),
                ..Default::default()
            })
        } else {
            self.inner.list_objects_v2(req).await?
        };
        self.fill_etags(&bucket, resp.output.contents.as_mut())
            .await?;
        Ok(resp)
    }
}

/// One page of a bucket listing without a delimiter: the first `max_keys` keys after
/// `after` that start with `prefix`, in key order, and whether more follow.
///
/// s3s-fs walks the bucket with one tokio blocking-pool task per directory entry and per
/// stat, for every page: listing 100,000 objects did not finish in 6 minutes. This walks
/// with plain blocking calls, still once per page (the harness keeps no index).
fn list_page(
    bucket_dir: &Path,
    prefix: &str,
    after: Option<&str>,
    max_keys: usize,
) -> std::io::Result<(Vec<Object>, bool)> {
    let mut found: Vec<(String, std::fs::Metadata)> = Vec::new();
    let mut dirs = vec![bucket_dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
                continue;
            }
            let path = entry.path();
            let Some(key) = path
                .strip_prefix(bucket_dir)
                .ok()
                .and_then(|k| k.to_str())
                .map(|k| k.replace(std::path::MAIN_SEPARATOR, "/"))
            else {
                continue;
            };
            if key.starts_with(prefix) && after.is_none_or(|a| key.as_str() > a) {
                found.push((key, entry.metadata()?));
            }
        }
    }
    found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let truncated = found.len() > max_keys;
    found.truncate(max_keys);
    let page = found
        .into_iter()
        .map(|(key, md)| Object {
            key: Some(key),
            size: Some(md.len() as i64),
            last_modified: md.modified().ok().map(dto::Timestamp::from),
            ..Default::default()
        })
        .collect();
    Ok((page, truncated))
}

/// A request made by the harness itself rather than arriving over HTTP.
fn internal_request<T>(input: T) -> S3Request<T> {
    S3Request {
        input,
        method: Default::default(),
        uri: Default::default(),
        headers: Default::default(),
        extensions: Default::default(),
        credentials: None,
        region: None,
        service: None,
        trailing_headers: None,
    }
}

/// Implements [`S3`] for [`HarnessFs`]: the listed operations go straight
/// to s3s-fs, the two listings through the ETag-filling methods, GetObject
/// through [`HarnessFs::get`].
macro_rules! delegate_to_fs {
    ($($op:ident: $input:ident => $output:ident;)*) => {
        #[async_trait::async_trait]
        impl S3 for HarnessFs {
            $(
                async fn $op(&self, req: S3Request<dto::$input>) -> S3Result<S3Response<dto::$output>> {
                    self.inner.$op(req).await
                }
            )*

            async fn get_object(&self, req: S3Request<dto::GetObjectInput>) -> S3Result<S3Response<dto::GetObjectOutput>> {
                self.get(req).await
            }

            async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
                self.list_v1(req).await
            }

            async fn list_objects_v2(
                &self,
                req: S3Request<ListObjectsV2Input>,
            ) -> S3Result<S3Response<ListObjectsV2Output>> {
                self.list_v2(req).await
            }
        }
    };
}

delegate_to_fs! {
    create_bucket: CreateBucketInput => CreateBucketOutput;
    copy_object: CopyObjectInput => CopyObjectOutput;
    delete_bucket: DeleteBucketInput => DeleteBucketOutput;
    delete_object: DeleteObjectInput => DeleteObjectOutput;
    delete_objects: DeleteObjectsInput => DeleteObjectsOutput;
    get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput;
    head_bucket: HeadBucketInput => HeadBucketOutput;
    head_object: HeadObjectInput => HeadObjectOutput;
    list_buckets: ListBucketsInput => ListBucketsOutput;
    put_object: PutObjectInput => PutObjectOutput;
    create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput;
    upload_part: UploadPartInput => UploadPartOutput;
    upload_part_copy: UploadPartCopyInput => UploadPartCopyOutput;
    list_parts: ListPartsInput => ListPartsOutput;
    complete_multipart_upload: CompleteMultipartUploadInput => CompleteMultipartUploadOutput;
    abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput;
}
