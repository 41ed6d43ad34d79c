//! `Idempotency-Key`, as a layer: the first reply to a key (errors
//! included, except those `storable` refuses) is stored for 24 h and
//! replayed byte for byte with its media type; the same key with other
//! parameters is a 400 `Idempotency error`; a duplicate still in flight is a
//! 409 with `Retry-After`. Records are scoped by what the layers before this
//! one put in the request's [`IdempotencyScope`] (the API key, or the relay).
//!
//! If this layer's future is dropped while the request runs (the client hung
//! up, the request timed out), the claim is released at once so a retry can
//! run; a claim whose process died is taken over after the request timeout.
//! Work that must finish whatever the client does runs under
//! `redeem::run_to_completion` outside this layer.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::response::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use blindpass_store::{IdempotencyBegin, StoreError, StoredResponse};
use sha2::{Digest, Sha256};

use crate::envelope::PersonaHeaders;
use crate::error::ApiError;
use crate::json::read_once;
use crate::{AppState, JSON};

/// How long an idempotent response is kept.
pub const IDEMPOTENCY_TTL_SECS: i64 = 24 * 3600;

/// Where a request's idempotency records live, and anything beyond method,
/// path and body that makes its parameters (generate-claim's token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyScope {
    /// `api_key:<id>` or `relay:<token>`.
    pub scope: String,
    /// Bytes hashed after the body.
    pub extra: Vec<u8>,
}

/// The claim a running request holds, for work that completes it in its own
/// transaction (a redemption stores its answer with the spend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    /// The record's scope.
    pub scope: String,
    /// The `Idempotency-Key`.
    pub key: String,
}

/// Marks a response that its work already stored as the claim's answer.
#[derive(Debug, Clone, Copy)]
pub struct AlreadyStored;

/// The layer. Needs an [`IdempotencyScope`] from an earlier layer; a request
/// without an `Idempotency-Key` passes straight through.
pub(crate) async fn idempotent(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let persona = match PersonaHeaders::parse(&parts.headers) {
        Ok(persona) => persona,
        Err(e) => return e.into_response(),
    };
    let key = persona.idempotency_key.clone();
    parts.extensions.insert(persona);
    let request = Request::from_parts(parts, body);
    match key {
        None => next.run(request).await,
        Some(key) => claimed(&state, key, request, next).await.unwrap_or_else(IntoResponse::into_response),
    }
}

/// A request under its `Idempotency-Key`: replayed, refused, or run.
async fn claimed(state: &AppState, key: String, request: Request, next: Next) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let scope = parts.extensions.get::<IdempotencyScope>().cloned();
    let scope = scope.ok_or_else(|| ApiError::bug("idempotency layer without a scope"))?;
    let bytes = read_once(&mut parts, body, state.limits.max_body_bytes).await?;
    let media_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let print = fingerprint(parts.method.as_str(), parts.uri.path(), media_type, &bytes, &scope.extra);
    let claim = IdempotencyClaim { scope: scope.scope, key };
    match begin_detached(state, &claim, print).await? {
        IdempotencyBegin::Completed(stored) => Ok(replay(stored)),
        IdempotencyBegin::Mismatch => Err(ApiError::IdempotencyMismatch { key: claim.key }),
        IdempotencyBegin::InFlight => Err(ApiError::IdempotencyInFlight),
        IdempotencyBegin::Started => {
            parts.extensions.insert(claim.clone());
            Ok(run(state, claim, Request::from_parts(parts, Body::empty()), next).await)
        }
    }
}

/// [`begin`] in a task of its own, so that a client leaving while the store
/// is busy cannot leave a claim behind: if the claim is made after its
/// request is gone, the task releases it at once (instead of a 409 for the
/// request timeout).
async fn begin_detached(
    state: &AppState,
    claim: &IdempotencyClaim,
    print: [u8; 32],
) -> Result<IdempotencyBegin, StoreError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (state, claim) = (state.clone(), claim.clone());
    tokio::spawn(async move {
        let result = begin(&state, &claim, &print).await;
        if let Err(Ok(IdempotencyBegin::Started)) = tx.send(result) {
            tracing::debug!("idempotency claim made after its request left: released");
            if let Err(e) = state.service.store().idempotency_abandon(&claim.scope, &claim.key).await {
                tracing::warn!(error = %e, "could not release an abandoned idempotency claim");
            }
        }
    });
    rx.await.unwrap_or_else(|_| Err(StoreError::Other("the idempotency claim task ended without an answer".into())))
}

/// Claims `(scope, key)` for parameters `print` at the service's `now`. A
/// claim older than the request timeout whose request never finished (its
/// process died) is taken over.
async fn begin(state: &AppState, claim: &IdempotencyClaim, print: &[u8; 32]) -> Result<IdempotencyBegin, StoreError> {
    let (service, store) = (&state.service, state.service.store());
    let stale_secs = service.config().idempotency_stale_secs;
    store.idempotency_begin(&claim.scope, &claim.key, print, service.now(), IDEMPOTENCY_TTL_SECS, stale_secs).await
}

/// Runs the claimed request and stores (or releases) its reply.
async fn run(state: &AppState, claim: IdempotencyClaim, request: Request, next: Next) -> Response {
    let mut guard = ClaimGuard { state: Some(state.clone()), claim: claim.clone() };
    let (parts, body) = next.run(request).await.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await;
    guard.state = None;
    let bytes = match bytes {
        Ok(bytes) => bytes,
        Err(e) => return release(state, &claim, ApiError::internal(e).into_response()).await,
    };
    let outcome = match parts.extensions.get::<AlreadyStored>() {
        Some(AlreadyStored) => Ok(()),
        None if storable(parts.status) => complete(state, &claim, &parts, &bytes).await,
        None => state.service.store().idempotency_abandon(&claim.scope, &claim.key).await,
    };
    let response = Response::from_parts(parts, Body::from(bytes));
    outcome.map_or_else(|e| ApiError::from(e).into_response(), |()| response)
}

/// Stores a reply as the claim's answer.
async fn complete(state: &AppState, claim: &IdempotencyClaim, parts: &Parts, body: &[u8]) -> Result<(), StoreError> {
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or(JSON);
    let stored =
        StoredResponse { status: parts.status.as_u16(), content_type: content_type.to_owned(), body: body.to_vec() };
    state.service.store().idempotency_complete(&claim.scope, &claim.key, &stored).await
}

async fn release(state: &AppState, claim: &IdempotencyClaim, response: Response) -> Response {
    match state.service.store().idempotency_abandon(&claim.scope, &claim.key).await {
        Ok(()) => response,
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Whether a reply may be kept. Not kept, so that a retry can succeed: 401
/// (fix the credentials), 403 (e.g. a claim result still pending), 409, 413
/// and 415 (transport, not parameters), 429 and 5xx (transient).
pub(crate) fn storable(status: StatusCode) -> bool {
    !(status.is_server_error()
        || matches!(
            status,
            StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::CONFLICT
                | StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::UNSUPPORTED_MEDIA_TYPE
                | StatusCode::TOO_MANY_REQUESTS
        ))
}

/// SHA-256 over method, path, media type (its essence, lowercased: one URI
/// takes several request formats, and a reply to one must never be
/// replayed to another), body and `extra`: "the same parameters".
pub fn fingerprint(method: &str, path: &str, media_type: &str, body: &[u8], extra: &[u8]) -> [u8; 32] {
    let essence = media_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let mut h = Sha256::new();
    for part in [method.as_bytes(), &[0], path.as_bytes(), &[0], essence.as_bytes(), &[0], body, extra] {
        h.update(part);
    }
    h.finalize().into()
}

/// A stored reply, as it was first sent. A stored status or media type this
/// server could not have written (a damaged record) is a 500, not a guess.
fn replay(stored: StoredResponse) -> Response {
    match (StatusCode::from_u16(stored.status), HeaderValue::from_str(&stored.content_type)) {
        (Ok(status), Ok(media)) => (status, [(header::CONTENT_TYPE, media)], stored.body).into_response(),
        _ => ApiError::bug("a stored idempotent response is damaged").into_response(),
    }
}

/// Releases an idempotency claim whose work was cancelled.
struct ClaimGuard {
    state: Option<AppState>,
    claim: IdempotencyClaim,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let Some(state) = self.state.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let claim = self.claim.clone();
        runtime.spawn(async move {
            if let Err(e) = state.service.store().idempotency_abandon(&claim.scope, &claim.key).await {
                tracing::warn!(error = %e, "could not release an abandoned idempotency claim");
            }
        });
    }
}
