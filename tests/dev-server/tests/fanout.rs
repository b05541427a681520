//! Dialect F (runtime fanout, PROTOCOL.md §6/§6.1) end to end: real sockets on 127.0.0.1,
//! reqwest for the poll and control routes, tokio-tungstenite for the WebSocket route.

use futures::{SinkExt, StreamExt};
use khala_dev_server::{
    DevServer, DevServerConfig, FanoutConfig, FanoutRequestKind, Faults, TestToken,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A config whose poll interval does not get in the way of tests that poll back to back.
fn no_rate_limit() -> DevServerConfig {
    DevServerConfig {
        fanout: FanoutConfig {
            poll_min_interval: Duration::ZERO,
            ..FanoutConfig::default()
        },
        ..DevServerConfig::default()
    }
}

async fn start(config: DevServerConfig) -> DevServer {
    DevServer::start(config).await.expect("server starts")
}

/// A sync token from the token route, as an app gets one (`dev-app-token`).
async fn token(server: &DevServer, app_token: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/api/sync/token", server.base_url()))
        .bearer_auth(app_token)
        .json(&body)
        .send()
        .await
        .expect("token route answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("token route answers JSON"))
}

async fn fanout_token(server: &DevServer) -> String {
    let (status, body) = token(
        server,
        DevServer::APP_TOKEN,
        json!({"scopes": ["runtime.run_events", "runtime.codex_worker_events"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["data"]["token"]
        .as_str()
        .expect("token string")
        .to_owned()
}

fn minted(
    server: &DevServer,
    issued_offset_seconds: i64,
    ttl_seconds: i64,
    tampered: bool,
) -> String {
    server.mint_token_with(&TestToken {
        subject: "user:42".into(),
        topics: vec!["runtime.run_events".into()],
        issued_offset_seconds,
        ttl_seconds,
        tampered,
    })
}

async fn poll_with(
    server: &DevServer,
    topic: &str,
    query: &str,
    auth: Option<&str>,
    origin: Option<&str>,
) -> (u16, String) {
    let mut req =
        reqwest::Client::new().get(format!("{}?{query}", server.fanout_messages_url(topic)));
    if let Some(t) = auth {
        req = req.bearer_auth(t);
    }
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let resp = req.send().await.expect("poll route answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("poll body"))
}

async fn poll(server: &DevServer, token: &str, topic: &str, query: &str) -> (u16, Value) {
    let (status, text) = poll_with(server, topic, query, Some(token), None).await;
    let v =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("poll body not JSON ({e}): {text}"));
    (status, v)
}

fn seqs(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .expect("messages array")
        .iter()
        .map(|m| m["sequence"].as_u64().expect("sequence"))
        .collect()
}

fn ws_url(server: &DevServer, topic: &str, query: &str) -> String {
    format!("{}?{query}", server.fanout_ws_url(topic))
}

/// Connects; `Err(status)` when the upgrade is refused with an HTTP answer.
async fn ws_connect(
    server: &DevServer,
    topic: &str,
    query: &str,
    auth: Option<&str>,
) -> Result<Ws, (u16, String)> {
    let mut req = ws_url(server, topic, query)
        .into_client_request()
        .expect("valid ws request");
    if let Some(t) = auth {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header value"),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status().as_u16(), 101);
            Ok(ws)
        }
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("unexpected connect error {e}"),
    }
}

/// The next text frame as JSON (pongs are skipped).
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("socket still open")
            .expect("no socket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).expect("text frame is JSON"),
            Message::Pong(_) | Message::Ping(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Reads until the connection ends; asserts it ended without a close frame and without
/// further text frames.
async fn assert_dropped_without_close(ws: &mut Ws) {
    let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("connection ends within 5 s");
    match next {
        None
        | Some(Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        )))
        | Some(Err(tungstenite::Error::Io(_))) => {}
        Some(Err(e)) => panic!("unexpected error {e}"),
        Some(Ok(Message::Close(c))) => panic!("got a close frame {c:?}; expected a TCP drop"),
        Some(Ok(m)) => panic!("unexpected frame after the last one: {m:?}"),
    }
}

/// Asserts nothing arrives for `ms` milliseconds.
async fn assert_silent(ws: &mut Ws, ms: u64) {
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(ms), ws.next()).await {
        panic!("expected silence, got {m:?}");
    }
}

fn publish_n(server: &DevServer, topic: &str, n: u64) {
    for i in 1..=n {
        server.publish_event(topic, "run.step", json!({"step": i}));
    }
}

#[tokio::test]
async fn poll_first_page_and_fields() {
    let server = start(no_rate_limit()).await;
    let t = fanout_token(&server).await;
    assert_eq!(server.create_run("r1"), 1);
    let topic = "run:r1:events";
    publish_n(&server, topic, 4);
    assert_eq!(server.event_head(topic), 5);

    let (status, page) = poll(&server, &t, topic, "after_seq=0&limit=2").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["topic"], topic);
    assert_eq!(seqs(&page), vec![1, 2]);
    let first = &page["messages"][0];
    assert_eq!(first["topic"], topic);
    assert_eq!(first["kind"], "run.started");
    assert_eq!(first["payload"], json!({"run_id": "r1"}));
    assert_eq!(page["messages"][1]["kind"], "run.step");
    assert_eq!(page["messages"][1]["payload"], json!({"step": 1}));
    let at = first["published_at"].as_str().expect("published_at");
    assert!(
        at.len() == 20 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
        "{at}"
    );
    assert_eq!(page["oldest_available_cursor"], 0);
    assert_eq!(page["head_cursor"], 5);
    assert_eq!(page["next_cursor"], 2);
    assert_eq!(page["replay_complete"], false);
    assert_eq!(page["limit_applied"], 2);
    assert_eq!(page["consumer_lag"], 3);
    assert_eq!(page["slow_consumer_strikes"], 0);
    assert_eq!(page["slow_consumer_max_strikes"], 3);
    let hint = page["recommended_reconnect_backoff_ms"]
        .as_u64()
        .expect("hint");
    assert!((400..=650).contains(&hint), "{hint}");

    let (_, page) = poll(&server, &t, topic, "after_seq=2&limit=500").await;
    assert_eq!(seqs(&page), vec![3, 4, 5]);
    assert_eq!(page["limit_applied"], 200);
    assert_eq!(page["next_cursor"], 5);
    assert_eq!(page["replay_complete"], true);
    assert_eq!(page["consumer_lag"], 0);

    // A cursor beyond head is not stale: empty page, next_cursor = the request.
    let (status, page) = poll(&server, &t, topic, "after_seq=40&limit=10").await;
    assert_eq!(status, 200);
    assert_eq!(seqs(&page), Vec::<u64>::new());
    assert_eq!(page["next_cursor"], 40);
    assert_eq!(page["replay_complete"], true);
    assert_eq!(page["head_cursor"], 5);

    // Bad parameters.
    let (s, b) = poll(&server, &t, topic, "limit=10").await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_request")));
    let (s, b) = poll(&server, &t, topic, "after_seq=x&limit=10").await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_request")));
    let (s, b) = poll(&server, &t, topic, "after_seq=-1").await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_request")));
    let (s, b) = poll(&server, &t, topic, "after_seq=0&limit=0").await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_request")));
    let (s, b) = poll(&server, &t, topic, "after_seq=0&limit=1001").await;
    assert_eq!((s, b["error"].as_str()), (413, Some("payload_too_large")));
    let (s, _) = poll(&server, &t, topic, "after_seq=0&limit=1000").await;
    assert_eq!(s, 200);

    // An unknown run is accepted: an empty page.
    let (s, page) = poll(&server, &t, "run:nobody:events", "after_seq=0&limit=10").await;
    assert_eq!(s, 200);
    assert_eq!(page["head_cursor"], 0);
    assert_eq!(seqs(&page), Vec::<u64>::new());

    // The same subject has now polled two topics within 10 s: pages shrink to 50.
    let (_, page) = poll(&server, &t, topic, "after_seq=0&limit=500").await;
    assert_eq!(page["limit_applied"], 50);
    let (_, page) = poll(&server, &t, "worker:w1:lifecycle", "after_seq=0&limit=20").await;
    assert_eq!(page["limit_applied"], 20);

    let m = server.metrics();
    assert_eq!(m.fanout_polls, 12);
    assert_eq!(m.fanout_messages_sent, 2 + 3 + 5 + 5);
    let ft = m
        .fanout_topics
        .iter()
        .find(|t| t.topic == topic)
        .expect("topic metrics");
    assert_eq!(
        (ft.head_cursor, ft.oldest_available_cursor, ft.retained),
        (5, 0, 5)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn rate_limit_429_restarts_the_window() {
    let server = start(DevServerConfig {
        fanout: FanoutConfig {
            poll_min_interval: Duration::from_millis(1500),
            ..FanoutConfig::default()
        },
        ..DevServerConfig::default()
    })
    .await;
    let t = fanout_token(&server).await;
    let topic = "run:rl:events";
    // Wide margins (a shared 2-core machine): polls at 0, 500 and 1700 ms, window 1500 ms.
    server.create_run("rl");
    let t0 = Instant::now();
    let (s, _) = poll(&server, &t, topic, "after_seq=0&limit=10").await;
    assert_eq!(s, 200);
    tokio::time::sleep_until((t0 + Duration::from_millis(500)).into()).await;
    let (s, b) = poll(&server, &t, topic, "after_seq=0&limit=10").await;
    assert_eq!(s, 429, "{b}");
    assert_eq!(b["error"], "rate_limited");
    let retry = b["retry_after_ms"].as_u64().expect("retry_after_ms");
    // The 429 restarted the window: the whole interval remains, plus 0..=50 ms jitter.
    assert!((1500..=1550).contains(&retry), "{retry}");
    // 1700 ms after the first poll: past its window, but the 429 at 500 ms restarted it.
    tokio::time::sleep_until((t0 + Duration::from_millis(1700)).into()).await;
    let (s, b) = poll(&server, &t, topic, "after_seq=0&limit=10").await;
    assert_eq!(s, 429, "a 429 must restart the window: {b}");
    let at: Vec<Instant> = server.fanout_requests().iter().map(|r| r.at).collect();
    assert!(
        at[2] - at[0] > Duration::from_millis(1500),
        "the third poll is past the first poll's window (server clock)"
    );
    // Other topics of the same subject are not affected.
    let (s, _) = poll(&server, &t, "run:other:events", "after_seq=0&limit=10").await;
    assert_eq!(s, 200);
    // Waiting retry_after_ms is enough.
    let retry = b["retry_after_ms"].as_u64().expect("retry_after_ms");
    tokio::time::sleep(Duration::from_millis(retry)).await;
    let (s, b) = poll(&server, &t, topic, "after_seq=0&limit=10").await;
    assert_eq!(s, 200, "{b}");

    // The interval can be overridden at runtime.
    server.set_faults(Faults {
        fanout_poll_min_interval_ms: Some(0),
        ..Faults::default()
    });
    for _ in 0..3 {
        let (s, _) = poll(&server, &t, topic, "after_seq=0&limit=10").await;
        assert_eq!(s, 200);
    }
    assert_eq!(server.faults().fanout_poll_min_interval_ms, Some(0));
    assert_eq!(server.metrics().fanout_rate_limited, 2);
    server.shutdown().await;
}

#[tokio::test]
async fn stale_cursor_410_with_both_reason_codes() {
    let server = start(DevServerConfig {
        fanout: FanoutConfig {
            poll_min_interval: Duration::ZERO,
            budget_run_events: 10,
            ..FanoutConfig::default()
        },
        ..DevServerConfig::default()
    })
    .await;
    let t = fanout_token(&server).await;
    let topic = "run:st:events";
    server.create_run("st");
    publish_n(&server, topic, 20);
    server.evict_events_through(topic, 18);
    assert_eq!(server.event_oldest_available(topic), 18);
    assert_eq!(server.event_head(topic), 21);
    assert_eq!(
        server
            .events(topic)
            .iter()
            .map(|e| e.sequence)
            .collect::<Vec<_>>(),
        vec![19, 20, 21]
    );

    let (s, b) = poll(&server, &t, topic, "after_seq=5&limit=10").await;
    assert_eq!(s, 410, "{b}");
    assert_eq!(b["error"], "stale_cursor");
    let d = &b["details"];
    assert_eq!(d["topic"], topic);
    assert_eq!(d["requested_cursor"], 5);
    assert_eq!(d["oldest_available_cursor"], 18);
    assert_eq!(d["head_cursor"], 21);
    assert_eq!(
        d["reason_codes"],
        json!(["retention_floor_breach", "replay_budget_exceeded"])
    );
    assert_eq!(d["replay_lag"], 16);
    assert_eq!(d["replay_budget_events"], 10);
    assert_eq!(d["qos_tier"], "warm");
    assert_eq!(d["recovery"], "reset_local_watermark_and_replay_bootstrap");

    let (s, b) = poll(&server, &t, topic, "after_seq=17&limit=10").await;
    assert_eq!(s, 410);
    assert_eq!(
        b["details"]["reason_codes"],
        json!(["retention_floor_breach"])
    );

    // Resuming from oldest_available_cursor works.
    let (s, page) = poll(&server, &t, topic, "after_seq=18&limit=10").await;
    assert_eq!(s, 200);
    assert_eq!(seqs(&page), vec![19, 20, 21]);
    assert_eq!(page["oldest_available_cursor"], 18);

    // Budget alone: a fresh log with 12 events, cursor 0 → 12 > 10.
    let topic2 = "run:st2:events";
    server.create_run("st2");
    publish_n(&server, topic2, 11);
    let (s, b) = poll(&server, &t, topic2, "after_seq=0&limit=10").await;
    assert_eq!(s, 410);
    assert_eq!(
        b["details"]["reason_codes"],
        json!(["replay_budget_exceeded"])
    );
    assert_eq!(server.metrics().fanout_stale, 3);
    server.shutdown().await;
}

#[tokio::test]
async fn ring_capacity_evicts_old_messages() {
    let server = start(DevServerConfig {
        fanout: FanoutConfig {
            poll_min_interval: Duration::ZERO,
            ring_capacity: 4,
            ..FanoutConfig::default()
        },
        ..DevServerConfig::default()
    })
    .await;
    let t = fanout_token(&server).await;
    let topic = "worker:w9:lifecycle";
    publish_n(&server, topic, 10);
    assert_eq!(server.event_oldest_available(topic), 6);
    let (s, page) = poll(&server, &t, topic, "after_seq=6&limit=10").await;
    assert_eq!(s, 200);
    assert_eq!(seqs(&page), vec![7, 8, 9, 10]);
    let (s, b) = poll(&server, &t, topic, "after_seq=5&limit=10").await;
    assert_eq!(s, 410);
    assert_eq!(b["details"]["oldest_available_cursor"], 6);
    server.shutdown().await;
}

#[tokio::test]
async fn slow_consumer_409_on_the_third_strike() {
    let server = start(no_rate_limit()).await;
    let t = fanout_token(&server).await;
    let topic = "run:slow:events";
    server.create_run("slow");
    publish_n(&server, topic, 399);
    for strike in 1..=2 {
        let (s, page) = poll(&server, &t, topic, "after_seq=0&limit=10").await;
        assert_eq!(s, 200);
        assert_eq!(page["slow_consumer_strikes"], strike);
        assert_eq!(seqs(&page).len(), 10);
    }
    let (s, b) = poll(&server, &t, topic, "after_seq=0&limit=10").await;
    assert_eq!(s, 409, "{b}");
    assert_eq!(b["error"], "slow_consumer_evicted");
    let d = &b["details"];
    assert_eq!(d["topic"], topic);
    assert_eq!(d["lag"], 400);
    assert_eq!(d["lag_threshold"], 300);
    assert_eq!(d["strikes"], 3);
    assert_eq!(d["max_strikes"], 3);
    assert_eq!(d["suggested_after_seq"], 0);
    assert_eq!(d["recovery"], "advance_cursor_or_rebootstrap");
    // Strikes reset after the eviction.
    let (s, page) = poll(&server, &t, topic, "after_seq=0&limit=10").await;
    assert_eq!(s, 200);
    assert_eq!(page["slow_consumer_strikes"], 1);
    // A poll within the threshold clears them.
    let (_, page) = poll(&server, &t, topic, "after_seq=100&limit=10").await;
    assert_eq!(page["slow_consumer_strikes"], 0);
    // Strikes are per (subject, topic): another subject starts at 0.
    let other = server.mint_token_with(&TestToken {
        subject: "user:77".into(),
        topics: vec!["runtime.run_events".into()],
        issued_offset_seconds: 0,
        ttl_seconds: 300,
        tampered: false,
    });
    let (_, page) = poll(&server, &other, topic, "after_seq=0&limit=10").await;
    assert_eq!(page["slow_consumer_strikes"], 1);
    assert_eq!(server.metrics().fanout_evictions, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn ws_hello_replay_then_live() {
    let server = start(DevServerConfig::default()).await;
    let t = fanout_token(&server).await;
    let topic = "run:live:events";
    server.create_run("live");
    publish_n(&server, topic, 4);
    let mut ws = ws_connect(&server, topic, "after_seq=2", Some(&t))
        .await
        .expect("upgrade accepted");
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["topic"], topic);
    assert_eq!(hello["after_seq"], 2);
    assert_eq!(hello["limit"], 100);
    let hint = hello["recommended_reconnect_backoff_ms"]
        .as_u64()
        .expect("hint");
    assert!((400..=650).contains(&hint), "{hint}");
    assert!(hello.get("head_cursor").is_none(), "hello tells no head");
    for seq in 3..=5 {
        let m = next_json(&mut ws).await;
        assert_eq!(m["type"], "message");
        assert_eq!(m["message"]["sequence"], seq);
        assert_eq!(m["message"]["topic"], topic);
        assert_eq!(m["message"]["kind"], "run.step");
    }
    assert_silent(&mut ws, 200).await;
    // Client text is ignored; ping is answered.
    ws.send(Message::Text("hi".into()))
        .await
        .expect("send text");
    ws.send(Message::Ping(b"p1".to_vec().into()))
        .await
        .expect("send ping");
    let pong = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("pong within 5 s")
        .expect("open")
        .expect("no error");
    assert_eq!(pong, Message::Pong(b"p1".to_vec().into()));
    // Live.
    let seq = server.publish_event(topic, "run.finished", json!({"ok": true}));
    assert_eq!(seq, 6);
    let m = next_json(&mut ws).await;
    assert_eq!(m["message"]["sequence"], 6);
    assert_eq!(m["message"]["kind"], "run.finished");
    assert_eq!(m["message"]["payload"], json!({"ok": true}));
    let m = server.metrics();
    assert_eq!(m.fanout_ws_upgrades, 1);
    let ft = m
        .fanout_topics
        .iter()
        .find(|t| t.topic == topic)
        .expect("metrics");
    assert_eq!((ft.subscribers, ft.head_cursor), (1, 6));
    assert_eq!(m.fanout_messages_sent, 4);

    // A cursor beyond head: hello only; a topic for an unknown run: hello, then silence.
    let mut ahead = ws_connect(&server, topic, "after_seq=99&limit=5", Some(&t))
        .await
        .expect("upgrade accepted");
    let hello = next_json(&mut ahead).await;
    assert_eq!(
        (hello["type"].as_str(), hello["limit"].as_u64()),
        (Some("hello"), Some(5))
    );
    assert_silent(&mut ahead, 200).await;
    let mut unknown = ws_connect(&server, "run:ghost:events", "after_seq=0", Some(&t))
        .await
        .expect("upgrade accepted");
    assert_eq!(next_json(&mut unknown).await["type"], "hello");
    assert_silent(&mut unknown, 200).await;
    // The ghost run starts: its first event arrives live.
    assert_eq!(server.create_run("ghost"), 1);
    let m = next_json(&mut unknown).await;
    assert_eq!(
        (
            m["message"]["sequence"].as_u64(),
            m["message"]["kind"].as_str()
        ),
        (Some(1), Some("run.started"))
    );

    let reqs = server.fanout_requests();
    let ws_reqs: Vec<_> = reqs
        .iter()
        .filter(|r| r.kind == FanoutRequestKind::WebSocket)
        .collect();
    assert_eq!(ws_reqs.len(), 3);
    assert_eq!(ws_reqs[0].topic, topic);
    assert_eq!(ws_reqs[0].after_seq, Some(2));
    assert_eq!(ws_reqs[0].limit, None);
    assert_eq!(ws_reqs[0].status, 101);
    assert_eq!(ws_reqs[0].subject.as_deref(), Some("user:42"));
    assert_eq!(ws_reqs[1].limit, Some(5));

    // Restart drops open fanout sockets without a close frame; logs are kept.
    server.set_faults(Faults {
        restart: true,
        ..Faults::default()
    });
    assert_dropped_without_close(&mut ws).await;
    assert_dropped_without_close(&mut ahead).await;
    assert_eq!(server.event_head(topic), 6);
    server.shutdown().await;
}

#[tokio::test]
async fn ws_from_zero_on_900_events_delivers_200_then_is_evicted() {
    let server = start(DevServerConfig::default()).await;
    let t = fanout_token(&server).await;
    let topic = "run:big:events";
    server.create_run("big");
    publish_n(&server, topic, 899);
    let mut ws = ws_connect(&server, topic, "after_seq=0", Some(&t))
        .await
        .expect("upgrade accepted");
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    for seq in 1..=200u64 {
        let m = next_json(&mut ws).await;
        assert_eq!(m["type"], "message", "frame {seq}: {m}");
        assert_eq!(m["message"]["sequence"], seq);
    }
    let err = next_json(&mut ws).await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "slow_consumer_evicted");
    assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_dropped_without_close(&mut ws).await;
    assert_eq!(server.metrics().fanout_evictions, 1);

    // Resuming from 200: lag 700 → 2 more batches, evicted again at 400 (progress each time).
    let mut ws = ws_connect(&server, topic, "after_seq=200", Some(&t))
        .await
        .expect("upgrade accepted");
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    for seq in 201..=400u64 {
        assert_eq!(next_json(&mut ws).await["message"]["sequence"], seq);
    }
    assert_eq!(next_json(&mut ws).await["code"], "slow_consumer_evicted");
    assert_dropped_without_close(&mut ws).await;

    // Within the threshold the replay completes: from 600 (lag 300, not a strike).
    // (`limit` is clamped to 200.)
    let mut ws = ws_connect(&server, topic, "after_seq=600&limit=999", Some(&t))
        .await
        .expect("upgrade accepted");
    let hello = next_json(&mut ws).await;
    assert_eq!(
        (hello["type"].as_str(), hello["limit"].as_u64()),
        (Some("hello"), Some(200))
    );
    for seq in 601..=900u64 {
        assert_eq!(next_json(&mut ws).await["message"]["sequence"], seq);
    }
    assert_silent(&mut ws, 200).await;
    server.shutdown().await;
}

#[tokio::test]
async fn ws_stale_cursor_then_tcp_drop() {
    let server = start(DevServerConfig {
        fanout: FanoutConfig {
            budget_run_events: 2,
            ..FanoutConfig::default()
        },
        ..DevServerConfig::default()
    })
    .await;
    let t = fanout_token(&server).await;
    let topic = "run:gone:events";
    server.create_run("gone");
    publish_n(&server, topic, 20);
    server.evict_events_through(topic, 18);
    let mut ws = ws_connect(&server, topic, "after_seq=0", Some(&t))
        .await
        .expect("upgrade accepted (stale is reported after it)");
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    let stale = next_json(&mut ws).await;
    assert_eq!(stale["type"], "stale_cursor", "{stale}");
    assert_eq!(stale["topic"], topic);
    assert_eq!(stale["requested_cursor"], 0);
    assert_eq!(stale["oldest_available_cursor"], 18);
    assert_eq!(stale["head_cursor"], 21);
    assert_eq!(
        stale["reason_codes"],
        json!(["retention_floor_breach", "replay_budget_exceeded"])
    );
    assert_eq!(stale["replay_lag"], 21);
    assert_eq!(stale["replay_budget_events"], 2);
    assert_eq!(stale["qos_tier"], "warm");
    assert_dropped_without_close(&mut ws).await;
    assert_eq!(server.metrics().fanout_stale, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn unauthorized_reasons() {
    let server = start(no_rate_limit()).await;
    let topic = "run:auth:events";
    server.create_run("auth");
    let reason = |(s, b): (u16, String)| {
        let v: Value = serde_json::from_str(&b).expect("JSON error body");
        assert_eq!(v["error"], "unauthorized", "{v}");
        (s, v["reason_code"].as_str().unwrap_or_default().to_owned())
    };
    let q = "after_seq=0&limit=10";
    let cases = [
        (None, "missing_authorization"),
        (Some(minted(&server, 0, 300, true)), "invalid_token"),
        (Some("not-a-jwt".to_owned()), "invalid_token"),
        (Some(minted(&server, -400, 300, false)), "token_expired"),
        (Some(minted(&server, -400, 900, false)), "token_too_old"),
    ];
    for (tok, want) in &cases {
        let got = reason(poll_with(&server, topic, q, tok.as_deref(), None).await);
        assert_eq!(got, (401, (*want).to_owned()), "poll with {want}");
        let got = reason(
            ws_connect(&server, topic, "after_seq=0", tok.as_deref())
                .await
                .expect_err("upgrade refused"),
        );
        assert_eq!(got, (401, (*want).to_owned()), "ws with {want}");
    }
    // Token max age is configurable; a fresh token passes.
    let fresh = minted(&server, -100, 900, false);
    let (s, _) = poll_with(&server, topic, q, Some(&fresh), None).await;
    assert_eq!(s, 200);
    assert_eq!(server.metrics().fanout_unauthorized, 10);
    let reqs = server.fanout_requests();
    assert!(reqs.iter().filter(|r| r.status == 401).count() == 10);
    server.shutdown().await;
}

#[tokio::test]
async fn forbidden_topic_and_origin() {
    let server = start(DevServerConfig {
        fanout: FanoutConfig {
            poll_min_interval: Duration::ZERO,
            allowed_origins: Some(vec!["https://app.example".into()]),
            ..FanoutConfig::default()
        },
        ..DevServerConfig::default()
    })
    .await;
    let t = fanout_token(&server).await;
    let topic = "run:o:events";
    server.create_run("o");
    let q = "after_seq=0&limit=10";
    let err = |text: &str| -> (String, String) {
        let v: Value = serde_json::from_str(text).expect("JSON");
        (
            v["error"].as_str().unwrap_or_default().to_owned(),
            v["reason_code"].as_str().unwrap_or_default().to_owned(),
        )
    };
    // Unknown topic names.
    for bad in [
        "runtime.run_summaries",
        "run:a b:events",
        "foo",
        "worker::lifecycle",
    ] {
        let (s, b) = poll_with(&server, bad, q, Some(&t), None).await;
        assert_eq!(s, 403, "{bad}: {b}");
        assert_eq!(err(&b).0, "forbidden_topic");
    }
    // A token without runtime.run_events (the limited principal).
    let (status, body) = token(&server, DevServer::LIMITED_APP_TOKEN, json!({})).await;
    assert_eq!(status, 200);
    let limited = body["data"]["token"].as_str().expect("token").to_owned();
    let (s, b) = poll_with(&server, topic, q, Some(&limited), None).await;
    assert_eq!((s, err(&b).0.as_str()), (403, "forbidden_topic"));
    let (s, b) = ws_connect(&server, topic, "after_seq=0", Some(&limited))
        .await
        .expect_err("refused");
    assert_eq!((s, err(&b).0.as_str()), (403, "forbidden_topic"));
    // A run-events token does not cover worker topics.
    let run_only = minted(&server, 0, 300, false);
    let (s, _) = poll_with(&server, "worker:w:lifecycle", q, Some(&run_only), None).await;
    assert_eq!(s, 403);
    // Origin.
    let (s, b) = poll_with(&server, topic, q, Some(&t), Some("https://evil.example")).await;
    assert_eq!(s, 403);
    assert_eq!(err(&b).0, "forbidden_origin");
    assert!(!err(&b).1.is_empty());
    let (s, _) = poll_with(&server, topic, q, Some(&t), Some("https://app.example")).await;
    assert_eq!(s, 200);
    let (s, _) = poll_with(&server, topic, q, Some(&t), None).await;
    assert_eq!(s, 200);
    // Check order: a bad token beats a forbidden topic; a forbidden topic beats the origin.
    let (s, _) = poll_with(&server, "foo", q, None, Some("https://evil.example")).await;
    assert_eq!(s, 401);
    let (s, b) = poll_with(&server, "foo", q, Some(&t), Some("https://evil.example")).await;
    assert_eq!((s, err(&b).0.as_str()), (403, "forbidden_topic"));
    let mut req = ws_url(&server, topic, "after_seq=0")
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("authorization", format!("Bearer {t}").parse().expect("hv"));
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().expect("hv"));
    match tokio_tungstenite::connect_async(req).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn ws_blocked_fault_answers_502_and_polls_still_work() {
    let server = start(no_rate_limit()).await;
    let t = fanout_token(&server).await;
    let topic = "run:b:events";
    server.create_run("b");
    let http = reqwest::Client::new();
    let active: Value = http
        .post(format!("{}/dev/faults", server.base_url()))
        .json(&json!({"fanout_ws_blocked": true}))
        .send()
        .await
        .expect("faults route")
        .json()
        .await
        .expect("JSON");
    assert_eq!(active["fanout_ws_blocked"], true);
    let (s, body) = ws_connect(&server, topic, "after_seq=0", Some(&t))
        .await
        .expect_err("blocked");
    assert_eq!(s, 502);
    assert!(
        serde_json::from_str::<Value>(&body).is_err(),
        "plain text: {body}"
    );
    assert!(!body.is_empty());
    let (s, page) = poll(&server, &t, topic, "after_seq=0&limit=10").await;
    assert_eq!(s, 200);
    assert_eq!(seqs(&page), vec![1]);
    server.set_faults(Faults {
        fanout_ws_blocked: Some(false),
        ..Faults::default()
    });
    let mut ws = ws_connect(&server, topic, "after_seq=0", Some(&t))
        .await
        .expect("unblocked");
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    let statuses: Vec<u16> = server
        .fanout_requests()
        .iter()
        .filter(|r| r.kind == FanoutRequestKind::WebSocket)
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![502, 101]);
    server.shutdown().await;
}

#[tokio::test]
async fn reject_auth_fault_counts_down() {
    let server = start(no_rate_limit()).await;
    let t = fanout_token(&server).await;
    let topic = "run:ra:events";
    server.create_run("ra");
    let http = reqwest::Client::new();
    let faults_url = format!("{}/dev/faults", server.base_url());
    http.post(&faults_url)
        .json(&json!({"fanout_reject_auth": 2}))
        .send()
        .await
        .expect("faults route");
    let remaining = |v: Value| v["fanout_reject_auth"].as_u64();
    let get_faults = || async {
        http.get(&faults_url)
            .send()
            .await
            .expect("faults")
            .json::<Value>()
            .await
            .expect("JSON")
    };
    assert_eq!(remaining(get_faults().await), Some(2));
    let (s, b) = poll(&server, &t, topic, "after_seq=0&limit=10").await;
    assert_eq!((s, b["reason_code"].as_str()), (401, Some("token_expired")));
    assert_eq!(remaining(get_faults().await), Some(1));
    let (s, b) = ws_connect(&server, topic, "after_seq=0", Some(&t))
        .await
        .expect_err("refused");
    assert_eq!(s, 401);
    assert!(b.contains("token_expired"), "{b}");
    assert_eq!(remaining(get_faults().await), Some(0));
    let (s, _) = poll(&server, &t, topic, "after_seq=0&limit=10").await;
    assert_eq!(s, 200);
    let mut ws = ws_connect(&server, topic, "after_seq=0", Some(&t))
        .await
        .expect("accepted again");
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    server.shutdown().await;
}

#[derive(Deserialize)]
struct RawMessage {
    sequence: u64,
    payload: Box<RawValue>,
}

#[derive(Deserialize)]
struct RawPage {
    messages: Vec<RawMessage>,
}

#[derive(Deserialize)]
struct RawFrame {
    message: RawMessage,
}

#[tokio::test]
async fn payloads_come_back_byte_identical() {
    let server = start(no_rate_limit()).await;
    let t = fanout_token(&server).await;
    let topic = "runtime.codex_worker_events";
    let payloads = [
        "-0.0",
        "9007199254740993",
        "null",
        r#""a string with \"quotes\" and \u00e9""#,
        "[1,2.50,{\"b\":null,\"a\":1.0e-7}]",
        "{\"z\":1,\"a\":[true,false]}",
        "123456789012345678901234567890",
    ];
    for p in &payloads {
        server.publish_event_raw(topic, "worker.event", p);
    }
    // Through the control route too (raw body text is kept).
    let resp: Value = reqwest::Client::new()
        .post(format!("{}/dev/events", server.base_url()))
        .header("content-type", "application/json")
        .body(r#"{"topic":"runtime.codex_worker_events","kind":"worker.event","payload":-0.0}"#)
        .send()
        .await
        .expect("dev events")
        .json()
        .await
        .expect("JSON");
    assert_eq!(resp["sequence"], 8);
    let mut expected: Vec<&str> = payloads.to_vec();
    expected.push("-0.0");

    let (s, text) = poll_with(&server, topic, "after_seq=0&limit=50", Some(&t), None).await;
    assert_eq!(s, 200);
    let page: RawPage = serde_json::from_str(&text).expect("page");
    let got: Vec<&str> = page.messages.iter().map(|m| m.payload.get()).collect();
    assert_eq!(got, expected);
    assert_eq!(
        page.messages.iter().map(|m| m.sequence).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<u64>>()
    );

    let mut ws = ws_connect(&server, topic, "after_seq=0", Some(&t))
        .await
        .expect("upgrade");
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    for want in &expected {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("frame")
            .expect("open")
            .expect("ok");
        let Message::Text(text) = msg else {
            panic!("text frame expected, got {msg:?}")
        };
        let frame: RawFrame = serde_json::from_str(&text).expect("frame");
        assert_eq!(frame.message.payload.get(), *want);
    }
    let stored: Vec<String> = server
        .events(topic)
        .into_iter()
        .map(|e| e.payload_raw)
        .collect();
    assert_eq!(stored, expected);

    // GET /dev/events/{topic}.
    let text = reqwest::Client::new()
        .get(format!("{}/dev/events/{topic}", server.base_url()))
        .send()
        .await
        .expect("dev events")
        .text()
        .await
        .expect("body");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(
        (
            v["head_cursor"].as_u64(),
            v["oldest_available_cursor"].as_u64()
        ),
        (Some(8), Some(0))
    );
    let page: RawPage = serde_json::from_str(&text).expect("messages");
    assert_eq!(
        page.messages
            .iter()
            .map(|m| m.payload.get())
            .collect::<Vec<_>>(),
        expected
    );
    // Bad control requests are typed errors.
    let s = reqwest::Client::new()
        .post(format!("{}/dev/events", server.base_url()))
        .json(&json!({"topic": "nope", "kind": "k", "payload": 1}))
        .send()
        .await
        .expect("dev events")
        .status()
        .as_u16();
    assert_eq!(s, 422);
    server.shutdown().await;
}

#[tokio::test]
async fn phoenix_can_be_disabled() {
    let off = start(DevServerConfig {
        phoenix_enabled: false,
        ..no_rate_limit()
    })
    .await;
    let on = start(no_rate_limit()).await;
    let status = |server: &DevServer| {
        let url = format!(
            "{}/sync/socket/websocket?vsn=2.0.0&token=x",
            server.base_url()
        );
        async move { reqwest::get(url).await.expect("answers").status().as_u16() }
    };
    assert_eq!(status(&off).await, 404);
    assert_eq!(
        status(&on).await,
        403,
        "enabled: a bad token is refused, not 404"
    );
    // Dialect F still works on the fanout-only server.
    let t = fanout_token(&off).await;
    off.create_run("x");
    let (s, page) = poll(&off, &t, "run:x:events", "after_seq=0&limit=10").await;
    assert_eq!(s, 200);
    assert_eq!(seqs(&page), vec![1]);
    off.shutdown().await;
    on.shutdown().await;
}

#[tokio::test]
async fn token_route_grants_fanout_topics() {
    let server = start(no_rate_limit()).await;
    let (s, body) = token(
        &server,
        DevServer::APP_TOKEN,
        json!({"topics": ["run:abc:events", "worker:w1:lifecycle", "runtime.run_summaries"]}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let d = &body["data"];
    assert_eq!(
        d["scopes"],
        json!([
            "runtime.run_events",
            "runtime.codex_worker_events",
            "runtime.run_summaries"
        ])
    );
    assert_eq!(
        d["granted_topics"],
        json!([
            {"topic": "run:abc:events", "required_scope": "runtime.run_events"},
            {"topic": "worker:w1:lifecycle", "required_scope": "runtime.codex_worker_events"},
            {"topic": "runtime.run_summaries", "required_scope": "runtime.run_summaries"},
        ])
    );
    let t = d["token"].as_str().expect("token");
    let (s, _) = poll(&server, t, "run:abc:events", "after_seq=0&limit=1").await;
    assert_eq!(s, 200);
    // Topic not covered by the requested scopes.
    let (s, _) = token(
        &server,
        DevServer::APP_TOKEN,
        json!({"scopes": ["runtime.run_summaries"], "topics": ["run:abc:events"]}),
    )
    .await;
    assert_eq!(s, 422);
    // Not a topic name.
    let (s, _) = token(
        &server,
        DevServer::APP_TOKEN,
        json!({"topics": ["run:a/b:events"]}),
    )
    .await;
    assert_eq!(s, 422);
    // The default principal holds runtime.run_events; the limited one does not.
    let (_, body) = token(&server, DevServer::APP_TOKEN, json!({})).await;
    assert!(body["data"]["scopes"]
        .as_array()
        .expect("scopes")
        .contains(&json!("runtime.run_events")));
    let (s, _) = token(
        &server,
        DevServer::LIMITED_APP_TOKEN,
        json!({"scopes": ["runtime.run_events"]}),
    )
    .await;
    assert_eq!(s, 403);
    server.shutdown().await;
}

#[tokio::test]
async fn fanout_logs_survive_a_restart_on_the_same_port() {
    let server = start(no_rate_limit()).await;
    server.create_run("keep");
    publish_n(&server, "run:keep:events", 2);
    let port = server.addr().port();
    let state = server.shutdown_and_export().await;
    let again = DevServer::start_with_state(
        DevServerConfig {
            port,
            ..no_rate_limit()
        },
        state,
    )
    .await
    .expect("restart");
    assert_eq!(again.event_head("run:keep:events"), 3);
    assert_eq!(
        again.publish_event("run:keep:events", "run.step", json!(null)),
        4
    );
    again.shutdown().await;
}

/// Kills the child process on drop (also when an assertion fails).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn cli_seeds_runs_and_disables_phoenix() {
    use std::io::BufRead;
    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_khala-dev-server"))
            .args([
                "--port",
                "0",
                "--seed-run",
                "demo:5",
                "--seed-run",
                "b.2:1",
                "--ring-capacity",
                "3",
                "--no-phoenix",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("binary starts"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let base = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("khala dev server: ").map(str::to_owned))
    })
    .await
    .expect("reader")
    .expect("the binary prints its URL");
    let get = |path: &str| {
        let url = format!("{base}{path}");
        async move {
            let resp = reqwest::get(url).await.expect("answers");
            let status = resp.status().as_u16();
            (status, resp.text().await.expect("body"))
        }
    };
    let (s, text) = get("/dev/events/run:demo:events").await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["head_cursor"], 5);
    assert_eq!(v["oldest_available_cursor"], 2, "ring of 3 keeps 3..=5");
    assert_eq!(v["messages"][0]["kind"], "run.step");
    assert_eq!(v["messages"][2]["payload"], json!({"step": 4}));
    let (_, text) = get("/dev/events/run:b.2:events").await;
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["head_cursor"], 1);
    assert_eq!(v["messages"][0]["kind"], "run.started");
    let (s, _) = get("/sync/socket/websocket?vsn=2.0.0&token=x").await;
    assert_eq!(s, 404);
    let (s, text) = get("/internal/v1/khala/fanout/metrics").await;
    assert_eq!(s, 200);
    let m: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(m["fanout_topics"][0]["topic"], "run:b.2:events");
    assert_eq!(m["fanout_topics"][1]["head_cursor"], 5);
    assert_eq!(m["fanout_polls"], 0);
}
