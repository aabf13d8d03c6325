//! Shared pieces of the family-archive backup: the wire protocol, content-defined chunking
//! and hashing, the snapshot manifest, configuration, object-key rules, retention
//! calendars, crash-safe file publishing and TLS helpers.
//!
//! Nothing here talks to the network or spawns tasks; the sender and receiver crates do.

pub mod chunk;
pub mod config;
pub mod durable;
pub mod keys;
pub mod manifest;
pub mod retention;
pub mod tls;
pub mod wire;

/// Generated gRPC code for `proto/backup.proto`.
pub mod proto {
    tonic::include_proto!("familienarchiv.backup.v1");
}

/// Largest gRPC message either side accepts: a batch of chunks or manifest entries.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
