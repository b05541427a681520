//! Local persistence: documents and per-topic watermarks, always committed together.
//!
//! The [`Store`] trait is what the driver calls; [`MemoryStore`] backs tests and
//! `persist: false`, `SqliteStore` (feature `native`) is the durable store. Browser stores
//! implement the same trait in `bindings-wasm`.
//!
//! Invariants every implementation keeps (tests in `store/conformance.rs` check both stores):
//! - `apply` is one transaction: all writes of the batch and the new watermark, or nothing.
//! - `apply` is compare-and-set on the watermark: it fails with
//!   [`StoreError::WatermarkConflict`] unless the stored watermark equals
//!   `ApplyBatch::expected_watermark`, so a batch can never be applied twice.
//! - A document's `doc_version` never regresses: an upsert whose version is not newer than the
//!   stored one, or a tombstone whose version is older than it, is skipped (and reported in
//!   [`ApplyOutcome::kept_local`]), yet the watermark still advances. A tombstone of the stored
//!   version deletes (it describes the deletion of exactly that document); a tombstone for an
//!   absent document is a no-op, not a skip.
//! - Snapshots are staged under a new generation and swapped in by `finish_snapshot` in one
//!   transaction; until then readers see the previous data and watermark, and no visible
//!   document is ever newer than its topic's visible watermark.
//! - A store bound to one identity (server, subject, org) never shows its documents to
//!   another: `bind_identity` with a different identity wipes them first.

use std::future::Future;
use std::pin::Pin;

use crate::protocol::{DocKey, PayloadHash, Topic, Watermark};

mod memory;
pub use memory::MemoryStore;

#[cfg(feature = "native")]
mod sqlite;
#[cfg(feature = "native")]
pub use sqlite::{SqliteOptions, SqliteStore, SqliteSynchronous, SCHEMA_VERSION};

#[cfg(test)]
mod conformance;

/// The future every store method returns (`Send` on native targets; not on wasm32, whose
/// browser stores live on one thread).
#[cfg(not(target_arch = "wasm32"))]
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;
/// The future every store method returns (`Send` on native targets; not on wasm32).
#[cfg(target_arch = "wasm32")]
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + 'a>>;

/// Who the local data belongs to. A database belongs to exactly one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Server origin, e.g. `https://sync.example.com` (scheme, host, port).
    pub server: String,
    /// Token subject (`user:42`), if the server said.
    pub subject: Option<String>,
    /// Organisation, if the server said.
    pub org: Option<String>,
}

/// What `bind_identity` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityCheck {
    /// The store was empty/new; it now belongs to this identity.
    Fresh,
    /// The store already belonged to this identity; its data is kept.
    Same,
    /// The store belonged to another identity; that identity's data was wiped.
    Replaced,
}

/// One document write inside a batch or snapshot page.
#[derive(Debug, Clone, PartialEq)]
pub struct DocWrite {
    /// Key.
    pub doc_key: DocKey,
    /// Version (compared to the stored one: never regress).
    pub doc_version: u64,
    /// Raw JSON payload text; `None` = tombstone (delete the document).
    pub payload: Option<String>,
    /// Hash the server gave (wire form stored as base64); `None` = no hash.
    pub payload_hash: Option<PayloadHash>,
    /// Watermark of the update that produced this write (snapshot docs: the snapshot's).
    pub watermark: Watermark,
    /// False when the hash did not match even after a resync (kept, marked unverified).
    pub verified: bool,
}

/// An atomic batch for one topic.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyBatch {
    /// The topic.
    pub topic: Topic,
    /// The watermark the store must currently hold (compare-and-set).
    pub expected_watermark: Watermark,
    /// The watermark to store with the writes.
    pub new_watermark: Watermark,
    /// Writes in watermark order. May be empty (watermark-only advance).
    pub writes: Vec<DocWrite>,
}

/// Result of a committed batch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApplyOutcome {
    /// The watermark now stored.
    pub watermark: Watermark,
    /// Indices into `writes` that were skipped because the stored doc_version was newer or
    /// equal (apply rule 4).
    pub kept_local: Vec<usize>,
}

/// A stored document.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDoc {
    /// Topic.
    pub topic: Topic,
    /// Key.
    pub doc_key: DocKey,
    /// Version.
    pub doc_version: u64,
    /// Raw JSON payload text.
    pub payload: String,
    /// Hash as received (`None` if the server sent none).
    pub payload_hash: Option<PayloadHash>,
    /// Watermark of the update that last wrote it.
    pub watermark: Watermark,
    /// False if the payload failed hash verification and was kept anyway.
    pub verified: bool,
}

/// A snapshot generation number (opaque to callers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotGen(pub u64);

/// Errors from a store. `code()` is stable across bindings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file is not a SQLite database, or it is damaged.
    #[error("the database file is corrupt or not a database: {0}")]
    Corrupt(String),
    /// A valid SQLite database that is not a khala-sync store (foreign tables, no meta).
    #[error("the database belongs to another application (no khala-sync schema)")]
    Foreign,
    /// Written by a newer khala-sync with a schema this version cannot read.
    #[error("database schema version {found} is newer than supported version {supported}")]
    SchemaTooNew {
        /// Version in the file.
        found: u32,
        /// Newest version this build understands.
        supported: u32,
    },
    /// The disk (or quota) is full; nothing of the failed batch was written.
    #[error("disk full: the batch was rolled back, committed data is intact")]
    DiskFull,
    /// The database is read-only.
    #[error("the database is read-only")]
    ReadOnly,
    /// Another writer holds the database.
    #[error("the database is locked by another process")]
    Busy,
    /// The stored watermark is not the one the batch expected (the batch was not applied).
    #[error("watermark conflict on {topic}: expected {expected}, stored {found}")]
    WatermarkConflict {
        /// Topic.
        topic: Topic,
        /// What the batch expected.
        expected: Watermark,
        /// What the store holds.
        found: Watermark,
    },
    /// The snapshot generation is no longer current (another snapshot started).
    #[error("snapshot generation for {0} is stale")]
    StaleSnapshot(Topic),
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// Any other storage failure.
    #[error("storage error: {0}")]
    Other(String),
}

impl StoreError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Corrupt(_) => "store_corrupt",
            StoreError::Foreign => "store_foreign",
            StoreError::SchemaTooNew { .. } => "store_schema_too_new",
            StoreError::DiskFull => "store_disk_full",
            StoreError::ReadOnly => "store_read_only",
            StoreError::Busy => "store_busy",
            StoreError::WatermarkConflict { .. } => "store_watermark_conflict",
            StoreError::StaleSnapshot(_) => "store_stale_snapshot",
            StoreError::Closed => "store_closed",
            StoreError::Other(_) => "store_error",
        }
    }

    /// Whether retrying later can succeed without the user doing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Busy | StoreError::WatermarkConflict { .. } | StoreError::StaleSnapshot(_)
        )
    }
}

/// Durable (or in-memory) storage of documents and watermarks.
///
/// Object-safe: the driver holds an `Arc<dyn Store>`.
pub trait Store: Send + Sync + 'static {
    /// Binds the store to an identity; wipes another identity's data (see [`IdentityCheck`]).
    fn bind_identity(&self, identity: Identity) -> StoreFuture<'_, IdentityCheck>;

    /// Committed watermark of every known topic.
    fn watermarks(&self) -> StoreFuture<'_, Vec<(Topic, Watermark)>>;

    /// Applies one batch atomically (see module docs for the rules).
    fn apply(&self, batch: ApplyBatch) -> StoreFuture<'_, ApplyOutcome>;

    /// Starts a snapshot of `topic` under a new generation, discarding any unfinished one.
    fn begin_snapshot(&self, topic: Topic) -> StoreFuture<'_, SnapshotGen>;

    /// Stages one snapshot page (invisible to readers until `finish_snapshot`).
    fn put_snapshot_page(
        &self,
        topic: Topic,
        generation: SnapshotGen,
        docs: Vec<DocWrite>,
    ) -> StoreFuture<'_, ()>;

    /// Atomically replaces the topic's documents with the staged generation and sets the
    /// watermark to `snapshot_watermark`.
    fn finish_snapshot(
        &self,
        topic: Topic,
        generation: SnapshotGen,
        snapshot_watermark: Watermark,
    ) -> StoreFuture<'_, ()>;

    /// One document.
    fn get(&self, topic: Topic, doc_key: DocKey) -> StoreFuture<'_, Option<StoredDoc>>;

    /// Every document of a topic, sorted by `doc_key`.
    fn list(&self, topic: Topic) -> StoreFuture<'_, Vec<StoredDoc>>;
}
