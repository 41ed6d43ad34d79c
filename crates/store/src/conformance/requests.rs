//! Conformance: idempotency records, rate-limit windows, settings.

use std::sync::Arc;

use crate::{IdempotencyBegin, Store, StoredResponse};

pub async fn idempotency(store: Arc<dyn Store>) {
    let store = &*store;
    let fp = [7u8; 32];
    let other = [8u8; 32];
    let (ttl, stale) = (86_400, 60);
    assert_eq!(store.idempotency_begin("s", "k", &fp, 1_000, ttl, stale).await.unwrap(), IdempotencyBegin::Started);
    assert_eq!(store.idempotency_begin("s", "k", &fp, 1_001, ttl, stale).await.unwrap(), IdempotencyBegin::InFlight);
    assert_eq!(store.idempotency_begin("s", "k", &other, 1_001, ttl, stale).await.unwrap(), IdempotencyBegin::Mismatch);
    // Another scope is independent.
    assert_eq!(store.idempotency_begin("t", "k", &other, 1_001, ttl, stale).await.unwrap(), IdempotencyBegin::Started);

    let response = StoredResponse {
        status: 201,
        content_type: "application/json; charset=utf-8".into(),
        body: b"{\"blind-sig\":\"x\"}".to_vec(),
    };
    store.idempotency_complete("s", "k", &response).await.unwrap();
    assert_eq!(
        store.idempotency_begin("s", "k", &fp, 1_002, ttl, stale).await.unwrap(),
        IdempotencyBegin::Completed(response.clone())
    );
    // Completing again does not overwrite the first response.
    store
        .idempotency_complete("s", "k", &StoredResponse { status: 500, content_type: String::new(), body: vec![] })
        .await
        .unwrap();
    assert_eq!(
        store.idempotency_begin("s", "k", &fp, 1_003, ttl, stale).await.unwrap(),
        IdempotencyBegin::Completed(response)
    );
    // After the TTL the key is fresh again, even with other parameters.
    assert_eq!(
        store.idempotency_begin("s", "k", &other, 1_000 + ttl, ttl, stale).await.unwrap(),
        IdempotencyBegin::Started
    );

    // Abandoned claims let the next request run; stale claims are taken over.
    assert_eq!(store.idempotency_begin("s", "a", &fp, 5_000, ttl, stale).await.unwrap(), IdempotencyBegin::Started);
    store.idempotency_abandon("s", "a").await.unwrap();
    assert_eq!(store.idempotency_begin("s", "a", &fp, 5_001, ttl, stale).await.unwrap(), IdempotencyBegin::Started);
    assert_eq!(
        store.idempotency_begin("s", "a", &fp, 5_001 + stale, ttl, stale).await.unwrap(),
        IdempotencyBegin::Started
    );

    assert!(store.idempotency_prune(1_000 + ttl + 1).await.unwrap() >= 1);
    assert_eq!(store.idempotency_begin("t", "k", &fp, 1_001, ttl, stale).await.unwrap(), IdempotencyBegin::Started);
}

pub async fn idempotency_has_one_winner(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(
                async move { store.idempotency_begin("race", "k", &[1; 32], 9_000, 86_400, 60).await.unwrap() },
            )
        })
        .collect();
    let mut started = 0;
    for t in tasks {
        match t.await.unwrap() {
            IdempotencyBegin::Started => started += 1,
            IdempotencyBegin::InFlight => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(started, 1, "exactly one request owns an idempotency key");
}

pub async fn rate_limits_count_every_hit(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.rate_limit_hit("env:sandbox", 600).await.unwrap() })
        })
        .collect();
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap());
    }
    counts.sort_unstable();
    assert_eq!(counts, (1..=40).collect::<Vec<_>>(), "every hit counted once");
    assert_eq!(store.rate_limit_hit("env:sandbox", 660).await.unwrap(), 1, "a new window starts at 1");
    assert_eq!(store.rate_limit_hit("env:production", 600).await.unwrap(), 1, "buckets are independent");
    assert_eq!(store.rate_limit_prune(660).await.unwrap(), 2);
    assert_eq!(store.rate_limit_hit("env:sandbox", 660).await.unwrap(), 2);
    // A batch counts its tokens in one atomic add.
    assert_eq!(store.rate_limit_add("env:sandbox", 660, 32).await.unwrap(), 34);
    assert_eq!(store.rate_limit_add("batch:new", 660, 5).await.unwrap(), 5, "a new window starts at n");
}

pub async fn settings(store: Arc<dyn Store>) {
    let store = &*store;
    assert_eq!(store.setting_get_or_insert("org", b"one").await.unwrap(), b"one");
    assert_eq!(store.setting_get_or_insert("org", b"two").await.unwrap(), b"one");
}

/// The test databases have no standby: a store reports no replication at all
/// (an embedded one) or replication that does not protect commits.
pub async fn a_store_without_synchronous_standbys_does_not_claim_to_protect_commits(store: Arc<dyn Store>) {
    if let Some(replication) = store.replication().await.unwrap() {
        assert_eq!(replication.synchronous_standbys, 0, "{replication:?}");
        assert!(!replication.protects_commits(), "{replication:?}");
    }
}
