//! The whole system on loopback for end-to-end tests and the demo: a PostgreSQL cluster
//! with a sample `archiv` database, an S3 server with a `familienarchiv` bucket,
//! certificates from `backup-receiver`'s own generator, the real `backup-receiver` binary
//! serving over mutual TLS, and config files for the real `backup-sender` binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use backup_common::manifest::ROW_COUNT_TABLES_SQL;
use backup_common::tls::{init_certs, CertSpec};

use crate::net::wait_until_some;
use crate::pg::PgCluster;
use crate::s3::{S3Server, ACCESS_KEY, SECRET_KEY};

pub const DATABASE: &str = "archiv";
pub const BUCKET: &str = "familienarchiv";
pub const SENDER_IDENTITY: &str = "prod-vps";

/// Path of a workspace binary, next to the test executable's `deps/` directory.
/// `cargo test --workspace` builds them because the sender and receiver crates have
/// integration tests of their own.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built; run `cargo build --workspace --bins` (or `cargo test --workspace`)",
        path.display()
    );
    path
}

/// Runs `backup-receiver` with `args` and returns its output.
pub fn receiver_cli(args: &[&str]) -> Output {
    Command::new(bin("backup-receiver"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run backup-receiver")
}

/// The receiver accepts one commit per day by default; tests and the demo run several
/// "nights" within minutes, so unless `extra` sets its own cap they allow 50.
fn allow_several_commits_a_day(extra: &str) -> String {
    const CAP: &str = "max_snapshots_per_day = 50\n";
    if extra.contains("max_snapshots_per_day") {
        extra.to_string()
    } else if extra.contains("[limits]\n") {
        extra.replacen("[limits]\n", &format!("[limits]\n{CAP}"), 1)
    } else {
        format!("{extra}\n[limits]\n{CAP}")
    }
}

/// A scratch directory for a drill, as deploy/ sets it up: in /tmp, mode 0711, so the
/// drill's sandbox user may pass through but not list it (the stack's own directory is
/// private). Removed when the guard drops.
pub fn drill_scratch_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("drill-scratch-")
        .tempdir_in("/tmp")
        .expect("scratch directory in /tmp");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .expect("chmod 0711");
    dir
}

/// Certificates made by the product's own generator, plus a foreign CA for negative tests.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn create(dir: &Path, sender_identities: &[&str]) -> Result<Certs> {
        let ids: Vec<String> = sender_identities.iter().map(|s| s.to_string()).collect();
        init_certs(
            dir,
            &CertSpec {
                server_name: "localhost",
                server_ips: &["127.0.0.1".parse()?],
                sender_identities: &ids,
            },
        )?;
        Ok(Certs {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The receiver binary running `serve` on loopback. It is configured with port 0 and
/// reports the port the system gave it (`testhook::LISTEN_ADDR_ENV`), so no test picks a
/// "free" port that another process may take first; a restart binds the same port again
/// (proxies and the sender's config point at it).
pub struct ReceiverProcess {
    child: Option<Child>,
    pub port: u16,
    /// The metrics endpoint's address, when `monitoring.metrics_listen` is set (a test
    /// sets it to `127.0.0.1:0`); it may change on a restart.
    pub metrics: Option<std::net::SocketAddr>,
    pub config: PathBuf,
    pub repo: PathBuf,
    pub log: PathBuf,
    envs: Vec<(String, String)>,
}

impl ReceiverProcess {
    /// Writes `receiver.toml` into `dir` (with `extra` TOML appended) and starts serving.
    pub async fn start(
        dir: &Path,
        certs: &Certs,
        extra: &str,
        envs: &[(&str, &str)],
    ) -> Result<ReceiverProcess> {
        let repo = dir.join("repo");
        let config = dir.join("receiver.toml");
        let extra = allow_several_commits_a_day(extra);
        std::fs::write(
            &config,
            format!(
                r#"listen = "127.0.0.1:0"
repo = "{repo}"

[tls]
ca_cert = "{ca}"
server_cert = "{cert}"
server_key = "{key}"

[admission]
allowed_identities = ["{SENDER_IDENTITY}"]
allowed_networks = ["127.0.0.0/8"]
{extra}
"#,
                repo = repo.display(),
                ca = certs.path("ca.pem").display(),
                cert = certs.path("receiver.pem").display(),
                key = certs.path("receiver.key").display(),
            ),
        )?;
        let mut r = ReceiverProcess {
            child: None,
            port: 0,
            metrics: None,
            config,
            repo,
            log: dir.join("receiver.log"),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        r.spawn().await?;
        Ok(r)
    }

    async fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let addr_file = self.log.with_file_name("receiver.addr");
        match std::fs::remove_file(&addr_file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let child = Command::new(bin("backup-receiver"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env(backup_receiver::testhook::LISTEN_ADDR_ENV, &addr_file)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting backup-receiver")?;
        self.child = Some(child);
        let child = self.child.as_mut().expect("just spawned");
        let bound = wait_until_some(Duration::from_secs(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(anyhow::anyhow!("receiver exited with {status}")));
            }
            let text = std::fs::read_to_string(&addr_file).ok()?;
            Some(parse_addrs(&text))
        })
        .await
        .unwrap_or_else(|| Err(anyhow::anyhow!("receiver reported no address within 20 s")));
        let (bound, metrics) = match bound {
            Ok(addrs) => addrs,
            Err(e) => bail!(
                "receiver did not start: {e}\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            ),
        };
        self.metrics = metrics;
        if self.port == 0 {
            // Restarts bind this port again: whatever points at the receiver keeps working.
            self.port = bound.port();
            let text = std::fs::read_to_string(&self.config)?;
            let fixed = text.replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{}\"", self.port),
                1,
            );
            std::fs::write(&self.config, fixed)?;
        } else if bound.port() != self.port {
            bail!("receiver came back on {bound}, not port {}", self.port);
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// Process id of the running receiver (for resource measurements).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the crash case.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn().await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The addresses `serve` reports (`testhook::report_listen_addrs`): gRPC, metrics if any.
fn parse_addrs(text: &str) -> Result<(std::net::SocketAddr, Option<std::net::SocketAddr>)> {
    let mut grpc = None;
    let mut metrics = None;
    for line in text.lines() {
        let (name, addr) = line.split_once('=').context("line without `=`")?;
        let addr = addr
            .parse()
            .with_context(|| format!("receiver reported {line:?}"))?;
        match name {
            "grpc" => grpc = Some(addr),
            "metrics" => metrics = Some(addr),
            _ => bail!("receiver reported an unknown address {line:?}"),
        }
    }
    Ok((grpc.context("no gRPC address reported")?, metrics))
}

impl Drop for ReceiverProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Everything a nightly run needs, running.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub pg: PgCluster,
    pub s3: S3Server,
    pub certs: Certs,
    pub receiver: ReceiverProcess,
    pub local_dir: PathBuf,
    pub sender_config: PathBuf,
}

impl Stack {
    /// Starts the stack with a seeded database and bucket.
    pub async fn start() -> Result<Stack> {
        Self::start_with("", &[]).await
    }

    /// As [`Stack::start`], with extra receiver TOML and environment.
    pub async fn start_with(receiver_extra: &str, receiver_env: &[(&str, &str)]) -> Result<Stack> {
        Self::start_with_cluster(PgCluster::start(), receiver_extra, receiver_env).await
    }

    /// As [`Stack::start_with`], with a PostgreSQL cluster that requires passwords over TCP
    /// (the sender config's URL carries the superuser's password).
    pub async fn start_with_password_auth(
        receiver_extra: &str,
        receiver_env: &[(&str, &str)],
    ) -> Result<Stack> {
        Self::start_with_cluster(
            PgCluster::start_with_password_auth(),
            receiver_extra,
            receiver_env,
        )
        .await
    }

    async fn start_with_cluster(
        cluster: impl std::future::Future<Output = Result<PgCluster>>,
        receiver_extra: &str,
        receiver_env: &[(&str, &str)],
    ) -> Result<Stack> {
        let dir = tempfile::tempdir()?;
        // Private like the NAS's /etc/familienarchiv-backup and repository (tempfile's
        // default follows the umask): the drill refuses a sandbox user that could read
        // the config, the key or the repository.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        let (pg, s3) = tokio::try_join!(cluster, S3Server::start())?;
        pg.create_db(DATABASE).await?;
        seed_database(&pg).await?;
        s3.create_bucket(BUCKET).await?;
        let certs = Certs::create(&dir.path().join("certs"), &[SENDER_IDENTITY, "stranger"])?;
        let receiver =
            ReceiverProcess::start(dir.path(), &certs, receiver_extra, receiver_env).await?;
        let local_dir = dir.path().join("local-dumps");
        std::fs::write(dir.path().join("s3-access-key"), format!("{ACCESS_KEY}\n"))?;
        std::fs::write(dir.path().join("s3-secret-key"), format!("{SECRET_KEY}\n"))?;
        let mut stack = Stack {
            sender_config: dir.path().join("sender.toml"),
            dir,
            pg,
            s3,
            certs,
            receiver,
            local_dir,
        };
        stack.write_sender_config(&[])?;
        Ok(stack)
    }

    /// (Re)writes `sender.toml`; `pg_dump` overrides the command prefix when given.
    pub fn write_sender_config(&mut self, pg_dump: &[&str]) -> Result<()> {
        let pg_dump: Vec<String> = if pg_dump.is_empty() {
            vec![crate::pg::tool("pg_dump").display().to_string()]
        } else {
            pg_dump.iter().map(|s| s.to_string()).collect()
        };
        let text = sender_toml(self, &pg_dump);
        std::fs::write(&self.sender_config, text)?;
        Ok(())
    }

    pub fn repo(&self) -> &Path {
        &self.receiver.repo
    }

    /// Runs `backup-sender run --json`.
    pub fn run_sender(&self) -> SenderRun {
        self.sender(&["run", "--json"])
    }

    /// Runs `backup-sender <args> --config <sender.toml>`.
    pub fn sender(&self, args: &[&str]) -> SenderRun {
        let out = Command::new(bin("backup-sender"))
            .args(args)
            .arg("--config")
            .arg(&self.sender_config)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run backup-sender");
        SenderRun { output: out }
    }

    /// Rewrites `sender.toml` through `edit` (for keys the generator does not cover).
    pub fn edit_sender_config(&self, edit: impl FnOnce(String) -> String) -> Result<()> {
        let text = std::fs::read_to_string(&self.sender_config)?;
        std::fs::write(&self.sender_config, edit(text))?;
        Ok(())
    }

    /// Snapshot rows as `backup-receiver snapshots --json` lists them (its `snapshots`).
    pub fn snapshots(&self) -> Vec<serde_json::Value> {
        let out = receiver_cli(&[
            "snapshots",
            "--json",
            "--repo",
            self.repo().to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("snapshots json");
        report["snapshots"]
            .as_array()
            .expect("a snapshots list")
            .clone()
    }
}

fn sender_toml(stack: &Stack, pg_dump: &[String]) -> String {
    let d = stack.dir.path();
    let quoted: Vec<String> = pg_dump.iter().map(|s| format!("{s:?}")).collect();
    format!(
        r#"source_host = "test-vps"

[receiver]
url = "{url}"
ca_cert = "{ca}"
client_cert = "{cert}"
client_key = "{key}"

[database]
url = "{db}"
pg_dump = [{pg_dump}]
local_dir = "{local}"

[objects]
endpoint = "{endpoint}"
bucket = "{BUCKET}"
access_key_file = "{ak}"
secret_key_file = "{sk}"

[run]
retries = 3
"#,
        url = stack.receiver.url(),
        ca = stack.certs.path("ca.pem").display(),
        cert = stack.certs.path("sender.pem").display(),
        key = stack.certs.path("sender.key").display(),
        db = stack.pg.url(DATABASE),
        pg_dump = quoted.join(", "),
        local = stack.local_dir.display(),
        endpoint = stack.s3.endpoint(),
        ak = d.join("s3-access-key").display(),
        sk = d.join("s3-secret-key").display(),
    )
}

/// The outcome of one sender run.
pub struct SenderRun {
    pub output: Output,
}

impl SenderRun {
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    /// The JSON summary of a run that committed (exit 0, or 7: committed but flagged
    /// suspect by the receiver); panics with stderr otherwise.
    pub fn summary(&self) -> serde_json::Value {
        assert!(
            self.output.status.success() || self.code() == Some(7),
            "sender failed: {}",
            self.stderr()
        );
        serde_json::from_slice(&self.output.stdout).expect("summary json")
    }
}

/// A small archive schema: people, documents with text, and a table with a quoted name.
pub async fn seed_database(pg: &PgCluster) -> Result<()> {
    let c = pg.client(DATABASE).await?;
    c.batch_execute(
        r#"
        CREATE TABLE personen (id serial PRIMARY KEY, name text NOT NULL, geboren date);
        CREATE TABLE dokumente (
            id serial PRIMARY KEY,
            person_id int REFERENCES personen(id),
            titel text NOT NULL,
            inhalt text,
            objekt_key text,
            erfasst timestamptz DEFAULT now()
        );
        CREATE SCHEMA meta;
        CREATE TABLE meta."Schlagworte" (id serial PRIMARY KEY, wort text UNIQUE);
        INSERT INTO personen (name, geboren)
            SELECT 'Person ' || g, date '1900-01-01' + g FROM generate_series(1, 300) g;
        INSERT INTO dokumente (person_id, titel, inhalt, objekt_key)
            SELECT 1 + g % 300, 'Brief ' || g, repeat('Liebe Familie, ' || md5(g::text) || '. ', 20),
                   'briefe/' || g || '.pdf'
              FROM generate_series(1, 3000) g;
        INSERT INTO meta."Schlagworte" (wort) SELECT 'wort-' || g FROM generate_series(1, 50) g;
        "#,
    )
    .await?;
    Ok(())
}

/// Deterministic pseudo-random bytes (incompressible, like scans).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Table row counts of a database, `schema.table` → rows (as the sender records them).
pub async fn row_counts(
    pg: &PgCluster,
    db: &str,
) -> Result<std::collections::BTreeMap<String, u64>> {
    let c = pg.client(db).await?;
    let tables = c.query(ROW_COUNT_TABLES_SQL, &[]).await?;
    let mut out = std::collections::BTreeMap::new();
    for t in tables {
        let q: String = t.get(0);
        let n: String = t.get(1);
        let row = c
            .query_one(&format!("SELECT count(*) FROM {q}"), &[])
            .await?;
        out.insert(n, row.get::<_, i64>(0) as u64);
    }
    Ok(out)
}
