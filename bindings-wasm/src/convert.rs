//! Rust ⇄ JS values: errors with stable codes, status, changes, documents, metrics, options.
//!
//! Outgoing values are built as JSON (serde) and parsed with `JSON.parse`, which keeps the
//! glue small; document payloads are embedded as raw JSON text, so apps get objects, not
//! strings. Watermarks and versions are JS numbers (exact up to 2^53).

use serde::Serialize;
use serde_json::value::RawValue;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use khala_sync::engine::Millis;
use khala_sync::{
    Change, ConnectionState, Metrics, StoredDoc, SyncError, SyncStatus, TopicPhase, TopicStatus,
};

/// A JS `Error` with `code` (= `SyncError::code()`), `retryable` and `name = "KhalaSyncError"`.
pub(crate) fn error(e: &SyncError) -> JsValue {
    coded_error(&e.to_string(), e.code(), e.is_retryable())
}

pub(crate) fn coded_error(message: &str, code: &str, retryable: bool) -> JsValue {
    let err = js_sys::Error::new(message);
    err.set_name("KhalaSyncError");
    let obj: &JsValue = err.as_ref();
    let _ = js_sys::Reflect::set(obj, &"code".into(), &code.into());
    let _ = js_sys::Reflect::set(obj, &"retryable".into(), &retryable.into());
    err.into()
}

/// An `invalid_config` error (bad option from the app).
pub(crate) fn config_error(message: impl Into<String>) -> JsValue {
    error(&SyncError::Config(message.into()))
}

fn to_js<T: Serialize>(v: &T) -> JsValue {
    match serde_json::to_string(v) {
        Ok(s) => js_sys::JSON::parse(&s).unwrap_or(JsValue::NULL),
        Err(_) => JsValue::NULL,
    }
}

/// Raw JSON text as an embeddable value (`null` if it is not valid JSON, which the engine
/// never stores).
fn raw(payload: &str) -> Box<RawValue> {
    RawValue::from_string(payload.to_owned())
        .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).unwrap_or_default())
}

#[derive(Serialize)]
struct JsErrorInfo<'a> {
    code: &'a str,
    message: String,
    retryable: bool,
}

fn error_info(e: &SyncError) -> JsErrorInfo<'_> {
    JsErrorInfo {
        code: e.code(),
        message: e.to_string(),
        retryable: e.is_retryable(),
    }
}

pub(crate) fn state_name(s: ConnectionState) -> &'static str {
    match s {
        ConnectionState::Idle => "idle",
        ConnectionState::Authenticating => "authenticating",
        ConnectionState::Connecting => "connecting",
        ConnectionState::Connected => "connected",
        ConnectionState::Backoff => "backoff",
        ConnectionState::Paused => "paused",
        ConnectionState::AuthFailed => "auth_failed",
        ConnectionState::UpgradeRequired => "upgrade_required",
        ConnectionState::Stopped => "stopped",
    }
}

fn phase_name(p: TopicPhase) -> &'static str {
    match p {
        TopicPhase::Idle => "idle",
        TopicPhase::Bootstrapping => "bootstrapping",
        TopicPhase::Subscribing => "subscribing",
        TopicPhase::Replaying => "replaying",
        TopicPhase::Live => "live",
        TopicPhase::Failed => "failed",
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsTopicStatus<'a> {
    topic: &'a str,
    phase: &'static str,
    watermark: u64,
    head: Option<u64>,
    replay_progress: Option<f32>,
    snapshot_docs: u64,
    resynced_from_window: bool,
    error: Option<JsErrorInfo<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsStatus<'a> {
    state: &'static str,
    transport: &'static str,
    live: bool,
    topics: Vec<JsTopicStatus<'a>>,
    last_error: Option<JsErrorInfo<'a>>,
    /// `Date.now()`-based time of the next retry.
    next_retry_at: Option<f64>,
}

fn topic_status(t: &TopicStatus) -> JsTopicStatus<'_> {
    JsTopicStatus {
        topic: t.topic.as_str(),
        phase: phase_name(t.phase),
        watermark: t.watermark.0,
        head: t.head.map(|w| w.0),
        replay_progress: t.replay_progress,
        snapshot_docs: t.snapshot_docs,
        resynced_from_window: t.resynced_from_window,
        error: t.error.as_ref().map(error_info),
    }
}

/// `origin_epoch_ms`: `Date.now()` at engine time 0, to turn engine deadlines into dates.
pub(crate) fn status(s: &SyncStatus, origin_epoch_ms: f64) -> JsValue {
    to_js(&JsStatus {
        state: state_name(s.state),
        transport: s.transport,
        live: s.is_live(),
        topics: s.topics.iter().map(topic_status).collect(),
        last_error: s.last_error.as_ref().map(error_info),
        next_retry_at: s
            .next_retry_at
            .map(|Millis(ms)| origin_epoch_ms + ms as f64),
    })
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum JsChange<'a> {
    #[serde(rename_all = "camelCase")]
    Upsert {
        topic: &'a str,
        key: &'a str,
        version: u64,
        value: Box<RawValue>,
        watermark: u64,
    },
    #[serde(rename_all = "camelCase")]
    Delete {
        topic: &'a str,
        key: &'a str,
        watermark: u64,
    },
    #[serde(rename_all = "camelCase")]
    Bootstrapped {
        topic: &'a str,
        watermark: u64,
        docs: u64,
    },
    #[serde(rename_all = "camelCase")]
    Truncated { topic: &'a str, from: u64, to: u64 },
}

/// `{type: "upsert"|"delete"|"bootstrapped"|"truncated", topic, key?, version?, value?,
/// watermark?, docs?, from?, to?}`.
pub(crate) fn change(c: &Change) -> JsValue {
    to_js(&match c {
        Change::Upsert {
            topic,
            doc_key,
            doc_version,
            payload,
            watermark,
        } => JsChange::Upsert {
            topic: topic.as_str(),
            key: doc_key.as_str(),
            version: *doc_version,
            value: raw(payload),
            watermark: watermark.0,
        },
        Change::Delete {
            topic,
            doc_key,
            watermark,
        } => JsChange::Delete {
            topic: topic.as_str(),
            key: doc_key.as_str(),
            watermark: watermark.0,
        },
        Change::Bootstrapped {
            topic,
            watermark,
            docs,
        } => JsChange::Bootstrapped {
            topic: topic.as_str(),
            watermark: watermark.0,
            docs: *docs,
        },
        Change::Truncated { topic, from, to } => JsChange::Truncated {
            topic: topic.as_str(),
            from: from.0,
            to: to.0,
        },
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsDoc<'a> {
    topic: &'a str,
    key: &'a str,
    version: u64,
    value: Box<RawValue>,
    /// Wire form (base64 sha256) or null.
    payload_hash: Option<String>,
    watermark: u64,
    verified: bool,
}

fn js_doc(d: &StoredDoc) -> JsDoc<'_> {
    JsDoc {
        topic: d.topic.as_str(),
        key: d.doc_key.as_str(),
        version: d.doc_version,
        value: raw(&d.payload),
        payload_hash: d.payload_hash.map(|h| h.to_base64()),
        watermark: d.watermark.0,
        verified: d.verified,
    }
}

/// `{topic, key, version, value, payloadHash, watermark, verified}` or `null`.
pub(crate) fn doc(d: Option<&StoredDoc>) -> JsValue {
    d.map_or(JsValue::NULL, |d| to_js(&js_doc(d)))
}

/// An array of documents.
pub(crate) fn docs(d: &[StoredDoc]) -> JsValue {
    to_js(&d.iter().map(js_doc).collect::<Vec<_>>())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsMetrics {
    updates_applied: u64,
    duplicates_skipped: u64,
    gaps: u64,
    hash_mismatches: u64,
    unverified_docs: u64,
    stale_cursors: u64,
    snapshots: u64,
    snapshot_docs: u64,
    reconnects: u64,
    connects: u64,
    tokens_fetched: u64,
    hydrations: u64,
    slow_consumer: u64,
    batches_committed: u64,
    frames_received: u64,
    bytes_received: u64,
    decode_errors: u64,
    catch_up_ms: Option<u64>,
}

/// Every engine counter, camelCased.
pub(crate) fn metrics(m: &Metrics) -> JsValue {
    to_js(&JsMetrics {
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
    })
}

// ---------------------------------------------------------------------------------------
// Options (typed reads with typed errors: a wrong type is `invalid_config`, never a panic)
// ---------------------------------------------------------------------------------------

/// Reads fields of the options object.
pub(crate) struct Opts<'a>(pub &'a JsValue);

impl Opts<'_> {
    fn get(&self, name: &str) -> JsValue {
        js_sys::Reflect::get(self.0, &JsValue::from_str(name)).unwrap_or(JsValue::UNDEFINED)
    }

    fn present(&self, name: &str) -> Option<JsValue> {
        let v = self.get(name);
        (!v.is_undefined() && !v.is_null()).then_some(v)
    }

    pub(crate) fn string(&self, name: &str) -> Result<Option<String>, JsValue> {
        self.present(name)
            .map(|v| {
                v.as_string()
                    .ok_or_else(|| config_error(format!("option `{name}` must be a string")))
            })
            .transpose()
    }

    pub(crate) fn bool(&self, name: &str) -> Result<Option<bool>, JsValue> {
        self.present(name)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| config_error(format!("option `{name}` must be a boolean")))
            })
            .transpose()
    }

    /// A non-negative integer no larger than `max`.
    pub(crate) fn uint(&self, name: &str, max: u64) -> Result<Option<u64>, JsValue> {
        self.present(name)
            .map(|v| match v.as_f64() {
                Some(n) if n.fract() == 0.0 && (0.0..=max as f64).contains(&n) => Ok(n as u64),
                // `max` is formatted as an integer: no float formatting code in the module.
                _ => Err(config_error(format!(
                    "option `{name}` must be an integer in 0..={max}"
                ))),
            })
            .transpose()
    }

    pub(crate) fn strings(&self, name: &str) -> Result<Option<Vec<String>>, JsValue> {
        let Some(v) = self.present(name) else {
            return Ok(None);
        };
        let bad = || config_error(format!("option `{name}` must be an array of strings"));
        if !js_sys::Array::is_array(&v) {
            return Err(bad());
        }
        js_sys::Array::from(&v)
            .iter()
            .map(|x| x.as_string().ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    pub(crate) fn function(&self, name: &str) -> Result<Option<js_sys::Function>, JsValue> {
        self.present(name)
            .map(|v| {
                v.dyn_into::<js_sys::Function>()
                    .map_err(|_| config_error(format!("option `{name}` must be a function")))
            })
            .transpose()
    }
}
