//! Server endpoints derived from the app's base URL, with the transport-security rule:
//! plain `http://`/`ws://` only to loopback hosts unless the app explicitly allows it.

use std::fmt;
use std::net::IpAddr;

use url::Url;

use crate::error::SyncError;
use crate::protocol::http::{encode_segment, DOC_PATH, SNAPSHOT_PATH};
use crate::protocol::phoenix::{PROTOCOL_VERSION, SCHEMA_VERSION, SOCKET_PATH, VSN};
use crate::protocol::token::{SyncToken, TOKEN_PATH};
use crate::protocol::{DocKey, Topic, Watermark};

/// A validated server base URL (`https://host[:port][/prefix]`).
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    base: Url,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({})", self.base)
    }
}

impl Endpoint {
    /// Parses and checks a base URL. `http` is refused for non-loopback hosts unless
    /// `allow_insecure_non_loopback` is set.
    pub fn parse(base: &str, allow_insecure_non_loopback: bool) -> Result<Endpoint, SyncError> {
        let mut url =
            Url::parse(base).map_err(|e| SyncError::Config(format!("invalid base URL: {e}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(SyncError::Config(
                "the base URL must not carry credentials".into(),
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(SyncError::Config(
                "the base URL must not have a query or fragment".into(),
            ));
        }
        let host = url
            .host()
            .ok_or_else(|| SyncError::Config("the base URL has no host".into()))?;
        let loopback = match host {
            url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
            url::Host::Ipv4(ip) => IpAddr::V4(ip).is_loopback(),
            url::Host::Ipv6(ip) => IpAddr::V6(ip).is_loopback(),
        };
        match url.scheme() {
            "https" | "wss" => {}
            "http" | "ws" if loopback || allow_insecure_non_loopback => {}
            "http" | "ws" => {
                return Err(SyncError::Config(format!(
                    "refusing unencrypted {}:// to non-loopback host {}; use https or set allow_insecure_non_loopback",
                    url.scheme(),
                    url.host_str().unwrap_or("?")
                )))
            }
            other => {
                return Err(SyncError::Config(format!(
                    "unsupported URL scheme {other:?} (use https)"
                )))
            }
        }
        // Normalise ws(s) to http(s); derive the socket scheme later.
        let scheme = match url.scheme() {
            "ws" => Some("http"),
            "wss" => Some("https"),
            _ => None,
        };
        if let Some(s) = scheme {
            url.set_scheme(s)
                .map_err(|()| SyncError::Config("cannot normalise URL scheme".into()))?;
        }
        let trimmed = url.path().trim_end_matches('/').to_owned();
        url.set_path(&trimmed);
        Ok(Endpoint { base: url })
    }

    /// `scheme://host:port`: the identity the local store is bound to.
    pub fn origin(&self) -> String {
        self.base.origin().ascii_serialization()
    }

    fn join(&self, path: &str) -> String {
        format!("{}{}", self.base.as_str().trim_end_matches('/'), path)
    }

    /// `POST` target for tokens.
    pub fn token_url(&self) -> String {
        self.join(TOKEN_PATH)
    }

    /// Snapshot page URL.
    pub fn snapshot_url(&self, topic: &Topic, cursor: Option<&str>, limit: u32) -> String {
        let mut u = format!(
            "{}/{}?limit={limit}",
            self.join(SNAPSHOT_PATH),
            encode_segment(topic.as_str())
        );
        if let Some(c) = cursor {
            u.push_str("&cursor=");
            u.push_str(&encode_segment(c));
        }
        u
    }

    /// Hydration URL of one document.
    pub fn doc_url(&self, topic: &Topic, key: &DocKey) -> String {
        format!(
            "{}/{}/{}",
            self.join(DOC_PATH),
            encode_segment(topic.as_str()),
            encode_segment(key.as_str())
        )
    }

    /// Dialect F: the topic's WebSocket URL with the `http(s)://` scheme (for the HTTP/1.1
    /// upgrade request; the token goes in the `Authorization` header, not the URL).
    pub fn fanout_ws_url(&self, topic: &Topic, after_seq: Watermark, limit: u32) -> String {
        self.join(&crate::protocol::fanout::ws_path(topic, after_seq, limit))
    }

    /// Dialect F: the topic's poll URL.
    pub fn fanout_poll_url(&self, topic: &Topic, after_seq: Watermark, limit: u32) -> String {
        self.join(&crate::protocol::fanout::poll_path(topic, after_seq, limit))
    }

    /// The Phoenix socket URL. It contains the token: treat it as a secret.
    pub fn socket_url(&self, token: &SyncToken, client: &str, build_id: &str) -> SecretUrl {
        let scheme = if self.base.scheme() == "https" {
            "wss"
        } else {
            "ws"
        };
        self.socket_url_with_scheme(scheme, token, client, build_id)
    }

    /// The same URL with the `http(s)://` scheme, for the HTTP/1.1 upgrade request.
    pub fn socket_upgrade_url(&self, token: &SyncToken, client: &str, build_id: &str) -> SecretUrl {
        let scheme = self.base.scheme().to_owned();
        self.socket_url_with_scheme(&scheme, token, client, build_id)
    }

    fn socket_url_with_scheme(
        &self,
        scheme: &str,
        token: &SyncToken,
        client: &str,
        build_id: &str,
    ) -> SecretUrl {
        let rest = self.join(SOCKET_PATH);
        let rest = rest.split_once("://").map_or(rest.as_str(), |(_, r)| r);
        SecretUrl(format!(
            "{scheme}://{rest}?token={}&vsn={VSN}&client={}&client_build_id={}&protocol_version={PROTOCOL_VERSION}&schema_version={SCHEMA_VERSION}",
            encode_segment(token.expose()),
            encode_segment(client),
            encode_segment(build_id),
        ))
    }
}

/// A URL carrying a secret; `Debug` redacts it.
#[derive(Clone)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL that carries no secret (dialect F sends the token in a header).
    #[cfg(feature = "native")]
    pub(crate) fn public(url: String) -> SecretUrl {
        SecretUrl(url)
    }

    /// The full URL, for the one call that opens the socket.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretUrl(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_http_is_allowed_remote_http_is_refused() {
        assert!(Endpoint::parse("http://127.0.0.1:4010", false).is_ok());
        assert!(Endpoint::parse("http://localhost:4010/", false).is_ok());
        assert!(Endpoint::parse("http://[::1]:4010", false).is_ok());
        let e = Endpoint::parse("http://sync.example.com", false);
        assert!(matches!(e, Err(SyncError::Config(_))), "{e:?}");
        assert!(Endpoint::parse("ws://10.0.0.1", false).is_err());
        assert!(Endpoint::parse("http://sync.example.com", true).is_ok());
        assert!(Endpoint::parse("https://sync.example.com", false).is_ok());
        assert!(Endpoint::parse("ftp://sync.example.com", true).is_err());
        assert!(Endpoint::parse("https://u:p@sync.example.com", false).is_err());
    }

    #[test]
    fn urls_are_derived_and_segments_encoded() {
        let e = Endpoint::parse("https://sync.example.com/base/", false)
            .unwrap_or_else(|_| unreachable!());
        assert_eq!(e.origin(), "https://sync.example.com");
        assert_eq!(
            e.token_url(),
            "https://sync.example.com/base/api/sync/token"
        );
        let t = Topic::new("runtime.run_summaries").unwrap_or_else(|_| unreachable!());
        let k = DocKey::new("runtime/run_summary:1").unwrap_or_else(|_| unreachable!());
        assert_eq!(
            e.doc_url(&t, &k),
            "https://sync.example.com/base/api/sync/doc/runtime.run_summaries/runtime%2Frun_summary%3A1"
        );
        let s = e.socket_url(&SyncToken::new("a.b.c"), "khala-sync", "1");
        assert!(s.expose().starts_with(
            "wss://sync.example.com/base/sync/socket/websocket?token=a.b.c&vsn=2.0.0"
        ));
        assert!(!format!("{s:?}").contains("a.b.c"));
    }
}
