//! `POST /api/v1/privacy-passes`: Persona's "Create a Privacy Pass".
//!
//! `CreatePrivacyPass` → [`IssueRequest`] (key by id, the blinded message
//! decoded) → `Service::issue` → `PrivacyPass`, 201.

use axum::extract::State;
use axum::http::StatusCode;
use blindpass_protocol::api::{CreatePrivacyPass, PrivacyPass};
use blindpass_protocol::b64;
use blindpass_protocol::keys::TokenKeyId;
use blindpass_service::IssueRequest;

use crate::AppState;
use crate::api_key::Caller;
use crate::envelope::PersonaHeaders;
use crate::error::{ApiError, BadRequest};
use crate::json::{Inflected, PersonaJson};

pub(crate) async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    persona: PersonaHeaders,
    PersonaJson(body): PersonaJson<CreatePrivacyPass>,
) -> Result<Inflected<PrivacyPass>, ApiError> {
    let request = issue_request(&body)?;
    let blind_sig = state.service.issue(caller.environment, request).await?;
    let body = PrivacyPass { blind_sig: b64::encode_unpadded(&blind_sig) };
    Ok(Inflected(StatusCode::CREATED, persona.inflection, body))
}

/// The Persona body as an issuance: the key by id, the blinded message.
fn issue_request(body: &CreatePrivacyPass) -> Result<IssueRequest, ApiError> {
    let blinded = b64::decode(&body.blinded_token).map_err(|_| BadRequest::BlindedTokenEncoding)?;
    let key_id = TokenKeyId::from_hex(&body.key_id).map_err(|_| BadRequest::KeyIdEncoding)?;
    Ok(IssueRequest::by_id(key_id, blinded))
}
