//! Fault switches for tests and the demo (`POST /dev/faults`).

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};

/// `force_stale`: make a topic stale once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForceStale {
    /// Topic to make stale.
    pub topic: String,
    /// Also push `stale_cursor` now to every socket subscribed to the topic and drop the
    /// topic from their subscriptions.
    #[serde(default)]
    pub push: bool,
    /// Reason code (default `retention_floor_breach`).
    #[serde(default)]
    pub reason: Option<String>,
}

/// A fault request: every field optional; present fields are applied, absent ones untouched.
/// The same JSON is accepted by `POST /dev/faults`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Clear every switch first.
    #[serde(default)]
    pub reset: bool,
    /// Close the next socket (any socket) abruptly after N more outbound frames; `null`/absent
    /// leaves it as is, a negative number disarms it.
    #[serde(default)]
    pub drop_after_frames: Option<i64>,
    /// Send the next `sync:update_batch` (of any socket) twice.
    #[serde(default)]
    pub duplicate_next_batch: Option<bool>,
    /// Delay before every outbound frame, in milliseconds (0 = off).
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Make the next subscribe of a topic with `resume_after` stale (once).
    #[serde(default)]
    pub force_stale: Option<ForceStale>,
    /// One-shot: every open socket's token counts as expired now.
    #[serde(default)]
    pub expire_tokens: bool,
    /// One-shot: close every socket abruptly (logs are kept).
    #[serde(default)]
    pub restart: bool,
    /// Join replies `upgrade_required`.
    #[serde(default)]
    pub upgrade_required: Option<bool>,
    /// Snapshot route answers 404 for every topic.
    #[serde(default)]
    pub snapshot_route_disabled: Option<bool>,
    /// Doc (hydration) route answers 404 for every doc.
    #[serde(default)]
    pub doc_route_disabled: Option<bool>,
    /// Every snapshot page answers 410 (snapshot expired).
    #[serde(default)]
    pub snapshot_expired: Option<bool>,
    /// Token route answers 503 `sync_token_unavailable`.
    #[serde(default)]
    pub token_unavailable: Option<bool>,
    /// Send every batch and error push a second time as `sync:frame`.
    #[serde(default)]
    pub legacy_sync_frame: Option<bool>,
    /// Hold the next `sync:update_batch` (of any socket) and send it after that socket's next
    /// frame: the client sees two batches out of order.
    #[serde(default)]
    pub reorder_next_batch: Option<bool>,
    /// The token route mints tokens whose signature is tampered with (rejected at upgrade).
    #[serde(default)]
    pub tamper_tokens: Option<bool>,
    /// The token route mints tokens that are already expired (rejected at upgrade).
    #[serde(default)]
    pub expired_tokens: Option<bool>,
    /// Dialect F: the WS route answers every upgrade with `502` and a plain-text body (a
    /// proxy that blocks WebSockets); the poll route is unaffected.
    #[serde(default)]
    pub fanout_ws_blocked: Option<bool>,
    /// Dialect F: the next N requests (poll or upgrade) answer 401 `token_expired`
    /// (replaces the remaining count; 0 disarms).
    #[serde(default)]
    pub fanout_reject_auth: Option<u32>,
    /// Dialect F: override the minimum poll interval (milliseconds) at runtime.
    #[serde(default)]
    pub fanout_poll_min_interval_ms: Option<u64>,
}

/// The persistent switches as they are now (`GET /dev/faults`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveFaults {
    /// Armed drop counter (`None` = off).
    pub drop_after_frames: Option<i64>,
    /// Next batch is duplicated.
    pub duplicate_next_batch: bool,
    /// Per-frame delay.
    pub delay_ms: u64,
    /// Topics whose next resumed subscribe is stale, with the reason.
    pub force_stale: Vec<(String, String)>,
    /// Join answers `upgrade_required`.
    pub upgrade_required: bool,
    /// Snapshot route 404.
    pub snapshot_route_disabled: bool,
    /// Doc route 404.
    pub doc_route_disabled: bool,
    /// Snapshot pages 410.
    pub snapshot_expired: bool,
    /// Token route 503.
    pub token_unavailable: bool,
    /// `sync:frame` twins.
    pub legacy_sync_frame: bool,
    /// Next batch is held and sent after the following frame.
    pub reorder_next_batch: bool,
    /// Minted tokens are tampered.
    pub tamper_tokens: bool,
    /// Minted tokens are expired.
    pub expired_tokens: bool,
    /// Dialect F WS upgrades answer 502.
    #[serde(default)]
    pub fanout_ws_blocked: bool,
    /// Dialect F requests still to be answered 401 `token_expired`.
    #[serde(default)]
    pub fanout_reject_auth: u32,
    /// Dialect F poll interval override (ms), if any.
    #[serde(default)]
    pub fanout_poll_min_interval_ms: Option<u64>,
}

/// Hot switches read by every socket, lock-free.
#[derive(Debug)]
pub(crate) struct FaultFlags {
    pub(crate) drop_after_frames: AtomicI64,
    pub(crate) duplicate_next_batch: AtomicBool,
    pub(crate) delay_ms: AtomicU64,
    pub(crate) upgrade_required: AtomicBool,
    pub(crate) snapshot_route_disabled: AtomicBool,
    pub(crate) doc_route_disabled: AtomicBool,
    pub(crate) snapshot_expired: AtomicBool,
    pub(crate) token_unavailable: AtomicBool,
    pub(crate) legacy_sync_frame: AtomicBool,
    pub(crate) reorder_next_batch: AtomicBool,
    pub(crate) tamper_tokens: AtomicBool,
    pub(crate) expired_tokens: AtomicBool,
    pub(crate) fanout_ws_blocked: AtomicBool,
    pub(crate) fanout_reject_auth: AtomicU32,
    /// `u64::MAX` = no override.
    pub(crate) fanout_poll_min_interval_ms: AtomicU64,
}

/// What the writer does with the next frame under `drop_after_frames`.
pub(crate) enum DropDecision {
    Send,
    Drop,
}

impl Default for FaultFlags {
    fn default() -> Self {
        Self {
            drop_after_frames: AtomicI64::new(-1),
            duplicate_next_batch: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            upgrade_required: AtomicBool::new(false),
            snapshot_route_disabled: AtomicBool::new(false),
            doc_route_disabled: AtomicBool::new(false),
            snapshot_expired: AtomicBool::new(false),
            token_unavailable: AtomicBool::new(false),
            legacy_sync_frame: AtomicBool::new(false),
            reorder_next_batch: AtomicBool::new(false),
            tamper_tokens: AtomicBool::new(false),
            expired_tokens: AtomicBool::new(false),
            fanout_ws_blocked: AtomicBool::new(false),
            fanout_reject_auth: AtomicU32::new(0),
            fanout_poll_min_interval_ms: AtomicU64::new(u64::MAX),
        }
    }
}

impl FaultFlags {
    pub(crate) fn get(flag: &AtomicBool) -> bool {
        flag.load(Ordering::SeqCst)
    }

    /// Consumes one slot of the drop counter: N armed → N frames pass, the next one drops.
    pub(crate) fn take_drop_slot(&self) -> DropDecision {
        loop {
            let v = self.drop_after_frames.load(Ordering::SeqCst);
            if v < 0 {
                return DropDecision::Send;
            }
            let (next, decision) = if v == 0 {
                (-1, DropDecision::Drop)
            } else {
                (v - 1, DropDecision::Send)
            };
            if self
                .drop_after_frames
                .compare_exchange(v, next, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return decision;
            }
        }
    }

    /// Consumes one `fanout_reject_auth` slot: `true` when this request must be refused.
    pub(crate) fn take_reject_auth(&self) -> bool {
        self.fanout_reject_auth
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    pub(crate) fn reset(&self) {
        self.drop_after_frames.store(-1, Ordering::SeqCst);
        for f in [
            &self.duplicate_next_batch,
            &self.upgrade_required,
            &self.snapshot_route_disabled,
            &self.doc_route_disabled,
            &self.snapshot_expired,
            &self.token_unavailable,
            &self.legacy_sync_frame,
            &self.reorder_next_batch,
            &self.tamper_tokens,
            &self.expired_tokens,
            &self.fanout_ws_blocked,
        ] {
            f.store(false, Ordering::SeqCst);
        }
        self.fanout_reject_auth.store(0, Ordering::SeqCst);
        self.fanout_poll_min_interval_ms
            .store(u64::MAX, Ordering::SeqCst);
        self.delay_ms.store(0, Ordering::SeqCst);
    }

    pub(crate) fn apply(&self, f: &Faults) {
        if f.reset {
            self.reset();
        }
        if let Some(n) = f.drop_after_frames {
            self.drop_after_frames.store(n.max(-1), Ordering::SeqCst);
        }
        let pairs = [
            (f.duplicate_next_batch, &self.duplicate_next_batch),
            (f.upgrade_required, &self.upgrade_required),
            (f.snapshot_route_disabled, &self.snapshot_route_disabled),
            (f.doc_route_disabled, &self.doc_route_disabled),
            (f.snapshot_expired, &self.snapshot_expired),
            (f.token_unavailable, &self.token_unavailable),
            (f.legacy_sync_frame, &self.legacy_sync_frame),
            (f.reorder_next_batch, &self.reorder_next_batch),
            (f.tamper_tokens, &self.tamper_tokens),
            (f.expired_tokens, &self.expired_tokens),
            (f.fanout_ws_blocked, &self.fanout_ws_blocked),
        ];
        for (value, flag) in pairs {
            if let Some(v) = value {
                flag.store(v, Ordering::SeqCst);
            }
        }
        if let Some(ms) = f.delay_ms {
            self.delay_ms.store(ms, Ordering::SeqCst);
        }
        if let Some(n) = f.fanout_reject_auth {
            self.fanout_reject_auth.store(n, Ordering::SeqCst);
        }
        if let Some(ms) = f.fanout_poll_min_interval_ms {
            self.fanout_poll_min_interval_ms
                .store(ms.min(u64::MAX - 1), Ordering::SeqCst);
        }
    }

    pub(crate) fn snapshot(&self, force_stale: Vec<(String, String)>) -> ActiveFaults {
        let drop = self.drop_after_frames.load(Ordering::SeqCst);
        ActiveFaults {
            drop_after_frames: (drop >= 0).then_some(drop),
            duplicate_next_batch: Self::get(&self.duplicate_next_batch),
            delay_ms: self.delay_ms.load(Ordering::SeqCst),
            force_stale,
            upgrade_required: Self::get(&self.upgrade_required),
            snapshot_route_disabled: Self::get(&self.snapshot_route_disabled),
            doc_route_disabled: Self::get(&self.doc_route_disabled),
            snapshot_expired: Self::get(&self.snapshot_expired),
            token_unavailable: Self::get(&self.token_unavailable),
            legacy_sync_frame: Self::get(&self.legacy_sync_frame),
            reorder_next_batch: Self::get(&self.reorder_next_batch),
            tamper_tokens: Self::get(&self.tamper_tokens),
            expired_tokens: Self::get(&self.expired_tokens),
            fanout_ws_blocked: Self::get(&self.fanout_ws_blocked),
            fanout_reject_auth: self.fanout_reject_auth.load(Ordering::SeqCst),
            fanout_poll_min_interval_ms: match self
                .fanout_poll_min_interval_ms
                .load(Ordering::SeqCst)
            {
                u64::MAX => None,
                ms => Some(ms),
            },
        }
    }
}
