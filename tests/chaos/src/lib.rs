//! Reliability suites for khala-sync (issue "Reliability and security"): a seeded TCP fault
//! proxy, the chaos run, `kill -9` crash consistency and reconnect storms. Each suite returns
//! its figures; the CI tests (`tests/`) assert on them and the `khala-chaos` binary runs the
//! soak forms and prints the figure lines.

#![allow(clippy::expect_used)]

pub mod chaos;
pub mod crash;
pub mod memory;
pub mod proxy;
pub mod slow_store;
pub mod storm;

use std::collections::BTreeMap;
use std::time::Duration;

use khala_dev_server::DevServer;
use khala_sync::{ClientOptions, SyncClient, Topic};

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

/// Compares the client's copy of `topic` with the server's: returns the number of documents
/// missing, extra or different, and the first few of them.
pub async fn compare(client: &SyncClient, server: &DevServer, topic: &str) -> (u64, Vec<String>) {
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
    let mut bad = 0u64;
    let mut first = Vec::new();
    for (k, v) in &remote {
        if local.get(k) != Some(v) {
            bad += 1;
            if first.len() < 5 {
                first.push(format!(
                    "{topic}/{k}: server v{} local {:?}",
                    v.0,
                    local.get(k).map(|l| l.0)
                ));
            }
        }
    }
    for k in local.keys() {
        if !remote.contains_key(k) {
            bad += 1;
            if first.len() < 5 {
                first.push(format!("{topic}/{k}: only local"));
            }
        }
    }
    (bad, first)
}

/// Canonical JSON text (payload comparison independent of key order and spacing).
pub fn canonical(raw: &str) -> String {
    khala_sync::protocol::hash::canonical_json(raw).unwrap_or_else(|_| raw.to_owned())
}
