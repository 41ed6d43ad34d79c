//! Helpers shared by the tests that run the real `blindpass` binary.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod postgres;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_blindpass");

/// A running `blindpass serve`; killed on drop. Every binary test starts
/// its servers through [`Node::spawn`] (or [`Node::command`] for HTTPS or
/// a process environment of its own).
pub struct Node {
    pub child: Child,
    /// `http://127.0.0.1:PORT` (or `https://…`).
    pub base: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a node's log goes: nowhere, or the test's own stderr when
/// `BLINDPASS_TEST_NODE_LOGS` is set (to see why a node answered as it did).
fn node_log() -> Stdio {
    match std::env::var_os("BLINDPASS_TEST_NODE_LOGS") {
        Some(_) => Stdio::inherit(),
        None => Stdio::null(),
    }
}

impl Node {
    /// Starts `blindpass <store> serve --listen 127.0.0.1:PORT <flags>` over
    /// plain HTTP and waits until `/health` answers.
    pub async fn spawn(store: &[&str], flags: &[&str]) -> Node {
        Node::command(store, flags).start().await
    }

    /// A node to start, with more to say about it first.
    pub fn command(store: &[&str], flags: &[&str]) -> NodeCommand {
        NodeCommand {
            store: store.iter().map(|s| (*s).to_owned()).collect(),
            flags: flags.iter().map(|s| (*s).to_owned()).collect(),
            tls_ca: None,
            open_umask: false,
            addr: None,
            env: Vec::new(),
        }
    }
}

/// [`Node::command`]: how to start a node and how to know it is up.
pub struct NodeCommand {
    store: Vec<String>,
    flags: Vec<String>,
    tls_ca: Option<String>,
    open_umask: bool,
    addr: Option<String>,
    env: Vec<(String, Option<String>)>,
}

impl NodeCommand {
    /// The node serves HTTPS (its flags name the certificate); it is up when
    /// curl, trusting the CA file `ca`, gets `/health`.
    pub fn https(mut self, ca: &str) -> Self {
        self.tls_ca = Some(ca.to_owned());
        self
    }

    /// Listens on `addr` (e.g. the address of a node this one replaces)
    /// instead of a free port.
    pub fn listen(mut self, addr: &str) -> Self {
        self.addr = Some(addr.to_owned());
        self
    }

    /// Sets `name` in the node's environment (`None`: removes it).
    pub fn env(mut self, name: &str, value: Option<&str>) -> Self {
        self.env.push((name.to_owned(), value.map(str::to_owned)));
        self
    }

    /// Runs the node under umask 000, the most permissive.
    pub fn open_umask(mut self) -> Self {
        self.open_umask = true;
        self
    }

    /// Starts the node without waiting for it.
    pub fn spawn(self) -> Node {
        let addr = self.addr.unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
        let mut command = match self.open_umask {
            true => {
                let mut sh = Command::new("sh");
                sh.arg("-c").arg("umask 000; exec \"$0\" \"$@\"").arg(BIN);
                sh
            }
            false => Command::new(BIN),
        };
        for (name, value) in &self.env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let child = command
            .args(&self.store)
            .args(["serve", "--listen", &addr])
            .args(&self.flags)
            .stdout(Stdio::null())
            .stderr(node_log())
            .spawn()
            .unwrap();
        let scheme = if self.tls_ca.is_some() { "https" } else { "http" };
        Node { child, base: format!("{scheme}://{addr}"), addr }
    }

    /// Starts the node and waits (up to a minute) until `/health` answers.
    pub async fn start(self) -> Node {
        let ca = self.tls_ca.clone();
        let node = self.spawn();
        let health = format!("{}/health", node.base);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = match &ca {
                None => reqwest::get(&health).await.is_ok_and(|r| r.status().is_success()),
                Some(ca) => curl_ok(ca, &health),
            };
            if up {
                return node;
            }
            assert!(Instant::now() < deadline, "blindpass serve did not come up at {health}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl NodeCommand {
    /// [`NodeCommand::start`] for a test without a runtime.
    pub fn start_blocking(self) -> Node {
        let ca = self.tls_ca.clone();
        let node = self.spawn();
        let health = format!("{}/health", node.base);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !match &ca {
            None => plain_health_ok(&node.addr),
            Some(ca) => curl_ok(ca, &health),
        } {
            assert!(Instant::now() < deadline, "blindpass serve did not come up at {health}");
            std::thread::sleep(Duration::from_millis(100));
        }
        node
    }
}

/// Whether `GET /health` over plain HTTP/1.0 at `addr` answers 200.
fn plain_health_ok(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = [0u8; 12];
    stream.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_ok()
        && stream.read_exact(&mut head).is_ok()
        && head.ends_with(b" 200")
}

/// Whether `curl --cacert CA URL` succeeds.
fn curl_ok(ca: &str, url: &str) -> bool {
    Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--max-time", "5", "--cacert", ca, url])
        .status()
        .is_ok_and(|s| s.success())
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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

/// A client that makes each call once (no retry on 5xx or 429).
pub fn no_retries() -> blindpass_client::RetryPolicy {
    blindpass_client::RetryPolicy { max_retries: 0, ..blindpass_client::RetryPolicy::default() }
}

/// One generate-claim at `base`: its status (0 when no answer came) and
/// `Retry-After`. A 5xx other than 503 fails the test on the spot.
pub async fn generate_claim(
    http: &reqwest::Client,
    base: &str,
    relay: &blindpass_client::RelayCredentials,
    token: &str,
) -> (u16, Option<String>) {
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
