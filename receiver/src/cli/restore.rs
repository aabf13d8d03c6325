//! `restore`: the snapshot chosen, then each asked-for target written through the
//! operator layer, with what an operator must know said on stderr.

use anyhow::Context;
use backup_common::config::read_secret;
use backup_common::term::escape;

use super::args::RestoreArgs;
use super::exit::CliError;
use crate::operator::glob::KeyFilter;
use crate::operator::progress::Progress;
use crate::operator::restore;
use crate::store::repository::{RepoError, Repository};
use crate::store::verdicts;

pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    if args.dump_out.is_none()
        && args.objects_out.is_none()
        && args.pg_restore.is_none()
        && !args.objects_to_s3
    {
        return Err(CliError::Usage(
            "nothing to restore to: give --dump-out, --objects-out, --pg-restore or --objects-to-s3".into(),
        )
        .into());
    }
    let repo = args.target.open()?;
    let filter = KeyFilter::new(&args.include, &args.exclude)?;
    // Naming an id is the operator's choice (warned about below); `latest` is the newest
    // good snapshot unless --allow-suspect.
    let mut manifest = if args.snapshot == "latest" && args.allow_suspect {
        repo.resolve_any("latest")?
    } else {
        repo.resolve(&args.snapshot, true)?
    };
    select(&mut manifest, &filter)?;
    backup_common::eprintln_quiet!(
        "restoring snapshot {} ({}, {} objects)",
        escape(&manifest.id),
        manifest.time.to_rfc3339(),
        manifest.stats.object_count
    );
    describe_choice(&repo, &args.snapshot, &manifest)?;
    let split = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    if let Some(path) = &args.dump_out {
        let (repo, m, path) = (repo.clone(), manifest.clone(), path.clone());
        let bytes =
            tokio::task::spawn_blocking(move || restore::dump_to_file(&repo, &m, &path)).await??;
        backup_common::eprintln_quiet!("dump: {bytes} bytes verified and written");
    }
    if let Some(url) = &args.pg_restore {
        let (repo, m, url) = (repo.clone(), manifest.clone(), url.clone());
        let (bin, extra) = (split(&args.pg_restore_bin), split(&args.pg_restore_args));
        let bytes = tokio::task::spawn_blocking(move || {
            restore::dump_to_pg_restore(&repo, &m, &bin, &url, &extra)
        })
        .await??;
        backup_common::eprintln_quiet!("pg_restore: {bytes} dump bytes verified and restored");
    }
    if let Some(dir) = &args.objects_out {
        let (repo, m, dir) = (repo.clone(), manifest.clone(), dir.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            restore::objects_to_dir(&repo, &m, &dir, &Progress::for_stderr())
        })
        .await??;
        for (key, e) in &outcome.failures {
            backup_common::eprintln_quiet!(
                "object \"{}\" NOT restored: {}",
                escape(key),
                escape(&backup_common::error_chain(e))
            );
        }
        backup_common::eprintln_quiet!(
            "objects: {} objects, {} bytes verified and written",
            outcome.restored.objects,
            outcome.restored.bytes
        );
        if !outcome.failures.is_empty() {
            return Err(CliError::RestoreIncomplete {
                failed: outcome.failures.len(),
                total: manifest.objects.len(),
            }
            .into());
        }
    }
    if args.objects_to_s3 {
        let need = |v: Option<String>, flag: &str| {
            v.with_context(|| format!("--objects-to-s3 needs {flag}"))
        };
        let endpoint = need(args.s3_endpoint, "--s3-endpoint")?;
        let bucket = need(args.s3_bucket, "--s3-bucket")?;
        let key_file = args
            .s3_access_key_file
            .context("--objects-to-s3 needs --s3-access-key-file")?;
        let secret_file = args
            .s3_secret_key_file
            .context("--objects-to-s3 needs --s3-secret-key-file")?;
        let client = backup_common::s3::client(
            &endpoint,
            &args.s3_region,
            read_secret("--s3-access-key-file", &key_file)?,
            read_secret("--s3-secret-key-file", &secret_file)?,
            "backup-receiver",
        );
        let target = restore::S3Target { client, bucket };
        let progress = Progress::for_stderr();
        let t =
            restore::objects_to_s3(&repo, &manifest, &target, args.overwrite, &progress).await?;
        report_s3(&t);
        if !t.skipped.is_empty() {
            return Err(CliError::RestoreIncomplete {
                failed: t.skipped.len(),
                total: manifest.objects.len(),
            }
            .into());
        }
    }
    Ok(())
}

/// Narrows a restore to the objects `filter` lets through (all without globs); says how
/// many on stderr, and refuses a filter that matches nothing.
fn select(
    manifest: &mut backup_common::manifest::Manifest,
    filter: &KeyFilter,
) -> anyhow::Result<()> {
    if filter.is_all() {
        return Ok(());
    }
    let before = manifest.objects.len();
    manifest.objects.retain(|o| filter.matches(&o.key));
    if manifest.objects.is_empty() {
        return Err(CliError::Usage(format!(
            "no object of snapshot {} matches the --include/--exclude globs ({before} objects in it)",
            escape(&manifest.id)
        ))
        .into());
    }
    backup_common::eprintln_quiet!(
        "selected {} of {before} objects by --include/--exclude",
        manifest.objects.len()
    );
    Ok(())
}

fn report_s3(t: &crate::operator::to_s3::S3Outcome) {
    for k in &t.overwritten {
        backup_common::eprintln_quiet!(
            "object \"{}\": other content in the bucket replaced (--overwrite)",
            escape(k)
        );
    }
    for s in &t.skipped {
        backup_common::eprintln_quiet!(
            "object \"{}\" SKIPPED: the bucket holds other content there ({} bytes{}); give --overwrite to replace it",
            escape(&s.key),
            s.live_size,
            s.live_hash.as_deref().map(|h| format!(", blake3 {h}")).unwrap_or_default()
        );
    }
    backup_common::eprintln_quiet!(
        "objects to S3: {} objects, {} bytes verified and uploaded; {} already identical; {} skipped",
        t.uploaded.objects,
        t.uploaded.bytes,
        t.identical.len(),
        t.skipped.len()
    );
}

/// Says on stderr what an operator must know about the snapshot a command chose: that
/// `latest` skipped newer snapshots that are not good, or that the named one is not good.
fn describe_choice(
    repo: &Repository,
    asked: &str,
    chosen: &backup_common::manifest::Manifest,
) -> Result<(), RepoError> {
    if let Some(why) = verdicts::not_good_because(repo, chosen)? {
        backup_common::eprintln_quiet!(
            "WARNING: snapshot {} is {why}; used because --allow-suspect was given",
            chosen.id
        );
    }
    if asked == "latest" && verdicts::is_good(repo, chosen)? {
        let newer: Vec<String> = repo
            .snapshot_ids()?
            .into_iter()
            .filter(|id| id.as_str() > chosen.id.as_str())
            .collect();
        if !newer.is_empty() {
            backup_common::eprintln_quiet!(
                "latest good snapshot is {}; newer snapshot(s) not chosen because they are suspect or rejected: {}",
                chosen.id,
                newer.join(", ")
            );
        }
    }
    Ok(())
}
