//! Readiness: whether this node can answer the requests it exists for. The
//! store must answer within a bound, every enabled token type must have a
//! key that issues now, in both environments, and each type-2 key that
//! issues must be able to sign (its PKCS#11 token, if it has one, answers).

use std::time::Duration;
use tokio::sync::Mutex;

use crate::keyring::Keys;
use crate::metrics::Metrics;
use crate::{Clock, Environment, Service};

/// How long the store has to answer a readiness check.
pub const READINESS_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a node is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// The store did not answer in time.
    #[error("the store did not answer within {0:?}")]
    StoreTimeout(Duration),
    /// The store answered with an error (its message, for operators' logs;
    /// [`NotReady::public_reason`] leaves it out).
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
    /// With `require_synchronous_replication`: a spend acknowledged now
    /// could be lost to a failover.
    #[error("redemptions are paused: {0}")]
    Unprotected(crate::replication::Unprotected),
    /// The type-2 key that issues in `environment` cannot sign now (its
    /// PKCS#11 token is away, or this node has none).
    #[error("the issuing type-2 key in {environment} cannot sign: {reason}")]
    SignerUnavailable {
        /// The environment.
        environment: Environment,
        /// Why.
        reason: String,
    },
}

/// The latest check and the second it was made: probes within the same
/// second share it, and the check is single-flight (probes that arrive
/// while one runs wait for it and share its result), so a flood of probes
/// (the endpoint is public) costs the store one check a second.
#[derive(Default)]
pub(crate) struct LastCheck(Mutex<Option<(i64, Result<(), NotReady>)>>);

impl NotReady {
    /// The reason as an unauthenticated caller may read it: the store's own
    /// error text (hosts, schema names) stays in the log.
    pub fn public_reason(&self) -> String {
        match self {
            NotReady::Store(_) => "the store failed".to_owned(),
            other => other.to_string(),
        }
    }
}

impl Service {
    fn readiness_check(&self) -> Readiness<'_> {
        Readiness {
            keys: self.keys(),
            token_types: &self.config().token_types,
            metrics: self.metrics(),
            last: &self.inner.readiness,
            refusal: self.replication_refusal(),
            clock: &*self.inner.clock,
        }
    }

    /// [`Service::readiness`], at most once a second: a probe in the same
    /// second as the previous check gets its result.
    pub async fn readiness_cached(&self) -> Result<(), NotReady> {
        self.readiness_check().cached().await
    }

    /// Ready when the store answers a fresh read of the issuer keys within
    /// [`READINESS_STORE_TIMEOUT`] and, in both environments, every token
    /// type this node issues has a key that issues now.
    pub async fn readiness(&self) -> Result<(), NotReady> {
        self.readiness_check().check().await
    }
}

/// Readiness over what it needs: the key ring (read fresh from the store),
/// the enabled token types, the metrics it counts checks in, the latest
/// check, and the clock.
struct Readiness<'a> {
    keys: Keys<'a>,
    token_types: &'a [u16],
    metrics: &'a Metrics,
    last: &'a LastCheck,
    /// Why redemptions are refused now (the replication guard).
    refusal: Option<crate::replication::Unprotected>,
    clock: &'a dyn Clock,
}

impl Readiness<'_> {
    async fn cached(&self) -> Result<(), NotReady> {
        let mut last = self.last.0.lock().await;
        let now = self.clock.now();
        if let Some((_, result)) = last.as_ref().filter(|(at, _)| *at == now) {
            return result.clone();
        }
        let result = self.check().await;
        self.metrics.readiness_check();
        *last = Some((self.clock.now(), result.clone()));
        result
    }

    async fn check(&self) -> Result<(), NotReady> {
        match tokio::time::timeout(READINESS_STORE_TIMEOUT, self.keys.reload()).await {
            Err(_) => return Err(NotReady::StoreTimeout(READINESS_STORE_TIMEOUT)),
            Ok(Err(e)) => return Err(NotReady::Store(e.to_string())),
            Ok(Ok(_)) => {}
        }
        if let Some(why) = self.refusal {
            return Err(NotReady::Unprotected(why));
        }
        let now = self.clock.now();
        for environment in [Environment::Sandbox, Environment::Production] {
            let keys = self.keys.keys_of(environment).await.map_err(|e| NotReady::Store(e.to_string()))?;
            for &token_type in self.token_types {
                if !keys.iter().any(|k| k.token_type() == token_type && k.issues_at(now)) {
                    return Err(NotReady::NoActiveKey { environment, token_type });
                }
            }
            for key in keys.iter().filter(|k| k.issues_at(now)) {
                if let crate::KeyMaterial::BlindRsa { signer, .. } = &key.material {
                    can_sign(std::sync::Arc::clone(signer))
                        .await
                        .map_err(|reason| NotReady::SignerUnavailable { environment, reason })?;
                }
            }
        }
        Ok(())
    }
}

/// Signs a fixed message representative (2) with `signer`, fault check
/// included, within [`READINESS_STORE_TIMEOUT`]: a key in a PKCS#11 token
/// that is away fails here before it fails a client.
async fn can_sign(signer: std::sync::Arc<dyn crate::RsaSigner>) -> Result<(), String> {
    let task = tokio::task::spawn_blocking(move || {
        let mut m = vec![0u8; signer.public_key().modulus_len()];
        if let Some(last) = m.last_mut() {
            *last = 2;
        }
        signer.rsasp1(&m)
    });
    match tokio::time::timeout(READINESS_STORE_TIMEOUT, task).await {
        Ok(Ok(Ok(_))) => Ok(()),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Err(e)) => Err(format!("the signing task failed: {e}")),
        Err(_) => Err(format!("no signature within {READINESS_STORE_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_reason_leaves_the_store_error_out() {
        let e = NotReady::Store("connection to db.internal:5432 refused".into());
        assert_eq!(e.public_reason(), "the store failed");
        assert!(e.to_string().contains("db.internal"), "the log keeps it");
        let e = NotReady::NoActiveKey { environment: Environment::Sandbox, token_type: 5 };
        assert_eq!(e.public_reason(), e.to_string());
    }
}
