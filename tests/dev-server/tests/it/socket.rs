//! Dialect P scenarios over a real WebSocket.

use crate::client::*;
use khala_dev_server::{DevServer, DevServerConfig, Faults, ForceStale, TestToken, TopicSpec};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn replay_pages_ascending_then_reply_then_live() {
    let server = start(fast_config()).await;
    publish_n(&server, RUNS, 25);
    let (mut c, join) = Client::joined(&server, &token(&server)).await;
    assert!(join["subscription_id"]
        .as_str()
        .is_some_and(|s| s.starts_with("sub_")));
    assert_eq!(join["allowed_topics"].as_array().map(Vec::len), Some(4));
    let (batches, reply) = c
        .subscribe(json!({"topics": [RUNS], "replay_batch_size": 10}))
        .await;
    let sizes: Vec<usize> = batches
        .iter()
        .map(|b| b["updates"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(sizes, vec![10, 10, 5]);
    assert_eq!(watermarks(&batches), (1..=25).collect::<Vec<_>>());
    let complete: Vec<bool> = batches
        .iter()
        .map(|b| b["replay_complete"] == true)
        .collect();
    assert_eq!(complete, vec![false, false, true]);
    for b in &batches {
        assert_eq!(
            b["head_watermarks"],
            json!([{"topic": RUNS, "watermark": 25}])
        );
        assert_eq!(b["updates"][0]["topic"], RUNS);
        assert_eq!(b["updates"][0]["hydration_required"], false);
    }
    assert_eq!(reply[4]["status"], "ok");
    let resp = &reply[4]["response"];
    assert_eq!(resp["topics"], json!([RUNS]));
    assert_eq!(
        resp["current_watermarks"],
        json!([{"topic": RUNS, "watermark": 25}])
    );
    assert_eq!(resp["subscription_id"], join["subscription_id"]);
    // Live fan-out.
    let wm = server.publish(
        RUNS,
        "runtime/run_summary:live",
        json!({"status": "running"}),
    );
    let live = c.next_event("sync:update_batch").await;
    assert_eq!(live[0], "1");
    assert_eq!(live[1], Value::Null);
    assert_eq!(live[4]["replay_complete"], true);
    assert_eq!(live[4]["updates"][0]["watermark"], wm);
    assert_eq!(
        live[4]["updates"][0]["payload"],
        json!({"status": "running"})
    );
    assert_eq!(
        live[4]["head_watermarks"],
        json!([{"topic": RUNS, "watermark": 26}])
    );
    let m = server.metrics();
    assert_eq!(m.subscribes_without_resume, 1);
    assert!(m.batches_sent >= 4);
}

#[tokio::test]
async fn replay_batch_size_is_clamped_and_defaults_to_200() {
    let server = start(fast_config()).await;
    publish_n(&server, RUNS, 450);
    let (mut c, _) = Client::joined(&server, &token(&server)).await;
    let (batches, _) = c.subscribe(json!({"topics": [RUNS]})).await;
    let sizes: Vec<usize> = batches
        .iter()
        .map(|b| b["updates"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(sizes, vec![200, 200, 50]);
    let (batches, _) = c
        .subscribe(json!({"topics": [RUNS], "resume_after": {RUNS: 447}, "replay_batch_size": 0}))
        .await;
    assert_eq!(batches.len(), 3, "batch size 0 clamps to 1");
    let (batches, _) = c
        .subscribe(json!({"topics": [RUNS], "replay_batch_size": 5000}))
        .await;
    assert!(batches
        .iter()
        .all(|b| b["updates"].as_array().map_or(0, Vec::len) == 450));
}

#[tokio::test]
async fn resume_after_map_and_list_forms() {
    let server = start(fast_config()).await;
    publish_n(&server, RUNS, 30);
    publish_n(&server, NOTES, 4);
    let (mut c, _) = Client::joined(&server, &token(&server)).await;
    let (batches, reply) = c
        .subscribe(json!({"topics": [RUNS], "resume_after": {RUNS: 20, WORKERS: 99999}}))
        .await;
    assert_eq!(
        reply[4]["status"], "ok",
        "entries for other topics are ignored"
    );
    assert_eq!(watermarks(&batches), (21..=30).collect::<Vec<_>>());
    assert_eq!(server.metrics().subscribes_with_resume, 1);

    let (mut c, _) = Client::joined(&server, &token(&server)).await;
    let (batches, reply) = c
        .subscribe(json!({"topics": [RUNS, NOTES],
            "resume_after": [{"topic": RUNS, "watermark": 27}, {"topic": NOTES, "watermark": 2}]}))
        .await;
    assert_eq!(reply[4]["status"], "ok");
    // Topic by topic, in request order.
    let topics: Vec<&str> = batches
        .iter()
        .map(|b| b["updates"][0]["topic"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(topics, vec![RUNS, NOTES]);
    assert_eq!(watermarks(&batches), vec![28, 29, 30, 3, 4]);
    assert_eq!(
        reply[4]["response"]["current_watermarks"],
        json!([{"topic": RUNS, "watermark": 30}, {"topic": NOTES, "watermark": 4}])
    );
    // At head: no batch, reply says head.
    let (batches, reply) = c
        .subscribe(json!({"topics": [RUNS], "resume_after": {RUNS: 30}}))
        .await;
    assert!(batches.is_empty());
    assert_eq!(
        reply[4]["response"]["current_watermarks"][0]["watermark"],
        30
    );
}

fn stale_topic(reply: &Value) -> Value {
    assert_eq!(reply[4]["status"], "error", "{reply}");
    let r = &reply[4]["response"];
    assert_eq!(r["code"], "stale_cursor");
    assert_eq!(r["full_resync_required"], true);
    assert_eq!(r["snapshot_plan"]["format"], "openagents.sync.snapshot.v1");
    r["stale_topics"][0].clone()
}

#[tokio::test]
async fn stale_retention_floor_breach_and_absent_topic_replays_retained_window() {
    let server = start(fast_config()).await;
    publish_n(&server, RUNS, 50);
    server.truncate_before(RUNS, 11); // floor = 10
    assert_eq!(server.retention_floor(RUNS), 10);
    let (mut c, _) = Client::joined(&server, &token(&server)).await;
    let (batches, reply) = c
        .subscribe(json!({"topics": [RUNS], "resume_after": {RUNS: 9}}))
        .await;
    assert!(batches.is_empty());
    assert_eq!(
        reply[4]["response"]["reason_codes"],
        json!(["retention_floor_breach"])
    );
    assert_eq!(
        reply[4]["response"]["message"],
        "cursor is older than retention floor"
    );
    assert_eq!(
        stale_topic(&reply),
        json!({"topic": RUNS, "reason": "retention_floor_breach", "qos_tier": "warm",
               "resume_after": 9, "retention_floor": 10, "head_watermark": 50,
               "replay_lag": 41, "replay_budget_events": 20000})
    );
    // resume_after == floor is fine.
    let (batches, reply) = c
        .subscribe(json!({"topics": [RUNS], "resume_after": {RUNS: 10}}))
        .await;
    assert_eq!(reply[4]["status"], "ok");
    assert_eq!(watermarks(&batches), (11..=50).collect::<Vec<_>>());
    // Absent from resume_after: replay from 0 unchecked → the retained window.
    let (batches, reply) = c.subscribe(json!({"topics": [RUNS]})).await;
    assert_eq!(reply[4]["status"], "ok");
    assert_eq!(watermarks(&batches).first(), Some(&11));
    assert_eq!(
        server
            .metrics()
            .topics
            .iter()
            .find(|t| t.topic == RUNS)
            .map(|t| t.stale_cursor_count),
        Some(1)
    );
}

#[tokio::test]
async fn stale_replay_budget_exceeded_and_breach_checked_first() {
    let mut config = fast_config();
    config.topics = TopicSpec::reference_topics();
    for t in &mut config.topics {
        t.replay_budget_events = 10;
    }
    let server = start(config).await;
    publish_n(&server, RUNS, 30);
    let (mut c, _) = Client::joined(&server, &token(&server)).await;
    let (_, reply) = c
        .subscribe(json!({"topics": [RUNS], "resume_after": {RUNS: 19}}))
        .await;
    let st = stale_topic(&reply);
    assert_eq!(st["reason"], "replay_budget_exceeded");
    assert_eq!(st["replay_lag"], 11);
    assert_eq!(st["replay_budget_events"], 10);
    assert_eq!(
        reply[4]["response"]["message"],
        "replay budget exceeded for topic qos tier; full resync required"
    );
    let (_, reply) = c
        .subscribe(json!({"topics": [RUNS], "resume_after": {RUNS: 20}}))
        .await;
    assert_eq!(reply[4]["status"], "ok", "lag == budget is fine");
    // Both conditions: breach wins.
    server.truncate_before(RUNS, 6);
    let (_, reply) = c
        .subscribe(json!({"topics": [RUNS], "resume_after": {RUNS: 2}}))
        .await;
    assert_eq!(stale_topic(&reply)["reason"], "retention_floor_breach");
}

#[tokio::test]
async fn stale_cursor_ahead_of_head_rejects_whole_subscribe() {
    let server = start(fast_config()).await;
    publish_n(&server, RUNS, 5);
    publish_n(&server, NOTES, 5);
    let (mut c, _) = Client::joined(&server, &token(&server)).await;
    let (batches, reply) = c
        .subscribe(json!({"topics": [NOTES, RUNS], "resume_after": {RUNS: 9}}))
        .await;
    assert!(batches.is_empty(), "a stale subscribe replays nothing");
    let st = stale_topic(&reply);
    assert_eq!(st["reason"], "cursor_ahead_of_head");
    assert_eq!(st["head_watermark"], 5);
    assert_eq!(st["resume_after"], 9);
    assert_eq!(
        reply[4]["response"]["reason_codes"],
        json!(["cursor_ahead_of_head"])
    );
    // Nothing was subscribed: a publish is not pushed.
    server.publish(NOTES, "n", json!(1));
    c.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn forbidden_topic_reports_disallowed_and_unknown_topics() {
    let server = start(fast_config()).await;
    let limited = server.mint_token_with(&TestToken {
        subject: "user:43".into(),
        topics: vec![RUNS.into()],
        issued_offset_seconds: 0,
        ttl_seconds: 300,
        tampered: false,
    });
    let (mut c, join) = Client::joined(&server, &limited).await;
    assert_eq!(join["allowed_topics"], json!([RUNS]));
    let (_, reply) = c
        .subscribe(json!({"topics": [RUNS, NOTES, "runtime.nope"]}))
        .await;
    assert_eq!(reply[4]["status"], "error");
    assert_eq!(reply[4]["response"]["code"], "forbidden_topic");
    assert_eq!(
        reply[4]["response"]["forbidden_topics"],
        json!([NOTES, "runtime.nope"])
    );
    // Forbidden is checked before resume_after shape (validation order).
    let (_, reply) = c
        .subscribe(json!({"topics": [NOTES], "resume_after": "garbage"}))
        .await;
    assert_eq!(reply[4]["response"]["code"], "forbidden_topic");
    let (_, reply) = c.subscribe(json!({"topics": [RUNS]})).await;
    assert_eq!(reply[4]["status"], "ok");
}

#[tokio::test]
async fn bad_subscription_cases() {
    let server = start(fast_config()).await;
    let (mut c, _) = Client::joined(&server, &token(&server)).await;
    for payload in [
        json!({}),
        json!({"topics": []}),
        json!({"topics": "runtime.run_summaries"}),
        json!({"topics": [1]}),
        json!([]),
        json!({"topics": [RUNS], "resume_after": {RUNS: -1}}),
        json!({"topics": [RUNS], "resume_after": {RUNS: "5"}}),
        json!({"topics": [RUNS], "resume_after": [{"topic": RUNS}]}),
        json!({"topics": [RUNS], "resume_after": 5}),
        json!({"topics": [RUNS], "replay_batch_size": "10"}),
        json!({"topics": [RUNS], "replay_batch_size": 1.5}),
    ] {
        let (_, reply) = c.subscribe(payload.clone()).await;
        assert_eq!(reply[4]["status"], "error", "{payload}");
        assert_eq!(
            reply[4]["response"]["code"], "bad_subscription",
            "{payload}"
        );
    }
    let (_, reply) = c
        .request("sync:v1", "sync:unsubscribe", json!({"topics": 3}))
        .await;
    assert_eq!(reply[4]["response"]["code"], "bad_subscription");
}

#[tokio::test]
async fn unsubscribe_and_resubscribe_from_new_cursor() {
    let server = start(fast_config()).await;
    publish_n(&server, RUNS, 10);
    let (mut c, join) = Client::joined(&server, &token(&server)).await;
    c.subscribe(json!({"topics": [RUNS, NOTES]})).await;
    let (_, reply) = c
        .request("sync:v1", "sync:unsubscribe", json!({"topics": [RUNS]}))
        .await;
    assert_eq!(reply[4]["status"], "ok");
    assert_eq!(
        reply[4]["response"],
        json!({"subscription_id": join["subscription_id"], "topics": [NOTES]})
    );
    server.publish(RUNS, "x", json!(1));
    c.expect_silence(Duration::from_millis(200)).await;
    let (batches, _) = c
        .subscribe(json!({"topics": [RUNS], "resume_after": {RUNS: 8}}))
        .await;
    assert_eq!(watermarks(&batches), vec![9, 10, 11]);
    let (batches, _) = c
        .subscribe(json!({"topics": [RUNS], "resume_after": {RUNS: 5}}))
        .await;
    assert_eq!(
        watermarks(&batches),
        (6..=11).collect::<Vec<_>>(),
        "re-subscribe replays from the new cursor"
    );
}

#[tokio::test]
async fn replies_echo_refs_and_channel_errors_never_crash() {
    let server = start(fast_config()).await;
    let mut c = Client::connect(&server, &token(&server)).await;
    // Before join: unmatched topic.
    let (_, reply) = c
        .request("sync:v1", "sync:subscribe", json!({"topics": [RUNS]}))
        .await;
    assert_eq!(
        reply[4],
        json!({"status": "error", "response": {"reason": "unmatched topic"}})
    );
    // Join on another topic.
    let (_, reply) = c.request("room:lobby", "phx_join", json!({})).await;
    assert_eq!(reply[4]["response"]["code"], "bad_topic");
    // Join with distinct join_ref/ref.
    c.send_raw(json!(["7", "9", "sync:v1", "phx_join", {}]).to_string())
        .await;
    let reply = c.recv().await.expect("reply");
    assert_eq!(
        (&reply[0], &reply[1], &reply[2], &reply[3]),
        (
            &json!("7"),
            &json!("9"),
            &json!("sync:v1"),
            &json!("phx_reply")
        )
    );
    // Unknown event.
    c.send_raw(json!(["7", "10", "sync:v1", "sync:bogus", {}]).to_string())
        .await;
    let reply = c.recv().await.expect("reply");
    assert_eq!(reply[1], "10");
    assert_eq!(reply[4]["response"]["code"], "unknown_event");
    // Phoenix heartbeat.
    c.send_raw(json!([null, "11", "phoenix", "heartbeat", {}]).to_string())
        .await;
    let reply = c.recv().await.expect("reply");
    assert_eq!(
        reply,
        json!([null, "11", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );
    // Pushes carry the channel's join_ref.
    c.send_raw(json!(["7", "12", "sync:v1", "sync:subscribe", {"topics": [RUNS]}]).to_string())
        .await;
    c.recv().await.expect("reply");
    server.publish(RUNS, "k", json!(1));
    let push = c.next_event("sync:update_batch").await;
    assert_eq!(push[0], "7");
    // Malformed frame → close 1007; the server keeps serving.
    c.send_raw("{not json".into()).await;
    let (_, end) = c.until_end(Duration::from_secs(3)).await;
    assert_eq!(end, Ended::Closed(1007));
    let mut c = Client::connect(&server, &token(&server)).await;
    c.send_raw(json!(["1", "1", "sync:v1"]).to_string()).await;
    let (_, end) = c.until_end(Duration::from_secs(3)).await;
    assert_eq!(end, Ended::Closed(1007));
    let (_c, _) = Client::joined(&server, &token(&server)).await;
}

#[tokio::test]
async fn upgrade_refused_for_bad_tokens_and_vsn() {
    let server = start(fast_config()).await;
    let base = format!("ws://{}/sync/socket/websocket", server.addr());
    let good = token(&server);
    assert_eq!(upgrade_status(&format!("{base}?vsn=2.0.0")).await, 403);
    assert_eq!(
        upgrade_status(&format!("{base}?vsn=2.0.0&token=abc")).await,
        403
    );
    let tampered = server.mint_tampered_token_for_tests("user:42");
    assert_eq!(
        upgrade_status(&format!("{base}?vsn=2.0.0&token={tampered}")).await,
        403
    );
    let expired = server.mint_expired_token_for_tests("user:42");
    assert_eq!(
        upgrade_status(&format!("{base}?vsn=2.0.0&token={expired}")).await,
        403
    );
    // nbf 20 s in the future is within the 30 s skew; 60 s is not.
    let mut spec = TestToken {
        subject: "user:42".into(),
        topics: vec![RUNS.into()],
        issued_offset_seconds: 20,
        ttl_seconds: 300,
        tampered: false,
    };
    assert_eq!(
        upgrade_status(&format!(
            "{base}?vsn=2.0.0&token={}",
            server.mint_token_with(&spec)
        ))
        .await,
        101
    );
    spec.issued_offset_seconds = 60;
    assert_eq!(
        upgrade_status(&format!(
            "{base}?vsn=2.0.0&token={}",
            server.mint_token_with(&spec)
        ))
        .await,
        403
    );
    assert_eq!(
        upgrade_status(&format!("{base}?vsn=1.0.0&token={good}")).await,
        400
    );
    assert_eq!(
        upgrade_status(&format!(
            "{base}?vsn=2.0.0&token={good}&client=t&protocol_version=khala.ws.v1"
        ))
        .await,
        101
    );
    assert_eq!(server.metrics().connections_refused_total, 6);
}

#[tokio::test]
async fn upgrade_required_join_error() {
    let server = start(fast_config()).await;
    server.set_faults(Faults {
        upgrade_required: Some(true),
        ..Faults::default()
    });
    let mut c = Client::connect(&server, &token(&server)).await;
    let reply = c.join().await;
    assert_eq!(reply[4]["status"], "error");
    let r = &reply[4]["response"];
    assert_eq!(r["code"], "upgrade_required");
    assert_eq!(r["upgrade_required"], true);
    assert_eq!(r["retryable"], false);
    assert_eq!(r["protocol_version"], "khala.ws.v1");
    assert_eq!(r["max_client_build_id"], Value::Null);
    assert_eq!(r["min_schema_version"], 1);
    server.set_faults(Faults {
        upgrade_required: Some(false),
        ..Faults::default()
    });
    assert_eq!(c.join().await[4]["status"], "ok");
}

#[tokio::test]
async fn compat_codes_from_socket_url() {
    let server = start(fast_config()).await;
    let base = server.socket_url(&token(&server));
    for (query, code) in [
        (
            "&protocol_version=khala.ws.v2",
            "unsupported_protocol_version",
        ),
        ("&schema_version=2", "unsupported_schema_version"),
    ] {
        let (ws, _) = tokio_tungstenite::connect_async(format!("{base}{query}"))
            .await
            .expect("upgrade");
        let mut c = Client::from_stream(ws);
        let reply = c.join().await;
        assert_eq!(reply[4]["status"], "error");
        assert_eq!(reply[4]["response"]["code"], code);
        assert_eq!(reply[4]["response"]["upgrade_required"], true);
    }
    let (ws, _) = tokio_tungstenite::connect_async(format!(
        "{base}&protocol_version=khala.ws.v1&schema_version=1&client=t&client_build_id=1"
    ))
    .await
    .expect("upgrade");
    assert_eq!(Client::from_stream(ws).join().await[4]["status"], "ok");
}

#[tokio::test]
async fn heartbeat_reply_and_server_heartbeat_push() {
    let server = start(DevServerConfig {
        heartbeat_interval: Duration::from_millis(150),
        ..fast_config()
    })
    .await;
    publish_n(&server, RUNS, 3);
    let (mut c, join) = Client::joined(&server, &token(&server)).await;
    c.subscribe(json!({"topics": [RUNS]})).await;
    let (_, reply) = c.request("sync:v1", "sync:heartbeat", json!({})).await;
    assert_eq!(
        reply[4],
        json!({"status": "ok", "response": {"subscription_id": join["subscription_id"],
               "watermarks": [{"topic": RUNS, "watermark": 3}]}})
    );
    let push = c.next_event("sync:heartbeat").await;
    assert_eq!(push[1], Value::Null);
    assert_eq!(
        push[4],
        json!({"watermarks": [{"topic": RUNS, "watermark": 3}]})
    );
}

#[tokio::test]
async fn idle_timeout_closes_and_heartbeats_keep_alive() {
    let server = start(DevServerConfig {
        idle_timeout: Duration::from_millis(500),
        ..fast_config()
    })
    .await;
    let (mut alive, _) = Client::joined(&server, &token(&server)).await;
    let (mut idle, _) = Client::joined(&server, &token(&server)).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        alive.request("phoenix", "heartbeat", json!({})).await;
    }
    let (seen, end) = idle.until_end(Duration::from_secs(2)).await;
    assert_eq!(end, Ended::Closed(1000));
    assert!(seen.iter().any(|f| f[3] == "phx_close"));
    let (_, reply) = alive.request("sync:v1", "sync:heartbeat", json!({})).await;
    assert_eq!(reply[4]["status"], "ok");
}

#[tokio::test]
async fn token_expiry_on_open_socket_pushes_reauth_then_closes() {
    let server = start(DevServerConfig {
        min_ttl_seconds: 1,
        ..fast_config()
    })
    .await;
    let short = server.mint_token_for_tests("user:42", Duration::from_secs(2));
    let (mut c, _) = Client::joined(&server, &short).await;
    c.subscribe(json!({"topics": [RUNS]})).await;
    let started = std::time::Instant::now();
    let push = c.next_event("sync:error").await;
    assert!(started.elapsed() <= Duration::from_secs(3));
    assert_eq!(
        push[4],
        json!({"code": "reauth_required", "message": "sync token expired; fetch a new token and reconnect",
               "reauth_required": true, "reason": "token_expired"})
    );
    // Join after expiry (before the close) → reauth_required join error.
    let reply = c.join().await;
    assert_eq!(reply[4]["response"]["code"], "reauth_required");
    let (_, end) = c.until_end(Duration::from_secs(2)).await;
    assert_eq!(end, Ended::Closed(1000));
}

#[tokio::test]
async fn expire_tokens_fault_hits_every_open_socket() {
    let server = start(fast_config()).await;
    let (mut a, _) = Client::joined(&server, &token(&server)).await;
    let (mut b, _) = Client::joined(&server, &token(&server)).await;
    server.set_faults(Faults {
        expire_tokens: true,
        ..Faults::default()
    });
    for c in [&mut a, &mut b] {
        let (seen, end) = c.until_end(Duration::from_secs(2)).await;
        assert_eq!(seen[0][4]["code"], "reauth_required");
        assert_eq!(end, Ended::Closed(1000));
    }
    // New sockets are unaffected.
    let (_c, _) = Client::joined(&server, &token(&server)).await;
    assert_eq!(server.metrics().reauth_pushes, 2);
}

#[tokio::test]
async fn slow_consumer_throttles_then_catches_up_in_order() {
    let server = start(DevServerConfig {
        outbound_queue_limit: 1,
        ..fast_config()
    })
    .await;
    let (mut c, _) = Client::joined(&server, &token(&server)).await;
    c.subscribe(json!({"topics": [RUNS]})).await;
    server.set_faults(Faults {
        delay_ms: Some(100),
        ..Faults::default()
    });
    publish_n(&server, RUNS, 3);
    let mut got = Vec::new();
    let mut throttles = 0;
    while got.len() < 3 {
        let f = c.recv().await.expect("open");
        match f[3].as_str() {
            Some("sync:update_batch") => got.extend(watermarks(&[f[4].clone()])),
            Some("sync:error") => {
                assert_eq!(f[4]["code"], "slow_consumer");
                assert_eq!(f[4]["action"], "throttle");
                assert_eq!(f[4]["queue_limit"], 1);
                assert_eq!(f[4]["full_resync_required"], false);
                throttles += 1;
            }
            _ => {}
        }
    }
    assert_eq!(got, vec![1, 2, 3]);
    assert!((1..=2).contains(&throttles));
    server.clear_faults();
    let (_, reply) = c.request("sync:v1", "sync:heartbeat", json!({})).await;
    assert_eq!(reply[4]["status"], "ok", "still connected");
}

#[tokio::test]
async fn slow_consumer_third_strike_disconnects() {
    let server = start(DevServerConfig {
        outbound_queue_limit: 1,
        reconnect_after_ms: 1234,
        ..fast_config()
    })
    .await;
    let (mut c, _) = Client::joined(&server, &token(&server)).await;
    c.subscribe(json!({"topics": [RUNS]})).await;
    server.set_faults(Faults {
        delay_ms: Some(200),
        ..Faults::default()
    });
    publish_n(&server, RUNS, 10);
    let (seen, end) = c.until_end(Duration::from_secs(5)).await;
    let actions: Vec<&str> = seen
        .iter()
        .filter(|f| f[3] == "sync:error")
        .filter_map(|f| f[4]["action"].as_str())
        .collect();
    assert_eq!(actions, vec!["throttle", "throttle", "disconnect"]);
    let disconnect = seen
        .iter()
        .find(|f| f[4]["action"] == "disconnect")
        .expect("disconnect");
    assert_eq!(disconnect[4]["reconnect_after_ms"], 1234);
    assert_eq!(end, Ended::Closed(1013));
    let m = server.metrics();
    assert_eq!(m.slow_consumer_evictions, 1);
    assert!(m.slow_consumer_strikes >= 3);
}

#[tokio::test]
async fn force_stale_pending_once_and_pushed() {
    let server = start(fast_config()).await;
    publish_n(&server, RUNS, 5);
    server.set_faults(Faults {
        force_stale: Some(ForceStale {
            topic: RUNS.into(),
            push: false,
            reason: None,
        }),
        ..Faults::default()
    });
    assert_eq!(server.faults().force_stale.len(), 1);
    let (mut c, _) = Client::joined(&server, &token(&server)).await;
    // Without resume_after: unchecked, fault stays pending.
    let (_, reply) = c.subscribe(json!({"topics": [RUNS]})).await;
    assert_eq!(reply[4]["status"], "ok");
    let (_, reply) = c
        .subscribe(json!({"topics": [RUNS], "resume_after": {RUNS: 5}}))
        .await;
    assert_eq!(stale_topic(&reply)["reason"], "retention_floor_breach");
    let (_, reply) = c
        .subscribe(json!({"topics": [RUNS], "resume_after": {RUNS: 5}}))
        .await;
    assert_eq!(reply[4]["status"], "ok", "force_stale is one-shot");
    // Push form: stale push, topic dropped from the subscription.
    server.set_faults(Faults {
        force_stale: Some(ForceStale {
            topic: RUNS.into(),
            push: true,
            reason: Some("replay_budget_exceeded".into()),
        }),
        ..Faults::default()
    });
    let push = c.next_event("sync:error").await;
    assert_eq!(push[4]["code"], "stale_cursor");
    assert_eq!(
        push[4]["stale_topics"][0]["reason"],
        "replay_budget_exceeded"
    );
    assert_eq!(push[4]["stale_topics"][0]["resume_after"], 5);
    server.publish(RUNS, "x", json!(1));
    c.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn lagging_socket_overtaken_by_retention_gets_stale_push() {
    let server = start(DevServerConfig {
        outbound_queue_limit: 1,
        max_retained_per_topic: 3,
        slow_consumer_max_strikes: 100,
        ..fast_config()
    })
    .await;
    let (mut c, _) = Client::joined(&server, &token(&server)).await;
    c.subscribe(json!({"topics": [RUNS]})).await;
    server.set_faults(Faults {
        delay_ms: Some(150),
        ..Faults::default()
    });
    publish_n(&server, RUNS, 12);
    let push = loop {
        let f = c.recv().await.expect("open");
        if f[3] == "sync:error" && f[4]["code"] == "stale_cursor" {
            break f;
        }
    };
    let st = &push[4]["stale_topics"][0];
    assert_eq!(st["topic"], RUNS);
    assert_eq!(st["retention_floor"], 9);
    assert!(st["resume_after"].as_u64().is_some_and(|r| r < 9));
}

#[tokio::test]
async fn duplicate_and_legacy_frame_faults() {
    let server = start(fast_config()).await;
    let (mut c, _) = Client::joined(&server, &token(&server)).await;
    c.subscribe(json!({"topics": [RUNS]})).await;
    server.set_faults(Faults {
        duplicate_next_batch: Some(true),
        ..Faults::default()
    });
    server.publish(RUNS, "a", json!(1));
    server.publish(RUNS, "b", json!(2));
    let wms: Vec<u64> = [
        c.next_event("sync:update_batch").await,
        c.next_event("sync:update_batch").await,
        c.next_event("sync:update_batch").await,
    ]
    .iter()
    .flat_map(|f| watermarks(&[f[4].clone()]))
    .collect();
    assert_eq!(wms, vec![1, 1, 2]);
    server.set_faults(Faults {
        legacy_sync_frame: Some(true),
        ..Faults::default()
    });
    server.publish(RUNS, "c", json!(3));
    let batch = c.recv().await.expect("batch");
    let legacy = c.recv().await.expect("legacy");
    assert_eq!(batch[3], "sync:update_batch");
    assert_eq!(legacy[3], "sync:frame");
    assert_eq!(legacy[4]["seq"], 3);
    assert_eq!(legacy[4]["kind"], "KHALA_FRAME_KIND_UPDATE_BATCH");
    assert_eq!(legacy[4]["schema_version"], 1);
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(legacy[4]["payload_bytes"].as_str().unwrap_or(""))
        .expect("base64");
    let inner: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(inner, batch[4]);
}

#[tokio::test]
async fn drop_after_frames_and_restart_drop_sockets_without_close_frame() {
    let server = start(fast_config()).await;
    let (mut c, _) = Client::joined(&server, &token(&server)).await;
    c.subscribe(json!({"topics": [RUNS]})).await;
    server.set_faults(Faults {
        drop_after_frames: Some(2),
        ..Faults::default()
    });
    publish_n(&server, RUNS, 5);
    let (seen, end) = c.until_end(Duration::from_secs(3)).await;
    assert_eq!(seen.len(), 2);
    assert_eq!(end, Ended::Dropped);
    assert_eq!(server.faults().drop_after_frames, None, "one-shot");
    let (mut c, _) = Client::joined(&server, &token(&server)).await;
    server.restart_connections();
    let (_, end) = c.until_end(Duration::from_secs(3)).await;
    assert_eq!(end, Ended::Dropped);
    assert_eq!(server.head(RUNS), 5, "logs kept");
}

#[tokio::test]
async fn resume_after_full_server_restart_on_same_port() {
    let server = start(fast_config()).await;
    publish_n(&server, RUNS, 8);
    let port = server.addr().port();
    let (mut c, _) = Client::joined(&server, &token(&server)).await;
    c.subscribe(json!({"topics": [RUNS]})).await;
    let state = server.shutdown_and_export().await;
    let (_, end) = c.until_end(Duration::from_secs(3)).await;
    assert_ne!(end, Ended::Closed(1000));
    let server = DevServer::start_with_state(
        DevServerConfig {
            port,
            ..fast_config()
        },
        state,
    )
    .await
    .expect("restart on the same port");
    assert_eq!(server.addr().port(), port);
    server.publish(RUNS, "after", json!("restart"));
    let (mut c, _) = Client::joined(&server, &token(&server)).await;
    let (batches, _) = c
        .subscribe(json!({"topics": [RUNS], "resume_after": {RUNS: 6}}))
        .await;
    assert_eq!(watermarks(&batches), vec![7, 8, 9]);
    server.shutdown().await;
}

#[tokio::test]
async fn hydration_threshold_and_tombstones_on_the_wire() {
    let server = start(DevServerConfig {
        hydration_threshold_bytes: 64,
        ..fast_config()
    })
    .await;
    let big = json!({"blob": "x".repeat(100)});
    server.publish(RUNS, "big", big.clone());
    server.publish_raw(RUNS, "small", r#"{ "b": 1,  "a": 2.50 }"#);
    server.delete(RUNS, "small");
    let (mut c, _) = Client::joined(&server, &token(&server)).await;
    let (batches, _) = c.subscribe(json!({"topics": [RUNS]})).await;
    let u = &batches[0]["updates"];
    assert_eq!(u[0]["payload"], Value::Null);
    assert_eq!(u[0]["hydration_required"], true);
    assert_eq!(u[0]["payload_hash"], khala_dev_server::payload_hash(&big));
    assert_eq!(u[1]["hydration_required"], false);
    assert_eq!(
        u[1]["payload_hash"],
        khala_dev_server::payload_hash(&json!({"a": 2.5, "b": 1}))
    );
    assert_eq!(
        u[2],
        json!({"topic": RUNS, "doc_key": "small", "doc_version": 2, "payload": null,
               "payload_hash": null, "watermark": 3, "hydration_required": false, "deleted": true})
    );
}

#[tokio::test]
async fn raw_payload_text_goes_out_exactly_as_published() {
    let server = start(fast_config()).await;
    let raw = r#"{"n":18446744073709551615,"f":-0.0,"big":9007199254740993,"s":"é\u0001"}"#;
    server.publish_raw(RUNS, "raw", raw);
    let (mut c, _) = Client::joined(&server, &token(&server)).await;
    c.push("sync:v1", "sync:subscribe", json!({"topics": [RUNS]}))
        .await;
    let text = c.recv_text().await;
    assert!(text.contains(raw), "{text}");
}
