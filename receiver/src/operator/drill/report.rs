//! What a drill found: its steps, counts, sanity queries, objects and isolation, and
//! how the report reads as text and JSON.

use super::*;

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: &'static str,
    pub ok: bool,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TableCount {
    pub table: String,
    /// Rows recorded at backup time; `None` for a table the manifest does not list.
    pub expected: Option<u64>,
    /// Rows in the restored database; `None` for a table that was not restored.
    pub actual: Option<u64>,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SanityResult {
    pub name: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ObjectsResult {
    /// Objects and bytes the manifest lists.
    pub expected: u64,
    pub expected_bytes: u64,
    /// Objects and bytes restored and verified.
    pub restored: u64,
    pub bytes: u64,
    pub failed: u64,
}

/// How the sandbox was walled in.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Isolation {
    /// The role pg_restore and every query of the drill ran as.
    pub role: String,
    /// The OS account the sandbox's server and pg_restore ran as.
    pub os_user: String,
    /// The network they had.
    pub network: String,
    /// Where the isolation is weaker than it should be (reported; not a failure).
    pub warnings: Vec<String>,
}

/// One object of the dump that pg_restore could not restore.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NotRestored {
    /// As pg_restore names it: type and name, e.g. `INDEX t_evil`, `EXTENSION adminpack`.
    pub object: String,
    /// The first line of PostgreSQL's error.
    pub error: String,
}

/// What a drill found. `passed` is true only when `failures` is empty. As JSON it is the
/// body of the drill's report envelope (cli/report.rs), whose `snapshot_id` is
/// [`Report::snapshot`].
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(skip)]
    pub snapshot: String,
    /// The host the snapshot came from, as its sender named itself.
    pub source_host: String,
    /// The snapshot's commit time (receiver clock).
    #[serde(serialize_with = "crate::clock::json_time")]
    pub time: DateTime<Utc>,
    /// The retention time zone text shows times in.
    #[serde(skip)]
    pub zone: chrono_tz::Tz,
    pub age_seconds: i64,
    pub age: String,
    pub passed: bool,
    /// Why the receiver's anomaly guard distrusts this snapshot, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspect: Option<String>,
    /// Where the dump was restored (throwaway cluster, or a database on the sandbox server).
    pub sandbox: String,
    pub isolation: Isolation,
    pub dump_bytes: u64,
    /// Objects of the dump the restore role could not restore (each is also a failure).
    pub not_restored: Vec<NotRestored>,
    pub tables: Vec<TableCount>,
    pub sanity_queries: Vec<SanityResult>,
    pub objects: ObjectsResult,
    pub steps: Vec<Step>,
    pub failures: Vec<String>,
    pub seconds: f64,
}

impl Report {
    /// The report as an operator reads it (also the body of the healthcheck ping).
    pub fn text(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed { "PASSED" } else { "FAILED" };
        out.push_str(&format!(
            "restore drill {verdict}: snapshot {} ({}, {} old) from {}\n",
            escape(&self.snapshot),
            crate::clock::on_screen(self.time, self.zone),
            self.age,
            escape(&self.source_host)
        ));
        if let Some(why) = &self.suspect {
            out.push_str(&format!(
                "snapshot flagged SUSPECT by the receiver: {}\n",
                escape(why)
            ));
        }
        let iso = &self.isolation;
        out.push_str(&format!("sandbox: {}\n", escape(&self.sandbox)));
        if iso.role.is_empty() && iso.os_user.is_empty() {
            out.push_str("restored as: nothing was restored into a database\n");
        } else {
            let or_none = |s: &str| {
                if s.is_empty() {
                    "(none)".to_string()
                } else {
                    escape(s).into_owned()
                }
            };
            out.push_str(&format!(
                "restored as: role {}, OS user {}, network: {}\n",
                or_none(&iso.role),
                or_none(&iso.os_user),
                or_none(&iso.network)
            ));
        }
        for w in &iso.warnings {
            out.push_str(&format!("isolation WARNING: {}\n", escape(w)));
        }
        out.push_str(&format!("dump: {}\n", human_bytes(self.dump_bytes)));
        if !self.tables.is_empty() {
            out.push_str(&format!(
                "\n{:<40} {:>12} {:>12}\n",
                "TABLE", "EXPECTED", "RESTORED"
            ));
            let show = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
            for t in &self.tables {
                out.push_str(&format!(
                    "{:<40} {:>12} {:>12}{}\n",
                    escape(&t.table),
                    show(t.expected),
                    show(t.actual),
                    if t.ok { "" } else { "  MISMATCH" }
                ));
            }
        }
        if !self.sanity_queries.is_empty() {
            out.push('\n');
            for q in &self.sanity_queries {
                out.push_str(&format!(
                    "sanity query \"{}\": {}\n",
                    escape(&q.name),
                    match (&q.ok, &q.error) {
                        (true, _) => "true".to_string(),
                        (false, Some(e)) => format!("FAILED: {}", escape(e)),
                        (false, None) => "FAILED".to_string(),
                    }
                ));
            }
        }
        let o = &self.objects;
        out.push_str(&format!(
            "\nobjects: {} of {} restored and verified ({} of {}){}\n",
            o.restored,
            o.expected,
            human_bytes(o.bytes),
            human_bytes(o.expected_bytes),
            if o.failed > 0 {
                format!(", {} FAILED", o.failed)
            } else {
                String::new()
            }
        ));
        out.push_str("\nsteps:\n");
        for s in &self.steps {
            out.push_str(&format!(
                "  {:<14} {:>9.1}s  {}\n",
                s.name,
                s.seconds,
                if s.ok { "ok" } else { "FAILED" }
            ));
        }
        out.push_str(&format!("  {:<14} {:>9.1}s\n", "total", self.seconds));
        if !self.failures.is_empty() {
            out.push_str(&format!("\nfailures ({}):\n", self.failures.len()));
            for f in &self.failures {
                out.push_str(&format!("  - {}\n", escape(f)));
            }
        }
        out
    }
}

pub(super) fn human_age(age: chrono::Duration) -> String {
    let secs = age.num_seconds().max(0) as u64;
    // Minutes are precise enough for an age; seconds only for very young snapshots.
    short_duration(if secs >= 3600 { secs - secs % 60 } else { secs })
}

/// `45d 1h 30m`: days, hours, minutes and seconds, zero parts left out (humantime's
/// months of 30.44 days would read oddly in a drill report).
pub(super) fn short_duration(secs: u64) -> String {
    let parts = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3600, "h"),
        (secs % 3600 / 60, "m"),
        (secs % 60, "s"),
    ];
    let text: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if text.is_empty() {
        "0s".into()
    } else {
        text.join(" ")
    }
}
