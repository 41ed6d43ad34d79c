//! `blindpass serve`.

use std::sync::Arc;

use anyhow::Context;
use blindpass_server::AppState;
use blindpass_service::{Service, SystemClock};

use crate::config::{StoreArgs, redact_url};
pub(crate) use crate::settings::ServeArgs;
use crate::settings::{RedisSettings, ServeSettings};

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    let store_args = &args.store.clone();
    let log_format = args.log_format.clone().unwrap_or_else(|| "text".into());
    init_logging(&log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(serve(store_args, args))
}

async fn serve(store_args: &StoreArgs, args: ServeArgs) -> anyhow::Result<()> {
    let ServeSettings { listen, mut config, limits, issuer_name, redis, trusted_proxies, ids: overrides } =
        ServeSettings::resolve(&args)?;
    config.key_encryption_key = store_args.kek()?;
    config.pkcs11 = store_args.signer.open()?;
    let url = store_args.database_url();
    let store = store_args.open().await?;
    config.issuer_name = blindpass_service::identity::agree_issuer_name(&*store, issuer_name.as_deref(), &listen)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(issuer_name = %config.issuer_name, "issuer name (shared by every node on this store)");
    let service = service(store, &url, config.clone(), redis.as_ref()).await?;
    check_key_material(&service).await?;
    prepare_keys(&service).await?;
    let ids = blindpass_server::load_ids(&service, &overrides).await.context("loading organization ids")?;
    let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr().context("reading the listen address")?;
    let rate_limit = config.rate_limit_per_minute;
    tracing::info!(listen = %local, store = %redact_url(&url), rate_limit, "blindpass listening");
    let tls = tls(&args)?;
    let metrics = match &args.metrics_listen {
        Some(addr) => Some(metrics_listener(addr, service.clone(), limits.connections).await?),
        None => None,
    };
    let state = AppState {
        service,
        ids: Arc::new(ids),
        limits,
        trusted_proxies: Arc::new(trusted_proxies),
        expose_metrics: metrics.is_none(),
    };
    blindpass_server::serve(listener, state, tls, shutdown_signal()).await.context("serving")?;
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// HTTPS from `--tls-cert`/`--tls-key` (and mTLS attesters), if given.
fn tls(args: &ServeArgs) -> anyhow::Result<Option<Arc<blindpass_server::tls::ReloadingTls>>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else { return Ok(None) };
    let reload_every = std::time::Duration::from_secs(args.tls_reload_secs.unwrap_or(30).max(1));
    let attesters = args.attesters.iter().map(|a| attester(a)).collect::<anyhow::Result<Vec<_>>>()?;
    let files = blindpass_server::tls::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        reload_every,
        client_ca: args.client_ca.clone(),
        attesters,
    };
    Ok(Some(blindpass_server::tls::ReloadingTls::load(files)?))
}

/// `--attester NAME=ENV[:PERMISSION+PERMISSION]`.
fn attester(text: &str) -> anyhow::Result<blindpass_server::tls::Attester> {
    let bad = || anyhow::anyhow!("--attester {text:?}: expected NAME=ENV[:PERMISSION+PERMISSION]");
    let (name, rest) = text.split_once('=').ok_or_else(bad)?;
    let (environment, permissions) = rest.split_once(':').map_or((rest, None), |(e, p)| (e, Some(p)));
    let environment = environment.parse().map_err(|_| bad())?;
    let permissions = match permissions {
        None => vec![blindpass_service::Permission::PrivacyPassWrite],
        Some(list) => list.split('+').map(|p| p.parse().map_err(|_| bad())).collect::<anyhow::Result<_>>()?,
    };
    blindpass_server::tls::Attester::new(name, environment, permissions).map_err(|e| anyhow::anyhow!("--attester: {e}"))
}

/// Serves `/metrics` alone on `addr` until the process stops, with the API
/// listener's connection defences (header-read timeout, idle close,
/// connection caps and per-client shares).
async fn metrics_listener(
    addr: &str,
    service: Service,
    connections: blindpass_server::transport::ConnectionLimits,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding --metrics-listen {addr}"))?;
    let local = listener.local_addr().context("reading the metrics address")?;
    tracing::info!(metrics = %local, "metrics listening");
    let app = blindpass_server::metrics_router(service);
    Ok(tokio::spawn(async move {
        let forever = std::future::pending();
        if let Err(e) = blindpass_server::transport::serve_connections(listener, app, connections, forever).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    }))
}

/// The service with its rate-limit counters where the deployment wants them.
async fn service(
    store: Arc<dyn blindpass_service::Store>,
    url: &str,
    config: blindpass_service::Config,
    redis: Option<&RedisSettings>,
) -> anyhow::Result<Service> {
    let limiter: Arc<dyn blindpass_service::RateLimiter> = match redis {
        Some(redis) => Arc::new(redis_limiter(redis).await?),
        // One node on SQLite: counters in memory (exact, no write per request).
        None if url.starts_with("sqlite:") => Arc::new(blindpass_service::LocalLimiter::new()),
        // Several nodes without Redis: the database counts.
        None => return Ok(Service::new(store, Arc::new(SystemClock), config)),
    };
    Ok(Service::builder(store, Arc::new(SystemClock), config).limiter(limiter).build())
}

async fn redis_limiter(redis: &RedisSettings) -> anyhow::Result<blindpass_service::RedisLimiter> {
    let ca = match &redis.ca_file {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("reading the Redis CA file {}", path.display()))?)
        }
        None => None,
    };
    let limiter = blindpass_service::RedisLimiter::connect(&redis.url, &redis.prefix, ca)
        .await
        .with_context(|| format!("connecting to Redis at {}", redact_url(&redis.url)))?;
    tracing::info!(redis = %redact_url(&redis.url), "rate-limit counters in Redis");
    Ok(limiter)
}

/// Refuses to start on key material the configured KEK cannot open, or
/// that is stored unsealed although a KEK is configured; warns loudly when
/// there is no KEK.
async fn check_key_material(service: &Service) -> anyhow::Result<()> {
    let plaintext = service.check_key_material().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    match &service.config().key_encryption_key {
        None => tracing::warn!(
            plaintext,
            "NO KEY-ENCRYPTION KEY: issuer private keys and server secrets are stored UNENCRYPTED; \
             anyone who can read the store can mint tokens (see --key-encryption-key-file)"
        ),
        Some(kek) => tracing::info!(kek = %kek.id(), "key material sealed under the key-encryption key"),
    }
    Ok(())
}

/// Creates the first keys of an empty store and logs every key.
async fn prepare_keys(service: &Service) -> anyhow::Result<()> {
    for key in service.ensure_initial_keys().await.context("creating initial issuer keys")? {
        tracing::info!(environment = %key.environment, token_type = key.token_type, token_key_id = %key.id, "created issuer key");
    }
    for environment in blindpass_service::Environment::ALL {
        for key in service.keys_of(environment).await.context("loading issuer keys")? {
            let persona_key_id = key.blind_rsa().map(|k| k.persona_key_id().to_hex());
            tracing::info!(
                environment = %environment,
                token_type = key.token_type(),
                token_key_id = %key.token_key_id(),
                persona_key_id = persona_key_id.as_deref().unwrap_or("-"),
                state = key.record.state.as_str(),
                "issuer key"
            );
        }
    }
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
