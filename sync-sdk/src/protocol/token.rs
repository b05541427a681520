//! `POST /api/sync/token` request and response (PROTOCOL.md §1).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{DecodeLimits, ProtocolError, Topic};

/// Path of the token route below the base URL.
pub const TOKEN_PATH: &str = "/api/sync/token";

/// A sync JWT. Opaque to the client; never printed: `Debug` shows `SyncToken(<redacted>)`
/// and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct SyncToken(String);

impl SyncToken {
    /// Wraps a token string.
    pub fn new(token: impl Into<String>) -> Self {
        SyncToken(token.into())
    }

    /// The secret itself, for the one place that must send it (URL query or header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SyncToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SyncToken(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for SyncToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SyncToken)
    }
}

/// Token request body; every field optional.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TokenRequest {
    /// Requested scopes (default: the principal's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// Requested topics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<Topic>>,
    /// Requested lifetime (servers accept 60..=900).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u32>,
    /// Device identifier, e.g. `ios:9F2C…`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
}

/// A granted topic: objects `{topic, required_scope}` or plain strings are both accepted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum GrantedTopic {
    /// `{"topic": "...", "required_scope": "..."}`.
    Object {
        /// The topic.
        topic: Topic,
        /// Scope that grants it.
        #[serde(default)]
        required_scope: Option<String>,
    },
    /// Plain topic name (older issuer).
    Name(Topic),
}

impl GrantedTopic {
    /// The topic either form names.
    pub fn topic(&self) -> &Topic {
        match self {
            GrantedTopic::Object { topic, .. } | GrantedTopic::Name(topic) => topic,
        }
    }
}

/// The `data` object of a successful token response.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenGrant {
    /// The JWT (redacted in `Debug`).
    pub token: SyncToken,
    /// Usually `Bearer`.
    #[serde(default)]
    pub token_type: Option<String>,
    /// Lifetime in seconds; the client schedules refresh from this.
    pub expires_in: u64,
    /// Issue time (RFC 3339).
    #[serde(default)]
    pub issued_at: Option<String>,
    /// Expiry time (RFC 3339).
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Issuer.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Audience.
    #[serde(default)]
    pub audience: Option<String>,
    /// Subject (`user:42`); part of the local database's identity.
    #[serde(default)]
    pub subject: Option<String>,
    /// Organisation; part of the local database's identity.
    #[serde(default)]
    pub org_id: Option<String>,
    /// Claims version.
    #[serde(default)]
    pub claims_version: Option<String>,
    /// Granted scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Signing key id.
    #[serde(default)]
    pub kid: Option<String>,
    /// Granted topics (absent from the older issuer).
    #[serde(default)]
    pub granted_topics: Vec<GrantedTopic>,
    /// Token id.
    #[serde(default)]
    pub token_id: Option<String>,
    /// Session id.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Device id.
    #[serde(default)]
    pub device_id: Option<String>,
    /// Seconds after which to refresh (khala-sync); default 80 % of `expires_in`.
    #[serde(default)]
    pub refresh_after_in: Option<u64>,
}

impl TokenGrant {
    /// Seconds after issue at which the client should refresh.
    pub fn refresh_after_secs(&self) -> u64 {
        match self.refresh_after_in {
            Some(r) if r > 0 && r <= self.expires_in => r,
            // 80 % without overflow: `expires_in * 4 / 5` saturates (→ 20 %) for huge values.
            _ => self.expires_in / 5 * 4 + self.expires_in % 5 * 4 / 5,
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    data: TokenGrant,
}

/// Decodes a `200` token response body.
pub fn decode_token_response(
    body: &str,
    limits: &DecodeLimits,
) -> Result<TokenGrant, ProtocolError> {
    limits.check("token response", body.len())?;
    let env: Envelope = serde_json::from_str(body)
        .map_err(|e| ProtocolError::json_redacted("token response", e))?;
    Ok(env.data)
}
