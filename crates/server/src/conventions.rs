//! Persona's API conventions, shared by every endpoint: bearer
//! authentication, rate-limit headers, `Key-Inflection`, `Persona-Version`,
//! JSON bodies with bounded size and any key casing, `Idempotency-Key`.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use blindpass_service::{Authenticated, Environment, IdempotencyOutcome, RateLimitStatus};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::client_addr::Client;
use crate::error::ApiError;
use crate::inflection::{Inflection, to_kebab};

/// `Persona-Version` values Persona's OpenAPI lists (plus the 2026-09-29
/// docs version).
pub const PERSONA_VERSIONS: &[&str] = &[
    "2026-09-29",
    "2025-12-08",
    "2025-10-27",
    "2023-01-05",
    "2022-09-01",
    "2021-08-18",
    "2021-07-05",
    "2021-02-21",
    "2020-05-18",
];

/// How long an idempotent response is kept.
pub const IDEMPOTENCY_TTL_SECS: i64 = 24 * 3600;
/// Maximum length of an `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// `Content-Type` of every JSON response.
pub const JSON: &str = "application/json; charset=utf-8";

/// A response before it is turned into HTTP: what idempotency stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: HeaderValue,
    /// Body.
    pub body: Vec<u8>,
    /// `Retry-After`, for errors that have one.
    pub retry_after: Option<u64>,
    /// Other headers (e.g. `WWW-Authenticate`); never stored.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The work already stored this reply as the idempotent response, in
    /// the transaction of its own write (a redemption's spend).
    pub already_stored: bool,
}

impl Reply {
    /// A JSON reply.
    pub fn json(status: StatusCode, body: Vec<u8>) -> Self {
        Self::with_type(status, HeaderValue::from_static(JSON), body)
    }

    /// A reply with another content type.
    pub fn with_type(status: StatusCode, content_type: HeaderValue, body: Vec<u8>) -> Self {
        Self { status, content_type, body, retry_after: None, headers: Vec::new(), already_stored: false }
    }

    /// Whether idempotency may keep this reply. Replies a retry must not get
    /// back are not kept: 401 (fix the credentials), 403 (e.g. a claim
    /// result still pending), 409, 429 and 5xx (transient).
    pub fn storable(&self) -> bool {
        !(self.status.is_server_error()
            || matches!(
                self.status,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::CONFLICT | StatusCode::TOO_MANY_REQUESTS
            ))
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Self {
        let mut reply = Self::json(e.status, e.body());
        reply.retry_after = e.retry_after;
        reply
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, self.content_type);
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

/// The optional Persona request headers, validated.
#[derive(Debug, Clone, Default)]
pub struct PersonaHeaders {
    /// Response key style.
    pub inflection: Inflection,
    /// A valid `Persona-Version`, echoed in the response.
    pub version: Option<HeaderValue>,
    /// The `Idempotency-Key`, if any.
    pub idempotency_key: Option<String>,
}

impl PersonaHeaders {
    /// Validates `Key-Inflection`, `Persona-Version` and `Idempotency-Key`.
    pub fn parse(headers: &HeaderMap) -> Result<Self, ApiError> {
        let text = |name: &str| -> Result<Option<&str>, ApiError> {
            headers
                .get(name)
                .map(|v| v.to_str().map_err(|_| ApiError::bad_request(format!("{name} must be ASCII text."))))
                .transpose()
        };
        let inflection = match text("key-inflection")? {
            None => Inflection::default(),
            Some(v) => Inflection::parse(v).ok_or_else(|| {
                ApiError::bad_request(format!("Key-Inflection must be one of camel, kebab, snake; got {v:?}."))
            })?,
        };
        let version = match text("persona-version")? {
            None => None,
            Some(v) if PERSONA_VERSIONS.contains(&v.trim()) => HeaderValue::from_str(v.trim()).ok(),
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "Persona-Version {v:?} is not a supported version ({}).",
                    PERSONA_VERSIONS.join(", ")
                )));
            }
        };
        let idempotency_key = match text("idempotency-key")? {
            None => None,
            Some(k) if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_LEN => {
                return Err(ApiError::bad_request(format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters."
                )));
            }
            Some(k) => Some(k.to_owned()),
        };
        Ok(Self { inflection, version, idempotency_key })
    }
}

/// The bearer secret of `Authorization: Bearer <key>`.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthenticated("Provide an API key in the Authorization header: Bearer <key>."))?;
    let value = value.to_str().map_err(|_| ApiError::unauthenticated("The API key is invalid."))?;
    let (scheme, secret) = value.split_once(' ').unwrap_or((value, ""));
    let secret = secret.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || secret.is_empty() {
        return Err(ApiError::unauthenticated("Provide an API key in the Authorization header: Bearer <key>."));
    }
    Ok(secret)
}

/// Authentication then rate limiting: the steps that run before anything is
/// stored for idempotency. The outcome's rate-limit status goes on every
/// response, errors included. Failed authentications count against the
/// client's address; past that limit the answer is 429, not 401.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    client: &Client,
) -> Result<(Authenticated, Option<RateLimitStatus>), ApiError> {
    let authenticated = async { state.service.authenticate(bearer(headers)?).await.map_err(ApiError::from) }.await;
    let auth = match authenticated {
        Ok(auth) => auth,
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            let failures = state.service.rate_limit_auth_failure(&client.0).await?;
            return Err(match failures {
                Some(r) if !r.allowed => {
                    tracing::warn!(client = %client.0, "too many failed authentications");
                    ApiError::rate_limited(r.limit, r.reset_secs.max(1) as u64)
                }
                _ => e,
            });
        }
        Err(e) => return Err(e),
    };
    let rate = state.service.rate_limit(auth.key.environment).await?;
    Ok((auth, rate))
}

/// The shape every API-key endpoint shares: authenticate and count the
/// request (neither is ever stored for idempotency), then the rate limit,
/// the permission and the Persona headers, then `work`; the response gets
/// the environment's headers whatever happened.
pub async fn with_api_key(
    state: &AppState,
    headers: &HeaderMap,
    client: &Client,
    permission: blindpass_service::Permission,
    work: impl AsyncFnOnce(&Authenticated, PersonaHeaders) -> Result<Reply, ApiError>,
) -> Response {
    let (auth, rate) = match authenticate(state, headers, client).await {
        Ok(ok) => ok,
        Err(e) => return e.into_response(),
    };
    let persona = PersonaHeaders::parse(headers);
    let version = persona.as_ref().ok().and_then(|p| p.version.clone());
    let outcome = async {
        enforce_rate_limit(rate)?;
        if !auth.can(permission) {
            return Err(ApiError::forbidden(format!("The API key does not have the {permission} permission.")));
        }
        work(&auth, persona?).await
    }
    .await;
    let mut response = outcome.unwrap_or_else(Reply::from).into_response();
    decorate(&mut response, state, Some(auth.key.environment), rate, version.as_ref());
    response
}

/// Refuses a request over its rate limit.
pub fn enforce_rate_limit(rate: Option<RateLimitStatus>) -> Result<(), ApiError> {
    match rate {
        Some(r) if !r.allowed => Err(ApiError::rate_limited(r.limit, r.reset_secs.max(1) as u64)),
        _ => Ok(()),
    }
}

/// Reads a JSON body: the content type must be JSON (415 otherwise) and the
/// body at most `limit` bytes (413 otherwise).
pub async fn read_json_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    require_content_type(headers, "application/json")?;
    read_body(headers, body, limit).await
}

/// 415 unless the request's media type is `expected`.
pub fn require_content_type(headers: &HeaderMap, expected: &str) -> Result<(), ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case(expected) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "Unsupported Media Type",
        format!("Send the request body as {expected}."),
    ))
}

/// Reads a body of at most `limit` bytes (413 otherwise).
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Payload Too Large",
            format!("The request body must be at most {limit} bytes."),
        )
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|_| too_large())
}

/// Parses a JSON object whose keys may be in any casing, normalised to
/// kebab-case. Keys outside `allowed` and duplicates after normalisation
/// are 400s.
pub fn parse_fields(bytes: &[u8], allowed: &[&str]) -> Result<HashMap<String, Value>, ApiError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|_| ApiError::bad_request("The body is not valid JSON."))?;
    let Value::Object(map) = value else {
        return Err(ApiError::bad_request("The body must be a JSON object."));
    };
    let mut out = HashMap::with_capacity(map.len());
    for (key, value) in map {
        let kebab = to_kebab(&key);
        if !allowed.contains(&kebab.as_str()) {
            return Err(ApiError::bad_request(format!("Unknown parameter {key:?}.")));
        }
        if out.insert(kebab, value).is_some() {
            return Err(ApiError::bad_request(format!("Parameter {key:?} is given more than once.")));
        }
    }
    Ok(out)
}

/// A required string field.
pub fn required_str<'a>(fields: &'a HashMap<String, Value>, name: &str) -> Result<&'a str, ApiError> {
    match fields.get(name) {
        None | Some(Value::Null) => Err(ApiError::bad_request(format!("Missing required parameter {name:?}."))),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::bad_request(format!("Parameter {name:?} must be a string."))),
    }
}

/// SHA-256 over method, path and body: "the same parameters".
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    h.update(path.as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().into()
}

/// Runs `work` under an `Idempotency-Key` (if given) in `scope`: the first
/// reply (errors included, except those [`Reply::storable`] refuses) is stored and
/// replayed byte for byte with its media type; other parameters give 400
/// `Idempotency error`; a concurrent duplicate gives 409.
///
/// If this future is dropped while `work` runs (the client hung up, or the
/// request timed out), the claim is released at once so that a retry can
/// run; a claim whose process died is taken over after the request timeout.
pub async fn idempotent<F>(state: &AppState, key: Option<&str>, scope: &str, fingerprint: [u8; 32], work: F) -> Reply
where
    F: std::future::Future<Output = Result<Reply, ApiError>>,
{
    let Some(key) = key else {
        return work.await.unwrap_or_else(Reply::from);
    };
    match state.service.idempotency_begin(scope, key, &fingerprint, IDEMPOTENCY_TTL_SECS).await {
        Err(e) => Reply::from(ApiError::from(e)),
        Ok(IdempotencyOutcome::Replay(stored)) => {
            let content_type = HeaderValue::from_str(&stored.content_type).unwrap_or(HeaderValue::from_static(JSON));
            let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Reply::with_type(status, content_type, stored.body)
        }
        Ok(IdempotencyOutcome::Mismatch) => Reply::from(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Idempotency error",
            format!(
                "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
            ),
        )),
        Ok(IdempotencyOutcome::InFlight) => {
            let mut e = ApiError::conflict(
                "A request with this Idempotency-Key is still being processed. Retry after it completes.",
            );
            e.retry_after = Some(1);
            Reply::from(e)
        }
        Ok(IdempotencyOutcome::Run) => {
            let mut claim = ClaimGuard { state: Some(state.clone()), scope: scope.to_owned(), key: key.to_owned() };
            let reply = work.await.unwrap_or_else(Reply::from);
            claim.state = None;
            let stored = if reply.already_stored {
                Ok(())
            } else if reply.storable() {
                let content_type = reply.content_type.to_str().unwrap_or(JSON);
                state.service.idempotency_complete(scope, key, reply.status.as_u16(), content_type, &reply.body).await
            } else {
                state.service.idempotency_abandon(scope, key).await
            };
            match stored {
                Ok(()) => reply,
                Err(e) => Reply::from(ApiError::from(e)),
            }
        }
    }
}

/// Releases an idempotency claim whose work was cancelled.
struct ClaimGuard {
    state: Option<AppState>,
    scope: String,
    key: String,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let Some(state) = self.state.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (scope, key) = (std::mem::take(&mut self.scope), std::mem::take(&mut self.key));
        runtime.spawn(async move {
            if let Err(e) = state.service.idempotency_abandon(&scope, &key).await {
                tracing::warn!(error = %e, "could not release an abandoned idempotency claim");
            }
        });
    }
}

/// `RateLimit-Limit`, `-Remaining` and `-Reset` for `rate`, if counted.
pub fn rate_limit_headers(headers: &mut HeaderMap, rate: Option<RateLimitStatus>) {
    if let Some(r) = rate {
        headers.insert(HeaderName::from_static("ratelimit-limit"), HeaderValue::from(r.limit));
        headers.insert(HeaderName::from_static("ratelimit-remaining"), HeaderValue::from(r.remaining));
        headers.insert(HeaderName::from_static("ratelimit-reset"), HeaderValue::from(r.reset_secs.max(0)));
    }
}

/// Adds the headers every response of an endpoint that knows its
/// environment carries.
pub fn decorate(
    response: &mut Response,
    state: &AppState,
    environment: Option<Environment>,
    rate: Option<RateLimitStatus>,
    version: Option<&HeaderValue>,
) {
    let headers = response.headers_mut();
    rate_limit_headers(headers, rate);
    if let Some(env) = environment {
        if let Ok(v) = HeaderValue::from_str(state.ids.environment(env)) {
            headers.insert(HeaderName::from_static("persona-environment-id"), v);
        }
        if let Ok(v) = HeaderValue::from_str(&state.ids.organization) {
            headers.insert(HeaderName::from_static("persona-organization-id"), v);
        }
    }
    if let Some(v) = version {
        headers.insert(HeaderName::from_static("persona-version"), v.clone());
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}
