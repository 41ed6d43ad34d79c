//! Rate limits: fixed one-minute windows per environment, per client
//! address, per relay and per failed authentication, counted by the
//! configured [`crate::RateLimiter`].

use crate::{ApiKey, Environment, Service, StoreError};

/// What counting a request gives: where its window stands (`None` when
/// that limit is off), or the store failure.
type Counted = Result<Option<RateLimitStatus>, StoreError>;

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

impl RateLimitStatus {
    /// The status closer to refusing: a refusal first, then the fewer
    /// requests remaining.
    pub fn tightest(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            // `false < true`: a refusal sorts first, then fewer remaining.
            (Some(a), Some(b)) => Some(if (a.allowed, a.remaining) <= (b.allowed, b.remaining) { a } else { b }),
            (a, b) => a.or(b),
        }
    }
}

/// The rate-limit bucket of a client address: an IPv4 address as is, an
/// IPv6 address by its /64 (one subscriber's prefix: a host can use any
/// address in it), an IPv4-mapped IPv6 address as its IPv4 address.
pub fn client_bucket(address: std::net::IpAddr) -> String {
    use std::net::IpAddr;
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

impl Service {
    /// Counts one request against `environment`'s fixed one-minute window.
    /// `None` when rate limiting is off.
    pub async fn rate_limit(&self, environment: Environment) -> Counted {
        self.count("env", environment.as_str(), self.config().rate_limit_per_minute).await
    }

    /// Counts one anonymous request (no API key: challenge, relay creation,
    /// generate-claim, directory) from `client` (see [`client_bucket`]), and,
    /// when the operator set one, against `environment`'s anonymous ceiling.
    /// Returns the tighter of the two.
    pub async fn rate_limit_anonymous(&self, client: &str, environment: Option<Environment>) -> Counted {
        let per_client = self.count("client", client, self.config().client_rate_limit_per_minute).await?;
        let ceiling = match environment {
            Some(env) => self.count("public", env.as_str(), self.config().public_rate_limit_per_minute).await?,
            None => None,
        };
        Ok(RateLimitStatus::tightest(per_client, ceiling))
    }

    /// Counts one redemption attempt at `relay_token` (generate-claim),
    /// whoever makes it.
    pub async fn rate_limit_relay(&self, relay_token: &str) -> Counted {
        self.count("relay", relay_token, self.config().relay_rate_limit_per_minute).await
    }

    /// Counts one failed authentication from `client`. Past the limit the
    /// client is answered 429 instead of 401.
    pub async fn rate_limit_auth_failure(&self, client: &str) -> Counted {
        self.count("authfail", client, self.config().auth_failure_limit_per_minute).await
    }

    /// Counts one request by `key`: against its environment's window and,
    /// when the key has a limit of its own (Persona 2026-09-29), against the
    /// key's window too. Returns the status closer to refusing (a refusal by
    /// either refuses).
    pub async fn rate_limit_key(&self, key: &ApiKey) -> Counted {
        self.rate_limit_key_n(key, 1).await
    }

    /// Counts `tokens` more against `key`'s windows (its environment's and
    /// its own): a batch counts its tokens, not its request (the request
    /// itself was counted when it was authenticated, so a batch of n adds
    /// n − 1 here).
    pub async fn rate_limit_tokens(&self, key: &ApiKey, tokens: u64) -> Counted {
        self.rate_limit_key_n(key, tokens).await
    }

    async fn rate_limit_key_n(&self, key: &ApiKey, n: u64) -> Counted {
        let environment = key.environment.as_str();
        let env = self.count_n("env", environment, self.config().rate_limit_per_minute, n).await?;
        let own = match key.rate_limit_per_minute {
            Some(limit) => self.count_n("apikey", &key.id, limit, n).await?,
            None => None,
        };
        Ok(RateLimitStatus::tightest(env, own))
    }

    async fn count(&self, kind: &'static str, name: impl std::fmt::Display, limit: u64) -> Counted {
        self.count_n(kind, name, limit, 1).await
    }

    /// Counts `n` in the bucket `kind:name`; a refusal is counted in
    /// `rate_limited_request_total{limit=kind}`.
    async fn count_n(&self, kind: &'static str, name: impl std::fmt::Display, limit: u64, n: u64) -> Counted {
        if limit == 0 {
            return Ok(None);
        }
        let bucket = format!("{kind}:{name}");
        let now = self.now();
        let window_start = now - now.rem_euclid(WINDOW_SECS);
        let count = self.inner.limiter.add(&bucket, window_start, WINDOW_SECS, n).await?;
        let allowed = count <= limit;
        if !allowed {
            self.metrics().rate_limited(kind);
        }
        Ok(Some(RateLimitStatus {
            limit,
            remaining: limit.saturating_sub(count),
            reset_secs: window_start + WINDOW_SECS - now,
            allowed,
        }))
    }
}
