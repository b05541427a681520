//! Tokens never appear in logs (at `trace`, from every crate), `Debug` output or errors.
//!
//! Every JWT starts with `eyJ` (base64url of `{"`); the app credential is `dev-app-token`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use khala_dev_server::DevServer;
use khala_sync::{ClientOptions, Dialect, FanoutTransport};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_clean(what: &str, text: &str) {
    for secret in ["eyJ", DevServer::APP_TOKEN] {
        if let Some(pos) = text.find(secret) {
            let start = pos.saturating_sub(120);
            panic!(
                "{what} leaks a secret ({secret:?}) near: …{}…",
                &text[start..(pos + 40).min(text.len())]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_logs_debug_or_errors() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let srv = server(fast_config()).await;
    seed(&srv, &[RUNS], 300, 1);
    let dir = tempfile::tempdir().unwrap();
    let c = client(&srv, &[RUNS], &dir.path().join("a.db"));
    c.start().unwrap();
    wait_caught_up(&c, &srv, Duration::from_secs(30)).await;
    // Token refresh on an open socket, a reconnect, and an auth failure: every token path.
    srv.expire_tokens();
    srv.restart_connections();
    seed(&srv, &[RUNS], 50, 2);
    wait_caught_up(&c, &srv, Duration::from_secs(30)).await;
    let bad = client_with(
        &srv,
        &[RUNS],
        &dir.path().join("b.db"),
        "wrong-app-token",
        fast_options(),
    );
    bad.start().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bad_status = bad.current_status();
    assert!(bad_status.last_error.is_some());

    // Dialect F: the token travels in an `Authorization` header on the topic WebSocket and
    // on polls; a refused token, a refresh, and a fixed app-supplied token too.
    srv.create_run("secrets");
    for i in 0..50 {
        srv.publish_event(
            "run:secrets:events",
            "run.step",
            serde_json::json!({"i": i}),
        );
    }
    srv.set_faults(khala_dev_server::Faults {
        fanout_reject_auth: Some(2),
        ..Default::default()
    });
    for transport in [FanoutTransport::WebSocket, FanoutTransport::Poll] {
        let f = client_with(
            &srv,
            &["run:secrets:events"],
            &dir.path().join(format!("f-{transport:?}.db")),
            DevServer::APP_TOKEN,
            ClientOptions {
                dialect: Dialect::Fanout,
                fanout_transport: transport,
                ..fast_options()
            },
        );
        f.start().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while f.current_status().topics[0].watermark.get() < srv.event_head("run:secrets:events") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                f.current_status()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_clean(
            "dialect F Debug output",
            &format!("{f:?}\n{:?}", f.current_status()),
        );
        f.shutdown().await;
    }
    let jwt = srv.mint_token_for_tests("user:42", Duration::from_secs(300));
    let fixed = khala_sync::SyncClient::builder(srv.base_url())
        .sync_token(jwt)
        .topics([topic("run:secrets:events")])
        .in_memory()
        .options(ClientOptions {
            dialect: Dialect::Fanout,
            ..fast_options()
        })
        .build()
        .unwrap();
    assert_clean("a client built with sync_token", &format!("{fixed:?}"));

    let debug = format!(
        "{c:?}\n{:?}\n{:?}\n{bad_status:?}\n{}",
        c.current_status(),
        c.metrics(),
        bad_status
            .last_error
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    assert_clean("Debug/Display output", &debug);
    c.shutdown().await;
    bad.shutdown().await;
    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(
        logs.len() > 1000,
        "trace logging captured output ({} bytes)",
        logs.len()
    );
    assert_clean("trace logs", &logs);
}
