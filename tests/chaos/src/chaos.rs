//! The chaos run: publish many events across topics while the fault proxy and the dev server's
//! own faults run on a seeded schedule, then compare every local document and watermark with
//! the server's.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use khala_dev_server::{DevServer, DevServerConfig, Faults, ForceStale, PublishItem};
use khala_sync::{Change, ClientOptions, Metrics, SyncClient, Topic};
use serde_json::value::RawValue;

use crate::proxy::{FaultProxy, ProxyConfig, ProxyStats};

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Seed of everything random (publish mix, fault schedule, proxy plans, client jitter).
    pub seed: u64,
    /// Events (updates + tombstones) to publish in total.
    pub events: u64,
    /// Publish rate, events per second (spread over the run so faults overlap the stream).
    pub rate: u64,
    /// Distinct document keys per topic.
    pub keys_per_topic: u64,
    /// One in `delete_every` events is a tombstone.
    pub delete_every: u64,
    /// One in `large_every` events carries a payload above the hydration threshold.
    pub large_every: u64,
    /// Mean time between scheduled faults.
    pub fault_every: Duration,
    /// How long to wait for quiescence after the last event.
    pub settle_timeout: Duration,
    /// Where the client's SQLite file goes.
    pub db_path: std::path::PathBuf,
}

impl ChaosConfig {
    /// The CI form: 100k events.
    pub fn ci(seed: u64, db_path: std::path::PathBuf) -> Self {
        Self {
            seed,
            events: 100_000,
            rate: 12_000,
            keys_per_topic: 2_000,
            delete_every: 23,
            large_every: 97,
            fault_every: Duration::from_millis(150),
            settle_timeout: Duration::from_secs(120),
            db_path,
        }
    }
}

/// The chaos run's figures.
#[derive(Debug, Clone)]
pub struct ChaosReport {
    /// Seed.
    pub seed: u64,
    /// Events published.
    pub events: u64,
    /// Server-side and proxy faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Proxy counters.
    pub proxy: ProxyStats,
    /// Client metrics at the end.
    pub metrics: Metrics,
    /// Server slow-consumer strikes.
    pub slow_consumer_strikes: u64,
    /// Documents on the server missing or different locally, plus topics whose watermark differs.
    pub lost: u64,
    /// Local documents the server does not have.
    pub extra: u64,
    /// Changes the app saw twice (same topic and watermark).
    pub duplicated: u64,
    /// Changes delivered to the app.
    pub changes_seen: u64,
    /// Documents compared.
    pub docs_compared: u64,
    /// Wall time of the publish phase and of the settle phase.
    pub publish_time: Duration,
    /// Time from the last event to convergence.
    pub settle_time: Duration,
    /// The first few differences, for the failure message.
    pub diffs: Vec<String>,
}

impl ChaosReport {
    /// The one figure line.
    pub fn line(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let p = &self.proxy;
        let m = &self.metrics;
        format!(
            "chaos seed={} events={} faults[{}, proxy_refused={}, proxy_dropped={}, proxy_stalls={}, proxy_throttled={}, slow_consumer_strikes={}] reconnects={} snapshots={} stale_cursors={} duplicates_skipped={} gaps_healed={} hydrations={} changes_seen={} docs_compared={} lost={} duplicated={} extra={} publish={:.1}s settle={:.1}s",
            self.seed,
            self.events,
            faults.join(", "),
            p.refused,
            p.dropped,
            p.stalls,
            p.throttled,
            self.slow_consumer_strikes,
            m.reconnects,
            m.snapshots,
            m.stale_cursors,
            m.duplicates_skipped,
            m.gaps,
            m.hydrations,
            self.changes_seen,
            self.docs_compared,
            self.lost,
            self.duplicated,
            self.extra,
            self.publish_time.as_secs_f64(),
            self.settle_time.as_secs_f64(),
        )
    }
}

/// Topics of the run (the reference deployment's four, with their different replay budgets).
pub fn chaos_topics(cfg: &DevServerConfig) -> Vec<String> {
    cfg.topics.iter().map(|t| t.name.clone()).collect()
}

fn server_config() -> DevServerConfig {
    DevServerConfig {
        hydration_threshold_bytes: 2048,
        heartbeat_interval: Duration::from_secs(2),
        reauth_close_delay: Duration::from_millis(300),
        reconnect_after_ms: 100,
        ..DevServerConfig::default()
    }
}

fn client_options(seed: u64) -> ClientOptions {
    ClientOptions {
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(800),
        reconnect_spread: Duration::from_millis(300),
        heartbeat_interval: Duration::from_secs(1),
        dead_after: Duration::from_secs(3),
        jitter_seed: Some(seed),
        ..ClientOptions::default()
    }
}

fn payload(rng: &mut fastrand::Rng, i: u64, large: bool) -> Box<RawValue> {
    let pad = if large {
        "x".repeat(2_500 + rng.usize(0..1_500))
    } else {
        String::new()
    };
    let status = ["queued", "running", "done", "failed"][rng.usize(0..4)];
    let v = serde_json::json!({
        "i": i,
        "status": status,
        "title": format!("event {i}"),
        "score": rng.i64(-1_000_000..1_000_000),
        "labels": ["chaos", if large { "large" } else { "small" }],
        "pad": pad,
    });
    // `Value` serializes compactly; RawValue keeps these exact bytes.
    RawValue::from_string(v.to_string()).unwrap_or_else(|_| {
        RawValue::from_string("{}".to_owned()).unwrap_or_else(|_| unreachable!())
    })
}

/// Runs the chaos test and returns its figures (it does not assert; the caller does).
pub async fn run(cfg: ChaosConfig) -> ChaosReport {
    let scfg = server_config();
    let topics = chaos_topics(&scfg);
    let server = Arc::new(DevServer::start(scfg).await.expect("dev server starts"));
    let proxy_cfg = ProxyConfig {
        refuse: 0.05,
        drop: 0.15,
        stall: 0.10,
        throttle: 0.10,
        drop_within_bytes: 512 * 1024,
        max_stall: Duration::from_millis(1_200),
        throttle_bytes_per_sec: 512 * 1024,
        ..ProxyConfig::clean(cfg.seed)
    };
    let proxy = Arc::new(
        FaultProxy::start(server.addr(), proxy_cfg)
            .await
            .expect("proxy starts"),
    );
    let client = SyncClient::builder(proxy.base_url())
        .app_bearer_token(DevServer::APP_TOKEN)
        .topics(topics.iter().map(|t| Topic::new(t).expect("topic")))
        .database_path(&cfg.db_path)
        .options(client_options(cfg.seed))
        .build()
        .expect("client builds");

    // The app's view: every change, checked for duplicates by (topic, watermark).
    let changes_seen = Arc::new(AtomicU64::new(0));
    let duplicated = Arc::new(AtomicU64::new(0));
    let watcher = {
        let mut stream = Box::pin(client.all_changes());
        let seen_count = changes_seen.clone();
        let dup = duplicated.clone();
        tokio::spawn(async move {
            let mut seen: HashSet<(String, u64)> = HashSet::new();
            while let Some(change) = stream.next().await {
                let key = match &change {
                    Change::Upsert {
                        topic, watermark, ..
                    }
                    | Change::Delete {
                        topic, watermark, ..
                    } => (topic.as_str().to_owned(), watermark.get()),
                    _ => continue,
                };
                seen_count.fetch_add(1, Ordering::Relaxed);
                if !seen.insert(key) {
                    dup.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    client.start().expect("client starts");

    let faults_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fault_task = tokio::spawn(fault_schedule(
        cfg.seed,
        cfg.fault_every,
        server.clone(),
        proxy.clone(),
        topics.clone(),
        faults_done.clone(),
    ));

    // Publish at the configured rate, in 10 ms slices.
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(cfg.seed.wrapping_add(1));
    let per_slice = (cfg.rate / 100).max(1);
    let mut published = 0u64;
    while published < cfg.events {
        let n = per_slice.min(cfg.events - published);
        let mut items = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        for _ in 0..n {
            let i = published;
            published += 1;
            let topic = &topics[rng.usize(0..topics.len())];
            let key = format!("{topic}/doc:{:05}", rng.u64(0..cfg.keys_per_topic));
            let payload = if i % cfg.delete_every == cfg.delete_every - 1 {
                None
            } else {
                let large = i % cfg.large_every == cfg.large_every - 1;
                Some(Arc::from(payload(&mut rng, i, large)))
            };
            items.push(PublishItem {
                topic: topic.clone(),
                doc_key: key,
                payload,
            });
        }
        server.try_publish(items).expect("publish");
        let due = started + Duration::from_millis(published * 1000 / cfg.rate.max(1));
        tokio::time::sleep_until(due.into()).await;
    }
    let publish_time = started.elapsed();

    // Quiescence: stop injecting, heal the network, wait for every topic to reach the head.
    faults_done.store(true, Ordering::SeqCst);
    let faults = fault_task.await.unwrap_or_default();
    server.clear_faults();
    proxy.set_clean(true);
    proxy.drop_all();
    let settle_start = Instant::now();
    crate::wait_caught_up(&client, &server, cfg.settle_timeout).await;
    let settle_time = settle_start.elapsed();
    // Let the change stream drain.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut report = ChaosReport {
        seed: cfg.seed,
        events: published,
        faults,
        proxy: proxy.stats(),
        metrics: client.metrics(),
        slow_consumer_strikes: server.metrics().slow_consumer_strikes,
        lost: 0,
        extra: 0,
        duplicated: 0,
        changes_seen: 0,
        docs_compared: 0,
        publish_time,
        settle_time,
        diffs: Vec::new(),
    };
    let status = client.current_status();
    for t in &topics {
        let topic = Topic::new(t).expect("topic");
        let diff = crate::compare(&client, &server, t).await;
        report.docs_compared += diff.compared;
        report.lost += diff.lost;
        report.extra += diff.extra;
        for d in diff.first {
            if report.diffs.len() < 5 {
                report.diffs.push(d);
            }
        }
        let wm = status
            .topics
            .iter()
            .find(|s| s.topic == topic)
            .map_or(0, |s| s.watermark.get());
        if wm != server.head(t) {
            report.lost += 1;
            report
                .diffs
                .push(format!("{t}: watermark {wm} vs head {}", server.head(t)));
        }
    }
    client.shutdown().await;
    watcher.abort();
    report.changes_seen = changes_seen.load(Ordering::Relaxed);
    report.duplicated = duplicated.load(Ordering::Relaxed);
    report
}

/// Injects one fault every ~`every` (exponentially distributed) until `done`.
async fn fault_schedule(
    seed: u64,
    every: Duration,
    server: Arc<DevServer>,
    proxy: Arc<FaultProxy>,
    topics: Vec<String>,
    done: Arc<std::sync::atomic::AtomicBool>,
) -> BTreeMap<&'static str, u64> {
    let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(2));
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mean = every.as_secs_f64();
    while !done.load(Ordering::SeqCst) {
        let wait = -mean * (1.0 - rng.f64()).ln();
        tokio::time::sleep(Duration::from_secs_f64(wait.min(mean * 5.0))).await;
        if done.load(Ordering::SeqCst) {
            break;
        }
        let topic = topics[rng.usize(0..topics.len())].clone();
        let kind: &'static str = match rng.u32(0..100) {
            0..=14 => {
                server.set_faults(Faults {
                    duplicate_next_batch: Some(true),
                    ..Faults::default()
                });
                "duplicate_batch"
            }
            15..=29 => {
                server.set_faults(Faults {
                    reorder_next_batch: Some(true),
                    ..Faults::default()
                });
                "reordered_batch"
            }
            30..=39 => {
                server.set_faults(Faults {
                    drop_after_frames: Some(rng.i64(0..30)),
                    ..Faults::default()
                });
                "server_drop"
            }
            40..=47 => {
                server.set_faults(Faults {
                    force_stale: Some(ForceStale {
                        topic,
                        push: true,
                        reason: None,
                    }),
                    ..Faults::default()
                });
                "forced_stale"
            }
            48..=51 => {
                // The retention floor overtakes whoever is behind on this topic.
                let head = server.head(&topic);
                server.truncate_before(&topic, head.saturating_sub(rng.u64(50..2_000)));
                "retention_truncate"
            }
            52..=59 => {
                server.expire_tokens();
                "token_expiry"
            }
            60..=66 => {
                server.restart_connections();
                "server_restart"
            }
            67..=74 => {
                server.set_faults(Faults {
                    delay_ms: Some(rng.u64(5..20)),
                    ..Faults::default()
                });
                tokio::time::sleep(Duration::from_millis(rng.u64(100..400))).await;
                server.set_faults(Faults {
                    delay_ms: Some(0),
                    ..Faults::default()
                });
                "slow_server"
            }
            75..=84 => {
                proxy.set_down(true);
                proxy.drop_all();
                tokio::time::sleep(Duration::from_millis(rng.u64(100..800))).await;
                proxy.set_down(false);
                "network_outage"
            }
            _ => {
                proxy.drop_all();
                "connection_cut"
            }
        };
        *counts.entry(kind).or_default() += 1;
    }
    proxy.set_down(false);
    counts
}
