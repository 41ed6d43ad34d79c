//! The operator's surface through the router: Prometheus counters move one
//! for one with requests, readiness follows the store and the keys, and an
//! API key's own rate limit is counted beside its environment's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::disallowed_methods)]

mod common;

use axum::http::{Method, StatusCode};
use blindpass_service::{Environment, Permission};
use common::*;
use serde_json::json;

const CLAIM: &str = "age_over18_verified";

/// The scrape, parsed: each sample's name with its labels, and its value.
struct Scrape(Vec<(String, f64)>);

impl Scrape {
    async fn of(h: &Harness) -> Scrape {
        let r = h.call(Method::GET, "/metrics", &[], Vec::new()).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
        let text = String::from_utf8(r.body).unwrap();
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                (series.to_owned(), value.parse::<f64>().unwrap())
            })
            .collect();
        Scrape(samples)
    }

    /// The sum of `name`'s samples whose labels include every `labels` pair.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series, ""));
                n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }

    fn series(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(s, _)| s.as_str())
    }
}

#[tokio::test]
async fn counters_move_one_for_one_with_requests() {
    let h = harness(300).await;
    let before = Scrape::of(&h).await;

    // Three issuances, one refused issuance (unknown key).
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(h.persona_token(Environment::Sandbox, CLAIM).await);
    }
    let (_, _, _, blinded) = h.blinded(Environment::Sandbox).await;
    let refused = h.post(issue_body(&blinded, &"ab".repeat(32)), &[]).await;
    assert!(refused.status.is_client_error());

    // Redemptions: accepted twice, the same relay's retry (replayed), another
    // relay (double spend), a forged token (rejected), no token (no attempt).
    let relay = h.relay(Environment::Sandbox, CLAIM, None).await;
    assert_eq!(h.claim(&relay, Some(&tokens[0]), &[]).await.status, StatusCode::OK);
    assert_eq!(h.claim(&relay, Some(&tokens[1]), &[]).await.status, StatusCode::OK);
    assert_eq!(h.claim(&relay, Some(&tokens[0]), &[]).await.status, StatusCode::OK);
    let other = h.relay(Environment::Sandbox, CLAIM, None).await;
    assert_eq!(h.claim(&other, Some(&tokens[0]), &[]).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.claim(&other, Some("AAAA"), &[]).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.claim(&other, None, &[]).await.status, StatusCode::UNAUTHORIZED);

    // A client-chosen path never becomes a label.
    let junk = format!("/{}", "x".repeat(40));
    assert_eq!(h.call(Method::GET, &junk, &[], Vec::new()).await.status, StatusCode::NOT_FOUND);

    let after = Scrape::of(&h).await;
    let delta = |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);
    assert_eq!(delta("issuance_request_total", &[]), 4.0);
    assert_eq!(delta("signed_token_total", &[("token_type", "2")]), 3.0);
    let key_id = h.service.active_key(Environment::Sandbox, 2).await.unwrap().unwrap().record.id.clone();
    assert_eq!(delta("signed_token_total", &[("key_id", &key_id)]), 3.0);
    assert_eq!(delta("issuance_key_error_total", &[("reason", "unknown_key")]), 1.0);
    let issue_route = [("route", "/api/v1/privacy-passes"), ("method", "POST")];
    assert_eq!(delta("requests_total", &[issue_route[0], issue_route[1], ("status", "201")]), 3.0);
    assert_eq!(delta("request_duration_seconds_count", &[issue_route[0]]), 4.0);
    assert_eq!(delta("redemption_total", &[("outcome", "accepted")]), 2.0);
    assert_eq!(delta("redemption_total", &[("outcome", "replayed")]), 1.0);
    assert_eq!(delta("redemption_total", &[("outcome", "double_spend")]), 1.0);
    assert_eq!(delta("redemption_total", &[("outcome", "rejected_malformed")]), 1.0);
    assert_eq!(delta("redemption_total", &[]), 5.0, "a request without a token is no redemption attempt");
    // Four spends reached the store (two first spends, the replay, the
    // double spend); each was timed.
    assert_eq!(delta("store_operation_duration_seconds_count", &[("operation", "spend_token")]), 4.0);
    assert_eq!(delta("requests_total", &[("route", "unmatched"), ("status", "404")]), 1.0);
    assert!(after.series().all(|s| !s.contains("xxxx")), "the raw path is never a label");
    // The scrape itself is in flight while it is taken; nothing else is.
    assert_eq!(after.sum("requests_in_flight", &[]), 1.0);
    // Every live key's age is reported.
    assert!(after.sum("issuer_key_age_seconds", &[("key_id", &key_id), ("state", "active")]) >= 0.0);
    assert_eq!(after.series().filter(|s| s.starts_with("issuer_key_age_seconds{")).count(), 6, "3 types × 2 envs");
}

#[tokio::test]
async fn refusals_by_rate_limit_are_counted_by_limit() {
    let h = harness(2).await;
    let (_, key_id, _, blinded) = h.blinded(Environment::Sandbox).await;
    let statuses: Vec<_> = futures(3, || h.post(issue_body(&blinded, &key_id), &[])).await;
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count(), 1);
    let scrape = Scrape::of(&h).await;
    assert_eq!(scrape.sum("rate_limited_request_total", &[("limit", "env")]), 1.0);
    assert_eq!(scrape.sum("requests_total", &[("status", "429")]), 1.0);
}

async fn futures<F: std::future::Future<Output = Reply>>(n: usize, f: impl Fn() -> F) -> Vec<StatusCode> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(f().await.status);
    }
    out
}

#[tokio::test]
async fn readiness_needs_the_store_and_an_active_key_of_every_type() {
    let h = harness(300).await;
    assert_eq!(h.call(Method::GET, "/health/ready", &[], Vec::new()).await.json(), json!({"status": "ready"}));

    // Retire the only active type-5 key of production: not ready, and says why.
    let key = h.service.active_key(Environment::Production, 5).await.unwrap().unwrap();
    h.service.retire_key(&key.record.id).await.unwrap();
    // Probes within one second share one check; the next second sees it.
    h.clock.advance(1);
    let r = h.call_allowing_5xx(Method::GET, "/health/ready", &[], Vec::new()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.header("retry-after").is_some());
    let reason = r.json()["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("token type 5") && reason.contains("production"), "{reason}");
    // Liveness is unaffected.
    assert_eq!(h.call(Method::GET, "/health", &[], Vec::new()).await.status, StatusCode::OK);

    h.service.rotate_key(Environment::Production, 5, None).await.unwrap();
    h.clock.advance(1);
    assert_eq!(h.call(Method::GET, "/health/ready", &[], Vec::new()).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_flood_of_readiness_probes_costs_the_store_one_check_a_second() {
    let h = harness(0).await;
    h.clock.advance(1);
    let reads = |s: &Scrape| s.sum("store_operation_duration_seconds_count", &[("operation", "issuer_key_metadata")]);
    let before = reads(&Scrape::of(&h).await);
    for _ in 0..200 {
        assert_eq!(h.call(Method::GET, "/health/ready", &[], Vec::new()).await.status, StatusCode::OK);
    }
    let after = reads(&Scrape::of(&h).await);
    assert_eq!(after - before, 1.0, "200 probes in one second, one store read");
}

#[tokio::test]
async fn an_api_keys_own_limit_counts_beside_its_environments() {
    // Environment: 10 a minute. The key: 3 a minute.
    let h = harness(10).await;
    let limited = h
        .service
        .create_api_key_with_limit(Environment::Sandbox, vec![Permission::PrivacyPassWrite], None, Some(3))
        .await
        .unwrap();
    let (_, key_id, _, blinded) = h.blinded(Environment::Sandbox).await;
    let body = issue_body(&blinded, &key_id);
    let secret = limited.secret.to_string();
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = h.post_as(&secret, body.clone(), &[]).await;
        assert_eq!(r.status, StatusCode::CREATED);
        // The key's window is the closer one: 2, 1, 0 left (not 9, 8, 7).
        remaining.push(r.header("ratelimit-remaining").unwrap().to_owned());
        assert_eq!(r.header("ratelimit-limit"), Some("3"));
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let r = h.post_as(&secret, body.clone(), &[]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.json()["errors"][0]["details"].as_str().unwrap().contains("rate limit of 3 requests"));

    // Another key of the environment is not limited by this key's window,
    // and the request the key's own limit refused was not charged to the
    // environment: only the 3 it admitted count, 10 − 3 − this one.
    let r = h.post(body.clone(), &[]).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("ratelimit-remaining"), Some("6"));
    assert_eq!(r.header("ratelimit-limit"), Some("10"));

    // Raising the key's limit takes effect at once on this node.
    assert!(h.service.set_api_key_rate_limit(&limited.key.id, Some(100)).await.unwrap());
    let r = h.post_as(&secret, body.clone(), &[]).await;
    assert_eq!(r.status, StatusCode::CREATED);
    // Now the environment's window is the closer one (10 − 5).
    assert_eq!((r.header("ratelimit-limit"), r.header("ratelimit-remaining")), (Some("10"), Some("5")));

    // Removing it leaves only the environment's.
    assert!(h.service.set_api_key_rate_limit(&limited.key.id, None).await.unwrap());
    assert!(!h.service.set_api_key_rate_limit("api_nope", Some(5)).await.unwrap());
    assert!(h.service.set_api_key_rate_limit(&limited.key.id, Some(0)).await.is_err(), "0 is refused, not 'off'");

    let scrape = Scrape::of(&h).await;
    assert_eq!(scrape.sum("rate_limited_request_total", &[("limit", "apikey")]), 1.0);
}

/// Every metric the Grafana dashboard (`ops/grafana-dashboard.json`) queries
/// is one the server exposes, under the name the exposition gives it.
#[tokio::test]
async fn the_dashboard_queries_only_exposed_metrics() {
    let h = harness(300).await;
    let names = h.service.metrics().sample_names();
    let exposed: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
    // The list is what a scrape shows, once each family has samples.
    let scrape = Scrape::of(&h).await;
    for (series, _) in &scrape.0 {
        let name = series.split('{').next().unwrap();
        assert!(exposed.contains(name), "{name} is exposed but not listed");
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            // The dashboard writes every metric as `name{…}`.
            let segments: Vec<&str> = expr.split('{').collect();
            let names: Vec<&str> = segments[..segments.len() - 1]
                .iter()
                .filter_map(|before| before.rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next())
                .filter(|name| !name.is_empty())
                .collect();
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                assert!(exposed.contains(name), "{} queries {name}, which is not exposed", panel["title"]);
                queried += 1;
            }
        }
    }
    assert!(queried >= 13, "{queried}");
}

/// A ratio whose numerator selects a subset (5xx of all requests) shows 0,
/// not "No data", while that subset has no series yet: Prometheus drops
/// `absent / x`, so the numerator must fall back to `vector(0)`.
#[test]
fn dashboard_ratios_show_zero_when_the_subset_is_empty() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut ratios = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let Some((numerator, _)) = expr.split_once(" / ") else { continue };
            ratios += 1;
            let filtered = numerator.contains("=~") || numerator.contains("=\"");
            assert!(
                !filtered || numerator.trim_end().ends_with("or vector(0))"),
                "{}: the numerator of {expr} has no fallback to 0",
                panel["title"]
            );
        }
    }
    assert!(ratios >= 1);
}
