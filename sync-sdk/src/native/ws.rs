//! One WebSocket connection task (tokio-tungstenite, rustls).
//!
//! The task forwards inbound text frames into the driver's bounded event channel; when the
//! driver is busy committing, the channel fills, this task stops reading, and TCP
//! backpressure reaches the server (which then applies its slow-consumer policy).

use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::endpoint::SecretUrl;
use crate::engine::{ConnId, HttpFailure};
use crate::protocol::token::SyncToken;

use super::driver::IoEvent;

/// Commands from the driver to a connection task.
#[derive(Debug)]
pub(crate) enum WsCmd {
    Send(String),
    /// A WebSocket ping (dialect-F liveness; the server answers with a pong).
    Ping,
    Close,
}

/// Opens the socket with our own HTTP/1.1 upgrade (reqwest + rustls) and hands the upgraded
/// stream to tungstenite without its client handshake. tungstenite's handshake logs the full
/// request line — token included — at `trace`; this path never formats the URL anywhere.
async fn open(
    http: &reqwest::Client,
    url: &SecretUrl,
    bearer: Option<&SyncToken>,
    cfg: WebSocketConfig,
) -> Result<WebSocketStream<reqwest::Upgraded>, HttpFailure> {
    use reqwest::header::{
        CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
    };
    let key = tungstenite::handshake::client::generate_key();
    let mut req = http.get(url.expose());
    if let Some(token) = bearer {
        req = req.header(reqwest::header::AUTHORIZATION, super::http::bearer(token)?);
    }
    let resp = req
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, "websocket")
        .header(SEC_WEBSOCKET_VERSION, "13")
        .header(SEC_WEBSOCKET_KEY, &key)
        .send()
        .await
        .map_err(|e| HttpFailure::Transport(e.without_url().to_string()))?;
    if resp.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
        return Err(super::http::failure(resp).await);
    }
    let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let accept_ok = resp
        .headers()
        .get(SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !accept_ok {
        return Err(HttpFailure::Transport(
            "bad Sec-WebSocket-Accept in upgrade response".into(),
        ));
    }
    let upgraded = resp
        .upgrade()
        .await
        .map_err(|e| HttpFailure::Transport(e.without_url().to_string()))?;
    Ok(WebSocketStream::from_raw_socket(upgraded, Role::Client, Some(cfg)).await)
}

/// Runs one connection: `bearer` is sent as `Authorization: Bearer …` (dialect F); dialect P
/// carries its token in `url`.
pub(crate) async fn run_connection(
    conn: ConnId,
    http: reqwest::Client,
    url: SecretUrl,
    bearer: Option<SyncToken>,
    max_frame_bytes: usize,
    events: mpsc::Sender<IoEvent>,
    budget: std::sync::Arc<tokio::sync::Semaphore>,
) {
    // Permits for a frame of `len` bytes (at least 1, at most the whole budget).
    let permits = |len: usize| -> u32 {
        u32::try_from(len.clamp(1, super::driver::FRAME_BUDGET_BYTES)).unwrap_or(u32::MAX)
    };
    let mut cfg = WebSocketConfig::default();
    cfg.max_message_size = Some(max_frame_bytes);
    cfg.max_frame_size = Some(max_frame_bytes);
    let ws = match open(&http, &url, bearer.as_ref(), cfg).await {
        Ok(ws) => ws,
        Err(f) => {
            let _ = events.send(IoEvent::ConnectFailed(conn, f)).await;
            return;
        }
    };
    drop(url);
    drop(bearer);
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<WsCmd>();
    if events.send(IoEvent::Connected(conn, cmd_tx)).await.is_err() {
        return;
    }
    let (mut sink, mut stream) = ws.split();
    let reason: String = loop {
        tokio::select! {
            cmd = cmd_rx.recv() => match cmd {
                Some(WsCmd::Send(text)) => {
                    if let Err(e) = sink.send(Message::text(text)).await {
                        break format!("send failed: {e}");
                    }
                }
                Some(WsCmd::Ping) => {
                    if let Err(e) = sink.send(Message::Ping(Default::default())).await {
                        break format!("send failed: {e}");
                    }
                }
                Some(WsCmd::Close) | None => {
                    let _ = sink.send(Message::Close(None)).await;
                    return;
                }
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let Ok(permit) = budget.clone().acquire_many_owned(permits(t.len())).await else {
                        return;
                    };
                    if events.send(IoEvent::Frame(conn, t.as_str().to_owned(), permit)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    // Phoenix v2 text protocol: a binary frame is only meaningful as UTF-8 JSON.
                    let text = String::from_utf8_lossy(&b).into_owned();
                    let Ok(permit) = budget.clone().acquire_many_owned(permits(text.len())).await else {
                        return;
                    };
                    if events.send(IoEvent::Frame(conn, text, permit)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    break frame.map_or_else(|| "closed by server".to_owned(), |f| format!("closed by server: {} {}", f.code, f.reason));
                }
                Some(Ok(Message::Pong(_))) => {
                    if events.send(IoEvent::Pong(conn)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {} // pings are answered by tungstenite
                Some(Err(tungstenite::Error::Capacity(
                    tungstenite::error::CapacityError::MessageTooLong { size, max_size },
                ))) => {
                    // Refused from the frame header, before the payload was buffered.
                    let _ = events.send(IoEvent::FrameTooLarge(conn, size, max_size)).await;
                    return;
                }
                Some(Err(e)) => break describe(&e),
                None => break "connection closed".to_owned(),
            },
        }
    };
    let _ = events.send(IoEvent::Disconnected(conn, reason)).await;
}

fn describe(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Capacity(c) => format!("frame too large: {c}"),
        tungstenite::Error::Protocol(p) => format!("protocol violation: {p}"),
        tungstenite::Error::Io(io) => format!("io: {}", io.kind()),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            "connection closed".to_owned()
        }
        other => format!("websocket error: {}", kind_name(other)),
    }
}

fn kind_name(e: &tungstenite::Error) -> &'static str {
    match e {
        tungstenite::Error::Tls(_) => "tls",
        tungstenite::Error::Url(_) => "url",
        tungstenite::Error::Http(_) => "http",
        tungstenite::Error::HttpFormat(_) => "http format",
        tungstenite::Error::Utf8(_) => "utf8",
        tungstenite::Error::WriteBufferFull(_) => "write buffer full",
        tungstenite::Error::AttackAttempt => "attack attempt",
        _ => "other",
    }
}
