//! Progress on a terminal: bytes read from the sources, bytes sent, objects done and the
//! rate. Hidden when stderr is not a terminal (the structured logs speak there). While it
//! is drawn, log lines go around it (backup_common::bar_log; main's tracing writer), so a
//! log line never lands on the bar.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
    sent: Arc<AtomicU64>,
    objects_done: Arc<AtomicU64>,
    objects_total: Arc<AtomicU64>,
}

impl Progress {
    /// A bar on stderr when it is a terminal, else an invisible one.
    pub fn for_stderr() -> Self {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4))
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} read {bytes} ({bytes_per_sec}) {msg}",
            )
            .expect("valid template"),
        );
        backup_common::bar_log::show(&bar);
        Progress {
            bar,
            sent: Arc::default(),
            objects_done: Arc::default(),
            objects_total: Arc::default(),
        }
    }

    fn refresh(&self) {
        self.bar.set_message(format!(
            "· sent {} · objects {}/{}",
            indicatif::HumanBytes(self.sent.load(Ordering::Relaxed)),
            self.objects_done.load(Ordering::Relaxed),
            self.objects_total.load(Ordering::Relaxed)
        ));
    }

    /// Source bytes chunked (dump and objects).
    pub fn read(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    /// Chunk payload bytes that crossed the network.
    pub fn sent(&self, bytes: u64) {
        self.sent.fetch_add(bytes, Ordering::Relaxed);
        self.refresh();
    }

    pub fn objects_total(&self, n: u64) {
        self.objects_total.store(n, Ordering::Relaxed);
        self.refresh();
    }

    pub fn object_done(&self) {
        self.objects_done.fetch_add(1, Ordering::Relaxed);
        self.refresh();
    }

    pub fn finish(&self) {
        // The last bar of the run: log lines go straight to stderr again.
        backup_common::bar_log::hide_all();
        self.bar.finish_and_clear();
    }
}
