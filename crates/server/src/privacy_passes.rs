//! `POST /api/v1/privacy-passes`: Persona's "Create a Privacy Pass".
//!
//! DTO → typed request → `Service::issue` (key lookup at `now`, BlindSign on
//! a blocking thread) → DTO.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use blindpass_protocol::b64;
use blindpass_protocol::keys::TokenKeyId;
use blindpass_service::{Authenticated, Permission};
use serde_json::Value;

use crate::AppState;
use crate::client_addr::Client;
use crate::conventions::{Reply, fingerprint, idempotent, parse_fields, read_json_body, required_str, with_api_key};
use crate::error::ApiError;

const PATH: &str = "/api/v1/privacy-passes";

pub(crate) async fn create(State(state): State<AppState>, client: Client, headers: HeaderMap, body: Body) -> Response {
    with_api_key(&state, &headers, &client, Permission::PrivacyPassWrite, async |auth, persona| {
        let bytes = read_json_body(&headers, body, state.limits.max_body_bytes).await?;
        let scope = format!("api_key:{}", auth.key.id);
        let work = issue(&state, auth, persona.inflection, &bytes);
        Ok(idempotent(&state, persona.idempotency_key.as_deref(), &scope, fingerprint("POST", PATH, &bytes), work)
            .await)
    })
    .await
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
