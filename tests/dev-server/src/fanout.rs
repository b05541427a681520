//! Dialect F: the runtime fanout (PROTOCOL.md §6, §6.1) — one WebSocket per topic with
//! `?after_seq=` and an HTTP poll route, over append-only event logs.
//!
//! The event logs are separate from dialect P's document logs. Each topic keeps a ring of
//! `FanoutConfig::ring_capacity` messages; payloads are kept as raw JSON text and served
//! byte-for-byte. One `std::sync::Mutex` guards logs, live subscribers and poll bookkeeping:
//! a publish appends and hands the message to every open WebSocket of the topic atomically,
//! so a socket sees each message either in its replay or live (duplicates are skipped by
//! sequence). Nothing awaits while holding it.

use crate::config::FanoutConfig;
use crate::http::{bearer, raw_json};
use crate::jwt::{self, SyncClaims, TokenError};
use crate::metrics::{FanoutTopicMetrics, MetricsSnapshot};
use crate::state::{PublishError, Shared};
use crate::time::{now_unix, rfc3339};
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Scope of `run:<run_id>:events`.
const SCOPE_RUN_EVENTS: &str = "runtime.run_events";
/// Scope of `worker:<id>:lifecycle` and `runtime.codex_worker_events`; also the name of the
/// global codex worker event topic.
const CODEX_WORKER_EVENTS: &str = "runtime.codex_worker_events";
/// How many requests [`crate::DevServer::fanout_requests`] keeps.
const REQUEST_LOG_CAP: usize = 100_000;
/// Window of the "polls ≥ 2 topics" rule.
const MULTI_TOPIC_WINDOW: Duration = Duration::from_secs(10);
/// Largest poll `limit` accepted before `413 payload_too_large`.
const POLL_LIMIT_REJECT_ABOVE: u64 = 1000;

/// The kinds of dialect-F topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TopicKind {
    /// `run:<run_id>:events`.
    RunEvents,
    /// `worker:<worker_id>:lifecycle`.
    WorkerLifecycle,
    /// `runtime.codex_worker_events`.
    CodexWorkerEvents,
}

impl TopicKind {
    fn scope(self) -> &'static str {
        match self {
            TopicKind::RunEvents => SCOPE_RUN_EVENTS,
            TopicKind::WorkerLifecycle | TopicKind::CodexWorkerEvents => CODEX_WORKER_EVENTS,
        }
    }

    fn budget(self, cfg: &FanoutConfig) -> u64 {
        match self {
            TopicKind::RunEvents => cfg.budget_run_events,
            TopicKind::WorkerLifecycle => cfg.budget_worker_lifecycle,
            TopicKind::CodexWorkerEvents => cfg.budget_codex_worker_events,
        }
    }

    fn qos_tier(self) -> &'static str {
        match self {
            TopicKind::RunEvents | TopicKind::WorkerLifecycle => "warm",
            TopicKind::CodexWorkerEvents => "hot",
        }
    }
}

fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The kind of a dialect-F topic name, `None` for anything else.
pub(crate) fn topic_kind(topic: &str) -> Option<TopicKind> {
    if topic == CODEX_WORKER_EVENTS {
        return Some(TopicKind::CodexWorkerEvents);
    }
    if let Some(id) = topic
        .strip_prefix("run:")
        .and_then(|r| r.strip_suffix(":events"))
    {
        return valid_id(id).then_some(TopicKind::RunEvents);
    }
    if let Some(id) = topic
        .strip_prefix("worker:")
        .and_then(|r| r.strip_suffix(":lifecycle"))
    {
        return valid_id(id).then_some(TopicKind::WorkerLifecycle);
    }
    None
}

/// The scope a dialect-F topic needs (`None`: not a dialect-F topic name).
pub(crate) fn required_scope(topic: &str) -> Option<&'static str> {
    topic_kind(topic).map(TopicKind::scope)
}

/// One message of a dialect-F event log, as the logs keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMessage {
    /// Topic.
    pub topic: String,
    /// Sequence (dense from 1).
    pub sequence: u64,
    /// Event kind (`run.started`, `run.step`, …).
    pub kind: String,
    /// Payload: the raw JSON text exactly as published.
    pub payload_raw: String,
    /// RFC 3339 publication time (UTC, seconds).
    pub published_at: String,
}

/// Which dialect-F route a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanoutRequestKind {
    /// `GET /internal/v1/khala/topics/{topic}/messages`.
    Poll,
    /// `GET /internal/v1/khala/topics/{topic}/ws`.
    WebSocket,
}

/// One request answered by a dialect-F route (see [`crate::DevServer::fanout_requests`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutRequest {
    /// When it arrived.
    pub at: Instant,
    /// Topic (percent-decoded path segment).
    pub topic: String,
    /// Token subject, when the token verified.
    pub subject: Option<String>,
    /// Poll or WebSocket.
    pub kind: FanoutRequestKind,
    /// `after_seq` as parsed (`None` when absent or not reached/invalid).
    pub after_seq: Option<u64>,
    /// `limit` as requested (before clamping).
    pub limit: Option<u64>,
    /// HTTP status answered; 101 for an accepted upgrade.
    pub status: u16,
}

/// A message in a log: the wire JSON object is rendered once at publish.
#[derive(Debug)]
pub(crate) struct StoredEvent {
    sequence: u64,
    kind: String,
    payload: Box<RawValue>,
    published_at: String,
    /// `{"topic","sequence","kind","payload","published_at"}`.
    message: Box<RawValue>,
}

/// One topic's ring: holds `oldest + 1 ..= head`, dense.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventLog {
    ring: VecDeque<Arc<StoredEvent>>,
    head: u64,
    oldest: u64,
}

impl EventLog {
    fn append(&mut self, ev: Arc<StoredEvent>, capacity: usize) {
        self.head = ev.sequence;
        self.ring.push_back(ev);
        while self.ring.len() > capacity.max(1) {
            if let Some(e) = self.ring.pop_front() {
                self.oldest = e.sequence;
            }
        }
    }

    fn evict_through(&mut self, seq: u64) {
        while self.ring.front().is_some_and(|e| e.sequence <= seq) {
            if let Some(e) = self.ring.pop_front() {
                self.oldest = e.sequence;
            }
        }
    }

    /// Up to `n` retained messages with sequence > `after`, ascending (starting at the
    /// first retained one when `after` is below the ring).
    fn after(&self, after: u64, n: usize) -> Vec<Arc<StoredEvent>> {
        let first = self.oldest + 1;
        let start = after.saturating_add(1).max(first);
        let skip = usize::try_from(start - first).unwrap_or(usize::MAX);
        self.ring.iter().skip(skip).take(n).cloned().collect()
    }
}

#[derive(Serialize)]
struct WireMessage<'a> {
    topic: &'a str,
    sequence: u64,
    kind: &'a str,
    payload: &'a RawValue,
    published_at: &'a str,
}

#[derive(Debug, Default)]
struct FanoutCounters {
    ws_upgrades: AtomicU64,
    polls: AtomicU64,
    rate_limited: AtomicU64,
    evictions: AtomicU64,
    stale: AtomicU64,
    unauthorized: AtomicU64,
    messages_sent: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

type Subscriber = mpsc::UnboundedSender<Arc<StoredEvent>>;

#[derive(Debug, Default)]
struct FanoutInner {
    logs: BTreeMap<String, EventLog>,
    subscribers: BTreeMap<String, HashMap<u64, Subscriber>>,
    next_subscriber: u64,
    /// (subject, topic) → last poll (429s included).
    last_poll: HashMap<(String, String), Instant>,
    /// subject → topic → last poll, for the multi-topic page size.
    recent_topics: HashMap<String, HashMap<String, Instant>>,
    /// (subject, topic) → slow-consumer strikes of the poll route.
    poll_strikes: HashMap<(String, String), u32>,
    requests: VecDeque<FanoutRequest>,
}

/// Dialect-F state, a part of `Shared`.
#[derive(Debug)]
pub(crate) struct FanoutState {
    inner: Mutex<FanoutInner>,
    counters: FanoutCounters,
}

/// Why a cursor is stale, with the cursors it was judged against.
struct Stale {
    reasons: Vec<&'static str>,
    requested: u64,
    oldest: u64,
    head: u64,
    budget: u64,
    qos: &'static str,
}

impl Stale {
    fn check(
        kind: TopicKind,
        cfg: &FanoutConfig,
        after: u64,
        head: u64,
        oldest: u64,
    ) -> Option<Self> {
        let budget = kind.budget(cfg);
        let mut reasons = Vec::new();
        if after < oldest {
            reasons.push("retention_floor_breach");
        }
        if head.saturating_sub(after) > budget {
            reasons.push("replay_budget_exceeded");
        }
        (!reasons.is_empty()).then_some(Stale {
            reasons,
            requested: after,
            oldest,
            head,
            budget,
            qos: kind.qos_tier(),
        })
    }

    fn details(&self, topic: &str) -> serde_json::Map<String, Value> {
        let v = json!({
            "topic": topic,
            "requested_cursor": self.requested,
            "oldest_available_cursor": self.oldest,
            "head_cursor": self.head,
            "reason_codes": self.reasons,
            "replay_lag": self.head.saturating_sub(self.requested),
            "replay_budget_events": self.budget,
            "qos_tier": self.qos,
        });
        match v {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        }
    }
}

impl FanoutState {
    pub(crate) fn new(logs: BTreeMap<String, EventLog>) -> Self {
        Self {
            inner: Mutex::new(FanoutInner {
                logs,
                ..FanoutInner::default()
            }),
            counters: FanoutCounters::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FanoutInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn export_logs(&self) -> BTreeMap<String, EventLog> {
        self.lock().logs.clone()
    }

    /// Appends an event; hands it to the topic's open WebSockets.
    pub(crate) fn publish(
        &self,
        cfg: &FanoutConfig,
        topic: &str,
        kind: &str,
        raw_json: String,
    ) -> Result<u64, PublishError> {
        if topic_kind(topic).is_none() {
            return Err(PublishError::UnknownTopic(topic.to_owned()));
        }
        let payload = RawValue::from_string(raw_json)
            .map_err(|e| PublishError::InvalidJson(e.to_string()))?;
        let published_at = rfc3339(now_unix());
        let mut inner = self.lock();
        let FanoutInner {
            logs, subscribers, ..
        } = &mut *inner;
        let log = logs.entry(topic.to_owned()).or_default();
        let sequence = log.head + 1;
        let text = serde_json::to_string(&WireMessage {
            topic,
            sequence,
            kind,
            payload: &payload,
            published_at: &published_at,
        })
        .map_err(|e| PublishError::InvalidJson(e.to_string()))?;
        let message =
            RawValue::from_string(text).map_err(|e| PublishError::InvalidJson(e.to_string()))?;
        let ev = Arc::new(StoredEvent {
            sequence,
            kind: kind.to_owned(),
            payload,
            published_at,
            message,
        });
        log.append(ev.clone(), cfg.ring_capacity);
        if let Some(subs) = subscribers.get_mut(topic) {
            subs.retain(|_, tx| tx.send(ev.clone()).is_ok());
        }
        Ok(sequence)
    }

    pub(crate) fn events(&self, topic: &str) -> Vec<EventMessage> {
        let inner = self.lock();
        let Some(log) = inner.logs.get(topic) else {
            return Vec::new();
        };
        log.ring
            .iter()
            .map(|e| EventMessage {
                topic: topic.to_owned(),
                sequence: e.sequence,
                kind: e.kind.clone(),
                payload_raw: e.payload.get().to_owned(),
                published_at: e.published_at.clone(),
            })
            .collect()
    }

    /// `(head, oldest_available)` of `topic` (zeros when unknown).
    pub(crate) fn cursors(&self, topic: &str) -> (u64, u64) {
        self.lock()
            .logs
            .get(topic)
            .map_or((0, 0), |l| (l.head, l.oldest))
    }

    pub(crate) fn evict_through(&self, topic: &str, seq: u64) {
        if let Some(log) = self.lock().logs.get_mut(topic) {
            log.evict_through(seq);
        }
    }

    pub(crate) fn requests(&self) -> Vec<FanoutRequest> {
        self.lock().requests.iter().cloned().collect()
    }

    fn record(&self, rec: FanoutRequest) {
        let mut inner = self.lock();
        if inner.requests.len() >= REQUEST_LOG_CAP {
            inner.requests.pop_front();
        }
        inner.requests.push_back(rec);
    }

    /// Registers a WebSocket on `topic` unless `after` is stale (checked under the same lock).
    fn subscribe(
        &self,
        topic: &str,
        kind: TopicKind,
        cfg: &FanoutConfig,
        after: u64,
        tx: Subscriber,
    ) -> Result<u64, Stale> {
        let mut inner = self.lock();
        let (head, oldest) = inner.logs.get(topic).map_or((0, 0), |l| (l.head, l.oldest));
        if let Some(stale) = Stale::check(kind, cfg, after, head, oldest) {
            return Err(stale);
        }
        inner.next_subscriber += 1;
        let id = inner.next_subscriber;
        inner
            .subscribers
            .entry(topic.to_owned())
            .or_default()
            .insert(id, tx);
        Ok(id)
    }

    fn unsubscribe(&self, topic: &str, id: u64) {
        let mut inner = self.lock();
        if let Some(subs) = inner.subscribers.get_mut(topic) {
            subs.remove(&id);
            if subs.is_empty() {
                inner.subscribers.remove(topic);
            }
        }
    }

    /// `(head, oldest, up to n messages after `after`)`.
    fn page(&self, topic: &str, after: u64, n: usize) -> (u64, u64, Vec<Arc<StoredEvent>>) {
        let inner = self.lock();
        match inner.logs.get(topic) {
            Some(l) => (l.head, l.oldest, l.after(after, n)),
            None => (0, 0, Vec::new()),
        }
    }

    /// The dialect-F part of the metrics (other fields default).
    pub(crate) fn metrics(&self, topic_limit: usize) -> MetricsSnapshot {
        let inner = self.lock();
        let fanout_topics = inner
            .logs
            .iter()
            .take(topic_limit)
            .map(|(name, log)| FanoutTopicMetrics {
                topic: name.clone(),
                head_cursor: log.head,
                oldest_available_cursor: log.oldest,
                retained: log.ring.len() as u64,
                subscribers: inner.subscribers.get(name).map_or(0, |s| s.len() as u64),
            })
            .collect();
        let c = &self.counters;
        MetricsSnapshot {
            fanout_ws_upgrades: get(&c.ws_upgrades),
            fanout_polls: get(&c.polls),
            fanout_rate_limited: get(&c.rate_limited),
            fanout_evictions: get(&c.evictions),
            fanout_stale: get(&c.stale),
            fanout_unauthorized: get(&c.unauthorized),
            fanout_messages_sent: get(&c.messages_sent),
            fanout_topics,
            ..MetricsSnapshot::default()
        }
    }
}

fn error_response(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// An error answer (status, JSON body): small, unlike `Response`.
struct Reject(StatusCode, Value);

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        error_response(self.0, self.1)
    }
}

fn invalid_request(message: &str) -> Reject {
    Reject(
        StatusCode::BAD_REQUEST,
        json!({"error": "invalid_request", "message": message}),
    )
}

fn reconnect_hint(cfg: &FanoutConfig) -> u64 {
    cfg.reconnect_hint_ms + fastrand::u64(0..=cfg.reconnect_jitter_ms)
}

/// Auth (401) → topic known and allowed by the token's scopes (403 `forbidden_topic`) →
/// origin (403 `forbidden_origin`).
fn check(
    shared: &Shared,
    headers: &HeaderMap,
    topic: &str,
    rec: &mut FanoutRequest,
) -> Result<(SyncClaims, TopicKind), Reject> {
    let cfg = &shared.config;
    let unauthorized = |reason: &str| {
        inc(&shared.fanout.counters.unauthorized);
        Reject(
            StatusCode::UNAUTHORIZED,
            json!({"error": "unauthorized", "reason_code": reason}),
        )
    };
    if shared.faults.take_reject_auth() {
        return Err(unauthorized("token_expired"));
    }
    let Some(token) = bearer(headers).filter(|t| !t.is_empty()) else {
        return Err(unauthorized("missing_authorization"));
    };
    let now = now_unix();
    let claims = jwt::verify(
        cfg.jwt_secret.as_bytes(),
        token,
        now,
        cfg.clock_skew_seconds,
        &cfg.issuer,
        &cfg.audience,
    )
    .map_err(|e| {
        unauthorized(match e {
            TokenError::Expired => "token_expired",
            _ => "invalid_token",
        })
    })?;
    rec.subject = Some(claims.sub.clone());
    let max_age = i64::try_from(cfg.fanout.token_max_age.as_secs()).unwrap_or(i64::MAX);
    if now.saturating_sub(claims.iat) > max_age {
        return Err(unauthorized("token_too_old"));
    }
    let forbidden = |error: &str, reason: &str| {
        Reject(
            StatusCode::FORBIDDEN,
            json!({"error": error, "reason_code": reason}),
        )
    };
    let Some(kind) = topic_kind(topic) else {
        return Err(forbidden("forbidden_topic", "unknown_topic"));
    };
    if !claims.oa_sync_scopes.iter().any(|s| s == kind.scope()) {
        return Err(forbidden("forbidden_topic", "missing_scope"));
    }
    if let (Some(allowed), Some(origin)) = (
        cfg.fanout.allowed_origins.as_ref(),
        headers.get(header::ORIGIN),
    ) {
        let origin = origin.to_str().unwrap_or("");
        if !allowed.iter().any(|a| a == origin) {
            return Err(forbidden("forbidden_origin", "origin_not_allowed"));
        }
    }
    Ok((claims, kind))
}

/// `Ok(None)` when absent, `Err` when present but not a non-negative integer.
fn u64_param(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, Reject> {
    match params.get(name) {
        None => Ok(None),
        Some(v) => v
            .parse::<u64>()
            .map(Some)
            .map_err(|_| invalid_request(&format!("{name} must be a non-negative integer"))),
    }
}

type QueryParams = Result<Query<HashMap<String, String>>, QueryRejection>;

fn params_of(query: QueryParams) -> Result<HashMap<String, String>, Reject> {
    query
        .map(|q| q.0)
        .map_err(|_| invalid_request("malformed query string"))
}

/// `GET /internal/v1/khala/topics/{topic}/ws` (PROTOCOL.md §6).
pub(crate) async fn ws_route(
    State(shared): State<Arc<Shared>>,
    Path(topic): Path<String>,
    query: QueryParams,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let mut rec = FanoutRequest {
        at: Instant::now(),
        topic: topic.clone(),
        subject: None,
        kind: FanoutRequestKind::WebSocket,
        after_seq: None,
        limit: None,
        status: 0,
    };
    let resp = ws_answer(&shared, topic, query, &headers, upgrade, &mut rec);
    rec.status = resp.status().as_u16();
    if rec.status == 101 {
        inc(&shared.fanout.counters.ws_upgrades);
    }
    shared.fanout.record(rec);
    resp
}

fn ws_answer(
    shared: &Arc<Shared>,
    topic: String,
    query: QueryParams,
    headers: &HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    rec: &mut FanoutRequest,
) -> Response {
    if crate::faults::FaultFlags::get(&shared.faults.fanout_ws_blocked) {
        return (
            StatusCode::BAD_GATEWAY,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "502 Bad Gateway: WebSocket upgrades are not allowed by this proxy\n",
        )
            .into_response();
    }
    let kind = match check(shared, headers, &topic, rec) {
        Ok((_, kind)) => kind,
        Err(r) => return r.into_response(),
    };
    let cfg = &shared.config.fanout;
    let params = match params_of(query) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let (after_seq, limit) = match (u64_param(&params, "after_seq"), u64_param(&params, "limit")) {
        (Ok(a), Ok(l)) => (a, l),
        (Err(r), _) | (_, Err(r)) => return r.into_response(),
    };
    rec.after_seq = after_seq;
    rec.limit = limit;
    let after_seq = after_seq.unwrap_or(0);
    let limit = limit
        .map_or(cfg.ws_default_limit, |l| {
            usize::try_from(l).unwrap_or(usize::MAX)
        })
        .clamp(1, cfg.poll_limit_max.max(1));
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let shared = shared.clone();
    upgrade.on_upgrade(move |socket| run_ws(shared, socket, topic, kind, after_seq, limit))
}

/// Removes the socket from the topic's subscribers when the task ends.
struct Unsubscribe {
    shared: Arc<Shared>,
    topic: String,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.shared.fanout.unsubscribe(&self.topic, self.id);
    }
}

fn frame(v: &Value) -> Message {
    Message::Text(v.to_string().into())
}

fn message_frame(ev: &StoredEvent) -> Message {
    Message::Text(format!(r#"{{"type":"message","message":{}}}"#, ev.message.get()).into())
}

/// Sends a batch; `false` when the socket is gone.
async fn send_batch(
    shared: &Shared,
    sink: &mut futures::stream::SplitSink<WebSocket, Message>,
    batch: &[Arc<StoredEvent>],
) -> bool {
    for ev in batch {
        if sink.feed(message_frame(ev)).await.is_err() {
            return false;
        }
    }
    if sink.flush().await.is_err() {
        return false;
    }
    shared
        .fanout
        .counters
        .messages_sent
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    true
}

/// One upgraded fanout WebSocket: hello, stale check, replay in batches with slow-consumer
/// strikes, then live. Every `return` drops the TCP connection without a close frame.
async fn run_ws(
    shared: Arc<Shared>,
    socket: WebSocket,
    topic: String,
    kind: TopicKind,
    after_seq: u64,
    limit: usize,
) {
    let mut restart = shared.restart_tx.subscribe();
    let cfg = shared.config.fanout.clone();
    let (mut sink, mut stream) = socket.split();
    let hello = json!({
        "type": "hello",
        "topic": topic,
        "after_seq": after_seq,
        "limit": limit,
        "recommended_reconnect_backoff_ms": reconnect_hint(&cfg),
    });
    if sink.send(frame(&hello)).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let id = match shared.fanout.subscribe(&topic, kind, &cfg, after_seq, tx) {
        Ok(id) => id,
        Err(stale) => {
            inc(&shared.fanout.counters.stale);
            let mut body = stale.details(&topic);
            body.insert("type".into(), "stale_cursor".into());
            let _ = sink.send(frame(&Value::Object(body))).await;
            return;
        }
    };
    let _unsubscribe = Unsubscribe {
        shared: shared.clone(),
        topic: topic.clone(),
        id,
    };
    let mut sent = after_seq;
    let mut strikes = 0u32;
    // Replay in batches of `limit`; each batch judged by how far behind head it starts.
    loop {
        if restart.has_changed().unwrap_or(true) {
            return;
        }
        let (head, oldest, batch) = shared.fanout.page(&topic, sent, limit);
        if head <= sent {
            break;
        }
        if batch.first().map(|e| e.sequence) != Some(sent + 1) {
            // The ring moved past our position while we were replaying.
            inc(&shared.fanout.counters.stale);
            let stale = Stale {
                reasons: vec!["retention_floor_breach"],
                requested: sent,
                oldest,
                head,
                budget: kind.budget(&cfg),
                qos: kind.qos_tier(),
            };
            let mut body = stale.details(&topic);
            body.insert("type".into(), "stale_cursor".into());
            let _ = sink.send(frame(&Value::Object(body))).await;
            return;
        }
        if head - sent > cfg.slow_consumer_lag_threshold {
            strikes += 1;
        } else {
            strikes = 0;
        }
        if strikes >= cfg.slow_consumer_max_strikes.max(1) {
            inc(&shared.fanout.counters.evictions);
            let err = json!({
                "type": "error",
                "code": "slow_consumer_evicted",
                "message": format!(
                    "consumer is {} events behind head (threshold {}), strike {strikes} of {}",
                    head - sent,
                    cfg.slow_consumer_lag_threshold,
                    cfg.slow_consumer_max_strikes
                ),
            });
            let _ = sink.send(frame(&err)).await;
            return;
        }
        if !send_batch(&shared, &mut sink, &batch).await {
            return;
        }
        sent = batch.last().map_or(sent, |e| e.sequence);
    }
    // Live: every new message of the topic (those already replayed are skipped).
    loop {
        tokio::select! {
            _ = restart.changed() => return,
            ev = rx.recv() => {
                let Some(ev) = ev else { return };
                if ev.sequence <= sent {
                    continue;
                }
                if ev.sequence != sent + 1 {
                    // Cannot happen (subscribed before replay, under the publish lock);
                    // resend what is missing from the log rather than skip silently.
                    let (_, _, gap) = shared.fanout.page(
                        &topic,
                        sent,
                        usize::try_from(ev.sequence - sent - 1).unwrap_or(usize::MAX),
                    );
                    if gap.first().map(|e| e.sequence) != Some(sent + 1) {
                        return;
                    }
                    if !send_batch(&shared, &mut sink, &gap).await {
                        return;
                    }
                }
                if !send_batch(&shared, &mut sink, std::slice::from_ref(&ev)).await {
                    return;
                }
                sent = ev.sequence;
            }
            msg = stream.next() => match msg {
                // Pings are answered by the WebSocket layer while we read; text is ignored.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// `GET /internal/v1/khala/topics/{topic}/messages` (PROTOCOL.md §6, §6.1).
pub(crate) async fn poll_route(
    State(shared): State<Arc<Shared>>,
    Path(topic): Path<String>,
    query: QueryParams,
    headers: HeaderMap,
) -> Response {
    let mut rec = FanoutRequest {
        at: Instant::now(),
        topic: topic.clone(),
        subject: None,
        kind: FanoutRequestKind::Poll,
        after_seq: None,
        limit: None,
        status: 0,
    };
    inc(&shared.fanout.counters.polls);
    let resp = poll_answer(&shared, &topic, query, &headers, &mut rec);
    rec.status = resp.status().as_u16();
    shared.fanout.record(rec);
    resp
}

#[derive(Serialize)]
struct PollPage<'a> {
    topic: &'a str,
    messages: Vec<&'a RawValue>,
    oldest_available_cursor: u64,
    head_cursor: u64,
    next_cursor: u64,
    replay_complete: bool,
    limit_applied: usize,
    consumer_lag: u64,
    slow_consumer_strikes: u32,
    slow_consumer_max_strikes: u32,
    recommended_reconnect_backoff_ms: u64,
}

fn poll_answer(
    shared: &Shared,
    topic: &str,
    query: QueryParams,
    headers: &HeaderMap,
    rec: &mut FanoutRequest,
) -> Response {
    let (claims, kind) = match check(shared, headers, topic, rec) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let cfg = &shared.config.fanout;
    let interval = match shared
        .faults
        .fanout_poll_min_interval_ms
        .load(Ordering::SeqCst)
    {
        u64::MAX => cfg.poll_min_interval,
        ms => Duration::from_millis(ms),
    };
    let now = Instant::now();
    let subject = claims.sub;
    let key = (subject.clone(), topic.to_owned());
    let mut inner = shared.fanout.lock();
    // Rate: a 429 counts as a poll too (restarts the window).
    if let Some(prev) = inner.last_poll.insert(key.clone(), now) {
        let elapsed = now.saturating_duration_since(prev);
        if elapsed < interval {
            // This 429 counts as a poll, so the window restarts now: what remains of it is
            // the whole interval. (Remaining-of-the-old-window would send a client that
            // waits `retry_after_ms` straight into another 429, forever.)
            let ms = u64::try_from(interval.as_micros().div_ceil(1000)).unwrap_or(u64::MAX);
            inc(&shared.fanout.counters.rate_limited);
            return error_response(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": "rate_limited", "retry_after_ms": ms + fastrand::u64(0..=50)}),
            );
        }
    }
    let params = match params_of(query) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let after_seq = match u64_param(&params, "after_seq") {
        Ok(Some(a)) => a,
        Ok(None) => return invalid_request("after_seq is required").into_response(),
        Err(r) => return r.into_response(),
    };
    let limit = match u64_param(&params, "limit") {
        Ok(l) => l,
        Err(r) => return r.into_response(),
    };
    rec.after_seq = Some(after_seq);
    rec.limit = limit;
    match limit {
        Some(0) => return invalid_request("limit must be at least 1").into_response(),
        Some(l) if l > POLL_LIMIT_REJECT_ABOVE => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "payload_too_large", "message": "limit must be at most 1000"}),
            )
        }
        _ => {}
    }
    let topics = inner.recent_topics.entry(subject).or_default();
    topics.insert(topic.to_owned(), now);
    topics.retain(|_, t| now.saturating_duration_since(*t) < MULTI_TOPIC_WINDOW);
    let cap = if topics.len() >= 2 {
        cfg.poll_limit_multi_topic
    } else {
        cfg.poll_limit_max
    }
    .max(1);
    let limit_applied = limit
        .map_or(cap, |l| usize::try_from(l).unwrap_or(usize::MAX))
        .min(cap);
    let (head, oldest) = inner.logs.get(topic).map_or((0, 0), |l| (l.head, l.oldest));
    if let Some(stale) = Stale::check(kind, cfg, after_seq, head, oldest) {
        inc(&shared.fanout.counters.stale);
        let mut details = stale.details(topic);
        details.insert(
            "recovery".into(),
            "reset_local_watermark_and_replay_bootstrap".into(),
        );
        return error_response(
            StatusCode::GONE,
            json!({"error": "stale_cursor", "details": details}),
        );
    }
    let lag = head.saturating_sub(after_seq);
    let strikes = inner.poll_strikes.entry(key).or_default();
    if lag > cfg.slow_consumer_lag_threshold {
        *strikes += 1;
    } else {
        *strikes = 0;
    }
    if *strikes >= cfg.slow_consumer_max_strikes.max(1) {
        let count = *strikes;
        *strikes = 0;
        inc(&shared.fanout.counters.evictions);
        return error_response(
            StatusCode::CONFLICT,
            json!({"error": "slow_consumer_evicted", "details": {
                "topic": topic,
                "lag": lag,
                "lag_threshold": cfg.slow_consumer_lag_threshold,
                "strikes": count,
                "max_strikes": cfg.slow_consumer_max_strikes,
                "suggested_after_seq": after_seq,
                "recovery": "advance_cursor_or_rebootstrap",
            }}),
        );
    }
    let strikes = *strikes;
    let page = inner
        .logs
        .get(topic)
        .map(|l| l.after(after_seq, limit_applied))
        .unwrap_or_default();
    drop(inner);
    let next_cursor = page.last().map_or(after_seq, |e| e.sequence);
    shared
        .fanout
        .counters
        .messages_sent
        .fetch_add(page.len() as u64, Ordering::Relaxed);
    let body = PollPage {
        topic,
        messages: page.iter().map(|e| &*e.message).collect(),
        oldest_available_cursor: oldest,
        head_cursor: head,
        next_cursor,
        replay_complete: next_cursor >= head,
        limit_applied,
        consumer_lag: head.saturating_sub(next_cursor),
        slow_consumer_strikes: strikes,
        slow_consumer_max_strikes: cfg.slow_consumer_max_strikes,
        recommended_reconnect_backoff_ms: reconnect_hint(cfg),
    };
    match serde_json::to_string(&body) {
        Ok(text) => raw_json(text),
        Err(e) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "fanout_error", "message": e.to_string()}),
        ),
    }
}

#[derive(Deserialize)]
struct PublishEventBody {
    topic: String,
    kind: String,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
}

/// `POST /dev/events` `{"topic","kind","payload"}` → `{"sequence"}`; 422 on a bad body or a
/// name that is not a dialect-F topic.
pub(crate) async fn dev_publish_event(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let invalid = |m: String| {
        error_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"message": m, "error": {"code": "invalid_request", "message": m}}),
        )
    };
    let req: PublishEventBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return invalid(format!("invalid body: {e}")),
    };
    // A missing payload publishes the JSON value `null`.
    let raw = req
        .payload
        .map_or_else(|| "null".to_owned(), |p| p.get().to_owned());
    match shared
        .fanout
        .publish(&shared.config.fanout, &req.topic, &req.kind, raw)
    {
        Ok(sequence) => Json(json!({"sequence": sequence})).into_response(),
        Err(e) => invalid(e.to_string()),
    }
}

#[derive(Serialize)]
struct DevEvents<'a> {
    topic: &'a str,
    head_cursor: u64,
    oldest_available_cursor: u64,
    messages: Vec<&'a RawValue>,
}

/// `GET /dev/events/{topic}` → `{"topic","head_cursor","oldest_available_cursor","messages"}`
/// (retained messages, ascending); 404 for a name that is not a dialect-F topic.
pub(crate) async fn dev_events(
    State(shared): State<Arc<Shared>>,
    Path(topic): Path<String>,
) -> Response {
    if topic_kind(&topic).is_none() {
        return error_response(
            StatusCode::NOT_FOUND,
            json!({"message": "not a dialect-F topic", "error": {"code": "not_found", "message": "not a dialect-F topic"}}),
        );
    }
    let inner = shared.fanout.lock();
    let (head, oldest, messages) = match inner.logs.get(&topic) {
        Some(l) => (
            l.head,
            l.oldest,
            l.ring.iter().map(|e| &*e.message).collect(),
        ),
        None => (0, 0, Vec::new()),
    };
    let body = DevEvents {
        topic: &topic,
        head_cursor: head,
        oldest_available_cursor: oldest,
        messages,
    };
    raw_json(serde_json::to_string(&body).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert_eq!(
            topic_kind("run:abc-1.x_y:events"),
            Some(TopicKind::RunEvents)
        );
        assert_eq!(
            topic_kind("worker:w1:lifecycle"),
            Some(TopicKind::WorkerLifecycle)
        );
        assert_eq!(
            topic_kind("runtime.codex_worker_events"),
            Some(TopicKind::CodexWorkerEvents)
        );
        assert_eq!(topic_kind("run::events"), None);
        assert_eq!(topic_kind("run:a/b:events"), None);
        assert_eq!(topic_kind(&format!("run:{}:events", "a".repeat(129))), None);
        assert_eq!(topic_kind("runtime.run_summaries"), None);
        assert_eq!(
            required_scope("worker:w:lifecycle"),
            Some(CODEX_WORKER_EVENTS)
        );
    }

    fn ev(seq: u64) -> Arc<StoredEvent> {
        Arc::new(StoredEvent {
            sequence: seq,
            kind: "k".into(),
            payload: RawValue::from_string("1".into()).unwrap_or_else(|_| unreachable!()),
            published_at: String::new(),
            message: RawValue::from_string("{}".into()).unwrap_or_else(|_| unreachable!()),
        })
    }

    #[test]
    fn ring_evicts_and_pages() {
        let mut log = EventLog::default();
        for s in 1..=5 {
            log.append(ev(s), 3);
        }
        assert_eq!((log.head, log.oldest), (5, 2));
        let seqs = |v: Vec<Arc<StoredEvent>>| v.iter().map(|e| e.sequence).collect::<Vec<_>>();
        assert_eq!(seqs(log.after(0, 10)), vec![3, 4, 5]);
        assert_eq!(seqs(log.after(3, 1)), vec![4]);
        assert_eq!(seqs(log.after(9, 1)), Vec::<u64>::new());
        log.evict_through(4);
        assert_eq!((log.head, log.oldest), (5, 4));
        assert_eq!(seqs(log.after(0, 10)), vec![5]);
    }
}
