//! The records the store holds.

pub use blindpass_domain::{Environment, KeyState, Permission, UnknownName};

use std::fmt;

use zeroize::Zeroizing;

/// An API key as stored: no secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Public id, `api_…`.
    pub id: String,
    /// Optional operator label.
    pub name: Option<String>,
    /// The environment it belongs to.
    pub environment: Environment,
    /// What it may do.
    pub permissions: Vec<Permission>,
    /// Index: a hex prefix of `secret_hash` (unique).
    pub lookup: String,
    /// SHA-256 of the secret.
    pub secret_hash: [u8; 32],
    /// UNIX seconds.
    pub created_at: i64,
    /// UNIX seconds, when revoked.
    pub revoked_at: Option<i64>,
    /// Requests per minute this key may make (counted beside its
    /// environment's limit); `None`: only the environment's.
    pub rate_limit_per_minute: Option<u64>,
}

/// How a relay's claim payload is encrypted to its key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ClaimFormat {
    /// Base64 of one RSA-OAEP-SHA256 block (`encryption-key-pem`).
    #[default]
    Oaep,
    /// A compact JWE, RSA-OAEP-256 + A256GCM (`encryption-key-jwk`), with
    /// the JWK's `kid` in its header.
    Jwe {
        /// The JWK's `kid`.
        kid: Option<String>,
    },
}

impl ClaimFormat {
    /// The stored name (`oaep` or `jwe`).
    pub fn as_str(&self) -> &'static str {
        match self {
            ClaimFormat::Oaep => "oaep",
            ClaimFormat::Jwe { .. } => "jwe",
        }
    }

    /// The JWE `kid`, if any.
    pub fn kid(&self) -> Option<&str> {
        match self {
            ClaimFormat::Jwe { kid } => kid.as_deref(),
            ClaimFormat::Oaep => None,
        }
    }

    /// From the stored name and kid.
    pub fn from_stored(name: &str, kid: Option<String>) -> Result<Self, crate::StoreError> {
        match name {
            "oaep" => Ok(ClaimFormat::Oaep),
            "jwe" => Ok(ClaimFormat::Jwe { kid }),
            _ => Err(crate::StoreError::Corrupt("relay claim format".into())),
        }
    }
}

/// An issuer key pair as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuerKey {
    /// The RFC 9578 `token_key_id`, lowercase hex.
    pub id: String,
    /// The environment it signs for.
    pub environment: Environment,
    /// The RFC 9578 token type it issues (2, 1 or 5); the lifecycle is per
    /// environment and token type.
    pub token_type: u16,
    /// Lifecycle state.
    pub state: KeyState,
    /// The private key, sealed under the key-encryption key when one is
    /// configured: PKCS#8 DER for type 2, `SerializeScalar` for types 1 and 5.
    pub private_pkcs8: Zeroizing<Vec<u8>>,
    /// UNIX seconds from which it may be used.
    pub not_before: i64,
    /// UNIX seconds, when it stopped issuing (rotated out).
    pub rotated_at: Option<i64>,
    /// UNIX seconds, when retired.
    pub retired_at: Option<i64>,
    /// UNIX seconds.
    pub created_at: i64,
}

impl fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerKey")
            .field("id", &self.id)
            .field("environment", &self.environment)
            .field("token_type", &self.token_type)
            .field("state", &self.state)
            .field("private_pkcs8", &"<redacted>")
            .field("not_before", &self.not_before)
            .field("rotated_at", &self.rotated_at)
            .field("retired_at", &self.retired_at)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// A response kept for idempotent replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// HTTP status.
    pub status: u16,
    /// The `Content-Type` of the body.
    pub content_type: String,
    /// The response body, byte for byte.
    pub body: Vec<u8>,
}

/// Outcome of [`crate::IdempotencyStore::idempotency_begin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// This caller owns the key: run the request, then complete or abandon.
    Started,
    /// Another request with this key is still running.
    InFlight,
    /// The key was first used with other parameters.
    Mismatch,
    /// The first response, to replay.
    Completed(StoredResponse),
}

/// A verifier's result for a relay's claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimResult {
    /// True for `passed`, false for `failed`.
    pub passed: bool,
    /// The methodology array, as JSON text (`[]` when none).
    pub methodology_json: String,
    /// UNIX seconds.
    pub recorded_at: i64,
}

/// A relay: one claim request from a relying party.
#[derive(Clone, PartialEq, Eq)]
pub struct Relay {
    /// `relay_…`, the public handle.
    pub token: String,
    /// SHA-256 of the relay secret (the secret itself is shown once).
    pub secret_hash: [u8; 32],
    /// Environment (from the `sandbox` flag).
    pub environment: Environment,
    /// The claim type requested.
    pub claim_type: String,
    /// SPKI DER of the RSA key claim payloads are encrypted to, if any.
    pub encryption_key_der: Option<Vec<u8>>,
    /// How claims are encrypted to that key.
    pub claim_format: ClaimFormat,
    /// UNIX seconds.
    pub created_at: i64,
    /// UNIX seconds from which the relay is gone (answers like an unknown
    /// one, and is pruned).
    pub expires_at: i64,
    /// The verifier's result, once recorded.
    pub result: Option<ClaimResult>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("token", &self.token)
            .field("environment", &self.environment)
            .field("claim_type", &self.claim_type)
            .field("encrypted", &self.encryption_key_der.is_some())
            .field("result", &self.result)
            .finish_non_exhaustive()
    }
}

/// Outcome of recording a relay's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Recorded now.
    Recorded,
    /// A result was already recorded; it is kept.
    AlreadyRecorded,
    /// No such relay.
    NotFound,
}

/// A token to spend, with what a retry at the same relay gets back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spend {
    /// The key that signed the token (its RFC `token_key_id`, hex).
    pub key_id: String,
    /// The token's nonce.
    pub nonce: Vec<u8>,
    /// The relay it is spent at.
    pub relay_token: String,
    /// UNIX seconds.
    pub spent_at: i64,
    /// The last moment (UNIX seconds) at which any node could still accept
    /// this token: the expiry of the challenge it answers. The record is kept
    /// past it by the prune margin.
    pub expires_at: i64,
    /// The claim payload the redemption answered with; a retry of the same
    /// token at the same relay gets exactly this back.
    pub claim_payload: String,
    /// An idempotent response to complete in the same transaction.
    pub idempotency: Option<IdempotencyCompletion>,
}

/// An `Idempotency-Key` claim to complete with `response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyCompletion {
    /// The claim's scope.
    pub scope: String,
    /// The `Idempotency-Key`.
    pub key: String,
    /// The response to store.
    pub response: StoredResponse,
}

/// Outcome of [`crate::SpentTokenStore::spend_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpendOutcome {
    /// This call spent the token (and stored its payload and response).
    Spent,
    /// The token was already spent at the same relay: the stored payload of
    /// that redemption, for a client whose answer was lost.
    SpentHere {
        /// The claim payload stored with the first redemption.
        claim_payload: String,
    },
    /// The token was spent at another relay.
    SpentElsewhere,
}

impl SpendOutcome {
    /// A spend that lost to an earlier one, recorded at `relay` with
    /// `claim_payload`: the same relay gets its claim again, any other relay
    /// is refused.
    pub(crate) fn earlier(relay: &str, claim_payload: Option<String>, spend: &Spend) -> Self {
        match claim_payload {
            Some(claim_payload) if relay == spend.relay_token => SpendOutcome::SpentHere { claim_payload },
            _ => SpendOutcome::SpentElsewhere,
        }
    }
}

/// One value to re-encrypt in [`crate::SettingsStore::rewrap`].
#[derive(Clone, PartialEq, Eq)]
pub struct Rewrap {
    /// Where the value lives.
    pub target: RewrapTarget,
    /// The value expected there now.
    pub old: Vec<u8>,
    /// The value to store.
    pub new: Vec<u8>,
}

impl std::fmt::Debug for Rewrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewrap").field("target", &self.target).finish_non_exhaustive()
    }
}

/// The row of a [`Rewrap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewrapTarget {
    /// The private key of the issuer key with this id.
    IssuerKey(String),
    /// The setting with this name.
    Setting(String),
}

/// A per-key rate limit as the databases hold it (a positive BIGINT).
pub(crate) fn rate_limit_to_db(per_minute: u64) -> Result<i64, crate::StoreError> {
    match i64::try_from(per_minute) {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(crate::StoreError::Other(format!("rate limit {per_minute} is out of range (1..=2^63-1)").into())),
    }
}

/// A per-key rate limit read back; anything but a positive value is corrupt.
pub(crate) fn rate_limit_from_db(value: i64) -> Result<u64, crate::StoreError> {
    u64::try_from(value).ok().filter(|v| *v > 0).ok_or_else(|| crate::StoreError::Corrupt("api key rate limit".into()))
}

/// A primary's replication, as it reports it: whether a commit it
/// acknowledges is also on a standby, so that a failover cannot lose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    /// `synchronous_standby_names` (empty: every standby is asynchronous).
    pub synchronous_standby_names: String,
    /// `synchronous_commit` as this node's connections see it.
    pub synchronous_commit: String,
    /// Standbys streaming from the primary.
    pub standbys: u64,
    /// Of those, the ones a commit waits for (`sync` or `quorum`). A role
    /// without `pg_monitor` (or `pg_read_all_stats`) cannot see this, and
    /// counts none.
    pub synchronous_standbys: u64,
}

impl Replication {
    /// True when every commit the primary acknowledges has reached a
    /// standby: commits wait for synchronous standbys, and one is attached.
    pub fn protects_commits(&self) -> bool {
        !self.synchronous_standby_names.trim().is_empty()
            && matches!(self.synchronous_commit.as_str(), "on" | "remote_write" | "remote_apply")
            && self.synchronous_standbys > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_waited_for_attached_standby_protects_commits() {
        let sync = |names: &str, commit: &str, synchronous_standbys: u64| Replication {
            synchronous_standby_names: names.into(),
            synchronous_commit: commit.into(),
            standbys: synchronous_standbys.max(1),
            synchronous_standbys,
        };
        assert!(sync("*", "on", 1).protects_commits());
        assert!(sync("ANY 1 (a, b)", "remote_apply", 2).protects_commits());
        assert!(sync("a", "remote_write", 1).protects_commits());
        assert!(!sync("", "on", 0).protects_commits(), "asynchronous standbys");
        assert!(!sync("*", "local", 1).protects_commits(), "commits do not wait");
        assert!(!sync("*", "off", 1).protects_commits(), "commits do not wait");
        assert!(!sync("*", "on", 0).protects_commits(), "no synchronous standby attached");
    }
}
