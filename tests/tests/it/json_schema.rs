//! One JSON convention: every command that reports prints, with `--json`, one envelope
//! that docs/json/schema.json describes, with no key twice and the snapshot id always
//! named `snapshot_id`. Each command is run for real on a repository the real stack made
//! (nights from the real sender, a suspect one, an acknowledgement, a rejection, a prune,
//! an undelete, restores into a directory and a bucket, a drill), and on failures.

use std::collections::BTreeMap;
use std::process::{Command, Output};

use backup_tests::stack::{bin, noise, receiver_cli, Stack, BUCKET};
use serde_json::Value;

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/json/schema.json"
    ))
    .unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::draft202012::new(&schema).expect("docs/json/schema.json is a valid schema")
}

/// A JSON value that refuses a key twice in one object (serde_json keeps the last).
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = NoDuplicateKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut seen = std::collections::BTreeSet::new();
                while let Some(k) = m.next_key::<String>()? {
                    if !seen.insert(k.clone()) {
                        return Err(serde::de::Error::custom(format!("key {k:?} twice")));
                    }
                    m.next_value::<NoDuplicateKeys>()?;
                }
                Ok(NoDuplicateKeys)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<Self::Value, A::Error> {
                while s.next_element::<NoDuplicateKeys>()?.is_some() {}
                Ok(NoDuplicateKeys)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(NoDuplicateKeys)
            }
        }
        d.deserialize_any(V)
    }
}

/// Names a snapshot id must never have (the names of the time before the convention).
const OLD_NAMES: [&str; 6] = ["id", "snapshot", "first", "last", "old", "new"];

fn no_old_names(v: &Value, path: &str) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                assert!(
                    !OLD_NAMES.contains(&k.as_str()),
                    "{path}.{k}: a snapshot id is `snapshot_id`"
                );
                no_old_names(v, &format!("{path}.{k}"));
            }
        }
        Value::Array(a) => a.iter().for_each(|v| no_old_names(v, path)),
        _ => {}
    }
}

struct Checker {
    schema: jsonschema::Validator,
    seen: BTreeMap<String, (usize, usize)>,
}

impl Checker {
    /// Checks one command's stdout; returns the report.
    fn check(&mut self, what: &str, out: &Output, ok: bool) -> Value {
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str::<NoDuplicateKeys>(&text).unwrap_or_else(|e| {
            panic!(
                "{what}: {e}\n{text}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let v: Value = serde_json::from_str(&text).unwrap();
        let errors: Vec<String> = self
            .schema
            .iter_errors(&v)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{what}: {errors:#?}\n{v:#}");
        no_old_names(&v, what);
        assert_eq!(v["ok"], ok, "{what}: {v:#}");
        assert_eq!(
            out.status.success(),
            ok,
            "{what}: exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        if !ok {
            assert_eq!(
                v["error"]["exit_code"].as_i64(),
                out.status.code().map(i64::from),
                "{what}"
            );
        }
        let e = self
            .seen
            .entry(v["command"].as_str().unwrap().to_string())
            .or_default();
        if ok {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
        v
    }
}

fn run(stack: &Stack, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend(["--json", "--repo", stack.repo().to_str().unwrap()]);
    receiver_cli(&all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_prints_one_envelope_the_schema_describes() {
    let mut c = Checker {
        schema: schema(),
        seen: BTreeMap::new(),
    };
    let mut stack = Stack::start().await.unwrap();
    let keys: Vec<String> = (0..10).map(|i| format!("scans/1923/{i:03}.png")).collect();
    for (i, k) in keys.iter().enumerate() {
        stack
            .s3
            .put(BUCKET, k, noise(20_000, i as u64))
            .await
            .unwrap();
    }
    // Night 1, good; night 2 loses half the bucket: the receiver flags it (exit 7, still
    // one report, ok false); night 3 is good again.
    let n1 = c.check("run", &stack.run_sender().output, true);
    let first = n1["snapshot_id"].as_str().unwrap().to_string();
    for k in &keys[5..] {
        stack.s3.delete(BUCKET, k).await.unwrap();
    }
    let n2 = c.check("run suspect", &stack.run_sender().output, false);
    assert_eq!(n2["error"]["kind"], "suspect");
    let second = n2["snapshot_id"].as_str().unwrap().to_string();
    c.check(
        "ack",
        &run(&stack, &["ack", &second, "--note", "cleaned up"]),
        true,
    );
    for k in &keys[5..] {
        stack.s3.put(BUCKET, k, noise(20_000, 99)).await.unwrap();
    }
    let third = c.check("run 3", &stack.run_sender().output, true)["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();

    let list = c.check("snapshots", &run(&stack, &["snapshots"]), true);
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 3);
    c.check("ls", &run(&stack, &["ls", "latest", "--long"]), true);
    c.check(
        "ls as-of",
        &run(&stack, &["ls", "--as-of", "2999-01-01T00:00:00Z", "scans/"]),
        true,
    );
    c.check("find", &run(&stack, &["find", "007.png"]), true);
    let none = c.check("find nothing", &run(&stack, &["find", "scans/1923"]), true);
    assert!(!none["hints"].as_array().unwrap().is_empty());
    c.check("diff", &run(&stack, &["diff", &first, &third]), true);
    c.check("verify", &run(&stack, &["verify", "--read-data"]), true);
    c.check("gc", &run(&stack, &["gc", "--dry-run"]), true);
    let d = stack.dir.path().to_path_buf();
    let restored = c.check(
        "restore",
        &run(
            &stack,
            &[
                "restore",
                "latest~1",
                "--include",
                "scans/1923",
                "--dump-out",
                d.join("archiv.dump").to_str().unwrap(),
                "--objects-out",
                d.join("objects").to_str().unwrap(),
            ],
        ),
        true,
    );
    assert_eq!(restored["snapshot_id"], second.as_str());
    assert_eq!(restored["objects"]["restored"].as_array().unwrap().len(), 5);
    let (ak, sk) = (d.join("s3-access-key"), d.join("s3-secret-key"));
    let endpoint = stack.s3.endpoint();
    let s3_args = |snapshot: &str| {
        vec![
            "restore".to_string(),
            snapshot.to_string(),
            "--objects-to-s3".into(),
            "--s3-endpoint".into(),
            endpoint.clone(),
            "--s3-bucket".into(),
            BUCKET.into(),
            "--s3-access-key-file".into(),
            ak.to_str().unwrap().into(),
            "--s3-secret-key-file".into(),
            sk.to_str().unwrap().into(),
        ]
    };
    // Night 1's versions of 005..009 differ from the bucket's: skipped (exit 4, ok false).
    let args = s3_args(&first);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let skipped = c.check("restore to s3", &run(&stack, &refs), false);
    assert_eq!(skipped["error"]["kind"], "restore_incomplete");
    assert_eq!(skipped["s3"]["skipped"].as_array().unwrap().len(), 5);
    assert_eq!(skipped["s3"]["identical"].as_array().unwrap().len(), 5);

    // A drill of the newest night in the sandbox.
    let scratch = backup_tests::stack::drill_scratch_dir();
    let config = d.join("drill.toml");
    let base = std::fs::read_to_string(&stack.receiver.config).unwrap();
    std::fs::write(
        &config,
        format!(
            "{base}\n[drill]\nscratch_dir = \"{}\"\n",
            scratch.path().display()
        ),
    )
    .unwrap();
    let drill = Command::new(bin("backup-receiver"))
        .args(["drill", "--json", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let drill = c.check("drill", &drill, true);
    assert_eq!(drill["snapshot_id"], third.as_str());

    // Reject night 1: older than every daily-kept snapshot, prune moves it to the trash,
    // and undelete brings it back.
    c.check("reject", &run(&stack, &["reject", &first]), true);
    c.check("prune dry", &run(&stack, &["prune", "--dry-run"]), true);
    let pruned = c.check("prune", &run(&stack, &["prune"]), true);
    assert_eq!(pruned["pruned_snapshot_ids"], serde_json::json!([first]));
    c.check("undelete", &run(&stack, &["undelete", &first]), true);

    // Failures: each still one envelope.
    for (what, args) in [
        ("ls nothing", vec!["ls", "no-such"]),
        ("restore usage", vec!["restore", "", "--dump-out", "x"]),
        ("undelete again", vec!["undelete", &first]),
        ("ack a good one", vec!["ack", &third]),
        ("reject twice", vec!["reject", &first]),
        ("diff nothing", vec!["diff", "2001-01-01"]),
        (
            "find no repo",
            vec!["find", "x", "--config", "/nonexistent.toml"],
        ),
        (
            "prune no repo",
            vec!["prune", "--config", "/nonexistent.toml"],
        ),
        ("gc no repo", vec!["gc", "--config", "/nonexistent.toml"]),
        (
            "snapshots no repo",
            vec!["snapshots", "--config", "/nonexistent.toml"],
        ),
        ("drill nothing", vec!["drill", "no-such"]),
    ] {
        let v = c.check(what, &run(&stack, &args), false);
        assert_eq!(v.as_object().unwrap().len(), 4, "{what}: {v:#}");
    }
    // The verify that finds damage: a chunk of night 3 rots.
    let m = backup_receiver::store::open::repository(stack.repo())
        .unwrap()
        .load_manifest(&third)
        .unwrap();
    let id = m.objects[9].chunks[0].id;
    let path = backup_receiver::store::fs::chunk_path(stack.repo(), &id);
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&path, b"\0rotten").unwrap();
    let damaged = c.check(
        "verify damage",
        &run(&stack, &["verify", "--read-data"]),
        false,
    );
    assert_eq!(damaged["error"]["kind"], "damage");
    assert_eq!(
        damaged["damage"][0]["affected"][0]["snapshot_id"],
        third.as_str()
    );

    // The sender's failure: a pg_dump that does not exist (exit 3, source).
    stack
        .write_sender_config(&["/nonexistent/pg_dump"])
        .unwrap();
    let failed = c.check("run failure", &stack.run_sender().output, false);
    assert_eq!(failed["error"]["kind"], "source");

    let commands: Vec<&str> = c.seen.keys().map(String::as_str).collect();
    assert_eq!(
        commands,
        [
            "ack",
            "diff",
            "drill",
            "find",
            "gc",
            "ls",
            "prune",
            "reject",
            "restore",
            "run",
            "snapshots",
            "undelete",
            "verify"
        ]
    );
    for (command, (ok, failed)) in &c.seen {
        assert!(
            *ok > 0 && *failed > 0,
            "{command}: {ok} reports, {failed} failures"
        );
    }
}
