//! Dialect P: the Phoenix socket and the `sync:v1` channel (PROTOCOL.md §2, §7).
//!
//! Per socket: a reader task (this module's `Conn`, handling client frames, timers and
//! catch-up) and a writer task draining two queues — a priority queue for control pushes
//! (errors, close) and the bounded outbound queue whose overflow is a slow-consumer strike.

use crate::faults::{DropDecision, FaultFlags};
use crate::frames::{self, Outbound, StaleTopic, CHANNEL};
use crate::http::api_error;
use crate::jwt::{self, SyncClaims};
use crate::metrics::Counters;
use crate::state::{Inner, Shared, Sub, SubMode};
use crate::time::{now_unix, now_unix_ms};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

/// `GET /sync/socket/websocket`: checks `vsn` and the token before upgrading.
pub(crate) async fn ws_handler(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !shared.config.phoenix_enabled {
        return api_error(StatusCode::NOT_FOUND, "not_found", "no Phoenix socket here")
            .into_response();
    }
    if params.get("vsn").map(String::as_str) != Some("2.0.0") {
        Counters::inc(&shared.counters.connections_refused);
        return api_error(
            StatusCode::BAD_REQUEST,
            "unsupported_vsn",
            "only Phoenix serializer vsn=2.0.0 is supported",
        )
        .into_response();
    }
    let cfg = &shared.config;
    let claims = match params.get("token") {
        None => Err(jwt::TokenError::Malformed),
        Some(token) => jwt::verify(
            cfg.jwt_secret.as_bytes(),
            token,
            now_unix(),
            cfg.clock_skew_seconds,
            &cfg.issuer,
            &cfg.audience,
        ),
    };
    let claims = match claims {
        Ok(c) => c,
        Err(e) => {
            Counters::inc(&shared.counters.connections_refused);
            return api_error(StatusCode::FORBIDDEN, "forbidden", &e.to_string()).into_response();
        }
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    // Compatibility is judged at join (§2.1 join error codes), from the socket URL.
    let compat = if params
        .get("protocol_version")
        .is_some_and(|v| v != PROTOCOL_VERSION)
    {
        Some("unsupported_protocol_version")
    } else if params.get("schema_version").is_some_and(|v| v != "1") {
        Some("unsupported_schema_version")
    } else {
        None
    };
    Counters::inc(&shared.counters.connections_accepted);
    shared.counters.record_upgrade();
    upgrade.on_upgrade(move |socket| run_socket(shared, socket, claims, compat))
}

/// The only protocol version served.
const PROTOCOL_VERSION: &str = "khala.ws.v1";

async fn run_socket(
    shared: Arc<Shared>,
    socket: WebSocket,
    claims: SyncClaims,
    compat: Option<&'static str>,
) {
    Counters::inc(&shared.counters.connections_current);
    let (sink, stream) = socket.split();
    let (tx, rx) = mpsc::channel(shared.config.outbound_queue_limit.max(1));
    let (ctrl, ctrl_rx) = mpsc::unbounded_channel();
    let wake = Arc::new(Notify::new());
    let id = shared.register_session(tx.clone(), ctrl.clone(), wake.clone());
    let mut writer = tokio::spawn(write_loop(
        shared.clone(),
        sink,
        rx,
        ctrl_rx,
        shared.restart_tx.subscribe(),
    ));
    let allowed = claims
        .oa_sync_topics
        .iter()
        .filter(|t| shared.config.topic(t).is_some())
        .cloned()
        .collect();
    let mut conn = Conn {
        shared: shared.clone(),
        id,
        tx,
        ctrl,
        claims,
        allowed,
        compat,
        join_ref: None,
        subscription_id: None,
        joins: 0,
        token_expired: false,
        last_activity: Instant::now(),
        close_at: None,
    };
    conn.run(stream, &mut writer, &wake).await;
    shared.unregister_session(id);
    drop(conn);
    writer.abort();
    shared
        .counters
        .connections_current
        .fetch_sub(1, Ordering::Relaxed);
}

/// Writer task: priority queue first, then the bounded queue; applies the frame faults.
async fn write_loop(
    shared: Arc<Shared>,
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    mut ctrl_rx: mpsc::UnboundedReceiver<Outbound>,
    mut restart_rx: watch::Receiver<u64>,
) {
    let faults = &shared.faults;
    let counters = &shared.counters;
    // `reorder_next_batch`: a held batch goes out right after the socket's next frame.
    let mut held: Option<(String, usize)> = None;
    loop {
        let out = tokio::select! {
            biased;
            _ = restart_rx.changed() => return,
            Some(o) = ctrl_rx.recv() => o,
            Some(o) = rx.recv() => o,
            else => return,
        };
        match out {
            Outbound::Close { code, reason } => {
                let frame = CloseFrame {
                    code,
                    reason: reason.into(),
                };
                let _ = sink.send(Message::Close(Some(frame))).await;
                return;
            }
            Outbound::Frame {
                text,
                legacy,
                updates,
            } => {
                if updates > 0
                    && held.is_none()
                    && faults.reorder_next_batch.swap(false, Ordering::SeqCst)
                {
                    held = Some((text, updates));
                    continue;
                }
                let copies =
                    if updates > 0 && faults.duplicate_next_batch.swap(false, Ordering::SeqCst) {
                        2
                    } else {
                        1
                    };
                for _ in 0..copies {
                    for (i, t) in std::iter::once(&text).chain(legacy.iter()).enumerate() {
                        let delay = faults.delay_ms.load(Ordering::SeqCst);
                        if delay > 0 {
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                        }
                        if let DropDecision::Drop = faults.take_drop_slot() {
                            return;
                        }
                        if sink.send(Message::Text(t.clone().into())).await.is_err() {
                            return;
                        }
                        Counters::inc(&counters.frames_sent);
                        if updates > 0 && i == 0 {
                            Counters::inc(&counters.batches_sent);
                            Counters::add(&counters.updates_sent, updates as u64);
                        }
                    }
                }
                if let Some((text, updates)) = held.take() {
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                    Counters::inc(&counters.frames_sent);
                    Counters::inc(&counters.batches_sent);
                    Counters::add(&counters.updates_sent, updates as u64);
                }
            }
        }
    }
}

/// A parsed Phoenix frame `[join_ref, ref, topic, event, payload]`.
struct Frame {
    join_ref: Option<String>,
    reference: Option<String>,
    topic: String,
    event: String,
    payload: Value,
}

fn parse_ref(v: &Value) -> Result<Option<String>, ()> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        _ => Err(()),
    }
}

fn parse_frame(text: &str) -> Result<Frame, ()> {
    let Ok(Value::Array(mut a)) = serde_json::from_str::<Value>(text) else {
        return Err(());
    };
    if a.len() != 5 {
        return Err(());
    }
    let payload = a.pop().unwrap_or(Value::Null);
    let (Value::String(topic), Value::String(event)) = (&a[2], &a[3]) else {
        return Err(());
    };
    Ok(Frame {
        join_ref: parse_ref(&a[0])?,
        reference: parse_ref(&a[1])?,
        topic: topic.clone(),
        event: event.clone(),
        payload,
    })
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Why the reader stops.
struct CloseWith {
    code: u16,
    reason: &'static str,
    push: Option<Outbound>,
}

struct Conn {
    shared: Arc<Shared>,
    id: u64,
    tx: mpsc::Sender<Outbound>,
    ctrl: mpsc::UnboundedSender<Outbound>,
    claims: SyncClaims,
    allowed: Vec<String>,
    /// A compat error code every join answers (bad `protocol_version`/`schema_version`).
    compat: Option<&'static str>,
    join_ref: Option<String>,
    subscription_id: Option<String>,
    joins: u64,
    token_expired: bool,
    last_activity: Instant,
    close_at: Option<Instant>,
}

impl Conn {
    async fn run(
        &mut self,
        mut stream: SplitStream<WebSocket>,
        writer: &mut JoinHandle<()>,
        wake: &Notify,
    ) {
        let cfg = self.shared.config.clone();
        let exp_ms = u128::try_from(self.claims.exp.max(0)).unwrap_or(0) * 1000;
        let exp_delay = exp_ms.saturating_sub(now_unix_ms());
        let exp_at = Instant::now()
            + Duration::from_millis(
                u64::try_from(exp_delay)
                    .unwrap_or(u64::MAX / 4)
                    .min(u64::MAX / 4),
            );
        let mut expire_rx = self.shared.expire_tx.subscribe();
        let hb = cfg.heartbeat_interval.max(Duration::from_millis(10));
        let mut heartbeat = tokio::time::interval_at(Instant::now() + hb, hb);
        let close = loop {
            let idle_at = self.last_activity + cfg.idle_timeout;
            let token_at = (!self.token_expired).then_some(exp_at);
            tokio::select! {
                biased;
                _ = &mut *writer => return,
                _ = expire_rx.changed() => self.expire_token(),
                _ = sleep_opt(token_at) => self.expire_token(),
                _ = sleep_opt(self.close_at) => break CloseWith {
                    code: 1000, reason: "reauth_required", push: None,
                },
                _ = sleep_until(idle_at) => break CloseWith {
                    code: 1000,
                    reason: "idle_timeout",
                    push: self.join_ref.as_ref().map(|j| Outbound::text(frames::push_text(Some(j), "phx_close", "{}"))),
                },
                msg = stream.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        if let Err(close) = self.handle_text(text.as_str()).await {
                            break close;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => break CloseWith {
                        code: 1003, reason: "binary frames are not supported", push: None,
                    },
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                },
                _ = wake.notified() => self.catch_up_lagging().await,
                _ = heartbeat.tick() => self.push_heartbeat(),
            }
        };
        if let Some(push) = close.push {
            let _ = self.ctrl.send(push);
        }
        let _ = self.ctrl.send(Outbound::Close {
            code: close.code,
            reason: close.reason,
        });
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut *writer).await;
    }

    fn touch(&mut self) {
        self.last_activity = Instant::now();
    }

    fn expire_token(&mut self) {
        if self.token_expired {
            return;
        }
        self.token_expired = true;
        Counters::inc(&self.shared.counters.reauth_pushes);
        if self.join_ref.is_some() {
            let _ = self.ctrl.send(frames::error_outbound(
                self.join_ref.as_deref(),
                CHANNEL,
                &reauth_body(),
                self.shared.legacy(),
            ));
        }
        self.close_at = Some(Instant::now() + self.shared.config.reauth_close_delay);
    }

    fn watermarks(&self) -> Vec<Value> {
        let inner = self.shared.lock();
        inner
            .sessions
            .get(&self.id)
            .map(|s| {
                s.subs
                    .iter()
                    .map(|(t, sub)| json!({"topic": t, "watermark": sub.sent_upto}))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn push_heartbeat(&mut self) {
        if self.join_ref.is_none() {
            return;
        }
        let body = json!({"watermarks": self.watermarks()}).to_string();
        let text = frames::push_text(self.join_ref.as_deref(), "sync:heartbeat", &body);
        // Heartbeats are best effort: a full queue skips one (not a strike).
        let _ = self.tx.try_send(Outbound::text(text));
    }

    async fn reply(&self, frame: &Frame, ok: bool, response: Value) {
        let text = frames::reply_text(
            frame.join_ref.as_deref(),
            frame.reference.as_deref(),
            &frame.topic,
            ok,
            &response,
        );
        let _ = self.tx.send(Outbound::text(text)).await;
    }

    async fn handle_text(&mut self, text: &str) -> Result<(), CloseWith> {
        let Ok(frame) = parse_frame(text) else {
            return Err(CloseWith {
                code: 1007,
                reason: "malformed frame: expected [join_ref, ref, topic, event, payload]",
                push: None,
            });
        };
        match (frame.topic.as_str(), frame.event.as_str()) {
            ("phoenix", "heartbeat") => {
                self.touch();
                Counters::inc(&self.shared.counters.heartbeats_received);
                self.reply(&frame, true, json!({})).await;
            }
            (CHANNEL, "phx_join") => self.join(&frame).await,
            (CHANNEL, _) if self.join_ref.is_none() => {
                self.reply(&frame, false, json!({"reason": "unmatched topic"}))
                    .await;
            }
            (CHANNEL, "sync:subscribe") => self.subscribe(&frame).await,
            (CHANNEL, "sync:unsubscribe") => self.unsubscribe(&frame).await,
            (CHANNEL, "sync:heartbeat") => {
                self.touch();
                Counters::inc(&self.shared.counters.heartbeats_received);
                let body = json!({
                    "subscription_id": self.subscription_id,
                    "watermarks": self.watermarks(),
                });
                self.reply(&frame, true, body).await;
            }
            (CHANNEL, "phx_leave") => {
                self.set_session(|s| s.subs.clear());
                self.reply(&frame, true, json!({})).await;
                let close = frames::push_text(self.join_ref.as_deref(), "phx_close", "{}");
                let _ = self.tx.send(Outbound::text(close)).await;
                self.join_ref = None;
                self.set_session(|s| s.join_ref = None);
            }
            (CHANNEL, event) => {
                let msg = format!("unknown event {event:?} on sync:v1");
                self.reply(&frame, false, frames::error_body("unknown_event", &msg))
                    .await;
            }
            (_, "phx_join") => {
                let body = frames::error_body("bad_topic", "only the sync:v1 channel exists");
                self.reply(&frame, false, body).await;
            }
            _ => {
                self.reply(&frame, false, json!({"reason": "unmatched topic"}))
                    .await;
            }
        }
        Ok(())
    }

    fn set_session(&self, f: impl FnOnce(&mut crate::state::Session)) {
        if let Some(s) = self.shared.lock().sessions.get_mut(&self.id) {
            f(s);
        }
    }

    async fn join(&mut self, frame: &Frame) {
        self.touch();
        let cfg = &self.shared.config;
        let forced =
            FaultFlags::get(&self.shared.faults.upgrade_required).then_some("upgrade_required");
        if let Some(code) = forced.or(self.compat) {
            let message = match code {
                "unsupported_protocol_version" => {
                    "protocol version not supported; upgrade required"
                }
                "unsupported_schema_version" => "schema version not supported; upgrade required",
                _ => "client build is no longer supported; upgrade required",
            };
            let body = json!({
                "code": code,
                "message": message,
                "retryable": false,
                "upgrade_required": true,
                "min_client_build_id": cfg.min_client_build_id,
                "max_client_build_id": null,
                "min_schema_version": 1,
                "max_schema_version": 1,
                "protocol_version": PROTOCOL_VERSION,
            });
            self.reply(frame, false, body).await;
            return;
        }
        if self.token_expired || now_unix() >= self.claims.exp {
            self.reply(frame, false, reauth_body()).await;
            return;
        }
        self.joins += 1;
        let join_ref = frame.join_ref.clone().or_else(|| frame.reference.clone());
        let sub_id = format!("sub_{}_{}", self.id, self.joins);
        self.join_ref = join_ref.clone();
        self.subscription_id = Some(sub_id.clone());
        let current: Vec<Value> = {
            let mut inner = self.shared.lock();
            if let Some(s) = inner.sessions.get_mut(&self.id) {
                s.join_ref = join_ref;
                s.subs.clear();
            }
            self.allowed
                .iter()
                .map(|t| {
                    let head = inner.logs.get(t).map_or(0, |l| l.head());
                    json!({"topic": t, "watermark": head})
                })
                .collect()
        };
        Counters::inc(&self.shared.counters.joins);
        let body = json!({
            "subscription_id": sub_id,
            "allowed_topics": self.allowed,
            "current_watermarks": current,
        });
        self.reply(frame, true, body).await;
    }

    async fn bad_subscription(&self, frame: &Frame, message: &str) {
        self.reply(
            frame,
            false,
            frames::error_body("bad_subscription", message),
        )
        .await;
    }

    async fn subscribe(&mut self, frame: &Frame) {
        self.touch();
        let Value::Object(p) = &frame.payload else {
            return self
                .bad_subscription(frame, "payload must be an object")
                .await;
        };
        // 1. topics: non-empty list of strings.
        let Some(topics) = string_list(p.get("topics")) else {
            return self
                .bad_subscription(frame, "topics must be a non-empty list of strings")
                .await;
        };
        // 2./3. known and allowed (unknown topics are reported as forbidden).
        let forbidden: Vec<&String> = topics
            .iter()
            .filter(|t| self.shared.config.topic(t).is_none() || !self.allowed.contains(t))
            .collect();
        if !forbidden.is_empty() {
            let body = json!({
                "code": "forbidden_topic",
                "message": "topics not allowed for this token",
                "forbidden_topics": forbidden,
            });
            return self.reply(frame, false, body).await;
        }
        // 4. resume_after well-formed.
        let Some(resume) = parse_resume_after(p.get("resume_after")) else {
            return self
                .bad_subscription(
                    frame,
                    "resume_after must be a map {topic: n} or a list [{topic, watermark}] of non-negative integers",
                )
                .await;
        };
        let cfg = &self.shared.config;
        let batch_size = match p.get("replay_batch_size") {
            None | Some(Value::Null) => cfg.default_replay_batch_size,
            Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
                (Some(v), _) => usize::try_from(v).unwrap_or(1000),
                (None, Some(_)) => 1,
                _ => {
                    return self
                        .bad_subscription(frame, "replay_batch_size must be an integer")
                        .await
                }
            },
            Some(_) => {
                return self
                    .bad_subscription(frame, "replay_batch_size must be an integer")
                    .await
            }
        }
        .clamp(1, 1000);
        let counters = &self.shared.counters;
        Counters::inc(&counters.subscribes);
        if topics.iter().any(|t| resume.contains_key(t)) {
            Counters::inc(&counters.subscribes_with_resume);
        } else {
            Counters::inc(&counters.subscribes_without_resume);
        }
        // 5. freshness, then register every topic as replaying (atomically with the check).
        let stale = {
            let mut guard = self.shared.lock();
            let Inner {
                logs,
                sessions,
                force_stale,
                stats,
                ..
            } = &mut *guard;
            let mut stale = Vec::new();
            for t in &topics {
                let (Some(&r), Some(spec), Some(log)) = (resume.get(t), cfg.topic(t), logs.get(t))
                else {
                    continue;
                };
                let (floor, head) = (log.floor(), log.head());
                let reason = if let Some(forced) = force_stale.remove(t) {
                    Some(match forced.as_str() {
                        frames::REPLAY_BUDGET_EXCEEDED => frames::REPLAY_BUDGET_EXCEEDED,
                        frames::CURSOR_AHEAD_OF_HEAD => frames::CURSOR_AHEAD_OF_HEAD,
                        _ => frames::RETENTION_FLOOR_BREACH,
                    })
                } else if r < floor {
                    Some(frames::RETENTION_FLOOR_BREACH)
                } else if r > head {
                    Some(frames::CURSOR_AHEAD_OF_HEAD)
                } else if head - r > spec.replay_budget_events {
                    Some(frames::REPLAY_BUDGET_EXCEEDED)
                } else {
                    None
                };
                if let Some(reason) = reason {
                    stats.entry(t.clone()).or_default().stale += 1;
                    stale.push(StaleTopic {
                        topic: t.clone(),
                        reason,
                        qos_tier: spec.qos_tier.clone(),
                        resume_after: r,
                        retention_floor: floor,
                        head_watermark: head,
                        replay_budget_events: spec.replay_budget_events,
                    });
                }
            }
            if stale.is_empty() {
                if let Some(s) = sessions.get_mut(&self.id) {
                    for t in &topics {
                        s.subs.insert(
                            t.clone(),
                            Sub {
                                sent_upto: resume.get(t).copied().unwrap_or(0),
                                mode: SubMode::Replaying,
                                batch_size,
                            },
                        );
                    }
                }
            }
            stale
        };
        if !stale.is_empty() {
            return self.reply(frame, false, frames::stale_body(&stale)).await;
        }
        // Replay topic by topic in request order, then the ok reply.
        for t in &topics {
            self.catch_up(t).await;
        }
        let current: Vec<Value> = {
            let inner = self.shared.lock();
            topics
                .iter()
                .map(
                    |t| json!({"topic": t, "watermark": inner.logs.get(t).map_or(0, |l| l.head())}),
                )
                .collect()
        };
        let body = json!({
            "subscription_id": self.subscription_id,
            "topics": topics,
            "current_watermarks": current,
        });
        self.reply(frame, true, body).await;
    }

    async fn unsubscribe(&mut self, frame: &Frame) {
        self.touch();
        Counters::inc(&self.shared.counters.unsubscribes);
        let topics = match &frame.payload {
            Value::Object(p) => string_list(p.get("topics")),
            _ => None,
        };
        let Some(topics) = topics else {
            return self
                .bad_subscription(frame, "topics must be a non-empty list of strings")
                .await;
        };
        let mut remaining = Vec::new();
        self.set_session(|s| {
            for t in &topics {
                s.subs.remove(t);
            }
            remaining = s.subs.keys().cloned().collect();
        });
        let body = json!({"subscription_id": self.subscription_id, "topics": remaining});
        self.reply(frame, true, body).await;
    }

    async fn catch_up_lagging(&mut self) {
        let lagging: Vec<String> = {
            let inner = self.shared.lock();
            inner
                .sessions
                .get(&self.id)
                .map(|s| {
                    s.subs
                        .iter()
                        .filter(|(_, sub)| sub.mode == SubMode::Lagging)
                        .map(|(t, _)| t.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        for t in lagging {
            self.catch_up(&t).await;
        }
    }

    /// Pulls `(sent_upto, head]` from the log page by page until the topic is live. Pages
    /// are awaited into the queue (backpressure, not strikes); the transition to `Live` happens
    /// under the lock at head, so live pushes never overtake replay pages.
    async fn catch_up(&mut self, topic: &str) {
        let threshold = self.shared.config.hydration_threshold_bytes;
        loop {
            let legacy = self.shared.legacy();
            let out = {
                let mut guard = self.shared.lock();
                let Inner {
                    logs,
                    sessions,
                    stats,
                    ..
                } = &mut *guard;
                let Some(s) = sessions.get_mut(&self.id) else {
                    return;
                };
                let join_ref = s.join_ref.clone();
                let (Some(sub), Some(log)) = (s.subs.get_mut(topic), logs.get(topic)) else {
                    return;
                };
                if sub.mode == SubMode::Live {
                    return;
                }
                let floor = log.floor();
                if sub.sent_upto < floor {
                    if sub.mode == SubMode::Replaying {
                        // Fresh subscribe (no resume_after, or retention moved meanwhile):
                        // deliver the retained window.
                        sub.sent_upto = floor;
                    } else {
                        // A lagging socket overtaken by retention (§7): push stale, drop topic.
                        let resume_after = sub.sent_upto;
                        s.subs.remove(topic);
                        stats.entry(topic.to_owned()).or_default().stale += 1;
                        let spec = self.shared.config.topic(topic);
                        let stale = StaleTopic {
                            topic: topic.to_owned(),
                            reason: frames::RETENTION_FLOOR_BREACH,
                            qos_tier: spec.map(|s| s.qos_tier.clone()).unwrap_or_default(),
                            resume_after,
                            retention_floor: floor,
                            head_watermark: log.head(),
                            replay_budget_events: spec.map_or(0, |s| s.replay_budget_events),
                        };
                        let body = frames::stale_body(&[stale]);
                        let _ = self.ctrl.send(frames::error_outbound(
                            join_ref.as_deref(),
                            topic,
                            &body,
                            legacy,
                        ));
                        return;
                    }
                }
                let entries = log.range_after(sub.sent_upto, sub.batch_size);
                let Some(last) = entries.last() else {
                    sub.mode = SubMode::Live;
                    return;
                };
                sub.sent_upto = last.watermark;
                frames::batch_outbound(
                    join_ref.as_deref(),
                    topic,
                    &entries,
                    log.head(),
                    threshold,
                    legacy,
                )
            };
            if self.tx.send(out).await.is_err() {
                return;
            }
        }
    }
}

fn reauth_body() -> Value {
    json!({
        "code": "reauth_required",
        "message": "sync token expired; fetch a new token and reconnect",
        "reauth_required": true,
        "reason": "token_expired",
    })
}

/// A non-empty list of strings, deduplicated in order.
fn string_list(v: Option<&Value>) -> Option<Vec<String>> {
    let Some(Value::Array(items)) = v else {
        return None;
    };
    if items.is_empty() {
        return None;
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(s) = item else {
            return None;
        };
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    Some(out)
}

/// `resume_after` as a map `{topic: n}` or a list `[{"topic", "watermark"}]`; absent → empty.
fn parse_resume_after(v: Option<&Value>) -> Option<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (topic, n) in map {
                out.insert(topic.clone(), n.as_u64()?);
            }
        }
        Some(Value::Array(items)) => {
            for item in items {
                let Value::Object(entry): &Value = item else {
                    return None;
                };
                let entry: &Map<String, Value> = entry;
                let topic = entry.get("topic")?.as_str()?;
                let wm = entry.get("watermark")?.as_u64()?;
                out.insert(topic.to_owned(), wm);
            }
        }
        Some(_) => return None,
    }
    Some(out)
}
