//! How the file store's `io::Error`s become [`StoreError`]s: the errno decides the kind,
//! and a refused permission says who the process runs as and who owns the repository
//! (the usual cause: a command run as the wrong user on a 0700 repository).

use std::ffi::CStr;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::store::error::{StoreError, StoreErrorKind};

/// The kind of an `io::Error` from the file system.
pub fn kind_of(e: &io::Error) -> StoreErrorKind {
    match e.kind() {
        io::ErrorKind::NotFound => return StoreErrorKind::NotFound,
        io::ErrorKind::AlreadyExists => return StoreErrorKind::AlreadyExists,
        io::ErrorKind::PermissionDenied => return StoreErrorKind::PermissionDenied,
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            return StoreErrorKind::NoSpace
        }
        io::ErrorKind::TimedOut => return StoreErrorKind::Unavailable,
        io::ErrorKind::InvalidData => return StoreErrorKind::Corrupt,
        _ => {}
    }
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => StoreErrorKind::NoSpace,
        // A network file system that went away or timed out.
        Some(libc::ESTALE | libc::ETIMEDOUT | libc::EHOSTDOWN | libc::ENOTCONN) => {
            StoreErrorKind::Unavailable
        }
        Some(libc::EACCES | libc::EPERM) => StoreErrorKind::PermissionDenied,
        _ => StoreErrorKind::Other,
    }
}

/// `e`, which happened at `path` in the repository at `root`, as a store error.
pub fn store_error(root: &Path, path: &Path, e: io::Error) -> StoreError {
    let kind = kind_of(&e);
    let mut err = StoreError::new(kind, path.display().to_string());
    if kind == StoreErrorKind::PermissionDenied {
        err = err.with_detail(who(root));
    }
    err.with_source(e)
}

/// Who this process is and who owns the repository, with what to do about it.
pub fn who(root: &Path) -> String {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let me_name = user_name(me);
    let owner = std::fs::metadata(root).ok().map(|m| m.uid());
    match owner {
        Some(uid) if uid != me => {
            let owner_name = user_name(uid);
            format!(
                "running as user {me_name}; {} belongs to {owner_name}: run the command as \
                 that user, e.g. `sudo -u {owner_name} backup-receiver …`",
                root.display()
            )
        }
        Some(_) => format!(
            "running as user {me_name}, who owns {}: a file or directory below it has lost \
             its owner's permissions",
            root.display()
        ),
        None => format!("running as user {me_name}"),
    }
}

/// The name of user `uid`, or `uid N` when it has none.
pub fn user_name(uid: u32) -> String {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid out-parameter; getpwuid_r writes into `pwd`
    // and `buf` (whose length it is told) and sets `found` to `pwd` or null.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
        return format!("uid {uid}");
    }
    // SAFETY: on success pw_name points at a NUL-terminated string inside `buf`.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) };
    name.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_map_to_the_kinds_callers_decide_on() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(kind_of(&os(libc::ENOENT)), StoreErrorKind::NotFound);
        assert_eq!(kind_of(&os(libc::EACCES)), StoreErrorKind::PermissionDenied);
        assert_eq!(kind_of(&os(libc::ENOSPC)), StoreErrorKind::NoSpace);
        assert_eq!(kind_of(&os(libc::EDQUOT)), StoreErrorKind::NoSpace);
        assert_eq!(kind_of(&os(libc::EEXIST)), StoreErrorKind::AlreadyExists);
        assert_eq!(kind_of(&os(libc::ESTALE)), StoreErrorKind::Unavailable);
        assert_eq!(kind_of(&os(libc::EIO)), StoreErrorKind::Other);
        assert_eq!(user_name(0), "root");
    }
}
