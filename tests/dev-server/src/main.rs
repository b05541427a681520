//! `khala-dev-server`: the reference Khala server as a standalone process.

use clap::Parser;
use khala_dev_server::{DevServer, DevServerConfig, FanoutConfig};
use serde_json::json;
use std::time::Duration;

/// Reference Khala dev server (dialect P + dialect F + snapshot/doc routes + /dev control API).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Port on 127.0.0.1 (0 = ephemeral).
    #[arg(long, default_value_t = 4010)]
    port: u16,
    /// Documents to seed at start.
    #[arg(long, default_value_t = 0)]
    seed_docs: usize,
    /// Live updates per second.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// PRNG seed of the generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Payloads above this many bytes go out with `hydration_required`.
    #[arg(long, default_value_t = 64 * 1024)]
    hydration_threshold_bytes: usize,
    /// Retained log entries per topic.
    #[arg(long, default_value_t = 50_000)]
    max_retained_per_topic: usize,
    /// Default token TTL (seconds).
    #[arg(long, default_value_t = 300)]
    token_ttl_seconds: u64,
    /// Server heartbeat push interval (seconds).
    #[arg(long, default_value_t = 15)]
    heartbeat_seconds: u64,
    /// Idle timeout (seconds).
    #[arg(long, default_value_t = 60)]
    idle_timeout_seconds: u64,
    /// Per-socket outbound queue limit (frames).
    #[arg(long, default_value_t = 64)]
    outbound_queue_limit: usize,
    /// Dialect F: create run ID with `run.started` plus N−1 `run.step` events
    /// (payload `{"step": i}`); repeatable.
    #[arg(long = "seed-run", value_name = "ID:N", value_parser = parse_seed_run)]
    seed_run: Vec<(String, u64)>,
    /// Dialect F: messages retained per event topic.
    #[arg(long, default_value_t = 1024)]
    ring_capacity: usize,
    /// Serve no Phoenix socket (dialect P's socket route answers 404).
    #[arg(long)]
    no_phoenix: bool,
}

fn parse_seed_run(s: &str) -> Result<(String, u64), String> {
    let (id, n) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected ID:N, got {s:?}"))?;
    let n: u64 = n
        .parse()
        .map_err(|_| format!("N must be a positive integer in {s:?}"))?;
    if n == 0 || id.is_empty() {
        return Err(format!("expected a run id and N >= 1 in {s:?}"));
    }
    Ok((id.to_owned(), n))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let config = DevServerConfig {
        port: args.port,
        seed_docs: args.seed_docs,
        seed: args.seed,
        rate_per_sec: args.rate,
        hydration_threshold_bytes: args.hydration_threshold_bytes,
        max_retained_per_topic: args.max_retained_per_topic,
        token_ttl_seconds: args.token_ttl_seconds,
        heartbeat_interval: Duration::from_secs(args.heartbeat_seconds.max(1)),
        idle_timeout: Duration::from_secs(args.idle_timeout_seconds.max(1)),
        outbound_queue_limit: args.outbound_queue_limit,
        fanout: FanoutConfig {
            ring_capacity: args.ring_capacity.max(1),
            ..FanoutConfig::default()
        },
        phoenix_enabled: !args.no_phoenix,
        ..DevServerConfig::default()
    };
    let server = DevServer::start(config).await?;
    for (run_id, n) in &args.seed_run {
        let topic = format!("run:{run_id}:events");
        match server.try_publish_event_raw(
            &topic,
            "run.started",
            &json!({"run_id": run_id}).to_string(),
        ) {
            Ok(_) => {}
            Err(e) => {
                eprintln!("--seed-run {run_id}:{n}: {e}");
                std::process::exit(2);
            }
        }
        for i in 1..*n {
            server.publish_event(&topic, "run.step", json!({"step": i}));
        }
        println!("seeded {topic}: head {}", server.event_head(&topic));
    }
    println!("khala dev server: {}", server.base_url());
    println!("app token: {}", DevServer::APP_TOKEN);
    println!("limited app token: {}", DevServer::LIMITED_APP_TOKEN);
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
