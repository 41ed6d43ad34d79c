//! `blindpass bench issue` / `bench redeem`: the command-line front end of
//! `blindpass-load`. It starts a server to measure (or takes `--base-url`),
//! runs the load, and prints the report next to `openssl speed rsa2048`
//! measured in the same run.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use blindpass_load::{LoadConfig, Report, Target, Workload};
use clap::Args;

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

/// A server this command started; killed on drop.
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
    let config = LoadConfig {
        concurrency: args.concurrency,
        duration: Duration::from_secs(args.seconds),
        rate: args.rate,
        http2: args.http2,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(async {
        let (target, _server) = target(args).await?;
        anyhow::Ok(blindpass_load::run(workload, &target, &config).await?)
    })?;
    drop(runtime);
    print_report(workload, args, &report)
}

/// The server to drive: `--base-url`, or a fresh `blindpass serve` on a
/// temporary data directory (or `--server-database-url`).
async fn target(args: &LoadArgs) -> anyhow::Result<(Target, Option<SpawnedServer>)> {
    if let Some(base) = &args.base_url {
        let api_key = args
            .api_key
            .as_ref()
            .map(|k| k.as_str().to_owned())
            .context("--base-url needs --api-key (a sandbox key with privacy_pass.write)")?;
        let target = Target { base: base.trim_end_matches('/').to_owned(), api_key, pid: args.server_pid };
        return Ok((target, None));
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
    Ok((Target { base, api_key, pid: Some(pid) }, Some(server)))
}

fn print_report(workload: Workload, args: &LoadArgs, r: &Report) -> anyhow::Result<()> {
    let what = match workload {
        Workload::Issue => "issuances",
        Workload::Redeem => "redemptions",
    };
    println!(
        "workload: {what}, {} connections, {}, {:.1} s",
        args.concurrency,
        if args.http2 { "HTTP/2" } else { "HTTP/1.1 keep-alive" },
        r.elapsed.as_secs_f64()
    );
    println!("{:<34} {:>12.1}", format!("{what}/s"), r.rate());
    println!("{:<34} {:>12}", "errors", r.errors);
    for (name, p) in
        [("latency p50 (ms)", 0.50), ("latency p90 (ms)", 0.90), ("latency p99 (ms)", 0.99), ("latency max (ms)", 1.0)]
    {
        println!("{:<34} {:>12.3}", name, r.latency_ms(p));
    }
    if let Some(us) = r.cpu_per_request_us() {
        println!("{:<34} {:>12.1}", "server CPU per request (µs)", us);
    }
    if let Some(kib) = r.peak_rss_kib {
        println!("{:<34} {:>12.1}", "server peak RSS (MiB)", kib as f64 / 1024.0);
    }
    if args.no_openssl || workload == Workload::Redeem {
        return Ok(());
    }
    let single = crate::openssl::openssl_speed(3, None)?;
    let multi = crate::openssl::openssl_speed(3, Some(2))?;
    println!("{:<34} {:>12.1}", "openssl speed rsa2048 (1 core)", single);
    println!("{:<34} {:>12.1}", "openssl speed -multi 2 rsa2048", multi);
    if let Some(us) = r.cpu_per_request_us() {
        let sign_us = 1e6 / single;
        println!("{:<34} {:>12.3}", "efficiency (openssl sign CPU / ours)", sign_us / us);
    }
    println!("{:<34} {:>12.3}", "throughput / openssl -multi 2", r.rate() / multi);
    println!("{:<34} {:>12.2}", "p99 / one openssl sign", r.latency_ms(0.99) * 1000.0 / (1e6 / single));
    Ok(())
}
