//! What every Persona-dialect response carries, owned by one middleware:
//! `RateLimit-*` for whatever counted the request, `Persona-Environment-Id`
//! and `Persona-Organization-Id` once the environment is known, the echoed
//! `Persona-Version`, and `Cache-Control: no-store`. (`Request-Id` is the
//! outermost middleware's, on every response.)
//!
//! The layers and handlers that learn the environment or count the request
//! write it into the request's [`Envelope`]; `persona_envelope` reads it
//! back once the response exists, whatever produced it.

use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use blindpass_service::{Environment, RateLimitStatus};

use crate::AppState;
use crate::error::{ApiError, BadRequest};
use crate::inflection::Inflection;

/// `Persona-Version` values Persona's OpenAPI lists (plus the 2026-09-29
/// docs version).
pub const PERSONA_VERSIONS: &[&str] = &[
    "2026-09-29",
    "2025-12-08",
    "2025-10-27",
    "2023-01-05",
    "2022-09-01",
    "2021-08-18",
    "2021-07-05",
    "2021-02-21",
    "2020-05-18",
];

/// Maximum length of an `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// What a request has learned about itself that its response must carry.
#[derive(Debug, Clone, Default)]
pub struct Envelope(Arc<Mutex<Learned>>);

#[derive(Debug, Clone, Copy, Default)]
struct Learned {
    environment: Option<Environment>,
    rate: Option<RateLimitStatus>,
}

impl Envelope {
    /// The request belongs to `environment`.
    pub fn environment(&self, environment: Environment) {
        self.update(|l| l.environment = Some(environment));
    }

    /// The request was counted: `rate` is what `RateLimit-*` report (the
    /// tighter of two counts, when a request is counted twice).
    pub fn counted(&self, rate: Option<RateLimitStatus>) {
        self.update(|l| l.rate = RateLimitStatus::tightest(l.rate, rate));
    }

    /// Records the count and refuses the request if it is over its limit.
    pub fn admit(&self, rate: Option<RateLimitStatus>) -> Result<(), ApiError> {
        self.counted(rate);
        match rate {
            Some(r) if !r.allowed => {
                Err(ApiError::RateLimited { limit: r.limit, retry_after: r.reset_secs.max(1) as u64 })
            }
            _ => Ok(()),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Learned)) {
        // A poisoned lock only means a panic elsewhere; the data is plain.
        let mut learned = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut learned);
    }

    fn learned(&self) -> Learned {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Envelope {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Envelope>().cloned().unwrap_or_default())
    }
}

/// The middleware around every Persona-dialect route.
pub(crate) async fn persona_envelope(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let envelope = Envelope::default();
    request.extensions_mut().insert(envelope.clone());
    let version = valid_version(request.headers());
    let mut response = next.run(request).await;
    let learned = envelope.learned();
    let headers = response.headers_mut();
    rate_limit_headers(headers, learned.rate);
    if let Some(env) = learned.environment {
        insert(headers, "persona-environment-id", state.ids.environment(env));
        insert(headers, "persona-organization-id", &state.ids.organization);
    }
    if let Some(v) = version {
        headers.insert(HeaderName::from_static("persona-version"), v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `RateLimit-Limit`, `-Remaining` and `-Reset` for `rate`, if counted.
pub(crate) fn rate_limit_headers(headers: &mut HeaderMap, rate: Option<RateLimitStatus>) {
    if let Some(r) = rate {
        headers.insert(HeaderName::from_static("ratelimit-limit"), HeaderValue::from(r.limit));
        headers.insert(HeaderName::from_static("ratelimit-remaining"), HeaderValue::from(r.remaining));
        headers.insert(HeaderName::from_static("ratelimit-reset"), HeaderValue::from(r.reset_secs.max(0)));
    }
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// The request's `Persona-Version`, if it is one we know.
fn valid_version(headers: &HeaderMap) -> Option<HeaderValue> {
    let v = headers.get("persona-version")?.to_str().ok()?.trim();
    PERSONA_VERSIONS.contains(&v).then(|| HeaderValue::from_str(v).ok()).flatten()
}

/// The optional Persona request headers, validated once.
#[derive(Debug, Clone, Default)]
pub struct PersonaHeaders {
    /// Response key style.
    pub inflection: Inflection,
    /// The `Idempotency-Key`, if any.
    pub idempotency_key: Option<String>,
}

impl PersonaHeaders {
    /// Validates `Key-Inflection`, `Persona-Version` and `Idempotency-Key`.
    pub fn parse(headers: &HeaderMap) -> Result<Self, ApiError> {
        let inflection = match text(headers, "key-inflection")? {
            None => Inflection::default(),
            Some(v) => Inflection::parse(v).ok_or_else(|| BadRequest::KeyInflection(v.to_owned()))?,
        };
        if let Some(v) = text(headers, "persona-version")?
            && !PERSONA_VERSIONS.contains(&v.trim())
        {
            return Err(BadRequest::PersonaVersion { given: v.to_owned(), supported: PERSONA_VERSIONS }.into());
        }
        let idempotency_key = match text(headers, "idempotency-key")? {
            Some(k) if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_LEN => {
                return Err(BadRequest::IdempotencyKeyLength { max: MAX_IDEMPOTENCY_KEY_LEN }.into());
            }
            k => k.map(str::to_owned),
        };
        Ok(Self { inflection, idempotency_key })
    }
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers.get(name).map(|v| v.to_str().map_err(|_| BadRequest::HeaderNotText(name.to_owned()).into())).transpose()
}

impl<S: Send + Sync> FromRequestParts<S> for PersonaHeaders {
    type Rejection = ApiError;

    /// The headers the idempotency layer already validated, or validates
    /// them now.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<PersonaHeaders>() {
            Some(parsed) => Ok(parsed.clone()),
            None => Self::parse(&parts.headers),
        }
    }
}
