//! Which snapshot an operator means, in one place for `restore`, `ls`, `dump`, `diff` and
//! `drill` (restic's habits):
//!
//! - an id, or a unique prefix of one (`20260103`, `20260103T0130`); a prefix that fits
//!   several is refused with the matches listed;
//! - `latest` (the newest good snapshot) and `latest~N` (N good snapshots before it);
//! - a day, `2026-01-05`: the newest good snapshot committed on that calendar day of the
//!   retention time zone;
//! - `--as-of TIME`: the newest good snapshot committed at or before TIME, given as RFC
//!   3339 (`2026-01-05T14:00:00Z`), as a wall-clock time of the retention time zone
//!   (`2026-01-05 14:00`, or a day: its end), or relative to the receiver's clock
//!   (`10 days ago`, `36h ago`).
//!
//! Times are the receiver's commit times (`Manifest::time`), never the sender's. What
//! counts as *good* is store/verdicts.rs's word ([`verdicts::is_good`],
//! [`Repository::resolve`]); this module only asks it. Relative picks count good
//! snapshots, or every snapshot when the caller allows any status (restore's
//! `--allow-suspect`). An id or prefix names one snapshot whatever its status: the caller
//! decides what to do with one that is not good. Nothing here writes.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use backup_common::manifest::Manifest;

use crate::store::repository::{RepoError, Repository};
use crate::store::verdicts;

/// Which snapshots the relative picks (`latest`, `latest~N`, a day, `--as-of`) count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    /// Good snapshots only (the default everywhere).
    Good,
    /// Every snapshot, whatever its status (restore's `--allow-suspect`).
    Any,
}

/// What a selection needs besides the repository: the time zone days and wall-clock
/// times are read in, the receiver's clock (for "10 days ago") and what it counts.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub tz: Tz,
    pub now: DateTime<Utc>,
    pub counting: Counting,
}

/// How the chosen snapshot was named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// Its full id.
    Id,
    /// A unique prefix of its id.
    Prefix(String),
    /// `latest` (`back` 0) or `latest~back`.
    Latest { back: u32 },
    /// The newest of a calendar day.
    Day(NaiveDate),
    /// The newest at or before a time.
    AsOf(DateTime<Utc>),
}

impl Named {
    /// Named by its id (in full or by a prefix), not chosen among others.
    pub fn by_id(&self) -> bool {
        matches!(self, Named::Id | Named::Prefix(_))
    }
}

/// A chosen snapshot and how it was named.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub manifest: Manifest,
    pub named: Named,
}

/// Most matches an ambiguous prefix lists.
const MAX_LISTED: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("the snapshot name is empty: give an id (or a unique prefix of one), latest, latest~N or a day like 2026-01-05")]
    EmptyName,
    #[error("{name:?} is not a snapshot name: {why}")]
    BadName { name: String, why: String },
    #[error("snapshot prefix {prefix:?} is ambiguous: it matches {}; give more of the id", list(.matches))]
    Ambiguous {
        prefix: String,
        matches: Vec<String>,
    },
    #[error("latest~{back}: the repository has only {have} {what} snapshot(s) (latest~{} is the oldest)", .have.saturating_sub(1))]
    NotThatMany {
        back: u32,
        have: usize,
        what: &'static str,
    },
    #[error("no {what} snapshot was committed on {day} ({tz}){}", others_text(.others))]
    NoneOnDay {
        day: NaiveDate,
        tz: Tz,
        what: &'static str,
        /// The day's snapshots that are not good (none: the day has no snapshot at all).
        others: Vec<String>,
    },
    #[error("no {what} snapshot was committed at or before {time}{}", .oldest.as_deref().map(|o| format!("; the oldest is {o}")).unwrap_or_default())]
    NoneAsOf {
        time: String,
        what: &'static str,
        oldest: Option<String>,
    },
    #[error("--as-of {text:?}: {why}")]
    BadTime { text: String, why: String },
    #[error(transparent)]
    Repo(#[from] RepoError),
}

fn list(ids: &[String]) -> String {
    let mut text = ids
        .iter()
        .take(MAX_LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > MAX_LISTED {
        text.push_str(&format!(" and {} more", ids.len() - MAX_LISTED));
    }
    text
}

fn others_text(others: &[String]) -> String {
    if others.is_empty() {
        String::new()
    } else {
        format!(
            "; its snapshot(s) {} are not good (suspect or rejected: name one by its id)",
            list(others)
        )
    }
}

impl SelectError {
    /// Whether the name asked for something that exists but is not good (exit 8), rather
    /// than something that does not exist or cannot be read (exit 2).
    pub fn refused_by_policy(&self) -> bool {
        matches!(self, SelectError::NoneOnDay { others, .. } if !others.is_empty())
    }
}

/// The forms a snapshot name takes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    Latest(u32),
    Day(NaiveDate),
    Id(String),
}

fn parse_name(name: &str) -> Result<Form, SelectError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(SelectError::EmptyName);
    }
    if name == "latest" {
        return Ok(Form::Latest(0));
    }
    if let Some(n) = name.strip_prefix("latest~") {
        return n
            .parse()
            .map(Form::Latest)
            .map_err(|_| SelectError::BadName {
                name: name.into(),
                why: "after latest~ comes a count of snapshots back, like latest~1".into(),
            });
    }
    if is_day(name) {
        return NaiveDate::parse_from_str(name, "%Y-%m-%d")
            .map(Form::Day)
            .map_err(|e| SelectError::BadName {
                name: name.into(),
                why: format!("not a calendar day ({e})"),
            });
    }
    Ok(Form::Id(name.to_string()))
}

/// `YYYY-MM-DD`: the shape of a day (ids have no dashes before their time).
fn is_day(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// Whether a relative pick counts `m`. A verdict that cannot be read stops the pick (an
/// older snapshot is never chosen because a newer one's rejection could not be read).
fn counts(repo: &Repository, m: &Manifest, counting: Counting) -> Result<bool, RepoError> {
    Ok(counting == Counting::Any || verdicts::is_good(repo, m)?)
}

fn what(counting: Counting) -> &'static str {
    match counting {
        Counting::Good => "good",
        Counting::Any => "",
    }
}

/// The snapshot `name` means (see the module).
pub fn resolve(repo: &Repository, name: &str, cx: &Context) -> Result<Chosen, SelectError> {
    match parse_name(name)? {
        Form::Latest(0) => {
            let manifest = match cx.counting {
                Counting::Good => repo.resolve("latest", true)?,
                Counting::Any => repo.resolve_any("latest")?,
            };
            Ok(Chosen {
                manifest,
                named: Named::Latest { back: 0 },
            })
        }
        Form::Latest(back) => latest_back(repo, back, cx),
        Form::Day(day) => newest_of_day(repo, day, cx),
        Form::Id(id) => by_id(repo, &id),
    }
}

fn latest_back(repo: &Repository, back: u32, cx: &Context) -> Result<Chosen, SelectError> {
    let mut seen = 0usize;
    let mut found = None;
    repo.try_for_each_manifest_newest_first(|m| {
        if counts(repo, &m, cx.counting)? {
            if seen == back as usize {
                found = Some(m);
                return Ok::<_, RepoError>(false);
            }
            seen += 1;
        }
        Ok(true)
    })?;
    match found {
        Some(manifest) => Ok(Chosen {
            manifest,
            named: Named::Latest { back },
        }),
        None if seen == 0 && repo.snapshot_ids().map_err(RepoError::from)?.is_empty() => {
            Err(RepoError::Empty.into())
        }
        None => Err(SelectError::NotThatMany {
            back,
            have: seen,
            what: what(cx.counting),
        }),
    }
}

fn newest_of_day(repo: &Repository, day: NaiveDate, cx: &Context) -> Result<Chosen, SelectError> {
    let mut found = None;
    let mut others = Vec::new();
    repo.try_for_each_manifest_newest_first(|m| {
        let local = m.time.with_timezone(&cx.tz).date_naive();
        if local > day {
            return Ok::<_, RepoError>(true);
        }
        if local < day {
            return Ok(false);
        }
        if counts(repo, &m, cx.counting)? {
            found = Some(m);
            return Ok(false);
        }
        others.push(m.id.clone());
        Ok(true)
    })?;
    match found {
        Some(manifest) => Ok(Chosen {
            manifest,
            named: Named::Day(day),
        }),
        None => Err(SelectError::NoneOnDay {
            day,
            tz: cx.tz,
            what: what(cx.counting),
            others,
        }),
    }
}

fn by_id(repo: &Repository, id: &str) -> Result<Chosen, SelectError> {
    Repository::check_name(id)?;
    let ids = repo.snapshot_ids().map_err(RepoError::from)?;
    if ids.binary_search_by(|i| i.as_str().cmp(id)).is_ok() {
        return Ok(Chosen {
            manifest: repo.load_manifest(id)?,
            named: Named::Id,
        });
    }
    let matches: Vec<String> = ids.into_iter().filter(|i| i.starts_with(id)).collect();
    match matches.as_slice() {
        [] => Err(RepoError::NoSuchSnapshot(id.to_string()).into()),
        [one] => Ok(Chosen {
            manifest: repo.load_manifest(one)?,
            named: Named::Prefix(id.to_string()),
        }),
        _ => Err(SelectError::Ambiguous {
            prefix: id.to_string(),
            matches,
        }),
    }
}

/// The newest snapshot (good, unless counting any) committed at or before `time`.
pub fn as_of(repo: &Repository, time: DateTime<Utc>, cx: &Context) -> Result<Chosen, SelectError> {
    let mut found = None;
    let mut oldest = None;
    repo.try_for_each_manifest_newest_first(|m| {
        if m.time <= time && counts(repo, &m, cx.counting)? {
            found = Some(m);
            return Ok::<_, RepoError>(false);
        }
        oldest = Some(format!(
            "{} ({})",
            m.id,
            crate::clock::on_screen(m.time, cx.tz)
        ));
        Ok(true)
    })?;
    match found {
        Some(manifest) => Ok(Chosen {
            manifest,
            named: Named::AsOf(time),
        }),
        None => Err(SelectError::NoneAsOf {
            time: crate::clock::on_screen(time, cx.tz),
            what: what(cx.counting),
            oldest,
        }),
    }
}

/// Reads an `--as-of` time: RFC 3339; `YYYY-MM-DD HH:MM[:SS]` (or with a `T`) in `tz`; a
/// day `YYYY-MM-DD` (its last moment in `tz`); or `<duration> ago` before `now`
/// (`10 days ago`, `36h ago`, `2 weeks ago`).
pub fn parse_time(text: &str, tz: Tz, now: DateTime<Utc>) -> Result<DateTime<Utc>, SelectError> {
    let bad = |why: String| SelectError::BadTime {
        text: text.to_string(),
        why,
    };
    let t = text.trim();
    if let Some(ago) = t.strip_suffix(" ago") {
        let d = humantime::parse_duration(ago.trim()).map_err(|e| {
            bad(format!(
                "{e}; a relative time looks like \"10 days ago\" or \"36h ago\""
            ))
        })?;
        let d = Duration::from_std(d).map_err(|_| bad("too long ago".into()))?;
        return now
            .checked_sub_signed(d)
            .ok_or_else(|| bad("too long ago".into()));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(t) {
        return Ok(t.with_timezone(&Utc));
    }
    if is_day(t) {
        let day = NaiveDate::parse_from_str(t, "%Y-%m-%d")
            .map_err(|e| bad(format!("not a calendar day ({e})")))?;
        let next = day
            .succ_opt()
            .ok_or_else(|| bad("no day after it".into()))?;
        let start = local(tz, next.and_hms_opt(0, 0, 0).expect("midnight"))
            .ok_or_else(|| bad(format!("the next day has no midnight in {tz}")))?;
        return Ok(start - Duration::nanoseconds(1));
    }
    for format in [
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, format) {
            return local(tz, naive)
                .ok_or_else(|| bad(format!("that wall-clock time does not exist in {tz}")));
        }
    }
    Err(bad(format!(
        "give RFC 3339 (2026-01-05T14:00:00Z), a time in {tz} (2026-01-05 14:00), a day \
         (2026-01-05) or a time before now (10 days ago)"
    )))
}

/// A wall-clock time of `tz` as an instant; of the two instants a fall-back hour has,
/// the earlier.
fn local(tz: Tz, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests;
