//! The drill's database half: the sandbox server (throwaway cluster or a fresh database on
//! a configured server), the restore as the unprivileged role, counts and sanity queries.

use super::*;

pub(super) async fn database_steps(
    repo: &Repository,
    manifest: &Manifest,
    opts: &DrillOptions,
    scratch: &Path,
    steps: &mut Steps,
    report: &mut Report,
) {
    let config = &opts.config;
    let dump = manifest.dump.as_ref().expect("caller checked");
    let bin_dir = sandbox_pg::bin_dir(config.pg_bin_dir.as_deref());

    // 1. The sandbox: who runs it, then the server, the database and its role.
    let t = Instant::now();
    let user = config
        .sandbox_user
        .as_deref()
        .unwrap_or(sandbox_pg::DEFAULT_OS_USER);
    let runner = match Runner::new(&bin_dir, user, config.sandbox_database_url.is_none()) {
        Ok(r) => r,
        Err(e) => {
            steps.record("sandbox", t, Some(error_chain(&e)));
            return;
        }
    };
    if let Err(e) = check_isolation(
        &runner,
        &opts.repo,
        &opts.private_paths,
        &mut report.isolation,
    ) {
        steps.record("sandbox", t, Some(e));
        return;
    }
    {
        // A separate sandbox user may pass through the drill's directory to its own
        // cluster directory, but not list it or enter the restored objects (0700, ours).
        let mode = if runner.separate_user() { 0o711 } else { 0o700 };
        if let Err(e) = fs::set_permissions(scratch, fs::Permissions::from_mode(mode)) {
            steps.record(
                "sandbox",
                t,
                Some(format!("chmod {}: {e}", scratch.display())),
            );
            return;
        }
    }
    let sandbox = match &config.sandbox_database_url {
        None => start_throwaway(&bin_dir, scratch, &runner, &dump.database).await,
        Some(url) => create_on_server(url, &manifest.id).await,
    };
    let (sandbox, url) = match sandbox {
        Ok(s) => s,
        Err(e) => {
            steps.record("sandbox", t, Some(e));
            return;
        }
    };
    let role = match &sandbox {
        Sandbox::Throwaway(_) => RESTORE_ROLE.to_string(),
        Sandbox::Server { role, .. } => role.clone(),
    };
    report.isolation.role = format!(
        "{role} (not a superuser; none of {}; owns only the drill's database)",
        ESCAPE_ROLES.join(", ")
    );
    report.sandbox = match &sandbox {
        Sandbox::Throwaway(pg) => format!(
            "throwaway PostgreSQL cluster in {} (unix socket only)",
            pg.socket_dir().display()
        ),
        Sandbox::Server { database, .. } => {
            format!("database {database} on the configured sandbox server")
        }
    };
    steps.record("sandbox", t, None);

    // 2. pg_restore as the restore role, streaming the verified dump. It goes on past
    //    errors so that every object it cannot restore is named.
    let t = Instant::now();
    let mut cmd = match &sandbox {
        Sandbox::Throwaway(pg) => pg.command("pg_restore"),
        Sandbox::Server { password, .. } => {
            let mut cmd = runner.command(&bin_dir.join("pg_restore"), Path::new("/"));
            cmd.env("PGPASSWORD", password);
            cmd
        }
    };
    let dbname = match &sandbox {
        Sandbox::Throwaway(_) => url.clone(),
        Sandbox::Server {
            admin_url,
            database,
            role,
            ..
        } => with_login(admin_url, role, None, database),
    };
    cmd.args(["--verbose", "--no-owner", "--no-privileges"])
        .arg(format!("--dbname={dbname}"))
        .stdout(Stdio::null());
    let (repo2, m2) = (repo.clone(), manifest.clone());
    let restored = tokio::task::spawn_blocking(move || {
        restore::stream_dump(&repo2, &m2, cmd, parse_pg_restore_stderr)
            .map_err(|e| explain(&repo2, &e))
    })
    .await
    .unwrap_or_else(|e| Err(format!("pg_restore task panicked: {e}")));
    let restored_ok = restored.is_ok();
    match restored {
        Err(e) => steps.record("pg_restore", t, Some(e)),
        Ok((status, log)) => {
            for n in &log.not_restored {
                steps.failures.push(format!(
                    "pg_restore: {} not restored: {}",
                    n.object, n.error
                ));
            }
            if log.more > 0 {
                steps.failures.push(format!(
                    "pg_restore: … and {} more object(s) not restored",
                    log.more
                ));
            }
            for e in &log.other_errors {
                steps.failures.push(format!("pg_restore: {e}"));
            }
            let named = log.not_restored.len() as u64 + log.more + log.other_errors.len() as u64;
            if let Some(n) = log.ignored.filter(|&n| n > named) {
                steps.failures.push(format!(
                    "pg_restore: reported {n} error(s), of which {named} could be named"
                ));
            }
            let count = log.not_restored.len() as u64 + log.more;
            let err = if count > 0 {
                Some(format!(
                    "{count} object(s) of the dump did not restore as role {role}"
                ))
            } else if !log.other_errors.is_empty() {
                Some(format!("{} error(s)", log.other_errors.len()))
            } else if !status.success() {
                let e = format!("exited with {status}");
                steps.failures.push(format!("pg_restore: {e}"));
                Some(e)
            } else {
                None
            };
            report.not_restored = log.not_restored;
            steps.summarize("pg_restore", t, err);
        }
    }

    // 3. Row counts and sanity queries on what was restored, as the restore role.
    if restored_ok {
        let t = Instant::now();
        match connect(&url).await {
            Err(e) => steps.record("row_counts", t, Some(e)),
            Ok(client) => {
                match table_counts(&client).await {
                    Ok(actual) => {
                        report.tables = compare_counts(&dump.row_counts, &actual);
                        let bad: Vec<&TableCount> =
                            report.tables.iter().filter(|c| !c.ok).collect();
                        for c in &bad {
                            steps.failures.push(describe_mismatch(c));
                        }
                        let err = (!bad.is_empty())
                            .then(|| format!("{} table(s) do not match the manifest", bad.len()));
                        steps.summarize("row_counts", t, err);
                    }
                    Err(e) => steps.record("row_counts", t, Some(e)),
                }
                if !config.sanity_queries.is_empty() {
                    let t = Instant::now();
                    for q in &config.sanity_queries {
                        let r = sanity(&client, q).await;
                        if let Err(e) = &r {
                            steps
                                .failures
                                .push(format!("sanity query {:?}: {e}", q.name));
                        }
                        report.sanity_queries.push(SanityResult {
                            name: q.name.clone(),
                            ok: r.is_ok(),
                            error: r.err(),
                        });
                    }
                    let failed = report.sanity_queries.iter().filter(|q| !q.ok).count();
                    let err = (failed > 0).then(|| format!("{failed} sanity query(ies) failed"));
                    steps.summarize("sanity_queries", t, err);
                }
            }
        }
    }

    // 4. Remove the sandbox.
    let t = Instant::now();
    let err = match sandbox {
        Sandbox::Throwaway(mut pg) => {
            pg.stop();
            None
        }
        Sandbox::Server {
            admin_url,
            database,
            role,
            ..
        } => drop_database(&admin_url, &database, &role).await.err(),
    };
    steps.record("remove_sandbox", t, err);
}

pub(super) async fn start_throwaway(
    bin_dir: &Path,
    scratch: &Path,
    runner: &Runner,
    database: &str,
) -> Result<(Sandbox, String), String> {
    let pg = SandboxPg::start(bin_dir, scratch, runner)
        .await
        .map_err(|e| error_chain(&e))?;
    let client = connect(&pg.url("postgres")).await?;
    // Two statements: CREATE DATABASE cannot run inside the implicit transaction of one.
    client
        .batch_execute(&format!(
            "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS",
            quote_ident(RESTORE_ROLE)
        ))
        .await
        .map_err(|e| format!("creating role {RESTORE_ROLE}: {}", error_chain(&e)))?;
    client
        .batch_execute(&format!(
            "CREATE DATABASE {} OWNER {}",
            quote_ident(database),
            quote_ident(RESTORE_ROLE)
        ))
        .await
        .map_err(|e| format!("creating database {database:?}: {}", error_chain(&e)))?;
    check_role(&client, RESTORE_ROLE).await?;
    let url = pg.url_as(RESTORE_ROLE, database);
    Ok((Sandbox::Throwaway(pg), url))
}

/// `Err` unless `role` is an ordinary role that cannot leave PostgreSQL.
pub(super) async fn check_role(client: &tokio_postgres::Client, role: &str) -> Result<(), String> {
    let row = client
        .query_one(
            "SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, \
                    r.rolbypassrls, \
                    ARRAY(SELECT b.rolname::text FROM pg_roles b \
                          WHERE b.rolname = ANY($2) AND pg_has_role(r.oid, b.oid, 'MEMBER')) \
               FROM pg_roles r WHERE r.rolname = $1",
            &[&role, &ESCAPE_ROLES.to_vec()],
        )
        .await
        .map_err(|e| format!("checking role {role}: {}", error_chain(&e)))?;
    let mut bad: Vec<String> = [
        "SUPERUSER",
        "CREATEROLE",
        "CREATEDB",
        "REPLICATION",
        "BYPASSRLS",
    ]
    .iter()
    .enumerate()
    .filter(|(i, _)| row.get::<_, bool>(*i))
    .map(|(_, a)| a.to_string())
    .collect();
    bad.extend(row.get::<_, Vec<String>>(5));
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "refusing to restore as role {role}: it has {}",
            bad.join(", ")
        ))
    }
}

pub(super) async fn create_on_server(
    admin_url: &str,
    snapshot: &str,
) -> Result<(Sandbox, String), String> {
    let mut name: String = format!("drill_{snapshot}_{}", std::process::id())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    name.truncate(63);
    let password = hex::encode(rand::random::<[u8; 24]>());
    let client = connect(admin_url).await?;
    client
        .batch_execute(&format!(
            "CREATE ROLE {n} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
             NOBYPASSRLS PASSWORD '{password}'; GRANT {n} TO CURRENT_USER",
            n = quote_ident(&name)
        ))
        .await
        .map_err(|e| {
            format!(
                "creating role {name} on the sandbox server (the role needs CREATEROLE): {}",
                error_chain(&e)
            )
        })?;
    let created = async {
        client
            .batch_execute(&format!(
                "CREATE DATABASE {n} OWNER {n}",
                n = quote_ident(&name)
            ))
            .await
            .map_err(|e| {
                format!(
                    "creating database {name} on the sandbox server (the role needs CREATEDB): {}",
                    error_chain(&e)
                )
            })?;
        check_role(&client, &name).await
    }
    .await;
    let sandbox = Sandbox::Server {
        admin_url: admin_url.to_string(),
        database: name.clone(),
        role: name.clone(),
        password: password.clone(),
    };
    if let Err(e) = created {
        let _ = drop_database(admin_url, &name, &name).await;
        return Err(e);
    }
    let url = with_login(admin_url, &name, Some(&password), &name);
    Ok((sandbox, url))
}

pub(super) async fn drop_database(
    admin_url: &str,
    database: &str,
    role: &str,
) -> Result<(), String> {
    let client = connect(admin_url).await?;
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(database)
        ))
        .await
        .map_err(|e| format!("dropping database {database}: {}", error_chain(&e)))?;
    client
        .batch_execute(&format!("DROP ROLE IF EXISTS {}", quote_ident(role)))
        .await
        .map_err(|e| format!("dropping role {role}: {}", error_chain(&e)))
}

pub(super) async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connecting to the sandbox database: {}", error_chain(&e)))?;
    // Ends when the client is dropped or the server goes away.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Row count of every ordinary table, named `schema.table`, as the sender records them.
pub(super) async fn table_counts(
    client: &tokio_postgres::Client,
) -> Result<BTreeMap<String, u64>, String> {
    let tables = client
        .query(ROW_COUNT_TABLES_SQL, &[])
        .await
        .map_err(|e| format!("listing tables: {}", error_chain(&e)))?;
    let mut counts = BTreeMap::new();
    for t in tables {
        let quoted: String = t.get(0);
        let name: String = t.get(1);
        let row = client
            .query_one(&format!("SELECT count(*) FROM {quoted}"), &[])
            .await
            .map_err(|e| format!("counting rows of {name}: {}", error_chain(&e)))?;
        counts.insert(name, row.get::<_, i64>(0) as u64);
    }
    Ok(counts)
}

/// Every table of either side, with whether the counts agree exactly.
pub fn compare_counts(
    expected: &BTreeMap<String, u64>,
    actual: &BTreeMap<String, u64>,
) -> Vec<TableCount> {
    let names: std::collections::BTreeSet<&String> = expected.keys().chain(actual.keys()).collect();
    names
        .into_iter()
        .map(|name| {
            let (e, a) = (expected.get(name).copied(), actual.get(name).copied());
            TableCount {
                table: name.clone(),
                expected: e,
                actual: a,
                ok: e.is_some() && e == a,
            }
        })
        .collect()
}

pub(super) fn describe_mismatch(c: &TableCount) -> String {
    match (c.expected, c.actual) {
        (Some(e), Some(a)) => format!(
            "table {}: {a} rows restored, the manifest recorded {e}",
            c.table
        ),
        (Some(e), None) => format!(
            "table {}: not in the restored database (the manifest recorded {e} rows)",
            c.table
        ),
        (None, Some(a)) => format!(
            "table {}: restored with {a} rows but the manifest records no count for it",
            c.table
        ),
        (None, None) => format!("table {}: neither recorded nor restored", c.table),
    }
}

pub(super) async fn sanity(client: &tokio_postgres::Client, q: &SanityQuery) -> Result<(), String> {
    let rows = client
        .query(q.sql.as_str(), &[])
        .await
        .map_err(|e| error_chain(&e))?;
    let [row] = rows.as_slice() else {
        return Err(format!("returned {} rows, expected one", rows.len()));
    };
    if row.len() != 1 {
        return Err(format!("returned {} columns, expected one", row.len()));
    }
    match row.try_get::<_, Option<bool>>(0) {
        Ok(Some(true)) => Ok(()),
        Ok(Some(false)) => Err("returned false".into()),
        Ok(None) => Err("returned NULL".into()),
        Err(_) => Err(format!(
            "returned a {} instead of a boolean",
            row.columns()[0].type_()
        )),
    }
}

pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `url` (a postgres:// URL) with its database replaced by `db`, query parameters kept.
pub(super) fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.find('?') {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[after_scheme..]
        .find('/')
        .map(|i| after_scheme + i)
        .unwrap_or(base.len());
    format!("{}/{db}{query}", &base[..authority_end])
}

/// `url` (a postgres:// URL) logging in as `user` (with `password`) to database `db`.
pub(super) fn with_login(url: &str, user: &str, password: Option<&str>, db: &str) -> String {
    let url = with_database(url, db);
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = url[after_scheme..]
        .find('/')
        .map(|i| after_scheme + i)
        .unwrap_or(url.len());
    let host = match url[after_scheme..authority_end].rsplit_once('@') {
        Some((_, host)) => host,
        None => &url[after_scheme..authority_end],
    };
    let password = password
        .map(|p| format!(":{}", percent_encode(p)))
        .unwrap_or_default();
    format!(
        "{}{}{password}@{host}{}",
        &url[..after_scheme],
        percent_encode(user),
        &url[authority_end..]
    )
}

pub(super) fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
