//! The running server handle ([`DevServer`]).

use crate::config::DevServerConfig;
use crate::fanout::{EventMessage, FanoutRequest};
use crate::faults::{ActiveFaults, Faults};
use crate::http::{make_claims, router};
use crate::jwt;
use crate::metrics::MetricsSnapshot;
use crate::state::{PublishError, PublishItem, ServerState, Shared};
use crate::time::now_unix;
use serde_json::value::RawValue;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One live document as `GET /dev/state/{topic}` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocState {
    /// Document key.
    pub doc_key: String,
    /// Latest version.
    pub doc_version: u64,
    /// Standard base64 payload hash.
    pub payload_hash: String,
    /// Raw JSON payload exactly as published.
    pub payload: String,
    /// Watermark of the latest version.
    pub watermark: u64,
}

/// A custom test token (see [`DevServer::mint_token_with`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestToken {
    /// Subject, e.g. `user:42`.
    pub subject: String,
    /// Granted topics (= scopes).
    pub topics: Vec<String>,
    /// `iat`/`nbf` relative to now (negative = in the past).
    pub issued_offset_seconds: i64,
    /// `exp - iat`; with a negative offset this can mint an already expired token.
    pub ttl_seconds: i64,
    /// Corrupt the signature.
    pub tampered: bool,
}

struct Running {
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    generator: Option<JoinHandle<()>>,
}

struct ServerInner {
    shared: Arc<Shared>,
    addr: SocketAddr,
    running: Mutex<Running>,
}

/// A running dev server on 127.0.0.1. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct DevServer {
    inner: Arc<ServerInner>,
}

impl std::fmt::Debug for DevServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevServer")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

/// RFC 3986 path-segment encoding: everything but unreserved characters.
fn encode_segment(segment: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(segment, SEGMENT).to_string()
}

pub(crate) fn apply_faults(shared: &Shared, f: &Faults) {
    shared.faults.apply(f);
    if f.reset {
        shared.lock().force_stale.clear();
    }
    if let Some(fs) = &f.force_stale {
        shared.force_stale(fs);
    }
    if f.expire_tokens {
        shared.expire_tx.send_modify(|v| *v += 1);
    }
    if f.restart {
        shared.restart_tx.send_modify(|v| *v += 1);
    }
}

pub(crate) fn active_faults(shared: &Shared) -> ActiveFaults {
    let pending = shared
        .lock()
        .force_stale
        .iter()
        .map(|(t, r)| (t.clone(), r.clone()))
        .collect();
    shared.faults.snapshot(pending)
}

impl DevServer {
    /// App token of the full principal (`user:42`, every reference topic).
    pub const APP_TOKEN: &'static str = "dev-app-token";
    /// App token of the limited principal (`user:43`, `runtime.run_summaries` only).
    pub const LIMITED_APP_TOKEN: &'static str = "dev-app-token-limited";

    /// Starts a server with empty logs (plus `seed_docs`).
    pub async fn start(config: DevServerConfig) -> std::io::Result<DevServer> {
        Self::start_with_state(config, ServerState::default()).await
    }

    /// Starts a server on top of logs exported by [`DevServer::export_state`] (restart tests:
    /// shut one down, start another on the same port with the same logs). `seed_docs` is
    /// applied only when `state` is empty.
    pub async fn start_with_state(
        config: DevServerConfig,
        state: ServerState,
    ) -> std::io::Result<DevServer> {
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, config.port)))
                .await?;
        let addr = listener.local_addr()?;
        let was_empty = state.logs.values().all(|l| l.head() == 0);
        let shared = Arc::new(Shared::new(config, state));
        if was_empty && shared.config.seed_docs > 0 {
            crate::seed::seed_docs(&shared, shared.config.seed_docs, shared.config.seed);
        }
        let generator = crate::seed::spawn_generator(
            shared.clone(),
            shared.config.rate_per_sec,
            shared.config.seed,
        );
        let (tx, rx) = oneshot::channel::<()>();
        let app = router(shared.clone());
        let task = tokio::spawn(async move {
            // Like Phoenix/Cowboy: no Nagle delay on small live frames.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = rx.await;
            });
            if let Err(e) = serve.await {
                tracing::error!("dev server stopped: {e}");
            }
        });
        tracing::info!("khala dev server listening on http://{addr}");
        Ok(DevServer {
            inner: Arc::new(ServerInner {
                shared,
                addr,
                running: Mutex::new(Running {
                    shutdown: Some(tx),
                    task: Some(task),
                    generator,
                }),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// `ws://127.0.0.1:PORT/sync/socket/websocket?token=…&vsn=2.0.0` for `token`.
    pub fn socket_url(&self, token: &str) -> String {
        format!(
            "ws://{}/sync/socket/websocket?token={token}&vsn=2.0.0",
            self.inner.addr
        )
    }

    /// The effective configuration.
    pub fn config(&self) -> &DevServerConfig {
        &self.shared().config
    }

    /// Publishes `payload` (serialized compactly) and returns its watermark.
    ///
    /// # Panics
    /// If `topic` is not served or `doc_key` is empty (test helper; see [`DevServer::try_publish`]).
    pub fn publish(&self, topic: &str, doc_key: &str, payload: serde_json::Value) -> u64 {
        self.publish_raw(topic, doc_key, &payload.to_string())
    }

    /// Publishes raw JSON text, stored and sent exactly as given.
    ///
    /// # Panics
    /// If the text is not JSON, the topic unknown or the key empty (test helper).
    pub fn publish_raw(&self, topic: &str, doc_key: &str, raw_json: &str) -> u64 {
        let raw = RawValue::from_string(raw_json.to_owned()).map_err(|e| e.to_string());
        let item = raw.map(|r| PublishItem {
            topic: topic.to_owned(),
            doc_key: doc_key.to_owned(),
            payload: Some(Arc::from(r)),
        });
        match item
            .map_err(PublishError::InvalidJson)
            .and_then(|i| self.try_publish(vec![i]))
        {
            Ok(p) => p.first().map_or(0, |p| p.watermark),
            Err(e) => panic!("DevServer::publish_raw({topic:?}, {doc_key:?}): {e}"),
        }
    }

    /// Publishes a tombstone and returns its watermark.
    ///
    /// # Panics
    /// If the topic is unknown or the key empty (test helper).
    pub fn delete(&self, topic: &str, doc_key: &str) -> u64 {
        let item = PublishItem {
            topic: topic.to_owned(),
            doc_key: doc_key.to_owned(),
            payload: None,
        };
        match self.try_publish(vec![item]) {
            Ok(p) => p.first().map_or(0, |p| p.watermark),
            Err(e) => panic!("DevServer::delete({topic:?}, {doc_key:?}): {e}"),
        }
    }

    /// Publishes several updates atomically (validated first; all or nothing).
    pub fn try_publish(
        &self,
        items: Vec<PublishItem>,
    ) -> Result<Vec<crate::state::Published>, PublishError> {
        self.shared().publish(items)
    }

    /// Head watermark of `topic` (0 when unknown or empty).
    pub fn head(&self, topic: &str) -> u64 {
        self.shared().lock().logs.get(topic).map_or(0, |l| l.head())
    }

    /// Retention floor of `topic`.
    pub fn retention_floor(&self, topic: &str) -> u64 {
        self.shared()
            .lock()
            .logs
            .get(topic)
            .map_or(0, |l| l.floor())
    }

    /// Every live document of `topic`, sorted by key.
    pub fn state(&self, topic: &str) -> Vec<DocState> {
        let inner = self.shared().lock();
        let Some(log) = inner.logs.get(topic) else {
            return Vec::new();
        };
        log.live_docs()
            .into_iter()
            .map(|e| DocState {
                doc_key: e.doc_key.clone(),
                doc_version: e.doc_version,
                payload_hash: e.payload_hash.clone().unwrap_or_default(),
                payload: e.payload_text().to_owned(),
                watermark: e.watermark,
            })
            .collect()
    }

    /// Drops retained entries below `watermark` (moves the retention floor to `watermark - 1`).
    pub fn truncate_before(&self, topic: &str, watermark: u64) {
        if let Some(log) = self.shared().lock().logs.get_mut(topic) {
            log.truncate_before(watermark);
        }
    }

    /// Applies fault switches (merge: absent fields stay as they are).
    pub fn set_faults(&self, faults: Faults) {
        apply_faults(self.shared(), &faults);
    }

    /// The persistent fault switches now.
    pub fn faults(&self) -> ActiveFaults {
        active_faults(self.shared())
    }

    /// Clears every fault switch.
    pub fn clear_faults(&self) {
        self.set_faults(Faults {
            reset: true,
            ..Faults::default()
        });
    }

    /// Metrics (all topics).
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared().metrics(usize::MAX)
    }

    /// When each WebSocket upgrade was accepted (the newest 100,000), oldest first.
    pub fn upgrade_times(&self) -> Vec<std::time::Instant> {
        self.shared()
            .counters
            .upgrade_times
            .lock()
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Closes every socket abruptly (no close frame), keeping the logs.
    pub fn restart_connections(&self) {
        self.shared().restart_tx.send_modify(|v| *v += 1);
    }

    /// Every open socket's token counts as expired now (`reauth_required`, close 5 s later).
    pub fn expire_tokens(&self) {
        self.shared().expire_tx.send_modify(|v| *v += 1);
    }

    /// Dialect F: appends an event (`payload` serialized compactly) to `topic` and returns its
    /// sequence.
    ///
    /// # Panics
    /// If `topic` is not a dialect-F topic name (test helper; see
    /// [`DevServer::try_publish_event_raw`]).
    pub fn publish_event(&self, topic: &str, kind: &str, payload: serde_json::Value) -> u64 {
        self.publish_event_raw(topic, kind, &payload.to_string())
    }

    /// Dialect F: appends an event whose payload is raw JSON text, kept and served
    /// byte-for-byte; returns its sequence.
    ///
    /// # Panics
    /// If `topic` is not a dialect-F topic name or the text is not JSON (test helper).
    pub fn publish_event_raw(&self, topic: &str, kind: &str, raw_json: &str) -> u64 {
        match self.try_publish_event_raw(topic, kind, raw_json) {
            Ok(seq) => seq,
            Err(e) => panic!("DevServer::publish_event_raw({topic:?}, {kind:?}): {e}"),
        }
    }

    /// Dialect F: like [`DevServer::publish_event_raw`], with a typed error instead of a panic.
    pub fn try_publish_event_raw(
        &self,
        topic: &str,
        kind: &str,
        raw_json: &str,
    ) -> Result<u64, PublishError> {
        self.shared().fanout.publish(
            &self.shared().config.fanout,
            topic,
            kind,
            raw_json.to_owned(),
        )
    }

    /// Dialect F: "creates" run `run_id` by publishing `run.started` to `run:<run_id>:events`
    /// (sequence 1 on a new run); returns the sequence.
    ///
    /// # Panics
    /// If `run_id` is not `[A-Za-z0-9_.-]{1,128}` (test helper).
    pub fn create_run(&self, run_id: &str) -> u64 {
        self.publish_event(
            &format!("run:{run_id}:events"),
            "run.started",
            serde_json::json!({"run_id": run_id}),
        )
    }

    /// Dialect F: `ws://127.0.0.1:PORT/internal/v1/khala/topics/{topic}/ws` with the topic
    /// percent-encoded (append `?after_seq=N&limit=N`).
    pub fn fanout_ws_url(&self, topic: &str) -> String {
        format!(
            "ws://{}/internal/v1/khala/topics/{}/ws",
            self.inner.addr,
            encode_segment(topic)
        )
    }

    /// Dialect F: `http://127.0.0.1:PORT/internal/v1/khala/topics/{topic}/messages` with the
    /// topic percent-encoded (append `?after_seq=N&limit=N`).
    pub fn fanout_messages_url(&self, topic: &str) -> String {
        format!(
            "http://{}/internal/v1/khala/topics/{}/messages",
            self.inner.addr,
            encode_segment(topic)
        )
    }

    /// Dialect F: the retained messages of `topic`, ascending (empty when unknown).
    pub fn events(&self, topic: &str) -> Vec<EventMessage> {
        self.shared().fanout.events(topic)
    }

    /// Dialect F: the last sequence of `topic` (0 if none).
    pub fn event_head(&self, topic: &str) -> u64 {
        self.shared().fanout.cursors(topic).0
    }

    /// Dialect F: first retained sequence − 1 of `topic` (0 when nothing was evicted).
    pub fn event_oldest_available(&self, topic: &str) -> u64 {
        self.shared().fanout.cursors(topic).1
    }

    /// Dialect F: drops the retained messages with sequence `<= seq` (cursors below `seq` are
    /// then stale: poll 410, WS `stale_cursor`).
    pub fn evict_events_through(&self, topic: &str, seq: u64) {
        self.shared().fanout.evict_through(topic, seq);
    }

    /// Dialect F: every request the fanout routes answered (the newest 100,000), oldest first.
    pub fn fanout_requests(&self) -> Vec<FanoutRequest> {
        self.shared().fanout.requests()
    }

    /// A copy of the logs, for [`DevServer::start_with_state`].
    pub fn export_state(&self) -> ServerState {
        ServerState {
            logs: self.shared().lock().logs.clone(),
            events: self.shared().fanout.export_logs(),
        }
    }

    /// Stops the generator, drops every socket, stops listening (the port is free on return).
    pub async fn shutdown(self) {
        self.shutdown_and_export().await;
    }

    /// Like [`DevServer::shutdown`], returning the logs for a restart on the same port.
    pub async fn shutdown_and_export(self) -> ServerState {
        let (tx, task, generator) = {
            let mut r = self.inner.running.lock().unwrap_or_else(|p| p.into_inner());
            (r.shutdown.take(), r.task.take(), r.generator.take())
        };
        if let Some(g) = generator {
            g.abort();
        }
        self.restart_connections();
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
        if let Some(mut task) = task {
            if tokio::time::timeout(Duration::from_secs(3), &mut task)
                .await
                .is_err()
            {
                task.abort();
                let _ = task.await;
            }
        }
        self.export_state()
    }

    /// A valid sync token for `subject` granting every served topic, valid for `ttl`
    /// (whole seconds, at least 1).
    pub fn mint_token_for_tests(&self, subject: &str, ttl: Duration) -> String {
        let topics = self
            .config()
            .topics
            .iter()
            .map(|t| t.name.clone())
            .collect();
        self.mint_token_with(&TestToken {
            subject: subject.to_owned(),
            topics,
            issued_offset_seconds: 0,
            ttl_seconds: i64::try_from(ttl.as_secs().max(1)).unwrap_or(300),
            tampered: false,
        })
    }

    /// A token for `subject` that expired a minute ago (the upgrade answers 403).
    pub fn mint_expired_token_for_tests(&self, subject: &str) -> String {
        let topics = self
            .config()
            .topics
            .iter()
            .map(|t| t.name.clone())
            .collect();
        self.mint_token_with(&TestToken {
            subject: subject.to_owned(),
            topics,
            issued_offset_seconds: -360,
            ttl_seconds: 300,
            tampered: false,
        })
    }

    /// A token with valid claims and a corrupted signature.
    pub fn mint_tampered_token_for_tests(&self, subject: &str) -> String {
        let topics = self
            .config()
            .topics
            .iter()
            .map(|t| t.name.clone())
            .collect();
        self.mint_token_with(&TestToken {
            subject: subject.to_owned(),
            topics,
            issued_offset_seconds: 0,
            ttl_seconds: 300,
            tampered: true,
        })
    }

    /// A token from an explicit [`TestToken`].
    pub fn mint_token_with(&self, spec: &TestToken) -> String {
        let iat = now_unix() + spec.issued_offset_seconds;
        let claims = make_claims(
            self.shared(),
            &spec.subject,
            "org:7",
            spec.topics.clone(),
            spec.topics.clone(),
            "device:test",
            iat,
            spec.ttl_seconds,
        );
        let token = jwt::sign(self.config().jwt_secret.as_bytes(), &claims);
        if spec.tampered {
            return jwt::tamper(&token);
        }
        token
    }
}
