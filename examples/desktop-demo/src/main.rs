//! `khala-sync-demo`: syncs Khala topics into a local SQLite file, showing bootstrap/replay
//! progress and then live changes.
//!
//! With no `--server` it starts the reference dev server in-process on a free loopback port,
//! with seeded documents and a live generator. The demo keeps that server's publish log next
//! to the database (`<db>.devserver.jsonl`) and replays it into the next run's server, so a
//! second run sees the same topic history and resumes from its watermark without a snapshot.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use khala_dev_server::{DevServer, DevServerConfig};
use khala_sync::store::{SqliteOptions, SqliteStore, Store};
use khala_sync::{
    Change, ClientOptions, ConnectionState, Dialect, FanoutTransport, SyncClient, SyncStatus,
    Topic, TopicPhase,
};
use serde_json::json;

/// Loopback port of the in-process dev server.
const DEMO_PORT: u16 = 47_010;
const DEFAULT_TOPICS: &str = "runtime.run_summaries,runtime.codex_worker_summaries";

#[derive(Parser, Debug)]
#[command(
    name = "khala-sync-demo",
    about = "Sync Khala topics into a local SQLite database"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Khala server base URL (default: start a dev server in-process).
    #[arg(long)]
    server: Option<String>,
    /// App credential for the token route (`Authorization: Bearer <token>`).
    #[arg(long)]
    app_token: Option<String>,
    /// Comma-separated topics.
    #[arg(long, default_value = DEFAULT_TOPICS)]
    topics: String,
    /// Database file.
    #[arg(long, default_value = "khala-demo.db")]
    db: PathBuf,
    /// Exit 0 once every topic is live at the head it saw.
    #[arg(long)]
    until_caught_up: bool,
    /// Print status and changes as NDJSON on stdout.
    #[arg(long)]
    json: bool,
    /// In-process dev server: documents to seed on first run.
    #[arg(long, default_value_t = 5000)]
    seed_docs: usize,
    /// In-process dev server: live updates per second.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Allow http:// to a non-loopback server (testing only).
    #[arg(long)]
    allow_insecure: bool,
    /// Wire dialect: `phoenix` (one socket, PROTOCOL.md §2), `fanout` (per-topic socket or
    /// poll, §6) or `auto` (Phoenix, fanout when the server has no Phoenix route).
    #[arg(long, value_enum, default_value_t = DialectArg::Auto)]
    dialect: DialectArg,
    /// Dialect F transport: `auto` (WebSocket, poll when it cannot be opened), `websocket`,
    /// `poll`.
    #[arg(long, value_enum, default_value_t = TransportArg::Auto)]
    transport: TransportArg,
    /// Use this sync token (JWT) as is instead of calling the token route.
    #[arg(long)]
    sync_token: Option<String>,
    /// Token route URL, when it is not `<server>/api/sync/token`.
    #[arg(long)]
    token_url: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum DialectArg {
    Phoenix,
    Fanout,
    Auto,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum TransportArg {
    Auto,
    Websocket,
    Poll,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print stored documents as NDJSON sorted by topic then doc_key, then the watermarks.
    Dump {
        /// Database file.
        #[arg(long)]
        db: PathBuf,
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KHALA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async move {
        match &cli.command {
            Some(Cmd::Dump { db, topic }) => dump(db, topic.as_deref()).await,
            None => run(&cli).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn parse_topics(s: &str) -> Result<Vec<Topic>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| Topic::new(t).map_err(|e| format!("{t:?}: {e}")))
        .collect()
}

async fn run(cli: &Cli) -> Result<(), String> {
    let topics = parse_topics(&cli.topics)?;
    let mut local_server = None;
    let (base_url, app_token) = match &cli.server {
        Some(url) => (
            url.clone(),
            match (&cli.app_token, &cli.sync_token) {
                (Some(t), _) => t.clone(),
                (None, Some(_)) => String::new(),
                (None, None) => {
                    return Err("--app-token or --sync-token is required with --server".into())
                }
            },
        ),
        None => {
            let server = start_local_server(cli, &topics).await?;
            let url = server.0.base_url();
            if !cli.json {
                eprintln!("dev server: {url} (app token {})", DevServer::APP_TOKEN);
            }
            local_server = Some(server);
            (url, DevServer::APP_TOKEN.to_owned())
        }
    };
    let options = ClientOptions {
        allow_insecure_non_loopback: cli.allow_insecure,
        client_name: "khala-sync-demo".into(),
        dialect: match cli.dialect {
            DialectArg::Phoenix => Dialect::Phoenix,
            DialectArg::Fanout => Dialect::Fanout,
            DialectArg::Auto => Dialect::Auto,
        },
        fanout_transport: match cli.transport {
            TransportArg::Auto => FanoutTransport::Auto,
            TransportArg::Websocket => FanoutTransport::WebSocket,
            TransportArg::Poll => FanoutTransport::Poll,
        },
        token_url: cli.token_url.clone(),
        ..ClientOptions::default()
    };
    let mut builder = SyncClient::builder(base_url)
        .app_bearer_token(app_token)
        .topics(topics.clone())
        .database_path(&cli.db)
        .options(options);
    if let Some(t) = &cli.sync_token {
        builder = builder.sync_token(t.clone());
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let mut changes = Box::pin(client.all_changes());
    let mut statuses = Box::pin(client.status());
    client.start().map_err(|e| e.to_string())?;

    let generator = local_server
        .as_ref()
        .filter(|_| cli.rate > 0.0)
        .map(|(s, log)| {
            tokio::spawn(live_generator(
                s.clone(),
                log.clone(),
                topics.clone(),
                cli.rate,
            ))
        });

    let mut last_line = String::new();
    let outcome: Result<(), String> = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break Ok(()),
            s = statuses.next() => {
                let Some(s) = s else { break Err("client stopped".into()) };
                if cli.json {
                    println!("{}", status_json(&s));
                } else {
                    let line = status_line(&s);
                    if line != last_line {
                        eprint!("\r\x1b[2K{line}");
                        last_line = line;
                    }
                }
                match s.state {
                    ConnectionState::AuthFailed | ConnectionState::UpgradeRequired | ConnectionState::Stopped => {
                        let why = s.last_error.map(|e| e.to_string()).unwrap_or_default();
                        break Err(format!("sync stopped: {why}"));
                    }
                    _ => {}
                }
                if cli.until_caught_up && caught_up(&s) {
                    break Ok(());
                }
            }
            c = changes.next() => {
                let Some(c) = c else { break Err("client stopped".into()) };
                if cli.json {
                    println!("{}", change_json(&c));
                } else if !matches!(client.current_status().topics.iter().find(|t| t.topic == *c.topic()).map(|t| t.phase), Some(TopicPhase::Replaying)) {
                    eprintln!("\r\x1b[2K{}", change_line(&c));
                    eprint!("{last_line}");
                }
            }
        }
    };
    if let Some(g) = generator {
        g.abort();
    }
    client.shutdown().await;
    let m = client.metrics();
    if cli.json {
        println!(
            "{}",
            json!({"type": "metrics", "updates_applied": m.updates_applied, "duplicates_skipped": m.duplicates_skipped,
                   "gaps": m.gaps, "hash_mismatches": m.hash_mismatches, "stale_cursors": m.stale_cursors,
                   "snapshots": m.snapshots, "snapshot_docs": m.snapshot_docs, "reconnects": m.reconnects,
                   "catch_up_ms": m.catch_up_ms})
        );
    } else {
        eprintln!(
            "\nsynced: {} updates applied, {} snapshot(s) ({} docs), {} duplicates skipped, {} gaps healed, {} reconnects",
            m.updates_applied, m.snapshots, m.snapshot_docs, m.duplicates_skipped, m.gaps, m.reconnects
        );
    }
    if let Some((server, _)) = local_server {
        server.shutdown().await;
    }
    outcome
}

fn caught_up(s: &SyncStatus) -> bool {
    s.is_live()
        && s.topics
            .iter()
            .all(|t| t.phase == TopicPhase::Failed || t.head.is_none_or(|h| t.watermark >= h))
}

/// The in-process server and its publish log (replayed on the next run).
type LocalServer = (DevServer, std::sync::Arc<std::sync::Mutex<std::fs::File>>);

async fn start_local_server(cli: &Cli, topics: &[Topic]) -> Result<LocalServer, String> {
    // A fixed port keeps the server origin — part of the database's identity — the same
    // across runs, so the next run resumes instead of re-bootstrapping.
    let config = DevServerConfig {
        port: DEMO_PORT,
        seed_docs: 0,
        rate_per_sec: 0.0,
        ..DevServerConfig::default()
    };
    let server = match DevServer::start(config.clone()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("port {DEMO_PORT} busy ({e}); using an ephemeral port (the next run will re-bootstrap)");
            DevServer::start(DevServerConfig { port: 0, ..config })
                .await
                .map_err(|e| format!("cannot start dev server: {e}"))?
        }
    };
    let log_path = log_path(&cli.db);
    let mut replayed = 0usize;
    if let Ok(f) = std::fs::File::open(&log_path) {
        for line in std::io::BufReader::new(f).lines() {
            let line = line.map_err(|e| e.to_string())?;
            let v: serde_json::Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(_) => continue, // a torn last line from a killed run
            };
            if let (Some(t), Some(true)) = (v["topic"].as_str(), v["event"].as_bool()) {
                server.publish_event(
                    t,
                    v["kind"].as_str().unwrap_or("run.step"),
                    v["payload"].clone(),
                );
                replayed += 1;
                continue;
            }
            let (Some(t), Some(k)) = (v["topic"].as_str(), v["doc_key"].as_str()) else {
                continue;
            };
            if v["deleted"].as_bool() == Some(true) {
                server.delete(t, k);
            } else {
                server.publish(t, k, v["payload"].clone());
            }
            replayed += 1;
        }
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let log = std::sync::Arc::new(std::sync::Mutex::new(file));
    if replayed == 0 && cli.seed_docs > 0 {
        let mut rng = fastrand_like(42);
        for i in 0..cli.seed_docs {
            let topic = &topics[i % topics.len()];
            let key = doc_key(topic, i);
            let payload = sample_payload(&mut rng, i, 1);
            publish(&server, &log, topic.as_str(), &key, payload);
        }
    }
    Ok((server, log))
}

fn log_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".devserver.jsonl");
    PathBuf::from(p)
}

/// Dialect F event-log topics (PROTOCOL.md §6): `run:<id>:events`, `worker:<id>:lifecycle`.
fn is_event_topic(topic: &str) -> bool {
    (topic.starts_with("run:") && topic.ends_with(":events"))
        || (topic.starts_with("worker:") && topic.ends_with(":lifecycle"))
}

/// Publishes on the in-process server (a document, or an event on an event-log topic) and
/// records it for the next run.
fn publish(
    server: &DevServer,
    log: &std::sync::Mutex<std::fs::File>,
    topic: &str,
    key: &str,
    payload: serde_json::Value,
) {
    if is_event_topic(topic) {
        let line = json!({"topic": topic, "event": true, "kind": "run.step", "payload": payload});
        if let Ok(mut f) = log.lock() {
            let _ = writeln!(f, "{line}");
        }
        server.publish_event(topic, "run.step", payload);
    } else {
        record(log, topic, key, Some(&payload));
        server.publish(topic, key, payload);
    }
}

fn record(
    log: &std::sync::Mutex<std::fs::File>,
    topic: &str,
    key: &str,
    payload: Option<&serde_json::Value>,
) {
    let line = match payload {
        Some(p) => json!({"topic": topic, "doc_key": key, "payload": p}),
        None => json!({"topic": topic, "doc_key": key, "deleted": true}),
    };
    if let Ok(mut f) = log.lock() {
        let _ = writeln!(f, "{line}");
    }
}

fn doc_key(topic: &Topic, i: usize) -> String {
    match topic.as_str() {
        "runtime.run_summaries" => format!("runtime/run_summary:{i:08x}"),
        "runtime.codex_worker_summaries" => format!("runtime/codex_worker_summary:{i:08x}"),
        "runtime.codex_worker_events" => format!("runtime/codex_worker_event:{:04x}:{i}", i % 97),
        other => format!("{other}/doc:{i:08x}"),
    }
}

/// Tiny deterministic generator (xorshift) so seeded data is the same on every machine.
struct XorShift(u64);

fn fastrand_like(seed: u64) -> XorShift {
    XorShift(seed.max(1))
}

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn sample_payload(rng: &mut XorShift, i: usize, version: u64) -> serde_json::Value {
    const STATUS: [&str; 4] = ["queued", "running", "succeeded", "failed"];
    json!({
        "run_id": format!("run_{i:08x}"),
        "status": STATUS[(rng.next() % 4) as usize],
        "version": version,
        "steps": rng.next() % 50,
        "tokens": rng.next() % 100_000,
        "title": format!("Demo run {i}"),
        "labels": ["demo", "khala-sync"],
    })
}

async fn live_generator(
    server: DevServer,
    log: std::sync::Arc<std::sync::Mutex<std::fs::File>>,
    topics: Vec<Topic>,
    rate: f64,
) {
    let mut rng = fastrand_like(std::process::id() as u64 + 7);
    let period = Duration::from_secs_f64(1.0 / rate.max(0.01));
    let mut tick = tokio::time::interval(period);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        let topic = &topics[(rng.next() as usize) % topics.len()];
        let i = (rng.next() % 200) as usize;
        let key = doc_key(topic, i);
        if n % 25 == 0 && !is_event_topic(topic.as_str()) {
            record(&log, topic.as_str(), &key, None);
            server.delete(topic.as_str(), &key);
        } else {
            let payload = sample_payload(&mut rng, i, n + 1);
            publish(&server, &log, topic.as_str(), &key, payload);
        }
    }
}

fn status_line(s: &SyncStatus) -> String {
    let topics: Vec<String> = s
        .topics
        .iter()
        .map(|t| {
            let head = t.head.map_or("?".to_owned(), |h| h.to_string());
            let detail = match t.phase {
                TopicPhase::Bootstrapping => format!("snapshot {} docs", t.snapshot_docs),
                TopicPhase::Replaying | TopicPhase::Subscribing => {
                    let pct = t.replay_progress.map_or(0.0, |p| p * 100.0);
                    format!("{} {:>5.1}% {}/{}", bar(pct), pct, t.watermark, head)
                }
                TopicPhase::Live => format!("live @{}", t.watermark),
                TopicPhase::Failed => format!(
                    "failed: {}",
                    t.error.as_ref().map(|e| e.code()).unwrap_or("?")
                ),
                TopicPhase::Idle => format!("idle @{}", t.watermark),
            };
            format!("{} [{detail}]", t.topic)
        })
        .collect();
    format!("{:?} | {}", s.state, topics.join(" | "))
}

fn bar(pct: f32) -> String {
    let filled = ((pct / 100.0) * 20.0).round() as usize;
    format!(
        "[{}{}]",
        "#".repeat(filled.min(20)),
        ".".repeat(20 - filled.min(20))
    )
}

fn change_line(c: &Change) -> String {
    match c {
        Change::Upsert {
            topic,
            doc_key,
            doc_version,
            payload,
            watermark,
        } => {
            let mut p = payload.clone();
            if p.len() > 80 {
                let mut cut = 80;
                while !p.is_char_boundary(cut) {
                    cut -= 1;
                }
                p.truncate(cut);
                p.push('…');
            }
            format!("{topic} #{watermark} upsert {doc_key} v{doc_version} {p}")
        }
        Change::Delete {
            topic,
            doc_key,
            watermark,
        } => format!("{topic} #{watermark} delete {doc_key}"),
        Change::Bootstrapped {
            topic,
            watermark,
            docs,
        } => {
            format!("{topic} bootstrapped from snapshot: {docs} docs @{watermark}")
        }
        Change::Truncated { topic, from, to } => format!(
            "{topic} TRUNCATED: messages {from}..={to} were evicted by the server before they could be fetched"
        ),
    }
}

fn status_json(s: &SyncStatus) -> serde_json::Value {
    json!({
        "type": "status",
        "state": format!("{:?}", s.state),
        "last_error": s.last_error.as_ref().map(|e| json!({"code": e.code(), "message": e.to_string()})),
        "topics": s.topics.iter().map(|t| json!({
            "topic": t.topic.as_str(),
            "phase": format!("{:?}", t.phase),
            "watermark": t.watermark.get(),
            "head": t.head.map(|h| h.get()),
            "replay_progress": t.replay_progress,
            "snapshot_docs": t.snapshot_docs,
        })).collect::<Vec<_>>(),
    })
}

fn change_json(c: &Change) -> serde_json::Value {
    match c {
        Change::Upsert {
            topic,
            doc_key,
            doc_version,
            payload,
            watermark,
        } => json!({
            "type": "change", "kind": "upsert", "topic": topic.as_str(), "doc_key": doc_key.as_str(),
            "doc_version": doc_version, "watermark": watermark.get(),
            "payload": serde_json::from_str::<serde_json::Value>(payload).unwrap_or(serde_json::Value::Null),
        }),
        Change::Delete {
            topic,
            doc_key,
            watermark,
        } => json!({
            "type": "change", "kind": "delete", "topic": topic.as_str(), "doc_key": doc_key.as_str(),
            "watermark": watermark.get(),
        }),
        Change::Bootstrapped {
            topic,
            watermark,
            docs,
        } => json!({
            "type": "change", "kind": "bootstrapped", "topic": topic.as_str(), "watermark": watermark.get(), "docs": docs,
        }),
        Change::Truncated { topic, from, to } => json!({
            "type": "change", "kind": "truncated", "topic": topic.as_str(), "from": from.get(), "to": to.get(),
        }),
    }
}

async fn dump(db: &Path, topic: Option<&str>) -> Result<(), String> {
    if !db.exists() {
        return Err(format!("{} does not exist", db.display()));
    }
    let store = SqliteStore::open(db, SqliteOptions::default()).map_err(|e| e.to_string())?;
    let mut marks = store.watermarks().await.map_err(|e| e.to_string())?;
    marks.sort();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for (t, _) in &marks {
        if topic.is_some_and(|want| want != t.as_str()) {
            continue;
        }
        let mut docs = store.list(t.clone()).await.map_err(|e| e.to_string())?;
        // Event logs (dialect F) are keyed by sequence: list them in sequence order.
        if docs
            .iter()
            .all(|d| d.doc_key.as_str().parse::<u64>().is_ok())
        {
            docs.sort_by_key(|d| d.doc_key.as_str().parse::<u64>().unwrap_or(0));
        }
        for d in docs {
            // The stored payload text as is (numbers such as -0.0 or 2^53+1 stay exact).
            let payload = serde_json::value::RawValue::from_string(d.payload)
                .map_err(|e| format!("stored payload is not JSON: {e}"))?;
            let line = json!({
                "topic": d.topic.as_str(),
                "doc_key": d.doc_key.as_str(),
                "doc_version": d.doc_version,
                "payload_hash": d.payload_hash.map(|h| h.to_base64()),
                "payload": payload,
            });
            writeln!(out, "{line}").map_err(|e| e.to_string())?;
        }
    }
    for (t, w) in &marks {
        if topic.is_some_and(|want| want != t.as_str()) {
            continue;
        }
        writeln!(
            out,
            "{}",
            json!({"topic": t.as_str(), "watermark": w.get()})
        )
        .map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())
}
