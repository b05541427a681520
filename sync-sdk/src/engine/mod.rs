//! The sync state machine: sans-IO and deterministic (quinn-proto style).
//!
//! Feed it [`Event`]s with the current time through [`Engine::handle`]; drain
//! [`Engine::poll_action`] for work (send a frame, fetch a token, apply a batch…); arm one
//! timer for [`Engine::poll_timeout`] and answer it with [`Event::Timer`]. It owns no socket,
//! clock, RNG source or runtime, so every network misfortune is a plain unit test.
//!
//! Correctness rules live here (DESIGN.md "Apply rules"): duplicates are skipped, gaps stop
//! the batch and resubscribe, hash mismatches resync once by snapshot, stale cursors
//! bootstrap once per episode, and the committed watermark only moves when the store says
//! the batch is on disk.

mod backoff;
mod config;
mod conn;
mod fanout;
mod topic;
mod types;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::Duration;

pub use backoff::Backoff;
pub use config::{Dialect, EngineConfig, FanoutTransport};
pub use types::{
    Action, Change, ConnId, ConnectionState, Event, HttpFailure, Metrics, Millis, Notification,
    SyncStatus, TopicPhase, TopicStatus,
};

use crate::error::SyncError;
use crate::protocol::hash;
use crate::protocol::http::{DocResponse, SnapshotPage};
use crate::protocol::phoenix::{self, ServerMessage, SubscribeOk};
use crate::protocol::token::{SyncToken, TokenGrant};
use crate::protocol::{DocKey, ServerError, Topic, Update, UpdateBatch, Watermark};
use crate::store::{ApplyBatch, ApplyOutcome, DocWrite, Identity, SnapshotGen, StoreError};

use conn::{Conn, ConnPhase, Pending};
use fanout::FanTopic;
use topic::{FollowUp, Hydration, Inflight, Queued, SnapState, TopicState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Idle,
    Running,
    Paused,
    AuthFailed,
    UpgradeRequired,
    Stopped,
}

#[derive(Debug)]
struct TokenState {
    token: SyncToken,
    refresh_at: Millis,
    expires_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    No,
    Binding,
    Yes,
}

/// The sync engine. See the module docs.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    rng: fastrand::Rng,
    actions: VecDeque<Action>,
    life: Life,
    now: Millis,
    started_at: Option<Millis>,

    token: Option<TokenState>,
    token_inflight: bool,
    token_retry_at: Option<Millis>,
    token_backoff: Backoff,
    identity: Option<Identity>,
    bound: Bound,

    conn: Option<Conn>,
    /// Make-before-break successor (token refresh / reauth).
    next_conn: Option<Conn>,
    conn_seq: u64,
    reconnect_at: Option<Millis>,
    reconnect_backoff: Backoff,
    auth_refusals: u32,
    /// Reconnect as soon as a fresh token arrives (reauth_required, socket 401).
    reconnect_on_token: bool,

    topics: Vec<TopicState>,
    /// Dialect F state per topic (index-aligned with `topics`).
    fan: Vec<FanTopic>,
    /// Dialect F is in use (configured, or chosen by `Dialect::Auto`).
    fanout: bool,
    /// The server is known to speak dialect P (configured, or a Phoenix socket opened).
    /// Under `Dialect::Auto` snapshots wait for it, so an F server's routes are not probed.
    phoenix_seen: bool,
    /// Incremented with every new token (a refusal of an older token is not counted again).
    token_gen: u64,
    /// The token a server refused last; the same token offered again (an app-supplied fixed
    /// token) cannot work, so it stops sync with an auth error instead of retrying forever.
    refused_token: Option<SyncToken>,
    metrics: Metrics,
    /// Whether the app listens to changes (see [`Engine::set_change_listeners`]).
    change_listeners: bool,
    last_error: Option<SyncError>,
    last_status: Option<SyncStatus>,
}

impl Engine {
    /// A new engine; nothing happens until [`Event::Start`].
    pub fn new(cfg: EngineConfig) -> Self {
        let topics = cfg
            .topics
            .iter()
            .map(|t| TopicState::new(t.clone(), cfg.backoff_base, cfg.backoff_cap))
            .collect();
        let fan = cfg.topics.iter().map(|_| FanTopic::new(&cfg)).collect();
        let fanout = cfg.dialect == Dialect::Fanout;
        Engine {
            fan,
            fanout,
            phoenix_seen: cfg.dialect == Dialect::Phoenix,
            token_gen: 0,
            refused_token: None,
            rng: fastrand::Rng::with_seed(cfg.seed),
            token_backoff: Backoff::new(cfg.backoff_base, cfg.backoff_cap),
            reconnect_backoff: Backoff::new(cfg.backoff_base, cfg.backoff_cap),
            cfg,
            actions: VecDeque::new(),
            life: Life::Idle,
            now: Millis(0),
            started_at: None,
            token: None,
            token_inflight: false,
            token_retry_at: None,
            identity: None,
            bound: Bound::No,
            conn: None,
            next_conn: None,
            conn_seq: 0,
            reconnect_at: None,
            auth_refusals: 0,
            reconnect_on_token: false,
            topics,
            metrics: Metrics::default(),
            change_listeners: true,
            last_error: None,
            last_status: None,
        }
    }

    /// Feeds one event at time `now`.
    pub fn handle(&mut self, event: Event, now: Millis) {
        self.now = self.now.max(now);
        match event {
            Event::Start => self.on_start(),
            Event::Pause => self.on_pause(),
            Event::Resume => self.on_resume(),
            Event::NetworkChanged => self.on_network_changed(),
            Event::Shutdown => self.on_shutdown(),
            Event::Timer => self.on_timer(),
            Event::TokenFetched(r) => self.on_token(r),
            Event::IdentityBound(r) => self.on_identity_bound(r),
            Event::Connected(id) => match self.f_conn_topic(id) {
                Some(i) => self.f_on_connected(i),
                None => self.on_connected(id),
            },
            Event::ConnectFailed(id, f) => match self.f_conn_topic(id) {
                Some(i) => self.f_on_connect_failed(i, f),
                None => self.on_connect_failed(id, f),
            },
            Event::Frame(id, text) => match self.f_conn_topic(id) {
                Some(i) => self.f_on_frame(i, &text),
                None => self.on_frame(id, &text),
            },
            Event::Disconnected(id, reason) => match self.f_conn_topic(id) {
                Some(i) => self.f_on_disconnected(i, reason),
                None => self.on_disconnected(id, reason),
            },
            Event::Pong(id) => {
                // Only dialect-F topic sockets are pinged.
                if let Some(i) = self.f_conn_topic(id) {
                    self.f_alive(i);
                }
            }
            Event::Polled(t, r) => self.f_on_polled(&t, r),
            Event::FrameTooLarge { conn, size, limit } => {
                match self.f_conn_topic(conn) {
                    Some(i) => self.f_on_disconnected(i, "inbound frame too large".into()),
                    None => self.on_disconnected(conn, "inbound frame too large".into()),
                }
                self.metrics.decode_errors += 1;
                self.last_error = Some(SyncError::Protocol(
                    crate::protocol::ProtocolError::TooLarge {
                        context: "socket frame",
                        size,
                        limit,
                    },
                ));
            }
            Event::Applied(t, r) => self.on_applied(&t, r),
            Event::SnapshotBegun(t, r) => self.on_snapshot_begun(&t, r),
            Event::SnapshotPageFetched(t, g, r) => self.on_snapshot_page(&t, g, r),
            Event::SnapshotPageStored(t, g, r) => self.on_snapshot_stored(&t, g, r),
            Event::DocFetched(t, k, r) => self.on_doc_fetched(&t, &k, r),
        }
        self.emit_status_if_changed();
    }

    /// Next piece of work for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Tells the engine whether anyone listens to change notifications (default: yes). When
    /// nobody does, committed batches produce no [`Notification::Changes`] and their payloads
    /// are not copied into change values (background sync, catch-up with no UI attached).
    pub fn set_change_listeners(&mut self, listening: bool) {
        self.change_listeners = listening;
    }

    /// Whether the engine wants more inbound frames now. While a commit is in flight,
    /// received batches queue up to form the next group commit; once the queues hold
    /// [`EngineConfig::group_commit_max_updates`] updates (or about 3 MiB) the driver should
    /// leave frames in its (bounded) channel, so a slow store becomes backpressure on the
    /// socket rather than memory.
    pub fn wants_frames(&self) -> bool {
        // A commit handed over ahead ([`EngineConfig::commit_ahead`]) still holds its
        // documents here: it counts against the same bound, so commit ahead does not add a
        // third group to memory.
        let queued: usize = self
            .topics
            .iter()
            .map(|t| {
                t.queue.iter().map(Vec::len).sum::<usize>()
                    + t.inflight_next.as_ref().map_or(0, |n| n.writes)
            })
            .sum();
        let bytes: usize = self.topics.iter().map(|t| t.queued_bytes).sum();
        queued < self.cfg.group_commit_max_updates && bytes < QUEUE_BYTE_BUDGET
    }

    /// Earliest deadline at which [`Event::Timer`] must be delivered.
    pub fn poll_timeout(&self) -> Option<Millis> {
        if matches!(
            self.life,
            Life::Stopped | Life::UpgradeRequired | Life::Idle
        ) {
            return None;
        }
        let mut t: Option<Millis> = None;
        let mut consider = |m: Option<Millis>| {
            if let Some(m) = m {
                t = Some(t.map_or(m, |x| x.min(m)));
            }
        };
        if self.life == Life::Running {
            consider(self.reconnect_at);
            consider(self.token_retry_at);
            consider(self.token.as_ref().map(|k| k.refresh_at));
            for c in self.conn.iter().chain(self.next_conn.iter()) {
                consider(Some(c.deadline(&self.cfg)));
            }
            for ts in &self.topics {
                consider(ts.retry_at);
            }
            if self.fanout {
                consider(self.f_deadlines());
            }
            if self
                .conn
                .as_ref()
                .is_some_and(|c| c.phase == ConnPhase::Joined)
            {
                if let Some(stable) = self.stable_check_at() {
                    consider(Some(stable));
                }
            }
        }
        t
    }

    /// Counters so far.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The current status.
    pub fn status(&self) -> SyncStatus {
        let state = match self.life {
            Life::Idle => ConnectionState::Idle,
            Life::Paused => ConnectionState::Paused,
            Life::AuthFailed => ConnectionState::AuthFailed,
            Life::UpgradeRequired => ConnectionState::UpgradeRequired,
            Life::Stopped => ConnectionState::Stopped,
            Life::Running if self.fanout => match self.f_state() {
                (true, _) => ConnectionState::Connected,
                _ if self.token_retry_at.is_some() => ConnectionState::Backoff,
                _ if self.token_inflight || self.bound != Bound::Yes => {
                    ConnectionState::Authenticating
                }
                (false, true) if self.fan.iter().all(|f| f.conn.is_none()) => {
                    ConnectionState::Backoff
                }
                _ => ConnectionState::Connecting,
            },
            Life::Running => match &self.conn {
                Some(c) if c.phase == ConnPhase::Joined => ConnectionState::Connected,
                Some(_) => ConnectionState::Connecting,
                None if self.reconnect_at.is_some() || self.token_retry_at.is_some() => {
                    ConnectionState::Backoff
                }
                None if self.token_inflight || self.bound != Bound::Yes => {
                    ConnectionState::Authenticating
                }
                None => ConnectionState::Connecting,
            },
        };
        SyncStatus {
            state,
            transport: if self.fanout {
                self.f_transport()
            } else {
                "websocket"
            },
            topics: self.topics.iter().map(TopicState::status).collect(),
            last_error: self.last_error.clone(),
            next_retry_at: if state == ConnectionState::Backoff {
                match (self.reconnect_at, self.token_retry_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            } else {
                None
            },
        }
    }

    /// Committed watermark of a topic as the engine knows it.
    pub fn watermark(&self, topic: &Topic) -> Option<Watermark> {
        self.topic_idx(topic).map(|i| self.topics[i].committed)
    }

    // ----- lifecycle -------------------------------------------------------------------

    fn on_start(&mut self) {
        if self.life != Life::Idle {
            return;
        }
        self.life = Life::Running;
        self.started_at = Some(self.now);
        self.request_token();
    }

    fn on_pause(&mut self) {
        if self.life != Life::Running {
            return;
        }
        self.life = Life::Paused;
        self.drop_connections();
        self.reconnect_at = None;
        self.token_retry_at = None;
        for ts in &mut self.topics {
            ts.detach();
        }
    }

    fn on_resume(&mut self) {
        if !matches!(self.life, Life::Paused | Life::AuthFailed) {
            return;
        }
        let was_auth_failed = self.life == Life::AuthFailed;
        self.life = Life::Running;
        self.reconnect_backoff.reset();
        self.token_backoff.reset();
        self.auth_refusals = 0;
        if was_auth_failed {
            self.token = None;
        }
        self.proceed();
    }

    fn on_network_changed(&mut self) {
        if self.life != Life::Running {
            return;
        }
        self.reconnect_backoff.reset();
        self.token_backoff.reset();
        if self.token_retry_at.take().is_some() {
            self.request_token();
        }
        if self.fanout {
            self.f_network_changed();
            return;
        }
        match &self.conn {
            Some(c) if c.phase == ConnPhase::Joined => {}
            Some(c) => {
                let id = c.id;
                self.conn = None;
                self.actions.push_back(Action::Close(id));
                self.reconnect_at = None;
                self.proceed();
            }
            None => {
                self.reconnect_at = None;
                self.proceed();
            }
        }
    }

    fn on_shutdown(&mut self) {
        if self.life == Life::Stopped {
            return;
        }
        if let Some(c) = &mut self.conn {
            if c.phase == ConnPhase::Joined {
                let r = c.next_ref();
                let text = phoenix::encode_leave(&c.join_ref, &r);
                self.actions.push_back(Action::Send { conn: c.id, text });
            }
        }
        self.drop_connections();
        self.life = Life::Stopped;
        self.reconnect_at = None;
        self.token_retry_at = None;
        for ts in &mut self.topics {
            ts.detach();
        }
    }

    /// Moves towards "connected and subscribed" from wherever we are.
    fn proceed(&mut self) {
        if self.life != Life::Running {
            return;
        }
        let token_ok = self.token.as_ref().is_some_and(|t| t.expires_at > self.now);
        if !token_ok {
            self.request_token();
            return;
        }
        if self.bound != Bound::Yes {
            return;
        }
        if self.fanout {
            self.f_proceed();
            return;
        }
        self.start_snapshots();
        if self.conn.is_none() && self.reconnect_at.is_none() {
            self.connect();
        }
    }

    /// Begins the snapshot of every topic that needs one (once the dialect is known).
    fn start_snapshots(&mut self) {
        if !self.phoenix_seen {
            return;
        }
        for i in 0..self.topics.len() {
            if self.topics[i].needs_snapshot
                && self.topics[i].snapshot.is_none()
                && self.topics[i].retry_at.is_none()
            {
                self.begin_snapshot(i);
            }
        }
    }

    // ----- token -----------------------------------------------------------------------

    fn request_token(&mut self) {
        if self.token_inflight || self.life != Life::Running {
            return;
        }
        if self.auth_refusals >= 2 {
            // Fresh tokens keep being refused (tampered in transit, server clock, revoked
            // key…): mint no faster than the token backoff allows.
            if self.token_retry_at.is_none() {
                let delay = self.token_backoff.next_delay(&mut self.rng);
                self.token_retry_at = Some(self.now.after(delay));
            }
            return;
        }
        self.fetch_token_now();
    }

    fn fetch_token_now(&mut self) {
        if self.token_inflight || self.life != Life::Running {
            return;
        }
        self.token_inflight = true;
        self.token_retry_at = None;
        self.actions.push_back(Action::FetchToken);
    }

    fn on_token(&mut self, r: Result<TokenGrant, HttpFailure>) {
        self.token_inflight = false;
        if self.life != Life::Running {
            return;
        }
        match r {
            Ok(grant)
                if self.auth_refusals >= 2 && self.refused_token.as_ref() == Some(&grant.token) =>
            {
                // Refused twice, and the token source hands back the very token the server
                // refused (a fixed `sync_token`, a provider with a stale cache): retrying
                // cannot help. The app must supply a new one (then `resume()`).
                self.metrics.tokens_fetched += 1;
                self.refused_token = None;
                self.last_error = Some(SyncError::Auth {
                    status: 401,
                    code: Some("token_refused".into()),
                    message: "the server refused the sync token and the token source returned the same token again".into(),
                });
                self.life = Life::AuthFailed;
                self.drop_connections();
                self.reconnect_at = None;
                for ts in &mut self.topics {
                    ts.detach();
                }
            }
            Ok(grant) => {
                self.metrics.tokens_fetched += 1;
                self.token_gen += 1;
                self.refused_token = None;
                if self.auth_refusals == 0 {
                    self.token_backoff.reset();
                }
                let expires_at = self.now.after(Duration::from_secs(grant.expires_in));
                let refresh_at = self
                    .now
                    .after(Duration::from_secs(grant.refresh_after_secs().max(1)));
                self.token = Some(TokenState {
                    token: grant.token.clone(),
                    refresh_at,
                    expires_at,
                });
                let identity = Identity {
                    server: self.cfg.server.clone(),
                    subject: grant.subject.clone(),
                    org: grant.org_id.clone(),
                };
                if self.identity.as_ref() != Some(&identity) {
                    if self.bound != Bound::No {
                        // Another user on the same client: forget everything in flight.
                        self.drop_connections();
                        for ts in &mut self.topics {
                            ts.detach();
                            ts.head = None;
                        }
                        // Including dialect F positions and pending truncations.
                        let cfg = &self.cfg;
                        for f in &mut self.fan {
                            *f = FanTopic::new(cfg);
                        }
                    }
                    self.identity = Some(identity.clone());
                    self.bound = Bound::Binding;
                    self.actions.push_back(Action::BindIdentity(identity));
                    return;
                }
                if self.bound != Bound::Yes {
                    return;
                }
                let joined = self
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.phase == ConnPhase::Joined);
                if joined && self.next_conn.is_none() {
                    // Make-before-break: the old socket keeps streaming until the new one
                    // has joined; then topics move over (PROTOCOL.md §7).
                    let id = self.new_conn_id();
                    self.next_conn = Some(Conn::new(id, self.now));
                    self.metrics.connects += 1;
                    self.metrics.reconnects += 1;
                    self.actions.push_back(Action::Connect {
                        conn: id,
                        token: grant.token,
                    });
                } else if self.reconnect_on_token {
                    self.reconnect_on_token = false;
                    if let Some(c) = self.conn.take() {
                        self.actions.push_back(Action::Close(c.id));
                        for ts in &mut self.topics {
                            ts.detach_from(c.id);
                        }
                    }
                    self.reconnect_at = None;
                }
                self.proceed();
            }
            Err(f) => {
                let err = token_error(&f);
                self.last_error = Some(err.clone());
                if err.is_retryable() {
                    let delay = self.token_backoff.next_delay(&mut self.rng);
                    let delay = f.retry_after().map_or(delay, |ra| ra.max(delay));
                    self.token_retry_at = Some(self.now.after(delay));
                } else {
                    // 401/403/422: the app must act; no retry loop.
                    self.life = Life::AuthFailed;
                    self.drop_connections();
                    self.reconnect_at = None;
                    for ts in &mut self.topics {
                        ts.detach();
                    }
                }
            }
        }
    }

    fn on_identity_bound(&mut self, r: Result<Vec<(Topic, Watermark)>, StoreError>) {
        match r {
            Ok(marks) => {
                self.bound = Bound::Yes;
                for ts in &mut self.topics {
                    let w = marks
                        .iter()
                        .find(|(t, _)| *t == ts.topic)
                        .map_or(Watermark::ZERO, |(_, w)| *w);
                    ts.committed = w;
                    // First run: bootstrap from a snapshot (replay from 0 could start past a
                    // retention floor and silently miss documents).
                    // Dialect F event logs have no snapshot: they replay from 0.
                    ts.needs_snapshot = w == Watermark::ZERO && !self.fanout;
                }
                self.proceed();
            }
            Err(e) => {
                self.bound = Bound::No;
                self.identity = None;
                self.last_error = Some(SyncError::Store(e));
                self.life = Life::Stopped;
            }
        }
    }

    // ----- connection ------------------------------------------------------------------

    fn new_conn_id(&mut self) -> ConnId {
        self.conn_seq += 1;
        ConnId(self.conn_seq)
    }

    fn connect(&mut self) {
        let Some(token) = self.token.as_ref().map(|t| t.token.clone()) else {
            self.request_token();
            return;
        };
        let id = self.new_conn_id();
        if self.metrics.connects > 0 {
            self.metrics.reconnects += 1;
        }
        self.metrics.connects += 1;
        self.conn = Some(Conn::new(id, self.now));
        self.reconnect_at = None;
        self.actions.push_back(Action::Connect { conn: id, token });
    }

    fn drop_connections(&mut self) {
        self.f_drop_all();
        for c in [self.conn.take(), self.next_conn.take()]
            .into_iter()
            .flatten()
        {
            self.actions.push_back(Action::Close(c.id));
        }
    }

    /// The current connection died: forget it and plan the next attempt.
    fn lose_connection(&mut self, id: ConnId, floor: Option<Duration>) {
        if self.next_conn.as_ref().is_some_and(|c| c.id == id) {
            self.next_conn = None;
            self.actions.push_back(Action::Close(id));
            return;
        }
        // Check before taking: a late event for an abandoned connection must not drop
        // the current one.
        if self.conn.as_ref().map(|c| c.id) != Some(id) {
            return;
        }
        let Some(c) = self.conn.take() else {
            return;
        };
        self.actions.push_back(Action::Close(id));
        for ts in &mut self.topics {
            ts.detach_from(id);
        }
        if let Some(n) = self.next_conn.take() {
            // The successor is already underway: promote it instead of waiting.
            self.conn = Some(n);
            if self
                .conn
                .as_ref()
                .is_some_and(|c| c.phase == ConnPhase::Joined)
            {
                self.subscribe_all();
            }
            return;
        }
        if self.life != Life::Running {
            return;
        }
        if c.was_stable(self.now, self.cfg.stable_after) {
            self.reconnect_backoff.reset();
        }
        // Losing an established connection is what a server restart does to every client at
        // once: spread the return over `reconnect_spread` (see EngineConfig), and keep every
        // retry window at least that wide until a connection is stable again, so the clients
        // whose first try came too early do not bunch up right after the server is back.
        if c.joined_at.is_some() {
            self.reconnect_backoff
                .raise_floor(self.cfg.reconnect_spread);
        }
        let jitter = self.reconnect_backoff.next_delay(&mut self.rng);
        let delay = match floor {
            // slow_consumer: at least the server's delay, plus jitter so evicted clients
            // do not return in lock-step.
            Some(f) => {
                let extra_ms = u64::try_from(self.cfg.backoff_base.as_millis()).unwrap_or(250);
                f + Duration::from_millis(self.rng.u64(0..=extra_ms))
            }
            None => jitter,
        };
        self.reconnect_at = Some(self.now.after(delay));
    }

    fn stable_check_at(&self) -> Option<Millis> {
        let c = self.conn.as_ref()?;
        if self.reconnect_backoff.attempt() == 0 {
            return None;
        }
        c.joined_at.map(|j| j.after(self.cfg.stable_after))
    }

    fn on_connected(&mut self, id: ConnId) {
        let now = self.now;
        let Some(c) = self.conn_mut(id) else { return };
        if c.phase != ConnPhase::Opening {
            return;
        }
        c.phase = ConnPhase::Joining;
        c.last_rx = now;
        let text = phoenix::encode_join(&c.join_ref.clone());
        c.pending.insert(c.join_ref.clone(), Pending::Join);
        self.actions.push_back(Action::Send { conn: id, text });
        if !self.phoenix_seen {
            // The Phoenix socket route exists: dialect P. Snapshots may start now.
            self.phoenix_seen = true;
            self.start_snapshots();
        }
    }

    fn on_connect_failed(&mut self, id: ConnId, f: HttpFailure) {
        if self.conn_mut(id).is_none() {
            return;
        }
        if self.cfg.dialect == Dialect::Auto && f.status() == Some(404) {
            // No Phoenix socket route here: this server speaks dialect F (§6).
            self.switch_to_fanout();
            return;
        }
        match f.status() {
            Some(401 | 403) => {
                // The upgrade refused our token. Get a fresh one once; if a fresh token is
                // refused too, surface it and back off instead of looping.
                self.auth_refusals += 1;
                self.refused_token = self.token.take().map(|t| t.token);
                self.last_error = Some(SyncError::Auth {
                    status: f.status().unwrap_or(401),
                    code: None,
                    message: "the sync socket refused the token".into(),
                });
                self.lose_connection(id, None);
                if self.auth_refusals < 2 {
                    self.reconnect_at = None;
                    self.reconnect_on_token = true;
                    self.request_token();
                }
            }
            _ => {
                self.last_error = Some(f.into_error("socket"));
                self.lose_connection(id, None);
            }
        }
    }

    fn on_disconnected(&mut self, id: ConnId, reason: String) {
        if self.conn.as_ref().is_some_and(|c| c.id == id) {
            self.last_error = Some(SyncError::Transport(reason));
        }
        self.lose_connection(id, None);
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        if self.conn.as_ref().is_some_and(|c| c.id == id) {
            return self.conn.as_mut();
        }
        if self.next_conn.as_ref().is_some_and(|c| c.id == id) {
            return self.next_conn.as_mut();
        }
        None
    }

    fn on_timer(&mut self) {
        let now = self.now;
        if self.life != Life::Running {
            return;
        }
        if self.token_retry_at.is_some_and(|t| t <= now) {
            self.token_retry_at = None;
            self.fetch_token_now();
        }
        if self.token.as_ref().is_some_and(|t| t.refresh_at <= now) && !self.token_inflight {
            if let Some(t) = &mut self.token {
                // Do not fire again until this refresh is answered or fails.
                t.refresh_at = Millis(u64::MAX);
            }
            self.request_token();
        }
        if self.reconnect_at.is_some_and(|t| t <= now) {
            self.reconnect_at = None;
            self.proceed();
        }
        if let Some(stable) = self.stable_check_at() {
            if stable <= now {
                self.reconnect_backoff.reset();
            }
        }
        // Connection deadlines: connect timeout, heartbeats, silence.
        for id in [
            self.conn.as_ref().map(|c| c.id),
            self.next_conn.as_ref().map(|c| c.id),
        ]
        .into_iter()
        .flatten()
        {
            self.check_conn_deadlines(id);
        }
        if self.fanout {
            self.f_on_timer();
        }
        for i in 0..self.topics.len() {
            if self.topics[i].retry_at.is_some_and(|t| t <= now) {
                self.topics[i].retry_at = None;
                match self.topics[i].retry_kind {
                    topic::RetryKind::Snapshot => self.begin_snapshot(i),
                    topic::RetryKind::Resubscribe => self.resubscribe(i),
                }
            }
        }
    }

    fn check_conn_deadlines(&mut self, id: ConnId) {
        let now = self.now;
        let cfg = self.cfg.clone();
        let Some(c) = self.conn_mut(id) else { return };
        match c.phase {
            ConnPhase::Opening | ConnPhase::Joining => {
                if now.since(c.opened_at) >= cfg.connect_timeout {
                    self.last_error = Some(SyncError::Transport("connect/join timed out".into()));
                    self.lose_connection(id, None);
                }
            }
            ConnPhase::Joined => {
                if now.since(c.last_rx) >= cfg.dead_after
                    || (c.next_hb_at <= now && c.hb_outstanding >= cfg.max_missed_heartbeats)
                {
                    self.last_error = Some(SyncError::Transport(
                        "connection dead: heartbeats unanswered".into(),
                    ));
                    self.lose_connection(id, None);
                } else if c.next_hb_at <= now {
                    let r = c.next_ref();
                    c.pending.insert(r.clone(), Pending::Heartbeat);
                    c.hb_outstanding += 1;
                    c.next_hb_at = now.after(cfg.heartbeat_interval);
                    let text = phoenix::encode_heartbeat(&c.join_ref, &r);
                    self.actions.push_back(Action::Send { conn: id, text });
                }
            }
        }
    }

    // ----- frames ----------------------------------------------------------------------

    fn on_frame(&mut self, id: ConnId, text: &str) {
        let now = self.now;
        let Some(c) = self.conn_mut(id) else { return };
        c.last_rx = now;
        self.count_frame(text);
        let msg = match phoenix::decode(text, &self.cfg.decode_limits) {
            Ok(m) => m,
            Err(e) => return self.drop_bad_frame(e),
        };
        match msg {
            ServerMessage::Reply(reply) => self.on_reply(id, reply),
            ServerMessage::UpdateBatch(b) => self.on_batch(id, b),
            ServerMessage::Error(e) => self.on_server_error_push(id, e),
            ServerMessage::Heartbeat { .. } | ServerMessage::LegacyFrame => {}
            ServerMessage::ChannelClosed { .. } => {
                self.last_error = Some(SyncError::Transport("channel closed by server".into()));
                self.lose_connection(id, None);
            }
            // Future variants (non_exhaustive): ignore.
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }

    fn count_frame(&mut self, text: &str) {
        self.metrics.frames_received += 1;
        self.metrics.bytes_received += text.len() as u64;
    }

    /// A frame we cannot read (either dialect) is dropped and surfaced; if it carried
    /// updates, the next ones show a gap and the replay / resume fills it.
    fn drop_bad_frame(&mut self, e: crate::protocol::ProtocolError) {
        self.metrics.decode_errors += 1;
        self.last_error = Some(SyncError::Protocol(e));
    }

    fn on_reply(&mut self, id: ConnId, reply: phoenix::Reply) {
        let now = self.now;
        let hb_interval = self.cfg.heartbeat_interval;
        let Some(c) = self.conn_mut(id) else { return };
        if reply.topic == "phoenix" {
            c.hb_outstanding = 0;
            return;
        }
        let Some(pending) = c.pending.remove(&reply.reference) else {
            return;
        };
        match pending {
            Pending::Heartbeat => {
                c.hb_outstanding = 0;
            }
            Pending::Unsubscribe => {}
            Pending::Join => {
                if reply.ok {
                    c.phase = ConnPhase::Joined;
                    c.joined_at = Some(now);
                    c.next_hb_at = now.after(hb_interval);
                    self.auth_refusals = 0;
                    self.token_backoff.reset();
                    if self.next_conn.as_ref().is_some_and(|n| n.id == id) {
                        // Handover complete: retire the old socket, move every topic over.
                        if let Some(old) = self.conn.take() {
                            self.actions.push_back(Action::Close(old.id));
                            for ts in &mut self.topics {
                                ts.detach_from(old.id);
                            }
                        }
                        self.conn = self.next_conn.take();
                    }
                    self.subscribe_all();
                } else {
                    match reply.error() {
                        Ok(e) => self.on_join_error(id, e),
                        Err(e) => {
                            self.last_error = Some(SyncError::Protocol(e));
                            self.lose_connection(id, None);
                        }
                    }
                }
            }
            Pending::Subscribe(topics) => {
                if reply.ok {
                    let ok: SubscribeOk = match reply.decode("subscribe reply") {
                        Ok(ok) => ok,
                        Err(e) => {
                            self.metrics.decode_errors += 1;
                            self.last_error = Some(SyncError::Protocol(e));
                            SubscribeOk {
                                subscription_id: None,
                                topics: Vec::new(),
                                current_watermarks: Vec::new(),
                            }
                        }
                    };
                    self.on_subscribed(id, &topics, &ok);
                } else {
                    match reply.error() {
                        Ok(e) => self.on_subscribe_error(id, topics, e),
                        Err(e) => {
                            self.last_error = Some(SyncError::Protocol(e));
                            self.lose_connection(id, None);
                        }
                    }
                }
            }
        }
    }

    fn on_join_error(&mut self, id: ConnId, e: ServerError) {
        match e {
            ServerError::ReauthRequired { .. } => self.reauth(id),
            ServerError::UpgradeRequired(u) => self.stop_upgrade(u.code, u.message),
            other => {
                self.last_error = Some(SyncError::Server {
                    code: other.code().to_owned(),
                    message: format!("join refused: {other}"),
                });
                self.lose_connection(id, None);
            }
        }
    }

    fn stop_upgrade(&mut self, code: String, message: String) {
        self.last_error = Some(SyncError::UpgradeRequired { code, message });
        self.drop_connections();
        self.life = Life::UpgradeRequired;
        self.reconnect_at = None;
        self.token_retry_at = None;
        for ts in &mut self.topics {
            ts.detach();
        }
    }

    /// The token is no longer accepted: get a new one, then reconnect and resume.
    fn reauth(&mut self, id: ConnId) {
        self.token = None;
        let joined = self
            .conn
            .as_ref()
            .is_some_and(|c| c.id == id && c.phase == ConnPhase::Joined);
        if !joined {
            self.lose_connection(id, None);
            self.reconnect_at = None;
        }
        // With a joined socket we keep it (the server closes it ~5 s after `exp`) and
        // switch make-before-break once the new token arrives.
        self.reconnect_on_token = !joined;
        self.request_token();
    }

    fn on_server_error_push(&mut self, id: ConnId, e: ServerError) {
        match e {
            ServerError::StaleCursor(s) => {
                for t in s.topics() {
                    if let Some(i) = self.topic_idx(&t) {
                        if self.topics[i].subscribed_on == Some(id) {
                            self.metrics.stale_cursors += 1;
                            self.topics[i].subscribed_on = None;
                            self.on_stale(i);
                        }
                    }
                }
            }
            ServerError::SlowConsumer(sc) => {
                self.metrics.slow_consumer += 1;
                if sc.is_disconnect() {
                    self.last_error = Some(SyncError::Server {
                        code: "slow_consumer".into(),
                        message: sc.message.clone(),
                    });
                    let floor = Duration::from_millis(sc.reconnect_after_ms.unwrap_or(1000));
                    self.lose_connection(id, Some(floor));
                }
            }
            ServerError::ReauthRequired { .. } => self.reauth(id),
            ServerError::UpgradeRequired(u) => self.stop_upgrade(u.code, u.message),
            other => {
                self.last_error = Some(SyncError::Server {
                    code: other.code().to_owned(),
                    message: other.to_string(),
                });
            }
        }
    }

    // ----- subscribe -------------------------------------------------------------------

    fn subscribe_all(&mut self) {
        let idx: Vec<usize> = (0..self.topics.len())
            .filter(|&i| self.topics[i].ready_to_subscribe())
            .collect();
        self.send_subscribe(&idx);
    }

    fn resubscribe(&mut self, i: usize) {
        if self.fanout {
            self.f_restart(i);
            return;
        }
        if self.topics[i].ready_to_subscribe() || self.topics[i].subscribed_on.is_some() {
            self.send_subscribe(&[i]);
        }
    }

    fn send_subscribe(&mut self, idx: &[usize]) {
        let Some(c) = self.conn.as_mut().filter(|c| c.phase == ConnPhase::Joined) else {
            return;
        };
        if idx.is_empty() {
            return;
        }
        let mut topics = Vec::with_capacity(idx.len());
        let mut resume = Vec::new();
        for &i in idx {
            let ts = &mut self.topics[i];
            topics.push(ts.topic.clone());
            // Only the window-resync subscribe itself omits the cursor; once its first
            // position is accepted, later subscribes resume from the committed watermark
            // (a cursor-less resubscribe would replay from the retention floor forever).
            if !(ts.window_resync && ts.accept_jump) {
                resume.push((ts.topic.clone(), ts.committed));
            }
            ts.phase = TopicPhase::Subscribing;
            ts.subscribed_on = Some(c.id);
            ts.resubscribe_pending = true;
            ts.replay_from = ts.committed;
            ts.clear_queue();
        }
        let r = c.next_ref();
        let text = phoenix::encode_subscribe(
            &c.join_ref,
            &r,
            &topics,
            &resume,
            self.cfg.replay_batch_size,
        );
        c.pending.insert(r, Pending::Subscribe(topics));
        self.actions.push_back(Action::Send { conn: c.id, text });
    }

    fn on_subscribed(&mut self, id: ConnId, requested: &[Topic], ok: &SubscribeOk) {
        let mut reset = Vec::new();
        let mut heal = Vec::new();
        for t in requested {
            let Some(i) = self.topic_idx(t) else { continue };
            let ts = &mut self.topics[i];
            if ts.subscribed_on != Some(id) {
                continue;
            }
            ts.resubscribe_pending = false;
            if let Some(h) = ok.current_watermarks.iter().find(|w| w.topic == *t) {
                ts.head = Some(h.watermark);
                if h.watermark < ts.committed && !ts.window_resync {
                    // The server lost or reset its log (§7): our cursor is ahead of head.
                    reset.push(i);
                    continue;
                }
            }
            if matches!(ts.phase, TopicPhase::Subscribing | TopicPhase::Replaying) {
                ts.phase = TopicPhase::Live;
                ts.stale_streak = 0;
                ts.snapshot_backoff.reset();
                ts.error = None;
            }
            // The replay is over (the server replies after its last page) and nothing is
            // left to apply, yet we are below the reported head: a replay page was lost
            // (gaps are not resubscribed while a subscribe is pending). Heal it once.
            if ts.phase == TopicPhase::Live
                && !ts.busy()
                && ts.queue.is_empty()
                && !ts.accept_jump
                && ts.head.is_some_and(|h| h > ts.committed)
            {
                heal.push(i);
            }
        }
        for i in heal {
            self.metrics.gaps += 1;
            self.resubscribe(i);
        }
        for i in reset {
            self.metrics.stale_cursors += 1;
            self.topics[i].subscribed_on = None;
            self.on_stale(i);
        }
        if self.metrics.catch_up_ms.is_none() && self.topics.iter().all(TopicState::is_settled) {
            if let Some(s) = self.started_at {
                self.metrics.catch_up_ms = Some(self.now.since(s).as_millis() as u64);
            }
        }
    }

    fn on_subscribe_error(&mut self, id: ConnId, requested: Vec<Topic>, e: ServerError) {
        let mine: Vec<usize> = requested
            .iter()
            .filter_map(|t| self.topic_idx(t))
            .filter(|&i| self.topics[i].subscribed_on == Some(id))
            .collect();
        for &i in &mine {
            self.topics[i].subscribed_on = None;
            self.topics[i].resubscribe_pending = false;
            self.topics[i].phase = TopicPhase::Idle;
        }
        match e {
            ServerError::StaleCursor(s) => {
                let stale = s.topics();
                self.metrics.stale_cursors += stale.len().max(1) as u64;
                let mut rest = Vec::new();
                for &i in &mine {
                    if stale.contains(&self.topics[i].topic) {
                        self.on_stale(i);
                    } else {
                        rest.push(i);
                    }
                }
                if rest.len() == mine.len() && !mine.is_empty() {
                    // Stale for topics we did not ask about: treat all as stale, never loop.
                    for &i in &mine {
                        self.on_stale(i);
                    }
                } else {
                    self.send_subscribe(&rest);
                }
            }
            ServerError::ForbiddenTopic { topics, .. } => {
                let mut rest = Vec::new();
                for &i in &mine {
                    let t = self.topics[i].topic.clone();
                    if topics.is_empty() || topics.contains(&t) {
                        self.topics[i].phase = TopicPhase::Failed;
                        let err = SyncError::TopicForbidden { topic: t };
                        self.topics[i].error = Some(err.clone());
                        self.last_error = Some(err);
                    } else {
                        rest.push(i);
                    }
                }
                self.send_subscribe(&rest);
            }
            ServerError::BadSubscription { message } => {
                for &i in &mine {
                    self.topics[i].phase = TopicPhase::Failed;
                    self.topics[i].error = Some(SyncError::BadSubscription {
                        message: message.clone(),
                    });
                }
                self.last_error = Some(SyncError::BadSubscription { message });
            }
            ServerError::ReauthRequired { .. } => self.reauth(id),
            ServerError::UpgradeRequired(u) => self.stop_upgrade(u.code, u.message),
            other => {
                self.last_error = Some(SyncError::Server {
                    code: other.code().to_owned(),
                    message: format!("subscribe refused: {other}"),
                });
                self.lose_connection(id, None);
            }
        }
    }

    // ----- stale cursor & snapshots ----------------------------------------------------

    /// `stale_cursor` for topic `i`: one snapshot per episode; stale again right after a
    /// fresh snapshot → back off and surface, never loop.
    fn on_stale(&mut self, i: usize) {
        let now = self.now;
        let ts = &mut self.topics[i];
        ts.needs_snapshot = true;
        ts.clear_queue();
        ts.hydration = None;
        ts.phase = TopicPhase::Bootstrapping;
        if ts.stale_streak >= 1 {
            let err = SyncError::StaleLoop {
                topic: ts.topic.clone(),
                snapshots: ts.stale_streak,
            };
            ts.error = Some(err.clone());
            self.last_error = Some(err);
            let delay = ts.snapshot_backoff.next_delay(&mut self.rng);
            ts.retry_at = Some(now.after(delay));
            ts.retry_kind = topic::RetryKind::Snapshot;
            ts.snapshot = None;
            return;
        }
        self.begin_snapshot(i);
    }

    fn begin_snapshot(&mut self, i: usize) {
        if self.life != Life::Running {
            return;
        }
        if self.fanout {
            // Event logs have no snapshot (a hash resync cannot happen: no hashes in F).
            self.f_restart(i);
            return;
        }
        let conn_id = self.conn.as_ref().map(|c| c.id);
        let ts = &mut self.topics[i];
        ts.needs_snapshot = true;
        ts.phase = TopicPhase::Bootstrapping;
        ts.clear_queue();
        ts.hydration = None;
        ts.resubscribe_pending = false;
        if ts.subscribed_on.is_some() && ts.subscribed_on == conn_id {
            // Stop live pushes for this topic while its snapshot loads.
            if let Some(c) = self.conn.as_mut().filter(|c| c.phase == ConnPhase::Joined) {
                let r = c.next_ref();
                let text =
                    phoenix::encode_unsubscribe(&c.join_ref, &r, std::slice::from_ref(&ts.topic));
                c.pending.insert(r, Pending::Unsubscribe);
                self.actions.push_back(Action::Send { conn: c.id, text });
            }
        }
        ts.subscribed_on = None;
        ts.snapshot = Some(SnapState {
            limit: self.cfg.snapshot_page_limit.max(1),
            ..SnapState::default()
        });
        self.metrics.snapshots += 1;
        self.actions
            .push_back(Action::BeginSnapshot(ts.topic.clone()));
    }

    fn on_snapshot_begun(&mut self, t: &Topic, r: Result<SnapshotGen, StoreError>) {
        let Some(i) = self.topic_idx(t) else { return };
        let Some(snap) = self.topics[i].snapshot.as_mut() else {
            return;
        };
        if snap.generation.is_some() {
            return;
        }
        match r {
            Ok(g) => {
                snap.generation = Some(g);
                self.fetch_snapshot_page(i);
            }
            Err(e) => self.snapshot_failed(i, SyncError::Store(e)),
        }
    }

    fn fetch_snapshot_page(&mut self, i: usize) {
        let Some(token) = self.token.as_ref().map(|t| t.token.clone()) else {
            self.topics[i].snapshot = None;
            self.request_token();
            return;
        };
        let ts = &mut self.topics[i];
        let Some(snap) = ts.snapshot.as_mut() else {
            return;
        };
        let Some(generation) = snap.generation else {
            return;
        };
        snap.fetching = true;
        self.actions.push_back(Action::FetchSnapshotPage {
            topic: ts.topic.clone(),
            generation,
            cursor: snap.cursor.clone(),
            limit: snap.limit,
            token,
        });
    }

    /// Keeps the snapshot pipeline full: the oldest ready page goes to the store when none is
    /// being stored, and the next page is fetched while fewer than
    /// [`topic::SNAPSHOT_PAGES_AHEAD`] wait. The fetch is emitted first, so a driver that
    /// awaits each store in its loop (the browser's) still has the next page on the way.
    fn snapshot_pump(&mut self, i: usize) {
        let ts = &mut self.topics[i];
        let Some(snap) = ts.snapshot.as_mut() else {
            return;
        };
        let Some(generation) = snap.generation else {
            return;
        };
        let mut store = None;
        if !snap.storing {
            if let Some((docs, finish)) = snap.ready.pop_front() {
                snap.storing = true;
                snap.storing_docs = docs.len() as u64;
                store = Some(Action::StoreSnapshotPage {
                    topic: ts.topic.clone(),
                    generation,
                    docs,
                    finish,
                });
            }
        }
        if !snap.fetching && !snap.last_received && snap.ready.len() < topic::SNAPSHOT_PAGES_AHEAD {
            self.fetch_snapshot_page(i);
        }
        if let Some(a) = store {
            self.actions.push_back(a);
        }
    }

    fn snapshot_failed(&mut self, i: usize, err: SyncError) {
        let now = self.now;
        let ts = &mut self.topics[i];
        ts.snapshot = None;
        ts.error = Some(err.clone());
        self.last_error = Some(err);
        let delay = ts.snapshot_backoff.next_delay(&mut self.rng);
        ts.retry_at = Some(now.after(delay));
        ts.retry_kind = topic::RetryKind::Snapshot;
    }

    fn on_snapshot_page(
        &mut self,
        t: &Topic,
        g: SnapshotGen,
        r: Result<SnapshotPage, HttpFailure>,
    ) {
        let Some(i) = self.topic_idx(t) else { return };
        match self.topics[i].snapshot.as_mut() {
            // Only the answer this snapshot is waiting for (not one for an abandoned
            // generation, nor one it stopped waiting for).
            Some(snap) if snap.generation == Some(g) && snap.fetching => snap.fetching = false,
            _ => return,
        }
        let page = match r {
            Ok(p) => p,
            Err(HttpFailure::Decode(crate::protocol::ProtocolError::TooLarge { .. }))
                if self.topics[i]
                    .snapshot
                    .as_ref()
                    .is_some_and(|s| s.limit > 1) =>
            {
                // A page over the body limit (large documents): ask for the same page again
                // with half as many documents, at once — the cursor pins the snapshot.
                if let Some(snap) = self.topics[i].snapshot.as_mut() {
                    snap.limit /= 2;
                }
                self.metrics.decode_errors += 1;
                self.fetch_snapshot_page(i);
                return;
            }
            Err(f) => {
                match f.status() {
                    Some(404) => {
                        // No snapshot route (or unknown topic): resubscribe without a cursor,
                        // keep local docs, accept the replay's first position (§2.4).
                        let ts = &mut self.topics[i];
                        ts.snapshot = None;
                        ts.needs_snapshot = false;
                        ts.window_resync = true;
                        ts.accept_jump = true;
                        ts.phase = TopicPhase::Idle;
                        self.send_subscribe(&[i]);
                    }
                    Some(403) => {
                        // The token does not grant this topic: it fails alone.
                        let ts = &mut self.topics[i];
                        ts.snapshot = None;
                        ts.needs_snapshot = false;
                        ts.phase = TopicPhase::Failed;
                        let err = SyncError::TopicForbidden {
                            topic: ts.topic.clone(),
                        };
                        ts.error = Some(err.clone());
                        self.last_error = Some(err);
                    }
                    Some(401) => {
                        // Like a refused socket upgrade: one fresh token, then surface the
                        // refusal and back off (a token the routes keep refusing must not
                        // turn into a mint-and-retry loop).
                        self.auth_refusals += 1;
                        let err = SyncError::Auth {
                            status: 401,
                            code: None,
                            message: "the snapshot route refused the token".into(),
                        };
                        if self.auth_refusals < 2 {
                            self.topics[i].snapshot = None;
                            self.last_error = Some(err);
                            self.token = None;
                            self.request_token();
                        } else {
                            self.token = None;
                            self.snapshot_failed(i, err);
                        }
                    }
                    Some(410) => {
                        // The pinned snapshot expired: start over (with backoff).
                        self.snapshot_failed(i, f.into_error("snapshot"));
                    }
                    _ => self.snapshot_failed(i, f.into_error("snapshot")),
                }
                return;
            }
        };
        let w = page.snapshot_watermark;
        {
            let Some(snap) = self.topics[i].snapshot.as_mut() else {
                return;
            };
            if snap.pinned.is_some_and(|p| p != w) {
                // Pages disagree about the snapshot's watermark: not one snapshot. Restart.
                self.topics[i].snapshot = None;
                self.begin_snapshot(i);
                return;
            }
            snap.pinned = Some(w);
            snap.cursor = page.next_cursor;
            snap.last_received = snap.cursor.is_none();
            snap.docs += page.docs.len() as u64;
        }
        // The route accepted the token.
        self.auth_refusals = 0;
        self.token_backoff.reset();
        // Verified on arrival, so the store never waits for it.
        let mut docs = Vec::with_capacity(page.docs.len());
        for d in page.docs {
            let payload = hash::into_payload_string(d.payload);
            let verified = hash::matches(&payload, d.payload_hash.as_ref());
            if !verified {
                // Rule 3: the snapshot's own copy mismatches too — keep it, mark it.
                self.metrics.hash_mismatches += 1;
                self.metrics.unverified_docs += 1;
            }
            docs.push(DocWrite {
                doc_key: d.doc_key,
                doc_version: d.doc_version,
                payload: Some(payload),
                payload_hash: d.payload_hash,
                watermark: w,
                verified,
            });
        }
        if let Some(snap) = self.topics[i].snapshot.as_mut() {
            let finish = snap.last_received.then_some(w);
            snap.ready.push_back((docs, finish));
        }
        self.snapshot_pump(i);
    }

    fn on_snapshot_stored(&mut self, t: &Topic, g: SnapshotGen, r: Result<(), StoreError>) {
        let Some(i) = self.topic_idx(t) else { return };
        let Some(snap) = self.topics[i].snapshot.as_mut() else {
            return;
        };
        if snap.generation != Some(g) || !snap.storing {
            // A store of an abandoned generation (restart, pause) finished late.
            return;
        }
        snap.storing = false;
        if let Err(e) = r {
            self.snapshot_failed(i, SyncError::Store(e));
            return;
        }
        snap.stored_docs += snap.storing_docs;
        self.metrics.snapshot_docs += snap.storing_docs;
        if !(snap.last_received && snap.ready.is_empty()) {
            // More pages to store (or to fetch).
            self.snapshot_pump(i);
            return;
        }
        // The finishing page (always stored last) is in: the snapshot is committed.
        let w = snap.pinned.unwrap_or(Watermark::ZERO);
        let docs = snap.docs;
        let ts = &mut self.topics[i];
        ts.snapshot = None;
        ts.needs_snapshot = false;
        ts.committed = w;
        ts.head = Some(ts.head.map_or(w, |h| h.max(w)));
        ts.stale_streak += 1;
        ts.window_resync = false;
        ts.accept_jump = false;
        ts.phase = TopicPhase::Idle;
        ts.error = None;
        self.actions
            .push_back(Action::Notify(Notification::Changes(vec![
                Change::Bootstrapped {
                    topic: t.clone(),
                    watermark: w,
                    docs,
                },
            ])));
        self.send_subscribe(&[i]);
    }

    // ----- batches ---------------------------------------------------------------------

    fn on_batch(&mut self, id: ConnId, batch: UpdateBatch) {
        let UpdateBatch {
            updates,
            head_watermarks,
            ..
        } = batch;
        for hw in &head_watermarks {
            if let Some(i) = self.topic_idx(&hw.topic) {
                let ts = &mut self.topics[i];
                if ts.subscribed_on == Some(id) {
                    ts.head = Some(ts.head.map_or(hw.watermark, |h| h.max(hw.watermark)));
                }
            }
        }
        // A batch covers one topic; group defensively if a server mixes them.
        let mut groups: Vec<(usize, Vec<Update>)> = Vec::new();
        for u in updates {
            let Some(i) = self.topic_idx(&u.topic) else {
                continue;
            };
            match groups.iter_mut().find(|(g, _)| *g == i) {
                Some((_, v)) => v.push(u),
                None => groups.push((i, vec![u])),
            }
        }
        for (i, ups) in groups {
            let ts = &mut self.topics[i];
            // A topic waiting out a store-retry backoff resubscribes from its committed
            // watermark when the timer fires; until then its pushes are dropped.
            if ts.subscribed_on != Some(id)
                || ts.retry_at.is_some()
                || matches!(
                    ts.phase,
                    TopicPhase::Bootstrapping | TopicPhase::Failed | TopicPhase::Idle
                )
            {
                continue;
            }
            if ts.phase == TopicPhase::Subscribing {
                ts.phase = TopicPhase::Replaying;
            }
            if ts.busy() {
                ts.push_queue(ups);
                self.commit_ahead(i);
                continue;
            }
            self.process_updates(i, ups.into_iter().map(Queued::unchecked).collect());
        }
    }

    /// Applies the rules to one topic's updates and emits at most one `Apply`.
    fn process_updates(&mut self, i: usize, ups: Vec<Queued>) {
        let base = self.topics[i].committed;
        self.process_updates_from(i, ups, base);
    }

    /// [`Engine::process_updates`] for a batch that will follow one ending at `expected`.
    fn process_updates_from(&mut self, i: usize, ups: Vec<Queued>, expected: Watermark) {
        let ts = &mut self.topics[i];
        let mut last = expected;
        let mut writes: Vec<DocWrite> = Vec::new();
        let mut hydrate: Vec<usize> = Vec::new();
        let mut follow = FollowUp::None;
        for Queued { update: u, hash_ok } in ups {
            if u.watermark <= last {
                self.metrics.duplicates_skipped += 1;
                continue;
            }
            if u.watermark > last.next() {
                if ts.accept_jump {
                    ts.accept_jump = false;
                } else {
                    if !ts.resubscribe_pending {
                        // A position is missing: commit what is contiguous, then replay.
                        self.metrics.gaps += 1;
                        follow = FollowUp::Resubscribe;
                    }
                    break;
                }
            }
            ts.accept_jump = false;
            if u.deleted {
                writes.push(DocWrite {
                    doc_key: u.doc_key,
                    doc_version: u.doc_version,
                    payload: None,
                    payload_hash: None,
                    watermark: u.watermark,
                    verified: true,
                });
            } else if u.hydration_required {
                hydrate.push(writes.len());
                writes.push(DocWrite {
                    doc_key: u.doc_key,
                    doc_version: u.doc_version,
                    payload: None,
                    payload_hash: u.payload_hash,
                    watermark: u.watermark,
                    verified: true,
                });
            } else {
                let payload = hash::into_payload_string(u.payload);
                let mut verified = true;
                if !hash_ok.unwrap_or_else(|| hash::matches(&payload, u.payload_hash.as_ref())) {
                    self.metrics.hash_mismatches += 1;
                    if ts.hash_resyncs == 0 {
                        // Rule 3: reject, resync the topic by snapshot once.
                        follow = FollowUp::Snapshot;
                        break;
                    }
                    self.metrics.unverified_docs += 1;
                    verified = false;
                }
                writes.push(DocWrite {
                    doc_key: u.doc_key,
                    doc_version: u.doc_version,
                    payload: Some(payload),
                    payload_hash: u.payload_hash,
                    watermark: u.watermark,
                    verified,
                });
            }
            last = u.watermark;
        }
        if follow == FollowUp::Snapshot {
            ts.hash_resyncs += 1;
        }
        if last == expected {
            self.run_follow(i, follow);
            return;
        }
        // While catching up, only the final state of each document is written and notified
        // (apps want the end state plus progress); live batches keep every change.
        let (writes, hydrate) = if ts.phase == TopicPhase::Live {
            (writes, hydrate)
        } else {
            coalesce(writes, hydrate)
        };
        let batch = ApplyBatch {
            topic: ts.topic.clone(),
            expected_watermark: expected,
            new_watermark: last,
            writes,
        };
        if hydrate.is_empty() {
            self.emit_apply(i, batch, follow);
            return;
        }
        let Some(token) = self.token.as_ref().map(|t| t.token.clone()) else {
            self.request_token();
            self.schedule_topic_retry(i, topic::RetryKind::Resubscribe);
            return;
        };
        let ts = &mut self.topics[i];
        for &w in &hydrate {
            self.actions.push_back(Action::FetchDoc {
                topic: ts.topic.clone(),
                doc_key: batch.writes[w].doc_key.clone(),
                token: token.clone(),
            });
        }
        ts.hydration = Some(Hydration {
            batch,
            waiting: hydrate,
            follow,
        });
    }

    fn emit_apply(&mut self, i: usize, batch: ApplyBatch, follow: FollowUp) {
        let ts = &mut self.topics[i];
        let listening = self.change_listeners;
        ts.inflight = Some(Inflight {
            through: batch.new_watermark,
            truncated: None,
            writes: batch.writes.len(),
            changes: batch
                .writes
                .iter()
                .filter(|_| listening)
                .map(|w| match &w.payload {
                    Some(p) => Change::Upsert {
                        topic: ts.topic.clone(),
                        doc_key: w.doc_key.clone(),
                        doc_version: w.doc_version,
                        payload: p.clone(),
                        watermark: w.watermark,
                    },
                    None => Change::Delete {
                        topic: ts.topic.clone(),
                        doc_key: w.doc_key.clone(),
                        watermark: w.watermark,
                    },
                })
                .collect(),
            follow,
        });
        self.actions.push_back(Action::Apply(batch));
    }

    fn on_doc_fetched(&mut self, t: &Topic, key: &DocKey, r: Result<DocResponse, HttpFailure>) {
        let Some(i) = self.topic_idx(t) else { return };
        let Some(h) = self.topics[i].hydration.as_mut() else {
            return;
        };
        let Some(pos) = h
            .waiting
            .iter()
            .position(|&w| h.batch.writes[w].doc_key == *key)
        else {
            return;
        };
        let w = h.waiting.remove(pos);
        match r {
            Ok(doc) => {
                let write = &mut h.batch.writes[w];
                let payload = hash::payload_text(doc.payload.as_ref()).to_owned();
                let hash_ok = hash::matches(&payload, doc.payload_hash.as_ref());
                if doc.doc_version < write.doc_version || !hash_ok {
                    // The doc route is behind the stream or corrupt: retry the batch later.
                    self.metrics.hash_mismatches += u64::from(!hash_ok);
                    self.topics[i].hydration = None;
                    self.schedule_topic_retry(i, topic::RetryKind::Resubscribe);
                    return;
                }
                // §7: a newer version from the doc route is kept (doc_version never regresses).
                write.doc_version = doc.doc_version;
                write.payload_hash = doc.payload_hash;
                write.payload = Some(payload);
                self.metrics.hydrations += 1;
            }
            Err(f) if f.status() == Some(404) => {
                // Deleted since this update was written: its tombstone follows in the log.
                let write = &mut h.batch.writes[w];
                write.payload = None;
                write.payload_hash = None;
            }
            Err(f) => {
                self.last_error = Some(f.into_error("doc"));
                self.topics[i].hydration = None;
                self.schedule_topic_retry(i, topic::RetryKind::Resubscribe);
                return;
            }
        }
        if h.waiting.is_empty() {
            if let Some(h) = self.topics[i].hydration.take() {
                self.emit_apply(i, h.batch, h.follow);
            }
        }
    }

    fn schedule_topic_retry(&mut self, i: usize, kind: topic::RetryKind) {
        let now = self.now;
        let ts = &mut self.topics[i];
        ts.clear_queue();
        let delay = ts.snapshot_backoff.next_delay(&mut self.rng);
        ts.retry_at = Some(now.after(delay));
        ts.retry_kind = kind;
    }

    fn on_applied(&mut self, t: &Topic, r: Result<ApplyOutcome, StoreError>) {
        let Some(i) = self.topic_idx(t) else { return };
        let ts = &mut self.topics[i];
        if ts.discard_applied > 0 {
            // The answer for a commit ahead given up on (its predecessor failed).
            ts.discard_applied -= 1;
            return;
        }
        let Some(inflight) = ts.inflight.take() else {
            return;
        };
        // A commit ahead (already with the store) is the one in flight now.
        ts.inflight = ts.inflight_next.take();
        if r.is_err() && ts.inflight.take().is_some() {
            // It expected this batch's watermark, which was not written: it fails too (its
            // compare-and-set cannot match); its answer is ignored.
            ts.discard_applied += 1;
        }
        let truncated = inflight.truncated;
        match r {
            Ok(outcome) => {
                let ts = &mut self.topics[i];
                ts.committed = outcome.watermark;
                self.metrics.batches_committed += 1;
                self.metrics.updates_applied += inflight.writes as u64;
                let changes: Vec<Change> = inflight
                    .changes
                    .into_iter()
                    .enumerate()
                    .filter(|(k, _)| !outcome.kept_local.contains(k))
                    .map(|(_, c)| c)
                    .collect();
                if !changes.is_empty() {
                    self.actions
                        .push_back(Action::Notify(Notification::Changes(changes)));
                }
                if ts.phase == TopicPhase::Bootstrapping {
                    return;
                }
                self.run_follow(i, inflight.follow);
                self.commit_queued(i);
                if self.fanout {
                    self.f_after_commit(i, truncated);
                } else {
                    // The next group may already be full behind the commit ahead.
                    self.commit_ahead(i);
                }
            }
            Err(StoreError::WatermarkConflict { found, .. }) => {
                self.topics[i].committed = found;
                self.topics[i].clear_queue();
                self.resubscribe(i);
            }
            Err(e) => {
                // Nothing of this batch was written. Surface it and retry from the committed
                // watermark after a backoff (disk may free up, a lock may clear).
                self.last_error = Some(SyncError::Store(e));
                self.topics[i].clear_queue();
                self.schedule_topic_retry(i, topic::RetryKind::Resubscribe);
            }
        }
    }

    /// Group commit: everything that arrived while the previous apply was in flight goes into
    /// the next transaction (coalesced per document in `process_updates`). Live traffic
    /// arrives one batch at a time and commits at once; a replay arrives faster than commits
    /// and so commits in large groups.
    fn commit_queued(&mut self, i: usize) {
        while !self.topics[i].busy() && !self.topics[i].queue.is_empty() {
            let (batches, _) = self.topics[i].next_group(self.cfg.group_commit_max_updates);
            let group = self.topics[i].take_batches(batches);
            self.process_updates(i, group);
        }
    }

    /// Commit ahead ([`EngineConfig::commit_ahead`]): while a replay outruns the store, the
    /// next group is formed as soon as it is full and handed to the store behind the commit in
    /// flight. Only a plain group qualifies — contiguous after that commit, every payload
    /// inline and already verified — so forming it early has no other effect (no gap, no
    /// hydration, no resync) than forming it when the commit ends would have.
    fn commit_ahead(&mut self, i: usize) {
        let max = self.cfg.group_commit_max_updates;
        let ts = &self.topics[i];
        let Some(cur) = ts.inflight.as_ref() else {
            return;
        };
        if !self.cfg.commit_ahead
            || self.fanout
            || ts.phase != TopicPhase::Replaying
            || ts.inflight_next.is_some()
            || ts.hydration.is_some()
            || ts.discard_applied > 0
            || ts.accept_jump
            || cur.follow != FollowUp::None
            || cur.truncated.is_some()
        {
            return;
        }
        // The group `commit_queued` would take.
        let (n_batches, n) = ts.next_group(max);
        if n < max && ts.queued_bytes < QUEUE_BYTE_BUDGET {
            return;
        }
        let mut last = cur.through;
        for q in ts.queue.iter().take(n_batches).flatten() {
            let u = &q.update;
            let plain = u.deleted || (!u.hydration_required && q.hash_ok == Some(true));
            if u.watermark != last.next() || !plain {
                return;
            }
            last = u.watermark;
        }
        let base = cur.through;
        let group = self.topics[i].take_batches(n_batches);
        let cur = self.topics[i].inflight.take();
        self.process_updates_from(i, group, base);
        let ts = &mut self.topics[i];
        ts.inflight_next = ts.inflight.take();
        ts.inflight = cur;
    }

    fn run_follow(&mut self, i: usize, follow: FollowUp) {
        match follow {
            FollowUp::None => {}
            FollowUp::Resubscribe => self.resubscribe(i),
            FollowUp::Snapshot => self.begin_snapshot(i),
        }
    }

    // ----- helpers ---------------------------------------------------------------------

    fn topic_idx(&self, t: &Topic) -> Option<usize> {
        self.topics.iter().position(|ts| ts.topic == *t)
    }

    fn emit_status_if_changed(&mut self) {
        let s = self.status();
        if self.last_status.as_ref() != Some(&s) {
            self.last_status = Some(s.clone());
            self.actions
                .push_back(Action::Notify(Notification::Status(s)));
        }
    }
}

/// Bytes of queued updates (roughly) above which [`Engine::wants_frames`] says no, whatever
/// the update count: large payloads make smaller groups.
const QUEUE_BYTE_BUDGET: usize = 3 << 20;

/// Keeps only the newest write of each document (writes are in watermark order, so the last
/// one per key), preserving order; remaps the indices of writes awaiting hydration. A
/// superseded hydration-required write needs no fetch at all.
fn coalesce(writes: Vec<DocWrite>, hydrate: Vec<usize>) -> (Vec<DocWrite>, Vec<usize>) {
    if writes.len() < 2 {
        return (writes, hydrate);
    }
    let mut last: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::with_capacity(writes.len());
    for (k, w) in writes.iter().enumerate() {
        last.insert(w.doc_key.as_str(), k);
    }
    if last.len() == writes.len() {
        return (writes, hydrate);
    }
    let keep: Vec<bool> = writes
        .iter()
        .enumerate()
        .map(|(k, w)| last.get(w.doc_key.as_str()) == Some(&k))
        .collect();
    drop(last);
    let mut new_index = vec![usize::MAX; writes.len()];
    let mut out = Vec::with_capacity(keep.iter().filter(|k| **k).count());
    for (k, w) in writes.into_iter().enumerate() {
        if keep[k] {
            new_index[k] = out.len();
            out.push(w);
        }
    }
    let hydrate = hydrate
        .into_iter()
        .filter(|&k| keep[k])
        .map(|k| new_index[k])
        .collect();
    (out, hydrate)
}

fn token_error(f: &HttpFailure) -> SyncError {
    match f {
        HttpFailure::Status {
            status: 401,
            code,
            message,
            ..
        } => SyncError::Auth {
            status: 401,
            code: code.clone(),
            message: message.clone(),
        },
        HttpFailure::Status {
            status: 403,
            code,
            message,
            ..
        } => SyncError::Forbidden {
            status: 403,
            code: code.clone(),
            message: message.clone(),
        },
        HttpFailure::Status {
            status: 400 | 422,
            code,
            message,
            ..
        } => SyncError::InvalidRequest {
            code: code.clone(),
            message: message.clone(),
        },
        other => other.clone().into_error("token"),
    }
}
