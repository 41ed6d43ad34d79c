//! A full disk under the embedded SQLite store: the data directory on a
//! size-limited tmpfs that the test mounts and then fills.
//!
//! - while the disk is full, a write answers 503 with `Retry-After` (never
//!   another 5xx), and every spend answered 200 is on disk;
//! - reads keep working: the directory, challenges, issuance (without an
//!   `Idempotency-Key`, whose record would be a write);
//! - `PRAGMA integrity_check` stays `ok`;
//! - writes work again by themselves once space returns (no restart);
//! - after a restart, every token spent before is still spent.
//!
//! Runs when `BLINDPASS_TEST_FULL_DISK` is set at build time (`.ci/run`
//! sets it); it mounts a tmpfs, so it needs root (or CAP_SYS_ADMIN).
//! Otherwise it is ignored and the summary says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use blindpass_client::Client;

const CLAIM: &str = "age_over18_verified";

/// A tmpfs of `size` mounted at `path`; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount a tmpfs (needs root): {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs(path.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros to `path` until the disk refuses; the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    let mut written = 0;
    while file.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    // The last partial block, byte by byte.
    while file.write_all(&[0]).is_ok() && file.flush().is_ok() {
        written += 1;
    }
    let _ = file.sync_all();
    written
}

use common::{generate_claim as claim, no_retries};

fn integrity(data: &Path) -> String {
    let db = rusqlite::Connection::open_with_flags(
        data.join("blindpass.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap();
    db.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(blindpass_test_full_disk), ignore = "needs BLINDPASS_TEST_FULL_DISK and root (it mounts a tmpfs)")]
async fn a_full_disk_refuses_writes_with_503_keeps_reads_and_loses_no_spend() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), "16m");
    let data = disk.0.join("data");
    let store = ["--data-dir", data.to_str().unwrap()];
    let api_key = common::api_key(&store, "sandbox");
    let flags = ["--rate-limit", "0", "--relay-rate-limit", "0", "--client-rate-limit", "0"];
    let node = common::Node::spawn(&store, &flags).await;
    let client = Client::new(&node.base).unwrap().with_api_key(&api_key).with_retry(no_retries());
    let mut tokens = Vec::new();
    for _ in 0..60 {
        let offer = client.challenge(CLAIM, true).await.unwrap();
        tokens.push(client.issue(&offer).await.unwrap().encode());
    }
    let http = reqwest::Client::new();
    let relay = client.create_relay(CLAIM, None, true).await.unwrap();
    let mut spent = Vec::new();
    for (i, token) in tokens.iter().enumerate().take(10) {
        assert_eq!(claim(&http, &node.base, &relay, token).await.0, 200, "token {i}");
        spent.push(i);
    }

    // The disk fills. Writes that still find room in pages SQLite holds
    // succeed (and are on disk); the first that needs a new block is
    // refused with 503, and so is every write after it.
    let filler = disk.0.join("filler");
    let filled = fill(&filler);
    let mut refused = 0;
    for (i, token) in tokens.iter().enumerate().skip(10).take(40) {
        let (status, retry_after) = claim(&http, &node.base, &relay, token).await;
        match status {
            200 => spent.push(i),
            503 => {
                assert!(retry_after.is_some(), "token {i}: 503 without Retry-After");
                refused += 1;
            }
            other => panic!("token {i} on a full disk: {other}"),
        }
    }
    eprintln!("full disk ({filled} bytes of filler): {} spends accepted, {refused} refused", spent.len() - 10);
    assert!(refused > 0, "the full disk refused no write");

    // Reads go on: the directory, a challenge, an issuance. (The client's
    // issuance carries an Idempotency-Key, whose record is a write: 503.)
    let directory = http.get(format!("{}/.well-known/private-token-issuer-directory", node.base)).send().await;
    assert_eq!(directory.unwrap().status(), 200);
    let offer = client.challenge(CLAIM, true).await.expect("a challenge on a full disk");
    let body = blindpass_client::issuance_body(&[1; 256], &offer.key_id);
    let issued = http
        .post(format!("{}/api/v1/privacy-passes", node.base))
        .bearer_auth(&api_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), 201, "an issuance without an Idempotency-Key writes nothing");
    let idempotent = client.issue(&offer).await.expect_err("an idempotent issuance needs its record written");
    assert_eq!(idempotent.status(), Some(503), "{idempotent:?}");
    assert_eq!(integrity(&data), "ok");

    // Space returns: writes work again without a restart.
    std::fs::remove_file(&filler).unwrap();
    let back = Instant::now();
    let refused_then: Vec<usize> = (10..50).filter(|i| !spent.contains(i)).collect();
    for i in refused_then {
        let token = &tokens[i];
        loop {
            match claim(&http, &node.base, &relay, token).await.0 {
                200 => break,
                503 => assert!(back.elapsed() < Duration::from_secs(10), "token {i}: writes did not come back"),
                other => panic!("token {i} after space returned: {other}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        spent.push(i);
    }
    eprintln!("writes back {:?} after space returned", back.elapsed());

    // A restart: every token spent before is still spent.
    drop(node);
    let node = common::Node::spawn(&store, &flags).await;
    let fresh =
        Client::new(&node.base).unwrap().with_retry(no_retries()).create_relay(CLAIM, None, true).await.unwrap();
    for &i in &spent {
        assert_eq!(claim(&http, &node.base, &fresh, &tokens[i]).await.0, 401, "token {i} was spent before the restart");
    }
    assert_eq!(integrity(&data), "ok");
}
