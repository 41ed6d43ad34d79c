//! Token types 1 and 5 through the real binary, on SQLite and on
//! PostgreSQL: `blindpass client issue --token-type 1|5` (single requests and
//! amortized batches), the keys in the directory and in `keys list`, each
//! token redeemed once with `blindpass client redeem` and refused at another
//! relay, and a `keys rotate --token-type` after which old tokens still
//! redeem (verify-only) and new ones come from the new key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::disallowed_methods)]

mod common;

use std::process::Command;

use blindpass_protocol::b64;
use blindpass_protocol::directory::IssuerDirectory;
use blindpass_protocol::voprf::wire::VoprfToken;
use serde_json::{Value, json};

const CLAIM: &str = "age_over18_verified";

async fn sandbox_relay(base: &str) -> (String, String) {
    let body = json!({"claim-type": CLAIM, "encryption-key-pem": null, "sandbox": true});
    let r = reqwest::Client::new().post(format!("{base}/api/privacy/v1/relays")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let relay: Value = r.json().await.unwrap();
    (relay["relay-token"].as_str().unwrap().to_owned(), relay["relay-secret"].as_str().unwrap().to_owned())
}

/// `blindpass client issue` of `count` tokens of `token_type`.
fn issue(base: &str, api_key: &str, token_type: u16, count: usize, batch: Option<usize>) -> Vec<String> {
    let (t, n) = (token_type.to_string(), count.to_string());
    let mut args = vec!["client", "--base-url", base, "--api-key", api_key, "issue", "--token-type", &t, "--count", &n];
    let b = batch.map(|b| b.to_string());
    if let Some(b) = &b {
        args.extend(["--batch-size", b]);
    }
    let tokens: Vec<String> = common::cli(&[], &args).lines().map(str::to_owned).collect();
    assert_eq!(tokens.len(), count);
    tokens
}

/// `blindpass client redeem`: Ok(stdout) or Err(stderr).
fn redeem(base: &str, relay: &(String, String), token: &str) -> Result<String, String> {
    let out = Command::new(common::BIN)
        .args(["client", "--base-url", base, "redeem", "--relay-token", &relay.0, "--relay-secret", &relay.1])
        .args(["--token", token])
        .output()
        .unwrap();
    match out.status.success() {
        true => Ok(String::from_utf8(out.stdout).unwrap()),
        false => Err(String::from_utf8(out.stderr).unwrap()),
    }
}

fn key_id_of(token: &str) -> String {
    VoprfToken::decode(&b64::decode(token).unwrap()).unwrap().token_key_id.to_hex()
}

async fn types_1_and_5_end_to_end(store: &[&str]) {
    let server = common::Node::spawn(store, &["--key-refresh-secs", "1"]).await;
    let api_key = common::api_key(store, "sandbox");
    let directory = reqwest::get(format!("{}/.well-known/token-issuer-directory?sandbox=true", server.base))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let directory = IssuerDirectory::from_json(&directory).unwrap();
    assert_eq!(directory.token_keys.iter().map(|k| k.token_type).collect::<Vec<_>>(), [2, 1, 5]);
    let listing = common::cli(store, &["keys", "list", "--env", "sandbox"]);
    for t in ["1", "2", "5"] {
        assert!(listing.lines().any(|l| l.split_whitespace().nth(2) == Some(t)), "type {t} in keys list:\n{listing}");
    }

    for token_type in [1u16, 5] {
        let mut tokens = issue(&server.base, &api_key, token_type, 2, None);
        tokens.extend(issue(&server.base, &api_key, token_type, 6, Some(4)));
        let relay = sandbox_relay(&server.base).await;
        let other = sandbox_relay(&server.base).await;
        for token in &tokens {
            let out = redeem(&server.base, &relay, token).unwrap_or_else(|e| panic!("type {token_type}: {e}"));
            assert!(out.contains("token-consumed: true"), "{out}");
            let refused = redeem(&server.base, &other, token).expect_err("a second redemption is refused");
            assert_eq!(refused.trim_end().lines().count(), 1, "one line: {refused}");
            assert!(refused.contains("already been used"), "{refused}");
        }

        // Rotation: the old key verifies for the overlap, the new one issues.
        let old = issue(&server.base, &api_key, token_type, 1, None).pop().unwrap();
        let t = token_type.to_string();
        common::cli(store, &["keys", "rotate", "--env", "sandbox", "--token-type", &t]);
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        let new = issue(&server.base, &api_key, token_type, 1, None).pop().unwrap();
        assert_ne!(key_id_of(&old), key_id_of(&new), "type {token_type}: issued by the new key");
        let relay = sandbox_relay(&server.base).await;
        redeem(&server.base, &relay, &old).unwrap_or_else(|e| panic!("a verify-only key still verifies: {e}"));
        redeem(&server.base, &relay, &new).unwrap();
    }
    // Type 2's key was not touched by the rotations of the other types.
    let listing = common::cli(store, &["keys", "list", "--env", "sandbox"]);
    let type2: Vec<&str> = listing.lines().filter(|l| l.split_whitespace().nth(2) == Some("2")).collect();
    assert_eq!(type2.len(), 1, "{listing}");
    assert!(type2[0].contains("active"), "{listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_1_and_5_through_the_binary_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    types_1_and_5_end_to_end(&["--data-dir", &data_dir]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(blindpass_test_postgres), ignore = "needs BLINDPASS_TEST_POSTGRES_URL (.ci/run sets it)")]
async fn types_1_and_5_through_the_binary_on_postgres() {
    use blindpass_store::postgres::testing::{create_schema, drop_schema, random_schema_name, url_with_schema};
    let base = std::env::var("BLINDPASS_TEST_POSTGRES_URL").expect("BLINDPASS_TEST_POSTGRES_URL");
    let schema = random_schema_name();
    create_schema(&base, &schema).await.unwrap();
    let url = url_with_schema(&base, &schema);
    types_1_and_5_end_to_end(&["--database-url", &url]).await;
    drop_schema(&base, &schema).await.unwrap();
}
