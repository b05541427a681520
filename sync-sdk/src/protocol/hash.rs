//! `khala.payload_hash.v1`: sha256 of the canonical JSON of a payload (PROTOCOL.md §2.3, §7).
//!
//! Canonical JSON: object keys sorted by UTF-8 bytes, no whitespace, arrays in order, strings
//! escaped only for `"`, `\` and control characters (`\b \f \n \r \t`, others `\u00xx`),
//! integers in decimal, floats in serde_json's shortest round-trip form.

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::ProtocolError;

/// A 32-byte sha256 payload digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PayloadHash(pub [u8; 32]);

impl PayloadHash {
    /// Hashes already-canonical bytes.
    pub fn of_canonical(canonical: &[u8]) -> Self {
        PayloadHash(Sha256::digest(canonical).into())
    }

    /// Hashes a payload given as raw JSON text (canonicalising it first).
    pub fn of_json_text(raw: &str) -> Result<Self, ProtocolError> {
        let mut buf = Vec::with_capacity(raw.len());
        canonicalize_into(raw, &mut buf)?;
        Ok(Self::of_canonical(&buf))
    }

    /// Hashes a parsed JSON value.
    pub fn of_value(value: &Value) -> Self {
        let mut buf = Vec::new();
        write_canonical(value, &mut buf);
        Self::of_canonical(&buf)
    }

    /// Wire form: standard base64 of the 32 raw bytes.
    pub fn to_base64(&self) -> String {
        let mut buf = [0u8; 44];
        self.base64_into(&mut buf).to_owned()
    }

    /// Wire form written into `buf` without allocating (44 bytes of standard base64).
    pub fn base64_into<'a>(&self, buf: &'a mut [u8; 44]) -> &'a str {
        use base64::Engine as _;
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(self.0, buf)
            .unwrap_or(0);
        std::str::from_utf8(&buf[..n]).unwrap_or("")
    }

    /// Display form: `sha256:<lowercase hex>`.
    pub fn to_display(&self) -> String {
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        s
    }

    /// Parses either the wire form (base64) or the display form (`sha256:<hex>`).
    pub fn parse(s: &str) -> Result<Self, ProtocolError> {
        if let Some(hex) = s.strip_prefix("sha256:") {
            if hex.len() != 64 {
                return Err(ProtocolError::InvalidHash(
                    "sha256: form needs 64 hex digits",
                ));
            }
            let mut out = [0u8; 32];
            for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
                let hi = hex_val(pair[0]).ok_or(ProtocolError::InvalidHash("non-hex digit"))?;
                let lo = hex_val(pair[1]).ok_or(ProtocolError::InvalidHash("non-hex digit"))?;
                out[i] = (hi << 4) | lo;
            }
            return Ok(PayloadHash(out));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| ProtocolError::InvalidHash("not base64"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| ProtocolError::InvalidHash("digest is not 32 bytes"))?;
        Ok(PayloadHash(arr))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Debug for PayloadHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_display())
    }
}

impl fmt::Display for PayloadHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl Serialize for PayloadHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for PayloadHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        PayloadHash::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Writes the canonical JSON of `raw` (JSON text) into `out`.
pub fn canonicalize_into(raw: &str, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    let value: Value = serde_json::from_str(raw).map_err(|e| ProtocolError::json("payload", e))?;
    write_canonical(&value, out);
    Ok(())
}

/// Canonical JSON of `raw` as a string.
pub fn canonical_json(raw: &str) -> Result<String, ProtocolError> {
    let mut out = Vec::with_capacity(raw.len());
    canonicalize_into(raw, &mut out)?;
    // Only valid UTF-8 is ever written (input was a Rust str; escapes are ASCII).
    String::from_utf8(out).map_err(|_| ProtocolError::Malformed {
        context: "payload",
        detail: "canonical form is not UTF-8".into(),
    })
}

/// Writes the canonical form of a parsed value.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // Sort explicitly by UTF-8 bytes. serde_json's default Map is a BTreeMap (already
            // in this order), but any crate in a build enabling serde_json's
            // `preserve_order` feature (feature unification) would silently turn it into
            // insertion order and change every hash.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// A payload's JSON text; `null` when the wire had none (tombstones, omitted payloads).
pub fn payload_text(raw: Option<&RawValue>) -> &str {
    raw.map_or("null", RawValue::get)
}

/// The payload's JSON text as an owned `String`, reusing the decoded buffer (no copy);
/// `null` when absent.
pub fn into_payload_string(raw: Option<Box<RawValue>>) -> String {
    raw.map_or_else(|| "null".to_owned(), |r| String::from(Box::<str>::from(r)))
}

/// True when there is nothing to check (`expected` is `None`) or the canonical hash of
/// `payload` (JSON text) equals `expected`. A payload that cannot be canonicalised does not
/// match.
///
/// Fast path: most servers send payloads already in canonical form, so the raw bytes are
/// hashed first; if that digest equals `expected`, the bytes *are* the canonical text (sha256
/// is collision resistant) and canonicalising is skipped. Otherwise the payload is
/// canonicalised and hashed as usual.
pub fn matches(payload: &str, expected: Option<&PayloadHash>) -> bool {
    expected.is_none_or(|h| {
        PayloadHash::of_canonical(payload.as_bytes()) == *h
            || PayloadHash::of_json_text(payload).is_ok_and(|c| c == *h)
    })
}

/// Verifies a raw payload against an expected hash. `None` means the server sent no hash
/// (`payload_hash: null`): nothing to check.
pub fn verify(raw: &RawValue, expected: Option<&PayloadHash>) -> Result<bool, ProtocolError> {
    match expected {
        None => Ok(true),
        Some(h) => Ok(PayloadHash::of_canonical(raw.get().as_bytes()) == *h
            || PayloadHash::of_json_text(raw.get())? == *h),
    }
}
