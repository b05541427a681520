//! Reference Khala dev server for khala-sync's tests and demo.
//!
//! Implements dialect P of `PROTOCOL.md` (the Phoenix channel `sync:v1`, §2), the token route
//! (§1), the (khala-sync) snapshot and doc routes (§3, §4), fan-out metrics (§5), dialect F
//! (the runtime fanout's per-topic WebSocket and poll routes over event logs, §6, mimicking
//! the observed behaviour of §6.1) and the clarifications of §7, plus a `/dev` control API
//! (publish, events, faults, state) for tests.
//! It is an independent implementation — it does not depend on the `khala-sync` crate — so
//! it cross-checks the SDK rather than mirroring it. See `README.md` for the decisions taken
//! where PROTOCOL.md leaves room.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use khala_dev_server::{DevServer, DevServerConfig};
//! let server = DevServer::start(DevServerConfig::default()).await?;
//! let wm = server.publish("runtime.run_summaries", "runtime/run_summary:1", serde_json::json!({"status": "running"}));
//! assert_eq!(server.head("runtime.run_summaries"), wm);
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod canonical;
mod config;
mod fanout;
mod faults;
mod frames;
mod http;
pub mod jwt;
mod log;
mod metrics;
mod seed;
mod server;
mod socket;
mod state;
mod time;
mod web;

pub use canonical::{
    canonical_json, payload_digest, payload_hash, payload_hash_display, payload_hash_of_raw,
};
pub use config::{DevServerConfig, FanoutConfig, Principal, TopicSpec};
pub use fanout::{EventMessage, FanoutRequest, FanoutRequestKind};
pub use faults::{ActiveFaults, Faults, ForceStale};
pub use metrics::{FanoutTopicMetrics, MetricsSnapshot, TopicMetrics};
pub use server::{DevServer, DocState, TestToken};
pub use state::{PublishError, PublishItem, Published, ServerState};
