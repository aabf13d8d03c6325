//! The sender's local dump directory: one dated file per night (`archiv-YYYYMMDD.dump`),
//! kept by the same daily/weekly calendar the receiver uses. Removes only files whose
//! names match the configured pattern, and never the current run's dump.

use std::io;
use std::path::{Path, PathBuf};

use backup_common::retention::{decide, Policy};
use chrono::NaiveDate;

/// Staging name of tonight's dump while it is being written.
pub fn partial_path(dir: &Path, final_name: &str) -> PathBuf {
    dir.join(format!(".{final_name}.partial"))
}

pub fn file_name(pattern: &str, date: NaiveDate) -> String {
    date.format(pattern).to_string()
}

/// Removes leftovers of interrupted runs (`.*.partial`).
pub fn remove_stale_partials(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".partial") {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Applies the keep-daily/keep-weekly calendar to the dated dumps in `dir`, keeping
/// `current` whatever the calendar says. Returns the removed file names.
pub fn rotate(
    dir: &Path,
    pattern: &str,
    keep_daily: u32,
    keep_weekly: u32,
    current: &str,
) -> io::Result<Vec<String>> {
    let mut dated: Vec<(String, NaiveDate)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if let Ok(date) = NaiveDate::parse_from_str(&name, pattern) {
            // Only names that round-trip exactly are ours (no stray look-alikes).
            if file_name(pattern, date) == name {
                dated.push((name, date));
            }
        }
    }
    let policy = Policy {
        keep_last: 0,
        keep_daily,
        keep_weekly,
        keep_monthly: 0,
    };
    let times: Vec<_> = dated
        .iter()
        .map(|(_, d)| d.and_hms_opt(0, 0, 0).expect("midnight"))
        .collect();
    let reasons = decide(&times, &policy);
    let mut removed = Vec::new();
    for ((name, _), why) in dated.iter().zip(reasons) {
        if why.is_empty() && name != current {
            std::fs::remove_file(dir.join(name))?;
            removed.push(name.clone());
        }
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_fourteen_daily_and_eight_weekly_and_never_the_current_one() {
        let d = tempfile::tempdir().unwrap();
        let pattern = "archiv-%Y%m%d.dump";
        let start = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let mut names = Vec::new();
        for i in 0..100 {
            let n = file_name(pattern, start + chrono::Duration::days(i));
            std::fs::write(d.path().join(&n), b"x").unwrap();
            names.push(n);
        }
        std::fs::write(d.path().join("unrelated.txt"), b"keep me").unwrap();
        std::fs::write(d.path().join("archiv-2026011.dump"), b"odd name").unwrap();
        // Pretend tonight's dump is an old date that the calendar would drop.
        let current = names[3].clone();
        let removed = rotate(d.path(), pattern, 14, 8, &current).unwrap();
        let left: Vec<String> = {
            let mut v: Vec<String> = std::fs::read_dir(d.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.starts_with("archiv-") && n.len() == "archiv-20260101.dump".len())
                .collect();
            v.sort();
            v
        };
        // The last day is Friday 2026-04-10: 14 daily (03-28..04-10) cover three of the 8
        // weekly picks (04-10, 04-05, 03-29); five Sundays remain, plus the current file.
        assert_eq!(left.len(), 14 + 5 + 1, "{left:?}");
        for sunday in ["archiv-20260322.dump", "archiv-20260222.dump"] {
            assert!(left.contains(&sunday.to_string()), "{sunday}");
        }
        assert!(left.contains(&current));
        assert!(left.contains(names.last().unwrap()));
        assert_eq!(removed.len(), 100 - left.len());
        assert!(d.path().join("unrelated.txt").exists());
        assert!(d.path().join("archiv-2026011.dump").exists());
    }

    #[test]
    fn stale_partials_are_removed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(partial_path(d.path(), "archiv-20260101.dump"), b"half").unwrap();
        std::fs::write(d.path().join("archiv-20260101.dump"), b"whole").unwrap();
        remove_stale_partials(d.path()).unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
