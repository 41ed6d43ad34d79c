//! A token as presented at redemption, parsed once at the edge, and the
//! reasons a presented token is refused.

use blindpass_protocol::b64;
use blindpass_protocol::persona;
use blindpass_protocol::type2::wire::Token;
use blindpass_protocol::voprf::Suite;
use blindpass_protocol::voprf::wire::VoprfToken;

/// Why a presented token is refused (the server words it for the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    /// Spent before, at another relay (or without this relay's secret).
    AlreadyUsed,
    /// The `Authorization` value is not base64url.
    NotBase64url,
    /// The bytes are neither a Persona token nor an RFC 9578 token.
    Malformed,
    /// The Persona challenge's expiry has passed.
    ChallengeExpired,
    /// The Persona challenge's MAC does not verify.
    ChallengeNotOurs,
    /// The RFC challenge is not one this relay issued in the current or the
    /// previous window.
    RfcChallengeUnknown,
    /// The token's environment is not the relay's.
    OtherEnvironment,
    /// The token was issued for another claim type.
    OtherClaimType,
    /// The Persona token's key id is not a key id.
    UnknownKey,
    /// No key with that id verifies now (unknown, pending, retired, or past
    /// its overlap).
    UnknownOrRetiredKey,
    /// The signature (or, for types 1 and 5, the authenticator) does not
    /// verify.
    BadSignature,
    /// A token type relays do not accept (`relay_token_types`).
    TokenTypeNotAccepted,
}

impl TokenRejection {
    /// The `outcome` label of `redemption_total` for this rejection.
    pub fn label(self) -> &'static str {
        match self {
            TokenRejection::AlreadyUsed => "double_spend",
            TokenRejection::NotBase64url => "rejected_not_base64url",
            TokenRejection::Malformed => "rejected_malformed",
            TokenRejection::ChallengeExpired => "rejected_challenge_expired",
            TokenRejection::ChallengeNotOurs => "rejected_challenge_not_ours",
            TokenRejection::RfcChallengeUnknown => "rejected_challenge_unknown",
            TokenRejection::OtherEnvironment => "rejected_other_environment",
            TokenRejection::OtherClaimType => "rejected_other_claim_type",
            TokenRejection::UnknownKey => "rejected_unknown_key",
            TokenRejection::UnknownOrRetiredKey => "rejected_unknown_or_retired_key",
            TokenRejection::BadSignature => "rejected_bad_signature",
            TokenRejection::TokenTypeNotAccepted => "rejected_token_type",
        }
    }
}

/// A token as presented, parsed once: which format it is and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresentedToken {
    /// A Persona JSON token (base64url of its JSON).
    Persona(Box<persona::ParsedToken>),
    /// An RFC 9577 Token of type 2 (base64url of its bytes).
    Rfc(Box<Token>),
    /// An RFC 9577 Token of type 1 or 5 (base64url of its bytes).
    Voprf(Box<VoprfToken>),
}

impl PresentedToken {
    /// Parses the `token` parameter of `Authorization: PrivateToken`: one
    /// base64url decoding, then the format its first byte announces.
    pub fn parse(text: &str) -> Result<Self, TokenRejection> {
        if text.len() > persona::MAX_TOKEN_LEN * 4 / 3 + 4 {
            return Err(TokenRejection::Malformed);
        }
        let bytes = b64::decode(text).map_err(|_| TokenRejection::NotBase64url)?;
        let parsed = match bytes.first() {
            Some(b'{') => persona::Token::from_json(&bytes).map(|t| Self::Persona(Box::new(t))).ok(),
            _ => match bytes.get(..2) {
                Some([t0, t1]) if Suite::of_token_type(u16::from_be_bytes([*t0, *t1])).is_some() => {
                    VoprfToken::decode(&bytes).map(|t| Self::Voprf(Box::new(t))).ok()
                }
                _ => Token::decode(&bytes).map(|t| Self::Rfc(Box::new(t))).ok(),
            },
        };
        parsed.ok_or(TokenRejection::Malformed)
    }
}
