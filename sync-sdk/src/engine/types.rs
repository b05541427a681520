//! The engine's vocabulary: time, events in, actions out, status and changes.

use std::time::Duration;

use crate::error::SyncError;
use crate::protocol::fanout::{PollFailure, PollPage};
use crate::protocol::http::{DocResponse, SnapshotPage};
use crate::protocol::token::{SyncToken, TokenGrant};
use crate::protocol::{DocKey, ProtocolError, Topic, Watermark};
use crate::store::{ApplyBatch, ApplyOutcome, DocWrite, Identity, SnapshotGen, StoreError};

/// Engine time: milliseconds since an arbitrary origin chosen by the driver.
///
/// The engine never reads a clock; every `handle` call passes `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// `self + d` (saturating).
    pub fn after(self, d: Duration) -> Millis {
        Millis(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// `self - earlier`, zero if negative.
    pub fn since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// Identifies one WebSocket connection attempt. Frames from a connection the engine has
/// already abandoned are ignored by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Failure of an HTTP call or a WebSocket upgrade, as the driver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpFailure {
    /// The server answered with an error status.
    Status {
        /// HTTP status.
        status: u16,
        /// Error code from the body, if any.
        code: Option<String>,
        /// Message from the body (never contains a token).
        message: String,
        /// `Retry-After`, if present.
        retry_after: Option<Duration>,
    },
    /// No answer: DNS, connect, TLS, timeout, reset.
    Transport(String),
    /// An answer that could not be decoded.
    Decode(ProtocolError),
}

impl HttpFailure {
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            HttpFailure::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            HttpFailure::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub(crate) fn into_error(self, route: &'static str) -> SyncError {
        match self {
            HttpFailure::Status {
                status,
                code,
                message,
                ..
            } => SyncError::Http {
                route,
                status,
                code,
                message,
            },
            HttpFailure::Transport(m) => SyncError::Transport(m),
            HttpFailure::Decode(e) => SyncError::Protocol(e),
        }
    }
}

/// Input to [`super::Engine::handle`].
// Events are moved once into `handle`, never stored in bulk: boxing the large variants would
// cost an allocation per event for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event {
    /// Begin syncing (fetch a token, bind the store, connect).
    Start,
    /// Stop network activity (app backgrounded, offline). Committed data stays readable.
    Pause,
    /// Undo [`Event::Pause`]; also clears auth failures so new credentials are tried.
    Resume,
    /// The network changed (reachability, `online`): reconnect now with backoff reset.
    NetworkChanged,
    /// Stop for good.
    Shutdown,
    /// A deadline from [`super::Engine::poll_timeout`] passed.
    Timer,
    /// Result of [`Action::FetchToken`].
    TokenFetched(Result<TokenGrant, HttpFailure>),
    /// Result of [`Action::BindIdentity`]: the committed watermarks.
    IdentityBound(Result<Vec<(Topic, Watermark)>, StoreError>),
    /// The WebSocket of [`Action::Connect`] is open.
    Connected(ConnId),
    /// The WebSocket could not be opened.
    ConnectFailed(ConnId, HttpFailure),
    /// A text frame arrived.
    Frame(ConnId, String),
    /// The connection closed or failed.
    Disconnected(ConnId, String),
    /// A WebSocket pong arrived (the answer to [`Action::Ping`]): the connection is alive.
    Pong(ConnId),
    /// The socket layer refused an inbound frame larger than the configured limit before
    /// buffering it; the connection is gone.
    FrameTooLarge {
        /// The connection.
        conn: ConnId,
        /// Declared size of the frame, bytes.
        size: usize,
        /// The limit, bytes.
        limit: usize,
    },
    /// Result of [`Action::Apply`].
    Applied(Topic, Result<ApplyOutcome, StoreError>),
    /// Result of [`Action::BeginSnapshot`].
    SnapshotBegun(Topic, Result<SnapshotGen, StoreError>),
    /// Result of [`Action::FetchSnapshotPage`], with the action's generation (a late answer
    /// for an abandoned snapshot is told apart from the current one's and ignored).
    SnapshotPageFetched(Topic, SnapshotGen, Result<SnapshotPage, HttpFailure>),
    /// Result of [`Action::StoreSnapshotPage`], with the action's generation.
    SnapshotPageStored(Topic, SnapshotGen, Result<(), StoreError>),
    /// Result of [`Action::FetchDoc`].
    DocFetched(Topic, DocKey, Result<DocResponse, HttpFailure>),
    /// Result of [`Action::Poll`] (dialect F), decoded with
    /// [`crate::protocol::fanout::decode_poll`].
    Polled(Topic, Result<PollPage, PollFailure>),
}

/// Output of [`super::Engine::poll_action`]: work for the driver.
#[derive(Debug)]
pub enum Action {
    /// Call the token route; answer with [`Event::TokenFetched`].
    FetchToken,
    /// Bind the store to this identity and load watermarks; answer [`Event::IdentityBound`].
    BindIdentity(Identity),
    /// Open the Phoenix socket with this token; answer `Connected`/`ConnectFailed`.
    Connect {
        /// Connection id to tag its events with.
        conn: ConnId,
        /// Token for the `token` query parameter.
        token: SyncToken,
    },
    /// Dialect F: open the topic's WebSocket
    /// (`{base}` + [`crate::protocol::fanout::ws_path`]) with `Authorization: Bearer <token>`;
    /// answer `Connected`/`ConnectFailed`, then `Frame`s and `Disconnected` under `conn`.
    ConnectTopic {
        /// Connection id to tag its events with.
        conn: ConnId,
        /// Topic.
        topic: Topic,
        /// Resume after this sequence.
        after_seq: Watermark,
        /// Batch size hint.
        limit: u32,
        /// Token for the `Authorization` header.
        token: SyncToken,
    },
    /// Dialect F: `GET {base}` + [`crate::protocol::fanout::poll_path`] with the token in the
    /// `Authorization` header; answer [`Event::Polled`].
    Poll {
        /// Topic.
        topic: Topic,
        /// Messages after this sequence.
        after_seq: Watermark,
        /// Page size.
        limit: u32,
        /// Token for the `Authorization` header.
        token: SyncToken,
    },
    /// Send a text frame.
    Send {
        /// Connection.
        conn: ConnId,
        /// Frame text.
        text: String,
    },
    /// Close a connection (no further events for it are needed).
    Close(ConnId),
    /// Send a WebSocket ping on a dialect-F topic socket that has been silent (the runtime
    /// answers pings with pongs; report them as [`Event::Pong`]). A driver that cannot send
    /// pings ignores it: the socket is then declared dead after `dead_after` of silence.
    Ping(ConnId),
    /// Apply a batch to the store; answer [`Event::Applied`].
    Apply(ApplyBatch),
    /// Start a snapshot generation; answer [`Event::SnapshotBegun`].
    BeginSnapshot(Topic),
    /// Fetch a snapshot page; answer [`Event::SnapshotPageFetched`].
    FetchSnapshotPage {
        /// Topic.
        topic: Topic,
        /// Generation from `SnapshotBegun`, returned in the answer.
        generation: SnapshotGen,
        /// Cursor from the previous page.
        cursor: Option<String>,
        /// Page size.
        limit: u32,
        /// Sync token for the `Authorization` header.
        token: SyncToken,
    },
    /// Stage a page (and, with `finish`, swap it in); answer [`Event::SnapshotPageStored`].
    /// Drivers may run it concurrently with other actions (the engine keeps one page store
    /// in flight per topic, in page order).
    StoreSnapshotPage {
        /// Topic.
        topic: Topic,
        /// Generation from `SnapshotBegun`.
        generation: SnapshotGen,
        /// Documents of the page.
        docs: Vec<DocWrite>,
        /// `Some(snapshot_watermark)` on the last page: finish the snapshot after staging.
        finish: Option<Watermark>,
    },
    /// Fetch one document (hydration); answer [`Event::DocFetched`].
    FetchDoc {
        /// Topic.
        topic: Topic,
        /// Key.
        doc_key: DocKey,
        /// Sync token.
        token: SyncToken,
    },
    /// Tell the app something.
    Notify(Notification),
}

/// What the app hears.
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    /// The status changed.
    Status(SyncStatus),
    /// Committed changes of one topic, in watermark order.
    Changes(Vec<Change>),
}

/// One committed change.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A document was created or updated.
    Upsert {
        /// Topic.
        topic: Topic,
        /// Key.
        doc_key: DocKey,
        /// New version.
        doc_version: u64,
        /// Raw JSON payload.
        payload: String,
        /// Watermark of the update.
        watermark: Watermark,
    },
    /// A document was deleted.
    Delete {
        /// Topic.
        topic: Topic,
        /// Key.
        doc_key: DocKey,
        /// Watermark of the tombstone.
        watermark: Watermark,
    },
    /// The topic's documents were replaced by a snapshot (re-read them with `list`).
    Bootstrapped {
        /// Topic.
        topic: Topic,
        /// The snapshot's watermark.
        watermark: Watermark,
        /// Documents in the snapshot.
        docs: u64,
    },
    /// Dialect F: the server no longer had the messages `from..=to` of this event log
    /// (evicted from its ring, or beyond its replay budget) when the client asked for them.
    /// They were skipped and the committed watermark moved to `to`; refetch them through the
    /// app's own APIs if they matter. Never silent: every skipped range is reported once.
    Truncated {
        /// Topic.
        topic: Topic,
        /// First missing sequence.
        from: Watermark,
        /// Last missing sequence (the new committed watermark).
        to: Watermark,
    },
}

impl Change {
    /// The topic of the change.
    pub fn topic(&self) -> &Topic {
        match self {
            Change::Upsert { topic, .. }
            | Change::Delete { topic, .. }
            | Change::Bootstrapped { topic, .. }
            | Change::Truncated { topic, .. } => topic,
        }
    }
}

/// The connection-level state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not started.
    Idle,
    /// Getting a sync token.
    Authenticating,
    /// Opening the socket / joining the channel.
    Connecting,
    /// Joined and syncing.
    Connected,
    /// Waiting before the next attempt (see `next_retry_at`).
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

/// Per-topic phase: `Idle → Bootstrapping → Subscribing → Replaying → Live`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Status of one topic.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicStatus {
    /// Topic.
    pub topic: Topic,
    /// Phase.
    pub phase: TopicPhase,
    /// Committed watermark.
    pub watermark: Watermark,
    /// Latest known server head.
    pub head: Option<Watermark>,
    /// Replay progress in `0.0..=1.0` while replaying/bootstrapping.
    pub replay_progress: Option<f32>,
    /// Snapshot documents stored so far while bootstrapping.
    pub snapshot_docs: u64,
    /// The topic was resynced from the server's retained window (no snapshot route).
    pub resynced_from_window: bool,
    /// The topic's own error (forbidden, stale loop…).
    pub error: Option<SyncError>,
}

/// The status stream's item.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncStatus {
    /// Connection state.
    pub state: ConnectionState,
    /// Transport in use: `"websocket"`, or `"poll"` when any topic syncs over dialect F's
    /// HTTP poll route.
    pub transport: &'static str,
    /// Per-topic status, in configuration order.
    pub topics: Vec<TopicStatus>,
    /// Most recent error.
    pub last_error: Option<SyncError>,
    /// When the next retry happens (engine time), while in backoff.
    pub next_retry_at: Option<Millis>,
}

impl SyncStatus {
    /// Every topic is live.
    pub fn is_live(&self) -> bool {
        !self.topics.is_empty()
            && self
                .topics
                .iter()
                .all(|t| t.phase == TopicPhase::Live || t.phase == TopicPhase::Failed)
    }
}

/// Counters (monotonic over the engine's life).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Updates committed (upserts + deletes, including kept-local ones).
    pub updates_applied: u64,
    /// Updates skipped as duplicates (`watermark <= committed`).
    pub duplicates_skipped: u64,
    /// Gaps detected (each healed by a resubscribe).
    pub gaps: u64,
    /// Payload hash mismatches.
    pub hash_mismatches: u64,
    /// Documents stored unverified after a resync still mismatched.
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
    /// Dialect F: polls sent.
    pub polls: u64,
    /// Dialect F: polls answered `429` (each one waited out).
    pub rate_limited: u64,
    /// Dialect F: messages reported as truncated (evicted before they could be fetched).
    pub truncated_messages: u64,
    /// Time from start to every topic live (first time), ms.
    pub catch_up_ms: Option<u64>,
}
