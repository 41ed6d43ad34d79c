//! The Persona relay endpoints that create things: the challenge, the relay,
//! and a verifier's result. (generate-claim, the redemption, is
//! [`crate::redeem`].)

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use blindpass_protocol::api::{
    ChallengeRequest, ChallengeResponse, CreateRelay, Method, RecordResult, RelayCreated, ResultRecorded,
};
use blindpass_protocol::jwk::EncryptionJwk;
use blindpass_service::RelayEncryption;
use blindpass_service::{ClaimType, Environment};

use crate::AppState;
use crate::api_key::Caller;
use crate::client_addr::ClientAddr;
use crate::envelope::{Envelope, PersonaHeaders};
use crate::error::{ApiError, BadRequest, Unprocessable};
use crate::json::{Inflected, PersonaJson};

/// Longest claim type the API accepts (the domain's bound is larger).
const MAX_CLAIM_TYPE_LEN: usize = 128;
/// Most methodology steps a verifier may record.
const MAX_METHODS: usize = 16;
/// Longest methodology step name.
const MAX_METHOD_LEN: usize = 64;

/// `POST /api/privacy/v1/relays/challenge`.
pub(crate) async fn challenge(
    State(state): State<AppState>,
    envelope: Envelope,
    persona: PersonaHeaders,
    PersonaJson(body): PersonaJson<ChallengeRequest>,
) -> Result<Inflected<ChallengeResponse>, ApiError> {
    let environment = count_anonymous(&state, &envelope, body.sandbox).await?;
    let offer = state.service.challenge(environment, &claim_type(&body.claim_type)?).await?;
    let body =
        ChallengeResponse { challenge: offer.challenge, token_key: offer.token_key, token_key_id: offer.token_key_id };
    Ok(Inflected(StatusCode::OK, persona.inflection, body))
}

/// `POST /api/privacy/v1/relays`.
pub(crate) async fn create(
    State(state): State<AppState>,
    envelope: Envelope,
    persona: PersonaHeaders,
    PersonaJson(body): PersonaJson<CreateRelay>,
) -> Result<Inflected<RelayCreated>, ApiError> {
    let environment = count_anonymous(&state, &envelope, body.sandbox).await?;
    let claim = claim_type(&body.claim_type)?;
    let jwk = match &body.encryption_key_jwk {
        Some(value) => Some(EncryptionJwk::parse(value).map_err(|e| Unprocessable::EncryptionJwk(e.to_string()))?),
        None => None,
    };
    let encryption = match (body.encryption_key_pem.as_deref(), &jwk) {
        (Some(_), Some(_)) => {
            return Err(Unprocessable::TwoEncryptionKeys.into());
        }
        (Some(pem), None) => RelayEncryption::Pem(pem),
        (None, Some(jwk)) => RelayEncryption::Jwk(jwk),
        (None, None) => RelayEncryption::None,
    };
    let created = state.service.create_relay_with(environment, &claim, encryption).await?;
    let body = RelayCreated {
        relay_token: created.relay.token.clone(),
        relay_secret: created.secret.to_string(),
        relay_session_access_token: created.session_token.clone(),
    };
    Ok(Inflected(StatusCode::CREATED, persona.inflection, body))
}

/// `POST /api/privacy/v1/relays/{relay-token}/result`: a verifier (API key
/// with `relay.verify`) records the claim result of a production relay.
pub(crate) async fn result(
    State(state): State<AppState>,
    Caller(caller): Caller,
    persona: PersonaHeaders,
    relay_token: Result<Path<String>, PathRejection>,
    PersonaJson(body): PersonaJson<RecordResult>,
) -> Result<Inflected<ResultRecorded>, ApiError> {
    let Ok(Path(relay_token)) = relay_token else {
        return Err(ApiError::RelayNotFound { with_secret: false });
    };
    let methodology = methodology_json(body.methodology.as_deref().unwrap_or_default())?;
    let passed = body.claim_result.passed();
    state.service.record_result(caller.environment, &relay_token, passed, methodology).await?;
    let body = ResultRecorded { relay_token, claim_result: body.claim_result };
    Ok(Inflected(StatusCode::OK, persona.inflection, body))
}

/// The first layer of the anonymous routes (challenge, relay creation):
/// counts the client's address before the body is read, so a client over
/// its limit costs one counter and no body.
pub(crate) async fn count_client(
    State(state): State<AppState>,
    client: ClientAddr,
    envelope: Envelope,
    request: Request,
    next: Next,
) -> Response {
    match state.service.rate_limit_client(&client.0).await {
        Ok(rate) => match envelope.admit(rate) {
            Ok(()) => next.run(request).await,
            Err(e) => e.into_response(),
        },
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Once the body names the environment: its anonymous ceiling, if the
/// operator set one (the client was counted by [`count_client`]).
async fn count_anonymous(
    state: &AppState,
    envelope: &Envelope,
    sandbox: Option<bool>,
) -> Result<Environment, ApiError> {
    let environment = if sandbox == Some(true) { Environment::Sandbox } else { Environment::Production };
    envelope.environment(environment);
    envelope.admit(state.service.rate_limit_public(environment).await?)?;
    Ok(environment)
}

fn claim_type(text: &str) -> Result<ClaimType, ApiError> {
    let parsed = ClaimType::parse(text).ok().filter(|_| text.len() <= MAX_CLAIM_TYPE_LEN);
    parsed.ok_or(ApiError::BadRequest(BadRequest::ClaimType { max: MAX_CLAIM_TYPE_LEN }))
}

/// A verifier's methodology, bounded, as the JSON text the claim carries.
fn methodology_json(methods: &[Method]) -> Result<String, ApiError> {
    let named = |m: &Method| !m.method.is_empty() && m.method.len() <= MAX_METHOD_LEN;
    if methods.len() > MAX_METHODS || !methods.iter().all(named) {
        return Err(BadRequest::Methodology { max_methods: MAX_METHODS, max_len: MAX_METHOD_LEN }.into());
    }
    serde_json::to_string(methods).map_err(ApiError::internal)
}
