//! Headless-Chromium tests (wasm-bindgen-test, `run_in_browser`): the shared store
//! conformance scenarios of khala-sync (`sync-sdk/src/store/conformance.rs`, prepared by
//! `build.rs`) against `IdbStore` — and against `MemoryStore` in the same browser — plus what
//! only a real database can show: data and the watermark survive closing and reopening.
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used, missing_docs)]

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

use std::cell::Cell;

use khala_sync_wasm::idb::IdbStore;

thread_local! {
    static DB_SEQ: Cell<u32> = const { Cell::new(0) };
}

/// A fresh, empty IndexedDB database for one scenario.
async fn fresh_idb(name: &str) -> IdbStore {
    let n = DB_SEQ.with(|s| {
        s.set(s.get() + 1);
        s.get()
    });
    let db = format!("conformance-{name}-{n}");
    IdbStore::delete(&db).await.unwrap();
    IdbStore::open(&db).await.unwrap()
}

/// Mirrors `khala_sync::protocol` for the included file's `crate::protocol` paths.
mod protocol {
    pub use khala_sync::protocol::*;
}

/// Mirrors `khala_sync::store` (the included file's `super`).
mod store {
    pub use khala_sync::store::*;

    macro_rules! for_idb_store {
        ($($scenario:ident),* $(,)?) => {
            mod idb_store {
                $(
                    #[wasm_bindgen_test::wasm_bindgen_test]
                    async fn $scenario() {
                        let store = crate::fresh_idb(stringify!($scenario)).await;
                        super::$scenario(&store).await;
                        let name = store.name().to_owned();
                        store.close();
                        khala_sync_wasm::idb::IdbStore::delete(&name).await.unwrap();
                    }
                )*
            }
        };
    }

    #[allow(unexpected_cfgs, dead_code, unused_imports)]
    mod conformance {
        include!(concat!(env!("OUT_DIR"), "/conformance.rs"));
    }
}

mod durability {
    use khala_sync::protocol::{DocKey, PayloadHash, Topic, Watermark};
    use khala_sync::store::{ApplyBatch, DocWrite, Identity, IdentityCheck, Store, StoreError};
    use khala_sync_wasm::idb::IdbStore;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn write(k: &str, v: u64, wm: u64) -> DocWrite {
        let p = format!(r#"{{"k":"{k}","v":{v}}}"#);
        DocWrite {
            doc_key: DocKey::new(k).unwrap(),
            doc_version: v,
            payload_hash: Some(PayloadHash::of_json_text(&p).unwrap()),
            payload: Some(p),
            watermark: Watermark(wm),
            verified: true,
        }
    }

    #[wasm_bindgen_test]
    async fn reopen_keeps_docs_watermark_identity_and_staged_snapshot() {
        let name = "durability-reopen";
        IdbStore::delete(name).await.unwrap();
        let t = Topic::new("t").unwrap();
        let id = Identity {
            server: "https://sync.example.com".into(),
            subject: Some("user:42".into()),
            org: None,
        };
        {
            let s = IdbStore::open(name).await.unwrap();
            assert_eq!(
                s.bind_identity(id.clone()).await.unwrap(),
                IdentityCheck::Fresh
            );
            s.apply(ApplyBatch {
                topic: t.clone(),
                expected_watermark: Watermark(0),
                new_watermark: Watermark(2),
                writes: vec![write("a", 1, 1), write("b", 1, 2)],
            })
            .await
            .unwrap();
            let g = s.begin_snapshot(t.clone()).await.unwrap();
            s.put_snapshot_page(t.clone(), g, vec![write("z", 1, 9)])
                .await
                .unwrap();
            s.close();
            // A closed store refuses work with a typed error.
            assert_eq!(s.watermarks().await, Err(StoreError::Closed));
        }
        let s = IdbStore::open(name).await.unwrap();
        assert_eq!(s.bind_identity(id).await.unwrap(), IdentityCheck::Same);
        assert_eq!(
            s.watermarks().await.unwrap(),
            vec![(t.clone(), Watermark(2))]
        );
        let keys: Vec<String> = s
            .list(t.clone())
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.doc_key.as_str().to_owned())
            .collect();
        assert_eq!(keys, ["a", "b"], "the staged snapshot stays invisible");
        // A batch that conflicts writes nothing.
        let e = s
            .apply(ApplyBatch {
                topic: t.clone(),
                expected_watermark: Watermark(1),
                new_watermark: Watermark(3),
                writes: vec![write("c", 1, 3)],
            })
            .await;
        assert!(
            matches!(e, Err(StoreError::WatermarkConflict { .. })),
            "{e:?}"
        );
        assert_eq!(
            s.get(t.clone(), DocKey::new("c").unwrap()).await.unwrap(),
            None
        );
        // Finishing a snapshot deletes the previous generation's records (no storage leak),
        // and a new snapshot discards an unfinished one's.
        let g1 = s.begin_snapshot(t.clone()).await.unwrap();
        s.put_snapshot_page(t.clone(), g1, vec![write("x", 1, 5)])
            .await
            .unwrap();
        let g2 = s.begin_snapshot(t.clone()).await.unwrap();
        s.put_snapshot_page(t.clone(), g2, vec![write("y", 1, 5), write("z", 1, 5)])
            .await
            .unwrap();
        s.finish_snapshot(t.clone(), g2, Watermark(5))
            .await
            .unwrap();
        assert_eq!(s.list(t.clone()).await.unwrap().len(), 2);
        s.close();
        let raw = rexie::Rexie::builder(name).build().await.unwrap();
        let tx = raw
            .transaction(&["docs"], rexie::TransactionMode::ReadOnly)
            .unwrap();
        let records = tx.store("docs").unwrap().count(None).await.unwrap();
        assert_eq!(
            records, 2,
            "only the visible generation's documents are stored"
        );
        raw.close();
        IdbStore::delete(name).await.unwrap();
    }

    /// Databases this store cannot use are typed errors, not panics or silent resets: a newer
    /// schema version, and a version-2 database of another application (other object stores).
    #[wasm_bindgen_test]
    async fn newer_or_foreign_databases_are_refused_with_typed_errors() {
        let newer = "refuse-newer";
        IdbStore::delete(newer).await.unwrap();
        let raw = rexie::Rexie::builder(newer)
            .version(3)
            .add_object_store(rexie::ObjectStore::new("docs"))
            .build()
            .await
            .unwrap();
        raw.close();
        let e = IdbStore::open(newer).await.err();
        assert!(
            matches!(e, Some(StoreError::SchemaTooNew { supported: 2, .. })),
            "{e:?}"
        );
        IdbStore::delete(newer).await.unwrap();

        let foreign = "refuse-foreign";
        IdbStore::delete(foreign).await.unwrap();
        let raw = rexie::Rexie::builder(foreign)
            .version(2)
            .add_object_store(rexie::ObjectStore::new("other"))
            .build()
            .await
            .unwrap();
        raw.close();
        let e = IdbStore::open(foreign).await.err();
        assert!(matches!(e, Some(StoreError::Foreign)), "{e:?}");
        // The other application's data is left alone.
        let raw = rexie::Rexie::builder(foreign).build().await.unwrap();
        assert_eq!(raw.store_names(), ["other"]);
        raw.close();
        IdbStore::delete(foreign).await.unwrap();
    }
}

/// The stored record format (JSON strings in the three object stores) is a contract with
/// databases written by earlier versions: records exactly as the serde_json-based store wrote
/// them must stay readable, what this store writes must be byte for byte that format, and a
/// record that does not decode is a typed `Corrupt` error.
mod record_format {
    use js_sys::Array;
    use khala_sync::protocol::{DocKey, PayloadHash, Topic, Watermark};
    use khala_sync::store::{
        ApplyBatch, DocWrite, Identity, IdentityCheck, SnapshotGen, Store, StoreError, StoredDoc,
    };
    use khala_sync_wasm::idb::IdbStore;
    use rexie::{ObjectStore, Rexie, TransactionMode};
    use wasm_bindgen::JsValue;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn doc_key(topic: &str, generation: u32, key: &str) -> JsValue {
        Array::of3(&topic.into(), &generation.into(), &key.into()).into()
    }

    /// Puts `(store, key, JSON text)` records into the database `name` (version 2).
    async fn put_raw(name: &str, records: &[(&str, JsValue, &str)]) {
        let raw = Rexie::builder(name)
            .version(2)
            .add_object_store(ObjectStore::new("docs"))
            .add_object_store(ObjectStore::new("topics"))
            .add_object_store(ObjectStore::new("meta"))
            .build()
            .await
            .unwrap();
        let tx = raw
            .transaction(&["docs", "topics", "meta"], TransactionMode::ReadWrite)
            .unwrap();
        for (store, key, text) in records {
            tx.store(store)
                .unwrap()
                .put(&JsValue::from_str(text), Some(key))
                .await
                .unwrap();
        }
        tx.done().await.unwrap();
        raw.close();
    }

    /// The stored JSON text of `(store, key)`.
    async fn get_raw(name: &str, store: &str, key: JsValue) -> Option<String> {
        let raw = Rexie::builder(name).build().await.unwrap();
        let tx = raw
            .transaction(&[store], TransactionMode::ReadOnly)
            .unwrap();
        let v = tx.store(store).unwrap().get(key).await.unwrap();
        raw.close();
        v.map(|v| v.as_string().expect("records are JSON strings"))
    }

    fn stored(
        topic: &Topic,
        k: &str,
        v: u64,
        p: &str,
        h: Option<PayloadHash>,
        w: u64,
        ok: bool,
    ) -> StoredDoc {
        StoredDoc {
            topic: topic.clone(),
            doc_key: DocKey::new(k).unwrap(),
            doc_version: v,
            payload: p.to_owned(),
            payload_hash: h,
            watermark: Watermark(w),
            verified: ok,
        }
    }

    #[wasm_bindgen_test]
    async fn serde_json_era_records_stay_readable_and_new_records_keep_their_format() {
        let name = "record-format";
        IdbStore::delete(name).await.unwrap();
        let t = Topic::new("t").unwrap();
        let u = Topic::new("u").unwrap();
        // `b`'s payload has characters the record escapes (`"`, `\`, newline, tab) and a
        // non-ASCII one (kept raw, as serde_json does).
        let pb = "{\"x\": \"é\\\\\",\n\t\"y\": [1]}";
        let hb = PayloadHash::of_json_text(pb).unwrap();
        let rec_b = format!(
            r#"{{"k":"b","v":2,"p":"{{\"x\": \"é\\\\\",\n\t\"y\": [1]}}","h":"{}","w":7,"ok":false}}"#,
            hb.to_base64()
        );
        let identity = r#"{"server":"https://sync.example.com","subject":"user:42","org":null}"#;
        put_raw(
            name,
            &[
                ("meta", "identity".into(), identity),
                ("meta", "last_gen".into(), "3"),
                // Written before generations existed: no `c` (visible generation 0).
                ("topics", "t".into(), r#"{"w":7,"g":null}"#),
                ("topics", "u".into(), r#"{"w":9,"c":2,"g":3}"#),
                (
                    "docs",
                    doc_key("t", 0, "a"),
                    r#"{"k":"a","v":1,"p":"{\"x\":1}","h":null,"w":3,"ok":true}"#,
                ),
                ("docs", doc_key("t", 0, "b"), &rec_b),
                (
                    "docs",
                    doc_key("u", 2, "c"),
                    r#"{"k":"c","v":5,"p":"null","h":null,"w":9,"ok":true}"#,
                ),
                // `u`'s staged generation 3, not yet visible.
                (
                    "docs",
                    doc_key("u", 3, "d"),
                    r#"{"k":"d","v":1,"p":"true","h":null,"w":10,"ok":true}"#,
                ),
            ],
        )
        .await;

        let s = IdbStore::open(name).await.unwrap();
        let id = Identity {
            server: "https://sync.example.com".into(),
            subject: Some("user:42".into()),
            org: None,
        };
        assert_eq!(s.bind_identity(id).await.unwrap(), IdentityCheck::Same);
        assert_eq!(
            s.watermarks().await.unwrap(),
            vec![(t.clone(), Watermark(7)), (u.clone(), Watermark(9))]
        );
        assert_eq!(
            s.list(t.clone()).await.unwrap(),
            vec![
                stored(&t, "a", 1, r#"{"x":1}"#, None, 3, true),
                stored(&t, "b", 2, pb, Some(hb), 7, false),
            ]
        );
        assert_eq!(
            s.list(u.clone()).await.unwrap(),
            vec![stored(&u, "c", 5, "null", None, 9, true)]
        );
        // `last_gen` 3: the next generation is 4; `u`'s staged generation 3 can be finished.
        assert_eq!(s.begin_snapshot(t.clone()).await.unwrap(), SnapshotGen(4));
        s.finish_snapshot(u.clone(), SnapshotGen(3), Watermark(10))
            .await
            .unwrap();
        assert_eq!(
            s.list(u.clone()).await.unwrap(),
            vec![stored(&u, "d", 1, "true", None, 10, true)]
        );
        let pe = "{\"q\": \"\\\"\\u0001\"}";
        let he = PayloadHash::of_json_text(pe).unwrap();
        s.apply(ApplyBatch {
            topic: t.clone(),
            expected_watermark: Watermark(7),
            new_watermark: Watermark(8),
            writes: vec![DocWrite {
                doc_key: DocKey::new("e/é").unwrap(),
                doc_version: 1,
                payload: Some(pe.to_owned()),
                payload_hash: Some(he),
                watermark: Watermark(8),
                verified: true,
            }],
        })
        .await
        .unwrap();
        s.close();

        // What this store wrote: byte for byte the serde_json-era format.
        assert_eq!(
            get_raw(name, "meta", "last_gen".into()).await.as_deref(),
            Some("4")
        );
        assert_eq!(
            get_raw(name, "topics", "t".into()).await.as_deref(),
            Some(r#"{"w":8,"c":0,"g":4}"#)
        );
        assert_eq!(
            get_raw(name, "topics", "u".into()).await.as_deref(),
            Some(r#"{"w":10,"c":3,"g":null}"#)
        );
        assert_eq!(
            get_raw(name, "docs", doc_key("t", 0, "e/é")).await,
            Some(format!(
                r#"{{"k":"e/é","v":1,"p":"{{\"q\": \"\\\"\\u0001\"}}","h":"{}","w":8,"ok":true}}"#,
                he.to_base64()
            ))
        );
        assert_eq!(
            get_raw(name, "meta", "identity".into()).await.as_deref(),
            Some(identity),
            "an unchanged identity is not rewritten"
        );
        let s = IdbStore::open(name).await.unwrap();
        let other = Identity {
            server: "https://other.example.com".into(),
            subject: None,
            org: Some("acme \"q\"\n".into()),
        };
        assert_eq!(
            s.bind_identity(other).await.unwrap(),
            IdentityCheck::Replaced
        );
        s.close();
        assert_eq!(
            get_raw(name, "meta", "identity".into()).await.as_deref(),
            Some(r#"{"server":"https://other.example.com","subject":null,"org":"acme \"q\"\n"}"#)
        );

        // Records that do not decode are typed `Corrupt` errors, never panics.
        let corrupt = |r: Result<_, StoreError>| matches!(r, Err(StoreError::Corrupt(_)));
        put_raw(name, &[("topics", "v".into(), r#"{"c":0,"g":null}"#)]).await;
        let s = IdbStore::open(name).await.unwrap();
        assert!(
            corrupt(s.watermarks().await.map(drop)),
            "a topic without `w`"
        );
        s.close();
        put_raw(
            name,
            &[
                ("topics", "v".into(), r#"{"w":1,"c":0,"g":null}"#),
                (
                    "docs",
                    doc_key("v", 0, "x"),
                    r#"{"k":"x","v":1,"p":"1","h":null,"w":1,"ok":"yes"}"#,
                ),
                ("meta", "last_gen".into(), r#""4""#),
            ],
        )
        .await;
        let s = IdbStore::open(name).await.unwrap();
        let v = Topic::new("v").unwrap();
        assert!(
            corrupt(s.list(v.clone()).await.map(drop)),
            "`ok` not a boolean"
        );
        assert!(
            corrupt(s.get(v.clone(), DocKey::new("x").unwrap()).await.map(drop)),
            "`ok` not a boolean"
        );
        assert!(
            corrupt(s.begin_snapshot(v).await.map(drop)),
            "`last_gen` a string"
        );
        s.close();
        IdbStore::delete(name).await.unwrap();
    }
}
