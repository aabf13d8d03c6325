//! The verification schedule's hooks into the [`Monitor`] and its gauges.

use std::fmt::Write as _;

use backup_common::bounded::bounded;
use backup_common::ping::Signal;

use super::{Monitor, State};
use crate::maintenance::verify_schedule::PassOutcome;
use crate::maintenance::verify_state::VerifyState;

impl Monitor {
    /// The verification schedule's remembered state, read at start: the metrics go on
    /// from where the last process left them.
    pub fn verify_restored(&self, s: &VerifyState) {
        let mut st = self.state();
        if let Some(t) = s.last_pass {
            st.last_verify = Some((t, s.last_pass_ok));
        }
        st.verify_progress = Some(s.cycle_progress);
        st.healed_total = s.healed_total;
        st.lost_chunks = s.lost.len() as u64;
    }

    /// A scheduled verification pass finished: metrics, and one fail ping if it found
    /// damage no earlier pass reported or declared chunks lost for good.
    pub fn verify_pass(&self, s: &VerifyState, outcome: &PassOutcome) {
        self.verify_restored(s);
        self.state().quarantined = outcome.quarantined;
        if let Some(body) = outcome.alert() {
            self.ping(Signal::Fail, body);
        }
    }

    /// A scheduled pass could not run (an I/O error): the last verification is a failure.
    pub fn verify_failed(&self, why: &str) {
        let now = (self.clock)();
        self.state().last_verify = Some((now, false));
        self.ping(Signal::Fail, format!("receiver: {}\n", bounded(why)));
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: String) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// `backup_receiver_verify_*` and `backup_receiver_quarantined_chunks`, once a pass ran
/// (or the verify state was read at start).
pub(super) fn gauges(st: &State, out: &mut String) {
    if let Some(p) = st.verify_progress {
        gauge(
            out,
            "backup_receiver_verify_cycle_progress_ratio",
            "Share of the stored chunks the current verification cycle has read back.",
            format!("{p:.4}"),
        );
        gauge(
            out,
            "backup_receiver_verify_healed_chunks",
            "Damaged chunks confirmed healed (uploaded again and read back), all time.",
            st.healed_total.to_string(),
        );
        gauge(
            out,
            "backup_receiver_verify_lost_chunks",
            "Damaged chunks no source will send again (permanent loss).",
            st.lost_chunks.to_string(),
        );
    }
    if let Some(q) = st.quarantined {
        gauge(
            out,
            "backup_receiver_quarantined_chunks",
            "Chunk files in the repository's quarantine.",
            q.to_string(),
        );
    }
}
