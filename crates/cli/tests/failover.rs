//! PostgreSQL failover, as an operator's bad day goes: two nodes on a
//! primary with a synchronous standby (`synchronous_standby_names = '*'`,
//! `synchronous_commit = on`), reached through one multi-host URL with
//! `target_session_attrs=read-write`. Mid-load the primary and all its
//! processes get SIGKILL; the standby is promoted.
//!
//! - every redemption answered 200 stays spent: at a fresh relay, each of
//!   those tokens is "already used" (none lost with the primary);
//! - no token is accepted at two relays;
//! - while no primary is reachable the nodes answer only 503 with
//!   `Retry-After` (never another 5xx), and serve again within 10 s of the
//!   promotion.
//!
//! Runs when `BLINDPASS_TEST_PG_FAILOVER` is set at build time (`.ci/run`
//! sets it); it needs the PostgreSQL server binaries (`initdb`, `postgres`,
//! `pg_basebackup`). Otherwise it is ignored and the summary says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blindpass_client::{Client, RelayCredentials, RetryPolicy};
use common::postgres::Cluster;

const CLAIM: &str = "age_over18_verified";
/// Tokens redeemed through the failover.
const TOKENS: usize = 120;
/// Redemptions in flight at once (spread over both nodes).
const WORKERS: usize = 4;

fn no_retries() -> RetryPolicy {
    RetryPolicy { max_retries: 0, ..RetryPolicy::default() }
}

/// One generate-claim: status and `Retry-After`; a 5xx other than 503
/// fails the test on the spot.
async fn claim(http: &reqwest::Client, base: &str, relay: &RelayCredentials, token: &str) -> (u16, Option<String>) {
    let response = http
        .post(format!("{base}/api/privacy/v1/relays/{}/generate-claim", relay.token))
        .header("persona-relay-secret", relay.secret.as_str())
        .header("authorization", format!("PrivateToken token={token}"))
        .json(&serde_json::json!({}))
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    let Ok(response) = response else { return (0, None) };
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = response.text().await.unwrap_or_default();
    assert!(status < 500 || status == 503, "only 503 may be a server error: {status} {body}");
    (status, retry_after)
}

/// What the load saw: every answer, and when each token was accepted.
#[derive(Default)]
struct Seen {
    answers: BTreeMap<u16, usize>,
    unavailable_without_retry_after: usize,
    accepted_at: BTreeMap<usize, Instant>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(blindpass_test_pg_failover), ignore = "needs BLINDPASS_TEST_PG_FAILOVER and the PostgreSQL binaries")]
async fn a_synchronous_standby_promoted_after_the_primary_is_killed_keeps_every_acknowledged_spend() {
    let bin = common::postgres::bin_dir().expect("the PostgreSQL server binaries are not installed");
    let dir = tempfile::tempdir().unwrap();
    let mut primary = Cluster::init(&bin, &dir.path().join("primary"));
    primary.write(
        "pg_hba.conf",
        "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
    );
    primary.start(&["wal_level=replica", "max_wal_senders=4", "synchronous_standby_names=*", "synchronous_commit=on"]);
    let mut standby = Cluster::standby_of(&primary, &dir.path().join("standby"));
    standby.start(&["hot_standby=on"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while primary.psql("SELECT sync_state FROM pg_stat_replication").unwrap().trim() != "sync" {
        assert!(Instant::now() < deadline, "the standby never became synchronous: {}", standby.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write&sslmode=disable",
        primary.port, standby.port
    );
    let store = ["--database-url", url.as_str()];
    let api_key = common::api_key(&store, "sandbox");
    let flags = ["--rate-limit", "0", "--relay-rate-limit", "0", "--client-rate-limit", "0", "--db-timeout-secs", "2"];
    let nodes = [common::Node::spawn(&store, &flags).await, common::Node::spawn(&store, &flags).await];
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();

    let issuer = Client::new(&bases[0]).unwrap().with_api_key(&api_key).with_retry(no_retries());
    let mut tokens = Vec::with_capacity(TOKENS);
    for _ in 0..TOKENS {
        let offer = issuer.challenge(CLAIM, true).await.unwrap();
        tokens.push(issuer.issue(&offer).await.unwrap().encode());
    }
    let relays = Client::new(&bases[1]).unwrap().with_retry(no_retries());
    let first = relays.create_relay(CLAIM, None, true).await.unwrap();

    // The load: each worker redeems its share at `first`, alternating nodes;
    // a 503 is retried (at the same relay, as a client would) until the
    // token is accepted.
    let tokens = Arc::new(tokens);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let http = reqwest::Client::new();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (tokens, seen, http, bases, first) =
            (Arc::clone(&tokens), Arc::clone(&seen), http.clone(), bases.clone(), first.clone());
        workers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            for (i, token) in tokens.iter().enumerate().skip(w).step_by(WORKERS) {
                let mut attempt = 0;
                loop {
                    let (status, retry_after) = claim(&http, &bases[(i + attempt) % 2], &first, token).await;
                    let accepted = {
                        let mut seen = seen.lock().unwrap();
                        *seen.answers.entry(status).or_default() += 1;
                        seen.unavailable_without_retry_after += usize::from(status == 503 && retry_after.is_none());
                        if status == 200 {
                            seen.accepted_at.insert(i, Instant::now());
                        }
                        status == 200
                    };
                    if accepted {
                        break;
                    }
                    assert!(status == 503 || status == 0, "token {i}: {status}");
                    assert!(Instant::now() < deadline, "token {i} was never accepted");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    // Kill the primary once a third of the tokens are spent; promote the
    // standby a second later.
    while seen.lock().unwrap().accepted_at.len() < TOKENS / 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = Instant::now();
    primary.kill();
    let acknowledged_before_kill = seen.lock().unwrap().accepted_at.len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let promoted_at = Instant::now();
    assert_eq!(standby.psql("SELECT pg_promote()").unwrap().trim(), "t", "{}", standby.log());
    for worker in workers {
        worker.await.unwrap();
    }

    let seen = Arc::into_inner(seen).unwrap().into_inner().unwrap();
    let back_at = seen.accepted_at.values().filter(|at| **at > promoted_at).min().copied();
    let recovery = back_at.map(|at| at - promoted_at);
    eprintln!(
        "failover: {acknowledged_before_kill} spends acknowledged before the kill; answers {:?}; \
         first spend {:?} after the promotion ({:?} after the kill)",
        seen.answers,
        recovery,
        back_at.map(|at| at - killed_at)
    );
    assert_eq!(seen.accepted_at.len(), TOKENS, "every token was accepted once");
    assert_eq!(seen.unavailable_without_retry_after, 0, "every 503 says when to retry");
    assert!(seen.answers.get(&503).copied().unwrap_or(0) > 0, "the kill was seen: {:?}", seen.answers);
    assert!(recovery.expect("no spend after the promotion") < Duration::from_secs(10), "{recovery:?}");

    // Every acknowledged spend survived the failover: at a fresh relay, on
    // either node, every token is already used.
    let second = relays.create_relay(CLAIM, None, true).await.unwrap();
    for (i, token) in tokens.iter().enumerate() {
        let (status, _) = claim(&http, &bases[i % 2], &second, token).await;
        assert_eq!(status, 401, "token {i} (accepted before the failover) was accepted again at another relay");
    }
}
