//! Token types 1 and 5 (VOPRF): single and amortized TokenRequests,
//! TokenResponses and Tokens, and the issuer's evaluation and verification of
//! whatever decodes. Anything that decodes must re-encode to the same bytes;
//! arbitrary bytes never verify as a token.
#![no_main]

use std::sync::OnceLock;

use blindpass_protocol::voprf::wire::{
    AmortizedTokenRequest, AmortizedTokenResponse, VoprfToken, VoprfTokenRequest, VoprfTokenResponse,
};
use blindpass_protocol::voprf::{SecretKey, Suite};
use libfuzzer_sys::fuzz_target;

/// Fixed keys (derived from fixed seeds) and a fixed-seed RNG for the proof:
/// the fuzzer explores inputs, not randomness.
fn key(suite: Suite) -> &'static SecretKey {
    static KEYS: OnceLock<[SecretKey; 2]> = OnceLock::new();
    let keys = KEYS.get_or_init(|| Suite::ALL.map(|s| SecretKey::derive(s, &[7; 48]).expect("derive")));
    &keys[usize::from(suite == Suite::Ristretto255)]
}

struct Counter(u64);

impl rand_core::TryRng for Counter {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.try_next_u64()? as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        Ok(self.0)
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for b in dst {
            *b = self.try_next_u64()? as u8;
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for Counter {}

fuzz_target!(|data: &[u8]| {
    let mut rng = Counter(1);
    if let Ok(request) = VoprfTokenRequest::decode(data) {
        assert_eq!(request.encode(), data);
        let _ = key(request.suite).evaluate(&[request.blinded_element], &mut rng);
    }
    if let Ok(request) = AmortizedTokenRequest::decode(data, 64) {
        assert_eq!(request.encode(), data);
        let _ = key(request.suite).evaluate(&request.blinded_elements, &mut rng);
    }
    if let Ok(token) = VoprfToken::decode(data) {
        assert_eq!(token.encode(), data);
        assert!(key(token.suite).verify_token(&token).is_err());
    }
    for suite in Suite::ALL {
        if let Ok(response) = VoprfTokenResponse::decode(suite, data) {
            assert_eq!(response.encode(), data);
        }
        if let Ok(response) = AmortizedTokenResponse::decode(suite, 2, data) {
            assert_eq!(response.encode(), data);
        }
    }
});
