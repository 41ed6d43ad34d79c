//! The operator's endpoints: liveness, readiness and the OpenAPI document
//! (`/metrics` is `metrics.rs`).

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::{AppState, error, openapi};

/// Where Prometheus scrapes.
pub const METRICS_PATH: &str = "/metrics";

/// Readiness, for load balancers and orchestrators (`/health` is liveness).
pub const READY_PATH: &str = "/health/ready";

/// Liveness: the process answers.
pub(crate) async fn health() -> Response {
    (StatusCode::OK, error::json_headers(), br#"{"status":"ok"}"#.to_vec()).into_response()
}

/// Readiness: 200 when the store answers and every enabled token type has a
/// key issuing in both environments ([`blindpass_service::Service::readiness`], checked at most
/// once a second however often it is probed); otherwise 503 with
/// `Retry-After` and the reason (the store's own error text only in the log).
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    match state.service.readiness_cached().await {
        Ok(()) => (StatusCode::OK, error::json_headers(), br#"{"status":"ready"}"#.to_vec()).into_response(),
        Err(reason) => {
            tracing::warn!(%reason, "not ready");
            let body = serde_json::json!({"status": "not_ready", "reason": reason.public_reason()});
            let mut response =
                (StatusCode::SERVICE_UNAVAILABLE, error::json_headers(), body.to_string().into_bytes()).into_response();
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from_static("5"));
            response
        }
    }
}

/// `GET /openapi.json`.
pub(crate) async fn serve_openapi() -> Response {
    (StatusCode::OK, error::json_headers(), openapi::json()).into_response()
}
