//! Where rate-limit counters live: the store (default; shared by every node
//! on it) or Redis (`INCR` + `EXPIRE` per window; cheaper per request and
//! shared by every node that uses the same Redis).

use std::sync::Arc;

use async_trait::async_trait;

use crate::Cause;
use crate::{Store, StoreError};

/// Which counters a bucket may share memory with, and whether it may be
/// forgotten. Classes never share a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketClass {
    /// Environments, API keys, attesters, relays and anonymous ceilings:
    /// few (bounded by what the operator and the store hold), never evicted
    /// and never refused for want of room.
    Protected,
    /// Client addresses (anonymous requests, failed authentications): as
    /// many as there are hosts, so their memory is bounded by forgetting
    /// the least recently used; forgetting one only makes its count start
    /// again, it never refuses anyone else.
    Client,
}

/// One rate-limit counter: its kind (`env`, `apikey`, `client`, …), the
/// name within the kind, and its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket<'a> {
    /// `env`, `apikey`, `relay`, `public`, `client` or `authfail`.
    pub kind: &'static str,
    /// The environment, key id, relay token or client bucket.
    pub name: &'a str,
    /// Its class.
    pub class: BucketClass,
}

impl Bucket<'_> {
    /// `kind:name`, the counter's key in every backend.
    pub fn key(&self) -> String {
        format!("{}:{}", self.kind, self.name)
    }
}

/// Fixed-window counters.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Adds `n` hits to `bucket`'s window starting at `window_start`
    /// (lasting `window_secs`) and returns the count so far (`n = 0`
    /// reads it). Atomic across nodes.
    async fn add(&self, bucket: &Bucket<'_>, window_start: i64, window_secs: i64, n: u64) -> Result<u64, StoreError>;
    /// Adds one hit.
    async fn hit(&self, bucket: &Bucket<'_>, window_start: i64, window_secs: i64) -> Result<u64, StoreError> {
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
    async fn add(&self, bucket: &Bucket<'_>, window_start: i64, _window_secs: i64, n: u64) -> Result<u64, StoreError> {
        self.store.rate_limit_add(&bucket.key(), window_start, n).await
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
        .map_err(|e| StoreError::Other(Cause::while_("invalid Redis URL or CA", e)))?;
        let connection = client
            .get_connection_manager()
            .await
            .map_err(|e| StoreError::Unavailable(Cause::while_("connecting to Redis", e)))?;
        Ok(Self { connection, prefix: prefix.to_owned() })
    }
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn add(&self, bucket: &Bucket<'_>, window_start: i64, window_secs: i64, n: u64) -> Result<u64, StoreError> {
        let key = format!("{}:rl:{}:{window_start}", self.prefix, bucket.key());
        let mut connection = self.connection.clone();
        let (count, _): (u64, bool) = redis::pipe()
            .atomic()
            .incr(&key, n)
            .expire(&key, window_secs * 2)
            .query_async(&mut connection)
            .await
            .map_err(|e| StoreError::Unavailable(Cause::while_("Redis", e)))?;
        Ok(count)
    }
}

/// Counters in this process's memory: exact for a single node (the embedded
/// SQLite deployment), and free of a database write per request.
///
/// The two classes live apart. Protected buckets (environments, API keys,
/// relays, ceilings) are as many as the store holds; their past windows are
/// swept once a window. Client buckets are keyed by addresses, which an
/// attacker can make up by the hundred thousand, so they are held in a map
/// of at most `max_client_buckets`: a newcomer to a full map first drops
/// the buckets of past windows, then the least recently used sixteenth.
/// A forgotten client starts its window again (a flood can make the limit
/// of the clients it pushes out more lenient, never stricter), and nothing
/// a client does can touch a protected bucket: there is no shared overflow
/// counter.
#[derive(Debug)]
pub struct LocalLimiter {
    protected: std::sync::Mutex<Protected>,
    clients: std::sync::Mutex<Clients>,
}

#[derive(Debug, Default)]
struct Protected {
    windows: HashMap<String, (i64, u64)>,
    swept_at: i64,
}

#[derive(Debug)]
struct Clients {
    windows: HashMap<String, ClientWindow>,
    capacity: usize,
    /// A logical clock: each use takes the next value.
    uses: u64,
    evicted: u64,
}

#[derive(Debug, Clone, Copy)]
struct ClientWindow {
    start: i64,
    count: u64,
    used: u64,
}

use std::collections::HashMap;

/// Default cap on in-memory client buckets (each ~100 bytes).
pub(crate) const DEFAULT_MAX_BUCKETS: usize = 100_000;

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

    /// An empty set of counters holding at most `max_client_buckets` client
    /// buckets.
    pub fn with_capacity(max_client_buckets: usize) -> Self {
        Self {
            protected: std::sync::Mutex::default(),
            clients: std::sync::Mutex::new(Clients {
                windows: HashMap::new(),
                capacity: max_client_buckets.max(16),
                uses: 0,
                evicted: 0,
            }),
        }
    }

    /// How many client buckets are held.
    pub(crate) fn client_buckets(&self) -> usize {
        self.clients.lock().map_or(0, |c| c.windows.len())
    }

    /// How many client buckets were forgotten to make room.
    pub fn evicted(&self) -> u64 {
        self.clients.lock().map_or(0, |c| c.evicted)
    }

    /// How many buckets are held, of both classes.
    pub fn len(&self) -> usize {
        self.client_buckets() + self.protected.lock().map_or(0, |p| p.windows.len())
    }

    /// True when no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Other("rate limiter lock poisoned".into())
}

impl Protected {
    fn add(&mut self, key: String, window_start: i64, n: u64) -> u64 {
        if window_start > self.swept_at {
            self.windows.retain(|_, (start, _)| *start >= window_start);
            self.swept_at = window_start;
        }
        let entry = self.windows.entry(key).or_insert((window_start, 0));
        if entry.0 != window_start {
            *entry = (window_start, 0);
        }
        entry.1 = entry.1.saturating_add(n);
        entry.1
    }
}

impl Clients {
    fn add(&mut self, key: String, window_start: i64, n: u64) -> u64 {
        self.uses += 1;
        let used = self.uses;
        if !self.windows.contains_key(&key) && self.windows.len() >= self.capacity {
            self.make_room(window_start);
        }
        let entry = self.windows.entry(key).or_insert(ClientWindow { start: window_start, count: 0, used });
        if entry.start != window_start {
            *entry = ClientWindow { start: window_start, count: 0, used };
        }
        entry.used = used;
        entry.count = entry.count.saturating_add(n);
        entry.count
    }

    /// Drops past windows; if that frees nothing, the least recently used
    /// sixteenth (one sort per `capacity / 16` newcomers).
    fn make_room(&mut self, window_start: i64) {
        let before = self.windows.len();
        self.windows.retain(|_, w| w.start >= window_start);
        if self.windows.len() < self.capacity {
            self.evicted += (before - self.windows.len()) as u64;
            return;
        }
        let drop = (self.capacity / 16).max(1);
        let mut uses: Vec<u64> = self.windows.values().map(|w| w.used).collect();
        let nth = drop.min(uses.len().saturating_sub(1));
        let (_, oldest_kept, _) = uses.select_nth_unstable(nth);
        let cutoff = *oldest_kept;
        self.windows.retain(|_, w| w.used >= cutoff);
        self.evicted += (before - self.windows.len()) as u64;
    }
}

#[async_trait]
impl RateLimiter for LocalLimiter {
    async fn add(&self, bucket: &Bucket<'_>, window_start: i64, _window_secs: i64, n: u64) -> Result<u64, StoreError> {
        Ok(match bucket.class {
            BucketClass::Protected => self.protected.lock().map_err(poisoned)?.add(bucket.key(), window_start, n),
            BucketClass::Client => self.clients.lock().map_err(poisoned)?.add(bucket.key(), window_start, n),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Bucket<'_> {
        Bucket { kind: "env", name, class: BucketClass::Protected }
    }

    fn client(name: &str) -> Bucket<'_> {
        Bucket { kind: "client", name, class: BucketClass::Client }
    }

    #[tokio::test]
    async fn local_windows_count_and_reset() {
        let limiter = LocalLimiter::new();
        assert_eq!(limiter.hit(&env("sandbox"), 60, 60).await.unwrap(), 1);
        assert_eq!(limiter.hit(&env("sandbox"), 60, 60).await.unwrap(), 2);
        assert_eq!(limiter.hit(&env("production"), 60, 60).await.unwrap(), 1);
        assert_eq!(limiter.add(&env("sandbox"), 60, 60, 0).await.unwrap(), 2, "n = 0 reads");
        assert_eq!(limiter.hit(&env("sandbox"), 120, 60).await.unwrap(), 1, "a new window starts at 1");
        assert_eq!(limiter.hit(&client("sandbox"), 120, 60).await.unwrap(), 1, "classes never share a counter");
    }

    #[tokio::test]
    async fn a_flood_of_clients_never_touches_a_protected_bucket_or_a_recent_client() {
        let limiter = LocalLimiter::with_capacity(1_000);
        assert_eq!(limiter.hit(&env("sandbox"), 60, 60).await.unwrap(), 1);
        assert_eq!(limiter.hit(&client("victim"), 60, 60).await.unwrap(), 1);
        for i in 0..10_000 {
            limiter.hit(&client(&format!("attacker-{i}")), 60, 60).await.unwrap();
            if i % 100 == 0 {
                // The victim keeps coming back: it is never the least recent.
                limiter.hit(&client("victim"), 60, 60).await.unwrap();
            }
        }
        assert!(limiter.client_buckets() <= 1_000, "{}", limiter.client_buckets());
        assert!(limiter.evicted() >= 9_000);
        assert_eq!(limiter.hit(&env("sandbox"), 60, 60).await.unwrap(), 2, "the environment kept its count");
        assert_eq!(limiter.hit(&client("victim"), 60, 60).await.unwrap(), 102, "a recent client kept its count");
        // A newcomer gets a bucket of its own, never a shared one.
        assert_eq!(limiter.hit(&client("newcomer-a"), 60, 60).await.unwrap(), 1);
        assert_eq!(limiter.hit(&client("newcomer-b"), 60, 60).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn past_windows_go_first() {
        let limiter = LocalLimiter::with_capacity(16);
        for i in 0..16 {
            limiter.hit(&client(&format!("old-{i}")), 60, 60).await.unwrap();
        }
        limiter.hit(&client("new"), 120, 60).await.unwrap();
        assert_eq!(limiter.client_buckets(), 1, "every past window was dropped, nothing recent");
        for i in 0..100 {
            limiter.hit(&env(&format!("e{i}")), 120, 60).await.unwrap();
        }
        limiter.hit(&env("e0"), 180, 60).await.unwrap();
        assert_eq!(limiter.len(), 2, "protected buckets of past windows are swept once a window");
    }
}
