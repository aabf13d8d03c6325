use super::*;
use crate::cli::exit::ALL;
use clap::CommandFactory;

/// Every leaf command with its path (`certs init`).
fn leaves(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
    let subs: Vec<&clap::Command> = cmd
        .get_subcommands()
        .filter(|s| s.get_name() != "help")
        .collect();
    if subs.is_empty() {
        out.push((path.clone(), cmd.clone()));
    }
    for s in subs {
        let p = if path.is_empty() {
            s.get_name().to_string()
        } else {
            format!("{path} {}", s.get_name())
        };
        leaves(s, p, out);
    }
}

fn all_leaves() -> Vec<(String, clap::Command)> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = Vec::new();
    leaves(&cmd, String::new(), &mut out);
    out
}

#[test]
fn every_option_has_a_description_and_every_command_examples() {
    let leaves = all_leaves();
    assert!(leaves.len() >= 17, "{}", leaves.len());
    for (path, cmd) in &leaves {
        assert!(cmd.get_about().is_some(), "{path}: no description");
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(!help.trim().is_empty(), "{path}: --{id} has no description");
        }
        let after = cmd
            .get_after_help()
            .map(|h| h.to_string())
            .unwrap_or_default();
        assert!(
            after.contains("Examples:\n  backup-receiver "),
            "{path}: no example\n{after}"
        );
        assert!(
            after.contains(&format!("backup-receiver {path}")),
            "{path}: the example does not run it\n{after}"
        );
    }
}

#[test]
fn each_commands_exit_codes_are_rows_of_the_one_table() {
    let table = crate::cli::exit::table_help();
    for (path, cmd) in all_leaves() {
        let after = cmd.get_after_help().unwrap().to_string();
        let codes = after
            .split_once("\nExit codes:")
            .unwrap_or_else(|| panic!("{path}: no exit codes"))
            .1;
        let mut listed = Vec::new();
        for row in codes.split('\n').filter(|l| !l.is_empty()) {
            // A row and its continuation lines are the table's, word for word.
            if let Some(code) = row
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u8>().ok())
            {
                if !row.starts_with("     ") {
                    listed.push(code);
                }
            }
            assert!(table.contains(row), "{path}: {row:?} is not in the table");
        }
        assert!(
            listed.contains(&0) && listed.contains(&1),
            "{path}: {listed:?}"
        );
        assert!(
            listed.iter().all(|c| ALL.iter().any(|e| e.code() == *c)),
            "{path}: {listed:?}"
        );
        // Prose that names an exit code names one the command lists.
        let mut prose = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
        prose.push_str(
            &cmd.get_long_about()
                .map(|a| a.to_string())
                .unwrap_or_default(),
        );
        for arg in cmd.get_arguments() {
            prose.push_str(&arg.get_help().map(|h| h.to_string()).unwrap_or_default());
        }
        for (i, _) in prose.match_indices("exit") {
            let rest = &prose[i..];
            let n: String = rest
                .trim_start_matches("exit code")
                .trim_start_matches("exit")
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(n) = n.parse::<u8>() {
                assert!(
                    listed.contains(&n),
                    "{path}: its help says exit {n}: {prose}"
                );
            }
        }
    }
}

#[test]
fn json_is_offered_by_every_reporting_command() {
    for (path, cmd) in all_leaves() {
        let has = cmd.get_arguments().any(|a| a.get_id() == "json");
        let reports = !matches!(
            path.as_str(),
            "serve" | "dump" | "certs init" | "certs issue-sender" | "certs fingerprint"
        );
        assert_eq!(has, reports, "{path}");
        if has {
            let argv: Vec<&str> = std::iter::once("backup-receiver")
                .chain(path.split(' '))
                .chain(["--json", "--repo", "r"])
                .chain(match path.as_str() {
                    "undelete" | "ack" | "reject" | "restore" => vec!["s1"],
                    "ls" | "diff" => vec!["latest"],
                    "find" => vec!["x"],
                    _ => vec![],
                })
                .chain(if path == "restore" {
                    vec!["--dump-out", "d"]
                } else {
                    vec![]
                })
                .collect();
            let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            assert_eq!(cli.json_command(), Some(path.as_str()), "{argv:?}");
        }
    }
}
