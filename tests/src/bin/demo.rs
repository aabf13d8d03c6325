//! A complete local demo of the nightly job: a sample `archiv` database and `familienarchiv`
//! bucket, the receiver over mutual TLS, two nightly runs with changes in between, the
//! snapshot list, and a verified restore. Run it with `scripts/demo`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use backup_tests::checks::read_tree;
use backup_tests::pg::tool;
use backup_tests::stack::{bin, noise, row_counts, Stack, BUCKET, DATABASE};

fn step(text: &str) {
    println!("\n==> {text}");
}

fn receiver(args: &[&str]) -> Result<String> {
    let out = Command::new(bin("backup-receiver"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()?;
    ensure!(
        out.status.success(),
        "backup-receiver {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn night(stack: &Stack, n: u32) -> Result<serde_json::Value> {
    step(&format!(
        "Night {n}: backup-sender run --config {}",
        stack.sender_config.display()
    ));
    let run = stack.run_sender();
    ensure!(
        run.output.status.success(),
        "sender failed: {}",
        run.stderr()
    );
    let s = run.summary();
    println!(
        "    snapshot {} — dump {} bytes; objects {} total ({} new, {} changed, {} gone); {} chunk bytes sent",
        s["snapshot_id"].as_str().unwrap_or("?"),
        s["dump_bytes"],
        s["objects_total"],
        s["objects_new"],
        s["objects_changed"],
        s["objects_gone"],
        s["bytes_sent"]
    );
    Ok(s)
}

/// Records an object in the expected bucket contents and returns it for upload.
fn put(bucket: &mut BTreeMap<String, Vec<u8>>, key: &str, data: Vec<u8>) -> (String, Vec<u8>) {
    bucket.insert(key.to_string(), data.clone());
    (key.to_string(), data)
}

#[tokio::main]
async fn main() -> Result<()> {
    backup_common::tls::install_crypto_provider();
    let out_dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "demo-work".into()),
    );
    if out_dir.exists() {
        std::fs::remove_dir_all(&out_dir)
            .with_context(|| format!("clearing {}", out_dir.display()))?;
    }

    step("Starting PostgreSQL (database `archiv`), an S3 server (bucket `familienarchiv`), certificates and the receiver (mutual TLS)");
    let stack = Stack::start().await?;
    println!(
        "    receiver on {} with repository {}",
        stack.receiver.url(),
        stack.repo().display()
    );

    let mut bucket = BTreeMap::new();
    let mut initial = vec![
        put(
            &mut bucket,
            "briefe/1923/grete-an-otto.pdf",
            noise(800_000, 1),
        ),
        put(&mut bucket, "fotos/1951/hochzeit.jpg", noise(4_000_000, 2)),
        put(
            &mut bucket,
            "metadaten/verzeichnis.json",
            b"{\"titel\": \"Familienarchiv\", \"stand\": 1}\n".repeat(4000),
        ),
    ];
    for i in 0..30 {
        initial.push(put(
            &mut bucket,
            &format!("scans/album-{:02}/seite-{:03}.png", i / 10, i),
            noise(120_000 + i * 7_000, 10 + i as u64),
        ));
    }
    for (k, v) in initial {
        stack.s3.put(BUCKET, &k, v).await?;
    }
    println!(
        "    bucket holds {} objects; database holds {:?}",
        bucket.len(),
        row_counts(&stack.pg, DATABASE).await?
    );

    night(&stack, 1)?;

    step("During the day: two scans added, one photo re-scanned, one letter deleted, rows edited");
    for (k, v) in [
        put(&mut bucket, "scans/neu/seite-900.png", noise(300_000, 900)),
        put(&mut bucket, "scans/neu/seite-901.png", noise(310_000, 901)),
        put(&mut bucket, "fotos/1951/hochzeit.jpg", noise(4_000_000, 3)),
    ] {
        stack.s3.put(BUCKET, &k, v).await?;
    }
    stack
        .s3
        .delete(BUCKET, "briefe/1923/grete-an-otto.pdf")
        .await?;
    bucket.remove("briefe/1923/grete-an-otto.pdf");
    let c = stack.pg.client(DATABASE).await?;
    c.batch_execute("UPDATE dokumente SET titel = titel || ' (korrigiert)' WHERE id % 50 = 0; INSERT INTO personen (name) VALUES ('Enkelin Mia');").await?;
    let rows_night2 = row_counts(&stack.pg, DATABASE).await?;

    night(&stack, 2)?;

    step("backup-receiver snapshots --repo …");
    print!(
        "{}",
        receiver(&["snapshots", "--repo", stack.repo().to_str().unwrap()])?
    );

    step(&format!(
        "backup-receiver restore latest → {}",
        out_dir.display()
    ));
    let objects_out = out_dir.join("objects");
    let dump_out = out_dir.join("archiv.dump");
    receiver(&[
        "restore",
        "latest",
        "--repo",
        stack.repo().to_str().unwrap(),
        "--dump-out",
        dump_out.to_str().unwrap(),
        "--objects-out",
        objects_out.to_str().unwrap(),
    ])?;
    let restored = read_tree(&objects_out);
    ensure!(
        restored == bucket,
        "restored objects differ from the bucket"
    );
    println!(
        "    {} objects restored, every byte identical to the bucket",
        restored.len()
    );

    stack.pg.create_db("archiv_restored").await?;
    receiver(&[
        "restore",
        "latest",
        "--repo",
        stack.repo().to_str().unwrap(),
        "--pg-restore",
        &stack.pg.url("archiv_restored"),
        "--pg-restore-bin",
        tool("pg_restore").to_str().unwrap(),
        "--pg-restore-args=--no-owner",
    ])?;
    let restored_rows = row_counts(&stack.pg, "archiv_restored").await?;
    ensure!(
        restored_rows == rows_night2,
        "row counts differ: {restored_rows:?} vs {rows_night2:?}"
    );
    println!(
        "    pg_restore into `archiv_restored`: row counts equal the source: {restored_rows:?}"
    );

    step("Demo complete");
    println!("    restored files are in {}", out_dir.display());
    Ok(())
}
