//! # blindpass-load
//!
//! An HTTP load generator for a running blindpass server. It sets up with
//! the client library (a challenge, a relay, the tokens a redemption run
//! spends), builds every request before the clock starts (client crypto is
//! not measured), then drives them from `concurrency` workers, optionally
//! paced to a total rate, and reports throughput, errors, latency
//! percentiles and, given the server's pid, its CPU time per request and
//! peak RSS (Linux `/proc`).
//!
//! `blindpass bench issue|redeem` is the command-line front end.

#![forbid(unsafe_code)]

mod prepare;
mod process;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use prepare::PreparedRequest;

/// What is being driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `POST /api/v1/privacy-passes`, the same 512 blinded tokens over and over.
    Issue,
    /// `generate-claim`, each token once.
    Redeem,
}

/// How hard to drive.
#[derive(Debug, Clone, Copy)]
pub struct LoadConfig {
    /// Concurrent connections (workers).
    pub concurrency: usize,
    /// Length of the run.
    pub duration: Duration,
    /// Total requests per second, evenly spread; `None`: as fast as possible.
    pub rate: Option<f64>,
    /// HTTP/2 with prior knowledge instead of HTTP/1.1 keep-alive.
    pub http2: bool,
}

/// The server under load.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub base: String,
    /// A sandbox API key with `privacy_pass.write`.
    pub api_key: String,
    /// The server's pid, to read its CPU time and peak RSS.
    pub pid: Option<u32>,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The configuration cannot run (no workers, no time).
    #[error("{0}")]
    Config(&'static str),
    /// Setting up through the client library failed.
    #[error("setting up the run")]
    Setup(#[from] blindpass_client::ClientError),
    /// Building a request failed.
    #[error("preparing requests: {0}")]
    Prepare(String),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// A worker task failed.
    #[error("a worker stopped")]
    Worker(#[from] tokio::task::JoinError),
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Requests answered with the expected status.
    pub completed: u64,
    /// Requests that failed or got another status.
    pub errors: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Every request's latency in microseconds, sorted.
    pub latencies_us: Vec<u32>,
    /// Server CPU seconds (user + system) spent during the run.
    pub cpu_secs: Option<f64>,
    /// The server's peak resident set, KiB.
    pub peak_rss_kib: Option<u64>,
}

impl Report {
    /// Completed requests per second.
    pub fn rate(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// The latency at quantile `p` (0..=1), in milliseconds.
    pub fn latency_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let index = ((self.latencies_us.len() - 1) as f64 * p.clamp(0.0, 1.0)).round() as usize;
        f64::from(self.latencies_us.get(index).copied().unwrap_or(0)) / 1000.0
    }

    /// Server CPU microseconds per completed request.
    pub fn cpu_per_request_us(&self) -> Option<f64> {
        self.cpu_secs.filter(|_| self.completed > 0).map(|c| c / self.completed as f64 * 1e6)
    }
}

/// Prepares the workload's requests, then drives them for the configured
/// time and reports.
pub async fn run(workload: Workload, target: &Target, config: &LoadConfig) -> Result<Report, LoadError> {
    if config.concurrency == 0 || config.duration.is_zero() {
        return Err(LoadError::Config("concurrency and duration must be at least 1"));
    }
    let client = blindpass_client::Client::new(&target.base)?.with_api_key(&target.api_key);
    let requests = match workload {
        Workload::Issue => prepare::issuance(&client, target, 512).await?,
        Workload::Redeem => {
            let count = (config.rate.unwrap_or(6000.0) * config.duration.as_secs_f64()).clamp(100.0, 200_000.0);
            prepare::redemption(&client, target, count as usize).await?
        }
    };
    let http = http_client(config)?;
    let cpu_before = target.pid.and_then(process::cpu_seconds);
    let started = Instant::now();
    let mut report = drive(workload, &http, Arc::new(requests), config, started + config.duration).await?;
    report.elapsed = started.elapsed();
    report.cpu_secs = match (cpu_before, target.pid.and_then(process::cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    report.peak_rss_kib = target.pid.and_then(process::peak_rss_kib);
    report.latencies_us.sort_unstable();
    Ok(report)
}

fn http_client(config: &LoadConfig) -> Result<reqwest::Client, reqwest::Error> {
    let builder =
        reqwest::Client::builder().pool_max_idle_per_host(config.concurrency).timeout(Duration::from_secs(30));
    let builder = if config.http2 { builder.http2_prior_knowledge() } else { builder.http1_only() };
    builder.build()
}

/// The workers: each takes the next request until the deadline (a
/// redemption run stops when every token has been sent once).
async fn drive(
    workload: Workload,
    http: &reqwest::Client,
    requests: Arc<Vec<PreparedRequest>>,
    config: &LoadConfig,
    deadline: Instant,
) -> Result<Report, LoadError> {
    let interval = config.rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(config.concurrency as f64 / r));
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..config.concurrency {
        // Paced workers are staggered so that requests arrive evenly, not in bursts.
        let offset = interval.map_or(Duration::ZERO, |i| i.mul_f64(worker as f64 / config.concurrency as f64));
        let pacing = Pacing { interval, next_start: Instant::now() + offset, deadline };
        let (http, requests, next) = (http.clone(), Arc::clone(&requests), Arc::clone(&next));
        workers.spawn(work(workload, http, requests, next, pacing));
    }
    let mut report = Report::default();
    while let Some(done) = workers.join_next().await {
        let part = done?;
        report.latencies_us.extend(part.latencies_us);
        report.completed += part.completed;
        report.errors += part.errors;
    }
    Ok(report)
}

struct Pacing {
    interval: Option<Duration>,
    next_start: Instant,
    deadline: Instant,
}

async fn work(
    workload: Workload,
    http: reqwest::Client,
    requests: Arc<Vec<PreparedRequest>>,
    next: Arc<AtomicUsize>,
    mut pacing: Pacing,
) -> Report {
    let mut part = Report::default();
    while Instant::now() < pacing.deadline {
        if let Some(interval) = pacing.interval {
            tokio::time::sleep_until(pacing.next_start.into()).await;
            pacing.next_start += interval;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        if workload == Workload::Redeem && i >= requests.len() {
            break; // every token is redeemed once
        }
        let Some(request) = requests.get(i % requests.len().max(1)) else { break };
        let t = Instant::now();
        let ok = request.send(&http).await;
        part.latencies_us.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
        if ok {
            part.completed += 1;
        } else {
            part.errors += 1;
        }
    }
    part
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rates() {
        let report = Report {
            completed: 100,
            elapsed: Duration::from_secs(2),
            latencies_us: (1..=100).map(|i| i * 1000).collect(),
            cpu_secs: Some(0.5),
            ..Report::default()
        };
        assert_eq!(report.rate(), 50.0);
        assert_eq!(report.latency_ms(0.0), 1.0);
        assert_eq!(report.latency_ms(1.0), 100.0);
        assert_eq!(report.latency_ms(0.5), 51.0);
        assert_eq!(report.cpu_per_request_us(), Some(5000.0));
        assert_eq!(Report::default().latency_ms(0.99), 0.0);
    }
}
