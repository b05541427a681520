//! khala-sync against the real dev server over loopback: every scenario of the Spine issue,
//! each ending with a document-by-document comparison against the server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use khala_dev_server::{DevServer, DevServerConfig, Faults, ForceStale};
use khala_sync::{Change, ClientOptions, ConnectionState, TopicPhase};

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_bootstraps_from_snapshot_then_tails_live() {
    let srv = server(fast_config()).await;
    seed(&srv, &[RUNS, WORKERS], 2_500, 1);
    let dir = tempfile::tempdir().unwrap();
    let c = client(&srv, &[RUNS, WORKERS], &dir.path().join("a.db"));
    let mut changes = Box::pin(c.changes(topic(RUNS)));
    c.start().unwrap();
    wait_caught_up(&c, &srv, T).await;
    let m = c.metrics();
    assert_eq!(m.snapshots, 2, "one snapshot per topic on first run: {m:?}");
    assert_eq!(m.snapshot_docs, 2_500);
    assert_eq!(srv.metrics().snapshots_started, 2);
    // First change on RUNS is the bootstrap marker.
    match changes.next().await.unwrap() {
        Change::Bootstrapped { docs, .. } => assert_eq!(docs, 1_250),
        other => panic!("expected Bootstrapped, got {other:?}"),
    }
    // Live tail.
    let w = srv.publish(RUNS, "live/doc:1", serde_json::json!({"live": true}));
    let change = tokio::time::timeout(T, changes.next())
        .await
        .unwrap()
        .unwrap();
    match change {
        Change::Upsert {
            doc_key, watermark, ..
        } => {
            assert_eq!(doc_key.as_str(), "live/doc:1");
            assert_eq!(watermark.get(), w);
        }
        other => panic!("expected the live upsert, got {other:?}"),
    }
    wait_caught_up(&c, &srv, T).await;
    assert_converged(&c, &srv, RUNS).await;
    assert_converged(&c, &srv, WORKERS).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_restart_resumes_from_watermark_without_snapshot() {
    let srv = server(fast_config()).await;
    seed(&srv, &[RUNS], 600, 1);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    sync_once(&srv, &[RUNS], &db, T).await;
    let before = srv.metrics();
    // The world moves on while the app is closed.
    seed(&srv, &[RUNS], 900, 2);
    let c2 = client(&srv, &[RUNS], &db);
    c2.start().unwrap();
    wait_caught_up(&c2, &srv, T).await;
    let m = c2.metrics();
    assert_eq!(
        m.snapshots, 0,
        "second run must resume, not snapshot: {m:?}"
    );
    assert_eq!(m.updates_applied, 900, "exactly the missed updates: {m:?}");
    let after = srv.metrics();
    assert_eq!(after.snapshots_started, before.snapshots_started);
    assert!(after.subscribes_with_resume > before.subscribes_with_resume);
    assert_converged(&c2, &srv, RUNS).await;
    c2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_with_log_kept_resumes_without_snapshot() {
    let cfg = fast_config();
    let srv = server(cfg.clone()).await;
    seed(&srv, &[RUNS, WORKERS], 400, 1);
    let dir = tempfile::tempdir().unwrap();
    let c = client(&srv, &[RUNS, WORKERS], &dir.path().join("a.db"));
    c.start().unwrap();
    wait_caught_up(&c, &srv, T).await;
    // Abrupt: every socket dropped, logs kept.
    srv.restart_connections();
    seed(&srv, &[RUNS, WORKERS], 100, 2);
    wait_caught_up(&c, &srv, T).await;
    // Full process restart on the same port with the same logs.
    let port = srv.addr().port();
    let state = srv.shutdown_and_export().await;
    let srv = DevServer::start_with_state(DevServerConfig { port, ..cfg }, state)
        .await
        .unwrap();
    seed(&srv, &[RUNS, WORKERS], 100, 3);
    wait_caught_up(&c, &srv, T).await;
    let m = c.metrics();
    assert_eq!(m.snapshots, 2, "only the first-run snapshots: {m:?}");
    assert!(m.reconnects >= 2, "{m:?}");
    assert_eq!(m.gaps, 0, "{m:?}");
    assert_converged(&c, &srv, RUNS).await;
    assert_converged(&c, &srv, WORKERS).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_stale_cursor_takes_exactly_one_snapshot_then_tails() {
    let srv = server(fast_config()).await;
    seed(&srv, &[RUNS, WORKERS], 400, 1);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    sync_once(&srv, &[RUNS, WORKERS], &db, T).await;
    seed(&srv, &[RUNS, WORKERS], 50, 2);
    srv.set_faults(Faults {
        force_stale: Some(ForceStale {
            topic: RUNS.into(),
            push: false,
            reason: None,
        }),
        ..Faults::default()
    });
    let c2 = client(&srv, &[RUNS, WORKERS], &db);
    c2.start().unwrap();
    wait_caught_up(&c2, &srv, T).await;
    let m = c2.metrics();
    assert_eq!(m.stale_cursors, 1, "{m:?}");
    assert_eq!(
        m.snapshots, 1,
        "exactly one snapshot for the stale topic: {m:?}"
    );
    seed(&srv, &[RUNS, WORKERS], 30, 3);
    wait_caught_up(&c2, &srv, T).await;
    assert_eq!(c2.metrics().snapshots, 1, "live tail, no further snapshot");
    assert_converged(&c2, &srv, RUNS).await;
    assert_converged(&c2, &srv, WORKERS).await;
    c2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_floor_overtaking_the_cursor_bootstraps_once() {
    let srv = server(fast_config()).await;
    seed(&srv, &[RUNS], 300, 1);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    sync_once(&srv, &[RUNS], &db, T).await;
    seed(&srv, &[RUNS], 300, 2);
    srv.truncate_before(RUNS, srv.head(RUNS) - 10);
    let c2 = client(&srv, &[RUNS], &db);
    c2.start().unwrap();
    wait_caught_up(&c2, &srv, T).await;
    let m = c2.metrics();
    assert_eq!((m.stale_cursors, m.snapshots), (1, 1), "{m:?}");
    assert_converged(&c2, &srv, RUNS).await;
    c2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_batch_is_applied_once() {
    let srv = server(fast_config()).await;
    seed(&srv, &[RUNS], 50, 1);
    let dir = tempfile::tempdir().unwrap();
    let c = client(&srv, &[RUNS], &dir.path().join("a.db"));
    c.start().unwrap();
    wait_caught_up(&c, &srv, T).await;
    let mut changes = Box::pin(c.changes(topic(RUNS)));
    srv.set_faults(Faults {
        duplicate_next_batch: Some(true),
        ..Faults::default()
    });
    let w = srv.publish(RUNS, "dup/doc", serde_json::json!({"n": 1}));
    wait_caught_up(&c, &srv, T).await;
    // Exactly one change for that watermark, then the next publish's change.
    let w2 = srv.publish(RUNS, "dup/doc2", serde_json::json!({"n": 2}));
    let mut seen = Vec::new();
    while seen.last() != Some(&w2) {
        match tokio::time::timeout(T, changes.next())
            .await
            .unwrap()
            .unwrap()
        {
            Change::Upsert { watermark, .. } => seen.push(watermark.get()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, vec![w, w2], "each update delivered to the app once");
    assert!(c.metrics().duplicates_skipped >= 1, "{:?}", c.metrics());
    assert_converged(&c, &srv, RUNS).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_mid_replay_leaves_no_gap() {
    let srv = server(fast_config()).await;
    seed(&srv, &[RUNS], 100, 1);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    sync_once(&srv, &[RUNS], &db, T).await;
    seed(&srv, &[RUNS], 3_000, 2);
    // Replay of 3000 updates goes out in 200-update batches; cut the socket after 4 frames.
    srv.set_faults(Faults {
        drop_after_frames: Some(4),
        ..Faults::default()
    });
    let c2 = client(&srv, &[RUNS], &db);
    c2.start().unwrap();
    wait_caught_up(&c2, &srv, T).await;
    let m = c2.metrics();
    assert!(m.reconnects >= 1, "the drop happened: {m:?}");
    assert_eq!(m.snapshots, 0, "{m:?}");
    assert_eq!(
        m.updates_applied, 3_000,
        "every missed update applied exactly once: {m:?}"
    );
    assert_converged(&c2, &srv, RUNS).await;
    c2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_mid_stream_is_refreshed_without_losing_the_stream() {
    let srv = server(fast_config()).await;
    seed(&srv, &[RUNS], 100, 1);
    let dir = tempfile::tempdir().unwrap();
    let c = client(&srv, &[RUNS], &dir.path().join("a.db"));
    c.start().unwrap();
    wait_caught_up(&c, &srv, T).await;
    let tokens_before = c.metrics().tokens_fetched;
    let pub_task = {
        let srv = srv.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                srv.publish(
                    RUNS,
                    &format!("expiry/doc:{i}"),
                    serde_json::json!({"i": i}),
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    srv.expire_tokens();
    pub_task.await.unwrap();
    wait_caught_up(&c, &srv, T).await;
    let m = c.metrics();
    assert!(
        m.tokens_fetched > tokens_before,
        "a new token was fetched: {m:?}"
    );
    assert_eq!(m.snapshots, 1, "never snapshot because of a token: {m:?}");
    assert_eq!(m.gaps, 0, "{m:?}");
    assert!(srv.metrics().reauth_pushes >= 1);
    assert_converged(&c, &srv, RUNS).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_are_refreshed_proactively() {
    let srv = server(DevServerConfig {
        min_ttl_seconds: 1,
        ..fast_config()
    })
    .await;
    seed(&srv, &[RUNS], 50, 1);
    let dir = tempfile::tempdir().unwrap();
    let c = client_with(
        &srv,
        &[RUNS],
        &dir.path().join("a.db"),
        DevServer::APP_TOKEN,
        khala_sync::ClientOptions {
            token_ttl_seconds: Some(2),
            ..fast_options()
        },
    );
    c.start().unwrap();
    for i in 0..40 {
        srv.publish(
            RUNS,
            &format!("refresh/doc:{i}"),
            serde_json::json!({"i": i}),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_caught_up(&c, &srv, T).await;
    let m = c.metrics();
    assert!(m.tokens_fetched >= 3, "refreshed ahead of expiry: {m:?}");
    assert_eq!(m.snapshots, 1, "{m:?}");
    assert_converged(&c, &srv, RUNS).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_are_hydrated_before_commit() {
    let srv = server(DevServerConfig {
        hydration_threshold_bytes: 1024,
        ..fast_config()
    })
    .await;
    seed(&srv, &[RUNS], 20, 1);
    let dir = tempfile::tempdir().unwrap();
    let c = client(&srv, &[RUNS], &dir.path().join("a.db"));
    c.start().unwrap();
    wait_caught_up(&c, &srv, T).await;
    let big = "x".repeat(8 * 1024);
    for i in 0..5 {
        srv.publish(
            RUNS,
            &format!("big/doc:{i}"),
            serde_json::json!({"blob": big, "i": i}),
        );
    }
    wait_caught_up(&c, &srv, T).await;
    let doc = c
        .get(topic(RUNS), khala_sync::DocKey::new("big/doc:3").unwrap())
        .await
        .unwrap()
        .expect("hydrated doc stored");
    assert!(doc.payload.len() > 8 * 1024);
    assert!(c.metrics().hydrations >= 5, "{:?}", c.metrics());
    assert!(srv.metrics().doc_fetches >= 5);
    assert_converged(&c, &srv, RUNS).await;
    c.shutdown().await;
}

/// Regression: with the frame queue full (small group commits) while a hydration waits for
/// its document, the document's HTTP result used to queue behind frames the driver had stopped
/// reading; the topic stalled until the connection was declared dead (45 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hydrations_during_a_full_frame_queue_do_not_stall() {
    let srv = server(DevServerConfig {
        hydration_threshold_bytes: 1024,
        ..fast_config()
    })
    .await;
    seed(&srv, &[RUNS], 10, 1);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    sync_once(&srv, &[RUNS], &db, T).await;
    // A backlog where every 10th update must be hydrated.
    let big = "x".repeat(2 * 1024);
    for i in 0..3_000 {
        let payload = if i % 10 == 0 {
            serde_json::json!({"blob": big, "i": i})
        } else {
            serde_json::json!({"i": i})
        };
        srv.publish(RUNS, &format!("runs/doc:{:04}", i % 500), payload);
    }
    let opts = ClientOptions {
        group_commit_max_updates: 200,
        ..fast_options()
    };
    let c = client_with(&srv, &[RUNS], &db, DevServer::APP_TOKEN, opts);
    c.start().unwrap();
    wait_caught_up(&c, &srv, Duration::from_secs(20)).await;
    assert!(c.metrics().hydrations > 0, "{:?}", c.metrics());
    assert_converged(&c, &srv, RUNS).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_remove_documents() {
    let srv = server(fast_config()).await;
    seed(&srv, &[RUNS], 20, 1);
    let dir = tempfile::tempdir().unwrap();
    let c = client(&srv, &[RUNS], &dir.path().join("a.db"));
    c.start().unwrap();
    wait_caught_up(&c, &srv, T).await;
    let mut changes = Box::pin(c.changes(topic(RUNS)));
    let key = format!("{RUNS}/doc:000004");
    srv.delete(RUNS, &key);
    match tokio::time::timeout(T, changes.next())
        .await
        .unwrap()
        .unwrap()
    {
        Change::Delete { doc_key, .. } => assert_eq!(doc_key.as_str(), key),
        other => panic!("expected Delete, got {other:?}"),
    }
    wait_caught_up(&c, &srv, T).await;
    assert!(c
        .get(topic(RUNS), khala_sync::DocKey::new(key).unwrap())
        .await
        .unwrap()
        .is_none());
    assert_converged(&c, &srv, RUNS).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_topic_fails_alone_while_the_allowed_topic_syncs() {
    let srv = server(fast_config()).await;
    seed(&srv, &[RUNS, WORKERS], 200, 1);
    let dir = tempfile::tempdir().unwrap();
    let c = client_with(
        &srv,
        &[RUNS, WORKERS],
        &dir.path().join("a.db"),
        DevServer::LIMITED_APP_TOKEN,
        fast_options(),
    );
    c.start().unwrap();
    let s = wait_caught_up(&c, &srv, T).await;
    let workers = s
        .topics
        .iter()
        .find(|t| t.topic.as_str() == WORKERS)
        .unwrap();
    assert_eq!(workers.phase, TopicPhase::Failed);
    assert_eq!(
        workers.error.as_ref().map(|e| e.code()),
        Some("topic_forbidden")
    );
    let runs = s.topics.iter().find(|t| t.topic.as_str() == RUNS).unwrap();
    assert_eq!(runs.phase, TopicPhase::Live);
    srv.publish(RUNS, "after/doc", serde_json::json!({"ok": true}));
    wait_caught_up(&c, &srv, T).await;
    assert_converged(&c, &srv, RUNS).await;
    assert!(c.list(topic(WORKERS)).await.unwrap().is_empty());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_app_credentials_surface_a_typed_auth_error_without_retry_loop() {
    let srv = server(fast_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = client_with(
        &srv,
        &[RUNS],
        &dir.path().join("a.db"),
        "wrong-app-token",
        fast_options(),
    );
    c.start().unwrap();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let s = c.current_status();
        if s.state == ConnectionState::AuthFailed {
            assert_eq!(s.last_error.as_ref().map(|e| e.code()), Some("auth_failed"));
            assert!(!s.last_error.as_ref().unwrap().is_retryable());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no auth failure: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connects = srv.metrics().connections_accepted_total;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(c.current_status().state, ConnectionState::AuthFailed);
    assert_eq!(srv.metrics().connections_accepted_total, connects);
    assert_eq!(srv.metrics().tokens_minted, 0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_reconnect_and_catch_up() {
    let srv = server(fast_config()).await;
    seed(&srv, &[RUNS], 50, 1);
    let dir = tempfile::tempdir().unwrap();
    let c = client(&srv, &[RUNS], &dir.path().join("a.db"));
    c.start().unwrap();
    wait_caught_up(&c, &srv, T).await;
    c.pause();
    let deadline = tokio::time::Instant::now() + T;
    while srv.metrics().connections_current > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pause did not close the socket"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.current_status().state, ConnectionState::Paused);
    seed(&srv, &[RUNS], 70, 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(c.current_status().topics[0].watermark.get() < srv.head(RUNS));
    c.resume();
    wait_caught_up(&c, &srv, T).await;
    assert_eq!(c.metrics().snapshots, 1);
    assert_converged(&c, &srv, RUNS).await;
    c.shutdown().await;
}
