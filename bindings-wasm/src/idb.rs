//! The IndexedDB store: [`khala_sync::store::Store`] on `rexie`, same semantics as
//! `MemoryStore`/`SqliteStore` (the shared conformance scenarios run against it in headless
//! Chromium, see `tests/browser.rs`).
//!
//! Layout (database version 2, three object stores, out-of-line keys, JSON string values):
//!
//! | store    | key                        | value                                             |
//! |----------|----------------------------|---------------------------------------------------|
//! | `docs`   | `[topic, gen, doc_key]`    | `{"k","v","p","h","w","ok"}`                      |
//! | `topics` | `topic`                    | `{"w": watermark, "c": visible gen, "g": staged}` |
//! | `meta`   | `"identity"`, `"last_gen"` | identity JSON, last generation handed out         |
//!
//! Documents are keyed by generation: readers and `apply` see only the topic's visible
//! generation `c` (0 until the first snapshot); snapshot pages are written under the staged
//! generation `g`, invisible until `finish_snapshot` flips `c` to it, deletes the old
//! generation's key range and sets the watermark — one transaction, no copying.
//!
//! Every method is one IndexedDB transaction. `apply` reads the topic's watermark
//! (compare-and-set), writes the documents and the new watermark in the *same* read-write
//! transaction, so a batch is committed whole or not at all. On any error the transaction is
//! aborted explicitly (IndexedDB would otherwise auto-commit earlier writes).
//!
//! `Store` requires `Send + Sync`, which JS handles are not; the `Rexie` handle therefore
//! lives in a thread-local registry and `IdbStore` holds only its id (wasm32 without atomics
//! has exactly one thread, so this is not a restriction).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use futures::future::{join_all, LocalBoxFuture};
use rexie::{KeyRange, ObjectStore, Rexie, Transaction, TransactionMode};
use serde::{Deserialize, Serialize};
use wasm_bindgen::JsValue;

use khala_sync::protocol::{DocKey, PayloadHash, Topic, Watermark};
use khala_sync::store::{
    ApplyBatch, ApplyOutcome, DocWrite, Identity, IdentityCheck, SnapshotGen, Store, StoreError,
    StoreFuture, StoredDoc,
};

const DOCS: &str = "docs";
const TOPICS: &str = "topics";
const META: &str = "meta";
const DB_VERSION: u32 = 2;

thread_local! {
    static DATABASES: RefCell<HashMap<u64, Rc<Rexie>>> = RefCell::new(HashMap::new());
    static NEXT_ID: Cell<u64> = const { Cell::new(0) };
}

/// A durable store in the browser's IndexedDB (one database per `name`).
#[derive(Debug)]
pub struct IdbStore {
    id: u64,
    name: String,
}

fn err(e: rexie::Error) -> StoreError {
    let msg = match e {
        rexie::Error::IdbError(i) => i.to_string(),
        other => other.to_string(),
    };
    if msg.contains("QuotaExceeded") {
        StoreError::DiskFull
    } else if msg.contains("InvalidStateError") && msg.contains("clos") {
        StoreError::Closed
    } else {
        StoreError::Other(format!("IndexedDB: {msg}"))
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "IndexedDB record {what} is not a khala-sync record"
    ))
}

#[derive(Serialize, Deserialize)]
struct DocRec {
    k: String,
    v: u64,
    p: String,
    h: Option<String>,
    w: u64,
    ok: bool,
}

#[derive(Serialize, Deserialize, Default, Clone, Copy)]
struct TopicRec {
    /// Committed watermark.
    w: u64,
    /// Visible generation (0 before the first snapshot).
    #[serde(default)]
    c: u64,
    /// Staged (unfinished) generation.
    g: Option<u64>,
}

#[derive(Serialize, Deserialize, PartialEq)]
struct IdentityRec {
    server: String,
    subject: Option<String>,
    org: Option<String>,
}

fn to_value<T: Serialize>(v: &T) -> Result<JsValue, StoreError> {
    serde_json::to_string(v)
        .map(|s| JsValue::from_str(&s))
        .map_err(|e| StoreError::Other(format!("encode: {e}")))
}

fn from_value<T: for<'de> Deserialize<'de>>(v: &JsValue, what: &str) -> Result<T, StoreError> {
    let s = v.as_string().ok_or_else(|| corrupt(what))?;
    serde_json::from_str(&s).map_err(|_| corrupt(what))
}

fn key3(topic: &Topic, generation: u64, doc_key: &str) -> JsValue {
    let a = js_sys::Array::new();
    a.push(&topic.as_str().into());
    a.push(&JsValue::from_f64(generation as f64));
    a.push(&doc_key.into());
    a.into()
}

/// Every key starting with `prefix` (arrays sort after numbers and strings, so
/// `[...prefix, []]` is above every `[...prefix, x]`).
fn prefix_range(prefix: &[JsValue]) -> Result<KeyRange, StoreError> {
    let lower = js_sys::Array::new();
    let upper = js_sys::Array::new();
    for p in prefix {
        lower.push(p);
        upper.push(p);
    }
    upper.push(&js_sys::Array::new());
    KeyRange::bound(&lower, &upper, Some(false), Some(false))
        .map_err(|e| StoreError::Other(format!("key range: {e}")))
}

fn gen_range(topic: &Topic, generation: u64) -> Result<KeyRange, StoreError> {
    prefix_range(&[topic.as_str().into(), JsValue::from_f64(generation as f64)])
}

fn rec_of(w: &DocWrite, payload: &str) -> DocRec {
    DocRec {
        k: w.doc_key.as_str().to_owned(),
        v: w.doc_version,
        p: payload.to_owned(),
        h: w.payload_hash.map(|h| h.to_base64()),
        w: w.watermark.0,
        ok: w.verified,
    }
}

fn stored_doc(topic: &Topic, r: DocRec) -> Result<StoredDoc, StoreError> {
    Ok(StoredDoc {
        topic: topic.clone(),
        doc_key: DocKey::new(r.k).map_err(|_| corrupt("doc key"))?,
        doc_version: r.v,
        payload: r.p,
        payload_hash: r
            .h
            .map(|h| PayloadHash::parse(&h))
            .transpose()
            .map_err(|_| corrupt("payload hash"))?,
        watermark: Watermark(r.w),
        verified: r.ok,
    })
}

/// Commits on success, aborts on failure (so nothing of a failed batch stays).
async fn finish<T>(tx: Transaction, r: Result<T, StoreError>) -> Result<T, StoreError> {
    match r {
        Ok(v) => {
            let done = tx.done().await.map_err(err)?;
            if done.is_committed() {
                Ok(v)
            } else {
                Err(StoreError::Other("IndexedDB transaction aborted".into()))
            }
        }
        Err(e) => {
            // Already aborted if a request failed; nothing to do then.
            let _ = tx.abort().await;
            Err(e)
        }
    }
}

async fn topic_rec(store: &rexie::Store, topic: &Topic) -> Result<Option<TopicRec>, StoreError> {
    match store.get(topic.as_str().into()).await.map_err(err)? {
        Some(v) => from_value(&v, "topic").map(Some),
        None => Ok(None),
    }
}

/// Writes `writes` (in order, `keys[i]` for `writes[i]`) following the never-regress rule
/// (see `MemoryStore::write_doc`); returns for each write whether it was applied (false = the
/// stored document was kept). All reads are issued together, then all writes, without a
/// round trip through the event loop per document; IndexedDB runs the requests of one
/// transaction in issue order.
async fn write_docs(
    store: &rexie::Store,
    keys: Vec<JsValue>,
    writes: &[DocWrite],
    replace_equal: bool,
) -> Result<Vec<bool>, StoreError> {
    let reads = join_all(keys.iter().map(|k| store.get(k.clone()))).await;
    let mut current: HashMap<&str, Option<u64>> = HashMap::with_capacity(writes.len());
    for (w, r) in writes.iter().zip(reads) {
        let v = match r.map_err(err)? {
            Some(v) => Some(from_value::<DocRec>(&v, "doc")?.v),
            None => None,
        };
        // A key written twice in one batch: the first read is the stored state.
        current.entry(w.doc_key.as_str()).or_insert(v);
    }
    let mut applied = Vec::with_capacity(writes.len());
    let mut ops: Vec<LocalBoxFuture<'_, Result<(), rexie::Error>>> = Vec::new();
    for (w, key) in writes.iter().zip(keys) {
        let slot = current.entry(w.doc_key.as_str()).or_insert(None);
        match &w.payload {
            Some(p) => {
                let newer = match *slot {
                    None => true,
                    Some(v) if replace_equal => w.doc_version >= v,
                    Some(v) => w.doc_version > v,
                };
                if newer {
                    *slot = Some(w.doc_version);
                    let value = to_value(&rec_of(w, p))?;
                    ops.push(Box::pin(async move {
                        store.put(&value, Some(&key)).await.map(|_| ())
                    }));
                }
                applied.push(newer);
            }
            None => match *slot {
                Some(v) if v > w.doc_version => applied.push(false),
                Some(_) => {
                    *slot = None;
                    ops.push(Box::pin(store.delete(key)));
                    applied.push(true);
                }
                None => applied.push(true),
            },
        }
    }
    for r in join_all(ops).await {
        r.map_err(err)?;
    }
    Ok(applied)
}

impl IdbStore {
    /// Opens (creating if needed) the IndexedDB database `name`.
    pub async fn open(name: &str) -> Result<IdbStore, StoreError> {
        let db = Rexie::builder(name)
            .version(DB_VERSION)
            .add_object_store(ObjectStore::new(DOCS))
            .add_object_store(ObjectStore::new(TOPICS))
            .add_object_store(ObjectStore::new(META))
            .build()
            .await
            .map_err(|e| match err(e) {
                StoreError::Other(m) if m.contains("VersionError") => StoreError::SchemaTooNew {
                    found: 0,
                    supported: DB_VERSION,
                },
                other => other,
            })?;
        for s in [DOCS, TOPICS, META] {
            if !db.store_names().iter().any(|n| n == s) {
                db.close();
                return Err(StoreError::Foreign);
            }
        }
        let id = NEXT_ID.with(|n| {
            n.set(n.get() + 1);
            n.get()
        });
        DATABASES.with(|d| d.borrow_mut().insert(id, Rc::new(db)));
        Ok(IdbStore {
            id,
            name: name.to_owned(),
        })
    }

    /// Deletes the database `name` (waits until every connection to it is closed).
    pub async fn delete(name: &str) -> Result<(), StoreError> {
        Rexie::delete(name).await.map_err(err)
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Closes the connection; later calls fail with [`StoreError::Closed`].
    pub fn close(&self) {
        let db = DATABASES.with(|d| d.borrow_mut().remove(&self.id));
        if let Some(db) = db.and_then(|db| Rc::try_unwrap(db).ok()) {
            db.close();
        }
    }

    fn db(&self) -> Result<Rc<Rexie>, StoreError> {
        DATABASES
            .with(|d| d.borrow().get(&self.id).cloned())
            .ok_or(StoreError::Closed)
    }

    fn tx(&self, stores: &[&str], mode: TransactionMode) -> Result<Transaction, StoreError> {
        self.db()?.transaction(stores, mode).map_err(err)
    }

    async fn bind_identity_impl(&self, identity: Identity) -> Result<IdentityCheck, StoreError> {
        let tx = self.tx(&[META, DOCS, TOPICS], TransactionMode::ReadWrite)?;
        let r = async {
            let meta = tx.store(META).map_err(err)?;
            let new = IdentityRec {
                server: identity.server,
                subject: identity.subject,
                org: identity.org,
            };
            let check = match meta.get("identity".into()).await.map_err(err)? {
                None => IdentityCheck::Fresh,
                Some(v) => {
                    let current: IdentityRec = from_value(&v, "identity")?;
                    if current == new {
                        return Ok(IdentityCheck::Same);
                    }
                    for s in [DOCS, TOPICS] {
                        tx.store(s).map_err(err)?.clear().await.map_err(err)?;
                    }
                    IdentityCheck::Replaced
                }
            };
            meta.put(&to_value(&new)?, Some(&"identity".into()))
                .await
                .map_err(err)?;
            Ok(check)
        }
        .await;
        finish(tx, r).await
    }

    async fn watermarks_impl(&self) -> Result<Vec<(Topic, Watermark)>, StoreError> {
        let tx = self.tx(&[TOPICS], TransactionMode::ReadOnly)?;
        let r = async {
            let rows = tx
                .store(TOPICS)
                .map_err(err)?
                .scan(None, None, None, None)
                .await
                .map_err(err)?;
            let mut out = Vec::with_capacity(rows.len());
            for (k, v) in rows {
                let name = k.as_string().ok_or_else(|| corrupt("topic key"))?;
                let topic = Topic::new(name).map_err(|_| corrupt("topic key"))?;
                let rec: TopicRec = from_value(&v, "topic")?;
                out.push((topic, Watermark(rec.w)));
            }
            out.sort();
            Ok(out)
        }
        .await;
        finish(tx, r).await
    }

    async fn apply_impl(&self, batch: ApplyBatch) -> Result<ApplyOutcome, StoreError> {
        let tx = self.tx(&[DOCS, TOPICS], TransactionMode::ReadWrite)?;
        let r = async {
            let topics = tx.store(TOPICS).map_err(err)?;
            let docs = tx.store(DOCS).map_err(err)?;
            let mut rec = topic_rec(&topics, &batch.topic).await?.unwrap_or_default();
            if Watermark(rec.w) != batch.expected_watermark {
                return Err(StoreError::WatermarkConflict {
                    topic: batch.topic.clone(),
                    expected: batch.expected_watermark,
                    found: Watermark(rec.w),
                });
            }
            let keys = batch
                .writes
                .iter()
                .map(|w| key3(&batch.topic, rec.c, w.doc_key.as_str()))
                .collect();
            let kept_local = write_docs(&docs, keys, &batch.writes, false)
                .await?
                .into_iter()
                .enumerate()
                .filter(|(_, applied)| !applied)
                .map(|(i, _)| i)
                .collect();
            rec.w = batch.new_watermark.0;
            topics
                .put(&to_value(&rec)?, Some(&batch.topic.as_str().into()))
                .await
                .map_err(err)?;
            Ok(ApplyOutcome {
                watermark: batch.new_watermark,
                kept_local,
            })
        }
        .await;
        finish(tx, r).await
    }

    async fn begin_snapshot_impl(&self, topic: Topic) -> Result<SnapshotGen, StoreError> {
        let tx = self.tx(&[META, DOCS, TOPICS], TransactionMode::ReadWrite)?;
        let r = async {
            let meta = tx.store(META).map_err(err)?;
            let last: u64 = match meta.get("last_gen".into()).await.map_err(err)? {
                Some(v) => from_value(&v, "last_gen")?,
                None => 0,
            };
            let generation = last + 1;
            meta.put(&to_value(&generation)?, Some(&"last_gen".into()))
                .await
                .map_err(err)?;
            let topics = tx.store(TOPICS).map_err(err)?;
            let mut rec = topic_rec(&topics, &topic).await?.unwrap_or_default();
            // Discard any unfinished generation of this topic.
            if let Some(old) = rec.g {
                tx.store(DOCS)
                    .map_err(err)?
                    .delete(gen_range(&topic, old)?.into())
                    .await
                    .map_err(err)?;
            }
            rec.g = Some(generation);
            topics
                .put(&to_value(&rec)?, Some(&topic.as_str().into()))
                .await
                .map_err(err)?;
            Ok(SnapshotGen(generation))
        }
        .await;
        finish(tx, r).await
    }

    async fn current_gen(
        topics: &rexie::Store,
        topic: &Topic,
        generation: SnapshotGen,
    ) -> Result<TopicRec, StoreError> {
        match topic_rec(topics, topic).await? {
            Some(rec) if rec.g == Some(generation.0) => Ok(rec),
            _ => Err(StoreError::StaleSnapshot(topic.clone())),
        }
    }

    async fn put_snapshot_page_impl(
        &self,
        topic: Topic,
        generation: SnapshotGen,
        docs: Vec<DocWrite>,
    ) -> Result<(), StoreError> {
        let tx = self.tx(&[DOCS, TOPICS], TransactionMode::ReadWrite)?;
        let r = async {
            Self::current_gen(&tx.store(TOPICS).map_err(err)?, &topic, generation).await?;
            let staged = tx.store(DOCS).map_err(err)?;
            let keys = docs
                .iter()
                .map(|w| key3(&topic, generation.0, w.doc_key.as_str()))
                .collect();
            write_docs(&staged, keys, &docs, true).await?;
            Ok(())
        }
        .await;
        finish(tx, r).await
    }

    async fn finish_snapshot_impl(
        &self,
        topic: Topic,
        generation: SnapshotGen,
        snapshot_watermark: Watermark,
    ) -> Result<(), StoreError> {
        let tx = self.tx(&[DOCS, TOPICS], TransactionMode::ReadWrite)?;
        let r = async {
            let topics = tx.store(TOPICS).map_err(err)?;
            let mut rec = Self::current_gen(&topics, &topic, generation).await?;
            // The swap: drop the visible generation, make the staged one visible.
            tx.store(DOCS)
                .map_err(err)?
                .delete(gen_range(&topic, rec.c)?.into())
                .await
                .map_err(err)?;
            rec.c = generation.0;
            rec.w = snapshot_watermark.0;
            rec.g = None;
            topics
                .put(&to_value(&rec)?, Some(&topic.as_str().into()))
                .await
                .map_err(err)?;
            Ok(())
        }
        .await;
        finish(tx, r).await
    }

    async fn get_impl(
        &self,
        topic: Topic,
        doc_key: DocKey,
    ) -> Result<Option<StoredDoc>, StoreError> {
        let tx = self.tx(&[DOCS, TOPICS], TransactionMode::ReadOnly)?;
        let r = async {
            let Some(rec) = topic_rec(&tx.store(TOPICS).map_err(err)?, &topic).await? else {
                return Ok(None);
            };
            match tx
                .store(DOCS)
                .map_err(err)?
                .get(key3(&topic, rec.c, doc_key.as_str()))
                .await
                .map_err(err)?
            {
                Some(v) => stored_doc(&topic, from_value(&v, "doc")?).map(Some),
                None => Ok(None),
            }
        }
        .await;
        finish(tx, r).await
    }

    async fn list_impl(&self, topic: Topic) -> Result<Vec<StoredDoc>, StoreError> {
        let tx = self.tx(&[DOCS, TOPICS], TransactionMode::ReadOnly)?;
        let r = async {
            let Some(rec) = topic_rec(&tx.store(TOPICS).map_err(err)?, &topic).await? else {
                return Ok(Vec::new());
            };
            let rows = tx
                .store(DOCS)
                .map_err(err)?
                .get_all(Some(gen_range(&topic, rec.c)?), None)
                .await
                .map_err(err)?;
            let mut out = rows
                .iter()
                .map(|v| stored_doc(&topic, from_value(v, "doc")?))
                .collect::<Result<Vec<_>, _>>()?;
            // IndexedDB orders strings by UTF-16 code units; the contract is Rust's order.
            out.sort_by(|a, b| a.doc_key.cmp(&b.doc_key));
            Ok(out)
        }
        .await;
        finish(tx, r).await
    }
}

impl Drop for IdbStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl Store for IdbStore {
    fn bind_identity(&self, identity: Identity) -> StoreFuture<'_, IdentityCheck> {
        Box::pin(self.bind_identity_impl(identity))
    }

    fn watermarks(&self) -> StoreFuture<'_, Vec<(Topic, Watermark)>> {
        Box::pin(self.watermarks_impl())
    }

    fn apply(&self, batch: ApplyBatch) -> StoreFuture<'_, ApplyOutcome> {
        Box::pin(self.apply_impl(batch))
    }

    fn begin_snapshot(&self, topic: Topic) -> StoreFuture<'_, SnapshotGen> {
        Box::pin(self.begin_snapshot_impl(topic))
    }

    fn put_snapshot_page(
        &self,
        topic: Topic,
        generation: SnapshotGen,
        docs: Vec<DocWrite>,
    ) -> StoreFuture<'_, ()> {
        Box::pin(self.put_snapshot_page_impl(topic, generation, docs))
    }

    fn finish_snapshot(
        &self,
        topic: Topic,
        generation: SnapshotGen,
        snapshot_watermark: Watermark,
    ) -> StoreFuture<'_, ()> {
        Box::pin(self.finish_snapshot_impl(topic, generation, snapshot_watermark))
    }

    fn get(&self, topic: Topic, doc_key: DocKey) -> StoreFuture<'_, Option<StoredDoc>> {
        Box::pin(self.get_impl(topic, doc_key))
    }

    fn list(&self, topic: Topic) -> StoreFuture<'_, Vec<StoredDoc>> {
        Box::pin(self.list_impl(topic))
    }
}
