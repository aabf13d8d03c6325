//! The receiver's command line, run as the operator runs it.

use std::process::Command;

fn receiver(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_backup-receiver"))
        .args(args)
        .output()
        .expect("run backup-receiver")
}

#[test]
fn certs_init_writes_the_six_files_and_refuses_to_overwrite() {
    let d = tempfile::tempdir().unwrap();
    let out_dir = d.path().join("certs");
    let out = out_dir.to_str().unwrap();
    let args = [
        "certs",
        "init",
        "--out",
        out,
        "--server-name",
        "heim-nas",
        "--server-ip",
        "100.64.0.2",
        "--sender-identity",
        "prod-vps",
    ];
    let first = receiver(&args);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    for f in [
        "ca.pem",
        "ca.key",
        "receiver.pem",
        "receiver.key",
        "sender.pem",
        "sender.key",
    ] {
        assert!(out_dir.join(f).is_file(), "{f} missing");
    }
    let before = std::fs::read(out_dir.join("ca.key")).unwrap();
    let second = receiver(&args);
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(out_dir.join("ca.key")).unwrap(), before);
}

#[test]
fn snapshots_on_a_directory_that_is_no_repository_names_the_problem() {
    let d = tempfile::tempdir().unwrap();
    let out = receiver(&["snapshots", "--repo", d.path().to_str().unwrap()]);
    // Exit code 6: the repository cannot be read (it was 1 before the exit-code table).
    assert_eq!(out.status.code(), Some(6));
    let err = String::from_utf8_lossy(&out.stderr);
    // Says what is there; only `serve` creates a repository, so nothing else mentions it.
    assert!(
        err.contains(&format!(
            "no repository at {} (it has no repository.json)",
            d.path().display()
        )),
        "{err}"
    );
    assert!(!err.contains("serve") && !err.contains("creat"), "{err}");
    assert_eq!(
        std::fs::read_dir(d.path()).unwrap().count(),
        0,
        "nothing may be created"
    );
}

#[test]
fn serve_with_a_bad_config_names_the_key() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("receiver.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\nrepo = \"/nonexistent\"\n[tls]\nca_cert = \"a\"\nserver_cert = \"b\"\nserver_key = \"c\"\n[admission]\nallowed_identities = [\"x\"]\nallowed_networks = [\"not-a-net\"]\n",
    )
    .unwrap();
    let out = receiver(&["serve", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("allowed_networks"), "{err}");
    assert_eq!(out.status.code(), Some(5), "configuration: {err}");
}

// ---------------------------------------------------------------- the exit-code table

fn code(o: &std::process::Output) -> (Option<i32>, String) {
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A repository with one good snapshot `s1` (one object) and one suspect `s2`.
fn repo_with_snapshots() -> (tempfile::TempDir, std::path::PathBuf) {
    use chrono::TimeZone;
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("repo");
    let repo = backup_receiver::store::open::create_or_open(&root)
        .unwrap()
        .repository();
    let t = chrono::Utc.with_ymd_and_hms(2026, 3, 2, 1, 0, 0).unwrap();
    super::maintenance::snapshot(&repo, "s1", t, b"night one", false);
    super::maintenance::snapshot(&repo, "s2", t + chrono::Duration::days(1), b"junk", true);
    (d, root)
}

#[test]
fn help_shows_the_exit_code_table() {
    let out = receiver(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Exit codes:"), "{help}");
    for line in [
        "0  success",
        "2  usage",
        "3  damage found",
        "4  restore incomplete",
        "5  configuration",
        "6  repository unreadable",
        "7  drill failed",
        "8  refused by policy",
    ] {
        assert!(help.contains(line), "{line:?} missing from\n{help}");
    }
}

#[test]
fn exit_1_for_a_failure_outside_the_table() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("no-such.pem");
    let (c, err) = code(&receiver(&[
        "certs",
        "fingerprint",
        missing.to_str().unwrap(),
    ]));
    assert_eq!(c, Some(1), "{err}");
    assert!(err.contains("no-such.pem"), "{err}");
}

#[test]
fn exit_2_for_usage_errors_and_unknown_snapshots() {
    // clap's own usage error.
    let (c, err) = code(&receiver(&["snapshots"]));
    assert_eq!(c, Some(2), "{err}");
    // One the command finds itself.
    let (c, err) = code(&receiver(&["gc", "--dry-run"]));
    assert_eq!(c, Some(2), "{err}");
    assert!(err.contains("give --repo DIR or --config FILE"), "{err}");
    let (_d, root) = repo_with_snapshots();
    let (c, err) = code(&receiver(&["ack", "s9", "--repo", root.to_str().unwrap()]));
    assert_eq!(c, Some(2), "{err}");
    assert!(err.contains("no snapshot named"), "{err}");
}

#[test]
fn a_restore_reading_a_corrupt_chunk_exits_3_not_4() {
    use std::os::unix::fs::PermissionsExt;
    let (d, root) = repo_with_snapshots();
    let repo = backup_receiver::store::open::repository(&root).unwrap();
    let m = repo.load_manifest("s1").unwrap();
    let path = backup_receiver::store::fs::chunk_path(&root, &m.objects[0].chunks[0].id);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, b"\0night onX").unwrap();
    let out_dir = d.path().join("out");
    // Damage, the table's 3 (it was 4, "restore incomplete", before the table held).
    let (c, err) = code(&receiver(&[
        "restore",
        "s1",
        "--repo",
        root.to_str().unwrap(),
        "--objects-out",
        out_dir.to_str().unwrap(),
    ]));
    assert_eq!(c, Some(3), "{err}");
    assert!(
        err.contains("restore incomplete: 1 of 1 object(s) were not restored, 1 of them because their chunks are damaged or missing"),
        "{err}"
    );
}

#[test]
fn exit_5_when_the_config_file_is_missing() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("receiver.toml");
    let (c, err) = code(&receiver(&["serve", "--config", cfg.to_str().unwrap()]));
    assert_eq!(c, Some(5), "{err}");
    assert!(err.contains("receiver.toml"), "{err}");
    let (c, err) = code(&receiver(&["gc", "--config", cfg.to_str().unwrap()]));
    assert_eq!(c, Some(5), "{err}");
}

#[test]
fn exit_8_when_policy_refuses() {
    let (d, root) = repo_with_snapshots();
    let r = root.to_str().unwrap();
    // s1 is not suspect: nothing to acknowledge.
    let (c, err) = code(&receiver(&["ack", "s1", "--repo", r]));
    assert_eq!(c, Some(8), "{err}");
    assert!(err.contains("not suspect"), "{err}");
    // A target directory that is not empty is never written into.
    let target = d.path().join("full");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"keep").unwrap();
    let (c, err) = code(&receiver(&[
        "restore",
        "s1",
        "--repo",
        r,
        "--objects-out",
        target.to_str().unwrap(),
    ]));
    assert_eq!(c, Some(8), "{err}");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 1);
    // `latest` when every snapshot is suspect: refused without --allow-suspect.
    let only_suspect = tempfile::tempdir().unwrap();
    let repo = backup_receiver::store::open::create_or_open(only_suspect.path())
        .unwrap()
        .repository();
    super::maintenance::snapshot(&repo, "s3", chrono::Utc::now(), b"junk", true);
    let (c, err) = code(&receiver(&[
        "restore",
        "latest",
        "--repo",
        only_suspect.path().to_str().unwrap(),
        "--objects-out",
        d.path().join("new").to_str().unwrap(),
    ]));
    assert_eq!(c, Some(8), "{err}");
    assert!(err.contains("no good snapshot"), "{err}");
}

#[test]
fn serve_with_a_bad_value_names_its_dotted_key_path_and_an_unknown_key_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("receiver.toml");
    let base = "listen = \"127.0.0.1:0\"\nrepo = \"/nonexistent\"\n[tls]\nca_cert = \"a\"\nserver_cert = \"b\"\nserver_key = \"c\"\n[admission]\nallowed_identities = [\"x\"]\nallowed_networks = [\"127.0.0.0/8\"]\n";
    for (extra, want) in [
        (
            "[limits]\nidle_timeout = \"soon\"\n",
            "key `limits.idle_timeout`",
        ),
        (
            "[drill]\nhealthcheck_url = \"https://hc.example/x?y=1\"\n",
            "key `drill.healthcheck_url`",
        ),
        (
            "[monitoring]\nping_retries = 0\n",
            "key `monitoring.ping_retries`",
        ),
        ("[limits]\nmax_sesions = 3\n", "unknown field `max_sesions`"),
    ] {
        std::fs::write(&cfg, format!("{base}{extra}")).unwrap();
        let out = receiver(&["serve", "--config", cfg.to_str().unwrap()]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{extra}: {err}");
        assert!(!std::path::Path::new("/nonexistent").exists());
    }
}
