//! Totality: every decoder of the protocol module returns a typed result for any input —
//! arbitrary strings, mutations of golden frames, deep nesting, huge numbers, wrong types —
//! and never panics. Oversize input is `TooLarge` without being parsed.
#![allow(clippy::unwrap_used)]

use khala_sync::protocol::hash::canonical_json;
use khala_sync::protocol::http::{decode_doc_response, decode_error_body, decode_snapshot_page};
use khala_sync::protocol::phoenix::{
    self, HeartbeatOk, JoinOk, ServerMessage, SubscribeOk, UnsubscribeOk,
};
use khala_sync::protocol::token::decode_token_response;
use khala_sync::protocol::{DecodeLimits, PayloadHash, ProtocolError, ServerError};
use proptest::prelude::*;

/// Golden inputs for every decoder; mutations start from these.
const FRAMES: &[&str] = &[
    r#"["1","1","sync:v1","phx_reply",{"status":"ok","response":{"subscription_id":"sub_1","allowed_topics":["runtime.run_summaries"],"current_watermarks":[]}}]"#,
    r#"["1","2","sync:v1","phx_reply",{"status":"ok","response":{"subscription_id":"sub_1","topics":["runtime.run_summaries"],"current_watermarks":[{"topic":"runtime.run_summaries","watermark":1842}]}}]"#,
    r#"["1","2","sync:v1","phx_reply",{"status":"error","response":{"code":"forbidden_topic","forbidden_topics":["runtime.x"]}}]"#,
    r#"["1","1","sync:v1","phx_reply",{"status":"error","response":{"code":"upgrade_required","message":"m","retryable":false,"upgrade_required":true,"min_client_build_id":"1","max_client_build_id":null,"min_schema_version":1,"max_schema_version":1,"protocol_version":"khala.ws.v1"}}]"#,
    r#"[null,"12","phoenix","phx_reply",{"status":"ok","response":{}}]"#,
    r#"["1",null,"sync:v1","sync:update_batch",{"updates":[{"topic":"runtime.run_summaries","doc_key":"runtime/run_summary:019c7f93","doc_version":7,"payload":{"status":"running"},"payload_hash":"QyWM/3g/5wNtikMDP4MK38YOwDc4JHNUisdCuIgpJ3c=","watermark":1801,"hydration_required":false},{"topic":"runtime.run_summaries","doc_key":"k","doc_version":9,"payload":null,"payload_hash":null,"watermark":1802,"deleted":true}],"replay_complete":false,"head_watermarks":[{"topic":"runtime.run_summaries","watermark":1842}]}]"#,
    r#"["1",null,"sync:v1","sync:error",{"code":"stale_cursor","message":"cursor is older than retention floor","full_resync_required":true,"reason_codes":["retention_floor_breach"],"stale_topics":[{"topic":"runtime.run_summaries","reason":"retention_floor_breach","qos_tier":"warm","resume_after":10,"retention_floor":42,"head_watermark":90,"replay_lag":80,"replay_budget_events":20000}],"snapshot_plan":{"format":"openagents.sync.snapshot.v1","topics":[]}}]"#,
    r#"["1",null,"sync:v1","sync:error",{"code":"slow_consumer","message":"m","action":"disconnect","topic":"runtime.run_summaries","queue_depth":65,"queue_limit":64,"reconnect_after_ms":2000,"full_resync_required":false}]"#,
    r#"["1",null,"sync:v1","sync:error",{"code":"reauth_required","message":"m","reauth_required":true,"reason":"r"}]"#,
    r#"["1",null,"sync:v1","sync:heartbeat",{"watermarks":[{"topic":"runtime.run_summaries","watermark":1842}]}]"#,
    r#"["1","1","sync:v1","phx_close",{}]"#,
    r#"["1",null,"sync:v1","sync:frame",{"topic":"t","seq":1,"kind":"KHALA_FRAME_KIND_UPDATE_BATCH","payload_bytes":"e30=","schema_version":1}]"#,
];

const TOKEN: &str = r#"{"data":{"token":"eyJ.a.b","token_type":"Bearer","expires_in":300,"issued_at":"2026-02-21T10:00:00Z","subject":"user:42","org_id":"org:7","scopes":["runtime.run_summaries"],"granted_topics":[{"topic":"runtime.run_summaries","required_scope":"runtime.run_summaries"},"runtime.codex_worker_summaries"],"token_id":"sync_1","refresh_after_in":240}}"#;
const SNAPSHOT: &str = r#"{"topic":"runtime.run_summaries","snapshot_watermark":31000,"docs":[{"doc_key":"a","doc_version":7,"payload":{"b":2,"a":1},"payload_hash":"QyWM/3g/5wNtikMDP4MK38YOwDc4JHNUisdCuIgpJ3c="},{"doc_key":"b","doc_version":1,"payload":[1],"payload_hash":null}],"next_cursor":"c1"}"#;
const DOC: &str = r#"{"doc_key":"runtime/run_summary:big","doc_version":5,"payload":{"x":[1,2,{"y":null}]},"payload_hash":"sha256:43258cff783fe7036d8a43033f830adfc60ec037382473548ac742b888292777","watermark":1950}"#;
const ERROR_BODY: &str = r#"{"message":"Unauthenticated.","error":{"code":"unauthorized","message":"app session missing"}}"#;
const SERVER_ERROR: &str = r#"{"code":"stale_cursor","message":"m","reason_codes":["retention_floor_breach","replay_budget_exceeded"],"stale_topics":[{"topic":"t","reason":"replay_budget_exceeded","resume_after":1,"head_watermark":90}],"topic":"t"}"#;
const SUBSCRIBE: &str = r#"{"topics":["runtime.run_summaries","runtime.codex_worker_summaries"],"resume_after":[{"topic":"runtime.run_summaries","watermark":1800}],"replay_batch_size":200}"#;
const HASH: &str = "QyWM/3g/5wNtikMDP4MK38YOwDc4JHNUisdCuIgpJ3c=";
const PAYLOAD: &str = r#"{"topic":"runtime.codex_worker_summaries","payload":{"status":"running","metadata":{"region":"us-central1","flags":["a","b","c"]},"seq":99},"doc_key":"org_123:worker_456"}"#;

fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

/// Runs every decoder on `s`; any panic fails the property.
fn run_all(s: &str) {
    let l = limits();
    match phoenix::decode(s, &l) {
        Ok(ServerMessage::Reply(r)) => {
            // Every typed view of a reply is total as well.
            let _ = r.decode::<JoinOk>("join");
            let _ = r.decode::<SubscribeOk>("subscribe");
            let _ = r.decode::<UnsubscribeOk>("unsubscribe");
            let _ = r.decode::<HeartbeatOk>("heartbeat");
            let _ = r.error();
        }
        Ok(ServerMessage::UpdateBatch(b)) => {
            for u in &b.updates {
                if let Some(p) = &u.payload {
                    let _ = khala_sync::protocol::hash::verify(p, u.payload_hash.as_ref());
                }
            }
        }
        Ok(_) => {}
        Err(e) => assert_typed(&e),
    }
    if let Err(e) = decode_token_response(s, &l) {
        assert_typed(&e);
    }
    if let Err(e) = decode_snapshot_page(s, &l) {
        assert_typed(&e);
    }
    if let Err(e) = decode_doc_response(s, &l) {
        assert_typed(&e);
    }
    if let Err(e) = phoenix::decode_subscribe_request(s, &l) {
        assert_typed(&e);
    }
    let _ = decode_error_body(s);
    if let Err(e) = ServerError::from_json(s) {
        assert_typed(&e);
    }
    if let Err(e) = PayloadHash::parse(s) {
        assert!(matches!(e, ProtocolError::InvalidHash(_)), "{e:?}");
    }
    match canonical_json(s) {
        // Canonical output is itself valid and a fixed point.
        Ok(c) => assert_eq!(canonical_json(&c).unwrap(), c),
        Err(e) => assert_typed(&e),
    }
}

fn assert_typed(e: &ProtocolError) {
    // Display and code never panic and are non-empty.
    assert!(!e.to_string().is_empty());
    assert!(!e.code().is_empty());
}

fn golden() -> impl Strategy<Value = String> {
    let mut all: Vec<&'static str> = FRAMES.to_vec();
    all.extend([
        TOKEN,
        SNAPSHOT,
        DOC,
        ERROR_BODY,
        SERVER_ERROR,
        SUBSCRIBE,
        HASH,
        PAYLOAD,
    ]);
    prop::sample::select(all).prop_map(str::to_string)
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipByte(usize, u8),
    Truncate(usize),
    Duplicate(usize, usize),
    Delete(usize, usize),
    Insert(usize, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let token = prop::sample::select(vec![
        "",
        "null",
        "0",
        "-1",
        "1.5",
        "1e400",
        "18446744073709551616",
        "\"\"",
        "\"x\"",
        "[]",
        "{}",
        "true",
        "[[[[",
        "}}}}",
        "\\",
        "\"",
        ",",
        ":",
        "\\u0000",
        "\u{0}",
        "é",
        "😀",
        "\\ud800",
        "\"sha256:zz\"",
        "99999999999999999999999999999",
    ]);
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::FlipByte(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<usize>(), token).prop_map(|(i, t)| Mutation::Insert(i, t.to_string())),
    ]
}

/// Applies mutations at byte level; the result is lossily re-read as UTF-8 (decoders take
/// `&str`, as the WebSocket layer only hands over valid text frames).
fn apply(base: &str, muts: &[Mutation]) -> String {
    let mut b = base.as_bytes().to_vec();
    for m in muts {
        let len = b.len().max(1);
        match m {
            Mutation::FlipByte(i, x) => {
                if !b.is_empty() {
                    let i = i % b.len();
                    b[i] ^= x | 1;
                }
            }
            Mutation::Truncate(i) => b.truncate(i % len),
            Mutation::Duplicate(i, n) => {
                let i = i % len;
                let end = (i + n).min(b.len());
                if i < end {
                    let chunk = b[i..end].to_vec();
                    b.splice(end..end, chunk);
                }
            }
            Mutation::Delete(i, n) => {
                let i = i % len;
                let end = (i + n).min(b.len());
                if i < end {
                    b.drain(i..end);
                }
            }
            Mutation::Insert(i, t) => {
                let i = (i % (b.len() + 1)).min(b.len());
                b.splice(i..i, t.bytes());
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// Arbitrary JSON values (including huge numbers and odd strings).
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "runtime.run_summaries",
            "stale_cursor",
            "ok",
            "",
            "sync:v1",
            HASH
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        let key = prop_oneof![
            prop::sample::select(vec![
                "code",
                "topic",
                "topics",
                "updates",
                "watermark",
                "doc_key",
                "doc_version",
                "payload",
                "payload_hash",
                "status",
                "response",
                "data",
                "token",
                "expires_in",
                "docs",
                "snapshot_watermark",
                "stale_topics",
                "forbidden_topics",
                "message",
                "error",
                "granted_topics",
                "head_watermarks",
                "action",
                "reconnect_after_ms",
            ])
            .prop_map(str::to_string),
            ".{0,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Replaces the value at a random path of a golden JSON document with an arbitrary value
/// ("wrong type in every field").
fn replace_somewhere(v: &mut serde_json::Value, mut pick: usize, with: serde_json::Value) {
    use serde_json::Value;
    let mut cur = v;
    loop {
        let n = match cur {
            Value::Array(a) => a.len(),
            Value::Object(o) => o.len(),
            _ => 0,
        };
        if n == 0 || pick % 4 == 0 {
            *cur = with;
            return;
        }
        let i = (pick / 4) % n;
        pick /= 7;
        cur = match cur {
            Value::Array(a) => &mut a[i],
            Value::Object(o) => match o.values_mut().nth(i) {
                Some(x) => x,
                None => return,
            },
            _ => return,
        };
        if pick == 0 {
            *cur = with;
            return;
        }
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 384,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_strings_never_panic(s in ".{0,200}") {
        run_all(&s);
    }

    #[test]
    fn arbitrary_json_never_panics(v in json_value()) {
        run_all(&v.to_string());
        // As a frame payload under every event, too.
        for event in ["phx_reply", "sync:update_batch", "sync:error", "sync:heartbeat", "sync:frame", "phx_close"] {
            let frame = serde_json::json!(["1", "2", "sync:v1", event, v.clone()]).to_string();
            run_all(&frame);
        }
    }

    #[test]
    fn mutated_golden_inputs_never_panic(base in golden(), muts in prop::collection::vec(mutation(), 1..6)) {
        run_all(&apply(&base, &muts));
    }

    #[test]
    fn wrong_types_in_fields_never_panic(base in golden(), pick in any::<usize>(), with in json_value()) {
        if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&base) {
            replace_somewhere(&mut v, pick, with);
            run_all(&v.to_string());
        }
    }

    #[test]
    fn hash_parse_total(s in "(sha256:)?[0-9a-fA-FgG+/=_-]{0,70}") {
        match PayloadHash::parse(&s) {
            Ok(h) => {
                // Whatever parsed round-trips through both canonical forms.
                prop_assert_eq!(PayloadHash::parse(&h.to_base64()).unwrap(), h);
                prop_assert_eq!(PayloadHash::parse(&h.to_display()).unwrap(), h);
            }
            Err(e) => prop_assert!(matches!(e, ProtocolError::InvalidHash(_))),
        }
    }

    #[test]
    fn hash_forms_round_trip(bytes in any::<[u8; 32]>()) {
        let h = PayloadHash(bytes);
        prop_assert_eq!(PayloadHash::parse(&h.to_base64()).unwrap(), h);
        prop_assert_eq!(PayloadHash::parse(&h.to_display()).unwrap(), h);
    }

    #[test]
    fn canonical_json_is_stable(v in json_value()) {
        // Canonical text == canonical of the pretty and compact renderings; hash agrees.
        let compact = canonical_json(&v.to_string()).unwrap();
        let pretty = canonical_json(&serde_json::to_string_pretty(&v).unwrap()).unwrap();
        prop_assert_eq!(&compact, &pretty);
        prop_assert_eq!(canonical_json(&compact).unwrap(), compact.clone());
        prop_assert_eq!(PayloadHash::of_json_text(&v.to_string()).unwrap(), PayloadHash::of_canonical(compact.as_bytes()));
        // Re-parsing the canonical text gives the same value.
        let back: serde_json::Value = serde_json::from_str(&compact).unwrap();
        prop_assert_eq!(back, v);
    }

    #[test]
    fn oversize_is_too_large_without_parsing(limit in 0usize..256, extra in 1usize..64, base in golden()) {
        let l = DecodeLimits { max_frame_bytes: limit };
        // Input longer than the limit — even syntactically broken — is TooLarge.
        let mut s = base.repeat(1 + limit / base.len().max(1));
        s.push_str(&"{".repeat(extra));
        prop_assert!(s.len() > limit);
        let too_large = |r: Result<(), ProtocolError>, ctx: &str| match r {
            Err(ProtocolError::TooLarge { size, limit: lim, .. }) => size == s.len() && lim == limit,
            other => panic!("{ctx}: {other:?}"),
        };
        prop_assert!(too_large(phoenix::decode(&s, &l).map(|_| ()), "phoenix"));
        prop_assert!(too_large(decode_token_response(&s, &l).map(|_| ()), "token"));
        prop_assert!(too_large(decode_snapshot_page(&s, &l).map(|_| ()), "snapshot"));
        prop_assert!(too_large(decode_doc_response(&s, &l).map(|_| ()), "doc"));
        prop_assert!(too_large(phoenix::decode_subscribe_request(&s, &l).map(|_| ()), "subscribe"));
    }
}

#[test]
fn deep_nesting_is_a_typed_error() {
    let l = limits();
    for depth in [129, 1_000, 10_000, 100_000] {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let unclosed = open.repeat(depth);
            let closed = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            for s in [unclosed, closed] {
                run_all(&s);
                assert!(matches!(
                    canonical_json(&s),
                    Err(ProtocolError::Malformed { .. })
                ));
                // Deep nesting inside an otherwise valid frame: payload, response, field.
                let frames = [
                    format!(
                        r#"["1",null,"sync:v1","sync:update_batch",{{"updates":[{{"topic":"t","doc_key":"k","doc_version":1,"watermark":1,"payload":{s}}}]}}]"#
                    ),
                    format!(r#"["1","2","sync:v1","phx_reply",{{"status":"ok","response":{s}}}]"#),
                    format!(r#"["1",null,"sync:v1","sync:frame",{s}]"#),
                    format!(r#"["1",null,"sync:v1","sync:error",{{"code":"x","extra":{s}}}]"#),
                ];
                // serde_json captures raw / ignored values iteratively (no depth limit, no
                // recursion): such frames may decode, but never overflow the stack.
                for f in &frames {
                    run_all(f);
                }
                // A payload nested deeper than serde_json's limit (128) cannot be
                // canonicalised: verification is a typed error, never a panic.
                if let Ok(ServerMessage::UpdateBatch(b)) = phoenix::decode(&frames[0], &l) {
                    let u = &b.updates[0];
                    let raw = u.payload.as_ref().unwrap();
                    let h = PayloadHash([0; 32]);
                    assert!(matches!(
                        khala_sync::protocol::hash::verify(raw, Some(&h)),
                        Err(ProtocolError::Malformed { .. })
                    ));
                }
                run_all(&format!(
                    r#"{{"data":{{"token":"x","expires_in":1,"extra":{s}}}}}"#
                ));
                run_all(&format!(
                    r#"{{"topic":"t","snapshot_watermark":1,"docs":[],"x":{s}}}"#
                ));
                run_all(&format!(
                    r#"{{"doc_key":"k","doc_version":1,"payload":{s}}}"#
                ));
                run_all(&format!(r#"{{"error":{s}}}"#));
            }
        }
    }
}

#[test]
fn moderately_deep_payload_is_accepted() {
    // Nesting within serde_json's limit (128) decodes and canonicalises.
    let s = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    let frame = format!(
        r#"["1",null,"sync:v1","sync:update_batch",{{"updates":[{{"topic":"t","doc_key":"k","doc_version":1,"watermark":1,"payload":{s}}}]}}]"#
    );
    let ServerMessage::UpdateBatch(b) = phoenix::decode(&frame, &limits()).unwrap() else {
        panic!()
    };
    let p = b.updates[0].payload.as_ref().unwrap();
    assert_eq!(canonical_json(p.get()).unwrap(), s);
}

#[test]
fn huge_numbers_are_typed_errors_or_exact() {
    let l = limits();
    let big = "9".repeat(10_000);
    for field in ["watermark", "doc_version"] {
        let f = format!(
            r#"["1",null,"sync:v1","sync:update_batch",{{"updates":[{{"topic":"t","doc_key":"k","doc_version":1,"watermark":1,"{field}":{big}}}]}}]"#
        );
        assert!(matches!(
            phoenix::decode(&f, &l),
            Err(ProtocolError::Malformed { .. })
        ));
    }
    let f = r#"["1",null,"sync:v1","sync:update_batch",{"updates":[{"topic":"t","doc_key":"k","doc_version":18446744073709551615,"watermark":18446744073709551615}]}]"#;
    let ServerMessage::UpdateBatch(b) = phoenix::decode(f, &l).unwrap() else {
        panic!()
    };
    assert_eq!(b.updates[0].watermark.get(), u64::MAX);
    let f = r#"["1",null,"sync:v1","sync:update_batch",{"updates":[{"topic":"t","doc_key":"k","doc_version":1,"watermark":18446744073709551616}]}]"#;
    assert!(phoenix::decode(f, &l).is_err());
    for body in [
        format!(r#"{{"data":{{"token":"x","expires_in":{big}}}}}"#),
        r#"{"data":{"token":"x","expires_in":1e3}}"#.to_string(),
    ] {
        assert!(matches!(
            decode_token_response(&body, &l),
            Err(ProtocolError::Malformed { .. })
        ));
    }
    let body = format!(r#"{{"topic":"t","snapshot_watermark":{big},"docs":[]}}"#);
    assert!(matches!(
        decode_snapshot_page(&body, &l),
        Err(ProtocolError::Malformed { .. })
    ));
    // A huge number *inside a payload* is fine on the wire; canonicalisation says no.
    let payload = format!(r#"{{"n":{big}}}"#);
    let f = format!(
        r#"["1",null,"sync:v1","sync:update_batch",{{"updates":[{{"topic":"t","doc_key":"k","doc_version":1,"watermark":1,"payload":{payload}}}]}}]"#
    );
    run_all(&f);
    assert!(canonical_json(&payload).is_err());
    assert!(matches!(
        canonical_json(&format!("1{big}")),
        Err(ProtocolError::Malformed { .. })
    ));
    assert_eq!(canonical_json(&format!("0.{big}")).unwrap(), "1.0");
}

#[test]
fn duplicate_fields_and_keys() {
    let l = limits();
    // Duplicate struct fields are malformed (serde's rule), not last-wins.
    let f = r#"["1",null,"sync:v1","sync:update_batch",{"updates":[{"topic":"t","doc_key":"k","doc_version":1,"watermark":1,"watermark":2}]}]"#;
    assert!(matches!(
        phoenix::decode(f, &l),
        Err(ProtocolError::Malformed { .. })
    ));
    // Duplicate keys inside a payload: the last wins in the canonical form.
    assert_eq!(canonical_json(r#"{"a":1,"a":2}"#).unwrap(), r#"{"a":2}"#);
}

#[test]
fn error_body_oversize_is_empty_not_parsed() {
    let mut body = String::from(r#"{"error":{"code":"unauthorized"},"pad":""#);
    body.push_str(&"x".repeat(70_000));
    body.push_str(r#""}"#);
    let e = decode_error_body(&body);
    assert_eq!(e.code, None);
    assert_eq!(e.message, None);
}
