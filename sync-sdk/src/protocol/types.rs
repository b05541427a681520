//! Newtypes shared by every dialect: topic names, watermarks, document keys.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A Khala topic name such as `runtime.run_summaries` (PROTOCOL.md §2.5).
///
/// Non-empty and at most [`Topic::MAX_LEN`] bytes; the wire may carry anything, so
/// construction goes through [`Topic::new`]. Cheap to clone (a shared string): every update,
/// write and change carries its topic.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Longest topic name accepted (bytes).
    pub const MAX_LEN: usize = 512;

    /// Validates and wraps a topic name.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
        let name = name.into();
        Self::check(&name)?;
        Ok(Topic(Arc::from(name)))
    }

    fn check(name: &str) -> Result<(), InvalidName> {
        if name.is_empty() || name.len() > Self::MAX_LEN || name.chars().any(char::is_control) {
            return Err(InvalidName { kind: "topic" });
        }
        Ok(())
    }

    /// The topic name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A topic name read off the wire: a replay repeats one topic in every update, so the
    /// topic decoded last on this thread is reused instead of allocating a string per update.
    pub(crate) fn from_wire(s: &str) -> Result<Self, InvalidName> {
        let cached = LAST_TOPIC.with(|c| c.borrow().as_ref().filter(|t| t.as_str() == s).cloned());
        if let Some(t) = cached {
            return Ok(t);
        }
        Self::check(s)?;
        let t = Topic(Arc::from(s));
        LAST_TOPIC.with(|c| *c.borrow_mut() = Some(t.clone()));
        Ok(t)
    }
}

impl Serialize for Topic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

thread_local! {
    /// The topic decoded last on this thread: a replay carries the same topic in every
    /// update, so decoding reuses it instead of allocating a string per update.
    static LAST_TOPIC: std::cell::RefCell<Option<Topic>> = const { std::cell::RefCell::new(None) };
}

impl<'de> Deserialize<'de> for Topic {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Topic;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a topic name")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Topic, E> {
                Topic::from_wire(s).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod topic_decode_tests {
    use super::Topic;

    #[test]
    fn decoding_reuses_the_last_topic_and_still_validates() {
        let a: Vec<Topic> = serde_json::from_str(r#"["a","a","b","a","b\u0061"]"#).unwrap();
        let names: Vec<&str> = a.iter().map(Topic::as_str).collect();
        assert_eq!(names, ["a", "a", "b", "a", "ba"]);
        // The same shared string, not a copy per element.
        assert!(std::sync::Arc::ptr_eq(&a[0].0, &a[1].0));
        for bad in [r#""""#, r#""x\u0001""#, "1", "null"] {
            assert!(serde_json::from_str::<Topic>(bad).is_err(), "{bad}");
        }
        let long = format!("\"{}\"", "t".repeat(Topic::MAX_LEN + 1));
        assert!(serde_json::from_str::<Topic>(&long).is_err());
    }
}
