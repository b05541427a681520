//! Newtypes shared by every dialect: topic names, watermarks, document keys.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A Khala topic name such as `runtime.run_summaries` (PROTOCOL.md §2.5).
///
/// Non-empty and at most [`Topic::MAX_LEN`] bytes; the wire may carry anything, so
/// construction goes through [`Topic::new`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Topic(String);

impl Topic {
    /// Longest topic name accepted (bytes).
    pub const MAX_LEN: usize = 512;

    /// Validates and wraps a topic name.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
        let name = name.into();
        if name.is_empty() || name.len() > Self::MAX_LEN || name.chars().any(char::is_control) {
            return Err(InvalidName { kind: "topic" });
        }
        Ok(Topic(name))
    }

    /// The topic name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Topic {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Topic::new(s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A document key inside a topic, e.g. `runtime/run_summary:019c7f93`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct DocKey(String);

impl DocKey {
    /// Longest document key accepted (bytes).
    pub const MAX_LEN: usize = 4096;

    /// Validates and wraps a document key.
    pub fn new(key: impl Into<String>) -> Result<Self, InvalidName> {
        let key = key.into();
        if key.is_empty() || key.len() > Self::MAX_LEN {
            return Err(InvalidName { kind: "doc_key" });
        }
        Ok(DocKey(key))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The decimal form of a sequence number (dialect F's document keys); always valid.
    pub(crate) fn from_sequence(seq: u64) -> Self {
        DocKey(seq.to_string())
    }
}

impl<'de> Deserialize<'de> for DocKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DocKey::new(s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for DocKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for DocKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A position in a topic's dense, 1-based sequence (P: `watermark`, F: `sequence`).
///
/// `Watermark(0)` means "nothing applied yet".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Watermark(pub u64);

impl Watermark {
    /// Nothing applied.
    pub const ZERO: Watermark = Watermark(0);

    /// The raw sequence number.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The next position (saturating).
    pub fn next(self) -> Watermark {
        Watermark(self.0.saturating_add(1))
    }
}

impl fmt::Debug for Watermark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "W{}", self.0)
    }
}

impl fmt::Display for Watermark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A name (topic or doc key) failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: empty, too long, or contains control characters")]
pub struct InvalidName {
    kind: &'static str,
}
