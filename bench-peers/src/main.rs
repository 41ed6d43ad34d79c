//! BlindSign rate of the `blind-rsa-signatures` crate (pure Rust), the peer
//! in `blindpass bench sign --peers`. Prints one line:
//! `blind-rsa-signatures <signs/s>`.

use std::time::{Duration, Instant};

use blind_rsa_signatures::{KeyPair, Options};

fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let options = Options::new(blind_rsa_signatures::Hash::Sha384, false, 48);
    let rng = &mut blind_rsa_signatures::DefaultRng;
    let kp = KeyPair::generate(rng, 2048).expect("key generation");
    let blinded: Vec<_> =
        (0..32u8).map(|i| kp.pk.blind(rng, [i; 98], false, &options).expect("blind").blind_msg).collect();
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < Duration::from_secs(seconds) {
        kp.sk.blind_sign(rng, &blinded[done % blinded.len()], &options).expect("blind_sign");
        done += 1;
    }
    println!("blind-rsa-signatures {:.1}", done as f64 / start.elapsed().as_secs_f64());
}
