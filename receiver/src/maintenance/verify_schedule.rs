//! `serve`'s own verification (`[verify]`), on the receiver's clock. Every `interval` a pass
//! checks that every referenced chunk exists and reads back and re-hashes: the chunks first
//! referenced by a snapshot committed since the last pass (`read_new`), the quarantined
//! chunks uploaded again since (the heal, confirmed by reading it back), and the next slice
//! of a sweep over the sorted chunk names, sized so that the sweep ends within `cycle`
//! (`ceil(rest / passes left in the cycle)`). A chunk whose bytes do not hash to its name
//! goes to quarantine, as with the CLI's `verify`.
//!
//! Damage is reported once, when a pass first finds it: a `/fail` ping naming the snapshots
//! and keys it affects, the audit log and the error log. A damaged chunk still absent after
//! a snapshot was committed later (the night that would have uploaded it again) is
//! reported once more as permanent loss: no source has those bytes any more (an object
//! deleted or changed since, an old dump). What a pass found is kept in
//! [`verify_state`](crate::maintenance::verify_state), so a restart continues the cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::config::VerifyConfig;
use backup_common::bounded::bounded;
use backup_common::chunk::ChunkId;
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::clock::Clock;
use crate::maintenance::verify::{self, Damage, Problem, VerifyReport};
use crate::maintenance::verify_state::{self, Tracked, VerifyState, MAX_AFFECTED, MAX_TRACKED};
use crate::monitoring::audit::AuditLog;
use crate::monitoring::monitor::Monitor;
use crate::operator::progress::Progress;
use crate::store::records::quarantine::Quarantined;
use crate::store::repository::{Maintainer, RepoError};

/// How often the schedule looks at the receiver's clock.
const POLL: Duration = Duration::from_secs(1);
/// Damaged chunks and places per chunk named in one alert.
const ALERT_CHUNKS: usize = 10;
const ALERT_PLACES: usize = 5;

/// What one pass did and found.
#[derive(Debug, Clone, Default)]
pub struct PassOutcome {
    pub report: VerifyReport,
    /// Damage no earlier pass reported.
    pub new_damage: Vec<Damage>,
    /// Chunks (hex) confirmed healed: present again and read back intact.
    pub healed: Vec<String>,
    /// Chunks declared lost for good by this pass.
    pub lost: Vec<Tracked>,
    /// Files in `REPO/quarantine`.
    pub quarantined: Option<u64>,
}

impl PassOutcome {
    /// The fail ping's body, if this pass found anything to report.
    pub fn alert(&self) -> Option<String> {
        let mut out = String::new();
        if !self.new_damage.is_empty() {
            out.push_str(&damage_text(&self.new_damage));
        }
        for t in self.lost.iter().take(ALERT_CHUNKS) {
            out.push_str(&format!(
                "receiver: PERMANENT LOSS: chunk {} ({}, found {}) was not uploaded again by a later night; no source still has it. Affected ({} places): {}\n",
                t.chunk,
                t.problem,
                t.found.to_rfc3339(),
                t.affected_total,
                places(&t.affected)
            ));
        }
        if self.lost.len() > ALERT_CHUNKS {
            out.push_str(&format!(
                "receiver: … and {} more chunks lost\n",
                self.lost.len() - ALERT_CHUNKS
            ));
        }
        (!out.is_empty()).then_some(out)
    }
}

fn places(affected: &[verify::Affected]) -> String {
    let mut shown: Vec<String> = affected
        .iter()
        .take(ALERT_PLACES)
        .map(|a| format!("snapshot {} {}", bounded(&a.snapshot), bounded(&a.item)))
        .collect();
    if affected.len() > ALERT_PLACES {
        shown.push(format!("… {} more", affected.len() - ALERT_PLACES));
    }
    if shown.is_empty() {
        "none".into()
    } else {
        shown.join("; ")
    }
}

/// Lines naming damaged chunks and what they affect, bounded (the fail ping's body, for
/// the schedule and the CLI's `verify`).
pub fn damage_text(damage: &[Damage]) -> String {
    let mut out = format!(
        "receiver: verification found damage in {} chunk(s)\n",
        damage.len()
    );
    for d in damage.iter().take(ALERT_CHUNKS) {
        let what = match (&d.problem, &d.quarantined) {
            (Problem::Corrupt, Some(_)) => {
                "corrupt, quarantined; the next nightly run uploads it again"
            }
            (Problem::Corrupt, None) => "corrupt",
            (Problem::Missing, _) => {
                "missing; the next nightly run uploads it again if a source still has it"
            }
            (Problem::ManifestMismatch, _) => "intact, but a manifest claims another length",
        };
        out.push_str(&format!(
            "chunk {} ({what}): {}\n",
            d.chunk,
            places(&d.affected)
        ));
    }
    if damage.len() > ALERT_CHUNKS {
        out.push_str(&format!("… and {} more\n", damage.len() - ALERT_CHUNKS));
    }
    out
}

fn track(d: &Damage, now: DateTime<Utc>) -> Tracked {
    Tracked {
        chunk: d.chunk.clone(),
        problem: d.problem,
        found: now,
        affected: d.affected.iter().take(MAX_AFFECTED).cloned().collect(),
        affected_total: d.affected.len() as u64,
    }
}

/// How many chunk copies are in quarantine; `None` (no metric, never a false 0) when the
/// store cannot list them.
fn quarantined_files(repo: &Maintainer) -> Option<u64> {
    match repo.keys::<Quarantined>() {
        Ok(keys) => Some(keys.len() as u64),
        Err(e) => {
            tracing::error!(error = %e, "cannot count the quarantined chunks");
            None
        }
    }
}

/// Whether a pass is due at `now`.
pub fn due(state: &VerifyState, cfg: &VerifyConfig, now: DateTime<Utc>) -> bool {
    let interval = chrono::Duration::from_std(cfg.interval).unwrap_or(chrono::Duration::MAX);
    match state.last_pass.or(state.cycle_start) {
        Some(t) => t.checked_add_signed(interval).is_some_and(|due| now >= due),
        None => true,
    }
}

/// One pass at `now`; `state` is updated in place (the caller saves it).
pub fn run_pass(
    repo: &Maintainer,
    cfg: &VerifyConfig,
    state: &mut VerifyState,
    now: DateTime<Utc>,
) -> Result<PassOutcome, RepoError> {
    if state.cycle_start.is_none() {
        state.cycle_start = Some(now);
        state.cursor = None;
        state.cycle_read = 0;
    }
    let since = state.last_pass.or(state.cycle_start).unwrap_or(now);
    let cycle_end = state
        .cycle_start
        .unwrap_or(now)
        .checked_add_signed(chrono::Duration::from_std(cfg.cycle).unwrap_or(chrono::Duration::MAX))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let interval = cfg.interval.max(Duration::from_secs(1));
    let left = (cycle_end - now).to_std().unwrap_or_default();
    let passes_left = left.as_secs().div_ceil(interval.as_secs()).max(1);
    let cursor: Option<ChunkId> = state
        .cursor
        .as_deref()
        .and_then(|h| ChunkId::from_hex(h).ok());
    let pending: BTreeSet<ChunkId> = state
        .pending
        .iter()
        .filter_map(|t| ChunkId::from_hex(&t.chunk).ok())
        .collect();
    // The heal: a quarantined chunk that is back is read back before it counts. A store
    // that cannot say whether it is back stops the pass.
    let mut back = BTreeSet::new();
    for id in &pending {
        if repo.has_chunk(id)? {
            back.insert(*id);
        }
    }
    let mut sweep_last = None;
    let mut sweep_read = 0u64;
    let mut sweep_left = 0usize;
    let mut total = 0usize;
    let report = verify::verify_selected(repo, true, &Progress::hidden(), |claimed| {
        total = claimed.len();
        let mut chosen = BTreeSet::new();
        if cfg.read_new {
            chosen.extend(
                claimed
                    .iter()
                    .filter(|(_, c)| c.first >= since)
                    .map(|(id, _)| *id),
            );
        }
        chosen.extend(back.iter().copied());
        let rest: Vec<ChunkId> = claimed
            .keys()
            .filter(|id| cursor.is_none_or(|c| **id > c) && !chosen.contains(*id))
            .copied()
            .collect();
        let take = rest.len().div_ceil(passes_left as usize);
        sweep_last = rest[..take].last().copied();
        sweep_read = take as u64;
        sweep_left = rest.len() - take;
        chosen.extend(rest[..take].iter().copied());
        chosen
    })?;

    // The sweep: where it stands, and whether the cycle is complete.
    if let Some(last) = sweep_last {
        state.cursor = Some(last.to_hex());
    }
    state.cycle_read += sweep_read;
    if sweep_left == 0 {
        state.cycles_completed += 1;
        state.last_cycle_completed = Some(now);
        state.cycle_progress = 1.0;
        state.cycle_start = None;
    } else {
        let done = total - sweep_left;
        state.cycle_progress = done as f64 / total.max(1) as f64;
    }

    // Damage: what is new, what healed, what is lost for good.
    let damaged: BTreeMap<&str, &Damage> = report
        .damage
        .iter()
        .map(|d| (d.chunk.as_str(), d))
        .collect();
    let mut outcome = PassOutcome::default();
    let known: BTreeSet<String> = state
        .pending
        .iter()
        .chain(&state.lost)
        .map(|t| t.chunk.clone())
        .collect();
    for d in &report.damage {
        if !known.contains(&d.chunk) {
            outcome.new_damage.push(d.clone());
        }
    }
    let newest = report.newest.clone();
    let mut still = Vec::new();
    for t in std::mem::take(&mut state.pending) {
        let Some(d) = damaged.get(t.chunk.as_str()) else {
            let present = match ChunkId::from_hex(&t.chunk) {
                Ok(id) => repo.has_chunk(&id)?,
                Err(_) => false,
            };
            if present {
                outcome.healed.push(t.chunk.clone());
            } else {
                // No longer referenced by any snapshot (pruned): nothing to follow.
                tracing::info!(chunk = %t.chunk, "damaged chunk no longer referenced");
            }
            continue;
        };
        let healable = t.problem != Problem::ManifestMismatch;
        let night_passed = newest.as_ref().is_some_and(|(id, time)| {
            *time > t.found && !d.affected.iter().any(|a| &a.snapshot == id)
        });
        if healable && d.problem == Problem::Missing && night_passed {
            let mut lost = track(d, now);
            lost.problem = t.problem;
            lost.found = t.found;
            outcome.lost.push(lost);
        } else {
            still.push(t);
        }
    }
    for d in &outcome.new_damage {
        if still.len() < MAX_TRACKED {
            still.push(track(d, now));
        } else {
            state.untracked += 1;
        }
    }
    state.pending = still;
    state
        .lost
        .retain(|t| damaged.contains_key(t.chunk.as_str()));
    for t in &outcome.lost {
        if state.lost.len() < MAX_TRACKED {
            state.lost.push(t.clone());
        } else {
            state.untracked += 1;
        }
    }
    state.healed_total += outcome.healed.len() as u64;
    state.last_pass = Some(now);
    state.last_pass_ok = report.damage.is_empty();
    state.passes += 1;
    state.last_read = report.chunks_read;
    outcome.quarantined = quarantined_files(repo);
    outcome.report = report;
    Ok(outcome)
}

/// Records a pass in the logs and the audit log.
fn record(outcome: &PassOutcome, state: &VerifyState, audit: &AuditLog, now: DateTime<Utc>) {
    let r = &outcome.report;
    tracing::info!(
        snapshots = r.snapshots,
        chunks = r.chunks,
        chunks_read = r.chunks_read,
        bytes_read = r.bytes_read,
        damaged = r.damage.len(),
        cycle_progress = state.cycle_progress,
        "scheduled verification done"
    );
    for d in &outcome.new_damage {
        tracing::error!(chunk = %d.chunk, problem = ?d.problem, affected = d.affected.len(), "alert: verification found damage");
        audit.record(
            now,
            "verify_damage",
            json!({
                "chunk": d.chunk,
                "problem": d.problem,
                "quarantined": d.quarantined.is_some(),
                "affected": d.affected.iter().take(MAX_AFFECTED).collect::<Vec<_>>(),
                "affected_total": d.affected.len(),
            }),
        );
    }
    for hex in &outcome.healed {
        tracing::info!(chunk = %hex, "damaged chunk healed: uploaded again and read back intact");
        audit.record(now, "verify_healed", json!({ "chunk": hex }));
    }
    for t in &outcome.lost {
        tracing::error!(chunk = %t.chunk, affected = t.affected_total, "alert: permanent loss: no source still has this chunk");
        audit.record(
            now,
            "verify_permanent_loss",
            json!({
                "chunk": t.chunk,
                "found": t.found.to_rfc3339(),
                "affected": t.affected,
                "affected_total": t.affected_total,
            }),
        );
    }
}

/// Aborts the verification task when dropped.
pub struct VerifySchedule(Option<tokio::task::JoinHandle<()>>);

impl Drop for VerifySchedule {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// Starts the schedule; an interval of zero turns it off.
pub fn spawn(
    repo: Maintainer,
    cfg: VerifyConfig,
    clock: Clock,
    monitor: Arc<Monitor>,
    audit: Arc<AuditLog>,
) -> VerifySchedule {
    if cfg.interval.is_zero() {
        tracing::info!("verification schedule is off (verify.interval = 0)");
        return VerifySchedule(None);
    }
    let task = tokio::spawn(async move {
        // Loaded before the first pass; a store that cannot say what was remembered
        // (unlike a state that is unreadable garbage) is retried, never taken for "nothing
        // remembered": a fresh state's save would remove the one it could not read.
        let mut loaded: Option<VerifyState> = None;
        // A fresh cycle starts when the schedule did, not when the state was first read.
        let started = clock();
        // After a failed pass: not again before this (receiver clock).
        let mut retry_at: Option<DateTime<Utc>> = None;
        let retry_after = chrono::Duration::from_std(cfg.interval).unwrap_or(chrono::Duration::MAX);
        loop {
            tokio::time::sleep(POLL).await;
            let now = clock();
            if retry_at.is_some_and(|t| now < t) {
                continue;
            }
            let state = match loaded.take() {
                Some(s) => s,
                None => {
                    let repo = repo.clone();
                    match tokio::task::spawn_blocking(move || verify_state::load(&repo)).await {
                        Ok(Ok(Some(s))) => {
                            monitor.verify_restored(&s);
                            s
                        }
                        Ok(Ok(None)) => VerifyState::fresh(started),
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "cannot read the verify state");
                            monitor.verify_failed(&format!("cannot read the verify state: {e}"));
                            retry_at = now.checked_add_signed(retry_after);
                            continue;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "verify state task failed");
                            retry_at = now.checked_add_signed(retry_after);
                            continue;
                        }
                    }
                }
            };
            loaded = Some(state.clone());
            if !due(&state, &cfg, now) {
                continue;
            }
            let (repo2, cfg2, mut st) = (repo.clone(), cfg.clone(), state);
            let done = tokio::task::spawn_blocking(move || {
                let outcome = run_pass(&repo2, &cfg2, &mut st, now);
                if outcome.is_ok() {
                    if let Err(e) = verify_state::save(&repo2, &st) {
                        tracing::error!(error = %e, "cannot save the verify state");
                    }
                }
                (outcome, st)
            })
            .await;
            match done {
                Ok((Ok(outcome), st)) => {
                    retry_at = None;
                    record(&outcome, &st, &audit, now);
                    monitor.verify_pass(&st, &outcome);
                    loaded = Some(st);
                }
                Ok((Err(e), _)) => {
                    tracing::error!(error = %e, "scheduled verification failed");
                    monitor.verify_failed(&format!("scheduled verification failed: {e}"));
                    retry_at = now.checked_add_signed(retry_after);
                }
                Err(e) => {
                    tracing::error!(error = %e, "scheduled verification task failed");
                    retry_at = now.checked_add_signed(retry_after);
                }
            }
        }
    });
    VerifySchedule(Some(task))
}
