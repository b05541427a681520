//! The public error type: one enum, a stable `code()` shared by the Swift and JS bindings,
//! and `is_retryable()` so no binding has to guess.

use crate::protocol::{ProtocolError, Topic};
use crate::store::StoreError;

/// Everything that can go wrong while syncing, as the app sees it.
///
/// Messages never contain the sync token or app credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The app's credentials were refused by the token route (401). Syncing stops until the
    /// app calls `resume()` with working credentials; there is no retry loop.
    #[error("authentication failed ({status}): {message}")]
    Auth {
        /// HTTP status (401, or 403 on the socket upgrade).
        status: u16,
        /// Server's error code, if any.
        code: Option<String>,
        /// Server's message.
        message: String,
    },
    /// The principal may not sync (403 from the token route: device or org policy).
    #[error("forbidden ({status}): {message}")]
    Forbidden {
        /// HTTP status.
        status: u16,
        /// Server's error code.
        code: Option<String>,
        /// Server's message.
        message: String,
    },
    /// The token request was rejected as invalid (422: unknown scope/topic, bad TTL).
    #[error("invalid token request: {message}")]
    InvalidRequest {
        /// Server's error code.
        code: Option<String>,
        /// Server's message.
        message: String,
    },
    /// The server refused a topic; other topics continue.
    #[error("topic {topic} is forbidden for this principal")]
    TopicForbidden {
        /// The refused topic.
        topic: Topic,
    },
    /// The server rejected our subscribe request as malformed (a client bug).
    #[error("bad subscription: {message}")]
    BadSubscription {
        /// Server's message.
        message: String,
    },
    /// This client build is no longer supported: syncing stopped. Upgrade the app.
    #[error("upgrade required ({code}): {message}")]
    UpgradeRequired {
        /// Exact compat code.
        code: String,
        /// Server's message.
        message: String,
    },
    /// The server reported the cursor stale again right after a fresh snapshot; backing off.
    #[error(
        "topic {topic} stayed stale after {snapshots} fresh snapshot(s); retrying with backoff"
    )]
    StaleLoop {
        /// Topic.
        topic: Topic,
        /// Snapshots taken in this episode.
        snapshots: u32,
    },
    /// A frame or body from the server could not be decoded.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The local store failed.
    #[error("store error: {0}")]
    Store(#[from] StoreError),
    /// Network/transport failure (connect refused, TLS, socket closed, timeout).
    #[error("transport error: {0}")]
    Transport(String),
    /// An HTTP route answered with an error status.
    #[error("HTTP {status} from {route}: {message}")]
    Http {
        /// Which route (`token`, `snapshot`, `doc`).
        route: &'static str,
        /// Status.
        status: u16,
        /// Server's error code.
        code: Option<String>,
        /// Message.
        message: String,
    },
    /// The server sent an error this client does not act on.
    #[error("server error {code}: {message}")]
    Server {
        /// Code.
        code: String,
        /// Message.
        message: String,
    },
    /// The client configuration is invalid (bad URL, insecure scheme to a remote host, …).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The client was shut down.
    #[error("the client is shut down")]
    Shutdown,
}

impl SyncError {
    /// Stable machine-readable code, identical in Rust, Swift and JS.
    pub fn code(&self) -> &str {
        match self {
            SyncError::Auth { .. } => "auth_failed",
            SyncError::Forbidden { .. } => "forbidden",
            SyncError::InvalidRequest { .. } => "invalid_request",
            SyncError::TopicForbidden { .. } => "topic_forbidden",
            SyncError::BadSubscription { .. } => "bad_subscription",
            SyncError::UpgradeRequired { .. } => "upgrade_required",
            SyncError::StaleLoop { .. } => "stale_loop",
            SyncError::Protocol(e) => e.code(),
            SyncError::Store(e) => e.code(),
            SyncError::Transport(_) => "transport",
            SyncError::Http { .. } => "http_error",
            SyncError::Server { .. } => "server_error",
            SyncError::Config(_) => "invalid_config",
            SyncError::Shutdown => "shutdown",
        }
    }

    /// Whether the SDK retries on its own (true) or needs the app to act (false).
    pub fn is_retryable(&self) -> bool {
        match self {
            SyncError::Auth { .. }
            | SyncError::Forbidden { .. }
            | SyncError::InvalidRequest { .. }
            | SyncError::TopicForbidden { .. }
            | SyncError::BadSubscription { .. }
            | SyncError::UpgradeRequired { .. }
            | SyncError::Config(_)
            | SyncError::Shutdown => false,
            SyncError::Store(e) => e.is_retryable(),
            SyncError::StaleLoop { .. }
            | SyncError::Protocol(_)
            | SyncError::Transport(_)
            | SyncError::Http { .. }
            | SyncError::Server { .. } => true,
        }
    }
}
