//! End to end: the real sender binary against a real PostgreSQL and S3 server, the real
//! receiver binary over mutual TLS, and restores checked byte for byte.

use std::collections::BTreeMap;
use std::path::Path;

use backup_tests::checks::read_tree;
use backup_tests::pg::tool;
use backup_tests::stack::{noise, receiver_cli, row_counts, Stack, BUCKET, DATABASE};

/// Puts objects and returns what the bucket holds, key → bytes.
async fn put_all(stack: &Stack, objects: &mut BTreeMap<String, Vec<u8>>, new: &[(&str, Vec<u8>)]) {
    for (key, data) in new {
        stack.s3.put(BUCKET, key, data.clone()).await.unwrap();
        objects.insert(key.to_string(), data.clone());
    }
}

fn restore(stack: &Stack, snapshot: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec![
        "restore",
        snapshot,
        "--repo",
        stack.repo().to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    receiver_cli(&all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nights_send_only_changes_and_both_snapshots_restore_exactly() {
    let stack = Stack::start().await.unwrap();
    let mut objects = BTreeMap::new();
    let mut night1 = vec![
        ("briefe/1923/grete.pdf", noise(700_000, 1)),
        ("fotos/hochzeit 1951.jpg", noise(3_500_000, 2)),
        ("fotos/großvater.jpg", noise(9_000_000, 3)), // several chunks
        (
            "metadaten/index.json",
            b"{\"titel\": \"Familienarchiv\"}\n".repeat(5000),
        ),
        ("leer.txt", Vec::new()),
    ];
    for i in 0..20 {
        night1.push((
            Box::leak(format!("scans/{i:03}.png").into_boxed_str()),
            noise(50_000 + i * 1000, 100 + i as u64),
        ));
    }
    put_all(&stack, &mut objects, &night1).await;
    let rows1 = row_counts(&stack.pg, DATABASE).await.unwrap();

    let s1 = stack.run_sender().summary();
    assert_eq!(s1["objects_total"], 25);
    assert_eq!(s1["objects_new"], 25);
    let snap1 = s1["snapshot_id"].as_str().unwrap().to_string();
    let objects1 = objects.clone();
    let dump1 = std::fs::read(s1["dump_file"].as_str().unwrap()).unwrap();
    assert_eq!(s1["dump_bytes"], dump1.len() as u64);
    assert!(dump1.starts_with(b"PGDMP"), "custom-format dump");

    // A night of change: objects added, rewritten and deleted; rows updated and inserted.
    let changed = noise(3_500_000, 22);
    put_all(
        &stack,
        &mut objects,
        &[
            ("neu/brief.pdf", noise(400_000, 30)),
            ("neu/foto.jpg", noise(1_200_000, 31)),
            ("fotos/hochzeit 1951.jpg", changed.clone()),
        ],
    )
    .await;
    stack
        .s3
        .delete(BUCKET, "briefe/1923/grete.pdf")
        .await
        .unwrap();
    objects.remove("briefe/1923/grete.pdf");
    let c = stack.pg.client(DATABASE).await.unwrap();
    c.batch_execute(
        "UPDATE dokumente SET titel = titel || ' (ergänzt)' WHERE id % 100 = 0;
         INSERT INTO personen (name) SELECT 'Neu ' || g FROM generate_series(1, 25) g;",
    )
    .await
    .unwrap();
    let rows2 = row_counts(&stack.pg, DATABASE).await.unwrap();
    assert_ne!(rows1, rows2);

    let s2 = stack.run_sender().summary();
    let snap2 = s2["snapshot_id"].as_str().unwrap().to_string();
    assert_ne!(snap1, snap2);
    assert_eq!(s2["objects_total"], 26);
    assert_eq!(s2["objects_new"], 2);
    assert_eq!(s2["objects_changed"], 1);
    assert_eq!(s2["objects_gone"], 1);
    assert_eq!(s2["objects_unchanged"], 23);
    let changed_bytes = 400_000 + 1_200_000 + 3_500_000u64;
    assert_eq!(s2["object_bytes_read"], changed_bytes);
    // Only the changed objects and the changed part of the dump crossed the network.
    let raw_sent = s2["raw_bytes_sent"].as_u64().unwrap();
    let dump2_bytes = s2["dump_bytes"].as_u64().unwrap();
    assert!(
        raw_sent >= changed_bytes,
        "changed objects must be sent: {raw_sent}"
    );
    assert!(
        raw_sent <= changed_bytes + dump2_bytes,
        "sent {raw_sent}, more than changed data"
    );
    let s1_raw = s1["raw_bytes_sent"].as_u64().unwrap();
    assert!(
        raw_sent * 2 < s1_raw,
        "night 2 sent {raw_sent}, night 1 {s1_raw}"
    );

    // The snapshot list shows both, newest last, with the receiver's figures.
    let list = stack.snapshots();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["snapshot_id"], snap1.as_str());
    assert_eq!(list[1]["snapshot_id"], snap2.as_str());
    assert_eq!(list[0]["object_count"], 25);
    assert_eq!(list[1]["object_count"], 26);
    assert_eq!(list[1]["dump_bytes"], dump2_bytes);

    let out = stack.dir.path().join("restore");
    // Snapshot 1: every object, including the one deleted since, byte for byte.
    let o = restore(
        &stack,
        &snap1,
        &[
            "--objects-out",
            out.join("o1").to_str().unwrap(),
            "--dump-out",
            out.join("d1.dump").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read_tree(&out.join("o1")), objects1);
    assert_eq!(std::fs::read(out.join("d1.dump")).unwrap(), dump1);

    // Snapshot 2 via `latest`: objects, and the dump equals tonight's local copy exactly.
    let o = restore(
        &stack,
        "latest",
        &[
            "--objects-out",
            out.join("o2").to_str().unwrap(),
            "--dump-out",
            out.join("d2.dump").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read_tree(&out.join("o2")), objects);
    let local2 = std::fs::read(s2["dump_file"].as_str().unwrap()).unwrap();
    assert_eq!(std::fs::read(out.join("d2.dump")).unwrap(), local2);

    // pg_restore of each snapshot into a fresh database gives that night's row counts.
    for (snap, rows, db) in [(&snap1, &rows1, "restored1"), (&snap2, &rows2, "restored2")] {
        stack.pg.create_db(db).await.unwrap();
        let o = restore(
            &stack,
            snap,
            &[
                "--pg-restore",
                &stack.pg.url(db),
                "--pg-restore-bin",
                tool("pg_restore").to_str().unwrap(),
                "--pg-restore-args",
                "--no-owner",
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(&row_counts(&stack.pg, db).await.unwrap(), rows, "{db}");
    }

    // The manifest recorded the row counts taken in the dump's own snapshot.
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(stack.repo().join("snapshots").join(format!("{snap2}.json"))).unwrap(),
    )
    .unwrap();
    let recorded: BTreeMap<String, u64> =
        serde_json::from_value(m["dump"]["row_counts"].clone()).unwrap();
    assert_eq!(recorded, rows2);
    assert_eq!(recorded["meta.Schlagworte"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_leaves_no_snapshot_and_the_next_run_reuses_its_chunks() {
    let mut stack = Stack::start().await.unwrap();
    stack
        .s3
        .put(BUCKET, "fotos/a.jpg", noise(6_000_000, 5))
        .await
        .unwrap();
    stack
        .s3
        .put(BUCKET, "fotos/b.jpg", noise(2_000_000, 6))
        .await
        .unwrap();
    // pg_dump writes the whole dump, then the run dies: as if the VPS lost power
    // before the commit.
    let pg_dump = tool("pg_dump");
    let script = format!("{} \"$@\"; exit 1", pg_dump.display());
    stack
        .write_sender_config(&["sh", "-c", &script, "pg_dump"])
        .unwrap();
    let failed = stack.run_sender();
    assert_eq!(
        failed.code(),
        Some(3),
        "source failure exit code: {}",
        failed.stderr()
    );
    assert!(failed.stderr().contains("pg_dump"), "{}", failed.stderr());
    assert!(
        stack.snapshots().is_empty(),
        "a failed run must leave no snapshot"
    );
    let chunks_after_failure = count_files(&stack.repo().join("chunks"));
    assert!(
        chunks_after_failure >= 3,
        "the objects' chunks arrived: {chunks_after_failure}"
    );
    // No local dump is published for a failed run.
    let local: Vec<_> = std::fs::read_dir(&stack.local_dir).unwrap().collect();
    assert!(local.is_empty(), "{local:?}");

    stack.write_sender_config(&[]).unwrap();
    let ok = stack.run_sender().summary();
    assert_eq!(ok["objects_total"], 2);
    // The objects' chunks were already there: only the dump (if anything) is sent now.
    assert!(
        ok["raw_bytes_sent"].as_u64().unwrap() <= ok["dump_bytes"].as_u64().unwrap(),
        "{ok}"
    );
    assert_eq!(stack.snapshots().len(), 1);
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        n += if p.is_dir() { count_files(&p) } else { 1 };
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_into_an_s3_bucket_round_trips_large_objects() {
    let stack = Stack::start().await.unwrap();
    let big = noise(40 * 1024 * 1024 + 123, 77); // three multipart parts
    let objects = [
        ("gross/film.mov", big),
        ("klein/a.txt", b"hallo".to_vec()),
        ("leer", Vec::new()),
    ];
    for (k, v) in &objects {
        stack.s3.put(BUCKET, k, v.clone()).await.unwrap();
    }
    stack.run_sender().summary();
    stack.s3.create_bucket("wiederhergestellt").await.unwrap();
    let d = stack.dir.path();
    let o = restore(
        &stack,
        "latest",
        &[
            "--objects-to-s3",
            "--s3-endpoint",
            &stack.s3.endpoint(),
            "--s3-bucket",
            "wiederhergestellt",
            "--s3-access-key-file",
            d.join("s3-access-key").to_str().unwrap(),
            "--s3-secret-key-file",
            d.join("s3-secret-key").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listed = stack.s3.list("wiederhergestellt").await.unwrap();
    assert_eq!(listed.len(), objects.len());
    for (k, v) in &objects {
        assert_eq!(
            &stack.s3.get("wiederhergestellt", k).await.unwrap(),
            v,
            "{k}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_keys_that_would_escape_the_target_directory() {
    let stack = Stack::start().await.unwrap();
    stack
        .s3
        .put(BUCKET, "ok.txt", b"inhalt".to_vec())
        .await
        .unwrap();
    let snap = stack.run_sender().summary()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    // The service refuses such keys at commit; here a manifest carrying one is planted on
    // the NAS directly (as a damaged or foreign repository might hold it).
    let snaps = stack.repo().join("snapshots");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(snaps.join(format!("{snap}.json"))).unwrap())
            .unwrap();
    let mut evil = m["objects"][0].clone();
    evil["key"] = "../../etc/x".into();
    m["objects"].as_array_mut().unwrap().push(evil);
    m["id"] = "planted".into();
    std::fs::write(snaps.join("planted.json"), serde_json::to_vec(&m).unwrap()).unwrap();

    let target = stack.dir.path().join("ziel").join("objects");
    let o = restore(
        &stack,
        "planted",
        &["--objects-out", target.to_str().unwrap()],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("../../etc/x") && err.contains("escape"),
        "{err}"
    );
    assert_eq!(std::fs::read(target.join("ok.txt")).unwrap(), b"inhalt");
    assert!(!stack.dir.path().join("etc").exists());
    assert!(!target
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("etc/x")
        .exists());
}
