//! Retention: what expires, and when each kind of record may go.

use crate::{Service, Store, StoreError};

impl Service {
    fn retention(&self) -> Retention<'_> {
        Retention { store: &**self.store(), key_refresh_secs: self.config().key_refresh_secs, now: self.now() }
    }

    /// Deletes what has expired: idempotency records, old rate-limit
    /// windows, relays past their lifetime, and spent-token records whose
    /// tokens no node can accept any more (see [`Service::spent_horizon`]).
    pub async fn prune(&self, idempotency_ttl_secs: i64) -> Result<Pruned, StoreError> {
        self.retention().prune(idempotency_ttl_secs).await
    }

    /// Spent records of tokens that expired before this moment may go.
    ///
    /// A token's expiry is the end of its challenge's validity (at most two
    /// hours after issue for both dialects). A node accepts a token only
    /// before that expiry by its own clock, so the record must outlive it by
    /// the worst clock skew between nodes; the key-refresh interval is added
    /// because a node with a stale key cache may still be finishing a
    /// verification that started before the expiry. Key state never enters
    /// this rule: retiring a key deletes nothing.
    pub fn spent_horizon(&self) -> i64 {
        self.retention().spent_horizon()
    }
}

/// Retention over what it needs: the store, the key-refresh interval (see
/// [`Service::spent_horizon`]) and the time.
struct Retention<'a> {
    store: &'a dyn Store,
    key_refresh_secs: i64,
    now: i64,
}

impl Retention<'_> {
    async fn prune(&self, idempotency_ttl_secs: i64) -> Result<Pruned, StoreError> {
        let now = self.now;
        Ok(Pruned {
            idempotency: self.store.idempotency_prune(now - idempotency_ttl_secs).await?,
            windows: self.store.rate_limit_prune(now - 3600).await?,
            relays: self.store.prune_relays(now).await?,
            spent_tokens: self.store.prune_spent_tokens(self.spent_horizon()).await?,
        })
    }

    fn spent_horizon(&self) -> i64 {
        self.now - self.key_refresh_secs.max(0) - CLOCK_SKEW_MARGIN_SECS
    }
}

/// The largest clock difference between nodes (and between a node and its
/// own past) that spent-token retention tolerates.
pub(crate) const CLOCK_SKEW_MARGIN_SECS: i64 = 600;

/// How many records one prune deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Idempotency records.
    pub idempotency: u64,
    /// Rate-limit windows.
    pub windows: u64,
    /// Expired relays.
    pub relays: u64,
    /// Spent-token records.
    pub spent_tokens: u64,
}

impl Pruned {
    /// Records deleted in total.
    pub fn total(&self) -> u64 {
        self.idempotency + self.windows + self.relays + self.spent_tokens
    }
}
