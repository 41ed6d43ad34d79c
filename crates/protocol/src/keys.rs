//! Token key ids (`Nid` = 32 bytes, SHA-256 of a key's encoding), shared by
//! every token type.

use sha2::{Digest, Sha256};

/// A 32-byte key id: SHA-256 of a public key encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenKeyId(pub [u8; 32]);

impl TokenKeyId {
    /// SHA-256 of `encoding`.
    pub fn of(encoding: &[u8]) -> Self {
        Self(Sha256::digest(encoding).into())
    }

    /// The RFC 9578 §6.1 `truncated_token_key_id`: the **last** byte.
    pub fn truncated(&self) -> u8 {
        self.0[31]
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Result<Self, KeyIdError> {
        if text.len() != 64 {
            return Err(KeyIdError);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).map_err(|_| KeyIdError)?;
        Ok(Self(out))
    }
}

impl std::fmt::Debug for TokenKeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKeyId({})", self.to_hex())
    }
}

impl std::fmt::Display for TokenKeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A key id that is not 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("key id must be 64 hex digits")]
pub struct KeyIdError;
