//! A store that takes `delay` for every batch it applies: the "deliberately slow store" of
//! the bounded-memory test (a phone's slow flash, a busy disk).

use std::sync::Arc;
use std::time::Duration;

use khala_sync::store::{
    ApplyBatch, ApplyOutcome, DocWrite, Identity, IdentityCheck, SnapshotGen, Store, StoreFuture,
};
use khala_sync::{DocKey, StoredDoc, Topic, Watermark};

/// Wraps a real store and sleeps before every `apply`.
pub struct SlowStore {
    inner: Arc<dyn Store>,
    delay: Duration,
}

impl SlowStore {
    /// `inner`, slowed down by `delay` per applied batch.
    pub fn new(inner: Arc<dyn Store>, delay: Duration) -> Self {
        Self { inner, delay }
    }
}

impl Store for SlowStore {
    fn bind_identity(&self, identity: Identity) -> StoreFuture<'_, IdentityCheck> {
        self.inner.bind_identity(identity)
    }

    fn watermarks(&self) -> StoreFuture<'_, Vec<(Topic, Watermark)>> {
        self.inner.watermarks()
    }

    fn apply(&self, batch: ApplyBatch) -> StoreFuture<'_, ApplyOutcome> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.inner.apply(batch).await
        })
    }

    fn begin_snapshot(&self, topic: Topic) -> StoreFuture<'_, SnapshotGen> {
        self.inner.begin_snapshot(topic)
    }

    fn put_snapshot_page(
        &self,
        topic: Topic,
        generation: SnapshotGen,
        docs: Vec<DocWrite>,
    ) -> StoreFuture<'_, ()> {
        self.inner.put_snapshot_page(topic, generation, docs)
    }

    fn finish_snapshot(
        &self,
        topic: Topic,
        generation: SnapshotGen,
        snapshot_watermark: Watermark,
    ) -> StoreFuture<'_, ()> {
        self.inner
            .finish_snapshot(topic, generation, snapshot_watermark)
    }

    fn get(&self, topic: Topic, doc_key: DocKey) -> StoreFuture<'_, Option<StoredDoc>> {
        self.inner.get(topic, doc_key)
    }

    fn list(&self, topic: Topic) -> StoreFuture<'_, Vec<StoredDoc>> {
        self.inner.list(topic)
    }
}
