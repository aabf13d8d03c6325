//! `serve`'s own verification schedule end to end, on the fake receiver clock: a pass finds
//! rotten chunks by itself, quarantines them and pings `/fail` once; the next night heals
//! what a source still has (confirmed by reading it back) and the rest is reported as
//! permanent loss; the verify state survives a restart, so the cycle goes on where it was.

use backup_tests::net::scrape_metrics;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backup_tests::checks::{receiver_cmd, wait_until, FakeClock};
use backup_tests::net::free_port;
use backup_tests::stack::{noise, Stack, BUCKET};
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::monitoring::PingServer;

const WAIT: Duration = Duration::from_secs(60);

fn state(repo: &Path) -> Option<Value> {
    // The newest numbered state object in the store's verify-state space.
    let mut names: Vec<_> = std::fs::read_dir(repo.join("verify-state"))
        .ok()?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    let bytes = std::fs::read(repo.join("verify-state").join(names.pop()?)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Waits until the schedule's pass number `n` ran, and returns the state it left.
async fn pass(repo: &Path, n: u64) -> Value {
    wait_until(&format!("verify pass {n}"), WAIT, || {
        state(repo).is_some_and(|s| s["passes"] == n)
    })
    .await;
    state(repo).unwrap()
}

/// The value of a gauge without labels.
fn gauge(metrics: &str, name: &str) -> Option<String> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(str::to_string)
}

fn manifest(repo: &Path, id: &str) -> Value {
    serde_json::from_slice(
        &std::fs::read(repo.join("snapshots").join(format!("{id}.json"))).unwrap(),
    )
    .unwrap()
}

/// Flips a byte in the middle of the first chunk of `key` in snapshot `id`; its hex name.
fn rot(repo: &Path, id: &str, key: &str) -> (String, PathBuf) {
    let m = manifest(repo, id);
    let o = m["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["key"] == key)
        .unwrap();
    let hex = o["chunks"][0]["id"].as_str().unwrap().to_string();
    let path = repo.join("chunks").join(&hex[..2]).join(&hex);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    (hex, path)
}

fn audit_events(repo: &Path, event: &str) -> Vec<Value> {
    backup_tests::hostile::audit(repo)
        .into_iter()
        .filter(|r| r["event"] == event)
        .collect()
}

fn snapshot_id(stack: &Stack) -> String {
    let run = tokio::task::block_in_place(|| stack.run_sender());
    run.summary()["snapshot_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_pass_finds_rot_by_itself_pings_once_and_the_next_night_heals_or_reports_loss()
{
    let day0: DateTime<Utc> = "2026-03-02T02:30:00Z".parse().unwrap();
    let hour = |n: i64| day0 + chrono::Duration::hours(n);
    let clock_dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(clock_dir.path(), day0);
    let pings = PingServer::start().await;
    let port = free_port();
    let extra = format!(
        "[monitoring]\nhealthcheck_url = \"{}\"\nmin_free_bytes_alert = 0\nping_timeout = \"2s\"\n\
         metrics_listen = \"127.0.0.1:{port}\"\n\
         [verify]\ninterval = \"1h\"\nread_new = true\ncycle = \"1h\"\n",
        pings.url("receiver")
    );
    let stack = Stack::start_with(&extra, &[clock.env()]).await.unwrap();
    let repo = stack.repo().to_path_buf();
    for (key, data) in [
        ("briefe/oma.pdf", noise(100_000, 1)),
        ("fotos/haus.jpg", noise(900_000, 2)),
    ] {
        stack.s3.put(BUCKET, key, data).await.unwrap();
    }
    // Enough beside them that losing the letter at the source is not a suspect night.
    for i in 0..20 {
        let key = format!("akten/{i:02}.pdf");
        stack
            .s3
            .put(BUCKET, &key, noise(200_000, 100 + i))
            .await
            .unwrap();
    }
    let snap1 = snapshot_id(&stack);
    assert_eq!(pings.wait_for("receiver", 1, WAIT).await, [""]);
    let (letter, letter_path) = rot(&repo, &snap1, "briefe/oma.pdf");
    let (photo, photo_path) = rot(&repo, &snap1, "fotos/haus.jpg");

    // An hour later on the receiver's clock the schedule reads everything (one pass per
    // cycle), finds both, quarantines both and pings /fail once, naming what they affect.
    clock.set(hour(1));
    let s = pass(&repo, 1).await;
    assert_eq!(s["last_pass_ok"], false, "{s:#}");
    assert_eq!(s["pending"].as_array().unwrap().len(), 2, "{s:#}");
    assert_eq!(s["cycles_completed"], 1, "{s:#}");
    assert_eq!(pings.wait_for("receiver", 2, WAIT).await, ["", "/fail"]);
    let body = pings.pings_for("receiver")[1].body.clone();
    assert!(
        body.starts_with("receiver: verification found damage in 2 chunk(s)\n"),
        "{body}"
    );
    for (hex, key) in [(&letter, "briefe/oma.pdf"), (&photo, "fotos/haus.jpg")] {
        assert!(
            body.contains(&format!(
                "chunk {hex} (corrupt, quarantined; the next nightly run uploads it again): snapshot {snap1} object {key}"
            )),
            "{body}"
        );
        assert!(repo.join("quarantine").join(hex).is_file());
    }
    assert!(!letter_path.exists() && !photo_path.exists());
    let m = scrape_metrics(port).await;
    assert_eq!(
        gauge(&m, "backup_receiver_last_verify_success").as_deref(),
        Some("0"),
        "{m}"
    );
    assert_eq!(
        gauge(&m, "backup_receiver_last_verify_timestamp_seconds"),
        Some(hour(1).timestamp().to_string()),
        "{m}"
    );
    assert_eq!(
        gauge(&m, "backup_receiver_quarantined_chunks").as_deref(),
        Some("2"),
        "{m}"
    );
    assert_eq!(
        gauge(&m, "backup_receiver_verify_cycle_progress_ratio").as_deref(),
        Some("1.0000"),
        "{m}"
    );
    assert_eq!(audit_events(&repo, "verify_damage").len(), 2);

    // The loop goes on: the next pass runs, and reports nothing new (the night's success
    // ping after it is queued behind anything that pass would have sent).
    clock.set(hour(2));
    let s = pass(&repo, 2).await;
    assert_eq!(s["pending"].as_array().unwrap().len(), 2, "{s:#}");
    // The letter is deleted at the source; the photo is still there.
    stack.s3.delete(BUCKET, "briefe/oma.pdf").await.unwrap();
    let snap2 = snapshot_id(&stack);
    assert_eq!(pings.wait_for("receiver", 3, WAIT).await, ["", "/fail", ""]);
    assert!(
        photo_path.is_file(),
        "the night uploaded the photo's chunk again"
    );
    assert!(!letter_path.exists());

    // The next pass reads the photo's chunk back (healed) and reports the letter's as
    // lost for good: no source has it and the night after the damage did not send it.
    clock.set(hour(3));
    let s = pass(&repo, 3).await;
    assert_eq!(s["healed_total"], 1, "{s:#}");
    assert_eq!(s["pending"].as_array().unwrap().len(), 0, "{s:#}");
    assert_eq!(s["lost"].as_array().unwrap().len(), 1, "{s:#}");
    assert_eq!(s["lost"][0]["chunk"], letter.as_str());
    assert_eq!(
        pings.wait_for("receiver", 4, WAIT).await,
        ["", "/fail", "", "/fail"]
    );
    let body = pings.pings_for("receiver")[3].body.clone();
    assert!(
        body.starts_with(&format!("receiver: PERMANENT LOSS: chunk {letter} (corrupt, found {}) was not uploaded again by a later night; no source still has it. Affected (1 places): snapshot {snap1} object briefe/oma.pdf\n", hour(1).to_rfc3339())),
        "{body}"
    );
    assert!(!body.contains(&photo), "{body}");
    let healed = audit_events(&repo, "verify_healed");
    assert_eq!(healed.len(), 1);
    assert_eq!(healed[0]["chunk"], photo.as_str());
    assert_eq!(audit_events(&repo, "verify_permanent_loss").len(), 1);
    let m = scrape_metrics(port).await;
    assert_eq!(
        gauge(&m, "backup_receiver_verify_healed_chunks").as_deref(),
        Some("1"),
        "{m}"
    );
    assert_eq!(
        gauge(&m, "backup_receiver_verify_lost_chunks").as_deref(),
        Some("1"),
        "{m}"
    );
    // The photo reads back byte for byte in both snapshots.
    let out = receiver_cmd(
        &["verify", "--read-data", "--repo", repo.to_str().unwrap()],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(&photo), "{text}");
    assert!(text.contains(&format!("Missing chunk {letter}")), "{text}");
    assert!(!text.contains(&format!("snapshot {snap2}")), "{text}");

    // And once more: a pass, then a night; no further fail ping for what was reported.
    clock.set(hour(4));
    pass(&repo, 4).await;
    let _snap3 = snapshot_id(&stack);
    assert_eq!(
        pings.wait_for("receiver", 5, WAIT).await,
        ["", "/fail", "", "/fail", ""]
    );

    // The CLI's verify with the receiver's config pings the same check.
    let config = stack.receiver.config.to_str().unwrap().to_string();
    let out = receiver_cmd(&["verify", "--read-data", "--config", &config], &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        pings.wait_for("receiver", 6, WAIT).await,
        ["", "/fail", "", "/fail", "", "/fail"]
    );
    let body = pings.pings_for("receiver")[5].body.clone();
    assert_eq!(
        body,
        format!(
            "receiver: verification found damage in 1 chunk(s)\nchunk {letter} (missing; the next nightly run uploads it again if a source still has it): snapshot {snap1} object briefe/oma.pdf\n"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verify_state_survives_a_restart_and_the_cycle_goes_on_where_it_was() {
    let day0: DateTime<Utc> = "2026-03-02T02:30:00Z".parse().unwrap();
    let hour = |n: i64| day0 + chrono::Duration::hours(n);
    let clock_dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(clock_dir.path(), day0);
    let extra = "[verify]\ninterval = \"1h\"\nread_new = false\ncycle = \"4h\"\n";
    let mut stack = Stack::start_with(extra, &[clock.env()]).await.unwrap();
    let repo = stack.repo().to_path_buf();
    for i in 0..10 {
        stack
            .s3
            .put(BUCKET, &format!("scans/{i:02}.png"), noise(200_000, 40 + i))
            .await
            .unwrap();
    }
    snapshot_id(&stack);
    let out = receiver_cmd(&["verify", "--json", "--repo", repo.to_str().unwrap()], &[]);
    let total = serde_json::from_slice::<Value>(&out.stdout).unwrap()["chunks"]
        .as_u64()
        .unwrap();
    assert!(total >= 11, "{total}");

    // Cycle started with the schedule at hour 0, 4 h long: passes at hours 1, 2, 3 read
    // ceil(rest / passes left): 3, then 2, then 1 pass left.
    clock.set(hour(1));
    let s1 = pass(&repo, 1).await;
    let first = total.div_ceil(3);
    assert_eq!(s1["last_read"], first, "{s1:#}");
    assert_eq!(s1["cycle_read"], first, "{s1:#}");
    assert_eq!(
        s1["cycle_start"],
        day0.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    );
    assert_eq!(s1["cycles_completed"], 0);

    // A restart (SIGKILL) does not start the cycle over.
    stack.receiver.restart().await.unwrap();
    clock.set(hour(2));
    let s2 = pass(&repo, 2).await;
    let second = (total - first).div_ceil(2);
    assert_eq!(s2["cycle_start"], s1["cycle_start"], "{s2:#}");
    assert_eq!(s2["last_read"], second, "{s2:#}");
    assert_eq!(s2["cycle_read"], first + second, "{s2:#}");
    assert!(
        s2["cursor"].as_str() > s1["cursor"].as_str(),
        "{s1:#} {s2:#}"
    );

    clock.set(hour(3));
    let s3 = pass(&repo, 3).await;
    assert_eq!(s3["last_read"], total - first - second, "{s3:#}");
    assert_eq!(
        s3["cycle_read"], total,
        "every chunk read once in the cycle"
    );
    assert_eq!(s3["cycles_completed"], 1, "{s3:#}");
    assert_eq!(s3["cycle_progress"], 1.0);
    assert_eq!(s3["last_pass_ok"], true);

    // The next cycle starts with the next pass.
    clock.set(hour(4));
    let s4 = pass(&repo, 4).await;
    assert_eq!(
        s4["cycle_start"],
        hour(4).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    );
    assert_eq!(s4["cycle_read"], total.div_ceil(4), "{s4:#}");
}
