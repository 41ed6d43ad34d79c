//! The in-process harness every router and service test starts from
//! (feature `testing`, for tests only): a [`Service`] on a fresh SQLite
//! store in a temporary directory, on a manual clock, with its first keys
//! made and loaded.

use std::path::Path;
use std::sync::Arc;

use blindpass_store::sqlite::SqliteStore;

use crate::{Cause, Config, KeyError, ManualClock, Service, StoreError};

/// A service on a store of its own; the store goes with it.
#[derive(Debug)]
pub struct TestNode {
    /// The node.
    pub service: Service,
    /// Its clock, moved by the test.
    pub clock: Arc<ManualClock>,
    /// Where its store lives (removed on drop).
    pub dir: tempfile::TempDir,
}

impl TestNode {
    /// A node with `config` at `now`, on a fresh store, its first keys made
    /// and loaded.
    pub async fn start(config: Config, now: i64) -> Result<TestNode, KeyError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Other(Cause::of(e)))?;
        let clock = Arc::new(ManualClock::new(now));
        let service = on_store(&dir.path().join("db"), Arc::clone(&clock), config).await?;
        Ok(TestNode { service, clock, dir })
    }
}

/// A node on the SQLite store at `path` (made if absent; several nodes may
/// share it), on `clock`, its first keys made and loaded.
pub async fn on_store(path: &Path, clock: Arc<ManualClock>, config: Config) -> Result<Service, KeyError> {
    let store = Arc::new(SqliteStore::open(path).await?);
    let service = Service::new(store, clock, config);
    service.ensure_initial_keys().await?;
    service.reload_keys().await?;
    Ok(service)
}
