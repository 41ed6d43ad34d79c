//! Server secrets, created once per store and shared by every node that uses
//! it: the challenge MAC key, the RFC redemption-context key and the relay
//! session-token key.

use blindpass_protocol::persona::ChallengeSecret;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{Service, StoreError};

pub(crate) struct Secrets {
    pub(crate) challenge: ChallengeSecret,
    pub(crate) context: Zeroizing<Vec<u8>>,
    pub(crate) session: Zeroizing<Vec<u8>>,
}

/// Prefix of the settings that hold server secrets.
pub(crate) const SECRET_PREFIX: &str = "secret.";

impl Service {
    pub(crate) async fn secrets(&self) -> Result<&Secrets, StoreError> {
        self.inner
            .secrets
            .get_or_try_init(|| async {
                let get = async |name: &str| -> Result<Zeroizing<Vec<u8>>, StoreError> {
                    let fresh: Zeroizing<[u8; 32]> = Zeroizing::new(self.entropy().bytes());
                    let aad = crate::kek::setting_aad(name);
                    let fresh = match self.kek() {
                        Some(kek) => Zeroizing::new(kek.seal(&fresh[..], &aad, self.entropy())),
                        None => Zeroizing::new(fresh.to_vec()),
                    };
                    let stored = Zeroizing::new(self.store().setting_get_or_insert(name, &fresh).await?);
                    crate::kek::open(self.kek(), &stored, &aad).map_err(|e| StoreError::Corrupt(e.to_string()))
                };
                let challenge = get("secret.challenge_mac").await?;
                let challenge = ChallengeSecret::new(challenge.to_vec())
                    .map_err(|e| StoreError::Corrupt(format!("challenge secret: {e}")))?;
                Ok(Secrets {
                    challenge,
                    context: get("secret.redemption_context").await?,
                    session: get("secret.session").await?,
                })
            })
            .await
    }
}

/// HMAC-SHA256 of `parts` (each length-prefixed) under `key`.
pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
        // HMAC takes keys of any length; unreachable.
        return [0; 32];
    };
    for part in parts {
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}
