//! Progress of long operator work (restore, find over many snapshots) on a terminal:
//! bytes, items and the rate, drawn on stderr. Hidden when stderr is not a terminal (a
//! timer's log then holds only the command's own lines). Cheap to clone and share
//! between the restore's worker threads.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
    done: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
    unit: Arc<std::sync::Mutex<&'static str>>,
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
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} {bytes} ({bytes_per_sec}) {msg}",
            )
            .expect("valid template"),
        );
        Progress {
            bar,
            done: Arc::default(),
            total: Arc::default(),
            unit: Arc::new(std::sync::Mutex::new("objects")),
        }
    }

    /// Starts counting `unit` (e.g. "objects"), `total` of them when known.
    pub fn start(&self, total: Option<u64>, unit: &'static str) {
        self.total.store(total.unwrap_or(0), Ordering::Relaxed);
        *self.unit.lock().unwrap() = unit;
        self.refresh();
    }

    fn refresh(&self) {
        let done = self.done.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let unit = *self.unit.lock().unwrap();
        self.bar.set_message(if total > 0 {
            format!("· {unit} {done}/{total}")
        } else {
            format!("· {unit} {done}")
        });
    }

    /// Bytes processed (read, verified and written).
    pub fn bytes(&self, n: u64) {
        self.bar.inc(n);
    }

    /// One item done, with its last `bytes`.
    pub fn item(&self, bytes: u64) {
        self.bar.inc(bytes);
        self.done.fetch_add(1, Ordering::Relaxed);
        self.refresh();
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
