//! Conversions between the protobuf messages and the manifest types. Everything arriving
//! from the network passes through here and is checked for shape (id lengths, sizes that
//! match their chunk lists) before the receiver looks at it further.

use crate::bounded::quoted;
use crate::chunk::{ChunkError, ChunkId, MAX_CHUNK};
use crate::keys::{self, KeyError};
use crate::manifest::{chunk_total, ChunkRef, DumpEntry, ObjectEntry};
use crate::proto;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{what}: {source}")]
    Chunk {
        what: String,
        #[source]
        source: ChunkError,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{what}: chunk of {len} bytes is outside 1..={MAX_CHUNK}")]
    ChunkLen { what: String, len: u32 },
    #[error("{what}: declared size {declared} but its chunks add up to {actual}")]
    SizeMismatch {
        what: String,
        declared: u64,
        actual: u64,
    },
    #[error("{what}: etag longer than 256 bytes")]
    EtagTooLong { what: String },
    #[error("dump file name {0} is not a plain file name")]
    DumpName(String),
    #[error("dump: {0}")]
    RowCounts(String),
    #[error("{what} is longer than {max} bytes")]
    TooLong { what: &'static str, max: usize },
}

/// Tables one dump may report row counts for.
pub const MAX_TABLES: usize = 100_000;
/// Longest table name (`schema.table`), database name or bucket name accepted.
pub const MAX_NAME_BYTES: usize = 1024;

/// Checks a free-form name from the network (database, bucket) for length.
pub fn check_name(what: &'static str, name: &str) -> Result<(), WireError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(WireError::TooLong {
            what,
            max: MAX_NAME_BYTES,
        });
    }
    Ok(())
}

fn chunk_refs_from_proto(
    what: &str,
    refs: Vec<proto::ChunkRef>,
) -> Result<Vec<ChunkRef>, WireError> {
    refs.into_iter()
        .map(|r| {
            let id = ChunkId::from_slice(&r.id).map_err(|source| WireError::Chunk {
                what: what.to_string(),
                source,
            })?;
            if r.len == 0 || r.len > MAX_CHUNK {
                return Err(WireError::ChunkLen {
                    what: what.to_string(),
                    len: r.len,
                });
            }
            Ok(ChunkRef { id, len: r.len })
        })
        .collect()
}

fn check_size(what: &str, declared: u64, chunks: &[ChunkRef]) -> Result<(), WireError> {
    let actual = chunk_total(chunks);
    if actual != declared {
        return Err(WireError::SizeMismatch {
            what: what.to_string(),
            declared,
            actual,
        });
    }
    Ok(())
}

fn hash_from_proto(what: &str, bytes: &[u8]) -> Result<ChunkId, WireError> {
    ChunkId::from_slice(bytes).map_err(|source| WireError::Chunk {
        what: format!("{what} hash"),
        source,
    })
}

pub fn chunk_refs_to_proto(refs: &[ChunkRef]) -> Vec<proto::ChunkRef> {
    refs.iter()
        .map(|r| proto::ChunkRef {
            id: r.id.0.to_vec(),
            len: r.len,
        })
        .collect()
}

pub fn object_to_proto(o: &ObjectEntry) -> proto::ObjectEntry {
    proto::ObjectEntry {
        key: o.key.clone(),
        size: o.size,
        etag: o.etag.clone(),
        hash: o.hash.0.to_vec(),
        chunks: chunk_refs_to_proto(&o.chunks),
    }
}

/// Validates an object entry from the network: a safe key, a 32-byte hash, chunk
/// lengths within bounds that add up to the declared size.
pub fn object_from_proto(o: proto::ObjectEntry) -> Result<ObjectEntry, WireError> {
    keys::validate(&o.key)?;
    let what = format!("object {}", quoted(&o.key));
    if o.etag.len() > 256 {
        return Err(WireError::EtagTooLong { what });
    }
    let chunks = chunk_refs_from_proto(&what, o.chunks)?;
    check_size(&what, o.size, &chunks)?;
    Ok(ObjectEntry {
        hash: hash_from_proto(&what, &o.hash)?,
        key: o.key,
        size: o.size,
        etag: o.etag,
        chunks,
    })
}

pub fn dump_to_proto(d: &DumpEntry) -> proto::DumpEntry {
    proto::DumpEntry {
        file_name: d.file_name.clone(),
        size: d.size,
        hash: d.hash.0.to_vec(),
        chunks: chunk_refs_to_proto(&d.chunks),
        row_counts: d
            .row_counts
            .iter()
            .map(|(table, rows)| proto::TableRowCount {
                table: table.clone(),
                rows: *rows,
            })
            .collect(),
        database: d.database.clone(),
    }
}

pub fn dump_from_proto(d: proto::DumpEntry) -> Result<DumpEntry, WireError> {
    if d.file_name.is_empty()
        || d.file_name.contains(['/', '\\', '\0'])
        || d.file_name.starts_with('.')
    {
        return Err(WireError::DumpName(quoted(&d.file_name)));
    }
    check_name("dump file name", &d.file_name)?;
    check_name("database name", &d.database)?;
    let what = format!("dump {}", quoted(&d.file_name));
    let chunks = chunk_refs_from_proto(&what, d.chunks)?;
    check_size(&what, d.size, &chunks)?;
    if d.row_counts.len() > MAX_TABLES {
        return Err(WireError::RowCounts(format!(
            "{} tables reported, at most {MAX_TABLES} are accepted",
            d.row_counts.len()
        )));
    }
    let mut row_counts = std::collections::BTreeMap::new();
    for t in d.row_counts {
        if t.table.is_empty() || t.table.len() > MAX_NAME_BYTES || t.table.contains('\0') {
            return Err(WireError::RowCounts(format!(
                "table name {} is empty, longer than {MAX_NAME_BYTES} bytes or holds a NUL",
                quoted(&t.table)
            )));
        }
        if row_counts.insert(t.table.clone(), t.rows).is_some() {
            return Err(WireError::RowCounts(format!(
                "duplicate row count for table {}",
                quoted(&t.table)
            )));
        }
    }
    Ok(DumpEntry {
        hash: hash_from_proto(&what, &d.hash)?,
        file_name: d.file_name,
        database: d.database,
        size: d.size,
        chunks,
        row_counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, size: u64, lens: &[u32]) -> proto::ObjectEntry {
        proto::ObjectEntry {
            key: key.into(),
            size,
            etag: "\"e\"".into(),
            hash: vec![1; 32],
            chunks: lens
                .iter()
                .map(|&len| proto::ChunkRef {
                    id: vec![2; 32],
                    len,
                })
                .collect(),
        }
    }

    #[test]
    fn valid_entries_round_trip() {
        let e = object_from_proto(entry("a/b", 30, &[10, 20])).unwrap();
        assert_eq!(object_to_proto(&e), entry("a/b", 30, &[10, 20]));
    }

    #[test]
    fn inconsistent_entries_are_refused() {
        assert!(matches!(
            object_from_proto(entry("a", 31, &[10, 20])),
            Err(WireError::SizeMismatch {
                declared: 31,
                actual: 30,
                ..
            })
        ));
        assert!(matches!(
            object_from_proto(entry("../x", 0, &[])),
            Err(WireError::Key(_))
        ));
        assert!(matches!(
            object_from_proto(entry("a", 0, &[0])),
            Err(WireError::ChunkLen { .. })
        ));
        let mut short_hash = entry("a", 0, &[]);
        short_hash.hash = vec![0; 5];
        assert!(matches!(
            object_from_proto(short_hash),
            Err(WireError::Chunk { .. })
        ));
    }

    fn dump(tables: &[&str]) -> proto::DumpEntry {
        proto::DumpEntry {
            file_name: "archiv-20260101.dump".into(),
            size: 10,
            hash: vec![1; 32],
            chunks: vec![proto::ChunkRef {
                id: vec![2; 32],
                len: 10,
            }],
            row_counts: tables
                .iter()
                .map(|t| proto::TableRowCount {
                    table: t.to_string(),
                    rows: 1,
                })
                .collect(),
            database: "archiv".into(),
        }
    }

    #[test]
    fn dump_row_counts_are_checked() {
        let d = dump_from_proto(dump(&["public.a", "public.b"])).unwrap();
        assert_eq!(d.row_counts.len(), 2);
        let e = dump_from_proto(dump(&["public.a", "public.a"])).unwrap_err();
        assert!(e.to_string().contains("duplicate row count"), "{e}");
        let e = dump_from_proto(dump(&["a\0b"])).unwrap_err();
        assert!(matches!(e, WireError::RowCounts(_)), "{e}");
        let mut long = dump(&[]);
        long.database = "d".repeat(MAX_NAME_BYTES + 1);
        assert!(matches!(
            dump_from_proto(long),
            Err(WireError::TooLong { .. })
        ));
    }

    #[test]
    fn peer_strings_in_errors_are_bounded() {
        let huge = "t".repeat(1 << 20);
        let e = dump_from_proto(dump(&[&huge])).unwrap_err().to_string();
        assert!(e.len() < 400 && e.contains("1048576 bytes"), "{e}");
        let mut d = dump(&[]);
        d.file_name = format!("../{huge}");
        let e = dump_from_proto(d).unwrap_err().to_string();
        assert!(e.len() < 400, "{e}");
        let e = object_from_proto(entry(&format!("{huge}/../x"), 0, &[]))
            .unwrap_err()
            .to_string();
        assert!(e.len() < 400, "{e}");
        let mut o = entry("a", 0, &[]);
        o.key = format!("k{}", "e".repeat(1000));
        o.etag = huge.clone();
        let e = object_from_proto(o).unwrap_err().to_string();
        assert!(e.len() < 400, "{e}");
    }
}
