//! Challenges: Persona's (an HMAC over its fields, see
//! `protocol::persona`) and RFC 9577's, whose redemption context is an HMAC
//! of environment, claim type and the hour, so that it is recomputed rather
//! than stored.

use std::sync::Arc;

use blindpass_protocol::b64;
use blindpass_protocol::persona::{self, ChallengeFields};
use blindpass_protocol::wire::{TOKEN_TYPE_BLIND_RSA, TokenChallenge};

use crate::key_source::{KeySource, active_key};
use crate::keyring::Keys;
use crate::rfc_context::rfc_challenge;
use crate::secrets::SecretsCell;
use crate::timing::{CHALLENGE_VALIDITY_SECS, CONTEXT_WINDOW_SECS};
use crate::{ClaimType, Environment, LoadedKey, RedeemError, Relay, RelayError, Service};

/// Persona's `origin_info` for relay challenges.
pub(crate) const PERSONA_ORIGIN_INFO: &str = "/api/privacy/v1/relays";
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

impl Service {
    fn challenges(&self) -> Challenges<'_, Keys<'_>> {
        Challenges {
            keys: self.keys(),
            secrets: self.secrets(),
            issuer_name: &self.config().issuer_name,
            relay_token_types: &self.config().relay_token_types,
            now: self.now(),
        }
    }

    /// A Persona challenge for `claim_type` in `environment`, with the
    /// environment's active key.
    pub async fn challenge(
        &self,
        environment: Environment,
        claim_type: &ClaimType,
    ) -> Result<ChallengeOffer, RelayError> {
        self.challenges().persona(environment, claim_type).await
    }

    /// The RFC 9577 challenges this relay's 401 offers, one per token type
    /// relays accept (`relay_token_types`, in that order) that has an active
    /// key, each with that key.
    pub async fn rfc_challenges(&self, relay: &Relay) -> Result<Vec<(TokenChallenge, Arc<LoadedKey>)>, RedeemError> {
        self.challenges().rfc(relay).await
    }
}

/// Challenges over what they need: keys, the server secrets, the issuer
/// name, the token types relays accept, and the time.
struct Challenges<'a, K> {
    keys: K,
    secrets: SecretsCell<'a>,
    issuer_name: &'a str,
    relay_token_types: &'a [u16],
    now: i64,
}

impl<K: KeySource> Challenges<'_, K> {
    async fn persona(&self, environment: Environment, claim_type: &ClaimType) -> Result<ChallengeOffer, RelayError> {
        let key =
            active_key(&self.keys, environment, TOKEN_TYPE_BLIND_RSA, self.now).await?.ok_or(RelayError::NoKey)?;
        let public = key.blind_rsa().ok_or(RelayError::NoKey)?;
        let secrets = self.secrets.get().await?;
        let challenge = persona::Challenge::issue(
            &secrets.challenge,
            &ChallengeFields {
                issuer_name: self.issuer_name,
                origin_info: PERSONA_ORIGIN_INFO,
                expires_at: persona::expiry_for(self.now.max(0) as u64, CHALLENGE_VALIDITY_SECS),
                claim_type: claim_type.as_str(),
                environment: environment.as_str(),
            },
        );
        Ok(ChallengeOffer {
            challenge: challenge.encode(),
            token_key: b64::encode_unpadded(public.rsa_encryption_spki()),
            token_key_id: public.persona_key_id().to_hex(),
        })
    }

    async fn rfc(&self, relay: &Relay) -> Result<Vec<(TokenChallenge, Arc<LoadedKey>)>, RedeemError> {
        let window = self.now.div_euclid(CONTEXT_WINDOW_SECS);
        let mut out = Vec::new();
        for &token_type in self.relay_token_types {
            if let Some(key) = active_key(&self.keys, relay.environment, token_type, self.now).await? {
                let secrets = self.secrets.get().await?;
                out.push((rfc_challenge(secrets, self.issuer_name, relay, window, token_type)?, key));
            }
        }
        if out.is_empty() {
            return Err(RedeemError::Internal("no active key".into()));
        }
        Ok(out)
    }
}
