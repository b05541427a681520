//! The demo binary against a separately started dev server: `--until-caught-up` exits 0,
//! `dump` matches the server document by document, and a second run resumes without a
//! snapshot.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;

use khala_dev_server::{DevServer, DevServerConfig};

const BIN: &str = env!("CARGO_BIN_EXE_khala-sync-demo");
const TOPICS: [&str; 2] = ["runtime.run_summaries", "runtime.codex_worker_summaries"];

fn run_demo(server: &DevServer, db: &std::path::Path) -> Vec<serde_json::Value> {
    let out = Command::new(BIN)
        .args([
            "--server",
            &server.base_url(),
            "--app-token",
            DevServer::APP_TOKEN,
        ])
        .args(["--topics", &TOPICS.join(","), "--until-caught-up", "--json"])
        .arg("--db")
        .arg(db)
        .output()
        .expect("demo runs");
    assert!(
        out.status.success(),
        "demo failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect()
}

fn metrics(lines: &[serde_json::Value]) -> &serde_json::Value {
    lines
        .iter()
        .rev()
        .find(|l| l["type"] == "metrics")
        .expect("metrics line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_caught_up_exits_zero_and_dump_matches_the_server() {
    let server = DevServer::start(DevServerConfig {
        seed_docs: 1_200,
        ..DevServerConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    let srv = server.clone();
    let first = tokio::task::spawn_blocking(move || run_demo(&srv, &db))
        .await
        .unwrap();
    assert!(metrics(&first)["snapshots"].as_u64().unwrap() >= 1);

    // New updates, then a second run: resume, no snapshot.
    for i in 0..50 {
        server.publish(
            TOPICS[i % 2],
            &format!("cli/doc:{i}"),
            serde_json::json!({"i": i}),
        );
    }
    let db = dir.path().join("x.db");
    let srv = server.clone();
    let second = tokio::task::spawn_blocking(move || run_demo(&srv, &db))
        .await
        .unwrap();
    let m = metrics(&second);
    assert_eq!(m["snapshots"], 0, "second run resumes: {m}");
    assert_eq!(m["updates_applied"], 50, "{m}");

    let out = Command::new(BIN)
        .args(["dump", "--db"])
        .arg(dir.path().join("x.db"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let docs: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l.get("doc_key").is_some())
        .collect();
    let keys: Vec<(String, String)> = docs
        .iter()
        .map(|d| {
            (
                d["topic"].as_str().unwrap().to_owned(),
                d["doc_key"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "dump is sorted by topic then doc_key");
    for topic in TOPICS {
        let local: BTreeMap<String, (u64, String)> = docs
            .iter()
            .filter(|d| d["topic"] == topic)
            .map(|d| {
                (
                    d["doc_key"].as_str().unwrap().to_owned(),
                    (
                        d["doc_version"].as_u64().unwrap(),
                        d["payload_hash"].as_str().unwrap().to_owned(),
                    ),
                )
            })
            .collect();
        let remote: BTreeMap<String, (u64, String)> = server
            .state(topic)
            .into_iter()
            .map(|d| (d.doc_key, (d.doc_version, d.payload_hash)))
            .collect();
        assert_eq!(local, remote, "{topic}");
        let wm = lines
            .iter()
            .find(|l| {
                l["topic"] == topic && l.get("watermark").is_some() && l.get("doc_key").is_none()
            })
            .unwrap();
        assert_eq!(wm["watermark"].as_u64().unwrap(), server.head(topic));
    }
    server.shutdown().await;
}

/// Issue acceptance: `--dialect fanout --server … --sync-token <jwt> --topics run:<id>:events
/// --db x.db --until-caught-up` exits 0, and `dump` lists every message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_dialect_with_a_sync_token_then_dump_lists_every_message_once() {
    let server = DevServer::start(DevServerConfig::default()).await.unwrap();
    let topic = "run:demo-1:events";
    server.create_run("demo-1");
    for i in 1..450 {
        server.publish_event(
            topic,
            "run.step",
            serde_json::json!({"step": i, "big": 9_007_199_254_740_993u64, "z": -0.0}),
        );
    }
    // The JWT an app backend would hand over, minted by the token route.
    let token: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/api/sync/token", server.base_url()))
        .bearer_auth(DevServer::APP_TOKEN)
        .json(&serde_json::json!({"scopes": ["runtime.run_events"], "topics": [topic]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwt = token["data"]["token"].as_str().unwrap().to_owned();
    let minted = server.metrics().tokens_minted;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    let (base, db2) = (server.base_url(), db.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args([
                "--dialect",
                "fanout",
                "--server",
                &base,
                "--sync-token",
                &jwt,
            ])
            .args(["--topics", topic, "--until-caught-up"])
            .arg("--db")
            .arg(&db2)
            .output()
            .expect("demo runs")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "demo failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        server.metrics().tokens_minted,
        minted,
        "the given token was used as is"
    );
    let out = Command::new(BIN)
        .args(["dump", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = lines
        .iter()
        .filter(|l| l.get("doc_key").is_some())
        .map(|l| l["payload"]["sequence"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = server.events(topic).iter().map(|m| m.sequence).collect();
    assert_eq!(seqs, want, "every message once, in sequence order");
    // Payload bytes come out exactly as published (no f64 round trip).
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(r#""big":9007199254740993"#) && text.contains(r#""z":-0.0"#));
    let wm = lines
        .iter()
        .find(|l| l.get("watermark").is_some() && l.get("doc_key").is_none())
        .unwrap();
    assert_eq!(wm["watermark"].as_u64().unwrap(), server.event_head(topic));
    server.shutdown().await;
}
