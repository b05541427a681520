//! Dialect P: the Phoenix channel `sync:v1` (PROTOCOL.md §2).
//!
//! Frames are JSON arrays `[join_ref, ref, topic, event, payload]` (Phoenix serializer v2).

use serde::Deserialize;

use super::json::{self, need, set, Reader, Res};
use super::{
    DecodeLimits, ProtocolError, RawJson, ServerError, Topic, TopicWatermark, UpdateBatch,
    Watermark,
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
    pub response: Option<RawJson>,
}

/// An ok `response` body [`Reply::decode`] can decode.
pub trait ReplyBody: Sized {
    /// Decodes the body from its JSON text (an error names the field, never a value).
    #[doc(hidden)]
    fn from_text(text: &str) -> Result<Self, String>;
}

impl Reply {
    /// Decodes an ok `response` as `T`.
    pub fn decode<T: ReplyBody>(&self, context: &'static str) -> Result<T, ProtocolError> {
        T::from_text(self.response_text()).map_err(|e| ProtocolError::malformed(context, e))
    }

    /// The raw `response` JSON text (`{}` when absent).
    pub fn response_text(&self) -> &str {
        self.response.as_ref().map_or("{}", RawJson::get)
    }

    /// Decodes an error `response` as a [`ServerError`].
    pub fn error(&self) -> Result<ServerError, ProtocolError> {
        ServerError::from_json(self.response_text())
    }
}

/// Ok response to `phx_join`.
#[derive(Debug, Clone)]
pub struct JoinOk {
    /// Server-side subscription id.
    pub subscription_id: Option<String>,
    /// Topics the token allows.
    pub allowed_topics: Vec<Topic>,
    /// Server heads at join time.
    pub current_watermarks: Vec<TopicWatermark>,
}

/// Ok response to `sync:subscribe` (sent after the replay batches).
#[derive(Debug, Clone)]
pub struct SubscribeOk {
    /// Server-side subscription id.
    pub subscription_id: Option<String>,
    /// Subscribed topics.
    pub topics: Vec<Topic>,
    /// Heads of the requested topics.
    pub current_watermarks: Vec<TopicWatermark>,
}

/// Ok response to `sync:unsubscribe`.
#[derive(Debug, Clone)]
pub struct UnsubscribeOk {
    /// Topics still subscribed.
    pub topics: Vec<Topic>,
}

/// Ok response to a client `sync:heartbeat` (delivered watermarks: informational only).
#[derive(Debug, Clone)]
pub struct HeartbeatOk {
    /// Delivered watermarks.
    pub watermarks: Vec<TopicWatermark>,
}

/// The fields the reply bodies share: `subscription_id`, a topic list under `topics_key`,
/// and a watermark list under `marks_key` (each absent = empty; a body without one of the
/// lists passes `None` and skips that key like any other).
type ReplyFields = (Option<String>, Vec<Topic>, Vec<TopicWatermark>);

fn read_reply(text: &str, topics_key: Option<&str>, marks_key: Option<&str>) -> Res<ReplyFields> {
    let (mut id, mut topics, mut marks) = (None, None, None);
    json::read_all(text, |r| {
        r.object(&mut |r, k| {
            if k == "subscription_id" {
                set(&mut id, r.opt_str(k)?.map(String::from), k)
            } else if Some(k) == topics_key {
                set(&mut topics, json::read_topics(r, k)?, k)
            } else if Some(k) == marks_key {
                set(&mut marks, json::read_watermarks(r, k)?, k)
            } else {
                r.skip()
            }
        })
    })?;
    Ok((
        id.flatten(),
        topics.unwrap_or_default(),
        marks.unwrap_or_default(),
    ))
}

impl ReplyBody for JoinOk {
    fn from_text(text: &str) -> Res<Self> {
        let (subscription_id, allowed_topics, current_watermarks) =
            read_reply(text, Some("allowed_topics"), Some("current_watermarks"))?;
        Ok(JoinOk {
            subscription_id,
            allowed_topics,
            current_watermarks,
        })
    }
}

impl ReplyBody for SubscribeOk {
    fn from_text(text: &str) -> Res<Self> {
        let (subscription_id, topics, current_watermarks) =
            read_reply(text, Some("topics"), Some("current_watermarks"))?;
        Ok(SubscribeOk {
            subscription_id,
            topics,
            current_watermarks,
        })
    }
}

impl ReplyBody for UnsubscribeOk {
    fn from_text(text: &str) -> Res<Self> {
        let (_, topics, _) = read_reply(text, Some("topics"), None)?;
        Ok(UnsubscribeOk { topics })
    }
}

impl ReplyBody for HeartbeatOk {
    fn from_text(text: &str) -> Res<Self> {
        let (_, _, watermarks) = read_reply(text, None, Some("watermarks"))?;
        Ok(HeartbeatOk { watermarks })
    }
}

/// A frame's payload: update batches are decoded in the same pass as the envelope (they are
/// nearly every frame during a replay); everything else is kept raw and decoded by event.
enum FramePayload<'a> {
    Batch(UpdateBatch),
    Raw(&'a str),
}

struct Frame<'a> {
    join_ref: Option<String>,
    reference: Option<String>,
    topic: String,
    event: String,
    payload: FramePayload<'a>,
}

/// Reads `[join_ref, ref, topic, event, payload]`.
fn read_frame<'a>(r: &mut Reader<'a>) -> Res<Frame<'a>> {
    const SHAPE: &str = "expected a Phoenix v2 frame [join_ref, ref, topic, event, payload]";
    let mut n = 0;
    let (mut join_ref, mut reference, mut topic, mut event, mut payload) =
        (None, None, None, None, None);
    if r.peek() != Some(b'[') {
        return Err(SHAPE.into());
    }
    r.array(&mut |r| {
        match n {
            0 => join_ref = r.opt_str("join_ref")?.map(String::from),
            1 => reference = r.opt_str("ref")?.map(String::from),
            2 => topic = Some(r.str("topic")?.into_owned()),
            3 => event = Some(r.str("event")?.into_owned()),
            4 => {
                payload = Some(if event.as_deref() == Some("sync:update_batch") {
                    if r.peek() != Some(b'{') {
                        return Err(json::wrong("payload", "an object"));
                    }
                    FramePayload::Batch(UpdateBatch::read(r)?)
                } else {
                    FramePayload::Raw(r.raw()?)
                });
            }
            _ => return Err(SHAPE.into()),
        }
        n += 1;
        Ok(())
    })?;
    match (topic, event, payload) {
        (Some(topic), Some(event), Some(payload)) => Ok(Frame {
            join_ref,
            reference,
            topic,
            event,
            payload,
        }),
        _ => Err(SHAPE.into()),
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
    } = json::read_all(text, read_frame)
        .map_err(|e| ProtocolError::malformed("phoenix frame", e))?;
    let payload = match payload {
        FramePayload::Batch(batch) => return Ok(ServerMessage::UpdateBatch(batch)),
        FramePayload::Raw(p) => p,
    };
    let ctx = "phoenix payload";
    match event.as_str() {
        "phx_reply" => {
            let (mut status, mut response) = (None, None);
            json::read_all(payload, |r| {
                r.object(&mut |r, k| match k {
                    "status" => set(&mut status, r.str(k)?.into_owned(), k),
                    "response" => set(&mut response, super::update::read_payload(r)?, k),
                    _ => r.skip(),
                })
            })
            .and_then(|()| need(status.as_ref(), "status").map(drop))
            .map_err(|e| ProtocolError::malformed(ctx, e))?;
            let reference = reference.ok_or_else(|| ProtocolError::Malformed {
                context: "phx_reply",
                detail: "reply without ref".into(),
            })?;
            Ok(ServerMessage::Reply(Reply {
                join_ref,
                reference,
                topic,
                ok: status.as_deref() == Some("ok"),
                response: response.flatten(),
            }))
        }
        "sync:error" => Ok(ServerMessage::Error(ServerError::from_json(payload)?)),
        "sync:heartbeat" => {
            let hb = HeartbeatOk::from_text(payload)
                .map_err(|e| ProtocolError::malformed("sync:heartbeat", e))?;
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

/// `[join_ref, ref, topic, event, payload]` with `payload` already JSON text. Written by
/// hand (a handful of strings): no serializer in the web package for five outbound frames.
fn frame(
    join_ref: Option<&str>,
    reference: &str,
    topic: &str,
    event: &str,
    payload: &str,
) -> String {
    let mut out = Vec::with_capacity(48 + reference.len() + payload.len());
    out.push(b'[');
    match join_ref {
        Some(j) => json::write_str(j, &mut out),
        None => out.extend_from_slice(b"null"),
    }
    for s in [reference, topic, event] {
        out.push(b',');
        json::write_str(s, &mut out);
    }
    out.push(b',');
    out.extend_from_slice(payload.as_bytes());
    out.push(b']');
    // Valid UTF-8 in, ASCII escapes added.
    String::from_utf8(out).unwrap_or_default()
}

/// `{"topics":[…]` — the opening of the subscribe and unsubscribe payloads (object left open).
fn topics_json(topics: &[Topic]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + topics.len() * 24);
    out.extend_from_slice(b"{\"topics\":[");
    for (i, t) in topics.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::write_str(t.as_str(), &mut out);
    }
    out.push(b']');
    out
}

/// `phx_join` on `sync:v1`; its `reference` becomes the channel's join ref.
pub fn encode_join(join_ref: &str) -> String {
    frame(Some(join_ref), join_ref, CHANNEL, "phx_join", "{}")
}

/// `sync:subscribe` with `resume_after` for every topic that has a committed cursor.
pub fn encode_subscribe(
    join_ref: &str,
    reference: &str,
    topics: &[Topic],
    resume_after: &[(Topic, Watermark)],
    replay_batch_size: u32,
) -> String {
    let mut p = topics_json(topics);
    if !resume_after.is_empty() {
        // Map form, keys in byte order, a repeated topic once (its last cursor).
        let mut resume: Vec<(&str, u64)> = resume_after
            .iter()
            .map(|(t, w)| (t.as_str(), w.get()))
            .collect();
        resume.sort_by(|a, b| a.0.cmp(b.0));
        p.extend_from_slice(b",\"resume_after\":{");
        let mut first = true;
        for (i, (t, w)) in resume.iter().enumerate() {
            if resume.get(i + 1).is_some_and(|n| n.0 == *t) {
                continue;
            }
            if !first {
                p.push(b',');
            }
            first = false;
            json::write_str(t, &mut p);
            p.push(b':');
            p.extend_from_slice(w.to_string().as_bytes());
        }
        p.push(b'}');
    }
    p.extend_from_slice(format!(",\"replay_batch_size\":{replay_batch_size}}}").as_bytes());
    frame(
        Some(join_ref),
        reference,
        CHANNEL,
        "sync:subscribe",
        std::str::from_utf8(&p).unwrap_or("{}"),
    )
}

/// `sync:unsubscribe`.
pub fn encode_unsubscribe(join_ref: &str, reference: &str, topics: &[Topic]) -> String {
    frame(Some(join_ref), reference, CHANNEL, "sync:unsubscribe", {
        let mut p = topics_json(topics);
        p.push(b'}');
        &String::from_utf8(p).unwrap_or_default()
    })
}

/// Client `sync:heartbeat` `{}`.
pub fn encode_heartbeat(join_ref: &str, reference: &str) -> String {
    frame(Some(join_ref), reference, CHANNEL, "sync:heartbeat", "{}")
}

/// `phx_leave` for an orderly shutdown.
pub fn encode_leave(join_ref: &str, reference: &str) -> String {
    frame(Some(join_ref), reference, CHANNEL, "phx_leave", "{}")
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
