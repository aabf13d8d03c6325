//! Every row of the exit-code table (cli/exit.rs), made to happen with the real binary,
//! and each command's own `--help` listing the row it just exited with.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use backup_common::chunk::ChunkId;
use backup_common::manifest::{ChunkRef, Manifest, ObjectEntry, SnapshotStats, FORMAT_VERSION};
use backup_receiver::cli::exit::{Exit, ALL};
use backup_receiver::store::repository::Repository;
use chrono::{DateTime, TimeZone, Utc};

pub(crate) fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_backup-receiver")
}

pub(crate) fn receiver(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("RUST_LOG", "error")
        .env_remove("BACKUP_RECEIVER_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run backup-receiver")
}

/// Publishes a snapshot holding `objects` (key, bytes), without a database dump.
pub(crate) fn publish(
    repo: &Repository,
    id: &str,
    time: DateTime<Utc>,
    objects: &[(&str, &[u8])],
    suspect: bool,
) {
    let objects = objects
        .iter()
        .map(|(key, data)| {
            let chunk = ChunkId(*blake3::hash(data).as_bytes());
            repo.put_chunk(&chunk, false, data).unwrap();
            ObjectEntry {
                key: key.to_string(),
                size: data.len() as u64,
                etag: String::new(),
                hash: chunk,
                chunks: vec![ChunkRef {
                    id: chunk,
                    len: data.len() as u32,
                }],
            }
        })
        .collect();
    let m = Manifest {
        format: FORMAT_VERSION,
        id: id.into(),
        time,
        sender_time: None,
        source_host: "vps".into(),
        peer_identity: "prod-vps".into(),
        bucket: "familienarchiv".into(),
        dump: None,
        objects,
        stats: SnapshotStats::default(),
        suspect: suspect.then(|| "objects vanished in bulk".to_string()),
        measured: None,
    };
    assert!(repo.publish_manifest(&m).unwrap());
}

/// `good` (one object), `clash` (keys `a` and `a/b`: one of them cannot be written),
/// `rot` (an object whose only chunk is corrupted on disk).
fn repository() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("repo");
    let repo = backup_receiver::store::open::create_or_open(&root).unwrap();
    let t = Utc.with_ymd_and_hms(2026, 3, 2, 1, 0, 0).unwrap();
    publish(&repo, "good", t, &[("brief.pdf", b"liebe grete")], false);
    publish(
        &repo,
        "clash",
        t + chrono::Duration::hours(1),
        &[("a", b"a file"), ("a/b", b"below a")],
        false,
    );
    publish(
        &repo,
        "rot",
        t + chrono::Duration::hours(2),
        &[("scan.png", b"will rot on disk")],
        false,
    );
    let chunk = ChunkId(*blake3::hash(b"will rot on disk").as_bytes());
    let path = backup_receiver::store::fs::chunk_path(&root, &chunk);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, b"\0will rot on diXk").unwrap();
    (d, root)
}

/// Runs `args` with a terminal as stdin, stdout and stderr (util-linux `script`).
fn on_a_terminal(args: &[&str]) -> Output {
    let quoted: Vec<String> = std::iter::once(bin())
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect();
    Command::new("script")
        .args(["-qec", &quoted.join(" "), "/dev/null"])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .output()
        .expect("run script")
}

/// Runs `args` with stdout a pipe whose reader is gone.
fn with_closed_stdout(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(bin())
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// The rows of `command`'s own --help ("  3  damage found: …").
fn help_rows(command: &[&str]) -> String {
    let mut args = command.to_vec();
    args.push("--help");
    let out = receiver(&args);
    assert!(out.status.success(), "{command:?} --help");
    String::from_utf8(out.stdout).unwrap()
}

struct Case {
    exit: Exit,
    /// The command whose --help must list the row.
    command: Vec<&'static str>,
    output: Output,
    /// What stderr must say.
    says: &'static str,
}

#[test]
fn every_row_of_the_table_happens_and_each_commands_help_lists_it() {
    let (d, root) = repository();
    let r = root.to_str().unwrap();
    let out = |name: &str| d.path().join(name).to_str().unwrap().to_string();
    let empty = tempfile::tempdir().unwrap();
    let missing_config = out("no-such-receiver.toml");
    let cases = vec![
        Case {
            exit: Exit::Success,
            command: vec!["restore"],
            output: receiver(&["restore", "good", "--repo", r, "--objects-out", &out("ok")]),
            says: "objects: 1 object, 11 bytes verified and written",
        },
        Case {
            exit: Exit::Failure,
            command: vec!["certs", "fingerprint"],
            output: receiver(&["certs", "fingerprint", &out("no-such.pem")]),
            says: "no-such.pem",
        },
        Case {
            exit: Exit::Usage,
            command: vec!["restore"],
            output: receiver(&["restore", "", "--repo", r, "--dump-out", &out("d")]),
            says: "the snapshot name is empty",
        },
        Case {
            exit: Exit::Usage,
            command: vec!["restore"],
            output: receiver(&["restore", "good", "--repo", r, "--objects-to-s3"]),
            says: "--s3-endpoint",
        },
        Case {
            exit: Exit::Usage,
            command: vec!["dump"],
            output: receiver(&["dump", "good", "no-such.pdf", "--repo", r]),
            says: "snapshot good has no object \"no-such.pdf\"",
        },
        Case {
            exit: Exit::Usage,
            command: vec!["dump"],
            output: on_a_terminal(&["dump", "good", "brief.pdf", "--repo", r]),
            says: "stdout is a terminal",
        },
        Case {
            exit: Exit::Usage,
            command: vec!["ls"],
            output: receiver(&["ls", "no-such-snapshot", "--repo", r]),
            says: "no snapshot named \"no-such-snapshot\"",
        },
        Case {
            exit: Exit::Damage,
            command: vec!["restore"],
            output: receiver(&["restore", "rot", "--repo", r, "--objects-out", &out("rot")]),
            says: "because their chunks are damaged or missing",
        },
        Case {
            exit: Exit::Damage,
            command: vec!["dump"],
            output: receiver(&["dump", "rot", "scan.png", "--repo", r]),
            says: "chunk",
        },
        Case {
            exit: Exit::RestoreIncomplete,
            command: vec!["restore"],
            output: receiver(&[
                "restore",
                "clash",
                "--repo",
                r,
                "--objects-out",
                &out("clash"),
            ]),
            says: "restore incomplete: 1 of 2 object(s) were not restored (listed above)",
        },
        Case {
            exit: Exit::Config,
            command: vec!["gc"],
            output: receiver(&["gc", "--config", &missing_config]),
            says: "no-such-receiver.toml",
        },
        Case {
            exit: Exit::RepositoryUnreadable,
            command: vec!["snapshots"],
            output: receiver(&["snapshots", "--repo", empty.path().to_str().unwrap()]),
            says: "no repository at",
        },
        Case {
            exit: Exit::DrillFailed,
            command: vec!["drill"],
            output: receiver(&["drill", "good", "--repo", r]),
            says: "restore drill of snapshot good FAILED: snapshot good has no database dump",
        },
        Case {
            exit: Exit::Refused,
            command: vec!["ack"],
            output: receiver(&["ack", "good", "--repo", r]),
            says: "not suspect",
        },
        Case {
            exit: Exit::ClosedStdout,
            command: vec!["snapshots"],
            output: with_closed_stdout(&["snapshots", "--json", "--repo", r]),
            says: "",
        },
    ];
    for exit in ALL {
        assert!(
            cases.iter().any(|c| c.exit == exit),
            "no case for exit code {}",
            exit.code()
        );
    }
    for c in &cases {
        let code = c.exit.code();
        // `script` passes the child's output through on its stdout.
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&c.output.stderr),
            String::from_utf8_lossy(&c.output.stdout)
        );
        assert_eq!(
            c.output.status.code(),
            Some(i32::from(code)),
            "{:?}: {said}",
            c.command
        );
        assert!(said.contains(c.says), "{:?} exit {code}: {said}", c.command);
        assert!(!said.contains("panicked"), "{said}");
        let row = format!("\n{code:>3}  {}", c.exit.help_row());
        assert!(
            help_rows(&c.command).contains(&row),
            "{:?} --help does not list {row:?}",
            c.command
        );
    }
    // The main --help shows the whole table, and DEPLOYMENT.md the same codes.
    let main_help = String::from_utf8(receiver(&["--help"]).stdout).unwrap();
    let deployment = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/DEPLOYMENT.md"),
    )
    .unwrap();
    for exit in ALL {
        let code = exit.code();
        assert!(
            main_help.contains(&format!("\n{code:>3}  {}", exit.help_row())),
            "{code}"
        );
        assert!(
            deployment.contains(&format!("| {code} | ")),
            "docs/DEPLOYMENT.md lacks exit code {code}"
        );
    }
}

#[test]
fn a_failure_with_json_is_still_one_report_on_stdout() {
    let (d, root) = repository();
    let r = root.to_str().unwrap();
    let o = receiver(&[
        "restore",
        "",
        "--json",
        "--repo",
        r,
        "--dump-out",
        d.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "command": "restore", "ok": false, "snapshot_id": null,
            "error": {"kind": "usage", "exit_code": 2, "message": "the snapshot name is empty: give an id (or a unique prefix of one), latest, latest~N or a day like 2026-01-05"},
        })
    );
    // A report that says it failed carries its body and the error once.
    let o = receiver(&[
        "restore",
        "clash",
        "--json",
        "--repo",
        r,
        "--objects-out",
        d.path().join("clash").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(4));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["snapshot_id"], "clash");
    assert_eq!(v["error"]["kind"], "restore_incomplete");
    let objects = &v["objects"];
    assert_eq!(objects["restored"].as_array().unwrap().len(), 1);
    assert_eq!(objects["failed"].as_array().unwrap().len(), 1);
    assert_eq!(objects["failed"][0]["damage"], false);
    let restored = objects["restored"][0]["key"].as_str().unwrap();
    let failed = objects["failed"][0]["key"].as_str().unwrap();
    let mut both = [restored, failed];
    both.sort();
    assert_eq!(both, ["a", "a/b"]);
    // The damaged one says damage.
    let o = receiver(&[
        "restore",
        "rot",
        "--json",
        "--repo",
        r,
        "--objects-out",
        d.path().join("rot").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "damage");
    assert_eq!(v["objects"]["failed"][0]["damage"], true);
}

#[test]
fn a_closed_stderr_never_panics() {
    let (d, root) = repository();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let target = d.path().join("out");
    let o = Command::new(bin())
        .args(["restore", "good", "--repo", root.to_str().unwrap()])
        .arg("--objects-out")
        .arg(&target)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(writer)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        std::fs::read(target.join("brief.pdf")).unwrap(),
        b"liebe grete"
    );
    // And an error with a closed stderr still exits with its own code.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(bin())
        .args([
            "restore",
            "no-such",
            "--repo",
            root.to_str().unwrap(),
            "--dump-out",
            "x",
        ])
        .stderr(writer)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}
