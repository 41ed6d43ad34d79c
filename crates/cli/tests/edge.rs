//! The HTTP server defends itself (issue 11), tried through the real binary
//! on loopback with raw sockets, as an attacker would: a trickled header, a
//! stalled client at shutdown, oversized heads, and 2,000 connections at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(server: &common::Node) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

/// Sends `request` (ignoring a write cut short by the server) and returns
/// the status of the answer, if any came.
async fn raw_status(addr: &str, request: Vec<u8>) -> Option<u16> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&request).await;
        write
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !buf.windows(2).any(|w| w == b"\r\n") && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), read.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    drop(writer);
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace().nth(1).and_then(|s| s.parse().ok())
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_header_trickled_slower_than_the_timeout_is_closed_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        common::Node::spawn(&["--data-dir", dir.path().to_str().unwrap()], &["--header-read-timeout-secs", "2"]).await;
    let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    for i in 0..20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if stream.write_all(format!("X-Trickle-{i}: a\r\n").as_bytes()).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => panic!("served a trickled request: {}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
    }
    assert!(closed, "the connection was never closed");
    let held = started.elapsed();
    assert!(held < Duration::from_secs(5), "held for {held:?}, timeout 2 s");
    // Everyone else is served.
    assert_eq!(raw_status(&addr(&server), b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await, Some(200));
}

#[tokio::test]
async fn sigterm_with_a_stalled_client_exits_within_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::Node::spawn(
        &["--data-dir", dir.path().to_str().unwrap()],
        &["--header-read-timeout-secs", "60", "--shutdown-deadline-secs", "2"],
    )
    .await;
    let mut stalled = TcpStream::connect(addr(&server)).await.unwrap();
    stalled.write_all(b"POST /api/privacy/v1/relays HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(8), "still running 8 s after SIGTERM (deadline 2 s)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    drop(stalled);
}

#[tokio::test]
async fn oversized_heads_get_4xx_never_5xx() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::Node::spawn(&["--data-dir", dir.path().to_str().unwrap()], &[]).await;
    let a = addr(&server);
    let mut huge_header = b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ".to_vec();
    huge_header.extend(std::iter::repeat_n(b'a', 1 << 20));
    huge_header.extend_from_slice(b"\r\n\r\n");
    let long_path = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "p".repeat(100 * 1024)).into_bytes();
    let mut many = b"GET /health HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..10_000 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let mid_path = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "p".repeat(4 * 1024)).into_bytes();
    let mut over_count = b"GET /health HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..150 {
        over_count.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    over_count.extend_from_slice(b"\r\n");
    for (name, request, expected) in [
        ("1 MB header", huge_header, &[431][..]),
        ("100 KB path", long_path, &[414, 431][..]),
        ("10,000 headers", many, &[431][..]),
        ("4 KB path", mid_path, &[414][..]),
        ("150 headers", over_count, &[431][..]),
    ] {
        let status = raw_status(&a, request).await;
        assert!(status.is_some_and(|s| expected.contains(&s)), "{name}: {status:?}, expected one of {expected:?}");
    }
    assert_eq!(raw_status(&a, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_connections_get_only_2xx_429_503_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::Node::spawn(
        &["--data-dir", dir.path().to_str().unwrap()],
        &["--max-connections", "1000", "--max-in-flight", "256", "--public-rate-limit", "0"],
    )
    .await;
    let a = addr(&server);
    let before = rss_kib(server.child.id());
    // Open all 2,000 first, then send on every one at once.
    let mut streams = Vec::with_capacity(2000);
    for _ in 0..2000 {
        streams.push(TcpStream::connect(&a).await.unwrap());
    }
    let body = br#"{"claim-type":"age_over18_verified","sandbox":true}"#;
    let request = [
        format!(
            "POST /api/privacy/v1/relays/challenge HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes(),
        body.to_vec(),
    ]
    .concat();
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            let request = request.clone();
            tokio::spawn(async move {
                let _ = stream.write_all(&request).await;
                let mut buf = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut buf)).await;
                String::from_utf8_lossy(&buf).split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok())
            })
        })
        .collect();
    let mut seen = std::collections::BTreeMap::<Option<u16>, u32>::new();
    for t in tasks {
        *seen.entry(t.await.unwrap()).or_default() += 1;
    }
    let peak = rss_kib(server.child.id());
    eprintln!("2,000 connections: {seen:?}; RSS {before} KiB before, {peak} KiB after");
    assert!(
        seen.keys().all(|s| matches!(s, Some(200..=299 | 429 | 503))),
        "only 2xx/429/503 (and every connection answered): {seen:?}"
    );
    assert!(seen.get(&Some(200)).is_some_and(|n| *n > 0), "{seen:?}");
    assert!(peak < 512 * 1024, "RSS {peak} KiB");
    assert_eq!(
        raw_status(&a, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await,
        Some(200),
        "serves afterwards"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        common::Node::spawn(&["--data-dir", dir.path().to_str().unwrap()], &["--header-read-timeout-secs", "1"]).await;
    let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle keep-alive connection stayed open 10 s");
    assert!(started.elapsed() < Duration::from_secs(4), "closed after {:?}", started.elapsed());
}

/// An HTTP client whose connections come from `local` (any 127/8 address
/// reaches the loopback listener).
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(local.parse::<std::net::IpAddr>().unwrap()).build().unwrap()
}

async fn challenge(http: &reqwest::Client, base: &str, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut request = http
        .post(format!("{base}/api/privacy/v1/relays/challenge"))
        .json(&serde_json::json!({"claim-type": "age_over18_verified", "sandbox": true}));
    if let Some(f) = forwarded_for {
        request = request.header("x-forwarded-for", f);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_flood_from_one_address_is_limited_while_another_address_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::Node::spawn(
        &["--data-dir", dir.path().to_str().unwrap()],
        &["--client-rate-limit", "20", "--trusted-proxies", "127.0.0.4"],
    )
    .await;
    let base = server.base.clone();
    let flooder = client_from("127.0.0.2");
    let mut sent = 0;
    loop {
        let r = challenge(&flooder, &base, None).await;
        sent += 1;
        assert!(r.headers().contains_key("ratelimit-remaining"), "anonymous responses carry RateLimit-*");
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            break;
        }
        assert_eq!(r.status(), 200);
        assert!(sent <= 21, "never limited");
    }
    assert_eq!(sent, 21, "the limit is 20 per minute");
    // Every anonymous endpoint refuses the flooder now...
    let relay = flooder
        .post(format!("{base}/api/privacy/v1/relays"))
        .json(&serde_json::json!({"claim-type": "age_over18_verified", "encryption-key-pem": null, "sandbox": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(relay.status(), 429);
    let directory = flooder.get(format!("{base}/.well-known/private-token-issuer-directory")).send().await.unwrap();
    assert_eq!(directory.status(), 429);
    let claim = flooder
        .post(format!("{base}/api/privacy/v1/relays/relay_x/generate-claim"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(claim.status(), 429);

    // ...while another address is served on the same endpoints.
    let neighbour = client_from("127.0.0.3");
    assert_eq!(challenge(&neighbour, &base, None).await.status(), 200);
    let created = neighbour
        .post(format!("{base}/api/privacy/v1/relays"))
        .json(&serde_json::json!({"claim-type": "age_over18_verified", "encryption-key-pem": null, "sandbox": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let directory = neighbour.get(format!("{base}/.well-known/private-token-issuer-directory")).send().await.unwrap();
    assert_eq!(directory.status(), 200);

    // Through the trusted proxy, the forwarded address is the client: the
    // flooder stays limited, someone else behind the proxy is served.
    let proxy = client_from("127.0.0.4");
    assert_eq!(challenge(&proxy, &base, Some("127.0.0.2")).await.status(), 429);
    assert_eq!(challenge(&proxy, &base, Some("198.51.100.9")).await.status(), 200);
    // A client-written address left of the proxy's own entry is ignored.
    assert_eq!(challenge(&proxy, &base, Some("198.51.100.9, 127.0.0.2")).await.status(), 429);

    // An untrusted peer cannot escape its bucket by writing the header.
    let spoofer = client_from("127.0.0.5");
    let mut limited = false;
    for i in 0..25 {
        if challenge(&spoofer, &base, Some(&format!("203.0.113.{i}"))).await.status() == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "a spoofed X-Forwarded-For escaped the limit");
}

#[tokio::test]
async fn failed_authentications_turn_into_429_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        common::Node::spawn(&["--data-dir", dir.path().to_str().unwrap()], &["--auth-failure-limit", "5"]).await;
    let guesser = client_from("127.0.0.6");
    let guess = |http: &reqwest::Client| {
        http.post(format!("{}/api/v1/privacy-passes", server.base))
            .bearer_auth("persona_sandbox_guess")
            .json(&serde_json::json!({}))
            .send()
    };
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(guess(&guesser).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429]);
    assert_eq!(guess(&client_from("127.0.0.7")).await.unwrap().status(), 401, "another address is not affected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_has_the_api_listeners_timeouts_and_caps() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = common::free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let _server = common::Node::spawn(
        &["--data-dir", dir.path().to_str().unwrap()],
        &["--metrics-listen", &metrics, "--header-read-timeout-secs", "2", "--max-connections-per-client", "8"],
    )
    .await;
    assert_eq!(raw_status(&metrics, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await, Some(200));
    // A trickled head is closed within the header-read timeout.
    let mut stream = TcpStream::connect(&metrics).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 512];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if stream.write_all(b"X-Trickle: a\r\n").await.is_err() {
                return;
            }
            if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(10), stream.read(&mut buf)).await {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok() && started.elapsed() < Duration::from_secs(5), "held {:?}", started.elapsed());
    // One client's connections are capped (8 here): the ninth is refused.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(&metrics).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(raw_status(&metrics, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await, Some(503));
    drop(held);
}
