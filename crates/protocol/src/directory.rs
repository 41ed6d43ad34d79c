//! The RFC 9578 §4 issuer directory
//! (`GET /.well-known/private-token-issuer-directory`).

use serde::{Deserialize, Serialize};

use crate::b64;
use crate::rsa::KeyError;
use crate::type2::keys::IssuerPublicKey;
use crate::wire::TOKEN_TYPE_BLIND_RSA;

/// Well-known path of the directory.
pub const WELL_KNOWN_PATH: &str = "/.well-known/private-token-issuer-directory";

/// The directory object. Unknown members are ignored when parsing, so newer
/// issuers stay readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerDirectory {
    /// Absolute URL, or a URL relative to the directory.
    #[serde(rename = "issuer-request-uri")]
    pub issuer_request_uri: String,
    /// Keys in order of preference.
    #[serde(rename = "token-keys")]
    pub token_keys: Vec<DirectoryKey>,
}

/// One `token-keys` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryKey {
    /// Token type, e.g. 2.
    #[serde(rename = "token-type")]
    pub token_type: u16,
    /// base64url (with padding) of the token key encoding.
    #[serde(rename = "token-key")]
    pub token_key: String,
    /// UNIX seconds before which clients should not use the key.
    #[serde(rename = "not-before", default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<u64>,
}

/// A directory that is not valid JSON of the right shape.
#[derive(Debug, thiserror::Error)]
#[error("malformed issuer directory: {0}")]
pub struct DirectoryError(#[from] serde_json::Error);

impl IssuerDirectory {
    /// Parses directory JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DirectoryError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// Serialises to JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a struct of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The first key of `suite` usable at `now`, decoded.
    pub fn preferred_voprf_key(&self, suite: crate::voprf::Suite, now: u64) -> Option<crate::voprf::PublicKey> {
        self.token_keys
            .iter()
            .filter(|k| k.token_type == suite.token_type() && k.not_before.is_none_or(|nb| nb <= now))
            .find_map(|k| k.decode_voprf().ok())
    }

    /// The first type-2 key usable at `now` (RFC 9578 §4: the first key with
    /// no `not-before`, or one in the past), decoded.
    pub fn preferred_type2_key(&self, now: u64) -> Option<IssuerPublicKey> {
        self.token_keys
            .iter()
            .filter(|k| k.token_type == TOKEN_TYPE_BLIND_RSA && k.not_before.is_none_or(|nb| nb <= now))
            .find_map(|k| k.decode_type2().ok())
    }
}

impl DirectoryKey {
    /// The entry for a type-2 key.
    pub fn type2(key: &IssuerPublicKey, not_before: Option<u64>) -> Self {
        Self { token_type: TOKEN_TYPE_BLIND_RSA, token_key: b64::encode_padded(key.rfc9578_spki()), not_before }
    }

    /// The entry for a VOPRF key (type 1 or 5): its serialized element.
    pub fn voprf(key: &crate::voprf::PublicKey, not_before: Option<u64>) -> Self {
        Self { token_type: key.suite().token_type(), token_key: b64::encode_padded(key.as_bytes()), not_before }
    }

    /// Decodes a type 1 or 5 entry's serialized element.
    pub fn decode_voprf(&self) -> Result<crate::voprf::PublicKey, crate::voprf::VoprfError> {
        let suite =
            crate::voprf::Suite::of_token_type(self.token_type).ok_or(crate::voprf::VoprfError::InvalidPublicKey)?;
        let bytes = b64::decode(&self.token_key).map_err(|_| crate::voprf::VoprfError::InvalidPublicKey)?;
        crate::voprf::PublicKey::from_bytes(suite, &bytes)
    }

    /// Decodes a type-2 entry's RSASSA-PSS SPKI.
    pub fn decode_type2(&self) -> Result<IssuerPublicKey, KeyError> {
        if self.token_type != TOKEN_TYPE_BLIND_RSA {
            return Err(KeyError::UnsupportedAlgorithm);
        }
        let der = b64::decode(&self.token_key).map_err(|_| KeyError::Pem)?;
        IssuerPublicKey::from_rfc9578_spki(&der)
    }
}
