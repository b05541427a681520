//! Token, snapshot, doc, metrics and control routes over real HTTP.

use crate::client::*;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use khala_dev_server::{DevServer, DevServerConfig, Faults, TestToken};
use serde_json::{json, Value};
use sha2::Sha256;
use std::time::Duration;

async fn post_token(server: &DevServer, app: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(format!("{}/api/sync/token", server.base_url()));
    if let Some(app) = app {
        req = req.bearer_auth(app);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("http");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(url: String, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("http");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["message"].is_string());
    assert_eq!(body["message"], body["error"]["message"]);
}

#[tokio::test]
async fn token_route_shape_and_jwt_verifies() {
    let server = start(fast_config()).await;
    let (status, body) = post_token(&server, Some(DevServer::APP_TOKEN), None).await;
    assert_eq!(status, 200);
    let d = &body["data"];
    for field in [
        "token",
        "token_type",
        "expires_in",
        "issued_at",
        "expires_at",
        "issuer",
        "audience",
        "subject",
        "org_id",
        "claims_version",
        "scopes",
        "kid",
        "granted_topics",
        "token_id",
        "session_id",
        "device_id",
        "refresh_after_in",
    ] {
        assert!(!d[field].is_null(), "missing {field}");
    }
    assert_eq!(d["token_type"], "Bearer");
    assert_eq!(d["expires_in"], 300);
    assert_eq!(d["refresh_after_in"], 240);
    assert_eq!(d["subject"], "user:42");
    assert_eq!(d["org_id"], "org:7");
    assert_eq!(d["kid"], "sync-auth-v1");
    assert_eq!(d["claims_version"], "oa_sync_claims_v1");
    // The four dialect-P topics plus `runtime.run_events` (dialect F run topics).
    assert_eq!(d["scopes"].as_array().map(Vec::len), Some(5));
    assert!(d["scopes"]
        .as_array()
        .is_some_and(|s| s.contains(&json!("runtime.run_events"))));
    assert_eq!(d["granted_topics"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        d["granted_topics"][0],
        json!({"topic": RUNS, "required_scope": RUNS})
    );
    assert!(d["token_id"]
        .as_str()
        .is_some_and(|t| t.starts_with("sync_")));
    assert!(d["issued_at"]
        .as_str()
        .is_some_and(|t| t.len() == 20 && t.ends_with('Z')));

    // The JWT: three unpadded base64url segments, HS256 over the configured secret.
    let token = d["token"].as_str().expect("token");
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    assert!(!token.contains('='));
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("json");
    assert_eq!(
        header,
        json!({"alg": "HS256", "typ": "JWT", "kid": "sync-auth-v1"})
    );
    let mut mac =
        Hmac::<Sha256>::new_from_slice(server.config().jwt_secret.as_bytes()).expect("key");
    mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
    mac.verify_slice(&URL_SAFE_NO_PAD.decode(parts[2]).expect("sig"))
        .expect("signature verifies");
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
    for c in [
        "iss",
        "aud",
        "sub",
        "iat",
        "nbf",
        "exp",
        "jti",
        "oa_user_id",
        "oa_org_id",
        "oa_session_id",
        "oa_device_id",
        "oa_sync_scopes",
        "oa_sync_topics",
        "oa_claims_version",
    ] {
        assert!(!claims[c].is_null(), "missing claim {c}");
    }
    assert_eq!(claims["iss"], "https://openagents.com");
    assert_eq!(claims["aud"], "openagents-sync");
    assert_eq!(claims["nbf"], claims["iat"]);
    assert_eq!(
        claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0),
        300
    );
    assert_eq!(claims["jti"], d["token_id"]);
    assert_eq!(claims["oa_user_id"], 42);

    // Subsets and device id.
    let (status, body) = post_token(
        &server,
        Some(DevServer::APP_TOKEN),
        Some(json!({"scopes": [RUNS, NOTES], "topics": [NOTES], "ttl_seconds": 600, "device_id": "ios:9F2C"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["data"]["granted_topics"],
        json!([{"topic": NOTES, "required_scope": NOTES}])
    );
    assert_eq!(body["data"]["device_id"], "ios:9F2C");
    assert_eq!(body["data"]["refresh_after_in"], 480);
    let (_, body) = post_token(&server, Some(DevServer::LIMITED_APP_TOKEN), Some(json!({}))).await;
    assert_eq!(body["data"]["subject"], "user:43");
    assert_eq!(body["data"]["scopes"], json!([RUNS]));
    assert_eq!(server.metrics().tokens_minted, 3);
}

#[tokio::test]
async fn token_route_errors() {
    let server = start(fast_config()).await;
    let app = Some(DevServer::APP_TOKEN);
    let (s, b) = post_token(&server, None, None).await;
    assert_eq!(s, 401);
    assert_error(&b, "unauthorized");
    let (s, b) = post_token(&server, Some("wrong"), None).await;
    assert_eq!(s, 401);
    assert_error(&b, "unauthorized");
    let (s, b) = post_token(
        &server,
        Some(DevServer::LIMITED_APP_TOKEN),
        Some(json!({"scopes": [NOTES]})),
    )
    .await;
    assert_eq!(s, 403);
    assert_error(&b, "forbidden");
    let (s, b) = post_token(
        &server,
        Some(DevServer::LIMITED_APP_TOKEN),
        Some(json!({"topics": [WORKERS]})),
    )
    .await;
    assert_eq!(s, 403);
    assert_error(&b, "forbidden");
    let (s, b) = post_token(&server, app, Some(json!({"scopes": ["runtime.bogus"]}))).await;
    assert_eq!(s, 422);
    assert_error(&b, "invalid_scope");
    let (s, b) = post_token(&server, app, Some(json!({"topics": ["runtime.bogus"]}))).await;
    assert_eq!(s, 422);
    assert_error(&b, "invalid_request");
    let (s, b) = post_token(
        &server,
        app,
        Some(json!({"scopes": [RUNS], "topics": [NOTES]})),
    )
    .await;
    assert_eq!(s, 422, "topic not covered by the requested scopes");
    assert_error(&b, "invalid_request");
    for ttl in [59, 901, -1] {
        let (s, b) = post_token(&server, app, Some(json!({"ttl_seconds": ttl}))).await;
        assert_eq!(s, 422, "ttl {ttl}");
        assert_error(&b, "invalid_request");
    }
    let (s, _) = post_token(&server, app, Some(json!({"ttl_seconds": 60}))).await;
    assert_eq!(s, 200);
    let (s, b) = post_token(&server, app, Some(json!({"scopes": "x"}))).await;
    assert_eq!(s, 422);
    assert_error(&b, "invalid_request");
    server.set_faults(Faults {
        token_unavailable: Some(true),
        ..Faults::default()
    });
    let (s, b) = post_token(&server, app, None).await;
    assert_eq!(s, 503);
    assert_error(&b, "sync_token_unavailable");
}

#[tokio::test]
async fn short_lived_tokens_with_min_ttl_override() {
    let server = start(DevServerConfig {
        min_ttl_seconds: 1,
        token_ttl_seconds: 2,
        ..fast_config()
    })
    .await;
    let (s, b) = post_token(&server, Some(DevServer::APP_TOKEN), None).await;
    assert_eq!(s, 200);
    assert_eq!(b["data"]["expires_in"], 2);
    let (s, _) = post_token(
        &server,
        Some(DevServer::APP_TOKEN),
        Some(json!({"ttl_seconds": 1})),
    )
    .await;
    assert_eq!(s, 200);
}

fn snapshot_url(server: &DevServer, topic: &str, limit: usize, cursor: Option<&str>) -> String {
    let mut url = format!(
        "{}/api/sync/snapshot/{topic}?limit={limit}",
        server.base_url()
    );
    if let Some(c) = cursor {
        url.push_str(&format!("&cursor={c}"));
    }
    url
}

#[tokio::test]
async fn snapshot_pages_are_pinned_while_publishing() {
    let server = start(fast_config()).await;
    for i in 0..20 {
        server.publish(
            RUNS,
            &format!("runtime/run_summary:{i:02}"),
            json!({"v": 0, "i": i}),
        );
    }
    server.delete(RUNS, "runtime/run_summary:03");
    let expected = server.state(RUNS);
    assert_eq!(expected.len(), 19);
    let head = server.head(RUNS);
    let tok = token(&server);
    let mut cursor: Option<String> = None;
    let mut docs = Vec::new();
    let mut pages = 0;
    loop {
        let (s, page) = get(
            snapshot_url(&server, RUNS, 4, cursor.as_deref()),
            Some(&tok),
        )
        .await;
        assert_eq!(s, 200, "{page}");
        assert_eq!(page["topic"], RUNS);
        assert_eq!(
            page["snapshot_watermark"], head,
            "every page pinned to the first page's head"
        );
        docs.extend(page["docs"].as_array().cloned().unwrap_or_default());
        pages += 1;
        // Concurrent publishes: updates, new docs and a tombstone must not leak in.
        server.publish(
            RUNS,
            &format!("runtime/run_summary:{:02}", pages),
            json!({"v": pages}),
        );
        server.publish(
            RUNS,
            &format!("runtime/run_summary:zz{pages}"),
            json!({"new": true}),
        );
        server.delete(RUNS, "runtime/run_summary:19");
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    let got: Vec<(String, u64, String, String)> = docs
        .iter()
        .map(|d| {
            (
                d["doc_key"].as_str().unwrap_or("").to_owned(),
                d["doc_version"].as_u64().unwrap_or(0),
                d["payload_hash"].as_str().unwrap_or("").to_owned(),
                d["payload"].to_string(),
            )
        })
        .collect();
    let want: Vec<(String, u64, String, String)> = expected
        .iter()
        .map(|d| {
            (
                d.doc_key.clone(),
                d.doc_version,
                d.payload_hash.clone(),
                d.payload.clone(),
            )
        })
        .collect();
    assert_eq!(got, want);
    let m = server.metrics();
    assert_eq!((m.snapshots_started, m.snapshot_pages_served), (1, 5));
    // A fresh snapshot sees the new state.
    let (_, page) = get(snapshot_url(&server, RUNS, 5000, None), Some(&tok)).await;
    assert_eq!(page["snapshot_watermark"], server.head(RUNS));
    assert_eq!(
        page["docs"].as_array().map(Vec::len),
        Some(server.state(RUNS).len())
    );
    assert_eq!(page["next_cursor"], Value::Null);
}

#[tokio::test]
async fn snapshot_errors() {
    let server = start(DevServerConfig {
        max_retained_per_topic: 5,
        ..fast_config()
    })
    .await;
    publish_n(&server, RUNS, 10);
    let tok = token(&server);
    let (s, b) = get(snapshot_url(&server, RUNS, 2, None), None).await;
    assert_eq!(s, 401);
    assert_error(&b, "unauthorized");
    let (s, _) = get(
        snapshot_url(&server, RUNS, 2, None),
        Some(&server.mint_expired_token_for_tests("user:42")),
    )
    .await;
    assert_eq!(s, 401);
    let limited = server.mint_token_with(&TestToken {
        subject: "user:43".into(),
        topics: vec![NOTES.into()],
        issued_offset_seconds: 0,
        ttl_seconds: 60,
        tampered: false,
    });
    let (s, b) = get(snapshot_url(&server, RUNS, 2, None), Some(&limited)).await;
    assert_eq!(s, 403);
    assert_error(&b, "forbidden");
    let (s, b) = get(snapshot_url(&server, "runtime.bogus", 2, None), Some(&tok)).await;
    assert_eq!(s, 404);
    assert_error(&b, "not_found");
    for bad in ["@@@", "eyJ0IjoxfQ", "bm9wZQ"] {
        let (s, b) = get(snapshot_url(&server, RUNS, 2, Some(bad)), Some(&tok)).await;
        assert_eq!(s, 400, "{bad}");
        assert_error(&b, "invalid_request");
    }
    let (s, _) = get(
        format!("{}/api/sync/snapshot/{RUNS}?limit=abc", server.base_url()),
        Some(&tok),
    )
    .await;
    assert_eq!(s, 400);
    // 410: the pinned watermark falls below retention.
    let (_, first) = get(snapshot_url(&server, RUNS, 2, None), Some(&tok)).await;
    let cursor = first["next_cursor"]
        .as_str()
        .expect("more pages")
        .to_owned();
    publish_n(&server, RUNS, 10);
    let (s, b) = get(snapshot_url(&server, RUNS, 2, Some(&cursor)), Some(&tok)).await;
    assert_eq!(s, 410);
    assert_error(&b, "snapshot_expired");
    server.set_faults(Faults {
        snapshot_expired: Some(true),
        ..Faults::default()
    });
    let (s, _) = get(snapshot_url(&server, RUNS, 2, None), Some(&tok)).await;
    assert_eq!(s, 410);
    server.set_faults(Faults {
        snapshot_expired: Some(false),
        snapshot_route_disabled: Some(true),
        ..Faults::default()
    });
    let (s, b) = get(snapshot_url(&server, RUNS, 2, None), Some(&tok)).await;
    assert_eq!(s, 404);
    assert_error(&b, "not_found");
}

#[tokio::test]
async fn doc_route_decodes_slashes_and_404s_deleted() {
    let server = start(fast_config()).await;
    let key = "runtime/run_summary:019c7f93";
    server.publish(RUNS, key, json!({"status": "queued"}));
    server.publish(RUNS, key, json!({"status": "running"}));
    server.publish(RUNS, "gone", json!(1));
    server.delete(RUNS, "gone");
    let tok = token(&server);
    let url = format!(
        "{}/api/sync/doc/{RUNS}/runtime%2Frun_summary%3A019c7f93",
        server.base_url()
    );
    let (s, b) = get(url, Some(&tok)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b,
        json!({"doc_key": key, "doc_version": 2, "payload": {"status": "running"},
               "payload_hash": khala_dev_server::payload_hash(&json!({"status": "running"})), "watermark": 2})
    );
    let (s, b) = get(
        format!("{}/api/sync/doc/{RUNS}/gone", server.base_url()),
        Some(&tok),
    )
    .await;
    assert_eq!(s, 404);
    assert_error(&b, "not_found");
    let (s, _) = get(
        format!("{}/api/sync/doc/{RUNS}/nope", server.base_url()),
        Some(&tok),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = get(
        format!("{}/api/sync/doc/{RUNS}/gone", server.base_url()),
        None,
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(server.metrics().doc_fetches, 1);
}

#[tokio::test]
async fn control_api_publish_state_faults_truncate_and_metrics() {
    let server = start(fast_config()).await;
    let client = reqwest::Client::new();
    let base = server.base_url();
    let resp: Value = client
        .post(format!("{base}/dev/publish"))
        .json(&json!({"updates": [
            {"topic": RUNS, "doc_key": "a", "payload": {"z": 1, "a": [true, null]}},
            {"topic": RUNS, "doc_key": "b", "payload": "text"},
            {"topic": RUNS, "doc_key": "a", "deleted": true},
            {"topic": NOTES, "doc_key": "n", "payload": 1.5}
        ]}))
        .send()
        .await
        .expect("http")
        .json()
        .await
        .expect("json");
    assert_eq!(resp["watermarks"], json!([1, 2, 3, 1]));
    assert_eq!(resp["results"][2]["doc_version"], 2);
    let resp = client
        .post(format!("{base}/dev/publish"))
        .json(&json!({"topic": "runtime.bogus", "doc_key": "a", "payload": 1}))
        .send()
        .await
        .expect("http");
    assert_eq!(resp.status().as_u16(), 422);
    let (s, state) = get(format!("{base}/dev/state/{RUNS}"), None).await;
    assert_eq!(s, 200);
    assert_eq!(state["head"], 3);
    assert_eq!(
        state["docs"],
        json!([{"doc_key": "b", "doc_version": 1, "payload": "text",
                "payload_hash": khala_dev_server::payload_hash(&json!("text")), "watermark": 2}])
    );
    let faults: Value = client
        .post(format!("{base}/dev/faults"))
        .json(&json!({"delay_ms": 5, "legacy_sync_frame": true, "force_stale": {"topic": RUNS}}))
        .send()
        .await
        .expect("http")
        .json()
        .await
        .expect("json");
    assert_eq!(faults["delay_ms"], 5);
    assert_eq!(faults["legacy_sync_frame"], true);
    assert_eq!(
        faults["force_stale"],
        json!([[RUNS, "retention_floor_breach"]])
    );
    let resp = client
        .post(format!("{base}/dev/faults"))
        .json(&json!({"bogus": 1}))
        .send()
        .await
        .expect("http");
    assert_eq!(resp.status().as_u16(), 422);
    let (_, faults) = get(format!("{base}/dev/faults"), None).await;
    assert_eq!(faults["delay_ms"], 5);
    client
        .post(format!("{base}/dev/faults"))
        .json(&json!({"reset": true}))
        .send()
        .await
        .expect("http");
    assert_eq!(server.faults(), khala_dev_server::ActiveFaults::default());
    let resp: Value = client
        .post(format!("{base}/dev/truncate"))
        .json(&json!({"topic": RUNS, "before_watermark": 3}))
        .send()
        .await
        .expect("http")
        .json()
        .await
        .expect("json");
    assert_eq!(resp["retention_floor"], 2);
    // Metrics route.
    let (_c, _) = Client::joined(&server, &token(&server)).await;
    let (s, m) = get(
        format!("{base}/internal/v1/khala/fanout/metrics?topic_limit=2"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(m["topics"].as_array().map(Vec::len), Some(2));
    assert_eq!(m["connections_accepted_total"], 1);
    assert_eq!(m["connections_current"], 1);
    assert_eq!(m["joins"], 1);
    assert_eq!(m["publishes"], 4);
    let runs = server
        .metrics()
        .topics
        .into_iter()
        .find(|t| t.topic == RUNS)
        .expect("runs");
    assert_eq!(
        (
            runs.head_watermark,
            runs.retention_floor,
            runs.retained_entries
        ),
        (3, 2, 1)
    );
}

#[tokio::test]
async fn payload_hash_matches_fixture_vectors() {
    let fixture: Value =
        serde_json::from_str(include_str!("../fixtures/payload_hash_vectors.v1.json"))
            .expect("fixture");
    let vectors = fixture["vectors"].as_array().expect("vectors");
    assert!(!vectors.is_empty());
    for v in vectors {
        let payload = &v["payload"];
        assert_eq!(
            khala_dev_server::canonical_json(payload),
            v["canonical_json"],
            "{}",
            v["name"]
        );
        assert_eq!(
            khala_dev_server::payload_hash(payload),
            v["wire_base64"],
            "{}",
            v["name"]
        );
        assert_eq!(
            khala_dev_server::payload_hash_display(payload),
            v["sha256"],
            "{}",
            v["name"]
        );
        let raw = STANDARD
            .decode(v["wire_base64"].as_str().unwrap_or(""))
            .expect("b64");
        assert_eq!(raw.len(), 32);
    }
    // And on the wire: the server's stored hash of each vector's payload.
    let server = start(fast_config()).await;
    for (i, v) in vectors.iter().enumerate() {
        server.publish(RUNS, &format!("v{i}"), v["payload"].clone());
    }
    let (mut c, _) = Client::joined(&server, &token(&server)).await;
    let (batches, _) = c.subscribe(json!({"topics": [RUNS]})).await;
    let hashes: Vec<Value> = batches[0]["updates"]
        .as_array()
        .expect("updates")
        .iter()
        .map(|u| u["payload_hash"].clone())
        .collect();
    let want: Vec<Value> = vectors.iter().map(|v| v["wire_base64"].clone()).collect();
    assert_eq!(hashes, want);
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test]
async fn seeded_docs_are_deterministic_and_follow_key_patterns() {
    let config = DevServerConfig {
        seed_docs: 40,
        seed: 7,
        ..fast_config()
    };
    let a = start(config.clone()).await;
    let b = start(config).await;
    for t in [RUNS, WORKERS, NOTES, "runtime.codex_worker_events"] {
        assert_eq!(a.state(t), b.state(t));
        assert_eq!(a.head(t), 10);
        let spec = a.config().topic(t).expect("topic").clone();
        for d in a.state(t) {
            assert!(d.doc_key.starts_with(&spec.doc_key_prefix), "{}", d.doc_key);
            assert!((80..=400).contains(&d.payload.len()), "{}", d.payload);
        }
    }
    let live = start(DevServerConfig {
        seed_docs: 8,
        rate_per_sec: 200.0,
        ..fast_config()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let total: u64 = [RUNS, WORKERS, NOTES, "runtime.codex_worker_events"]
        .iter()
        .map(|t| live.head(t))
        .sum();
    assert!(total > 20, "generator publishes ({total})");
    live.shutdown().await;
}
