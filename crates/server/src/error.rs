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
use blindpass_service::{
    AuthError, Cause, IssueError, Permission, RecordError, RedeemError, RelayError, StoreError, TokenRejection,
};
use serde_json::Value;

mod words;

/// Every failure the API answers, as data. Its [`IntoResponse`] (through
/// `words::reply`) is the one place that gives each its status, its words
/// and its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400: a request this server cannot read.
    BadRequest(BadRequest),
    /// 400 `Idempotency error`: the key was first used with other parameters.
    IdempotencyMismatch {
        /// The `Idempotency-Key`.
        key: String,
    },
    /// 401: no API key, or one that is not a key.
    Unauthenticated(NoApiKey),
    /// 401 `Privacy Pass token required` (the redemption handler adds the
    /// relay's challenges).
    TokenRequired(Option<TokenRejection>),
    /// 403: the API key lacks this permission.
    MissingPermission(Permission),
    /// 404: no route.
    NoSuchEndpoint,
    /// 404: no relay with this token (and secret, when `with_secret`).
    RelayNotFound {
        /// Whether a relay secret was part of the lookup.
        with_secret: bool,
    },
    /// 405: the route does not take this method.
    MethodNotAllowed,
    /// 408: the body missed its deadline.
    BodyTimedOut,
    /// 409 + `Retry-After`: the same `Idempotency-Key` is still running.
    IdempotencyInFlight,
    /// 413: a body over this many bytes.
    PayloadTooLarge(usize),
    /// 414: a request target over this many bytes.
    UriTooLong(usize),
    /// 415: a body that is not of these media types.
    UnsupportedMediaType(String),
    /// 422: a request read but not acceptable.
    Unprocessable(Unprocessable),
    /// 429 + `Retry-After`: a rate limit of `limit` a minute.
    RateLimited {
        /// Requests a minute.
        limit: u64,
        /// Seconds until the window resets.
        retry_after: u64,
    },
    /// 429 + `Retry-After`: the client has this many requests in flight.
    TooManyInFlight(usize),
    /// 503 + `Retry-After`: more requests in flight than the server takes.
    Overloaded,
    /// 503 + `Retry-After`: the request timed out.
    TimedOut,
    /// An issuance refused by the service.
    Issue(IssueError),
    /// An issuance naming its key by truncated id, refused.
    IssueByTruncatedId(IssueError),
    /// No token of a batch was issued (the first item's refusal, if any).
    NothingIssued(Option<IssueError>),
    /// A relay refused by the service.
    Relay(RelayError),
    /// A claim result refused by the service.
    Record(RecordError),
    /// A redemption refused by the service (a bad token is
    /// [`ApiError::TokenRequired`]).
    Redeem(RedeemError),
    /// An API key refused by the service.
    Auth(AuthError),
    /// The store failed (503 when it is unavailable, else 500).
    Store(StoreError),
    /// 500: the client learns nothing of the cause; the log does.
    Internal(Cause),
}

/// Why a request cannot be read (400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadRequest {
    /// The body is not JSON.
    NotJson,
    /// The body is JSON but not an object.
    NotAnObject,
    /// A parameter spelled twice (in two casings).
    Repeated(String),
    /// A required parameter is missing (its path).
    Missing(String),
    /// A parameter the route does not take.
    Unknown(String),
    /// A parameter of the wrong shape: its path and serde's words.
    Invalid {
        /// Where.
        path: String,
        /// serde's description.
        message: String,
    },
    /// `blinded-token` is not base64url.
    BlindedTokenEncoding,
    /// `key-id` is not 64 hexadecimal characters.
    KeyIdEncoding,
    /// `claim-type` is not a claim type of at most `max` bytes.
    ClaimType {
        /// The longest claim type taken.
        max: usize,
    },
    /// `methodology` is too long or has an unnamed method.
    Methodology {
        /// The most methods taken.
        max_methods: usize,
        /// The longest method name taken.
        max_len: usize,
    },
    /// This header is not ASCII text.
    HeaderNotText(String),
    /// `Key-Inflection` is none of camel, kebab, snake.
    KeyInflection(String),
    /// `Persona-Version` is not one this server speaks.
    PersonaVersion {
        /// The version asked for.
        given: String,
        /// The versions this server speaks.
        supported: &'static [&'static str],
    },
    /// `Idempotency-Key` is empty or over `max` characters.
    IdempotencyKeyLength {
        /// The longest key taken.
        max: usize,
    },
    /// `sandbox=` is neither true nor false.
    SandboxFlag,
    /// A query parameter other than `sandbox`.
    QueryParameter,
}

/// Why a request that was read is refused (422).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unprocessable {
    /// A `TokenRequest` of a VOPRF token type that is not `len` bytes.
    TokenRequestLength {
        /// The token type.
        token_type: u16,
        /// Its exact length.
        len: usize,
    },
    /// A `TokenRequest` of type 2 of the wrong size.
    BlindRsaTokenRequestLength,
    /// A token type this issuer does not know.
    UnsupportedTokenType(u16),
    /// A generic batch that does not decode (the decoder's words).
    Batch(String),
    /// A generic batch with no item.
    EmptyBatch,
    /// A generic batch over the cap.
    BatchTooLarge {
        /// Items found.
        found: usize,
        /// The cap.
        max: usize,
    },
    /// An amortized batch that does not decode (the decoder's words).
    AmortizedBatch(String),
    /// An amortized batch of a type other than 1 and 5.
    AmortizedTokenType(u16),
    /// An amortized batch over the cap.
    AmortizedTooLarge {
        /// Elements found.
        found: usize,
        /// The cap.
        max: usize,
    },
    /// `encryption-key-jwk` is not an RSA-OAEP-256 key (the parser's words).
    EncryptionJwk(String),
    /// Both `encryption-key-pem` and `encryption-key-jwk`.
    TwoEncryptionKeys,
}

/// Why a request carries no usable API key (401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoApiKey {
    /// No `Authorization: Bearer <key>`.
    Missing,
    /// A header that is not text.
    Invalid,
}

/// The cause of a 5xx, attached to its response for the request log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalCause(pub String);

impl ApiError {
    /// 500 caused by `error`.
    pub fn internal(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Internal(Cause::of(error))
    }

    /// 500 for a broken invariant of this server, said in `what`.
    pub fn bug(what: &'static str) -> Self {
        Self::Internal(Cause::from(what))
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        words::reply(self.clone()).status
    }

    /// `errors[0].details`, the words the client reads.
    pub fn details(&self) -> String {
        words::reply(self.clone()).details
    }

    /// The JSON body: [`ErrorBody`] with one item, written without a
    /// fallible serializer (a JSON string value always renders).
    pub fn body(&self) -> Vec<u8> {
        let reply = words::reply(self.clone());
        error_body(reply.title, &reply.details)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let reply = words::reply(self);
        let body = error_body(reply.title, &reply.details);
        let mut response = (reply.status, json_headers(), body).into_response();
        if let Some(secs) = reply.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(cause) = reply.cause {
            response.extensions_mut().insert(InternalCause(cause));
        }
        response
    }
}

/// Persona's error body with one item.
fn error_body(title: &str, details: &str) -> Vec<u8> {
    let (title, details) = (Value::from(title), Value::from(details));
    format!(r#"{{"errors":[{{"title":{title},"details":{details}}}]}}"#).into_bytes()
}

/// `Content-Type: application/json; charset=utf-8`.
pub(crate) fn json_headers() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CONTENT_TYPE, HeaderValue::from_static(crate::JSON))]
}

/// `impl From<$from> for ApiError`, each into its own variant.
macro_rules! into_variant {
    ($($from:ty => $variant:ident),* $(,)?) => {$(
        impl From<$from> for ApiError {
            fn from(e: $from) -> Self {
                ApiError::$variant(e)
            }
        }
    )*};
}

into_variant! {
    StoreError => Store,
    AuthError => Auth,
    IssueError => Issue,
    RelayError => Relay,
    RecordError => Record,
    BadRequest => BadRequest,
    Unprocessable => Unprocessable,
}

impl From<RedeemError> for ApiError {
    /// A bad token is [`ApiError::TokenRequired`].
    fn from(e: RedeemError) -> Self {
        match e {
            RedeemError::InvalidToken(why) => ApiError::TokenRequired(Some(why)),
            other => ApiError::Redeem(other),
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
        let e = ApiError::BadRequest(BadRequest::Unknown("a \"quoted\" \\ line\nbreak and ünïcode \u{0}".into()));
        let body: ErrorBody = serde_json::from_slice(&e.body()).unwrap();
        let item = ErrorItem { title: "Bad Request".into(), details: e.details() };
        assert_eq!(body, ErrorBody { errors: vec![item] });
    }
}
