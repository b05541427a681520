//! Canonical JSON and `khala.payload_hash.v1` (PROTOCOL.md §2.3, §7 "Canonical JSON").
//!
//! Written independently of the SDK's implementation on purpose: the dev server is a
//! cross-check, so the two must agree only through the fixture vectors.

use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// Canonical JSON of `value`: object keys sorted by UTF-8 bytes, no whitespace, arrays in
/// order, strings escaped only for `"`, `\` and control characters, numbers as serde_json
/// prints them (integers in decimal, floats in shortest round-trip form).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // UTF-8 byte order, not UTF-16 (PROTOCOL.md §7).
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Raw sha256 digest of the canonical JSON of `value`.
pub fn payload_digest(value: &Value) -> [u8; 32] {
    Sha256::digest(canonical_json(value).as_bytes()).into()
}

/// Wire form of the payload hash: standard (padded) base64 of the 32 digest bytes.
pub fn payload_hash(value: &Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(payload_digest(value))
}

/// Display form of the payload hash: `sha256:<lowercase hex>`.
pub fn payload_hash_display(value: &Value) -> String {
    let mut out = String::from("sha256:");
    for byte in payload_digest(value) {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Wire-form payload hash of raw JSON text (parsed first, so whitespace does not matter).
pub fn payload_hash_of_raw(raw: &str) -> Result<String, serde_json::Error> {
    let value: Value = serde_json::from_str(raw)?;
    Ok(payload_hash(&value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escapes_only_what_the_spec_says() {
        let v = json!({"b": "a/b é \u{1} \t", "a": [1, -2, 1.5, null, true]});
        assert_eq!(
            canonical_json(&v),
            "{\"a\":[1,-2,1.5,null,true],\"b\":\"a/b é \\u0001 \\t\"}"
        );
    }

    #[test]
    fn keys_sort_by_utf8_bytes() {
        // U+FF61 sorts after U+1F600 in UTF-16 but before it in UTF-8.
        let v = json!({"\u{1F600}": 1, "\u{FF61}": 2, "Z": 3, "a": 4});
        assert_eq!(
            canonical_json(&v),
            "{\"Z\":3,\"a\":4,\"\u{FF61}\":2,\"\u{1F600}\":1}"
        );
    }
}
