//! wasm-bindgen-test unit tests under Node: option validation and typed errors, the
//! in-memory store default, and one sync round trip against the real dev server (its URL comes
//! from `KHALA_TEST_SERVER`, set by `scripts/test.sh`; Node 20 needs
//! `NODE_OPTIONS=--experimental-websocket`).
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used)]

use js_sys::{Array, Function, Object, Promise, Reflect};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::wasm_bindgen_test;

use khala_sync_wasm::WasmClient;

const TOPIC: &str = "runtime.run_summaries";

fn set(o: &Object, k: &str, v: impl Into<JsValue>) {
    Reflect::set(o, &k.into(), &v.into()).unwrap();
}

fn get(o: &JsValue, k: &str) -> JsValue {
    Reflect::get(o, &k.into()).unwrap()
}

/// An object's own member names, in order (the shapes the package documents: which members
/// exist, and `null` rather than absent for an empty optional one).
fn keys(o: &JsValue) -> Vec<String> {
    Object::keys(o.unchecked_ref::<Object>())
        .iter()
        .filter_map(|k| k.as_string())
        .collect()
}

fn json(v: &JsValue) -> String {
    js_sys::JSON::stringify(v).unwrap().into()
}

fn options(base: &str, topics: &[&str]) -> Object {
    let o = Object::new();
    set(&o, "baseUrl", base);
    let t = Array::new();
    for x in topics {
        t.push(&(*x).into());
    }
    set(&o, "topics", t);
    set(
        &o,
        "credentials",
        Function::new_no_args("return Promise.resolve({ Authorization: 'Bearer dev-app-token' })"),
    );
    o
}

async fn open_err(o: &Object) -> JsValue {
    match WasmClient::open_client(o.into()).await {
        Ok(_) => panic!("open succeeded"),
        Err(e) => e,
    }
}

fn assert_code(e: &JsValue, code: &str) {
    assert!(
        e.is_instance_of::<js_sys::Error>(),
        "an Error object: {e:?}"
    );
    assert_eq!(get(e, "code").as_string().as_deref(), Some(code), "{e:?}");
    assert_eq!(
        get(e, "name").as_string().as_deref(),
        Some("KhalaSyncError")
    );
    assert!(get(e, "retryable").as_bool().is_some());
}

#[wasm_bindgen_test]
async fn bad_options_are_invalid_config_errors() {
    let base = "http://127.0.0.1:9";
    let mut cases: Vec<(&str, Object)> = vec![
        ("remote http", options("http://sync.example.com", &[TOPIC])),
        ("bad scheme", options("ftp://127.0.0.1", &[TOPIC])),
        ("not a URL", options("::::", &[TOPIC])),
        ("no topics", options(base, &[])),
        ("duplicate topic", options(base, &[TOPIC, TOPIC])),
        ("empty topic", options(base, &[""])),
    ];
    let o = options(base, &[TOPIC]);
    Reflect::delete_property(&o, &"credentials".into()).unwrap();
    cases.push(("no credentials", o));
    let o = options(base, &[TOPIC]);
    set(&o, "credentials", "Bearer x");
    cases.push(("credentials not a function", o));
    let o = options(base, &[TOPIC]);
    set(&o, "replayBatchSize", 1.5);
    cases.push(("fractional number", o));
    let o = options(base, &[TOPIC]);
    set(&o, "persist", "yes");
    cases.push(("persist not a bool", o));
    let o = options(base, &[TOPIC]);
    set(&o, "topics", "runtime.run_summaries");
    cases.push(("topics not an array", o));
    let o = options(base, &[TOPIC]);
    set(&o, "persist", true);
    cases.push(("persist without IndexedDB (Node)", o));
    for (name, o) in cases {
        let e = open_err(&o).await;
        assert_eq!(
            get(&e, "code").as_string().as_deref(),
            Some("invalid_config"),
            "{name}: {e:?}"
        );
        assert_code(&e, "invalid_config");
    }
    // Not even an object.
    assert_code(
        &WasmClient::open_client(JsValue::from_f64(3.0))
            .await
            .err()
            .unwrap(),
        "invalid_config",
    );
}

#[wasm_bindgen_test]
async fn node_defaults_to_the_memory_store_and_reads_work_before_start() {
    let c = WasmClient::open_client(options("http://127.0.0.1:9", &[TOPIC]).into())
        .await
        .unwrap();
    assert!(!c.persistent());
    assert_eq!(c.topics(), vec![TOPIC.to_owned()]);
    let list = JsFuture::from(c.list(TOPIC.into())).await.unwrap();
    assert_eq!(Array::from(&list).length(), 0);
    assert!(JsFuture::from(c.get(TOPIC.into(), "k".into()))
        .await
        .unwrap()
        .is_null());
    let status = c.status();
    assert_eq!(get(&status, "state").as_string().as_deref(), Some("idle"));
    assert_eq!(get(&status, "live").as_bool(), Some(false));
    // Typed errors for bad arguments, not panics.
    assert_code(
        &c.subscribe_changes("other.topic").err().unwrap(),
        "invalid_config",
    );
    assert_code(
        &JsFuture::from(c.get(String::new(), "k".into()))
            .await
            .err()
            .unwrap(),
        "invalid_config",
    );
    JsFuture::from(c.close()).await.unwrap();
    assert_code(&c.start().err().unwrap(), "shutdown");
}

fn server_url() -> String {
    let process = get(&js_sys::global(), "process");
    let env = get(&process, "env");
    get(&env, "KHALA_TEST_SERVER")
        .as_string()
        .expect("KHALA_TEST_SERVER must point at a running khala-dev-server")
}

async fn post_json(url: &str, body: &str) -> JsValue {
    let init = Object::new();
    set(&init, "method", "POST");
    set(&init, "body", body);
    let headers = Object::new();
    set(&headers, "content-type", "application/json");
    set(&init, "headers", headers);
    let fetch: Function = get(&js_sys::global(), "fetch").unchecked_into();
    let resp = JsFuture::from(Promise::from(
        fetch
            .call2(&JsValue::UNDEFINED, &url.into(), &init)
            .unwrap(),
    ))
    .await
    .unwrap();
    assert_eq!(get(&resp, "status").as_f64(), Some(200.0));
    let json: Function = get(&resp, "json").unchecked_into();
    JsFuture::from(Promise::from(json.call0(&resp).unwrap()))
        .await
        .unwrap()
}

#[wasm_bindgen_test]
async fn syncs_with_the_dev_server_in_node() {
    let base = server_url();
    let c = WasmClient::open_client(options(&base, &[TOPIC]).into())
        .await
        .unwrap();
    let statuses = Array::new();
    let s2 = statuses.clone();
    let listener = wasm_bindgen::closure::Closure::<dyn FnMut(JsValue)>::new(move |s: JsValue| {
        s2.push(&get(&s, "state"));
    });
    let id = c.on_status(listener.as_ref().unchecked_ref::<Function>().clone());
    let sub = c.subscribe_changes(TOPIC).unwrap();
    c.start().unwrap();
    // Bootstrap: the first change is the snapshot swap.
    let first = JsFuture::from(sub.next()).await.unwrap();
    assert_eq!(
        get(&first, "type").as_string().as_deref(),
        Some("bootstrapped")
    );
    assert_eq!(keys(&first), ["type", "topic", "watermark", "docs"]);
    // Wait until live, then publish and receive the upsert.
    let mut live = false;
    for _ in 0..200 {
        if get(&c.status(), "live").as_bool() == Some(true) {
            live = true;
            break;
        }
        JsFuture::from(Promise::new(&mut |res, _| {
            let set_timeout: Function = get(&js_sys::global(), "setTimeout").unchecked_into();
            set_timeout
                .call2(&JsValue::UNDEFINED, &res, &JsValue::from_f64(25.0))
                .unwrap();
        }))
        .await
        .unwrap();
    }
    assert!(live, "never became live: {:?}", c.status());
    let status = c.status();
    assert_eq!(
        keys(&status),
        [
            "state",
            "transport",
            "live",
            "topics",
            "lastError",
            "nextRetryAt"
        ]
    );
    assert!(get(&status, "lastError").is_null(), "{}", json(&status));
    assert!(get(&status, "nextRetryAt").is_null(), "{}", json(&status));
    let topic = Array::from(&get(&status, "topics")).get(0);
    assert_eq!(
        keys(&topic),
        [
            "topic",
            "phase",
            "watermark",
            "head",
            "replayProgress",
            "snapshotDocs",
            "resyncedFromWindow",
            "error"
        ]
    );
    assert_eq!(get(&topic, "phase").as_string().as_deref(), Some("live"));
    assert!(get(&topic, "error").is_null(), "{}", json(&status));
    let key = format!("runtime/run_summary:node-{}", js_sys::Date::now());
    let body = format!(
        r#"{{"topic":"{TOPIC}","doc_key":"{key}","payload":{{"status":"running","n":1}}}}"#
    );
    post_json(&format!("{base}/dev/publish"), &body).await;
    let change = loop {
        let c = JsFuture::from(sub.next()).await.unwrap();
        if get(&c, "key").as_string().as_deref() == Some(key.as_str()) {
            break c;
        }
    };
    assert_eq!(get(&change, "type").as_string().as_deref(), Some("upsert"));
    assert_eq!(
        keys(&change),
        ["type", "topic", "key", "version", "value", "watermark"]
    );
    assert_eq!(
        json(&get(&change, "value")),
        r#"{"status":"running","n":1}"#
    );
    let doc = JsFuture::from(c.get(TOPIC.into(), key.clone()))
        .await
        .unwrap();
    assert_eq!(get(&doc, "version").as_f64(), Some(1.0));
    let doc_members = [
        "topic",
        "key",
        "version",
        "value",
        "payloadHash",
        "watermark",
        "verified",
    ];
    assert_eq!(keys(&doc), doc_members);
    assert_eq!(json(&get(&doc, "value")), r#"{"status":"running","n":1}"#);
    let list = Array::from(&JsFuture::from(c.list(TOPIC.into())).await.unwrap());
    assert!(list.length() > 1);
    assert_eq!(keys(&list.get(0)), doc_members);
    let m = c.metrics();
    assert_eq!(
        keys(&m),
        [
            "updatesApplied",
            "duplicatesSkipped",
            "gaps",
            "hashMismatches",
            "unverifiedDocs",
            "staleCursors",
            "snapshots",
            "snapshotDocs",
            "reconnects",
            "connects",
            "tokensFetched",
            "hydrations",
            "slowConsumer",
            "batchesCommitted",
            "framesReceived",
            "bytesReceived",
            "decodeErrors",
            "catchUpMs"
        ]
    );
    assert_eq!(get(&m, "snapshots").as_f64(), Some(1.0));
    assert!(get(&m, "updatesApplied").as_f64().unwrap() >= 1.0);
    c.off_status(id);
    JsFuture::from(c.close()).await.unwrap();
    // Closing ends the iterator.
    assert!(JsFuture::from(sub.next()).await.unwrap().is_undefined());
    let seen: Vec<String> = statuses.iter().filter_map(|s| s.as_string()).collect();
    assert!(seen.contains(&"connected".to_owned()), "{seen:?}");
    assert_eq!(seen.first().map(String::as_str), Some("idle"));
}

/// `options` without `credentials` (for the other token sources).
fn options_without_credentials(base: &str, topics: &[&str]) -> Object {
    let o = options(base, topics);
    Reflect::delete_property(&o, &"credentials".into()).unwrap();
    o
}

#[wasm_bindgen_test]
async fn dialect_and_token_source_options_are_validated() {
    let base = "http://127.0.0.1:9";
    let run = "run:r1:events";
    let mut cases: Vec<(&str, Object)> = Vec::new();
    let o = options(base, &[run]);
    set(&o, "dialect", "grpc");
    cases.push(("unknown dialect", o));
    let o = options(base, &[run]);
    set(&o, "dialect", 2);
    cases.push(("dialect not a string", o));
    let o = options(base, &[run]);
    set(&o, "syncToken", "eyJ.x.y");
    cases.push(("credentials and syncToken", o));
    let o = options(base, &[run]);
    set(
        &o,
        "tokenProvider",
        Function::new_no_args("return 'eyJ.x.y'"),
    );
    cases.push(("credentials and tokenProvider", o));
    let o = options_without_credentials(base, &[run]);
    set(&o, "syncToken", "eyJ.x.y");
    set(
        &o,
        "tokenProvider",
        Function::new_no_args("return 'eyJ.x.y'"),
    );
    cases.push(("syncToken and tokenProvider", o));
    let o = options_without_credentials(base, &[run]);
    cases.push(("no token source at all", o));
    let o = options_without_credentials(base, &[run]);
    set(&o, "syncToken", "  ");
    cases.push(("empty syncToken", o));
    let o = options_without_credentials(base, &[run]);
    set(&o, "syncToken", 42);
    cases.push(("syncToken not a string", o));
    let o = options_without_credentials(base, &[run]);
    set(&o, "tokenProvider", "eyJ.x.y");
    cases.push(("tokenProvider not a function", o));
    let o = options_without_credentials(base, &[run]);
    set(&o, "syncToken", "eyJ.x.y");
    set(&o, "tokenUrl", "http://127.0.0.1:9/token");
    cases.push(("tokenUrl without credentials", o));
    let o = options(base, &[run]);
    set(&o, "tokenUrl", "http://auth.example.com/token");
    cases.push(("tokenUrl remote http", o));
    let o = options(base, &[run]);
    set(&o, "tokenUrl", "::::");
    cases.push(("tokenUrl not a URL", o));
    let o = options(base, &[run]);
    set(&o, "pollIntervalMs", -5);
    cases.push(("negative pollIntervalMs", o));
    let o = options(base, &[run]);
    set(&o, "pollMinIntervalMs", 2.5);
    cases.push(("fractional pollMinIntervalMs", o));
    for (name, o) in cases {
        let e = open_err(&o).await;
        assert_code(&e, "invalid_config");
        // Typed error messages never echo a token.
        let msg = get(&e, "message").as_string().unwrap();
        assert!(!msg.contains("eyJ"), "{name}: {msg}");
    }
    // Every valid combination opens (no network until start()).
    let mut ok: Vec<(&str, Object)> = Vec::new();
    for d in ["auto", "phoenix", "fanout"] {
        let o = options(base, &[run]);
        set(&o, "dialect", d);
        set(&o, "pollIntervalMs", 500);
        set(&o, "pollMinIntervalMs", 300);
        ok.push((d, o));
    }
    let o = options(base, &[run]);
    set(&o, "tokenUrl", "http://127.0.0.1:9/auth/token");
    ok.push(("credentials + tokenUrl", o));
    let o = options_without_credentials(base, &[run]);
    set(&o, "syncToken", "eyJ.x.y");
    ok.push(("syncToken", o));
    let o = options_without_credentials(base, &[run]);
    set(
        &o,
        "tokenProvider",
        Function::new_no_args("return 'eyJ.x.y'"),
    );
    ok.push(("tokenProvider", o));
    for (name, o) in ok {
        let c = WasmClient::open_client(o.into())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(c.topics(), vec![run.to_owned()], "{name}");
        JsFuture::from(c.close()).await.unwrap();
    }
}

async fn sleep_ms(ms: f64) {
    JsFuture::from(Promise::new(&mut |res, _| {
        let set_timeout: Function = get(&js_sys::global(), "setTimeout").unchecked_into();
        set_timeout
            .call2(&JsValue::UNDEFINED, &res, &JsValue::from_f64(ms))
            .unwrap();
    }))
    .await
    .unwrap();
}

/// Dialect F over the poll route under Node, with the token from the app's `tokenProvider`
/// (which calls the token route itself, as an app with its own auth flow would).
#[wasm_bindgen_test]
async fn fanout_polls_with_a_token_provider_in_node() {
    let base = server_url();
    let run = format!("node-{}", js_sys::Date::now() as u64);
    let topic = format!("run:{run}:events");
    for i in 1..=5 {
        let body = format!(r#"{{"topic":"{topic}","kind":"run.step","payload":{{"step":{i}}}}}"#);
        let r = post_json(&format!("{base}/dev/events"), &body).await;
        assert_eq!(get(&r, "sequence").as_f64(), Some(f64::from(i)));
    }
    let o = options_without_credentials(&base, &[topic.as_str()]);
    set(&o, "dialect", "fanout");
    set(&o, "pollIntervalMs", 300);
    let calls = Array::new();
    set(&js_sys::global(), "__khalaProviderCalls", calls.clone());
    let provider = Function::new_with_args(
        "base",
        "return async () => {
           globalThis.__khalaProviderCalls.push(Date.now());
           const r = await fetch(base + '/api/sync/token', { method: 'POST', body: '{}',
             headers: { Authorization: 'Bearer dev-app-token', 'content-type': 'application/json' } });
           const { data } = await r.json();
           return { token: data.token, expiresIn: data.expires_in };
         };",
    )
    .call1(&JsValue::UNDEFINED, &base.as_str().into())
    .unwrap();
    set(&o, "tokenProvider", provider);
    let c = WasmClient::open_client(o.into()).await.unwrap();
    let sub = c.subscribe_changes(&topic).unwrap();
    c.start().unwrap();
    for want in 1..=5u32 {
        let ch = JsFuture::from(sub.next()).await.unwrap();
        assert_eq!(get(&ch, "type").as_string().as_deref(), Some("upsert"));
        assert_eq!(
            get(&ch, "key").as_string(),
            Some(want.to_string()),
            "{ch:?}"
        );
        assert_eq!(
            get(&get(&ch, "value"), "kind").as_string().as_deref(),
            Some("run.step")
        );
    }
    let body = format!(r#"{{"topic":"{topic}","kind":"run.finished","payload":null}}"#);
    post_json(&format!("{base}/dev/events"), &body).await;
    let ch = JsFuture::from(sub.next()).await.unwrap();
    assert_eq!(get(&ch, "key").as_string().as_deref(), Some("6"));
    assert_eq!(get(&ch, "watermark").as_f64(), Some(6.0));
    let status = c.status();
    assert_eq!(
        get(&status, "transport").as_string().as_deref(),
        Some("poll")
    );
    assert!(calls.length() >= 1, "the provider was called");
    let list = Array::from(&JsFuture::from(c.list(topic.clone())).await.unwrap());
    assert_eq!(list.length(), 6);
    // Caught up: stays quiet apart from its periodic polls, no duplicates.
    sleep_ms(700.0).await;
    assert_eq!(
        Array::from(&JsFuture::from(c.list(topic.clone())).await.unwrap()).length(),
        6
    );
    let m = c.metrics();
    assert_eq!(get(&m, "updatesApplied").as_f64(), Some(6.0));
    JsFuture::from(c.close()).await.unwrap();
}

/// A `tokenProvider` that rejects, or returns something that is not a token, fails the token
/// fetch with the typed `auth_failed` status (no network request is needed to see it) and the
/// message never echoes what the provider returned.
#[wasm_bindgen_test]
async fn failing_token_providers_are_auth_failures() {
    let providers = [
        "return Promise.reject(new Error('session gone'))",
        "throw new Error('no session')",
        "return 42",
        "return { token: '' }",
        "return { token: 'eyJsecret.x.y', expiresIn: -1 }",
    ];
    for body in providers {
        let o = options_without_credentials("http://127.0.0.1:9", &["run:r1:events"]);
        set(&o, "dialect", "fanout");
        set(&o, "tokenProvider", Function::new_no_args(body));
        let c = WasmClient::open_client(o.into()).await.unwrap();
        c.start().unwrap();
        let mut state = String::new();
        for _ in 0..200 {
            state = get(&c.status(), "state").as_string().unwrap_or_default();
            if state == "auth_failed" {
                break;
            }
            sleep_ms(10.0).await;
        }
        assert_eq!(state, "auth_failed", "{body}: {:?}", c.status());
        let err = get(&c.status(), "lastError");
        assert_eq!(keys(&err), ["code", "message", "retryable"]);
        assert_eq!(
            get(&err, "code").as_string().as_deref(),
            Some("auth_failed"),
            "{body}"
        );
        let msg = get(&err, "message").as_string().unwrap();
        assert!(msg.contains("tokenProvider"), "{body}: {msg}");
        assert!(!msg.contains("eyJsecret"), "{body}: {msg}");
        JsFuture::from(c.close()).await.unwrap();
    }
}
