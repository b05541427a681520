//! Dialect F liveness: a topic WebSocket whose network path dies silently (no close, no reset:
//! the proxy swallows every byte both ways) must be noticed — the protocol has no client
//! messages, but the runtime answers WebSocket pings — and resumed without losing a message.
//! An idle but healthy socket (pongs come back) must *not* be dropped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use khala_chaos::proxy::{FaultProxy, ProxyConfig};
use khala_dev_server::{DevServer, DevServerConfig, FanoutRequestKind};
use khala_sync::{ClientOptions, Dialect, FanoutTransport, SyncClient, Topic, TopicPhase};

const RUN: &str = "run:liveness:events";

fn websocket_opens(server: &DevServer) -> usize {
    server
        .fanout_requests()
        .iter()
        .filter(|r| r.topic == RUN && r.kind == FanoutRequestKind::WebSocket)
        .count()
}

async fn wait_live_at(client: &SyncClient, head: u64, within: Duration, what: &str) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let s = client.current_status();
        let t = &s.topics[0];
        if t.phase == TopicPhase::Live && t.watermark.get() == head {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not live at {head} within {within:?}; status {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_topic_socket_is_detected_by_ping_and_resumed() {
    let server = DevServer::start(DevServerConfig {
        phoenix_enabled: false,
        ..DevServerConfig::default()
    })
    .await
    .unwrap();
    server.create_run("liveness");
    for i in 1..5 {
        server.publish_event(RUN, "run.step", serde_json::json!({ "step": i }));
    }
    let proxy = FaultProxy::start(server.addr(), ProxyConfig::clean(7))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let heartbeat = Duration::from_millis(300);
    let dead_after = Duration::from_millis(1_200);
    let client = SyncClient::builder(proxy.base_url())
        .app_bearer_token(DevServer::APP_TOKEN)
        .topics([Topic::new(RUN).unwrap()])
        .database_path(dir.path().join("f.db"))
        .options(ClientOptions {
            dialect: Dialect::Fanout,
            fanout_transport: FanoutTransport::WebSocket,
            heartbeat_interval: heartbeat,
            dead_after,
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_millis(200),
            jitter_seed: Some(7),
            ..ClientOptions::default()
        })
        .build()
        .unwrap();
    client.start().unwrap();
    wait_live_at(&client, 5, Duration::from_secs(10), "first sync").await;
    assert_eq!(websocket_opens(&server), 1);

    // Idle but healthy for three dead_after periods: pings are answered, the socket stays.
    tokio::time::sleep(dead_after * 3).await;
    assert_eq!(
        websocket_opens(&server),
        1,
        "an idle socket whose pings are answered was dropped; status {:#?}",
        client.current_status()
    );

    // The path dies: nothing arrives any more, nothing the client sends gets through.
    proxy.freeze_websockets();
    let frozen_at = tokio::time::Instant::now();
    for i in 5..8 {
        server.publish_event(RUN, "run.step", serde_json::json!({ "step": i }));
    }
    // Noticed after dead_after of silence, resumed on a new socket after the last message
    // received: every message arrives exactly once.
    wait_live_at(&client, 8, Duration::from_secs(10), "after the path died").await;
    let took = frozen_at.elapsed();
    assert_eq!(websocket_opens(&server), 2, "one new socket");
    assert!(
        took >= dead_after.saturating_sub(heartbeat),
        "resumed after {took:?}: sooner than the silence allows"
    );
    let docs = client.list(Topic::new(RUN).unwrap()).await.unwrap();
    let events = server.events(RUN);
    assert_eq!(docs.len(), events.len());
    for (d, e) in docs.iter().zip(&events) {
        assert_eq!(d.doc_version, e.sequence);
    }
    eprintln!("dead socket noticed and resumed {took:?} after the path died");
    client.shutdown().await;
}
