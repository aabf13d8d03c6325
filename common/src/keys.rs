//! Object-key rules. A key names a file below a restore directory, so it must never be able
//! to escape it: no `..` or `.` components, no absolute path, no empty component, no NUL.
//! The receiver refuses such keys at commit; restore checks again before it writes.

use std::path::{Path, PathBuf};

/// Longest key S3 allows, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why a key was refused. Each variant holds the key [`quoted`](crate::bounded::quoted)
/// (a prefix, its length and a hash when long), never the whole key from the network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("object key is empty")]
    Empty,
    #[error("object key {0} is longer than {MAX_KEY_BYTES} bytes")]
    TooLong(String),
    #[error("object key {0} contains a NUL byte")]
    Nul(String),
    #[error("object key {0} is an absolute path")]
    Absolute(String),
    #[error("object key {0} has a `..` or `.` component")]
    DotComponent(String),
    #[error("object key {0} has an empty path component (`//` or a trailing `/`)")]
    EmptyComponent(String),
    #[error("object key {0} contains a backslash")]
    Backslash(String),
}

/// Checks that `key` can be stored and restored as a relative path.
pub fn validate(key: &str) -> Result<(), KeyError> {
    let owned = || crate::bounded::quoted(key);
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong(owned()));
    }
    if key.contains('\0') {
        return Err(KeyError::Nul(owned()));
    }
    if key.contains('\\') {
        return Err(KeyError::Backslash(owned()));
    }
    if key.starts_with('/') {
        return Err(KeyError::Absolute(owned()));
    }
    for part in key.split('/') {
        match part {
            "" => return Err(KeyError::EmptyComponent(owned())),
            "." | ".." => return Err(KeyError::DotComponent(owned())),
            _ => {}
        }
    }
    Ok(())
}

/// The path of `key` below `root`, or the reason it would not stay below it.
pub fn safe_join(root: &Path, key: &str) -> Result<PathBuf, KeyError> {
    validate(key)?;
    Ok(key
        .split('/')
        .fold(root.to_path_buf(), |p, part| p.join(part)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_keys_pass() {
        for k in [
            "a",
            "briefe/1923/grete.pdf",
            "fotos/ä ö ü.jpg",
            "x..y",
            ".hidden",
        ] {
            validate(k).unwrap();
        }
        assert_eq!(
            safe_join(Path::new("/r"), "a/b.txt").unwrap(),
            PathBuf::from("/r/a/b.txt")
        );
    }

    #[test]
    fn escaping_keys_are_refused_with_the_reason() {
        assert_eq!(validate(""), Err(KeyError::Empty));
        assert!(matches!(
            validate("../../etc/x"),
            Err(KeyError::DotComponent(_))
        ));
        assert!(matches!(validate("a/./b"), Err(KeyError::DotComponent(_))));
        assert!(matches!(
            validate("/etc/passwd"),
            Err(KeyError::Absolute(_))
        ));
        assert!(matches!(validate("a\0b"), Err(KeyError::Nul(_))));
        assert!(matches!(validate("a//b"), Err(KeyError::EmptyComponent(_))));
        assert!(matches!(validate("dir/"), Err(KeyError::EmptyComponent(_))));
        assert!(matches!(validate("a\\..\\b"), Err(KeyError::Backslash(_))));
        assert!(matches!(
            validate(&"k".repeat(1025)),
            Err(KeyError::TooLong(_))
        ));
        assert!(safe_join(Path::new("/r"), "../x").is_err());
    }

    #[test]
    fn a_long_key_is_bounded_in_its_error() {
        let key = format!("{}/../x", "k".repeat(1 << 20));
        let e = validate(&key).unwrap_err().to_string();
        assert!(e.len() < 300, "{} bytes: {e}", e.len());
        assert!(e.contains(&format!("{} bytes", key.len())), "{e}");
    }
}
