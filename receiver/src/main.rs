//! `backup-receiver`: argument parsing and exit codes only; the work is in the library.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use backup_common::config::{read_secret, ReceiverConfig};
use backup_common::tls::{init_certs, CertSpec};
use backup_receiver::repository::Repository;
use backup_receiver::snapshots::{self, SnapshotRow};
use backup_receiver::{clock, restore, server};
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
    Restore(RestoreArgs),
    /// Certificate set-up.
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(Args)]
struct RestoreArgs {
    /// Snapshot id, or `latest`.
    snapshot: String,
    #[arg(long)]
    repo: PathBuf,
    /// Write the exact database dump file here (must not exist).
    #[arg(long)]
    dump_out: Option<PathBuf>,
    /// Write every object below this directory, at its key.
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
            let rows: Vec<SnapshotRow> = repo.manifests()?.iter().map(SnapshotRow::from).collect();
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
        Command::Certs(CertsCommand::Init {
            out,
            server_name,
            server_ips,
            sender_identities,
        }) => {
            let files = init_certs(
                &out,
                &CertSpec {
                    server_name: &server_name,
                    server_ips: &server_ips,
                    sender_identities: &sender_identities,
                },
            )?;
            for f in files {
                println!("{}", out.join(f).display());
            }
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
    let manifest = repo.resolve(&args.snapshot)?;
    eprintln!(
        "restoring snapshot {} ({}, {} objects)",
        manifest.id,
        manifest.time.to_rfc3339(),
        manifest.stats.object_count
    );
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
        let t =
            tokio::task::spawn_blocking(move || restore::objects_to_dir(&repo, &m, &dir)).await??;
        eprintln!(
            "objects: {} objects, {} bytes verified and written",
            t.objects, t.bytes
        );
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
            eprintln!("error: {}", backup_common::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
