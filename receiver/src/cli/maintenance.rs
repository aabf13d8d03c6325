//! The maintenance commands (prune, undelete, gc, verify): they run the maintenance layer
//! and print its report (text, or the JSON envelope of cli/report.rs).

use std::fmt::Write as _;

use backup_common::term::escape;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::args::RepoArgs;
use super::exit::CliError;
use super::report::Reporter;
use crate::clock;
use crate::config::ReceiverConfig;
use crate::maintenance::{gc, prune, verify};
use crate::operator::progress::Progress;
use crate::operator::snapshots;
use crate::store::repository::RepoError;
use crate::store::{leases, trash};

pub async fn prune(target: RepoArgs, dry_run: bool, json: bool) -> anyhow::Result<()> {
    let (repo, cfg) = target.open_with_retention()?;
    let now = clock::from_env()();
    let report =
        tokio::task::spawn_blocking(move || prune::prune(&repo, &cfg, now, dry_run)).await??;
    Reporter::new("prune", json).ok(None, &report, || {
        let mut out = String::new();
        for d in &report.decisions {
            if dry_run || d.kept() {
                let _ = writeln!(out, "{d}");
            } else {
                let _ = writeln!(
                    out,
                    "{:<22} {:<26} pruned (moved to the trash)",
                    escape(&d.id),
                    d.local_time
                );
            }
        }
        let verb = if dry_run { "would remove" } else { "removed" };
        for id in &report.purged {
            let _ = writeln!(out, "trash: {verb} {} (grace period over)", escape(id));
        }
        out
    })
}

/// undelete's JSON report.
#[derive(Serialize)]
struct Undeleted {
    #[serde(serialize_with = "clock::json_time")]
    pruned_at: DateTime<Utc>,
    held: bool,
}

pub fn undelete(snapshot: &str, target: &RepoArgs, json: bool) -> anyhow::Result<()> {
    let (_, config) = target.resolve()?;
    let tz = super::args::zone(config.as_ref());
    let repo = target.open_maintainer()?;
    let entry = trash::undelete(&repo, snapshot, clock::from_env()())?;
    let body = Undeleted {
        pruned_at: entry.pruned_at,
        held: true,
    };
    Reporter::new("undelete", json).ok(Some(&entry.id), &body, || {
        format!(
            "snapshot {} is back (pruned at {}) and held against prune\n",
            escape(&entry.id),
            clock::on_screen(entry.pruned_at, tz)
        )
    })
}

pub async fn gc(target: RepoArgs, dry_run: bool, json: bool) -> anyhow::Result<()> {
    let (repo, cfg) = target.open_with_retention()?;
    let now = clock::from_env()();
    // The sessions `serve` has open hold the cut-off back through their leases.
    let cut = gc::cutoff_with_leases(&repo, now, cfg.gc_grace, None)?;
    let tmp_cut = std::time::SystemTime::now()
        .checked_sub(cfg.gc_grace)
        .unwrap_or(std::time::UNIX_EPOCH);
    let r = tokio::task::spawn_blocking(move || {
        let r = gc::collect(&repo, cut, tmp_cut, dry_run)?;
        if !dry_run {
            leases::clean(&repo, now)?;
        }
        Ok::<_, RepoError>(r)
    })
    .await??;
    let verb = if dry_run { "would free" } else { "freed" };
    Reporter::new("gc", json).ok(None, &r, || {
        format!(
            "{} manifests reference {} chunks; {} chunks seen; {verb} {} chunks ({}); {} unreferenced chunks are younger than the grace period\n",
            r.manifests,
            r.referenced_chunks,
            r.chunks_seen,
            r.removed_chunks,
            snapshots::human_bytes(r.removed_bytes),
            r.young_unreferenced
        )
    })
}

pub async fn verify(target: &RepoArgs, read: verify::ReadData, json: bool) -> anyhow::Result<()> {
    let repo = target.open_maintainer()?;
    let monitoring = match &target.config {
        Some(c) => Some(ReceiverConfig::load(c)?.monitoring),
        None => None,
    };
    let r = tokio::task::spawn_blocking(move || {
        let progress = Progress::for_stderr();
        let r = verify::verify(&repo, read, true, &progress);
        progress.finish();
        r
    })
    .await??;
    let text = || {
        let mut out = format!(
            "{} snapshots, {} chunks referenced, {} read back ({}), {} damaged\n",
            r.snapshots,
            r.chunks,
            r.chunks_read,
            snapshots::human_bytes(r.bytes_read),
            r.damage.len()
        );
        for d in &r.damage {
            // "Missing chunk …", "Corrupt chunk …", "Manifest mismatch chunk …".
            let problem = d.problem.to_string();
            let (first, rest) = problem.split_at(1);
            let _ = writeln!(
                out,
                "{}{rest} chunk {}: {}",
                first.to_uppercase(),
                d.chunk,
                escape(&d.detail)
            );
            if let Some(q) = &d.quarantined {
                let _ = writeln!(out, "  moved to {}", q.display());
            }
            for a in &d.affected {
                let _ = writeln!(
                    out,
                    "  affects snapshot {} {}",
                    escape(&a.snapshot),
                    escape(&a.item)
                );
            }
        }
        out
    };
    let reporter = Reporter::new("verify", json);
    if r.ok() {
        return reporter.ok(None, &r, text);
    }
    if let Some(m) = &monitoring {
        let body = crate::maintenance::verify_schedule::damage_text(&r.damage);
        crate::monitoring::monitor::report_verify_damage(m, &body).await;
    }
    let e = CliError::DamageFound(r.damage.len()).into();
    Err(reporter.failed(None, &r, text, e))
}
