//! HTTP routes: token (§1), snapshot (§3), doc (§4), metrics (§5) and the `/dev` control API.

use crate::faults::Faults;
use crate::jwt::{self, SyncClaims};
use crate::metrics::Counters;
use crate::socket::ws_handler;
use crate::state::{PublishItem, Shared};
use crate::time::{now_unix, rfc3339};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// An HTTP error: body `{"message", "error": {"code", "message"}}` (PROTOCOL.md §1).
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "message": self.message,
            "error": {"code": self.code, "message": self.message},
        });
        (self.status, Json(body)).into_response()
    }
}

pub(crate) fn api_error(status: StatusCode, code: &str, message: &str) -> ApiError {
    ApiError {
        status,
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

type ApiResult = Result<Response, ApiError>;

pub(crate) fn raw_json(text: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/sync/token", post(token))
        .route("/sync/socket/websocket", get(ws_handler))
        .route(
            "/internal/v1/khala/topics/{topic}/ws",
            get(crate::fanout::ws_route),
        )
        .route(
            "/internal/v1/khala/topics/{topic}/messages",
            get(crate::fanout::poll_route),
        )
        .route("/dev/events", post(crate::fanout::dev_publish_event))
        .route("/dev/events/{topic}", get(crate::fanout::dev_events))
        .route("/api/sync/snapshot/{topic}", get(snapshot))
        .route("/api/sync/doc/{topic}/{doc_key}", get(doc))
        .route("/internal/v1/khala/fanout/metrics", get(metrics))
        .route("/dev/publish", post(dev_publish))
        .route("/dev/faults", post(dev_set_faults).get(dev_get_faults))
        .route("/dev/state/{topic}", get(dev_state))
        .route("/dev/truncate", post(dev_truncate))
        .merge(crate::web::routes())
        .with_state(shared)
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[derive(Deserialize)]
struct TokenRequest {
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default)]
    ttl_seconds: Option<i64>,
    #[serde(default)]
    device_id: Option<String>,
}

/// `POST /api/sync/token` (PROTOCOL.md §1, §7).
async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let cfg = &shared.config;
    let principal = bearer(&headers)
        .and_then(|t| cfg.principals.iter().find(|p| p.app_token == t))
        .ok_or_else(|| {
            api_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "app session missing or invalid",
            )
        })?;
    let invalid = |msg: &str| api_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", msg);
    let req: TokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TokenRequest {
            scopes: None,
            topics: None,
            ttl_seconds: None,
            device_id: None,
        }
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| invalid(&format!("invalid token request: {e}")))?
    };
    let known_scope = |s: &str| cfg.topic(s).is_some() || s == "runtime.run_events";
    if let Some(scopes) = &req.scopes {
        if let Some(bad) = scopes.iter().find(|s| !known_scope(s)) {
            return Err(api_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_scope",
                &format!("unknown scope {bad:?}"),
            ));
        }
    }
    // The scope a topic needs: a dialect-P topic is its own scope; a dialect-F topic
    // (`run:<id>:events`, `worker:<id>:lifecycle`) needs its kind's scope (§6, §7).
    let scope_of = |t: &str| -> Option<String> {
        if cfg.topic(t).is_some() {
            Some(t.to_owned())
        } else {
            crate::fanout::required_scope(t).map(str::to_owned)
        }
    };
    if let Some(topics) = &req.topics {
        if let Some(bad) = topics.iter().find(|t| scope_of(t).is_none()) {
            return Err(invalid(&format!("unsupported topic {bad:?}")));
        }
    }
    // Scopes: requested, else those the requested topics need, else all of the principal's.
    let scopes: Vec<String> = match (&req.scopes, &req.topics) {
        (Some(s), _) => dedup(s),
        (None, Some(t)) => dedup(&t.iter().filter_map(|t| scope_of(t)).collect::<Vec<_>>()),
        (None, None) => principal.scopes.clone(),
    };
    if let Some(bad) = scopes.iter().find(|s| !principal.scopes.contains(s)) {
        return Err(api_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!("scope {bad:?} is not allowed for this principal"),
        ));
    }
    let topics: Vec<String> = match &req.topics {
        Some(t) => {
            let t = dedup(t);
            if let Some(bad) = t
                .iter()
                .find(|t| !scope_of(t).is_some_and(|s| scopes.contains(&s)))
            {
                return Err(invalid(&format!(
                    "topic {bad:?} is not covered by the requested scopes"
                )));
            }
            t
        }
        None => scopes
            .iter()
            .filter(|s| cfg.topic(s).is_some())
            .cloned()
            .collect(),
    };
    let ttl = req
        .ttl_seconds
        .unwrap_or(i64::try_from(cfg.token_ttl_seconds).unwrap_or(300));
    let (min, max) = (
        i64::try_from(cfg.min_ttl_seconds).unwrap_or(60),
        i64::try_from(cfg.max_ttl_seconds).unwrap_or(900),
    );
    if ttl < min || ttl > max {
        return Err(invalid(&format!(
            "ttl_seconds must be within {min}..={max}"
        )));
    }
    if crate::faults::FaultFlags::get(&shared.faults.token_unavailable) {
        return Err(api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "sync_token_unavailable",
            "sync token minting is disabled",
        ));
    }
    let device_id = req.device_id.unwrap_or_else(|| "device:unspecified".into());
    let mut now = now_unix();
    if crate::faults::FaultFlags::get(&shared.faults.expired_tokens) {
        // Issued long enough ago that it expired before it was minted (skew included).
        now -= ttl + cfg.clock_skew_seconds.abs() + 60;
    }
    let claims = make_claims(
        &shared,
        &principal.subject,
        &principal.org_id,
        scopes,
        topics,
        &device_id,
        now,
        ttl,
    );
    let mut token = jwt::sign(cfg.jwt_secret.as_bytes(), &claims);
    if crate::faults::FaultFlags::get(&shared.faults.tamper_tokens) {
        token = jwt::tamper(&token);
    }
    Counters::inc(&shared.counters.tokens_minted);
    let granted: Vec<Value> = claims
        .oa_sync_topics
        .iter()
        .map(|t| json!({"topic": t, "required_scope": scope_of(t).unwrap_or_else(|| t.clone())}))
        .collect();
    let body = json!({"data": {
        "token": token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "issued_at": rfc3339(now),
        "expires_at": rfc3339(now + ttl),
        "issuer": cfg.issuer,
        "audience": cfg.audience,
        "subject": claims.sub,
        "org_id": claims.oa_org_id,
        "claims_version": jwt::CLAIMS_VERSION,
        "scopes": claims.oa_sync_scopes,
        "kid": jwt::KID,
        "granted_topics": granted,
        "token_id": claims.jti,
        "session_id": claims.oa_session_id,
        "device_id": claims.oa_device_id,
        "refresh_after_in": ttl * 8 / 10,
    }});
    Ok(Json(body).into_response())
}

fn dedup(items: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in items {
        if !out.contains(i) {
            out.push(i.clone());
        }
    }
    out
}

fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap_or('0'))
        .collect()
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn make_claims(
    shared: &Shared,
    subject: &str,
    org_id: &str,
    scopes: Vec<String>,
    topics: Vec<String>,
    device_id: &str,
    iat: i64,
    ttl: i64,
) -> SyncClaims {
    let user_id = subject
        .rsplit(':')
        .next()
        .and_then(|s| s.parse::<i64>().ok())
        .map_or_else(|| Value::String(subject.to_owned()), Value::from);
    SyncClaims {
        iss: shared.config.issuer.clone(),
        aud: shared.config.audience.clone(),
        sub: subject.to_owned(),
        iat,
        nbf: iat,
        exp: iat + ttl,
        jti: format!("sync_{}", random_hex(24)),
        oa_user_id: user_id,
        oa_org_id: org_id.to_owned(),
        oa_session_id: format!("sess_{}", random_hex(16)),
        oa_device_id: device_id.to_owned(),
        oa_sync_scopes: scopes,
        oa_sync_topics: topics,
        oa_claims_version: jwt::CLAIMS_VERSION.into(),
    }
}

/// Sync JWT from `Authorization`, then the topic: 401, 404, 403 in that order.
fn authorize(shared: &Shared, headers: &HeaderMap, topic: &str) -> Result<SyncClaims, ApiError> {
    let cfg = &shared.config;
    let token = bearer(headers).ok_or_else(|| {
        api_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer sync token",
        )
    })?;
    let claims = jwt::verify(
        cfg.jwt_secret.as_bytes(),
        token,
        now_unix(),
        cfg.clock_skew_seconds,
        &cfg.issuer,
        &cfg.audience,
    )
    .map_err(|e| api_error(StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string()))?;
    if cfg.topic(topic).is_none() {
        return Err(api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("unknown topic {topic:?}"),
        ));
    }
    if !claims.oa_sync_topics.iter().any(|t| t == topic) {
        return Err(api_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!("topic {topic:?} is not granted by this token"),
        ));
    }
    Ok(claims)
}

#[derive(Deserialize)]
struct SnapshotQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(serde::Serialize, Deserialize)]
struct SnapshotCursor {
    /// Topic.
    t: String,
    /// Pinned watermark.
    w: u64,
    /// Last doc key served.
    k: String,
}

#[derive(serde::Serialize)]
struct WireDoc<'a> {
    doc_key: &'a str,
    doc_version: u64,
    payload: &'a RawValue,
    payload_hash: Option<&'a str>,
    watermark: u64,
}

/// `GET /api/sync/snapshot/{topic}` (PROTOCOL.md §3, §7).
async fn snapshot(
    State(shared): State<Arc<Shared>>,
    Path(topic): Path<String>,
    Query(q): Query<SnapshotQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let cfg = &shared.config;
    if crate::faults::FaultFlags::get(&shared.faults.snapshot_route_disabled) {
        return Err(api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no snapshot route",
        ));
    }
    authorize(&shared, &headers, &topic)?;
    let bad = |msg: &str| api_error(StatusCode::BAD_REQUEST, "invalid_request", msg);
    let limit = match q.limit.as_deref() {
        None | Some("") => cfg.snapshot_default_limit,
        Some(s) => s
            .parse::<u64>()
            .map_err(|_| bad("limit must be a non-negative integer"))?
            .try_into()
            .unwrap_or(usize::MAX),
    }
    .clamp(1, cfg.snapshot_max_limit.max(1));
    let cursor = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => {
            let decoded: SnapshotCursor = URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .filter(|c: &SnapshotCursor| c.t == topic)
                .ok_or_else(|| bad("malformed snapshot cursor"))?;
            Some(decoded)
        }
    };
    let expired = || {
        api_error(
            StatusCode::GONE,
            "snapshot_expired",
            "snapshot watermark is older than retention; restart the snapshot",
        )
    };
    if crate::faults::FaultFlags::get(&shared.faults.snapshot_expired) {
        return Err(expired());
    }
    let (watermark, docs) = {
        let inner = shared.lock();
        let Some(log) = inner.logs.get(&topic) else {
            return Err(api_error(
                StatusCode::NOT_FOUND,
                "not_found",
                "unknown topic",
            ));
        };
        let watermark = match &cursor {
            Some(c) if c.w > log.head() => return Err(bad("malformed snapshot cursor")),
            Some(c) => c.w,
            None => log.head(),
        };
        let Some(all) = log.docs_as_of(watermark) else {
            return Err(expired());
        };
        let docs: Vec<_> = match &cursor {
            Some(c) => all
                .range::<String, _>((std::ops::Bound::Excluded(&c.k), std::ops::Bound::Unbounded))
                .take(limit + 1)
                .map(|(_, e)| e.clone())
                .collect(),
            None => all.values().take(limit + 1).cloned().collect(),
        };
        (watermark, docs)
    };
    let more = docs.len() > limit;
    let page = &docs[..docs.len().min(limit)];
    let next_cursor = match (more, page.last()) {
        (true, Some(last)) => {
            let c = SnapshotCursor {
                t: topic.clone(),
                w: watermark,
                k: last.doc_key.clone(),
            };
            Some(URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap_or_default()))
        }
        _ => None,
    };
    let wire: Vec<WireDoc<'_>> = page
        .iter()
        .map(|e| WireDoc {
            doc_key: &e.doc_key,
            doc_version: e.doc_version,
            payload: e.payload.as_deref().unwrap_or(RawValue::NULL),
            payload_hash: e.payload_hash.as_deref(),
            watermark: e.watermark,
        })
        .collect();
    if cursor.is_none() {
        Counters::inc(&shared.counters.snapshots_started);
    }
    Counters::inc(&shared.counters.snapshot_pages_served);
    #[derive(serde::Serialize)]
    struct Page<'a> {
        topic: &'a str,
        snapshot_watermark: u64,
        docs: Vec<WireDoc<'a>>,
        next_cursor: Option<String>,
    }
    let body = Page {
        topic: &topic,
        snapshot_watermark: watermark,
        docs: wire,
        next_cursor,
    };
    Ok(raw_json(serde_json::to_string(&body).unwrap_or_default()))
}

/// `GET /api/sync/doc/{topic}/{doc_key}` (PROTOCOL.md §4; path segments arrive decoded).
async fn doc(
    State(shared): State<Arc<Shared>>,
    Path((topic, doc_key)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    if crate::faults::FaultFlags::get(&shared.faults.doc_route_disabled) {
        return Err(api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no doc route",
        ));
    }
    authorize(&shared, &headers, &topic)?;
    let entry = shared
        .lock()
        .logs
        .get(&topic)
        .and_then(|l| l.live_doc(&doc_key))
        .ok_or_else(|| {
            api_error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no document {doc_key:?} in {topic:?}"),
            )
        })?;
    Counters::inc(&shared.counters.doc_fetches);
    let body = WireDoc {
        doc_key: &entry.doc_key,
        doc_version: entry.doc_version,
        payload: entry.payload.as_deref().unwrap_or(RawValue::NULL),
        payload_hash: entry.payload_hash.as_deref(),
        watermark: entry.watermark,
    };
    Ok(raw_json(serde_json::to_string(&body).unwrap_or_default()))
}

async fn metrics(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let limit = q
        .get("topic_limit")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(20);
    Json(shared.metrics(limit)).into_response()
}

#[derive(Deserialize)]
struct PublishBody {
    topic: Option<String>,
    doc_key: Option<String>,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
    #[serde(default)]
    deleted: bool,
    updates: Option<Vec<PublishBody>>,
}

impl PublishBody {
    fn item(self) -> Result<PublishItem, String> {
        let (Some(topic), Some(doc_key)) = (self.topic, self.doc_key) else {
            return Err("each update needs topic and doc_key".into());
        };
        let payload = if self.deleted {
            None
        } else {
            // A missing or null payload publishes the JSON value `null` (not a deletion).
            Some(Arc::from(
                self.payload.unwrap_or_else(|| RawValue::NULL.to_owned()),
            ))
        };
        Ok(PublishItem {
            topic,
            doc_key,
            payload,
        })
    }
}

/// `POST /dev/publish`: one update or `{"updates": [...]}`.
async fn dev_publish(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult {
    let invalid = |m: &str| api_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", m);
    let req: PublishBody =
        serde_json::from_slice(&body).map_err(|e| invalid(&format!("invalid body: {e}")))?;
    let items: Vec<PublishItem> = match req.updates {
        Some(list) => list
            .into_iter()
            .map(PublishBody::item)
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(&e))?,
        None => vec![req.item().map_err(|e| invalid(&e))?],
    };
    let published = shared.publish(items).map_err(|e| invalid(&e.to_string()))?;
    let watermarks: Vec<u64> = published.iter().map(|p| p.watermark).collect();
    Ok(Json(json!({"watermarks": watermarks, "results": published})).into_response())
}

async fn dev_set_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult {
    let faults: Faults = serde_json::from_slice(&body).map_err(|e| {
        api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            &format!("invalid faults: {e}"),
        )
    })?;
    crate::server::apply_faults(&shared, &faults);
    Ok(Json(crate::server::active_faults(&shared)).into_response())
}

async fn dev_get_faults(State(shared): State<Arc<Shared>>) -> Response {
    Json(crate::server::active_faults(&shared)).into_response()
}

async fn dev_state(State(shared): State<Arc<Shared>>, Path(topic): Path<String>) -> ApiResult {
    let inner = shared.lock();
    let log = inner
        .logs
        .get(&topic)
        .ok_or_else(|| api_error(StatusCode::NOT_FOUND, "not_found", "unknown topic"))?;
    let docs: Vec<WireDoc<'_>> = Vec::new();
    let live = log.live_docs();
    let mut docs = docs;
    for e in &live {
        docs.push(WireDoc {
            doc_key: &e.doc_key,
            doc_version: e.doc_version,
            payload: e.payload.as_deref().unwrap_or(RawValue::NULL),
            payload_hash: e.payload_hash.as_deref(),
            watermark: e.watermark,
        });
    }
    #[derive(serde::Serialize)]
    struct State<'a> {
        topic: &'a str,
        head: u64,
        retention_floor: u64,
        docs: Vec<WireDoc<'a>>,
    }
    let body = State {
        topic: &topic,
        head: log.head(),
        retention_floor: log.floor(),
        docs,
    };
    Ok(raw_json(serde_json::to_string(&body).unwrap_or_default()))
}

#[derive(Deserialize)]
struct TruncateBody {
    topic: String,
    before_watermark: u64,
}

async fn dev_truncate(State(shared): State<Arc<Shared>>, body: Bytes) -> ApiResult {
    let req: TruncateBody = serde_json::from_slice(&body).map_err(|e| {
        api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            &format!("invalid body: {e}"),
        )
    })?;
    let mut inner = shared.lock();
    let log = inner
        .logs
        .get_mut(&req.topic)
        .ok_or_else(|| api_error(StatusCode::NOT_FOUND, "not_found", "unknown topic"))?;
    log.truncate_before(req.before_watermark);
    Ok(
        Json(json!({"topic": req.topic, "head": log.head(), "retention_floor": log.floor()}))
            .into_response(),
    )
}
