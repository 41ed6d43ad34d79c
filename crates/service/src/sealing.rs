//! Key material at rest: checking that every issuer key and server secret
//! opens with the configured key-encryption key, and re-sealing them all
//! under another (or none) in one transaction.

use blindpass_entropy::Entropy;

use crate::kek::KeyEncryptionKey;
use crate::{KeyError, Service, Store};

impl Service {
    fn sealing(&self) -> Sealing<'_> {
        Sealing { store: &**self.store(), kek: self.kek(), entropy: self.entropy() }
    }

    /// Re-encrypts every issuer private key and server secret from the
    /// configured key-encryption key (or plaintext) to `new` (or plaintext),
    /// in one transaction. Returns how many values were rewritten.
    pub async fn rewrap_key_material(&self, new: Option<&KeyEncryptionKey>) -> Result<usize, KeyError> {
        self.sealing().rewrap(new).await
    }

    /// Opens every issuer key and server secret with the configured
    /// key-encryption key: fails, naming the KEK needed, when the store holds
    /// material sealed under a KEK that is missing or different, or, with a
    /// KEK, material stored unsealed. Returns how many values are stored in
    /// plaintext (without a KEK).
    pub async fn check_key_material(&self) -> Result<usize, KeyError> {
        self.sealing().check().await
    }
}

/// Sealing over what it needs: the store, the configured key-encryption key
/// and randomness.
struct Sealing<'a> {
    store: &'a dyn Store,
    kek: Option<&'a KeyEncryptionKey>,
    entropy: &'a dyn Entropy,
}

impl Sealing<'_> {
    async fn rewrap(&self, new: Option<&KeyEncryptionKey>) -> Result<usize, KeyError> {
        let mut changes = Vec::new();
        for key in self.store.issuer_keys(None).await? {
            let aad = crate::kek::issuer_key_aad(&key.id);
            let plain = crate::kek::open_for_rewrap(self.kek, &key.private_pkcs8, &aad)?;
            let new_value = new.map_or_else(|| plain.to_vec(), |k| k.seal(&plain, &aad, self.entropy));
            let target = blindpass_store::RewrapTarget::IssuerKey(key.id.clone());
            changes.push(blindpass_store::Rewrap { target, old: key.private_pkcs8.to_vec(), new: new_value });
        }
        for (name, value) in self.store.settings_with_prefix(crate::secrets::SECRET_PREFIX).await? {
            let aad = crate::kek::setting_aad(&name);
            let plain = crate::kek::open_for_rewrap(self.kek, &value, &aad)?;
            let new_value = new.map_or_else(|| plain.to_vec(), |k| k.seal(&plain, &aad, self.entropy));
            changes.push(blindpass_store::Rewrap {
                target: blindpass_store::RewrapTarget::Setting(name),
                old: value,
                new: new_value,
            });
        }
        self.store.rewrap(&changes).await?;
        Ok(changes.len())
    }

    async fn check(&self) -> Result<usize, KeyError> {
        let mut plaintext = 0;
        for key in self.store.issuer_keys(None).await? {
            plaintext += usize::from(!crate::kek::is_sealed(&key.private_pkcs8));
            crate::kek::open(self.kek, &key.private_pkcs8, &crate::kek::issuer_key_aad(&key.id))?;
        }
        for (name, value) in self.store.settings_with_prefix(crate::secrets::SECRET_PREFIX).await? {
            plaintext += usize::from(!crate::kek::is_sealed(&value));
            crate::kek::open(self.kek, &value, &crate::kek::setting_aad(&name))?;
        }
        Ok(plaintext)
    }
}
