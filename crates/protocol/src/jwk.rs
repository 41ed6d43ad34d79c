//! RSA public keys as JWKs (RFC 7517, RFC 7518 §6.3) for claim-payload
//! encryption with RSA-OAEP-256: Persona 2026-09-29's `encryption-key-jwk`.
//!
//! Parsing rejects rather than guesses: the key must be `kty: "RSA"` with
//! `alg: "RSA-OAEP-256"`; `use`, when present, must be `enc`; `key_ops`,
//! when present, must allow `encrypt` or `wrapKey`; private members (`d`,
//! `p`, `q`, `dp`, `dq`, `qi`, `oth`) are refused, so a private key sent by
//! mistake is never stored; `n` and `e` are unpadded base64url without
//! leading zero octets (RFC 7518 §2 `Base64urlUInt`).

use serde_json::{Map, Value};

use crate::b64;
use crate::rsa::RsaPublicKey;

/// The one algorithm accepted.
pub const RSA_OAEP_256: &str = "RSA-OAEP-256";

/// Members that only a private key has.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

/// Longest accepted `kid`.
pub const MAX_KID_LEN: usize = 256;

/// A parsed JWK: the RSA public key and its `kid`, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionJwk {
    /// The public key.
    pub key: RsaPublicKey,
    /// The key id, echoed in the JWE header.
    pub kid: Option<String>,
}

/// Why a JWK is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    /// Not a JSON object.
    #[error("the JWK must be a JSON object")]
    NotAnObject,
    /// `kty` is missing or not `RSA`.
    #[error("kty must be \"RSA\"")]
    KeyType,
    /// `alg` is missing or not `RSA-OAEP-256`.
    #[error("alg must be \"RSA-OAEP-256\"")]
    Algorithm,
    /// `use` is not `enc`, or `key_ops` allows no encryption.
    #[error("the key is not for encryption (use must be \"enc\"; key_ops must allow encrypt or wrapKey)")]
    Usage,
    /// A private member is present.
    #[error("the JWK holds private key material ({0}); send the public key only")]
    Private(&'static str),
    /// `n` or `e` is missing, not a string, not unpadded base64url, or has
    /// leading zero octets.
    #[error("{0} must be unpadded base64url of an unsigned integer without leading zeros")]
    Integer(&'static str),
    /// `kid` is not a string of at most [`MAX_KID_LEN`] printable characters.
    #[error("kid must be a string of at most 256 printable ASCII characters")]
    Kid,
    /// The components are not a usable RSA public key.
    #[error("not a usable RSA public key")]
    Key,
}

impl EncryptionJwk {
    /// Parses `value` (the `encryption-key-jwk` member).
    pub fn parse(value: &Value) -> Result<Self, JwkError> {
        let object = value.as_object().ok_or(JwkError::NotAnObject)?;
        if let Some(private) = PRIVATE_MEMBERS.iter().find(|m| object.contains_key(**m)) {
            return Err(JwkError::Private(private));
        }
        if text(object, "kty") != Some("RSA") {
            return Err(JwkError::KeyType);
        }
        if text(object, "alg") != Some(RSA_OAEP_256) {
            return Err(JwkError::Algorithm);
        }
        if object.get("use").is_some_and(|u| u.as_str() != Some("enc")) {
            return Err(JwkError::Usage);
        }
        if let Some(ops) = object.get("key_ops") {
            let ops = ops.as_array().ok_or(JwkError::Usage)?;
            if !ops.iter().any(|op| matches!(op.as_str(), Some("encrypt" | "wrapKey"))) {
                return Err(JwkError::Usage);
            }
        }
        let kid = match object.get("kid") {
            None => None,
            Some(Value::String(kid)) if valid_kid(kid) => Some(kid.clone()),
            Some(_) => return Err(JwkError::Kid),
        };
        let n = integer(object, "n")?;
        let e = integer(object, "e")?;
        let key = RsaPublicKey::from_components(&n, &e).map_err(|_| JwkError::Key)?;
        Ok(Self { key, kid })
    }
}

fn text<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    object.get(name).and_then(Value::as_str)
}

fn valid_kid(kid: &str) -> bool {
    !kid.is_empty() && kid.len() <= MAX_KID_LEN && kid.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// A `Base64urlUInt`: unpadded base64url, at least one octet, no leading
/// zero octet.
fn integer(object: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, JwkError> {
    let text = text(object, name).ok_or(JwkError::Integer(name))?;
    let bytes = b64::decode(text).map_err(|_| JwkError::Integer(name))?;
    // `b64::decode` takes padded input too; a JWK integer is unpadded.
    if text.contains('=') || bytes.first().is_none_or(|b| *b == 0) {
        return Err(JwkError::Integer(name));
    }
    Ok(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn modulus() -> Vec<u8> {
        // An odd 2048-bit value with the top bit set: shaped like a modulus.
        let mut n = vec![0xc5; 256];
        n[255] = 0x01;
        n
    }

    fn jwk() -> Value {
        json!({"kty": "RSA", "alg": "RSA-OAEP-256", "n": b64::encode_unpadded(&modulus()), "e": "AQAB", "kid": "k1"})
    }

    #[test]
    fn a_public_rsa_oaep_256_key_parses() {
        let parsed = EncryptionJwk::parse(&jwk()).unwrap();
        assert_eq!(parsed.kid.as_deref(), Some("k1"));
        assert_eq!(parsed.key.modulus_bits(), 2048);
        let mut with_use = jwk();
        with_use["use"] = json!("enc");
        with_use["key_ops"] = json!(["encrypt"]);
        assert!(EncryptionJwk::parse(&with_use).is_ok());
    }

    #[test]
    fn everything_else_is_refused() {
        let with = |name: &str, value: Value| {
            let mut j = jwk();
            j[name] = value;
            EncryptionJwk::parse(&j).unwrap_err()
        };
        let without = |name: &str| {
            let mut j = jwk();
            j.as_object_mut().unwrap().remove(name);
            EncryptionJwk::parse(&j).unwrap_err()
        };
        assert_eq!(with("d", json!("AQAB")), JwkError::Private("d"));
        assert_eq!(with("p", json!("AQAB")), JwkError::Private("p"));
        assert_eq!(with("kty", json!("EC")), JwkError::KeyType);
        assert_eq!(without("kty"), JwkError::KeyType);
        assert_eq!(with("alg", json!("RSA-OAEP")), JwkError::Algorithm);
        assert_eq!(with("alg", json!("RSA1_5")), JwkError::Algorithm);
        assert_eq!(without("alg"), JwkError::Algorithm, "the algorithm is never guessed");
        assert_eq!(with("use", json!("sig")), JwkError::Usage);
        assert_eq!(with("key_ops", json!(["verify"])), JwkError::Usage);
        assert_eq!(with("e", json!("AQAB=")), JwkError::Integer("e"), "padded");
        assert_eq!(with("e", json!("AAEAAQ")), JwkError::Integer("e"), "leading zero octet");
        assert_eq!(with("n", json!("AP".to_owned() + &b64::encode_unpadded(&modulus())[2..])), JwkError::Integer("n"));
        assert_eq!(with("n", json!(12)), JwkError::Integer("n"));
        assert_eq!(without("n"), JwkError::Integer("n"));
        assert_eq!(with("n", json!(b64::encode_unpadded(&modulus()[..64]))), JwkError::Key, "512-bit modulus");
        assert_eq!(with("kid", json!(7)), JwkError::Kid);
        assert_eq!(with("kid", json!("a\nb")), JwkError::Kid);
        assert_eq!(EncryptionJwk::parse(&json!("RSA")).unwrap_err(), JwkError::NotAnObject);
    }
}
