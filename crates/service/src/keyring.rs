//! The issuer keys a node holds in memory, refreshed from the store so that a
//! key rotated by the CLI or another node is seen within
//! `key_refresh_secs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use blindpass_protocol::keys::TokenKeyId;
use blindpass_protocol::voprf::{self, Suite};
use blindpass_protocol::wire::TOKEN_TYPE_BLIND_RSA;

use crate::issuer_key::{KeyMaterial, LoadedKey};
use crate::key_source::KeySource;
use crate::metrics::Metrics;
use crate::{Clock, Environment, IssuerKey, Service, Store};

pub use crate::key_error::KeyError;

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
    /// The node's key ring, as use cases read it.
    pub(crate) fn keys(&self) -> Keys<'_> {
        Keys {
            ring: &self.inner.keyring,
            store: &**self.store(),
            kek: self.kek(),
            hsm: self.config().pkcs11.as_ref(),
            metrics: self.metrics(),
            refresh_secs: self.config().key_refresh_secs,
            clock: &*self.inner.clock,
        }
    }

    /// Finds the key that answers to `id` (either of its two ids), reloading
    /// the ring when it is older than `key_refresh_secs` or when `id` is
    /// unknown (at most once a second).
    pub async fn key_by_id(&self, id: &TokenKeyId) -> Result<Option<Arc<LoadedKey>>, KeyError> {
        self.keys().key_by_id(id).await
    }

    /// Every loaded key of `environment`, newest first.
    pub async fn keys_of(&self, environment: Environment) -> Result<Vec<Arc<LoadedKey>>, KeyError> {
        self.keys().keys_of(environment).await
    }

    /// The key of `token_type` that issues in `environment` now, if any.
    pub async fn active_key(
        &self,
        environment: Environment,
        token_type: u16,
    ) -> Result<Option<Arc<LoadedKey>>, KeyError> {
        crate::key_source::active_key(&self.keys(), environment, token_type, self.now()).await
    }

    /// The key ring's counters.
    pub fn key_ring_stats(&self) -> KeyRingStats {
        self.keys().stats()
    }

    /// Re-reads the issuer keys from the store (see [`Service::key_by_id`]
    /// for when that happens by itself).
    pub async fn reload_keys(&self) -> Result<Arc<HashMap<TokenKeyId, Arc<LoadedKey>>>, KeyError> {
        self.keys().reload().await
    }
}

/// The key ring as use cases read it: the ring's state with what a reload
/// needs (the store, the key-encryption key, the token, the metrics it
/// counts, the refresh interval and the clock).
pub(crate) struct Keys<'a> {
    pub(crate) ring: &'a KeyRing,
    pub(crate) store: &'a dyn Store,
    pub(crate) kek: Option<&'a crate::kek::KeyEncryptionKey>,
    pub(crate) hsm: Option<&'a blindpass_hsm::Hsm>,
    pub(crate) metrics: &'a Metrics,
    pub(crate) refresh_secs: i64,
    pub(crate) clock: &'a dyn Clock,
}

impl KeySource for Keys<'_> {
    fn key_by_id(&self, id: &TokenKeyId) -> impl Future<Output = Result<Option<Arc<LoadedKey>>, KeyError>> + Send {
        Keys::key_by_id(self, id)
    }

    fn keys_of(&self, environment: Environment) -> impl Future<Output = Result<Vec<Arc<LoadedKey>>, KeyError>> + Send {
        Keys::keys_of(self, environment)
    }
}

impl Keys<'_> {
    /// See [`Service::key_by_id`].
    pub(crate) async fn key_by_id(&self, id: &TokenKeyId) -> Result<Option<Arc<LoadedKey>>, KeyError> {
        let now = self.clock.now();
        let snapshot = self.snapshot();
        let fresh = snapshot.loaded_at.is_some_and(|t| now - t < self.refresh_secs);
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

    /// See [`Service::keys_of`].
    pub(crate) async fn keys_of(&self, environment: Environment) -> Result<Vec<Arc<LoadedKey>>, KeyError> {
        let now = self.clock.now();
        let snapshot = self.snapshot();
        let by_id = match snapshot.loaded_at {
            Some(t) if now - t < self.refresh_secs => snapshot.by_id,
            _ => self.reload_once(snapshot.generation).await?,
        };
        let mut keys: Vec<_> =
            by_id.values().filter(|k| k.record.environment == environment).map(Arc::clone).collect::<Vec<_>>();
        keys.sort_by(|a, b| b.record.created_at.cmp(&a.record.created_at).then(a.record.id.cmp(&b.record.id)));
        keys.dedup_by(|a, b| a.record.id == b.record.id);
        Ok(keys)
    }

    /// See [`Service::key_ring_stats`].
    pub(crate) fn stats(&self) -> KeyRingStats {
        let ring = &self.ring;
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
        let _flight = self.ring.reloading.lock().await;
        let current = self.snapshot();
        if current.generation != seen_generation {
            return Ok(current.by_id);
        }
        self.reload().await
    }

    fn snapshot(&self) -> Snapshot {
        self.ring.state.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Re-reads the issuer keys' metadata (state, times). A key id already
    /// loaded keeps its parsed key pair (a key id is the hash of the public
    /// key, so its private key never changes); only a new key id fetches,
    /// opens and parses its private key, once. A key that cannot be read is
    /// skipped and logged rather than failing every request, except when the
    /// key-encryption key is missing or wrong: that is a configuration error.
    pub(crate) async fn reload(&self) -> Result<Arc<HashMap<TokenKeyId, Arc<LoadedKey>>>, KeyError> {
        let promoted = self.store.promote_due_keys(self.clock.now()).await?;
        if promoted > 0 {
            tracing::info!(promoted, "announced issuer keys became active");
        }
        let records = self.store.issuer_key_metadata(None).await?;
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
                    self.metrics.unsealed_key_material();
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
        let ring = &self.ring;
        ring.reloads.fetch_add(1, Ordering::Relaxed);
        ring.unreadable_skips.fetch_add(unreadable, Ordering::Relaxed);
        ring.unreadable_now.store(unreadable, Ordering::Relaxed);
        if let Ok(mut state) = ring.state.write() {
            let generation = state.generation.wrapping_add(1);
            *state = Snapshot { by_id: Arc::clone(&by_id), loaded_at: Some(self.clock.now()), generation };
        }
        by_id
    }

    /// Fetches, opens and parses the private key of `record`.
    async fn load_private(&self, record: IssuerKey) -> Result<LoadedKey, KeyError> {
        let sealed =
            self.store.issuer_key_private(&record.id).await?.ok_or_else(|| KeyError::NotFound(record.id.clone()))?;
        let pkcs8 = crate::kek::open(self.kek, &sealed, &crate::kek::issuer_key_aad(&record.id))?;
        load(record, &pkcs8, self.hsm)
    }
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
