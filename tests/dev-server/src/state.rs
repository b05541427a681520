//! Shared server state: topic logs, open sessions, fan-out (PROTOCOL.md §2.3, §2.4).
//!
//! One `std::sync::Mutex` guards logs and sessions together, so a publish appends and fans
//! out atomically: a session sees either the entry in its replay or as a live push, never
//! both out of order. Nothing awaits while holding it.

use crate::canonical::payload_hash_of_raw;
use crate::config::DevServerConfig;
use crate::faults::{FaultFlags, ForceStale};
use crate::frames::{self, Outbound, StaleTopic};
use crate::log::{Entry, TopicLog};
use crate::metrics::{Counters, MetricsSnapshot, TopicMetrics};
use serde_json::json;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch, Notify};

/// Logs of every topic: what survives a server restart (see `DevServer::start_with_state`).
#[derive(Debug, Clone, Default)]
pub struct ServerState {
    pub(crate) logs: BTreeMap<String, TopicLog>,
    /// Dialect-F event logs.
    pub(crate) events: BTreeMap<String, crate::fanout::EventLog>,
}

/// Where a subscribed topic stands on one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubMode {
    /// Subscribe replay in progress (socket task pulls from the log; no strikes).
    Replaying,
    /// At head: live publishes go straight into the queue.
    Live,
    /// A live update found the queue full; the socket task catches up from the log.
    Lagging,
}

#[derive(Debug, Clone)]
pub(crate) struct Sub {
    pub(crate) sent_upto: u64,
    pub(crate) mode: SubMode,
    pub(crate) batch_size: usize,
}

/// One open socket.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) tx: mpsc::Sender<Outbound>,
    pub(crate) ctrl: mpsc::UnboundedSender<Outbound>,
    pub(crate) wake: Arc<Notify>,
    pub(crate) join_ref: Option<String>,
    pub(crate) subs: BTreeMap<String, Sub>,
    pub(crate) strikes: u32,
    pub(crate) evicted: bool,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct TopicStats {
    pub(crate) strikes: u64,
    pub(crate) evictions: u64,
    pub(crate) stale: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub(crate) logs: BTreeMap<String, TopicLog>,
    pub(crate) sessions: HashMap<u64, Session>,
    pub(crate) next_session: u64,
    /// Pending `force_stale`: topic → reason.
    pub(crate) force_stale: BTreeMap<String, String>,
    pub(crate) stats: BTreeMap<String, TopicStats>,
}

/// A publish request item.
#[derive(Debug, Clone)]
pub struct PublishItem {
    /// Topic.
    pub topic: String,
    /// Document key.
    pub doc_key: String,
    /// Raw JSON payload; `None` publishes a tombstone.
    pub payload: Option<Arc<RawValue>>,
}

/// What a publish assigned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Published {
    /// Topic.
    pub topic: String,
    /// Document key.
    pub doc_key: String,
    /// Assigned watermark.
    pub watermark: u64,
    /// Assigned doc version.
    pub doc_version: u64,
}

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The topic is not served.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// Empty doc key.
    #[error("doc_key must not be empty")]
    EmptyDocKey,
    /// The payload is not JSON.
    #[error("payload is not valid JSON: {0}")]
    InvalidJson(String),
}

pub(crate) struct Shared {
    pub(crate) config: DevServerConfig,
    pub(crate) inner: Mutex<Inner>,
    pub(crate) faults: FaultFlags,
    pub(crate) counters: Counters,
    pub(crate) restart_tx: watch::Sender<u64>,
    pub(crate) expire_tx: watch::Sender<u64>,
    pub(crate) fanout: crate::fanout::FanoutState,
}

impl Shared {
    pub(crate) fn new(config: DevServerConfig, state: ServerState) -> Self {
        let fanout = crate::fanout::FanoutState::new(state.events);
        let mut logs = state.logs;
        for t in &config.topics {
            logs.entry(t.name.clone()).or_default();
        }
        Self {
            config,
            inner: Mutex::new(Inner {
                logs,
                ..Inner::default()
            }),
            faults: FaultFlags::default(),
            counters: Counters::default(),
            restart_tx: watch::channel(0).0,
            expire_tx: watch::channel(0).0,
            fanout,
        }
    }

    /// Locks the state; a poisoned lock (a panic elsewhere) is recovered, not propagated.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn legacy(&self) -> bool {
        FaultFlags::get(&self.faults.legacy_sync_frame)
    }

    pub(crate) fn register_session(
        &self,
        tx: mpsc::Sender<Outbound>,
        ctrl: mpsc::UnboundedSender<Outbound>,
        wake: Arc<Notify>,
    ) -> u64 {
        let mut inner = self.lock();
        inner.next_session += 1;
        let id = inner.next_session;
        inner.sessions.insert(
            id,
            Session {
                tx,
                ctrl,
                wake,
                join_ref: None,
                subs: BTreeMap::new(),
                strikes: 0,
                evicted: false,
            },
        );
        id
    }

    pub(crate) fn unregister_session(&self, id: u64) {
        self.lock().sessions.remove(&id);
    }

    /// Appends every item (validated first, all or nothing) and fans each out.
    pub(crate) fn publish(&self, items: Vec<PublishItem>) -> Result<Vec<Published>, PublishError> {
        let mut prepared = Vec::with_capacity(items.len());
        for item in items {
            if self.config.topic(&item.topic).is_none() {
                return Err(PublishError::UnknownTopic(item.topic));
            }
            if item.doc_key.is_empty() {
                return Err(PublishError::EmptyDocKey);
            }
            let hash = match &item.payload {
                Some(raw) => Some(
                    payload_hash_of_raw(raw.get())
                        .map_err(|e| PublishError::InvalidJson(e.to_string()))?,
                ),
                None => None,
            };
            prepared.push((item, hash));
        }
        let legacy = self.legacy();
        let mut inner = self.lock();
        let mut out = Vec::with_capacity(prepared.len());
        for (item, hash) in prepared {
            let Inner {
                logs,
                sessions,
                stats,
                ..
            } = &mut *inner;
            let Some(log) = logs.get_mut(&item.topic) else {
                continue;
            };
            let entry = log.append(
                &item.doc_key,
                item.payload,
                hash,
                self.config.max_retained_per_topic,
            );
            Counters::inc(&self.counters.publishes);
            out.push(Published {
                topic: item.topic.clone(),
                doc_key: item.doc_key,
                watermark: entry.watermark,
                doc_version: entry.doc_version,
            });
            let stat = stats.entry(item.topic.clone()).or_default();
            self.fan_out(sessions, stat, &item.topic, &entry, legacy);
        }
        Ok(out)
    }

    fn fan_out(
        &self,
        sessions: &mut HashMap<u64, Session>,
        stat: &mut TopicStats,
        topic: &str,
        entry: &Arc<Entry>,
        legacy: bool,
    ) {
        let wm = entry.watermark;
        let mut payload: Option<String> = None;
        for s in sessions.values_mut() {
            let Some(sub) = s.subs.get_mut(topic) else {
                continue;
            };
            match sub.mode {
                SubMode::Replaying => {}
                SubMode::Live if sub.sent_upto >= wm => {}
                SubMode::Live if sub.sent_upto + 1 == wm => {
                    let body = payload.get_or_insert_with(|| {
                        frames::batch_payload(
                            topic,
                            std::slice::from_ref(entry),
                            wm,
                            self.config.hydration_threshold_bytes,
                        )
                    });
                    let out = frames::batch_outbound_with_payload(
                        s.join_ref.as_deref(),
                        topic,
                        wm,
                        body,
                        1,
                        legacy,
                    );
                    match s.tx.try_send(out) {
                        Ok(()) => sub.sent_upto = wm,
                        Err(TrySendError::Full(_)) => {
                            sub.mode = SubMode::Lagging;
                            s.wake.notify_one();
                            self.strike(s, stat, topic, legacy);
                        }
                        Err(TrySendError::Closed(_)) => {}
                    }
                }
                SubMode::Live => {
                    sub.mode = SubMode::Lagging;
                    s.wake.notify_one();
                }
                SubMode::Lagging => {
                    s.wake.notify_one();
                    if s.tx.capacity() == 0 {
                        self.strike(s, stat, topic, legacy);
                    }
                }
            }
        }
    }

    /// A live update found the queue full (PROTOCOL.md §2.4 `slow_consumer`, §2.5 flow control).
    fn strike(&self, s: &mut Session, stat: &mut TopicStats, topic: &str, legacy: bool) {
        if s.evicted {
            return;
        }
        s.strikes += 1;
        stat.strikes += 1;
        let limit = self.config.outbound_queue_limit.max(1);
        let depth = limit - s.tx.capacity().min(limit) + 1;
        let disconnect = s.strikes >= self.config.slow_consumer_max_strikes.max(1);
        let body = json!({
            "code": "slow_consumer",
            "message": "client cannot keep up with live fanout",
            "action": if disconnect { "disconnect" } else { "throttle" },
            "topic": topic,
            "queue_depth": depth,
            "queue_limit": limit,
            "strikes": s.strikes,
            "max_strikes": self.config.slow_consumer_max_strikes,
            "reconnect_after_ms": self.config.reconnect_after_ms,
            "full_resync_required": false,
        });
        let _ = s.ctrl.send(frames::error_outbound(
            s.join_ref.as_deref(),
            topic,
            &body,
            legacy,
        ));
        if disconnect {
            s.evicted = true;
            stat.evictions += 1;
            let _ = s.ctrl.send(Outbound::Close {
                code: 1013,
                reason: "slow_consumer",
            });
        }
    }

    /// Applies a `force_stale` fault: pending (next resumed subscribe is stale) or pushed now.
    pub(crate) fn force_stale(&self, f: &ForceStale) {
        let reason = match f.reason.as_deref() {
            Some(frames::REPLAY_BUDGET_EXCEEDED) => frames::REPLAY_BUDGET_EXCEEDED,
            Some(frames::CURSOR_AHEAD_OF_HEAD) => frames::CURSOR_AHEAD_OF_HEAD,
            _ => frames::RETENTION_FLOOR_BREACH,
        };
        let legacy = self.legacy();
        let Some(spec) = self.config.topic(&f.topic) else {
            return;
        };
        let mut inner = self.lock();
        if !f.push {
            inner.force_stale.insert(f.topic.clone(), reason.to_owned());
            return;
        }
        let Inner {
            logs,
            sessions,
            stats,
            ..
        } = &mut *inner;
        let (floor, head) = logs.get(&f.topic).map_or((0, 0), |l| (l.floor(), l.head()));
        for s in sessions.values_mut() {
            if let Some(sub) = s.subs.remove(&f.topic) {
                stats.entry(f.topic.clone()).or_default().stale += 1;
                let stale = StaleTopic {
                    topic: f.topic.clone(),
                    reason,
                    qos_tier: spec.qos_tier.clone(),
                    resume_after: sub.sent_upto,
                    retention_floor: floor,
                    head_watermark: head,
                    replay_budget_events: spec.replay_budget_events,
                };
                let _ = s.ctrl.send(frames::error_outbound(
                    s.join_ref.as_deref(),
                    &f.topic,
                    &frames::stale_body(&[stale]),
                    legacy,
                ));
            }
        }
    }

    pub(crate) fn metrics(&self, topic_limit: usize) -> MetricsSnapshot {
        let inner = self.lock();
        let limit = self.config.outbound_queue_limit.max(1);
        let mut topics = Vec::new();
        for (name, log) in inner.logs.iter().take(topic_limit) {
            let stat = inner.stats.get(name).cloned().unwrap_or_default();
            let mut subscribers = 0;
            let mut depth = 0;
            for s in inner.sessions.values() {
                if s.subs.contains_key(name) {
                    subscribers += 1;
                    depth = depth.max(limit - s.tx.capacity().min(limit));
                }
            }
            topics.push(TopicMetrics {
                topic: name.clone(),
                head_watermark: log.head(),
                retention_floor: log.floor(),
                retained_entries: log.retained() as u64,
                subscribers,
                queue_depth: depth as u64,
                slow_consumer_strikes: stat.strikes,
                slow_consumer_evictions: stat.evictions,
                stale_cursor_count: stat.stale,
            });
        }
        let sum = |f: fn(&TopicStats) -> u64| inner.stats.values().map(f).sum::<u64>();
        let c = &self.counters;
        MetricsSnapshot {
            topics,
            connections_accepted_total: Counters::get(&c.connections_accepted),
            connections_current: Counters::get(&c.connections_current),
            connections_refused_total: Counters::get(&c.connections_refused),
            joins: Counters::get(&c.joins),
            subscribes: Counters::get(&c.subscribes),
            subscribes_with_resume: Counters::get(&c.subscribes_with_resume),
            subscribes_without_resume: Counters::get(&c.subscribes_without_resume),
            unsubscribes: Counters::get(&c.unsubscribes),
            snapshots_started: Counters::get(&c.snapshots_started),
            snapshot_pages_served: Counters::get(&c.snapshot_pages_served),
            doc_fetches: Counters::get(&c.doc_fetches),
            tokens_minted: Counters::get(&c.tokens_minted),
            batches_sent: Counters::get(&c.batches_sent),
            updates_sent: Counters::get(&c.updates_sent),
            frames_sent: Counters::get(&c.frames_sent),
            heartbeats_received: Counters::get(&c.heartbeats_received),
            reauth_pushes: Counters::get(&c.reauth_pushes),
            publishes: Counters::get(&c.publishes),
            slow_consumer_strikes: sum(|s| s.strikes),
            slow_consumer_evictions: sum(|s| s.evictions),
            stale_cursor_total: sum(|s| s.stale),
            ..self.fanout.metrics(topic_limit)
        }
    }
}
