//! The one way a durable file comes into existence: written under a temporary name in the
//! same filesystem, fsynced, made read-only, published under its final name with a
//! no-replace primitive (a hard link, which fails if the name exists), then the directory
//! is fsynced. A crash leaves either no file or the whole file; a published name is never
//! written again.
//!
//! Modes do not depend on the caller's umask: a published file is 0400 (read-only, for its
//! owner only) and a directory made by [`create_private_dir_all`] is 0700, so a
//! repository is not readable by other local users even where no `UMask=` applies (cron).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every published file: read-only, owner only.
pub const FILE_MODE: u32 = 0o400;
/// Mode of every directory this crate's callers create for stored or restored data.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` and any missing parents with mode 0700 whatever the umask; directories
/// that exist already keep their mode.
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    // Find the missing ancestors first so only the ones created here are chmod-ed.
    let mut missing = Vec::new();
    let mut p = Some(dir);
    while let Some(d) = p {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d.to_path_buf());
        p = d.parent();
    }
    for d in missing.iter().rev() {
        match DirBuilder::new().mode(DIR_MODE).create(d) {
            Ok(()) => fs::set_permissions(d, fs::Permissions::from_mode(DIR_MODE))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    Created,
    /// The name already existed; it was left untouched.
    AlreadyExisted,
}

/// Writes `data` to `dir/name` write-once, staging it in `tmp_dir` (same filesystem).
pub fn write_once(tmp_dir: &Path, dir: &Path, name: &str, data: &[u8]) -> io::Result<Published> {
    write_once_with(tmp_dir, dir, name, |f| f.write_all(data))
}

/// Like [`write_once`], with the content produced by `fill` (for streamed writes).
pub fn write_once_with(
    tmp_dir: &Path,
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<Published> {
    let published = write_once_unsynced_dir(tmp_dir, dir, name, fill)?;
    if published == Published::Created {
        sync_dir(dir)?;
    }
    Ok(published)
}

/// Like [`write_once_with`] (the file's content is durable before its name appears), but
/// the new directory entry is not fsynced: the caller must [`sync_dir`] `dir` before
/// anything durable refers to the name. Lets many files published into a few directories
/// share one directory fsync each.
pub fn write_once_unsynced_dir(
    tmp_dir: &Path,
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<Published> {
    let target = dir.join(name);
    let tmp = tmp_dir.join(format!(
        "{}.{}.{:016x}.tmp",
        name.replace('/', "_"),
        std::process::id(),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        fill(&mut file)?;
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        file.sync_all()?;
        drop(file);
        match fs::hard_link(&tmp, &target) {
            Ok(()) => Ok(Published::Created),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Published::AlreadyExisted),
            Err(e) => Err(e),
        }
    })();
    let _ = fs::remove_file(&tmp);
    result
}

/// fsyncs a directory so that entries created in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_once_and_never_replaces() {
        let d = tempfile::tempdir().unwrap();
        let tmp = d.path().join("tmp");
        fs::create_dir(&tmp).unwrap();
        assert_eq!(
            write_once(&tmp, d.path(), "a", b"first").unwrap(),
            Published::Created
        );
        assert_eq!(
            write_once(&tmp, d.path(), "a", b"second").unwrap(),
            Published::AlreadyExisted
        );
        assert_eq!(fs::read(d.path().join("a")).unwrap(), b"first");
        let mode = fs::metadata(d.path().join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        assert_eq!(
            fs::read_dir(&tmp).unwrap().count(),
            0,
            "temp file left behind"
        );
    }

    #[test]
    fn private_dirs_are_0700_whatever_the_umask() {
        let d = tempfile::tempdir().unwrap();
        // SAFETY: umask(2) has no preconditions; the test restores the old mask.
        let old = unsafe { libc::umask(0o022) };
        let deep = d.path().join("a/b/c");
        let r = create_private_dir_all(&deep);
        unsafe { libc::umask(old) };
        r.unwrap();
        for p in ["a", "a/b", "a/b/c"] {
            let mode = fs::metadata(d.path().join(p)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{p}");
        }
        create_private_dir_all(&deep).unwrap();
    }

    #[test]
    fn a_failed_fill_publishes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let err = write_once_with(d.path(), d.path(), "b", |_| Err(io::Error::other("boom")));
        assert!(err.is_err());
        assert!(!d.path().join("b").exists());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
