//! The repository: chunks, snapshot manifests, the trash, the operator's verdicts and the
//! upload-session leases, behind a store interface with two capabilities
//! ([`backend::AppendStore`] for the network service, [`backend::MaintainStore`] for the
//! NAS's maintenance). The only layer that changes anything under the repository root;
//! [`fs`] is the only module in it that touches the file system.
//!
//! Outside this folder nothing names a space or an object name: every stored object is a
//! typed record ([`record`], one type per space in [`records`]) read and written through
//! [`repository::Repository`] (append) or [`repository::Maintainer`] (maintain). Every
//! query can fail with a [`error::StoreError`], and a failure is never an answer.
//!
//! Adding a space (a new kind of stored object) is one small step: a `Space` variant and
//! its directory name in [`backend`], then `records/<space>.rs` with the record type, its
//! key and name rule, implementing `record::Record` (and `record::Appendable` only when
//! `serve` itself must create it); `pub mod` it in `records/mod.rs` and add its names to
//! `records/tests.rs`. Reading it is then `repo.read::<T>(&key)`, `repo.exists::<T>(&key)`
//! and `repo.keys::<T>()`; the memory store injects errors into it without more code.

pub mod backend;
pub mod error;
pub mod fs;
pub mod leases;
pub mod memory;
pub mod open;
pub mod record;
pub mod records;
pub mod repository;
pub mod trash;
pub mod verdicts;
