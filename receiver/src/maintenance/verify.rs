//! Verification: every chunk a snapshot references must exist, and (with read-data) must
//! decompress to bytes whose blake3 is its name. Only a chunk whose own bytes fail that
//! test is damaged: a manifest that claims another length for an intact chunk is reported
//! as a lying manifest and the chunk stays where it is. A damaged chunk is moved aside to
//! `REPO/quarantine/<hex>` (never deleted): `has_chunk` is then false, so the next nightly
//! run uploads it again (the receiver's PreviousObjects leaves out objects with absent
//! chunks, so the sender re-reads them from the source) and every snapshot that names the
//! chunk heals. Damage is reported with the snapshots and objects it affects.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use backup_common::chunk::ChunkId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::operator::progress::Progress;
use crate::store::repository::{Maintainer, RepoError};

/// How much chunk data to read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadData {
    /// Existence only.
    None,
    All,
    /// Slice `n` of `m` (1-based): chunks whose first id byte mod `m` is `n - 1`.
    Subset {
        n: u32,
        m: u32,
    },
}

impl ReadData {
    /// Parses `N/M` as given to `--read-data-subset`.
    pub fn parse_subset(s: &str) -> Result<ReadData, String> {
        let (n, m) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not N/M, like 1/7"))?;
        let n: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: N is not a number"))?;
        let m: u32 = m
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: M is not a number"))?;
        if m == 0 || m > 256 || n == 0 || n > m {
            return Err(format!("{s:?}: need 1 <= N <= M <= 256"));
        }
        Ok(ReadData::Subset { n, m })
    }

    fn reads(&self, id: &ChunkId) -> bool {
        match *self {
            ReadData::None => false,
            ReadData::All => true,
            ReadData::Subset { n, m } => u32::from(id.0[0]) % m == n - 1,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Problem {
    Missing,
    Corrupt,
    /// The chunk is intact (its bytes hash to its name) but a manifest claims another
    /// length for it: the manifest lies, not the chunk. Never quarantined.
    ManifestMismatch,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Problem::Missing => "missing",
            Problem::Corrupt => "corrupt",
            Problem::ManifestMismatch => "manifest mismatch",
        })
    }
}

/// Where a damaged chunk is used: a snapshot and the dump or object in it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Affected {
    /// (`snapshot` in verify-state files written before the JSON convention.)
    #[serde(rename = "snapshot_id", alias = "snapshot")]
    pub snapshot: String,
    /// `dump <file name>` or `object <key>`.
    pub item: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Damage {
    pub chunk: String,
    pub problem: Problem,
    pub detail: String,
    /// Where a corrupt chunk was moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<PathBuf>,
    pub affected: Vec<Affected>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Snapshots checked.
    #[serde(rename = "snapshot_count")]
    pub snapshots: u64,
    pub chunks: u64,
    pub chunks_read: u64,
    pub bytes_read: u64,
    pub damage: Vec<Damage>,
    /// The newest snapshot (id, commit time on the receiver clock), if any.
    #[serde(skip)]
    pub newest: Option<(String, DateTime<Utc>)>,
}

/// A chunk the snapshots reference: every length a manifest claims for it, and when the
/// first snapshot naming it was committed (receiver clock).
#[derive(Debug, Clone)]
pub struct Claim {
    pub lens: Vec<u32>,
    pub first: DateTime<Utc>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.damage.is_empty()
    }
}

/// Moves a chunk into the store's quarantine (as `<hex>`, or `<hex>.N` if that name is
/// taken); returns where it went.
pub fn quarantine(repo: &Maintainer, id: &ChunkId) -> Result<PathBuf, RepoError> {
    Ok(PathBuf::from(repo.quarantine(id)?))
}

/// Checks every chunk the snapshots reference; with `read`, re-reads and re-hashes them.
/// Corrupt chunks are quarantined when `quarantine_corrupt` is true. Manifests are read one
/// at a time (twice when there is damage, to name what it affects).
pub fn verify(
    repo: &Maintainer,
    read: ReadData,
    quarantine_corrupt: bool,
    progress: &Progress,
) -> Result<VerifyReport, RepoError> {
    verify_selected(repo, quarantine_corrupt, progress, |claimed| {
        claimed
            .keys()
            .filter(|id| read.reads(id))
            .copied()
            .collect()
    })
}

/// As [`verify`], reading back the chunks `select` picks from every referenced one (the
/// others are only checked for existence). `progress` counts the chunks read back.
pub fn verify_selected(
    repo: &Maintainer,
    quarantine_corrupt: bool,
    progress: &Progress,
    select: impl FnOnce(&BTreeMap<ChunkId, Claim>) -> BTreeSet<ChunkId>,
) -> Result<VerifyReport, RepoError> {
    let mut report = VerifyReport::default();
    // Each referenced chunk once, with every length a manifest claims for it.
    let mut claimed: BTreeMap<ChunkId, Claim> = BTreeMap::new();
    repo.for_each_manifest(|m| {
        report.snapshots += 1;
        if report.newest.as_ref().is_none_or(|(_, t)| m.time >= *t) {
            report.newest = Some((m.id.clone(), m.time));
        }
        for r in m.chunk_refs() {
            let claim = claimed.entry(r.id).or_insert(Claim {
                lens: Vec::new(),
                first: m.time,
            });
            claim.first = claim.first.min(m.time);
            if !claim.lens.contains(&r.len) {
                claim.lens.push(r.len);
            }
        }
        true
    })?;
    report.chunks = claimed.len() as u64;
    let chosen = select(&claimed);
    let chosen_bytes = chosen
        .iter()
        .filter_map(|id| claimed.get(id)?.lens.first().map(|&l| u64::from(l)))
        .sum();
    progress.start(
        Some(chosen.len() as u64),
        Some(chosen_bytes),
        "chunks read back",
    );
    let mut bad: BTreeMap<ChunkId, (Problem, String, Option<PathBuf>)> = BTreeMap::new();
    // Intact chunks some manifest claims another length for, with their true length.
    let mut intact_len: BTreeMap<ChunkId, u32> = BTreeMap::new();
    for (id, Claim { lens, .. }) in &claimed {
        if !chosen.contains(id) {
            // A chunk the store cannot say is there is not "missing": the error stops the
            // verification (exit 6), so no data loss is reported that may not be one.
            if !repo.has_chunk(id)? {
                bad.insert(*id, (Problem::Missing, "no chunk file".into(), None));
            }
            continue;
        }
        report.chunks_read += 1;
        let read = repo.read_chunk(id);
        progress.item(read.as_ref().map_or(0, |d| d.len() as u64));
        match read {
            Ok(data) => {
                report.bytes_read += data.len() as u64;
                let wrong: Vec<String> = lens
                    .iter()
                    .filter(|&&l| l as usize != data.len())
                    .map(u32::to_string)
                    .collect();
                if !wrong.is_empty() {
                    intact_len.insert(*id, data.len() as u32);
                    bad.insert(
                        *id,
                        (
                            Problem::ManifestMismatch,
                            format!(
                                "the chunk is intact ({} bytes that hash to its name) but a manifest claims {} bytes",
                                data.len(),
                                wrong.join(" or ")
                            ),
                            None,
                        ),
                    );
                }
            }
            Err(RepoError::MissingChunk { .. }) => {
                bad.insert(*id, (Problem::Missing, "no chunk file".into(), None));
            }
            Err(e @ RepoError::Store(_)) => return Err(e),
            Err(e) => {
                bad.insert(*id, (Problem::Corrupt, e.to_string(), None));
            }
        }
    }
    if quarantine_corrupt {
        for (id, (problem, _, moved)) in bad.iter_mut() {
            if *problem == Problem::Corrupt {
                match quarantine(repo, id) {
                    Ok(to) => {
                        tracing::warn!(chunk = %id, to = %to.display(), "corrupt chunk quarantined");
                        *moved = Some(to);
                    }
                    Err(e) => tracing::error!(chunk = %id, error = %e, "cannot quarantine"),
                }
            }
        }
    }
    let mut affected: BTreeMap<ChunkId, Vec<Affected>> = BTreeMap::new();
    if !bad.is_empty() {
        repo.for_each_manifest(|m| {
            let mut note = |item: String, chunks: &[backup_common::manifest::ChunkRef]| {
                for c in chunks {
                    // For a lying manifest, only the references that lie are affected.
                    if bad.contains_key(&c.id) && intact_len.get(&c.id) != Some(&c.len) {
                        let list = affected.entry(c.id).or_default();
                        let a = Affected {
                            snapshot: m.id.clone(),
                            item: item.clone(),
                        };
                        if !list.contains(&a) {
                            list.push(a);
                        }
                    }
                }
            };
            if let Some(d) = &m.dump {
                note(format!("dump {}", d.file_name), &d.chunks);
            }
            for o in &m.objects {
                note(format!("object {}", o.key), &o.chunks);
            }
            true
        })?;
    }
    report.damage = bad
        .into_iter()
        .map(|(id, (problem, detail, quarantined))| Damage {
            chunk: id.to_hex(),
            problem,
            detail,
            quarantined,
            affected: affected.remove(&id).unwrap_or_default(),
        })
        .collect();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use backup_common::manifest::{ChunkRef, Manifest, ObjectEntry, SnapshotStats, FORMAT_VERSION};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn subsets_cover_every_chunk_once() {
        let parts: Vec<ReadData> = (1..=3)
            .map(|n| ReadData::parse_subset(&format!("{n}/3")).unwrap())
            .collect();
        for b in 0..=255u8 {
            let id = ChunkId([b; 32]);
            assert_eq!(parts.iter().filter(|p| p.reads(&id)).count(), 1);
        }
        assert!(ReadData::parse_subset("0/3").is_err());
        assert!(ReadData::parse_subset("4/3").is_err());
        assert!(ReadData::parse_subset("x").is_err());
    }

    #[test]
    fn a_corrupt_chunk_is_reported_and_quarantined_and_a_missing_one_reported() {
        let d = tempfile::tempdir().unwrap();
        let repo = crate::store::open::create_or_open(d.path()).unwrap();
        let mut ids = Vec::new();
        for data in [&b"good"[..], b"will rot", b"will vanish"] {
            let id = ChunkId(*blake3::hash(data).as_bytes());
            repo.put_chunk(&id, false, data).unwrap();
            ids.push((id, data.len() as u32));
        }
        let m = Manifest {
            format: FORMAT_VERSION,
            id: "s1".into(),
            time: chrono::Utc::now(),
            sender_time: None,
            source_host: "t".into(),
            peer_identity: "t".into(),
            bucket: "b".into(),
            dump: None,
            objects: ids
                .iter()
                .enumerate()
                .map(|(i, &(id, len))| ObjectEntry {
                    key: format!("o{i}"),
                    size: len as u64,
                    etag: String::new(),
                    hash: id,
                    chunks: vec![ChunkRef { id, len }],
                })
                .collect(),
            stats: SnapshotStats::default(),
            suspect: None,
            measured: None,
        };
        repo.publish_manifest(&m).unwrap();
        let rot = crate::store::fs::chunk_path(d.path(), &ids[1].0);
        fs::set_permissions(&rot, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&rot, b"\0will r0t").unwrap();
        fs::remove_file(crate::store::fs::chunk_path(d.path(), &ids[2].0)).unwrap();

        let quick = verify(&repo, ReadData::None, true, &Progress::hidden()).unwrap();
        assert_eq!(quick.damage.len(), 1, "existence only sees the missing one");
        let r = verify(&repo, ReadData::All, true, &Progress::hidden()).unwrap();
        assert_eq!(r.damage.len(), 2);
        let corrupt = r
            .damage
            .iter()
            .find(|d| d.problem == Problem::Corrupt)
            .unwrap();
        assert_eq!(corrupt.chunk, ids[1].0.to_hex());
        assert_eq!(
            corrupt.affected,
            vec![Affected {
                snapshot: "s1".into(),
                item: "object o1".into()
            }]
        );
        assert!(corrupt.quarantined.as_ref().unwrap().is_file());
        assert!(!repo.has_chunk(&ids[1].0).unwrap());
        let missing = r
            .damage
            .iter()
            .find(|d| d.problem == Problem::Missing)
            .unwrap();
        assert_eq!(missing.affected[0].item, "object o2");
    }
}
