//! Redemption: a presented token (Persona JSON or RFC 9577), parsed once
//! at the edge into a [`PresentedToken`], is verified (challenge first, then
//! key and signature), the claim result taken, and the token spent only if
//! the claim passed: the spend, the claim payload and the idempotent answer
//! commit in one transaction.

use std::sync::Arc;

use blindpass_protocol::b64;
use blindpass_protocol::keys::TokenKeyId;
use blindpass_protocol::oaep;
use blindpass_protocol::persona;
use blindpass_protocol::rsa::RsaPublicKey;
use blindpass_protocol::type2;
use blindpass_protocol::wire::TOKEN_TYPE_BLIND_RSA;

use crate::Cause;
use crate::claims::claim_json;
use crate::key_source::KeySource;
use crate::keyring::Keys;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::presented::{PresentedToken, TokenRejection};
use crate::rfc_context::rfc_challenge;
use crate::secrets::SecretsCell;
use crate::timing::CONTEXT_WINDOW_SECS;
use crate::{
    Entropy, Environment, IdempotencyCompletion, KeyError, LoadedKey, Relay, Service, SpendOutcome, Store, StoreError,
};

/// Why a redemption was refused. Nothing is spent in any of these cases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// With `require_synchronous_replication`, a spend acknowledged now
    /// could be lost to a failover: nothing is spent (retry later).
    #[error("redemptions are paused: {0}")]
    Unprotected(crate::replication::Unprotected),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Keys could not be loaded.
    #[error("{0}")]
    Internal(#[source] Cause),
}

impl From<KeyError> for RedeemError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Store(s) => RedeemError::Store(s),
            other => RedeemError::Internal(Cause::of(other)),
        }
    }
}

/// The outcome of a redemption, as domain data: the server renders it the
/// same way for a first answer, a replay at the same relay, and the answer
/// it stores for an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redemption {
    /// The claim JSON, or base64 of its RSA-OAEP ciphertext.
    pub claim_payload: String,
    /// True when the claim passed and the token is now spent.
    pub token_consumed: bool,
    /// True when the answer given to [`Service::spend`] was stored in the
    /// spend's own transaction.
    pub response_stored: bool,
}

/// A presented token verified and its claim made, nothing spent yet: the
/// first half of a redemption ([`Service::check_redemption`]). What it
/// will answer is [`Checked::redemption`]; [`Service::spend`] finishes it.
#[derive(Debug)]
pub struct Checked {
    redemption: Redemption,
    /// The token to spend (none when the claim did not pass).
    to_spend: Option<Verified>,
}

impl Checked {
    /// What the redemption answers once spent.
    pub fn redemption(&self) -> &Redemption {
        &self.redemption
    }

    /// Whether [`Service::spend`] will spend a token (the claim passed).
    pub fn spends(&self) -> bool {
        self.to_spend.is_some()
    }
}

/// A verified token: who signed it, its double-spend key, and the last
/// moment any node could accept it.
#[derive(Debug)]
struct Verified {
    key: Arc<LoadedKey>,
    nonce: Vec<u8>,
    expires_at: i64,
}

impl Service {
    fn redeemer(&self) -> Redeemer<'_, Keys<'_>> {
        Redeemer {
            keys: self.keys(),
            secrets: self.secrets(),
            store: &**self.store(),
            metrics: self.metrics(),
            entropy: self.entropy(),
            lifecycle: self.lifecycle(),
            issuer_name: &self.config().issuer_name,
            relay_token_types: &self.config().relay_token_types,
            refusal: self.replication_refusal(),
            now: self.now(),
        }
    }

    /// Redeems `presented` at `relay` in one call, with no idempotent
    /// answer to store: [`Self::check_redemption`] then [`Self::spend`].
    pub async fn redeem(&self, relay: &Relay, presented: &PresentedToken) -> Result<Redemption, RedeemError> {
        self.redeemer().redeem(relay, presented).await
    }

    /// The first half of a redemption: verifies `presented` for `relay`
    /// (challenge first, then key and signature), takes the claim result
    /// and makes the claim payload. Nothing is written.
    pub async fn check_redemption(&self, relay: &Relay, presented: &PresentedToken) -> Result<Checked, RedeemError> {
        self.redeemer().check_redemption(relay, presented).await
    }

    /// The second half: spends the checked token with its claim payload and,
    /// when given, the idempotent `answer`, all in one transaction. A claim
    /// that did not pass spends nothing and stores nothing.
    ///
    /// Presenting the same token at the same relay again returns the stored
    /// claim (for a client whose answer was lost); at any other relay it is
    /// "already used". Callers must not cancel this future once started
    /// (run it in its own task): cancellation cannot undo a commit, only
    /// lose its answer.
    pub async fn spend(
        &self,
        relay: &Relay,
        checked: Checked,
        answer: Option<IdempotencyCompletion>,
    ) -> Result<Redemption, RedeemError> {
        self.redeemer().spend(relay, checked, answer).await
    }
}

/// Redemption over what it needs: keys, the server secrets, the store it
/// spends in, the metrics it counts, randomness (claim encryption), the
/// lifecycle rules, the issuer name, the token types relays accept, and the
/// time.
struct Redeemer<'a, K> {
    keys: K,
    secrets: SecretsCell<'a>,
    store: &'a dyn Store,
    metrics: &'a Metrics,
    entropy: &'a dyn Entropy,
    lifecycle: Lifecycle,
    issuer_name: &'a str,
    relay_token_types: &'a [u16],
    /// Why no spend may be acknowledged now (the replication guard).
    refusal: Option<crate::replication::Unprotected>,
    now: i64,
}

impl<K: KeySource> Redeemer<'_, K> {
    /// See [`Service::redeem`].
    async fn redeem(&self, relay: &Relay, presented: &PresentedToken) -> Result<Redemption, RedeemError> {
        let checked = self.check_redemption(relay, presented).await?;
        self.spend(relay, checked, None).await
    }

    /// See [`Service::check_redemption`].
    async fn check_redemption(&self, relay: &Relay, presented: &PresentedToken) -> Result<Checked, RedeemError> {
        let result = self.check_once(relay, presented).await;
        let label = match &result {
            Ok(checked) if checked.spends() => return result,
            Ok(_) => "not_passed",
            Err(e) => error_label(e),
        };
        self.metrics.redemption(label);
        result
    }

    async fn check_once(&self, relay: &Relay, presented: &PresentedToken) -> Result<Checked, RedeemError> {
        let verified = self.verify(relay, presented).await?;
        let (passed, methodology_json) = claim_result(relay)?;
        let claim_payload = self.claim_payload(relay, passed, &methodology_json)?;
        let redemption = Redemption { claim_payload, token_consumed: passed, response_stored: false };
        Ok(Checked { redemption, to_spend: passed.then_some(verified) })
    }

    /// See [`Service::spend`].
    async fn spend(
        &self,
        relay: &Relay,
        checked: Checked,
        answer: Option<IdempotencyCompletion>,
    ) -> Result<Redemption, RedeemError> {
        let Checked { mut redemption, to_spend } = checked;
        let Some(verified) = to_spend else { return Ok(redemption) };
        if let Some(why) = self.refusal {
            self.metrics.redemption("unprotected");
            return Err(RedeemError::Unprotected(why));
        }
        redemption.response_stored = answer.is_some();
        let spend = blindpass_store::Spend {
            key_id: verified.key.record.id.clone(),
            nonce: verified.nonce,
            relay_token: relay.token.clone(),
            spent_at: self.now,
            expires_at: verified.expires_at,
            claim_payload: redemption.claim_payload.clone(),
            idempotency: answer,
        };
        let (label, result) = match self.store.spend_token(&spend).await {
            Ok(SpendOutcome::Spent) => ("accepted", Ok(redemption)),
            // The same relay presenting the token again gets its claim back
            // (an answer that was lost): counted apart.
            Ok(SpendOutcome::SpentHere { claim_payload }) => {
                ("replayed", Ok(Redemption { claim_payload, token_consumed: true, response_stored: false }))
            }
            Ok(SpendOutcome::SpentElsewhere) => ("double_spend", Err(reject(TokenRejection::AlreadyUsed))),
            Err(e) => ("error", Err(RedeemError::Store(e))),
        };
        self.metrics.redemption(label);
        result
    }

    /// Checks a presented token of either format: its challenge first (a
    /// MAC or digest check, no key lookup), then its key and signature.
    async fn verify(&self, relay: &Relay, presented: &PresentedToken) -> Result<Verified, RedeemError> {
        match presented {
            PresentedToken::Persona(token) => self.verify_persona(relay, token).await,
            PresentedToken::Rfc(token) => {
                let (w, key) = self
                    .rfc_challenge_and_key(relay, TOKEN_TYPE_BLIND_RSA, token.challenge_digest, &token.token_key_id)
                    .await?;
                let public = key.blind_rsa().ok_or(reject(TokenRejection::UnknownOrRetiredKey))?;
                let verifier = key.verifier().ok_or(reject(TokenRejection::UnknownOrRetiredKey))?;
                type2::verify_token_with(public, verifier, token).map_err(|_| reject(TokenRejection::BadSignature))?;
                Ok(Verified { key, nonce: token.nonce.to_vec(), expires_at: (w + 2) * CONTEXT_WINDOW_SECS })
            }
            PresentedToken::Voprf(token) => {
                let token_type = token.suite.token_type();
                let (w, key) =
                    self.rfc_challenge_and_key(relay, token_type, token.challenge_digest, &token.token_key_id).await?;
                let secret = key.voprf().ok_or(reject(TokenRejection::UnknownOrRetiredKey))?;
                secret.verify_token(token).map_err(|_| reject(TokenRejection::BadSignature))?;
                Ok(Verified { key, nonce: token.nonce.to_vec(), expires_at: (w + 2) * CONTEXT_WINDOW_SECS })
            }
        }
    }

    async fn verify_persona(&self, relay: &Relay, parsed: &persona::ParsedToken) -> Result<Verified, RedeemError> {
        let challenge = &parsed.token.challenge;
        let secrets = self.secrets.get().await?;
        let expires_at = challenge.verify(&secrets.challenge, self.now.max(0) as u64).map_err(|e| match e {
            persona::PersonaError::Expired => reject(TokenRejection::ChallengeExpired),
            _ => reject(TokenRejection::ChallengeNotOurs),
        })?;
        if challenge.environment != relay.environment.as_str() {
            return Err(reject(TokenRejection::OtherEnvironment));
        }
        if challenge.claim_type != relay.claim_type {
            return Err(reject(TokenRejection::OtherClaimType));
        }
        let id = TokenKeyId::from_hex(&parsed.token.key_id).map_err(|_| reject(TokenRejection::UnknownKey))?;
        let key = self.verifying_key(relay, &id).await?;
        // The Persona dialect is type 2: a key of another type names no key.
        let (public, verifier) =
            key.blind_rsa().zip(key.verifier()).ok_or(reject(TokenRejection::UnknownOrRetiredKey))?;
        parsed.verify_signature_with(public, verifier).map_err(|_| reject(TokenRejection::BadSignature))?;
        let expires_at = i64::try_from(expires_at).unwrap_or(i64::MAX);
        Ok(Verified { key, nonce: parsed.nonce.to_vec(), expires_at })
    }

    /// An RFC 9577 token's checks before its authenticator: its token type
    /// is one relays accept; its challenge digest is this relay's challenge
    /// of that type in the current or the previous window (returned); its
    /// key verifies now, for this relay's environment, and is of that type.
    async fn rfc_challenge_and_key(
        &self,
        relay: &Relay,
        token_type: u16,
        challenge_digest: [u8; 32],
        key_id: &TokenKeyId,
    ) -> Result<(i64, Arc<LoadedKey>), RedeemError> {
        if !self.relay_token_types.contains(&token_type) {
            return Err(reject(TokenRejection::TokenTypeNotAccepted));
        }
        let window = self.now.div_euclid(CONTEXT_WINDOW_SECS);
        let mut matched = None;
        for w in [window, window - 1] {
            if rfc_challenge(self.secrets.get().await?, self.issuer_name, relay, w, token_type)?.digest()
                == challenge_digest
            {
                matched = Some(w);
            }
        }
        let w = matched.ok_or(reject(TokenRejection::RfcChallengeUnknown))?;
        let key = self.verifying_key(relay, key_id).await?;
        if key.token_type() != token_type {
            return Err(reject(TokenRejection::UnknownOrRetiredKey));
        }
        Ok((w, key))
    }

    /// The key named `id` if it may verify tokens for `relay` now: same
    /// environment, active, or rotated out less than `key_overlap_secs` ago.
    async fn verifying_key(&self, relay: &Relay, id: &TokenKeyId) -> Result<Arc<LoadedKey>, RedeemError> {
        let key = self.keys.key_by_id(id).await?.ok_or(reject(TokenRejection::UnknownOrRetiredKey))?;
        if !self.lifecycle.can_verify(&key.record, self.now) {
            return Err(reject(TokenRejection::UnknownOrRetiredKey));
        }
        if key.record.environment != relay.environment {
            return Err(reject(TokenRejection::OtherEnvironment));
        }
        Ok(key)
    }

    fn claim_payload(&self, relay: &Relay, passed: bool, methodology_json: &str) -> Result<String, RedeemError> {
        let json = claim_json(&relay.claim_type, passed, methodology_json);
        let Some(der) = &relay.encryption_key_der else { return Ok(json) };
        let key = RsaPublicKey::from_spki_der(der).map_err(|e| RedeemError::Internal(Cause::of(e)))?;
        if let blindpass_store::ClaimFormat::Jwe { kid } = &relay.claim_format {
            return crate::jwe::encrypt_compact(&key, kid.as_deref(), json.as_bytes(), self.entropy)
                .map_err(|e| RedeemError::Internal(Cause::of(e)));
        }
        let ciphertext =
            oaep::encrypt(&key, json.as_bytes(), &mut self.entropy.rng()).map_err(|_| RedeemError::PayloadTooLarge)?;
        Ok(b64::encode_standard(&ciphertext))
    }
}

/// The relay's claim result: sandbox relays always pass; a production relay
/// waits for its verifier.
fn claim_result(relay: &Relay) -> Result<(bool, String), RedeemError> {
    match (relay.environment, &relay.result) {
        (Environment::Sandbox, _) => Ok((true, "[]".to_owned())),
        (Environment::Production, None) => Err(RedeemError::Pending),
        (Environment::Production, Some(r)) => Ok((r.passed, r.methodology_json.clone())),
    }
}

/// The `outcome` label of `redemption_total` for a refused redemption.
fn error_label(e: &RedeemError) -> &'static str {
    match e {
        RedeemError::InvalidToken(why) => why.label(),
        RedeemError::Pending => "pending",
        RedeemError::PayloadTooLarge => "payload_too_large",
        RedeemError::Unprotected(_) => "unprotected",
        RedeemError::Store(_) | RedeemError::Internal(_) => "error",
    }
}

fn reject(why: TokenRejection) -> RedeemError {
    RedeemError::InvalidToken(why)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::disallowed_methods)]
    use blindpass_protocol::voprf;
    use blindpass_protocol::voprf::wire::{Suite, VoprfTokenResponse};
    use blindpass_store::{ClaimFormat, KeyState, RelayStore};

    use super::*;
    use crate::key_source::held::{HeldKeys, voprf_key};

    fn relay(token: &str) -> Relay {
        Relay {
            token: token.into(),
            secret_hash: [0; 32],
            environment: Environment::Sandbox,
            claim_type: "age_over_18".into(),
            encryption_key_der: None,
            claim_format: ClaimFormat::Oaep,
            created_at: 0,
            expires_at: i64::MAX,
            result: None,
        }
    }

    /// Redemption on keys the test holds, a store of its own and its own
    /// metrics: a token spent once, given back at the same relay, refused at
    /// another.
    #[tokio::test]
    async fn redemption_runs_on_its_dependencies_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = blindpass_store::sqlite::SqliteStore::open(dir.path().join("db")).await.unwrap();
        let (here, elsewhere) = (relay("relay_here"), relay("relay_elsewhere"));
        store.insert_relay(&here).await.unwrap();
        store.insert_relay(&elsewhere).await.unwrap();
        let key = voprf_key(Environment::Sandbox, KeyState::Active);
        let (cell, metrics) = (tokio::sync::OnceCell::new(), Metrics::new());
        let entropy = blindpass_entropy::SeededEntropy::new(11);
        let secrets = SecretsCell { cell: &cell, store: &store, entropy: &entropy, kek: None, metrics: &metrics };
        let now = 10 * CONTEXT_WINDOW_SECS + 5;
        let redeemer = Redeemer {
            keys: HeldKeys(vec![Arc::clone(&key)]),
            secrets,
            store: &store,
            metrics: &metrics,
            entropy: &entropy,
            lifecycle: Lifecycle { overlap_secs: 0 },
            issuer_name: "issuer.example",
            relay_token_types: &[5],
            refusal: None,
            now,
        };

        let challenge = rfc_challenge(redeemer.secrets.get().await.unwrap(), "issuer.example", &here, 10, 5).unwrap();
        let public = key.voprf().unwrap().public_key().clone();
        let (blinded, state) = voprf::begin_issuance(&public, &challenge, 1, &mut rand::rng()).unwrap();
        let response = VoprfTokenResponse::decode(Suite::Ristretto255, &key.evaluate(&blinded[0], &entropy).unwrap());
        let response = response.unwrap();
        let token = voprf::finalize_issuance(&state, &[response.evaluated_element], &response.proof).unwrap();
        let presented = PresentedToken::Voprf(Box::new(token[0].clone()));

        let first = redeemer.redeem(&here, &presented).await.unwrap();
        assert!(first.token_consumed);
        assert!(first.claim_payload.contains(r#""claim_result":"passed""#), "{}", first.claim_payload);
        let again = redeemer.redeem(&here, &presented).await.unwrap();
        assert_eq!(again.claim_payload, first.claim_payload, "the same relay gets its claim back");
        let other = redeemer.redeem(&elsewhere, &presented).await;
        assert_eq!(other, Err(RedeemError::InvalidToken(TokenRejection::AlreadyUsed)));
        let counted = metrics.encode();
        for outcome in ["accepted", "replayed", "double_spend"] {
            assert!(counted.contains(&format!("redemption_total{{outcome=\"{outcome}\"}} 1")), "{outcome}: {counted}");
        }
    }
}
