//! Rust ⇄ JS values: errors with stable codes, status, changes, documents, metrics, options.
//!
//! Outgoing values are written as JSON text by [`Json`] and parsed with `JSON.parse`, which
//! keeps the glue small; document payloads are embedded as raw JSON text, so apps get
//! objects, not strings. Watermarks and versions are JS numbers (exact up to 2^53). The
//! objects are the ones the earlier `serde_json` serializer produced: same members in the
//! same order, an empty optional member `null` (never absent), numbers in the same forms.

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use khala_sync::engine::Millis;
use khala_sync::protocol::json::{write_str, RawJson};
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

/// Compact JSON text under construction (outgoing values, IndexedDB records): values are
/// written in call order and the commas are placed here (before a value or key that follows
/// another one). Keys are written as given, so they must not need escaping. Deliberately not
/// generic: one copy of each method serves every record and value.
pub(crate) struct Json(Vec<u8>);

impl Json {
    pub(crate) fn new() -> Self {
        Json(Vec::with_capacity(128))
    }

    /// A comma unless this is the first thing in the text, an object or an array, or a
    /// member's value.
    fn sep(&mut self) {
        if !matches!(self.0.last(), None | Some(b'{' | b'[' | b':')) {
            self.0.push(b',');
        }
    }

    /// `text` as the next value (JSON text the caller vouches for).
    fn lit(&mut self, text: &str) -> &mut Self {
        self.sep();
        self.0.extend_from_slice(text.as_bytes());
        self
    }

    /// Opens an object (`{`) or array (`[`).
    pub(crate) fn open(&mut self, bracket: char) -> &mut Self {
        self.lit(if bracket == '[' { "[" } else { "{" })
    }

    /// Closes an object (`}`) or array (`]`).
    pub(crate) fn close(&mut self, bracket: char) -> &mut Self {
        self.0.push(if bracket == ']' { b']' } else { b'}' });
        self
    }

    /// A member's key; its value comes next.
    pub(crate) fn key(&mut self, key: &str) -> &mut Self {
        self.sep();
        self.0.push(b'"');
        self.0.extend_from_slice(key.as_bytes());
        self.0.extend_from_slice(b"\":");
        self
    }

    pub(crate) fn null(&mut self) -> &mut Self {
        self.lit("null")
    }

    pub(crate) fn bool(&mut self, v: bool) -> &mut Self {
        self.lit(if v { "true" } else { "false" })
    }

    pub(crate) fn str(&mut self, v: &str) -> &mut Self {
        self.sep();
        write_str(v, &mut self.0);
        self
    }

    pub(crate) fn opt_str(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.str(v),
            None => self.null(),
        }
    }

    pub(crate) fn uint(&mut self, mut v: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.sep();
        self.0.extend_from_slice(&digits[i..]);
        self
    }

    pub(crate) fn opt_uint(&mut self, v: Option<u64>) -> &mut Self {
        match v {
            Some(v) => self.uint(v),
            None => self.null(),
        }
    }

    /// Shortest round-trip form (`serde_json`'s formatter); `null` if absent or not finite.
    fn f64(&mut self, v: Option<f64>) -> &mut Self {
        match v {
            Some(v) if v.is_finite() => self.lit(zmij::Buffer::new().format_finite(v)),
            _ => self.null(),
        }
    }

    /// Shortest round-trip form of the `f32` (as `serde_json` writes one); `null` if absent or
    /// not finite.
    fn f32(&mut self, v: Option<f32>) -> &mut Self {
        match v {
            Some(v) if v.is_finite() => self.lit(zmij::Buffer::new().format_finite(v)),
            _ => self.null(),
        }
    }

    /// Embeds raw JSON text (a payload) as it is; `null` if it is not one JSON value (the
    /// engine never stores such a payload). The SDK's check refuses nesting deeper than 128
    /// levels, which engines before it stored (unverified): `JSON.parse` decides those.
    fn raw(&mut self, text: &str) -> &mut Self {
        if RawJson::check(text).is_ok() || js_sys::JSON::parse(text).is_ok() {
            self.lit(text)
        } else {
            self.null()
        }
    }

    /// The text (only whole `&str`s were appended, so it is UTF-8).
    pub(crate) fn into_string(self) -> String {
        String::from_utf8(self.0).unwrap_or_default()
    }

    /// The JS value of the text (`JSON.parse`).
    fn into_js(self) -> JsValue {
        js_sys::JSON::parse(&self.into_string()).unwrap_or(JsValue::NULL)
    }
}

/// `{code, message, retryable}` or `null`.
fn error_info(j: &mut Json, e: Option<&SyncError>) {
    match e {
        Some(e) => {
            j.open('{')
                .key("code")
                .str(e.code())
                .key("message")
                .str(&e.to_string())
                .key("retryable")
                .bool(e.is_retryable())
                .close('}');
        }
        None => {
            j.null();
        }
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

/// `{topic, phase, watermark, head, replayProgress, snapshotDocs, resyncedFromWindow, error}`.
fn topic_status(j: &mut Json, t: &TopicStatus) {
    j.open('{')
        .key("topic")
        .str(t.topic.as_str())
        .key("phase")
        .str(phase_name(t.phase))
        .key("watermark")
        .uint(t.watermark.0)
        .key("head")
        .opt_uint(t.head.map(|w| w.0))
        .key("replayProgress")
        .f32(t.replay_progress)
        .key("snapshotDocs")
        .uint(t.snapshot_docs)
        .key("resyncedFromWindow")
        .bool(t.resynced_from_window)
        .key("error");
    error_info(j, t.error.as_ref());
    j.close('}');
}

/// `{state, transport, live, topics, lastError, nextRetryAt}`; `nextRetryAt` is the
/// `Date.now()`-based time of the next retry, from `origin_epoch_ms`: `Date.now()` at engine
/// time 0.
pub(crate) fn status(s: &SyncStatus, origin_epoch_ms: f64) -> JsValue {
    let mut j = Json::new();
    j.open('{')
        .key("state")
        .str(state_name(s.state))
        .key("transport")
        .str(s.transport)
        .key("live")
        .bool(s.is_live())
        .key("topics")
        .open('[');
    for t in &s.topics {
        topic_status(&mut j, t);
    }
    j.close(']').key("lastError");
    error_info(&mut j, s.last_error.as_ref());
    j.key("nextRetryAt")
        .f64(
            s.next_retry_at
                .map(|Millis(ms)| origin_epoch_ms + ms as f64),
        )
        .close('}');
    j.into_js()
}

/// `{type: "upsert"|"delete"|"bootstrapped"|"truncated", topic, key?, version?, value?,
/// watermark?, docs?, from?, to?}`.
pub(crate) fn change(c: &Change) -> JsValue {
    let mut j = Json::new();
    j.open('{').key("type");
    match c {
        Change::Upsert {
            topic,
            doc_key,
            doc_version,
            payload,
            watermark,
        } => {
            j.str("upsert")
                .key("topic")
                .str(topic.as_str())
                .key("key")
                .str(doc_key.as_str())
                .key("version")
                .uint(*doc_version)
                .key("value")
                .raw(payload)
                .key("watermark")
                .uint(watermark.0);
        }
        Change::Delete {
            topic,
            doc_key,
            watermark,
        } => {
            j.str("delete")
                .key("topic")
                .str(topic.as_str())
                .key("key")
                .str(doc_key.as_str())
                .key("watermark")
                .uint(watermark.0);
        }
        Change::Bootstrapped {
            topic,
            watermark,
            docs,
        } => {
            j.str("bootstrapped")
                .key("topic")
                .str(topic.as_str())
                .key("watermark")
                .uint(watermark.0)
                .key("docs")
                .uint(*docs);
        }
        Change::Truncated { topic, from, to } => {
            j.str("truncated")
                .key("topic")
                .str(topic.as_str())
                .key("from")
                .uint(from.0)
                .key("to")
                .uint(to.0);
        }
    }
    j.close('}');
    j.into_js()
}

/// `{topic, key, version, value, payloadHash, watermark, verified}`; `payloadHash` is the
/// wire form (base64 sha256) or `null`.
fn js_doc(j: &mut Json, d: &StoredDoc) {
    j.open('{')
        .key("topic")
        .str(d.topic.as_str())
        .key("key")
        .str(d.doc_key.as_str())
        .key("version")
        .uint(d.doc_version)
        .key("value")
        .raw(&d.payload)
        .key("payloadHash")
        .opt_str(d.payload_hash.map(|h| h.to_base64()).as_deref())
        .key("watermark")
        .uint(d.watermark.0)
        .key("verified")
        .bool(d.verified)
        .close('}');
}

/// `{topic, key, version, value, payloadHash, watermark, verified}` or `null`.
pub(crate) fn doc(d: Option<&StoredDoc>) -> JsValue {
    let Some(d) = d else {
        return JsValue::NULL;
    };
    let mut j = Json::new();
    js_doc(&mut j, d);
    j.into_js()
}

/// An array of documents.
pub(crate) fn docs(d: &[StoredDoc]) -> JsValue {
    let mut j = Json::new();
    j.open('[');
    for d in d {
        js_doc(&mut j, d);
    }
    j.close(']');
    j.into_js()
}

/// Every engine counter, camelCased.
pub(crate) fn metrics(m: &Metrics) -> JsValue {
    let mut j = Json::new();
    j.open('{');
    for (key, v) in [
        ("updatesApplied", m.updates_applied),
        ("duplicatesSkipped", m.duplicates_skipped),
        ("gaps", m.gaps),
        ("hashMismatches", m.hash_mismatches),
        ("unverifiedDocs", m.unverified_docs),
        ("staleCursors", m.stale_cursors),
        ("snapshots", m.snapshots),
        ("snapshotDocs", m.snapshot_docs),
        ("reconnects", m.reconnects),
        ("connects", m.connects),
        ("tokensFetched", m.tokens_fetched),
        ("hydrations", m.hydrations),
        ("slowConsumer", m.slow_consumer),
        ("batchesCommitted", m.batches_committed),
        ("framesReceived", m.frames_received),
        ("bytesReceived", m.bytes_received),
        ("decodeErrors", m.decode_errors),
    ] {
        j.key(key).uint(v);
    }
    j.key("catchUpMs").opt_uint(m.catch_up_ms).close('}');
    j.into_js()
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
