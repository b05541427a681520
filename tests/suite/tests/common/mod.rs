//! Shared helpers: start the dev server, build fast-retrying clients, wait for convergence,
//! and compare every local document with the server's.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use khala_dev_server::{DevServer, DevServerConfig};
use khala_sync::{ClientOptions, SyncClient, SyncStatus, Topic, TopicPhase};

pub const RUNS: &str = "runtime.run_summaries";
pub const WORKERS: &str = "runtime.codex_worker_summaries";

pub fn topic(name: &str) -> Topic {
    Topic::new(name).unwrap()
}

pub fn fast_config() -> DevServerConfig {
    DevServerConfig {
        heartbeat_interval: Duration::from_secs(5),
        reauth_close_delay: Duration::from_millis(500),
        ..DevServerConfig::default()
    }
}

pub async fn server(cfg: DevServerConfig) -> DevServer {
    DevServer::start(cfg).await.expect("dev server starts")
}

pub fn fast_options() -> ClientOptions {
    ClientOptions {
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(500),
        reconnect_spread: Duration::from_millis(100),
        jitter_seed: Some(7),
        ..ClientOptions::default()
    }
}

pub fn client(server: &DevServer, topics: &[&str], db: &Path) -> SyncClient {
    client_with(server, topics, db, DevServer::APP_TOKEN, fast_options())
}

pub fn client_with(
    server: &DevServer,
    topics: &[&str],
    db: &Path,
    app_token: &str,
    options: ClientOptions,
) -> SyncClient {
    let b = SyncClient::builder(server.base_url())
        .app_bearer_token(app_token)
        .topics(topics.iter().map(|t| topic(t)))
        .options(options);
    let b = if std::env::var_os("KHALA_TEST_MEMORY").is_some() {
        b.in_memory()
    } else {
        b.database_path(db)
    };
    b.build().expect("client builds")
}

/// Publishes `n` documents spread over `topics`, ~200-byte payloads.
pub fn seed(server: &DevServer, topics: &[&str], n: usize, version_tag: u64) {
    for i in 0..n {
        let t = topics[i % topics.len()];
        server.publish(
            t,
            &format!("{t}/doc:{i:06}"),
            serde_json::json!({"i": i, "tag": version_tag, "status": "running", "title": format!("document number {i}"), "labels": ["a", "b"]}),
        );
    }
}

/// Waits until every non-failed topic is live and its committed watermark equals the
/// server's head.
pub async fn wait_caught_up(
    client: &SyncClient,
    server: &DevServer,
    timeout: Duration,
) -> SyncStatus {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let s = client.current_status();
        let done = s.is_live()
            && s.topics.iter().all(|t| {
                t.phase == TopicPhase::Failed || t.watermark.get() == server.head(t.topic.as_str())
            });
        if done {
            return s;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "not caught up after {timeout:?}: {s:#?}\nmetrics: {:#?}",
                client.metrics()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A previous app session: sync `db` up to the server's head, then shut down cleanly.
pub async fn sync_once(server: &DevServer, topics: &[&str], db: &Path, timeout: Duration) {
    let c = client(server, topics, db);
    c.start().expect("client starts");
    wait_caught_up(&c, server, timeout).await;
    c.shutdown().await;
}

/// Asserts the local copy of `topic` equals the server's: same keys, versions, hashes,
/// payloads; nothing missing, nothing extra.
pub async fn assert_converged(client: &SyncClient, server: &DevServer, topic_name: &str) {
    let local = client.list(topic(topic_name)).await.expect("list");
    let local: BTreeMap<String, (u64, String, String)> = local
        .into_iter()
        .map(|d| {
            (
                d.doc_key.as_str().to_owned(),
                (
                    d.doc_version,
                    d.payload_hash.map(|h| h.to_base64()).unwrap_or_default(),
                    canonical(&d.payload),
                ),
            )
        })
        .collect();
    let remote: BTreeMap<String, (u64, String, String)> = server
        .state(topic_name)
        .into_iter()
        .map(|d| {
            (
                d.doc_key,
                (d.doc_version, d.payload_hash, canonical(&d.payload)),
            )
        })
        .collect();
    let missing: Vec<_> = remote
        .keys()
        .filter(|k| !local.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = local
        .keys()
        .filter(|k| !remote.contains_key(*k))
        .take(5)
        .collect();
    let differ: Vec<_> = remote
        .iter()
        .filter(|(k, v)| local.get(*k).is_some_and(|l| l != *v))
        .map(|(k, _)| k)
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "{topic_name}: local {} docs vs server {}; missing {missing:?}, extra {extra:?}, differ {differ:?}",
        local.len(),
        remote.len()
    );
    assert!(!remote.is_empty() || local.is_empty());
}

fn canonical(raw: &str) -> String {
    khala_sync::protocol::hash::canonical_json(raw).unwrap_or_else(|_| raw.to_owned())
}
