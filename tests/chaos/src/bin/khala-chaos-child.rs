//! The process the crash test kills: syncs `--topics` from `--server` into `--db` until killed,
//! printing each topic phase change as one stdout line (`bootstrapping`, `replaying`, `live`…).
//! `--slow-apply-ms N` wraps the SQLite store in [`khala_chaos::slow_store::SlowStore`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use khala_sync::store::{SqliteOptions, SqliteStore};
use khala_sync::{ClientOptions, SyncClient, Topic, TopicPhase};

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == name {
            return args.next();
        }
    }
    None
}

fn phase_name(p: TopicPhase) -> &'static str {
    match p {
        TopicPhase::Idle => "idle",
        TopicPhase::Bootstrapping => "bootstrapping",
        TopicPhase::Subscribing => "subscribing",
        TopicPhase::Replaying => "replaying",
        TopicPhase::Live => "live",
        TopicPhase::Failed => "failed",
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = arg("--server").ok_or("--server URL required")?;
    let db = arg("--db").ok_or("--db PATH required")?;
    let topics = arg("--topics").ok_or("--topics a,b required")?;
    let topics: Vec<Topic> = topics
        .split(',')
        .map(Topic::new)
        .collect::<Result<_, _>>()?;
    let builder = SyncClient::builder(server)
        .app_bearer_token("dev-app-token")
        .topics(topics);
    // `--slow-apply-ms N`: every applied batch takes N ms more (bounded-memory test).
    let builder = match arg("--slow-apply-ms").and_then(|v| v.parse::<u64>().ok()) {
        Some(ms) => {
            let sqlite = SqliteStore::open(&db, SqliteOptions::default())?;
            builder.store(Arc::new(khala_chaos::slow_store::SlowStore::new(
                Arc::new(sqlite),
                Duration::from_millis(ms),
            )))
        }
        None => builder.database_path(db),
    };
    let client = builder
        .options(ClientOptions {
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_millis(500),
            reconnect_spread: Duration::from_millis(100),
            snapshot_page_limit: 500,
            ..ClientOptions::default()
        })
        .build()?;
    let mut status = Box::pin(client.status());
    client.start()?;
    let mut last = String::new();
    while let Some(s) = status.next().await {
        // The "most advanced unfinished" phase wins: a snapshot in progress is what matters.
        let rank = |p: TopicPhase| match p {
            TopicPhase::Bootstrapping => 5,
            TopicPhase::Replaying => 4,
            TopicPhase::Subscribing => 3,
            TopicPhase::Idle => 2,
            TopicPhase::Live => 1,
            TopicPhase::Failed => 0,
        };
        let phase = s
            .topics
            .iter()
            .map(|t| t.phase)
            .max_by_key(|p| rank(*p))
            .map_or("idle", phase_name);
        if phase != last {
            println!("{phase}");
            last = phase.to_owned();
        }
    }
    Ok(())
}
