//! Runs the reliability suites at any size and prints their figure lines.
//!
//! ```text
//! cargo run --release -p khala-chaos --bin khala-chaos -- soak            # 1M-event chaos + 200 kills + storm + memory
//! cargo run --release -p khala-chaos --bin khala-chaos -- chaos --events 100000 --seed 7
//! cargo run --release -p khala-chaos --bin khala-chaos -- chaos-f --events 200000 --seed 7
//! cargo run --release -p khala-chaos --bin khala-chaos -- crash --kills 30
//! cargo run --release -p khala-chaos --bin khala-chaos -- storm --clients 1000
//! cargo run --release -p khala-chaos --bin khala-chaos -- memory --events 200000
//! ```
//! Exit status 1 when any check fails (lost or duplicated data, an inconsistent file, a
//! lock-step storm, unbounded memory).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use khala_chaos::{chaos, chaos_f, crash, memory, storm};

#[derive(Parser)]
#[command(about = "khala-sync reliability suites (chaos proxy, kill -9, storms, memory)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Seed (default: from the clock; printed so a failure replays).
    #[arg(long, global = true)]
    seed: Option<u64>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Chaos run: events under proxy + server faults, then compare everything.
    Chaos {
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        #[arg(long, default_value_t = 12_000)]
        rate: u64,
    },
    /// Dialect-F chaos run: run-event topics over WebSocket / poll phases under proxy and
    /// server faults; checks stored = published or reported truncated, poll cadence, no 429.
    ChaosF {
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Lowest publish rate (events/s; a new rate is drawn every second).
        #[arg(long, default_value_t = 500)]
        min_rate: u64,
        /// Highest publish rate.
        #[arg(long, default_value_t = 1_800)]
        max_rate: u64,
    },
    /// kill -9 a syncing process repeatedly, check the file after each kill.
    Crash {
        #[arg(long, default_value_t = 30)]
        kills: u32,
    },
    /// Real-socket reconnect storm after a server restart.
    Storm {
        #[arg(long, default_value_t = 1_000)]
        clients: usize,
    },
    /// Bounded memory with a slow store.
    Memory {
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        #[arg(long, default_value_t = 20)]
        slow_apply_ms: u64,
    },
    /// The soak forms: 1M-event chaos, 200 kills, storm, memory.
    Soak,
}

fn child_bin() -> PathBuf {
    let me = std::env::current_exe().unwrap_or_default();
    me.with_file_name("khala-chaos-child")
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let mut ok = true;
    let run_chaos = |events: u64, rate: u64| {
        let db = dir.path().join(format!("chaos-{events}.db"));
        async move {
            let mut cfg = chaos::ChaosConfig::ci(seed, db);
            cfg.events = events;
            cfg.rate = rate;
            cfg.settle_timeout = Duration::from_secs(600);
            let r = chaos::run(cfg).await;
            println!("{}", r.line());
            r.lost == 0 && r.extra == 0 && r.duplicated == 0
        }
    };
    let run_crash = |kills: u32| {
        let db = dir.path().join(format!("crash-{kills}.db"));
        async move {
            let r = crash::run(crash::CrashConfig {
                seed,
                kills,
                seed_docs: 3_000,
                rate: 2_000,
                child: child_bin(),
                db_path: db,
                child_env: Vec::new(),
                downtime: Duration::ZERO,
                kill_after_ms: (20, 1_500),
                stale_every: 3,
                first_run_until_live: false,
                kill_in_replay_every: 0,
            })
            .await;
            println!("{}", r.line());
            r.ok()
        }
    };
    let run_storm = |clients: usize| async move {
        let r = storm::run(seed, clients).await;
        println!("{}", r.line());
        r.reconnected == clients && r.max_share_100ms < 0.05
    };
    let run_memory = |events: u64, slow: u64| {
        let db = dir.path().join(format!("memory-{events}.db"));
        async move {
            let r = memory::run(child_bin(), db, events, 2_000, slow).await;
            println!("{}", r.line());
            r.caught_up && r.peak_rss_kib < 64 * 1024
        }
    };
    match cli.cmd {
        Cmd::Chaos { events, rate } => ok &= run_chaos(events, rate).await,
        Cmd::ChaosF {
            events,
            min_rate,
            max_rate,
        } => {
            let mut cfg = chaos_f::ChaosFConfig::ci(seed, dir.path().into());
            cfg.events = events;
            cfg.rate = (min_rate, max_rate);
            cfg.settle_timeout = Duration::from_secs(300);
            let r = chaos_f::run(cfg).await;
            println!("{}", r.line());
            if !r.ok() {
                println!(
                    "phases started at {:?} s; first problems: {:#?}",
                    r.phase_started_s, r.diffs
                );
            }
            ok &= r.ok();
        }
        Cmd::Crash { kills } => ok &= run_crash(kills).await,
        Cmd::Storm { clients } => ok &= run_storm(clients).await,
        Cmd::Memory {
            events,
            slow_apply_ms,
        } => ok &= run_memory(events, slow_apply_ms).await,
        Cmd::Soak => {
            ok &= run_chaos(1_000_000, 12_000).await;
            ok &= run_crash(200).await;
            ok &= run_storm(1_000).await;
            ok &= run_memory(200_000, 20).await;
        }
    }
    println!("seed={seed} result={}", if ok { "pass" } else { "FAIL" });
    if !ok {
        std::process::exit(1);
    }
}
