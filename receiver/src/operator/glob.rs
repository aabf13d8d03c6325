//! The key filters of `restore --include/--exclude` and `find`: shell-style globs over
//! object keys (globset). `*`, `?` and `[...]` never match a `/`; `**` as a whole path
//! component matches any number of components (`fotos/**` is everything below `fotos/`,
//! `**/*.pdf` every PDF at any depth, `*.pdf` only PDFs at the top level). `{a,b}` is an
//! alternative. A backslash makes the next character literal (`\[1951\]`, `\*`). A glob
//! matches the whole key, with two habits of restic on top:
//!
//! - an include or exclude also means everything below the folder it names
//!   (`scans/1923` and `scans/1923/` are `scans/1923/**` as well) — [`KeyFilter::new`];
//! - `find NAME` without a `/` matches the last component of a key (`**/NAME`) —
//!   [`find_pattern`].
//!
//! When a glob matches nothing, [`Hints`] names the forms that would have matched.

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

/// A glob and the folder it may name: `g` and `g/**`, or for `g/` only `g/**`.
fn with_folder(globs: &[String]) -> Vec<String> {
    globs
        .iter()
        .flat_map(|g| match g.strip_suffix('/') {
            Some(dir) => vec![format!("{dir}/**")],
            None if g.ends_with("**") => vec![g.clone()],
            None => vec![g.clone(), format!("{g}/**")],
        })
        .collect()
}

/// How `find` matches `glob` against whole keys: a glob without `/` is the last
/// component of a key (`**/NAME`, as restic's find); one ending in `/` is the folder's
/// contents; any other as it is.
pub fn find_pattern(glob: &str) -> String {
    if let Some(dir) = glob.strip_suffix('/') {
        format!("{dir}/**")
    } else if !glob.contains('/') && !glob.starts_with("**") {
        format!("**/{glob}")
    } else {
        glob.to_string()
    }
}

impl KeyFilter {
    /// Restore's filter: keys matching an include (all when none is given), and no
    /// exclude; an include or exclude that names a folder also means its contents.
    pub fn new(include: &[String], exclude: &[String]) -> Result<KeyFilter, BadGlob> {
        Ok(KeyFilter {
            include: if include.is_empty() {
                None
            } else {
                Some(set(&with_folder(include))?)
            },
            exclude: set(&with_folder(exclude))?,
        })
    }

    /// Keys matching `glob` exactly (no folder rule): `find`'s, after [`find_pattern`].
    pub fn exactly(glob: &str) -> Result<KeyFilter, BadGlob> {
        Ok(KeyFilter {
            include: Some(set(std::slice::from_ref(&glob.to_string()))?),
            exclude: GlobSet::empty(),
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

/// The characters a glob treats specially; a backslash before one makes it literal.
const SPECIAL: &[char] = &['*', '?', '[', ']', '{', '}', '\\'];

/// `key` as a glob that matches exactly it.
pub fn escape_glob(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        if SPECIAL.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Suggestions for a glob that matched nothing, from the keys it was tried on: the key
/// itself escaped (when the glob is a key holding `[ ] ? *`), the folder form (when
/// keys lie below it) and the any-depth form (when a key ends in it).
#[derive(Debug, Default)]
pub struct Hints {
    glob: String,
    literal_key: bool,
    folder: bool,
    basename: bool,
}

impl Hints {
    pub fn new(glob: &str) -> Self {
        Hints {
            glob: glob.trim_end_matches('/').to_string(),
            ..Hints::default()
        }
    }

    /// Looks at one key the glob was tried on.
    pub fn observe(&mut self, key: &str) {
        let g = self.glob.as_str();
        if g.is_empty() {
            return;
        }
        if key == g && g.contains(SPECIAL) {
            self.literal_key = true;
        }
        if key.len() > g.len() && key.starts_with(g) && key.as_bytes()[g.len()] == b'/' {
            self.folder = true;
        }
        if !g.contains('/') && key.rsplit('/').next() == Some(g) {
            self.basename = true;
        }
    }

    /// What to say, one line each (empty when nothing else would match).
    pub fn suggestions(&self) -> Vec<String> {
        let g = &self.glob;
        let mut out = Vec::new();
        if self.literal_key {
            out.push(format!(
                "a key is named {g:?}; `*`, `?`, `[`, `]`, `{{`, `}}` are glob characters: \
                 match it literally with '{}'",
                escape_glob(g)
            ));
        }
        if self.folder {
            out.push(format!(
                "{g} is a folder: '{g}/**' matches everything below it"
            ));
        }
        if self.basename {
            out.push(format!(
                "keys in folders end in {g}: '**/{g}' matches them at any depth"
            ));
        }
        out
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
        // `briefe/*` names the folder briefe/1923 too, and so its contents (restic's
        // habit); find's exact filter does not.
        assert!(one.matches("briefe/1923/grete.pdf"));
        assert!(!KeyFilter::exactly("briefe/*")
            .unwrap()
            .matches("briefe/1923/grete.pdf"));
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
    fn an_include_that_names_a_folder_means_the_folder() {
        for g in ["scans/1923", "scans/1923/"] {
            let f = f(&[g], &[]);
            assert!(f.matches("scans/1923/001.png"), "{g}");
            assert!(f.matches("scans/1923/a/b.png"), "{g}");
            assert!(!f.matches("scans/19230/001.png"), "{g}");
            assert!(!f.matches("scans/1924/001.png"), "{g}");
        }
        // A file named exactly is still that file, and an exclude of a folder drops it.
        assert!(f(&["scans/1923"], &[]).matches("scans/1923"));
        assert!(!f(&["scans/1923/"], &[]).matches("scans/1923"));
        let no_1923 = f(&["scans/**"], &["scans/1923"]);
        assert!(!no_1923.matches("scans/1923/001.png"));
        assert!(no_1923.matches("scans/1924/001.png"));
    }

    #[test]
    fn find_matches_a_name_without_a_slash_at_any_depth() {
        assert_eq!(find_pattern("brief-0023.jpg"), "**/brief-0023.jpg");
        assert_eq!(find_pattern("*.pdf"), "**/*.pdf");
        assert_eq!(find_pattern("scans/1923/"), "scans/1923/**");
        assert_eq!(find_pattern("briefe/*"), "briefe/*");
        assert_eq!(find_pattern("**/x"), "**/x");
        let name = KeyFilter::exactly(&find_pattern("brief-0023.jpg")).unwrap();
        assert!(name.matches("brief-0023.jpg"));
        assert!(name.matches("scans/1923/brief-0023.jpg"));
        assert!(!name.matches("scans/1923/brief-0023.jpg.bak"));
        // find's own glob has no folder rule: the folder form is a hint instead.
        assert!(!KeyFilter::exactly("scans/1923")
            .unwrap()
            .matches("scans/1923/001.png"));
    }

    #[test]
    fn escaping_makes_glob_characters_literal_and_hints_say_so() {
        let key = "fotos/[1951] hochzeit?.jpg";
        assert!(!KeyFilter::exactly(key).unwrap().matches(key));
        let escaped = escape_glob(key);
        assert_eq!(escaped, "fotos/\\[1951\\] hochzeit\\?.jpg");
        assert!(KeyFilter::exactly(&escaped).unwrap().matches(key));
        assert!(!KeyFilter::exactly(&escaped)
            .unwrap()
            .matches("fotos/1 hochzeitX.jpg"));
        let mut h = Hints::new(key);
        h.observe(key);
        let s = h.suggestions();
        assert_eq!(s.len(), 1, "{s:?}");
        assert!(s[0].contains(&escaped), "{s:?}");

        let mut h = Hints::new("scans/1923");
        for k in ["scans/1923/001.png", "scans/1924/001.png"] {
            h.observe(k);
        }
        assert_eq!(
            h.suggestions(),
            vec!["scans/1923 is a folder: 'scans/1923/**' matches everything below it"]
        );
        let mut h = Hints::new("grete.pdf");
        h.observe("briefe/1923/grete.pdf");
        assert_eq!(
            h.suggestions(),
            vec!["keys in folders end in grete.pdf: '**/grete.pdf' matches them at any depth"]
        );
        let mut h = Hints::new("nothing");
        h.observe("briefe/1923/grete.pdf");
        assert!(h.suggestions().is_empty());
    }

    #[test]
    fn a_bad_glob_is_named() {
        let e = KeyFilter::new(&["fotos/[".into()], &[]).unwrap_err();
        assert!(e.to_string().contains("fotos/["), "{e}");
    }
}
