//! README.md's walk-through, run as written: its commands are read out of the README's
//! "Walk-through" section (so the README cannot drift from what works) and run through
//! `sh` against a repository the real sender filled on a fake receiver clock: twelve
//! days ago, yesterday and today.

use std::collections::BTreeMap;
use std::process::Command;

use backup_tests::checks::{read_tree, FakeClock};
use backup_tests::stack::{bin, noise, Stack, BUCKET};
use chrono::{Duration, TimeZone, Utc};

/// The shell commands of the README's walk-through, continuation lines joined.
fn walkthrough() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Walk-through"))
        .expect("README.md has a Walk-through section");
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in section.lines() {
        if line.starts_with("```") {
            in_block = line == "```sh";
            continue;
        }
        if !in_block || line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => pending.push_str(part),
            None => {
                pending.push_str(line);
                commands.push(std::mem::take(&mut pending));
            }
        }
    }
    commands
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_runs_as_written() {
    let commands = walkthrough();
    assert_eq!(commands.len(), 6, "{commands:#?}");
    assert!(
        commands.iter().all(|c| c.starts_with("backup-receiver ")),
        "{commands:#?}"
    );

    let today = Utc.with_ymd_and_hms(2026, 3, 16, 1, 30, 0).unwrap();
    let clock_dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(clock_dir.path(), today - Duration::days(12));
    let stack = Stack::start_with("", &[clock.env()]).await.unwrap();

    // Enough objects that a folder of three going away is no bulk loss to the guard.
    let mut bucket: BTreeMap<String, Vec<u8>> = (0..40)
        .map(|i| (format!("akten/{i:02}.pdf"), noise(30_000, 100 + i)))
        .collect();
    let grete_then = noise(50_000, 1);
    bucket.insert("briefe/1923/grete.pdf".into(), grete_then.clone());
    let scans: BTreeMap<String, Vec<u8>> = (0..3)
        .map(|i| (format!("scans/1923/{i:03}.png"), noise(4_000, 10 + i)))
        .collect();
    bucket.extend(scans.clone());
    for (k, v) in &bucket {
        stack.s3.put(BUCKET, k, v.clone()).await.unwrap();
    }
    let night = |label: &str| {
        let run = stack.run_sender();
        assert_eq!(run.code(), Some(0), "{label}: {}", run.stderr());
        run.summary()["snapshot_id"].as_str().unwrap().to_string()
    };
    let twelve_days_ago = night("twelve days ago");

    // Yesterday: the letter was edited and the 1923 scans were deleted.
    clock.set(today - Duration::days(1));
    stack
        .s3
        .put(BUCKET, "briefe/1923/grete.pdf", noise(50_001, 2))
        .await
        .unwrap();
    for k in scans.keys() {
        stack.s3.delete(BUCKET, k).await.unwrap();
    }
    let yesterday = night("yesterday");
    // Today: one new letter.
    clock.set(today);
    stack
        .s3
        .put(BUCKET, "briefe/1926/neu.pdf", noise(7_000, 3))
        .await
        .unwrap();
    let newest = night("today");
    clock.set(today + Duration::hours(9));

    let work = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("s3-access-key", "bucket-access-key"),
        ("s3-secret-key", "bucket-secret-key"),
    ] {
        std::fs::copy(stack.dir.path().join(from), work.path().join(to)).unwrap();
    }
    let bin_dir = bin("backup-receiver").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut said = Vec::new();
    for c in &commands {
        let out = Command::new("sh")
            .arg("-c")
            .arg(c)
            .current_dir(work.path())
            .env("PATH", &path)
            .env("BACKUP_RECEIVER_CONFIG", &stack.receiver.config)
            .env("BUCKET_URL", stack.s3.endpoint())
            .env(clock.env().0, clock.env().1)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{c}\n{text}");
        said.push(text);
    }

    // What changed last night: the list shows all three; the diff today's new letter.
    for id in [&twelve_days_ago, &yesterday, &newest] {
        assert!(said[0].contains(id.as_str()), "{}", said[0]);
    }
    assert!(
        said[0].contains("+01:00"),
        "times in the retention zone: {}",
        said[0]
    );
    assert!(
        said[1].starts_with(&format!("{yesterday} → {newest}")),
        "{}",
        said[1]
    );
    assert!(
        said[1].contains("+         7000  briefe/1926/neu.pdf"),
        "{}",
        said[1]
    );
    // One file as it was ten days ago: found by its bare name, restored byte for byte.
    assert!(said[2].contains("briefe/1923/grete.pdf"), "{}", said[2]);
    assert!(said[2].contains("(as **/grete.pdf)"), "{}", said[2]);
    assert_eq!(
        read_tree(&work.path().join("restored")),
        BTreeMap::from([("briefe/1923/grete.pdf".to_string(), grete_then)])
    );
    assert!(
        said[3].contains(&format!("restoring snapshot {twelve_days_ago}")),
        "{}",
        said[3]
    );
    // The deleted folder: the diff names it removed; the restore puts it back.
    for k in scans.keys() {
        assert!(
            said[4].contains(&format!("- {:>12}  {k}", 4_000)),
            "{}",
            said[4]
        );
    }
    for (k, v) in &scans {
        assert_eq!(&stack.s3.get(BUCKET, k).await.unwrap(), v, "{k}");
    }
    assert!(
        said[5].contains("objects to S3: 3 objects, 12000 bytes verified and uploaded; 0 already identical; 0 skipped"),
        "{}",
        said[5]
    );
}
