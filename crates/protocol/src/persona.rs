//! Persona's Relay dialect of Privacy Pass, byte-compatible with Persona's
//! Go SDK (`relay-sdk-go`).
//!
//! - The **challenge** is base64url (unpadded) JSON:
//!   `{"token_type":2,"issuer_name":…,"origin_info":…,"expires_at":…,
//!   "claim_type":…,"environment":…,"mac":…}`. Clients treat it as opaque
//!   and echo the whole decoded object inside the token.
//! - The **token** is base64url (unpadded) JSON
//!   `{"token_nonce":<64 hex>,"signature":<b64url>,"key_id":<hex>,"challenge":{…}}`.
//! - The signed message is the 98-byte [`token_input`]
//!   `0x0002 ‖ SHA256(nonce hex) ‖ SHA256(mac) ‖ SHA256(key id string)`,
//!   blinded with no Prepare step (RSABSSA-SHA384-PSS-Deterministic on the wire).
//!
//! # The `mac`
//! `mac = lowercase_hex(HMAC-SHA256(secret, mac_input))` where `mac_input` is
//! ```text
//! "blindpass persona challenge v1"      30 ASCII bytes, no terminator
//! u16  token_type                       big-endian
//! u32 len ‖ issuer_name                 each string: big-endian u32 byte
//! u32 len ‖ origin_info                 length, then its UTF-8 bytes
//! u32 len ‖ expires_at                  (the RFC 3339 text as sent)
//! u32 len ‖ claim_type
//! u32 len ‖ environment                 "sandbox" or "production"
//! ```
//! Length prefixes make the encoding injective; the domain string keeps the
//! secret from being usable for any other MAC.

use hmac::{Hmac, KeyInit, Mac};
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::b64;
use crate::time;
use crate::type2::VARIANT;
use crate::type2::blind_rsa::{self, BlindError, BlindingSecret, FinalizeError, VerifyError};
use crate::type2::keys::IssuerPublicKey;
use crate::type2::wire::NK;
use crate::wire::{TOKEN_INPUT_LEN, TOKEN_TYPE_BLIND_RSA};

/// Domain separation prefix of the MAC input.
pub const MAC_DOMAIN: &[u8; 30] = b"blindpass persona challenge v1";
/// Maximum decoded size of a Persona token accepted (a real one is ~600 B).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

type HmacSha256 = Hmac<Sha256>;

/// The server secret that keys challenge MACs, kept as a keyed HMAC state.
/// Redacted in `Debug`.
#[derive(Clone)]
pub struct ChallengeSecret(HmacSha256);

impl ChallengeSecret {
    /// Keys the MAC with `bytes`; at least 32 are required. The bytes are
    /// zeroised after use.
    pub fn new(bytes: Vec<u8>) -> Result<Self, PersonaError> {
        let bytes = zeroize::Zeroizing::new(bytes);
        if bytes.len() < 32 {
            return Err(PersonaError::WeakSecret);
        }
        // HMAC accepts keys of any length; the error case cannot happen.
        let mac = <HmacSha256 as KeyInit>::new_from_slice(&bytes).map_err(|_| PersonaError::WeakSecret)?;
        Ok(Self(mac))
    }
}

impl std::fmt::Debug for ChallengeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChallengeSecret(<redacted>)")
    }
}

/// Why a Persona challenge or token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PersonaError {
    /// Not base64url.
    #[error("not valid base64url")]
    Base64,
    /// Not JSON of the expected shape (missing, extra or mistyped fields).
    #[error("malformed token or challenge JSON")]
    Json,
    /// A field has an invalid value.
    #[error("invalid field: {0}")]
    InvalidField(&'static str),
    /// The challenge MAC does not verify.
    #[error("challenge MAC does not verify")]
    BadMac,
    /// The challenge has expired.
    #[error("challenge expired")]
    Expired,
    /// The token's signature does not verify.
    #[error("invalid signature")]
    BadSignature,
    /// The token is larger than [`MAX_TOKEN_LEN`].
    #[error("token too large")]
    TooLarge,
    /// A challenge secret shorter than 32 bytes.
    #[error("challenge secret must be at least 32 bytes")]
    WeakSecret,
}

/// The decoded challenge object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    /// Always 2.
    pub token_type: u16,
    /// e.g. `withpersona.com/api/v1/privacy-passes`.
    pub issuer_name: String,
    /// e.g. `/api/privacy/v1/relays`.
    pub origin_info: String,
    /// RFC 3339 UTC, on a whole hour.
    pub expires_at: String,
    /// The relay claim type this challenge is scoped to.
    pub claim_type: String,
    /// `sandbox` or `production`.
    pub environment: String,
    /// Lowercase hex HMAC-SHA256 over the other fields (module docs).
    pub mac: String,
}

/// The fields of a challenge before it is MACed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeFields<'a> {
    /// Issuer name.
    pub issuer_name: &'a str,
    /// Origin info.
    pub origin_info: &'a str,
    /// Expiry as UNIX seconds.
    pub expires_at: u64,
    /// Claim type.
    pub claim_type: &'a str,
    /// Environment name.
    pub environment: &'a str,
}

/// `expires_at` for a challenge issued at `now`: `now + min_validity`
/// rounded **up** to the next whole hour (so 1–2 h for one hour).
pub fn expiry_for(now: u64, min_validity_secs: u64) -> u64 {
    now.saturating_add(min_validity_secs).div_ceil(3600).saturating_mul(3600)
}

impl Challenge {
    /// Creates and MACs a challenge.
    pub fn issue(secret: &ChallengeSecret, fields: &ChallengeFields<'_>) -> Self {
        let mut challenge = Self {
            token_type: TOKEN_TYPE_BLIND_RSA,
            issuer_name: fields.issuer_name.to_owned(),
            origin_info: fields.origin_info.to_owned(),
            expires_at: time::format_rfc3339(fields.expires_at),
            claim_type: fields.claim_type.to_owned(),
            environment: fields.environment.to_owned(),
            mac: String::new(),
        };
        challenge.mac = hex::encode(challenge.compute_mac(secret));
        challenge
    }

    /// The exact bytes the MAC covers (see the module docs).
    pub fn mac_input(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.issuer_name.len() + self.origin_info.len() + self.claim_type.len());
        out.extend_from_slice(MAC_DOMAIN);
        out.extend_from_slice(&self.token_type.to_be_bytes());
        for field in [&self.issuer_name, &self.origin_info, &self.expires_at, &self.claim_type, &self.environment] {
            out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        out
    }

    fn compute_mac(&self, secret: &ChallengeSecret) -> [u8; 32] {
        let mut mac = secret.0.clone();
        mac.update(&self.mac_input());
        mac.finalize().into_bytes().into()
    }

    /// Checks type, MAC (constant-time) and expiry at `now`; returns the
    /// expiry as UNIX seconds.
    pub fn verify(&self, secret: &ChallengeSecret, now: u64) -> Result<u64, PersonaError> {
        if self.token_type != TOKEN_TYPE_BLIND_RSA {
            return Err(PersonaError::InvalidField("token_type"));
        }
        let mut claimed = [0u8; 32];
        if self.mac.len() != 64 || hex::decode_to_slice(&self.mac, &mut claimed).is_err() {
            return Err(PersonaError::BadMac);
        }
        if !bool::from(self.compute_mac(secret).ct_eq(&claimed)) {
            return Err(PersonaError::BadMac);
        }
        let expires_at = time::parse_rfc3339(&self.expires_at).ok_or(PersonaError::InvalidField("expires_at"))?;
        if now >= expires_at {
            return Err(PersonaError::Expired);
        }
        Ok(expires_at)
    }

    /// base64url (unpadded) of the JSON, as the challenge endpoint returns it.
    pub fn encode(&self) -> String {
        b64::encode_unpadded(&serde_json::to_vec(self).unwrap_or_default())
    }

    /// Decodes what [`Challenge::encode`] produced.
    pub fn decode(text: &str) -> Result<Self, PersonaError> {
        let bytes = b64::decode(text).map_err(|_| PersonaError::Base64)?;
        serde_json::from_slice(&bytes).map_err(|_| PersonaError::Json)
    }
}

/// `token_input = 0x0002 ‖ SHA256(nonce_hex) ‖ SHA256(mac) ‖ SHA256(key_id)`,
/// hashing the UTF-8 **strings** exactly as Persona's Go SDK does.
pub fn token_input(nonce_hex: &str, mac: &str, key_id: &str) -> [u8; TOKEN_INPUT_LEN] {
    let mut out = [0u8; TOKEN_INPUT_LEN];
    let (ty, rest) = out.split_at_mut(2);
    ty.copy_from_slice(&TOKEN_TYPE_BLIND_RSA.to_be_bytes());
    for (chunk, text) in rest.chunks_exact_mut(32).zip([nonce_hex, mac, key_id]) {
        chunk.copy_from_slice(&Sha256::digest(text.as_bytes()));
    }
    out
}

/// A Persona Privacy Pass token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    /// 64 lowercase hex digits (32 random bytes).
    pub token_nonce: String,
    /// base64url (unpadded) of the 256-byte signature.
    pub signature: String,
    /// The key id string the client was given.
    pub key_id: String,
    /// The challenge object, echoed.
    pub challenge: Challenge,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("persona::Token")
            .field("token_nonce", &self.token_nonce)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A Persona token whose fields have been checked for shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedToken {
    /// The token as sent.
    pub token: Token,
    /// The decoded nonce.
    pub nonce: [u8; 32],
    /// The decoded signature.
    pub signature: Box<[u8; NK]>,
}

impl ParsedToken {
    /// The message the signature must cover.
    pub fn token_input(&self) -> [u8; TOKEN_INPUT_LEN] {
        token_input(&self.token.token_nonce, &self.token.challenge.mac, &self.token.key_id)
    }

    /// RSASSA-PSS-VERIFY (SHA-384, salt 48) of the signature over
    /// [`ParsedToken::token_input`] under `key`. The caller checks that
    /// `key_id` names `key` and verifies the challenge.
    pub fn verify_signature(&self, key: &IssuerPublicKey) -> Result<(), VerifyError> {
        self.verify_signature_with(key, key.rsa())
    }

    /// [`ParsedToken::verify_signature`] with the public operation done by
    /// `backend` (which must hold `key`'s RSA key: checked).
    pub fn verify_signature_with(
        &self,
        key: &IssuerPublicKey,
        backend: &(impl blind_rsa::RawVerifier + ?Sized),
    ) -> Result<(), VerifyError> {
        if backend.rsa_public_key() != key.rsa() {
            return Err(VerifyError);
        }
        blind_rsa::verify(backend, VARIANT, &blind_rsa::prepared(&self.token_input()), &self.signature[..])
    }
}

impl Token {
    /// base64url (unpadded) of the token JSON.
    pub fn encode(&self) -> String {
        b64::encode_unpadded(&serde_json::to_vec(self).unwrap_or_default())
    }

    /// Decodes and shape-checks a token (padding optional).
    pub fn decode(text: &str) -> Result<ParsedToken, PersonaError> {
        if text.len() > MAX_TOKEN_LEN * 4 / 3 + 4 {
            return Err(PersonaError::TooLarge);
        }
        let bytes = b64::decode(text).map_err(|_| PersonaError::Base64)?;
        Self::from_json(&bytes)
    }

    /// Shape-checks a token already out of its base64url (the token JSON).
    pub fn from_json(bytes: &[u8]) -> Result<ParsedToken, PersonaError> {
        if bytes.len() > MAX_TOKEN_LEN {
            return Err(PersonaError::TooLarge);
        }
        let token: Token = serde_json::from_slice(bytes).map_err(|_| PersonaError::Json)?;
        let mut nonce = [0u8; 32];
        let nonce_ok = token.token_nonce.len() == 64
            && token.token_nonce.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
            && hex::decode_to_slice(&token.token_nonce, &mut nonce).is_ok();
        if !nonce_ok {
            return Err(PersonaError::InvalidField("token_nonce"));
        }
        let signature = b64::decode(&token.signature).map_err(|_| PersonaError::InvalidField("signature"))?;
        let signature: [u8; NK] = signature.try_into().map_err(|_| PersonaError::InvalidField("signature"))?;
        if token.key_id.len() != 64 || !token.key_id.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(PersonaError::InvalidField("key_id"));
        }
        Ok(ParsedToken { token, nonce, signature: Box::new(signature) })
    }
}

/// Client-side state between [`begin_issuance`] and [`finalize_issuance`].
#[derive(Debug)]
pub struct IssuanceState {
    nonce_hex: String,
    key_id: String,
    challenge: Challenge,
    secret: BlindingSecret,
}

/// Client side, as Persona's Go SDK `IssuePrivacyPass` does it: a random
/// nonce as lowercase hex, the Persona `token_input`, blinded without a
/// Prepare step. Returns the `blinded-token` bytes to send with `key_id`.
///
/// Randomness is drawn in this order: nonce (32 bytes), PSS salt (48 bytes),
/// blinding factor `r`.
pub fn begin_issuance(
    key: &IssuerPublicKey,
    key_id: &str,
    challenge: &Challenge,
    rng: &mut impl CryptoRng,
) -> Result<(Vec<u8>, IssuanceState), BlindError> {
    let mut nonce = [0u8; 32];
    rng.fill_bytes(&mut nonce);
    let nonce_hex = hex::encode(nonce);
    let input = token_input(&nonce_hex, &challenge.mac, key_id);
    let (blinded, secret) = blind_rsa::blind(key.rsa(), VARIANT, &blind_rsa::prepared(&input), rng)?;
    Ok((blinded, IssuanceState { nonce_hex, key_id: key_id.to_owned(), challenge: challenge.clone(), secret }))
}

/// Unblinds the `blind-sig`, verifies it, and builds the token.
pub fn finalize_issuance(
    key: &IssuerPublicKey,
    state: &IssuanceState,
    blind_sig: &[u8],
) -> Result<Token, FinalizeError> {
    let input = token_input(&state.nonce_hex, &state.challenge.mac, &state.key_id);
    let sig = blind_rsa::finalize(key.rsa(), VARIANT, &blind_rsa::prepared(&input), blind_sig, &state.secret)?;
    Ok(Token {
        token_nonce: state.nonce_hex.clone(),
        signature: b64::encode_unpadded(&sig),
        key_id: state.key_id.clone(),
        challenge: state.challenge.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> ChallengeSecret {
        ChallengeSecret::new(vec![7u8; 32]).unwrap()
    }

    fn fields() -> ChallengeFields<'static> {
        ChallengeFields {
            issuer_name: "issuer.example/api/v1/privacy-passes",
            origin_info: "/api/privacy/v1/relays",
            expires_at: 1_779_127_200,
            claim_type: "age_over18_verified",
            environment: "sandbox",
        }
    }

    #[test]
    fn expiry_rounds_up_to_next_hour() {
        assert_eq!(expiry_for(1_779_123_600, 3600), 1_779_127_200); // on the hour: +1 h
        assert_eq!(expiry_for(1_779_123_601, 3600), 1_779_130_800); // just after: +2 h
    }

    #[test]
    fn mac_verifies_and_binds_every_field() {
        let c = Challenge::issue(&secret(), &fields());
        assert_eq!(c.verify(&secret(), 1_779_127_199), Ok(1_779_127_200));
        assert_eq!(c.verify(&secret(), 1_779_127_200), Err(PersonaError::Expired));
        let other = ChallengeSecret::new(vec![8u8; 32]).unwrap();
        assert_eq!(c.verify(&other, 0), Err(PersonaError::BadMac));
        let tamper: [fn(&mut Challenge); 5] = [
            |c| c.issuer_name.push('x'),
            |c| c.origin_info.push('x'),
            |c| c.expires_at = "2099-01-01T00:00:00Z".into(),
            |c| c.claim_type.push('x'),
            |c| c.environment = "production".into(),
        ];
        for t in tamper {
            let mut changed = c.clone();
            t(&mut changed);
            assert_eq!(changed.verify(&secret(), 0), Err(PersonaError::BadMac));
        }
    }

    #[test]
    fn mac_input_bytes_are_pinned() {
        let c = Challenge::issue(&secret(), &fields());
        let mut expected = b"blindpass persona challenge v1\x00\x02".to_vec();
        for f in [
            "issuer.example/api/v1/privacy-passes",
            "/api/privacy/v1/relays",
            "2026-05-18T18:00:00Z",
            "age_over18_verified",
            "sandbox",
        ] {
            expected.extend_from_slice(&(f.len() as u32).to_be_bytes());
            expected.extend_from_slice(f.as_bytes());
        }
        assert_eq!(c.mac_input(), expected);
    }

    #[test]
    fn challenge_round_trips_and_rejects_extra_fields() {
        let c = Challenge::issue(&secret(), &fields());
        assert_eq!(Challenge::decode(&c.encode()).unwrap(), c);
        let extra = b64::encode_unpadded(br#"{"token_type":2,"issuer_name":"a","origin_info":"b","expires_at":"c","claim_type":"d","environment":"e","mac":"f","x":1}"#);
        assert_eq!(Challenge::decode(&extra), Err(PersonaError::Json));
    }

    #[test]
    fn weak_secret_is_refused() {
        assert!(matches!(ChallengeSecret::new(vec![1; 31]), Err(PersonaError::WeakSecret)));
        assert_eq!(format!("{:?}", secret()), "ChallengeSecret(<redacted>)");
    }
}
