//! The operator's tools on the NAS: listing and browsing snapshots (`ls`, `find`, `diff`,
//! `dump`), restoring them (whole or by glob), and the restore drill with its sandbox
//! PostgreSQL. They read the repository and write only their own output.

pub mod browse;
pub mod drill;
pub mod dump;
pub mod glob;
pub mod out;
pub mod progress;
pub mod restore;
pub mod sandbox_pg;
pub mod select;
pub mod snapshots;
pub mod to_s3;
