//! The issuer name every node on one store shares.
//!
//! RFC 9577 challenges carry the issuer's name, and a node accepts only
//! tokens whose challenge names it. Nodes of one deployment listen on
//! different addresses, so a name derived from each node's own address would
//! split them: a token issued through one node would be refused at another.
//! The name is therefore stored once, like the server secrets: the first node
//! to start on a store writes it (its `--issuer-name`, or else its listen
//! address), and every later node adopts it. A node started with a different
//! `--issuer-name` refuses to start rather than split the deployment; the
//! operator changes the name for all nodes at once with
//! `blindpass issuer-name set`.

use blindpass_store::{Rewrap, RewrapTarget, Store, StoreError};

/// The setting that holds the issuer name.
pub(crate) const ISSUER_NAME_SETTING: &str = "issuer_name";

/// The longest issuer name (a host name with a port fits easily).
pub(crate) const MAX_ISSUER_NAME_LEN: usize = 255;

/// Why the issuer name could not be agreed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IssuerNameError {
    /// The configured name differs from the one the store holds.
    #[error(
        "this store's issuer name is {stored:?} but this node is configured with {configured:?}: every node on a store \
         must use one name (drop --issuer-name to adopt the stored one, or change it for all nodes with \
         `blindpass issuer-name set`)"
    )]
    Mismatch {
        /// The name in the store.
        stored: String,
        /// The name this node was given.
        configured: String,
    },
    /// Not a usable name (empty, too long, or not printable ASCII).
    #[error("issuer name {0:?} must be 1 to 255 printable ASCII characters without spaces, quotes or commas")]
    Invalid(String),
    /// The stored value is not text.
    #[error("the stored issuer name is not valid text")]
    Corrupt,
    /// Another node changed the name meanwhile.
    #[error("the issuer name changed meanwhile; try again")]
    Changed,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks that `name` can travel in a `WWW-Authenticate` challenge.
pub(crate) fn validate_issuer_name(name: &str) -> Result<(), IssuerNameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_ISSUER_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b'\\'));
    if ok { Ok(()) } else { Err(IssuerNameError::Invalid(name.to_owned())) }
}

/// The issuer name of the deployment on `store`: the stored one, written
/// first by whichever node gets there (`configured`, or else `fallback`).
/// A `configured` name that differs from the stored one is an error.
pub async fn agree_issuer_name(
    store: &dyn Store,
    configured: Option<&str>,
    fallback: &str,
) -> Result<String, IssuerNameError> {
    let proposal = configured.unwrap_or(fallback);
    validate_issuer_name(proposal)?;
    let stored = store.setting_get_or_insert(ISSUER_NAME_SETTING, proposal.as_bytes()).await?;
    let stored = String::from_utf8(stored).map_err(|_| IssuerNameError::Corrupt)?;
    match configured {
        Some(configured) if configured != stored => {
            Err(IssuerNameError::Mismatch { stored, configured: configured.to_owned() })
        }
        _ => Ok(stored),
    }
}

/// The stored issuer name, if a node has started on `store`.
pub async fn stored_issuer_name(store: &dyn Store) -> Result<Option<String>, IssuerNameError> {
    let settings = store.settings_with_prefix(ISSUER_NAME_SETTING).await?;
    match settings.into_iter().find(|(name, _)| name == ISSUER_NAME_SETTING) {
        Some((_, value)) => String::from_utf8(value).map(Some).map_err(|_| IssuerNameError::Corrupt),
        None => Ok(None),
    }
}

/// Changes the stored issuer name (compare-and-set); returns the old one.
/// Running nodes keep the name they started with: restart them all.
pub async fn set_issuer_name(store: &dyn Store, name: &str) -> Result<String, IssuerNameError> {
    validate_issuer_name(name)?;
    let old = store.setting_get_or_insert(ISSUER_NAME_SETTING, name.as_bytes()).await?;
    if old != name.as_bytes() {
        let change = Rewrap {
            target: RewrapTarget::Setting(ISSUER_NAME_SETTING.into()),
            old: old.clone(),
            new: name.as_bytes().to_vec(),
        };
        store.rewrap(&[change]).await.map_err(|e| match e {
            StoreError::Conflict(_) => IssuerNameError::Changed,
            other => IssuerNameError::Store(other),
        })?;
    }
    String::from_utf8(old).map_err(|_| IssuerNameError::Corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_travel_in_a_challenge_are_refused() {
        for bad in ["", "a b", "a\"b", "a,b", "é", &"a".repeat(256)] {
            assert!(validate_issuer_name(bad).is_err(), "{bad:?}");
        }
        for good in ["issuer.example", "127.0.0.1:8080", "[::1]:8080", "pp.example.com"] {
            assert!(validate_issuer_name(good).is_ok(), "{good:?}");
        }
    }
}
