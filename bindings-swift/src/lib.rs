//! # khala-sync-ffi
//!
//! uniffi bindings of [`khala_sync::SyncClient`] for the `KhalaSync` Swift package. Thin glue:
//! every method converts its arguments, forwards to the Rust client and converts the answer
//! back. No sync logic lives here (or in Swift).
//!
//! Swift sees [`KhalaSyncCore`] (the client), [`ChangeSubscription`] / [`StatusSubscription`]
//! (pull-style listeners the Swift package turns into `AsyncStream`s), the records
//! ([`SyncStatus`], [`Change`], [`Doc`], [`Metrics`], …), the typed [`KhalaSyncError`], and
//! the [`CredentialsProvider`] foreign trait the app implements to supply its own auth headers
//! for the token call.
//!
//! uniffi's scaffolding is `unsafe extern "C"` code expanded into this crate, so the workspace's
//! `forbid(unsafe_code)` cannot apply here; the code written in this crate has no `unsafe`.

uniffi::setup_scaffolding!();

mod error;
mod types;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use futures::stream::BoxStream;
use futures::StreamExt;
use khala_sync as ks;
use tokio::sync::{watch, Mutex as AsyncMutex};

pub use error::{CredentialsError, KhalaSyncError};
pub use types::{
    Change, ClientConfig, ConnectionState, Doc, Header, Metrics, SyncOptions, SyncStatus,
    TopicPhase, TopicStatus,
};

/// The app's credentials for `POST /api/sync/token`, implemented in Swift. Called before every
/// token fetch, so it may refresh them. Throwing reports an auth failure (syncing then waits
/// for `resume()`).
#[uniffi::export(with_foreign)]
#[async_trait::async_trait]
pub trait CredentialsProvider: Send + Sync {
    /// Headers to send, e.g. `Authorization: Bearer <app session token>`.
    async fn headers(&self) -> Result<Vec<Header>, CredentialsError>;
}

/// Adapts the foreign provider to the Rust API's [`ks::CredentialProvider`].
struct ForeignCredentials(Arc<dyn CredentialsProvider>);

impl ks::CredentialProvider for ForeignCredentials {
    fn headers(&self) -> ks::CredentialsFuture {
        let provider = Arc::clone(&self.0);
        Box::pin(async move {
            provider
                .headers()
                .await
                .map(|hs| hs.into_iter().map(|h| (h.name, h.value)).collect())
                .map_err(|e| e.to_string())
        })
    }
}

/// The tokio runtime the sync driver runs on: Swift has none, and every client of the process
/// shares this one (two worker threads).
fn runtime() -> Result<&'static tokio::runtime::Runtime, KhalaSyncError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("khala-sync")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| KhalaSyncError::Config {
            message: format!("could not start the sync runtime: {e}"),
        })
}

fn topic(name: &str) -> Result<ks::Topic, KhalaSyncError> {
    ks::Topic::new(name).map_err(|e| KhalaSyncError::Config {
        message: format!("invalid topic {name:?}: {e}"),
    })
}

fn doc_key(key: &str) -> Result<ks::DocKey, KhalaSyncError> {
    ks::DocKey::new(key).map_err(|e| KhalaSyncError::Config {
        message: format!("invalid doc key {key:?}: {e}"),
    })
}

/// The sync client as Swift sees it (wrapped by `KhalaSyncClient` in the Swift package).
#[derive(uniffi::Object)]
pub struct KhalaSyncCore {
    client: ks::SyncClient,
    /// Live listener streams handed out by `subscribe_*` and not yet dropped.
    listeners: Arc<AtomicU64>,
}

impl std::fmt::Debug for KhalaSyncCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KhalaSyncCore")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

#[uniffi::export]
impl KhalaSyncCore {
    /// Validates the configuration and opens the store. Does not touch the network.
    #[uniffi::constructor]
    pub fn new(
        config: ClientConfig,
        credentials: Arc<dyn CredentialsProvider>,
    ) -> Result<Arc<Self>, KhalaSyncError> {
        let topics = config
            .topics
            .iter()
            .map(|t| topic(t))
            .collect::<Result<Vec<_>, _>>()?;
        let mut builder = ks::SyncClient::builder(config.base_url)
            .credentials(ForeignCredentials(credentials))
            .topics(topics)
            .options(config.options.into_client_options());
        builder = match config.database_path {
            Some(path) => builder.database_path(path),
            None => builder.in_memory(),
        };
        Ok(Arc::new(KhalaSyncCore {
            client: builder.build()?,
            listeners: Arc::new(AtomicU64::new(0)),
        }))
    }

    /// Starts syncing in the background. A second call is a no-op.
    pub async fn start(&self) -> Result<(), KhalaSyncError> {
        let _entered = runtime()?.enter();
        Ok(self.client.start()?)
    }

    /// Pauses network activity (app backgrounded). Local reads keep working.
    pub async fn pause(&self) {
        self.client.pause();
    }

    /// Resumes after `pause()` or an auth failure.
    pub async fn resume(&self) {
        self.client.resume();
    }

    /// The network changed (reachability): reconnect now, backoff reset.
    pub fn network_changed(&self) {
        self.client.network_changed();
    }

    /// Stops syncing (a batch being committed finishes or rolls back first).
    pub async fn shutdown(&self) {
        self.client.shutdown().await;
    }

    /// The current status.
    pub fn current_status(&self) -> SyncStatus {
        self.client.current_status().into()
    }

    /// Counters.
    pub fn metrics(&self) -> Metrics {
        self.client.metrics().into()
    }

    /// The configured topics.
    pub fn topics(&self) -> Vec<String> {
        self.client
            .topics()
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect()
    }

    /// One stored document, or `None`.
    pub async fn document(
        &self,
        topic_name: String,
        key: String,
    ) -> Result<Option<Doc>, KhalaSyncError> {
        let doc = self.client.get(topic(&topic_name)?, doc_key(&key)?).await?;
        Ok(doc.map(Into::into))
    }

    /// Every stored document of a topic, sorted by key.
    pub async fn documents(&self, topic_name: String) -> Result<Vec<Doc>, KhalaSyncError> {
        let docs = self.client.list(topic(&topic_name)?).await?;
        Ok(docs.into_iter().map(Into::into).collect())
    }

    /// A listener for committed changes of `topic_name`, from now on, in commit order.
    pub fn subscribe_changes(
        &self,
        topic_name: String,
    ) -> Result<Arc<ChangeSubscription>, KhalaSyncError> {
        let stream = self.client.changes(topic(&topic_name)?).map(Change::from);
        Ok(Arc::new(ChangeSubscription(Subscription::new(
            stream.boxed(),
            &self.listeners,
        ))))
    }

    /// A listener for statuses: the current one first, then every change (intermediate
    /// statuses may be skipped by a slow reader; the latest is always delivered).
    pub fn subscribe_status(&self) -> Arc<StatusSubscription> {
        let stream = self.client.status().map(SyncStatus::from);
        Arc::new(StatusSubscription(Subscription::new(
            stream.boxed(),
            &self.listeners,
        )))
    }

    /// Listener streams (changes + status) handed out and not yet closed or dropped.
    pub fn active_listeners(&self) -> u64 {
        self.listeners.load(Ordering::SeqCst)
    }

    /// Change receivers registered in the Rust client (`SyncClient::change_listener_count`).
    pub fn change_listener_count(&self) -> u64 {
        u64::try_from(self.client.change_listener_count()).unwrap_or(u64::MAX)
    }
}

/// Decrements the listener count when the stream it travels with is dropped.
struct ListenerGuard(Arc<AtomicU64>);

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A pull-style listener: `next()` until `None`; `close()` ends it and drops the Rust stream.
struct Subscription<T> {
    stream: AsyncMutex<Option<(BoxStream<'static, T>, ListenerGuard)>>,
    closed: watch::Sender<bool>,
}

impl<T: Send + 'static> Subscription<T> {
    fn new(stream: BoxStream<'static, T>, listeners: &Arc<AtomicU64>) -> Self {
        listeners.fetch_add(1, Ordering::SeqCst);
        Subscription {
            stream: AsyncMutex::new(Some((stream, ListenerGuard(Arc::clone(listeners))))),
            closed: watch::Sender::new(false),
        }
    }

    async fn next(&self) -> Option<T> {
        let mut closed = self.closed.subscribe();
        let mut slot = self.stream.lock().await;
        let (stream, _) = slot.as_mut()?;
        let item = tokio::select! {
            biased;
            _ = closed.wait_for(|c| *c) => None,
            item = stream.next() => item,
        };
        if item.is_none() {
            *slot = None;
        }
        item
    }

    fn close(&self) {
        self.closed.send_replace(true);
        // If no `next()` holds the stream, drop it now; otherwise that `next()` wakes on the
        // close signal and drops it.
        if let Ok(mut slot) = self.stream.try_lock() {
            *slot = None;
        }
    }
}

/// Committed changes of one topic (Swift turns it into an `AsyncStream<Change>`).
#[derive(uniffi::Object)]
pub struct ChangeSubscription(Subscription<Change>);

#[uniffi::export]
impl ChangeSubscription {
    /// The next change; `None` once closed or the client is gone.
    pub async fn next(&self) -> Option<Change> {
        self.0.next().await
    }

    /// Ends the listener and releases it (a pending `next()` returns `None`).
    pub fn close(&self) {
        self.0.close();
    }
}

/// Status updates (Swift turns it into an `AsyncStream<SyncStatus>`).
#[derive(uniffi::Object)]
pub struct StatusSubscription(Subscription<SyncStatus>);

#[uniffi::export]
impl StatusSubscription {
    /// The next status; `None` once closed.
    pub async fn next(&self) -> Option<SyncStatus> {
        self.0.next().await
    }

    /// Ends the listener and releases it (a pending `next()` returns `None`).
    pub fn close(&self) {
        self.0.close();
    }
}

/// The SDK's version (`CARGO_PKG_VERSION`).
#[uniffi::export]
pub fn khala_sync_version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}
