//! What the operator reads when the store fails (issue 21, point 2): a permission refused
//! says so, with the path and the user; a missing repository is "no repository at PATH";
//! an unreadable chunk directory is no "missing chunk" (no exit 3, no false data loss); a
//! closed stderr never turns a finished command into a panic. As root (here and in CI) the
//! commands run as `nobody` through `setpriv`, as a forgotten `sudo -u backup-receiver`
//! would run them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use chrono::TimeZone;

const BIN: &str = env!("CARGO_BIN_EXE_backup-receiver");

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The receiver run as another user than the repository's owner when we are root
/// (`nobody`), else as ourselves.
fn as_other_user(args: &[&str]) -> Output {
    let mut c = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", BIN]);
        c
    } else {
        Command::new(BIN)
    };
    c.args(args).env("RUST_LOG", "off").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A directory others may enter, holding `repo/` (0700) with one snapshot `s1`.
fn repository() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = d.path().join("repo");
    let repo = backup_receiver::store::open::create_or_open(&root)
        .unwrap()
        .repository();
    let t = chrono::Utc.with_ymd_and_hms(2026, 3, 2, 1, 0, 0).unwrap();
    super::maintenance::snapshot(&repo, "s1", t, b"night one", false);
    assert_eq!(
        std::fs::metadata(&root).unwrap().permissions().mode() & 0o777,
        0o700
    );
    (d, root)
}

fn chown_nobody(path: &Path) {
    let ok = Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success());
}

fn no_debug_output(err: &str) {
    for dump in [
        "Os {",
        "kind:",
        "code:",
        "Error {",
        "RepoError",
        "StoreError",
    ] {
        assert!(!err.contains(dump), "debug output in {err:?}");
    }
}

#[test]
fn a_repository_the_user_cannot_read_says_permission_denied_with_the_path_and_the_user() {
    let (_d, root) = repository();
    let r = root.to_str().unwrap();
    if !is_root() {
        // Our own repository, but its directory lost our permissions.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    for args in [
        vec!["snapshots", "--repo", r],
        vec!["verify", "--repo", r],
        vec!["ls", "latest", "--repo", r],
    ] {
        let out = as_other_user(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {err}");
        let marker = root.join("repository.json");
        assert!(
            err.contains(&format!("permission denied: {}", marker.display())),
            "{args:?}: {err}"
        );
        if is_root() {
            assert!(
                err.contains(&format!(
                    "running as user nobody; {r} belongs to root: run the command as that user, e.g. `sudo -u root backup-receiver"
                )),
                "{err}"
            );
        } else {
            assert!(
                err.contains("running as user ") && err.contains(&format!("who owns {r}")),
                "{err}"
            );
        }
        assert!(
            !err.contains("not a backup repository") && !err.contains("serve"),
            "{err}"
        );
        no_debug_output(&err);
    }
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn a_missing_repository_is_no_repository_at_path_and_nothing_is_created() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("no-such-repo");
    let r = root.to_str().unwrap();
    for args in [
        vec!["snapshots", "--repo", r],
        vec!["verify", "--repo", r],
        vec!["prune", "--dry-run", "--repo", r],
        vec!["gc", "--dry-run", "--repo", r],
        vec!["ack", "latest", "--repo", r],
        vec!["undelete", "s1", "--repo", r],
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {err}");
        assert_eq!(
            err.trim(),
            format!("error: no repository at {r} (it does not exist)"),
            "{args:?}"
        );
        assert!(!root.exists(), "{args:?} created the repository");
    }
}

#[test]
fn verify_reports_an_unreadable_chunk_directory_as_a_store_error_not_as_missing_chunks() {
    let (_d, root) = repository();
    let repo = backup_receiver::store::open::repository(&root).unwrap();
    let chunk = repo.load_manifest("s1").unwrap().objects[0].chunks[0].id;
    let file = backup_receiver::store::fs::chunk_path(&root, &chunk);
    let dir = file.parent().unwrap().to_path_buf();
    if is_root() {
        // The repository is nobody's, as it is backup-receiver's on the NAS.
        chown_nobody(&root);
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = as_other_user(&["verify", "--repo", root.to_str().unwrap()]);
    let err = stderr(&out);
    let text = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(6), "no damage exit (3): {text}");
    assert!(
        !text.contains("Missing") && !text.contains("no chunk file"),
        "{text}"
    );
    assert!(
        err.contains(&format!("permission denied: {}", file.display())),
        "{err}"
    );
    no_debug_output(&err);
    // Readable again, the same command finds the chunk where it always was.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = as_other_user(&["verify", "--repo", root.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_closed_stderr_does_not_turn_a_finished_restore_into_a_panic() {
    let (d, root) = repository();
    let target = d.path().join("restored");
    // `restore … 2>&1 | head -1`: the reader is gone before the restore says anything.
    let mut child = Command::new(BIN)
        .args([
            "restore",
            "s1",
            "--repo",
            root.to_str().unwrap(),
            "--objects-out",
        ])
        .arg(&target)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        std::fs::read(target.join("s1.pdf")).unwrap(),
        b"night one",
        "the restore finished"
    );
    // A failing command still fails with its own code, not 101.
    let mut child = Command::new(BIN)
        .args([
            "restore",
            "s9",
            "--repo",
            root.to_str().unwrap(),
            "--objects-out",
        ])
        .arg(d.path().join("other"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    assert_eq!(child.wait().unwrap().code(), Some(2));
}

#[test]
fn an_unreachable_s3_endpoint_is_a_sentence_not_a_debug_dump() {
    let (d, root) = repository();
    let key = d.path().join("key");
    std::fs::write(&key, "x").unwrap();
    // A port nothing listens on: the connection is refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(BIN)
        .args([
            "restore",
            "s1",
            "--repo",
            root.to_str().unwrap(),
            "--objects-to-s3",
        ])
        .args(["--s3-endpoint", &format!("http://127.0.0.1:{port}")])
        .args(["--s3-bucket", "familienarchiv", "--s3-access-key-file"])
        .arg(&key)
        .arg("--s3-secret-key-file")
        .arg(&key)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("s1.pdf"), "names the object: {err}");
    assert!(
        err.contains("Connection refused"),
        "says what happened: {err}"
    );
    for dump in ["DispatchFailure", "ConnectorError", "{ ", "Some("] {
        assert!(!err.contains(dump), "debug output {dump:?} in {err}");
    }
}
