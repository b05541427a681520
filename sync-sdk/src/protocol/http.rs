//! HTTP bodies besides the token: snapshot pages (§3), hydration (§4), error bodies.

use super::json::{self, need, set, Reader, Res};
use super::update::{read_doc_key, read_hash, read_payload};
use super::{DecodeLimits, DocKey, PayloadHash, ProtocolError, RawJson, Topic, Watermark};

/// Snapshot route prefix: `GET {base}/api/sync/snapshot/{topic}`.
pub const SNAPSHOT_PATH: &str = "/api/sync/snapshot";
/// Hydration route prefix: `GET {base}/api/sync/doc/{topic}/{doc_key}`.
pub const DOC_PATH: &str = "/api/sync/doc";

/// One document of a snapshot page (always inline).
#[derive(Debug, Clone)]
pub struct SnapshotDoc {
    /// Key.
    pub doc_key: DocKey,
    /// Version.
    pub doc_version: u64,
    /// Payload as raw JSON (`None` = JSON null).
    pub payload: Option<RawJson>,
    /// Expected hash (`None` = no check).
    pub payload_hash: Option<PayloadHash>,
}

/// A snapshot page; every page of one snapshot is pinned to `snapshot_watermark`.
#[derive(Debug, Clone)]
pub struct SnapshotPage {
    /// The topic.
    pub topic: Topic,
    /// The watermark the whole snapshot describes.
    pub snapshot_watermark: Watermark,
    /// Documents of this page.
    pub docs: Vec<SnapshotDoc>,
    /// Cursor of the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// The hydration route's answer.
#[derive(Debug, Clone)]
pub struct DocResponse {
    /// Key.
    pub doc_key: DocKey,
    /// Latest version on the server (may be newer than the update that asked).
    pub doc_version: u64,
    /// Full payload.
    pub payload: Option<RawJson>,
    /// Hash of this version's payload.
    pub payload_hash: Option<PayloadHash>,
    /// Watermark of this version.
    pub watermark: Option<Watermark>,
}

/// The fields of a document object (snapshot docs and the hydration answer).
struct DocFields {
    doc_key: DocKey,
    doc_version: u64,
    payload: Option<RawJson>,
    payload_hash: Option<PayloadHash>,
    watermark: Option<Watermark>,
}

fn read_doc(r: &mut Reader<'_>) -> Res<DocFields> {
    let (mut key, mut version, mut payload, mut hash, mut mark) = (None, None, None, None, None);
    r.object(&mut |r, k| match k {
        "doc_key" => set(&mut key, read_doc_key(r, k)?, k),
        "doc_version" => set(&mut version, r.uint(k)?, k),
        "payload" => set(&mut payload, read_payload(r)?, k),
        "payload_hash" => set(&mut hash, read_hash(r, k)?, k),
        "watermark" => set(&mut mark, r.opt_uint(k)?, k),
        _ => r.skip(),
    })?;
    Ok(DocFields {
        doc_key: need(key, "doc_key")?,
        doc_version: need(version, "doc_version")?,
        payload: payload.flatten(),
        payload_hash: hash.flatten(),
        watermark: mark.flatten().map(Watermark),
    })
}

fn read_page(r: &mut Reader<'_>) -> Res<SnapshotPage> {
    let (mut topic, mut mark, mut docs, mut next) = (None, None, None, None);
    r.object(&mut |r, k| match k {
        "topic" => set(&mut topic, json::read_topic(r, k)?, k),
        "snapshot_watermark" => set(&mut mark, r.uint(k)?, k),
        "docs" => {
            let mut list = Vec::new();
            r.list(k, &mut |r| {
                let d = read_doc(r)?;
                list.push(SnapshotDoc {
                    doc_key: d.doc_key,
                    doc_version: d.doc_version,
                    payload: d.payload,
                    payload_hash: d.payload_hash,
                });
                Ok(())
            })?;
            set(&mut docs, list, k)
        }
        "next_cursor" => set(&mut next, r.opt_str(k)?.map(String::from), k),
        _ => r.skip(),
    })?;
    Ok(SnapshotPage {
        topic: need(topic, "topic")?,
        snapshot_watermark: Watermark(need(mark, "snapshot_watermark")?),
        docs: need(docs, "docs")?,
        next_cursor: next.flatten(),
    })
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
    json::read_all(body, read_page).map_err(|e| ProtocolError::malformed("snapshot page", e))
}

/// Decodes a hydration response.
pub fn decode_doc_response(
    body: &str,
    limits: &DecodeLimits,
) -> Result<DocResponse, ProtocolError> {
    limits.check("doc response", body.len())?;
    let d =
        json::read_all(body, read_doc).map_err(|e| ProtocolError::malformed("doc response", e))?;
    Ok(DocResponse {
        doc_key: d.doc_key,
        doc_version: d.doc_version,
        payload: d.payload,
        payload_hash: d.payload_hash,
        watermark: d.watermark,
    })
}

/// Best-effort decode of an error body; never fails (unknown shapes give empty fields).
pub fn decode_error_body(body: &str) -> HttpErrorBody {
    use super::json::{object, opt, opt_string};
    let parse = || -> Result<HttpErrorBody, String> {
        let mut b = object(body)?;
        let message = opt_string(&mut b, "message")?;
        let (code, inner_msg) = match opt(&mut b, "error") {
            None => (None, None),
            Some(json::Value::Str(c)) => (Some(c.into_owned()), None),
            Some(json::Value::Obj(mut e)) => {
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
