//! The node's Prometheus metrics, on `prometheus-client`: one registry per
//! [`crate::Service`], written to by the use cases (issuance, redemption,
//! rotation, the store's latency through [`blindpass_store::metered`]) and by
//! the HTTP edge (requests, latency, in-flight, shed and rate-limited
//! requests), encoded in the OpenMetrics text format at `/metrics`.
//!
//! Names follow Cloudflare's Privacy Pass issuer where they overlap
//! (`issuance_request_total`, `signed_token_total`,
//! `issuance_key_error_total`, `key_rotation_total`,
//! `key_rotation_failure_total`). Every label value comes from a closed set
//! or from the node's own key ids: nothing a client sends becomes a label
//! (an unknown path is `route="unmatched"`).

use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

mod labels;
use labels::{
    KeyLabels, KeyStateLabels, LimitLabels, Operation, Outcome, PolicyLabels, Reason, RequestLabels, RouteLabels,
};

fn latency_histogram() -> Histogram {
    // 100 µs … ~13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Every metric of one node.
pub struct Metrics {
    registry: Registry,
    issuance_requests: Counter,
    signed_tokens: Family<KeyLabels, Counter>,
    issuance_key_errors: Family<Reason, Counter>,
    redemptions: Family<Outcome, Counter>,
    key_rotations: Counter,
    key_rotation_failures: Counter,
    next_rotation: Family<PolicyLabels, Gauge>,
    key_age: Family<KeyStateLabels, Gauge>,
    store_duration: Family<Operation, Histogram, fn() -> Histogram>,
    store_errors: Family<Operation, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    shed: Counter,
    readiness_checks: Counter,
    unsealed_key_material: Counter,
    rate_limited: Family<LimitLabels, Counter>,
    /// Serialises [`Metrics::encode`] with the scrape-time gauge refresh.
    scrape: Mutex<()>,
    /// The sample names every registered metric is exposed under.
    names: Vec<String>,
}

const COUNTER: &[&str] = &["_total"];
const HISTOGRAM: &[&str] = &["_bucket", "_count", "_sum"];
const GAUGE: &[&str] = &[""];

/// Registers `metric` and records the sample names it is exposed under.
fn reg(
    registry: &mut Registry,
    names: &mut Vec<String>,
    name: &str,
    help: &str,
    metric: impl prometheus_client::registry::Metric,
    suffixes: &[&str],
) {
    registry.register(name, help, metric);
    names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered and no samples.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            issuance_requests: Counter::default(),
            signed_tokens: Family::default(),
            issuance_key_errors: Family::default(),
            redemptions: Family::default(),
            key_rotations: Counter::default(),
            key_rotation_failures: Counter::default(),
            next_rotation: Family::default(),
            key_age: Family::default(),
            store_duration: Family::new_with_constructor(latency_histogram),
            store_errors: Family::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            in_flight: Gauge::default(),
            shed: Counter::default(),
            readiness_checks: Counter::default(),
            unsealed_key_material: Counter::default(),
            rate_limited: Family::default(),
            scrape: Mutex::new(()),
            registry: Registry::default(),
            names: Vec::new(),
        };
        let mut names = Vec::new();
        let r = &mut registry;
        reg(
            r,
            &mut names,
            "issuance_request",
            "Issuance requests (single, amortized or batch)",
            m.issuance_requests.clone(),
            COUNTER,
        );
        reg(
            r,
            &mut names,
            "signed_token",
            "Tokens signed or evaluated, by issuer key",
            m.signed_tokens.clone(),
            COUNTER,
        );
        reg(
            r,
            &mut names,
            "issuance_key_error",
            "Issuance refusals and failures, by reason",
            m.issuance_key_errors.clone(),
            COUNTER,
        );
        reg(
            r,
            &mut names,
            "redemption",
            "Redemption attempts by outcome (accepted, replayed, double_spend, not_passed, pending, rejected_*, error)",
            m.redemptions.clone(),
            COUNTER,
        );
        reg(
            r,
            &mut names,
            "key_rotation",
            "Automatic rotations: successors announced by this node",
            m.key_rotations.clone(),
            COUNTER,
        );
        reg(
            r,
            &mut names,
            "key_rotation_failure",
            "Automatic rotation steps that failed (retried next tick)",
            m.key_rotation_failures.clone(),
            COUNTER,
        );
        reg(
            r,
            &mut names,
            "key_next_rotation_seconds",
            "Seconds until the active key of a rotation policy is due for a successor (negative: overdue)",
            m.next_rotation.clone(),
            GAUGE,
        );
        reg(r, &mut names, "issuer_key_age_seconds", "Age of each live issuer key", m.key_age.clone(), GAUGE);
        reg(
            r,
            &mut names,
            "store_operation_duration_seconds",
            "Store call latency",
            m.store_duration.clone(),
            HISTOGRAM,
        );
        reg(r, &mut names, "store_error", "Store calls that failed", m.store_errors.clone(), COUNTER);
        reg(
            r,
            &mut names,
            "requests",
            "HTTP requests answered, by route template, method and status",
            m.requests.clone(),
            COUNTER,
        );
        reg(
            r,
            &mut names,
            "request_duration_seconds",
            "HTTP request latency by route template",
            m.request_duration.clone(),
            HISTOGRAM,
        );
        reg(r, &mut names, "requests_in_flight", "HTTP requests being answered", m.in_flight.clone(), GAUGE);
        reg(
            r,
            &mut names,
            "shed_request",
            "Requests refused at once because too many were in flight (the node's, its class's or their client's share)",
            m.shed.clone(),
            COUNTER,
        );
        reg(
            r,
            &mut names,
            "unsealed_key_material",
            "Key material found unsealed although a key-encryption key is configured: refused, never used",
            m.unsealed_key_material.clone(),
            COUNTER,
        );
        reg(
            r,
            &mut names,
            "readiness_check",
            "Readiness checks run (one a second at most, however often /health/ready is probed)",
            m.readiness_checks.clone(),
            COUNTER,
        );
        reg(
            r,
            &mut names,
            "rate_limited_request",
            "Requests refused by a rate limit, by limit",
            m.rate_limited.clone(),
            COUNTER,
        );
        Self { registry, names, ..m }
    }

    /// Every sample name this registry exposes once it has samples (a
    /// family with no samples yet is absent from a scrape): what dashboards
    /// and alerts may query.
    pub fn sample_names(&self) -> &[String] {
        &self.names
    }

    /// The registry in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let _scrape = self.scrape.lock();
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub(crate) fn issuance_request(&self) {
        self.issuance_requests.inc();
    }

    pub(crate) fn signed(&self, key_id: &str, token_type: u16, n: u64) {
        let labels = KeyLabels { key_id: key_id.to_owned(), token_type: token_type.to_string() };
        self.signed_tokens.get_or_create(&labels).inc_by(n);
    }

    pub(crate) fn issuance_error(&self, reason: &'static str) {
        self.issuance_key_errors.get_or_create(&Reason { reason }).inc();
    }

    pub(crate) fn redemption(&self, outcome: &'static str) {
        self.redemptions.get_or_create(&Outcome { outcome }).inc();
    }

    pub(crate) fn rotated(&self) {
        self.key_rotations.inc();
    }

    pub(crate) fn rotation_failed(&self) {
        self.key_rotation_failures.inc();
    }

    /// Replaces the time-to-rotation gauges (environment, token type,
    /// seconds until due).
    pub(crate) fn set_next_rotations(&self, due: impl Iterator<Item = (crate::Environment, u16, i64)>) {
        self.next_rotation.clear();
        for (environment, token_type, secs) in due {
            let labels = PolicyLabels { environment: environment.as_str(), token_type: token_type.to_string() };
            self.next_rotation.get_or_create(&labels).set(secs);
        }
    }

    /// Replaces the key-age gauges with `keys` (id, token type, environment,
    /// state, age in seconds).
    pub(crate) fn set_key_ages(&self, keys: impl Iterator<Item = (String, u16, String, String, i64)>) {
        self.key_age.clear();
        for (key_id, token_type, environment, state, age) in keys {
            let labels = KeyStateLabels { key_id, token_type: token_type.to_string(), environment, state };
            self.key_age.get_or_create(&labels).set(age);
        }
    }

    /// A presented token refused before it reached the service (it could
    /// not be parsed): a redemption attempt all the same.
    pub fn rejected_token(&self, outcome: &'static str) {
        self.redemption(outcome);
    }

    /// One HTTP request answered (`route` is the matched route template or
    /// `unmatched`).
    pub fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let labels = RequestLabels { route: route.to_owned(), method: method.to_owned(), status: status.to_string() };
        self.requests.get_or_create(&labels).inc();
        self.request_duration.get_or_create(&RouteLabels { route: route.to_owned() }).observe(seconds);
    }

    /// The in-flight gauge.
    pub fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }

    /// One request shed because too many were in flight.
    pub fn shed(&self) {
        self.shed.inc();
    }

    /// Unsealed key material was refused.
    pub(crate) fn unsealed_key_material(&self) {
        self.unsealed_key_material.inc();
    }

    /// One readiness check ran.
    pub(crate) fn readiness_check(&self) {
        self.readiness_checks.inc();
    }

    /// One request refused by the rate limit named `limit` (`environment`,
    /// `api_key`, `client`, `relay`, `auth_failure`, …).
    pub fn rate_limited(&self, limit: &'static str) {
        self.rate_limited.get_or_create(&LimitLabels { limit }).inc();
    }
}

impl blindpass_store::metered::StoreObserver for Metrics {
    fn observe(&self, operation: &'static str, seconds: f64, ok: bool) {
        let labels = Operation { operation };
        self.store_duration.get_or_create(&labels).observe(seconds);
        if !ok {
            self.store_errors.get_or_create(&labels).inc();
        }
    }
}

impl crate::Service {
    /// Brings the scrape-time gauges up to date: every live issuer key's age
    /// (from the key ring, so a scrape costs no store call while the ring
    /// is fresh).
    pub async fn refresh_gauges(&self) {
        let now = self.now();
        let mut keys = Vec::new();
        for environment in [crate::Environment::Sandbox, crate::Environment::Production] {
            match self.keys_of(environment).await {
                Ok(loaded) => keys.extend(loaded),
                Err(e) => tracing::warn!(error = %e, "metrics: issuer keys could not be read"),
            }
        }
        self.metrics().set_key_ages(keys.iter().map(|k| {
            let r = &k.record;
            (
                r.id.clone(),
                k.token_type(),
                r.environment.as_str().to_owned(),
                r.state.as_str().to_owned(),
                now - r.created_at,
            )
        }));
    }
}
