//! RFC 9578 wire structures of token type 2 (Blind RSA 2048): its
//! `TokenRequest`, `TokenResponse` and `Token`. Every decoder takes untrusted
//! bytes and returns a [`WireError`], never panics, and rejects trailing
//! bytes.

use crate::keys::TokenKeyId;
use crate::wire::{Cursor, NID, NONCE_LEN, TOKEN_INPUT_LEN, TOKEN_TYPE_BLIND_RSA, WireError, token_input_of};

/// `Nk` for type 2: authenticator / modulus length.
pub const NK: usize = 256;
/// TokenRequest length for type 2.
pub const TOKEN_REQUEST_LEN: usize = 2 + 1 + NK;
/// TokenResponse length for type 2.
pub const TOKEN_RESPONSE_LEN: usize = NK;
/// Token length for type 2.
pub const TOKEN_LEN: usize = TOKEN_INPUT_LEN + NK;

/// ```text
/// struct {
///    uint16_t token_type = 0x0002;
///    uint8_t truncated_token_key_id;
///    uint8_t blinded_msg[Nk];
/// } TokenRequest;
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// Last byte of the token key id.
    pub truncated_token_key_id: u8,
    /// The blinded message.
    pub blinded_msg: Box<[u8; NK]>,
}

impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRequest")
            .field("truncated_token_key_id", &self.truncated_token_key_id)
            .finish_non_exhaustive()
    }
}

impl TokenRequest {
    /// Serialises to 259 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(TOKEN_REQUEST_LEN);
        out.extend_from_slice(&TOKEN_TYPE_BLIND_RSA.to_be_bytes());
        out.push(self.truncated_token_key_id);
        out.extend_from_slice(&self.blinded_msg[..]);
        out
    }

    /// Parses exactly 259 bytes of type 0x0002. Each failure is one of the
    /// three RFC 9578 §6.2 reasons for a 422.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Cursor(bytes);
        let token_type = r.u16()?;
        if token_type != TOKEN_TYPE_BLIND_RSA {
            return Err(WireError::UnsupportedTokenType(token_type));
        }
        if bytes.len() != TOKEN_REQUEST_LEN {
            return Err(WireError::WrongLength { expected: TOKEN_REQUEST_LEN, found: bytes.len() });
        }
        let truncated_token_key_id = r.u8()?;
        let blinded_msg = Box::new(r.array::<NK>()?);
        r.finish()?;
        Ok(Self { truncated_token_key_id, blinded_msg })
    }
}

/// RFC 9578 §6.2: `struct { uint8_t blind_sig[Nk]; } TokenResponse;`
#[derive(Clone, PartialEq, Eq)]
pub struct TokenResponse {
    /// The blind signature.
    pub blind_sig: Box<[u8; NK]>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenResponse { .. }")
    }
}

impl TokenResponse {
    /// Serialises to 256 bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.blind_sig.to_vec()
    }

    /// Parses exactly 256 bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let blind_sig: [u8; NK] = bytes
            .try_into()
            .map_err(|_| WireError::WrongLength { expected: TOKEN_RESPONSE_LEN, found: bytes.len() })?;
        Ok(Self { blind_sig: Box::new(blind_sig) })
    }
}

/// RFC 9577 §2.2 / RFC 9578 §6.3:
/// ```text
/// struct {
///     uint16_t token_type = 0x0002;
///     uint8_t nonce[32];
///     uint8_t challenge_digest[32];
///     uint8_t token_key_id[32];
///     uint8_t authenticator[Nk];
/// } Token;
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// Client nonce; the double-spend key.
    pub nonce: [u8; NONCE_LEN],
    /// SHA-256 of the TokenChallenge.
    pub challenge_digest: [u8; 32],
    /// Full token key id.
    pub token_key_id: TokenKeyId,
    /// The RSASSA-PSS signature over `token_input`.
    pub authenticator: Box<[u8; NK]>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("nonce", &hex::encode(self.nonce))
            .field("token_key_id", &self.token_key_id)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// `token_input = token_type ‖ nonce ‖ challenge_digest ‖ token_key_id`
    /// (98 bytes): the message the authenticator signs.
    pub fn token_input(&self) -> [u8; TOKEN_INPUT_LEN] {
        token_input(&self.nonce, &self.challenge_digest, &self.token_key_id)
    }

    /// Serialises to 354 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(TOKEN_LEN);
        out.extend_from_slice(&self.token_input());
        out.extend_from_slice(&self.authenticator[..]);
        out
    }

    /// Parses exactly 354 bytes of type 0x0002.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Cursor(bytes);
        let token_type = r.u16()?;
        if token_type != TOKEN_TYPE_BLIND_RSA {
            return Err(WireError::UnsupportedTokenType(token_type));
        }
        if bytes.len() != TOKEN_LEN {
            return Err(WireError::WrongLength { expected: TOKEN_LEN, found: bytes.len() });
        }
        let nonce = r.array::<NONCE_LEN>()?;
        let challenge_digest = r.array::<32>()?;
        let token_key_id = TokenKeyId(r.array::<NID>()?);
        let authenticator = Box::new(r.array::<NK>()?);
        r.finish()?;
        Ok(Self { nonce, challenge_digest, token_key_id, authenticator })
    }
}

/// Builds the 98-byte type-2 `token_input`.
pub fn token_input(
    nonce: &[u8; NONCE_LEN],
    challenge_digest: &[u8; 32],
    token_key_id: &TokenKeyId,
) -> [u8; TOKEN_INPUT_LEN] {
    token_input_of(TOKEN_TYPE_BLIND_RSA, nonce, challenge_digest, token_key_id)
}
