//! # blindpass-client
//!
//! An async client for blindpass, and for any server that speaks Persona's
//! Relay API or RFC 9578/9577:
//!
//! ```no_run
//! # async fn demo() -> Result<(), blindpass_client::ClientError> {
//! let client = blindpass_client::Client::new("http://127.0.0.1:8080")?.with_api_key("persona_sandbox_…");
//! let offer = client.challenge("age_over18_verified", true).await?;   // Persona dialect
//! let token = client.issue(&offer).await?;                             // blind, sign, finalize (verifies)
//! let relay = client.create_relay("age_over18_verified", None, true).await?;
//! let claim = client.generate_claim(&relay, &token.encode()).await?;
//! println!("{} (consumed: {})", claim.claim_payload, claim.token_consumed);
//! # Ok(()) }
//! ```
//!
//! Errors carry the server's Persona error body. POSTs are retried on 429
//! and 5xx (and 403 for generate-claim, while a claim is pending) with
//! exponential backoff that honours `Retry-After`, reusing one
//! `Idempotency-Key` across the retries of a call.

#![forbid(unsafe_code)]

mod rfc;
mod transport;

pub use transport::RetryPolicy;
use transport::json_body;

use std::time::Duration;

use blindpass_entropy::{Entropy, SystemEntropy};
use blindpass_protocol::type2::keys::IssuerPublicKey;
use blindpass_protocol::{api, b64, persona};
use reqwest::Method;
use std::sync::Arc;
use zeroize::Zeroizing;

/// A client failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error in Persona's shape.
    #[error("{status} {title}: {details}")]
    Api {
        /// HTTP status.
        status: u16,
        /// `errors[0].title`.
        title: String,
        /// `errors[0].details`.
        details: String,
        /// The `Request-Id` of the failed response.
        request_id: Option<String>,
    },
    /// The request could not be sent or the response not read.
    /// (Its message is the cause's alone, so a report that prints the chain
    /// says it once.)
    #[error("HTTP")]
    Http(#[from] reqwest::Error),
    /// The server's answer is not what the protocol allows (bad key, a
    /// signature that does not verify, malformed JSON, …).
    #[error("protocol: {0}")]
    Protocol(String),
    /// A base URL that cannot be used.
    #[error("invalid base URL: {0}")]
    BaseUrl(String),
}

impl ClientError {
    fn protocol(e: impl std::fmt::Display) -> Self {
        ClientError::Protocol(e.to_string())
    }

    /// The HTTP status, for API errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A Persona challenge with the issuer key it names.
#[derive(Debug, Clone)]
pub struct ChallengeOffer {
    /// The decoded challenge.
    pub challenge: persona::Challenge,
    /// The issuer's public key (from `token-key`).
    pub key: IssuerPublicKey,
    /// `token-key-id` as given (hex).
    pub key_id: String,
}

/// A relay's credentials.
#[derive(Clone)]
pub struct RelayCredentials {
    /// `relay-token`.
    pub token: String,
    /// `relay-secret`.
    pub secret: Zeroizing<String>,
    /// `relay-session-access-token`.
    pub session_access_token: String,
}

impl std::fmt::Debug for RelayCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayCredentials").field("token", &self.token).finish_non_exhaustive()
    }
}

/// generate-claim's answer.
pub use blindpass_protocol::api::Claim;

/// The client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: Option<Zeroizing<String>>,
    retry: RetryPolicy,
    entropy: Arc<dyn Entropy>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::BaseUrl(base));
        }
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        Ok(Self { http, base, api_key: None, retry: RetryPolicy::default(), entropy: Arc::new(SystemEntropy) })
    }

    /// Uses `api_key` as the Bearer token where one is needed.
    pub fn with_api_key(mut self, api_key: &str) -> Self {
        self.api_key = Some(Zeroizing::new(api_key.to_owned()));
        self
    }

    /// Sends through `http` instead of the default client (its own TLS
    /// roots, proxy, timeouts or local address).
    pub fn with_http(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Draws blinding factors, nonces and idempotency keys from `entropy`
    /// (the system's by default; a seeded source makes tests repeatable).
    pub fn with_entropy(mut self, entropy: Arc<dyn Entropy>) -> Self {
        self.entropy = entropy;
        self
    }

    /// `POST /api/privacy/v1/relays/challenge`.
    pub async fn challenge(&self, claim_type: &str, sandbox: bool) -> Result<ChallengeOffer, ClientError> {
        let body = api::ChallengeRequest { claim_type: claim_type.to_owned(), sandbox: Some(sandbox) };
        let r = self.send_json(Method::POST, api::CHALLENGE_PATH, &body, false, &[]).await?;
        let v: api::ChallengeResponse = json_body(&r)?;
        let challenge = persona::Challenge::decode(&v.challenge).map_err(ClientError::protocol)?;
        let der = b64::decode(&v.token_key).map_err(ClientError::protocol)?;
        let key = IssuerPublicKey::from_spki_der(&der).map_err(ClientError::protocol)?;
        let key_id = v.token_key_id;
        if key_id.to_ascii_lowercase() != key.persona_key_id().to_hex() {
            return Err(ClientError::Protocol("token-key-id is not the SHA-256 of token-key".into()));
        }
        Ok(ChallengeOffer { challenge, key, key_id })
    }

    /// Blinds a Persona token for `offer`, has it signed by
    /// `POST /api/v1/privacy-passes`, and finalizes it (which verifies).
    pub async fn issue(&self, offer: &ChallengeOffer) -> Result<persona::Token, ClientError> {
        let (blinded, state) =
            persona::begin_issuance(&offer.key, &offer.key_id, &offer.challenge, &mut self.entropy.rng())
                .map_err(ClientError::protocol)?;
        let body = issuance_body(&blinded, &offer.key_id);
        let r = self.send_json(Method::POST, api::PRIVACY_PASSES_PATH, &body, true, &[]).await?;
        let v: api::PrivacyPass = json_body(&r)?;
        let blind_sig = b64::decode(&v.blind_sig).map_err(ClientError::protocol)?;
        persona::finalize_issuance(&offer.key, &state, &blind_sig).map_err(ClientError::protocol)
    }

    /// `POST /api/privacy/v1/relays`.
    pub async fn create_relay(
        &self,
        claim_type: &str,
        encryption_key_pem: Option<&str>,
        sandbox: bool,
    ) -> Result<RelayCredentials, ClientError> {
        let body = api::CreateRelay {
            encryption_key_jwk: None,
            claim_type: claim_type.to_owned(),
            encryption_key_pem: encryption_key_pem.map(str::to_owned),
            sandbox: Some(sandbox),
        };
        let r = self.send_json(Method::POST, api::RELAYS_PATH, &body, false, &[]).await?;
        let v: api::RelayCreated = json_body(&r)?;
        Ok(RelayCredentials {
            token: v.relay_token,
            secret: Zeroizing::new(v.relay_secret),
            session_access_token: v.relay_session_access_token,
        })
    }

    /// `POST /api/privacy/v1/relays/{token}/result` (API key with `relay.verify`).
    pub async fn record_result(&self, relay_token: &str, passed: bool) -> Result<(), ClientError> {
        let body = api::RecordResult { claim_result: api::Outcome::from_passed(passed), methodology: None };
        self.send_json(Method::POST, &api::result_path(relay_token), &body, true, &[]).await?;
        Ok(())
    }

    /// Redeems `token` (the `token` parameter: a Persona token, or base64url of
    /// an RFC 9577 Token) at `relay`.
    pub async fn generate_claim(&self, relay: &RelayCredentials, token: &str) -> Result<Claim, ClientError> {
        let authorization = format!("PrivateToken token={token}");
        let headers = [("persona-relay-secret", relay.secret.as_str()), ("authorization", authorization.as_str())];
        let path = api::generate_claim_path(&relay.token);
        let r = self.send_json(Method::POST, &path, &api::GenerateClaim {}, false, &headers).await?;
        json_body(&r)
    }
}

/// The `POST /api/v1/privacy-passes` body for a blinded message and key id.
pub fn issuance_body(blinded: &[u8], key_id: &str) -> api::CreatePrivacyPass {
    api::CreatePrivacyPass { blinded_token: b64::encode_unpadded(blinded), key_id: key_id.to_owned() }
}
