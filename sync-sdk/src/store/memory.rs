//! In-memory store (placeholder while the real one is written in this session).

/// In-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore;
