//! Router-level tests of token types 1 (VOPRF P-384) and 5 (VOPRF
//! ristretto255): the directory's keys, single and amortized issuance on
//! `/token-request`, generic batches mixing every type, redemption once at
//! generate-claim, and every refusal an attacker can provoke (a 4xx, never a
//! 5xx: the harness fails any 5xx).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::disallowed_methods)]

mod common;

use axum::http::{Method, StatusCode};
use blindpass_protocol::batch::{
    BatchTokenRequest, BatchTokenResponse, Framing, GenericTokenRequest, MEDIA_TYPE_GENERIC_BATCH_REQUEST,
};
use blindpass_protocol::directory::IssuerDirectory;
use blindpass_protocol::voprf::wire::{
    AmortizedTokenRequest, AmortizedTokenResponse, MEDIA_TYPE_AMORTIZED_BATCH_REQUEST,
    MEDIA_TYPE_AMORTIZED_BATCH_RESPONSE, VoprfToken, VoprfTokenRequest, VoprfTokenResponse,
};
use blindpass_protocol::voprf::{self, PublicKey, Suite};
use blindpass_protocol::wire::{MEDIA_TYPE_TOKEN_REQUEST, MEDIA_TYPE_TOKEN_RESPONSE, TokenChallenge};
use blindpass_protocol::{auth, b64, type2};
use blindpass_server::Limits;
use blindpass_service::{Config, Environment};
use common::*;

const CLAIM: &str = "age_over18_verified";

async fn post(h: &Harness, body: Vec<u8>, content_type: &str) -> Reply {
    let auth = format!("Bearer {}", h.sandbox_key);
    h.call(Method::POST, "/token-request", &[("authorization", auth.as_str()), ("content-type", content_type)], body)
        .await
}

/// The sandbox directory's key of `suite`, as a client finds it.
async fn directory_key(h: &Harness, suite: Suite) -> PublicKey {
    let r = h.call(Method::GET, "/.well-known/token-issuer-directory?sandbox=true", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::OK);
    IssuerDirectory::from_json(&r.body).unwrap().preferred_voprf_key(suite, u64::MAX).expect("a key of the suite")
}

/// The relay's 401 challenge of `suite`, with its token-key.
async fn relay_challenge(h: &Harness, relay: &(String, String), suite: Suite) -> (TokenChallenge, Vec<u8>) {
    let r = h.claim(relay, None, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let challenges = auth::parse_www_authenticate(r.header("www-authenticate").unwrap()).unwrap();
    let c = challenges.into_iter().find(|c| c.challenge.token_type == suite.token_type()).expect("a challenge");
    (c.challenge, c.token_key.unwrap())
}

/// A single issuance of `suite` over HTTP, finalized (the proof verified).
async fn single_token(h: &Harness, key: &PublicKey, challenge: &TokenChallenge) -> VoprfToken {
    let (blinded, state) = voprf::begin_issuance(key, challenge, 1, &mut rand::rng()).unwrap();
    let request = VoprfTokenRequest {
        suite: key.suite(),
        truncated_token_key_id: key.truncated_token_key_id(),
        blinded_element: blinded[0].clone(),
    };
    let r = post(h, request.encode(), MEDIA_TYPE_TOKEN_REQUEST).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some(MEDIA_TYPE_TOKEN_RESPONSE));
    let response = VoprfTokenResponse::decode(key.suite(), &r.body).unwrap();
    let mut tokens = voprf::finalize_issuance(&state, &[response.evaluated_element], &response.proof).unwrap();
    tokens.pop().unwrap()
}

/// An amortized batch of `n` over HTTP, finalized (one proof for all).
async fn amortized_tokens(h: &Harness, key: &PublicKey, challenge: &TokenChallenge, n: usize) -> Vec<VoprfToken> {
    let (blinded, state) = voprf::begin_issuance(key, challenge, n, &mut rand::rng()).unwrap();
    let request = AmortizedTokenRequest {
        suite: key.suite(),
        truncated_token_key_id: key.truncated_token_key_id(),
        blinded_elements: blinded,
    };
    let r = post(h, request.encode(), MEDIA_TYPE_AMORTIZED_BATCH_REQUEST).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some(MEDIA_TYPE_AMORTIZED_BATCH_RESPONSE));
    let response = AmortizedTokenResponse::decode(key.suite(), n, &r.body).unwrap();
    voprf::finalize_issuance(&state, &response.evaluated_elements, &response.proof).unwrap()
}

fn presented(token: &VoprfToken) -> String {
    b64::encode_padded(&token.encode())
}

#[tokio::test]
async fn types_1_and_5_issue_single_and_amortized_and_each_token_redeems_once() {
    let h = harness(0).await;
    for suite in Suite::ALL {
        let key = directory_key(&h, suite).await;
        let relay = h.relay(Environment::Sandbox, CLAIM, None).await;
        let other_relay = h.relay(Environment::Sandbox, CLAIM, None).await;
        let (challenge, token_key) = relay_challenge(&h, &relay, suite).await;
        assert_eq!(token_key, key.as_bytes(), "the 401's token-key is the directory's key");

        let mut tokens = vec![single_token(&h, &key, &challenge).await];
        tokens.extend(amortized_tokens(&h, &key, &challenge, 5).await);
        assert_eq!(tokens.len(), 6);
        for token in &tokens {
            assert_eq!(token.token_key_id, key.token_key_id());
            let r = h.claim(&relay, Some(&presented(token)), &[]).await;
            assert_eq!(r.status, StatusCode::OK, "{suite:?}: {}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.json()["token-consumed"], true);
            // The same token at the same relay: the stored claim (a lost answer's retry).
            let again = h.claim(&relay, Some(&presented(token)), &[]).await;
            assert_eq!(again.status, StatusCode::OK);
            // At any other relay: already used.
            let elsewhere = h.claim(&other_relay, Some(&presented(token)), &[]).await;
            assert_eq!(elsewhere.status, StatusCode::UNAUTHORIZED, "{suite:?}: a second redemption is refused");
            assert!(elsewhere.json()["errors"][0]["details"].as_str().unwrap().contains("already been used"));
        }
    }
}

#[tokio::test]
async fn forged_and_misdirected_voprf_tokens_are_refused_and_spend_nothing() {
    let h = harness(0).await;
    let relay = h.relay(Environment::Sandbox, CLAIM, None).await;
    for suite in Suite::ALL {
        let key = directory_key(&h, suite).await;
        let (challenge, _) = relay_challenge(&h, &relay, suite).await;
        let token = single_token(&h, &key, &challenge).await;

        let mut forged = token.clone();
        forged.authenticator[0] ^= 1;
        let mut other_nonce = token.clone();
        other_nonce.nonce[5] ^= 1;
        let mut truncated = token.encode();
        truncated.pop();
        // A token for another challenge (another origin's): digest mismatch.
        let foreign = TokenChallenge::new(suite.token_type(), "issuer.example", &[], "other.example").unwrap();
        let misdirected = single_token(&h, &key, &foreign).await;
        for (what, bytes) in [
            ("forged authenticator", forged.encode()),
            ("other nonce", other_nonce.encode()),
            ("truncated", truncated),
            ("another challenge", misdirected.encode()),
        ] {
            let r = h.claim(&relay, Some(&b64::encode_padded(&bytes)), &[]).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{suite:?} {what}");
        }
        // None of the refusals spent the genuine token.
        let r = h.claim(&relay, Some(&presented(&token)), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{suite:?}");
    }
}

#[tokio::test]
async fn hostile_voprf_requests_are_422_never_5xx() {
    let h = harness_with(0, Limits { max_batch_size: 8, ..Limits::default() }).await;
    for suite in Suite::ALL {
        let key = directory_key(&h, suite).await;
        let t = suite.token_type().to_be_bytes();
        let id = key.truncated_token_key_id();
        let ne = suite.element_len();
        let single = |element: Vec<u8>| [&t[..], &[id], &element].concat();
        let amortized = |elements: Vec<Vec<u8>>| {
            AmortizedTokenRequest { suite, truncated_token_key_id: id, blinded_elements: elements }.encode()
        };
        let valid = voprf::begin_issuance(
            &key,
            &TokenChallenge::new(suite.token_type(), "i.example", &[], "").unwrap(),
            9,
            &mut rand::rng(),
        )
        .unwrap()
        .0;
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("not a point", single(vec![0xff; ne]), MEDIA_TYPE_TOKEN_REQUEST),
            ("identity", single(vec![0; ne]), MEDIA_TYPE_TOKEN_REQUEST),
            ("short", single(vec![2; ne - 1]), MEDIA_TYPE_TOKEN_REQUEST),
            ("long", single(vec![2; ne + 1]), MEDIA_TYPE_TOKEN_REQUEST),
            ("unknown key", [&t[..], &[id.wrapping_add(1)], &valid[0]].concat(), MEDIA_TYPE_TOKEN_REQUEST),
            (
                "one bad element of three",
                amortized(vec![valid[0].clone(), vec![0xff; ne], valid[1].clone()]),
                MEDIA_TYPE_AMORTIZED_BATCH_REQUEST,
            ),
            ("empty batch", amortized(vec![]), MEDIA_TYPE_AMORTIZED_BATCH_REQUEST),
            ("past the cap", amortized(valid.clone()), MEDIA_TYPE_AMORTIZED_BATCH_REQUEST),
            ("ragged", [&amortized(valid[..2].to_vec())[..], &[1]].concat(), MEDIA_TYPE_AMORTIZED_BATCH_REQUEST),
            ("type 2 as amortized", [&[0u8, 2, id][..], &[1, 0]].concat(), MEDIA_TYPE_AMORTIZED_BATCH_REQUEST),
        ];
        for (what, body, media_type) in cases {
            let r = post(&h, body, media_type).await;
            assert_eq!(
                r.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{suite:?} {what}: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
        let r = post(&h, amortized(valid[..8].to_vec()), MEDIA_TYPE_AMORTIZED_BATCH_REQUEST).await;
        assert_eq!(r.status, StatusCode::OK, "{suite:?}: at the cap");
    }
}

#[tokio::test]
async fn a_generic_batch_mixes_types_1_2_and_5() {
    let h = harness(0).await;
    let rsa = h.key(Environment::Sandbox).await;
    let challenge2 = TokenChallenge::new(2, "issuer.example", &[], "").unwrap();
    let (request2, state2) = type2::begin_issuance(&rsa, &challenge2, &mut rand::rng()).unwrap();
    let mut items = vec![GenericTokenRequest {
        token_type: 2,
        truncated_token_key_id: request2.truncated_token_key_id,
        blinded_msg: request2.blinded_msg.to_vec(),
    }];
    let mut states = Vec::new();
    for suite in Suite::ALL {
        let key = directory_key(&h, suite).await;
        let challenge = TokenChallenge::new(suite.token_type(), "issuer.example", &[], "").unwrap();
        let (blinded, state) = voprf::begin_issuance(&key, &challenge, 1, &mut rand::rng()).unwrap();
        items.push(GenericTokenRequest {
            token_type: suite.token_type(),
            truncated_token_key_id: key.truncated_token_key_id(),
            blinded_msg: blinded[0].clone(),
        });
        states.push((suite, state));
    }
    let request = BatchTokenRequest { items };
    let r = post(&h, request.encode(Framing::Generic), MEDIA_TYPE_GENERIC_BATCH_REQUEST).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let response = BatchTokenResponse::decode(&r.body, Framing::Generic, &request).unwrap();
    let types: Vec<u16> = response.items.iter().map(|i| i.as_ref().unwrap().token_type).collect();
    assert_eq!(types, [2, 1, 5]);
    let body = &response.items[0].as_ref().unwrap().body;
    let token =
        type2::finalize_issuance(&rsa, &state2, &blindpass_protocol::type2::wire::TokenResponse::decode(body).unwrap())
            .unwrap();
    type2::verify_token(&rsa, &token).unwrap();
    for ((suite, state), item) in states.iter().zip(&response.items[1..]) {
        let single = VoprfTokenResponse::decode(*suite, &item.as_ref().unwrap().body).unwrap();
        voprf::finalize_issuance(state, &[single.evaluated_element], &single.proof).unwrap();
    }
}

#[tokio::test]
async fn amortized_batches_count_every_token_against_the_rate_limit() {
    let h = harness(10).await;
    let key = directory_key(&h, Suite::Ristretto255).await;
    let challenge = TokenChallenge::new(5, "issuer.example", &[], "").unwrap();
    amortized_tokens(&h, &key, &challenge, 8).await;
    let (blinded, _) = voprf::begin_issuance(&key, &challenge, 3, &mut rand::rng()).unwrap();
    let request = AmortizedTokenRequest {
        suite: Suite::Ristretto255,
        truncated_token_key_id: key.truncated_token_key_id(),
        blinded_elements: blinded,
    };
    let r = post(&h, request.encode(), MEDIA_TYPE_AMORTIZED_BATCH_REQUEST).await;
    assert_eq!((r.status, r.error_title().as_str()), (StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded"));
}

#[tokio::test]
async fn disabled_types_are_neither_issued_listed_nor_accepted() {
    let config = Config {
        issuer_name: "issuer.example".into(),
        rate_limit_per_minute: 0,
        client_rate_limit_per_minute: 0,
        relay_rate_limit_per_minute: 0,
        auth_failure_limit_per_minute: 0,
        token_types: vec![2, 5],
        relay_token_types: vec![2],
        ..Config::default()
    };
    let h = harness_from(config, Limits::default()).await;
    let r = h.call(Method::GET, "/.well-known/private-token-issuer-directory?sandbox=true", &[], vec![]).await;
    let types: Vec<u16> =
        IssuerDirectory::from_json(&r.body).unwrap().token_keys.iter().map(|k| k.token_type).collect();
    assert_eq!(types, [2, 5], "type 1 is not enabled: no key, not listed");
    let r = post(&h, [&[0u8, 1, 7][..], &[2; 49]].concat(), MEDIA_TYPE_TOKEN_REQUEST).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "type 1 is not issued");

    let relay = h.relay(Environment::Sandbox, CLAIM, None).await;
    let r = h.claim(&relay, None, &[]).await;
    let challenges = auth::parse_www_authenticate(r.header("www-authenticate").unwrap()).unwrap();
    assert_eq!(challenges.iter().map(|c| c.challenge.token_type).collect::<Vec<_>>(), [2], "relays accept type 2 only");
    // A type-5 token (issued, since type 5 is enabled) is not accepted at relays.
    let key = directory_key(&h, Suite::Ristretto255).await;
    let challenge = TokenChallenge::new(5, "issuer.example", &[], "").unwrap();
    let token = single_token(&h, &key, &challenge).await;
    let r = h.claim(&relay, Some(&presented(&token)), &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.json()["errors"][0]["details"].as_str().unwrap().contains("does not accept"), "{}", r.json());
}

#[tokio::test]
async fn an_idempotent_reply_is_never_replayed_to_another_media_type() {
    let h = harness(300).await;
    let key = directory_key(&h, Suite::Ristretto255).await;
    let challenge = TokenChallenge::new(5, "issuer.example", &[], "").unwrap();
    let (blinded, _) = voprf::begin_issuance(&key, &challenge, 3, &mut rand::rng()).unwrap();
    let request = AmortizedTokenRequest {
        suite: Suite::Ristretto255,
        truncated_token_key_id: key.truncated_token_key_id(),
        blinded_elements: blinded,
    }
    .encode();
    let auth = format!("Bearer {}", h.sandbox_key);
    let send = |media: &'static str| {
        let (auth, request) = (auth.clone(), request.clone());
        let h = &h;
        async move {
            h.call(
                Method::POST,
                "/token-request",
                &[("authorization", auth.as_str()), ("content-type", media), ("idempotency-key", "same-key")],
                request,
            )
            .await
        }
    };
    let first = send(MEDIA_TYPE_AMORTIZED_BATCH_REQUEST).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("content-type"), Some(MEDIA_TYPE_AMORTIZED_BATCH_RESPONSE));
    // The same key and bytes as the same media type: replayed.
    let again = send(MEDIA_TYPE_AMORTIZED_BATCH_REQUEST).await;
    assert_eq!((again.status, &again.body), (StatusCode::OK, &first.body));
    // The same key and bytes as another media type: other parameters.
    let other = send(MEDIA_TYPE_GENERIC_BATCH_REQUEST).await;
    assert_ne!(other.header("content-type"), Some(MEDIA_TYPE_AMORTIZED_BATCH_RESPONSE), "replayed across media types");
    assert_eq!((other.status, other.error_title().as_str()), (StatusCode::BAD_REQUEST, "Idempotency error"));
}
