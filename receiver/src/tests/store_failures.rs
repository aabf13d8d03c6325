//! Every store query can fail, and a failure never reads as an answer (issue 21): each
//! query a decision needs is made to fail through the memory store, with every kind of
//! store error, and the decision must stop with that error: no snapshot becomes good (or
//! stops being good), nothing is trashed, purged or swept, no chunk is reported missing or
//! damaged, nothing remembered is forgotten. After the store heals, the same call gives
//! the healthy answer, so each scenario really needed the fact.

use std::time::{Duration, SystemTime};

use backup_common::chunk::ChunkId;
use backup_common::manifest::{ChunkRef, Manifest, ObjectEntry, SnapshotStats, FORMAT_VERSION};
use chrono::{DateTime, TimeZone, Utc};

use crate::config::RetentionConfig;
use crate::maintenance::{gc, prune, verify, verify_state};
use crate::operator::progress::Progress;
use crate::operator::snapshots::SnapshotRow;
use crate::store::backend::Space;
use crate::store::error::StoreErrorKind;
use crate::store::memory::{MemStore, Op};
use crate::store::records::trash::Tombstone;
use crate::store::repository::{Maintainer, RepoError};
use crate::store::{leases, trash, verdicts};

const KINDS: [StoreErrorKind; 7] = [
    StoreErrorKind::NotFound,
    StoreErrorKind::AlreadyExists,
    StoreErrorKind::PermissionDenied,
    StoreErrorKind::NoSpace,
    StoreErrorKind::Unavailable,
    StoreErrorKind::Corrupt,
    StoreErrorKind::Other,
];

fn day(d: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 1, 30, 0).unwrap() + chrono::Duration::days(d)
}

fn chunk(repo: &Maintainer, data: &[u8], at: SystemTime) -> ChunkId {
    let id = ChunkId(*blake3::hash(data).as_bytes());
    repo.put_chunk_at(&id, false, data, at).unwrap();
    id
}

fn snap(repo: &Maintainer, id: &str, time: DateTime<Utc>, suspect: bool, chunks: &[ChunkId]) {
    let m = Manifest {
        format: FORMAT_VERSION,
        id: id.into(),
        time,
        sender_time: None,
        source_host: "vps".into(),
        peer_identity: "prod-vps".into(),
        bucket: "b".into(),
        dump: None,
        objects: chunks
            .iter()
            .enumerate()
            .map(|(i, &c)| ObjectEntry {
                key: format!("o{i}"),
                size: 1,
                etag: String::new(),
                hash: c,
                chunks: vec![ChunkRef { id: c, len: 1 }],
            })
            .collect(),
        stats: SnapshotStats::default(),
        suspect: suspect.then(|| "objects vanished in bulk".into()),
        measured: None,
    };
    assert!(repo.publish_manifest(&m).unwrap());
}

/// `result` failed with the injected kind, as a store error.
#[track_caller]
fn stopped<T: std::fmt::Debug>(result: Result<T, RepoError>, kind: StoreErrorKind) {
    match result {
        Err(RepoError::Store(e)) => assert_eq!(e.kind(), kind, "{e}"),
        other => panic!("expected a {kind:?} store error, got {other:?}"),
    }
}

fn repo_with(build: impl Fn(&Maintainer)) -> (MemStore, Maintainer) {
    let mem = MemStore::new();
    let repo = Maintainer::new(mem.clone());
    build(&repo);
    (mem, repo)
}

fn verdict(repo: &Maintainer, kind: &str, id: &str) {
    let now = day(9);
    match kind {
        "reject" => drop(verdicts::reject(repo, id, "op", None, now).unwrap()),
        "ack" => drop(verdicts::acknowledge(repo, id, "op", None, now).unwrap()),
        "contest" => verdicts::contest(repo, id, "two commits", now).unwrap(),
        "drill" => verdicts::record_drill_passed(repo, id, "passed", now).unwrap(),
        _ => unreachable!(),
    }
}

#[test]
fn no_snapshot_becomes_latest_on_a_verdict_or_listing_that_cannot_be_read() {
    // Each scenario: the newest snapshot's standing depends on one space; the injected
    // failure of that space must stop the choice instead of changing it.
    let scenarios: [(&str, Op, Space, &str); 7] = [
        ("reject", Op::HasObject, Space::Rejects, "s1"),
        ("contest", Op::HasObject, Space::Contested, "s1"),
        ("ack", Op::HasObject, Space::Acks, "s2"),
        ("trash", Op::List, Space::Trash, "s1"),
        ("undelete", Op::List, Space::Undeleted, "s2"),
        ("none", Op::List, Space::Snapshots, "s2"),
        ("none", Op::ReadObject, Space::Snapshots, "s2"),
    ];
    for (what, op, space, healthy) in scenarios {
        for kind in KINDS {
            let (mem, repo) = repo_with(|r| {
                snap(r, "s1", day(1), false, &[]);
                snap(r, "s2", day(2), what == "ack", &[]);
                match what {
                    "reject" | "contest" => verdict(r, what, "s2"),
                    "ack" => verdict(r, "ack", "s2"),
                    "trash" => assert!(trash::put(r, "s2", day(3)).unwrap()),
                    "undelete" => {
                        assert!(trash::put(r, "s2", day(3)).unwrap());
                        trash::undelete(r, "s2", day(4)).unwrap();
                    }
                    _ => {}
                }
            });
            mem.fail(op, Some(space), kind);
            stopped(repo.latest_good(), kind);
            stopped(repo.resolve("latest", false), kind);
            mem.heal();
            assert_eq!(repo.latest_good().unwrap().unwrap().id, healthy, "{what}");
        }
    }
}

#[test]
fn a_verdict_that_cannot_be_read_is_an_error_in_every_question_about_it() {
    for kind in KINDS {
        let (mem, repo) = repo_with(|r| {
            snap(r, "s1", day(1), true, &[]);
            verdict(r, "ack", "s1");
        });
        let m = repo.load_manifest("s1").unwrap();
        for space in [Space::Rejects, Space::Acks] {
            mem.fail(Op::HasObject, Some(space), kind);
            stopped(verdicts::is_good(&repo, &m), kind);
            if space == Space::Acks {
                // (Acknowledged, it is not suspect whatever a rejection would add.)
                stopped(verdicts::is_suspect(&repo, &m), kind);
            }
            stopped(verdicts::not_good_because(&repo, &m), kind);
            stopped(SnapshotRow::from(&m).with_verdicts(&repo), kind);
            mem.heal();
        }
        mem.fail(Op::HasObject, Some(Space::Drills), kind);
        stopped(SnapshotRow::from(&m).with_verdicts(&repo), kind);
        mem.heal();
        assert!(verdicts::is_good(&repo, &m).unwrap());
        assert_eq!(
            SnapshotRow::from(&m).with_verdicts(&repo).unwrap().status,
            "acknowledged"
        );
    }
}

fn prune_cfg() -> RetentionConfig {
    RetentionConfig {
        keep_last: 0,
        keep_daily: 1,
        keep_weekly: 0,
        keep_monthly: 0,
        ..RetentionConfig::default()
    }
}

#[test]
fn prune_trashes_nothing_on_a_fact_it_cannot_read() {
    // The newest is suspect and acknowledged, so its acknowledgement is a fact the
    // prune needs (an unacknowledged suspect pins the snapshot below it).
    let build = |r: &Maintainer| {
        for d in 1..=3 {
            snap(r, &format!("s{d}"), day(d), d == 3, &[]);
        }
        verdict(r, "ack", "s3");
    };
    let (_, healthy) = repo_with(build);
    let report = prune::prune(&healthy, &prune_cfg(), day(4), false).unwrap();
    assert_eq!(report.pruned, ["s1", "s2"], "the scenario prunes");
    let failing = [
        (Op::HasObject, Space::Rejects),
        (Op::HasObject, Space::Acks),
        (Op::HasObject, Space::Contested),
        (Op::HasObject, Space::Holds),
        (Op::HasObject, Space::Drills),
        (Op::List, Space::Snapshots),
        (Op::ReadObject, Space::Snapshots),
        (Op::List, Space::Trash),
        (Op::List, Space::Undeleted),
        (Op::CreateObject, Space::Trash),
    ];
    for (op, space) in failing {
        for kind in KINDS {
            let (mem, repo) = repo_with(build);
            mem.fail(op, Some(space), kind);
            stopped(prune::prune(&repo, &prune_cfg(), day(4), false), kind);
            mem.heal();
            assert!(
                repo.keys::<Tombstone>().unwrap().is_empty(),
                "{op:?} {space:?}"
            );
            assert_eq!(repo.snapshot_ids().unwrap().len(), 3);
        }
    }
}

#[test]
fn the_purge_removes_nothing_and_undelete_restores_nothing_on_records_it_cannot_read() {
    let grace = RetentionConfig::default().trash_grace;
    let build = |r: &Maintainer| {
        snap(r, "s1", day(1), false, &[]);
        snap(r, "s2", day(2), false, &[]);
        assert!(trash::put(r, "s1", day(3)).unwrap());
    };
    for kind in KINDS {
        for space in [Space::Trash, Space::Undeleted] {
            let (mem, repo) = repo_with(build);
            mem.fail(Op::List, Some(space), kind);
            stopped(trash::purge(&repo, day(30), grace, false), kind);
            mem.heal();
            assert!(repo.stored_snapshot_ids().unwrap().contains(&"s1".into()));
        }
        let (mem, repo) = repo_with(build);
        mem.fail(Op::RemoveObject, Some(Space::Snapshots), kind);
        stopped(trash::purge(&repo, day(30), grace, false), kind);
        mem.heal();
        assert_eq!(
            trash::entries(&repo).unwrap().len(),
            1,
            "still in the trash"
        );

        // Undelete: an unreadable trash is not "not in the trash".
        let (mem, repo) = repo_with(build);
        mem.fail(Op::List, Some(Space::Trash), kind);
        match trash::undelete(&repo, "s1", day(4)) {
            Err(trash::UndeleteError::Repo(RepoError::Store(e))) => assert_eq!(e.kind(), kind),
            other => panic!("{other:?}"),
        }
        mem.heal();
        assert_eq!(trash::undelete(&repo, "s1", day(4)).unwrap().id, "s1");

        // A new snapshot never takes an id a tombstone it could not read may name.
        let (mem, repo) = repo_with(build);
        mem.fail(Op::List, Some(Space::Trash), kind);
        let mut m = repo.load_stored_manifest("s2").unwrap();
        stopped(repo.publish_snapshot(&mut m, "s1"), kind);
        mem.heal();
        assert_eq!(repo.stored_snapshot_ids().unwrap(), ["s1", "s2"]);
    }
    let (_, repo) = repo_with(build);
    let purged = trash::purge(&repo, day(30), grace, false).unwrap();
    assert_eq!(purged.len(), 1, "healthy, the purge removes s1");
    assert_eq!(repo.stored_snapshot_ids().unwrap(), ["s2"]);
}

#[test]
fn gc_sweeps_nothing_when_a_manifest_or_a_lease_cannot_be_read() {
    let old = SystemTime::from(day(1));
    let build = |r: &Maintainer| {
        let kept = chunk(r, b"kept", old);
        chunk(r, b"garbage", old);
        snap(r, "s1", day(1), false, &[kept]);
        let trashed = chunk(r, b"in the trash", old);
        snap(r, "s2", day(2), false, &[trashed]);
        assert!(trash::put(r, "s2", day(3)).unwrap());
        leases::open(r, "live", day(5), Duration::from_secs(86400)).unwrap();
    };
    let garbage = ChunkId(*blake3::hash(b"garbage").as_bytes());
    let now = day(5) + chrono::Duration::hours(1);
    let grace = Duration::from_secs(3600);
    let run = |repo: &Maintainer| -> Result<gc::GcReport, RepoError> {
        let cut = gc::cutoff_with_leases(repo, now, grace, None)?;
        gc::collect(repo, cut, cut, false)
    };
    let failing = [
        (Op::List, Some(Space::Snapshots)),
        (Op::ReadObject, Some(Space::Snapshots)),
        (Op::List, Some(Space::Leases)),
        (Op::ReadObject, Some(Space::Leases)),
        (Op::LockMark, None),
        (Op::Sweep, None),
    ];
    for (op, space) in failing {
        for kind in KINDS {
            let (mem, repo) = repo_with(build);
            mem.fail(op, space, kind);
            stopped(run(&repo), kind);
            mem.heal();
            assert!(
                repo.has_chunk(&garbage).unwrap(),
                "{op:?} {space:?} {kind:?}"
            );
        }
    }
    let (_, repo) = repo_with(build);
    let r = run(&repo).unwrap();
    assert_eq!(
        (r.manifests, r.removed_chunks),
        (2, 1),
        "healthy, gc sweeps"
    );
    assert!(!repo.has_chunk(&garbage).unwrap());
}

#[test]
fn verify_reports_no_damage_it_could_not_see() {
    let build = |r: &Maintainer| {
        let a = chunk(r, b"a", SystemTime::now());
        let b = chunk(r, b"b", SystemTime::now());
        snap(r, "s1", day(1), false, &[a, b]);
    };
    for kind in KINDS {
        for (op, read) in [
            (Op::HasChunk, verify::ReadData::None),
            (Op::ReadChunk, verify::ReadData::All),
        ] {
            let (mem, repo) = repo_with(build);
            mem.fail(op, None, kind);
            stopped(verify::verify(&repo, read, true, &Progress::hidden()), kind);
            mem.heal();
            let r = verify::verify(&repo, verify::ReadData::All, true, &Progress::hidden());
            assert!(r.unwrap().ok(), "nothing was quarantined or lost");
        }
    }
}

#[test]
fn the_verify_schedule_never_forgets_a_state_it_could_not_read() {
    for kind in KINDS {
        let (mem, repo) = repo_with(|_| {});
        let mut state = verify_state::VerifyState::fresh(day(1));
        state.passes = 7;
        verify_state::save(&repo, &state).unwrap();
        for op in [Op::List, Op::ReadObject] {
            mem.fail(op, Some(Space::VerifyState), kind);
            stopped(verify_state::load(&repo), kind);
            mem.heal();
        }
        assert_eq!(verify_state::load(&repo).unwrap(), Some(state));
    }
}

#[test]
fn a_lease_that_cannot_be_read_stops_the_cut_off_and_the_clean_up() {
    for kind in KINDS {
        let (mem, repo) = repo_with(|r| {
            leases::open(r, "s", day(1), Duration::from_secs(3600)).unwrap();
        });
        mem.fail(Op::ReadObject, Some(Space::Leases), kind);
        stopped(leases::oldest_live(&repo, day(1)), kind);
        stopped(leases::clean(&repo, day(2)), kind);
        // Closing at start-up goes by names: one unreadable lease does not stop `serve`.
        assert_eq!(leases::close_all(&repo).unwrap(), 1);
        mem.heal();
        assert_eq!(leases::clean(&repo, day(2)).unwrap(), 1);
    }
}

#[test]
fn a_trash_entry_from_before_tombstones_stops_gc_and_undelete_instead_of_losing_its_chunks() {
    use crate::store::backend::AppendStore;
    let mem = MemStore::new();
    let repo = Maintainer::new(mem.clone());
    let old = SystemTime::from(day(1));
    let kept = chunk(&repo, b"kept", old);
    snap(&repo, "s1", day(1), false, &[kept]);
    // The earlier receiver moved the manifest itself into the trash.
    let only_in_trash = chunk(&repo, b"only the old trash has it", old);
    snap(&repo, "s2", day(2), false, &[only_in_trash]);
    let body = serde_json::to_vec(&repo.load_manifest("s2").unwrap()).unwrap();
    mem.create_object(Space::Trash, "s2@20260303T013000Z.json", &body)
        .unwrap();
    repo.remove::<Manifest>(&"s2".to_string()).unwrap();

    let cut = SystemTime::from(day(9));
    match gc::collect(&repo, cut, cut, false) {
        Err(RepoError::Store(e)) => {
            assert_eq!(e.kind(), StoreErrorKind::Corrupt);
            assert!(
                e.to_string().contains("trash/s2@20260303T013000Z.json"),
                "{e}"
            );
            assert!(e.to_string().contains("docs/adr/0010"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(repo.has_chunk(&only_in_trash).unwrap(), "nothing swept");
    match trash::undelete(&repo, "s2", day(4)) {
        Err(trash::UndeleteError::Repo(RepoError::Store(e))) => {
            assert_eq!(e.kind(), StoreErrorKind::Corrupt)
        }
        other => panic!("{other:?}"),
    }
    assert!(repo
        .keys::<crate::store::records::hold::Hold>()
        .unwrap()
        .is_empty());
    // Nor does the prune's purge take the old entry (the only copy of its manifest).
    match prune::prune(&repo, &prune_cfg(), day(9), false) {
        Err(RepoError::Store(e)) => assert_eq!(e.kind(), StoreErrorKind::Corrupt),
        other => panic!("{other:?}"),
    }
    assert!(mem
        .read_object(Space::Trash, "s2@20260303T013000Z.json")
        .unwrap()
        .is_some());
}
