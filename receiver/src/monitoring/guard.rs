//! The anomaly guard: at commit, a snapshot is compared with the previous good one and
//! marked suspect (in its manifest, before it is published) when it fell or grew by more
//! than the `[guard]` thresholds. Ten nights of empty snapshots from a hostile sender must
//! not cost a single good one, and one inflated snapshot must not make every honest night
//! after it look like a drop.
//!
//! The guard judges only on facts the receiver measured: object count and bytes of
//! entries whose content it checked, the dump's size as stored, and the rows it counted in
//! the dump's own table data (`Manifest::measured`). The sender's row counts are compared
//! with that count and a disagreement makes the snapshot suspect; on their own they decide
//! nothing. A previous snapshot without measurements (format 1) is no baseline.
//!
//! An operator acknowledges a suspect snapshot with `backup-receiver ack` (it then counts
//! as good) or takes any snapshot out of every decision with `backup-receiver reject`;
//! both are write-once files (see [`crate::store::verdicts`]), and this module never changes a
//! manifest after it is published.

use std::collections::BTreeMap;

use crate::config::Guard;
use backup_common::manifest::Manifest;

pub use crate::store::verdicts::{
    ack_path, acknowledge, is_acknowledged, is_good, is_rejected, is_suspect, reject, Ack, AckError,
};

/// Why `snapshot` is suspect against `previous` (the newest good snapshot), if it is.
/// Several reasons are joined with "; ". The first snapshot is never suspect.
pub fn assess(
    thresholds: &Guard,
    previous: Option<&Manifest>,
    snapshot: &Manifest,
) -> Option<String> {
    let mut reasons = claim_disagreements(snapshot);
    if let Some(prev) = previous.filter(|p| p.content_verified()) {
        compare(thresholds, prev, snapshot, &mut reasons);
    }
    if reasons.is_empty() {
        return None;
    }
    Some(match previous.filter(|p| p.content_verified()) {
        Some(prev) => format!("against snapshot {}: {}", prev.id, reasons.join("; ")),
        None => reasons.join("; "),
    })
}

/// Rows the receiver counted in the dump, by table, if it could count them.
fn measured_rows(m: &Manifest) -> Option<&BTreeMap<String, u64>> {
    m.measured.as_ref()?.dump.as_ref()?.row_counts.as_ref()
}

/// Per-table reasons named in one verdict; the rest are counted. A verdict goes into the
/// manifest, the audit log and the reply, so it stays short whatever the dump holds.
const TABLES_NAMED: usize = 5;

/// Keeps the first `TABLES_NAMED` of `reasons` and counts the others.
fn bounded(mut reasons: Vec<String>) -> Vec<String> {
    if reasons.len() > TABLES_NAMED {
        let more = reasons.len() - TABLES_NAMED;
        reasons.truncate(TABLES_NAMED);
        reasons.push(format!("and {more} more table(s)"));
    }
    reasons
}

/// Tables whose row count the sender claims differently from what the dump holds.
fn claim_disagreements(snapshot: &Manifest) -> Vec<String> {
    let (Some(rows), Some(dump)) = (measured_rows(snapshot), &snapshot.dump) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (table, &claimed) in &dump.row_counts {
        match rows.get(table) {
            Some(&counted) if counted == claimed => {}
            Some(&counted) => out.push(format!(
                "the sender claims {claimed} rows for table {table}, the dump holds {counted}"
            )),
            None => out.push(format!(
                "the sender claims {claimed} rows for table {table}, the dump holds no data for it"
            )),
        }
    }
    for table in rows.keys().filter(|t| !dump.row_counts.contains_key(*t)) {
        out.push(format!(
            "the dump holds table {table}, for which the sender claims no row count"
        ));
    }
    bounded(out)
}

fn compare(thresholds: &Guard, prev: &Manifest, snapshot: &Manifest, reasons: &mut Vec<String>) {
    // `now` fell by more than `max` (a fraction) of `before`.
    let fell = |before: u64, now: u64, max: f64| {
        before > 0 && now < before && (before - now) as f64 > before as f64 * max
    };
    // `now` grew by more than `max_growth` of `before`, and `before` was at least `floor`.
    let grew = |before: u64, now: u64, floor: u64| {
        before >= floor.max(1)
            && now > before
            && (now - before) as f64 > before as f64 * thresholds.max_growth.get()
    };
    let (p, n) = (&prev.stats, &snapshot.stats);
    if fell(
        p.object_count,
        n.object_count,
        thresholds.max_object_count_drop.get(),
    ) {
        reasons.push(format!(
            "object count fell from {} to {} (guard.max_object_count_drop {})",
            p.object_count, n.object_count, thresholds.max_object_count_drop
        ));
    }
    if fell(
        p.object_bytes,
        n.object_bytes,
        thresholds.max_object_bytes_drop.get(),
    ) {
        reasons.push(format!(
            "object bytes fell from {} to {} (guard.max_object_bytes_drop {})",
            p.object_bytes, n.object_bytes, thresholds.max_object_bytes_drop
        ));
    }
    if fell(p.dump_bytes, n.dump_bytes, thresholds.max_dump_shrink.get()) {
        reasons.push(format!(
            "dump shrank from {} to {} bytes (guard.max_dump_shrink {})",
            p.dump_bytes, n.dump_bytes, thresholds.max_dump_shrink
        ));
    }
    let growth = |what: &str, before: u64, now: u64| {
        format!(
            "{what} grew from {before} to {now} (guard.max_growth {})",
            thresholds.max_growth
        )
    };
    if grew(
        p.object_count,
        n.object_count,
        thresholds.growth_min_objects,
    ) {
        reasons.push(growth("object count", p.object_count, n.object_count));
    }
    if grew(p.object_bytes, n.object_bytes, thresholds.growth_min_bytes) {
        reasons.push(growth("object bytes", p.object_bytes, n.object_bytes));
    }
    if grew(p.dump_bytes, n.dump_bytes, thresholds.growth_min_bytes) {
        reasons.push(growth("dump bytes", p.dump_bytes, n.dump_bytes));
    }
    let no_rows = BTreeMap::new();
    // No dump holds no rows; a dump whose rows could not be counted is judged by its size.
    let now_rows = match &snapshot.dump {
        None => Some(&no_rows),
        Some(_) => measured_rows(snapshot),
    };
    if measured_rows(prev).is_some() && now_rows.is_none() {
        // Rows that could be counted last time and cannot now: the dump changed its form
        // (compression, trailing bytes), which is how a dump would hide a mass deletion.
        reasons
            .push("the previous dump's rows were counted, this dump's rows cannot be".to_string());
    }
    if let (Some(before_rows), Some(now_rows)) = (measured_rows(prev), now_rows) {
        let mut tables = Vec::new();
        for (table, &before) in before_rows {
            let now = now_rows.get(table).copied().unwrap_or(0);
            if fell(before, now, thresholds.max_table_rows_drop.get()) {
                tables.push(format!(
                    "table {table} fell from {before} to {now} rows (guard.max_table_rows_drop {})",
                    thresholds.max_table_rows_drop
                ));
            }
            if grew(before, now, thresholds.growth_min_rows) {
                tables.push(growth(&format!("table {table}'s rows"), before, now));
            }
        }
        reasons.extend(bounded(tables));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use backup_common::chunk::ChunkId;
    use backup_common::manifest::{
        DumpEntry, Measured, MeasuredDump, SnapshotStats, FORMAT_VERSION,
    };
    use chrono::Utc;

    use super::*;

    fn snap(id: &str, objects: u64, bytes: u64, dump: u64, rows: &[(&str, u64)]) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            id: id.into(),
            time: Utc::now(),
            sender_time: None,
            source_host: "vps".into(),
            peer_identity: "prod-vps".into(),
            bucket: "b".into(),
            dump: Some(DumpEntry {
                file_name: "d.dump".into(),
                database: "archiv".into(),
                size: dump,
                hash: ChunkId([0; 32]),
                chunks: vec![],
                row_counts: rows
                    .iter()
                    .map(|(t, n)| (t.to_string(), *n))
                    .collect::<BTreeMap<_, _>>(),
            }),
            objects: vec![],
            stats: SnapshotStats {
                object_count: objects,
                object_bytes: bytes,
                dump_bytes: dump,
                new_chunks: 0,
                new_bytes: 0,
            },
            suspect: None,
            measured: Some(Measured {
                content_verified: true,
                dump: Some(MeasuredDump {
                    archive_version: "1.14.0".into(),
                    row_counts: Some(rows.iter().map(|(t, n)| (t.to_string(), *n)).collect()),
                    row_counts_unmeasured: None,
                }),
                ..Measured::default()
            }),
        }
    }

    #[test]
    fn ordinary_growth_and_small_drops_pass() {
        let g = Guard::default();
        let prev = snap("a", 100, 1000, 500, &[("public.t", 10)]);
        assert_eq!(assess(&g, None, &prev), None);
        let next = snap("b", 95, 950, 400, &[("public.t", 6), ("public.new", 0)]);
        assert_eq!(assess(&g, Some(&prev), &next), None);
    }

    #[test]
    fn each_drop_beyond_its_threshold_is_named() {
        let g = Guard::default();
        let prev = snap("a", 100, 1000, 500, &[("public.t", 10), ("public.u", 4)]);
        let r = assess(
            &g,
            Some(&prev),
            &snap("b", 89, 1000, 500, &[("public.t", 10), ("public.u", 4)]),
        )
        .unwrap();
        assert!(r.contains("object count fell from 100 to 89"), "{r}");
        assert!(r.contains("snapshot a"), "{r}");
        let r = assess(
            &g,
            Some(&prev),
            &snap("b", 100, 899, 500, &[("public.t", 10), ("public.u", 4)]),
        )
        .unwrap();
        assert!(r.contains("object bytes"), "{r}");
        let r = assess(
            &g,
            Some(&prev),
            &snap("b", 100, 1000, 249, &[("public.t", 10), ("public.u", 4)]),
        )
        .unwrap();
        assert!(r.contains("dump shrank"), "{r}");
        let r = assess(
            &g,
            Some(&prev),
            &snap("b", 100, 1000, 500, &[("public.t", 4)]),
        )
        .unwrap();
        assert!(r.contains("table public.t fell from 10 to 4"), "{r}");
        assert!(r.contains("table public.u fell from 4 to 0"), "{r}");
        let mut empty = snap("b", 0, 0, 10, &[]);
        empty.dump = None;
        let r = assess(&g, Some(&prev), &empty).unwrap();
        assert_eq!(r.matches("; ").count(), 4, "{r}");
    }

    #[test]
    fn growth_beyond_the_threshold_is_suspect_and_claims_must_match_the_dump() {
        let g = Guard {
            growth_min_objects: 10,
            growth_min_bytes: 100,
            growth_min_rows: 5,
            ..Guard::default()
        };
        let prev = snap("a", 100, 1000, 500, &[("public.t", 10)]);
        let inflated = snap("b", 100, 400_000, 500, &[("public.t", 10_000)]);
        let r = assess(&g, Some(&prev), &inflated).unwrap();
        assert!(r.contains("object bytes grew from 1000 to 400000"), "{r}");
        assert!(
            r.contains("table public.t's rows grew from 10 to 10000"),
            "{r}"
        );
        // Doubling is allowed (max_growth 1.0); below the floors nothing is judged.
        assert_eq!(
            assess(
                &g,
                Some(&prev),
                &snap("c", 200, 2000, 1000, &[("public.t", 20)])
            ),
            None
        );
        let tiny = snap("d", 5, 50, 50, &[("public.t", 2)]);
        assert_eq!(
            assess(
                &g,
                Some(&tiny),
                &snap("e", 50, 5000, 500, &[("public.t", 200)])
            ),
            None
        );
        // The sender's claim is compared with what the dump holds.
        let mut lying = snap("f", 100, 1000, 500, &[("public.t", 10)]);
        lying
            .dump
            .as_mut()
            .unwrap()
            .row_counts
            .insert("public.t".into(), 11);
        let r = assess(&g, Some(&prev), &lying).unwrap();
        assert!(
            r.contains("the sender claims 11 rows for table public.t, the dump holds 10"),
            "{r}"
        );
        // A format-1 (unmeasured) previous snapshot is no baseline.
        let mut old = snap("g", 100_000, 10_000_000, 500_000, &[("public.t", 10_000)]);
        old.measured = None;
        assert_eq!(assess(&g, Some(&old), &prev), None);
    }

    #[test]
    fn a_verdict_names_a_few_tables_and_counts_the_rest() {
        let tables: Vec<(String, u64)> = (0..20).map(|i| (format!("public.t{i:02}"), 10)).collect();
        let refs: Vec<(&str, u64)> = tables.iter().map(|(t, n)| (t.as_str(), *n)).collect();
        let mut lying = snap("b", 100, 1000, 500, &refs);
        for (_, n) in lying.dump.as_mut().unwrap().row_counts.iter_mut() {
            *n = 99;
        }
        let r = assess(&Guard::default(), None, &lying).unwrap();
        assert_eq!(r.matches("the sender claims 99 rows").count(), TABLES_NAMED);
        assert!(r.ends_with("and 15 more table(s)"), "{r}");
    }

    #[test]
    fn a_dump_whose_rows_can_no_longer_be_counted_is_suspect() {
        let prev = snap("a", 100, 1000, 500, &[("public.t", 10)]);
        let mut now = snap("b", 100, 1000, 500, &[("public.t", 10)]);
        if let Some(d) = now.measured.as_mut().unwrap().dump.as_mut() {
            d.row_counts = None;
            d.row_counts_unmeasured = Some("its compression is not zlib".into());
        }
        let r = assess(&Guard::default(), Some(&prev), &now).unwrap();
        assert!(r.contains("this dump's rows cannot be"), "{r}");
    }
}
