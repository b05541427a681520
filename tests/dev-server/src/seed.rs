//! Deterministic seeded documents and the live update generator (`--seed-docs`, `--rate`).

use crate::state::{PublishItem, Shared};
use serde_json::json;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;

const STATUSES: [&str; 5] = ["queued", "running", "waiting_input", "succeeded", "failed"];
const KINDS: [&str; 3] = ["tool_call", "message", "checkpoint"];
const SEVERITIES: [&str; 3] = ["info", "warning", "error"];
const REGIONS: [&str; 3] = ["us-central1", "europe-west4", "asia-east1"];
const TITLES: [&str; 6] = [
    "Refactor sync engine",
    "Fix flaky snapshot test",
    "Bump rusqlite",
    "Write release notes",
    "Investigate slow consumer",
    "Migrate notifications",
];

fn hex(rng: &mut fastrand::Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(rng.u32(0..16), 16).unwrap_or('0'))
        .collect()
}

/// A new doc key for topic index `t` following PROTOCOL.md §2.5's patterns.
fn new_key(shared: &Shared, rng: &mut fastrand::Rng, t: usize) -> Option<(String, String)> {
    let spec = shared.config.topics.get(t)?;
    let key = match spec.name.as_str() {
        "runtime.codex_worker_events" => format!(
            "{}{}:{}",
            spec.doc_key_prefix,
            hex(rng, 8),
            rng.u32(1..10_000)
        ),
        _ => format!("{}{}", spec.doc_key_prefix, hex(rng, 8)),
    };
    Some((spec.name.clone(), key))
}

/// A realistic ~200-byte payload.
fn payload(rng: &mut fastrand::Rng, topic: &str, key: &str) -> Option<Arc<RawValue>> {
    let status = STATUSES[rng.usize(0..STATUSES.len())];
    let value = match topic {
        "runtime.run_summaries" => json!({
            "run_id": key.rsplit(':').next(),
            "status": status,
            "title": TITLES[rng.usize(0..TITLES.len())],
            "org_id": "org:7",
            "step_count": rng.u32(0..400),
            "cost_usd": f64::from(rng.u32(0..100_000)) / 1000.0,
            "updated_at_ms": 1_771_668_000_000u64 + rng.u64(0..10_000_000),
        }),
        "runtime.codex_worker_summaries" => json!({
            "worker_id": key.rsplit(':').next(),
            "status": status,
            "region": REGIONS[rng.usize(0..REGIONS.len())],
            "active_runs": rng.u32(0..8),
            "heartbeat_seq": rng.u32(0..100_000),
            "metadata": {"flags": ["a", "b"], "build": "2026.02.1"},
        }),
        "runtime.codex_worker_events" => json!({
            "kind": KINDS[rng.usize(0..KINDS.len())],
            "seq": rng.u32(1..10_000),
            "summary": TITLES[rng.usize(0..TITLES.len())],
            "tokens": {"input": rng.u32(0..5000), "output": rng.u32(0..2000)},
            "ok": rng.bool(),
        }),
        _ => json!({
            "title": TITLES[rng.usize(0..TITLES.len())],
            "body": "Your run finished; open the dashboard for details.",
            "severity": SEVERITIES[rng.usize(0..SEVERITIES.len())],
            "read": rng.bool(),
        }),
    };
    serde_json::value::to_raw_value(&value).ok().map(Arc::from)
}

/// Publishes `n` deterministic docs spread round-robin over the topics.
pub(crate) fn seed_docs(shared: &Shared, n: usize, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let topics = shared.config.topics.len().max(1);
    let mut items = Vec::with_capacity(n);
    for i in 0..n {
        if let Some((topic, doc_key)) = new_key(shared, &mut rng, i % topics) {
            let payload = payload(&mut rng, &topic, &doc_key);
            items.push(PublishItem {
                topic,
                doc_key,
                payload,
            });
        }
    }
    let _ = shared.publish(items);
}

/// Publishes `rate` updates per second: mostly updates of existing docs, some new docs,
/// occasional tombstones.
pub(crate) fn spawn_generator(
    shared: Arc<Shared>,
    rate: f64,
    seed: u64,
) -> Option<tokio::task::JoinHandle<()>> {
    if !(rate.is_finite() && rate > 0.0) {
        return None;
    }
    let period = Duration::from_secs_f64((1.0 / rate).max(0.000_1));
    Some(tokio::spawn(async move {
        let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(1));
        let mut known: Vec<(String, String)> = {
            let inner = shared.lock();
            inner
                .logs
                .iter()
                .flat_map(|(t, log)| {
                    log.live_docs()
                        .into_iter()
                        .map(|e| (t.clone(), e.doc_key.clone()))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let topics = shared.config.topics.len().max(1);
        let mut ticker = tokio::time::interval(period);
        loop {
            ticker.tick().await;
            let roll = rng.u32(0..100);
            let item = if known.is_empty() || roll < 15 {
                let t = rng.usize(0..topics);
                let Some((topic, doc_key)) = new_key(&shared, &mut rng, t) else {
                    continue;
                };
                known.push((topic.clone(), doc_key.clone()));
                let payload = payload(&mut rng, &topic, &doc_key);
                PublishItem {
                    topic,
                    doc_key,
                    payload,
                }
            } else if roll < 20 {
                let (topic, doc_key) = known.swap_remove(rng.usize(0..known.len()));
                PublishItem {
                    topic,
                    doc_key,
                    payload: None,
                }
            } else {
                let (topic, doc_key) = known[rng.usize(0..known.len())].clone();
                let payload = payload(&mut rng, &topic, &doc_key);
                PublishItem {
                    topic,
                    doc_key,
                    payload,
                }
            };
            let _ = shared.publish(vec![item]);
        }
    }))
}
