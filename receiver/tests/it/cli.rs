//! The receiver's command line, run as the operator runs it.

use std::process::Command;

fn receiver(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_backup-receiver"))
        .args(args)
        .output()
        .expect("run backup-receiver")
}

#[test]
fn certs_init_writes_the_six_files_and_refuses_to_overwrite() {
    let d = tempfile::tempdir().unwrap();
    let out_dir = d.path().join("certs");
    let out = out_dir.to_str().unwrap();
    let args = [
        "certs",
        "init",
        "--out",
        out,
        "--server-name",
        "heim-nas",
        "--server-ip",
        "100.64.0.2",
        "--sender-identity",
        "prod-vps",
    ];
    let first = receiver(&args);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    for f in [
        "ca.pem",
        "ca.key",
        "receiver.pem",
        "receiver.key",
        "sender.pem",
        "sender.key",
    ] {
        assert!(out_dir.join(f).is_file(), "{f} missing");
    }
    let before = std::fs::read(out_dir.join("ca.key")).unwrap();
    let second = receiver(&args);
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(out_dir.join("ca.key")).unwrap(), before);
}

#[test]
fn snapshots_on_a_directory_that_is_no_repository_names_the_problem() {
    let d = tempfile::tempdir().unwrap();
    let out = receiver(&["snapshots", "--repo", d.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a backup repository"), "{err}");
    assert_eq!(
        std::fs::read_dir(d.path()).unwrap().count(),
        0,
        "nothing may be created"
    );
}

#[test]
fn serve_with_a_bad_config_names_the_key() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("receiver.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\nrepo = \"/nonexistent\"\n[tls]\nca_cert = \"a\"\nserver_cert = \"b\"\nserver_key = \"c\"\n[admission]\nallowed_identities = [\"x\"]\nallowed_networks = [\"not-a-net\"]\n",
    )
    .unwrap();
    let out = receiver(&["serve", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("allowed_networks"), "{err}");
}

#[test]
fn serve_with_a_bad_value_names_its_dotted_key_path_and_an_unknown_key_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("receiver.toml");
    let base = "listen = \"127.0.0.1:0\"\nrepo = \"/nonexistent\"\n[tls]\nca_cert = \"a\"\nserver_cert = \"b\"\nserver_key = \"c\"\n[admission]\nallowed_identities = [\"x\"]\nallowed_networks = [\"127.0.0.0/8\"]\n";
    for (extra, want) in [
        (
            "[limits]\nidle_timeout = \"soon\"\n",
            "key `limits.idle_timeout`",
        ),
        (
            "[drill]\nhealthcheck_url = \"https://hc.example/x?y=1\"\n",
            "key `drill.healthcheck_url`",
        ),
        (
            "[monitoring]\nping_retries = 0\n",
            "key `monitoring.ping_retries`",
        ),
        ("[limits]\nmax_sesions = 3\n", "unknown field `max_sesions`"),
    ] {
        std::fs::write(&cfg, format!("{base}{extra}")).unwrap();
        let out = receiver(&["serve", "--config", cfg.to_str().unwrap()]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{extra}: {err}");
        assert!(!std::path::Path::new("/nonexistent").exists());
    }
}
