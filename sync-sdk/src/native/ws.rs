//! One WebSocket connection task (tokio-tungstenite, rustls).
//!
//! The task forwards inbound text frames into the driver's bounded event channel; when the
//! driver is busy committing, the channel fills, this task stops reading, and TCP
//! backpressure reaches the server (which then applies its slow-consumer policy).

use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::endpoint::SecretUrl;
use crate::engine::{ConnId, HttpFailure};

use super::driver::IoEvent;

/// Commands from the driver to a connection task.
#[derive(Debug)]
pub(crate) enum WsCmd {
    Send(String),
    Close,
}

pub(crate) async fn run_connection(
    conn: ConnId,
    url: SecretUrl,
    max_frame_bytes: usize,
    events: mpsc::Sender<IoEvent>,
) {
    let mut cfg = WebSocketConfig::default();
    cfg.max_message_size = Some(max_frame_bytes);
    cfg.max_frame_size = Some(max_frame_bytes);
    let connect = tokio_tungstenite::connect_async_with_config(url.expose(), Some(cfg), true);
    let ws = match connect.await {
        Ok((ws, _resp)) => ws,
        Err(e) => {
            let _ = events
                .send(IoEvent::ConnectFailed(conn, upgrade_failure(e)))
                .await;
            return;
        }
    };
    drop(url);
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
                Some(WsCmd::Close) | None => {
                    let _ = sink.send(Message::Close(None)).await;
                    return;
                }
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if events.send(IoEvent::Frame(conn, t.as_str().to_owned())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    // Phoenix v2 text protocol: a binary frame is only meaningful as UTF-8 JSON.
                    let text = String::from_utf8_lossy(&b).into_owned();
                    if events.send(IoEvent::Frame(conn, text)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    break frame.map_or_else(|| "closed by server".to_owned(), |f| format!("closed by server: {} {}", f.code, f.reason));
                }
                Some(Ok(_)) => {} // ping/pong handled by tungstenite
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

/// Maps an upgrade failure without ever including the URL (it carries the token).
fn upgrade_failure(e: tungstenite::Error) -> HttpFailure {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let parsed = crate::protocol::http::decode_error_body(&body);
            HttpFailure::Status {
                status,
                code: parsed.code,
                message: parsed
                    .message
                    .unwrap_or_else(|| "socket upgrade refused".into()),
                retry_after: None,
            }
        }
        other => HttpFailure::Transport(describe(&other)),
    }
}
