//! End-to-end benchmark of the nightly pipeline against restic (docs/PERFORMANCE.md).
//!
//! Builds a deterministic fixture (an S3 bucket with a realistic size mix and a PostgreSQL
//! database with pgbench tables plus document metadata), runs night 1 with the real
//! `backup-sender` and `backup-receiver` binaries over mutual TLS on loopback, applies one
//! night of change, runs night 2, restores the latest snapshot, and does the same with
//! restic on the same bytes. Prints one table. `--memory-check` instead measures peak RSS
//! with one huge object and with very many small ones.
//!
//! Build and run (the sender/receiver binaries must be built with the same profile):
//! `cargo build --profile bench-opt --workspace --bins && target/bench-opt/bench --scale 2GiB`
//!
//! Numbers are only comparable between runs on the same machine at similar load; the load
//! average is printed with every phase.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use backup_tests::pg::tool;
use backup_tests::stack::{bin, Stack, BUCKET, DATABASE};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

#[derive(Parser, Debug)]
#[command(about = "Benchmark the nightly backup end to end (and restic as the reference)")]
struct Args {
    /// Bucket size of the fixture, e.g. 2GiB, 500MiB, 13GB.
    #[arg(long, default_value = "2GiB", value_parser = parse_size)]
    scale: u64,
    /// pgbench scale factor (default: 5 per GiB of --scale, at least 1).
    #[arg(long)]
    pgbench_scale: Option<u64>,
    /// Seed of the fixture generator; the same seed gives the same bytes.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Skip the restic reference runs.
    #[arg(long)]
    no_restic: bool,
    /// Instead of the nightly benchmark: peak RSS with one huge object, then many small ones.
    #[arg(long)]
    memory_check: bool,
    /// Size of the single object in --memory-check.
    #[arg(long, default_value = "4GiB", value_parser = parse_size)]
    big_object: u64,
    /// Number of small objects in --memory-check.
    #[arg(long, default_value_t = 100_000)]
    small_objects: u64,
    /// Sender `objects.concurrency` (objects downloaded and chunked at once); the sender's
    /// default when not given.
    #[arg(long)]
    objects_concurrency: Option<usize>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => MIB as f64,
        "gib" => GIB as f64,
        other => return Err(format!("unknown unit {other:?} in {s:?}")),
    };
    Ok((num * mult) as u64)
}

// ---------------------------------------------------------------------------------------
// Deterministic data

/// SplitMix64: decides keys, kinds and sizes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Log-uniform in [lo, hi].
    fn log_uniform(&mut self, lo: u64, hi: u64) -> u64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((lo as f64).ln() + u * ((hi as f64).ln() - (lo as f64).ln())).exp() as u64
    }
}

/// Incompressible bytes (xorshift64), `len` long, from `seed`; appended to `out`.
fn noise_into(out: &mut Vec<u8>, len: usize, seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let start = out.len();
    out.resize(start + len.div_ceil(8) * 8, 0);
    for w in out[start..].chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
    out.truncate(start + len);
}

const WORDS: &[&str] = &[
    "Liebe",
    "Familie",
    "Brief",
    "Grete",
    "Hans",
    "Hochzeit",
    "Taufe",
    "Großvater",
    "Oma",
    "Berlin",
    "Hamburg",
    "Königsberg",
    "Krieg",
    "Frieden",
    "Garten",
    "Schule",
    "Kirche",
    "Weihnachten",
    "Ostern",
    "Sommer",
    "Winter",
    "und",
    "der",
    "die",
    "das",
    "wir",
    "haben",
    "sind",
    "gestern",
    "heute",
    "morgen",
    "sehr",
    "herzlich",
    "Grüße",
    "Euer",
    "Eure",
    "mit",
    "von",
    "nach",
    "im",
    "Jahr",
    "Urkunde",
    "Geburt",
    "Foto",
    "Album",
    "Seite",
    "Notiz",
];

/// Text of roughly `len` bytes in the style of `kind` (compresses about 3–4×).
fn text_into(out: &mut Vec<u8>, len: usize, kind: Kind, rng: &mut Rng) {
    let start = out.len();
    match kind {
        Kind::Pdf => out.extend_from_slice(
            b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
        ),
        Kind::Json => out.extend_from_slice(b"{\"dokumente\": [\n"),
        _ => {}
    }
    let mut n = 0u64;
    while out.len() - start < len {
        match kind {
            Kind::Json => {
                n += 1;
                let _ = writeln!(
                    out,
                    "  {{\"id\": {}, \"titel\": \"{} {}\", \"jahr\": {}, \"seiten\": {}, \"schlagworte\": [\"{}\", \"{}\"]}},",
                    rng.below(1_000_000),
                    WORDS[rng.below(WORDS.len() as u64) as usize],
                    WORDS[rng.below(WORDS.len() as u64) as usize],
                    1880 + rng.below(140),
                    1 + rng.below(40),
                    WORDS[rng.below(WORDS.len() as u64) as usize],
                    WORDS[rng.below(WORDS.len() as u64) as usize],
                );
            }
            Kind::Pdf if n % 8 == 7 => {
                // An embedded image every few text streams: PDFs are partly incompressible.
                n += 1;
                out.extend_from_slice(b"stream\n");
                noise_into(out, 8 * 1024, rng.next());
                out.extend_from_slice(b"\nendstream\n");
            }
            _ => {
                n += 1;
                for _ in 0..12 {
                    out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
                    out.push(b' ');
                }
                out.extend_from_slice(b".\n");
            }
        }
    }
    out.truncate(start + len);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Scan,
    Text,
    Json,
    Pdf,
    Video,
}

/// One object of the fixture: its key and how to regenerate its bytes.
#[derive(Clone, Debug)]
struct Spec {
    key: String,
    kind: Kind,
    size: u64,
    seed: u64,
}

impl Spec {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size as usize + 8);
        match self.kind {
            Kind::Scan | Kind::Video => noise_into(&mut out, self.size as usize, self.seed),
            k => text_into(&mut out, self.size as usize, k, &mut Rng(self.seed)),
        }
        out
    }
}

fn new_spec(rng: &mut Rng, index: u64) -> Spec {
    let seed = rng.next();
    // ~15% of objects are compressible documents.
    if rng.below(100) < 15 {
        let (kind, prefix, ext) = match rng.below(3) {
            0 => (Kind::Text, "transkripte", "txt"),
            1 => (Kind::Json, "metadaten", "json"),
            _ => (Kind::Pdf, "dokumente", "pdf"),
        };
        let size = rng.log_uniform(8 * 1024, 2 * MIB);
        Spec {
            key: format!("{prefix}/{:03}/{index:07}.{ext}", index % 97),
            kind,
            size,
            seed,
        }
    } else {
        let size = rng.log_uniform(100 * 1024, 5 * MIB);
        Spec {
            key: format!("scans/{}/{index:07}.tif", 1900 + index % 120),
            kind: Kind::Scan,
            size,
            seed,
        }
    }
}

/// The bucket at `scale` bytes: a few large files (50–200 MiB, scaled down below 2 GiB),
/// the rest scans and documents.
fn fixture(scale: u64, seed: u64) -> Vec<Spec> {
    let mut rng = Rng(seed);
    let factor = (scale as f64 / (2 * GIB) as f64).min(1.0);
    let copies = (scale / (2 * GIB)).max(1);
    let mut specs = Vec::new();
    let mut total = 0;
    for c in 0..copies {
        for (i, mib) in [50u64, 120, 200].into_iter().enumerate() {
            let size = ((mib * MIB) as f64 * factor) as u64;
            total += size;
            specs.push(Spec {
                key: format!("filme/{c:02}-{i}.mp4"),
                kind: Kind::Video,
                size,
                seed: rng.next(),
            });
        }
    }
    let mut index = 0;
    while total < scale {
        let s = new_spec(&mut rng, index);
        total += s.size;
        specs.push(s);
        index += 1;
    }
    specs
}

// ---------------------------------------------------------------------------------------
// Measuring processes

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct Usage {
    wall: f64,
    cpu: f64,
    max_rss_mib: f64,
}

/// Runs `cmd` to completion and measures it: CPU from wait4 (the child plus any
/// grandchildren it waited for, e.g. the sender's pg_dump), peak RSS by polling the child's
/// VmHWM. (wait4's ru_maxrss cannot be used: Linux counts the pre-exec address space,
/// i.e. this benchmark's own, into it.)
async fn run_measured(mut cmd: Command, what: &str) -> Result<Usage> {
    // Write back what the fixture (or the previous phase) left dirty first: otherwise the
    // kernel flushes gigabytes of it during this phase, and its fsyncs wait behind them.
    let synced = Command::new("sync").status().context("running sync")?;
    if !synced.success() {
        bail!("sync failed: {synced}");
    }
    let started = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = std::thread::spawn({
        let done = done.clone();
        move || {
            let watch = ProcWatch { pid };
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(watch.status_kib("VmHWM:"));
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            peak
        }
    });
    let (status, ru) = tokio::task::spawn_blocking(move || {
        let mut status = 0;
        // SAFETY: plain syscall on our own child; the rusage is fully written by wait4.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) };
        drop(child); // already reaped; std does not wait on drop
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((status, ru))
    })
    .await??;
    let wall = started.elapsed().as_secs_f64();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak_kib = poller.join().unwrap_or(0);
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("{what} failed (wait status {status:#x})");
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Usage {
        wall,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        max_rss_mib: peak_kib as f64 / 1024.0,
    })
}

/// Counters of the long-running receiver process, from /proc.
struct ProcWatch {
    pid: u32,
}

impl ProcWatch {
    fn cpu(&self) -> f64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
        let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (ticks(11) + ticks(12)) / hz
    }
    fn status_kib(&self, field: &str) -> u64 {
        fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
    /// Resets the peak RSS (VmHWM) so the next phase measures its own peak.
    fn reset_peak(&self) {
        let _ = fs::write(format!("/proc/{}/clear_refs", self.pid), "5");
    }
    fn peak_mib(&self) -> f64 {
        self.status_kib("VmHWM:") as f64 / 1024.0
    }
    /// Bytes the process read through read(2)-like calls: the network plus manifest reads.
    fn rchar(&self) -> u64 {
        fs::read_to_string(format!("/proc/{}/io", self.pid))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("rchar:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn disk_usage(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        total += meta.blocks() * 512;
        if meta.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        }
    }
    total
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------
// Results

#[derive(Debug, Clone, Default, serde::Serialize)]
struct Row {
    phase: String,
    system: String,
    wall_s: f64,
    source_bytes: u64,
    sent_bytes: u64,
    repo_added_bytes: u64,
    sender_rss_mib: f64,
    receiver_rss_mib: f64,
    cpu_s: f64,
    load: String,
}

impl Row {
    fn mbps(&self) -> f64 {
        self.source_bytes as f64 / 1e6 / self.wall_s.max(1e-9)
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<9} {:<7} {:>8} {:>8} {:>10} {:>10} {:>9} {:>9} {:>7}  load",
        "phase", "system", "wall s", "MB/s", "sent MB", "repo +MB", "snd RSS", "rcv RSS", "CPU s"
    );
    let mb = |b: u64| b as f64 / 1e6;
    for r in rows {
        println!(
            "{:<9} {:<7} {:>8.2} {:>8.1} {:>10.1} {:>10.1} {:>9.1} {:>9.1} {:>7.1}  {}",
            r.phase,
            r.system,
            r.wall_s,
            r.mbps(),
            mb(r.sent_bytes),
            mb(r.repo_added_bytes),
            r.sender_rss_mib,
            r.receiver_rss_mib,
            r.cpu_s,
            r.load
        );
    }
    // Ratios ours / restic for each phase both ran.
    for ours in rows.iter().filter(|r| r.system == "ours") {
        if let Some(theirs) = rows
            .iter()
            .find(|r| r.system == "restic" && r.phase == ours.phase)
        {
            let q = |a: f64, b: f64| {
                if b > 0.0 {
                    format!("{:.2}", a / b)
                } else {
                    "-".into()
                }
            };
            println!(
                "{:<9} {:<7} {:>8} {:>8} {:>10} {:>10} {:>9} {:>9} {:>7}",
                ours.phase,
                "ratio",
                q(ours.wall_s, theirs.wall_s),
                q(ours.mbps(), theirs.mbps()),
                q(ours.sent_bytes as f64, theirs.sent_bytes as f64),
                q(ours.repo_added_bytes as f64, theirs.repo_added_bytes as f64),
                q(ours.sender_rss_mib, theirs.sender_rss_mib),
                "",
                q(ours.cpu_s, theirs.cpu_s),
            );
        }
    }
    println!(
        "\nours: RSS snd = backup-sender (incl. its pg_dump child), rcv = backup-receiver serve (VmHWM of the phase);\n\
         CPU = sender (incl. pg_dump) + receiver; sent = chunk payload bytes (after zstd).\n\
         restic: RSS/CPU of the restic process; sent = data_added reported by restic (local repository).\n\
         ratio = ours / restic. The in-process S3 server's CPU is not counted for either side."
    );
}

// ---------------------------------------------------------------------------------------
// Bucket helpers

async fn put_specs(stack: &Stack, specs: &[Spec], mirror: Option<&Path>) -> Result<()> {
    let client = stack.s3.client();
    futures::stream::iter(specs.iter())
        .map(|s| {
            let client = client.clone();
            async move {
                let data = tokio::task::spawn_blocking({
                    let s = s.clone();
                    move || s.bytes()
                })
                .await?;
                if let Some(dir) = mirror {
                    let path = dir.join(&s.key);
                    fs::create_dir_all(path.parent().unwrap())?;
                    fs::write(&path, &data)?;
                }
                if data.len() as u64 > 64 * MIB {
                    put_streamed(&client, &s.key, data.len() as u64, |i, len| {
                        let off = i as usize;
                        data[off..off + len as usize].to_vec()
                    })
                    .await?;
                } else {
                    client
                        .put_object()
                        .bucket(BUCKET)
                        .key(&s.key)
                        .body(ByteStream::from(data))
                        .send()
                        .await
                        .with_context(|| format!("putting {}", s.key))?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(6)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Multipart upload of `size` bytes produced part by part by `part(offset, len)`.
async fn put_streamed(
    client: &aws_sdk_s3::Client,
    key: &str,
    size: u64,
    part: impl Fn(u64, u64) -> Vec<u8>,
) -> Result<()> {
    const PART: u64 = 32 * MIB;
    let up = client
        .create_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await?;
    let id = up.upload_id.context("no upload id")?;
    let mut parts = Vec::new();
    let mut off = 0;
    let mut n = 1;
    while off < size {
        let len = PART.min(size - off);
        let out = client
            .upload_part()
            .bucket(BUCKET)
            .key(key)
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(part(off, len)))
            .send()
            .await
            .with_context(|| format!("{key}: part {n}"))?;
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag)
                .build(),
        );
        off += len;
        n += 1;
    }
    client
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The runs

fn sender_cmd(stack: &Stack, out: &Path) -> Result<Command> {
    let mut cmd = Command::new(bin("backup-sender"));
    cmd.args(["run", "--json", "--config"])
        .arg(&stack.sender_config)
        .env("RUST_LOG", "warn")
        .stdout(File::create(out)?)
        .stderr(File::create(out.with_extension("stderr"))?);
    Ok(cmd)
}

/// One sender run, measured on both sides. Returns the row and the sender's summary.
async fn night(
    stack: &Stack,
    rx: &ProcWatch,
    phase: &str,
    work: &Path,
    source_bytes: u64,
) -> Result<(Row, serde_json::Value)> {
    let out = work.join(format!("{phase}.json"));
    let repo_before = disk_usage(stack.repo());
    let (cpu0, _rchar0) = (rx.cpu(), rx.rchar());
    rx.reset_peak();
    let load = loadavg();
    let u = run_measured(sender_cmd(stack, &out)?, "backup-sender run")
        .await
        .with_context(|| fs::read_to_string(out.with_extension("stderr")).unwrap_or_default())?;
    let summary: serde_json::Value = serde_json::from_slice(&fs::read(&out)?)?;
    let row = Row {
        phase: phase.into(),
        system: "ours".into(),
        wall_s: u.wall,
        source_bytes: source_bytes + summary["dump_bytes"].as_u64().unwrap_or(0),
        sent_bytes: summary["bytes_sent"].as_u64().unwrap_or(0),
        repo_added_bytes: disk_usage(stack.repo()).saturating_sub(repo_before),
        sender_rss_mib: u.max_rss_mib,
        receiver_rss_mib: rx.peak_mib(),
        cpu_s: u.cpu + (rx.cpu() - cpu0),
        load,
    };
    eprintln!(
        "[bench] {phase}: {:.2} s, {:.1} MB/s, sender peak {:.1} MiB, receiver peak {:.1} MiB, \
         CPU {:.1} s, summary {}",
        row.wall_s,
        row.mbps(),
        row.sender_rss_mib,
        row.receiver_rss_mib,
        row.cpu_s,
        serde_json::to_string(&summary)?
    );
    Ok((row, summary))
}

struct Restic {
    repo: PathBuf,
    cache: PathBuf,
}

impl Restic {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("restic");
        c.arg("-r")
            .arg(&self.repo)
            .args(args)
            .env("RESTIC_PASSWORD", "bench")
            .env("RESTIC_CACHE_DIR", &self.cache)
            .stdin(Stdio::null());
        c
    }

    async fn backup(&self, phase: &str, input: &Path, work: &Path, source: u64) -> Result<Row> {
        let out = work.join(format!("restic-{phase}.json"));
        let before = disk_usage(&self.repo);
        let mut cmd = self.cmd(&["backup", "--json", "--host", "bench", "."]);
        cmd.current_dir(input)
            .stdout(File::create(&out)?)
            .stderr(File::create(out.with_extension("stderr"))?);
        let load = loadavg();
        let u = run_measured(cmd, "restic backup").await?;
        let text = fs::read_to_string(&out)?;
        let summary: serde_json::Value = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message_type"] == "summary")
            .context("restic printed no summary")?;
        eprintln!("[bench] restic {phase}: {:.2} s, summary {summary}", u.wall);
        Ok(Row {
            phase: phase.into(),
            system: "restic".into(),
            wall_s: u.wall,
            source_bytes: source,
            sent_bytes: summary["data_added"].as_u64().unwrap_or(0),
            repo_added_bytes: disk_usage(&self.repo).saturating_sub(before),
            sender_rss_mib: u.max_rss_mib,
            receiver_rss_mib: 0.0,
            cpu_s: u.cpu,
            load,
        })
    }
}

fn restic_available() -> bool {
    Command::new("restic")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn psql(stack: &Stack, sql: &str) -> Result<()> {
    let c = stack.pg.client(DATABASE).await?;
    c.batch_execute(sql).await?;
    Ok(())
}

fn file_size(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Chunk ids and lengths of a snapshot's dump, read from its manifest.
fn dump_chunks(repo: &Path, snapshot: &str) -> Result<Vec<(String, u64)>> {
    let m: serde_json::Value = serde_json::from_slice(&fs::read(
        repo.join("snapshots").join(format!("{snapshot}.json")),
    )?)?;
    Ok(m["dump"]["chunks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["id"].as_str().unwrap_or_default().to_string(),
                        c["len"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

async fn nightly(args: &Args) -> Result<()> {
    let restic = !args.no_restic;
    if restic && !restic_available() {
        bail!(
            "restic is not installed: `apt-get install -y restic` (Debian/Ubuntu), \
             or run with --no-restic to skip the reference runs"
        );
    }
    let gib = args.scale as f64 / GIB as f64;
    let pgbench_scale = args
        .pgbench_scale
        .unwrap_or(((gib * 5.0).round() as u64).max(1));
    eprintln!(
        "[bench] scale {} bytes ({gib:.2} GiB), pgbench -s {pgbench_scale}, seed {}, load {}",
        args.scale,
        args.seed,
        loadavg()
    );
    let stack = Stack::start().await?;
    if let Some(n) = args.objects_concurrency {
        // The harness writes [objects] just before [run].
        let toml = fs::read_to_string(&stack.sender_config)?;
        let toml = toml.replacen("\n[run]\n", &format!("concurrency = {n}\n\n[run]\n"), 1);
        fs::write(&stack.sender_config, toml)?;
    }
    let rx = ProcWatch {
        pid: stack.receiver.pid().context("receiver not running")?,
    };
    let work = stack.dir.path().join("bench");
    let input = work.join("restic-input");
    let mirror = input.join("bucket");
    fs::create_dir_all(&mirror)?;

    // Fixture: database.
    let t = Instant::now();
    let status = Command::new(tool("pgbench"))
        .args([
            "-i",
            "-q",
            "-s",
            &pgbench_scale.to_string(),
            "-h",
            "127.0.0.1",
        ])
        .args([
            "-p",
            &stack.pg.port().to_string(),
            "-U",
            "postgres",
            DATABASE,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("pgbench -i failed");
    }
    let docs = (args.scale / (100 * 1024)).max(10_000);
    psql(
        &stack,
        &format!(
            "INSERT INTO dokumente (person_id, titel, inhalt, objekt_key)
               SELECT 1 + g % 300, 'Dokument ' || g,
                      repeat('Transkript ' || md5(g::text) || ' Liebe Familie, herzliche Grüße. ', 25),
                      'scans/' || g || '.tif'
                 FROM generate_series(1, {docs}) g;"
        ),
    )
    .await?;
    psql(&stack, "VACUUM ANALYZE").await?;
    eprintln!(
        "[bench] database ready in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Fixture: bucket (mirrored to a directory for restic; not timed).
    let t = Instant::now();
    let specs = fixture(args.scale, args.seed);
    put_specs(&stack, &specs, restic.then_some(mirror.as_path())).await?;
    let mut bucket_bytes: u64 = specs.iter().map(|s| s.size).sum();
    eprintln!(
        "[bench] bucket ready: {} objects, {bucket_bytes} bytes in {:.1} s",
        specs.len(),
        t.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    let (row1, s1) = night(&stack, &rx, "night 1", &work, bucket_bytes).await?;
    rows.push(row1.clone());
    let dump_in = input.join("archiv.dump");
    let restic_repo = Restic {
        repo: work.join("restic-repo"),
        cache: work.join("restic-cache"),
    };
    if restic {
        fs::copy(s1["dump_file"].as_str().context("dump_file")?, &dump_in)?;
        let st = restic_repo
            .cmd(&["init", "--repository-version", "2"])
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("restic init failed");
        }
        rows.push(
            restic_repo
                .backup("night 1", &input, &work, row1.source_bytes)
                .await?,
        );
    }

    // One night of change.
    let mut rng = Rng(args.seed ^ 0xC0FFEE);
    let n = specs.len() as u64;
    let mut changed_object_bytes = 0;
    let mut rewritten = Vec::new();
    let mut deleted = HashSet::new();
    for i in 0..n {
        match rng.below(200) {
            0 | 1 => {
                let mut s = specs[i as usize].clone();
                s.seed = rng.next();
                changed_object_bytes += s.size;
                rewritten.push(s);
            }
            2 => {
                deleted.insert(specs[i as usize].key.clone());
            }
            _ => {}
        }
    }
    let added: Vec<Spec> = (0..n.div_ceil(200))
        .map(|i| new_spec(&mut rng, 10_000_000 + i))
        .collect();
    changed_object_bytes += added.iter().map(|s| s.size).sum::<u64>();
    for key in &deleted {
        stack.s3.delete(BUCKET, key).await?;
        let _ = fs::remove_file(mirror.join(key));
        bucket_bytes -= specs.iter().find(|s| &s.key == key).map_or(0, |s| s.size);
    }
    put_specs(&stack, &rewritten, restic.then_some(mirror.as_path())).await?;
    put_specs(&stack, &added, restic.then_some(mirror.as_path())).await?;
    bucket_bytes += added.iter().map(|s| s.size).sum::<u64>();
    psql(
        &stack,
        "UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 100 = 42;
         UPDATE dokumente SET inhalt = inhalt || ' (korrigiert)' WHERE id % 100 = 7;
         INSERT INTO dokumente (person_id, titel, inhalt, objekt_key)
           SELECT 1 + g % 300, 'Neu ' || g, repeat('Nachtrag ' || md5(g::text) || ' ', 40), 'neu/' || g
             FROM generate_series(1, (SELECT count(*) / 200 FROM dokumente)) g;
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)
           SELECT 1 + g % 10, 1, g, g % 1000, now() FROM generate_series(1, 5000) g;",
    )
    .await?;
    psql(&stack, "VACUUM ANALYZE").await?;
    eprintln!(
        "[bench] change: {} rewritten, {} added, {} deleted objects",
        rewritten.len(),
        added.len(),
        deleted.len()
    );

    let (row2, s2) = night(&stack, &rx, "night 2", &work, bucket_bytes).await?;
    rows.push(row2.clone());
    // The yardstick for night 2: pg_dump alone on the same database.
    let load = loadavg();
    let mut pg_dump = Command::new(tool("pg_dump"));
    pg_dump
        .args(["--format=custom", "-f"])
        .arg(work.join("pg_dump-alone.dump"))
        .arg(format!("--dbname={}", stack.pg.url(DATABASE)));
    let dump_alone = run_measured(pg_dump, "pg_dump").await?;
    if restic {
        fs::copy(s2["dump_file"].as_str().context("dump_file")?, &dump_in)?;
        rows.push(
            restic_repo
                .backup("night 2", &input, &work, row2.source_bytes)
                .await?,
        );
    }

    // Restore the latest snapshot.
    let out_dir = work.join("restore");
    let mut cmd = Command::new(bin("backup-receiver"));
    cmd.args(["restore", "latest", "--repo"])
        .arg(stack.repo())
        .arg("--dump-out")
        .arg(out_dir.join("archiv.dump"))
        .arg("--objects-out")
        .arg(out_dir.join("bucket"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(File::create(work.join("restore.stderr"))?);
    let load_r = loadavg();
    let u = run_measured(cmd, "backup-receiver restore").await?;
    let restored = disk_usage(&out_dir);
    rows.push(Row {
        phase: "restore".into(),
        system: "ours".into(),
        wall_s: u.wall,
        source_bytes: row2.source_bytes,
        receiver_rss_mib: u.max_rss_mib,
        cpu_s: u.cpu,
        load: load_r,
        ..Row::default()
    });
    let restored_dump = file_size(&out_dir.join("archiv.dump"));
    if restored_dump != s2["dump_bytes"].as_u64().unwrap_or(0) || restored < bucket_bytes {
        bail!("restore is incomplete: dump {restored_dump} bytes, {restored} bytes on disk");
    }
    fs::remove_dir_all(&out_dir)?;
    if restic {
        let target = work.join("restic-restore");
        let mut cmd = restic_repo.cmd(&["restore", "latest", "--target"]);
        cmd.arg(&target)
            .stdout(Stdio::null())
            .stderr(File::create(work.join("restic-restore.stderr"))?);
        let load = loadavg();
        let u = run_measured(cmd, "restic restore").await?;
        rows.push(Row {
            phase: "restore".into(),
            system: "restic".into(),
            wall_s: u.wall,
            source_bytes: row2.source_bytes,
            sender_rss_mib: u.max_rss_mib,
            cpu_s: u.cpu,
            load,
            ..Row::default()
        });
        fs::remove_dir_all(&target)?;
    }

    // What really changed: changed objects plus dump chunks night 1 did not have.
    let d1: HashSet<String> = dump_chunks(stack.repo(), s1["snapshot_id"].as_str().unwrap())?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let changed_dump: u64 = dump_chunks(stack.repo(), s2["snapshot_id"].as_str().unwrap())?
        .into_iter()
        .filter(|(id, _)| !d1.contains(id))
        .map(|(_, len)| len)
        .sum();
    let really_changed = changed_object_bytes + changed_dump;

    println!(
        "\nscale {} bytes ({gib:.2} GiB): {} objects, bucket {} MB, dump {} MB (pgbench -s {pgbench_scale}); \
         fixture seed {}",
        args.scale,
        specs.len(),
        bucket_bytes / 1_000_000,
        s2["dump_bytes"].as_u64().unwrap_or(0) / 1_000_000,
        args.seed
    );
    print_table(&rows);
    let sent2 = s2["bytes_sent"].as_u64().unwrap_or(0);
    let raw2 = s2["raw_bytes_sent"].as_u64().unwrap_or(0);
    println!(
        "\nnight 2: really changed {:.1} MB (objects {:.1} MB + new dump chunks {:.1} MB); \
         sent {:.1} MB = {:.2}x ({:.1} MB raw = {:.2}x)",
        really_changed as f64 / 1e6,
        changed_object_bytes as f64 / 1e6,
        changed_dump as f64 / 1e6,
        sent2 as f64 / 1e6,
        sent2 as f64 / really_changed.max(1) as f64,
        raw2 as f64 / 1e6,
        raw2 as f64 / really_changed.max(1) as f64,
    );
    println!(
        "night 2: wall {:.2} s, pg_dump alone {:.2} s (load {load}): {:+.2} s beyond pg_dump",
        row2.wall_s,
        dump_alone.wall,
        row2.wall_s - dump_alone.wall
    );
    if let Some(path) = &args.json_out {
        fs::write(
            path,
            serde_json::to_vec_pretty(&serde_json::json!({
                "scale": args.scale,
                "seed": args.seed,
                "pgbench_scale": pgbench_scale,
                "objects": specs.len(),
                "rows": rows,
                "night2_really_changed_bytes": really_changed,
                "night2_sent_bytes": sent2,
                "pg_dump_alone_s": dump_alone.wall,
                "night1_summary": s1,
                "night2_summary": s2,
            }))?,
        )?;
    }
    Ok(())
}

async fn memory_check(args: &Args) -> Result<()> {
    eprintln!(
        "[bench] memory check: one {} byte object, then {} small objects; load {}",
        args.big_object,
        args.small_objects,
        loadavg()
    );
    let stack = Stack::start().await?;
    let rx = ProcWatch {
        pid: stack.receiver.pid().context("receiver not running")?,
    };
    let work = stack.dir.path().join("bench");
    fs::create_dir_all(&work)?;
    let seed = args.seed;
    let client = stack.s3.client();
    put_streamed(&client, "filme/gross.mkv", args.big_object, |off, len| {
        let mut v = Vec::new();
        noise_into(&mut v, len as usize, seed ^ off);
        v
    })
    .await?;
    let (big, _) = night(&stack, &rx, "1 big", &work, args.big_object).await?;
    stack.s3.delete(BUCKET, "filme/gross.mkv").await?;
    let specs: Vec<Spec> = (0..args.small_objects)
        .map(|i| Spec {
            key: format!("klein/{:03}/{i:07}.jpg", i % 1000),
            kind: Kind::Scan,
            size: 1024 + (i * 7919) % 8192,
            seed: seed + i,
        })
        .collect();
    let t = Instant::now();
    put_specs(&stack, &specs, None).await?;
    eprintln!(
        "[bench] {} small objects in {:.1} s",
        specs.len(),
        t.elapsed().as_secs_f64()
    );
    let small_bytes = specs.iter().map(|s| s.size).sum();
    let (small, _) = night(&stack, &rx, "small", &work, small_bytes).await?;
    print_table(&[big, small]);
    println!("target: peak RSS of sender and receiver at most 200 MiB each");
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.memory_check {
        memory_check(&args).await
    } else {
        nightly(&args).await
    }
}
