//! The native (tokio) client: [`SyncClient`] and its builder.
//!
//! ```no_run
//! # async fn demo() -> Result<(), khala_sync::SyncError> {
//! use futures::StreamExt;
//! use khala_sync::{SyncClient, Topic};
//!
//! let topic = Topic::new("runtime.run_summaries").expect("valid topic");
//! let client = SyncClient::builder("https://sync.example.com")
//!     .app_bearer_token("app-session-token")
//!     .topics([topic.clone()])
//!     .database_path("khala.db")
//!     .build()?;
//! client.start()?;
//! let mut changes = Box::pin(client.changes(topic.clone()));
//! while let Some(change) = changes.next().await {
//!     println!("{change:?}");
//! }
//! # Ok(()) }
//! ```

mod driver;
mod http;
mod ws;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::endpoint::Endpoint;
use crate::engine::{Change, Dialect, Engine, EngineConfig, FanoutTransport, Metrics, SyncStatus};
use crate::error::SyncError;
use crate::protocol::token::TokenRequest;
use crate::protocol::{DecodeLimits, DocKey, Topic, Watermark};
use crate::store::{MemoryStore, SqliteOptions, SqliteStore, Store, StoredDoc};

use driver::{Command, Driver};

/// The future a [`CredentialProvider`] returns: the app's auth headers for the token call,
/// or a message explaining why there are none (surfaced as an auth error).
pub type CredentialsFuture =
    Pin<Box<dyn Future<Output = Result<Vec<(String, String)>, String>> + Send>>;

/// Supplies the app's own credentials (e.g. `Authorization: Bearer <app session>`) for
/// `POST /api/sync/token`. Called before every token fetch, so it may refresh them.
pub trait CredentialProvider: Send + Sync + 'static {
    /// Headers to send.
    fn headers(&self) -> CredentialsFuture;
}

impl<F, Fut> CredentialProvider for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<(String, String)>, String>> + Send + 'static,
{
    fn headers(&self) -> CredentialsFuture {
        Box::pin(self())
    }
}

/// A sync token the app obtained itself (see [`TokenProvider`]).
#[derive(Clone)]
pub struct ProvidedToken {
    /// The JWT.
    pub token: String,
    /// Lifetime in seconds from now, if known; otherwise the JWT's `exp` is read (without
    /// verifying it), else 300 s is assumed. The provider is asked again before then.
    pub expires_in: Option<u64>,
}

impl fmt::Debug for ProvidedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProvidedToken")
            .field("token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// The future a [`TokenProvider`] returns; `Err` is surfaced as an auth error (`resume()`
/// asks again).
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<ProvidedToken, String>> + Send>>;

/// Supplies sync tokens directly, for deployments that mint them somewhere other than
/// `POST /api/sync/token`. Called whenever a token is needed (start, refresh, refusal).
pub trait TokenProvider: Send + Sync + 'static {
    /// A sync token.
    fn token(&self) -> TokenFuture;
}

impl<F, Fut> TokenProvider for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<ProvidedToken, String>> + Send + 'static,
{
    fn token(&self) -> TokenFuture {
        Box::pin(self())
    }
}

/// Where sync tokens come from.
#[derive(Clone)]
pub(crate) enum TokenSource {
    /// `POST /api/sync/token` with the app's credentials.
    Endpoint(Arc<dyn CredentialProvider>),
    /// The app's own provider.
    Provider(Arc<dyn TokenProvider>),
}

struct StaticToken(String);

impl TokenProvider for StaticToken {
    fn token(&self) -> TokenFuture {
        let token = self.0.clone();
        Box::pin(async move {
            Ok(ProvidedToken {
                token,
                expires_in: None,
            })
        })
    }
}

struct StaticBearer(String);

impl CredentialProvider for StaticBearer {
    fn headers(&self) -> CredentialsFuture {
        let v = format!("Bearer {}", self.0);
        Box::pin(async move { Ok(vec![("Authorization".to_owned(), v)]) })
    }
}

/// Client options with production defaults.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Allow `http://`/`ws://` to non-loopback hosts (never in production). Default false.
    pub allow_insecure_non_loopback: bool,
    /// Kill switch: when false, `start()` does nothing. Default true.
    pub enabled: bool,
    /// Replay batch size asked of the server. Default 200.
    pub replay_batch_size: u32,
    /// Snapshot page size asked of the server (it clamps to 5000). Default 2000: smaller
    /// pages cost a request and a transaction each, measured at ~0.2 ms per page on top of the
    /// rows (docs/PERFORMANCE.md step 13); up to four pages are held at once.
    pub snapshot_page_limit: u32,
    /// First backoff window. Default 250 ms.
    pub backoff_base: Duration,
    /// Largest backoff window. Default 30 s.
    pub backoff_cap: Duration,
    /// Window over which the first reconnect after losing an established connection is
    /// spread (uniformly random), so a server restart is not met by every client at once.
    /// Default 5 s; `network_changed()` reconnects at once regardless.
    pub reconnect_spread: Duration,
    /// Client heartbeat period. Default 20 s.
    pub heartbeat_interval: Duration,
    /// Silence before the connection counts as dead. Default 45 s.
    pub dead_after: Duration,
    /// Frame/body size limit. Default 16 MiB.
    pub max_frame_bytes: usize,
    /// `client` query parameter. Default `khala-sync-rust`.
    pub client_name: String,
    /// `client_build_id` query parameter. Default the crate version.
    pub client_build_id: String,
    /// `device_id` sent with the token request.
    pub device_id: Option<String>,
    /// `ttl_seconds` sent with the token request (servers accept 60..=900).
    pub token_ttl_seconds: Option<u32>,
    /// Explicit scopes for the token request (default: the principal's).
    pub scopes: Option<Vec<String>>,
    /// Seed of the backoff jitter (default: random per client).
    pub jitter_seed: Option<u64>,
    /// Largest group commit while catching up, in updates (see
    /// [`EngineConfig::group_commit_max_updates`]). Default 6,000.
    pub group_commit_max_updates: usize,
    /// Wire dialect (PROTOCOL.md §2 / §6). Default [`Dialect::Auto`]: Phoenix, or the
    /// runtime fanout when the server has no Phoenix socket route.
    pub dialect: Dialect,
    /// Dialect F transport. Default [`FanoutTransport::Auto`] (WebSocket, polling when a
    /// topic's WebSocket cannot be opened twice in a row).
    pub fanout_transport: FanoutTransport,
    /// Dialect F: poll period of a caught-up topic on the poll transport. Default 1 s.
    pub poll_interval: Duration,
    /// Dialect F: shortest time between two polls of one topic. Default 300 ms (servers
    /// refuse polls closer than 250 ms).
    pub poll_min_interval: Duration,
    /// Token route URL when it is not `<base>/api/sync/token` (same scheme rules as the
    /// base URL: `https`, or `http` to loopback). Default `None`.
    pub token_url: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            allow_insecure_non_loopback: false,
            enabled: true,
            replay_batch_size: 200,
            snapshot_page_limit: 2000,
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(30),
            reconnect_spread: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(20),
            dead_after: Duration::from_secs(45),
            max_frame_bytes: DecodeLimits::default().max_frame_bytes,
            client_name: "khala-sync-rust".to_owned(),
            client_build_id: env!("CARGO_PKG_VERSION").to_owned(),
            device_id: None,
            token_ttl_seconds: None,
            scopes: None,
            jitter_seed: None,
            group_commit_max_updates: 6_000,
            dialect: Dialect::Auto,
            fanout_transport: FanoutTransport::Auto,
            poll_interval: Duration::from_secs(1),
            poll_min_interval: Duration::from_millis(300),
            token_url: None,
        }
    }
}

enum StoreChoice {
    Memory,
    Path(PathBuf),
    Custom(Arc<dyn Store>),
}

/// Builds a [`SyncClient`].
pub struct SyncClientBuilder {
    base_url: String,
    credentials: Option<Arc<dyn CredentialProvider>>,
    token_provider: Option<Arc<dyn TokenProvider>>,
    topics: Vec<Topic>,
    store: StoreChoice,
    options: ClientOptions,
}

impl fmt::Debug for SyncClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncClientBuilder")
            .field("base_url", &self.base_url)
            .field("topics", &self.topics)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl SyncClientBuilder {
    /// The app's credential provider (called before every token fetch).
    pub fn credentials(mut self, provider: impl CredentialProvider) -> Self {
        self.credentials = Some(Arc::new(provider));
        self
    }

    /// Shorthand for a fixed `Authorization: Bearer <token>` app credential.
    pub fn app_bearer_token(mut self, token: impl Into<String>) -> Self {
        self.credentials = Some(Arc::new(StaticBearer(token.into())));
        self
    }

    /// Take sync tokens from `provider` instead of `POST /api/sync/token` (deployments that
    /// mint sync tokens elsewhere). Replaces any credential provider.
    pub fn token_provider(mut self, provider: impl TokenProvider) -> Self {
        self.token_provider = Some(Arc::new(provider));
        self
    }

    /// Use this sync token as is (no token route). When the server refuses it, the client
    /// reports an auth error; give it a new one by building a new client.
    pub fn sync_token(mut self, token: impl Into<String>) -> Self {
        self.token_provider = Some(Arc::new(StaticToken(token.into())));
        self
    }

    /// Topics to sync.
    pub fn topics(mut self, topics: impl IntoIterator<Item = Topic>) -> Self {
        self.topics = topics.into_iter().collect();
        self
    }

    /// Persist into a SQLite file at `path` (created if missing).
    pub fn database_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.store = StoreChoice::Path(path.into());
        self
    }

    /// Keep everything in memory (the default; nothing survives a restart).
    pub fn in_memory(mut self) -> Self {
        self.store = StoreChoice::Memory;
        self
    }

    /// Use a custom store.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = StoreChoice::Custom(store);
        self
    }

    /// Options.
    pub fn options(mut self, options: ClientOptions) -> Self {
        self.options = options;
        self
    }

    /// Validates the configuration and opens the store. Does not touch the network.
    pub fn build(self) -> Result<SyncClient, SyncError> {
        let endpoint = Endpoint::parse(&self.base_url, self.options.allow_insecure_non_loopback)?;
        let tokens = match (self.token_provider, self.credentials) {
            (Some(p), _) => TokenSource::Provider(p),
            (None, Some(c)) => TokenSource::Endpoint(c),
            (None, None) => {
                return Err(SyncError::Config(
                    "no credential provider or token provider configured".into(),
                ))
            }
        };
        if self.topics.is_empty() {
            return Err(SyncError::Config("no topics configured".into()));
        }
        let mut seen = std::collections::HashSet::new();
        if !self.topics.iter().all(|t| seen.insert(t.clone())) {
            return Err(SyncError::Config("a topic is listed twice".into()));
        }
        let store: Arc<dyn Store> = match self.store {
            StoreChoice::Memory => Arc::new(MemoryStore::default()),
            StoreChoice::Path(p) => Arc::new(SqliteStore::open(&p, SqliteOptions::default())?),
            StoreChoice::Custom(s) => s,
        };
        let opts = self.options;
        let token_url = match &opts.token_url {
            Some(u) => {
                // Same security rules as the base URL (no plain http to remote hosts).
                Endpoint::parse(u, opts.allow_insecure_non_loopback)?;
                u.clone()
            }
            None => endpoint.token_url(),
        };
        let mut cfg = EngineConfig::new(endpoint.origin(), self.topics.clone());
        cfg.replay_batch_size = opts.replay_batch_size;
        cfg.snapshot_page_limit = opts.snapshot_page_limit;
        // The driver runs commits strictly in order (`Driver::last_apply`).
        cfg.commit_ahead = true;
        cfg.backoff_base = opts.backoff_base;
        cfg.reconnect_spread = opts.reconnect_spread;
        cfg.group_commit_max_updates = opts.group_commit_max_updates.max(1);
        cfg.backoff_cap = opts.backoff_cap;
        cfg.heartbeat_interval = opts.heartbeat_interval;
        cfg.dead_after = opts.dead_after;
        cfg.decode_limits = DecodeLimits {
            max_frame_bytes: opts.max_frame_bytes,
        };
        cfg.seed = opts.jitter_seed.unwrap_or_else(|| fastrand::u64(..));
        cfg.dialect = opts.dialect;
        cfg.fanout_transport = opts.fanout_transport;
        cfg.poll_interval = opts.poll_interval;
        cfg.poll_min_interval = opts.poll_min_interval;
        let engine = Engine::new(cfg.clone());
        let (status_tx, status_rx) = watch::channel(engine.status());
        let (changes_tx, _) = broadcast::channel(8192);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (io_tx, io_rx) = mpsc::channel(driver::IO_CHANNEL_CAPACITY);
        let (applied_tx, applied_rx) = mpsc::unbounded_channel();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| SyncError::Config(format!("HTTP client: {}", e.without_url())))?;
        let ws_http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .http1_only()
            .build()
            .map_err(|e| SyncError::Config(format!("HTTP client: {}", e.without_url())))?;
        let metrics = Arc::new(Mutex::new(Metrics::default()));
        let driver = Driver {
            engine,
            store: Arc::clone(&store),
            endpoint,
            http,
            ws_http,
            tokens,
            token_url,
            token_request: TokenRequest {
                scopes: opts.scopes.clone(),
                topics: None,
                ttl_seconds: opts.token_ttl_seconds,
                device_id: opts.device_id.clone(),
            },
            client_name: opts.client_name.clone(),
            client_build_id: opts.client_build_id.clone(),
            limits: cfg.decode_limits,
            io_tx,
            frame_budget: Arc::new(tokio::sync::Semaphore::new(driver::FRAME_BUDGET_BYTES)),
            applied_tx,
            applied_rx,
            applies: tokio::task::JoinSet::new(),
            last_apply: None,
            io_rx,
            cmd_rx,
            status_tx,
            changes_tx: changes_tx.clone(),
            metrics: Arc::clone(&metrics),
            origin: tokio::time::Instant::now(),
            conns: HashMap::new(),
        };
        Ok(SyncClient {
            inner: Arc::new(Inner {
                cmd_tx,
                status_rx,
                changes_tx,
                store,
                metrics,
                topics: self.topics,
                enabled: opts.enabled,
                driver: Mutex::new(Some(driver)),
                task: Mutex::new(None),
            }),
        })
    }
}

struct Inner {
    cmd_tx: mpsc::UnboundedSender<Command>,
    status_rx: watch::Receiver<SyncStatus>,
    changes_tx: broadcast::Sender<Change>,
    store: Arc<dyn Store>,
    metrics: Arc<Mutex<Metrics>>,
    topics: Vec<Topic>,
    enabled: bool,
    driver: Mutex<Option<Driver>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A running (or ready) sync client. Cheap to clone; all clones control the same client.
#[derive(Clone)]
pub struct SyncClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for SyncClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncClient")
            .field("topics", &self.inner.topics)
            .field("state", &self.inner.status_rx.borrow().state)
            .finish_non_exhaustive()
    }
}

impl SyncClient {
    /// Starts building a client for the server at `base_url` (`https://…`).
    pub fn builder(base_url: impl Into<String>) -> SyncClientBuilder {
        SyncClientBuilder {
            base_url: base_url.into(),
            credentials: None,
            token_provider: None,
            topics: Vec::new(),
            store: StoreChoice::Memory,
            options: ClientOptions::default(),
        }
    }

    /// Starts syncing in the background (needs a tokio runtime). Calling it twice is a no-op.
    /// With `enabled: false` it does nothing.
    pub fn start(&self) -> Result<(), SyncError> {
        if !self.inner.enabled {
            return Ok(());
        }
        let driver = self
            .inner
            .driver
            .lock()
            .map_err(|_| SyncError::Shutdown)?
            .take();
        if let Some(driver) = driver {
            let handle = tokio::runtime::Handle::try_current()
                .map_err(|_| SyncError::Config("start() needs a tokio runtime".into()))?;
            let task = handle.spawn(driver.run());
            if let Ok(mut t) = self.inner.task.lock() {
                *t = Some(task);
            }
        }
        Ok(())
    }

    /// Pauses network activity (app backgrounded). Local reads keep working.
    pub fn pause(&self) {
        let _ = self.inner.cmd_tx.send(Command::Pause);
    }

    /// Resumes after `pause()` (or after an auth failure, to retry with fresh credentials).
    pub fn resume(&self) {
        let _ = self.inner.cmd_tx.send(Command::Resume);
    }

    /// Tells the client the network changed (reachability): reconnect now, backoff reset.
    pub fn network_changed(&self) {
        let _ = self.inner.cmd_tx.send(Command::NetworkChanged);
    }

    /// Stops syncing. The batch being committed finishes (or rolls back) first — the store
    /// never holds half a batch. Waits for the background task to end.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.cmd_tx.send(Command::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
        let task = self.inner.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// The current status.
    pub fn current_status(&self) -> SyncStatus {
        self.inner.status_rx.borrow().clone()
    }

    /// A stream of statuses: the current one first, then every change (intermediate
    /// statuses may be skipped if the reader is slow; the latest is always delivered).
    pub fn status(&self) -> impl Stream<Item = SyncStatus> + Send + 'static {
        let rx = self.inner.status_rx.clone();
        futures::stream::unfold((rx, true), |(mut rx, first)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let s = rx.borrow_and_update().clone();
            Some((s, (rx, false)))
        })
    }

    /// A stream of committed changes of `topic`, in commit order. A reader more than 8192
    /// changes behind skips the oldest and should re-read with [`SyncClient::list`].
    pub fn changes(&self, topic: Topic) -> impl Stream<Item = Change> + Send + 'static {
        let rx = self.inner.changes_tx.subscribe();
        futures::stream::unfold((rx, topic), |(mut rx, topic)| async move {
            loop {
                match rx.recv().await {
                    Ok(c) if *c.topic() == topic => return Some((c, (rx, topic))),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "change stream reader lagged");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }

    /// Every change of every topic.
    pub fn all_changes(&self) -> impl Stream<Item = Change> + Send + 'static {
        let rx = self.inner.changes_tx.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(c) => return Some((c, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }

    /// One stored document.
    pub async fn get(&self, topic: Topic, doc_key: DocKey) -> Result<Option<StoredDoc>, SyncError> {
        Ok(self.inner.store.get(topic, doc_key).await?)
    }

    /// Every stored document of a topic, sorted by key.
    pub async fn list(&self, topic: Topic) -> Result<Vec<StoredDoc>, SyncError> {
        Ok(self.inner.store.list(topic).await?)
    }

    /// Dialect F: the ranges of sequences up to the committed watermark that an event-log
    /// topic does not hold locally, ascending. Messages are never deleted from an event log,
    /// so these are exactly the ranges once reported as [`Change::Truncated`] — read from the
    /// store, so an app that was not listening (or crashed before handling the change) can
    /// still learn what the server had evicted. Empty for a complete log.
    pub async fn missing_sequences(
        &self,
        topic: Topic,
    ) -> Result<Vec<(Watermark, Watermark)>, SyncError> {
        let store = &self.inner.store;
        let committed = store
            .watermarks()
            .await?
            .into_iter()
            .find(|(t, _)| *t == topic)
            .map_or(0, |(_, w)| w.get());
        let mut seqs: Vec<u64> = store
            .list(topic)
            .await?
            .iter()
            .filter_map(|d| d.doc_key.as_str().parse::<u64>().ok())
            .filter(|s| (1..=committed).contains(s))
            .collect();
        seqs.sort_unstable();
        let mut gaps = Vec::new();
        let mut next = 1u64;
        for s in seqs.into_iter().chain(std::iter::once(committed + 1)) {
            if s > next {
                gaps.push((Watermark(next), Watermark(s - 1)));
            }
            next = next.max(s + 1);
        }
        Ok(gaps)
    }

    /// Counters.
    pub fn metrics(&self) -> Metrics {
        self.inner
            .metrics
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// The configured topics.
    pub fn topics(&self) -> &[Topic] {
        &self.inner.topics
    }

    /// Live change listeners: streams from [`SyncClient::changes`] /
    /// [`SyncClient::all_changes`] not yet dropped. Lets bindings prove that cancelling a
    /// listener releases it.
    pub fn change_listener_count(&self) -> usize {
        self.inner.changes_tx.receiver_count()
    }
}
