//! `khala.payload_hash.v1`: sha256 of the canonical JSON of a payload (PROTOCOL.md §2.3, §7).
//!
//! Canonical JSON: object keys sorted by UTF-8 bytes, no whitespace, arrays in order, strings
//! escaped only for `"`, `\` and control characters (`\b \f \n \r \t`, others `\u00xx`),
//! integers in decimal, floats in serde_json's shortest round-trip form.

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::json;
use super::{ProtocolError, RawJson};

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
    json::parse(raw)
        .and_then(|v| json::write_canonical(&v, out))
        .map_err(|e| ProtocolError::malformed("payload", e))
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

/// A payload's JSON text; `null` when the wire had none (tombstones, omitted payloads).
pub fn payload_text(raw: Option<&RawJson>) -> &str {
    raw.map_or("null", RawJson::get)
}

/// The payload's JSON text as an owned `String`, reusing the decoded buffer (no copy);
/// `null` when absent.
pub fn into_payload_string(raw: Option<RawJson>) -> String {
    raw.map_or_else(|| "null".to_owned(), RawJson::into_string)
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
pub fn verify(raw: &RawJson, expected: Option<&PayloadHash>) -> Result<bool, ProtocolError> {
    match expected {
        None => Ok(true),
        Some(h) => Ok(PayloadHash::of_canonical(raw.get().as_bytes()) == *h
            || PayloadHash::of_json_text(raw.get())? == *h),
    }
}
