//! `backup-receiver`: argument parsing and exit codes only; the work is in the library.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use backup_common::term::{escape, escape_lines};
use backup_common::tls::{init_certs_with, CertSpec, Lifetimes};
use backup_receiver::clock;
use backup_receiver::config::{read_secret, ReceiverConfig, RetentionConfig};
use backup_receiver::maintenance::{gc, prune, verify};
use backup_receiver::monitoring::audit::AuditLog;
use backup_receiver::monitoring::guard;
use backup_receiver::operator::snapshots::{self, SnapshotRow};
use backup_receiver::operator::{drill, restore};
use backup_receiver::service::server;
use backup_receiver::store::repository::Repository;
use backup_receiver::store::{trash, verdicts};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "backup-receiver",
    version,
    about = "Write-once backup receiver for the family archive (runs on heim-nas)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC service that accepts nightly snapshots (mutual TLS).
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// List the snapshots in a repository.
    Snapshots {
        #[arg(long)]
        repo: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot (an id, or `latest`). Every byte is checked against the manifest.
    /// Files are written 0600, directories 0700, only into a new or empty directory and
    /// never through a link. Exit code 4 when some objects could not be restored (each
    /// is named; the others are restored).
    Restore(RestoreArgs),
    /// Restore drill: restore a snapshot into a sandbox and check it (row counts, sanity
    /// queries, every object's hash). The dump is restored as a role that is not a
    /// superuser; as root, the sandbox runs as [drill] sandbox_user with no network.
    /// Exit 0 only when everything matched; 1 when the drill failed or could not run.
    Drill(DrillArgs),
    /// Apply the retention policy: move snapshots it does not keep to the trash, and
    /// remove trash entries whose grace period has passed. Uses the receiver's clock.
    Prune {
        #[command(flatten)]
        target: RepoTarget,
        /// Print every snapshot with the reasons it is kept, or "would prune"; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Bring a pruned snapshot back from the trash (during its grace period) and hold it
    /// against later prunes (remove REPO/holds/<id>.json to release it).
    Undelete {
        snapshot: String,
        #[arg(long)]
        repo: PathBuf,
    },
    /// Remove chunks that no snapshot (kept or in the trash) references and that are older
    /// than retention.gc_grace. Takes no lock; safe while backups run.
    Gc {
        #[command(flatten)]
        target: RepoTarget,
        #[arg(long)]
        dry_run: bool,
    },
    /// Check that every chunk the snapshots reference exists (and with --read-data, that
    /// it decompresses and re-hashes correctly). Corrupt chunks are moved to
    /// REPO/quarantine so the next nightly run uploads them again.
    /// Exit code 3 when damage was found.
    Verify {
        #[arg(long)]
        repo: PathBuf,
        /// Re-read and re-hash every chunk.
        #[arg(long, conflicts_with = "read_data_subset")]
        read_data: bool,
        /// Re-read the slice N of M (e.g. 3/7): scrubs the whole store over M runs.
        #[arg(long, value_name = "N/M", value_parser = verify::ReadData::parse_subset)]
        read_data_subset: Option<verify::ReadData>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Certificate set-up.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Acknowledge a snapshot the anomaly guard marked suspect (an id, or `latest`).
    /// It then counts as good: it no longer pins older snapshots against retention and
    /// becomes the baseline for the next comparison. Written once to REPO/acks/<id>.json.
    Ack {
        snapshot: String,
        #[arg(long)]
        repo: PathBuf,
        /// Why the drop was expected (kept in the ack file and the audit log).
        #[arg(long)]
        note: Option<String>,
        /// Who acknowledges; defaults to $SUDO_USER, then $USER.
        #[arg(long)]
        operator: Option<String>,
    },
    /// Reject a snapshot (by its id): it is taken out of every decision (delta base, guard
    /// baseline, `latest`, retention slots, the chunks the network may learn exist) and
    /// kept on disk for forensics until retention lets it go. For a snapshot a compromised
    /// sender committed. Written once to REPO/rejects/<id>.json.
    Reject {
        snapshot: String,
        #[arg(long)]
        repo: PathBuf,
        /// Why (kept in the reject file and the audit log).
        #[arg(long)]
        note: Option<String>,
        /// Who rejects; defaults to $SUDO_USER, then $USER.
        #[arg(long)]
        operator: Option<String>,
    },
}

/// The repository a maintenance command works on, and where its policy comes from.
#[derive(Args)]
struct RepoTarget {
    /// The repository (defaults to `repo` in --config).
    #[arg(long)]
    repo: Option<PathBuf>,
    /// receiver.toml whose [retention] section applies (defaults otherwise).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl RepoTarget {
    fn open(&self) -> anyhow::Result<(Repository, RetentionConfig)> {
        let config = self
            .config
            .as_deref()
            .map(ReceiverConfig::load)
            .transpose()?;
        let repo = match (&self.repo, &config) {
            (Some(r), _) => r.clone(),
            (None, Some(c)) => c.repo.clone(),
            (None, None) => anyhow::bail!("give --repo or --config"),
        };
        let retention = config.map(|c| c.retention).unwrap_or_default();
        Ok((Repository::open(&repo)?, retention))
    }
}

/// Verification found damage: exit code 3.
#[derive(Debug, thiserror::Error)]
#[error("verification found {0} damaged chunk(s)")]
struct DamageFound(usize);

/// A restore wrote some objects but not all: exit code 4.
#[derive(Debug, thiserror::Error)]
#[error("restore incomplete: {failed} of {total} object(s) were not restored (listed above); the others were restored and verified")]
struct RestoreIncomplete {
    failed: usize,
    total: usize,
}

#[derive(Args)]
struct RestoreArgs {
    /// Snapshot id, or `latest` (the newest good snapshot).
    snapshot: String,
    #[arg(long)]
    repo: PathBuf,
    /// Let `latest` mean the newest snapshot whatever its status. (A snapshot named by
    /// its id is restored whatever its status, with a warning when it is not good.)
    #[arg(long)]
    allow_suspect: bool,
    /// Write the exact database dump file here (must not exist, not even as a link).
    #[arg(long)]
    dump_out: Option<PathBuf>,
    /// Write every object below this directory, at its key. The directory must be new
    /// or empty (and yours); anything in the way is refused, never followed or replaced.
    #[arg(long)]
    objects_out: Option<PathBuf>,
    /// Stream the dump into pg_restore against this database URL.
    #[arg(long)]
    pg_restore: Option<String>,
    /// pg_restore program (or command prefix, space separated).
    #[arg(long, default_value = "pg_restore")]
    pg_restore_bin: String,
    /// Extra pg_restore arguments, e.g. "--clean --if-exists --no-owner" (space separated).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pg_restore_args: String,
    /// Upload every object to an S3 bucket (needs the --s3-* options).
    #[arg(long)]
    objects_to_s3: bool,
    #[arg(long, requires = "objects_to_s3")]
    s3_endpoint: Option<String>,
    #[arg(long, requires = "objects_to_s3")]
    s3_bucket: Option<String>,
    #[arg(long, default_value = "us-east-1")]
    s3_region: String,
    #[arg(long, requires = "objects_to_s3")]
    s3_access_key_file: Option<PathBuf>,
    #[arg(long, requires = "objects_to_s3")]
    s3_secret_key_file: Option<PathBuf>,
}

#[derive(Args)]
struct DrillArgs {
    /// Snapshot id, or `latest` (the default: the newest good snapshot).
    #[arg(conflicts_with = "older_than")]
    snapshot: Option<String>,
    /// Allow drilling a snapshot that is suspect or rejected (named by its id).
    #[arg(long, requires = "snapshot")]
    allow_suspect: bool,
    /// The repository; default: `repo` from --config.
    #[arg(long, required_unless_present = "config")]
    repo: Option<PathBuf>,
    /// receiver.toml, for its [drill] section (and `repo`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Drill the newest snapshot at least this old (receiver's clock), e.g. `30d`.
    #[arg(long, value_parser = humantime::parse_duration)]
    older_than: Option<std::time::Duration>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a private CA, the receiver's server certificate and the sender's client certificate.
    Init {
        #[arg(long)]
        out: PathBuf,
        /// DNS name the sender uses to reach the receiver (e.g. heim-nas).
        #[arg(long)]
        server_name: String,
        /// IP addresses of the receiver to include (e.g. its Tailscale address).
        #[arg(long = "server-ip")]
        server_ips: Vec<IpAddr>,
        /// Identity (CN and SAN) of the sender's client certificate.
        #[arg(long = "sender-identity", required = true)]
        sender_identities: Vec<String>,
        /// Days the sender's client certificate is valid.
        #[arg(long, default_value_t = backup_common::tls::DEFAULT_SENDER_DAYS)]
        sender_days: u32,
        /// Days the receiver's server certificate is valid.
        #[arg(long, default_value_t = backup_common::tls::DEFAULT_SERVER_DAYS)]
        server_days: u32,
        /// Days the CA is valid.
        #[arg(long, default_value_t = backup_common::tls::DEFAULT_CA_DAYS)]
        ca_days: u32,
    },
    /// Issue a new sender certificate (sender.pem, sender.key) from the CA in --ca-dir.
    IssueSender {
        /// Directory holding ca.pem and ca.key, as `certs init` wrote them.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Identity (CN and SAN) of the new certificate.
        #[arg(long)]
        identity: String,
        /// Directory to write sender.pem and sender.key to (never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = backup_common::tls::DEFAULT_SENDER_DAYS)]
        days: u32,
    },
    /// Print a certificate's fingerprint as `admission.revoked_certificates` lists it.
    Fingerprint {
        /// A PEM certificate file (the first certificate in it counts).
        file: PathBuf,
    },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        builder.init();
    } else {
        builder.json().init();
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let config = ReceiverConfig::load(&config)?;
            server::serve(config, clock::from_env(), shutdown_signal()).await
        }
        Command::Snapshots { repo, json } => {
            let repo = Repository::open(&repo)?;
            let mut rows: Vec<SnapshotRow> = Vec::new();
            repo.for_each_manifest(|m| {
                rows.push(SnapshotRow::from(&m).with_verdicts(&repo));
                true
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                println!("no snapshots yet");
            } else {
                print!("{}", snapshots::table(&rows));
            }
            Ok(())
        }
        Command::Restore(args) => restore_cmd(args).await,
        Command::Drill(args) => drill_cmd(args).await,
        Command::Ack {
            snapshot,
            repo,
            note,
            operator,
        } => {
            let repo = Repository::open(&repo)?;
            let now = clock::from_env()();
            let ack = guard::acknowledge(
                &repo,
                &snapshot,
                &operator_name(operator),
                note.as_deref(),
                now,
            )?;
            audit_verdict(&repo, "ack", &ack, now);
            println!(
                "acknowledged suspect snapshot {} ({})",
                ack.snapshot,
                guard::ack_path(&repo, &ack.snapshot).display()
            );
            Ok(())
        }
        Command::Reject {
            snapshot,
            repo,
            note,
            operator,
        } => {
            let repo = Repository::open(&repo)?;
            let now = clock::from_env()();
            let r = verdicts::reject(
                &repo,
                &snapshot,
                &operator_name(operator),
                note.as_deref(),
                now,
            )?;
            audit_verdict(&repo, "reject", &r, now);
            println!(
                "rejected snapshot {} ({}); it stays on disk for forensics until retention",
                r.snapshot,
                verdicts::reject_path(&repo, &r.snapshot).display()
            );
            Ok(())
        }
        Command::Prune { target, dry_run } => {
            let (repo, cfg) = target.open()?;
            let now = clock::from_env()();
            let report =
                tokio::task::spawn_blocking(move || prune::prune(&repo, &cfg, now, dry_run))
                    .await??;
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
        Command::Undelete { snapshot, repo } => {
            let repo = Repository::open(&repo)?;
            let entry = trash::undelete(&repo, &snapshot)?;
            println!(
                "snapshot {} is back (pruned at {}) and held against prune",
                entry.id,
                entry.pruned_at.to_rfc3339()
            );
            Ok(())
        }
        Command::Gc { target, dry_run } => {
            let (repo, cfg) = target.open()?;
            let now = clock::from_env()();
            let cut = gc::cutoff(now, cfg.gc_grace, None);
            let tmp_cut = std::time::SystemTime::now()
                .checked_sub(cfg.gc_grace)
                .unwrap_or(std::time::UNIX_EPOCH);
            let r = tokio::task::spawn_blocking(move || gc::collect(&repo, cut, tmp_cut, dry_run))
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
        Command::Verify {
            repo,
            read_data,
            read_data_subset,
            json,
        } => {
            let repo = Repository::open(&repo)?;
            let read = match (read_data, read_data_subset) {
                (true, _) => verify::ReadData::All,
                (false, Some(subset)) => subset,
                (false, None) => verify::ReadData::None,
            };
            let r =
                tokio::task::spawn_blocking(move || verify::verify(&repo, read, true)).await??;
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
                Err(DamageFound(r.damage.len()).into())
            }
        }
        Command::Certs(CertsCommand::Init {
            out,
            server_name,
            server_ips,
            sender_identities,
            sender_days,
            server_days,
            ca_days,
        }) => {
            let files = init_certs_with(
                &out,
                &CertSpec {
                    server_name: &server_name,
                    server_ips: &server_ips,
                    sender_identities: &sender_identities,
                },
                &Lifetimes {
                    ca_days,
                    server_days,
                    sender_days,
                },
            )?;
            for f in files {
                println!("{}", out.join(f).display());
            }
            Ok(())
        }
        Command::Certs(CertsCommand::IssueSender {
            ca_dir,
            identity,
            out,
            days,
        }) => {
            for f in backup_common::tls::issue_sender(&ca_dir, &identity, &out, days)? {
                println!("{}", f.display());
            }
            Ok(())
        }
        Command::Certs(CertsCommand::Fingerprint { file }) => {
            let der = backup_common::tls::read_pem_certificate(&file)?;
            println!("{}", backup_common::tls::fingerprint(&der));
            Ok(())
        }
    }
}

async fn restore_cmd(args: RestoreArgs) -> anyhow::Result<()> {
    if args.dump_out.is_none()
        && args.objects_out.is_none()
        && args.pg_restore.is_none()
        && !args.objects_to_s3
    {
        anyhow::bail!("nothing to restore to: give --dump-out, --objects-out, --pg-restore or --objects-to-s3");
    }
    let repo = Repository::open(&args.repo)?;
    // Naming an id is the operator's choice (warned about below); `latest` is the newest
    // good snapshot unless --allow-suspect.
    let manifest = if args.snapshot == "latest" && args.allow_suspect {
        repo.resolve_any("latest")?
    } else {
        repo.resolve(&args.snapshot, true)?
    };
    eprintln!(
        "restoring snapshot {} ({}, {} objects)",
        escape(&manifest.id),
        manifest.time.to_rfc3339(),
        manifest.stats.object_count
    );
    describe_choice(&repo, &args.snapshot, &manifest);
    let split = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    if let Some(path) = &args.dump_out {
        let (repo, m, path) = (repo.clone(), manifest.clone(), path.clone());
        let bytes =
            tokio::task::spawn_blocking(move || restore::dump_to_file(&repo, &m, &path)).await??;
        eprintln!("dump: {bytes} bytes verified and written");
    }
    if let Some(url) = &args.pg_restore {
        let (repo, m, url) = (repo.clone(), manifest.clone(), url.clone());
        let (bin, extra) = (split(&args.pg_restore_bin), split(&args.pg_restore_args));
        let bytes = tokio::task::spawn_blocking(move || {
            restore::dump_to_pg_restore(&repo, &m, &bin, &url, &extra)
        })
        .await??;
        eprintln!("pg_restore: {bytes} dump bytes verified and restored");
    }
    if let Some(dir) = &args.objects_out {
        let (repo, m, dir) = (repo.clone(), manifest.clone(), dir.clone());
        let outcome =
            tokio::task::spawn_blocking(move || restore::objects_to_dir(&repo, &m, &dir)).await??;
        for (key, e) in &outcome.failures {
            eprintln!(
                "object \"{}\" NOT restored: {}",
                escape(key),
                escape(&backup_common::error_chain(e))
            );
        }
        eprintln!(
            "objects: {} objects, {} bytes verified and written",
            outcome.restored.objects, outcome.restored.bytes
        );
        if !outcome.failures.is_empty() {
            return Err(RestoreIncomplete {
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
        let client = backup_common_s3_client(
            &endpoint,
            &args.s3_region,
            read_secret("--s3-access-key-file", &key_file)?,
            read_secret("--s3-secret-key-file", &secret_file)?,
        );
        let t =
            restore::objects_to_s3(&repo, &manifest, &restore::S3Target { client, bucket }).await?;
        eprintln!(
            "objects to S3: {} objects, {} bytes verified and uploaded",
            t.objects, t.bytes
        );
    }
    Ok(())
}

async fn drill_cmd(args: DrillArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Some(ReceiverConfig::load(path)?),
        None => None,
    };
    let repo = match (args.repo, &config) {
        (Some(repo), _) => repo,
        (None, Some(c)) => c.repo.clone(),
        (None, None) => anyhow::bail!("give --repo or --config"),
    };
    let selector = match (args.snapshot, args.older_than) {
        (_, Some(age)) => drill::Selector::OlderThan(age),
        (name, None) => drill::Selector::Named {
            name: name.unwrap_or_else(|| "latest".into()),
            allow_suspect: args.allow_suspect,
        },
    };
    // What the sandbox's OS user must not read, besides the repository.
    let mut private_paths: Vec<PathBuf> = args.config.iter().cloned().collect();
    private_paths.extend(config.as_ref().map(|c| c.tls.server_key.clone()));
    let repo_path = repo.clone();
    let opts = drill::DrillOptions {
        repo,
        selector,
        config: config.map(|c| c.drill).unwrap_or_default(),
        now: clock::from_env()(),
        private_paths,
    };
    let now = opts.now;
    let report = drill::run_and_ping(&opts, shutdown_signal()).await?;
    if report.passed {
        // Retention keeps the newest snapshot that passed a drill ("drilled").
        let repo = Repository::open(&repo_path)?;
        verdicts::record_drill_passed(&repo, &report.snapshot, "restore drill passed", now)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    if !report.passed {
        anyhow::bail!(
            "restore drill of snapshot {} FAILED: {}",
            report.snapshot,
            report
                .failures
                .first()
                .map(String::as_str)
                .unwrap_or("see the report")
        );
    }
    Ok(())
}

/// Who runs an operator command: `--operator`, else $SUDO_USER, else $USER.
fn operator_name(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("SUDO_USER").ok())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// The audit record of an operator's verdict (`ack`, `reject`).
fn audit_verdict(
    repo: &Repository,
    event: &str,
    v: &verdicts::Ack,
    now: chrono::DateTime<chrono::Utc>,
) {
    AuditLog::new(repo.root()).record(
        now,
        event,
        serde_json::json!({
            "snapshot": v.snapshot,
            "operator": v.operator,
            "note": v.note,
        }),
    );
}

/// Says on stderr what an operator must know about the snapshot a command chose: that
/// `latest` skipped newer snapshots that are not good, or that the named one is not good.
fn describe_choice(repo: &Repository, asked: &str, chosen: &backup_common::manifest::Manifest) {
    if let Some(why) = verdicts::not_good_because(repo, chosen) {
        eprintln!(
            "WARNING: snapshot {} is {why}; used because --allow-suspect was given",
            chosen.id
        );
    }
    if asked == "latest" && verdicts::is_good(repo, chosen) {
        let newer: Vec<String> = repo
            .snapshot_ids()
            .unwrap_or_default()
            .into_iter()
            .filter(|id| id.as_str() > chosen.id.as_str())
            .collect();
        if !newer.is_empty() {
            eprintln!(
                "latest good snapshot is {}; newer snapshot(s) not chosen because they are suspect or rejected: {}",
                chosen.id,
                newer.join(", ")
            );
        }
    }
}

fn backup_common_s3_client(
    endpoint: &str,
    region: &str,
    access: String,
    secret: String,
) -> aws_sdk_s3::Client {
    let creds =
        aws_credential_types::Credentials::new(access, secret, None, None, "backup-receiver");
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_s3::config::Region::new(region.to_string()))
        .credentials_provider(creds)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

#[tokio::main]
async fn main() -> ExitCode {
    backup_common::limit_malloc_arenas();
    backup_common::tls::install_crypto_provider();
    init_logging();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "error: {}",
                escape_lines(&backup_common::error_chain(e.as_ref()))
            );
            if e.is::<DamageFound>() {
                ExitCode::from(3)
            } else if e.is::<RestoreIncomplete>() {
                ExitCode::from(4)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
