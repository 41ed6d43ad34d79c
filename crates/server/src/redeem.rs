//! `POST /api/privacy/v1/relays/{relay-token}/generate-claim`: redemption.
//!
//! ```text
//! admit_relay (client limit → relay and secret → relay limit;
//!              Authorization parsed once → PresentedText)
//!   → run_to_completion (body read once → BufferedBody; the rest runs in a
//!                        task of its own)
//!   → idempotency
//!   → generate_claim: ClaimRequest (body check) → PresentedToken::parse
//!       → Service::check_redemption → Checked (verified, claim made)
//!       → Service::spend (spend + claim + idempotent answer, one transaction)
//!       → Redemption → Claim (rendered by `claim_response`, also for the
//!         stored answer)
//! ```
//!
//! Every call goes down and returns: the service never runs server code.
//!
//! A redemption is one unit: neither the request timeout nor a client
//! hanging up can cut it between its commit and its answer (a client that
//! lost the answer retries and gets the same claim back).

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use blindpass_protocol::api::{Claim, GenerateClaim};
use blindpass_protocol::auth;
use blindpass_service::{
    IdempotencyCompletion, PresentedToken, RedeemError, Redemption, Relay, StoredResponse, TokenRejection,
};

use crate::client_addr::ClientAddr;
use crate::envelope::{Envelope, PersonaHeaders};
use crate::error::ApiError;
use crate::idempotency::{AlreadyStored, IdempotencyClaim, IdempotencyScope};
use crate::inflection::Inflection;
use crate::json::{Inflected, decode, inflected_body, read_once, require_content_type};
use crate::{AppState, JSON};

/// The gates before a redemption: the client's rate limit (before the relay
/// is even looked up), the relay and its secret, then the relay's own limit.
pub(crate) async fn admit_relay(
    State(state): State<AppState>,
    client: ClientAddr,
    envelope: Envelope,
    relay_token: Result<Path<String>, PathRejection>,
    mut request: Request,
    next: Next,
) -> Response {
    match admit(&state, &client, &envelope, relay_token, request.headers()).await {
        Ok(relay) => {
            let presented = PresentedText(presented_token(request.headers()));
            let extra = presented.0.clone().unwrap_or_default().into_bytes();
            request.extensions_mut().insert(IdempotencyScope { scope: format!("relay:{}", relay.token), extra });
            request.extensions_mut().insert(presented);
            request.extensions_mut().insert(relay);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

async fn admit(
    state: &AppState,
    client: &ClientAddr,
    envelope: &Envelope,
    relay_token: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
) -> Result<Relay, ApiError> {
    envelope.admit(state.service.rate_limit_anonymous(&client.0, None).await?)?;
    let Ok(Path(relay_token)) = relay_token else {
        return Err(ApiError::RelayNotFound { with_secret: true });
    };
    let secret = headers.get("persona-relay-secret").and_then(|v| v.to_str().ok()).unwrap_or("");
    let relay = state.service.relay_for(&relay_token, secret).await?;
    envelope.environment(relay.environment);
    envelope.admit(state.service.rate_limit_relay(&relay.token).await?)?;
    Ok(relay)
}

/// The `token` of the request's `Authorization: PrivateToken`, parsed once
/// by [`admit_relay`] (for the idempotency fingerprint and the redemption).
#[derive(Debug, Clone)]
pub(crate) struct PresentedText(Option<String>);

/// Runs the rest of the stack in a task of its own, so that dropping the
/// request (timeout, disconnect) cannot cancel it. The body is read first
/// (once, [`read_once`]), under the request's own timeout.
pub(crate) async fn run_to_completion(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    if let Err(e) = read_once(&mut parts, body, state.limits.max_body_bytes).await {
        return e.into_response();
    }
    let request = Request::from_parts(parts, Body::empty());
    match tokio::spawn(next.run(request)).await {
        Ok(response) => response,
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// A generate-claim request, as the handler takes it: the body (Persona's
/// SDK sends `{}`; an empty body is accepted too) checked, and the token
/// [`admit_relay`] found in `Authorization`.
pub(crate) struct ClaimRequest {
    token: Option<String>,
}

impl FromRequest<AppState> for ClaimRequest {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let bytes = read_once(&mut parts, body, state.limits.max_body_bytes).await?;
        if !bytes.iter().all(u8::is_ascii_whitespace) {
            require_content_type(&parts.headers, "application/json")?;
            decode::<GenerateClaim>(&bytes).map(|GenerateClaim {}| ())?;
        }
        let presented = parts.extensions.get::<PresentedText>().cloned();
        let PresentedText(token) = presented.ok_or_else(|| ApiError::bug("generate-claim without admit_relay"))?;
        Ok(Self { token })
    }
}

/// The redemption itself: check, then spend with the answer a retry under
/// the same `Idempotency-Key` gets (rendered here, as the reply is).
pub(crate) async fn generate_claim(
    State(state): State<AppState>,
    Extension(relay): Extension<Relay>,
    persona: PersonaHeaders,
    claim: Option<Extension<IdempotencyClaim>>,
    request: ClaimRequest,
) -> Response {
    let Some(text) = request.token else {
        return token_required(&state, &relay, None).await;
    };
    let token = match PresentedToken::parse(&text) {
        Ok(token) => token,
        Err(why) => {
            state.service.metrics().rejected_token(why.label());
            return token_required(&state, &relay, Some(why)).await;
        }
    };
    let result = async {
        let checked = state.service.check_redemption(&relay, &token).await?;
        let answer = match (claim, checked.spends()) {
            (Some(Extension(claim)), true) => stored_answer(claim, persona.inflection, checked.redemption()),
            _ => None,
        };
        state.service.spend(&relay, checked, answer).await
    };
    match result.await {
        Ok(redemption) => claim_response(persona.inflection, &redemption),
        Err(RedeemError::InvalidToken(why)) => token_required(&state, &relay, Some(why)).await,
        Err(other) => ApiError::from(other).into_response(),
    }
}

/// The idempotent answer a successful redemption stores with its spend:
/// the same bytes [`claim_response`] sends.
fn stored_answer(claim: IdempotencyClaim, inflection: Inflection, r: &Redemption) -> Option<IdempotencyCompletion> {
    let body = inflected_body(inflection, &claim_body(r)).ok()?;
    let response = StoredResponse { status: StatusCode::OK.as_u16(), content_type: JSON.to_owned(), body };
    Some(IdempotencyCompletion { scope: claim.scope, key: claim.key, response })
}

fn claim_body(r: &Redemption) -> Claim {
    Claim { claim_payload: r.claim_payload.clone(), token_consumed: r.token_consumed }
}

/// A redemption as the client sees it (marked when its answer is stored
/// already, so the idempotency layer does not store it again).
fn claim_response(inflection: Inflection, redemption: &Redemption) -> Response {
    let mut response = Inflected(StatusCode::OK, inflection, claim_body(redemption)).into_response();
    if redemption.response_stored {
        response.extensions_mut().insert(AlreadyStored);
    }
    response
}

/// The `token` of `Authorization: PrivateToken token=…`, if present.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let elements = auth::parse_elements(value).ok()?;
    elements.iter().filter(|e| e.scheme == "privatetoken").find_map(|e| e.param("token")).map(str::to_owned)
}

/// 401 "Privacy Pass token required" with one RFC 9577 challenge per token
/// type relays accept (type 2 first, in one `WWW-Authenticate` value), so
/// both Persona's SDKs and standard clients know what to do; `Token-Key-Id`
/// names the type-2 key as Persona does.
async fn token_required(state: &AppState, relay: &Relay, why: Option<TokenRejection>) -> Response {
    let mut response = ApiError::TokenRequired(why).into_response();
    match state.service.rfc_challenges(relay).await {
        Ok(challenges) => {
            let value = challenges
                .iter()
                .map(|(challenge, key)| auth::www_authenticate(challenge, Some(&key.token_key()), Some(3600)))
                .collect::<Vec<_>>()
                .join(", ");
            let headers = response.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(header::WWW_AUTHENTICATE, v);
            }
            let persona_id = challenges.iter().find_map(|(_, key)| key.blind_rsa().map(|k| k.persona_key_id()));
            if let Some(Ok(v)) = persona_id.map(|id| HeaderValue::from_str(&id.to_hex())) {
                headers.insert(HeaderName::from_static("token-key-id"), v);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not build the RFC 9577 challenge"),
    }
    response
}
