//! Dialect-neutral updates and server errors: what the engine consumes, whichever wire
//! dialect delivered them.

use serde::{Deserialize, Serialize};

use super::json::{self, need, set, Reader, Res};
use super::{DocKey, PayloadHash, RawJson, Topic, Watermark};

/// One change to one document at one position of a topic's sequence (PROTOCOL.md §2.3).
#[derive(Debug, Clone)]
pub struct Update {
    /// The topic.
    pub topic: Topic,
    /// Document key inside the topic.
    pub doc_key: DocKey,
    /// Per-document version; never regresses locally.
    pub doc_version: u64,
    /// Inline payload as raw JSON text. `None` when the wire said `null` or omitted it
    /// (tombstones, hydration-required updates).
    pub payload: Option<RawJson>,
    /// Expected hash of the payload; `None` = no check.
    pub payload_hash: Option<PayloadHash>,
    /// Position of this update in the topic sequence.
    pub watermark: Watermark,
    /// The payload is too large to inline: fetch it from the doc route (§4).
    pub hydration_required: bool,
    /// Tombstone: the document is removed (khala-sync extension).
    pub deleted: bool,
}

/// A `payload_hash` field: `null` is none.
pub(crate) fn read_hash(r: &mut Reader<'_>, key: &str) -> Res<Option<PayloadHash>> {
    match r.opt_str(key)? {
        None => Ok(None),
        Some(s) => PayloadHash::parse(&s)
            .map(Some)
            .map_err(|e| format!("`{key}`: {e}")),
    }
}

/// A payload field: `null` is none, anything else is kept as its exact text.
pub(crate) fn read_payload(r: &mut Reader<'_>) -> Res<Option<RawJson>> {
    if r.null()? {
        return Ok(None);
    }
    r.raw().map(|t| Some(RawJson::checked(t)))
}

/// A document key field.
pub(crate) fn read_doc_key(r: &mut Reader<'_>, key: &str) -> Res<DocKey> {
    let s = r.str(key)?;
    DocKey::new(s.into_owned()).map_err(|e| format!("`{key}`: {e}"))
}

impl Update {
    /// Reads one update object.
    pub(crate) fn read(r: &mut Reader<'_>) -> Res<Update> {
        let (mut topic, mut doc_key, mut doc_version, mut payload, mut payload_hash) =
            (None, None, None, None, None);
        let (mut watermark, mut hydration_required, mut deleted) = (None, None, None);
        r.object(&mut |r, k| match k {
            "topic" => set(&mut topic, json::read_topic(r, k)?, k),
            "doc_key" => set(&mut doc_key, read_doc_key(r, k)?, k),
            "doc_version" => set(&mut doc_version, r.uint(k)?, k),
            "payload" => set(&mut payload, read_payload(r)?, k),
            "payload_hash" => set(&mut payload_hash, read_hash(r, k)?, k),
            "watermark" => set(&mut watermark, r.uint(k)?, k),
            "hydration_required" => set(&mut hydration_required, r.bool(k)?, k),
            "deleted" => set(&mut deleted, r.bool(k)?, k),
            _ => r.skip(),
        })?;
        Ok(Update {
            topic: need(topic, "topic")?,
            doc_key: need(doc_key, "doc_key")?,
            doc_version: need(doc_version, "doc_version")?,
            payload: payload.flatten(),
            payload_hash: payload_hash.flatten(),
            watermark: Watermark(need(watermark, "watermark")?),
            hydration_required: hydration_required.unwrap_or(false),
            deleted: deleted.unwrap_or(false),
        })
    }
}

/// A `{topic, watermark}` pair as servers report them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicWatermark {
    /// The topic.
    pub topic: Topic,
    /// Its watermark.
    pub watermark: Watermark,
}

/// A page of updates for one topic.
#[derive(Debug, Clone)]
pub struct UpdateBatch {
    /// Updates in ascending watermark order (the engine re-checks).
    pub updates: Vec<Update>,
    /// True once this batch reaches the topic head (live pushes carry `true`).
    pub replay_complete: bool,
    /// The server's head per topic at the time of the batch.
    pub head_watermarks: Vec<TopicWatermark>,
}

impl UpdateBatch {
    /// Reads one `sync:update_batch` payload object.
    pub(crate) fn read(r: &mut Reader<'_>) -> Res<UpdateBatch> {
        let (mut updates, mut replay_complete, mut head_watermarks) = (None, None, None);
        r.object(&mut |r, k| match k {
            "updates" => {
                let mut list = Vec::new();
                r.list(k, &mut |r| {
                    list.push(Update::read(r)?);
                    Ok(())
                })?;
                set(&mut updates, list, k)
            }
            "replay_complete" => set(&mut replay_complete, r.bool(k)?, k),
            "head_watermarks" => set(&mut head_watermarks, json::read_watermarks(r, k)?, k),
            _ => r.skip(),
        })?;
        Ok(UpdateBatch {
            updates: need(updates, "updates")?,
            replay_complete: replay_complete.unwrap_or(false),
            head_watermarks: head_watermarks.unwrap_or_default(),
        })
    }
}

/// One stale topic in a `stale_cursor` error.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StaleTopic {
    /// The topic.
    pub topic: Topic,
    /// `retention_floor_breach`, `replay_budget_exceeded` or `cursor_ahead_of_head`.
    #[serde(default)]
    pub reason: Option<String>,
    /// QoS tier of the topic.
    #[serde(default)]
    pub qos_tier: Option<String>,
    /// The cursor the client asked to resume after.
    #[serde(default)]
    pub resume_after: Option<u64>,
    /// Oldest position the server can still replay after.
    #[serde(default)]
    pub retention_floor: Option<u64>,
    /// The topic's head.
    #[serde(default)]
    pub head_watermark: Option<u64>,
    /// `head - resume_after`.
    #[serde(default)]
    pub replay_lag: Option<u64>,
    /// The tier's replay budget.
    #[serde(default)]
    pub replay_budget_events: Option<u64>,
}

/// `stale_cursor` details (PROTOCOL.md §2.4).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StaleCursor {
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// Reason codes across all stale topics.
    #[serde(default)]
    pub reason_codes: Vec<String>,
    /// The stale topics.
    #[serde(default)]
    pub stale_topics: Vec<StaleTopic>,
    /// Alternative single-topic form some servers push.
    #[serde(default)]
    pub topic: Option<Topic>,
}

impl StaleCursor {
    /// Every topic named stale, from either form.
    pub fn topics(&self) -> Vec<Topic> {
        let mut out: Vec<Topic> = self.stale_topics.iter().map(|t| t.topic.clone()).collect();
        if let Some(t) = &self.topic {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }
}

/// `slow_consumer` details.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SlowConsumer {
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// `throttle` (keep going) or `disconnect` (reconnect after `reconnect_after_ms`).
    #[serde(default)]
    pub action: String,
    /// The topic that overflowed.
    #[serde(default)]
    pub topic: Option<Topic>,
    /// Minimum delay before reconnecting.
    #[serde(default)]
    pub reconnect_after_ms: Option<u64>,
}

impl SlowConsumer {
    /// The server will drop (or has dropped) the connection.
    pub fn is_disconnect(&self) -> bool {
        self.action == "disconnect"
    }
}

/// Join refused because this client build/protocol is not supported (§2.1).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UpgradeRequired {
    /// The exact compat code (`upgrade_required`, `unsupported_protocol_version`, …).
    pub code: String,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// Oldest supported client build, if the server said.
    #[serde(default)]
    pub min_client_build_id: Option<String>,
    /// Newest supported client build, if the server said.
    #[serde(default)]
    pub max_client_build_id: Option<String>,
}

/// A `sync:error` push or error reply, decoded by `code` (PROTOCOL.md §2.4).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerError {
    /// The server cannot replay from the client's cursor.
    StaleCursor(StaleCursor),
    /// The client is not draining fast enough.
    SlowConsumer(SlowConsumer),
    /// The token is expired/revoked: fetch a new one and reconnect.
    ReauthRequired {
        /// Message.
        message: String,
        /// Reason, if given.
        reason: Option<String>,
    },
    /// Some requested topics are not allowed (or unknown).
    ForbiddenTopic {
        /// Message.
        message: String,
        /// The refused topics.
        topics: Vec<Topic>,
    },
    /// The subscribe/unsubscribe request was malformed (a client bug).
    BadSubscription {
        /// Message.
        message: String,
    },
    /// This client must be upgraded; stop syncing.
    UpgradeRequired(UpgradeRequired),
    /// The channel topic was wrong (`bad_topic`).
    BadTopic {
        /// Message.
        message: String,
    },
    /// A code this client does not know; kept for diagnostics.
    Other {
        /// The code.
        code: String,
        /// Message.
        message: String,
    },
}

/// `code: message`, plus the topics a `forbidden_topic`/`stale_cursor` error names and a
/// `reauth_required` reason — the text the engine puts into `SyncError::Server` messages.
impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (message, topics, extra): (&str, Vec<Topic>, Option<&str>) = match self {
            ServerError::StaleCursor(s) => (&s.message, s.topics(), None),
            ServerError::SlowConsumer(s) => (&s.message, s.topic.iter().cloned().collect(), None),
            ServerError::ReauthRequired { message, reason } => {
                (message, Vec::new(), reason.as_deref())
            }
            ServerError::ForbiddenTopic { message, topics } => (message, topics.clone(), None),
            ServerError::UpgradeRequired(u) => (&u.message, Vec::new(), None),
            ServerError::BadSubscription { message }
            | ServerError::BadTopic { message }
            | ServerError::Other { message, .. } => (message, Vec::new(), None),
        };
        f.write_str(self.code())?;
        if !message.is_empty() {
            write!(f, ": {message}")?;
        }
        if let Some(r) = extra {
            write!(f, " ({r})")?;
        }
        for (i, t) in topics.iter().enumerate() {
            f.write_str(if i == 0 { " [topics: " } else { ", " })?;
            f.write_str(t.as_str())?;
            if i + 1 == topics.len() {
                f.write_str("]")?;
            }
        }
        Ok(())
    }
}

/// Compat codes that all mean "upgrade required" (§2.1).
pub const UPGRADE_CODES: &[&str] = &[
    "upgrade_required",
    "unsupported_protocol_version",
    "unsupported_schema_version",
    "invalid_client_build",
    "unsupported_client_build",
];

impl ServerError {
    /// Decodes an error object `{ "code": …, … }`: one parse into a `json::Value` tree
    /// and a walk over it (`protocol::json`), not a derived visitor per error shape.
    pub fn from_json(text: &str) -> Result<ServerError, super::ProtocolError> {
        let mut o =
            json::object(text).map_err(|e| super::ProtocolError::malformed("sync:error", e))?;
        error_of(&mut o).map_err(|e| super::ProtocolError::malformed("sync:error", e))
    }

    /// The wire code.
    pub fn code(&self) -> &str {
        match self {
            ServerError::StaleCursor(_) => "stale_cursor",
            ServerError::SlowConsumer(_) => "slow_consumer",
            ServerError::ReauthRequired { .. } => "reauth_required",
            ServerError::ForbiddenTopic { .. } => "forbidden_topic",
            ServerError::BadSubscription { .. } => "bad_subscription",
            ServerError::UpgradeRequired(u) => &u.code,
            ServerError::BadTopic { .. } => "bad_topic",
            ServerError::Other { code, .. } => code,
        }
    }
}

fn error_of(o: &mut json::Obj<'_>) -> Result<ServerError, String> {
    use super::json::{list, obj, opt, opt_string, opt_uint, string, take, topic as topic_of};
    let code = string(take(o, "code")?, "code")?;
    let message = opt_string(o, "message")?.unwrap_or_default();
    let reason = opt_string(o, "reason")?;
    let forbidden_topics = list(o, "forbidden_topics", topic_of)?;
    let opt_topic =
        |o: &mut json::Obj<'_>| opt(o, "topic").map(|v| topic_of(v, "topic")).transpose();
    Ok(match code.as_str() {
        "stale_cursor" => ServerError::StaleCursor(StaleCursor {
            message,
            reason_codes: list(o, "reason_codes", string)?,
            stale_topics: list(o, "stale_topics", |v, key| {
                let mut t = obj(v, key)?;
                Ok(StaleTopic {
                    topic: topic_of(take(&mut t, "topic")?, "topic")?,
                    reason: opt_string(&mut t, "reason")?,
                    qos_tier: opt_string(&mut t, "qos_tier")?,
                    resume_after: opt_uint(&mut t, "resume_after")?,
                    retention_floor: opt_uint(&mut t, "retention_floor")?,
                    head_watermark: opt_uint(&mut t, "head_watermark")?,
                    replay_lag: opt_uint(&mut t, "replay_lag")?,
                    replay_budget_events: opt_uint(&mut t, "replay_budget_events")?,
                })
            })?,
            topic: opt_topic(o)?,
        }),
        "slow_consumer" => ServerError::SlowConsumer(SlowConsumer {
            message,
            action: opt_string(o, "action")?.unwrap_or_default(),
            topic: opt_topic(o)?,
            reconnect_after_ms: opt_uint(o, "reconnect_after_ms")?,
        }),
        "reauth_required" => ServerError::ReauthRequired { message, reason },
        "forbidden_topic" => ServerError::ForbiddenTopic {
            message,
            topics: forbidden_topics,
        },
        "bad_subscription" => ServerError::BadSubscription { message },
        "bad_topic" => ServerError::BadTopic { message },
        c if UPGRADE_CODES.contains(&c) => ServerError::UpgradeRequired(UpgradeRequired {
            min_client_build_id: opt_string(o, "min_client_build_id")?,
            max_client_build_id: opt_string(o, "max_client_build_id")?,
            code,
            message,
        }),
        _ => ServerError::Other { code, message },
    })
}
