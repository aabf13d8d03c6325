//! The one writer of a restore's output directory: no key can make it follow a link,
//! replace a name or leave the directory it was given.

use super::*;

/// Longest file-name component Linux file systems hold (`NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// Mode of every restored file and directory, whatever the umask.
pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

pub(super) fn errno_at(path: &Path) -> impl FnOnce(Errno) -> RestoreError + '_ {
    move |e| RestoreError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

pub(super) fn open_dir(dir: &OwnedFd, name: impl rustix::path::Arg) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The directory one writer used last: consecutive objects in one directory (the usual
/// case, keys come sorted) share its descriptor instead of walking the path again.
#[derive(Default)]
pub struct DirCache {
    prefix: String,
    fd: Option<OwnedFd>,
}

/// The one writer of restored files (`restore --objects-out` and the drill): a directory
/// that was new or empty and is ours, entered by file descriptor, never through a link.
pub struct Target {
    path: PathBuf,
    root: OwnedFd,
    /// Beside the target (same file system, outside every name a key can form).
    _staging: tempfile::TempDir,
    staging: OwnedFd,
    next: AtomicU64,
}

impl Target {
    /// Creates `dir` (and missing parents, 0700), or takes it if it is an empty directory
    /// of ours; anything else (a link, a file, a directory with entries, someone else's
    /// directory, a mount point) is refused.
    pub fn create(dir: &Path) -> Result<Target, RestoreError> {
        let refuse = |reason: &str| RestoreError::Target {
            path: dir.to_path_buf(),
            reason: reason.to_string(),
        };
        let name = dir
            .file_name()
            .ok_or_else(|| refuse("has no final name (`..` or `/`)"))?;
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        durable::create_private_dir_all(parent).map_err(io_at(parent))?;
        let parent_fd = rustix::fs::openat(
            rustix::fs::CWD,
            parent,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno_at(parent))?;
        let created = match rustix::fs::mkdirat(&parent_fd, name, Mode::from_raw_mode(DIR_MODE)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => return Err(errno_at(dir)(e)),
        };
        let root = match open_dir(&parent_fd, name) {
            Ok(fd) => fd,
            Err(Errno::LOOP | Errno::NOTDIR) => {
                return Err(refuse(
                    "is a symbolic link or not a directory; refusing to follow or replace it",
                ))
            }
            Err(e) => return Err(errno_at(dir)(e)),
        };
        let st = rustix::fs::fstat(&root).map_err(errno_at(dir))?;
        if !created {
            // SAFETY: geteuid has no preconditions and cannot fail.
            if st.st_uid != unsafe { libc::geteuid() } {
                return Err(refuse("belongs to another user"));
            }
            let mut entries = rustix::fs::Dir::read_from(&root).map_err(errno_at(dir))?;
            let has_entries = entries.any(|e| {
                e.map(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
                    .unwrap_or(true)
            });
            if has_entries {
                return Err(refuse("is not empty"));
            }
        }
        rustix::fs::fchmod(&root, Mode::from_raw_mode(DIR_MODE)).map_err(errno_at(dir))?;
        let staging_dir = tempfile::Builder::new()
            .prefix(".restore-staging-")
            .permissions(fs::Permissions::from_mode(DIR_MODE))
            .tempdir_in(parent)
            .map_err(io_at(parent))?;
        let staging = rustix::fs::openat(
            rustix::fs::CWD,
            staging_dir.path(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno_at(staging_dir.path()))?;
        let staging_st = rustix::fs::fstat(&staging).map_err(errno_at(staging_dir.path()))?;
        if staging_st.st_dev != st.st_dev {
            return Err(refuse(
                "is a mount point (files are staged beside it, on another file system); \
                 restore into a directory below it",
            ));
        }
        Ok(Target {
            path: dir.to_path_buf(),
            root,
            _staging: staging_dir,
            staging,
            next: AtomicU64::new(0),
        })
    }

    /// Writes one verified stream at `key` below the target; on any failure no file of
    /// that name appears.
    pub fn write(
        &self,
        cache: &mut DirCache,
        repo: &Repository,
        key: &str,
        chunks: &[ChunkRef],
        size: u64,
        hash: ChunkId,
    ) -> Result<(), RestoreError> {
        let path = keys::safe_join(&self.path, key).map_err(RestoreError::UnsafeKey)?;
        let parts: Vec<&str> = key.split('/').collect();
        if let Some(long) = parts.iter().find(|p| p.len() > NAME_MAX) {
            return Err(RestoreError::NameTooLong {
                key: key.to_string(),
                component: long.chars().take(40).collect(),
                bytes: long.len(),
            });
        }
        let (file_name, dirs) = parts.split_last().expect("a valid key has a component");
        let prefix = &key[..key.len() - file_name.len()];
        if cache.fd.is_none() || cache.prefix != prefix {
            cache.fd = None;
            cache.fd = Some(self.enter(dirs)?);
            cache.prefix = prefix.to_string();
        }
        let dir = cache.fd.as_ref().expect("set above");
        let staged = self.next.fetch_add(1, Ordering::Relaxed).to_string();
        let result = (|| {
            let fd = rustix::fs::openat(
                &self.staging,
                staged.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(FILE_MODE),
            )
            .map_err(errno_at(&path))?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(FILE_MODE)).map_err(errno_at(&path))?;
            let mut file = File::from(fd);
            let mut w = io::BufWriter::with_capacity(1 << 20, &mut file);
            write_stream(repo, key, chunks, size, hash, &mut w)?;
            w.flush().map_err(io_at(&path))?;
            drop(w);
            file.sync_all().map_err(io_at(&path))?;
            match rustix::fs::linkat(
                &self.staging,
                staged.as_str(),
                dir,
                OsStr::new(file_name),
                AtFlags::empty(),
            ) {
                Ok(()) => Ok(()),
                Err(Errno::EXIST) => Err(RestoreError::Collision {
                    path: path.clone(),
                    reason: "exists already (another object of the snapshot has this name on \
                             this file system); refusing to replace it"
                        .into(),
                }),
                Err(e) => Err(errno_at(&path)(e)),
            }
        })();
        let _ = rustix::fs::unlinkat(&self.staging, staged.as_str(), AtFlags::empty());
        result
    }

    /// Opens (creating as needed, 0700) the directories `dirs` below the target, one
    /// component at a time and never through a link.
    fn enter(&self, dirs: &[&str]) -> Result<OwnedFd, RestoreError> {
        let mut cur = open_dir(&self.root, ".").map_err(errno_at(&self.path))?;
        let mut at = self.path.clone();
        for d in dirs {
            at.push(d);
            let next = match open_dir(&cur, *d) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    let made = match rustix::fs::mkdirat(&cur, *d, Mode::from_raw_mode(DIR_MODE)) {
                        Ok(()) => true,
                        Err(Errno::EXIST) => false,
                        Err(e) => return Err(errno_at(&at)(e)),
                    };
                    let fd = open_dir(&cur, *d).map_err(errno_at(&at))?;
                    if made {
                        rustix::fs::fchmod(&fd, Mode::from_raw_mode(DIR_MODE))
                            .map_err(errno_at(&at))?;
                    }
                    fd
                }
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    return Err(RestoreError::Collision {
                        path: at,
                        reason: "is a file or a link, not a directory (another object of the \
                                 snapshot has this name); refusing to follow it"
                            .into(),
                    })
                }
                Err(e) => return Err(errno_at(&at)(e)),
            };
            cur = next;
        }
        Ok(cur)
    }
}
