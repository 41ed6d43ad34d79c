//! The PostgreSQL backend, for several blindpass nodes on one database.
//!
//! A `deadpool-postgres` pool with bounded size and timeouts. Every
//! concurrency contract of the traits is decided by PostgreSQL itself:
//! primary keys and a partial unique index, `INSERT … ON CONFLICT`, row locks
//! (`SELECT … FOR UPDATE`) and per-environment advisory locks for key
//! lifecycle changes. Commits are durable (`synchronous_commit` as the server
//! is configured; PostgreSQL's default is on). A lost database surfaces as
//! [`StoreError::Unavailable`]; the pool reconnects when it returns.

pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use zeroize::Zeroizing;

use crate::{
    ApiKey, ApiKeyStore, ClaimResult, Environment, IdempotencyBegin, IdempotencyStore, IssuerKey, IssuerKeyStore,
    KeyState, Permission, RateLimitStore, RecordOutcome, Relay, RelayStore, Rewrap, RewrapTarget, SettingsStore, Spend,
    SpendOutcome, SpentTokenStore, StoreError, StoredResponse,
};

/// Schema migrations, applied in order under an advisory lock.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/postgres/0001_initial.sql"),
    include_str!("../migrations/postgres/0002_spent_token_expiry_and_relay_expiry.sql"),
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
            .map_err(|e| StoreError::Other(format!("building the connection pool: {e}")))?;
        Ok(Self { pool, ssl_mode: mode, another_host })
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
            return Err(StoreError::Corrupt(format!("database schema version {current} is newer than this binary")));
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
        self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => map_err(e),
            other => StoreError::Unavailable(other.to_string()),
        })
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

fn map_err(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => StoreError::Conflict(e.to_string()),
        Some(code)
            if *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || code.code().starts_with("08") =>
        {
            StoreError::Unavailable(e.to_string())
        }
        Some(_) => StoreError::Other(e.to_string()),
        // No SQLSTATE: an I/O, TLS or protocol failure talking to the
        // server; the cause (e.g. which certificate check failed) is in the
        // source chain.
        None => StoreError::Unavailable(with_sources(&e)),
    }
}

/// An error and its sources, `: `-separated.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn corrupt(what: &'static str) -> impl Fn(crate::UnknownName) -> StoreError {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

fn hash32(bytes: Vec<u8>, what: &str) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt(format!("{what} length")))
}

fn permissions_to_text(permissions: &[Permission]) -> String {
    permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(",")
}

fn api_key_from_row(r: &tokio_postgres::Row) -> Result<ApiKey, StoreError> {
    let permissions: String = r.get(3);
    Ok(ApiKey {
        id: r.get(0),
        name: r.get(1),
        environment: r.get::<_, String>(2).parse().map_err(corrupt("environment"))?,
        permissions: permissions
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(corrupt("permission")))
            .collect::<Result<_, _>>()?,
        lookup: r.get(4),
        secret_hash: hash32(r.get(5), "secret hash")?,
        created_at: r.get(6),
        revoked_at: r.get(7),
    })
}

const API_KEY_COLUMNS: &str = "id, name, environment, permissions, lookup, secret_hash, created_at, revoked_at";

#[async_trait]
impl ApiKeyStore for PostgresStore {
    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO api_keys (id, name, environment, permissions, lookup, secret_hash, created_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &key.id,
                &key.name,
                &key.environment.as_str(),
                &permissions_to_text(&key.permissions),
                &key.lookup,
                &key.secret_hash.as_slice(),
                &key.created_at,
                &key.revoked_at,
            ],
        )
        .await
        .map(drop)
    }

    async fn api_key_by_lookup(&self, lookup: &str) -> Result<Option<ApiKey>, StoreError> {
        let rows = self.query(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE lookup = $1"), &[&lookup]).await?;
        rows.first().map(api_key_from_row).transpose()
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let rows = self.query(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"), &[]).await?;
        rows.iter().map(api_key_from_row).collect()
    }

    async fn revoke_api_key(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let n = self
            .execute("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1", &[&id, &at])
            .await?;
        Ok(n > 0)
    }
}

const ISSUER_KEY_COLUMNS: &str =
    "id, environment, state, private_pkcs8, not_before, rotated_at, retired_at, created_at";

fn issuer_key_from_row(r: &tokio_postgres::Row) -> Result<IssuerKey, StoreError> {
    Ok(IssuerKey {
        id: r.get(0),
        environment: r.get::<_, String>(1).parse().map_err(corrupt("environment"))?,
        state: r.get::<_, String>(2).parse().map_err(corrupt("key state"))?,
        private_pkcs8: Zeroizing::new(r.get(3)),
        not_before: r.get(4),
        rotated_at: r.get(5),
        retired_at: r.get(6),
        created_at: r.get(7),
    })
}

async fn insert_issuer_key_tx(tx: &tokio_postgres::Transaction<'_>, key: &IssuerKey) -> Result<(), StoreError> {
    tx.execute(
        &format!("INSERT INTO issuer_keys ({ISSUER_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"),
        &[
            &key.id,
            &key.environment.as_str(),
            &key.state.as_str(),
            &key.private_pkcs8.as_slice(),
            &key.not_before,
            &key.rotated_at,
            &key.retired_at,
            &key.created_at,
        ],
    )
    .await
    .map_err(map_err)
    .map(drop)
}

#[async_trait]
impl IssuerKeyStore for PostgresStore {
    async fn insert_issuer_key(&self, key: &IssuerKey) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEYS]).await.map_err(map_err)?;
        insert_issuer_key_tx(&tx, key).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn insert_first_issuer_key(&self, key: &IssuerKey) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        // Serialises key lifecycle changes across nodes.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEYS]).await.map_err(map_err)?;
        let existing: i64 = tx
            .query_one("SELECT COUNT(*) FROM issuer_keys WHERE environment = $1", &[&key.environment.as_str()])
            .await
            .map_err(map_err)?
            .get(0);
        if existing > 0 {
            return Ok(false);
        }
        insert_issuer_key_tx(&tx, key).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn issuer_keys(&self, environment: Option<Environment>) -> Result<Vec<IssuerKey>, StoreError> {
        let env = environment.map(Environment::as_str);
        let rows = self
            .query(
                &format!(
                    "SELECT {ISSUER_KEY_COLUMNS} FROM issuer_keys
                     WHERE $1::TEXT IS NULL OR environment = $1 ORDER BY created_at, id"
                ),
                &[&env],
            )
            .await?;
        rows.iter().map(issuer_key_from_row).collect()
    }

    async fn issuer_key_metadata(&self, environment: Option<Environment>) -> Result<Vec<IssuerKey>, StoreError> {
        let env = environment.map(Environment::as_str);
        let rows = self
            .query(
                "SELECT id, environment, state, ''::BYTEA, not_before, rotated_at, retired_at, created_at
                 FROM issuer_keys WHERE $1::TEXT IS NULL OR environment = $1 ORDER BY created_at, id",
                &[&env],
            )
            .await?;
        rows.iter().map(issuer_key_from_row).collect()
    }

    async fn issuer_key_private(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.query("SELECT private_pkcs8 FROM issuer_keys WHERE id = $1", &[&id]).await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    async fn rotate_issuer_key(&self, new_key: &IssuerKey, at: i64) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEYS]).await.map_err(map_err)?;
        if new_key.state == KeyState::Active {
            tx.execute(
                "UPDATE issuer_keys SET state = 'verify-only', rotated_at = $2 WHERE environment = $1 AND state = 'active'",
                &[&new_key.environment.as_str(), &at],
            )
            .await
            .map_err(map_err)?;
        }
        insert_issuer_key_tx(&tx, new_key).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn retire_issuer_key(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        // The same lock as rotation and promotion: a promotion in flight
        // cannot turn a key retired meanwhile back into the active one.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEYS]).await.map_err(map_err)?;
        let n = tx
            .execute(
                "UPDATE issuer_keys SET state = 'retired', retired_at = COALESCE(retired_at, $2) WHERE id = $1",
                &[&id, &at],
            )
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(n > 0)
    }

    async fn promote_due_keys(&self, now: i64) -> Result<u64, StoreError> {
        // Cheap check first: almost always there is nothing to promote.
        let due = self
            .query("SELECT 1 FROM issuer_keys WHERE state = 'pending' AND not_before <= $1 LIMIT 1", &[&now])
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEYS]).await.map_err(map_err)?;
        let rows = tx
            .query(
                "SELECT DISTINCT ON (environment) environment, id FROM issuer_keys
                 WHERE state = 'pending' AND not_before <= $1
                 ORDER BY environment, not_before DESC, id DESC",
                &[&now],
            )
            .await
            .map_err(map_err)?;
        let mut promoted = 0;
        for row in &rows {
            let (environment, id): (String, String) = (row.get(0), row.get(1));
            // Only a key still pending moves, never a retired one; the
            // current active key steps down first (one active per environment).
            tx.execute(
                "UPDATE issuer_keys SET state = 'verify-only', rotated_at = $3
                 WHERE environment = $1 AND id <> $2
                   AND (state = 'active' OR (state = 'pending' AND not_before <= $3))
                   AND EXISTS (SELECT 1 FROM issuer_keys p WHERE p.id = $2 AND p.state = 'pending')",
                &[&environment, &id, &now],
            )
            .await
            .map_err(map_err)?;
            promoted += tx
                .execute("UPDATE issuer_keys SET state = 'active' WHERE id = $1 AND state = 'pending'", &[&id])
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(promoted)
    }
}

#[async_trait]
impl IdempotencyStore for PostgresStore {
    async fn idempotency_begin(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &[u8; 32],
        now: i64,
        ttl_secs: i64,
        stale_after_secs: i64,
    ) -> Result<IdempotencyBegin, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        let fp = fingerprint.as_slice();
        let inserted = tx
            .execute(
                "INSERT INTO idempotency (scope, key, fingerprint, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (scope, key) DO NOTHING",
                &[&scope, &key, &fp, &now],
            )
            .await
            .map_err(map_err)?;
        let outcome = if inserted == 1 {
            IdempotencyBegin::Started
        } else {
            let row = tx
                .query_one(
                    "SELECT fingerprint, created_at, status, content_type, body FROM idempotency
                     WHERE scope = $1 AND key = $2 FOR UPDATE",
                    &[&scope, &key],
                )
                .await
                .map_err(map_err)?;
            let (stored_fp, created_at, status): (Vec<u8>, i64, Option<i32>) = (row.get(0), row.get(1), row.get(2));
            if created_at + ttl_secs <= now {
                tx.execute(
                    "UPDATE idempotency SET fingerprint = $3, created_at = $4, status = NULL, content_type = NULL,
                     body = NULL WHERE scope = $1 AND key = $2",
                    &[&scope, &key, &fp, &now],
                )
                .await
                .map_err(map_err)?;
                IdempotencyBegin::Started
            } else if stored_fp != fp {
                IdempotencyBegin::Mismatch
            } else if let Some(status) = status {
                IdempotencyBegin::Completed(StoredResponse {
                    status: u16::try_from(status).map_err(|_| StoreError::Corrupt("status".into()))?,
                    content_type: row.get::<_, Option<String>>(3).unwrap_or_default(),
                    body: row.get::<_, Option<Vec<u8>>>(4).unwrap_or_default(),
                })
            } else if created_at + stale_after_secs <= now {
                tx.execute(
                    "UPDATE idempotency SET created_at = $3 WHERE scope = $1 AND key = $2",
                    &[&scope, &key, &now],
                )
                .await
                .map_err(map_err)?;
                IdempotencyBegin::Started
            } else {
                IdempotencyBegin::InFlight
            }
        };
        tx.commit().await.map_err(map_err)?;
        Ok(outcome)
    }

    async fn idempotency_complete(&self, scope: &str, key: &str, response: &StoredResponse) -> Result<(), StoreError> {
        self.execute(
            "UPDATE idempotency SET status = $3, content_type = $4, body = $5
             WHERE scope = $1 AND key = $2 AND status IS NULL",
            &[&scope, &key, &i32::from(response.status), &response.content_type, &response.body],
        )
        .await
        .map(drop)
    }

    async fn idempotency_abandon(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM idempotency WHERE scope = $1 AND key = $2 AND status IS NULL", &[&scope, &key])
            .await
            .map(drop)
    }

    async fn idempotency_prune(&self, before: i64) -> Result<u64, StoreError> {
        self.execute("DELETE FROM idempotency WHERE created_at < $1", &[&before]).await
    }
}

#[async_trait]
impl RateLimitStore for PostgresStore {
    async fn rate_limit_hit(&self, bucket: &str, window_start: i64) -> Result<u64, StoreError> {
        let rows = self
            .query(
                "INSERT INTO rate_limits (bucket, window_start, count) VALUES ($1, $2, 1)
                 ON CONFLICT (bucket, window_start) DO UPDATE SET count = rate_limits.count + 1
                 RETURNING count",
                &[&bucket, &window_start],
            )
            .await?;
        let count: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
        Ok(count.max(0) as u64)
    }

    async fn rate_limit_prune(&self, before: i64) -> Result<u64, StoreError> {
        self.execute("DELETE FROM rate_limits WHERE window_start < $1", &[&before]).await
    }
}

#[async_trait]
impl SettingsStore for PostgresStore {
    async fn setting_get_or_insert(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.execute(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &value],
        )
        .await?;
        let rows = self.query("SELECT value FROM settings WHERE name = $1", &[&name]).await?;
        rows.first().map(|r| r.get(0)).ok_or_else(|| StoreError::Corrupt(format!("setting {name} vanished")))
    }

    async fn settings_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows = self.query("SELECT name, value FROM settings ORDER BY name", &[]).await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
            .filter(|(name, _)| name.starts_with(prefix))
            .collect())
    }

    async fn rewrap(&self, changes: &[Rewrap]) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEYS]).await.map_err(map_err)?;
        for change in changes {
            let updated = match &change.target {
                RewrapTarget::IssuerKey(id) => {
                    tx.execute(
                        "UPDATE issuer_keys SET private_pkcs8 = $3 WHERE id = $1 AND private_pkcs8 = $2",
                        &[id, &change.old, &change.new],
                    )
                    .await
                }
                RewrapTarget::Setting(name) => {
                    tx.execute(
                        "UPDATE settings SET value = $3 WHERE name = $1 AND value = $2",
                        &[name, &change.old, &change.new],
                    )
                    .await
                }
            }
            .map_err(map_err)?;
            if updated != 1 {
                return Err(StoreError::Conflict(format!("{:?} changed during the rewrap", change.target)));
            }
        }
        tx.commit().await.map_err(map_err)
    }
}

fn relay_from_row(r: &tokio_postgres::Row) -> Result<Relay, StoreError> {
    let passed: Option<bool> = r.get(6);
    let result_at: Option<i64> = r.get(8);
    let result = match (passed, result_at) {
        (Some(passed), Some(recorded_at)) => Some(ClaimResult {
            passed,
            methodology_json: r.get::<_, Option<String>>(7).unwrap_or_else(|| "[]".into()),
            recorded_at,
        }),
        _ => None,
    };
    Ok(Relay {
        token: r.get(0),
        secret_hash: hash32(r.get(1), "relay secret hash")?,
        environment: r.get::<_, String>(2).parse().map_err(corrupt("environment"))?,
        claim_type: r.get(3),
        encryption_key_der: r.get(4),
        created_at: r.get(5),
        expires_at: r.get(9),
        result,
    })
}

#[async_trait]
impl RelayStore for PostgresStore {
    async fn insert_relay(&self, relay: &Relay) -> Result<(), StoreError> {
        let (passed, methodology, at) = match &relay.result {
            Some(r) => (Some(r.passed), Some(r.methodology_json.clone()), Some(r.recorded_at)),
            None => (None, None, None),
        };
        self.execute(
            "INSERT INTO relays (token, secret_hash, environment, claim_type, encryption_key_der, created_at,
                                 result_passed, methodology, result_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &relay.token,
                &relay.secret_hash.as_slice(),
                &relay.environment.as_str(),
                &relay.claim_type,
                &relay.encryption_key_der,
                &relay.created_at,
                &passed,
                &methodology,
                &at,
                &relay.expires_at,
            ],
        )
        .await
        .map(drop)
    }

    async fn relay_by_token(&self, token: &str) -> Result<Option<Relay>, StoreError> {
        let rows = self
            .query(
                "SELECT token, secret_hash, environment, claim_type, encryption_key_der, created_at,
                        result_passed, methodology, result_at, expires_at FROM relays WHERE token = $1",
                &[&token],
            )
            .await?;
        rows.first().map(relay_from_row).transpose()
    }

    async fn record_relay_result(&self, token: &str, result: &ClaimResult) -> Result<RecordOutcome, StoreError> {
        let n = self
            .execute(
                "UPDATE relays SET result_passed = $2, methodology = $3, result_at = $4
                 WHERE token = $1 AND result_passed IS NULL",
                &[&token, &result.passed, &result.methodology_json, &result.recorded_at],
            )
            .await?;
        if n == 1 {
            return Ok(RecordOutcome::Recorded);
        }
        let exists = !self.query("SELECT 1 FROM relays WHERE token = $1", &[&token]).await?.is_empty();
        Ok(if exists { RecordOutcome::AlreadyRecorded } else { RecordOutcome::NotFound })
    }

    async fn prune_relays(&self, now: i64) -> Result<u64, StoreError> {
        self.execute("DELETE FROM relays WHERE expires_at <= $1", &[&now]).await
    }
}

#[async_trait]
impl SpentTokenStore for PostgresStore {
    async fn spend_token(&self, spend: &Spend) -> Result<SpendOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO spent_tokens (key_id, nonce, expires_at, relay_token, spent_at, claim_payload)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (key_id, nonce, expires_at) DO NOTHING",
            )
            .await
            .map_err(map_err)?;
        let inserted = tx
            .execute(
                &insert,
                &[
                    &spend.key_id,
                    &spend.nonce,
                    &spend.expires_at,
                    &spend.relay_token,
                    &spend.spent_at,
                    &spend.claim_payload,
                ],
            )
            .await
            .map_err(map_err)?;
        let outcome = if inserted == 1 {
            if let Some(done) = &spend.idempotency {
                tx.execute(
                    "UPDATE idempotency SET status = $3, content_type = $4, body = $5
                     WHERE scope = $1 AND key = $2 AND status IS NULL",
                    &[
                        &done.scope,
                        &done.key,
                        &i32::from(done.response.status),
                        &done.response.content_type,
                        &done.response.body,
                    ],
                )
                .await
                .map_err(map_err)?;
            }
            SpendOutcome::Spent
        } else {
            let row = tx
                .query_one(
                    "SELECT relay_token, claim_payload FROM spent_tokens
                     WHERE key_id = $1 AND nonce = $2 AND expires_at = $3",
                    &[&spend.key_id, &spend.nonce, &spend.expires_at],
                )
                .await
                .map_err(map_err)?;
            let relay: String = row.get(0);
            match row.get::<_, Option<String>>(1) {
                Some(claim_payload) if relay == spend.relay_token => SpendOutcome::SpentHere { claim_payload },
                _ => SpendOutcome::SpentElsewhere,
            }
        };
        #[cfg(debug_assertions)]
        crate::fault::before_commit("spend");
        tx.commit().await.map_err(map_err)?;
        #[cfg(debug_assertions)]
        crate::fault::after_commit("spend");
        Ok(outcome)
    }

    async fn prune_spent_tokens(&self, expired_before: i64) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(map_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_PARTITIONS]).await.map_err(map_err)?;
        // Partitions ahead, so that new spends land in a partition that can
        // later be dropped whole.
        let first = expired_before.div_euclid(PARTITION_SECS);
        for day in first..=first + PARTITIONS_AHEAD {
            let (from, to) = (day * PARTITION_SECS, (day + 1) * PARTITION_SECS);
            let name = format!("spent_tokens_d{day}");
            let exists: bool =
                tx.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name]).await.map_err(map_err)?.get(0);
            if exists {
                continue;
            }
            // A partition cannot be attached over rows the default partition
            // already holds for its range; those days stay in the default.
            let clash: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM spent_tokens_default WHERE expires_at >= $1 AND expires_at < $2)",
                    &[&from, &to],
                )
                .await
                .map_err(map_err)?
                .get(0);
            if !clash {
                tx.batch_execute(&format!(
                    "CREATE TABLE {name} PARTITION OF spent_tokens FOR VALUES FROM ({from}) TO ({to})"
                ))
                .await
                .map_err(map_err)?;
            }
        }
        // Whole partitions whose every token expired before the horizon.
        let partitions = tx
            .query(
                "SELECT c.relname::TEXT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'spent_tokens'::regclass AND c.relname::TEXT LIKE 'spent_tokens_d%'",
                &[],
            )
            .await
            .map_err(map_err)?;
        let mut pruned = 0u64;
        for row in partitions {
            let name: String = row.get(0);
            let Some(day) = name.strip_prefix("spent_tokens_d").and_then(|d| d.parse::<i64>().ok()) else { continue };
            if (day + 1) * PARTITION_SECS <= expired_before {
                let count: i64 =
                    tx.query_one(&format!("SELECT count(*) FROM {name}"), &[]).await.map_err(map_err)?.get(0);
                tx.batch_execute(&format!("DROP TABLE {name}")).await.map_err(map_err)?;
                pruned += count.max(0) as u64;
            }
        }
        // Rows of days that had no partition, and the partial day.
        pruned +=
            tx.execute("DELETE FROM spent_tokens WHERE expires_at < $1", &[&expired_before]).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(pruned)
    }
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
