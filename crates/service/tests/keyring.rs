//! Key-ring robustness (issue 10.5): reloads are single-flight, so a burst of
//! unknown key ids or a stale ring costs the store one reload; an unreadable
//! key row is skipped and counted while the other keys keep working.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use blindpass_protocol::keys::TokenKeyId;
use blindpass_service::{Config, Environment, ManualClock, Service};
use blindpass_store::sqlite::SqliteStore;

const START: i64 = 1_800_000_000;

async fn node(path: &std::path::Path, clock: Arc<ManualClock>) -> Service {
    let config = Config { issuer_name: "issuer.example".into(), ..Config::default() };
    blindpass_service::testing::on_store(path, clock, config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_unknown_key_ids_on_a_stale_ring_costs_one_reload() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let service = node(&dir.path().join("db"), Arc::clone(&clock)).await;
    clock.advance(Config::default().key_refresh_secs + 1);
    let before = service.key_ring_stats().reloads;
    let lookups = (0..64u8).map(|i| {
        let service = service.clone();
        tokio::spawn(async move { service.key_by_id(&TokenKeyId([i; 32])).await.unwrap() })
    });
    for lookup in lookups {
        assert!(lookup.await.unwrap().is_none());
    }
    assert_eq!(service.key_ring_stats().reloads - before, 1, "64 concurrent lookups, one reload");
    // Within the same second, more unknown ids do not reload again.
    for i in 64..128u8 {
        assert!(service.key_by_id(&TokenKeyId([i; 32])).await.unwrap().is_none());
    }
    assert_eq!(service.key_ring_stats().reloads - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_key_row_is_skipped_and_counted_and_the_others_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let clock = Arc::new(ManualClock::new(START));
    let a = node(&path, Arc::clone(&clock)).await;
    let active = a.active_key(Environment::Sandbox, 2).await.unwrap().unwrap();
    // Another node rotates; the new key's private bytes are then damaged.
    let b = node(&path, Arc::clone(&clock)).await;
    let rotated = b.rotate_key(Environment::Production, 2, None).await.unwrap();
    let db = rusqlite::Connection::open(&path).unwrap();
    let changed = db.execute("UPDATE issuer_keys SET private_pkcs8 = x'3000' WHERE id = ?1", [&rotated.id]).unwrap();
    assert_eq!(changed, 1);
    drop(db);

    clock.advance(Config::default().key_refresh_secs + 1);
    let found = a.key_by_id(&active.token_key_id()).await.unwrap();
    assert!(found.is_some(), "the readable key still answers");
    let stats = a.key_ring_stats();
    assert_eq!(stats.unreadable_keys, 1, "{stats:?}");
    assert_eq!(stats.unreadable_key_skips, 1, "{stats:?}");
    assert!(a.key_by_id(&TokenKeyId::from_hex(&rotated.id).unwrap()).await.unwrap().is_none());
}

/// Truncated ids are one byte: among 60 live keys of one type, random ids
/// would collide with probability ~99.9 %. Key creation redraws until the new
/// key's truncated id is free among its type's live (not retired) keys, so a
/// TokenRequest's truncated id always names one key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_ids_are_unique_among_a_types_live_keys() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let service = node(&dir.path().join("db"), Arc::clone(&clock)).await;
    for _ in 0..59 {
        service.rotate_key(Environment::Sandbox, 5, None).await.unwrap();
    }
    let keys = service.keys_of(Environment::Sandbox).await.unwrap();
    let mut truncated: Vec<u8> = keys.iter().filter(|k| k.token_type() == 5).map(|k| k.truncated_id()).collect();
    assert_eq!(truncated.len(), 60);
    truncated.sort_unstable();
    truncated.dedup();
    assert_eq!(truncated.len(), 60, "every live type-5 key has its own truncated id");
    assert!(
        service.rotate_key(Environment::Sandbox, 3, None).await.is_err(),
        "a token type blindpass does not issue is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_kek_a_planted_unsealed_key_is_refused_counted_and_never_used() {
    use blindpass_service::kek::KeyEncryptionKey;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let kek = KeyEncryptionKey::from_text(&KeyEncryptionKey::generate_hex(&blindpass_service::SystemEntropy)).unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("sealed")).await.unwrap());
    let config =
        Config { issuer_name: "issuer.example".into(), key_encryption_key: Some(Arc::new(kek)), ..Config::default() };
    let sealed = Service::new(store, clock.clone(), config);
    sealed.ensure_initial_keys().await.unwrap();
    assert_eq!(sealed.check_key_material().await.unwrap(), 0);

    // Someone who can write the database but has no KEK makes a key of
    // their own (here: a node without a KEK on another store) and plants
    // it, unsealed, as a key that still verifies.
    let theirs = node(&dir.path().join("plain"), Arc::clone(&clock)).await;
    let mut planted = theirs
        .store()
        .issuer_keys(Some(Environment::Sandbox))
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.token_type == 2)
        .unwrap();
    planted.state = blindpass_service::KeyState::VerifyOnly;
    planted.rotated_at = Some(START);
    sealed.store().insert_issuer_key(&planted).await.unwrap();

    clock.advance(Config::default().key_refresh_secs + 1);
    sealed.reload_keys().await.unwrap();
    let planted_id = TokenKeyId::from_hex(&planted.id).unwrap();
    assert!(sealed.key_by_id(&planted_id).await.unwrap().is_none(), "the planted key must never verify");
    assert!(!sealed.keys_of(Environment::Sandbox).await.unwrap().iter().any(|k| k.record.id == planted.id));
    assert_eq!(sealed.key_ring_stats().unreadable_keys, 1);
    assert!(sealed.metrics().encode().contains("unsealed_key_material_total 1"), "counted");
    // The node's own keys keep working, and a restart refuses the store.
    assert!(sealed.active_key(Environment::Sandbox, 2).await.unwrap().is_some());
    let e = sealed.check_key_material().await.unwrap_err().to_string();
    assert!(e.contains("unsealed") && e.contains(&planted.id), "{e}");
}
