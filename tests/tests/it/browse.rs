//! Browsing and partial restores on a two-night repository made by the real stack:
//! `ls`, `find`, `diff` and `dump` with their exact JSON, `restore --include/--exclude`
//! byte for byte, a restore into the live bucket that leaves other content alone unless
//! `--overwrite`, a closed stdout, and `--config`/`BACKUP_RECEIVER_CONFIG`.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};

use backup_tests::checks::read_tree;
use backup_tests::stack::{bin, noise, receiver_cli, row_counts, Stack, BUCKET, DATABASE};
use serde_json::{json, Value};

fn hash(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

fn cli(stack: &Stack, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend(["--repo", stack.repo().to_str().unwrap()]);
    receiver_cli(&all)
}

fn ok(out: Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn json_of(stack: &Stack, args: &[&str]) -> Value {
    serde_json::from_slice(&ok(cli(stack, args))).expect("json")
}

struct TwoNights {
    stack: Stack,
    snap1: String,
    snap2: String,
    night1: BTreeMap<String, Vec<u8>>,
    night2: BTreeMap<String, Vec<u8>>,
    rows1: BTreeMap<String, u64>,
    rows2: BTreeMap<String, u64>,
    dump1: Vec<u8>,
    dump2: Vec<u8>,
}

async fn two_nights() -> TwoNights {
    let stack = Stack::start().await.unwrap();
    let mut objects: BTreeMap<String, Vec<u8>> = [
        ("briefe/1923/grete.pdf", noise(700_000, 1)),
        ("briefe/1923/otto.pdf", noise(10_000, 2)),
        ("fotos/hochzeit.jpg", noise(300_000, 3)),
        ("leer.txt", Vec::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in &objects {
        stack.s3.put(BUCKET, k, v.clone()).await.unwrap();
    }
    let rows1 = row_counts(&stack.pg, DATABASE).await.unwrap();
    let s1 = stack.run_sender().summary();
    let night1 = objects.clone();
    let dump1 = std::fs::read(s1["dump_file"].as_str().unwrap()).unwrap();

    let changed = noise(300_001, 4);
    stack
        .s3
        .put(BUCKET, "fotos/hochzeit.jpg", changed.clone())
        .await
        .unwrap();
    objects.insert("fotos/hochzeit.jpg".into(), changed);
    stack
        .s3
        .put(BUCKET, "neu/brief.pdf", noise(5_000, 5))
        .await
        .unwrap();
    objects.insert("neu/brief.pdf".into(), noise(5_000, 5));
    stack
        .s3
        .delete(BUCKET, "briefe/1923/otto.pdf")
        .await
        .unwrap();
    objects.remove("briefe/1923/otto.pdf");
    let c = stack.pg.client(DATABASE).await.unwrap();
    c.batch_execute("INSERT INTO personen (name) SELECT 'Neu ' || g FROM generate_series(1, 25) g; DELETE FROM meta.\"Schlagworte\" WHERE id <= 5;")
        .await
        .unwrap();
    let rows2 = row_counts(&stack.pg, DATABASE).await.unwrap();
    let s2 = stack.run_sender().summary();
    let dump2 = std::fs::read(s2["dump_file"].as_str().unwrap()).unwrap();
    TwoNights {
        snap1: s1["snapshot_id"].as_str().unwrap().to_string(),
        snap2: s2["snapshot_id"].as_str().unwrap().to_string(),
        stack,
        night1,
        night2: objects,
        rows1,
        rows2,
        dump1,
        dump2,
    }
}

fn entry(key: &str, data: &[u8], change: &str) -> Value {
    json!({"key": key, "size": data.len(), "hash": hash(data), "change": change})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_find_diff_and_dump_show_two_nights_exactly() {
    let t = two_nights().await;
    let (s, s1, s2) = (&t.stack, t.snap1.as_str(), t.snap2.as_str());
    let times: BTreeMap<String, String> = s
        .snapshots()
        .iter()
        .map(|r| {
            (
                r["snapshot_id"].as_str().unwrap().to_string(),
                r["time"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let n2 = &t.night2;

    // ls: every key against the night before.
    let ls = json_of(s, &["ls", s2, "--json"]);
    assert_eq!(
        ls,
        json!({
            "command": "ls",
            "ok": true,
            "snapshot_id": s2,
            "time": times[s2],
            "previous_snapshot_id": s1,
            "prefix": null,
            "objects": [
                entry("briefe/1923/grete.pdf", &n2["briefe/1923/grete.pdf"], "unchanged"),
                entry("fotos/hochzeit.jpg", &n2["fotos/hochzeit.jpg"], "changed"),
                entry("leer.txt", b"", "unchanged"),
                entry("neu/brief.pdf", &n2["neu/brief.pdf"], "new"),
            ],
            "bytes": 700_000 + 300_001 + 5_000,
        })
    );
    // The first snapshot has nothing before it: everything is new.
    let ls1 = json_of(s, &["ls", s1, "briefe/", "--json"]);
    assert_eq!(ls1["previous_snapshot_id"], Value::Null);
    assert_eq!(ls1["objects"].as_array().unwrap().len(), 2);
    assert!(ls1["objects"]
        .as_array()
        .unwrap()
        .iter()
        .all(|o| o["change"] == "new"));
    // --long adds the ETag (the bucket's) and the chunk count.
    let etags: BTreeMap<String, String> =
        s.s3.list(BUCKET)
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _, e)| (k, e))
            .collect();
    let long = json_of(s, &["ls", s2, "neu/", "--long", "--json"]);
    let mut want = entry("neu/brief.pdf", &n2["neu/brief.pdf"], "new");
    want["etag"] = json!(etags["neu/brief.pdf"]);
    want["chunks"] = json!(1);
    assert_eq!(long["objects"], json!([want]));
    assert_eq!(long["prefix"], "neu/");
    let text = String::from_utf8(ok(cli(s, &["ls", s2]))).unwrap();
    assert!(text.contains(&format!("compared with {s1}")), "{text}");
    assert!(text.contains("4 objects"), "{text}");

    // find: each distinct version with its first and last snapshot.
    let version = |data: &[u8], snaps: &[&str]| {
        let (first, last) = (snaps[0], snaps[snaps.len() - 1]);
        json!({"size": data.len(), "hash": hash(data),
               "first_snapshot_id": first, "first_time": times[first],
               "last_snapshot_id": last, "last_time": times[last],
               "snapshot_ids": snaps})
    };
    let found = json_of(s, &["find", "**/hochzeit.jpg", "--json"]);
    assert_eq!(
        found,
        json!({
            "command": "find",
            "ok": true,
            "snapshot_id": null,
            "glob": "**/hochzeit.jpg",
            "pattern": "**/hochzeit.jpg",
            "snapshots_searched": 2,
            "keys": [{"key": "fotos/hochzeit.jpg", "versions": [
                version(&t.night1["fotos/hochzeit.jpg"], &[s1]),
                version(&n2["fotos/hochzeit.jpg"], &[s2]),
            ]}],
            "hints": [],
        })
    );
    // A name without `/` is the last component of a key, at any depth (as restic's find).
    let by_name = json_of(s, &["find", "hochzeit.jpg", "--json"]);
    assert_eq!(by_name["pattern"], "**/hochzeit.jpg");
    assert_eq!(by_name["keys"], found["keys"]);
    let found = json_of(s, &["find", "briefe/1923/*", "--json"]);
    assert_eq!(
        found["keys"],
        json!([
            {"key": "briefe/1923/grete.pdf",
             "versions": [version(&n2["briefe/1923/grete.pdf"], &[s1, s2])]},
            {"key": "briefe/1923/otto.pdf",
             "versions": [version(&t.night1["briefe/1923/otto.pdf"], &[s1])]},
        ])
    );
    // `*` does not cross `/`; a glob without `/` is a name at any depth.
    let none = json_of(s, &["find", "briefe/*.pdf", "--json"]);
    assert_eq!(none["keys"], json!([]));
    let pdfs = json_of(s, &["find", "*.pdf", "--json"]);
    let keys: Vec<&str> = pdfs["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "briefe/1923/grete.pdf",
            "briefe/1923/otto.pdf",
            "neu/brief.pdf"
        ]
    );
    // A folder named without its `/**` matches nothing, and the hint says the folder form.
    let folder = cli(s, &["find", "briefe/1923"]);
    let text = String::from_utf8(ok(folder)).unwrap();
    assert!(
        text.contains("0 key(s) match briefe/1923 in 2 snapshot(s)")
            && text.contains(
                "hint: briefe/1923 is a folder: 'briefe/1923/**' matches everything below it"
            ),
        "{text}"
    );

    // diff: objects, bytes, and the tables' row counts as the receiver counted them.
    let d = json_of(s, &["diff", s1, s2, "--json"]);
    let obj = |k: &str, data: &[u8]| json!({"key": k, "size": data.len(), "hash": hash(data)});
    let tables: Vec<Value> = t
        .rows1
        .keys()
        .chain(t.rows2.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|k| {
            let (a, b) = (t.rows1.get(k).copied(), t.rows2.get(k).copied());
            json!({"table": k, "old_rows": a, "new_rows": b,
                   "change": b.unwrap_or(0) as i64 - a.unwrap_or(0) as i64})
        })
        .collect();
    assert_eq!(
        d,
        json!({
            "command": "diff",
            "ok": true,
            "snapshot_id": s2,
            "old_snapshot_id": s1,
            "added": [obj("neu/brief.pdf", &n2["neu/brief.pdf"])],
            "removed": [obj("briefe/1923/otto.pdf", &t.night1["briefe/1923/otto.pdf"])],
            "changed": [{
                "key": "fotos/hochzeit.jpg",
                "old_size": 300_000, "new_size": 300_001,
                "old_hash": hash(&t.night1["fotos/hochzeit.jpg"]),
                "new_hash": hash(&n2["fotos/hochzeit.jpg"]),
            }],
            "unchanged": 2,
            "bytes": {
                "added": 5_000, "removed": 10_000,
                "changed_old": 300_000, "changed_new": 300_001,
                "old_objects": 700_000 + 10_000 + 300_000,
                "new_objects": 700_000 + 300_001 + 5_000,
                "old_dump": t.dump1.len(), "new_dump": t.dump2.len(),
            },
            "dump_changed": true,
            "old_row_counts": "receiver",
            "new_row_counts": "receiver",
            "tables": tables,
        })
    );
    let text = String::from_utf8(ok(cli(s, &["diff", s1, s2]))).unwrap();
    assert!(text.contains("public.personen"), "{text}");
    assert!(text.contains("+25"), "{text}");
    assert!(text.contains("-5"), "{text}");

    // dump: one object (an old version) and the database dump, byte for byte.
    assert_eq!(
        ok(cli(s, &["dump", s1, "fotos/hochzeit.jpg"])),
        t.night1["fotos/hochzeit.jpg"]
    );
    assert_eq!(ok(cli(s, &["dump", "latest", "leer.txt"])), b"");
    assert_eq!(ok(cli(s, &["dump", s1, "--database"])), t.dump1);
    assert_eq!(ok(cli(s, &["dump", s2, "--database"])), t.dump2);
    // A key the snapshot lacks is a usage error (it was 1 before the table held).
    let missing = cli(s, &["dump", s2, "briefe/1923/otto.pdf"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("has no object \"briefe/1923/otto.pdf\""),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    // dump refuses a terminal as stdout (util-linux `script` gives it one) unless told.
    let on_tty = |extra: &str| {
        let cmd = format!(
            "{} dump {s2} leer.txt --repo {} {extra}",
            bin("backup-receiver").display(),
            s.repo().display()
        );
        Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let refused = on_tty("");
    assert_eq!(refused.status.code(), Some(2), "usage (it was 1)");
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("stdout is a terminal"),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );
    assert_eq!(on_tty("--to-terminal").status.code(), Some(0));

    // Partial restores: a prefix, and one key, byte for byte.
    let out = s.dir.path().join("nur-briefe");
    ok(cli(
        s,
        &[
            "restore",
            s2,
            "--include",
            "briefe/**",
            "--objects-out",
            out.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        read_tree(&out),
        BTreeMap::from([(
            "briefe/1923/grete.pdf".to_string(),
            n2["briefe/1923/grete.pdf"].clone()
        )])
    );
    let out = s.dir.path().join("otto");
    let o = cli(
        s,
        &[
            "restore",
            s1,
            "--include",
            "briefe/1923/otto.pdf",
            "--objects-out",
            out.to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("selected 1 of 4 objects"));
    ok(o);
    assert_eq!(
        read_tree(&out),
        BTreeMap::from([(
            "briefe/1923/otto.pdf".to_string(),
            t.night1["briefe/1923/otto.pdf"].clone()
        )])
    );
    let out = s.dir.path().join("ohne-fotos");
    ok(cli(
        s,
        &[
            "restore",
            s2,
            "--exclude",
            "fotos/**",
            "--exclude",
            "*.txt",
            "--objects-out",
            out.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        read_tree(&out).into_keys().collect::<Vec<_>>(),
        ["briefe/1923/grete.pdf", "neu/brief.pdf"]
    );
    let out = s.dir.path().join("nichts");
    let o = cli(
        s,
        &[
            "restore",
            s2,
            "--include",
            "gibt/es/nicht/**",
            "--objects-out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no object of snapshot"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.exists(), "nothing is written when nothing matches");

    // DEPLOYMENT.md §5.8: a bundle of one folder, for the single-file rollback.
    let bundle = s.dir.path().join("bundle");
    let o = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/restore/export-bundle.sh"
    ))
    .args([s1, bundle.to_str().unwrap(), "briefe/1923/**", "leer.txt"])
    .env("REPO", s.repo())
    .env("BACKUP_RECEIVER", bin("backup-receiver"))
    .env("RUST_LOG", "warn")
    .env_remove("BUNDLE_OWNER")
    .env_remove("SUDO_USER")
    .output()
    .unwrap();
    ok(o);
    assert_eq!(
        read_tree(&bundle.join("objects")),
        t.night1
            .iter()
            .filter(|(k, _)| k.starts_with("briefe/1923/") || *k == "leer.txt")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    );
    assert_eq!(std::fs::read(bundle.join("archiv.dump")).unwrap(), t.dump1);

    // --config (repository from the file) and BACKUP_RECEIVER_CONFIG give the same.
    let config = s.receiver.config.to_str().unwrap();
    let by_config = receiver_cli(&["ls", s2, "--json", "--config", config]);
    assert_eq!(serde_json::from_slice::<Value>(&ok(by_config)).unwrap(), ls);
    for args in [
        vec!["ls", s2, "--json"],
        vec!["snapshots", "--json"],
        vec!["verify", "--json"],
        vec!["prune", "--dry-run"],
    ] {
        let o = Command::new(bin("backup-receiver"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .env("BACKUP_RECEIVER_CONFIG", config)
            .output()
            .unwrap();
        ok(o);
    }
    let no_repo = Command::new(bin("backup-receiver"))
        .args(["ls", s2])
        .env_remove("BACKUP_RECEIVER_CONFIG")
        .output()
        .unwrap();
    assert_eq!(no_repo.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_repo.stderr).contains("give --repo DIR or --config FILE"));

    // A closed stdout ends every command quietly: exit 141, nothing on stderr.
    let repo = s.repo().to_str().unwrap();
    for args in [
        vec!["snapshots", "--json"],
        vec!["snapshots"],
        vec!["ls", s2],
        vec!["ls", s2, "--json"],
        vec!["find", "**", "--json"],
        vec!["diff", s1, s2],
        vec!["dump", s2, "briefe/1923/grete.pdf"],
        vec!["dump", s2, "--database"],
        vec!["verify", "--json"],
        vec!["verify"],
        vec!["prune", "--dry-run"],
        vec!["gc", "--dry-run"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(bin("backup-receiver"))
            .args(&args)
            .args(["--repo", repo])
            .env("RUST_LOG", "warn")
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(
            (
                o.status.code(),
                String::from_utf8_lossy(&o.stderr).into_owned()
            ),
            (Some(141), String::new()),
            "{args:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_into_the_live_bucket_leaves_other_content_alone_unless_overwrite() {
    let stack = Stack::start().await.unwrap();
    let orig: BTreeMap<&str, Vec<u8>> = BTreeMap::from([
        ("akten/verloren.pdf", noise(200_000, 11)),
        ("akten/gleich-gross.pdf", noise(50_000, 12)),
        ("akten/anders.pdf", noise(60_000, 13)),
        ("akten/unveraendert.pdf", noise(70_000, 14)),
        ("fotos/nicht-gewaehlt.jpg", noise(80_000, 15)),
    ]);
    for (k, v) in &orig {
        stack.s3.put(BUCKET, k, v.clone()).await.unwrap();
    }
    let snap = stack.run_sender().summary()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    // After the night: one object lost, two rewritten (one at the same size), one new
    // object only the live bucket has, one outside the restore's glob changed.
    stack.s3.delete(BUCKET, "akten/verloren.pdf").await.unwrap();
    let same_size = noise(50_000, 99);
    let other_size = noise(1_234, 98);
    let outside = noise(80_000, 97);
    let live_only = b"neu seit der Nacht".to_vec();
    for (k, v) in [
        ("akten/gleich-gross.pdf", &same_size),
        ("akten/anders.pdf", &other_size),
        ("fotos/nicht-gewaehlt.jpg", &outside),
        ("akten/neu.pdf", &live_only),
    ] {
        stack.s3.put(BUCKET, k, v.clone()).await.unwrap();
    }
    let d = stack.dir.path();
    let (ak, sk) = (d.join("s3-access-key"), d.join("s3-secret-key"));
    let endpoint = stack.s3.endpoint();
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            snap.as_str(),
            "--objects-to-s3",
            "--s3-endpoint",
            &endpoint,
            "--s3-bucket",
            BUCKET,
            "--s3-access-key-file",
            ak.to_str().unwrap(),
            "--s3-secret-key-file",
            sk.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        cli(&stack, &args)
    };
    let bucket = || async {
        let mut all = BTreeMap::new();
        for (k, _, _) in stack.s3.list(BUCKET).await.unwrap() {
            let v = stack.s3.get(BUCKET, &k).await.unwrap();
            all.insert(k, v);
        }
        all
    };
    let o = restore(&["--include", "akten/**"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("object \"akten/gleich-gross.pdf\" SKIPPED: the bucket holds other content there (50000 bytes, blake3 "), "{err}");
    assert!(err.contains("object \"akten/anders.pdf\" SKIPPED: the bucket holds other content there (1234 bytes)"), "{err}");
    assert!(err.contains("objects to S3: 1 object, 200000 bytes verified and uploaded; 1 already identical; 2 skipped"), "{err}");
    let want = BTreeMap::from([
        (
            "akten/verloren.pdf".to_string(),
            orig["akten/verloren.pdf"].clone(),
        ),
        ("akten/gleich-gross.pdf".to_string(), same_size.clone()),
        ("akten/anders.pdf".to_string(), other_size.clone()),
        (
            "akten/unveraendert.pdf".to_string(),
            orig["akten/unveraendert.pdf"].clone(),
        ),
        ("akten/neu.pdf".to_string(), live_only.clone()),
        ("fotos/nicht-gewaehlt.jpg".to_string(), outside.clone()),
    ]);
    assert_eq!(bucket().await, want);

    // With --overwrite the one object named is replaced; the rest stays.
    let o = restore(&["--include", "akten/gleich-gross.pdf", "--overwrite"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("other content in the bucket replaced (--overwrite)"),
        "{err}"
    );
    let o = restore(&[
        "--include",
        "akten/**",
        "--overwrite",
        "--exclude",
        "akten/anders.pdf",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut want = want;
    want.insert(
        "akten/gleich-gross.pdf".into(),
        orig["akten/gleich-gross.pdf"].clone(),
    );
    assert_eq!(bucket().await, want);
}
