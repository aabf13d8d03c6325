//! The maintenance commands (prune, undelete, gc, verify): they run the maintenance layer
//! and print its report.

use backup_common::term::escape;

use super::args::RepoTarget;
use super::exit::CliError;
use crate::clock;
use crate::maintenance::{gc, prune, verify};
use crate::operator::snapshots;
use crate::store::repository::Repository;
use crate::store::trash;

pub async fn prune(target: RepoTarget, dry_run: bool) -> anyhow::Result<()> {
    let (repo, cfg) = target.open()?;
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

pub fn undelete(snapshot: &str, repo: &std::path::Path) -> anyhow::Result<()> {
    let repo = Repository::open(repo)?;
    let entry = trash::undelete(&repo, snapshot)?;
    println!(
        "snapshot {} is back (pruned at {}) and held against prune",
        entry.id,
        entry.pruned_at.to_rfc3339()
    );
    Ok(())
}

pub async fn gc(target: RepoTarget, dry_run: bool) -> anyhow::Result<()> {
    let (repo, cfg) = target.open()?;
    let now = clock::from_env()();
    let cut = gc::cutoff(now, cfg.gc_grace.0, None);
    let tmp_cut = std::time::SystemTime::now()
        .checked_sub(cfg.gc_grace.0)
        .unwrap_or(std::time::UNIX_EPOCH);
    let r =
        tokio::task::spawn_blocking(move || gc::collect(&repo, cut, tmp_cut, dry_run)).await??;
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

pub async fn verify(
    repo: &std::path::Path,
    read: verify::ReadData,
    json: bool,
) -> anyhow::Result<()> {
    let repo = Repository::open(repo)?;
    let r = tokio::task::spawn_blocking(move || verify::verify(&repo, read, true)).await??;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
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
        Err(CliError::DamageFound(r.damage.len()).into())
    }
}
