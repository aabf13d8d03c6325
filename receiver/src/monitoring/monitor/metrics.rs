//! The monitor's metrics in Prometheus text exposition format.

use super::*;

impl Monitor {
    /// The metrics in Prometheus text exposition format.
    pub fn metrics(&self) -> String {
        let st = self.state();
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        if let Some(s) = &st.last_snapshot {
            gauge(
                "backup_receiver_last_snapshot_timestamp_seconds",
                "Commit time (receiver clock) of the newest snapshot.",
                s.time.timestamp().to_string(),
            );
            gauge(
                "backup_receiver_last_snapshot_bytes",
                "Source bytes (dump plus objects) of the newest snapshot.",
                s.total_bytes.to_string(),
            );
        }
        gauge(
            "backup_receiver_snapshots",
            "Snapshots kept in the repository.",
            st.snapshot_ids.len().to_string(),
        );
        gauge(
            "backup_receiver_stored_bytes",
            "Bytes of chunk files in the repository.",
            st.stored_bytes.to_string(),
        );
        gauge(
            "backup_receiver_chunks",
            "Chunk files in the repository.",
            st.chunks.to_string(),
        );
        gauge(
            "backup_receiver_logical_bytes",
            "Source bytes of all kept snapshots together.",
            st.logical_bytes.to_string(),
        );
        let ratio = if st.stored_bytes == 0 {
            0.0
        } else {
            st.logical_bytes as f64 / st.stored_bytes as f64
        };
        gauge(
            "backup_receiver_dedup_ratio",
            "Logical bytes of all kept snapshots per stored byte.",
            format!("{ratio:.4}"),
        );
        if let Some(free) = st.free_bytes {
            gauge(
                "backup_receiver_free_bytes",
                "Free bytes on the repository's file system.",
                free.to_string(),
            );
        }
        if let Some((_, expiry)) = st.admitted_certs.values().min_by_key(|(_, t)| *t) {
            gauge(
                "backup_receiver_admitted_certificate_expiry_timestamp_seconds",
                "When the first of the client certificates admitted since start expires.",
                expiry.timestamp().to_string(),
            );
        }
        if let Some((time, ok)) = st.last_verify {
            gauge(
                "backup_receiver_last_verify_success",
                "1 if the last verification found no damage, else 0.",
                u8::from(ok).to_string(),
            );
            gauge(
                "backup_receiver_last_verify_timestamp_seconds",
                "When the last verification finished (receiver clock).",
                time.timestamp().to_string(),
            );
        }
        if let Some(t) = st.last_check {
            gauge(
                "backup_receiver_last_check_timestamp_seconds",
                "When the background checks last ran (receiver clock): stale means stuck.",
                t.timestamp().to_string(),
            );
        }
        verify_hooks::gauges(&st, &mut out);
        let _ = writeln!(
            out,
            "# HELP backup_receiver_rejected_requests_total Requests refused or rejected, by reason.\n\
             # TYPE backup_receiver_rejected_requests_total counter"
        );
        for (reason, n) in &st.rejected {
            let _ = writeln!(
                out,
                "backup_receiver_rejected_requests_total{{reason=\"{}\"}} {n}",
                reason.replace(['\\', '"', '\n'], "_")
            );
        }
        let _ = writeln!(
            out,
            "# HELP backup_receiver_alert Conditions alerting now (1), by kind.\n\
             # TYPE backup_receiver_alert gauge"
        );
        for kind in ["missed_window", "low_free_space", "certificate_expiry"] {
            let _ = writeln!(
                out,
                "backup_receiver_alert{{kind=\"{kind}\"}} {}",
                u8::from(st.active.contains_key(kind))
            );
        }
        out
    }
}
