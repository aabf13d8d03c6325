use super::*;

use backup_common::manifest::{SnapshotStats, FORMAT_VERSION};

fn manifest(id: &str, time: DateTime<Utc>, suspect: Option<&str>) -> Manifest {
    Manifest {
        format: FORMAT_VERSION,
        id: id.into(),
        time,
        sender_time: None,
        source_host: "vps".into(),
        peer_identity: "prod-vps".into(),
        bucket: "b".into(),
        dump: None,
        objects: Vec::new(),
        stats: SnapshotStats::default(),
        suspect: suspect.map(str::to_string),
        measured: None,
    }
}

fn drain(rx: &mut mpsc::UnboundedReceiver<(Signal, String)>) -> Vec<(Signal, String)> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

#[tokio::test]
async fn alerts_are_sent_once_per_onset_and_again_after_a_success() {
    let dir = tempfile::tempdir().unwrap();
    let repo = crate::store::open::create_or_open(&dir.path().join("repo"))
        .unwrap()
        .repository();
    let now = Arc::new(Mutex::new(
        DateTime::parse_from_rfc3339("2026-03-01T02:00:00Z")
            .unwrap()
            .with_timezone(&Utc),
    ));
    let t = now.clone();
    let clock: Clock = Arc::new(move || *t.lock().unwrap());
    let config = MonitoringConfig {
        healthcheck_url: Some(crate::config::PingUrl::parse("http://127.0.0.1:9/check").unwrap()),
        min_free_bytes_alert: u64::MAX,
        ..MonitoringConfig::default()
    };
    let m = Monitor::new(&config, repo, clock);
    let mut rx = m.queue.lock().unwrap().take().unwrap();

    m.check().await;
    let sent = drain(&mut rx);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, Signal::Fail);
    assert!(sent[0].1.contains("min_free_bytes_alert"), "{}", sent[0].1);
    m.check().await;
    assert!(
        drain(&mut rx).is_empty(),
        "a standing condition is reported once"
    );

    let t0 = *now.lock().unwrap();
    m.snapshot_committed(&manifest("s1", t0, None));
    m.check().await;
    let sent = drain(&mut rx);
    let signals: Vec<Signal> = sent.iter().map(|(s, _)| *s).collect();
    assert_eq!(signals, [Signal::Success, Signal::Fail], "{sent:?}");

    m.snapshot_committed(&manifest("s2", t0, Some("rows vanished")));
    let sent = drain(&mut rx);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, Signal::Fail);
    assert!(
        sent[0].1.contains("SUSPECT: rows vanished"),
        "{}",
        sent[0].1
    );

    m.verify_finished(Some("chunk ab12… hash mismatch"));
    let sent = drain(&mut rx);
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0].1.contains("verification found damage"),
        "{}",
        sent[0].1
    );
    assert!(m
        .metrics()
        .contains("backup_receiver_last_verify_success 0\n"));

    *now.lock().unwrap() = t0 + chrono::Duration::hours(27);
    m.check().await;
    let sent = drain(&mut rx);
    assert_eq!(sent.len(), 1);
    assert!(sent[0].1.contains("missed_window"), "{}", sent[0].1);
    assert!(m
        .metrics()
        .contains("backup_receiver_alert{kind=\"missed_window\"} 1\n"));
}

#[test]
fn code_labels_are_snake_case() {
    assert_eq!(
        code_label(tonic::Code::ResourceExhausted),
        "resource_exhausted"
    );
    assert_eq!(code_label(tonic::Code::Internal), "internal");
}
