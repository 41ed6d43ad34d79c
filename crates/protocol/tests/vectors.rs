//! Every official vector in `vectors/`, run through one evaluator per family.
//!
//! Each test asserts how many cases it ran, so a vector silently skipped is a
//! failure; run with `--nocapture` to see the counts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use blindpass_protocol::auth;
use blindpass_protocol::batch::{BatchTokenRequest, BatchTokenResponse, Framing};
use blindpass_protocol::rsa::RsaPublicKey;
use blindpass_protocol::type2;
use blindpass_protocol::type2::blind_rsa::{self, Variant};
use blindpass_protocol::type2::keys::IssuerPublicKey;
use blindpass_protocol::type2::wire::{Token, TokenRequest, TokenResponse};
use blindpass_protocol::voprf::wire::{
    AmortizedTokenRequest, AmortizedTokenResponse, VoprfToken, VoprfTokenRequest, VoprfTokenResponse,
};
use blindpass_protocol::voprf::{self, SecretKey, Suite};
use blindpass_protocol::wire::{self, TokenChallenge, WireError};
use blindpass_rsa::RsaPrivateKey;
use common::{ReplayRng, hex, vector_file};
use crypto_bigint::{BoxedUint, Odd};
use serde_json::Value;

/// `r = inv^-1 mod n` (the RFC 9474 vectors give the inverse).
fn invert_mod(inv: &[u8], n: &[u8]) -> Vec<u8> {
    let bits = (n.len() as u32 * 8).div_ceil(64) * 64;
    let n_odd = Odd::new(BoxedUint::from_be_slice(n, bits).unwrap()).into_option().unwrap();
    let inv = BoxedUint::from_be_slice(inv, bits).unwrap();
    let r = inv.invert_odd_mod(&n_odd).into_option().unwrap();
    let bytes = r.to_be_bytes();
    bytes[bytes.len() - n.len()..].to_vec()
}

fn left_pad(bytes: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len - bytes.len()];
    out.extend_from_slice(bytes);
    out
}

/// The RFC 9474 evaluator: Prepare, EMSA-PSS encoding, Blind, BlindSign (the
/// production aws-lc signer), Finalize and Verify, compared byte for byte.
fn check_rfc9474(case: &Value) {
    let name = case["name"].as_str().unwrap();
    let variant = Variant::from_name(name).unwrap_or_else(|| panic!("unknown variant {name}"));
    let n = hex(&case["n"]);
    let signer =
        RsaPrivateKey::from_components(&n, &hex(&case["e"]), &hex(&case["d"]), &hex(&case["p"]), &hex(&case["q"]))
            .unwrap_or_else(|e| panic!("{name}: key: {e}"));
    let pk = blind_rsa::RawSigner::public_key(&signer).clone();
    let k = pk.modulus_len();

    // Prepare: the random prefix comes from the RNG.
    let msg = hex(&case["msg"]);
    let prefix = hex(&case["msg_prefix"]);
    let mut rng = ReplayRng::new(&[&prefix]);
    let prepared = blind_rsa::prepare(variant, &msg, &mut rng);
    rng.assert_drained();
    let expected_prepared = case.get("input_msg").or_else(|| case.get("prepared_msg")).map(hex).unwrap();
    assert_eq!(prepared.as_bytes(), &expected_prepared[..], "{name}: prepared message");

    let salt = hex(&case["salt"]);
    assert_eq!(salt.len(), variant.salt_len(), "{name}: salt length");
    if let Some(encoded) = case.get("encoded_msg") {
        let em = blind_rsa::emsa_pss_encode(prepared.as_bytes(), pk.modulus_bits() - 1, &salt).unwrap();
        assert_eq!(em, hex(encoded), "{name}: encoded_msg");
    }

    // Blind, replaying salt then r.
    let inv = left_pad(&hex(&case["inv"]), k);
    let r = invert_mod(&inv, &n);
    let mut rng = ReplayRng::new(&[&salt, &r]);
    let (blinded, secret) = blind_rsa::blind(&pk, variant, &prepared, &mut rng).unwrap();
    rng.assert_drained();
    assert_eq!(blinded, hex(&case["blinded_msg"]), "{name}: blinded_msg");
    assert_eq!(secret.inverse_bytes(), &inv[..], "{name}: inv");

    let blind_sig = blind_rsa::blind_sign(&signer, &blinded).unwrap();
    assert_eq!(blind_sig, hex(&case["blind_sig"]), "{name}: blind_sig");

    let sig = blind_rsa::finalize(&pk, variant, &prepared, &blind_sig, &secret).unwrap();
    assert_eq!(sig, hex(&case["sig"]), "{name}: sig");
    blind_rsa::verify(&pk, variant, &prepared, &sig).unwrap();

    let mut bad = sig.clone();
    bad[k / 2] ^= 1;
    assert!(blind_rsa::verify(&pk, variant, &prepared, &bad).is_err(), "{name}: flipped bit verifies");
}

#[test]
fn rfc9474_blind_rsa_all_variants() {
    let mut ran = 0;
    for case in vector_file("rfc9474_blind_rsa_vectors.json").as_array().unwrap() {
        check_rfc9474(case);
        ran += 1;
    }
    for case in vector_file("rfc9474_appendixA_transcribed.json")["vectors"].as_array().unwrap() {
        check_rfc9474(case);
        ran += 1;
    }
    println!("RFC 9474: {ran} cases passed (4 variants x 2 files)");
    assert_eq!(ran, 8);
}

/// The RFC 9578 type-2 evaluator: key encodings and ids, TokenRequest,
/// TokenResponse (signed by the production signer) and Token.
fn check_type2(file: &str, index: usize, case: &Value, signer_for: SignerFor<'_>) {
    let ctx = format!("{file}[{index}]");
    let (request_bytes, response_bytes) = (hex(&case["token_request"]), hex(&case["token_response"]));
    check_type2_item(&ctx, case, &request_bytes, &response_bytes, signer_for);
}

/// Makes the signer a type-2 case's issuer uses from its key (PKCS#8 PEM):
/// the production aws-lc key, or the key imported into a PKCS#11 token.
type SignerFor<'a> = &'a dyn Fn(&str) -> Box<dyn blind_rsa::RawSigner>;

fn aws_lc(pem: &str) -> Box<dyn blind_rsa::RawSigner> {
    Box::new(RsaPrivateKey::from_pkcs8_pem(pem).unwrap_or_else(|e| panic!("skS: {e}")))
}

/// One type-2 issuance whose TokenRequest and TokenResponse are given as
/// bytes (a single issuance's, or one item of a batch).
fn check_type2_item(ctx: &str, case: &Value, request_bytes: &[u8], response_bytes: &[u8], signer_for: SignerFor<'_>) {
    let field = |go: &str, rs: &str| case.get(go).or_else(|| case.get(rs)).unwrap_or_else(|| panic!("{ctx}: {go}"));
    let pem = String::from_utf8(hex(field("skS", "sk_s"))).unwrap();
    let signer = signer_for(&pem);
    let pk_s = hex(field("pkS", "pk_s"));
    let key = IssuerPublicKey::from_rfc9578_spki(&pk_s).unwrap();
    assert_eq!(key.rfc9578_spki(), &pk_s[..], "{ctx}: SPKI re-encoding");
    assert_eq!(key.rsa(), signer.public_key(), "{ctx}: skS/pkS mismatch");
    // Both encodings parse to the same key and give the documented ids.
    assert_eq!(IssuerPublicKey::from_spki_der(key.rsa_encryption_spki()).unwrap(), key);
    assert_eq!(key.token_key_id(), blindpass_protocol::keys::TokenKeyId::of(&pk_s));

    let challenge_bytes = hex(&case["token_challenge"]);
    let challenge = TokenChallenge::decode(&challenge_bytes).unwrap();
    assert_eq!(challenge.encode(), challenge_bytes, "{ctx}: challenge re-encoding");

    let (nonce, salt, blind) = (hex(&case["nonce"]), hex(&case["salt"]), hex(&case["blind"]));
    let mut rng = ReplayRng::new(&[&nonce, &salt, &left_pad(&blind, 256)]);
    let (request, state) = type2::begin_issuance(&key, &challenge, &mut rng).unwrap();
    rng.assert_drained();
    assert_eq!(request.encode(), request_bytes, "{ctx}: token_request");
    assert_eq!(request.truncated_token_key_id, key.truncated_token_key_id());

    let decoded = TokenRequest::decode(request_bytes).unwrap();
    let response = type2::issue(&*signer, &decoded).unwrap();
    assert_eq!(response.encode(), response_bytes, "{ctx}: token_response");

    let token = type2::finalize_issuance(&key, &state, &TokenResponse::decode(response_bytes).unwrap()).unwrap();
    let token_bytes = hex(&case["token"]);
    assert_eq!(token.encode(), token_bytes, "{ctx}: token");
    let parsed = Token::decode(&token_bytes).unwrap();
    assert_eq!(parsed.challenge_digest, challenge.digest());
    type2::verify_token(&key, &parsed).unwrap();
}

/// The generic batch evaluator: the batch request and response decode and
/// re-encode byte for byte, each item has its case's token type, and every
/// type-2 item runs through the type-2 evaluator (blinded, signed by the
/// production signer, finalized to the case's token). Returns the number of
/// type-2 items checked; every VOPRF item runs through the VOPRF evaluator.
fn check_generic_batch(ctx: &str, case: &Value, framing: Framing) -> (usize, usize) {
    let (request_bytes, response_bytes) = (hex(&case["token_request"]), hex(&case["token_response"]));
    let request = BatchTokenRequest::decode(&request_bytes, framing).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert_eq!(request.encode(framing), request_bytes, "{ctx}: request re-encoding");
    let response = BatchTokenResponse::decode(&response_bytes, framing, &request).unwrap();
    assert_eq!(response.encode(framing), response_bytes, "{ctx}: response re-encoding");
    let issuance = case["issuance"].as_array().unwrap();
    assert_eq!((request.items.len(), response.items.len()), (issuance.len(), issuance.len()), "{ctx}: items");
    let (mut type2_items, mut voprf_items) = (0, 0);
    for (i, (item, (asked, answer))) in issuance.iter().zip(request.items.iter().zip(&response.items)).enumerate() {
        let ctx = format!("{ctx} item {i}");
        let declared = item.get("type").or_else(|| item.get("token_type")).and_then(Value::as_str).unwrap();
        let token_type = u16::from_str_radix(declared, 16).unwrap();
        let answer = answer.as_ref().unwrap_or_else(|| panic!("{ctx}: not issued"));
        assert_eq!((asked.token_type, answer.token_type), (token_type, token_type), "{ctx}: token type");
        if token_type == wire::TOKEN_TYPE_BLIND_RSA {
            let mut single = asked.token_type.to_be_bytes().to_vec();
            single.push(asked.truncated_token_key_id);
            single.extend_from_slice(&asked.blinded_msg);
            check_type2_item(&ctx, item, &single, &answer.body, &aws_lc);
            type2_items += 1;
        } else if let Some(suite) = Suite::of_token_type(token_type) {
            let request = VoprfTokenRequest {
                suite,
                truncated_token_key_id: asked.truncated_token_key_id,
                blinded_element: asked.blinded_msg.clone(),
            };
            let response = VoprfTokenResponse::decode(suite, &answer.body).unwrap();
            let tokens = [item["token"].clone()];
            check_voprf_issuance(&ctx, suite, item, &VoprfIssuance::Single(request, response), &tokens);
            voprf_items += 1;
        }
    }
    (type2_items, voprf_items)
}

#[test]
fn generic_batched_issuance_from_three_producers() {
    let (mut cases, mut type2_items, mut voprf_items) = (0, 0, 0);
    for (file, framing) in [
        ("ext_generic_batched_issuance_vectors.json", Framing::Generic),
        ("kat_generic_rs.json", Framing::Generic),
        ("kat_generic_ts.json", Framing::Legacy),
    ] {
        for (i, case) in vector_file(file).as_array().unwrap().iter().enumerate() {
            let (t2, t1) = check_generic_batch(&format!("{file}[{i}]"), case, framing);
            (type2_items, voprf_items) = (type2_items + t2, voprf_items + t1);
            cases += 1;
        }
    }
    println!(
        "generic batches: {cases} cases (Go, Rust, TypeScript), {type2_items} type-2 and {voprf_items} type-1 items finalized"
    );
    assert_eq!((cases, type2_items, voprf_items), (13, 12, 12));
}

/// Every type-2 case of the three producers through `signer_for`'s issuer.
fn type2_cases(signer_for: SignerFor<'_>) -> usize {
    let mut ran = 0;
    for file in [
        "rfc9578_type2_issuance_vectors.json",
        "type2_issuance_vectors_patgo.json",
        "type2_issuance_vectors_rust_multikey.json",
    ] {
        for (i, case) in vector_file(file).as_array().unwrap().iter().enumerate() {
            check_type2(file, i, case, signer_for);
            ran += 1;
        }
    }
    ran
}

#[test]
fn rfc9578_type2_issuance() {
    let ran = type2_cases(&aws_lc);
    println!("RFC 9578 type 2: {ran} cases passed (RFC, pat-go, Rust multi-key)");
    assert_eq!(ran, 15);
}

/// The same cases with each key imported into a SoftHSM2 token and signed
/// there by `CKM_RSA_X_509` (blindpass-hsm): byte-identical responses.
#[test]
#[cfg_attr(not(blindpass_test_pkcs11), ignore = "set BLINDPASS_TEST_PKCS11=1 (SoftHSM2 installed) to run")]
fn rfc9578_type2_issuance_through_a_pkcs11_token() {
    blindpass_hsm::testing::on_fresh_token("rfc9578_type2_issuance_through_a_pkcs11_token", |token| {
        let hsm = blindpass_hsm::Hsm::open(token.config()).unwrap();
        let in_token = |pem: &str| -> Box<dyn blind_rsa::RawSigner> {
            let der = RsaPrivateKey::from_pkcs8_pem(pem).unwrap().to_pkcs8_der().unwrap();
            Box::new(blindpass_hsm::testing::import_pkcs8(&hsm, &der))
        };
        let ran = type2_cases(&in_token);
        println!("RFC 9578 type 2 through SoftHSM2: {ran} cases passed");
        assert_eq!(ran, 15);
    });
}

/// The RFC 9577 token evaluator: rebuild the TokenChallenge from its fields
/// and check `token_input`; greased types must be refused by the decoder.
fn check_rfc9577_token(case: &Value) -> bool {
    let expected = hex(&case["token_authenticator_input"]);
    let token_type = u16::from_str_radix(case["token_type"].as_str().unwrap(), 16).unwrap();
    if token_type != wire::TOKEN_TYPE_BLIND_RSA {
        // Grease: a client must ignore it; our decoder refuses the type.
        assert_eq!(Token::decode(&expected), Err(WireError::UnsupportedTokenType(token_type)));
        return false;
    }
    let challenge = TokenChallenge::new(
        token_type,
        std::str::from_utf8(&hex(&case["issuer_name"])).unwrap(),
        &hex(&case["redemption_context"]),
        std::str::from_utf8(&hex(&case["origin_info"])).unwrap(),
    )
    .unwrap();
    let nonce: [u8; 32] = hex(&case["nonce"]).try_into().unwrap();
    let key_id = blindpass_protocol::keys::TokenKeyId(hex(&case["token_key_id"]).try_into().unwrap());
    assert_eq!(type2::wire::token_input(&nonce, &challenge.digest(), &key_id).to_vec(), expected);
    true
}

#[test]
fn rfc9577_token_structure() {
    let (mut ran, mut grease) = (0, 0);
    let files = [
        vector_file("rfc9577_token_vectors.json"),
        vector_file("rfc9577_appendixA_transcribed.json")["token_vectors"].clone(),
    ];
    for file in &files {
        for case in file.as_array().unwrap() {
            if !check_rfc9577_token(case) {
                grease += 1;
            }
            ran += 1;
        }
    }
    println!("RFC 9577 tokens: {ran} cases passed ({grease} greased, ignored)");
    assert_eq!((ran, grease), (11, 1));
}

/// The RFC 9577 header evaluator: every decodable `PrivateToken` challenge of
/// the header comes out, in order, with its key and max-age; undecodable
/// (greased) ones are skipped; our builder's output parses back the same.
fn check_rfc9577_header(case: &Value) {
    let header = case["WWW-Authenticate"].as_str().unwrap();
    let parsed = auth::parse_www_authenticate(header).unwrap();
    let mut expected = Vec::new();
    for i in 0.. {
        let Some(challenge_hex) = case.get(format!("token-challenge-{i}")) else {
            break;
        };
        let challenge_bytes = hex(challenge_hex);
        let Ok(challenge) = TokenChallenge::decode(&challenge_bytes) else {
            continue;
        };
        let max_age = case.get(format!("max-age-{i}")).map(|v| match v {
            Value::Number(n) => n.as_u64().unwrap(),
            Value::String(s) => s.parse().unwrap(),
            _ => panic!("max-age"),
        });
        expected.push(auth::PrivateTokenChallenge {
            challenge_bytes,
            challenge,
            token_key: Some(hex(&case[format!("token-key-{i}")])),
            max_age,
        });
    }
    assert_eq!(parsed, expected, "{header}");
    for c in &parsed {
        let rebuilt = auth::www_authenticate(&c.challenge, c.token_key.as_deref(), c.max_age);
        assert_eq!(auth::parse_www_authenticate(&rebuilt).unwrap(), vec![c.clone()]);
    }
    // The first type-2 key in these vectors is the RFC 9578 key.
    if let Some(key) = parsed.iter().find(|c| c.challenge.token_type == 2).and_then(|c| c.token_key.as_ref()) {
        IssuerPublicKey::from_rfc9578_spki(key).unwrap();
    }
}

#[test]
fn rfc9577_www_authenticate_headers() {
    let mut ran = 0;
    let files = [
        vector_file("rfc9577_header_vectors.json"),
        vector_file("rfc9577_appendixA_transcribed.json")["header_vectors"].clone(),
        vector_file("privacypass-ts_header_vector_unquoted.json"),
    ];
    for file in &files {
        for case in file.as_array().unwrap() {
            check_rfc9577_header(case);
            ran += 1;
        }
    }
    println!("RFC 9577 headers: {ran} cases passed (incl. grease, mixed schemes, unquoted values)");
    assert_eq!(ran, 6);
}

#[test]
fn rfc9578_directory_key_encoding_matches_vector_key() {
    let case = &vector_file("rfc9578_type2_issuance_vectors.json")[0];
    let key = IssuerPublicKey::from_rfc9578_spki(&hex(&case["pkS"])).unwrap();
    assert_eq!(key.token_key_id().to_hex(), "ca572f8982a9ca248a3056186322d93ca147266121ddeb5632c07f1f71cd2708");
    assert_eq!(key.truncated_token_key_id(), 0x08);
    let entry = blindpass_protocol::directory::DirectoryKey::type2(&key, None);
    assert_eq!(entry.decode_type2().unwrap(), key);
    // The rsaEncryption form is refused where RFC 9578 requires the PSS form.
    assert!(IssuerPublicKey::from_rfc9578_spki(key.rsa_encryption_spki()).is_err());
    assert!(RsaPublicKey::from_spki_der(key.rsa_encryption_spki()).is_ok());
}

/// A VOPRF issuance as a vector gives it: one TokenRequest and its
/// TokenResponse, or one amortized batch request and its response.
enum VoprfIssuance {
    Single(VoprfTokenRequest, VoprfTokenResponse),
    Amortized(AmortizedTokenRequest, AmortizedTokenResponse),
}

/// `(truncated key id, blinded elements, evaluated elements, proof)`.
type IssuanceParts<'a> = (u8, Vec<Vec<u8>>, Vec<Vec<u8>>, &'a [u8]);

impl VoprfIssuance {
    fn parts(&self) -> IssuanceParts<'_> {
        match self {
            Self::Single(q, r) => {
                (q.truncated_token_key_id, vec![q.blinded_element.clone()], vec![r.evaluated_element.clone()], &r.proof)
            }
            Self::Amortized(q, r) => {
                (q.truncated_token_key_id, q.blinded_elements.clone(), r.evaluated_elements.clone(), &r.proof)
            }
        }
    }
}

/// The VOPRF evaluator (types 1 and 5, single and amortized): the key pair
/// and its id; the client's blinded elements from the case's nonces and
/// blinds, byte for byte; the issuer's evaluated elements (by the production
/// code), byte for byte; the case's proof verified by our client, which then
/// yields the case's tokens byte for byte; our own (randomized) proof
/// verified too and yielding the same tokens; every token verified by the
/// private key, and refused once tampered with.
fn check_voprf_issuance(ctx: &str, suite: Suite, case: &Value, issuance: &VoprfIssuance, tokens: &[Value]) {
    let field = |go: &str, rs: &str| case.get(go).or_else(|| case.get(rs)).unwrap_or_else(|| panic!("{ctx}: {go}"));
    let secret = SecretKey::from_bytes(suite, &hex(field("skS", "sk_s"))).unwrap_or_else(|e| panic!("{ctx}: skS: {e}"));
    let pk_s = hex(field("pkS", "pk_s"));
    assert_eq!(secret.public_key().as_bytes(), &pk_s[..], "{ctx}: pkS");
    let public = voprf::PublicKey::from_bytes(suite, &pk_s).unwrap();
    assert_eq!(public.token_key_id(), blindpass_protocol::keys::TokenKeyId::of(&pk_s), "{ctx}: token key id");
    assert_eq!(&secret.to_bytes()[..], &hex(field("skS", "sk_s"))[..], "{ctx}: scalar re-encoding");

    let challenge_bytes = hex(&case["token_challenge"]);
    let challenge = TokenChallenge::decode(&challenge_bytes).unwrap();
    assert_eq!(challenge.encode(), challenge_bytes, "{ctx}: challenge re-encoding");
    assert_eq!(challenge.token_type, suite.token_type(), "{ctx}: challenge token type");

    let (nonces, blinds): (Vec<Vec<u8>>, Vec<Vec<u8>>) = match (case.get("nonces"), case.get("blinds")) {
        (Some(n), Some(b)) => {
            (n.as_array().unwrap().iter().map(hex).collect(), b.as_array().unwrap().iter().map(hex).collect())
        }
        _ => (vec![hex(&case["nonce"])], vec![hex(&case["blind"])]),
    };
    assert_eq!((nonces.len(), blinds.len()), (tokens.len(), tokens.len()), "{ctx}: counts");
    let chunks: Vec<&[u8]> = nonces.iter().zip(&blinds).flat_map(|(n, b)| [&n[..], &b[..]]).collect();
    let mut rng = ReplayRng::new(&chunks);
    let (blinded, state) = voprf::begin_issuance(&public, &challenge, tokens.len(), &mut rng).unwrap();
    rng.assert_drained();

    let (truncated, asked, answered, proof) = issuance.parts();
    assert_eq!(truncated, public.truncated_token_key_id(), "{ctx}: truncated key id");
    assert_eq!(blinded, asked, "{ctx}: blinded elements");

    let mut proof_rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(u64::from(truncated));
    let ours = secret.evaluate(&asked, &mut proof_rng).unwrap();
    assert_eq!(ours.evaluated_elements, answered, "{ctx}: evaluated elements");
    assert_eq!(ours.proof.len(), 2 * suite.scalar_len());

    let expected: Vec<Vec<u8>> = tokens.iter().map(hex).collect();
    let from_case = voprf::finalize_issuance(&state, &answered, proof).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert_eq!(from_case.iter().map(VoprfToken::encode).collect::<Vec<_>>(), expected, "{ctx}: tokens");
    let from_ours = voprf::finalize_issuance(&state, &ours.evaluated_elements, &ours.proof).unwrap();
    assert_eq!(from_ours, from_case, "{ctx}: tokens from our proof");

    let mut forged = proof.to_vec();
    forged[0] ^= 1;
    assert!(voprf::finalize_issuance(&state, &answered, &forged).is_err(), "{ctx}: a bad proof is refused");

    for bytes in &expected {
        let token = VoprfToken::decode(bytes).unwrap();
        assert_eq!(token.challenge_digest, challenge.digest());
        secret.verify_token(&token).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let mut tampered = token.clone();
        tampered.authenticator[7] ^= 0x40;
        assert!(secret.verify_token(&tampered).is_err(), "{ctx}: tampered authenticator");
        let mut renamed = token.clone();
        renamed.nonce[0] ^= 1;
        assert!(secret.verify_token(&renamed).is_err(), "{ctx}: other nonce");
    }
}

#[test]
fn voprf_single_issuance_types_1_and_5() {
    let mut counts = Vec::new();
    for (file, suite) in [
        ("rfc9578_type1_issuance_vectors.json", Suite::P384),
        ("kat_private_p384_go.json", Suite::P384),
        ("kat_private_p384_rs.json", Suite::P384),
        ("kat_private_ristretto255_go.json", Suite::Ristretto255),
        ("kat_private_ristretto255_rs.json", Suite::Ristretto255),
    ] {
        let cases = vector_file(file);
        for (i, case) in cases.as_array().unwrap().iter().enumerate() {
            let ctx = format!("{file}[{i}]");
            let request_bytes = hex(&case["token_request"]);
            let request = VoprfTokenRequest::decode(&request_bytes).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert_eq!(request.suite, suite);
            assert_eq!(request.encode(), request_bytes, "{ctx}: token_request");
            let response_bytes = hex(&case["token_response"]);
            let response = VoprfTokenResponse::decode(suite, &response_bytes).unwrap();
            assert_eq!(response.encode(), response_bytes, "{ctx}: token_response re-encoding");
            let tokens = [case["token"].clone()];
            check_voprf_issuance(&ctx, suite, case, &VoprfIssuance::Single(request, response), &tokens);
        }
        counts.push(cases.as_array().unwrap().len());
    }
    println!("VOPRF single issuance: {counts:?} cases passed (RFC 9578 A.1, P-384 Go/Rust, ristretto255 Go/Rust)");
    assert_eq!(counts, [5, 5, 5, 5, 5]);
}

#[test]
fn voprf_amortized_batches_types_1_and_5() {
    let (mut cases, mut tokens_checked) = (0, 0);
    for (file, suite) in [
        ("kat_amortized_p384_go.json", Suite::P384),
        ("kat_amortized_p384_rs.json", Suite::P384),
        ("kat_amortized_ristretto255_go.json", Suite::Ristretto255),
        ("kat_amortized_ristretto255_rs.json", Suite::Ristretto255),
    ] {
        for (i, case) in vector_file(file).as_array().unwrap().iter().enumerate() {
            let ctx = format!("{file}[{i}]");
            let tokens = case["tokens"].as_array().unwrap();
            let request_bytes = hex(&case["token_request"]);
            let request = AmortizedTokenRequest::decode(&request_bytes, 1000).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert_eq!(request.suite, suite);
            assert_eq!(request.encode(), request_bytes, "{ctx}: token_request");
            let response_bytes = hex(&case["token_response"]);
            let response = AmortizedTokenResponse::decode(suite, tokens.len(), &response_bytes).unwrap();
            assert_eq!(response.encode(), response_bytes, "{ctx}: token_response re-encoding");
            check_voprf_issuance(&ctx, suite, case, &VoprfIssuance::Amortized(request, response), tokens);
            cases += 1;
            tokens_checked += tokens.len();
        }
    }
    println!(
        "VOPRF amortized batches: {cases} cases, {tokens_checked} tokens passed (P-384 and ristretto255, Go and Rust)"
    );
    assert_eq!(cases, 20);
}
