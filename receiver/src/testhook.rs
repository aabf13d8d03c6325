//! Pause points for crash tests. With `BACKUP_RECEIVER_TEST_PAUSE=<point>=<file>`, a
//! process that reaches `<point>` while `<file>` exists (the test "arms" it) removes
//! `<file>`, creates `<file>.paused` and stops there until it is killed, so a test can
//! SIGKILL it at an exact step; a restarted process does not pause again. Like the fake
//! clock, the variable is set only by whoever starts the receiver (tests), never by
//! anything from the network; when it is unset every pause is a no-op.

use std::time::Duration;

pub const PAUSE_ENV: &str = "BACKUP_RECEIVER_TEST_PAUSE";

/// Commit: the manifest is built and checked, not yet published.
pub const COMMIT_BEFORE_PUBLISH: &str = "commit-before-publish";
/// Prune: the first snapshot is in the trash, the others are not.
pub const PRUNE_AFTER_FIRST_MOVE: &str = "prune-after-first-move";
/// Garbage collection's mark: every manifest is read, the mark lock still held.
pub const GC_MARK_DONE: &str = "gc-mark-done";
/// Garbage collection: the first unreferenced chunk is removed, the others are not.
pub const GC_AFTER_FIRST_REMOVE: &str = "gc-after-first-remove";

/// Blocks forever at `point` when the test variable names it. Call from blocking code only.
pub fn pause(point: &str) {
    let Some(spec) = std::env::var_os(PAUSE_ENV) else {
        return;
    };
    let spec = spec.to_string_lossy();
    let Some((want, file)) = spec.split_once('=') else {
        return;
    };
    if want != point || std::fs::remove_file(file).is_err() {
        return;
    }
    tracing::warn!(
        point,
        "paused by {PAUSE_ENV} (tests only); waiting to be killed"
    );
    let _ = std::fs::write(format!("{file}.paused"), point);
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// With `BACKUP_RECEIVER_TEST_LISTEN_ADDR_FILE=<file>`, `serve` writes the addresses it
/// bound to `<file>` once it listens: `grpc=127.0.0.1:40123` and, when the metrics endpoint
/// is on, `metrics=127.0.0.1:40124`, one a line. A test configures port 0 and reads the
/// ports back instead of picking free ones that another process may take first. The file
/// appears whole (written beside it, then renamed). Unset: nothing is written.
pub const LISTEN_ADDR_ENV: &str = "BACKUP_RECEIVER_TEST_LISTEN_ADDR_FILE";

/// Reports the bound addresses when the test variable asks for it.
pub fn report_listen_addrs(
    grpc: std::net::SocketAddr,
    metrics: Option<std::net::SocketAddr>,
) -> std::io::Result<()> {
    let Some(file) = std::env::var_os(LISTEN_ADDR_ENV) else {
        return Ok(());
    };
    let mut text = format!("grpc={grpc}\n");
    if let Some(m) = metrics {
        text.push_str(&format!("metrics={m}\n"));
    }
    let file = std::path::PathBuf::from(file);
    let mut tmp = file.clone().into_os_string();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &file)
}
