//! # blindpass-server
//!
//! The HTTP API. [`router`] builds the axum `Router` from an [`AppState`];
//! tests drive it without a socket. [`serve`] binds it to an address with
//! graceful shutdown.
//!
//! Every response carries `Request-Id`; every error is Persona's
//! `{"errors":[{"title","details"}]}` from [`error::ApiError`], the one place
//! that maps failures to statuses. Nothing a client sends produces a 500.

#![forbid(unsafe_code)]

pub mod admission;
pub mod api_key;
mod background;
mod batch;
pub mod client_addr;
pub mod envelope;
pub mod error;
pub mod idempotency;
pub mod inflection;
pub mod json;
mod metrics;
pub mod openapi;
mod ops;
mod privacy_passes;
mod redeem;
mod relays;
mod rfc;
pub mod tls;

pub use ops::{METRICS_PATH, READY_PATH};
pub mod transport;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use blindpass_protocol::api::{CHALLENGE_PATH, PRIVACY_PASSES_PATH, RELAYS_PATH};
use blindpass_service::{Environment, Permission, Service};
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;

use crate::error::{ApiError, InternalCause};

/// `Content-Type` of every JSON response.
pub const JSON: &str = "application/json; charset=utf-8";

/// Ids reported in `Persona-Organization-Id` / `Persona-Environment-Id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    /// `org_…`.
    pub organization: String,
    /// `env_…` of the sandbox environment.
    pub sandbox: String,
    /// `env_…` of the production environment.
    pub production: String,
}

impl Ids {
    /// The id of `environment`.
    pub fn environment(&self, environment: Environment) -> &str {
        match environment {
            Environment::Sandbox => &self.sandbox,
            Environment::Production => &self.production,
        }
    }
}

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Time after which a request is answered 503.
    pub request_timeout: Duration,
    /// How requests share the node: in-flight caps per class and per
    /// client, the body read deadline (see [`admission`]).
    pub admission: admission::AdmissionLimits,
    /// Longest accepted request target (path and query), in bytes (414).
    pub max_uri_bytes: usize,
    /// Most token requests in one batch (422 past it).
    pub max_batch_size: usize,
    /// Connection-level limits (see [`transport`]).
    pub connections: transport::ConnectionLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(30),
            admission: admission::AdmissionLimits::default(),
            max_uri_bytes: 2048,
            max_batch_size: 100,
            connections: transport::ConnectionLimits::default(),
        }
    }
}

/// Longest path logged (the rest is cut, with its length noted).
const MAX_LOGGED_PATH: usize = 256;

/// What every handler shares. Every middleware layer clones it for every
/// request, so everything in it is behind an `Arc` (cloning the ids' three
/// strings showed in the redemption profile).
#[derive(Debug, Clone)]
pub struct AppState {
    /// The use cases.
    pub service: Service,
    /// Organization and environment ids.
    pub ids: Arc<Ids>,
    /// Request limits.
    pub limits: Limits,
    /// Proxies whose `Forwarded` / `X-Forwarded-For` name the client.
    pub trusted_proxies: Arc<client_addr::TrustedProxies>,
    /// Whether `/metrics` is served on this router (false when the metrics
    /// have a listener of their own: [`metrics_router`]).
    pub expose_metrics: bool,
}

impl axum::extract::FromRef<AppState> for Service {
    fn from_ref(state: &AppState) -> Self {
        state.service.clone()
    }
}

/// The whole HTTP API. Each route reads as its stack, outermost first:
/// the envelope (Persona routes), then who may call (API key or relay), then
/// idempotency, then the handler.
pub fn router(state: AppState) -> Router {
    let admission = Arc::new(admission::Admission::new(state.limits.admission));
    let trusted = Arc::clone(&state.trusted_proxies);
    let http_metrics = metrics::HttpMetrics::of(&state.service);
    let shed_metrics = Arc::clone(&http_metrics);
    let s = &state;
    let persona = Router::new();
    let persona = documented(
        persona,
        PRIVACY_PASSES_PATH,
        with_api_key(s, Permission::PrivacyPassWrite, post(privacy_passes::create)),
    );
    let persona = documented(
        persona,
        rfc::TOKEN_REQUEST_PATH,
        with_api_key(s, Permission::PrivacyPassWrite, post(rfc::token_request)),
    );
    let persona = documented(persona, CHALLENGE_PATH, anonymous(s, post(relays::challenge)));
    let persona = documented(persona, RELAYS_PATH, anonymous(s, post(relays::create)));
    let persona = documented(
        persona,
        "/api/privacy/v1/relays/{relay_token}/result",
        with_api_key(s, Permission::RelayVerify, post(relays::result)),
    );
    let persona = documented(persona, "/api/privacy/v1/relays/{relay_token}/generate-claim", redemption(s))
        .route_layer(middleware::from_fn_with_state(state.clone(), envelope::persona_envelope));
    let mut public = Router::new();
    if state.expose_metrics {
        public = documented(public, METRICS_PATH, get(metrics::scrape::<AppState>));
    }
    let public = documented(public, "/health", get(ops::health));
    let public = documented(public, READY_PATH, get(ops::ready));
    let public = documented(public, openapi::OPENAPI_PATH, get(ops::serve_openapi));
    let public = documented(public, rfc::DIRECTORY_PATH, get(rfc::directory));
    let public = documented(public, rfc::DIRECTORY_ALIAS_PATH, get(rfc::directory));
    public
        .merge(persona)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(|_| ApiError::bug("handler panicked").into_response()))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            admission::admit(Arc::clone(&admission), Arc::clone(&trusted), Arc::clone(&shed_metrics), request, next)
        }))
        .layer(middleware::from_fn_with_state(state.clone(), request_context))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            metrics::observe(Arc::clone(&http_metrics), request, next)
        }))
        .with_state(state)
}

/// `/metrics` alone, for `--metrics-listen` (a listener operators keep off
/// the public network).
pub fn metrics_router(service: Service) -> Router {
    // The edge's metrics are listed from the first scrape, whichever
    // listener starts first.
    let _ = metrics::HttpMetrics::of(&service);
    Router::new().route(METRICS_PATH, get(metrics::scrape::<Service>)).fallback(not_found).with_state(service)
}

/// `router.route(path, route)`, for a path the OpenAPI document describes
/// (checked in debug builds, so a route added without its documentation
/// fails every test that builds the router).
fn documented(router: Router<AppState>, path: &str, route: MethodRouter<AppState>) -> Router<AppState> {
    debug_assert!(openapi::documents(path), "{path} is served but not in the OpenAPI document (openapi.rs)");
    router.route(path, route)
}

/// An API-key route: [`api_key::require_api_key`] with `permission`, then
/// idempotency, then `route`.
fn with_api_key(state: &AppState, permission: Permission, route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    let require = move |s: State<AppState>, client, envelope, request, next| {
        api_key::require_api_key(s, permission, client, envelope, request, next)
    };
    route
        .route_layer(middleware::from_fn_with_state(state.clone(), idempotency::idempotent))
        .route_layer(middleware::from_fn_with_state(state.clone(), require))
}

/// An anonymous Persona route: the client's rate limit is counted before
/// the body is read ([`relays::count_client`]), then `route`.
fn anonymous(state: &AppState, route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.route_layer(middleware::from_fn_with_state(state.clone(), relays::count_client))
}

/// generate-claim: the relay's gates, then the rest in a task of its own,
/// then idempotency, then the redemption.
fn redemption(state: &AppState) -> MethodRouter<AppState> {
    post(redeem::generate_claim)
        .route_layer(middleware::from_fn_with_state(state.clone(), idempotency::idempotent))
        .route_layer(middleware::from_fn_with_state(state.clone(), redeem::run_to_completion))
        .route_layer(middleware::from_fn_with_state(state.clone(), redeem::admit_relay))
}

/// Loads (creating on first start) the organization and environment ids,
/// unless `configured` overrides them.
pub async fn load_ids(service: &Service, configured: &IdOverrides) -> Result<Ids, blindpass_service::StoreError> {
    let get = async |name: &str, prefix: &str, given: &Option<String>| {
        if let Some(v) = given {
            return Ok::<_, blindpass_service::StoreError>(v.clone());
        }
        let fresh = random_id(service.entropy(), prefix);
        let stored = service.store().setting_get_or_insert(name, fresh.as_bytes()).await?;
        Ok(String::from_utf8_lossy(&stored).into_owned())
    };
    Ok(Ids {
        organization: get("organization_id", "org_", &configured.organization).await?,
        sandbox: get("environment_id.sandbox", "env_", &configured.sandbox).await?,
        production: get("environment_id.production", "env_", &configured.production).await?,
    })
}

/// Ids given in the configuration, if any.
#[derive(Debug, Clone, Default)]
pub struct IdOverrides {
    /// `organization-id`.
    pub organization: Option<String>,
    /// `sandbox-environment-id`.
    pub sandbox: Option<String>,
    /// `production-environment-id`.
    pub production: Option<String>,
}

/// Serves `router(state)` on `addr` (over TLS when `tls` is given) until
/// `shutdown` resolves; in-flight requests finish first. Also prunes expired
/// records periodically, reads the store's replication every 5 s (the
/// replication guard) and, with a rotation policy, runs the rotation
/// scheduler every 5 s.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    tls: Option<Arc<tls::ReloadingTls>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let reloader = tls.as_ref().map(tls::ReloadingTls::spawn_reloader);
    // The replication guard reads the store before the first request.
    state.service.check_replication().await;
    let background = background::Tasks::spawn(&state.service);
    let connections = state.limits.connections;
    let trusted = Arc::clone(&state.trusted_proxies);
    let result = transport::serve_connections_with(listener, router(state), connections, tls, trusted, shutdown).await;
    drop(background);
    if let Some(reloader) = reloader {
        reloader.abort();
    }
    result
}

async fn not_found() -> ApiError {
    ApiError::NoSuchEndpoint
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Outermost middleware: a request id on the response and on every log line,
/// the request timeout, and one access log line (with the cause of a 5xx:
/// the one place a server error is logged).
async fn request_context(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let request_id = random_id(state.service.entropy(), "req_");
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        path = %loggable(request.uri().path(), MAX_LOGGED_PATH),
    );
    let started = Instant::now();
    let mut response = bounded(&state.limits, request, next).instrument(span.clone()).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("request-id", v);
    }
    span.in_scope(|| log_response(&response, started));
    response
}

/// The request under its URI limit (414) and its timeout (503).
async fn bounded(limits: &Limits, request: Request, next: Next) -> Response {
    let uri_len = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return ApiError::UriTooLong(limits.max_uri_bytes).into_response();
    }
    match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!("request timed out");
            ApiError::TimedOut.into_response()
        }
    }
}

fn log_response(response: &Response, started: Instant) {
    let status = response.status().as_u16();
    let elapsed_us = started.elapsed().as_micros() as u64;
    match response.extensions().get::<InternalCause>() {
        Some(InternalCause(cause)) if response.status() == StatusCode::INTERNAL_SERVER_ERROR => {
            tracing::error!(status, elapsed_us, error = %cause, "request failed")
        }
        Some(InternalCause(cause)) => tracing::warn!(status, elapsed_us, error = %cause, "request"),
        None => tracing::info!(status, elapsed_us, "request"),
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), with the
/// original length noted, for logs.
fn loggable(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} bytes)", &text[..end], text.len()).into()
}

/// `prefix` followed by 24 random alphanumeric characters (Persona's id
/// shape: `req_…`, `org_…`).
fn random_id(entropy: &dyn blindpass_service::Entropy, prefix: &str) -> String {
    blindpass_entropy::token(entropy, prefix, 24)
}
