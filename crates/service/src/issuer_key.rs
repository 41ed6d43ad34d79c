//! The token-type seam: a key the node holds, and the operations each token
//! type's issuer and redeemer perform with it.
//!
//! A token type is a [`KeyMaterial`] variant holding its private key and one
//! arm in each `match` below; issuance, the key ring, the directory and
//! redemption take it from there.

use std::sync::Arc;

use blindpass_entropy::Entropy;
use blindpass_protocol::directory::DirectoryKey;
use blindpass_protocol::keys::TokenKeyId;
use blindpass_protocol::type2::blind_rsa::{self, BlindSignError};
use blindpass_protocol::type2::keys::IssuerPublicKey;
use blindpass_protocol::voprf::wire::VoprfTokenResponse;
use blindpass_protocol::voprf::{self, Suite, VoprfError};
use blindpass_protocol::wire::TOKEN_TYPE_BLIND_RSA;

use crate::IssuerKey;
use crate::issue_error::IssueError;

/// The token types blindpass issues and redeems, in the directory's order.
pub const TOKEN_TYPES: [u16; 3] = [TOKEN_TYPE_BLIND_RSA, Suite::P384.token_type(), Suite::Ristretto255.token_type()];

/// A type-2 private key, wherever it is kept: RSASP1 with its fault check,
/// and the public operation for signature checks.
pub trait RsaSigner: blind_rsa::RawSigner + blind_rsa::RawVerifier + Send + Sync + std::fmt::Debug {}

impl<T: blind_rsa::RawSigner + blind_rsa::RawVerifier + Send + Sync + std::fmt::Debug> RsaSigner for T {}

/// One usable issuer key: its record and its parsed key pair.
pub struct LoadedKey {
    /// The stored record (state, times), without re-reading the store.
    pub record: IssuerKey,
    /// The key pair, by token type.
    pub material: KeyMaterial,
}

/// The key pair of one token type (private halves redacted in `Debug`).
#[derive(Clone, Debug)]
pub enum KeyMaterial {
    /// Token type 2: Blind RSA (RFC 9474 RSABSSA-SHA384-PSS-Deterministic),
    /// with its public key's two encodings and two ids.
    BlindRsa {
        /// The public key.
        public: Box<IssuerPublicKey>,
        /// The private key: aws-lc in memory, or an object in a PKCS#11
        /// token ([`crate::custody`]).
        signer: Arc<dyn RsaSigner>,
    },
    /// Token types 1 and 5: a VOPRF key (RFC 9497, RFC 9578 §5).
    Voprf(Arc<voprf::SecretKey>),
}

impl std::fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedKey").field("record", &self.record).field("material", &self.material).finish()
    }
}

impl KeyMaterial {
    /// The RFC 9578 token type.
    pub fn token_type(&self) -> u16 {
        match self {
            Self::BlindRsa { .. } => TOKEN_TYPE_BLIND_RSA,
            Self::Voprf(key) => key.suite().token_type(),
        }
    }

    /// The RFC 9578 `token_key_id`: SHA-256 of the key's directory encoding.
    pub fn token_key_id(&self) -> TokenKeyId {
        match self {
            Self::BlindRsa { public, .. } => public.token_key_id(),
            Self::Voprf(key) => key.public_key().token_key_id(),
        }
    }
}

impl LoadedKey {
    /// The RFC 9578 token type this key issues.
    pub fn token_type(&self) -> u16 {
        self.material.token_type()
    }

    /// The RFC 9578 `token_key_id`.
    pub fn token_key_id(&self) -> TokenKeyId {
        self.material.token_key_id()
    }

    /// Every id the key answers to: its `token_key_id`, and for type 2 also
    /// Persona's id (SHA-256 of the `rsaEncryption` SPKI).
    pub fn ids(&self) -> Vec<TokenKeyId> {
        match &self.material {
            KeyMaterial::BlindRsa { public, .. } => vec![public.token_key_id(), public.persona_key_id()],
            KeyMaterial::Voprf(key) => vec![key.public_key().token_key_id()],
        }
    }

    /// The type-2 public key, for a Blind RSA key.
    pub fn blind_rsa(&self) -> Option<&IssuerPublicKey> {
        match &self.material {
            KeyMaterial::BlindRsa { public, .. } => Some(public),
            KeyMaterial::Voprf(_) => None,
        }
    }

    /// The VOPRF key, for a type 1 or 5 key.
    pub fn voprf(&self) -> Option<&voprf::SecretKey> {
        match &self.material {
            KeyMaterial::BlindRsa { .. } => None,
            KeyMaterial::Voprf(key) => Some(key),
        }
    }

    /// What does a type-2 key's public operation for a signature check: the
    /// aws-lc key (about four times faster than the pure one), or the public
    /// key of a key kept in a PKCS#11 token.
    pub fn verifier(&self) -> Option<&dyn blind_rsa::RawVerifier> {
        match &self.material {
            KeyMaterial::BlindRsa { signer, .. } => Some(&**signer),
            KeyMaterial::Voprf(_) => None,
        }
    }

    /// The key's RFC 9578 `token-key` encoding (directory and challenges):
    /// the RSASSA-PSS SPKI for type 2, the serialized element for 1 and 5.
    pub fn token_key(&self) -> Vec<u8> {
        match &self.material {
            KeyMaterial::BlindRsa { public, .. } => public.rfc9578_spki().to_vec(),
            KeyMaterial::Voprf(key) => key.public_key().as_bytes().to_vec(),
        }
    }

    /// The key's RFC 9578 directory entry.
    pub(crate) fn directory_entry(&self) -> DirectoryKey {
        let not_before = Some(self.record.not_before.max(0) as u64);
        match &self.material {
            KeyMaterial::BlindRsa { public, .. } => DirectoryKey::type2(public.as_ref(), not_before),
            KeyMaterial::Voprf(key) => DirectoryKey::voprf(key.public_key(), not_before),
        }
    }

    /// RFC 9578 `truncated_token_key_id`.
    pub fn truncated_id(&self) -> u8 {
        self.token_key_id().truncated()
    }

    /// True when the key may issue at `now` (see [`crate::lifecycle`]).
    pub(crate) fn issues_at(&self, now: i64) -> bool {
        // The overlap plays no part in issuing.
        crate::lifecycle::Lifecycle { overlap_secs: 0 }.can_issue(&self.record, now).is_ok()
    }

    /// The issuer's operation on one blinded element, giving the token
    /// type's TokenResponse: BlindSign for type 2 (RFC 9474 §4.3, with its
    /// fault check); BlindEvaluate with its DLEQ proof for types 1 and 5.
    /// CPU-bound: call it off the async threads.
    pub fn evaluate(&self, blinded: &[u8], entropy: &dyn Entropy) -> Result<Vec<u8>, IssueError> {
        match &self.material {
            KeyMaterial::BlindRsa { signer, .. } => blind_rsa::blind_sign(&**signer, blinded).map_err(|e| match e {
                BlindSignError::WrongLength { expected, found } => IssueError::WrongLength { expected, found },
                BlindSignError::OutOfRange => IssueError::OutOfRange,
                BlindSignError::SigningFailure => {
                    tracing::error!(key_id = %self.record.id, "RSA signing failed its fault check");
                    IssueError::Internal("signing failure".into())
                }
                BlindSignError::Unavailable => IssueError::SignerUnavailable,
            }),
            KeyMaterial::Voprf(key) => {
                let expected = key.suite().element_len();
                if blinded.len() != expected {
                    return Err(IssueError::WrongLength { expected, found: blinded.len() });
                }
                let mut evaluation = self.evaluate_many(&[blinded.to_vec()], entropy)?;
                let evaluated_element = evaluation.evaluated_elements.pop().unwrap_or_default();
                Ok(VoprfTokenResponse { evaluated_element, proof: evaluation.proof }.encode())
            }
        }
    }

    /// BlindEvaluate over many elements with one batched DLEQ proof (an
    /// amortized batch of token type 1 or 5). CPU-bound.
    pub(crate) fn evaluate_many(
        &self,
        blinded: &[Vec<u8>],
        entropy: &dyn Entropy,
    ) -> Result<voprf::Evaluation, IssueError> {
        let key = self.voprf().ok_or(IssueError::UnknownKey)?;
        key.evaluate(blinded, &mut entropy.rng()).map_err(|e| match e {
            VoprfError::InvalidElement => IssueError::InvalidElement,
            VoprfError::Batch => IssueError::InvalidElement,
            other => {
                tracing::error!(key_id = %self.record.id, error = %other, "VOPRF evaluation failed");
                IssueError::Internal("evaluation failure".into())
            }
        })
    }
}
