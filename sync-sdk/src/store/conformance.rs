//! Store conformance tests: every scenario runs against [`MemoryStore`] and [`SqliteStore`]
//! (`memory_store::*`, `sqlite_store::*`), a property test compares the two on random
//! operation sequences, and `sqlite_files::*` covers what only a file can do (durability,
//! damaged, foreign, newer, read-only, full, locked).
#![allow(clippy::unwrap_used)]

use super::{
    ApplyBatch, ApplyOutcome, DocWrite, Identity, IdentityCheck, MemoryStore, Store, StoreError,
    StoredDoc,
};
#[cfg(feature = "native")]
use super::{SqliteOptions, SqliteStore};
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
        #[cfg(feature = "native")]
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

// ---------------------------------------------------------------------------------------
// MemoryStore is the reference model: random operation sequences give the same results,
// errors and visible state on SQLite.
// ---------------------------------------------------------------------------------------

#[cfg(feature = "native")]
mod model {
    use futures::executor::block_on;
    use proptest::prelude::*;

    use super::*;
    use crate::store::SnapshotGen;

    const TOPICS: [&str; 2] = ["t0", "t1"];
    const KEYS: [&str; 4] = ["a", "b", "c", "d"];

    #[derive(Debug, Clone)]
    enum Op {
        /// `stale`: expect a wrong watermark.
        Apply {
            t: usize,
            stale: bool,
            advance: u64,
            writes: Vec<(usize, u64, bool)>,
        },
        Begin {
            t: usize,
        },
        /// `g` indexes the generations handed out so far (from the newest).
        Put {
            t: usize,
            g: usize,
            writes: Vec<(usize, u64, bool)>,
        },
        Finish {
            t: usize,
            g: usize,
            wm: u64,
        },
        Bind {
            who: usize,
        },
    }

    fn writes() -> impl Strategy<Value = Vec<(usize, u64, bool)>> {
        prop::collection::vec((0..KEYS.len(), 0u64..6, prop::bool::weighted(0.25)), 0..5)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..2usize, prop::bool::weighted(0.15), 0u64..3, writes())
                .prop_map(|(t, stale, advance, writes)| Op::Apply { t, stale, advance, writes }),
            1 => (0..2usize).prop_map(|t| Op::Begin { t }),
            2 => (0..2usize, 0..3usize, writes()).prop_map(|(t, g, writes)| Op::Put { t, g, writes }),
            1 => (0..2usize, 0..3usize, 0u64..30).prop_map(|(t, g, wm)| Op::Finish { t, g, wm }),
            1 => (0..3usize).prop_map(|who| Op::Bind { who }),
        ]
    }

    fn to_writes(w: &[(usize, u64, bool)], wm: u64) -> Vec<DocWrite> {
        w.iter()
            .map(|&(k, v, dead)| {
                if dead {
                    tomb(KEYS[k], v, wm)
                } else {
                    up(KEYS[k], v, wm)
                }
            })
            .collect()
    }

    fn pick(gens: &[SnapshotGen], g: usize) -> SnapshotGen {
        gens.iter()
            .rev()
            .nth(g)
            .copied()
            .unwrap_or(SnapshotGen(999))
    }

    async fn state(s: &dyn Store) -> (Vec<(Topic, Watermark)>, Vec<Vec<StoredDoc>>) {
        let mut lists = Vec::new();
        for t in TOPICS {
            lists.push(s.list(topic(t)).await.unwrap());
        }
        (s.watermarks().await.unwrap(), lists)
    }

    fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let model = MemoryStore::new();
        let real = SqliteStore::open_in_memory().unwrap();
        let (mut model_gens, mut real_gens) = (Vec::new(), Vec::new());
        block_on(async {
            for op in ops {
                match op {
                    Op::Apply {
                        t,
                        stale,
                        advance,
                        writes,
                    } => {
                        let current = watermark(&model, TOPICS[t]).await.unwrap_or(0);
                        let expected = if stale { current + 1 } else { current };
                        let b = batch(
                            TOPICS[t],
                            expected,
                            current + advance,
                            to_writes(&writes, current + advance),
                        );
                        let (m, r) = (model.apply(b.clone()).await, real.apply(b).await);
                        prop_assert_eq!(m, r);
                    }
                    Op::Begin { t } => {
                        let m = model.begin_snapshot(topic(TOPICS[t])).await.unwrap();
                        let r = real.begin_snapshot(topic(TOPICS[t])).await.unwrap();
                        model_gens.push(m);
                        real_gens.push(r);
                    }
                    Op::Put { t, g, writes } => {
                        let w = to_writes(&writes, 50);
                        let m = model
                            .put_snapshot_page(topic(TOPICS[t]), pick(&model_gens, g), w.clone())
                            .await;
                        let r = real
                            .put_snapshot_page(topic(TOPICS[t]), pick(&real_gens, g), w)
                            .await;
                        prop_assert_eq!(m, r);
                    }
                    Op::Finish { t, g, wm } => {
                        let m = model
                            .finish_snapshot(topic(TOPICS[t]), pick(&model_gens, g), Watermark(wm))
                            .await;
                        let r = real
                            .finish_snapshot(topic(TOPICS[t]), pick(&real_gens, g), Watermark(wm))
                            .await;
                        prop_assert_eq!(m, r);
                    }
                    Op::Bind { who } => {
                        let id = identity("https://s", Some(["u1", "u2", "u3"][who]), None);
                        let (m, r) = (
                            model.bind_identity(id.clone()).await,
                            real.bind_identity(id).await,
                        );
                        prop_assert_eq!(m, r);
                    }
                }
                prop_assert_eq!(state(&model).await, state(&real).await);
            }
            prop_assert!(real.integrity_check().await.unwrap());
            Ok(())
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// Also proves the SQLite store needs no tokio runtime (`block_on` only).
        #[test]
        fn sqlite_matches_the_memory_model(ops in prop::collection::vec(op(), 1..40)) {
            run(ops)?;
        }
    }
}

// ---------------------------------------------------------------------------------------
// SQLite files: durability and every way a file can be unusable.
// ---------------------------------------------------------------------------------------

#[cfg(feature = "native")]
mod sqlite_files {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::*;
    use crate::store::SCHEMA_VERSION;

    fn db(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("khala.db")
    }

    fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open(path, SqliteOptions::default())
    }

    fn read_only(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open(
            path,
            SqliteOptions {
                read_only: true,
                ..SqliteOptions::default()
            },
        )
    }

    /// A store holding `a`, `b` in topic `t` at watermark 2, then closed.
    async fn seeded(path: &Path) {
        let s = open(path).unwrap();
        s.bind_identity(identity("https://s", Some("u"), None))
            .await
            .unwrap();
        s.apply(batch("t", 0, 2, vec![up("a", 1, 1), up("b", 1, 2)]))
            .await
            .unwrap();
        s.close();
    }

    async fn assert_seeded_intact(s: &SqliteStore) {
        assert_eq!(versions(s, "t").await, owned(&[("a", 1), ("b", 1)]));
        assert_eq!(watermark(s, "t").await, Some(2));
        assert!(s.integrity_check().await.unwrap());
    }

    #[tokio::test]
    async fn reopen_keeps_docs_watermarks_identity_and_staged_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(&dir);
        let s = open(&path).unwrap();
        let me = identity("https://s", Some("u"), Some("o"));
        assert_eq!(
            s.bind_identity(me.clone()).await.unwrap(),
            IdentityCheck::Fresh
        );
        assert_eq!(
            s.query_for_test::<String>("PRAGMA journal_mode")
                .await
                .unwrap(),
            "wal"
        );
        assert_eq!(
            s.query_for_test::<i64>("PRAGMA synchronous").await.unwrap(),
            1
        );
        s.apply(batch("t", 0, 2, vec![up("a", 1, 1), up("b", 1, 2)]))
            .await
            .unwrap();
        let g = s.begin_snapshot(topic("t")).await.unwrap();
        s.put_snapshot_page(topic("t"), g, vec![up("z", 1, 9)])
            .await
            .unwrap();
        drop(s);

        let s = open(&path).unwrap();
        assert_eq!(s.bind_identity(me).await.unwrap(), IdentityCheck::Same);
        assert_seeded_intact(&s).await;
        assert_eq!(
            s.query_for_test::<i64>("PRAGMA user_version")
                .await
                .unwrap(),
            i64::from(SCHEMA_VERSION)
        );
        // After a restart the engine begins the snapshot again: the leftover is discarded.
        let g2 = s.begin_snapshot(topic("t")).await.unwrap();
        assert!(g2 > g);
        assert_eq!(
            s.query_for_test::<i64>("SELECT count(*) FROM khala_docs")
                .await
                .unwrap(),
            2
        );
        s.finish_snapshot(topic("t"), g2, Watermark(9))
            .await
            .unwrap();
        assert!(versions(&s, "t").await.is_empty());
        assert!(s.integrity_check().await.unwrap());
    }

    #[tokio::test]
    async fn garbage_file_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let garbage: Vec<u8> = (0..16 * 1024).map(|_| rng.u8(..)).collect();
        std::fs::write(db(&dir), &garbage).unwrap();
        let err = open(&db(&dir)).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        assert_eq!(err.code(), "store_corrupt");
        assert!(!err.is_retryable());
        // Refusing did not touch it.
        assert_eq!(std::fs::read(db(&dir)).unwrap(), garbage);

        // A valid header followed by garbage is damaged too.
        let mut headed = b"SQLite format 3\0".to_vec();
        headed.extend_from_slice(&garbage[16..]);
        std::fs::write(db(&dir), &headed).unwrap();
        let err = open(&db(&dir)).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    }

    #[tokio::test]
    async fn damaged_pages_are_reported_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(&dir);
        let s = open(&path).unwrap();
        let writes = (0..400).map(|i| up(&format!("doc{i:04}"), 1, 1)).collect();
        s.apply(batch("t", 0, 1, writes)).await.unwrap();
        s.close();
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 8 * 4096);
        for b in &mut bytes[2 * 4096..] {
            *b = 0x5a;
        }
        std::fs::write(&path, &bytes).unwrap();
        // Wherever SQLite notices it, the damage surfaces as `Corrupt`, never as data.
        let noticed = match open(&path) {
            Err(e) => Some(e),
            Ok(s) => match s.list(topic("t")).await {
                Err(e) => Some(e),
                Ok(docs) => panic!("served {} docs from a damaged file", docs.len()),
            },
        };
        assert!(
            matches!(noticed, Some(StoreError::Corrupt(_))),
            "{noticed:?}"
        );
    }

    #[tokio::test]
    async fn foreign_database_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(&dir);
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);
                 INSERT INTO notes(body) VALUES('keep me');
                 PRAGMA user_version = 7;",
            )
            .unwrap();
        }
        assert_eq!(open(&path).unwrap_err(), StoreError::Foreign);
        assert_eq!(read_only(&path).unwrap_err(), StoreError::Foreign);
        let c = rusqlite::Connection::open(&path).unwrap();
        let tables: Vec<String> = c
            .prepare("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(tables, vec!["notes".to_owned()]);
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 7);
    }

    #[tokio::test]
    async fn empty_file_becomes_a_store() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(db(&dir), b"").unwrap();
        let s = open(&db(&dir)).unwrap();
        s.apply(batch("t", 0, 1, vec![])).await.unwrap();
        assert!(s.integrity_check().await.unwrap());
    }

    #[tokio::test]
    async fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(&dir);
        seeded(&path).await;
        let next = SCHEMA_VERSION + 1;
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", next).unwrap();
        }
        let too_new = StoreError::SchemaTooNew {
            found: next,
            supported: SCHEMA_VERSION,
        };
        assert_eq!(open(&path).unwrap_err(), too_new);
        assert_eq!(read_only(&path).unwrap_err(), too_new);

        // The meta row counts too (a tool may have reset user_version).
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", SCHEMA_VERSION)
                .unwrap();
            c.execute(
                "UPDATE khala_meta SET value = ?1 WHERE key = 'schema_version'",
                [(next + 1).to_string()],
            )
            .unwrap();
        }
        assert_eq!(
            open(&path).unwrap_err(),
            StoreError::SchemaTooNew {
                found: next + 1,
                supported: SCHEMA_VERSION
            }
        );
        // Put back, the data is all there.
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute(
                "UPDATE khala_meta SET value = ?1 WHERE key = 'schema_version'",
                [SCHEMA_VERSION.to_string()],
            )
            .unwrap();
        }
        assert_seeded_intact(&open(&path).unwrap()).await;
    }

    #[tokio::test]
    async fn read_only_store_refuses_writes_and_serves_committed_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(&dir);
        seeded(&path).await;
        let s = read_only(&path).unwrap();
        assert_seeded_intact(&s).await;
        assert_eq!(
            s.bind_identity(identity("https://s", Some("u"), None))
                .await,
            Ok(IdentityCheck::Same)
        );
        let err = s
            .apply(batch("t", 2, 3, vec![up("c", 1, 3)]))
            .await
            .unwrap_err();
        assert_eq!(err, StoreError::ReadOnly);
        assert_eq!(err.code(), "store_read_only");
        assert_eq!(
            s.bind_identity(identity("https://other", None, None)).await,
            Err(StoreError::ReadOnly)
        );
        assert_eq!(
            s.begin_snapshot(topic("t")).await,
            Err(StoreError::ReadOnly)
        );
        assert_seeded_intact(&s).await;
        s.close();
        // A missing or unmigrated file cannot be opened read-only.
        assert!(read_only(&dir.path().join("missing.db")).is_err());
        std::fs::write(dir.path().join("empty.db"), b"").unwrap();
        assert_eq!(
            read_only(&dir.path().join("empty.db")).unwrap_err(),
            StoreError::ReadOnly
        );
        // Still writable through a normal open.
        let s = open(&path).unwrap();
        s.apply(batch("t", 2, 3, vec![])).await.unwrap();
    }

    #[tokio::test]
    async fn write_protected_file_is_read_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = db(&dir);
        seeded(&path).await;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        if std::fs::OpenOptions::new().write(true).open(&path).is_ok() {
            // Running as root: permissions are not enforced; `read_only_store_*` covers it.
            eprintln!("skipped: the file stays writable for this user");
            return;
        }
        let s = open(&path).unwrap();
        assert_eq!(
            s.apply(batch("t", 2, 3, vec![up("c", 1, 3)])).await,
            Err(StoreError::ReadOnly)
        );
        assert_seeded_intact(&s).await;
        s.close();

        // A write-protected directory too (no -wal/-shm can be created next to the file).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        let opened = open(&path);
        eprintln!("read-only dir: {:?}", opened.as_ref().map(|_| ()));
        let s = opened.unwrap();
        assert_eq!(
            s.apply(batch("t", 2, 3, vec![up("c", 1, 3)])).await,
            Err(StoreError::ReadOnly)
        );
        assert_seeded_intact(&s).await;
        s.close();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn disk_full_rolls_back_the_whole_batch_and_keeps_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(&dir);
        let s = open(&path).unwrap();
        for i in 0..3u64 {
            s.apply(batch("t", i, i + 1, vec![up(&format!("k{i}"), 1, i + 1)]))
                .await
                .unwrap();
        }
        let before = versions(&s, "t").await;
        let pages: i64 = s.query_for_test("PRAGMA page_count").await.unwrap();
        // Room for a page or two more: the big batch cannot fit.
        s.query_for_test::<i64>(format!("PRAGMA max_page_count = {}", pages + 2))
            .await
            .unwrap();
        let big: Vec<DocWrite> = (0..200)
            .map(|i| DocWrite {
                payload: Some(format!(r#"{{"pad":"{}"}}"#, "x".repeat(2000))),
                payload_hash: None,
                ..up(&format!("big{i:03}"), 1, 4)
            })
            .collect();
        let err = s.apply(batch("t", 3, 4, big.clone())).await.unwrap_err();
        assert_eq!(err, StoreError::DiskFull);
        assert_eq!(err.code(), "store_disk_full");
        assert_eq!(versions(&s, "t").await, before);
        assert_eq!(watermark(&s, "t").await, Some(3));
        assert!(s.integrity_check().await.unwrap());

        // A snapshot page that does not fit leaves the visible data alone as well.
        let g = s.begin_snapshot(topic("t")).await.unwrap();
        assert_eq!(
            s.put_snapshot_page(topic("t"), g, big.clone()).await,
            Err(StoreError::DiskFull)
        );
        assert_eq!(versions(&s, "t").await, before);

        // Space again: the same batch (same expected watermark) commits in full.
        s.query_for_test::<i64>("PRAGMA max_page_count = 1000000")
            .await
            .unwrap();
        s.apply(batch("t", 3, 4, big)).await.unwrap();
        s.close();
        let s = open(&path).unwrap();
        assert_eq!(versions(&s, "t").await.len(), 203);
        assert_eq!(watermark(&s, "t").await, Some(4));
        assert!(s.integrity_check().await.unwrap());
    }

    #[tokio::test]
    async fn another_writer_holding_the_lock_is_busy_then_retry_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let path = db(&dir);
        seeded(&path).await;
        let s = SqliteStore::open(
            &path,
            SqliteOptions {
                busy_timeout: Duration::from_millis(50),
                ..SqliteOptions::default()
            },
        )
        .unwrap();
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let err = s
            .apply(batch("t", 2, 3, vec![up("c", 1, 3)]))
            .await
            .unwrap_err();
        assert_eq!(err, StoreError::Busy);
        assert!(err.is_retryable());
        // Readers are not blocked by a writer in WAL mode.
        assert_seeded_intact(&s).await;
        other.execute_batch("ROLLBACK").unwrap();
        s.apply(batch("t", 2, 3, vec![up("c", 1, 3)]))
            .await
            .unwrap();
        assert_eq!(versions(&s, "t").await.len(), 3);
    }

    #[tokio::test]
    async fn closed_store_reports_closed_for_every_clone() {
        let s = SqliteStore::open_in_memory().unwrap();
        let clone = s.clone();
        s.apply(batch("t", 0, 1, vec![])).await.unwrap();
        s.close();
        s.close();
        assert_eq!(clone.watermarks().await, Err(StoreError::Closed));
        assert_eq!(
            s.apply(batch("t", 1, 2, vec![])).await,
            Err(StoreError::Closed)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_keep_every_batch() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&db(&dir)).unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let s = s.clone();
                tokio::spawn(async move {
                    let name = format!("topic{t}");
                    for i in 0..50u64 {
                        s.apply(batch(&name, i, i + 1, vec![up(&format!("k{i}"), 1, i + 1)]))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let marks = s.watermarks().await.unwrap();
        assert_eq!(marks.len(), 8);
        assert!(marks.iter().all(|(_, w)| *w == Watermark(50)));
        assert_eq!(versions(&s, "topic3").await.len(), 50);
        assert!(s.integrity_check().await.unwrap());
    }
}
