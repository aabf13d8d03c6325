//! Shared pieces of the family-archive backup: the wire protocol, content-defined chunking
//! and hashing, the snapshot manifest, configuration, object-key rules, retention
//! calendars, crash-safe file publishing and TLS helpers.
//!
//! Nothing here spawns tasks or holds connections; the sender and receiver crates do. The
//! one network call is [`ping`]: a single bounded HTTP request to a dead-man's switch,
//! shared so both programs speak the healthchecks.io protocol the same way.

pub mod bar_log;
pub mod bounded;
pub mod chunk;
pub mod config;
pub mod contract;
pub mod disk;
pub mod durable;
pub mod keys;
pub mod manifest;
pub mod ping;
pub mod report;
pub mod retention;
pub mod s3;
pub mod stderr;
pub mod term;
pub mod tls;
pub mod wire;

/// Generated gRPC code for `proto/backup.proto`.
pub mod proto {
    tonic::include_proto!("familienarchiv.backup.v1");
}

/// Largest gRPC message either side accepts: a batch of chunks or manifest entries.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Caps glibc's malloc arenas at two. By default every thread that allocates under
/// contention gets an arena of its own (up to 8 per core), and freed chunk buffers
/// (0.25–4 MiB, allocated on the chunker, compression and gRPC threads) stay cached in each
/// of them; two arenas keep the peak RSS lower at no measurable CPU cost (see
/// docs/PERFORMANCE.md). Call once at the start of `main`.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter and is thread-safe.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// One line naming an error and its causes, leaving out a cause whose text the line
/// already holds (typed errors here print their source inline).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}
