//! End to end: the real `blindpass` binary on a free port with a temporary
//! data directory; an API key made with the CLI; a token blinded with the
//! protocol crate, signed over HTTP, finalized and verified.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::disallowed_methods)]

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{BIN, Node, cli};

use blindpass_protocol::type2::keys::IssuerPublicKey;
use blindpass_protocol::{b64, persona};

#[tokio::test]
async fn cli_key_then_issue_over_http_then_finalize_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let store = ["--data-dir", dir.path().to_str().unwrap()];
    let mut server = Node::spawn(&store, &["--api-key-cache-secs", "2"]).await;

    // An API key made by the CLI on the store the server is using.
    let out = cli(&store, &["api-keys", "create", "--env", "sandbox", "--name", "e2e"]);
    let secret = out.lines().last().unwrap().to_owned();
    assert!(secret.starts_with("persona_sandbox_"), "{out}");
    let listing = cli(&store, &["api-keys", "list"]);
    assert!(listing.contains("e2e") && !listing.contains(&secret), "secrets are never listed");

    // The sandbox issuer key the server created at start.
    let keys = cli(&store, &["keys", "list", "--env", "sandbox"]);
    let type2 = keys.lines().skip(1).find(|l| l.split_whitespace().nth(2) == Some("2")).expect("a type-2 key");
    let key_id = type2.split_whitespace().nth(1).unwrap().to_owned();
    assert_eq!(keys.lines().count(), 4, "one key per token type (2, 1, 5):\n{keys}");
    let key = sandbox_public_key(dir.path(), &key_id).await;

    // Blind as Persona's Go SDK does, sign over HTTP.
    let secret_key = persona::ChallengeSecret::new(vec![5; 32]).unwrap();
    let challenge = persona::Challenge::issue(
        &secret_key,
        &persona::ChallengeFields {
            issuer_name: "issuer.example/api/v1/privacy-passes",
            origin_info: "/api/privacy/v1/relays",
            expires_at: 4_000_000_000,
            claim_type: "age_over18_verified",
            environment: "sandbox",
        },
    );
    let (blinded, state) = persona::begin_issuance(&key, &key_id, &challenge, &mut rand::rng()).unwrap();
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/privacy-passes", server.base))
        .bearer_auth(&secret)
        .json(&serde_json::json!({ "blindedToken": b64::encode_unpadded(&blinded), "keyId": key_id }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert!(response.headers()["request-id"].to_str().unwrap().starts_with("req_"));
    let body: serde_json::Value = response.json().await.unwrap();
    let blind_sig = b64::decode(body["blind-sig"].as_str().unwrap()).unwrap();
    let token = persona::finalize_issuance(&key, &state, &blind_sig).unwrap();
    persona::Token::decode(&token.encode()).unwrap().verify_signature(&key).unwrap();

    // Revoking with the CLI takes effect on the running server within
    // --api-key-cache-secs (2 s here): the server trusts a key it found
    // valid that long without reading the store again.
    let id = out.lines().next().unwrap().trim_start_matches("id: ").to_owned();
    cli(&store, &["api-keys", "revoke", &id]);
    let revoked_at = Instant::now();
    let issue = async || {
        let response = reqwest::Client::new()
            .post(format!("{}/api/v1/privacy-passes", server.base))
            .bearer_auth(&secret)
            .json(&serde_json::json!({ "blindedToken": b64::encode_unpadded(&blinded), "keyId": key_id }))
            .send()
            .await
            .unwrap();
        response.status().as_u16()
    };
    let mut status = issue().await;
    while status != 403 && revoked_at.elapsed() < Duration::from_secs(4) {
        assert_eq!(status, 201, "until the bound the cached key still issues");
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = issue().await;
    }
    assert_eq!(status, 403, "revoked within the bound");
    assert!(revoked_at.elapsed() <= Duration::from_secs(3) + Duration::from_millis(500), "{:?}", revoked_at.elapsed());

    // SIGTERM stops it cleanly.
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = wait_with_timeout(&mut server.child, Duration::from_secs(15));
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn cli_errors_exit_non_zero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["api-keys", "revoke", "api_missing"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no API key"), "{stderr}");
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["api-keys", "create", "--env", "staging"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Reads the public key for `key_id` straight from the store the CLI shares.
async fn sandbox_public_key(data_dir: &Path, key_id: &str) -> IssuerPublicKey {
    let url = format!("sqlite://{}", data_dir.join("blindpass.db").display());
    let store = blindpass_store::open(&url).await.unwrap();
    let keys = store.issuer_keys(Some(blindpass_store::Environment::Sandbox)).await.unwrap();
    let key = keys.iter().find(|k| k.token_type == 2).expect("a type-2 key");
    let signer = blindpass_rsa::RsaPrivateKey::from_pkcs8_der(&key.private_pkcs8).unwrap();
    let public =
        IssuerPublicKey::new(blindpass_protocol::type2::blind_rsa::RawSigner::public_key(&signer).clone()).unwrap();
    assert_eq!(public.persona_key_id().to_hex(), key_id);
    public
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "server did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn client_flow_completes_the_sandbox_relay_flow_and_prints_the_claim() {
    let dir = tempfile::tempdir().unwrap();
    let store = ["--data-dir", dir.path().to_str().unwrap()];
    let server = Node::spawn(&store, &[]).await;
    let key = cli(&store, &["api-keys", "create", "--env", "sandbox"]).lines().last().unwrap().to_owned();
    let out =
        Command::new(BIN).args(["client", "--base-url", &server.base, "--api-key", &key, "flow"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("4. claim generated, token consumed: true"), "{stdout}");
    let claim: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(claim["claim_result"], "passed");

    // Scripts: --json, issue --count N into a file, then redeem one.
    let tokens_file = dir.path().join("tokens.txt");
    let out = Command::new(BIN)
        .args(["client", "--base-url", &server.base, "--api-key", &key, "issue", "--count", "3", "--out"])
        .arg(&tokens_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tokens = std::fs::read_to_string(&tokens_file).unwrap();
    assert_eq!(tokens.lines().count(), 3);
    let relay: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/api/privacy/v1/relays", server.base))
        .json(&serde_json::json!({"claim-type": "age_over18_verified", "encryption-key-pem": null, "sandbox": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let redeem = |token: &str| {
        Command::new(BIN)
            .args(["client", "--base-url", &server.base, "--json", "redeem", "--relay-token"])
            .arg(relay["relay-token"].as_str().unwrap())
            .args(["--relay-secret", relay["relay-secret"].as_str().unwrap(), "--token", token])
            .output()
            .unwrap()
    };
    let first = tokens.lines().next().unwrap();
    let out = redeem(first);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["token-consumed"], true);
    // The same token at the same relay: the same claim (a lost answer can
    // be retried); at another relay it is refused as spent.
    let again = redeem(first);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let retried: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(retried["claim-payload"], reply["claim-payload"]);
    let other: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/api/privacy/v1/relays", server.base))
        .json(&serde_json::json!({"claim-type": "age_over18_verified", "encryption-key-pem": null, "sandbox": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let elsewhere = Command::new(BIN)
        .args(["client", "--base-url", &server.base, "--json", "redeem", "--relay-token"])
        .arg(other["relay-token"].as_str().unwrap())
        .args(["--relay-secret", other["relay-secret"].as_str().unwrap(), "--token", first])
        .output()
        .unwrap();
    assert!(!elsewhere.status.success(), "a spent token is refused at another relay");
    assert!(String::from_utf8_lossy(&elsewhere.stderr).contains("Privacy Pass token required"));
}

#[tokio::test]
async fn rust_client_library_runs_both_dialects() {
    let dir = tempfile::tempdir().unwrap();
    let store = ["--data-dir", dir.path().to_str().unwrap()];
    let server = Node::spawn(&store, &[]).await;
    let key = cli(&store, &["api-keys", "create", "--env", "sandbox"]).lines().last().unwrap().to_owned();
    let client = blindpass_client::Client::new(&server.base).unwrap().with_api_key(&key);

    let offer = client.challenge("age_over18_verified", true).await.unwrap();
    let token = client.issue(&offer).await.unwrap();
    let relay = client.create_relay("age_over18_verified", None, true).await.unwrap();
    let claim = client.generate_claim(&relay, &token.encode()).await.unwrap();
    assert!(claim.token_consumed);

    let challenge = client.rfc_challenge(&relay).await.unwrap();
    let rfc_token = client.issue_rfc(&challenge, true).await.unwrap();
    let claim = client.generate_claim(&relay, &b64::encode_padded(&rfc_token.encode())).await.unwrap();
    assert!(claim.token_consumed);
    let retried = client.generate_claim(&relay, &b64::encode_padded(&rfc_token.encode())).await.unwrap();
    assert_eq!(retried, claim, "a retry at the same relay returns the same claim");
    let other = client.create_relay("age_over18_verified", None, true).await.unwrap();
    let again = client.generate_claim(&other, &b64::encode_padded(&rfc_token.encode())).await.unwrap_err();
    assert_eq!(again.status(), Some(401));
    match again {
        blindpass_client::ClientError::Api { title, request_id, .. } => {
            assert_eq!(title, "Privacy Pass token required");
            assert!(request_id.unwrap().starts_with("req_"));
        }
        other => panic!("{other:?}"),
    }
    // Without an API key, issuance is refused with the server's error.
    let anonymous = blindpass_client::Client::new(&server.base).unwrap();
    assert_eq!(anonymous.issue(&offer).await.unwrap_err().status(), Some(401));
}

/// `serve` on SQLite counts rate limits in memory: exact for one node.
#[tokio::test]
async fn the_single_node_rate_limit_counts_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let store = ["--data-dir", dir.path().to_str().unwrap()];
    let server = Node::spawn(&store, &["--rate-limit", "2"]).await;
    let key = common::api_key(&store, "sandbox");
    let http = reqwest::Client::new();
    // Keep the three requests inside one minute window.
    let second = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 60;
    if second >= 55 {
        tokio::time::sleep(Duration::from_secs(61 - second)).await;
    }
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = http
            .post(format!("{}/api/v1/privacy-passes", server.base))
            .bearer_auth(&key)
            .json(&serde_json::json!({"blinded-token": "AAAA", "key-id": "00".repeat(32)}))
            .send()
            .await
            .unwrap();
        statuses.push((
            r.status().as_u16(),
            r.headers().get("ratelimit-remaining").map(|v| v.to_str().unwrap().to_owned()),
        ));
    }
    // The first two are counted and end in 404 (unknown key id); the third is over the limit.
    assert_eq!(statuses[0], (404, Some("1".into())), "{statuses:?}");
    assert_eq!(statuses[1], (404, Some("0".into())), "{statuses:?}");
    assert_eq!(statuses[2].0, 429, "{statuses:?}");
}

#[tokio::test]
async fn client_issue_in_batches_gives_rfc_tokens_that_each_redeem_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = ["--data-dir", dir.path().to_str().unwrap()];
    let server = Node::spawn(&store, &["--max-batch-size", "4"]).await;
    let key = cli(&store, &["api-keys", "create", "--env", "sandbox"]).lines().last().unwrap().to_owned();
    // 10 tokens in batches of 4: three batches (4, 4, 2) under the cap.
    let out = Command::new(BIN)
        .args(["client", "--base-url", &server.base, "--api-key", &key, "issue", "--count", "10", "--batch-size", "4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tokens: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(tokens.len(), 10);
    for token in &tokens {
        let bytes = b64::decode(token).unwrap();
        assert!(blindpass_protocol::type2::wire::Token::decode(&bytes).is_ok(), "an RFC 9577 token of type 2");
    }
    let distinct: std::collections::HashSet<_> = tokens.iter().collect();
    assert_eq!(distinct.len(), 10);
    let relay: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/api/privacy/v1/relays", server.base))
        .json(&serde_json::json!({"claim-type": "age_over18_verified", "encryption-key-pem": null, "sandbox": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let redeem = |token: &str| {
        Command::new(BIN)
            .args(["client", "--base-url", &server.base, "--json", "redeem", "--relay-token"])
            .arg(relay["relay-token"].as_str().unwrap())
            .args(["--relay-secret", relay["relay-secret"].as_str().unwrap(), "--token", token])
            .output()
            .unwrap()
    };
    for token in &tokens {
        let out = redeem(token);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reply["token-consumed"], true);
    }
    // Past the server's cap the batch is refused with the cap in the error.
    let out = Command::new(BIN)
        .args(["client", "--base-url", &server.base, "--api-key", &key, "issue", "--count", "5", "--batch-size", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 4"), "{}", String::from_utf8_lossy(&out.stderr));
}
