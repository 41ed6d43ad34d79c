//! The RFC 9578 dialect: the issuer directory and `/token-request`.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use blindpass_protocol::directory::WELL_KNOWN_PATH;
use blindpass_protocol::wire::{
    MEDIA_TYPE_DIRECTORY, MEDIA_TYPE_TOKEN_REQUEST, MEDIA_TYPE_TOKEN_RESPONSE, TokenRequest, WireError,
};
use blindpass_service::{Environment, IssueError, Permission};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::client_addr::Client;
use crate::conventions::{
    Reply, enforce_rate_limit, fingerprint, idempotent, rate_limit_headers, read_body, require_content_type,
    with_api_key,
};
use crate::error::ApiError;

/// Path of the issuance endpoint named in the directory.
pub(crate) const TOKEN_REQUEST_PATH: &str = "/token-request";

/// `GET /.well-known/private-token-issuer-directory`: the keys of both
/// environments; `?sandbox=true` (or `false`) for one environment's.
pub(crate) async fn directory(
    State(state): State<AppState>,
    client: Client,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let rate = match state.service.rate_limit_anonymous(&client.0, None).await {
        Ok(rate) => rate,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut response = directory_response(&state, query.as_deref(), &headers, rate).await;
    rate_limit_headers(response.headers_mut(), rate);
    response
}

async fn directory_response(
    state: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
    rate: Option<blindpass_service::RateLimitStatus>,
) -> Response {
    if let Err(e) = enforce_rate_limit(rate) {
        return e.into_response();
    }
    // A standard RFC client knows only the challenge's issuer name, shared
    // by both environments, and fetches the bare well-known path: it lists
    // every environment's keys (production first), so the challenge's
    // token-key is found whichever environment issued it. Issuance picks the
    // environment from the API key. `?sandbox=true|false` narrows to one.
    let environments: &[Environment] = match sandbox_flag(query) {
        Ok(None) => &[Environment::Production, Environment::Sandbox],
        Ok(Some(true)) => &[Environment::Sandbox],
        Ok(Some(false)) => &[Environment::Production],
        Err(e) => return e.into_response(),
    };
    let directory = match state.service.directory(environments, TOKEN_REQUEST_PATH).await {
        Ok(d) => d,
        // The store is unavailable: 503 + Retry-After, never 500.
        Err(blindpass_service::KeyError::Store(e)) => return ApiError::from(e).into_response(),
        Err(e) => return ApiError::internal(&e).into_response(),
    };
    let body = directory.to_json();
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&body))[..32]);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = (StatusCode::OK, body).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE_DIRECTORY));
        r
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    response
}

/// `POST /token-request`: RFC 9578 §6 issuance with a Bearer API key.
pub(crate) async fn token_request(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    body: Body,
) -> Response {
    with_api_key(&state, &headers, &client, Permission::PrivacyPassWrite, async |auth, persona| {
        require_content_type(&headers, MEDIA_TYPE_TOKEN_REQUEST)?;
        let bytes = read_body(&headers, body, state.limits.max_body_bytes).await?;
        let scope = format!("api_key:{}", auth.key.id);
        let work = async {
            // RFC 9578 §6.2: bad type, unknown truncated id, wrong size → 422.
            let request = TokenRequest::decode(&bytes).map_err(|e| match e {
                WireError::UnsupportedTokenType(t) => {
                    ApiError::unprocessable(format!("Unsupported token type {t:#06x}."))
                }
                _ => ApiError::unprocessable("A TokenRequest for token type 2 is exactly 259 bytes."),
            })?;
            let response =
                state.service.issue_token_request(auth.key.environment, &request).await.map_err(|e| match e {
                    IssueError::UnknownKey => ApiError::unprocessable("No issuing key matches truncated_token_key_id."),
                    other => ApiError::from(other),
                })?;
            Ok(Reply::with_type(StatusCode::OK, HeaderValue::from_static(MEDIA_TYPE_TOKEN_RESPONSE), response.encode()))
        };
        let print = fingerprint("POST", TOKEN_REQUEST_PATH, &bytes);
        Ok(idempotent(&state, persona.idempotency_key.as_deref(), &scope, print, work).await)
    })
    .await
}

/// The well-known path, for the router.
pub(crate) const DIRECTORY_PATH: &str = WELL_KNOWN_PATH;

/// `sandbox=true|false`, or absent (`None`); anything else is a 400.
fn sandbox_flag(query: Option<&str>) -> Result<Option<bool>, ApiError> {
    let mut sandbox = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("sandbox", "true" | "1") => sandbox = Some(true),
            ("sandbox", "false" | "0") => sandbox = Some(false),
            ("sandbox", _) => return Err(ApiError::bad_request("sandbox must be true or false.")),
            _ => return Err(ApiError::bad_request("The only query parameter is sandbox.")),
        }
    }
    Ok(sandbox)
}
