//! The conformance suite against PostgreSQL, in a schema of its own.
//! Runs when `BLINDPASS_TEST_POSTGRES_URL` is set (`.ci/run` sets it);
//! otherwise says loudly that it was skipped.

use std::sync::Arc;

use blindpass_store::conformance;
use blindpass_store::postgres::{
    PoolOptions, PostgresStore, create_schema, drop_schema, random_schema_name, url_with_schema,
};

fn postgres_url() -> Option<String> {
    match std::env::var("BLINDPASS_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "!! SKIPPED: PostgreSQL tests need BLINDPASS_TEST_POSTGRES_URL (e.g. postgres://root@127.0.0.1:5432/test)"
            );
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_conforms() {
    let Some(url) = postgres_url() else { return };
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
