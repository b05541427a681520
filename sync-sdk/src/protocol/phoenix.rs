//! Dialect P: the Phoenix channel `sync:v1` (PROTOCOL.md §2).
//!
//! Frames are JSON arrays `[join_ref, ref, topic, event, payload]` (Phoenix serializer v2).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{
    DecodeLimits, ProtocolError, ServerError, Topic, TopicWatermark, UpdateBatch, Watermark,
};

/// The channel every sync frame travels on.
pub const CHANNEL: &str = "sync:v1";
/// Path of the socket below the server's base URL.
pub const SOCKET_PATH: &str = "/sync/socket/websocket";
/// Phoenix serializer version the client speaks.
pub const VSN: &str = "2.0.0";
/// `protocol_version` query parameter.
pub const PROTOCOL_VERSION: &str = "khala.ws.v1";
/// `schema_version` query parameter.
pub const SCHEMA_VERSION: u32 = 1;

/// A decoded server frame.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ServerMessage {
    /// `phx_reply` to one of our pushes (matched by `reference`).
    Reply(Reply),
    /// `sync:update_batch`.
    UpdateBatch(UpdateBatch),
    /// `sync:error` push.
    Error(ServerError),
    /// Server `sync:heartbeat` push: *delivered* watermarks, never to be persisted.
    Heartbeat {
        /// Delivered watermarks per topic.
        watermarks: Vec<TopicWatermark>,
    },
    /// `phx_close` or `phx_error`: the channel ended; rejoin.
    ChannelClosed {
        /// True for `phx_error` (crash) rather than an orderly close.
        error: bool,
    },
    /// `sync:frame` (legacy duplicate of batches/errors): ignored by design (§2.3).
    LegacyFrame,
}

/// A `phx_reply`.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Echoed join ref.
    pub join_ref: Option<String>,
    /// Echoed ref of the push being answered.
    pub reference: String,
    /// Channel topic (`sync:v1`, or `phoenix` for socket heartbeats).
    pub topic: String,
    /// `status == "ok"`.
    pub ok: bool,
    /// The `response` object (absent = `{}`), decoded by the caller who knows what it asked.
    pub response: Option<Box<RawValue>>,
}

impl Reply {
    /// Decodes an ok `response` as `T`.
    pub fn decode<T: for<'de> Deserialize<'de>>(
        &self,
        context: &'static str,
    ) -> Result<T, ProtocolError> {
        serde_json::from_str(self.response_text()).map_err(|e| ProtocolError::json(context, e))
    }

    /// The raw `response` JSON text (`{}` when absent).
    pub fn response_text(&self) -> &str {
        self.response.as_deref().map_or("{}", RawValue::get)
    }

    /// Decodes an error `response` as a [`ServerError`].
    pub fn error(&self) -> Result<ServerError, ProtocolError> {
        ServerError::from_json(self.response_text())
    }
}

/// Ok response to `phx_join`.
#[derive(Debug, Clone, Deserialize)]
pub struct JoinOk {
    /// Server-side subscription id.
    #[serde(default)]
    pub subscription_id: Option<String>,
    /// Topics the token allows.
    #[serde(default)]
    pub allowed_topics: Vec<Topic>,
    /// Server heads at join time.
    #[serde(default)]
    pub current_watermarks: Vec<TopicWatermark>,
}

/// Ok response to `sync:subscribe` (sent after the replay batches).
#[derive(Debug, Clone, Deserialize)]
pub struct SubscribeOk {
    /// Server-side subscription id.
    #[serde(default)]
    pub subscription_id: Option<String>,
    /// Subscribed topics.
    #[serde(default)]
    pub topics: Vec<Topic>,
    /// Heads of the requested topics.
    #[serde(default)]
    pub current_watermarks: Vec<TopicWatermark>,
}

/// Ok response to `sync:unsubscribe`.
#[derive(Debug, Clone, Deserialize)]
pub struct UnsubscribeOk {
    /// Topics still subscribed.
    #[serde(default)]
    pub topics: Vec<Topic>,
}

/// Ok response to a client `sync:heartbeat` (delivered watermarks: informational only).
#[derive(Debug, Clone, Deserialize)]
pub struct HeartbeatOk {
    /// Delivered watermarks.
    #[serde(default)]
    pub watermarks: Vec<TopicWatermark>,
}

#[derive(Deserialize)]
struct ReplyPayload {
    status: String,
    #[serde(default)]
    response: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct HeartbeatPush {
    #[serde(default)]
    watermarks: Vec<TopicWatermark>,
}

/// A frame's payload: update batches are decoded in the same pass as the envelope (they are
/// nearly every frame during a replay); everything else is kept raw and decoded by event.
enum FramePayload {
    Batch(UpdateBatch),
    Raw(Box<RawValue>),
}

struct Frame {
    join_ref: Option<String>,
    reference: Option<String>,
    topic: String,
    event: String,
    payload: FramePayload,
}

impl<'de> Deserialize<'de> for Frame {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, IgnoredAny, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Frame;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a Phoenix v2 frame [join_ref, ref, topic, event, payload]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Frame, A::Error> {
                let join_ref: Option<String> = seq
                    .next_element()?
                    .ok_or_else(|| Error::invalid_length(0, &self))?;
                let reference: Option<String> = seq
                    .next_element()?
                    .ok_or_else(|| Error::invalid_length(1, &self))?;
                let topic: String = seq
                    .next_element()?
                    .ok_or_else(|| Error::invalid_length(2, &self))?;
                let event: String = seq
                    .next_element()?
                    .ok_or_else(|| Error::invalid_length(3, &self))?;
                let payload = if event == "sync:update_batch" {
                    FramePayload::Batch(
                        seq.next_element()?
                            .ok_or_else(|| Error::invalid_length(4, &self))?,
                    )
                } else {
                    FramePayload::Raw(
                        seq.next_element()?
                            .ok_or_else(|| Error::invalid_length(4, &self))?,
                    )
                };
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(Error::invalid_length(6, &self));
                }
                Ok(Frame {
                    join_ref,
                    reference,
                    topic,
                    event,
                    payload,
                })
            }
        }
        d.deserialize_seq(V)
    }
}

/// Decodes one text frame from the server.
pub fn decode(text: &str, limits: &DecodeLimits) -> Result<ServerMessage, ProtocolError> {
    limits.check("phoenix frame", text.len())?;
    let Frame {
        join_ref,
        reference,
        topic,
        event,
        payload,
    } = serde_json::from_str(text).map_err(|e| ProtocolError::json("phoenix frame", e))?;
    let payload = match payload {
        FramePayload::Batch(batch) => return Ok(ServerMessage::UpdateBatch(batch)),
        FramePayload::Raw(p) => p,
    };
    let ctx = "phoenix payload";
    match event.as_str() {
        "phx_reply" => {
            let p: ReplyPayload =
                serde_json::from_str(payload.get()).map_err(|e| ProtocolError::json(ctx, e))?;
            let reference = reference.ok_or_else(|| ProtocolError::Malformed {
                context: "phx_reply",
                detail: "reply without ref".into(),
            })?;
            Ok(ServerMessage::Reply(Reply {
                join_ref,
                reference,
                topic,
                ok: p.status == "ok",
                response: p.response,
            }))
        }
        "sync:error" => Ok(ServerMessage::Error(ServerError::from_json(payload.get())?)),
        "sync:heartbeat" => {
            let hb: HeartbeatPush = serde_json::from_str(payload.get())
                .map_err(|e| ProtocolError::json("sync:heartbeat", e))?;
            Ok(ServerMessage::Heartbeat {
                watermarks: hb.watermarks,
            })
        }
        "phx_close" => Ok(ServerMessage::ChannelClosed { error: false }),
        "phx_error" => Ok(ServerMessage::ChannelClosed { error: true }),
        "sync:frame" => Ok(ServerMessage::LegacyFrame),
        _ => Err(ProtocolError::UnknownEvent { topic, event }),
    }
}

/// `resume_after` map form: `{topic: n}` for topics that have a cursor. Topics absent from
/// it replay from 0 without a staleness check (§2.2).
#[derive(Debug, Clone, Serialize)]
struct SubscribePayload<'a> {
    topics: &'a [Topic],
    #[serde(skip_serializing_if = "Option::is_none")]
    resume_after: Option<std::collections::BTreeMap<&'a str, u64>>,
    replay_batch_size: u32,
}

fn frame<P: Serialize>(
    join_ref: Option<&str>,
    reference: &str,
    topic: &str,
    event: &str,
    payload: &P,
) -> String {
    // Serializing plain strings/maps into a String cannot fail.
    serde_json::to_string(&(join_ref, reference, topic, event, payload))
        .unwrap_or_else(|_| String::from("[]"))
}

/// `phx_join` on `sync:v1`; its `reference` becomes the channel's join ref.
pub fn encode_join(join_ref: &str) -> String {
    frame(
        Some(join_ref),
        join_ref,
        CHANNEL,
        "phx_join",
        &serde_json::json!({}),
    )
}

/// `sync:subscribe` with `resume_after` for every topic that has a committed cursor.
pub fn encode_subscribe(
    join_ref: &str,
    reference: &str,
    topics: &[Topic],
    resume_after: &[(Topic, Watermark)],
    replay_batch_size: u32,
) -> String {
    let resume = if resume_after.is_empty() {
        None
    } else {
        Some(
            resume_after
                .iter()
                .map(|(t, w)| (t.as_str(), w.get()))
                .collect(),
        )
    };
    frame(
        Some(join_ref),
        reference,
        CHANNEL,
        "sync:subscribe",
        &SubscribePayload {
            topics,
            resume_after: resume,
            replay_batch_size,
        },
    )
}

/// `sync:unsubscribe`.
pub fn encode_unsubscribe(join_ref: &str, reference: &str, topics: &[Topic]) -> String {
    frame(
        Some(join_ref),
        reference,
        CHANNEL,
        "sync:unsubscribe",
        &serde_json::json!({ "topics": topics }),
    )
}

/// Client `sync:heartbeat` `{}`.
pub fn encode_heartbeat(join_ref: &str, reference: &str) -> String {
    frame(
        Some(join_ref),
        reference,
        CHANNEL,
        "sync:heartbeat",
        &serde_json::json!({}),
    )
}

/// `phx_leave` for an orderly shutdown.
pub fn encode_leave(join_ref: &str, reference: &str) -> String {
    frame(
        Some(join_ref),
        reference,
        CHANNEL,
        "phx_leave",
        &serde_json::json!({}),
    )
}

/// A `sync:subscribe` payload as a server reads it (PROTOCOL.md §2.2): `resume_after` may be
/// the map form `{topic: n}` (what [`encode_subscribe`] sends) or the list form
/// `[{"topic": …, "watermark": n}]`; both normalise to a list. For servers and tests.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SubscribeRequest {
    /// Requested topics, in request order.
    pub topics: Vec<Topic>,
    /// Cursors per topic (map form in key order, list form as given); absent/null = none.
    #[serde(default, deserialize_with = "resume_after_either_form")]
    pub resume_after: Vec<TopicWatermark>,
    /// Requested page size, if given (servers default to 200 and clamp to 1..=1000).
    #[serde(default)]
    pub replay_batch_size: Option<u64>,
}

fn resume_after_either_form<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<TopicWatermark>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Map(std::collections::BTreeMap<Topic, Watermark>),
        List(Vec<TopicWatermark>),
    }
    Ok(match Option::<Either>::deserialize(d)? {
        None => Vec::new(),
        Some(Either::Map(m)) => m
            .into_iter()
            .map(|(topic, watermark)| TopicWatermark { topic, watermark })
            .collect(),
        Some(Either::List(l)) => l,
    })
}

/// Decodes a `sync:subscribe` payload object (the fifth element of the client frame).
pub fn decode_subscribe_request(
    payload: &str,
    limits: &DecodeLimits,
) -> Result<SubscribeRequest, ProtocolError> {
    limits.check("sync:subscribe", payload.len())?;
    serde_json::from_str(payload).map_err(|e| ProtocolError::json("sync:subscribe", e))
}
