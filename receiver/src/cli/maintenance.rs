//! The maintenance commands (prune, undelete, gc, verify): they run the maintenance layer
//! and print its report.

use backup_common::term::escape;

use super::args::RepoArgs;
use super::exit::CliError;
use crate::clock;
use crate::config::ReceiverConfig;
use crate::maintenance::{gc, prune, verify};
use crate::operator::progress::Progress;
use crate::operator::{out, snapshots};
use crate::store::repository::RepoError;
use crate::store::{leases, trash};

pub async fn prune(target: RepoArgs, dry_run: bool) -> anyhow::Result<()> {
    let (repo, cfg) = target.open_with_retention()?;
    let now = clock::from_env()();
    let report =
        tokio::task::spawn_blocking(move || prune::prune(&repo, &cfg, now, dry_run)).await??;
    for d in &report.decisions {
        if dry_run || d.kept() {
            println!("{d}");
        } else {
            println!(
                "{:<22} {:<26} pruned (moved to the trash)",
                d.id, d.local_time
            );
        }
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for id in &report.purged {
        println!("trash: {verb} {id} (grace period over)");
    }
    Ok(())
}

pub fn undelete(snapshot: &str, target: &RepoArgs) -> anyhow::Result<()> {
    let repo = target.open_maintainer()?;
    let entry = trash::undelete(&repo, snapshot, clock::from_env()())?;
    println!(
        "snapshot {} is back (pruned at {}) and held against prune",
        entry.id,
        entry.pruned_at.to_rfc3339()
    );
    Ok(())
}

pub async fn gc(target: RepoArgs, dry_run: bool) -> anyhow::Result<()> {
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
    println!(
        "{} manifests reference {} chunks; {} chunks seen; {verb} {} chunks ({}); {} unreferenced chunks are younger than the grace period",
        r.manifests,
        r.referenced_chunks,
        r.chunks_seen,
        r.removed_chunks,
        snapshots::human_bytes(r.removed_bytes),
        r.young_unreferenced
    );
    Ok(())
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
    if json {
        out::print_json(&r)?;
    } else {
        println!(
            "{} snapshots, {} chunks referenced, {} read back ({}), {} damaged",
            r.snapshots,
            r.chunks,
            r.chunks_read,
            snapshots::human_bytes(r.bytes_read),
            r.damage.len()
        );
        for d in &r.damage {
            println!("{:?} chunk {}: {}", d.problem, d.chunk, escape(&d.detail));
            if let Some(q) = &d.quarantined {
                println!("  moved to {}", q.display());
            }
            for a in &d.affected {
                println!(
                    "  affects snapshot {} {}",
                    escape(&a.snapshot),
                    escape(&a.item)
                );
            }
        }
    }
    if r.ok() {
        Ok(())
    } else {
        if let Some(m) = &monitoring {
            let body = crate::maintenance::verify_schedule::damage_text(&r.damage);
            crate::monitoring::monitor::report_verify_damage(m, &body).await;
        }
        Err(CliError::DamageFound(r.damage.len()).into())
    }
}
