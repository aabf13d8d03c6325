//! Throwaway PostgreSQL clusters for tests: 15 (Debian's), 16 and 17 (installed by
//! `scripts/install-test-postgres`, which `.ci/run` runs when they are missing).
//!
//! Owns the whole life of one cluster: a temporary directory (data directory,
//! unix-socket directory, server log), `initdb`, the `postgres` server process
//! on a free loopback port, and tear-down (server stopped, directory removed)
//! on [`Drop`]. When the test runs as root, `initdb` and `postgres` run as the
//! `postgres` OS user because both refuse to run as root.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;
use tokio_postgres::{Client, NoTls};

use crate::net;

/// Database superuser created by `initdb`.
pub const SUPERUSER: &str = "postgres";
/// Superuser password of clusters started with
/// [`PgCluster::start_with_password_auth`].
pub const SUPERUSER_PASSWORD: &str = "pg-superuser-pw-4711";

/// OS account the server runs as when the tests run as root.
const OS_USER: &str = "postgres";
/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval between readiness probes.
const READY_POLL: Duration = Duration::from_millis(50);
/// Interval between checks whether the stopped server has exited.
const EXIT_POLL: Duration = Duration::from_millis(10);
/// How often a start is retried when the chosen port was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;
/// Lines of the server log quoted in errors.
const LOG_TAIL_LINES: usize = 40;

/// Directory holding the PostgreSQL server binaries (`pg_config --bindir`
/// if that works and contains `initdb`, else `/usr/lib/postgresql/15/bin`).
pub fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    // The drill's own lookup, so tests and production find the same binaries.
    DIR.get_or_init(|| backup_receiver::operator::sandbox_pg::bin_dir(None))
        .clone()
}

/// Full path of a PostgreSQL 15 tool such as `pg_dump` or `psql`.
pub fn tool(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// Where `scripts/install-test-postgres` puts PostgreSQL 16 and 17.
pub const VERSIONS_ROOT: &str = "/opt/familienarchiv-test-pg";

/// A PostgreSQL major version the harness can run. Every version's binaries must be
/// there: a test never skips a version it was written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PgVersion {
    V15,
    V16,
    V17,
}

impl PgVersion {
    /// Every version the harness runs, oldest first.
    pub const ALL: [PgVersion; 3] = [PgVersion::V15, PgVersion::V16, PgVersion::V17];

    pub fn major(self) -> u32 {
        match self {
            PgVersion::V15 => 15,
            PgVersion::V16 => 16,
            PgVersion::V17 => 17,
        }
    }

    /// The directory holding this version's server and client binaries
    /// (`$BACKUP_TEST_PG_ROOT/<major>/bin` for 16 and 17). Panics with the command that
    /// installs them when they are missing.
    pub fn bin_dir(self) -> PathBuf {
        if self == PgVersion::V15 {
            return bin_dir();
        }
        let root = std::env::var_os("BACKUP_TEST_PG_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(VERSIONS_ROOT));
        let dir = root.join(self.major().to_string()).join("bin");
        assert!(
            dir.join("postgres").is_file() && dir.join("pg_dump").is_file(),
            "PostgreSQL {} is not installed under {}; run scripts/install-test-postgres",
            self.major(),
            root.display()
        );
        dir
    }

    /// Full path of this version's tool `name`.
    pub fn tool(self, name: &str) -> PathBuf {
        self.bin_dir().join(name)
    }
}

/// How a cluster is started: its version, and server settings (`-c name=value`)
/// (e.g. `archive_mode` for WAL archiving).
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub version: PgVersion,
    pub settings: Vec<(String, String)>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            version: PgVersion::V15,
            settings: Vec::new(),
        }
    }
}

/// How `initdb` sets up client authentication.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// Everyone is trusted.
    Trust,
    /// Unix-socket connections trusted; TCP connections need a SCRAM password.
    Password,
}

/// How [`PgCluster`] asks the server to stop.
#[derive(Clone, Copy)]
enum Shutdown {
    /// SIGINT: disconnect clients, checkpoint, exit. A restart needs no recovery.
    Fast,
    /// SIGQUIT: exit at once; for clusters about to be deleted.
    Immediate,
}

/// A running throwaway PostgreSQL cluster on `127.0.0.1:<port()>`.
pub struct PgCluster {
    port: u16,
    version: PgVersion,
    settings: Vec<(String, String)>,
    server: Option<Child>,
    /// Password the harness uses for [`SUPERUSER`]; `None` with trust auth.
    password: Mutex<Option<String>>,
    /// Declared last so it is removed after the server has stopped.
    dir: TempDir,
}

impl PgCluster {
    /// Starts a cluster where every connection is trusted (no passwords).
    pub async fn start() -> Result<PgCluster> {
        Self::start_with(Auth::Trust, PgOptions::default()).await
    }

    /// Starts a trust-auth cluster of `version`.
    pub async fn start_version(version: PgVersion) -> Result<PgCluster> {
        Self::start_with(
            Auth::Trust,
            PgOptions {
                version,
                ..PgOptions::default()
            },
        )
        .await
    }

    /// Starts a trust-auth cluster with `options`.
    pub async fn start_with_options(options: PgOptions) -> Result<PgCluster> {
        Self::start_with(Auth::Trust, options).await
    }

    /// Starts a cluster whose TCP connections need a SCRAM-SHA-256 password;
    /// the superuser's is [`SUPERUSER_PASSWORD`].
    pub async fn start_with_password_auth() -> Result<PgCluster> {
        Self::start_with(Auth::Password, PgOptions::default()).await
    }

    async fn start_with(auth: Auth, options: PgOptions) -> Result<PgCluster> {
        let owner = server_user()?;
        let parent = if owner.is_some() {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("pg-cluster-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
        std::fs::create_dir(dir.path().join("sock")).context("creating the socket directory")?;
        if let Some(ids) = owner {
            for path in [dir.path().to_path_buf(), dir.path().join("sock")] {
                std::os::unix::fs::chown(&path, Some(ids.uid), Some(ids.gid))
                    .with_context(|| format!("chown {} to {OS_USER}", path.display()))?;
            }
        }

        let password = (auth == Auth::Password).then(|| SUPERUSER_PASSWORD.to_owned());
        let mut cluster = PgCluster {
            port: 0,
            version: options.version,
            settings: options.settings,
            server: None,
            password: Mutex::new(password),
            dir,
        };
        cluster.initdb(auth).await?;

        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            cluster.port = net::free_port();
            match cluster.launch().await {
                Ok(()) => return Ok(cluster),
                Err(e) if cluster.log_tail().contains("Address already in use") => {
                    last_err = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no start attempt made")))
    }

    /// Runs `initdb` into `<dir>/data`.
    async fn initdb(&self, auth: Auth) -> Result<()> {
        let mut cmd = server_command(&self.tool("initdb"))?;
        cmd.arg("-D").arg(self.data_dir()).args([
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]);
        match auth {
            Auth::Trust => {
                cmd.arg("--auth=trust");
            }
            Auth::Password => {
                let pwfile = self.dir.path().join("pwfile");
                std::fs::write(&pwfile, SUPERUSER_PASSWORD)
                    .context("writing the initdb password file")?;
                cmd.args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                    .arg(format!("--pwfile={}", pwfile.display()));
            }
        }
        cmd.current_dir(self.dir.path());
        let out = tokio::process::Command::from(cmd)
            .output()
            .await
            .with_context(|| format!("running {}", self.tool("initdb").display()))?;
        if !out.status.success() {
            bail!(
                "initdb failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Spawns the server on `self.port` and waits until it accepts queries.
    async fn launch(&mut self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening the server log")?;
        let mut cmd = server_command(&self.tool("postgres"))?;
        for (name, value) in &self.settings {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.socket_dir())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "synchronous_commit=off",
            ])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log handle")?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.tool("postgres").display()))?;
        self.server = Some(child);

        match self.wait_ready().await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.shutdown(Shutdown::Immediate);
                Err(e.context(format!("server log tail:\n{}", self.log_tail())))
            }
        }
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = self.url("postgres");
        loop {
            if let Some(status) = self.server.as_mut().and_then(|c| c.try_wait().transpose()) {
                bail!(
                    "postgres exited during start-up ({})",
                    status.context("waiting for postgres")?
                );
            }
            let probe =
                tokio::time::timeout(Duration::from_secs(2), tokio_postgres::connect(&url, NoTls))
                    .await;
            let err = match probe {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "connection attempt timed out".to_owned(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "postgres on port {} not ready after {START_TIMEOUT:?}: {err}",
                    self.port
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// The server's major version.
    pub fn version(&self) -> PgVersion {
        self.version
    }

    /// Full path of this cluster's version of tool `name` (`pg_dump`, `pg_basebackup`…).
    pub fn tool(&self, name: &str) -> PathBuf {
        self.version.tool(name)
    }

    /// TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connection URL for `db` as the superuser, including the password when
    /// the cluster uses password auth.
    pub fn url(&self, db: &str) -> String {
        match self.superuser_password() {
            Some(pw) => self.url_as(SUPERUSER, &pw, db),
            None => format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port),
        }
    }

    /// Connection URL for `db` as `user` with `password` (percent-encoded).
    pub fn url_as(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{db}",
            percent_encode(user),
            percent_encode(password),
            self.port
        )
    }

    /// The superuser password the harness uses, if the cluster has password auth.
    pub fn superuser_password(&self) -> Option<String> {
        self.password.lock().expect("password lock").clone()
    }

    /// Connects to `db` as the superuser; the connection task is spawned on
    /// the current runtime.
    pub async fn client(&self, db: &str) -> Result<Client> {
        let (client, connection) = tokio_postgres::connect(&self.url(db), NoTls)
            .await
            .with_context(|| format!("connecting to database {db:?} on port {}", self.port))?;
        tokio::spawn(async move {
            // Ends when the client is dropped or the server goes away.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Creates database `name`.
    pub async fn create_db(&self, name: &str) -> Result<()> {
        self.client("postgres")
            .await?
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(name)))
            .await
            .with_context(|| format!("creating database {name:?}"))
    }

    /// Creates login role `user` with `password`, or sets the password of an
    /// existing role. Changing [`SUPERUSER`]'s password also updates the one
    /// [`url`](Self::url) and [`client`](Self::client) use.
    pub async fn set_password(&self, user: &str, password: &str) -> Result<()> {
        let client = self.client("postgres").await?;
        let exists = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
                &[&user],
            )
            .await
            .context("looking up role")?
            .get::<_, bool>(0);
        let verb = if exists { "ALTER" } else { "CREATE" };
        client
            .batch_execute(&format!(
                "{verb} ROLE {} WITH LOGIN PASSWORD {}",
                quote_ident(user),
                quote_literal(password)
            ))
            .await
            .with_context(|| format!("setting the password of role {user:?}"))?;
        if user == SUPERUSER {
            let mut current = self.password.lock().expect("password lock");
            if current.is_some() {
                *current = Some(password.to_owned());
            }
        }
        Ok(())
    }

    /// Stops the server (fast shutdown) and waits for it to exit. The data
    /// directory stays until drop, so [`restart`](Self::restart) can reuse it.
    pub fn stop(&mut self) {
        self.shutdown(Shutdown::Fast);
    }

    /// Starts the server again on the same port after [`stop`](Self::stop)
    /// (stopping it first if it is running).
    pub async fn restart(&mut self) -> Result<()> {
        self.shutdown(Shutdown::Fast);
        self.launch().await
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.server
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Directory of the server's unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// File receiving the server's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The last lines of the server log (empty if there is none yet).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// Signals the postmaster and waits for it, escalating to SIGKILL.
    fn shutdown(&mut self, mode: Shutdown) {
        let Some(mut child) = self.server.take() else {
            return;
        };
        let first = match mode {
            Shutdown::Fast => libc::SIGINT,
            Shutdown::Immediate => libc::SIGQUIT,
        };
        for (signal, patience) in [
            (first, Duration::from_secs(15)),
            (libc::SIGQUIT, Duration::from_secs(5)),
            (libc::SIGKILL, Duration::from_secs(5)),
        ] {
            if signal_and_wait(&mut child, signal, patience) {
                return;
            }
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.shutdown(Shutdown::Immediate);
    }
}

/// Sends `signal` to `child` and polls for its exit for up to `patience`.
/// Returns whether it has exited.
fn signal_and_wait(child: &mut Child, signal: libc::c_int, patience: Duration) -> bool {
    if let Ok(Some(_)) = child.try_wait() {
        return true;
    }
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return false;
    };
    // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
    unsafe { libc::kill(pid, signal) };
    let deadline = Instant::now() + patience;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => std::thread::sleep(EXIT_POLL),
        }
    }
}

/// Numeric ids of the `postgres` OS account.
#[derive(Clone, Copy)]
struct OsUser {
    uid: u32,
    gid: u32,
}

/// The account to run PostgreSQL as: `Some` when we are root (PostgreSQL
/// refuses to run as root), `None` to run as ourselves.
fn server_user() -> Result<Option<OsUser>> {
    static USER: OnceLock<Result<Option<OsUser>, String>> = OnceLock::new();
    USER.get_or_init(|| lookup_server_user().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn lookup_server_user() -> Result<Option<OsUser>> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id")
            .args([flag, OS_USER])
            .output()
            .with_context(|| format!("running id {flag} {OS_USER}"))?;
        if !out.status.success() {
            bail!(
                "running as root but there is no {OS_USER:?} OS user: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .with_context(|| format!("parsing `id {flag} {OS_USER}` output {text:?}"))
    };
    Ok(Some(OsUser {
        uid: id("-u")?,
        gid: id("-g")?,
    }))
}

/// A command for the PostgreSQL tool at `path`, set to run as the `postgres` OS
/// user when we are root.
pub fn server_command(path: &std::path::Path) -> Result<Command> {
    let mut cmd = Command::new(path);
    if let Some(user) = server_user()? {
        // std also drops supplementary groups when it switches uid. HOME etc.
        // would otherwise still point at root's (unreadable) home.
        cmd.uid(user.uid)
            .gid(user.gid)
            .env("HOME", "/tmp")
            .env("USER", OS_USER)
            .env("LOGNAME", OS_USER);
    }
    Ok(cmd)
}

/// Quotes an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (`standard_conforming_strings` is on).
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
