//! Why a key operation failed: shared by the key ring, custody and the use
//! cases that load or make keys, so none of them needs another to say it.

use crate::StoreError;

/// Key management failures.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored key could not be parsed, or a key could not be generated.
    #[error("issuer key error: {0}")]
    Key(String),
    /// Key material could not be opened with the configured key-encryption
    /// key (missing, wrong, or the value was tampered with).
    #[error(transparent)]
    Kek(#[from] crate::kek::KekError),
    /// No key with that id.
    #[error("no issuer key {0}")]
    NotFound(String),
    /// A token type blindpass does not issue, or one this node has not
    /// enabled.
    #[error("token type {0} is not enabled")]
    UnsupportedTokenType(u16),
}
