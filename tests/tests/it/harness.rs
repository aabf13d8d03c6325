//! Checks the test harness itself: PostgreSQL clusters, the S3 server and the
//! networking helpers behave like the real services the system talks to.

use std::time::{Duration, Instant};

use backup_tests::net::{free_port, loopback, wait_for_tcp};
use backup_tests::pg::{self, PgCluster, PgOptions, PgVersion, SUPERUSER, SUPERUSER_PASSWORD};
use backup_tests::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use futures::{StreamExt, TryStreamExt};

const MIB: usize = 1024 * 1024;

/// Deterministic pseudo-random bytes (xorshift64*), distinct per `seed`.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Every server version the harness runs starts, answers with its own version, archives
/// WAL through `basic_archive`, and its own `pg_dump` writes a custom-format archive.
#[tokio::test]
async fn every_pg_version_starts_archives_wal_and_dumps() -> anyhow::Result<()> {
    for version in PgVersion::ALL {
        let spool = tempfile::Builder::new()
            .prefix("wal-spool-")
            .tempdir_in("/tmp")?;
        std::fs::set_permissions(
            spool.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )?;
        let cluster = PgCluster::start_with_options(PgOptions {
            version,
            settings: vec![
                ("archive_mode".into(), "on".into()),
                ("archive_library".into(), "basic_archive".into()),
                (
                    "basic_archive.archive_directory".into(),
                    spool.path().display().to_string(),
                ),
            ],
        })
        .await?;
        assert_eq!(cluster.version(), version);
        let db = cluster.client("postgres").await?;
        let num: String = db.query_one("SHOW server_version_num", &[]).await?.get(0);
        assert_eq!(num[..2].parse::<u32>()?, version.major(), "{version:?}");
        let segment: String = db
            .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
            .await?
            .get(0);
        let archived = spool.path().join(&segment);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !archived.is_file() {
            assert!(
                Instant::now() < deadline,
                "{version:?}: {segment} not archived"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(std::fs::metadata(&archived)?.len(), 16 * MIB as u64);
        let out = std::process::Command::new(cluster.tool("pg_dump"))
            .args(["-Fc", &cluster.url("postgres")])
            .output()?;
        assert!(
            out.status.success(),
            "{version:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(&out.stdout[..5], b"PGDMP", "{version:?}");
    }
    Ok(())
}

#[tokio::test]
async fn pg_cluster_creates_db_and_counts_rows() -> anyhow::Result<()> {
    let cluster = PgCluster::start().await?;
    assert!(
        pg::tool("pg_dump").is_file(),
        "pg_dump in {}",
        pg::bin_dir().display()
    );
    assert_eq!(
        cluster.url("x"),
        format!("postgres://postgres@127.0.0.1:{}/x", cluster.port())
    );

    cluster.create_db("harness_db").await?;
    let db = cluster.client("harness_db").await?;
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)")
        .await?;
    let insert = db
        .prepare("INSERT INTO items (id, name) VALUES ($1, $2)")
        .await?;
    for id in 0..250i32 {
        db.execute(&insert, &[&id, &format!("item-{id}")]).await?;
    }
    db.execute(
        "INSERT INTO items SELECT g, 'bulk-' || g FROM generate_series(1000, 1749) g",
        &[],
    )
    .await?;

    let count: i64 = db
        .query_one("SELECT count(*) FROM items", &[])
        .await?
        .get(0);
    assert_eq!(count, 1000);
    let name: String = db
        .query_one("SELECT name FROM items WHERE id = 1700", &[])
        .await?
        .get(0);
    assert_eq!(name, "bulk-1700");
    let dbname: String = db.query_one("SELECT current_database()", &[]).await?.get(0);
    assert_eq!(dbname, "harness_db");
    let version: i32 = db
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    assert_eq!(version / 10000, 15);
    Ok(())
}

#[tokio::test]
async fn pg_password_auth_rejects_wrong_passwords() -> anyhow::Result<()> {
    let cluster = PgCluster::start_with_password_auth().await?;
    assert_eq!(
        cluster.superuser_password().as_deref(),
        Some(SUPERUSER_PASSWORD)
    );
    let port = cluster.port();
    let connect = |url: String| async move {
        tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .map(|_| ())
    };

    connect(cluster.url("postgres")).await?;
    let no_password = format!("postgres://{SUPERUSER}@127.0.0.1:{port}/postgres");
    assert!(
        connect(no_password).await.is_err(),
        "no password must be rejected"
    );
    assert!(connect(cluster.url_as(SUPERUSER, "wrong", "postgres"))
        .await
        .is_err());

    cluster.set_password("alice", "s3cret p@ss'word").await?;
    connect(cluster.url_as("alice", "s3cret p@ss'word", "postgres")).await?;
    assert!(connect(cluster.url_as("alice", "nope", "postgres"))
        .await
        .is_err());
    cluster.set_password("alice", "second").await?;
    assert!(
        connect(cluster.url_as("alice", "s3cret p@ss'word", "postgres"))
            .await
            .is_err()
    );
    connect(cluster.url_as("alice", "second", "postgres")).await?;

    // Changing the superuser's password keeps the harness's own URL working.
    cluster.set_password(SUPERUSER, "new-super").await?;
    assert_eq!(cluster.superuser_password().as_deref(), Some("new-super"));
    let n: i32 = cluster
        .client("postgres")
        .await?
        .query_one("SELECT 1", &[])
        .await?
        .get(0);
    assert_eq!(n, 1);
    Ok(())
}

#[tokio::test]
async fn pg_stop_restart_and_drop() -> anyhow::Result<()> {
    let mut cluster = PgCluster::start().await?;
    cluster.create_db("keep").await?;
    cluster
        .client("keep")
        .await?
        .batch_execute("CREATE TABLE t AS SELECT 42 AS v")
        .await?;
    let port = cluster.port();
    let data_dir = cluster.data_dir();

    let started = Instant::now();
    cluster.stop();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        started.elapsed()
    );
    assert!(!cluster.is_running());
    assert!(
        cluster.client("keep").await.is_err(),
        "server must be down after stop"
    );

    cluster.restart().await?;
    assert_eq!(cluster.port(), port);
    let v: i32 = cluster
        .client("keep")
        .await?
        .query_one("SELECT v FROM t", &[])
        .await?
        .get(0);
    assert_eq!(v, 42);

    drop(cluster);
    assert!(!data_dir.exists(), "data directory must be removed on drop");
    assert!(
        tokio::net::TcpStream::connect(loopback(port))
            .await
            .is_err(),
        "port must be closed"
    );
    Ok(())
}

#[tokio::test]
async fn s3_put_get_list_delete() -> anyhow::Result<()> {
    let s3 = S3Server::start().await?;
    assert_eq!(s3.endpoint(), format!("http://127.0.0.1:{}", s3.port()));
    s3.create_bucket("harness-bucket").await?;

    let small = b"hello, backup".to_vec();
    let big = pseudo_random(20 * MIB, 1);
    let nested = pseudo_random(4097, 2);

    let small_etag = s3.put("harness-bucket", "small.txt", small.clone()).await?;
    // MD5 of "hello, backup", as real S3 reports for single-part uploads.
    assert_eq!(small_etag, "\"4e2db10603b689b83f38033dc809b42a\"");
    let big_etag = s3
        .put("harness-bucket", "data/big.bin", big.clone())
        .await?;
    let nested_etag = s3
        .put("harness-bucket", "a/b/c/nested.bin", nested.clone())
        .await?;
    s3.put("harness-bucket", "a/b/empty", Vec::new()).await?;

    assert_eq!(s3.get("harness-bucket", "small.txt").await?, small);
    assert_eq!(s3.get("harness-bucket", "a/b/c/nested.bin").await?, nested);
    assert_eq!(
        s3.get("harness-bucket", "a/b/empty").await?,
        Vec::<u8>::new()
    );
    let big_back = s3.get("harness-bucket", "data/big.bin").await?;
    assert!(
        big_back == big,
        "20 MiB object differs after round trip ({} bytes back)",
        big_back.len()
    );

    let listed = s3.list("harness-bucket").await?;
    assert_eq!(
        listed,
        vec![
            ("a/b/c/nested.bin".to_owned(), 4097, nested_etag.clone()),
            (
                "a/b/empty".to_owned(),
                0,
                "\"d41d8cd98f00b204e9800998ecf8427e\"".to_owned()
            ),
            (
                "data/big.bin".to_owned(),
                (20 * MIB) as u64,
                big_etag.clone()
            ),
            (
                "small.txt".to_owned(),
                small.len() as u64,
                small_etag.clone()
            ),
        ]
    );
    assert!(s3
        .root_dir()
        .join("harness-bucket/a/b/c/nested.bin")
        .is_file());

    s3.delete("harness-bucket", "data/big.bin").await?;
    s3.delete("harness-bucket", "a/b/c/nested.bin").await?;
    s3.delete("harness-bucket", "does/not/exist").await?;
    let keys: Vec<String> = s3
        .list("harness-bucket")
        .await?
        .into_iter()
        .map(|(k, ..)| k)
        .collect();
    assert_eq!(keys, ["a/b/empty", "small.txt"]);
    assert!(s3.get("harness-bucket", "data/big.bin").await.is_err());
    Ok(())
}

#[tokio::test]
async fn s3_multipart_upload_and_pagination() -> anyhow::Result<()> {
    let s3 = S3Server::start().await?;
    s3.create_bucket("multi").await?;

    let data = pseudo_random(20 * MIB + 123, 3);
    let etag = s3
        .put_multipart("multi", "dumps/2024/db.dump", &data, 5 * MIB)
        .await?;
    assert!(
        etag.starts_with('"') && etag.ends_with("-5\""),
        "multipart ETag {etag}"
    );
    assert!(
        s3.get("multi", "dumps/2024/db.dump").await? == data,
        "multipart object differs"
    );
    assert_eq!(
        s3.list("multi").await?,
        vec![("dumps/2024/db.dump".to_owned(), data.len() as u64, etag)]
    );
    s3.delete("multi", "dumps/2024/db.dump").await?;
    assert!(s3.list("multi").await?.is_empty());

    // More keys than one ListObjectsV2 page (1000) holds.
    let keys: Vec<String> = (0..1010)
        .map(|i| format!("chunks/{:02x}/{i:05}", i % 7))
        .collect();
    futures::stream::iter(&keys)
        .map(|key| s3.put("multi", key, key.clone().into_bytes()))
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let listed = s3.list("multi").await?;
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(
        listed.iter().map(|(k, ..)| k.clone()).collect::<Vec<_>>(),
        expected
    );
    assert!(listed
        .iter()
        .all(|(k, size, etag)| *size == k.len() as u64 && etag.len() == 34));
    Ok(())
}

#[tokio::test]
async fn s3_rejects_wrong_credentials() -> anyhow::Result<()> {
    let s3 = S3Server::start().await?;
    s3.create_bucket("guarded").await?;
    s3.put("guarded", "k", b"v".to_vec()).await?;

    for (ak, sk) in [(ACCESS_KEY, "wrong-secret"), ("unknown-access", SECRET_KEY)] {
        let client = s3.client_with_credentials(ak, sk);
        let err = client.get_object().bucket("guarded").key("k").send().await;
        let err = err.expect_err("wrong credentials must be rejected");
        let status = err.raw_response().map(|r| r.status().as_u16());
        assert_eq!(status, Some(403), "{ak}/{sk}: {err:?}");
        assert!(client.list_buckets().send().await.is_err());
    }
    let buckets = s3.client().list_buckets().send().await?;
    let names: Vec<_> = buckets.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["guarded"]);
    Ok(())
}

#[tokio::test]
async fn net_helpers_and_s3_shutdown() -> anyhow::Result<()> {
    let a = free_port();
    let b = free_port();
    assert!(a > 0 && b > 0);

    // Port 1 (tcpmux): nothing here listens on it. A "free" port could be taken by a
    // test running in parallel between the check and the connect.
    let closed = loopback(1);
    let started = Instant::now();
    assert!(wait_for_tcp(closed, Duration::from_millis(200))
        .await
        .is_err());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
        "{waited:?}"
    );

    let s3 = S3Server::start().await?;
    let addr = loopback(s3.port());
    wait_for_tcp(addr, Duration::from_secs(5)).await?;
    let endpoint = s3.endpoint();
    wait_for_tcp(
        endpoint.trim_start_matches("http://"),
        Duration::from_secs(5),
    )
    .await?;
    drop(s3);
    tokio::task::yield_now().await;
    assert!(
        wait_for_tcp(addr, Duration::from_millis(500))
            .await
            .is_err(),
        "listener must close on drop"
    );
    Ok(())
}
