//! The reader against `serde_json` as the oracle: same accepted language, same canonical form.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde::de::IgnoredAny;

use super::*;

/// The canonical form as the SDK computed it before this reader: `serde_json::Value`, keys
/// sorted by bytes, `Number`'s `Display`.
fn oracle_canonical(text: &str) -> Option<Vec<u8>> {
    fn walk(v: &serde_json::Value, out: &mut Vec<u8>) {
        match v {
            serde_json::Value::Null => out.extend_from_slice(b"null"),
            serde_json::Value::Bool(b) => {
                out.extend_from_slice(if *b { b"true" } else { b"false" })
            }
            serde_json::Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
            serde_json::Value::String(s) => write_str(s, out),
            serde_json::Value::Array(a) => {
                out.push(b'[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    walk(x, out);
                }
                out.push(b']');
            }
            serde_json::Value::Object(m) => {
                let mut e: Vec<_> = m.iter().collect();
                e.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                out.push(b'{');
                for (i, (k, x)) in e.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_str(k, out);
                    out.push(b':');
                    walk(x, out);
                }
                out.push(b'}');
            }
        }
    }
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let mut out = Vec::new();
    walk(&v, &mut out);
    Some(out)
}

fn canonical(text: &str) -> Option<Vec<u8>> {
    let v = parse(text).ok()?;
    let mut out = Vec::new();
    write_canonical(&v, &mut out).ok()?;
    Some(out)
}

fn skips(text: &str) -> bool {
    let mut r = Reader::new(text);
    r.skip().and_then(|()| r.end()).is_ok()
}

fn serde_skips(text: &str) -> bool {
    serde_json::from_str::<IgnoredAny>(text).is_ok()
}

const CASES: &[&str] = &[
    "0",
    "-0",
    "-0.0",
    "1",
    "-1",
    "01",
    "-",
    "1.",
    ".5",
    "1e",
    "1e+",
    "1E5",
    "1e-7",
    "2.5E+3",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "1e400",
    "-1e400",
    "1e-400",
    "123456789012345678901234567890",
    "0.1",
    "1.0",
    "100",
    "1e21",
    "1e22",
    "5e-324",
    "1.7976931348623157e308",
    "3.14159",
    "\"\"",
    "\"a\\u0041\"",
    "\"\\ud83d\\ude00\"",
    "\"\\ud83d\"",
    "\"\\ude00\"",
    "\"\\ud83dx\"",
    "\"\\ud83d\\u0041\"",
    "\"\\x\"",
    "\"\\u00G0\"",
    "\"tab\there\"",
    "\"\\/\\b\\f\\n\\r\\t\"",
    "\"é😀\"",
    "\"\\u0000\"",
    "[]",
    "[1,]",
    "[,1]",
    "[1 2]",
    "{}",
    "{\"a\":1,}",
    "{\"a\" 1}",
    "{1:2}",
    "{\"b\":1,\"a\":2}",
    "{\"a\":1,\"a\":2}",
    "{\"a\":{\"z\":[1,{\"y\":null}],\"b\":true}}",
    " [ 1 , 2 ] ",
    "[1] x",
    "",
    " ",
    "nul",
    "nulll",
    "true",
    "tru",
    "false",
    "[true,false,null]",
    "{\"\\u0061\":1,\"a\":2}",
    "{\"é\":1,\"z\":2,\"Z\":3}",
    "[\"\u{7f}\"]",
];

#[test]
fn fixed_cases_match_serde_json() {
    for c in CASES {
        assert_eq!(skips(c), serde_skips(c), "skip {c:?}");
        assert_eq!(canonical(c), oracle_canonical(c), "canonical {c:?}");
    }
}

#[test]
fn nesting_is_limited() {
    for depth in [127, 128, 129, 10_000] {
        let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        // 128 levels at most (serde_json skips any depth without recursing; this reader
        // recurses and must not overflow the stack on hostile input).
        assert_eq!(skips(&text), depth <= 128, "depth {depth}");
        // serde_json's `Value` parser stops at 127 levels; the tree here accepts what the
        // reader skips (128), so only that one depth differs.
        if depth != 128 {
            let serde_ok = serde_json::from_str::<serde_json::Value>(&text).is_ok();
            assert_eq!(parse(&text).is_ok(), serde_ok, "depth {depth}");
        }
    }
}

#[test]
fn raw_keeps_exact_bytes_and_strings_decode() {
    let text = r#"{"p": {"b":1, "a":[1.50,"x\n"]} , "s":"a\"b\u00e9"}"#;
    let (mut p, mut s) = (None, None);
    read_all(text, |r| {
        r.object(&mut |r, k| match k {
            "p" => set(&mut p, r.raw()?, "p"),
            "s" => set(&mut s, r.str("s")?.into_owned(), "s"),
            _ => r.skip(),
        })
    })
    .unwrap();
    assert_eq!(p, Some(r#"{"b":1, "a":[1.50,"x\n"]}"#));
    assert_eq!(s.as_deref(), Some("a\"bé"));
}

#[test]
fn uint_and_field_errors() {
    let read = |t: &str| read_all(t, |r| r.uint("n"));
    assert_eq!(read("42"), Ok(42));
    assert_eq!(read("18446744073709551615"), Ok(u64::MAX));
    for bad in ["-1", "1.0", "1e2", "18446744073709551616", "\"1\"", "null"] {
        let e = read(bad).unwrap_err();
        assert!(e.contains("invalid type for `n`"), "{bad}: {e}");
    }
    // Not JSON at all: a syntax error, not a type error.
    assert!(read("01").is_err());
    assert!(read("[1,").unwrap_err().contains("EOF"));
    let mut dup = None;
    let e = read_all(r#"{"a":1,"a":2}"#, |r| {
        r.object(&mut |r, k| set(&mut dup, r.uint(k)?, "a"))
    })
    .unwrap_err();
    assert_eq!(e, "duplicate field `a`");
}

#[test]
fn a_repeated_key_keeps_its_last_value_after_other_removals() {
    let mut o = object(r#"{"a":1,"b":2,"c":3,"b":4}"#).unwrap();
    assert_eq!(take(&mut o, "a").unwrap(), Value::Num("1"));
    assert_eq!(o.get("b"), Some(&Value::Num("4")));
    assert_eq!(take(&mut o, "b").unwrap(), Value::Num("4"));
    assert_eq!(o.get("b"), None);
    assert_eq!(take(&mut o, "c").unwrap(), Value::Num("3"));
}

#[test]
fn raw_json_checks_its_text() {
    assert_eq!(
        RawJson::from_string(" {\"a\":1} ".into()).unwrap().get(),
        " {\"a\":1} "
    );
    assert!(RawJson::from_string("{\"a\":}".into()).is_err());
    assert!(RawJson::from_string("1 2".into()).is_err());
}

/// Generated JSON-ish text: valid documents (serde_json-written, then re-spaced and with
/// escapes), and small mutations of them (most invalid).
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        "[a-zA-Z0-9 \"\\\\é😀\u{1}\n]{0,8}".prop_map(serde_json::Value::String),
    ];
    let value = leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
            prop::collection::vec(("[a-dé]{0,3}", inner), 0..5)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    let numbers = "-?(0|[1-9][0-9]{0,25})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?";
    prop_oneof![
        4 => value.prop_map(|v| serde_json::to_string(&v).unwrap_or_default()),
        2 => numbers.prop_map(String::from),
        1 => "[\\[\\]{}\",:0-9a-z\\\\ .eE+-]{0,16}".prop_map(String::from),
    ]
    .prop_flat_map(|s| {
        let n = s.len();
        (
            Just(s),
            0..=n,
            prop_oneof![Just(""), Just(" "), Just(","), Just("\\u0041"), Just("\"")],
        )
    })
    .prop_map(|(s, at, ins)| {
        // Insert at a char boundary only.
        let at = (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        format!("{}{}{}", &s[..at], ins, &s[at..])
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn same_language_and_canonical_form_as_serde_json(text in json_text()) {
        prop_assert_eq!(skips(&text), serde_skips(&text), "skip {:?}", text);
        prop_assert_eq!(canonical(&text), oracle_canonical(&text), "canonical {:?}", text);
    }
}
