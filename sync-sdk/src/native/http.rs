//! HTTP calls of the native driver (reqwest + rustls): token, snapshot pages, hydration.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, RETRY_AFTER};

use crate::engine::HttpFailure;
use crate::protocol::fanout::{decode_poll, PollFailure, PollPage};
use crate::protocol::http::{
    decode_doc_response, decode_error_body, decode_snapshot_page, DocResponse, SnapshotPage,
};
use crate::protocol::token::{decode_token_response, SyncToken, TokenGrant, TokenRequest};
use crate::protocol::DecodeLimits;

/// Reads a body with a size cap (never buffers more than `limit` + one chunk).
async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<String, HttpFailure> {
    if let Some(len) = resp.content_length() {
        if len > limit as u64 {
            return Err(HttpFailure::Decode(
                crate::protocol::ProtocolError::TooLarge {
                    context: "http body",
                    size: usize::try_from(len).unwrap_or(usize::MAX),
                    limit,
                },
            ));
        }
    }
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if buf.len() + chunk.len() > limit {
            return Err(HttpFailure::Decode(
                crate::protocol::ProtocolError::TooLarge {
                    context: "http body",
                    size: buf.len() + chunk.len(),
                    limit,
                },
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf).map_err(|_| {
        HttpFailure::Decode(crate::protocol::ProtocolError::Malformed {
            context: "http body",
            detail: "not UTF-8".into(),
        })
    })
}

fn transport(e: reqwest::Error) -> HttpFailure {
    // `without_url`: URLs never appear in errors (they may carry cursors or keys).
    HttpFailure::Transport(e.without_url().to_string())
}

/// `Retry-After` in seconds (the delay form; an HTTP date is ignored).
fn retry_after_secs(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
}

pub(crate) async fn failure(resp: reqwest::Response) -> HttpFailure {
    let status = resp.status().as_u16();
    let retry_after = retry_after_secs(&resp).map(Duration::from_secs);
    let body = read_capped(resp, 64 * 1024).await.unwrap_or_default();
    let parsed = decode_error_body(&body);
    HttpFailure::Status {
        status,
        code: parsed.code,
        message: parsed.message.unwrap_or_default(),
        retry_after,
    }
}

/// `POST /api/sync/token` with the app's credential headers.
pub(crate) async fn fetch_token(
    http: &reqwest::Client,
    url: &str,
    app_headers: Vec<(String, String)>,
    request: &TokenRequest,
    limits: &DecodeLimits,
) -> Result<TokenGrant, HttpFailure> {
    let mut headers = HeaderMap::new();
    for (k, v) in app_headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| HttpFailure::Transport(format!("invalid credential header name {k:?}")))?;
        let mut value = HeaderValue::from_str(&v)
            .map_err(|_| HttpFailure::Transport("invalid credential header value".into()))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    let resp = http
        .post(url)
        .headers(headers)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(request.to_json())
        .send()
        .await
        .map_err(transport)?;
    if !resp.status().is_success() {
        return Err(failure(resp).await);
    }
    let body = read_capped(resp, limits.max_frame_bytes).await?;
    decode_token_response(&body, limits).map_err(HttpFailure::Decode)
}

pub(crate) fn bearer(token: &SyncToken) -> Result<HeaderValue, HttpFailure> {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| HttpFailure::Transport("token is not a valid header value".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

/// `GET` a route that takes the sync token and decode its JSON body with `decode`.
async fn get_authorized<T>(
    http: &reqwest::Client,
    url: &str,
    token: &SyncToken,
    limits: &DecodeLimits,
    decode: fn(&str, &DecodeLimits) -> Result<T, crate::protocol::ProtocolError>,
) -> Result<T, HttpFailure> {
    let resp = http
        .get(url)
        .header(AUTHORIZATION, bearer(token)?)
        .send()
        .await
        .map_err(transport)?;
    if !resp.status().is_success() {
        return Err(failure(resp).await);
    }
    let body = read_capped(resp, limits.max_frame_bytes).await?;
    decode(&body, limits).map_err(HttpFailure::Decode)
}

/// One snapshot page.
pub(crate) async fn fetch_snapshot_page(
    http: &reqwest::Client,
    url: &str,
    token: &SyncToken,
    limits: &DecodeLimits,
) -> Result<SnapshotPage, HttpFailure> {
    get_authorized(http, url, token, limits, decode_snapshot_page).await
}

/// One document from the hydration route.
pub(crate) async fn fetch_doc(
    http: &reqwest::Client,
    url: &str,
    token: &SyncToken,
    limits: &DecodeLimits,
) -> Result<DocResponse, HttpFailure> {
    get_authorized(http, url, token, limits, decode_doc_response).await
}

/// Whole-request timeout of a dialect-F poll.
const POLL_TIMEOUT: Duration = Duration::from_secs(15);

/// Dialect F: one poll of a topic's message route. Every answer (200 or error) is decoded
/// into a page or a typed [`PollFailure`].
pub(crate) async fn poll(
    http: &reqwest::Client,
    url: &str,
    token: &SyncToken,
    limits: &DecodeLimits,
) -> Result<PollPage, PollFailure> {
    let auth = bearer(token)
        .map_err(|_| PollFailure::Transport("token is not a valid header value".into()))?;
    // A poll is one short request: a half-open connection should not hold the topic for the
    // client's general 60 s HTTP timeout.
    let resp = http
        .get(url)
        .header(AUTHORIZATION, auth)
        .timeout(POLL_TIMEOUT)
        .send()
        .await
        .map_err(|e| PollFailure::Transport(e.without_url().to_string()))?;
    let status = resp.status().as_u16();
    let retry_after_ms = retry_after_secs(&resp).map(|s| s.saturating_mul(1000));
    let body = match read_capped(resp, limits.max_frame_bytes).await {
        Ok(b) => b,
        Err(HttpFailure::Decode(e)) => return Err(PollFailure::Decode(e)),
        Err(HttpFailure::Transport(m)) => return Err(PollFailure::Transport(m)),
        Err(HttpFailure::Status { status, code, .. }) => {
            return Err(PollFailure::Status { status, code })
        }
    };
    decode_poll(status, &body, retry_after_ms, limits)
}
