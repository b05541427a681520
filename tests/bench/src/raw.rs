//! The raw per-frame limit: tokio-tungstenite + rusqlite, WAL, one transaction per
//! `sync:update_batch` frame, borrowed serde parsing, no hash check, no engine. The simplest
//! correct consumer of the same frames; the yardstick every other row is divided by.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rusqlite::params;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Message;

#[derive(Deserialize)]
struct Update<'a> {
    #[serde(borrow)]
    topic: &'a str,
    #[serde(borrow)]
    doc_key: std::borrow::Cow<'a, str>,
    doc_version: u64,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    watermark: u64,
}

#[derive(Deserialize)]
struct Batch<'a> {
    #[serde(borrow)]
    updates: Vec<Update<'a>>,
}

#[derive(Deserialize)]
struct Frame<'a>(
    #[allow(dead_code)] Option<&'a str>,
    #[allow(dead_code)] Option<&'a str>,
    #[allow(dead_code)] &'a str,
    &'a str,
    #[serde(borrow)] &'a RawValue,
);

/// The raw program's parse of one text frame (envelope, then the batch, both borrowed serde
/// types): the number of updates it holds. For the in-process decode row.
pub fn decode_frame(text: &str) -> Result<usize, String> {
    let frame: Frame<'_> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if frame.3 != "sync:update_batch" {
        return Ok(0);
    }
    let batch: Batch<'_> = serde_json::from_str(frame.4.get()).map_err(|e| e.to_string())?;
    Ok(batch
        .updates
        .iter()
        .filter(|u| !u.topic.is_empty() && u.doc_version > 0 && u.payload.is_some())
        .count())
}

/// Consumes `topic` from `resume_after` until `until`; returns the elapsed time.
pub async fn run(
    socket_url: &str,
    db_path: &std::path::Path,
    topic: &str,
    resume_after: u64,
    until: u64,
) -> Result<Duration, String> {
    let conn = rusqlite::Connection::open(db_path).map_err(|e| e.to_string())?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE IF NOT EXISTS docs(topic TEXT, doc_key TEXT, doc_version INTEGER,
           payload TEXT, watermark INTEGER, PRIMARY KEY(topic, doc_key)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS marks(topic TEXT PRIMARY KEY, watermark INTEGER);",
    )
    .map_err(|e| e.to_string())?;
    let mut conn = conn;
    // Diagnostics: receive and parse only (how fast can the server deliver?).
    let receive_only = std::env::var_os("KHALA_BENCH_RECEIVE_ONLY").is_some();
    let started = Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async(socket_url)
        .await
        .map_err(|e| format!("connect: {}", e.to_string().replace(socket_url, "<url>")))?;
    ws.send(Message::text(r#"["1","1","sync:v1","phx_join",{}]"#))
        .await
        .map_err(|e| e.to_string())?;
    let sub = serde_json::json!(["1", "2", "sync:v1", "sync:subscribe",
        {"topics": [topic], "resume_after": {topic: resume_after}, "replay_batch_size": 200}]);
    ws.send(Message::text(sub.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    let mut last = resume_after;
    while last < until {
        let Some(msg) = ws.next().await else {
            return Err("socket closed".into());
        };
        let Message::Text(text) = msg.map_err(|e| e.to_string())? else {
            continue;
        };
        let frame: Frame<'_> = serde_json::from_str(text.as_str()).map_err(|e| e.to_string())?;
        if frame.3 != "sync:update_batch" {
            continue;
        }
        let batch: Batch<'_> = serde_json::from_str(frame.4.get()).map_err(|e| e.to_string())?;
        if receive_only {
            if let Some(u) = batch.updates.last() {
                last = last.max(u.watermark);
            }
            continue;
        }
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        {
            let mut up = tx
                .prepare_cached(
                    "INSERT INTO docs VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(topic, doc_key) DO UPDATE SET doc_version = excluded.doc_version,
                       payload = excluded.payload, watermark = excluded.watermark
                     WHERE excluded.doc_version >= docs.doc_version",
                )
                .map_err(|e| e.to_string())?;
            for u in &batch.updates {
                if u.watermark <= last {
                    continue;
                }
                up.execute(params![
                    u.topic,
                    u.doc_key.as_ref(),
                    u.doc_version as i64,
                    u.payload.map(|p| p.get()),
                    u.watermark as i64
                ])
                .map_err(|e| e.to_string())?;
                last = u.watermark;
            }
            tx.execute(
                "INSERT OR REPLACE INTO marks VALUES (?1, ?2)",
                params![topic, last as i64],
            )
            .map_err(|e| e.to_string())?;
        }
        tx.commit().map_err(|e| e.to_string())?;
    }
    Ok(started.elapsed())
}
