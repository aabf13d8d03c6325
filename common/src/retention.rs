//! Retention calendars (keep-last, daily, weekly, monthly), shared by the sender's local
//! dump directory and the receiver's snapshots. Pure: callers decide what "time" is; the
//! receiver passes its own clock's times, never the sender's.
//!
//! Each rule walks the items newest first and keeps the newest item of each of the last N
//! calendar buckets (day, ISO week, month) that have any item, as restic and borg do.

use chrono::{Datelike, NaiveDateTime};
use serde::{Deserialize, Serialize};

/// The keep-rules. The defaults (14 daily, 8 weekly) are the sender's local dump rotation
/// and the base of the receiver's `[retention]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            keep_last: 0,
            keep_daily: 14,
            keep_weekly: 8,
            keep_monthly: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    Last,
    Daily,
    Weekly,
    Monthly,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::Last => "last",
            Reason::Daily => "daily",
            Reason::Weekly => "weekly",
            Reason::Monthly => "monthly",
        })
    }
}

/// The calendar bucket (year and day, week or month) an item falls into.
type BucketOf = fn(&NaiveDateTime) -> (i32, u32);

/// For each item (given by its local time), the reasons it is kept; an empty list means
/// the policy would let it go. Output order matches input order.
pub fn decide(times: &[NaiveDateTime], policy: &Policy) -> Vec<Vec<Reason>> {
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|&a, &b| times[b].cmp(&times[a]).then(b.cmp(&a)));
    let mut reasons = vec![Vec::new(); times.len()];
    let rules: [(Reason, u32, BucketOf); 4] = [
        (Reason::Last, policy.keep_last, |_| (0, 0)),
        (Reason::Daily, policy.keep_daily, |t| {
            (t.year(), t.ordinal())
        }),
        (Reason::Weekly, policy.keep_weekly, |t| {
            let w = t.iso_week();
            (w.year(), w.week())
        }),
        (Reason::Monthly, policy.keep_monthly, |t| {
            (t.year(), t.month())
        }),
    ];
    for (reason, count, bucket) in rules {
        let mut kept = 0;
        let mut last_bucket = None;
        for &i in &order {
            if kept >= count {
                break;
            }
            let b = bucket(&times[i]);
            // keep-last counts every item; the calendar rules one per bucket.
            if reason == Reason::Last || last_bucket != Some(b) {
                reasons[i].push(reason);
                kept += 1;
                last_bucket = Some(b);
            }
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, NaiveDate};

    fn nightly(days: i64) -> Vec<NaiveDateTime> {
        let start = NaiveDate::from_ymd_opt(2026, 1, 1)
            .unwrap()
            .and_hms_opt(2, 30, 0)
            .unwrap();
        (0..days).map(|d| start + Duration::days(d)).collect()
    }

    #[test]
    fn sixty_nights_keep_fourteen_daily_and_eight_weekly() {
        let times = nightly(60);
        let r = decide(&times, &Policy::default());
        let kept: Vec<usize> = (0..60).filter(|&i| !r[i].is_empty()).collect();
        // The newest 14 days are daily; weekly keeps the newest night of each of the last
        // 8 ISO weeks, two of which fall in the daily range already.
        assert!(kept
            .iter()
            .rev()
            .take(14)
            .all(|&i| r[i].contains(&Reason::Daily)));
        assert_eq!(r.iter().filter(|x| x.contains(&Reason::Weekly)).count(), 8);
        let weekly_only: Vec<usize> = kept.iter().copied().filter(|&i| i < 46).collect();
        for &i in &weekly_only {
            assert_eq!(times[i].weekday(), chrono::Weekday::Sun, "{}", times[i]);
        }
        assert_eq!(kept.len(), 14 + weekly_only.len());
        assert_eq!(weekly_only.len(), 6);
    }

    #[test]
    fn several_items_a_day_keep_the_newest_of_the_day() {
        let base = nightly(1)[0];
        let times = vec![base, base + Duration::hours(3), base + Duration::hours(1)];
        let r = decide(
            &times,
            &Policy {
                keep_last: 0,
                keep_daily: 1,
                keep_weekly: 0,
                keep_monthly: 0,
            },
        );
        assert_eq!(r, vec![vec![], vec![Reason::Daily], vec![]]);
    }

    #[test]
    fn keep_last_and_monthly() {
        let times = nightly(100);
        let p = Policy {
            keep_last: 3,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 4,
        };
        let r = decide(&times, &p);
        assert_eq!(r.iter().filter(|x| x.contains(&Reason::Last)).count(), 3);
        assert_eq!(r.iter().filter(|x| x.contains(&Reason::Monthly)).count(), 4);
        assert!(r[99].contains(&Reason::Last) && r[99].contains(&Reason::Monthly));
    }
}
