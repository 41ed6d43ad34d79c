//! The one place where failures become HTTP: status, Persona's error body
//! `{"errors":[{"title","details"}]}` ([`blindpass_protocol::api::ErrorBody`]),
//! headers such as `Retry-After`, and every word a client reads about a
//! failure. A 5xx never carries internal detail to the client: its cause
//! rides on the response as an [`InternalCause`] extension, and the
//! outermost middleware logs it, once.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
#[cfg(doc)]
use blindpass_protocol::api::ErrorBody;
use blindpass_service::lifecycle::NotIssuing;
use blindpass_service::{AuthError, IssueError, RecordError, RedeemError, RelayError, StoreError, TokenRejection};
use serde_json::Value;

/// An error response in Persona's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// `errors[0].title`.
    pub title: String,
    /// `errors[0].details`.
    pub details: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// What went wrong inside, for the log; never sent.
    pub cause: Option<String>,
}

/// The cause of a 5xx, attached to its response for the request log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalCause(pub String);

impl ApiError {
    /// An error with `status`, `title` and `details`.
    pub fn new(status: StatusCode, title: impl Into<String>, details: impl Into<String>) -> Self {
        Self { status, title: title.into(), details: details.into(), retry_after: None, cause: None }
    }

    /// The same error with a `Retry-After` of `secs`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// 400 Bad Request.
    pub fn bad_request(details: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad Request", details)
    }

    /// 401 for a missing or unknown API key.
    pub fn unauthenticated(details: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Must be authenticated to access this endpoint", details)
    }

    /// 403 Forbidden.
    pub fn forbidden(details: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", details)
    }

    /// 404 Record not found.
    pub fn not_found(details: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Record not found", details)
    }

    /// 409 Conflict.
    pub fn conflict(details: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", details)
    }

    /// 422 Unprocessable entity.
    pub fn unprocessable(details: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable entity", details)
    }

    /// 413: a body over `limit` bytes.
    pub fn payload_too_large(limit: usize) -> Self {
        let details = format!("The request body must be at most {limit} bytes.");
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large", details)
    }

    /// 415: a body that is not `expected`.
    pub fn unsupported_media_type(expected: &str) -> Self {
        let details = format!("Send the request body as {expected}.");
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type", details)
    }

    /// 429 with `Retry-After`.
    pub fn rate_limited(limit: u64, retry_after: u64) -> Self {
        let details = format!(
            "You have hit your rate limit of {limit} requests / min. Please wait {retry_after} seconds before retrying."
        );
        Self::new(StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded", details).retry_after(retry_after)
    }

    /// 503 with `Retry-After`: the store is unavailable.
    pub fn unavailable() -> Self {
        let details = "The service is temporarily unavailable. Please retry.";
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable", details).retry_after(1)
    }

    /// 503 with `Retry-After`: more requests in flight than the server takes.
    pub fn overloaded() -> Self {
        let details = "The server is answering too many requests. Please retry.";
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable", details).retry_after(1)
    }

    /// 503 with `Retry-After`: the issuer key's HSM token cannot be reached.
    pub fn signer_unavailable() -> Self {
        let details = "The issuer's signing key is unavailable for now. Please retry.";
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable", details).retry_after(5)
    }

    /// 503 with `Retry-After`: the request timed out.
    pub fn timed_out() -> Self {
        let details = "The request took too long. Please retry.";
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "Request timeout", details).retry_after(1)
    }

    /// 500: the client learns nothing about `cause`; the log does.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        let mut e =
            Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error", "An unexpected error occurred.");
        e.cause = Some(cause.to_string());
        e
    }

    /// The JSON body: [`ErrorBody`] with one item, written without a
    /// fallible serializer (a JSON string value always renders).
    pub fn body(&self) -> Vec<u8> {
        let (title, details) = (Value::from(self.title.as_str()), Value::from(self.details.as_str()));
        format!(r#"{{"errors":[{{"title":{title},"details":{details}}}]}}"#).into_bytes()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, json_headers(), self.body()).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(InternalCause(cause));
        }
        response
    }
}

/// `Content-Type: application/json; charset=utf-8`.
pub(crate) fn json_headers() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CONTENT_TYPE, HeaderValue::from_static(crate::JSON))]
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => {
                let mut e = ApiError::unavailable();
                e.cause = Some(format!("store unavailable: {cause}"));
                e
            }
            other => ApiError::internal(&other),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unknown => ApiError::unauthenticated("The API key is invalid."),
            AuthError::Revoked => ApiError::forbidden("The API key has been revoked."),
            AuthError::Store(s) => s.into(),
        }
    }
}

/// The words a client reads when its token is refused (401).
pub(crate) fn token_rejection(why: TokenRejection) -> &'static str {
    match why {
        TokenRejection::AlreadyUsed => "This Privacy Pass token has already been used.",
        TokenRejection::NotBase64url => "The token is not base64url.",
        TokenRejection::Malformed => "The token is not a valid Privacy Pass token.",
        TokenRejection::ChallengeExpired => "The token's challenge has expired.",
        TokenRejection::ChallengeNotOurs => "The token's challenge was not issued by this server.",
        TokenRejection::RfcChallengeUnknown => {
            "The token answers a challenge this relay did not issue, or one that expired."
        }
        TokenRejection::OtherEnvironment => "The token belongs to another environment.",
        TokenRejection::OtherClaimType => "The token was issued for another claim type.",
        TokenRejection::UnknownKey => "The token names an unknown key.",
        TokenRejection::UnknownOrRetiredKey => "The token names an unknown or retired key.",
        TokenRejection::BadSignature => "The token's signature is invalid.",
        TokenRejection::TokenTypeNotAccepted => "This relay does not accept tokens of this type.",
    }
}

impl From<IssueError> for ApiError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::UnknownKey => ApiError::not_found("No signing key matches key-id."),
            IssueError::WrongEnvironment => {
                ApiError::forbidden("key-id belongs to a different environment than the API key.")
            }
            IssueError::KeyNotActive(why) => ApiError::unprocessable(match why {
                NotIssuing::NotYetValid => "The signing key is not yet valid.",
                NotIssuing::RotatedOut => "The signing key is rotated out.",
                NotIssuing::Retired => "The signing key is retired.",
            }),
            IssueError::WrongLength { expected, found } => ApiError::unprocessable(format!(
                "blinded-token must decode to {expected} bytes (the key's modulus length); found {found}."
            )),
            IssueError::InvalidElement => {
                ApiError::unprocessable("A blinded element is not a valid element of the key's group.")
            }
            IssueError::UnsupportedTokenType(t) => {
                ApiError::unprocessable(format!("This issuer does not issue token type {t:#06x}."))
            }
            IssueError::OutOfRange => {
                ApiError::unprocessable("blinded-token is not a valid message representative for the key.")
            }
            IssueError::Busy => ApiError::overloaded(),
            IssueError::SignerUnavailable => ApiError::signer_unavailable(),
            IssueError::Store(s) => s.into(),
            IssueError::Internal(cause) => ApiError::internal(&cause),
        }
    }
}

impl From<RelayError> for ApiError {
    fn from(e: RelayError) -> Self {
        match e {
            RelayError::NotFound => ApiError::not_found("No relay matches this token and secret."),
            RelayError::BadEncryptionKey => ApiError::unprocessable(
                "encryption-key-pem must be a PEM RSA public key (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY) of 2048 to 4096 bits.",
            ),
            e @ (RelayError::KeyTooSmallForClaim { .. } | RelayError::BadEncryptionJwk) => {
                ApiError::unprocessable(format!("{e}."))
            }
            RelayError::NoKey => ApiError::unavailable(),
            RelayError::Store(s) => s.into(),
            RelayError::Internal(cause) => ApiError::internal(&cause),
        }
    }
}

impl From<RecordError> for ApiError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::NotFound => ApiError::not_found("No relay with this token in the API key's environment."),
            RecordError::Sandbox => ApiError::unprocessable("Sandbox relays always pass; they take no result."),
            RecordError::AlreadyRecorded => ApiError::conflict("A result was already recorded for this relay."),
            RecordError::ClaimTooLarge { needed, max } => ApiError::unprocessable(format!(
                "The claim with this methodology is {needed} bytes; the relay's encryption key holds at most {max}. Nothing was recorded."
            )),
            RecordError::Store(s) => s.into(),
        }
    }
}

impl From<RedeemError> for ApiError {
    /// Every refusal but a bad token (a 401 with a fresh challenge, which
    /// the redemption handler builds).
    fn from(e: RedeemError) -> Self {
        match e {
            RedeemError::InvalidToken(why) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "Privacy Pass token required", token_rejection(why))
            }
            RedeemError::Pending => {
                ApiError::forbidden("The claim result is not available yet. Retry later.").retry_after(5)
            }
            RedeemError::PayloadTooLarge => ApiError::unprocessable(
                "The claim payload does not fit in one RSA-OAEP block of the relay's encryption key.",
            ),
            RedeemError::Store(s) => s.into(),
            RedeemError::Internal(cause) => ApiError::internal(&cause),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use blindpass_protocol::api::{ErrorBody, ErrorItem};

    use super::*;

    #[test]
    fn the_body_is_the_contracts_error_body_whatever_the_text() {
        let e = ApiError::bad_request("a \"quoted\" \\ line\nbreak and ünïcode \u{0}");
        let body: ErrorBody = serde_json::from_slice(&e.body()).unwrap();
        let item = ErrorItem { title: "Bad Request".into(), details: e.details.clone() };
        assert_eq!(body, ErrorBody { errors: vec![item] });
    }
}
