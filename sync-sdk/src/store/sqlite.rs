//! SQLite store (placeholder while the real one is written in this session).

/// Options for [`SqliteStore`].
#[derive(Debug, Default)]
pub struct SqliteOptions;
/// SQLite store.
#[derive(Debug)]
pub struct SqliteStore;
