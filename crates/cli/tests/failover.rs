//! PostgreSQL failover, as an operator's bad day goes: two nodes on a
//! primary and a standby of the test's own, reached through one multi-host
//! URL with `target_session_attrs=read-write`. Mid-load the primary and all
//! its processes get SIGKILL; the standby is promoted.
//!
//! With a synchronous standby (`synchronous_standby_names = '*'`,
//! `synchronous_commit = on`):
//! - every redemption answered 200 stays spent: at a fresh relay, each of
//!   those tokens is "already used" (none lost with the primary);
//! - no token is accepted at two relays;
//! - while no primary is reachable the nodes answer only 503 with
//!   `Retry-After` (never another 5xx), and serve again within 10 s of the
//!   promotion.
//!
//! With an asynchronous standby that has fallen behind (the primary's WAL
//! sender frozen with SIGSTOP), the failover loses the spends acknowledged
//! since, and their tokens are accepted again: the hole the replication
//! guard closes.
//!
//! Runs when `BLINDPASS_TEST_PG_FAILOVER` is set at build time (`.ci/run`
//! sets it); it needs the PostgreSQL server binaries (`initdb`, `postgres`,
//! `pg_basebackup`). Otherwise it is ignored and the summary says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blindpass_client::{Client, RelayCredentials};
use common::postgres::Cluster;

const CLAIM: &str = "age_over18_verified";
/// Tokens redeemed through the failover.
const TOKENS: usize = 120;
/// Redemptions in flight at once (spread over both nodes).
const WORKERS: usize = 4;

use common::{generate_claim as claim, no_retries};

/// What the load saw: every answer, and when each token was accepted.
#[derive(Default)]
struct Seen {
    answers: BTreeMap<u16, usize>,
    unavailable_without_retry_after: usize,
    accepted_at: BTreeMap<usize, Instant>,
}

/// Spends acknowledged by the primary after its WAL stopped reaching the
/// asynchronous standby, before the primary dies.
const STALLED: usize = 10;

/// A primary and its streaming standby, in a directory of their own.
struct Databases {
    primary: Cluster,
    standby: Cluster,
    _dir: tempfile::TempDir,
}

impl Databases {
    /// Starts a primary and a streaming standby. `synchronous`: commits wait
    /// for the standby.
    async fn start(synchronous: bool) -> Databases {
        let bin = common::postgres::bin_dir().expect("the PostgreSQL server binaries are not installed");
        let dir = tempfile::tempdir().unwrap();
        let mut primary = Cluster::init(&bin, &dir.path().join("primary"));
        primary.write(
            "pg_hba.conf",
            "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        );
        // On the command line, so the standby's copy of the configuration
        // does not carry it; an asynchronous primary keeps the default (empty)
        // so that ALTER SYSTEM can still make it synchronous.
        let mut settings = vec!["wal_level=replica", "max_wal_senders=4", "synchronous_commit=on"];
        if synchronous {
            settings.push("synchronous_standby_names=*");
        }
        primary.start(&settings);
        let mut standby = Cluster::standby_of(&primary, &dir.path().join("standby"));
        standby.start(&["hot_standby=on"]);
        let wanted = if synchronous { "sync" } else { "async" };
        let deadline = Instant::now() + Duration::from_secs(30);
        while primary.psql("SELECT sync_state FROM pg_stat_replication").unwrap().trim() != wanted {
            assert!(Instant::now() < deadline, "the standby never streamed ({wanted}): {}", standby.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Databases { primary, standby, _dir: dir }
    }

    /// Freezes the primary's WAL sender (SIGSTOP): the primary goes on
    /// acknowledging commits that no longer reach the standby, as when an
    /// asynchronous standby falls behind.
    fn stall_replication(&self) {
        let pid = self.primary.psql("SELECT pid FROM pg_stat_replication").unwrap();
        let status = std::process::Command::new("kill").args(["-STOP", pid.trim()]).status().unwrap();
        assert!(status.success(), "SIGSTOP to the WAL sender {pid}");
    }

    /// The URL every node uses: both hosts, writes only.
    fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write&sslmode=disable",
            self.primary.port, self.standby.port
        )
    }
}

/// Two nodes on `databases`, with `flags` beside the test's own, and an
/// API key of the sandbox.
async fn nodes(databases: &Databases, flags: &[&str]) -> ([common::Node; 2], String) {
    let url = databases.url();
    let store = ["--database-url", url.as_str()];
    let api_key = common::api_key(&store, "sandbox");
    let mut all = vec!["--rate-limit", "0", "--relay-rate-limit", "0", "--client-rate-limit", "0"];
    all.extend(["--db-timeout-secs", "2"]);
    all.extend(flags);
    ([common::Node::spawn(&store, &all).await, common::Node::spawn(&store, &all).await], api_key)
}

/// `n` sandbox tokens issued by `base`.
async fn tokens(base: &str, api_key: &str, n: usize) -> Vec<String> {
    let issuer = Client::new(base).unwrap().with_api_key(api_key).with_retry(no_retries());
    let mut tokens = Vec::with_capacity(n);
    for _ in 0..n {
        let offer = issuer.challenge(CLAIM, true).await.unwrap();
        tokens.push(issuer.issue(&offer).await.unwrap().encode());
    }
    tokens
}

async fn relay(base: &str) -> RelayCredentials {
    Client::new(base).unwrap().with_retry(no_retries()).create_relay(CLAIM, None, true).await.unwrap()
}

/// Redeems every token at `relay` through both nodes, [`WORKERS`] at a
/// time, retrying a 503 until the token is accepted; once a third are
/// accepted, kills the primary and, a second later, promotes the standby.
/// With `stall`, replication stops when a third are accepted, and the kill
/// comes [`STALLED`] acknowledged spends later.
async fn redeem_through_a_failover(
    databases: &mut Databases,
    bases: &[String],
    tokens: &Arc<Vec<String>>,
    relay: &RelayCredentials,
    stall: bool,
) -> Failover {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let http = reqwest::Client::new();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (tokens, seen, http, bases, relay) =
            (Arc::clone(tokens), Arc::clone(&seen), http.clone(), bases.to_vec(), relay.clone());
        workers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            for (i, token) in tokens.iter().enumerate().skip(w).step_by(WORKERS) {
                let mut attempt = 0;
                loop {
                    let (status, retry_after) = claim(&http, &bases[(i + attempt) % 2], &relay, token).await;
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
    let accepted = |n: usize| {
        let seen = Arc::clone(&seen);
        async move {
            while seen.lock().unwrap().accepted_at.len() < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    accepted(tokens.len() / 3).await;
    if stall {
        databases.stall_replication();
        accepted(tokens.len() / 3 + STALLED).await;
    }
    let killed_at = Instant::now();
    databases.primary.kill();
    let acknowledged_before_kill = seen.lock().unwrap().accepted_at.len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let promoted_at = Instant::now();
    assert_eq!(databases.standby.psql("SELECT pg_promote()").unwrap().trim(), "t", "{}", databases.standby.log());
    for worker in workers {
        worker.await.unwrap();
    }
    let seen = Arc::into_inner(seen).unwrap().into_inner().unwrap();
    let back_at = seen.accepted_at.values().filter(|at| **at > promoted_at).min().copied();
    let failover = Failover {
        acknowledged_before_kill,
        recovery: back_at.map(|at| at - promoted_at),
        gap: back_at.map(|at| at - killed_at),
        seen,
    };
    eprintln!(
        "failover: {} spends acknowledged before the kill; answers {:?}; first spend {:?} after the promotion \
         ({:?} after the kill)",
        failover.acknowledged_before_kill, failover.seen.answers, failover.recovery, failover.gap
    );
    failover
}

/// What a failover under load looked like.
struct Failover {
    acknowledged_before_kill: usize,
    /// From the promotion to the first spend after it.
    recovery: Option<Duration>,
    /// From the kill to the first spend after the promotion.
    gap: Option<Duration>,
    seen: Seen,
}

/// The tokens a fresh relay accepts (each was accepted once already).
async fn accepted_again(bases: &[String], tokens: &[String]) -> Vec<usize> {
    let (http, fresh) = (reqwest::Client::new(), relay(&bases[0]).await);
    let mut again = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let (status, _) = claim(&http, &bases[i % 2], &fresh, token).await;
        assert!(status == 200 || status == 401, "token {i} at a fresh relay: {status}");
        if status == 200 {
            again.push(i);
        }
    }
    again
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(blindpass_test_pg_failover), ignore = "needs BLINDPASS_TEST_PG_FAILOVER and the PostgreSQL binaries")]
async fn a_synchronous_standby_promoted_after_the_primary_is_killed_keeps_every_acknowledged_spend() {
    let mut databases = Databases::start(true).await;
    let (nodes, api_key) = nodes(&databases, &[]).await;
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
    let tokens = Arc::new(tokens(&bases[0], &api_key, TOKENS).await);
    let first = relay(&bases[1]).await;

    let failover = redeem_through_a_failover(&mut databases, &bases, &tokens, &first, false).await;
    assert_eq!(failover.seen.accepted_at.len(), TOKENS, "every token was accepted once");
    assert_eq!(failover.seen.unavailable_without_retry_after, 0, "every 503 says when to retry");
    assert!(
        failover.seen.answers.get(&503).copied().unwrap_or(0) > 0,
        "the kill was seen: {:?}",
        failover.seen.answers
    );
    let recovery = failover.recovery.expect("no spend after the promotion");
    assert!(recovery < Duration::from_secs(10), "{recovery:?}");

    // Every acknowledged spend survived the failover: at a fresh relay, on
    // either node, every token is already used.
    assert_eq!(accepted_again(&bases, &tokens).await, Vec::<usize>::new(), "accepted at a second relay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(blindpass_test_pg_failover), ignore = "needs BLINDPASS_TEST_PG_FAILOVER and the PostgreSQL binaries")]
async fn an_asynchronous_standby_behind_loses_acknowledged_spends_to_a_failover() {
    let mut databases = Databases::start(false).await;
    let (nodes, api_key) = nodes(&databases, &[]).await;
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
    let tokens = Arc::new(tokens(&bases[0], &api_key, TOKENS).await);
    let first = relay(&bases[1]).await;

    let failover = redeem_through_a_failover(&mut databases, &bases, &tokens, &first, true).await;
    assert_eq!(failover.seen.accepted_at.len(), TOKENS, "every token was accepted once");
    let again = accepted_again(&bases, &tokens).await;
    eprintln!("asynchronous standby, stalled: {} acknowledged spends lost: tokens {again:?}", again.len());
    assert!(!again.is_empty(), "nothing acknowledged while the standby was behind was lost: the test missed the hole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(blindpass_test_pg_failover), ignore = "needs BLINDPASS_TEST_PG_FAILOVER and the PostgreSQL binaries")]
async fn with_the_guard_no_spend_is_acknowledged_while_the_standby_is_asynchronous() {
    let databases = Databases::start(false).await;
    let (nodes, api_key) = nodes(&databases, &["--require-synchronous-replication"]).await;
    let bases: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
    let tokens = tokens(&bases[0], &api_key, 8).await;
    let first = relay(&bases[1]).await;
    let http = reqwest::Client::new();

    // Unprotected: not ready, and every redemption refused with the reason.
    for base in &bases {
        let ready = http.get(format!("{base}/health/ready")).send().await.unwrap();
        assert_eq!(ready.status(), 503);
        let body = ready.text().await.unwrap();
        assert!(body.contains("asynchronous"), "{body}");
    }
    for (i, token) in tokens.iter().enumerate() {
        let (status, retry_after) = claim(&http, &bases[i % 2], &first, token).await;
        assert_eq!(status, 503, "token {i} was redeemed while a failover could lose its spend");
        assert!(retry_after.is_some(), "token {i}: 503 without Retry-After");
    }
    let response = http
        .post(format!("{}/api/privacy/v1/relays/{}/generate-claim", bases[0], first.token))
        .header("persona-relay-secret", first.secret.as_str())
        .header("authorization", format!("PrivateToken token={}", tokens[0]))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    let body = response.text().await.unwrap();
    assert!(body.contains("Redemptions are paused") && body.contains("asynchronous"), "{body}");

    // Make the standby synchronous: within a guard tick the nodes redeem.
    databases.primary.psql("ALTER SYSTEM SET synchronous_standby_names = '*'").unwrap();
    databases.primary.psql("SELECT pg_reload_conf()").unwrap();
    let lifted = Instant::now();
    for (i, token) in tokens.iter().enumerate() {
        loop {
            let (status, _) = claim(&http, &bases[i % 2], &first, token).await;
            if status == 200 {
                break;
            }
            assert_eq!(status, 503, "token {i}");
            assert!(lifted.elapsed() < Duration::from_secs(20), "the guard did not lift: token {i}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!("guard: redemptions resumed {:?} after the standby became synchronous", lifted.elapsed());
    for base in &bases {
        assert_eq!(http.get(format!("{base}/health/ready")).send().await.unwrap().status(), 200);
    }
}
