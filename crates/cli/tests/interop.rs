//! Interoperability with independent implementations: Cloudflare's
//! `@cloudflare/privacypass-ts` (installed from npm into `interop/` by this
//! test) drives the real binary through the RFC flow (type 2, generic
//! batches, type 1), and verifies a token that blindpass's Rust client made;
//! raphaelrobert's `privacypass` crate (built from `interop-rs/`, its own
//! pinned workspace) requests a type-5 amortized batch that blindpass then
//! redeems.
//!
//! Runs when `BLINDPASS_TEST_INTEROP` is set at build time (`.ci/run` sets
//! it; it needs Node.js, npm and the npm registry); otherwise the tests are
//! ignored and the summary says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use blindpass_protocol::b64;
use blindpass_protocol::type2;
use blindpass_protocol::type2::keys::IssuerPublicKey;
use blindpass_protocol::type2::wire::TokenResponse;
use blindpass_protocol::wire::TokenChallenge;
use common::{Node, api_key};
use serde_json::{Value, json};

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop")
}

/// `npm ci` in `interop/`, once per test binary; a failure fails the test.
/// A test's child process (`on_fresh_token`) uses what its parent installed:
/// a second `npm ci` would empty `node_modules` under the parent's tests.
fn node_ready() -> PathBuf {
    if blindpass_hsm::testing::is_child() {
        return interop_dir();
    }
    static READY: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    READY
        .get_or_init(|| {
            let dir = interop_dir();
            let installed = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .status();
            match installed {
                Ok(s) if s.success() => Ok(dir),
                other => Err(format!("could not install @cloudflare/privacypass-ts with npm ({other:?})")),
            }
        })
        .clone()
        .unwrap_or_else(|why| panic!("{why}"))
}

fn node(dir: &Path, args: &[&str]) -> Value {
    let out = Command::new("node").arg("interop.mjs").args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "node interop.mjs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Builds the `interop-rs/` peer (its own workspace and lockfile) once per
/// test binary, before any server starts, and returns its path.
fn rust_peer_ready() -> PathBuf {
    static READY: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    READY
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop-rs");
            let built = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "--release", "--locked", "--manifest-path"])
                .arg(dir.join("Cargo.toml"))
                .env_remove("CARGO_TARGET_DIR")
                .status();
            match built {
                Ok(s) if s.success() => Ok(dir.join("target/release/blindpass-interop-rs")),
                other => Err(format!("could not build interop-rs ({other:?})")),
            }
        })
        .clone()
        .unwrap_or_else(|why| panic!("{why}"))
}

fn rust_peer(args: &[&str]) -> String {
    let out = Command::new(rust_peer_ready()).args(args).output().unwrap();
    assert!(out.status.success(), "interop-rs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

async fn relay(http: &reqwest::Client, server: &Node) -> (String, String) {
    let relay: Value = http
        .post(format!("{}/api/privacy/v1/relays", server.base))
        .json(&json!({"claim-type": "age_over18_verified", "encryption-key-pem": null, "sandbox": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (relay["relay-token"].as_str().unwrap().to_owned(), relay["relay-secret"].as_str().unwrap().to_owned())
}

#[tokio::test]
#[cfg_attr(not(blindpass_test_interop), ignore = "needs BLINDPASS_TEST_INTEROP, Node.js and npm (.ci/run sets it)")]
async fn privacypass_ts_issues_verifies_and_redeems_against_blindpass() {
    let data = tempfile::tempdir().unwrap();
    ts_flow(&["--data-dir", data.path().to_str().unwrap()]).await;
}

/// privacypass-ts's type-2 flow against a server on `store`.
async fn ts_flow(store: &[&str]) {
    let dir = node_ready();
    let server = Node::spawn(store, &[]).await;
    let api_key = api_key(store, "sandbox");
    let (relay_token, relay_secret) = relay(&reqwest::Client::new(), &server).await;

    let out = node(&dir, &["flow", &server.base, &api_key, &relay_token, &relay_secret]);
    assert_eq!(out["unauthenticatedStatus"], 401, "{out}");
    assert_eq!(out["directoryKeyMatchesChallengeKey"], true, "{out}");
    assert_eq!(out["tokenRequestContentType"], "application/private-token-response");
    assert_eq!(out["verified"], true, "privacypass-ts's Origin.verify accepts the token blindpass signed");
    assert_eq!(out["redeemStatus"], 200, "blindpass redeems the token privacypass-ts made: {out}");
    assert_eq!(out["tokenConsumed"], true);
    // And our own decoder and verifier agree with the TypeScript token bytes.
    let token = blindpass_protocol::type2::wire::Token::decode(&hex_decode(out["token"].as_str().unwrap())).unwrap();
    assert_eq!(token.encode().len(), 354);
}

/// Token type 1: privacypass-ts's `privateVerif` client (its own VOPRF,
/// `@cloudflare/voprf-ts`) gets a token issued by the binary, verifying the
/// DLEQ proof itself, and blindpass redeems it once.
#[tokio::test]
#[cfg_attr(not(blindpass_test_interop), ignore = "needs BLINDPASS_TEST_INTEROP, Node.js and npm (.ci/run sets it)")]
async fn privacypass_ts_private_verif_gets_a_type_1_token_that_blindpass_redeems() {
    let dir = node_ready();
    let data = tempfile::tempdir().unwrap();
    let store = ["--data-dir", data.path().to_str().unwrap()];
    let server = Node::spawn(&store, &[]).await;
    let api_key = api_key(&store, "sandbox");
    let http = reqwest::Client::new();
    let (relay_token, relay_secret) = relay(&http, &server).await;

    let out = node(&dir, &["private", &server.base, &api_key, &relay_token, &relay_secret]);
    assert_eq!(out["challengeTypes"], serde_json::json!([2, 1, 5]), "{out}");
    assert_eq!(out["directoryKeyMatchesChallengeKey"], true, "{out}");
    assert_eq!(out["tokenLength"], 146, "{out}");
    assert_eq!(out["redeemStatus"], 200, "blindpass redeems the type-1 token privacypass-ts made: {out}");
    assert_eq!(out["tokenConsumed"], true);
    assert_eq!(out["againStatus"], 200, "the same relay answers a retry with the stored claim");
    let bytes = hex_decode(out["token"].as_str().unwrap());
    let token = blindpass_protocol::voprf::wire::VoprfToken::decode(&bytes).unwrap();
    assert_eq!(token.encode(), bytes);
    assert_eq!(token.suite, blindpass_protocol::voprf::Suite::P384, "a type-1 token");
    // At another relay the token is spent.
    let (other_token, other_secret) = relay(&http, &server).await;
    let authorization = blindpass_protocol::auth::authorization(&bytes);
    let r = http
        .post(format!("{}/api/privacy/v1/relays/{other_token}/generate-claim", server.base))
        .header("persona-relay-secret", other_secret)
        .header("authorization", authorization)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a second redemption elsewhere is refused");
}

#[tokio::test]
#[cfg_attr(not(blindpass_test_interop), ignore = "needs BLINDPASS_TEST_INTEROP, Node.js and npm (.ci/run sets it)")]
async fn privacypass_ts_generic_batch_is_issued_and_every_token_verifies_and_redeems() {
    let data = tempfile::tempdir().unwrap();
    ts_batch(&["--data-dir", data.path().to_str().unwrap()]).await;
}

/// privacypass-ts's generic batch of 16 type-2 tokens against a server on
/// `store`.
async fn ts_batch(store: &[&str]) {
    let dir = node_ready();
    let server = Node::spawn(store, &[]).await;
    let api_key = api_key(store, "sandbox");
    let (relay_token, relay_secret) = relay(&reqwest::Client::new(), &server).await;

    let out = node(&dir, &["batch", &server.base, &api_key, &relay_token, &relay_secret, "16"]);
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["contentType"], "application/private-token-generic-batch-response");
    assert_eq!(out["items"], 16, "{out}");
    assert_eq!(out["verified"], 16, "privacypass-ts's Origin.verify accepts every token of the batch: {out}");
    assert_eq!(out["redeemed"], 16, "blindpass redeems every token privacypass-ts finalized: {out}");
}

/// The same two privacypass-ts flows with the issuer keys in a SoftHSM2
/// token (`--signer pkcs11`).
#[test]
#[cfg_attr(
    not(all(blindpass_test_interop, blindpass_test_pkcs11)),
    ignore = "needs BLINDPASS_TEST_INTEROP and BLINDPASS_TEST_PKCS11 (.ci/run sets both)"
)]
fn privacypass_ts_against_keys_in_a_pkcs11_token() {
    node_ready();
    blindpass_hsm::testing::on_fresh_token("privacypass_ts_against_keys_in_a_pkcs11_token", |token| {
        let data = tempfile::tempdir().unwrap();
        let mut store = vec!["--data-dir".to_owned(), data.path().to_str().unwrap().to_owned()];
        store.extend(common::pkcs11_args(token));
        let store: Vec<&str> = store.iter().map(String::as_str).collect();
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            ts_flow(&store).await;
            ts_batch(&store).await;
        });
        let hsm = blindpass_hsm::Hsm::open(token.config()).unwrap();
        assert_eq!(hsm.key_objects().unwrap().len(), 2, "the type-2 keys (sandbox, production) are in the token");
    });
}

#[tokio::test]
#[cfg_attr(not(blindpass_test_interop), ignore = "needs BLINDPASS_TEST_INTEROP, Node.js and npm (.ci/run sets it)")]
async fn a_token_from_the_rust_client_verifies_in_privacypass_ts() {
    let dir = node_ready();
    let data = tempfile::tempdir().unwrap();
    let store = ["--data-dir", data.path().to_str().unwrap()];
    let server = Node::spawn(&store, &[]).await;
    let api_key = api_key(&store, "sandbox");
    let http = reqwest::Client::new();

    let directory: Value = http
        .get(format!("{}/.well-known/private-token-issuer-directory?sandbox=true", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token_key = directory["token-keys"][0]["token-key"].as_str().unwrap().to_owned();
    let key = IssuerPublicKey::from_rfc9578_spki(&b64::decode(&token_key).unwrap()).unwrap();
    let challenge = TokenChallenge::new(2, "issuer.example", &[], "origin.example").unwrap();
    let (request, state) = type2::begin_issuance(&key, &challenge, &mut rand::rng()).unwrap();
    let response = http
        .post(format!("{}/token-request", server.base))
        .bearer_auth(&api_key)
        .header("content-type", "application/private-token-request")
        .body(request.encode())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.unwrap();
    let token = type2::finalize_issuance(&key, &state, &TokenResponse::decode(&body).unwrap()).unwrap();

    let out = node(&dir, &["verify", &hex_encode(&token.encode()), &token_key]);
    assert_eq!(out["verified"], true, "{out}");
    // A flipped bit does not verify there either.
    let mut forged = token.encode();
    forged[200] ^= 1;
    assert_eq!(node(&dir, &["verify", &hex_encode(&forged), &token_key])["verified"], false);
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

/// Token type 5: the `privacypass` crate builds an amortized batch of 10 for
/// the relay's type-5 challenge, the binary answers it, the crate verifies
/// the batched DLEQ proof and finalizes; blindpass redeems each token once
/// and refuses it at another relay.
#[tokio::test]
#[cfg_attr(
    not(blindpass_test_interop),
    ignore = "needs BLINDPASS_TEST_INTEROP and the crates.io registry (.ci/run sets it)"
)]
async fn the_privacypass_crate_gets_a_type_5_amortized_batch_that_blindpass_redeems() {
    rust_peer_ready();
    let data = tempfile::tempdir().unwrap();
    let store = ["--data-dir", data.path().to_str().unwrap()];
    let server = Node::spawn(&store, &[]).await;
    let api_key = api_key(&store, "sandbox");
    let http = reqwest::Client::new();
    let (first, other) = (relay(&http, &server).await, relay(&http, &server).await);
    let claim = |relay: &(String, String), token: Option<&[u8]>| {
        let mut request = http
            .post(format!("{}/api/privacy/v1/relays/{}/generate-claim", server.base, relay.0))
            .header("persona-relay-secret", &relay.1)
            .json(&json!({}));
        if let Some(token) = token {
            request = request.header("authorization", blindpass_protocol::auth::authorization(token));
        }
        request.send()
    };
    let r = claim(&first, None).await.unwrap();
    let header = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    let offered = blindpass_protocol::auth::parse_www_authenticate(&header).unwrap();
    let type5 = offered.iter().find(|c| c.challenge.token_type == 5).expect("a type-5 challenge");
    let host = server.base.trim_start_matches("http://");
    let out = rust_peer(&[
        "amortized",
        host,
        &api_key,
        &hex_encode(&type5.challenge_bytes),
        &hex_encode(type5.token_key.as_ref().unwrap()),
        "10",
    ]);
    let tokens: Vec<Vec<u8>> = out.lines().map(hex_decode).collect();
    assert_eq!(tokens.len(), 10, "{out}");
    for token in &tokens {
        let decoded = blindpass_protocol::voprf::wire::VoprfToken::decode(token).unwrap();
        assert_eq!(decoded.suite, blindpass_protocol::voprf::Suite::Ristretto255);
        let r = claim(&first, Some(token)).await.unwrap();
        assert_eq!(r.status(), 200, "blindpass redeems the token the privacypass crate finalized");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["token-consumed"], true);
        assert_eq!(claim(&other, Some(token)).await.unwrap().status(), 401, "spent: refused at another relay");
    }
}

/// Persona 2026-09-29: a relay created with `encryption-key-jwk` (a key pair
/// made by panva's `jose`) delivers its claim as a compact JWE that `jose`
/// decrypts (RSA-OAEP-256 + A256GCM only) to the claim JSON; the private
/// JWK, a JWK for another algorithm, and both keys at once are refused.
#[tokio::test]
#[cfg_attr(not(blindpass_test_interop), ignore = "needs BLINDPASS_TEST_INTEROP, Node.js and npm (.ci/run sets it)")]
async fn jose_decrypts_the_jwe_claim_of_a_jwk_relay() {
    let dir = node_ready();
    let keys = node(&dir, &["jwe-keypair"]);
    let data = tempfile::tempdir().unwrap();
    let store = ["--data-dir", data.path().to_str().unwrap()];
    let server = Node::spawn(&store, &[]).await;
    let key = api_key(&store, "sandbox");
    let http = reqwest::Client::new();
    let create = async |body: Value| {
        let r = http.post(format!("{}/api/privacy/v1/relays", server.base)).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let claim = "age_over18_verified";
    let (status, relay) = create(
        json!({"claim-type": claim, "encryption-key-pem": null, "encryption-key-jwk": keys["public"], "sandbox": true}),
    )
    .await;
    assert_eq!(status, 201, "{relay}");
    for refused in [
        json!({"claim-type": claim, "encryption-key-pem": null, "encryption-key-jwk": keys["private"], "sandbox": true}),
        json!({"claim-type": claim, "encryption-key-pem": null, "sandbox": true,
               "encryption-key-jwk": {"kty": "RSA", "n": keys["public"]["n"], "e": keys["public"]["e"], "alg": "RSA1_5"}}),
        json!({"claim-type": claim, "encryption-key-pem": "-----BEGIN PUBLIC KEY-----", "sandbox": true,
               "encryption-key-jwk": keys["public"]}),
    ] {
        let (status, body) = create(refused).await;
        assert_eq!(status, 422, "{body}");
    }

    // A token from the bundled client, redeemed at the JWE relay.
    let out = std::process::Command::new(common::BIN)
        .args(["client", "issue", "--base-url", &server.base, "--api-key", &key])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // Redeemed by the bundled client, as a relying party's backend would.
    let out = std::process::Command::new(common::BIN)
        .args(["client", "redeem", "--base-url", &server.base, "--json", "--relay-token"])
        .arg(relay["relay-token"].as_str().unwrap())
        .args(["--relay-secret", relay["relay-secret"].as_str().unwrap(), "--token", &token])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["token-consumed"], true, "{answer}");
    let jwe = answer["claim-payload"].as_str().unwrap();
    assert_eq!(jwe.split('.').count(), 5, "compact JWE: {jwe}");
    let decrypted = node(&dir, &["jwe-decrypt", &keys["private"].to_string(), jwe]);
    assert_eq!(decrypted["header"], json!({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "interop-key-1"}));
    let claim_json: Value = serde_json::from_str(decrypted["plaintext"].as_str().unwrap()).unwrap();
    assert_eq!(claim_json, json!({"claim_type": claim, "claim_result": "passed", "methodology": []}));
}
