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
/// Prune: the first manifest has moved to the trash, the others have not.
pub const PRUNE_AFTER_FIRST_MOVE: &str = "prune-after-first-move";
/// Garbage collection's mark: the snapshots are read, the trash is not (the mark lock held).
pub const GC_MARK_BEFORE_TRASH: &str = "gc-mark-before-trash";
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
