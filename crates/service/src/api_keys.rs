//! API keys: creation (secret shown once), authentication (constant-time
//! hash comparison), revocation.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::{ApiKey, Entropy, Environment, Permission, Service, Store, StoreError};

/// Hex digits of the secret's hash used as the lookup index.
const LOOKUP_HEX_LEN: usize = 16;

/// A newly created key and its secret (shown once, never stored).
#[derive(Clone)]
pub struct NewApiKey {
    /// The stored record.
    pub key: ApiKey,
    /// `persona_<env>_<uuid>`, the bearer token.
    pub secret: Zeroizing<String>,
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey").field("key", &self.key).field("secret", &"<redacted>").finish()
    }
}

/// An authenticated, unrevoked API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The key's record.
    pub key: ApiKey,
}

impl Authenticated {
    /// True when the key holds `permission`.
    pub fn can(&self, permission: Permission) -> bool {
        self.key.permissions.contains(&permission)
    }
}

/// Why a bearer token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No key has this secret.
    #[error("unknown API key")]
    Unknown,
    /// The key was revoked.
    #[error("API key revoked")]
    Revoked,
    /// The store could not be asked.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// SHA-256 of an API key secret.
pub(crate) fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn lookup_of(hash: &[u8; 32]) -> String {
    let mut hex = hex::encode(hash);
    hex.truncate(LOOKUP_HEX_LEN);
    hex
}

impl Service {
    fn api_keys(&self) -> ApiKeys<'_> {
        ApiKeys {
            store: &**self.store(),
            entropy: self.entropy(),
            cache: &self.inner.auth_cache,
            cache_secs: self.config().api_key_cache_secs,
            now: self.now(),
        }
    }

    /// Creates a key in `environment` with `permissions`. The secret has
    /// Persona's shape (`persona_sandbox_<uuid>`), so SDKs that infer the
    /// environment from the key keep working.
    pub async fn create_api_key(
        &self,
        environment: Environment,
        permissions: Vec<Permission>,
        name: Option<String>,
    ) -> Result<NewApiKey, StoreError> {
        self.api_keys().create(environment, permissions, name, None).await
    }

    /// [`Service::create_api_key`] with the key's own rate limit (requests
    /// per minute, counted beside its environment's; Persona 2026-09-29).
    pub async fn create_api_key_with_limit(
        &self,
        environment: Environment,
        permissions: Vec<Permission>,
        name: Option<String>,
        rate_limit_per_minute: Option<u64>,
    ) -> Result<NewApiKey, StoreError> {
        self.api_keys().create(environment, permissions, name, rate_limit_per_minute).await
    }

    /// Checks a bearer secret: looked up by a prefix of its hash, then
    /// compared in constant time over the whole hash.
    ///
    /// A key found valid is remembered for `api_key_cache_secs`, so that an
    /// issuance does not cost a store round trip: a revocation made
    /// elsewhere (the CLI, another node) takes effect on this node within
    /// that bound; one made through this service at once. Unknown and
    /// revoked keys are never remembered.
    pub async fn authenticate(&self, secret: &str) -> Result<Authenticated, AuthError> {
        self.api_keys().authenticate(secret).await
    }

    /// Sets (`Some`) or removes (`None`) a key's own rate limit; false when
    /// there is no such key. Takes effect on this node at once, on others
    /// within `api_key_cache_secs`.
    pub async fn set_api_key_rate_limit(&self, id: &str, per_minute: Option<u64>) -> Result<bool, StoreError> {
        self.api_keys().set_rate_limit(id, per_minute).await
    }

    /// Revokes a key by id; false when there is none.
    pub async fn revoke_api_key(&self, id: &str) -> Result<bool, StoreError> {
        self.api_keys().revoke(id).await
    }
}

/// API keys over what they need: the store, randomness (new secrets and
/// ids), this node's cache of keys found valid and how long it trusts it,
/// and the time.
struct ApiKeys<'a> {
    store: &'a dyn Store,
    entropy: &'a dyn Entropy,
    cache: &'a AuthCache,
    cache_secs: i64,
    now: i64,
}

impl ApiKeys<'_> {
    /// See [`Service::create_api_key_with_limit`].
    async fn create(
        &self,
        environment: Environment,
        permissions: Vec<Permission>,
        name: Option<String>,
        rate_limit_per_minute: Option<u64>,
    ) -> Result<NewApiKey, StoreError> {
        if rate_limit_per_minute == Some(0) {
            return Err(StoreError::Other("a rate limit must be at least 1 request per minute".into()));
        }
        let secret =
            Zeroizing::new(format!("persona_{}_{}", environment.as_str(), blindpass_entropy::uuid_v4(self.entropy)));
        let secret_hash = hash_secret(&secret);
        let mut permissions = permissions;
        permissions.sort_unstable();
        permissions.dedup();
        let key = ApiKey {
            id: format!("api_{}", hex::encode(self.entropy.bytes::<16>())),
            name,
            environment,
            permissions,
            lookup: lookup_of(&secret_hash),
            secret_hash,
            created_at: self.now,
            revoked_at: None,
            rate_limit_per_minute,
        };
        self.store.insert_api_key(&key).await?;
        Ok(NewApiKey { key, secret })
    }

    /// See [`Service::authenticate`].
    async fn authenticate(&self, secret: &str) -> Result<Authenticated, AuthError> {
        let hash = hash_secret(secret);
        let ttl = self.cache_secs;
        if let Some(key) = self.cache.get(&hash, self.now, ttl) {
            return Ok(Authenticated { key });
        }
        let key = self.store.api_key_by_lookup(&lookup_of(&hash)).await?.ok_or(AuthError::Unknown)?;
        if !bool::from(key.secret_hash.ct_eq(&hash)) {
            return Err(AuthError::Unknown);
        }
        if key.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        if ttl > 0 {
            self.cache.put(hash, key.clone(), self.now);
        }
        Ok(Authenticated { key })
    }

    /// See [`Service::set_api_key_rate_limit`].
    async fn set_rate_limit(&self, id: &str, per_minute: Option<u64>) -> Result<bool, StoreError> {
        if per_minute == Some(0) {
            return Err(StoreError::Other("a rate limit must be at least 1 request per minute".into()));
        }
        let changed = self.store.set_api_key_rate_limit(id, per_minute).await?;
        self.cache.forget(id);
        Ok(changed)
    }

    /// See [`Service::revoke_api_key`].
    async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let revoked = self.store.revoke_api_key(id, self.now).await?;
        self.cache.forget(id);
        Ok(revoked)
    }
}

/// Most API keys remembered at once; past it the cache starts over.
const AUTH_CACHE_MAX: usize = 10_000;

/// API keys recently found valid, by the SHA-256 of their secret (never the
/// secret), with when they were read.
#[derive(Default)]
pub(crate) struct AuthCache {
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 32], (ApiKey, i64)>>,
}

impl AuthCache {
    fn get(&self, hash: &[u8; 32], now: i64, ttl_secs: i64) -> Option<ApiKey> {
        let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (key, read_at) = entries.get(hash)?;
        (now >= *read_at && now - read_at < ttl_secs).then(|| key.clone())
    }

    fn put(&self, hash: [u8; 32], key: ApiKey, now: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= AUTH_CACHE_MAX {
            entries.clear();
        }
        entries.insert(hash, (key, now));
    }

    fn forget(&self, id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.retain(|_, (key, _)| key.id != id);
    }
}
