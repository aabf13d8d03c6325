//! How the sandbox's processes run: as which OS user, in which network namespace, and
//! what that user can read.

use super::*;

/// How the sandbox's network is cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// A network namespace of its own (made as root before dropping to the OS user).
    Namespace,
    /// A user and network namespace of its own (made without privileges).
    UserNamespace,
    /// The host's network: the kernel refused both kinds of namespace.
    Shared,
}

/// Starts the sandbox's processes: as whom, in which network, with which environment.
#[derive(Debug, Clone)]
pub struct Runner {
    /// Set when the drill runs as root: the account the sandbox drops to.
    user: Option<OsUser>,
    user_name: String,
    network: Network,
    /// Why no namespace could be made, when `network` is [`Network::Shared`].
    network_refused: Option<String>,
}

impl Runner {
    /// As root: the OS account `user`; otherwise the drill's own. The network: the first
    /// kind of namespace the kernel grants (probed by running `postgres --version`).
    /// `isolate_network` false keeps the host's network (a TCP sandbox server).
    pub fn new(bin_dir: &Path, user: &str, isolate_network: bool) -> Result<Runner, SandboxError> {
        let os_user = os_user(user)?;
        let user_name = match os_user {
            Some(_) => user.to_string(),
            None => current_user_name(),
        };
        let mut runner = Runner {
            user: os_user,
            user_name,
            network: Network::Shared,
            network_refused: None,
        };
        if !isolate_network {
            return Ok(runner);
        }
        if !bin_dir.join("postgres").is_file() {
            return Err(SandboxError::Io {
                what: format!(
                    "no postgres in {} (set [drill] pg_bin_dir)",
                    bin_dir.display()
                ),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        let candidates: &[Network] = if os_user.is_some() {
            &[Network::Namespace, Network::UserNamespace]
        } else {
            &[Network::UserNamespace]
        };
        let mut refused = Vec::new();
        for &net in candidates {
            runner.network = net;
            let probe = runner
                .command(&bin_dir.join("postgres"), Path::new("/"))
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            match probe {
                Ok(st) if st.success() => return Ok(runner),
                Ok(st) => refused.push(format!("{net:?}: postgres --version {st}")),
                Err(e) => refused.push(format!("{net:?}: {e}")),
            }
        }
        runner.network = Network::Shared;
        runner.network_refused = Some(refused.join("; "));
        Ok(runner)
    }

    /// The OS account sandbox processes run as.
    pub fn user_name(&self) -> &str {
        &self.user_name
    }

    /// Whether the sandbox runs as another account than the drill (only as root).
    pub fn separate_user(&self) -> bool {
        self.user.is_some()
    }

    pub fn network(&self) -> Network {
        self.network
    }

    /// Why the kernel refused every kind of network namespace, if it did.
    pub fn network_refused(&self) -> Option<&str> {
        self.network_refused.as_deref()
    }

    /// One line for the report.
    pub fn describe_network(&self) -> String {
        match (self.network, &self.network_refused) {
            (Network::Namespace, _) => "none (a network namespace of its own)".into(),
            (Network::UserNamespace, _) => "none (a user and network namespace of its own)".into(),
            (Network::Shared, None) => "the host's (a sandbox server reached over TCP)".into(),
            (Network::Shared, Some(why)) => {
                format!("the host's: the kernel refused a network namespace ({why})")
            }
        }
    }

    /// Whether `path` is readable by the sandbox's account (every parent searchable, the
    /// path itself readable), from the modes and owners on disk (ACLs are not read).
    pub fn can_read(&self, path: &Path) -> bool {
        let (uid, gid) = match self.user {
            Some(u) => (u.uid, u.gid),
            // SAFETY: getuid/getgid have no preconditions and cannot fail.
            None => unsafe { (libc::getuid(), libc::getgid()) },
        };
        can_access(path, uid, gid, 0o4)
    }

    /// Whether the sandbox's account can search `dir` (and every parent).
    pub fn can_enter(&self, dir: &Path) -> bool {
        match self.user {
            Some(u) => can_access(dir, u.uid, u.gid, 0o1),
            None => true,
        }
    }

    /// A command for `program` as the sandbox account, in the sandbox's network, with a
    /// minimal environment (nothing of the drill's reaches it) and `home` as HOME and
    /// working directory.
    pub fn command(&self, program: &Path, home: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", home)
            .env("USER", &self.user_name)
            .env("LOGNAME", &self.user_name)
            .env("LC_ALL", "C")
            .current_dir(home);
        let user = self.user;
        let network = self.network;
        // SAFETY: getuid/getgid have no preconditions and cannot fail.
        let (uid, gid) = match user {
            Some(u) => (u.uid, u.gid),
            None => unsafe { (libc::getuid(), libc::getgid()) },
        };
        // Prepared here: the closure runs between fork and exec and must not allocate.
        let uid_map = format!("{uid} {uid} 1\n").into_bytes();
        let gid_map = format!("{gid} {gid} 1\n").into_bytes();
        // SAFETY: the closure calls only async-signal-safe functions (unshare, setgroups,
        // setgid, setuid, prctl, open, write, close) on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if network == Network::Namespace && libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(u) = user {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(u.gid) != 0
                        || libc::setuid(u.uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if network == Network::UserNamespace {
                    // Dropping from root made the process undumpable, which would leave
                    // /proc/self/*_map owned by root and unwritable for it.
                    if user.is_some() && libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    write_proc(c"/proc/self/setgroups", b"deny")?;
                    write_proc(c"/proc/self/uid_map", &uid_map)?;
                    write_proc(c"/proc/self/gid_map", &gid_map)?;
                }
                Ok(())
            });
        }
        cmd
    }

    pub(super) fn chown(&self, path: &Path) -> Result<(), SandboxError> {
        if let Some(u) = self.user {
            std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid)).map_err(io(format!(
                "chown {} to {}",
                path.display(),
                self.user_name
            )))?;
        }
        Ok(())
    }
}

/// Writes `data` to a /proc file; async-signal-safe (for `pre_exec`).
pub(super) fn write_proc(path: &std::ffi::CStr, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: open/write/close on a NUL-terminated path and a live buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        libc::close(fd);
        if n != data.len() as isize {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether `uid`/`gid` (no supplementary groups: the sandbox drops them) may search every
/// parent of `path` and has `want` (4 read, 2 write, 1 search) on `path` itself.
pub(super) fn can_access(path: &Path, uid: u32, gid: u32, want: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let allowed = |p: &Path, bits: u32| -> bool {
        let Ok(m) = std::fs::metadata(p) else {
            return false;
        };
        let mode = m.mode();
        let granted = if m.uid() == uid {
            mode >> 6
        } else if m.gid() == gid {
            mode >> 3
        } else {
            mode
        } & 0o7;
        granted & bits == bits
    };
    path.ancestors().skip(1).all(|a| allowed(a, 0o1)) && allowed(&path, want)
}

pub(super) fn current_user_name() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| {
            // SAFETY: getuid has no preconditions and cannot fail.
            format!("uid {}", unsafe { libc::getuid() })
        })
}
