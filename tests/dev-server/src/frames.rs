//! Phoenix frame encoding and the JSON bodies of `sync:v1` (PROTOCOL.md §2).

use crate::log::Entry;
use base64::Engine as _;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::sync::Arc;

/// The only channel topic.
pub(crate) const CHANNEL: &str = "sync:v1";

/// An outbound frame for the writer task.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A text frame; `legacy` is the `sync:frame` twin sent right after it (when the fault is on).
    Frame {
        text: String,
        legacy: Option<String>,
        /// Updates inside (0 = not an update batch).
        updates: usize,
    },
    /// Send a close frame, then stop.
    Close { code: u16, reason: &'static str },
}

impl Outbound {
    pub(crate) fn text(text: String) -> Self {
        Outbound::Frame {
            text,
            legacy: None,
            updates: 0,
        }
    }
}

#[derive(Serialize)]
struct WireUpdate<'a> {
    topic: &'a str,
    doc_key: &'a str,
    doc_version: u64,
    payload: &'a RawValue,
    payload_hash: Option<&'a str>,
    watermark: u64,
    hydration_required: bool,
    deleted: bool,
}

fn null_raw() -> &'static RawValue {
    // `RawValue::NULL` is the literal `null`.
    RawValue::NULL
}

#[derive(Serialize)]
struct TopicWatermark<'a> {
    topic: &'a str,
    watermark: u64,
}

#[derive(Serialize)]
struct WireBatch<'a> {
    updates: Vec<WireUpdate<'a>>,
    replay_complete: bool,
    head_watermarks: [TopicWatermark<'a>; 1],
}

/// JSON body of a `sync:update_batch` for one topic.
pub(crate) fn batch_payload(
    topic: &str,
    entries: &[Arc<Entry>],
    head: u64,
    hydration_threshold: usize,
) -> String {
    let updates = entries
        .iter()
        .map(|e| {
            let raw = e.payload.as_deref();
            let hydrate = raw.is_some_and(|r| r.get().len() > hydration_threshold);
            WireUpdate {
                topic,
                doc_key: &e.doc_key,
                doc_version: e.doc_version,
                payload: if hydrate {
                    null_raw()
                } else {
                    raw.unwrap_or(null_raw())
                },
                payload_hash: e.payload_hash.as_deref(),
                watermark: e.watermark,
                hydration_required: hydrate,
                deleted: e.deleted,
            }
        })
        .collect::<Vec<_>>();
    let last = entries.last().map_or(0, |e| e.watermark);
    let batch = WireBatch {
        updates,
        replay_complete: last >= head,
        head_watermarks: [TopicWatermark {
            topic,
            watermark: head,
        }],
    };
    serde_json::to_string(&batch).unwrap_or_default()
}

fn json_str(s: Option<&str>) -> String {
    match s {
        Some(s) => Value::String(s.to_owned()).to_string(),
        None => "null".into(),
    }
}

/// A server push `[join_ref, null, topic, event, payload]`; `payload` is JSON text.
pub(crate) fn push_text(join_ref: Option<&str>, event: &str, payload: &str) -> String {
    format!(
        "[{},null,{},{},{}]",
        json_str(join_ref),
        json_str(Some(CHANNEL)),
        json_str(Some(event)),
        payload
    )
}

/// A reply `[join_ref, ref, topic, "phx_reply", {"status", "response"}]`.
pub(crate) fn reply_text(
    join_ref: Option<&str>,
    reference: Option<&str>,
    topic: &str,
    ok: bool,
    response: &Value,
) -> String {
    json!([
        join_ref,
        reference,
        topic,
        "phx_reply",
        {"status": if ok { "ok" } else { "error" }, "response": response}
    ])
    .to_string()
}

/// A `sync:update_batch` push (plus its legacy `sync:frame` twin when `legacy`).
pub(crate) fn batch_outbound(
    join_ref: Option<&str>,
    topic: &str,
    entries: &[Arc<Entry>],
    head: u64,
    hydration_threshold: usize,
    legacy: bool,
) -> Outbound {
    let payload = batch_payload(topic, entries, head, hydration_threshold);
    let seq = entries.last().map_or(0, |e| e.watermark);
    batch_outbound_with_payload(join_ref, topic, seq, &payload, entries.len(), legacy)
}

/// A live `sync:update_batch` push from an already serialized batch body.
pub(crate) fn batch_outbound_with_payload(
    join_ref: Option<&str>,
    topic: &str,
    seq: u64,
    payload: &str,
    updates: usize,
    legacy: bool,
) -> Outbound {
    let legacy = legacy.then(|| {
        push_text(
            join_ref,
            "sync:frame",
            &legacy_frame(topic, seq, "KHALA_FRAME_KIND_UPDATE_BATCH", payload),
        )
    });
    Outbound::Frame {
        text: push_text(join_ref, "sync:update_batch", payload),
        legacy,
        updates,
    }
}

/// A `sync:error` push (plus its legacy twin when `legacy`).
pub(crate) fn error_outbound(
    join_ref: Option<&str>,
    topic: &str,
    body: &Value,
    legacy: bool,
) -> Outbound {
    let payload = body.to_string();
    let legacy = legacy.then(|| {
        push_text(
            join_ref,
            "sync:frame",
            &legacy_frame(topic, 0, "KHALA_FRAME_KIND_ERROR", &payload),
        )
    });
    Outbound::Frame {
        text: push_text(join_ref, "sync:error", &payload),
        legacy,
        updates: 0,
    }
}

fn legacy_frame(topic: &str, seq: u64, kind: &str, payload: &str) -> String {
    json!({
        "topic": topic,
        "seq": seq,
        "kind": kind,
        "payload_bytes": base64::engine::general_purpose::STANDARD.encode(payload.as_bytes()),
        "schema_version": 1
    })
    .to_string()
}

/// One topic's staleness, as reported in `stale_topics`.
#[derive(Debug, Clone)]
pub(crate) struct StaleTopic {
    pub(crate) topic: String,
    pub(crate) reason: &'static str,
    pub(crate) qos_tier: String,
    pub(crate) resume_after: u64,
    pub(crate) retention_floor: u64,
    pub(crate) head_watermark: u64,
    pub(crate) replay_budget_events: u64,
}

/// Reason codes of PROTOCOL.md §2.4 / §7.
pub(crate) const RETENTION_FLOOR_BREACH: &str = "retention_floor_breach";
pub(crate) const REPLAY_BUDGET_EXCEEDED: &str = "replay_budget_exceeded";
pub(crate) const CURSOR_AHEAD_OF_HEAD: &str = "cursor_ahead_of_head";

fn stale_message(reason: &str) -> &'static str {
    match reason {
        REPLAY_BUDGET_EXCEEDED => "replay budget exceeded for topic qos tier; full resync required",
        CURSOR_AHEAD_OF_HEAD => "cursor is ahead of the topic head; full resync required",
        _ => "cursor is older than retention floor",
    }
}

/// The `stale_cursor` body of PROTOCOL.md §2.4.
pub(crate) fn stale_body(stale: &[StaleTopic]) -> Value {
    let mut reasons: Vec<&str> = Vec::new();
    for s in stale {
        if !reasons.contains(&s.reason) {
            reasons.push(s.reason);
        }
    }
    let topics: Vec<Value> = stale
        .iter()
        .map(|s| {
            json!({
                "topic": s.topic,
                "reason": s.reason,
                "qos_tier": s.qos_tier,
                "resume_after": s.resume_after,
                "retention_floor": s.retention_floor,
                "head_watermark": s.head_watermark,
                "replay_lag": s.head_watermark.saturating_sub(s.resume_after),
                "replay_budget_events": s.replay_budget_events,
            })
        })
        .collect();
    json!({
        "code": "stale_cursor",
        "message": stale_message(reasons.first().copied().unwrap_or(RETENTION_FLOOR_BREACH)),
        "full_resync_required": true,
        "reason_codes": reasons,
        "stale_topics": topics,
        "snapshot_plan": {
            "format": "openagents.sync.snapshot.v1",
            "topics": stale.iter().map(|s| s.topic.clone()).collect::<Vec<_>>(),
        }
    })
}

/// A simple `{"code","message"}` error body.
pub(crate) fn error_body(code: &str, message: &str) -> Value {
    json!({"code": code, "message": message})
}
