//! Golden frames for every message of PROTOCOL.md §1–§4 and §7: real-looking server frames
//! decode to the expected typed values, and client frames encode to the exact expected bytes.
#![allow(clippy::unwrap_used)]

use khala_sync::protocol::http::{
    decode_doc_response, decode_error_body, decode_snapshot_page, encode_segment, HttpErrorBody,
};
use khala_sync::protocol::phoenix::{
    self, decode, HeartbeatOk, JoinOk, Reply, ServerMessage, SubscribeOk, UnsubscribeOk,
};
use khala_sync::protocol::token::{decode_token_response, GrantedTopic, SyncToken, TokenRequest};
use khala_sync::protocol::{
    DecodeLimits, DocKey, PayloadHash, ProtocolError, ServerError, Topic, TopicWatermark,
    UpdateBatch, Watermark, UPGRADE_CODES,
};

const RUNS: &str = "runtime.run_summaries";
const WORKERS: &str = "runtime.codex_worker_summaries";

fn t(name: &str) -> Topic {
    Topic::new(name).unwrap()
}

fn tw(name: &str, w: u64) -> TopicWatermark {
    TopicWatermark {
        topic: t(name),
        watermark: Watermark(w),
    }
}

fn dec(text: &str) -> ServerMessage {
    decode(text, &DecodeLimits::default()).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn reply(text: &str) -> Reply {
    match dec(text) {
        ServerMessage::Reply(r) => r,
        other => panic!("expected reply, got {other:?}"),
    }
}

fn batch(text: &str) -> UpdateBatch {
    match dec(text) {
        ServerMessage::UpdateBatch(b) => b,
        other => panic!("expected batch, got {other:?}"),
    }
}

fn push_error(payload: &str) -> ServerError {
    let frame = format!(r#"["1",null,"sync:v1","sync:error",{payload}]"#);
    match dec(&frame) {
        ServerMessage::Error(e) => e,
        other => panic!("expected error, got {other:?}"),
    }
}

fn reply_error(payload: &str) -> ServerError {
    let frame =
        format!(r#"["1","2","sync:v1","phx_reply",{{"status":"error","response":{payload}}}]"#);
    let r = reply(&frame);
    assert!(!r.ok);
    r.error().unwrap()
}

fn is_malformed<T: std::fmt::Debug>(r: Result<T, ProtocolError>) -> bool {
    matches!(r, Err(ProtocolError::Malformed { .. }))
}

// ---------------------------------------------------------------------------------------
// §2.1 join
// ---------------------------------------------------------------------------------------

#[test]
fn join_reply_ok() {
    let r = reply(
        r#"["1","1","sync:v1","phx_reply",{"status":"ok","response":{"subscription_id":"sub_01HZX","allowed_topics":["runtime.run_summaries","runtime.codex_worker_summaries"],"current_watermarks":[]}}]"#,
    );
    assert!(r.ok);
    assert_eq!(r.join_ref.as_deref(), Some("1"));
    assert_eq!(r.reference, "1");
    assert_eq!(r.topic, "sync:v1");
    let ok: JoinOk = r.decode("join").unwrap();
    assert_eq!(ok.subscription_id.as_deref(), Some("sub_01HZX"));
    assert_eq!(ok.allowed_topics, vec![t(RUNS), t(WORKERS)]);
    assert!(ok.current_watermarks.is_empty());
}

#[test]
fn join_reply_ok_with_watermarks_and_extra_fields() {
    let r = reply(
        r#"["1","1","sync:v1","phx_reply",{"status":"ok","response":{"subscription_id":"sub_1","allowed_topics":["runtime.run_summaries"],"current_watermarks":[{"topic":"runtime.run_summaries","watermark":42}],"server_build":"x"}}]"#,
    );
    let ok: JoinOk = r.decode("join").unwrap();
    assert_eq!(ok.current_watermarks, vec![tw(RUNS, 42)]);
}

#[test]
fn join_reply_ok_without_response_is_empty_object() {
    let r = reply(r#"["1","1","sync:v1","phx_reply",{"status":"ok"}]"#);
    assert!(r.ok);
    assert_eq!(r.response_text(), "{}");
    let ok: JoinOk = r.decode("join").unwrap();
    assert_eq!(ok.subscription_id, None);
    assert!(ok.allowed_topics.is_empty());
}

#[test]
fn join_reply_error_reauth_required() {
    let e = reply_error(
        r#"{"code":"reauth_required","message":"sync token expired","reauth_required":true,"reason":"token_expired"}"#,
    );
    assert_eq!(
        e,
        ServerError::ReauthRequired {
            message: "sync token expired".into(),
            reason: Some("token_expired".into()),
        }
    );
    assert_eq!(e.code(), "reauth_required");
}

#[test]
fn join_reply_error_upgrade_required_full() {
    let e = reply_error(
        r#"{"code":"upgrade_required","message":"client build too old","retryable":false,"upgrade_required":true,"min_client_build_id":"2026.02.01","max_client_build_id":null,"min_schema_version":1,"max_schema_version":1,"protocol_version":"khala.ws.v1"}"#,
    );
    let ServerError::UpgradeRequired(u) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(u.code, "upgrade_required");
    assert_eq!(u.message, "client build too old");
    assert_eq!(u.min_client_build_id.as_deref(), Some("2026.02.01"));
    assert_eq!(u.max_client_build_id, None);
    assert_eq!(e.code(), "upgrade_required");
}

#[test]
fn join_reply_error_every_compat_code_is_upgrade_required() {
    let codes = [
        "upgrade_required",
        "unsupported_protocol_version",
        "unsupported_schema_version",
        "invalid_client_build",
        "unsupported_client_build",
    ];
    assert_eq!(UPGRADE_CODES, codes.as_slice());
    for code in codes {
        let e = reply_error(&format!(
            r#"{{"code":"{code}","message":"m","retryable":false,"upgrade_required":true,"min_client_build_id":"1","max_client_build_id":"9","min_schema_version":1,"max_schema_version":1,"protocol_version":"khala.ws.v1"}}"#
        ));
        let ServerError::UpgradeRequired(u) = &e else {
            panic!("{code}: {e:?}")
        };
        assert_eq!(u.code, code);
        assert_eq!(u.max_client_build_id.as_deref(), Some("9"));
        assert_eq!(e.code(), code);
        // Minimal form: just the code.
        let e = reply_error(&format!(r#"{{"code":"{code}"}}"#));
        assert!(matches!(e, ServerError::UpgradeRequired(_)), "{code}");
    }
}

#[test]
fn join_reply_error_bad_topic() {
    let e = reply_error(r#"{"code":"bad_topic"}"#);
    assert_eq!(
        e,
        ServerError::BadTopic {
            message: String::new()
        }
    );
    let e = reply_error(r#"{"code":"bad_topic","message":"unknown channel"}"#);
    assert_eq!(e.code(), "bad_topic");
}

// ---------------------------------------------------------------------------------------
// §2.2 subscribe / unsubscribe / heartbeat replies
// ---------------------------------------------------------------------------------------

#[test]
fn subscribe_reply_ok() {
    let r = reply(
        r#"["1","2","sync:v1","phx_reply",{"status":"ok","response":{"subscription_id":"sub_01HZX","topics":["runtime.run_summaries","runtime.codex_worker_summaries"],"current_watermarks":[{"topic":"runtime.run_summaries","watermark":1842},{"topic":"runtime.codex_worker_summaries","watermark":0}]}}]"#,
    );
    assert!(r.ok);
    assert_eq!(r.reference, "2");
    let ok: SubscribeOk = r.decode("subscribe").unwrap();
    assert_eq!(ok.subscription_id.as_deref(), Some("sub_01HZX"));
    assert_eq!(ok.topics, vec![t(RUNS), t(WORKERS)]);
    assert_eq!(ok.current_watermarks, vec![tw(RUNS, 1842), tw(WORKERS, 0)]);
}

#[test]
fn subscribe_reply_error_bad_subscription() {
    let e =
        reply_error(r#"{"code":"bad_subscription","message":"topics must be a non-empty list"}"#);
    assert_eq!(
        e,
        ServerError::BadSubscription {
            message: "topics must be a non-empty list".into()
        }
    );
}

#[test]
fn subscribe_reply_error_forbidden_topic() {
    let e = reply_error(
        r#"{"code":"forbidden_topic","message":"topic not allowed","forbidden_topics":["runtime.codex_worker_events","runtime.nope"]}"#,
    );
    assert_eq!(
        e,
        ServerError::ForbiddenTopic {
            message: "topic not allowed".into(),
            topics: vec![t("runtime.codex_worker_events"), t("runtime.nope")],
        }
    );
}

#[test]
fn subscribe_reply_error_stale_cursor() {
    let e = reply_error(STALE_FULL);
    assert_stale_full(&e);
}

#[test]
fn unsubscribe_reply_ok() {
    let r = reply(
        r#"["1","3","sync:v1","phx_reply",{"status":"ok","response":{"subscription_id":"sub_1","topics":["runtime.codex_worker_summaries"]}}]"#,
    );
    let ok: UnsubscribeOk = r.decode("unsubscribe").unwrap();
    assert_eq!(ok.topics, vec![t(WORKERS)]);
    let r = reply(
        r#"["1","3","sync:v1","phx_reply",{"status":"ok","response":{"subscription_id":"sub_1","topics":[]}}]"#,
    );
    let ok: UnsubscribeOk = r.decode("unsubscribe").unwrap();
    assert!(ok.topics.is_empty());
}

#[test]
fn unsubscribe_reply_error_bad_subscription() {
    let frame = r#"["1","3","sync:v1","phx_reply",{"status":"error","response":{"code":"bad_subscription","message":"topics must be a list"}}]"#;
    let r = reply(frame);
    assert!(!r.ok);
    assert_eq!(r.error().unwrap().code(), "bad_subscription");
}

#[test]
fn client_heartbeat_reply_ok_and_error() {
    let r = reply(
        r#"["1","7","sync:v1","phx_reply",{"status":"ok","response":{"subscription_id":"sub_1","watermarks":[{"topic":"runtime.run_summaries","watermark":1900}]}}]"#,
    );
    assert!(r.ok);
    let ok: HeartbeatOk = r.decode("heartbeat").unwrap();
    assert_eq!(ok.watermarks, vec![tw(RUNS, 1900)]);

    let r = reply(
        r#"["1","8","sync:v1","phx_reply",{"status":"error","response":{"code":"reauth_required","message":"expired","reauth_required":true}}]"#,
    );
    assert!(!r.ok);
    assert_eq!(
        r.error().unwrap(),
        ServerError::ReauthRequired {
            message: "expired".into(),
            reason: None
        }
    );
}

#[test]
fn phoenix_socket_heartbeat_reply() {
    let r = reply(r#"[null,"12","phoenix","phx_reply",{"status":"ok","response":{}}]"#);
    assert!(r.ok);
    assert_eq!(r.join_ref, None);
    assert_eq!(r.reference, "12");
    assert_eq!(r.topic, "phoenix");
    assert_eq!(r.response_text(), "{}");
}

#[test]
fn reply_with_unknown_status_is_not_ok() {
    let r = reply(r#"["1","2","sync:v1","phx_reply",{"status":"timeout","response":{}}]"#);
    assert!(!r.ok);
}

#[test]
fn reply_without_ref_is_malformed() {
    let r = decode(
        r#"["1",null,"sync:v1","phx_reply",{"status":"ok","response":{}}]"#,
        &DecodeLimits::default(),
    );
    assert!(is_malformed(r));
}

#[test]
fn reply_decode_wrong_shape_is_malformed() {
    let r = reply(
        r#"["1","2","sync:v1","phx_reply",{"status":"ok","response":{"topics":"runtime.run_summaries"}}]"#,
    );
    assert!(is_malformed(r.decode::<SubscribeOk>("subscribe")));
    let r = reply(r#"["1","2","sync:v1","phx_reply",{"status":"ok","response":{"topics":[""]}}]"#);
    assert!(is_malformed(r.decode::<SubscribeOk>("subscribe")));
}

// ---------------------------------------------------------------------------------------
// §2.3 sync:update_batch
// ---------------------------------------------------------------------------------------

const BATCH_EXAMPLE: &str = r#"["1",null,"sync:v1","sync:update_batch",{"updates":[{"topic":"runtime.run_summaries","doc_key":"runtime/run_summary:019c7f93","doc_version":7,"payload":{"status":"running"},"payload_hash":"QyWM/3g/5wNtikMDP4MK38YOwDc4JHNUisdCuIgpJ3c=","watermark":1801,"hydration_required":false}],"replay_complete":false,"head_watermarks":[{"topic":"runtime.run_summaries","watermark":1842}]}]"#;

#[test]
fn update_batch_spec_example() {
    let b = batch(BATCH_EXAMPLE);
    assert!(!b.replay_complete);
    assert_eq!(b.head_watermarks, vec![tw(RUNS, 1842)]);
    assert_eq!(b.updates.len(), 1);
    let u = &b.updates[0];
    assert_eq!(u.topic, t(RUNS));
    assert_eq!(
        u.doc_key,
        DocKey::new("runtime/run_summary:019c7f93").unwrap()
    );
    assert_eq!(u.doc_version, 7);
    assert_eq!(
        u.payload.as_ref().map(|p| p.get()),
        Some(r#"{"status":"running"}"#)
    );
    assert_eq!(
        u.payload_hash,
        Some(PayloadHash::parse("QyWM/3g/5wNtikMDP4MK38YOwDc4JHNUisdCuIgpJ3c=").unwrap())
    );
    assert_eq!(u.watermark, Watermark(1801));
    assert!(!u.hydration_required);
    assert!(!u.deleted);
}

#[test]
fn update_batch_live_push_multiple_updates_verified_hashes() {
    let payload_a = r#"{"status":"running","steps":[1,2]}"#;
    let payload_b = r#"{"status":"done","cost":{"usd":0.25}}"#;
    let ha = PayloadHash::of_json_text(payload_a).unwrap();
    let hb = PayloadHash::of_json_text(payload_b).unwrap();
    let frame = format!(
        r#"["1",null,"sync:v1","sync:update_batch",{{"updates":[{{"topic":"runtime.run_summaries","doc_key":"runtime/run_summary:a","doc_version":1,"payload":{payload_a},"payload_hash":"{}","watermark":1843}},{{"topic":"runtime.run_summaries","doc_key":"runtime/run_summary:b","doc_version":3,"payload":{payload_b},"payload_hash":"{}","watermark":1844}}],"replay_complete":true,"head_watermarks":[{{"topic":"runtime.run_summaries","watermark":1844}}]}}]"#,
        ha.to_base64(),
        hb.to_display()
    );
    let b = batch(&frame);
    assert!(b.replay_complete);
    assert_eq!(b.updates.len(), 2);
    for u in &b.updates {
        let raw = u.payload.as_ref().unwrap();
        assert!(khala_sync::protocol::hash::verify(raw, u.payload_hash.as_ref()).unwrap());
    }
    assert_eq!(b.updates[0].payload_hash, Some(ha));
    assert_eq!(b.updates[1].payload_hash, Some(hb));
    assert_eq!(b.updates[1].payload.as_ref().unwrap().get(), payload_b);
}

#[test]
fn update_batch_hydration_required() {
    let b = batch(
        r#"["1",null,"sync:v1","sync:update_batch",{"updates":[{"topic":"runtime.run_summaries","doc_key":"runtime/run_summary:big","doc_version":4,"payload":null,"payload_hash":"sha256:43258cff783fe7036d8a43033f830adfc60ec037382473548ac742b888292777","watermark":1900,"hydration_required":true}],"replay_complete":true,"head_watermarks":[{"topic":"runtime.run_summaries","watermark":1900}]}]"#,
    );
    let u = &b.updates[0];
    assert!(u.hydration_required);
    assert!(u.payload.is_none());
    assert_eq!(
        u.payload_hash.unwrap().to_base64(),
        "QyWM/3g/5wNtikMDP4MK38YOwDc4JHNUisdCuIgpJ3c="
    );
}

#[test]
fn update_batch_tombstone() {
    let b = batch(
        r#"["1",null,"sync:v1","sync:update_batch",{"updates":[{"topic":"runtime.run_summaries","doc_key":"runtime/run_summary:gone","doc_version":9,"payload":null,"payload_hash":null,"watermark":1901,"hydration_required":false,"deleted":true}],"replay_complete":true,"head_watermarks":[{"topic":"runtime.run_summaries","watermark":1901}]}]"#,
    );
    let u = &b.updates[0];
    assert!(u.deleted);
    assert!(u.payload.is_none());
    assert!(u.payload_hash.is_none());
}

#[test]
fn update_batch_null_hash_means_no_check() {
    let b = batch(
        r#"["1",null,"sync:v1","sync:update_batch",{"updates":[{"topic":"runtime.run_summaries","doc_key":"k","doc_version":1,"payload":{"a":1},"payload_hash":null,"watermark":1}],"replay_complete":true}]"#,
    );
    let u = &b.updates[0];
    assert!(u.payload_hash.is_none());
    assert!(khala_sync::protocol::hash::verify(u.payload.as_ref().unwrap(), None).unwrap());
}

#[test]
fn update_batch_display_form_hash() {
    let b = batch(
        r#"["1",null,"sync:v1","sync:update_batch",{"updates":[{"topic":"runtime.run_summaries","doc_key":"k","doc_version":1,"payload":{"b":2,"a":1},"payload_hash":"sha256:43258cff783fe7036d8a43033f830adfc60ec037382473548ac742b888292777","watermark":1}],"replay_complete":true,"head_watermarks":[]}]"#,
    );
    let u = &b.updates[0];
    let h = u.payload_hash.unwrap();
    assert_eq!(
        h.to_base64(),
        "QyWM/3g/5wNtikMDP4MK38YOwDc4JHNUisdCuIgpJ3c="
    );
    assert!(khala_sync::protocol::hash::verify(u.payload.as_ref().unwrap(), Some(&h)).unwrap());
}

#[test]
fn update_batch_hash_mismatch_is_detected_not_an_error() {
    let b = batch(
        r#"["1",null,"sync:v1","sync:update_batch",{"updates":[{"topic":"runtime.run_summaries","doc_key":"k","doc_version":1,"payload":{"a":2,"b":2},"payload_hash":"QyWM/3g/5wNtikMDP4MK38YOwDc4JHNUisdCuIgpJ3c=","watermark":1}]}]"#,
    );
    let u = &b.updates[0];
    assert!(!khala_sync::protocol::hash::verify(
        u.payload.as_ref().unwrap(),
        u.payload_hash.as_ref()
    )
    .unwrap());
}

#[test]
fn update_batch_missing_optional_fields() {
    // No payload, payload_hash, hydration_required, deleted; no replay_complete/head_watermarks.
    let b = batch(
        r#"["1",null,"sync:v1","sync:update_batch",{"updates":[{"topic":"runtime.run_summaries","doc_key":"k","doc_version":2,"watermark":5}]}]"#,
    );
    assert!(!b.replay_complete);
    assert!(b.head_watermarks.is_empty());
    let u = &b.updates[0];
    assert!(u.payload.is_none());
    assert!(u.payload_hash.is_none());
    assert!(!u.hydration_required);
    assert!(!u.deleted);
    // Empty update list is a valid (if pointless) batch.
    let b =
        batch(r#"["1",null,"sync:v1","sync:update_batch",{"updates":[],"replay_complete":true}]"#);
    assert!(b.updates.is_empty());
}

#[test]
fn update_batch_payload_of_any_json_type_kept_verbatim() {
    for payload in [
        r#""text""#,
        "[1,2,3]",
        "-0.0",
        "9007199254740993",
        "true",
        r#"{"z":{"y":[]}}"#,
    ] {
        let frame = format!(
            r#"["1",null,"sync:v1","sync:update_batch",{{"updates":[{{"topic":"t","doc_key":"k","doc_version":1,"payload":{payload},"watermark":1}}]}}]"#
        );
        let b = batch(&frame);
        assert_eq!(b.updates[0].payload.as_ref().unwrap().get(), payload);
    }
}

#[test]
fn update_batch_invalid_names_are_malformed() {
    let cases = [
        // empty topic
        r#"["1",null,"sync:v1","sync:update_batch",{"updates":[{"topic":"","doc_key":"k","doc_version":1,"watermark":1}]}]"#,
        // control character in topic
        r#"["1",null,"sync:v1","sync:update_batch",{"updates":[{"topic":"a\u0001b","doc_key":"k","doc_version":1,"watermark":1}]}]"#,
        r#"["1",null,"sync:v1","sync:update_batch",{"updates":[{"topic":"a\nb","doc_key":"k","doc_version":1,"watermark":1}]}]"#,
        // empty doc_key
        r#"["1",null,"sync:v1","sync:update_batch",{"updates":[{"topic":"t","doc_key":"","doc_version":1,"watermark":1}]}]"#,
        // invalid topic in head_watermarks
        r#"["1",null,"sync:v1","sync:update_batch",{"updates":[],"head_watermarks":[{"topic":"","watermark":1}]}]"#,
        // bad hash
        r#"["1",null,"sync:v1","sync:update_batch",{"updates":[{"topic":"t","doc_key":"k","doc_version":1,"watermark":1,"payload_hash":"sha256:xyz"}]}]"#,
        // negative watermark / version
        r#"["1",null,"sync:v1","sync:update_batch",{"updates":[{"topic":"t","doc_key":"k","doc_version":1,"watermark":-1}]}]"#,
        r#"["1",null,"sync:v1","sync:update_batch",{"updates":[{"topic":"t","doc_key":"k","doc_version":1.5,"watermark":1}]}]"#,
        // missing required field
        r#"["1",null,"sync:v1","sync:update_batch",{"updates":[{"topic":"t","doc_key":"k","watermark":1}]}]"#,
        r#"["1",null,"sync:v1","sync:update_batch",{}]"#,
    ];
    for c in cases {
        assert!(is_malformed(decode(c, &DecodeLimits::default())), "{c}");
    }
    let too_long = "a".repeat(Topic::MAX_LEN + 1);
    let c = format!(
        r#"["1",null,"sync:v1","sync:update_batch",{{"updates":[{{"topic":"{too_long}","doc_key":"k","doc_version":1,"watermark":1}}]}}]"#
    );
    assert!(is_malformed(decode(&c, &DecodeLimits::default())));
}

// ---------------------------------------------------------------------------------------
// §2.4 sync:error
// ---------------------------------------------------------------------------------------

const STALE_FULL: &str = r#"{"code":"stale_cursor","message":"cursor is older than retention floor","full_resync_required":true,"reason_codes":["retention_floor_breach"],"stale_topics":[{"topic":"runtime.run_summaries","reason":"retention_floor_breach","qos_tier":"warm","resume_after":10,"retention_floor":42,"head_watermark":90,"replay_lag":80,"replay_budget_events":20000}],"snapshot_plan":{"format":"openagents.sync.snapshot.v1","topics":["runtime.run_summaries"]}}"#;

fn assert_stale_full(e: &ServerError) {
    let ServerError::StaleCursor(s) = e else {
        panic!("{e:?}")
    };
    assert_eq!(s.message, "cursor is older than retention floor");
    assert_eq!(s.reason_codes, vec!["retention_floor_breach".to_string()]);
    assert_eq!(s.stale_topics.len(), 1);
    let st = &s.stale_topics[0];
    assert_eq!(st.topic, t(RUNS));
    assert_eq!(st.reason.as_deref(), Some("retention_floor_breach"));
    assert_eq!(st.qos_tier.as_deref(), Some("warm"));
    assert_eq!(st.resume_after, Some(10));
    assert_eq!(st.retention_floor, Some(42));
    assert_eq!(st.head_watermark, Some(90));
    assert_eq!(st.replay_lag, Some(80));
    assert_eq!(st.replay_budget_events, Some(20000));
    assert_eq!(s.topics(), vec![t(RUNS)]);
    assert_eq!(e.code(), "stale_cursor");
}

#[test]
fn error_push_stale_cursor_full() {
    assert_stale_full(&push_error(STALE_FULL));
}

#[test]
fn error_push_stale_cursor_both_reason_codes_two_topics() {
    let e = push_error(
        r#"{"code":"stale_cursor","message":"replay budget exceeded for topic qos tier; full resync required","full_resync_required":true,"reason_codes":["retention_floor_breach","replay_budget_exceeded"],"stale_topics":[{"topic":"runtime.run_summaries","reason":"replay_budget_exceeded","qos_tier":"warm","resume_after":100,"retention_floor":42,"head_watermark":30000,"replay_lag":29900,"replay_budget_events":20000},{"topic":"runtime.codex_worker_events","reason":"retention_floor_breach","qos_tier":"hot","resume_after":1,"retention_floor":5,"head_watermark":9,"replay_lag":8,"replay_budget_events":3000}],"snapshot_plan":{"format":"openagents.sync.snapshot.v1","topics":[]}}"#,
    );
    let ServerError::StaleCursor(s) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(
        s.reason_codes,
        vec![
            "retention_floor_breach".to_string(),
            "replay_budget_exceeded".to_string()
        ]
    );
    assert_eq!(
        s.stale_topics[0].reason.as_deref(),
        Some("replay_budget_exceeded")
    );
    assert_eq!(s.stale_topics[1].qos_tier.as_deref(), Some("hot"));
    assert_eq!(s.topics(), vec![t(RUNS), t("runtime.codex_worker_events")]);
}

#[test]
fn error_push_stale_cursor_ahead_of_head() {
    let e = push_error(
        r#"{"code":"stale_cursor","message":"cursor is ahead of head","full_resync_required":true,"reason_codes":["cursor_ahead_of_head"],"stale_topics":[{"topic":"runtime.run_summaries","reason":"cursor_ahead_of_head","qos_tier":"warm","resume_after":500,"retention_floor":0,"head_watermark":12,"replay_lag":0,"replay_budget_events":20000}]}"#,
    );
    let ServerError::StaleCursor(s) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(
        s.stale_topics[0].reason.as_deref(),
        Some("cursor_ahead_of_head")
    );
    assert_eq!(s.stale_topics[0].resume_after, Some(500));
    assert_eq!(s.stale_topics[0].head_watermark, Some(12));
}

#[test]
fn error_push_stale_cursor_minimal_and_single_topic_forms() {
    let e = push_error(r#"{"code":"stale_cursor"}"#);
    let ServerError::StaleCursor(s) = &e else {
        panic!("{e:?}")
    };
    assert!(s.topics().is_empty());
    let e = push_error(
        r#"{"code":"stale_cursor","message":"m","topic":"runtime.run_summaries","stale_topics":[{"topic":"runtime.run_summaries"}]}"#,
    );
    let ServerError::StaleCursor(s) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(s.topics(), vec![t(RUNS)], "deduplicated");
    assert_eq!(s.stale_topics[0].reason, None);
    // Null optional numbers are tolerated.
    let e = push_error(
        r#"{"code":"stale_cursor","stale_topics":[{"topic":"runtime.run_summaries","resume_after":null,"head_watermark":null}]}"#,
    );
    assert_eq!(e.code(), "stale_cursor");
}

#[test]
fn error_push_slow_consumer_throttle_and_disconnect() {
    let e = push_error(
        r#"{"code":"slow_consumer","message":"client cannot keep up with live fanout","action":"throttle","topic":"runtime.run_summaries","queue_depth":65,"queue_limit":64,"reconnect_after_ms":2000,"full_resync_required":false}"#,
    );
    let ServerError::SlowConsumer(s) = &e else {
        panic!("{e:?}")
    };
    assert!(!s.is_disconnect());
    assert_eq!(s.action, "throttle");
    assert_eq!(s.topic, Some(t(RUNS)));
    assert_eq!(s.reconnect_after_ms, Some(2000));
    assert_eq!(s.message, "client cannot keep up with live fanout");

    let e = push_error(
        r#"{"code":"slow_consumer","message":"client cannot keep up with live fanout","action":"disconnect","topic":"runtime.run_summaries","queue_depth":65,"queue_limit":64,"reconnect_after_ms":2000,"full_resync_required":false}"#,
    );
    let ServerError::SlowConsumer(s) = &e else {
        panic!("{e:?}")
    };
    assert!(s.is_disconnect());
    assert_eq!(e.code(), "slow_consumer");
}

#[test]
fn error_push_reauth_required() {
    let e = push_error(
        r#"{"code":"reauth_required","message":"sync token expired","reauth_required":true,"reason":"token_expired"}"#,
    );
    assert_eq!(
        e,
        ServerError::ReauthRequired {
            message: "sync token expired".into(),
            reason: Some("token_expired".into())
        }
    );
}

#[test]
fn error_push_forbidden_bad_subscription_bad_topic() {
    let e =
        push_error(r#"{"code":"forbidden_topic","forbidden_topics":["runtime.run_summaries"]}"#);
    assert_eq!(
        e,
        ServerError::ForbiddenTopic {
            message: String::new(),
            topics: vec![t(RUNS)]
        }
    );
    let e = push_error(r#"{"code":"forbidden_topic"}"#);
    assert_eq!(
        e,
        ServerError::ForbiddenTopic {
            message: String::new(),
            topics: vec![]
        }
    );
    assert_eq!(
        push_error(r#"{"code":"bad_subscription"}"#).code(),
        "bad_subscription"
    );
    assert_eq!(
        push_error(r#"{"code":"bad_topic","message":"x"}"#).code(),
        "bad_topic"
    );
}

#[test]
fn error_push_upgrade_codes() {
    for code in UPGRADE_CODES {
        let e = push_error(&format!(r#"{{"code":"{code}","message":"upgrade"}}"#));
        assert!(
            matches!(&e, ServerError::UpgradeRequired(u) if u.code == *code && u.message == "upgrade")
        );
    }
}

#[test]
fn error_unknown_code_is_other() {
    let e = push_error(r#"{"code":"rate_limited","message":"slow down","retry_after_ms":500}"#);
    assert_eq!(
        e,
        ServerError::Other {
            code: "rate_limited".into(),
            message: "slow down".into()
        }
    );
    assert_eq!(e.code(), "rate_limited");
    let e = push_error(r#"{"code":""}"#);
    assert_eq!(e.code(), "");
}

#[test]
fn error_from_json_wrong_shapes_are_malformed() {
    for bad in [
        r#"{}"#,
        r#"{"code":42}"#,
        r#"{"code":null}"#,
        r#"[]"#,
        r#""stale_cursor""#,
        r#"{"code":"stale_cursor","stale_topics":[{"topic":""}]}"#,
        r#"{"code":"stale_cursor","stale_topics":{"topic":"t"}}"#,
        r#"{"code":"stale_cursor","stale_topics":[{"topic":"t","resume_after":-1}]}"#,
        r#"{"code":"slow_consumer","reconnect_after_ms":"2000"}"#,
        r#"{"code":"forbidden_topic","forbidden_topics":[""]}"#,
        r#"{"code":"forbidden_topic","forbidden_topics":"runtime.run_summaries"}"#,
        r#"{"code":"upgrade_required","min_client_build_id":7}"#,
        r#"{"code":"reauth_required","message":{"text":"x"}}"#,
    ] {
        assert!(is_malformed(ServerError::from_json(bad)), "{bad}");
    }
}

// ---------------------------------------------------------------------------------------
// Other server pushes
// ---------------------------------------------------------------------------------------

#[test]
fn server_heartbeat_push() {
    match dec(
        r#"["1",null,"sync:v1","sync:heartbeat",{"watermarks":[{"topic":"runtime.run_summaries","watermark":1842},{"topic":"runtime.codex_worker_summaries","watermark":7}]}]"#,
    ) {
        ServerMessage::Heartbeat { watermarks } => {
            assert_eq!(watermarks, vec![tw(RUNS, 1842), tw(WORKERS, 7)]);
        }
        other => panic!("{other:?}"),
    }
    match dec(r#"["1",null,"sync:v1","sync:heartbeat",{}]"#) {
        ServerMessage::Heartbeat { watermarks } => assert!(watermarks.is_empty()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn channel_close_and_error() {
    assert!(matches!(
        dec(r#"["1","1","sync:v1","phx_close",{}]"#),
        ServerMessage::ChannelClosed { error: false }
    ));
    assert!(matches!(
        dec(r#"["1","1","sync:v1","phx_error",{}]"#),
        ServerMessage::ChannelClosed { error: true }
    ));
    assert!(matches!(
        dec(r#"[null,null,"sync:v1","phx_error",{"reason":"crash"}]"#),
        ServerMessage::ChannelClosed { error: true }
    ));
}

#[test]
fn legacy_sync_frame_is_ignored() {
    use base64::Engine as _;
    let inner = r#"{"updates":[],"replay_complete":true}"#;
    let b64 = base64::engine::general_purpose::STANDARD.encode(inner);
    let frame = format!(
        r#"["1",null,"sync:v1","sync:frame",{{"topic":"runtime.run_summaries","seq":1842,"kind":"KHALA_FRAME_KIND_UPDATE_BATCH","payload_bytes":"{b64}","schema_version":1}}]"#
    );
    assert!(matches!(dec(&frame), ServerMessage::LegacyFrame));
    let frame = format!(
        r#"["1",null,"sync:v1","sync:frame",{{"topic":"runtime.run_summaries","seq":0,"kind":"KHALA_FRAME_KIND_ERROR","payload_bytes":"{b64}","schema_version":1}}]"#
    );
    assert!(matches!(dec(&frame), ServerMessage::LegacyFrame));
}

#[test]
fn unknown_event_is_typed() {
    let r = decode(
        r#"["1",null,"sync:v1","presence_diff",{}]"#,
        &DecodeLimits::default(),
    );
    assert_eq!(
        r.unwrap_err(),
        ProtocolError::UnknownEvent {
            topic: "sync:v1".into(),
            event: "presence_diff".into()
        }
    );
}

#[test]
fn frame_shape_errors_are_malformed() {
    for bad in [
        "",
        "null",
        "{}",
        "[]",
        r#"["1","2","sync:v1","phx_reply"]"#,
        r#"["1","2","sync:v1","phx_reply",{"status":"ok"},"extra"]"#,
        r#"[1,"2","sync:v1","phx_reply",{"status":"ok"}]"#,
        r#"["1",2,"sync:v1","phx_reply",{"status":"ok"}]"#,
        r#"["1","2",null,"phx_reply",{"status":"ok"}]"#,
        r#"["1","2","sync:v1",null,{"status":"ok"}]"#,
        r#"["1","2","sync:v1","phx_reply",{}]"#,
        r#"["1","2","sync:v1","phx_reply",{"status":1}]"#,
        r#"["1","2","sync:v1","phx_reply",{"status":"ok"}"#,
        r#"["1",null,"sync:v1","sync:heartbeat",{"watermarks":{}}]"#,
        r#"["1",null,"sync:v1","sync:heartbeat",{"watermarks":[{"topic":"t","watermark":"1"}]}]"#,
        r#"["1",null,"sync:v1","sync:error",{"message":"no code"}]"#,
    ] {
        assert!(
            is_malformed(decode(bad, &DecodeLimits::default())),
            "{bad:?}"
        );
    }
}

#[test]
fn oversize_frame_is_too_large() {
    let limits = DecodeLimits {
        max_frame_bytes: 64,
    };
    let frame = BATCH_EXAMPLE;
    assert!(frame.len() > 64);
    assert_eq!(
        decode(frame, &limits).unwrap_err(),
        ProtocolError::TooLarge {
            context: "phoenix frame",
            size: frame.len(),
            limit: 64
        }
    );
    // Not parsed: garbage of the same size gives the same answer.
    let junk = "x".repeat(65);
    assert!(matches!(
        decode(&junk, &limits),
        Err(ProtocolError::TooLarge { .. })
    ));
    // At the limit exactly: parsed.
    let ok = r#"["1",null,"sync:v1","phx_close",{}]"#;
    let limits = DecodeLimits {
        max_frame_bytes: ok.len(),
    };
    assert!(decode(ok, &limits).is_ok());
}

// ---------------------------------------------------------------------------------------
// Encoders (exact bytes)
// ---------------------------------------------------------------------------------------

#[test]
fn encode_join_exact() {
    assert_eq!(
        phoenix::encode_join("1"),
        r#"["1","1","sync:v1","phx_join",{}]"#
    );
    assert_eq!(
        phoenix::encode_join("17"),
        r#"["17","17","sync:v1","phx_join",{}]"#
    );
}

#[test]
fn encode_subscribe_with_resume_after_exact() {
    let s = phoenix::encode_subscribe("1", "2", &[t(RUNS)], &[(t(RUNS), Watermark(1800))], 200);
    assert_eq!(
        s,
        r#"["1","2","sync:v1","sync:subscribe",{"topics":["runtime.run_summaries"],"resume_after":{"runtime.run_summaries":1800},"replay_batch_size":200}]"#
    );
}

#[test]
fn encode_subscribe_partial_resume_after_exact() {
    // Topics without a committed cursor are absent from resume_after (replay from 0).
    let s = phoenix::encode_subscribe(
        "3",
        "9",
        &[t(WORKERS), t(RUNS)],
        &[(t(RUNS), Watermark(18_446_744_073_709_551_615))],
        1000,
    );
    assert_eq!(
        s,
        r#"["3","9","sync:v1","sync:subscribe",{"topics":["runtime.codex_worker_summaries","runtime.run_summaries"],"resume_after":{"runtime.run_summaries":18446744073709551615},"replay_batch_size":1000}]"#
    );
}

#[test]
fn encode_subscribe_without_resume_after_exact() {
    let s = phoenix::encode_subscribe("1", "2", &[t(RUNS), t(WORKERS)], &[], 200);
    assert_eq!(
        s,
        r#"["1","2","sync:v1","sync:subscribe",{"topics":["runtime.run_summaries","runtime.codex_worker_summaries"],"replay_batch_size":200}]"#
    );
}

#[test]
fn encode_subscribe_escapes_topic_names() {
    let weird = t("a\"b\\c/é");
    let s = phoenix::encode_subscribe(
        "1",
        "2",
        std::slice::from_ref(&weird),
        &[(weird.clone(), Watermark(1))],
        5,
    );
    assert_eq!(
        s,
        r#"["1","2","sync:v1","sync:subscribe",{"topics":["a\"b\\c/é"],"resume_after":{"a\"b\\c/é":1},"replay_batch_size":5}]"#
    );
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v[4]["topics"][0], "a\"b\\c/é");
}

#[test]
fn encode_unsubscribe_exact() {
    assert_eq!(
        phoenix::encode_unsubscribe("1", "4", &[t(RUNS)]),
        r#"["1","4","sync:v1","sync:unsubscribe",{"topics":["runtime.run_summaries"]}]"#
    );
    assert_eq!(
        phoenix::encode_unsubscribe("1", "5", &[t(RUNS), t(WORKERS)]),
        r#"["1","5","sync:v1","sync:unsubscribe",{"topics":["runtime.run_summaries","runtime.codex_worker_summaries"]}]"#
    );
}

#[test]
fn encode_heartbeat_exact() {
    assert_eq!(
        phoenix::encode_heartbeat("1", "6"),
        r#"["1","6","sync:v1","sync:heartbeat",{}]"#
    );
}

#[test]
fn encode_leave_exact() {
    assert_eq!(
        phoenix::encode_leave("1", "7"),
        r#"["1","7","sync:v1","phx_leave",{}]"#
    );
}

#[test]
fn phoenix_constants() {
    assert_eq!(phoenix::CHANNEL, "sync:v1");
    assert_eq!(phoenix::SOCKET_PATH, "/sync/socket/websocket");
    assert_eq!(phoenix::VSN, "2.0.0");
    assert_eq!(phoenix::PROTOCOL_VERSION, "khala.ws.v1");
    assert_eq!(phoenix::SCHEMA_VERSION, 1);
}

// ---------------------------------------------------------------------------------------
// §1 token
// ---------------------------------------------------------------------------------------

const TOKEN_FULL: &str = r#"{ "data": {
  "token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InN5bmMtYXV0aC12MSJ9.eyJzdWIiOiJ1c2VyOjQyIn0.SECRETSIGNATURE", "token_type": "Bearer", "expires_in": 300,
  "issued_at": "2026-02-21T10:00:00Z", "expires_at": "2026-02-21T10:05:00Z",
  "issuer": "https://openagents.com", "audience": "openagents-sync",
  "subject": "user:42", "org_id": "org:7", "claims_version": "oa_sync_claims_v1",
  "scopes": ["runtime.run_summaries"], "kid": "sync-auth-v1",
  "granted_topics": [{"topic": "runtime.run_summaries", "required_scope": "runtime.run_summaries"}],
  "token_id": "sync_01HZX", "session_id": "sess_9", "device_id": "ios:9F2C",
  "refresh_after_in": 240 } }"#;

#[test]
fn token_response_full_example() {
    let g = decode_token_response(TOKEN_FULL, &DecodeLimits::default()).unwrap();
    assert!(g.token.expose().ends_with(".SECRETSIGNATURE"));
    assert_eq!(g.token_type.as_deref(), Some("Bearer"));
    assert_eq!(g.expires_in, 300);
    assert_eq!(g.issued_at.as_deref(), Some("2026-02-21T10:00:00Z"));
    assert_eq!(g.expires_at.as_deref(), Some("2026-02-21T10:05:00Z"));
    assert_eq!(g.issuer.as_deref(), Some("https://openagents.com"));
    assert_eq!(g.audience.as_deref(), Some("openagents-sync"));
    assert_eq!(g.subject.as_deref(), Some("user:42"));
    assert_eq!(g.org_id.as_deref(), Some("org:7"));
    assert_eq!(g.claims_version.as_deref(), Some("oa_sync_claims_v1"));
    assert_eq!(g.scopes, vec!["runtime.run_summaries".to_string()]);
    assert_eq!(g.kid.as_deref(), Some("sync-auth-v1"));
    assert_eq!(
        g.granted_topics,
        vec![GrantedTopic::Object {
            topic: t(RUNS),
            required_scope: Some("runtime.run_summaries".into())
        }]
    );
    assert_eq!(g.granted_topics[0].topic(), &t(RUNS));
    assert_eq!(g.token_id.as_deref(), Some("sync_01HZX"));
    assert_eq!(g.session_id.as_deref(), Some("sess_9"));
    assert_eq!(g.device_id.as_deref(), Some("ios:9F2C"));
    assert_eq!(g.refresh_after_in, Some(240));
    assert_eq!(g.refresh_after_secs(), 240);
}

#[test]
fn token_response_granted_topics_as_strings_and_mixed() {
    let body = r#"{"data":{"token":"tok","expires_in":300,"granted_topics":["runtime.run_summaries",{"topic":"runtime.codex_worker_summaries"}]}}"#;
    let g = decode_token_response(body, &DecodeLimits::default()).unwrap();
    assert_eq!(
        g.granted_topics,
        vec![
            GrantedTopic::Name(t(RUNS)),
            GrantedTopic::Object {
                topic: t(WORKERS),
                required_scope: None
            }
        ]
    );
    let topics: Vec<&Topic> = g.granted_topics.iter().map(GrantedTopic::topic).collect();
    assert_eq!(topics, vec![&t(RUNS), &t(WORKERS)]);
}

#[test]
fn token_response_minimal_older_issuer() {
    let body = r#"{"data":{"token":"eyJ.x.y","token_type":"Bearer","expires_in":300,"issued_at":"2026-02-21T10:00:00Z","expires_at":"2026-02-21T10:05:00Z","issuer":"https://openagents.com","audience":"openagents-sync","subject":"user:42","org_id":"org:7","claims_version":"oa_sync_claims_v1","scopes":["runtime.run_summaries"],"kid":"sync-auth-v1"}}"#;
    let g = decode_token_response(body, &DecodeLimits::default()).unwrap();
    assert!(g.granted_topics.is_empty());
    assert_eq!(g.token_id, None);
    assert_eq!(g.session_id, None);
    assert_eq!(g.device_id, None);
    assert_eq!(g.refresh_after_in, None);
    assert_eq!(g.refresh_after_secs(), 240, "80 % of 300");

    let bare = r#"{"data":{"token":"x","expires_in":900}}"#;
    let g = decode_token_response(bare, &DecodeLimits::default()).unwrap();
    assert_eq!(g.refresh_after_secs(), 720);
    assert!(g.scopes.is_empty());
}

#[test]
fn token_refresh_after_defaults_and_bounds() {
    let grant = |expires_in: u64, refresh: Option<u64>| {
        let body = match refresh {
            Some(r) => format!(
                r#"{{"data":{{"token":"x","expires_in":{expires_in},"refresh_after_in":{r}}}}}"#
            ),
            None => format!(r#"{{"data":{{"token":"x","expires_in":{expires_in}}}}}"#),
        };
        decode_token_response(&body, &DecodeLimits::default()).unwrap()
    };
    assert_eq!(grant(300, None).refresh_after_secs(), 240);
    assert_eq!(grant(60, None).refresh_after_secs(), 48);
    assert_eq!(grant(301, None).refresh_after_secs(), 240);
    assert_eq!(grant(0, None).refresh_after_secs(), 0);
    assert_eq!(grant(300, Some(100)).refresh_after_secs(), 100);
    assert_eq!(grant(300, Some(300)).refresh_after_secs(), 300);
    // Nonsense hints fall back to 80 %.
    assert_eq!(grant(300, Some(0)).refresh_after_secs(), 240);
    assert_eq!(grant(300, Some(301)).refresh_after_secs(), 240);
    // Absurd lifetimes do not overflow and stay ~80 %.
    let huge = grant(u64::MAX, None).refresh_after_secs();
    assert!(
        huge > u64::MAX / 5 * 4 - 5 && huge <= u64::MAX / 5 * 4 + 5,
        "{huge}"
    );
}

#[test]
fn token_response_errors() {
    let limits = DecodeLimits::default();
    for bad in [
        r#"{}"#,
        r#"{"data":null}"#,
        r#"{"data":{"token":"x"}}"#,
        r#"{"data":{"expires_in":300}}"#,
        r#"{"data":{"token":"x","expires_in":"300"}}"#,
        r#"{"data":{"token":"x","expires_in":-1}}"#,
        r#"{"data":{"token":"x","expires_in":300,"granted_topics":[""]}}"#,
        r#"{"data":{"token":"x","expires_in":300,"granted_topics":[42]}}"#,
        r#"{"data":{"token":"x","expires_in":300,"scopes":"runtime.run_summaries"}}"#,
        r#"{"token":"x","expires_in":300}"#,
        "not json",
    ] {
        assert!(is_malformed(decode_token_response(bad, &limits)), "{bad}");
    }
    let small = DecodeLimits {
        max_frame_bytes: 16,
    };
    assert!(matches!(
        decode_token_response(TOKEN_FULL, &small),
        Err(ProtocolError::TooLarge {
            context: "token response",
            ..
        })
    ));
}

#[test]
fn sync_token_debug_is_redacted() {
    let g = decode_token_response(TOKEN_FULL, &DecodeLimits::default()).unwrap();
    let secret = g.token.expose().to_string();
    for shown in [
        format!("{g:?}"),
        format!("{g:#?}"),
        format!("{:?}", g.token),
    ] {
        assert!(!shown.contains(&secret), "{shown}");
        assert!(!shown.contains("SECRETSIGNATURE"), "{shown}");
        assert!(!shown.contains("eyJ"), "{shown}");
    }
    assert_eq!(
        format!("{:?}", SyncToken::new("hunter2")),
        "SyncToken(<redacted>)"
    );
    assert_eq!(SyncToken::new("hunter2").expose(), "hunter2");
}

#[test]
fn token_decode_errors_do_not_echo_the_secret() {
    // A token where a non-string is expected must not end up in the error text.
    let limits = DecodeLimits::default();
    for body in [
        r#"{"data":"eyJSECRET.TOKEN.VALUE"}"#,
        r#"{"data":{"token":"eyJSECRET.TOKEN.VALUE","expires_in":"eyJSECRET.TOKEN.VALUE"}}"#,
        r#"{"data":{"token":"x","expires_in":300,"granted_topics":"eyJSECRET.TOKEN.VALUE"}}"#,
    ] {
        let e = decode_token_response(body, &limits).unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}

#[test]
fn token_request_serialization() {
    assert_eq!(
        serde_json::to_string(&TokenRequest::default()).unwrap(),
        "{}"
    );
    let req = TokenRequest {
        scopes: Some(vec!["runtime.run_summaries".into()]),
        topics: Some(vec![t(RUNS)]),
        ttl_seconds: Some(300),
        device_id: Some("ios:9F2C".into()),
    };
    assert_eq!(
        serde_json::to_string(&req).unwrap(),
        r#"{"scopes":["runtime.run_summaries"],"topics":["runtime.run_summaries"],"ttl_seconds":300,"device_id":"ios:9F2C"}"#
    );
    let req = TokenRequest {
        ttl_seconds: Some(60),
        ..TokenRequest::default()
    };
    assert_eq!(
        serde_json::to_string(&req).unwrap(),
        r#"{"ttl_seconds":60}"#
    );
    let req = TokenRequest {
        topics: Some(vec![]),
        device_id: Some("d".into()),
        ..TokenRequest::default()
    };
    assert_eq!(
        serde_json::to_string(&req).unwrap(),
        r#"{"topics":[],"device_id":"d"}"#
    );
}

// ---------------------------------------------------------------------------------------
// §3 snapshot, §4 doc, error bodies, path segments
// ---------------------------------------------------------------------------------------

#[test]
fn snapshot_page_decodes() {
    let body = r#"{ "topic": "runtime.run_summaries", "snapshot_watermark": 31000,
  "docs": [ {"doc_key": "runtime/run_summary:a", "doc_version": 7, "payload": {"b":2,"a":1}, "payload_hash": "QyWM/3g/5wNtikMDP4MK38YOwDc4JHNUisdCuIgpJ3c="},
            {"doc_key": "runtime/run_summary:b", "doc_version": 1, "payload": [1,2], "payload_hash": null},
            {"doc_key": "runtime/run_summary:c", "doc_version": 2, "payload": {"x":true}} ],
  "next_cursor": "c_0001" }"#;
    let p = decode_snapshot_page(body, &DecodeLimits::default()).unwrap();
    assert_eq!(p.topic, t(RUNS));
    assert_eq!(p.snapshot_watermark, Watermark(31000));
    assert_eq!(p.next_cursor.as_deref(), Some("c_0001"));
    assert_eq!(p.docs.len(), 3);
    assert_eq!(p.docs[0].doc_key.as_str(), "runtime/run_summary:a");
    assert_eq!(p.docs[0].doc_version, 7);
    assert!(khala_sync::protocol::hash::verify(
        p.docs[0].payload.as_ref().unwrap(),
        p.docs[0].payload_hash.as_ref()
    )
    .unwrap());
    assert_eq!(p.docs[1].payload.as_ref().unwrap().get(), "[1,2]");
    assert!(p.docs[1].payload_hash.is_none());
    assert!(p.docs[2].payload_hash.is_none());

    let last =
        r#"{"topic":"runtime.run_summaries","snapshot_watermark":0,"docs":[],"next_cursor":null}"#;
    let p = decode_snapshot_page(last, &DecodeLimits::default()).unwrap();
    assert!(p.docs.is_empty());
    assert_eq!(p.next_cursor, None);
    let no_cursor = r#"{"topic":"runtime.run_summaries","snapshot_watermark":5,"docs":[]}"#;
    assert_eq!(
        decode_snapshot_page(no_cursor, &DecodeLimits::default())
            .unwrap()
            .next_cursor,
        None
    );
}

#[test]
fn snapshot_page_errors() {
    let limits = DecodeLimits::default();
    for bad in [
        r#"{"topic":"","snapshot_watermark":1,"docs":[]}"#,
        r#"{"topic":"t","docs":[]}"#,
        r#"{"topic":"t","snapshot_watermark":1}"#,
        r#"{"topic":"t","snapshot_watermark":"1","docs":[]}"#,
        r#"{"topic":"t","snapshot_watermark":1,"docs":[{"doc_key":"","doc_version":1}]}"#,
        r#"{"topic":"t","snapshot_watermark":1,"docs":[{"doc_key":"k","doc_version":1,"payload_hash":"zz"}]}"#,
        r#"{"topic":"t","snapshot_watermark":1,"docs":[],"next_cursor":5}"#,
        "[]",
    ] {
        assert!(is_malformed(decode_snapshot_page(bad, &limits)), "{bad}");
    }
    let small = DecodeLimits {
        max_frame_bytes: 10,
    };
    assert!(matches!(
        decode_snapshot_page(r#"{"topic":"t","snapshot_watermark":1,"docs":[]}"#, &small),
        Err(ProtocolError::TooLarge {
            context: "snapshot page",
            ..
        })
    ));
}

#[test]
fn doc_response_decodes() {
    let body = r#"{"doc_key":"runtime/run_summary:big","doc_version":5,"payload":{"b":2,"a":1},"payload_hash":"sha256:43258cff783fe7036d8a43033f830adfc60ec037382473548ac742b888292777","watermark":1950}"#;
    let d = decode_doc_response(body, &DecodeLimits::default()).unwrap();
    assert_eq!(d.doc_key.as_str(), "runtime/run_summary:big");
    assert_eq!(d.doc_version, 5);
    assert_eq!(d.watermark, Some(Watermark(1950)));
    assert!(khala_sync::protocol::hash::verify(
        d.payload.as_ref().unwrap(),
        d.payload_hash.as_ref()
    )
    .unwrap());

    let minimal = r#"{"doc_key":"k","doc_version":1}"#;
    let d = decode_doc_response(minimal, &DecodeLimits::default()).unwrap();
    assert!(d.payload.is_none() && d.payload_hash.is_none() && d.watermark.is_none());

    for bad in [
        r#"{"doc_key":"k"}"#,
        r#"{"doc_key":"","doc_version":1}"#,
        r#"{"doc_key":"k","doc_version":1,"watermark":-3}"#,
    ] {
        assert!(
            is_malformed(decode_doc_response(bad, &DecodeLimits::default())),
            "{bad}"
        );
    }
    let small = DecodeLimits { max_frame_bytes: 8 };
    assert!(matches!(
        decode_doc_response(minimal, &small),
        Err(ProtocolError::TooLarge {
            context: "doc response",
            ..
        })
    ));
}

#[test]
fn error_bodies() {
    assert_eq!(
        decode_error_body(
            r#"{"message":"Unauthenticated.","error":{"code":"unauthorized","message":"app session missing"}}"#
        ),
        HttpErrorBody {
            code: Some("unauthorized".into()),
            message: Some("app session missing".into())
        }
    );
    assert_eq!(
        decode_error_body(
            r#"{"message":"Token minting disabled","error":{"code":"sync_token_unavailable"}}"#
        ),
        HttpErrorBody {
            code: Some("sync_token_unavailable".into()),
            message: Some("Token minting disabled".into())
        }
    );
    // Dialect-F style.
    assert_eq!(
        decode_error_body(r#"{"error":"forbidden_topic","reason_code":"topic_not_granted"}"#),
        HttpErrorBody {
            code: Some("forbidden_topic".into()),
            message: None
        }
    );
    assert_eq!(
        decode_error_body(r#"{"error":"stale_cursor","details":{"topic":"run:1:events","reason_codes":["retention_floor_breach","replay_budget_exceeded"]}}"#).code.as_deref(),
        Some("stale_cursor")
    );
    assert_eq!(
        decode_error_body(r#"{"message":"The given data was invalid."}"#),
        HttpErrorBody {
            code: None,
            message: Some("The given data was invalid.".into())
        }
    );
    let empty = HttpErrorBody {
        code: None,
        message: None,
    };
    for junk in [
        "",
        "<html>502 Bad Gateway</html>",
        "null",
        "[]",
        r#"{"error":42}"#,
        r#"{"message":7}"#,
    ] {
        assert_eq!(decode_error_body(junk), empty, "{junk}");
    }
    assert_eq!(decode_error_body(&"x".repeat(100_000)), empty);
}

#[test]
fn path_segments_are_percent_encoded() {
    assert_eq!(
        encode_segment("runtime.run_summaries"),
        "runtime.run_summaries"
    );
    assert_eq!(
        encode_segment("runtime/run_summary:019c7f93"),
        "runtime%2Frun_summary%3A019c7f93"
    );
    assert_eq!(encode_segment("a b?c#d%e"), "a%20b%3Fc%23d%25e");
    assert_eq!(encode_segment("A-z_0.9~"), "A-z_0.9~");
    assert_eq!(encode_segment("é"), "%C3%A9");
    assert_eq!(encode_segment(""), "");
    assert_eq!(encode_segment(".."), "..");
    assert_eq!(
        khala_sync::protocol::http::SNAPSHOT_PATH,
        "/api/sync/snapshot"
    );
    assert_eq!(khala_sync::protocol::http::DOC_PATH, "/api/sync/doc");
    assert_eq!(khala_sync::protocol::token::TOKEN_PATH, "/api/sync/token");
}

// ---------------------------------------------------------------------------------------
// Newtypes
// ---------------------------------------------------------------------------------------

#[test]
fn names_and_watermarks() {
    assert!(Topic::new("").is_err());
    assert!(Topic::new("a\u{0}b").is_err());
    assert!(Topic::new("a\u{7f}").is_err());
    assert!(Topic::new("a".repeat(Topic::MAX_LEN)).is_ok());
    assert!(Topic::new("a".repeat(Topic::MAX_LEN + 1)).is_err());
    assert!(DocKey::new("").is_err());
    assert!(DocKey::new("k".repeat(DocKey::MAX_LEN + 1)).is_err());
    assert_eq!(Watermark(u64::MAX).next(), Watermark(u64::MAX));
    assert_eq!(Watermark::ZERO.next().get(), 1);
    assert_eq!(format!("{:?}", Watermark(3)), "W3");
    assert_eq!(
        ProtocolError::InvalidHash("x").code(),
        "invalid_payload_hash"
    );
}

// ---------------------------------------------------------------------------------------
// §2.2 subscribe request: both resume_after forms decode (server view)
// ---------------------------------------------------------------------------------------

fn payload_of(frame: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(frame).unwrap();
    v[4].to_string()
}

#[test]
fn subscribe_request_map_form_round_trips_encoder() {
    let frame = phoenix::encode_subscribe(
        "1",
        "2",
        &[t(RUNS), t(WORKERS)],
        &[(t(WORKERS), Watermark(7)), (t(RUNS), Watermark(1800))],
        200,
    );
    let req =
        phoenix::decode_subscribe_request(&payload_of(&frame), &DecodeLimits::default()).unwrap();
    assert_eq!(req.topics, vec![t(RUNS), t(WORKERS)]);
    assert_eq!(
        req.resume_after,
        vec![tw(WORKERS, 7), tw(RUNS, 1800)],
        "map form is in key order"
    );
    assert_eq!(req.replay_batch_size, Some(200));

    let frame = phoenix::encode_subscribe("1", "2", &[t(RUNS)], &[], 50);
    let req =
        phoenix::decode_subscribe_request(&payload_of(&frame), &DecodeLimits::default()).unwrap();
    assert!(req.resume_after.is_empty());
}

#[test]
fn subscribe_request_list_form_and_defaults() {
    let l = DecodeLimits::default();
    let req = phoenix::decode_subscribe_request(
        r#"{"topics":["runtime.run_summaries"],"resume_after":[{"topic":"runtime.run_summaries","watermark":1800}],"replay_batch_size":200}"#,
        &l,
    )
    .unwrap();
    assert_eq!(req.resume_after, vec![tw(RUNS, 1800)]);
    let req =
        phoenix::decode_subscribe_request(r#"{"topics":["runtime.run_summaries"]}"#, &l).unwrap();
    assert!(req.resume_after.is_empty());
    assert_eq!(req.replay_batch_size, None);
    let req = phoenix::decode_subscribe_request(
        r#"{"topics":["runtime.run_summaries"],"resume_after":null}"#,
        &l,
    )
    .unwrap();
    assert!(req.resume_after.is_empty());
    let req = phoenix::decode_subscribe_request(r#"{"topics":[],"resume_after":{}}"#, &l).unwrap();
    assert!(req.topics.is_empty() && req.resume_after.is_empty());
    for bad in [
        r#"{}"#,
        r#"{"topics":"runtime.run_summaries"}"#,
        r#"{"topics":[1]}"#,
        r#"{"topics":[""]}"#,
        r#"{"topics":["t"],"resume_after":{"t":-1}}"#,
        r#"{"topics":["t"],"resume_after":{"t":"5"}}"#,
        r#"{"topics":["t"],"resume_after":{"":5}}"#,
        r#"{"topics":["t"],"resume_after":[{"topic":"t"}]}"#,
        r#"{"topics":["t"],"resume_after":5}"#,
        r#"{"topics":["t"],"replay_batch_size":-5}"#,
    ] {
        assert!(
            is_malformed(phoenix::decode_subscribe_request(bad, &l)),
            "{bad}"
        );
    }
    assert!(matches!(
        phoenix::decode_subscribe_request(
            r#"{"topics":["t"]}"#,
            &DecodeLimits { max_frame_bytes: 4 }
        ),
        Err(ProtocolError::TooLarge { .. })
    ));
}
