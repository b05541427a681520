//! Reliability suites for khala-sync (issue "Reliability and security"): a seeded TCP fault
//! proxy, the chaos run (dialect P and dialect F), `kill -9` crash consistency and reconnect
//! storms. Each suite returns its figures; the CI tests (`tests/`) assert on them and the
//! `khala-chaos` binary runs the soak forms and prints the figure lines.

#![allow(clippy::expect_used)]

pub mod chaos;
pub mod chaos_f;
pub mod crash;
pub mod memory;
pub mod proxy;
pub mod slow_store;
pub mod storm;

use std::collections::BTreeMap;
use std::time::Duration;

use khala_dev_server::DevServer;
use khala_sync::{ClientOptions, SyncClient, Topic, TopicPhase};

/// Client options that retry quickly (tests), seeded jitter.
pub fn fast_options(seed: u64) -> ClientOptions {
    ClientOptions {
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(500),
        reconnect_spread: Duration::from_millis(100),
        jitter_seed: Some(seed),
        ..ClientOptions::default()
    }
}

/// How the client's copy of one topic differs from the server's.
#[derive(Debug, Default)]
pub struct Diff {
    /// Server documents compared.
    pub compared: u64,
    /// Server documents missing locally or different (version or canonical payload).
    pub lost: u64,
    /// Local documents the server does not have.
    pub extra: u64,
    /// The first few differences.
    pub first: Vec<String>,
}

/// Compares the client's copy of `topic` with the server's, document by document.
pub async fn compare(client: &SyncClient, server: &DevServer, topic: &str) -> Diff {
    let local = client
        .list(Topic::new(topic).expect("topic"))
        .await
        .expect("list");
    let local: BTreeMap<String, (u64, String)> = local
        .into_iter()
        .map(|d| {
            (
                d.doc_key.as_str().to_owned(),
                (d.doc_version, canonical(&d.payload)),
            )
        })
        .collect();
    let remote: BTreeMap<String, (u64, String)> = server
        .state(topic)
        .into_iter()
        .map(|d| (d.doc_key, (d.doc_version, canonical(&d.payload))))
        .collect();
    let mut diff = Diff {
        compared: remote.len() as u64,
        ..Diff::default()
    };
    for (k, v) in &remote {
        if local.get(k) != Some(v) {
            diff.lost += 1;
            if diff.first.len() < 5 {
                diff.first.push(format!(
                    "{topic}/{k}: server v{} local {:?}",
                    v.0,
                    local.get(k).map(|l| l.0)
                ));
            }
        }
    }
    for k in local.keys() {
        if !remote.contains_key(k) {
            diff.extra += 1;
            if diff.first.len() < 5 {
                diff.first.push(format!("{topic}/{k}: only local"));
            }
        }
    }
    diff
}

/// Waits until every topic of `client` is live at the server's head, or `timeout` passes;
/// returns whether it got there.
pub async fn wait_caught_up(client: &SyncClient, server: &DevServer, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let s = client.current_status();
        let done = s.is_live()
            && s.topics.iter().all(|t| {
                t.phase == TopicPhase::Live && t.watermark.get() == server.head(t.topic.as_str())
            });
        if done {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Canonical JSON text (payload comparison independent of key order and spacing).
pub fn canonical(raw: &str) -> String {
    khala_sync::protocol::hash::canonical_json(raw).unwrap_or_else(|_| raw.to_owned())
}
