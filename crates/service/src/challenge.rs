//! Challenges: Persona's (an HMAC over its fields, see
//! `protocol::persona`) and RFC 9577's, whose redemption context is an HMAC
//! of environment, claim type and the hour, so that it is recomputed rather
//! than stored.

use std::sync::Arc;

use blindpass_protocol::b64;
use blindpass_protocol::persona::{self, ChallengeFields};
use blindpass_protocol::wire::{TOKEN_TYPE_BLIND_RSA, TokenChallenge};

use crate::{ClaimType, Environment, LoadedKey, RedeemError, Relay, RelayError, Service};

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

impl Service {
    /// A Persona challenge for `claim_type` in `environment`, with the
    /// environment's active key.
    pub async fn challenge(
        &self,
        environment: Environment,
        claim_type: &ClaimType,
    ) -> Result<ChallengeOffer, RelayError> {
        let key = self.active_key(environment, TOKEN_TYPE_BLIND_RSA).await?.ok_or(RelayError::NoKey)?;
        let public = key.blind_rsa().ok_or(RelayError::NoKey)?;
        let secrets = self.secrets().await?;
        let challenge = persona::Challenge::issue(
            &secrets.challenge,
            &ChallengeFields {
                issuer_name: &self.config().issuer_name,
                origin_info: PERSONA_ORIGIN_INFO,
                expires_at: persona::expiry_for(self.now().max(0) as u64, CHALLENGE_VALIDITY_SECS),
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

    /// The RFC 9577 challenges this relay's 401 offers, one per token type
    /// relays accept (`relay_token_types`, in that order) that has an active
    /// key, each with that key.
    pub async fn rfc_challenges(&self, relay: &Relay) -> Result<Vec<(TokenChallenge, Arc<LoadedKey>)>, RedeemError> {
        let window = self.now().div_euclid(CONTEXT_WINDOW_SECS);
        let mut out = Vec::new();
        for &token_type in &self.config().relay_token_types {
            if let Some(key) = self.active_key(relay.environment, token_type).await? {
                out.push((self.rfc_challenge_for(relay, window, token_type).await?, key));
            }
        }
        if out.is_empty() {
            return Err(RedeemError::Internal("no active key".into()));
        }
        Ok(out)
    }

    /// The challenge of `token_type` for `relay` in context window `window`.
    pub(crate) async fn rfc_challenge_for(
        &self,
        relay: &Relay,
        window: i64,
        token_type: u16,
    ) -> Result<TokenChallenge, RedeemError> {
        let secrets = self.secrets().await?;
        let context = secrets.context.tag_parts(&[
            b"rfc9577 redemption context",
            relay.environment.as_str().as_bytes(),
            relay.claim_type.as_bytes(),
            &window.to_be_bytes(),
        ]);
        TokenChallenge::new(token_type, &self.config().issuer_name, &context, "")
            .map_err(|_| RedeemError::Internal("issuer name is not a valid challenge field".into()))
    }
}
