//! HTTP bodies besides the token: snapshot pages (§3), hydration (§4), error bodies.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{DecodeLimits, DocKey, PayloadHash, ProtocolError, Topic, Watermark};

/// Snapshot route prefix: `GET {base}/api/sync/snapshot/{topic}`.
pub const SNAPSHOT_PATH: &str = "/api/sync/snapshot";
/// Hydration route prefix: `GET {base}/api/sync/doc/{topic}/{doc_key}`.
pub const DOC_PATH: &str = "/api/sync/doc";

/// One document of a snapshot page (always inline).
#[derive(Debug, Clone, Deserialize)]
pub struct SnapshotDoc {
    /// Key.
    pub doc_key: DocKey,
    /// Version.
    pub doc_version: u64,
    /// Payload as raw JSON (`None` = JSON null).
    #[serde(default)]
    pub payload: Option<Box<RawValue>>,
    /// Expected hash (`None` = no check).
    #[serde(default)]
    pub payload_hash: Option<PayloadHash>,
}

/// A snapshot page; every page of one snapshot is pinned to `snapshot_watermark`.
#[derive(Debug, Clone, Deserialize)]
pub struct SnapshotPage {
    /// The topic.
    pub topic: Topic,
    /// The watermark the whole snapshot describes.
    pub snapshot_watermark: Watermark,
    /// Documents of this page.
    pub docs: Vec<SnapshotDoc>,
    /// Cursor of the next page; `None` on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// The hydration route's answer.
#[derive(Debug, Clone, Deserialize)]
pub struct DocResponse {
    /// Key.
    pub doc_key: DocKey,
    /// Latest version on the server (may be newer than the update that asked).
    pub doc_version: u64,
    /// Full payload.
    #[serde(default)]
    pub payload: Option<Box<RawValue>>,
    /// Hash of this version's payload.
    #[serde(default)]
    pub payload_hash: Option<PayloadHash>,
    /// Watermark of this version.
    #[serde(default)]
    pub watermark: Option<Watermark>,
}

/// `{"message": …, "error": {"code": …, "message": …}}` (also tolerates `{"error": "code"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpErrorBody {
    /// Machine code, e.g. `unauthorized`, `invalid_scope`.
    pub code: Option<String>,
    /// Human message.
    pub message: Option<String>,
}

/// Decodes a snapshot page.
pub fn decode_snapshot_page(
    body: &str,
    limits: &DecodeLimits,
) -> Result<SnapshotPage, ProtocolError> {
    limits.check("snapshot page", body.len())?;
    serde_json::from_str(body).map_err(|e| ProtocolError::json("snapshot page", e))
}

/// Decodes a hydration response.
pub fn decode_doc_response(
    body: &str,
    limits: &DecodeLimits,
) -> Result<DocResponse, ProtocolError> {
    limits.check("doc response", body.len())?;
    serde_json::from_str(body).map_err(|e| ProtocolError::json("doc response", e))
}

/// Best-effort decode of an error body; never fails (unknown shapes give empty fields).
pub fn decode_error_body(body: &str) -> HttpErrorBody {
    use super::json::{object, opt, opt_string};
    let parse = || -> Result<HttpErrorBody, String> {
        let mut b = object(body)?;
        let message = opt_string(&mut b, "message")?;
        let (code, inner_msg) = match opt(&mut b, "error") {
            None => (None, None),
            Some(serde_json::Value::String(c)) => (Some(c), None),
            Some(serde_json::Value::Object(mut e)) => {
                (opt_string(&mut e, "code")?, opt_string(&mut e, "message")?)
            }
            Some(_) => return Err(String::new()),
        };
        Ok(HttpErrorBody {
            code,
            message: inner_msg.or(message),
        })
    };
    let empty = HttpErrorBody {
        code: None,
        message: None,
    };
    if body.len() > 64 * 1024 {
        return empty;
    }
    parse().unwrap_or(empty)
}

/// Percent-encodes one path segment (RFC 3986 unreserved kept; `/` becomes `%2F`; upper-case
/// hex, as the `percent-encoding` crate writes it). Hand-written: that crate's 768-byte
/// escape table and generic encoder cost more of the web package than these lines.
pub fn encode_segment(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::encode_segment;

    #[test]
    fn encode_segment_matches_the_percent_encoding_crate() {
        use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
        const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'.')
            .remove(b'_')
            .remove(b'~');
        let mut inputs: Vec<String> = (0u32..=0x7f)
            .chain([0xe9, 0x2028, 0x1f600])
            .filter_map(char::from_u32)
            .map(String::from)
            .collect();
        inputs.extend(
            [
                "runtime/run_summary:019c7f93",
                "run:r1:events",
                "a b%c?d#e",
                "bücher",
                "",
            ]
            .map(String::from),
        );
        for s in inputs {
            assert_eq!(
                encode_segment(&s),
                utf8_percent_encode(&s, SEGMENT).to_string(),
                "{s:?}"
            );
        }
    }
}
