//! A [`Store`] that reports the latency and the failures of every call to a
//! [`StoreObserver`] (the service's metrics), whatever the backend. Each
//! method forwards to the inner store; the observer sees the operation's
//! name, its duration and whether it succeeded.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use crate::*;

/// Receives one observation per store call.
pub trait StoreObserver: Send + Sync {
    /// `operation` (the trait method's name) took `seconds`; `ok` is false
    /// when it returned an error.
    fn observe(&self, operation: &'static str, seconds: f64, ok: bool);
}

/// `inner`, observed.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    observer: Arc<dyn StoreObserver>,
}

impl std::fmt::Debug for MeteredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredStore").finish_non_exhaustive()
    }
}

impl MeteredStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, observer: Arc<dyn StoreObserver>) -> Self {
        Self { inner, observer }
    }

    async fn run<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        self.observer.observe(operation, started.elapsed().as_secs_f64(), result.is_ok());
        result
    }
}

/// Forwards each listed method to the inner store through [`MeteredStore::run`].
macro_rules! metered {
    ($trait:ident { $( fn $name:ident(&self $(, $arg:ident : $ty:ty)* ) -> $ret:ty; )* }) => {
        #[async_trait]
        impl $trait for MeteredStore {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StoreError> {
                    self.run(stringify!($name), self.inner.$name($($arg),*)).await
                }
            )*
        }
    };
}

metered!(ApiKeyStore {
    fn insert_api_key(&self, key: &ApiKey) -> ();
    fn api_key_by_lookup(&self, lookup: &str) -> Option<ApiKey>;
    fn list_api_keys(&self) -> Vec<ApiKey>;
    fn revoke_api_key(&self, id: &str, at: i64) -> bool;
    fn set_api_key_rate_limit(&self, id: &str, per_minute: Option<u64>) -> bool;
});

metered!(IssuerKeyStore {
    fn insert_issuer_key(&self, key: &IssuerKey) -> ();
    fn insert_first_issuer_key(&self, key: &IssuerKey) -> bool;
    fn issuer_keys(&self, environment: Option<Environment>) -> Vec<IssuerKey>;
    fn rotate_issuer_key(&self, new_key: &IssuerKey, at: i64) -> ();
    fn retire_issuer_key(&self, id: &str, at: i64) -> bool;
    fn announce_issuer_key(&self, successor: &IssuerKey, replaces: &str) -> bool;
    fn promote_due_keys(&self, now: i64) -> u64;
    fn issuer_key_metadata(&self, environment: Option<Environment>) -> Vec<IssuerKey>;
    fn issuer_key_private(&self, id: &str) -> Option<Vec<u8>>;
});

metered!(RelayStore {
    fn insert_relay(&self, relay: &Relay) -> ();
    fn relay_by_token(&self, token: &str) -> Option<Relay>;
    fn record_relay_result(&self, token: &str, result: &ClaimResult) -> RecordOutcome;
    fn prune_relays(&self, now: i64) -> u64;
});

metered!(SpentTokenStore {
    fn spend_token(&self, spend: &Spend) -> SpendOutcome;
    fn prune_spent_tokens(&self, expired_before: i64) -> u64;
});

metered!(IdempotencyStore {
    fn idempotency_begin(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &[u8; 32],
        now: i64,
        ttl_secs: i64,
        stale_after_secs: i64
    ) -> IdempotencyBegin;
    fn idempotency_complete(&self, scope: &str, key: &str, response: &StoredResponse) -> ();
    fn idempotency_abandon(&self, scope: &str, key: &str) -> ();
    fn idempotency_prune(&self, before: i64) -> u64;
});

metered!(RateLimitStore {
    fn rate_limit_add(&self, bucket: &str, window_start: i64, n: u64) -> u64;
    fn rate_limit_prune(&self, before: i64) -> u64;
});

metered!(SettingsStore {
    fn setting_get_or_insert(&self, name: &str, value: &[u8]) -> Vec<u8>;
    fn settings_with_prefix(&self, prefix: &str) -> Vec<(String, Vec<u8>)>;
    fn rewrap(&self, changes: &[Rewrap]) -> ();
});

metered!(DurabilityStore {
    fn replication(&self) -> Option<Replication>;
});
