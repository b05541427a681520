//! The typed error the Swift package throws: one case per `khala_sync::SyncError` variant,
//! with the same stable codes (`code()`), plus the app's credential-callback error.

use khala_sync::SyncError;

/// Everything that can go wrong, as Swift sees it (`KhalaSyncError`).
///
/// Mirrors `khala_sync::SyncError` variant by variant; [`KhalaSyncError::code`] returns the
/// same stable code as `SyncError::code()`. Messages never contain tokens or credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum KhalaSyncError {
    /// The app's credentials were refused (401 from the token route, 403 on the socket).
    /// Syncing stops until `resume()`.
    #[error("authentication failed ({status}): {message}")]
    Auth {
        /// HTTP status.
        status: u16,
        /// Server's error code, if any.
        server_code: Option<String>,
        /// Server's message.
        message: String,
    },
    /// The principal may not sync (403 from the token route).
    #[error("forbidden ({status}): {message}")]
    Forbidden {
        /// HTTP status.
        status: u16,
        /// Server's error code, if any.
        server_code: Option<String>,
        /// Server's message.
        message: String,
    },
    /// The token request was rejected as invalid (422).
    #[error("invalid token request: {message}")]
    InvalidRequest {
        /// Server's error code, if any.
        server_code: Option<String>,
        /// Server's message.
        message: String,
    },
    /// The server refused a topic; other topics continue.
    #[error("topic {topic} is forbidden for this principal")]
    TopicForbidden {
        /// The refused topic.
        topic: String,
    },
    /// The server rejected the subscribe request as malformed.
    #[error("bad subscription: {message}")]
    BadSubscription {
        /// Server's message.
        message: String,
    },
    /// This client build is no longer supported; syncing stopped.
    #[error("upgrade required ({server_code}): {message}")]
    UpgradeRequired {
        /// Exact compat code.
        server_code: String,
        /// Server's message.
        message: String,
    },
    /// A topic stayed stale right after fresh snapshots; backing off.
    #[error("topic {topic} stayed stale after {snapshots} fresh snapshot(s)")]
    StaleLoop {
        /// Topic.
        topic: String,
        /// Snapshots taken in this episode.
        snapshots: u32,
    },
    /// A frame or body from the server could not be decoded.
    #[error("protocol error: {message}")]
    Protocol {
        /// The protocol error's stable code.
        code: String,
        /// Description.
        message: String,
    },
    /// The local store failed.
    #[error("store error: {message}")]
    Store {
        /// The store error's stable code.
        code: String,
        /// Whether the SDK retries on its own.
        retryable: bool,
        /// Description.
        message: String,
    },
    /// Network failure (connect refused, TLS, socket closed, timeout).
    #[error("transport error: {message}")]
    Transport {
        /// Description.
        message: String,
    },
    /// An HTTP route answered with an error status.
    #[error("HTTP {status} from {route}: {message}")]
    Http {
        /// Which route (`token`, `snapshot`, `doc`).
        route: String,
        /// Status.
        status: u16,
        /// Server's error code, if any.
        server_code: Option<String>,
        /// Message.
        message: String,
    },
    /// The server sent an error this client does not act on.
    #[error("server error {server_code}: {message}")]
    Server {
        /// Code.
        server_code: String,
        /// Message.
        message: String,
    },
    /// The configuration is invalid (bad URL, topic name, insecure scheme, …).
    #[error("invalid configuration: {message}")]
    Config {
        /// Description.
        message: String,
    },
    /// The client was shut down.
    #[error("the client is shut down")]
    Shutdown,
}

#[uniffi::export]
impl KhalaSyncError {
    /// Stable machine-readable code, identical to `khala_sync::SyncError::code()`.
    pub fn code(&self) -> String {
        match self {
            KhalaSyncError::Protocol { code, .. } | KhalaSyncError::Store { code, .. } => {
                code.clone()
            }
            other => static_code(other).to_owned(),
        }
    }

    /// Whether the SDK retries on its own (true) or needs the app to act (false).
    pub fn is_retryable(&self) -> bool {
        match self {
            KhalaSyncError::Store { retryable, .. } => *retryable,
            KhalaSyncError::StaleLoop { .. }
            | KhalaSyncError::Protocol { .. }
            | KhalaSyncError::Transport { .. }
            | KhalaSyncError::Http { .. }
            | KhalaSyncError::Server { .. } => true,
            _ => false,
        }
    }

    /// Human-readable description (never contains a token).
    pub fn message(&self) -> String {
        self.to_string()
    }
}

fn static_code(e: &KhalaSyncError) -> &'static str {
    match e {
        KhalaSyncError::Auth { .. } => "auth_failed",
        KhalaSyncError::Forbidden { .. } => "forbidden",
        KhalaSyncError::InvalidRequest { .. } => "invalid_request",
        KhalaSyncError::TopicForbidden { .. } => "topic_forbidden",
        KhalaSyncError::BadSubscription { .. } => "bad_subscription",
        KhalaSyncError::UpgradeRequired { .. } => "upgrade_required",
        KhalaSyncError::StaleLoop { .. } => "stale_loop",
        KhalaSyncError::Transport { .. } => "transport",
        KhalaSyncError::Http { .. } => "http_error",
        KhalaSyncError::Server { .. } => "server_error",
        KhalaSyncError::Config { .. } => "invalid_config",
        KhalaSyncError::Shutdown => "shutdown",
        // Carry their own code (from the wrapped error).
        KhalaSyncError::Protocol { .. } | KhalaSyncError::Store { .. } => "",
    }
}

impl From<SyncError> for KhalaSyncError {
    fn from(e: SyncError) -> Self {
        let code = e.code().to_owned();
        let retryable = e.is_retryable();
        match e {
            SyncError::Auth {
                status,
                code,
                message,
            } => KhalaSyncError::Auth {
                status,
                server_code: code,
                message,
            },
            SyncError::Forbidden {
                status,
                code,
                message,
            } => KhalaSyncError::Forbidden {
                status,
                server_code: code,
                message,
            },
            SyncError::InvalidRequest { code, message } => KhalaSyncError::InvalidRequest {
                server_code: code,
                message,
            },
            SyncError::TopicForbidden { topic } => KhalaSyncError::TopicForbidden {
                topic: topic.as_str().to_owned(),
            },
            SyncError::BadSubscription { message } => KhalaSyncError::BadSubscription { message },
            SyncError::UpgradeRequired { code, message } => KhalaSyncError::UpgradeRequired {
                server_code: code,
                message,
            },
            SyncError::StaleLoop { topic, snapshots } => KhalaSyncError::StaleLoop {
                topic: topic.as_str().to_owned(),
                snapshots,
            },
            SyncError::Protocol(p) => KhalaSyncError::Protocol {
                code,
                message: p.to_string(),
            },
            SyncError::Store(s) => KhalaSyncError::Store {
                code,
                retryable,
                message: s.to_string(),
            },
            SyncError::Transport(message) => KhalaSyncError::Transport { message },
            SyncError::Http {
                route,
                status,
                code,
                message,
            } => KhalaSyncError::Http {
                route: route.to_owned(),
                status,
                server_code: code,
                message,
            },
            SyncError::Server { code, message } => KhalaSyncError::Server {
                server_code: code,
                message,
            },
            SyncError::Config(message) => KhalaSyncError::Config { message },
            SyncError::Shutdown => KhalaSyncError::Shutdown,
            // `SyncError` is non-exhaustive: a variant added later keeps its code and text.
            other => KhalaSyncError::Server {
                server_code: code,
                message: other.to_string(),
            },
        }
    }
}

/// The error a Swift credential provider throws (`CredentialsError`). The SDK reports it as an
/// auth failure; syncing waits for `resume()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum CredentialsError {
    /// The app has no credentials right now (signed out, refresh failed, …).
    #[error("credentials unavailable: {message}")]
    Unavailable {
        /// Why (shown in the auth error; must not contain a secret).
        message: String,
    },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for CredentialsError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        CredentialsError::Unavailable {
            message: format!("credential callback failed: {}", e.reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use khala_sync::store::StoreError;
    use khala_sync::Topic;

    fn topic() -> Topic {
        Topic::new("runtime.run_summaries").expect("valid topic")
    }

    /// Every variant keeps `SyncError`'s stable code and retryability across the FFI.
    #[test]
    fn codes_and_retryability_match_the_rust_error() {
        let cases = vec![
            SyncError::Auth {
                status: 401,
                code: Some("unauthorized".into()),
                message: "no".into(),
            },
            SyncError::Forbidden {
                status: 403,
                code: None,
                message: "no".into(),
            },
            SyncError::InvalidRequest {
                code: None,
                message: "bad".into(),
            },
            SyncError::TopicForbidden { topic: topic() },
            SyncError::BadSubscription {
                message: "x".into(),
            },
            SyncError::UpgradeRequired {
                code: "upgrade_required".into(),
                message: "x".into(),
            },
            SyncError::StaleLoop {
                topic: topic(),
                snapshots: 2,
            },
            SyncError::Protocol(khala_sync::protocol::ProtocolError::InvalidHash("test")),
            SyncError::Store(StoreError::DiskFull),
            SyncError::Store(StoreError::Busy),
            SyncError::Store(StoreError::Foreign),
            SyncError::Transport("refused".into()),
            SyncError::Http {
                route: "snapshot",
                status: 500,
                code: None,
                message: "x".into(),
            },
            SyncError::Server {
                code: "weird".into(),
                message: "x".into(),
            },
            SyncError::Config("bad url".into()),
            SyncError::Shutdown,
        ];
        for e in cases {
            let f = KhalaSyncError::from(e.clone());
            assert_eq!(f.code(), e.code(), "{e:?}");
            assert_eq!(f.is_retryable(), e.is_retryable(), "{e:?}");
            assert!(!f.code().is_empty());
        }
    }
}
