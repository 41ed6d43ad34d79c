//! Automatic rotation through the real binary: two nodes on one SQLite file,
//! a 10 s key lifetime, and a 4 s announcement lead over a 2 s directory
//! max-age. The successor is listed before it signs, then signs on both
//! nodes while the old key verifies; across the nodes one announcement is
//! made per due time (no two keys pending at once, announcements counted ==
//! successor keys); both nodes serve the same directory (ETag) with the
//! configured max-age; tokens from before and after the switch redeem.
//! Policies that could break clients are refused at start in one line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// (id, state) of the sandbox type-2 keys.
fn sandbox_type2(store: &[&str]) -> Vec<(String, String)> {
    let list = cli(store, &["keys", "list", "--env", "sandbox"]);
    list.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f[2] == "2")
        .map(|f| (f[0].to_owned(), f[4].to_owned()))
        .collect()
}

fn state_of<'a>(keys: &'a [(String, String)], id: &str) -> &'a str {
    keys.iter().find(|k| k.0 == id).map_or("absent", |k| k.1.as_str())
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

fn redeem(base: &str, key: &str) -> bool {
    Command::new(BIN)
        .args(["client", "flow", "--base-url", base, "--api-key", key])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test]
async fn two_nodes_rotate_automatically_once_per_due_time_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    two_nodes_rotate_automatically(&["--data-dir", dir.path().to_str().unwrap()]).await;
}

#[tokio::test]
#[cfg_attr(not(blindpass_test_postgres), ignore = "needs BLINDPASS_TEST_POSTGRES_URL (.ci/run sets it)")]
async fn two_nodes_rotate_automatically_once_per_due_time_on_postgres() {
    use blindpass_store::postgres::testing::{create_schema, drop_schema, random_schema_name, url_with_schema};
    let base = std::env::var("BLINDPASS_TEST_POSTGRES_URL").expect("BLINDPASS_TEST_POSTGRES_URL");
    let schema = random_schema_name();
    create_schema(&base, &schema).await.unwrap();
    let url = url_with_schema(&base, &schema);
    two_nodes_rotate_automatically(&["--database-url", &url]).await;
    drop_schema(&base, &schema).await.unwrap();
}

async fn two_nodes_rotate_automatically(store: &[&str]) {
    let store = store.to_vec();
    let policy = [
        "--token-types",
        "2",
        "--key-lifetime",
        "sandbox:2=10",
        "--key-announce-secs",
        "4",
        "--directory-max-age-secs",
        "2",
        "--directory-max-age-jitter-secs",
        "1",
        "--key-overlap-secs",
        "7200",
        "--key-refresh-secs",
        "1",
    ];
    let a = Node::spawn(&store, &policy).await;
    let b = Node::spawn(&store, &policy).await;
    let key = api_key(&store, "sandbox");
    let first = sandbox_type2(&store);
    assert_eq!(first.len(), 1);
    assert!(redeem(&a.base, &key), "a token before the switch");

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut saw_pending = false;
    loop {
        let keys = sandbox_type2(&store);
        let pending = keys.iter().filter(|k| k.1 == "pending").count();
        assert!(pending <= 1, "two successors announced for one due time: {keys:?}");
        saw_pending |= pending == 1 && state_of(&keys, &first[0].0) == "active";
        if state_of(&keys, &first[0].0) == "verify-only" && keys.iter().any(|k| k.1 == "active") {
            break;
        }
        assert!(Instant::now() < deadline, "no rotation: {keys:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(saw_pending, "the successor was listed (pending) before it signed");
    // Both nodes sign with the new key (each has reloaded within a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for node in [&a, &b] {
        assert!(redeem(&node.base, &key), "a token after the switch through {}", node.base);
    }

    // One directory: the same ETag on both nodes, max-age within the jitter.
    let http = reqwest::Client::new();
    let mut etags = Vec::new();
    for node in [&a, &b] {
        let r = http.get(format!("{}/.well-known/private-token-issuer-directory", node.base)).send().await.unwrap();
        let cache = r.headers()["cache-control"].to_str().unwrap().to_owned();
        assert!(cache == "public, max-age=2" || cache == "public, max-age=1", "{cache}");
        etags.push(r.headers()["etag"].to_str().unwrap().to_owned());
    }
    assert_eq!(etags[0], etags[1], "every node serves the same directory");

    // Announcements across both nodes == successor keys; no failures.
    let successors = sandbox_type2(&store).len() - 1;
    let mut announced = 0.0;
    for node in [&a, &b] {
        let text = http.get(format!("{}/metrics", node.base)).send().await.unwrap().text().await.unwrap();
        announced += metric(&text, "key_rotation_total ");
        assert_eq!(metric(&text, "key_rotation_failure_total "), 0.0, "{text}");
    }
    // A node may announce the next cycle between the listing and the scrape.
    let now = sandbox_type2(&store).len() - 1;
    assert!(announced as usize >= successors && announced as usize <= now, "{announced} vs {successors}..={now}");
}

#[test]
fn rotation_policies_that_could_break_clients_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (args, says) in [
        (&["--key-lifetime", "1d", "--key-overlap-secs", "600"][..], "longest token lifetime"),
        (&["--key-announce-secs", "60"][..], "below the directory max-age"),
        (&["--key-lifetime", "staging=1d"][..], "unknown environment"),
    ] {
        let out = Command::new(BIN)
            .args(["--data-dir", dir.path().to_str().unwrap(), "serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert!(last.starts_with("blindpass: ") && last.contains(says), "{args:?}: {err}");
    }
}
