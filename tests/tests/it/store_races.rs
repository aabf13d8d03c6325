//! The two races the store interface closes (docs/adr/0006): an `undelete` while garbage
//! collection marks (the mark lock), and a `gc` from the CLI while `serve` has an upload
//! session open (session leases). Real receiver processes, the real CLI, the raw client.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use backup_tests::checks::{
    assert_verified, read_dir_names, receiver_cmd, receiver_spawn, restore, snapshot_ids,
    trash_ids, wait_until, FakeClock,
};
use backup_tests::hostile::{
    begin, commit, dump, fake_dump, header, object, put_data, sender_client,
};
use backup_tests::stack::{bin, noise, Stack, BUCKET};
use chrono::{TimeZone, Utc};

const PAUSE_ENV: &str = "BACKUP_RECEIVER_TEST_PAUSE";

fn paused(file: &Path) -> std::path::PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".paused");
    p.into()
}

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelete_waits_for_the_gc_mark_and_the_snapshot_keeps_its_chunks() {
    let clock_dir = tempfile::tempdir().unwrap();
    let day0 = Utc.with_ymd_and_hms(2026, 2, 2, 1, 30, 0).unwrap();
    let clock = FakeClock::new(clock_dir.path(), day0);
    let stack = Stack::start_with(
        "[retention]\nkeep_daily = 1\nkeep_weekly = 0\ninterval = \"0s\"\ntrash_grace = \"7d\"\ngc_grace = \"1h\"\n",
        &[clock.env()],
    )
    .await
    .unwrap();
    let config = stack.receiver.config.to_str().unwrap().to_string();
    let repo = stack.repo().to_path_buf();

    // Night 1 holds an object of its own; night 2 replaces it, so prune trashes night 1
    // and its chunks are referenced by nothing but the trash.
    let mut saved = Vec::new();
    for (d, seed) in [(0i64, 1u64), (1, 2)] {
        clock.set(day0 + chrono::Duration::days(d));
        let data = noise(400_000, seed);
        stack
            .s3
            .put(BUCKET, "brief.pdf", data.clone())
            .await
            .unwrap();
        let s = stack.run_sender().summary();
        let id = s["snapshot_id"].as_str().unwrap().to_string();
        let dump = std::fs::read(s["dump_file"].as_str().unwrap()).unwrap();
        saved.push((id, dump, BTreeMap::from([("brief.pdf".to_string(), data)])));
    }
    let first = saved[0].0.clone();
    clock.set(day0 + chrono::Duration::days(1) + chrono::Duration::hours(2));
    ok(&receiver_cmd(
        &["prune", "--config", &config],
        &[clock.env()],
    ));
    assert_eq!(trash_ids(&repo).len(), 1);
    assert!(!snapshot_ids(&repo).contains(&first));

    // GC stops in its mark, holding the mark lock: every manifest is read.
    let trigger = clock_dir.path().join("pause");
    std::fs::write(&trigger, b"armed").unwrap();
    let spec = format!("gc-mark-done={}", trigger.display());
    let mut gc = receiver_spawn(
        &["gc", "--config", &config],
        &[clock.env(), (PAUSE_ENV, &spec)],
    );
    wait_until("gc to pause in its mark", Duration::from_secs(30), || {
        paused(&trigger).exists()
    })
    .await;

    // An undelete now would leave the manifest in neither listing: it waits instead.
    let undelete_err = clock_dir.path().join("undelete.err");
    let mut undelete = Command::new(bin("backup-receiver"))
        .args(["undelete", &first, "--repo", repo.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&undelete_err).unwrap())
        .spawn()
        .unwrap();
    wait_until(
        "undelete to wait for the mark",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&undelete_err)
                .is_ok_and(|t| t.contains("garbage collection is marking; waiting"))
        },
    )
    .await;
    assert_eq!(trash_ids(&repo).len(), 1);
    assert!(!snapshot_ids(&repo).contains(&first));

    // The mark ends (here: the process dies, which releases the lock as well).
    gc.kill().unwrap();
    gc.wait().unwrap();
    let status = tokio::task::spawn_blocking(move || undelete.wait().unwrap())
        .await
        .unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&undelete_err).unwrap()
    );
    assert!(snapshot_ids(&repo).contains(&first));
    assert!(trash_ids(&repo).is_empty());

    // A full collection past the grace period keeps every chunk of the undeleted snapshot.
    ok(&receiver_cmd(&["gc", "--config", &config], &[clock.env()]));
    assert_verified(&repo);
    for (id, dump, objects) in &saved {
        let r = restore(&repo, id, stack.dir.path());
        assert_eq!(&r.dump, dump, "dump of {id}");
        assert_eq!(&r.objects, objects, "objects of {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_gc_keeps_the_chunks_of_a_session_serve_has_open() {
    let clock_dir = tempfile::tempdir().unwrap();
    let t0 = Utc.with_ymd_and_hms(2026, 2, 2, 1, 30, 0).unwrap();
    let clock = FakeClock::new(clock_dir.path(), t0);
    let stack = Stack::start_with(
        "[retention]\ninterval = \"0s\"\ngc_grace = \"1h\"\n",
        &[clock.env()],
    )
    .await
    .unwrap();
    let config = stack.receiver.config.to_str().unwrap().to_string();
    let repo = stack.repo().to_path_buf();

    // A session uploads a dump and an object, and has not committed yet.
    let mut c = sender_client(&stack).await;
    let session = begin(&mut c).await.unwrap();
    let dump_data = fake_dump(4_000, 7);
    let data = noise(300_000, 8);
    let dump_ref = put_data(&mut c, &session, &dump_data).await.unwrap();
    let object_ref = put_data(&mut c, &session, &data).await.unwrap();

    // The operator's gc, run while the session is open, with the clock past gc_grace: the
    // chunks are unreferenced and older than the grace period, but the session's lease
    // holds the cut-off back.
    clock.set(t0 + chrono::Duration::hours(3));
    let out = receiver_cmd(&["gc", "--config", &config], &[clock.env()]);
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("freed 0 chunks"), "{text}");

    // The commit finds its chunks, and the snapshot restores byte for byte.
    let reply = commit(
        &mut c,
        header(&session, Some(dump(&dump_data, vec![dump_ref], &[])), 1),
        vec![vec![object("brief.pdf", &data, vec![object_ref])]],
    )
    .await
    .unwrap();
    assert_eq!(snapshot_ids(&repo), vec![reply.snapshot_id.clone()]);
    let r = restore(&repo, &reply.snapshot_id, stack.dir.path());
    assert_eq!(r.dump, dump_data);
    assert_eq!(
        r.objects,
        BTreeMap::from([("brief.pdf".to_string(), data.clone())])
    );

    // Committed, the session's lease no longer holds anything back; a later gc clears it.
    ok(&receiver_cmd(&["gc", "--config", &config], &[clock.env()]));
    assert!(read_dir_names(&repo.join("leases")).is_empty());
    assert_verified(&repo);
}
