//! Making, rotating, retiring and destroying issuer keys: what an operator
//! (the CLI, `serve` at start) and the rotation scheduler do to keys. Every
//! change goes to the store first and the key ring is reloaded after, so
//! this node sees it at once and others within `key_refresh_secs`.

use std::sync::Arc;

use blindpass_entropy::Entropy;
use blindpass_protocol::keys::TokenKeyId;
use blindpass_protocol::voprf::{self, Suite};
use blindpass_protocol::wire::TOKEN_TYPE_BLIND_RSA;
use zeroize::Zeroizing;

use crate::custody::{decode_pkcs11, is_pkcs11_reference};
use crate::kek::KeyEncryptionKey;
use crate::keyring::Keys;
use crate::{Clock, Environment, IssuerKey, KeyError, KeyState, Service, Store};

/// Fresh keys drawn before giving up on one whose truncated id differs from
/// every live key of its type (each draw collides with probability n/256).
const TRUNCATED_ID_ATTEMPTS: usize = 64;

impl Service {
    /// Key administration on this node's key ring and store.
    pub(crate) fn key_admin(&self) -> KeyAdmin<'_> {
        KeyAdmin {
            keys: self.keys(),
            store: &**self.store(),
            entropy: &self.inner.entropy,
            kek: self.config().key_encryption_key.as_ref(),
            hsm: self.config().pkcs11.as_ref(),
            token_types: &self.config().token_types,
            clock: &*self.inner.clock,
        }
    }

    /// Creates one active key per environment and enabled token type that
    /// has none (first start, or a type newly enabled). Safe to run on
    /// several nodes at once: exactly one key wins per environment and type.
    /// Returns the keys this call created.
    pub async fn ensure_initial_keys(&self) -> Result<Vec<IssuerKey>, KeyError> {
        self.key_admin().ensure_initial_keys().await
    }

    /// Generates a new key of `token_type` for `environment`. With no
    /// `announce_secs` it is active at once and the previous active key of
    /// that type becomes verify-only; with `announce_secs` it is listed in
    /// the directory as pending and takes over (on whichever node first
    /// reloads keys) `announce_secs` from now.
    pub async fn rotate_key(
        &self,
        environment: Environment,
        token_type: u16,
        announce_secs: Option<i64>,
    ) -> Result<IssuerKey, KeyError> {
        self.key_admin().rotate_key(environment, token_type, announce_secs).await
    }

    /// Retires the key `id` (its RFC `token_key_id` or Persona id, hex).
    pub async fn retire_key(&self, id: &str) -> Result<IssuerKey, KeyError> {
        self.key_admin().retire_key(id).await
    }

    /// Destroys the token objects of the retired key `id` (its RFC
    /// `token_key_id`, hex): the key can never sign again, anywhere.
    /// Refused for a key that is not retired or not kept in a token, and
    /// without a token. Returns how many objects were destroyed (0 when an
    /// earlier call already did).
    pub async fn destroy_key_object(&self, id: &str) -> Result<usize, KeyError> {
        self.key_admin().destroy_key_object(id).await
    }
}

/// Key administration over what it needs: the key ring (reloaded after each
/// change), the store, randomness, the key-encryption key, the PKCS#11 token
/// new type-2 keys are made in, the enabled token types and the clock.
pub(crate) struct KeyAdmin<'a> {
    pub(crate) keys: Keys<'a>,
    pub(crate) store: &'a dyn Store,
    pub(crate) entropy: &'a Arc<dyn Entropy>,
    pub(crate) kek: Option<&'a Arc<KeyEncryptionKey>>,
    pub(crate) hsm: Option<&'a blindpass_hsm::Hsm>,
    pub(crate) token_types: &'a [u16],
    pub(crate) clock: &'a dyn Clock,
}

impl KeyAdmin<'_> {
    /// See [`Service::ensure_initial_keys`].
    pub(crate) async fn ensure_initial_keys(&self) -> Result<Vec<IssuerKey>, KeyError> {
        let mut created = Vec::new();
        for environment in Environment::ALL {
            let existing = self.store.issuer_key_metadata(Some(environment)).await?;
            for &token_type in self.token_types {
                if existing.iter().any(|k| k.token_type == token_type) {
                    continue;
                }
                let record = self.generate_key_record(environment, token_type).await?;
                if self.store.insert_first_issuer_key(&record).await? {
                    created.push(record);
                } else {
                    self.discard_generated(&record).await;
                }
            }
        }
        self.keys.reload().await?;
        Ok(created)
    }

    /// See [`Service::rotate_key`].
    pub(crate) async fn rotate_key(
        &self,
        environment: Environment,
        token_type: u16,
        announce_secs: Option<i64>,
    ) -> Result<IssuerKey, KeyError> {
        if !self.token_types.contains(&token_type) {
            return Err(KeyError::UnsupportedTokenType(token_type));
        }
        let mut record = self.generate_key_record(environment, token_type).await?;
        if let Some(delay) = announce_secs.filter(|d| *d > 0) {
            record.state = KeyState::Pending;
            record.not_before = self.clock.now() + delay;
        }
        if let Err(e) = self.store.rotate_issuer_key(&record, self.clock.now()).await {
            self.discard_generated(&record).await;
            return Err(e.into());
        }
        self.keys.reload().await?;
        Ok(record)
    }

    /// See [`Service::retire_key`].
    pub(crate) async fn retire_key(&self, id: &str) -> Result<IssuerKey, KeyError> {
        let wanted = TokenKeyId::from_hex(id).map_err(|_| KeyError::NotFound(id.to_owned()))?;
        let key = self.keys.key_by_id(&wanted).await?.ok_or_else(|| KeyError::NotFound(id.to_owned()))?;
        // False: it was retired already (earlier, or by another node); the
        // ring found it, so retiring again is not an error.
        self.store.retire_issuer_key(&key.record.id, self.clock.now()).await?;
        self.keys.reload().await?;
        let mut record = key.record.clone();
        record.state = KeyState::Retired;
        Ok(record)
    }

    /// A new key of `token_type` for `environment`, sealed for the store,
    /// whose truncated id differs from every live (not retired) key of that
    /// type in the environment, so an RFC 9578 request's truncated id names
    /// one key.
    pub(crate) async fn generate_key_record(
        &self,
        environment: Environment,
        token_type: u16,
    ) -> Result<IssuerKey, KeyError> {
        let now = self.clock.now();
        let kek = self.kek.cloned();
        let entropy = Arc::clone(self.entropy);
        let hsm = self.hsm.cloned();
        let taken: Vec<u8> = self
            .store
            .issuer_key_metadata(Some(environment))
            .await?
            .iter()
            .filter(|k| k.token_type == token_type && k.state != KeyState::Retired)
            .filter_map(|k| TokenKeyId::from_hex(&k.id).ok().map(|id| id.truncated()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let (id, private) = (0..TRUNCATED_ID_ATTEMPTS)
                .map(|_| generate_key(token_type, &*entropy, hsm.as_ref(), &taken))
                .find(|k| !matches!(k, Ok(None)))
                .unwrap_or(Ok(None))?
                .ok_or_else(|| KeyError::Key("no free truncated key id".into()))?;
            let id = id.to_hex();
            let stored = match &kek {
                Some(kek) => Zeroizing::new(kek.seal(&private, &crate::kek::issuer_key_aad(&id), &*entropy)),
                None => private,
            };
            Ok(IssuerKey {
                id,
                environment,
                token_type,
                state: KeyState::Active,
                private_pkcs8: stored,
                not_before: now,
                rotated_at: None,
                retired_at: None,
                created_at: now,
            })
        })
        .await
        .map_err(|e| KeyError::Key(format!("key generation task failed: {e}")))?
    }

    /// See [`Service::destroy_key_object`].
    pub(crate) async fn destroy_key_object(&self, id: &str) -> Result<usize, KeyError> {
        let record = self
            .store
            .issuer_key_metadata(None)
            .await?
            .into_iter()
            .find(|k| k.id == id)
            .ok_or_else(|| KeyError::NotFound(id.to_owned()))?;
        if record.state != KeyState::Retired {
            return Err(KeyError::Key(format!("key {id} is not retired; retire it before destroying it")));
        }
        let sealed = self.store.issuer_key_private(id).await?.ok_or_else(|| KeyError::NotFound(id.to_owned()))?;
        let stored = crate::kek::open(self.kek.map(|k| &**k), &sealed, &crate::kek::issuer_key_aad(id))?;
        if !is_pkcs11_reference(&stored) {
            return Err(KeyError::Key(format!("key {id} is not kept in a PKCS#11 token")));
        }
        let (object, _) = decode_pkcs11(&stored).map_err(KeyError::Key)?;
        let hsm =
            self.hsm.cloned().ok_or_else(|| KeyError::Key("destroying a token object needs --signer pkcs11".into()))?;
        tokio::task::spawn_blocking(move || hsm.destroy(&object.id))
            .await
            .map_err(|e| KeyError::Key(format!("destroy task failed: {e}")))?
            .map_err(|e| KeyError::Key(e.to_string()))
    }

    /// Destroys the token objects of a key this node generated but the
    /// store did not take (another node won the race, or the write failed),
    /// so that no orphan key is left in the token. A software key needs
    /// nothing; a failure is logged (the object is then an orphan, named in
    /// the log).
    pub(crate) async fn discard_generated(&self, record: &crate::IssuerKey) {
        let (Some(hsm), Ok(stored)) = (
            self.hsm.cloned(),
            crate::kek::open(self.kek.map(|k| &**k), &record.private_pkcs8, &crate::kek::issuer_key_aad(&record.id)),
        ) else {
            return;
        };
        if !is_pkcs11_reference(&stored) {
            return;
        }
        let Ok((object, _)) = decode_pkcs11(&stored) else { return };
        let label = object.label.clone();
        match tokio::task::spawn_blocking(move || hsm.destroy(&object.id)).await {
            Ok(Ok(_)) => tracing::info!(object = %label, "destroyed a generated key the store did not take"),
            Ok(Err(e)) => tracing::error!(object = %label, error = %e, "could not destroy an unused key in the token"),
            Err(e) => tracing::error!(object = %label, error = %e, "could not destroy an unused key in the token"),
        }
    }
}

/// A new key's id and what the store keeps of it.
type NewKey = (TokenKeyId, Zeroizing<Vec<u8>>);

/// A fresh key of `token_type`: its id and its private key as stored
/// (for type 2 PKCS#8 DER, or a reference to a key made in the PKCS#11
/// token; the serialized scalar for types 1 and 5), or `None` when its
/// truncated id is in `taken` (a key made in the token is then destroyed).
fn generate_key(
    token_type: u16,
    entropy: &dyn blindpass_entropy::Entropy,
    hsm: Option<&blindpass_hsm::Hsm>,
    taken: &[u8],
) -> Result<Option<NewKey>, KeyError> {
    let key_error = |e: &dyn std::fmt::Display| KeyError::Key(e.to_string());
    let (id, stored) = if token_type == TOKEN_TYPE_BLIND_RSA {
        let crate::custody::GeneratedRsa { id, stored, object } =
            crate::custody::generate_rsa(hsm).map_err(|e| key_error(&e))?;
        if let (Some(hsm), Some(object)) = (hsm, object)
            && taken.contains(&id.truncated())
        {
            hsm.destroy(&object.id).map_err(|e| key_error(&e))?;
        }
        (id, stored)
    } else {
        let suite = Suite::of_token_type(token_type).ok_or(KeyError::UnsupportedTokenType(token_type))?;
        let key = voprf::SecretKey::generate(suite, &mut entropy.rng()).map_err(|e| key_error(&e))?;
        (key.public_key().token_key_id(), key.to_bytes())
    };
    Ok((!taken.contains(&id.truncated())).then_some((id, stored)))
}
