//! The relay flow: challenges, relays, verifier results and redemption
//! (Persona JSON tokens and RFC 9577 binary tokens), with single spend.

use std::sync::Arc;

use blindpass_protocol::b64;
use blindpass_protocol::directory::{DirectoryKey, IssuerDirectory};
use blindpass_protocol::keys::{IssuerPublicKey, TokenKeyId};
use blindpass_protocol::oaep;
use blindpass_protocol::persona::{self, ChallengeFields};
use blindpass_protocol::rsa::RsaPublicKey;
use blindpass_protocol::type2;
use blindpass_protocol::wire::{TOKEN_TYPE_BLIND_RSA, Token, TokenChallenge, TokenRequest, TokenResponse};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::{
    ClaimResult, Environment, IdempotencyCompletion, IssueError, KeyError, LoadedKey, Relay, Service, SpendOutcome,
    StoreError,
};

/// Persona's `origin_info` for relay challenges.
pub const PERSONA_ORIGIN_INFO: &str = "/api/privacy/v1/relays";
/// Lifetime of a relay session access token.
pub const SESSION_SECS: i64 = 30 * 60;
/// RFC challenges rotate their redemption context every hour; the current
/// and the previous hour's challenges are accepted, so a token answering
/// window `w` is accepted until `(w + 2) * CONTEXT_WINDOW_SECS`.
pub const CONTEXT_WINDOW_SECS: i64 = 3600;
/// Persona challenges are valid for at least this long, and expire on the
/// next full hour after it (so at most two hours).
pub const CHALLENGE_VALIDITY_SECS: u64 = 3600;

/// What the challenge endpoint returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeOffer {
    /// base64url (unpadded) of the challenge JSON.
    pub challenge: String,
    /// base64url (unpadded) of the `rsaEncryption` SPKI DER.
    pub token_key: String,
    /// Hex SHA-256 of that DER.
    pub token_key_id: String,
}

/// A new relay with its one-time secrets.
#[derive(Clone)]
pub struct NewRelay {
    /// The stored relay.
    pub relay: Relay,
    /// The relay secret (stored only hashed).
    pub secret: Zeroizing<String>,
    /// A signed session access token (HS256 JWT, 30 minutes).
    pub session_token: String,
}

impl std::fmt::Debug for NewRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewRelay").field("relay", &self.relay).finish_non_exhaustive()
    }
}

/// Relay creation and lookup failures.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// No relay with that token, or the secret does not match.
    #[error("relay not found")]
    NotFound,
    /// The encryption key is not an RSA public key of 2048–4096 bits.
    #[error("encryption-key-pem is not an RSA public key of 2048 to 4096 bits")]
    BadEncryptionKey,
    /// The encryption key cannot hold even the smallest claim of this type
    /// in one RSA-OAEP block, so the relay could never deliver a claim.
    #[error("encryption-key-pem is too small for a {claim_type} claim ({needed} bytes; the key holds {max})")]
    KeyTooSmallForClaim {
        /// The relay's claim type.
        claim_type: String,
        /// The smallest claim's length in bytes.
        needed: usize,
        /// The longest message the key can encrypt.
        max: usize,
    },
    /// No active issuer key.
    #[error("no active issuer key")]
    NoKey,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Key loading failed.
    #[error("{0}")]
    Internal(String),
}

impl From<KeyError> for RelayError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Store(s) => RelayError::Store(s),
            other => RelayError::Internal(other.to_string()),
        }
    }
}

/// Recording a verifier result failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// No such relay in the caller's environment.
    #[error("relay not found")]
    NotFound,
    /// Sandbox relays always pass; they take no result.
    #[error("sandbox relays always pass and take no result")]
    Sandbox,
    /// A result was already recorded.
    #[error("a result was already recorded for this relay")]
    AlreadyRecorded,
    /// The claim with this methodology would not fit in one RSA-OAEP block
    /// of the relay's encryption key; nothing was recorded.
    #[error("the claim is {needed} bytes; the relay's encryption key holds at most {max}")]
    ClaimTooLarge {
        /// The claim's length in bytes.
        needed: usize,
        /// The longest message the key can encrypt.
        max: usize,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a redemption was refused. Nothing is spent in any of these cases.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RedeemError {
    /// The token is malformed, forged, expired, for another scope, or spent.
    #[error("invalid token: {0:?}")]
    InvalidToken(TokenRejection),
    /// The verifier has not recorded a result yet (retry later).
    #[error("the claim result is not available yet")]
    Pending,
    /// The claim does not fit in one RSA-OAEP block of the relay's key.
    #[error("the claim payload does not fit the relay's encryption key")]
    PayloadTooLarge,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Keys could not be loaded.
    #[error("{0}")]
    Internal(String),
}

/// Why a presented token is refused (the server words it for the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    /// Spent before, at another relay (or without this relay's secret).
    AlreadyUsed,
    /// The `Authorization` value is not base64url.
    NotBase64url,
    /// The bytes are neither a Persona token nor an RFC 9578 token.
    Malformed,
    /// The Persona challenge's expiry has passed.
    ChallengeExpired,
    /// The Persona challenge's MAC does not verify.
    ChallengeNotOurs,
    /// The RFC challenge is not one this relay issued in the current or the
    /// previous window.
    RfcChallengeUnknown,
    /// The token's environment is not the relay's.
    OtherEnvironment,
    /// The token was issued for another claim type.
    OtherClaimType,
    /// The Persona token's key id is not a key id.
    UnknownKey,
    /// No key with that id verifies now (unknown, pending, retired, or past
    /// its overlap).
    UnknownOrRetiredKey,
    /// The signature does not verify.
    BadSignature,
}

impl From<KeyError> for RedeemError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Store(s) => RedeemError::Store(s),
            other => RedeemError::Internal(other.to_string()),
        }
    }
}

/// The outcome of a redemption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redemption {
    /// The claim JSON, or base64 of its RSA-OAEP ciphertext.
    pub claim_payload: String,
    /// True when the claim passed and the token is now spent.
    pub token_consumed: bool,
    /// True when the idempotent response built by the caller's `respond`
    /// was stored in the spend's own transaction.
    pub response_stored: bool,
}

/// A verified token: who signed it, its double-spend key, and the last
/// moment any node could accept it.
struct Verified {
    key: Arc<LoadedKey>,
    nonce: Vec<u8>,
    expires_at: i64,
}

impl Service {
    /// A Persona challenge for `claim_type` in `environment`, with the
    /// environment's active key.
    pub async fn challenge(&self, environment: Environment, claim_type: &str) -> Result<ChallengeOffer, RelayError> {
        let key = self.active_key(environment).await?.ok_or(RelayError::NoKey)?;
        let secrets = self.secrets().await?;
        let challenge = persona::Challenge::issue(
            &secrets.challenge,
            &ChallengeFields {
                issuer_name: &self.config().issuer_name,
                origin_info: PERSONA_ORIGIN_INFO,
                expires_at: persona::expiry_for(self.now().max(0) as u64, CHALLENGE_VALIDITY_SECS),
                claim_type,
                environment: environment.as_str(),
            },
        );
        Ok(ChallengeOffer {
            challenge: challenge.encode(),
            token_key: b64::encode_unpadded(key.public.rsa_encryption_spki()),
            token_key_id: key.public.persona_key_id().to_hex(),
        })
    }

    /// Creates a relay. `encryption_key_pem`, when given, must be an RSA
    /// public key of 2048–4096 bits (SPKI or PKCS#1 PEM).
    pub async fn create_relay(
        &self,
        environment: Environment,
        claim_type: &str,
        encryption_key_pem: Option<&str>,
    ) -> Result<NewRelay, RelayError> {
        let encryption_key_der = match encryption_key_pem {
            None => None,
            Some(pem) => {
                let key = RsaPublicKey::from_pem(pem).map_err(|_| RelayError::BadEncryptionKey)?;
                // The smallest claim this relay can deliver: empty methodology.
                let needed = claim_json(claim_type, true, "[]").len();
                let max = oaep::max_message_len(&key);
                if needed > max {
                    return Err(RelayError::KeyTooSmallForClaim { claim_type: claim_type.to_owned(), needed, max });
                }
                Some(key.to_rsa_encryption_spki())
            }
        };
        let secret = Zeroizing::new(blindpass_entropy::uuid_v4(self.entropy()));
        let relay = Relay {
            token: blindpass_entropy::token(self.entropy(), "relay_", 27),
            secret_hash: Sha256::digest(secret.as_bytes()).into(),
            environment,
            claim_type: claim_type.to_owned(),
            encryption_key_der,
            created_at: self.now(),
            expires_at: self.now().saturating_add(self.config().relay_lifetime_secs),
            result: None,
        };
        self.store().insert_relay(&relay).await?;
        let session_token = self.session_token(&relay).await?;
        Ok(NewRelay { relay, secret, session_token })
    }

    /// The relay `token` if `secret` is its secret (constant-time); a wrong
    /// secret, and an expired relay, look exactly like a missing relay.
    pub async fn relay_for(&self, token: &str, secret: &str) -> Result<Relay, RelayError> {
        let relay = self.live_relay(token).await?.ok_or(RelayError::NotFound)?;
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        if !bool::from(relay.secret_hash.ct_eq(&presented)) {
            return Err(RelayError::NotFound);
        }
        Ok(relay)
    }

    /// The relay `token` unless it does not exist or has expired.
    async fn live_relay(&self, token: &str) -> Result<Option<Relay>, StoreError> {
        let now = self.now();
        Ok(self.store().relay_by_token(token).await?.filter(|r| now < r.expires_at))
    }

    /// Records a verifier's result for a production relay of `environment`.
    pub async fn record_result(
        &self,
        environment: Environment,
        token: &str,
        passed: bool,
        methodology_json: String,
    ) -> Result<(), RecordError> {
        let relay = self.live_relay(token).await?.ok_or(RecordError::NotFound)?;
        if relay.environment != environment {
            return Err(RecordError::NotFound);
        }
        if environment == Environment::Sandbox {
            return Err(RecordError::Sandbox);
        }
        if let Some(der) = &relay.encryption_key_der {
            let key = RsaPublicKey::from_spki_der(der)
                .map_err(|e| RecordError::Store(StoreError::Corrupt(format!("relay encryption key: {e}"))))?;
            let needed = claim_json(&relay.claim_type, passed, &methodology_json).len();
            let max = oaep::max_message_len(&key);
            if needed > max {
                return Err(RecordError::ClaimTooLarge { needed, max });
            }
        }
        let result = ClaimResult { passed, methodology_json, recorded_at: self.now() };
        match self.store().record_relay_result(token, &result).await? {
            blindpass_store::RecordOutcome::Recorded => Ok(()),
            blindpass_store::RecordOutcome::AlreadyRecorded => Err(RecordError::AlreadyRecorded),
            blindpass_store::RecordOutcome::NotFound => Err(RecordError::NotFound),
        }
    }

    /// The RFC 9577 challenge this relay's 401 offers, and its key.
    pub async fn rfc_challenge(&self, relay: &Relay) -> Result<(TokenChallenge, IssuerPublicKey), RedeemError> {
        let key = self.active_key(relay.environment).await?.ok_or(RedeemError::Internal("no active key".into()))?;
        let window = self.now().div_euclid(CONTEXT_WINDOW_SECS);
        let challenge = self.rfc_challenge_for(relay, window).await?;
        Ok((challenge, key.public.clone()))
    }

    async fn rfc_challenge_for(&self, relay: &Relay, window: i64) -> Result<TokenChallenge, RedeemError> {
        let secrets = self.secrets().await?;
        let context = secrets.context.tag_parts(&[
            b"rfc9577 redemption context",
            relay.environment.as_str().as_bytes(),
            relay.claim_type.as_bytes(),
            &window.to_be_bytes(),
        ]);
        TokenChallenge::new(TOKEN_TYPE_BLIND_RSA, &self.config().issuer_name, &context, "")
            .map_err(|_| RedeemError::Internal("issuer name is not a valid challenge field".into()))
    }

    /// Redeems `presented` (the `token` parameter of `Authorization:
    /// PrivateToken`) at `relay`: verifies it, takes the claim result, and
    /// spends the token only when the claim passed.
    ///
    /// The spend, the claim payload and the idempotent response that
    /// `respond` builds from the successful redemption commit in one
    /// transaction. Presenting the same token at the same relay again
    /// returns the stored claim (for a client whose answer was lost); at any
    /// other relay it is "already used". Callers must not cancel this future
    /// once started (run it in its own task): cancellation cannot undo a
    /// commit, only lose its answer.
    pub async fn redeem(
        &self,
        relay: &Relay,
        presented: &str,
        respond: impl FnOnce(&Redemption) -> Option<IdempotencyCompletion>,
    ) -> Result<Redemption, RedeemError> {
        let verified = self.verify_presented(relay, presented).await?;
        let (passed, methodology_json) = match (relay.environment, &relay.result) {
            (Environment::Sandbox, _) => (true, "[]".to_owned()),
            (Environment::Production, None) => return Err(RedeemError::Pending),
            (Environment::Production, Some(r)) => (r.passed, r.methodology_json.clone()),
        };
        let claim_payload = self.claim_payload(relay, passed, &methodology_json)?;
        if !passed {
            return Ok(Redemption { claim_payload, token_consumed: false, response_stored: false });
        }
        let mut redemption = Redemption { claim_payload, token_consumed: true, response_stored: false };
        let idempotency = respond(&redemption);
        redemption.response_stored = idempotency.is_some();
        let spend = blindpass_store::Spend {
            key_id: verified.key.record.id.clone(),
            nonce: verified.nonce,
            relay_token: relay.token.clone(),
            spent_at: self.now(),
            expires_at: verified.expires_at,
            claim_payload: redemption.claim_payload.clone(),
            idempotency,
        };
        match self.store().spend_token(&spend).await? {
            SpendOutcome::Spent => Ok(redemption),
            SpendOutcome::SpentHere { claim_payload } => {
                Ok(Redemption { claim_payload, token_consumed: true, response_stored: false })
            }
            SpendOutcome::SpentElsewhere => Err(RedeemError::InvalidToken(TokenRejection::AlreadyUsed)),
        }
    }

    /// Checks a presented token of either format: its challenge first (a
    /// MAC or digest check, no key lookup), then its key and signature.
    async fn verify_presented(&self, relay: &Relay, presented: &str) -> Result<Verified, RedeemError> {
        let bytes = b64::decode(presented).map_err(|_| RedeemError::InvalidToken(TokenRejection::NotBase64url))?;
        if bytes.first() == Some(&b'{') {
            self.verify_persona(relay, presented).await
        } else {
            self.verify_rfc(relay, &bytes).await
        }
    }

    async fn verify_persona(&self, relay: &Relay, presented: &str) -> Result<Verified, RedeemError> {
        let parsed =
            persona::Token::decode(presented).map_err(|_| RedeemError::InvalidToken(TokenRejection::Malformed))?;
        let challenge = &parsed.token.challenge;
        let secrets = self.secrets().await?;
        let expires_at = challenge.verify(&secrets.challenge, self.now().max(0) as u64).map_err(|e| match e {
            persona::PersonaError::Expired => RedeemError::InvalidToken(TokenRejection::ChallengeExpired),
            _ => RedeemError::InvalidToken(TokenRejection::ChallengeNotOurs),
        })?;
        if challenge.environment != relay.environment.as_str() {
            return Err(RedeemError::InvalidToken(TokenRejection::OtherEnvironment));
        }
        if challenge.claim_type != relay.claim_type {
            return Err(RedeemError::InvalidToken(TokenRejection::OtherClaimType));
        }
        let id = TokenKeyId::from_hex(&parsed.token.key_id)
            .map_err(|_| RedeemError::InvalidToken(TokenRejection::UnknownKey))?;
        let key = self.verifying_key(relay, &id).await?;
        parsed.verify_signature(&key.public).map_err(|_| RedeemError::InvalidToken(TokenRejection::BadSignature))?;
        let expires_at = i64::try_from(expires_at).unwrap_or(i64::MAX);
        Ok(Verified { key, nonce: parsed.nonce.to_vec(), expires_at })
    }

    async fn verify_rfc(&self, relay: &Relay, bytes: &[u8]) -> Result<Verified, RedeemError> {
        let token = Token::decode(bytes).map_err(|_| RedeemError::InvalidToken(TokenRejection::Malformed))?;
        let window = self.now().div_euclid(CONTEXT_WINDOW_SECS);
        let mut matched = None;
        for w in [window, window - 1] {
            if self.rfc_challenge_for(relay, w).await?.digest() == token.challenge_digest {
                matched = Some(w);
            }
        }
        let Some(w) = matched else {
            return Err(RedeemError::InvalidToken(TokenRejection::RfcChallengeUnknown));
        };
        let key = self.verifying_key(relay, &token.token_key_id).await?;
        type2::verify_token(&key.public, &token)
            .map_err(|_| RedeemError::InvalidToken(TokenRejection::BadSignature))?;
        Ok(Verified { key, nonce: token.nonce.to_vec(), expires_at: (w + 2) * CONTEXT_WINDOW_SECS })
    }

    /// The key named `id` if it may verify tokens for `relay` now: same
    /// environment, active, or rotated out less than `key_overlap_secs` ago.
    async fn verifying_key(&self, relay: &Relay, id: &TokenKeyId) -> Result<Arc<LoadedKey>, RedeemError> {
        let unknown = RedeemError::InvalidToken(TokenRejection::UnknownOrRetiredKey);
        let key = self.key_by_id(id).await?.ok_or(unknown)?;
        if !self.lifecycle().can_verify(&key.record, self.now()) {
            return Err(RedeemError::InvalidToken(TokenRejection::UnknownOrRetiredKey));
        }
        if key.record.environment != relay.environment {
            return Err(RedeemError::InvalidToken(TokenRejection::OtherEnvironment));
        }
        Ok(key)
    }

    fn claim_payload(&self, relay: &Relay, passed: bool, methodology_json: &str) -> Result<String, RedeemError> {
        let json = claim_json(&relay.claim_type, passed, methodology_json);
        let Some(der) = &relay.encryption_key_der else { return Ok(json) };
        let key = RsaPublicKey::from_spki_der(der).map_err(|e| RedeemError::Internal(e.to_string()))?;
        let ciphertext = oaep::encrypt(&key, json.as_bytes(), &mut self.entropy().rng())
            .map_err(|_| RedeemError::PayloadTooLarge)?;
        Ok(b64::encode_standard(&ciphertext))
    }

    /// A signed HS256 JWT for the relay's session (30 minutes).
    async fn session_token(&self, relay: &Relay) -> Result<String, StoreError> {
        let secrets = self.secrets().await?;
        let now = self.now();
        let header = b64::encode_unpadded(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iss": self.config().issuer_name,
            "sub": relay.token,
            "env": relay.environment.as_str(),
            "claim_type": relay.claim_type,
            "iat": now,
            "exp": now + SESSION_SECS,
        });
        let payload = b64::encode_unpadded(claims.to_string().as_bytes());
        let signing_input = format!("{header}.{payload}");
        let signature = secrets.session.tag(signing_input.as_bytes());
        Ok(format!("{signing_input}.{}", b64::encode_unpadded(&signature)))
    }

    /// The RFC 9578 directory of `environments`, in that order; within each,
    /// pending keys first (announced with their future `not-before`), then
    /// the active key, then keys that still verify.
    pub async fn directory(
        &self,
        environments: &[Environment],
        request_uri: &str,
    ) -> Result<IssuerDirectory, KeyError> {
        let now = self.now();
        let mut keys = Vec::new();
        for environment in environments {
            keys.extend(self.keys_of(*environment).await?);
        }
        let position = |k: &LoadedKey| environments.iter().position(|e| *e == k.record.environment);
        let lifecycle = self.lifecycle();
        keys.retain(|k| lifecycle.is_listed(&k.record, now));
        // Stable: environments in the order asked, then lifecycle order.
        keys.sort_by_key(|k| (position(k), crate::lifecycle::directory_rank(k.record.state)));
        Ok(IssuerDirectory {
            issuer_request_uri: request_uri.to_owned(),
            token_keys: keys
                .iter()
                .map(|k| DirectoryKey::type2(&k.public, Some(k.record.not_before.max(0) as u64)))
                .collect(),
        })
    }

    /// RFC 9578 §6.2 issuance: the truncated key id picks the environment's
    /// issuing key.
    pub async fn issue_token_request(
        &self,
        environment: Environment,
        request: &TokenRequest,
    ) -> Result<TokenResponse, IssueError> {
        let now = self.now();
        let key = self
            .keys_of(environment)
            .await?
            .into_iter()
            .find(|k| k.public.truncated_token_key_id() == request.truncated_token_key_id && k.issues_at(now))
            .ok_or(IssueError::UnknownKey)?;
        let response = self.issue(environment, &key.public.token_key_id(), request.blinded_msg.to_vec()).await?;
        let blind_sig: [u8; 256] = response.try_into().map_err(|_| IssueError::Internal("signature length".into()))?;
        Ok(TokenResponse { blind_sig: Box::new(blind_sig) })
    }
}

/// The claim JSON a redemption delivers: Persona's claim schema, fields in
/// its documented order. A stored methodology that is not JSON (never written
/// by this server) becomes `[]`.
fn claim_json(claim_type: &str, passed: bool, methodology_json: &str) -> String {
    #[derive(serde::Serialize)]
    struct ClaimJson<'a> {
        claim_type: &'a str,
        claim_result: &'a str,
        methodology: serde_json::Value,
    }
    let methodology: serde_json::Value =
        serde_json::from_str(methodology_json).unwrap_or(serde_json::Value::Array(Vec::new()));
    let claim = ClaimJson { claim_type, claim_result: if passed { "passed" } else { "failed" }, methodology };
    // Serializing strings and an already-parsed JSON value cannot fail.
    serde_json::to_string(&claim).unwrap_or_default()
}
