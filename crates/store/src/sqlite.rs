//! The embedded SQLite backend.
//!
//! One connection in WAL mode with `synchronous = FULL`: a write is on disk
//! before the call returns, so a response sent after it is backed by durable
//! state. The connection lives on its own thread behind a bounded queue, so
//! calls never block async workers and a burst never costs a thread per call.
//! Several processes (a server and the CLI) may share one database file;
//! SQLite's locking and a busy timeout serialise their writes.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use zeroize::Zeroizing;

use crate::{
    ApiKey, ApiKeyStore, ClaimResult, Environment, IdempotencyBegin, IdempotencyStore, IssuerKey, IssuerKeyStore,
    KeyState, Permission, RateLimitStore, RecordOutcome, Relay, RelayStore, Rewrap, RewrapTarget, SettingsStore, Spend,
    SpendOutcome, SpentTokenStore, StoreError, StoredResponse,
};

/// Schema migrations, applied in order; the index + 1 is the version.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_initial.sql"),
    include_str!("../migrations/sqlite/0002_spent_token_expiry_and_relay_expiry.sql"),
];

/// How many store calls may wait for the connection thread. A burst beyond
/// this is refused at once (`StoreError::Unavailable`, a 503 with
/// `Retry-After` at the edge) instead of queueing into request timeouts.
pub const QUEUE_CAPACITY: usize = 256;

/// One store call, run on the connection thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The SQLite store: one connection owned by one thread, fed through a
/// bounded queue. SQLite has a single writer anyway; one thread means a burst
/// costs no threads (the old design parked one blocking-pool thread per
/// waiting call, up to hundreds), and the bound sheds load early.
#[derive(Clone)]
pub struct SqliteStore {
    jobs: std::sync::mpsc::SyncSender<Job>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies
    /// migrations.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let opened = path.clone();
        let mut conn = tokio::task::spawn_blocking(move || open_blocking(&opened))
            .await
            .map_err(|e| StoreError::Other(format!("open task failed: {e}")))??;
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("blindpass-sqlite".into())
            .spawn(move || {
                // Ends when the last handle to the store is dropped.
                for job in queue {
                    // A panicking job must not take the connection thread
                    // down with it: its caller sees a dropped reply.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conn)));
                }
            })
            .map_err(|e| StoreError::Other(format!("starting the SQLite thread: {e}")))?;
        Ok(Self { jobs, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection thread. Once queued, `f` runs to the end
    /// even if the caller stops waiting (a client hanging up cannot cut a
    /// transaction in half).
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(f(conn));
        });
        self.jobs.try_send(job).map_err(|e| match e {
            std::sync::mpsc::TrySendError::Full(_) => {
                StoreError::Unavailable(format!("more than {QUEUE_CAPACITY} store calls waiting"))
            }
            std::sync::mpsc::TrySendError::Disconnected(_) => StoreError::Other("the SQLite thread stopped".into()),
        })?;
        answer.await.map_err(|_| StoreError::Other("a store call panicked".into()))?
    }
}

fn open_blocking(path: &Path) -> Result<Connection, StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    restrict_database_files(path)?;
    let mut conn = Connection::open(path).map_err(map_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(map_err)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(map_err)?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(map_err)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(map_err)?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Creates `dir` (and missing parents) with mode 0700, whatever the umask.
/// An existing directory is left as it is: it may be shared (a home directory,
/// `/tmp`); the files in it are what the store restricts to mode 0600.
pub fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    let unavailable = |e: std::io::Error| StoreError::Unavailable(format!("creating {}: {e}", dir.display()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(unavailable)?;
        // The umask can only remove bits from 0700, but be explicit.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(unavailable)?;
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).map_err(unavailable)?;
    Ok(())
}

/// Makes the database file exist with mode 0600 and forces 0600 on it and on
/// any `-wal`, `-shm` or `-journal` beside it, whatever the umask. SQLite
/// creates its `-wal` and `-shm` files with the database file's mode, so a
/// 0600 database keeps them 0600 too.
fn restrict_database_files(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let unavailable = |p: &Path, e: std::io::Error| StoreError::Unavailable(format!("{}: {e}", p.display()));
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(unavailable(path, e)),
        }
        let mut files = vec![path.to_path_buf()];
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            files.push(name.into());
        }
        for file in files {
            match std::fs::metadata(&file) {
                Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| unavailable(&file, e))?;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(unavailable(&file, e)),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .map_err(map_err)?;
    let current: i64 =
        tx.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |r| r.get(0)).map_err(map_err)?;
    if current > MIGRATIONS.len() as i64 {
        return Err(StoreError::Corrupt(format!("database schema version {current} is newer than this binary")));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql).map_err(map_err)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, strftime('%s','now'))",
            params![index as i64 + 1],
        )
        .map_err(map_err)?;
    }
    tx.commit().map_err(map_err)
}

fn map_err(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Unavailable(e.to_string()),
        Some(ErrorCode::ConstraintViolation) => StoreError::Conflict(e.to_string()),
        Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly | ErrorCode::DiskFull | ErrorCode::SystemIoFailure) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Other(e.to_string()),
    }
}

fn corrupt(what: &str) -> impl Fn(crate::UnknownName) -> StoreError + '_ {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

fn permissions_to_text(permissions: &[Permission]) -> String {
    permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(",")
}

fn permissions_from_text(text: &str) -> Result<Vec<Permission>, StoreError> {
    text.split(',').filter(|s| !s.is_empty()).map(|s| s.parse().map_err(corrupt("permission"))).collect()
}

type ApiKeyRow = (String, Option<String>, String, String, String, Vec<u8>, i64, Option<i64>);

fn api_key_from_row(row: ApiKeyRow) -> Result<ApiKey, StoreError> {
    let (id, name, environment, permissions, lookup, hash, created_at, revoked_at) = row;
    Ok(ApiKey {
        id,
        name,
        environment: environment.parse().map_err(corrupt("environment"))?,
        permissions: permissions_from_text(&permissions)?,
        lookup,
        secret_hash: hash.try_into().map_err(|_| StoreError::Corrupt("secret hash length".into()))?,
        created_at,
        revoked_at,
    })
}

const API_KEY_COLUMNS: &str = "id, name, environment, permissions, lookup, secret_hash, created_at, revoked_at";

fn read_api_key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
}

#[async_trait]
impl ApiKeyStore for SqliteStore {
    async fn insert_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let key = key.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO api_keys (id, name, environment, permissions, lookup, secret_hash, created_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    key.id,
                    key.name,
                    key.environment.as_str(),
                    permissions_to_text(&key.permissions),
                    key.lookup,
                    key.secret_hash.to_vec(),
                    key.created_at,
                    key.revoked_at
                ],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn api_key_by_lookup(&self, lookup: &str) -> Result<Option<ApiKey>, StoreError> {
        let lookup = lookup.to_owned();
        self.with(move |c| {
            let row = c
                .prepare_cached(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE lookup = ?1"))
                .map_err(map_err)?
                .query_row(params![lookup], read_api_key_row)
                .optional()
                .map_err(map_err)?;
            row.map(api_key_from_row).transpose()
        })
        .await
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"))
                .map_err(map_err)?;
            let rows = stmt.query_map([], read_api_key_row).map_err(map_err)?;
            rows.map(|r| r.map_err(map_err).and_then(api_key_from_row)).collect()
        })
        .await
    }

    async fn revoke_api_key(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.with(move |c| {
            let changed = c
                .execute("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1", params![id, at])
                .map_err(map_err)?;
            Ok(changed > 0)
        })
        .await
    }
}

type IssuerKeyRow = (String, String, String, Vec<u8>, i64, Option<i64>, Option<i64>, i64);

const ISSUER_KEY_COLUMNS: &str =
    "id, environment, state, private_pkcs8, not_before, rotated_at, retired_at, created_at";

/// [`ISSUER_KEY_COLUMNS`] with an empty private key.
const ISSUER_KEY_METADATA_COLUMNS: &str = "id, environment, state, X'', not_before, rotated_at, retired_at, created_at";

/// Keys of `environment` (or all), oldest first, selecting `columns`.
fn select_issuer_keys(
    c: &Connection,
    environment: Option<Environment>,
    columns: &str,
) -> Result<Vec<IssuerKey>, StoreError> {
    let env = environment.map(Environment::as_str);
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {columns} FROM issuer_keys WHERE ?1 IS NULL OR environment = ?1 ORDER BY created_at, id"
        ))
        .map_err(map_err)?;
    let rows = stmt
        .query_map(params![env], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
        })
        .map_err(map_err)?;
    rows.map(|r| r.map_err(map_err).and_then(issuer_key_from_row)).collect()
}

fn issuer_key_from_row(row: IssuerKeyRow) -> Result<IssuerKey, StoreError> {
    let (id, environment, state, pkcs8, not_before, rotated_at, retired_at, created_at) = row;
    Ok(IssuerKey {
        id,
        environment: environment.parse().map_err(corrupt("environment"))?,
        state: state.parse().map_err(corrupt("key state"))?,
        private_pkcs8: Zeroizing::new(pkcs8),
        not_before,
        rotated_at,
        retired_at,
        created_at,
    })
}

fn insert_issuer_key_tx(c: &rusqlite::Transaction<'_>, key: &IssuerKey) -> Result<(), StoreError> {
    c.execute(
        &format!("INSERT INTO issuer_keys ({ISSUER_KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
        params![
            key.id,
            key.environment.as_str(),
            key.state.as_str(),
            key.private_pkcs8.as_slice(),
            key.not_before,
            key.rotated_at,
            key.retired_at,
            key.created_at
        ],
    )
    .map_err(map_err)?;
    Ok(())
}

#[async_trait]
impl IssuerKeyStore for SqliteStore {
    async fn insert_issuer_key(&self, key: &IssuerKey) -> Result<(), StoreError> {
        let key = key.clone();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            insert_issuer_key_tx(&tx, &key)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn insert_first_issuer_key(&self, key: &IssuerKey) -> Result<bool, StoreError> {
        let key = key.clone();
        self.with(move |c| {
            // IMMEDIATE takes the write lock first, so the check and the
            // insert are one atomic step across processes.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            let existing: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM issuer_keys WHERE environment = ?1",
                    params![key.environment.as_str()],
                    |r| r.get(0),
                )
                .map_err(map_err)?;
            if existing > 0 {
                return Ok(false);
            }
            insert_issuer_key_tx(&tx, &key)?;
            tx.commit().map_err(map_err)?;
            Ok(true)
        })
        .await
    }

    async fn issuer_keys(&self, environment: Option<Environment>) -> Result<Vec<IssuerKey>, StoreError> {
        self.with(move |c| select_issuer_keys(c, environment, ISSUER_KEY_COLUMNS)).await
    }

    async fn issuer_key_metadata(&self, environment: Option<Environment>) -> Result<Vec<IssuerKey>, StoreError> {
        self.with(move |c| select_issuer_keys(c, environment, ISSUER_KEY_METADATA_COLUMNS)).await
    }

    async fn issuer_key_private(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let id = id.to_owned();
        self.with(move |c| {
            c.query_row("SELECT private_pkcs8 FROM issuer_keys WHERE id = ?1", params![id], |r| r.get(0))
                .optional()
                .map_err(map_err)
        })
        .await
    }

    async fn rotate_issuer_key(&self, new_key: &IssuerKey, at: i64) -> Result<(), StoreError> {
        let key = new_key.clone();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            if key.state == KeyState::Active {
                tx.execute(
                    "UPDATE issuer_keys SET state = 'verify-only', rotated_at = ?2
                     WHERE environment = ?1 AND state = 'active'",
                    params![key.environment.as_str(), at],
                )
                .map_err(map_err)?;
            }
            insert_issuer_key_tx(&tx, &key)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn promote_due_keys(&self, now: i64) -> Result<u64, StoreError> {
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            let due: Vec<(String, String)> = {
                let mut stmt = tx
                    .prepare(
                        "SELECT environment, id FROM issuer_keys k
                         WHERE state = 'pending' AND not_before <= ?1
                           AND NOT EXISTS (SELECT 1 FROM issuer_keys n WHERE n.environment = k.environment
                                           AND n.state = 'pending' AND n.not_before <= ?1
                                           AND (n.not_before > k.not_before
                                                OR (n.not_before = k.not_before AND n.id > k.id)))",
                    )
                    .map_err(map_err)?;
                let rows = stmt.query_map(params![now], |r| Ok((r.get(0)?, r.get(1)?))).map_err(map_err)?;
                rows.collect::<Result<_, _>>().map_err(map_err)?
            };
            let mut promoted = 0;
            for (environment, id) in &due {
                // Only a key still pending moves, never a retired one; older
                // due pending keys and the current active key step down first.
                tx.execute(
                    "UPDATE issuer_keys SET state = 'verify-only', rotated_at = ?3
                     WHERE environment = ?1 AND id != ?2
                       AND (state = 'active' OR (state = 'pending' AND not_before <= ?3))
                       AND EXISTS (SELECT 1 FROM issuer_keys p WHERE p.id = ?2 AND p.state = 'pending')",
                    params![environment, id, now],
                )
                .map_err(map_err)?;
                promoted += tx
                    .execute("UPDATE issuer_keys SET state = 'active' WHERE id = ?1 AND state = 'pending'", params![id])
                    .map_err(map_err)? as u64;
            }
            tx.commit().map_err(map_err)?;
            Ok(promoted)
        })
        .await
    }

    async fn retire_issuer_key(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.with(move |c| {
            let changed = c
                .execute(
                    "UPDATE issuer_keys SET state = 'retired', retired_at = COALESCE(retired_at, ?2) WHERE id = ?1",
                    params![id, at],
                )
                .map_err(map_err)?;
            Ok(changed > 0)
        })
        .await
    }
}

#[async_trait]
impl IdempotencyStore for SqliteStore {
    async fn idempotency_begin(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &[u8; 32],
        now: i64,
        ttl_secs: i64,
        stale_after_secs: i64,
    ) -> Result<IdempotencyBegin, StoreError> {
        let (scope, key, fingerprint) = (scope.to_owned(), key.to_owned(), fingerprint.to_vec());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            let existing: Option<(Vec<u8>, i64, Option<u16>, Option<(Option<String>, Option<Vec<u8>>)>)> = tx
                .query_row(
                    "SELECT fingerprint, created_at, status, content_type, body FROM idempotency
                     WHERE scope = ?1 AND key = ?2",
                    params![scope, key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, Some((r.get(3)?, r.get(4)?)))),
                )
                .optional()
                .map_err(map_err)?;
            let outcome = match existing {
                Some((_, created_at, _, _)) if created_at + ttl_secs <= now => {
                    tx.execute(
                        "UPDATE idempotency SET fingerprint = ?3, created_at = ?4, status = NULL,
                         content_type = NULL, body = NULL WHERE scope = ?1 AND key = ?2",
                        params![scope, key, fingerprint, now],
                    )
                    .map_err(map_err)?;
                    IdempotencyBegin::Started
                }
                Some((stored, _, _, _)) if stored != fingerprint => IdempotencyBegin::Mismatch,
                Some((_, created_at, None, _)) => {
                    if created_at + stale_after_secs <= now {
                        tx.execute(
                            "UPDATE idempotency SET created_at = ?3 WHERE scope = ?1 AND key = ?2",
                            params![scope, key, now],
                        )
                        .map_err(map_err)?;
                        IdempotencyBegin::Started
                    } else {
                        IdempotencyBegin::InFlight
                    }
                }
                Some((_, _, Some(status), stored)) => {
                    let (content_type, body) = stored.unwrap_or_default();
                    IdempotencyBegin::Completed(StoredResponse {
                        status,
                        content_type: content_type.unwrap_or_default(),
                        body: body.unwrap_or_default(),
                    })
                }
                None => {
                    tx.execute(
                        "INSERT INTO idempotency (scope, key, fingerprint, created_at) VALUES (?1, ?2, ?3, ?4)",
                        params![scope, key, fingerprint, now],
                    )
                    .map_err(map_err)?;
                    IdempotencyBegin::Started
                }
            };
            tx.commit().map_err(map_err)?;
            Ok(outcome)
        })
        .await
    }

    async fn idempotency_complete(&self, scope: &str, key: &str, response: &StoredResponse) -> Result<(), StoreError> {
        let (scope, key, response) = (scope.to_owned(), key.to_owned(), response.clone());
        self.with(move |c| complete_idempotency(c, &scope, &key, &response)).await
    }

    async fn idempotency_abandon(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        let (scope, key) = (scope.to_owned(), key.to_owned());
        self.with(move |c| {
            c.execute("DELETE FROM idempotency WHERE scope = ?1 AND key = ?2 AND status IS NULL", params![scope, key])
                .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn idempotency_prune(&self, before: i64) -> Result<u64, StoreError> {
        self.with(move |c| {
            let n = c.execute("DELETE FROM idempotency WHERE created_at < ?1", params![before]).map_err(map_err)?;
            Ok(n as u64)
        })
        .await
    }
}

#[async_trait]
impl RateLimitStore for SqliteStore {
    async fn rate_limit_hit(&self, bucket: &str, window_start: i64) -> Result<u64, StoreError> {
        let bucket = bucket.to_owned();
        self.with(move |c| {
            let count: i64 = c
                .prepare_cached(
                    "INSERT INTO rate_limits (bucket, window_start, count) VALUES (?1, ?2, 1)
                     ON CONFLICT (bucket, window_start) DO UPDATE SET count = count + 1
                     RETURNING count",
                )
                .map_err(map_err)?
                .query_row(params![bucket, window_start], |r| r.get(0))
                .map_err(map_err)?;
            Ok(count.max(0) as u64)
        })
        .await
    }

    async fn rate_limit_prune(&self, before: i64) -> Result<u64, StoreError> {
        self.with(move |c| {
            let n = c.execute("DELETE FROM rate_limits WHERE window_start < ?1", params![before]).map_err(map_err)?;
            Ok(n as u64)
        })
        .await
    }
}

#[async_trait]
impl SettingsStore for SqliteStore {
    async fn setting_get_or_insert(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (name, value) = (name.to_owned(), value.to_vec());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            tx.execute(
                "INSERT INTO settings (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                params![name, value],
            )
            .map_err(map_err)?;
            let stored: Vec<u8> = tx
                .query_row("SELECT value FROM settings WHERE name = ?1", params![name], |r| r.get(0))
                .map_err(map_err)?;
            tx.commit().map_err(map_err)?;
            Ok(stored)
        })
        .await
    }

    async fn settings_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = prefix.to_owned();
        self.with(move |c| {
            let mut stmt = c.prepare("SELECT name, value FROM settings ORDER BY name").map_err(map_err)?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))).map_err(map_err)?;
            let all: Vec<_> = rows.collect::<Result<_, _>>().map_err(map_err)?;
            Ok(all.into_iter().filter(|(name, _)| name.starts_with(&prefix)).collect())
        })
        .await
    }

    async fn rewrap(&self, changes: &[Rewrap]) -> Result<(), StoreError> {
        let changes = changes.to_vec();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            for change in &changes {
                let updated = match &change.target {
                    RewrapTarget::IssuerKey(id) => tx.execute(
                        "UPDATE issuer_keys SET private_pkcs8 = ?3 WHERE id = ?1 AND private_pkcs8 = ?2",
                        params![id, change.old, change.new],
                    ),
                    RewrapTarget::Setting(name) => tx.execute(
                        "UPDATE settings SET value = ?3 WHERE name = ?1 AND value = ?2",
                        params![name, change.old, change.new],
                    ),
                }
                .map_err(map_err)?;
                if updated != 1 {
                    return Err(StoreError::Conflict(format!("{:?} changed during the rewrap", change.target)));
                }
            }
            tx.commit().map_err(map_err)
        })
        .await
    }
}

type RelayRow = (String, Vec<u8>, String, String, Option<Vec<u8>>, i64, Option<bool>, Option<String>, Option<i64>, i64);

fn relay_from_row(row: RelayRow) -> Result<Relay, StoreError> {
    let (token, hash, environment, claim_type, key, created_at, passed, methodology, result_at, expires_at) = row;
    let result = match (passed, result_at) {
        (Some(passed), Some(recorded_at)) => {
            Some(ClaimResult { passed, methodology_json: methodology.unwrap_or_else(|| "[]".into()), recorded_at })
        }
        _ => None,
    };
    Ok(Relay {
        token,
        secret_hash: hash.try_into().map_err(|_| StoreError::Corrupt("relay secret hash length".into()))?,
        environment: environment.parse().map_err(corrupt("environment"))?,
        claim_type,
        encryption_key_der: key,
        created_at,
        expires_at,
        result,
    })
}

#[async_trait]
impl RelayStore for SqliteStore {
    async fn insert_relay(&self, relay: &Relay) -> Result<(), StoreError> {
        let relay = relay.clone();
        self.with(move |c| {
            let (passed, methodology, at) = match &relay.result {
                Some(r) => (Some(r.passed), Some(r.methodology_json.clone()), Some(r.recorded_at)),
                None => (None, None, None),
            };
            c.execute(
                "INSERT INTO relays (token, secret_hash, environment, claim_type, encryption_key_der, created_at,
                                     result_passed, methodology, result_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    relay.token,
                    relay.secret_hash.to_vec(),
                    relay.environment.as_str(),
                    relay.claim_type,
                    relay.encryption_key_der,
                    relay.created_at,
                    passed,
                    methodology,
                    at,
                    relay.expires_at
                ],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn relay_by_token(&self, token: &str) -> Result<Option<Relay>, StoreError> {
        let token = token.to_owned();
        self.with(move |c| {
            let row = c
                .prepare_cached(
                    "SELECT token, secret_hash, environment, claim_type, encryption_key_der, created_at,
                            result_passed, methodology, result_at, expires_at
                     FROM relays WHERE token = ?1",
                )
                .map_err(map_err)?
                .query_row(params![token], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                    ))
                })
                .optional()
                .map_err(map_err)?;
            row.map(relay_from_row).transpose()
        })
        .await
    }

    async fn record_relay_result(&self, token: &str, result: &ClaimResult) -> Result<RecordOutcome, StoreError> {
        let (token, result) = (token.to_owned(), result.clone());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            let existing: Option<Option<bool>> = tx
                .query_row("SELECT result_passed FROM relays WHERE token = ?1", params![token], |r| r.get(0))
                .optional()
                .map_err(map_err)?;
            let outcome = match existing {
                None => RecordOutcome::NotFound,
                Some(Some(_)) => RecordOutcome::AlreadyRecorded,
                Some(None) => {
                    tx.execute(
                        "UPDATE relays SET result_passed = ?2, methodology = ?3, result_at = ?4 WHERE token = ?1",
                        params![token, result.passed, result.methodology_json, result.recorded_at],
                    )
                    .map_err(map_err)?;
                    RecordOutcome::Recorded
                }
            };
            tx.commit().map_err(map_err)?;
            Ok(outcome)
        })
        .await
    }

    async fn prune_relays(&self, now: i64) -> Result<u64, StoreError> {
        self.with(move |c| {
            let n = c.execute("DELETE FROM relays WHERE expires_at <= ?1", params![now]).map_err(map_err)?;
            Ok(n as u64)
        })
        .await
    }
}

#[async_trait]
impl SpentTokenStore for SqliteStore {
    async fn spend_token(&self, spend: &Spend) -> Result<SpendOutcome, StoreError> {
        let spend = spend.clone();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO spent_tokens (key_id, nonce, relay_token, spent_at, expires_at, claim_payload)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (key_id, nonce, expires_at) DO NOTHING",
                )
                .map_err(map_err)?
                .execute(params![
                    spend.key_id,
                    spend.nonce,
                    spend.relay_token,
                    spend.spent_at,
                    spend.expires_at,
                    spend.claim_payload
                ])
                .map_err(map_err)?;
            let outcome = if inserted == 1 {
                if let Some(done) = &spend.idempotency {
                    complete_idempotency(&tx, &done.scope, &done.key, &done.response)?;
                }
                SpendOutcome::Spent
            } else {
                let (relay, payload): (String, Option<String>) = tx
                    .query_row(
                        "SELECT relay_token, claim_payload FROM spent_tokens
                         WHERE key_id = ?1 AND nonce = ?2 AND expires_at = ?3",
                        params![spend.key_id, spend.nonce, spend.expires_at],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .map_err(map_err)?;
                match payload {
                    Some(claim_payload) if relay == spend.relay_token => SpendOutcome::SpentHere { claim_payload },
                    _ => SpendOutcome::SpentElsewhere,
                }
            };
            #[cfg(debug_assertions)]
            crate::fault::before_commit("spend");
            tx.commit().map_err(map_err)?;
            #[cfg(debug_assertions)]
            crate::fault::after_commit("spend");
            Ok(outcome)
        })
        .await
    }

    async fn prune_spent_tokens(&self, expired_before: i64) -> Result<u64, StoreError> {
        self.with(move |c| {
            let n = c
                .execute("DELETE FROM spent_tokens WHERE expires_at < ?1", params![expired_before])
                .map_err(map_err)?;
            Ok(n as u64)
        })
        .await
    }
}

fn complete_idempotency(c: &Connection, scope: &str, key: &str, response: &StoredResponse) -> Result<(), StoreError> {
    c.execute(
        "UPDATE idempotency SET status = ?3, content_type = ?4, body = ?5
         WHERE scope = ?1 AND key = ?2 AND status IS NULL",
        params![scope, key, response.status, response.content_type, response.body],
    )
    .map_err(map_err)?;
    Ok(())
}
