//! `dump SNAPSHOT KEY`: one object (or the database dump) to a writer, every byte checked:
//! each chunk against its id before it is written, then the whole stream's size and
//! blake3 against the manifest. A mismatch is an error after the bytes already written
//! (the chunks up to it were each checked), so a pipeline can tell by the exit code.

use std::io::Write;

use backup_common::manifest::Manifest;

use crate::operator::restore::{self, RestoreError};
use crate::store::repository::Repository;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("snapshot {snapshot} has no object {key:?}")]
    NoSuchKey { snapshot: String, key: String },
    #[error("snapshot {0} has no database dump")]
    NoDump(String),
    #[error("stdout is a terminal; redirect it to a file or a pipe (or give --to-terminal)")]
    Terminal,
    #[error(transparent)]
    Restore(#[from] RestoreError),
}

/// What `dump` writes.
pub enum Dumped<'a> {
    Object(&'a str),
    Database,
}

/// Writes the verified bytes of `what` to `out`; returns how many.
pub fn dump(
    repo: &Repository,
    m: &Manifest,
    what: Dumped<'_>,
    out: &mut dyn Write,
) -> Result<u64, DumpError> {
    let (name, chunks, size, hash) = match what {
        Dumped::Object(key) => {
            let o = m
                .objects
                .binary_search_by(|o| o.key.as_str().cmp(key))
                .ok()
                .map(|i| &m.objects[i])
                .or_else(|| m.objects.iter().find(|o| o.key == key))
                .ok_or_else(|| DumpError::NoSuchKey {
                    snapshot: m.id.clone(),
                    key: key.to_string(),
                })?;
            (o.key.as_str(), &o.chunks, o.size, o.hash)
        }
        Dumped::Database => {
            let d = m
                .dump
                .as_ref()
                .ok_or_else(|| DumpError::NoDump(m.id.clone()))?;
            (d.file_name.as_str(), &d.chunks, d.size, d.hash)
        }
    };
    restore::write_stream(repo, name, chunks, size, hash, out)?;
    out.flush().map_err(|source| RestoreError::Io {
        path: name.into(),
        source,
    })?;
    Ok(size)
}
