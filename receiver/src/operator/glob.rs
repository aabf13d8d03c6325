//! The key filters of `restore --include/--exclude` and `find`: shell-style globs over
//! object keys (globset). `*`, `?` and `[...]` never match a `/`; `**` as a whole path
//! component matches any number of components (`fotos/**` is everything below `fotos/`,
//! `**/*.pdf` every PDF at any depth, `*.pdf` only PDFs at the top level). `{a,b}` is an
//! alternative. A glob matches the whole key; there is no implicit prefix match.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

#[derive(Debug, thiserror::Error)]
#[error("bad glob {glob}: {message}")]
pub struct BadGlob {
    pub glob: String,
    pub message: String,
}

fn compile(glob: &str) -> Result<Glob, BadGlob> {
    GlobBuilder::new(glob)
        .literal_separator(true)
        .backslash_escape(true)
        .empty_alternates(true)
        .build()
        .map_err(|e| BadGlob {
            glob: backup_common::bounded::bounded(glob),
            message: e.kind().to_string(),
        })
}

fn set(globs: &[String]) -> Result<GlobSet, BadGlob> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        b.add(compile(g)?);
    }
    b.build().map_err(|e| BadGlob {
        glob: backup_common::bounded::bounded(&globs.join(" ")),
        message: e.to_string(),
    })
}

/// Which keys a command works on: those matching any include (every key when there is
/// none) and no exclude.
#[derive(Debug, Clone)]
pub struct KeyFilter {
    include: Option<GlobSet>,
    exclude: GlobSet,
}

impl KeyFilter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<KeyFilter, BadGlob> {
        Ok(KeyFilter {
            include: if include.is_empty() {
                None
            } else {
                Some(set(include)?)
            },
            exclude: set(exclude)?,
        })
    }

    /// Every key.
    pub fn all() -> KeyFilter {
        KeyFilter {
            include: None,
            exclude: GlobSet::empty(),
        }
    }

    /// Whether no glob was given (every key passes).
    pub fn is_all(&self) -> bool {
        self.include.is_none() && self.exclude.is_empty()
    }

    pub fn matches(&self, key: &str) -> bool {
        self.include.as_ref().is_none_or(|s| s.is_match(key)) && !self.exclude.is_match(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(include: &[&str], exclude: &[&str]) -> KeyFilter {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        KeyFilter::new(&v(include), &v(exclude)).unwrap()
    }

    #[test]
    fn star_stays_within_a_component_and_double_star_crosses() {
        let top = f(&["*.pdf"], &[]);
        assert!(top.matches("brief.pdf"));
        assert!(!top.matches("briefe/1923/grete.pdf"));
        let deep = f(&["**/*.pdf"], &[]);
        assert!(deep.matches("brief.pdf"));
        assert!(deep.matches("briefe/1923/grete.pdf"));
        let below = f(&["briefe/**"], &[]);
        assert!(below.matches("briefe/1923/grete.pdf"));
        assert!(!below.matches("briefe"));
        assert!(!below.matches("fotos/briefe/x"));
        let one = f(&["briefe/*"], &[]);
        assert!(one.matches("briefe/a.pdf"));
        assert!(!one.matches("briefe/1923/grete.pdf"));
    }

    #[test]
    fn a_glob_matches_the_whole_key_and_excludes_win() {
        let exact = f(&["fotos/hochzeit 1951.jpg"], &[]);
        assert!(exact.matches("fotos/hochzeit 1951.jpg"));
        assert!(!exact.matches("fotos/hochzeit 1951.jpg.bak"));
        let both = f(&["fotos/**", "neu/**"], &["**/*.jpg"]);
        assert!(both.matches("neu/brief.pdf"));
        assert!(!both.matches("neu/foto.jpg"));
        assert!(f(&[], &["scans/**"]).matches("leer.txt"));
        assert!(!f(&[], &["scans/**"]).matches("scans/001.png"));
        assert!(KeyFilter::all().matches("anything/at/all"));
    }

    #[test]
    fn a_bad_glob_is_named() {
        let e = KeyFilter::new(&["fotos/[".into()], &[]).unwrap_err();
        assert!(e.to_string().contains("fotos/["), "{e}");
    }
}
