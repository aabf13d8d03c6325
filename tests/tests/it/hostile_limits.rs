//! Attacks on the receiver's resources rather than its data (issue 12): whoever holds the
//! sender's certificate, or none, must not be able to lock the honest night out, fill the
//! NAS through the audit log, or keep a revoked certificate working. Each test asserts the
//! bound, that the honest night (the real sender) still succeeds, and that every earlier
//! snapshot still restores byte for byte.

use std::time::Duration;

use backup_common::proto::{self, commit_part};
use backup_tests::hostile::*;
use backup_tests::stack::Stack;
use tonic::Code;

async fn stack_with(extra: &str) -> (Stack, Baseline) {
    backup_common::tls::install_crypto_provider();
    let stack = Stack::start_with(extra, &[]).await.unwrap();
    let baseline = Baseline::make(&stack).await;
    (stack, baseline)
}

/// Waits (up to 30 s) until the receiver's log holds `n` lines containing `fragment`.
async fn wait_for_log(stack: &Stack, fragment: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = stack.receiver.log_text();
        if text.lines().filter(|l| l.contains(fragment)).count() >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {n} log lines contain {fragment:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Begins a session and starts its commit: the header, then nothing, with the stream
/// held open. Returns the session and the commit call's outcome once the receiver ends it.
async fn stalled_commit(
    c: &mut Client,
) -> (
    String,
    tokio::task::JoinHandle<Result<proto::CommitResponse, tonic::Status>>,
) {
    let session = begin(c).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    tx.send(proto::CommitPart {
        part: Some(commit_part::Part::Header(header(&session, None, 1))),
    })
    .await
    .unwrap();
    let mut c = c.clone();
    let call = tokio::spawn(async move {
        // The sender half stays alive as long as the call: the stream never ends.
        let _tx = tx;
        c.commit(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
            .await
            .map(|r| r.into_inner())
    });
    (session, call)
}

// ------------------------------------------------------------- 2. stalled commits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stalled_commits_do_not_lock_out_the_honest_night() {
    // The default max_sessions (2): two stalled commits fill the session table.
    let (stack, mut baseline) = stack_with("[limits]\ncommit_idle_timeout = \"10s\"\n").await;
    let mut c = sender_client(&stack).await;
    let (first, first_call) = stalled_commit(&mut c).await;
    let (_second, second_call) = stalled_commit(&mut c).await;
    // Both commits are receiving (their header arrived; the receiver waits for more).
    wait_for_log(&stack, "commit receiving", 2).await;

    // The honest night right after: its BeginSession supersedes the least recently used
    // stalled commit of its own identity instead of being refused RESOURCE_EXHAUSTED.
    let objects = baseline.snapshots[0].objects.clone();
    let night = baseline.record(&stack, objects.clone());

    let superseded = first_call.await.unwrap();
    assert_status(superseded, Code::Aborted, "superseded");
    // The other one is dropped after limits.commit_idle_timeout.
    let idle = second_call.await.unwrap();
    assert_status(idle, Code::DeadlineExceeded, "limits.commit_idle_timeout");

    let records = audit(stack.repo());
    let superseded_records: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "session_superseded")
        .collect();
    assert_eq!(superseded_records.len(), 1, "{records:?}");
    assert_eq!(superseded_records[0]["session"], first.as_str());
    assert_eq!(superseded_records[0]["commit_cancelled"], true);
    // Each stalled commit is audited once, as a rejected Commit naming the limit.
    for fragment in ["superseded", "commit_idle_timeout"] {
        let n = records
            .iter()
            .filter(|r| {
                r["event"] == "rejected"
                    && r["call"] == "Commit"
                    && r["message"].as_str().unwrap_or("").contains(fragment)
            })
            .count();
        assert_eq!(n, 1, "{fragment}: {records:?}");
    }
    assert!(records
        .iter()
        .any(|r| r["event"] == "commit" && r["snapshot"] == night.as_str()));

    // The dropped commit left its session open but no longer committing: the next night
    // succeeds too, and every snapshot restores byte for byte.
    baseline.record(&stack, objects);
    baseline.assert_intact(&stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_holds_gc_back_beyond_max_session_age() {
    let (mut stack, mut baseline) = stack_with("").await;
    let text = std::fs::read_to_string(&stack.receiver.config).unwrap();
    // Maintenance (prune and GC, which asks for the oldest session) every second.
    std::fs::write(
        &stack.receiver.config,
        format!(
            "{}\n[retention]\ninterval = \"1s\"\n",
            text.replacen("[limits]\n", "[limits]\nmax_session_age = \"3s\"\n", 1)
        ),
    )
    .unwrap();
    stack.receiver.restart().await.unwrap();
    let mut c = sender_client(&stack).await;
    // A stalled commit (well within its idle timeout and deadline) and a session kept
    // alive by a request every 200 ms: both end at limits.max_session_age.
    let (stalled, call) = stalled_commit(&mut c).await;
    let kept = begin(&mut c).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let expired = loop {
        let r = c
            .missing_chunks(proto::MissingChunksRequest {
                session_id: kept.clone(),
                ids: vec![],
            })
            .await;
        if let Err(s) = r {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session outlived max_session_age"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(expired.code(), Code::FailedPrecondition, "{expired:?}");
    assert!(expired.message().contains("unknown or expired session"));
    assert_status(call.await.unwrap(), Code::Aborted, "max_session_age");
    for session in [&stalled, &kept] {
        let r = wait_for_audit(stack.repo(), |r| {
            r["event"] == "session_expired" && r["session"] == session.as_str()
        })
        .await;
        assert_eq!(r["identity"], "prod-vps");
    }

    std::fs::write(&stack.receiver.config, text).unwrap();
    stack.receiver.restart().await.unwrap();
    let objects = baseline.snapshots[0].objects.clone();
    baseline.record(&stack, objects);
    baseline.assert_intact(&stack);
}

// ------------------------------------------------------------- 1. the audit log

/// Bytes of the audit log and its rotated generations.
fn audit_bytes(repo: &std::path::Path) -> u64 {
    std::fs::read_dir(backup_receiver::monitoring::audit::dir_for(repo))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("audit.log"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// Bytes of every file below `dir`.
fn tree_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            if md.is_dir() {
                dirs.push(e.path());
            } else {
                total += md.len();
            }
        }
    }
    total
}

/// A self-signed client certificate (no CA the receiver knows) carrying `sans` DNS names.
fn foreign_cert(dir: &std::path::Path, sans: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let names: Vec<String> = (0..sans)
        .map(|i| format!("san-{i:04}.attacker.example"))
        .collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "prod-vps");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (dir.join("foreign.pem"), dir.join("foreign.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

const MIB: usize = 1 << 20;
/// Hostile attempts of each kind below.
const ROUNDS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_peer_strings_grow_the_audit_log_by_a_bounded_amount() {
    let (mut stack, mut baseline) = stack_with("").await;
    let before = Stored::capture(stack.repo());
    let audit_before = audit_bytes(stack.repo());
    let repo_before = tree_bytes(stack.repo());
    let log_before = stack.receiver.log_text().len();
    let mut sent: usize = 0;

    let mut c = sender_client(&stack).await;
    for _ in 0..ROUNDS {
        // A 1 MiB source_host, accepted (the session keeps 255 characters).
        let host = "h".repeat(MIB);
        sent += host.len();
        let session = c
            .begin_session(proto::BeginSessionRequest {
                source_host: host,
                sender_time_unix: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .session_id;
        // A refused 1 MiB object key, a 1 MiB table name and a 1 MiB dump file name.
        let key = format!("{}/../x", "k".repeat(MIB));
        sent += key.len();
        assert_status(
            commit(
                &mut c,
                header(&session, None, 1),
                vec![vec![object(&key, b"", vec![])]],
            )
            .await,
            Code::InvalidArgument,
            "bytes, blake3",
        );
        let table = "t".repeat(MIB);
        sent += table.len();
        let data: Vec<u8> = Vec::new();
        assert_status(
            commit(
                &mut c,
                header(&session, Some(dump(&data, vec![], &[(&table, 1)])), 0),
                vec![],
            )
            .await,
            Code::InvalidArgument,
            "bytes, blake3",
        );
        let mut d = dump(&data, vec![], &[]);
        d.file_name = format!("../{}", "f".repeat(MIB));
        sent += d.file_name.len();
        assert_status(
            commit(&mut c, header(&session, Some(d), 0), vec![]).await,
            Code::InvalidArgument,
            "bytes, blake3",
        );
        // An unknown 1 MiB session id.
        let (mut up, _) = chunk(&"s".repeat(MIB), b"x");
        up.session_id = "s".repeat(MIB);
        sent += up.session_id.len();
        assert_status(
            put(&mut c, vec![up]).await,
            Code::FailedPrecondition,
            "bytes",
        );
    }

    // A foreign, self-signed certificate with 1000 SANs, offered again and again.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = foreign_cert(dir.path(), 1000);
    sent += std::fs::metadata(&cert).unwrap().len() as usize * ROUNDS * 2;
    for _ in 0..ROUNDS * 2 {
        let attempt = async {
            let ch = channel(
                stack.receiver.port,
                &stack.certs.path("ca.pem"),
                &cert,
                &key,
            )
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            begin(&mut client(ch)).await
        };
        assert!(attempt.await.is_err(), "a self-signed certificate got in");
    }
    if !audit(stack.repo()).iter().any(|r| r["reason"] == "tls") {
        eprintln!("{}", stack.receiver.log_text());
    }
    let tls = wait_for_audit(stack.repo(), |r| {
        r["event"] == "refused" && r["reason"] == "tls"
    })
    .await;
    assert!(
        tls["identity"].as_str().unwrap().contains("more"),
        "{tls:?}"
    );

    let records = audit(stack.repo());
    let tls_records = records
        .iter()
        .filter(|r| r["event"] == "refused" && r["reason"] == "tls")
        .count();
    assert!(
        tls_records <= 2,
        "{tls_records} records for one peer's handshakes"
    );
    let audit_growth = audit_bytes(stack.repo()) - audit_before;
    let repo_growth = tree_bytes(stack.repo()) - repo_before;
    let log_growth = stack.receiver.log_text().len() - log_before;
    eprintln!(
        "hostile bytes sent: {sent}; audit log grew {audit_growth} bytes over {} records; \
         repository {repo_growth} bytes; receiver log {log_growth} bytes",
        records.len()
    );
    // 100 hostile requests of 1 MiB each and 40 handshakes with 1000 SANs: every record
    // is a few hundred bytes, refusals of one peer are one record a minute.
    assert!(
        audit_growth < 64 * 1024,
        "audit log grew {audit_growth} bytes"
    );
    assert!(
        repo_growth < 64 * 1024,
        "repository grew {repo_growth} bytes"
    );
    assert!(
        log_growth < 256 * 1024,
        "receiver log grew {log_growth} bytes"
    );
    for r in &records {
        assert!(r.to_string().len() < 2048, "{r}");
    }
    before.assert_unchanged(stack.repo());

    // A peer from outside the allowed networks costs no handshake and one record.
    let text = std::fs::read_to_string(&stack.receiver.config).unwrap();
    std::fs::write(
        &stack.receiver.config,
        text.replace("127.0.0.0/8", "10.0.0.0/8"),
    )
    .unwrap();
    // (Its start-up probe is the first such peer.)
    stack.receiver.restart().await.unwrap();
    let network_before = audit_bytes(stack.repo());
    for _ in 0..ROUNDS * 2 {
        // The connection is closed before the server sends a single TLS byte.
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", stack.receiver.port))
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        use tokio::io::AsyncReadExt;
        let n = tcp.read(&mut buf).await.unwrap_or(0);
        assert_eq!(
            n, 0,
            "the receiver answered a peer outside the allowed networks"
        );
    }
    let refused = wait_for_audit(stack.repo(), |r| {
        r["event"] == "refused" && r["reason"] == "network"
    })
    .await;
    assert_eq!(refused["call"], "TLS handshake");
    // One record for the probe and all 40 connections: the rest are suppressed.
    let network: Vec<_> = audit(stack.repo())
        .into_iter()
        .filter(|r| r["reason"] == "network")
        .collect();
    assert_eq!(network.len(), 1, "{network:?}");
    let network_growth = audit_bytes(stack.repo()) - network_before;
    eprintln!(
        "40 connections from outside the allowed networks: audit log grew {network_growth} bytes"
    );
    assert!(network_growth < 1024, "{network_growth}");

    std::fs::write(&stack.receiver.config, text).unwrap();
    stack.receiver.restart().await.unwrap();
    let objects = baseline.snapshots[0].objects.clone();
    baseline.record(&stack, objects);
    baseline.assert_intact(&stack);
}

// ------------------------------------------------------------- 3. certificates

fn cli_ok(args: &[&str]) -> String {
    let out = backup_tests::stack::receiver_cli(args);
    assert!(
        out.status.success(),
        "backup-receiver {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every RPC over a channel presenting `cert`/`key` fails: no gRPC answer at all.
async fn assert_refused_on_every_rpc(stack: &Stack, cert: &str, key: &str) {
    use futures::FutureExt;
    let calls: Vec<(
        &str,
        futures::future::BoxFuture<'static, Result<(), tonic::Status>>,
    )> = {
        let mut v = Vec::new();
        for name in [
            "BeginSession",
            "PreviousObjects",
            "MissingChunks",
            "PutChunks",
            "Commit",
        ] {
            let ch = identity_channel(stack, cert, key).await;
            let fut = async move {
                let mut c = client(ch.map_err(|e| tonic::Status::unavailable(e.to_string()))?);
                match name {
                    "BeginSession" => begin(&mut c).await.map(drop),
                    "PreviousObjects" => c
                        .previous_objects(proto::PreviousObjectsRequest {
                            session_id: "x".into(),
                        })
                        .await
                        .map(drop),
                    "MissingChunks" => c
                        .missing_chunks(proto::MissingChunksRequest {
                            session_id: "x".into(),
                            ids: vec![],
                        })
                        .await
                        .map(drop),
                    "PutChunks" => put(&mut c, vec![chunk("x", b"x").0]).await.map(drop),
                    _ => commit(&mut c, header("x", None, 0), vec![]).await.map(drop),
                }
            }
            .boxed();
            v.push((name, fut));
        }
        v
    };
    for (name, fut) in calls {
        let err = fut.await.expect_err(name);
        assert!(
            matches!(
                err.code(),
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
            ),
            "{name}: {err:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_on_every_rpc_and_a_new_one_is_admitted() {
    let (mut stack, mut baseline) = stack_with("").await;
    let certs = stack.certs.dir.clone();
    let old = cli_ok(&[
        "certs",
        "fingerprint",
        certs.join("sender.pem").to_str().unwrap(),
    ]);
    let old = old.trim().to_string();
    assert!(old.starts_with("sha256:") && old.len() == 71, "{old}");
    // The operator issues a new certificate from the same CA, keeps the stolen one aside
    // (to prove it is refused) and revokes it.
    let new_dir = certs.join("new");
    cli_ok(&[
        "certs",
        "issue-sender",
        "--ca-dir",
        certs.to_str().unwrap(),
        "--identity",
        "prod-vps",
        "--out",
        new_dir.to_str().unwrap(),
    ]);
    let new = cli_ok(&[
        "certs",
        "fingerprint",
        new_dir.join("sender.pem").to_str().unwrap(),
    ]);
    assert_ne!(new.trim(), old);
    std::fs::rename(certs.join("sender.pem"), certs.join("stolen.pem")).unwrap();
    std::fs::rename(certs.join("sender.key"), certs.join("stolen.key")).unwrap();
    std::fs::copy(new_dir.join("sender.pem"), certs.join("sender.pem")).unwrap();
    std::fs::copy(new_dir.join("sender.key"), certs.join("sender.key")).unwrap();
    let text = std::fs::read_to_string(&stack.receiver.config).unwrap();
    std::fs::write(
        &stack.receiver.config,
        text.replace(
            "allowed_networks = [\"127.0.0.0/8\"]",
            &format!("allowed_networks = [\"127.0.0.0/8\"]\nrevoked_certificates = [\"{old}\"]"),
        ),
    )
    .unwrap();
    stack.receiver.restart().await.unwrap();
    let before = Stored::capture(stack.repo());

    assert_refused_on_every_rpc(&stack, "stolen.pem", "stolen.key").await;
    let refused = wait_for_audit(stack.repo(), |r| {
        r["event"] == "refused" && r["reason"] == "revoked"
    })
    .await;
    assert_eq!(refused["identity"], "prod-vps");
    assert!(
        refused["detail"].as_str().unwrap().contains("Revoked"),
        "{refused:?}"
    );
    before.assert_unchanged(stack.repo());

    // The new certificate, same identity and CA, is admitted: the honest night works.
    let objects = baseline.snapshots[0].objects.clone();
    baseline.record(&stack, objects);
    assert_refused_on_every_rpc(&stack, "stolen.pem", "stolen.key").await;
    baseline.assert_intact(&stack);
}

/// Records the paths and bodies of the requests it gets; answers 200.
async fn ping_server() -> (u16, Arc<Mutex<Vec<(String, String)>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let pings = Arc::new(Mutex::new(Vec::new()));
    let rec = pings.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                let mut want = None;
                loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        want = Some(i + 4 + len);
                    }
                    if want.is_some_and(|w| buf.len() >= w) {
                        break;
                    }
                    match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf).into_owned();
                let path = text
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
                rec.lock().unwrap().push((path, body.unwrap_or_default()));
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nOK",
                    )
                    .await;
            });
        }
    });
    (port, pings)
}

use std::sync::{Arc, Mutex};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admitted_certificate_close_to_expiry_raises_the_alert() {
    backup_common::tls::install_crypto_provider();
    let (port, pings) = ping_server().await;
    // The sender's certificate is valid for 730 days from today; the receiver's clock
    // stands 710 days ahead, 20 days before it expires.
    let clock_dir = tempfile::tempdir().unwrap();
    let clock = clock_dir.path().join("now");
    let ahead = chrono::Utc::now() + chrono::Duration::days(710);
    std::fs::write(&clock, ahead.to_rfc3339()).unwrap();
    let extra = format!(
        "[monitoring]\nhealthcheck_url = \"http://127.0.0.1:{port}/receiver\"\n\
         check_interval = \"100ms\"\nmin_free_bytes_alert = 0\nping_timeout = \"2s\"\n"
    );
    let stack = Stack::start_with(
        &extra,
        &[(
            backup_receiver::clock::FAKE_CLOCK_ENV,
            clock.to_str().unwrap(),
        )],
    )
    .await
    .unwrap();
    let baseline = Baseline::make(&stack).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let alert = loop {
        let found = pings
            .lock()
            .unwrap()
            .iter()
            .find(|(path, body)| path == "/receiver/fail" && body.contains("expires at"))
            .cloned();
        if let Some(f) = found {
            break f;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate_expiry fail ping: {:?}",
            pings.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(alert.1.contains("prod-vps"), "{alert:?}");
    assert!(alert.1.contains("within 30 days"), "{alert:?}");
    // The honest night itself went through: its success ping leaves the queue after the
    // alert raised while the sender connected, so it is waited for, not assumed sent.
    backup_tests::checks::wait_until(
        "the honest night's success ping",
        Duration::from_secs(30),
        || pings.lock().unwrap().iter().any(|(p, _)| p == "/receiver"),
    )
    .await;
    baseline.assert_intact(&stack);
}

// ------------------------------------------------------------- 4. parallel uploads

/// A held PutChunks stream: its client, the sender half of its (silent) messages, the call.
type Held = (
    Client,
    tokio::sync::mpsc::Sender<proto::ChunkUpload>,
    tokio::task::JoinHandle<Result<proto::PutChunksResponse, tonic::Status>>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_chunks_streams_are_bounded_per_connection_and_per_identity() {
    let (stack, mut baseline) = stack_with(
        // The sender itself uses 3 streams on one connection.
        "[limits]\nmax_put_streams_per_connection = 3\nmax_put_streams_per_identity = 4\n",
    )
    .await;
    let before = Stored::capture(stack.repo());
    let c = sender_client(&stack).await;
    let c2 = sender_client(&stack).await;
    // A stream that sends nothing and stays open, on the connection of `c`.
    let open = |c: &Client| {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<proto::ChunkUpload>(1);
        let mut call_client = c.clone();
        let call = tokio::spawn(async move {
            call_client
                .put_chunks(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
                .await
                .map(|r| r.into_inner())
        });
        (c.clone(), tx, call)
    };
    // A stream that ends with its headers: answered at once, refused or not.
    let probe = |c: &Client| {
        let mut c = c.clone();
        async move {
            c.put_chunks(futures::stream::empty())
                .await
                .map(|r| r.into_inner())
        }
    };
    // Probes until one is refused with `fragment`. A probe may reach the receiver before a
    // held stream and take its place (the held one is then refused and reopened), so
    // when a probe is refused every place is taken by a held stream.
    async fn probe_until_refused<P, F>(
        held: &mut [Held],
        open: &impl Fn(&Client) -> Held,
        probe: P,
        fragment: &str,
    ) -> tonic::Status
    where
        P: Fn() -> F,
        F: std::future::Future<Output = Result<proto::PutChunksResponse, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            for h in held.iter_mut() {
                if h.2.is_finished() {
                    *h = open(&h.0);
                }
            }
            match probe().await {
                Err(s) if s.code() == Code::ResourceExhausted && s.message().contains(fragment) => {
                    return s
                }
                other => assert!(
                    tokio::time::Instant::now() < deadline,
                    "no refusal naming {fragment}: {other:?}"
                ),
            }
        }
    }
    // Three streams on one connection: the fourth is refused.
    let mut held: Vec<_> = (0..3).map(|_| open(&c)).collect();
    let refused = probe_until_refused(
        &mut held,
        &open,
        || probe(&c),
        "limits.max_put_streams_per_connection",
    )
    .await;
    assert!(refused.message().contains("is 3"), "{refused:?}");
    // A second connection of the same identity gets one more stream, then the identity's
    // limit refuses.
    held.push(open(&c2));
    let refused = probe_until_refused(
        &mut held,
        &open,
        || probe(&c2),
        "limits.max_put_streams_per_identity",
    )
    .await;
    assert!(refused.message().contains("is 4"), "{refused:?}");
    // Closing the held streams gives their places back; the honest night uploads.
    for (_, tx, call) in held {
        drop(tx);
        let _ = call.await.unwrap();
    }
    before.assert_kept(stack.repo());
    let objects = baseline.snapshots[0].objects.clone();
    baseline.record(&stack, objects);
    baseline.assert_intact(&stack);
}
