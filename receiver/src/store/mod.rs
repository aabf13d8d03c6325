//! The repository on disk: chunks, snapshot manifests, the trash and the operator's
//! verdicts. The only layer that changes anything under the repository root.

pub mod repository;
pub mod trash;
pub mod verdicts;
