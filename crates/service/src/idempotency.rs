//! Idempotency records, with the service's clock and staleness rule.

use blindpass_store::{IdempotencyBegin, StoreError, StoredResponse};

use crate::Service;

/// What to do with a request that carries an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyOutcome {
    /// Run it, then complete or abandon the claim.
    Run,
    /// A request with this key is still running.
    InFlight,
    /// The key was first used with different parameters.
    Mismatch,
    /// Replay this stored response.
    Replay(StoredResponse),
}

impl Service {
    /// Claims `(scope, key)` for parameters `fingerprint`, keeping records
    /// for `ttl_secs`. A claim older than `idempotency_stale_secs` whose
    /// request never finished is taken over.
    pub async fn idempotency_begin(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &[u8; 32],
        ttl_secs: i64,
    ) -> Result<IdempotencyOutcome, StoreError> {
        let begin = self
            .store()
            .idempotency_begin(scope, key, fingerprint, self.now(), ttl_secs, self.config().idempotency_stale_secs)
            .await?;
        Ok(match begin {
            IdempotencyBegin::Started => IdempotencyOutcome::Run,
            IdempotencyBegin::InFlight => IdempotencyOutcome::InFlight,
            IdempotencyBegin::Mismatch => IdempotencyOutcome::Mismatch,
            IdempotencyBegin::Completed(r) => IdempotencyOutcome::Replay(r),
        })
    }

    /// Stores the response of a claim.
    pub async fn idempotency_complete(
        &self,
        scope: &str,
        key: &str,
        status: u16,
        content_type: &str,
        body: &[u8],
    ) -> Result<(), StoreError> {
        let response = StoredResponse { status, content_type: content_type.to_owned(), body: body.to_vec() };
        self.store().idempotency_complete(scope, key, &response).await
    }

    /// Releases a claim without a response.
    pub async fn idempotency_abandon(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        self.store().idempotency_abandon(scope, key).await
    }

    /// Deletes expired idempotency records and old rate-limit windows.
    pub async fn prune(&self, idempotency_ttl_secs: i64) -> Result<(u64, u64), StoreError> {
        let now = self.now();
        let idempotency = self.store().idempotency_prune(now - idempotency_ttl_secs).await?;
        let windows = self.store().rate_limit_prune(now - 3600).await?;
        let spent = self.store().prune_spent_tokens().await?;
        Ok((idempotency, windows + spent))
    }
}
