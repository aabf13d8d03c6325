use super::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn access_follows_owner_group_other_and_every_parent() {
    let d = tempfile::tempdir().unwrap();
    let sub = d.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let f = sub.join("f");
    std::fs::write(&f, b"x").unwrap();
    let set =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let (uid, gid) = (4_000_123, 4_000_123); // nobody's
    set(d.path(), 0o755);
    set(&sub, 0o755);
    set(&f, 0o444);
    assert!(can_access(&f, uid, gid, 0o4));
    set(&f, 0o400);
    assert!(!can_access(&f, uid, gid, 0o4));
    set(&f, 0o444);
    set(&sub, 0o700);
    assert!(!can_access(&f, uid, gid, 0o4), "a parent it cannot search");
    set(&sub, 0o711);
    assert!(can_access(&f, uid, gid, 0o4));
    assert!(!can_access(&sub, uid, gid, 0o4), "0711: search, not list");
    assert!(!can_access(&d.path().join("missing"), uid, gid, 0o4));
}
