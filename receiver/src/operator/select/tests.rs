use super::*;
use backup_common::manifest::{SnapshotStats, FORMAT_VERSION};
use chrono::TimeZone;

const BERLIN: Tz = chrono_tz::Europe::Berlin;

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

fn snap(repo: &Repository, time: DateTime<Utc>, suspect: bool) -> String {
    let id = time.format("%Y%m%dT%H%M%SZ").to_string();
    let m = Manifest {
        format: FORMAT_VERSION,
        id: id.clone(),
        time,
        sender_time: None,
        source_host: "vps".into(),
        peer_identity: "prod-vps".into(),
        bucket: "b".into(),
        dump: None,
        objects: vec![],
        stats: SnapshotStats::default(),
        suspect: suspect.then(|| "objects vanished".to_string()),
        measured: None,
    };
    assert!(repo.publish_manifest(&m).unwrap());
    id
}

/// Five nights, 01:30 UTC (02:30 Berlin): Jan 3, 4, 5 (plus a suspect one at 23:30 UTC
/// on Jan 5, which is Jan 6 in Berlin), and Jan 7 suspect.
fn nights() -> (
    tempfile::TempDir,
    crate::store::repository::Maintainer,
    Vec<String>,
) {
    let d = tempfile::tempdir().unwrap();
    let repo = crate::store::open::create_or_open(d.path()).unwrap();
    let ids = vec![
        snap(&repo, at(2026, 1, 3, 1, 30), false),
        snap(&repo, at(2026, 1, 4, 1, 30), false),
        snap(&repo, at(2026, 1, 5, 1, 30), false),
        snap(&repo, at(2026, 1, 5, 23, 30), true),
        snap(&repo, at(2026, 1, 7, 1, 30), true),
    ];
    (d, repo, ids)
}

fn cx(counting: Counting) -> Context {
    Context {
        tz: BERLIN,
        now: at(2026, 1, 15, 12, 0),
        counting,
    }
}

fn id(r: Result<Chosen, SelectError>) -> String {
    r.unwrap().manifest.id
}

#[test]
fn latest_and_latest_n_count_good_snapshots_only() {
    let (_d, repo, ids) = nights();
    let good = cx(Counting::Good);
    assert_eq!(id(resolve(&repo, "latest", &good)), ids[2]);
    assert_eq!(id(resolve(&repo, "latest~0", &good)), ids[2]);
    assert_eq!(id(resolve(&repo, "latest~1", &good)), ids[1]);
    assert_eq!(id(resolve(&repo, "latest~2", &good)), ids[0]);
    let e = resolve(&repo, "latest~3", &good).unwrap_err();
    assert_eq!(
        e.to_string(),
        "latest~3: the repository has only 3 good snapshot(s) (latest~2 is the oldest)"
    );
    let any = cx(Counting::Any);
    assert_eq!(id(resolve(&repo, "latest", &any)), ids[4]);
    assert_eq!(id(resolve(&repo, "latest~1", &any)), ids[3]);
    assert!(matches!(
        resolve(&repo, "latest~x", &good),
        Err(SelectError::BadName { .. })
    ));
    // A rejected snapshot is not good: verdicts.rs says so, and latest~N follows.
    verdicts::reject(&repo, &ids[2], "op", None, Utc::now()).unwrap();
    assert_eq!(id(resolve(&repo, "latest", &good)), ids[1]);
    assert_eq!(id(resolve(&repo, "latest~1", &good)), ids[0]);
}

#[test]
fn an_id_or_a_unique_prefix_names_one_snapshot_whatever_its_status() {
    let (_d, repo, ids) = nights();
    let good = cx(Counting::Good);
    let full = resolve(&repo, &ids[4], &good).unwrap();
    assert_eq!(
        (full.manifest.id.as_str(), full.named),
        (ids[4].as_str(), Named::Id)
    );
    let short = resolve(&repo, "20260104", &good).unwrap();
    assert_eq!(short.manifest.id, ids[1]);
    assert_eq!(short.named, Named::Prefix("20260104".into()));
    assert_eq!(id(resolve(&repo, "20260105T0130", &good)), ids[2]);
    match resolve(&repo, "20260105", &good).unwrap_err() {
        SelectError::Ambiguous { prefix, matches } => {
            assert_eq!(prefix, "20260105");
            assert_eq!(matches, vec![ids[2].clone(), ids[3].clone()]);
        }
        e => panic!("{e}"),
    }
    let e = resolve(&repo, "2026", &good).unwrap_err().to_string();
    assert!(
        e.contains("is ambiguous: it matches 20260103T013000Z, 20260104T013000Z"),
        "{e}"
    );
    assert!(matches!(
        resolve(&repo, "2025", &good),
        Err(SelectError::Repo(RepoError::NoSuchSnapshot(_)))
    ));
    assert!(matches!(
        resolve(&repo, "../snapshots", &good),
        Err(SelectError::Repo(RepoError::NoSuchSnapshot(_)))
    ));
    assert!(matches!(
        resolve(&repo, "", &good),
        Err(SelectError::EmptyName)
    ));
    assert!(matches!(
        resolve(&repo, "  ", &good),
        Err(SelectError::EmptyName)
    ));
}

#[test]
fn a_day_is_a_calendar_day_of_the_retention_zone() {
    let (_d, repo, ids) = nights();
    let good = cx(Counting::Good);
    assert_eq!(id(resolve(&repo, "2026-01-05", &good)), ids[2]);
    // 23:30 UTC on Jan 5 is Jan 6 in Berlin: that day has only the suspect one.
    let e = resolve(&repo, "2026-01-06", &good).unwrap_err();
    assert!(e.refused_by_policy(), "{e}");
    assert_eq!(
        e.to_string(),
        format!("no good snapshot was committed on 2026-01-06 (Europe/Berlin); its snapshot(s) {} are not good (suspect or rejected: name one by its id)", ids[3])
    );
    assert_eq!(id(resolve(&repo, "2026-01-06", &cx(Counting::Any))), ids[3]);
    // In UTC the same snapshot is on Jan 5, and the newest of that day.
    let utc = Context {
        tz: chrono_tz::UTC,
        ..cx(Counting::Any)
    };
    assert_eq!(id(resolve(&repo, "2026-01-05", &utc)), ids[3]);
    let e = resolve(&repo, "2026-01-08", &good).unwrap_err();
    assert!(!e.refused_by_policy());
    assert!(matches!(
        resolve(&repo, "2026-02-30", &good),
        Err(SelectError::BadName { .. })
    ));
}

#[test]
fn as_of_takes_the_newest_good_snapshot_at_or_before_the_time() {
    let (_d, repo, ids) = nights();
    let good = cx(Counting::Good);
    let t = |s: &str| parse_time(s, BERLIN, good.now).unwrap();
    assert_eq!(id(as_of(&repo, t("2026-01-05T01:30:00Z"), &good)), ids[2]);
    assert_eq!(id(as_of(&repo, t("2026-01-05T01:29:59Z"), &good)), ids[1]);
    // 02:29 Berlin is 01:29 UTC.
    assert_eq!(id(as_of(&repo, t("2026-01-05 02:29"), &good)), ids[1]);
    assert_eq!(id(as_of(&repo, t("2026-01-05 02:30"), &good)), ids[2]);
    // A day means its end; suspect ones are skipped unless any status counts.
    assert_eq!(id(as_of(&repo, t("2026-01-07"), &good)), ids[2]);
    assert_eq!(
        id(as_of(&repo, t("2026-01-07"), &cx(Counting::Any))),
        ids[4]
    );
    // Ten days before Jan 15 12:00 UTC is Jan 5 12:00 UTC.
    assert_eq!(id(as_of(&repo, t("10 days ago"), &good)), ids[2]);
    assert_eq!(id(as_of(&repo, t("11days ago"), &good)), ids[1]);
    assert_eq!(id(as_of(&repo, t("260h ago"), &good)), ids[1]);
    let e = as_of(&repo, t("2026-01-02"), &good)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "no good snapshot was committed at or before 2026-01-02 23:59:59 +01:00; the oldest is {} (2026-01-03 02:30:00 +01:00)",
            ids[0]
        )
    );
}

#[test]
fn times_are_read_in_the_zone_or_refused_with_the_forms() {
    let now = at(2026, 3, 29, 12, 0);
    let p = |s: &str| parse_time(s, BERLIN, now);
    assert_eq!(p("2026-01-05 14:00").unwrap(), at(2026, 1, 5, 13, 0));
    assert_eq!(
        p("2026-07-05T14:00:30").unwrap(),
        at(2026, 7, 5, 12, 0) + Duration::seconds(30)
    );
    assert_eq!(
        p("2026-01-05T14:00:00+01:00").unwrap(),
        at(2026, 1, 5, 13, 0)
    );
    assert_eq!(p("3 weeks ago").unwrap(), now - Duration::weeks(3));
    // 02:30 on the spring-forward day does not exist in Berlin.
    assert!(p("2026-03-29 02:30")
        .unwrap_err()
        .to_string()
        .contains("does not exist"));
    let e = p("last tuesday").unwrap_err().to_string();
    assert!(
        e.contains("2026-01-05 14:00") && e.contains("10 days ago"),
        "{e}"
    );
    assert!(p("soon ago").is_err());
}
