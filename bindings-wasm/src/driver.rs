//! The browser driver: the same loop as the native tokio driver — feed the engine, execute
//! its actions — on `spawn_local`, futures channels and `setTimeout`. It owns nothing but IO
//! handles; every decision is the engine's.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, StreamExt};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{spawn_local, JsFuture};

use khala_sync::endpoint::Endpoint;
use khala_sync::endpoint::SecretUrl;
use khala_sync::engine::{
    Action, Change, ConnId, Dialect, Engine, Event, HttpFailure, Metrics, Millis, Notification,
    SyncStatus,
};
use khala_sync::protocol::http::{decode_doc_response, decode_snapshot_page};
use khala_sync::protocol::token::{decode_token_response, SyncToken, TokenGrant, TokenRequest};
use khala_sync::protocol::DecodeLimits;
use khala_sync::store::Store;
use khala_sync::Topic;

use crate::convert;
use crate::net::{self, Sleep, Socket, WsEvent};

/// Change buffer per subscriber; a reader further behind loses the oldest (and should
/// re-read with `list`), like the native client's broadcast channel.
pub(crate) const CHANGE_BUFFER: usize = 8192;

/// State shared by the driver task and the `WasmClient` handle (one thread: `Rc`/`RefCell`).
pub(crate) struct Shared {
    pub status: RefCell<SyncStatus>,
    pub metrics: RefCell<Metrics>,
    pub status_listeners: RefCell<Vec<(u32, js_sys::Function)>>,
    pub subscribers: RefCell<Vec<(Topic, mpsc::Sender<Change>)>>,
    pub next_id: Cell<u32>,
    /// `Date.now()` at engine time 0.
    pub origin_epoch_ms: f64,
}

impl Shared {
    pub(crate) fn next_id(&self) -> u32 {
        let id = self.next_id.get().wrapping_add(1);
        self.next_id.set(id);
        id
    }

    pub(crate) fn status_js(&self) -> JsValue {
        convert::status(&self.status.borrow(), self.origin_epoch_ms)
    }

    fn publish_status(&self, s: SyncStatus) {
        *self.status.borrow_mut() = s;
        let js = self.status_js();
        // Listeners may (un)subscribe from inside the callback: call a copy of the list.
        let listeners: Vec<js_sys::Function> = self
            .status_listeners
            .borrow()
            .iter()
            .map(|(_, f)| f.clone())
            .collect();
        for f in listeners {
            if let Err(e) = f.call1(&JsValue::UNDEFINED, &js) {
                web_sys_console_error("khala-sync: onStatus listener threw", &e);
            }
        }
    }

    fn publish_change(&self, c: &Change) {
        let mut subs = self.subscribers.borrow_mut();
        subs.retain_mut(|(topic, tx)| {
            if tx.is_closed() {
                return false;
            }
            if topic == c.topic() {
                if let Err(e) = tx.try_send(c.clone()) {
                    if e.is_disconnected() {
                        return false;
                    }
                    // Full: this reader lags; it skips this change (documented).
                }
            }
            true
        });
    }

    /// Ends every change iterator (client closed).
    pub(crate) fn close_subscribers(&self) {
        for (_, mut tx) in self.subscribers.borrow_mut().drain(..) {
            tx.close_channel();
        }
    }
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error2(a: &str, b: &JsValue);
}

fn web_sys_console_error(msg: &str, e: &JsValue) {
    console_error2(msg, e);
}

/// Inputs from the app handle.
pub(crate) enum Command {
    /// App `pause()` / `resume()`.
    AppPaused(bool),
    /// Browser `offline` (true) / `online` (false).
    Offline(bool),
    /// `visibilitychange` to visible, or the app's `networkChanged()`.
    NetworkChanged,
    /// Page lifecycle: `freeze`/`pagehide` (true), `resume`/`pageshow` (false).
    Frozen(bool),
    Shutdown(oneshot::Sender<()>),
}

/// Where sync tokens come from (exactly one, chosen by the app's options).
pub(crate) enum TokenSource {
    /// `POST` the token route with the headers the app's `credentials()` returns.
    Credentials(js_sys::Function),
    /// `syncToken`: the app's JWT, used as is (refetching returns the same token).
    Static(String),
    /// `tokenProvider()`: returns (or resolves to) a JWT string or `{token, expiresIn}`.
    Provider(js_sys::Function),
}

enum Io {
    Ws(WsEvent),
    Engine(Event),
}

pub(crate) struct Driver {
    pub engine: Engine,
    pub store: Rc<dyn Store>,
    pub endpoint: Endpoint,
    /// Configured dialect (`auto` probes a failed Phoenix socket for a 404).
    pub dialect: Dialect,
    pub tokens: TokenSource,
    /// Token route URL (`tokenUrl`, default `<base>/api/sync/token`).
    pub token_url: String,
    pub token_request: TokenRequest,
    pub client_name: String,
    pub client_build_id: String,
    pub limits: DecodeLimits,
    pub shared: Rc<Shared>,
    pub cmd_rx: mpsc::UnboundedReceiver<Command>,
    /// `performance.now()` at engine time 0.
    pub origin_ms: f64,
}

/// The driver's per-connection values: a handful at most, so a `Vec` (less code in the
/// web package than a hash map per value type).
struct ConnMap<V>(Vec<(ConnId, V)>);

impl<V> ConnMap<V> {
    fn insert(&mut self, id: ConnId, v: V) {
        self.remove(&id);
        self.0.push((id, v));
    }

    fn remove(&mut self, id: &ConnId) -> Option<V> {
        let i = self.0.iter().position(|(k, _)| k == id)?;
        Some(self.0.swap_remove(i).1)
    }

    fn get(&self, id: &ConnId) -> Option<&V> {
        self.0.iter().find(|(k, _)| k == id).map(|(_, v)| v)
    }

    fn contains_key(&self, id: &ConnId) -> bool {
        self.get(id).is_some()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

struct Running {
    d: Driver,
    ws_tx: mpsc::UnboundedSender<WsEvent>,
    ev_tx: mpsc::UnboundedSender<Event>,
    conns: ConnMap<Socket>,
    /// Sockets between `Connect` and `open`.
    pending: ConnMap<Socket>,
    /// Dialect `auto`: the upgrade URL (`http(s)://`) of each pending Phoenix socket, probed
    /// with a plain `GET` when the socket fails before it opens.
    probe_urls: ConnMap<SecretUrl>,
    app_paused: bool,
    offline: bool,
    frozen: bool,
}

impl Driver {
    /// Runs until shutdown (spawned with `spawn_local`).
    pub(crate) async fn run(self) {
        let (ws_tx, mut ws_rx) = mpsc::unbounded();
        let (ev_tx, mut ev_rx) = mpsc::unbounded();
        let mut r = Running {
            d: self,
            ws_tx,
            ev_tx,
            conns: ConnMap(Vec::new()),
            pending: ConnMap(Vec::new()),
            probe_urls: ConnMap(Vec::new()),
            app_paused: false,
            offline: false,
            frozen: false,
        };
        r.feed(Event::Start);
        loop {
            r.execute().await;
            let delay = r.d.engine.poll_timeout().map(|Millis(at)| {
                let now = r.now().0;
                Duration::from_millis(at.saturating_sub(now))
            });
            let mut sleep = match delay {
                Some(d) => Sleep::new(d).left_future(),
                None => futures::future::pending().right_future(),
            }
            .fuse();
            let io = futures::select_biased! {
                cmd = r.d.cmd_rx.next() => match cmd {
                    Some(Command::Shutdown(reply)) => {
                        r.feed(Event::Shutdown);
                        r.execute().await;
                        r.conns.clear();
                        r.pending.clear();
                        r.probe_urls.clear();
                        r.d.shared.close_subscribers();
                        let _ = reply.send(());
                        return;
                    }
                    Some(cmd) => { r.on_command(cmd); continue; }
                    None => {
                        // Every handle is gone.
                        r.feed(Event::Shutdown);
                        r.execute().await;
                        return;
                    }
                },
                ev = ws_rx.next() => ev.map(Io::Ws),
                ev = ev_rx.next() => ev.map(Io::Engine),
                () = sleep => Some(Io::Engine(Event::Timer)),
            };
            match io {
                Some(Io::Ws(ev)) => r.on_ws(ev),
                Some(Io::Engine(ev)) => r.feed(ev),
                None => {}
            }
        }
    }
}

impl Running {
    fn now(&self) -> Millis {
        let elapsed = (net::now_ms() - self.d.origin_ms).max(0.0);
        Millis(elapsed as u64)
    }

    fn feed(&mut self, event: Event) {
        let now = self.now();
        self.d.engine.handle(event, now);
    }

    fn on_command(&mut self, cmd: Command) {
        let was_paused = self.paused();
        match cmd {
            Command::AppPaused(p) => {
                self.app_paused = p;
                self.resume_or_pause(was_paused);
            }
            Command::Frozen(f) => {
                if self.frozen != f {
                    // (The first `pageshow` of a page load changes nothing.)
                    self.frozen = f;
                    self.lifecycle(was_paused, !f);
                }
            }
            Command::Offline(o) => {
                self.offline = o;
                self.lifecycle(was_paused, !o);
            }
            Command::NetworkChanged => self.feed(Event::NetworkChanged),
            Command::Shutdown(_) => {}
        }
    }

    fn paused(&self) -> bool {
        self.app_paused || self.offline || self.frozen
    }

    /// App `pause()`/`resume()`.
    fn resume_or_pause(&mut self, was_paused: bool) {
        match (was_paused, self.paused()) {
            (false, true) => self.feed(Event::Pause),
            (true, false) => self.feed(Event::Resume),
            // `resume()` while running also retries after an auth failure.
            (false, false) => self.feed(Event::Resume),
            (true, true) => {}
        }
    }

    /// Browser `online`/`offline`, `freeze`/`resume`, `pagehide`/`pageshow`. Leaving the
    /// paused state resumes (the engine reconnects at once with the backoff reset); `back`
    /// (online / resume) while not paused is a network change: retry now if not connected.
    fn lifecycle(&mut self, was_paused: bool, back: bool) {
        match (was_paused, self.paused()) {
            (false, true) => self.feed(Event::Pause),
            (true, false) => self.feed(Event::Resume),
            (false, false) if back => self.feed(Event::NetworkChanged),
            _ => {}
        }
    }

    fn on_ws(&mut self, ev: WsEvent) {
        match ev {
            WsEvent::Open(id) => {
                self.probe_urls.remove(&id);
                if let Some(s) = self.pending.remove(&id) {
                    self.conns.insert(id, s);
                    self.feed(Event::Connected(id));
                }
            }
            WsEvent::OpenFailed(id, reason) => {
                let probe = self.probe_urls.remove(&id);
                if self.pending.remove(&id).is_none() {
                    return;
                }
                match probe {
                    // Browsers hide the status of a refused upgrade: ask the same URL with a
                    // plain GET; a 404 means "no Phoenix socket route here" (engine: switch
                    // to dialect F). Anything else stays the transport failure it was.
                    Some(url) => self.spawn_event(async move {
                        let failure = match net::probe_status(url.expose()).await {
                            Some(404) => HttpFailure::Status {
                                status: 404,
                                code: None,
                                message: "the Phoenix socket route answered 404".into(),
                                retry_after: None,
                            },
                            _ => HttpFailure::Transport(reason),
                        };
                        Event::ConnectFailed(id, failure)
                    }),
                    None => self.feed(Event::ConnectFailed(id, HttpFailure::Transport(reason))),
                }
            }
            WsEvent::Frame(id, text) => {
                if self.conns.contains_key(&id) {
                    self.feed(Event::Frame(id, text));
                }
            }
            WsEvent::Closed(id, reason) => {
                if self.conns.remove(&id).is_some() {
                    self.feed(Event::Disconnected(id, reason));
                }
            }
        }
    }

    /// Runs every pending action. Store work is awaited here, in order, so a batch is
    /// committed (or rolled back) before the next event is looked at.
    async fn execute(&mut self) {
        while let Some(action) = self.d.engine.poll_action() {
            match action {
                Action::FetchToken => self.spawn_token_fetch(),
                Action::BindIdentity(identity) => {
                    let r = match self.d.store.bind_identity(identity).await {
                        Ok(_) => self.d.store.watermarks().await,
                        Err(e) => Err(e),
                    };
                    self.feed(Event::IdentityBound(r));
                }
                Action::Connect { conn, token } => {
                    let url = self.d.endpoint.socket_url(
                        &token,
                        &self.d.client_name,
                        &self.d.client_build_id,
                    );
                    match Socket::open(
                        conn,
                        url.expose(),
                        self.d.limits.max_frame_bytes,
                        self.ws_tx.clone(),
                    ) {
                        Ok(s) => {
                            self.pending.insert(conn, s);
                            if self.d.dialect == Dialect::Auto {
                                self.probe_urls.insert(
                                    conn,
                                    self.d.endpoint.socket_upgrade_url(
                                        &token,
                                        &self.d.client_name,
                                        &self.d.client_build_id,
                                    ),
                                );
                            }
                        }
                        Err(m) => self.feed(Event::ConnectFailed(conn, HttpFailure::Transport(m))),
                    }
                }
                // Browsers cannot put an `Authorization` header on a WebSocket: the client
                // always configures the poll transport, so this never comes; if it does, the
                // socket "fails" and the engine falls back to polling.
                Action::ConnectTopic { conn, .. } => self.feed(Event::ConnectFailed(
                    conn,
                    HttpFailure::Transport(
                        "per-topic WebSockets need an Authorization header, which browsers cannot send"
                            .into(),
                    ),
                )),
                Action::Poll {
                    topic,
                    after_seq,
                    limit,
                    token,
                } => {
                    let url = self.d.endpoint.fanout_poll_url(&topic, after_seq, limit);
                    let limits = self.d.limits;
                    self.spawn_event(async move {
                        let r = net::poll(&url, token.expose(), &limits).await;
                        Event::Polled(topic, r)
                    });
                }
                Action::Send { conn, text } => {
                    if let Some(s) = self.conns.get(&conn) {
                        // A failed send is followed by the socket's close event.
                        let _ = s.send(&text);
                    }
                }
                // Browsers cannot send WebSocket pings, and the web client opens no dialect-F
                // topic sockets (see `ConnectTopic`): nothing to ping.
                Action::Ping(_) => {}
                Action::Close(conn) => {
                    self.conns.remove(&conn);
                    self.pending.remove(&conn);
                    self.probe_urls.remove(&conn);
                }
                Action::Apply(batch) => {
                    let topic = batch.topic.clone();
                    let r = self.d.store.apply(batch).await;
                    self.feed(Event::Applied(topic, r));
                }
                Action::BeginSnapshot(topic) => {
                    let r = self.d.store.begin_snapshot(topic.clone()).await;
                    self.feed(Event::SnapshotBegun(topic, r));
                }
                Action::FetchSnapshotPage {
                    topic,
                    generation,
                    cursor,
                    limit,
                    token,
                } => {
                    let url = self
                        .d
                        .endpoint
                        .snapshot_url(&topic, cursor.as_deref(), limit);
                    let auth = bearer(token.expose());
                    let limits = self.d.limits;
                    self.spawn_event(async move {
                        let r = net::http_decode(
                            "GET",
                            &url,
                            &auth,
                            None,
                            &limits,
                            decode_snapshot_page,
                        )
                        .await;
                        Event::SnapshotPageFetched(topic, generation, r)
                    });
                }
                Action::StoreSnapshotPage {
                    topic,
                    generation,
                    docs,
                    finish,
                } => {
                    let mut r = self
                        .d
                        .store
                        .put_snapshot_page(topic.clone(), generation, docs)
                        .await;
                    if let (Ok(()), Some(w)) = (&r, finish) {
                        r = self
                            .d
                            .store
                            .finish_snapshot(topic.clone(), generation, w)
                            .await;
                    }
                    self.feed(Event::SnapshotPageStored(topic, generation, r));
                }
                Action::FetchDoc {
                    topic,
                    doc_key,
                    token,
                } => {
                    let url = self.d.endpoint.doc_url(&topic, &doc_key);
                    let auth = bearer(token.expose());
                    let limits = self.d.limits;
                    self.spawn_event(async move {
                        let r = net::http_decode(
                            "GET",
                            &url,
                            &auth,
                            None,
                            &limits,
                            decode_doc_response,
                        )
                        .await;
                        Event::DocFetched(topic, doc_key, r)
                    });
                }
                Action::Notify(Notification::Status(s)) => self.d.shared.publish_status(s),
                Action::Notify(Notification::Changes(changes)) => {
                    for c in &changes {
                        self.d.shared.publish_change(c);
                    }
                }
            }
        }
        self.d
            .shared
            .metrics
            .borrow_mut()
            .clone_from(self.d.engine.metrics());
    }

    /// Runs an HTTP call as a task; its result comes back as an engine event.
    fn spawn_event(&self, call: impl std::future::Future<Output = Event> + 'static) {
        self.spawn_boxed(Box::pin(call));
    }

    /// [`Running::spawn_event`]'s task: one non-generic copy for every kind of call.
    fn spawn_boxed(&self, call: std::pin::Pin<Box<dyn std::future::Future<Output = Event>>>) {
        let tx = self.ev_tx.clone();
        spawn_local(async move {
            let event = call.await;
            // The driver may have stopped meanwhile: then nobody needs the answer.
            let _ = tx.unbounded_send(event);
        });
    }

    fn spawn_token_fetch(&self) {
        let limits = self.d.limits;
        let refused = |message: String, code: &str| HttpFailure::Status {
            status: 401,
            code: Some(code.into()),
            message,
            retry_after: None,
        };
        match &self.d.tokens {
            TokenSource::Credentials(creds) => {
                let creds = creds.clone();
                let url = self.d.token_url.clone();
                let body = self.d.token_request.to_json();
                self.spawn_event(async move {
                    let r = match app_headers(&creds).await {
                        Ok(mut headers) => {
                            headers.push(("Content-Type".into(), "application/json".into()));
                            net::http_decode(
                                "POST",
                                &url,
                                &headers,
                                Some(body),
                                &limits,
                                decode_token_response,
                            )
                            .await
                        }
                        Err(message) => Err(refused(message, "credentials_unavailable")),
                    };
                    Event::TokenFetched(r)
                });
            }
            TokenSource::Static(token) => {
                let grant = provided_grant(token.clone(), None);
                self.spawn_event(async move { Event::TokenFetched(Ok(grant)) });
            }
            TokenSource::Provider(f) => {
                let f = f.clone();
                self.spawn_event(async move {
                    let r = match provided_token(&f).await {
                        Ok((token, expires_in)) => Ok(provided_grant(token, expires_in)),
                        Err(message) => Err(refused(message, "token_provider_failed")),
                    };
                    Event::TokenFetched(r)
                });
            }
        }
    }
}

/// A grant for a token the app supplied (lifetime: `expires_in`, else the JWT's `exp`).
fn provided_grant(token: String, expires_in: Option<u64>) -> TokenGrant {
    let now_unix = (net::epoch_ms() / 1000.0).max(0.0) as u64;
    TokenGrant::from_provided(SyncToken::new(token), expires_in, now_unix)
}

/// Calls the app's `tokenProvider()` (sync or async): a non-empty JWT string or
/// `{token, expiresIn?}` (seconds). Messages never include the token.
async fn provided_token(f: &js_sys::Function) -> Result<(String, Option<u64>), String> {
    let v = f
        .call0(&JsValue::UNDEFINED)
        .map_err(|e| format!("tokenProvider() threw: {}", js_message(&e)))?;
    let v = if v.is_instance_of::<js_sys::Promise>() {
        JsFuture::from(js_sys::Promise::from(v))
            .await
            .map_err(|e| format!("tokenProvider() rejected: {}", js_message(&e)))?
    } else {
        v
    };
    let shape = "tokenProvider() must return a token string or {token, expiresIn}";
    let (token, expires_in) = if let Some(t) = v.as_string() {
        (t, None)
    } else if v.is_object() {
        let get = |k: &str| js_sys::Reflect::get(&v, &k.into()).unwrap_or(JsValue::UNDEFINED);
        let token = get("token").as_string().ok_or_else(|| shape.to_owned())?;
        let e = get("expiresIn");
        let expires_in = if e.is_undefined() || e.is_null() {
            None
        } else {
            match e.as_f64() {
                Some(n) if n.fract() == 0.0 && (1.0..=9_007_199_254_740_991.0).contains(&n) => {
                    Some(n as u64)
                }
                _ => return Err("tokenProvider(): expiresIn must be a positive integer".into()),
            }
        };
        (token, expires_in)
    } else {
        return Err(shape.into());
    };
    if token.trim().is_empty() {
        return Err("tokenProvider() returned an empty token".into());
    }
    Ok((token, expires_in))
}

fn bearer(token: &str) -> Vec<(String, String)> {
    vec![("Authorization".into(), format!("Bearer {token}"))]
}

/// Calls the app's `credentials()` (sync or async) and reads the returned header object.
/// Messages never include header values.
async fn app_headers(f: &js_sys::Function) -> Result<Vec<(String, String)>, String> {
    let v = f
        .call0(&JsValue::UNDEFINED)
        .map_err(|e| format!("credentials() threw: {}", js_message(&e)))?;
    let v = if v.is_instance_of::<js_sys::Promise>() {
        JsFuture::from(js_sys::Promise::from(v))
            .await
            .map_err(|e| format!("credentials() rejected: {}", js_message(&e)))?
    } else {
        v
    };
    if !v.is_object() {
        return Err("credentials() must return an object of header names to values".into());
    }
    let mut out = Vec::new();
    for entry in js_sys::Object::entries(v.unchecked_ref::<js_sys::Object>()).iter() {
        let pair = js_sys::Array::from(&entry);
        let (Some(k), Some(val)) = (pair.get(0).as_string(), pair.get(1).as_string()) else {
            return Err("credentials() header values must be strings".into());
        };
        out.push((k, val));
    }
    Ok(out)
}

fn js_message(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| "unknown error".into())
}
