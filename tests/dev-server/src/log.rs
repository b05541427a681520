//! Per-topic append-only update log with retention (PROTOCOL.md §0, §2.4).
//!
//! The log keeps the retained entries plus a compacted `base`: the document set as of the
//! retention floor. That lets a snapshot describe the topic as of any watermark
//! `>= floor` (base + retained entries up to it), so pages pinned to one watermark never see
//! later publishes.

use serde_json::value::RawValue;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// One update of a topic.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Document key.
    pub doc_key: String,
    /// Per-document version counter (1, 2, …; continues across delete/re-create).
    pub doc_version: u64,
    /// The payload exactly as published; `None` for tombstones.
    pub payload: Option<Arc<RawValue>>,
    /// Standard base64 sha256 of the canonical payload; `None` for tombstones.
    pub payload_hash: Option<String>,
    /// Dense per-topic sequence, from 1.
    pub watermark: u64,
    /// Tombstone.
    pub deleted: bool,
}

impl Entry {
    /// Raw payload text (`null` for tombstones).
    pub fn payload_text(&self) -> &str {
        self.payload.as_deref().map_or("null", RawValue::get)
    }
}

/// The log of one topic. `Clone` copies `Arc`s only, so exporting the state is cheap.
#[derive(Debug, Clone, Default)]
pub struct TopicLog {
    head: u64,
    entries: VecDeque<Arc<Entry>>,
    /// Live docs as of the floor (entries compacted out of `entries`).
    base: BTreeMap<String, Arc<Entry>>,
    /// Latest entry per doc key, tombstones included (for versions and the doc route).
    current: BTreeMap<String, Arc<Entry>>,
    /// The last doc set built by `docs_as_of`: every page of one snapshot asks for the same
    /// pinned watermark, so it is built once per snapshot instead of once per page.
    as_of: AsOfCache,
}

/// A live doc set, sorted by key.
type DocSet = Arc<BTreeMap<String, Arc<Entry>>>;

/// One cached `docs_as_of` result (not cloned with the log).
#[derive(Debug, Default)]
struct AsOfCache(std::sync::Mutex<Option<(u64, DocSet)>>);

impl Clone for AsOfCache {
    fn clone(&self) -> Self {
        AsOfCache::default()
    }
}

impl TopicLog {
    /// Highest assigned watermark (0 when empty).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// `max(min retained watermark - 1, 0)`; equals `head` when nothing is retained.
    pub fn floor(&self) -> u64 {
        self.entries
            .front()
            .map_or(self.head, |e| e.watermark.saturating_sub(1))
    }

    /// Number of retained entries.
    pub fn retained(&self) -> usize {
        self.entries.len()
    }

    /// Appends an update and returns it; `max_retained` bounds the retained entries.
    pub fn append(
        &mut self,
        doc_key: &str,
        payload: Option<Arc<RawValue>>,
        payload_hash: Option<String>,
        max_retained: usize,
    ) -> Arc<Entry> {
        let doc_version = self.current.get(doc_key).map_or(0, |e| e.doc_version) + 1;
        self.head += 1;
        let deleted = payload.is_none();
        let entry = Arc::new(Entry {
            doc_key: doc_key.to_owned(),
            doc_version,
            payload,
            payload_hash,
            watermark: self.head,
            deleted,
        });
        self.entries.push_back(entry.clone());
        self.current.insert(doc_key.to_owned(), entry.clone());
        while self.entries.len() > max_retained.max(1) {
            self.compact_one();
        }
        entry
    }

    fn compact_one(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            if e.deleted {
                self.base.remove(&e.doc_key);
            } else {
                self.base.insert(e.doc_key.clone(), e);
            }
        }
    }

    /// Drops every retained entry below `watermark` (the floor becomes `watermark - 1`,
    /// capped at head).
    pub fn truncate_before(&mut self, watermark: u64) {
        while self
            .entries
            .front()
            .is_some_and(|e| e.watermark < watermark)
        {
            self.compact_one();
        }
    }

    /// Up to `max` retained entries with watermark `> after`, ascending.
    pub fn range_after(&self, after: u64, max: usize) -> Vec<Arc<Entry>> {
        let Some(first) = self.entries.front() else {
            return Vec::new();
        };
        let start = after.saturating_add(1).max(first.watermark);
        let offset = usize::try_from(start - first.watermark).unwrap_or(usize::MAX);
        self.entries
            .iter()
            .skip(offset)
            .take(max)
            .cloned()
            .collect()
    }

    /// Latest live entry of a doc (`None` when unknown or deleted).
    pub fn live_doc(&self, doc_key: &str) -> Option<Arc<Entry>> {
        self.current.get(doc_key).filter(|e| !e.deleted).cloned()
    }

    /// Every live doc now, sorted by key.
    pub fn live_docs(&self) -> Vec<Arc<Entry>> {
        self.current
            .values()
            .filter(|e| !e.deleted)
            .cloned()
            .collect()
    }

    /// The live doc set as of `watermark` (`floor <= watermark <= head`), sorted by key.
    pub fn docs_as_of(&self, watermark: u64) -> Option<DocSet> {
        if watermark < self.floor() || watermark > self.head {
            return None;
        }
        if let Ok(cache) = self.as_of.0.lock() {
            if let Some((w, docs)) = cache.as_ref() {
                if *w == watermark {
                    return Some(Arc::clone(docs));
                }
            }
        }
        let docs = if watermark == self.head {
            // At the head the live set is the current entries minus tombstones.
            self.current
                .iter()
                .filter(|(_, e)| !e.deleted)
                .map(|(k, e)| (k.clone(), Arc::clone(e)))
                .collect()
        } else {
            let mut docs = self.base.clone();
            for e in self.entries.iter().take_while(|e| e.watermark <= watermark) {
                if e.deleted {
                    docs.remove(&e.doc_key);
                } else {
                    docs.insert(e.doc_key.clone(), e.clone());
                }
            }
            docs
        };
        let docs = Arc::new(docs);
        if let Ok(mut cache) = self.as_of.0.lock() {
            *cache = Some((watermark, Arc::clone(&docs)));
        }
        Some(docs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Option<Arc<RawValue>> {
        serde_json::value::RawValue::from_string(s.to_owned())
            .ok()
            .map(Arc::from)
    }

    #[test]
    fn retention_moves_floor_and_keeps_state() {
        let mut log = TopicLog::default();
        log.append("a", raw("1"), None, 3);
        log.append("b", raw("2"), None, 3);
        log.append("a", raw("3"), None, 3);
        assert_eq!((log.head(), log.floor()), (3, 0));
        log.append("b", None, None, 3);
        assert_eq!((log.head(), log.floor()), (4, 1));
        let at1 = log.docs_as_of(1);
        assert!(at1.is_some_and(|d| d.len() == 1));
        let at4 = log.docs_as_of(4).unwrap_or_default();
        let at4_again = log.docs_as_of(4).unwrap_or_default();
        assert!(Arc::ptr_eq(&at4, &at4_again), "cached per watermark");
        assert_eq!(at4.keys().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(at4.get("a").map(|e| e.doc_version), Some(2));
        assert!(log.docs_as_of(0).is_none());
        log.truncate_before(4);
        assert_eq!(log.floor(), 3);
        assert_eq!(log.range_after(0, 10).len(), 1);
        log.truncate_before(100);
        assert_eq!((log.floor(), log.retained()), (4, 0));
        assert_eq!(log.docs_as_of(4).map(|d| d.len()), Some(1));
        assert_eq!(log.append("b", raw("5"), None, 3).doc_version, 3);
    }
}
