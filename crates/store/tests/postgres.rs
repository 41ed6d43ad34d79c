//! The conformance suite against PostgreSQL, in a schema of its own.
//! Runs when `BLINDPASS_TEST_POSTGRES_URL` is set at build time (`.ci/run`
//! sets it); otherwise the test is ignored and the summary says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use blindpass_store::postgres::testing::{create_schema, drop_schema, random_schema_name, url_with_schema};
use blindpass_store::postgres::{PoolOptions, PostgresStore};

fn postgres_url() -> String {
    std::env::var("BLINDPASS_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .expect("BLINDPASS_TEST_POSTGRES_URL was set when this test was built; set it to run it")
}

/// A schema of its own on the test database; dropped with the guard.
struct Schema {
    url: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Drop runs inside the test's runtime: drop the schema from a thread
        // with a runtime of its own.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(drop_schema(&url, &name)).unwrap();
        })
        .join()
        .unwrap();
    }
}

/// A fresh, migrated store in a new schema.
async fn fresh_store() -> (Arc<dyn blindpass_store::Store>, Schema) {
    let url = postgres_url();
    let name = random_schema_name();
    create_schema(&url, &name).await.unwrap();
    let store = PostgresStore::connect(&url_with_schema(&url, &name), PoolOptions::default()).await.unwrap();
    (Arc::new(store), Schema { url, name })
}

mod conforms {
    blindpass_store::conformance_tests!(
        #[cfg_attr(not(blindpass_test_postgres), ignore = "needs BLINDPASS_TEST_POSTGRES_URL (.ci/run sets it)")]
        make = super::fresh_store
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(blindpass_test_postgres), ignore = "needs BLINDPASS_TEST_POSTGRES_URL (.ci/run sets it)")]
async fn migrating_again_is_a_no_op() {
    let (store, _schema) = fresh_store().await;
    drop(store);
    let url = postgres_url();
    let name = random_schema_name();
    create_schema(&url, &name).await.unwrap();
    let _guard = Schema { url: url.clone(), name: name.clone() };
    let store = PostgresStore::connect(&url_with_schema(&url, &name), PoolOptions::default()).await.unwrap();
    assert_eq!(store.migrate().await.unwrap(), 5, "the schema version");
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_not_an_error() {
    let store = PostgresStore::connect_without_migrating(
        "postgres://nobody@127.0.0.1:1/none",
        PoolOptions { max_size: 1, timeout: std::time::Duration::from_millis(500), ca_file: None },
    )
    .unwrap();
    let err = blindpass_store::ApiKeyStore::list_api_keys(&store).await.unwrap_err();
    assert!(matches!(err, blindpass_store::StoreError::Unavailable(_)), "{err:?}");
}

/// Another session's uncommitted spends of tokens `0..GROUPS_IN_FLIGHT`,
/// and one spend of each through `store`, made one at a time: each is a group
/// of its own, blocked in PostgreSQL, so every group slot is taken and later
/// spends wait in the queue until `held` rolls back.
async fn hold_every_group_slot(
    store: &Arc<PostgresStore>,
    url: &str,
) -> (
    tokio_postgres::Client,
    Vec<tokio::task::JoinHandle<Result<blindpass_store::SpendOutcome, blindpass_store::StoreError>>>,
) {
    use blindpass_store::SpentTokenStore;
    let (locker, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    locker.batch_execute("BEGIN").await.unwrap();
    let mut blocked = Vec::new();
    for n in 0..blindpass_store::postgres::GROUPS_IN_FLIGHT as u8 {
        locker
            .execute(
                "INSERT INTO spent_tokens (key_id, nonce, expires_at, relay_token, spent_at, claim_payload)
                 VALUES ('kg', $1, 7200, 'relay_other', 0, 'other')",
                &[&vec![n; 32]],
            )
            .await
            .unwrap();
        let store = Arc::clone(store);
        let spend = blindpass_store::conformance::spend("kg", &[n; 32], "relay_g", 7_200);
        blocked.push(tokio::spawn(async move { store.spend_token(&spend).await }));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    (locker, blocked)
}

/// A fresh migrated store in a schema of its own, with its URL.
async fn fresh_postgres() -> (Arc<PostgresStore>, String, Schema) {
    let url = postgres_url();
    let name = random_schema_name();
    create_schema(&url, &name).await.unwrap();
    let schema = Schema { url: url.clone(), name: name.clone() };
    let url = url_with_schema(&url, &name);
    (Arc::new(PostgresStore::connect(&url, PoolOptions::default()).await.unwrap()), url, schema)
}

/// Spends that wait together commit together: while every group slot is
/// held (above), 100 spends queue; when the other session rolls back, the
/// held ones win, then the 100 take one transaction; every one is answered
/// only after its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(blindpass_test_postgres), ignore = "needs BLINDPASS_TEST_POSTGRES_URL (.ci/run sets it)")]
async fn spends_that_wait_together_commit_in_one_transaction() {
    use blindpass_store::{SpendOutcome, SpentTokenStore, conformance};
    use std::sync::atomic::Ordering;
    let (store, url, _schema) = fresh_postgres().await;
    let spend = |n: u8| conformance::spend("kg", &[n; 32], "relay_g", 7_200);
    let (locker, blocked) = hold_every_group_slot(&store, &url).await;
    let held = blocked.len() as u8;
    let queued: Vec<_> = (held..held + 100)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.spend_token(&spend(n)).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(blocked.iter().chain(&queued).all(|t| !t.is_finished()), "nothing answered while the groups wait");
    locker.batch_execute("ROLLBACK").await.unwrap();

    for t in blocked.into_iter().chain(queued) {
        assert_eq!(t.await.unwrap().unwrap(), SpendOutcome::Spent);
    }
    let commits = store.spend_commits().unwrap();
    assert_eq!(commits.spends.load(Ordering::Relaxed), u64::from(held) + 100);
    assert_eq!(commits.groups.load(Ordering::Relaxed), u64::from(held) + 1, "the held groups, then the 100 together");
    for n in 0..held + 100 {
        assert_eq!(
            store.spend_token(&spend(n)).await.unwrap(),
            SpendOutcome::SpentHere { claim_payload: "claim for relay_g".into() }
        );
    }
}

/// One spend that PostgreSQL refuses (a NUL byte in a text column) fails
/// its whole group's transaction; the group is retried spend by spend, so
/// that spend alone fails and its 49 neighbours are spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(blindpass_test_postgres), ignore = "needs BLINDPASS_TEST_POSTGRES_URL (.ci/run sets it)")]
async fn a_refused_spend_fails_alone_not_its_group() {
    use blindpass_store::{SpendOutcome, SpentTokenStore, conformance};
    use std::sync::atomic::Ordering;
    let (store, url, _schema) = fresh_postgres().await;
    let (locker, blocked) = hold_every_group_slot(&store, &url).await;
    let held = blocked.len() as u8;
    let queued: Vec<_> = (held..held + 50)
        .map(|n| {
            let store = Arc::clone(&store);
            let mut spend = conformance::spend("kg", &[n; 32], "relay_g", 7_200);
            if n == held + 25 {
                spend.claim_payload = "not\0text".into();
            }
            tokio::spawn(async move { (n, store.spend_token(&spend).await) })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    locker.batch_execute("ROLLBACK").await.unwrap();
    for t in blocked {
        assert_eq!(t.await.unwrap().unwrap(), SpendOutcome::Spent);
    }
    for t in queued {
        let (n, outcome) = t.await.unwrap();
        if n == held + 25 {
            assert!(outcome.is_err(), "the refused spend fails: {outcome:?}");
        } else {
            assert_eq!(outcome.unwrap(), SpendOutcome::Spent, "spend {n}");
        }
    }
    assert_eq!(store.spend_commits().unwrap().groups.load(Ordering::Relaxed), u64::from(held) + 1);
}
