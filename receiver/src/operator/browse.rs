//! What a snapshot holds and how two differ, read from the manifests only (no chunk is
//! read): `ls`, `find` and `diff`. Each result serialises to the JSON the `--json` flag
//! prints (the body of the report envelope, cli/report.rs) and renders as text with every
//! peer-supplied name escaped for the terminal, times in the retention time zone. Which
//! snapshot is meant is operator/select.rs's business; these functions get the manifest.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use backup_common::chunk::ChunkId;
use backup_common::manifest::{Manifest, ObjectEntry};
use backup_common::term::escape;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::clock::{self, json_time};
use crate::operator::glob::{Hints, KeyFilter};
use crate::operator::progress::Progress;
use crate::operator::snapshots::human_bytes;
use crate::store::repository::{RepoError, Repository};

/// The snapshot committed just before `m` (whatever its status), if any.
pub fn previous_of(repo: &Repository, m: &Manifest) -> Result<Option<Manifest>, RepoError> {
    let ids = repo.snapshot_ids()?;
    for id in ids.iter().rev().filter(|id| id.as_str() < m.id.as_str()) {
        match repo.load_manifest(id) {
            Ok(p) => return Ok(Some(p)),
            // Pruned meanwhile: the one before it is the previous one now.
            Err(RepoError::NoSuchSnapshot(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// An object's state against the previous snapshot.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    New,
    Changed,
    Unchanged,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub hash: ChunkId,
    pub change: Change,
    /// The ETag the sender reported (`--long`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Chunks the object is stored as (`--long`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<usize>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Listing {
    /// The envelope's `snapshot_id`.
    #[serde(skip)]
    pub snapshot_id: String,
    #[serde(serialize_with = "json_time")]
    pub time: DateTime<Utc>,
    /// The snapshot `change` compares with: the newest older one in the repository.
    pub previous_snapshot_id: Option<String>,
    pub prefix: Option<String>,
    pub objects: Vec<ListedObject>,
    pub bytes: u64,
}

/// `ls SNAPSHOT [PREFIX]`: the keys starting with `prefix`, in manifest (key) order.
pub fn ls(
    repo: &Repository,
    m: &Manifest,
    prefix: Option<&str>,
    long: bool,
) -> Result<Listing, RepoError> {
    let prev = previous_of(repo, m)?;
    let before: BTreeMap<&str, &ObjectEntry> = prev
        .iter()
        .flat_map(|p| p.objects.iter().map(|o| (o.key.as_str(), o)))
        .collect();
    let objects: Vec<ListedObject> = m
        .objects
        .iter()
        .filter(|o| prefix.is_none_or(|p| o.key.starts_with(p)))
        .map(|o| ListedObject {
            key: o.key.clone(),
            size: o.size,
            hash: o.hash,
            change: match before.get(o.key.as_str()) {
                None => Change::New,
                Some(b) if b.hash == o.hash && b.size == o.size => Change::Unchanged,
                Some(_) => Change::Changed,
            },
            etag: long.then(|| o.etag.clone()),
            chunks: long.then_some(o.chunks.len()),
        })
        .collect();
    Ok(Listing {
        snapshot_id: m.id.clone(),
        time: m.time,
        previous_snapshot_id: prev.map(|p| p.id),
        prefix: prefix.map(str::to_string),
        bytes: objects.iter().map(|o| o.size).sum(),
        objects,
    })
}

impl Listing {
    /// The listing as text, times in `tz`.
    pub fn text(&self, tz: Tz) -> String {
        let mut out = format!(
            "snapshot {} ({}), compared with {}\n",
            escape(&self.snapshot_id),
            clock::on_screen(self.time, tz),
            self.previous_snapshot_id
                .as_deref()
                .map(|p| escape(p).into_owned())
                .unwrap_or_else(|| "nothing (the first snapshot)".into())
        );
        for o in &self.objects {
            let change = match o.change {
                Change::New => "new",
                Change::Changed => "changed",
                Change::Unchanged => "",
            };
            let _ = write!(
                out,
                "{:>12}  {}  {:<7}",
                o.size,
                &o.hash.to_hex()[..16],
                change
            );
            if let (Some(etag), Some(chunks)) = (&o.etag, o.chunks) {
                let _ = write!(out, "  {:<34} {:>4}", escape(etag), chunks);
            }
            let _ = writeln!(out, "  {}", escape(&o.key));
        }
        let _ = writeln!(
            out,
            "{} objects, {}",
            self.objects.len(),
            human_bytes(self.bytes)
        );
        out
    }
}

/// One distinct content of a key, and the snapshots holding it (oldest first).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Version {
    pub size: u64,
    pub hash: ChunkId,
    pub first_snapshot_id: String,
    #[serde(serialize_with = "json_time")]
    pub first_time: DateTime<Utc>,
    pub last_snapshot_id: String,
    #[serde(serialize_with = "json_time")]
    pub last_time: DateTime<Utc>,
    pub snapshot_ids: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FoundKey {
    pub key: String,
    /// In the order they first appeared.
    pub versions: Vec<Version>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Found {
    /// As the operator gave it.
    pub glob: String,
    /// As it was matched against whole keys (`**/NAME` for a NAME without `/`).
    pub pattern: String,
    pub snapshots_searched: usize,
    pub keys: Vec<FoundKey>,
    /// Other forms of the glob that would have matched, when nothing did.
    pub hints: Vec<String>,
}

/// `find GLOB`: every key `filter` matches (`pattern` is `glob` as matched) in any
/// snapshot, with each distinct content it had and which snapshots hold that content;
/// `hints` sees every key, for the suggestions when nothing matched.
pub fn find(
    repo: &Repository,
    (glob, pattern): (&str, &str),
    filter: &KeyFilter,
    hints: &mut Hints,
    progress: &Progress,
) -> Result<Found, RepoError> {
    let ids = repo.snapshot_ids()?;
    progress.start(Some(ids.len() as u64), None, "snapshots");
    let mut keys: BTreeMap<String, Vec<Version>> = BTreeMap::new();
    let mut searched = 0;
    repo.for_each_manifest(|m| {
        searched += 1;
        if keys.is_empty() {
            for o in &m.objects {
                hints.observe(&o.key);
            }
        }
        for o in m.objects.iter().filter(|o| filter.matches(&o.key)) {
            let versions = keys.entry(o.key.clone()).or_default();
            match versions
                .iter_mut()
                .find(|v| v.hash == o.hash && v.size == o.size)
            {
                Some(v) => {
                    v.last_snapshot_id = m.id.clone();
                    v.last_time = m.time;
                    v.snapshot_ids.push(m.id.clone());
                }
                None => versions.push(Version {
                    size: o.size,
                    hash: o.hash,
                    first_snapshot_id: m.id.clone(),
                    first_time: m.time,
                    last_snapshot_id: m.id.clone(),
                    last_time: m.time,
                    snapshot_ids: vec![m.id.clone()],
                }),
            }
        }
        progress.item(0);
        true
    })?;
    progress.finish();
    Ok(Found {
        glob: glob.to_string(),
        pattern: pattern.to_string(),
        snapshots_searched: searched,
        hints: if keys.is_empty() {
            hints.suggestions()
        } else {
            Vec::new()
        },
        keys: keys
            .into_iter()
            .map(|(key, versions)| FoundKey { key, versions })
            .collect(),
    })
}

impl Found {
    /// The matches as text, times in `tz`.
    pub fn text(&self, tz: Tz) -> String {
        let mut out = String::new();
        for k in &self.keys {
            let _ = writeln!(out, "{}", escape(&k.key));
            for v in &k.versions {
                let _ = writeln!(
                    out,
                    "  {:>12}  {}  first {} ({})  last {} ({})  ({} snapshot(s))",
                    v.size,
                    &v.hash.to_hex()[..16],
                    escape(&v.first_snapshot_id),
                    clock::on_screen(v.first_time, tz),
                    escape(&v.last_snapshot_id),
                    clock::on_screen(v.last_time, tz),
                    v.snapshot_ids.len()
                );
            }
        }
        let matched = if self.pattern == self.glob {
            escape(&self.glob).into_owned()
        } else {
            format!("{} (as {})", escape(&self.glob), escape(&self.pattern))
        };
        let _ = writeln!(
            out,
            "{} key(s) match {matched} in {} snapshot(s)",
            self.keys.len(),
            self.snapshots_searched
        );
        for h in &self.hints {
            let _ = writeln!(out, "hint: {}", escape(h));
        }
        out
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DiffObject {
    pub key: String,
    pub size: u64,
    pub hash: ChunkId,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChangedObject {
    pub key: String,
    pub old_size: u64,
    pub new_size: u64,
    pub old_hash: ChunkId,
    pub new_hash: ChunkId,
}

/// A table's rows in the two snapshots (`None`: the table is not in that dump).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TableChange {
    pub table: String,
    pub old_rows: Option<u64>,
    pub new_rows: Option<u64>,
    pub change: i64,
}

/// Object bytes: in the new snapshot's added objects, in the old one's removed objects,
/// and the changed objects' sizes before and after.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DiffBytes {
    pub added: u64,
    pub removed: u64,
    pub changed_old: u64,
    pub changed_new: u64,
    pub old_objects: u64,
    pub new_objects: u64,
    pub old_dump: u64,
    pub new_dump: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Diff {
    pub old_snapshot_id: String,
    /// The envelope's `snapshot_id`.
    #[serde(skip)]
    pub new_snapshot_id: String,
    pub added: Vec<DiffObject>,
    pub removed: Vec<DiffObject>,
    pub changed: Vec<ChangedObject>,
    pub unchanged: u64,
    pub bytes: DiffBytes,
    /// Whether the dump's content differs.
    pub dump_changed: bool,
    /// Where each side's row counts come from: `receiver` (counted in the dump's bytes
    /// at commit, `Manifest::measured`), `sender` (only the sender's claim) or `none`.
    pub old_row_counts: &'static str,
    pub new_row_counts: &'static str,
    /// Every table of either dump, sorted by name.
    pub tables: Vec<TableChange>,
}

/// The row counts a snapshot has, preferring the receiver's own count.
fn row_counts(m: &Manifest) -> (&'static str, BTreeMap<String, u64>) {
    let measured = m
        .measured
        .as_ref()
        .and_then(|x| x.dump.as_ref())
        .and_then(|d| d.row_counts.clone());
    match (measured, &m.dump) {
        (Some(r), _) => ("receiver", r),
        (None, Some(d)) => ("sender", d.row_counts.clone()),
        (None, None) => ("none", BTreeMap::new()),
    }
}

/// `diff OLD NEW`: what changed between two snapshots.
pub fn diff(old: &Manifest, new: &Manifest) -> Diff {
    let o: BTreeMap<&str, &ObjectEntry> = old.objects.iter().map(|e| (e.key.as_str(), e)).collect();
    let n: BTreeMap<&str, &ObjectEntry> = new.objects.iter().map(|e| (e.key.as_str(), e)).collect();
    let entry = |e: &ObjectEntry| DiffObject {
        key: e.key.clone(),
        size: e.size,
        hash: e.hash,
    };
    let mut d = Diff {
        old_snapshot_id: old.id.clone(),
        new_snapshot_id: new.id.clone(),
        added: n
            .iter()
            .filter(|(k, _)| !o.contains_key(*k))
            .map(|(_, e)| entry(e))
            .collect(),
        removed: o
            .iter()
            .filter(|(k, _)| !n.contains_key(*k))
            .map(|(_, e)| entry(e))
            .collect(),
        changed: Vec::new(),
        unchanged: 0,
        bytes: DiffBytes {
            old_objects: old.objects.iter().map(|e| e.size).sum(),
            new_objects: new.objects.iter().map(|e| e.size).sum(),
            old_dump: old.dump.as_ref().map_or(0, |x| x.size),
            new_dump: new.dump.as_ref().map_or(0, |x| x.size),
            ..DiffBytes::default()
        },
        dump_changed: old.dump.as_ref().map(|x| (x.hash, x.size))
            != new.dump.as_ref().map(|x| (x.hash, x.size)),
        old_row_counts: "none",
        new_row_counts: "none",
        tables: Vec::new(),
    };
    for (k, a) in &o {
        if let Some(b) = n.get(k) {
            if a.hash == b.hash && a.size == b.size {
                d.unchanged += 1;
            } else {
                d.bytes.changed_old += a.size;
                d.bytes.changed_new += b.size;
                d.changed.push(ChangedObject {
                    key: k.to_string(),
                    old_size: a.size,
                    new_size: b.size,
                    old_hash: a.hash,
                    new_hash: b.hash,
                });
            }
        }
    }
    d.bytes.added = d.added.iter().map(|e| e.size).sum();
    d.bytes.removed = d.removed.iter().map(|e| e.size).sum();
    let (os, or) = row_counts(old);
    let (ns, nr) = row_counts(new);
    d.old_row_counts = os;
    d.new_row_counts = ns;
    let names: std::collections::BTreeSet<&String> = or.keys().chain(nr.keys()).collect();
    d.tables = names
        .into_iter()
        .map(|t| {
            let (a, b) = (or.get(t).copied(), nr.get(t).copied());
            TableChange {
                table: t.clone(),
                old_rows: a,
                new_rows: b,
                change: b.unwrap_or(0) as i64 - a.unwrap_or(0) as i64,
            }
        })
        .collect();
    d
}

impl Diff {
    pub fn text(&self) -> String {
        let mut out = format!(
            "{} → {}\n",
            escape(&self.old_snapshot_id),
            escape(&self.new_snapshot_id)
        );
        for e in &self.added {
            let _ = writeln!(out, "+ {:>12}  {}", e.size, escape(&e.key));
        }
        for e in &self.removed {
            let _ = writeln!(out, "- {:>12}  {}", e.size, escape(&e.key));
        }
        for e in &self.changed {
            let _ = writeln!(
                out,
                "M {:>12} → {}  {}",
                e.old_size,
                e.new_size,
                escape(&e.key)
            );
        }
        let b = &self.bytes;
        let _ = writeln!(
            out,
            "objects: {} added ({}), {} removed ({}), {} changed ({} → {}), {} unchanged",
            self.added.len(),
            human_bytes(b.added),
            self.removed.len(),
            human_bytes(b.removed),
            self.changed.len(),
            human_bytes(b.changed_old),
            human_bytes(b.changed_new),
            self.unchanged
        );
        let _ = writeln!(
            out,
            "dump: {} → {}{}",
            human_bytes(b.old_dump),
            human_bytes(b.new_dump),
            if self.dump_changed { "" } else { " (same)" }
        );
        let _ = writeln!(
            out,
            "row counts (old: {}, new: {}):",
            source_text(self.old_row_counts),
            source_text(self.new_row_counts)
        );
        for t in &self.tables {
            let n = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
            let _ = writeln!(
                out,
                "  {:<40} {:>10} → {:<10} {:+}",
                escape(&t.table),
                n(t.old_rows),
                n(t.new_rows),
                t.change
            );
        }
        out
    }
}

fn source_text(s: &str) -> &'static str {
    match s {
        "receiver" => "counted by the receiver",
        "sender" => "the sender's claim only",
        _ => "no dump",
    }
}
