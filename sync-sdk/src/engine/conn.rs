//! One Phoenix socket as the engine tracks it: phase, refs, heartbeats.

use std::collections::HashMap;
use std::time::Duration;

use super::{ConnId, EngineConfig, Millis};
use crate::protocol::Topic;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnPhase {
    /// `Connect` issued, socket not open yet.
    Opening,
    /// Socket open, `phx_join` sent.
    Joining,
    /// Channel joined.
    Joined,
}

/// What a ref we sent was for, so its reply can be understood.
#[derive(Debug, Clone)]
pub(super) enum Pending {
    Join,
    Subscribe(Vec<Topic>),
    Unsubscribe,
    Heartbeat,
}

#[derive(Debug)]
pub(super) struct Conn {
    pub id: ConnId,
    pub phase: ConnPhase,
    pub join_ref: String,
    next_ref: u64,
    pub opened_at: Millis,
    pub joined_at: Option<Millis>,
    pub last_rx: Millis,
    pub pending: HashMap<String, Pending>,
    pub hb_outstanding: u32,
    pub next_hb_at: Millis,
}

impl Conn {
    pub fn new(id: ConnId, now: Millis) -> Self {
        // Refs are strings of increasing integers; the join's ref is the join_ref (§7).
        Conn {
            id,
            phase: ConnPhase::Opening,
            join_ref: "1".to_owned(),
            next_ref: 2,
            opened_at: now,
            joined_at: None,
            last_rx: now,
            pending: HashMap::new(),
            hb_outstanding: 0,
            next_hb_at: Millis(u64::MAX),
        }
    }

    pub fn next_ref(&mut self) -> String {
        let r = self.next_ref;
        self.next_ref += 1;
        r.to_string()
    }

    /// Joined and up for at least `stable_after`.
    pub fn was_stable(&self, now: Millis, stable_after: Duration) -> bool {
        self.joined_at.is_some_and(|j| now.since(j) >= stable_after)
    }

    /// The next moment something about this connection must be checked.
    pub fn deadline(&self, cfg: &EngineConfig) -> Millis {
        match self.phase {
            ConnPhase::Opening | ConnPhase::Joining => self.opened_at.after(cfg.connect_timeout),
            ConnPhase::Joined => self.next_hb_at.min(self.last_rx.after(cfg.dead_after)),
        }
    }
}
