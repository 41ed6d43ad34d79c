//! Conformance: API keys and issuer keys (lifecycle, first key, key material).

use std::sync::Arc;

use super::{api_key, issuer_key};
use crate::{Environment, IssuerKey, KeyState, Permission, Rewrap, RewrapTarget, Store, StoreError};

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

    // A key's own rate limit: stored at creation, set, changed, removed.
    let mut c = api_key("api_c", Environment::Sandbox, "lookupc");
    c.rate_limit_per_minute = Some(7);
    store.insert_api_key(&c).await.unwrap();
    assert_eq!(store.api_key_by_lookup("lookupc").await.unwrap(), Some(c.clone()));
    assert!(store.set_api_key_rate_limit("api_c", Some(u64::MAX >> 1)).await.unwrap());
    let big = store.api_key_by_lookup("lookupc").await.unwrap().unwrap();
    assert_eq!(big.rate_limit_per_minute, Some(u64::MAX >> 1), "the largest limit round-trips");
    assert!(store.set_api_key_rate_limit("api_c", Some(u64::MAX)).await.is_err(), "past i64 is refused, not wrapped");
    assert!(store.set_api_key_rate_limit("api_c", Some(0)).await.is_err(), "0 is refused");
    assert!(store.set_api_key_rate_limit("api_c", None).await.unwrap());
    assert_eq!(store.api_key_by_lookup("lookupc").await.unwrap().unwrap().rate_limit_per_minute, None);
    assert!(!store.set_api_key_rate_limit("api_missing", Some(5)).await.unwrap());
    assert_eq!(store.list_api_keys().await.unwrap().len(), 3);
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
    assert!(!store.retire_issuer_key("k1", 35).await.unwrap(), "already retired: not counted again");
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

pub async fn announcing_a_successor_has_one_winner(store: Arc<dyn Store>) {
    let env = Environment::Sandbox;
    store.insert_issuer_key(&issuer_key("old", env, KeyState::Active, 10)).await.unwrap();
    // Another type's pending key does not block this type's announcement.
    let mut other_type = issuer_key("t5pending", env, KeyState::Pending, 10);
    other_type.token_type = 5;
    other_type.not_before = 5_000;
    store.insert_issuer_key(&other_type).await.unwrap();
    let successor = move |i: usize| {
        let mut k = issuer_key(&format!("next{i}"), env, KeyState::Pending, 50);
        k.not_before = 1_000;
        k
    };
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.announce_issuer_key(&successor(i), "old").await.unwrap() })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap());
    }
    assert_eq!(winners, 1, "eight nodes at one due time: one announcement");
    let pending =
        |keys: Vec<IssuerKey>| keys.iter().filter(|k| k.state == KeyState::Pending && k.token_type == 2).count();
    assert_eq!(pending(store.issuer_keys(Some(env)).await.unwrap()), 1);
    // While one is pending, no other; once it is active, nothing replaces a
    // key that is no longer active.
    assert!(!store.announce_issuer_key(&successor(9), "old").await.unwrap());
    assert_eq!(store.promote_due_keys(1_000).await.unwrap(), 1);
    assert!(!store.announce_issuer_key(&successor(10), "old").await.unwrap(), "old is verify-only now");
    assert!(!store.announce_issuer_key(&successor(11), "missing").await.unwrap());
    let active = store
        .issuer_keys(Some(env))
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.state == KeyState::Active && k.token_type == 2)
        .unwrap();
    assert!(store.announce_issuer_key(&successor(12), &active.id).await.unwrap(), "the next cycle");
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

/// Each token type has its own lifecycle in an environment: one active key
/// per (environment, token type), a first key per type, rotation and
/// promotion stepping down only keys of their own type.
pub async fn key_lifecycles_are_per_token_type(store: Arc<dyn Store>) {
    let store = &*store;
    let env = Environment::Production;
    let typed = |id: &str, token_type: u16, state, at| IssuerKey { token_type, ..issuer_key(id, env, state, at) };
    assert!(store.insert_first_issuer_key(&typed("rsa1", 2, KeyState::Active, 10)).await.unwrap());
    assert!(store.insert_first_issuer_key(&typed("p384a", 1, KeyState::Active, 10)).await.unwrap(), "first of type 1");
    assert!(store.insert_first_issuer_key(&typed("r255a", 5, KeyState::Active, 10)).await.unwrap(), "first of type 5");
    assert!(!store.insert_first_issuer_key(&typed("r255x", 5, KeyState::Active, 11)).await.unwrap(), "type 5 has one");
    assert!(store.insert_issuer_key(&typed("r255y", 5, KeyState::Active, 11)).await.is_err(), "one active per type");
    assert!(store.insert_issuer_key(&typed("bad", 3, KeyState::Retired, 11)).await.is_err(), "unknown token type");

    store.rotate_issuer_key(&typed("r255b", 5, KeyState::Active, 20), 20).await.unwrap();
    let mut pending = typed("p384b", 1, KeyState::Pending, 20);
    pending.not_before = 50;
    store.rotate_issuer_key(&pending, 20).await.unwrap();
    assert_eq!(store.promote_due_keys(50).await.unwrap(), 1);

    let mut states: Vec<_> = store
        .issuer_key_metadata(Some(env))
        .await
        .unwrap()
        .into_iter()
        .map(|k| (k.id, k.token_type, k.state))
        .collect();
    states.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        states,
        vec![
            ("p384a".into(), 1, KeyState::VerifyOnly),
            ("p384b".into(), 1, KeyState::Active),
            ("r255a".into(), 5, KeyState::VerifyOnly),
            ("r255b".into(), 5, KeyState::Active),
            ("rsa1".into(), 2, KeyState::Active),
        ],
        "each rotation stepped down only its own type"
    );
    let full = store.issuer_keys(Some(env)).await.unwrap();
    assert!(full.iter().all(|k| k.private_pkcs8.len() == 4 && [1, 2, 5].contains(&k.token_type)));
}
