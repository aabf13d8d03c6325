//! restic's ways of naming a snapshot, through the real binary on every command that
//! takes one: id prefixes, days of the retention zone, `latest~N` and `--as-of`; and a
//! suspect snapshot restored by its id says why it was used.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

use super::exit_table::{publish, receiver};

fn at(d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, d, h, 30, 0).unwrap()
}

/// Nights of Jan 3, 4 and 5 (01:30 UTC, 02:30 Berlin), each with its own version of
/// brief.pdf, and a suspect one on Jan 6.
fn nights() -> (tempfile::TempDir, String) {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("repo");
    let repo = backup_receiver::store::open::create_or_open(&root).unwrap();
    for (day, body) in [(3, "drei"), (4, "vier"), (5, "fuenf")] {
        let id = at(day, 1).format("%Y%m%dT%H%M%SZ").to_string();
        publish(
            &repo,
            &id,
            at(day, 1),
            &[("briefe/brief.pdf", body.as_bytes())],
            false,
        );
    }
    publish(
        &repo,
        "20260106T013000Z",
        at(6, 1),
        &[("briefe/brief.pdf", b"junk")],
        true,
    );
    let r = root.to_str().unwrap().to_string();
    (d, r)
}

fn json(args: &[&str]) -> Value {
    let o = receiver(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn dumped(args: &[&str]) -> String {
    let o = receiver(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn ls_dump_diff_and_restore_take_prefixes_days_latest_n_and_as_of() {
    let (d, r) = nights();
    let ls = |name: &str| json(&["ls", name, "--json", "--repo", &r])["snapshot_id"].clone();
    assert_eq!(ls("20260104"), "20260104T013000Z");
    assert_eq!(ls("20260104T0130"), "20260104T013000Z");
    assert_eq!(
        ls("latest"),
        "20260105T013000Z",
        "the suspect one is not latest"
    );
    assert_eq!(ls("latest~2"), "20260103T013000Z");
    assert_eq!(ls("2026-01-04"), "20260104T013000Z");
    let as_of = json(&[
        "ls",
        "--as-of",
        "2026-01-04 12:00",
        "briefe/",
        "--json",
        "--repo",
        &r,
    ]);
    assert_eq!(as_of["snapshot_id"], "20260104T013000Z");
    assert_eq!(as_of["prefix"], "briefe/");

    let dump = |args: &[&str]| {
        let mut all = vec!["dump"];
        all.extend_from_slice(args);
        all.extend(["--repo", &r]);
        dumped(&all)
    };
    assert_eq!(dump(&["latest~1", "briefe/brief.pdf"]), "vier");
    assert_eq!(dump(&["2026-01-03", "briefe/brief.pdf"]), "drei");
    assert_eq!(
        dump(&["--as-of", "2026-01-05T01:29:59Z", "briefe/brief.pdf"]),
        "vier"
    );
    // "10 days ago" on the receiver's clock (a fake one here): Jan 15 12:00 → Jan 5 12:00.
    let clock = d.path().join("clock");
    std::fs::write(&clock, "2026-01-15T12:00:00Z").unwrap();
    let o = std::process::Command::new(super::exit_table::bin())
        .args([
            "dump",
            "--as-of",
            "10 days ago",
            "briefe/brief.pdf",
            "--repo",
            &r,
        ])
        .env("BACKUP_RECEIVER_FAKE_CLOCK_FILE", &clock)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(o.stdout).unwrap(), "fuenf");
    let o = std::process::Command::new(super::exit_table::bin())
        .args([
            "dump",
            "--as-of",
            "11 days ago",
            "briefe/brief.pdf",
            "--repo",
            &r,
        ])
        .env("BACKUP_RECEIVER_FAKE_CLOCK_FILE", &clock)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(o.stdout).unwrap(), "vier");

    // diff: NEW defaults to latest, so `diff latest~1` is what changed last night.
    let last_night = json(&["diff", "latest~1", "--json", "--repo", &r]);
    assert_eq!(last_night["old_snapshot_id"], "20260104T013000Z");
    assert_eq!(last_night["snapshot_id"], "20260105T013000Z");
    assert_eq!(last_night["changed"][0]["key"], "briefe/brief.pdf");
    let since = json(&["diff", "--as-of", "2026-01-03", "--json", "--repo", &r]);
    assert_eq!(since["old_snapshot_id"], "20260103T013000Z");
    assert_eq!(since["snapshot_id"], "20260105T013000Z");

    let target = d.path().join("as-it-was");
    let o = receiver(&[
        "restore",
        "--as-of",
        "2026-01-04",
        "--include",
        "briefe",
        "--objects-out",
        target.to_str().unwrap(),
        "--repo",
        &r,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(target.join("briefe/brief.pdf")).unwrap(),
        b"vier"
    );
}

#[test]
fn names_that_fit_none_or_several_are_usage_errors_that_say_so() {
    let (_d, r) = nights();
    let fails = |args: &[&str], code: i32, says: &str| {
        let o = receiver(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    };
    fails(
        &["ls", "202601", "--repo", &r],
        2,
        "snapshot prefix \"202601\" is ambiguous: it matches 20260103T013000Z, 20260104T013000Z, 20260105T013000Z, 20260106T013000Z; give more of the id",
    );
    fails(
        &["ls", "latest~3", "--repo", &r],
        2,
        "latest~3: the repository has only 3 good snapshot(s)",
    );
    fails(
        &["ls", "2026-01-09", "--repo", &r],
        2,
        "no good snapshot was committed on 2026-01-09 (Europe/Berlin)",
    );
    fails(
        &["ls", "2026-01-06", "--repo", &r],
        8,
        "its snapshot(s) 20260106T013000Z are not good",
    );
    fails(
        &["ls", "--as-of", "2026-01-02", "--repo", &r],
        2,
        "no good snapshot was committed at or before 2026-01-02 23:59:59 +01:00",
    );
    fails(
        &["ls", "--as-of", "whenever", "--repo", &r],
        2,
        "--as-of \"whenever\"",
    );
    fails(
        &["diff", "--as-of", "2026-01-04", "a", "b", "--repo", &r],
        2,
        "error:",
    );
    fails(
        &[
            "restore",
            "latest",
            "--as-of",
            "2026-01-04",
            "--dump-out",
            "x",
            "--repo",
            &r,
        ],
        2,
        "cannot be used with",
    );
}

#[test]
fn a_suspect_snapshot_named_by_its_id_is_restored_with_the_true_reason() {
    let (d, r) = nights();
    let target = d.path().join("suspect");
    let o = receiver(&[
        "restore",
        "20260106",
        "--objects-out",
        target.to_str().unwrap(),
        "--repo",
        &r,
    ]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("WARNING: snapshot 20260106T013000Z is suspect (objects vanished in bulk); restoring it because it was named by its id"),
        "{err}"
    );
    assert!(!err.contains("--allow-suspect was given"), "{err}");
    // With --allow-suspect, `latest` counts it, and says so.
    let target = d.path().join("any");
    let o = receiver(&[
        "restore",
        "latest",
        "--allow-suspect",
        "--objects-out",
        target.to_str().unwrap(),
        "--repo",
        &r,
    ]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("restoring it because --allow-suspect was given"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(target.join("briefe/brief.pdf")).unwrap(),
        b"junk"
    );
}
