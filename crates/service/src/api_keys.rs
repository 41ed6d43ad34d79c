//! API keys: creation (secret shown once), authentication (constant-time
//! hash comparison), revocation.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::{ApiKey, Environment, Permission, Service, StoreError};

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
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
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
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn lookup_of(hash: &[u8; 32]) -> String {
    let mut hex = hex::encode(hash);
    hex.truncate(LOOKUP_HEX_LEN);
    hex
}

impl Service {
    /// Creates a key in `environment` with `permissions`. The secret has
    /// Persona's shape (`persona_sandbox_<uuid>`), so SDKs that infer the
    /// environment from the key keep working.
    pub async fn create_api_key(
        &self,
        environment: Environment,
        permissions: Vec<Permission>,
        name: Option<String>,
    ) -> Result<NewApiKey, StoreError> {
        let secret =
            Zeroizing::new(format!("persona_{}_{}", environment.as_str(), blindpass_entropy::uuid_v4(self.entropy())));
        let secret_hash = hash_secret(&secret);
        let mut permissions = permissions;
        permissions.sort_unstable();
        permissions.dedup();
        let key = ApiKey {
            id: format!("api_{}", hex::encode(self.entropy().bytes::<16>())),
            name,
            environment,
            permissions,
            lookup: lookup_of(&secret_hash),
            secret_hash,
            created_at: self.now(),
            revoked_at: None,
        };
        self.store().insert_api_key(&key).await?;
        Ok(NewApiKey { key, secret })
    }

    /// Checks a bearer secret: looked up by a prefix of its hash, then
    /// compared in constant time over the whole hash.
    pub async fn authenticate(&self, secret: &str) -> Result<Authenticated, AuthError> {
        let hash = hash_secret(secret);
        let key = self.store().api_key_by_lookup(&lookup_of(&hash)).await?.ok_or(AuthError::Unknown)?;
        if !bool::from(key.secret_hash.ct_eq(&hash)) {
            return Err(AuthError::Unknown);
        }
        if key.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        Ok(Authenticated { key })
    }

    /// Revokes a key by id; false when there is none.
    pub async fn revoke_api_key(&self, id: &str) -> Result<bool, StoreError> {
        self.store().revoke_api_key(id, self.now()).await
    }
}
