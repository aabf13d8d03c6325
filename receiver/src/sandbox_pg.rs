//! A throwaway PostgreSQL cluster for restore drills: `initdb` into a temporary directory,
//! a `postgres` server that listens on a unix socket in that directory only (no TCP port,
//! so nothing else on the NAS can reach it and there is no port to race for), and
//! tear-down (server stopped, directory removed) on [`Drop`].
//!
//! It must never touch a cluster it did not create. When run as root, `initdb` and
//! `postgres` run as the `postgres` OS user (both refuse to run as root).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Where PostgreSQL 15 lives when neither the configuration nor `pg_config` say otherwise.
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// OS account the server runs as when the drill runs as root.
const OS_USER: &str = "postgres";
/// Superuser `initdb` creates.
pub const SUPERUSER: &str = "postgres";
/// Port number in the socket file name (`.s.PGSQL.<port>`); no TCP port is opened.
const SOCKET_PORT: u16 = 5432;
const START_TIMEOUT: Duration = Duration::from_secs(120);
const LOG_TAIL_LINES: usize = 30;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("running as root but there is no {OS_USER:?} OS user to run PostgreSQL as")]
    NoOsUser,
    #[error("initdb failed ({status}): {output}")]
    Initdb { status: String, output: String },
    #[error("the sandbox PostgreSQL did not start: {reason}\nserver log:\n{log}")]
    Start { reason: String, log: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// The PostgreSQL binary directory: the configured one, else `pg_config --bindir` when it
/// holds `initdb`, else [`DEFAULT_BIN_DIR`].
pub fn bin_dir(configured: Option<&Path>) -> PathBuf {
    if let Some(dir) = configured {
        return dir.to_path_buf();
    }
    Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .filter(|dir| dir.join("initdb").is_file())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BIN_DIR))
}

/// A running throwaway cluster, reachable through [`SandboxPg::url`] only.
pub struct SandboxPg {
    bin_dir: PathBuf,
    server: Option<Child>,
    /// Declared last so it is removed after the server has stopped.
    dir: TempDir,
}

#[derive(Clone, Copy)]
struct OsUser {
    uid: u32,
    gid: u32,
}

impl SandboxPg {
    /// Creates and starts a cluster in a new directory below `scratch` (below `/tmp` when
    /// running as root, so the `postgres` user can reach it whatever `scratch`'s modes).
    pub async fn start(bin_dir: &Path, scratch: &Path) -> Result<SandboxPg, SandboxError> {
        let owner = os_user()?;
        let parent = if owner.is_some() {
            PathBuf::from("/tmp")
        } else {
            scratch.to_path_buf()
        };
        std::fs::create_dir_all(&parent).map_err(io(format!("creating {}", parent.display())))?;
        let dir = tempfile::Builder::new()
            .prefix("drill-pg-")
            .tempdir_in(&parent)
            .map_err(io(format!(
                "creating a temporary directory in {}",
                parent.display()
            )))?;
        if let Some(u) = owner {
            std::os::unix::fs::chown(dir.path(), Some(u.uid), Some(u.gid))
                .map_err(io(format!("chown {} to {OS_USER}", dir.path().display())))?;
        }
        let mut pg = SandboxPg {
            bin_dir: bin_dir.to_path_buf(),
            server: None,
            dir,
        };
        pg.initdb(owner).await?;
        pg.launch(owner).await?;
        Ok(pg)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The unix socket directory (the cluster directory itself, mode 0700).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// libpq connection string for database `db` as the superuser, over the socket.
    pub fn url(&self, db: &str) -> String {
        format!(
            "host={} port={SOCKET_PORT} user={SUPERUSER} dbname={}",
            kv_quote(&self.socket_dir().display().to_string()),
            kv_quote(db)
        )
    }

    fn command(&self, tool: &str, owner: Option<OsUser>) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(tool));
        if let Some(u) = owner {
            // HOME etc. would otherwise still point at root's (unreadable) home.
            cmd.uid(u.uid)
                .gid(u.gid)
                .env("HOME", "/tmp")
                .env("USER", OS_USER)
                .env("LOGNAME", OS_USER);
        }
        cmd.current_dir(self.dir.path());
        cmd
    }

    async fn initdb(&self, owner: Option<OsUser>) -> Result<(), SandboxError> {
        let mut cmd = self.command("initdb", owner);
        cmd.arg("-D").arg(self.data_dir()).args([
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--locale=C",
            // Unix socket only, in a 0700 directory: trust reaches no one but us.
            "--auth=trust",
            "--no-sync",
            "--no-instructions",
        ]);
        let out = tokio::process::Command::from(cmd)
            .output()
            .await
            .map_err(io(format!(
                "running {}",
                self.bin_dir.join("initdb").display()
            )))?;
        if !out.status.success() {
            return Err(SandboxError::Initdb {
                status: out.status.to_string(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
                .trim()
                .to_string(),
            });
        }
        Ok(())
    }

    async fn launch(&mut self, owner: Option<OsUser>) -> Result<(), SandboxError> {
        let log = File::create(self.log_path()).map_err(io("creating the server log"))?;
        if let Some(u) = owner {
            std::os::unix::fs::chown(self.log_path(), Some(u.uid), Some(u.gid))
                .map_err(io("chown of the server log"))?;
        }
        let log2 = log.try_clone().map_err(io("duplicating the log handle"))?;
        let mut cmd = self.command("postgres", owner);
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(SOCKET_PORT.to_string())
            .arg("-k")
            .arg(self.socket_dir())
            // No TCP at all; durability is pointless for a sandbox that is deleted anyway.
            .args(["-c", "listen_addresses="])
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "synchronous_commit=off"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd.spawn().map_err(io(format!(
            "starting {}",
            self.bin_dir.join("postgres").display()
        )))?;
        self.server = Some(child);
        if let Err(reason) = self.wait_ready().await {
            self.stop();
            return Err(SandboxError::Start {
                reason,
                log: self.log_tail(),
            });
        }
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = self.url("postgres");
        loop {
            if let Some(Ok(Some(status))) = self.server.as_mut().map(|c| c.try_wait()) {
                return Err(format!("postgres exited during start-up ({status})"));
            }
            let err = match tokio::time::timeout(
                Duration::from_secs(2),
                tokio_postgres::connect(&url, tokio_postgres::NoTls),
            )
            .await
            {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "connection attempt timed out".to_string(),
            };
            if Instant::now() >= deadline {
                return Err(format!("not ready after {START_TIMEOUT:?}: {err}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// Stops the server: SIGQUIT (immediate shutdown; the data is thrown away anyway),
    /// then SIGKILL if it has not exited after a few seconds.
    pub fn stop(&mut self) {
        let Some(mut child) = self.server.take() else {
            return;
        };
        for (signal, patience) in [
            (libc::SIGQUIT, Duration::from_secs(10)),
            (libc::SIGKILL, Duration::from_secs(5)),
        ] {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) on our own child, which has not been reaped yet.
                unsafe { libc::kill(pid, signal) };
            }
            let deadline = Instant::now() + patience;
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => return,
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

impl Drop for SandboxPg {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Quotes a value of a libpq key-value connection string.
pub fn kv_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The account to run PostgreSQL as: `Some` when we are root, `None` to run as ourselves.
fn os_user() -> Result<Option<OsUser>, SandboxError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32, SandboxError> {
        let out = Command::new("id")
            .args([flag, OS_USER])
            .output()
            .map_err(io(format!("running id {flag} {OS_USER}")))?;
        if !out.status.success() {
            return Err(SandboxError::NoOsUser);
        }
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| SandboxError::NoOsUser)
    };
    Ok(Some(OsUser {
        uid: id("-u")?,
        gid: id("-g")?,
    }))
}
