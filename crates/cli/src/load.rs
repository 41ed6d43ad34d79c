//! `blindpass bench issue` / `bench redeem`: an HTTP load generator that
//! drives a running server with pre-built requests (client crypto is not
//! measured) and reports throughput, latency, errors, server CPU per request
//! and peak RSS, next to `openssl speed rsa2048` measured in the same run.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use blindpass_protocol::keys::IssuerPublicKey;
use blindpass_protocol::{b64, persona};
use clap::Args;
use serde_json::{Value, json};

#[derive(Debug, Args)]
pub(crate) struct LoadArgs {
    /// Server to drive; without it, a fresh `blindpass serve` is started on a
    /// temporary data directory (and its CPU and memory are measured).
    #[arg(long)]
    base_url: Option<String>,
    /// API key (sandbox) for --base-url.
    #[arg(long, env = "BLINDPASS_API_KEY", hide_env_values = true)]
    api_key: Option<crate::config::Secret>,
    /// PID of the --base-url server, to read its CPU time and peak RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Database URL for the server this command starts (default: SQLite in a temp dir).
    #[arg(long)]
    server_database_url: Option<crate::config::Secret>,
    /// Concurrent connections.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Pace requests to this many per second in total (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Use HTTP/2 (prior knowledge) instead of HTTP/1.1 keep-alive.
    #[arg(long)]
    http2: bool,
    /// Skip `openssl speed` (no ratios).
    #[arg(long)]
    no_openssl: bool,
}

/// What is being driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    Issue,
    Redeem,
}

struct Target {
    base: String,
    api_key: String,
    pid: Option<u32>,
    _server: Option<SpawnedServer>,
}

struct SpawnedServer {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn run(workload: Workload, args: &LoadArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.seconds == 0 {
        bail!("--concurrency and --seconds must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(drive(workload, args))?;
    drop(runtime);
    print_report(workload, args, &report)
}

struct Report {
    completed: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    cpu_secs: Option<f64>,
    peak_rss_kib: Option<u64>,
}

async fn drive(workload: Workload, args: &LoadArgs) -> anyhow::Result<Report> {
    let target = target(args).await?;
    let http = client(args.http2, args.concurrency)?;
    let requests = Arc::new(match workload {
        Workload::Issue => issuance_requests(&http, &target, 512).await?,
        Workload::Redeem => redemption_requests(&http, &target, args).await?,
    });
    let cpu_before = target.pid.and_then(cpu_seconds);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let per_worker_interval =
        args.rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(args.concurrency as f64 / r));
    let next_index = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::with_capacity(args.concurrency);
    for worker in 0..args.concurrency {
        let (http, requests, next_index) = (http.clone(), Arc::clone(&requests), Arc::clone(&next_index));
        let concurrency = args.concurrency;
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut completed, mut errors) = (0u64, 0u64);
            // Paced workers are staggered so that requests arrive evenly, not in bursts.
            let offset = per_worker_interval.map_or(Duration::ZERO, |i| i.mul_f64(worker as f64 / concurrency as f64));
            let mut next_start = Instant::now() + offset;
            while Instant::now() < deadline {
                if let Some(interval) = per_worker_interval {
                    tokio::time::sleep_until(next_start.into()).await;
                    next_start += interval;
                }
                let i = next_index.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(request) = requests.get(i % requests.len()) else { break };
                if workload == Workload::Redeem && i >= requests.len() {
                    break; // every token is redeemed once
                }
                let t = Instant::now();
                let ok = request.send(&http).await;
                latencies.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                if ok { completed += 1 } else { errors += 1 }
            }
            (latencies, completed, errors)
        }));
    }
    let mut report = Report {
        completed: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
        cpu_secs: None,
        peak_rss_kib: None,
    };
    for worker in workers {
        let (latencies, completed, errors) = worker.await?;
        report.latencies_us.extend(latencies);
        report.completed += completed;
        report.errors += errors;
    }
    report.elapsed = started.elapsed();
    report.cpu_secs = match (cpu_before, target.pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    report.peak_rss_kib = target.pid.and_then(peak_rss_kib);
    report.latencies_us.sort_unstable();
    Ok(report)
}

/// One pre-built request.
struct PreparedRequest {
    url: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    expect: u16,
}

impl PreparedRequest {
    async fn send(&self, http: &reqwest::Client) -> bool {
        let mut request = http.post(&self.url).body(self.body.clone());
        for (k, v) in &self.headers {
            request = request.header(*k, v);
        }
        match request.send().await {
            Ok(r) => {
                let ok = r.status().as_u16() == self.expect;
                let _ = r.bytes().await;
                ok
            }
            Err(_) => false,
        }
    }
}

fn client(http2: bool, concurrency: usize) -> anyhow::Result<reqwest::Client> {
    let builder = reqwest::Client::builder().pool_max_idle_per_host(concurrency).timeout(Duration::from_secs(30));
    let builder = if http2 { builder.http2_prior_knowledge() } else { builder.http1_only() };
    Ok(builder.build()?)
}

async fn target(args: &LoadArgs) -> anyhow::Result<Target> {
    if let Some(base) = &args.base_url {
        let api_key = args
            .api_key
            .as_ref()
            .map(|k| k.as_str().to_owned())
            .context("--base-url needs --api-key (a sandbox key with privacy_pass.write)")?;
        return Ok(Target {
            base: base.trim_end_matches('/').to_owned(),
            api_key,
            pid: args.server_pid,
            _server: None,
        });
    }
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let store_args: Vec<String> = match &args.server_database_url {
        Some(url) => vec!["--database-url".into(), url.as_str().to_owned()],
        None => vec!["--data-dir".into(), dir.path().display().to_string()],
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(&exe)
        .args(&store_args)
        // Limits no run reaches: the rate-limit path is measured, not skipped.
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--rate-limit", "1000000000"])
        .args(["--client-rate-limit", "1000000000", "--relay-rate-limit", "1000000000"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting blindpass serve")?;
    let pid = child.id();
    let server = SpawnedServer { child, _dir: dir };
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::get(format!("{base}/health")).await.is_ok_and(|r| r.status().is_success()) {
        if Instant::now() > deadline {
            bail!("the server did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = Command::new(&exe).args(&store_args).args(["api-keys", "create", "--env", "sandbox"]).output()?;
    let api_key = String::from_utf8(out.stdout)?.lines().last().context("no API key printed")?.to_owned();
    Ok(Target { base, api_key, pid: Some(pid), _server: Some(server) })
}

async fn challenge(
    http: &reqwest::Client,
    base: &str,
) -> anyhow::Result<(persona::Challenge, IssuerPublicKey, String)> {
    let offer: Value = http
        .post(format!("{base}/api/privacy/v1/relays/challenge"))
        .json(&json!({"claim-type": "bench", "sandbox": true}))
        .send()
        .await?
        .json()
        .await?;
    let challenge = persona::Challenge::decode(field(&offer, "challenge").context("no challenge")?)?;
    let key = IssuerPublicKey::from_spki_der(&b64::decode(field(&offer, "token-key").context("no token-key")?)?)?;
    let key_id = field(&offer, "token-key-id").context("no token-key-id")?.to_owned();
    Ok((challenge, key, key_id))
}

async fn issuance_requests(
    http: &reqwest::Client,
    target: &Target,
    count: usize,
) -> anyhow::Result<Vec<PreparedRequest>> {
    let (challenge, key, key_id) = challenge(http, &target.base).await?;
    let entropy: &dyn blindpass_service::Entropy = &blindpass_service::SystemEntropy;
    let mut rng = entropy.rng();
    (0..count)
        .map(|_| {
            let (blinded, _) = persona::begin_issuance(&key, &key_id, &challenge, &mut rng)?;
            let body = serde_json::to_vec(&json!({"blinded-token": b64::encode_unpadded(&blinded), "key-id": key_id}))?;
            Ok(PreparedRequest {
                url: format!("{}/api/v1/privacy-passes", target.base),
                headers: vec![
                    ("authorization", format!("Bearer {}", target.api_key)),
                    ("content-type", "application/json".into()),
                ],
                body,
                expect: 201,
            })
        })
        .collect()
}

/// Enough fresh, valid tokens for the whole run, issued before it starts.
async fn redemption_requests(
    http: &reqwest::Client,
    target: &Target,
    args: &LoadArgs,
) -> anyhow::Result<Vec<PreparedRequest>> {
    let count = (args.rate.unwrap_or(6000.0) * args.seconds as f64).clamp(100.0, 200_000.0) as usize;
    let (challenge, key, key_id) = challenge(http, &target.base).await?;
    let relay: Value = http
        .post(format!("{}/api/privacy/v1/relays", target.base))
        .json(&json!({"claim-type": "bench", "encryption-key-pem": null, "sandbox": true}))
        .send()
        .await?
        .json()
        .await?;
    let relay_token = field(&relay, "relay-token").context("no relay-token")?.to_owned();
    let relay_secret = field(&relay, "relay-secret").context("no relay-secret")?.to_owned();
    eprintln!("issuing {count} tokens for the redemption run…");
    let mut tokens = Vec::with_capacity(count);
    let entropy: &dyn blindpass_service::Entropy = &blindpass_service::SystemEntropy;
    let mut rng = entropy.rng();
    let states: Vec<_> =
        (0..count).map(|_| persona::begin_issuance(&key, &key_id, &challenge, &mut rng)).collect::<Result<_, _>>()?;
    let (http_ref, key_ref, key_id_ref) = (&http, &key, key_id.as_str());
    for chunk in states.chunks(64) {
        let futures = chunk.iter().map(|(blinded, state)| async move {
            let (key, key_id) = (key_ref, key_id_ref);
            let r: Value = http_ref
                .post(format!("{}/api/v1/privacy-passes", target.base))
                .bearer_auth(&target.api_key)
                .json(&json!({"blinded-token": b64::encode_unpadded(blinded), "key-id": key_id}))
                .send()
                .await?
                .json()
                .await?;
            let blind_sig = b64::decode(field(&r, "blind-sig").context("issuance failed")?)?;
            anyhow::Ok(persona::finalize_issuance(key, state, &blind_sig)?.encode())
        });
        for token in join_all(futures).await {
            tokens.push(token?);
        }
    }
    Ok(tokens
        .into_iter()
        .map(|token| PreparedRequest {
            url: format!("{}/api/privacy/v1/relays/{relay_token}/generate-claim", target.base),
            headers: vec![
                ("persona-relay-secret", relay_secret.clone()),
                ("authorization", format!("PrivateToken token={token}")),
                ("content-type", "application/json".into()),
            ],
            body: b"{}".to_vec(),
            expect: 200,
        })
        .collect())
}

async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futures.collect();
    let mut out = Vec::with_capacity(handles.len());
    // Poll them concurrently on this task.
    let mut pinned: Vec<_> = handles.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(results.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.extend(results.into_iter().flatten());
    out
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted.get(index).copied().unwrap_or(0)) / 1000.0
}

fn print_report(workload: Workload, args: &LoadArgs, r: &Report) -> anyhow::Result<()> {
    let what = match workload {
        Workload::Issue => "issuances",
        Workload::Redeem => "redemptions",
    };
    let rate = r.completed as f64 / r.elapsed.as_secs_f64();
    println!(
        "workload: {what}, {} connections, {}, {:.1} s",
        args.concurrency,
        if args.http2 { "HTTP/2" } else { "HTTP/1.1 keep-alive" },
        r.elapsed.as_secs_f64()
    );
    println!("{:<34} {:>12.1}", format!("{what}/s"), rate);
    println!("{:<34} {:>12}", "errors", r.errors);
    for (name, p) in
        [("latency p50 (ms)", 0.50), ("latency p90 (ms)", 0.90), ("latency p99 (ms)", 0.99), ("latency max (ms)", 1.0)]
    {
        println!("{:<34} {:>12.3}", name, percentile(&r.latencies_us, p));
    }
    let cpu_per_request_us = r.cpu_secs.filter(|_| r.completed > 0).map(|c| c / r.completed as f64 * 1e6);
    if let Some(us) = cpu_per_request_us {
        println!("{:<34} {:>12.1}", "server CPU per request (µs)", us);
    }
    if let Some(kib) = r.peak_rss_kib {
        println!("{:<34} {:>12.1}", "server peak RSS (MiB)", kib as f64 / 1024.0);
    }
    if args.no_openssl || workload == Workload::Redeem {
        return Ok(());
    }
    let single = crate::bench::openssl_speed(3, None)?;
    let multi = crate::bench::openssl_speed(3, Some(2))?;
    println!("{:<34} {:>12.1}", "openssl speed rsa2048 (1 core)", single);
    println!("{:<34} {:>12.1}", "openssl speed -multi 2 rsa2048", multi);
    if let Some(us) = cpu_per_request_us {
        let sign_us = 1e6 / single;
        println!("{:<34} {:>12.3}", "efficiency (openssl sign CPU / ours)", sign_us / us);
    }
    println!("{:<34} {:>12.3}", "throughput / openssl -multi 2", rate / multi);
    println!("{:<34} {:>12.2}", "p99 / one openssl sign", percentile(&r.latencies_us, 0.99) * 1000.0 / (1e6 / single));
    Ok(())
}

/// A string member of a JSON object.
fn field<'a>(value: &'a Value, name: &str) -> Option<&'a str> {
    value.get(name).and_then(Value::as_str)
}
