//! Progress of long operator work (restore, the drill's object restore, verify, find over
//! many snapshots) on a terminal, drawn on stderr: with the totals the manifests give
//! (bytes and items), a bar, the percentage and the time left; without them, the count
//! and the rate. Hidden when stderr is not a terminal (a timer's log then holds only the
//! command's own lines). While it is drawn, log lines and notes go around it
//! (backup_common::bar_log). Cheap to clone and share between the restore's workers.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use backup_common::bar_log;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
    state: Arc<State>,
}

struct State {
    done: AtomicU64,
    total: AtomicU64,
    unit: Mutex<&'static str>,
    /// Position counts bytes (a byte total is known) rather than items.
    by_bytes: std::sync::atomic::AtomicBool,
    log_token: AtomicU64,
}

impl Progress {
    /// A bar on stderr when it is a terminal, else an invisible one.
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Self::with_bar(ProgressBar::with_draw_target(
                None,
                ProgressDrawTarget::stderr_with_hz(4),
            ))
        } else {
            Self::hidden()
        }
    }

    /// Draws nothing (tests, and output that is not a terminal).
    pub fn hidden() -> Self {
        Self::with_bar(ProgressBar::hidden())
    }

    fn with_bar(bar: ProgressBar) -> Self {
        Progress {
            bar,
            state: Arc::new(State {
                done: AtomicU64::new(0),
                total: AtomicU64::new(0),
                unit: Mutex::new("objects"),
                by_bytes: Default::default(),
                log_token: AtomicU64::new(0),
            }),
        }
    }

    /// Starts counting `unit` (e.g. "objects"): `items` of them and `bytes` in all, when
    /// known. With a byte total the bar, percentage and time left follow the bytes;
    /// with only an item count, the items.
    pub fn start(&self, items: Option<u64>, bytes: Option<u64>, unit: &'static str) {
        let s = &self.state;
        s.done.store(0, Ordering::Relaxed);
        s.total.store(items.unwrap_or(0), Ordering::Relaxed);
        *s.unit.lock().unwrap() = unit;
        s.by_bytes.store(bytes.is_some(), Ordering::Relaxed);
        let template = match (bytes, items) {
            (Some(_), _) => "{spinner} {elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {percent}% ({bytes_per_sec}, {eta} left) {msg}",
            (None, Some(_)) => "{spinner} {elapsed_precise} [{wide_bar}] {percent}% ({eta} left) {msg}",
            (None, None) => "{spinner} {elapsed_precise} {msg}",
        };
        self.bar
            .set_style(ProgressStyle::with_template(template).expect("valid template"));
        self.bar.set_position(0);
        match bytes.or(items) {
            Some(len) => self.bar.set_length(len),
            None => self.bar.unset_length(),
        }
        self.bar.reset_eta();
        s.log_token
            .store(bar_log::show(&self.bar), Ordering::Relaxed);
        self.refresh();
    }

    fn refresh(&self) {
        let s = &self.state;
        let done = s.done.load(Ordering::Relaxed);
        let total = s.total.load(Ordering::Relaxed);
        let unit = *s.unit.lock().unwrap();
        self.bar.set_message(if total > 0 {
            format!("· {unit} {done}/{total}")
        } else {
            format!("· {unit} {done}")
        });
    }

    /// Bytes processed (read, verified and written).
    pub fn bytes(&self, n: u64) {
        if self.state.by_bytes.load(Ordering::Relaxed) {
            self.bar.inc(n);
        }
    }

    /// One item done, with its `bytes`.
    pub fn item(&self, bytes: u64) {
        self.bar
            .inc(if self.state.by_bytes.load(Ordering::Relaxed) {
                bytes
            } else {
                1
            });
        self.state.done.fetch_add(1, Ordering::Relaxed);
        self.refresh();
    }

    pub fn finish(&self) {
        bar_log::hide(self.state.log_token.load(Ordering::Relaxed));
        self.bar.finish_and_clear();
    }
}
