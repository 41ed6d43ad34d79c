//! blindpass-hsm against a real PKCS#11 module (SoftHSM2), each test on a
//! fresh token in its own process (`testing::on_fresh_token`).
//!
//! Needs SoftHSM2 (Debian `softhsm2`) and `BLINDPASS_TEST_PKCS11=1` at build
//! time; otherwise every test here is ignored (listed, not passed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;

use blindpass_hsm::testing::on_fresh_token;
use blindpass_hsm::{Hsm, HsmConfig, HsmError, TokenSelector};
use blindpass_protocol::type2::blind_rsa::{self, BlindSignError, RawSigner, Variant};
use cryptoki::context::Pkcs11;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

/// A full RFC 9474 round trip through `signer`: blind, sign, finalize (which
/// verifies).
#[allow(clippy::disallowed_methods)]
fn round_trip(signer: &dyn RawSigner) {
    let mut rng = rand::rng();
    let msg = blind_rsa::prepared(b"a message the issuer never sees");
    let (blinded, secret) =
        blind_rsa::blind(signer.public_key(), Variant::Sha384PssDeterministic, &msg, &mut rng).unwrap();
    let blind_sig = blind_rsa::blind_sign(signer, &blinded).unwrap();
    blind_rsa::finalize(signer.public_key(), Variant::Sha384PssDeterministic, &msg, &blind_sig, &secret).unwrap();
}

#[test]
#[cfg_attr(not(blindpass_test_pkcs11), ignore = "set BLINDPASS_TEST_PKCS11=1 (SoftHSM2 installed) to run")]
fn keys_are_made_in_the_token_and_never_leave_it() {
    on_fresh_token("keys_are_made_in_the_token_and_never_leave_it", |token| {
        let hsm = Hsm::open(token.config()).unwrap();
        assert!(hsm.describe().contains("blindpass-test"), "{}", hsm.describe());
        let (object, public) = hsm.generate_rsa_2048().unwrap();
        assert_eq!(public.modulus_bits(), 2048);
        assert_eq!(public.e(), [1, 0, 1]);
        assert_eq!(hsm.key_objects().unwrap(), vec![object.clone()]);
        round_trip(&hsm.key(object.clone(), public.clone()));

        // An outsider's look at the token (cryptoki directly, the same
        // module): the private key is sensitive, never extractable, and its
        // private exponent cannot be read.
        let pkcs11 = Pkcs11::new(token.config().module).unwrap();
        let slot = pkcs11.get_slots_with_token().unwrap()[0];
        let session = pkcs11.open_ro_session(slot).unwrap();
        let _ = session.login(UserType::User, Some(&AuthPin::from(blindpass_hsm::testing::USER_PIN)));
        let private = session
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Id(object.id.clone())])
            .unwrap();
        assert_eq!(private.len(), 1);
        let attributes = session
            .get_attributes(
                private[0],
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::Token,
                ],
            )
            .unwrap();
        for expected in [
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::AlwaysSensitive(true),
            Attribute::NeverExtractable(true),
            Attribute::Token(true),
        ] {
            assert!(attributes.contains(&expected), "{expected:?} not in {attributes:?}");
        }
        let secret = session.get_attributes(private[0], &[AttributeType::PrivateExponent]).unwrap();
        assert!(
            !secret.iter().any(|a| matches!(a, Attribute::PrivateExponent(d) if !d.is_empty())),
            "the private exponent was readable: {secret:?}"
        );

        // Destroyed: gone from the token, and signing says so (unavailable,
        // not a fault).
        assert_eq!(hsm.destroy(&object.id).unwrap(), 2);
        assert!(hsm.key_objects().unwrap().is_empty());
        let key = hsm.key(object, public.clone());
        let m = vec![1u8; public.modulus_len()];
        assert_eq!(key.rsasp1(&m), Err(BlindSignError::Unavailable));
    });
}

#[test]
#[cfg_attr(not(blindpass_test_pkcs11), ignore = "set BLINDPASS_TEST_PKCS11=1 (SoftHSM2 installed) to run")]
fn the_fault_check_and_range_check_hold() {
    on_fresh_token("the_fault_check_and_range_check_hold", |token| {
        let hsm = Hsm::open(token.config()).unwrap();
        let (object, public) = hsm.generate_rsa_2048().unwrap();
        let k = public.modulus_len();
        let key = hsm.key(object.clone(), public.clone());
        // m >= n is refused before the token sees it, never reduced.
        assert_eq!(key.rsasp1(public.n()), Err(BlindSignError::OutOfRange));
        assert_eq!(key.rsasp1(&vec![0xff; k]), Err(BlindSignError::OutOfRange));
        assert_eq!(key.rsasp1(&vec![1; k - 1]), Err(BlindSignError::OutOfRange));
        // The token's key under another public key (a mix-up in the store,
        // or a faulty token): the signature fails s^e == m and is withheld.
        let (_, other_public) = hsm.generate_rsa_2048().unwrap();
        let mismatched = hsm.key(object, other_public.clone());
        let mut m = vec![0u8; k];
        m[k - 1] = 7;
        assert_eq!(mismatched.rsasp1(&m), Err(BlindSignError::SigningFailure));
        assert!(key.rsasp1(&m).is_ok());
    });
}

#[test]
#[cfg_attr(not(blindpass_test_pkcs11), ignore = "set BLINDPASS_TEST_PKCS11=1 (SoftHSM2 installed) to run")]
fn pooled_sessions_sign_concurrently() {
    on_fresh_token("pooled_sessions_sign_concurrently", |token| {
        let hsm = Hsm::open(token.config()).unwrap();
        let keys: Vec<_> = (0..2)
            .map(|_| {
                let (object, public) = hsm.generate_rsa_2048().unwrap();
                Arc::new(hsm.key(object, public))
            })
            .collect();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let key = Arc::clone(&keys[i % 2]);
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        round_trip(&*key);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
    });
}

#[test]
#[cfg_attr(not(blindpass_test_pkcs11), ignore = "set BLINDPASS_TEST_PKCS11=1 (SoftHSM2 installed) to run")]
fn a_token_that_goes_away_is_unavailable_then_recovers() {
    on_fresh_token("a_token_that_goes_away_is_unavailable_then_recovers", |token| {
        let hsm = Hsm::open(token.config()).unwrap();
        let (object, public) = hsm.generate_rsa_2048().unwrap();
        let key = hsm.key(object, public.clone());
        round_trip(&key);
        // SoftHSM2 keeps each token in a directory of its own: moving it
        // away is the token being pulled.
        let tokens = token.tokens_dir();
        let token_dir = std::fs::read_dir(&tokens).unwrap().next().unwrap().unwrap().path();
        let away = token.tokens_dir().with_file_name("away");
        std::fs::rename(&token_dir, &away).unwrap();
        let m = {
            let mut m = vec![0u8; public.modulus_len()];
            m[5] = 9;
            m
        };
        let mut outcomes = Vec::new();
        for _ in 0..3 {
            outcomes.push(key.rsasp1(&m));
        }
        assert!(outcomes.iter().all(|o| *o == Err(BlindSignError::Unavailable)), "{outcomes:?}");
        std::fs::rename(&away, &token_dir).unwrap();
        let started = std::time::Instant::now();
        loop {
            match key.rsasp1(&m) {
                Ok(_) => break,
                Err(BlindSignError::Unavailable) if started.elapsed().as_secs() < 10 => {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                other => panic!("no recovery: {other:?}"),
            }
        }
        round_trip(&key);
    });
}

#[test]
#[cfg_attr(not(blindpass_test_pkcs11), ignore = "set BLINDPASS_TEST_PKCS11=1 (SoftHSM2 installed) to run")]
fn bad_configuration_is_one_line_at_open() {
    on_fresh_token("bad_configuration_is_one_line_at_open", |token| {
        let config = token.config();
        let wrong_pin = HsmConfig { pin: Zeroizing::new("0000".into()), ..config.clone() };
        let error = Hsm::open(wrong_pin).unwrap_err();
        assert!(matches!(error, HsmError::Login { .. }), "{error:?}");
        assert!(error.to_string().contains("PIN is incorrect"), "{error}");
        let missing = HsmConfig { module: "/nonexistent/libpkcs11.so".into(), ..config.clone() };
        let error = Hsm::open(missing).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/libpkcs11.so") && error.contains("no such file"), "{error}");
        let not_a_module = HsmConfig { module: token.conf(), ..config.clone() };
        let error = Hsm::open(not_a_module).unwrap_err().to_string();
        assert!(error.starts_with("PKCS#11 module"), "{error}");
        let no_token = HsmConfig { token: TokenSelector::Label("nope".into()), ..config.clone() };
        let error = Hsm::open(no_token).unwrap_err().to_string();
        assert!(error.contains("\"nope\"") && error.contains("\"blindpass-test\""), "{error}");
        assert!(!error.contains('\n'), "{error}");
        // The right PIN still works (the wrong one did not lock it).
        Hsm::open(config).unwrap();
    });
}

#[test]
fn the_pin_is_never_in_debug_output() {
    let config = HsmConfig {
        module: "/m.so".into(),
        token: TokenSelector::Slot(3),
        pin: Zeroizing::new("very-secret-pin".into()),
    };
    let text = format!("{config:?}");
    assert!(!text.contains("very-secret-pin") && text.contains("<redacted>"), "{text}");
}
