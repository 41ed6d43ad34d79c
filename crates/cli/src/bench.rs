//! `blindpass bench`: measures the issuer's BlindSign against
//! `openssl speed rsa2048` on the same machine, in the same run.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use blindpass_protocol::type2;
use blindpass_protocol::type2::blind_rsa::{self, RawSigner};
use blindpass_protocol::type2::keys::IssuerPublicKey;
use blindpass_protocol::wire::TokenChallenge;
use blindpass_rsa::RsaPrivateKey;
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Single-core BlindSign rate (RSA-2048) vs `openssl speed -seconds N rsa2048`.
    Sign(SignArgs),
    /// HTTP load on POST /api/v1/privacy-passes, with server CPU, RSS and openssl ratios.
    Issue(crate::load::LoadArgs),
    /// HTTP load on generate-claim with fresh valid tokens.
    Redeem(crate::load::LoadArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SignArgs {
    /// Seconds to run each measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Skip running `openssl speed` (prints our rate only).
    #[arg(long)]
    no_openssl: bool,
    /// Also measure the pure-Rust `blind-rsa-signatures` crate (builds
    /// `bench-peers/` from this source tree with cargo).
    #[arg(long)]
    peers: bool,
}

pub(crate) fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Sign(args) => sign(&args),
        BenchCommand::Issue(args) => crate::load::run(blindpass_load::Workload::Issue, &args),
        BenchCommand::Redeem(args) => crate::load::run(blindpass_load::Workload::Redeem, &args),
    }
}

fn sign(args: &SignArgs) -> anyhow::Result<()> {
    if args.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let key = RsaPrivateKey::generate_2048().context("generating an RSA-2048 key")?;
    let public = IssuerPublicKey::new(key.public_key().clone()).context("type 2 key")?;
    let requests = blinded_requests(&public, 64)?;

    // Warm up (Montgomery contexts and blinding caches are built lazily).
    for request in requests.iter().take(8) {
        blind_rsa::blind_sign(&key, request).context("warm-up BlindSign")?;
    }
    let ours = measure(Duration::from_secs(args.seconds), |i| {
        let request = requests.get(i % requests.len()).map(Vec::as_slice).unwrap_or_default();
        blind_rsa::blind_sign(&key, request).map(drop)
    })?;

    println!("BlindSign (RSA-2048, blindpass-rsa / aws-lc, 1 thread): {ours:>10.1} signs/s");
    if args.no_openssl {
        return Ok(());
    }
    let openssl = crate::openssl::openssl_speed(args.seconds, None)?;
    println!("openssl speed -seconds {} rsa2048 (1 core):            {openssl:>10.1} signs/s", args.seconds);
    println!("ratio blindpass / openssl:                                {:>10.3}", ours / openssl);
    if args.peers {
        let peer = peer_speed(args.seconds)?;
        println!("blind-rsa-signatures 0.15 BlindSign (1 thread):            {peer:>10.1} signs/s");
        println!("ratio blind-rsa-signatures / openssl:                     {:>10.3}", peer / openssl);
        println!("ratio blindpass / blind-rsa-signatures:                   {:>10.3}", ours / peer);
    }
    Ok(())
}

/// Runs the peer benchmark in `bench-peers/` (outside the workspace).
fn peer_speed(seconds: u64) -> anyhow::Result<f64> {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench-peers/Cargo.toml");
    let output = Command::new("cargo")
        .args(["run", "--quiet", "--release", "--locked", "--manifest-path"])
        .arg(&manifest)
        .args(["--", &seconds.to_string()])
        .output()
        .context("running the bench-peers crate with cargo")?;
    if !output.status.success() {
        bail!("bench-peers failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("unexpected bench-peers output")
}

/// Blinded messages for real token requests, so the signer sees real inputs.
fn blinded_requests(public: &IssuerPublicKey, count: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let challenge = TokenChallenge::new(2, "issuer.example", &[], "origin.example")?;
    let entropy: &dyn blindpass_service::Entropy = &blindpass_service::SystemEntropy;
    let mut rng = entropy.rng();
    (0..count)
        .map(|_| {
            let (request, _) = type2::begin_issuance(public, &challenge, &mut rng).context("blinding")?;
            Ok(request.blinded_msg.to_vec())
        })
        .collect()
}

/// Runs `op` until `duration` has passed and returns operations per second.
fn measure<E: std::error::Error + Send + Sync + 'static>(
    duration: Duration,
    mut op: impl FnMut(usize) -> Result<(), E>,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < duration {
        for _ in 0..16 {
            op(done)?;
            done += 1;
        }
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}
