//! The operator's surface through the real binary: global client options
//! after the subcommand, store options only on store commands, one-line
//! errors, `--metrics-listen`, readiness, and per-key rate limits from the
//! CLI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::process::Command;

use common::*;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).env_remove("BLINDPASS_API_KEY").env_remove("BLINDPASS_DATA_DIR").output().unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn client_options_work_after_the_subcommand_and_store_options_stay_off_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let server = Node::spawn(&["--data-dir", data], &[]).await;
    // Store options after the store command (and the nested subcommand).
    let key =
        cli(&[], &["api-keys", "create", "--env", "sandbox", "--data-dir", data]).lines().last().unwrap().to_owned();
    assert!(cli(&[], &["keys", "--data-dir", data, "list"]).contains("sandbox"));
    assert!(cli(&[], &["keys", "list", "--data-dir", data]).contains("sandbox"));

    // Global client options before or after `flow`.
    for args in [
        vec!["client", "flow", "--base-url", &server.base, "--api-key", &key, "--json"],
        vec!["client", "--base-url", &server.base, "flow", "--json", "--api-key", &key],
    ] {
        let out = run(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(body["token-consumed"], true);
    }

    // Client commands neither show nor take store options.
    let help = run(&["client", "flow", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--base-url") && help.contains("--api-key"), "{help}");
    for store_flag in ["--data-dir", "--database-url", "--key-encryption-key-file", "--db-pool-size"] {
        assert!(!help.contains(store_flag), "{store_flag} in client help: {help}");
    }
    let refused = run(&["client", "flow", "--data-dir", data, "--base-url", &server.base, "--api-key", &key]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("--data-dir"), "{}", stderr(&refused));
    let misplaced = run(&["--data-dir", data, "client", "flow", "--base-url", &server.base, "--api-key", &key]);
    assert!(!misplaced.status.success());
    assert_eq!(stderr(&misplaced).lines().count(), 1, "{}", stderr(&misplaced));
    assert!(stderr(&misplaced).contains("store option"), "{}", stderr(&misplaced));
}

#[tokio::test]
async fn a_connection_error_is_one_line_said_once() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = run(&["client", "flow", "--base-url", &url, "--api-key", "persona_sandbox_x"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("blindpass: 1. challenge: "), "{err}");
    assert_eq!(err.matches("error sending request").count(), 1, "each cause once: {err}");
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
}

#[tokio::test]
async fn metrics_on_their_own_listener_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let server = Node::spawn(&["--data-dir", data], &["--metrics-listen", &metrics_addr]).await;
    let key = api_key(&["--data-dir", data], "sandbox");
    let out = run(&["client", "flow", "--base-url", &server.base, "--api-key", &key]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Not on the API listener; on its own.
    assert_eq!(reqwest::get(format!("{}/metrics", server.base)).await.unwrap().status(), 404);
    let text = reqwest::get(format!("http://{metrics_addr}/metrics")).await.unwrap().text().await.unwrap();
    let value = |series: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
    };
    assert_eq!(value("issuance_request_total "), 1.0, "{text}");
    assert_eq!(value("redemption_total{outcome=\"accepted\"} "), 1.0, "{text}");
    assert!(text.contains("store_operation_duration_seconds_bucket{"), "store latency is reported");

    let ready = reqwest::get(format!("{}/health/ready", server.base)).await.unwrap();
    assert_eq!(ready.status(), 200);
    // Retiring the only active type-1 sandbox key makes the node not ready.
    let list = cli(&["--data-dir", data], &["keys", "list", "--env", "sandbox"]);
    let type1 = list.lines().find(|l| l.split_whitespace().nth(2) == Some("1") && l.contains("active")).unwrap();
    let id = type1.split_whitespace().next().unwrap();
    cli(&["--data-dir", data], &["keys", "retire", id]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = reqwest::get(format!("{}/health/ready", server.base)).await.unwrap();
        if r.status() == 503 {
            assert!(r.headers().contains_key("retry-after"));
            assert!(r.text().await.unwrap().contains("token type 1"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still ready after the key was retired");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[test]
fn api_key_rate_limits_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let store = ["--data-dir", dir.path().to_str().unwrap()];
    let created = cli(&store, &["api-keys", "create", "--env", "sandbox", "--rate-limit", "25"]);
    assert!(created.contains("rate-limit: 25 requests per minute"), "{created}");
    let id = created.lines().find_map(|l| l.strip_prefix("id: ")).unwrap().to_owned();
    let listed = |id: &str| -> String {
        let list = cli(&store, &["api-keys", "list"]);
        list.lines().find(|l| l.starts_with(id)).unwrap().split_whitespace().nth(4).unwrap().to_owned()
    };
    assert_eq!(listed(&id), "25");
    cli(&store, &["api-keys", "update", &id, "--rate-limit", "40"]);
    assert_eq!(listed(&id), "40");
    cli(&store, &["api-keys", "update", &id, "--rate-limit", "none"]);
    assert_eq!(listed(&id), "-");
    for bad in ["0", "-1", "lots", "9223372036854775808"] {
        let out =
            Command::new(BIN).args(store).args(["api-keys", "update", &id, "--rate-limit", bad]).output().unwrap();
        assert!(!out.status.success(), "--rate-limit {bad} accepted");
    }
    let missing = Command::new(BIN).args(store).args(["api-keys", "update", "api_nope", "--rate-limit", "3"]).output();
    let missing = missing.unwrap();
    assert!(!missing.status.success());
    assert_eq!(stderr(&missing).trim(), "blindpass: no API key with id api_nope");
}

/// The `--config` file through the binary: a store command takes the store
/// options from it and leaves the server's alone; the environment beats the
/// file; a server started from the file alone serves on the file's
/// address with its typed values; an unknown key is a one-line error.
#[tokio::test]
async fn the_config_file_sets_options_below_the_environment_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (from_file, from_env) = (dir.path().join("from-file"), dir.path().join("from-env"));
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("blindpass.toml");
    let toml = format!(
        "data-dir = {:?}\nlisten = {addr:?}\nrequest-timeout-secs = \"30s\"\nmax-body-bytes = \"64KiB\"\nrate-limit = 0\n",
        from_file.to_str().unwrap()
    );
    std::fs::write(&config, toml).unwrap();
    let config = config.to_str().unwrap();

    assert!(run(&["--config", config, "api-keys", "create", "--env", "sandbox"]).status.success());
    assert!(from_file.join("blindpass.db").exists(), "the file's data-dir");
    let out = Command::new(BIN)
        .args(["--config", config, "api-keys", "create", "--env", "sandbox"])
        .env("BLINDPASS_DATA_DIR", &from_env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(from_env.join("blindpass.db").exists(), "the environment beats the file");
    // A flag beats the file, before the subcommand as after it.
    let from_flag = dir.path().join("from-flag");
    assert!(run(&["--config", config, "--data-dir", from_flag.to_str().unwrap(), "migrate"]).status.success());
    assert!(from_flag.join("blindpass.db").exists(), "a flag before the subcommand beats the file");

    // No --listen: the address is the file's.
    let child = Command::new(BIN)
        .args(["--config", config, "serve"])
        .env_remove("BLINDPASS_DATA_DIR")
        .env_remove("BLINDPASS_LISTEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let node = Node { child, base: format!("http://{addr}"), addr: addr.clone() };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !reqwest::get(format!("http://{addr}/health")).await.is_ok_and(|r| r.status().is_success()) {
        assert!(std::time::Instant::now() < deadline, "serve did not come up on the file's address");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(node);

    std::fs::write(dir.path().join("bad.toml"), "listen = \"127.0.0.1:0\"\nlisten-address = 1\n").unwrap();
    let bad = dir.path().join("bad.toml");
    let out = run(&["--config", bad.to_str().unwrap(), "keys", "list"]);
    assert!(!out.status.success());
    let lines: Vec<String> = stderr(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("listen-address"), "{lines:?}");
}
