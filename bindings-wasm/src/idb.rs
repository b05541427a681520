//! The IndexedDB store: [`khala_sync::store::Store`] directly on `web-sys`'s IndexedDB
//! bindings (no wrapper crate: 24 KB gzipped smaller than on `rexie`, see README "Bundle
//! size"), same semantics as
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
//! Requests are awaited through a `Promise` whose `resolve`/`reject` are the request's
//! `onsuccess`/`onerror` handlers; the continuation runs in the microtask checkpoint right
//! after the event, while the transaction is still active, so the next request of the same
//! transaction can be issued (the pattern of the `idb` JS library). Writes are not awaited one
//! by one: a failed request aborts its transaction, and the transaction's completion (or
//! abort, with its error) is what every method awaits last.
//!
//! `Store` requires `Send + Sync`, which JS handles are not; the `IDBDatabase` handle therefore
//! lives in a thread-local registry and `IdbStore` holds only its id (wasm32 without atomics
//! has exactly one thread, so this is not a restriction).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use js_sys::{Array, Promise};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    DomException, IdbDatabase, IdbFactory, IdbKeyRange, IdbObjectStore, IdbOpenDbRequest,
    IdbRequest, IdbTransaction, IdbTransactionMode,
};

use khala_sync::protocol::json::{self, Obj, Res, Value};
use khala_sync::protocol::{DocKey, PayloadHash, Topic, Watermark};
use khala_sync::store::{
    ApplyBatch, ApplyOutcome, DocWrite, Identity, IdentityCheck, SnapshotGen, Store, StoreError,
    StoreFuture, StoredDoc,
};

use crate::convert::Json;

const DOCS: &str = "docs";
const TOPICS: &str = "topics";
const META: &str = "meta";
const DB_VERSION: u32 = 2;

thread_local! {
    static DATABASES: RefCell<Vec<(u64, IdbDatabase)>> = const { RefCell::new(Vec::new()) };
    static NEXT_ID: Cell<u64> = const { Cell::new(0) };
}

/// A durable store in the browser's IndexedDB (one database per `name`).
#[derive(Debug)]
pub struct IdbStore {
    id: u64,
    name: String,
}

/// Maps an IndexedDB error (a `DOMException`, or `None` for an explicit abort) to a store error.
fn dom_err(e: Option<DomException>) -> StoreError {
    let Some(e) = e else {
        return StoreError::Other("IndexedDB transaction aborted".into());
    };
    let (name, msg) = (e.name(), e.message());
    if name == "QuotaExceededError" {
        StoreError::DiskFull
    } else if name == "InvalidStateError" && msg.contains("clos") {
        StoreError::Closed
    } else {
        StoreError::Other(format!("IndexedDB: {name}: {msg}"))
    }
}

/// A thrown JS value (IndexedDB methods throw `DOMException`s synchronously, e.g. on a
/// closing connection or an invalid key).
fn js_err(e: JsValue) -> StoreError {
    match e.dyn_into::<DomException>() {
        Ok(d) => dom_err(Some(d)),
        Err(other) => StoreError::Other(format!(
            "IndexedDB: {}",
            other
                .dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
                .unwrap_or_default()
        )),
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "IndexedDB record {what} is not a khala-sync record"
    ))
}

/// The global `indexedDB` (window, worker), or a typed error where there is none.
fn factory() -> Result<IdbFactory, StoreError> {
    js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("indexedDB"))
        .ok()
        .and_then(|f| f.dyn_into::<IdbFactory>().ok())
        .ok_or_else(|| StoreError::Other("IndexedDB is not available here".into()))
}

/// A promise settled by the first of `target`'s events in `on_ok` (resolve, with the event) or
/// `on_err` (reject).
fn settle(target: &JsValue, on_ok: &[&str], on_err: &str) -> JsFuture {
    let p = Promise::new(&mut |ok, no| {
        for ev in on_ok {
            let _ = js_sys::Reflect::set(target, &JsValue::from_str(ev), &ok);
        }
        let _ = js_sys::Reflect::set(target, &JsValue::from_str(on_err), &no);
    });
    JsFuture::from(p)
}

/// Waits for `req` to finish; its result, or its error.
async fn wait(req: &IdbRequest) -> Result<JsValue, StoreError> {
    match settle(req, &["onsuccess"], "onerror").await {
        Ok(_) => req.result().map_err(js_err),
        Err(_) => Err(dom_err(req.error().ok().flatten())),
    }
}

/// The result of a request that has already finished (an earlier request of the same
/// transaction than one that was awaited: requests complete in issue order).
fn result_of(req: &IdbRequest) -> Result<JsValue, StoreError> {
    req.result().map_err(js_err)
}

// Records are JSON strings (the format the `serde_json`-based versions wrote, which existing
// databases hold): written with `convert::Json`, read with the SDK's JSON reader. Members not
// listed are ignored; an `Option` is written `null` and read from `null` or an absent member.

/// A document: `{"k": key, "v": version, "p": payload text, "h": hash or null, "w": watermark,
/// "ok": verified}`.
struct DocRec {
    k: String,
    v: u64,
    p: String,
    h: Option<String>,
    w: u64,
    ok: bool,
}

/// A topic: `{"w": watermark, "c": visible generation, "g": staged generation or null}`.
#[derive(Default, Clone, Copy)]
struct TopicRec {
    /// Committed watermark.
    w: u64,
    /// Visible generation (0 before the first snapshot; absent in records written before
    /// generations existed).
    c: u64,
    /// Staged (unfinished) generation.
    g: Option<u64>,
}

/// The bound identity: `{"server", "subject": string or null, "org": string or null}`.
#[derive(PartialEq)]
struct IdentityRec {
    server: String,
    subject: Option<String>,
    org: Option<String>,
}

fn text(j: Json) -> JsValue {
    JsValue::from_str(&j.into_string())
}

/// A required string member.
fn str_field(o: &mut Obj<'_>, key: &str) -> Res<String> {
    json::string(json::take(o, key)?, key)
}

/// A required non-negative integer member.
fn uint_field(o: &mut Obj<'_>, key: &str) -> Res<u64> {
    json::uint(&json::take(o, key)?, key)
}

impl DocRec {
    fn decode(s: &str) -> Res<Self> {
        let mut o = json::object(s)?;
        Ok(DocRec {
            k: str_field(&mut o, "k")?,
            v: uint_field(&mut o, "v")?,
            p: str_field(&mut o, "p")?,
            h: json::opt_string(&mut o, "h")?,
            w: uint_field(&mut o, "w")?,
            ok: match json::take(&mut o, "ok")? {
                Value::Bool(b) => b,
                _ => return Err("ok".into()),
            },
        })
    }
}

/// The stored record of a document write.
fn doc_value(w: &DocWrite, payload: &str) -> JsValue {
    let mut j = Json::new();
    j.open('{')
        .key("k")
        .str(w.doc_key.as_str())
        .key("v")
        .uint(w.doc_version)
        .key("p")
        .str(payload)
        .key("h")
        .opt_str(w.payload_hash.map(|h| h.to_base64()).as_deref())
        .key("w")
        .uint(w.watermark.0)
        .key("ok")
        .bool(w.verified)
        .close('}');
    text(j)
}

impl TopicRec {
    fn decode(s: &str) -> Res<Self> {
        let mut o = json::object(s)?;
        Ok(TopicRec {
            w: uint_field(&mut o, "w")?,
            c: match o.remove("c") {
                Some(c) => json::uint(&c, "c")?,
                None => 0,
            },
            g: json::opt_uint(&mut o, "g")?,
        })
    }

    fn value(&self) -> JsValue {
        let mut j = Json::new();
        j.open('{')
            .key("w")
            .uint(self.w)
            .key("c")
            .uint(self.c)
            .key("g")
            .opt_uint(self.g)
            .close('}');
        text(j)
    }
}

impl IdentityRec {
    fn decode(s: &str) -> Res<Self> {
        let mut o = json::object(s)?;
        Ok(IdentityRec {
            server: str_field(&mut o, "server")?,
            subject: json::opt_string(&mut o, "subject")?,
            org: json::opt_string(&mut o, "org")?,
        })
    }

    fn value(&self) -> JsValue {
        let mut j = Json::new();
        j.open('{')
            .key("server")
            .str(&self.server)
            .key("subject")
            .opt_str(self.subject.as_deref())
            .key("org")
            .opt_str(self.org.as_deref())
            .close('}');
        text(j)
    }
}

/// `last_gen`: a bare integer.
fn decode_gen(s: &str) -> Res<u64> {
    json::uint(&json::parse(s)?, "last_gen")
}

/// Decodes a stored record with `decode`; `undefined` (no record) is `None`, anything that
/// does not decode is [`StoreError::Corrupt`].
fn from_value<T>(
    v: &JsValue,
    what: &str,
    decode: fn(&str) -> Res<T>,
) -> Result<Option<T>, StoreError> {
    if v.is_undefined() {
        return Ok(None);
    }
    let s = v.as_string().ok_or_else(|| corrupt(what))?;
    decode(&s).map(Some).map_err(|_| corrupt(what))
}

fn str_key(s: &str) -> JsValue {
    JsValue::from_str(s)
}

fn key3(topic: &Topic, generation: u64, doc_key: &str) -> JsValue {
    Array::of3(
        &str_key(topic.as_str()),
        &JsValue::from_f64(generation as f64),
        &str_key(doc_key),
    )
    .into()
}

/// Every key of `topic`'s documents in `generation` (arrays sort after numbers and strings,
/// so `[topic, gen, []]` is above every `[topic, gen, x]`).
fn gen_range(topic: &Topic, generation: u64) -> Result<JsValue, StoreError> {
    let t = str_key(topic.as_str());
    let g = JsValue::from_f64(generation as f64);
    IdbKeyRange::bound(&Array::of2(&t, &g), &Array::of3(&t, &g, &Array::new()))
        .map(Into::into)
        .map_err(js_err)
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

/// One transaction: its object stores by name.
struct Tx(IdbTransaction);

impl Tx {
    fn store(&self, name: &str) -> Result<IdbObjectStore, StoreError> {
        self.0.object_store(name).map_err(js_err)
    }

    /// Commits on success, aborts on failure (so nothing of a failed batch stays).
    async fn finish<T>(self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        let done = self.done(r.is_ok()).await;
        r.and_then(|v| done.map(|()| v))
    }

    /// Waits for the commit (`ok`), or aborts. Not generic: one copy of this state machine
    /// for every method's result type.
    async fn done(self, ok: bool) -> Result<(), StoreError> {
        if !ok {
            // Throws if a failed request already aborted it; nothing to do then.
            let _ = self.0.abort();
            return Ok(());
        }
        match settle(&self.0, &["oncomplete"], "onabort").await {
            Ok(_) => Ok(()),
            Err(_) => Err(dom_err(self.0.error())),
        }
    }
}

async fn topic_rec(store: &IdbObjectStore, topic: &Topic) -> Result<Option<TopicRec>, StoreError> {
    let v = wait(&store.get(&str_key(topic.as_str())).map_err(js_err)?).await?;
    from_value(&v, "topic", TopicRec::decode)
}

fn put(store: &IdbObjectStore, value: &JsValue, key: &JsValue) -> Result<(), StoreError> {
    store.put_with_key(value, key).map(drop).map_err(js_err)
}

/// Writes `writes` (in order, `keys[i]` for `writes[i]`) following the never-regress rule
/// (see `MemoryStore::write_doc`); returns for each write whether it was applied (false = the
/// stored document was kept). All reads are issued together (only the last one is awaited:
/// requests complete in issue order), then all writes, without awaiting them: a failed write
/// aborts the transaction, which [`Tx::finish`] reports.
async fn write_docs(
    store: &IdbObjectStore,
    keys: Vec<JsValue>,
    writes: &[DocWrite],
    replace_equal: bool,
) -> Result<Vec<bool>, StoreError> {
    let reads = keys
        .iter()
        .map(|k| store.get(k).map_err(js_err))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(last) = reads.last() {
        wait(last).await?;
    }
    let mut current: HashMap<&str, Option<u64>> = HashMap::with_capacity(writes.len());
    for (w, r) in writes.iter().zip(&reads) {
        let v = from_value(&result_of(r)?, "doc", DocRec::decode)?.map(|d| d.v);
        // A key written twice in one batch: the first read is the stored state.
        current.entry(w.doc_key.as_str()).or_insert(v);
    }
    let mut applied = Vec::with_capacity(writes.len());
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
                    put(store, &doc_value(w, p), &key)?;
                }
                applied.push(newer);
            }
            None => match *slot {
                Some(v) if v > w.doc_version => applied.push(false),
                Some(_) => {
                    *slot = None;
                    store.delete(&key).map_err(js_err)?;
                    applied.push(true);
                }
                None => applied.push(true),
            },
        }
    }
    Ok(applied)
}

impl IdbStore {
    /// Opens (creating if needed) the IndexedDB database `name`.
    pub async fn open(name: &str) -> Result<IdbStore, StoreError> {
        let req: IdbOpenDbRequest = factory()?.open_with_u32(name, DB_VERSION).map_err(js_err)?;
        let first = settle(&req, &["onupgradeneeded", "onsuccess"], "onerror").await;
        let db = match first {
            Err(_) => {
                return Err(match req.error().ok().flatten() {
                    Some(e) if e.name() == "VersionError" => StoreError::SchemaTooNew {
                        found: 0,
                        supported: DB_VERSION,
                    },
                    e => dom_err(e),
                })
            }
            Ok(ev) if ev.unchecked_ref::<web_sys::Event>().type_() == "upgradeneeded" => {
                // Still inside the upgrade transaction: create the stores, drop foreign ones.
                let db: IdbDatabase = req.result().map_err(js_err)?.unchecked_into();
                let names = db.object_store_names();
                for i in 0..names.length() {
                    match names.item(i) {
                        Some(n) if ![DOCS, TOPICS, META].contains(&n.as_str()) => {
                            db.delete_object_store(&n).map_err(js_err)?;
                        }
                        _ => {}
                    }
                }
                for s in [DOCS, TOPICS, META] {
                    if !names.contains(s) {
                        db.create_object_store(s).map_err(js_err)?;
                    }
                }
                wait(&req).await?.unchecked_into::<IdbDatabase>()
            }
            Ok(_) => req.result().map_err(js_err)?.unchecked_into(),
        };
        let names = db.object_store_names();
        if ![DOCS, TOPICS, META].iter().all(|s| names.contains(s)) {
            db.close();
            return Err(StoreError::Foreign);
        }
        let id = NEXT_ID.with(|n| {
            n.set(n.get() + 1);
            n.get()
        });
        DATABASES.with(|d| d.borrow_mut().push((id, db)));
        Ok(IdbStore {
            id,
            name: name.to_owned(),
        })
    }

    /// Deletes the database `name` (waits until every connection to it is closed).
    pub async fn delete(name: &str) -> Result<(), StoreError> {
        let req = factory()?.delete_database(name).map_err(js_err)?;
        wait(&req).await.map(drop)
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Closes the connection; later calls fail with [`StoreError::Closed`].
    pub fn close(&self) {
        let db = DATABASES.with(|d| {
            let mut d = d.borrow_mut();
            let i = d.iter().position(|(id, _)| *id == self.id)?;
            Some(d.swap_remove(i).1)
        });
        if let Some(db) = db {
            db.close();
        }
    }

    fn tx(&self, stores: &[&str], mode: IdbTransactionMode) -> Result<Tx, StoreError> {
        let db = DATABASES
            .with(|d| {
                d.borrow()
                    .iter()
                    .find(|(id, _)| *id == self.id)
                    .map(|(_, db)| db.clone())
            })
            .ok_or(StoreError::Closed)?;
        let names: Array = stores.iter().map(|s| str_key(s)).collect();
        db.transaction_with_str_sequence_and_mode(&names, mode)
            .map(Tx)
            .map_err(js_err)
    }

    async fn bind_identity_impl(&self, identity: Identity) -> Result<IdentityCheck, StoreError> {
        let tx = self.tx(&[META, DOCS, TOPICS], IdbTransactionMode::Readwrite)?;
        let r = async {
            let meta = tx.store(META)?;
            let new = IdentityRec {
                server: identity.server,
                subject: identity.subject,
                org: identity.org,
            };
            let key = str_key("identity");
            let current = wait(&meta.get(&key).map_err(js_err)?).await?;
            let check = match from_value(&current, "identity", IdentityRec::decode)? {
                None => IdentityCheck::Fresh,
                Some(current) if current == new => return Ok(IdentityCheck::Same),
                Some(_) => {
                    for s in [DOCS, TOPICS] {
                        tx.store(s)?.clear().map_err(js_err)?;
                    }
                    IdentityCheck::Replaced
                }
            };
            put(&meta, &new.value(), &key)?;
            Ok(check)
        }
        .await;
        tx.finish(r).await
    }

    async fn watermarks_impl(&self) -> Result<Vec<(Topic, Watermark)>, StoreError> {
        let tx = self.tx(&[TOPICS], IdbTransactionMode::Readonly)?;
        let r = async {
            let topics = tx.store(TOPICS)?;
            let keys = topics.get_all_keys().map_err(js_err)?;
            let values: Array = wait(&topics.get_all().map_err(js_err)?)
                .await?
                .unchecked_into();
            let keys: Array = result_of(&keys)?.unchecked_into();
            let mut out = Vec::with_capacity(keys.length() as usize);
            for (k, v) in keys.iter().zip(values.iter()) {
                let name = k.as_string().ok_or_else(|| corrupt("topic key"))?;
                let topic = Topic::new(name).map_err(|_| corrupt("topic key"))?;
                let rec =
                    from_value(&v, "topic", TopicRec::decode)?.ok_or_else(|| corrupt("topic"))?;
                out.push((topic, Watermark(rec.w)));
            }
            out.sort();
            Ok(out)
        }
        .await;
        tx.finish(r).await
    }

    async fn apply_impl(&self, batch: ApplyBatch) -> Result<ApplyOutcome, StoreError> {
        let tx = self.tx(&[DOCS, TOPICS], IdbTransactionMode::Readwrite)?;
        let r = async {
            let topics = tx.store(TOPICS)?;
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
            let kept_local = write_docs(&tx.store(DOCS)?, keys, &batch.writes, false)
                .await?
                .into_iter()
                .enumerate()
                .filter(|(_, applied)| !applied)
                .map(|(i, _)| i)
                .collect();
            rec.w = batch.new_watermark.0;
            put(&topics, &rec.value(), &str_key(batch.topic.as_str()))?;
            Ok(ApplyOutcome {
                watermark: batch.new_watermark,
                kept_local,
            })
        }
        .await;
        tx.finish(r).await
    }

    async fn begin_snapshot_impl(&self, topic: Topic) -> Result<SnapshotGen, StoreError> {
        let tx = self.tx(&[META, DOCS, TOPICS], IdbTransactionMode::Readwrite)?;
        let r = async {
            let meta = tx.store(META)?;
            let key = str_key("last_gen");
            let last = wait(&meta.get(&key).map_err(js_err)?).await?;
            let generation = from_value(&last, "last_gen", decode_gen)?.unwrap_or(0) + 1;
            let mut j = Json::new();
            j.uint(generation);
            put(&meta, &text(j), &key)?;
            let topics = tx.store(TOPICS)?;
            let mut rec = topic_rec(&topics, &topic).await?.unwrap_or_default();
            // Discard any unfinished generation of this topic.
            if let Some(old) = rec.g {
                tx.store(DOCS)?
                    .delete(&gen_range(&topic, old)?)
                    .map_err(js_err)?;
            }
            rec.g = Some(generation);
            put(&topics, &rec.value(), &str_key(topic.as_str()))?;
            Ok(SnapshotGen(generation))
        }
        .await;
        tx.finish(r).await
    }

    async fn current_gen(
        topics: &IdbObjectStore,
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
        let tx = self.tx(&[DOCS, TOPICS], IdbTransactionMode::Readwrite)?;
        let r = async {
            Self::current_gen(&tx.store(TOPICS)?, &topic, generation).await?;
            let keys = docs
                .iter()
                .map(|w| key3(&topic, generation.0, w.doc_key.as_str()))
                .collect();
            write_docs(&tx.store(DOCS)?, keys, &docs, true).await?;
            Ok(())
        }
        .await;
        tx.finish(r).await
    }

    async fn finish_snapshot_impl(
        &self,
        topic: Topic,
        generation: SnapshotGen,
        snapshot_watermark: Watermark,
    ) -> Result<(), StoreError> {
        let tx = self.tx(&[DOCS, TOPICS], IdbTransactionMode::Readwrite)?;
        let r = async {
            let topics = tx.store(TOPICS)?;
            let mut rec = Self::current_gen(&topics, &topic, generation).await?;
            // The swap: drop the visible generation, make the staged one visible.
            tx.store(DOCS)?
                .delete(&gen_range(&topic, rec.c)?)
                .map_err(js_err)?;
            rec.c = generation.0;
            rec.w = snapshot_watermark.0;
            rec.g = None;
            put(&topics, &rec.value(), &str_key(topic.as_str()))?;
            Ok(())
        }
        .await;
        tx.finish(r).await
    }

    async fn get_impl(
        &self,
        topic: Topic,
        doc_key: DocKey,
    ) -> Result<Option<StoredDoc>, StoreError> {
        let tx = self.tx(&[DOCS, TOPICS], IdbTransactionMode::Readonly)?;
        let r = async {
            let Some(rec) = topic_rec(&tx.store(TOPICS)?, &topic).await? else {
                return Ok(None);
            };
            let key = key3(&topic, rec.c, doc_key.as_str());
            let v = wait(&tx.store(DOCS)?.get(&key).map_err(js_err)?).await?;
            from_value(&v, "doc", DocRec::decode)?
                .map(|d| stored_doc(&topic, d))
                .transpose()
        }
        .await;
        tx.finish(r).await
    }

    async fn list_impl(&self, topic: Topic) -> Result<Vec<StoredDoc>, StoreError> {
        let tx = self.tx(&[DOCS, TOPICS], IdbTransactionMode::Readonly)?;
        let r = async {
            let Some(rec) = topic_rec(&tx.store(TOPICS)?, &topic).await? else {
                return Ok(Vec::new());
            };
            let range = gen_range(&topic, rec.c)?;
            let rows: Array = wait(&tx.store(DOCS)?.get_all_with_key(&range).map_err(js_err)?)
                .await?
                .unchecked_into();
            let mut out = rows
                .iter()
                .map(|v| {
                    let d = from_value(&v, "doc", DocRec::decode)?.ok_or_else(|| corrupt("doc"))?;
                    stored_doc(&topic, d)
                })
                .collect::<Result<Vec<_>, _>>()?;
            // IndexedDB orders strings by UTF-16 code units; the contract is Rust's order.
            out.sort_by(|a, b| a.doc_key.cmp(&b.doc_key));
            Ok(out)
        }
        .await;
        tx.finish(r).await
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
