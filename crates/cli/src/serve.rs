//! `blindpass serve`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use blindpass_server::transport::ConnectionLimits;
use blindpass_server::{AppState, IdOverrides, Limits};
use blindpass_service::{Config, Service, SystemClock};
use clap::Args;

use crate::config::{FileConfig, StoreArgs, redact_url};

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BLINDPASS_LISTEN")]
    listen: Option<String>,
    /// Requests per minute per environment (0 turns rate limiting off).
    #[arg(long, env = "BLINDPASS_RATE_LIMIT")]
    rate_limit: Option<u64>,
    /// Optional ceiling on anonymous requests (no API key) per minute per
    /// environment, all clients together (default 0: off, since one client
    /// could exhaust it for everyone).
    #[arg(long, env = "BLINDPASS_PUBLIC_RATE_LIMIT")]
    public_rate_limit: Option<u64>,
    /// Anonymous requests (challenge, relay creation, generate-claim,
    /// directory) per minute per client address, IPv6 by /64 (default 600;
    /// 0 turns it off).
    #[arg(long, env = "BLINDPASS_CLIENT_RATE_LIMIT")]
    client_rate_limit: Option<u64>,
    /// generate-claim requests per minute per relay (default 60; 0 turns it
    /// off).
    #[arg(long, env = "BLINDPASS_RELAY_RATE_LIMIT")]
    relay_rate_limit: Option<u64>,
    /// Failed authentications per minute per client address before answers
    /// turn from 401 to 429 (default 60; 0 turns it off).
    #[arg(long, env = "BLINDPASS_AUTH_FAILURE_LIMIT")]
    auth_failure_limit: Option<u64>,
    /// Reverse proxies (comma-separated addresses or CIDR blocks) whose
    /// `Forwarded` / `X-Forwarded-For` headers name the client; from any
    /// other peer these headers are ignored (default: none).
    #[arg(long, env = "BLINDPASS_TRUSTED_PROXIES")]
    trusted_proxies: Option<String>,
    /// Seconds before a request is answered 503.
    #[arg(long, env = "BLINDPASS_REQUEST_TIMEOUT_SECS")]
    request_timeout_secs: Option<u64>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "BLINDPASS_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Seconds between re-reads of issuer keys from the store.
    #[arg(long, env = "BLINDPASS_KEY_REFRESH_SECS")]
    key_refresh_secs: Option<i64>,
    /// `Persona-Organization-Id` to report (default: generated once, stored).
    #[arg(long, env = "BLINDPASS_ORGANIZATION_ID")]
    organization_id: Option<String>,
    /// `Persona-Environment-Id` of the sandbox environment.
    #[arg(long, env = "BLINDPASS_SANDBOX_ENVIRONMENT_ID")]
    sandbox_environment_id: Option<String>,
    /// `Persona-Environment-Id` of the production environment.
    #[arg(long, env = "BLINDPASS_PRODUCTION_ENVIRONMENT_ID")]
    production_environment_id: Option<String>,
    /// Issuer name put in RFC 9577 challenges. Stored once per store: the first
    /// node writes it (this flag, or else its listen address) and every other
    /// node adopts it; a node given a different name refuses to start.
    #[arg(long, env = "BLINDPASS_ISSUER_NAME")]
    issuer_name: Option<String>,
    /// Seconds a rotated-out key still verifies tokens.
    #[arg(long, env = "BLINDPASS_KEY_OVERLAP_SECS")]
    key_overlap_secs: Option<i64>,
    /// Seconds a relay lives after its creation (default 86400: a day covers
    /// a verification flow that pauses overnight; after it the relay answers
    /// like an unknown one and is pruned).
    #[arg(long, env = "BLINDPASS_RELAY_LIFETIME_SECS")]
    relay_lifetime_secs: Option<i64>,
    /// Seconds a client has to send a request's headers; also how long an idle
    /// keep-alive connection stays open (default 10).
    #[arg(long, env = "BLINDPASS_HEADER_READ_TIMEOUT_SECS")]
    header_read_timeout_secs: Option<u64>,
    /// Largest request head (request line and headers) in bytes; larger is 431
    /// (default 16384).
    #[arg(long, env = "BLINDPASS_MAX_HEADER_BYTES")]
    max_header_bytes: Option<usize>,
    /// Most header fields in one request; more is 431 (default 100).
    #[arg(long, env = "BLINDPASS_MAX_HEADERS")]
    max_headers: Option<usize>,
    /// Longest request target (path and query) in bytes; longer is 414
    /// (default 2048).
    #[arg(long, env = "BLINDPASS_MAX_URI_BYTES")]
    max_uri_bytes: Option<usize>,
    /// Most open connections; past it a new connection gets 503 and is closed
    /// (default 4096).
    #[arg(long, env = "BLINDPASS_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Most requests answered at once; past it a request gets 503 with
    /// Retry-After at once (default 1024).
    #[arg(long, env = "BLINDPASS_MAX_IN_FLIGHT")]
    max_in_flight: Option<usize>,
    /// Seconds in-flight requests get after SIGTERM before their connections are
    /// dropped (default 10).
    #[arg(long, env = "BLINDPASS_SHUTDOWN_DEADLINE_SECS")]
    shutdown_deadline_secs: Option<u64>,
    /// Redis URL for rate-limit counters shared by several nodes
    /// (default: counters in the store).
    #[arg(long, env = "BLINDPASS_REDIS_URL", hide_env_values = true)]
    redis_url: Option<crate::config::Secret>,
    /// PEM file of the CA that signs the Redis server's certificate, for a
    /// `rediss://` URL (default: the system's trust store).
    #[arg(long, env = "BLINDPASS_REDIS_CA_FILE")]
    redis_ca_file: Option<std::path::PathBuf>,
    /// Prefix of the Redis keys (one per deployment sharing a Redis).
    #[arg(long, env = "BLINDPASS_REDIS_KEY_PREFIX")]
    redis_key_prefix: Option<String>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "BLINDPASS_LOG_FORMAT")]
    log_format: Option<String>,
}

pub(crate) fn run(store_args: &StoreArgs, args: ServeArgs) -> anyhow::Result<()> {
    let file = FileConfig::load(store_args.config.as_deref())?;
    let log_format = args.log_format.clone().or_else(|| file.log_format.clone()).unwrap_or_else(|| "text".into());
    init_logging(&log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(serve(store_args, args, file))
}

async fn serve(store_args: &StoreArgs, args: ServeArgs, file: FileConfig) -> anyhow::Result<()> {
    let listen = args.listen.or(file.listen.clone()).unwrap_or_else(|| "127.0.0.1:8080".into());
    let defaults = Config::default();
    let request_timeout_secs = args.request_timeout_secs.or(file.request_timeout_secs).unwrap_or(30).max(1);
    let mut config = Config {
        rate_limit_per_minute: args.rate_limit.or(file.rate_limit).unwrap_or(defaults.rate_limit_per_minute),
        public_rate_limit_per_minute: args
            .public_rate_limit
            .or(file.public_rate_limit)
            .unwrap_or(defaults.public_rate_limit_per_minute),
        client_rate_limit_per_minute: args
            .client_rate_limit
            .or(file.client_rate_limit)
            .unwrap_or(defaults.client_rate_limit_per_minute),
        relay_rate_limit_per_minute: args
            .relay_rate_limit
            .or(file.relay_rate_limit)
            .unwrap_or(defaults.relay_rate_limit_per_minute),
        auth_failure_limit_per_minute: args
            .auth_failure_limit
            .or(file.auth_failure_limit)
            .unwrap_or(defaults.auth_failure_limit_per_minute),
        key_refresh_secs: args.key_refresh_secs.or(file.key_refresh_secs).unwrap_or(defaults.key_refresh_secs).max(1),
        // Past the request timeout no request is still being answered, so an
        // unfinished idempotency claim belongs to a request that died.
        idempotency_stale_secs: i64::try_from(request_timeout_secs).unwrap_or(i64::MAX),
        relay_lifetime_secs: args
            .relay_lifetime_secs
            .or(file.relay_lifetime_secs)
            .unwrap_or(defaults.relay_lifetime_secs)
            .max(60),
        key_overlap_secs: args.key_overlap_secs.or(file.key_overlap_secs).unwrap_or(defaults.key_overlap_secs).max(0),
        // Replaced below by the name agreed with the store.
        issuer_name: String::new(),
        key_encryption_key: store_args.kek(&file)?,
    };
    let d = Limits::default();
    let limits = Limits {
        max_body_bytes: args.max_body_bytes.or(file.max_body_bytes).unwrap_or(d.max_body_bytes),
        request_timeout: Duration::from_secs(request_timeout_secs),
        max_in_flight: args.max_in_flight.or(file.max_in_flight).unwrap_or(d.max_in_flight).max(1),
        max_uri_bytes: args.max_uri_bytes.or(file.max_uri_bytes).unwrap_or(d.max_uri_bytes).max(64),
        connections: ConnectionLimits {
            header_read_timeout: args
                .header_read_timeout_secs
                .or(file.header_read_timeout_secs)
                .map_or(d.connections.header_read_timeout, |s| Duration::from_secs(s.max(1))),
            max_header_bytes: args
                .max_header_bytes
                .or(file.max_header_bytes)
                .unwrap_or(d.connections.max_header_bytes)
                .max(1024),
            max_headers: args.max_headers.or(file.max_headers).unwrap_or(d.connections.max_headers).max(8),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(d.connections.max_connections)
                .max(1),
            shutdown_deadline: args
                .shutdown_deadline_secs
                .or(file.shutdown_deadline_secs)
                .map_or(d.connections.shutdown_deadline, Duration::from_secs),
        },
    };
    let url = store_args.database_url(&file);
    let store = store_args.open(&file).await?;
    let configured_name = args.issuer_name.clone().or(file.issuer_name.clone());
    config.issuer_name = blindpass_service::identity::agree_issuer_name(&*store, configured_name.as_deref(), &listen)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(issuer_name = %config.issuer_name, "issuer name (shared by every node on this store)");
    let service = match args.redis_url.as_ref().or(file.redis_url.as_ref()).map(|s| s.as_str().to_owned()) {
        Some(redis) => {
            let prefix =
                args.redis_key_prefix.clone().or(file.redis_key_prefix.clone()).unwrap_or_else(|| "blindpass".into());
            let ca = match args.redis_ca_file.clone().or(file.redis_ca_file.clone()) {
                Some(path) => Some(
                    std::fs::read(&path).with_context(|| format!("reading the Redis CA file {}", path.display()))?,
                ),
                None => None,
            };
            let limiter = blindpass_service::RedisLimiter::connect(&redis, &prefix, ca)
                .await
                .with_context(|| format!("connecting to Redis at {}", redact_url(&redis)))?;
            tracing::info!(redis = %redact_url(&redis), "rate-limit counters in Redis");
            Service::with_limiter(store, Arc::new(SystemClock), config.clone(), Arc::new(limiter))
        }
        // One node on SQLite: counters in memory (exact, no write per request).
        None if url.starts_with("sqlite:") => {
            let limiter = Arc::new(blindpass_service::LocalLimiter::new());
            Service::with_limiter(store, Arc::new(SystemClock), config.clone(), limiter)
        }
        // Several nodes without Redis: the database counts.
        None => Service::new(store, Arc::new(SystemClock), config.clone()),
    };

    let plaintext = service.check_key_material().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    match &config.key_encryption_key {
        None => tracing::warn!(
            "NO KEY-ENCRYPTION KEY: issuer private keys and server secrets are stored UNENCRYPTED; \
             anyone who can read the store can mint tokens (see --key-encryption-key-file)"
        ),
        Some(kek) if plaintext > 0 => tracing::warn!(
            kek = %kek.id(),
            plaintext,
            "some key material is still stored unencrypted: run `blindpass keys rewrap --new-key-encryption-key-file …`"
        ),
        Some(kek) => tracing::info!(kek = %kek.id(), "key material sealed under the key-encryption key"),
    }
    for key in service.ensure_initial_keys().await.context("creating initial issuer keys")? {
        tracing::info!(environment = %key.environment, token_key_id = %key.id, "created issuer key");
    }
    for environment in blindpass_service::Environment::ALL {
        for key in service.keys_of(environment).await.context("loading issuer keys")? {
            tracing::info!(
                environment = %environment,
                token_key_id = %key.public.token_key_id(),
                persona_key_id = %key.public.persona_key_id(),
                state = key.record.state.as_str(),
                "issuer key"
            );
        }
    }
    let overrides = IdOverrides {
        organization: args.organization_id.or(file.organization_id),
        sandbox: args.sandbox_environment_id.or(file.sandbox_environment_id),
        production: args.production_environment_id.or(file.production_environment_id),
    };
    let ids = blindpass_server::load_ids(&service, &overrides).await.context("loading organization ids")?;
    let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr().context("reading the listen address")?;
    tracing::info!(
        listen = %local,
        store = %redact_url(&url),
        rate_limit = config.rate_limit_per_minute,
        "blindpass listening"
    );
    let trusted_proxies = args.trusted_proxies.clone().or(file.trusted_proxies.clone()).unwrap_or_default();
    let trusted_proxies = blindpass_server::client_addr::TrustedProxies::parse(&trusted_proxies)
        .map_err(|e| anyhow::anyhow!("--trusted-proxies: {e}"))?;
    let state = AppState { service, ids, limits, trusted_proxies: Arc::new(trusted_proxies) };
    blindpass_server::serve(listener, state, shutdown_signal()).await.context("serving")?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

fn init_logging(format: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => anyhow::bail!("unknown log format {other:?} (expected text or json)"),
    }
    Ok(())
}
