//! Retention on the receiver: which snapshots the policy keeps, and moving the others to
//! the trash. Runs from the operator's `prune` command or `serve`'s own schedule, never
//! from a network request, and counts calendar days on the receiver's clock in the
//! configured time zone (the sender's clock is never consulted).
//!
//! Rules, on top of the keep-last/daily/weekly/monthly calendar:
//! - retention never chooses among one day's good snapshots: `keep_daily` keeps every
//!   good snapshot of the last N days that have one (their number is bounded by
//!   `limits.max_snapshots_per_day`, 1 by default), and the weekly, monthly and keep-last
//!   rules pick days, each represented by its *first* good snapshot, so nothing committed
//!   later in a day (an acknowledged one included) can displace the day's first;
//! - a suspect snapshot that no operator has acknowledged (`acks/<id>.json`) takes no
//!   calendar slot, so a flood of junk can never displace a good snapshot; it is itself
//!   kept until acknowledged, because it is what pins the good one below;
//! - a rejected snapshot (`rejects/<id>.json`) takes no slot and pins nothing; it is kept
//!   for forensics while it is no older than the oldest daily-kept snapshot ("rejected");
//! - the newest good snapshot is always kept ("newest"), and so is the newest good one
//!   that passed a restore drill ("drilled");
//! - the newest good snapshot older than each unacknowledged suspect one is kept ("pinned");
//! - a snapshot brought back with `undelete` is kept while its hold exists ("held").

use std::fmt;

use crate::config::RetentionConfig;
use backup_common::retention::{decide, Policy, Reason};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::store::repository::{Maintainer, RepoError, Repository};
use crate::store::trash::{self, TrashEntry};
use crate::store::verdicts;
use crate::testhook;

/// Why a snapshot is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    Newest,
    Pinned,
    Suspect,
    Held,
    Last,
    Daily,
    Weekly,
    Monthly,
    Drilled,
    Rejected,
}

impl From<Reason> for Keep {
    fn from(r: Reason) -> Self {
        match r {
            Reason::Last => Keep::Last,
            Reason::Daily => Keep::Daily,
            Reason::Weekly => Keep::Weekly,
            Reason::Monthly => Keep::Monthly,
        }
    }
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Keep::Newest => "newest",
            Keep::Pinned => "pinned",
            Keep::Suspect => "suspect (not acknowledged)",
            Keep::Held => "held",
            Keep::Last => "last",
            Keep::Daily => "daily",
            Keep::Weekly => "weekly",
            Keep::Monthly => "monthly",
            Keep::Drilled => "drilled",
            Keep::Rejected => "rejected (kept for forensics)",
        })
    }
}

/// What retention needs to know about one snapshot.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    /// Commit time on the receiver's clock.
    pub time: DateTime<Utc>,
    /// Flagged suspect and not acknowledged.
    pub unacknowledged_suspect: bool,
    /// Rejected by an operator.
    pub rejected: bool,
    pub held: bool,
    /// A restore drill passed on it.
    pub drilled: bool,
}

/// The verdict on one snapshot; an empty `keep` means it goes to the trash.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    #[serde(rename = "snapshot_id")]
    pub id: String,
    #[serde(serialize_with = "crate::clock::json_time")]
    pub time: DateTime<Utc>,
    /// The commit time in the configured zone, as the calendar saw it (text only).
    #[serde(skip)]
    pub local_time: String,
    pub keep: Vec<Keep>,
}

impl Decision {
    pub fn kept(&self) -> bool {
        !self.keep.is_empty()
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<22} {:<26} ", self.id, self.local_time)?;
        if self.keep.is_empty() {
            return f.write_str("would prune");
        }
        let reasons: Vec<String> = self.keep.iter().map(Keep::to_string).collect();
        write!(f, "keep: {}", reasons.join(", "))
    }
}

/// Applies the rules to `snapshots` (any order); decisions come back oldest first. Pure.
pub fn plan(snapshots: &[Candidate], policy: &Policy, tz: Tz) -> Vec<Decision> {
    let mut order: Vec<&Candidate> = snapshots.iter().collect();
    order.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
    let mut keep: Vec<Vec<Keep>> = vec![Vec::new(); order.len()];
    let local_day = |c: &Candidate| c.time.with_timezone(&tz).date_naive();
    let good: Vec<usize> = (0..order.len())
        .filter(|&i| !order[i].unacknowledged_suspect && !order[i].rejected)
        .collect();
    // Each day is represented by its first good snapshot; `members` are all of its good ones.
    let mut days: Vec<(usize, Vec<usize>)> = Vec::new();
    for &i in &good {
        match days.last_mut() {
            Some((rep, members)) if local_day(order[*rep]) == local_day(order[i]) => {
                members.push(i)
            }
            _ => days.push((i, vec![i])),
        }
    }
    let rep_times: Vec<_> = days
        .iter()
        .map(|(rep, _)| order[*rep].time.with_timezone(&tz).naive_local())
        .collect();
    for (d, reasons) in decide(&rep_times, policy).into_iter().enumerate() {
        let (rep, members) = &days[d];
        for reason in reasons {
            if reason == Reason::Daily {
                for &m in members {
                    keep[m].push(Keep::Daily);
                }
            } else {
                keep[*rep].push(Keep::from(reason));
            }
        }
    }
    if let Some(&newest) = good.last() {
        keep[newest].push(Keep::Newest);
    }
    if let Some(&drilled) = good.iter().rev().find(|&&i| order[i].drilled) {
        keep[drilled].push(Keep::Drilled);
    }
    let oldest_daily = (0..order.len())
        .find(|&i| keep[i].contains(&Keep::Daily))
        .map(|i| order[i].time);
    for i in 0..order.len() {
        if order[i].rejected {
            if oldest_daily.is_some_and(|t| order[i].time >= t) {
                keep[i].push(Keep::Rejected);
            }
        } else if order[i].unacknowledged_suspect {
            keep[i].push(Keep::Suspect);
            // `order` is sorted by time, so the last good one before i is the newest older.
            if let Some(&pin) = good.iter().rev().find(|&&g| g < i) {
                if !keep[pin].contains(&Keep::Pinned) {
                    keep[pin].push(Keep::Pinned);
                }
            }
        }
        if order[i].held {
            keep[i].push(Keep::Held);
        }
    }
    order
        .iter()
        .zip(keep)
        .map(|(c, mut keep)| {
            keep.sort();
            keep.dedup();
            Decision {
                id: c.id.clone(),
                time: c.time,
                local_time: crate::clock::on_screen(c.time, tz),
                keep,
            }
        })
        .collect()
}

/// What one prune did (or, dry, would do).
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub decisions: Vec<Decision>,
    /// Snapshots put in the trash.
    #[serde(rename = "pruned_snapshot_ids")]
    pub pruned: Vec<String>,
    /// Trash entries removed for good because their grace period had passed.
    #[serde(rename = "purged_snapshot_ids")]
    pub purged: Vec<String>,
    pub dry_run: bool,
}

/// Reads every snapshot's retention facts from the repository, one manifest at a time. A
/// manifest that vanishes while we read (a concurrent purge) is skipped; any other error
/// stops, and so does a verdict or hold that cannot be read: nothing is pruned on facts
/// the store could not give.
pub fn candidates(repo: &Repository) -> Result<Vec<Candidate>, RepoError> {
    let mut out = Vec::new();
    repo.try_for_each_manifest(|m| {
        out.push(Candidate {
            unacknowledged_suspect: verdicts::is_suspect(repo, &m)?,
            rejected: verdicts::is_rejected(repo, &m.id)?,
            held: trash::is_held(repo, &m.id)?,
            drilled: verdicts::drill_passed(repo, &m.id)?,
            id: m.id,
            time: m.time,
        });
        Ok::<_, RepoError>(true)
    })?;
    Ok(out)
}

/// Applies the policy at `now` (receiver clock): puts unkept snapshots in the trash, then
/// removes trash entries older than the grace period. Any unreadable manifest or verdict
/// stops the prune before anything is trashed.
pub fn prune(
    repo: &Maintainer,
    cfg: &RetentionConfig,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<PruneReport, RepoError> {
    let decisions = plan(&candidates(repo)?, &cfg.policy(), cfg.time_zone);
    let mut pruned = Vec::new();
    for d in decisions.iter().filter(|d| !d.kept()) {
        if !dry_run {
            // False: trashed (or purged) by a concurrent prune meanwhile.
            if !trash::put(repo, &d.id, now)? {
                continue;
            }
            tracing::info!(snapshot = %d.id, "snapshot pruned");
            testhook::pause(testhook::PRUNE_AFTER_FIRST_MOVE);
        }
        pruned.push(d.id.clone());
    }
    let purged: Vec<TrashEntry> = trash::purge(repo, now, cfg.trash_grace, dry_run)?;
    for e in &purged {
        if !dry_run {
            tracing::info!(snapshot = %e.id, pruned_at = %e.pruned_at, "trash entry removed");
        }
    }
    Ok(PruneReport {
        decisions,
        pruned,
        purged: purged.into_iter().map(|e| e.id).collect(),
        dry_run,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn night(day: u32) -> DateTime<Utc> {
        // 01:30 UTC is 02:30 in Berlin in winter.
        Utc.with_ymd_and_hms(2026, 1, 1, 1, 30, 0).unwrap() + chrono::Duration::days(day as i64)
    }

    fn good(day: u32) -> Candidate {
        Candidate {
            id: format!("n{day:03}"),
            time: night(day),
            unacknowledged_suspect: false,
            rejected: false,
            held: false,
            drilled: false,
        }
    }

    fn kept(ds: &[Decision]) -> Vec<&str> {
        ds.iter()
            .filter(|d| d.kept())
            .map(|d| d.id.as_str())
            .collect()
    }

    fn daily(n: u32) -> Policy {
        Policy {
            keep_last: 0,
            keep_daily: n,
            keep_weekly: 0,
            keep_monthly: 0,
        }
    }

    #[test]
    fn suspect_snapshots_take_no_slot_and_pin_the_last_good_one() {
        let mut s: Vec<Candidate> = (0..5).map(good).collect();
        // Days 5..=9: a hostile sender's junk, flagged suspect.
        for d in 5..10 {
            s.push(Candidate {
                unacknowledged_suspect: true,
                ..good(d)
            });
        }
        let ds = plan(&s, &daily(2), chrono_tz::Europe::Berlin);
        // The good ones keep their two daily slots; n004 is also newest and pinned.
        assert_eq!(
            kept(&ds),
            vec!["n003", "n004", "n005", "n006", "n007", "n008", "n009"]
        );
        let n4 = ds.iter().find(|d| d.id == "n004").unwrap();
        assert_eq!(n4.keep, vec![Keep::Newest, Keep::Pinned, Keep::Daily]);
        assert!(ds[9].keep == vec![Keep::Suspect]);
    }

    #[test]
    fn acknowledged_and_held_snapshots() {
        let mut s: Vec<Candidate> = (0..6).map(good).collect();
        s[1].held = true;
        let ds = plan(&s, &daily(2), chrono_tz::Europe::Berlin);
        assert_eq!(kept(&ds), vec!["n001", "n004", "n005"]);
        assert_eq!(ds[1].keep, vec![Keep::Held]);
        assert_eq!(
            ds[0].to_string().trim_end(),
            format!(
                "{:<22} {:<26} would prune",
                "n000", "2026-01-01 02:30:00 +01:00"
            )
        );
    }

    #[test]
    fn days_are_counted_in_the_configured_zone() {
        // 23:30 UTC on Jan 1 is already Jan 2 in Berlin: same Berlin day as the next one.
        let late = Utc.with_ymd_and_hms(2026, 1, 1, 23, 30, 0).unwrap();
        let next = Utc.with_ymd_and_hms(2026, 1, 2, 5, 0, 0).unwrap();
        let s = vec![
            Candidate {
                time: late,
                ..good(0)
            },
            Candidate {
                id: "b".into(),
                time: next,
                ..good(0)
            },
        ];
        let berlin = plan(&s, &daily(1), chrono_tz::Europe::Berlin);
        assert_eq!(kept(&berlin), vec!["n000", "b"]);
        let utc = plan(&s, &daily(1), chrono_tz::UTC);
        assert_eq!(kept(&utc), vec!["b"]);
    }

    #[test]
    fn a_later_snapshot_of_a_day_never_displaces_the_first() {
        // Day 0 holds the honest night and, three hours later, a junk snapshot an operator
        // acknowledged (or one nobody flagged): daily keeps both; weekly, monthly and
        // keep-last pick the day by its first snapshot.
        let honest = good(0);
        let later = Candidate {
            id: "later".into(),
            time: night(0) + chrono::Duration::hours(3),
            ..good(0)
        };
        let p = Policy {
            keep_last: 0,
            keep_daily: 0,
            keep_weekly: 1,
            keep_monthly: 1,
        };
        let ds = plan(
            &[honest.clone(), later.clone(), good(1)],
            &p,
            chrono_tz::Europe::Berlin,
        );
        // n001 is the newest day; day 0 is in the same week and month, so only n001 and
        // "newest" are kept by the calendar here. With day 1 gone, day 0 is represented by
        // its first snapshot.
        let ds2 = plan(
            &[honest.clone(), later.clone()],
            &p,
            chrono_tz::Europe::Berlin,
        );
        assert_eq!(kept(&ds2), vec!["n000", "later"]);
        assert_eq!(ds2[0].keep, vec![Keep::Weekly, Keep::Monthly]);
        assert_eq!(ds2[1].keep, vec![Keep::Newest]);
        assert_eq!(kept(&ds), vec!["n001"]);
        let ds3 = plan(&[honest, later], &daily(1), chrono_tz::Europe::Berlin);
        assert_eq!(kept(&ds3), vec!["n000", "later"]);
        assert_eq!(ds3[0].keep, vec![Keep::Daily]);
    }

    #[test]
    fn rejected_snapshots_take_no_slot_and_the_newest_drilled_one_is_kept() {
        let mut s: Vec<Candidate> = (0..6).map(good).collect();
        s[1].drilled = true;
        s[2].drilled = true;
        s[5].rejected = true;
        s[0].rejected = true;
        let ds = plan(&s, &daily(2), chrono_tz::Europe::Berlin);
        // Daily: n004 and n003 (n005 is rejected, takes no slot but is kept for forensics
        // as it is newer than the oldest daily one); n002 is the newest drilled; n000 is
        // rejected and older than every daily one.
        assert_eq!(kept(&ds), vec!["n002", "n003", "n004", "n005"]);
        assert_eq!(ds[2].keep, vec![Keep::Drilled]);
        assert_eq!(ds[5].keep, vec![Keep::Rejected]);
        assert_eq!(ds[4].keep, vec![Keep::Newest, Keep::Daily]);
        assert!(ds[0].keep.is_empty());
    }
}
