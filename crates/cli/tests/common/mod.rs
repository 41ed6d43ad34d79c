//! Helpers shared by the tests that run the real `blindpass` binary.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_blindpass");

/// A running `blindpass serve`; killed on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `blindpass <store> serve --listen … <serve_args>` and waits for `/health`.
pub async fn start(store: &[&str], serve_args: &[&str]) -> Server {
    let port = free_port();
    let child = Command::new(BIN)
        .args(store)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(serve_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server { child, base: format!("http://127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reqwest::get(format!("{}/health", server.base)).await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server
}

/// Runs `blindpass <store> <args>`, which must succeed; returns stdout.
pub fn cli(store: &[&str], args: &[&str]) -> String {
    let out = Command::new(BIN).args(store).args(args).output().unwrap();
    assert!(out.status.success(), "blindpass {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A new API key's secret (the last line `api-keys create` prints).
pub fn api_key(store: &[&str], env: &str) -> String {
    cli(store, &["api-keys", "create", "--env", env]).lines().last().unwrap().to_owned()
}

/// Store options that make and use type-2 keys in SoftHSM2 `token`. The
/// test must run in `blindpass_hsm::testing::on_fresh_token`, whose process
/// environment (inherited by every binary it starts) names the token.
pub fn pkcs11_args(token: &blindpass_hsm::testing::SoftHsm) -> Vec<String> {
    let module = blindpass_hsm::testing::module_path().expect("SoftHSM2's module");
    [
        "--signer",
        "pkcs11",
        "--pkcs11-module",
        module.to_str().unwrap(),
        "--pkcs11-token-label",
        blindpass_hsm::testing::LABEL,
        "--pkcs11-pin-file",
        token.pin_file().to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Writes a fresh key-encryption key to `path`, readable by its owner only
/// (blindpass refuses a KEK file group or others can read).
pub fn write_kek(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, cli(&[], &["keys", "generate-kek"])).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}
