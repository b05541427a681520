//! Security behaviour against the real dev server: rejected sync tokens (tampered, expired)
//! surface as typed errors without a tight retry loop; a database handed to another subject
//! does not expose the previous subject's data; oversize frames are refused by the socket
//! layer before the message is buffered; plain-text transports to non-loopback hosts are
//! refused unless explicitly allowed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);
use khala_dev_server::{DevServer, DevServerConfig, Faults};
use khala_sync::{ClientOptions, ConnectionState, SyncClient};

/// Lets a client run against bad tokens for `window` and returns (tokens minted, upgrades
/// refused, last error code, state).
async fn run_against_bad_tokens(faults: Faults) -> (u64, u64, Option<String>, ConnectionState) {
    let srv = server(fast_config()).await;
    seed(&srv, &[RUNS], 5, 1);
    srv.set_faults(faults);
    let dir = tempfile::tempdir().unwrap();
    // Backoff 200 ms .. 1 s: a tight loop would mint hundreds of tokens in 3 s; the
    // backoff allows fewer than ten per retry path.
    let opts = ClientOptions {
        backoff_base: Duration::from_millis(200),
        backoff_cap: Duration::from_secs(1),
        ..fast_options()
    };
    let c = client_with(
        &srv,
        &[RUNS],
        &dir.path().join("a.db"),
        DevServer::APP_TOKEN,
        opts,
    );
    c.start().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = c.current_status();
    let m = srv.metrics();
    c.shutdown().await;
    (
        m.tokens_minted,
        m.connections_refused_total,
        s.last_error.map(|e| e.code().to_owned()),
        s.state,
    )
}

/// The server refuses every token the client gets: the client reports a typed error and
/// neither mints nor connects in a tight loop.
async fn bad_tokens_are_typed_errors_without_a_tight_loop(what: &str, faults: Faults) {
    let (minted, refused, code, state) = run_against_bad_tokens(faults).await;
    eprintln!("{what}: minted={minted} refused={refused} code={code:?} state={state:?}");
    assert!(refused >= 1, "the server refused the upgrade");
    assert!(code.is_some(), "a typed error is reported: {state:?}");
    assert_ne!(state, ConnectionState::Connected);
    // 200 ms .. 1 s backoff windows: a tight loop would be hundreds in 3 s.
    assert!(
        minted <= 12 && refused <= 12,
        "minted {minted}, refused {refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_sync_token_is_a_typed_error_without_a_tight_loop() {
    let faults = Faults {
        tamper_tokens: Some(true),
        ..Faults::default()
    };
    bad_tokens_are_typed_errors_without_a_tight_loop("tampered", faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sync_token_is_a_typed_error_without_a_tight_loop() {
    let faults = Faults {
        expired_tokens: Some(true),
        ..Faults::default()
    };
    bad_tokens_are_typed_errors_without_a_tight_loop("expired", faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_of_another_subject_does_not_expose_its_data() {
    let srv = server(fast_config()).await;
    seed(&srv, &[RUNS, WORKERS], 40, 1);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    // user:42 syncs both topics.
    sync_once(&srv, &[RUNS, WORKERS], &db, T).await;
    // user:43 (only allowed RUNS) opens the same file.
    let c = client_with(
        &srv,
        &[RUNS],
        &db,
        DevServer::LIMITED_APP_TOKEN,
        fast_options(),
    );
    c.start().unwrap();
    wait_caught_up(&c, &srv, T).await;
    assert!(
        c.list(topic(WORKERS)).await.unwrap().is_empty(),
        "user:42's documents of a topic user:43 may not read are gone"
    );
    assert_converged(&c, &srv, RUNS).await;
    // Nothing was resumed from user:42's watermark: user:43 bootstrapped from scratch.
    assert_eq!(c.metrics().snapshots, 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_is_refused_by_the_socket_and_committed_data_stays() {
    let srv = server(DevServerConfig {
        hydration_threshold_bytes: 4 * 1024 * 1024,
        ..fast_config()
    })
    .await;
    seed(&srv, &[RUNS], 20, 1);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let opts = ClientOptions {
        max_frame_bytes: 64 * 1024,
        ..fast_options()
    };
    let c = client_with(&srv, &[RUNS], &db, DevServer::APP_TOKEN, opts);
    c.start().unwrap();
    wait_caught_up(&c, &srv, T).await;
    // A 200 KB inline document: its batch frame exceeds the client's 64 KB limit.
    let big = "x".repeat(200 * 1024);
    srv.publish(RUNS, "runs/doc:big", serde_json::json!({ "big": big }));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = c.current_status();
    let code = s.last_error.as_ref().map(|e| e.code().to_owned());
    eprintln!(
        "oversize: state={:?} code={code:?} metrics={:?}",
        s.state,
        c.metrics()
    );
    assert_eq!(code.as_deref(), Some("frame_too_large"), "{s:?}");
    assert!(c.metrics().decode_errors >= 1);
    // Everything committed before stays readable.
    assert_eq!(c.list(topic(RUNS)).await.unwrap().len(), 20);
    assert!(c
        .get(
            topic(RUNS),
            khala_sync::DocKey::new("runs/doc:big").unwrap()
        )
        .await
        .unwrap()
        .is_none());
    // No tight reconnect loop on a frame that will never fit: the backoff (50..500 ms
    // windows here) paces the attempts.
    assert!(
        srv.metrics().connections_accepted_total <= 15,
        "{}",
        srv.metrics().connections_accepted_total
    );
    c.shutdown().await;
}

#[test]
fn plain_text_to_non_loopback_hosts_is_refused_unless_allowed() {
    for url in ["http://sync.example.com", "ws://10.0.0.7:4000"] {
        let e = SyncClient::builder(url)
            .app_bearer_token("x")
            .topics([topic(RUNS)])
            .build()
            .expect_err(url);
        assert_eq!(e.code(), "invalid_config", "{url}: {e}");
    }
    let ok = SyncClient::builder("http://sync.example.com")
        .app_bearer_token("x")
        .topics([topic(RUNS)])
        .options(ClientOptions {
            allow_insecure_non_loopback: true,
            ..ClientOptions::default()
        })
        .build();
    assert!(ok.is_ok());
    assert!(SyncClient::builder("http://127.0.0.1:9")
        .app_bearer_token("x")
        .topics([topic(RUNS)])
        .build()
        .is_ok());
}
