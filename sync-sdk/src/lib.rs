//! # khala-sync
//!
//! An embedded client sync SDK that keeps an app's local copy of server-side Khala topics
//! exactly in step with the server. See the repository README and `docs/ARCHITECTURE.md`.
//!
//! Layers follow the data path: [`protocol`] (wire codecs) → [`engine`] (sans-IO state
//! machine) → [`store`] (documents + watermarks, committed together) → driver → API.

pub mod engine;
pub mod error;
pub mod protocol;
pub mod store;

pub use error::SyncError;
pub mod endpoint;
#[cfg(feature = "native")]
pub mod native;

pub use engine::{
    Change, ConnectionState, Dialect, FanoutTransport, Metrics, SyncStatus, TopicPhase, TopicStatus,
};
pub use protocol::{DocKey, Topic, Watermark};
pub use store::StoredDoc;

#[cfg(feature = "native")]
pub use native::{
    ClientOptions, CredentialProvider, CredentialsFuture, ProvidedToken, SyncClient,
    SyncClientBuilder, TokenFuture, TokenProvider,
};

/// Compiles the README's code blocks as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
mod readme_doctests {}
