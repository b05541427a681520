//! A minimal Phoenix v2 JSON client for the tests (not the SDK's).

use futures::{SinkExt, StreamExt};
use khala_dev_server::{DevServer, DevServerConfig};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const RUNS: &str = "runtime.run_summaries";
pub const WORKERS: &str = "runtime.codex_worker_summaries";
pub const NOTES: &str = "runtime.notifications";

/// Test config: short timers so tests stay fast.
pub fn fast_config() -> DevServerConfig {
    DevServerConfig {
        heartbeat_interval: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        reauth_close_delay: Duration::from_millis(400),
        ..DevServerConfig::default()
    }
}

pub async fn start(config: DevServerConfig) -> DevServer {
    DevServer::start(config).await.expect("server starts")
}

pub fn token(server: &DevServer) -> String {
    server.mint_token_for_tests("user:42", Duration::from_secs(300))
}

/// How the socket ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// A close frame with this code.
    Closed(u16),
    /// The TCP connection dropped without a close frame.
    Dropped,
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_ref: u64,
}

/// Upgrade status (101 → Ok).
pub async fn upgrade_status(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected connect error {e}"),
    }
}

impl Client {
    pub async fn connect(server: &DevServer, token: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(server.socket_url(token))
            .await
            .expect("websocket connects");
        Client { ws, next_ref: 0 }
    }

    pub fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client { ws, next_ref: 0 }
    }

    /// Connects and joins; returns the client and the join response.
    pub async fn joined(server: &DevServer, token: &str) -> (Client, Value) {
        let mut c = Client::connect(server, token).await;
        let reply = c.join().await;
        assert_eq!(reply[4]["status"], "ok", "join: {reply}");
        let resp = reply[4]["response"].clone();
        (c, resp)
    }

    pub async fn send_raw(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Sends `[join_ref "1", ref, topic, event, payload]`; returns the ref.
    pub async fn push(&mut self, topic: &str, event: &str, payload: Value) -> String {
        self.next_ref += 1;
        let r = self.next_ref.to_string();
        let frame = json!(["1", r, topic, event, payload]);
        self.send_raw(frame.to_string()).await;
        r
    }

    /// Next text frame (5 s timeout); `Err` when the socket ended.
    pub async fn recv(&mut self) -> Result<Value, Ended> {
        self.recv_within(Duration::from_secs(5)).await
    }

    pub async fn recv_within(&mut self, within: Duration) -> Result<Value, Ended> {
        loop {
            let msg = tokio::time::timeout(within, self.ws.next())
                .await
                .expect("frame within timeout");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Ok(serde_json::from_str(t.as_str()).expect("server sends JSON"))
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(Ended::Closed(frame.map_or(1005, |f| u16::from(f.code))))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(Ended::Dropped),
            }
        }
    }

    /// Raw text of the next text frame.
    pub async fn recv_text(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .expect("frame within timeout");
            if let Some(Ok(Message::Text(t))) = msg {
                return t.as_str().to_owned();
            }
            assert!(matches!(msg, Some(Ok(_))), "socket ended");
        }
    }

    /// Receives until the reply to `r`; returns (frames before it, reply).
    pub async fn until_reply(&mut self, r: &str) -> (Vec<Value>, Value) {
        let mut before = Vec::new();
        loop {
            let f = self.recv().await.expect("socket open");
            if f[3] == "phx_reply" && f[1] == r {
                return (before, f);
            }
            before.push(f);
        }
    }

    /// Sends and waits for the reply.
    pub async fn request(
        &mut self,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> (Vec<Value>, Value) {
        let r = self.push(topic, event, payload).await;
        self.until_reply(&r).await
    }

    pub async fn join(&mut self) -> Value {
        self.request("sync:v1", "phx_join", json!({})).await.1
    }

    /// Subscribe; returns (update batch payloads before the reply, reply frame).
    pub async fn subscribe(&mut self, payload: Value) -> (Vec<Value>, Value) {
        let (before, reply) = self.request("sync:v1", "sync:subscribe", payload).await;
        let batches = before
            .into_iter()
            .filter(|f| f[3] == "sync:update_batch")
            .map(|f| f[4].clone())
            .collect();
        (batches, reply)
    }

    /// Next frame with `event`, skipping others.
    pub async fn next_event(&mut self, event: &str) -> Value {
        loop {
            let f = self.recv().await.expect("socket open");
            if f[3] == event {
                return f;
            }
        }
    }

    /// Reads until the socket ends (within `within`), returning how, and the frames seen.
    pub async fn until_end(&mut self, within: Duration) -> (Vec<Value>, Ended) {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Ok(f) => seen.push(f),
                Err(e) => return (seen, e),
            }
        }
    }

    /// Asserts nothing arrives for `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Ok(Some(Ok(m))) = tokio::time::timeout(d, self.ws.next()).await {
            panic!("expected silence, got {m:?}");
        }
    }
}

/// Watermarks of every update in `batches`, in order.
pub fn watermarks(batches: &[Value]) -> Vec<u64> {
    batches
        .iter()
        .flat_map(|b| b["updates"].as_array().cloned().unwrap_or_default())
        .map(|u| u["watermark"].as_u64().expect("watermark"))
        .collect()
}

pub fn publish_n(server: &DevServer, topic: &str, n: usize) {
    for i in 0..n {
        server.publish(topic, &format!("doc:{}", i % 7), json!({"i": i}));
    }
}
