//! Per-topic sync state.

use std::collections::VecDeque;
use std::time::Duration;

use super::{Backoff, Change, ConnId, Millis, TopicPhase, TopicStatus};
use crate::error::SyncError;
use crate::protocol::{hash, Topic, Update, Watermark};
use crate::store::{ApplyBatch, DocWrite, SnapshotGen};

/// What to do once the current batch is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FollowUp {
    None,
    /// A gap: replay from the committed watermark.
    Resubscribe,
    /// A hash mismatch: resync the topic from a snapshot (once).
    Snapshot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RetryKind {
    Snapshot,
    Resubscribe,
}

#[derive(Debug)]
pub(super) struct Inflight {
    /// Changes to notify once committed (empty when nobody listens).
    pub changes: Vec<Change>,
    /// Writes in the batch.
    pub writes: usize,
    pub follow: FollowUp,
    /// The batch's new watermark.
    pub through: Watermark,
    /// Dialect F: this batch records a truncation `(from, to)`.
    pub truncated: Option<(Watermark, Watermark)>,
}

#[derive(Debug)]
pub(super) struct Hydration {
    pub batch: ApplyBatch,
    /// Indices of writes still waiting for their payload.
    pub waiting: Vec<usize>,
    pub follow: FollowUp,
}

/// Verified snapshot pages kept ahead of the store, at most (plus one being stored and one
/// being fetched): fetching, verifying and writing overlap, memory stays a few pages.
pub(super) const SNAPSHOT_PAGES_AHEAD: usize = 2;

/// A verified snapshot page waiting for the store: its writes, and `Some(snapshot watermark)`
/// when it is the last page.
pub(super) type ReadyPage = (Vec<DocWrite>, Option<Watermark>);

#[derive(Debug, Default)]
pub(super) struct SnapState {
    pub generation: Option<SnapshotGen>,
    /// Cursor for the next page (`None` before the first page).
    pub cursor: Option<String>,
    pub pinned: Option<Watermark>,
    /// Page size asked for (the configured one at first); halved when a page is too large.
    pub limit: u32,
    /// Documents received (and verified) so far.
    pub docs: u64,
    /// Documents the store has staged so far (the progress apps see).
    pub stored_docs: u64,
    /// Documents of the page being stored.
    pub storing_docs: u64,
    /// The last page (no next cursor) has arrived.
    pub last_received: bool,
    /// A page fetch is in flight (one at a time: each page names the next one's cursor).
    pub fetching: bool,
    /// A page is being stored (one at a time, in page order, the finishing page last).
    pub storing: bool,
    /// Pages fetched and verified, waiting for the store, in order.
    pub ready: VecDeque<ReadyPage>,
}

#[derive(Debug)]
pub(super) struct TopicState {
    pub topic: Topic,
    pub phase: TopicPhase,
    /// Watermark the store has committed (never ahead of disk).
    pub committed: Watermark,
    pub head: Option<Watermark>,
    /// Committed watermark when the current subscribe was sent (progress origin).
    pub replay_from: Watermark,
    pub subscribed_on: Option<ConnId>,
    /// A subscribe is in flight; gaps until its reply are expected and not resubscribed.
    pub resubscribe_pending: bool,
    pub inflight: Option<Inflight>,
    /// A second commit, handed to the store behind `inflight` (commit ahead).
    pub inflight_next: Option<Inflight>,
    /// Answers still to come for commits given up on (a commit ahead whose predecessor
    /// failed): ignored when they arrive.
    pub discard_applied: u32,
    pub hydration: Option<Hydration>,
    pub queue: VecDeque<Vec<Queued>>,
    /// Approximate bytes held by `queue` (payloads + keys + per-update overhead).
    pub queued_bytes: usize,
    pub needs_snapshot: bool,
    pub snapshot: Option<SnapState>,
    /// Snapshots completed in the current stale episode (reset when the topic goes live).
    pub stale_streak: u32,
    pub snapshot_backoff: Backoff,
    pub hash_resyncs: u32,
    /// No snapshot route: subscribed without `resume_after`.
    pub window_resync: bool,
    /// Accept the first replayed position even if it jumps (window resync).
    pub accept_jump: bool,
    pub retry_at: Option<Millis>,
    pub retry_kind: RetryKind,
    pub error: Option<SyncError>,
}

/// An update waiting for the apply rules, with its payload's hash check when that was
/// already done.
#[derive(Debug)]
pub(super) struct Queued {
    pub update: Update,
    /// `Some(matches)` once the inline payload was checked against its hash.
    pub hash_ok: Option<bool>,
}

impl Queued {
    /// Not checked yet (the apply rules check it).
    pub fn unchecked(update: Update) -> Queued {
        Queued {
            update,
            hash_ok: None,
        }
    }

    /// Checks the inline payload's hash now: queued updates are checked as they arrive,
    /// while the store commits the previous group, so the next group is ready the moment
    /// that commit ends instead of the store waiting for thousands of hash checks.
    fn checked(update: Update) -> Queued {
        let hash_ok = match &update.payload {
            Some(p) if !update.deleted && !update.hydration_required => {
                Some(hash::matches(p.get(), update.payload_hash.as_ref()))
            }
            _ => None,
        };
        Queued { update, hash_ok }
    }
}

impl TopicState {
    /// Queues updates that arrived while a commit or hydration is in flight (their hashes
    /// are checked now, see [`Queued::checked`]).
    pub fn push_queue(&mut self, ups: Vec<Update>) {
        self.queued_bytes += ups.iter().map(approx_bytes).sum::<usize>();
        self.queue
            .push_back(ups.into_iter().map(Queued::checked).collect());
    }

    /// The oldest queued batch.
    pub fn pop_queue(&mut self) -> Option<Vec<Queued>> {
        let ups = self.queue.pop_front()?;
        let n = ups.iter().map(|q| approx_bytes(&q.update)).sum::<usize>();
        self.queued_bytes = self.queued_bytes.saturating_sub(n);
        Some(ups)
    }

    /// The next group commit: the oldest whole batches until `max` updates, as
    /// `(batches, updates)`.
    pub fn next_group(&self, max: usize) -> (usize, usize) {
        let (mut batches, mut updates) = (0, 0);
        for b in &self.queue {
            if updates >= max {
                break;
            }
            batches += 1;
            updates += b.len();
        }
        (batches, updates)
    }

    /// The oldest `batches` queued batches, as one group.
    pub fn take_batches(&mut self, batches: usize) -> Vec<Queued> {
        let mut group = Vec::new();
        for _ in 0..batches {
            match self.pop_queue() {
                Some(b) => group.extend(b),
                None => break,
            }
        }
        group
    }

    /// Drops every queued batch.
    pub fn clear_queue(&mut self) {
        self.queue.clear();
        self.queued_bytes = 0;
    }

    pub fn new(topic: Topic, base: Duration, cap: Duration) -> Self {
        TopicState {
            topic,
            phase: TopicPhase::Idle,
            committed: Watermark::ZERO,
            head: None,
            replay_from: Watermark::ZERO,
            subscribed_on: None,
            resubscribe_pending: false,
            inflight: None,
            inflight_next: None,
            discard_applied: 0,
            hydration: None,
            queue: VecDeque::new(),
            queued_bytes: 0,
            needs_snapshot: false,
            snapshot: None,
            stale_streak: 0,
            snapshot_backoff: Backoff::new(base, cap),
            hash_resyncs: 0,
            window_resync: false,
            accept_jump: false,
            retry_at: None,
            retry_kind: RetryKind::Resubscribe,
            error: None,
        }
    }

    /// Apply or hydration in flight: new updates wait in the queue.
    pub fn busy(&self) -> bool {
        self.inflight.is_some() || self.hydration.is_some()
    }

    pub fn ready_to_subscribe(&self) -> bool {
        !self.needs_snapshot
            && self.snapshot.is_none()
            && self.retry_at.is_none()
            && matches!(
                self.phase,
                TopicPhase::Idle
                    | TopicPhase::Subscribing
                    | TopicPhase::Replaying
                    | TopicPhase::Live
            )
    }

    pub fn is_settled(&self) -> bool {
        matches!(self.phase, TopicPhase::Live | TopicPhase::Failed)
    }

    /// The connection this topic was subscribed on is gone.
    pub fn detach_from(&mut self, id: ConnId) {
        if self.subscribed_on == Some(id) {
            self.subscribed_on = None;
            self.resubscribe_pending = false;
            self.clear_queue();
            self.hydration = None;
            if matches!(
                self.phase,
                TopicPhase::Subscribing | TopicPhase::Replaying | TopicPhase::Live
            ) {
                self.phase = TopicPhase::Idle;
            }
        }
    }

    /// Everything network-bound stops (pause, shutdown, auth failure).
    pub fn detach(&mut self) {
        self.subscribed_on = None;
        self.resubscribe_pending = false;
        self.clear_queue();
        self.hydration = None;
        self.snapshot = None;
        self.retry_at = None;
        if self.phase != TopicPhase::Failed {
            self.phase = TopicPhase::Idle;
        }
    }

    pub fn status(&self) -> TopicStatus {
        let progress = match self.phase {
            TopicPhase::Live => Some(1.0),
            TopicPhase::Replaying | TopicPhase::Subscribing => match self.head {
                Some(h) if h > self.replay_from => {
                    let done = self.committed.get().saturating_sub(self.replay_from.get()) as f64;
                    let total = (h.get() - self.replay_from.get()) as f64;
                    Some((done / total).clamp(0.0, 1.0) as f32)
                }
                Some(_) => Some(1.0),
                None => None,
            },
            _ => None,
        };
        TopicStatus {
            topic: self.topic.clone(),
            phase: self.phase,
            watermark: self.committed,
            head: self.head,
            replay_progress: progress,
            snapshot_docs: self.snapshot.as_ref().map_or(0, |s| s.stored_docs),
            resynced_from_window: self.window_resync,
            error: self.error.clone(),
        }
    }
}

/// Memory an update holds while queued, roughly (payload, key, struct and allocation overhead).
fn approx_bytes(u: &Update) -> usize {
    u.payload.as_ref().map_or(0, |p| p.get().len()) + u.doc_key.as_str().len() + 96
}
