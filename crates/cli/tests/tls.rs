//! HTTPS through the real binary, checked with curl (a client we did not
//! write) and reqwest: TLS with HTTP/2 by ALPN, plain HTTP refused on the
//! TLS port, a renewed certificate (from another CA) picked up without a
//! restart, a broken renewal that keeps the last good pair serving, and
//! unusable files refused at start in one line. Each test makes its own
//! throwaway CA with rcgen.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Server, free_port};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};

/// A CA and a leaf for localhost / 127.0.0.1 signed by it, in PEM.
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn pki(name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(DnType::CommonName, name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    params.distinguished_name.push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pki { ca: ca.pem(), cert: cert.pem(), key: key.serialize_pem() }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `curl --cacert CA URL`: (exit success, HTTP version, body).
fn curl(ca: &str, url: &str) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert", ca, "-w", "\n%{http_version}", url])
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').unwrap_or(("", ""));
    (out.status.success(), version.to_owned(), body.to_owned())
}

fn start_tls(data: &str, cert: &str, key: &str) -> (Server, String) {
    let port = free_port();
    let child = Command::new(BIN)
        .args(["--data-dir", data, "serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--tls-cert", cert, "--tls-key", key, "--tls-reload-secs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server { child, base: format!("https://127.0.0.1:{port}") };
    (server, format!("127.0.0.1:{port}"))
}

fn wait_for(ca: &str, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !curl(ca, url).0 {
        assert!(Instant::now() < deadline, "HTTPS server did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn https_with_h2_and_certificates_renewed_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = pki("first CA");
    let ca1 = write(dir.path(), "ca1.pem", &first.ca);
    let cert = write(dir.path(), "cert.pem", &first.cert);
    let key = write(dir.path(), "key.pem", &first.key);
    let (server, addr) = start_tls(data.to_str().unwrap(), &cert, &key);
    let health = format!("{}/health", server.base);
    wait_for(&ca1, &health);

    let (ok, version, body) = curl(&ca1, &health);
    assert!(ok);
    assert_eq!(version, "2", "HTTP/2 by ALPN");
    assert_eq!(body, r#"{"status":"ok"}"#);
    let (ok, _, body) = curl(&ca1, &format!("{}/.well-known/private-token-issuer-directory", server.base));
    assert!(ok && body.contains("token-keys"), "{body}");
    // HTTP/1.1 too.
    let out = Command::new("curl").args(["-sS", "--http1.1", "--cacert", &ca1, &health]).output().unwrap();
    assert!(out.status.success());
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain =
        Command::new("curl").args(["-sS", "--max-time", "5", &format!("http://{addr}/health")]).output().unwrap();
    assert!(!plain.status.success(), "plain HTTP answered: {}", String::from_utf8_lossy(&plain.stdout));

    // A broken renewal (the new certificate with the old key) keeps the
    // last good pair serving.
    let second = pki("second CA");
    let ca2 = write(dir.path(), "ca2.pem", &second.ca);
    std::fs::write(&cert, &second.cert).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(curl(&ca1, &health).0, "a mismatched renewal must not replace the serving pair");
    assert!(!curl(&ca2, &health).0);

    // The whole renewal: picked up within the reload interval, no restart.
    std::fs::write(&key, &second.key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !curl(&ca2, &health).0 {
        assert!(Instant::now() < deadline, "the renewed certificate was not picked up");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!curl(&ca1, &health).0, "the old CA no longer verifies the server");
    drop(server);
}

#[test]
fn unusable_tls_files_are_one_line_errors_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let a = pki("a");
    let b = pki("b");
    let cert = write(dir.path(), "cert.pem", &a.cert);
    let other_key = write(dir.path(), "other.pem", &b.key);
    let empty = write(dir.path(), "empty.pem", "");
    let missing = dir.path().join("missing.pem").to_str().unwrap().to_owned();
    for (cert, key, says) in [
        (cert.as_str(), other_key.as_str(), "does not fit"),
        (empty.as_str(), other_key.as_str(), "no certificate"),
        (missing.as_str(), other_key.as_str(), "missing.pem"),
        (cert.as_str(), missing.as_str(), "missing.pem"),
    ] {
        let out = Command::new(BIN)
            .args(["--data-dir", data.to_str().unwrap(), "serve", "--listen", "127.0.0.1:0"])
            .args(["--tls-cert", cert, "--tls-key", key])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert!(last.starts_with("blindpass: ") && last.contains(says), "{says}: {err}");
    }
    let out = Command::new(BIN).args(["serve", "--tls-cert", &cert]).output().unwrap();
    assert!(!out.status.success(), "--tls-cert without --tls-key");
}
