//! The snapshot manifest: one immutable JSON document per committed snapshot, naming the
//! database dump and every object by content hash and chunk list. Times and ids in it come
//! from the receiver's clock; what the sender claimed is kept only as information.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;

/// Lists the tables whose row counts a manifest records, as (quoted name for a query,
/// `schema.table` key), sorted by key. The sender counts them in the dump's snapshot; the
/// drill and the tests count a restored database with the same query.
pub const ROW_COUNT_TABLES_SQL: &str =
    "SELECT format('%I.%I', n.nspname, c.relname), n.nspname || '.' || c.relname
   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind = 'r'
    AND n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
  ORDER BY 2";

/// Version of the manifest format the receiver writes; readers refuse versions they do not
/// know. Version 2 adds [`Measured`]: what the receiver itself checked at commit.
pub const FORMAT_VERSION: u32 = 2;
/// Versions readers accept. A version-1 manifest holds only the sender's claims: its
/// entries are restorable (every chunk is checked on read) but are never a delta base.
pub const READABLE_FORMATS: [u32; 2] = [1, 2];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpEntry {
    pub file_name: String,
    pub database: String,
    pub size: u64,
    pub hash: ChunkId,
    pub chunks: Vec<ChunkRef>,
    /// Exact row count per table (`schema.table`), taken in the dump's own snapshot.
    pub row_counts: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub hash: ChunkId,
    pub chunks: Vec<ChunkRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStats {
    pub object_count: u64,
    pub object_bytes: u64,
    pub dump_bytes: u64,
    /// Chunks and (stored, possibly compressed) bytes this snapshot's session added.
    pub new_chunks: u64,
    pub new_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    /// Commit time on the receiver's clock: the only time retention looks at.
    pub time: DateTime<Utc>,
    /// What the sender said its clock read; information only.
    pub sender_time: Option<DateTime<Utc>>,
    pub source_host: String,
    pub peer_identity: String,
    pub bucket: String,
    pub dump: Option<DumpEntry>,
    pub objects: Vec<ObjectEntry>,
    pub stats: SnapshotStats,
    /// Why the receiver's anomaly guard distrusts this snapshot, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspect: Option<String>,
    /// What the receiver measured at commit (format 2); `None` in a format-1 manifest,
    /// whose every fact is the sender's claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<Measured>,
}

/// Facts the receiver established itself when it accepted the snapshot, as opposed to the
/// sender's claims (row counts, ETags, sender time, source host, names), which a manifest
/// records but no decision acts on. Everything here was computed from stored chunks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measured {
    /// Every object's and the dump's chunk lengths equal the stored chunks', and every
    /// content hash equals the blake3 the receiver computed over those chunks (read back at
    /// commit, or carried over unchanged from `delta_base`, itself measured).
    pub content_verified: bool,
    /// The good snapshot the entries were compared with (same key, size and ETag must
    /// carry the same content as there).
    pub delta_base: Option<String>,
    /// Objects whose content the receiver read back and hashed at commit.
    pub objects_read: u64,
    /// Bytes it read back and hashed at commit (dump and objects).
    pub bytes_read: u64,
    /// Distinct chunks the snapshot references, and their raw bytes.
    pub unique_chunks: u64,
    pub unique_bytes: u64,
    /// What the receiver read from the dump's own bytes, when there is a dump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump: Option<MeasuredDump>,
}

/// The dump as the receiver read it back from its stored chunks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasuredDump {
    /// `pg_dump` custom-format archive version from the header, e.g. `1.14.0`.
    pub archive_version: String,
    /// Rows per table (`schema.table`) counted in the dump's table data, when the
    /// receiver could read it (`None`: compression it cannot read, or no table data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_counts: Option<BTreeMap<String, u64>>,
    /// Why row counts could not be measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_counts_unmeasured: Option<String>,
}

impl Manifest {
    /// Every chunk the snapshot needs, dump first, in stream order (with repeats).
    pub fn chunk_refs(&self) -> impl Iterator<Item = &ChunkRef> {
        self.dump
            .iter()
            .flat_map(|d| d.chunks.iter())
            .chain(self.objects.iter().flat_map(|o| o.chunks.iter()))
    }

    /// Total bytes of the snapshot's source data (dump plus objects).
    pub fn total_bytes(&self) -> u64 {
        self.stats.dump_bytes + self.stats.object_bytes
    }

    /// The receiver checked this snapshot's content at commit (format 2 or later).
    pub fn content_verified(&self) -> bool {
        self.measured.as_ref().is_some_and(|m| m.content_verified)
    }
}

/// Sum of chunk lengths: must equal the declared size of the stream they make up.
pub fn chunk_total(chunks: &[ChunkRef]) -> u64 {
    chunks.iter().map(|c| u64::from(c.len)).sum()
}
