//! `POST /api/v1/privacy-passes`: Persona's "Create a Privacy Pass".
//!
//! DTO → typed request → `Service::issue` (key lookup at `now`, BlindSign on
//! a blocking thread) → DTO.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use blindpass_protocol::b64;
use blindpass_protocol::keys::TokenKeyId;
use blindpass_service::{Authenticated, Permission};
use serde_json::Value;

use crate::AppState;
use crate::conventions::{
    PersonaHeaders, Reply, authenticate, decorate, enforce_rate_limit, fingerprint, idempotent, parse_fields,
    read_json_body, required_str,
};
use crate::error::ApiError;

const PATH: &str = "/api/v1/privacy-passes";

pub(crate) async fn create(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let (auth, rate) = match authenticate(&state, &headers).await {
        Ok(ok) => ok,
        Err(e) => return e.into_response(),
    };
    let persona = PersonaHeaders::parse(&headers);
    let version = persona.as_ref().ok().and_then(|p| p.version.clone());
    let reply = match handle(&state, &auth, &headers, persona, body, rate).await {
        Ok(reply) => reply,
        Err(e) => Reply::from(e),
    };
    let mut response = reply.into_response();
    decorate(&mut response, &state, Some(auth.key.environment), rate, version.as_ref());
    response
}

async fn handle(
    state: &AppState,
    auth: &Authenticated,
    headers: &HeaderMap,
    persona: Result<PersonaHeaders, ApiError>,
    body: Body,
    rate: Option<blindpass_service::RateLimitStatus>,
) -> Result<Reply, ApiError> {
    enforce_rate_limit(rate)?;
    if !auth.can(Permission::PrivacyPassWrite) {
        return Err(ApiError::forbidden("The API key does not have the privacy_pass.write permission."));
    }
    let persona = persona?;
    let bytes = read_json_body(headers, body, state.limits.max_body_bytes).await?;
    let scope = format!("api_key:{}", auth.key.id);
    let work = issue(state, auth, persona.inflection, &bytes);
    Ok(idempotent(state, persona.idempotency_key.as_deref(), &scope, fingerprint("POST", PATH, &bytes), work).await)
}

async fn issue(
    state: &AppState,
    auth: &Authenticated,
    inflection: crate::inflection::Inflection,
    bytes: &[u8],
) -> Result<Reply, ApiError> {
    let fields = parse_fields(bytes, &["blinded-token", "key-id"])?;
    let blinded = b64::decode(required_str(&fields, "blinded-token")?)
        .map_err(|_| ApiError::bad_request("blinded-token must be base64url."))?;
    let key_id = TokenKeyId::from_hex(required_str(&fields, "key-id")?)
        .map_err(|_| ApiError::bad_request("key-id must be 64 hexadecimal characters."))?;
    let blind_sig = state.service.issue(auth.key.environment, &key_id, blinded).await?;
    let body = inflection.object(&[("blind-sig", Value::String(b64::encode_unpadded(&blind_sig)))]);
    Ok(Reply::json(StatusCode::CREATED, body))
}
