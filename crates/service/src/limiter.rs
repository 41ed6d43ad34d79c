//! Where rate-limit counters live: the store (default; shared by every node
//! on it) or Redis (`INCR` + `EXPIRE` per window; cheaper per request and
//! shared by every node that uses the same Redis).

use std::sync::Arc;

use async_trait::async_trait;

use crate::{Store, StoreError};

/// Fixed-window counters.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Adds one hit to `bucket`'s window starting at `window_start` (lasting
    /// `window_secs`) and returns the count so far. Atomic across nodes.
    async fn hit(&self, bucket: &str, window_start: i64, window_secs: i64) -> Result<u64, StoreError>;
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
    async fn hit(&self, bucket: &str, window_start: i64, _window_secs: i64) -> Result<u64, StoreError> {
        self.store.rate_limit_hit(bucket, window_start).await
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
    /// Connects to `url` (`redis://host:port/db`); keys start with `prefix`
    /// (one prefix per deployment sharing a Redis). The connection manager
    /// reconnects by itself after Redis restarts.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Other(format!("invalid Redis URL: {e}")))?;
        let connection = client
            .get_connection_manager()
            .await
            .map_err(|e| StoreError::Unavailable(format!("connecting to Redis: {e}")))?;
        Ok(Self { connection, prefix: prefix.to_owned() })
    }
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn hit(&self, bucket: &str, window_start: i64, window_secs: i64) -> Result<u64, StoreError> {
        let key = format!("{}:rl:{bucket}:{window_start}", self.prefix);
        let mut connection = self.connection.clone();
        let (count, _): (u64, bool) = redis::pipe()
            .atomic()
            .incr(&key, 1u64)
            .expire(&key, window_secs * 2)
            .query_async(&mut connection)
            .await
            .map_err(|e| StoreError::Unavailable(format!("Redis: {e}")))?;
        Ok(count)
    }
}

/// Counters in this process's memory: exact for a single node (the embedded
/// SQLite deployment), and free of a database write per request.
#[derive(Debug, Default)]
pub struct LocalLimiter {
    windows: std::sync::Mutex<std::collections::HashMap<String, (i64, u64)>>,
}

impl LocalLimiter {
    /// An empty set of counters.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl RateLimiter for LocalLimiter {
    async fn hit(&self, bucket: &str, window_start: i64, _window_secs: i64) -> Result<u64, StoreError> {
        let mut windows = self.windows.lock().map_err(|_| StoreError::Other("rate limiter lock poisoned".into()))?;
        let entry = windows.entry(bucket.to_owned()).or_insert((window_start, 0));
        if entry.0 != window_start {
            *entry = (window_start, 0);
        }
        entry.1 += 1;
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
}
