//! Dialect F (PROTOCOL.md §6): one WebSocket per topic, or the HTTP poll route.
//!
//! Messages go through the same apply path as dialect P (`process_updates` → group commit →
//! `on_applied`): each message becomes the document `<sequence>` of version `sequence`, so
//! idempotence by `(topic, seq)`, gap detection and commits are shared. What differs lives
//! here: per-topic connections, resuming from the received position after a
//! `slow_consumer_evicted` (normal progress during catch-up), `stale_cursor` → a reported
//! truncation instead of a snapshot, the poll cadence (server minimum interval, `429`), and
//! the WebSocket → poll fallback.

use std::time::Duration;

use super::{
    Action, Backoff, Change, ConnId, Engine, FanoutTransport, Life, Millis, TopicPhase, Watermark,
};
use crate::engine::topic::{FollowUp, Inflight, Queued};
use crate::error::SyncError;
use crate::protocol::fanout::{self, FanoutFrame, PollFailure, PollPage, StaleDetails};
use crate::protocol::{Topic, Update};
use crate::store::ApplyBatch;

/// Consecutive failed WebSocket opens after which [`FanoutTransport::Auto`] polls instead.
const WS_FAILURES_BEFORE_POLL: u32 = 2;

/// Per-topic dialect-F state (index-aligned with `Engine::topics`).
#[derive(Debug)]
pub(super) struct FanTopic {
    /// This topic uses the poll route (chosen, or fallen back to).
    pub on_poll: bool,
    /// The topic's WebSocket, while one exists.
    pub conn: Option<ConnId>,
    /// The WebSocket upgrade succeeded.
    pub open: bool,
    pub opened_at: Millis,
    /// Consecutive WebSocket opens that failed.
    pub ws_failures: u32,
    /// The current/last connection (or poll) delivered a new message.
    pub progressed: bool,
    /// The last connection ended with `slow_consumer_evicted`.
    pub evicted: bool,
    /// `recommended_reconnect_backoff_ms` of the last `hello` / poll page.
    pub hint: Option<Duration>,
    pub reconnect_at: Option<Millis>,
    pub backoff: Backoff,
    pub poll_inflight: bool,
    /// The poll in flight only learns the head for a WebSocket topic.
    pub poll_is_probe: bool,
    pub next_poll_at: Option<Millis>,
    pub last_poll_at: Option<Millis>,
    /// The last poll was answered with a page.
    pub poll_ok: bool,
    /// A head probe is wanted for the WebSocket topic.
    pub want_probe: bool,
    /// The head cannot be learnt (the poll route is missing): live once the socket is open.
    pub no_probe: bool,
    pub limit: u32,
    /// A truncation to commit: the resume cursor the server can serve.
    pub truncation: Option<Watermark>,
    /// Token generation the last request used (a refusal of an older token is not counted).
    pub token_gen: u64,
    /// Last sign of life on the open socket (opened, a frame, a pong).
    pub last_rx: Millis,
    /// When to ping the open socket if it stays silent until then.
    pub ping_at: Millis,
}

impl FanTopic {
    pub fn new(engine_cfg: &super::EngineConfig) -> Self {
        FanTopic {
            on_poll: engine_cfg.fanout_transport == FanoutTransport::Poll,
            conn: None,
            open: false,
            opened_at: Millis(0),
            ws_failures: 0,
            progressed: false,
            evicted: false,
            hint: None,
            reconnect_at: None,
            backoff: Backoff::new(engine_cfg.backoff_base, engine_cfg.backoff_cap),
            poll_inflight: false,
            poll_is_probe: false,
            next_poll_at: None,
            last_poll_at: None,
            poll_ok: false,
            want_probe: false,
            no_probe: false,
            limit: engine_cfg.poll_limit.max(1),
            truncation: None,
            token_gen: 0,
            last_rx: Millis(0),
            ping_at: Millis(0),
        }
    }

    /// Forget everything network-bound (pause, shutdown, dialect switch).
    fn drop_network(&mut self) -> Option<ConnId> {
        self.open = false;
        self.reconnect_at = None;
        self.next_poll_at = None;
        self.poll_inflight = false;
        self.poll_ok = false;
        self.want_probe = false;
        self.conn.take()
    }
}

impl Engine {
    /// The topic whose dialect-F socket is `id`.
    pub(super) fn f_conn_topic(&self, id: ConnId) -> Option<usize> {
        if !self.fanout {
            return None;
        }
        self.fan.iter().position(|f| f.conn == Some(id))
    }

    /// Auto dialect: the Phoenix socket route answered 404, so this server speaks dialect F.
    pub(super) fn switch_to_fanout(&mut self) {
        self.fanout = true;
        self.drop_connections();
        self.reconnect_at = None;
        self.reconnect_backoff.reset();
        self.last_error = None;
        for ts in &mut self.topics {
            ts.detach();
            // Event logs have no snapshot: start from the committed position.
            ts.needs_snapshot = false;
        }
        self.f_proceed();
    }

    /// Closes every topic socket and stops polling.
    pub(super) fn f_drop_all(&mut self) {
        for f in &mut self.fan {
            if let Some(id) = f.drop_network() {
                self.actions.push_back(Action::Close(id));
            }
        }
    }

    /// Opens sockets / schedules polls for every topic that needs one.
    pub(super) fn f_proceed(&mut self) {
        if self.life != Life::Running || self.bound != super::Bound::Yes {
            return;
        }
        if self.token.as_ref().is_none_or(|t| t.expires_at <= self.now) {
            self.request_token();
            return;
        }
        let mut opening = self
            .fan
            .iter()
            .filter(|f| f.conn.is_some() && !f.open)
            .count();
        for i in 0..self.topics.len() {
            let ts = &self.topics[i];
            let f = &self.fan[i];
            if ts.phase == TopicPhase::Failed || f.truncation.is_some() || ts.retry_at.is_some() {
                continue;
            }
            if (f.on_poll || f.want_probe) && !f.poll_inflight && f.next_poll_at.is_none() {
                let now = self.now;
                self.f_schedule_poll(i, now);
            }
            let f = &self.fan[i];
            if f.on_poll {
                continue;
            }
            if f.conn.is_none() && f.reconnect_at.is_none() && opening < self.cfg.fanout_max_opening
            {
                self.f_connect(i);
                opening += 1;
            }
        }
    }

    fn f_token(&mut self) -> Option<crate::protocol::token::SyncToken> {
        match self.token.as_ref().filter(|t| t.expires_at > self.now) {
            Some(t) => Some(t.token.clone()),
            None => {
                self.request_token();
                None
            }
        }
    }

    fn f_connect(&mut self, i: usize) {
        let Some(token) = self.f_token() else { return };
        let id = self.new_conn_id();
        if self.metrics.connects > 0 {
            self.metrics.reconnects += 1;
        }
        self.metrics.connects += 1;
        let after_seq = self.received_through(i);
        let now = self.now;
        let gen = self.token_gen;
        let f = &mut self.fan[i];
        let probe = !(f.no_probe || f.evicted && self.topics[i].head.is_some());
        f.conn = Some(id);
        f.open = false;
        f.opened_at = now;
        f.progressed = false;
        f.evicted = false;
        f.reconnect_at = None;
        f.token_gen = gen;
        let ts = &mut self.topics[i];
        if ts.phase == TopicPhase::Idle {
            ts.phase = TopicPhase::Subscribing;
            ts.replay_from = ts.committed;
        }
        self.actions.push_back(Action::ConnectTopic {
            conn: id,
            topic: ts.topic.clone(),
            after_seq,
            limit: self.cfg.replay_batch_size,
            token,
        });
        if probe {
            // The WebSocket tells no head (§6.1): learn it with a one-message poll.
            self.fan[i].want_probe = true;
            self.f_schedule_poll(i, now);
        }
    }

    /// Plans the next poll of topic `i` at `at` or later (never closer than
    /// `poll_min_interval` to the previous one).
    fn f_schedule_poll(&mut self, i: usize, at: Millis) {
        let min = self.cfg.poll_min_interval;
        let f = &mut self.fan[i];
        let earliest = f.last_poll_at.map_or(at, |l| l.after(min));
        let due = at.max(earliest);
        f.next_poll_at = Some(due);
        if due <= self.now && !f.poll_inflight {
            f.next_poll_at = None;
            self.f_send_poll(i);
        }
    }

    fn f_send_poll(&mut self, i: usize) {
        let f = &self.fan[i];
        let probe = !f.on_poll;
        if f.poll_inflight || (probe && !f.want_probe) {
            return;
        }
        // The one place a poll leaves: never sooner than the minimum interval after the
        // previous one, whatever scheduled it (retries after errors included — the server
        // may have counted a poll whose answer was lost).
        if let Some(earliest) = f.last_poll_at.map(|l| l.after(self.cfg.poll_min_interval)) {
            if self.now < earliest {
                self.fan[i].next_poll_at = Some(earliest);
                return;
            }
        }
        let Some(token) = self.f_token() else { return };
        let after_seq = if probe {
            self.topics[i].committed
        } else {
            self.received_through(i)
        };
        let now = self.now;
        let gen = self.token_gen;
        let f = &mut self.fan[i];
        f.poll_inflight = true;
        f.poll_is_probe = probe;
        f.want_probe = false;
        f.last_poll_at = Some(now);
        f.next_poll_at = None;
        f.token_gen = gen;
        let limit = if probe { 1 } else { f.limit };
        self.metrics.polls += 1;
        let ts = &mut self.topics[i];
        if ts.phase == TopicPhase::Idle {
            ts.phase = TopicPhase::Subscribing;
            ts.replay_from = ts.committed;
        }
        self.actions.push_back(Action::Poll {
            topic: ts.topic.clone(),
            after_seq,
            limit,
            token,
        });
    }

    /// The highest position received without a hole: committed, in flight or queued, or a
    /// truncation's resume point. Reconnects ask for what comes after it.
    pub(super) fn received_through(&self, i: usize) -> Watermark {
        let ts = &self.topics[i];
        let mut w = ts.committed;
        if let Some(inf) = &ts.inflight {
            w = w.max(inf.through);
        }
        if let Some(h) = &ts.hydration {
            w = w.max(h.batch.new_watermark);
        }
        for u in ts.queue.iter().flatten().map(|q| &q.update) {
            if u.watermark == w.next() {
                w = u.watermark;
            } else if u.watermark > w {
                break;
            }
        }
        if let Some(t) = self.fan[i].truncation {
            w = w.max(t);
        }
        w
    }

    // ----- socket events ---------------------------------------------------------------

    pub(super) fn f_on_connected(&mut self, i: usize) {
        let current = self.fan[i].token_gen == self.token_gen;
        self.f_alive(i);
        let f = &mut self.fan[i];
        f.open = true;
        f.ws_failures = 0;
        if current {
            self.auth_refusals = 0;
        }
        self.f_check_live(i);
        // Another topic may have been waiting for an opening slot.
        self.f_proceed();
    }

    pub(super) fn f_on_connect_failed(&mut self, i: usize, f: super::HttpFailure) {
        self.fan[i].conn = None;
        self.fan[i].open = false;
        self.fan[i].want_probe = false;
        let status = f.status();
        match status {
            Some(401) => self.f_refused(i),
            Some(403) => {
                let code = match &f {
                    super::HttpFailure::Status { code, .. } => code.clone(),
                    _ => None,
                };
                self.f_forbidden(i, code.as_deref().unwrap_or("forbidden"));
            }
            _ => {
                self.last_error = Some(f.into_error("fanout socket"));
                let fan = &mut self.fan[i];
                fan.ws_failures += 1;
                if self.cfg.fanout_transport == FanoutTransport::Auto
                    && fan.ws_failures >= WS_FAILURES_BEFORE_POLL
                {
                    // A proxy (or the server) will not let the WebSocket through: poll.
                    fan.on_poll = true;
                    fan.reconnect_at = None;
                    let now = self.now;
                    self.f_schedule_poll(i, now);
                } else {
                    self.f_backoff_reconnect(i);
                }
            }
        }
        self.f_proceed();
    }

    pub(super) fn f_on_disconnected(&mut self, i: usize, reason: String) {
        let f = &mut self.fan[i];
        f.conn = None;
        f.open = false;
        if self.life != Life::Running || f.truncation.is_some() {
            return;
        }
        if f.progressed {
            // Progress (an eviction during catch-up is normal progress, §6.1): resume at
            // once after an eviction, after the server's hint otherwise.
            f.backoff.reset();
            let delay = if f.evicted {
                Duration::ZERO
            } else {
                f.hint.unwrap_or(self.cfg.backoff_base)
            };
            f.reconnect_at = Some(self.now.after(delay));
        } else {
            self.last_error = Some(SyncError::Transport(reason));
            self.f_backoff_reconnect(i);
        }
        let ts = &mut self.topics[i];
        if ts.phase == TopicPhase::Live {
            ts.phase = TopicPhase::Idle;
        }
        self.f_proceed();
    }

    fn f_backoff_reconnect(&mut self, i: usize) {
        let f = &mut self.fan[i];
        let d = f.backoff.next_delay(&mut self.rng);
        let d = f.hint.map_or(d, |h| d.max(h));
        f.reconnect_at = Some(self.now.after(d));
    }

    /// A sign of life on topic `i`'s socket: the silence clock restarts.
    pub(super) fn f_alive(&mut self, i: usize) {
        let now = self.now;
        let f = &mut self.fan[i];
        f.last_rx = now;
        f.ping_at = now.after(self.cfg.heartbeat_interval);
    }

    /// Liveness of an open topic socket (the protocol has no client messages, but the runtime
    /// answers WebSocket pings): after `heartbeat_interval` of silence a ping, then one per
    /// interval; after `dead_after` without any frame or pong the socket is closed and resumed
    /// like any lost connection — a half-open TCP connection would otherwise look like a quiet
    /// topic forever.
    fn f_check_alive(&mut self, i: usize) {
        let now = self.now;
        let f = &mut self.fan[i];
        let Some(id) = f.conn.filter(|_| f.open) else {
            return;
        };
        if now.since(f.last_rx) >= self.cfg.dead_after {
            self.actions.push_back(Action::Close(id));
            // Milliseconds as an integer: no float formatting in the web package for one message.
            let ms = self.cfg.dead_after.as_millis();
            self.f_on_disconnected(
                i,
                format!("connection dead: fanout socket silent for {ms} ms (no frame, no pong)"),
            );
        } else if now >= f.ping_at {
            f.ping_at = now.after(self.cfg.heartbeat_interval);
            self.actions.push_back(Action::Ping(id));
        }
    }

    pub(super) fn f_on_frame(&mut self, i: usize, text: &str) {
        self.f_alive(i);
        self.count_frame(text);
        let frame = match fanout::decode_frame(text, &self.cfg.decode_limits) {
            Ok(fr) => fr,
            Err(e) => return self.drop_bad_frame(e),
        };
        match frame {
            FanoutFrame::Hello {
                recommended_reconnect_backoff_ms,
                ..
            } => {
                if let Some(ms) = recommended_reconnect_backoff_ms {
                    self.fan[i].hint = Some(Duration::from_millis(ms.min(60_000)));
                }
                self.f_check_live(i);
            }
            FanoutFrame::Message(m) => {
                if m.topic != self.topics[i].topic {
                    self.metrics.decode_errors += 1;
                    return;
                }
                self.f_accept(i, vec![m.into_update()]);
            }
            FanoutFrame::StaleCursor(d) => self.f_stale(i, &d),
            FanoutFrame::Error { code, message } => {
                if code == "slow_consumer_evicted" {
                    self.metrics.slow_consumer += 1;
                    self.fan[i].evicted = true;
                } else {
                    self.last_error = Some(SyncError::Server { code, message });
                }
            }
            _ => {}
        }
    }

    /// New messages for topic `i` (socket or poll page).
    fn f_accept(&mut self, i: usize, ups: Vec<Update>) {
        let received = self.received_through(i);
        let ts = &mut self.topics[i];
        if let Some(max) = ups.iter().map(|u| u.watermark).max() {
            ts.head = Some(ts.head.map_or(max, |h| h.max(max)));
            if max > received {
                self.fan[i].progressed = true;
            }
        }
        if ts.phase == TopicPhase::Subscribing {
            ts.phase = TopicPhase::Replaying;
        }
        if ts.busy() || self.fan[i].truncation.is_some() {
            ts.push_queue(ups);
            return;
        }
        self.process_updates(i, ups.into_iter().map(Queued::unchecked).collect());
    }

    // ----- poll answers ----------------------------------------------------------------

    pub(super) fn f_on_polled(&mut self, t: &Topic, r: Result<PollPage, PollFailure>) {
        let Some(i) = self.topic_idx(t) else { return };
        if !self.fanout || !self.fan[i].poll_inflight || self.life != Life::Running {
            return;
        }
        let now = self.now;
        let probe = self.fan[i].poll_is_probe;
        let polling = self.fan[i].on_poll;
        self.fan[i].poll_inflight = false;
        let current = self.fan[i].token_gen == self.token_gen;
        match r {
            Ok(page) => {
                if current {
                    self.auth_refusals = 0;
                }
                let f = &mut self.fan[i];
                f.poll_ok = true;
                if let Some(ms) = page.recommended_reconnect_backoff_ms {
                    f.hint = Some(Duration::from_millis(ms.min(60_000)));
                }
                if let Some(h) = page.head_cursor.map(Watermark) {
                    let ts = &mut self.topics[i];
                    if h < ts.committed {
                        // The server lost or reset its log (§6.1): keep what we have and
                        // say so; new messages beyond our position still arrive.
                        let err = SyncError::Server {
                            code: "cursor_ahead_of_head".into(),
                            message: format!(
                                "{}: server head {} is below the committed sequence {}",
                                ts.topic, h, ts.committed
                            ),
                        };
                        ts.error = Some(err.clone());
                        self.last_error = Some(err);
                    }
                    ts.head = Some(ts.head.map_or(h, |x| x.max(h)));
                }
                let full = !page.replay_complete && !page.messages.is_empty();
                if !page.messages.is_empty() {
                    let ups: Vec<Update> = page
                        .messages
                        .into_iter()
                        .filter(|m| m.topic == self.topics[i].topic)
                        .map(fanout::FanoutMessage::into_update)
                        .collect();
                    self.f_accept(i, ups);
                }
                if self.fan[i].on_poll {
                    self.fan[i].backoff.reset();
                    if full {
                        self.f_schedule_poll(i, now);
                    } else {
                        let at = now.after(self.cfg.poll_interval);
                        self.f_schedule_poll(i, at);
                    }
                }
                self.f_check_live(i);
            }
            Err(PollFailure::Unauthorized { reason }) => {
                self.last_error = Some(SyncError::Auth {
                    status: 401,
                    code: reason,
                    message: "the fanout poll route refused the token".into(),
                });
                self.f_refused(i);
                if probe {
                    self.fan[i].want_probe = true;
                }
                self.f_proceed();
            }
            Err(PollFailure::Forbidden { code, .. }) => self.f_forbidden(i, &code),
            Err(PollFailure::Evicted(_)) => {
                // Normal progress during catch-up: resume from our position once the server's
                // interval allows (a suggested cursor is never used to skip or go back).
                self.metrics.slow_consumer += 1;
                if polling {
                    self.f_schedule_poll(i, now);
                } else if probe {
                    // The head is still unknown; ask again once the socket has caught up a bit.
                    self.fan[i].want_probe = true;
                    let at = now.after(self.cfg.poll_interval);
                    self.f_schedule_poll(i, at);
                }
            }
            Err(PollFailure::Stale(d)) => self.f_stale(i, &d),
            Err(PollFailure::RateLimited { retry_after_ms }) => {
                // A refused poll counts as a poll: wait the whole `retry_after_ms`.
                self.metrics.rate_limited += 1;
                let f = &mut self.fan[i];
                f.last_poll_at = Some(now);
                let at = now.after(Duration::from_millis(retry_after_ms.min(60_000)));
                if probe {
                    f.want_probe = true;
                }
                f.next_poll_at = Some(at);
            }
            Err(PollFailure::TooLarge) => {
                let f = &mut self.fan[i];
                f.limit = (f.limit / 2).max(1);
                if probe {
                    f.want_probe = true;
                }
                self.f_schedule_poll(i, now);
            }
            Err(other) => {
                let missing_route = matches!(other, PollFailure::Status { status: 404, .. });
                let err = match other {
                    PollFailure::InvalidRequest(m) => SyncError::InvalidRequest {
                        code: Some("invalid_request".into()),
                        message: m,
                    },
                    PollFailure::Status { status, code } => SyncError::Http {
                        route: "fanout poll",
                        status,
                        code,
                        message: String::new(),
                    },
                    PollFailure::Transport(m) => SyncError::Transport(m),
                    PollFailure::Decode(e) => SyncError::Protocol(e),
                    _ => SyncError::Transport("fanout poll failed".into()),
                };
                self.last_error = Some(err);
                if !polling && missing_route {
                    // No poll route, so no head for this WebSocket topic: report it live once
                    // its socket is open rather than never.
                    self.fan[i].no_probe = true;
                    self.f_check_live(i);
                } else if !polling {
                    // A failed head probe is asked again after the backoff.
                    self.fan[i].want_probe = true;
                    let d = self.fan[i].backoff.next_delay(&mut self.rng);
                    self.f_schedule_poll(i, now.after(d));
                } else {
                    let d = self.fan[i].backoff.next_delay(&mut self.rng);
                    self.f_schedule_poll(i, now.after(d));
                }
            }
        }
    }

    /// A token was refused by a dialect-F route: fetch a fresh one once; a fresh token
    /// refused too is surfaced and minted no faster than the token backoff.
    fn f_refused(&mut self, i: usize) {
        if self.fan[i].token_gen != self.token_gen {
            // An older token was refused; the current one was not (yet): the caller retries
            // with it. Fetching yet another token here would ping-pong forever when two
            // requests of one token are refused one after the other.
            return;
        }
        if self.token.is_none() {
            // That token was already refused through another request: one refusal per token,
            // and its refresh is under way.
            self.request_token();
            return;
        }
        self.auth_refusals += 1;
        self.refused_token = self.token.take().map(|t| t.token);
        self.last_error = Some(SyncError::Auth {
            status: 401,
            code: None,
            message: "the fanout route refused the token".into(),
        });
        self.request_token();
    }

    fn f_forbidden(&mut self, i: usize, code: &str) {
        if let Some(id) = self.fan[i].drop_network() {
            self.actions.push_back(Action::Close(id));
        }
        let ts = &mut self.topics[i];
        let err = if code == "forbidden_topic" {
            SyncError::TopicForbidden {
                topic: ts.topic.clone(),
            }
        } else {
            SyncError::Forbidden {
                status: 403,
                code: Some(code.to_owned()),
                message: format!("{}: refused by the fanout route", ts.topic),
            }
        };
        ts.phase = TopicPhase::Failed;
        ts.error = Some(err.clone());
        ts.clear_queue();
        self.last_error = Some(err);
        self.f_check_catch_up();
    }

    // ----- stale cursor → truncation ---------------------------------------------------

    fn f_stale(&mut self, i: usize, d: &StaleDetails) {
        self.metrics.stale_cursors += 1;
        let through = self.received_through(i);
        let to = Watermark(d.resume_cursor());
        if let Some(h) = d.head_cursor.map(Watermark) {
            let ts = &mut self.topics[i];
            ts.head = Some(ts.head.map_or(h, |x| x.max(h)));
        }
        if let Some(id) = self.fan[i].conn.take() {
            self.fan[i].open = false;
            self.actions.push_back(Action::Close(id));
        }
        if to <= through {
            // Nothing we still need is gone (the server moved its floor to our position):
            // just come back.
            self.f_backoff_reconnect(i);
            return;
        }
        self.fan[i].truncation = Some(to);
        self.fan[i].next_poll_at = None;
        self.f_flush(i);
    }

    /// Commits what is queued, then a pending truncation, when the topic is idle.
    fn f_flush(&mut self, i: usize) {
        self.commit_queued(i);
        let Some(to) = self.fan[i].truncation else {
            return;
        };
        let ts = &mut self.topics[i];
        if ts.busy() {
            return;
        }
        if to <= ts.committed {
            self.fan[i].truncation = None;
            self.f_proceed();
            return;
        }
        let from = ts.committed.next();
        let topic = ts.topic.clone();
        ts.inflight = Some(Inflight {
            writes: 0,
            changes: vec![Change::Truncated {
                topic: topic.clone(),
                from,
                to,
            }],
            follow: FollowUp::None,
            through: to,
            truncated: Some((from, to)),
        });
        self.actions.push_back(Action::Apply(ApplyBatch {
            topic,
            expected_watermark: ts.committed,
            new_watermark: to,
            writes: Vec::new(),
        }));
    }

    /// After a successful commit of topic `i`.
    pub(super) fn f_after_commit(&mut self, i: usize, truncated: Option<(Watermark, Watermark)>) {
        if let Some((from, to)) = truncated {
            self.fan[i].truncation = None;
            self.metrics.truncated_messages += to.get().saturating_sub(from.get()) + 1;
        }
        self.f_flush(i);
        self.f_check_live(i);
        if truncated.is_some() {
            self.f_proceed();
        }
    }

    /// Gap, store conflict or retry: start the topic's stream again from its position.
    pub(super) fn f_restart(&mut self, i: usize) {
        if let Some(id) = self.fan[i].conn.take() {
            self.actions.push_back(Action::Close(id));
        }
        let f = &mut self.fan[i];
        f.open = false;
        f.reconnect_at = None;
        if f.on_poll && !f.poll_inflight {
            f.next_poll_at = None;
        }
        let ts = &mut self.topics[i];
        ts.clear_queue();
        ts.hydration = None;
        self.f_flush(i);
        self.f_proceed();
    }

    /// Live once everything up to the known head is committed.
    fn f_check_live(&mut self, i: usize) {
        let f = &self.fan[i];
        let connected = f.open || (f.on_poll && f.poll_ok);
        let ts = &mut self.topics[i];
        if !connected
            || !matches!(ts.phase, TopicPhase::Subscribing | TopicPhase::Replaying)
            || ts.busy()
            || !ts.queue.is_empty()
            || f.truncation.is_some()
        {
            return;
        }
        let caught_up = match ts.head {
            Some(h) => ts.committed >= h,
            None => f.no_probe && f.open,
        };
        if caught_up && !(f.want_probe || (f.poll_inflight && f.poll_is_probe)) {
            ts.phase = TopicPhase::Live;
            ts.stale_streak = 0;
            if !matches!(ts.error, Some(SyncError::Server { .. })) {
                ts.error = None;
            }
            self.f_check_catch_up();
        }
    }

    fn f_check_catch_up(&mut self) {
        if self.metrics.catch_up_ms.is_none()
            && self.topics.iter().all(super::topic::TopicState::is_settled)
        {
            if let Some(s) = self.started_at {
                self.metrics.catch_up_ms = Some(self.now.since(s).as_millis() as u64);
            }
        }
    }

    // ----- timers ----------------------------------------------------------------------

    pub(super) fn f_on_timer(&mut self) {
        let now = self.now;
        for i in 0..self.fan.len() {
            if self.fan[i].reconnect_at.is_some_and(|t| t <= now) {
                self.fan[i].reconnect_at = None;
            }
            let f = &self.fan[i];
            if let Some(id) = f.conn {
                if !f.open && now.since(f.opened_at) >= self.cfg.connect_timeout {
                    self.actions.push_back(Action::Close(id));
                    self.f_on_connect_failed(
                        i,
                        super::HttpFailure::Transport("fanout socket open timed out".into()),
                    );
                }
            }
            if self.fan[i].next_poll_at.is_some_and(|t| t <= now) && !self.fan[i].poll_inflight {
                self.fan[i].next_poll_at = None;
                self.f_send_poll(i);
            }
            self.f_check_alive(i);
        }
        self.f_proceed();
    }

    /// Deadlines of the dialect-F machinery.
    pub(super) fn f_deadlines(&self) -> Option<Millis> {
        let mut t: Option<Millis> = None;
        for f in &self.fan {
            for m in [
                f.reconnect_at,
                f.next_poll_at.filter(|_| !f.poll_inflight),
                f.conn
                    .filter(|_| !f.open)
                    .map(|_| f.opened_at.after(self.cfg.connect_timeout)),
                // An open socket: its next ping, and when its silence means it is dead.
                f.conn
                    .filter(|_| f.open)
                    .map(|_| f.ping_at.min(f.last_rx.after(self.cfg.dead_after))),
            ]
            .into_iter()
            .flatten()
            {
                t = Some(t.map_or(m, |x| x.min(m)));
            }
        }
        t
    }

    /// The network changed: retry every socket now, and the WebSocket of topics that fell
    /// back to polling.
    pub(super) fn f_network_changed(&mut self) {
        let auto = self.cfg.fanout_transport == FanoutTransport::Auto;
        for f in &mut self.fan {
            f.backoff.reset();
            f.reconnect_at = None;
            if auto && f.on_poll {
                f.on_poll = false;
                f.ws_failures = 0;
                f.next_poll_at = None;
            }
        }
        self.f_proceed();
    }

    /// Connection-level state for the status.
    pub(super) fn f_state(&self) -> (bool, bool) {
        let connected = self.fan.iter().any(|f| f.open || (f.on_poll && f.poll_ok));
        let waiting = self
            .fan
            .iter()
            .any(|f| f.reconnect_at.is_some() || f.next_poll_at.is_some());
        (connected, waiting)
    }

    /// `"poll"` when a topic polls.
    pub(super) fn f_transport(&self) -> &'static str {
        if self
            .fan
            .iter()
            .zip(&self.topics)
            .any(|(f, t)| f.on_poll && t.phase != TopicPhase::Failed)
        {
            "poll"
        } else {
            "websocket"
        }
    }
}
