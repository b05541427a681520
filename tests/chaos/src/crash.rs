//! Crash consistency: a syncing child process (`khala-chaos-child`) is `kill -9`ed at random
//! moments while the server publishes and forces snapshots; after every kill the SQLite file
//! must pass `integrity_check` and hold no active document newer than its topic's committed
//! watermark; at the end a resumed client converges to the server's state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use khala_dev_server::{DevServer, DevServerConfig, Faults, ForceStale, PublishItem};
use khala_sync::{SyncClient, Topic};
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// What to run.
#[derive(Debug, Clone)]
pub struct CrashConfig {
    /// Seed of kill times, stale forcing and publishing.
    pub seed: u64,
    /// Number of kills.
    pub kills: u32,
    /// Documents seeded per topic before the first run (snapshots have several pages).
    pub seed_docs: u64,
    /// Publish rate while the child runs, events per second.
    pub rate: u64,
    /// The child binary.
    pub child: PathBuf,
    /// The SQLite file (kept across kills).
    pub db_path: PathBuf,
    /// Extra environment for the child.
    pub child_env: Vec<(String, String)>,
    /// Pause between a kill and the next start: the server keeps publishing, so the next run
    /// starts with a replay backlog of `rate × downtime` events (coalesced group commits).
    pub downtime: Duration,
    /// Kill window after the start, ms (random within).
    pub kill_after_ms: (u64, u64),
    /// Start one run in `n` with a forced stale cursor (a snapshot); 0 = never.
    pub stale_every: u32,
    /// Kill the first run only once it is live (so later runs resume by replay).
    pub first_run_until_live: bool,
    /// Every n-th kill (0 = none) waits until the child reports `replaying`, then kills it
    /// within 0–20 ms: a kill that is sure to land mid-replay, however fast the replay.
    pub kill_in_replay_every: u32,
}

/// Figures of a crash run.
#[derive(Debug, Clone, Default)]
pub struct CrashReport {
    /// Seed.
    pub seed: u64,
    /// Kills done.
    pub kills: u32,
    /// Kills by the phase the child last reported (`bootstrapping`, `replaying`, `live`, ...).
    pub kills_by_phase: BTreeMap<String, u32>,
    /// Reopens whose integrity check failed.
    pub integrity_failures: u32,
    /// Active documents newer than their topic's watermark, summed over reopens.
    pub docs_ahead_of_watermark: u64,
    /// Watermark regressions seen between consecutive reopens.
    pub watermark_regressions: u32,
    /// Documents differing from the server after the resumed run (missing, extra or different).
    pub diverged: u64,
    /// Changes the resumed run delivered twice (same topic and watermark).
    pub duplicated: u64,
    /// Events published.
    pub events: u64,
    /// Snapshots the server started (first pages).
    pub server_snapshots: u64,
    /// First few problems.
    pub problems: Vec<String>,
}

impl CrashReport {
    /// The one figure line.
    pub fn line(&self) -> String {
        let phases: Vec<String> = self
            .kills_by_phase
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "crash seed={} kills={} by_phase[{}] events={} server_snapshots={} integrity_failures={} docs_ahead_of_watermark={} watermark_regressions={} diverged_after_resume={} duplicated={}",
            self.seed,
            self.kills,
            phases.join(", "),
            self.events,
            self.server_snapshots,
            self.integrity_failures,
            self.docs_ahead_of_watermark,
            self.watermark_regressions,
            self.diverged,
            self.duplicated,
        )
    }

    /// True when every check held.
    pub fn ok(&self) -> bool {
        self.integrity_failures == 0
            && self.docs_ahead_of_watermark == 0
            && self.watermark_regressions == 0
            && self.diverged == 0
            && self.duplicated == 0
    }
}

const TOPICS: [&str; 2] = ["runtime.run_summaries", "runtime.codex_worker_summaries"];

fn raw(i: u64, rng: &mut fastrand::Rng) -> Arc<RawValue> {
    let text = format!(
        r#"{{"i":{i},"status":"{}","title":"crash doc {i}","n":{}}}"#,
        ["queued", "running", "done"][rng.usize(0..3)],
        rng.u32(..)
    );
    Arc::from(RawValue::from_string(text).unwrap_or_else(|_| unreachable!()))
}

/// Runs the crash test.
pub async fn run(cfg: CrashConfig) -> CrashReport {
    let server = Arc::new(
        DevServer::start(DevServerConfig {
            heartbeat_interval: Duration::from_secs(2),
            snapshot_default_limit: 500,
            ..DevServerConfig::default()
        })
        .await
        .expect("dev server starts"),
    );
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let mut report = CrashReport {
        seed: cfg.seed,
        ..CrashReport::default()
    };
    // Seed: several snapshot pages per topic.
    let mut i = 0u64;
    for t in TOPICS {
        let items: Vec<PublishItem> = (0..cfg.seed_docs)
            .map(|k| {
                i += 1;
                PublishItem {
                    topic: t.to_owned(),
                    doc_key: format!("{t}/doc:{k:06}"),
                    payload: Some(raw(i, &mut rng)),
                }
            })
            .collect();
        server.try_publish(items).expect("seed");
    }
    report.events = i;

    // Background publisher: updates, some tombstones.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let server = server.clone();
        let stop = stop.clone();
        let rate = cfg.rate.max(1);
        let keys = cfg.seed_docs.max(1) * 2;
        let mut rng = fastrand::Rng::with_seed(cfg.seed.wrapping_add(1));
        tokio::spawn(async move {
            let mut n = 0u64;
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                let mut items = Vec::new();
                for _ in 0..(rate / 100).max(1) {
                    n += 1;
                    let t = TOPICS[rng.usize(0..TOPICS.len())];
                    items.push(PublishItem {
                        topic: t.to_owned(),
                        doc_key: format!("{t}/doc:{:06}", rng.u64(0..keys)),
                        payload: (n % 17 != 0).then(|| raw(n, &mut rng)),
                    });
                }
                let _ = server.try_publish(items);
                let due = started + Duration::from_millis(n * 1000 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            n
        })
    };

    let mut last_watermarks: BTreeMap<String, u64> = BTreeMap::new();
    for kill in 0..cfg.kills {
        // A third of the runs start with a stale cursor on one topic: that run snapshots.
        if kill > 0 && cfg.stale_every > 0 && rng.u32(0..cfg.stale_every) == 0 {
            server.set_faults(Faults {
                force_stale: Some(ForceStale {
                    topic: TOPICS[rng.usize(0..TOPICS.len())].to_owned(),
                    push: false,
                    reason: None,
                }),
                ..Faults::default()
            });
        }
        let phase = Arc::new(Mutex::new(String::from("starting")));
        let mut child = Command::new(&cfg.child)
            .arg("--server")
            .arg(server.base_url())
            .arg("--db")
            .arg(&cfg.db_path)
            .arg("--topics")
            .arg(TOPICS.join(","))
            .envs(cfg.child_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("child starts");
        if let Some(stdout) = child.stdout.take() {
            let phase = phase.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                let echo = std::env::var_os("KHALA_CHAOS_ECHO").is_some();
                while let Ok(Some(line)) = lines.next_line().await {
                    if echo {
                        eprintln!("child: {line}");
                    }
                    if let Ok(mut p) = phase.lock() {
                        *p = line;
                    }
                }
            });
        }
        // Kill at a random moment: early (token/snapshot), or later (replay/live).
        let (lo, hi) = cfg.kill_after_ms;
        let wait = rng.u64(lo..hi.max(lo + 1));
        if kill == 0 && cfg.first_run_until_live {
            // Let the first run finish its bootstrap, so later runs resume by replay.
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline
                && phase.lock().map(|p| p.as_str() != "live").unwrap_or(false)
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let in_replay =
            cfg.kill_in_replay_every > 0 && kill > 0 && kill % cfg.kill_in_replay_every == 0;
        if in_replay {
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline
                && phase
                    .lock()
                    .map(|p| p.as_str() != "replaying")
                    .unwrap_or(false)
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(rng.u64(0..20))).await;
        } else {
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        if std::env::var_os("KHALA_CHAOS_ECHO").is_some() {
            eprintln!(
                "kill #{kill} after {wait} ms; server: {:?}",
                server
                    .metrics()
                    .topics
                    .iter()
                    .map(|t| (t.topic.clone(), t.head_watermark, t.stale_cursor_count))
                    .collect::<Vec<_>>()
            );
        }
        let _ = child.start_kill(); // SIGKILL
        let _ = child.wait().await;
        let seen = phase.lock().map(|p| p.clone()).unwrap_or_default();
        *report.kills_by_phase.entry(seen).or_default() += 1;
        report.kills += 1;
        check_file(&cfg.db_path, &mut last_watermarks, &mut report);
        tokio::time::sleep(cfg.downtime).await;
    }
    stop.store(true, Ordering::SeqCst);
    report.events += publisher.await.unwrap_or(0);
    server.clear_faults();

    // Resume in-process and converge.
    let client = SyncClient::builder(server.base_url())
        .app_bearer_token(DevServer::APP_TOKEN)
        .topics(TOPICS.iter().map(|t| Topic::new(*t).expect("topic")))
        .database_path(&cfg.db_path)
        .options(crate::fast_options(cfg.seed))
        .build()
        .expect("client builds");
    let mut changes = Box::pin(client.all_changes());
    let watcher = tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        let mut dup = 0u64;
        while let Some(c) = futures::StreamExt::next(&mut changes).await {
            let key = match &c {
                khala_sync::Change::Upsert {
                    topic, watermark, ..
                }
                | khala_sync::Change::Delete {
                    topic, watermark, ..
                } => (topic.as_str().to_owned(), watermark.get()),
                _ => continue,
            };
            if !seen.insert(key) {
                dup += 1;
            }
        }
        dup
    });
    client.start().expect("client starts");
    crate::wait_caught_up(&client, &server, Duration::from_secs(60)).await;
    for t in TOPICS {
        let diff = crate::compare(&client, &server, t).await;
        report.diverged += diff.lost + diff.extra;
        report.problems.extend(diff.first);
    }
    client.shutdown().await;
    drop(client);
    report.duplicated = watcher.await.unwrap_or(0);
    report.server_snapshots = server.metrics().snapshots_started;
    report
}

/// Opens the file read-only after a kill and checks it.
fn check_file(path: &Path, last: &mut BTreeMap<String, u64>, report: &mut CrashReport) {
    let conn = match rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => c,
        Err(e) => {
            // Killed before the file was created: nothing to check.
            if path.exists() {
                report.integrity_failures += 1;
                report.problems.push(format!("open: {e}"));
            }
            return;
        }
    };
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap_or_else(|e| e.to_string());
    if ok != "ok" {
        report.integrity_failures += 1;
        report.problems.push(format!("integrity_check: {ok}"));
    }
    let ahead: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM khala_docs d JOIN khala_topics t
               ON d.topic = t.topic AND d.snapshot_gen = t.snapshot_gen
             WHERE d.watermark > t.watermark",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0);
    report.docs_ahead_of_watermark += u64::try_from(ahead).unwrap_or(0);
    let rows: Vec<(String, i64)> = conn
        .prepare("SELECT topic, watermark FROM khala_topics")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .and_then(|rows| rows.collect())
        })
        .unwrap_or_default();
    for (topic, wm) in rows {
        let wm = u64::try_from(wm).unwrap_or(0);
        if let Some(prev) = last.get(&topic) {
            if wm < *prev {
                report.watermark_regressions += 1;
                report
                    .problems
                    .push(format!("{topic}: watermark {prev} -> {wm}"));
            }
        }
        last.insert(topic, wm);
    }
}
