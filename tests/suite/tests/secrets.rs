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
