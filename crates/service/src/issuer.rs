//! Rate limiting and issuance.

use blindpass_protocol::blind_rsa::{self, BlindSignError};
use blindpass_protocol::keys::TokenKeyId;

use crate::{Environment, KeyError, KeyState, Service, StoreError};

/// Length of a rate-limit window.
const WINDOW_SECS: i64 = 60;

/// Where an environment stands in its current rate-limit window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitStatus {
    /// Requests allowed per window.
    pub limit: u64,
    /// Requests left in this window.
    pub remaining: u64,
    /// Seconds until the window resets.
    pub reset_secs: i64,
    /// False when this request is over the limit.
    pub allowed: bool,
}

/// Why an issuance was refused.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// No key answers to this id.
    #[error("unknown key id")]
    UnknownKey,
    /// The key belongs to the other environment.
    #[error("key belongs to another environment")]
    WrongEnvironment,
    /// The key exists but does not issue (retired, rotated out, not yet valid).
    #[error("key is {0} and cannot issue")]
    KeyNotActive(&'static str),
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
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Keys could not be loaded, or signing failed its fault check.
    #[error("internal issuance failure: {0}")]
    Internal(String),
}

impl From<KeyError> for IssueError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Store(s) => IssueError::Store(s),
            other => IssueError::Internal(other.to_string()),
        }
    }
}

impl Service {
    /// Counts one request against `environment`'s fixed one-minute window.
    /// `None` when rate limiting is off.
    pub async fn rate_limit(&self, environment: Environment) -> Result<Option<RateLimitStatus>, StoreError> {
        self.count(format!("env:{}", environment.as_str()), self.config().rate_limit_per_minute).await
    }

    /// Counts one request to an endpoint that takes no API key (challenge,
    /// relay creation) against `environment`'s public window.
    pub async fn rate_limit_public(&self, environment: Environment) -> Result<Option<RateLimitStatus>, StoreError> {
        self.count(format!("public:{}", environment.as_str()), self.config().public_rate_limit_per_minute).await
    }

    async fn count(&self, bucket: String, limit: u64) -> Result<Option<RateLimitStatus>, StoreError> {
        if limit == 0 {
            return Ok(None);
        }
        let now = self.now();
        let window_start = now - now.rem_euclid(WINDOW_SECS);
        let count = self.inner.limiter.hit(&bucket, window_start, WINDOW_SECS).await?;
        Ok(Some(RateLimitStatus {
            limit,
            remaining: limit.saturating_sub(count),
            reset_secs: window_start + WINDOW_SECS - now,
            allowed: count <= limit,
        }))
    }

    /// BlindSign with the key named by `key_id` for a caller in
    /// `environment`. The RSA operation runs on the blocking pool.
    pub async fn issue(
        &self,
        environment: Environment,
        key_id: &TokenKeyId,
        blinded_msg: Vec<u8>,
    ) -> Result<Vec<u8>, IssueError> {
        let key = self.key_by_id(key_id).await?.ok_or(IssueError::UnknownKey)?;
        if key.record.environment != environment {
            return Err(IssueError::WrongEnvironment);
        }
        if !key.issues_at(self.now()) {
            return Err(IssueError::KeyNotActive(match key.record.state {
                KeyState::Pending | KeyState::Active => "not yet valid",
                KeyState::VerifyOnly => "rotated out",
                KeyState::Retired => "retired",
            }));
        }
        let signer = std::sync::Arc::clone(&key.signer);
        let signed = tokio::task::spawn_blocking(move || blind_rsa::blind_sign(&*signer, &blinded_msg))
            .await
            .map_err(|e| IssueError::Internal(format!("signing task failed: {e}")))?;
        signed.map_err(|e| match e {
            BlindSignError::WrongLength { expected, found } => IssueError::WrongLength { expected, found },
            BlindSignError::OutOfRange => IssueError::OutOfRange,
            BlindSignError::SigningFailure => {
                tracing::error!(key_id = %key.record.id, "RSA signing failed its fault check");
                IssueError::Internal("signing failure".into())
            }
        })
    }
}
