//! blindpass against backing services that this test starts itself: a
//! throwaway PostgreSQL cluster (initdb in a temporary directory, its own
//! port, SSL on, a certificate made here, plaintext refused by `pg_hba`) and
//! a Redis that listens on TLS only.
//!
//! - every `sslmode` does what libpq's does: `verify-full` checks the chain
//!   and the host name, `verify-ca` the chain only, a wrong CA is refused, a
//!   CA given with `require` is checked;
//! - a node runs over `verify-full` PostgreSQL and `rediss://` Redis, issues
//!   and redeems, and refuses to start with a Redis CA that is not the one;
//! - with a key-encryption key, no private key bytes reach any file of the
//!   PostgreSQL cluster (data files and WAL, after a checkpoint).
//!
//! Runs when `BLINDPASS_TEST_BACKEND_TLS` is set at build time (`.ci/run`
//! sets it); it needs the PostgreSQL server binaries (`initdb`, `postgres`)
//! and `redis-server`. Otherwise the test is ignored and the summary says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blindpass_client::{Client, RetryPolicy};
use blindpass_store::postgres::{PoolOptions, PostgresStore};
use common::postgres::Cluster;

const CLAIM: &str = "age_over18_verified";
/// The DER prefix of an RSA PKCS#8 private key (version 0, rsaEncryption).
const PKCS8_RSA: &[u8] =
    &[0x02, 0x01, 0x00, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

fn have(program: &str) -> bool {
    Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// The PostgreSQL server binaries; a missing tool fails the test.
fn tools() -> PathBuf {
    assert!(have("redis-server"), "redis-server is not installed");
    common::postgres::bin_dir().expect("the PostgreSQL server binaries (initdb, postgres) are not installed")
}

/// A CA and a server certificate for `localhost` only (no IP address), so
/// that `127.0.0.1` fails a host-name check and passes a chain check.
struct Pki {
    ca_pem: String,
    other_ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

fn make_pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert, params, key)
    };
    let (ca_cert, ca_params, ca_key) = ca("blindpass test CA");
    let (other_ca, _, _) = ca("some other CA");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "localhost");
    let server_key = KeyPair::generate().unwrap();
    let server_cert = params.signed_by(&server_key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        other_ca_pem: other_ca.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    }
}

/// A PostgreSQL cluster of our own that speaks TLS only over TCP, with a
/// certificate for `localhost`.
fn tls_cluster(bin: &Path, dir: &Path, pki: &Pki) -> Cluster {
    let mut cluster = Cluster::init(bin, dir);
    // TLS or nothing over TCP.
    cluster.write(
        "pg_hba.conf",
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n\
         hostnossl all all 0.0.0.0/0 reject\nhostnossl all all ::/0 reject\n",
    );
    cluster.write("server.crt", &pki.server_cert_pem);
    cluster.write("server.key", &pki.server_key_pem);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(cluster.data.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    cluster.start(&[
        "listen_addresses=localhost",
        "ssl=on",
        "ssl_cert_file=server.crt",
        "ssl_key_file=server.key",
        "fsync=off",
    ]);
    cluster
}

fn url(cluster: &Cluster, host: &str, params: &str) -> String {
    format!("postgres://postgres@{host}:{}/postgres?connect_timeout=5&{params}", cluster.port)
}

/// Every byte of every file in the cluster's data directory.
fn all_bytes(cluster: &Cluster) -> Vec<u8> {
    fn walk(dir: &Path, into: &mut Vec<u8>) {
        for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, into);
            } else if let Ok(bytes) = std::fs::read(&path) {
                into.extend(bytes);
            }
        }
    }
    let mut all = Vec::new();
    walk(&cluster.data, &mut all);
    all
}

async fn connect(url: &str, ca_file: Option<&Path>) -> Result<PostgresStore, String> {
    let options = PoolOptions { max_size: 1, timeout: Duration::from_secs(5), ca_file: ca_file.map(Path::to_path_buf) };
    PostgresStore::connect(url, options).await.map_err(|e| e.to_string())
}

/// A Redis that speaks TLS only; killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsRedis {
    fn start(dir: &Path, ca: &Path, pki: &Pki) -> Self {
        let (cert, key) = (dir.join("redis.crt"), dir.join("redis.key"));
        std::fs::write(&cert, &pki.server_cert_pem).unwrap();
        std::fs::write(&key, &pki.server_key_pem).unwrap();
        let port = common::free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--tls-auth-clients", "no"])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(ca)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, port }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(blindpass_test_backend_tls), ignore = "needs BLINDPASS_TEST_BACKEND_TLS, initdb and redis-server")]
async fn postgres_and_redis_over_tls_and_no_private_key_bytes_in_the_cluster_with_a_kek() {
    let bin = tools();
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki();
    let ca = dir.path().join("ca.pem");
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    std::fs::write(&other_ca, &pki.other_ca_pem).unwrap();
    let cluster = tls_cluster(&bin, dir.path(), &pki);

    // --- sslmode, one case at a time ----------------------------------------
    // The cluster refuses plaintext over TCP, so every success below was TLS.
    let refused = connect(&url(&cluster, "localhost", "sslmode=disable"), None).await;
    assert!(refused.is_err(), "plaintext must be refused by this cluster");
    connect(&url(&cluster, "localhost", "sslmode=require"), None).await.expect("require, no CA: encryption only");
    let live = connect(&url(&cluster, "localhost", "sslmode=verify-full"), Some(&ca))
        .await
        .expect("verify-full, right CA and name");
    let url_ca = format!("sslmode=verify-full&sslrootcert={}", ca.display());
    connect(&url(&cluster, "localhost", &url_ca), None).await.expect("verify-full with sslrootcert in the URL");
    let wrong_name = connect(&url(&cluster, "127.0.0.1", "sslmode=verify-full"), Some(&ca)).await;
    let why = wrong_name.expect_err("the certificate names localhost only, not 127.0.0.1");
    assert!(why.to_lowercase().contains("certificate"), "the reason names the certificate: {why}");
    connect(&url(&cluster, "127.0.0.1", "sslmode=verify-ca"), Some(&ca)).await.expect("verify-ca ignores the name");
    let wrong_ca = connect(&url(&cluster, "localhost", "sslmode=verify-ca"), Some(&other_ca)).await;
    let why = wrong_ca.expect_err("a certificate from another CA must be refused");
    assert!(why.to_lowercase().contains("certificate"), "the reason names the certificate: {why}");
    let wrong_ca = connect(&url(&cluster, "localhost", "sslmode=require"), Some(&other_ca)).await;
    assert!(wrong_ca.is_err(), "a CA given with require is checked, as in libpq");
    let without_ca = connect(&url(&cluster, "localhost", "sslmode=verify-full"), None).await;
    assert!(without_ca.unwrap_err().contains("needs a CA"));
    let ssl_rows = cluster.psql("SELECT count(*) FROM pg_stat_ssl WHERE ssl").unwrap();
    assert!(ssl_rows.trim().parse::<u32>().unwrap() >= 1, "pg_stat_ssl shows our TLS session: {ssl_rows}");
    drop(live);

    // --- a node over verify-full PostgreSQL and rediss:// Redis, with a KEK --
    let redis = TlsRedis::start(dir.path(), &ca, &pki);
    let kek = dir.path().join("kek");
    common::write_kek(&kek);
    let url = url(&cluster, "localhost", "sslmode=verify-full");
    let store = [
        "--database-url",
        &url,
        "--database-ca-file",
        ca.to_str().unwrap(),
        "--key-encryption-key-file",
        kek.to_str().unwrap(),
    ];
    let redis_url = format!("rediss://localhost:{}", redis.port);
    let serve = ["--redis-url", &redis_url, "--redis-ca-file", ca.to_str().unwrap()];
    let node = common::Node::spawn(&store, &serve).await;
    let api_key = common::api_key(&store, "sandbox");
    let retry = RetryPolicy { max_retries: 0, ..RetryPolicy::default() };
    let client = Client::new(&node.base).unwrap().with_api_key(&api_key).with_retry(retry);
    let offer = client.challenge(CLAIM, true).await.unwrap();
    let token = client.issue(&offer).await.unwrap();
    let relay = Client::new(&node.base).unwrap().with_retry(retry).create_relay(CLAIM, None, true).await.unwrap();
    let http = reqwest::Client::new();
    let claim = http
        .post(format!("{}/api/privacy/v1/relays/{}/generate-claim", node.base, relay.token))
        .header("persona-relay-secret", relay.secret.as_str())
        .header("authorization", format!("PrivateToken token={}", token.encode()))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(claim.status(), 200, "a full flow over TLS backends");
    drop(node);

    // The same node with a Redis CA that is not Redis's: it refuses to start.
    let other = ["--redis-url", &redis_url, "--redis-ca-file", other_ca.to_str().unwrap()];
    let out =
        Command::new(common::BIN).args(store).args(["serve", "--listen", "127.0.0.1:0"]).args(other).output().unwrap();
    assert!(!out.status.success(), "must not start with the wrong Redis CA");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Redis"), "{}", String::from_utf8_lossy(&out.stderr));

    // --- at rest: no PKCS#8 key in any file of the cluster -------------------
    cluster.psql("CHECKPOINT").unwrap();
    assert!(
        !all_bytes(&cluster).windows(PKCS8_RSA.len()).any(|w| w == PKCS8_RSA),
        "a PKCS#8 private key in the PostgreSQL data directory despite the KEK"
    );
    // The control: rewrapped to plaintext, the same scan finds the keys.
    common::cli(&store, &["keys", "rewrap", "--to-plaintext"]);
    cluster.psql("CHECKPOINT").unwrap();
    assert!(
        all_bytes(&cluster).windows(PKCS8_RSA.len()).any(|w| w == PKCS8_RSA),
        "the scan must find plaintext keys after rewrap --to-plaintext"
    );
}
