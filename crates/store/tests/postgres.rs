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
