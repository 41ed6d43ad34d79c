//! The service's use cases on their own (no HTTP), with a manual clock,
//! asserting on typed errors: issue, redeem, and the key lifecycle as issuing
//! and redeeming see it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::sync::Arc;

use blindpass_protocol::keys::TokenKeyId;
use blindpass_protocol::type2::keys::IssuerPublicKey;
use blindpass_protocol::{b64, persona};
use blindpass_service::lifecycle::NotIssuing;
use blindpass_service::testing::TestNode;
use blindpass_service::{
    AuthError, ChallengeOffer, ClaimType, Config, Environment, IssueError, IssueRequest, ManualClock, Permission,
    PresentedToken, RedeemError, Relay, Service, TokenRejection,
};
use blindpass_store::sqlite::SqliteStore;

const START: i64 = 1_800_000_000;
const CLAIM: &str = "age_over18_verified";
/// Shorter than a challenge's validity (at least an hour), so a token
/// outlives its key's overlap.
const OVERLAP: i64 = 600;

struct Node {
    service: Service,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

async fn node() -> Node {
    let config = Config { issuer_name: "issuer.example".into(), key_overlap_secs: OVERLAP, ..Config::default() };
    let TestNode { service, clock, dir } = TestNode::start(config, START).await.unwrap();
    Node { service, clock, _dir: dir }
}

/// The client's half: blind a token for `offer`, have `environment` sign it,
/// finalize. Returns the encoded token or the issuance error.
async fn issue(service: &Service, environment: Environment, offer: &ChallengeOffer) -> Result<String, IssueError> {
    let key = IssuerPublicKey::from_spki_der(&b64::decode(&offer.token_key).unwrap()).unwrap();
    let challenge = persona::Challenge::decode(&offer.challenge).unwrap();
    let (blinded, state) = persona::begin_issuance(&key, &offer.token_key_id, &challenge, &mut rand::rng()).unwrap();
    let key_id = TokenKeyId::from_hex(&offer.token_key_id).unwrap();
    let blind_sig = service.issue(environment, IssueRequest::by_id(key_id, blinded)).await?;
    Ok(persona::finalize_issuance(&key, &state, &blind_sig).unwrap().encode())
}

async fn sandbox_token(service: &Service) -> String {
    let offer = service.challenge(Environment::Sandbox, &claim(CLAIM)).await.unwrap();
    issue(service, Environment::Sandbox, &offer).await.unwrap()
}

async fn relay(service: &Service) -> Relay {
    service.create_relay(Environment::Sandbox, &claim(CLAIM), None).await.unwrap().relay
}

fn claim(text: &str) -> ClaimType {
    ClaimType::parse(text).unwrap()
}

/// The edge's half of a redemption: parse the presented text once, then
/// redeem (a parse refusal is the same typed rejection).
async fn redeem(service: &Service, relay: &Relay, text: &str) -> Result<blindpass_service::Redemption, RedeemError> {
    let token = PresentedToken::parse(text).map_err(RedeemError::InvalidToken)?;
    service.redeem(relay, &token).await
}

fn rejection(result: Result<blindpass_service::Redemption, RedeemError>) -> TokenRejection {
    match result.expect_err("a rejection") {
        RedeemError::InvalidToken(why) => why,
        other => panic!("expected a token rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_token_redeems_once_and_again_only_at_the_same_relay() {
    let Node { service, .. } = node().await;
    let token = sandbox_token(&service).await;
    let (here, elsewhere) = (relay(&service).await, relay(&service).await);
    let first = redeem(&service, &here, &token).await.unwrap();
    assert!(first.token_consumed);
    let again = redeem(&service, &here, &token).await.unwrap();
    assert_eq!(again.claim_payload, first.claim_payload, "a lost answer is recovered at the same relay");
    assert_eq!(rejection(redeem(&service, &elsewhere, &token).await), TokenRejection::AlreadyUsed);
}

#[tokio::test]
async fn hostile_and_stale_tokens_are_rejected_with_their_reason() {
    let Node { service, clock, .. } = node().await;
    let r = relay(&service).await;
    assert_eq!(rejection(redeem(&service, &r, "not base64url!").await), TokenRejection::NotBase64url);
    assert_eq!(rejection(redeem(&service, &r, "AAAA").await), TokenRejection::Malformed);
    // A real token from another deployment: its challenge's MAC is not ours.
    let foreign = sandbox_token(&node().await.service).await;
    assert_eq!(rejection(redeem(&service, &r, &foreign).await), TokenRejection::ChallengeNotOurs);

    let other_claim =
        service.create_relay(Environment::Sandbox, &claim("age_over21_verified"), None).await.unwrap().relay;
    let token = sandbox_token(&service).await;
    assert_eq!(rejection(redeem(&service, &other_claim, &token).await), TokenRejection::OtherClaimType);

    clock.advance(3 * 3600);
    let fresh_relay = relay(&service).await;
    assert_eq!(rejection(redeem(&service, &fresh_relay, &token).await), TokenRejection::ChallengeExpired);
}

#[tokio::test]
async fn issuance_checks_the_environment_and_the_key_state() {
    let Node { service, clock, .. } = node().await;
    let offer = service.challenge(Environment::Sandbox, &claim(CLAIM)).await.unwrap();
    assert_eq!(issue(&service, Environment::Production, &offer).await.unwrap_err(), IssueError::WrongEnvironment);
    let unknown = service.issue(Environment::Sandbox, IssueRequest::by_id(TokenKeyId([7; 32]), vec![0; 256])).await;
    assert_eq!(unknown.unwrap_err(), IssueError::UnknownKey);
    let short = service
        .issue(Environment::Sandbox, IssueRequest::by_id(TokenKeyId::from_hex(&offer.token_key_id).unwrap(), vec![1]))
        .await;
    assert_eq!(short.unwrap_err(), IssueError::WrongLength { expected: 256, found: 1 });

    // A token issued before a rotation redeems through the overlap, not after.
    let (during, after) = (
        issue(&service, Environment::Sandbox, &offer).await.unwrap(),
        issue(&service, Environment::Sandbox, &offer).await.unwrap(),
    );
    service.rotate_key(Environment::Sandbox, 2, None).await.unwrap();
    let rotated = issue(&service, Environment::Sandbox, &offer).await;
    assert_eq!(rotated.unwrap_err(), IssueError::KeyNotActive(NotIssuing::RotatedOut));
    let r = relay(&service).await;
    clock.advance(OVERLAP - 1);
    assert!(redeem(&service, &r, &during).await.unwrap().token_consumed, "within the overlap");
    clock.advance(1);
    assert_eq!(rejection(redeem(&service, &r, &after).await), TokenRejection::UnknownOrRetiredKey);

    // An announced key does not sign before its time, and takes over after.
    let pending = service.rotate_key(Environment::Sandbox, 2, Some(600)).await.unwrap();
    let pending_id = TokenKeyId::from_hex(&pending.id).unwrap();
    let early = service.issue(Environment::Sandbox, IssueRequest::by_id(pending_id, vec![0; 256])).await;
    assert_eq!(early.unwrap_err(), IssueError::KeyNotActive(NotIssuing::NotYetValid));
    clock.advance(600 + Config::default().key_refresh_secs + 1);
    let later = service.challenge(Environment::Sandbox, &claim(CLAIM)).await.unwrap();
    let now_active = service.key_by_id(&TokenKeyId::from_hex(&later.token_key_id).unwrap()).await.unwrap().unwrap();
    assert_eq!(now_active.record.id, pending.id, "the announced key is the active one after its not-before");

    // A retired key neither issues nor verifies.
    let active = service.challenge(Environment::Sandbox, &claim(CLAIM)).await.unwrap();
    let token = issue(&service, Environment::Sandbox, &active).await.unwrap();
    service.retire_key(&active.token_key_id).await.unwrap();
    let retired = issue(&service, Environment::Sandbox, &active).await;
    assert_eq!(retired.unwrap_err(), IssueError::KeyNotActive(NotIssuing::Retired));
    assert_eq!(rejection(redeem(&service, &r, &token).await), TokenRejection::UnknownOrRetiredKey);
}

#[tokio::test]
async fn a_seeded_entropy_source_makes_ids_and_secrets_repeatable() {
    let mut made = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
        let service = Service::builder(store, Arc::new(ManualClock::new(START)), Config::default())
            .entropy(Arc::new(blindpass_service::SeededEntropy::new(42)))
            .build();
        let key = service.create_api_key(Environment::Sandbox, vec![], None).await.unwrap();
        let relay = service.create_relay(Environment::Sandbox, &claim(CLAIM), None).await.unwrap();
        made.push((key.key.id.clone(), key.secret.to_string(), relay.relay.token));
    }
    assert_eq!(made[0], made[1], "the same seed, the same ids and secrets");
    assert!(made[0].1.starts_with("persona_sandbox_"));
}

#[tokio::test]
async fn a_revocation_made_elsewhere_takes_effect_within_the_api_key_cache_bound() {
    let Node { service, clock, .. } = node().await;
    let created = service.create_api_key(Environment::Sandbox, vec![Permission::PrivacyPassWrite], None).await.unwrap();
    let secret = created.secret.to_string();
    service.authenticate(&secret).await.unwrap();
    // Revoked by another process on the same store (the CLI, another node).
    service.store().revoke_api_key(&created.key.id, START).await.unwrap();
    assert!(service.authenticate(&secret).await.is_ok(), "trusted for api_key_cache_secs");
    clock.advance(service.config().api_key_cache_secs);
    assert_eq!(service.authenticate(&secret).await.unwrap_err(), AuthError::Revoked);

    // Revoked through this service: at once.
    let other = service.create_api_key(Environment::Sandbox, vec![Permission::PrivacyPassWrite], None).await.unwrap();
    service.authenticate(&other.secret).await.unwrap();
    service.revoke_api_key(&other.key.id).await.unwrap();
    assert_eq!(service.authenticate(&other.secret).await.unwrap_err(), AuthError::Revoked);
    assert_eq!(service.authenticate("persona_sandbox_unknown").await.unwrap_err(), AuthError::Unknown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_key_takes_over_on_every_node_at_its_not_before_not_at_their_next_refresh() {
    let Node { service: a, clock, _dir } = node().await;
    // Another node on the same store, its key ring loaded now.
    let store = Arc::new(SqliteStore::open(&_dir.path().join("db")).await.unwrap());
    let config = Config { issuer_name: "issuer.example".into(), key_overlap_secs: OVERLAP, ..Config::default() };
    let b = Service::new(store, Arc::clone(&clock) as _, config);
    let before = a.challenge(Environment::Sandbox, &claim(CLAIM)).await.unwrap().token_key_id;
    // Announced 3 s ahead; both rings see it pending.
    a.rotate_key(Environment::Sandbox, 2, Some(3)).await.unwrap();
    a.reload_keys().await.unwrap();
    b.reload_keys().await.unwrap();
    let relay_b = b.create_relay(Environment::Sandbox, &claim(CLAIM), None).await.unwrap().relay;
    // Its not-before passes; neither ring is due for a refresh (5 s).
    clock.advance(4);
    // A issues with the announced key...
    let offer = a.challenge(Environment::Sandbox, &claim(CLAIM)).await.unwrap();
    assert_ne!(offer.token_key_id, before, "A offers the announced key");
    let announced = offer.token_key_id.clone();
    let token = issue(&a, Environment::Sandbox, &offer).await.unwrap();
    // ...and B, whose ring still holds it as pending, accepts its token
    // and issues with it too.
    let redeemed = redeem(&b, &relay_b, &token).await.unwrap();
    assert!(redeemed.token_consumed);
    let offer = b.challenge(Environment::Sandbox, &claim(CLAIM)).await.unwrap();
    assert_eq!(offer.token_key_id, announced, "B offers the announced key");
    issue(&b, Environment::Sandbox, &offer).await.unwrap();
    // Before its not-before it did neither (the table in lifecycle.rs).
}
