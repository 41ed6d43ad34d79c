//! The PostgreSQL backend, for several blindpass nodes on one database.
//!
//! A `deadpool-postgres` pool with bounded size and timeouts. Every
//! concurrency contract of the traits is decided by PostgreSQL itself:
//! primary keys and a partial unique index, `INSERT … ON CONFLICT`, row locks
//! (`SELECT … FOR UPDATE`) and per-environment advisory locks for key
//! lifecycle changes. Commits are durable (`synchronous_commit` as the server
//! is configured; PostgreSQL's default is on). A lost database surfaces as
//! [`StoreError::Unavailable`]; the pool reconnects when it returns.

mod api_keys;
mod issuer_keys;
mod relays;
mod requests;
mod spends;
pub mod tls;

pub use spends::{GROUPS_IN_FLIGHT, MAX_SPEND_GROUP, SpendCommits};

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use zeroize::Zeroizing;

use crate::{
    ApiKey, ApiKeyStore, Cause, ClaimResult, Environment, IdempotencyBegin, IdempotencyStore, IssuerKey,
    IssuerKeyStore, KeyState, Permission, RateLimitStore, RecordOutcome, Relay, RelayStore, Rewrap, RewrapTarget,
    SettingsStore, Spend, SpendOutcome, SpentTokenStore, StoreError, StoredResponse,
};
use crate::{DurabilityStore, Replication};

/// Schema migrations, applied in order under an advisory lock.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/postgres/0001_initial.sql"),
    include_str!("../migrations/postgres/0002_spent_token_expiry_and_relay_expiry.sql"),
    include_str!("../migrations/postgres/0003_issuer_key_token_types.sql"),
    include_str!("../migrations/postgres/0004_api_key_rate_limits.sql"),
    include_str!("../migrations/postgres/0005_relay_claim_format.sql"),
];

/// Advisory lock ids (first half of the pair) used by blindpass.
const LOCK_MIGRATIONS: i64 = 0x626c_696e_6470_0001;
const LOCK_KEYS: i64 = 0x626c_696e_6470_0002;
const LOCK_PARTITIONS: i64 = 0x626c_696e_6470_0003;
/// One spent-token partition per day of token expiry.
const PARTITION_SECS: i64 = 86_400;
/// Partitions made ahead of the prune horizon (tokens live at most hours).
const PARTITIONS_AHEAD: i64 = 4;

/// Pool and connection settings.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Maximum connections.
    pub max_size: usize,
    /// How long to wait for a connection (pool checkout or connect).
    pub timeout: Duration,
    /// PEM file of the CA that signs the server's certificate (the same as
    /// `sslrootcert=` in the URL; see [`tls`]).
    pub ca_file: Option<PathBuf>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self { max_size: 16, timeout: Duration::from_secs(5), ca_file: None }
    }
}

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// Started by the first spend, on its runtime.
    spends: std::sync::Arc<std::sync::OnceLock<spends::SpendBatcher>>,
    ssl_mode: tls::SslMode,
    another_host: bool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("status", &self.pool.status()).field("ssl_mode", &self.ssl_mode).finish()
    }
}

impl PostgresStore {
    /// Connects to `url` and applies migrations.
    pub async fn connect(url: &str, options: PoolOptions) -> Result<Self, StoreError> {
        let store = Self::connect_without_migrating(url, options)?;
        store.migrate().await?;
        Ok(store)
    }

    /// Builds the pool; connections are made on first use. The URL's
    /// `sslmode` and `sslrootcert` are honoured as libpq does (see [`tls`]).
    pub fn connect_without_migrating(url: &str, options: PoolOptions) -> Result<Self, StoreError> {
        let tls::Prepared { mut config, mode, tls } = tls::prepare(url, options.ca_file.as_deref())?;
        config.connect_timeout(options.timeout);
        let another_host = config.get_hosts().iter().any(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => {
                name != "localhost" && !name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(_) => false,
        });
        let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(options.max_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.timeout))
            .create_timeout(Some(options.timeout))
            .recycle_timeout(Some(options.timeout))
            .build()
            .map_err(|e| StoreError::Other(Cause::while_("building the connection pool", e)))?;
        Ok(Self { pool, spends: std::sync::Arc::default(), ssl_mode: mode, another_host })
    }

    /// The TLS mode connections use.
    pub fn ssl_mode(&self) -> tls::SslMode {
        self.ssl_mode
    }

    /// Whether any host in the URL is reached over the network (not a Unix
    /// socket, `localhost` or a loopback address).
    pub fn connects_to_another_host(&self) -> bool {
        self.another_host
    }

    /// Applies pending migrations (one node at a time) and returns the
    /// schema version.
    pub async fn migrate(&self) -> Result<i64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_MIGRATIONS]).await.map_err(map_err)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await
        .map_err(map_err)?;
        let current: i64 =
            tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[]).await.map_err(map_err)?.get(0);
        if current > MIGRATIONS.len() as i64 {
            return Err(StoreError::Corrupt(
                format!("database schema version {current} is newer than this binary").into(),
            ));
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.batch_execute(sql).await.map_err(map_err)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, EXTRACT(EPOCH FROM now())::BIGINT)",
                &[&(index as i64 + 1)],
            )
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(MIGRATIONS.len() as i64)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    /// The spends' group committer (started on first use).
    fn spend_batcher(&self) -> &spends::SpendBatcher {
        self.spends.get_or_init(|| spends::SpendBatcher::start(self.pool.clone()))
    }

    /// How many group commits the spends took so far (none before the
    /// first spend).
    pub fn spend_commits(&self) -> Option<&SpendCommits> {
        self.spends.get().map(spends::SpendBatcher::commits)
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(map_err)?;
        client.execute(&stmt, params).await.map_err(map_err)
    }

    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(map_err)?;
        client.query(&stmt, params).await.map_err(map_err)
    }
}

fn pool_err(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => map_err(e),
        other => StoreError::Unavailable(Cause::of(other)),
    }
}

fn map_err(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => StoreError::Conflict(Cause::of(e)),
        Some(code)
            if *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || code.code().starts_with("08") =>
        {
            StoreError::Unavailable(Cause::of(e))
        }
        Some(_) => StoreError::Other(Cause::of(e)),
        // No SQLSTATE: an I/O, TLS or protocol failure talking to the
        // server; the cause (e.g. which certificate check failed) is in the
        // source chain.
        None => StoreError::Unavailable(Cause::with_chain(e)),
    }
}

fn corrupt(what: &'static str) -> impl Fn(crate::UnknownName) -> StoreError {
    move |e| StoreError::Corrupt(format!("{what}: {e}").into())
}

fn hash32(bytes: Vec<u8>, what: &str) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt(format!("{what} length").into()))
}

fn permissions_to_text(permissions: &[Permission]) -> String {
    permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(",")
}

/// Schema helpers for tests (feature `testing`): each test run gets a
/// schema of its own on a shared database.
#[cfg(feature = "testing")]
pub mod testing {
    use crate::StoreError;

    /// A fresh schema name for tests (`bp_test_<random>`).
    pub fn random_schema_name() -> String {
        let entropy: &dyn blindpass_entropy::Entropy = &blindpass_entropy::SystemEntropy;
        let n = u64::from_le_bytes(entropy.bytes());
        format!("bp_test_{n:016x}")
    }

    /// `url` with `search_path` set to `schema` (via the `options` startup
    /// parameter), so that several blindpass deployments or test runs can share
    /// one database.
    pub fn url_with_schema(url: &str, schema: &str) -> String {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}options=-csearch_path%3D{schema}")
    }

    /// Creates `schema` on the database at `url` (tests and operators).
    pub async fn create_schema(url: &str, schema: &str) -> Result<(), StoreError> {
        if !schema.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_') {
            return Err(StoreError::Other("schema names are lowercase letters, digits and '_'".into()));
        }
        let store = super::PostgresStore::connect_without_migrating(url, super::PoolOptions::default())?;
        store.execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"), &[]).await.map(drop)
    }

    /// Drops `schema` and everything in it.
    pub async fn drop_schema(url: &str, schema: &str) -> Result<(), StoreError> {
        if !schema.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_') {
            return Err(StoreError::Other("schema names are lowercase letters, digits and '_'".into()));
        }
        let store = super::PostgresStore::connect_without_migrating(url, super::PoolOptions::default())?;
        store.execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"), &[]).await.map(drop)
    }
}
