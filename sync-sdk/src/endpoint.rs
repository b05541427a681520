//! Server endpoints derived from the app's base URL, with the transport-security rule:
//! plain `http://`/`ws://` only to loopback hosts unless the app explicitly allows it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::SyncError;
use crate::protocol::http::{encode_segment, DOC_PATH, SNAPSHOT_PATH};
use crate::protocol::phoenix::{PROTOCOL_VERSION, SCHEMA_VERSION, SOCKET_PATH, VSN};
use crate::protocol::token::{SyncToken, TOKEN_PATH};
use crate::protocol::{DocKey, Topic, Watermark};

/// A validated server base URL (`https://host[:port][/prefix]`).
///
/// Parsed by a small strict parser (not the `url` crate: ~15 KB gzipped of the web package)
/// that accepts the base URLs apps use — `http(s)://` or `ws(s)://`, an ASCII host name,
/// a dotted-quad IPv4 address or a bracketed IPv6 address, an optional port and a plain path
/// prefix — and serialises them exactly as the WHATWG URL standard (and the `url` crate) does:
/// lower-case scheme and host, default port dropped, IPv6 in its canonical form. Anything
/// outside that subset (credentials, query, fragment, percent-encoded or non-ASCII host names,
/// shorthand/octal/hex IPv4, `.`/`..` path segments, …) is an `invalid_config` error.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http` or `https` (`ws(s)` is normalised to `http(s)`).
    scheme: &'static str,
    /// `scheme://host[:port]`.
    origin: String,
    /// The origin plus the path without trailing slashes, or `/` when it is empty.
    base: String,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({})", self.base)
    }
}

fn invalid(what: &str) -> SyncError {
    SyncError::Config(format!("invalid base URL: {what}"))
}

/// WHATWG IPv6 serialisation: lower-case hex pieces, the first longest run (>= 2) of zero
/// pieces compressed to `::`, no embedded IPv4 form.
fn ipv6_text(ip: &Ipv6Addr) -> String {
    let p = ip.segments();
    let (mut best, mut best_len, mut i) = (8, 1, 0);
    while i < 8 {
        let start = i;
        while i < 8 && p[i] == 0 {
            i += 1;
        }
        if i - start > best_len {
            (best, best_len) = (start, i - start);
        }
        i += 1;
    }
    let mut out = String::from("[");
    let mut i = 0;
    while i < 8 {
        if i == best {
            out.push_str(if i == 0 { "::" } else { ":" });
            i += best_len;
            continue;
        }
        out.push_str(&format!("{:x}", p[i]));
        if i < 7 {
            out.push(':');
        }
        i += 1;
    }
    out.push(']');
    out
}

/// The host part: `(serialised host, is loopback)`.
fn parse_host(host: &str) -> Result<(String, bool), SyncError> {
    if host.is_empty() {
        return Err(SyncError::Config("the base URL has no host".into()));
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let ip: Ipv6Addr = inner.parse().map_err(|_| invalid("invalid IPv6 address"))?;
        return Ok((ipv6_text(&ip), IpAddr::V6(ip).is_loopback()));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(invalid(
            "the host must be an ASCII name (punycode for international names) or an IP address",
        ));
    }
    let host = host.to_ascii_lowercase();
    // The WHATWG parser reads a host whose last label is numeric as an IPv4 address
    // (including shorthand, octal and hex forms); only plain dotted quads are accepted here.
    let last = host
        .strip_suffix('.')
        .unwrap_or(&host)
        .rsplit('.')
        .next()
        .unwrap_or("");
    let numeric =
        !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x");
    if numeric {
        let ip: Ipv4Addr = host.parse().map_err(|_| invalid("invalid IPv4 address"))?;
        return Ok((ip.to_string(), ip.is_loopback()));
    }
    let loopback = host == "localhost";
    Ok((host, loopback))
}

impl Endpoint {
    /// Parses and checks a base URL. `http` is refused for non-loopback hosts unless
    /// `allow_insecure_non_loopback` is set.
    pub fn parse(base: &str, allow_insecure_non_loopback: bool) -> Result<Endpoint, SyncError> {
        let base = base.trim_matches(|c: char| c <= ' ');
        let (scheme, rest) = base
            .split_once(':')
            .filter(|(s, _)| {
                s.starts_with(|c: char| c.is_ascii_alphabetic())
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
            })
            .ok_or_else(|| invalid("relative URL without a base"))?;
        let scheme = scheme.to_ascii_lowercase();
        let (default_port, normalised) = match scheme.as_str() {
            "http" | "ws" => (80, "http"),
            "https" | "wss" => (443, "https"),
            other => {
                return Err(SyncError::Config(format!(
                    "unsupported URL scheme \"{other}\" (use https)"
                )))
            }
        };
        let rest = rest
            .strip_prefix("//")
            .ok_or_else(|| invalid("expected \"//\" after the scheme"))?;
        if rest.contains(['?', '#']) {
            return Err(SyncError::Config(
                "the base URL must not have a query or fragment".into(),
            ));
        }
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        if authority.contains('@') {
            return Err(SyncError::Config(
                "the base URL must not carry credentials".into(),
            ));
        }
        // `host[:port]`, where an IPv6 host is bracketed and contains colons itself.
        let (host, port) = match authority.rfind(':') {
            Some(i) if !authority[i..].contains(']') => (&authority[..i], &authority[i + 1..]),
            _ => (authority, ""),
        };
        let port = match port {
            "" => None,
            p if p.bytes().all(|b| b.is_ascii_digit()) => {
                Some(p.parse::<u16>().map_err(|_| invalid("port out of range"))?)
            }
            _ => return Err(invalid("invalid port number")),
        }
        .filter(|&p| p != default_port);
        let (host, loopback) = parse_host(host)?;
        match scheme.as_str() {
            "https" | "wss" => {}
            _ if loopback || allow_insecure_non_loopback => {}
            _ => {
                return Err(SyncError::Config(format!(
                    "refusing unencrypted {scheme}:// to non-loopback host {host}; use https or set allow_insecure_non_loopback"
                )))
            }
        }
        let path = path.trim_end_matches('/');
        let plain = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b);
        let bad_segment =
            |s: &str| matches!(s, "." | "..") || s.to_ascii_lowercase().contains("%2e");
        let bad_escape = path.match_indices('%').any(|(i, _)| {
            !path[i + 1..]
                .get(..2)
                .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
        });
        if !path.bytes().all(plain) || path.split('/').any(bad_segment) || bad_escape {
            return Err(invalid(
                "the path may hold only plain URL characters, no dot segments",
            ));
        }
        let origin = match port {
            Some(p) => format!("{normalised}://{host}:{p}"),
            None => format!("{normalised}://{host}"),
        };
        let base = format!("{origin}{}", if path.is_empty() { "/" } else { path });
        Ok(Endpoint {
            scheme: normalised,
            origin,
            base,
        })
    }

    /// `scheme://host:port`: the identity the local store is bound to.
    pub fn origin(&self) -> String {
        self.origin.clone()
    }

    fn join(&self, path: &str) -> String {
        format!("{}{}", self.base.trim_end_matches('/'), path)
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
        let scheme = if self.scheme == "https" { "wss" } else { "ws" };
        self.socket_url_with_scheme(scheme, token, client, build_id)
    }

    /// The same URL with the `http(s)://` scheme, for the HTTP/1.1 upgrade request.
    pub fn socket_upgrade_url(&self, token: &SyncToken, client: &str, build_id: &str) -> SecretUrl {
        self.socket_url_with_scheme(self.scheme, token, client, build_id)
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

    /// The former `url`-crate implementation: `(origin, base)` or an error.
    fn reference(base: &str, allow: bool) -> Option<(String, String)> {
        let mut url = url::Url::parse(base).ok()?;
        if !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        if url.query().is_some() || url.fragment().is_some() {
            return None;
        }
        let loopback = match url.host()? {
            url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
            url::Host::Ipv4(ip) => IpAddr::V4(ip).is_loopback(),
            url::Host::Ipv6(ip) => IpAddr::V6(ip).is_loopback(),
        };
        match url.scheme() {
            "https" | "wss" => {}
            "http" | "ws" if loopback || allow => {}
            _ => return None,
        }
        match url.scheme() {
            "ws" => url.set_scheme("http").ok()?,
            "wss" => url.set_scheme("https").ok()?,
            _ => {}
        }
        let trimmed = url.path().trim_end_matches('/').to_owned();
        url.set_path(&trimmed);
        Some((url.origin().ascii_serialization(), url.as_str().to_owned()))
    }

    #[test]
    fn parser_matches_the_url_crate_on_every_url_it_accepts() {
        // (input, must this parser accept it?)
        let corpus: &[(&str, bool)] = &[
            ("https://sync.example.com", true),
            ("https://sync.example.com/", true),
            ("https://Sync.Example.COM/Base/", true),
            ("HTTPS://sync.example.com:443/x", true),
            ("https://sync.example.com:8443/a/b//", true),
            ("https://sync.example.com:08443", true),
            ("https://sync.example.com:/p", true),
            ("wss://sync.example.com/base", true),
            ("ws://localhost:4000", true),
            ("WS://LOCALHOST:80/", true),
            ("http://127.0.0.1:4010", true),
            ("http://127.0.0.1:80", true),
            ("http://[::1]:4010", true),
            ("https://[2001:DB8:0:0:0:0:0:1]/", true),
            ("https://[2001:db8:0:0:1:0:0:1]", true),
            ("https://[0:0:0:0:0:0:0:0]", true),
            ("https://[1:0:0:2:0:0:0:3]", true),
            ("https://[::ffff:192.168.1.1]", true),
            ("https://[::ffff:1:2]", true),
            ("https://xn--bcher-kva.example", true),
            ("https://sync.example.com./x", true),
            ("https://a_b.example.com", true),
            ("https://10.0.0.1:9/p", true),
            ("  https://sync.example.com/base  ", true),
            ("https://sync.example.com/a%20b/c", true),
            ("https://sync.example.com/~x/!$&'()*+,;=:@", true),
            ("https://sync.example.com//double", true),
            // Refused by both.
            ("ftp://sync.example.com", false),
            ("http://sync.example.com", false),
            ("ws://10.0.0.1", false),
            ("https://u:p@sync.example.com", false),
            ("https://sync.example.com/?q=1", false),
            ("https://sync.example.com/#f", false),
            ("https://sync.example.com?", false),
            ("sync.example.com", false),
            ("https://", false),
            ("https://sync.example.com:99999", false),
            ("https://[::1", false),
            ("mailto:x@example.com", false),
            // Accepted by the url crate (normalised), refused here.
            ("https://bücher.example", false),
            ("https://sync%2Eexample.com", false),
            ("http://127.1:4010", false),
            ("http://0x7f.0.0.1", false),
            ("http://017.0.0.1", false),
            ("https:sync.example.com", false),
            ("https:\\\\sync.example.com", false),
            ("https://@sync.example.com", false),
            ("https://sync.example.com/a b", false),
            ("https://sync.example.com/a/../b", false),
            ("https://sync.example.com/a/%2e/b", false),
            ("https://sync.example.com/a\\b", false),
            ("https://sync.example.com/%zz", false),
            ("https://sync.exa\tmple.com", false),
        ];
        for &(input, accept) in corpus {
            for allow in [false, true] {
                let ours = Endpoint::parse(input, allow);
                let theirs = reference(input, allow);
                match &ours {
                    Ok(e) => {
                        assert_eq!(
                            theirs,
                            Some((e.origin(), e.base.clone())),
                            "{input} (allow {allow})"
                        );
                    }
                    Err(err) => {
                        assert!(matches!(err, SyncError::Config(_)), "{input}: {err:?}");
                        assert!(
                            !accept
                                || (input.starts_with("http://") || input.starts_with("ws://"))
                                    && !allow,
                            "{input} (allow {allow}) refused: {err:?}"
                        );
                    }
                }
                if accept && allow {
                    assert!(ours.is_ok(), "{input} must be accepted");
                }
            }
        }
    }

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
