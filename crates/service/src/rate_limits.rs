//! Rate limits: fixed one-minute windows per environment, per client
//! address, per relay and per failed authentication, counted by the
//! configured [`crate::RateLimiter`].

use crate::metrics::Metrics;
use crate::{Bucket, BucketClass, Environment, Principal, RateLimiter, Service, StoreError};

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
    fn rate_limits(&self) -> RateLimits<'_> {
        let c = self.config();
        RateLimits {
            limiter: &*self.inner.limiter,
            per_minute: PerMinute {
                environment: c.rate_limit_per_minute,
                public: c.public_rate_limit_per_minute,
                client: c.client_rate_limit_per_minute,
                relay: c.relay_rate_limit_per_minute,
                auth_failure: c.auth_failure_limit_per_minute,
            },
            metrics: self.metrics(),
            now: self.now(),
        }
    }

    /// Counts one anonymous request (no API key: challenge, relay creation,
    /// generate-claim, directory) from `client` (see [`client_bucket`]), and,
    /// when the operator set one, against `environment`'s anonymous ceiling.
    /// Returns the tighter of the two.
    pub async fn rate_limit_anonymous(&self, client: &str, environment: Option<Environment>) -> Counted {
        self.rate_limits().anonymous(client, environment).await
    }

    /// Counts one anonymous request from `client` (see [`client_bucket`]),
    /// at admission: before its body is read or anything else is looked up.
    pub async fn rate_limit_client(&self, client: &str) -> Counted {
        self.rate_limits().client(client).await
    }

    /// Counts one anonymous request against `environment`'s anonymous
    /// ceiling, when the operator set one (once the body named the
    /// environment).
    pub async fn rate_limit_public(&self, environment: Environment) -> Counted {
        self.rate_limits().public(environment).await
    }

    /// Counts one redemption attempt at `relay_token` (generate-claim),
    /// whoever makes it.
    pub async fn rate_limit_relay(&self, relay_token: &str) -> Counted {
        self.rate_limits().relay(relay_token).await
    }

    /// Counts one failed authentication from `client`. Past the limit the
    /// client is answered 429 instead of 401.
    pub async fn rate_limit_auth_failure(&self, client: &str) -> Counted {
        self.rate_limits().auth_failure(client).await
    }

    /// Counts one request by `key`: first against the key's own window
    /// (Persona 2026-09-29), when it has one, then against its
    /// environment's. A request the key's own limit refuses is not charged
    /// to the environment, so a key cannot spend its neighbours' share.
    /// Returns the status closer to refusing.
    pub async fn rate_limit_key(&self, key: &Principal) -> Counted {
        self.rate_limits().key(key).await
    }

    /// Whether `tokens` more would fit in `key`'s windows (its own and its
    /// environment's), without counting them: a batch is admitted or refused
    /// whole before anything is charged. The status is what the windows
    /// would say after the batch.
    pub async fn rate_limit_would_admit(&self, key: &Principal, tokens: u64) -> Counted {
        self.rate_limits().would_admit(key, tokens).await
    }

    /// Counts `tokens` issued beyond the request itself against `key`'s
    /// windows: a batch counts its tokens when they are issued (the request
    /// was counted when it was authenticated, so a batch that issued n adds
    /// n − 1 here). Never a refusal: the tokens exist.
    pub async fn rate_limit_tokens(&self, key: &Principal, tokens: u64) -> Counted {
        self.rate_limits().tokens(key, tokens).await
    }
}

/// The per-minute limits (0: off).
#[derive(Debug, Clone, Copy)]
struct PerMinute {
    environment: u64,
    public: u64,
    client: u64,
    relay: u64,
    auth_failure: u64,
}

/// Rate limits over what they need: the counters, the limits, the metrics
/// they count refusals in, and the time.
struct RateLimits<'a> {
    limiter: &'a dyn RateLimiter,
    per_minute: PerMinute,
    metrics: &'a Metrics,
    now: i64,
}

impl RateLimits<'_> {
    /// See [`Service::rate_limit_anonymous`].
    async fn anonymous(&self, client: &str, environment: Option<Environment>) -> Counted {
        let per_client = self.client(client).await?;
        if per_client.is_some_and(|s| !s.allowed) {
            return Ok(per_client);
        }
        let ceiling = match environment {
            Some(env) => self.public(env).await?,
            None => None,
        };
        Ok(RateLimitStatus::tightest(per_client, ceiling))
    }

    /// See [`Service::rate_limit_client`].
    async fn client(&self, client: &str) -> Counted {
        self.count(CLIENT, "client", client, self.per_minute.client).await
    }

    /// See [`Service::rate_limit_public`].
    async fn public(&self, environment: Environment) -> Counted {
        self.count(PROTECTED, "public", environment.as_str(), self.per_minute.public).await
    }

    /// See [`Service::rate_limit_relay`].
    async fn relay(&self, relay_token: &str) -> Counted {
        self.count(PROTECTED, "relay", relay_token, self.per_minute.relay).await
    }

    /// See [`Service::rate_limit_auth_failure`].
    async fn auth_failure(&self, client: &str) -> Counted {
        self.count(CLIENT, "authfail", client, self.per_minute.auth_failure).await
    }

    /// See [`Service::rate_limit_key`].
    async fn key(&self, key: &Principal) -> Counted {
        let own = match key.own_bucket() {
            Some((name, limit)) => self.count_n(PROTECTED, "apikey", name, limit, 1).await?,
            None => None,
        };
        if own.is_some_and(|s| !s.allowed) {
            return Ok(own);
        }
        let env = self.count_n(PROTECTED, "env", key.environment.as_str(), self.per_minute.environment, 1).await?;
        Ok(RateLimitStatus::tightest(env, own))
    }

    /// See [`Service::rate_limit_would_admit`].
    async fn would_admit(&self, key: &Principal, tokens: u64) -> Counted {
        let own = match key.own_bucket() {
            Some((name, limit)) => self.peek_n("apikey", name, limit, tokens).await?,
            None => None,
        };
        let env = self.peek_n("env", key.environment.as_str(), self.per_minute.environment, tokens).await?;
        let status = RateLimitStatus::tightest(env, own);
        if status.is_some_and(|s| !s.allowed) {
            self.metrics.rate_limited(if own.is_some_and(|s| !s.allowed) { "apikey" } else { "env" });
        }
        Ok(status)
    }

    /// See [`Service::rate_limit_tokens`].
    async fn tokens(&self, key: &Principal, tokens: u64) -> Counted {
        let own = match key.own_bucket() {
            Some((name, limit)) => self.count_n(PROTECTED, "apikey", name, limit, tokens).await?,
            None => None,
        };
        let env = self.count_n(PROTECTED, "env", key.environment.as_str(), self.per_minute.environment, tokens).await?;
        let keep = |s: Option<RateLimitStatus>| s.map(|s| RateLimitStatus { allowed: true, ..s });
        Ok(RateLimitStatus::tightest(keep(env), keep(own)))
    }

    async fn count(&self, class: BucketClass, kind: &'static str, name: &str, limit: u64) -> Counted {
        self.count_n(class, kind, name, limit, 1).await
    }

    /// Where `kind:name` would stand with `n` more, without counting them.
    async fn peek_n(&self, kind: &'static str, name: &str, limit: u64, n: u64) -> Counted {
        if limit == 0 {
            return Ok(None);
        }
        let (now, window_start) = self.window();
        let bucket = Bucket { kind, name, class: PROTECTED };
        let count = self.limiter.add(&bucket, window_start, WINDOW_SECS, 0).await?.saturating_add(n);
        Ok(Some(status(limit, count, window_start, now)))
    }

    fn window(&self) -> (i64, i64) {
        let now = self.now;
        (now, now - now.rem_euclid(WINDOW_SECS))
    }

    /// Counts `n` in the bucket `kind:name`; a refusal is counted in
    /// `rate_limited_request_total{limit=kind}`.
    async fn count_n(&self, class: BucketClass, kind: &'static str, name: &str, limit: u64, n: u64) -> Counted {
        if limit == 0 {
            return Ok(None);
        }
        let (now, window_start) = self.window();
        let bucket = Bucket { kind, name, class };
        let count = self.limiter.add(&bucket, window_start, WINDOW_SECS, n).await?;
        let status = status(limit, count, window_start, now);
        if !status.allowed && n > 0 {
            self.metrics.rate_limited(kind);
        }
        Ok(Some(status))
    }
}

const PROTECTED: BucketClass = BucketClass::Protected;
const CLIENT: BucketClass = BucketClass::Client;

fn status(limit: u64, count: u64, window_start: i64, now: i64) -> RateLimitStatus {
    RateLimitStatus {
        limit,
        remaining: limit.saturating_sub(count),
        reset_secs: window_start + WINDOW_SECS - now,
        allowed: count <= limit,
    }
}
