//! Shared harness for router-level tests: a fresh SQLite store, a manual
//! clock, keys, API keys and `router(state)`, driven without a socket.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use blindpass_protocol::type2::keys::IssuerPublicKey;
use blindpass_protocol::{b64, persona};
use blindpass_server::{AppState, IdOverrides, Limits};
use blindpass_service::testing::TestNode;
use blindpass_service::{Config, Environment, ManualClock, Permission, Service};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

pub const PATH: &str = "/api/v1/privacy-passes";
pub const T0: i64 = 1_800_000_000; // on a minute boundary

pub struct Harness {
    pub _dir: tempfile::TempDir,
    pub router: Router,
    pub service: Service,
    pub clock: Arc<ManualClock>,
    pub sandbox_key: String,
    pub production_key: String,
    pub no_permission_key: String,
    pub revoked_key: String,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Persona's error shape, and the title.
    pub fn error_title(&self) -> String {
        let body = self.json();
        let errors = body["errors"].as_array().expect("errors array");
        assert_eq!(errors.len(), 1);
        assert!(errors[0]["details"].is_string(), "details missing: {body}");
        errors[0]["title"].as_str().unwrap().to_owned()
    }
}

pub async fn harness(rate_limit: u64) -> Harness {
    harness_with(rate_limit, Limits::default()).await
}

/// A harness whose environment limit is `rate_limit`; 0 turns every rate
/// limit off (per client, per relay, failed authentications too).
pub async fn harness_with(rate_limit: u64, limits: Limits) -> Harness {
    let mut config =
        Config { rate_limit_per_minute: rate_limit, issuer_name: "issuer.example".into(), ..Config::default() };
    if rate_limit == 0 {
        config.client_rate_limit_per_minute = 0;
        config.relay_rate_limit_per_minute = 0;
        config.auth_failure_limit_per_minute = 0;
    }
    harness_from(config, limits).await
}

pub async fn harness_from(config: Config, limits: Limits) -> Harness {
    let TestNode { service, clock, dir } = TestNode::start(config, T0).await.unwrap();
    let secret = async |env, perms: Vec<Permission>| service.create_api_key(env, perms, None).await.unwrap();
    let sandbox = secret(Environment::Sandbox, vec![Permission::PrivacyPassWrite]).await;
    let production = secret(Environment::Production, vec![Permission::PrivacyPassWrite]).await;
    let no_permission = secret(Environment::Sandbox, vec![Permission::RelayVerify]).await;
    let revoked = secret(Environment::Sandbox, vec![Permission::PrivacyPassWrite]).await;
    service.revoke_api_key(&revoked.key.id).await.unwrap();
    let ids = blindpass_server::load_ids(&service, &IdOverrides::default()).await.unwrap();
    let router = blindpass_server::router(AppState {
        service: service.clone(),
        ids: std::sync::Arc::new(ids),
        limits,
        trusted_proxies: Default::default(),
        expose_metrics: true,
    });
    Harness {
        _dir: dir,
        router,
        service,
        clock,
        sandbox_key: sandbox.secret.to_string(),
        production_key: production.secret.to_string(),
        no_permission_key: no_permission.secret.to_string(),
        revoked_key: revoked.secret.to_string(),
    }
}

impl Harness {
    pub async fn call(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
        let reply = self.call_allowing_5xx(method, path, headers, body).await;
        let status = reply.status;
        assert!(status.as_u16() < 500, "server error {status}: {}", String::from_utf8_lossy(&reply.body));
        reply
    }

    /// [`Harness::call`] for routes whose 503 is expected (readiness).
    pub async fn call_allowing_5xx(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = self.router.clone().oneshot(request.body(Body::from(body)).unwrap()).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes().to_vec();
        let reply = Reply { status, headers, body };
        let id = reply.header("request-id").unwrap_or_else(|| panic!("no Request-Id on {status}"));
        assert!(id.starts_with("req_") && id.len() == 28, "{id}");
        reply
    }

    pub async fn public_post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, &[("content-type", "application/json")], serde_json::to_vec(&body).unwrap()).await
    }

    pub async fn relay(&self, env: Environment, claim: &str, pem: Option<&str>) -> (String, String) {
        let r = self
            .public_post(
                "/api/privacy/v1/relays",
                json!({"claim-type": claim, "encryption-key-pem": pem, "sandbox": env == Environment::Sandbox}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&r.body));
        let body = r.json();
        let jwt = body["relay-session-access-token"].as_str().unwrap();
        assert_eq!(jwt.split('.').count(), 3, "a JWT");
        (body["relay-token"].as_str().unwrap().to_owned(), body["relay-secret"].as_str().unwrap().to_owned())
    }

    pub async fn claim(&self, relay: &(String, String), token: Option<&str>, extra: &[(&str, &str)]) -> Reply {
        let path = format!("/api/privacy/v1/relays/{}/generate-claim", relay.0);
        let authorization = token.map(|t| format!("PrivateToken token={t}"));
        let mut headers = vec![("content-type", "application/json"), ("persona-relay-secret", relay.1.as_str())];
        if let Some(a) = &authorization {
            headers.push(("authorization", a.as_str()));
        }
        headers.extend_from_slice(extra);
        self.call(Method::POST, &path, &headers, b"{}".to_vec()).await
    }

    /// POST with the sandbox key and JSON body.
    pub async fn post(&self, body: Value, extra: &[(&str, &str)]) -> Reply {
        self.post_as(&self.sandbox_key.clone(), body, extra).await
    }

    pub async fn post_as(&self, secret: &str, body: Value, extra: &[(&str, &str)]) -> Reply {
        let auth = format!("Bearer {secret}");
        let mut headers = vec![("authorization", auth.as_str()), ("content-type", "application/json")];
        headers.extend_from_slice(extra);
        self.call(Method::POST, PATH, &headers, serde_json::to_vec(&body).unwrap()).await
    }

    pub async fn key(&self, env: Environment) -> IssuerPublicKey {
        self.service.active_key(env, 2).await.unwrap().expect("an active key").blind_rsa().expect("type 2").clone()
    }

    /// Challenge → blind → issue over HTTP → finalize: a Persona token.
    pub async fn persona_token(&self, env: Environment, claim: &str) -> String {
        let r = self
            .public_post(
                "/api/privacy/v1/relays/challenge",
                json!({"claim-type": claim, "sandbox": env == Environment::Sandbox}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
        let offer = r.json();
        let challenge = persona::Challenge::decode(offer["challenge"].as_str().unwrap()).unwrap();
        let key = IssuerPublicKey::from_spki_der(&b64::decode(offer["token-key"].as_str().unwrap()).unwrap()).unwrap();
        let key_id = offer["token-key-id"].as_str().unwrap();
        assert_eq!(key_id, key.persona_key_id().to_hex());
        let (blinded, state) = persona::begin_issuance(&key, key_id, &challenge, &mut rand::rng()).unwrap();
        let api_key = if env == Environment::Sandbox { self.sandbox_key.clone() } else { self.production_key.clone() };
        let r = self.post_as(&api_key, issue_body(&blinded, key_id), &[]).await;
        assert_eq!(r.status, StatusCode::CREATED);
        let blind_sig = b64::decode(r.json()["blind-sig"].as_str().unwrap()).unwrap();
        persona::finalize_issuance(&key, &state, &blind_sig).unwrap().encode()
    }

    /// A real Persona-style blinded token for the environment's active key.
    pub async fn blinded(&self, env: Environment) -> (IssuerPublicKey, String, persona::IssuanceState, Vec<u8>) {
        let key = self.key(env).await;
        let key_id = key.persona_key_id().to_hex();
        let secret = persona::ChallengeSecret::new(vec![3; 32]).unwrap();
        let challenge = persona::Challenge::issue(
            &secret,
            &persona::ChallengeFields {
                issuer_name: "issuer.example/api/v1/privacy-passes",
                origin_info: "/api/privacy/v1/relays",
                expires_at: persona::expiry_for(T0 as u64, 3600),
                claim_type: "age_over18_verified",
                environment: env.as_str(),
            },
        );
        let (blinded, state) = persona::begin_issuance(&key, &key_id, &challenge, &mut rand::rng()).unwrap();
        (key, key_id, state, blinded)
    }
}

/// JSON body `{blinded-token, key-id}` of a Persona issuance.
pub fn issue_body(blinded: &[u8], key_id: &str) -> Value {
    serde_json::json!({ "blinded-token": blindpass_protocol::b64::encode_unpadded(blinded), "key-id": key_id })
}
