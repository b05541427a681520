//! Bounded memory: a syncing child process with a deliberately slow store receives a backlog
//! far larger than any sane buffer; its peak RSS (`VmHWM`) must stay small because inbound
//! frames are not queued without bound (bounded channels → TCP backpressure → the server's
//! slow-consumer path).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use khala_dev_server::{DevServer, DevServerConfig, PublishItem};
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Figures of a memory run.
#[derive(Debug, Clone, Default)]
pub struct MemoryReport {
    /// Events published while the child was live.
    pub events: u64,
    /// Their payload bytes.
    pub backlog_bytes: u64,
    /// Extra time per applied batch.
    pub slow_apply_ms: u64,
    /// Peak RSS of the child, KiB.
    pub peak_rss_kib: u64,
    /// Slow-consumer strikes the server counted.
    pub slow_consumer_strikes: u64,
    /// The child caught up with the head before the deadline.
    pub caught_up: bool,
    /// How long catching up took.
    pub catch_up: Duration,
}

impl MemoryReport {
    /// The one figure line.
    pub fn line(&self) -> String {
        format!(
            "memory events={} backlog_mib={:.1} slow_apply_ms={} peak_rss_mib={:.1} slow_consumer_strikes={} caught_up={} catch_up={:.1}s",
            self.events,
            self.backlog_bytes as f64 / 1_048_576.0,
            self.slow_apply_ms,
            self.peak_rss_kib as f64 / 1024.0,
            self.slow_consumer_strikes,
            self.caught_up,
            self.catch_up.as_secs_f64()
        )
    }
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Runs the child against a backlog of `events` events of ~`payload_bytes` each.
pub async fn run(
    child: PathBuf,
    db_path: PathBuf,
    events: u64,
    payload_bytes: usize,
    slow_apply_ms: u64,
) -> MemoryReport {
    const TOPIC: &str = "runtime.run_summaries";
    let server = Arc::new(
        DevServer::start(DevServerConfig {
            max_retained_per_topic: usize::try_from(events).unwrap_or(usize::MAX) + 10,
            ..DevServerConfig::default()
        })
        .await
        .expect("dev server starts"),
    );
    server.publish(
        TOPIC,
        "runtime/run_summary:first",
        serde_json::json!({"first": true}),
    );
    let mut proc = Command::new(&child)
        .arg("--server")
        .arg(server.base_url())
        .arg("--db")
        .arg(&db_path)
        .arg("--topics")
        .arg(TOPIC)
        .arg("--slow-apply-ms")
        .arg(slow_apply_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("child starts");
    let pid = proc.id().unwrap_or(0);
    let (live_tx, mut live_rx) = tokio::sync::watch::channel(String::new());
    if let Some(stdout) = proc.stdout.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = live_tx.send(line);
            }
        });
    }
    // Wait for the child to be live, then publish the whole backlog at once.
    let _ = tokio::time::timeout(Duration::from_secs(30), live_rx.wait_for(|l| l == "live")).await;
    let pad = "p".repeat(payload_bytes);
    let mut backlog = 0u64;
    let started = Instant::now();
    for chunk in 0..events.div_ceil(1_000) {
        let items: Vec<PublishItem> = (0..1_000u64.min(events - chunk * 1_000))
            .map(|k| {
                let i = chunk * 1_000 + k;
                let text = format!(r#"{{"i":{i},"pad":"{pad}"}}"#);
                backlog += text.len() as u64;
                PublishItem {
                    topic: TOPIC.to_owned(),
                    doc_key: format!("runtime/run_summary:{:05}", i % 20_000),
                    payload: Some(Arc::from(
                        RawValue::from_string(text).unwrap_or_else(|_| unreachable!()),
                    )),
                }
            })
            .collect();
        server.try_publish(items).expect("publish");
    }
    // Caught up = the child's committed watermark (read from its file) reaches the head.
    let head = server.head(TOPIC);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut caught_up = false;
    while Instant::now() < deadline {
        if committed(&db_path, TOPIC) >= head {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let catch_up = started.elapsed();
    let peak = vm_hwm_kib(pid).unwrap_or(0);
    let _ = proc.start_kill();
    let _ = proc.wait().await;
    MemoryReport {
        events,
        backlog_bytes: backlog,
        slow_apply_ms,
        peak_rss_kib: peak,
        slow_consumer_strikes: server.metrics().slow_consumer_strikes,
        caught_up,
        catch_up,
    }
}

fn committed(db: &std::path::Path, topic: &str) -> u64 {
    let Ok(conn) = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) else {
        return 0;
    };
    conn.query_row(
        "SELECT watermark FROM khala_topics WHERE topic = ?1",
        [topic],
        |r| r.get::<_, i64>(0),
    )
    .map_or(0, |w| u64::try_from(w).unwrap_or(0))
}
