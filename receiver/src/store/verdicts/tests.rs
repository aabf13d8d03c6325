use super::*;
use backup_common::manifest::{SnapshotStats, FORMAT_VERSION};

fn snap(id: &str, suspect: Option<&str>) -> Manifest {
    Manifest {
        format: FORMAT_VERSION,
        id: id.into(),
        time: Utc::now(),
        sender_time: None,
        source_host: "vps".into(),
        peer_identity: "prod-vps".into(),
        bucket: "b".into(),
        dump: None,
        objects: vec![],
        stats: SnapshotStats::default(),
        suspect: suspect.map(str::to_string),
        measured: None,
    }
}

#[test]
fn acks_are_write_once_and_make_a_snapshot_good() {
    let d = tempfile::tempdir().unwrap();
    let repo = crate::store::open::create_or_open(d.path()).unwrap();
    let good = snap("20260101T000000Z", None);
    let bad = snap("20260102T000000Z", Some("empty"));
    assert!(repo.publish_manifest(&good).unwrap());
    assert!(repo.publish_manifest(&bad).unwrap());
    assert_eq!(repo.latest_good().unwrap().unwrap().id, good.id);
    assert!(is_suspect(&repo, &bad).unwrap());
    assert!(matches!(
        acknowledge(&repo, &good.id, "op", None, Utc::now()),
        Err(AckError::NotSuspect(_))
    ));
    let ack = acknowledge(
        &repo,
        "latest",
        "op",
        Some("bucket emptied on purpose"),
        Utc::now(),
    )
    .unwrap();
    assert_eq!(ack.snapshot, bad.id);
    assert!(is_acknowledged(&repo, &bad.id).unwrap());
    assert!(!is_suspect(&repo, &bad).unwrap());
    assert_eq!(repo.latest_good().unwrap().unwrap().id, bad.id);
    assert!(matches!(
        acknowledge(&repo, &bad.id, "op", None, Utc::now()),
        Err(AckError::AlreadyAcknowledged(..))
    ));
    assert!(!is_acknowledged(&repo, "../snapshots/20260102T000000Z").unwrap());
}

#[test]
fn a_rejected_snapshot_is_out_of_every_decision() {
    let d = tempfile::tempdir().unwrap();
    let repo = crate::store::open::create_or_open(d.path()).unwrap();
    let first = snap("20260101T000000Z", None);
    let attacker = snap("20260102T000000Z", None);
    let flagged = snap("20260103T000000Z", Some("inflated"));
    for m in [&first, &attacker, &flagged] {
        assert!(repo.publish_manifest(m).unwrap());
    }
    assert_eq!(repo.latest_good().unwrap().unwrap().id, attacker.id);
    assert!(reject(&repo, "latest", "op", None, Utc::now()).is_err());
    reject(&repo, &attacker.id, "op", Some("not ours"), Utc::now()).unwrap();
    assert!(!is_good(&repo, &attacker).unwrap());
    assert_eq!(repo.latest_good().unwrap().unwrap().id, first.id);
    assert!(matches!(
        reject(&repo, &attacker.id, "op", None, Utc::now()),
        Err(AckError::AlreadyRejected(..))
    ));
    reject(&repo, &flagged.id, "op", None, Utc::now()).unwrap();
    assert!(
        !is_suspect(&repo, &flagged).unwrap(),
        "rejected: pins nothing"
    );
    assert!(matches!(
        acknowledge(&repo, &flagged.id, "op", None, Utc::now()),
        Err(AckError::Rejected(_))
    ));
    assert_eq!(
        ids::<Rejected>(&repo).unwrap(),
        vec![attacker.id.clone(), flagged.id.clone()]
    );
}
