//! Issuance, for both dialects and every token type: one path.
//!
//! ```text
//! IssueRequest { selector, blinded }  (typed at the edge: Persona JSON or an RFC 9578 TokenRequest)
//!   → one key lookup at `now` (by key id, or by truncated id among the environment's issuing keys)
//!   → environment and lifecycle checks (crate::lifecycle)
//!   → LoadedKey::evaluate (the token type's own operation) on the request's
//!     own worker thread; a batch's items spread over that thread and the
//!     signing pool
//!   → the evaluated bytes (a blind signature for type 2)
//! ```
//!
//! Why the request's thread: the runtime has one worker per core, so
//! evaluations still never outnumber the cores, and a single issuance needs
//! no hand-off to another thread and back (measured in BENCHMARKS.md: the two
//! hand-offs cost 24 µs of 337 µs per issuance, more than every other
//! non-RSA cost together). A worker signing for ~0.3 ms delays the other
//! tasks queued on it by that much. Past `signing_pool::INLINE_LIMIT`
//! operations in flight, or with tasks waiting in the runtime's shared queue
//! (overload: hundreds of connections), the runtime's queues stop being
//! fair, so the evaluation queues FIFO on the signing pool instead and
//! requests are served in arrival order.
//!
//! Token types 1 and 5 take the same path: a single TokenRequest (alone or
//! as a generic batch item) is a VOPRF evaluation of one element with its
//! proof; an amortized batch ([`Service::issue_amortized`]) is one
//! evaluation of many elements with one proof, on one thread.
//!
//! A new token type adds its key material and its evaluation to
//! [`crate::KeyMaterial`]; nothing here changes.

use std::sync::Arc;

use blindpass_protocol::keys::TokenKeyId;
use blindpass_protocol::voprf::wire::AmortizedTokenResponse;
use blindpass_protocol::wire::TOKEN_TYPE_BLIND_RSA;

use blindpass_entropy::Entropy;

use crate::key_source::KeySource;
use crate::{Environment, IssueError, LoadedKey, Service};

/// Which key an issuance asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySelector {
    /// Either of a type-2 key's two ids (Persona's `key-id`: the Persona
    /// dialect is type 2 only).
    Id(TokenKeyId),
    /// RFC 9578's `truncated_token_key_id` (the last byte of the key id),
    /// among the caller's environment's issuing keys of `token_type`.
    Truncated {
        /// The request's token type.
        token_type: u16,
        /// The last byte of the key id.
        truncated: u8,
    },
}

/// One blinded element to evaluate, with the key it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    /// The key.
    pub selector: KeySelector,
    /// The blinded message (type 2: the modulus length, below the modulus).
    pub blinded: Vec<u8>,
}

impl IssueRequest {
    /// A request naming its key by id.
    pub fn by_id(key_id: TokenKeyId, blinded: Vec<u8>) -> Self {
        Self { selector: KeySelector::Id(key_id), blinded }
    }
}

/// Issuance over exactly what it needs: keys, the signing threads, the
/// metrics it counts, randomness, the token types this node issues, the
/// lifecycle rules and the time. The [`Service`] methods are one line each
/// over it; a test can run it on keys of its own, without a store.
pub(crate) struct Issuance<'a, K> {
    pub(crate) keys: K,
    pub(crate) signing: &'a crate::signing_pool::SigningPool,
    pub(crate) metrics: &'a crate::metrics::Metrics,
    pub(crate) entropy: Arc<dyn Entropy>,
    pub(crate) token_types: &'a [u16],
    pub(crate) lifecycle: crate::lifecycle::Lifecycle,
    pub(crate) now: i64,
}

impl Service {
    /// This node's issuance, at `now`.
    fn issuance(&self) -> Issuance<'_, crate::keyring::Keys<'_>> {
        Issuance {
            keys: self.keys(),
            signing: &self.inner.signing,
            metrics: self.metrics(),
            entropy: Arc::clone(&self.inner.entropy),
            token_types: &self.config().token_types,
            lifecycle: self.lifecycle(),
            now: self.now(),
        }
    }

    /// Evaluates `request` with the key it names for a caller in
    /// `environment`. The key operation runs here, on the caller's thread,
    /// unless the node is overloaded (see the module's notes).
    pub async fn issue(&self, environment: Environment, request: IssueRequest) -> Result<Vec<u8>, IssueError> {
        self.issuance().issue(environment, request).await
    }

    /// An amortized batch of token type 1 or 5 (draft-ietf-privacypass-
    /// batched-tokens §5): every element evaluated with the key the
    /// truncated id names, under one batched DLEQ proof. Returns the encoded
    /// AmortizedBatchTokenResponse. The caller bounds the element count.
    pub async fn issue_amortized(
        &self,
        environment: Environment,
        token_type: u16,
        truncated: u8,
        blinded: Vec<Vec<u8>>,
    ) -> Result<Vec<u8>, IssueError> {
        self.issuance().issue_amortized(environment, token_type, truncated, blinded).await
    }

    /// Evaluates every item of a batch for a caller in `environment`, spread
    /// over the cores. An item that cannot be issued gets its reason; a store
    /// failure fails the whole batch (nothing was signed).
    pub async fn issue_batch(
        &self,
        environment: Environment,
        requests: Vec<IssueRequest>,
    ) -> Result<Vec<Result<Vec<u8>, IssueError>>, IssueError> {
        self.issuance().issue_batch(environment, requests).await
    }
}

impl<K: KeySource> Issuance<'_, K> {
    /// See [`Service::issue`].
    pub(crate) async fn issue(&self, environment: Environment, request: IssueRequest) -> Result<Vec<u8>, IssueError> {
        self.metrics.issuance_request();
        let result = async {
            let key = self.issuing_key(environment, request.selector).await?;
            let (key_id, token_type) = (key.record.id.clone(), key.token_type());
            let entropy = Arc::clone(&self.entropy);
            let signed = self.signing.run_here_or_queue(move || key.evaluate(&request.blinded, &*entropy)).await??;
            self.metrics.signed(&key_id, token_type, 1);
            Ok(signed)
        }
        .await;
        self.count_failure(&result);
        result
    }

    fn count_failure<T>(&self, result: &Result<T, IssueError>) {
        if let Err(e) = result {
            self.metrics.issuance_error(e.reason());
        }
    }

    /// What [`Service::issue_amortized`] does: one key, one proof, the
    /// evaluations on one thread.
    pub(crate) async fn issue_amortized(
        &self,
        environment: Environment,
        token_type: u16,
        truncated: u8,
        blinded: Vec<Vec<u8>>,
    ) -> Result<Vec<u8>, IssueError> {
        self.metrics.issuance_request();
        let result = async {
            let selector = KeySelector::Truncated { token_type, truncated };
            let key = self.issuing_key(environment, selector).await?;
            let key_id = key.record.id.clone();
            let entropy = Arc::clone(&self.entropy);
            let evaluation = self.signing.run_here_or_queue(move || key.evaluate_many(&blinded, &*entropy)).await??;
            self.metrics.signed(&key_id, token_type, evaluation.evaluated_elements.len() as u64);
            Ok(AmortizedTokenResponse { evaluated_elements: evaluation.evaluated_elements, proof: evaluation.proof }
                .encode())
        }
        .await;
        self.count_failure(&result);
        result
    }

    /// Evaluates every item of a batch for a caller in `environment`: one key
    /// lookup per item, then the evaluations spread over the cores (one share
    /// per core: the first on this thread, the others on the signing pool,
    /// each evaluating its share in turn). An item
    /// that cannot be issued gets its reason; a store failure fails the
    /// whole batch (nothing was signed).
    pub(crate) async fn issue_batch(
        &self,
        environment: Environment,
        requests: Vec<IssueRequest>,
    ) -> Result<Vec<Result<Vec<u8>, IssueError>>, IssueError> {
        self.metrics.issuance_request();
        let mut signed_by: Vec<Option<(String, u16)>> = Vec::with_capacity(requests.len());
        let mut work = Vec::with_capacity(requests.len());
        let mut results = Vec::with_capacity(requests.len());
        for (i, request) in requests.into_iter().enumerate() {
            signed_by.push(None);
            match self.issuing_key(environment, request.selector).await {
                Ok(key) => {
                    if let Some(slot) = signed_by.get_mut(i) {
                        *slot = Some((key.record.id.clone(), key.token_type()));
                    }
                    work.push((i, key, request.blinded));
                    // Replaced below: every item of `work` is evaluated.
                    results.push(Err(IssueError::Internal("not evaluated".into())));
                }
                Err(e @ IssueError::Store(_)) => {
                    self.metrics.issuance_error(e.reason());
                    return Err(e);
                }
                Err(e) => results.push(Err(e)),
            }
        }
        let evaluated = self.evaluate_on_all_cores(work).await;
        self.count_failure(&evaluated);
        for (i, evaluated) in evaluated? {
            if let Some(slot) = results.get_mut(i) {
                *slot = evaluated;
            }
        }
        for (result, key) in results.iter().zip(&signed_by) {
            match (result, key) {
                (Ok(_), Some((key_id, token_type))) => self.metrics.signed(key_id, *token_type, 1),
                (Err(e), _) => self.metrics.issuance_error(e.reason()),
                (Ok(_), None) => {}
            }
        }
        Ok(results)
    }

    /// Evaluates `work` in one share per core: the first share here (unless
    /// the node is overloaded), the others as jobs on the signing pool
    /// (queued before this thread starts its own); returns each item's index
    /// with its result.
    async fn evaluate_on_all_cores(
        &self,
        work: Vec<(usize, Arc<LoadedKey>, Vec<u8>)>,
    ) -> Result<Vec<(usize, Result<Vec<u8>, IssueError>)>, IssueError> {
        let per_share = work.len().div_ceil(self.signing.threads()).max(1);
        let mut work = work.into_iter().peekable();
        let here: Vec<_> = work.by_ref().take(per_share).collect();
        let mut jobs = Vec::new();
        while work.peek().is_some() {
            let share: Vec<_> = work.by_ref().take(per_share).collect();
            let entropy = Arc::clone(&self.entropy);
            jobs.push(self.signing.submit(move || evaluate_share(share, &*entropy))?);
        }
        let entropy = Arc::clone(&self.entropy);
        let mut out = self.signing.run_here_or_queue(move || evaluate_share(here, &*entropy)).await?;
        for job in jobs {
            out.extend(job.await.map_err(|_| crate::PoolError::Failed)?);
        }
        Ok(out)
    }

    /// The one key lookup: the key `selector` names, if it may issue for
    /// `environment` now.
    async fn issuing_key(&self, environment: Environment, selector: KeySelector) -> Result<Arc<LoadedKey>, IssueError> {
        let now = self.now;
        let key = match selector {
            KeySelector::Id(id) => self
                .keys
                .key_by_id(&id)
                .await?
                .filter(|k| k.token_type() == TOKEN_TYPE_BLIND_RSA)
                .ok_or(IssueError::UnknownKey)?,
            KeySelector::Truncated { token_type, .. } if !self.token_types.contains(&token_type) => {
                return Err(IssueError::UnsupportedTokenType(token_type));
            }
            KeySelector::Truncated { token_type, truncated } => self
                .keys
                .keys_of(environment)
                .await?
                .into_iter()
                .find(|k| k.token_type() == token_type && k.truncated_id() == truncated && k.issues_at(now))
                .ok_or(IssueError::UnknownKey)?,
        };
        if key.record.environment != environment {
            return Err(IssueError::WrongEnvironment);
        }
        self.lifecycle.can_issue(&key.record, now).map_err(IssueError::KeyNotActive)?;
        Ok(key)
    }
}

/// Evaluates each item of `share` in turn.
fn evaluate_share(
    share: Vec<(usize, Arc<LoadedKey>, Vec<u8>)>,
    entropy: &dyn blindpass_entropy::Entropy,
) -> Vec<(usize, Result<Vec<u8>, IssueError>)> {
    share.into_iter().map(|(i, key, blinded)| (i, key.evaluate(&blinded, entropy))).collect()
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::disallowed_methods
    )]
    use blindpass_protocol::voprf;
    use blindpass_protocol::voprf::wire::{Suite, VoprfTokenResponse};
    use blindpass_protocol::wire::TokenChallenge;
    use blindpass_store::KeyState;

    use super::*;
    use crate::key_source::held::{HeldKeys, voprf_key};

    #[tokio::test]
    async fn issuance_runs_on_its_dependencies_alone() {
        let key = voprf_key(Environment::Sandbox, KeyState::Active);
        let public = key.voprf().unwrap().public_key().clone();
        let keys = HeldKeys(vec![Arc::clone(&key)]);
        let (signing, metrics) = (crate::signing_pool::SigningPool::new(1, 8), crate::metrics::Metrics::new());
        let issuance = Issuance {
            keys,
            signing: &signing,
            metrics: &metrics,
            entropy: Arc::new(blindpass_entropy::SeededEntropy::new(7)),
            token_types: &[2, 5],
            lifecycle: crate::lifecycle::Lifecycle { overlap_secs: 0 },
            now: 1_000,
        };
        let challenge = TokenChallenge::new(5, "issuer.example", &[], "").unwrap();
        let (blinded, state) = voprf::begin_issuance(&public, &challenge, 1, &mut rand::rng()).unwrap();
        let selector = KeySelector::Truncated { token_type: 5, truncated: key.truncated_id() };
        let request = IssueRequest { selector, blinded: blinded[0].clone() };

        let response = issuance.issue(Environment::Sandbox, request.clone()).await.unwrap();
        let response = VoprfTokenResponse::decode(Suite::Ristretto255, &response).unwrap();
        let tokens = voprf::finalize_issuance(&state, &[response.evaluated_element], &response.proof).unwrap();
        key.voprf().unwrap().verify_token(&tokens[0]).expect("the token verifies with the key that issued it");

        assert_eq!(issuance.issue(Environment::Production, request.clone()).await, Err(IssueError::UnknownKey));
        let other_type = IssueRequest { selector: KeySelector::Truncated { token_type: 1, truncated: 0 }, ..request };
        assert_eq!(issuance.issue(Environment::Sandbox, other_type).await, Err(IssueError::UnsupportedTokenType(1)));
        let signed = format!("signed_token_total{{key_id=\"{}\",token_type=\"5\"}} 1", key.record.id);
        assert!(metrics.encode().contains(&signed));
    }
}
