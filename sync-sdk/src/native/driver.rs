//! The tokio driver: feeds the engine, executes its actions, owns nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::endpoint::{Endpoint, SecretUrl};
use crate::engine::{
    Action, Change, ConnId, Engine, Event, HttpFailure, Metrics, Millis, Notification, SyncStatus,
};
use crate::protocol::token::{SyncToken, TokenGrant, TokenRequest};
use crate::protocol::DecodeLimits;
use crate::store::Store;

use super::http;
use super::ws::{self, WsCmd};
use super::TokenSource;

/// Bound of the IO → driver channel, in events (frames and HTTP results).
pub(crate) const IO_CHANNEL_CAPACITY: usize = 256;

/// Bytes of received frames that may wait for the engine. A socket reader takes permits for
/// each frame before passing it on and the driver returns them once the engine has it, so a
/// slow store turns into TCP backpressure towards the server (and, there, the slow-consumer
/// path), not into memory. A frame larger than the budget takes all of it.
pub(crate) const FRAME_BUDGET_BYTES: usize = 2 << 20;

/// Inputs produced by the socket tasks (HTTP results and commits use the results channel).
#[derive(Debug)]
pub(crate) enum IoEvent {
    Connected(ConnId, mpsc::UnboundedSender<WsCmd>),
    ConnectFailed(ConnId, HttpFailure),
    Frame(ConnId, String, tokio::sync::OwnedSemaphorePermit),
    Disconnected(ConnId, String),
    FrameTooLarge(ConnId, usize, usize),
    Pong(ConnId),
}

/// Inputs from the app.
#[derive(Debug)]
pub(crate) enum Command {
    Pause,
    Resume,
    NetworkChanged,
    Shutdown(oneshot::Sender<()>),
}

pub(crate) struct Driver {
    pub engine: Engine,
    pub store: Arc<dyn Store>,
    pub endpoint: Endpoint,
    pub http: reqwest::Client,
    /// HTTP client for socket upgrades: no overall timeout (the upgraded stream lives long).
    pub ws_http: reqwest::Client,
    pub tokens: TokenSource,
    /// `POST` target of the token route.
    pub token_url: String,
    pub token_request: TokenRequest,
    pub client_name: String,
    pub client_build_id: String,
    pub limits: DecodeLimits,
    pub io_tx: mpsc::Sender<IoEvent>,
    /// Bytes of received frames not yet handed to the engine (see [`FRAME_BUDGET_BYTES`]).
    pub frame_budget: Arc<tokio::sync::Semaphore>,
    /// Results of batch commits running on the store's thread (pipelined: the engine keeps
    /// decoding and verifying the next frames meanwhile) and of HTTP calls (token, snapshot
    /// pages, documents). Always read, unlike the frame channel, which waits while the
    /// engine's queue is full.
    pub applied_tx: mpsc::UnboundedSender<Event>,
    pub applied_rx: mpsc::UnboundedReceiver<Event>,
    /// Commits in flight; awaited before shutdown completes.
    pub applies: tokio::task::JoinSet<()>,
    /// Fires when the last commit handed to the store has been answered: the next one starts
    /// after it, so commits reach the store and are answered in the engine's order (the
    /// engine may hand over a second commit before the first ends, `commit_ahead`).
    pub last_apply: Option<oneshot::Receiver<()>>,
    pub io_rx: mpsc::Receiver<IoEvent>,
    pub cmd_rx: mpsc::UnboundedReceiver<Command>,
    pub status_tx: watch::Sender<SyncStatus>,
    pub changes_tx: broadcast::Sender<Change>,
    pub metrics: Arc<Mutex<Metrics>>,
    pub origin: Instant,
    pub conns: HashMap<ConnId, mpsc::UnboundedSender<WsCmd>>,
}

impl Driver {
    fn now(&self) -> Millis {
        Millis(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn feed(&mut self, event: Event) {
        let now = self.now();
        // No subscriber to `changes()`: the engine skips building change values.
        self.engine
            .set_change_listeners(self.changes_tx.receiver_count() > 0);
        self.engine.handle(event, now);
    }

    pub(crate) async fn run(mut self) {
        self.feed(Event::Start);
        let mut shutdown_reply: Option<oneshot::Sender<()>> = None;
        loop {
            self.execute().await;
            if let Some(reply) = shutdown_reply.take() {
                while self.applies.join_next().await.is_some() {}
                for (_, tx) in self.conns.drain() {
                    let _ = tx.send(WsCmd::Close);
                }
                let _ = reply.send(());
                return;
            }
            let deadline = self
                .engine
                .poll_timeout()
                .map(|m| self.origin + std::time::Duration::from_millis(m.0));
            tokio::select! {
                biased;
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(Command::Pause) => self.feed(Event::Pause),
                    Some(Command::Resume) => self.feed(Event::Resume),
                    Some(Command::NetworkChanged) => self.feed(Event::NetworkChanged),
                    Some(Command::Shutdown(reply)) => {
                        self.feed(Event::Shutdown);
                        shutdown_reply = Some(reply);
                    }
                    None => {
                        // Every client handle is gone: stop cleanly.
                        self.feed(Event::Shutdown);
                        self.execute().await;
                        while self.applies.join_next().await.is_some() {}
                        return;
                    }
                },
                applied = self.applied_rx.recv() => {
                    if let Some(ev) = applied {
                        self.feed(ev);
                    }
                }
                // While the engine's queue is full, frames stay in the bounded channel (and the
                // socket readers wait for frame budget): backpressure, not memory.
                io = self.io_rx.recv(), if self.engine.wants_frames() => {
                    if let Some(io) = io {
                        self.on_io(io);
                        // Everything else already received goes to the engine before the
                        // next store call: frames that arrived during an apply become one
                        // group commit instead of one transaction each.
                        while self.engine.wants_frames() {
                            let Ok(io) = self.io_rx.try_recv() else { break };
                            self.on_io(io);
                        }
                    }
                }
                () = sleep_until(deadline) => self.feed(Event::Timer),
            }
        }
    }

    fn on_io(&mut self, io: IoEvent) {
        match io {
            IoEvent::Connected(id, tx) => {
                self.conns.insert(id, tx);
                self.feed(Event::Connected(id));
            }
            IoEvent::ConnectFailed(id, f) => self.feed(Event::ConnectFailed(id, f)),
            IoEvent::Frame(id, text, _budget) => self.feed(Event::Frame(id, text)),
            IoEvent::Pong(id) => self.feed(Event::Pong(id)),
            IoEvent::FrameTooLarge(conn, size, limit) => {
                self.conns.remove(&conn);
                self.feed(Event::FrameTooLarge { conn, size, limit });
            }
            IoEvent::Disconnected(id, reason) => {
                self.conns.remove(&id);
                self.feed(Event::Disconnected(id, reason));
            }
        }
    }

    /// Runs every pending action. Store work is awaited here, in order, so a batch is
    /// committed (or rolled back) before the next event is looked at.
    async fn execute(&mut self) {
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::FetchToken => self.spawn_token_fetch(),
                Action::BindIdentity(identity) => {
                    let r = match self.store.bind_identity(identity).await {
                        Ok(_) => self.store.watermarks().await,
                        Err(e) => Err(e),
                    };
                    self.feed(Event::IdentityBound(r));
                }
                Action::Connect { conn, token } => {
                    let url = self.endpoint.socket_upgrade_url(
                        &token,
                        &self.client_name,
                        &self.client_build_id,
                    );
                    tracing::debug!(conn = conn.0, "connecting");
                    tokio::spawn(ws::run_connection(
                        conn,
                        self.ws_http.clone(),
                        url,
                        None,
                        self.limits.max_frame_bytes,
                        self.io_tx.clone(),
                        Arc::clone(&self.frame_budget),
                    ));
                }
                Action::ConnectTopic {
                    conn,
                    topic,
                    after_seq,
                    limit,
                    token,
                } => {
                    let url =
                        SecretUrl::public(self.endpoint.fanout_ws_url(&topic, after_seq, limit));
                    tracing::debug!(conn = conn.0, topic = %topic, after_seq = after_seq.get(), "connecting (fanout)");
                    tokio::spawn(ws::run_connection(
                        conn,
                        self.ws_http.clone(),
                        url,
                        Some(token),
                        self.limits.max_frame_bytes,
                        self.io_tx.clone(),
                        Arc::clone(&self.frame_budget),
                    ));
                }
                Action::Poll {
                    topic,
                    after_seq,
                    limit,
                    token,
                } => {
                    let url = self.endpoint.fanout_poll_url(&topic, after_seq, limit);
                    let (http, limits) = (self.http.clone(), self.limits);
                    self.spawn_event(async move {
                        let r = http::poll(&http, &url, &token, &limits).await;
                        Event::Polled(topic, r)
                    });
                }
                Action::Send { conn, text } => {
                    if let Some(tx) = self.conns.get(&conn) {
                        let _ = tx.send(WsCmd::Send(text));
                    }
                }
                Action::Ping(conn) => {
                    if let Some(tx) = self.conns.get(&conn) {
                        let _ = tx.send(WsCmd::Ping);
                    }
                }
                Action::Close(conn) => {
                    if let Some(tx) = self.conns.remove(&conn) {
                        let _ = tx.send(WsCmd::Close);
                    }
                }
                Action::Apply(batch) => {
                    // Strictly in order: each commit starts once the previous one has been
                    // answered (the engine may hand over a second before the first ends).
                    let store = Arc::clone(&self.store);
                    let previous = self.last_apply.take();
                    let (done_tx, done_rx) = oneshot::channel();
                    self.last_apply = Some(done_rx);
                    self.spawn_store_write(
                        async move {
                            if let Some(p) = previous {
                                let _ = p.await;
                            }
                            let topic = batch.topic.clone();
                            Event::Applied(topic, store.apply(batch).await)
                        },
                        Some(done_tx),
                    );
                }
                Action::BeginSnapshot(topic) => {
                    let r = self.store.begin_snapshot(topic.clone()).await;
                    self.feed(Event::SnapshotBegun(topic, r));
                }
                Action::FetchSnapshotPage {
                    topic,
                    generation,
                    cursor,
                    limit,
                    token,
                } => {
                    let url = self.endpoint.snapshot_url(&topic, cursor.as_deref(), limit);
                    let (http, limits) = (self.http.clone(), self.limits);
                    self.spawn_event(async move {
                        let r = http::fetch_snapshot_page(&http, &url, &token, &limits).await;
                        Event::SnapshotPageFetched(topic, generation, r)
                    });
                }
                Action::StoreSnapshotPage {
                    topic,
                    generation,
                    docs,
                    finish,
                } => {
                    // While the engine fetches and verifies the next pages (it keeps one page
                    // store in flight, in page order).
                    let store = Arc::clone(&self.store);
                    self.spawn_store_write(
                        async move {
                            let mut r = store
                                .put_snapshot_page(topic.clone(), generation, docs)
                                .await;
                            if let (Ok(()), Some(w)) = (&r, finish) {
                                r = store.finish_snapshot(topic.clone(), generation, w).await;
                            }
                            Event::SnapshotPageStored(topic, generation, r)
                        },
                        None,
                    );
                }
                Action::FetchDoc {
                    topic,
                    doc_key,
                    token,
                } => {
                    let url = self.endpoint.doc_url(&topic, &doc_key);
                    let (http, limits) = (self.http.clone(), self.limits);
                    self.spawn_event(async move {
                        let r = http::fetch_doc(&http, &url, &token, &limits).await;
                        Event::DocFetched(topic, doc_key, r)
                    });
                }
                Action::Notify(Notification::Status(s)) => {
                    tracing::debug!(state = ?s.state, "status");
                    self.status_tx.send_replace(s);
                }
                Action::Notify(Notification::Changes(changes)) => {
                    for c in changes {
                        // No receivers is fine: nobody is listening.
                        let _ = self.changes_tx.send(c);
                    }
                }
            }
        }
        if let Ok(mut m) = self.metrics.lock() {
            m.clone_from(self.engine.metrics());
        }
    }

    /// Runs an HTTP call as a task; its result comes back as an engine event.
    /// A store write (commit, snapshot page) on the store's thread while the engine goes on: a
    /// tracked task (shutdown waits for it) whose answer goes through the results channel;
    /// `done` fires once the answer is sent.
    fn spawn_store_write(
        &mut self,
        call: impl std::future::Future<Output = Event> + Send + 'static,
        done: Option<oneshot::Sender<()>>,
    ) {
        let tx = self.applied_tx.clone();
        self.applies.spawn(async move {
            let _ = tx.send(call.await);
            if let Some(d) = done {
                let _ = d.send(());
            }
        });
        // Reap finished tasks so the set stays small.
        while self.applies.try_join_next().is_some() {}
    }

    fn spawn_event(&self, call: impl std::future::Future<Output = Event> + Send + 'static) {
        // Results go through the always-read results channel, never behind frames: a
        // hydration waiting for its document must not wait for the frame queue to drain.
        let tx = self.applied_tx.clone();
        tokio::spawn(async move {
            let event = call.await;
            // The driver may have stopped meanwhile: then nobody needs the answer.
            let _ = tx.send(event);
        });
    }

    fn spawn_token_fetch(&self) {
        let http = self.http.clone();
        let url = self.token_url.clone();
        let tokens = self.tokens.clone();
        let req = self.token_request.clone();
        let limits = self.limits;
        self.spawn_event(async move {
            let refused = |message: String, code: &str| HttpFailure::Status {
                status: 401,
                code: Some(code.into()),
                message,
                retry_after: None,
            };
            let r = match tokens {
                TokenSource::Endpoint(creds) => match creds.headers().await {
                    Ok(headers) => http::fetch_token(&http, &url, headers, &req, &limits).await,
                    Err(message) => Err(refused(message, "credentials_unavailable")),
                },
                TokenSource::Provider(p) => match p.token().await {
                    Ok(t) => {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        Ok(TokenGrant::from_provided(
                            SyncToken::new(t.token),
                            t.expires_in,
                            now,
                        ))
                    }
                    Err(message) => Err(refused(message, "token_provider_failed")),
                },
            };
            Event::TokenFetched(r)
        });
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
