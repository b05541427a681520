//! Platform IO for the browser driver: clock, timers, `fetch`, WebSocket.
//!
//! Every API is taken from the global object (`globalThis`), not from `window`, so the same
//! module works in a page, a worker and Node (which has `fetch`, `setTimeout`, `performance`
//! and — from Node 22, or 20 with `--experimental-websocket` — `WebSocket`).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::channel::mpsc;
use js_sys::{Function, Promise};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{BinaryType, CloseEvent, MessageEvent, Request, RequestInit, Response, WebSocket};

use khala_sync::engine::{ConnId, HttpFailure};
use khala_sync::protocol::fanout::{decode_poll, PollFailure, PollPage};
use khala_sync::protocol::http::decode_error_body;
use khala_sync::protocol::{DecodeLimits, ProtocolError};

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &Function, ms: f64) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: &JsValue);
    #[wasm_bindgen(js_name = fetch)]
    fn global_fetch(request: &Request) -> Promise;
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
}

/// Milliseconds on a monotonic clock (`performance.now()`).
pub(crate) fn now_ms() -> f64 {
    performance_now()
}

/// Wall-clock milliseconds since the epoch (`Date.now()`).
pub(crate) fn epoch_ms() -> f64 {
    js_sys::Date::now()
}

// ---------------------------------------------------------------------------------------
// Timers
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct SleepState {
    fired: bool,
    waker: Option<Waker>,
}

/// A `setTimeout` as a future; dropping it clears the timer (the driver re-arms its one
/// deadline on every loop turn, so abandoned timers must not pile up).
pub(crate) struct Sleep {
    state: Rc<RefCell<SleepState>>,
    id: JsValue,
    _closure: Closure<dyn FnMut()>,
}

impl Sleep {
    pub(crate) fn new(delay: Duration) -> Sleep {
        let state = Rc::new(RefCell::new(SleepState::default()));
        let s = Rc::clone(&state);
        let closure = Closure::<dyn FnMut()>::new(move || {
            let mut st = s.borrow_mut();
            st.fired = true;
            if let Some(w) = st.waker.take() {
                w.wake();
            }
        });
        // Browsers clamp to a 32-bit signed millisecond count.
        let ms = (delay.as_millis() as f64).min(2_147_483_647.0);
        let id = set_timeout(closure.as_ref().unchecked_ref(), ms);
        Sleep {
            state,
            id,
            _closure: closure,
        }
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.state.borrow_mut();
        if st.fired {
            Poll::Ready(())
        } else {
            st.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if !self.state.borrow().fired {
            clear_timeout(&self.id);
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP (fetch)
// ---------------------------------------------------------------------------------------

/// Describes a rejected `fetch` (network error, CORS, offline) without any URL.
fn transport(e: &JsValue) -> HttpFailure {
    let msg = e
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .unwrap_or_else(|| "fetch failed".to_owned());
    HttpFailure::Transport(format!("fetch: {msg}"))
}

fn too_large(size: usize, limit: usize) -> HttpFailure {
    HttpFailure::Decode(ProtocolError::TooLarge {
        context: "http body",
        size,
        limit,
    })
}

/// A received HTTP answer: status, `Retry-After` (seconds, when numeric) and the body.
pub(crate) struct Answer {
    pub status: u16,
    pub retry_after_secs: Option<u64>,
    pub body: String,
}

/// One `fetch`; a 2xx body (or any declared `Content-Length`) above `limit` bytes is refused.
/// Error bodies are returned as received: callers cap what they parse.
pub(crate) async fn fetch_text(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<String>,
    limit: usize,
) -> Result<Answer, HttpFailure> {
    let init = RequestInit::new();
    init.set_method(method);
    if let Some(b) = body {
        init.set_body(&JsValue::from_str(&b));
    }
    let h = web_sys::Headers::new().map_err(|e| transport(&e))?;
    for (k, v) in headers {
        // The message deliberately omits the value (it may be a credential).
        h.set(k, v).map_err(|_| {
            HttpFailure::Transport(format!("invalid request header \"{k}\" (value not shown)"))
        })?;
    }
    init.set_headers(&h);
    let req = Request::new_with_str_and_init(url, &init)
        .map_err(|_| HttpFailure::Transport("invalid request URL".into()))?;
    let resp: Response = JsFuture::from(global_fetch(&req))
        .await
        .map_err(|e| transport(&e))?
        .dyn_into()
        .map_err(|_| HttpFailure::Transport("fetch did not return a Response".into()))?;
    let status = resp.status();
    let declared = resp
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.trim().parse::<usize>().ok());
    if let Some(len) = declared {
        if len > limit {
            return Err(too_large(len, limit));
        }
    }
    let text = JsFuture::from(resp.text().map_err(|e| transport(&e))?)
        .await
        .map_err(|e| transport(&e))?
        .as_string()
        .unwrap_or_default();
    if (200..300).contains(&status) && text.len() > limit {
        return Err(too_large(text.len(), limit));
    }
    let retry_after_secs = resp
        .headers()
        .get("retry-after")
        .ok()
        .flatten()
        .and_then(|s| s.trim().parse::<u64>().ok());
    Ok(Answer {
        status,
        retry_after_secs,
        body: text,
    })
}

/// One HTTP request; returns the body of a 2xx answer (capped at `limit` bytes) or the
/// failure, decoded like the native driver does (status, error body code/message,
/// `Retry-After`).
pub(crate) async fn http(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<String>,
    limit: usize,
) -> Result<String, HttpFailure> {
    let a = fetch_text(method, url, headers, body, limit).await?;
    if (200..300).contains(&a.status) {
        return Ok(a.body);
    }
    let capped: String = a.body.chars().take(64 * 1024).collect();
    let parsed = decode_error_body(&capped);
    Err(HttpFailure::Status {
        status: a.status,
        code: parsed.code,
        message: parsed.message.unwrap_or_default(),
        retry_after: a.retry_after_secs.map(Duration::from_secs),
    })
}

/// Dialect F poll: `GET url` with the bearer token, decoded by
/// [`khala_sync::protocol::fanout::decode_poll`] (status, body, `Retry-After` in ms).
pub(crate) async fn poll(
    url: &str,
    token: &str,
    limits: &DecodeLimits,
) -> Result<PollPage, PollFailure> {
    let auth = [("Authorization".to_owned(), format!("Bearer {token}"))];
    match fetch_text("GET", url, &auth, None, limits.max_frame_bytes).await {
        Ok(a) => decode_poll(
            a.status,
            &a.body,
            a.retry_after_secs.map(|s| s.saturating_mul(1000)),
            limits,
        ),
        Err(HttpFailure::Decode(e)) => Err(PollFailure::Decode(e)),
        Err(HttpFailure::Status { status, code, .. }) => Err(PollFailure::Status { status, code }),
        Err(HttpFailure::Transport(m)) => Err(PollFailure::Transport(m)),
    }
}

/// The HTTP status of a plain `GET url` (no upgrade), or `None` when `fetch` fails. Used
/// after a WebSocket failed to open: browsers hide the refused upgrade's status, but a
/// `404` here tells the engine the server has no Phoenix socket route (dialect `auto`).
pub(crate) async fn probe_status(url: &str) -> Option<u16> {
    fetch_text("GET", url, &[], None, 64 * 1024)
        .await
        .ok()
        .map(|a| a.status)
}

/// `http` then a decoder from `khala_sync::protocol`.
pub(crate) async fn http_decode<T>(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<String>,
    limits: &DecodeLimits,
    decode: fn(&str, &DecodeLimits) -> Result<T, ProtocolError>,
) -> Result<T, HttpFailure> {
    let text = http(method, url, headers, body, limits.max_frame_bytes).await?;
    decode(&text, limits).map_err(HttpFailure::Decode)
}

// ---------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------

/// What a socket reports to the driver.
#[derive(Debug)]
pub(crate) enum WsEvent {
    Open(ConnId),
    /// Closed before it opened (browsers give no HTTP status for a refused upgrade).
    OpenFailed(ConnId, String),
    Frame(ConnId, String),
    Closed(ConnId, String),
}

/// One browser WebSocket and the handlers that feed `events`. Dropping it detaches the
/// handlers and closes the socket.
pub(crate) struct Socket {
    ws: WebSocket,
    _handlers: Vec<Closure<dyn FnMut(JsValue)>>,
}

impl Socket {
    /// Opens `url` (which carries the token: it is never logged or put in an error).
    pub(crate) fn open(
        conn: ConnId,
        url: &str,
        max_frame_bytes: usize,
        events: mpsc::UnboundedSender<WsEvent>,
    ) -> Result<Socket, String> {
        let ws = WebSocket::new(url).map_err(|_| "cannot create WebSocket".to_owned())?;
        ws.set_binary_type(BinaryType::Arraybuffer);
        let opened = Rc::new(RefCell::new(false));
        let mut handlers = Vec::new();

        let (tx, o) = (events.clone(), Rc::clone(&opened));
        let on_open = Closure::<dyn FnMut(JsValue)>::new(move |_: JsValue| {
            *o.borrow_mut() = true;
            let _ = tx.unbounded_send(WsEvent::Open(conn));
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        handlers.push(on_open);

        let (tx, ws2) = (events.clone(), ws.clone());
        let on_message = Closure::<dyn FnMut(JsValue)>::new(move |ev: JsValue| {
            // Read `data` structurally: Node's WebSocket (undici) dispatches its own
            // MessageEvent class, which is not `instanceof globalThis.MessageEvent`.
            let data = ev.unchecked_ref::<MessageEvent>().data();
            let text = if let Some(s) = data.as_string() {
                s
            } else if let Some(buf) = data.dyn_ref::<js_sys::ArrayBuffer>() {
                // Phoenix v2 text protocol: binary is only meaningful as UTF-8 JSON.
                String::from_utf8_lossy(&js_sys::Uint8Array::new(buf).to_vec()).into_owned()
            } else {
                return;
            };
            if text.len() > max_frame_bytes {
                let _ = ws2.close_with_code_and_reason(1009, "frame too large");
                let _ = tx.unbounded_send(WsEvent::Closed(
                    conn,
                    format!("frame too large: {} > {max_frame_bytes} bytes", text.len()),
                ));
                return;
            }
            let _ = tx.unbounded_send(WsEvent::Frame(conn, text));
        });
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        handlers.push(on_message);

        let (tx, o) = (events, opened);
        let on_close = Closure::<dyn FnMut(JsValue)>::new(move |ev: JsValue| {
            let c = ev.unchecked_ref::<CloseEvent>();
            let (code, reason) = (c.code(), c.reason());
            let text = if reason.is_empty() {
                format!("closed ({code})")
            } else {
                format!("closed ({code} {reason})")
            };
            let event = if *o.borrow() {
                WsEvent::Closed(conn, text)
            } else {
                WsEvent::OpenFailed(conn, format!("WebSocket could not be opened: {text}"))
            };
            let _ = tx.unbounded_send(event);
        });
        // `error` is always followed by `close`, which carries the code: report once, there.
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        handlers.push(on_close);

        Ok(Socket {
            ws,
            _handlers: handlers,
        })
    }

    /// Sends a text frame; an error means the socket is gone (its `close` event follows).
    pub(crate) fn send(&self, text: &str) -> Result<(), String> {
        self.ws
            .send_with_str(text)
            .map_err(|_| "send failed".to_owned())
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let _ = self.ws.close();
    }
}
