//! The error contract (proto/backup.proto `ErrorDetail`) as a hostile client meets it, and
//! the one call that records a refusal: every status the sender must tell apart carries
//! its reason, and a Tailscale refusal is counted in the metrics like the others.

use backup_common::contract::{self, Reason};
use backup_tests::hostile::*;
use backup_tests::net::free_port;
use backup_tests::net::scrape_metrics;
use backup_tests::stack::{noise, Stack};
use tonic::Code;

#[track_caller]
fn assert_reason<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: Code,
    fragment: &str,
    reason: Option<Reason>,
) {
    let s = assert_status(result, code, fragment);
    assert_eq!(contract::reason(&s), reason, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receivers_statuses_carry_the_reason_the_sender_acts_on() {
    backup_common::tls::install_crypto_provider();
    let stack = Stack::start_with("[limits]\nmax_snapshots_per_day = 1\n", &[])
        .await
        .unwrap();
    let mut c = sender_client(&stack).await;

    // A session the receiver does not know: SESSION_LOST, on every call that names one.
    let (up, _) = chunk("20260101T000000Z-deadbeef", &noise(1000, 1));
    assert_reason(
        put(&mut c, vec![up]).await,
        Code::FailedPrecondition,
        "unknown or expired session",
        Some(Reason::SessionLost),
    );
    let missing = c
        .missing_chunks(backup_common::proto::MissingChunksRequest {
            session_id: "nope".into(),
            ids: vec![],
        })
        .await;
    assert_reason(
        missing,
        Code::FailedPrecondition,
        "unknown or expired session",
        Some(Reason::SessionLost),
    );

    // A commit naming a chunk never uploaded: MISSING_CHUNKS, the same code told apart.
    let session = begin(&mut c).await.unwrap();
    let never = noise(20_000, 77);
    let (_, r) = chunk(&session, &never);
    assert_reason(
        commit(
            &mut c,
            header(&session, None, 1),
            vec![vec![object("a.pdf", &never, vec![r])]],
        )
        .await,
        Code::FailedPrecondition,
        "does not have",
        Some(Reason::MissingChunks),
    );

    // Malformed input has no reason the sender acts on.
    let session = begin(&mut c).await.unwrap();
    let (mut up, _) = chunk(&session, &noise(1000, 2));
    up.raw_len = 0;
    assert_reason(
        put(&mut c, vec![up]).await,
        Code::InvalidArgument,
        "raw_len",
        None,
    );

    // The second commit of the day: LIMIT_EXCEEDED.
    commit_empty(&mut c, 1).await.unwrap();
    assert_reason(
        commit_empty(&mut c, 2).await,
        Code::ResourceExhausted,
        "limits.max_snapshots_per_day",
        Some(Reason::LimitExceeded),
    );

    // A certificate whose identity is not admitted: REFUSED_BY_POLICY.
    let mut stranger = identity_client(&stack, "sender-stranger.pem", "sender-stranger.key")
        .await
        .unwrap();
    assert_reason(
        begin(&mut stranger).await,
        Code::PermissionDenied,
        "allowed_identities",
        Some(Reason::RefusedByPolicy),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailscale_refusals_are_counted_in_the_rejected_requests_metric() {
    backup_common::tls::install_crypto_provider();
    let sock_dir = tempfile::tempdir().unwrap();
    let socket = sock_dir.path().join("tailscaled.sock");
    let tailscaled = FakeTailscaled::start(
        &socket,
        WhoisAnswer::Node {
            name: "laptop.tail1234.ts.net.".into(),
            tags: vec![],
        },
    )
    .unwrap();
    let port = free_port();
    let stack = Stack::start_with(
        &format!(
            "[admission.tailscale]\nsocket = \"{}\"\nrequired_tags = [\"tag:prod-vps\"]\n\
             [monitoring]\nmetrics_listen = \"127.0.0.1:{port}\"\n",
            socket.display()
        ),
        &[],
    )
    .await
    .unwrap();
    // The metric counts each refusal, also those the audit log folds into one record.
    for _ in 0..2 {
        let mut c = sender_client(&stack).await;
        assert_reason(
            begin(&mut c).await,
            Code::PermissionDenied,
            "required_tags",
            Some(Reason::RefusedByPolicy),
        );
    }
    tailscaled.set(WhoisAnswer::NotFound);
    let mut c = sender_client(&stack).await;
    assert_reason(
        begin(&mut c).await,
        Code::PermissionDenied,
        "does not know peer",
        Some(Reason::RefusedByPolicy),
    );
    let text = scrape_metrics(port).await;
    assert!(
        text.lines()
            .any(|l| l == "backup_receiver_rejected_requests_total{reason=\"tailscale\"} 3"),
        "{text}"
    );
    // Logged and audited by the same call.
    let refusals: Vec<_> = audit(stack.repo())
        .into_iter()
        .filter(|r| r["event"] == "refused" && r["reason"] == "tailscale")
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert_eq!(refusals[0]["tailscale_node"], "laptop.tail1234.ts.net.");
}
