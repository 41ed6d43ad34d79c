//! Property tests: round trips through our client and the production signer,
//! and every decoder of untrusted bytes returns an error, never panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::sync::OnceLock;

use blindpass_protocol::batch::{BatchTokenRequest, BatchTokenResponse, Framing, GenericTokenRequest};
use blindpass_protocol::type2::blind_rsa::{self, RawSigner, Variant};
use blindpass_protocol::type2::keys::IssuerPublicKey;
use blindpass_protocol::type2::wire::{Token, TokenRequest, TokenResponse};
use blindpass_protocol::voprf::wire::{
    AmortizedTokenRequest, AmortizedTokenResponse, VoprfToken, VoprfTokenRequest, VoprfTokenResponse,
};
use blindpass_protocol::voprf::{self, SecretKey, Suite};
use blindpass_protocol::wire::TokenChallenge;
use blindpass_protocol::{auth, b64, directory, pem, persona, rsa, time, type2};
use blindpass_rsa::RsaPrivateKey;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn key_2048() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| RsaPrivateKey::generate_2048().unwrap())
}

fn issuer_key() -> IssuerPublicKey {
    IssuerPublicKey::new(key_2048().public_key().clone()).unwrap()
}

fn variant() -> impl Strategy<Value = Variant> {
    prop::sample::select(Variant::ALL.to_vec())
}

fn challenge() -> impl Strategy<Value = TokenChallenge> {
    ("[a-z]{1,20}\\.example", prop::bool::ANY, "[a-z.,]{0,30}", any::<[u8; 32]>()).prop_map(
        |(issuer, with_context, origin, context)| {
            let context: &[u8] = if with_context { &context } else { &[] };
            TokenChallenge::new(2, &issuer, context, &origin).unwrap()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// blind → BlindSign (aws-lc) → finalize (which verifies) → verify, for
    /// every variant and arbitrary messages.
    #[test]
    fn blind_sign_finalize_verify_round_trip(variant in variant(), msg in prop::collection::vec(any::<u8>(), 0..300), seed in any::<u64>()) {
        let signer = key_2048();
        let pk = signer.public_key();
        let mut rng = StdRng::seed_from_u64(seed);
        let prepared = blind_rsa::prepare(variant, &msg, &mut rng);
        let (blinded, secret) = blind_rsa::blind(pk, variant, &prepared, &mut rng).unwrap();
        prop_assert_eq!(blinded.len(), 256);
        let blind_sig = blind_rsa::blind_sign(signer, &blinded).unwrap();
        let sig = blind_rsa::finalize(pk, variant, &prepared, &blind_sig, &secret).unwrap();
        prop_assert!(blind_rsa::verify(pk, variant, &prepared, &sig).is_ok());
        // A different message or salt length never verifies.
        let other = blind_rsa::prepared(&[prepared.as_bytes(), b"x"].concat());
        prop_assert!(blind_rsa::verify(pk, variant, &other, &sig).is_err());
        // The blinded message reveals nothing usable as a signature.
        prop_assert!(blind_rsa::verify(pk, variant, &prepared, &blind_sig).is_err());
    }

    /// A tampered blind signature is caught by finalize, never returned.
    #[test]
    fn finalize_rejects_tampered_blind_signatures(seed in any::<u64>(), byte in 0usize..256, bit in 0u8..8) {
        let signer = key_2048();
        let pk = signer.public_key();
        let mut rng = StdRng::seed_from_u64(seed);
        let prepared = blind_rsa::prepared(b"token input");
        let (blinded, secret) = blind_rsa::blind(pk, type2::VARIANT, &prepared, &mut rng).unwrap();
        let mut blind_sig = blind_rsa::blind_sign(signer, &blinded).unwrap();
        blind_sig[byte] ^= 1 << bit;
        prop_assert!(blind_rsa::finalize(pk, type2::VARIANT, &prepared, &blind_sig, &secret).is_err());
    }

    /// The whole RFC 9578 type-2 flow: request, issue, finalize, verify,
    /// and each wire type survives encode → decode.
    #[test]
    fn type2_issuance_round_trip(challenge in challenge(), seed in any::<u64>()) {
        let key = issuer_key();
        let mut rng = StdRng::seed_from_u64(seed);
        let (request, state) = type2::begin_issuance(&key, &challenge, &mut rng).unwrap();
        let request = TokenRequest::decode(&request.encode()).unwrap();
        let response = type2::issue(key_2048(), &request).unwrap();
        let response = TokenResponse::decode(&response.encode()).unwrap();
        let token = type2::finalize_issuance(&key, &state, &response).unwrap();
        let token = Token::decode(&token.encode()).unwrap();
        prop_assert_eq!(token.challenge_digest, challenge.digest());
        prop_assert!(type2::verify_token(&key, &token).is_ok());
        let header = auth::authorization(&token.encode());
        prop_assert_eq!(auth::parse_authorization(&header).unwrap(), token.encode());
    }

    /// The Persona flow as the Go SDK does it, through the production signer.
    #[test]
    fn persona_issuance_round_trip(seed in any::<u64>(), claim in "[a-z_0-9]{1,30}", now in 0u64..4_000_000_000) {
        let key = issuer_key();
        let secret = persona::ChallengeSecret::new(vec![9u8; 32]).unwrap();
        let challenge = persona::Challenge::issue(&secret, &persona::ChallengeFields {
            issuer_name: "issuer.example/api/v1/privacy-passes",
            origin_info: "/api/privacy/v1/relays",
            expires_at: persona::expiry_for(now, 3600),
            claim_type: &claim,
            environment: "sandbox",
        });
        let challenge = persona::Challenge::decode(&challenge.encode()).unwrap();
        let key_id = key.persona_key_id().to_hex();
        let mut rng = StdRng::seed_from_u64(seed);
        let (blinded, state) = persona::begin_issuance(&key, &key_id, &challenge, &mut rng).unwrap();
        let blind_sig = blind_rsa::blind_sign(key_2048(), &blinded).unwrap();
        let token = persona::finalize_issuance(&key, &state, &blind_sig).unwrap();
        let parsed = persona::Token::decode(&token.encode()).unwrap();
        prop_assert!(parsed.verify_signature(&key).is_ok());
        prop_assert!(parsed.token.challenge.verify(&secret, now).is_ok());
        prop_assert_eq!(parsed.token, token);
    }

    #[test]
    fn token_challenge_encode_decode(challenge in challenge()) {
        prop_assert_eq!(TokenChallenge::decode(&challenge.encode()).unwrap(), challenge);
    }

    #[test]
    fn rfc3339_round_trip(t in 0u64..253_402_300_799) {
        prop_assert_eq!(time::parse_rfc3339(&time::format_rfc3339(t)), Some(t));
    }
}

/// Every decoder of untrusted input, on the same bytes. Each must return,
/// never panic.
fn decode_everything(bytes: &[u8]) {
    let _ = TokenChallenge::decode(bytes);
    let _ = TokenRequest::decode(bytes);
    let _ = TokenResponse::decode(bytes);
    let _ = Token::decode(bytes);
    decode_voprf(bytes);
    for framing in [Framing::Generic, Framing::Legacy] {
        if let Ok(request) = BatchTokenRequest::decode(bytes, framing) {
            assert_eq!(request.encode(framing), bytes, "a decoded batch re-encodes to its bytes");
            let _ = BatchTokenResponse::decode(bytes, framing, &request);
        }
    }
    let _ = rsa::RsaPublicKey::from_spki_der(bytes);
    let _ = rsa::RsaPublicKey::from_pkcs1_der(bytes);
    let _ = IssuerPublicKey::from_spki_der(bytes);
    let _ = RsaPrivateKey::from_pkcs8_der(bytes);
    let _ = directory::IssuerDirectory::from_json(bytes);
    let text = String::from_utf8_lossy(bytes);
    let _ = auth::parse_www_authenticate(&text);
    let _ = auth::parse_authorization(&text);
    let _ = persona::Token::decode(&text);
    let _ = persona::Challenge::decode(&text);
    let _ = rsa::RsaPublicKey::from_pem(&text);
    let _ = RsaPrivateKey::from_pkcs8_pem(&text);
    let _ = pem::decode(&text);
    let _ = b64::decode(&text);
    let _ = time::parse_rfc3339(&text);
}

fn voprf_keys() -> &'static [SecretKey; 2] {
    static KEYS: OnceLock<[SecretKey; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = StdRng::seed_from_u64(5);
        Suite::ALL.map(|suite| SecretKey::generate(suite, &mut rng).unwrap())
    })
}

/// The VOPRF decoders, and the issuer's evaluation and verification of
/// whatever decodes: each returns, never panics, and what decodes
/// re-encodes to its bytes.
fn decode_voprf(bytes: &[u8]) {
    let mut rng = StdRng::seed_from_u64(9);
    if let Ok(request) = VoprfTokenRequest::decode(bytes) {
        assert_eq!(request.encode(), bytes);
        let key = &voprf_keys()[usize::from(request.suite == Suite::Ristretto255)];
        let _ = key.evaluate(&[request.blinded_element], &mut rng);
    }
    if let Ok(request) = AmortizedTokenRequest::decode(bytes, 64) {
        assert_eq!(request.encode(), bytes);
        let key = &voprf_keys()[usize::from(request.suite == Suite::Ristretto255)];
        let _ = key.evaluate(&request.blinded_elements, &mut rng);
    }
    if let Ok(token) = VoprfToken::decode(bytes) {
        assert_eq!(token.encode(), bytes);
        for key in voprf_keys() {
            assert!(key.verify_token(&token).is_err(), "arbitrary bytes never verify");
        }
    }
    for suite in Suite::ALL {
        let _ = VoprfTokenResponse::decode(suite, bytes);
        for count in [1, 3] {
            let _ = AmortizedTokenResponse::decode(suite, count, bytes);
        }
        let _ = voprf::PublicKey::from_bytes(suite, bytes);
        let _ = SecretKey::from_bytes(suite, bytes);
    }
}

/// Valid encodings to mutate, so the decoders' deeper branches are reached.
fn seeds() -> Vec<Vec<u8>> {
    let key = issuer_key();
    let challenge = TokenChallenge::new(2, "issuer.example", &[7; 32], "a.example,b.example").unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let (request, state) = type2::begin_issuance(&key, &challenge, &mut rng).unwrap();
    let response = type2::issue(key_2048(), &request).unwrap();
    let token = type2::finalize_issuance(&key, &state, &response).unwrap();
    let mut seeds = vec![
        challenge.encode(),
        request.encode(),
        response.encode(),
        token.encode(),
        key.rfc9578_spki().to_vec(),
        key.rsa_encryption_spki().to_vec(),
        key_2048().to_pkcs8_der().unwrap().to_vec(),
        auth::www_authenticate(&challenge, Some(key.rfc9578_spki()), Some(10)).into_bytes(),
        auth::authorization(&token.encode()).into_bytes(),
        directory::IssuerDirectory {
            issuer_request_uri: "/token-request".into(),
            token_keys: vec![directory::DirectoryKey::type2(&key, Some(1))],
        }
        .to_json(),
        batch_of(&request).encode(Framing::Generic),
        batch_of(&request).encode(Framing::Legacy),
    ];
    for key in voprf_keys() {
        let (blinded, state) = voprf::begin_issuance(key.public_key(), &challenge, 3, &mut rng).unwrap();
        let evaluation = key.evaluate(&blinded, &mut rng).unwrap();
        let tokens = voprf::finalize_issuance(&state, &evaluation.evaluated_elements, &evaluation.proof).unwrap();
        let suite = key.suite();
        let truncated_token_key_id = key.public_key().truncated_token_key_id();
        seeds.extend([
            VoprfTokenRequest { suite, truncated_token_key_id, blinded_element: blinded[0].clone() }.encode(),
            AmortizedTokenRequest { suite, truncated_token_key_id, blinded_elements: blinded }.encode(),
            AmortizedTokenResponse { evaluated_elements: evaluation.evaluated_elements, proof: evaluation.proof }
                .encode(),
            tokens[0].encode(),
            key.public_key().as_bytes().to_vec(),
        ]);
    }
    seeds
}

fn batch_of(request: &TokenRequest) -> BatchTokenRequest {
    let item = |token_type, ne| GenericTokenRequest { token_type, truncated_token_key_id: 1, blinded_msg: vec![2; ne] };
    let type2 = GenericTokenRequest {
        token_type: 2,
        truncated_token_key_id: request.truncated_token_key_id,
        blinded_msg: request.blinded_msg.to_vec(),
    };
    BatchTokenRequest { items: vec![type2, item(1, 49), item(5, 32)] }
}

fn voprf_challenge(suite: Suite) -> impl Strategy<Value = TokenChallenge> {
    challenge().prop_map(move |c| TokenChallenge { token_type: suite.token_type(), ..c })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// begin → evaluate (one batched proof) → finalize (which verifies the
    /// proof) → verify with the private key, for both suites and batches of
    /// 1 to 8; another key's proof, a swapped element and a tampered token
    /// are refused.
    #[test]
    fn voprf_issuance_round_trip(
        (suite, challenge) in prop::sample::select(Suite::ALL.to_vec()).prop_flat_map(|s| (Just(s), voprf_challenge(s))),
        count in 1usize..9,
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let key = SecretKey::generate(suite, &mut rng).unwrap();
        let other = SecretKey::generate(suite, &mut rng).unwrap();
        let (blinded, state) = voprf::begin_issuance(key.public_key(), &challenge, count, &mut rng).unwrap();
        let evaluation = key.evaluate(&blinded, &mut rng).unwrap();
        let tokens = voprf::finalize_issuance(&state, &evaluation.evaluated_elements, &evaluation.proof).unwrap();
        prop_assert_eq!(tokens.len(), count);
        for token in &tokens {
            let decoded = VoprfToken::decode(&token.encode()).unwrap();
            prop_assert!(key.verify_token(&decoded).is_ok());
            prop_assert!(other.verify_token(&decoded).is_err());
            let mut tampered = decoded.clone();
            tampered.challenge_digest[3] ^= 1;
            prop_assert!(key.verify_token(&tampered).is_err());
        }
        let forged = other.evaluate(&blinded, &mut rng).unwrap();
        prop_assert_eq!(
            voprf::finalize_issuance(&state, &forged.evaluated_elements, &forged.proof).unwrap_err(),
            voprf::VoprfError::Proof
        );
        if count > 1 {
            let mut swapped = evaluation.evaluated_elements.clone();
            swapped.swap(0, 1);
            prop_assert!(voprf::finalize_issuance(&state, &swapped, &evaluation.proof).is_err());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..700)) {
        decode_everything(&bytes);
    }

    #[test]
    fn decoders_never_panic_on_mutated_valid_inputs(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        let seeds = SEEDS.get_or_init(seeds);
        let mut bytes = seeds[which.index(seeds.len())].clone();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        decode_everything(&bytes);
    }
}

#[test]
fn blind_sign_refuses_out_of_range_and_wrong_length() {
    use blind_rsa::BlindSignError;
    let signer = key_2048();
    let n = signer.public_key().n().to_vec();
    assert_eq!(blind_rsa::blind_sign(signer, &n), Err(BlindSignError::OutOfRange), "m = n");
    assert_eq!(blind_rsa::blind_sign(signer, &[0xff; 256]), Err(BlindSignError::OutOfRange), "m > n");
    let mut n_minus_1 = n.clone();
    n_minus_1[255] -= 1;
    assert_eq!(blind_rsa::blind_sign(signer, &n_minus_1), Err(BlindSignError::OutOfRange), "m = n - 1");
    assert_eq!(blind_rsa::blind_sign(signer, &[0; 256]), Err(BlindSignError::OutOfRange), "m = 0");
    assert_eq!(
        blind_rsa::blind_sign(signer, &[1; 255]),
        Err(BlindSignError::WrongLength { expected: 256, found: 255 })
    );
    let mut ok = vec![0u8; 256];
    ok[255] = 2;
    assert!(blind_rsa::blind_sign(signer, &ok).is_ok(), "m = 2 is a valid representative");
}

#[test]
fn pkcs8_round_trip_preserves_the_key() {
    let key = key_2048();
    let der = key.to_pkcs8_der().unwrap();
    let again = RsaPrivateKey::from_pkcs8_der(&der).unwrap();
    assert_eq!(again.public_key(), key.public_key());
    assert_eq!(&*again.to_pkcs8_der().unwrap(), &*der);
    let pem = key.to_pkcs8_pem().unwrap();
    assert_eq!(RsaPrivateKey::from_pkcs8_pem(&pem).unwrap().public_key(), key.public_key());
    // Secrets never reach Debug output.
    let debug = format!("{key:?}");
    assert!(debug.contains("<redacted>"));
    let d_hex = hex::encode(&der[..]);
    assert!(!debug.contains(&d_hex[d_hex.len() - 64..]));
}

#[test]
fn key_ids_are_sha256_of_each_encoding() {
    use sha2::{Digest, Sha256};
    let key = issuer_key();
    assert_eq!(key.rfc9578_spki().len(), 342);
    assert_eq!(key.rsa_encryption_spki().len(), 294);
    assert_eq!(key.token_key_id().0, <[u8; 32]>::from(Sha256::digest(key.rfc9578_spki())));
    assert_eq!(key.persona_key_id().0, <[u8; 32]>::from(Sha256::digest(key.rsa_encryption_spki())));
    assert_eq!(key.truncated_token_key_id(), key.token_key_id().0[31]);
    assert!(key.answers_to(&key.token_key_id()) && key.answers_to(&key.persona_key_id()));
    // The RFC 9578 §6.5 prefix, byte for byte (standards.md §1).
    let prefix = hex::decode("30820152303d06092a864886f70d01010a3030a00d300b0609608648016503040202a11a301806092a864886f70d010108300b0609608648016503040202a2030201300382010f003082010a0282010100").unwrap();
    assert_eq!(&key.rfc9578_spki()[..prefix.len()], &prefix[..]);
    assert_eq!(&key.rfc9578_spki()[prefix.len() + 256..], &[0x02, 0x03, 0x01, 0x00, 0x01]);
}

/// Pins Persona's `token_input` bytes with the Go SDK's own test constants
/// (relay-sdk-go `crypto_test.go`); the expected value was computed with
/// Python's hashlib, independently of this code.
#[test]
fn persona_token_input_matches_go_sdk() {
    let nonce = "a".repeat(64);
    let mac = "b".repeat(64);
    let key_id = "c".repeat(65);
    let expected = "0002ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eba0fab1377f49a759b57f63318262ebe89fabfc990e8e93ceac2984561482b9d4b30855e510446ac34706c5acafeedefd5122fe9446b3f812db11e1ac3b4d0cf2";
    assert_eq!(hex::encode(persona::token_input(&nonce, &mac, &key_id)), expected);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// RSA-OAEP-SHA256 encryption decrypts (RSADP through the production
    /// key, then EME-OAEP decoding) to the message; too-long messages are refused.
    #[test]
    fn oaep_round_trip(msg in prop::collection::vec(any::<u8>(), 0..=190), seed in any::<u64>()) {
        use blindpass_protocol::oaep;
        let key = key_2048();
        let mut rng = StdRng::seed_from_u64(seed);
        let ciphertext = oaep::encrypt(key.public_key(), &msg, &mut rng).unwrap();
        prop_assert_eq!(ciphertext.len(), 256);
        let em = key.rsasp1(&ciphertext).unwrap();
        prop_assert_eq!(oaep::decode(&em).unwrap(), msg);
    }
}

#[test]
fn oaep_refuses_messages_over_the_limit() {
    use blindpass_protocol::oaep;
    let pk = key_2048().public_key();
    assert_eq!(oaep::max_message_len(pk), 190);
    assert_eq!(
        oaep::encrypt(pk, &[0; 191], &mut StdRng::seed_from_u64(1)),
        Err(oaep::OaepError::MessageTooLong { max: 190 })
    );
}

#[test]
fn voprf_evaluation_refuses_elements_that_are_not_valid_points() {
    let mut rng = StdRng::seed_from_u64(3);
    for key in voprf_keys() {
        let len = key.suite().element_len();
        // The identity: all zeros in ristretto255's encoding; SEC1 has no
        // 49-byte encoding of it.
        let identity = vec![0u8; len];
        assert!(voprf::PublicKey::from_bytes(key.suite(), &identity).is_err(), "identity as a public key");
        assert_eq!(key.evaluate(&[identity], &mut rng), Err(voprf::VoprfError::InvalidElement), "identity");
        for bad in [vec![0xff; len], vec![0x02; len]] {
            if voprf::PublicKey::from_bytes(key.suite(), &bad).is_ok() {
                continue; // a valid point by chance (0x02…: possible for P-384)
            }
            assert_eq!(key.evaluate(&[bad], &mut rng), Err(voprf::VoprfError::InvalidElement), "{:?}", key.suite());
        }
        assert_eq!(key.evaluate(&[], &mut rng), Err(voprf::VoprfError::Batch));
    }
}

#[test]
fn voprf_keys_round_trip_through_their_scalar() {
    for key in voprf_keys() {
        let again = SecretKey::from_bytes(key.suite(), &key.to_bytes()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        assert!(SecretKey::from_bytes(key.suite(), &vec![0; key.suite().scalar_len()]).is_err(), "zero scalar");
        assert!(format!("{key:?}").len() < 200 && !format!("{key:?}").contains(&hex::encode(&key.to_bytes()[..])));
    }
}
