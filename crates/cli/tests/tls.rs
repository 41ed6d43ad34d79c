//! HTTPS through the real binary, checked with curl (a client we did not
//! write) and reqwest: TLS with HTTP/2 by ALPN, plain HTTP refused on the
//! TLS port, a renewed certificate (from another CA) picked up without a
//! restart, a broken renewal that keeps the last good pair serving, and
//! unusable files refused at start in one line. Each test makes its own
//! throwaway CA with rcgen.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::disallowed_methods)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, Node};
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

#[test]
fn https_with_h2_and_certificates_renewed_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = pki("first CA");
    let ca1 = write(dir.path(), "ca1.pem", &first.ca);
    let cert = write(dir.path(), "cert.pem", &first.cert);
    let key = write(dir.path(), "key.pem", &first.key);
    let tls = ["--tls-cert", &cert, "--tls-key", &key, "--tls-reload-secs", "1"];
    let server = Node::command(&["--data-dir", data.to_str().unwrap()], &tls).https(&ca1).start_blocking();
    let (addr, health) = (server.addr.clone(), format!("{}/health", server.base));

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

/// `serve` over HTTPS with client certificates from `[cert, key, client CA]`
/// (files reloaded every second) and `args` (its attesters), up and
/// answering.
fn start_mtls(dir: &Path, server_ca: &str, [cert, key, client_ca]: [&str; 3], args: &[&str]) -> Node {
    let tls = ["--tls-cert", cert, "--tls-key", key, "--client-ca", client_ca, "--tls-reload-secs", "1"];
    let flags: Vec<&str> = tls.iter().chain(args).copied().collect();
    Node::command(&["--data-dir", dir.join("data").to_str().unwrap()], &flags).https(server_ca).start_blocking()
}

/// A client certificate for `name` signed by `issuer` (PEM cert, PEM key).
fn client_cert(name: &str, issuer: &rcgen::Issuer<'_, KeyPair>) -> (String, String) {
    let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages.push(rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    let key = KeyPair::generate().unwrap();
    (params.signed_by(&key, issuer).unwrap().pem(), key.serialize_pem())
}

fn client_ca(name: &str) -> (String, rcgen::Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    (pem, rcgen::Issuer::new(params, key))
}

/// `POST /token-request` with curl, optionally with a client certificate
/// and headers: (curl succeeded, HTTP status, response body).
fn token_request(
    ca: &str,
    url: &str,
    cert: Option<(&str, &str)>,
    headers: &[&str],
    body: &Path,
) -> (bool, u16, Vec<u8>) {
    let out_file = body.with_extension("out");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "5", "--cacert", ca, "-o", out_file.to_str().unwrap(), "-w", "%{http_code}"]);
    cmd.args(["-H", "content-type: application/private-token-request", "--data-binary"]);
    cmd.arg(format!("@{}", body.display()));
    if let Some((cert, key)) = cert {
        cmd.args(["--cert", cert, "--key", key]);
    }
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().unwrap();
    let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    (out.status.success(), status, std::fs::read(&out_file).unwrap_or_default())
}

#[test]
fn mtls_attesters_get_tokens_without_an_api_key_and_nobody_else_does() {
    use blindpass_protocol::type2::keys::IssuerPublicKey;
    use blindpass_protocol::{b64, type2, wire};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server_pki = pki("server CA");
    let ca = write(d, "ca.pem", &server_pki.ca);
    let cert = write(d, "cert.pem", &server_pki.cert);
    let key = write(d, "key.pem", &server_pki.key);
    let (clients_pem, clients) = client_ca("attesters CA");
    let clients_ca = write(d, "clients.pem", &clients_pem);
    let (foreign_pem, foreign) = client_ca("foreign CA");
    let _ = foreign_pem;
    let mut files = std::collections::HashMap::new();
    for (label, name, issuer) in [
        ("attester", "attester.example", &clients),
        ("verifier", "verifier.example", &clients),
        ("unmapped", "other.example", &clients),
        ("foreign", "attester.example", &foreign),
    ] {
        let (c, k) = client_cert(name, issuer);
        files.insert(label, (write(d, &format!("{label}.pem"), &c), write(d, &format!("{label}-key.pem"), &k)));
    }
    let attesters =
        ["--attester", "attester.example=sandbox", "--attester", "verifier.example=production:relay.verify"];
    let server = start_mtls(d, &ca, [&cert, &key, &clients_ca], &attesters);

    // The sandbox key from the directory; a TokenRequest for it.
    let (ok, _, directory) =
        curl(&ca, &format!("{}/.well-known/private-token-issuer-directory?sandbox=true", server.base));
    assert!(ok, "API-key clients (no certificate) still connect");
    let directory: serde_json::Value = serde_json::from_str(&directory).unwrap();
    let token_key = directory["token-keys"].as_array().unwrap().iter().find(|k| k["token-type"] == 2).unwrap();
    let issuer_key =
        IssuerPublicKey::from_rfc9578_spki(&b64::decode(token_key["token-key"].as_str().unwrap()).unwrap()).unwrap();
    let challenge = wire::TokenChallenge::new(2, "issuer.example", &[], "origin.example").unwrap();
    let (request, state) = type2::begin_issuance(&issuer_key, &challenge, &mut rand::rng()).unwrap();
    let body = d.join("request.bin");
    std::fs::write(&body, request.encode()).unwrap();
    let url = format!("{}/token-request", server.base);
    let with = |label: &str| {
        let (c, k) = &files[label];
        Some((c.as_str(), k.as_str()))
    };

    // The attester's certificate, no API key: a token that verifies.
    let (ok, status, response) = token_request(&ca, &url, with("attester"), &[], &body);
    assert!(ok && status == 200, "{status}: {}", String::from_utf8_lossy(&response));
    let token =
        type2::finalize_issuance(&issuer_key, &state, &type2::wire::TokenResponse::decode(&response).unwrap()).unwrap();
    type2::verify_token(&issuer_key, &token).unwrap();

    // No certificate and no key; a certificate from the CA that names no
    // attester; an attester without privacy_pass.write; an Authorization
    // header beside the certificate (the header wins, and is wrong).
    assert_eq!(token_request(&ca, &url, None, &[], &body).1, 401);
    assert_eq!(token_request(&ca, &url, with("unmapped"), &[], &body).1, 401);
    assert_eq!(token_request(&ca, &url, with("verifier"), &[], &body).1, 403);
    assert_eq!(token_request(&ca, &url, with("attester"), &["authorization: Bearer nope"], &body).1, 401);
    // A certificate from another CA, even for the attester's name, fails the handshake.
    let (ok, status, _) = token_request(&ca, &url, with("foreign"), &[], &body);
    assert!(!ok && status == 0, "another CA's certificate was accepted ({status})");
    drop(server);
}

#[test]
fn attesters_need_a_client_ca_and_a_dns_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki("ca");
    let cert = write(dir.path(), "cert.pem", &p.cert);
    let key = write(dir.path(), "key.pem", &p.key);
    let ca = write(dir.path(), "ca.pem", &p.ca);
    for (args, says) in [
        (vec!["--attester", "a.example=sandbox"], "client-ca"),
        (vec!["--client-ca", &ca, "--attester", "a.example=staging"], "--attester"),
        (vec!["--client-ca", &ca, "--attester", "a.example=sandbox:admin"], "--attester"),
        (vec!["--client-ca", &ca, "--attester", "not a name=sandbox"], "not a DNS name"),
    ] {
        let out = Command::new(BIN)
            .args(["--data-dir", dir.path().join("data").to_str().unwrap(), "serve", "--listen", "127.0.0.1:0"])
            .args(["--tls-cert", &cert, "--tls-key", &key])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// A TLS connection to `addr` presenting the client certificate `cert`
/// (PEM) with `key`, trusting `server_ca`; HTTP/1.1 by ALPN.
async fn mtls_connect(
    addr: &str,
    server_ca: &str,
    cert: &str,
    key: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(server_ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.as_bytes()).map(|c| c.unwrap()).collect();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

/// `GET /health` on an open connection: the status, or None when the
/// server closed it.
async fn health_on<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: &mut S) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").await.ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.ok()?.ok()?;
    String::from_utf8_lossy(&buf[..n]).split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_client_ca_is_picked_up_and_closes_the_connections_it_no_longer_trusts() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server_pki = pki("server CA");
    let ca = write(d, "ca.pem", &server_pki.ca);
    let cert = write(d, "cert.pem", &server_pki.cert);
    let key = write(d, "key.pem", &server_pki.key);
    let (old_pem, old_ca) = client_ca("old attesters CA");
    let (new_pem, new_ca) = client_ca("new attesters CA");
    let clients_ca = write(d, "clients.pem", &old_pem);
    let (old_cert, old_key) = client_cert("attester.example", &old_ca);
    let (new_cert, new_key) = client_cert("attester.example", &new_ca);
    let server = start_mtls(d, &ca, [&cert, &key, &clients_ca], &["--attester", "attester.example=sandbox"]);
    let addr = server.addr.clone();

    // A connection of the old CA's attester, kept open.
    let mut open = mtls_connect(&addr, &server_pki.ca, &old_cert, &old_key).await.unwrap();
    assert_eq!(health_on(&mut open).await, Some(200));
    let refused = async |cert: &str, key: &str| match mtls_connect(&addr, &server_pki.ca, cert, key).await {
        Err(_) => true,
        Ok(mut s) => health_on(&mut s).await.is_none(),
    };
    assert!(refused(&new_cert, &new_key).await, "the new CA is not trusted yet");

    // The operator replaces the client CA; the server certificate is untouched.
    std::fs::write(&clients_ca, &new_pem).unwrap();
    let changed = Instant::now();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(6), open.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "the old CA's open connection was not closed at the reload: {closed:?}"
    );
    assert!(changed.elapsed() < Duration::from_secs(6));
    // New handshakes use the new CA.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut fresh = match mtls_connect(&addr, &server_pki.ca, &new_cert, &new_key).await {
            Ok(s) => s,
            Err(_) => {
                assert!(Instant::now() < deadline, "the new CA's certificate is still refused");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if health_on(&mut fresh).await == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "the new CA's certificate is still refused");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(refused(&old_cert, &old_key).await, "the old CA's certificate still gets in");
    drop(server);
}
