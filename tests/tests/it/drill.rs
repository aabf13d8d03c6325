//! `backup-receiver drill`, run as the quarterly timer runs it: real snapshots from the real
//! sender, a throwaway PostgreSQL started by the drill itself, healthcheck pings received by
//! a small HTTP server in the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use backup_tests::stack::{bin, noise, row_counts, Stack, BUCKET, DATABASE};
use serde_json::Value;

/// One request the healthcheck server received: (path, body).
type Pings = Arc<Mutex<Vec<(String, String)>>>;

/// A tiny HTTP server that answers 200 to everything and records each request.
fn healthcheck_server() -> (String, Pings) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ping/drill-uuid", listener.local_addr().unwrap());
    let pings: Pings = Arc::default();
    let seen = pings.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap();
                    }
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let path = request_line.split_whitespace().nth(1).unwrap().to_string();
            seen.lock()
                .unwrap()
                .push((path, String::from_utf8(body).unwrap()));
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK");
        }
    });
    (url, pings)
}

/// Writes a receiver.toml: the stack's own plus `drill_section`.
fn config_with(stack: &Stack, name: &str, drill_section: &str) -> PathBuf {
    let base = std::fs::read_to_string(&stack.receiver.config).unwrap();
    let path = stack.dir.path().join(name);
    std::fs::write(&path, format!("{base}\n{drill_section}\n")).unwrap();
    path
}

fn drill(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(bin("backup-receiver"));
    cmd.arg("drill").args(args).env("RUST_LOG", "warn");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run backup-receiver drill")
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Table → restored row count, from a JSON report.
fn restored_counts(report: &Value) -> std::collections::BTreeMap<String, u64> {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap().to_string(),
                t["actual"].as_u64().unwrap(),
            )
        })
        .collect()
}

async fn seed_objects(stack: &Stack) -> (u64, u64) {
    let objects = [
        ("briefe/1923/grete.pdf", noise(700_000, 1)),
        ("fotos/großvater.jpg", noise(3_000_000, 3)), // several chunks
        ("metadaten/index.json", b"{\"titel\": 1}\n".repeat(3000)),
        ("leer.txt", Vec::new()),
    ];
    let bytes = objects.iter().map(|(_, d)| d.len() as u64).sum();
    for (key, data) in &objects {
        stack.s3.put(BUCKET, key, data.clone()).await.unwrap();
    }
    (objects.len() as u64, bytes)
}

fn manifest_path(stack: &Stack, id: &str) -> PathBuf {
    stack.repo().join("snapshots").join(format!("{id}.json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_snapshot_passes_and_a_tampered_row_count_fails_naming_the_table() {
    let stack = Stack::start().await.unwrap();
    let (object_count, object_bytes) = seed_objects(&stack).await;
    let source_counts = row_counts(&stack.pg, DATABASE).await.unwrap();
    let snapshot = stack.run_sender().summary()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();

    let (hc_url, pings) = healthcheck_server();
    // As deploy/ sets it up: the sandbox's OS user may pass through, not list.
    let scratch_dir = backup_tests::stack::drill_scratch_dir();
    let config = config_with(
        &stack,
        "drill.toml",
        &format!(
            r#"[drill]
healthcheck_url = "{hc_url}"
scratch_dir = "{scratch}"
sanity_queries = [
    {{ name = "documents", sql = "SELECT count(*) >= 1 FROM dokumente" }},
    {{ name = "every document has a person", sql = "SELECT bool_and(person_id IS NOT NULL) FROM dokumente" }},
]"#,
            scratch = scratch_dir.path().display()
        ),
    );
    let config = config.to_str().unwrap();

    // A healthy snapshot passes, and its report shows what was restored.
    let out = drill(&["--config", config, "--json"], &[]);
    let r = report(&out);
    assert!(out.status.success(), "{r:#}\n{}", stderr(&out));
    assert_eq!(r["passed"], true);
    assert_eq!(r["snapshot_id"], snapshot.as_str());
    assert_eq!(restored_counts(&r), source_counts);
    assert!(r["tables"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["expected"] == t["actual"] && t["ok"] == true));
    assert_eq!(r["objects"]["restored"], object_count);
    assert_eq!(r["objects"]["expected"], object_count);
    assert_eq!(r["objects"]["bytes"], object_bytes);
    assert_eq!(r["objects"]["failed"], 0);
    assert_eq!(r["sanity_queries"].as_array().unwrap().len(), 2);
    assert!(r["failures"].as_array().unwrap().is_empty());
    let steps: Vec<&str> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for step in [
        "sandbox",
        "pg_restore",
        "row_counts",
        "sanity_queries",
        "objects",
    ] {
        assert!(steps.contains(&step), "{steps:?}");
    }
    // The sandbox is gone: nothing is left in the scratch directory.
    let left: Vec<_> = std::fs::read_dir(scratch_dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    {
        let p = pings.lock().unwrap();
        let paths: Vec<&str> = p.iter().map(|(path, _)| path.as_str()).collect();
        assert_eq!(paths, ["/ping/drill-uuid/start", "/ping/drill-uuid"]);
        assert!(p[1].1.contains("PASSED"), "{}", p[1].1);
    }

    // The text report, by snapshot id.
    let out = drill(&["--repo", stack.repo().to_str().unwrap(), &snapshot], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("PASSED") && text.contains("public.dokumente"),
        "{text}"
    );

    // Someone edits the recorded count of one table: the drill fails and names it.
    let path = manifest_path(&stack, &snapshot);
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&path, perms).unwrap();
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let recorded = manifest["dump"]["row_counts"]["public.personen"]
        .as_u64()
        .unwrap();
    manifest["dump"]["row_counts"]["public.personen"] = (recorded + 1).into();
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();

    let out = drill(&["--config", config, "--json", &snapshot], &[]);
    let r = report(&out);
    assert!(!out.status.success(), "{r:#}");
    assert_eq!(r["passed"], false);
    let failures = r["failures"].to_string();
    assert!(
        failures.contains("public.personen") && failures.contains(&recorded.to_string()),
        "{failures}"
    );
    let bad: Vec<&Value> = r["tables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["ok"] == false)
        .collect();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0]["table"], "public.personen");
    assert_eq!(bad[0]["expected"], recorded + 1);
    assert_eq!(bad[0]["actual"], recorded);
    assert!(stderr(&out).contains("FAILED"), "{}", stderr(&out));
    // Objects were still checked, and all restored.
    assert_eq!(r["objects"]["restored"], object_count);
    let p = pings.lock().unwrap();
    let paths: Vec<&str> = p.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(
        paths[2..],
        ["/ping/drill-uuid/start", "/ping/drill-uuid/fail"]
    );
    assert!(p[3].1.contains("public.personen"), "{}", p[3].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantined_chunk_fails_the_drill_with_a_clear_report() {
    let stack = Stack::start().await.unwrap();
    let (object_count, _) = seed_objects(&stack).await;
    let snapshot = stack.run_sender().summary()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Verification moved one chunk of a photo aside (quarantine layout: REPO/quarantine/<hex>).
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(manifest_path(&stack, &snapshot)).unwrap()).unwrap();
    let photo = manifest["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["key"] == "fotos/großvater.jpg")
        .unwrap();
    let chunk = photo["chunks"][0]["id"].as_str().unwrap().to_string();
    let quarantine = stack.repo().join("quarantine");
    std::fs::create_dir_all(&quarantine).unwrap();
    std::fs::rename(
        stack.repo().join("chunks").join(&chunk[..2]).join(&chunk),
        quarantine.join(&chunk),
    )
    .unwrap();

    let (hc_url, pings) = healthcheck_server();
    let config = config_with(
        &stack,
        "drill.toml",
        &format!(
            "[drill]\nhealthcheck_url = \"{hc_url}\"\nsanity_queries = [\
             {{ name = \"a million letters\", sql = \"SELECT count(*) >= 1000000 FROM dokumente\" }}]\n"
        ),
    );
    let out = drill(&["--config", config.to_str().unwrap(), "--json"], &[]);
    let r = report(&out);
    assert!(!out.status.success(), "{r:#}");
    assert_eq!(r["passed"], false);
    assert_eq!(r["objects"]["failed"], 1);
    assert_eq!(r["objects"]["restored"], object_count - 1);
    let failures: Vec<&str> = r["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let about_photo = failures
        .iter()
        .find(|f| f.contains("fotos/großvater.jpg"))
        .unwrap_or_else(|| panic!("{failures:?}"));
    assert!(
        about_photo.contains(&chunk) && about_photo.contains("quarantine"),
        "{about_photo}"
    );
    // The database part of the same snapshot is unaffected and still checked.
    assert!(r["tables"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["ok"] == true));
    assert!(stderr(&out).contains("FAILED"), "{}", stderr(&out));
    let p = pings.lock().unwrap();
    assert_eq!(p.last().unwrap().0, "/ping/drill-uuid/fail");
    assert!(p.last().unwrap().1.contains(&chunk));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_than_picks_the_newest_snapshot_old_enough() {
    let clock = tempfile::NamedTempFile::new().unwrap();
    let clock_path = clock.path().to_str().unwrap().to_string();
    std::fs::write(&clock_path, "2026-01-01T03:00:00Z").unwrap();
    let stack = Stack::start_with("", &[("BACKUP_RECEIVER_FAKE_CLOCK_FILE", &clock_path)])
        .await
        .unwrap();
    seed_objects(&stack).await;
    let first = stack.run_sender().summary()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(&clock_path, "2026-01-20T03:00:00Z").unwrap();
    let second = stack.run_sender().summary()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(first, second);
    std::fs::write(&clock_path, "2026-02-15T04:00:00Z").unwrap();
    let repo = stack.repo().to_str().unwrap();
    let env = [("BACKUP_RECEIVER_FAKE_CLOCK_FILE", clock.path())];

    let out = drill(&["--repo", repo, "--older-than", "0s", "--json"], &env);
    let r = report(&out);
    assert!(out.status.success(), "{r:#}\n{}", stderr(&out));
    assert_eq!(r["snapshot_id"], second.as_str());

    // 30 days before 15 Feb is 16 Jan: the snapshot of 20 Jan is too young. This drill
    // restores into a fresh database on an existing server (here the source cluster).
    let config = config_with(
        &stack,
        "drill.toml",
        &format!(
            "[drill]\nsandbox_database_url = \"{}\"\n",
            stack.pg.url("postgres")
        ),
    );
    let out = drill(
        &[
            "--config",
            config.to_str().unwrap(),
            "--older-than",
            "30d",
            "--json",
        ],
        &env,
    );
    let r = report(&out);
    assert!(out.status.success(), "{r:#}\n{}", stderr(&out));
    assert_eq!(r["snapshot_id"], first.as_str());
    assert_eq!(r["age_seconds"], (45 * 24 + 1) * 3600);
    assert!(
        r["sandbox"].as_str().unwrap().contains("sandbox server"),
        "{r}"
    );
    // The drill's database is gone again.
    let left = stack
        .pg
        .client("postgres")
        .await
        .unwrap()
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'drill%'",
            &[],
        )
        .await
        .unwrap();
    assert!(left.is_empty());

    let out = drill(&["--repo", repo, "--older-than", "90d"], &env);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("no snapshot is at least 90d old") && err.contains(&first),
        "{err}"
    );
}

/// Children of `pid` (all its threads), from /proc.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
    {
        let path = task.unwrap().path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_drill_stops_its_postgres_and_reports_failure() {
    let stack = Stack::start().await.unwrap();
    seed_objects(&stack).await;
    stack.run_sender().summary();
    let (hc_url, pings) = healthcheck_server();
    let config = config_with(
        &stack,
        "drill.toml",
        &format!("[drill]\nhealthcheck_url = \"{hc_url}\"\n"),
    );
    let mut child = Command::new(bin("backup-receiver"))
        .args(["drill", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the drill's own PostgreSQL server is running.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let postgres = loop {
        if let Some(pid) = children(child.id())
            .into_iter()
            .find(|&p| comm(p) == "postgres")
        {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the drill started no postgres"
        );
        assert!(child.try_wait().unwrap().is_none(), "drill ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // SAFETY: kill(2) on our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    // The server is gone (not merely orphaned), and so is its directory.
    assert!(
        !Path::new(&format!("/proc/{postgres}")).exists(),
        "postgres {postgres} outlived the drill"
    );
    let p = pings.lock().unwrap();
    assert_eq!(p.last().unwrap().0, "/ping/drill-uuid/fail");
}
