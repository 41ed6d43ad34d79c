//! The one place where failures become HTTP: status, Persona's error body
//! `{"errors":[{"title","details"}]}`, and headers such as `Retry-After`.
//! A 5xx never carries internal detail to the client; it is logged instead.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use blindpass_service::lifecycle::NotIssuing;
use blindpass_service::{AuthError, IssueError, RecordError, RelayError, StoreError, TokenRejection};

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
}

impl ApiError {
    /// An error with `status`, `title` and `details`.
    pub fn new(status: StatusCode, title: impl Into<String>, details: impl Into<String>) -> Self {
        Self { status, title: title.into(), details: details.into(), retry_after: None }
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

    /// 429 with `Retry-After`.
    pub fn rate_limited(limit: u64, retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Rate limit exceeded",
            format!(
                "You have hit your rate limit of {limit} requests / min. Please wait {retry_after} seconds before retrying."
            ),
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// 503 with `Retry-After`: the store is unavailable.
    pub fn unavailable() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service unavailable",
            "The service is temporarily unavailable. Please retry.",
        );
        e.retry_after = Some(1);
        e
    }

    /// 500: logs `cause`, tells the client nothing about it.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error", "An unexpected error occurred.")
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Item<'a> {
            title: &'a str,
            details: &'a str,
        }
        #[derive(serde::Serialize)]
        struct Body<'a> {
            errors: [Item<'a>; 1],
        }
        let body = Body { errors: [Item { title: &self.title, details: &self.details }] };
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, json_headers(), self.body()).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// `Content-Type: application/json; charset=utf-8`.
pub(crate) fn json_headers() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"))]
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "store unavailable");
                ApiError::unavailable()
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
            IssueError::OutOfRange => {
                ApiError::unprocessable("blinded-token is not a valid message representative for the key.")
            }
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
            e @ RelayError::KeyTooSmallForClaim { .. } => ApiError::unprocessable(format!("{e}.")),
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
