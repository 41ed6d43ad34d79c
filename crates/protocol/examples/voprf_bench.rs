//! Helpers for `bench/wrk.sh voprf`:
//!
//! ```text
//! voprf_bench request TYPE N TOKEN_KEY_B64URL   an issuance body on stdout: a TokenRequest (N = 1)
//!                                              or an AmortizedBatchTokenRequest of N elements
//! voprf_bench primitive TYPE N SECONDS          the raw rate of one thread: BlindEvaluate of N
//!                                              elements with one proof, tokens/s
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::Write;
use std::time::{Duration, Instant};

use blindpass_protocol::b64;
use blindpass_protocol::voprf::wire::{AmortizedTokenRequest, VoprfTokenRequest};
use blindpass_protocol::voprf::{self, PublicKey, SecretKey, Suite};
use blindpass_protocol::wire::TokenChallenge;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let suite = Suite::of_token_type(args[1].parse().unwrap()).expect("token type 1 or 5");
    let n: usize = args[2].parse().unwrap();
    // Benchmark inputs only: a fixed seed is enough.
    let mut rng = StdRng::seed_from_u64(u64::from(std::process::id()));
    let challenge = TokenChallenge::new(suite.token_type(), "bench.example", &[], "").unwrap();
    match args[0].as_str() {
        "request" => {
            let key = PublicKey::from_bytes(suite, &b64::decode(&args[3]).unwrap()).unwrap();
            let (blinded, _) = voprf::begin_issuance(&key, &challenge, n, &mut rng).unwrap();
            let truncated_token_key_id = key.truncated_token_key_id();
            let body = match n {
                1 => VoprfTokenRequest { suite, truncated_token_key_id, blinded_element: blinded[0].clone() }.encode(),
                _ => AmortizedTokenRequest { suite, truncated_token_key_id, blinded_elements: blinded }.encode(),
            };
            std::io::stdout().write_all(&body).unwrap();
        }
        "primitive" => {
            let secs: u64 = args[3].parse().unwrap();
            let key = SecretKey::generate(suite, &mut rng).unwrap();
            let (blinded, _) = voprf::begin_issuance(key.public_key(), &challenge, n, &mut rng).unwrap();
            let (start, mut tokens) = (Instant::now(), 0usize);
            while start.elapsed() < Duration::from_secs(secs) {
                key.evaluate(&blinded, &mut rng).unwrap();
                tokens += n;
            }
            println!("{:.0}", tokens as f64 / start.elapsed().as_secs_f64());
        }
        other => panic!("unknown mode {other}"),
    }
}
