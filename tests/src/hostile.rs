//! The hostile sender: a raw gRPC client built from `proto/` (not the friendly sender
//! crate) holding a client certificate, plus what the attack tests check afterwards: that
//! every earlier snapshot still restores byte for byte and that no stored file changed.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use backup_common::chunk::ChunkId;
use backup_common::proto::{self, backup_client::BackupClient, commit_part};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Status;

use crate::stack::{noise, receiver_cli, Stack, BUCKET};

pub type Client = BackupClient<Channel>;

/// Message size the hostile client allows itself (more than the receiver accepts).
const CLIENT_MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// A TLS channel to the receiver on `port` that trusts `ca` and presents `cert`/`key`.
pub async fn channel(
    port: u16,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Channel, tonic::transport::Error> {
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)))
        .identity(Identity::from_pem(read(cert), read(key)))
        .domain_name("localhost");
    Channel::from_shared(format!("https://localhost:{port}"))
        .expect("valid uri")
        .tls_config(tls)?
        .connect()
        .await
}

/// A raw client over `channel` with generous message limits.
pub fn client(channel: Channel) -> Client {
    BackupClient::new(channel)
        .max_decoding_message_size(CLIENT_MAX_MESSAGE)
        .max_encoding_message_size(CLIENT_MAX_MESSAGE)
}

/// A raw client with the sender's own certificate (`prod-vps`): what an attacker who took
/// over the VPS holds.
pub async fn sender_client(stack: &Stack) -> Client {
    identity_client(stack, "sender.pem", "sender.key")
        .await
        .expect("connect with the sender's certificate")
}

/// A channel to the stack's receiver presenting `cert`/`key` from its certs directory.
pub async fn identity_channel(
    stack: &Stack,
    cert: &str,
    key: &str,
) -> Result<Channel, tonic::transport::Error> {
    channel(
        stack.receiver.port,
        &stack.certs.path("ca.pem"),
        &stack.certs.path(cert),
        &stack.certs.path(key),
    )
    .await
}

/// A raw client presenting the certificate `cert`/`key` from the stack's certs directory.
pub async fn identity_client(
    stack: &Stack,
    cert: &str,
    key: &str,
) -> Result<Client, tonic::transport::Error> {
    Ok(client(identity_channel(stack, cert, key).await?))
}

pub async fn begin(c: &mut Client) -> Result<String, Status> {
    begin_at(c, 0).await
}

/// Begins a session claiming `sender_time_unix` as the sender's clock.
pub async fn begin_at(c: &mut Client, sender_time_unix: i64) -> Result<String, Status> {
    Ok(c.begin_session(proto::BeginSessionRequest {
        source_host: "hostile-vps".into(),
        sender_time_unix,
    })
    .await?
    .into_inner()
    .session_id)
}

/// A raw (uncompressed) chunk upload of `data`, and its reference.
pub fn chunk(session: &str, data: &[u8]) -> (proto::ChunkUpload, proto::ChunkRef) {
    let id = ChunkId::of(data).0.to_vec();
    (
        proto::ChunkUpload {
            session_id: session.into(),
            id: id.clone(),
            raw_len: data.len() as u32,
            zstd: false,
            data: data.to_vec().into(),
        },
        proto::ChunkRef {
            id,
            len: data.len() as u32,
        },
    )
}

pub async fn put(
    c: &mut Client,
    uploads: Vec<proto::ChunkUpload>,
) -> Result<proto::PutChunksResponse, Status> {
    Ok(c.put_chunks(futures::stream::iter(uploads))
        .await?
        .into_inner())
}

/// Uploads `data` as one chunk and returns its reference.
pub async fn put_data(
    c: &mut Client,
    session: &str,
    data: &[u8],
) -> Result<proto::ChunkRef, Status> {
    let (up, r) = chunk(session, data);
    put(c, vec![up]).await?;
    Ok(r)
}

/// An object entry for `data` stored as the chunks `refs`.
pub fn object(key: &str, data: &[u8], refs: Vec<proto::ChunkRef>) -> proto::ObjectEntry {
    proto::ObjectEntry {
        key: key.into(),
        size: data.len() as u64,
        etag: "\"hostile\"".into(),
        hash: ChunkId::of(data).0.to_vec(),
        chunks: refs,
    }
}

/// A dump entry for `data` stored as the chunks `refs`, reporting `rows`.
pub fn dump(data: &[u8], refs: Vec<proto::ChunkRef>, rows: &[(&str, u64)]) -> proto::DumpEntry {
    proto::DumpEntry {
        file_name: "archiv-hostile.dump".into(),
        size: data.len() as u64,
        hash: ChunkId::of(data).0.to_vec(),
        chunks: refs,
        row_counts: rows
            .iter()
            .map(|(t, n)| proto::TableRowCount {
                table: t.to_string(),
                rows: *n,
            })
            .collect(),
        database: "archiv".into(),
    }
}

pub fn header(
    session: &str,
    dump: Option<proto::DumpEntry>,
    object_count: u64,
) -> proto::CommitHeader {
    proto::CommitHeader {
        session_id: session.into(),
        dump,
        object_count,
        bucket: BUCKET.into(),
    }
}

/// Sends a commit: the header, then each batch of objects.
pub async fn commit(
    c: &mut Client,
    header: proto::CommitHeader,
    batches: Vec<Vec<proto::ObjectEntry>>,
) -> Result<proto::CommitResponse, Status> {
    let mut parts = vec![proto::CommitPart {
        part: Some(commit_part::Part::Header(header)),
    }];
    parts.extend(batches.into_iter().map(|objects| proto::CommitPart {
        part: Some(commit_part::Part::Objects(proto::ObjectBatch {
            snapshot_id: String::new(),
            objects,
        })),
    }));
    Ok(c.commit(futures::stream::iter(parts)).await?.into_inner())
}

/// A well-formed `pg_dump -Fc` archive of `len` bytes (at least 80) that holds no table:
/// the header of archive version 1.14 (PostgreSQL 15), uncompressed, an empty table of
/// contents, and noise from `seed` as its database name. What a hostile sender can make
/// without a database; the receiver's dump check accepts it and counts no rows.
pub fn fake_dump(len: usize, seed: u64) -> Vec<u8> {
    let mut d = b"PGDMP".to_vec();
    d.extend_from_slice(&[1, 14, 0, 4, 8, 1]);
    let int = |d: &mut Vec<u8>, v: u32| {
        d.push(0);
        d.extend_from_slice(&v.to_le_bytes());
    };
    int(&mut d, 0); // no compression
    for v in [0, 0, 3, 1, 0, 126, 0] {
        int(&mut d, v); // creation time
    }
    // The database name takes what is left after itself, two versions and the TOC count.
    let versions = ["15.8", "15.8"];
    let tail = 5 + versions.iter().map(|v| 5 + v.len()).sum::<usize>() + 5;
    let name_len = len
        .checked_sub(d.len() + tail)
        .expect("fake_dump needs at least 80 bytes");
    int(&mut d, name_len as u32);
    d.extend(noise(name_len, seed).iter().map(|b| b'a' + b % 26));
    for v in versions {
        int(&mut d, v.len() as u32);
        d.extend_from_slice(v.as_bytes());
    }
    int(&mut d, 0); // no TOC entries
    assert_eq!(d.len(), len);
    d
}

/// Commits a tiny snapshot without objects (what a wiped VPS would send): one small dump
/// chunk that reports no rows.
pub async fn commit_empty(c: &mut Client, tag: u64) -> Result<proto::CommitResponse, Status> {
    let session = begin(c).await?;
    let data = fake_dump(200, tag);
    let r = put_data(c, &session, &data).await?;
    commit(
        c,
        header(&session, Some(dump(&data, vec![r], &[])), 0),
        vec![],
    )
    .await
}

/// Asserts `result` failed with `code` and a message containing `fragment`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: tonic::Code,
    fragment: &str,
) -> Status {
    match result {
        Ok(v) => panic!("expected {code:?} containing {fragment:?}, got success: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "wrong code; message: {}", s.message());
            assert!(
                s.message().contains(fragment),
                "{:?} does not contain {fragment:?}",
                s.message()
            );
            s
        }
    }
}

/// One snapshot made by the real sender, with what it must restore to.
pub struct Good {
    pub id: String,
    pub dump: Vec<u8>,
    pub objects: BTreeMap<String, Vec<u8>>,
}

/// Snapshots that must survive every attack.
#[derive(Default)]
pub struct Baseline {
    pub snapshots: Vec<Good>,
}

impl Baseline {
    /// Puts a few objects (one of several chunks) into the bucket and runs the real sender.
    pub async fn make(stack: &Stack) -> Baseline {
        let objects: BTreeMap<String, Vec<u8>> = [
            ("briefe/1923/grete.pdf", noise(300_000, 11)),
            ("fotos/hochzeit 1951.jpg", noise(2_600_000, 12)),
            (
                "metadaten/index.json",
                b"{\"titel\": \"Familienarchiv\"}\n".repeat(2000),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in &objects {
            stack.s3.put(BUCKET, k, v.clone()).await.unwrap();
        }
        let mut b = Baseline::default();
        b.record(stack, objects);
        b
    }

    /// Runs the sender once more and records the snapshot it made.
    pub fn record(&mut self, stack: &Stack, objects: BTreeMap<String, Vec<u8>>) -> String {
        let s = stack.run_sender().summary();
        let id = s["snapshot_id"].as_str().unwrap().to_string();
        let dump = std::fs::read(s["dump_file"].as_str().unwrap()).unwrap();
        self.snapshots.push(Good {
            id: id.clone(),
            dump,
            objects,
        });
        id
    }

    pub fn first(&self) -> &str {
        &self.snapshots[0].id
    }

    /// Restores every recorded snapshot and compares dump and objects byte for byte.
    pub fn assert_intact(&self, stack: &Stack) {
        for good in &self.snapshots {
            let out = tempfile::tempdir().unwrap();
            let dump_out = out.path().join("dump");
            let objects_out = out.path().join("objects");
            let r = receiver_cli(&[
                "restore",
                &good.id,
                "--repo",
                stack.repo().to_str().unwrap(),
                "--dump-out",
                dump_out.to_str().unwrap(),
                "--objects-out",
                objects_out.to_str().unwrap(),
            ]);
            assert!(
                r.status.success(),
                "snapshot {} no longer restores: {}",
                good.id,
                String::from_utf8_lossy(&r.stderr)
            );
            assert!(
                std::fs::read(&dump_out).unwrap() == good.dump,
                "snapshot {}: dump differs",
                good.id
            );
            let restored = read_tree(&objects_out);
            assert_eq!(
                restored.keys().collect::<Vec<_>>(),
                good.objects.keys().collect::<Vec<_>>(),
                "snapshot {}: object keys differ",
                good.id
            );
            for (k, v) in &good.objects {
                assert!(
                    &restored[k] == v,
                    "snapshot {}: object {k} differs",
                    good.id
                );
            }
        }
    }
}

pub use crate::checks::read_tree;

/// What the repository stores (chunks, snapshots, acks): path → (mode, blake3 of bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored(pub BTreeMap<PathBuf, (u32, [u8; 32])>);

impl Stored {
    pub fn capture(repo: &Path) -> Stored {
        let mut files = BTreeMap::new();
        for dir in ["chunks", "snapshots", "acks"] {
            let root = repo.join(dir);
            if !root.exists() {
                continue;
            }
            let mut dirs = vec![root];
            while let Some(d) = dirs.pop() {
                for e in std::fs::read_dir(&d).unwrap() {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        dirs.push(p);
                    } else {
                        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
                        let hash = *blake3::hash(&std::fs::read(&p).unwrap()).as_bytes();
                        files.insert(p.strip_prefix(repo).unwrap().to_path_buf(), (mode, hash));
                    }
                }
            }
        }
        Stored(files)
    }

    /// Asserts nothing was added, changed or removed since `self` was captured.
    #[track_caller]
    pub fn assert_unchanged(&self, repo: &Path) {
        let now = Stored::capture(repo);
        let added: Vec<_> = now.0.keys().filter(|k| !self.0.contains_key(*k)).collect();
        let changed: Vec<_> = self
            .0
            .iter()
            .filter(|(k, v)| now.0.get(*k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        assert!(
            added.is_empty() && changed.is_empty(),
            "repository changed: added {added:?}, changed or removed {changed:?}"
        );
    }

    /// Asserts every file captured before is still there, unchanged (new ones may exist).
    #[track_caller]
    pub fn assert_kept(&self, repo: &Path) {
        let now = Stored::capture(repo);
        for (k, v) in &self.0 {
            assert_eq!(now.0.get(k), Some(v), "{} changed or vanished", k.display());
        }
    }
}

/// The audit log's records (JSON lines).
pub fn audit(repo: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(backup_receiver::monitoring::audit::dir_for(repo).join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

/// Writes the fake receiver clock file (RFC 3339).
pub fn set_clock(path: &Path, rfc3339: &str) -> Result<()> {
    std::fs::write(path, rfc3339).context("write fake clock")
}

/// What the fake tailscaled says about every peer.
#[derive(Debug, Clone)]
pub enum WhoisAnswer {
    /// A tailnet node with these tags (empty: an untagged, user-owned node).
    Node { name: String, tags: Vec<String> },
    /// tailscaled does not know the address (HTTP 404).
    NotFound,
}

/// A stand-in for tailscaled's LocalAPI on a unix socket: answers
/// `GET /localapi/v0/whois?addr=…` with JSON shaped like `apitype.WhoIsResponse`
/// (`Node` as tailcfg.Node, `UserProfile`, `CapMap`), chunked as Go's net/http sends it.
pub struct FakeTailscaled {
    pub socket: PathBuf,
    pub answer: std::sync::Arc<std::sync::Mutex<WhoisAnswer>>,
    /// Request lines received, e.g. `GET /localapi/v0/whois?addr=127.0.0.1:5555 HTTP/1.1`.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeTailscaled {
    pub fn start(socket: &Path, answer: WhoisAnswer) -> Result<FakeTailscaled> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::UnixListener::bind(socket)?;
        let answer = std::sync::Arc::new(std::sync::Mutex::new(answer));
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (a, r) = (answer.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut byte = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut byte).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&byte[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf).to_string();
                let line = text.lines().next().unwrap_or_default().to_string();
                let host_ok = text
                    .lines()
                    .any(|l| l.eq_ignore_ascii_case("host: local-tailscaled.sock"));
                r.lock().unwrap().push(line.clone());
                let addr = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.strip_prefix("/localapi/v0/whois?addr="))
                    .map(str::to_string);
                let answer = a.lock().unwrap().clone();
                let response = match (addr, answer, host_ok) {
                    (Some(addr), WhoisAnswer::Node { name, tags }, true) => {
                        let body = whois_json(&name, &tags, &addr);
                        let (x, y) = body.split_at(body.len() / 2);
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                             Date: Wed, 25 Nov 2026 03:00:00 GMT\r\nTransfer-Encoding: chunked\r\n\r\n\
                             {:x}\r\n{x}\r\n{:x}\r\n{y}\r\n0\r\n\r\n",
                            x.len(),
                            y.len()
                        )
                    }
                    (Some(_), WhoisAnswer::NotFound, true) => {
                        let body = "no match for IP:port\n";
                        format!(
                            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\
                             X-Content-Type-Options: nosniff\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    }
                    _ => "HTTP/1.1 400 Bad Request\r\nContent-Length: 12\r\n\r\nbad request\n"
                        .to_string(),
                };
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            }
        });
        Ok(FakeTailscaled {
            socket: socket.to_path_buf(),
            answer,
            requests,
            task,
        })
    }

    pub fn set(&self, answer: WhoisAnswer) {
        *self.answer.lock().unwrap() = answer;
    }
}

impl Drop for FakeTailscaled {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A whois answer as tailscaled writes it (fields of tailcfg.Node; `Tags` omitted when empty).
fn whois_json(name: &str, tags: &[String], addr: &str) -> String {
    let host = name.split('.').next().unwrap_or(name);
    let mut node = serde_json::json!({
        "ID": 7_311_526_134_u64,
        "StableID": "nX1Yz2CNTRL",
        "Name": name,
        "User": 4_242_424_242_u64,
        "Key": "nodekey:5a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "KeyExpiry": "0001-01-01T00:00:00Z",
        "Machine": "mkey:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "DiscoKey": "discokey:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        "Addresses": ["100.101.102.103/32", "fd7a:115c:a1e0::1/128"],
        "AllowedIPs": ["100.101.102.103/32", "fd7a:115c:a1e0::1/128"],
        "Endpoints": [addr],
        "Hostinfo": {"OS": "linux", "Hostname": host},
        "Created": "2026-01-10T08:00:00Z",
        "Cap": 106,
        "MachineAuthorized": true,
        "ComputedName": host,
        "ComputedNameWithHost": host,
    });
    let login = if tags.is_empty() {
        "oma@example.org"
    } else {
        node["Tags"] = serde_json::json!(tags);
        "tagged-devices"
    };
    serde_json::json!({
        "Node": node,
        "UserProfile": {
            "ID": 4_242_424_242_u64,
            "LoginName": login,
            "DisplayName": login,
            "ProfilePicURL": "",
            "Roles": [],
        },
        "CapMap": {},
    })
    .to_string()
}

/// Waits (up to 10 s) until the audit log holds a record matching `pred`, and returns it.
pub async fn wait_for_audit(
    repo: &Path,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(r) = audit(repo).into_iter().find(&pred) {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no such audit record: {:?}",
            audit(repo)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
