//! Server configuration.

use std::time::Duration;

/// One topic of the deployment (PROTOCOL.md §2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name; also the scope that grants it.
    pub name: String,
    /// `hot` / `warm` / `cold`.
    pub qos_tier: String,
    /// Replay budget: `head - resume_after` above this is `replay_budget_exceeded`.
    pub replay_budget_events: u64,
    /// Prefix the seeded generator uses for doc keys (`runtime/run_summary:`).
    pub doc_key_prefix: String,
}

impl TopicSpec {
    fn new(name: &str, qos: &str, budget: u64, prefix: &str) -> Self {
        Self {
            name: name.into(),
            qos_tier: qos.into(),
            replay_budget_events: budget,
            doc_key_prefix: prefix.into(),
        }
    }

    /// The four topics of the reference deployment (PROTOCOL.md §2.5).
    pub fn reference_topics() -> Vec<TopicSpec> {
        vec![
            Self::new(
                "runtime.run_summaries",
                "warm",
                20_000,
                "runtime/run_summary:",
            ),
            Self::new(
                "runtime.codex_worker_summaries",
                "warm",
                10_000,
                "runtime/codex_worker_summary:",
            ),
            Self::new(
                "runtime.codex_worker_events",
                "hot",
                3_000,
                "runtime/codex_worker_event:",
            ),
            Self::new(
                "runtime.notifications",
                "cold",
                500,
                "runtime/notification:",
            ),
        ]
    }
}

/// An app principal: who an app token (`Authorization: Bearer <app token>`) stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The app token.
    pub app_token: String,
    /// Token subject (`user:42`).
    pub subject: String,
    /// Organisation (`org:7`).
    pub org_id: String,
    /// Scopes this principal may be granted.
    pub scopes: Vec<String>,
}

/// Configuration of a [`crate::DevServer`]. `Default` is the reference deployment with
/// PROTOCOL.md's timings; tests shrink intervals and limits.
#[derive(Debug, Clone)]
pub struct DevServerConfig {
    /// TCP port on 127.0.0.1; 0 picks an ephemeral port.
    pub port: u16,
    /// Documents the seeded generator creates at start (spread over the topics).
    pub seed_docs: usize,
    /// Seed of the generator's PRNG (same seed → same docs and same live stream).
    pub seed: u64,
    /// Live updates per second from the generator (0 = none).
    pub rate_per_sec: f64,
    /// Payloads larger than this (raw JSON bytes) go out as `payload: null,
    /// hydration_required: true` on the socket.
    pub hydration_threshold_bytes: usize,
    /// Retained log entries per topic; older entries are compacted and the floor moves.
    pub max_retained_per_topic: usize,
    /// Default token TTL when the request has no `ttl_seconds`.
    pub token_ttl_seconds: u64,
    /// Lowest accepted `ttl_seconds` (PROTOCOL: 60; tests lower it for short-lived tokens).
    pub min_ttl_seconds: u64,
    /// Highest accepted `ttl_seconds` (PROTOCOL: 900).
    pub max_ttl_seconds: u64,
    /// Interval of the server's `sync:heartbeat` push.
    pub heartbeat_interval: Duration,
    /// Socket closed after this long without client heartbeat/subscribe/unsubscribe.
    pub idle_timeout: Duration,
    /// Per-socket outbound queue (frames); a live update that finds it full is a strike.
    pub outbound_queue_limit: usize,
    /// Strike that disconnects (PROTOCOL: the 3rd).
    pub slow_consumer_max_strikes: u32,
    /// `reconnect_after_ms` of `slow_consumer` pushes.
    pub reconnect_after_ms: u64,
    /// Delay between the `reauth_required` push and the close (PROTOCOL: 5 s).
    pub reauth_close_delay: Duration,
    /// Replay batch size when the subscribe has none.
    pub default_replay_batch_size: usize,
    /// Snapshot page size when the request has no `limit`.
    pub snapshot_default_limit: usize,
    /// Snapshot `limit` clamp.
    pub snapshot_max_limit: usize,
    /// Clock skew allowed on `iat`/`nbf` (seconds).
    pub clock_skew_seconds: i64,
    /// HS256 secret of sync tokens.
    pub jwt_secret: String,
    /// `iss` of sync tokens.
    pub issuer: String,
    /// `aud` of sync tokens.
    pub audience: String,
    /// Topics served.
    pub topics: Vec<TopicSpec>,
    /// App principals for `POST /api/sync/token`.
    pub principals: Vec<Principal>,
    /// `min_client_build_id` reported by `upgrade_required`.
    pub min_client_build_id: String,
    /// Dialect F (runtime fanout, PROTOCOL.md §6) settings.
    pub fanout: FanoutConfig,
    /// Serve the dialect-P Phoenix socket (`/sync/socket/websocket`); `false` → that route
    /// answers 404 (a fanout-only deployment, for the client's Auto mode).
    pub phoenix_enabled: bool,
}

/// Dialect F (runtime fanout) settings. `Default` = PROTOCOL.md §6's reference values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutConfig {
    /// Messages retained per event topic; older ones are evicted (default 1024).
    pub ring_capacity: usize,
    /// Minimum time between two polls of one (subject, topic) (default 250 ms).
    pub poll_min_interval: Duration,
    /// Poll `limit` clamp (default 200).
    pub poll_limit_max: usize,
    /// Poll `limit` clamp once a subject polls ≥ 2 topics within 10 s (default 50).
    pub poll_limit_multi_topic: usize,
    /// A WS batch or poll more than this many events behind head is a strike (default 300).
    pub slow_consumer_lag_threshold: u64,
    /// The strike that evicts (default 3).
    pub slow_consumer_max_strikes: u32,
    /// Base of `recommended_reconnect_backoff_ms` (default 400).
    pub reconnect_hint_ms: u64,
    /// Random jitter added to the hint, `0..=reconnect_jitter_ms` (default 250).
    pub reconnect_jitter_ms: u64,
    /// Tokens whose `iat` is older than this are refused with `token_too_old` (default 300 s).
    pub token_max_age: Duration,
    /// `Origin` allow-list; `None` = no origin check (default).
    pub allowed_origins: Option<Vec<String>>,
    /// Replay budget of `run:<id>:events` (default 20000).
    pub budget_run_events: u64,
    /// Replay budget of `worker:<id>:lifecycle` (default 10000).
    pub budget_worker_lifecycle: u64,
    /// Replay budget of `runtime.codex_worker_events` (default 3000).
    pub budget_codex_worker_events: u64,
    /// Replay budget of any other topic kind (default 500; unused by the three kinds served).
    pub budget_fallback: u64,
    /// WS batch size when the upgrade has no `limit` (default 100; clamped to 1..=200).
    pub ws_default_limit: usize,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            ring_capacity: 1024,
            poll_min_interval: Duration::from_millis(250),
            poll_limit_max: 200,
            poll_limit_multi_topic: 50,
            slow_consumer_lag_threshold: 300,
            slow_consumer_max_strikes: 3,
            reconnect_hint_ms: 400,
            reconnect_jitter_ms: 250,
            token_max_age: Duration::from_secs(300),
            allowed_origins: None,
            budget_run_events: 20_000,
            budget_worker_lifecycle: 10_000,
            budget_codex_worker_events: 3_000,
            budget_fallback: 500,
            ws_default_limit: 100,
        }
    }
}

impl Default for DevServerConfig {
    fn default() -> Self {
        let topics = TopicSpec::reference_topics();
        let all: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
        Self {
            port: 0,
            seed_docs: 0,
            seed: 42,
            rate_per_sec: 0.0,
            hydration_threshold_bytes: 64 * 1024,
            max_retained_per_topic: 50_000,
            token_ttl_seconds: 300,
            min_ttl_seconds: 60,
            max_ttl_seconds: 900,
            heartbeat_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            outbound_queue_limit: 64,
            slow_consumer_max_strikes: 3,
            reconnect_after_ms: 2_000,
            reauth_close_delay: Duration::from_secs(5),
            default_replay_batch_size: 200,
            snapshot_default_limit: 1_000,
            snapshot_max_limit: 5_000,
            clock_skew_seconds: 30,
            jwt_secret: "khala-dev-server-secret-not-for-production".into(),
            issuer: "https://openagents.com".into(),
            audience: "openagents-sync".into(),
            principals: vec![
                Principal {
                    app_token: "dev-app-token".into(),
                    subject: "user:42".into(),
                    org_id: "org:7".into(),
                    scopes: {
                        let mut s = all;
                        s.push("runtime.run_events".into());
                        s
                    },
                },
                Principal {
                    app_token: "dev-app-token-limited".into(),
                    subject: "user:43".into(),
                    org_id: "org:7".into(),
                    scopes: vec!["runtime.run_summaries".into()],
                },
            ],
            topics,
            min_client_build_id: "2026.02.0".into(),
            fanout: FanoutConfig::default(),
            phoenix_enabled: true,
        }
    }
}

impl DevServerConfig {
    /// The spec of `topic`, if served.
    pub fn topic(&self, topic: &str) -> Option<&TopicSpec> {
        self.topics.iter().find(|t| t.name == topic)
    }
}
