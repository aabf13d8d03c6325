//! Verification and healing end to end: a chunk rots on the NAS, `verify --read-data`
//! reports it with the snapshot and object it affects and moves it to quarantine; the next
//! nightly run, although the object did not change at the source, sends it again (the
//! receiver's PreviousObjects leaves it out), and the old snapshot restores exactly again.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use backup_tests::checks::{assert_verified, receiver_cmd, restore};
use backup_tests::stack::{noise, Stack, BUCKET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_chunk_is_uploaded_again_and_old_snapshots_heal() {
    let stack = Stack::start().await.unwrap();
    let mut model = BTreeMap::new();
    for (key, data) in [
        ("briefe/oma.pdf", noise(600_000, 1)),
        ("fotos/haus.jpg", noise(900_000, 2)),
    ] {
        stack.s3.put(BUCKET, key, data.clone()).await.unwrap();
        model.insert(key.to_string(), data);
    }
    let s1 = stack.run_sender().summary();
    let snap1 = s1["snapshot_id"].as_str().unwrap().to_string();
    let dump1 = std::fs::read(s1["dump_file"].as_str().unwrap()).unwrap();
    let repo = stack.repo().to_path_buf();

    // Rot one chunk of the photo.
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo.join("snapshots").join(format!("{snap1}.json"))).unwrap(),
    )
    .unwrap();
    let photo = m["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["key"] == "fotos/haus.jpg")
        .unwrap();
    let hex = photo["chunks"][0]["id"].as_str().unwrap().to_string();
    let path = repo.join("chunks").join(&hex[..2]).join(&hex);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let out = receiver_cmd(
        &["verify", "--read-data", "--repo", repo.to_str().unwrap()],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains(&format!("Corrupt chunk {hex}")), "{text}");
    assert!(
        text.contains(&format!("affects snapshot {snap1} object fotos/haus.jpg")),
        "{text}"
    );
    assert!(repo.join("quarantine").join(&hex).is_file());
    assert!(!path.exists());

    // Nothing changed at the source, yet the photo is read and sent again.
    let s2 = stack.run_sender().summary();
    assert_eq!(s2["objects_unchanged"], 1, "{s2}");
    assert_eq!(s2["objects_new"], 1, "{s2}");
    assert_eq!(s2["object_bytes_read"], 900_000, "{s2}");
    assert!(path.is_file(), "the chunk is back");
    assert_verified(&repo);
    let r = restore(&repo, &snap1, stack.dir.path());
    assert_eq!(r.objects, model);
    assert_eq!(r.dump, dump1);
}
