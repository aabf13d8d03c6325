//! The threat model, played out: whoever takes over the VPS holds its client certificate
//! and speaks the protocol freely. Each test is one attack by a raw gRPC client (built from
//! `proto/`, not the sender crate) against the real receiver binary over mutual TLS, and
//! asserts the exact gRPC code, a message fragment, that nothing stored changed, and that
//! every earlier snapshot made by the real sender still restores byte for byte.
//! docs/THREAT-MODEL.md maps each guarantee to the tests here.

use std::os::unix::fs::PermissionsExt;

use backup_common::proto;
use backup_tests::hostile::*;
use backup_tests::stack::{noise, receiver_cli, Stack};
use tonic::Code;

const FAKE_CLOCK: &str = "BACKUP_RECEIVER_FAKE_CLOCK_FILE";

async fn stack_with(extra: &str) -> (Stack, Baseline) {
    backup_common::tls::install_crypto_provider();
    let stack = Stack::start_with(extra, &[]).await.unwrap();
    let baseline = Baseline::make(&stack).await;
    (stack, baseline)
}

/// A stack whose receiver reads its clock from a file (returned), set to `start`.
async fn stack_with_clock(extra: &str, start: &str) -> (Stack, Baseline, tempfile::TempDir) {
    backup_common::tls::install_crypto_provider();
    let clock_dir = tempfile::tempdir().unwrap();
    let clock = clock_dir.path().join("now");
    set_clock(&clock, start).unwrap();
    let stack = Stack::start_with(extra, &[(FAKE_CLOCK, clock.to_str().unwrap())])
        .await
        .unwrap();
    let baseline = Baseline::make(&stack).await;
    (stack, baseline, clock_dir)
}

fn snapshot_ids(stack: &Stack) -> Vec<String> {
    stack
        .snapshots()
        .iter()
        .map(|r| r["snapshot_id"].as_str().unwrap().to_string())
        .collect()
}

/// Appends TOML to the receiver's config (or replaces text in it) and restarts it.
async fn reconfigure(stack: &mut Stack, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(&stack.receiver.config).unwrap();
    std::fs::write(&stack.receiver.config, edit(text)).unwrap();
    stack.receiver.restart().await.unwrap();
}

// ------------------------------------------------------------- 1. write-once

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_whose_bytes_do_not_match_its_id_is_rejected_and_nothing_stored() {
    let (stack, baseline) = stack_with("").await;
    let before = Stored::capture(stack.repo());
    let mut c = sender_client(&stack).await;
    let session = begin(&mut c).await.unwrap();

    let (mut up, _) = chunk(&session, &noise(100_000, 1));
    up.data = noise(100_000, 2).into();
    assert_status(put(&mut c, vec![up]).await, Code::InvalidArgument, "hash");

    // Declared length that does not match, and a zstd "bomb" claiming a small size.
    let (mut up, _) = chunk(&session, &noise(1000, 3));
    up.raw_len = 999;
    assert_status(
        put(&mut c, vec![up]).await,
        Code::InvalidArgument,
        "chunk rejected",
    );
    let zeros = vec![0u8; 4 * 1024 * 1024];
    let (mut up, _) = chunk(&session, &zeros);
    up.zstd = true;
    up.data = zstd::bulk::compress(&zeros, 3).unwrap().into();
    up.raw_len = 1000;
    assert_status(
        put(&mut c, vec![up]).await,
        Code::InvalidArgument,
        "chunk rejected",
    );
    let (mut up, _) = chunk(&session, b"x");
    up.id = vec![1; 5];
    assert_status(put(&mut c, vec![up]).await, Code::InvalidArgument, "");

    before.assert_unchanged(stack.repo());
    baseline.assert_intact(&stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reupload_of_an_existing_chunk_with_different_bytes_is_rejected_and_the_file_unchanged() {
    let (stack, baseline) = stack_with("").await;
    let before = Stored::capture(stack.repo());
    let repo = backup_receiver::store::open::repository(stack.repo()).unwrap();
    let manifest = repo.load_manifest(baseline.first()).unwrap();
    let victim = manifest.objects[0].chunks[0];
    let path = backup_receiver::store::fs::chunk_path(stack.repo(), &victim.id);
    let original = std::fs::read(&path).unwrap();

    let mut c = sender_client(&stack).await;
    let session = begin(&mut c).await.unwrap();
    for zstd in [false, true] {
        let garbage = vec![0x55u8; victim.len as usize];
        let up = proto::ChunkUpload {
            session_id: session.clone(),
            id: victim.id.0.to_vec(),
            raw_len: victim.len,
            zstd,
            data: if zstd {
                zstd::bulk::compress(&garbage, 3).unwrap()
            } else {
                garbage
            }
            .into(),
        };
        assert_status(put(&mut c, vec![up]).await, Code::InvalidArgument, "hash");
    }
    // The genuine bytes again are verified and dropped as a duplicate.
    let genuine = repo.read_chunk(&victim.id).unwrap();
    let (up, _) = chunk(&session, &genuine);
    let reply = put(&mut c, vec![up]).await.unwrap();
    assert_eq!((reply.stored, reply.duplicates), (0, 1));

    assert_eq!(std::fs::read(&path).unwrap(), original);
    before.assert_unchanged(stack.repo());
    baseline.assert_intact(&stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_commits_once() {
    let (stack, baseline) = stack_with("[limits]\nmax_snapshots_per_day = 10\n").await;
    let mut c = sender_client(&stack).await;
    let session = begin(&mut c).await.unwrap();
    let data = fake_dump(5000, 9);
    let r = put_data(&mut c, &session, &data).await.unwrap();
    let h = header(&session, Some(dump(&data, vec![r], &[])), 0);
    let first = commit(&mut c, h.clone(), vec![]).await.unwrap();
    let after_first = Stored::capture(stack.repo());

    // Committing the same session again, as a sender does when the first reply was lost,
    // gets the first commit's reply back instead of a second snapshot.
    assert_eq!(commit(&mut c, h, vec![]).await.unwrap(), first);
    let replayed = wait_for_audit(stack.repo(), |r| r["event"] == "commit_replayed").await;
    assert_eq!(replayed["snapshot"], first.snapshot_id.as_str());
    assert_eq!(replayed["session"], session.as_str());
    // The session itself is over.
    let (up, _) = chunk(&session, &noise(5000, 10));
    assert_status(
        put(&mut c, vec![up]).await,
        Code::FailedPrecondition,
        "unknown or expired session",
    );
    after_first.assert_unchanged(stack.repo());
    assert_eq!(snapshot_ids(&stack).len(), 2);
    baseline.assert_intact(&stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_chunks_manifests_and_acks_are_read_only() {
    let (stack, baseline) = stack_with("").await;
    let stored = Stored::capture(stack.repo());
    assert!(stored.0.len() > 3, "{stored:?}");
    for (path, (mode, _)) in &stored.0 {
        assert_eq!(*mode, 0o400, "{}", path.display());
    }
    baseline.assert_intact(&stack);
}

// ------------------------------------------------------------- 2. no deletes, no reading back

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_deletes_or_reads_back_and_unknown_calls_are_unimplemented() {
    // The protocol has exactly these calls; none deletes, renames or returns chunk bytes.
    let proto_text = include_str!("../../../proto/backup.proto");
    let rpcs: Vec<&str> = proto_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .map(|l| l.split('(').next().unwrap())
        .collect();
    assert_eq!(
        rpcs,
        [
            "BeginSession",
            "PreviousObjects",
            "MissingChunks",
            "PutChunks",
            "Commit"
        ]
    );

    let (stack, baseline) = stack_with("").await;
    let before = Stored::capture(stack.repo());
    let ch = identity_channel(&stack, "sender.pem", "sender.key")
        .await
        .unwrap();
    // Calls a hostile client might hope exist, sent as raw gRPC.
    for method in ["DeleteSnapshot", "GetChunk", "Prune", "RenameSnapshot"] {
        let mut grpc = tonic::client::Grpc::new(ch.clone());
        grpc.ready().await.unwrap();
        let path = tonic::codegen::http::uri::PathAndQuery::try_from(format!(
            "/familienarchiv.backup.v1.Backup/{method}"
        ))
        .unwrap();
        let r: Result<tonic::Response<proto::CommitResponse>, _> = grpc
            .unary(
                tonic::Request::new(proto::PreviousObjectsRequest {
                    session_id: baseline.first().into(),
                }),
                path,
                tonic_prost::ProstCodec::default(),
            )
            .await;
        assert_eq!(r.unwrap_err().code(), Code::Unimplemented, "{method}");
    }
    // PreviousObjects answers with metadata only: the proto's ObjectEntry has no data field.
    let mut c = client(ch);
    let session = begin(&mut c).await.unwrap();
    let mut stream = c
        .previous_objects(proto::PreviousObjectsRequest {
            session_id: session.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let batch = stream.message().await.unwrap().unwrap();
    assert_eq!(batch.snapshot_id, baseline.first());
    assert_eq!(batch.objects.len(), 3);
    // A manifest that leaves out every object only describes that night.
    commit_empty(&mut c, 1).await.unwrap();
    before.assert_kept(stack.repo());
    baseline.assert_intact(&stack);
}

// ------------------------------------------------------------- 3. the sender cannot steer time

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_clock_in_2099_does_not_steer_the_snapshot_id_or_time() {
    let (stack, baseline, clock) = stack_with_clock("", "2031-03-04T05:06:07Z").await;
    let mut c = sender_client(&stack).await;
    let year_2099 = 4_070_908_800; // 2099-01-01T00:00:00Z
    let session = begin_at(&mut c, year_2099).await.unwrap();
    let data = fake_dump(5000, 4);
    let r = put_data(&mut c, &session, &data).await.unwrap();
    let reply = commit(
        &mut c,
        header(&session, Some(dump(&data, vec![r], &[])), 0),
        vec![],
    )
    .await
    .unwrap();
    assert!(
        reply.snapshot_id.starts_with("20310304T050607Z"),
        "{}",
        reply.snapshot_id
    );
    assert_eq!(reply.time_unix, 1_930_367_167); // 2031-03-04T05:06:07Z
    let m = backup_receiver::store::open::repository(stack.repo())
        .unwrap()
        .load_manifest(&reply.snapshot_id)
        .unwrap();
    assert_eq!(m.time.timestamp(), 1_930_367_167);
    assert_eq!(
        m.sender_time.unwrap().timestamp(),
        year_2099,
        "kept as information"
    );
    drop(clock);
    baseline.assert_intact(&stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_commits_per_day_than_allowed_are_refused() {
    let (stack, baseline, clock) = stack_with_clock(
        "[limits]\nmax_snapshots_per_day = 3\n",
        "2031-03-04T05:00:00Z",
    )
    .await;
    let mut c = sender_client(&stack).await;
    commit_empty(&mut c, 1).await.unwrap();
    commit_empty(&mut c, 2).await.unwrap();
    let before = Stored::capture(stack.repo());
    // The sender's claimed clock does not matter: the receiver's day is full.
    let session = begin_at(&mut c, 4_070_908_800).await.unwrap();
    assert_status(
        commit(&mut c, header(&session, None, 0), vec![]).await,
        Code::ResourceExhausted,
        "limits.max_snapshots_per_day is 3",
    );
    before.assert_unchanged(stack.repo());
    // The next day on the receiver's clock, snapshots are accepted again.
    set_clock(&clock.path().join("now"), "2031-03-05T05:00:00Z").unwrap();
    commit_empty(&mut c, 3).await.unwrap();
    assert_eq!(snapshot_ids(&stack).len(), 4);
    baseline.assert_intact(&stack);
}

// ------------------------------------------------------------- 4. anomaly guard

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nights_of_empty_snapshots_cost_no_good_one() {
    let (stack, mut baseline, clock) = stack_with_clock("", "2031-03-01T02:00:00Z").await;
    let good = baseline.first().to_string();
    let mut c = sender_client(&stack).await;
    let mut flood = Vec::new();
    for night in 2..=11 {
        set_clock(
            &clock.path().join("now"),
            &format!("2031-03-{night:02}T02:00:00Z"),
        )
        .unwrap();
        let reply = commit_empty(&mut c, night).await.unwrap();
        assert!(reply.suspect, "night {night} not flagged");
        assert!(
            reply
                .suspect_reason
                .contains(&format!("against snapshot {good}"))
                && reply
                    .suspect_reason
                    .contains("object count fell from 3 to 0"),
            "{}",
            reply.suspect_reason
        );
        flood.push(reply.snapshot_id);
    }
    let repo = backup_receiver::store::open::repository(stack.repo()).unwrap();
    assert_eq!(repo.latest_good().unwrap().unwrap().id, good);
    for id in &flood {
        let m = repo.load_manifest(id).unwrap();
        assert!(
            backup_receiver::monitoring::guard::is_suspect(&repo, &m).unwrap(),
            "{id}"
        );
    }
    // The delta base offered to the sender is still the good snapshot with its objects.
    let session = begin(&mut c).await.unwrap();
    let mut stream = c
        .previous_objects(proto::PreviousObjectsRequest {
            session_id: session,
        })
        .await
        .unwrap()
        .into_inner();
    let batch = stream.message().await.unwrap().unwrap();
    assert_eq!(batch.snapshot_id, good);
    assert_eq!(batch.objects.len(), 3);
    // Alert trail: error log and audit log name each suspect snapshot.
    let audit = audit(stack.repo());
    let suspects: Vec<_> = audit.iter().filter(|r| r["event"] == "suspect").collect();
    assert_eq!(suspects.len(), 10);
    assert!(suspects.iter().all(|r| r["previous_good"] == good.as_str()));
    assert!(stack
        .receiver
        .log_text()
        .contains("SUSPECT snapshot committed"));

    // The real sender, the night after, still sends a delta against the good snapshot
    // and its snapshot is good again.
    set_clock(&clock.path().join("now"), "2031-03-12T02:00:00Z").unwrap();
    let objects = baseline.snapshots[0].objects.clone();
    let next = baseline.record(&stack, objects);
    let m = repo.load_manifest(&next).unwrap();
    assert_eq!(m.suspect, None);
    assert_eq!(repo.latest_good().unwrap().unwrap().id, next);
    baseline.assert_intact(&stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_ack_makes_a_suspect_snapshot_the_new_baseline() {
    let (stack, baseline) = stack_with("").await;
    let mut c = sender_client(&stack).await;
    let suspect = commit_empty(&mut c, 1).await.unwrap();
    assert!(suspect.suspect);
    let repo_arg = stack.repo().to_str().unwrap();

    // A good snapshot cannot be "acknowledged"; a suspect one can, once.
    let out = receiver_cli(&["ack", baseline.first(), "--repo", repo_arg]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not suspect"));
    let out = receiver_cli(&[
        "ack",
        &suspect.snapshot_id,
        "--repo",
        repo_arg,
        "--note",
        "bucket emptied on purpose",
        "--operator",
        "oma",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ack_path = stack
        .repo()
        .join(format!("acks/{}.json", suspect.snapshot_id));
    let ack: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ack_path).unwrap()).unwrap();
    assert_eq!(ack["snapshot"], suspect.snapshot_id.as_str());
    assert_eq!(ack["operator"], "oma");
    assert_eq!(ack["note"], "bucket emptied on purpose");
    assert!(ack["time"].is_string());
    let mode = std::fs::metadata(&ack_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o400);
    let out = receiver_cli(&["ack", &suspect.snapshot_id, "--repo", repo_arg]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already acknowledged"));
    assert!(audit(stack.repo())
        .iter()
        .any(|r| r["event"] == "ack" && r["operator"] == "oma"));

    let repo = backup_receiver::store::open::repository(stack.repo()).unwrap();
    assert!(
        backup_receiver::monitoring::guard::is_acknowledged(&repo, &suspect.snapshot_id).unwrap()
    );
    assert_eq!(repo.latest_good().unwrap().unwrap().id, suspect.snapshot_id);
    // The next empty night compares against the acknowledged one and is not suspect.
    let next = commit_empty(&mut c, 2).await.unwrap();
    assert!(!next.suspect, "{}", next.suspect_reason);
    baseline.assert_intact(&stack);
}

// ------------------------------------------------------------- 6. admission

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_a_foreign_ca_is_refused() {
    let (stack, baseline) = stack_with("").await;
    let before = Stored::capture(stack.repo());
    let foreign = tempfile::tempdir().unwrap();
    backup_tests::stack::Certs::create(foreign.path(), &["prod-vps"]).unwrap();
    // Same identity as the real sender, signed by another CA.
    let attempt = async {
        let ch = channel(
            stack.receiver.port,
            &stack.certs.path("ca.pem"),
            &foreign.path().join("sender.pem"),
            &foreign.path().join("sender.key"),
        )
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        begin(&mut client(ch)).await
    };
    let err = attempt
        .await
        .expect_err("a foreign CA's certificate got in");
    // Where the refusal surfaces depends on timing: in the handshake (Unavailable), or as the
    // connection closed under the first request (Cancelled/Unknown). Never as a gRPC answer.
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        "{err:?}"
    );
    // The TLS layer's refusal is audited with the peer and the identity the certificate claimed.
    let refused = wait_for_audit(stack.repo(), |r| {
        r["event"] == "refused" && r["reason"] == "tls"
    })
    .await;
    assert_eq!(refused["identity"], "prod-vps");
    assert!(refused["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("invalid peer certificate"),
        "{refused:?}"
    );
    assert!(!audit(stack.repo())
        .iter()
        .any(|r| r["event"] == "session" && r["source_host"] == "hostile-vps"));
    before.assert_unchanged(stack.repo());
    baseline.assert_intact(&stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_not_on_the_allow_list_is_refused_and_audited() {
    let (stack, baseline) = stack_with("").await;
    let before = Stored::capture(stack.repo());
    let mut c = identity_client(&stack, "sender-stranger.pem", "sender-stranger.key")
        .await
        .unwrap();
    assert_status(
        begin(&mut c).await,
        Code::PermissionDenied,
        "allowed_identities",
    );
    let (up, _) = chunk("any", &noise(1000, 1));
    assert_status(
        put(&mut c, vec![up]).await,
        Code::PermissionDenied,
        "stranger",
    );
    let refusals: Vec<_> = audit(stack.repo())
        .into_iter()
        .filter(|r| r["event"] == "refused" && r["reason"] == "identity")
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert_eq!(refusals[0]["identity"], "stranger");
    assert!(refusals[0]["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    before.assert_unchanged(stack.repo());
    baseline.assert_intact(&stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_network_not_allowed_is_refused_and_audited() {
    let (mut stack, baseline) = stack_with("").await;
    reconfigure(&mut stack, |t| t.replace("127.0.0.0/8", "10.0.0.0/8")).await;
    let before = Stored::capture(stack.repo());
    // Closed before the TLS handshake: no gRPC answer at all.
    let attempt = async {
        let ch = identity_channel(&stack, "sender.pem", "sender.key")
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        begin(&mut client(ch)).await
    };
    let err = attempt
        .await
        .expect_err("a peer outside the networks got in");
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        "{err:?}"
    );
    let refused = wait_for_audit(stack.repo(), |r| {
        r["event"] == "refused" && r["reason"] == "network"
    })
    .await;
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1 is not in admission.allowed_networks"),
        "{refused:?}"
    );
    before.assert_unchanged(stack.repo());
    baseline.assert_intact(&stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailscale_whois_must_show_the_required_tag() {
    backup_common::tls::install_crypto_provider();
    let sock_dir = tempfile::tempdir().unwrap();
    let socket = sock_dir.path().join("tailscaled.sock");
    let tailscaled = FakeTailscaled::start(
        &socket,
        WhoisAnswer::Node {
            name: "prod-vps.tail1234.ts.net.".into(),
            tags: vec!["tag:prod-vps".into()],
        },
    )
    .unwrap();
    let extra = format!(
        "[admission.tailscale]\nsocket = \"{}\"\nrequired_tags = [\"tag:prod-vps\"]\n",
        socket.display()
    );
    // The real sender gets in: tailscaled vouches for the node.
    let (stack, baseline) = stack_with(&extra).await;
    let asked = tailscaled.requests.lock().unwrap().clone();
    assert!(
        asked
            .iter()
            .any(|l| l.starts_with("GET /localapi/v0/whois?addr=127.0.0.1:")),
        "{asked:?}"
    );
    let before = Stored::capture(stack.repo());

    // The same certificate from a node without the tag (another connection, another port).
    tailscaled.set(WhoisAnswer::Node {
        name: "laptop.tail1234.ts.net.".into(),
        tags: vec![],
    });
    let mut c = sender_client(&stack).await;
    assert_status(begin(&mut c).await, Code::PermissionDenied, "required_tags");
    tailscaled.set(WhoisAnswer::Node {
        name: "build.tail1234.ts.net.".into(),
        tags: vec!["tag:ci".into()],
    });
    let mut c = sender_client(&stack).await;
    assert_status(begin(&mut c).await, Code::PermissionDenied, "tag:ci");
    // An address tailscaled does not know.
    tailscaled.set(WhoisAnswer::NotFound);
    let mut c = sender_client(&stack).await;
    assert_status(
        begin(&mut c).await,
        Code::PermissionDenied,
        "does not know peer",
    );

    let refusals: Vec<_> = audit(stack.repo())
        .into_iter()
        .filter(|r| r["event"] == "refused" && r["reason"] == "tailscale")
        .collect();
    assert_eq!(refusals.len(), 3, "{refusals:?}");
    assert_eq!(refusals[0]["tailscale_node"], "laptop.tail1234.ts.net.");
    assert_eq!(refusals[0]["identity"], "prod-vps");
    assert!(refusals[0]["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));

    // tailscaled gone: fail closed.
    drop(tailscaled);
    std::fs::remove_file(&socket).unwrap();
    let mut c = sender_client(&stack).await;
    assert_status(begin(&mut c).await, Code::Unavailable, "tailscale identity");
    before.assert_unchanged(stack.repo());
    baseline.assert_intact(&stack);
}

// ------------------------------------------------------------- 7. resource limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_fill_is_stopped_by_session_daily_and_free_space_limits() {
    let (mut stack, baseline, _clock) = stack_with_clock("", "2031-03-04T05:00:00Z").await;
    // What today's snapshot stored already counts against the day.
    let today: u64 = read_tree(&stack.repo().join("chunks"))
        .values()
        .map(|v| v.len() as u64)
        .sum();
    let daily = today + 4_000_000;
    reconfigure(&mut stack, |t| {
        t.replacen(
            "[limits]\n",
            &format!("[limits]\nmax_session_bytes = 3000000\nmax_daily_bytes = {daily}\n"),
            1,
        )
    })
    .await;
    let mut c = sender_client(&stack).await;

    let s1 = begin(&mut c).await.unwrap();
    put_data(&mut c, &s1, &noise(1_500_000, 1)).await.unwrap();
    let before = Stored::capture(stack.repo());
    assert_status(
        put_data(&mut c, &s1, &noise(1_600_000, 2)).await,
        Code::ResourceExhausted,
        "limits.max_session_bytes",
    );
    before.assert_unchanged(stack.repo());

    let s2 = begin(&mut c).await.unwrap();
    put_data(&mut c, &s2, &noise(1_500_000, 3)).await.unwrap();
    let before = Stored::capture(stack.repo());
    assert_status(
        put_data(&mut c, &s2, &noise(1_200_000, 4)).await,
        Code::ResourceExhausted,
        "limits.max_daily_bytes",
    );
    before.assert_unchanged(stack.repo());

    // A free-space reserve larger than the disk: nothing more is stored, not even a manifest.
    reconfigure(&mut stack, |t| {
        t.replace(
            "max_session_bytes = 3000000",
            "max_session_bytes = 3000000\nmin_free_bytes = 1000000000000000000",
        )
    })
    .await;
    let mut c = sender_client(&stack).await;
    let s3 = begin(&mut c).await.unwrap();
    let before = Stored::capture(stack.repo());
    assert_status(
        put_data(&mut c, &s3, &noise(1000, 5)).await,
        Code::ResourceExhausted,
        "limits.min_free_bytes",
    );
    assert_status(
        commit(&mut c, header(&s3, None, 0), vec![]).await,
        Code::ResourceExhausted,
        "limits.min_free_bytes",
    );
    before.assert_unchanged(stack.repo());
    assert_eq!(snapshot_ids(&stack), vec![baseline.first().to_string()]);
    baseline.assert_intact(&stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused() {
    let (stack, baseline) = stack_with("").await;
    let before = Stored::capture(stack.repo());
    let mut c = sender_client(&stack).await;
    let session = begin(&mut c).await.unwrap();
    let (up, _) = chunk(&session, &noise(17 * 1024 * 1024, 1));
    let err = put(&mut c, vec![up]).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("too large"), "{err:?}");
    before.assert_unchanged(stack.repo());
    baseline.assert_intact(&stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_limit_and_idle_timeout() {
    // The idle timeout counts on the receiver's clock: the test moves it past the timeout.
    let (mut stack, baseline, clock) = stack_with_clock(
        "[limits]\nmax_sessions = 2\nidle_timeout = \"10m\"\n",
        "2031-03-04T05:00:00Z",
    )
    .await;
    // A second allow-listed sender ("stranger" is signed by the same CA).
    reconfigure(&mut stack, |t| {
        t.replace(
            "allowed_identities = [\"prod-vps\"]",
            "allowed_identities = [\"prod-vps\", \"stranger\"]",
        )
    })
    .await;
    let mut c = sender_client(&stack).await;
    let mut other = identity_client(&stack, "sender-stranger.pem", "sender-stranger.key")
        .await
        .unwrap();
    let first = begin(&mut c).await.unwrap();
    let second = begin(&mut c).await.unwrap();
    // Both slots are the first sender's: the other sender is refused, naming the limit.
    assert_status(
        begin(&mut other).await,
        Code::ResourceExhausted,
        "limits.max_sessions",
    );
    // The same sender beginning again (a retried run) supersedes its least recent session.
    let (up, _) = chunk(&second, &noise(1000, 2));
    put(&mut c, vec![up]).await.unwrap();
    let third = begin(&mut c).await.unwrap();
    let (up, _) = chunk(&first, &noise(1000, 1));
    assert_status(
        put(&mut c, vec![up]).await,
        Code::FailedPrecondition,
        "unknown or expired session",
    );
    let (up, _) = chunk(&second, &noise(1000, 3));
    put(&mut c, vec![up]).await.unwrap();
    let superseded = wait_for_audit(stack.repo(), |r| r["event"] == "session_superseded").await;
    assert_eq!(superseded["session"], first.as_str());
    assert_eq!(superseded["by"], third.as_str());
    assert_eq!(superseded["identity"], "prod-vps");
    assert_status(
        begin(&mut other).await,
        Code::ResourceExhausted,
        "limits.max_sessions",
    );
    // Idle sessions are dropped once the receiver's clock is past the timeout.
    set_clock(&clock.path().join("now"), "2031-03-04T05:10:01Z").unwrap();
    begin(&mut other).await.unwrap();
    let (up, _) = chunk(&third, &noise(1000, 4));
    assert_status(
        put(&mut c, vec![up]).await,
        Code::FailedPrecondition,
        "unknown or expired session",
    );
    baseline.assert_intact(&stack);
}

// ------------------------------------------------------------- 8. bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_referencing_a_missing_chunk_is_refused() {
    let (stack, baseline) = stack_with("").await;
    let before = Stored::capture(stack.repo());
    let mut c = sender_client(&stack).await;
    let session = begin(&mut c).await.unwrap();
    let never_uploaded = noise(20_000, 77);
    let (_, r) = chunk(&session, &never_uploaded);
    let missing = hex_of(&r.id);
    let s = assert_status(
        commit(
            &mut c,
            header(&session, None, 1),
            vec![vec![object("a.pdf", &never_uploaded, vec![r])]],
        )
        .await,
        Code::FailedPrecondition,
        "does not have",
    );
    assert!(s.message().contains(&missing), "{s:?}");
    before.assert_unchanged(stack.repo());
    assert_eq!(snapshot_ids(&stack).len(), 1);
    baseline.assert_intact(&stack);
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_keys_sizes_and_shapes_in_a_commit_are_refused() {
    let (stack, baseline) = stack_with("").await;
    let mut c = sender_client(&stack).await;
    let session = begin(&mut c).await.unwrap();
    let data = noise(10_000, 5);
    let r = put_data(&mut c, &session, &data).await.unwrap();
    let before = Stored::capture(stack.repo());
    let ok = |key: &str| object(key, &data, vec![r.clone()]);
    let with = |f: &dyn Fn(&mut proto::ObjectEntry)| {
        let mut o = ok("x");
        f(&mut o);
        o
    };
    let cases: Vec<(&str, u64, Vec<Vec<proto::ObjectEntry>>, &str)> = vec![
        ("dot-dot", 1, vec![vec![ok("../../etc/x")]], "`..`"),
        ("absolute", 1, vec![vec![ok("/etc/passwd")]], "absolute"),
        ("nul", 1, vec![vec![ok("a\0b")]], "NUL"),
        ("backslash", 1, vec![vec![ok("a\\..\\b")]], "backslash"),
        (
            "empty component",
            1,
            vec![vec![ok("a//b")]],
            "empty path component",
        ),
        ("empty key", 1, vec![vec![ok("")]], "key is empty"),
        (
            "long key",
            1,
            vec![vec![ok(&"k".repeat(2000))]],
            "longer than 1024",
        ),
        (
            "duplicate keys",
            2,
            vec![vec![ok("dup")], vec![ok("dup")]],
            "duplicate object key",
        ),
        (
            "sizes that do not add up",
            1,
            vec![vec![with(&|o| o.size += 1)]],
            "its chunks add up to",
        ),
        (
            "absurd size",
            1,
            vec![vec![with(&|o| o.size = u64::MAX)]],
            "its chunks add up to",
        ),
        (
            "absurd chunk length",
            1,
            vec![vec![with(&|o| o.chunks[0].len = u32::MAX)]],
            "outside 1..=",
        ),
        (
            "short hash",
            1,
            vec![vec![with(&|o| o.hash = vec![1; 3])]],
            "hash",
        ),
        (
            "more objects than announced",
            1,
            vec![vec![ok("a"), ok("b")]],
            "more objects than",
        ),
        (
            "fewer objects than announced",
            3,
            vec![vec![ok("a")]],
            "announced 3 objects but 1",
        ),
        ("absurd object count", u64::MAX, vec![], "exceeds the limit"),
    ];
    for (name, count, batches, fragment) in cases {
        let s = commit(&mut c, header(&session, None, count), batches).await;
        let s = s.expect_err(name);
        assert_eq!(s.code(), Code::InvalidArgument, "{name}: {s:?}");
        assert!(s.message().contains(fragment), "{name}: {s:?}");
    }
    // Malformed shapes: objects before a header, a second header, a bad dump.
    let batch_first = vec![proto::CommitPart {
        part: Some(proto::commit_part::Part::Objects(
            proto::ObjectBatch::default(),
        )),
    }];
    assert_status(
        c.commit(futures::stream::iter(batch_first)).await,
        Code::InvalidArgument,
        "must start with its header",
    );
    let mut bad_dump = dump(&data, vec![r.clone()], &[("public.t", 1), ("public.t", 2)]);
    assert_status(
        commit(&mut c, header(&session, Some(bad_dump.clone()), 0), vec![]).await,
        Code::InvalidArgument,
        "duplicate row count",
    );
    bad_dump.row_counts.clear();
    bad_dump.file_name = "../../etc/cron.d/x".into();
    assert_status(
        commit(&mut c, header(&session, Some(bad_dump), 0), vec![]).await,
        Code::InvalidArgument,
        "not a plain file name",
    );
    // Each refusal is audited; nothing was stored; the session is still usable.
    assert!(
        audit(stack.repo())
            .iter()
            .filter(|r| r["event"] == "rejected" && r["call"] == "Commit")
            .count()
            >= 18
    );
    before.assert_unchanged(stack.repo());
    commit(
        &mut c,
        header(&session, None, 1),
        vec![vec![ok("fine.pdf")]],
    )
    .await
    .unwrap();
    baseline.assert_intact(&stack);
}

/// Object keys that are not UTF-8 never reach the receiver's logic: protobuf `string`
/// fields must be UTF-8 and the decoder refuses the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_key_is_refused_by_the_protocol() {
    #[derive(Clone, PartialEq, prost::Message)]
    struct RawObject {
        #[prost(bytes = "vec", tag = "1")]
        key: Vec<u8>,
        #[prost(uint64, tag = "2")]
        size: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct RawBatch {
        #[prost(message, repeated, tag = "2")]
        objects: Vec<RawObject>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct RawPart {
        #[prost(message, optional, tag = "1")]
        header: Option<proto::CommitHeader>,
        #[prost(message, optional, tag = "2")]
        objects: Option<RawBatch>,
    }

    let (stack, baseline) = stack_with("").await;
    let before = Stored::capture(stack.repo());
    let ch = identity_channel(&stack, "sender.pem", "sender.key")
        .await
        .unwrap();
    let session = begin(&mut client(ch.clone())).await.unwrap();
    let parts = vec![
        RawPart {
            header: Some(header(&session, None, 1)),
            objects: None,
        },
        RawPart {
            header: None,
            objects: Some(RawBatch {
                objects: vec![RawObject {
                    key: b"fotos/\xff\xfe.jpg".to_vec(),
                    size: 0,
                }],
            }),
        },
    ];
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let r: Result<tonic::Response<proto::CommitResponse>, _> = grpc
        .client_streaming(
            tonic::Request::new(futures::stream::iter(parts)),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/familienarchiv.backup.v1.Backup/Commit",
            ),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let s = r.expect_err("invalid UTF-8 key accepted");
    assert_eq!(s.code(), Code::Internal, "{s:?}");
    assert!(s.message().contains("UTF-8"), "{s:?}");
    before.assert_unchanged(stack.repo());
    baseline.assert_intact(&stack);
}
