//! The token-type seam: a key the node holds, and the one operation each
//! token type's issuer performs with it.
//!
//! A new token type (VOPRF types 1 and 5, say) adds a [`KeyMaterial`]
//! variant holding its private key, a protocol module with its evaluation,
//! and one arm in each `match` below; issuance, the key ring and the
//! directory take it from there.

use std::sync::Arc;

use blindpass_protocol::blind_rsa::{self, BlindSignError};
use blindpass_protocol::keys::IssuerPublicKey;
use blindpass_protocol::wire::TOKEN_TYPE_BLIND_RSA;
use blindpass_rsa::RsaPrivateKey;

use crate::IssuerKey;
use crate::issue::IssueError;

/// One usable issuer key: its record and its parsed key pair.
pub struct LoadedKey {
    /// The stored record (state, times), without re-reading the store.
    pub record: IssuerKey,
    /// The public key with both ids.
    pub public: IssuerPublicKey,
    /// The private half, by token type.
    pub material: KeyMaterial,
}

/// The private key of one token type (redacted in `Debug`).
#[derive(Clone, Debug)]
pub enum KeyMaterial {
    /// Token type 2: Blind RSA (RFC 9474 RSABSSA-SHA384-PSS-Deterministic).
    BlindRsa(Arc<RsaPrivateKey>),
}

impl std::fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedKey").field("record", &self.record).field("public", &self.public).finish()
    }
}

impl LoadedKey {
    /// The RFC 9578 token type this key issues.
    pub fn token_type(&self) -> u16 {
        match self.material {
            KeyMaterial::BlindRsa(_) => TOKEN_TYPE_BLIND_RSA,
        }
    }

    /// What does this key's public operation for a signature check: the
    /// aws-lc key (about four times faster than the pure one).
    pub fn verifier(&self) -> &dyn blind_rsa::RawVerifier {
        match &self.material {
            KeyMaterial::BlindRsa(signer) => &**signer,
        }
    }

    /// RFC 9578 `truncated_token_key_id`.
    pub fn truncated_id(&self) -> u8 {
        self.public.truncated_token_key_id()
    }

    /// True when the key may issue at `now` (see [`crate::lifecycle`]).
    pub fn issues_at(&self, now: i64) -> bool {
        // The overlap plays no part in issuing.
        crate::lifecycle::Lifecycle { overlap_secs: 0 }.can_issue(&self.record, now).is_ok()
    }

    /// The issuer's operation on one blinded element: BlindSign for type 2
    /// (RFC 9474 §4.3, with its fault check). CPU-bound: call it off the
    /// async threads.
    pub fn evaluate(&self, blinded: &[u8]) -> Result<Vec<u8>, IssueError> {
        match &self.material {
            KeyMaterial::BlindRsa(signer) => blind_rsa::blind_sign(&**signer, blinded).map_err(|e| match e {
                BlindSignError::WrongLength { expected, found } => IssueError::WrongLength { expected, found },
                BlindSignError::OutOfRange => IssueError::OutOfRange,
                BlindSignError::SigningFailure => {
                    tracing::error!(key_id = %self.record.id, "RSA signing failed its fault check");
                    IssueError::Internal("signing failure".into())
                }
            }),
        }
    }
}
