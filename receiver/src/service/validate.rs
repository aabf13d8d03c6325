//! Commit validation: turns what a sender claims in a Commit stream into the content of a
//! manifest whose every fact a decision uses was measured by the receiver or checked
//! against what it stores. No gRPC and no clock here: the stream arrives as entries, the
//! store answers through [`StoreFacts`], and the result is a [`Validated`] commit or a
//! [`Refusal`] that names the problem. Nothing is written.
//!
//! The rules, each closing a class of lie a compromised sender could tell:
//! - shape: chunk lists cut as the sender's chunker cuts them (every chunk but the last at
//!   least `MIN_CHUNK`), bounded references and manifest size, refused while streaming;
//! - presence: every referenced chunk exists and this session may name it (it was uploaded
//!   in the session or is referenced by a kept good snapshot), so a commit is no oracle;
//! - binding: an object whose key, size and ETag equal an entry of a good, measured
//!   snapshot (the delta base, then older ones) carries that entry's content (its hash;
//!   a different chunk list for the same hash is read back and must hash to it);
//! - content: every other object is read back from the stored chunks; each chunk's length
//!   and the object's blake3 must equal what the entry claims;
//! - dump: read back the same way, its stream hash checked and its header parsed as a
//!   `pg_dump` custom-format archive ([`super::dump_check`]).

use std::collections::{HashMap, HashSet};

use backup_common::bounded::quoted;
use backup_common::chunk::{ChunkId, MIN_CHUNK};
use backup_common::manifest::{ChunkRef, DumpEntry, Manifest, Measured, ObjectEntry};

use super::dump_check;
use crate::store::repository::RepoError;

/// Bounds on one commit, checked while it streams in.
#[derive(Debug, Clone, Copy)]
pub struct CommitLimits {
    /// Objects one snapshot may hold.
    pub max_objects: u64,
    /// Chunk references one manifest may hold (dump and objects together).
    pub max_refs: u64,
    /// Estimated in-memory size of the object entries (keys, ETags, references).
    pub max_manifest_bytes: u64,
    /// Bytes the receiver reads back at commit to check new content.
    pub max_read_bytes: u64,
}

/// Bytes one chunk reference costs in memory, and one object entry besides its strings.
const REF_BYTES: u64 = 40;
const ENTRY_BYTES: u64 = 120;
/// Chunk ids a "missing chunks" refusal names.
const MISSING_SHOWN: usize = 5;
/// New content may reference its distinct chunks this many times over, plus the slack:
/// reading it back costs its logical size, so one stored chunk named 200,000 times (a
/// "0.4 TB" object) is refused before it is read, while real files, which repeat a chunk
/// rarely, are far inside the bound.
const REPEAT_FACTOR: u64 = 64;
const REPEAT_SLACK: u64 = 1 << 30;

/// Why a commit is refused. Every variant names the entry and the fact that failed.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Malformed or inconsistent input (gRPC INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    /// A bound on the commit's size (gRPC RESOURCE_EXHAUSTED).
    #[error("{0}")]
    TooLarge(String),
    /// Chunks the repository does not have for this session (gRPC FAILED_PRECONDITION).
    #[error("commit references chunks the repository does not have: {}", hexes(.0))]
    MissingChunks(Vec<ChunkId>),
    #[error(transparent)]
    Store(#[from] RepoError),
}

fn hexes(ids: &[ChunkId]) -> String {
    ids.iter()
        .map(ChunkId::to_hex)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the validation needs from the repository.
pub trait StoreFacts {
    /// The chunk exists and this session may reference it. A store that cannot say is an
    /// error, so a commit is never refused (or accepted) on a failed lookup.
    fn usable(&self, id: &ChunkId) -> Result<bool, RepoError>;
    /// The chunk's raw bytes, checked against its id; `None` when it is not stored.
    fn read(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, RepoError>;
    /// Calls `visit` with the good, measured snapshots older than the delta base, newest
    /// first, until it returns false.
    fn older_good(&self, visit: &mut dyn FnMut(&Manifest) -> bool) -> Result<(), RepoError>;
}

/// A commit's entries as they arrive, checked for shape and bounds one by one.
pub struct Incoming {
    limits: CommitLimits,
    dump: Option<DumpEntry>,
    announced: u64,
    objects: Vec<ObjectEntry>,
    keys: HashSet<String>,
    refs: u64,
    bytes: u64,
}

impl Incoming {
    /// Starts a commit announcing `object_count` objects after its header's `dump`.
    pub fn new(
        limits: CommitLimits,
        dump: Option<DumpEntry>,
        object_count: u64,
    ) -> Result<Incoming, Refusal> {
        if object_count > limits.max_objects {
            return Err(Refusal::Invalid(format!(
                "object_count {object_count} exceeds the limit of {}",
                limits.max_objects
            )));
        }
        let mut incoming = Incoming {
            limits,
            dump: None,
            announced: object_count,
            objects: Vec::new(),
            keys: HashSet::new(),
            refs: 0,
            bytes: 0,
        };
        if let Some(d) = &dump {
            check_cut("the dump", d.size, &d.chunks)?;
            let names: usize = d.row_counts.keys().map(|t| t.len() + 8).sum();
            incoming.count(d.chunks.len() as u64, names as u64)?;
        }
        incoming.dump = dump;
        Ok(incoming)
    }

    fn count(&mut self, refs: u64, strings: u64) -> Result<(), Refusal> {
        self.refs += refs;
        self.bytes += refs * REF_BYTES + ENTRY_BYTES + strings;
        if self.refs > self.limits.max_refs {
            return Err(Refusal::TooLarge(format!(
                "the commit references more than {} chunks",
                self.limits.max_refs
            )));
        }
        if self.bytes > self.limits.max_manifest_bytes {
            return Err(Refusal::TooLarge(format!(
                "the commit's entries exceed {} bytes",
                self.limits.max_manifest_bytes
            )));
        }
        Ok(())
    }

    /// Adds one object entry (already checked for key safety and size consistency).
    pub fn add(&mut self, entry: ObjectEntry) -> Result<(), Refusal> {
        if self.objects.len() as u64 >= self.announced {
            return Err(Refusal::Invalid(format!(
                "commit carries more objects than its header's object_count {}",
                self.announced
            )));
        }
        check_cut(
            &format!("object {}", quoted(&entry.key)),
            entry.size,
            &entry.chunks,
        )?;
        self.count(
            entry.chunks.len() as u64,
            (entry.key.len() + entry.etag.len()) as u64,
        )?;
        if !self.keys.insert(entry.key.clone()) {
            return Err(Refusal::Invalid(format!(
                "duplicate object key {}",
                quoted(&entry.key)
            )));
        }
        self.objects.push(entry);
        Ok(())
    }

    /// The complete claim: every announced object arrived. Objects sorted by key.
    pub fn finish(mut self) -> Result<Claimed, Refusal> {
        if self.objects.len() as u64 != self.announced {
            return Err(Refusal::Invalid(format!(
                "commit header announced {} objects but {} arrived",
                self.announced,
                self.objects.len()
            )));
        }
        self.objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Claimed {
            dump: self.dump,
            objects: self.objects,
            limits: self.limits,
        })
    }
}

/// A chunk list as the sender's content-defined chunker produces it: every chunk but the
/// last holds at least `MIN_CHUNK` bytes, so the number of references is bounded by the
/// size (one chunk of 256 KiB repeated a million times is not a list the chunker makes).
fn check_cut(what: &str, size: u64, chunks: &[ChunkRef]) -> Result<(), Refusal> {
    if size == 0 && !chunks.is_empty() {
        return Err(Refusal::Invalid(format!("{what}: empty but lists chunks")));
    }
    if let Some((_, head)) = chunks.split_last() {
        if let Some(short) = head.iter().find(|c| c.len < MIN_CHUNK) {
            return Err(Refusal::Invalid(format!(
                "{what}: chunk {} of {} bytes is not the last, and shorter than the chunker's minimum {MIN_CHUNK}",
                short.id, short.len
            )));
        }
    }
    Ok(())
}

/// What the sender claims, complete and well-formed but not yet checked against the store.
pub struct Claimed {
    pub dump: Option<DumpEntry>,
    pub objects: Vec<ObjectEntry>,
    limits: CommitLimits,
}

/// A commit whose content the receiver checked, and what it measured doing so.
#[derive(Debug)]
pub struct Validated {
    pub dump: Option<DumpEntry>,
    pub objects: Vec<ObjectEntry>,
    pub measured: Measured,
}

/// One object's content: its hash and chunk list.
type Content = (ChunkId, Vec<ChunkRef>);

/// Two entries hold the same bytes when their hashes agree; an entry's hash is checked
/// against its chunks whenever its chunk list is not one the receiver checked before, so a
/// re-cut of the same bytes (another chunker version, a re-read after a quarantined chunk)
/// is the same content, while swapped or other bytes are not.
fn same_content(a: &ObjectEntry, b: &ObjectEntry) -> bool {
    a.hash == b.hash
}

/// Checks `claimed` against the store and against `base`, the newest good snapshot (used
/// for bindings and to skip re-reading unchanged content only when it is itself measured).
pub fn validate(
    claimed: Claimed,
    base: Option<&Manifest>,
    store: &dyn StoreFacts,
) -> Result<Validated, Refusal> {
    let Claimed {
        dump,
        objects,
        limits,
    } = claimed;
    check_presence(dump.as_ref(), &objects, store)?;

    let base = base.filter(|b| b.content_verified());
    let by_key: HashMap<&str, &ObjectEntry> = base
        .map(|b| b.objects.iter().map(|o| (o.key.as_str(), o)).collect())
        .unwrap_or_default();
    let known: HashSet<Content> = base
        .map(|b| {
            b.objects
                .iter()
                .map(|o| (o.hash, o.chunks.clone()))
                .collect()
        })
        .unwrap_or_default();

    // Bindings against the delta base, and which objects must be read back.
    let mut to_read: Vec<usize> = Vec::new();
    let mut unbound: HashMap<&str, usize> = HashMap::new();
    for (i, o) in objects.iter().enumerate() {
        match by_key.get(o.key.as_str()) {
            Some(b) if b.size == o.size && b.etag == o.etag => {
                if !same_content(o, b) {
                    return Err(changed(o, &base.expect("base has the key").id));
                }
                if o.chunks != b.chunks {
                    // The same bytes cut otherwise: proved by reading them back.
                    to_read.push(i);
                }
                continue;
            }
            _ => {
                unbound.insert(o.key.as_str(), i);
            }
        }
        if !known.contains(&(o.hash, o.chunks.clone())) {
            // New content (not merely a new name or ETag for known content): read it back.
            to_read.push(i);
        }
    }
    // Bindings against older good snapshots: an object left out of one night and put back
    // with its old size and ETag must come back with its old content.
    if !unbound.is_empty() {
        let mut refusal = None;
        store.older_good(&mut |m: &Manifest| {
            for old in &m.objects {
                let Some(&i) = unbound.get(old.key.as_str()) else {
                    continue;
                };
                let o = &objects[i];
                if old.size == o.size && old.etag == o.etag {
                    if !same_content(o, old) {
                        refusal = Some(changed(o, &m.id));
                        return false;
                    }
                    unbound.remove(old.key.as_str());
                }
            }
            !unbound.is_empty()
        })?;
        if let Some(r) = refusal {
            return Err(r);
        }
    }

    let read_bytes: u64 =
        to_read.iter().map(|&i| objects[i].size).sum::<u64>() + dump.as_ref().map_or(0, |d| d.size);
    let mut distinct: HashMap<ChunkId, u32> = HashMap::new();
    for r in to_read
        .iter()
        .flat_map(|&i| objects[i].chunks.iter())
        .chain(dump.iter().flat_map(|d| d.chunks.iter()))
    {
        distinct.insert(r.id, r.len);
    }
    let distinct_bytes: u64 = distinct.values().map(|&l| u64::from(l)).sum();
    if read_bytes > distinct_bytes.saturating_mul(REPEAT_FACTOR) + REPEAT_SLACK {
        return Err(Refusal::TooLarge(format!(
            "the commit's new content is {read_bytes} bytes made of {distinct_bytes} distinct chunk bytes: chunks are referenced more than {REPEAT_FACTOR} times over"
        )));
    }
    if read_bytes > limits.max_read_bytes {
        return Err(Refusal::TooLarge(format!(
            "the commit names {read_bytes} bytes of new content; the receiver reads back at most {} at commit",
            limits.max_read_bytes
        )));
    }
    for &i in &to_read {
        let o = &objects[i];
        let hash = read_back(
            &format!("object {}", quoted(&o.key)),
            &o.chunks,
            store,
            |_| {},
        )?;
        if hash != o.hash {
            return Err(Refusal::Invalid(format!(
                "object {}: its chunks hash to {hash}, the entry claims {}",
                quoted(&o.key),
                o.hash
            )));
        }
    }
    let measured_dump = match &dump {
        None => None,
        Some(d) => {
            let mut reader = dump_check::DumpReader::new();
            let hash = read_back("the dump", &d.chunks, store, |bytes| reader.feed(bytes))?;
            if hash != d.hash {
                return Err(Refusal::Invalid(format!(
                    "the dump's chunks hash to {hash}, its entry claims {}",
                    d.hash
                )));
            }
            Some(
                reader
                    .finish()
                    .map_err(|e| Refusal::Invalid(format!("the dump: {e}")))?,
            )
        }
    };

    let mut unique: HashMap<ChunkId, u32> = HashMap::new();
    for r in dump
        .iter()
        .flat_map(|d| d.chunks.iter())
        .chain(objects.iter().flat_map(|o| o.chunks.iter()))
    {
        unique.insert(r.id, r.len);
    }
    let measured = Measured {
        content_verified: true,
        delta_base: base.map(|b| b.id.clone()),
        objects_read: to_read.len() as u64,
        bytes_read: read_bytes,
        unique_chunks: unique.len() as u64,
        unique_bytes: unique.values().map(|&l| u64::from(l)).sum(),
        dump: measured_dump,
    };
    Ok(Validated {
        dump,
        objects,
        measured,
    })
}

fn changed(o: &ObjectEntry, snapshot: &str) -> Refusal {
    Refusal::Invalid(format!(
        "object {}: same size and ETag as in good snapshot {snapshot}, but different content",
        quoted(&o.key)
    ))
}

/// Every referenced chunk must be usable by this session.
fn check_presence(
    dump: Option<&DumpEntry>,
    objects: &[ObjectEntry],
    store: &dyn StoreFacts,
) -> Result<(), Refusal> {
    let mut seen = HashSet::new();
    let mut missing: Vec<ChunkId> = Vec::new();
    let refs = dump
        .iter()
        .flat_map(|d| d.chunks.iter())
        .chain(objects.iter().flat_map(|o| o.chunks.iter()));
    for r in refs.filter(|r| seen.insert(r.id)) {
        if !store.usable(&r.id)? {
            missing.push(r.id);
            if missing.len() == MISSING_SHOWN {
                break;
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Refusal::MissingChunks(missing))
    }
}

/// Reads `chunks` back from the store in order, checks each length, feeds the raw bytes to
/// `sink`, and returns the blake3 of the whole stream.
fn read_back(
    what: &str,
    chunks: &[ChunkRef],
    store: &dyn StoreFacts,
    mut sink: impl FnMut(&[u8]),
) -> Result<ChunkId, Refusal> {
    let mut hasher = blake3::Hasher::new();
    for r in chunks {
        let raw = store
            .read(&r.id)?
            .ok_or_else(|| Refusal::MissingChunks(vec![r.id]))?;
        if raw.len() != r.len as usize {
            return Err(Refusal::Invalid(format!(
                "{what}: chunk {} is stored with {} bytes, the entry claims {}",
                r.id,
                raw.len(),
                r.len
            )));
        }
        hasher.update(&raw);
        sink(&raw);
    }
    Ok(ChunkId(*hasher.finalize().as_bytes()))
}

#[cfg(test)]
mod tests;
