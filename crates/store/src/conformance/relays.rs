//! Conformance: relays and spent tokens.

use std::sync::Arc;

use super::{issuer_key, spend};
use crate::ClaimFormat;
use crate::{
    ClaimResult, Environment, IdempotencyBegin, IdempotencyCompletion, KeyState, RecordOutcome, Relay, SpendOutcome,
    Store, StoredResponse,
};

pub fn relay(token: &str, env: Environment) -> Relay {
    Relay {
        token: token.into(),
        secret_hash: [9; 32],
        environment: env,
        claim_type: "age_over18_verified".into(),
        encryption_key_der: Some(vec![0x30, 0x00]),
        claim_format: ClaimFormat::Oaep,
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
    // The claim format and the JWE kid round-trip.
    for (token, format) in [
        ("relay_jwe", ClaimFormat::Jwe { kid: Some("key-2026".into()) }),
        ("relay_jwe_nokid", ClaimFormat::Jwe { kid: None }),
    ] {
        let mut jwe = relay(token, Environment::Production);
        jwe.claim_format = format;
        store.insert_relay(&jwe).await.unwrap();
        assert_eq!(store.relay_by_token(token).await.unwrap(), Some(jwe));
    }
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

/// Many spends at once (a backend may commit them together): every token has
/// exactly one winner, each contender learns the truth (here or elsewhere),
/// other calls interleaved with them are answered, idempotent answers commit
/// with their spends, and all of it is there afterwards.
pub async fn concurrent_spends_each_have_one_winner(store: Arc<dyn Store>) {
    const TOKENS: u8 = 100;
    let response = StoredResponse { status: 200, content_type: "application/json".into(), body: b"{}".to_vec() };
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..TOKENS {
        let scope = format!("relay:relay_a{n}");
        assert_eq!(
            store.idempotency_begin(&scope, "idem", &[n; 32], 100, 86_400, 30).await.unwrap(),
            IdempotencyBegin::Started
        );
        // Two contenders per token, at different relays, plus a read beside them.
        for relay in ["a", "b"] {
            let store = Arc::clone(&store);
            let mut s = spend("kc", &[n; 32], &format!("relay_{relay}{n}"), 7_200);
            if relay == "a" {
                let done =
                    IdempotencyCompletion { scope: scope.clone(), key: "idem".into(), response: response.clone() };
                s.idempotency = Some(done);
            }
            tasks.spawn(async move { (n, relay, store.spend_token(&s).await.unwrap()) });
        }
        let reader = Arc::clone(&store);
        tasks.spawn(async move {
            assert_eq!(reader.relay_by_token("relay_none").await.unwrap(), None);
            (n, "read", SpendOutcome::SpentElsewhere)
        });
    }
    let mut winners = vec![Vec::new(); usize::from(TOKENS)];
    while let Some(joined) = tasks.join_next().await {
        let (n, relay, outcome) = joined.unwrap();
        match (relay, outcome) {
            ("read", _) => {}
            (relay, SpendOutcome::Spent) => winners[usize::from(n)].push(relay),
            (_, SpendOutcome::SpentElsewhere) => {}
            (relay, other) => panic!("token {n} at {relay}: {other:?}"),
        }
    }
    for (n, won) in winners.iter().enumerate() {
        assert_eq!(won.len(), 1, "token {n}: one winner, got {won:?}");
        let n = n as u8;
        let winner = won[0];
        // Durable, and the winner's payload is what a retry at its relay gets.
        assert_eq!(
            store.spend_token(&spend("kc", &[n; 32], &format!("relay_{winner}{n}"), 7_200)).await.unwrap(),
            SpendOutcome::SpentHere { claim_payload: format!("claim for relay_{winner}{n}") }
        );
        let scope = format!("relay:relay_a{n}");
        let fingerprint = [n; 32];
        let completed = store.idempotency_begin(&scope, "idem", &fingerprint, 101, 86_400, 30);
        let expected =
            if winner == "a" { IdempotencyBegin::Completed(response.clone()) } else { IdempotencyBegin::InFlight };
        assert_eq!(completed.await.unwrap(), expected, "token {n}: the idempotent answer commits with its spend");
    }
}
