//! Issuer keys in a PKCS#11 token (SoftHSM2), through the real binary:
//! issue → finalize → redeem, `keys rotate` making a new key in the token,
//! retire with and without destroying it, no private key bytes in the
//! database, the token going away (503 + Retry-After, redemption unharmed)
//! and coming back, bad configuration refused at start in one line, and two
//! nodes on PostgreSQL sharing one token.
//!
//! Needs SoftHSM2 and `BLINDPASS_TEST_PKCS11=1` at build time (`.ci/run`
//! installs and sets both); otherwise ignored. Each test runs in a child
//! process whose environment names a fresh token (`on_fresh_token`), which
//! the servers it starts inherit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use blindpass_client::{ChallengeOffer, Client, RetryPolicy};
use blindpass_hsm::Hsm;
use blindpass_hsm::testing::{SoftHsm, on_fresh_token};
use common::{BIN, Node, api_key, cli, pkcs11_args};

/// The DER prefix of a PKCS#8 RSA private key (version 0, rsaEncryption,
/// then the OCTET STRING holding RSAPrivateKey): what a software key leaves
/// in the database.
const PKCS8_RSA_PREFIX: [u8; 20] = [
    0x02, 0x01, 0x00, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00, 0x04,
    0x82,
];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every byte the SQLite store has on disk (database and WAL).
fn database_bytes(data: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(data).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_str().unwrap().starts_with("blindpass.db") {
            bytes.extend(std::fs::read(path).unwrap());
        }
    }
    bytes
}

fn no_retry(base: &str, api_key: &str) -> Client {
    Client::new(base).unwrap().with_api_key(api_key).with_retry(RetryPolicy {
        max_retries: 0,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(1),
    })
}

/// One Persona issuance as raw HTTP, for its status and headers.
async fn raw_issue(base: &str, api_key: &str, offer: &ChallengeOffer) -> reqwest::Response {
    let entropy: &dyn blindpass_service::Entropy = &blindpass_service::SystemEntropy;
    let (blinded, _) =
        blindpass_protocol::persona::begin_issuance(&offer.key, &offer.key_id, &offer.challenge, &mut entropy.rng())
            .unwrap();
    reqwest::Client::new()
        .post(format!("{base}{}", blindpass_protocol::api::PRIVACY_PASSES_PATH))
        .bearer_auth(api_key)
        .json(&blindpass_client::issuance_body(&blinded, &offer.key_id))
        .send()
        .await
        .unwrap()
}

/// Issues a token and redeems it at a fresh relay through `client`.
async fn issue_and_redeem(client: &Client) -> (String, blindpass_client::Claim) {
    let offer = client.challenge("age_over18_verified", true).await.unwrap();
    let token = client.issue(&offer).await.unwrap();
    let relay = client.create_relay("age_over18_verified", None, true).await.unwrap();
    (offer.key_id.clone(), client.generate_claim(&relay, &token.encode()).await.unwrap())
}

/// `keys list` rows: (token key id, Persona key id, type, env, state).
fn keys(store: &[&str]) -> Vec<[String; 5]> {
    cli(store, &["keys", "list"])
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<_> = l.split_whitespace().map(str::to_owned).collect();
            [f[0].clone(), f[1].clone(), f[2].clone(), f[3].clone(), f[4].clone()]
        })
        .collect()
}

#[test]
#[cfg_attr(not(blindpass_test_pkcs11), ignore = "set BLINDPASS_TEST_PKCS11=1 (SoftHSM2 installed) to run")]
fn token_keys_issue_rotate_retire_and_survive_the_token_going_away() {
    on_fresh_token("token_keys_issue_rotate_retire_and_survive_the_token_going_away", |token| {
        tokio::runtime::Runtime::new().unwrap().block_on(lifecycle(token));
    });
}

async fn lifecycle(token: &SoftHsm) {
    let data = tempfile::tempdir().unwrap();
    let mut store_owned = vec!["--data-dir".to_owned(), data.path().to_str().unwrap().to_owned()];
    store_owned.extend(pkcs11_args(token));
    let store: Vec<&str> = store_owned.iter().map(String::as_str).collect();
    let server = Node::spawn(&store, &["--token-types", "2", "--key-refresh-secs", "1"]).await;
    let secret = api_key(&store, "sandbox");
    let client = Client::new(&server.base).unwrap().with_api_key(&secret);
    let hsm = Hsm::open(token.config()).unwrap();

    // The two first keys (sandbox and production) were made in the token.
    assert_eq!(hsm.key_objects().unwrap().len(), 2);
    let (first_key, claim) = issue_and_redeem(&client).await;
    assert!(claim.token_consumed);

    // `keys rotate` (another process) makes the new key in the token; the
    // server signs with it within the refresh interval.
    let rotated = cli(&store, &["keys", "rotate", "--env", "sandbox"]);
    assert!(rotated.contains("kept in the PKCS#11 token \"blindpass-test\""), "{rotated}");
    assert_eq!(hsm.key_objects().unwrap().len(), 3);
    let new_id = rotated.split("new key ").nth(1).unwrap().split(' ').next().unwrap().to_owned();
    let listed = keys(&store);
    let new_row = listed.iter().find(|k| k[0] == new_id).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (second_key, _) = issue_and_redeem(&client).await;
    assert_eq!(second_key, new_row[1], "issued with the rotated key");
    assert_ne!(second_key, first_key);

    // The database holds references, never private key bytes.
    let db = rusqlite::Connection::open(data.path().join("blindpass.db")).unwrap();
    let mut statement = db.prepare("SELECT id, private_pkcs8 FROM issuer_keys WHERE token_type = 2").unwrap();
    let stored: Vec<(String, Vec<u8>)> =
        statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    assert_eq!(stored.len(), 3);
    let objects = hsm.key_objects().unwrap();
    for (id, bytes) in &stored {
        assert!(bytes.len() < 1024, "{id}: {} bytes stored", bytes.len());
        let (object, _) = blindpass_service::custody::decode_pkcs11(bytes).unwrap();
        assert!(objects.contains(&object), "{id}: {object:?} is not in the token");
    }
    drop(statement);
    drop(db);
    assert!(!contains(&database_bytes(data.path()), &PKCS8_RSA_PREFIX), "a PKCS#8 RSA key is in the database");
    // (The same check finds a software key: it is not vacuous.)
    let software = tempfile::tempdir().unwrap();
    cli(&["--data-dir", software.path().to_str().unwrap()], &["keys", "rotate", "--env", "sandbox"]);
    assert!(contains(&database_bytes(software.path()), &PKCS8_RSA_PREFIX));

    // The token goes away: issuance answers 503 with Retry-After (never
    // 500); a token issued before is still redeemed (verification needs
    // only the public key). It comes back: issuance recovers.
    let offer = client.challenge("age_over18_verified", true).await.unwrap();
    let kept = client.issue(&offer).await.unwrap();
    let token_dir = std::fs::read_dir(token.tokens_dir()).unwrap().next().unwrap().unwrap().path();
    let away = token.tokens_dir().with_file_name("away");
    std::fs::rename(&token_dir, &away).unwrap();
    for _ in 0..3 {
        let r = raw_issue(&server.base, &secret, &offer).await;
        assert_eq!(r.status(), 503, "{:?}", r.text().await);
        assert!(r.headers().contains_key("retry-after"));
    }
    let ready = reqwest::get(format!("{}/health/ready", server.base)).await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while the token is away");
    assert!(ready.text().await.unwrap().contains("cannot sign"));
    let unavailable = no_retry(&server.base, &secret).issue(&offer).await.unwrap_err();
    assert_eq!(unavailable.status(), Some(503));
    let relay = client.create_relay("age_over18_verified", None, true).await.unwrap();
    let claim = client.generate_claim(&relay, &kept.encode()).await.unwrap();
    assert!(claim.token_consumed);
    std::fs::rename(&away, &token_dir).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = raw_issue(&server.base, &secret, &offer).await.status();
        if status == 201 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "issuance did not recover");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    issue_and_redeem(&client).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let ready = reqwest::get(format!("{}/health/ready", server.base)).await.unwrap();
    assert_eq!(ready.status(), 200, "ready again");
    let metrics = reqwest::get(format!("{}/metrics", server.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("reason=\"signer_unavailable\""), "unavailability is counted");

    // Retire without --destroy keeps the object; with it, the object goes.
    let old = listed.iter().find(|k| k[1] == first_key).unwrap()[0].clone();
    let out = cli(&store, &["keys", "retire", &old]);
    assert!(!out.contains("destroyed"), "{out}");
    assert_eq!(hsm.key_objects().unwrap().len(), 3);
    let out = cli(&store, &["keys", "retire", &new_id, "--destroy"]);
    assert!(out.contains("destroyed 2 objects"), "{out}");
    assert_eq!(hsm.key_objects().unwrap().len(), 2);
    // A key retired earlier can have its object destroyed later.
    let out = cli(&store, &["keys", "retire", &old, "--destroy"]);
    assert!(out.contains("destroyed 2 objects"), "{out}");
    assert_eq!(hsm.key_objects().unwrap().len(), 1);
    // An unknown key is an error, not a silent success.
    let unknown =
        Command::new(BIN).args(&store).args(["keys", "retire", &"ab".repeat(32), "--destroy"]).output().unwrap();
    assert!(!unknown.status.success());
}

/// A misconfigured signer stops `serve` at once with one line on stderr.
fn refused(store: &[&str]) -> String {
    let out = Command::new(BIN).args(store).args(["serve", "--listen", "127.0.0.1:0"]).output().unwrap();
    assert!(!out.status.success(), "serve started");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<_> = stderr.lines().filter(|l| l.starts_with("blindpass:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0].to_owned()
}

#[test]
#[cfg_attr(not(blindpass_test_pkcs11), ignore = "set BLINDPASS_TEST_PKCS11=1 (SoftHSM2 installed) to run")]
fn bad_signer_configuration_is_one_line_at_start() {
    on_fresh_token("bad_signer_configuration_is_one_line_at_start", |token| {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().to_str().unwrap().to_owned();
        let with = |replace: &str, value: &str| {
            let mut args = vec!["--data-dir".to_owned(), dir.clone()];
            let mut base = pkcs11_args(token);
            if let Some(i) = base.iter().position(|a| a == replace) {
                base[i + 1] = value.to_owned();
            }
            args.extend(base);
            args
        };
        let as_refs = |v: &Vec<String>| v.iter().map(String::as_str).collect::<Vec<_>>().join("\u{0}");
        let run = |v: Vec<String>| {
            let joined = as_refs(&v);
            refused(&joined.split('\u{0}').collect::<Vec<_>>())
        };
        let wrong_pin = data.path().join("wrong-pin");
        std::fs::write(&wrong_pin, "0000\n").unwrap();
        let line = run(with("--pkcs11-pin-file", wrong_pin.to_str().unwrap()));
        assert!(line.contains("PIN is incorrect"), "{line}");
        let line = run(with("--pkcs11-module", "/nonexistent/libvendor-pkcs11.so"));
        assert!(line.contains("/nonexistent/libvendor-pkcs11.so could not be loaded"), "{line}");
        let line = run(with("--pkcs11-token-label", "no-such-token"));
        assert!(line.contains("no token \"no-such-token\"") && line.contains("\"blindpass-test\""), "{line}");
        let line = run(vec!["--data-dir".into(), dir.clone(), "--signer".into(), "pkcs11".into()]);
        assert!(line.contains("--pkcs11-module"), "{line}");
        let line = run(vec!["--data-dir".into(), dir.clone(), "--pkcs11-module".into(), "/x.so".into()]);
        assert!(line.contains("need --signer pkcs11"), "{line}");
        let mut no_pin = with("--pkcs11-pin-file", "");
        let at = no_pin.iter().position(|a| a == "--pkcs11-pin-file").unwrap();
        no_pin.drain(at..at + 2);
        let line = run(no_pin);
        assert!(line.contains("BLINDPASS_PKCS11_PIN"), "{line}");
        // The PIN never shows in an error.
        assert!(!line.contains(blindpass_hsm::testing::USER_PIN));
        // Nothing was created by the refused starts.
        assert!(Hsm::open(token.config()).unwrap().key_objects().unwrap().is_empty());
    });
}

#[test]
#[cfg_attr(
    not(all(blindpass_test_pkcs11, blindpass_test_postgres)),
    ignore = "needs BLINDPASS_TEST_PKCS11 and BLINDPASS_TEST_POSTGRES_URL (.ci/run sets both)"
)]
fn two_nodes_on_postgres_share_one_token() {
    on_fresh_token("two_nodes_on_postgres_share_one_token", |token| {
        tokio::runtime::Runtime::new().unwrap().block_on(two_nodes(token));
    });
}

async fn two_nodes(token: &SoftHsm) {
    use blindpass_store::postgres::testing::{create_schema, drop_schema, random_schema_name, url_with_schema};
    let base = std::env::var("BLINDPASS_TEST_POSTGRES_URL").expect("BLINDPASS_TEST_POSTGRES_URL");
    let schema = random_schema_name();
    create_schema(&base, &schema).await.unwrap();
    let url = url_with_schema(&base, &schema);
    let mut store_owned = vec!["--database-url".to_owned(), url.clone()];
    store_owned.extend(pkcs11_args(token));
    let store: Vec<&str> = store_owned.iter().map(String::as_str).collect();
    let serve = ["--token-types", "2", "--key-refresh-secs", "1"];
    // Both start at once: each may generate the first keys in the token,
    // one wins per environment, and the loser destroys what it made.
    let (a, b) = tokio::join!(Node::spawn(&store, &serve), Node::spawn(&store, &serve));
    let secret = api_key(&store, "sandbox");
    let (client_a, client_b) =
        (Client::new(&a.base).unwrap().with_api_key(&secret), Client::new(&b.base).unwrap().with_api_key(&secret));
    let hsm = Hsm::open(token.config()).unwrap();
    assert_eq!(hsm.key_objects().unwrap().len(), 2, "both nodes started: one key per environment, no orphans");

    // Issued on one node, redeemed on the other, once.
    let offer = client_a.challenge("age_over18_verified", true).await.unwrap();
    let token_a = client_a.issue(&offer).await.unwrap();
    let relay = client_b.create_relay("age_over18_verified", None, true).await.unwrap();
    client_b.generate_claim(&relay, &token_a.encode()).await.unwrap();
    let relay = client_a.create_relay("age_over18_verified", None, true).await.unwrap();
    let spent = no_retry(&a.base, &secret).generate_claim(&relay, &token_a.encode()).await;
    assert!(spent.is_err(), "double spend across nodes: {spent:?}");

    // Rotated through the CLI (a third process): both nodes sign with the
    // new token key; the old key still verifies during the overlap.
    let old_offer = offer;
    let old_token = client_b.issue(&old_offer).await.unwrap();
    let unspent = client_b.issue(&old_offer).await.unwrap();
    let rotated = cli(&store, &["keys", "rotate", "--env", "sandbox"]);
    assert!(rotated.contains("PKCS#11"), "{rotated}");
    assert_eq!(hsm.key_objects().unwrap().len(), 3);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for client in [&client_a, &client_b] {
        let (key, _) = issue_and_redeem(client).await;
        assert_ne!(key, old_offer.key_id, "signed with the rotated key");
    }
    let relay = client_a.create_relay("age_over18_verified", None, true).await.unwrap();
    let claim = client_a.generate_claim(&relay, &old_token.encode()).await.unwrap();
    assert!(claim.token_consumed, "a token of the rotated-out key verifies during the overlap");

    // Announced ahead: the new production key is made in the token, listed
    // as pending, and takes over on both nodes at its not-before.
    let production = Client::new(&b.base).unwrap().with_api_key(&api_key(&store, "production"));
    let before = production.challenge("age_over18_verified", false).await.unwrap().key_id;
    let announced = cli(&store, &["keys", "rotate", "--env", "production", "--announce-secs", "3"]);
    assert!(announced.contains("(pending,") && announced.contains("PKCS#11"), "{announced}");
    assert_eq!(hsm.key_objects().unwrap().len(), 4);
    assert_eq!(production.challenge("age_over18_verified", false).await.unwrap().key_id, before);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let offer = production.challenge("age_over18_verified", false).await.unwrap();
    assert_ne!(offer.key_id, before, "the announced key took over");
    production.issue(&offer).await.unwrap();

    // Retired with --destroy on PostgreSQL: gone from the token; neither
    // node verifies its tokens any more; issuance goes on with the new key.
    let old_sandbox = keys(&store).into_iter().find(|k| k[1] == old_offer.key_id).unwrap()[0].clone();
    let out = cli(&store, &["keys", "retire", &old_sandbox, "--destroy"]);
    assert!(out.contains("destroyed 2 objects"), "{out}");
    assert_eq!(hsm.key_objects().unwrap().len(), 3);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for node in [&a, &b] {
        let relay = client_a.create_relay("age_over18_verified", None, true).await.unwrap();
        let refused = no_retry(&node.base, &secret).generate_claim(&relay, &unspent.encode()).await;
        assert!(refused.is_err(), "a retired key's token was accepted: {refused:?}");
    }
    let kept = client_b.issue(&client_b.challenge("age_over18_verified", true).await.unwrap()).await.unwrap();
    let relay = client_b.create_relay("age_over18_verified", None, true).await.unwrap();
    assert!(client_b.generate_claim(&relay, &kept.encode()).await.unwrap().token_consumed);
    drop((a, b));
    drop_schema(&base, &schema).await.unwrap();
}
