//! Generic batched issuance on the issuer request URI
//! (draft-ietf-privacypass-batched-tokens §6), in either framing
//! (`application/private-token-generic-batch-request`, or the
//! `arbitrary-batch` name privacypass-ts ≤ 0.8 sends).
//!
//! `BatchTokenRequest` → one [`IssueRequest`] per item of a type blindpass
//! knows (2, 1, 5; key by truncated id, each item may name another key of
//! the caller's environment) → `Service::issue_batch` (spread over the
//! cores) → `BatchTokenResponse`: 200 when every item is issued, 206 when
//! some are, 400 when none. An item of a token type this node does not
//! issue is answered absent.
//!
//! The amortized batch (§5, `application/private-token-amortized-batch-request`,
//! types 1 and 5) is [`issue_amortized`]: one key, many elements, one
//! proof. Rate limits count a batch's tokens, either kind.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use blindpass_protocol::batch::{
    BatchTokenRequest, BatchTokenResponse, Framing, GenericTokenRequest, GenericTokenResponse,
};
use blindpass_protocol::voprf::wire::{AmortizedError, AmortizedTokenRequest, MEDIA_TYPE_AMORTIZED_BATCH_RESPONSE};
use blindpass_protocol::wire::TOKEN_TYPE_BLIND_RSA;
use blindpass_service::{IssueError, IssueRequest, KeySelector, Principal, TOKEN_TYPES};

use crate::AppState;
use crate::envelope::Envelope;
use crate::error::{ApiError, Unprocessable};

/// Issues a batch for `caller`'s environment.
pub(crate) async fn issue(
    state: &AppState,
    caller: &Principal,
    envelope: &Envelope,
    framing: Framing,
    bytes: &[u8],
) -> Result<Response, ApiError> {
    let request = decode(bytes, framing, state.limits.max_batch_size)?;
    let environment = caller.environment;
    let extra = request.items.len().saturating_sub(1) as u64;
    envelope.admit(state.service.rate_limit_would_admit(caller, extra).await?)?;
    let (issuable, positions) = issuable(&request.items);
    let evaluated = state.service.issue_batch(environment, issuable).await?;
    let issued = evaluated.iter().filter(|r| r.is_ok()).count() as u64;
    envelope.counted(state.service.rate_limit_tokens(caller, issued.saturating_sub(1)).await?);
    let mut items: Vec<Option<GenericTokenResponse>> = vec![None; request.items.len()];
    let mut first_refusal = None;
    for (position, result) in positions.into_iter().zip(evaluated) {
        let token_type = request.items.get(position).map_or(TOKEN_TYPE_BLIND_RSA, |item| item.token_type);
        match (items.get_mut(position), result) {
            (Some(slot), Ok(body)) => *slot = Some(GenericTokenResponse { token_type, body }),
            (_, Err(e)) => first_refusal = first_refusal.or(Some(e)),
            (None, Ok(_)) => {}
        }
    }
    reply(BatchTokenResponse { items }, framing, first_refusal)
}

/// Issues an amortized batch of token type 1 or 5 for `caller`'s environment:
/// 200 with every token, or one error for the whole batch (a 422 for a bad
/// type, an unknown truncated id, a malformed or invalid element, or more
/// elements than the batch cap).
pub(crate) async fn issue_amortized(
    state: &AppState,
    caller: &Principal,
    envelope: &Envelope,
    bytes: &[u8],
) -> Result<Response, ApiError> {
    let max = state.limits.max_batch_size;
    let request = AmortizedTokenRequest::decode(bytes, max).map_err(|e| match e {
        AmortizedError::TooMany { found, max } => Unprocessable::AmortizedTooLarge { found, max },
        AmortizedError::UnsupportedTokenType(t) => Unprocessable::AmortizedTokenType(t),
        e => Unprocessable::AmortizedBatch(e.to_string()),
    })?;
    let environment = caller.environment;
    let extra = request.blinded_elements.len().saturating_sub(1) as u64;
    envelope.admit(state.service.rate_limit_would_admit(caller, extra).await?)?;
    let token_type = request.suite.token_type();
    let response = state
        .service
        .issue_amortized(environment, token_type, request.truncated_token_key_id, request.blinded_elements)
        .await
        .map_err(ApiError::IssueByTruncatedId)?;
    envelope.counted(state.service.rate_limit_tokens(caller, extra).await?);
    let media_type = [(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE_AMORTIZED_BATCH_RESPONSE))];
    Ok((StatusCode::OK, media_type, response).into_response())
}

/// The batch, decoded and within the size cap.
fn decode(bytes: &[u8], framing: Framing, max: usize) -> Result<BatchTokenRequest, ApiError> {
    let request = BatchTokenRequest::decode(bytes, framing).map_err(|e| Unprocessable::Batch(e.to_string()))?;
    match request.items.len() {
        0 => Err(Unprocessable::EmptyBatch.into()),
        found if found > max => Err(Unprocessable::BatchTooLarge { found, max }.into()),
        _ => Ok(request),
    }
}

/// The items this issuer issues, as issuance requests, with their positions.
fn issuable(items: &[GenericTokenRequest]) -> (Vec<IssueRequest>, Vec<usize>) {
    items
        .iter()
        .enumerate()
        .filter(|(_, item)| TOKEN_TYPES.contains(&item.token_type))
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
    ApiError::NothingIssued(first_refusal)
}
