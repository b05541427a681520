//! `khala-sync-bench`: one run, one table, every row divided by the raw per-frame limit
//! measured in the same run (the machine is shared and noisy; ratios travel, absolute numbers
//! do not).
//!
//! ```text
//! cargo run --release -p khala-sync-bench            # full: 1M updates, 100k-doc snapshot
//! cargo run --release -p khala-sync-bench -- --quick # smoke: 100k updates, asserts correctness
//! ```
//! Catch-up rows run in child processes (this binary, `client`/`raw` modes) so their peak RSS
//! is their own; the dev server runs in this process.

#![allow(clippy::expect_used)]

mod raw;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures::StreamExt;
use khala_dev_server::{DevServer, DevServerConfig, Principal, PublishItem, TestToken, TopicSpec};
use khala_sync::protocol::phoenix::{self, ServerMessage};
use khala_sync::protocol::{hash, DecodeLimits, PayloadHash};
use khala_sync::store::{SqliteOptions, SqliteStore, Store};
use khala_sync::{Change, ClientOptions, ConnectionState, SyncClient, Topic};
use serde_json::value::RawValue;

#[derive(Parser)]
#[command(about = "khala-sync benchmark: catch-up, bootstrap, latency, memory — side by side")]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Small sizes (≤ 2 minutes); asserts that every local copy equals the server's.
    #[arg(long)]
    quick: bool,
    /// Skip the old-stack Node consumer (it needs npm and a C++ compiler for better-sqlite3).
    #[arg(long)]
    no_node: bool,
    /// Only the snapshot-bootstrap rows (for profiling the bootstrap path).
    #[arg(long)]
    only_bootstrap: bool,
}

#[derive(Subcommand)]
enum Mode {
    /// (child) Sync `topics` with the SDK until each reaches its watermark.
    Client {
        #[arg(long)]
        server: String,
        #[arg(long)]
        db: PathBuf,
        #[arg(long, value_delimiter = ',')]
        topics: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        until: Vec<u64>,
    },
    /// (child) The raw per-frame consumer.
    Raw {
        #[arg(long)]
        socket_url: String,
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        resume_after: u64,
        #[arg(long)]
        until: u64,
    },
}

const ONE: &str = "bench.one";
const FOUR: [&str; 4] = [
    "bench.four.a",
    "bench.four.b",
    "bench.four.c",
    "bench.four.d",
];
const SNAP: &str = "bench.snapshot";
const LIVE: &str = "bench.live";

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat`.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // Clock ticks: 100 per second on Linux (USER_HZ).
    f.iter().sum::<u64>() as f64 / 100.0
}

fn bench_options() -> ClientOptions {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
    ClientOptions {
        // Tuning experiments (docs/PERFORMANCE.md): KHALA_BENCH_GROUP=<updates>.
        group_commit_max_updates: env("KHALA_BENCH_GROUP")
            .unwrap_or(ClientOptions::default().group_commit_max_updates),
        // KHALA_BENCH_SNAPSHOT_LIMIT=<docs per snapshot page> (default: the SDK's).
        snapshot_page_limit: env("KHALA_BENCH_SNAPSHOT_LIMIT")
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(ClientOptions::default().snapshot_page_limit),
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(500),
        reconnect_spread: Duration::from_millis(50),
        jitter_seed: Some(1),
        ..ClientOptions::default()
    }
}

async fn child_client(server: String, db: PathBuf, topics: Vec<String>, until: Vec<u64>) {
    let started = Instant::now();
    let client = SyncClient::builder(server)
        .app_bearer_token(DevServer::APP_TOKEN)
        .topics(topics.iter().map(|t| Topic::new(t).expect("topic")))
        .store(Arc::new(
            SqliteStore::open(
                &db,
                SqliteOptions {
                    // KHALA_BENCH_CACHE_KIB: SQLite page cache experiments.
                    cache_size_kib: std::env::var("KHALA_BENCH_CACHE_KIB")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(SqliteOptions::default().cache_size_kib),
                    // KHALA_BENCH_WAL_CHECKPOINT: checkpoint interval experiments (pages).
                    wal_autocheckpoint: std::env::var("KHALA_BENCH_WAL_CHECKPOINT")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(SqliteOptions::default().wal_autocheckpoint),
                    ..SqliteOptions::default()
                },
            )
            .expect("open db"),
        ))
        .options(bench_options())
        .build()
        .expect("client");
    client.start().expect("start");
    let targets: BTreeMap<String, u64> = topics.iter().cloned().zip(until).collect();
    loop {
        let s = client.current_status();
        let done = s
            .topics
            .iter()
            .all(|t| t.watermark.get() >= targets.get(t.topic.as_str()).copied().unwrap_or(0));
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    let m = client.metrics();
    client.shutdown().await;
    println!(
        "{}",
        serde_json::json!({"elapsed_ms": elapsed.as_secs_f64() * 1e3, "peak_rss_kib": vm_hwm_kib(), "cpu_s": cpu_secs(),
            "snapshots": m.snapshots, "updates_applied": m.updates_applied, "batches": m.batches_committed})
    );
}

/// What a child reported.
#[derive(Debug, Clone, Default)]
struct ChildResult {
    elapsed: Duration,
    peak_rss_kib: u64,
    /// The child's CPU time (user + system) over its whole life.
    cpu_s: f64,
    /// This (server) process's CPU time while the child ran.
    server_cpu_s: f64,
    snapshots: u64,
    batches: u64,
}

impl ChildResult {
    /// "CPU: client … s, server … s" (the 2-core VM runs both; see docs/PERFORMANCE.md).
    fn cpu_note(&self) -> String {
        format!(
            "CPU: client {:.2} s, server {:.2} s",
            self.cpu_s, self.server_cpu_s
        )
    }
}

async fn run_child(cmd: &mut tokio::process::Command) -> ChildResult {
    let server_cpu = cpu_secs();
    let out = cmd
        .stderr(Stdio::inherit())
        .stdout(Stdio::piped())
        .output()
        .await
        .expect("child runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("{}");
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    assert!(
        out.status.success() && v.get("elapsed_ms").is_some(),
        "child failed: {text}"
    );
    ChildResult {
        elapsed: Duration::from_secs_f64(v["elapsed_ms"].as_f64().unwrap_or(0.0) / 1e3),
        peak_rss_kib: v["peak_rss_kib"].as_u64().unwrap_or(0),
        cpu_s: v["cpu_s"].as_f64().unwrap_or(f64::NAN),
        server_cpu_s: cpu_secs() - server_cpu,
        snapshots: v["snapshots"].as_u64().unwrap_or(0),
        batches: v["batches"].as_u64().unwrap_or(0),
    }
}

fn me() -> tokio::process::Command {
    tokio::process::Command::new(std::env::current_exe().expect("current exe"))
}

/// This binary as a child, run under the command line in env var `var` when it is set.
fn wrapped(var: &str) -> tokio::process::Command {
    match std::env::var(var) {
        Ok(w) if !w.trim().is_empty() => {
            let mut parts = w.split_whitespace();
            let mut c = tokio::process::Command::new(parts.next().unwrap_or("env"));
            c.args(parts)
                .arg(std::env::current_exe().expect("current exe"));
            c
        }
        _ => me(),
    }
}

fn topic_spec(name: &str) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        qos_tier: "warm".into(),
        replay_budget_events: u64::MAX / 4,
        doc_key_prefix: format!("{name}/doc:"),
    }
}

/// A ~225-byte canonical payload (sorted keys, compact), as a Khala run summary would be.
fn payload(rng: &mut fastrand::Rng, i: u64) -> Arc<RawValue> {
    let text = format!(
        r#"{{"attempt":{},"finished_at":null,"labels":["bench","khala"],"org":"org:7","progress":{},"run_id":"run_{:016x}","started_at":"2026-11-23T10:{:02}:{:02}Z","status":"{}","summary":"step {} of the benchmark workload"}}"#,
        rng.u32(1..5),
        rng.u32(0..100),
        rng.u64(..),
        rng.u32(0..60),
        rng.u32(0..60),
        ["queued", "running", "succeeded", "failed"][rng.usize(0..4)],
        i
    );
    Arc::from(RawValue::from_string(text).expect("valid JSON"))
}

fn publish_workload(server: &DevServer, topics: &[&str], total: u64, keys: u64, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut i = 0u64;
    while i < total {
        let n = 10_000.min(total - i);
        let items: Vec<PublishItem> = (0..n)
            .map(|k| {
                let t = topics[usize::try_from((i + k) % topics.len() as u64).unwrap_or(0)];
                PublishItem {
                    topic: t.to_owned(),
                    doc_key: format!("{t}/doc:{:05}", rng.u64(0..keys)),
                    payload: Some(payload(&mut rng, i + k)),
                }
            })
            .collect();
        server.try_publish(items).expect("publish");
        i += n;
    }
}

/// Compares the SDK's file with the server for `topic`: (docs compared, mismatches).
async fn verify(db: &Path, server: &DevServer, topic: &str) -> (usize, usize) {
    let store = SqliteStore::open(
        db,
        SqliteOptions {
            read_only: true,
            ..SqliteOptions::default()
        },
    )
    .expect("open db");
    let local: BTreeMap<String, (u64, String)> = store
        .list(Topic::new(topic).expect("topic"))
        .await
        .expect("list")
        .into_iter()
        .map(|d| (d.doc_key.as_str().to_owned(), (d.doc_version, d.payload)))
        .collect();
    let remote = server.state(topic);
    let mut bad = remote
        .iter()
        .filter(|d| local.get(&d.doc_key) != Some(&(d.doc_version, d.payload.clone())))
        .count();
    bad += local.len().saturating_sub(remote.len());
    (remote.len(), bad)
}

struct Row {
    name: String,
    updates: u64,
    time: Duration,
    rss_kib: Option<u64>,
    note: String,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match cli.mode {
        Some(Mode::Client {
            server,
            db,
            topics,
            until,
        }) => return child_client(server, db, topics, until).await,
        Some(Mode::Raw {
            socket_url,
            db,
            topic,
            resume_after,
            until,
        }) => {
            let t = raw::run(&socket_url, &db, &topic, resume_after, until)
                .await
                .expect("raw consumer");
            println!(
                "{}",
                serde_json::json!({"elapsed_ms": t.as_secs_f64() * 1e3, "peak_rss_kib": vm_hwm_kib(), "cpu_s": cpu_secs()})
            );
            return;
        }
        None => {}
    }
    let quick = cli.quick;
    let updates: u64 = if quick { 100_000 } else { 1_000_000 };
    let snapshot_docs: u64 = if quick { 10_000 } else { 100_000 };
    let keys = 10_000u64;
    let dir = tempfile::tempdir().expect("tmp");
    let mut topics: Vec<TopicSpec> = vec![topic_spec(ONE), topic_spec(SNAP), topic_spec(LIVE)];
    topics.extend(FOUR.iter().map(|t| topic_spec(t)));
    let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    let server = DevServer::start(DevServerConfig {
        max_retained_per_topic: usize::try_from(updates).unwrap_or(usize::MAX) + 10,
        snapshot_max_limit: 5_000,
        topics,
        principals: vec![Principal {
            app_token: DevServer::APP_TOKEN.into(),
            subject: "user:42".into(),
            org_id: "org:7".into(),
            scopes: names.clone(),
        }],
        ..DevServerConfig::default()
    })
    .await
    .expect("dev server");
    let base = server.base_url();
    let mut rows: Vec<Row> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    println!(
        "khala-sync-bench: {} updates (~225-byte payloads, {keys} keys, 200 per frame), {} cores, {}",
        updates,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if quick { "quick" } else { "full" }
    );

    if cli.only_bootstrap {
        bootstrap_rows(
            &server,
            &base,
            dir.path(),
            snapshot_docs,
            &mut rows,
            &mut failures,
        )
        .await;
        for r in &rows {
            println!(
                "| {} | {} | {:.3} s | {:.0}/s | {} |",
                r.name,
                r.updates,
                r.time.as_secs_f64(),
                r.updates as f64 / r.time.as_secs_f64(),
                r.note
            );
        }
        exit_on_failures(&failures);
        return;
    }

    // 1. A first document per topic, and resumable SDK files at that watermark.
    let mut rng = fastrand::Rng::with_seed(99);
    for t in std::iter::once(ONE).chain(FOUR) {
        server
            .try_publish(vec![PublishItem {
                topic: t.into(),
                doc_key: format!("{t}/doc:first"),
                payload: Some(payload(&mut rng, 0)),
            }])
            .expect("publish");
    }
    let db_one = dir.path().join("one.db");
    let db_four = dir.path().join("four.db");
    run_child(
        me().args(["client", "--server", &base, "--db"])
            .arg(&db_one)
            .args(["--topics", ONE, "--until", "1"]),
    )
    .await;
    run_child(
        me().args(["client", "--server", &base, "--db"])
            .arg(&db_four)
            .args(["--topics", &FOUR.join(","), "--until", "1,1,1,1"]),
    )
    .await;

    // 2. The workload.
    let t0 = Instant::now();
    publish_workload(&server, &[ONE], updates, keys, 1);
    publish_workload(&server, &FOUR, updates, keys, 2);
    eprintln!(
        "published {} updates in {:.1}s",
        updates * 2,
        t0.elapsed().as_secs_f64()
    );
    let head_one = server.head(ONE);

    // 3. Raw per-frame limit.
    let token = server.mint_token_with(&TestToken {
        subject: "user:42".into(),
        topics: names.clone(),
        issued_offset_seconds: 0,
        ttl_seconds: 900,
        tampered: false,
    });
    let socket_url = server.socket_url(&token);
    let raw = run_child(
        me().args(["raw", "--socket-url", &socket_url, "--db"])
            .arg(dir.path().join("raw.db"))
            .args(["--topic", ONE, "--resume-after", "1", "--until"])
            .arg(head_one.to_string()),
    )
    .await;
    rows.push(Row {
        name: "raw per-frame limit (tungstenite + rusqlite, 1 tx/frame, no hash)".into(),
        updates,
        time: raw.elapsed,
        rss_kib: Some(raw.peak_rss_kib),
        note: raw.cpu_note(),
    });

    // 4. khala-sync catch-up, hash verification on. `KHALA_BENCH_PROFILE=<file>` records this
    // child with `perf record` (cpu-clock; docs/PERFORMANCE.md shows how the profiles were read).
    let mut one_cmd = match std::env::var_os("KHALA_BENCH_PROFILE") {
        Some(out) => {
            let mut c = tokio::process::Command::new("perf");
            c.args([
                "record",
                "-q",
                "-e",
                "cpu-clock",
                "-F",
                "1999",
                "--call-graph",
                "dwarf,16384",
                "-o",
            ])
            .arg(out)
            .arg("--")
            .arg(std::env::current_exe().expect("current exe"));
            c
        }
        // Any other wrapper, e.g. `strace -f -c -o /tmp/strace.txt`.
        None => wrapped("KHALA_BENCH_WRAP"),
    };
    let one = run_child(
        one_cmd
            .args(["client", "--server", &base, "--db"])
            .arg(&db_one)
            .args(["--topics", ONE, "--until"])
            .arg(head_one.to_string()),
    )
    .await;
    let (n, bad) = verify(&db_one, &server, ONE).await;
    if bad > 0 || one.snapshots > 0 {
        failures.push(format!(
            "catch-up 1 topic: {bad} of {n} docs differ, {} snapshots",
            one.snapshots
        ));
    }
    rows.push(Row {
        name: "khala-sync catch-up, 1 topic (hash verified)".into(),
        updates,
        time: one.elapsed,
        rss_kib: Some(one.peak_rss_kib),
        note: format!(
            "{} commits, verified {n} docs; {}",
            one.batches,
            one.cpu_note()
        ),
    });
    let heads: Vec<String> = FOUR.iter().map(|t| server.head(t).to_string()).collect();
    let four = run_child(
        me().args(["client", "--server", &base, "--db"])
            .arg(&db_four)
            .args(["--topics", &FOUR.join(","), "--until", &heads.join(",")]),
    )
    .await;
    let mut four_bad = 0;
    for t in FOUR {
        four_bad += verify(&db_four, &server, t).await.1;
    }
    if four_bad > 0 || four.snapshots > 0 {
        failures.push(format!("catch-up 4 topics: {four_bad} docs differ"));
    }
    rows.push(Row {
        name: "khala-sync catch-up, 4 topics (hash verified)".into(),
        updates,
        time: four.elapsed,
        rss_kib: Some(four.peak_rss_kib),
        note: format!("{} commits; {}", four.batches, four.cpu_note()),
    });

    // 4b. Frame decoding alone, in this process (no IO): the raw program's serde_json parse
    // against the SDK's reader, on the same frames.
    decode_rows(updates / 5, &mut rows, &mut failures);

    // 5. The old stack.
    if !cli.no_node {
        match node_old_stack(&server, &token, dir.path(), head_one).await {
            Ok(r) => rows.push(Row {
                name: "old stack (phoenix + ws + better-sqlite3, 1 tx/frame)".into(),
                updates,
                time: r.elapsed,
                rss_kib: Some(r.peak_rss_kib),
                note: String::new(),
            }),
            Err(e) => eprintln!("old stack skipped: {e}"),
        }
    }

    // 6. Snapshot bootstrap vs raw bulk insert of the same rows.
    bootstrap_rows(
        &server,
        &base,
        dir.path(),
        snapshot_docs,
        &mut rows,
        &mut failures,
    )
    .await;

    // 7. Live latency and reconnect-and-resume.
    let (lat, reconnect) =
        live_and_reconnect(&server, dir.path(), if quick { 3 } else { 10 }).await;

    // The table.
    let raw_rate = updates as f64 / raw.elapsed.as_secs_f64();
    println!();
    println!("| row | updates | time | updates/s | vs raw limit | peak RSS |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        let rate = r.updates as f64 / r.time.as_secs_f64();
        println!(
            "| {} | {} | {:.2} s | {:.0} | {:.2}x | {} |{}",
            r.name,
            r.updates,
            r.time.as_secs_f64(),
            rate,
            rate / raw_rate,
            r.rss_kib
                .map_or("—".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            if r.note.is_empty() {
                String::new()
            } else {
                format!(" {}", r.note)
            }
        );
    }
    println!(
        "| live latency publish → committed, {} updates at 1k/s | | | p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms | | |",
        lat.len(),
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        pct(&lat, 0.999)
    );
    println!(
        "| reconnect-and-resume after a server restart (connect → live, backoff wait excluded), median of {} | | {:.1} ms | | | |",
        reconnect.len(),
        pct(&reconnect, 0.5)
    );
    match wasm_size() {
        Some((raw_b, gz)) => println!(
            "| wasm package (khala_sync_wasm_bg.wasm, -Oz) | | | {raw_b} B raw, {gz} B gzipped (target 150,000) | | |"
        ),
        None => println!("| wasm package | | | not built (run bindings-wasm/scripts/build.sh) | | |"),
    }
    exit_on_failures(&failures);
    println!("\ncorrectness: every catch-up and bootstrap copy equals the server's");
}

/// Rows 4b: `sync:update_batch` frames shaped like the dev server's (200 updates, the bench
/// payloads, `payload_hash` set) decoded by the raw program's borrowed serde types, by the
/// SDK's decoder, and by the SDK's decoder plus the hash check of every payload. Best of three
/// passes each (CPU only; the other rows' numbers include the socket and the store).
fn decode_rows(updates: u64, rows: &mut Vec<Row>, failures: &mut Vec<String>) {
    let mut rng = fastrand::Rng::with_seed(7);
    let frames: Vec<String> = (0..updates / 200)
        .map(|f| {
            let ups: Vec<String> = (0..200u64)
                .map(|k| {
                    let w = f * 200 + k + 1;
                    let p = payload(&mut rng, w);
                    let hash = PayloadHash::of_canonical(p.get().as_bytes()).to_base64();
                    format!(
                        r#"{{"topic":"{ONE}","doc_key":"{ONE}/doc:{:05}","doc_version":{w},"payload":{},"payload_hash":"{hash}","watermark":{w}}}"#,
                        rng.u64(0..10_000),
                        p.get()
                    )
                })
                .collect();
            format!(
                r#"[null,null,"sync:v1","sync:update_batch",{{"updates":[{}],"replay_complete":false,"head_watermarks":[{{"topic":"{ONE}","watermark":{}}}]}}]"#,
                ups.join(","),
                updates
            )
        })
        .collect();
    let limits = DecodeLimits::default();
    let best = |f: &dyn Fn(&str) -> usize| {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                let n: usize = frames.iter().map(|s| f(s)).sum();
                (t.elapsed(), n)
            })
            .min_by_key(|r| r.0)
            .unwrap_or_default()
    };
    let sdk = |s: &str, check: bool| match phoenix::decode(s, &limits) {
        Ok(ServerMessage::UpdateBatch(b)) => b
            .updates
            .iter()
            .filter(|u| {
                !check
                    || u.payload
                        .as_ref()
                        .is_some_and(|p| hash::matches(p.get(), u.payload_hash.as_ref()))
            })
            .count(),
        _ => 0,
    };
    let results = [
        (
            "frame decode only: serde_json borrowed types (the raw program's parse)",
            best(&|s| raw::decode_frame(s).unwrap_or(0)),
        ),
        (
            "frame decode only: khala-sync reader (`phoenix::decode`)",
            best(&|s| sdk(s, false)),
        ),
        (
            "frame decode + payload hash check: khala-sync",
            best(&|s| sdk(s, true)),
        ),
    ];
    let base = results[0].1 .0.as_secs_f64();
    for (name, (time, n)) in results {
        if n as u64 != updates {
            failures.push(format!("{name}: {n} of {updates} updates decoded"));
        }
        rows.push(Row {
            name: name.into(),
            updates,
            time,
            rss_kib: None,
            note: format!(
                "in process, best of 3; {:.2}x the serde_json parse",
                base / time.as_secs_f64()
            ),
        });
    }
}

/// Row 6: snapshot bootstrap of `snapshot_docs` documents vs a raw bulk insert of the same rows.
async fn bootstrap_rows(
    server: &DevServer,
    base: &str,
    dir: &Path,
    snapshot_docs: u64,
    rows: &mut Vec<Row>,
    failures: &mut Vec<String>,
) {
    let mut rng = fastrand::Rng::with_seed(3);
    let items: Vec<PublishItem> = (0..snapshot_docs)
        .map(|k| PublishItem {
            topic: SNAP.into(),
            doc_key: format!("{SNAP}/doc:{k:06}"),
            payload: Some(payload(&mut rng, k)),
        })
        .collect();
    for chunk in items.chunks(10_000) {
        server.try_publish(chunk.to_vec()).expect("publish");
    }
    server.truncate_before(SNAP, server.head(SNAP));
    let db = dir.join("snap.db");
    // `KHALA_BENCH_WRAP_BOOT="perf record …"` wraps this child (like KHALA_BENCH_WRAP).
    let mut boot_cmd = wrapped("KHALA_BENCH_WRAP_BOOT");
    let boot = run_child(
        boot_cmd
            .args(["client", "--server", base, "--db"])
            .arg(&db)
            .args(["--topics", SNAP, "--until"])
            .arg(server.head(SNAP).to_string()),
    )
    .await;
    let (n, bad) = verify(&db, server, SNAP).await;
    if bad > 0 || boot.snapshots != 1 {
        failures.push(format!(
            "bootstrap: {bad} of {n} docs differ, {} snapshots",
            boot.snapshots
        ));
    }
    let bulk = raw_bulk_insert(server, dir.join("bulk.db"));
    rows.push(Row {
        name: format!("raw bulk insert of the {snapshot_docs} snapshot rows (1 tx)"),
        updates: snapshot_docs,
        time: bulk,
        rss_kib: None,
        note: String::new(),
    });
    rows.push(Row {
        name: format!(
            "khala-sync snapshot bootstrap, {snapshot_docs} docs (HTTP pages, hash verified)"
        ),
        updates: snapshot_docs,
        time: boot.elapsed,
        rss_kib: Some(boot.peak_rss_kib),
        note: format!(
            "{:.2}x the bulk insert; {}",
            bulk.as_secs_f64() / boot.elapsed.as_secs_f64(),
            boot.cpu_note()
        ),
    });
}

/// Exits with status 1 when any local copy differed from the server's.
fn exit_on_failures(failures: &[String]) {
    if !failures.is_empty() {
        eprintln!("CORRECTNESS FAILURES: {failures:?}");
        std::process::exit(1);
    }
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s[i.min(s.len() - 1)]
}

fn raw_bulk_insert(server: &DevServer, db: PathBuf) -> Duration {
    let docs = server.state(SNAP);
    let started = Instant::now();
    let mut conn = rusqlite::Connection::open(db).expect("db");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE docs(topic TEXT, doc_key TEXT, doc_version INTEGER, payload TEXT,
           payload_hash TEXT, watermark INTEGER, PRIMARY KEY(topic, doc_key)) WITHOUT ROWID;",
    )
    .expect("schema");
    let tx = conn.transaction().expect("tx");
    {
        let mut st = tx
            .prepare("INSERT INTO docs VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
            .expect("prepare");
        for d in &docs {
            st.execute(rusqlite::params![
                SNAP,
                d.doc_key,
                d.doc_version as i64,
                d.payload,
                d.payload_hash,
                d.watermark as i64
            ])
            .expect("insert");
        }
    }
    tx.commit().expect("commit");
    started.elapsed()
}

async fn node_old_stack(
    server: &DevServer,
    token: &str,
    dir: &Path,
    until: u64,
) -> Result<ChildResult, String> {
    let node_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("node");
    if !node_dir.join("node_modules/better-sqlite3").exists() {
        let st = tokio::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .env("npm_config_nodedir", "/usr")
            .current_dir(&node_dir)
            .status()
            .await
            .map_err(|e| format!("npm: {e}"))?;
        if !st.success() {
            return Err("npm install failed".into());
        }
    }
    let endpoint = format!("ws://{}/sync/socket", server.addr());
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(node_dir.join("consumer.mjs"))
        .arg(endpoint)
        .arg(token)
        .arg(dir.join("old.db"))
        .arg(ONE)
        .arg("1")
        .arg(until.to_string());
    Ok(run_child(&mut cmd).await)
}

async fn live_and_reconnect(server: &DevServer, dir: &Path, secs: u64) -> (Vec<f64>, Vec<f64>) {
    let client = SyncClient::builder(server.base_url())
        .app_bearer_token(DevServer::APP_TOKEN)
        .topics([Topic::new(LIVE).expect("topic")])
        .database_path(dir.join("live.db"))
        .options(bench_options())
        .build()
        .expect("client");
    let published: Arc<std::sync::Mutex<BTreeMap<u64, Instant>>> = Arc::default();
    let latencies: Arc<std::sync::Mutex<Vec<f64>>> = Arc::default();
    let mut changes = Box::pin(client.changes(Topic::new(LIVE).expect("topic")));
    let (p2, l2) = (published.clone(), latencies.clone());
    let watcher = tokio::spawn(async move {
        while let Some(c) = changes.next().await {
            if let Change::Upsert { watermark, .. } = c {
                let now = Instant::now();
                if let Some(at) = p2
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&watermark.get()).copied())
                {
                    if let Ok(mut l) = l2.lock() {
                        l.push((now - at).as_secs_f64() * 1e3);
                    }
                }
            }
        }
    });
    let mut rng = fastrand::Rng::with_seed(5);
    server.publish_raw(
        LIVE,
        &format!("{LIVE}/doc:first"),
        payload(&mut rng, 0).get(),
    );
    client.start().expect("start");
    while !client.current_status().is_live() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // 1k updates/s, one at a time, for `secs` seconds.
    let start = Instant::now();
    for i in 0..secs * 1_000 {
        let due = start + Duration::from_micros(i * 1_000);
        tokio::time::sleep_until(due.into()).await;
        let p = payload(&mut rng, i);
        // One publisher: the next watermark is head + 1. Record it before publishing so a
        // fast client cannot see the change before its timestamp exists.
        let next = server.head(LIVE) + 1;
        if let Ok(mut m) = published.lock() {
            m.insert(next, Instant::now());
        }
        server.publish_raw(
            LIVE,
            &format!("{LIVE}/doc:{:05}", rng.u64(0..10_000)),
            p.get(),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Reconnect-and-resume: restart the server's sockets, time connect → live at the head.
    let mut reconnects = Vec::new();
    let mut status = Box::pin(client.status());
    for _ in 0..5 {
        server.restart_connections();
        let mut connecting_at: Option<Instant> = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let Ok(Some(s)) = tokio::time::timeout(Duration::from_secs(1), status.next()).await
            else {
                continue;
            };
            if s.state == ConnectionState::Connecting && connecting_at.is_none() {
                connecting_at = Some(Instant::now());
            }
            if let Some(c) = connecting_at {
                if s.state == ConnectionState::Connected && s.is_live() {
                    reconnects.push(c.elapsed().as_secs_f64() * 1e3);
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client.shutdown().await;
    watcher.abort();
    let l = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    (l, reconnects)
}

fn wasm_size() -> Option<(u64, u64)> {
    // bindings-wasm/scripts/build.sh writes the browser build to pkg/web/.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bindings-wasm/pkg/web");
    let wasm = std::fs::read_dir(&root)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "wasm"))?;
    let raw = std::fs::metadata(&wasm).ok()?.len();
    let gz = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -9 -c '{}' | wc -c", wasm.display()))
        .output()
        .ok()?;
    let gz: u64 = String::from_utf8_lossy(&gz.stdout).trim().parse().ok()?;
    Some((raw, gz))
}
