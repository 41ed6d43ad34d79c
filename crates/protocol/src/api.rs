//! Persona's REST contract as types: the JSON bodies of the Persona-dialect
//! endpoints, their paths, and the error body. The server deserializes
//! requests into these and serializes responses from them; the client does
//! the reverse, so the field names are written once.
//!
//! Field names are Persona's kebab-case (`blinded-token`). The server accepts
//! request keys in camelCase and snake_case too and answers in the style
//! `Key-Inflection` asks for; both happen at its edge, around these types.
//! Unknown fields are refused (`deny_unknown_fields`), never ignored.
//!
//! ```text
//! POST /api/v1/privacy-passes                         CreatePrivacyPass → PrivacyPass (201)
//! POST /api/privacy/v1/relays/challenge               ChallengeRequest  → ChallengeResponse
//! POST /api/privacy/v1/relays                         CreateRelay       → RelayCreated (201)
//! POST /api/privacy/v1/relays/{relay-token}/result    RecordResult      → ResultRecorded
//! POST /api/privacy/v1/relays/{relay-token}/generate-claim  GenerateClaim → Claim
//! every error                                         ErrorBody
//! ```

use serde::{Deserialize, Deserializer, Serialize};

/// "Create a Privacy Pass".
pub const PRIVACY_PASSES_PATH: &str = "/api/v1/privacy-passes";
/// The relay challenge.
pub const CHALLENGE_PATH: &str = "/api/privacy/v1/relays/challenge";
/// Relay creation.
pub const RELAYS_PATH: &str = "/api/privacy/v1/relays";

/// `POST /api/privacy/v1/relays/{relay_token}/result`.
pub fn result_path(relay_token: &str) -> String {
    format!("{RELAYS_PATH}/{relay_token}/result")
}

/// `POST /api/privacy/v1/relays/{relay_token}/generate-claim`.
pub fn generate_claim_path(relay_token: &str) -> String {
    format!("{RELAYS_PATH}/{relay_token}/generate-claim")
}

/// `POST /api/v1/privacy-passes` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatePrivacyPass {
    /// base64url of the blinded message (the key's modulus length).
    pub blinded_token: String,
    /// Hex SHA-256 naming the issuer key (either of its two ids).
    pub key_id: String,
}

/// `POST /api/v1/privacy-passes` response (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PrivacyPass {
    /// base64url (unpadded) of the blind signature.
    pub blind_sig: String,
}

/// `POST /api/privacy/v1/relays/challenge` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChallengeRequest {
    /// The claim the token will be redeemed for, e.g. `age_over18_verified`.
    pub claim_type: String,
    /// The sandbox environment when true; production when false or absent.
    #[serde(default)]
    pub sandbox: Option<bool>,
}

/// `POST /api/privacy/v1/relays/challenge` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChallengeResponse {
    /// base64url (unpadded) of the challenge JSON.
    pub challenge: String,
    /// base64url (unpadded) of the issuer key's `rsaEncryption` SPKI DER.
    pub token_key: String,
    /// Hex SHA-256 of that DER.
    pub token_key_id: String,
}

/// `POST /api/privacy/v1/relays` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateRelay {
    /// The claim this relay delivers.
    pub claim_type: String,
    /// PEM RSA public key the claim is encrypted to; must be present, may be
    /// `null` (the claim is then delivered in the clear).
    #[serde(deserialize_with = "present_or_null")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub encryption_key_pem: Option<String>,
    /// Persona 2026-09-29: an RSA public JWK (`kty` RSA, `alg`
    /// RSA-OAEP-256) the claim is encrypted to as a compact JWE, instead of
    /// `encryption-key-pem` (which is then `null`); parsed by
    /// `jwk::EncryptionJwk::parse`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub encryption_key_jwk: Option<serde_json::Value>,
    /// The sandbox environment when true.
    #[serde(default)]
    pub sandbox: Option<bool>,
}

/// `POST /api/privacy/v1/relays` response (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RelayCreated {
    /// `relay_…`, the relay's public name.
    pub relay_token: String,
    /// The relay secret, shown once (`Persona-Relay-Secret`).
    pub relay_secret: String,
    /// A session access token for the relay (HS256 JWT).
    pub relay_session_access_token: String,
}

/// A claim's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Outcome {
    /// `"passed"`.
    Passed,
    /// `"failed"`.
    Failed,
}

impl Outcome {
    /// `Passed` when `passed`.
    pub fn from_passed(passed: bool) -> Self {
        if passed { Self::Passed } else { Self::Failed }
    }

    /// True for `Passed`.
    pub fn passed(self) -> bool {
        self == Self::Passed
    }
}

/// One step of how a verifier reached its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Method {
    /// The method's name, e.g. `government_id`.
    pub method: String,
    /// Its outcome.
    pub result: Outcome,
}

/// `POST /api/privacy/v1/relays/{relay-token}/result` request (a verifier's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecordResult {
    /// The claim's outcome.
    pub claim_result: Outcome,
    /// How it was reached; absent or `null` means none.
    #[serde(default)]
    pub methodology: Option<Vec<Method>>,
}

/// `POST /api/privacy/v1/relays/{relay-token}/result` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultRecorded {
    /// The relay.
    pub relay_token: String,
    /// The recorded outcome.
    pub claim_result: Outcome,
}

/// `POST …/generate-claim` request: Persona's SDK sends `{}`; the token
/// travels in `Authorization: PrivateToken token=…`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GenerateClaim {}

/// `POST …/generate-claim` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Claim {
    /// The claim JSON, or base64 of its RSA-OAEP ciphertext.
    pub claim_payload: String,
    /// True when the claim passed and the token is now spent.
    pub token_consumed: bool,
}

/// Every error: `{"errors":[{"title","details"}]}` (note: `details`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// One item in practice.
    pub errors: Vec<ErrorItem>,
}

/// One error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorItem {
    /// A short title, e.g. `Rate limit exceeded`.
    pub title: String,
    /// What went wrong and what to do.
    pub details: String,
}

/// A field that must be present but may be `null`: serde makes a missing
/// `Option` field `None` unless the field has its own deserializer.
fn present_or_null<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(deserializer)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_request_names_its_fields_in_kebab_case_and_refuses_unknown_ones() {
        let r: CreatePrivacyPass = serde_json::from_str(r#"{"blinded-token":"AA","key-id":"ab"}"#).unwrap();
        assert_eq!(r, CreatePrivacyPass { blinded_token: "AA".into(), key_id: "ab".into() });
        assert!(serde_json::from_str::<CreatePrivacyPass>(r#"{"blinded-token":"AA","key-id":"ab","x":1}"#).is_err());
        assert!(serde_json::from_str::<GenerateClaim>(r#"{"x":1}"#).is_err());
    }

    #[test]
    fn encryption_key_pem_must_be_present_but_may_be_null() {
        let r: CreateRelay = serde_json::from_str(r#"{"claim-type":"c","encryption-key-pem":null}"#).unwrap();
        assert_eq!(r.encryption_key_pem, None);
        assert_eq!(r.sandbox, None);
        assert!(serde_json::from_str::<CreateRelay>(r#"{"claim-type":"c"}"#).is_err());
    }

    #[test]
    fn outcomes_and_methods_are_strict() {
        let r: RecordResult =
            serde_json::from_str(r#"{"claim-result":"passed","methodology":[{"method":"id","result":"failed"}]}"#)
                .unwrap();
        assert_eq!(r.methodology.unwrap()[0].result, Outcome::Failed);
        assert!(serde_json::from_str::<RecordResult>(r#"{"claim-result":"Passed"}"#).is_err());
        let extra = r#"{"claim-result":"passed","methodology":[{"method":"id","result":"passed","x":1}]}"#;
        assert!(serde_json::from_str::<RecordResult>(extra).is_err());
    }

    #[test]
    fn responses_serialize_in_persona_kebab_case() {
        let claim = Claim { claim_payload: "p".into(), token_consumed: true };
        assert_eq!(serde_json::to_string(&claim).unwrap(), r#"{"claim-payload":"p","token-consumed":true}"#);
        assert_eq!(result_path("relay_x"), "/api/privacy/v1/relays/relay_x/result");
        assert_eq!(generate_claim_path("relay_x"), "/api/privacy/v1/relays/relay_x/generate-claim");
    }
}
