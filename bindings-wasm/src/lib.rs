//! # khala-sync-wasm
//!
//! The web binding of khala-sync: thin wasm-bindgen glue over the same Rust engine the native
//! and Swift clients use. No sync logic lives here or in the JavaScript wrapper; this crate
//! only moves bytes and events:
//!
//! - `net`: WebSocket (web-sys), `fetch`, timers (`setTimeout`) and the clock
//!   (`performance.now()`), all looked up on the global object so the same build runs in a
//!   window, a worker and Node.
//! - `driver`: the browser driver — the same loop as `khala_sync::native`'s tokio driver
//!   (feed the engine, execute its actions), on `spawn_local` and futures channels.
//! - `idb`: the IndexedDB store ([`khala_sync::store::Store`]): documents and the watermark
//!   are written in one IndexedDB transaction.
//! - `client`: the exported `WasmClient` class; `js/index.js` wraps it into the documented
//!   `KhalaSync.open(...)` API (async iterators, unsubscribe functions).
//!
//! Everything is compiled only for `wasm32`; on other targets the crate is empty, so the
//! workspace's host `cargo clippy` still covers it.

#[cfg(target_arch = "wasm32")]
mod client;
#[cfg(target_arch = "wasm32")]
mod convert;
#[cfg(target_arch = "wasm32")]
mod driver;
#[cfg(target_arch = "wasm32")]
pub mod idb;
#[cfg(target_arch = "wasm32")]
mod net;

#[cfg(target_arch = "wasm32")]
pub use client::{ChangeSubscription, WasmClient};
