//! The RFC 9578 issuer directory.

use blindpass_protocol::directory::{DirectoryKey, IssuerDirectory};

use crate::{Environment, KeyError, LoadedKey, Service};

impl Service {
    /// The RFC 9578 directory of `environments`, in that order; within each,
    /// pending keys first (announced with their future `not-before`), then
    /// the active key, then keys that still verify.
    pub async fn directory(
        &self,
        environments: &[Environment],
        request_uri: &str,
    ) -> Result<IssuerDirectory, KeyError> {
        let now = self.now();
        let mut keys = Vec::new();
        for environment in environments {
            keys.extend(self.keys_of(*environment).await?);
        }
        let position = |k: &LoadedKey| environments.iter().position(|e| *e == k.record.environment);
        let lifecycle = self.lifecycle();
        keys.retain(|k| lifecycle.is_listed(&k.record, now));
        // Stable: environments in the order asked, then lifecycle order.
        keys.sort_by_key(|k| (position(k), crate::lifecycle::directory_rank(k.record.state)));
        Ok(IssuerDirectory {
            issuer_request_uri: request_uri.to_owned(),
            token_keys: keys
                .iter()
                .map(|k| DirectoryKey::type2(&k.public, Some(k.record.not_before.max(0) as u64)))
                .collect(),
        })
    }
}
