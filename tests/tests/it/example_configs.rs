//! The example configurations in `deploy/` load with the programs' own loaders, so they
//! cannot drift from the code, and carry the production names.

use std::path::PathBuf;

use backup_receiver::config::ReceiverConfig;
use backup_sender::config::SenderConfig;

fn deploy(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

#[test]
fn example_sender_config_loads_with_production_names() {
    let c = SenderConfig::load(&deploy("sender.toml")).unwrap();
    assert!(c.database.url.ends_with("/archiv"), "{}", c.database.url);
    assert_eq!(
        c.database.pg_dump,
        ["docker", "compose", "exec", "-T", "db", "pg_dump"]
    );
    assert_eq!(c.objects.bucket, "familienarchiv");
    assert_eq!(c.receiver.server_name.as_deref(), Some("heim-nas"));
    assert!(c.receiver.url.ends_with(":7443"), "{}", c.receiver.url);
}

#[test]
fn example_receiver_config_loads_with_production_names() {
    let c = ReceiverConfig::load(&deploy("receiver.toml")).unwrap();
    assert_eq!(c.admission.allowed_identities, ["prod-vps"]);
    assert_eq!(c.listen.port(), 7443);
    assert!(!c.drill.sanity_queries.is_empty());
}

/// Every key in the examples has a comment: the line above it is a comment (or the key
/// is a commented-out default).
#[test]
fn every_key_in_the_examples_is_commented() {
    for name in ["sender.toml", "receiver.toml"] {
        let text = std::fs::read_to_string(deploy(name)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim();
            let is_key = !t.starts_with('#')
                && !t.starts_with('[')
                && !t.starts_with('{')
                && t.contains(" = ");
            if is_key {
                assert!(
                    i > 0 && lines[i - 1].trim().starts_with('#'),
                    "{name}:{}: `{t}` has no comment above it",
                    i + 1
                );
            }
        }
    }
}
