//! The RFC 9577 challenge a relay offers in a context window: its
//! redemption context is an HMAC of environment, claim type and the window,
//! recomputed rather than stored. Shared by the challenge the 401 offers and
//! the redemption that checks a token's digest against it.

use blindpass_protocol::wire::TokenChallenge;

use crate::secrets::Secrets;
use crate::{RedeemError, Relay};

/// The challenge of `token_type` for `relay` in context window `window`,
/// naming `issuer_name`.
pub(crate) fn rfc_challenge(
    secrets: &Secrets,
    issuer_name: &str,
    relay: &Relay,
    window: i64,
    token_type: u16,
) -> Result<TokenChallenge, RedeemError> {
    let context = secrets.context.tag_parts(&[
        b"rfc9577 redemption context",
        relay.environment.as_str().as_bytes(),
        relay.claim_type.as_bytes(),
        &window.to_be_bytes(),
    ]);
    TokenChallenge::new(token_type, issuer_name, &context, "")
        .map_err(|_| RedeemError::Internal("issuer name is not a valid challenge field".into()))
}
