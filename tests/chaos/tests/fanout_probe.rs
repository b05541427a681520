//! Dialect F: the head probe of a WebSocket topic (a `limit=1` poll, §6.1 "the WS tells no
//! head") answered `409 slow_consumer_evicted`. Poll strikes are per (subject, topic) on the
//! server, so probes of earlier client instances of the same principal count: the third
//! probe from far behind is refused. The topic must still become live once caught up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use khala_dev_server::{DevServer, DevServerConfig, FanoutRequestKind};
use khala_sync::{ClientOptions, Dialect, FanoutTransport, SyncClient, Topic, TopicPhase};

const RUN: &str = "run:probe:events";

fn client(server: &DevServer, db: &std::path::Path) -> SyncClient {
    SyncClient::builder(server.base_url())
        .app_bearer_token(DevServer::APP_TOKEN)
        .topics([Topic::new(RUN).unwrap()])
        .database_path(db)
        .options(ClientOptions {
            dialect: Dialect::Fanout,
            fanout_transport: FanoutTransport::WebSocket,
            jitter_seed: Some(3),
            ..ClientOptions::default()
        })
        .build()
        .unwrap()
}

fn probes(server: &DevServer) -> Vec<u16> {
    server
        .fanout_requests()
        .iter()
        .filter(|r| r.topic == RUN && r.kind == FanoutRequestKind::Poll)
        .map(|r| r.status)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_topic_whose_head_probe_got_409_still_goes_live() {
    let server = DevServer::start(DevServerConfig {
        phoenix_enabled: false,
        ..DevServerConfig::default()
    })
    .await
    .unwrap();
    server.create_run("probe");
    // 420 behind from 0: every probe from 0 is a strike (lag > 300); a WebSocket replay in
    // batches of 200 is struck once, then cleared (no eviction, so no reconnect).
    for i in 1..420 {
        server.publish_event(RUN, "run.step", serde_json::json!({ "step": i }));
    }
    let dir = tempfile::tempdir().unwrap();
    // Two earlier instances (fresh files), one probe each: strikes 1 and 2.
    for n in 0..2 {
        let c = client(&server, &dir.path().join(format!("early-{n}.db")));
        c.start().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while probes(&server).len() < n + 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        c.shutdown().await;
        // The server's poll window (250 ms) is per (subject, topic).
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(probes(&server), [200, 200], "two probes answered");

    let c = client(&server, &dir.path().join("third.db"));
    c.start().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.current_status();
        let t = &s.topics[0];
        if t.phase == TopicPhase::Live && t.watermark.get() == server.event_head(RUN) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not live at head {} after 10 s; probes {:?}; status {s:#?}",
            server.event_head(RUN),
            probes(&server)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = probes(&server);
    eprintln!("probes {seen:?}");
    assert_eq!(
        seen.get(2),
        Some(&409),
        "the scenario did not happen: {seen:?}"
    );
    c.shutdown().await;
}
