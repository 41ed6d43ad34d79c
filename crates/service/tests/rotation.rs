//! Automatic rotation, driven by a manual clock on two nodes sharing one
//! store: nothing happens before a key is due however often the nodes tick;
//! when both tick at the due time, exactly one successor is announced; it is
//! listed but does not sign until its not-before, then signs while the old
//! key only verifies; the old key is retired when its overlap ends; and the
//! next cycle starts from the new key. An environment without a policy is
//! left alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;

use blindpass_service::rotation::RotationPolicy;
use blindpass_service::{Config, Environment, KeyState, ManualClock, Service};

const START: i64 = 1_800_000_000;
const LIFETIME: i64 = 24 * 3600;
const ANNOUNCE: i64 = 360;
const OVERLAP: i64 = 2 * 3600;

fn config() -> Config {
    Config {
        issuer_name: "issuer.example".into(),
        token_types: vec![2, 5],
        relay_token_types: vec![2, 5],
        key_overlap_secs: OVERLAP,
        key_announce_secs: ANNOUNCE,
        // Sandbox only: production has no policy.
        key_rotation: vec![
            RotationPolicy { environment: Environment::Sandbox, token_type: 2, lifetime_secs: LIFETIME },
            RotationPolicy { environment: Environment::Sandbox, token_type: 5, lifetime_secs: LIFETIME },
        ],
        ..Config::default()
    }
}

async fn node(path: &std::path::Path, clock: Arc<ManualClock>) -> Service {
    blindpass_service::testing::on_store(path, clock, config()).await.unwrap()
}

/// (state, not_before) of every key of `env` and type 2, oldest first.
async fn keys(s: &Service, env: Environment) -> Vec<(String, KeyState, i64)> {
    let mut keys: Vec<_> = s
        .store()
        .issuer_key_metadata(Some(env))
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.token_type == 2)
        .map(|k| (k.id, k.state, k.not_before))
        .collect();
    keys.sort_by_key(|k| k.2);
    keys
}

async fn both_tick(a: &Service, b: &Service) -> u64 {
    let (x, y) = tokio::join!(a.rotate_due_keys(), b.rotate_due_keys());
    assert_eq!((x.failures, y.failures), (0, 0));
    x.announced + y.announced
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_rotate_once_per_due_time_through_the_whole_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let clock = Arc::new(ManualClock::new(START));
    let a = node(&path, Arc::clone(&clock)).await;
    let b = node(&path, Arc::clone(&clock)).await;
    let first = keys(&a, Environment::Sandbox).await;
    assert_eq!(first.len(), 1);
    let production = keys(&a, Environment::Production).await;

    // Before the due time, however often both tick: nothing.
    for step in [0, 60, LIFETIME / 2, LIFETIME - ANNOUNCE - 1 - LIFETIME / 2 - 60] {
        clock.advance(step);
        assert_eq!(both_tick(&a, &b).await, 0);
    }
    assert_eq!(keys(&a, Environment::Sandbox).await, first);

    // Due: both nodes tick at once, one successor per policy (types 2 and 5).
    clock.advance(1);
    assert_eq!(both_tick(&a, &b).await, 2, "one announcement per policy, not per node");
    let announced = keys(&a, Environment::Sandbox).await;
    assert_eq!(announced.len(), 2);
    let successor = announced[1].clone();
    assert_eq!(successor.1, KeyState::Pending);
    assert_eq!(successor.2, START + LIFETIME, "it takes over when the old key's lifetime ends");
    // Ticking again changes nothing: a successor is pending.
    assert_eq!(both_tick(&a, &b).await, 0);
    assert_eq!(keys(&a, Environment::Sandbox).await.len(), 2);

    // Listed in the directory (announced ahead), but not signing yet.
    let listed = a.directory(&[Environment::Sandbox], "/token-request").await.unwrap().to_json();
    let listed: serde_json::Value = serde_json::from_slice(&listed).unwrap();
    let type2: Vec<_> =
        listed["token-keys"].as_array().unwrap().iter().filter(|k| k["token-type"] == 2).cloned().collect();
    assert_eq!(type2.len(), 2, "the successor is listed beside the signing key: {listed}");
    assert_eq!(type2[0]["not-before"], START + LIFETIME, "pending first, with its future not-before: {listed}");
    let active_now = a.active_key(Environment::Sandbox, 2).await.unwrap().unwrap();
    assert_eq!(active_now.record.id, first[0].0, "the old key still signs until then");

    // Its not-before comes: it signs, the old key only verifies.
    clock.advance(ANNOUNCE);
    both_tick(&a, &b).await;
    let after = keys(&b, Environment::Sandbox).await;
    assert_eq!(after[0].1, KeyState::VerifyOnly);
    assert_eq!(after[1].1, KeyState::Active);
    clock.advance(Config::default().key_refresh_secs + 1);
    assert_eq!(b.active_key(Environment::Sandbox, 2).await.unwrap().unwrap().record.id, successor.0);
    let old = b.key_by_id(&blindpass_protocol::keys::TokenKeyId::from_hex(&first[0].0).unwrap()).await.unwrap();
    assert!(b.lifecycle().can_verify(&old.unwrap().record, b.now()), "the old key verifies during the overlap");

    // The overlap ends: the old key is retired (once).
    clock.advance(OVERLAP);
    let (x, y) = tokio::join!(a.rotate_due_keys(), b.rotate_due_keys());
    assert_eq!(x.retired + y.retired, 2, "the type-2 and type-5 predecessors, each once");
    assert_eq!(keys(&a, Environment::Sandbox).await[0].1, KeyState::Retired);

    // The next cycle starts from the new key's not-before.
    clock.advance(START + 2 * LIFETIME - ANNOUNCE - 1 - a.now());
    assert_eq!(both_tick(&a, &b).await, 0);
    clock.advance(1);
    assert_eq!(both_tick(&a, &b).await, 2);
    assert_eq!(keys(&a, Environment::Sandbox).await.last().unwrap().2, START + 2 * LIFETIME);

    // No policy for production: untouched.
    assert_eq!(keys(&a, Environment::Production).await, production);
    // The metrics counted the announcements this node made, and no failure.
    let text = a.metrics().encode() + &b.metrics().encode();
    let total: f64 =
        text.lines().filter_map(|l| l.strip_prefix("key_rotation_total ")).map(|v| v.parse::<f64>().unwrap()).sum();
    assert_eq!(total, 4.0, "{text}");
    assert!(!text.lines().any(|l| l.starts_with("key_rotation_failure_total ") && !l.ends_with(" 0")));
    assert!(text.contains("key_next_rotation_seconds{"), "{text}");
}

#[tokio::test]
async fn a_node_that_was_down_past_the_due_time_still_announces_a_full_lead_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let a = node(&dir.path().join("db"), Arc::clone(&clock)).await;
    // Overdue by an hour past the old key's lifetime.
    clock.advance(LIFETIME + 3600);
    assert_eq!(a.rotate_due_keys().await.announced, 2);
    let successor = keys(&a, Environment::Sandbox).await.last().unwrap().clone();
    assert_eq!(successor.1, KeyState::Pending);
    assert_eq!(successor.2, a.now() + ANNOUNCE, "clients still see it a full max-age before it signs");
    // The old key keeps signing meanwhile.
    assert!(a.active_key(Environment::Sandbox, 2).await.unwrap().is_some());
}
