//! Typed stored objects (after rustic_core's `RepoFile`): each [`Space`] holds one
//! [`Record`] type, which alone knows its object names (its key, written and parsed) and
//! its bytes. Nothing outside `store/` names a space or builds an object name: it reads
//! and writes records through [`Repository`] and [`Maintainer`], and the raw store handle
//! stays private to `store/`.
//!
//! The capability is in the types: [`Repository::create`] takes only [`Appendable`]
//! records (a manifest, a lease, a contested day: what `serve` writes), so the network
//! path cannot hide a snapshot behind a tombstone or make one good with an ack;
//! [`Maintainer::create`] takes every record.
//!
//! Adding a space: a `Space` variant and its `dir` (backend.rs), and a record type in
//! `store/records/<space>.rs` that implements [`Record`] (and [`sealed::Sealed`], which
//! keeps record types inside `store/`), plus [`Appendable`] only if `serve` must write it.
//! The memory store's error injection and these typed reads cover it with no more code.

use backup_common::durable::Published;

use crate::store::backend::{valid_name, Space};
use crate::store::error::StoreError;
use crate::store::repository::{Maintainer, Repository};

/// Keeps [`Record`] implementations inside `store/`.
pub(in crate::store) mod sealed {
    pub trait Sealed {}
}

/// One kind of stored object: its space, its names and its bytes.
pub trait Record: sealed::Sealed + Sized {
    /// The space every record of this type is in, and no other type's.
    const SPACE: Space;
    /// What tells two records of the space apart (a snapshot id; an id and a time).
    type Key: Clone + Ord + std::fmt::Debug;
    /// The object name of `key`. `parse_name(&name(k)) == Some(k)`.
    fn name(key: &Self::Key) -> String;
    /// The key of an object name; `None` for a name that is not one of this space's.
    fn parse_name(name: &str) -> Option<Self::Key>;
    /// This record's key.
    fn key(&self) -> Self::Key;
    fn encode(&self) -> Vec<u8>;
    /// The record stored under `key` (the name wins over anything the body says), or why
    /// its bytes are not one.
    fn decode(key: &Self::Key, bytes: &[u8]) -> Result<Self, String>;
}

/// A record the append capability may create: written by `serve` itself.
pub trait Appendable: Record {}

/// The object name of `key`, when it can be one (a key from an operator's command line
/// may not be).
fn valid<R: Record>(key: &R::Key) -> Option<String> {
    Some(R::name(key)).filter(|n| valid_name(n))
}

impl Repository {
    /// Creates `record` if its name is free; an existing one is left as it is.
    pub fn create<R: Appendable>(&self, record: &R) -> Result<Published, StoreError> {
        create_any(self, record)
    }

    /// The record stored under `key`, `None` when there is none. Bytes that are not such
    /// a record are a [`crate::store::error::StoreErrorKind::Corrupt`] error.
    pub fn read<R: Record>(&self, key: &R::Key) -> Result<Option<R>, StoreError> {
        let Some(name) = valid::<R>(key) else {
            return Ok(None);
        };
        match self.store().read_object(R::SPACE, &name)? {
            None => Ok(None),
            Some(bytes) => R::decode(key, &bytes)
                .map(Some)
                .map_err(|why| StoreError::corrupt(self.store().locate(R::SPACE, &name), why)),
        }
    }

    /// Whether a record is stored under `key`.
    pub fn exists<R: Record>(&self, key: &R::Key) -> Result<bool, StoreError> {
        match valid::<R>(key) {
            Some(name) => self.store().has_object(R::SPACE, &name),
            None => Ok(false),
        }
    }

    /// The keys of every record of the type, sorted. A name in the space that is not one
    /// of the type's (an editor's backup file) is logged and left alone.
    pub fn keys<R: Record>(&self) -> Result<Vec<R::Key>, StoreError> {
        let mut keys = Vec::new();
        for name in self.store().list(R::SPACE)? {
            match R::parse_name(&name) {
                Some(k) => keys.push(k),
                None => tracing::warn!(
                    space = R::SPACE.dir(),
                    object = %name,
                    "not an object of this space; left alone"
                ),
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Where the record `key` is, for messages.
    pub fn locate<R: Record>(&self, key: &R::Key) -> String {
        self.store().locate(R::SPACE, &R::name(key))
    }
}

fn create_any<R: Record>(repo: &Repository, record: &R) -> Result<Published, StoreError> {
    repo.store()
        .create_object(R::SPACE, &R::name(&record.key()), &record.encode())
}

impl Maintainer {
    /// Creates any record if its name is free (the maintain capability's `create`).
    pub fn create<R: Record>(&self, record: &R) -> Result<Published, StoreError> {
        create_any(self, record)
    }

    /// Removes the record `key`; one that is not there is not an error.
    pub fn remove<R: Record>(&self, key: &R::Key) -> Result<(), StoreError> {
        match valid::<R>(key) {
            Some(name) => self.maintain_store().remove_object(R::SPACE, &name),
            None => Ok(()),
        }
    }
}
