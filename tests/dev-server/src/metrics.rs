//! Counters for `GET /internal/v1/khala/fanout/metrics` (PROTOCOL.md §5) and tests.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// Global counters (lock-free).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_current: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) joins: AtomicU64,
    pub(crate) subscribes: AtomicU64,
    pub(crate) subscribes_with_resume: AtomicU64,
    pub(crate) subscribes_without_resume: AtomicU64,
    pub(crate) unsubscribes: AtomicU64,
    pub(crate) snapshots_started: AtomicU64,
    pub(crate) snapshot_pages_served: AtomicU64,
    pub(crate) doc_fetches: AtomicU64,
    pub(crate) tokens_minted: AtomicU64,
    pub(crate) batches_sent: AtomicU64,
    pub(crate) updates_sent: AtomicU64,
    pub(crate) frames_sent: AtomicU64,
    pub(crate) heartbeats_received: AtomicU64,
    pub(crate) reauth_pushes: AtomicU64,
    pub(crate) publishes: AtomicU64,
    /// When each WebSocket upgrade was accepted (the newest 100k): what a reconnect storm
    /// looks like from the server.
    pub(crate) upgrade_times: std::sync::Mutex<std::collections::VecDeque<std::time::Instant>>,
}

impl Counters {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn record_upgrade(&self) {
        if let Ok(mut q) = self.upgrade_times.lock() {
            if q.len() >= 100_000 {
                q.pop_front();
            }
            q.push_back(std::time::Instant::now());
        }
    }

    pub(crate) fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Per-topic fan-out metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMetrics {
    /// Topic name.
    pub topic: String,
    /// Head watermark.
    pub head_watermark: u64,
    /// Retention floor (`max(min retained - 1, 0)`).
    pub retention_floor: u64,
    /// Retained log entries.
    pub retained_entries: u64,
    /// Sockets subscribed to the topic.
    pub subscribers: u64,
    /// Largest outbound queue depth (frames) among its subscribers.
    pub queue_depth: u64,
    /// Slow-consumer strikes counted on this topic.
    pub slow_consumer_strikes: u64,
    /// Sockets evicted (`disconnect`) while lagging on this topic.
    pub slow_consumer_evictions: u64,
    /// `stale_cursor` reports (replies and pushes) naming this topic.
    pub stale_cursor_count: u64,
}

/// Everything `GET /internal/v1/khala/fanout/metrics` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Per-topic metrics (sorted by topic; limited by `topic_limit` on the route).
    pub topics: Vec<TopicMetrics>,
    /// WebSocket upgrades accepted since start.
    pub connections_accepted_total: u64,
    /// Sockets open now.
    pub connections_current: u64,
    /// Upgrades refused (bad token / vsn).
    pub connections_refused_total: u64,
    /// `phx_join` ok replies.
    pub joins: u64,
    /// `sync:subscribe` requests that passed validation (ok or stale).
    pub subscribes: u64,
    /// … of which carried a `resume_after` entry for at least one requested topic.
    pub subscribes_with_resume: u64,
    /// … of which carried none.
    pub subscribes_without_resume: u64,
    /// `sync:unsubscribe` requests.
    pub unsubscribes: u64,
    /// Snapshot first pages served (requests without cursor).
    pub snapshots_started: u64,
    /// Snapshot pages served (all).
    pub snapshot_pages_served: u64,
    /// Doc route hits (200).
    pub doc_fetches: u64,
    /// Tokens minted by the token route.
    pub tokens_minted: u64,
    /// `sync:update_batch` frames written (duplicates included).
    pub batches_sent: u64,
    /// Updates inside those batches.
    pub updates_sent: u64,
    /// All frames written.
    pub frames_sent: u64,
    /// Client `sync:heartbeat` and Phoenix heartbeats.
    pub heartbeats_received: u64,
    /// `reauth_required` pushes.
    pub reauth_pushes: u64,
    /// Updates published.
    pub publishes: u64,
    /// Total slow-consumer strikes.
    pub slow_consumer_strikes: u64,
    /// Total slow-consumer evictions.
    pub slow_consumer_evictions: u64,
    /// Total stale-cursor topic reports.
    pub stale_cursor_total: u64,
    /// Dialect F: WebSocket upgrades accepted (101).
    #[serde(default)]
    pub fanout_ws_upgrades: u64,
    /// Dialect F: poll requests (every answer, errors included).
    #[serde(default)]
    pub fanout_polls: u64,
    /// Dialect F: polls answered 429.
    #[serde(default)]
    pub fanout_rate_limited: u64,
    /// Dialect F: slow-consumer evictions (WS `error` frames and poll 409s).
    #[serde(default)]
    pub fanout_evictions: u64,
    /// Dialect F: stale cursors (WS `stale_cursor` frames and poll 410s).
    #[serde(default)]
    pub fanout_stale: u64,
    /// Dialect F: requests answered 401.
    #[serde(default)]
    pub fanout_unauthorized: u64,
    /// Dialect F: messages delivered (WS message frames plus messages in poll pages).
    #[serde(default)]
    pub fanout_messages_sent: u64,
    /// Dialect F: per event topic (sorted by topic; limited by `topic_limit` on the route).
    #[serde(default)]
    pub fanout_topics: Vec<FanoutTopicMetrics>,
}

/// Per-topic metrics of a dialect-F event log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanoutTopicMetrics {
    /// Topic name.
    pub topic: String,
    /// Last sequence (0 if none).
    pub head_cursor: u64,
    /// First retained sequence − 1.
    pub oldest_available_cursor: u64,
    /// Messages retained.
    pub retained: u64,
    /// WebSockets open on the topic.
    pub subscribers: u64,
}
