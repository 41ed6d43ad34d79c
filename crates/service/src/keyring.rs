//! The issuer keys a node holds in memory, refreshed from the store so that a
//! key rotated by the CLI or another node is seen within
//! `key_refresh_secs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use blindpass_protocol::blind_rsa::RawSigner;
use blindpass_protocol::keys::{IssuerPublicKey, TokenKeyId};
use blindpass_rsa::RsaPrivateKey;
use zeroize::Zeroizing;

use crate::issuer_key::{KeyMaterial, LoadedKey};
use crate::{Environment, IssuerKey, KeyState, Service, StoreError};

/// Key management failures.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored key could not be parsed, or a key could not be generated.
    #[error("issuer key error: {0}")]
    Key(String),
    /// Key material could not be opened with the configured key-encryption
    /// key (missing, wrong, or the value was tampered with).
    #[error(transparent)]
    Kek(#[from] crate::kek::KekError),
    /// No key with that id.
    #[error("no issuer key {0}")]
    NotFound(String),
}

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

    /// The key that issues in `environment` now, if any.
    pub async fn active_key(&self, environment: Environment) -> Result<Option<Arc<LoadedKey>>, KeyError> {
        let now = self.now();
        Ok(self.keys_of(environment).await?.into_iter().find(|k| k.issues_at(now)))
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
                    by_id.insert(loaded.public.token_key_id(), Arc::clone(&loaded));
                    by_id.insert(loaded.public.persona_key_id(), loaded);
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
            return Ok(Some(Arc::new(LoadedKey {
                record,
                public: old.public.clone(),
                material: old.material.clone(),
            })));
        }
        match self.load_private(record).await {
            Ok(loaded) => Ok(Some(Arc::new(loaded))),
            Err(
                e @ (KeyError::Kek(crate::kek::KekError::Missing(_) | crate::kek::KekError::WrongKey { .. })
                | KeyError::Store(_)),
            ) => Err(e),
            Err(e) => {
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
        load(record, &pkcs8)
    }

    /// Creates one active key per environment that has none (first start).
    /// Safe to run on several nodes at once: exactly one key wins per
    /// environment. Returns the keys this call created.
    pub async fn ensure_initial_keys(&self) -> Result<Vec<IssuerKey>, KeyError> {
        let mut created = Vec::new();
        for environment in Environment::ALL {
            if !self.store().issuer_keys(Some(environment)).await?.is_empty() {
                continue;
            }
            let record = self.generate_key_record(environment).await?;
            if self.store().insert_first_issuer_key(&record).await? {
                created.push(record);
            }
        }
        self.reload_keys().await?;
        Ok(created)
    }

    /// Generates a new key for `environment`. With no `announce_secs` it is
    /// active at once and the previous active key becomes verify-only; with
    /// `announce_secs` it is listed in the directory as pending and takes over
    /// (on whichever node first reloads keys) `announce_secs` from now.
    pub async fn rotate_key(
        &self,
        environment: Environment,
        announce_secs: Option<i64>,
    ) -> Result<IssuerKey, KeyError> {
        let mut record = self.generate_key_record(environment).await?;
        if let Some(delay) = announce_secs.filter(|d| *d > 0) {
            record.state = KeyState::Pending;
            record.not_before = self.now() + delay;
        }
        self.store().rotate_issuer_key(&record, self.now()).await?;
        self.reload_keys().await?;
        Ok(record)
    }

    /// Retires the key `id` (its RFC `token_key_id` or Persona id, hex).
    pub async fn retire_key(&self, id: &str) -> Result<IssuerKey, KeyError> {
        let wanted = TokenKeyId::from_hex(id).map_err(|_| KeyError::NotFound(id.to_owned()))?;
        let key = self.key_by_id(&wanted).await?.ok_or_else(|| KeyError::NotFound(id.to_owned()))?;
        if !self.store().retire_issuer_key(&key.record.id, self.now()).await? {
            return Err(KeyError::NotFound(id.to_owned()));
        }
        self.reload_keys().await?;
        let mut record = key.record.clone();
        record.state = KeyState::Retired;
        Ok(record)
    }

    async fn generate_key_record(&self, environment: Environment) -> Result<IssuerKey, KeyError> {
        let now = self.now();
        let kek = self.config().key_encryption_key.clone();
        let entropy = self.entropy_handle();
        tokio::task::spawn_blocking(move || {
            let key = RsaPrivateKey::generate_2048().map_err(|e| KeyError::Key(e.to_string()))?;
            let public = IssuerPublicKey::new(key.public_key().clone()).map_err(|e| KeyError::Key(e.to_string()))?;
            let id = public.token_key_id().to_hex();
            let pkcs8 = key.to_pkcs8_der().map_err(|e| KeyError::Key(e.to_string()))?;
            let stored = match &kek {
                Some(kek) => Zeroizing::new(kek.seal(&pkcs8, &crate::kek::issuer_key_aad(&id), &*entropy)),
                None => pkcs8,
            };
            Ok(IssuerKey {
                id,
                environment,
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

fn load(record: IssuerKey, pkcs8: &[u8]) -> Result<LoadedKey, KeyError> {
    let signer =
        RsaPrivateKey::from_pkcs8_der(pkcs8).map_err(|e| KeyError::Key(format!("stored key {}: {e}", record.id)))?;
    let public = IssuerPublicKey::new(signer.public_key().clone())
        .map_err(|e| KeyError::Key(format!("stored key {}: {e}", record.id)))?;
    if public.token_key_id().to_hex() != record.id {
        return Err(KeyError::Key(format!("stored key {} does not match its id", record.id)));
    }
    Ok(LoadedKey { record, public, material: KeyMaterial::BlindRsa(Arc::new(signer)) })
}
