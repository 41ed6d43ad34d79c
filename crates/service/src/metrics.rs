//! The node's Prometheus metrics, on `prometheus-client`: one registry per
//! [`crate::Service`], written to by the use cases (issuance, redemption,
//! rotation, the store's latency through [`blindpass_store::metered`], rate
//! limits), encoded in the OpenMetrics text format at `/metrics`. Another
//! layer's metrics (the server's HTTP requests, latency, in-flight and shed
//! requests) are its own, registered here through [`Metrics::layer`] so one
//! scrape shows them all.
//!
//! Names follow Cloudflare's Privacy Pass issuer where they overlap
//! (`issuance_request_total`, `signed_token_total`,
//! `issuance_key_error_total`, `key_rotation_total`,
//! `key_rotation_failure_total`). Every label value comes from a closed set
//! or from the node's own key ids: nothing a client sends becomes a label
//! (an unknown path is `route="unmatched"`).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

mod labels;
use labels::{KeyLabels, KeyStateLabels, LimitLabels, Operation, Outcome, PolicyLabels, Reason};

/// The latency histogram every duration metric uses: 100 µs … ~13 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Every metric of one node.
pub struct Metrics {
    registry: Mutex<Registry>,
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
    readiness_checks: Counter,
    unsealed_key_material: Counter,
    rate_limited: Family<LimitLabels, Counter>,
    replication_standbys: Gauge,
    replication_synchronous_standbys: Gauge,
    commits_protected: Gauge,
    /// Serialises [`Metrics::encode`] with the scrape-time gauge refresh.
    scrape: Mutex<()>,
    /// The sample names every registered metric is exposed under.
    names: Mutex<Vec<String>>,
    /// Metrics another layer owns ([`Metrics::layer`]), by type.
    layers: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
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

/// Where a layer registers its metrics ([`Metrics::layer`]).
pub struct Registrar<'a> {
    registry: &'a mut Registry,
    names: &'a mut Vec<String>,
}

impl std::fmt::Debug for Registrar<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrar").finish_non_exhaustive()
    }
}

impl Registrar<'_> {
    /// Registers a counter (exposed as `NAME_total`).
    pub fn counter(&mut self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        reg(self.registry, self.names, name, help, metric, COUNTER);
    }

    /// Registers a histogram (`NAME_bucket`, `NAME_count`, `NAME_sum`).
    pub fn histogram(&mut self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        reg(self.registry, self.names, name, help, metric, HISTOGRAM);
    }

    /// Registers a gauge (`NAME`).
    pub fn gauge(&mut self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        reg(self.registry, self.names, name, help, metric, GAUGE);
    }
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
            readiness_checks: Counter::default(),
            unsealed_key_material: Counter::default(),
            rate_limited: Family::default(),
            replication_standbys: Gauge::default(),
            replication_synchronous_standbys: Gauge::default(),
            commits_protected: Gauge::default(),
            scrape: Mutex::new(()),
            registry: Mutex::new(Registry::default()),
            names: Mutex::new(Vec::new()),
            layers: Mutex::new(HashMap::new()),
        };
        let mut names = Vec::new();
        let mut r = Registrar { registry: &mut registry, names: &mut names };
        m.register_issuance(&mut r);
        m.register_operations(&mut r);
        Self { registry: Mutex::new(registry), names: Mutex::new(names), ..m }
    }

    /// Issuance, redemption and key metrics.
    fn register_issuance(&self, r: &mut Registrar<'_>) {
        r.counter("issuance_request", "Issuance requests (single, amortized or batch)", self.issuance_requests.clone());
        r.counter("signed_token", "Tokens signed or evaluated, by issuer key", self.signed_tokens.clone());
        r.counter("issuance_key_error", "Issuance refusals and failures, by reason", self.issuance_key_errors.clone());
        r.counter(
            "redemption",
            "Redemption attempts by outcome (accepted, replayed, double_spend, not_passed, pending, rejected_*, error)",
            self.redemptions.clone(),
        );
        r.counter("key_rotation", "Automatic rotations: successors announced by this node", self.key_rotations.clone());
        r.counter(
            "key_rotation_failure",
            "Automatic rotation steps that failed (retried next tick)",
            self.key_rotation_failures.clone(),
        );
        r.gauge(
            "key_next_rotation_seconds",
            "Seconds until the active key of a rotation policy is due for a successor (negative: overdue)",
            self.next_rotation.clone(),
        );
        r.gauge("issuer_key_age_seconds", "Age of each live issuer key", self.key_age.clone());
    }

    /// The store's, readiness, key material and rate-limit metrics.
    fn register_operations(&self, r: &mut Registrar<'_>) {
        r.histogram("store_operation_duration_seconds", "Store call latency", self.store_duration.clone());
        r.counter("store_error", "Store calls that failed", self.store_errors.clone());
        r.counter(
            "unsealed_key_material",
            "Key material found unsealed although a key-encryption key is configured: refused, never used",
            self.unsealed_key_material.clone(),
        );
        r.counter(
            "readiness_check",
            "Readiness checks run (one a second at most, however often /health/ready is probed)",
            self.readiness_checks.clone(),
        );
        r.counter("rate_limited_request", "Requests refused by a rate limit, by limit", self.rate_limited.clone());
        r.gauge("store_standbys", "Standbys streaming from the PostgreSQL primary", self.replication_standbys.clone());
        r.gauge(
            "store_synchronous_standbys",
            "Standbys the primary's commits wait for (sync or quorum)",
            self.replication_synchronous_standbys.clone(),
        );
        r.gauge(
            "store_commits_protected",
            "1 when no acknowledged spend can be lost to a failover (synchronous replication, or no replicas), else 0",
            self.commits_protected.clone(),
        );
    }

    /// The metrics of another layer (the HTTP edge's), made by `make` and
    /// registered in this node's registry the first time a layer asks for
    /// a `T`; later calls get the same ones. The service knows nothing of
    /// them but that they are exposed with its own.
    pub fn layer<T: Send + Sync + 'static>(&self, make: impl FnOnce(&mut Registrar<'_>) -> T) -> Arc<T> {
        let mut layers = self.layers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(Ok(found)) = layers.get(&TypeId::of::<T>()).map(|l| Arc::clone(l).downcast::<T>()) {
            return found;
        }
        let mut registry = self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut names = self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let made = Arc::new(make(&mut Registrar { registry: &mut registry, names: &mut names }));
        layers.insert(TypeId::of::<T>(), Arc::clone(&made) as Arc<dyn Any + Send + Sync>);
        made
    }

    /// Every sample name this registry exposes once it has samples (a
    /// family with no samples yet is absent from a scrape): what dashboards
    /// and alerts may query.
    pub fn sample_names(&self) -> Vec<String> {
        self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The registry in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let _scrape = self.scrape.lock();
        let registry = self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
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

    /// Unsealed key material was refused.
    pub(crate) fn unsealed_key_material(&self) {
        self.unsealed_key_material.inc();
    }

    /// One readiness check ran.
    pub(crate) fn readiness_check(&self) {
        self.readiness_checks.inc();
    }

    /// What the replication guard found: standbys, synchronous standbys,
    /// and whether acknowledged commits are safe from a failover.
    pub(crate) fn set_replication(&self, standbys: u64, synchronous: u64, protected: bool) {
        self.replication_standbys.set(i64::try_from(standbys).unwrap_or(i64::MAX));
        self.replication_synchronous_standbys.set(i64::try_from(synchronous).unwrap_or(i64::MAX));
        self.commits_protected.set(i64::from(protected));
    }

    /// One request refused by the rate limit named `limit` (`environment`,
    /// `api_key`, `client`, `relay`, `auth_failure`, …).
    pub(crate) fn rate_limited(&self, limit: &'static str) {
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
        self.metrics().refresh_key_ages(&self.keys(), self.now()).await
    }
}

impl Metrics {
    /// Sets every live issuer key's age at `now`, from `keys`.
    pub(crate) async fn refresh_key_ages(&self, keys: &impl crate::key_source::KeySource, now: i64) {
        let mut loaded = Vec::new();
        for environment in [crate::Environment::Sandbox, crate::Environment::Production] {
            match keys.keys_of(environment).await {
                Ok(of_environment) => loaded.extend(of_environment),
                Err(e) => tracing::warn!(error = %e, "metrics: issuer keys could not be read"),
            }
        }
        self.set_key_ages(loaded.iter().map(|k| {
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
