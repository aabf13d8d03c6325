//! `restore`: the snapshot chosen (operator/select.rs), then each asked-for target written
//! through the operator layer, with what an operator must know said on stderr, and a
//! report (text on stderr, or the JSON envelope on stdout with every object restored,
//! skipped and failed).

use std::collections::BTreeSet;
use std::path::PathBuf;

use backup_common::config::read_secret;
use backup_common::eprintln_quiet as note;
use backup_common::manifest::Manifest;
use backup_common::term::escape;
use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;

use super::args::{AS_OF_HELP, SNAPSHOT_HELP};
use super::browse::GLOB_RULES;
use super::exit::{command_help, is_damage, CliError, Exit::*};
use super::pick::{context, pick};
use super::report::Reporter;
use crate::clock::{self, json_time};
use crate::operator::glob::{Hints, KeyFilter};
use crate::operator::progress::Progress;
use crate::operator::restore;
use crate::operator::select::{Chosen, Counting, Named};
use crate::store::repository::{RepoError, Repository};
use crate::store::verdicts;

/// Restore a snapshot. Every byte is checked against the manifest. Files are written
/// 0600, directories 0700, only into a new or empty directory and never through a link.
/// Exit code 4 when some objects could not be restored (each is named; the others are
/// restored), 3 when that was because of damaged or missing chunks.
#[derive(Args)]
#[command(after_help = format!("{GLOB_RULES}\n\n{}", command_help(
    &[
        "backup-receiver restore latest --dump-out /tmp/archiv.dump --objects-out /tmp/familienarchiv",
        "backup-receiver restore --as-of \"10 days ago\" --include briefe/1923/grete.pdf --objects-out /tmp/grete",
        "backup-receiver restore latest~1 --include scans/1923 --objects-to-s3 --s3-endpoint http://vps:9000 --s3-bucket familienarchiv --s3-access-key-file ak --s3-secret-key-file sk",
    ],
    &[Success, Failure, Usage, Damage, RestoreIncomplete, Config, RepositoryUnreadable, Refused],
)))]
pub struct RestoreArgs {
    #[arg(help = SNAPSHOT_HELP, required_unless_present = "as_of", conflicts_with = "as_of")]
    pub snapshot: Option<String>,
    #[arg(long, value_name = "TIME", help = AS_OF_HELP)]
    pub as_of: Option<String>,
    #[command(flatten)]
    pub target: super::args::RepoArgs,
    /// Restore only the objects whose key matches one of these globs (repeatable). A glob
    /// that names a folder (`scans/1923` or `scans/1923/`) means everything below it.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out the objects whose key matches one of these globs (repeatable; a folder
    /// means everything below it).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// With --objects-to-s3: replace an object the bucket holds with other content
    /// (without it such objects are left alone and listed; exit code 4).
    #[arg(long, requires = "objects_to_s3")]
    pub overwrite: bool,
    /// Let latest, latest~N, a day and --as-of count snapshots of any status, not only
    /// good ones. (A snapshot named by its id is restored whatever its status, with a
    /// warning when it is not good.)
    #[arg(long)]
    pub allow_suspect: bool,
    /// Write the exact database dump file here (must not exist, not even as a link).
    #[arg(long)]
    pub dump_out: Option<PathBuf>,
    /// Write every object below this directory, at its key. The directory must be new
    /// or empty (and yours); anything in the way is refused, never followed or replaced.
    #[arg(long)]
    pub objects_out: Option<PathBuf>,
    /// Stream the dump into pg_restore against this database URL.
    #[arg(long)]
    pub pg_restore: Option<String>,
    /// pg_restore program (or command prefix, space separated).
    #[arg(long, default_value = "pg_restore")]
    pub pg_restore_bin: String,
    /// Extra pg_restore arguments, e.g. "--clean --if-exists --no-owner" (space separated).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub pg_restore_args: String,
    /// Upload every object to an S3 bucket (needs the four --s3-* options below).
    #[arg(
        long,
        requires_all = ["s3_endpoint", "s3_bucket", "s3_access_key_file", "s3_secret_key_file"]
    )]
    pub objects_to_s3: bool,
    /// The bucket's S3 endpoint URL (e.g. http://vps:9000 for MinIO).
    #[arg(long, requires = "objects_to_s3")]
    pub s3_endpoint: Option<String>,
    /// The bucket to upload into (usually the live one: what it holds is never replaced
    /// without --overwrite).
    #[arg(long, requires = "objects_to_s3")]
    pub s3_bucket: Option<String>,
    /// The S3 region to sign requests for.
    #[arg(long, default_value = "us-east-1")]
    pub s3_region: String,
    /// File holding the S3 access key id.
    #[arg(long, requires = "objects_to_s3")]
    pub s3_access_key_file: Option<PathBuf>,
    /// File holding the S3 secret key.
    #[arg(long, requires = "objects_to_s3")]
    pub s3_secret_key_file: Option<PathBuf>,
    /// Print the JSON report on stdout (every object restored, skipped and failed).
    #[arg(long)]
    pub json: bool,
}

/// restore's JSON report (the envelope's `snapshot_id` is the snapshot restored).
#[derive(Debug, Default, Serialize)]
struct RestoreReport {
    /// Commit time of the snapshot (receiver clock).
    #[serde(serialize_with = "json_time")]
    time: DateTime<Utc>,
    /// How it was named: `id`, `prefix`, `latest`, `day` or `as_of`.
    chosen_by: &'static str,
    /// Why the snapshot is not good, when it is not.
    not_good: Option<String>,
    objects_in_snapshot: u64,
    objects_selected: u64,
    dump: Option<DumpReport>,
    pg_restore: Option<DumpReport>,
    objects: Option<ObjectsReport>,
    s3: Option<S3Report>,
}

#[derive(Debug, Serialize)]
struct DumpReport {
    path: Option<PathBuf>,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct Restored {
    key: String,
    size: u64,
}

#[derive(Debug, Serialize)]
struct Failed {
    key: String,
    /// The chunks it needs are damaged or missing (exit code 3 rather than 4).
    damage: bool,
    error: String,
}

#[derive(Debug, Serialize)]
struct ObjectsReport {
    directory: PathBuf,
    bytes: u64,
    restored: Vec<Restored>,
    failed: Vec<Failed>,
}

#[derive(Debug, Serialize)]
struct Skipped {
    key: String,
    live_size: u64,
    live_hash: Option<String>,
}

#[derive(Debug, Serialize)]
struct S3Report {
    bucket: String,
    bytes: u64,
    uploaded: Vec<Restored>,
    identical: Vec<String>,
    overwritten: Vec<String>,
    skipped: Vec<Skipped>,
}

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
    let reporter = Reporter::new("restore", args.json);
    let (repo, tz) = args.target.open_with_zone()?;
    let filter = KeyFilter::new(&args.include, &args.exclude)?;
    let counting = if args.allow_suspect {
        Counting::Any
    } else {
        Counting::Good
    };
    let chosen = pick(
        &repo,
        &context(tz, counting),
        args.snapshot.as_deref(),
        args.as_of.as_deref(),
    )?;
    let mut manifest = chosen.manifest.clone();
    let in_snapshot = manifest.objects.len() as u64;
    select(&mut manifest, &filter, &args.include)?;
    note!(
        "restoring snapshot {} ({}, {} of {in_snapshot} object(s))",
        escape(&manifest.id),
        clock::on_screen(manifest.time, tz),
        manifest.objects.len()
    );
    let mut report = RestoreReport {
        time: manifest.time,
        chosen_by: match chosen.named {
            Named::Id => "id",
            Named::Prefix(_) => "prefix",
            Named::Latest { .. } => "latest",
            Named::Day(_) => "day",
            Named::AsOf(_) => "as_of",
        },
        not_good: describe_choice(&repo, &chosen, args.allow_suspect)?,
        objects_in_snapshot: in_snapshot,
        objects_selected: manifest.objects.len() as u64,
        ..RestoreReport::default()
    };
    let split = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    if let Some(path) = &args.dump_out {
        let (repo, m, path) = (repo.clone(), manifest.clone(), path.clone());
        let bytes =
            tokio::task::spawn_blocking(move || restore::dump_to_file(&repo, &m, &path)).await??;
        note!("dump: {bytes} bytes verified and written");
        report.dump = Some(DumpReport {
            path: args.dump_out.clone(),
            bytes,
        });
    }
    if let Some(url) = &args.pg_restore {
        let (repo, m, url) = (repo.clone(), manifest.clone(), url.clone());
        let (bin, extra) = (split(&args.pg_restore_bin), split(&args.pg_restore_args));
        let bytes = tokio::task::spawn_blocking(move || {
            restore::dump_to_pg_restore(&repo, &m, &bin, &url, &extra)
        })
        .await??;
        note!("pg_restore: {bytes} dump bytes verified and restored");
        report.pg_restore = Some(DumpReport { path: None, bytes });
    }
    let mut incomplete = None;
    if let Some(dir) = &args.objects_out {
        let (r, m, d) = (repo.clone(), manifest.clone(), dir.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            restore::objects_to_dir(&r, &m, &d, &Progress::for_stderr())
        })
        .await??;
        let failed: Vec<Failed> = outcome
            .failures
            .iter()
            .map(|(key, e)| Failed {
                key: key.clone(),
                damage: is_damage(e),
                error: backup_common::error_chain(e),
            })
            .collect();
        for f in &failed {
            note!(
                "object \"{}\" NOT restored: {}",
                escape(&f.key),
                escape(&f.error)
            );
        }
        note!(
            "objects: {} verified and written",
            count(outcome.restored.objects, outcome.restored.bytes)
        );
        let failed_keys: BTreeSet<&str> = failed.iter().map(|f| f.key.as_str()).collect();
        if !failed.is_empty() {
            incomplete = Some(CliError::RestoreIncomplete {
                failed: failed.len(),
                total: manifest.objects.len(),
                damaged: failed.iter().filter(|f| f.damage).count(),
            });
        }
        report.objects = Some(ObjectsReport {
            directory: dir.clone(),
            bytes: outcome.restored.bytes,
            restored: restored_except(&manifest, &failed_keys),
            failed,
        });
    }
    if args.objects_to_s3 && incomplete.is_none() {
        let s3 = to_s3(&args, &repo, &manifest).await?;
        if !s3.skipped.is_empty() {
            incomplete = Some(CliError::RestoreIncomplete {
                failed: s3.skipped.len(),
                total: manifest.objects.len(),
                damaged: 0,
            });
        }
        report.s3 = Some(s3);
    }
    let id = manifest.id.clone();
    reporter.finish(
        Some(&id),
        &report,
        // The text report is the notes on stderr above.
        String::new,
        incomplete.map(anyhow::Error::from),
    )
}

/// "1 object, 5 bytes" / "3 objects, 12 bytes".
fn count(objects: u64, bytes: u64) -> String {
    let s = if objects == 1 { "" } else { "s" };
    format!("{objects} object{s}, {bytes} bytes")
}

fn restored_except(manifest: &Manifest, left_out: &BTreeSet<&str>) -> Vec<Restored> {
    manifest
        .objects
        .iter()
        .filter(|o| !left_out.contains(o.key.as_str()))
        .map(|o| Restored {
            key: o.key.clone(),
            size: o.size,
        })
        .collect()
}

async fn to_s3(
    args: &RestoreArgs,
    repo: &Repository,
    manifest: &Manifest,
) -> anyhow::Result<S3Report> {
    let need = |v: &Option<String>, flag: &str| {
        v.clone()
            .ok_or_else(|| CliError::Usage(format!("--objects-to-s3 needs {flag}")))
    };
    let endpoint = need(&args.s3_endpoint, "--s3-endpoint")?;
    let bucket = need(&args.s3_bucket, "--s3-bucket")?;
    let file = |v: &Option<PathBuf>, flag: &str| {
        v.clone()
            .ok_or_else(|| CliError::Usage(format!("--objects-to-s3 needs {flag}")))
    };
    let key_file = file(&args.s3_access_key_file, "--s3-access-key-file")?;
    let secret_file = file(&args.s3_secret_key_file, "--s3-secret-key-file")?;
    let client = backup_common::s3::client(
        &endpoint,
        &args.s3_region,
        read_secret("--s3-access-key-file", &key_file)?,
        read_secret("--s3-secret-key-file", &secret_file)?,
        "backup-receiver",
    );
    let target = restore::S3Target {
        client,
        bucket: bucket.clone(),
    };
    let progress = Progress::for_stderr();
    let t = restore::objects_to_s3(repo, manifest, &target, args.overwrite, &progress).await?;
    for k in &t.overwritten {
        note!(
            "object \"{}\": other content in the bucket replaced (--overwrite)",
            escape(k)
        );
    }
    for s in &t.skipped {
        note!(
            "object \"{}\" SKIPPED: the bucket holds other content there ({} bytes{}); give --overwrite to replace it",
            escape(&s.key),
            s.live_size,
            s.live_hash.as_deref().map(|h| format!(", blake3 {h}")).unwrap_or_default()
        );
    }
    note!(
        "objects to S3: {} verified and uploaded; {} already identical; {} skipped",
        count(t.uploaded.objects, t.uploaded.bytes),
        t.identical.len(),
        t.skipped.len()
    );
    let left_out: BTreeSet<&str> = t
        .identical
        .iter()
        .map(String::as_str)
        .chain(t.skipped.iter().map(|s| s.key.as_str()))
        .collect();
    Ok(S3Report {
        bucket,
        bytes: t.uploaded.bytes,
        uploaded: restored_except(manifest, &left_out),
        identical: t.identical.clone(),
        overwritten: t.overwritten.clone(),
        skipped: t
            .skipped
            .iter()
            .map(|s| Skipped {
                key: s.key.clone(),
                live_size: s.live_size,
                live_hash: s.live_hash.clone(),
            })
            .collect(),
    })
}

/// Narrows a restore to the objects `filter` lets through (all without globs); says how
/// many on stderr, and refuses a filter that matches nothing, with what would match.
fn select(manifest: &mut Manifest, filter: &KeyFilter, include: &[String]) -> anyhow::Result<()> {
    if filter.is_all() {
        return Ok(());
    }
    let before = manifest.objects.len();
    let mut hints: Vec<Hints> = include.iter().map(|g| Hints::new(g)).collect();
    for o in &manifest.objects {
        for h in &mut hints {
            h.observe(&o.key);
        }
    }
    manifest.objects.retain(|o| filter.matches(&o.key));
    if manifest.objects.is_empty() {
        let said: Vec<String> = hints.iter().flat_map(Hints::suggestions).collect();
        let hint = if said.is_empty() {
            String::new()
        } else {
            format!("; hint: {}", said.join("; "))
        };
        return Err(CliError::Usage(format!(
            "no object of snapshot {} matches the --include/--exclude globs ({before} objects in it){hint}",
            escape(&manifest.id)
        ))
        .into());
    }
    note!(
        "selected {} of {before} objects by --include/--exclude",
        manifest.objects.len()
    );
    Ok(())
}

/// Says on stderr what an operator must know about the snapshot chosen: that it is not
/// good (and why it was used anyway), or that `latest` skipped newer snapshots that are
/// not good. Returns why it is not good, for the report.
fn describe_choice(
    repo: &Repository,
    chosen: &Chosen,
    allow_suspect: bool,
) -> Result<Option<String>, RepoError> {
    let m = &chosen.manifest;
    let why = verdicts::not_good_because(repo, m)?;
    if let Some(why) = &why {
        let because = if chosen.named.by_id() {
            "it was named by its id"
        } else if allow_suspect {
            "--allow-suspect was given"
        } else {
            "it was chosen"
        };
        note!(
            "WARNING: snapshot {} is {}; restoring it because {because}",
            escape(&m.id),
            escape(why)
        );
    }
    if chosen.named == (Named::Latest { back: 0 }) && why.is_none() {
        let newer: Vec<String> = repo
            .snapshot_ids()?
            .into_iter()
            .filter(|id| id.as_str() > m.id.as_str())
            .collect();
        if !newer.is_empty() {
            note!(
                "latest good snapshot is {}; newer snapshot(s) not chosen because they are suspect or rejected: {}",
                escape(&m.id),
                newer.join(", ")
            );
        }
    }
    Ok(why)
}
