//! In-memory store: the reference model of the store semantics, used by tests and for
//! `persist: false`. Same rules as SQLite (see the module docs of `store`); the conformance
//! tests run every scenario against both and compare them on random operation sequences.
//!
//! Plain `std` only (no tokio, no rusqlite), so it also backs the wasm32 build. Every method
//! does its work under the mutex before returning an already-ready future.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use super::{
    ApplyBatch, ApplyOutcome, DocWrite, Identity, IdentityCheck, SnapshotGen, Store, StoreError,
    StoreFuture, StoredDoc,
};
use crate::protocol::{DocKey, Topic, Watermark};

type Docs = BTreeMap<DocKey, StoredDoc>;

#[derive(Debug, Default)]
struct TopicData {
    /// Committed watermark (what readers and `apply` see).
    watermark: Watermark,
    /// Committed documents.
    docs: Docs,
    /// The snapshot being loaded, invisible until `finish_snapshot`.
    staged: Option<(SnapshotGen, Docs)>,
}

#[derive(Debug, Default)]
struct Inner {
    identity: Option<Identity>,
    topics: HashMap<Topic, TopicData>,
    /// Last generation handed out; never reset (not even by an identity wipe), so a stale
    /// [`SnapshotGen`] is never mistaken for a current one.
    last_gen: u64,
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

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Other("memory store mutex poisoned".into()))
    }

    /// Runs `f` under the lock; the work is done before the (ready) future is returned.
    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T, StoreError>,
    ) -> StoreFuture<'_, T> {
        let result = self.lock().and_then(|mut g| f(&mut g));
        Box::pin(std::future::ready(result))
    }
}

fn stored(topic: &Topic, w: &DocWrite, payload: &str) -> StoredDoc {
    StoredDoc {
        topic: topic.clone(),
        doc_key: w.doc_key.clone(),
        doc_version: w.doc_version,
        payload: payload.to_owned(),
        payload_hash: w.payload_hash,
        watermark: w.watermark,
        verified: w.verified,
    }
}

/// Writes `w` into `docs` following the never-regress rule. An upsert needs a version newer
/// than the stored one (`>=` when `replace_equal`, used inside a snapshot); a tombstone
/// deletes when its version is `>=` the stored one. Returns false when a stored document
/// was kept instead.
fn write_doc(docs: &mut Docs, topic: &Topic, w: &DocWrite, replace_equal: bool) -> bool {
    let current = docs.get(&w.doc_key).map(|d| d.doc_version);
    match &w.payload {
        Some(p) => {
            let newer = match current {
                None => true,
                Some(v) if replace_equal => w.doc_version >= v,
                Some(v) => w.doc_version > v,
            };
            if newer {
                docs.insert(w.doc_key.clone(), stored(topic, w, p));
            }
            newer
        }
        None => match current {
            Some(v) if v > w.doc_version => false,
            Some(_) => {
                docs.remove(&w.doc_key);
                true
            }
            None => true,
        },
    }
}

fn stale(topic: Topic) -> StoreError {
    StoreError::StaleSnapshot(topic)
}

impl Store for MemoryStore {
    fn bind_identity(&self, identity: Identity) -> StoreFuture<'_, IdentityCheck> {
        self.with(|g| {
            let check = match &g.identity {
                None => IdentityCheck::Fresh,
                Some(current) if *current == identity => return Ok(IdentityCheck::Same),
                Some(_) => {
                    g.topics.clear();
                    IdentityCheck::Replaced
                }
            };
            g.identity = Some(identity);
            Ok(check)
        })
    }

    fn watermarks(&self) -> StoreFuture<'_, Vec<(Topic, Watermark)>> {
        self.with(|g| {
            let mut v: Vec<(Topic, Watermark)> = g
                .topics
                .iter()
                .map(|(t, d)| (t.clone(), d.watermark))
                .collect();
            v.sort();
            Ok(v)
        })
    }

    fn apply(&self, batch: ApplyBatch) -> StoreFuture<'_, ApplyOutcome> {
        self.with(move |g| {
            let found = g
                .topics
                .get(&batch.topic)
                .map_or(Watermark(0), |t| t.watermark);
            if found != batch.expected_watermark {
                return Err(StoreError::WatermarkConflict {
                    topic: batch.topic,
                    expected: batch.expected_watermark,
                    found,
                });
            }
            let td = g.topics.entry(batch.topic.clone()).or_default();
            let kept_local = batch
                .writes
                .iter()
                .enumerate()
                .filter(|(_, w)| !write_doc(&mut td.docs, &batch.topic, w, false))
                .map(|(i, _)| i)
                .collect();
            td.watermark = batch.new_watermark;
            Ok(ApplyOutcome {
                watermark: td.watermark,
                kept_local,
            })
        })
    }

    fn begin_snapshot(&self, topic: Topic) -> StoreFuture<'_, SnapshotGen> {
        self.with(|g| {
            g.last_gen += 1;
            let generation = SnapshotGen(g.last_gen);
            g.topics.entry(topic).or_default().staged = Some((generation, Docs::new()));
            Ok(generation)
        })
    }

    fn put_snapshot_page(
        &self,
        topic: Topic,
        generation: SnapshotGen,
        docs: Vec<DocWrite>,
    ) -> StoreFuture<'_, ()> {
        self.with(move |g| {
            let Some((_, staged)) = g
                .topics
                .get_mut(&topic)
                .and_then(|t| t.staged.as_mut())
                .filter(|(current, _)| *current == generation)
            else {
                return Err(stale(topic));
            };
            for w in &docs {
                write_doc(staged, &topic, w, true);
            }
            Ok(())
        })
    }

    fn finish_snapshot(
        &self,
        topic: Topic,
        generation: SnapshotGen,
        snapshot_watermark: Watermark,
    ) -> StoreFuture<'_, ()> {
        self.with(move |g| {
            let Some(td) = g
                .topics
                .get_mut(&topic)
                .filter(|t| t.staged.as_ref().is_some_and(|(s, _)| *s == generation))
            else {
                return Err(stale(topic));
            };
            if let Some((_, staged)) = td.staged.take() {
                td.docs = staged;
                td.watermark = snapshot_watermark;
            }
            Ok(())
        })
    }

    fn get(&self, topic: Topic, doc_key: DocKey) -> StoreFuture<'_, Option<StoredDoc>> {
        self.with(move |g| {
            Ok(g.topics
                .get(&topic)
                .and_then(|t| t.docs.get(&doc_key))
                .cloned())
        })
    }

    fn list(&self, topic: Topic) -> StoreFuture<'_, Vec<StoredDoc>> {
        self.with(move |g| {
            Ok(g.topics
                .get(&topic)
                .map(|t| t.docs.values().cloned().collect())
                .unwrap_or_default())
        })
    }
}
