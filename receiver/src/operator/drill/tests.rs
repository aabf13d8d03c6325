use super::*;

#[test]
fn login_is_replaced_in_urls() {
    assert_eq!(
        with_login(
            "postgres://admin:pw@h:5433/postgres?sslmode=disable",
            "r",
            Some("p w"),
            "d"
        ),
        "postgres://r:p%20w@h:5433/d?sslmode=disable"
    );
    assert_eq!(
        with_login("postgres://h", "r", None, "d"),
        "postgres://r@h/d"
    );
}

#[test]
fn pg_restore_errors_are_named_by_object() {
    let stderr = "pg_restore: connecting to database for restore
pg_restore: creating INDEX \"public.t_evil\"
pg_restore: while PROCESSING TOC:
pg_restore: from TOC entry 3335; 1259 16883 INDEX t_evil postgres
pg_restore: error: could not execute query: ERROR:  must be superuser or have privileges of the pg_execute_server_program role to COPY to or from an external program
HINT:  Anyone can COPY to stdout or from stdin.
Command was: CREATE INDEX t_evil ON public.t USING btree (((public.evil_i('index'::text) + id)));
pg_restore: from TOC entry 3484; 0 16884 MATERIALIZED VIEW DATA mv postgres
pg_restore: error: could not execute query: ERROR:  permission denied
pg_restore: error: could not open input file: x
pg_restore: warning: errors ignored on restore: 2
";
    let log = parse_pg_restore_stderr(stderr.as_bytes());
    assert_eq!(
        log.not_restored,
        [
            NotRestored {
                object: "INDEX t_evil".into(),
                error: "must be superuser or have privileges of the pg_execute_server_program role to COPY to or from an external program".into()
            },
            NotRestored {
                object: "MATERIALIZED VIEW DATA mv".into(),
                error: "permission denied".into()
            }
        ]
    );
    assert_eq!(log.other_errors, ["could not open input file: x"]);
    assert_eq!(log.ignored, Some(2));
    let long = format!("pg_restore: error: {}\n", "x".repeat(100_000));
    let log = parse_pg_restore_stderr(long.as_bytes());
    assert!(log.other_errors[0].len() <= MAX_ERROR_CHARS);
}

#[test]
fn database_is_replaced_in_urls() {
    assert_eq!(
        with_database("postgres://u:p@h:5433/postgres?sslmode=disable", "d"),
        "postgres://u:p@h:5433/d?sslmode=disable"
    );
    assert_eq!(with_database("postgresql://h", "d"), "postgresql://h/d");
}

#[test]
fn durations_read_plainly() {
    assert_eq!(short_duration(90 * 86_400), "90d");
    assert_eq!(short_duration(45 * 86_400 + 3600 + 5), "45d 1h 5s");
    assert_eq!(short_duration(0), "0s");
}

#[test]
fn counts_compare_exactly_both_ways() {
    let e: BTreeMap<String, u64> = [("public.a".into(), 3), ("public.b".into(), 1)].into();
    let a: BTreeMap<String, u64> = [("public.a".into(), 3), ("public.c".into(), 0)].into();
    let c = compare_counts(&e, &a);
    let ok: Vec<(&str, bool)> = c.iter().map(|t| (t.table.as_str(), t.ok)).collect();
    assert_eq!(
        ok,
        [("public.a", true), ("public.b", false), ("public.c", false)]
    );
    assert!(describe_mismatch(&c[1]).contains("public.b"));
}

#[test]
fn a_drill_that_started_no_sandbox_says_so_without_empty_fields() {
    use chrono::TimeZone;
    let report = Report {
        snapshot: "20260105T013000Z".into(),
        source_host: "vps".into(),
        time: Utc.with_ymd_and_hms(2026, 1, 5, 1, 30, 0).unwrap(),
        zone: chrono_tz::Europe::Berlin,
        age_seconds: 60,
        age: "1m".into(),
        passed: false,
        suspect: None,
        sandbox: "none started".into(),
        isolation: Isolation::default(),
        dump_bytes: 0,
        not_restored: vec![],
        tables: vec![],
        sanity_queries: vec![],
        objects: ObjectsResult::default(),
        steps: vec![],
        failures: vec!["snapshot 20260105T013000Z has no database dump".into()],
        seconds: 0.1,
    };
    let text = report.text();
    assert!(
        text.starts_with("restore drill FAILED: snapshot 20260105T013000Z (2026-01-05 02:30:00 +01:00, 1m old) from vps\n"),
        "{text}"
    );
    assert!(
        text.contains("restored as: nothing was restored into a database\n"),
        "{text}"
    );
    assert!(!text.contains("role ,"), "{text}");
    let partial = Report {
        isolation: Isolation {
            os_user: "backup-drill".into(),
            ..Isolation::default()
        },
        ..report
    };
    assert!(
        partial
            .text()
            .contains("restored as: role (none), OS user backup-drill, network: (none)\n"),
        "{}",
        partial.text()
    );
}
