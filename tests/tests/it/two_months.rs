//! Two simulated months: 60 nightly runs on 60 days of a fake receiver clock, with daily
//! changes to the bucket and the database, pruning as it goes (the `prune` command after
//! each night, and `serve`'s own schedule every second). Afterwards exactly the snapshots
//! the calendar keeps remain, the one closest to 30 days old restores byte for byte, and
//! once the grace periods have passed no chunk is left that no snapshot references.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use backup_tests::checks::{
    assert_verified, chunk_files, receiver_cmd, referenced_chunks, restore, snapshot_ids,
    trash_ids, wait_until, FakeClock,
};
use backup_tests::stack::{noise, Stack, BUCKET, DATABASE};
use chrono::{DateTime, Datelike, TimeZone, Utc};

const NIGHTS: i64 = 60;

struct Night {
    id: String,
    time: DateTime<Utc>,
    dump: Vec<u8>,
    objects: BTreeMap<String, Vec<u8>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_nights_keep_the_calendar_and_leave_no_garbage() {
    let started = Instant::now();
    let clock_dir = tempfile::tempdir().unwrap();
    // Monday 5 January 2026, 02:30 in Berlin (CET, before the change to summer time).
    let first = Utc.with_ymd_and_hms(2026, 1, 5, 1, 30, 0).unwrap();
    let clock = FakeClock::new(clock_dir.path(), first);
    let stack = Stack::start_with(
        "[limits]\nmax_snapshots_per_day = 1\n[retention]\ninterval = \"1s\"\ntime_zone = \"Europe/Berlin\"\n",
        &[clock.env()],
    )
    .await
    .unwrap();
    let repo = stack.repo().to_path_buf();
    let config = stack.receiver.config.to_str().unwrap().to_string();
    let db = stack.pg.client(DATABASE).await.unwrap();

    let mut objects: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..8u64 {
        let key = format!("scans/{i:02}.png");
        let data = noise(30_000 + i as usize * 1000, i);
        stack.s3.put(BUCKET, &key, data.clone()).await.unwrap();
        objects.insert(key, data);
    }
    let mut nights: Vec<Night> = Vec::new();
    for d in 0..NIGHTS {
        // The day's changes: a new letter, the index rewritten, now and then one deleted,
        // and a few rows.
        let key = format!("neu/{d:02}.pdf");
        let data = noise(20_000 + d as usize * 100, 1000 + d as u64);
        stack.s3.put(BUCKET, &key, data.clone()).await.unwrap();
        objects.insert(key, data);
        let index = format!("{{\"tag\": {d}}}\n").repeat(200).into_bytes();
        stack
            .s3
            .put(BUCKET, "index.json", index.clone())
            .await
            .unwrap();
        objects.insert("index.json".into(), index);
        if d % 3 == 2 {
            let gone = objects
                .keys()
                .find(|k| k.starts_with("neu/"))
                .cloned()
                .unwrap();
            stack.s3.delete(BUCKET, &gone).await.unwrap();
            objects.remove(&gone);
        }
        db.batch_execute(&format!(
            "INSERT INTO personen (name) VALUES ('Tag {d}a'), ('Tag {d}b');
             UPDATE dokumente SET titel = titel || ' *' WHERE id = {};",
            d + 1
        ))
        .await
        .unwrap();

        let time = first + chrono::Duration::days(d);
        clock.set(time);
        let run = stack.run_sender();
        if run.code() != Some(0) {
            eprintln!("{}", stack.receiver.log_text());
        }
        let s = run.summary();
        nights.push(Night {
            id: s["snapshot_id"].as_str().unwrap().to_string(),
            time,
            dump: std::fs::read(s["dump_file"].as_str().unwrap()).unwrap(),
            objects: objects.clone(),
        });
        let out = receiver_cmd(&["prune", "--config", &config], &[clock.env()]);
        assert!(
            out.status.success(),
            "prune night {d}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            snapshot_ids(&repo).len() <= 14 + 8 + 6 + 1,
            "night {d}: pruning keeps up"
        );
    }
    eprintln!("60 nights in {:?}", started.elapsed());

    // The expectation, from the dates alone: every snapshot of the last 14 days, and the
    // newest of each of the last 8 ISO weeks (Berlin time; all nights are at 02:30 CET).
    let berlin = |t: DateTime<Utc>| t.with_timezone(&chrono_tz::Europe::Berlin).date_naive();
    let last_day = berlin(nights.last().unwrap().time);
    let mut expected: BTreeSet<String> = nights
        .iter()
        .filter(|n| (last_day - berlin(n.time)).num_days() < 14)
        .map(|n| n.id.clone())
        .collect();
    let mut newest_of_week: BTreeMap<(i32, u32), &Night> = BTreeMap::new();
    for n in &nights {
        let w = berlin(n.time).iso_week();
        newest_of_week.insert((w.year(), w.week()), n); // later nights overwrite
    }
    expected.extend(newest_of_week.values().rev().take(8).map(|n| n.id.clone()));
    // And the newest of each of the last 6 months (keep_monthly's default).
    let mut newest_of_month: BTreeMap<(i32, u32), &Night> = BTreeMap::new();
    for n in &nights {
        let d = berlin(n.time);
        newest_of_month.insert((d.year(), d.month()), n);
    }
    expected.extend(newest_of_month.values().rev().take(6).map(|n| n.id.clone()));
    // 14 daily, plus 5 Sundays further back (the other weekly picks are daily already),
    // plus 31 January (February's and March's newest are daily already).
    assert_eq!(expected.len(), 20);
    let remaining: BTreeSet<String> = snapshot_ids(&repo).into_iter().collect();
    assert_eq!(remaining, expected);

    // The operator's view names the reasons.
    let out = receiver_cmd(&["prune", "--dry-run", "--config", &config], &[clock.env()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert_eq!(
        text.lines().filter(|l| l.contains("keep:")).count(),
        20,
        "{text}"
    );
    for reason in ["newest", "daily", "weekly", "monthly"] {
        assert!(text.contains(reason), "{text}");
    }
    assert!(!text.contains("would prune"), "{text}");

    // The snapshot closest to 30 days before the last night restores exactly.
    let now = nights.last().unwrap().time;
    let target = nights
        .iter()
        .filter(|n| expected.contains(&n.id))
        .min_by_key(|n| ((now - n.time).num_hours() - 30 * 24).abs())
        .unwrap();
    assert_eq!(berlin(target.time).to_string(), "2026-02-01");
    let restored = restore(&repo, &target.id, stack.dir.path());
    assert_eq!(restored.dump, target.dump, "dump of {}", target.id);
    assert_eq!(restored.objects, target.objects, "objects of {}", target.id);

    // Pruned manifests are in the trash, their chunks still protected.
    assert!(!trash_ids(&repo).is_empty());
    assert!(chunk_files(&repo).is_superset(&referenced_chunks(&repo, true)));

    // Past the trash and GC grace periods, serve's schedule empties the trash and sweeps.
    clock.set(now + chrono::Duration::days(7) + chrono::Duration::hours(49));
    wait_until(
        "trash purge and garbage collection",
        Duration::from_secs(60),
        || trash_ids(&repo).is_empty() && chunk_files(&repo) == referenced_chunks(&repo, false),
    )
    .await;
    let remaining: BTreeSet<String> = snapshot_ids(&repo).into_iter().collect();
    assert_eq!(
        remaining, expected,
        "time passing alone prunes nothing more"
    );
    assert_verified(&repo);
    assert!(
        stack.receiver.log_text().contains("maintenance done"),
        "serve ran its schedule"
    );
    eprintln!("done in {:?}", started.elapsed());
}
