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

impl TokenRequest {
    /// The request body as JSON, fields in declaration order, absent ones left out (what the
    /// derived `Serialize` writes; by hand so the web package links no serializer).
    pub fn to_json(&self) -> String {
        use super::json::write_str;
        let mut out = Vec::with_capacity(64);
        let mut sep = b'{';
        let mut field = |out: &mut Vec<u8>, name: &str| {
            out.push(sep);
            sep = b',';
            write_str(name, out);
            out.push(b':');
        };
        let list = |out: &mut Vec<u8>, items: &mut dyn Iterator<Item = &str>| {
            out.push(b'[');
            for (i, s) in items.enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(s, out);
            }
            out.push(b']');
        };
        if let Some(scopes) = &self.scopes {
            field(&mut out, "scopes");
            list(&mut out, &mut scopes.iter().map(String::as_str));
        }
        if let Some(topics) = &self.topics {
            field(&mut out, "topics");
            list(&mut out, &mut topics.iter().map(Topic::as_str));
        }
        if let Some(ttl) = self.ttl_seconds {
            field(&mut out, "ttl_seconds");
            out.extend_from_slice(ttl.to_string().as_bytes());
        }
        if let Some(d) = &self.device_id {
            field(&mut out, "device_id");
            write_str(d, &mut out);
        }
        if sep == b'{' {
            out.push(b'{');
        }
        out.push(b'}');
        // Valid UTF-8 in, ASCII escapes added.
        String::from_utf8(out).unwrap_or_default()
    }
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

/// Decodes a `200` token response body (`{"data": {...}}`; unknown fields ignored).
///
/// A walk over the parsed object instead of `TokenGrant`'s derived `Deserialize` (which
/// stays for apps that use it): same accepted shapes, a fraction of the web package's bytes.
pub fn decode_token_response(
    body: &str,
    limits: &DecodeLimits,
) -> Result<TokenGrant, ProtocolError> {
    limits.check("token response", body.len())?;
    grant_of(body).map_err(|e| ProtocolError::malformed_redacted("token response", &e))
}

fn grant_of(body: &str) -> Result<TokenGrant, String> {
    use super::json::{list, obj, object, opt_string, opt_uint, string, take, topic, uint};
    let mut d = obj(take(&mut object(body)?, "data")?, "data")?;
    // Errors name `granted_topics`, also for an object's inner `topic`.
    let granted = |v: super::json::Value<'_>, key: &str| -> Result<GrantedTopic, String> {
        match v {
            super::json::Value::Obj(mut o) => Ok(GrantedTopic::Object {
                topic: topic(take(&mut o, "topic")?, key)?,
                required_scope: opt_string(&mut o, "required_scope")?,
            }),
            v => topic(v, key).map(GrantedTopic::Name),
        }
    };
    let scopes = list(&mut d, "scopes", string)?;
    let granted_topics = list(&mut d, "granted_topics", granted)?;
    Ok(TokenGrant {
        token: SyncToken(string(take(&mut d, "token")?, "token")?),
        token_type: opt_string(&mut d, "token_type")?,
        expires_in: uint(&take(&mut d, "expires_in")?, "expires_in")?,
        issued_at: opt_string(&mut d, "issued_at")?,
        expires_at: opt_string(&mut d, "expires_at")?,
        issuer: opt_string(&mut d, "issuer")?,
        audience: opt_string(&mut d, "audience")?,
        subject: opt_string(&mut d, "subject")?,
        org_id: opt_string(&mut d, "org_id")?,
        claims_version: opt_string(&mut d, "claims_version")?,
        scopes,
        kid: opt_string(&mut d, "kid")?,
        granted_topics,
        token_id: opt_string(&mut d, "token_id")?,
        session_id: opt_string(&mut d, "session_id")?,
        device_id: opt_string(&mut d, "device_id")?,
        refresh_after_in: opt_uint(&mut d, "refresh_after_in")?,
    })
}

/// What a sync token obtained outside the token route (an app callback, `--sync-token`)
/// reveals without verification: the JWT payload's `sub`, `oa_org_id`, `exp`. Used only to
/// bind the local store to the right identity and to schedule a refresh; the server alone
/// decides whether the token is valid. Missing or unreadable claims give `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnverifiedClaims {
    /// `sub`.
    pub subject: Option<String>,
    /// `oa_org_id`.
    pub org_id: Option<String>,
    /// `exp` (seconds since the Unix epoch).
    pub exp: Option<u64>,
}

/// Reads [`UnverifiedClaims`] from a JWT (`header.payload.signature`, base64url payload).
pub fn unverified_claims(token: &SyncToken) -> UnverifiedClaims {
    use super::json::Value;
    use base64::Engine as _;
    let text = |v: Option<Value<'_>>| match v {
        Some(Value::Str(s)) => Some(s.into_owned()),
        Some(Value::Num(n)) => super::json::number_text(n),
        _ => None,
    };
    let Some(payload) = token.expose().split('.').nth(1) else {
        return UnverifiedClaims::default();
    };
    if payload.len() > 64 * 1024 {
        return UnverifiedClaims::default();
    }
    let Ok(bytes) =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('='))
    else {
        return UnverifiedClaims::default();
    };
    // Not a JSON object, or an `exp` that is present but not a non-negative integer: nothing.
    let Some(mut c) = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|t| super::json::object(t).ok())
    else {
        return UnverifiedClaims::default();
    };
    let Ok(exp) = super::json::opt_uint(&mut c, "exp") else {
        return UnverifiedClaims::default();
    };
    UnverifiedClaims {
        subject: text(c.remove("sub")),
        org_id: text(c.remove("oa_org_id")),
        exp,
    }
}

impl TokenGrant {
    /// A grant for a token the app supplied itself. `expires_in` (seconds) wins; else the
    /// JWT's `exp` relative to `now_unix`; else 300 s. Subject and org come from the
    /// unverified claims (identity of the local store only).
    pub fn from_provided(token: SyncToken, expires_in: Option<u64>, now_unix: u64) -> TokenGrant {
        let claims = unverified_claims(&token);
        let expires_in = expires_in
            .or_else(|| claims.exp.map(|e| e.saturating_sub(now_unix)))
            .unwrap_or(300)
            .max(1);
        TokenGrant {
            token,
            token_type: Some("Bearer".into()),
            expires_in,
            issued_at: None,
            expires_at: None,
            issuer: None,
            audience: None,
            subject: claims.subject,
            org_id: claims.org_id,
            claims_version: None,
            scopes: Vec::new(),
            kid: None,
            granted_topics: Vec::new(),
            token_id: None,
            session_id: None,
            device_id: None,
            refresh_after_in: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod provided_tests {
    use super::*;

    #[test]
    fn request_body_is_what_the_derived_serialize_writes() {
        let topic = |t: &str| Topic::new(t).unwrap();
        let requests = [
            TokenRequest::default(),
            TokenRequest {
                ttl_seconds: Some(300),
                ..TokenRequest::default()
            },
            TokenRequest {
                scopes: Some(vec![]),
                topics: Some(vec![]),
                ..TokenRequest::default()
            },
            TokenRequest {
                scopes: Some(vec!["runtime.run_events".into(), "q\"uote\\é\n".into()]),
                topics: Some(vec![topic("run:r1:events"), topic("a\"b")]),
                ttl_seconds: Some(900),
                device_id: Some("ios:9F2C\u{1}".into()),
            },
        ];
        for r in requests {
            assert_eq!(r.to_json(), serde_json::to_string(&r).unwrap(), "{r:?}");
        }
    }

    #[test]
    fn reads_claims_without_verifying() {
        use base64::Engine as _;
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!(
            "{}.{}.sig",
            b(r#"{"alg":"HS256"}"#),
            b(r#"{"sub":"user:42","oa_org_id":"org:7","exp":1000}"#)
        );
        let g = TokenGrant::from_provided(SyncToken::new(jwt), None, 700);
        assert_eq!(g.subject.as_deref(), Some("user:42"));
        assert_eq!(g.org_id.as_deref(), Some("org:7"));
        assert_eq!(g.expires_in, 300);
        let g = TokenGrant::from_provided(SyncToken::new("opaque"), None, 0);
        assert_eq!((g.subject, g.expires_in), (None, 300));
        let g = TokenGrant::from_provided(SyncToken::new("a.%%%.c"), Some(60), 0);
        assert_eq!(g.expires_in, 60);
    }
}
