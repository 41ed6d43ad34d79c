//! The Persona relay endpoints: challenge, create relay, record a result
//! (verifiers), generate-claim (redemption).

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use blindpass_protocol::auth;
use blindpass_service::{
    Environment, IdempotencyCompletion, Permission, RateLimitStatus, RedeemError, Redemption, Relay, StoredResponse,
};
use serde_json::Value;

use crate::AppState;
use crate::client_addr::Client;
use crate::conventions::{
    JSON, PersonaHeaders, Reply, decorate, enforce_rate_limit, fingerprint, idempotent, parse_fields,
    rate_limit_headers, read_body, read_json_body, required_str, with_api_key,
};
use crate::error::ApiError;
use crate::inflection::Inflection;

/// Longest accepted claim type.
const MAX_CLAIM_TYPE_LEN: usize = 128;

/// `claim-type`: a non-empty identifier.
fn claim_type(fields: &std::collections::HashMap<String, Value>) -> Result<String, ApiError> {
    let claim = required_str(fields, "claim-type")?;
    let ok = !claim.is_empty()
        && claim.len() <= MAX_CLAIM_TYPE_LEN
        && claim.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'));
    if !ok {
        return Err(ApiError::bad_request(format!(
            "claim-type must be 1 to {MAX_CLAIM_TYPE_LEN} letters, digits, '_', '-' or '.'."
        )));
    }
    Ok(claim.to_owned())
}

/// `sandbox`: optional boolean, default false.
fn environment(fields: &std::collections::HashMap<String, Value>) -> Result<Environment, ApiError> {
    match fields.get("sandbox") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(Environment::Production),
        Some(Value::Bool(true)) => Ok(Environment::Sandbox),
        Some(_) => Err(ApiError::bad_request("Parameter \"sandbox\" must be a boolean.")),
    }
}

/// Shared shape of the two unauthenticated JSON endpoints.
async fn public_json(
    state: &AppState,
    client: &Client,
    headers: &HeaderMap,
    body: Body,
    allowed: &[&str],
    work: impl AsyncFnOnce(std::collections::HashMap<String, Value>, PersonaHeaders, Environment) -> Result<Reply, ApiError>,
) -> Response {
    let persona = PersonaHeaders::parse(headers);
    let version = persona.as_ref().ok().and_then(|p| p.version.clone());
    let mut counted = None;
    let outcome = async {
        let persona = persona?;
        let bytes = read_json_body(headers, body, state.limits.max_body_bytes).await?;
        let fields = parse_fields(&bytes, allowed)?;
        let env = environment(&fields)?;
        // No API key to count against: the client's address is counted
        // (and the environment's anonymous ceiling, if the operator set one).
        let rate = state.service.rate_limit_anonymous(&client.0, Some(env)).await?;
        counted = Some((env, rate));
        crate::conventions::enforce_rate_limit(rate)?;
        work(fields, persona, env).await
    }
    .await;
    let mut response = outcome.unwrap_or_else(Reply::from).into_response();
    let (env, rate) = counted.map_or((None, None), |(e, r)| (Some(e), r));
    decorate(&mut response, state, env, rate, version.as_ref());
    response
}

/// `POST /api/privacy/v1/relays/challenge`.
pub(crate) async fn challenge(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    body: Body,
) -> Response {
    public_json(&state, &client, &headers, body, &["claim-type", "sandbox"], async |fields, persona, env| {
        let claim = claim_type(&fields)?;
        let offer = state.service.challenge(env, &claim).await?;
        let body = persona.inflection.object(&[
            ("challenge", Value::String(offer.challenge)),
            ("token-key", Value::String(offer.token_key)),
            ("token-key-id", Value::String(offer.token_key_id)),
        ]);
        Ok(Reply::json(StatusCode::OK, body))
    })
    .await
}

/// `POST /api/privacy/v1/relays`.
pub(crate) async fn create(State(state): State<AppState>, client: Client, headers: HeaderMap, body: Body) -> Response {
    public_json(
        &state,
        &client,
        &headers,
        body,
        &["claim-type", "encryption-key-pem", "sandbox"],
        async |fields, persona, env| {
            let claim = claim_type(&fields)?;
            let pem = match fields.get("encryption-key-pem") {
                None => {
                    return Err(ApiError::bad_request(
                        "Missing required parameter \"encryption-key-pem\" (it may be null).",
                    ));
                }
                Some(Value::Null) => None,
                Some(Value::String(pem)) => Some(pem.as_str()),
                Some(_) => {
                    return Err(ApiError::bad_request("Parameter \"encryption-key-pem\" must be a string or null."));
                }
            };
            let created = state.service.create_relay(env, &claim, pem).await?;
            let body = persona.inflection.object(&[
                ("relay-token", Value::String(created.relay.token.clone())),
                ("relay-secret", Value::String(created.secret.to_string())),
                ("relay-session-access-token", Value::String(created.session_token.clone())),
            ]);
            Ok(Reply::json(StatusCode::CREATED, body))
        },
    )
    .await
}

/// `POST /api/privacy/v1/relays/{relay-token}/result`: a verifier (API key
/// with `relay.verify`) records the claim result of a production relay.
pub(crate) async fn result(
    State(state): State<AppState>,
    client: Client,
    relay_token: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(Path(relay_token)) = relay_token else {
        return ApiError::not_found("No relay matches this token.").into_response();
    };
    with_api_key(&state, &headers, &client, Permission::RelayVerify, async |auth, persona| {
        let bytes = read_json_body(&headers, body, state.limits.max_body_bytes).await?;
        let scope = format!("api_key:{}", auth.key.id);
        let path = format!("/api/privacy/v1/relays/{relay_token}/result");
        let work = async {
            let fields = parse_fields(&bytes, &["claim-result", "methodology"])?;
            let passed = match required_str(&fields, "claim-result")? {
                "passed" => true,
                "failed" => false,
                _ => return Err(ApiError::bad_request("claim-result must be \"passed\" or \"failed\".")),
            };
            let methodology = methodology(fields.get("methodology"))?;
            state.service.record_result(auth.key.environment, &relay_token, passed, methodology).await?;
            let body = persona.inflection.object(&[
                ("relay-token", Value::String(relay_token.clone())),
                ("claim-result", Value::String(if passed { "passed" } else { "failed" }.into())),
            ]);
            Ok(Reply::json(StatusCode::OK, body))
        };
        Ok(idempotent(&state, persona.idempotency_key.as_deref(), &scope, fingerprint("POST", &path, &bytes), work)
            .await)
    })
    .await
}

/// Validates `methodology`: absent, null, or an array of
/// `{"method": str, "result": "passed"|"failed"}`. Returns it as JSON text.
fn methodology(value: Option<&Value>) -> Result<String, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "methodology must be an array of {\"method\": string, \"result\": \"passed\" or \"failed\"}.",
        )
    };
    let items = match value {
        None | Some(Value::Null) => return Ok("[]".into()),
        Some(Value::Array(items)) if items.len() <= 16 => items,
        Some(_) => return Err(bad()),
    };
    for item in items {
        let Value::Object(map) = item else { return Err(bad()) };
        let method_ok = map.get("method").and_then(Value::as_str).is_some_and(|m| !m.is_empty() && m.len() <= 64);
        let result_ok = matches!(map.get("result").and_then(Value::as_str), Some("passed" | "failed"));
        if map.len() != 2 || !method_ok || !result_ok {
            return Err(bad());
        }
    }
    Ok(Value::Array(items.clone()).to_string())
}

/// `POST /api/privacy/v1/relays/{relay-token}/generate-claim`.
pub(crate) async fn generate_claim(
    State(state): State<AppState>,
    client: Client,
    relay_token: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (relay, rate) = match admit(&state, &client, relay_token, &headers).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let persona = PersonaHeaders::parse(&headers);
    let version = persona.as_ref().ok().and_then(|p| p.version.clone());
    let outcome = redeem_request(&state, &relay, persona, &headers, body).await;
    let mut response = outcome.unwrap_or_else(Reply::from).into_response();
    decorate(&mut response, &state, Some(relay.environment), rate, version.as_ref());
    response
}

/// The gates before a redemption: the client's rate limit (before the relay
/// is even looked up), the relay and its secret, then the relay's own limit.
/// A refusal is the finished response.
async fn admit(
    state: &AppState,
    client: &Client,
    relay_token: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
) -> Result<(Relay, Option<RateLimitStatus>), Response> {
    let refuse = |rate: Option<RateLimitStatus>| {
        let mut response = Reply::from(enforce_rate_limit(rate).err()?).into_response();
        rate_limit_headers(response.headers_mut(), rate);
        Some(response)
    };
    let client_rate = state.service.rate_limit_anonymous(&client.0, None).await.map_err(into_response)?;
    if let Some(refused) = refuse(client_rate) {
        return Err(refused);
    }
    let Ok(Path(relay_token)) = relay_token else {
        return Err(ApiError::not_found("No relay matches this token and secret.").into_response());
    };
    let secret = headers.get("persona-relay-secret").and_then(|v| v.to_str().ok()).unwrap_or("");
    let relay = state.service.relay_for(&relay_token, secret).await.map_err(|e| {
        let mut response = ApiError::from(e).into_response();
        rate_limit_headers(response.headers_mut(), client_rate);
        response
    })?;
    let relay_rate = state.service.rate_limit_relay(&relay.token).await.map_err(into_response)?;
    let rate = RateLimitStatus::tightest(client_rate, relay_rate);
    match refuse(rate) {
        Some(refused) => Err(refused),
        None => Ok((relay, rate)),
    }
}

fn into_response(e: impl Into<ApiError>) -> Response {
    e.into().into_response()
}

/// The body and token checks, then the redemption in a task of its own: a
/// redemption is one unit, so neither the request timeout nor a client
/// hanging up can cut it between its commit and its answer (a client that
/// lost the answer retries and gets the same claim back).
async fn redeem_request(
    state: &AppState,
    relay: &Relay,
    persona: Result<PersonaHeaders, ApiError>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Reply, ApiError> {
    let persona = persona?;
    // Persona's SDK sends `{}`; an empty body is accepted too.
    let bytes = read_body(headers, body, state.limits.max_body_bytes).await?;
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        crate::conventions::require_content_type(headers, "application/json")?;
        parse_fields(&bytes, &[])?;
    }
    let Some(token) = presented_token(headers) else {
        return Ok(token_required(state, relay, "Request a challenge to obtain a token").await);
    };
    let print = fingerprint(
        "POST",
        &format!("/api/privacy/v1/relays/{}/generate-claim", relay.token),
        &[bytes.as_ref(), token.as_bytes()].concat(),
    );
    let unit = RedemptionUnit { relay: relay.clone(), token, print, persona };
    tokio::spawn(unit.run(state.clone())).await.map_err(|e| ApiError::internal(&e))
}

/// Everything one redemption needs, owned, so that it can run in its own task.
struct RedemptionUnit {
    relay: Relay,
    token: String,
    print: [u8; 32],
    persona: PersonaHeaders,
}

impl RedemptionUnit {
    /// Redeems under the request's `Idempotency-Key`; the stored response
    /// commits with the spend.
    async fn run(self, state: AppState) -> Reply {
        let Self { relay, token, print, persona } = self;
        let scope = format!("relay:{}", relay.token);
        let (inflection, idempotency_key) = (persona.inflection, persona.idempotency_key);
        let respond = |r: &Redemption| {
            idempotency_key.as_ref().map(|key| IdempotencyCompletion {
                scope: scope.clone(),
                key: key.clone(),
                response: StoredResponse {
                    status: StatusCode::OK.as_u16(),
                    content_type: JSON.to_owned(),
                    body: claim_body(inflection, r),
                },
            })
        };
        let work = async {
            let result = state.service.redeem(&relay, &token, respond).await;
            redemption_reply(&state, &relay, inflection, result).await
        };
        idempotent(&state, idempotency_key.as_deref(), &scope, print, work).await
    }
}

/// A redemption's outcome as the client sees it.
async fn redemption_reply(
    state: &AppState,
    relay: &Relay,
    inflection: Inflection,
    result: Result<Redemption, RedeemError>,
) -> Result<Reply, ApiError> {
    match result {
        Ok(redemption) => {
            let mut reply = Reply::json(StatusCode::OK, claim_body(inflection, &redemption));
            reply.already_stored = redemption.response_stored;
            Ok(reply)
        }
        Err(RedeemError::InvalidToken(why)) => {
            Ok(token_required(state, relay, crate::error::token_rejection(why)).await)
        }
        Err(RedeemError::Pending) => {
            let mut e = ApiError::forbidden("The claim result is not available yet. Retry later.");
            e.retry_after = Some(5);
            Err(e)
        }
        Err(RedeemError::PayloadTooLarge) => Err(ApiError::unprocessable(
            "The claim payload does not fit in one RSA-OAEP block of the relay's encryption key.",
        )),
        Err(RedeemError::Store(s)) => Err(s.into()),
        Err(RedeemError::Internal(cause)) => Err(ApiError::internal(&cause)),
    }
}

/// The 200 body of a redemption.
fn claim_body(inflection: Inflection, redemption: &Redemption) -> Vec<u8> {
    inflection.object(&[
        ("claim-payload", Value::String(redemption.claim_payload.clone())),
        ("token-consumed", Value::Bool(redemption.token_consumed)),
    ])
}

/// The `token` of `Authorization: PrivateToken token=…`, if present.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let elements = auth::parse_elements(value).ok()?;
    elements.iter().filter(|e| e.scheme == "privatetoken").find_map(|e| e.param("token")).map(str::to_owned)
}

/// 401 "Privacy Pass token required" with an RFC 9577 challenge, so both
/// Persona's SDKs and standard clients know what to do.
async fn token_required(state: &AppState, relay: &Relay, details: &str) -> Reply {
    let mut reply = Reply::from(ApiError::new(StatusCode::UNAUTHORIZED, "Privacy Pass token required", details));
    match state.service.rfc_challenge(relay).await {
        Ok((challenge, key)) => {
            let value = auth::www_authenticate(&challenge, Some(key.rfc9578_spki()), Some(3600));
            if let Ok(v) = HeaderValue::from_str(&value) {
                reply.headers.push((header::WWW_AUTHENTICATE, v));
            }
            if let Ok(v) = HeaderValue::from_str(&key.persona_key_id().to_hex()) {
                reply.headers.push((HeaderName::from_static("token-key-id"), v));
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not build the RFC 9577 challenge"),
    }
    reply
}
