//! The RFC 9578 issuer directory.

use blindpass_protocol::directory::{DirectoryKey, IssuerDirectory};

use crate::key_source::KeySource;
use crate::lifecycle::Lifecycle;
use crate::{Environment, KeyError, LoadedKey, Service};

impl Service {
    /// The RFC 9578 directory of `environments`, in that order; within each,
    /// the enabled token types in their configured order, and within each
    /// type pending keys first (announced with their future `not-before`),
    /// then the active key, then keys that still verify.
    pub async fn directory(
        &self,
        environments: &[Environment],
        request_uri: &str,
    ) -> Result<IssuerDirectory, KeyError> {
        self.directory_of_keys().of(environments, request_uri).await
    }

    fn directory_of_keys(&self) -> Directory<'_, crate::keyring::Keys<'_>> {
        Directory {
            keys: self.keys(),
            token_types: &self.config().token_types,
            lifecycle: self.lifecycle(),
            now: self.now(),
        }
    }
}

/// The directory over what it needs: keys, the enabled token types, the
/// lifecycle rules and the time.
struct Directory<'a, K> {
    keys: K,
    token_types: &'a [u16],
    lifecycle: Lifecycle,
    now: i64,
}

impl<K: KeySource> Directory<'_, K> {
    async fn of(&self, environments: &[Environment], request_uri: &str) -> Result<IssuerDirectory, KeyError> {
        let mut keys = Vec::new();
        for environment in environments {
            keys.extend(self.keys.keys_of(*environment).await?);
        }
        let types = self.token_types;
        let position = |k: &LoadedKey| environments.iter().position(|e| *e == k.record.environment);
        let type_rank = |k: &LoadedKey| types.iter().position(|t| *t == k.token_type());
        keys.retain(|k| self.lifecycle.is_listed(&k.record, self.now) && type_rank(k).is_some());
        // Stable: environments in the order asked, token types, then lifecycle order.
        keys.sort_by_key(|k| (position(k), type_rank(k), crate::lifecycle::directory_rank(k.record.state)));
        Ok(IssuerDirectory {
            issuer_request_uri: request_uri.to_owned(),
            token_keys: keys.iter().map(|k| k.directory_entry()).collect::<Vec<DirectoryKey>>(),
        })
    }
}
