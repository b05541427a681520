//! The exported class. `js/index.js` wraps it into the documented API (`KhalaSync.open`,
//! `onStatus` returning an unsubscribe function, `changes()` as an async iterator).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::lock::Mutex as AsyncMutex;
use futures::StreamExt;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::spawn_local;

use khala_sync::endpoint::Endpoint;
use khala_sync::engine::{Dialect, Engine, EngineConfig, FanoutTransport, Metrics};
use khala_sync::protocol::token::TokenRequest;
use khala_sync::protocol::DecodeLimits;
use khala_sync::store::{MemoryStore, Store};
use khala_sync::{Change, DocKey, SyncError, Topic};

use crate::convert::{self, config_error, Opts};
use crate::driver::{Command, Driver, Shared, TokenSource, CHANGE_BUFFER};
use crate::idb::IdbStore;
use crate::net;

/// A khala-sync client running in this JS realm. Create it with `WasmClient.open(options)`
/// (or `KhalaSync.open` from the package's `index.js`).
#[wasm_bindgen]
pub struct WasmClient {
    shared: Rc<Shared>,
    store: Rc<dyn Store>,
    idb: Option<Rc<IdbStore>>,
    topics: Vec<Topic>,
    cmd_tx: mpsc::UnboundedSender<Command>,
    driver: RefCell<Option<Driver>>,
    started: Cell<bool>,
    closed: Cell<bool>,
    enabled: bool,
    auto_network_events: bool,
    /// `multiTab` option (default true): share one connection per `dbName` across tabs.
    multi_tab: bool,
    /// Keeps `online`/`offline`/`visibilitychange` handlers alive; removed on close.
    listeners: RefCell<Vec<EventHook>>,
}

/// A registered DOM event listener: target, event name, handler.
type EventHook = (web_sys::EventTarget, &'static str, Closure<dyn FnMut()>);

fn topic(name: &str) -> Result<Topic, JsValue> {
    Topic::new(name).map_err(|_| config_error(format!("invalid topic name \"{name}\"")))
}

fn has_indexed_db() -> bool {
    js_sys::Reflect::get(&js_sys::global(), &"indexedDB".into())
        .map(|v| !v.is_undefined() && !v.is_null())
        .unwrap_or(false)
}

/// Exactly one of `credentials` (token route), `syncToken` (a JWT) or `tokenProvider`.
fn token_source(o: &Opts<'_>) -> Result<TokenSource, JsValue> {
    let credentials = o.function("credentials")?;
    let provider = o.function("tokenProvider")?;
    let token = o.string("syncToken")?;
    if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err(config_error("option `syncToken` is empty"));
    }
    match (credentials, token, provider) {
        (Some(c), None, None) => Ok(TokenSource::Credentials(c)),
        (None, Some(t), None) => Ok(TokenSource::Static(t)),
        (None, None, Some(p)) => Ok(TokenSource::Provider(p)),
        (None, None, None) => Err(config_error(
            "one of `credentials` (an async function returning headers for the token route), \
             `syncToken` or `tokenProvider` is required",
        )),
        _ => Err(config_error(
            "give exactly one of `credentials`, `syncToken` and `tokenProvider`",
        )),
    }
}

/// A JS promise of `f` (one boxed, non-generic task for every async method: smaller than
/// wasm-bindgen's `async fn` export, which instantiates the promise machinery per method).
fn promise(
    f: impl std::future::Future<Output = Result<JsValue, JsValue>> + 'static,
) -> js_sys::Promise {
    boxed_promise(Box::pin(f))
}

fn boxed_promise(
    f: std::pin::Pin<Box<dyn std::future::Future<Output = Result<JsValue, JsValue>>>>,
) -> js_sys::Promise {
    wasm_bindgen_futures::future_to_promise(f)
}

fn ms(v: Option<u64>, default: Duration) -> Duration {
    v.map_or(default, Duration::from_millis)
}

#[wasm_bindgen]
impl WasmClient {
    /// Validates `options`, opens the store (IndexedDB when `persist` is true, the default
    /// where IndexedDB exists; memory otherwise). Does not touch the network. Resolves to a
    /// `WasmClient`.
    pub fn open(options: JsValue) -> js_sys::Promise {
        promise(async move { WasmClient::open_client(options).await.map(JsValue::from) })
    }
}

impl WasmClient {
    /// [`WasmClient::open`] for Rust callers (the tests): the client itself, not a promise.
    pub async fn open_client(options: JsValue) -> Result<WasmClient, JsValue> {
        if !options.is_object() {
            return Err(config_error("KhalaSync.open needs an options object"));
        }
        let o = Opts(&options);
        let base_url = o
            .string("baseUrl")?
            .ok_or_else(|| config_error("option `baseUrl` is required"))?;
        let insecure = o.bool("allowInsecureNonLoopback")?.unwrap_or(false);
        let endpoint = Endpoint::parse(&base_url, insecure).map_err(|e| convert::error(&e))?;
        let tokens = token_source(&o)?;
        let token_url = match o.string("tokenUrl")? {
            Some(_) if !matches!(tokens, TokenSource::Credentials(_)) => {
                return Err(config_error(
                    "option `tokenUrl` is only used with `credentials` (the token route)",
                ))
            }
            Some(u) => {
                // Same rules as `baseUrl` (https, or http to loopback unless allowed).
                Endpoint::parse(&u, insecure).map_err(|e| convert::error(&e))?;
                u
            }
            None => endpoint.token_url(),
        };
        let dialect = match o.string("dialect")?.as_deref() {
            None | Some("auto") => Dialect::Auto,
            Some("phoenix") => Dialect::Phoenix,
            Some("fanout") => Dialect::Fanout,
            Some(other) => {
                return Err(config_error(format!(
                    "option `dialect` must be \"auto\", \"phoenix\" or \"fanout\", not \"{other}\""
                )))
            }
        };
        let names = o
            .strings("topics")?
            .ok_or_else(|| config_error("option `topics` is required"))?;
        if names.is_empty() {
            return Err(config_error("no topics configured"));
        }
        let topics = names
            .iter()
            .map(|n| topic(n))
            .collect::<Result<Vec<_>, _>>()?;
        if (1..topics.len()).any(|i| topics[..i].contains(&topics[i])) {
            return Err(config_error("a topic is listed twice"));
        }
        let persist = match o.bool("persist")? {
            Some(true) if !has_indexed_db() => {
                return Err(config_error(
                    "persist: true needs IndexedDB, which this environment lacks",
                ))
            }
            Some(p) => p,
            None => has_indexed_db(),
        };
        let db_name = o.string("dbName")?.unwrap_or_else(|| "khala-sync".into());
        let (store, idb): (Rc<dyn Store>, Option<Rc<IdbStore>>) = if persist {
            let s = Rc::new(
                IdbStore::open(&db_name)
                    .await
                    .map_err(|e| convert::error(&SyncError::Store(e)))?,
            );
            (Rc::clone(&s) as Rc<dyn Store>, Some(s))
        } else {
            (Rc::new(MemoryStore::new()), None)
        };

        let mut cfg = EngineConfig::new(endpoint.origin(), topics.clone());
        if let Some(n) = o.uint("replayBatchSize", 1000)? {
            cfg.replay_batch_size = n as u32;
        }
        if let Some(n) = o.uint("snapshotPageLimit", 5000)? {
            cfg.snapshot_page_limit = n as u32;
        }
        let day = 86_400_000;
        cfg.backoff_base = ms(o.uint("backoffBaseMs", day)?, cfg.backoff_base);
        cfg.backoff_cap = ms(o.uint("backoffCapMs", day)?, cfg.backoff_cap);
        cfg.heartbeat_interval = ms(o.uint("heartbeatIntervalMs", day)?, cfg.heartbeat_interval);
        cfg.dead_after = ms(o.uint("deadAfterMs", day)?, cfg.dead_after);
        if let Some(n) = o.uint("maxFrameBytes", 1_000_000_000)? {
            cfg.decode_limits = DecodeLimits {
                max_frame_bytes: n as usize,
            };
        }
        cfg.seed = match o.uint("jitterSeed", 9_007_199_254_740_991)? {
            Some(s) => s,
            None => (js_sys::Math::random() * 9_007_199_254_740_991.0) as u64,
        };
        cfg.dialect = dialect;
        // Browsers cannot send an `Authorization` header on a WebSocket, which dialect F's
        // per-topic sockets need: the web client always polls (PROTOCOL.md §6).
        cfg.fanout_transport = FanoutTransport::Poll;
        cfg.poll_interval = ms(o.uint("pollIntervalMs", day)?, cfg.poll_interval);
        cfg.poll_min_interval = ms(o.uint("pollMinIntervalMs", day)?, cfg.poll_min_interval);
        let ttl = o.uint("tokenTtlSeconds", 86_400)?.map(|n| n as u32);
        let engine = Engine::new(cfg.clone());
        let origin_ms = net::now_ms();
        let shared = Rc::new(Shared {
            status: RefCell::new(engine.status()),
            metrics: RefCell::new(Metrics::default()),
            status_listeners: RefCell::new(Vec::new()),
            subscribers: RefCell::new(Vec::new()),
            next_id: Cell::new(0),
            origin_epoch_ms: net::epoch_ms(),
        });
        let (cmd_tx, cmd_rx) = mpsc::unbounded();
        let driver = Driver {
            engine,
            store: Rc::clone(&store),
            endpoint,
            dialect,
            tokens,
            token_url,
            token_request: TokenRequest {
                scopes: o.strings("scopes")?,
                topics: None,
                ttl_seconds: ttl,
                device_id: o.string("deviceId")?,
            },
            client_name: o
                .string("clientName")?
                .unwrap_or_else(|| "khala-sync-web".into()),
            client_build_id: o
                .string("clientBuildId")?
                .unwrap_or_else(|| env!("CARGO_PKG_VERSION").into()),
            limits: cfg.decode_limits,
            shared: Rc::clone(&shared),
            cmd_rx,
            origin_ms,
        };
        Ok(WasmClient {
            shared,
            store,
            idb,
            topics,
            cmd_tx,
            driver: RefCell::new(Some(driver)),
            started: Cell::new(false),
            closed: Cell::new(false),
            enabled: o.bool("enabled")?.unwrap_or(true),
            multi_tab: o.bool("multiTab")?.unwrap_or(true),
            auto_network_events: o.bool("networkEvents")?.unwrap_or(true),
            listeners: RefCell::new(Vec::new()),
        })
    }
}

#[wasm_bindgen]
impl WasmClient {
    /// Starts syncing in the background. Calling it twice is a no-op; with `enabled: false`
    /// it does nothing.
    pub fn start(&self) -> Result<(), JsValue> {
        if self.closed.get() {
            return Err(convert::error(&SyncError::Shutdown));
        }
        if !self.enabled || self.started.replace(true) {
            return Ok(());
        }
        if let Some(driver) = self.driver.borrow_mut().take() {
            spawn_local(driver.run());
        }
        if self.auto_network_events {
            self.listen_network_events();
        }
        Ok(())
    }

    /// `online` → resume (immediate reconnect, backoff reset), `offline` → pause,
    /// `visibilitychange` to visible → reconnect now if not connected. Hidden pages keep
    /// syncing (browsers may throttle their timers). Page lifecycle: `freeze` and `pagehide`
    /// suspend the connection (closed cleanly instead of dying with the frozen page);
    /// `resume` and `pageshow` undo that and reconnect at once.
    fn listen_network_events(&self) {
        let global = js_sys::global();
        let Some(target) = global.dyn_ref::<web_sys::EventTarget>() else {
            return; // Node: no such events.
        };
        let has_add = js_sys::Reflect::has(&global, &"addEventListener".into()).unwrap_or(false);
        if !has_add {
            return;
        }
        let add = |t: &web_sys::EventTarget, name: &'static str, cmd: fn() -> Option<Command>| {
            let tx = self.cmd_tx.clone();
            let c = Closure::<dyn FnMut()>::new(move || {
                if let Some(cmd) = cmd() {
                    let _ = tx.unbounded_send(cmd);
                }
            });
            if t.add_event_listener_with_callback(name, c.as_ref().unchecked_ref())
                .is_ok()
            {
                self.listeners.borrow_mut().push((t.clone(), name, c));
            }
        };
        add(target, "online", || Some(Command::Offline(false)));
        add(target, "offline", || Some(Command::Offline(true)));
        add(target, "pagehide", || Some(Command::Frozen(true)));
        add(target, "pageshow", || Some(Command::Frozen(false)));
        let doc = js_sys::Reflect::get(&global, &"document".into()).ok();
        if let Some(doc) = doc.and_then(|d| d.dyn_into::<web_sys::Document>().ok()) {
            let t: web_sys::EventTarget = doc.into();
            add(&t, "freeze", || Some(Command::Frozen(true)));
            add(&t, "resume", || Some(Command::Frozen(false)));
            add(&t, "visibilitychange", || {
                let visible = web_sys::window()
                    .and_then(|w| w.document())
                    .is_some_and(|d| d.visibility_state() == web_sys::VisibilityState::Visible);
                visible.then_some(Command::NetworkChanged)
            });
        }
    }

    /// Pauses network activity; reads keep working.
    pub fn pause(&self) {
        let _ = self.cmd_tx.unbounded_send(Command::AppPaused(true));
    }

    /// Undoes `pause()`; also retries after an auth failure with fresh credentials.
    pub fn resume(&self) {
        let _ = self.cmd_tx.unbounded_send(Command::AppPaused(false));
    }

    /// Tells the client the network changed: reconnect now, backoff reset.
    #[wasm_bindgen(js_name = networkChanged)]
    pub fn network_changed(&self) {
        let _ = self.cmd_tx.unbounded_send(Command::NetworkChanged);
    }

    /// The current status object.
    pub fn status(&self) -> JsValue {
        self.shared.status_js()
    }

    /// Calls `listener(status)` now and on every status change; returns an id for
    /// `offStatus`.
    #[wasm_bindgen(js_name = onStatus)]
    pub fn on_status(&self, listener: js_sys::Function) -> u32 {
        let id = self.shared.next_id();
        self.shared
            .status_listeners
            .borrow_mut()
            .push((id, listener.clone()));
        let _ = listener.call1(&JsValue::UNDEFINED, &self.shared.status_js());
        id
    }

    /// Removes a status listener.
    #[wasm_bindgen(js_name = offStatus)]
    pub fn off_status(&self, id: u32) {
        self.shared
            .status_listeners
            .borrow_mut()
            .retain(|(i, _)| *i != id);
    }

    /// A subscription to the committed changes of `topic`, from now on.
    #[wasm_bindgen(js_name = subscribeChanges)]
    pub fn subscribe_changes(&self, topic_name: &str) -> Result<ChangeSubscription, JsValue> {
        let t = topic(topic_name)?;
        if !self.topics.contains(&t) {
            return Err(config_error(format!(
                "topic \"{topic_name}\" is not one of the client's topics"
            )));
        }
        let (mut tx, rx) = mpsc::channel(CHANGE_BUFFER);
        if self.closed.get() {
            tx.close_channel();
        } else {
            self.shared.subscribers.borrow_mut().push((t, tx.clone()));
        }
        Ok(ChangeSubscription {
            rx: Rc::new(AsyncMutex::new(Some(rx))),
            tx: RefCell::new(tx),
        })
    }

    /// One stored document or `null` (a promise).
    pub fn get(&self, topic_name: String, key: String) -> js_sys::Promise {
        let store = Rc::clone(&self.store);
        promise(async move {
            let t = topic(&topic_name)?;
            let k = DocKey::new(key).map_err(|_| config_error("invalid document key"))?;
            let d = store
                .get(t, k)
                .await
                .map_err(|e| convert::error(&SyncError::Store(e)))?;
            Ok(convert::doc(d.as_ref()))
        })
    }

    /// Every stored document of `topic`, sorted by key (a promise).
    pub fn list(&self, topic_name: String) -> js_sys::Promise {
        let store = Rc::clone(&self.store);
        promise(async move {
            let t = topic(&topic_name)?;
            let d = store
                .list(t)
                .await
                .map_err(|e| convert::error(&SyncError::Store(e)))?;
            Ok(convert::docs(&d))
        })
    }

    /// Engine counters (`snapshots`, `updatesApplied`, `reconnects`, …).
    pub fn metrics(&self) -> JsValue {
        convert::metrics(&self.shared.metrics.borrow())
    }

    /// The configured topics.
    pub fn topics(&self) -> Vec<String> {
        self.topics.iter().map(|t| t.as_str().to_owned()).collect()
    }

    /// Whether this client may take part in multi-tab leader election: the `multiTab` option
    /// (default true), a persistent store (tabs share it) and `enabled`. The JS wrapper also
    /// needs Web Locks and `BroadcastChannel`; without them each tab syncs on its own.
    #[wasm_bindgen(getter, js_name = multiTab)]
    pub fn multi_tab(&self) -> bool {
        self.multi_tab && self.enabled && self.idb.is_some()
    }

    /// Whether the client persists to IndexedDB.
    #[wasm_bindgen(getter)]
    pub fn persistent(&self) -> bool {
        self.idb.is_some()
    }

    /// Stops syncing (the batch being committed finishes first), ends every change iterator
    /// and closes the database. Idempotent.
    pub fn close(&self) -> js_sys::Promise {
        if self.closed.replace(true) {
            return promise(async { Ok(JsValue::UNDEFINED) });
        }
        for (t, name, c) in self.listeners.borrow_mut().drain(..) {
            let _ = t.remove_event_listener_with_callback(name, c.as_ref().unchecked_ref());
        }
        let mut shutdown = None;
        if self.started.get() && self.driver.borrow().is_none() {
            let (tx, rx) = oneshot::channel();
            if self.cmd_tx.unbounded_send(Command::Shutdown(tx)).is_ok() {
                shutdown = Some(rx);
            }
        }
        let (shared, idb) = (Rc::clone(&self.shared), self.idb.clone());
        promise(async move {
            if let Some(rx) = shutdown {
                let _ = rx.await;
            }
            shared.close_subscribers();
            shared.status_listeners.borrow_mut().clear();
            if let Some(idb) = idb {
                idb.close();
            }
            Ok(JsValue::UNDEFINED)
        })
    }
}

/// An async sequence of changes of one topic; `index.js` exposes it as an async iterator.
#[wasm_bindgen]
pub struct ChangeSubscription {
    rx: Rc<AsyncMutex<Option<mpsc::Receiver<Change>>>>,
    /// Closing the channel from this side ends a pending `next()` too.
    tx: RefCell<mpsc::Sender<Change>>,
}

#[wasm_bindgen]
impl ChangeSubscription {
    /// The next change, or `undefined` once the client is closed or `close()` was called.
    pub fn next(&self) -> js_sys::Promise {
        let rx = Rc::clone(&self.rx);
        promise(async move {
            let mut guard = rx.lock().await;
            let Some(r) = guard.as_mut() else {
                return Ok(JsValue::UNDEFINED);
            };
            Ok(match r.next().await {
                Some(c) => convert::change(&c),
                None => {
                    *guard = None;
                    JsValue::UNDEFINED
                }
            })
        })
    }

    /// Ends this subscription (a pending `next()` resolves `undefined`).
    pub fn close(&self) {
        self.tx.borrow_mut().close_channel();
    }
}
