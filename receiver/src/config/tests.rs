use super::*;

fn write(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    f
}

const RECEIVER: &str = r#"
listen = "127.0.0.1:7443"
repo = "/srv/backup"
[tls]
ca_cert = "ca.pem"
server_cert = "r.pem"
server_key = "r.key"
[admission]
allowed_identities = ["prod-vps"]
allowed_networks = ["100.64.0.0/10"]
"#;

fn load_err(text: &str) -> String {
    let f = write(text);
    ReceiverConfig::load(f.path()).unwrap_err().to_string()
}

#[test]
fn receiver_defaults_apply() {
    let f = write(RECEIVER);
    let c = ReceiverConfig::load(f.path()).unwrap();
    // The sender's local dumps keep 14 daily and 8 weekly; the receiver adds 6 monthly.
    assert_eq!(
        c.retention.policy(),
        Policy {
            keep_monthly: 6,
            ..Policy::default()
        }
    );
    assert_eq!(c.retention.time_zone, chrono_tz::Europe::Berlin);
    assert_eq!(c.retention.trash_grace, Duration::from_secs(7 * 86400));
    assert_eq!(c.limits.max_snapshots_per_day.get(), 1);
    assert!(c.admission.allowed_networks[0]
        .contains(&"100.100.1.1".parse::<std::net::IpAddr>().unwrap()));
    assert_eq!(c.monitoring.ping_timeout, PING_TIMEOUT);
    assert_eq!(c.monitoring.ping_retries, PING_RETRIES);
}

#[test]
fn errors_name_the_key() {
    let e = load_err(&RECEIVER.replace(
        "allowed_identities = [\"prod-vps\"]",
        "allowed_identities = []",
    ));
    assert!(e.contains("admission.allowed_identities"), "{e}");
    let e = load_err(&RECEIVER.replace("repo =", "repository ="));
    assert!(e.contains("repository"), "{e}");
    let e = load_err(&format!(
        "{RECEIVER}[retention]\ntime_zone = \"Europe/Nowhere\"\n"
    ));
    assert!(e.contains("time_zone"), "{e}");
    let e = load_err(&RECEIVER.replace("100.64.0.0/10", "100.64.0.0/99"));
    assert!(e.contains("allowed_networks"), "{e}");
    let e = load_err(&format!("{RECEIVER}[guard]\nmax_dump_shrink = 1.5\n"));
    assert!(e.contains("guard.max_dump_shrink"), "{e}");
    let e = load_err(&format!("{RECEIVER}[limits]\nmax_message_bytes = 1000\n"));
    assert!(e.contains("limits.max_message_bytes"), "{e}");
    let e = load_err(&format!("{RECEIVER}[limits]\nmax_daily_bytes = 0\n"));
    assert!(e.contains("limits.max_daily_bytes"), "{e}");
    let e = load_err(&format!(
        "{RECEIVER}[admission.tailscale]\nrequired_tags = [\"prod-vps\"]\n"
    ));
    assert!(e.contains("admission.tailscale.required_tags"), "{e}");
}

/// A bad value is reported with its full dotted key path, as `key \`a.b.c\``.
#[test]
fn bad_value_names_its_dotted_key_path() {
    for (extra, key) in [
        ("[limits]\nidle_timeout = \"ten minutes\"\n", "limits.idle_timeout"),
        ("[limits]\nmax_sessions = 0\n", "limits.max_sessions"),
        ("[guard]\nmax_growth = 0.0\n", "guard.max_growth"),
        ("[monitoring]\nping_timeout = \"0s\"\n", "monitoring.ping_timeout"),
        ("[monitoring]\nhealthcheck_url = \"https://hc/x?q\"\n", "monitoring.healthcheck_url"),
        (
            "[admission.tailscale]\nrequired_tags = [\"tag:a\", \"b\"]\n",
            "admission.tailscale.required_tags[1]",
        ),
        (
            "[drill]\nsanity_queries = [{ name = \"a\", sql = \"SELECT true\" }, { name = \"b\", sql = \" \" }]\n",
            "drill.sanity_queries[1].sql",
        ),
        (
            "[drill]\nsanity_queries = [{ name = \"a\", sql = \"SELECT true\" }, { name = \"a\", sql = \"SELECT 1\" }]\n",
            "drill.sanity_queries[1].name",
        ),
    ] {
        let e = load_err(&format!("{RECEIVER}{extra}"));
        assert!(e.contains(&format!("key `{key}`")), "{extra}: {e}");
    }
}

#[test]
fn unknown_key_is_refused_with_its_path() {
    let e = load_err(&format!("{RECEIVER}[limits]\nmax_sesions = 3\n"));
    assert!(
        e.contains("key `limits.max_sesions`") && e.contains("unknown field"),
        "{e}"
    );
    let e = load_err(&format!("{RECEIVER}[verify]\nintervall = \"1h\"\n"));
    assert!(
        e.contains("key `verify.intervall`") && e.contains("unknown field"),
        "{e}"
    );
    let e = load_err(&format!(
        "{RECEIVER}[verify]\ninterval = \"2d\"\ncycle = \"1d\"\n"
    ));
    assert!(e.contains("verify.cycle") && e.contains("at least"), "{e}");
}

#[test]
fn limits_guard_and_tailscale_parse() {
    let f = write(&format!(
        "{RECEIVER}[admission.tailscale]\nrequired_tags = [\"tag:prod-vps\"]\n\
         [limits]\nmax_session_bytes = 1000\nmin_free_bytes = 5\n[guard]\nmax_object_count_drop = 0.2\n"
    ));
    let c = ReceiverConfig::load(f.path()).unwrap();
    let ts = c.admission.tailscale.unwrap();
    assert_eq!(
        ts.socket,
        PathBuf::from("/var/run/tailscale/tailscaled.sock")
    );
    assert_eq!(
        ts.required_tags,
        vec![NodeTag::parse("tag:prod-vps").unwrap()]
    );
    assert_eq!(c.limits.max_session_bytes.get(), 1000);
    assert_eq!(c.limits.min_free_bytes, 5);
    assert_eq!(c.limits.max_message_bytes, backup_common::MAX_MESSAGE_BYTES);
    assert_eq!(c.guard.max_object_count_drop.get(), 0.2);
    assert_eq!(c.guard.max_dump_shrink.get(), 0.5);
}

#[test]
fn issue_12_limits_and_revocations_are_checked() {
    let c = ReceiverConfig::load(write(RECEIVER).path()).unwrap();
    assert_eq!(c.limits.commit_deadline, Duration::from_secs(1800));
    assert_eq!(c.limits.commit_idle_timeout, Duration::from_secs(60));
    assert_eq!(c.limits.max_session_age, Duration::from_secs(86400));
    assert_eq!(
        (
            c.limits.max_put_streams_per_connection.get(),
            c.limits.max_put_streams_per_identity.get()
        ),
        (4, 8)
    );
    assert!(c.admission.revoked_certificates.is_empty());
    let fp = format!("sha256:{}", "ab".repeat(32));
    let f = write(&format!("{RECEIVER}revoked_certificates = [\"{fp}\"]\n"));
    assert_eq!(
        ReceiverConfig::load(f.path())
            .unwrap()
            .admission
            .revoked_certificates,
        [CertFingerprint::parse(&fp).unwrap()]
    );
    for (extra, key) in [
        (
            "revoked_certificates = [\"sha1:00\"]\n",
            "admission.revoked_certificates",
        ),
        (
            "[limits]\ncommit_idle_timeout = \"0s\"\n",
            "limits.commit_idle_timeout",
        ),
        (
            "[limits]\nmax_put_streams_per_identity = 0\n",
            "limits.max_put_streams_per_identity",
        ),
        (
            "[limits]\naudit_log_max_bytes = 10\n",
            "limits.audit_log_max_bytes",
        ),
    ] {
        let e = load_err(&format!("{RECEIVER}{extra}"));
        assert!(e.contains(key), "{extra}: {e}");
    }
}

#[test]
fn drill_section_is_optional_and_checked() {
    let f = write(RECEIVER);
    let c = ReceiverConfig::load(f.path()).unwrap();
    assert!(c.drill.sanity_queries.is_empty() && c.drill.healthcheck_url.is_none());
    let f = write(&format!(
        "{RECEIVER}[drill]\nsanity_queries = [{{ name = \"docs\", sql = \"SELECT true\" }}]\n"
    ));
    let c = ReceiverConfig::load(f.path()).unwrap();
    assert_eq!(c.drill.sanity_queries[0].name, "docs");
    let e = load_err(&format!(
        "{RECEIVER}[drill]\nhealthcheck_url = \"ftp://example\"\n"
    ));
    assert!(e.contains("drill.healthcheck_url"), "{e}");
    // The drill's ping URL gets the same check as the other ping URLs.
    let e = load_err(&format!(
        "{RECEIVER}[drill]\nhealthcheck_url = \"https://hc.example/x?a=1\"\n"
    ));
    assert!(
        e.contains("key `drill.healthcheck_url`") && e.contains("query"),
        "{e}"
    );
}

#[test]
fn retention_keeping_nothing_is_refused() {
    let e = load_err(&format!(
        "{RECEIVER}[retention]\nkeep_daily = 0\nkeep_weekly = 0\nkeep_monthly = 0\n"
    ));
    assert!(e.contains("key `retention`"), "{e}");
}
