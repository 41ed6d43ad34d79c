//! Bearer API keys: the `require_api_key` layer authenticates, checks the
//! route's permission and counts the request against its key and environment, all
//! before anything is stored for idempotency (so 401, 403 and 429 are never
//! replayed); handlers take the result with the [`Caller`] extractor. Over
//! mTLS, a client certificate that names a configured attester
//! ([`crate::tls::Attester`]) authenticates a request that sends no
//! `Authorization` header. Either is a `Credential`, read once; the layer
//! turns it into the request's [`Principal`].

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use blindpass_service::{Permission, Principal};

use std::sync::Arc;

use crate::AppState;
use crate::client_addr::ClientAddr;
use crate::envelope::Envelope;
use crate::error::{ApiError, NoApiKey};
use crate::idempotency::IdempotencyScope;
use crate::tls::Attester;

/// Who is calling a route that passed `require_api_key`: an API key or an
/// attester, as a [`Principal`].
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let principal = parts.extensions.get::<Principal>().cloned();
        principal.map(Caller).ok_or_else(|| ApiError::bug("a route takes Caller without require_api_key"))
    }
}

/// The layer of every API-key route: authenticate, count, check
/// `permission`, then the rest of the stack with the key in the request.
pub(crate) async fn require_api_key(
    State(state): State<AppState>,
    permission: Permission,
    client: ClientAddr,
    envelope: Envelope,
    mut request: Request,
    next: Next,
) -> Response {
    let attester = request.extensions().get::<Arc<Attester>>().cloned();
    match admit(&state, permission, &client, &envelope, request.headers(), attester.as_deref()).await {
        Ok(principal) => {
            let scope = IdempotencyScope { scope: principal.idempotency_scope(), extra: Vec::new() };
            request.extensions_mut().insert(scope);
            request.extensions_mut().insert(principal);
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
    client: &ClientAddr,
    envelope: &Envelope,
    headers: &HeaderMap,
    attester: Option<&Attester>,
) -> Result<Principal, ApiError> {
    let principal = principal(state, credential(headers, attester), client).await?;
    envelope.environment(principal.environment);
    // A refusal by permission is not charged to anyone's window.
    if !principal.can(permission) {
        return Err(ApiError::MissingPermission(permission));
    }
    envelope.admit(state.service.rate_limit_key(&principal).await?)?;
    Ok(principal)
}

/// What a request presents to say who it is, read once.
#[derive(Debug, Clone, Copy)]
enum Credential<'a> {
    /// The secret of `Authorization: Bearer <key>`.
    Bearer(&'a str),
    /// A verified client certificate naming a configured attester.
    Attester(&'a Attester),
}

/// The request's credential: a verified client certificate stands in for
/// an API key; an `Authorization` header, when sent, still wins.
fn credential<'a>(headers: &'a HeaderMap, attester: Option<&'a Attester>) -> Result<Credential<'a>, ApiError> {
    match attester {
        Some(attester) if !headers.contains_key(header::AUTHORIZATION) => Ok(Credential::Attester(attester)),
        _ => bearer(headers).map(Credential::Bearer),
    }
}

/// Who presented `credential`. Failed authentications count against the
/// client's address; past that limit the answer is 429, not 401.
async fn principal(
    state: &AppState,
    credential: Result<Credential<'_>, ApiError>,
    client: &ClientAddr,
) -> Result<Principal, ApiError> {
    let e = match credential {
        Ok(Credential::Attester(attester)) => {
            return Ok(Principal::attester(&attester.name, attester.environment, attester.permissions.clone()));
        }
        Ok(Credential::Bearer(secret)) => match state.service.authenticate(secret).await {
            Ok(auth) => return Ok(auth.into()),
            Err(e) => ApiError::from(e),
        },
        Err(e) => e,
    };
    if e.status() != StatusCode::UNAUTHORIZED {
        return Err(e);
    }
    match state.service.rate_limit_auth_failure(&client.0).await? {
        Some(r) if !r.allowed => {
            tracing::warn!(client = %client.0, "too many failed authentications");
            Err(ApiError::RateLimited { limit: r.limit, retry_after: r.reset_secs.max(1) as u64 })
        }
        _ => Err(e),
    }
}

/// The bearer secret of `Authorization: Bearer <key>`.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = || ApiError::Unauthenticated(NoApiKey::Missing);
    let value = headers.get(header::AUTHORIZATION).ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| ApiError::Unauthenticated(NoApiKey::Invalid))?;
    let (scheme, secret) = value.split_once(' ').unwrap_or((value, ""));
    let secret = secret.trim();
    match scheme.eq_ignore_ascii_case("bearer") && !secret.is_empty() {
        true => Ok(secret),
        false => Err(missing()),
    }
}
