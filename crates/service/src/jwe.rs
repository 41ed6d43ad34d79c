//! Claim payloads as compact JWEs (RFC 7516 §7.1) for relays created with
//! `encryption-key-jwk` (Persona 2026-09-29): RSA-OAEP-256 key wrapping of
//! a fresh A256GCM content key (RFC 7518 §4.3, §5.3). Unlike one RSA-OAEP
//! block, the payload may be any length.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use blindpass_entropy::Entropy;
use blindpass_protocol::b64;
use blindpass_protocol::oaep;
use blindpass_protocol::rsa::RsaPublicKey;
use zeroize::Zeroizing;

/// Why a JWE could not be made (the key cannot wrap a 32-byte key: never
/// for the 2048–4096-bit keys relays accept).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the claim could not be encrypted to the relay's key")]
pub(crate) struct JweError;

/// `plaintext` encrypted to `key` as a compact JWE with the protected
/// header `{"alg":"RSA-OAEP-256","enc":"A256GCM"}` (and `kid` when given).
pub(crate) fn encrypt_compact(
    key: &RsaPublicKey,
    kid: Option<&str>,
    plaintext: &[u8],
    entropy: &dyn Entropy,
) -> Result<String, JweError> {
    let mut header = serde_json::Map::new();
    header.insert("alg".into(), "RSA-OAEP-256".into());
    header.insert("enc".into(), "A256GCM".into());
    if let Some(kid) = kid {
        header.insert("kid".into(), kid.into());
    }
    let header = serde_json::Value::Object(header);
    let protected = b64::encode_unpadded(header.to_string().as_bytes());
    let cek = Zeroizing::new(entropy.bytes::<32>());
    let encrypted_key = oaep::encrypt(key, cek.as_slice(), &mut entropy.rng()).map_err(|_| JweError)?;
    let iv = entropy.bytes::<12>();
    let sealing = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, cek.as_slice()).map_err(|_| JweError)?);
    let mut ciphertext = plaintext.to_vec();
    // The AAD is the ASCII of the encoded protected header (RFC 7516 §5.1).
    let tag = sealing
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::from(protected.as_bytes()), &mut ciphertext)
        .map_err(|_| JweError)?;
    Ok([
        protected,
        b64::encode_unpadded(&encrypted_key),
        b64::encode_unpadded(&iv),
        b64::encode_unpadded(&ciphertext),
        b64::encode_unpadded(tag.as_ref()),
    ]
    .join("."))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn five_parts_with_the_header_and_kid() {
        let private = blindpass_rsa::RsaPrivateKey::generate_2048().unwrap();
        let public = blindpass_protocol::type2::blind_rsa::RawSigner::public_key(&private).clone();
        let entropy = blindpass_entropy::SeededEntropy::new(7);
        let jwe = encrypt_compact(&public, Some("k\"1"), br#"{"claim":"x"}"#, &entropy).unwrap();
        let parts: Vec<&str> = jwe.split('.').collect();
        assert_eq!(parts.len(), 5);
        let header: serde_json::Value = serde_json::from_slice(&b64::decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header, serde_json::json!({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "k\"1"}));
        assert_eq!(b64::decode(parts[1]).unwrap().len(), 256, "one RSA-2048 block");
        assert_eq!(b64::decode(parts[2]).unwrap().len(), 12);
        assert_eq!(b64::decode(parts[3]).unwrap().len(), 13);
        assert_eq!(b64::decode(parts[4]).unwrap().len(), 16);
        // Fresh randomness each time.
        assert_ne!(
            encrypt_compact(&public, None, b"x", &entropy).unwrap(),
            encrypt_compact(&public, None, b"x", &entropy).unwrap()
        );
    }
}
