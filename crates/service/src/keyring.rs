//! The issuer keys a node holds in memory, refreshed from the store so that a
//! key rotated by the CLI or another node is seen within
//! `key_refresh_secs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use blindpass_protocol::keys::TokenKeyId;
use blindpass_protocol::voprf::{self, Suite};
use blindpass_protocol::wire::TOKEN_TYPE_BLIND_RSA;
use zeroize::Zeroizing;

use crate::issuer_key::{KeyMaterial, LoadedKey};
use crate::{Environment, IssuerKey, KeyState, Service};

pub use crate::key_error::KeyError;

/// Fresh keys drawn before giving up on one whose truncated id differs from
/// every live key of its type (each draw collides with probability n/256).
const TRUNCATED_ID_ATTEMPTS: usize = 64;

#[derive(Default)]
pub(crate) struct KeyRing {
    state: RwLock<Snapshot>,
    /// Held by the one reload in flight: callers that find the ring stale
    /// wait for it and use its result instead of reloading again.
    reloading: tokio::sync::Mutex<()>,
    reloads: AtomicU64,
    unreadable_skips: AtomicU64,
    unreadable_now: AtomicU64,
}

#[derive(Default, Clone)]
struct Snapshot {
    by_id: Arc<HashMap<TokenKeyId, Arc<LoadedKey>>>,
    loaded_at: Option<i64>,
    /// Bumped by every reload, so a waiter can tell that one happened.
    generation: u64,
}

/// Counters of the node's key ring, for operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyRingStats {
    /// Reloads of key metadata from the store since start.
    pub reloads: u64,
    /// Keys skipped because they could not be read, summed over reloads.
    pub unreadable_key_skips: u64,
    /// Keys skipped by the latest reload.
    pub unreadable_keys: u64,
}

impl Service {
    /// Finds the key that answers to `id` (either of its two ids), reloading
    /// the ring when it is older than `key_refresh_secs` or when `id` is
    /// unknown (at most once a second).
    pub async fn key_by_id(&self, id: &TokenKeyId) -> Result<Option<Arc<LoadedKey>>, KeyError> {
        let now = self.now();
        let snapshot = self.snapshot();
        let fresh = snapshot.loaded_at.is_some_and(|t| now - t < self.config().key_refresh_secs);
        if fresh {
            if let Some(key) = snapshot.by_id.get(id) {
                return Ok(Some(Arc::clone(key)));
            }
            if snapshot.loaded_at == Some(now) {
                return Ok(None);
            }
        }
        let by_id = self.reload_once(snapshot.generation).await?;
        Ok(by_id.get(id).cloned())
    }

    /// Every loaded key of `environment`, newest first.
    pub async fn keys_of(&self, environment: Environment) -> Result<Vec<Arc<LoadedKey>>, KeyError> {
        let now = self.now();
        let snapshot = self.snapshot();
        let by_id = match snapshot.loaded_at {
            Some(t) if now - t < self.config().key_refresh_secs => snapshot.by_id,
            _ => self.reload_once(snapshot.generation).await?,
        };
        let mut keys: Vec<_> =
            by_id.values().filter(|k| k.record.environment == environment).map(Arc::clone).collect::<Vec<_>>();
        keys.sort_by(|a, b| b.record.created_at.cmp(&a.record.created_at).then(a.record.id.cmp(&b.record.id)));
        keys.dedup_by(|a, b| a.record.id == b.record.id);
        Ok(keys)
    }

    /// The key of `token_type` that issues in `environment` now, if any: of
    /// two (a ring that has not yet seen the announced key's promotion
    /// demote the old one), the one whose `not_before` came last.
    pub async fn active_key(
        &self,
        environment: Environment,
        token_type: u16,
    ) -> Result<Option<Arc<LoadedKey>>, KeyError> {
        let now = self.now();
        Ok(self
            .keys_of(environment)
            .await?
            .into_iter()
            .filter(|k| k.token_type() == token_type && k.issues_at(now))
            .max_by_key(|k| (k.record.not_before, k.record.created_at)))
    }

    /// The key ring's counters.
    pub fn key_ring_stats(&self) -> KeyRingStats {
        let ring = &self.inner.keyring;
        KeyRingStats {
            reloads: ring.reloads.load(Ordering::Relaxed),
            unreadable_key_skips: ring.unreadable_skips.load(Ordering::Relaxed),
            unreadable_keys: ring.unreadable_now.load(Ordering::Relaxed),
        }
    }

    /// Single-flight reload: the caller saw the ring at `seen_generation`
    /// and found it stale. If another reload finished meanwhile (or finishes
    /// while this caller waits for it), its result is used; otherwise this
    /// caller reloads. However many requests find the ring stale, or present
    /// unknown key ids, at the same moment, the store sees one reload.
    async fn reload_once(&self, seen_generation: u64) -> Result<Arc<HashMap<TokenKeyId, Arc<LoadedKey>>>, KeyError> {
        let _flight = self.inner.keyring.reloading.lock().await;
        let current = self.snapshot();
        if current.generation != seen_generation {
            return Ok(current.by_id);
        }
        self.reload_keys().await
    }

    fn snapshot(&self) -> Snapshot {
        self.inner.keyring.state.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Re-reads the issuer keys' metadata (state, times). A key id already
    /// loaded keeps its parsed key pair (a key id is the hash of the public
    /// key, so its private key never changes); only a new key id fetches,
    /// opens and parses its private key, once. A key that cannot be read is
    /// skipped and logged rather than failing every request, except when the
    /// key-encryption key is missing or wrong: that is a configuration error.
    pub async fn reload_keys(&self) -> Result<Arc<HashMap<TokenKeyId, Arc<LoadedKey>>>, KeyError> {
        let promoted = self.store().promote_due_keys(self.now()).await?;
        if promoted > 0 {
            tracing::info!(promoted, "announced issuer keys became active");
        }
        let records = self.store().issuer_key_metadata(None).await?;
        let previous = self.snapshot().by_id;
        let mut by_id = HashMap::with_capacity(records.len() * 2);
        let mut unreadable = 0_u64;
        for record in records {
            match self.reloaded(record, &previous).await? {
                Some(loaded) => {
                    for id in loaded.ids() {
                        by_id.insert(id, Arc::clone(&loaded));
                    }
                }
                None => unreadable += 1,
            }
        }
        Ok(self.publish(Arc::new(by_id), unreadable))
    }

    /// `record` as a usable key: its parsed key from the previous ring, or
    /// its private key fetched and opened once. `None` for a key that cannot
    /// be read (skipped and logged); a missing or wrong KEK and a store
    /// failure are errors, not skips.
    async fn reloaded(
        &self,
        record: IssuerKey,
        previous: &HashMap<TokenKeyId, Arc<LoadedKey>>,
    ) -> Result<Option<Arc<LoadedKey>>, KeyError> {
        let Ok(id) = TokenKeyId::from_hex(&record.id) else {
            tracing::error!(key = %record.id, "skipping an issuer key with a malformed id");
            return Ok(None);
        };
        if let Some(old) = previous.get(&id) {
            return Ok(Some(Arc::new(LoadedKey { record, material: old.material.clone() })));
        }
        match self.load_private(record).await {
            Ok(loaded) => Ok(Some(Arc::new(loaded))),
            Err(
                e @ (KeyError::Kek(crate::kek::KekError::Missing(_) | crate::kek::KekError::WrongKey { .. })
                | KeyError::Store(_)),
            ) => Err(e),
            Err(e) => {
                if let KeyError::Kek(crate::kek::KekError::Unsealed(_)) = e {
                    self.metrics().unsealed_key_material();
                }
                tracing::error!(key = %id.to_hex(), error = %e, "skipping an unreadable issuer key");
                Ok(None)
            }
        }
    }

    /// Makes `by_id` the ring every request sees, and counts the reload.
    fn publish(
        &self,
        by_id: Arc<HashMap<TokenKeyId, Arc<LoadedKey>>>,
        unreadable: u64,
    ) -> Arc<HashMap<TokenKeyId, Arc<LoadedKey>>> {
        let ring = &self.inner.keyring;
        ring.reloads.fetch_add(1, Ordering::Relaxed);
        ring.unreadable_skips.fetch_add(unreadable, Ordering::Relaxed);
        ring.unreadable_now.store(unreadable, Ordering::Relaxed);
        if let Ok(mut state) = ring.state.write() {
            let generation = state.generation.wrapping_add(1);
            *state = Snapshot { by_id: Arc::clone(&by_id), loaded_at: Some(self.now()), generation };
        }
        by_id
    }

    /// Fetches, opens and parses the private key of `record`.
    async fn load_private(&self, record: IssuerKey) -> Result<LoadedKey, KeyError> {
        let sealed =
            self.store().issuer_key_private(&record.id).await?.ok_or_else(|| KeyError::NotFound(record.id.clone()))?;
        let pkcs8 = crate::kek::open(self.kek(), &sealed, &crate::kek::issuer_key_aad(&record.id))?;
        load(record, &pkcs8, self.config().pkcs11.as_ref())
    }

    /// Creates one active key per environment and enabled token type that
    /// has none (first start, or a type newly enabled). Safe to run on
    /// several nodes at once: exactly one key wins per environment and type.
    /// Returns the keys this call created.
    pub async fn ensure_initial_keys(&self) -> Result<Vec<IssuerKey>, KeyError> {
        let mut created = Vec::new();
        for environment in Environment::ALL {
            let existing = self.store().issuer_key_metadata(Some(environment)).await?;
            for &token_type in &self.config().token_types {
                if existing.iter().any(|k| k.token_type == token_type) {
                    continue;
                }
                let record = self.generate_key_record(environment, token_type).await?;
                if self.store().insert_first_issuer_key(&record).await? {
                    created.push(record);
                } else {
                    self.discard_generated(&record).await;
                }
            }
        }
        self.reload_keys().await?;
        Ok(created)
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
        if !self.config().token_types.contains(&token_type) {
            return Err(KeyError::UnsupportedTokenType(token_type));
        }
        let mut record = self.generate_key_record(environment, token_type).await?;
        if let Some(delay) = announce_secs.filter(|d| *d > 0) {
            record.state = KeyState::Pending;
            record.not_before = self.now() + delay;
        }
        if let Err(e) = self.store().rotate_issuer_key(&record, self.now()).await {
            self.discard_generated(&record).await;
            return Err(e.into());
        }
        self.reload_keys().await?;
        Ok(record)
    }

    /// Retires the key `id` (its RFC `token_key_id` or Persona id, hex).
    pub async fn retire_key(&self, id: &str) -> Result<IssuerKey, KeyError> {
        let wanted = TokenKeyId::from_hex(id).map_err(|_| KeyError::NotFound(id.to_owned()))?;
        let key = self.key_by_id(&wanted).await?.ok_or_else(|| KeyError::NotFound(id.to_owned()))?;
        // False: it was retired already (earlier, or by another node); the
        // ring found it, so retiring again is not an error.
        self.store().retire_issuer_key(&key.record.id, self.now()).await?;
        self.reload_keys().await?;
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
        let now = self.now();
        let kek = self.config().key_encryption_key.clone();
        let entropy = self.entropy_handle();
        let hsm = self.config().pkcs11.clone();
        let taken: Vec<u8> = self
            .store()
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

/// Parses a stored private key of `record`'s token type and checks that it
/// is the key the record's id names.
fn load(record: IssuerKey, private: &[u8], hsm: Option<&blindpass_hsm::Hsm>) -> Result<LoadedKey, KeyError> {
    let stored_error = |e: &dyn std::fmt::Display| KeyError::Key(format!("stored key {}: {e}", record.id));
    let material = if record.token_type == TOKEN_TYPE_BLIND_RSA {
        let (public, signer) = crate::custody::load_rsa(private, hsm).map_err(|e| stored_error(&e))?;
        KeyMaterial::BlindRsa { public: Box::new(public), signer }
    } else {
        let suite = Suite::of_token_type(record.token_type).ok_or(KeyError::UnsupportedTokenType(record.token_type))?;
        KeyMaterial::Voprf(Arc::new(voprf::SecretKey::from_bytes(suite, private).map_err(|e| stored_error(&e))?))
    };
    if material.token_key_id().to_hex() != record.id {
        return Err(KeyError::Key(format!("stored key {} does not match its id", record.id)));
    }
    Ok(LoadedKey { record, material })
}
