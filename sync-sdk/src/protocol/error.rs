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
    #[error("unknown event {event:?} on {topic:?}")]
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
