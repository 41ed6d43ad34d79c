//! Every word a client reads about a failure, and the status and headers
//! that go with it: [`reply`] turns an [`ApiError`] into what is sent.

use axum::http::StatusCode;
use blindpass_service::lifecycle::NotIssuing;
use blindpass_service::{AuthError, IssueError, RecordError, RedeemError, RelayError, StoreError, TokenRejection};

use super::{ApiError, BadRequest, NoApiKey, Unprocessable};

/// An error as it goes out: status, Persona's title and details, headers.
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) title: &'static str,
    pub(super) details: String,
    pub(super) retry_after: Option<u64>,
    pub(super) cause: Option<String>,
}

impl Reply {
    fn new(status: StatusCode, title: &'static str, details: impl Into<String>) -> Self {
        Self { status, title, details: details.into(), retry_after: None, cause: None }
    }

    fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    fn caused_by(mut self, cause: &(dyn std::error::Error + 'static)) -> Self {
        self.cause = Some(blindpass_service::chain(cause));
        self
    }
}

/// `e` as it goes out.
pub(super) fn reply(e: ApiError) -> Reply {
    match e {
        ApiError::BadRequest(why) => Reply::new(StatusCode::BAD_REQUEST, "Bad Request", bad_request(why)),
        ApiError::Unprocessable(why) => unprocessable(unprocessable_details(why)),
        ApiError::Issue(e) => issue(e),
        ApiError::IssueByTruncatedId(IssueError::UnknownKey) => {
            unprocessable("No issuing key matches truncated_token_key_id.")
        }
        ApiError::IssueByTruncatedId(e) => issue(e),
        ApiError::NothingIssued(first) => nothing_issued(first),
        ApiError::Relay(e) => relay(e),
        ApiError::Record(e) => record(e),
        ApiError::Redeem(e) => redeem(e),
        ApiError::Auth(AuthError::Store(e)) | ApiError::Store(e) => store(e),
        ApiError::Internal(cause) => internal(&cause),
        e @ (ApiError::IdempotencyMismatch { .. }
        | ApiError::IdempotencyInFlight
        | ApiError::Unauthenticated(_)
        | ApiError::Auth(_)
        | ApiError::TokenRequired(_)
        | ApiError::MissingPermission(_)
        | ApiError::RelayNotFound { .. }) => access(e),
        other => transport(other),
    }
}

/// Who may do what, with which key or token, and idempotency keys.
fn access(e: ApiError) -> Reply {
    match e {
        ApiError::IdempotencyMismatch { key } => Reply::new(
            StatusCode::BAD_REQUEST,
            "Idempotency error",
            format!(
                "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
            ),
        ),
        ApiError::Unauthenticated(NoApiKey::Missing) => {
            unauthenticated("Provide an API key in the Authorization header: Bearer <key>.")
        }
        ApiError::Auth(AuthError::Revoked) => forbidden("The API key has been revoked."),
        ApiError::TokenRequired(why) => Reply::new(
            StatusCode::UNAUTHORIZED,
            "Privacy Pass token required",
            why.map_or("Request a challenge to obtain a token", token_rejection),
        ),
        ApiError::MissingPermission(permission) => {
            forbidden(format!("The API key does not have the {permission} permission."))
        }
        ApiError::RelayNotFound { with_secret: false } => not_found("No relay matches this token."),
        ApiError::RelayNotFound { with_secret: true } => not_found("No relay matches this token and secret."),
        ApiError::IdempotencyInFlight => Reply::new(
            StatusCode::CONFLICT,
            "Conflict",
            "A request with this Idempotency-Key is still being processed. Retry after it completes.",
        )
        .retry_after(1),
        _ => unauthenticated("The API key is invalid."),
    }
}

/// HTTP itself: routes, methods, sizes, media types, time and load.
fn transport(e: ApiError) -> Reply {
    use StatusCode as S;
    match e {
        ApiError::NoSuchEndpoint => Reply::new(S::NOT_FOUND, "Not found", "No such endpoint."),
        ApiError::MethodNotAllowed => {
            Reply::new(S::METHOD_NOT_ALLOWED, "Method Not Allowed", "This endpoint does not accept this method.")
        }
        ApiError::BodyTimedOut => Reply::new(
            S::REQUEST_TIMEOUT,
            "Request Timeout",
            "The request body did not arrive in time. Send it at once, with the request.",
        ),
        ApiError::PayloadTooLarge(limit) => Reply::new(
            S::PAYLOAD_TOO_LARGE,
            "Payload Too Large",
            format!("The request body must be at most {limit} bytes."),
        ),
        ApiError::UriTooLong(max) => {
            Reply::new(S::URI_TOO_LONG, "URI Too Long", format!("The request target must be at most {max} bytes."))
        }
        ApiError::UnsupportedMediaType(expected) => Reply::new(
            S::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Media Type",
            format!("Send the request body as {expected}."),
        ),
        ApiError::RateLimited { limit, retry_after } => Reply::new(
            S::TOO_MANY_REQUESTS,
            "Rate limit exceeded",
            format!(
                "You have hit your rate limit of {limit} requests / min. Please wait {retry_after} seconds before retrying."
            ),
        )
        .retry_after(retry_after),
        ApiError::TooManyInFlight(max) => Reply::new(
            S::TOO_MANY_REQUESTS,
            "Too many concurrent requests",
            format!("This client has {max} requests in flight, the most it may have. Please retry."),
        )
        .retry_after(1),
        ApiError::TimedOut => {
            Reply::new(S::SERVICE_UNAVAILABLE, "Request timeout", "The request took too long. Please retry.")
                .retry_after(1)
        }
        _ => unavailable("The server is answering too many requests. Please retry.", 1),
    }
}

fn nothing_issued(first: Option<IssueError>) -> Reply {
    let why = match first {
        None => "this issuer issues token types 1, 2 and 5 only".to_owned(),
        Some(IssueError::UnknownKey) => "no issuing key matches a truncated_token_key_id".to_owned(),
        Some(e) => issue(e).details,
    };
    Reply::new(StatusCode::BAD_REQUEST, "Bad Request", format!("No token of the batch was issued: {why}"))
}

fn unauthenticated(details: &'static str) -> Reply {
    Reply::new(StatusCode::UNAUTHORIZED, "Must be authenticated to access this endpoint", details)
}

fn forbidden(details: impl Into<String>) -> Reply {
    Reply::new(StatusCode::FORBIDDEN, "Forbidden", details)
}

fn not_found(details: &'static str) -> Reply {
    Reply::new(StatusCode::NOT_FOUND, "Record not found", details)
}

fn unprocessable(details: impl Into<String>) -> Reply {
    Reply::new(StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable entity", details)
}

fn unavailable(details: &'static str, retry_after: u64) -> Reply {
    Reply::new(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable", details).retry_after(retry_after)
}

fn internal(cause: &(dyn std::error::Error + 'static)) -> Reply {
    Reply::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error", "An unexpected error occurred.")
        .caused_by(cause)
}

fn store(e: StoreError) -> Reply {
    match e {
        StoreError::Unavailable(_) => {
            unavailable("The service is temporarily unavailable. Please retry.", 1).caused_by(&e)
        }
        other => internal(&other),
    }
}

fn bad_request(why: BadRequest) -> String {
    match why {
        BadRequest::NotJson => "The body is not valid JSON.".into(),
        BadRequest::NotAnObject => "The body must be a JSON object.".into(),
        BadRequest::Repeated(key) => format!("Parameter {key:?} is given more than once."),
        BadRequest::Missing(path) => format!("Missing required parameter {path:?}."),
        BadRequest::Unknown(field) => format!("Unknown parameter {field:?}."),
        BadRequest::Invalid { path, message } => format!("Parameter {path:?} is invalid: {message}."),
        BadRequest::BlindedTokenEncoding => "blinded-token must be base64url.".into(),
        BadRequest::KeyIdEncoding => "key-id must be 64 hexadecimal characters.".into(),
        BadRequest::ClaimType { max } => format!("claim-type must be 1 to {max} letters, digits, '_', '-' or '.'."),
        BadRequest::Methodology { max_methods, max_len } => format!(
            "methodology must be at most {max_methods} {{\"method\": string of 1 to {max_len} characters, \"result\": \"passed\" or \"failed\"}}."
        ),
        BadRequest::HeaderNotText(name) => format!("{name} must be ASCII text."),
        BadRequest::KeyInflection(v) => format!("Key-Inflection must be one of camel, kebab, snake; got {v:?}."),
        BadRequest::PersonaVersion { given, supported } => {
            format!("Persona-Version {given:?} is not a supported version ({}).", supported.join(", "))
        }
        BadRequest::IdempotencyKeyLength { max } => format!("Idempotency-Key must be 1 to {max} characters."),
        BadRequest::SandboxFlag => "sandbox must be true or false.".into(),
        BadRequest::QueryParameter => "The only query parameter is sandbox.".into(),
    }
}

fn unprocessable_details(why: Unprocessable) -> String {
    match why {
        Unprocessable::TokenRequestLength { token_type, len } => {
            format!("A TokenRequest for token type {token_type} is exactly {len} bytes.")
        }
        Unprocessable::BlindRsaTokenRequestLength => "A TokenRequest for token type 2 is exactly 259 bytes.".into(),
        Unprocessable::UnsupportedTokenType(t) => format!("Unsupported token type {t:#06x}."),
        Unprocessable::Batch(e) => format!("The batch token request cannot be decoded: {e}."),
        Unprocessable::EmptyBatch => "A batch token request holds at least one token request.".into(),
        Unprocessable::BatchTooLarge { found, max } => {
            format!("A batch token request holds at most {max} token requests; this one holds {found}. Split it.")
        }
        Unprocessable::AmortizedBatch(e) => format!("The amortized batch token request cannot be decoded: {e}."),
        Unprocessable::AmortizedTokenType(t) => format!("Amortized batches are for token types 1 and 5, not {t:#06x}."),
        Unprocessable::AmortizedTooLarge { found, max } => {
            format!("An amortized batch holds at most {max} elements; this one holds {found}. Split it.")
        }
        Unprocessable::EncryptionJwk(e) => {
            format!("encryption-key-jwk: {e}. It must be an RSA public key for RSA-OAEP-256.")
        }
        Unprocessable::TwoEncryptionKeys => "Give encryption-key-pem or encryption-key-jwk, not both.".into(),
    }
}

/// The words a client reads when its token is refused (401).
fn token_rejection(why: TokenRejection) -> &'static str {
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

fn issue(e: IssueError) -> Reply {
    match e {
        IssueError::UnknownKey => not_found("No signing key matches key-id."),
        IssueError::WrongEnvironment => forbidden("key-id belongs to a different environment than the API key."),
        IssueError::KeyNotActive(why) => unprocessable(match why {
            NotIssuing::NotYetValid => "The signing key is not yet valid.",
            NotIssuing::RotatedOut => "The signing key is rotated out.",
            NotIssuing::Retired => "The signing key is retired.",
        }),
        IssueError::WrongLength { expected, found } => unprocessable(format!(
            "blinded-token must decode to {expected} bytes (the key's modulus length); found {found}."
        )),
        IssueError::InvalidElement => unprocessable("A blinded element is not a valid element of the key's group."),
        IssueError::UnsupportedTokenType(t) => {
            unprocessable(format!("This issuer does not issue token type {t:#06x}."))
        }
        IssueError::OutOfRange => unprocessable("blinded-token is not a valid message representative for the key."),
        IssueError::Busy => unavailable("The server is answering too many requests. Please retry.", 1),
        IssueError::SignerUnavailable => {
            unavailable("The issuer's signing key is unavailable for now. Please retry.", 5)
        }
        IssueError::Store(s) => store(s),
        e @ IssueError::Internal(_) => internal(&e),
    }
}

fn relay(e: RelayError) -> Reply {
    match e {
        RelayError::NotFound => not_found("No relay matches this token and secret."),
        RelayError::BadEncryptionKey => unprocessable(
            "encryption-key-pem must be a PEM RSA public key (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY) of 2048 to 4096 bits.",
        ),
        e @ (RelayError::KeyTooSmallForClaim { .. } | RelayError::BadEncryptionJwk) => unprocessable(format!("{e}.")),
        RelayError::NoKey => unavailable("The service is temporarily unavailable. Please retry.", 1),
        RelayError::Store(s) => store(s),
        e @ RelayError::Internal(_) => internal(&e),
    }
}

fn record(e: RecordError) -> Reply {
    match e {
        RecordError::NotFound => not_found("No relay with this token in the API key's environment."),
        RecordError::Sandbox => unprocessable("Sandbox relays always pass; they take no result."),
        RecordError::AlreadyRecorded => {
            Reply::new(StatusCode::CONFLICT, "Conflict", "A result was already recorded for this relay.")
        }
        RecordError::ClaimTooLarge { needed, max } => unprocessable(format!(
            "The claim with this methodology is {needed} bytes; the relay's encryption key holds at most {max}. Nothing was recorded."
        )),
        RecordError::Store(s) => store(s),
    }
}

/// Every refusal but a bad token ([`ApiError::TokenRequired`]).
fn redeem(e: RedeemError) -> Reply {
    match e {
        RedeemError::InvalidToken(why) => {
            Reply::new(StatusCode::UNAUTHORIZED, "Privacy Pass token required", token_rejection(why))
        }
        RedeemError::Pending => forbidden("The claim result is not available yet. Retry later.").retry_after(5),
        RedeemError::PayloadTooLarge => {
            unprocessable("The claim payload does not fit in one RSA-OAEP block of the relay's encryption key.")
        }
        RedeemError::Unprotected(why) => Reply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service unavailable",
            format!("Redemptions are paused: {why}, so a spend acknowledged now could be lost. Retry later."),
        )
        .retry_after(5),
        RedeemError::Store(s) => store(s),
        e @ RedeemError::Internal(_) => internal(&e),
    }
}
