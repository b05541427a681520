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
