//! The RFC 9578 dialect: the issuer directory and `/token-request`.

use axum::body::Bytes;
use axum::extract::{FromRequest, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use blindpass_protocol::batch::{Framing, MEDIA_TYPE_ARBITRARY_BATCH_REQUEST, MEDIA_TYPE_GENERIC_BATCH_REQUEST};
use blindpass_protocol::directory::WELL_KNOWN_PATH;
use blindpass_protocol::type2::wire::TokenRequest;
use blindpass_protocol::voprf::Suite;
use blindpass_protocol::voprf::wire::{MEDIA_TYPE_AMORTIZED_BATCH_REQUEST, VoprfTokenRequest};
use blindpass_protocol::wire::{
    MEDIA_TYPE_DIRECTORY, MEDIA_TYPE_TOKEN_REQUEST, MEDIA_TYPE_TOKEN_RESPONSE, TOKEN_TYPE_BLIND_RSA, WireError,
};
use blindpass_service::{Environment, IssueRequest, KeySelector, RateLimitStatus};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::api_key::Caller;
use crate::client_addr::ClientAddr;
use crate::envelope::{Envelope, rate_limit_headers};
use crate::error::{ApiError, BadRequest, Unprocessable};
use crate::json::{read_once, require_content_type};

/// Path of the issuance endpoint named in the directory.
pub(crate) const TOKEN_REQUEST_PATH: &str = "/token-request";

/// `GET /.well-known/private-token-issuer-directory`: the keys of both
/// environments; `?sandbox=true` (or `false`) for one environment's.
pub(crate) async fn directory(
    State(state): State<AppState>,
    client: ClientAddr,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let rate = match state.service.rate_limit_anonymous(&client.0, None).await {
        Ok(rate) => rate,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let response = directory_response(&state, query.as_deref(), &headers, rate).await;
    let mut response = response.unwrap_or_else(IntoResponse::into_response);
    rate_limit_headers(response.headers_mut(), rate);
    response
}

async fn directory_response(
    state: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
    rate: Option<RateLimitStatus>,
) -> Result<Response, ApiError> {
    if let Some(r) = rate.filter(|r| !r.allowed) {
        return Err(ApiError::RateLimited { limit: r.limit, retry_after: r.reset_secs.max(1) as u64 });
    }
    let directory = state.service.directory(environments(query)?, TOKEN_REQUEST_PATH).await.map_err(|e| match e {
        // The store is unavailable: 503 + Retry-After, never 500.
        blindpass_service::KeyError::Store(e) => ApiError::from(e),
        e => ApiError::internal(e),
    })?;
    Ok(cacheable(headers, directory.to_json(), directory_max_age(state)))
}

/// A standard RFC client knows only the challenge's issuer name, shared by
/// both environments, and fetches the bare well-known path: it lists every
/// environment's keys (production first), so the challenge's token-key is
/// found whichever environment issued it. Issuance picks the environment
/// from the API key. `?sandbox=true|false` narrows to one.
fn environments(query: Option<&str>) -> Result<&'static [Environment], ApiError> {
    Ok(match sandbox_flag(query)? {
        None => &[Environment::Production, Environment::Sandbox],
        Some(true) => &[Environment::Sandbox],
        Some(false) => &[Environment::Production],
    })
}

/// The directory's `max-age`: the configured one, less a random jitter of
/// up to `directory_max_age_jitter_secs` (so clients' refreshes spread out;
/// the body and its ETag are the same on every node).
fn directory_max_age(state: &AppState) -> i64 {
    let config = state.service.config();
    let jitter = config.directory_max_age_jitter_secs.clamp(0, config.directory_max_age_secs);
    let draw = u64::from_le_bytes(state.service.entropy().bytes::<8>());
    let off = if jitter > 0 { (draw % (jitter as u64 + 1)) as i64 } else { 0 };
    config.directory_max_age_secs - off
}

/// The directory with its `ETag` and `Cache-Control`, or 304 when the
/// client's `If-None-Match` already has it.
fn cacheable(headers: &HeaderMap, body: Vec<u8>, max_age: i64) -> Response {
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&body))[..32]);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = match matches {
        true => StatusCode::NOT_MODIFIED.into_response(),
        false => (StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE_DIRECTORY))], body)
            .into_response(),
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        h.insert(header::CACHE_CONTROL, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    response
}

/// `POST /token-request`: RFC 9578 issuance with a Bearer API key, by media
/// type ([`IssuanceBody`]): a single `TokenRequest` of type 2 (§6), 1 or 5
/// (§5) → [`IssueRequest`] (key by truncated id) → `Service::issue` →
/// `TokenResponse`; a generic batch ([`crate::batch`]); an amortized batch
/// of type 1 or 5 ([`crate::batch::issue_amortized`]).
pub(crate) async fn token_request(
    State(state): State<AppState>,
    Caller(caller): Caller,
    envelope: Envelope,
    body: IssuanceBody,
) -> Result<Response, ApiError> {
    let request = match body {
        IssuanceBody::Single(request) => request,
        IssuanceBody::Generic(framing, bytes) => {
            return crate::batch::issue(&state, &caller, &envelope, framing, &bytes).await;
        }
        IssuanceBody::Amortized(bytes) => {
            return crate::batch::issue_amortized(&state, &caller, &envelope, &bytes).await;
        }
    };
    let blind_sig = state.service.issue(caller.environment, request).await.map_err(ApiError::IssueByTruncatedId)?;
    let content_type = [(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE_TOKEN_RESPONSE))];
    Ok((StatusCode::OK, content_type, blind_sig).into_response())
}

/// A `/token-request` body, told apart by its media type (415 for another)
/// and read once (413 over the limit, 408 late).
pub(crate) enum IssuanceBody {
    /// One `TokenRequest`, decoded (422 if it is not one).
    Single(IssueRequest),
    /// A generic batch in this framing, to decode.
    Generic(Framing, Bytes),
    /// An amortized batch of type 1 or 5, to decode.
    Amortized(Bytes),
}

impl FromRequest<AppState> for IssuanceBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let framing = batch_framing(&parts.headers);
        let amortized = require_content_type(&parts.headers, MEDIA_TYPE_AMORTIZED_BATCH_REQUEST).is_ok();
        if framing.is_none() && !amortized {
            require_content_type(&parts.headers, MEDIA_TYPE_TOKEN_REQUEST).map_err(|_| {
                ApiError::UnsupportedMediaType(format!(
                    "{MEDIA_TYPE_TOKEN_REQUEST}, {MEDIA_TYPE_GENERIC_BATCH_REQUEST}, \
                     {MEDIA_TYPE_AMORTIZED_BATCH_REQUEST} or {MEDIA_TYPE_ARBITRARY_BATCH_REQUEST}"
                ))
            })?;
        }
        let bytes = read_once(&mut parts, body, state.limits.max_body_bytes).await?;
        Ok(match framing {
            Some(framing) => Self::Generic(framing, bytes),
            None if amortized => Self::Amortized(bytes),
            None => Self::Single(issue_request(&bytes)?),
        })
    }
}

/// The batch framing the request's media type names, if it names one.
fn batch_framing(headers: &HeaderMap) -> Option<Framing> {
    let content_type = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Framing::of_request_media_type(content_type.split(';').next()?.trim())
}

/// RFC 9578 §5.2 / §6.2: a bad type, an unknown truncated id or a wrong
/// size is 422.
fn issue_request(bytes: &[u8]) -> Result<IssueRequest, ApiError> {
    let token_type = match bytes {
        [t0, t1, ..] => u16::from_be_bytes([*t0, *t1]),
        _ => 0,
    };
    if let Some(suite) = Suite::of_token_type(token_type) {
        let request = VoprfTokenRequest::decode(bytes).map_err(|_| Unprocessable::TokenRequestLength {
            token_type: suite.token_type(),
            len: 3 + suite.element_len(),
        })?;
        let selector =
            KeySelector::Truncated { token_type: suite.token_type(), truncated: request.truncated_token_key_id };
        return Ok(IssueRequest { selector, blinded: request.blinded_element });
    }
    let request = TokenRequest::decode(bytes).map_err(|e| match e {
        WireError::UnsupportedTokenType(t) => Unprocessable::UnsupportedTokenType(t),
        _ => Unprocessable::BlindRsaTokenRequestLength,
    })?;
    let selector =
        KeySelector::Truncated { token_type: TOKEN_TYPE_BLIND_RSA, truncated: request.truncated_token_key_id };
    Ok(IssueRequest { selector, blinded: request.blinded_msg.to_vec() })
}

/// The well-known path, for the router.
pub(crate) const DIRECTORY_PATH: &str = WELL_KNOWN_PATH;
/// The same directory at the path Apple's and Cloudflare's issuers use.
pub(crate) const DIRECTORY_ALIAS_PATH: &str = "/.well-known/token-issuer-directory";

/// `sandbox=true|false`, or absent (`None`); anything else is a 400.
fn sandbox_flag(query: Option<&str>) -> Result<Option<bool>, ApiError> {
    let mut sandbox = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("sandbox", "true" | "1") => sandbox = Some(true),
            ("sandbox", "false" | "0") => sandbox = Some(false),
            ("sandbox", _) => return Err(BadRequest::SandboxFlag.into()),
            _ => return Err(BadRequest::QueryParameter.into()),
        }
    }
    Ok(sandbox)
}
