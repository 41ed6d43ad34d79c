//! Router-level tests of the relay flow and the RFC dialect: challenge →
//! issue → finalize → relay → claim, the RFC 401 → /token-request → Token →
//! claim flow, every rejection, and single spend under a 64-way race.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::disallowed_methods)]

mod common;

use axum::http::{Method, StatusCode};
use blindpass_protocol::directory::IssuerDirectory;
use blindpass_protocol::type2::keys::IssuerPublicKey;
use blindpass_protocol::type2::wire::{TokenRequest, TokenResponse};
use blindpass_protocol::{auth, b64, oaep, persona, type2};
use blindpass_service::{ClaimType, Environment, Permission};
use common::*;
use serde_json::{Value, json};

const CLAIM: &str = "age_over18_verified";

impl Harness {
    async fn record(&self, relay: &str, result: &str) -> Reply {
        self.record_body(
            relay,
            json!({"claim-result": result, "methodology": [{"method": "live_selfie", "result": result}]}),
        )
        .await
    }

    async fn record_body(&self, relay: &str, body: Value) -> Reply {
        let verifier =
            self.service.create_api_key(Environment::Production, vec![Permission::RelayVerify], None).await.unwrap();
        let auth = format!("Bearer {}", verifier.secret.as_str());
        self.call(
            Method::POST,
            &format!("/api/privacy/v1/relays/{relay}/result"),
            &[("authorization", &auth), ("content-type", "application/json")],
            serde_json::to_vec(&body).unwrap(),
        )
        .await
    }
}

fn assert_token_required(r: &Reply) -> auth::PrivateTokenChallenge {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_title(), "Privacy Pass token required");
    let header = r.header("www-authenticate").expect("WWW-Authenticate");
    let challenges = auth::parse_www_authenticate(header).unwrap();
    let types: Vec<u16> = challenges.iter().map(|c| c.challenge.token_type).collect();
    assert_eq!(types, [2, 1, 5], "one challenge per accepted type, type 2 first: {header}");
    challenges[0].clone()
}

#[tokio::test]
async fn challenge_endpoint_returns_a_macd_challenge_and_the_environment_key() {
    let h = harness(300).await;
    for (sandbox, env) in [(true, Environment::Sandbox), (false, Environment::Production)] {
        let r =
            h.public_post("/api/privacy/v1/relays/challenge", json!({"claimType": CLAIM, "sandbox": sandbox})).await;
        assert_eq!(r.status, StatusCode::OK);
        let body = r.json();
        let key_der = b64::decode(body["token-key"].as_str().unwrap()).unwrap();
        assert!(!body["token-key"].as_str().unwrap().contains('='), "unpadded");
        assert_eq!(IssuerPublicKey::from_spki_der(&key_der).unwrap(), h.key(env).await);
        assert_eq!(key_der, h.key(env).await.rsa_encryption_spki(), "Persona's token-key is the rsaEncryption SPKI");
        let challenge = persona::Challenge::decode(body["challenge"].as_str().unwrap()).unwrap();
        assert_eq!(
            (challenge.token_type, challenge.environment.as_str(), challenge.claim_type.as_str()),
            (2, env.as_str(), CLAIM)
        );
        assert_eq!(challenge.origin_info, "/api/privacy/v1/relays");
        let expires = blindpass_protocol::time::parse_rfc3339(&challenge.expires_at).unwrap() as i64;
        assert_eq!(expires % 3600, 0, "rounded up to the hour");
        assert!((3600..=7200).contains(&(expires - T0)));
        assert_eq!(challenge.mac.len(), 64);
        assert!(r.header("persona-environment-id").is_some());
    }
    for bad in [
        json!({}),
        json!({"claim-type": 1}),
        json!({"claim-type": ""}),
        json!({"claim-type": CLAIM, "sandbox": "yes"}),
        json!({"claim-type": CLAIM, "x": 1}),
    ] {
        let r = h.public_post("/api/privacy/v1/relays/challenge", bad.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn creating_relays_validates_the_encryption_key() {
    let h = harness(300).await;
    let key = blindpass_rsa::RsaPrivateKey::generate_2048().unwrap();
    let spki_pem = blindpass_protocol::pem::encode(
        "PUBLIC KEY",
        &blindpass_protocol::type2::blind_rsa::RawSigner::public_key(&key).to_rsa_encryption_spki(),
    );
    let pkcs1_pem = blindpass_protocol::pem::encode(
        "RSA PUBLIC KEY",
        &blindpass_protocol::type2::blind_rsa::RawSigner::public_key(&key).to_pkcs1_der(),
    );
    h.relay(Environment::Sandbox, CLAIM, None).await;
    h.relay(Environment::Sandbox, CLAIM, Some(&spki_pem)).await;
    h.relay(Environment::Production, CLAIM, Some(&pkcs1_pem)).await;
    let r = h.public_post("/api/privacy/v1/relays", json!({"claim-type": CLAIM})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "encryption-key-pem must be present");
    let r =
        h.public_post("/api/privacy/v1/relays", json!({"claim-type": CLAIM, "encryption-key-pem": "not a pem"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let small = "-----BEGIN RSA PUBLIC KEY-----\nMEgCQQDK1tQeMd7ZDBhKkEj0EdkkyFRWtZzzaMvGTFrq6ZNOnN0yoeTNzR0M0eyYP5pA2LPL4uVWUx/fsoLoWgbM/dv9AgMBAAE=\n-----END RSA PUBLIC KEY-----\n";
    let r = h.public_post("/api/privacy/v1/relays", json!({"claim-type": CLAIM, "encryption-key-pem": small})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "512-bit keys are refused");
}

#[tokio::test]
async fn persona_flow_sandbox_claim_spends_the_token_once() {
    let h = harness(300).await;
    let token = h.persona_token(Environment::Sandbox, CLAIM).await;
    let relay = h.relay(Environment::Sandbox, CLAIM, None).await;

    let c = assert_token_required(&h.claim(&relay, None, &[]).await);
    assert_eq!(c.challenge.token_type, 2);
    assert!(c.token_key.is_some());
    let wrong = (relay.0.clone(), "wrong-secret".to_owned());
    assert_eq!(h.claim(&wrong, Some(&token), &[]).await.status, StatusCode::NOT_FOUND, "wrong relay secret");
    let missing = ("relay_nope".to_owned(), relay.1.clone());
    assert_eq!(h.claim(&missing, Some(&token), &[]).await.status, StatusCode::NOT_FOUND);

    let r = h.claim(&relay, Some(&token), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["token-consumed"], true);
    let payload: Value = serde_json::from_str(r.json()["claim-payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload, json!({"claim_type": CLAIM, "claim_result": "passed", "methodology": []}));

    // Spent. The same relay (with its secret) answers a retry with the same
    // claim, for a client that lost the first answer; any other relay
    // refuses it as already used.
    let again = h.claim(&relay, Some(&token), &[]).await;
    assert_eq!((again.status, again.body.clone()), (StatusCode::OK, r.body.clone()), "retry at the same relay");
    let other = h.relay(Environment::Sandbox, CLAIM, None).await;
    let refused = h.claim(&other, Some(&token), &[]).await;
    assert_token_required(&refused);
    assert!(refused.json()["errors"][0]["details"].as_str().unwrap().contains("already been used"));
}

#[tokio::test]
async fn persona_tokens_are_rejected_when_forged_expired_or_out_of_scope() {
    let h = harness(300).await;
    let sandbox = h.relay(Environment::Sandbox, CLAIM, None).await;
    let token = h.persona_token(Environment::Sandbox, CLAIM).await;

    // Other environment, other claim type.
    let production = h.relay(Environment::Production, CLAIM, None).await;
    h.record(&production.0, "passed").await;
    assert_token_required(&h.claim(&production, Some(&token), &[]).await);
    let other_claim = h.relay(Environment::Sandbox, "live_human_presence", None).await;
    assert_token_required(&h.claim(&other_claim, Some(&token), &[]).await);

    // A tampered challenge (extended expiry) breaks the MAC.
    let mut parsed = persona::Token::decode(&token).unwrap().token;
    parsed.challenge.expires_at = "2099-01-01T00:00:00Z".into();
    assert_token_required(&h.claim(&sandbox, Some(&parsed.encode()), &[]).await);
    // A signature of another token.
    let other = persona::Token::decode(&h.persona_token(Environment::Sandbox, CLAIM).await).unwrap().token;
    let mut forged = persona::Token::decode(&token).unwrap().token;
    forged.signature = other.signature;
    assert_token_required(&h.claim(&sandbox, Some(&forged.encode()), &[]).await);
    // Garbage.
    for junk in ["", "!!!", "e30", "AAAA"] {
        assert_token_required(&h.claim(&sandbox, Some(junk), &[]).await);
    }
    // None of these spent it.
    assert_eq!(h.claim(&sandbox, Some(&token), &[]).await.status, StatusCode::OK);

    // Expired: challenges last at most two hours.
    let late = h.persona_token(Environment::Sandbox, CLAIM).await;
    h.clock.advance(3 * 3600);
    let r = h.claim(&sandbox, Some(&late), &[]).await;
    assert_token_required(&r);
    assert!(r.json()["errors"][0]["details"].as_str().unwrap().contains("expired"));
}

#[tokio::test]
async fn production_claims_wait_for_the_verifier_and_failed_claims_spend_nothing() {
    let h = harness(300).await;
    let token = h.persona_token(Environment::Production, CLAIM).await;
    let pending = h.relay(Environment::Production, CLAIM, None).await;
    let r = h.claim(&pending, Some(&token), &[("idempotency-key", "retry-me")]).await;
    assert_eq!((r.status, r.error_title().as_str()), (StatusCode::FORBIDDEN, "Forbidden"));
    assert!(r.header("retry-after").is_some());

    let failed = h.relay(Environment::Production, CLAIM, None).await;
    assert_eq!(h.record(&failed.0, "failed").await.status, StatusCode::OK);
    assert_eq!(h.record(&failed.0, "passed").await.status, StatusCode::CONFLICT, "results are final");
    let r = h.claim(&failed, Some(&token), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["token-consumed"], false);
    let payload: Value = serde_json::from_str(r.json()["claim-payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["claim_result"], "failed");

    // The verifier passes the pending relay; the same token (unspent) and the
    // same Idempotency-Key now succeed: the 403 was not stored.
    assert_eq!(h.record(&pending.0, "passed").await.status, StatusCode::OK);
    let r = h.claim(&pending, Some(&token), &[("idempotency-key", "retry-me")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["token-consumed"], true);
    let payload: Value = serde_json::from_str(r.json()["claim-payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["methodology"], json!([{"method": "live_selfie", "result": "passed"}]));
    // A retried redemption with the same key replays its 200.
    let replay = h.claim(&pending, Some(&token), &[("idempotency-key", "retry-me")]).await;
    assert_eq!((replay.status, replay.body.clone()), (StatusCode::OK, r.body.clone()));
    // Without the key, the same relay returns the same claim; another relay
    // refuses the spent token.
    let retried = h.claim(&pending, Some(&token), &[]).await;
    assert_eq!(
        (retried.status, retried.json()["claim-payload"].clone()),
        (StatusCode::OK, r.json()["claim-payload"].clone())
    );
    let other = h.relay(Environment::Production, CLAIM, None).await;
    assert_eq!(h.record(&other.0, "passed").await.status, StatusCode::OK);
    assert_token_required(&h.claim(&other, Some(&token), &[]).await);
}

#[tokio::test]
async fn result_endpoint_checks_permission_environment_and_relay() {
    let h = harness(300).await;
    let relay = h.relay(Environment::Production, CLAIM, None).await;
    let path = format!("/api/privacy/v1/relays/{}/result", relay.0);
    let body = serde_json::to_vec(&json!({"claim-result": "passed"})).unwrap();
    let call = async |secret: &str, path: &str, body: Vec<u8>| {
        let auth = format!("Bearer {secret}");
        h.call(Method::POST, path, &[("authorization", &auth), ("content-type", "application/json")], body).await
    };
    assert_eq!(call(&h.production_key, &path, body.clone()).await.status, StatusCode::FORBIDDEN, "needs relay.verify");
    let sandbox_verifier =
        h.service.create_api_key(Environment::Sandbox, vec![Permission::RelayVerify], None).await.unwrap();
    assert_eq!(
        call(&sandbox_verifier.secret, &path, body.clone()).await.status,
        StatusCode::NOT_FOUND,
        "other environment"
    );
    let sandbox_relay = h.relay(Environment::Sandbox, CLAIM, None).await;
    let r = call(&sandbox_verifier.secret, &format!("/api/privacy/v1/relays/{}/result", sandbox_relay.0), body.clone())
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "sandbox relays always pass");
    let verifier =
        h.service.create_api_key(Environment::Production, vec![Permission::RelayVerify], None).await.unwrap();
    for bad in
        [json!({"claim-result": "maybe"}), json!({}), json!({"claim-result": "passed", "methodology": [{"method": 1}]})]
    {
        let r = call(&verifier.secret, &path, serde_json::to_vec(&bad).unwrap()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let r = call(&verifier.secret, "/api/privacy/v1/relays/relay_missing/result", body.clone()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(&verifier.secret, &path, body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["claim-result"], "passed");
}

#[tokio::test]
async fn a_result_that_would_not_fit_the_relay_key_is_422_and_the_relay_stays_usable() {
    let h = harness(300).await;
    let key = blindpass_rsa::RsaPrivateKey::generate_2048().unwrap();
    let public = blindpass_protocol::type2::blind_rsa::RawSigner::public_key(&key);
    let pem = blindpass_protocol::pem::encode("PUBLIC KEY", &public.to_rsa_encryption_spki());
    let relay = h.relay(Environment::Production, CLAIM, Some(&pem)).await;
    // 2048-bit RSA-OAEP-SHA256 holds 190 bytes: this methodology cannot fit.
    let step = json!({"method": "government_id_verification", "result": "passed"});
    let long = json!({"claim-result": "passed", "methodology": vec![step; 4]});
    let r = h.record_body(&relay.0, long).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", String::from_utf8_lossy(&r.body));
    // Nothing was recorded: a result that fits is still accepted, and the
    // token redeems into a claim that decrypts.
    assert_eq!(h.record(&relay.0, "passed").await.status, StatusCode::OK);
    let token = h.persona_token(Environment::Production, CLAIM).await;
    let r = h.claim(&relay, Some(&token), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let ciphertext = b64::decode_standard(r.json()["claim-payload"].as_str().unwrap()).unwrap();
    let em = blindpass_protocol::type2::blind_rsa::RawSigner::rsasp1(&key, &ciphertext).unwrap();
    let claim: Value = serde_json::from_slice(&oaep::decode(&em).unwrap()).unwrap();
    assert_eq!(claim["claim_result"], "passed");
}

#[tokio::test]
async fn relay_creation_refuses_a_key_too_small_for_any_claim_of_its_type() {
    // Over HTTP claim types are at most 128 bytes, which every 2048-bit key
    // holds; the service still guards callers that are not the HTTP edge.
    let h = harness(300).await;
    let key = blindpass_rsa::RsaPrivateKey::generate_2048().unwrap();
    let public = blindpass_protocol::type2::blind_rsa::RawSigner::public_key(&key);
    let pem = blindpass_protocol::pem::encode("PUBLIC KEY", &public.to_rsa_encryption_spki());
    let long_type = "c".repeat(200);
    let e = h
        .service
        .create_relay(Environment::Production, &ClaimType::parse(&long_type).unwrap(), Some(&pem))
        .await
        .unwrap_err();
    assert!(matches!(e, blindpass_service::RelayError::KeyTooSmallForClaim { max: 190, .. }), "{e}");
    assert!(
        h.service.create_relay(Environment::Production, &ClaimType::parse(CLAIM).unwrap(), Some(&pem)).await.is_ok()
    );
}

#[tokio::test]
async fn encrypted_claim_payloads_decrypt_with_the_relay_key() {
    let h = harness(300).await;
    let key = blindpass_rsa::RsaPrivateKey::generate_2048().unwrap();
    let public = blindpass_protocol::type2::blind_rsa::RawSigner::public_key(&key);
    let pem = blindpass_protocol::pem::encode("PUBLIC KEY", &public.to_rsa_encryption_spki());
    let relay = h.relay(Environment::Sandbox, CLAIM, Some(&pem)).await;
    let token = h.persona_token(Environment::Sandbox, CLAIM).await;
    let r = h.claim(&relay, Some(&token), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let ciphertext = b64::decode_standard(r.json()["claim-payload"].as_str().unwrap()).unwrap();
    let em = blindpass_protocol::type2::blind_rsa::RawSigner::rsasp1(&key, &ciphertext).unwrap();
    let claim: Value = serde_json::from_slice(&oaep::decode(&em).unwrap()).unwrap();
    assert_eq!(claim["claim_result"], "passed");
}

#[tokio::test]
async fn rfc_flow_401_challenge_then_token_request_then_redeem() {
    let h = harness(300).await;
    let relay = h.relay(Environment::Sandbox, CLAIM, None).await;
    let offered = assert_token_required(&h.claim(&relay, None, &[]).await);
    let key = IssuerPublicKey::from_rfc9578_spki(offered.token_key.as_ref().unwrap()).unwrap();
    assert_eq!(key, h.key(Environment::Sandbox).await);
    assert_eq!(offered.challenge.redemption_context.len(), 32);

    let (request, state) = type2::begin_issuance(&key, &offered.challenge, &mut rand::rng()).unwrap();
    let auth_header = format!("Bearer {}", h.sandbox_key);
    let post = async |body: Vec<u8>, content_type: &str| {
        h.call(Method::POST, "/token-request", &[("authorization", &auth_header), ("content-type", content_type)], body)
            .await
    };
    let r = post(request.encode(), "application/private-token-request").await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/private-token-response"));
    assert_eq!(r.body.len(), 256);
    let token = type2::finalize_issuance(&key, &state, &TokenResponse::decode(&r.body).unwrap()).unwrap();
    let header_value = auth::authorization(&token.encode());
    let token_param = header_value.trim_start_matches("PrivateToken token=").trim_matches('"').to_owned();

    let redeemed = h.claim(&relay, Some(&format!("\"{token_param}\"")), &[]).await;
    assert_eq!(redeemed.status, StatusCode::OK, "{}", String::from_utf8_lossy(&redeemed.body));
    assert_eq!(redeemed.json()["token-consumed"], true);
    let retried = h.claim(&relay, Some(&token_param), &[]).await;
    assert_eq!((retried.status, retried.body.clone()), (StatusCode::OK, redeemed.body.clone()));
    let other = h.relay(Environment::Sandbox, CLAIM, None).await;
    assert_token_required(&h.claim(&other, Some(&token_param), &[]).await);

    // A token for a challenge this server never issued.
    let foreign = blindpass_protocol::wire::TokenChallenge::new(2, "issuer.example", &[1; 32], "").unwrap();
    let (request, state) = type2::begin_issuance(&key, &foreign, &mut rand::rng()).unwrap();
    let r = post(request.encode(), "application/private-token-request").await;
    let token = type2::finalize_issuance(&key, &state, &TokenResponse::decode(&r.body).unwrap()).unwrap();
    let r = h.claim(&relay, Some(&b64::encode_padded(&token.encode())), &[]).await;
    assert_token_required(&r);

    // /token-request rejections: 415, and 422 for type, size, unknown key.
    assert_eq!(post(request.encode(), "application/json").await.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let mut bad_type = request.encode();
    bad_type[1] = 1;
    assert_eq!(post(bad_type, "application/private-token-request").await.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        post(request.encode()[..258].to_vec(), "application/private-token-request").await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let mut unknown = request.clone();
    unknown.truncated_token_key_id ^= 0xff;
    assert_eq!(
        post(unknown.encode(), "application/private-token-request").await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let high =
        TokenRequest { truncated_token_key_id: key.truncated_token_key_id(), blinded_msg: Box::new([0xff; 256]) };
    assert_eq!(post(high.encode(), "application/private-token-request").await.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = h
        .call(
            Method::POST,
            "/token-request",
            &[("content-type", "application/private-token-request")],
            request.encode(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_client_knowing_only_the_issuer_name_finds_either_environments_token_key() {
    // A standard RFC client fetches the bare well-known path of the
    // challenge's issuer_name, shared by both environments.
    let h = harness(300).await;
    let r = h.call(Method::GET, "/.well-known/private-token-issuer-directory", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::OK);
    let directory = IssuerDirectory::from_json(&r.body).unwrap();
    let listed: Vec<&str> = directory.token_keys.iter().map(|k| k.token_key.as_str()).collect();
    for env in [Environment::Sandbox, Environment::Production] {
        let relay = h.relay(env, CLAIM, None).await;
        let challenge = assert_token_required(&h.claim(&relay, None, &[]).await);
        let token_key = b64::encode_padded(challenge.token_key.as_deref().unwrap());
        assert!(listed.contains(&token_key.as_str()), "{env:?} challenge's token-key in the bare directory");
    }
    // Production keys come first.
    assert_eq!(listed[0], b64::encode_padded(h.key(Environment::Production).await.rfc9578_spki()));
}

#[tokio::test]
async fn directory_lists_every_types_keys_with_caching_headers() {
    let h = harness(300).await;
    let r = h.call(Method::GET, "/.well-known/private-token-issuer-directory?sandbox=false", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/private-token-issuer-directory"));
    assert!(r.header("cache-control").unwrap().contains("max-age"));
    let etag = r.header("etag").unwrap().to_owned();
    let directory = IssuerDirectory::from_json(&r.body).unwrap();
    assert_eq!(directory.issuer_request_uri, "/token-request");
    let types: Vec<u16> = directory.token_keys.iter().map(|k| k.token_type).collect();
    assert_eq!(types, [2, 1, 5], "one active key per token type, type 2 first");
    let production = h.key(Environment::Production).await;
    assert_eq!(directory.token_keys[0].token_key, b64::encode_padded(production.rfc9578_spki()), "the RSASSA-PSS SPKI");
    assert_eq!(directory.preferred_type2_key(T0 as u64).unwrap(), h.key(Environment::Production).await);

    let r = h
        .call(
            Method::GET,
            "/.well-known/private-token-issuer-directory?sandbox=false",
            &[("if-none-match", &etag)],
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    for bad in ["?sandbox=maybe", "?other=1"] {
        let r = h.call(Method::GET, &format!("/.well-known/private-token-issuer-directory{bad}"), &[], vec![]).await;
        assert_eq!((r.status, r.error_title().as_str()), (StatusCode::BAD_REQUEST, "Bad Request"), "{bad}");
    }
    let r = h.call(Method::POST, "/api/privacy/v1/relays/%FF/generate-claim", &[], b"{}".to_vec()).await;
    assert_eq!((r.status, r.error_title().as_str()), (StatusCode::NOT_FOUND, "Record not found"), "undecodable path");
    let r = h.call(Method::GET, "/.well-known/private-token-issuer-directory?sandbox=true", &[], vec![]).await;
    let sandbox = IssuerDirectory::from_json(&r.body).unwrap();
    assert_eq!(sandbox.preferred_type2_key(T0 as u64).unwrap(), h.key(Environment::Sandbox).await);

    // An announced key appears first with its future not-before; clients keep
    // using the current one until then; then it takes over.
    let announced = h.service.rotate_key(Environment::Production, 2, Some(600)).await.unwrap();
    let r = h.call(Method::GET, "/.well-known/private-token-issuer-directory?sandbox=false", &[], vec![]).await;
    let directory = IssuerDirectory::from_json(&r.body).unwrap();
    let types: Vec<u16> = directory.token_keys.iter().map(|k| k.token_type).collect();
    assert_eq!(types, [2, 2, 1, 5]);
    assert_eq!(directory.token_keys[0].not_before, Some((T0 + 600) as u64));
    assert_eq!(directory.preferred_type2_key(T0 as u64).unwrap(), h.key(Environment::Production).await);
    assert_ne!(r.header("etag").unwrap(), etag);
    h.clock.advance(601);
    h.service.reload_keys().await.unwrap();
    assert_eq!(h.key(Environment::Production).await.token_key_id().to_hex(), announced.id);
}

#[tokio::test]
async fn rotation_keeps_old_tokens_redeemable_for_the_overlap_and_retirement_ends_them() {
    let h = harness(300).await;
    let relay = h.relay(Environment::Sandbox, CLAIM, None).await;
    let old_a = h.persona_token(Environment::Sandbox, CLAIM).await;
    let old_b = h.persona_token(Environment::Sandbox, CLAIM).await;
    let old_key = h.key(Environment::Sandbox).await;
    h.service.rotate_key(Environment::Sandbox, 2, None).await.unwrap();
    assert_eq!(h.claim(&relay, Some(&old_a), &[]).await.status, StatusCode::OK, "verify-only key still verifies");
    h.service.retire_key(&old_key.token_key_id().to_hex()).await.unwrap();
    assert_token_required(&h.claim(&relay, Some(&old_b), &[]).await);
    let fresh = h.persona_token(Environment::Sandbox, CLAIM).await;
    assert_eq!(h.claim(&relay, Some(&fresh), &[]).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_redemptions_of_one_token_succeed_once() {
    let h = std::sync::Arc::new(harness(0).await);
    let token = h.persona_token(Environment::Sandbox, CLAIM).await;
    let relays: Vec<_> = futures_join(4, |_| {
        let h = std::sync::Arc::clone(&h);
        async move { h.relay(Environment::Sandbox, CLAIM, None).await }
    })
    .await;
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (h, token, relay) = (std::sync::Arc::clone(&h), token.clone(), relays[i % relays.len()].clone());
            tokio::spawn(async move { h.claim(&relay, Some(&token), &[]).await })
        })
        .collect();
    let mut winners = std::collections::HashSet::new();
    let mut payloads = std::collections::HashSet::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::OK => {
                assert_eq!(r.json()["token-consumed"], true);
                winners.insert(i % relays.len());
                payloads.insert(r.json()["claim-payload"].as_str().unwrap().to_owned());
            }
            StatusCode::UNAUTHORIZED => {
                assert!(r.json()["errors"][0]["details"].as_str().unwrap().contains("already been used"));
            }
            other => panic!("unexpected {other}"),
        }
    }
    // One relay spent it; retries at that relay see the same claim, every
    // other relay was refused.
    assert_eq!(winners.len(), 1, "exactly one relay of four redeems the token");
    assert_eq!(payloads.len(), 1, "one claim");
}

async fn futures_join<T, F: std::future::Future<Output = T>>(n: usize, f: impl Fn(usize) -> F) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(f(i).await);
    }
    out
}

#[tokio::test]
async fn endpoints_without_an_api_key_have_their_own_rate_limit() {
    let config = blindpass_service::Config {
        public_rate_limit_per_minute: 2,
        issuer_name: "issuer.example".into(),
        ..blindpass_service::Config::default()
    };
    let h = harness_from(config, blindpass_server::Limits::default()).await;
    let challenge = json!({"claim-type": CLAIM, "sandbox": true});
    assert_eq!(h.public_post("/api/privacy/v1/relays/challenge", challenge.clone()).await.status, StatusCode::OK);
    let r = h
        .public_post(
            "/api/privacy/v1/relays",
            json!({"claim-type": CLAIM, "encryption-key-pem": null, "sandbox": true}),
        )
        .await;
    assert_eq!((r.status, r.header("ratelimit-remaining")), (StatusCode::CREATED, Some("0")));
    let r = h.public_post("/api/privacy/v1/relays/challenge", challenge.clone()).await;
    assert_eq!((r.status, r.error_title().as_str()), (StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded"));
    assert!(r.header("retry-after").is_some());
    // Production has its own window; the next minute resets it.
    let production = json!({"claim-type": CLAIM, "sandbox": false});
    assert_eq!(h.public_post("/api/privacy/v1/relays/challenge", production).await.status, StatusCode::OK);
    h.clock.advance(60);
    assert_eq!(h.public_post("/api/privacy/v1/relays/challenge", challenge).await.status, StatusCode::OK);
}

/// One harness and relay shared by the property test's cases.
fn shared() -> &'static (tokio::runtime::Runtime, Harness, (String, String)) {
    static SHARED: std::sync::OnceLock<(tokio::runtime::Runtime, Harness, (String, String))> =
        std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (h, relay) = rt.block_on(async {
            let h = harness(0).await;
            let relay = h.relay(Environment::Sandbox, CLAIM, None).await;
            (h, relay)
        });
        (rt, h, relay)
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// No token or Authorization header makes generate-claim answer 5xx or
    /// 200: malformed tokens are 401 with a challenge.
    #[test]
    fn malformed_tokens_are_401_never_5xx(
        raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        text in "[ -~]{0,80}",
        shape in 0u8..4,
    ) {
        let (rt, h, relay) = shared();
        let header = match shape {
            0 => format!("PrivateToken token={}", b64::encode_unpadded(&raw)),
            1 => format!("PrivateToken token=\"{}\"", b64::encode_padded(&[&[0u8, 2][..], &raw].concat())),
            2 => format!("PrivateToken token={}", b64::encode_unpadded(format!("{{\"token_nonce\":{text:?}}}").as_bytes())),
            _ => text.clone(),
        };
        let r = rt.block_on(async {
            let path = format!("/api/privacy/v1/relays/{}/generate-claim", relay.0);
            h.call(Method::POST, &path, &[("persona-relay-secret", relay.1.as_str()), ("authorization", header.as_str())], Vec::new()).await
        });
        proptest::prop_assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", String::from_utf8_lossy(&r.body));
    }
}

#[tokio::test]
async fn an_expired_relay_answers_like_an_unknown_one_and_is_pruned() {
    let h = harness(300).await;
    let relay = h.relay(Environment::Sandbox, CLAIM, None).await;
    let token = h.persona_token(Environment::Sandbox, CLAIM).await;
    let lifetime = blindpass_service::Config::default().relay_lifetime_secs;
    h.clock.advance(lifetime - 1);
    assert_ne!(h.claim(&relay, None, &[]).await.status, StatusCode::NOT_FOUND, "alive until its lifetime ends");
    h.clock.advance(1);
    let gone = h.claim(&relay, Some(&token), &[]).await;
    let unknown = h.claim(&("relay_unknown".to_owned(), relay.1.clone()), Some(&token), &[]).await;
    assert_eq!((gone.status, gone.body.clone()), (unknown.status, unknown.body.clone()), "expired = unknown");
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let pruned = h.service.prune(24 * 3600).await.unwrap();
    assert_eq!(pruned.relays, 1);
    assert!(h.service.store().relay_by_token(&relay.0).await.unwrap().is_none(), "gone from the store");
}

#[tokio::test]
async fn a_replayed_token_request_keeps_its_media_type() {
    let h = harness(300).await;
    let relay = h.relay(Environment::Sandbox, CLAIM, None).await;
    let offered = assert_token_required(&h.claim(&relay, None, &[]).await);
    let key = IssuerPublicKey::from_rfc9578_spki(offered.token_key.as_ref().unwrap()).unwrap();
    let (request, _) = type2::begin_issuance(&key, &offered.challenge, &mut rand::rng()).unwrap();
    let auth_header = format!("Bearer {}", h.sandbox_key);
    let headers = [
        ("authorization", auth_header.as_str()),
        ("content-type", "application/private-token-request"),
        ("idempotency-key", "replay-media-type"),
    ];
    let first = h.call(Method::POST, "/token-request", &headers, request.encode()).await;
    let replay = h.call(Method::POST, "/token-request", &headers, request.encode()).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!((replay.status, &replay.body), (first.status, &first.body));
    assert_eq!(replay.header("content-type"), Some("application/private-token-response"));
}

#[tokio::test]
async fn jwk_relays_refuse_hostile_keys_and_take_claims_of_any_length() {
    let h = harness(0).await;
    let key = blindpass_rsa::RsaPrivateKey::generate_2048().unwrap();
    let public = blindpass_protocol::type2::blind_rsa::RawSigner::public_key(&key);
    let jwk = json!({"kty": "RSA", "alg": "RSA-OAEP-256", "kid": "k1",
                     "n": b64::encode_unpadded(public.n()), "e": b64::encode_unpadded(public.e())});
    let create = async |jwk: Value| {
        h.public_post(
            "/api/privacy/v1/relays",
            json!({"claim-type": CLAIM, "encryption-key-pem": null, "encryption-key-jwk": jwk, "sandbox": false}),
        )
        .await
    };
    let with = |name: &str, value: Value| {
        let mut j = jwk.clone();
        j[name] = value;
        j
    };
    for hostile in [
        json!("not an object"),
        json!([]),
        with("d", json!("AQAB")),
        with("kty", json!("oct")),
        with("alg", json!("RSA-OAEP")),
        with("use", json!("sig")),
        with("e", json!("AQAB==")),
        with("n", json!("AAAA")),
        with("n", json!("!!")),
        with("n", json!(b64::encode_unpadded(&vec![0xff; 1024]))),
        with("kid", json!({"nested": true})),
    ] {
        let r = create(hostile.clone()).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{hostile}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.json()["errors"][0]["details"].as_str().unwrap().contains("encryption-key-jwk"));
    }
    let r = create(jwk).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
    // A methodology far longer than one RSA-OAEP block holds is accepted.
    let relay = r.json()["relay-token"].as_str().unwrap().to_owned();
    let methodology: Vec<Value> = (0..16).map(|i| json!({"method": format!("{i:064}"), "result": "passed"})).collect();
    let r = h.record_body(&relay, json!({"claim-result": "passed", "methodology": methodology})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
}
