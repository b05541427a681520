//! The dialect-F chaos run (PROTOCOL.md §6/§6.1): three run-event topics published at varying
//! rates while two clients sync them through the [`FaultProxy`] — client `W` (topics A and B)
//! changes transport by phase (WebSocket → Poll → Auto) on one SQLite file, client `P`
//! (topic C) polls throughout. A seeded schedule injects connection cuts, network outages,
//! server restarts (every fanout WebSocket dropped), evictions a little behind or ahead of the
//! client, refused tokens (`401 token_expired`) and blocked WebSocket upgrades, on top of the
//! proxy's own per-connection plans and the server's natural ring eviction (1024 messages).
//!
//! At the end every published message (the harness keeps its own copy: the server's ring only
//! keeps the newest 1024) is compared with what the client stored: sequence, kind and payload
//! bytes; the locally missing sequences must be exactly the union of the `Change::Truncated`
//! ranges the app was told about; no upsert delivered twice; watermark = head; no two counted
//! polls of one topic closer than the server's 250 ms interval; no `429`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use khala_dev_server::{DevServer, DevServerConfig, FanoutRequestKind, Faults};
use khala_sync::{Change, ClientOptions, Dialect, FanoutTransport, SyncClient, Topic, TopicPhase};

use crate::proxy::{FaultProxy, ProxyConfig, ProxyStats};

/// The server's minimum poll interval per (subject, topic) (PROTOCOL.md §6).
pub const SERVER_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosFConfig {
    /// Seed of everything random (publish mix and rates, fault schedule, proxy plans, jitter).
    pub seed: u64,
    /// Events to publish in total (over the three topics).
    pub events: u64,
    /// Publish rate range, events per second (a new rate is drawn every second).
    pub rate: (u64, u64),
    /// Mean time between scheduled faults.
    pub fault_every: Duration,
    /// How long to wait for every topic to reach the head after the last event.
    pub settle_timeout: Duration,
    /// Directory of the clients' SQLite files.
    pub dir: PathBuf,
}

impl ChaosFConfig {
    /// The CI form: 20k events at 500–1,800 events/s (a third of that in the poll phase).
    pub fn ci(seed: u64, dir: PathBuf) -> Self {
        Self {
            seed,
            events: 20_000,
            rate: (500, 1_800),
            fault_every: Duration::from_millis(250),
            settle_timeout: Duration::from_secs(60),
            dir,
        }
    }
}

/// Per-topic figures.
#[derive(Debug, Clone, Default)]
pub struct TopicFigures {
    /// Messages published (= server head).
    pub published: u64,
    /// Messages stored locally.
    pub stored: u64,
    /// Messages reported missing through `Change::Truncated`.
    pub truncated: u64,
    /// `Change::Truncated` events.
    pub truncations: u64,
    /// Counted polls the server answered for this topic.
    pub polls: u64,
    /// WebSocket upgrades the server accepted for this topic.
    pub ws_upgrades: u64,
    /// Smallest gap between two counted polls of this topic (ms), if ≥ 2 polls.
    pub min_poll_gap_ms: Option<u64>,
}

/// The dialect-F chaos run's figures.
#[derive(Debug, Clone, Default)]
pub struct ChaosFReport {
    /// Seed.
    pub seed: u64,
    /// Events published.
    pub events: u64,
    /// Faults injected by the schedule, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Proxy counters.
    pub proxy: ProxyStats,
    /// Per topic.
    pub topics: BTreeMap<String, TopicFigures>,
    /// Transport phases client `W` went through.
    pub phases: Vec<&'static str>,
    /// When client `W`'s second and third phases started (seconds into the publish phase).
    pub phase_started_s: Vec<f64>,
    /// Messages reported truncated, by client instance (`w_<phase>`, `p_poll`).
    pub truncated_by_client: BTreeMap<&'static str, u64>,
    /// Published messages missing locally and not inside any reported truncation.
    pub lost: u64,
    /// Stored messages whose sequence, kind or payload bytes differ from the published ones
    /// (or stored under a key other than its sequence), or not published at all.
    pub corrupt: u64,
    /// Sequences inside a reported truncation that are stored anyway, or reported twice.
    pub misreported: u64,
    /// Upserts delivered to the app twice (same topic and sequence).
    pub duplicated: u64,
    /// Topics whose final watermark is not the head.
    pub watermark_mismatches: u64,
    /// Pairs of consecutive counted polls of one topic closer than 250 ms.
    pub polls_too_close: u64,
    /// `429` answers.
    pub rate_limited: u64,
    /// Changes the collectors may have missed (upserts seen < updates applied): the
    /// truncation check would then be unsound.
    pub changes_missed: u64,
    /// Slow-consumer evictions (WS `error` frames + `409`) and stale answers the server sent.
    pub server_evictions: u64,
    /// Stale answers (WS `stale_cursor` + `410`).
    pub server_stale: u64,
    /// Client reconnects and slow-consumer resumes summed over the clients.
    pub reconnects: u64,
    /// Publish phase wall time.
    pub publish_time: Duration,
    /// Time from the last event to every topic at the head.
    pub settle_time: Duration,
    /// Every topic reached the head before the settle timeout.
    pub settled: bool,
    /// The first few problems.
    pub diffs: Vec<String>,
}

impl ChaosFReport {
    /// All checks passed.
    pub fn ok(&self) -> bool {
        self.settled
            && self.lost == 0
            && self.corrupt == 0
            && self.misreported == 0
            && self.duplicated == 0
            && self.watermark_mismatches == 0
            && self.polls_too_close == 0
            && self.rate_limited == 0
            && self.changes_missed == 0
    }

    /// Truncated messages over all topics.
    pub fn truncated(&self) -> u64 {
        self.topics.values().map(|t| t.truncated).sum()
    }

    /// The one figure line.
    pub fn line(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let topics: Vec<String> = self
            .topics
            .iter()
            .map(|(t, f)| {
                format!(
                    "{t}:published={},stored={},truncated={}/{}x,polls={},ws={},min_poll_gap_ms={}",
                    f.published,
                    f.stored,
                    f.truncated,
                    f.truncations,
                    f.polls,
                    f.ws_upgrades,
                    f.min_poll_gap_ms
                        .map_or_else(|| "-".to_owned(), |g| g.to_string())
                )
            })
            .collect();
        let p = &self.proxy;
        format!(
            "chaos-f seed={} events={} phases={} truncated_by_client[{}] faults[{}, proxy_refused={}, proxy_dropped={}, proxy_stalls={}, proxy_throttled={}, proxy_cut={}] server_evictions={} server_stale={} reconnects={} topics[{}] lost={} corrupt={} truncated={} misreported={} duplicated={} watermark_mismatches={} polls_too_close={} http_429={} changes_missed={} publish={:.1}s settle={:.1}s",
            self.seed,
            self.events,
            self.phases.join("→"),
            self.truncated_by_client
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
            faults.join(", "),
            p.refused,
            p.dropped,
            p.stalls,
            p.throttled,
            p.cut,
            self.server_evictions,
            self.server_stale,
            self.reconnects,
            topics.join(" "),
            self.lost,
            self.corrupt,
            self.truncated(),
            self.misreported,
            self.duplicated,
            self.watermark_mismatches,
            self.polls_too_close,
            self.rate_limited,
            self.changes_missed,
            self.publish_time.as_secs_f64(),
            self.settle_time.as_secs_f64(),
        )
    }
}

/// What the app saw on the change streams, per topic (over every client instance).
#[derive(Debug, Default)]
struct Seen {
    /// Upserted sequences, with how many times each was delivered.
    upserts: BTreeMap<String, BTreeMap<u64, u32>>,
    /// Reported truncations `(from, to)`.
    truncations: BTreeMap<String, Vec<(u64, u64)>>,
    /// Highest upserted sequence (the client's position, for evictions near it).
    position: BTreeMap<String, u64>,
    /// Upserts seen by the current client instance.
    upserts_this_client: u64,
    /// Messages reported truncated while the current client instance ran.
    truncated_this_client: u64,
    /// Other changes (deletes, bootstraps: none are expected in dialect F).
    unexpected: Vec<String>,
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn options(seed: u64, transport: FanoutTransport) -> ClientOptions {
    ClientOptions {
        dialect: Dialect::Fanout,
        fanout_transport: transport,
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(800),
        reconnect_spread: Duration::from_millis(300),
        heartbeat_interval: Duration::from_secs(1),
        dead_after: Duration::from_secs(3),
        poll_interval: Duration::from_millis(400),
        jitter_seed: Some(seed),
        ..ClientOptions::default()
    }
}

/// A running client plus the task reading its change stream.
struct Running {
    client: SyncClient,
    collector: tokio::task::JoinHandle<()>,
}

fn start_client(
    base: &str,
    db: &Path,
    topics: &[String],
    opts: ClientOptions,
    seen: &Shared<Seen>,
) -> Running {
    let client = SyncClient::builder(base)
        .app_bearer_token(DevServer::APP_TOKEN)
        .topics(topics.iter().map(|t| Topic::new(t).expect("topic")))
        .database_path(db)
        .options(opts)
        .build()
        .expect("client builds");
    {
        let mut s = lock(seen);
        s.upserts_this_client = 0;
        s.truncated_this_client = 0;
    }
    let mut stream = Box::pin(client.all_changes());
    let seen = seen.clone();
    let collector = tokio::spawn(async move {
        while let Some(change) = stream.next().await {
            let mut s = lock(&seen);
            match change {
                Change::Upsert { topic, doc_key, .. } => {
                    let t = topic.as_str().to_owned();
                    match doc_key.as_str().parse::<u64>() {
                        Ok(seq) => {
                            *s.upserts
                                .entry(t.clone())
                                .or_default()
                                .entry(seq)
                                .or_default() += 1;
                            let p = s.position.entry(t).or_default();
                            *p = (*p).max(seq);
                        }
                        Err(_) => s.unexpected.push(format!("{t}: upsert of key {doc_key:?}")),
                    }
                    s.upserts_this_client += 1;
                }
                Change::Truncated { topic, from, to } => {
                    let t = topic.as_str().to_owned();
                    s.truncated_this_client += (to.get() + 1).saturating_sub(from.get());
                    s.truncations
                        .entry(t.clone())
                        .or_default()
                        .push((from.get(), to.get()));
                    let p = s.position.entry(t).or_default();
                    *p = (*p).max(to.get());
                }
                other => s.unexpected.push(format!("{other:?}")),
            }
        }
    });
    client.start().expect("client starts");
    Running { client, collector }
}

/// What one client instance did.
struct Stopped {
    /// Upserts the collector saw.
    seen: u64,
    /// Updates the client applied.
    applied: u64,
    /// Reconnects + slow-consumer resumes.
    reconnects: u64,
    /// Messages reported truncated.
    truncated: u64,
}

/// Stops a client and drains its change stream.
async fn stop_client(r: Running, seen: &Shared<Seen>) -> Stopped {
    r.client.shutdown().await;
    let m = r.client.metrics();
    drop(r.client);
    // The sender is gone with the client: the stream ends once every change is read.
    let mut collector = r.collector;
    if tokio::time::timeout(Duration::from_secs(10), &mut collector)
        .await
        .is_err()
    {
        collector.abort();
    }
    let s = lock(seen);
    Stopped {
        seen: s.upserts_this_client,
        applied: m.updates_applied,
        reconnects: m.reconnects + m.slow_consumer,
        truncated: s.truncated_this_client,
    }
}

impl ChaosFReport {
    fn add_stopped(&mut self, name: &'static str, st: &Stopped) {
        self.reconnects += st.reconnects;
        self.changes_missed += st.applied.saturating_sub(st.seen);
        *self.truncated_by_client.entry(name).or_default() += st.truncated;
    }
}

/// Payload of the `n`-th event: a JSON value of a varied shape, as raw text (kept byte-exact
/// by the server, so the SDK must too).
fn payload(rng: &mut fastrand::Rng, n: u64) -> String {
    match rng.u32(0..10) {
        0 => "null".to_owned(),
        1 => format!("\"line {n} \\u00e9\\n\\\"quoted\\\"\""),
        2 => format!("[{n},-0.0,9007199254740993,1e-7,true]"),
        3 => "-0.0".to_owned(),
        4 => format!(
            "{{\"step\":{n},\"text\":\"{}\",\"z\":1,\"a\":[]}}",
            "x".repeat(rng.usize(0..600))
        ),
        _ => format!(
            "{{ \"step\": {n}, \"score\": {}, \"big\": 18446744073709551615, \"f\": 0.30000000000000004 }}",
            rng.i64(-1_000_000..1_000_000)
        ),
    }
}

const KINDS: [&str; 4] = ["run.step", "run.log", "run.tool_call", "run.usage"];

/// Runs the dialect-F chaos test and returns its figures (it does not assert; the caller does).
pub async fn run(cfg: ChaosFConfig) -> ChaosFReport {
    let run_ids = ["chaos-a", "chaos-b", "chaos-c"];
    let topics: Vec<String> = run_ids.iter().map(|r| format!("run:{r}:events")).collect();
    let w_topics = topics[..2].to_vec();
    let p_topics = topics[2..].to_vec();
    let server = Arc::new(
        DevServer::start(DevServerConfig {
            phoenix_enabled: false,
            ..DevServerConfig::default()
        })
        .await
        .expect("dev server starts"),
    );
    let proxy = Arc::new(
        FaultProxy::start(
            server.addr(),
            ProxyConfig {
                refuse: 0.04,
                drop: 0.08,
                stall: 0.08,
                throttle: 0.08,
                drop_within_bytes: 256 * 1024,
                max_stall: Duration::from_millis(1_200),
                throttle_bytes_per_sec: 256 * 1024,
                ..ProxyConfig::clean(cfg.seed)
            },
        )
        .await
        .expect("proxy starts"),
    );
    let base = proxy.base_url();
    let seen: Shared<Seen> = Arc::new(Mutex::new(Seen::default()));
    let mut report = ChaosFReport {
        seed: cfg.seed,
        ..ChaosFReport::default()
    };

    // The harness's own copy of every message: (kind, raw payload) by topic, index = seq − 1.
    let mut published: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut rng = fastrand::Rng::with_seed(cfg.seed.wrapping_add(1));
    for (t, r) in topics.iter().zip(run_ids) {
        let p = format!("{{\"run_id\":\"{r}\"}}");
        let seq = server.publish_event_raw(t, "run.started", &p);
        assert_eq!(seq, 1, "a new run starts at sequence 1");
        published
            .entry(t.clone())
            .or_default()
            .push(("run.started".to_owned(), p));
    }

    let w_db = cfg.dir.join("chaos-f-w.db");
    let p_db = cfg.dir.join("chaos-f-p.db");
    let phases = [
        ("websocket", FanoutTransport::WebSocket),
        ("poll", FanoutTransport::Poll),
        ("auto", FanoutTransport::Auto),
    ];
    let mut w = Some(start_client(
        &base,
        &w_db,
        &w_topics,
        options(cfg.seed, phases[0].1),
        &seen,
    ));
    report.phases.push(phases[0].0);
    // Client P keeps its own change bookkeeping in a separate `Seen` (its counter of upserts
    // per client instance must not mix with W's).
    let seen_p: Shared<Seen> = Arc::new(Mutex::new(Seen::default()));
    let p = start_client(
        &base,
        &p_db,
        &p_topics,
        options(cfg.seed ^ 0x5eed, FanoutTransport::Poll),
        &seen_p,
    );

    let faults_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let network_back = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let fault_task = tokio::spawn(fault_schedule(
        cfg.seed,
        cfg.fault_every,
        server.clone(),
        proxy.clone(),
        topics.clone(),
        vec![seen.clone(), seen.clone(), seen_p.clone()],
        Signals {
            done: faults_done.clone(),
            network_back: network_back.clone(),
        },
    ));
    let mut network_seen = 0u64;

    // Publish: a new rate every second, 50 ms slices; topic C (polled, 50-message pages once
    // a subject polls ≥ 2 topics) gets a smaller share. Client W changes transport at 40 % and
    // 60 % of the events.
    let started = Instant::now();
    let mut done = 3u64; // the three run.started events
    let mut phase = 0usize;
    let phase_names = ["w_websocket", "w_poll", "w_auto"];
    let mut rate = cfg.rate.0;
    let mut next_rate_at = started;
    let mut slice_due = started;
    while done < cfg.events {
        // The app hears from the OS that the network is back after an outage (reachability):
        // it tells the clients (an `Auto` topic that fell back to polling tries its
        // WebSocket again).
        let back = network_back.load(std::sync::atomic::Ordering::SeqCst);
        if back != network_seen {
            network_seen = back;
            if let Some(w) = &w {
                w.client.network_changed();
            }
            p.client.network_changed();
        }
        let now = Instant::now();
        if now >= next_rate_at {
            rate = rng.u64(cfg.rate.0..=cfg.rate.1.max(cfg.rate.0));
            next_rate_at = now + Duration::from_secs(1);
        }
        // Client W: WebSocket for the first 40 % of the events, poll for the next 20 %, auto
        // for the rest.
        let target_phase = match done * 10 / cfg.events.max(1) {
            0..=3 => 0,
            4..=5 => 1,
            _ => 2,
        };
        if target_phase > phase {
            let st = stop_client(w.take().expect("client W"), &seen).await;
            report.add_stopped(phase_names[phase], &st);
            phase = target_phase;
            // The server's poll window is per (subject, topic): the next instance starts after it.
            tokio::time::sleep(Duration::from_millis(300)).await;
            w = Some(start_client(
                &base,
                &w_db,
                &w_topics,
                options(cfg.seed.wrapping_add(phase as u64), phases[phase].1),
                &seen,
            ));
            report.phases.push(phases[phase].0);
            report.phase_started_s.push(started.elapsed().as_secs_f64());
        }
        // The poll phase publishes at a quarter of the rate: a polled topic moves at most 50
        // messages per 250 ms once a subject polls ≥ 2 topics (§6), so the full rate would
        // mostly measure ring overflow.
        let r = if phases[phase].1 == FanoutTransport::Poll {
            rate / 4
        } else {
            rate
        };
        let n = (r / 20).max(1).min(cfg.events - done);
        for _ in 0..n {
            let x = rng.u32(0..100);
            let ti = if x < 48 {
                0
            } else if x < 92 {
                1
            } else {
                2
            };
            let kind = KINDS[rng.usize(0..KINDS.len())];
            let body = payload(&mut rng, done);
            let seq = server.publish_event_raw(&topics[ti], kind, &body);
            let log = published.entry(topics[ti].clone()).or_default();
            log.push((kind.to_owned(), body));
            assert_eq!(seq, log.len() as u64, "sequences are dense");
            done += 1;
        }
        slice_due += Duration::from_millis(50);
        tokio::time::sleep_until(slice_due.into()).await;
    }
    report.events = done;
    report.publish_time = started.elapsed();

    // Quiescence: stop injecting, heal the network, wait for every topic to reach the head.
    faults_done.store(true, std::sync::atomic::Ordering::SeqCst);
    report.faults = fault_task.await.unwrap_or_default();
    server.clear_faults();
    proxy.set_clean(true);
    proxy.set_down(false);
    proxy.drop_all();
    let settle_start = Instant::now();
    let w = w.expect("client W");
    report.settled = at_head(&[&w.client, &p.client], &server, cfg.settle_timeout).await;
    report.settle_time = settle_start.elapsed();

    // Final watermarks, then stop both clients (draining their change streams).
    let mut final_wm: BTreeMap<String, u64> = BTreeMap::new();
    for c in [&w.client, &p.client] {
        for t in c.current_status().topics {
            final_wm.insert(t.topic.as_str().to_owned(), t.watermark.get());
        }
    }
    let mut stored: BTreeMap<String, Vec<khala_sync::StoredDoc>> = BTreeMap::new();
    for (c, ts) in [(&w.client, &w_topics), (&p.client, &p_topics)] {
        for t in ts.iter() {
            let docs = c.list(Topic::new(t).expect("topic")).await.expect("list");
            stored.insert(t.clone(), docs);
        }
    }
    let st = stop_client(w, &seen).await;
    report.add_stopped(phase_names[2], &st);
    let st = stop_client(p, &seen_p).await;
    report.add_stopped("p_poll", &st);
    report.proxy = proxy.stats();
    let sm = server.metrics();
    report.server_evictions = sm.fanout_evictions;
    report.server_stale = sm.fanout_stale;

    // Merge what the app saw from both clients.
    let mut all = Seen::default();
    for s in [&seen, &seen_p] {
        let mut s = lock(s);
        all.upserts.append(&mut s.upserts);
        all.truncations.append(&mut s.truncations);
        all.unexpected.append(&mut s.unexpected);
    }
    for u in &all.unexpected {
        report.corrupt += 1;
        push_diff(&mut report.diffs, format!("unexpected change {u}"));
    }

    let requests = server.fanout_requests();
    for r in requests.iter().filter(|r| r.status == 429) {
        report.rate_limited += 1;
        push_diff(
            &mut report.diffs,
            format!(
                "{}: 429 {:.3}s into the run ({:?} after_seq={:?} limit={:?})",
                r.topic,
                r.at.saturating_duration_since(started).as_secs_f64(),
                r.kind,
                r.after_seq,
                r.limit
            ),
        );
    }
    for t in &topics {
        let log = &published[t];
        let head = server.event_head(t);
        let mut fig = TopicFigures {
            published: log.len() as u64,
            ..TopicFigures::default()
        };
        if head != log.len() as u64 {
            report.corrupt += 1;
            push_diff(
                &mut report.diffs,
                format!("{t}: server head {head}, published {}", log.len()),
            );
        }
        if final_wm.get(t).copied() != Some(head) {
            report.watermark_mismatches += 1;
            push_diff(
                &mut report.diffs,
                format!("{t}: watermark {:?}, head {head}", final_wm.get(t)),
            );
        }

        // Stored messages: key = sequence = version, message fields byte-exact.
        let mut have: BTreeSet<u64> = BTreeSet::new();
        for d in stored.get(t).map(Vec::as_slice).unwrap_or_default() {
            let seq = d.doc_version;
            have.insert(seq);
            let expected = usize::try_from(seq)
                .ok()
                .and_then(|s| s.checked_sub(1))
                .and_then(|i| log.get(i));
            let ok = d.doc_key.as_str() == seq.to_string()
                && expected
                    .is_some_and(|(kind, payload)| message_matches(&d.payload, seq, kind, payload));
            if !ok {
                report.corrupt += 1;
                push_diff(
                    &mut report.diffs,
                    format!("{t}/{}: stored {:.200}", d.doc_key.as_str(), d.payload),
                );
            }
        }
        fig.stored = have.len() as u64;

        // Truncations: disjoint, not covering stored messages; missing = their union exactly.
        let mut reported: BTreeSet<u64> = BTreeSet::new();
        for &(from, to) in all
            .truncations
            .get(t)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            fig.truncations += 1;
            for s in from..=to {
                if !reported.insert(s) {
                    report.misreported += 1;
                    push_diff(
                        &mut report.diffs,
                        format!("{t}: {s} reported truncated twice"),
                    );
                } else if have.contains(&s) {
                    report.misreported += 1;
                    push_diff(
                        &mut report.diffs,
                        format!("{t}: {s} reported truncated ({from}..={to}) but stored"),
                    );
                }
            }
        }
        fig.truncated = reported.len() as u64;
        for s in 1..=log.len() as u64 {
            if !have.contains(&s) && !reported.contains(&s) {
                report.lost += 1;
                push_diff(
                    &mut report.diffs,
                    format!("{t}: {s} missing, never reported"),
                );
            }
        }

        // Upserts delivered twice.
        for (seq, n) in all.upserts.get(t).into_iter().flatten() {
            if *n > 1 {
                report.duplicated += u64::from(*n - 1);
                push_diff(
                    &mut report.diffs,
                    format!("{t}: upsert {seq} delivered {n}×"),
                );
            }
        }

        // Poll cadence: every poll the server counted (everything past auth — 401s are not
        // counted by the server's rate window), in arrival order.
        let mut last: Option<&khala_dev_server::FanoutRequest> = None;
        for r in requests.iter().filter(|r| &r.topic == t) {
            match r.kind {
                FanoutRequestKind::WebSocket => {
                    if r.status == 101 {
                        fig.ws_upgrades += 1;
                    }
                }
                FanoutRequestKind::Poll => {
                    if r.status == 401 || r.status == 403 {
                        continue;
                    }
                    fig.polls += 1;
                    if let Some(prev) = last {
                        let gap = r.at.saturating_duration_since(prev.at);
                        let ms = u64::try_from(gap.as_millis()).unwrap_or(u64::MAX);
                        fig.min_poll_gap_ms = Some(fig.min_poll_gap_ms.map_or(ms, |g| g.min(ms)));
                        if gap < SERVER_POLL_INTERVAL {
                            report.polls_too_close += 1;
                            push_diff(
                                &mut report.diffs,
                                format!(
                                    "{t}: two polls {ms} ms apart, {:.3}s into the run: after_seq={:?} limit={:?} → {}, then after_seq={:?} limit={:?} → {}",
                                    prev.at.saturating_duration_since(started).as_secs_f64(),
                                    prev.after_seq,
                                    prev.limit,
                                    prev.status,
                                    r.after_seq,
                                    r.limit,
                                    r.status
                                ),
                            );
                        }
                    }
                    last = Some(r);
                }
            }
        }
        report.topics.insert(t.clone(), fig);
    }
    report
}

fn push_diff(diffs: &mut Vec<String>, d: String) {
    if diffs.len() < 8 {
        diffs.push(d);
    }
}

/// The stored document of message `seq` is `{"topic","sequence","kind","payload",…}` with the
/// payload's bytes exactly as published.
fn message_matches(stored: &str, seq: u64, kind: &str, payload: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Msg<'a> {
        sequence: u64,
        kind: String,
        #[serde(borrow)]
        payload: &'a serde_json::value::RawValue,
    }
    match serde_json::from_str::<Msg<'_>>(stored) {
        Ok(m) => m.sequence == seq && m.kind == kind && m.payload.get() == payload,
        Err(_) => false,
    }
}

/// Waits until every topic of every client is live at the server's head.
async fn at_head(clients: &[&SyncClient], server: &DevServer, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let done = clients.iter().all(|c| {
            c.current_status().topics.iter().all(|t| {
                t.phase == TopicPhase::Live
                    && t.watermark.get() == server.event_head(t.topic.as_str())
            })
        });
        if done {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Between the fault schedule and the publisher.
struct Signals {
    /// Set by the publisher: stop injecting.
    done: Arc<std::sync::atomic::AtomicBool>,
    /// Bumped by the schedule when an outage ends (the app tells its clients).
    network_back: Arc<std::sync::atomic::AtomicU64>,
}

/// Injects faults at random intervals (mean `every`) until `done`; returns the counts.
async fn fault_schedule(
    seed: u64,
    every: Duration,
    server: Arc<DevServer>,
    proxy: Arc<FaultProxy>,
    topics: Vec<String>,
    seen: Vec<Shared<Seen>>,
    signals: Signals,
) -> BTreeMap<&'static str, u64> {
    let Signals { done, network_back } = signals;
    let mut rng = fastrand::Rng::with_seed(seed.wrapping_mul(31).wrapping_add(7));
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mean = u64::try_from(every.as_millis()).unwrap_or(250).max(1);
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(rng.u64(mean / 2..=mean * 3 / 2))).await;
        if done.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        let ti = rng.usize(0..topics.len());
        let topic = &topics[ti];
        let kind = match rng.u32(0..100) {
            0..=17 => {
                proxy.drop_all();
                "connection_cut"
            }
            18..=29 => {
                proxy.set_down(true);
                proxy.drop_all();
                tokio::time::sleep(Duration::from_millis(rng.u64(100..800))).await;
                proxy.set_down(false);
                network_back.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                "network_outage"
            }
            30..=44 => {
                server.set_faults(Faults {
                    restart: true,
                    ..Faults::default()
                });
                "server_restart"
            }
            45..=54 => {
                // A little behind the client: the next resume still works.
                let pos = lock(&seen[ti]).position.get(topic).copied().unwrap_or(0);
                server.evict_events_through(topic, pos.saturating_sub(rng.u64(0..100)));
                "evict_behind"
            }
            55..=64 => {
                // A little ahead of the client (never past the head): a truncation if the
                // client has to ask for them again.
                let pos = lock(&seen[ti]).position.get(topic).copied().unwrap_or(0);
                let head = server.event_head(topic);
                server.evict_events_through(topic, (pos + rng.u64(1..200)).min(head));
                "evict_ahead"
            }
            65..=76 => {
                server.set_faults(Faults {
                    fanout_reject_auth: Some(rng.u32(1..=3)),
                    ..Faults::default()
                });
                "reject_auth"
            }
            77..=86 => {
                server.set_faults(Faults {
                    fanout_ws_blocked: Some(true),
                    ..Faults::default()
                });
                tokio::time::sleep(Duration::from_millis(rng.u64(200..1_500))).await;
                server.set_faults(Faults {
                    fanout_ws_blocked: Some(false),
                    ..Faults::default()
                });
                "ws_blocked"
            }
            _ => {
                // Stall every connection briefly, then cut (a half-open network).
                proxy.set_down(true);
                tokio::time::sleep(Duration::from_millis(rng.u64(50..300))).await;
                proxy.set_down(false);
                proxy.drop_all();
                "flap"
            }
        };
        *counts.entry(kind).or_default() += 1;
    }
    proxy.set_down(false);
    counts
}
