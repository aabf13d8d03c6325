use chrono::{DateTime, Utc};

use super::lease::{LeaseKey, LeaseRecord};
use super::quarantine::Quarantined;
use super::trash::{in_trash, Pruned, Tombstone, Undeleted};
use super::verdict::{Acked, Verdict};
use super::verify_state::VerifyStateSave;
use crate::store::record::Record;
use backup_common::chunk::ChunkId;
use backup_common::manifest::Manifest;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn round_trip<R: Record>(key: R::Key, name: &str) {
    assert_eq!(R::name(&key), name);
    assert_eq!(R::parse_name(name), Some(key));
}

#[test]
fn every_name_rule_round_trips_and_refuses_what_is_not_its_own() {
    let p = Pruned::new("20260201T023000Z-1", t("2026-03-01T02:30:00.7Z"));
    round_trip::<Tombstone>(p.clone(), "20260201T023000Z-1@20260301T023000Z.json");
    round_trip::<Undeleted>(p, "20260201T023000Z-1@20260301T023000Z.json");
    assert_eq!(Tombstone::parse_name("junk.json"), None);
    assert_eq!(Tombstone::parse_name("@20260301T023000Z.json"), None);
    round_trip::<Manifest>("20260101T000000Z".into(), "20260101T000000Z.json");
    assert_eq!(Manifest::parse_name(".json"), None);
    assert_eq!(Manifest::parse_name("x.json.tmp"), None);
    round_trip::<Verdict<Acked>>("s1".into(), "s1.json");
    round_trip::<LeaseRecord>(LeaseKey::Open("s".into()), "s.open");
    round_trip::<LeaseRecord>(LeaseKey::Closed("s".into()), "s.closed");
    assert_eq!(LeaseRecord::parse_name("s.lock"), None);
    let id = ChunkId([7; 32]);
    round_trip::<Quarantined>((id, 0), &id.to_hex());
    round_trip::<Quarantined>((id, 2), &format!("{}.2", id.to_hex()));
    assert_eq!(Quarantined::parse_name(&format!("{}.0", id.to_hex())), None);
    round_trip::<VerifyStateSave>(3, "00000000000000000003.json");
}

#[test]
fn a_tombstone_counts_until_an_undeleted_record_names_it() {
    let first = Pruned::new("a", t("2026-03-01T02:00:00Z"));
    let again = Pruned::new("a", t("2026-03-09T02:00:00Z"));
    let other = Pruned::new("b", t("2026-03-02T02:00:00Z"));
    let all = [first.clone(), again.clone(), other.clone()];
    let trashed = in_trash(&all, &[]);
    assert_eq!(
        trashed.get("a"),
        Some(&again.at),
        "the newest tombstone counts"
    );
    let trashed = in_trash(&all, &[first.clone(), again.clone()]);
    assert_eq!(trashed.keys().collect::<Vec<_>>(), ["b"]);
    // Undoing the first prune leaves the second one standing.
    assert_eq!(in_trash(&all, &[first]).get("a"), Some(&again.at));
}
