//! Router-level tests of generic batched issuance on `/token-request`: every
//! status the draft names (200, 206, 400, 422, 415), both framings, the size
//! cap, rate limits that count tokens, idempotent replay, and tokens that
//! finalize and verify.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::disallowed_methods)]

mod common;

use axum::http::{Method, StatusCode};
use blindpass_protocol::batch::{
    BatchTokenRequest, BatchTokenResponse, Framing, GenericTokenRequest, MEDIA_TYPE_ARBITRARY_BATCH_REQUEST,
    MEDIA_TYPE_ARBITRARY_BATCH_RESPONSE, MEDIA_TYPE_GENERIC_BATCH_REQUEST, MEDIA_TYPE_GENERIC_BATCH_RESPONSE,
    encode_varint,
};
use blindpass_protocol::type2;
use blindpass_protocol::type2::keys::IssuerPublicKey;
use blindpass_protocol::type2::wire::TokenResponse;
use blindpass_protocol::wire::TokenChallenge;
use blindpass_server::Limits;
use blindpass_service::Environment;
use common::*;

const PATH: &str = "/token-request";

fn challenge() -> TokenChallenge {
    TokenChallenge::new(2, "issuer.example", &[5; 32], "origin.example").unwrap()
}

/// `n` type-2 items for `key`, with the client states that finalize them.
fn type2_items(key: &IssuerPublicKey, n: usize) -> (Vec<GenericTokenRequest>, Vec<type2::IssuanceState>) {
    (0..n)
        .map(|_| {
            let (request, state) = type2::begin_issuance(key, &challenge(), &mut rand::rng()).unwrap();
            let item = GenericTokenRequest {
                token_type: 2,
                truncated_token_key_id: request.truncated_token_key_id,
                blinded_msg: request.blinded_msg.to_vec(),
            };
            (item, state)
        })
        .unzip()
}

fn voprf_item() -> GenericTokenRequest {
    GenericTokenRequest { token_type: 1, truncated_token_key_id: 1, blinded_msg: vec![2; 49] }
}

async fn post(h: &Harness, body: Vec<u8>, content_type: &str, extra: &[(&str, &str)]) -> Reply {
    let auth = format!("Bearer {}", h.sandbox_key);
    let mut headers = vec![("authorization", auth.as_str()), ("content-type", content_type)];
    headers.extend_from_slice(extra);
    h.call(Method::POST, PATH, &headers, body).await
}

/// Every present item finalizes into a token that verifies under `key`.
fn finalize_all(key: &IssuerPublicKey, states: &[type2::IssuanceState], response: &BatchTokenResponse) -> usize {
    let mut finalized = 0;
    for (state, item) in states.iter().zip(&response.items) {
        if let Some(item) = item {
            let token = type2::finalize_issuance(key, state, &TokenResponse::decode(&item.body).unwrap()).unwrap();
            type2::verify_token(key, &token).unwrap();
            finalized += 1;
        }
    }
    finalized
}

#[tokio::test]
async fn a_generic_batch_is_issued_whole_and_every_token_verifies() {
    let h = harness(0).await;
    let key = h.key(Environment::Sandbox).await;
    let (items, states) = type2_items(&key, 8);
    let request = BatchTokenRequest { items };
    let r = post(&h, request.encode(Framing::Generic), MEDIA_TYPE_GENERIC_BATCH_REQUEST, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some(MEDIA_TYPE_GENERIC_BATCH_RESPONSE));
    let response = BatchTokenResponse::decode(&r.body, Framing::Generic, &request).unwrap();
    assert_eq!(finalize_all(&key, &states, &response), 8);
}

#[tokio::test]
async fn items_the_issuer_cannot_issue_are_absent_inside_a_206() {
    let h = harness(0).await;
    let old = h.key(Environment::Sandbox).await;
    let (mut old_items, _) = type2_items(&old, 1);
    h.service.rotate_key(Environment::Sandbox, 2, None).await.unwrap();
    h.service.reload_keys().await.unwrap();
    let key = h.key(Environment::Sandbox).await;
    assert_ne!(key, old);
    let (mut items, mut states) = type2_items(&key, 2);
    // [fresh, rotated-out key, VOPRF type 1, fresh]
    let (last, last_state) = (items.pop().unwrap(), states.pop().unwrap());
    items.extend([old_items.pop().unwrap(), voprf_item(), last]);
    let request = BatchTokenRequest { items };
    let r = post(&h, request.encode(Framing::Generic), MEDIA_TYPE_GENERIC_BATCH_REQUEST, &[]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{}", String::from_utf8_lossy(&r.body));
    let response = BatchTokenResponse::decode(&r.body, Framing::Generic, &request).unwrap();
    let present: Vec<bool> = response.items.iter().map(Option::is_some).collect();
    assert_eq!(present, [true, false, false, true]);
    for (item, state) in [(&response.items[0], &states[0]), (&response.items[3], &last_state)] {
        let body = &item.as_ref().unwrap().body;
        let token = type2::finalize_issuance(&key, state, &TokenResponse::decode(body).unwrap()).unwrap();
        type2::verify_token(&key, &token).unwrap();
    }
}

#[tokio::test]
async fn a_batch_with_nothing_issued_is_a_400_that_says_why() {
    let h = harness(0).await;
    let key = h.key(Environment::Sandbox).await;
    let (mut items, _) = type2_items(&key, 2);
    for item in &mut items {
        item.truncated_token_key_id = item.truncated_token_key_id.wrapping_add(1);
    }
    let r = post(&h, BatchTokenRequest { items }.encode(Framing::Generic), MEDIA_TYPE_GENERIC_BATCH_REQUEST, &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["errors"][0]["details"].as_str().unwrap().contains("truncated_token_key_id"), "{}", r.json());
    // A type blindpass does not know (legacy framing lets it be sent) is absent.
    let unknown = GenericTokenRequest { token_type: 0x1234, truncated_token_key_id: 1, blinded_msg: vec![2; 7] };
    let only_unknown = BatchTokenRequest { items: vec![unknown] }.encode(Framing::Legacy);
    let r = post(&h, only_unknown, blindpass_protocol::batch::MEDIA_TYPE_ARBITRARY_BATCH_REQUEST, &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["errors"][0]["details"].as_str().unwrap().contains("token types 1, 2 and 5"), "{}", r.json());
}

#[tokio::test]
async fn unusable_batches_are_422_and_past_the_cap_the_error_says_the_cap() {
    let h = harness_with(0, Limits { max_batch_size: 4, ..Limits::default() }).await;
    let key = h.key(Environment::Sandbox).await;
    let (items, _) = type2_items(&key, 5);
    let over = BatchTokenRequest { items: items.clone() }.encode(Framing::Generic);
    let r = post(&h, over, MEDIA_TYPE_GENERIC_BATCH_REQUEST, &[]).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.json()["errors"][0]["details"].as_str().unwrap().contains("at most 4"), "{}", r.json());

    let four = BatchTokenRequest { items: items[..4].to_vec() }.encode(Framing::Generic);
    assert_eq!(post(&h, four.clone(), MEDIA_TYPE_GENERIC_BATCH_REQUEST, &[]).await.status, StatusCode::OK);
    let mut unknown_type = encode_varint(5);
    unknown_type.extend_from_slice(&[0x12, 0x34, 0, 1, 2]);
    let truncated = four[..four.len() - 1].to_vec();
    let non_minimal = vec![0x40, 0];
    for body in [unknown_type, truncated, non_minimal, vec![0], vec![]] {
        let r = post(&h, body.clone(), MEDIA_TYPE_GENERIC_BATCH_REQUEST, &[]).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body:02x?}: {}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(post(&h, four, "application/octet-stream", &[]).await.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn the_arbitrary_batch_name_of_older_privacypass_ts_gets_its_own_framing() {
    let h = harness(0).await;
    let key = h.key(Environment::Sandbox).await;
    let (mut items, states) = type2_items(&key, 2);
    items.push(voprf_item());
    let request = BatchTokenRequest { items };
    let r = post(&h, request.encode(Framing::Legacy), MEDIA_TYPE_ARBITRARY_BATCH_REQUEST, &[]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some(MEDIA_TYPE_ARBITRARY_BATCH_RESPONSE));
    let response = BatchTokenResponse::decode(&r.body, Framing::Legacy, &request).unwrap();
    assert_eq!(finalize_all(&key, &states, &response), 2);
    assert!(response.items[2].is_none());
}

#[tokio::test]
async fn rate_limits_count_a_batchs_tokens() {
    let h = harness(10).await;
    let key = h.key(Environment::Sandbox).await;
    let batch = |n| BatchTokenRequest { items: type2_items(&key, n).0 }.encode(Framing::Generic);
    let r = post(&h, batch(8), MEDIA_TYPE_GENERIC_BATCH_REQUEST, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!((r.header("ratelimit-limit"), r.header("ratelimit-remaining")), (Some("10"), Some("2")));
    let r = post(&h, batch(3), MEDIA_TYPE_GENERIC_BATCH_REQUEST, &[]).await;
    assert_eq!((r.status, r.error_title().as_str()), (StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded"));
}

#[tokio::test]
async fn a_retried_batch_replays_its_first_answer_byte_for_byte() {
    let h = harness(0).await;
    let key = h.key(Environment::Sandbox).await;
    let (mut items, _) = type2_items(&key, 2);
    items.push(voprf_item());
    let body = BatchTokenRequest { items }.encode(Framing::Generic);
    let key_header = [("idempotency-key", "batch-1")];
    let first = post(&h, body.clone(), MEDIA_TYPE_GENERIC_BATCH_REQUEST, &key_header).await;
    assert_eq!(first.status, StatusCode::PARTIAL_CONTENT);
    let again = post(&h, body, MEDIA_TYPE_GENERIC_BATCH_REQUEST, &key_header).await;
    assert_eq!((again.status, again.header("content-type")), (first.status, first.header("content-type")));
    assert_eq!(again.body, first.body);
}
