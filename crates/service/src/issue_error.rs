//! Why an issuance was refused: shared by issuance and the keys that
//! evaluate (`issuer_key`), so neither needs the other to say it.

use crate::{Cause, KeyError, StoreError};

/// Why an issuance was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// No key answers to this id.
    #[error("unknown key id")]
    UnknownKey,
    /// The key belongs to the other environment.
    #[error("key belongs to another environment")]
    WrongEnvironment,
    /// The key exists but does not issue (retired, rotated out, not yet valid).
    #[error("key cannot issue: {0:?}")]
    KeyNotActive(crate::lifecycle::NotIssuing),
    /// The blinded message is not the modulus length.
    #[error("blinded token must be {expected} bytes, found {found}")]
    WrongLength {
        /// Modulus length.
        expected: usize,
        /// Length received.
        found: usize,
    },
    /// The blinded message is not below the modulus.
    #[error("blinded token is out of range for the key")]
    OutOfRange,
    /// A VOPRF blinded element is not a valid element of the key's group.
    #[error("blinded element is not a valid group element")]
    InvalidElement,
    /// A token type this node does not issue.
    #[error("unsupported token type {0:#06x}")]
    UnsupportedTokenType(u16),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Every signing thread is busy and the queue is full (retry).
    #[error("the signing queue is full")]
    Busy,
    /// The key's HSM token cannot be reached now (retry).
    #[error("the key's PKCS#11 token is unavailable")]
    SignerUnavailable,
    /// Keys could not be loaded, or signing failed its fault check.
    #[error("internal issuance failure: {0}")]
    Internal(#[source] Cause),
}

impl IssueError {
    /// The `reason` label of `issuance_key_error_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            IssueError::UnknownKey => "unknown_key",
            IssueError::WrongEnvironment => "wrong_environment",
            IssueError::KeyNotActive(_) => "key_not_active",
            IssueError::WrongLength { .. } => "wrong_length",
            IssueError::OutOfRange => "out_of_range",
            IssueError::InvalidElement => "invalid_element",
            IssueError::UnsupportedTokenType(_) => "unsupported_token_type",
            IssueError::Store(_) => "store",
            IssueError::Busy => "busy",
            IssueError::SignerUnavailable => "signer_unavailable",
            IssueError::Internal(_) => "internal",
        }
    }
}

impl From<crate::PoolError> for IssueError {
    fn from(e: crate::PoolError) -> Self {
        match e {
            crate::PoolError::Busy => IssueError::Busy,
            crate::PoolError::Failed => IssueError::Internal("a signing job failed".into()),
        }
    }
}

impl From<KeyError> for IssueError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Store(s) => IssueError::Store(s),
            other => IssueError::Internal(Cause::of(other)),
        }
    }
}
