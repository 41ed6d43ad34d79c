//! Server secrets, created once per store and shared by every node that uses
//! it: the challenge MAC key, the RFC redemption-context key and the relay
//! session-token key.

use blindpass_protocol::persona::ChallengeSecret;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use blindpass_entropy::Entropy;

use crate::kek::KeyEncryptionKey;
use crate::metrics::Metrics;
use crate::{Cause, Service, Store, StoreError};

pub(crate) struct Secrets {
    pub(crate) challenge: ChallengeSecret,
    pub(crate) context: HmacKey,
    pub(crate) session: HmacKey,
}

/// An HMAC-SHA256 key, keyed once when the secrets load, so that using it
/// cannot fail (and no caller needs a fallback for a bad key).
#[derive(Clone)]
pub(crate) struct HmacKey(Hmac<Sha256>);

impl HmacKey {
    fn new(name: &str, key: &[u8]) -> Result<Self, StoreError> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(key)
            .map(Self)
            .map_err(|_| StoreError::Corrupt(format!("{name}: not an HMAC key").into()))
    }

    /// HMAC of `message` (JWT HS256).
    pub(crate) fn tag(&self, message: &[u8]) -> [u8; 32] {
        let mut mac = self.0.clone();
        mac.update(message);
        mac.finalize().into_bytes().into()
    }

    /// HMAC of `parts`, each prefixed with its length (u32, big-endian), so
    /// that no two part lists collide.
    pub(crate) fn tag_parts(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

/// Prefix of the settings that hold server secrets.
pub(crate) const SECRET_PREFIX: &str = "secret.";

impl Service {
    /// The server secrets, loaded (or made) on first use.
    pub(crate) fn secrets(&self) -> SecretsCell<'_> {
        SecretsCell {
            cell: &self.inner.secrets,
            store: &**self.store(),
            entropy: self.entropy(),
            kek: self.kek(),
            metrics: self.metrics(),
        }
    }
}

/// The server secrets as use cases reach them: read from the store (or
/// made and stored, by whichever node is first) once per process, on first
/// use, and kept.
pub(crate) struct SecretsCell<'a> {
    pub(crate) cell: &'a tokio::sync::OnceCell<Secrets>,
    pub(crate) store: &'a dyn Store,
    pub(crate) entropy: &'a dyn Entropy,
    pub(crate) kek: Option<&'a KeyEncryptionKey>,
    pub(crate) metrics: &'a Metrics,
}

impl<'a> SecretsCell<'a> {
    /// The secrets.
    pub(crate) async fn get(&self) -> Result<&'a Secrets, StoreError> {
        self.cell.get_or_try_init(|| self.load()).await
    }

    async fn load(&self) -> Result<Secrets, StoreError> {
        let challenge = self.one("secret.challenge_mac").await?;
        let challenge = ChallengeSecret::new(challenge.to_vec())
            .map_err(|e| StoreError::Corrupt(Cause::while_("challenge secret", e)))?;
        Ok(Secrets {
            challenge,
            context: HmacKey::new("secret.redemption_context", &self.one("secret.redemption_context").await?)?,
            session: HmacKey::new("secret.session", &self.one("secret.session").await?)?,
        })
    }

    /// The secret `name`: a fresh one is offered, and the store keeps the
    /// first one any node offered.
    async fn one(&self, name: &str) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let fresh: Zeroizing<[u8; 32]> = Zeroizing::new(self.entropy.bytes());
        let aad = crate::kek::setting_aad(name);
        let fresh = match self.kek {
            Some(kek) => Zeroizing::new(kek.seal(&fresh[..], &aad, self.entropy)),
            None => Zeroizing::new(fresh.to_vec()),
        };
        let stored = Zeroizing::new(self.store.setting_get_or_insert(name, &fresh).await?);
        crate::kek::open(self.kek, &stored, &aad).map_err(|e| {
            if let crate::kek::KekError::Unsealed(_) = e {
                self.metrics.unsealed_key_material();
            }
            StoreError::Corrupt(Cause::of(e))
        })
    }
}
