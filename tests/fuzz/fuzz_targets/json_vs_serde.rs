//! The SDK's JSON reader against `serde_json` (the parser it replaced) as the oracle: the same
//! texts are accepted as one JSON value, and the canonical JSON of `payload_hash` is the same
//! (or both refuse). Only nesting deeper than 127 levels may differ (PROTOCOL-level choice in
//! `protocol/json.rs`: the reader stops at 128, serde_json's `Value` at 127).
#![no_main]
use khala_sync::protocol::hash::canonical_json;
use khala_sync::protocol::RawJson;
use libfuzzer_sys::fuzz_target;

/// Deepest bracket nesting outside strings (an upper bound of the JSON nesting).
fn depth(text: &str) -> usize {
    let (mut d, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                d += 1;
                max = max.max(d);
            }
            b']' | b'}' => d = d.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn oracle_canonical(text: &str) -> Option<String> {
    fn walk(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(m) => {
                let mut e: Vec<_> = m.iter().collect();
                e.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                out.push('{');
                for (i, (k, x)) in e.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    khala_sync::protocol::json::push_str(k, out);
                    out.push(':');
                    walk(x, out);
                }
                out.push('}');
            }
            serde_json::Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    walk(x, out);
                }
                out.push(']');
            }
            serde_json::Value::String(s) => khala_sync::protocol::json::push_str(s, out),
            other => out.push_str(&other.to_string()),
        }
    }
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let mut out = String::new();
    walk(&v, &mut out);
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if depth(text) > 126 {
        return;
    }
    let mine = RawJson::from_string(text.to_owned()).is_ok();
    let serde = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
    assert_eq!(mine, serde, "accepted differently: {text:?}");
    assert_eq!(
        canonical_json(text).ok(),
        oracle_canonical(text),
        "canonical differs: {text:?}"
    );
});
