//! Token type 2 issuer public keys, their two encodings and their two ids.

use crate::keys::TokenKeyId;
use crate::rsa::{KeyError, RsaPublicKey, SpkiAlgorithm, parse_spki};

/// Token type 2 modulus size in bits (RFC 9578 §6: Nk = 256).
pub const TYPE2_MODULUS_BITS: u32 = 2048;
/// The only public exponent blindpass issues with.
pub const PUBLIC_EXPONENT: [u8; 3] = [0x01, 0x00, 0x01];

/// A token type 2 issuer public key: RSA-2048, e = 65537, with both public
/// encodings and both ids computed once.
///
/// - `token_key_id` = SHA-256 of the RSASSA-PSS SPKI (RFC 9578 §6.5);
/// - `persona_key_id` = SHA-256 of the `rsaEncryption` SPKI DER, which is what
///   Persona's `token-key` carries and its `token-key-id` hashes.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuerPublicKey {
    key: RsaPublicKey,
    pss_spki: Vec<u8>,
    rsa_spki: Vec<u8>,
    token_key_id: TokenKeyId,
    persona_key_id: TokenKeyId,
}

impl std::fmt::Debug for IssuerPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerPublicKey")
            .field("token_key_id", &self.token_key_id)
            .field("persona_key_id", &self.persona_key_id)
            .finish()
    }
}

impl IssuerPublicKey {
    /// Accepts exactly a 2048-bit modulus and e = 65537.
    pub fn new(key: RsaPublicKey) -> Result<Self, KeyError> {
        if key.modulus_bits() != TYPE2_MODULUS_BITS {
            return Err(KeyError::UnsupportedModulusSize { bits: key.modulus_bits() });
        }
        if key.e() != PUBLIC_EXPONENT {
            return Err(KeyError::InvalidParameters);
        }
        let pss_spki = key.to_rsassa_pss_spki();
        let rsa_spki = key.to_rsa_encryption_spki();
        Ok(Self {
            token_key_id: TokenKeyId::of(&pss_spki),
            persona_key_id: TokenKeyId::of(&rsa_spki),
            key,
            pss_spki,
            rsa_spki,
        })
    }

    /// Parses either SPKI encoding (RSASSA-PSS per RFC 9578, or `rsaEncryption`).
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        let (_, key) = parse_spki(der)?;
        Self::new(key)
    }

    /// Parses only the RFC 9578 §6.5 RSASSA-PSS SPKI (what an RFC directory
    /// or `token-key` parameter must carry).
    pub fn from_rfc9578_spki(der: &[u8]) -> Result<Self, KeyError> {
        match parse_spki(der)? {
            (SpkiAlgorithm::RsassaPssSha384, key) => Self::new(key),
            (SpkiAlgorithm::RsaEncryption, _) => Err(KeyError::UnsupportedAlgorithm),
        }
    }

    /// The RSA key.
    pub fn rsa(&self) -> &RsaPublicKey {
        &self.key
    }

    /// RFC 9578 §6.5 SPKI DER (id-RSASSA-PSS), 342 bytes.
    pub fn rfc9578_spki(&self) -> &[u8] {
        &self.pss_spki
    }

    /// `rsaEncryption` SPKI DER, 294 bytes (Persona's `token-key`).
    pub fn rsa_encryption_spki(&self) -> &[u8] {
        &self.rsa_spki
    }

    /// RFC 9578 `token_key_id`.
    pub fn token_key_id(&self) -> TokenKeyId {
        self.token_key_id
    }

    /// Persona `token-key-id`: SHA-256 of the `rsaEncryption` SPKI.
    pub fn persona_key_id(&self) -> TokenKeyId {
        self.persona_key_id
    }

    /// RFC 9578 `truncated_token_key_id`.
    pub fn truncated_token_key_id(&self) -> u8 {
        self.token_key_id.truncated()
    }

    /// True when `id` names this key by either of its ids.
    pub fn answers_to(&self, id: &TokenKeyId) -> bool {
        *id == self.token_key_id || *id == self.persona_key_id
    }
}
