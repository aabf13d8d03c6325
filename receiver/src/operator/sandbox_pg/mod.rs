//! A throwaway PostgreSQL cluster for restore drills: `initdb` into a temporary directory,
//! a `postgres` server that listens on a unix socket in that directory only (no TCP port,
//! so nothing else on the NAS can reach it and there is no port to race for), and
//! tear-down (server stopped, directory removed) on [`Drop`].
//!
//! A dump is untrusted code (functions called from indexes, views, triggers), so the
//! processes that touch it, the server and `pg_restore`, are started by a [`Runner`]:
//! when the drill runs as root they run as an unprivileged OS user (`[drill]
//! sandbox_user`, default `postgres`) that the drill checks cannot read the repository,
//! and, where the kernel allows, in a network namespace of their own with no interfaces
//! (unix sockets still work). The SQL side is walled in by the drill: it restores as a
//! role that is not a superuser.
//!
//! It must never touch a cluster it did not create.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod runner;

pub use runner::*;

/// Where PostgreSQL 15 lives when neither the configuration nor `pg_config` say otherwise.
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// OS account the server runs as when the drill runs as root and none is configured.
pub const DEFAULT_OS_USER: &str = "postgres";
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
    #[error("running as root but there is no OS user {0:?} to run the sandbox as ([drill] sandbox_user; create it with `useradd --system --no-create-home --shell /usr/sbin/nologin {0}`)")]
    NoOsUser(String),
    #[error("the sandbox user {user:?} cannot reach {path} (every parent directory needs search permission for it, e.g. `chmod o+x`): the throwaway cluster lives there")]
    Unreachable { user: String, path: PathBuf },
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
    runner: Runner,
    server: Option<Child>,
    /// Declared last so it is removed after the server has stopped.
    dir: TempDir,
}

#[derive(Debug, Clone, Copy)]
struct OsUser {
    uid: u32,
    gid: u32,
}

impl SandboxPg {
    /// Creates and starts a cluster in a new directory below `scratch`, owned by the
    /// sandbox's account, which must be able to reach `scratch`.
    pub async fn start(
        bin_dir: &Path,
        scratch: &Path,
        runner: &Runner,
    ) -> Result<SandboxPg, SandboxError> {
        std::fs::create_dir_all(scratch).map_err(io(format!("creating {}", scratch.display())))?;
        if !runner.can_enter(scratch) {
            return Err(SandboxError::Unreachable {
                user: runner.user_name().to_string(),
                path: scratch.to_path_buf(),
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("pg-")
            .tempdir_in(scratch)
            .map_err(io(format!(
                "creating a temporary directory in {}",
                scratch.display()
            )))?;
        // The socket lives here and trusts every local connection: only the sandbox's
        // account (and root) may reach it, whatever the umask.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(io(format!("chmod 0700 {}", dir.path().display())))?;
        runner.chown(dir.path())?;
        let mut pg = SandboxPg {
            bin_dir: bin_dir.to_path_buf(),
            runner: runner.clone(),
            server: None,
            dir,
        };
        pg.initdb().await?;
        pg.launch().await?;
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
        self.url_as(SUPERUSER, db)
    }

    /// libpq connection string for database `db` as role `user`, over the socket.
    pub fn url_as(&self, user: &str, db: &str) -> String {
        format!(
            "host={} port={SOCKET_PORT} user={} dbname={}",
            kv_quote(&self.socket_dir().display().to_string()),
            kv_quote(user),
            kv_quote(db)
        )
    }

    /// A command for PostgreSQL tool `tool`, run in the sandbox.
    pub fn command(&self, tool: &str) -> Command {
        self.runner
            .command(&self.bin_dir.join(tool), self.dir.path())
    }

    async fn initdb(&self) -> Result<(), SandboxError> {
        let mut cmd = self.command("initdb");
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

    async fn launch(&mut self) -> Result<(), SandboxError> {
        let log = File::create(self.log_path()).map_err(io("creating the server log"))?;
        self.runner.chown(&self.log_path())?;
        let log2 = log.try_clone().map_err(io("duplicating the log handle"))?;
        let mut cmd = self.command("postgres");
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

/// The account to run the sandbox as: `Some` when we are root, `None` to run as ourselves.
fn os_user(name: &str) -> Result<Option<OsUser>, SandboxError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32, SandboxError> {
        let out = Command::new("id")
            .args([flag, "--", name])
            .output()
            .map_err(io(format!("running id {flag} {name}")))?;
        if !out.status.success() {
            return Err(SandboxError::NoOsUser(name.to_string()));
        }
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| SandboxError::NoOsUser(name.to_string()))
    };
    let user = OsUser {
        uid: id("-u")?,
        gid: id("-g")?,
    };
    if user.uid == 0 {
        return Err(SandboxError::NoOsUser(format!("{name} (uid 0 is root)")));
    }
    Ok(Some(user))
}

#[cfg(test)]
mod tests;
