//! The whole Persona relay flow and the whole RFC 9578/9577 flow over HTTP
//! against the real `blindpass` binary, with the rejections a client can
//! meet on the way, and the 64-way single-spend race across connections.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::disallowed_methods)]

mod common;

use std::path::Path;

use blindpass_protocol::type2::keys::IssuerPublicKey;
use blindpass_protocol::type2::wire::TokenResponse;
use blindpass_protocol::{auth, b64, persona, type2};
use serde_json::{Value, json};

const CLAIM: &str = "age_over18_verified";

/// The server under test and an HTTP client for it.
struct Server {
    _node: common::Node,
    base: String,
    http: reqwest::Client,
}

fn store(data_dir: &Path) -> [&str; 2] {
    ["--data-dir", data_dir.to_str().unwrap()]
}

fn api_key(data_dir: &Path, env: &str, permission: &str) -> String {
    let out = common::cli(&store(data_dir), &["api-keys", "create", "--env", env, "--permission", permission]);
    out.lines().last().unwrap().to_owned()
}

async fn start(data_dir: &Path) -> Server {
    let node = common::Node::spawn(&store(data_dir), &["--rate-limit", "0"]).await;
    Server { base: node.base.clone(), _node: node, http: reqwest::Client::new() }
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Server {
    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let r = request.send().await.unwrap();
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        let body = r.bytes().await.unwrap().to_vec();
        assert!(status < 500, "{status}: {}", String::from_utf8_lossy(&body));
        assert!(headers.contains_key("request-id"));
        Reply { status, headers, body }
    }

    async fn post_json(&self, path: &str, body: Value) -> Reply {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body)).await
    }

    async fn persona_token(&self, api_key: &str, sandbox: bool) -> String {
        let offer = self
            .post_json("/api/privacy/v1/relays/challenge", json!({"claimType": CLAIM, "sandbox": sandbox}))
            .await
            .json();
        let challenge = persona::Challenge::decode(offer["challenge"].as_str().unwrap()).unwrap();
        let key = IssuerPublicKey::from_spki_der(&b64::decode(offer["token-key"].as_str().unwrap()).unwrap()).unwrap();
        let key_id = offer["token-key-id"].as_str().unwrap();
        let (blinded, state) = persona::begin_issuance(&key, key_id, &challenge, &mut rand::rng()).unwrap();
        let r = self
            .send(
                self.http
                    .post(format!("{}/api/v1/privacy-passes", self.base))
                    .bearer_auth(api_key)
                    .json(&json!({"blindedToken": b64::encode_unpadded(&blinded), "keyId": key_id})),
            )
            .await;
        assert_eq!(r.status, 201);
        let blind_sig = b64::decode(r.json()["blind-sig"].as_str().unwrap()).unwrap();
        persona::finalize_issuance(&key, &state, &blind_sig).unwrap().encode()
    }

    async fn relay(&self, sandbox: bool) -> (String, String) {
        let r = self
            .post_json(
                "/api/privacy/v1/relays",
                json!({"claimType": CLAIM, "encryptionKeyPem": null, "sandbox": sandbox}),
            )
            .await;
        assert_eq!(r.status, 201);
        let b = r.json();
        (b["relay-token"].as_str().unwrap().to_owned(), b["relay-secret"].as_str().unwrap().to_owned())
    }

    async fn claim(&self, relay: &(String, String), authorization: Option<&str>) -> Reply {
        let mut request = self
            .http
            .post(format!("{}/api/privacy/v1/relays/{}/generate-claim", self.base, relay.0))
            .header("persona-relay-secret", &relay.1)
            .json(&json!({}));
        if let Some(a) = authorization {
            request = request.header("authorization", a);
        }
        self.send(request).await
    }

    async fn record(&self, verifier: &str, relay: &str, result: &str) -> Reply {
        self.send(
            self.http
                .post(format!("{}/api/privacy/v1/relays/{relay}/result", self.base))
                .bearer_auth(verifier)
                .json(&json!({"claim-result": result})),
        )
        .await
    }
}

fn token_required(r: &Reply) -> auth::PrivateTokenChallenge {
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["errors"][0]["title"], "Privacy Pass token required");
    let header = r.headers["www-authenticate"].to_str().unwrap();
    let challenges = auth::parse_www_authenticate(header).unwrap();
    let types: Vec<u16> = challenges.iter().map(|c| c.challenge.token_type).collect();
    assert_eq!(types, [2, 1, 5], "one challenge per accepted token type, type 2 first: {header}");
    challenges.into_iter().next().unwrap()
}

#[tokio::test]
async fn persona_flow_over_http_with_its_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let sandbox_key = api_key(dir.path(), "sandbox", "privacy_pass.write");
    let production_key = api_key(dir.path(), "production", "privacy_pass.write");
    let verifier = api_key(dir.path(), "production", "relay.verify");

    // Sandbox: challenge → issue → finalize → relay → claim.
    let token = server.persona_token(&sandbox_key, true).await;
    let relay = server.relay(true).await;
    token_required(&server.claim(&relay, None).await);
    let wrong_secret = (relay.0.clone(), "not-the-secret".to_owned());
    assert_eq!(server.claim(&wrong_secret, Some(&format!("PrivateToken token={token}"))).await.status, 404);
    let r = server.claim(&relay, Some(&format!("PrivateToken token={token}"))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["token-consumed"], true);
    let claim: Value = serde_json::from_str(r.json()["claim-payload"].as_str().unwrap()).unwrap();
    assert_eq!(claim["claim_result"], "passed");
    // Reused: the same relay answers with the same claim (a lost answer can
    // be retried), any other relay refuses it.
    let again = server.claim(&relay, Some(&format!("PrivateToken token={token}"))).await;
    assert_eq!((again.status, again.body.clone()), (200, r.body.clone()));
    let other = server.relay(true).await;
    let refused = server.claim(&other, Some(&format!("PrivateToken token={token}"))).await;
    token_required(&refused);
    assert!(refused.json()["errors"][0]["details"].as_str().unwrap().contains("already been used"));

    // Bad MAC (tampered expiry), wrong environment.
    let mut tampered = persona::Token::decode(&server.persona_token(&sandbox_key, true).await).unwrap().token;
    tampered.challenge.expires_at = "2099-01-01T00:00:00Z".into();
    token_required(&server.claim(&relay, Some(&format!("PrivateToken token={}", tampered.encode()))).await);
    let production_token = server.persona_token(&production_key, false).await;
    token_required(&server.claim(&relay, Some(&format!("PrivateToken token={production_token}"))).await);

    // Expired: a challenge validly MACed by this server (its secret read from
    // the shared store) whose expiry has passed; the token is otherwise real.
    let expired = expired_token(dir.path(), &server, &sandbox_key).await;
    let r = server.claim(&relay, Some(&format!("PrivateToken token={expired}"))).await;
    token_required(&r);
    assert!(r.json()["errors"][0]["details"].as_str().unwrap().contains("expired"));

    // Production: pending → 403, nothing spent; failed → 200 unconsumed; passed → consumed.
    let pending = server.relay(false).await;
    let auth_header = format!("PrivateToken token={production_token}");
    assert_eq!(server.claim(&pending, Some(&auth_header)).await.status, 403);
    let failed = server.relay(false).await;
    assert_eq!(server.record(&verifier, &failed.0, "failed").await.status, 200);
    let r = server.claim(&failed, Some(&auth_header)).await;
    assert_eq!((r.status, r.json()["token-consumed"].clone()), (200, json!(false)));
    assert_eq!(server.record(&verifier, &pending.0, "passed").await.status, 200);
    let r = server.claim(&pending, Some(&auth_header)).await;
    assert_eq!((r.status, r.json()["token-consumed"].clone()), (200, json!(true)));
}

#[tokio::test]
async fn rfc_flow_over_http_and_a_64_way_race() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let sandbox_key = api_key(dir.path(), "sandbox", "privacy_pass.write");

    let relay = server.relay(true).await;
    let offered = token_required(&server.claim(&relay, None).await);
    let key = IssuerPublicKey::from_rfc9578_spki(offered.token_key.as_ref().unwrap()).unwrap();
    let directory = server
        .send(server.http.get(format!("{}/.well-known/private-token-issuer-directory?sandbox=true", server.base)))
        .await;
    let directory = blindpass_protocol::directory::IssuerDirectory::from_json(&directory.body).unwrap();
    assert_eq!(directory.preferred_type2_key(u64::MAX).unwrap(), key, "the 401's key is the directory's");

    let mut tokens = Vec::new();
    for _ in 0..2 {
        let (request, state) = type2::begin_issuance(&key, &offered.challenge, &mut rand::rng()).unwrap();
        let r = server
            .send(
                server
                    .http
                    .post(format!("{}/token-request", server.base))
                    .bearer_auth(&sandbox_key)
                    .header("content-type", "application/private-token-request")
                    .body(request.encode()),
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-type"], "application/private-token-response");
        let token = type2::finalize_issuance(&key, &state, &TokenResponse::decode(&r.body).unwrap()).unwrap();
        tokens.push(auth::authorization(&token.encode()));
    }

    let r = server.claim(&relay, Some(&tokens[0])).await;
    assert_eq!((r.status, r.json()["token-consumed"].clone()), (200, json!(true)));
    let retried = server.claim(&relay, Some(&tokens[0])).await;
    assert_eq!((retried.status, retried.body.clone()), (200, r.body.clone()), "a retry gets the same claim");
    token_required(&server.claim(&server.relay(true).await, Some(&tokens[0])).await);

    // 64 concurrent redemptions of one token at four relays: one relay
    // redeems it (its retries see the same claim), the others are refused.
    let mut relays = vec![relay];
    for _ in 0..3 {
        relays.push(server.relay(true).await);
    }
    let server = std::sync::Arc::new(server);
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (server, relay, auth) = (std::sync::Arc::clone(&server), relays[i % 4].clone(), tokens[1].clone());
            tokio::spawn(async move {
                let r = server.claim(&relay, Some(&auth)).await;
                (i % 4, r.status, r.body)
            })
        })
        .collect();
    let mut winners = std::collections::HashSet::new();
    let mut bodies = std::collections::HashSet::new();
    for t in tasks {
        let (relay, status, body) = t.await.unwrap();
        assert!(status == 200 || status == 401, "{status}");
        if status == 200 {
            winners.insert(relay);
            bodies.insert(body);
        }
    }
    assert_eq!((winners.len(), bodies.len()), (1, 1), "one relay, one claim");
}

/// A token whose challenge carries this server's MAC but expired an hour ago.
async fn expired_token(data_dir: &Path, server: &Server, api_key: &str) -> String {
    let url = format!("sqlite://{}", data_dir.join("blindpass.db").display());
    let store = blindpass_store::open(&url).await.unwrap();
    let secret = store.setting_get_or_insert("secret.challenge_mac", b"unused").await.unwrap();
    assert_eq!(secret.len(), 32, "the server created its challenge secret");
    let secret = persona::ChallengeSecret::new(secret).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let offer =
        server.post_json("/api/privacy/v1/relays/challenge", json!({"claimType": CLAIM, "sandbox": true})).await.json();
    let live = persona::Challenge::decode(offer["challenge"].as_str().unwrap()).unwrap();
    let challenge = persona::Challenge::issue(
        &secret,
        &persona::ChallengeFields {
            issuer_name: &live.issuer_name,
            origin_info: &live.origin_info,
            expires_at: (now / 3600) * 3600 - 3600,
            claim_type: CLAIM,
            environment: "sandbox",
        },
    );
    let key = IssuerPublicKey::from_spki_der(&b64::decode(offer["token-key"].as_str().unwrap()).unwrap()).unwrap();
    let key_id = offer["token-key-id"].as_str().unwrap();
    let (blinded, state) = persona::begin_issuance(&key, key_id, &challenge, &mut rand::rng()).unwrap();
    let r = server
        .send(
            server
                .http
                .post(format!("{}/api/v1/privacy-passes", server.base))
                .bearer_auth(api_key)
                .json(&json!({"blindedToken": b64::encode_unpadded(&blinded), "keyId": key_id})),
        )
        .await;
    let blind_sig = b64::decode(r.json()["blind-sig"].as_str().unwrap()).unwrap();
    persona::finalize_issuance(&key, &state, &blind_sig).unwrap().encode()
}

/// The requests exactly as Persona's Go SDK (relay-sdk-go v0.1.0, api.go)
/// sends them: camelCase bodies, no `sandbox` flag (so production), an
/// unquoted `PrivateToken token=`, and one Idempotency-Key reused across its
/// retries of generate-claim, which it retries on 403.
#[tokio::test]
async fn go_sdk_shaped_requests_complete_the_production_flow() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let production_key = api_key(dir.path(), "production", "privacy_pass.write");
    let verifier = api_key(dir.path(), "production", "relay.verify");
    let post = async |path: &str, body: Value, headers: &[(&str, &str)]| {
        let mut request = server.http.post(format!("{}{path}", server.base)).header("content-type", "application/json");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        server.send(request.body(serde_json::to_vec(&body).unwrap())).await
    };

    // createRelay, getChallenge, issuePrivacyPass.
    let relay = post("/api/privacy/v1/relays", json!({"claimType": CLAIM, "encryptionKeyPem": null}), &[]).await.json();
    let offer = post("/api/privacy/v1/relays/challenge", json!({"claimType": CLAIM}), &[]).await.json();
    let challenge = persona::Challenge::decode(offer["challenge"].as_str().unwrap()).unwrap();
    assert_eq!(challenge.environment, "production", "no sandbox flag means production");
    let key = IssuerPublicKey::from_spki_der(&b64::decode(offer["token-key"].as_str().unwrap()).unwrap()).unwrap();
    let key_id = offer["token-key-id"].as_str().unwrap();
    let (blinded, state) = persona::begin_issuance(&key, key_id, &challenge, &mut rand::rng()).unwrap();
    let bearer = format!("Bearer {production_key}");
    let issued = post(
        "/api/v1/privacy-passes",
        json!({"blindedToken": b64::encode_unpadded(&blinded), "keyId": key_id}),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(issued.status, 201);
    let blind_sig = b64::decode(issued.json()["blind-sig"].as_str().unwrap()).unwrap();
    let token = persona::finalize_issuance(&key, &state, &blind_sig).unwrap().encode();

    // redeemRelay: pending (403, retried with the same key), then passed.
    let path = format!("/api/privacy/v1/relays/{}/generate-claim", relay["relay-token"].as_str().unwrap());
    let authorization = format!("PrivateToken token={token}");
    let headers = [
        ("authorization", authorization.as_str()),
        ("persona-relay-secret", relay["relay-secret"].as_str().unwrap()),
        ("idempotency-key", "3b241101-e2bb-4255-8caf-4136c566a962"),
    ];
    assert_eq!(post(&path, json!({}), &headers).await.status, 403);
    let result = server
        .send(
            server
                .http
                .post(format!(
                    "{}/api/privacy/v1/relays/{}/result",
                    server.base,
                    relay["relay-token"].as_str().unwrap()
                ))
                .bearer_auth(&verifier)
                .json(&json!({"claim-result": "passed"})),
        )
        .await;
    assert_eq!(result.status, 200);
    let claimed = post(&path, json!({}), &headers).await;
    assert_eq!((claimed.status, claimed.json()["token-consumed"].clone()), (200, json!(true)));
    let retried = post(&path, json!({}), &headers).await;
    assert_eq!((retried.status, retried.body.clone()), (200, claimed.body.clone()), "a retry replays the 200");
}
