//! docs/DEPLOYMENT.md §5 (rollback) and §6 (drill), run as written: the scripts in
//! `deploy/restore/` that the runbook shows, with the real `backup-receiver` against the
//! local stack (tests/src/stack.rs). Production is played by the harness's PostgreSQL and
//! S3 server. The relay's two SSH hops (workstation → NAS, workstation → production) are
//! played by a stand-in `ssh` that drops the destination and hands the command line to
//! `sh -c`, which is what sshd does with it; no sshd runs here.
//!
//! A renamed flag of `backup-receiver restore`/`drill`/`snapshots`, a changed JSON field
//! the scripts read, or a changed audit event breaks these tests, and with them the
//! runbook.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use backup_tests::checks::FakeClock;
use backup_tests::pg::tool;
use backup_tests::s3::S3Server;
use backup_tests::stack::{bin, noise, row_counts, Stack, BUCKET, DATABASE};
use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/restore");
const NAS: &str = "heim-nas";
const PROD: &str = "root@prod-vps";

/// Runs `deploy/restore/<name> args` with `envs`; the scripts' own variables are cleared
/// first, so a default never leaks in from the environment the test runs in.
fn script(name: &str, args: &[&str], envs: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(Path::new(SCRIPTS).join(name));
    cmd.args(args).env("RUST_LOG", "warn");
    for var in [
        "REPO",
        "BACKUP_RECEIVER",
        "CONFIG",
        "DRILL_REPORTS",
        "ONLY",
        "NAS",
        "PROD",
        "SSH",
        "BUNDLE_OWNER",
        "SUDO_USER",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("running deploy/restore/{name}: {e}"))
}

/// Stdout of a script that must succeed.
fn ok(name: &str, out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "deploy/restore/{name} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The stand-in for `ssh DESTINATION COMMAND...`: records the destination, then runs the
/// command line through a shell, as sshd does with it.
fn fake_ssh(dir: &Path) -> (PathBuf, PathBuf) {
    let path = dir.join("ssh");
    let log = dir.join("ssh-destinations");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$1\" >>'{}'\nshift\nexec sh -c \"$*\"\n",
            log.display()
        ),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).unwrap();
    (path, log)
}

/// Object keys an archive really has, and ones that test the URL encoding and quoting.
fn fixture_objects() -> BTreeMap<String, Vec<u8>> {
    [
        ("briefe/1923/grete.pdf", noise(700_000, 1)),
        ("fotos/großvater.jpg", noise(3_000_000, 3)), // several chunks
        ("metadaten/index.json", b"{\"titel\": 1}\n".repeat(3000)),
        (
            "scans/Brief an Tante Käthe (1951) #2.pdf",
            noise(150_000, 5),
        ),
        ("scans/a+b=c&d;e,f'g\"h 100%.txt", b"awkward\n".to_vec()),
        ("leer.txt", Vec::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// receiver.toml of the stack plus a `[drill]` section with a scratch directory that the
/// drill's sandbox user may pass through (0711 in /tmp, as deploy/ sets it up; the stack's
/// own directory is private). The directory lives as long as the returned guard.
fn drill_config(stack: &Stack) -> (PathBuf, tempfile::TempDir) {
    let base = std::fs::read_to_string(&stack.receiver.config).unwrap();
    let path = stack.dir.path().join("receiver-drill.toml");
    let scratch_dir = backup_tests::stack::drill_scratch_dir();
    let scratch = scratch_dir.path().to_path_buf();
    std::fs::write(
        &path,
        format!(
            "{base}\n[drill]\nscratch_dir = \"{}\"\nsanity_queries = [\n    {{ name = \"documents\", sql = \"SELECT count(*) >= 1 FROM dokumente\" }},\n]\n",
            scratch.display()
        ),
    )
    .unwrap();
    (path, scratch_dir)
}

fn line_after<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
        .trim()
}

async fn bucket_contents(s3: &S3Server, bucket: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for (key, _, _) in s3.list(bucket).await.unwrap() {
        let bytes = s3.get(bucket, &key).await.unwrap();
        out.insert(key, bytes);
    }
    out
}

fn snapshot_of(stack: &Stack) -> String {
    stack.run_sender().summary()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_drill_runbooks_work_as_written() {
    // ---- Three nights: good, good with one more letter, then the damage. -------------
    let clock_dir = tempfile::tempdir().unwrap();
    let day0: DateTime<Utc> = "2026-01-01T02:30:00Z".parse().unwrap();
    let clock = FakeClock::new(clock_dir.path(), day0);
    let (clock_var, clock_file) = clock.env();
    let clock_env = (clock_var, clock_file.to_string());
    let stack = Stack::start_with("", &[clock.env()]).await.unwrap();
    let repo = stack.repo().to_str().unwrap().to_string();
    let receiver = bin("backup-receiver").to_str().unwrap().to_string();

    let mut objects = fixture_objects();
    for (key, data) in &objects {
        stack.s3.put(BUCKET, key, data.clone()).await.unwrap();
    }
    let counts_first = row_counts(&stack.pg, DATABASE).await.unwrap();
    let objects_first = objects.clone();
    let first = snapshot_of(&stack);

    clock.set(day0 + Duration::days(20));
    let db = stack.pg.client(DATABASE).await.unwrap();
    db.batch_execute(
        "INSERT INTO dokumente (person_id, titel, inhalt, objekt_key) \
         VALUES (1, 'Brief 1960', 'Liebe Grete', 'briefe/1960/neu.pdf')",
    )
    .await
    .unwrap();
    objects.insert("briefe/1960/neu.pdf".into(), noise(90_000, 9));
    stack
        .s3
        .put(
            BUCKET,
            "briefe/1960/neu.pdf",
            objects["briefe/1960/neu.pdf"].clone(),
        )
        .await
        .unwrap();
    let counts_second = row_counts(&stack.pg, DATABASE).await.unwrap();
    let objects_second = objects.clone();
    let second = snapshot_of(&stack);

    // The damage (a bad deploy, or an attacker on the VPS): rows deleted, a photo
    // overwritten, a letter deleted, a ransom note added. The next night is suspect.
    let damage_time = day0 + Duration::days(35);
    clock.set(damage_time);
    db.batch_execute("DELETE FROM dokumente WHERE id > 100; UPDATE personen SET name = 'x'")
        .await
        .unwrap();
    stack
        .s3
        .put(BUCKET, "fotos/großvater.jpg", noise(3_000_000, 99))
        .await
        .unwrap();
    stack
        .s3
        .delete(BUCKET, "briefe/1923/grete.pdf")
        .await
        .unwrap();
    stack
        .s3
        .put(BUCKET, "junk/ransom.txt", b"pay up".to_vec())
        .await
        .unwrap();
    let damaged = snapshot_of(&stack);
    let rows = stack.snapshots();
    let suspect = rows
        .iter()
        .find(|r| r["snapshot_id"] == damaged.as_str())
        .unwrap();
    assert!(suspect["suspect"].is_string(), "{rows:#?}");

    // ---- §6: the quarterly drill, as the timer runs it, through drill.sh. -------------
    let (config, _scratch) = drill_config(&stack);
    let reports = stack.dir.path().join("drill-reports");
    let drill_env = vec![
        clock_env.clone(),
        ("CONFIG", config.to_str().unwrap().to_string()),
        ("BACKUP_RECEIVER", receiver.clone()),
        ("DRILL_REPORTS", reports.to_str().unwrap().to_string()),
    ];
    let out = ok(
        "drill.sh",
        script("drill.sh", &["--older-than", "30d"], &drill_env),
    );
    assert!(
        out.contains(&format!("snapshot {first} (")) && out.contains("PASSED"),
        "{out}"
    );
    for (table, rows) in &counts_first {
        assert!(
            out.contains(&format!("table {table}: {rows} rows, recorded {rows}")),
            "{table}: {out}"
        );
    }
    let kept: Vec<PathBuf> = std::fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let report: Value = serde_json::from_slice(&std::fs::read(&kept[0]).unwrap()).unwrap();
    assert_eq!(report["passed"], true);
    assert_eq!(report["snapshot_id"], first.as_str());
    assert_eq!(report["objects"]["restored"], objects_first.len() as u64);
    assert_eq!(report["objects"]["failed"], 0);
    assert!(kept[0]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .ends_with(&format!("-{first}.json")));

    // A drill that cannot run (no such snapshot) keeps no report and fails.
    let out = script("drill.sh", &["20990101-000000-nope"], &drill_env);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the drill did not run"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_dir(&reports).unwrap().count(), 1);

    // ---- §5.1: choose the snapshot. ---------------------------------------------------
    let choose_env = vec![
        ("REPO", repo.clone()),
        ("BACKUP_RECEIVER", receiver.clone()),
        ("DRILL_REPORTS", reports.to_str().unwrap().to_string()),
    ];
    let before = damage_time.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let out = ok(
        "choose-snapshot.sh",
        script("choose-snapshot.sh", &[&before], &choose_env),
    );
    // The audit log shows the suspect night and the good snapshot before it.
    let suspect_line = out
        .lines()
        .find(|l| l.contains("suspect") && l.contains(&damaged))
        .unwrap_or_else(|| panic!("no suspect line for {damaged}:\n{out}"));
    assert!(
        suspect_line.contains(&format!("previous good: {second}")),
        "{out}"
    );
    // Data damaged: the newest good one before the damage. Compromise: the newest good
    // one that passed a drill.
    assert!(
        line_after(&out, "newest good:").starts_with(&second),
        "{out}"
    );
    assert!(
        line_after(&out, "newest drilled:").starts_with(&first),
        "{out}"
    );
    assert!(!out.contains(&format!("{damaged}  ")), "{out}");
    // Before the first night there is nothing to choose.
    let out = ok(
        "choose-snapshot.sh",
        script("choose-snapshot.sh", &["2025-12-31"], &choose_env),
    );
    assert!(
        line_after(&out, "newest good:").starts_with("none"),
        "{out}"
    );
    let out = script("choose-snapshot.sh", &["last tuesday"], &choose_env);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("BEFORE must look like"),
        "{}",
        stderr(&out)
    );

    // ---- §5, production intact, data damaged: restore `second` in place. -------------
    let nas_dir = stack.dir.path().join("nas-restore");
    let prod_dir = stack.dir.path().join("prod-restore");
    let (ssh, ssh_log) = fake_ssh(stack.dir.path());
    let export_env = vec![
        ("REPO", repo.clone()),
        ("BACKUP_RECEIVER", receiver.clone()),
    ];
    let relay_env = vec![
        ("SSH", ssh.to_str().unwrap().to_string()),
        ("NAS", NAS.to_string()),
        ("PROD", PROD.to_string()),
    ];
    let keys = |s: &str| stack.dir.path().join(s).to_str().unwrap().to_string();
    let import_env = |db_url: &str, endpoint: &str| {
        vec![
            (
                "PG_RESTORE",
                tool("pg_restore").to_str().unwrap().to_string(),
            ),
            ("PG_RESTORE_TARGET", format!("-d {db_url}")),
            ("S3_ENDPOINT", endpoint.to_string()),
            ("S3_BUCKET", BUCKET.to_string()),
            ("S3_ACCESS_KEY_FILE", keys("s3-access-key")),
            ("S3_SECRET_KEY_FILE", keys("s3-secret-key")),
        ]
    };

    // `latest` is refused: the operator names the snapshot chosen above.
    let out = script(
        "export-bundle.sh",
        &["latest", nas_dir.join("x").to_str().unwrap()],
        &export_env,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("snapshots"), "{}", stderr(&out));
    assert!(!nas_dir.join("x").exists());

    let nas_bundle = nas_dir.join(&second);
    let prod_bundle = prod_dir.join(&second);
    ok(
        "export-bundle.sh",
        script(
            "export-bundle.sh",
            &[&second, nas_bundle.to_str().unwrap()],
            &export_env,
        ),
    );
    ok(
        "relay-bundle.sh",
        script(
            "relay-bundle.sh",
            &[nas_bundle.to_str().unwrap(), prod_bundle.to_str().unwrap()],
            &relay_env,
        ),
    );
    let out = ok(
        "import-bundle.sh",
        script(
            "import-bundle.sh",
            &[prod_bundle.to_str().unwrap()],
            &import_env(&stack.pg.url(DATABASE), &stack.s3.endpoint()),
        ),
    );
    assert!(
        out.contains(&format!(
            "objects restored: {} objects",
            objects_second.len()
        )),
        "{out}"
    );
    assert_eq!(
        row_counts(&stack.pg, DATABASE).await.unwrap(),
        counts_second
    );
    let names: i64 = db
        .query_one("SELECT count(*) FROM personen WHERE name = 'x'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(names, 0, "the damaged rows are back as they were");
    let bucket = bucket_contents(&stack.s3, BUCKET).await;
    for (key, bytes) in &objects_second {
        assert!(
            bucket.get(key) == Some(bytes),
            "object {key:?} not restored"
        );
    }
    // Objects created after the snapshot are left alone (§5.4 says how to remove them).
    assert_eq!(bucket["junk/ransom.txt"], b"pay up");
    assert_eq!(bucket.len(), objects_second.len() + 1);

    // A bundle altered on the way is refused before anything is changed.
    let tampered = prod_dir.join("tampered");
    ok(
        "relay-bundle.sh",
        script(
            "relay-bundle.sh",
            &[nas_bundle.to_str().unwrap(), tampered.to_str().unwrap()],
            &relay_env,
        ),
    );
    std::fs::write(tampered.join("objects/leer.txt"), b"not empty").unwrap();
    let out = script(
        "import-bundle.sh",
        &[tampered.to_str().unwrap()],
        &import_env(&stack.pg.url(DATABASE), &stack.s3.endpoint()),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("leer.txt: FAILED")
            || stderr(&out).contains("leer.txt: FAILED"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    assert_eq!(stack.s3.get(BUCKET, "leer.txt").await.unwrap(), b"");

    // ---- §5, production compromised: rebuilt, then `first` (drilled) restored. --------
    // The rebuilt VPS: an empty database and a MinIO without the bucket.
    let rebuilt_db = "archiv_rebuilt";
    stack.pg.create_db(rebuilt_db).await.unwrap();
    let rebuilt_s3 = S3Server::start().await.unwrap();
    let nas_bundle = nas_dir.join(&first);
    let prod_bundle = prod_dir.join(&first);
    let started = Instant::now();
    ok(
        "export-bundle.sh",
        script(
            "export-bundle.sh",
            &[&first, nas_bundle.to_str().unwrap()],
            &export_env,
        ),
    );
    let exported = started.elapsed();
    ok(
        "relay-bundle.sh",
        script(
            "relay-bundle.sh",
            &[nas_bundle.to_str().unwrap(), prod_bundle.to_str().unwrap()],
            &relay_env,
        ),
    );
    let relayed = started.elapsed();
    let out = ok(
        "import-bundle.sh",
        script(
            "import-bundle.sh",
            &[prod_bundle.to_str().unwrap()],
            &import_env(&stack.pg.url(rebuilt_db), &rebuilt_s3.endpoint()),
        ),
    );
    let total = started.elapsed();
    assert!(out.contains("creating bucket"), "{out}");
    assert_eq!(
        row_counts(&stack.pg, rebuilt_db).await.unwrap(),
        counts_first
    );
    assert_eq!(bucket_contents(&rebuilt_s3, BUCKET).await, objects_first);
    let dump_bytes = std::fs::metadata(prod_bundle.join("archiv.dump"))
        .unwrap()
        .len();
    let object_bytes: usize = objects_first.values().map(Vec::len).sum();
    println!(
        "restore of the fixture (snapshot {first}: dump {dump_bytes} bytes, {} objects, \
         {object_bytes} bytes): export on the NAS {:.2} s, relay {:.2} s, import into \
         production {:.2} s, total {:.2} s",
        objects_first.len(),
        exported.as_secs_f64(),
        (relayed - exported).as_secs_f64(),
        (total - relayed).as_secs_f64(),
        total.as_secs_f64()
    );

    // The relay only ever connected to the NAS and to production, both from here.
    let destinations = std::fs::read_to_string(&ssh_log).unwrap();
    assert!(
        destinations.lines().all(|d| d == NAS || d == PROD),
        "{destinations}"
    );
    assert!(destinations.lines().any(|d| d == NAS));
    assert!(destinations.lines().any(|d| d == PROD));
}

/// §5 and §6 of docs/DEPLOYMENT.md as commands: every `backup-receiver SUBCOMMAND --flag`
/// they show is a flag of that subcommand today, every script they name is in
/// `deploy/restore/` and executable, and the drill they say the timer runs is the one the
/// unit runs.
#[test]
fn deployment_md_runbook_commands_match_the_cli_and_the_scripts() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/DEPLOYMENT.md"
    ))
    .unwrap();
    let start = doc
        .find("## 5. Rollback")
        .expect("DEPLOYMENT.md has no §5 Rollback");
    let runbook = &doc[start..];

    // Commands: the lines of fenced blocks (continuations joined) and inline code spans.
    let mut commands: Vec<String> = Vec::new();
    for (i, part) in runbook.split("```").enumerate() {
        if i % 2 == 1 {
            let joined = part.replace("\\\n", " ");
            commands.extend(joined.lines().skip(1).map(|l| {
                let l = l.split(" # ").next().unwrap();
                l.to_string()
            }));
        } else {
            commands.extend(
                part.split('`')
                    .skip(1)
                    .step_by(2)
                    .map(|c| c.replace('\n', " ")),
            );
        }
    }

    let subcommands = [
        "restore",
        "drill",
        "snapshots",
        "ack",
        "verify",
        "ls",
        "find",
        "diff",
        "dump",
    ];
    let mut help: BTreeMap<&str, String> = BTreeMap::new();
    let mut checked = 0;
    for command in &commands {
        let words: Vec<&str> = command.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            if !w.ends_with("backup-receiver") {
                continue;
            }
            let Some(sub) = words
                .get(i + 1)
                .and_then(|s| subcommands.iter().find(|x| *x == s))
            else {
                continue;
            };
            let text = help.entry(sub).or_insert_with(|| {
                let out = Command::new(bin("backup-receiver"))
                    .args([sub, "--help"])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "backup-receiver {sub} --help");
                String::from_utf8(out.stdout).unwrap()
            });
            for flag in words[i + 2..]
                .iter()
                .take_while(|w| !matches!(**w, "|" | "&&" | ";"))
                .filter(|w| w.starts_with("--"))
            {
                let flag = flag.split('=').next().unwrap();
                let known = text.match_indices(flag).any(|(at, _)| {
                    !text[at + flag.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '-')
                });
                assert!(
                    known,
                    "DEPLOYMENT.md: `{command}`: backup-receiver {sub} has no {flag}:\n{text}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "only {checked} flags found in §5/§6");

    // The scripts it names.
    let mut named = std::collections::BTreeSet::new();
    for command in &commands {
        for w in command.split_whitespace() {
            if let Some(name) = w
                .strip_prefix("/usr/local/lib/familienarchiv-backup/")
                .or_else(|| w.strip_prefix("deploy/restore/"))
            {
                if name.ends_with(".sh") && !name.contains('*') {
                    named.insert(name.to_string());
                }
            }
        }
    }
    for name in [
        "choose-snapshot.sh",
        "export-bundle.sh",
        "relay-bundle.sh",
        "import-bundle.sh",
        "drill.sh",
    ] {
        assert!(named.contains(name), "§5/§6 never run {name}: {named:?}");
    }
    for name in &named {
        let path = Path::new(SCRIPTS).join(name);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("DEPLOYMENT.md runs {name}: {}: {e}", path.display()))
            .permissions();
        assert!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o111 != 0,
            "{} is not executable",
            path.display()
        );
    }

    // The timer's drill, as §6 shows it, is what the unit runs.
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/backup-drill.service"
    ))
    .unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("backup-drill.service has no ExecStart");
    let shown =
        "backup-receiver drill --config /etc/familienarchiv-backup/receiver.toml --older-than 30d";
    assert!(runbook.contains(shown), "§6 no longer shows `{shown}`");
    assert!(
        exec.ends_with(shown),
        "backup-drill.service runs `{exec}`, §6 says `{shown}`"
    );
}
