//! What pg_restore said, read line by line and bounded: the dump chooses its content.

use super::*;

/// What pg_restore reported on stderr.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PgRestoreLog {
    pub not_restored: Vec<NotRestored>,
    /// Objects not restored beyond [`MAX_NOT_RESTORED`].
    pub more: u64,
    /// Errors not tied to an object (connection, archive format), at most a few.
    pub other_errors: Vec<String>,
    /// The count pg_restore gives at the end (`errors ignored on restore: N`).
    pub ignored: Option<u64>,
}

/// Reads pg_restore's `--verbose` stderr line by line (each cut to [`MAX_LINE_BYTES`])
/// and keeps only its errors, each with the object it was processing: a line
/// `pg_restore: from TOC entry 3335; 1259 16883 INDEX t_evil postgres` names the object,
/// the next `pg_restore: error: …` says why it was not restored.
pub fn parse_pg_restore_stderr(stderr: impl Read) -> PgRestoreLog {
    let mut log = PgRestoreLog::default();
    let mut current: Option<String> = None;
    for_each_line(stderr, |line| {
        if let Some(rest) = line.strip_prefix("pg_restore: from TOC entry ") {
            // `<id>; <tableoid> <oid> <type…> <name> <owner>`: drop the ids and the owner.
            let fields: Vec<&str> = rest.split_whitespace().skip(3).collect();
            let object = match fields.split_last() {
                Some((_, init)) if !init.is_empty() => init.join(" "),
                _ => fields.join(" "),
            };
            current = Some(object);
        } else if let Some(n) =
            line.strip_prefix("pg_restore: warning: errors ignored on restore: ")
        {
            log.ignored = n.trim().parse().ok();
        } else if let Some(e) = line.strip_prefix("pg_restore: error: ") {
            let e = e
                .trim_start_matches("could not execute query: ")
                .trim_start_matches("ERROR:")
                .trim();
            let error: String = e.chars().take(MAX_ERROR_CHARS).collect();
            match current.take() {
                Some(object) if log.not_restored.len() < MAX_NOT_RESTORED => {
                    log.not_restored.push(NotRestored { object, error })
                }
                Some(_) => log.more += 1,
                None if log.other_errors.len() < 5 => log.other_errors.push(error),
                None => {}
            }
        }
    });
    log
}

/// Calls `f` with every line of `r` (lossy UTF-8, cut to [`MAX_LINE_BYTES`]).
pub(super) fn for_each_line(mut r: impl Read, mut f: impl FnMut(&str)) {
    let mut line = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                f(&String::from_utf8_lossy(&line));
                line.clear();
            } else if line.len() < MAX_LINE_BYTES {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        f(&String::from_utf8_lossy(&line));
    }
}
