//! The commit rules on an in-memory store: no gRPC, no disk.

use std::collections::{BTreeMap, HashMap};

use backup_common::chunk::{ChunkId, MIN_CHUNK};
use backup_common::manifest::{
    ChunkRef, DumpEntry, Manifest, Measured, ObjectEntry, SnapshotStats, FORMAT_VERSION,
};

use super::*;

#[derive(Default)]
struct Mem {
    chunks: HashMap<ChunkId, Vec<u8>>,
    older: Vec<Manifest>,
}

impl Mem {
    fn put(&mut self, data: &[u8]) -> ChunkRef {
        let id = ChunkId::of(data);
        self.chunks.insert(id, data.to_vec());
        ChunkRef {
            id,
            len: data.len() as u32,
        }
    }
}

impl StoreFacts for Mem {
    fn usable(&self, id: &ChunkId) -> Result<bool, RepoError> {
        Ok(self.chunks.contains_key(id))
    }
    fn read(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, RepoError> {
        Ok(self.chunks.get(id).cloned())
    }
    fn older_good(&self, visit: &mut dyn FnMut(&Manifest) -> bool) -> Result<(), RepoError> {
        for m in self.older.iter().rev() {
            if !visit(m) {
                break;
            }
        }
        Ok(())
    }
}

const LIMITS: CommitLimits = CommitLimits {
    max_objects: 100,
    max_refs: 1000,
    max_manifest_bytes: 1 << 20,
    max_read_bytes: 64 << 20,
};

fn object(key: &str, data: &[u8], chunks: Vec<ChunkRef>) -> ObjectEntry {
    ObjectEntry {
        key: key.into(),
        size: data.len() as u64,
        etag: format!("\"{}\"", &ChunkId::of(data).to_hex()[..8]),
        hash: ChunkId::of(data),
        chunks,
    }
}

/// A minimal custom-format archive header and empty TOC (PG15, archive version 1.14).
fn pgdmp() -> Vec<u8> {
    let mut d = b"PGDMP".to_vec();
    d.extend_from_slice(&[1, 14, 0, 4, 8, 1]);
    let int = |d: &mut Vec<u8>, v: i32| {
        d.push(u8::from(v < 0));
        d.extend_from_slice(&v.unsigned_abs().to_le_bytes());
    };
    int(&mut d, 0); // no compression
    for v in [0, 0, 0, 1, 0, 126, 0] {
        int(&mut d, v);
    }
    for s in ["archiv", "15.8", "15.8"] {
        int(&mut d, s.len() as i32);
        d.extend_from_slice(s.as_bytes());
    }
    int(&mut d, 0); // no TOC entries
    d
}

fn dump(data: &[u8], chunks: Vec<ChunkRef>) -> DumpEntry {
    DumpEntry {
        file_name: "archiv.dump".into(),
        database: "archiv".into(),
        size: data.len() as u64,
        hash: ChunkId::of(data),
        chunks,
        row_counts: BTreeMap::new(),
    }
}

fn claim(dump: Option<DumpEntry>, objects: Vec<ObjectEntry>) -> Result<Claimed, Refusal> {
    let mut incoming = Incoming::new(LIMITS, dump, objects.len() as u64)?;
    for o in objects {
        incoming.add(o)?;
    }
    incoming.finish()
}

fn manifest(id: &str, v: Validated) -> Manifest {
    Manifest {
        format: FORMAT_VERSION,
        id: id.into(),
        time: chrono::Utc::now(),
        sender_time: None,
        source_host: "vps".into(),
        peer_identity: "prod-vps".into(),
        bucket: "b".into(),
        dump: v.dump,
        objects: v.objects,
        stats: SnapshotStats::default(),
        suspect: None,
        measured: Some(v.measured),
    }
}

fn invalid(r: Result<Validated, Refusal>) -> String {
    match r {
        Err(Refusal::Invalid(m)) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// Two same-size objects and a dump, validated into a base snapshot.
fn base(store: &mut Mem) -> Manifest {
    let (a, b) = (vec![1u8; 3000], vec![2u8; 3000]);
    let (ra, rb) = (store.put(&a), store.put(&b));
    let d = pgdmp();
    let rd = store.put(&d);
    let v = validate(
        claim(
            Some(dump(&d, vec![rd])),
            vec![object("a", &a, vec![ra]), object("b", &b, vec![rb])],
        )
        .unwrap(),
        None,
        store,
    )
    .unwrap();
    assert_eq!(v.measured.objects_read, 2);
    assert_eq!(v.measured.dump.as_ref().unwrap().archive_version, "1.14.0");
    manifest("s1", v)
}

#[test]
fn swapped_content_under_an_unchanged_key_size_and_etag_is_refused() {
    let mut store = Mem::default();
    let base = base(&mut store);
    let mut objects = base.objects.clone();
    let (ha, ca) = (objects[0].hash, objects[0].chunks.clone());
    objects[0].hash = objects[1].hash;
    objects[0].chunks = objects[1].chunks.clone();
    objects[1].hash = ha;
    objects[1].chunks = ca;
    let m = invalid(validate(
        claim(base.dump.clone(), objects).unwrap(),
        Some(&base),
        &store,
    ));
    assert_eq!(
        m,
        "object \"a\": same size and ETag as in good snapshot s1, but different content"
    );
    // The same list unchanged is accepted without reading anything back but the dump.
    let v = validate(
        claim(base.dump.clone(), base.objects.clone()).unwrap(),
        Some(&base),
        &store,
    )
    .unwrap();
    assert_eq!(v.measured.objects_read, 0);
    assert_eq!(v.measured.delta_base.as_deref(), Some("s1"));
}

#[test]
fn an_object_left_out_and_put_back_must_come_back_with_its_old_content() {
    let mut store = Mem::default();
    let first = base(&mut store);
    // Night 2 leaves "a" out; night 3 puts it back with its old size and ETag but b's bytes.
    let v = validate(
        claim(first.dump.clone(), vec![first.objects[1].clone()]).unwrap(),
        Some(&first),
        &store,
    )
    .unwrap();
    let second = manifest("s2", v);
    store.older.push(first.clone());
    let mut back = first.objects[0].clone();
    back.hash = first.objects[1].hash;
    back.chunks = first.objects[1].chunks.clone();
    let m = invalid(validate(
        claim(first.dump.clone(), vec![back, first.objects[1].clone()]).unwrap(),
        Some(&second),
        &store,
    ));
    assert!(m.contains("as in good snapshot s1"), "{m}");
}

#[test]
fn new_content_is_read_back_and_must_hash_as_claimed() {
    let mut store = Mem::default();
    let a = vec![7u8; 5000];
    let r = store.put(&a);
    let mut lie = object("x", &a, vec![r]);
    lie.hash = ChunkId::of(b"something else");
    let m = invalid(validate(claim(None, vec![lie]).unwrap(), None, &store));
    assert!(m.starts_with("object \"x\": its chunks hash to "), "{m}");
    // A reference claiming one byte less than the stored chunk (the size follows it).
    let short = ObjectEntry {
        size: 4999,
        chunks: vec![ChunkRef {
            id: r.id,
            len: 4999,
        }],
        ..object("x", &a, vec![r])
    };
    let m = invalid(validate(claim(None, vec![short]).unwrap(), None, &store));
    assert_eq!(
        m,
        format!(
            "object \"x\": chunk {} is stored with 5000 bytes, the entry claims 4999",
            r.id
        )
    );
}

#[test]
fn chunks_the_session_may_not_name_are_missing() {
    let store = Mem::default();
    let a = b"never uploaded".to_vec();
    let r = ChunkRef {
        id: ChunkId::of(&a),
        len: a.len() as u32,
    };
    match validate(
        claim(None, vec![object("x", &a, vec![r])]).unwrap(),
        None,
        &store,
    ) {
        Err(e @ Refusal::MissingChunks(_)) => assert_eq!(
            e.to_string(),
            format!(
                "commit references chunks the repository does not have: {}",
                r.id
            )
        ),
        other => panic!("{other:?}"),
    }
}

/// A store that cannot say whether a chunk is there.
struct Unsure(crate::store::error::StoreErrorKind);

impl StoreFacts for Unsure {
    fn usable(&self, id: &ChunkId) -> Result<bool, RepoError> {
        Err(crate::store::error::StoreError::new(self.0, id.to_hex()).into())
    }
    fn read(&self, _: &ChunkId) -> Result<Option<Vec<u8>>, RepoError> {
        unreachable!("presence is checked first")
    }
    fn older_good(&self, _: &mut dyn FnMut(&Manifest) -> bool) -> Result<(), RepoError> {
        Ok(())
    }
}

#[test]
fn a_chunk_lookup_that_fails_refuses_nothing_as_missing() {
    let a = b"stored, but the store does not answer".to_vec();
    let r = ChunkRef {
        id: ChunkId::of(&a),
        len: a.len() as u32,
    };
    for kind in [
        crate::store::error::StoreErrorKind::PermissionDenied,
        crate::store::error::StoreErrorKind::Unavailable,
        crate::store::error::StoreErrorKind::Other,
    ] {
        match validate(
            claim(None, vec![object("x", &a, vec![r])]).unwrap(),
            None,
            &Unsure(kind),
        ) {
            Err(Refusal::Store(RepoError::Store(e))) => assert_eq!(e.kind(), kind),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn chunk_lists_the_chunker_cannot_make_are_refused_while_streaming() {
    let mut store = Mem::default();
    let small = store.put(&[3u8; 1000]);
    // One small chunk repeated: every chunk but the last must hold MIN_CHUNK bytes.
    let repeated = ObjectEntry {
        key: "big".into(),
        size: 3000,
        etag: String::new(),
        hash: ChunkId([0; 32]),
        chunks: vec![small; 3],
    };
    let mut incoming = Incoming::new(LIMITS, None, 1).unwrap();
    match incoming.add(repeated) {
        Err(Refusal::Invalid(m)) => assert!(
            m.contains(&format!("shorter than the chunker's minimum {MIN_CHUNK}")),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    // Too many references in one commit.
    let big = ChunkRef {
        id: ChunkId([9; 32]),
        len: MIN_CHUNK,
    };
    let mut incoming = Incoming::new(LIMITS, None, 2).unwrap();
    let entry = |key: &str, n: usize| ObjectEntry {
        key: key.into(),
        size: u64::from(MIN_CHUNK) * n as u64,
        etag: String::new(),
        hash: ChunkId([0; 32]),
        chunks: vec![big; n],
    };
    incoming.add(entry("one", 600)).unwrap();
    match incoming.add(entry("two", 600)) {
        Err(Refusal::TooLarge(m)) => {
            assert_eq!(m, "the commit references more than 1000 chunks")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Incoming::new(LIMITS, None, 101),
        Err(Refusal::Invalid(_))
    ));
}

#[test]
fn the_dump_is_read_back_and_must_be_a_custom_format_archive() {
    let mut store = Mem::default();
    let junk = vec![b'x'; 4000];
    let r = store.put(&junk);
    let m = invalid(validate(
        claim(Some(dump(&junk, vec![r])), vec![]).unwrap(),
        None,
        &store,
    ));
    assert_eq!(
        m,
        "the dump: does not start with PGDMP: not a pg_dump archive"
    );
    // A real header whose hash the entry misstates.
    let d = pgdmp();
    let rd = store.put(&d);
    let mut lie = dump(&d, vec![rd]);
    lie.hash = ChunkId([5; 32]);
    let m = invalid(validate(claim(Some(lie), vec![]).unwrap(), None, &store));
    assert!(m.starts_with("the dump's chunks hash to "), "{m}");
    // Truncated in the middle of its header.
    let cut = &d[..d.len() - 3];
    let rc = store.put(cut);
    let m = invalid(validate(
        claim(Some(dump(cut, vec![rc])), vec![]).unwrap(),
        None,
        &store,
    ));
    assert_eq!(m, "the dump: ends before its table of contents does");
}

#[test]
fn an_unmeasured_base_gives_no_shortcut_and_no_binding() {
    let mut store = Mem::default();
    let mut old = base(&mut store);
    old.measured = None;
    // Swapped content under the old key/size/ETag: a format-1 base is only a claim, so the
    // entry is read back (and, being self-consistent, accepted): the base binds nothing.
    let mut objects = old.objects.clone();
    objects[0].hash = old.objects[1].hash;
    objects[0].chunks = old.objects[1].chunks.clone();
    let v = validate(claim(None, objects).unwrap(), Some(&old), &store).unwrap();
    assert_eq!(v.measured.objects_read, 2);
    assert_eq!(v.measured.delta_base, None);
    let _ = Measured::default();
}

#[test]
fn the_same_bytes_cut_otherwise_are_the_same_content() {
    let mut store = Mem::default();
    let m = MIN_CHUNK as usize;
    let data: Vec<u8> = (0..2 * m + 10).map(|i| (i % 251) as u8).collect();
    let (a, b) = (store.put(&data[..m]), store.put(&data[m..]));
    let v = validate(
        claim(None, vec![object("big.tif", &data, vec![a, b])]).unwrap(),
        None,
        &store,
    )
    .unwrap();
    let base = manifest("s1", v);
    // Re-read after a quarantined chunk, by a sender that cuts elsewhere: same key, size,
    // ETag and hash, other chunks. Read back, it hashes right: accepted.
    let (c, d) = (store.put(&data[..m + 10]), store.put(&data[m + 10..]));
    let recut = object("big.tif", &data, vec![c, d]);
    let v = validate(
        claim(None, vec![recut.clone()]).unwrap(),
        Some(&base),
        &store,
    )
    .unwrap();
    assert_eq!(v.measured.objects_read, 1);
    // Other bytes under the same key, size and ETag are refused, cut as they may be.
    let other: Vec<u8> = data.iter().map(|x| x ^ 1).collect();
    let (e, f) = (store.put(&other[..m]), store.put(&other[m..]));
    let forged = ObjectEntry {
        hash: ChunkId::of(&other),
        chunks: vec![e, f],
        ..recut
    };
    let msg = invalid(validate(
        claim(None, vec![forged]).unwrap(),
        Some(&base),
        &store,
    ));
    assert!(
        msg.contains("same size and ETag as in good snapshot s1"),
        "{msg}"
    );
}
