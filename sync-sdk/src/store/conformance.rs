//! Store conformance tests: every scenario runs against [`MemoryStore`] and [`SqliteStore`]
//! (`memory_store::*`, `sqlite_store::*`), a property test compares the two on random
//! operation sequences, and `sqlite_files::*` covers what only a file can do (durability,
//! damaged, foreign, newer, read-only, full, locked).
#![allow(clippy::unwrap_used)]

use futures::executor::block_on;

use super::{
    ApplyBatch, ApplyOutcome, DocWrite, Identity, IdentityCheck, MemoryStore, SqliteOptions,
    SqliteStore, Store, StoreError, StoredDoc,
};
use crate::protocol::{DocKey, PayloadHash, Topic, Watermark};

fn topic(name: &str) -> Topic {
    Topic::new(name).unwrap()
}

fn key(k: &str) -> DocKey {
    DocKey::new(k).unwrap()
}

fn payload(k: &str, version: u64) -> String {
    format!(r#"{{"k":"{k}","v":{version}}}"#)
}

/// An upsert of `k` at `version`, written by the update with watermark `wm`.
fn up(k: &str, version: u64, wm: u64) -> DocWrite {
    let p = payload(k, version);
    DocWrite {
        doc_key: key(k),
        doc_version: version,
        payload_hash: Some(PayloadHash::of_json_text(&p).unwrap()),
        payload: Some(p),
        watermark: Watermark(wm),
        verified: true,
    }
}

/// A tombstone of `k` at `version`.
fn tomb(k: &str, version: u64, wm: u64) -> DocWrite {
    DocWrite {
        doc_key: key(k),
        doc_version: version,
        payload: None,
        payload_hash: None,
        watermark: Watermark(wm),
        verified: true,
    }
}

fn batch(t: &str, expected: u64, new: u64, writes: Vec<DocWrite>) -> ApplyBatch {
    ApplyBatch {
        topic: topic(t),
        expected_watermark: Watermark(expected),
        new_watermark: Watermark(new),
        writes,
    }
}

fn identity(server: &str, subject: Option<&str>, org: Option<&str>) -> Identity {
    Identity {
        server: server.into(),
        subject: subject.map(Into::into),
        org: org.map(Into::into),
    }
}

/// `(doc_key, doc_version)` of every visible document, in list order.
async fn versions(s: &dyn Store, t: &str) -> Vec<(String, u64)> {
    s.list(topic(t))
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.doc_key.as_str().to_owned(), d.doc_version))
        .collect()
}

async fn watermark(s: &dyn Store, t: &str) -> Option<u64> {
    s.watermarks()
        .await
        .unwrap()
        .into_iter()
        .find(|(x, _)| x.as_str() == t)
        .map(|(_, w)| w.get())
}

fn owned(v: &[(&str, u64)]) -> Vec<(String, u64)> {
    v.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
}

// ---------------------------------------------------------------------------------------
// Scenarios shared by both stores.
// ---------------------------------------------------------------------------------------

async fn apply_commits_docs_and_watermark_together(s: &dyn Store) {
    let out = s
        .apply(batch("t", 0, 2, vec![up("a", 1, 1), up("b", 1, 2)]))
        .await
        .unwrap();
    assert_eq!(
        out,
        ApplyOutcome {
            watermark: Watermark(2),
            kept_local: vec![]
        }
    );
    assert_eq!(versions(s, "t").await, owned(&[("a", 1), ("b", 1)]));
    assert_eq!(
        s.watermarks().await.unwrap(),
        vec![(topic("t"), Watermark(2))]
    );
    let out = s
        .apply(batch("t", 2, 3, vec![up("a", 2, 3)]))
        .await
        .unwrap();
    assert_eq!(out.watermark, Watermark(3));
    assert_eq!(versions(s, "t").await, owned(&[("a", 2), ("b", 1)]));
}

async fn batch_applied_twice_is_refused_and_writes_nothing(s: &dyn Store) {
    let b = batch("t", 0, 2, vec![up("a", 1, 1), up("b", 1, 2)]);
    s.apply(b.clone()).await.unwrap();
    let mut again = b;
    again.writes = vec![up("a", 9, 1), tomb("b", 9, 2), up("c", 1, 2)];
    again.new_watermark = Watermark(7);
    let err = s.apply(again).await.unwrap_err();
    assert_eq!(
        err,
        StoreError::WatermarkConflict {
            topic: topic("t"),
            expected: Watermark(0),
            found: Watermark(2)
        }
    );
    assert!(err.is_retryable());
    assert_eq!(versions(s, "t").await, owned(&[("a", 1), ("b", 1)]));
    assert_eq!(watermark(s, "t").await, Some(2));

    // An unknown topic holds watermark 0; a refused batch does not create it.
    let err = s
        .apply(batch("unknown", 5, 6, vec![up("x", 1, 6)]))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::WatermarkConflict {
            found: Watermark(0),
            ..
        }
    ));
    assert_eq!(watermark(s, "unknown").await, None);
    assert!(versions(s, "unknown").await.is_empty());
}

async fn doc_version_never_regresses_but_watermark_advances(s: &dyn Store) {
    s.apply(batch("t", 0, 1, vec![up("a", 5, 1), up("b", 2, 1)]))
        .await
        .unwrap();
    let out = s
        .apply(batch(
            "t",
            1,
            4,
            vec![up("a", 5, 2), up("a", 3, 3), up("c", 1, 3), up("b", 3, 4)],
        ))
        .await
        .unwrap();
    assert_eq!(out.kept_local, vec![0, 1]);
    assert_eq!(out.watermark, Watermark(4));
    assert_eq!(watermark(s, "t").await, Some(4));
    let a = s.get(topic("t"), key("a")).await.unwrap().unwrap();
    assert_eq!(
        (a.doc_version, a.payload, a.watermark),
        (5, payload("a", 5), Watermark(1))
    );
    assert_eq!(
        versions(s, "t").await,
        owned(&[("a", 5), ("b", 3), ("c", 1)])
    );
    // Within one batch a later, older write of a doc the batch just wrote is kept out too.
    let out = s
        .apply(batch("t", 4, 5, vec![up("d", 4, 5), up("d", 2, 5)]))
        .await
        .unwrap();
    assert_eq!(out.kept_local, vec![1]);
    assert_eq!(
        s.get(topic("t"), key("d"))
            .await
            .unwrap()
            .unwrap()
            .doc_version,
        4
    );
}

async fn tombstones_delete_unless_older(s: &dyn Store) {
    s.apply(batch(
        "t",
        0,
        1,
        vec![up("a", 3, 1), up("b", 3, 1), up("c", 3, 1)],
    ))
    .await
    .unwrap();
    let out = s
        .apply(batch(
            "t",
            1,
            2,
            vec![
                tomb("a", 4, 2),
                tomb("b", 3, 2),
                tomb("c", 2, 2),
                tomb("zz", 1, 2),
            ],
        ))
        .await
        .unwrap();
    // Newer and equal tombstones delete; an older one is kept out; an absent doc is a no-op.
    assert_eq!(out.kept_local, vec![2]);
    assert_eq!(versions(s, "t").await, owned(&[("c", 3)]));
    assert_eq!(s.get(topic("t"), key("a")).await.unwrap(), None);
    assert_eq!(watermark(s, "t").await, Some(2));
}

async fn empty_batch_advances_watermark(s: &dyn Store) {
    s.apply(batch("t", 0, 1, vec![up("a", 1, 1)]))
        .await
        .unwrap();
    let out = s.apply(batch("t", 1, 9, vec![])).await.unwrap();
    assert_eq!(
        out,
        ApplyOutcome {
            watermark: Watermark(9),
            kept_local: vec![]
        }
    );
    assert_eq!(watermark(s, "t").await, Some(9));
    assert_eq!(versions(s, "t").await, owned(&[("a", 1)]));
    // Also on a topic the store has never seen.
    s.apply(batch("fresh", 0, 4, vec![])).await.unwrap();
    assert_eq!(watermark(s, "fresh").await, Some(4));
}

async fn snapshot_is_invisible_until_finish_then_swaps_atomically(s: &dyn Store) {
    s.apply(batch("t", 0, 3, vec![up("a", 1, 1), up("b", 1, 3)]))
        .await
        .unwrap();
    s.apply(batch("other", 0, 1, vec![up("o", 1, 1)]))
        .await
        .unwrap();
    let g = s.begin_snapshot(topic("t")).await.unwrap();
    s.put_snapshot_page(topic("t"), g, vec![up("b", 7, 10), up("c", 2, 10)])
        .await
        .unwrap();
    s.put_snapshot_page(topic("t"), g, vec![up("d", 1, 10)])
        .await
        .unwrap();

    // Staged pages are invisible; the old data and watermark stay readable.
    assert_eq!(versions(s, "t").await, owned(&[("a", 1), ("b", 1)]));
    assert_eq!(s.get(topic("t"), key("c")).await.unwrap(), None);
    assert_eq!(watermark(s, "t").await, Some(3));
    // Live updates keep applying to the visible data meanwhile.
    s.apply(batch("t", 3, 4, vec![up("a", 2, 4)]))
        .await
        .unwrap();
    assert_eq!(versions(s, "t").await, owned(&[("a", 2), ("b", 1)]));

    s.finish_snapshot(topic("t"), g, Watermark(10))
        .await
        .unwrap();
    // Swapped: docs absent from the snapshot are gone, the watermark is the snapshot's.
    assert_eq!(
        versions(s, "t").await,
        owned(&[("b", 7), ("c", 2), ("d", 1)])
    );
    assert_eq!(watermark(s, "t").await, Some(10));
    let b = s.get(topic("t"), key("b")).await.unwrap().unwrap();
    assert_eq!((b.payload, b.watermark), (payload("b", 7), Watermark(10)));
    // Other topics are untouched.
    assert_eq!(versions(s, "other").await, owned(&[("o", 1)]));
    assert_eq!(watermark(s, "other").await, Some(1));
    // Tailing resumes after the snapshot watermark.
    assert!(matches!(
        s.apply(batch("t", 4, 5, vec![])).await,
        Err(StoreError::WatermarkConflict {
            found: Watermark(10),
            ..
        })
    ));
    let out = s
        .apply(batch("t", 10, 11, vec![up("c", 2, 11), up("e", 1, 11)]))
        .await
        .unwrap();
    assert_eq!(out.kept_local, vec![0]);
    assert_eq!(
        versions(s, "t").await,
        owned(&[("b", 7), ("c", 2), ("d", 1), ("e", 1)])
    );
}

async fn snapshot_of_a_new_topic_appears_only_at_finish(s: &dyn Store) {
    let g = s.begin_snapshot(topic("n")).await.unwrap();
    s.put_snapshot_page(topic("n"), g, vec![up("a", 1, 5)])
        .await
        .unwrap();
    assert!(versions(s, "n").await.is_empty());
    assert_eq!(watermark(s, "n").await.unwrap_or(0), 0);
    s.finish_snapshot(topic("n"), g, Watermark(5))
        .await
        .unwrap();
    assert_eq!(versions(s, "n").await, owned(&[("a", 1)]));
    assert_eq!(watermark(s, "n").await, Some(5));
    // An empty snapshot empties the topic.
    let g = s.begin_snapshot(topic("n")).await.unwrap();
    s.finish_snapshot(topic("n"), g, Watermark(8))
        .await
        .unwrap();
    assert!(versions(s, "n").await.is_empty());
    assert_eq!(watermark(s, "n").await, Some(8));
}

async fn snapshot_page_tombstones_and_repeats_resolve_by_version(s: &dyn Store) {
    let g = s.begin_snapshot(topic("t")).await.unwrap();
    s.put_snapshot_page(
        topic("t"),
        g,
        vec![up("a", 2, 5), up("b", 2, 5), up("c", 2, 5)],
    )
    .await
    .unwrap();
    // A repeated key: same version replaces, older is ignored; tombstones remove staged docs.
    s.put_snapshot_page(
        topic("t"),
        g,
        vec![
            up("a", 1, 5),
            up("b", 2, 6),
            tomb("c", 2, 6),
            tomb("x", 1, 6),
        ],
    )
    .await
    .unwrap();
    s.finish_snapshot(topic("t"), g, Watermark(6))
        .await
        .unwrap();
    assert_eq!(versions(s, "t").await, owned(&[("a", 2), ("b", 2)]));
    let b = s.get(topic("t"), key("b")).await.unwrap().unwrap();
    assert_eq!(b.watermark, Watermark(6));
}

async fn begin_snapshot_discards_an_unfinished_one(s: &dyn Store) {
    s.apply(batch("t", 0, 1, vec![up("old", 1, 1)]))
        .await
        .unwrap();
    let g1 = s.begin_snapshot(topic("t")).await.unwrap();
    s.put_snapshot_page(topic("t"), g1, vec![up("x", 1, 5)])
        .await
        .unwrap();
    let g2 = s.begin_snapshot(topic("t")).await.unwrap();
    assert_ne!(g1, g2);
    assert_eq!(
        s.put_snapshot_page(topic("t"), g1, vec![up("y", 1, 5)])
            .await,
        Err(StoreError::StaleSnapshot(topic("t")))
    );
    assert_eq!(
        s.finish_snapshot(topic("t"), g1, Watermark(5)).await,
        Err(StoreError::StaleSnapshot(topic("t")))
    );
    // The refused calls changed nothing visible.
    assert_eq!(versions(s, "t").await, owned(&[("old", 1)]));
    assert_eq!(watermark(s, "t").await, Some(1));
    s.put_snapshot_page(topic("t"), g2, vec![up("z", 1, 6)])
        .await
        .unwrap();
    s.finish_snapshot(topic("t"), g2, Watermark(6))
        .await
        .unwrap();
    // Nothing of the abandoned generation survives.
    assert_eq!(versions(s, "t").await, owned(&[("z", 1)]));
}

async fn finished_or_foreign_generations_are_stale(s: &dyn Store) {
    let g = s.begin_snapshot(topic("t")).await.unwrap();
    s.finish_snapshot(topic("t"), g, Watermark(3))
        .await
        .unwrap();
    assert_eq!(
        s.finish_snapshot(topic("t"), g, Watermark(4)).await,
        Err(StoreError::StaleSnapshot(topic("t")))
    );
    assert_eq!(
        s.put_snapshot_page(topic("t"), g, vec![up("a", 1, 3)])
            .await,
        Err(StoreError::StaleSnapshot(topic("t")))
    );
    // A generation of another topic, or of a topic never snapshotted.
    let g2 = s.begin_snapshot(topic("u")).await.unwrap();
    assert_eq!(
        s.put_snapshot_page(topic("t"), g2, vec![]).await,
        Err(StoreError::StaleSnapshot(topic("t")))
    );
    assert_eq!(
        s.finish_snapshot(topic("never"), g2, Watermark(1)).await,
        Err(StoreError::StaleSnapshot(topic("never")))
    );
    assert_eq!(watermark(s, "t").await, Some(3));
    assert_eq!(watermark(s, "never").await, None);
}

async fn identity_fresh_same_replaced_wipes_old_docs(s: &dyn Store) {
    let alice = identity("https://sync.example.com", Some("user:1"), Some("acme"));
    assert_eq!(
        s.bind_identity(alice.clone()).await.unwrap(),
        IdentityCheck::Fresh
    );
    s.apply(batch("t", 0, 2, vec![up("a", 1, 2)]))
        .await
        .unwrap();
    let g = s.begin_snapshot(topic("u")).await.unwrap();
    s.put_snapshot_page(topic("u"), g, vec![up("s", 1, 1)])
        .await
        .unwrap();
    assert_eq!(
        s.bind_identity(alice.clone()).await.unwrap(),
        IdentityCheck::Same
    );
    assert_eq!(versions(s, "t").await, owned(&[("a", 1)]));

    // Same server and subject, another org: another identity.
    let other_org = identity("https://sync.example.com", Some("user:1"), Some("other"));
    assert_eq!(
        s.bind_identity(other_org.clone()).await.unwrap(),
        IdentityCheck::Replaced
    );
    assert!(versions(s, "t").await.is_empty());
    assert!(s.get(topic("t"), key("a")).await.unwrap().is_none());
    assert!(s.watermarks().await.unwrap().is_empty());
    // The wiped identity's unfinished snapshot cannot be finished into the new one.
    assert_eq!(
        s.finish_snapshot(topic("u"), g, Watermark(1)).await,
        Err(StoreError::StaleSnapshot(topic("u")))
    );
    assert!(versions(s, "u").await.is_empty());
    assert_eq!(
        s.bind_identity(other_org).await.unwrap(),
        IdentityCheck::Same
    );

    // A missing subject differs from a present one.
    s.apply(batch("t", 0, 1, vec![up("b", 1, 1)]))
        .await
        .unwrap();
    let anonymous = identity("https://sync.example.com", None, Some("other"));
    assert_eq!(
        s.bind_identity(anonymous.clone()).await.unwrap(),
        IdentityCheck::Replaced
    );
    assert!(versions(s, "t").await.is_empty());
    assert_eq!(
        s.bind_identity(anonymous).await.unwrap(),
        IdentityCheck::Same
    );
}

async fn list_is_sorted_by_doc_key_and_get_finds_one(s: &dyn Store) {
    let keys = ["m", "b", "a.2", "B", "a", "a.10", "z", "é", "0"];
    let writes = keys.iter().map(|k| up(k, 1, 1)).collect();
    s.apply(batch("t", 0, 1, writes)).await.unwrap();
    s.apply(batch("t2", 0, 1, vec![up("a", 9, 1)]))
        .await
        .unwrap();
    let mut expected: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    expected.sort();
    let listed: Vec<String> = versions(s, "t").await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(listed, expected);
    assert!(versions(s, "nothing").await.is_empty());
    assert_eq!(
        s.get(topic("t"), key("a"))
            .await
            .unwrap()
            .unwrap()
            .doc_version,
        1
    );
    assert_eq!(
        s.get(topic("t2"), key("a"))
            .await
            .unwrap()
            .unwrap()
            .doc_version,
        9
    );
    assert_eq!(s.get(topic("t2"), key("b")).await.unwrap(), None);
    assert_eq!(s.get(topic("nothing"), key("a")).await.unwrap(), None);
    assert_eq!(
        s.watermarks().await.unwrap(),
        vec![(topic("t"), Watermark(1)), (topic("t2"), Watermark(1))]
    );
}

async fn stored_doc_round_trips_every_field(s: &dyn Store) {
    let unverified = DocWrite {
        doc_key: key("u"),
        doc_version: 7,
        payload: Some(r#"{"n":1.0}"#.into()),
        payload_hash: Some(PayloadHash([7; 32])),
        watermark: Watermark(3),
        verified: false,
    };
    let unhashed = DocWrite {
        payload_hash: None,
        ..up("h", 2, 4)
    };
    let big = DocWrite {
        doc_version: u64::from(u32::MAX) + 5,
        ..up("big", 1, 4)
    };
    s.apply(batch("t", 0, 4, vec![unverified, unhashed, big]))
        .await
        .unwrap();
    assert_eq!(
        s.get(topic("t"), key("u")).await.unwrap(),
        Some(StoredDoc {
            topic: topic("t"),
            doc_key: key("u"),
            doc_version: 7,
            payload: r#"{"n":1.0}"#.into(),
            payload_hash: Some(PayloadHash([7; 32])),
            watermark: Watermark(3),
            verified: false,
        })
    );
    let h = s.get(topic("t"), key("h")).await.unwrap().unwrap();
    assert_eq!(
        (h.payload_hash, h.verified, h.watermark),
        (None, true, Watermark(4))
    );
    let big = s.get(topic("t"), key("big")).await.unwrap().unwrap();
    assert_eq!(big.doc_version, u64::from(u32::MAX) + 5);
}

macro_rules! for_both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod memory_store {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(&super::MemoryStore::new()).await;
                }
            )*
        }
        mod sqlite_store {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let store = super::SqliteStore::open_in_memory().unwrap();
                    super::$scenario(&store).await;
                    assert!(store.integrity_check().await.unwrap());
                }
            )*
        }
    };
}

for_both_stores!(
    apply_commits_docs_and_watermark_together,
    batch_applied_twice_is_refused_and_writes_nothing,
    doc_version_never_regresses_but_watermark_advances,
    tombstones_delete_unless_older,
    empty_batch_advances_watermark,
    snapshot_is_invisible_until_finish_then_swaps_atomically,
    snapshot_of_a_new_topic_appears_only_at_finish,
    snapshot_page_tombstones_and_repeats_resolve_by_version,
    begin_snapshot_discards_an_unfinished_one,
    finished_or_foreign_generations_are_stale,
    identity_fresh_same_replaced_wipes_old_docs,
    list_is_sorted_by_doc_key_and_get_finds_one,
    stored_doc_round_trips_every_field,
);
