//! Readiness: whether this node can answer the requests it exists for. The
//! store must answer within a bound, and every enabled token type must have a
//! key that issues now, in both environments.

use std::time::Duration;

use crate::{Environment, Service};

/// How long the store has to answer a readiness check.
pub const READINESS_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a node is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// The store did not answer in time.
    #[error("the store did not answer within {0:?}")]
    StoreTimeout(Duration),
    /// The store answered with an error (its message, for operators).
    #[error("the store failed: {0}")]
    Store(String),
    /// No key of `token_type` issues in `environment` now.
    #[error("no active issuer key of token type {token_type} in {environment}")]
    NoActiveKey {
        /// The environment.
        environment: Environment,
        /// The token type.
        token_type: u16,
    },
}

impl Service {
    /// Ready when the store answers a fresh read of the issuer keys within
    /// [`READINESS_STORE_TIMEOUT`] and, in both environments, every token
    /// type this node issues has a key that issues now.
    pub async fn readiness(&self) -> Result<(), NotReady> {
        match tokio::time::timeout(READINESS_STORE_TIMEOUT, self.reload_keys()).await {
            Err(_) => return Err(NotReady::StoreTimeout(READINESS_STORE_TIMEOUT)),
            Ok(Err(e)) => return Err(NotReady::Store(e.to_string())),
            Ok(Ok(_)) => {}
        }
        let now = self.now();
        for environment in [Environment::Sandbox, Environment::Production] {
            let keys = self.keys_of(environment).await.map_err(|e| NotReady::Store(e.to_string()))?;
            for &token_type in &self.config().token_types {
                if !keys.iter().any(|k| k.token_type() == token_type && k.issues_at(now)) {
                    return Err(NotReady::NoActiveKey { environment, token_type });
                }
            }
        }
        Ok(())
    }
}
