//! Regression tests for the integrity defects of issue 10, each named after
//! the attack it replays, through the real `blindpass` binary on the
//! embedded SQLite store:
//!
//! - retire a key, start another node (its prune used to delete the retired
//!   key's spent records), and redeem the token again at a node whose key
//!   cache is stale: it must stay "already used";
//! - a redemption whose answer is lost to the request timeout (the SQLite
//!   write lock held by someone else) or to a client hanging up: the retry
//!   returns the claim, and an `Idempotency-Key` is never stuck in 409;
//! - a crash between the spend's commit and the response (fault injected
//!   through the store's `fault-injection` feature, which this crate's
//!   dev-dependency turns on): after a restart the retry returns the claim.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::disallowed_methods)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use blindpass_client::{Client, RelayCredentials, RetryPolicy};
use serde_json::Value;

const CLAIM: &str = "age_over18_verified";

fn store(data_dir: &Path) -> [&str; 2] {
    ["--data-dir", data_dir.to_str().unwrap()]
}

fn no_retries() -> RetryPolicy {
    RetryPolicy { max_retries: 0, ..RetryPolicy::default() }
}

/// A sandbox Persona token issued by `node`.
async fn token(node: &common::Node, api_key: &str) -> String {
    let client = Client::new(&node.base).unwrap().with_api_key(api_key).with_retry(no_retries());
    let offer = client.challenge(CLAIM, true).await.unwrap();
    client.issue(&offer).await.unwrap().encode()
}

async fn relay(node: &common::Node) -> RelayCredentials {
    Client::new(&node.base).unwrap().with_retry(no_retries()).create_relay(CLAIM, None, true).await.unwrap()
}

/// One generate-claim, raw: status, body, and the `Retry-After` header.
async fn claim(
    http: &reqwest::Client,
    base: &str,
    relay: &RelayCredentials,
    token: &str,
    idempotency_key: Option<&str>,
) -> reqwest::Result<(u16, Value, Option<String>)> {
    let mut request = http
        .post(format!("{base}/api/privacy/v1/relays/{}/generate-claim", relay.token))
        .header("persona-relay-secret", relay.secret.as_str())
        .header("authorization", format!("PrivateToken token={token}"))
        .json(&serde_json::json!({}));
    if let Some(key) = idempotency_key {
        request = request.header("idempotency-key", key);
    }
    let r = request.send().await?;
    let status = r.status().as_u16();
    let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = r.bytes().await?;
    assert!(status < 500 || status == 503, "{status}: {}", String::from_utf8_lossy(&body));
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null), retry_after))
}

/// Holds SQLite's write lock on the store in `data_dir` for `secs`, from
/// another connection, as a long writer (a backup, a migration) would.
fn hold_write_lock(data_dir: &Path, secs: f64) -> std::thread::JoinHandle<()> {
    let path = data_dir.join("blindpass.db");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        ready_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_secs_f64(secs));
        conn.execute_batch("ROLLBACK").unwrap();
    });
    ready_rx.recv().unwrap();
    handle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_then_prune_on_another_node_with_a_stale_key_cache_keeps_the_token_spent() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let api_key = common::api_key(&s, "sandbox");
    // Node A keeps its key cache for an hour: it still believes the key is
    // active after the retirement.
    let a = common::Node::spawn(&s, &["--key-refresh-secs", "3600"]).await;
    let http = reqwest::Client::new();
    let t = token(&a, &api_key).await;
    let first = relay(&a).await;
    let (status, body, _) = claim(&http, &a.base, &first, &t, None).await.unwrap();
    assert_eq!((status, body["token-consumed"].as_bool()), (200, Some(true)), "{body}");

    let keys = common::cli(&s, &["keys", "list", "--env", "sandbox"]);
    let type2 = keys.lines().skip(1).find(|l| l.split_whitespace().nth(2) == Some("2")).unwrap();
    let key_id = type2.split_whitespace().next().unwrap().to_owned();
    common::cli(&s, &["keys", "rotate", "--env", "sandbox"]);
    common::cli(&s, &["keys", "retire", &key_id]);
    // Node B starts on the same store: its first prune runs at start.
    let b = common::Node::spawn(&s, &[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let second = relay(&a).await;
    let (status, body, _) = claim(&http, &a.base, &second, &t, None).await.unwrap();
    assert_eq!(status, 401, "a spent token stays spent after its key is retired: {body}");
    assert!(body["errors"][0]["details"].as_str().unwrap().contains("already been used"), "{body}");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_write_lock_times_the_request_out_and_the_retry_returns_the_claim() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let api_key = common::api_key(&s, "sandbox");
    let node = common::Node::spawn(&s, &["--request-timeout-secs", "1", "--rate-limit", "0"]).await;
    let http = reqwest::Client::new();
    let t = token(&node, &api_key).await;
    let r = relay(&node).await;

    let lock = hold_write_lock(dir.path(), 3.0);
    let (status, body, retry_after) = claim(&http, &node.base, &r, &t, None).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errors"][0]["title"], "Request timeout");
    assert!(retry_after.is_some(), "a timeout says when to retry");
    lock.join().unwrap();

    // The redemption went on after the 503; the retry gets its claim.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let (status, body, _) = claim(&http, &node.base, &r, &t, None).await.unwrap();
        if status != 503 || Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 200, "the claim is not lost: {body}");
    assert_eq!(body["token-consumed"], true);
    let payload: Value = serde_json::from_str(body["claim-payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["claim_result"], "passed");
    // And only at this relay.
    let other = relay(&node).await;
    assert_eq!(claim(&http, &node.base, &other, &t, None).await.unwrap().0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_with_an_idempotency_key_is_not_stuck_in_409() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let api_key = common::api_key(&s, "sandbox");
    let node = common::Node::spawn(&s, &["--request-timeout-secs", "2", "--rate-limit", "0"]).await;
    let t = token(&node, &api_key).await;
    let r = relay(&node).await;

    // The client gives up after 300 ms while the store is locked.
    let lock = hold_write_lock(dir.path(), 1.5);
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    assert!(claim(&impatient, &node.base, &r, &t, Some("hang-up")).await.is_err(), "the client hung up");
    lock.join().unwrap();

    // Within the request timeout the same key answers: 409 while the
    // redemption still runs, then the stored 200, never a 409 for minutes.
    let http = reqwest::Client::new();
    let started = Instant::now();
    let (status, body) = loop {
        let (status, body, retry_after) = claim(&http, &node.base, &r, &t, Some("hang-up")).await.unwrap();
        if status == 409 {
            assert!(retry_after.is_some());
            assert!(started.elapsed() < Duration::from_secs(4), "409 past the request timeout");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        break (status, body);
    };
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token-consumed"], true);
    // Replayed, and the same claim without the key.
    let (_, again, _) = claim(&http, &node.base, &r, &t, Some("hang-up")).await.unwrap();
    assert_eq!(again, body);
    let (status, plain, _) = claim(&http, &node.base, &r, &t, None).await.unwrap();
    assert_eq!((status, &plain["claim-payload"]), (200, &body["claim-payload"]));

    // An issuance whose client hung up: its key is answered within the
    // request timeout too (released by the cancelled request, or taken over
    // as stale), never 409 for minutes.
    let client = Client::new(&node.base).unwrap().with_retry(no_retries());
    let offer = client.challenge(CLAIM, true).await.unwrap();
    let (blinded, _) =
        blindpass_protocol::persona::begin_issuance(&offer.key, &offer.key_id, &offer.challenge, &mut rand::rng())
            .unwrap();
    let body = serde_json::json!({
        "blinded-token": blindpass_protocol::b64::encode_unpadded(&blinded),
        "key-id": offer.key_id,
    });
    let issue = async |http: &reqwest::Client| {
        http.post(format!("{}/api/v1/privacy-passes", node.base))
            .bearer_auth(&api_key)
            .header("idempotency-key", "issue-hang-up")
            .json(&body)
            .send()
            .await
    };
    let lock = hold_write_lock(dir.path(), 1.0);
    assert!(issue(&impatient).await.is_err(), "the client hung up");
    lock.join().unwrap();
    let started = Instant::now();
    loop {
        let status = issue(&http).await.unwrap().status().as_u16();
        if status == 409 {
            assert!(started.elapsed() < Duration::from_secs(4), "409 past the request timeout");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(status, 201);
        break;
    }
}

/// A crash between the spend's commit and the answer: the fault is compiled
/// in by the store's `fault-injection` feature (on for these tests only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_commit_and_response_then_the_retry_returns_the_claim() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let api_key = common::api_key(&s, "sandbox");
    let addr = format!("127.0.0.1:{}", common::free_port());
    let base = format!("http://{addr}");
    let spawn = |fault: Option<&str>| common::Node::command(&s, &[]).listen(&addr).env("BLINDPASS_FAULT", fault);
    let mut node = spawn(Some("abort-after-commit:spend")).start().await;
    let t = token(&node, &api_key).await;
    let r = relay(&node).await;
    let http = reqwest::Client::new();
    assert!(claim(&http, &base, &r, &t, None).await.is_err(), "the process died before answering");
    let exit = node.child.wait().unwrap();
    assert!(!exit.success(), "aborted: {exit:?}");

    let node = spawn(None).start().await;
    let (status, body, _) = claim(&http, &base, &r, &t, None).await.unwrap();
    assert_eq!(status, 200, "the committed claim survives the crash: {body}");
    assert_eq!(body["token-consumed"], true);
    let other = relay(&node).await;
    assert_eq!(claim(&http, &base, &other, &t, None).await.unwrap().0, 401, "and stays spent elsewhere");
}

/// `0x02 0x01 0x00` (version 0) then the rsaEncryption AlgorithmIdentifier:
/// the start of every RSA PKCS#8 PrivateKeyInfo body.
const PKCS8_RSA: &[u8] =
    &[0x02, 0x01, 0x00, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// Every byte of the store's files (database, WAL, shared memory).
fn store_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for name in ["blindpass.db", "blindpass.db-wal"] {
        all.extend(std::fs::read(dir.join(name)).unwrap_or_default());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_kek_no_private_key_bytes_reach_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let kek_file = dir.path().join("kek");
    common::write_kek(&kek_file);
    let data = dir.path().join("data");
    let with_kek = ["--data-dir", data.to_str().unwrap(), "--key-encryption-key-file", kek_file.to_str().unwrap()];
    let node = common::Node::spawn(&with_kek, &[]).await;
    let api_key = common::api_key(&with_kek, "sandbox");
    let t = token(&node, &api_key).await;
    let r = relay(&node).await;
    let (status, _, _) = claim(&reqwest::Client::new(), &node.base, &r, &t, None).await.unwrap();
    assert_eq!(status, 200, "issues and redeems with sealed keys");
    drop(node);
    let sealed = store_bytes(&data);
    assert!(!sealed.windows(PKCS8_RSA.len()).any(|w| w == PKCS8_RSA), "a PKCS#8 key in the store");

    // Without the KEK the server refuses to start, with a one-line reason.
    let out = Command::new(common::BIN)
        .args(["--data-dir", data.to_str().unwrap(), "serve", "--listen", "127.0.0.1:0"])
        .env_remove("BLINDPASS_KEY_ENCRYPTION_KEY_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("");
    assert!(last.contains("key-encryption key"), "{stderr}");

    // Rewrapped to plaintext (the control: the pattern finds real keys).
    common::cli(&with_kek, &["keys", "rewrap", "--to-plaintext"]);
    let plain = ["--data-dir", data.to_str().unwrap()];
    let node = common::Node::spawn(&plain, &[]).await;
    drop(node);
    let db = rusqlite::Connection::open(data.join("blindpass.db")).unwrap();
    let key: Vec<u8> =
        db.query_row("SELECT private_pkcs8 FROM issuer_keys WHERE token_type = 2 LIMIT 1", [], |r| r.get(0)).unwrap();
    assert!(key.windows(PKCS8_RSA.len()).any(|w| w == PKCS8_RSA), "plaintext PKCS#8 after rewrap --to-plaintext");
    // The VOPRF keys (types 1 and 5, a bare scalar each) were sealed too:
    // their plaintext, known now, appears nowhere in the sealed store.
    let mut stmt = db.prepare("SELECT token_type, private_pkcs8 FROM issuer_keys WHERE token_type IN (1, 5)").unwrap();
    let scalars: Vec<(u16, Vec<u8>)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    assert_eq!(scalars.len(), 4, "types 1 and 5 in both environments");
    for (token_type, scalar) in scalars {
        assert_eq!(scalar.len(), if token_type == 1 { 48 } else { 32 }, "a plaintext scalar after the rewrap");
        assert!(
            !sealed.windows(scalar.len()).any(|w| w == scalar),
            "a type-{token_type} private key in the sealed store"
        );
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_is_0700_and_database_files_0600_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();

    // A fresh data directory, created by a server running under umask 000.
    let data = dir.path().join("fresh").join("data");
    let store = ["--data-dir", data.to_str().unwrap()];
    let node = common::Node::command(&store, &[]).open_umask().start().await;
    // Traffic that writes: the WAL and shared-memory files exist now.
    let api_key = common::api_key(&["--data-dir", data.to_str().unwrap()], "sandbox");
    let _ = token(&node, &api_key).await;
    assert_eq!(mode(&data), 0o700, "created data directory");
    for name in ["blindpass.db", "blindpass.db-wal", "blindpass.db-shm"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    assert_eq!(mode(&dir.path().join("fresh")), 0o700, "created parent");
    drop(node);

    // An existing store from an older version, left world-readable: tightened at start.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for name in ["blindpass.db", "blindpass.db-wal", "blindpass.db-shm"] {
        let file = data.join(name);
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let node = common::Node::command(&store, &[]).open_umask().start().await;
    drop(node);
    assert_eq!(mode(&data), 0o700, "existing data directory");
    for name in ["blindpass.db", "blindpass.db-wal", "blindpass.db-shm"] {
        let file = data.join(name);
        if file.exists() {
            assert_eq!(mode(&file), 0o600, "existing {name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_different_addresses_share_one_issuer_name_and_accept_each_others_rfc_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    // Neither node names itself: the first writes its listen address, the
    // second adopts it.
    let a = common::Node::spawn(&s, &[]).await;
    let b = common::Node::spawn(&s, &[]).await;
    let relay = Client::new(&b.base).unwrap().with_retry(no_retries()).create_relay(CLAIM, None, true).await.unwrap();
    let api_key = common::api_key(&s, "sandbox");
    let at_a = Client::new(&a.base).unwrap().with_api_key(&api_key).with_retry(no_retries());
    let at_b = Client::new(&b.base).unwrap().with_retry(no_retries());
    let challenge = at_b.rfc_challenge(&relay).await.unwrap();
    assert_eq!(challenge.challenge.issuer_name, a.base.trim_start_matches("http://"), "the first node's name");
    // Issued through A, redeemed at B.
    let token = at_a.issue_rfc(&challenge, true).await.unwrap();
    let encoded = blindpass_protocol::b64::encode_padded(&token.encode());
    let claim = at_b.generate_claim(&relay, &encoded).await.unwrap();
    assert!(claim.token_consumed);

    // A node configured with another name refuses to start, saying why.
    let out = Command::new(common::BIN)
        .args(s)
        .args(["serve", "--listen", "127.0.0.1:0", "--issuer-name", "other.example"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().last().unwrap_or("").contains("issuer name"), "{stderr}");

    // `issuer-name set` changes it for every node (after a restart).
    drop((a, b));
    common::cli(&s, &["issuer-name", "set", "pp.example"]);
    assert_eq!(common::cli(&s, &["issuer-name", "show"]).trim(), "pp.example");
    let c = common::Node::spawn(&s, &["--issuer-name", "pp.example"]).await;
    let relay = Client::new(&c.base).unwrap().create_relay(CLAIM, None, true).await.unwrap();
    let challenge = Client::new(&c.base).unwrap().rfc_challenge(&relay).await.unwrap();
    assert_eq!(challenge.challenge.issuer_name, "pp.example");
}

#[test]
fn a_kek_file_that_group_or_others_can_read_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let kek_file = dir.path().join("kek");
    common::write_kek(&kek_file);
    let data = dir.path().join("data");
    let store = ["--data-dir", data.to_str().unwrap(), "--key-encryption-key-file", kek_file.to_str().unwrap()];
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&kek_file, std::fs::Permissions::from_mode(mode)).unwrap();
        for command in [&["keys", "list"][..], &["serve", "--listen", "127.0.0.1:0"]] {
            let mut child = std::process::Command::new(common::BIN)
                .args(store)
                .args(command)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let started = std::time::Instant::now();
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if started.elapsed() > std::time::Duration::from_secs(20) {
                    let _ = child.kill();
                    panic!("{command:?} with a {mode:o} KEK file is still running");
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            };
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            assert!(!status.success(), "{command:?} ran with a {mode:o} KEK file");
            let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("blindpass:")).collect();
            assert_eq!(lines.len(), 1, "{stderr}");
            assert!(lines[0].contains("readable by group or others") && lines[0].contains("chmod 600"), "{stderr}");
        }
    }
    std::fs::set_permissions(&kek_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    common::cli(&store, &["keys", "list"]);
}
