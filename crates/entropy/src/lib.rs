//! # blindpass-entropy
//!
//! Randomness, injected like the clock: code that needs random bytes takes
//! an [`Entropy`] (`&dyn Entropy` or `Arc<dyn Entropy>`), so tests can make
//! it deterministic and nothing reaches for a global generator.
//! [`SystemEntropy`] is the one place in the workspace that calls
//! `rand::rng()` (clippy's `disallowed-methods` keeps it so), and
//! `<dyn Entropy>::rng` adapts any source to the `CryptoRng` that the protocol
//! crate's functions take.
//!
//! The id helpers ([`uuid_v4`], [`token`]) are the workspace's one way to
//! make identifiers and secrets.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::sync::Mutex;

use rand_core::{TryCryptoRng, TryRng};
use sha2::{Digest, Sha256};

/// A source of cryptographically secure random bytes.
pub trait Entropy: Send + Sync + std::fmt::Debug + 'static {
    /// Fills `dest` with random bytes.
    fn fill(&self, dest: &mut [u8]);
}

impl dyn Entropy {
    /// `N` random bytes.
    pub fn bytes<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        self.fill(&mut out);
        out
    }

    /// This source as a `rand_core` `CryptoRng`, for the protocol crate.
    pub fn rng(&self) -> EntropyRng<'_> {
        EntropyRng(self)
    }
}

/// The operating system's generator (through `rand`'s thread-local CSPRNG,
/// seeded and reseeded from the OS).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemEntropy;

impl Entropy for SystemEntropy {
    #[allow(clippy::disallowed_methods)] // The one sanctioned call.
    fn fill(&self, dest: &mut [u8]) {
        use rand::Rng;
        rand::rng().fill_bytes(dest);
    }
}

/// A deterministic source for tests: SHA-256 of the seed and a counter.
/// Never use it for anything real.
#[derive(Debug)]
pub struct SeededEntropy {
    seed: [u8; 32],
    counter: Mutex<u64>,
}

impl SeededEntropy {
    /// A source that always produces the same stream for `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed: Sha256::digest(seed.to_be_bytes()).into(), counter: Mutex::new(0) }
    }
}

impl Entropy for SeededEntropy {
    fn fill(&self, dest: &mut [u8]) {
        let mut counter = self.counter.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for chunk in dest.chunks_mut(32) {
            let block: [u8; 32] =
                Sha256::new().chain_update(self.seed).chain_update(counter.to_be_bytes()).finalize().into();
            *counter += 1;
            for (d, s) in chunk.iter_mut().zip(block) {
                *d = s;
            }
        }
    }
}

/// An [`Entropy`] as a `rand_core` `CryptoRng` (infallible).
#[derive(Debug)]
pub struct EntropyRng<'a>(&'a dyn Entropy);

impl TryRng for EntropyRng<'_> {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(u32::from_le_bytes(self.0.bytes()))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(u64::from_le_bytes(self.0.bytes()))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill(dst);
        Ok(())
    }
}

impl TryCryptoRng for EntropyRng<'_> {}

/// A random UUID (version 4, RFC 9562 §5.4), lowercase with hyphens.
pub fn uuid_v4(entropy: &dyn Entropy) -> String {
    let mut b: [u8; 16] = entropy.bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    let part = |range: std::ops::Range<usize>| h.get(range).unwrap_or_default();
    format!("{}-{}-{}-{}-{}", part(0..8), part(8..12), part(12..16), part(16..20), part(20..32))
}

/// `prefix` followed by `len` characters drawn uniformly from `[A-Za-z0-9]`
/// (rejection sampling: no modulo bias).
pub fn token(entropy: &dyn Entropy, prefix: &str, len: usize) -> String {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(prefix.len() + len);
    out.push_str(prefix);
    let mut drawn = 0;
    while drawn < len {
        for byte in entropy.bytes::<32>() {
            // 248 = 4 · 62: bytes at or above it would favour the alphabet's head.
            if let Some(&c) = ALPHABET.get(usize::from(byte) % 62).filter(|_| byte < 248 && drawn < len) {
                out.push(char::from(c));
                drawn += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_entropy_repeats_and_differs_by_seed() {
        let (a, b, c) = (SeededEntropy::new(1), SeededEntropy::new(1), SeededEntropy::new(2));
        let (a, b, c): (&dyn Entropy, &dyn Entropy, &dyn Entropy) = (&a, &b, &c);
        assert_eq!(a.bytes::<70>(), b.bytes::<70>());
        assert_ne!(a.bytes::<32>(), c.bytes::<32>());
        assert_ne!(a.bytes::<32>(), a.bytes::<32>(), "the stream moves on");
    }

    #[test]
    fn uuids_have_the_version_and_variant_bits() {
        let e: &dyn Entropy = &SystemEntropy;
        for _ in 0..100 {
            let u = uuid_v4(e);
            assert_eq!(u.len(), 36);
            assert_eq!(u.as_bytes()[14], b'4');
            assert!(matches!(u.as_bytes()[19], b'8' | b'9' | b'a' | b'b'), "{u}");
        }
    }

    #[test]
    fn tokens_use_the_whole_alphabet_and_nothing_else() {
        let e: &dyn Entropy = &SeededEntropy::new(7);
        let t = token(e, "relay_", 6200);
        let body = t.strip_prefix("relay_").unwrap();
        assert_eq!(body.len(), 6200);
        assert!(body.bytes().all(|c| c.is_ascii_alphanumeric()));
        let distinct: std::collections::HashSet<u8> = body.bytes().collect();
        assert_eq!(distinct.len(), 62);
    }

    #[test]
    fn the_rng_adapter_serves_the_protocol_crate() {
        fn wants(rng: &mut impl rand_core::CryptoRng) -> u64 {
            rng.next_u64()
        }
        let e: &dyn Entropy = &SeededEntropy::new(3);
        let f: &dyn Entropy = &SeededEntropy::new(3);
        assert_eq!(wants(&mut e.rng()), wants(&mut f.rng()));
    }
}
