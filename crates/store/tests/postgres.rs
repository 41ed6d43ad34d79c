//! The conformance suite against PostgreSQL, in a schema of its own.
//! Runs when `BLINDPASS_TEST_POSTGRES_URL` is set at build time (`.ci/run`
//! sets it); otherwise the test is ignored and the summary says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use blindpass_store::conformance;
use blindpass_store::postgres::{
    PoolOptions, PostgresStore, create_schema, drop_schema, random_schema_name, url_with_schema,
};

fn postgres_url() -> String {
    std::env::var("BLINDPASS_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .expect("BLINDPASS_TEST_POSTGRES_URL was set when this test was built; set it to run it")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(blindpass_test_postgres), ignore = "needs BLINDPASS_TEST_POSTGRES_URL (.ci/run sets it)")]
async fn postgres_conforms() {
    let url = postgres_url();
    let schema = random_schema_name();
    create_schema(&url, &schema).await.unwrap();
    let scoped = url_with_schema(&url, &schema);
    let store = PostgresStore::connect(&scoped, PoolOptions::default()).await.unwrap();
    // Migrating again is a no-op.
    assert_eq!(store.migrate().await.unwrap(), 2, "the schema version");
    conformance::run_all(Arc::new(store)).await;
    drop_schema(&url, &schema).await.unwrap();
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
