//! Relays: creation (secret shown once, stored hashed), lookup by token and
//! secret (constant time; a wrong secret, an expired and a missing relay look
//! alike), verifier results, and the relay's session token.

use blindpass_protocol::b64;
use blindpass_protocol::oaep;
use blindpass_protocol::rsa::RsaPublicKey;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::Cause;
use crate::claims::claim_json;
use crate::secrets::SecretsCell;
use crate::timing::SESSION_SECS;
use crate::{ClaimResult, ClaimType, Entropy, Environment, KeyError, Relay, Service, Store, StoreError};
use blindpass_store::ClaimFormat;

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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// No relay with that token, or the secret does not match.
    #[error("relay not found")]
    NotFound,
    /// The encryption key is not an RSA public key of 2048–4096 bits.
    #[error("encryption-key-pem is not an RSA public key of 2048 to 4096 bits")]
    BadEncryptionKey,
    /// `encryption-key-jwk`'s modulus is not 2048–4096 bits.
    #[error("encryption-key-jwk is not an RSA public key of 2048 to 4096 bits")]
    BadEncryptionJwk,
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
    Internal(#[source] Cause),
}

impl From<KeyError> for RelayError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Store(s) => RelayError::Store(s),
            other => RelayError::Internal(Cause::of(other)),
        }
    }
}

/// Recording a verifier result failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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

/// How a new relay's claims are encrypted, as the client asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEncryption<'a> {
    /// In the clear.
    None,
    /// `encryption-key-pem`: one RSA-OAEP-SHA256 block, base64.
    Pem(&'a str),
    /// `encryption-key-jwk` (parsed at the edge): a compact JWE,
    /// RSA-OAEP-256 + A256GCM.
    Jwk(&'a blindpass_protocol::jwk::EncryptionJwk),
}

impl Service {
    fn relays(&self) -> Relays<'_> {
        Relays {
            store: &**self.store(),
            secrets: self.secrets(),
            entropy: self.entropy(),
            issuer_name: &self.config().issuer_name,
            lifetime_secs: self.config().relay_lifetime_secs,
            now: self.now(),
        }
    }

    /// Creates a relay. `encryption_key_pem`, when given, must be an RSA
    /// public key of 2048–4096 bits (SPKI or PKCS#1 PEM).
    pub async fn create_relay(
        &self,
        environment: Environment,
        claim_type: &ClaimType,
        encryption_key_pem: Option<&str>,
    ) -> Result<NewRelay, RelayError> {
        self.relays()
            .create(environment, claim_type, encryption_key_pem.map_or(RelayEncryption::None, RelayEncryption::Pem))
            .await
    }

    /// Creates a relay whose claims are encrypted as `encryption` says.
    pub async fn create_relay_with(
        &self,
        environment: Environment,
        claim_type: &ClaimType,
        encryption: RelayEncryption<'_>,
    ) -> Result<NewRelay, RelayError> {
        self.relays().create(environment, claim_type, encryption).await
    }

    /// The relay `token` if `secret` is its secret (constant-time); a wrong
    /// secret, and an expired relay, look exactly like a missing relay.
    pub async fn relay_for(&self, token: &str, secret: &str) -> Result<Relay, RelayError> {
        self.relays().relay_for(token, secret).await
    }

    /// Records a verifier's result for a production relay of `environment`.
    pub async fn record_result(
        &self,
        environment: Environment,
        token: &str,
        passed: bool,
        methodology_json: String,
    ) -> Result<(), RecordError> {
        self.relays().record_result(environment, token, passed, methodology_json).await
    }
}

/// Relays over what they need: the store, the server secrets (session
/// tokens), randomness, the issuer name, how long a relay lives, and the
/// time.
struct Relays<'a> {
    store: &'a dyn Store,
    secrets: SecretsCell<'a>,
    entropy: &'a dyn Entropy,
    issuer_name: &'a str,
    lifetime_secs: i64,
    now: i64,
}

impl Relays<'_> {
    /// See [`Service::create_relay_with`].
    async fn create(
        &self,
        environment: Environment,
        claim_type: &ClaimType,
        encryption: RelayEncryption<'_>,
    ) -> Result<NewRelay, RelayError> {
        let (encryption_key_der, claim_format) = match encryption {
            RelayEncryption::None => (None, ClaimFormat::Oaep),
            RelayEncryption::Pem(pem) => (Some(encryption_key(claim_type, pem)?), ClaimFormat::Oaep),
            RelayEncryption::Jwk(jwk) => {
                // The same key sizes as a PEM key; the JWE carries a claim
                // of any length, so no claim-size check.
                let bits = jwk.key.modulus_bits();
                if !(2048..=4096).contains(&bits) {
                    return Err(RelayError::BadEncryptionJwk);
                }
                (Some(jwk.key.to_rsa_encryption_spki()), ClaimFormat::Jwe { kid: jwk.kid.clone() })
            }
        };
        let secret = Zeroizing::new(blindpass_entropy::uuid_v4(self.entropy));
        let relay = Relay {
            token: blindpass_entropy::token(self.entropy, "relay_", 27),
            secret_hash: Sha256::digest(secret.as_bytes()).into(),
            environment,
            claim_type: claim_type.as_str().to_owned(),
            encryption_key_der,
            claim_format,
            created_at: self.now,
            expires_at: self.now.saturating_add(self.lifetime_secs),
            result: None,
        };
        self.store.insert_relay(&relay).await?;
        let session_token = self.session_token(&relay).await?;
        Ok(NewRelay { relay, secret, session_token })
    }

    /// See [`Service::relay_for`].
    async fn relay_for(&self, token: &str, secret: &str) -> Result<Relay, RelayError> {
        let relay = self.live_relay(token).await?.ok_or(RelayError::NotFound)?;
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        if !bool::from(relay.secret_hash.ct_eq(&presented)) {
            return Err(RelayError::NotFound);
        }
        Ok(relay)
    }

    /// The relay `token` unless it does not exist or has expired.
    async fn live_relay(&self, token: &str) -> Result<Option<Relay>, StoreError> {
        let now = self.now;
        Ok(self.store.relay_by_token(token).await?.filter(|r| now < r.expires_at))
    }

    /// See [`Service::record_result`].
    async fn record_result(
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
        // One RSA-OAEP block holds a bounded claim; a JWE holds any.
        if let (Some(der), ClaimFormat::Oaep) = (&relay.encryption_key_der, &relay.claim_format) {
            let key = RsaPublicKey::from_spki_der(der)
                .map_err(|e| RecordError::Store(StoreError::Corrupt(Cause::while_("relay encryption key", e))))?;
            let needed = claim_json(&relay.claim_type, passed, &methodology_json).len();
            let max = oaep::max_message_len(&key);
            if needed > max {
                return Err(RecordError::ClaimTooLarge { needed, max });
            }
        }
        let result = ClaimResult { passed, methodology_json, recorded_at: self.now };
        match self.store.record_relay_result(token, &result).await? {
            blindpass_store::RecordOutcome::Recorded => Ok(()),
            blindpass_store::RecordOutcome::AlreadyRecorded => Err(RecordError::AlreadyRecorded),
            blindpass_store::RecordOutcome::NotFound => Err(RecordError::NotFound),
        }
    }

    /// A signed HS256 JWT for the relay's session (30 minutes).
    async fn session_token(&self, relay: &Relay) -> Result<String, StoreError> {
        let secrets = self.secrets.get().await?;
        let now = self.now;
        let header = b64::encode_unpadded(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iss": self.issuer_name,
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
}

/// The relay's encryption key as `rsaEncryption` SPKI DER, if it can hold
/// the smallest claim of its type (empty methodology) in one RSA-OAEP block.
fn encryption_key(claim_type: &ClaimType, pem: &str) -> Result<Vec<u8>, RelayError> {
    let key = RsaPublicKey::from_pem(pem).map_err(|_| RelayError::BadEncryptionKey)?;
    let needed = claim_json(claim_type.as_str(), true, "[]").len();
    let max = oaep::max_message_len(&key);
    if needed > max {
        return Err(RelayError::KeyTooSmallForClaim { claim_type: claim_type.to_string(), needed, max });
    }
    Ok(key.to_rsa_encryption_spki())
}
