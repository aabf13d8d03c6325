//! The sender's command line: configuration errors get exit code 2 and name the key.

use std::process::Command;

fn run_with_config(text: &str) -> (Option<i32>, String) {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("sender.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_backup-sender"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .output()
        .expect("run backup-sender");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"
[receiver]
url = "https://heim-nas:7443"
ca_cert = "/nonexistent/ca.pem"
client_cert = "/nonexistent/sender.pem"
client_key = "/nonexistent/sender.key"

[database]
url = "postgres://archiv@127.0.0.1:1/archiv"
local_dir = "/nonexistent/dumps"

[objects]
endpoint = "http://127.0.0.1:1"
bucket = "familienarchiv"
access_key_file = "/nonexistent/ak"
secret_key_file = "/nonexistent/sk"
"#;

#[test]
fn unknown_key_is_a_config_error() {
    let (code, err) = run_with_config(&GOOD.replace("bucket =", "buckett ="));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("buckett"), "{err}");
}

#[test]
fn plain_http_receiver_url_is_refused() {
    let (code, err) = run_with_config(&GOOD.replace("https://heim-nas", "http://heim-nas"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("receiver.url"), "{err}");
}

#[test]
fn missing_secret_file_names_its_key() {
    let d = tempfile::tempdir().unwrap();
    let text = GOOD.replace(
        "/nonexistent/dumps",
        d.path().join("dumps").to_str().unwrap(),
    );
    let (code, err) = run_with_config(&text);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("objects.access_key_file"), "{err}");
}

#[test]
fn missing_config_file_is_a_config_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_backup-sender"))
        .args(["run", "--config", "/nonexistent/sender.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sender.toml"));
}

#[test]
fn healthcheck_url_must_be_http() {
    let text = format!("{GOOD}\n[healthcheck]\nurl = \"ftp://hc.example/abc\"\n");
    let (code, err) = run_with_config(&text);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("healthcheck.url"), "{err}");
    let text = GOOD.to_string() + "\n[run]\ndeadline = \"soon\"\n";
    let (code, err) = run_with_config(&text);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("deadline"), "{err}");
}

#[test]
fn check_names_a_bad_configuration_once_and_a_closed_stderr_is_no_panic() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("sender.toml");
    std::fs::write(&cfg, GOOD.replace("bucket =", "buckett =")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_backup-sender"))
        .args(["check", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("FAIL configuration: "), "{text}");
    assert!(!text.contains("configuration: configuration:"), "{text}");
    // `run … 2>&1 | head -1`: the failed run still exits with its own code.
    let mut child = Command::new(env!("CARGO_BIN_EXE_backup-sender"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    assert_eq!(child.wait().unwrap().code(), Some(2));
}

fn sender(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_backup-sender"))
        .args(args)
        .output()
        .expect("run backup-sender")
}

#[test]
fn help_describes_every_option_and_shows_examples_and_exit_codes() {
    for command in ["run", "check"] {
        let out = sender(&[command, "--help"]);
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        let options = help
            .split("Options:\n")
            .nth(1)
            .unwrap_or_else(|| panic!("{help}"));
        for line in options.lines().take_while(|l| l.starts_with("  ")) {
            let words: Vec<&str> = line.split_whitespace().collect();
            // `--config <CONFIG>  sender.toml …`: a description after the flag.
            let described = words
                .iter()
                .skip_while(|w| w.starts_with('-') || w.starts_with('<'))
                .count();
            assert!(
                described > 0,
                "{command}: {line:?} has no description\n{help}"
            );
        }
        assert!(
            help.contains(&format!("Examples:\n  backup-sender {command} --config ")),
            "{help}"
        );
        assert!(help.contains("Exit codes:\n  0  success"), "{help}");
        assert!(help.contains("  7  suspect"), "{help}");
    }
}

#[test]
fn run_json_reports_a_failure_too_and_check_names_the_problem_once() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("sender.toml");
    let out = sender(&["run", "--json", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert_eq!(v["command"], "run");
    assert_eq!(v["ok"], false);
    assert_eq!(v["snapshot_id"], serde_json::Value::Null);
    assert_eq!(v["error"]["kind"], "config");
    assert_eq!(v["error"]["exit_code"], 2);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sender.toml"),
        "{v}"
    );
    let out = sender(&["check", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("FAIL configuration: "), "{text}");
    assert_eq!(text.matches("configuration:").count(), 1, "{text}");
}
