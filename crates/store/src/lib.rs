//! # blindpass-store
//!
//! The storage traits blindpass needs, and their backends. Everything returns
//! `Result`; nothing here knows HTTP or cryptography. Each trait documents its
//! concurrency contract, and each backend backs that contract with a database
//! constraint, not application logic.
//!
//! Backends, one feature each (both on by default): `sqlite::SqliteStore`
//! (feature `sqlite`: embedded, the default store) and
//! `postgres::PostgresStore` (feature `postgres`: several nodes). Every
//! backend runs the same `conformance` suite (feature `testing`).
//!
//! **Invariant:** API key secrets are never stored, only their SHA-256;
//! private keys are stored as PKCS#8 and never appear in `Debug` output.

#![forbid(unsafe_code)]

mod claims;
#[cfg(feature = "testing")]
pub mod conformance;
#[cfg(feature = "fault-injection")]
mod fault;
pub mod metered;
mod model;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use async_trait::async_trait;
pub use blindpass_domain::Cause;

pub use model::*;

/// A storage failure. Callers map it to 503 (unavailable) or 500. Each
/// variant carries its [`Cause`]: the backend's own error where there is
/// one (its `source` chain intact), or what the store found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or is busy; the request may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// A uniqueness constraint was violated.
    #[error("conflict: {0}")]
    Conflict(#[source] Cause),
    /// Stored data could not be read back (corruption or a newer schema).
    #[error("corrupt store data: {0}")]
    Corrupt(#[source] Cause),
    /// Any other backend error.
    #[error("store error: {0}")]
    Other(#[source] Cause),
}

/// API keys. Secrets are stored only as SHA-256 hashes.
#[async_trait]
pub trait ApiKeyStore: Send + Sync {
    /// Inserts a new key. Ids and lookups are unique ([`StoreError::Conflict`]).
    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError>;
    /// The key whose `lookup` (a prefix of the secret's hash) matches.
    async fn api_key_by_lookup(&self, lookup: &str) -> Result<Option<ApiKey>, StoreError>;
    /// All keys, oldest first.
    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError>;
    /// Marks a key revoked at `at`. Returns false when no such key exists;
    /// revoking twice keeps the first time.
    async fn revoke_api_key(&self, id: &str, at: i64) -> Result<bool, StoreError>;
    /// Sets (or, with `None`, removes) the key's own rate limit. False when
    /// no key has that id.
    async fn set_api_key_rate_limit(&self, id: &str, per_minute: Option<u64>) -> Result<bool, StoreError>;
}

/// Issuer key pairs and their lifecycle.
#[async_trait]
pub trait IssuerKeyStore: Send + Sync {
    /// Inserts a key.
    async fn insert_issuer_key(&self, key: &IssuerKey) -> Result<(), StoreError>;
    /// Inserts `key` only if its environment has no key at all. Exactly one
    /// of several concurrent callers (processes included) wins; returns
    /// whether this call inserted.
    async fn insert_first_issuer_key(&self, key: &IssuerKey) -> Result<bool, StoreError>;
    /// Keys of `environment` (or all), oldest first.
    async fn issuer_keys(&self, environment: Option<Environment>) -> Result<Vec<IssuerKey>, StoreError>;
    /// Makes `new_key` the environment's only active key: the previous active
    /// keys become verify-only at `at`. One transaction.
    async fn rotate_issuer_key(&self, new_key: &IssuerKey, at: i64) -> Result<(), StoreError>;
    /// Retires a key at `at`. Returns true only when this call retired it:
    /// false when no such key exists or it was already retired (so that of
    /// nodes racing to retire a key, one counts it).
    async fn retire_issuer_key(&self, id: &str, at: i64) -> Result<bool, StoreError>;
    /// Automatic rotation's one write: inserts `successor` (a pending key,
    /// announced ahead of its `not_before`) only while `replaces` is still
    /// the active key of the successor's environment and token type and no
    /// key of theirs is pending; true when inserted. Checked and written in
    /// one transaction under the lifecycle lock, so however many nodes reach
    /// the same due time at once, exactly one announcement is made.
    async fn announce_issuer_key(&self, successor: &IssuerKey, replaces: &str) -> Result<bool, StoreError>;
    /// Promotes every pending key whose `not_before` has come: in each such
    /// environment the newest due pending key becomes active and the
    /// previous active key verify-only. One transaction; safe to run on every
    /// node at once (a second run finds nothing to do). Returns how many
    /// keys were promoted.
    async fn promote_due_keys(&self, now: i64) -> Result<u64, StoreError>;
    /// Keys of `environment` (or all), oldest first, **without** their
    /// private keys (`private_pkcs8` is empty): what a node re-reads every
    /// few seconds. It fetches a private key once, by id, when a new key id
    /// appears ([`IssuerKeyStore::issuer_key_private`]).
    async fn issuer_key_metadata(&self, environment: Option<Environment>) -> Result<Vec<IssuerKey>, StoreError>;
    /// The stored (possibly sealed) private key of `id`.
    async fn issuer_key_private(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
}

/// Relays and their claim results.
#[async_trait]
pub trait RelayStore: Send + Sync {
    /// Inserts a relay ([`StoreError::Conflict`] on a duplicate token).
    async fn insert_relay(&self, relay: &Relay) -> Result<(), StoreError>;
    /// The relay with this token.
    async fn relay_by_token(&self, token: &str) -> Result<Option<Relay>, StoreError>;
    /// Records the verifier's result once; a second result is refused.
    async fn record_relay_result(&self, token: &str, result: &ClaimResult) -> Result<RecordOutcome, StoreError>;
    /// Deletes relays expired at `now` (`expires_at <= now`, by an index on
    /// expiry). Returns how many.
    async fn prune_relays(&self, now: i64) -> Result<u64, StoreError>;
}

/// The double-spend record.
#[async_trait]
pub trait SpentTokenStore: Send + Sync {
    /// Marks the token `(key_id, nonce)` spent at `relay_token`, storing its
    /// claim payload and (if given) completing the idempotent response, all
    /// in one transaction. [`SpendOutcome::Spent`] goes to exactly one
    /// caller, ever, across every process sharing the store: the decision is
    /// one atomic `INSERT` against a primary key, and it is durable when this
    /// returns. A later call for the same token and relay gets
    /// [`SpendOutcome::SpentHere`] with the stored payload.
    async fn spend_token(&self, spend: &Spend) -> Result<SpendOutcome, StoreError>;
    /// Deletes spent records of tokens that expired before `expired_before`
    /// (no node can accept them any more). Never keyed on key state: a
    /// retired key's records stay until their tokens expire.
    async fn prune_spent_tokens(&self, expired_before: i64) -> Result<u64, StoreError>;
}

/// Idempotency records: the first response to an `Idempotency-Key` is kept
/// and replayed.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims `(scope, key)` for a new request with parameters `fingerprint`.
    ///
    /// Exactly one concurrent caller gets [`IdempotencyBegin::Started`]; the
    /// others see `InFlight` until it completes, then `Completed`. Records
    /// older than `ttl_secs` are replaced as if absent; an in-flight claim
    /// older than `stale_after_secs` is taken over (its holder died).
    async fn idempotency_begin(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &[u8; 32],
        now: i64,
        ttl_secs: i64,
        stale_after_secs: i64,
    ) -> Result<IdempotencyBegin, StoreError>;
    /// Stores the response of a claim made with `Started`.
    async fn idempotency_complete(&self, scope: &str, key: &str, response: &StoredResponse) -> Result<(), StoreError>;
    /// Releases a claim without storing a response (the request could not
    /// be answered), so a retry runs anew.
    async fn idempotency_abandon(&self, scope: &str, key: &str) -> Result<(), StoreError>;
    /// Deletes records created before `before`. Returns how many.
    async fn idempotency_prune(&self, before: i64) -> Result<u64, StoreError>;
}

/// Fixed-window request counters.
#[async_trait]
pub trait RateLimitStore: Send + Sync {
    /// Adds `n` hits to `(bucket, window_start)` and returns the new count.
    /// Atomic: concurrent hits are all counted.
    async fn rate_limit_add(&self, bucket: &str, window_start: i64, n: u64) -> Result<u64, StoreError>;
    /// Adds one hit.
    async fn rate_limit_hit(&self, bucket: &str, window_start: i64) -> Result<u64, StoreError> {
        self.rate_limit_add(bucket, window_start, 1).await
    }
    /// Deletes windows that started before `before`.
    async fn rate_limit_prune(&self, before: i64) -> Result<u64, StoreError>;
}

/// Small named values the server creates once (ids, secrets).
#[async_trait]
pub trait SettingsStore: Send + Sync {
    /// Returns the value of `name`, storing `value` first if it has none.
    /// Concurrent callers all get the same, first-stored value.
    async fn setting_get_or_insert(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, StoreError>;
    /// Every setting whose name starts with `prefix`, by name.
    async fn settings_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Replaces stored key material (issuer private keys and settings) in
    /// one transaction, each only if it still holds its `old` value; any
    /// mismatch rolls everything back with [`StoreError::Conflict`]. Used to
    /// change the key-encryption key.
    async fn rewrap(&self, changes: &[Rewrap]) -> Result<(), StoreError>;
}

/// What could lose a write the store acknowledged.
#[async_trait]
pub trait DurabilityStore: Send + Sync {
    /// The primary's replication (see [`Replication::protects_commits`]), or
    /// `None` for a store with no replicas to fail over to (SQLite: a write
    /// is on this node's disk before it is acknowledged).
    async fn replication(&self) -> Result<Option<Replication>, StoreError>;
}

/// Everything a blindpass node needs from its store.
pub trait Store:
    ApiKeyStore
    + IssuerKeyStore
    + IdempotencyStore
    + RateLimitStore
    + SettingsStore
    + RelayStore
    + SpentTokenStore
    + DurabilityStore
{
}

impl<T> Store for T where
    T: ApiKeyStore
        + IssuerKeyStore
        + IdempotencyStore
        + RateLimitStore
        + SettingsStore
        + RelayStore
        + SpentTokenStore
        + DurabilityStore
{
}

/// Opens the store named by `url`: `sqlite://PATH` or `postgres://…` (with
/// default pool options; see `postgres::PostgresStore::connect` for others).
/// A backend left out of the build is refused by name.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        return open_sqlite(path).await;
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return open_postgres(url).await;
    }
    Err(StoreError::Other("unsupported database URL scheme (expected sqlite://PATH or postgres://…)".into()))
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(path: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    Ok(std::sync::Arc::new(sqlite::SqliteStore::open(path).await?))
}

#[cfg(not(feature = "sqlite"))]
async fn open_sqlite(_: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    Err(StoreError::Other("this build has no SQLite backend (feature \"sqlite\")".into()))
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    Ok(std::sync::Arc::new(postgres::PostgresStore::connect(url, postgres::PoolOptions::default()).await?))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    Err(StoreError::Other("this build has no PostgreSQL backend (feature \"postgres\")".into()))
}
