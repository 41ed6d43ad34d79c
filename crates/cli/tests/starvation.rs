//! One hostile host cannot starve anyone (issue 28), tried through the real
//! binary on loopback as an attacker would: the attacker on 127.0.0.2 (or on
//! a hundred thousand addresses of 127/8), the victim on 127.0.0.3. In every
//! case the victim's `/health`, challenge, authenticated issuance, relay
//! creation and redemption answer 2xx while the attack runs, and the
//! attacker gets only 408, 429 or 503.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blindpass_client::{Client, RetryPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const ATTACKER: &str = "127.0.0.2";

/// One attack at a time: each test loads both cores on purpose, and what it
/// asserts of the victim should not depend on the test beside it.
static ONE_ATTACK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const VICTIM: &str = "127.0.0.3";

fn socket_addr(server: &common::Node) -> SocketAddr {
    server.base.trim_start_matches("http://").parse().unwrap()
}

/// A TCP connection to `to` from the local address `from` (any address of
/// 127/8 reaches the loopback listener).
async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

fn http_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The victim: a client on its own address that never retries, so any
/// refusal shows.
struct Victim {
    base: String,
    http: reqwest::Client,
    client: Client,
}

impl Victim {
    fn new(server: &common::Node, api_key: &str, from: &str) -> Self {
        let http = http_from(from);
        let client = Client::new(&server.base)
            .unwrap()
            .with_http(http.clone())
            .with_api_key(api_key)
            .with_retry(RetryPolicy { max_retries: 0, ..RetryPolicy::default() });
        Self { base: server.base.clone(), http, client }
    }

    /// `/health`, a challenge, an authenticated issuance, a relay and the
    /// relay's first redemption, each answered 2xx.
    async fn is_served(&self) -> Result<Duration, String> {
        let started = Instant::now();
        let health = self.http.get(format!("{}/health", self.base)).send().await.map_err(|e| format!("health: {e}"))?;
        if health.status() != 200 {
            return Err(format!("health: {}", health.status()));
        }
        let offer = self.client.challenge("age_over18_verified", true).await.map_err(|e| format!("challenge: {e}"))?;
        let token = self.client.issue(&offer).await.map_err(|e| format!("issuance: {e}"))?;
        let relay = self
            .client
            .create_relay("age_over18_verified", None, true)
            .await
            .map_err(|e| format!("relay creation: {e}"))?;
        let claim =
            self.client.generate_claim(&relay, &token.encode()).await.map_err(|e| format!("redemption: {e}"))?;
        if !claim.token_consumed {
            return Err("redemption: token not consumed".into());
        }
        Ok(started.elapsed())
    }

    /// [`Victim::is_served`] `rounds` times, `every` apart; panics with the
    /// first refusal.
    async fn is_served_throughout(&self, rounds: u32, every: Duration, during: &str) {
        for round in 0..rounds {
            match self.is_served().await {
                Ok(took) => eprintln!("{during}: victim round {round} served in {took:?}"),
                Err(e) => panic!("{during}: victim refused in round {round}: {e}"),
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// The status of the answer read from `read`, if one comes within `wait`.
async fn status_of(mut read: impl AsyncReadExt + Unpin, wait: Duration) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let deadline = Instant::now() + wait;
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, read.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).split_whitespace().nth(1).and_then(|s| s.parse().ok())
}

fn tally(statuses: impl IntoIterator<Item = Option<u16>>) -> BTreeMap<Option<u16>, u32> {
    let mut seen = BTreeMap::new();
    for s in statuses {
        *seen.entry(s).or_default() += 1;
    }
    seen
}

fn store_of(dir: &tempfile::TempDir) -> Vec<String> {
    vec!["--data-dir".into(), dir.path().to_str().unwrap().into()]
}

async fn start(dir: &tempfile::TempDir, args: &[&str]) -> common::Node {
    let store = store_of(dir);
    let store: Vec<&str> = store.iter().map(String::as_str).collect();
    common::Node::spawn(&store, args).await
}

fn api_key(dir: &tempfile::TempDir, extra: &[&str]) -> String {
    let store = store_of(dir);
    let store: Vec<&str> = store.iter().map(String::as_str).collect();
    let args: Vec<&str> =
        ["api-keys", "create", "--env", "sandbox"].iter().copied().chain(extra.iter().copied()).collect();
    common::cli(&store, &args).lines().last().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_http1_bodies_from_one_host_starve_no_one_else() {
    let _serial = ONE_ATTACK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &[]).await;
    let victim = Victim::new(&server, &api_key(&dir, &[]), VICTIM);
    victim.is_served().await.unwrap();
    let to = socket_addr(&server);
    // 1,100 anonymous challenges, each declaring 60 bytes and sending one
    // byte every 5 s.
    let head = "POST /api/privacy/v1/relays/challenge HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n";
    // Connected one after another (a burst would only overflow the listen
    // backlog), then all held.
    let mut attackers = Vec::new();
    for _ in 0..1100 {
        let Ok(stream) = connect_from(ATTACKER.parse().unwrap(), to).await else {
            attackers.push(tokio::spawn(async { None }));
            continue;
        };
        let (read, mut write) = stream.into_split();
        attackers.push(tokio::spawn(async move {
            let trickle = tokio::spawn(async move {
                if write.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..59 {
                    if write.write_all(b" ").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            });
            let status = status_of(read, Duration::from_secs(40)).await;
            trickle.abort();
            status
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    victim.is_served_throughout(4, Duration::from_secs(2), "1,100 stalled bodies").await;
    let mut statuses = Vec::new();
    for a in attackers {
        statuses.push(a.await.unwrap());
    }
    let seen = tally(statuses);
    eprintln!("attacker: {seen:?}");
    assert!(seen.keys().all(|s| matches!(s, Some(408 | 429 | 503))), "the attacker got only 408/429/503: {seen:?}");
    assert!(seen.contains_key(&Some(408)), "stalled bodies that were admitted time out: {seen:?}");
}

/// An HTTP/2 connection (prior knowledge, cleartext) from `from`.
async fn h2_connect(
    from: IpAddr,
    to: SocketAddr,
) -> Option<(h2::client::SendRequest<bytes::Bytes>, tokio::task::JoinHandle<()>)> {
    let tcp = connect_from(from, to).await.ok()?;
    let (send, connection) =
        tokio::time::timeout(Duration::from_secs(5), h2::client::handshake(tcp)).await.ok()?.ok()?;
    // The connection task answers the server's pings until it closes.
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    // The handshake completes locally; a refused connection shows when the
    // server's 503 (or close) reaches the connection task.
    let send = tokio::time::timeout(Duration::from_secs(2), send.ready()).await.ok()?.ok()?;
    Some((send, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_http2_streams_from_one_host_starve_no_one_else() {
    let _serial = ONE_ATTACK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &[]).await;
    let victim = Victim::new(&server, &api_key(&dir, &[]), VICTIM);
    let to = socket_addr(&server);
    // 9 connections × 128 streams, each stream's body declared 60 bytes and
    // stalled after one.
    let mut responses = Vec::new();
    let mut bodies = Vec::new();
    let mut connections = Vec::new();
    for _ in 0..9 {
        let Some((mut send, task)) = h2_connect(ATTACKER.parse().unwrap(), to).await else { continue };
        connections.push(task);
        for _ in 0..128 {
            let request = http::Request::post("http://x/api/privacy/v1/relays/challenge")
                .header("content-type", "application/json")
                .header("content-length", "60")
                .body(())
                .unwrap();
            let Ok(ready) = tokio::time::timeout(Duration::from_millis(200), send.clone().ready()).await else {
                break; // the server's stream limit: the client must wait
            };
            let Ok(mut ready) = ready else { break };
            let Ok((response, mut body)) = ready.send_request(request, false) else { break };
            let _ = body.send_data(bytes::Bytes::from_static(b"{"), false);
            bodies.push(body);
            responses.push(tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(30), response).await {
                    Ok(Ok(r)) => Some(r.status().as_u16()),
                    _ => None,
                }
            }));
            send = ready;
        }
    }
    eprintln!("attacker opened {} streams on {} connections", responses.len(), connections.len());
    assert!(responses.len() >= 200, "the attack did not get going: {} streams", responses.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    victim.is_served_throughout(4, Duration::from_secs(2), "9 h2c connections × 128 stalled streams").await;
    let mut statuses = Vec::new();
    for r in responses {
        statuses.push(r.await.unwrap());
    }
    drop(bodies);
    let seen = tally(statuses);
    eprintln!("attacker: {seen:?}");
    assert!(
        seen.keys().all(|s| matches!(s, Some(408 | 429 | 503) | None)),
        "the attacker got only 408/429/503 or a reset: {seen:?}"
    );
    assert!(seen.contains_key(&Some(408)) || seen.contains_key(&Some(429)), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_from_one_host_are_capped_and_closed() {
    let _serial = ONE_ATTACK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &["--header-read-timeout-secs", "2"]).await;
    let victim = Victim::new(&server, &api_key(&dir, &[]), VICTIM);
    let to = socket_addr(&server);
    // 4,200 cleartext HTTP/2 connections that only answer pings.
    let mut held = Vec::new();
    let mut refused = 0;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..4200 {
        set.spawn(h2_connect(ATTACKER.parse().unwrap(), to));
        if set.len() >= 128 {
            match set.join_next().await.unwrap().unwrap() {
                Some(c) => held.push(c),
                None => refused += 1,
            }
        }
    }
    while let Some(c) = set.join_next().await {
        match c.unwrap() {
            Some(c) => held.push(c),
            None => refused += 1,
        }
    }
    // Refused connections are closed at once; let their clients notice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open = held.iter().filter(|(_, task)| !task.is_finished()).count();
    eprintln!("4,200 idle h2c connections: {} handshakes ({refused} failed), {open} still open", held.len());
    assert!(open <= 256, "{open} connections of one host are open (share 256)");
    victim.is_served().await.unwrap();
    // Pings or not, idle connections are closed after the idle timeout.
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.iter().any(|(_, task)| !task.is_finished()) {
        assert!(Instant::now() < deadline, "idle HTTP/2 connections still open 10 s after a 2 s idle timeout");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    victim.is_served().await.unwrap();
}

/// `n` distinct addresses of 127/8 (never .0 or .255), none of them the
/// attacker's or the victim's.
fn distinct_addresses(n: usize) -> Vec<IpAddr> {
    (10u8..=250)
        .flat_map(|a| (0u8..=255).map(move |b| (a, b)))
        .flat_map(|(a, b)| (1u8..=254).map(move |c| IpAddr::V4(Ipv4Addr::new(127, a, b, c))))
        .take(n)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_addresses_cannot_fill_the_limiter_for_anyone_else() {
    let _serial = ONE_ATTACK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &[]).await;
    let own_limit = api_key(&dir, &["--rate-limit", "1000"]);
    let plain = api_key(&dir, &[]);
    let to = socket_addr(&server);
    // Both keys have been seen before the flood.
    let with_own = Victim::new(&server, &own_limit, VICTIM);
    let without = Victim::new(&server, &plain, VICTIM);
    with_own.client.issue(&with_own.client.challenge("age_over18_verified", true).await.unwrap()).await.unwrap();
    // At the start of a window, so the whole flood lands in one.
    let into_minute = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 60;
    if into_minute > 5 {
        tokio::time::sleep(Duration::from_secs(60 - into_minute)).await;
    }
    let started = Instant::now();
    let body = br#"{"claim-type":"age_over18_verified","sandbox":true}"#;
    let request: Arc<Vec<u8>> = Arc::new(
        [
            format!(
                "POST /api/privacy/v1/relays/challenge HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes(),
            body.to_vec(),
        ]
        .concat(),
    );
    let mut set = tokio::task::JoinSet::new();
    let mut seen = BTreeMap::<Option<u16>, u32>::new();
    for from in distinct_addresses(101_000) {
        let request = Arc::clone(&request);
        set.spawn(async move {
            let mut stream = connect_from(from, to).await.ok()?;
            stream.write_all(&request).await.ok()?;
            status_of(stream, Duration::from_secs(10)).await
        });
        if set.len() >= 64 {
            *seen.entry(set.join_next().await.unwrap().unwrap()).or_default() += 1;
        }
    }
    while let Some(s) = set.join_next().await {
        *seen.entry(s.unwrap()).or_default() += 1;
    }
    eprintln!("101,000 addresses in {:?}: {seen:?}", started.elapsed());
    assert!(seen.get(&Some(200)).is_some_and(|n| *n > 90_000), "the flood itself was served: {seen:?}");
    // Every protected bucket, and a newcomer, still counts on its own.
    with_own.client.issue(&with_own.client.challenge("age_over18_verified", true).await.unwrap()).await.unwrap();
    without.client.issue(&without.client.challenge("age_over18_verified", true).await.unwrap()).await.unwrap();
    let newcomer = Victim::new(&server, &plain, "127.0.0.4");
    newcomer.is_served().await.unwrap();
    without.is_served().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_refused_batches_are_not_charged_to_its_neighbours() {
    let _serial = ONE_ATTACK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &["--rate-limit", "20"]).await;
    let a = api_key(&dir, &["--rate-limit", "1"]);
    let b = api_key(&dir, &[]);
    let client_a = Victim::new(&server, &a, ATTACKER);
    let victim = Victim::new(&server, &b, VICTIM);
    let relay = victim.client.create_relay("age_over18_verified", None, true).await.unwrap();
    let challenge = victim.client.rfc_challenge(&relay).await.unwrap();
    // A (1 a minute) sends a batch of 19, and retries it: refused by its
    // own limit each time.
    for attempt in 0..3 {
        let e = client_a.client.issue_rfc_batch(&challenge, 19, true).await.unwrap_err();
        assert_eq!(e.status(), Some(429), "attempt {attempt}: {e}");
    }
    // B, in the same environment (20 a minute), is not charged for them.
    let r =
        victim.http.get(format!("{}/.well-known/private-token-issuer-directory", server.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    for round in 0..5 {
        let offer = victim.client.challenge("age_over18_verified", true).await.unwrap();
        victim.client.issue(&offer).await.unwrap_or_else(|e| panic!("B's issuance {round}: {e}"));
    }
    victim.is_served().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_readiness_probes_cost_one_check_a_second_and_never_fail_a_balancer() {
    let _serial = ONE_ATTACK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &[]).await;
    let victim = Victim::new(&server, &api_key(&dir, &[]), VICTIM);
    // Each readiness check reads the keys' metadata from the store (so does
    // the key ring's refresh, every 5 s).
    let checks = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("store_operation_duration_seconds_count{operation=\"issuer_key_metadata\"}"))
            .filter_map(|l| l.rsplit(' ').next())
            .map(|v| v.trim().parse::<f64>().unwrap())
            .sum()
    };
    let metrics = || async { reqwest::get(format!("{}/metrics", server.base)).await.unwrap().text().await.unwrap() };
    let before = checks(&metrics().await);
    let started = Instant::now();
    let url = format!("{}/health/ready", server.base);
    // 512 probers on the attacker's address, each on its own connection.
    let probers: Vec<_> = (0..512)
        .map(|_| {
            let (http, url) = (http_from(ATTACKER), url.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                let until = Instant::now() + Duration::from_secs(5);
                while Instant::now() < until {
                    statuses.push(http.get(&url).send().await.map(|r| r.status().as_u16()).ok());
                }
                statuses
            })
        })
        .collect();
    // The load balancer, on its own address, probes throughout.
    let balancer = {
        let (http, url) = (http_from("127.0.0.5"), url.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                statuses.push(http.get(&url).send().await.map(|r| r.status().as_u16()).ok());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            statuses
        })
    };
    victim.is_served_throughout(2, Duration::from_secs(1), "512 concurrent readiness probes").await;
    let mut statuses = Vec::new();
    for p in probers {
        statuses.extend(p.await.unwrap());
    }
    let balancer = tally(balancer.await.unwrap());
    let elapsed = started.elapsed().as_secs_f64();
    let ran = checks(&metrics().await) - before;
    let seen = tally(statuses);
    eprintln!(
        "{} probes in {elapsed:.1} s: {seen:?}; balancer {balancer:?}; {ran} key reads",
        seen.values().sum::<u32>()
    );
    assert_eq!(balancer.keys().collect::<Vec<_>>(), [&Some(200)], "the balancer always saw a ready node: {balancer:?}");
    // The attacker's own connections past its share are refused (503 or
    // closed); every probe that reached the node passed.
    assert!(seen.keys().all(|s| matches!(s, Some(200 | 503) | None)), "{seen:?}");
    assert!(seen.get(&Some(200)).is_some_and(|n| *n > 1000), "{seen:?}");
    // One check a second, plus the key ring's own refreshes.
    assert!(ran <= elapsed.ceil() + elapsed / 5.0 + 3.0, "{ran} key reads in {elapsed:.1} s");
}

/// A throwaway nginx (Debian's) on `listen`, proxying to `upstream` the way
/// most deployments do: `X-Forwarded-For $proxy_add_x_forwarded_for`, and
/// whatever else the client sent (a `Forwarded` header included) passed
/// through untouched. One process (`master_process off`), so killing it on
/// drop leaves no orphaned worker behind.
struct Nginx {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx(listen: &str, upstream: &str) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let conf = format!(
        "user root;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           upstream blindpass {{ server {upstream}; keepalive 64; }}\n\
           server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://blindpass;\n\
               proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
               proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n    }}\n  }}\n}}\n"
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = std::process::Command::new("nginx")
        .args(["-p", dir.path().to_str().unwrap(), "-c", path.to_str().unwrap(), "-g", "daemon off;"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nginx is installed (Debian nginx-light)");
    Nginx { child, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(blindpass_test_nginx), ignore = "set BLINDPASS_TEST_NGINX=1 (Debian nginx installed) to run")]
async fn forged_forwarded_headers_through_nginx_neither_escape_the_limit_nor_fill_the_limiter() {
    let _serial = ONE_ATTACK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &["--trusted-proxies", "127.0.0.1"]).await;
    let upstream = server.base.trim_start_matches("http://").to_owned();
    let listen = format!("127.0.0.1:{}", common::free_port());
    let _nginx = nginx(&listen, &upstream);
    let proxied = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reqwest::get(format!("{proxied}/health")).await.is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "nginx did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let key = api_key(&dir, &[]);
    // 200,000 challenges from one host, each with a fresh forged Forwarded.
    let started = Instant::now();
    let attacker = http_from(ATTACKER);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..64u32 {
        let (attacker, proxied) = (attacker.clone(), proxied.clone());
        tasks.spawn(async move {
            let mut seen = BTreeMap::<Option<u16>, u32>::new();
            for i in 0..3125u32 {
                let n = worker * 3125 + i;
                let forged = format!("for=10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255);
                let status = attacker
                    .post(format!("{proxied}/api/privacy/v1/relays/challenge"))
                    .header("forwarded", forged)
                    .json(&serde_json::json!({"claim-type": "age_over18_verified", "sandbox": true}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .ok();
                *seen.entry(status).or_default() += 1;
            }
            seen
        });
    }
    let mut seen = BTreeMap::<Option<u16>, u32>::new();
    while let Some(part) = tasks.join_next().await {
        for (status, n) in part.unwrap() {
            *seen.entry(status).or_default() += n;
        }
    }
    eprintln!("200,000 forged Forwarded headers through nginx in {:?}: {seen:?}", started.elapsed());
    // The attacker is one client: 600 a minute (two windows at most while
    // the flood runs), the rest refused.
    assert!(seen.get(&Some(200)).is_some_and(|n| *n <= 1_800), "the forged header escaped the limit: {seen:?}");
    assert!(seen.get(&Some(429)).is_some_and(|n| *n >= 198_000), "{seen:?}");
    // The victim, a newcomer behind the same proxy, is served throughout.
    let victim = Victim {
        base: proxied.clone(),
        http: http_from(VICTIM),
        client: Client::new(&proxied)
            .unwrap()
            .with_http(http_from(VICTIM))
            .with_api_key(&key)
            .with_retry(RetryPolicy { max_retries: 0, ..RetryPolicy::default() }),
    };
    victim.is_served().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_traffic_from_many_hosts_never_takes_what_authenticated_issuance_needs() {
    let _serial = ONE_ATTACK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &["--max-in-flight", "64", "--max-anonymous-in-flight", "32"]).await;
    let victim = Victim::new(&server, &api_key(&dir, &[]), VICTIM);
    let offers = [
        victim.client.challenge("age_over18_verified", true).await.unwrap(),
        victim.client.challenge("age_over18_verified", true).await.unwrap(),
    ];
    let to = socket_addr(&server);
    // 40 hosts, one stalled anonymous body each: no client share is
    // exceeded, but the anonymous share (32) is full.
    let head = "POST /api/privacy/v1/relays/challenge HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n{";
    let mut held = Vec::new();
    for from in distinct_addresses(40) {
        let mut stream = connect_from(from, to).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Another anonymous request is shed...
    let r = victim
        .http
        .post(format!("{}/api/privacy/v1/relays/challenge", server.base))
        .json(&serde_json::json!({"claim-type": "age_over18_verified", "sandbox": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "the anonymous share is full");
    // ...while authenticated issuance has its own room, and probes pass.
    for offer in &offers {
        victim.client.issue(offer).await.unwrap();
    }
    let health = victim.http.get(format!("{}/health/ready", server.base)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    drop(held);
}
