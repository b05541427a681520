//! A loopback TCP fault proxy between a client and the dev server.
//!
//! Every accepted connection gets a plan drawn from a seeded RNG (connection index + seed), so
//! a failing run replays with the same seed: refuse (close at once), drop after N downstream
//! bytes (usually mid-frame), stall for a while at a random point, or throttle the downstream
//! bandwidth. `set_down(true)` refuses every new connection (an outage window) and
//! `drop_all()` cuts every open connection now; `freeze_websockets()` turns every open
//! WebSocket connection into a black hole (bytes are swallowed both ways, the sockets stay
//! open: a dead network path neither end is told about). The proxy works below HTTP and
//! WebSocket, so it hits token/snapshot/doc requests as well as the socket.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Probabilities of each per-connection fault (each in 0..=1; the rest pass clean).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Seed of the per-connection plans.
    pub seed: u64,
    /// Close the connection right after accepting it.
    pub refuse: f64,
    /// Cut the connection after a random number of downstream bytes.
    pub drop: f64,
    /// Stop forwarding downstream for a while at a random point.
    pub stall: f64,
    /// Forward downstream at a limited rate.
    pub throttle: f64,
    /// Largest byte budget before a drop.
    pub drop_within_bytes: u64,
    /// Longest stall.
    pub max_stall: Duration,
    /// Throttled rate, bytes per second.
    pub throttle_bytes_per_sec: u64,
}

impl ProxyConfig {
    /// A proxy that forwards everything untouched.
    pub fn clean(seed: u64) -> Self {
        Self {
            seed,
            refuse: 0.0,
            drop: 0.0,
            stall: 0.0,
            throttle: 0.0,
            drop_within_bytes: 1 << 20,
            max_stall: Duration::from_millis(1500),
            throttle_bytes_per_sec: 256 * 1024,
        }
    }
}

/// Faults the proxy injected, by kind.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections refused (plan or outage window).
    pub refused: AtomicU64,
    /// Connections cut after a byte budget (mid-stream).
    pub dropped: AtomicU64,
    /// Connections cut by `drop_all`.
    pub cut: AtomicU64,
    /// Stalls injected.
    pub stalls: AtomicU64,
    /// Connections throttled.
    pub throttled: AtomicU64,
    /// Bytes forwarded downstream.
    pub bytes_down: AtomicU64,
}

/// Plain numbers of [`ProxyCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted.
    pub connections: u64,
    /// Refused.
    pub refused: u64,
    /// Dropped mid-stream.
    pub dropped: u64,
    /// Cut by `drop_all`.
    pub cut: u64,
    /// Stalls.
    pub stalls: u64,
    /// Throttled connections.
    pub throttled: u64,
    /// Bytes forwarded downstream.
    pub bytes_down: u64,
}

/// A running proxy; dropped = stopped.
pub struct FaultProxy {
    addr: SocketAddr,
    counters: Arc<ProxyCounters>,
    down: Arc<AtomicBool>,
    clean: Arc<AtomicBool>,
    cut_tx: watch::Sender<u64>,
    /// Bumped by `freeze_websockets`: WebSocket connections accepted before are black holes.
    freeze: Arc<AtomicU64>,
    accept_task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.cut_tx.send_modify(|g| *g += 1);
    }
}

#[derive(Debug, Clone, Copy)]
enum Plan {
    Clean,
    Refuse,
    Drop { after: u64 },
    Stall { after: u64, for_ms: u64 },
    Throttle { bytes_per_sec: u64 },
}

fn draw_plan(cfg: &ProxyConfig, index: u64) -> Plan {
    let mut rng = fastrand::Rng::with_seed(cfg.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let x = rng.f64();
    let mut edge = cfg.refuse;
    if x < edge {
        return Plan::Refuse;
    }
    edge += cfg.drop;
    if x < edge {
        return Plan::Drop {
            after: rng.u64(1..=cfg.drop_within_bytes.max(1)),
        };
    }
    edge += cfg.stall;
    if x < edge {
        let max = u64::try_from(cfg.max_stall.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        return Plan::Stall {
            after: rng.u64(0..=cfg.drop_within_bytes),
            for_ms: rng.u64(1..=max),
        };
    }
    edge += cfg.throttle;
    if x < edge {
        return Plan::Throttle {
            bytes_per_sec: cfg.throttle_bytes_per_sec.max(1),
        };
    }
    Plan::Clean
}

impl FaultProxy {
    /// Listens on an ephemeral loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr, cfg: ProxyConfig) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(ProxyCounters::default());
        let down = Arc::new(AtomicBool::new(false));
        let clean = Arc::new(AtomicBool::new(false));
        let (cut_tx, cut_rx) = watch::channel(0u64);
        let freeze = Arc::new(AtomicU64::new(0));
        let accept_task = tokio::spawn(accept_loop(
            listener,
            upstream,
            cfg,
            counters.clone(),
            Switches {
                down: down.clone(),
                clean: clean.clone(),
                freeze: freeze.clone(),
            },
            cut_rx,
        ));
        Ok(FaultProxy {
            addr,
            counters,
            down,
            clean,
            cut_tx,
            freeze,
            accept_task,
        })
    }

    /// `http://127.0.0.1:<port>`: give this to the client instead of the server's URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// While true, every new connection is refused.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// While true, new connections get no fault plan (quiescence).
    pub fn set_clean(&self, clean: bool) {
        self.clean.store(clean, Ordering::SeqCst);
    }

    /// Cuts every open connection now.
    pub fn drop_all(&self) {
        self.cut_tx.send_modify(|g| *g += 1);
    }

    /// Every WebSocket connection open now goes silent for good: from here on, bytes are
    /// swallowed in both directions and neither side sees a close or a reset. Later
    /// connections (and plain HTTP ones) are unaffected.
    pub fn freeze_websockets(&self) {
        self.freeze.fetch_add(1, Ordering::SeqCst);
    }

    /// Faults injected so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            connections: l(&c.connections),
            refused: l(&c.refused),
            dropped: l(&c.dropped),
            cut: l(&c.cut),
            stalls: l(&c.stalls),
            throttled: l(&c.throttled),
            bytes_down: l(&c.bytes_down),
        }
    }
}

/// The proxy-wide switches a test flips while it runs.
struct Switches {
    down: Arc<AtomicBool>,
    clean: Arc<AtomicBool>,
    freeze: Arc<AtomicU64>,
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    cfg: ProxyConfig,
    counters: Arc<ProxyCounters>,
    switches: Switches,
    cut_rx: watch::Receiver<u64>,
) {
    let Switches {
        down,
        clean,
        freeze,
    } = switches;
    let mut index = 0u64;
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        index += 1;
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let plan = if down.load(Ordering::SeqCst) {
            Plan::Refuse
        } else if clean.load(Ordering::SeqCst) {
            Plan::Clean
        } else {
            draw_plan(&cfg, index)
        };
        if let Plan::Refuse = plan {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            // Reset rather than FIN: like a refused connect. (A zero linger never blocks on
            // drop, which is what the deprecation warns about.)
            #[allow(deprecated)]
            let _ = client.set_linger(Some(Duration::ZERO));
            drop(client);
            continue;
        }
        tokio::spawn(serve(
            client,
            upstream,
            plan,
            counters.clone(),
            cut_rx.clone(),
            freeze.clone(),
        ));
    }
}

async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    plan: Plan,
    counters: Arc<ProxyCounters>,
    mut cut_rx: watch::Receiver<u64>,
    freeze: Arc<AtomicU64>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let freeze_at_start = freeze.load(Ordering::SeqCst);
    // Set from the client's first bytes (its HTTP request): a WebSocket upgrade?
    let websocket = AtomicBool::new(false);
    let frozen =
        || websocket.load(Ordering::SeqCst) && freeze.load(Ordering::SeqCst) > freeze_at_start;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut c_read, mut c_write) = client.into_split();
    let (mut s_read, mut s_write) = server.into_split();
    let generation = *cut_rx.borrow_and_update();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut first = true;
        loop {
            let n = match c_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if first {
                first = false;
                let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                websocket.store(head.contains("upgrade: websocket"), Ordering::SeqCst);
            }
            if frozen() {
                continue;
            }
            if s_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = s_write.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut sent = 0u64;
        let mut stalled = false;
        if let Plan::Throttle { .. } = plan {
            counters.throttled.fetch_add(1, Ordering::Relaxed);
        }
        loop {
            let n = match s_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if frozen() {
                continue;
            }
            let mut chunk = &buf[..n];
            match plan {
                Plan::Drop { after } if sent + n as u64 >= after => {
                    let keep = usize::try_from(after.saturating_sub(sent)).unwrap_or(0);
                    let _ = c_write.write_all(&chunk[..keep.min(n)]).await;
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Plan::Stall { after, for_ms } if !stalled && sent + n as u64 >= after => {
                    stalled = true;
                    counters.stalls.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(for_ms)).await;
                }
                Plan::Throttle { bytes_per_sec } => {
                    // Forward in small slices, sleeping for each slice's share of a second.
                    while !chunk.is_empty() {
                        let slice = chunk.len().min(4096);
                        if c_write.write_all(&chunk[..slice]).await.is_err() {
                            return;
                        }
                        counters
                            .bytes_down
                            .fetch_add(slice as u64, Ordering::Relaxed);
                        sent += slice as u64;
                        chunk = &chunk[slice..];
                        let us = (slice as u64).saturating_mul(1_000_000) / bytes_per_sec;
                        tokio::time::sleep(Duration::from_micros(us)).await;
                    }
                    continue;
                }
                _ => {}
            }
            if c_write.write_all(chunk).await.is_err() {
                return;
            }
            counters.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
            sent += n as u64;
        }
        let _ = c_write.shutdown().await;
    };
    let cut = async {
        loop {
            if cut_rx.changed().await.is_err() {
                return;
            }
            if *cut_rx.borrow() != generation {
                return;
            }
        }
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = cut => { counters.cut.fetch_add(1, Ordering::Relaxed); }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_a_function_of_seed_and_index() {
        let cfg = ProxyConfig {
            refuse: 0.2,
            drop: 0.2,
            stall: 0.2,
            throttle: 0.2,
            ..ProxyConfig::clean(42)
        };
        let a: Vec<String> = (0..50)
            .map(|i| format!("{:?}", draw_plan(&cfg, i)))
            .collect();
        let b: Vec<String> = (0..50)
            .map(|i| format!("{:?}", draw_plan(&cfg, i)))
            .collect();
        assert_eq!(a, b);
        let kinds: std::collections::BTreeSet<&str> = a
            .iter()
            .map(|s| s.split([' ', '{']).next().unwrap_or(""))
            .collect();
        assert_eq!(
            kinds.len(),
            5,
            "all five plans drawn in 50 tries: {kinds:?}"
        );
        let clean = ProxyConfig::clean(42);
        assert!((0..100).all(|i| matches!(draw_plan(&clean, i), Plan::Clean)));
    }
}
