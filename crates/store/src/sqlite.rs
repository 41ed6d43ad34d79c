//! The embedded SQLite backend.
//!
//! One connection in WAL mode with `synchronous = FULL`: a write is on disk
//! before the call returns, so a response sent after it is backed by durable
//! state. The connection lives on its own thread behind a bounded queue, so
//! calls never block async workers and a burst never costs a thread per call.
//! Spends are group-committed: the thread takes every spend waiting in the
//! queue (up to [`MAX_SPEND_GROUP`]) into one transaction, one fsync for all
//! of them, and answers each only after that commit.
//! Several processes (a server and the CLI) may share one database file;
//! SQLite's locking and a busy timeout serialise their writes.

mod api_keys;
mod issuer_keys;
mod relays;
mod requests;

use requests::complete_idempotency;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use zeroize::Zeroizing;

use crate::{
    ApiKey, ApiKeyStore, Cause, ClaimResult, Environment, IdempotencyBegin, IdempotencyStore, IssuerKey,
    IssuerKeyStore, KeyState, Permission, RateLimitStore, RecordOutcome, Relay, RelayStore, Rewrap, RewrapTarget,
    SettingsStore, Spend, SpendOutcome, SpentTokenStore, StoreError, StoredResponse,
};
use crate::{DurabilityStore, Replication};

/// Schema migrations, applied in order; the index + 1 is the version.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_initial.sql"),
    include_str!("../migrations/sqlite/0002_spent_token_expiry_and_relay_expiry.sql"),
    include_str!("../migrations/sqlite/0003_issuer_key_token_types.sql"),
    include_str!("../migrations/sqlite/0004_api_key_rate_limits.sql"),
    include_str!("../migrations/sqlite/0005_relay_claim_format.sql"),
];

/// How many store calls may wait for the connection thread. A burst beyond
/// this is refused at once (`StoreError::Unavailable`, a 503 with
/// `Retry-After` at the edge) instead of queueing into request timeouts.
pub const QUEUE_CAPACITY: usize = 256;

/// Most spends committed in one transaction (and most queued items the
/// connection thread takes at once).
pub const MAX_SPEND_GROUP: usize = 256;

/// One store call, run on the connection thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Where a spend's outcome goes once its group has committed.
type SpendReply = tokio::sync::oneshot::Sender<Result<SpendOutcome, StoreError>>;

/// What the connection thread is given.
enum Work {
    /// Any store call, run on its own.
    Call(Job),
    /// A spend, committed together with the spends waiting beside it.
    Spend(Box<Spend>, SpendReply),
}

/// The SQLite store: one connection owned by one thread, fed through a
/// bounded queue. SQLite has a single writer anyway; one thread means a burst
/// costs no threads (the old design parked one blocking-pool thread per
/// waiting call, up to hundreds), and the bound sheds load early.
#[derive(Clone)]
pub struct SqliteStore {
    jobs: std::sync::mpsc::SyncSender<Work>,
    path: PathBuf,
    spend_commits: Arc<SpendCommits>,
}

/// Counts of the spend group commits, since the store was opened.
#[derive(Debug, Default)]
pub struct SpendCommits {
    /// Transactions committed (or attempted) for groups of spends.
    pub groups: AtomicU64,
    /// Spends in them.
    pub spends: AtomicU64,
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
            .map_err(|e| StoreError::Other(Cause::while_("open task failed", e)))??;
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Work>(QUEUE_CAPACITY);
        let spend_commits = Arc::new(SpendCommits::default());
        let counts = Arc::clone(&spend_commits);
        std::thread::Builder::new()
            .name("blindpass-sqlite".into())
            .spawn(move || connection_thread(&mut conn, &queue, &counts))
            .map_err(|e| StoreError::Other(Cause::while_("starting the SQLite thread", e)))?;
        Ok(Self { jobs, path, spend_commits })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many group commits the spends took so far.
    pub fn spend_commits(&self) -> &SpendCommits {
        &self.spend_commits
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
        self.enqueue(Work::Call(job))?;
        answer.await.map_err(|_| StoreError::Other("a store call panicked".into()))?
    }

    /// Queues `work` for the connection thread, or refuses it at once.
    fn enqueue(&self, work: Work) -> Result<(), StoreError> {
        self.jobs.try_send(work).map_err(|e| match e {
            std::sync::mpsc::TrySendError::Full(_) => {
                StoreError::Unavailable(format!("more than {QUEUE_CAPACITY} store calls waiting").into())
            }
            std::sync::mpsc::TrySendError::Disconnected(_) => StoreError::Other("the SQLite thread stopped".into()),
        })
    }
}

/// The connection thread, until the last handle to the store is dropped.
/// It takes what is waiting (up to [`MAX_SPEND_GROUP`] items): calls run in
/// their order as they are taken, spends are set aside and then committed as
/// one group. Everything taken was waiting at the same time, so no caller
/// has seen another's answer: any order among them is a valid one.
fn connection_thread(conn: &mut Connection, queue: &std::sync::mpsc::Receiver<Work>, counts: &SpendCommits) {
    while let Ok(first) = queue.recv() {
        let mut spends = Vec::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(work) = next.take() {
            taken += 1;
            match work {
                // A panicking job must not take the connection thread down
                // with it: its caller sees a dropped reply.
                Work::Call(job) => {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(conn)));
                }
                Work::Spend(spend, reply) => spends.push((spend, reply)),
            }
            if taken < MAX_SPEND_GROUP {
                next = queue.try_recv().ok();
            }
        }
        if !spends.is_empty() {
            counts.groups.fetch_add(1, Ordering::Relaxed);
            counts.spends.fetch_add(spends.len() as u64, Ordering::Relaxed);
            relays::commit_spends(conn, spends);
        }
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
    let unavailable = |e: std::io::Error| StoreError::Unavailable(format!("creating {}: {e}", dir.display()).into());
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
        let unavailable = |p: &Path, e: std::io::Error| StoreError::Unavailable(format!("{}: {e}", p.display()).into());
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
        return Err(StoreError::Corrupt(format!("database schema version {current} is newer than this binary").into()));
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
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Unavailable(Cause::of(e)),
        Some(ErrorCode::ConstraintViolation) => StoreError::Conflict(Cause::of(e)),
        Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly | ErrorCode::DiskFull | ErrorCode::SystemIoFailure) => {
            StoreError::Unavailable(Cause::of(e))
        }
        _ => StoreError::Other(Cause::of(e)),
    }
}

fn corrupt(what: &str) -> impl Fn(crate::UnknownName) -> StoreError + '_ {
    move |e| StoreError::Corrupt(format!("{what}: {e}").into())
}

fn permissions_to_text(permissions: &[Permission]) -> String {
    permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(",")
}

fn permissions_from_text(text: &str) -> Result<Vec<Permission>, StoreError> {
    text.split(',').filter(|s| !s.is_empty()).map(|s| s.parse().map_err(corrupt("permission"))).collect()
}
