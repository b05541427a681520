//! Reconnect storm over real sockets: many clients hold live connections to one dev server,
//! the server drops every socket at once (a restart with the log kept), and the moments the
//! clients are back are recorded where the load lands: the server's WebSocket upgrades. Production reconnect settings (only the jitter seed is
//! fixed per client so a run replays).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use khala_dev_server::{DevServer, DevServerConfig};
use khala_sync::{ClientOptions, ConnectionState, SyncClient, Topic};

/// Figures of a storm run.
#[derive(Debug, Clone)]
pub struct StormReport {
    /// Seed.
    pub seed: u64,
    /// Clients.
    pub clients: usize,
    /// Clients back (connected again) before the timeout.
    pub reconnected: usize,
    /// Largest share of the server's upgrades after the restart inside any 100 ms window.
    pub max_share_100ms: f64,
    /// First to last reconnect.
    pub span: Duration,
    /// Connections the server accepted after the restart.
    pub server_accepts_after_restart: u64,
}

impl StormReport {
    /// The one figure line.
    pub fn line(&self) -> String {
        format!(
            "storm-real seed={} clients={} reconnected={} server_accepts_after_restart={} max_share_of_reconnects_in_100ms={:.2}% reconnect_span_ms={}",
            self.seed,
            self.clients,
            self.reconnected,
            self.server_accepts_after_restart,
            self.max_share_100ms * 100.0,
            self.span.as_millis()
        )
    }
}

/// Largest share of `times_ms` inside any 100 ms window.
pub fn max_share_in_100ms(times_ms: &mut [u64]) -> f64 {
    times_ms.sort_unstable();
    let mut best = 0usize;
    let mut lo = 0usize;
    for hi in 0..times_ms.len() {
        while times_ms[hi] - times_ms[lo] >= 100 {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best as f64 / times_ms.len().max(1) as f64
}

/// Runs `clients` clients against one server, restarts its connections, measures.
pub async fn run(seed: u64, clients: usize) -> StormReport {
    let server = DevServer::start(DevServerConfig {
        heartbeat_interval: Duration::from_secs(5),
        ..DevServerConfig::default()
    })
    .await
    .expect("dev server starts");
    server.publish(
        "runtime.run_summaries",
        "runtime/run_summary:storm",
        serde_json::json!({"storm": true}),
    );
    let topic = Topic::new("runtime.run_summaries").expect("topic");
    let restarted_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let back: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(Vec::new()));
    let mut all = Vec::with_capacity(clients);
    for i in 0..clients {
        let client = SyncClient::builder(server.base_url())
            .app_bearer_token(DevServer::APP_TOKEN)
            .topics([topic.clone()])
            .in_memory()
            .options(ClientOptions {
                jitter_seed: Some(seed.wrapping_mul(1_000_003).wrapping_add(i as u64)),
                ..ClientOptions::default()
            })
            .build()
            .expect("client builds");
        let mut status = Box::pin(client.status());
        let restarted_at = restarted_at.clone();
        let back = back.clone();
        tokio::spawn(async move {
            let mut lost = false;
            while let Some(s) = status.next().await {
                let t0 = restarted_at.lock().ok().and_then(|g| *g);
                let Some(t0) = t0 else { continue };
                if s.state != ConnectionState::Connected {
                    lost = true;
                } else if lost {
                    let ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
                    if let Ok(mut b) = back.lock() {
                        b.push(ms);
                    }
                    return;
                }
            }
        });
        client.start().expect("client starts");
        all.push(client);
    }
    // Everyone live first.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !all.iter().all(|c| c.current_status().is_live()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let accepted_before = server.metrics().connections_accepted_total;
    if let Ok(mut g) = restarted_at.lock() {
        *g = Some(Instant::now());
    }
    server.restart_connections();
    let deadline = Instant::now() + Duration::from_secs(30);
    while back.lock().map(|b| b.len()).unwrap_or(0) < clients && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reconnected = back.lock().map(|b| b.len()).unwrap_or(0);
    // Measured where the load lands: the server's upgrade acceptances after the restart.
    let t0 = restarted_at
        .lock()
        .ok()
        .and_then(|g| *g)
        .unwrap_or_else(Instant::now);
    let mut times: Vec<u64> = server
        .upgrade_times()
        .into_iter()
        .filter(|t| *t >= t0)
        .map(|t| u64::try_from((t - t0).as_millis()).unwrap_or(u64::MAX))
        .collect();
    let share = max_share_in_100ms(&mut times);
    if std::env::var_os("KHALA_STORM_HISTOGRAM").is_some() {
        let mut buckets = vec![0u32; 60];
        for t in &times {
            let b = usize::try_from(t / 100).unwrap_or(59).min(59);
            buckets[b] += 1;
        }
        eprintln!("reconnects per 100 ms after the restart: {buckets:?}");
    }
    let span = match (times.first(), times.last()) {
        (Some(a), Some(b)) => Duration::from_millis(b - a),
        _ => Duration::ZERO,
    };
    let accepts = server.metrics().connections_accepted_total - accepted_before;
    for c in &all {
        c.shutdown().await;
    }
    StormReport {
        seed,
        clients,
        reconnected,
        max_share_100ms: share,
        span,
        server_accepts_after_restart: accepts,
    }
}
