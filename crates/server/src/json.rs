//! Persona's JSON conventions at the edge: [`PersonaJson<T>`] reads a
//! request body into one of the contract types of
//! [`blindpass_protocol::api`] (415 for another media type, 413 over the
//! limit, keys in any casing, unknown or repeated keys refused, every
//! failure a Persona 400); [`Inflected<T>`] writes a contract type back in
//! the casing `Key-Inflection` asked for.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::AppState;
use crate::error::{ApiError, BadRequest, json_headers};
use crate::inflection::{Inflection, to_kebab};

/// A JSON request body, parsed into `T`.
#[derive(Debug, Clone)]
pub struct PersonaJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for PersonaJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        require_content_type(&parts.headers, "application/json")?;
        let bytes = read_once(&mut parts, body, state.limits.max_body_bytes).await?;
        decode(&bytes).map(Self)
    }
}

/// 415 unless the request's media type is `expected`.
pub(crate) fn require_content_type(headers: &HeaderMap, expected: &str) -> Result<(), ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case(expected).then_some(()).ok_or_else(|| ApiError::UnsupportedMediaType(expected.to_owned()))
}

/// Reads a body of at most `limit` bytes (413 otherwise, at once when the
/// declared length is already over; 408 when it misses the deadline
/// admission gave it).
pub(crate) async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| match is_body_timeout(&e) {
        true => ApiError::BodyTimedOut,
        false => ApiError::PayloadTooLarge(limit),
    })
}

/// A request body already read from the connection by an earlier layer
/// (the idempotency layer, or redemption before its own task): later
/// layers and the handler take it from here, so a body is read once.
#[derive(Debug, Clone)]
pub(crate) struct BufferedBody(Bytes);

/// The request's body: the one an earlier layer read ([`BufferedBody`]),
/// or read now with [`read_body`] and kept in `parts` for the layers after
/// this one (which get an empty `Body` with it).
pub(crate) async fn read_once(parts: &mut Parts, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    if let Some(BufferedBody(bytes)) = parts.extensions.get::<BufferedBody>() {
        return Ok(bytes.clone());
    }
    let bytes = read_body(&parts.headers, body, limit).await?;
    parts.extensions.insert(BufferedBody(bytes.clone()));
    Ok(bytes)
}

/// The body did not arrive within its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimedOut;

/// Whether `error` (from reading a body) is [`BodyTimedOut`], however deep
/// the body wrappers put it.
pub(crate) fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        if let Some(inner) = e.downcast_ref::<axum::Error>()
            && let Some(source) = std::error::Error::source(inner)
            && source.is::<BodyTimedOut>()
        {
            return true;
        }
        current = e.source();
    }
    false
}

/// Parses a JSON object whose keys may be kebab-, camel- or snake-case into
/// `T` (whose fields are kebab-case). Every failure is a Persona 400.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|_| BadRequest::NotJson)?;
    let Value::Object(map) = value else {
        return Err(BadRequest::NotAnObject.into());
    };
    let (kebab, spelled) = normalise(map)?;
    serde_path_to_error::deserialize(Value::Object(kebab)).map_err(|e| describe(&e, &spelled))
}

/// Each kebab-case key as the client spelled it.
type Spelled = std::collections::HashMap<String, String>;

/// The object with its keys in kebab-case, and each key as the client spelled
/// it (for error messages). Two spellings of one key are a 400.
fn normalise(map: Map<String, Value>) -> Result<(Map<String, Value>, Spelled), ApiError> {
    let (mut out, mut spelled) = (Map::new(), Spelled::new());
    for (key, value) in map {
        let kebab = to_kebab(&key);
        if out.insert(kebab.clone(), value).is_some() {
            return Err(BadRequest::Repeated(key).into());
        }
        spelled.insert(kebab, key);
    }
    Ok((out, spelled))
}

/// A deserialization failure in the client's terms. serde words a missing
/// and an unknown field as "missing field `x`" and "unknown field `x`, …"
/// (`serde::de::Error::missing_field`, `unknown_field`).
fn describe(e: &serde_path_to_error::Error<serde_json::Error>, spelled: &Spelled) -> ApiError {
    let message = e.inner().to_string();
    let path = e.path().to_string();
    let at = |field: &str| if path == "." { field.to_owned() } else { format!("{path}.{field}") };
    let quoted = |rest: &str| rest.split('`').next().unwrap_or_default().to_owned();
    if let Some(rest) = message.strip_prefix("missing field `") {
        return BadRequest::Missing(at(&quoted(rest))).into();
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        // The path of an unknown field ends with the field itself.
        let field = match spelled.get(&quoted(rest)) {
            Some(original) if path == quoted(rest) => original.clone(),
            _ => path.clone(),
        };
        return BadRequest::Unknown(field).into();
    }
    BadRequest::Invalid { path, message }.into()
}

/// A contract type as the response body, keys in the requested casing.
#[derive(Debug, Clone)]
pub struct Inflected<T>(pub StatusCode, pub Inflection, pub T);

impl<T: Serialize> IntoResponse for Inflected<T> {
    fn into_response(self) -> Response {
        let Self(status, inflection, body) = self;
        match inflected_body(inflection, &body) {
            Ok(bytes) => (status, json_headers(), bytes).into_response(),
            Err(e) => ApiError::internal(e).into_response(),
        }
    }
}

/// `body` serialized with its top-level keys in `inflection`'s style.
pub(crate) fn inflected_body(inflection: Inflection, body: &impl Serialize) -> Result<Vec<u8>, serde_json::Error> {
    let value = match serde_json::to_value(body)? {
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (inflection.apply(&k), v)).collect()),
        other => other,
    };
    Ok(value.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use blindpass_protocol::api::{CreatePrivacyPass, CreateRelay, RecordResult};

    use super::*;

    fn details(e: ApiError) -> String {
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        e.details()
    }

    #[test]
    fn keys_in_any_casing_reach_the_same_field() {
        for body in [
            r#"{"blinded-token":"AA","key-id":"ab"}"#,
            r#"{"blindedToken":"AA","keyId":"ab"}"#,
            r#"{"blinded_token":"AA","key_id":"ab"}"#,
        ] {
            let r: CreatePrivacyPass = decode(body.as_bytes()).unwrap();
            assert_eq!((r.blinded_token.as_str(), r.key_id.as_str()), ("AA", "ab"));
        }
    }

    #[test]
    fn each_malformed_body_is_a_400_that_names_the_parameter() {
        let d = |body: &str| details(decode::<CreatePrivacyPass>(body.as_bytes()).unwrap_err());
        assert_eq!(d(r#"{"key-id":"ab"}"#), "Missing required parameter \"blinded-token\".");
        assert_eq!(d(r#"{"blindedToken":"AA","key-id":"ab","fooBar":1}"#), "Unknown parameter \"fooBar\".");
        assert_eq!(
            d(r#"{"blindedToken":"AA","blinded_token":"AA"}"#),
            "Parameter \"blinded_token\" is given more than once."
        );
        assert!(d(r#"{"blinded-token":5,"key-id":"ab"}"#).starts_with("Parameter \"blinded-token\" is invalid"));
        assert_eq!(d("[1]"), "The body must be a JSON object.");
        assert_eq!(d("{"), "The body is not valid JSON.");
        let relay = details(decode::<CreateRelay>(br#"{"claim-type":"c"}"#).unwrap_err());
        assert_eq!(relay, "Missing required parameter \"encryption-key-pem\".");
        let nested = r#"{"claim-result":"passed","methodology":[{"method":"id"}]}"#;
        let nested = details(decode::<RecordResult>(nested.as_bytes()).unwrap_err());
        assert_eq!(nested, "Missing required parameter \"methodology[0].result\".");
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_are_a_400(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            for e in [decode::<CreatePrivacyPass>(&bytes).err(), decode::<RecordResult>(&bytes).err()].into_iter().flatten() {
                proptest::prop_assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            }
        }

        #[test]
        fn a_body_in_any_casing_decodes_to_what_was_sent(
            blinded in "[A-Za-z0-9_-]{0,40}",
            key_id in "[0-9a-f]{0,64}",
            style in 0..3_usize,
        ) {
            let inflection = [Inflection::Kebab, Inflection::Camel, Inflection::Snake][style];
            let sent = CreatePrivacyPass { blinded_token: blinded, key_id };
            let bytes = inflected_body(inflection, &sent).unwrap();
            proptest::prop_assert_eq!(decode::<CreatePrivacyPass>(&bytes).unwrap(), sent);
        }
    }

    #[test]
    fn responses_follow_key_inflection() {
        let body = blindpass_protocol::api::Claim { claim_payload: "p".into(), token_consumed: false };
        let camel = inflected_body(Inflection::Camel, &body).unwrap();
        assert_eq!(camel, br#"{"claimPayload":"p","tokenConsumed":false}"#);
        let snake = inflected_body(Inflection::Snake, &body).unwrap();
        assert_eq!(snake, br#"{"claim_payload":"p","token_consumed":false}"#);
    }
}
