//! `khala-dev-server`: the reference Khala server as a standalone process.

use clap::Parser;
use khala_dev_server::{DevServer, DevServerConfig};
use std::time::Duration;

/// Reference Khala dev server (dialect P + snapshot/doc routes + /dev control API).
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
        ..DevServerConfig::default()
    };
    let server = DevServer::start(config).await?;
    println!("khala dev server: {}", server.base_url());
    println!("app token: {}", DevServer::APP_TOKEN);
    println!("limited app token: {}", DevServer::LIMITED_APP_TOKEN);
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
