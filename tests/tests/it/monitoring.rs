//! Monitoring end to end: the real sender and receiver binaries ping a real HTTP server in
//! the test (healthchecks.io protocol), one test per failure mode. Each asserts the exact
//! ping sequence and that no success ping was sent when the run failed.

use backup_tests::net::scrape_metrics;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backup_tests::pg::SUPERUSER;
use backup_tests::stack::{noise, SenderRun, Stack, BUCKET, DATABASE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request the ping server received.
#[derive(Debug, Clone)]
pub(crate) struct Ping {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) body: String,
}

/// A plain HTTP/1.1 server that records every request and answers 200.
pub(crate) struct PingServer {
    port: u16,
    pings: Arc<Mutex<Vec<Ping>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_request(stream: &mut TcpStream) -> Option<Ping> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut first = head.lines().next()?.split_whitespace();
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = stream.read(&mut tmp).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
    Some(Ping { method, path, body })
}

impl PingServer {
    pub(crate) async fn start() -> PingServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let pings = Arc::new(Mutex::new(Vec::new()));
        let rec = pings.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let rec = rec.clone();
                tokio::spawn(async move {
                    if let Some(p) = read_request(&mut stream).await {
                        rec.lock().unwrap().push(p);
                        let _ = stream
                            .write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nOK",
                            )
                            .await;
                    }
                });
            }
        });
        PingServer { port, pings, task }
    }

    /// The check URL for `name` (`/start`, `/fail` are appended by the pinger).
    pub(crate) fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// The pings sent to check `name`, as the suffix after its URL ("" is success).
    pub(crate) fn signals(&self, name: &str) -> Vec<String> {
        self.pings_for(name).into_iter().map(|p| p.path).collect()
    }

    pub(crate) fn pings_for(&self, name: &str) -> Vec<Ping> {
        let prefix = format!("/{name}");
        self.pings
            .lock()
            .unwrap()
            .iter()
            .filter_map(|p| {
                let rest = p.path.strip_prefix(&prefix)?;
                (rest.is_empty() || rest.starts_with('/')).then(|| Ping {
                    path: rest.to_string(),
                    ..p.clone()
                })
            })
            .collect()
    }

    /// Waits until check `name` received `n` pings.
    pub(crate) async fn wait_for(&self, name: &str, n: usize, timeout: Duration) -> Vec<String> {
        let until = Instant::now() + timeout;
        loop {
            let got = self.signals(name);
            if got.len() >= n || Instant::now() > until {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Adds a `[healthcheck]` section to sender.toml and replaces its `[run]` section.
fn configure_sender(stack: &Stack, pings: &PingServer, run: &str) {
    let hc = pings.url("sender");
    stack
        .edit_sender_config(|t| {
            t.replace("[run]\nretries = 3\n", &format!("[run]\n{run}\n"))
                + &format!("\n[healthcheck]\nurl = \"{hc}\"\ntimeout = \"2s\"\nretries = 2\n")
        })
        .unwrap();
}

fn run_sender(stack: &Stack) -> SenderRun {
    tokio::task::block_in_place(|| stack.run_sender())
}

/// The run failed with `code`, pinged exactly start then fail, and the fail ping names
/// `kind` and contains `needle`.
fn assert_failed(
    stack: &Stack,
    run: &SenderRun,
    pings: &PingServer,
    code: i32,
    kind: &str,
    needle: &str,
) {
    let stderr = run.stderr();
    assert_eq!(run.code(), Some(code), "exit code; stderr:\n{stderr}");
    assert_eq!(
        pings.signals("sender"),
        ["/start", "/fail"],
        "stderr:\n{stderr}"
    );
    let all = pings.pings_for("sender");
    assert!(all.iter().all(|p| p.method == "POST"), "{all:?}");
    let fail = &all[1].body;
    assert!(
        fail.starts_with(&format!("backup failed: {kind} (exit code {code})\n")),
        "fail body:\n{fail}"
    );
    assert!(fail.contains(needle), "fail body lacks {needle:?}:\n{fail}");
    // (With the receiver involved, the test itself checks what the receiver holds.)
    if kind != "receiver" {
        assert!(
            stack.snapshots().is_empty(),
            "no snapshot may be committed by a failed run"
        );
    }
}

async fn with_objects(stack: &Stack, n: usize, size: usize) {
    for i in 0..n {
        stack
            .s3
            .put(
                BUCKET,
                &format!("scans/{i:03}.png"),
                noise(size, 7 + i as u64),
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_run_pings_start_then_success_with_summary() {
    let stack = Stack::start().await.unwrap();
    with_objects(&stack, 3, 100_000).await;
    let pings = PingServer::start().await;
    configure_sender(&stack, &pings, "retries = 3");

    let check = tokio::task::block_in_place(|| stack.sender(&["check"]));
    let out = String::from_utf8_lossy(&check.output.stdout).into_owned();
    assert_eq!(check.code(), Some(0), "{out}\n{}", check.stderr());
    for name in ["database", "bucket", "receiver", "local dump directory"] {
        assert!(out.contains(&format!("ok   {name}: ")), "{out}");
    }
    assert!(pings.signals("sender").is_empty(), "check sends no ping");

    let summary = run_sender(&stack).summary();
    let id = summary["snapshot_id"].as_str().unwrap();
    assert_eq!(pings.signals("sender"), ["/start", ""]);
    let success = &pings.pings_for("sender")[1].body;
    assert!(
        success.contains(&format!("snapshot {id} committed")),
        "{success}"
    );
    assert!(
        success.contains("objects 3 total, 3 new, 0 changed, 0 gone"),
        "{success}"
    );
    assert!(
        success.contains(&format!("dump {} bytes", summary["dump_bytes"])),
        "{success}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_pings_fail() {
    let mut stack = Stack::start().await.unwrap();
    let pings = PingServer::start().await;
    configure_sender(&stack, &pings, "retries = 3");
    stack.pg.stop();

    let check = tokio::task::block_in_place(|| stack.sender(&["check"]));
    let out = String::from_utf8_lossy(&check.output.stdout).into_owned();
    assert_eq!(check.code(), Some(3), "{out}");
    assert!(out.contains("FAIL database: "), "{out}");
    assert!(out.contains("ok   bucket: "), "{out}");
    assert!(out.contains("ok   receiver: "), "{out}");

    let run = run_sender(&stack);
    assert_failed(
        &stack,
        &run,
        &pings,
        3,
        "source",
        "cannot connect to database",
    );
    assert!(
        pings.pings_for("sender")[1]
            .body
            .contains("--- last log lines ---"),
        "the fail ping carries the log tail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_database_password_pings_fail() {
    let stack = Stack::start_with_password_auth("", &[]).await.unwrap();
    let pings = PingServer::start().await;
    configure_sender(&stack, &pings, "retries = 3");
    let pw_file = stack.dir.path().join("db-password");
    std::fs::write(&pw_file, "not-the-password\n").unwrap();
    let good_url = stack.pg.url(DATABASE);
    let bare_url = format!(
        "postgres://{SUPERUSER}@127.0.0.1:{}/{DATABASE}",
        stack.pg.port()
    );
    stack
        .edit_sender_config(|t| {
            t.replace(
                &format!("url = \"{good_url}\"\n"),
                &format!(
                    "url = \"{bare_url}\"\npassword_file = \"{}\"\n",
                    pw_file.display()
                ),
            )
        })
        .unwrap();

    let run = run_sender(&stack);
    assert_failed(
        &stack,
        &run,
        &pings,
        3,
        "source",
        "password authentication failed",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_unreachable_pings_fail() {
    let stack = Stack::start().await.unwrap();
    let pings = PingServer::start().await;
    configure_sender(&stack, &pings, "retries = 3");
    stack
        .edit_sender_config(|t| {
            t.replace(
                &format!("bucket = \"{BUCKET}\""),
                "bucket = \"no-such-bucket\"",
            )
        })
        .unwrap();

    let run = run_sender(&stack);
    assert_failed(&stack, &run, &pings, 3, "source", "no-such-bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_pings_fail() {
    let mut stack = Stack::start().await.unwrap();
    let pings = PingServer::start().await;
    configure_sender(&stack, &pings, "retries = 2");
    stack.receiver.kill();

    let run = run_sender(&stack);
    assert_failed(&stack, &run, &pings, 4, "receiver", "cannot reach");
}

/// The branch has no receiver free-space limit yet; the refusal used here is the other
/// RESOURCE_EXHAUSTED the receiver gives, its per-day snapshot cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_refusing_the_snapshot_pings_fail() {
    let stack = Stack::start_with("[limits]\nmax_snapshots_per_day = 1\n", &[])
        .await
        .unwrap();
    let pings = PingServer::start().await;
    configure_sender(&stack, &pings, "retries = 3");
    run_sender(&stack).summary();
    assert_eq!(pings.signals("sender"), ["/start", ""]);
    pings.pings.lock().unwrap().clear();

    let run = run_sender(&stack);
    assert_failed(&stack, &run, &pings, 4, "receiver", "ResourceExhausted");
    assert_eq!(stack.snapshots().len(), 1);
}

/// The receiver commits the night but flags it suspect (most objects vanished): the
/// sender's check turns red with the receiver's: exit code 7 and a `/fail` ping with the
/// reason `suspect`, the summary still printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_the_receiver_flags_suspect_exits_7_and_pings_fail() {
    let stack = Stack::start().await.unwrap();
    with_objects(&stack, 10, 50_000).await;
    let pings = PingServer::start().await;
    configure_sender(&stack, &pings, "retries = 3");
    run_sender(&stack).summary();
    assert_eq!(pings.signals("sender"), ["/start", ""]);
    pings.pings.lock().unwrap().clear();

    for i in 0..8 {
        stack
            .s3
            .delete(BUCKET, &format!("scans/{i:03}.png"))
            .await
            .unwrap();
    }
    let run = run_sender(&stack);
    let stderr = run.stderr();
    assert_eq!(run.code(), Some(7), "stderr:\n{stderr}");
    let summary = run.summary();
    let id = summary["snapshot_id"].as_str().unwrap().to_string();
    let reason = summary["suspect"].as_str().unwrap().to_string();
    assert!(reason.contains("object"), "{reason}");
    assert_eq!(pings.signals("sender"), ["/start", "/fail"], "{stderr}");
    let fail = &pings.pings_for("sender")[1].body;
    assert!(
        fail.starts_with(&format!(
            "backup failed: suspect (exit code 7)\nsuspect: the receiver committed snapshot {id} but flagged it SUSPECT: {reason}\n"
        )),
        "fail body:\n{fail}"
    );
    assert!(
        stderr.contains("backup failed (suspect): suspect: the receiver committed snapshot"),
        "{stderr}"
    );
    let rows = stack.snapshots();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .any(|r| r["snapshot_id"] == id.as_str() && r["suspect"].is_string()),
        "{rows:#?}"
    );
}

/// Forwards loopback TCP to `target` until `limit` bytes went upstream in total, then
/// cuts every connection and refuses new ones.
async fn cutting_proxy(target: u16, limit: u64) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(AtomicU64::new(0));
    let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
    let cut_tx = Arc::new(cut_tx);
    let task = tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            if *cut_rx.borrow() {
                drop(client);
                continue;
            }
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            let (sent, cut_tx, mut cut_rx) = (sent.clone(), cut_tx.clone(), cut_rx.clone());
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > limit {
                            let _ = cut_tx.send(true);
                            return;
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = tokio::io::copy(&mut sr, &mut cw);
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                    _ = cut_rx.wait_for(|cut| *cut) => {}
                }
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_run_pings_fail() {
    let stack = Stack::start().await.unwrap();
    with_objects(&stack, 4, 2_000_000).await;
    let pings = PingServer::start().await;
    configure_sender(&stack, &pings, "retries = 1");
    let (proxy, task) = cutting_proxy(stack.receiver.port, 1_000_000).await;
    let direct = stack.receiver.url();
    stack
        .edit_sender_config(|t| t.replace(&direct, &format!("https://localhost:{proxy}")))
        .unwrap();

    let run = run_sender(&stack);
    task.abort();
    // Cut while uploading, after the pre-flight check got through.
    assert_failed(&stack, &run, &pings, 4, "receiver", "uploading chunks");
    assert!(stack.snapshots().is_empty(), "nothing committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_exceeded_pings_fail_with_timeout() {
    let mut stack = Stack::start().await.unwrap();
    let pg_dump = backup_tests::pg::tool("pg_dump").display().to_string();
    let script = format!("sleep 30; exec {pg_dump} \"$@\"");
    stack
        .write_sender_config(&["sh", "-c", &script, "x"])
        .unwrap();
    let pings = PingServer::start().await;
    configure_sender(&stack, &pings, "retries = 3\ndeadline = \"1s\"");

    let started = Instant::now();
    let run = run_sender(&stack);
    let took = started.elapsed();
    assert_failed(&stack, &run, &pings, 6, "timeout", "run.deadline (1s)");
    assert!(
        took < Duration::from_secs(20),
        "abandoned promptly, took {took:?}"
    );
    assert!(stack.snapshots().is_empty());
    let left: Vec<_> = std::fs::read_dir(&stack.local_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "no partial dump left behind: {left:?}");
}

/// A tmpfs mounted for the test, unmounted on drop.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(dir: std::path::PathBuf, size: &str) -> Option<SmallFs> {
        std::fs::create_dir_all(&dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallFs(dir))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_disk_full_pings_fail() {
    let stack = Stack::start().await.unwrap();
    let pings = PingServer::start().await;
    configure_sender(&stack, &pings, "retries = 3");
    // A real full disk: the suite runs as root (CI does), which may mount a tmpfs.
    let fs = SmallFs::mount(stack.dir.path().join("small-disk"), "1m")
        .expect("mounting a 1 MiB tmpfs (the test suite runs as root)");
    let local = stack.local_dir.display().to_string();
    stack
        .edit_sender_config(|t| t.replace(&local, &fs.0.join("dumps").display().to_string()))
        .unwrap();

    let run = run_sender(&stack);
    assert_failed(
        &stack,
        &run,
        &pings,
        5,
        "local",
        "bytes free, the dump is expected to need up to",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_healthcheck_server_neither_fails_nor_hangs_the_backup() {
    let stack = Stack::start().await.unwrap();
    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    stack
        .edit_sender_config(|t| {
            t + &format!(
                "\n[healthcheck]\nurl = \"http://127.0.0.1:{port}/check\"\ntimeout = \"1s\"\nretries = 2\n"
            )
        })
        .unwrap();
    let started = Instant::now();
    let run = run_sender(&stack);
    hold.abort();
    run.summary();
    // Two pings, each at most 2 × 1 s plus a back-off.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(
        run.stderr().contains("healthcheck ping timed out"),
        "{}",
        run.stderr()
    );
}

fn receiver_monitoring(pings: &PingServer, extra: &str) -> String {
    format!(
        "[monitoring]\nhealthcheck_url = \"{}\"\ncheck_interval = \"100ms\"\nmin_free_bytes_alert = 0\nping_timeout = \"2s\"\n{extra}",
        pings.url("receiver")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_pings_fail_when_no_snapshot_arrives_within_the_window() {
    let pings = PingServer::start().await;
    let clock_dir = tempfile::tempdir().unwrap();
    let clock = clock_dir.path().join("now");
    std::fs::write(&clock, "2026-03-01T02:00:00Z").unwrap();
    let stack = Stack::start_with(
        &receiver_monitoring(
            &pings,
            "missed_window = \"26h\"\nmetrics_listen = \"127.0.0.1:0\"\n",
        ),
        &[(
            backup_receiver::clock::FAKE_CLOCK_ENV,
            clock.to_str().unwrap(),
        )],
    )
    .await
    .unwrap();
    let id = run_sender(&stack).summary()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(id, "20260301T020000Z");
    assert_eq!(
        pings.wait_for("receiver", 1, Duration::from_secs(10)).await,
        [""]
    );
    assert!(pings.pings_for("receiver")[0].body.contains(&id));

    let metrics = stack
        .receiver
        .metrics
        .expect("metrics endpoint bound")
        .port();

    // Inside the window nothing more is sent: once a check has run at that time.
    std::fs::write(&clock, "2026-03-02T03:59:00Z").unwrap();
    wait_for_check_at(metrics, "2026-03-02T03:59:00Z").await;
    assert_eq!(pings.signals("receiver"), [""]);

    std::fs::write(&clock, "2026-03-02T04:01:00Z").unwrap();
    let got = pings.wait_for("receiver", 2, Duration::from_secs(10)).await;
    assert_eq!(got, ["", "/fail"]);
    let body = &pings.pings_for("receiver")[1].body;
    assert!(
        body.contains("no snapshot committed within monitoring.missed_window (1day 2h)"),
        "{body}"
    );
    assert!(body.contains(&id), "{body}");
    // Pings go out in order, one queue: a fail ping wrongly sent by the check at 03:59
    // would have arrived before this one, with that time in it.
    assert!(
        body.contains("receiver clock now 2026-03-02T04:01:00"),
        "{body}"
    );
    // Reported once, not on every check: later checks, still past the window, send nothing
    // (the next commit's success ping, queued after them, is the next one to arrive).
    std::fs::write(&clock, "2026-03-02T04:02:00Z").unwrap();
    wait_for_check_at(metrics, "2026-03-02T04:02:00Z").await;
    assert_eq!(pings.signals("receiver"), ["", "/fail"]);
    run_sender(&stack);
    assert_eq!(
        pings.wait_for("receiver", 3, Duration::from_secs(10)).await,
        ["", "/fail", ""]
    );
}

/// Waits until the receiver's background checks have run at receiver-clock time `rfc3339`
/// (the metric it updates on each check): proof the loop is alive before asserting that
/// it did not do something.
async fn wait_for_check_at(metrics_port: u16, rfc3339: &str) {
    let want = format!(
        "backup_receiver_last_check_timestamp_seconds {}",
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape_metrics(metrics_port).await;
        if text.lines().any(|l| l == want) {
            return;
        }
        assert!(Instant::now() < deadline, "no `{want}` in\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_reports_the_committed_snapshot() {
    let pings = PingServer::start().await;
    let stack = Stack::start_with(
        &receiver_monitoring(&pings, "metrics_listen = \"127.0.0.1:0\"\n"),
        &[],
    )
    .await
    .unwrap();
    let port = stack
        .receiver
        .metrics
        .expect("metrics endpoint bound")
        .port();
    with_objects(&stack, 2, 300_000).await;
    let summary = run_sender(&stack).summary();
    // A stranger's certificate is refused at admission and counted.
    stack
        .edit_sender_config(|t| {
            t.replace("sender.pem", "sender-stranger.pem")
                .replace("sender.key", "sender-stranger.key")
        })
        .unwrap();
    let check = tokio::task::block_in_place(|| stack.sender(&["check"]));
    assert_eq!(check.code(), Some(4));

    let snaps = stack.snapshots();
    assert_eq!(snaps.len(), 1);
    let time = chrono_free_unix(snaps[0]["time"].as_str().unwrap());
    let total = summary["dump_bytes"].as_u64().unwrap() + 600_000;
    let expected = [
        "backup_receiver_snapshots 1".to_string(),
        format!("backup_receiver_last_snapshot_timestamp_seconds {time}"),
        format!("backup_receiver_last_snapshot_bytes {total}"),
        format!("backup_receiver_logical_bytes {total}"),
        "backup_receiver_rejected_requests_total{reason=\"identity\"} 1".to_string(),
        "backup_receiver_alert{kind=\"missed_window\"} 0".to_string(),
    ];
    // The snapshot figures change on commit, the chunk figures with the monitor's periodic
    // scan of the repository: wait until both are there.
    let value = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .map(|v| v.parse().unwrap())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = scrape_metrics(port).await;
        let missing: Vec<_> = expected
            .iter()
            .filter(|line| !text.lines().any(|l| l == line.as_str()))
            .collect();
        let scanned = value(&text, "backup_receiver_chunks").is_some_and(|n| n >= 3.0)
            && value(&text, "backup_receiver_stored_bytes").is_some_and(|n| n > 600_000.0);
        if missing.is_empty() && scanned {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "missing {missing:?} (chunks scanned: {scanned}) in\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let value = |name: &str| value(&text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    assert!(value("backup_receiver_dedup_ratio") > 0.0);
    assert!(value("backup_receiver_free_bytes") > 0.0);
    assert!(text.contains("# TYPE backup_receiver_rejected_requests_total counter"));
    // The receiver's own success ping.
    assert_eq!(
        pings.wait_for("receiver", 1, Duration::from_secs(10)).await,
        [""]
    );
}

/// Seconds since the epoch of an RFC 3339 UTC time (`2026-03-01T02:00:00+00:00`).
fn chrono_free_unix(rfc3339: &str) -> i64 {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", rfc3339, "+%s"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
