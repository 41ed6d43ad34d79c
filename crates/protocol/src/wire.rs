//! RFC 9578 / RFC 9577 wire structures every token type shares: the
//! `TokenChallenge`, `token_input`, token type ids, media types, and the
//! bounds-checked reader the per-type structures (`type2::wire`,
//! `voprf::wire`) are decoded with.
//!
//! Every decoder takes untrusted bytes and returns a [`WireError`], never
//! panics, and rejects trailing bytes.

use sha2::{Digest, Sha256};

use crate::keys::TokenKeyId;

/// Token type 0x0002, "Blind RSA (2048-bit)" (RFC 9578 §8.2.2).
pub const TOKEN_TYPE_BLIND_RSA: u16 = 0x0002;
/// `Nid`: token key id length.
pub const NID: usize = 32;
/// Nonce length.
pub const NONCE_LEN: usize = 32;
/// `token_input` length: 2 + 32 + 32 + 32.
pub const TOKEN_INPUT_LEN: usize = 2 + NONCE_LEN + 32 + NID;

/// Media type of a TokenRequest (RFC 9578 §8.3).
pub const MEDIA_TYPE_TOKEN_REQUEST: &str = "application/private-token-request";
/// Media type of a TokenResponse.
pub const MEDIA_TYPE_TOKEN_RESPONSE: &str = "application/private-token-response";
/// Media type of the issuer directory.
pub const MEDIA_TYPE_DIRECTORY: &str = "application/private-token-issuer-directory";

/// Bytes that are not a valid structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Wrong total length.
    #[error("expected {expected} bytes, found {found}")]
    WrongLength {
        /// Required length.
        expected: usize,
        /// Length found.
        found: usize,
    },
    /// A token type other than 0x0002.
    #[error("unsupported token type {0:#06x}")]
    UnsupportedTokenType(u16),
    /// The input ended early.
    #[error("truncated structure")]
    Truncated,
    /// Bytes after the structure.
    #[error("trailing bytes after structure")]
    TrailingData,
    /// A field violates its constraints (empty issuer_name, context of a
    /// length other than 0 or 32, non-UTF-8 names).
    #[error("invalid field: {0}")]
    InvalidField(&'static str),
}

/// RFC 9577 §2.1.1:
/// ```text
/// struct {
///     uint16_t token_type;
///     opaque issuer_name<1..2^16-1>;
///     opaque redemption_context<0..32>;
///     opaque origin_info<0..2^16-1>;
/// } TokenChallenge;
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenChallenge {
    /// Token type.
    pub token_type: u16,
    /// Issuer name, `host[:port]`.
    pub issuer_name: String,
    /// Empty, or 32 bytes.
    pub redemption_context: Vec<u8>,
    /// Empty, or a comma-separated list of origin names.
    pub origin_info: String,
}

impl TokenChallenge {
    /// Builds a challenge, checking the field constraints.
    pub fn new(
        token_type: u16,
        issuer_name: &str,
        redemption_context: &[u8],
        origin_info: &str,
    ) -> Result<Self, WireError> {
        let challenge = Self {
            token_type,
            issuer_name: issuer_name.to_owned(),
            redemption_context: redemption_context.to_vec(),
            origin_info: origin_info.to_owned(),
        };
        challenge.check()?;
        Ok(challenge)
    }

    fn check(&self) -> Result<(), WireError> {
        if self.issuer_name.is_empty() || self.issuer_name.len() > usize::from(u16::MAX) {
            return Err(WireError::InvalidField("issuer_name"));
        }
        if !matches!(self.redemption_context.len(), 0 | 32) {
            return Err(WireError::InvalidField("redemption_context"));
        }
        if self.origin_info.len() > usize::from(u16::MAX) {
            return Err(WireError::InvalidField("origin_info"));
        }
        Ok(())
    }

    /// Serialises the struct.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 2 + self.issuer_name.len() + 1 + 32 + 2 + self.origin_info.len());
        out.extend_from_slice(&self.token_type.to_be_bytes());
        put_u16_prefixed(&mut out, self.issuer_name.as_bytes());
        // Checked by `check`: 0 or 32.
        out.push(self.redemption_context.len() as u8);
        out.extend_from_slice(&self.redemption_context);
        put_u16_prefixed(&mut out, self.origin_info.as_bytes());
        out
    }

    /// Parses the struct (any token type; callers decide what they accept).
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Cursor(bytes);
        let token_type = r.u16()?;
        let issuer = r.u16_prefixed()?;
        let context_len = usize::from(r.u8()?);
        let context = r.take(context_len)?;
        let origin = r.u16_prefixed()?;
        r.finish()?;
        let challenge = Self {
            token_type,
            issuer_name: utf8(issuer, "issuer_name")?,
            redemption_context: context.to_vec(),
            origin_info: utf8(origin, "origin_info")?,
        };
        challenge.check()?;
        Ok(challenge)
    }

    /// `challenge_digest = SHA256(TokenChallenge)` (RFC 9577 §2.2.1).
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// The origin names listed in `origin_info`.
    pub fn origins(&self) -> impl Iterator<Item = &str> {
        self.origin_info.split(',').filter(|s| !s.is_empty())
    }
}

/// RFC 9578 §6.1:
/// `token_type ‖ nonce ‖ challenge_digest ‖ token_key_id`, the 98-byte
/// `token_input` every RFC 9578 token type authenticates.
pub(crate) fn token_input_of(
    token_type: u16,
    nonce: &[u8; NONCE_LEN],
    challenge_digest: &[u8; 32],
    token_key_id: &TokenKeyId,
) -> [u8; TOKEN_INPUT_LEN] {
    let mut out = [0u8; TOKEN_INPUT_LEN];
    let (ty, rest) = out.split_at_mut(2);
    ty.copy_from_slice(&token_type.to_be_bytes());
    let (n, rest) = rest.split_at_mut(NONCE_LEN);
    n.copy_from_slice(nonce);
    let (d, k) = rest.split_at_mut(32);
    d.copy_from_slice(challenge_digest);
    k.copy_from_slice(&token_key_id.0);
    out
}

pub(crate) fn put_u16_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    // Lengths are checked against u16::MAX before encoding.
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn utf8(bytes: &[u8], field: &'static str) -> Result<String, WireError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| WireError::InvalidField(field))
}

/// A bounds-checked reader over TLS presentation-language bytes.
pub(crate) struct Cursor<'a>(pub(crate) &'a [u8]);

impl<'a> Cursor<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        self.take(N)?.try_into().map_err(|_| WireError::Truncated)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(u8::from_be_bytes(self.array::<1>()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array::<2>()?))
    }

    pub(crate) fn u16_prefixed(&mut self) -> Result<&'a [u8], WireError> {
        let len = usize::from(self.u16()?);
        self.take(len)
    }

    pub(crate) fn finish(&self) -> Result<(), WireError> {
        if self.0.is_empty() { Ok(()) } else { Err(WireError::TrailingData) }
    }
}
