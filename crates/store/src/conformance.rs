//! The storage conformance suite: one set of behaviours every backend must
//! show. Each backend's tests expand [`conformance_tests!`](crate::conformance_tests)
//! into one test per behaviour, each on a fresh, empty store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::{
    ApiKey, ClaimResult, Environment, IdempotencyBegin, IdempotencyCompletion, IssuerKey, KeyState, Permission,
    RecordOutcome, Relay, Rewrap, RewrapTarget, Spend, SpendOutcome, Store, StoreError, StoredResponse,
};

/// Generates one `#[tokio::test]` per behaviour of the suite, each on a
/// fresh store: `$make` is an async function returning the store and a guard
/// that lives as long as the test (a temporary directory, a schema). Any
/// attributes given first (e.g. a conditional `#[ignore]`) go on every test.
///
/// ```text
/// blindpass_store::conformance_tests!(make = fresh_store);
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($(#[$attr:meta])* make = $make:path) => {
        $crate::conformance_tests!(@each [$(#[$attr])*] $make;
            api_keys, issuer_keys, first_issuer_key_has_one_winner, idempotency, idempotency_has_one_winner,
            rate_limits_count_every_hit, settings, pending_keys_are_promoted_once,
            a_retired_pending_key_is_never_promoted, relays, relays_expire, spending_has_one_winner,
            spent_records_outlive_their_tokens, spend_completes_idempotency_in_one_transaction,
            key_material_is_read_and_rewrapped_apart);
    };
    (@each $attrs:tt $make:path; $($name:ident),*) => {
        $($crate::conformance_tests!(@one $attrs $make, $name);)*
    };
    (@one [$($attr:tt)*] $make:path, $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $($attr)*
        async fn $name() {
            let (store, _guard) = $make().await;
            $crate::conformance::$name(store).await;
        }
    };
}

pub async fn key_material_is_read_and_rewrapped_apart(store: Arc<dyn Store>) {
    let store = &*store;
    let key = issuer_key("kw", Environment::Sandbox, KeyState::Retired, 30);
    store.insert_issuer_key(&key).await.unwrap();
    let metadata = store.issuer_key_metadata(Some(Environment::Sandbox)).await.unwrap();
    let listed = metadata.iter().find(|k| k.id == "kw").unwrap();
    assert!(listed.private_pkcs8.is_empty(), "metadata carries no private key");
    assert_eq!((listed.state, listed.created_at), (KeyState::Retired, 30));
    let full = store.issuer_keys(Some(Environment::Sandbox)).await.unwrap();
    assert_eq!(metadata.len(), full.len());
    assert_eq!(store.issuer_key_private("kw").await.unwrap().as_deref(), Some(&key.private_pkcs8[..]));
    assert_eq!(store.issuer_key_private("missing").await.unwrap(), None);

    store.setting_get_or_insert("secret.w1", b"one").await.unwrap();
    store.setting_get_or_insert("secret.w2", b"two").await.unwrap();
    store.setting_get_or_insert("other", b"x").await.unwrap();
    let secrets = store.settings_with_prefix("secret.w").await.unwrap();
    assert_eq!(secrets, vec![("secret.w1".to_owned(), b"one".to_vec()), ("secret.w2".to_owned(), b"two".to_vec())]);

    let change = |target, old: &[u8], new: &[u8]| Rewrap { target, old: old.to_vec(), new: new.to_vec() };
    // One stale expectation rolls the whole rewrap back.
    let stale = [
        change(RewrapTarget::Setting("secret.w1".into()), b"one", b"ONE"),
        change(RewrapTarget::Setting("secret.w2".into()), b"stale", b"TWO"),
    ];
    assert!(matches!(store.rewrap(&stale).await, Err(StoreError::Conflict(_))));
    assert_eq!(store.setting_get_or_insert("secret.w1", b"-").await.unwrap(), b"one", "rolled back");
    let good = [
        change(RewrapTarget::Setting("secret.w1".into()), b"one", b"ONE"),
        change(RewrapTarget::IssuerKey("kw".into()), &key.private_pkcs8, b"sealed"),
    ];
    store.rewrap(&good).await.unwrap();
    assert_eq!(store.setting_get_or_insert("secret.w1", b"-").await.unwrap(), b"ONE");
    assert_eq!(store.issuer_key_private("kw").await.unwrap().as_deref(), Some(&b"sealed"[..]));
}

pub fn spend(key_id: &str, nonce: &[u8], relay: &str, expires_at: i64) -> Spend {
    Spend {
        key_id: key_id.into(),
        nonce: nonce.to_vec(),
        relay_token: relay.into(),
        spent_at: expires_at - 3600,
        expires_at,
        claim_payload: format!("claim for {relay}"),
        idempotency: None,
    }
}

pub fn api_key(id: &str, env: Environment, lookup: &str) -> ApiKey {
    ApiKey {
        id: id.into(),
        name: Some(format!("name of {id}")),
        environment: env,
        permissions: vec![Permission::PrivacyPassWrite, Permission::RelayVerify],
        lookup: lookup.into(),
        secret_hash: [lookup.len() as u8; 32],
        created_at: 1_000,
        revoked_at: None,
    }
}

pub fn issuer_key(id: &str, env: Environment, state: KeyState, created_at: i64) -> IssuerKey {
    IssuerKey {
        id: id.into(),
        environment: env,
        state,
        private_pkcs8: Zeroizing::new(vec![1, 2, 3, id.len() as u8]),
        not_before: created_at,
        rotated_at: None,
        retired_at: None,
        created_at,
    }
}

pub async fn api_keys(store: Arc<dyn Store>) {
    let store = &*store;
    let a = api_key("api_a", Environment::Sandbox, "lookupa");
    store.insert_api_key(&a).await.unwrap();
    assert!(store.insert_api_key(&a).await.is_err(), "duplicate id must be refused");
    let mut same_lookup = api_key("api_other", Environment::Sandbox, "lookupa");
    same_lookup.name = None;
    assert!(store.insert_api_key(&same_lookup).await.is_err(), "duplicate lookup must be refused");
    assert_eq!(store.api_key_by_lookup("lookupa").await.unwrap(), Some(a.clone()));
    assert_eq!(store.api_key_by_lookup("nope").await.unwrap(), None);

    let mut b = api_key("api_b", Environment::Production, "lookupb");
    b.permissions = vec![Permission::RelayVerify];
    b.name = None;
    b.created_at = 2_000;
    store.insert_api_key(&b).await.unwrap();
    assert_eq!(store.list_api_keys().await.unwrap(), vec![a.clone(), b.clone()]);

    assert!(store.revoke_api_key("api_b", 3_000).await.unwrap());
    assert!(store.revoke_api_key("api_b", 4_000).await.unwrap());
    assert!(!store.revoke_api_key("api_missing", 3_000).await.unwrap());
    let revoked = store.api_key_by_lookup("lookupb").await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(3_000), "the first revocation time is kept");
}

pub async fn issuer_keys(store: Arc<dyn Store>) {
    let store = &*store;
    let env = Environment::Production;
    let k1 = issuer_key("k1", env, KeyState::Active, 10);
    store.insert_issuer_key(&k1).await.unwrap();
    // A second active key in the same environment violates the invariant.
    assert!(store.insert_issuer_key(&issuer_key("k1b", env, KeyState::Active, 11)).await.is_err());

    let k2 = issuer_key("k2", env, KeyState::Active, 20);
    store.rotate_issuer_key(&k2, 20).await.unwrap();
    let keys = store.issuer_keys(Some(env)).await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!((keys[0].id.as_str(), keys[0].state, keys[0].rotated_at), ("k1", KeyState::VerifyOnly, Some(20)));
    assert_eq!((keys[1].id.as_str(), keys[1].state), ("k2", KeyState::Active));
    assert_eq!(keys[1].private_pkcs8, k2.private_pkcs8);

    assert!(store.retire_issuer_key("k1", 30).await.unwrap());
    assert!(!store.retire_issuer_key("missing", 30).await.unwrap());
    let keys = store.issuer_keys(Some(env)).await.unwrap();
    assert_eq!((keys[0].state, keys[0].retired_at), (KeyState::Retired, Some(30)));
    assert!(store.issuer_keys(Some(Environment::Sandbox)).await.unwrap().is_empty());
    assert_eq!(store.issuer_keys(None).await.unwrap().len(), 2);
    assert!(!format!("{:?}", keys[0]).contains("[1, 2, 3"), "private key in Debug output");
}

pub async fn first_issuer_key_has_one_winner(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let key = issuer_key(&format!("first{i}"), Environment::Sandbox, KeyState::Active, 100);
                store.insert_first_issuer_key(&key).await.unwrap()
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap());
    }
    assert_eq!(winners, 1, "exactly one first key per environment");
    assert_eq!(store.issuer_keys(Some(Environment::Sandbox)).await.unwrap().len(), 1);
}

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
}

pub async fn settings(store: Arc<dyn Store>) {
    let store = &*store;
    assert_eq!(store.setting_get_or_insert("org", b"one").await.unwrap(), b"one");
    assert_eq!(store.setting_get_or_insert("org", b"two").await.unwrap(), b"one");
}

pub async fn pending_keys_are_promoted_once(store: Arc<dyn Store>) {
    let store = &*store;
    let env = Environment::Production;
    store.insert_issuer_key(&issuer_key("k2", env, KeyState::Active, 20)).await.unwrap();
    let mut pending = issuer_key("k3", env, KeyState::Pending, 40);
    pending.not_before = 100;
    store.rotate_issuer_key(&pending, 40).await.unwrap();
    let states = |keys: Vec<IssuerKey>| keys.into_iter().map(|k| (k.id, k.state)).collect::<Vec<_>>();
    assert!(states(store.issuer_keys(Some(env)).await.unwrap()).contains(&("k2".into(), KeyState::Active)));
    assert_eq!(store.promote_due_keys(99).await.unwrap(), 0, "not due yet");
    assert_eq!(store.promote_due_keys(100).await.unwrap(), 1);
    assert_eq!(store.promote_due_keys(101).await.unwrap(), 0, "a second run finds nothing");
    let after = states(store.issuer_keys(Some(env)).await.unwrap());
    assert!(after.contains(&("k2".into(), KeyState::VerifyOnly)), "{after:?}");
    assert!(after.contains(&("k3".into(), KeyState::Active)), "{after:?}");
}

/// Retirement racing a promotion: whichever runs first, the retired key ends
/// retired (promotion moves only keys still pending, under one lock).
pub async fn a_retired_pending_key_is_never_promoted(store: Arc<dyn Store>) {
    let store = &*store;
    let env = Environment::Production;
    for round in 0..8_i64 {
        let id = format!("k-race-{round}");
        let due = 200 + round;
        let mut pending = issuer_key(&id, env, KeyState::Pending, due - 1);
        pending.not_before = due;
        store.rotate_issuer_key(&pending, due - 1).await.unwrap();
        let (retired, promoted) = tokio::join!(store.retire_issuer_key(&id, due), store.promote_due_keys(due));
        assert!(retired.unwrap());
        promoted.unwrap();
        let state = store.issuer_keys(Some(env)).await.unwrap().into_iter().find(|k| k.id == id).unwrap().state;
        assert_eq!(state, KeyState::Retired, "round {round}");
    }
    assert_eq!(store.promote_due_keys(1_000).await.unwrap(), 0, "nothing pending is left");
}

pub fn relay(token: &str, env: Environment) -> Relay {
    Relay {
        token: token.into(),
        secret_hash: [9; 32],
        environment: env,
        claim_type: "age_over18_verified".into(),
        encryption_key_der: Some(vec![0x30, 0x00]),
        created_at: 50,
        expires_at: 50 + 86_400,
        result: None,
    }
}

pub async fn relays(store: Arc<dyn Store>) {
    let store = &*store;
    let r = relay("relay_a", Environment::Production);
    store.insert_relay(&r).await.unwrap();
    assert!(store.insert_relay(&r).await.is_err(), "duplicate relay token");
    assert_eq!(store.relay_by_token("relay_a").await.unwrap(), Some(r.clone()));
    assert_eq!(store.relay_by_token("relay_b").await.unwrap(), None);
    let result = ClaimResult {
        passed: true,
        methodology_json: r#"[{"method":"live_selfie","result":"passed"}]"#.into(),
        recorded_at: 60,
    };
    assert_eq!(store.record_relay_result("relay_a", &result).await.unwrap(), RecordOutcome::Recorded);
    let failed = ClaimResult { passed: false, methodology_json: "[]".into(), recorded_at: 61 };
    assert_eq!(store.record_relay_result("relay_a", &failed).await.unwrap(), RecordOutcome::AlreadyRecorded);
    assert_eq!(store.record_relay_result("relay_b", &failed).await.unwrap(), RecordOutcome::NotFound);
    assert_eq!(store.relay_by_token("relay_a").await.unwrap().unwrap().result, Some(result));
    let mut plain = relay("relay_plain", Environment::Sandbox);
    plain.encryption_key_der = None;
    store.insert_relay(&plain).await.unwrap();
    assert_eq!(store.relay_by_token("relay_plain").await.unwrap(), Some(plain));
}

pub async fn relays_expire(store: Arc<dyn Store>) {
    let store = &*store;
    let mut old = relay("relay_old", Environment::Sandbox);
    old.expires_at = 1_000;
    let mut young = relay("relay_young", Environment::Sandbox);
    young.expires_at = 5_000;
    store.insert_relay(&old).await.unwrap();
    store.insert_relay(&young).await.unwrap();
    assert_eq!(store.prune_relays(999).await.unwrap(), 0, "alive until its expiry");
    assert_eq!(store.prune_relays(1_000).await.unwrap(), 1, "gone at its expiry");
    assert_eq!(store.relay_by_token("relay_old").await.unwrap(), None);
    assert_eq!(store.relay_by_token("relay_young").await.unwrap(), Some(young));
}

pub async fn spending_has_one_winner(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store.spend_token(&spend("k3", &[7; 32], &format!("relay_{i}"), 7_200)).await.unwrap()
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap() == SpendOutcome::Spent);
    }
    assert_eq!(winners, 1, "a token is spent exactly once");
    assert_eq!(
        store.spend_token(&spend("k3", &[7; 32], "relay_x", 7_200)).await.unwrap(),
        SpendOutcome::SpentElsewhere
    );
    assert_eq!(store.spend_token(&spend("k3", &[8; 32], "relay_x", 7_200)).await.unwrap(), SpendOutcome::Spent);
    assert_eq!(store.spend_token(&spend("k2", &[7; 32], "relay_x", 7_200)).await.unwrap(), SpendOutcome::Spent);
    // The same token at the same relay: the first redemption's payload, not
    // the payload of this attempt.
    let mut again = spend("k3", &[8; 32], "relay_x", 7_200);
    again.claim_payload = "another payload".into();
    assert_eq!(
        store.spend_token(&again).await.unwrap(),
        SpendOutcome::SpentHere { claim_payload: "claim for relay_x".into() }
    );
}

pub async fn spent_records_outlive_their_tokens(store: Arc<dyn Store>) {
    let store = &*store;
    // A retired key's records are not pruned for being retired.
    store.insert_issuer_key(&issuer_key("kr", Environment::Sandbox, KeyState::Retired, 10)).await.unwrap();
    let day = 86_400;
    // Records of earlier steps expired long before: clear them so that the
    // counts below are this step's own.
    store.prune_spent_tokens(day).await.unwrap();
    assert_eq!(store.spend_token(&spend("kr", &[1; 32], "relay_r", 3 * day + 100)).await.unwrap(), SpendOutcome::Spent);
    assert_eq!(store.spend_token(&spend("kr", &[2; 32], "relay_r", 5 * day + 100)).await.unwrap(), SpendOutcome::Spent);
    assert_eq!(store.spend_token(&spend("kr", &[3; 32], "relay_r", 9 * day)).await.unwrap(), SpendOutcome::Spent);
    assert_eq!(store.prune_spent_tokens(day).await.unwrap(), 0);
    assert_eq!(store.prune_spent_tokens(3 * day + 100).await.unwrap(), 0, "a token expiring at the horizon stays");
    assert_eq!(store.prune_spent_tokens(3 * day + 101).await.unwrap(), 1, "only tokens expired before the horizon");
    assert_eq!(
        store.spend_token(&spend("kr", &[1; 32], "relay_r", 3 * day + 100)).await.unwrap(),
        SpendOutcome::Spent,
        "its record is gone (its token could not be accepted any more)"
    );
    assert_eq!(
        store.spend_token(&spend("kr", &[2; 32], "relay_r", 5 * day + 100)).await.unwrap(),
        SpendOutcome::SpentHere { claim_payload: "claim for relay_r".into() },
        "a record of a token that has not expired stays"
    );
    // Far ahead: whole days (partitions, where the backend has them) go.
    assert!(store.prune_spent_tokens(6 * day).await.unwrap() >= 2);
    assert_eq!(
        store.spend_token(&spend("kr", &[3; 32], "relay_r", 9 * day)).await.unwrap(),
        SpendOutcome::SpentHere { claim_payload: "claim for relay_r".into() }
    );
    // Records spent after a prune made partitions ahead are found again.
    assert_eq!(store.spend_token(&spend("kr", &[4; 32], "relay_r", 7 * day)).await.unwrap(), SpendOutcome::Spent);
    assert_eq!(
        store.spend_token(&spend("kr", &[4; 32], "relay_q", 7 * day)).await.unwrap(),
        SpendOutcome::SpentElsewhere
    );
}

pub async fn spend_completes_idempotency_in_one_transaction(store: Arc<dyn Store>) {
    let store = &*store;
    let fp = [5u8; 32];
    assert_eq!(
        store.idempotency_begin("relay:relay_i", "idem-1", &fp, 100, 86_400, 30).await.unwrap(),
        IdempotencyBegin::Started
    );
    let response = StoredResponse { status: 200, content_type: "application/json".into(), body: b"{}".to_vec() };
    let mut s = spend("ki", &[9; 32], "relay_i", 10_000);
    s.idempotency =
        Some(IdempotencyCompletion { scope: "relay:relay_i".into(), key: "idem-1".into(), response: response.clone() });
    assert_eq!(store.spend_token(&s).await.unwrap(), SpendOutcome::Spent);
    assert_eq!(
        store.idempotency_begin("relay:relay_i", "idem-1", &fp, 101, 86_400, 30).await.unwrap(),
        IdempotencyBegin::Completed(response)
    );
}
