//! Two (and three) `blindpass serve` processes on one PostgreSQL database:
//! single spend, idempotency, rate limits and key rotation hold across nodes,
//! and a lost database gives 503s, never 500s or lost spent records.
//!
//! Runs when `BLINDPASS_TEST_POSTGRES_URL` is set at build time (`.ci/run`
//! sets it), with Redis rate limiting when `BLINDPASS_TEST_REDIS_URL` is set
//! too; otherwise the tests are ignored and the summary says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::disallowed_methods)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blindpass_protocol::type2::keys::IssuerPublicKey;
use blindpass_protocol::{b64, persona};
use blindpass_store::postgres::testing::{create_schema, drop_schema, random_schema_name, url_with_schema};
use common::Node;
use serde_json::{Value, json};

const CLAIM: &str = "age_over18_verified";

fn env_url(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The PostgreSQL URL the tests were built for.
fn postgres_url() -> String {
    env_url("BLINDPASS_TEST_POSTGRES_URL")
        .expect("BLINDPASS_TEST_POSTGRES_URL was set when these tests were built; set it to run them")
}

/// A node on `database_url` that re-reads keys every second.
async fn start(database_url: &str, extra: &[&str]) -> Node {
    let serve_args: Vec<&str> = ["--key-refresh-secs", "1"].into_iter().chain(extra.iter().copied()).collect();
    common::Node::spawn(&["--database-url", database_url], &serve_args).await
}

fn cli(database_url: &str, args: &[&str]) -> String {
    common::cli(&["--database-url", database_url], args)
}

fn api_key(database_url: &str, env: &str) -> String {
    common::api_key(&["--database-url", database_url], env)
}

/// A sandbox relay created on `node`, as the JSON the server returned.
async fn sandbox_relay(http: &reqwest::Client, node: &Node) -> Value {
    let body = json!({"claimType": CLAIM, "encryptionKeyPem": null, "sandbox": true});
    let (status, relay) = post(http, format!("{}/api/privacy/v1/relays", node.base), None, body, &[]).await;
    assert_eq!(status, 201);
    relay
}

async fn post(
    http: &reqwest::Client,
    url: String,
    bearer: Option<&str>,
    body: Value,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = http.post(url).json(&body);
    if let Some(b) = bearer {
        request = request.bearer_auth(b);
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    assert!(status < 500 || status == 503, "{status}: {}", String::from_utf8_lossy(&bytes));
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Challenge from `a`, issuance on `b`: a sandbox Persona token.
async fn issue_token(http: &reqwest::Client, a: &Node, b: &Node, api_key: &str) -> String {
    let (_, offer) = post(
        http,
        format!("{}/api/privacy/v1/relays/challenge", a.base),
        None,
        json!({"claimType": CLAIM, "sandbox": true}),
        &[],
    )
    .await;
    let challenge = persona::Challenge::decode(offer["challenge"].as_str().unwrap()).unwrap();
    let key = IssuerPublicKey::from_spki_der(&b64::decode(offer["token-key"].as_str().unwrap()).unwrap()).unwrap();
    let key_id = offer["token-key-id"].as_str().unwrap();
    let (blinded, state) = persona::begin_issuance(&key, key_id, &challenge, &mut rand::rng()).unwrap();
    let body = json!({"blindedToken": b64::encode_unpadded(&blinded), "keyId": key_id});
    let (status, reply) = post(http, format!("{}/api/v1/privacy-passes", b.base), Some(api_key), body, &[]).await;
    assert_eq!(status, 201, "{reply}");
    let blind_sig = b64::decode(reply["blind-sig"].as_str().unwrap()).unwrap();
    persona::finalize_issuance(&key, &state, &blind_sig).unwrap().encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(blindpass_test_postgres), ignore = "needs BLINDPASS_TEST_POSTGRES_URL (.ci/run sets it)")]
async fn two_nodes_share_spends_idempotency_rate_limits_and_keys() {
    let base_url = postgres_url();
    let schema = random_schema_name();
    create_schema(&base_url, &schema).await.unwrap();
    let url = url_with_schema(&base_url, &schema);
    cli(&url, &["migrate"]);
    let mut extra = vec!["--rate-limit".to_owned(), "12".to_owned()];
    if let Some(redis) = env_url("BLINDPASS_TEST_REDIS_URL") {
        extra.extend(["--redis-url".to_owned(), redis, "--redis-key-prefix".to_owned(), schema.clone()]);
    } else {
        eprintln!("!! BLINDPASS_TEST_REDIS_URL not set: rate limits counted in PostgreSQL only");
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let a = start(&url, &extra).await;
    let b = start(&url, &extra).await;
    let http = reqwest::Client::new();
    let sandbox_key = api_key(&url, "sandbox");

    // 64 concurrent redemptions of one token at four relays, spread over
    // both nodes: one relay redeems it (retries there see the same claim),
    // every other relay refuses it.
    let token = issue_token(&http, &a, &b, &sandbox_key).await;
    let mut relays = Vec::new();
    for _ in 0..4 {
        let relay = sandbox_relay(&http, &a).await;
        relays.push((
            relay["relay-token"].as_str().unwrap().to_owned(),
            relay["relay-secret"].as_str().unwrap().to_owned(),
        ));
    }
    let bases = [a.base.clone(), b.base.clone()];
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (relay_token, relay_secret) = relays[i % 4].clone();
            let (http, url) =
                (http.clone(), format!("{}/api/privacy/v1/relays/{relay_token}/generate-claim", bases[i % 2]));
            let auth = format!("PrivateToken token={token}");
            tokio::spawn(async move {
                let (status, body) = post(
                    &http,
                    url,
                    None,
                    json!({}),
                    &[("persona-relay-secret", &relay_secret), ("authorization", &auth)],
                )
                .await;
                (i % 4, status, body["claim-payload"].clone())
            })
        })
        .collect();
    let mut winners = std::collections::HashSet::new();
    let mut payloads = std::collections::HashSet::new();
    for t in tasks {
        let (relay, status, payload) = t.await.unwrap();
        assert!(status == 200 || status == 401, "{status}");
        if status == 200 {
            winners.insert(relay);
            payloads.insert(payload.to_string());
        }
    }
    assert_eq!((winners.len(), payloads.len()), (1, 1), "one relay redeems, with one claim");

    // An Idempotency-Key replayed on the other node gets the stored response.
    let (_, offer) = post(
        &http,
        format!("{}/api/privacy/v1/relays/challenge", a.base),
        None,
        json!({"claimType": CLAIM, "sandbox": true}),
        &[],
    )
    .await;
    let key = IssuerPublicKey::from_spki_der(&b64::decode(offer["token-key"].as_str().unwrap()).unwrap()).unwrap();
    let challenge = persona::Challenge::decode(offer["challenge"].as_str().unwrap()).unwrap();
    let key_id = offer["token-key-id"].as_str().unwrap().to_owned();
    let (blinded, _) = persona::begin_issuance(&key, &key_id, &challenge, &mut rand::rng()).unwrap();
    let body = json!({"blindedToken": b64::encode_unpadded(&blinded), "keyId": key_id});
    let idem = [("idempotency-key", "cross-node-1")];
    let first = post(&http, format!("{}/api/v1/privacy-passes", a.base), Some(&sandbox_key), body.clone(), &idem).await;
    let second = post(&http, format!("{}/api/v1/privacy-passes", b.base), Some(&sandbox_key), body, &idem).await;
    assert_eq!(first.0, 201);
    assert_eq!(first, second);
    let other = json!({"blindedToken": b64::encode_unpadded(&blinded[1..]), "keyId": key_id});
    let mismatch = post(&http, format!("{}/api/v1/privacy-passes", b.base), Some(&sandbox_key), other, &idem).await;
    assert_eq!((mismatch.0, mismatch.1["errors"][0]["title"].clone()), (400, json!("Idempotency error")));

    // A key rotated through one node's store is used by both within seconds.
    cli(&url, &["keys", "rotate", "--env", "sandbox"]);
    let rotated = cli(&url, &["keys", "list", "--env", "sandbox"]);
    // Columns: token key id, Persona key id, type, env, state, not-before.
    let active_type2 = |l: &&str| {
        let columns: Vec<&str> = l.split_whitespace().collect();
        columns.get(2) == Some(&"2") && columns.get(4) == Some(&"active")
    };
    let new_id = rotated.lines().find(active_type2).unwrap().split_whitespace().nth(1).unwrap().to_owned();
    assert_ne!(new_id, key_id);
    for node in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, offer) = post(
                &http,
                format!("{}/api/privacy/v1/relays/challenge", node.base),
                None,
                json!({"claimType": CLAIM, "sandbox": true}),
                &[],
            )
            .await;
            if offer["token-key-id"] == json!(new_id) {
                break;
            }
            assert!(Instant::now() < deadline, "node {} never picked up the rotated key", node.base);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    issue_token(&http, &b, &a, &sandbox_key).await;

    // The rate limit counts both nodes' requests (production: an untouched window).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    if now % 60 > 40 {
        tokio::time::sleep(Duration::from_secs(61 - now % 60)).await;
    }
    let production_key = api_key(&url, "production");
    let mut statuses = Vec::new();
    for i in 0..13 {
        let node = if i % 2 == 0 { &a } else { &b };
        let body = json!({"blindedToken": "AAAA", "keyId": "00".repeat(32)});
        statuses.push(
            post(&http, format!("{}/api/v1/privacy-passes", node.base), Some(&production_key), body, &[]).await.0,
        );
    }
    assert_eq!(&statuses[..12], &[404; 12], "{statuses:?}");
    assert_eq!(statuses[12], 429, "the 13th request over both nodes is over the limit of 12: {statuses:?}");

    drop((a, b));
    drop_schema(&base_url, &schema).await.unwrap();
}

/// A TCP forwarder to PostgreSQL that the test can cut and restore.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (tx, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(tx);
        let (up2, gen2) = (Arc::clone(&up), Arc::clone(&generation));
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let mut cut = gen2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self { port, up, generation }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(blindpass_test_postgres), ignore = "needs BLINDPASS_TEST_POSTGRES_URL (.ci/run sets it)")]
async fn losing_the_database_gives_503s_loses_no_spend_and_recovers() {
    let base_url = postgres_url();
    let parsed: tokio_postgres::Config = base_url.parse().unwrap();
    let host = match &parsed.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => "127.0.0.1".to_owned(),
    };
    let port = parsed.get_ports().first().copied().unwrap_or(5432);
    let proxy = Proxy::start(format!("{host}:{port}")).await;
    let user = parsed.get_user().unwrap_or("postgres");
    let db = parsed.get_dbname().unwrap_or("postgres");
    let schema = random_schema_name();
    create_schema(&base_url, &schema).await.unwrap();
    let direct = url_with_schema(&base_url, &schema);
    let proxied = url_with_schema(&format!("postgres://{user}@127.0.0.1:{}/{db}", proxy.port), &schema);
    cli(&direct, &["migrate"]);
    // The node reads API keys from the store on every request here
    // (`--api-key-cache-secs 0`), so that losing the database shows on
    // authenticated requests too; with the cache, a node keeps issuing for
    // keys it has seen.
    let node_args = ["--rate-limit", "0", "--db-timeout-secs", "1", "--db-pool-size", "4", "--api-key-cache-secs", "0"];
    let node = start(&proxied, &node_args).await;
    let helper = start(&direct, &["--rate-limit", "0"]).await;
    let http = reqwest::Client::new();
    let api_key = api_key(&direct, "sandbox");
    let token = issue_token(&http, &helper, &node, &api_key).await;
    let relay = sandbox_relay(&http, &helper).await;
    let claim_url =
        format!("{}/api/privacy/v1/relays/{}/generate-claim", node.base, relay["relay-token"].as_str().unwrap());
    let headers = [
        ("persona-relay-secret", relay["relay-secret"].as_str().unwrap()),
        ("authorization", &format!("PrivateToken token={token}")),
    ];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, *v)).collect();

    // Load runs throughout: 8 clients issuing against the node while the
    // database goes away and comes back. Every answer must be 201 or 503.
    let (_, offer) = post(
        &http,
        format!("{}/api/privacy/v1/relays/challenge", helper.base),
        None,
        json!({"claimType": CLAIM, "sandbox": true}),
        &[],
    )
    .await;
    let key = IssuerPublicKey::from_spki_der(&b64::decode(offer["token-key"].as_str().unwrap()).unwrap()).unwrap();
    let challenge = persona::Challenge::decode(offer["challenge"].as_str().unwrap()).unwrap();
    let key_id = offer["token-key-id"].as_str().unwrap().to_owned();
    let (blinded, _) = persona::begin_issuance(&key, &key_id, &challenge, &mut rand::rng()).unwrap();
    let load_body = json!({"blindedToken": b64::encode_unpadded(&blinded), "keyId": key_id});
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (http, url, key, body, stop) = (
                http.clone(),
                format!("{}/api/v1/privacy-passes", node.base),
                api_key.clone(),
                load_body.clone(),
                Arc::clone(&stop),
            );
            tokio::spawn(async move {
                let mut seen = std::collections::BTreeMap::<u16, u32>::new();
                while !stop.load(Ordering::SeqCst) {
                    let status = post(&http, url.clone(), Some(&key), body.clone(), &[]).await.0;
                    *seen.entry(status).or_default() += 1;
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Database gone: 503 with Retry-After, nothing spent, no 500.
    proxy.cut();
    let mut saw_503 = false;
    for _ in 0..5 {
        let r = http
            .post(&claim_url)
            .json(&json!({}))
            .header(headers[0].0, headers[0].1)
            .header(headers[1].0, headers[1].1)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert_ne!(status, 500);
        assert_ne!(status, 200, "a token must never be accepted without its spent record");
        if status == 503 {
            assert!(r.headers().contains_key("retry-after"));
            let body: Value = r.json().await.unwrap();
            assert!(body["errors"][0]["title"].is_string());
            saw_503 = true;
        }
    }
    assert!(saw_503, "the node reports the lost database as 503");
    let (status, _) = post(
        &http,
        format!("{}/api/v1/privacy-passes", node.base),
        Some(&api_key),
        json!({"blindedToken": "AAAA", "keyId": "00".repeat(32)}),
        &[],
    )
    .await;
    assert_eq!(status, 503);
    // The issuer directory too (its key ring is stale after a second): 503
    // with Retry-After, never 500.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = http.get(format!("{}/.well-known/private-token-issuer-directory", node.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503, "directory without its database");
    assert!(r.headers().contains_key("retry-after"));

    // Database back: the same node recovers without a restart; the token
    // was not spent by the failed attempts and is spent exactly once now.
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let (status, body) = post(&http, claim_url.clone(), None, json!({}), &headers).await;
        if status != 503 {
            assert_eq!(body["token-consumed"], true, "{body}");
            break status;
        }
        assert!(Instant::now() < deadline, "the node did not recover");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(status, 200);
    let (status, again) = post(&http, claim_url, None, json!({}), &headers).await;
    assert_eq!((status, &again["token-consumed"]), (200, &json!(true)), "a retry at the same relay: the same claim");
    let other = sandbox_relay(&http, &helper).await;
    let other_url =
        format!("{}/api/privacy/v1/relays/{}/generate-claim", node.base, other["relay-token"].as_str().unwrap());
    let auth = format!("PrivateToken token={token}");
    let other_headers = [("persona-relay-secret", other["relay-secret"].as_str().unwrap()), ("authorization", &auth)];
    assert_eq!(post(&http, other_url, None, json!({}), &other_headers).await.0, 401, "spent once, recorded durably");

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut seen = std::collections::BTreeMap::<u16, u32>::new();
    for task in load {
        for (status, n) in task.await.unwrap() {
            *seen.entry(status).or_default() += n;
        }
    }
    assert!(seen.keys().all(|s| *s == 201 || *s == 503), "only 201 and 503 under load: {seen:?}");
    assert!(seen.get(&503).is_some_and(|n| *n > 0), "the outage was seen under load: {seen:?}");
    assert!(seen.get(&201).is_some_and(|n| *n > 0), "{seen:?}");

    drop((node, helper));
    drop_schema(&base_url, &schema).await.unwrap();
}

/// The per-client anonymous limit holds across nodes: counted in Redis (or,
/// without it, in PostgreSQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(blindpass_test_postgres), ignore = "needs BLINDPASS_TEST_POSTGRES_URL (.ci/run sets it)")]
async fn per_client_limits_hold_across_nodes() {
    let base_url = postgres_url();
    let schema = random_schema_name();
    create_schema(&base_url, &schema).await.unwrap();
    let url = url_with_schema(&base_url, &schema);
    cli(&url, &["migrate"]);
    let mut extra = vec!["--client-rate-limit".to_owned(), "10".to_owned()];
    if let Some(redis) = env_url("BLINDPASS_TEST_REDIS_URL") {
        extra.extend(["--redis-url".to_owned(), redis, "--redis-key-prefix".to_owned(), schema.clone()]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let a = start(&url, &extra).await;
    let b = start(&url, &extra).await;
    let http =
        reqwest::Client::builder().local_address("127.0.0.8".parse::<std::net::IpAddr>().unwrap()).build().unwrap();
    let mut statuses = Vec::new();
    for i in 0..12 {
        let node = if i % 2 == 0 { &a } else { &b };
        let (status, _) = post(
            &http,
            format!("{}/api/privacy/v1/relays/challenge", node.base),
            None,
            json!({"claimType": CLAIM, "sandbox": true}),
            &[],
        )
        .await;
        statuses.push(status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10, "{statuses:?}");
    assert_eq!(statuses[10..], [429, 429], "{statuses:?}");
    drop((a, b));
    drop_schema(&base_url, &schema).await.unwrap();
}
