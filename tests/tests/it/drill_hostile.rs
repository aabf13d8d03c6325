//! The drill restores a hostile dump: whoever holds the production server puts functions
//! into the database that run `COPY … TO PROGRAM` when an index is built, a materialized
//! view is refreshed, a trigger fires or a default is evaluated, and that act only in a
//! sandbox (`listen_addresses = ''`). The real sender dumps it, the real
//! `backup-receiver drill` restores it: the planted code must not run, and the report must
//! name what could not be restored. An ordinary archive with trusted extensions restores
//! cleanly under the same walls.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use backup_tests::stack::{bin, noise, row_counts, Stack, BUCKET, DATABASE};
use serde_json::Value;

/// A directory anyone may write to, so planted code running as the sandbox's OS user
/// could leave its marker there.
fn marker_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("drill-marker-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

use backup_tests::stack::drill_scratch_dir as scratch_dir;

fn config_with(stack: &Stack, drill_section: &str) -> PathBuf {
    let base = std::fs::read_to_string(&stack.receiver.config).unwrap();
    let path = stack.dir.path().join("drill.toml");
    std::fs::write(&path, format!("{base}\n{drill_section}\n")).unwrap();
    path
}

fn drill(args: &[&str]) -> Output {
    Command::new(bin("backup-receiver"))
        .arg("drill")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run backup-receiver drill")
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_code_in_the_dump_does_not_run_and_the_report_names_it() {
    let stack = Stack::start().await.unwrap();
    let markers = marker_dir();
    let m = markers.path().display().to_string();
    let source = stack.pg.client(DATABASE).await.unwrap();
    // Acts only where it would hurt: in a sandbox without TCP, i.e. the drill's.
    source
        .batch_execute(&format!(
            r#"
            CREATE FUNCTION public.evil(tag text) RETURNS int LANGUAGE plpgsql VOLATILE AS $f$
            BEGIN
                IF current_setting('listen_addresses') = '' THEN
                    EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', 'touch {m}/marker-' || tag);
                END IF;
                RETURN 1;
            END $f$;
            -- Declared immutable so an index may use it; calls the volatile one.
            CREATE FUNCTION public.evil_immutable(tag text) RETURNS int LANGUAGE plpgsql
                IMMUTABLE AS $f$ BEGIN RETURN public.evil(tag); END $f$;
            CREATE FUNCTION public.evil_trigger() RETURNS trigger LANGUAGE plpgsql AS $f$
            BEGIN PERFORM public.evil('trigger'); RETURN NEW; END $f$;

            CREATE TABLE public.notizen (
                id int PRIMARY KEY,
                text text,
                stempel int DEFAULT public.evil('default')
            );
            INSERT INTO public.notizen (id, text) SELECT g, 'Notiz ' || g FROM generate_series(1, 40) g;
            CREATE INDEX notizen_evil ON public.notizen ((public.evil_immutable('index') + id));
            CREATE MATERIALIZED VIEW public.notizen_sicht AS SELECT public.evil('matview') AS x;
            CREATE TRIGGER notizen_trigger BEFORE INSERT OR UPDATE ON public.notizen
                FOR EACH ROW EXECUTE FUNCTION public.evil_trigger();
            "#
        ))
        .await
        .unwrap();
    // A table name a terminal would interpret.
    source
        .batch_execute("CREATE TABLE public.\"glocke\x07\x1b[2J\" (id int)")
        .await
        .unwrap();
    // Nothing fired in the source (it listens on TCP).
    assert!(entries(markers.path()).is_empty());
    stack
        .s3
        .put(BUCKET, "briefe/1.pdf", noise(10_000, 1))
        .await
        .unwrap();
    let snapshot = stack.run_sender().summary()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();

    let scratch = scratch_dir();
    let config = config_with(
        &stack,
        &format!("[drill]\nscratch_dir = \"{}\"\n", scratch.path().display()),
    );
    let out = drill(&["--config", config.to_str().unwrap(), "--json", &snapshot]);
    let r = report(&out);

    // The planted code did not run: no marker, from any of the four places.
    assert!(
        entries(markers.path()).is_empty(),
        "planted code ran: {:?}\n{r:#}",
        entries(markers.path())
    );
    // The drill fails (exit code 7) and names, object by object, what did not restore.
    assert_eq!(out.status.code(), Some(7), "{r:#}");
    assert_eq!(r["passed"], false);
    let not_restored: Vec<(String, String)> = r["not_restored"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["object"].as_str().unwrap().to_string(),
                n["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let objects: Vec<&str> = not_restored.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(
        objects,
        ["INDEX notizen_evil", "MATERIALIZED VIEW DATA notizen_sicht"],
        "{r:#}"
    );
    for (object, error) in &not_restored {
        assert!(
            error.contains("pg_execute_server_program"),
            "{object}: {error}"
        );
    }
    let failures = r["failures"].to_string();
    assert!(
        failures.contains("INDEX notizen_evil not restored")
            && failures.contains("MATERIALIZED VIEW DATA notizen_sicht not restored"),
        "{failures}"
    );
    // The rest restored: the table with the trigger and the default has all its rows.
    let tables = r["tables"].as_array().unwrap();
    let notizen = tables
        .iter()
        .find(|t| t["table"] == "public.notizen")
        .unwrap();
    assert_eq!(notizen["actual"], 40);
    assert!(tables.iter().all(|t| t["ok"] == true), "{tables:?}");
    // The walls, as the report states them.
    let iso = &r["isolation"];
    assert!(
        iso["role"].as_str().unwrap().starts_with("drill_restore"),
        "{iso}"
    );
    assert_eq!(iso["os_user"], "postgres", "{iso}");
    assert!(
        iso["network"].as_str().unwrap().contains("namespace"),
        "{iso}"
    );
    assert_eq!(iso["warnings"].as_array().unwrap().len(), 0, "{iso}");
    assert_eq!(r["objects"]["restored"], 1);
    assert!(entries(scratch.path()).is_empty(), "sandbox left behind");

    // The text report says the same, with the terminal-controlling table name escaped.
    let out = drill(&["--config", config.to_str().unwrap(), &snapshot]);
    assert_eq!(out.status.code(), Some(7));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAILED")
            && text.contains("INDEX notizen_evil not restored")
            && text.contains("role drill_restore"),
        "{text}"
    );
    assert!(
        !text.contains('\x1b') && !text.contains('\x07'),
        "raw control characters in:\n{text}"
    );
    assert!(text.contains(r"public.glocke\x07\x1b[2J"), "{text}");
    assert!(entries(markers.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_with_trusted_extensions_restores_cleanly_as_the_unprivileged_role() {
    let stack = Stack::start().await.unwrap();
    let source = stack.pg.client(DATABASE).await.unwrap();
    source
        .batch_execute(
            r#"
            CREATE EXTENSION pgcrypto;
            CREATE EXTENSION citext;
            CREATE SEQUENCE public.aktenzeichen START 1000;
            CREATE TABLE public.orte (
                id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                name citext UNIQUE NOT NULL,
                aktenzeichen bigint DEFAULT nextval('public.aktenzeichen'),
                geaendert timestamptz
            );
            INSERT INTO public.orte (name) SELECT 'Ort ' || g FROM generate_series(1, 120) g;
            CREATE INDEX orte_lower ON public.orte (lower(name::text));
            CREATE FUNCTION public.pruefsumme(t text) RETURNS text LANGUAGE sql IMMUTABLE
                AS $$ SELECT encode(public.digest(t, 'sha256'), 'hex') $$;
            CREATE INDEX orte_pruefsumme ON public.orte (public.pruefsumme(name::text));
            CREATE FUNCTION public.stempel() RETURNS trigger LANGUAGE plpgsql AS $f$
            BEGIN NEW.geaendert := now(); RETURN NEW; END $f$;
            CREATE TRIGGER orte_stempel BEFORE UPDATE ON public.orte
                FOR EACH ROW EXECUTE FUNCTION public.stempel();
            CREATE VIEW public.orte_mit_summe AS SELECT name, public.pruefsumme(name::text) FROM public.orte;
            CREATE MATERIALIZED VIEW public.orte_anzahl AS SELECT count(*) AS n FROM public.orte;
            "#,
        )
        .await
        .unwrap();
    let source_counts = row_counts(&stack.pg, DATABASE).await.unwrap();
    stack
        .s3
        .put(BUCKET, "fotos/1.jpg", noise(50_000, 2))
        .await
        .unwrap();
    stack.run_sender().summary();

    let scratch = scratch_dir();
    let config = config_with(
        &stack,
        &format!(
            "[drill]\nscratch_dir = \"{}\"\nsanity_queries = [\
             {{ name = \"citext compares case-blind\", sql = \"SELECT count(*) = 1 FROM orte WHERE name = 'ORT 7'\" }},\
             {{ name = \"pgcrypto works\", sql = \"SELECT bool_and(length(pruefsumme) = 64) FROM orte_mit_summe\" }},\
             {{ name = \"matview populated\", sql = \"SELECT n = 120 FROM orte_anzahl\" }}]\n",
            scratch.path().display()
        ),
    );
    let out = drill(&["--config", config.to_str().unwrap(), "--json"]);
    let r = report(&out);
    assert!(
        out.status.success(),
        "{r:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r["passed"], true);
    assert_eq!(r["not_restored"].as_array().unwrap().len(), 0, "{r:#}");
    let restored: std::collections::BTreeMap<String, u64> = r["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap().to_string(),
                t["actual"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(restored, source_counts);
    assert!(r["sanity_queries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|q| q["ok"] == true));
    assert!(r["isolation"]["role"]
        .as_str()
        .unwrap()
        .starts_with("drill_restore"));
    assert!(entries(scratch.path()).is_empty(), "sandbox left behind");

    // As the systemd unit runs it: root without CAP_SYS_ADMIN, so the sandbox gets its
    // network namespace inside a user namespace of its own instead.
    let out = Command::new("setpriv")
        .args(["--bounding-set=-sys_admin", "--"])
        .arg(bin("backup-receiver"))
        .args(["drill", "--config", config.to_str().unwrap(), "--json"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run setpriv");
    let r = report(&out);
    assert!(out.status.success(), "{r:#}");
    assert_eq!(
        r["isolation"]["network"],
        "none (a user and network namespace of its own)"
    );
    assert_eq!(r["isolation"]["os_user"], "postgres");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_user_that_could_read_the_repository_is_refused() {
    let stack = Stack::start().await.unwrap();
    stack.run_sender().summary();
    // The repository made world-readable (as it was before modes were fixed).
    for (p, mode) in [
        (stack.dir.path().to_path_buf(), 0o755),
        (stack.repo().to_path_buf(), 0o755),
        (stack.repo().join("repository.json"), 0o444),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let scratch = scratch_dir();
    let config = config_with(
        &stack,
        &format!("[drill]\nscratch_dir = \"{}\"\n", scratch.path().display()),
    );
    let out = drill(&["--config", config.to_str().unwrap(), "--json"]);
    let r = report(&out);
    assert_eq!(out.status.code(), Some(7), "{r:#}");
    let failures = r["failures"].to_string();
    assert!(
        failures.contains("the sandbox user postgres can read")
            && failures.contains("repository.json"),
        "{failures}"
    );
    // No sandbox was started.
    assert_eq!(r["sandbox"], "none started");
    assert!(r["tables"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_root_the_drill_still_walls_in_the_dump_and_warns_about_the_user() {
    let stack = Stack::start().await.unwrap();
    stack.run_sender().summary();
    // A copy of the repository owned by `postgres`, drilled as `postgres` (as the
    // container, or a cron line without root, would run it).
    let copy = tempfile::Builder::new()
        .prefix("drill-repo-")
        .tempdir_in("/tmp")
        .unwrap();
    let repo = copy.path().join("repo");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(stack.repo())
        .arg(&repo)
        .status()
        .unwrap();
    assert!(cp.success());
    let chown = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(copy.path())
        .status()
        .unwrap();
    assert!(chown.success());
    let out = Command::new("setpriv")
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "--",
        ])
        .arg(bin("backup-receiver"))
        .args(["drill", "--json", "--repo"])
        .arg(&repo)
        .env("RUST_LOG", "warn")
        .env("TMPDIR", copy.path())
        .env("USER", "postgres")
        .output()
        .expect("run setpriv");
    let r = report(&out);
    assert!(out.status.success(), "{r:#}");
    let iso = &r["isolation"];
    assert!(
        iso["role"].as_str().unwrap().starts_with("drill_restore"),
        "{iso}"
    );
    assert_eq!(
        iso["network"], "none (a user and network namespace of its own)",
        "{iso}"
    );
    let warnings = iso["warnings"].to_string();
    assert!(
        warnings.contains("runs as the drill's own OS user (postgres)"),
        "{warnings}"
    );
}
