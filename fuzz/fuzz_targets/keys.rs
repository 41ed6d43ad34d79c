//! Key encodings: SPKI (both algorithms), PKCS#1, PKCS#8 (into aws-lc), PEM.
#![no_main]

use blindpass_protocol::rsa::RsaPublicKey;
use blindpass_protocol::type2::keys::IssuerPublicKey;
use blindpass_rsa::RsaPrivateKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = RsaPublicKey::from_spki_der(data);
    let _ = RsaPublicKey::from_pkcs1_der(data);
    if let Ok(key) = IssuerPublicKey::from_spki_der(data) {
        assert!(key.rfc9578_spki() == data || key.rsa_encryption_spki() == data);
    }
    let _ = RsaPrivateKey::from_pkcs8_der(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = RsaPublicKey::from_pem(text);
        let _ = RsaPrivateKey::from_pkcs8_pem(text);
    }
});
