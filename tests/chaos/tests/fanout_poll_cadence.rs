//! Dialect F poll cadence when a poll's answer is lost on the way back (found by the
//! dialect-F chaos run, `chaos_f.rs`): the server counted the poll, so the retry must still
//! wait the server's 250 ms interval (PROTOCOL.md §6.1: a poll sooner than that is `429`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use khala_chaos::proxy::{FaultProxy, ProxyConfig};
use khala_dev_server::{DevServer, DevServerConfig, FanoutRequestKind};
use khala_sync::{ClientOptions, Dialect, FanoutTransport, SyncClient, Topic};

const RUN: &str = "run:cadence:events";

/// Every poll goes through a proxy that holds the answer back (stall); 20 ms after the server
/// answered (and counted) a poll the test cuts every connection, so the client sees a
/// transport error for a poll the server counted. Five rounds. The token route is reached
/// directly. Backoff 100–200 ms (production: first window 0–250 ms, full jitter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_retry_after_a_lost_answer_waits_the_server_interval() {
    let server = DevServer::start(DevServerConfig {
        phoenix_enabled: false,
        ..DevServerConfig::default()
    })
    .await
    .unwrap();
    server.create_run("cadence");
    for i in 0..20 {
        server.publish_event(RUN, "run.step", serde_json::json!({ "step": i }));
    }
    let proxy = FaultProxy::start(
        server.addr(),
        ProxyConfig {
            stall: 1.0,
            drop_within_bytes: 0,
            max_stall: Duration::from_secs(60),
            ..ProxyConfig::clean(1)
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = SyncClient::builder(proxy.base_url())
        .app_bearer_token(DevServer::APP_TOKEN)
        .topics([Topic::new(RUN).unwrap()])
        .database_path(dir.path().join("cadence.db"))
        .options(ClientOptions {
            dialect: Dialect::Fanout,
            fanout_transport: FanoutTransport::Poll,
            token_url: Some(format!("{}/api/sync/token", server.base_url())),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(200),
            jitter_seed: Some(1),
            ..ClientOptions::default()
        })
        .build()
        .unwrap();
    client.start().unwrap();
    let answered = || {
        server
            .fanout_requests()
            .iter()
            .filter(|r| r.kind == FanoutRequestKind::Poll && r.status == 200)
            .count()
    };
    for _ in 0..5 {
        let before = answered();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while answered() == before && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        proxy.drop_all();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.shutdown().await;

    let polls: Vec<_> = server
        .fanout_requests()
        .into_iter()
        .filter(|r| r.topic == RUN && r.kind == FanoutRequestKind::Poll && r.status != 401)
        .collect();
    let statuses: Vec<u16> = polls.iter().map(|r| r.status).collect();
    let gaps_ms: Vec<u128> = polls
        .windows(2)
        .map(|w| w[1].at.saturating_duration_since(w[0].at).as_millis())
        .collect();
    eprintln!("poll statuses {statuses:?}, gaps {gaps_ms:?} ms");
    assert!(polls.len() >= 3, "the scenario did not run: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s != 429),
        "rate limited: statuses {statuses:?}, gaps {gaps_ms:?} ms"
    );
    assert!(
        gaps_ms.iter().all(|g| *g >= 250),
        "polls closer than the server's 250 ms: gaps {gaps_ms:?} ms, statuses {statuses:?}"
    );
}
