//! Engine configuration with the defaults PROTOCOL.md and the issues ask for.

use std::time::Duration;

use crate::protocol::{DecodeLimits, Topic};

/// Which wire dialect the client speaks (PROTOCOL.md §2 and §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// Dialect P: one Phoenix socket (`sync:v1`) for every topic.
    Phoenix,
    /// Dialect F: the runtime fanout — one WebSocket (or the HTTP poll route) per topic.
    Fanout,
    /// Try dialect P; switch to F when the Phoenix socket route answers `404`. Default.
    #[default]
    Auto,
}

/// How dialect F moves messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FanoutTransport {
    /// One WebSocket per topic; a topic whose WebSocket cannot be opened twice in a row
    /// (blocked by a proxy, `5xx`, `404`) falls back to polling until the network changes.
    /// Default.
    #[default]
    Auto,
    /// WebSocket only (keep retrying it with backoff).
    WebSocket,
    /// HTTP poll only (browsers: a WebSocket there cannot carry an `Authorization` header).
    Poll,
}

/// Knobs of the sync state machine. `Default` gives the documented production values.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Server origin (scheme://host:port); part of the store's identity.
    pub server: String,
    /// Topics to sync, in order.
    pub topics: Vec<Topic>,
    /// `replay_batch_size` sent with subscribe (server clamps to 1..=1000). Default 200.
    pub replay_batch_size: u32,
    /// Snapshot page size (server clamps to 5000). Default 2000.
    pub snapshot_page_limit: u32,
    /// First backoff window. Default 250 ms.
    pub backoff_base: Duration,
    /// Largest backoff window. Default 30 s.
    pub backoff_cap: Duration,
    /// A connection that stayed joined this long resets the backoff. Default 10 s.
    pub stable_after: Duration,
    /// The first reconnect after losing an established (joined) connection waits a uniformly
    /// random time in `0..=reconnect_spread`, so that when a server restarts, its clients come
    /// back spread over this window instead of in lock-step. Later attempts use the full-jitter
    /// exponential backoff; a network change reconnects at once. Default 5 s.
    pub reconnect_spread: Duration,
    /// Client `sync:heartbeat` period. Default 20 s.
    pub heartbeat_interval: Duration,
    /// Silence after which the connection is considered dead. Default 45 s.
    pub dead_after: Duration,
    /// Unanswered heartbeats after which the connection is dead. Default 2.
    pub max_missed_heartbeats: u32,
    /// Time allowed to open the socket and join. Default 15 s.
    pub connect_timeout: Duration,
    /// Frame/body size limits.
    pub decode_limits: DecodeLimits,
    /// Seed of the jitter RNG (drivers pass OS randomness; tests a constant).
    pub seed: u64,
    /// Largest group commit, in updates. While one commit is in flight, the batches that
    /// arrive queue up (up to this many updates) and are committed together, coalesced per
    /// document; a crash re-replays at most one group. Bigger groups write fewer SQLite
    /// pages per update (faster catch-up) and hold more in memory. Default 6,000.
    pub group_commit_max_updates: usize,
    /// Commit ahead while catching up: once a full group is queued behind the commit in
    /// flight, it is formed and handed to the store at once (two in flight), so the store
    /// starts it the moment the first ends instead of idling while the engine forms it. Only
    /// for drivers that run [`Action::Apply`](super::Action::Apply)s strictly in the order
    /// given and answer them in that order (the native driver does). Default false.
    pub commit_ahead: bool,
    /// Wire dialect. Default [`Dialect::Auto`].
    pub dialect: Dialect,
    /// Dialect F transport. Default [`FanoutTransport::Auto`].
    pub fanout_transport: FanoutTransport,
    /// Dialect F: at most this many topic WebSockets being opened at once (established ones
    /// are not limited). Default 4.
    pub fanout_max_opening: usize,
    /// Dialect F poll page size (servers clamp to 200, or 50 when one principal polls two or
    /// more topics). Default 200.
    pub poll_limit: u32,
    /// Dialect F: shortest time between two polls of one topic. Servers refuse polls closer
    /// than 250 ms with `429` (and count the refused one); default 300 ms leaves a margin.
    pub poll_min_interval: Duration,
    /// Dialect F: poll period of a caught-up topic on the poll transport. Default 1 s.
    pub poll_interval: Duration,
}

impl EngineConfig {
    /// Defaults for `server` and `topics`.
    pub fn new(server: impl Into<String>, topics: Vec<Topic>) -> Self {
        EngineConfig {
            server: server.into(),
            topics,
            replay_batch_size: 200,
            snapshot_page_limit: 2000,
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(30),
            stable_after: Duration::from_secs(10),
            reconnect_spread: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(20),
            dead_after: Duration::from_secs(45),
            max_missed_heartbeats: 2,
            connect_timeout: Duration::from_secs(15),
            decode_limits: DecodeLimits::default(),
            seed: 0x6b68_616c_6173_796e,
            group_commit_max_updates: 6_000,
            commit_ahead: false,
            dialect: Dialect::Auto,
            fanout_transport: FanoutTransport::Auto,
            fanout_max_opening: 4,
            poll_limit: 200,
            poll_min_interval: Duration::from_millis(300),
            poll_interval: Duration::from_secs(1),
        }
    }
}
