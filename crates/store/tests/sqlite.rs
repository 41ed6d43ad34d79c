//! The conformance suite against the embedded SQLite backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use blindpass_store::sqlite::SqliteStore;
use blindpass_store::{Environment, IssuerKeyStore, conformance};

/// A fresh store in a temporary directory (deleted with the guard).
async fn fresh_store() -> (Arc<dyn blindpass_store::Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("blindpass.db")).await.unwrap();
    (Arc::new(store), dir)
}

mod conforms {
    blindpass_store::conformance_tests!(make = super::fresh_store);
}

#[tokio::test]
async fn data_survives_reopen_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/blindpass.db");
    {
        let store = SqliteStore::open(&path).await.unwrap();
        let key = conformance::issuer_key("k", Environment::Sandbox, blindpass_store::KeyState::Active, 1);
        store.insert_issuer_key(&key).await.unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.issuer_keys(None).await.unwrap().len(), 1);
}

/// A database made by the previous schema (version 2, keys without a token
/// type) opens, its keys become type 2, and a key of another type can be
/// active beside them.
#[tokio::test]
async fn a_version_2_database_upgrades_with_its_keys_as_type_2() {
    use blindpass_store::{IssuerKey, KeyState};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);
             INSERT INTO schema_migrations VALUES (1, 0), (2, 0);",
        )
        .unwrap();
        c.execute_batch(include_str!("../migrations/sqlite/0001_initial.sql")).unwrap();
        c.execute_batch(include_str!("../migrations/sqlite/0002_spent_token_expiry_and_relay_expiry.sql")).unwrap();
        c.execute(
            "INSERT INTO issuer_keys (id, environment, state, private_pkcs8, not_before, created_at)
             VALUES ('old', 'sandbox', 'active', X'0102', 1, 1)",
            [],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    let keys = store.issuer_keys(None).await.unwrap();
    assert_eq!(
        keys.iter().map(|k| (k.id.as_str(), k.token_type, k.state)).collect::<Vec<_>>(),
        [("old", 2, KeyState::Active)]
    );
    let voprf =
        IssuerKey { token_type: 5, ..conformance::issuer_key("new", Environment::Sandbox, KeyState::Active, 2) };
    store.insert_issuer_key(&voprf).await.unwrap();
    assert!(
        store
            .insert_issuer_key(&conformance::issuer_key("dup", Environment::Sandbox, KeyState::Active, 3))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn open_rejects_unknown_schemes() {
    assert!(blindpass_store::open("mysql://x").await.is_err());
}

/// Threads of this process (Linux), or 0 where `/proc` is missing.
fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim().parse().unwrap_or(0))))
        .unwrap_or(0)
}

/// A burst of writes while another process holds the write lock: the calls
/// beyond the bounded queue are refused at once as `Unavailable` (a 503 at
/// the edge), no thread is spent per waiting call, and everything queued
/// completes once the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_under_a_held_write_lock_is_shed_without_a_thread_per_call() {
    use blindpass_store::{RateLimitStore, StoreError};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blindpass.db");
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    store.rate_limit_hit("warm", 0).await.unwrap();
    let before = threads();

    let locker = rusqlite::Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE; INSERT INTO settings (name, value) VALUES ('lock', x'00');").unwrap();
    let burst = 1_000;
    let calls: Vec<_> = (0..burst)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.rate_limit_hit(&format!("b{i}"), 0).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let during = threads();
    locker.execute_batch("COMMIT").unwrap();

    let (mut ok, mut shed) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::Unavailable(_)) => shed += 1,
            Err(e) => panic!("neither done nor shed: {e}"),
        }
    }
    assert_eq!(ok + shed, burst);
    assert!(shed >= burst - blindpass_store::sqlite::QUEUE_CAPACITY - 1, "ok {ok}, shed {shed}");
    assert!(ok >= 1, "the queued calls completed after the lock was released");
    if before > 0 {
        assert!(during <= before + 4, "threads grew from {before} to {during} during the burst");
    }
}

/// Spends that wait together commit together: while another process holds
/// the write lock, the first spend holds the connection thread and 100 more
/// queue up; once the lock goes, those 100 take one transaction (one fsync),
/// every one of them is answered only then, and all are durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spends_that_wait_together_commit_in_one_transaction() {
    use blindpass_store::{SpendOutcome, SpentTokenStore};
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blindpass.db");
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    let locker = rusqlite::Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE; INSERT INTO settings (name, value) VALUES ('lock', x'00');").unwrap();

    let spend = |n: u8| conformance::spend("kg", &[n; 32], "relay_g", 7_200);
    let first = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.spend_token(&spend(0)).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let queued: Vec<_> = (1..=100)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.spend_token(&spend(n)).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!first.is_finished() && queued.iter().all(|q| !q.is_finished()), "nothing answered under the lock");
    locker.execute_batch("COMMIT").unwrap();

    assert_eq!(first.await.unwrap().unwrap(), SpendOutcome::Spent);
    for q in queued {
        assert_eq!(q.await.unwrap().unwrap(), SpendOutcome::Spent);
    }
    let commits = store.spend_commits();
    assert_eq!(commits.spends.load(Ordering::Relaxed), 101);
    assert_eq!(commits.groups.load(Ordering::Relaxed), 2, "the first spend, then the 100 that waited, together");
    drop(store);
    let reopened = SqliteStore::open(&path).await.unwrap();
    for n in 0..=100 {
        assert_eq!(
            reopened.spend_token(&spend(n)).await.unwrap(),
            SpendOutcome::SpentHere { claim_payload: "claim for relay_g".into() },
            "spend {n} is durable"
        );
    }
}
