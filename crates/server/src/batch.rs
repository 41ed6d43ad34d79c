//! Generic batched issuance on the issuer request URI
//! (draft-ietf-privacypass-batched-tokens §6), in either framing
//! (`application/private-token-generic-batch-request`, or the
//! `arbitrary-batch` name privacypass-ts ≤ 0.8 sends).
//!
//! `BatchTokenRequest` → one [`IssueRequest`] per type-2 item (key by
//! truncated id, each item may name another key of the caller's environment)
//! → `Service::issue_batch` (spread over the cores) → `BatchTokenResponse`:
//! 200 when every item is issued, 206 when some are, 400 when none. An item
//! of a token type this issuer does not issue (VOPRF types 1 and 5, for now)
//! is answered absent. Rate limits count a batch's tokens.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use blindpass_protocol::batch::{
    BatchTokenRequest, BatchTokenResponse, Framing, GenericTokenRequest, GenericTokenResponse,
};
use blindpass_protocol::wire::TOKEN_TYPE_BLIND_RSA;
use blindpass_service::{Authenticated, IssueError, IssueRequest, KeySelector};

use crate::AppState;
use crate::envelope::Envelope;
use crate::error::ApiError;
use crate::json::read_body;

/// Issues a batch for `auth`'s environment.
pub(crate) async fn issue(
    state: &AppState,
    auth: &Authenticated,
    envelope: &Envelope,
    framing: Framing,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(headers, body, state.limits.max_body_bytes).await?;
    let request = decode(&bytes, framing, state.limits.max_batch_size)?;
    let environment = auth.key.environment;
    let extra = request.items.len().saturating_sub(1) as u64;
    envelope.admit(state.service.rate_limit_tokens(environment, extra).await?)?;
    let (issuable, positions) = issuable(&request.items);
    let evaluated = state.service.issue_batch(environment, issuable).await?;
    let mut items: Vec<Option<GenericTokenResponse>> = vec![None; request.items.len()];
    let mut first_refusal = None;
    for (position, result) in positions.into_iter().zip(evaluated) {
        match (items.get_mut(position), result) {
            (Some(slot), Ok(body)) => *slot = Some(GenericTokenResponse { token_type: TOKEN_TYPE_BLIND_RSA, body }),
            (_, Err(e)) => first_refusal = first_refusal.or(Some(e)),
            (None, Ok(_)) => {}
        }
    }
    reply(BatchTokenResponse { items }, framing, first_refusal)
}

/// The batch, decoded and within the size cap.
fn decode(bytes: &[u8], framing: Framing, max: usize) -> Result<BatchTokenRequest, ApiError> {
    let request = BatchTokenRequest::decode(bytes, framing)
        .map_err(|e| ApiError::unprocessable(format!("The batch token request cannot be decoded: {e}.")))?;
    match request.items.len() {
        0 => Err(ApiError::unprocessable("A batch token request holds at least one token request.")),
        n if n > max => Err(ApiError::unprocessable(format!(
            "A batch token request holds at most {max} token requests; this one holds {n}. Split it."
        ))),
        _ => Ok(request),
    }
}

/// The items this issuer issues, as issuance requests, with their positions.
fn issuable(items: &[GenericTokenRequest]) -> (Vec<IssueRequest>, Vec<usize>) {
    items
        .iter()
        .enumerate()
        .filter(|(_, item)| item.token_type == TOKEN_TYPE_BLIND_RSA)
        .map(|(position, item)| {
            let selector =
                KeySelector::Truncated { token_type: item.token_type, truncated: item.truncated_token_key_id };
            (IssueRequest { selector, blinded: item.blinded_msg.clone() }, position)
        })
        .unzip()
}

/// 200 with every item, 206 with some, 400 (saying why the first refused
/// item was refused) with none.
fn reply(
    response: BatchTokenResponse,
    framing: Framing,
    first_refusal: Option<IssueError>,
) -> Result<Response, ApiError> {
    let issued = response.items.iter().filter(|i| i.is_some()).count();
    let status = match issued {
        0 => return Err(nothing_issued(first_refusal)),
        n if n == response.items.len() => StatusCode::OK,
        _ => StatusCode::PARTIAL_CONTENT,
    };
    let media_type = [(header::CONTENT_TYPE, HeaderValue::from_static(framing.response_media_type()))];
    Ok((status, media_type, response.encode(framing)).into_response())
}

fn nothing_issued(first_refusal: Option<IssueError>) -> ApiError {
    let why = match first_refusal {
        None => "this issuer issues token type 2 only".to_owned(),
        Some(IssueError::UnknownKey) => "no issuing key matches a truncated_token_key_id".to_owned(),
        Some(e) => ApiError::from(e).details,
    };
    ApiError::bad_request(format!("No token of the batch was issued: {why}"))
}
