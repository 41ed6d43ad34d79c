//! The replication guard: whether a spend this node acknowledges could be
//! lost to a failover. A PostgreSQL primary whose standbys are
//! asynchronous acknowledges commits its standbys may not have; promote one
//! of them and those spends are gone, their tokens redeemable again. The
//! guard reads the primary's replication at start and every few seconds,
//! exposes it in the metrics, warns when commits are exposed and, with
//! `require_synchronous_replication`, makes redemption and readiness refuse
//! (503) until a synchronous standby is attached.

use blindpass_store::Replication;

use crate::metrics::Metrics;
use crate::{Service, Store};

/// What the guard last found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Durability {
    /// Not checked yet, or the last check failed.
    #[default]
    Unknown,
    /// A store with no replicas to fail over to (SQLite).
    Local,
    /// A PostgreSQL primary, with its replication.
    Replicated(Replication),
}

/// Why an acknowledged spend could be lost to a failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unprotected {
    /// The replication has not been read (yet, or the store failed).
    #[error("the store's replication could not be checked")]
    Unknown,
    /// `synchronous_standby_names` is empty: every standby is asynchronous.
    #[error("the database's standbys are asynchronous (synchronous_standby_names is empty)")]
    AsynchronousStandbys,
    /// `synchronous_commit` is `local` or `off`: commits do not wait.
    #[error("the database's commits do not wait for standbys (synchronous_commit is local or off)")]
    CommitsDoNotWait,
    /// Commits would wait, but no synchronous standby is attached (or this
    /// node's role cannot see it: grant it pg_monitor).
    #[error("no synchronous standby is attached to the database")]
    NoSynchronousStandby,
}

impl Durability {
    /// Why an acknowledged spend could be lost, or `None` when it could not.
    pub fn exposure(&self) -> Option<Unprotected> {
        match self {
            Durability::Local => None,
            Durability::Unknown => Some(Unprotected::Unknown),
            Durability::Replicated(r) if r.protects_commits() => None,
            Durability::Replicated(r) if r.synchronous_standby_names.trim().is_empty() => {
                Some(Unprotected::AsynchronousStandbys)
            }
            Durability::Replicated(r)
                if !matches!(r.synchronous_commit.as_str(), "on" | "remote_write" | "remote_apply") =>
            {
                Some(Unprotected::CommitsDoNotWait)
            }
            Durability::Replicated(_) => Some(Unprotected::NoSynchronousStandby),
        }
    }
}

/// What the node last found, shared by every request.
#[derive(Debug, Default)]
pub(crate) struct LastDurability(std::sync::RwLock<Durability>);

impl LastDurability {
    pub(crate) fn get(&self) -> Durability {
        self.0.read().map(|d| d.clone()).unwrap_or_default()
    }

    fn set(&self, durability: Durability) -> Durability {
        let mut last = self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::replace(&mut *last, durability)
    }
}

impl Service {
    fn replication_guard(&self) -> Guard<'_> {
        Guard { store: &**self.store(), metrics: self.metrics(), last: &self.inner.durability }
    }

    /// Reads the store's replication, keeps it for the requests that follow,
    /// updates the metrics, and logs when it changes (a warning while
    /// acknowledged spends are exposed to a failover).
    pub async fn check_replication(&self) -> Durability {
        self.replication_guard().check().await
    }

    /// Why a redemption must be refused now: with
    /// `require_synchronous_replication`, while the last check found
    /// acknowledged spends exposed to a failover.
    pub fn replication_refusal(&self) -> Option<Unprotected> {
        self.config().require_synchronous_replication.then(|| self.inner.durability.get().exposure()).flatten()
    }
}

/// The guard over what it needs: the store, the metrics and the last check.
struct Guard<'a> {
    store: &'a dyn Store,
    metrics: &'a Metrics,
    last: &'a LastDurability,
}

impl Guard<'_> {
    async fn check(&self) -> Durability {
        let now = match self.store.replication().await {
            Ok(None) => Durability::Local,
            Ok(Some(replication)) => Durability::Replicated(replication),
            Err(e) => {
                tracing::warn!(error = %e, "replication guard: the store's replication could not be read");
                Durability::Unknown
            }
        };
        let (standbys, synchronous) = match &now {
            Durability::Replicated(r) => (r.standbys, r.synchronous_standbys),
            _ => (0, 0),
        };
        self.metrics.set_replication(standbys, synchronous, now.exposure().is_none());
        let before = self.last.set(now.clone());
        if before.exposure() != now.exposure() || before == Durability::Unknown {
            match now.exposure() {
                Some(why) => tracing::warn!(
                    standbys,
                    synchronous_standbys = synchronous,
                    "ACKNOWLEDGED SPENDS CAN BE LOST TO A FAILOVER: {why}; a promoted standby may not hold the latest \
                     spends, and their tokens could be redeemed again (see README: PostgreSQL failover)"
                ),
                None => tracing::info!(
                    standbys,
                    synchronous_standbys = synchronous,
                    "replication protects every acknowledged spend"
                ),
            }
        }
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicated(names: &str, commit: &str, synchronous_standbys: u64) -> Durability {
        Durability::Replicated(Replication {
            synchronous_standby_names: names.into(),
            synchronous_commit: commit.into(),
            standbys: 1,
            synchronous_standbys,
        })
    }

    #[test]
    fn each_exposure_has_its_reason() {
        assert_eq!(Durability::Local.exposure(), None, "no replicas: nothing to fail over to");
        assert_eq!(Durability::Unknown.exposure(), Some(Unprotected::Unknown));
        assert_eq!(replicated("*", "on", 1).exposure(), None);
        assert_eq!(replicated("", "on", 0).exposure(), Some(Unprotected::AsynchronousStandbys));
        assert_eq!(replicated("*", "local", 1).exposure(), Some(Unprotected::CommitsDoNotWait));
        assert_eq!(replicated("*", "on", 0).exposure(), Some(Unprotected::NoSynchronousStandby));
    }
}
