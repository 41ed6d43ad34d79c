//! The conformance suite against the embedded SQLite backend.

use std::sync::Arc;

use blindpass_store::sqlite::SqliteStore;
use blindpass_store::{Environment, IssuerKeyStore, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("blindpass.db")).await.unwrap();
    conformance::run_all(Arc::new(store)).await;
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

#[tokio::test]
async fn open_rejects_unknown_schemes() {
    assert!(blindpass_store::open("mysql://x").await.is_err());
}
