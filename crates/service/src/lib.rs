//! # blindpass-service
//!
//! The use cases of a blindpass node, one file each: `issue` (both dialects,
//! every token type), `redeem`, `relays`, `challenge`, `directory`,
//! `keyring`, `key_admin`, `rotation` and `lifecycle` (keys), `rate_limits`,
//! `api_keys`, `retention`, `readiness`, `sealing`. Each is a small struct of
//! exactly what it needs (keys, store, clock, entropy, …); every public
//! [`Service`] method is one line over one of them. One issuance reads as a
//! straight line: one key lookup at `now` → the key's evaluation → bytes.
//!
//! **Invariant:** no HTTP, no JSON here; time comes from a [`Clock`].

#![forbid(unsafe_code)]

mod api_keys;
mod challenge;
mod claims;
mod clock;
pub mod custody;
mod directory;
pub mod identity;
mod issue;
mod issue_error;
mod issuer_key;
mod jwe;
pub mod kek;
mod key_admin;
mod key_error;
mod key_source;
mod keyring;
pub mod lifecycle;
mod limiter;
pub mod metrics;
mod presented;
mod principal;
mod rate_limits;
mod readiness;
mod redeem;
mod relays;
pub mod replication;
mod retention;
mod rfc_context;
pub mod rotation;
mod sealing;
mod secrets;
mod signing_pool;
#[cfg(feature = "testing")]
pub mod testing;
mod timing;

use std::sync::Arc;

pub use api_keys::{AuthError, Authenticated, NewApiKey};
pub use blindpass_domain::{Cause, ClaimType, Environment, InvalidClaimType, KeyState, Permission, chain};
pub use blindpass_entropy::{Entropy, SeededEntropy, SystemEntropy};
pub use blindpass_store::{ApiKey, IssuerKey, Store, StoreError};
pub use blindpass_store::{ClaimResult, IdempotencyCompletion, Relay, SpendOutcome, StoredResponse};
pub use challenge::ChallengeOffer;
pub use clock::{Clock, ManualClock, SystemClock};
pub use issue::{IssueRequest, KeySelector};
pub use issue_error::IssueError;
pub use issuer_key::{KeyMaterial, LoadedKey, RsaSigner, TOKEN_TYPES};
pub use keyring::{KeyError, KeyRingStats};
pub use limiter::{Bucket, BucketClass, LocalLimiter, RateLimiter, RedisLimiter, StoreLimiter};
pub use presented::{PresentedToken, TokenRejection};
pub use principal::{Principal, PrincipalId};
pub use rate_limits::{RateLimitStatus, client_bucket};
pub use readiness::{NotReady, READINESS_STORE_TIMEOUT};
pub use redeem::{RedeemError, Redemption};
pub use relays::{NewRelay, RecordError, RelayEncryption, RelayError};
pub use retention::Pruned;
pub use signing_pool::PoolError;

/// Key operations waiting for a signing thread before more are refused
/// (503): at 1 ms a signature per core, a queue this long drains in well
/// under a second on two cores.
const SIGNING_QUEUE: usize = 1024;

/// Tunables of the service layer.
#[derive(Debug, Clone)]
pub struct Config {
    /// Requests per minute per environment; 0 disables rate limiting.
    pub rate_limit_per_minute: u64,
    /// Optional ceiling: anonymous requests (no API key) per minute per
    /// environment, all clients together; 0 (the default) disables it, since
    /// one client could exhaust it for everyone.
    pub public_rate_limit_per_minute: u64,
    /// Anonymous requests per minute per client address (IPv6 by /64);
    /// 0 disables it.
    pub client_rate_limit_per_minute: u64,
    /// generate-claim requests per minute per relay; 0 disables it.
    pub relay_rate_limit_per_minute: u64,
    /// Failed authentications per minute per client address before 429;
    /// 0 disables it.
    pub auth_failure_limit_per_minute: u64,
    /// How often the key ring is re-read from the store, in seconds.
    pub key_refresh_secs: i64,
    /// How long an API key found valid is trusted without asking the store
    /// again: the bound within which a revocation made elsewhere takes
    /// effect on this node. 0 asks the store on every request.
    pub api_key_cache_secs: i64,
    /// After how many seconds an unfinished idempotent request's claim is
    /// considered abandoned (its process died) and may be taken over: the
    /// request timeout, past which no request is still being answered.
    pub idempotency_stale_secs: i64,
    /// How long a relay lives after its creation.
    pub relay_lifetime_secs: i64,
    /// How long a rotated-out (verify-only) key still verifies tokens.
    pub key_overlap_secs: i64,
    /// The issuer name put in challenges (Persona JSON and RFC 9577).
    pub issuer_name: String,
    /// Seals issuer private keys and server secrets at rest; `None` stores
    /// them in plaintext (and `serve` says so loudly).
    pub key_encryption_key: Option<Arc<kek::KeyEncryptionKey>>,
    /// The token types this node issues, keeps keys for and lists in the
    /// directory (a subset of [`TOKEN_TYPES`] that includes 2, which the
    /// Persona dialect needs).
    pub token_types: Vec<u16>,
    /// The token types relays accept at redemption and offer in their 401's
    /// `PrivateToken` challenges, in that order (a subset of `token_types`).
    pub relay_token_types: Vec<u16>,
    /// Automatic rotation policies (none: keys rotate only when asked).
    pub key_rotation: Vec<rotation::RotationPolicy>,
    /// How long before it signs an automatically rotated key is listed in
    /// the directory (at least `directory_max_age_secs`, so every cached
    /// directory holds it before it is used).
    pub key_announce_secs: i64,
    /// The issuer directory's `Cache-Control: max-age`.
    pub directory_max_age_secs: i64,
    /// Up to this many seconds are taken off the max-age at random per
    /// response, so clients' refreshes spread out.
    pub directory_max_age_jitter_secs: i64,
    /// Refuse redemptions (503) and report not ready unless the store's
    /// acknowledged commits survive a failover (see [`replication`]).
    pub require_synchronous_replication: bool,
    /// The PKCS#11 token new type-2 keys are generated in (and stored keys
    /// kept there are signed by); `None` makes software (aws-lc) keys.
    pub pkcs11: Option<blindpass_hsm::Hsm>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rate_limit_per_minute: 300,
            public_rate_limit_per_minute: 0,
            client_rate_limit_per_minute: 600,
            relay_rate_limit_per_minute: 60,
            auth_failure_limit_per_minute: 60,
            key_refresh_secs: 5,
            api_key_cache_secs: 5,
            idempotency_stale_secs: 30,
            relay_lifetime_secs: 24 * 3600,
            key_overlap_secs: 7 * 24 * 3600,
            issuer_name: "localhost".into(),
            key_encryption_key: None,
            token_types: TOKEN_TYPES.to_vec(),
            relay_token_types: TOKEN_TYPES.to_vec(),
            key_rotation: Vec::new(),
            key_announce_secs: 300 + 60,
            directory_max_age_secs: 300,
            directory_max_age_jitter_secs: 0,
            pkcs11: None,
            require_synchronous_replication: false,
        }
    }
}

/// The service: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    limiter: Arc<dyn RateLimiter>,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    config: Config,
    keyring: keyring::KeyRing,
    secrets: tokio::sync::OnceCell<secrets::Secrets>,
    signing: signing_pool::SigningPool,
    auth_cache: api_keys::AuthCache,
    readiness: readiness::LastCheck,
    durability: replication::LastDurability,
    metrics: Arc<metrics::Metrics>,
}

/// [`Service::builder`]: what a service runs on, with the system's defaults
/// for what is not given.
pub struct ServiceBuilder {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: Config,
    limiter: Option<Arc<dyn RateLimiter>>,
    entropy: Option<Arc<dyn Entropy>>,
}

impl std::fmt::Debug for ServiceBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBuilder").field("config", &self.config).finish_non_exhaustive()
    }
}

impl ServiceBuilder {
    /// Rate-limit counters in `limiter` (e.g. Redis) instead of the store.
    pub fn limiter(mut self, limiter: Arc<dyn RateLimiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Randomness from `entropy` instead of the system's (a seeded source
    /// makes tests deterministic).
    pub fn entropy(mut self, entropy: Arc<dyn Entropy>) -> Self {
        self.entropy = Some(entropy);
        self
    }

    /// The service: its store metered, its signing pool one thread a core.
    pub fn build(self) -> Service {
        let metrics = Arc::new(metrics::Metrics::new());
        let store: Arc<dyn Store> =
            Arc::new(blindpass_store::metered::MeteredStore::new(self.store, Arc::clone(&metrics) as _));
        let limiter = self.limiter.unwrap_or_else(|| Arc::new(StoreLimiter::new(Arc::clone(&store))));
        Service {
            inner: Arc::new(Inner {
                store,
                limiter,
                clock: self.clock,
                entropy: self.entropy.unwrap_or_else(|| Arc::new(blindpass_entropy::SystemEntropy)),
                config: self.config,
                keyring: keyring::KeyRing::default(),
                secrets: tokio::sync::OnceCell::new(),
                signing: signing_pool::SigningPool::per_core(SIGNING_QUEUE),
                auth_cache: api_keys::AuthCache::default(),
                readiness: readiness::LastCheck::default(),
                durability: replication::LastDurability::default(),
                metrics,
            }),
        }
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Service {
    /// A service over `store`, counting rate limits in the store, drawing
    /// randomness from the system: [`Service::builder`] with nothing more.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: Config) -> Self {
        Self::builder(store, clock, config).build()
    }

    /// A service to build: the one way a [`Service`] is made.
    pub fn builder(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: Config) -> ServiceBuilder {
        ServiceBuilder { store, clock, config, limiter: None, entropy: None }
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.inner.metrics
    }

    /// Where randomness comes from.
    pub fn entropy(&self) -> &dyn Entropy {
        &*self.inner.entropy
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// UNIX seconds now.
    pub fn now(&self) -> i64 {
        self.inner.clock.now()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The key lifecycle rules with this deployment's overlap.
    pub fn lifecycle(&self) -> lifecycle::Lifecycle {
        lifecycle::Lifecycle { overlap_secs: self.inner.config.key_overlap_secs }
    }

    /// The key-encryption key, if configured.
    pub(crate) fn kek(&self) -> Option<&kek::KeyEncryptionKey> {
        self.inner.config.key_encryption_key.as_deref()
    }
}
