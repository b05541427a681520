//! `khala.payload_hash.v1` (PROTOCOL.md §2.3, §7): the shared vectors plus the
//! canonicalisation rules of §7 the vectors do not cover.
#![allow(clippy::unwrap_used)]

use khala_sync::protocol::hash::{canonical_json, canonicalize_into, verify};
use khala_sync::protocol::RawJson;
use khala_sync::protocol::{PayloadHash, ProtocolError};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The fixture travels with the repo (copied from the shared spec folder).
const VECTORS: &str = include_str!("fixtures/payload_hash_vectors.v1.json");

#[derive(Deserialize)]
struct Fixture {
    version: String,
    algorithm: String,
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    name: String,
    /// Kept raw so the key order of the fixture (unsorted) reaches the canonicaliser.
    payload: Box<RawValue>,
    canonical_json: String,
    sha256: String,
    wire_base64: String,
}

fn fixture() -> Fixture {
    serde_json::from_str(VECTORS).unwrap()
}

#[test]
fn fixture_header() {
    let f = fixture();
    assert_eq!(f.version, "khala.payload_hash.v1");
    assert_eq!(f.algorithm, "sha256");
    assert!(f.vectors.len() >= 5, "{} vectors", f.vectors.len());
}

#[test]
fn every_vector_canonical_json() {
    for v in fixture().vectors {
        let raw = v.payload.get();
        assert_eq!(canonical_json(raw).unwrap(), v.canonical_json, "{}", v.name);
        // Canonicalisation is idempotent.
        assert_eq!(
            canonical_json(&v.canonical_json).unwrap(),
            v.canonical_json,
            "{}",
            v.name
        );
        let mut buf = Vec::new();
        canonicalize_into(raw, &mut buf).unwrap();
        assert_eq!(buf, v.canonical_json.as_bytes(), "{}", v.name);
    }
}

#[test]
fn every_vector_hash_both_forms() {
    for v in fixture().vectors {
        let raw = v.payload.get();
        let h = PayloadHash::of_json_text(raw).unwrap();
        assert_eq!(h.to_display(), v.sha256, "{}", v.name);
        assert_eq!(h.to_base64(), v.wire_base64, "{}", v.name);
        assert_eq!(format!("{h:?}"), v.sha256, "Debug is the display form");
        assert_eq!(format!("{h}"), v.wire_base64, "Display is the wire form");
        assert_eq!(
            PayloadHash::of_canonical(v.canonical_json.as_bytes()),
            h,
            "{}",
            v.name
        );
        let value: serde_json::Value = serde_json::from_str(raw).unwrap();
        assert_eq!(
            PayloadHash::of_json_text(&value.to_string()).unwrap(),
            h,
            "{}",
            v.name
        );
        // Both forms parse to the same digest.
        assert_eq!(PayloadHash::parse(&v.sha256).unwrap(), h, "{}", v.name);
        assert_eq!(PayloadHash::parse(&v.wire_base64).unwrap(), h, "{}", v.name);
        // serde: serialises as the wire form, deserialises either form.
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            format!("\"{}\"", v.wire_base64)
        );
        let from_display: PayloadHash = serde_json::from_str(&format!("\"{}\"", v.sha256)).unwrap();
        let from_wire: PayloadHash =
            serde_json::from_str(&format!("\"{}\"", v.wire_base64)).unwrap();
        assert_eq!(from_display, h);
        assert_eq!(from_wire, h);
        // verify() against both.
        assert!(verify(&rj(&v.payload), Some(&from_display)).unwrap());
        assert!(verify(&rj(&v.payload), None).unwrap());
    }
}

#[test]
fn verify_detects_mismatch() {
    let f = fixture();
    let a = &f.vectors[0];
    let b = &f.vectors[1];
    let hb = PayloadHash::parse(&b.wire_base64).unwrap();
    assert!(!verify(&rj(&a.payload), Some(&hb)).unwrap());
}

#[test]
fn parse_accepts_uppercase_hex_and_json_escaped_base64() {
    let h = PayloadHash::parse("QyWM/3g/5wNtikMDP4MK38YOwDc4JHNUisdCuIgpJ3c=").unwrap();
    let upper = format!("sha256:{}", h.to_display()[7..].to_ascii_uppercase());
    assert_eq!(PayloadHash::parse(&upper).unwrap(), h);
    // `\/` is a legal JSON escape for `/` inside the base64 string.
    let escaped: PayloadHash =
        serde_json::from_str(r#""QyWM\/3g\/5wNtikMDP4MK38YOwDc4JHNUisdCuIgpJ3c=""#).unwrap();
    assert_eq!(escaped, h);
}

#[test]
fn parse_rejects_bad_forms() {
    let good_hex = "43258cff783fe7036d8a43033f830adfc60ec037382473548ac742b888292777";
    let bad: Vec<String> = vec![
        String::new(),
        "sha256:".into(),
        format!("sha256:{}", &good_hex[..63]),
        format!("sha256:{good_hex}0"),
        format!("sha256:{}g", &good_hex[..63]),
        format!("sha256:{}é", &good_hex[..62]),
        format!("sha256: {}", &good_hex[..63]),
        format!("SHA256:{good_hex}"),
        format!("sha-256:{good_hex}"),
        good_hex.into(),
        // 31 and 33 bytes
        "QyWM/3g/5wNtikMDP4MK38YOwDc4JHNUisdCuIgpJw==".into(),
        "QyWM/3g/5wNtikMDP4MK38YOwDc4JHNUisdCuIgpJ3cA".into(),
        // missing padding, URL-safe alphabet, whitespace, trailing garbage
        "QyWM/3g/5wNtikMDP4MK38YOwDc4JHNUisdCuIgpJ3c".into(),
        "QyWM_3g_5wNtikMDP4MK38YOwDc4JHNUisdCuIgpJ3c=".into(),
        " QyWM/3g/5wNtikMDP4MK38YOwDc4JHNUisdCuIgpJ3c=".into(),
        "QyWM/3g/5wNtikMDP4MK38YOwDc4JHNUisdCuIgpJ3c=\n".into(),
        "QyWM/3g/5wNtikMDP4MK38YOwDc4JHNUisdCuIgpJ3c==".into(),
        "null".into(),
    ];
    for s in bad {
        assert!(
            matches!(PayloadHash::parse(&s), Err(ProtocolError::InvalidHash(_))),
            "{s:?}"
        );
        assert_eq!(
            PayloadHash::parse(&s).unwrap_err().code(),
            "invalid_payload_hash"
        );
    }
    // Inside JSON, a wrong type or bad form is a serde error, never a panic.
    for s in [r#"42"#, r#""sha256:zz""#, r#"[]"#, r#"{}"#] {
        assert!(serde_json::from_str::<PayloadHash>(s).is_err(), "{s}");
    }
}

fn canon(raw: &str) -> String {
    canonical_json(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
}

#[test]
fn control_characters_escape_lowercase() {
    assert_eq!(canon(r#""\u0000""#), r#""\u0000""#);
    assert_eq!(
        canon(r#""\u0001\u001F\u001e\u000B""#),
        r#""\u0001\u001f\u001e\u000b""#
    );
    assert_eq!(canon(r#""\b\f\n\r\t""#), r#""\b\f\n\r\t""#);
    assert_eq!(
        canon(r#""\u0008\u000C\u000A\u000D\u0009""#),
        r#""\b\f\n\r\t""#
    );
    assert_eq!(canon(r#""\"\\""#), r#""\"\\""#);
    // DEL and C1 controls are not JSON control characters: raw UTF-8.
    assert_eq!(canon(r#""\u007f\u0085""#), "\"\u{7f}\u{85}\"");
    // Control characters in keys too.
    assert_eq!(canon("{\"a\\u0002\":1}"), r#"{"a\u0002":1}"#);
}

#[test]
fn no_escaped_slash_and_raw_non_ascii() {
    assert_eq!(canon(r#""a\/b""#), r#""a/b""#);
    assert_eq!(canon(r#""docs/sync""#), r#""docs/sync""#);
    assert_eq!(canon(r#""\u00e9""#), "\"é\"");
    assert_eq!(canon("\"é\""), "\"é\"");
    assert_eq!(canon(r#""\ud83d\ude00""#), "\"😀\"");
    assert_eq!(canon(r#""\u2028\u2029""#), "\"\u{2028}\u{2029}\"");
    assert_eq!(canon("\"日本語\""), "\"日本語\"");
    // Lone surrogates are not valid Unicode: a typed error, not a panic.
    assert!(matches!(
        canonical_json(r#""\ud800""#),
        Err(ProtocolError::Malformed { .. })
    ));
}

#[test]
fn keys_sorted_by_utf8_bytes_not_utf16() {
    // UTF-16 order would put U+1F600 (D83D DE00) before U+E000; UTF-8 bytes put EE.. first.
    assert_eq!(
        canon("{\"\u{1f600}\":1,\"\u{e000}\":2}"),
        "{\"\u{e000}\":2,\"\u{1f600}\":1}"
    );
    assert_eq!(
        canon(r#"{"b":1,"a":2,"B":3,"":4,"aa":5,"é":6,"z":7}"#),
        r#"{"":4,"B":3,"a":2,"aa":5,"b":1,"z":7,"é":6}"#
    );
    // Escaped and raw spellings of the same key sort (and collapse) identically.
    assert_eq!(canon(r#"{"\u0062":1,"a":2}"#), r#"{"a":2,"b":1}"#);
    // Nested objects are sorted too.
    assert_eq!(
        canon(r#"{"z":{"y":1,"x":{"b":0,"a":0}},"a":[]}"#),
        r#"{"a":[],"z":{"x":{"a":0,"b":0},"y":1}}"#
    );
}

#[test]
fn arrays_keep_order_and_nest() {
    assert_eq!(canon("[3, 1, 2]"), "[3,1,2]");
    assert_eq!(
        canon("[[[]],[1,[2,{\"b\":1,\"a\":0}]],{}]"),
        r#"[[[]],[1,[2,{"a":0,"b":1}]],{}]"#
    );
    assert_eq!(canon(" [ ] "), "[]");
    assert_eq!(canon(" { } "), "{}");
    assert_eq!(canon("\n{\n\t\"a\" : [ 1 , 2 ]\r\n}\n"), r#"{"a":[1,2]}"#);
}

#[test]
fn integers_in_decimal_up_to_u64() {
    assert_eq!(canon("0"), "0");
    assert_eq!(canon("-1"), "-1");
    assert_eq!(canon("-9223372036854775808"), "-9223372036854775808");
    assert_eq!(canon("9223372036854775807"), "9223372036854775807");
    assert_eq!(canon("9223372036854775808"), "9223372036854775808");
    assert_eq!(canon("18446744073709551615"), "18446744073709551615");
    assert_eq!(
        canon("9007199254740993"),
        "9007199254740993",
        "2^53+1 stays exact"
    );
    assert_eq!(
        canon(r#"{"n":-42,"m":[-0.5,-1e3]}"#),
        r#"{"m":[-0.5,-1000.0],"n":-42}"#
    );
}

#[test]
fn floats_shortest_round_trip() {
    assert_eq!(canon("0.1"), "0.1");
    assert_eq!(canon("1.5"), "1.5");
    assert_eq!(canon("-0.0"), "-0.0");
    assert_eq!(canon("1e2"), "100.0");
    assert_eq!(canon("1.0"), "1.0");
    assert_eq!(canon("0.30000000000000004"), "0.30000000000000004");
    assert_eq!(canon("5e-324"), "5e-324");
    // Exponent spelling (`e308` vs `e+308`) follows serde_json's float formatter, which
    // changed between releases (ryu → zmij); §7 leaves floats unpinned, so only the value
    // is asserted here.
    let max = canon("1.7976931348623157e308");
    assert_eq!(max.parse::<f64>().unwrap(), f64::MAX);
    assert_eq!(canon(&max), max);
    // Beyond u64 the integer is read as a double (no arbitrary precision): deterministic.
    let big = canon("18446744073709551616");
    assert_eq!(big, canon("18446744073709551616.0"));
    // Out of f64 range: a typed error.
    assert!(matches!(
        canonical_json("1e400"),
        Err(ProtocolError::Malformed { .. })
    ));
}

#[test]
fn scalars_and_literals() {
    assert_eq!(canon("null"), "null");
    assert_eq!(canon("true"), "true");
    assert_eq!(canon("false"), "false");
    assert_eq!(canon(r#""""#), r#""""#);
}

#[test]
fn invalid_json_is_malformed() {
    for bad in [
        "",
        " ",
        "{",
        "[1,]",
        "{\"a\":1,}",
        "nul",
        "'a'",
        "NaN",
        "Infinity",
        "01",
        "1 2",
        "{\"a\"}",
        "\"\u{1}\"",
    ] {
        assert!(
            matches!(canonical_json(bad), Err(ProtocolError::Malformed { .. })),
            "{bad:?}"
        );
        assert!(PayloadHash::of_json_text(bad).is_err(), "{bad:?}");
    }
    let deep = "[".repeat(10_000);
    assert!(matches!(
        canonical_json(&deep),
        Err(ProtocolError::Malformed { .. })
    ));
    let deep_closed = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(matches!(
        canonical_json(&deep_closed),
        Err(ProtocolError::Malformed { .. })
    ));
}

#[test]
fn write_canonical_matches_text_path() {
    let v = serde_json::json!({"b": [1, {"d": "\u{1}", "c": null}], "a": "é/\"", "\u{e000}": 1, "\u{1f600}": 2});
    let mut out = Vec::new();
    canonicalize_into(&v.to_string(), &mut out).unwrap();
    let s = String::from_utf8(out).unwrap();
    assert_eq!(s, "{\"a\":\"é/\\\"\",\"b\":[1,{\"c\":null,\"d\":\"\\u0001\"}],\"\u{e000}\":1,\"\u{1f600}\":2}");
    assert_eq!(canon(&v.to_string()), s);
    assert_eq!(
        PayloadHash::of_json_text(&v.to_string()).unwrap(),
        PayloadHash::of_canonical(s.as_bytes())
    );
}

/// A fixture payload as the SDK's raw JSON type.
fn rj(p: &RawValue) -> RawJson {
    RawJson::from_string(p.get().to_owned()).unwrap()
}
