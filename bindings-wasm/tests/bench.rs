//! Store throughput in headless Chromium: `scripts/bench.sh` runs this (not part of the test
//! command). Prints one line per measurement; numbers go into README.md.
//!
//! - live: 500 batches of 1 document (one transaction each: documents + watermark)
//! - replay: 100 batches of 100 documents
//! - snapshot: 10 pages of 1000 documents, then the swap
//! - list: read back the 10,000-document topic
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used, missing_docs)]

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

use khala_sync::protocol::{DocKey, PayloadHash, Topic, Watermark};
use khala_sync::store::{ApplyBatch, DocWrite, Identity, MemoryStore, Store};
use khala_sync_wasm::idb::IdbStore;
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::wasm_bindgen_test;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn now() -> f64;
    #[wasm_bindgen(js_namespace = console, js_name = log)]
    fn log(s: &str);
}

fn doc(i: u64, wm: u64) -> DocWrite {
    let p = format!(
        r#"{{"run_id":"{i:08}","status":"running","title":"Benchmark document {i}","step_count":{i},"cost_usd":12.5}}"#
    );
    DocWrite {
        doc_key: DocKey::new(format!("runtime/run_summary:{i:08}")).unwrap(),
        doc_version: wm,
        payload_hash: Some(PayloadHash::of_json_text(&p).unwrap()),
        payload: Some(p),
        watermark: Watermark(wm),
        verified: true,
    }
}

async fn run(name: &str, s: &dyn Store) {
    s.bind_identity(Identity {
        server: "https://bench.example".into(),
        subject: None,
        org: None,
    })
    .await
    .unwrap();
    let live = Topic::new("bench.live").unwrap();
    let t0 = now();
    for i in 0..500u64 {
        s.apply(ApplyBatch {
            topic: live.clone(),
            expected_watermark: Watermark(i),
            new_watermark: Watermark(i + 1),
            writes: vec![doc(i % 50, i + 1)],
        })
        .await
        .unwrap();
    }
    let ms = now() - t0;
    log(&format!(
        "BENCH {name} live: 500 batches x 1 doc in {ms:.0} ms = {:.0} commits/s",
        500_000.0 / ms
    ));

    let replay = Topic::new("bench.replay").unwrap();
    let t0 = now();
    let mut wm = 0;
    for b in 0..100u64 {
        let writes = (0..100).map(|j| doc(b * 100 + j, wm + j + 1)).collect();
        s.apply(ApplyBatch {
            topic: replay.clone(),
            expected_watermark: Watermark(wm),
            new_watermark: Watermark(wm + 100),
            writes,
        })
        .await
        .unwrap();
        wm += 100;
    }
    let ms = now() - t0;
    log(&format!(
        "BENCH {name} replay: 100 batches x 100 docs in {ms:.0} ms = {:.0} docs/s",
        10_000_000.0 / ms
    ));

    let snap = Topic::new("bench.snapshot").unwrap();
    let t0 = now();
    let g = s.begin_snapshot(snap.clone()).await.unwrap();
    for p in 0..10u64 {
        let docs = (0..1000).map(|j| doc(p * 1000 + j, 10_000)).collect();
        s.put_snapshot_page(snap.clone(), g, docs).await.unwrap();
    }
    s.finish_snapshot(snap.clone(), g, Watermark(10_000))
        .await
        .unwrap();
    let ms = now() - t0;
    log(&format!(
        "BENCH {name} snapshot: 10 pages x 1000 docs + swap in {ms:.0} ms = {:.0} docs/s",
        10_000_000.0 / ms
    ));

    let t0 = now();
    let n = s.list(snap).await.unwrap().len();
    let ms = now() - t0;
    assert_eq!(n, 10_000);
    log(&format!("BENCH {name} list: {n} docs in {ms:.0} ms"));
}

#[wasm_bindgen_test]
async fn store_throughput() {
    IdbStore::delete("bench").await.unwrap();
    let idb = IdbStore::open("bench").await.unwrap();
    run("indexeddb", &idb).await;
    idb.close();
    IdbStore::delete("bench").await.unwrap();
    run("memory", &MemoryStore::new()).await;
}
