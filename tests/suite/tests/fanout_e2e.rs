//! Dialect F (PROTOCOL.md §6) against the real dev server over loopback: first sync, resume
//! with `after_seq`, 410 → truncation, 409 eviction, 429, expired token, WebSocket blocked →
//! poll fallback, Auto dialect, token providers. Every scenario ends with a message-by-message
//! comparison against the server's log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::topic;
use futures::StreamExt;
use khala_dev_server::{DevServer, DevServerConfig, FanoutConfig, FanoutRequestKind, Faults};
use khala_sync::{
    Change, ClientOptions, Dialect, FanoutTransport, ProvidedToken, SyncClient, TopicPhase,
};

const T: Duration = Duration::from_secs(60);
const RUN: &str = "run:r1:events";

async fn fserver(cfg: FanoutConfig) -> DevServer {
    DevServer::start(DevServerConfig {
        fanout: cfg,
        ..DevServerConfig::default()
    })
    .await
    .expect("dev server starts")
}

fn options(transport: FanoutTransport) -> ClientOptions {
    ClientOptions {
        dialect: Dialect::Fanout,
        fanout_transport: transport,
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(500),
        reconnect_spread: Duration::from_millis(100),
        poll_interval: Duration::from_millis(300),
        jitter_seed: Some(7),
        ..ClientOptions::default()
    }
}

fn fclient(srv: &DevServer, db: &Path, opts: ClientOptions) -> SyncClient {
    SyncClient::builder(srv.base_url())
        .app_bearer_token(DevServer::APP_TOKEN)
        .topics([topic(RUN)])
        .database_path(db)
        .options(opts)
        .build()
        .expect("client builds")
}

/// Publishes `n` events (`run.started` first on a new run).
fn publish(srv: &DevServer, n: usize) {
    for i in 0..n {
        if srv.event_head(RUN) == 0 {
            srv.create_run("r1");
        } else {
            srv.publish_event(
                RUN,
                "run.step",
                serde_json::json!({"step": i, "text": "x".repeat(100), "n": -0.0, "big": 9_007_199_254_740_993u64}),
            );
        }
    }
}

async fn wait_at_head(c: &SyncClient, srv: &DevServer) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let s = c.current_status();
        let t = &s.topics[0];
        if t.phase == TopicPhase::Live && t.watermark.get() == srv.event_head(RUN) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not at head {} after {T:?}: {s:#?}\n{:#?}",
            srv.event_head(RUN),
            c.metrics()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every retained server message is stored once, as the document `<sequence>` whose payload is
/// the message object with its `payload` byte-identical; nothing else is stored except
/// `missing_ok` (reported truncated) ranges being absent.
async fn assert_log_matches(c: &SyncClient, srv: &DevServer) {
    let local: BTreeMap<u64, String> = c
        .list(topic(RUN))
        .await
        .unwrap()
        .into_iter()
        .map(|d| {
            assert_eq!(d.doc_key.as_str(), d.doc_version.to_string());
            (d.doc_version, d.payload)
        })
        .collect();
    let server = srv.events(RUN);
    assert!(!server.is_empty());
    for m in &server {
        let stored = local
            .get(&m.sequence)
            .unwrap_or_else(|| panic!("message {} missing locally", m.sequence));
        #[derive(serde::Deserialize)]
        struct Msg<'a> {
            sequence: u64,
            kind: String,
            #[serde(borrow)]
            payload: &'a serde_json::value::RawValue,
        }
        let v: Msg<'_> = serde_json::from_str(stored).unwrap();
        assert_eq!(v.sequence, m.sequence);
        assert_eq!(v.kind, m.kind);
        assert_eq!(
            v.payload.get(),
            m.payload_raw,
            "payload bytes of {}",
            m.sequence
        );
    }
    let oldest = srv.event_oldest_available(RUN);
    let extra: Vec<u64> = local
        .keys()
        .filter(|s| **s > oldest && !server.iter().any(|m| m.sequence == **s))
        .copied()
        .collect();
    assert!(extra.is_empty(), "stored but not on the server: {extra:?}");
}

fn polls_of(srv: &DevServer) -> Vec<khala_dev_server::FanoutRequest> {
    srv.fanout_requests()
        .into_iter()
        .filter(|r| r.topic == RUN && r.kind == FanoutRequestKind::Poll)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sync_over_websockets_then_live_tail() {
    let srv = fserver(FanoutConfig::default()).await;
    publish(&srv, 900);
    let dir = tempfile::tempdir().unwrap();
    let c = fclient(
        &srv,
        &dir.path().join("f.db"),
        options(FanoutTransport::WebSocket),
    );
    let mut changes = Box::pin(c.changes(topic(RUN)));
    c.start().unwrap();
    wait_at_head(&c, &srv).await;
    let m = c.metrics();
    assert_eq!(m.updates_applied, 900, "each message applied once: {m:?}");
    assert_eq!(m.snapshots, 0, "event logs have no snapshot");
    // A catch-up from 0 on a 900-event log is evicted on the way (§6.1) and resumes.
    assert!(
        srv.metrics().fanout_evictions >= 1,
        "{:?}",
        srv.metrics().fanout_evictions
    );
    assert!(m.slow_consumer >= 1, "{m:?}");
    assert_eq!(c.current_status().transport, "websocket");
    assert_log_matches(&c, &srv).await;
    // Live.
    for _ in 0..900 {
        changes.next().await.unwrap();
    }
    let seq = srv.publish_event(RUN, "run.finished", serde_json::json!(null));
    match tokio::time::timeout(T, changes.next())
        .await
        .unwrap()
        .unwrap()
    {
        Change::Upsert {
            doc_key, payload, ..
        } => {
            assert_eq!(doc_key.as_str(), seq.to_string());
            assert!(payload.contains(r#""payload":null"#), "{payload}");
        }
        other => panic!("{other:?}"),
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_with_after_seq() {
    let srv = fserver(FanoutConfig::default()).await;
    publish(&srv, 120);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("f.db");
    let c = fclient(&srv, &db, options(FanoutTransport::WebSocket));
    c.start().unwrap();
    wait_at_head(&c, &srv).await;
    c.shutdown().await;
    publish(&srv, 30);
    let before = srv.fanout_requests().len();
    let c = fclient(&srv, &db, options(FanoutTransport::WebSocket));
    c.start().unwrap();
    wait_at_head(&c, &srv).await;
    assert_eq!(c.metrics().updates_applied, 30, "only the new messages");
    let ws: Vec<_> = srv.fanout_requests()[before..]
        .iter()
        .filter(|r| r.kind == FanoutRequestKind::WebSocket)
        .map(|r| r.after_seq)
        .collect();
    assert_eq!(ws.first().copied().flatten(), Some(120), "{ws:?}");
    assert_log_matches(&c, &srv).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_cursor_is_reported_as_a_truncation_and_sync_continues() {
    for transport in [FanoutTransport::Poll, FanoutTransport::WebSocket] {
        let srv = fserver(FanoutConfig::default()).await;
        publish(&srv, 50);
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("f.db");
        let c = fclient(&srv, &db, options(transport));
        c.start().unwrap();
        wait_at_head(&c, &srv).await;
        c.shutdown().await;
        // While the app is away, the server evicts messages it never fetched.
        publish(&srv, 100);
        srv.evict_events_through(RUN, 80);
        let c = fclient(&srv, &db, options(transport));
        let mut changes = Box::pin(c.changes(topic(RUN)));
        c.start().unwrap();
        let first = tokio::time::timeout(T, changes.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            first,
            Change::Truncated {
                topic: topic(RUN),
                from: khala_sync::Watermark(51),
                to: khala_sync::Watermark(80)
            },
            "{transport:?}"
        );
        wait_at_head(&c, &srv).await;
        let m = c.metrics();
        assert_eq!(m.truncated_messages, 30, "{transport:?} {m:?}");
        // The durable record: the store itself knows the evicted range.
        assert_eq!(
            c.missing_sequences(topic(RUN)).await.unwrap(),
            [(khala_sync::Watermark(51), khala_sync::Watermark(80))]
        );
        assert_eq!(m.updates_applied, 70, "81..=150 applied: {m:?}");
        assert_log_matches(&c, &srv).await;
        c.shutdown().await;
        // The jump is committed: a restart does not ask for the evicted range again.
        let c = fclient(&srv, &db, options(transport));
        let before = srv.metrics().fanout_stale;
        c.start().unwrap();
        wait_at_head(&c, &srv).await;
        assert_eq!(srv.metrics().fanout_stale, before, "{transport:?}");
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_eviction_resumes_from_the_suggested_cursor_without_loss_or_duplicates() {
    let srv = fserver(FanoutConfig::default()).await;
    publish(&srv, 1_000);
    let dir = tempfile::tempdir().unwrap();
    let c = fclient(
        &srv,
        &dir.path().join("f.db"),
        options(FanoutTransport::Poll),
    );
    c.start().unwrap();
    wait_at_head(&c, &srv).await;
    let m = c.metrics();
    assert_eq!(m.updates_applied, 1_000, "{m:?}");
    assert!(c.missing_sequences(topic(RUN)).await.unwrap().is_empty());
    let polls = polls_of(&srv);
    let evicted: Vec<usize> = (0..polls.len())
        .filter(|&i| polls[i].status == 409)
        .collect();
    assert!(
        !evicted.is_empty(),
        "the catch-up was evicted at least once"
    );
    for &i in &evicted {
        // suggested_after_seq = the evicted request's cursor: the next poll resumes there.
        let next = polls[i + 1..]
            .iter()
            .find(|p| p.status != 429)
            .expect("a next poll");
        assert_eq!(next.after_seq, polls[i].after_seq, "poll {i} of {polls:#?}");
    }
    assert_eq!(m.slow_consumer as usize, evicted.len());
    assert_log_matches(&c, &srv).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_polls_wait_the_servers_interval() {
    let srv = fserver(FanoutConfig::default()).await;
    publish(&srv, 600);
    // The server now wants 1 s between polls; the client's own floor is 300 ms.
    srv.set_faults(Faults {
        fanout_poll_min_interval_ms: Some(1_000),
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let c = fclient(
        &srv,
        &dir.path().join("f.db"),
        options(FanoutTransport::Poll),
    );
    c.start().unwrap();
    wait_at_head(&c, &srv).await;
    let polls = polls_of(&srv);
    let limited: Vec<usize> = (0..polls.len())
        .filter(|&i| polls[i].status == 429)
        .collect();
    assert!(!limited.is_empty(), "the 1 s interval was hit");
    for &i in &limited {
        if let Some(next) = polls.get(i + 1) {
            let gap = next.at.duration_since(polls[i].at);
            // The 429 restarted the window: the next poll waits the full interval.
            assert!(
                gap >= Duration::from_millis(990),
                "poll {} after {gap:?}",
                i + 1
            );
            assert_ne!(next.status, 429, "never locked out by retrying too soon");
        }
    }
    assert_eq!(c.metrics().rate_limited as usize, limited.len());
    assert_log_matches(&c, &srv).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refreshed_once_then_sync_continues() {
    for transport in [FanoutTransport::WebSocket, FanoutTransport::Poll] {
        let srv = fserver(FanoutConfig::default()).await;
        publish(&srv, 40);
        srv.set_faults(Faults {
            fanout_reject_auth: Some(1),
            ..Faults::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let c = fclient(&srv, &dir.path().join("f.db"), options(transport));
        c.start().unwrap();
        wait_at_head(&c, &srv).await;
        assert_eq!(srv.metrics().fanout_unauthorized, 1, "{transport:?}");
        assert_eq!(srv.metrics().tokens_minted, 2, "one refresh: {transport:?}");
        assert_log_matches(&c, &srv).await;
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_websocket_falls_back_to_polling_with_the_same_final_state() {
    let srv = fserver(FanoutConfig::default()).await;
    publish(&srv, 300);
    srv.set_faults(Faults {
        fanout_ws_blocked: Some(true),
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let c = fclient(
        &srv,
        &dir.path().join("blocked.db"),
        options(FanoutTransport::Auto),
    );
    c.start().unwrap();
    wait_at_head(&c, &srv).await;
    assert_eq!(c.current_status().transport, "poll");
    publish(&srv, 5);
    wait_at_head(&c, &srv).await;
    assert_log_matches(&c, &srv).await;
    let blocked = c.list(topic(RUN)).await.unwrap();
    c.shutdown().await;
    // The same log over WebSockets gives the same documents.
    srv.clear_faults();
    let ws = fclient(
        &srv,
        &dir.path().join("ws.db"),
        options(FanoutTransport::WebSocket),
    );
    ws.start().unwrap();
    wait_at_head(&ws, &srv).await;
    assert_eq!(ws.list(topic(RUN)).await.unwrap(), blocked);
    ws.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_dialect_uses_fanout_when_the_server_has_no_phoenix_route() {
    let srv = DevServer::start(DevServerConfig {
        phoenix_enabled: false,
        ..DevServerConfig::default()
    })
    .await
    .unwrap();
    publish(&srv, 25);
    let dir = tempfile::tempdir().unwrap();
    let c = fclient(
        &srv,
        &dir.path().join("f.db"),
        ClientOptions {
            dialect: Dialect::Auto,
            ..options(FanoutTransport::Auto)
        },
    );
    c.start().unwrap();
    wait_at_head(&c, &srv).await;
    assert_eq!(c.metrics().snapshots, 0);
    assert_log_matches(&c, &srv).await;
    c.shutdown().await;
}

/// The token as the token route mints it, fetched by the test (as an app's backend would).
async fn mint(srv: &DevServer) -> String {
    let v: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/api/sync/token", srv.base_url()))
        .bearer_auth(DevServer::APP_TOKEN)
        .json(&serde_json::json!({"scopes": ["runtime.run_events"], "topics": [RUN]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"]["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_supplied_tokens_fixed_or_from_a_callback() {
    let srv = fserver(FanoutConfig::default()).await;
    publish(&srv, 30);
    let dir = tempfile::tempdir().unwrap();
    // A fixed token, used as is: no call to the token route.
    let jwt = mint(&srv).await;
    let minted = srv.metrics().tokens_minted;
    let c = SyncClient::builder(srv.base_url())
        .sync_token(jwt.clone())
        .topics([topic(RUN)])
        .database_path(dir.path().join("fixed.db"))
        .options(options(FanoutTransport::Auto))
        .build()
        .unwrap();
    assert!(!format!("{c:?}").contains(&jwt));
    c.start().unwrap();
    wait_at_head(&c, &srv).await;
    assert_eq!(
        srv.metrics().tokens_minted,
        minted,
        "the token route was not called"
    );
    assert_log_matches(&c, &srv).await;
    c.shutdown().await;
    // A callback that mints elsewhere, asked again when the server refuses its token.
    let calls = Arc::new(AtomicUsize::new(0));
    let (s2, n) = (srv.clone(), Arc::clone(&calls));
    let c = SyncClient::builder(srv.base_url())
        .token_provider(move || {
            let (s, n) = (s2.clone(), Arc::clone(&n));
            async move {
                n.fetch_add(1, Ordering::SeqCst);
                Ok(ProvidedToken {
                    token: mint(&s).await,
                    expires_in: Some(300),
                })
            }
        })
        .topics([topic(RUN)])
        .database_path(dir.path().join("callback.db"))
        .options(options(FanoutTransport::Poll))
        .build()
        .unwrap();
    srv.set_faults(Faults {
        fanout_reject_auth: Some(1),
        ..Faults::default()
    });
    c.start().unwrap();
    wait_at_head(&c, &srv).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "first token + one refresh");
    assert_log_matches(&c, &srv).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_runs_survive_server_restarts_and_pause_resume() {
    let srv = fserver(FanoutConfig::default()).await;
    let runs = ["run:a:events", "run:b:events", "run:c:events"];
    for (k, r) in runs.iter().enumerate() {
        srv.create_run(r.split(':').nth(1).unwrap());
        for i in 0..(100 * (k + 1)) {
            srv.publish_event(r, "run.step", serde_json::json!({"i": i}));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let c = SyncClient::builder(srv.base_url())
        .app_bearer_token(DevServer::APP_TOKEN)
        .topics(runs.iter().map(|r| topic(r)))
        .database_path(dir.path().join("f.db"))
        .options(options(FanoutTransport::Auto))
        .build()
        .unwrap();
    let mut all = Box::pin(c.all_changes());
    c.start().unwrap();
    let at_head = |c: &SyncClient| {
        let s = c.current_status();
        s.is_live()
            && s.topics
                .iter()
                .all(|t| t.watermark.get() == srv.event_head(t.topic.as_str()))
    };
    let wait = |c: &SyncClient| {
        let c = c.clone();
        let ok = at_head;
        async move {
            let deadline = tokio::time::Instant::now() + T;
            while !ok(&c) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{:#?}",
                    c.current_status()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait(&c).await;
    for round in 0..3 {
        // The server drops every socket (logs kept) while events keep coming.
        srv.set_faults(Faults {
            restart: true,
            ..Faults::default()
        });
        for r in runs {
            srv.publish_event(r, "run.step", serde_json::json!({"round": round}));
        }
        wait(&c).await;
        c.pause();
        for r in runs {
            srv.publish_event(r, "run.paused", serde_json::json!({"round": round}));
        }
        c.resume();
        wait(&c).await;
    }
    let total: u64 = runs.iter().map(|r| srv.event_head(r)).sum();
    assert_eq!(c.metrics().updates_applied, total, "{:#?}", c.metrics());
    c.shutdown().await;
    // Every message of every run delivered exactly once, in order per run.
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    while let Ok(Some(ch)) = tokio::time::timeout(Duration::from_millis(300), all.next()).await {
        if let Change::Upsert {
            topic, watermark, ..
        } = ch
        {
            seen.entry(topic.as_str().to_owned())
                .or_default()
                .push(watermark.get());
        }
    }
    for r in runs {
        let want: Vec<u64> = (1..=srv.event_head(r)).collect();
        assert_eq!(seen.get(r), Some(&want), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_token_the_server_refuses_stops_with_a_typed_auth_error() {
    let srv = fserver(FanoutConfig::default()).await;
    publish(&srv, 5);
    for transport in [FanoutTransport::WebSocket, FanoutTransport::Poll] {
        let c = SyncClient::builder(srv.base_url())
            .sync_token(srv.mint_tampered_token_for_tests("user:42"))
            .topics([topic(RUN)])
            .in_memory()
            .options(options(transport))
            .build()
            .unwrap();
        let before = srv.metrics().fanout_unauthorized;
        c.start().unwrap();
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let s = c.current_status();
            if s.state == khala_sync::ConnectionState::AuthFailed {
                assert_eq!(s.last_error.as_ref().map(|e| e.code()), Some("auth_failed"));
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{transport:?}: {s:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Refused, retried once with the same token, then nothing more.
        let refused = srv.metrics().fanout_unauthorized - before;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            srv.metrics().fanout_unauthorized - before,
            refused,
            "{transport:?}"
        );
        assert!(refused <= 3, "{transport:?}: {refused} refused requests");
        c.shutdown().await;
    }
}
