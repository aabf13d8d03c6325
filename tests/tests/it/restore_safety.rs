//! `backup-receiver restore` writes untrusted names: it must restore every key exactly
//! (whatever names the keys collide with), never write through anything planted in the
//! target, leave nothing readable by other users, and let one impossible name fail alone.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use backup_tests::checks::read_tree;
use backup_tests::stack::{bin, noise, Stack, BUCKET};

/// `backup-receiver restore SNAPSHOT --repo … ARGS` with the umask a root shell has.
fn restore(stack: &Stack, snapshot: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("backup-receiver"));
    cmd.args([
        "restore",
        snapshot,
        "--repo",
        stack.repo().to_str().unwrap(),
    ])
    .args(args)
    .env("RUST_LOG", "warn");
    // SAFETY: umask(2) is async-signal-safe and has no preconditions.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    cmd.output().expect("run backup-receiver restore")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file and directory below `root` with its permission bits.
fn modes(root: &Path) -> Vec<(String, bool, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            out.push((p.display().to_string(), m.is_dir(), m.mode() & 0o7777));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_named_like_staging_files_or_differing_in_case_restore_exactly_and_privately() {
    let stack = Stack::start().await.unwrap();
    let mut objects: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    // The report's case: 20 pairs `x` and `x.partial`; then every suffix and prefix the
    // restore code or its temporary-file library uses, and names differing only in case.
    for i in 0..20u64 {
        objects.insert(format!("paare/{i}/x"), noise(3000 + i as usize, i));
        objects.insert(format!("paare/{i}/x.partial"), noise(2000, 100 + i));
    }
    for (i, key) in [
        "x",
        "x.partial",
        "x.PARTIAL",
        "x.tmp",
        "X",
        ".restore-staging-1",
        ".restore-x",
        ".tmpAbCdEf",
        "0",
        "1",
        "fotos/a.jpg",
        "fotos/A.jpg",
        "Fotos/a.jpg",
    ]
    .iter()
    .enumerate()
    {
        objects.insert(key.to_string(), noise(1000 + i * 7, 500 + i as u64));
    }
    for (k, v) in &objects {
        stack.s3.put(BUCKET, k, v.clone()).await.unwrap();
    }
    let summary = stack.run_sender().summary();
    assert_eq!(summary["objects_total"], objects.len() as u64);

    let parent = tempfile::tempdir().unwrap();
    let target = parent.path().join("ziel");
    let dump = parent.path().join("archiv.dump");
    let o = restore(
        &stack,
        "latest",
        &[
            "--objects-out",
            target.to_str().unwrap(),
            "--dump-out",
            dump.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read_tree(&target), objects, "{}", stderr(&o));
    let local = std::fs::read(summary["dump_file"].as_str().unwrap()).unwrap();
    assert_eq!(std::fs::read(&dump).unwrap(), local);
    // Private whatever the umask (0022 here): files 0600, directories 0700.
    let m = modes(&target);
    assert_eq!(m.iter().filter(|(_, dir, _)| !dir).count(), objects.len());
    for (path, dir, mode) in &m {
        assert_eq!(*mode, if *dir { 0o700 } else { 0o600 }, "{path}");
    }
    assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(std::fs::metadata(&dump).unwrap().mode() & 0o7777, 0o600);
    // Nothing staged is left beside the target.
    let mut left: Vec<String> = std::fs::read_dir(parent.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["archiv.dump", "ziel"]);

    // The repository the receiver created is private too (directories 0700, files 0400).
    for (path, dir, mode) in modes(stack.repo()) {
        if path.ends_with("audit.log") {
            continue;
        }
        if dir {
            assert_eq!(mode, 0o700, "{path}");
        } else if path.contains("/chunks/") || path.contains("/snapshots/") {
            assert_eq!(mode, 0o400, "{path}");
        }
    }
    assert_eq!(
        std::fs::metadata(stack.repo()).unwrap().mode() & 0o777,
        0o700
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_link_or_file_is_refused_and_nothing_is_written_through_it() {
    let stack = Stack::start().await.unwrap();
    for (k, v) in [("briefe/a.txt", b"a".to_vec()), ("b.txt", b"b".to_vec())] {
        stack.s3.put(BUCKET, k, v).await.unwrap();
    }
    stack.run_sender().summary();
    let d = tempfile::tempdir().unwrap();
    let outside = d.path().join("outside");
    std::fs::create_dir(&outside).unwrap();

    // A target holding a link planted where a key's directory will go.
    let target = d.path().join("mit-link");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("briefe")).unwrap();
    let o = restore(
        &stack,
        "latest",
        &["--objects-out", target.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(8), "{}", stderr(&o)); // refused by policy
    assert!(stderr(&o).contains("is not empty"), "{}", stderr(&o));
    // A target that is itself a link.
    let link = d.path().join("ist-link");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let o = restore(&stack, "latest", &["--objects-out", link.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(8), "{}", stderr(&o)); // refused by policy
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    // A dump path that is a dangling link, and one that is an existing file.
    let dangling = d.path().join("dump-link");
    std::os::unix::fs::symlink(outside.join("stolen.dump"), &dangling).unwrap();
    let o = restore(
        &stack,
        "latest",
        &["--dump-out", dangling.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(8), "{}", stderr(&o)); // refused by policy
    assert!(stderr(&o).contains("exists already"), "{}", stderr(&o));
    let existing = d.path().join("existing.dump");
    std::fs::write(&existing, b"keep me").unwrap();
    let o = restore(
        &stack,
        "latest",
        &["--dump-out", existing.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(8), "{}", stderr(&o)); // refused by policy
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    // Nothing went through any link.
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none());

    // An empty directory of ours is fine, and is made private.
    let empty = d.path().join("leer");
    std::fs::create_dir(&empty).unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = restore(
        &stack,
        "latest",
        &["--objects-out", empty.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(empty.join("briefe/a.txt")).unwrap(), b"a");
    assert_eq!(std::fs::metadata(&empty).unwrap().mode() & 0o777, 0o700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_the_file_system_cannot_hold_fails_alone_with_exit_code_4_and_is_escaped() {
    let stack = Stack::start().await.unwrap();
    for i in 0..5 {
        stack
            .s3
            .put(BUCKET, &format!("ok/{i}.txt"), noise(500, i))
            .await
            .unwrap();
    }
    let snap = stack.run_sender().summary()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Planted on the NAS: a key with a 306-byte component that also holds terminal
    // controls (S3 allows 1024-byte keys; ext4 allows 255-byte names).
    let long_key = format!("lang/{}\x1b[31m\x07.txt", "ä".repeat(148));
    let snaps = stack.repo().join("snapshots");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(snaps.join(format!("{snap}.json"))).unwrap())
            .unwrap();
    let mut planted = m["objects"][0].clone();
    planted["key"] = long_key.clone().into();
    m["objects"].as_array_mut().unwrap().insert(2, planted);
    m["id"] = "planted".into();
    std::fs::write(snaps.join("planted.json"), serde_json::to_vec(&m).unwrap()).unwrap();

    let parent = tempfile::tempdir().unwrap();
    let target = parent.path().join("ziel");
    let o = restore(
        &stack,
        "planted",
        &["--objects-out", target.to_str().unwrap()],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(
        err.contains("longer than a file name may be (255 bytes)")
            && err.contains("restore incomplete: 1 of 6"),
        "{err}"
    );
    assert!(!err.contains('\x1b') && !err.contains('\x07'), "{err:?}");
    assert!(err.contains(r"\x1b[31m\x07.txt"), "{err}");
    let restored = read_tree(&target);
    assert_eq!(restored.len(), 5, "{:?}", restored.keys());
    assert!(!target.join("lang").exists());
}
