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
