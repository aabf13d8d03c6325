use super::*;
use crate::store::error::StoreErrorKind;

#[test]
fn a_chunk_the_file_system_cannot_look_up_is_an_error_never_absent() {
    let d = tempfile::tempdir().unwrap();
    let store = FsStore::open_or_init(d.path()).unwrap();
    let id = ChunkId([0xab; 32]);
    // `chunks/ab` is a file: every lookup below it fails with ENOTDIR, which is no answer.
    fs::write(d.path().join("chunks/ab"), b"").unwrap();
    fn kind<T: std::fmt::Debug>(r: Result<T, StoreError>) -> StoreErrorKind {
        r.unwrap_err().kind()
    }
    assert_eq!(kind(store.has_chunk(&id)), StoreErrorKind::Other);
    assert_eq!(
        kind(store.mark_in_use(&id, SystemTime::now())),
        StoreErrorKind::Other
    );
    assert_eq!(kind(store.chunk_size(&id)), StoreErrorKind::Other);
    assert_eq!(kind(store.read_chunk(&id)), StoreErrorKind::Other);
    assert_eq!(kind(store.missing(&[id])), StoreErrorKind::Other);
    let e = store.has_chunk(&id).unwrap_err();
    assert_eq!(e.at(), chunk_path(d.path(), &id).display().to_string());
    // A chunk that is simply not there is "no".
    let absent = ChunkId([0xcd; 32]);
    assert!(!store.has_chunk(&absent).unwrap());
    assert!(!store.mark_in_use(&absent, SystemTime::now()).unwrap());
    assert_eq!(store.missing(&[absent]).unwrap(), [absent]);
    assert_eq!(store.chunk_size(&absent).unwrap(), None);
}

#[test]
fn a_missing_repository_says_so_and_an_existing_one_opens() {
    let d = tempfile::tempdir().unwrap();
    let nowhere = d.path().join("nope");
    let e = FsStore::open(&nowhere).unwrap_err();
    assert!(e.is_not_found());
    assert_eq!(
        e.to_string(),
        format!("no repository at {} (it does not exist)", nowhere.display())
    );
    assert!(!nowhere.exists(), "opening creates nothing");
    let e = FsStore::open(d.path()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "no repository at {} (it has no repository.json)",
            d.path().display()
        )
    );
    FsStore::open_or_init(&nowhere).unwrap();
    FsStore::open(&nowhere).unwrap();
}

#[test]
fn listing_a_space_that_is_not_a_directory_is_an_error_and_an_absent_one_is_empty() {
    let d = tempfile::tempdir().unwrap();
    let store = FsStore::open_or_init(d.path()).unwrap();
    assert!(store.list(Space::Rejects).unwrap().is_empty());
    fs::write(d.path().join("rejects"), b"").unwrap();
    assert_eq!(
        store.list(Space::Rejects).unwrap_err().kind(),
        StoreErrorKind::Other
    );
    assert!(store.has_object(Space::Rejects, "s1.json").is_err());
}
