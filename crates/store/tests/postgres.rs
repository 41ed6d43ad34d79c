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
    assert_eq!(store.migrate().await.unwrap(), 2, "the schema version");
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

/// Spends that wait together commit together: another session holds four
/// uncommitted spends, so the first four groups (each one of those tokens)
/// block in PostgreSQL and use every group slot; 100 more spends queue
/// meanwhile. When the other session rolls back, the four win, then the 100
/// take one transaction; every one is answered only after its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(blindpass_test_postgres), ignore = "needs BLINDPASS_TEST_POSTGRES_URL (.ci/run sets it)")]
async fn spends_that_wait_together_commit_in_one_transaction() {
    use blindpass_store::{SpendOutcome, SpentTokenStore, conformance};
    use std::sync::atomic::Ordering;
    let url = postgres_url();
    let name = random_schema_name();
    create_schema(&url, &name).await.unwrap();
    let _schema = Schema { url: url.clone(), name: name.clone() };
    let url = url_with_schema(&url, &name);
    let store = Arc::new(PostgresStore::connect(&url, PoolOptions::default()).await.unwrap());
    let spend = |n: u8| conformance::spend("kg", &[n; 32], "relay_g", 7_200);

    let (mut locker, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let held = locker.transaction().await.unwrap();
    for n in 0..4u8 {
        held.execute(
            "INSERT INTO spent_tokens (key_id, nonce, expires_at, relay_token, spent_at, claim_payload)
             VALUES ('kg', $1, 7200, 'relay_other', 0, 'other')",
            &[&vec![n; 32]],
        )
        .await
        .unwrap();
    }
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(200));
    let mut blocked = Vec::new();
    for n in 0..4u8 {
        let store = Arc::clone(&store);
        blocked.push(tokio::spawn(async move { store.spend_token(&spend(n)).await }));
        pause().await;
    }
    let queued: Vec<_> = (4..104u8)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.spend_token(&spend(n)).await })
        })
        .collect();
    pause().await;
    assert!(blocked.iter().chain(&queued).all(|t| !t.is_finished()), "nothing answered while the groups wait");
    held.rollback().await.unwrap();

    for t in blocked.into_iter().chain(queued) {
        assert_eq!(t.await.unwrap().unwrap(), SpendOutcome::Spent);
    }
    let commits = store.spend_commits().unwrap();
    assert_eq!(commits.spends.load(Ordering::Relaxed), 104);
    assert_eq!(commits.groups.load(Ordering::Relaxed), 5, "four held groups, then the 100 that waited, together");
    for n in 0..104u8 {
        assert_eq!(
            store.spend_token(&spend(n)).await.unwrap(),
            SpendOutcome::SpentHere { claim_payload: "claim for relay_g".into() }
        );
    }
}
