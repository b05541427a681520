//! Dialect F — the Khala runtime fanout (PROTOCOL.md §6): one WebSocket per topic at
//! `/internal/v1/khala/topics/{topic}/ws?after_seq=`, and the HTTP poll route
//! `/internal/v1/khala/topics/{topic}/messages?after_seq=&limit=`.
//!
//! Topics are append-only event logs. The SDK stores each message as a document whose key is
//! its decimal sequence and whose version is the sequence; the stored payload is the whole
//! message object as the server sent it (`{"topic","sequence","kind","payload",
//! "published_at"}`, raw bytes kept), so apps keep `kind` and `published_at` and the inner
//! `payload` comes back exactly as published.
//!
//! Every decoder is total: malformed, oversize or wrong-typed input gives a
//! [`ProtocolError`] (or, for poll answers, a [`PollFailure`]), never a panic.

use serde::Deserialize;

use super::http::encode_segment;
use super::json::{self, need, set, Reader, Res};
use super::{DecodeLimits, DocKey, ProtocolError, RawJson, Topic, Update, Watermark};

/// Route prefix of both dialect-F routes.
pub const TOPICS_PATH: &str = "/internal/v1/khala/topics";

/// One message of a topic's event log.
#[derive(Debug, Clone)]
pub struct FanoutMessage {
    /// Topic (as the message says).
    pub topic: Topic,
    /// Dense sequence, from 1.
    pub sequence: Watermark,
    /// Event kind (`run.step`…); empty when absent.
    pub kind: String,
    /// The whole message object, raw JSON exactly as received.
    pub raw: RawJson,
}

impl FanoutMessage {
    /// The message as an update of the shared apply path: `doc_key` = sequence,
    /// `doc_version` = sequence, payload = the raw message, no hash (dialect F has none).
    pub fn into_update(self) -> Update {
        Update {
            topic: self.topic,
            doc_key: DocKey::from_sequence(self.sequence.get()),
            doc_version: self.sequence.get(),
            payload: Some(self.raw),
            payload_hash: None,
            watermark: self.sequence,
            hydration_required: false,
            deleted: false,
        }
    }
}

/// `stale_cursor` details (WS frame and the 410 body).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StaleDetails {
    /// Topic.
    #[serde(default)]
    pub topic: Option<String>,
    /// The cursor the client asked for.
    #[serde(default)]
    pub requested_cursor: Option<u64>,
    /// Resume point the server can still serve: messages after it are retained.
    pub oldest_available_cursor: u64,
    /// Newest sequence.
    #[serde(default)]
    pub head_cursor: Option<u64>,
    /// `retention_floor_breach` and/or `replay_budget_exceeded`.
    #[serde(default)]
    pub reason_codes: Vec<String>,
    /// Events between the cursor and head.
    #[serde(default)]
    pub replay_lag: Option<u64>,
    /// The topic's replay budget.
    #[serde(default)]
    pub replay_budget_events: Option<u64>,
    /// QoS tier.
    #[serde(default)]
    pub qos_tier: Option<String>,
}

impl StaleDetails {
    /// Where to resume without asking for more than the server can replay: after
    /// `oldest_available_cursor`, and — when the replay budget was the reason — no further
    /// back than `head - replay_budget_events` (else the resume is stale again, forever).
    pub fn resume_cursor(&self) -> u64 {
        let mut c = self.oldest_available_cursor;
        if self
            .reason_codes
            .iter()
            .any(|r| r == "replay_budget_exceeded")
        {
            if let (Some(h), Some(b)) = (self.head_cursor, self.replay_budget_events) {
                c = c.max(h.saturating_sub(b));
            }
        }
        c
    }
}

/// `slow_consumer_evicted` details of a 409.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EvictionDetails {
    /// Lag when evicted.
    #[serde(default)]
    pub lag: Option<u64>,
    /// Strikes counted.
    #[serde(default)]
    pub strikes: Option<u32>,
    /// Strike limit.
    #[serde(default)]
    pub max_strikes: Option<u32>,
    /// Where the server suggests resuming (can be `0`: never move backwards for it).
    #[serde(default)]
    pub suggested_after_seq: Option<u64>,
}

/// [`StaleDetails`] from a parsed object (the frame itself, or a 410's `details`); a walk
/// instead of the derived `Deserialize` (kept for apps), see `protocol::json`.
fn stale_of(mut o: json::Obj<'_>) -> Result<StaleDetails, String> {
    use super::json::{list, opt_string, opt_uint, string, take, uint};
    let reason_codes = list(&mut o, "reason_codes", string)?;
    Ok(StaleDetails {
        topic: opt_string(&mut o, "topic")?,
        requested_cursor: opt_uint(&mut o, "requested_cursor")?,
        oldest_available_cursor: uint(
            &take(&mut o, "oldest_available_cursor")?,
            "oldest_available_cursor",
        )?,
        head_cursor: opt_uint(&mut o, "head_cursor")?,
        reason_codes,
        replay_lag: opt_uint(&mut o, "replay_lag")?,
        replay_budget_events: opt_uint(&mut o, "replay_budget_events")?,
        qos_tier: opt_string(&mut o, "qos_tier")?,
    })
}

/// [`EvictionDetails`] from a 409's `details` object.
fn eviction_of(mut o: json::Obj<'_>) -> Result<EvictionDetails, String> {
    use super::json::opt_uint;
    let mut u32_of = |key: &str| -> Result<Option<u32>, String> {
        opt_uint(&mut o, key)?
            .map(|n| u32::try_from(n).map_err(|_| format!("`{key}` out of range")))
            .transpose()
    };
    let strikes = u32_of("strikes")?;
    let max_strikes = u32_of("max_strikes")?;
    Ok(EvictionDetails {
        lag: opt_uint(&mut o, "lag")?,
        strikes,
        max_strikes,
        suggested_after_seq: opt_uint(&mut o, "suggested_after_seq")?,
    })
}

/// A dialect-F WebSocket frame.
#[derive(Debug)]
#[non_exhaustive]
pub enum FanoutFrame {
    /// First frame of a connection.
    Hello {
        /// Topic.
        topic: Option<String>,
        /// The cursor the server starts after.
        after_seq: Option<u64>,
        /// Reconnect hint (includes the server's jitter).
        recommended_reconnect_backoff_ms: Option<u64>,
    },
    /// One message (ascending).
    Message(FanoutMessage),
    /// The cursor cannot be served; the server drops the connection next.
    StaleCursor(StaleDetails),
    /// `slow_consumer_evicted` / `fanout_error`; the server drops the connection next.
    Error {
        /// Code.
        code: String,
        /// Message.
        message: String,
    },
    /// A frame type this client does not know (ignored; forward compatible).
    Unknown(String),
}

/// Reads one message object, keeping its exact text.
fn read_message(r: &mut Reader<'_>) -> Res<FanoutMessage> {
    let start = r.peek().map(|_| r.pos());
    let (mut topic, mut sequence, mut kind) = (None, None, None);
    r.object(&mut |r, k| match k {
        "topic" => set(&mut topic, json::read_topic(r, k)?, k),
        "sequence" => set(&mut sequence, r.uint(k)?, k),
        "kind" => set(&mut kind, r.opt_str(k)?.map(String::from), k),
        _ => r.skip(),
    })?;
    let raw = RawJson::checked(r.since(start.unwrap_or(0)));
    let sequence = need(sequence, "sequence")?;
    if sequence == 0 {
        return Err("sequence 0 (sequences start at 1)".into());
    }
    Ok(FanoutMessage {
        topic: need(topic, "topic")?,
        sequence: Watermark(sequence),
        kind: kind.flatten().unwrap_or_default(),
        raw,
    })
}

fn decode_message(text: &str) -> Result<FanoutMessage, ProtocolError> {
    json::read_all(text, read_message).map_err(|e| ProtocolError::malformed("fanout message", e))
}

/// Decodes one WebSocket text frame.
pub fn decode_frame(text: &str, limits: &DecodeLimits) -> Result<FanoutFrame, ProtocolError> {
    limits.check("fanout frame", text.len())?;
    struct Frame<'a> {
        kind: String,
        message: Option<&'a str>,
        topic: Option<String>,
        after_seq: Option<u64>,
        recommended_reconnect_backoff_ms: Option<u64>,
        code: Option<String>,
    }
    fn read<'a>(r: &mut Reader<'a>) -> Res<Frame<'a>> {
        let (mut kind, mut message, mut topic, mut after_seq, mut backoff, mut code) =
            (None, None, None, None, None, None);
        r.object(&mut |r, k| match k {
            "type" => set(&mut kind, r.str(k)?.into_owned(), k),
            "message" => set(&mut message, (!r.null()?).then(|| r.raw()).transpose()?, k),
            "topic" => set(&mut topic, r.opt_str(k)?.map(String::from), k),
            "after_seq" => set(&mut after_seq, r.opt_uint(k)?, k),
            "recommended_reconnect_backoff_ms" => set(&mut backoff, r.opt_uint(k)?, k),
            "code" => set(&mut code, r.opt_str(k)?.map(String::from), k),
            _ => r.skip(),
        })?;
        Ok(Frame {
            kind: need(kind, "type")?,
            message: message.flatten(),
            topic: topic.flatten(),
            after_seq: after_seq.flatten(),
            recommended_reconnect_backoff_ms: backoff.flatten(),
            code: code.flatten(),
        })
    }
    let f = json::read_all(text, read).map_err(|e| ProtocolError::malformed("fanout frame", e))?;
    match f.kind.as_str() {
        "hello" => Ok(FanoutFrame::Hello {
            topic: f.topic,
            after_seq: f.after_seq,
            recommended_reconnect_backoff_ms: f.recommended_reconnect_backoff_ms,
        }),
        "message" => {
            let raw = f.message.ok_or_else(|| ProtocolError::Malformed {
                context: "fanout frame",
                detail: "message frame without `message`".into(),
            })?;
            decode_message(raw).map(FanoutFrame::Message)
        }
        "stale_cursor" => json::object(text)
            .and_then(stale_of)
            .map(FanoutFrame::StaleCursor)
            .map_err(|e| ProtocolError::malformed("fanout stale_cursor", e)),
        "error" => {
            let message = json::object(text)
                .ok()
                .and_then(|mut o| json::opt_string(&mut o, "message").ok())
                .flatten()
                .unwrap_or_default();
            Ok(FanoutFrame::Error {
                code: f.code.unwrap_or_else(|| "fanout_error".into()),
                message,
            })
        }
        other => Ok(FanoutFrame::Unknown(other.to_owned())),
    }
}

/// A 200 answer of the poll route.
#[derive(Debug)]
pub struct PollPage {
    /// Messages after the requested cursor, ascending.
    pub messages: Vec<FanoutMessage>,
    /// Resume point the server can still serve.
    pub oldest_available_cursor: Option<u64>,
    /// Newest sequence of the topic.
    pub head_cursor: Option<u64>,
    /// The cursor to ask for next.
    pub next_cursor: Option<u64>,
    /// The page reaches the head.
    pub replay_complete: bool,
    /// The page size the server applied.
    pub limit_applied: Option<u64>,
    /// The server's reconnect/poll hint.
    pub recommended_reconnect_backoff_ms: Option<u64>,
}

/// Why a poll did not return a page.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PollFailure {
    /// 401: the token was refused (`token_expired`, `invalid_token`…).
    Unauthorized {
        /// `reason_code`.
        reason: Option<String>,
    },
    /// 403 `forbidden_topic` / `forbidden_origin`.
    Forbidden {
        /// `error`.
        code: String,
        /// `reason_code`.
        reason: Option<String>,
    },
    /// 409 `slow_consumer_evicted`.
    Evicted(EvictionDetails),
    /// 410 `stale_cursor`.
    Stale(Box<StaleDetails>),
    /// 429 `rate_limited`: wait this long before the next poll of the topic.
    RateLimited {
        /// `retry_after_ms` (or the `Retry-After` header).
        retry_after_ms: u64,
    },
    /// 413 `payload_too_large`: ask for smaller pages.
    TooLarge,
    /// 400 `invalid_request` (a client bug).
    InvalidRequest(String),
    /// Any other status (5xx, 404…).
    Status {
        /// HTTP status.
        status: u16,
        /// `error` code, if any.
        code: Option<String>,
    },
    /// No answer (DNS, connect, TLS, timeout, reset).
    Transport(String),
    /// An answer that could not be decoded.
    Decode(ProtocolError),
}

/// The fields of a poll error body this client reads (any of them wrong-typed: none).
struct ErrBody<'a> {
    error: Option<json::Value<'a>>,
    reason_code: Option<String>,
    retry_after_ms: Option<u64>,
    details: Option<json::Value<'a>>,
    message: Option<String>,
}

fn err_body(body: &str) -> Option<ErrBody<'_>> {
    use super::json::{object, opt, opt_string, opt_uint};
    let mut o = object(body).ok()?;
    Some(ErrBody {
        error: opt(&mut o, "error"),
        reason_code: opt_string(&mut o, "reason_code").ok()?,
        retry_after_ms: opt_uint(&mut o, "retry_after_ms").ok()?,
        details: opt(&mut o, "details"),
        message: opt_string(&mut o, "message").ok()?,
    })
}

/// A poll route's 200 body.
fn read_page(r: &mut Reader<'_>) -> Res<PollPage> {
    let (mut messages, mut oldest, mut head, mut next, mut complete, mut limit, mut backoff) =
        (None, None, None, None, None, None, None);
    r.object(&mut |r, k| match k {
        "messages" => {
            let mut list = Vec::new();
            r.list(k, &mut |r| {
                list.push(read_message(r)?);
                Ok(())
            })?;
            set(&mut messages, list, k)
        }
        "oldest_available_cursor" => set(&mut oldest, r.opt_uint(k)?, k),
        "head_cursor" => set(&mut head, r.opt_uint(k)?, k),
        "next_cursor" => set(&mut next, r.opt_uint(k)?, k),
        "replay_complete" => set(&mut complete, r.bool(k)?, k),
        "limit_applied" => set(&mut limit, r.opt_uint(k)?, k),
        "recommended_reconnect_backoff_ms" => set(&mut backoff, r.opt_uint(k)?, k),
        _ => r.skip(),
    })?;
    Ok(PollPage {
        messages: need(messages, "messages")?,
        oldest_available_cursor: oldest.flatten(),
        head_cursor: head.flatten(),
        next_cursor: next.flatten(),
        replay_complete: complete.unwrap_or(false),
        limit_applied: limit.flatten(),
        recommended_reconnect_backoff_ms: backoff.flatten(),
    })
}

/// Decodes a poll answer: `status` and `body` as received, `retry_after` the `Retry-After`
/// header in milliseconds if present.
pub fn decode_poll(
    status: u16,
    body: &str,
    retry_after: Option<u64>,
    limits: &DecodeLimits,
) -> Result<PollPage, PollFailure> {
    if let Err(e) = limits.check("fanout poll", body.len()) {
        return Err(PollFailure::Decode(e));
    }
    if status == 200 {
        return json::read_all(body, read_page)
            .map_err(|e| PollFailure::Decode(ProtocolError::malformed("fanout poll", e)));
    }
    let mut b: Option<ErrBody> = if body.len() <= 64 * 1024 {
        err_body(body)
    } else {
        None
    };
    let code = b.as_ref().and_then(|b| match &b.error {
        Some(json::Value::Str(s)) => Some(s.to_string()),
        Some(json::Value::Obj(o)) => o.get("code").and_then(|c| c.as_str()).map(str::to_owned),
        _ => None,
    });
    let reason = b.as_ref().and_then(|b| b.reason_code.clone());
    let details = b.as_mut().and_then(|b| b.details.take());
    Err(match status {
        401 => PollFailure::Unauthorized { reason },
        403 => PollFailure::Forbidden {
            code: code.unwrap_or_else(|| "forbidden".into()),
            reason,
        },
        409 => match details.map(|d| json::obj(d, "details").and_then(eviction_of)) {
            Some(Ok(d)) => PollFailure::Evicted(d),
            _ => PollFailure::Evicted(EvictionDetails {
                lag: None,
                strikes: None,
                max_strikes: None,
                suggested_after_seq: None,
            }),
        },
        410 => match details.map(|d| json::obj(d, "details").and_then(stale_of)) {
            Some(Ok(d)) => PollFailure::Stale(Box::new(d)),
            Some(Err(e)) => PollFailure::Decode(ProtocolError::malformed("fanout 410 details", e)),
            None => PollFailure::Decode(ProtocolError::Malformed {
                context: "fanout 410",
                detail: "stale_cursor without details".into(),
            }),
        },
        429 => PollFailure::RateLimited {
            retry_after_ms: b
                .as_ref()
                .and_then(|b| b.retry_after_ms)
                .or(retry_after)
                .unwrap_or(1_000),
        },
        413 => PollFailure::TooLarge,
        400 => PollFailure::InvalidRequest(
            b.and_then(|b| b.message)
                .or(code)
                .unwrap_or_else(|| "invalid_request".into()),
        ),
        s => PollFailure::Status { status: s, code },
    })
}

/// `{base}/internal/v1/khala/topics/{topic}/ws?after_seq=&limit=` (no secret in it: the
/// token goes in the `Authorization` header).
pub fn ws_path(topic: &Topic, after_seq: Watermark, limit: u32) -> String {
    format!(
        "{TOPICS_PATH}/{}/ws?after_seq={}&limit={limit}",
        encode_segment(topic.as_str()),
        after_seq.get()
    )
}

/// `{base}/internal/v1/khala/topics/{topic}/messages?after_seq=&limit=`.
pub fn poll_path(topic: &Topic, after_seq: Watermark, limit: u32) -> String {
    format!(
        "{TOPICS_PATH}/{}/messages?after_seq={}&limit={limit}",
        encode_segment(topic.as_str()),
        after_seq.get()
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lim() -> DecodeLimits {
        DecodeLimits::default()
    }

    #[test]
    fn message_frame_keeps_raw_bytes() {
        let text = r#"{"type":"message","message":{"topic":"run:1:events","sequence":2,"kind":"run.step","payload":{"n":-0.0,"big":9007199254740993,"s":"é"},"published_at":"2026-01-01T00:00:00Z"}}"#;
        let FanoutFrame::Message(m) = decode_frame(text, &lim()).unwrap() else {
            panic!("not a message")
        };
        assert_eq!(m.sequence, Watermark(2));
        assert_eq!(m.kind, "run.step");
        assert!(m.raw.get().contains(r#""n":-0.0,"big":9007199254740993"#));
        let u = m.into_update();
        assert_eq!(u.doc_key.as_str(), "2");
        assert_eq!(u.doc_version, 2);
        assert!(u.payload_hash.is_none());
    }

    #[test]
    fn hello_stale_error_unknown() {
        let h = decode_frame(
            r#"{"type":"hello","topic":"run:1:events","after_seq":0,"limit":100,"recommended_reconnect_backoff_ms":512}"#,
            &lim(),
        )
        .unwrap();
        assert!(matches!(
            h,
            FanoutFrame::Hello {
                recommended_reconnect_backoff_ms: Some(512),
                ..
            }
        ));
        let s = decode_frame(
            r#"{"type":"stale_cursor","topic":"t","requested_cursor":3,"oldest_available_cursor":18,"head_cursor":21,"reason_codes":["retention_floor_breach","replay_budget_exceeded"],"replay_lag":18,"replay_budget_events":2,"qos_tier":"hot"}"#,
            &lim(),
        )
        .unwrap();
        let FanoutFrame::StaleCursor(d) = s else {
            panic!()
        };
        assert_eq!(d.oldest_available_cursor, 18);
        // Budget 2 from head 21: resuming at 18 would be stale again; resume at 19.
        assert_eq!(d.resume_cursor(), 19);
        let e = decode_frame(
            r#"{"type":"error","code":"slow_consumer_evicted","message":"lag"}"#,
            &lim(),
        )
        .unwrap();
        assert!(
            matches!(e, FanoutFrame::Error { ref code, .. } if code == "slow_consumer_evicted")
        );
        assert!(matches!(
            decode_frame(r#"{"type":"future"}"#, &lim()).unwrap(),
            FanoutFrame::Unknown(_)
        ));
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        for bad in [
            "",
            "null",
            "[]",
            r#"{"type":1}"#,
            r#"{"type":"message"}"#,
            r#"{"type":"message","message":{"topic":"t","sequence":"2"}}"#,
            r#"{"type":"message","message":{"topic":"t","sequence":0}}"#,
            r#"{"type":"message","message":{"topic":"","sequence":1}}"#,
            r#"{"type":"stale_cursor"}"#,
        ] {
            assert!(decode_frame(bad, &lim()).is_err(), "{bad}");
        }
        let big = "x".repeat(100);
        let small = DecodeLimits {
            max_frame_bytes: 10,
        };
        assert!(matches!(
            decode_frame(&big, &small),
            Err(ProtocolError::TooLarge { .. })
        ));
    }

    #[test]
    fn poll_page_and_errors() {
        let p = decode_poll(
            200,
            r#"{"topic":"t","messages":[{"topic":"t","sequence":1,"kind":"k","payload":null}],"oldest_available_cursor":0,"head_cursor":5,"next_cursor":1,"replay_complete":false,"limit_applied":1}"#,
            None,
            &lim(),
        )
        .unwrap();
        assert_eq!(p.messages.len(), 1);
        assert_eq!(p.head_cursor, Some(5));
        let f = |status, body: &str| decode_poll(status, body, Some(700), &lim()).unwrap_err();
        assert_eq!(
            f(
                401,
                r#"{"error":"unauthorized","reason_code":"token_expired"}"#
            ),
            PollFailure::Unauthorized {
                reason: Some("token_expired".into())
            }
        );
        assert!(matches!(
            f(403, r#"{"error":"forbidden_origin","reason_code":"origin_not_allowed"}"#),
            PollFailure::Forbidden { ref code, .. } if code == "forbidden_origin"
        ));
        assert!(matches!(
            f(
                409,
                r#"{"error":"slow_consumer_evicted","details":{"topic":"t","lag":900,"strikes":3,"max_strikes":3,"suggested_after_seq":0}}"#
            ),
            PollFailure::Evicted(EvictionDetails {
                suggested_after_seq: Some(0),
                ..
            })
        ));
        assert!(matches!(
            f(410, r#"{"error":"stale_cursor","details":{"oldest_available_cursor":18,"head_cursor":21,"reason_codes":["retention_floor_breach"]}}"#),
            PollFailure::Stale(ref d) if d.oldest_available_cursor == 18
        ));
        assert!(matches!(f(410, "{}"), PollFailure::Decode(_)));
        assert_eq!(
            f(429, r#"{"error":"rate_limited","retry_after_ms":260}"#),
            PollFailure::RateLimited {
                retry_after_ms: 260
            }
        );
        assert_eq!(
            f(429, "not json"),
            PollFailure::RateLimited {
                retry_after_ms: 700
            }
        );
        assert_eq!(f(413, ""), PollFailure::TooLarge);
        assert!(matches!(f(400, "{}"), PollFailure::InvalidRequest(_)));
        assert!(matches!(
            f(503, "<html>"),
            PollFailure::Status { status: 503, .. }
        ));
        assert!(matches!(
            decode_poll(200, r#"{"messages":"x"}"#, None, &lim()),
            Err(PollFailure::Decode(_))
        ));
    }

    #[test]
    fn paths_encode_the_topic() {
        let t = Topic::new("run:a/b:events").unwrap();
        assert_eq!(
            poll_path(&t, Watermark(7), 200),
            "/internal/v1/khala/topics/run%3Aa%2Fb%3Aevents/messages?after_seq=7&limit=200"
        );
        assert!(ws_path(&t, Watermark(0), 100).ends_with("/ws?after_seq=0&limit=100"));
    }
}
