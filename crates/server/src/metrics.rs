//! The HTTP side of the node's metrics, owned by the server: requests by
//! route template, method and status, their latency, the in-flight gauge
//! and shed requests ([`HttpMetrics`], registered in the node's registry
//! through `Metrics::layer`), the middleware that keeps them, and the
//! `/metrics` scrape.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use blindpass_protocol::api::{CHALLENGE_PATH, PRIVACY_PASSES_PATH, RELAYS_PATH};
use blindpass_service::Service;
use blindpass_service::metrics::latency_histogram;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::rfc::{DIRECTORY_ALIAS_PATH, DIRECTORY_PATH, TOKEN_REQUEST_PATH};
use crate::{METRICS_PATH, READY_PATH};

/// `GET /metrics`: every metric of the node (scrape-time gauges refreshed
/// first), in the OpenMetrics text format.
pub(crate) async fn scrape<S>(State(state): State<S>) -> Response
where
    Service: axum::extract::FromRef<S>,
{
    let service: Service = axum::extract::FromRef::from_ref(&state);
    service.refresh_gauges().await;
    let body = service.metrics().encode();
    let content_type = HeaderValue::from_static(blindpass_service::metrics::CONTENT_TYPE);
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The HTTP edge's metrics. Every label value is a route template, a
/// method from a closed set, or a status: nothing a client sends.
#[derive(Debug)]
pub(crate) struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    shed: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

impl HttpMetrics {
    /// The edge's metrics of `service`'s node (registered once per node).
    pub(crate) fn of(service: &Service) -> Arc<HttpMetrics> {
        service.metrics().layer(|r| {
            let m = HttpMetrics {
                requests: Family::default(),
                request_duration: Family::new_with_constructor(latency_histogram),
                in_flight: Gauge::default(),
                shed: Counter::default(),
            };
            let counted = "HTTP requests answered, by route template, method and status";
            r.counter("requests", counted, m.requests.clone());
            r.histogram("request_duration_seconds", "HTTP request latency by route template", m.request_duration.clone());
            r.gauge("requests_in_flight", "HTTP requests being answered", m.in_flight.clone());
            let shed = "Requests refused at once because too many were in flight (the node's, its class's or their client's share)";
            r.counter("shed_request", shed, m.shed.clone());
            m
        })
    }

    /// One HTTP request answered (`route` is the matched route template or
    /// `unmatched`).
    fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let labels = RequestLabels { route: route.to_owned(), method: method.to_owned(), status: status.to_string() };
        self.requests.get_or_create(&labels).inc();
        self.request_duration.get_or_create(&RouteLabels { route: route.to_owned() }).observe(seconds);
    }

    /// One request shed because too many were in flight.
    pub(crate) fn shed(&self) {
        self.shed.inc();
    }
}

/// Outermost middleware: counts and times every request, under the route
/// template it matches (never the raw path: a path is client input).
pub(crate) async fn observe(metrics: Arc<HttpMetrics>, request: Request, next: Next) -> Response {
    let route = route_template(request.uri().path());
    let method = method_label(request.method());
    let started = Instant::now();
    let gauge = metrics.in_flight.clone();
    gauge.inc();
    // Decremented on every exit, a dropped (cancelled) request's too.
    let _in_flight = scopeguard(move || {
        gauge.dec();
    });
    let response = next.run(request).await;
    metrics.request(route, method, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

struct Guard<F: FnMut()>(F);

impl<F: FnMut()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

fn scopeguard<F: FnMut()>(f: F) -> Guard<F> {
    Guard(f)
}

/// The route template `path` is served by, or `unmatched`.
pub(crate) fn route_template(path: &str) -> &'static str {
    const FIXED: [&str; 9] = [
        "/health",
        READY_PATH,
        METRICS_PATH,
        "/openapi.json",
        DIRECTORY_PATH,
        DIRECTORY_ALIAS_PATH,
        TOKEN_REQUEST_PATH,
        PRIVACY_PASSES_PATH,
        CHALLENGE_PATH,
    ];
    if let Some(fixed) = FIXED.iter().find(|p| **p == path) {
        return fixed;
    }
    if path == RELAYS_PATH {
        return RELAYS_PATH;
    }
    let relay_route = path.strip_prefix(RELAYS_PATH).and_then(|rest| rest.strip_prefix('/')).and_then(|rest| {
        let (token, action) = rest.split_once('/')?;
        (!token.is_empty() && !token.contains('/')).then_some(action)
    });
    match relay_route {
        Some("result") => "/api/privacy/v1/relays/{relay_token}/result",
        Some("generate-claim") => "/api/privacy/v1/relays/{relay_token}/generate-claim",
        _ => "unmatched",
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_paths_never_become_labels() {
        assert_eq!(route_template("/api/v1/privacy-passes"), PRIVACY_PASSES_PATH);
        assert_eq!(
            route_template("/api/privacy/v1/relays/rly_abc/generate-claim"),
            "/api/privacy/v1/relays/{relay_token}/generate-claim"
        );
        assert_eq!(
            route_template("/api/privacy/v1/relays/rly_abc/result"),
            "/api/privacy/v1/relays/{relay_token}/result"
        );
        for junk in ["/", "/x", "/api/privacy/v1/relays//result", "/api/privacy/v1/relays/a/b/result", "/metrics/x"] {
            assert_eq!(route_template(junk), "unmatched", "{junk}");
        }
    }
}
