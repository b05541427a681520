//! In-memory store: the reference model of the store semantics, used by tests and for
//! `persist: false`. Same rules as SQLite (see the module docs of `store`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::{
    ApplyBatch, ApplyOutcome, DocWrite, Identity, IdentityCheck, SnapshotGen, Store, StoreError,
    StoreFuture, StoredDoc,
};
use crate::protocol::{DocKey, Topic, Watermark};

#[derive(Debug, Default)]
struct TopicData {
    watermark: Watermark,
    docs: BTreeMap<DocKey, StoredDoc>,
    generation: u64,
    staged: Option<(u64, BTreeMap<DocKey, StoredDoc>)>,
}

#[derive(Debug, Default)]
struct Inner {
    identity: Option<Identity>,
    topics: HashMap<Topic, TopicData>,
    next_gen: u64,
}

/// A store that lives in memory only.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut g = self.inner.lock().map_err(|_| StoreError::Other("store mutex poisoned".into()))?;
        f(&mut g)
    }
}

fn stored(topic: &Topic, w: &DocWrite, payload: String) -> StoredDoc {
    StoredDoc {
        topic: topic.clone(),
        doc_key: w.doc_key.clone(),
        doc_version: w.doc_version,
        payload,
        payload_hash: w.payload_hash,
        watermark: w.watermark,
        verified: w.verified,
    }
}

impl Store for MemoryStore {
    fn bind_identity(&self, identity: Identity) -> StoreFuture<'_, IdentityCheck> {
        let r = self.with(|g| {
            Ok(match &g.identity {
                None => {
                    g.identity = Some(identity);
                    IdentityCheck::Fresh
                }
                Some(cur) if *cur == identity => IdentityCheck::Same,
                Some(_) => {
                    g.topics.clear();
                    g.identity = Some(identity);
                    IdentityCheck::Replaced
                }
            })
        });
        Box::pin(std::future::ready(r))
    }

    fn watermarks(&self) -> StoreFuture<'_, Vec<(Topic, Watermark)>> {
        let r = self.with(|g| {
            let mut v: Vec<(Topic, Watermark)> =
                g.topics.iter().map(|(t, d)| (t.clone(), d.watermark)).collect();
            v.sort();
            Ok(v)
        });
        Box::pin(std::future::ready(r))
    }

    fn apply(&self, batch: ApplyBatch) -> StoreFuture<'_, ApplyOutcome> {
        let r = self.with(|g| {
            let td = g.topics.entry(batch.topic.clone()).or_default();
            if td.watermark != batch.expected_watermark {
                return Err(StoreError::WatermarkConflict {
                    topic: batch.topic.clone(),
                    expected: batch.expected_watermark,
                    found: td.watermark,
                });
            }
            let mut kept_local = Vec::new();
            for (i, w) in batch.writes.iter().enumerate() {
                let current = td.docs.get(&w.doc_key).map(|d| d.doc_version);
                match &w.payload {
                    Some(p) => {
                        if current.is_some_and(|v| v >= w.doc_version) {
                            kept_local.push(i);
                        } else {
                            td.docs.insert(w.doc_key.clone(), stored(&batch.topic, w, p.clone()));
                        }
                    }
                    None => {
                        if current.is_some_and(|v| v > w.doc_version) {
                            kept_local.push(i);
                        } else {
                            td.docs.remove(&w.doc_key);
                        }
                    }
                }
            }
            td.watermark = batch.new_watermark;
            Ok(ApplyOutcome {
                watermark: td.watermark,
                kept_local,
            })
        });
        Box::pin(std::future::ready(r))
    }

    fn begin_snapshot(&self, topic: Topic) -> StoreFuture<'_, SnapshotGen> {
        let r = self.with(|g| {
            g.next_gen += 1;
            let generation = g.next_gen;
            let td = g.topics.entry(topic).or_default();
            td.staged = Some((generation, BTreeMap::new()));
            Ok(SnapshotGen(generation))
        });
        Box::pin(std::future::ready(r))
    }

    fn put_snapshot_page(
        &self,
        topic: Topic,
        generation: SnapshotGen,
        docs: Vec<DocWrite>,
    ) -> StoreFuture<'_, ()> {
        let r = self.with(|g| {
            let td = g.topics.entry(topic.clone()).or_default();
            match &mut td.staged {
                Some((gen, staged)) if *gen == generation.0 => {
                    for w in &docs {
                        if let Some(p) = &w.payload {
                            staged.insert(w.doc_key.clone(), stored(&topic, w, p.clone()));
                        }
                    }
                    Ok(())
                }
                _ => Err(StoreError::StaleSnapshot(topic)),
            }
        });
        Box::pin(std::future::ready(r))
    }

    fn finish_snapshot(
        &self,
        topic: Topic,
        generation: SnapshotGen,
        snapshot_watermark: Watermark,
    ) -> StoreFuture<'_, ()> {
        let r = self.with(|g| {
            let td = g.topics.entry(topic.clone()).or_default();
            match td.staged.take() {
                Some((gen, staged)) if gen == generation.0 => {
                    td.docs = staged;
                    td.generation = gen;
                    td.watermark = snapshot_watermark;
                    Ok(())
                }
                other => {
                    td.staged = other;
                    Err(StoreError::StaleSnapshot(topic))
                }
            }
        });
        Box::pin(std::future::ready(r))
    }

    fn get(&self, topic: Topic, doc_key: DocKey) -> StoreFuture<'_, Option<StoredDoc>> {
        let r = self.with(|g| Ok(g.topics.get(&topic).and_then(|t| t.docs.get(&doc_key)).cloned()));
        Box::pin(std::future::ready(r))
    }

    fn list(&self, topic: Topic) -> StoreFuture<'_, Vec<StoredDoc>> {
        let r = self.with(|g| {
            Ok(g.topics
                .get(&topic)
                .map(|t| t.docs.values().cloned().collect())
                .unwrap_or_default())
        });
        Box::pin(std::future::ready(r))
    }
}
