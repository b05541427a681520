//! Records and enums that cross the FFI, and their conversions from the Rust API. No logic
//! beyond field-by-field copying.

use khala_sync as ks;

use crate::error::KhalaSyncError;

/// Connection-level state (`khala_sync::ConnectionState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ConnectionState {
    /// Not started.
    Idle,
    /// Getting a sync token.
    Authenticating,
    /// Opening the socket / joining the channel.
    Connecting,
    /// Joined and syncing.
    Connected,
    /// Waiting before the next attempt.
    Backoff,
    /// Paused by the app.
    Paused,
    /// The app's credentials were refused; waiting for `resume()`.
    AuthFailed,
    /// The server requires a newer client; stopped.
    UpgradeRequired,
    /// Shut down.
    Stopped,
}

impl From<ks::ConnectionState> for ConnectionState {
    fn from(s: ks::ConnectionState) -> Self {
        match s {
            ks::ConnectionState::Idle => ConnectionState::Idle,
            ks::ConnectionState::Authenticating => ConnectionState::Authenticating,
            ks::ConnectionState::Connecting => ConnectionState::Connecting,
            ks::ConnectionState::Connected => ConnectionState::Connected,
            ks::ConnectionState::Backoff => ConnectionState::Backoff,
            ks::ConnectionState::Paused => ConnectionState::Paused,
            ks::ConnectionState::AuthFailed => ConnectionState::AuthFailed,
            ks::ConnectionState::UpgradeRequired => ConnectionState::UpgradeRequired,
            ks::ConnectionState::Stopped => ConnectionState::Stopped,
        }
    }
}

/// Per-topic phase (`khala_sync::TopicPhase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum TopicPhase {
    /// Waiting for a connection.
    Idle,
    /// Loading a snapshot over HTTP.
    Bootstrapping,
    /// Subscribe sent, nothing received yet.
    Subscribing,
    /// Receiving the replay.
    Replaying,
    /// At head, receiving live updates.
    Live,
    /// The server refused the topic (see its `error`).
    Failed,
}

impl From<ks::TopicPhase> for TopicPhase {
    fn from(p: ks::TopicPhase) -> Self {
        match p {
            ks::TopicPhase::Idle => TopicPhase::Idle,
            ks::TopicPhase::Bootstrapping => TopicPhase::Bootstrapping,
            ks::TopicPhase::Subscribing => TopicPhase::Subscribing,
            ks::TopicPhase::Replaying => TopicPhase::Replaying,
            ks::TopicPhase::Live => TopicPhase::Live,
            ks::TopicPhase::Failed => TopicPhase::Failed,
        }
    }
}

/// Status of one topic (`khala_sync::TopicStatus`).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct TopicStatus {
    /// Topic.
    pub topic: String,
    /// Phase.
    pub phase: TopicPhase,
    /// Committed watermark.
    pub watermark: u64,
    /// Latest known server head.
    pub head: Option<u64>,
    /// Replay progress in `0.0...1.0` while replaying/bootstrapping.
    pub replay_progress: Option<f32>,
    /// Snapshot documents stored so far while bootstrapping.
    pub snapshot_docs: u64,
    /// The topic was resynced from the server's retained window.
    pub resynced_from_window: bool,
    /// The topic's own error.
    pub error: Option<KhalaSyncError>,
}

impl From<ks::TopicStatus> for TopicStatus {
    fn from(t: ks::TopicStatus) -> Self {
        TopicStatus {
            topic: t.topic.as_str().to_owned(),
            phase: t.phase.into(),
            watermark: t.watermark.get(),
            head: t.head.map(ks::Watermark::get),
            replay_progress: t.replay_progress,
            snapshot_docs: t.snapshot_docs,
            resynced_from_window: t.resynced_from_window,
            error: t.error.map(Into::into),
        }
    }
}

/// The status stream's item (`khala_sync::SyncStatus`).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncStatus {
    /// Connection state.
    pub state: ConnectionState,
    /// Transport in use (`"websocket"`).
    pub transport: String,
    /// Per-topic status, in configuration order.
    pub topics: Vec<TopicStatus>,
    /// Most recent error.
    pub last_error: Option<KhalaSyncError>,
    /// Engine time (ms) of the next retry, while in backoff.
    pub next_retry_at_ms: Option<u64>,
    /// Every topic is live (`SyncStatus::is_live()`).
    pub is_live: bool,
}

impl From<ks::SyncStatus> for SyncStatus {
    fn from(s: ks::SyncStatus) -> Self {
        let is_live = s.is_live();
        SyncStatus {
            state: s.state.into(),
            transport: s.transport.to_owned(),
            topics: s.topics.into_iter().map(Into::into).collect(),
            last_error: s.last_error.map(Into::into),
            next_retry_at_ms: s.next_retry_at.map(|m| m.0),
            is_live,
        }
    }
}

/// One committed change (`khala_sync::Change`).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Change {
    /// A document was created or updated.
    Upsert {
        /// Topic.
        topic: String,
        /// Key.
        doc_key: String,
        /// New version.
        doc_version: u64,
        /// Raw JSON payload text.
        payload: String,
        /// Watermark of the update.
        watermark: u64,
    },
    /// A document was deleted.
    Delete {
        /// Topic.
        topic: String,
        /// Key.
        doc_key: String,
        /// Watermark of the tombstone.
        watermark: u64,
    },
    /// The topic's documents were replaced by a snapshot (re-read them).
    Bootstrapped {
        /// Topic.
        topic: String,
        /// The snapshot's watermark.
        watermark: u64,
        /// Documents in the snapshot.
        docs: u64,
    },
    /// Dialect F: messages `from...to` were evicted by the server before they could be
    /// fetched; they were skipped (never silently) and the watermark is now `to`.
    Truncated {
        /// Topic.
        topic: String,
        /// First missing sequence.
        from: u64,
        /// Last missing sequence.
        to: u64,
    },
}

impl From<ks::Change> for Change {
    fn from(c: ks::Change) -> Self {
        match c {
            ks::Change::Upsert {
                topic,
                doc_key,
                doc_version,
                payload,
                watermark,
            } => Change::Upsert {
                topic: topic.as_str().to_owned(),
                doc_key: doc_key.as_str().to_owned(),
                doc_version,
                payload,
                watermark: watermark.get(),
            },
            ks::Change::Delete {
                topic,
                doc_key,
                watermark,
            } => Change::Delete {
                topic: topic.as_str().to_owned(),
                doc_key: doc_key.as_str().to_owned(),
                watermark: watermark.get(),
            },
            ks::Change::Bootstrapped {
                topic,
                watermark,
                docs,
            } => Change::Bootstrapped {
                topic: topic.as_str().to_owned(),
                watermark: watermark.get(),
                docs,
            },
            ks::Change::Truncated { topic, from, to } => Change::Truncated {
                topic: topic.as_str().to_owned(),
                from: from.get(),
                to: to.get(),
            },
        }
    }
}

/// One stored document (`khala_sync::StoredDoc`).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Doc {
    /// Topic.
    pub topic: String,
    /// Key.
    pub doc_key: String,
    /// Version.
    pub doc_version: u64,
    /// Raw JSON payload text.
    pub payload: String,
    /// Hash as received, `sha256:<hex>` (`None` if the server sent none).
    pub payload_hash: Option<String>,
    /// Watermark of the update that last wrote it.
    pub watermark: u64,
    /// False if the payload failed hash verification and was kept anyway.
    pub verified: bool,
}

impl From<ks::StoredDoc> for Doc {
    fn from(d: ks::StoredDoc) -> Self {
        Doc {
            topic: d.topic.as_str().to_owned(),
            doc_key: d.doc_key.as_str().to_owned(),
            doc_version: d.doc_version,
            payload: d.payload,
            payload_hash: d.payload_hash.map(|h| h.to_display()),
            watermark: d.watermark.get(),
            verified: d.verified,
        }
    }
}

/// Counters (`khala_sync::Metrics`), monotonic over the client's life.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Metrics {
    /// Updates committed.
    pub updates_applied: u64,
    /// Updates skipped as duplicates.
    pub duplicates_skipped: u64,
    /// Gaps detected.
    pub gaps: u64,
    /// Payload hash mismatches.
    pub hash_mismatches: u64,
    /// Documents stored unverified.
    pub unverified_docs: u64,
    /// `stale_cursor` errors received.
    pub stale_cursors: u64,
    /// Snapshots started.
    pub snapshots: u64,
    /// Snapshot documents stored.
    pub snapshot_docs: u64,
    /// Connections opened after the first.
    pub reconnects: u64,
    /// Connection attempts.
    pub connects: u64,
    /// Tokens fetched.
    pub tokens_fetched: u64,
    /// Documents hydrated over HTTP.
    pub hydrations: u64,
    /// `slow_consumer` errors received.
    pub slow_consumer: u64,
    /// Batches committed.
    pub batches_committed: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Frame bytes received.
    pub bytes_received: u64,
    /// Frames that failed to decode.
    pub decode_errors: u64,
    /// Time from start to every topic live (first time), ms.
    pub catch_up_ms: Option<u64>,
}

impl From<ks::Metrics> for Metrics {
    fn from(m: ks::Metrics) -> Self {
        Metrics {
            updates_applied: m.updates_applied,
            duplicates_skipped: m.duplicates_skipped,
            gaps: m.gaps,
            hash_mismatches: m.hash_mismatches,
            unverified_docs: m.unverified_docs,
            stale_cursors: m.stale_cursors,
            snapshots: m.snapshots,
            snapshot_docs: m.snapshot_docs,
            reconnects: m.reconnects,
            connects: m.connects,
            tokens_fetched: m.tokens_fetched,
            hydrations: m.hydrations,
            slow_consumer: m.slow_consumer,
            batches_committed: m.batches_committed,
            frames_received: m.frames_received,
            bytes_received: m.bytes_received,
            decode_errors: m.decode_errors,
            catch_up_ms: m.catch_up_ms,
        }
    }
}

/// One HTTP header the app sends with the token request.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Header {
    /// Header name (`Authorization`).
    pub name: String,
    /// Header value (`Bearer …`). Never logged.
    pub value: String,
}

/// Client options (`khala_sync::ClientOptions`); `nil` keeps the SDK's production default.
#[derive(Debug, Clone, PartialEq, Eq, Default, uniffi::Record)]
pub struct SyncOptions {
    /// Allow `http://`/`ws://` to non-loopback hosts (never in production).
    #[uniffi(default = false)]
    pub allow_insecure_non_loopback: bool,
    /// Kill switch: when false, `start()` does nothing. Default true.
    #[uniffi(default = None)]
    pub enabled: Option<bool>,
    /// Replay batch size asked of the server.
    #[uniffi(default = None)]
    pub replay_batch_size: Option<u32>,
    /// Snapshot page size.
    #[uniffi(default = None)]
    pub snapshot_page_limit: Option<u32>,
    /// First backoff window, ms.
    #[uniffi(default = None)]
    pub backoff_base_ms: Option<u64>,
    /// Largest backoff window, ms.
    #[uniffi(default = None)]
    pub backoff_cap_ms: Option<u64>,
    /// Client heartbeat period, ms.
    #[uniffi(default = None)]
    pub heartbeat_interval_ms: Option<u64>,
    /// Silence before the connection counts as dead, ms.
    #[uniffi(default = None)]
    pub dead_after_ms: Option<u64>,
    /// Frame/body size limit, bytes.
    #[uniffi(default = None)]
    pub max_frame_bytes: Option<u64>,
    /// `client` query parameter (default `khala-sync-swift`).
    #[uniffi(default = None)]
    pub client_name: Option<String>,
    /// `client_build_id` query parameter (default the crate version).
    #[uniffi(default = None)]
    pub client_build_id: Option<String>,
    /// `device_id` sent with the token request.
    #[uniffi(default = None)]
    pub device_id: Option<String>,
    /// `ttl_seconds` sent with the token request.
    #[uniffi(default = None)]
    pub token_ttl_seconds: Option<u32>,
    /// Explicit scopes for the token request.
    #[uniffi(default = None)]
    pub scopes: Option<Vec<String>>,
    /// Seed of the backoff jitter.
    #[uniffi(default = None)]
    pub jitter_seed: Option<u64>,
    /// Wire dialect (default `.auto`: Phoenix, or the runtime fanout when the server has no
    /// Phoenix socket route).
    #[uniffi(default = None)]
    pub dialect: Option<SyncDialect>,
    /// Dialect F transport (default `.auto`: WebSocket, polling when it cannot be opened).
    #[uniffi(default = None)]
    pub fanout_transport: Option<SyncFanoutTransport>,
    /// Dialect F: poll period of a caught-up topic on the poll transport (default 1000 ms).
    #[uniffi(default = None)]
    pub poll_interval_ms: Option<u64>,
    /// Token route URL when it is not `<base>/api/sync/token`.
    #[uniffi(default = None)]
    pub token_url: Option<String>,
}

/// Wire dialect (`khala_sync::Dialect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SyncDialect {
    /// One Phoenix socket for every topic (PROTOCOL.md §2).
    Phoenix,
    /// The runtime fanout: one WebSocket, or the poll route, per topic (§6).
    Fanout,
    /// Phoenix; the fanout when the Phoenix socket route answers 404.
    Auto,
}

/// Dialect F transport (`khala_sync::FanoutTransport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SyncFanoutTransport {
    /// WebSocket; poll after two failed opens.
    Auto,
    /// WebSocket only.
    WebSocket,
    /// HTTP poll only.
    Poll,
}

impl From<SyncDialect> for ks::Dialect {
    fn from(d: SyncDialect) -> Self {
        match d {
            SyncDialect::Phoenix => ks::Dialect::Phoenix,
            SyncDialect::Fanout => ks::Dialect::Fanout,
            SyncDialect::Auto => ks::Dialect::Auto,
        }
    }
}

impl From<SyncFanoutTransport> for ks::FanoutTransport {
    fn from(t: SyncFanoutTransport) -> Self {
        match t {
            SyncFanoutTransport::Auto => ks::FanoutTransport::Auto,
            SyncFanoutTransport::WebSocket => ks::FanoutTransport::WebSocket,
            SyncFanoutTransport::Poll => ks::FanoutTransport::Poll,
        }
    }
}

impl SyncOptions {
    /// Applies the set fields over the SDK defaults.
    pub(crate) fn into_client_options(self) -> ks::ClientOptions {
        use std::time::Duration;
        let d = ks::ClientOptions {
            client_name: "khala-sync-swift".to_owned(),
            ..ks::ClientOptions::default()
        };
        let ms = Duration::from_millis;
        ks::ClientOptions {
            allow_insecure_non_loopback: self.allow_insecure_non_loopback,
            enabled: self.enabled.unwrap_or(d.enabled),
            replay_batch_size: self.replay_batch_size.unwrap_or(d.replay_batch_size),
            snapshot_page_limit: self.snapshot_page_limit.unwrap_or(d.snapshot_page_limit),
            backoff_base: self.backoff_base_ms.map_or(d.backoff_base, ms),
            backoff_cap: self.backoff_cap_ms.map_or(d.backoff_cap, ms),
            heartbeat_interval: self.heartbeat_interval_ms.map_or(d.heartbeat_interval, ms),
            dead_after: self.dead_after_ms.map_or(d.dead_after, ms),
            max_frame_bytes: self.max_frame_bytes.map_or(d.max_frame_bytes, |b| {
                usize::try_from(b).unwrap_or(usize::MAX)
            }),
            client_name: self.client_name.unwrap_or_else(|| d.client_name.clone()),
            client_build_id: self
                .client_build_id
                .unwrap_or_else(|| d.client_build_id.clone()),
            device_id: self.device_id,
            token_ttl_seconds: self.token_ttl_seconds,
            scopes: self.scopes,
            jitter_seed: self.jitter_seed,
            dialect: self.dialect.map_or(d.dialect, Into::into),
            fanout_transport: self.fanout_transport.map_or(d.fanout_transport, Into::into),
            poll_interval: self.poll_interval_ms.map_or(d.poll_interval, ms),
            token_url: self.token_url,
            // Options added to the Rust API later keep their defaults.
            ..d
        }
    }
}

/// What the client syncs, where it stores it, and how.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ClientConfig {
    /// Server base URL (`https://…`; `http://127.0.0.1:…` for loopback test servers).
    pub base_url: String,
    /// Topics to sync (e.g. `runtime.run_summaries`).
    pub topics: Vec<String>,
    /// SQLite file (created if missing); `None` keeps everything in memory.
    #[uniffi(default = None)]
    pub database_path: Option<String>,
    /// Options; defaults are production defaults.
    #[uniffi(default)]
    pub options: SyncOptions,
}
