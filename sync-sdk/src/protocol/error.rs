//! The one error type every decoder returns.

/// Why an inbound frame or HTTP body was rejected. Decoding never panics; every failure
/// is one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The input is larger than the configured limit and was not parsed.
    #[error("{context}: {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// What was being decoded.
        context: &'static str,
        /// Size of the input in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The input is not JSON of the expected shape (syntax error, wrong type, missing field).
    #[error("{context}: malformed: {detail}")]
    Malformed {
        /// What was being decoded.
        context: &'static str,
        /// The parser's explanation (never contains secrets: inputs are server frames).
        detail: String,
    },
    /// A Phoenix frame carried an event this client does not know.
    #[error("unknown event \"{event}\" on \"{topic}\"")]
    UnknownEvent {
        /// Channel topic of the frame.
        topic: String,
        /// The event name.
        event: String,
    },
    /// A `payload_hash` was neither base64 of 32 bytes, `sha256:<hex>`, nor null.
    #[error("invalid payload_hash: {0}")]
    InvalidHash(&'static str),
}

impl ProtocolError {
    /// Stable machine-readable code (shared with the Swift and JS bindings).
    pub fn code(&self) -> &'static str {
        match self {
            ProtocolError::TooLarge { .. } => "frame_too_large",
            ProtocolError::Malformed { .. } => "malformed_frame",
            ProtocolError::UnknownEvent { .. } => "unknown_event",
            ProtocolError::InvalidHash(_) => "invalid_payload_hash",
        }
    }

    pub(crate) fn json(context: &'static str, err: serde_json::Error) -> Self {
        ProtocolError::Malformed {
            context,
            detail: err.to_string(),
        }
    }

    /// A shape error found by a hand-written decoder (see `protocol::json`).
    pub(crate) fn malformed(context: &'static str, detail: String) -> Self {
        ProtocolError::Malformed { context, detail }
    }

    /// [`ProtocolError::malformed`] for bodies that carry secrets: quoted spans redacted.
    pub(crate) fn malformed_redacted(context: &'static str, detail: &str) -> Self {
        ProtocolError::Malformed {
            context,
            detail: redact_quoted(detail),
        }
    }
}

/// Replaces the contents of every `"…"` span (honouring `\"` escapes) with `<redacted>`.
fn redact_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut chars = msg.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '"' {
            continue;
        }
        // Inside a quoted span: skip to the closing quote.
        let mut closed = false;
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    closed = true;
                    break;
                }
                _ => {}
            }
        }
        out.push_str("<redacted>");
        if closed {
            out.push('"');
        }
    }
    out
}

/// Size limits applied before any input is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest WebSocket frame or HTTP body accepted, in bytes. Default 16 MiB.
    pub max_frame_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_frame_bytes: 16 * 1024 * 1024,
        }
    }
}

impl DecodeLimits {
    pub(crate) fn check(&self, context: &'static str, size: usize) -> Result<(), ProtocolError> {
        if size > self.max_frame_bytes {
            return Err(ProtocolError::TooLarge {
                context,
                size,
                limit: self.max_frame_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::redact_quoted;

    #[test]
    fn redacts_every_quoted_span() {
        assert_eq!(
            redact_quoted(r#"invalid type: string "eyJ.secret", expected u64 at line 1 column 9"#),
            r#"invalid type: string "<redacted>", expected u64 at line 1 column 9"#
        );
        assert_eq!(
            redact_quoted(r#"a "x\"y" b "z""#),
            r#"a "<redacted>" b "<redacted>""#
        );
        assert_eq!(
            redact_quoted(r#"open "unterminated"#),
            r#"open "<redacted>"#
        );
        assert_eq!(
            redact_quoted("missing field `data`"),
            "missing field `data`"
        );
        assert_eq!(
            redact_quoted(r#"trailing \ "\"#),
            r#"trailing \ "<redacted>"#
        );
    }
}
