//! Where rate-limit counters live: the store (default; shared by every node
//! on it) or Redis (`INCR` + `EXPIRE` per window; cheaper per request and
//! shared by every node that uses the same Redis).

use std::sync::Arc;

use async_trait::async_trait;

use crate::{Store, StoreError};

/// Fixed-window counters.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Adds `n` hits to `bucket`'s window starting at `window_start`
    /// (lasting `window_secs`) and returns the count so far. Atomic across
    /// nodes.
    async fn add(&self, bucket: &str, window_start: i64, window_secs: i64, n: u64) -> Result<u64, StoreError>;
    /// Adds one hit.
    async fn hit(&self, bucket: &str, window_start: i64, window_secs: i64) -> Result<u64, StoreError> {
        self.add(bucket, window_start, window_secs, 1).await
    }
}

/// Counters in the store's `rate_limits` table.
pub struct StoreLimiter {
    store: Arc<dyn Store>,
}

impl StoreLimiter {
    /// Counts in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

impl std::fmt::Debug for StoreLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreLimiter")
    }
}

#[async_trait]
impl RateLimiter for StoreLimiter {
    async fn add(&self, bucket: &str, window_start: i64, _window_secs: i64, n: u64) -> Result<u64, StoreError> {
        self.store.rate_limit_add(bucket, window_start, n).await
    }
}

/// Counters in Redis: `INCR {prefix}:rl:{bucket}:{window}` then `EXPIRE`
/// (twice the window), in one `MULTI`.
#[derive(Clone)]
pub struct RedisLimiter {
    connection: redis::aio::ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisLimiter")
    }
}

impl RedisLimiter {
    /// Connects to `url` (`redis://host:port/db`, or `rediss://` for TLS,
    /// verified against `ca_pem` when given, else the system's trust
    /// store); keys start with `prefix` (one prefix per deployment sharing a
    /// Redis). The connection manager reconnects by itself after Redis
    /// restarts.
    pub async fn connect(url: &str, prefix: &str, ca_pem: Option<Vec<u8>>) -> Result<Self, StoreError> {
        let client = match ca_pem {
            None => redis::Client::open(url),
            Some(_) if !url.starts_with("rediss://") => {
                return Err(StoreError::Other("a Redis CA file needs a rediss:// URL".into()));
            }
            Some(pem) => {
                redis::Client::build_with_tls(url, redis::TlsCertificates { client_tls: None, root_cert: Some(pem) })
            }
        }
        .map_err(|e| StoreError::Other(format!("invalid Redis URL or CA: {e}")))?;
        let connection = client
            .get_connection_manager()
            .await
            .map_err(|e| StoreError::Unavailable(format!("connecting to Redis: {e}")))?;
        Ok(Self { connection, prefix: prefix.to_owned() })
    }
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn add(&self, bucket: &str, window_start: i64, window_secs: i64, n: u64) -> Result<u64, StoreError> {
        let key = format!("{}:rl:{bucket}:{window_start}", self.prefix);
        let mut connection = self.connection.clone();
        let (count, _): (u64, bool) = redis::pipe()
            .atomic()
            .incr(&key, n)
            .expire(&key, window_secs * 2)
            .query_async(&mut connection)
            .await
            .map_err(|e| StoreError::Unavailable(format!("Redis: {e}")))?;
        Ok(count)
    }
}

/// Counters in this process's memory: exact for a single node (the embedded
/// SQLite deployment), and free of a database write per request.
///
/// Buckets are keyed by client input (addresses, relay tokens), so the map is
/// bounded: past `max_buckets`, buckets of past windows are dropped; if the
/// current window alone fills it (a flood from very many addresses), new
/// buckets share one overflow counter, so they are limited together rather
/// than not at all.
#[derive(Debug)]
pub struct LocalLimiter {
    windows: std::sync::Mutex<std::collections::HashMap<String, (i64, u64)>>,
    max_buckets: usize,
}

/// Default cap on in-memory rate-limit buckets.
pub(crate) const DEFAULT_MAX_BUCKETS: usize = 100_000;
/// The bucket that counts new buckets once the map is full.
const OVERFLOW_BUCKET: &str = "overflow";

impl Default for LocalLimiter {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_MAX_BUCKETS)
    }
}

impl LocalLimiter {
    /// An empty set of counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty set of at most `max_buckets` counters.
    pub fn with_capacity(max_buckets: usize) -> Self {
        Self { windows: std::sync::Mutex::default(), max_buckets: max_buckets.max(1) }
    }

    /// How many buckets are held.
    pub fn len(&self) -> usize {
        self.windows.lock().map_or(0, |w| w.len())
    }

    /// True when no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl RateLimiter for LocalLimiter {
    async fn add(&self, bucket: &str, window_start: i64, _window_secs: i64, n: u64) -> Result<u64, StoreError> {
        let mut windows = self.windows.lock().map_err(|_| StoreError::Other("rate limiter lock poisoned".into()))?;
        let mut bucket = bucket;
        if !windows.contains_key(bucket) && windows.len() >= self.max_buckets {
            windows.retain(|_, (start, _)| *start == window_start);
            if windows.len() >= self.max_buckets {
                bucket = OVERFLOW_BUCKET;
            }
        }
        let entry = windows.entry(bucket.to_owned()).or_insert((window_start, 0));
        if entry.0 != window_start {
            *entry = (window_start, 0);
        }
        entry.1 = entry.1.saturating_add(n);
        Ok(entry.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_windows_count_and_reset() {
        let limiter = LocalLimiter::new();
        assert_eq!(limiter.hit("env:sandbox", 60, 60).await.unwrap(), 1);
        assert_eq!(limiter.hit("env:sandbox", 60, 60).await.unwrap(), 2);
        assert_eq!(limiter.hit("env:production", 60, 60).await.unwrap(), 1);
        assert_eq!(limiter.hit("env:sandbox", 120, 60).await.unwrap(), 1, "a new window starts at 1");
    }

    #[tokio::test]
    async fn local_buckets_are_capped() {
        let limiter = LocalLimiter::with_capacity(3);
        for i in 0..3 {
            limiter.hit(&format!("client:{i}"), 60, 60).await.unwrap();
        }
        // Full with this window's buckets: newcomers share the overflow.
        assert_eq!(limiter.hit("client:a", 60, 60).await.unwrap(), 1);
        assert_eq!(limiter.hit("client:b", 60, 60).await.unwrap(), 2, "counted together");
        assert!(limiter.len() <= 4);
        // A new window drops the old buckets.
        assert_eq!(limiter.hit("client:c", 120, 60).await.unwrap(), 1);
        assert_eq!(limiter.hit("client:d", 120, 60).await.unwrap(), 1);
        assert!(limiter.len() <= 4, "{}", limiter.len());
    }
}
