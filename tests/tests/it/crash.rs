//! Crash safety, proven with SIGKILL: the receiver killed during a chunk upload, during a
//! commit, during prune and during garbage collection; and a network cut in the middle of
//! a run. After each: the receiver restarts, `verify --read-data` passes, every snapshot
//! committed before the kill restores byte for byte, and the next nightly run completes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use backup_tests::checks::{
    assert_verified, chunk_files, receiver_cmd, receiver_spawn, referenced_chunks, restore,
    sender_spawn, snapshot_ids, trash_ids, wait_until, FakeClock,
};
use backup_tests::proxy::{Proxy, ProxyOptions};
use backup_tests::stack::{noise, Stack, BUCKET};
use chrono::{TimeZone, Utc};

const PAUSE_ENV: &str = "BACKUP_RECEIVER_TEST_PAUSE";
const MIB: usize = 1024 * 1024;

/// What a committed snapshot must restore to.
struct Saved {
    id: String,
    dump: Vec<u8>,
    objects: BTreeMap<String, Vec<u8>>,
}

/// Puts `new` objects into the bucket (and the model of it).
async fn put(stack: &Stack, model: &mut BTreeMap<String, Vec<u8>>, new: Vec<(String, Vec<u8>)>) {
    for (key, data) in new {
        stack.s3.put(BUCKET, &key, data.clone()).await.unwrap();
        model.insert(key, data);
    }
}

/// One nightly run that must succeed; returns what its snapshot holds.
fn night(stack: &Stack, model: &BTreeMap<String, Vec<u8>>) -> Saved {
    let run = stack.run_sender();
    if run.code() != Some(0) {
        eprintln!("{}", stack.receiver.log_text());
    }
    let s = run.summary();
    Saved {
        id: s["snapshot_id"].as_str().unwrap().to_string(),
        dump: std::fs::read(s["dump_file"].as_str().unwrap()).unwrap(),
        objects: model.clone(),
    }
}

/// Every saved snapshot still in the repository restores exactly; returns how many.
fn assert_restores(stack: &Stack, saved: &[Saved]) -> usize {
    let ids = snapshot_ids(stack.repo());
    let mut n = 0;
    for s in saved.iter().filter(|s| ids.contains(&s.id)) {
        let r = restore(stack.repo(), &s.id, stack.dir.path());
        assert_eq!(r.dump, s.dump, "dump of {}", s.id);
        assert_eq!(r.objects, s.objects, "objects of {}", s.id);
        n += 1;
    }
    n
}

/// Points the sender at `port` (a proxy) with `retries` attempts per step.
fn route_sender(stack: &Stack, port: u16, retries: u32) {
    let text = std::fs::read_to_string(&stack.sender_config).unwrap();
    let text = text
        .replace(
            &format!("localhost:{}", stack.receiver.port),
            &format!("localhost:{port}"),
        )
        .replace("retries = 3", &format!("retries = {retries}"));
    std::fs::write(&stack.sender_config, text).unwrap();
}

fn arm(file: &Path) {
    std::fs::write(file, b"armed").unwrap();
}

fn paused(file: &Path) -> std::path::PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".paused");
    p.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_chunk_upload_the_run_resumes_in_a_new_session() {
    let mut stack = Stack::start().await.unwrap();
    let mut model = BTreeMap::new();
    put(
        &stack,
        &mut model,
        vec![("a.pdf".into(), noise(300_000, 1))],
    )
    .await;
    let saved = vec![night(&stack, &model)];

    // A slow line, so the kill lands while chunks are arriving.
    let proxy = Proxy::start(
        stack.receiver.port,
        ProxyOptions {
            throttle: Some(Duration::from_millis(2)),
            ..ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    route_sender(&stack, proxy.port, 8);
    let big: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("fotos/{i}.jpg"), noise(4 * MIB, 10 + i)))
        .collect();
    put(&stack, &mut model, big).await;
    let before = chunk_files(stack.repo()).len();
    let sender = sender_spawn(&stack);
    let repo = stack.repo().to_path_buf();
    wait_until("chunks arriving", Duration::from_secs(60), || {
        chunk_files(&repo).len() > before
    })
    .await;
    stack.receiver.kill();
    let landed = chunk_files(&repo).len() - before;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.receiver.restart().await.unwrap();

    // The same run goes on: retries over the outage, then a new session.
    let out = tokio::task::spawn_blocking(move || sender.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sender: {stderr}");
    assert!(stderr.contains("lost the session"), "{stderr}");
    assert!(
        landed < 12,
        "the kill came mid-upload ({landed} chunks had landed)"
    );
    assert_eq!(snapshot_ids(stack.repo()).len(), 2);

    assert_verified(stack.repo());
    assert_eq!(assert_restores(&stack, &saved), 1);
    let latest = restore(stack.repo(), "latest", stack.dir.path());
    assert_eq!(latest.objects, model);
    // And the next night runs as usual.
    let next = night(&stack, &model);
    assert_eq!(assert_restores(&stack, &[next]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_commit_nothing_is_half_committed() {
    let pause_dir = tempfile::tempdir().unwrap();
    let trigger = pause_dir.path().join("commit");
    let spec = format!("commit-before-publish={}", trigger.display());
    let mut stack = Stack::start_with("", &[(PAUSE_ENV, &spec)]).await.unwrap();
    let mut model = BTreeMap::new();
    put(
        &stack,
        &mut model,
        vec![("a.pdf".into(), noise(500_000, 1))],
    )
    .await;
    let mut saved = vec![night(&stack, &model)];

    put(
        &stack,
        &mut model,
        vec![("b.pdf".into(), noise(700_000, 2))],
    )
    .await;
    arm(&trigger);
    let sender = sender_spawn(&stack);
    wait_until("the commit to pause", Duration::from_secs(60), || {
        paused(&trigger).exists()
    })
    .await;
    stack.receiver.kill();
    let out = tokio::task::spawn_blocking(move || sender.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(!out.status.success(), "the receiver died under the commit");
    stack.receiver.restart().await.unwrap();

    assert_eq!(snapshot_ids(stack.repo()), vec![saved[0].id.clone()]);
    assert_verified(stack.repo());
    assert_eq!(assert_restores(&stack, &saved), 1);
    saved.push(night(&stack, &model));
    assert_eq!(assert_restores(&stack, &saved), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_prune_and_during_gc() {
    let clock_dir = tempfile::tempdir().unwrap();
    let day0 = Utc.with_ymd_and_hms(2026, 2, 2, 1, 30, 0).unwrap();
    let clock = FakeClock::new(clock_dir.path(), day0);
    let mut stack = Stack::start_with(
        "[retention]\nkeep_daily = 2\nkeep_weekly = 0\ninterval = \"0s\"\ntrash_grace = \"1d\"\ngc_grace = \"1h\"\n",
        &[clock.env()],
    )
    .await
    .unwrap();
    let config = stack.receiver.config.to_str().unwrap().to_string();
    let mut model = BTreeMap::new();
    let mut saved = Vec::new();
    for d in 0..4i64 {
        clock.set(day0 + chrono::Duration::days(d));
        // Each night adds an object and rewrites one, so old snapshots own chunks.
        put(
            &stack,
            &mut model,
            vec![
                (format!("neu/{d}.pdf"), noise(200_000, 100 + d as u64)),
                ("index.bin".into(), noise(150_000, 200 + d as u64)),
            ],
        )
        .await;
        saved.push(night(&stack, &model));
    }
    let trigger = clock_dir.path().join("pause");
    let repo = stack.repo().to_path_buf();

    // Prune, killed after the first manifest moved to the trash.
    let spec = format!("prune-after-first-move={}", trigger.display());
    arm(&trigger);
    let mut child = receiver_spawn(
        &["prune", "--config", &config],
        &[clock.env(), (PAUSE_ENV, &spec)],
    );
    wait_until("prune to pause", Duration::from_secs(30), || {
        paused(&trigger).exists()
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(trash_ids(&repo).len(), 1);
    assert_eq!(snapshot_ids(&repo).len(), 3);
    stack.receiver.restart().await.unwrap();
    assert_verified(&repo);
    assert_eq!(assert_restores(&stack, &saved), 3);
    let out = receiver_cmd(&["prune", "--config", &config], &[clock.env()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        snapshot_ids(&repo),
        vec![saved[2].id.clone(), saved[3].id.clone()]
    );

    // Past the trash's grace period: the trash empties, and GC is killed mid-sweep.
    clock.set(day0 + chrono::Duration::days(5));
    let out = receiver_cmd(&["prune", "--config", &config], &[clock.env()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(trash_ids(&repo).is_empty());
    let garbage = chunk_files(&repo).len() - referenced_chunks(&repo, false).len();
    assert!(garbage >= 2, "pruned snapshots left {garbage} chunks");
    let spec = format!("gc-after-first-remove={}", trigger.display());
    let _ = std::fs::remove_file(paused(&trigger));
    arm(&trigger);
    let mut child = receiver_spawn(
        &["gc", "--config", &config],
        &[clock.env(), (PAUSE_ENV, &spec)],
    );
    wait_until("gc to pause", Duration::from_secs(30), || {
        paused(&trigger).exists()
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        chunk_files(&repo).len() - referenced_chunks(&repo, false).len(),
        garbage - 1,
        "killed after exactly one removal"
    );
    stack.receiver.restart().await.unwrap();
    assert_verified(&repo);
    assert_eq!(assert_restores(&stack, &saved), 2);
    saved.push(night(&stack, &model));
    assert_eq!(assert_restores(&stack, &saved), 3);
    let out = receiver_cmd(&["gc", "--config", &config], &[clock.env()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(chunk_files(&repo), referenced_chunks(&repo, false));
    assert_verified(&repo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_cut_mid_run_is_retried_and_only_the_rest_is_resent() {
    let stack = Stack::start().await.unwrap();
    let mut model = BTreeMap::new();
    let objects: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("scans/{i}.tif"), noise(4 * MIB, 50 + i)))
        .collect();
    put(&stack, &mut model, objects).await;
    let cut_at = 12 * MIB as u64;
    let proxy = Proxy::start(
        stack.receiver.port,
        ProxyOptions {
            cut_after: Some(cut_at),
            ..ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    route_sender(&stack, proxy.port, 3);
    let run = stack.run_sender();
    let stderr = run.stderr();
    let s = run.summary();
    assert!(proxy.has_cut(), "the line was cut once");
    assert!(stderr.contains("retrying"), "{stderr}");
    // Everything went up once, plus at most what was in flight at the cut (one partial
    // chunk per concurrent batch); sending whole batches again would add ~12 MiB.
    let payload = (24 * MIB) as u64 + s["dump_bytes"].as_u64().unwrap();
    let up = proxy.upstream_bytes();
    assert!(up > payload, "{up}");
    assert!(
        up < payload + 6 * MIB as u64,
        "sent {up} bytes for {payload}"
    );
    assert_eq!(snapshot_ids(stack.repo()).len(), 1);
    assert_verified(stack.repo());
    let saved = Saved {
        id: s["snapshot_id"].as_str().unwrap().to_string(),
        dump: std::fs::read(s["dump_file"].as_str().unwrap()).unwrap(),
        objects: model.clone(),
    };
    assert_eq!(assert_restores(&stack, &[saved]), 1);
}
