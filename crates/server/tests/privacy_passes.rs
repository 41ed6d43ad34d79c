//! Router-level tests of `POST /api/v1/privacy-passes`: every status code and
//! header of contract §4, driven through `router(state)` without a socket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use blindpass_protocol::{b64, persona};
use blindpass_server::Limits;
use blindpass_service::{Environment, Permission};
use common::*;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

fn body(blinded: &[u8], key_id: &str) -> Value {
    json!({ "blinded-token": b64::encode_unpadded(blinded), "key-id": key_id })
}

#[tokio::test]
async fn issues_a_blind_signature_that_finalizes_into_a_verifying_token() {
    let h = harness(300).await;
    let (key, key_id, state, blinded) = h.blinded(Environment::Sandbox).await;
    // The Go SDK sends camelCase.
    let r = h.post(json!({ "blindedToken": b64::encode_unpadded(&blinded), "keyId": key_id }), &[]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json; charset=utf-8"));
    let sig_text = r.json()["blind-sig"].as_str().unwrap().to_owned();
    assert_eq!(r.json().as_object().unwrap().len(), 1);
    assert!(!sig_text.contains('='), "blind-sig must be unpadded");
    let blind_sig = b64::decode(&sig_text).unwrap();
    assert_eq!(blind_sig.len(), 256);
    let token = persona::finalize_issuance(&key, &state, &blind_sig).unwrap();
    persona::Token::decode(&token.encode()).unwrap().verify_signature(&key).unwrap();

    assert_eq!(r.header("ratelimit-limit"), Some("300"));
    assert_eq!(r.header("ratelimit-remaining"), Some("299"));
    assert_eq!(r.header("ratelimit-reset"), Some("60"));
    assert!(r.header("persona-environment-id").unwrap().starts_with("env_"));
    assert!(r.header("persona-organization-id").unwrap().starts_with("org_"));
}

#[tokio::test]
async fn accepts_either_key_id_and_every_body_casing() {
    let h = harness(300).await;
    let (key, _, _, blinded) = h.blinded(Environment::Sandbox).await;
    let token = b64::encode_unpadded(&blinded);
    for id in [key.persona_key_id().to_hex(), key.token_key_id().to_hex(), key.token_key_id().to_hex().to_uppercase()] {
        for body in [
            json!({ "blinded-token": token, "key-id": id }),
            json!({ "blindedToken": token, "keyId": id }),
            json!({ "blinded_token": token, "key_id": id }),
        ] {
            let r = h.post(body.clone(), &[]).await;
            assert_eq!(r.status, StatusCode::CREATED, "{body}");
        }
    }
    // Padded base64url is accepted too.
    let padded = b64::encode_padded(&blinded);
    assert!(padded.ends_with('='));
    let r = h.post(json!({ "blinded-token": padded, "key-id": key.persona_key_id().to_hex() }), &[]).await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[tokio::test]
async fn key_inflection_and_persona_version() {
    let h = harness(300).await;
    let (_, key_id, _, blinded) = h.blinded(Environment::Sandbox).await;
    for (inflection, field) in [("kebab", "blind-sig"), ("camel", "blindSig"), ("snake", "blind_sig")] {
        let r = h.post(body(&blinded, &key_id), &[("key-inflection", inflection)]).await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert!(r.json()[field].is_string(), "{inflection}: {}", r.json());
    }
    let r = h.post(body(&blinded, &key_id), &[("key-inflection", "pascal")]).await;
    assert_eq!((r.status, r.error_title().as_str()), (StatusCode::BAD_REQUEST, "Bad Request"));

    let r = h.post(body(&blinded, &key_id), &[("persona-version", "2023-01-05")]).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("persona-version"), Some("2023-01-05"));
    let r = h.post(body(&blinded, &key_id), &[("persona-version", "2019-01-01")]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.header("persona-version"), None);
}

#[tokio::test]
async fn authentication_and_permissions() {
    let h = harness(300).await;
    let (sandbox_key, key_id, _, blinded) = h.blinded(Environment::Sandbox).await;
    let json_ct = ("content-type", "application/json");
    let raw = serde_json::to_vec(&body(&blinded, &key_id)).unwrap();

    let r = h.call(Method::POST, PATH, &[json_ct], raw.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_title(), "Must be authenticated to access this endpoint");
    assert_eq!(r.header("ratelimit-limit"), None, "401s carry no rate-limit headers");

    for bad in ["Bearer persona_sandbox_nope", "Basic abc", "Bearer", "bearer "] {
        let r = h.call(Method::POST, PATH, &[json_ct, ("authorization", bad)], raw.clone()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{bad}");
    }

    let r = h.post_as(&h.revoked_key.clone(), body(&blinded, &key_id), &[]).await;
    assert_eq!((r.status, r.error_title().as_str()), (StatusCode::FORBIDDEN, "Forbidden"));

    let r = h.post_as(&h.no_permission_key.clone(), body(&blinded, &key_id), &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.header("ratelimit-limit"), None, "a refusal by permission is not counted, so it reports no window");
    assert!(r.header("persona-environment-id").is_some(), "but it names the key's environment");

    // A production API key naming a sandbox issuer key.
    let r = h.post_as(&h.production_key.clone(), body(&blinded, &sandbox_key.token_key_id().to_hex()), &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn malformed_requests_are_400() {
    let h = harness(300).await;
    let (_, key_id, _, blinded) = h.blinded(Environment::Sandbox).await;
    let token = b64::encode_unpadded(&blinded);
    assert_eq!(blinded.len() % 3, 1, "canonical padding of this token is ==");
    let auth = format!("Bearer {}", h.sandbox_key);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"{".to_vec()),
        ("not an object", b"[1,2]".to_vec()),
        ("unknown field", serde_json::to_vec(&json!({"blinded-token": token, "key-id": key_id, "extra": 1})).unwrap()),
        ("missing key-id", serde_json::to_vec(&json!({"blinded-token": token})).unwrap()),
        ("missing blinded-token", serde_json::to_vec(&json!({"key-id": key_id})).unwrap()),
        ("null field", serde_json::to_vec(&json!({"blinded-token": null, "key-id": key_id})).unwrap()),
        ("wrong type", serde_json::to_vec(&json!({"blinded-token": 5, "key-id": key_id})).unwrap()),
        (
            "standard alphabet",
            serde_json::to_vec(
                &json!({"blinded-token": token.replace('-', "+").replace('_', "/") + "+/", "key-id": key_id}),
            )
            .unwrap(),
        ),
        ("bad base64", serde_json::to_vec(&json!({"blinded-token": "!!!", "key-id": key_id})).unwrap()),
        (
            "one = where two are needed",
            serde_json::to_vec(&json!({"blinded-token": format!("{token}="), "key-id": key_id})).unwrap(),
        ),
        (
            "= inside the value",
            serde_json::to_vec(
                &json!({"blinded-token": format!("{}=={}", &token[..4], &token[4..]), "key-id": key_id}),
            )
            .unwrap(),
        ),
        ("short key id", serde_json::to_vec(&json!({"blinded-token": token, "key-id": "abcd"})).unwrap()),
        ("non-hex key id", serde_json::to_vec(&json!({"blinded-token": token, "key-id": "z".repeat(64)})).unwrap()),
        (
            "same field twice in two casings",
            serde_json::to_vec(&json!({"blinded-token": token, "blindedToken": token, "key-id": key_id})).unwrap(),
        ),
    ];
    for (what, raw) in cases {
        let r =
            h.call(Method::POST, PATH, &[("authorization", &auth), ("content-type", "application/json")], raw).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.error_title(), "Bad Request", "{what}");
    }
}

#[tokio::test]
async fn unusable_values_are_404_or_422() {
    let h = harness(300).await;
    let (key, key_id, _, blinded) = h.blinded(Environment::Sandbox).await;

    let r = h.post(body(&blinded, &"ab".repeat(32)), &[]).await;
    assert_eq!((r.status, r.error_title().as_str()), (StatusCode::NOT_FOUND, "Record not found"));

    let r = h.post(body(&blinded[..255], &key_id), &[]).await;
    assert_eq!((r.status, r.error_title().as_str()), (StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable entity"));
    let r = h.post(body(&[blinded.clone(), vec![0]].concat(), &key_id), &[]).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    // >= n, never reduced.
    let r = h.post(body(&[0xff; 256], &key_id), &[]).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = h.post(body(key.rsa().n(), &key_id), &[]).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Rotated out: verify-only keys do not issue; retired ones neither.
    h.service.rotate_key(Environment::Sandbox, 2, None).await.unwrap();
    let r = h.post(body(&blinded, &key_id), &[]).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", String::from_utf8_lossy(&r.body));
    h.service.retire_key(&key_id).await.unwrap();
    let r = h.post(body(&blinded, &key_id), &[]).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    // The new key issues.
    let (_, new_id, _, blinded) = h.blinded(Environment::Sandbox).await;
    assert_ne!(new_id, key_id);
    assert_eq!(h.post(body(&blinded, &new_id), &[]).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn idempotency_replays_the_first_response_byte_for_byte() {
    let h = harness(300).await;
    let (_, key_id, _, blinded) = h.blinded(Environment::Sandbox).await;
    let idem = ("idempotency-key", "8d3c0b5e-2f0a-4c1e-9a51-1c1f0e1d2a3b");
    let first = h.post(body(&blinded, &key_id), &[idem]).await;
    assert_eq!(first.status, StatusCode::CREATED);
    // Retire the key: a fresh request would now be 422, the replay is not.
    h.service.retire_key(&key_id).await.unwrap();
    let again = h.post(body(&blinded, &key_id), &[idem]).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body, first.body);
    assert!(again.header("ratelimit-remaining").is_some());
    // Errors are stored and replayed too.
    let idem2 = ("idempotency-key", "second");
    let e1 = h.post(body(&blinded, &key_id), &[idem2]).await;
    assert_eq!(e1.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(h.post(body(&blinded, &key_id), &[idem2]).await.body, e1.body);

    // Same key, other parameters.
    let r = h.post(body(&blinded[1..], &key_id), &[idem]).await;
    assert_eq!((r.status, r.error_title().as_str()), (StatusCode::BAD_REQUEST, "Idempotency error"));
    assert!(r.json()["errors"][0]["details"].as_str().unwrap().contains("8d3c0b5e-2f0a-4c1e-9a51-1c1f0e1d2a3b"));

    // Scoped per API key: another key may use the same Idempotency-Key.
    let other = h.service.create_api_key(Environment::Sandbox, vec![Permission::PrivacyPassWrite], None).await.unwrap();
    let r = h.post_as(&other.secret, body(&blinded[1..], &key_id), &[idem]).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn idempotency_in_flight_is_409_and_auth_failures_are_not_stored() {
    let h = harness(300).await;
    let (_, key_id, _, blinded) = h.blinded(Environment::Sandbox).await;
    let raw = serde_json::to_vec(&body(&blinded, &key_id)).unwrap();
    let api_key = h.service.authenticate(&h.sandbox_key).await.unwrap().key;
    // Another request holds the key, still running.
    let fp = blindpass_server::idempotency::fingerprint("POST", PATH, "application/json", &raw, &[]);
    let scope = format!("api_key:{}", api_key.id);
    h.service.store().idempotency_begin(&scope, "busy", &fp, h.service.now(), 86_400, 30).await.unwrap();
    let r = h.post(body(&blinded, &key_id), &[("idempotency-key", "busy")]).await;
    assert_eq!((r.status, r.error_title().as_str()), (StatusCode::CONFLICT, "Conflict"));

    // 401 first, then the real request with the same key runs.
    let r = h
        .call(Method::POST, PATH, &[("content-type", "application/json"), ("idempotency-key", "k1")], raw.clone())
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.post(body(&blinded, &key_id), &[("idempotency-key", "k1")]).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn rate_limit_exhaustion_and_reset() {
    let h = harness(3).await;
    let (_, key_id, _, blinded) = h.blinded(Environment::Sandbox).await;
    h.clock.advance(10);
    for remaining in ["2", "1", "0"] {
        let r = h.post(body(&blinded, &key_id), &[]).await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.header("ratelimit-remaining"), Some(remaining));
        assert_eq!(r.header("ratelimit-reset"), Some("50"));
    }
    // Counted per environment, across API keys; 429s are not stored for idempotency.
    let other = h.service.create_api_key(Environment::Sandbox, vec![Permission::PrivacyPassWrite], None).await.unwrap();
    let r = h.post_as(&other.secret, body(&blinded, &key_id), &[("idempotency-key", "rl")]).await;
    assert_eq!((r.status, r.error_title().as_str()), (StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded"));
    assert_eq!(r.header("retry-after"), Some("50"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    // The other environment has its own window.
    let (_, prod_id, _, prod_blinded) = h.blinded(Environment::Production).await;
    assert_eq!(
        h.post_as(&h.production_key.clone(), body(&prod_blinded, &prod_id), &[]).await.status,
        StatusCode::CREATED
    );
    // The next minute resets the window.
    h.clock.advance(50);
    let r = h.post_as(&other.secret, body(&blinded, &key_id), &[("idempotency-key", "rl")]).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("ratelimit-remaining"), Some("2"));
    assert_eq!(r.header("ratelimit-reset"), Some("60"));
}

#[tokio::test]
async fn transport_level_errors_use_the_persona_shape() {
    let h = harness(300).await;
    let auth = format!("Bearer {}", h.sandbox_key);
    let r = h
        .call(Method::POST, PATH, &[("authorization", &auth), ("content-type", "application/json")], vec![b' '; 70_000])
        .await;
    assert_eq!((r.status, r.error_title().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large"));
    let r =
        h.call(Method::POST, PATH, &[("authorization", &auth), ("content-type", "text/plain")], b"{}".to_vec()).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    r.error_title();
    let r = h.call(Method::POST, PATH, &[("authorization", &auth)], b"{}".to_vec()).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "a missing content type is not guessed");
    let r = h.call(Method::GET, PATH, &[], vec![]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    r.error_title();
    let r = h.call(Method::GET, "/api/v1/nope", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    r.error_title();
    let r = h.call(Method::GET, "/health", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// A request body that never arrives (a slow-loris client).
struct NeverBody;

impl http_body::Body for NeverBody {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

#[tokio::test]
async fn a_request_over_the_timeout_is_503() {
    let h =
        harness_with(300, Limits { request_timeout: std::time::Duration::from_millis(50), ..Limits::default() }).await;
    let request = Request::builder()
        .method(Method::POST)
        .uri(PATH)
        .header("authorization", format!("Bearer {}", h.sandbox_key))
        .header("content-type", "application/json")
        .body(Body::new(NeverBody))
        .unwrap();
    let response = h.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("request-id"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["errors"][0]["title"], "Request timeout");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// No body or header value a client can send makes the server answer 5xx
    /// (`Harness::call` asserts it on every response).
    #[test]
    fn no_input_produces_a_server_error(
        raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        json_body in proptest::prelude::any::<bool>(),
        field in "[a-zA-Z_-]{0,16}",
        value in "[ -~]{0,40}",
        header_value in "[ -~]{0,40}",
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let h = harness(0).await;
            let auth = format!("Bearer {}", h.sandbox_key);
            let payload = if json_body { serde_json::to_vec(&json!({ field.clone(): value })).unwrap() } else { raw };
            for (name, v) in [("key-inflection", header_value.as_str()), ("persona-version", header_value.as_str()), ("idempotency-key", header_value.as_str()), ("content-type", "application/json")] {
                h.call(Method::POST, PATH, &[("authorization", &auth), ("content-type", "application/json"), (name, v)], payload.clone()).await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_claim_whose_client_left_while_the_store_was_busy_is_released_at_once() {
    // No rate limits: the request's first store write is its claim.
    let h = harness(0).await;
    let (_, key_id, _, blinded) = h.blinded(Environment::Sandbox).await;
    let idem = ("idempotency-key", "left-while-busy");
    // Warm the API key cache, so authentication needs no store read.
    assert_eq!(h.post(body(&blinded, &key_id), &[]).await.status, StatusCode::CREATED);
    // Another process holds the database's write lock.
    let lock = rusqlite::Connection::open(h._dir.path().join("db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let left = tokio::time::timeout(Duration::from_millis(500), h.post(body(&blinded, &key_id), &[idem])).await;
    assert!(left.is_err(), "the request should still be waiting for the store");
    // The client is gone; the store frees up and makes the claim.
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    // Its retry runs at once, not a 409 for the request timeout (30 s).
    let started = std::time::Instant::now();
    loop {
        let r = h.post(body(&blinded, &key_id), &[idem]).await;
        if r.status == StatusCode::CREATED {
            break;
        }
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert!(started.elapsed() < Duration::from_secs(3), "still 409 after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
