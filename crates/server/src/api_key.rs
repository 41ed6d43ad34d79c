//! Bearer API keys: the `require_api_key` layer authenticates, checks the
//! route's permission and counts the request against its key and environment, all
//! before anything is stored for idempotency (so 401, 403 and 429 are never
//! replayed); handlers take the result with the [`ApiKey`] extractor. Over
//! mTLS, a client certificate that names a configured attester
//! ([`crate::tls::Attester`]) authenticates a request that sends no
//! `Authorization` header.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use blindpass_service::{Authenticated, Permission};

use std::sync::Arc;

use crate::AppState;
use crate::client_addr::Client;
use crate::envelope::Envelope;
use crate::error::ApiError;
use crate::idempotency::IdempotencyScope;
use crate::tls::Attester;

/// The authenticated API key of a request that passed `require_api_key`.
#[derive(Debug, Clone)]
pub struct ApiKey(pub Authenticated);

impl<S: Send + Sync> FromRequestParts<S> for ApiKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let auth = parts.extensions.get::<Authenticated>().cloned();
        auth.map(ApiKey).ok_or_else(|| ApiError::internal(&"a route takes ApiKey without require_api_key"))
    }
}

/// The layer of every API-key route: authenticate, count, check
/// `permission`, then the rest of the stack with the key in the request.
pub(crate) async fn require_api_key(
    State(state): State<AppState>,
    permission: Permission,
    client: Client,
    envelope: Envelope,
    mut request: Request,
    next: Next,
) -> Response {
    let attester = request.extensions().get::<Arc<Attester>>().cloned();
    match admit(&state, permission, &client, &envelope, request.headers(), attester.as_deref()).await {
        Ok(auth) => {
            let scope = IdempotencyScope { scope: format!("api_key:{}", auth.key.id), extra: Vec::new() };
            request.extensions_mut().insert(scope);
            request.extensions_mut().insert(auth);
            next.run(request).await
        }
        Err(e) => {
            // Read (and drop) what the client is still sending, within the
            // body limit and a second: answering before the body is read makes
            // HTTP/2 reset the stream, and clients such as curl then report a
            // transport error instead of the 401/403/429.
            let limit = state.limits.max_body_bytes;
            let drain = axum::body::to_bytes(request.into_body(), limit);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
            e.into_response()
        }
    }
}

async fn admit(
    state: &AppState,
    permission: Permission,
    client: &Client,
    envelope: &Envelope,
    headers: &HeaderMap,
    attester: Option<&Attester>,
) -> Result<Authenticated, ApiError> {
    let auth = match attester {
        // A verified client certificate stands in for an API key; an
        // Authorization header, when sent, still wins.
        Some(attester) if !headers.contains_key(header::AUTHORIZATION) => attested(attester),
        _ => authenticate(state, headers, client).await?,
    };
    envelope.environment(auth.key.environment);
    // A refusal by permission is not charged to anyone's window.
    if !auth.can(permission) {
        return Err(ApiError::forbidden(format!("The API key does not have the {permission} permission.")));
    }
    envelope.admit(state.service.rate_limit_key(&auth.key).await?)?;
    Ok(auth)
}

/// An attester (mTLS) as the key record the rest of the stack reads: its
/// environment, its permissions, idempotency scoped to it, rate limits of
/// its environment.
fn attested(attester: &Attester) -> Authenticated {
    Authenticated {
        key: blindpass_service::ApiKey {
            id: format!("attester:{}", attester.name),
            name: Some(attester.name.clone()),
            environment: attester.environment,
            permissions: attester.permissions.clone(),
            lookup: String::new(),
            secret_hash: [0; 32],
            created_at: 0,
            revoked_at: None,
            rate_limit_per_minute: None,
        },
    }
}

/// Checks the bearer secret. Failed authentications count against the
/// client's address; past that limit the answer is 429, not 401.
async fn authenticate(state: &AppState, headers: &HeaderMap, client: &Client) -> Result<Authenticated, ApiError> {
    let e = match bearer(headers) {
        Ok(secret) => match state.service.authenticate(secret).await {
            Ok(auth) => return Ok(auth),
            Err(e) => ApiError::from(e),
        },
        Err(e) => e,
    };
    if e.status != StatusCode::UNAUTHORIZED {
        return Err(e);
    }
    match state.service.rate_limit_auth_failure(&client.0).await? {
        Some(r) if !r.allowed => {
            tracing::warn!(client = %client.0, "too many failed authentications");
            Err(ApiError::rate_limited(r.limit, r.reset_secs.max(1) as u64))
        }
        _ => Err(e),
    }
}

/// The bearer secret of `Authorization: Bearer <key>`.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = || ApiError::unauthenticated("Provide an API key in the Authorization header: Bearer <key>.");
    let value = headers.get(header::AUTHORIZATION).ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| ApiError::unauthenticated("The API key is invalid."))?;
    let (scheme, secret) = value.split_once(' ').unwrap_or((value, ""));
    let secret = secret.trim();
    match scheme.eq_ignore_ascii_case("bearer") && !secret.is_empty() {
        true => Ok(secret),
        false => Err(missing()),
    }
}
