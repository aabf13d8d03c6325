//! The maintenance commands as an operator runs them, on a repository built through the
//! library: prune's dry run and reasons, the trash and undelete, verify's exit code and
//! quarantine.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use backup_common::chunk::ChunkId;
use backup_common::manifest::{ChunkRef, Manifest, ObjectEntry, SnapshotStats, FORMAT_VERSION};
use backup_receiver::store::repository::Repository;
use chrono::{DateTime, TimeZone, Utc};

fn receiver(args: &[&str], clock: Option<&std::path::Path>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_backup-receiver"));
    c.args(args).env("RUST_LOG", "error");
    if let Some(p) = clock {
        c.env("BACKUP_RECEIVER_FAKE_CLOCK_FILE", p);
    }
    c.output().expect("run backup-receiver")
}

pub(crate) fn snapshot(
    repo: &Repository,
    id: &str,
    time: DateTime<Utc>,
    data: &[u8],
    suspect: bool,
) {
    let chunk = ChunkId(*blake3::hash(data).as_bytes());
    repo.put_chunk(&chunk, false, data).unwrap();
    let m = Manifest {
        format: FORMAT_VERSION,
        id: id.into(),
        time,
        sender_time: None,
        source_host: "vps".into(),
        peer_identity: "prod-vps".into(),
        bucket: "familienarchiv".into(),
        dump: None,
        objects: vec![ObjectEntry {
            key: format!("{id}.pdf"),
            size: data.len() as u64,
            etag: String::new(),
            hash: chunk,
            chunks: vec![ChunkRef {
                id: chunk,
                len: data.len() as u32,
            }],
        }],
        stats: SnapshotStats::default(),
        suspect: suspect.then(|| "objects vanished in bulk".to_string()),
        measured: None,
    };
    assert!(repo.publish_manifest(&m).unwrap());
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn prune_dry_run_trash_undelete_and_verify() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("repo");
    let repo = backup_receiver::store::open::create_or_open(&root)
        .unwrap()
        .repository();
    let r = root.to_str().unwrap();
    let day =
        |n: i64| Utc.with_ymd_and_hms(2026, 3, 2, 1, 0, 0).unwrap() + chrono::Duration::days(n);
    for n in 0..20 {
        snapshot(
            &repo,
            &format!("s{n:02}"),
            day(n),
            format!("night {n}").as_bytes(),
            false,
        );
    }
    // Two junk snapshots at the end, flagged suspect: they must not displace s19.. s06.
    snapshot(&repo, "s20", day(20), b"junk 1", true);
    snapshot(&repo, "s21", day(21), b"junk 2", true);
    let clock = d.path().join("clock");
    std::fs::write(&clock, day(22).to_rfc3339()).unwrap();

    let dry = receiver(&["prune", "--repo", r, "--dry-run"], Some(&clock));
    assert!(dry.status.success(), "{}", text(&dry));
    let out = text(&dry);
    let line = |id: &str| out.lines().find(|l| l.starts_with(id)).unwrap().to_string();
    assert!(line("s19").contains("keep: newest, pinned, daily"), "{out}");
    assert!(line("s21").contains("suspect"), "{out}");
    assert!(line("s06").contains("daily"), "{out}");
    assert!(
        line("s05").contains("would prune") || line("s05").contains("weekly"),
        "{out}"
    );
    assert!(line("s00").contains("would prune"), "{out}");
    assert_eq!(
        repo.snapshot_ids().unwrap().len(),
        22,
        "dry run changes nothing"
    );

    let pruned = receiver(&["prune", "--repo", r], Some(&clock));
    assert!(pruned.status.success(), "{}", text(&pruned));
    let left = repo.snapshot_ids().unwrap();
    assert!(!left.contains(&"s00".to_string()) && left.contains(&"s19".to_string()));
    let trash: Vec<_> = std::fs::read_dir(root.join("trash")).unwrap().collect();
    assert_eq!(trash.len(), 22 - left.len());

    // Undelete brings s00 back and holds it against the next prune.
    let u = receiver(&["undelete", "s00", "--repo", r], None);
    assert!(u.status.success(), "{}", text(&u));
    let again = receiver(&["prune", "--repo", r, "--dry-run"], Some(&clock));
    assert!(text(&again)
        .lines()
        .any(|l| l.starts_with("s00") && l.contains("held")));
    assert!(!receiver(&["undelete", "s00", "--repo", r], None)
        .status
        .success());

    // Past the grace period the trash empties for good; GC then frees the chunks.
    std::fs::write(&clock, (day(22) + chrono::Duration::days(8)).to_rfc3339()).unwrap();
    assert!(receiver(&["prune", "--repo", r], Some(&clock))
        .status
        .success());
    assert_eq!(std::fs::read_dir(root.join("trash")).unwrap().count(), 0);
    // The chunks were written moments ago (real clock): a zero grace is needed to free them.
    let config = d.path().join("receiver.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:1\"\nrepo = \"{r}\"\n[tls]\nca_cert = \"x\"\nserver_cert = \"x\"\nserver_key = \"x\"\n[admission]\nallowed_identities = [\"prod-vps\"]\nallowed_networks = [\"127.0.0.0/8\"]\n[retention]\ngc_grace = \"0s\"\n"
        ),
    )
    .unwrap();
    let gc = receiver(&["gc", "--config", config.to_str().unwrap()], None);
    assert!(gc.status.success(), "{}", text(&gc));
    let freed = 22 - repo.snapshot_ids().unwrap().len();
    assert!(
        text(&gc).contains(&format!("freed {freed} chunks")),
        "{}",
        text(&gc)
    );

    // Verify: clean, then a rotten chunk is reported, quarantined, and exits 3.
    let ok = receiver(&["verify", "--repo", r, "--read-data"], None);
    assert!(ok.status.success(), "{}", text(&ok));
    let m = repo.load_manifest("s19").unwrap();
    let id = m.objects[0].chunks[0].id;
    let path = backup_receiver::store::fs::chunk_path(&root, &id);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, b"\0night 1X").unwrap();
    let bad = receiver(&["verify", "--repo", r, "--read-data"], None);
    assert_eq!(bad.status.code(), Some(3), "{}", text(&bad));
    assert!(
        text(&bad).contains("affects snapshot s19 object s19.pdf"),
        "{}",
        text(&bad)
    );
    assert!(root.join("quarantine").join(id.to_hex()).is_file());
    assert!(!repo.has_chunk(&id).unwrap());
    // Without reading data, the now-missing chunk is still reported.
    let quick = receiver(&["verify", "--repo", r, "--json"], None);
    assert_eq!(quick.status.code(), Some(3));
    let report: serde_json::Value = serde_json::from_slice(&quick.stdout).unwrap();
    assert_eq!(report["damage"][0]["problem"], "missing");
}
