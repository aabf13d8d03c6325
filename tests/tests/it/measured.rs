//! The receiver trusts only what it measured (issue 10). Each test is one attack by a
//! compromised VPS: a raw gRPC client with the sender's own certificate, against the real
//! receiver over mutual TLS. Then the real sender's next night runs, and the receiver's own
//! tools judge the result: every honest snapshot restores byte for byte, `verify
//! --read-data` finds nothing and quarantines nothing, `prune --dry-run` keeps the honest
//! nights, and the attacker's snapshot is refused or suspect.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use backup_common::chunk::{ChunkId, MIN_CHUNK};
use backup_common::manifest::{ChunkRef, Manifest, ObjectEntry, SnapshotStats};
use backup_common::proto;
use backup_receiver::store::repository::Repository;
use backup_tests::checks::FakeClock;
use backup_tests::hostile::*;
use backup_tests::stack::{noise, receiver_cli, row_counts, Stack, BUCKET, DATABASE};
use tonic::Code;

fn at(rfc3339: &str) -> chrono::DateTime<chrono::Utc> {
    rfc3339.parse().unwrap()
}

/// Objects of the family archive for these tests: two of the same size (the pair an
/// attacker swaps), one of several chunks, one small text.
fn archive() -> BTreeMap<String, Vec<u8>> {
    [
        ("briefe/1923/grete.pdf", noise(300_000, 21)),
        ("briefe/1923/hans.pdf", noise(300_000, 22)),
        ("fotos/hochzeit 1951.jpg", noise(2_600_000, 23)),
        ("fotos/taufe 1962.tif", noise(5_500_000, 24)),
        (
            "metadaten/index.json",
            b"{\"titel\": \"Familienarchiv\"}\n".repeat(2000),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

async fn start(extra: &str) -> (Stack, Baseline) {
    backup_common::tls::install_crypto_provider();
    let stack = Stack::start_with(extra, &[]).await.unwrap();
    let objects = archive();
    for (k, v) in &objects {
        stack.s3.put(BUCKET, k, v.clone()).await.unwrap();
    }
    let mut baseline = Baseline::default();
    baseline.record(&stack, objects);
    (stack, baseline)
}

fn repo(stack: &Stack) -> Repository {
    backup_receiver::store::open::repository(stack.repo()).unwrap()
}

fn cli(stack: &Stack, args: &[&str]) -> std::process::Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--repo", stack.repo().to_str().unwrap()]);
    receiver_cli(&all)
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The previous snapshot's object entries, as the protocol hands them to any sender.
async fn previous(c: &mut Client, session: &str) -> Vec<proto::ObjectEntry> {
    let mut stream = c
        .previous_objects(proto::PreviousObjectsRequest {
            session_id: session.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.message().await.unwrap() {
        out.extend(batch.objects);
    }
    out
}

/// The honest sender's next night, then every check of the receiver's own tools.
fn next_night_and_tools(stack: &Stack, baseline: &mut Baseline) -> String {
    let honest = baseline.record(stack, archive());
    let m = repo(stack).load_manifest(&honest).unwrap();
    assert_eq!(m.suspect, None, "the honest night is good");
    baseline.assert_intact(stack);
    let verify = cli(stack, &["verify", "--read-data", "--json"]);
    assert!(verify.status.success(), "{}", text(&verify));
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(report["damage"], serde_json::json!([]));
    assert!(
        !stack.repo().join("quarantine").exists()
            || std::fs::read_dir(stack.repo().join("quarantine"))
                .unwrap()
                .next()
                .is_none(),
        "no chunk was quarantined"
    );
    let prune = cli(stack, &["prune", "--dry-run"]);
    assert!(prune.status.success(), "{}", text(&prune));
    for good in &baseline.snapshots {
        let line = text(&prune)
            .lines()
            .find(|l| l.starts_with(&good.id))
            .unwrap_or_else(|| panic!("{} not in prune's plan: {}", good.id, text(&prune)))
            .to_string();
        assert!(line.contains("keep:"), "honest night dropped: {line}");
    }
    honest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_night_is_measured_by_the_receiver() {
    let (stack, mut baseline) = start("").await;
    let r = repo(&stack);
    let first = r.load_manifest(baseline.first()).unwrap();
    let measured = first
        .measured
        .clone()
        .expect("format 2 records measurements");
    assert!(measured.content_verified);
    assert_eq!(measured.delta_base, None);
    assert_eq!(measured.objects_read, 5);
    assert_eq!(measured.bytes_read, first.total_bytes());
    let dump = measured.dump.expect("the dump was read");
    assert_eq!(dump.archive_version, "1.14.0", "PostgreSQL 15's pg_dump");
    // The receiver counted every table's rows in the dump itself: exactly what the sender
    // counted in the same snapshot, and what the database holds.
    let counted = dump.row_counts.expect("zlib table data is counted");
    assert_eq!(counted, first.dump.as_ref().unwrap().row_counts);
    assert_eq!(counted, row_counts(&stack.pg, DATABASE).await.unwrap());
    assert_eq!(counted["public.dokumente"], 3000);

    // Night 2 after one new object: only the dump and the new object are read back.
    stack
        .s3
        .put(BUCKET, "briefe/1924/neu.pdf", noise(400_000, 25))
        .await
        .unwrap();
    let mut objects = archive();
    objects.insert("briefe/1924/neu.pdf".into(), noise(400_000, 25));
    let second = baseline.record(&stack, objects);
    let m = r.load_manifest(&second).unwrap();
    let measured = m.measured.unwrap();
    assert_eq!(measured.delta_base.as_deref(), Some(first.id.as_str()));
    assert_eq!(measured.objects_read, 1);
    assert_eq!(measured.bytes_read, 400_000 + m.dump.as_ref().unwrap().size);
    baseline.assert_intact(&stack);
}

// ------------------------------------------------------- 1. poisoned delta base

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_pair_cannot_become_the_delta_base() {
    let (stack, mut baseline) = start("[limits]\nmax_snapshots_per_day = 5\n").await;
    let mut c = sender_client(&stack).await;
    let session = begin(&mut c).await.unwrap();
    let mut objects = previous(&mut c, &session).await;
    assert_eq!(objects.len(), 5);
    let (a, b) = (0, 1); // grete.pdf and hans.pdf: same size
    assert_eq!(objects[a].size, objects[b].size);
    let (hash, chunks) = (objects[a].hash.clone(), objects[a].chunks.clone());
    objects[a].hash = objects[b].hash.clone();
    objects[a].chunks = objects[b].chunks.clone();
    objects[b].hash = hash;
    objects[b].chunks = chunks;
    let junk = fake_dump(40_000, 1);
    let r = put_data(&mut c, &session, &junk).await.unwrap();
    let before = Stored::capture(stack.repo());
    assert_status(
        commit(
            &mut c,
            header(&session, Some(dump(&junk, vec![r.clone()], &[])), 5),
            vec![objects.clone()],
        )
        .await,
        Code::InvalidArgument,
        &format!(
            "object \"briefe/1923/grete.pdf\": same size and ETag as in good snapshot {}, but different content",
            baseline.first()
        ),
    );
    before.assert_kept(stack.repo());

    // The same swap under new ETags is self-consistent and may be committed, but it binds
    // nothing: the honest sender sees ETags the bucket does not have, reads both objects
    // again, and the next night holds the real bytes.
    objects[a].etag = "\"attacker-a\"".into();
    objects[b].etag = "\"attacker-b\"".into();
    let s2 = begin(&mut c).await.unwrap();
    let r2 = put_data(&mut c, &s2, &junk).await.unwrap();
    let attack = commit(
        &mut c,
        header(&s2, Some(dump(&junk, vec![r2], &[])), 5),
        vec![objects],
    )
    .await
    .unwrap();
    assert!(attack.suspect, "a dump without the tables is suspect");
    next_night_and_tools(&stack, &mut baseline);
}

// ------------------------------------------- 2. junk that takes the day's retention slot

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_after_the_honest_night_takes_no_slot_and_the_day_allows_one_commit() {
    // The receiver's default: one commit per day (retention's days, Europe/Berlin).
    let clock_dir = tempfile::tempdir().unwrap();
    // 00:30 in Berlin on 5 March (23:30 UTC on the 4th).
    let clock = FakeClock::new(clock_dir.path(), at("2031-03-04T23:30:00Z"));
    backup_common::tls::install_crypto_provider();
    let stack = Stack::start_with("[limits]\nmax_snapshots_per_day = 1\n", &[clock.env()])
        .await
        .unwrap();
    for (k, v) in archive() {
        stack.s3.put(BUCKET, &k, v).await.unwrap();
    }
    let mut baseline = Baseline::default();
    baseline.record(&stack, archive());

    // 06:00 in Berlin the same day (05:00 UTC on the 5th: another UTC day): refused.
    clock.set(at("2031-03-05T05:00:00Z"));
    let mut c = sender_client(&stack).await;
    let session = begin(&mut c).await.unwrap();
    let objects = previous(&mut c, &session).await;
    let junk = fake_dump(40_000, 2);
    let r = put_data(&mut c, &session, &junk).await.unwrap();
    let rows = [("public.dokumente", 3000), ("public.personen", 300)];
    assert_status(
        commit(
            &mut c,
            header(&session, Some(dump(&junk, vec![r], &rows)), 5),
            vec![objects.clone()],
        )
        .await,
        Code::ResourceExhausted,
        "1 snapshot(s) were already committed today (2031-03-05 in Europe/Berlin",
    );

    // The refused commit contests the day: the honest night counts as suspect (kept, and
    // no delta base) until the operator, who was paged, acknowledges it.
    let r = repo(&stack);
    let honest = r.load_manifest(baseline.first()).unwrap();
    assert!(!backup_receiver::store::verdicts::is_good(&r, &honest).unwrap());
    let out = cli(
        &stack,
        &["ack", baseline.first(), "--note", "our nightly run"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(backup_receiver::store::verdicts::is_good(&r, &honest).unwrap());

    // Where an operator allows more commits a day, the junk is suspect: its copied row
    // counts are claims the dump's own table data contradicts, and it takes no slot.
    drop(c);
    let mut stack = stack;
    let text0 = std::fs::read_to_string(&stack.receiver.config).unwrap();
    std::fs::write(
        &stack.receiver.config,
        text0.replace("max_snapshots_per_day = 1", "max_snapshots_per_day = 3"),
    )
    .unwrap();
    stack.receiver.restart().await.unwrap();
    let mut c = sender_client(&stack).await;
    let session = begin(&mut c).await.unwrap();
    let r = put_data(&mut c, &session, &junk).await.unwrap();
    let attack = commit(
        &mut c,
        header(&session, Some(dump(&junk, vec![r], &rows)), 5),
        vec![objects],
    )
    .await
    .unwrap();
    assert!(attack.suspect);
    assert!(
        attack
            .suspect_reason
            .contains("the sender claims 3000 rows for table public.dokumente, the dump holds"),
        "{}",
        attack.suspect_reason
    );
    let prune = cli(&stack, &["prune", "--dry-run"]);
    let plan = text(&prune);
    let honest_line = plan
        .lines()
        .find(|l| l.starts_with(baseline.first()))
        .unwrap();
    assert!(honest_line.contains("daily"), "{plan}");
    let junk_line = plan
        .lines()
        .find(|l| l.starts_with(&attack.snapshot_id))
        .unwrap();
    assert!(
        junk_line.contains("suspect") && !junk_line.contains("daily"),
        "{plan}"
    );

    // The next Berlin day, the honest night.
    clock.set(at("2031-03-05T23:30:00Z"));
    next_night_and_tools(&stack, &mut baseline);
}

// ---------------------------------------------------------------- 3. inflated baseline

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inflated_snapshot_is_refused_or_suspect_and_can_be_rejected() {
    let (stack, mut baseline) = start(
        "[limits]\nmax_snapshots_per_day = 5\n[guard]\ngrowth_min_bytes = 1000\ngrowth_min_objects = 2\n",
    )
    .await;
    let mut c = sender_client(&stack).await;
    let session = begin(&mut c).await.unwrap();
    let objects = previous(&mut c, &session).await;
    // One chunk of the chunker's minimum size, named 200,000 times: a "0.05 TB" object.
    let block = noise(MIN_CHUNK as usize, 31);
    let r = put_data(&mut c, &session, &block).await.unwrap();
    let mut huge = object("huge.bin", &block, vec![r.clone(); 200_000]);
    huge.size = u64::from(MIN_CHUNK) * 200_000;
    let mut inflated = objects.clone();
    inflated.push(huge);
    let d = fake_dump(40_000, 3);
    let rd = put_data(&mut c, &session, &d).await.unwrap();
    assert_status(
        commit(
            &mut c,
            header(&session, Some(dump(&d, vec![rd.clone()], &[])), 6),
            vec![inflated],
        )
        .await,
        Code::ResourceExhausted,
        "chunks are referenced more than 64 times over",
    );

    // Within the bounds, but more than double the bytes (and 1000 times every table's rows
    // claimed): suspect, so it is no baseline and no delta base.
    let mut grown = objects.clone();
    let mut big = object("grown.bin", &block, vec![r; 60]);
    big.size = u64::from(MIN_CHUNK) * 60;
    big.hash = ChunkId::of(&block.repeat(60)).0.to_vec();
    grown.push(big);
    let rows = [
        ("public.dokumente", 3_000_000),
        ("public.personen", 300_000),
    ];
    let s2 = begin(&mut c).await.unwrap();
    put_data(&mut c, &s2, &block).await.unwrap();
    let rd = put_data(&mut c, &s2, &d).await.unwrap();
    let attack = commit(
        &mut c,
        header(&s2, Some(dump(&d, vec![rd], &rows)), 6),
        vec![grown],
    )
    .await
    .unwrap();
    assert!(attack.suspect);
    assert!(
        attack.suspect_reason.contains("object bytes grew from"),
        "{}",
        attack.suspect_reason
    );
    // The operator takes it out of every decision; it stays on disk for forensics.
    let out = cli(
        &stack,
        &["reject", &attack.snapshot_id, "--note", "not our VPS"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let listing = cli(&stack, &["snapshots", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    let row = rows["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["snapshot_id"] == attack.snapshot_id.as_str())
        .unwrap();
    assert_eq!(row["status"], "rejected");
    let honest = next_night_and_tools(&stack, &mut baseline);
    let m = repo(&stack).load_manifest(&honest).unwrap();
    assert_eq!(
        m.measured.unwrap().delta_base.as_deref(),
        Some(baseline.first()),
        "the rejected snapshot is no delta base"
    );
    assert!(audit(stack.repo())
        .iter()
        .any(|r| r["event"] == "reject" && r["note"] == "not our VPS"));
}

// -------------------------------------------- 4. a length lie that would make verify destroy

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_lie_is_refused_and_verify_never_quarantines_an_intact_chunk() {
    let (stack, mut baseline) = start("[limits]\nmax_snapshots_per_day = 5\n").await;
    // The attacker knows tomorrow's scan (uploaded this evening) and pre-seeds its chunk.
    let scan = noise(350_000, 41);
    let mut c = sender_client(&stack).await;
    let session = begin(&mut c).await.unwrap();
    let r = put_data(&mut c, &session, &scan).await.unwrap();
    let lie = proto::ChunkRef {
        id: r.id.clone(),
        len: r.len - 1,
    };
    let mut entry = object("lie.pdf", &scan[..scan.len() - 1], vec![lie]);
    entry.hash = r.id.clone();
    let d = fake_dump(40_000, 4);
    let rd = put_data(&mut c, &session, &d).await.unwrap();
    assert_status(
        commit(
            &mut c,
            header(&session, Some(dump(&d, vec![rd], &[])), 1),
            vec![vec![entry]],
        )
        .await,
        Code::InvalidArgument,
        &format!(
            "chunk {} is stored with 350000 bytes, the entry claims 349999",
            ChunkId::from_slice(&r.id).unwrap().to_hex()
        ),
    );

    // A lying manifest that got in before this check existed (written here by hand, as a
    // format-1 manifest): verify names the manifest, and the chunk stays.
    let id = ChunkId::from_slice(&r.id).unwrap();
    let old = Manifest {
        format: 1,
        id: "20000101T000000Z".into(),
        time: chrono::DateTime::from_timestamp(946_684_800, 0).unwrap(),
        sender_time: None,
        source_host: "vps".into(),
        peer_identity: "prod-vps".into(),
        bucket: BUCKET.into(),
        dump: None,
        objects: vec![ObjectEntry {
            key: "lie.pdf".into(),
            size: 349_999,
            etag: String::new(),
            hash: id,
            chunks: vec![ChunkRef { id, len: 349_999 }],
        }],
        stats: SnapshotStats::default(),
        suspect: None,
        measured: None,
    };
    let path = stack.repo().join("snapshots/20000101T000000Z.json");
    std::fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();

    stack
        .s3
        .put(BUCKET, "briefe/abend.pdf", scan.clone())
        .await
        .unwrap();
    let mut objects = archive();
    objects.insert("briefe/abend.pdf".into(), scan);
    let honest = baseline.record(&stack, objects);
    baseline.assert_intact(&stack);
    let verify = cli(&stack, &["verify", "--read-data", "--json"]);
    assert_eq!(verify.status.code(), Some(3), "{}", text(&verify));
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    let damage = report["damage"].as_array().unwrap();
    assert_eq!(damage.len(), 1, "{report}");
    assert_eq!(damage[0]["problem"], "manifestmismatch");
    assert_eq!(damage[0]["chunk"], id.to_hex());
    assert_eq!(
        damage[0]["affected"],
        serde_json::json!([{"snapshot_id": "20000101T000000Z", "item": "object lie.pdf"}]),
        "only the lying manifest is named"
    );
    assert!(damage[0].get("quarantined").is_none());
    assert!(
        repo(&stack).has_chunk(&id).unwrap(),
        "the intact chunk stays"
    );
    // And again: a later scrub changes nothing either.
    let again = cli(&stack, &["verify", "--read-data"]);
    assert_eq!(again.status.code(), Some(3));
    baseline.assert_intact(&stack);
    assert!(repo(&stack)
        .load_manifest(&honest)
        .unwrap()
        .suspect
        .is_none());
}

// ------------------------------------------------------ 5. latest means the newest good

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_and_drill_latest_pick_the_newest_good_snapshot() {
    let (stack, mut baseline) = start("[limits]\nmax_snapshots_per_day = 5\n").await;
    let mut c = sender_client(&stack).await;
    let suspect = commit_empty(&mut c, 1).await.unwrap();
    assert!(suspect.suspect);
    let out_dir = tempfile::tempdir().unwrap();
    let dump_out = out_dir.path().join("latest.dump");
    let r = cli(
        &stack,
        &[
            "restore",
            "latest",
            "--dump-out",
            dump_out.to_str().unwrap(),
        ],
    );
    assert!(r.status.success(), "{}", text(&r));
    assert!(std::fs::read(&dump_out).unwrap() == baseline.snapshots[0].dump);
    assert!(
        text(&r).contains(&format!(
            "latest good snapshot is {}; newer snapshot(s) not chosen because they are suspect or rejected: {}",
            baseline.first(),
            suspect.snapshot_id
        )),
        "{}",
        text(&r)
    );
    // By its id, or as `latest --allow-suspect`, a suspect snapshot is restored with a
    // warning that says what it is.
    let named = out_dir.path().join("named.dump");
    let r = cli(
        &stack,
        &[
            "restore",
            &suspect.snapshot_id,
            "--dump-out",
            named.to_str().unwrap(),
        ],
    );
    assert!(r.status.success(), "{}", text(&r));
    assert!(
        text(&r).contains(&format!(
            "WARNING: snapshot {} is suspect (",
            suspect.snapshot_id
        )),
        "{}",
        text(&r)
    );
    let any = out_dir.path().join("any.dump");
    let r = cli(
        &stack,
        &[
            "restore",
            "latest",
            "--allow-suspect",
            "--dump-out",
            any.to_str().unwrap(),
        ],
    );
    assert!(r.status.success(), "{}", text(&r));
    assert!(std::fs::read(&any).unwrap() == std::fs::read(&named).unwrap());
    assert!(text(&r).contains("WARNING: snapshot"), "{}", text(&r));
    // The drill picks the same good snapshot and records its pass for retention.
    let drill = cli(&stack, &["drill", "--json"]);
    assert!(drill.status.success(), "{}", text(&drill));
    let report: serde_json::Value = serde_json::from_slice(&drill.stdout).unwrap();
    assert_eq!(report["snapshot_id"], baseline.first());
    assert!(stack
        .repo()
        .join(format!("drills/{}.json", baseline.first()))
        .is_file());
    let drill = cli(&stack, &["drill", &suspect.snapshot_id]);
    assert!(!drill.status.success());
    assert!(text(&drill).contains("--allow-suspect"), "{}", text(&drill));
    next_night_and_tools(&stack, &mut baseline);
    let plan = text(&cli(&stack, &["prune", "--dry-run"]));
    let line = plan
        .lines()
        .find(|l| l.starts_with(baseline.first()))
        .unwrap();
    assert!(line.contains("drilled"), "{plan}");
}

// ------------------------------------------------------- 6. non-canonical stored bytes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_in_a_non_canonical_encoding_is_refused_and_nothing_stored() {
    let (stack, mut baseline) = start("").await;
    let mut c = sender_client(&stack).await;
    let session = begin(&mut c).await.unwrap();
    let data = b"Liebe Grete, ".repeat(160); // 2080 bytes
    let mut framed = zstd::bulk::compress(&data, 3).unwrap();
    // A 1 MiB skippable frame after the real one.
    framed.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18]);
    framed.extend_from_slice(&(1u32 << 20).to_le_bytes());
    framed.extend(std::iter::repeat_n(0u8, 1 << 20));
    let before = Stored::capture(stack.repo());
    assert_status(
        put(
            &mut c,
            vec![proto::ChunkUpload {
                session_id: session.clone(),
                id: ChunkId::of(&data).0.to_vec(),
                raw_len: data.len() as u32,
                zstd: true,
                data: framed.into(),
            }],
        )
        .await,
        Code::InvalidArgument,
        "not in canonical form: compressed payload is not smaller than the raw bytes",
    );
    before.assert_unchanged(stack.repo());
    next_night_and_tools(&stack, &mut baseline);
}

// ------------------------------------------------------- 7. unbounded commit buffering

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_with_millions_of_references_is_refused_while_it_streams() {
    let (stack, mut baseline) = start("").await;
    let pid = stack.receiver.pid().unwrap();
    let rss_before = vm_rss_kib(pid);
    let mut c = sender_client(&stack).await;
    let session = begin(&mut c).await.unwrap();
    let block = noise(MIN_CHUNK as usize, 51);
    let r = put_data(&mut c, &session, &block).await.unwrap();
    // 628 objects of 4000 references each: 2.5 million references, 90 MiB of messages.
    let batches: Vec<Vec<proto::ObjectEntry>> = (0..628)
        .map(|i| {
            let mut o = object(&format!("o/{i}"), &block, vec![r.clone(); 4000]);
            o.size = u64::from(MIN_CHUNK) * 4000;
            vec![o]
        })
        .collect();
    assert_status(
        commit(&mut c, header(&session, None, 628), batches).await,
        Code::ResourceExhausted,
        "the commit references more than 1000000 chunks",
    );
    let grown_mib = vm_rss_kib(pid).saturating_sub(rss_before) / 1024;
    // One million references at about 36 bytes each, plus decode buffers.
    assert!(grown_mib < 150, "receiver RSS grew by {grown_mib} MiB");
    next_night_and_tools(&stack, &mut baseline);
}

// -------------------------------------------------- 8. existence oracle and keep-alive

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_chunks_of_kept_good_snapshots_are_reported_present() {
    let (stack, mut baseline) = start("").await;
    let r = repo(&stack);
    let kept: ChunkId = r.load_manifest(baseline.first()).unwrap().objects[0].chunks[0].id;
    let mut c = sender_client(&stack).await;
    // A chunk that only a snapshot pruned long ago referenced: still on disk (GC has not
    // run), and the attacker recorded its id back then. Planted here as the old receiver
    // process stored it.
    let orphan = noise(20_000, 61);
    let orphan_id = ChunkId::of(&orphan);
    r.put_chunk(&orphan_id, false, &orphan).unwrap();
    let path = backup_receiver::store::fs::chunk_path(stack.repo(), &orphan_id);
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    std::fs::File::open(&path)
        .unwrap()
        .set_modified(old)
        .unwrap();

    let s2 = begin(&mut c).await.unwrap();
    let missing = c
        .missing_chunks(proto::MissingChunksRequest {
            session_id: s2.clone(),
            ids: vec![kept.0.to_vec(), orphan_id.0.to_vec()],
        })
        .await
        .unwrap()
        .into_inner()
        .missing;
    assert_eq!(
        missing,
        vec![orphan_id.0.to_vec()],
        "the orphan is 'missing'"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        old,
        "naming it kept nothing alive"
    );
    // A commit naming it without uploading is refused like any missing chunk.
    let entry = object(
        "alt.pdf",
        &orphan,
        vec![proto::ChunkRef {
            id: orphan_id.0.to_vec(),
            len: orphan.len() as u32,
        }],
    );
    assert_status(
        commit(&mut c, header(&s2, None, 1), vec![vec![entry]]).await,
        Code::FailedPrecondition,
        "commit references chunks the repository does not have",
    );
    // Uploading it again tells nothing either: the reply calls it stored, not a duplicate.
    let s3 = begin(&mut c).await.unwrap();
    let (up, _) = chunk(&s3, &orphan);
    let reply = put(&mut c, vec![up]).await.unwrap();
    assert_eq!((reply.stored, reply.duplicates), (1, 0));
    next_night_and_tools(&stack, &mut baseline);
}

// ------------------------------------------- 1b. healing a poisoned format-1 delta base

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_format_1_base_heals_on_the_next_night() {
    let (stack, mut baseline) = start("").await;
    // What the old receiver let in: the honest list with a same-size pair swapped under the
    // bucket's own ETags, committed right after the honest night (written here by hand, as
    // the format-1 manifest the old receiver would have published).
    let r = repo(&stack);
    let mut poisoned = r.load_manifest(baseline.first()).unwrap();
    poisoned.id = format!("{}-1", poisoned.id);
    poisoned.time += chrono::Duration::seconds(1);
    poisoned.format = 1;
    poisoned.measured = None;
    let (a, b) = (0, 1);
    let (hash, chunks) = (poisoned.objects[a].hash, poisoned.objects[a].chunks.clone());
    poisoned.objects[a].hash = poisoned.objects[b].hash;
    poisoned.objects[a].chunks = poisoned.objects[b].chunks.clone();
    poisoned.objects[b].hash = hash;
    poisoned.objects[b].chunks = chunks;
    let path = stack.repo().join(format!("snapshots/{}.json", poisoned.id));
    std::fs::write(&path, serde_json::to_vec(&poisoned).unwrap()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    assert_eq!(r.latest_good().unwrap().unwrap().id, poisoned.id);

    // The format-1 base offers the sender nothing, so it reads every object again.
    let mut c = sender_client(&stack).await;
    let session = begin(&mut c).await.unwrap();
    assert!(previous(&mut c, &session).await.is_empty());
    drop(c);
    let honest = next_night_and_tools(&stack, &mut baseline);
    let m = r.load_manifest(&honest).unwrap();
    let measured = m.measured.unwrap();
    assert_eq!(measured.delta_base, None);
    assert_eq!(measured.objects_read, 5);
    // And from there on the delta base is the healed, measured night.
    let next = baseline.record(&stack, archive());
    let m = r.load_manifest(&next).unwrap();
    assert_eq!(
        m.measured.unwrap().delta_base.as_deref(),
        Some(honest.as_str())
    );
    baseline.assert_intact(&stack);
}

// --------------------- 1c. a junk entry with the bucket's real ETag, before the honest night

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_before_the_honest_night_is_contested_and_never_copied() {
    // One commit a day (Europe/Berlin). Day 1, 02:30: the honest night.
    let clock_dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(clock_dir.path(), at("2031-03-04T01:30:00Z"));
    backup_common::tls::install_crypto_provider();
    let stack = Stack::start_with("[limits]\nmax_snapshots_per_day = 1\n", &[clock.env()])
        .await
        .unwrap();
    let mut objects = archive();
    for (k, v) in &objects {
        stack.s3.put(BUCKET, k, v.clone()).await.unwrap();
    }
    let mut baseline = Baseline::default();
    baseline.record(&stack, objects.clone());

    // In the evening a new scan is uploaded. The attacker, who holds the bucket's keys as
    // well, reads its size and ETag and, just after midnight, commits the previous list
    // plus that entry with the real size and ETag but junk bytes.
    let scan = noise(600_000, 71);
    stack
        .s3
        .put(BUCKET, "briefe/neu.pdf", scan.clone())
        .await
        .unwrap();
    objects.insert("briefe/neu.pdf".into(), scan.clone());
    let listed = stack.s3.list(BUCKET).await.unwrap();
    let (_, size, etag) = listed
        .iter()
        .find(|(k, _, _)| k == "briefe/neu.pdf")
        .unwrap();
    clock.set(at("2031-03-04T23:30:00Z")); // 00:30 in Berlin, day 2
    let mut c = sender_client(&stack).await;
    let session = begin(&mut c).await.unwrap();
    let mut entries = previous(&mut c, &session).await;
    let junk = noise(*size as usize, 72);
    let r = put_data(&mut c, &session, &junk).await.unwrap();
    let mut forged = object("briefe/neu.pdf", &junk, vec![r]);
    forged.etag = etag.clone();
    entries.push(forged);
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    let d = fake_dump(40_000, 7);
    let rd = put_data(&mut c, &session, &d).await.unwrap();
    let attack = commit(
        &mut c,
        header(
            &session,
            Some(dump(&d, vec![rd], &[])),
            entries.len() as u64,
        ),
        vec![entries],
    )
    .await
    .unwrap();
    drop(c);

    // Day 2, 02:30: the honest night is refused (the day has its commit), which pages the
    // operator, and makes the day's earlier snapshot contested: no longer good.
    clock.set(at("2031-03-05T01:30:00Z"));
    let refused = stack.run_sender();
    assert_ne!(refused.code(), Some(0), "{}", refused.stderr());
    assert!(
        refused.stderr().contains("max_snapshots_per_day"),
        "{}",
        refused.stderr()
    );
    let r = repo(&stack);
    assert!(!backup_receiver::store::verdicts::is_good(
        &r,
        &r.load_manifest(&attack.snapshot_id).unwrap()
    )
    .unwrap());
    assert!(audit(stack.repo())
        .iter()
        .any(|a| a["event"] == "contested" && a["snapshots"][0] == attack.snapshot_id.as_str()));
    let listing: serde_json::Value =
        serde_json::from_slice(&cli(&stack, &["snapshots", "--json"]).stdout).unwrap();
    let row = listing["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["snapshot_id"] == attack.snapshot_id.as_str())
        .unwrap();
    assert_eq!(row["status"], "suspect");

    // Day 3: the honest night's delta base is day 1, so it reads the new scan itself; the
    // junk is never copied, and every honest snapshot restores byte for byte.
    clock.set(at("2031-03-06T01:30:00Z"));
    let honest = baseline.record(&stack, objects);
    let m = r.load_manifest(&honest).unwrap();
    assert_eq!(m.suspect, None);
    assert_eq!(
        m.measured.unwrap().delta_base.as_deref(),
        Some(baseline.first())
    );
    baseline.assert_intact(&stack);
    let plan = text(&cli(&stack, &["prune", "--dry-run"]));
    let line = plan
        .lines()
        .find(|l| l.starts_with(&attack.snapshot_id))
        .unwrap();
    assert!(line.contains("suspect"), "{plan}");
    assert!(
        plan.lines()
            .find(|l| l.starts_with(baseline.first()))
            .unwrap()
            .contains("keep:"),
        "{plan}"
    );
}
