//! Wire types and codecs for the Khala sync protocol (`../shared/PROTOCOL.md`).
//!
//! Pure: no IO, no clocks. Every decoder is total — malformed, oversize, wrong-typed or
//! unknown input gives a [`ProtocolError`], never a panic.

mod error;
pub mod fanout;
pub mod hash;
pub mod http;
pub mod phoenix;
pub mod token;
mod types;
mod update;

pub use error::{DecodeLimits, ProtocolError};
pub use hash::PayloadHash;
pub use types::{DocKey, InvalidName, Topic, Watermark};
pub use update::{
    ServerError, SlowConsumer, StaleCursor, StaleTopic, TopicWatermark, Update, UpdateBatch,
    UpgradeRequired, UPGRADE_CODES,
};

pub mod json;
pub use json::RawJson;
