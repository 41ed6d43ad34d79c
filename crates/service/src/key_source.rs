//! Where use cases find issuer keys: the node's key ring, or a test's own
//! keys. Issuance, redemption, challenges, the directory and readiness read
//! keys only through this trait, so each runs without a store.

use std::sync::Arc;

use blindpass_protocol::keys::TokenKeyId;

use crate::{Environment, KeyError, LoadedKey};

/// Keys by id and by environment.
pub(crate) trait KeySource: Sync {
    /// The key answering to `id` (either of a type-2 key's two ids).
    fn key_by_id(&self, id: &TokenKeyId) -> impl Future<Output = Result<Option<Arc<LoadedKey>>, KeyError>> + Send;
    /// Every loaded key of `environment`, newest first.
    fn keys_of(&self, environment: Environment) -> impl Future<Output = Result<Vec<Arc<LoadedKey>>, KeyError>> + Send;
}

/// The key of `token_type` that issues in `environment` at `now`, if any: of
/// two (a ring that has not yet seen the announced key's promotion demote
/// the old one), the one whose `not_before` came last.
pub(crate) async fn active_key(
    keys: &impl KeySource,
    environment: Environment,
    token_type: u16,
    now: i64,
) -> Result<Option<Arc<LoadedKey>>, KeyError> {
    Ok(keys
        .keys_of(environment)
        .await?
        .into_iter()
        .filter(|k| k.token_type() == token_type && k.issues_at(now))
        .max_by_key(|k| (k.record.not_before, k.record.created_at)))
}

/// Keys a test holds itself: no store, no key ring, no `Service`.
#[cfg(test)]
pub(crate) mod held {
    #![allow(clippy::unwrap_used)]

    use blindpass_protocol::voprf::SecretKey;
    use blindpass_protocol::voprf::wire::Suite;
    use blindpass_store::KeyState;

    use super::*;
    use crate::{IssuerKey, KeyMaterial};

    /// The keys, in a list.
    pub(crate) struct HeldKeys(pub(crate) Vec<Arc<LoadedKey>>);

    impl KeySource for HeldKeys {
        async fn key_by_id(&self, id: &TokenKeyId) -> Result<Option<Arc<LoadedKey>>, KeyError> {
            Ok(self.0.iter().find(|k| k.ids().contains(id)).cloned())
        }

        async fn keys_of(&self, environment: Environment) -> Result<Vec<Arc<LoadedKey>>, KeyError> {
            Ok(self.0.iter().filter(|k| k.record.environment == environment).cloned().collect())
        }
    }

    /// A type-5 key of `environment` in `state`, derived from a fixed seed.
    pub(crate) fn voprf_key(environment: Environment, state: KeyState) -> Arc<LoadedKey> {
        let secret = SecretKey::derive(Suite::Ristretto255, b"a use case without a service").unwrap();
        let record = IssuerKey {
            id: secret.public_key().token_key_id().to_hex(),
            environment,
            token_type: Suite::Ristretto255.token_type(),
            state,
            private_pkcs8: Default::default(),
            not_before: 0,
            rotated_at: None,
            retired_at: None,
            created_at: 0,
        };
        Arc::new(LoadedKey { record, material: KeyMaterial::Voprf(Arc::new(secret)) })
    }
}
