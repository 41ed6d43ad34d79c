//! `blindpass serve`'s settings, resolved and validated in one place. Each
//! value comes from its flag (or the flag's `BLINDPASS_` twin, which clap
//! merges), else the `--config` file, else the default. A value out of range
//! is refused with the flag's name, never silently raised.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use blindpass_server::client_addr::TrustedProxies;
use blindpass_server::{IdOverrides, Limits};
use blindpass_service::Config;
use clap::Args;

use crate::config::{Secret, at_least};

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) store: crate::config::StoreArgs,
    #[command(flatten)]
    pub(crate) rotation: crate::rotation::RotationArgs,
    #[command(flatten)]
    pub(crate) edge: crate::edge::EdgeArgs,
    /// Address to listen on.
    #[arg(long, env = "BLINDPASS_LISTEN")]
    pub(crate) listen: Option<String>,
    /// Serve Prometheus metrics (`/metrics`) on this address only, instead
    /// of on the API listener (keep it off the public network).
    #[arg(long, env = "BLINDPASS_METRICS_LISTEN")]
    pub(crate) metrics_listen: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (leaf first); needs
    /// --tls-key. Renewed files are picked up without a restart.
    #[arg(long, env = "BLINDPASS_TLS_CERT", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "BLINDPASS_TLS_KEY", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Seconds between checks of the TLS files for a renewal (default 30).
    #[arg(long, value_parser = crate::units::secs, env = "BLINDPASS_TLS_RELOAD_SECS")]
    pub(crate) tls_reload_secs: Option<u64>,
    /// mTLS: accept client certificates from this PEM CA (optional for
    /// clients; another CA's certificate fails the handshake).
    #[arg(long, env = "BLINDPASS_CLIENT_CA", requires = "tls_cert")]
    pub(crate) client_ca: Option<PathBuf>,
    /// An attester authenticated by its client certificate instead of an API
    /// key: `NAME=ENV[:PERMISSION+PERMISSION]`, NAME the DNS name the
    /// certificate is valid for (default permission privacy_pass.write);
    /// repeatable.
    #[arg(long = "attester", env = "BLINDPASS_ATTESTERS", value_delimiter = ',', requires = "client_ca")]
    pub(crate) attesters: Vec<String>,
    /// Requests per minute per environment (0 turns rate limiting off).
    #[arg(long, env = "BLINDPASS_RATE_LIMIT")]
    pub(crate) rate_limit: Option<u64>,
    /// Optional ceiling on anonymous requests (no API key) per minute per
    /// environment, all clients together (default 0: off, since one client
    /// could exhaust it for everyone).
    #[arg(long, env = "BLINDPASS_PUBLIC_RATE_LIMIT")]
    pub(crate) public_rate_limit: Option<u64>,
    /// Anonymous requests (challenge, relay creation, generate-claim,
    /// directory) per minute per client address, IPv6 by /64 (default 600;
    /// 0 turns it off).
    #[arg(long, env = "BLINDPASS_CLIENT_RATE_LIMIT")]
    pub(crate) client_rate_limit: Option<u64>,
    /// generate-claim requests per minute per relay (default 60; 0 turns it
    /// off).
    #[arg(long, env = "BLINDPASS_RELAY_RATE_LIMIT")]
    pub(crate) relay_rate_limit: Option<u64>,
    /// Failed authentications per minute per client address before answers
    /// turn from 401 to 429 (default 60; 0 turns it off).
    #[arg(long, env = "BLINDPASS_AUTH_FAILURE_LIMIT")]
    pub(crate) auth_failure_limit: Option<u64>,
    /// Seconds before a request is answered 503.
    #[arg(long, value_parser = crate::units::secs, env = "BLINDPASS_REQUEST_TIMEOUT_SECS")]
    pub(crate) request_timeout_secs: Option<u64>,
    /// Seconds between re-reads of issuer keys from the store.
    #[arg(long, value_parser = crate::units::signed_secs, env = "BLINDPASS_KEY_REFRESH_SECS")]
    pub(crate) key_refresh_secs: Option<i64>,
    /// Seconds an API key found valid is trusted without asking the store:
    /// a revocation made elsewhere takes effect within this bound (0: ask
    /// on every request).
    #[arg(long, value_parser = crate::units::signed_secs, env = "BLINDPASS_API_KEY_CACHE_SECS")]
    pub(crate) api_key_cache_secs: Option<i64>,
    /// `Persona-Organization-Id` to report (default: generated once, stored).
    #[arg(long, env = "BLINDPASS_ORGANIZATION_ID")]
    pub(crate) organization_id: Option<String>,
    /// `Persona-Environment-Id` of the sandbox environment.
    #[arg(long, env = "BLINDPASS_SANDBOX_ENVIRONMENT_ID")]
    pub(crate) sandbox_environment_id: Option<String>,
    /// `Persona-Environment-Id` of the production environment.
    #[arg(long, env = "BLINDPASS_PRODUCTION_ENVIRONMENT_ID")]
    pub(crate) production_environment_id: Option<String>,
    /// Issuer name put in RFC 9577 challenges. Stored once per store: the first
    /// node writes it (this flag, or else its listen address) and every other
    /// node adopts it; a node given a different name refuses to start.
    #[arg(long, env = "BLINDPASS_ISSUER_NAME")]
    pub(crate) issuer_name: Option<String>,
    /// Refuse redemptions (503, with the reason) and report not ready while
    /// a spend acknowledged now could be lost to a PostgreSQL failover: no
    /// synchronous standby attached, or commits that do not wait for one.
    #[arg(
        long,
        env = "BLINDPASS_REQUIRE_SYNCHRONOUS_REPLICATION",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub(crate) require_synchronous_replication: Option<bool>,
    /// Seconds a rotated-out key still verifies tokens.
    #[arg(long, value_parser = crate::units::signed_secs, env = "BLINDPASS_KEY_OVERLAP_SECS")]
    pub(crate) key_overlap_secs: Option<i64>,
    /// Seconds a relay lives after its creation (default 86400: a day covers
    /// a verification flow that pauses overnight; after it the relay answers
    /// like an unknown one and is pruned).
    #[arg(long, value_parser = crate::units::signed_secs, env = "BLINDPASS_RELAY_LIFETIME_SECS")]
    pub(crate) relay_lifetime_secs: Option<i64>,
    /// Redis URL for rate-limit counters shared by several nodes
    /// (default: counters in the store).
    #[arg(long, env = "BLINDPASS_REDIS_URL", hide_env_values = true)]
    pub(crate) redis_url: Option<Secret>,
    /// PEM file of the CA that signs the Redis server's certificate, for a
    /// `rediss://` URL (default: the system's trust store).
    #[arg(long, env = "BLINDPASS_REDIS_CA_FILE")]
    pub(crate) redis_ca_file: Option<PathBuf>,
    /// Prefix of the Redis keys (one per deployment sharing a Redis).
    #[arg(long, env = "BLINDPASS_REDIS_KEY_PREFIX")]
    pub(crate) redis_key_prefix: Option<String>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "BLINDPASS_LOG_FORMAT")]
    pub(crate) log_format: Option<String>,
    /// Token types to issue, keep keys for and list in the directory,
    /// comma-separated, in directory order: 2 (Blind RSA), 1 (VOPRF P-384),
    /// 5 (VOPRF ristretto255). Must include 2 (default 2,1,5).
    #[arg(long, env = "BLINDPASS_TOKEN_TYPES")]
    pub(crate) token_types: Option<String>,
    /// Token types relays accept at generate-claim and offer in their 401
    /// challenges, in that order (default: every issued type).
    #[arg(long, env = "BLINDPASS_RELAY_TOKEN_TYPES")]
    pub(crate) relay_token_types: Option<String>,
}

/// A comma-separated list of token types blindpass knows, each once.
fn parse_token_types(flag: &str, text: &str) -> anyhow::Result<Vec<u16>> {
    let mut types = Vec::new();
    for part in text.split(',').map(str::trim) {
        let t: u16 = part.parse().map_err(|_| anyhow::anyhow!("--{flag}: {part:?} is not a token type"))?;
        if !blindpass_service::TOKEN_TYPES.contains(&t) {
            bail!("--{flag}: token type {t} is not one blindpass issues (2, 1, 5)");
        }
        if types.contains(&t) {
            bail!("--{flag}: token type {t} is listed twice");
        }
        types.push(t);
    }
    Ok(types)
}

/// `--token-types` and `--relay-token-types`, checked together.
fn token_types(args: &ServeArgs) -> anyhow::Result<(Vec<u16>, Vec<u16>)> {
    let issued = match args.token_types.clone() {
        Some(text) => parse_token_types("token-types", &text)?,
        None => blindpass_service::TOKEN_TYPES.to_vec(),
    };
    if !issued.contains(&2) {
        bail!("--token-types must include 2: the Persona dialect issues type 2");
    }
    let accepted = match args.relay_token_types.clone() {
        Some(text) => parse_token_types("relay-token-types", &text)?,
        None => issued.clone(),
    };
    if let Some(t) = accepted.iter().find(|t| !issued.contains(t)) {
        bail!("--relay-token-types: token type {t} is not in --token-types");
    }
    if accepted.is_empty() {
        bail!("--relay-token-types: at least one token type");
    }
    Ok((issued, accepted))
}

/// Where rate-limit counters live when several nodes share them.
#[derive(Debug)]
pub(crate) struct RedisSettings {
    pub(crate) url: String,
    pub(crate) prefix: String,
    pub(crate) ca_file: Option<PathBuf>,
}

/// Everything `serve` needs, validated.
#[derive(Debug)]
pub(crate) struct ServeSettings {
    pub(crate) listen: String,
    /// The service configuration; `issuer_name` and `key_encryption_key` are
    /// filled in by `serve` (they need the store and the KEK file).
    pub(crate) config: Config,
    pub(crate) limits: Limits,
    pub(crate) issuer_name: Option<String>,
    pub(crate) redis: Option<RedisSettings>,
    pub(crate) trusted_proxies: TrustedProxies,
    pub(crate) ids: IdOverrides,
}

impl ServeSettings {
    /// Resolves flags over the file over the defaults, and validates.
    pub(crate) fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        let request_timeout_secs = at_least("request-timeout-secs", args.request_timeout_secs, 30, 1)?;
        let config = service_config(args, request_timeout_secs)?;
        Ok(Self {
            listen: args.listen.clone().unwrap_or_else(|| "127.0.0.1:8080".into()),
            config,
            limits: crate::edge::limits(&args.edge, Duration::from_secs(request_timeout_secs))?,
            issuer_name: args.issuer_name.clone(),
            redis: args.redis_url.clone().map(|url| RedisSettings {
                url: url.as_str().to_owned(),
                prefix: args.redis_key_prefix.clone().unwrap_or_else(|| "blindpass".into()),
                ca_file: args.redis_ca_file.clone(),
            }),
            trusted_proxies: crate::edge::trusted_proxies(&args.edge)?,
            ids: IdOverrides {
                organization: args.organization_id.clone(),
                sandbox: args.sandbox_environment_id.clone(),
                production: args.production_environment_id.clone(),
            },
        })
    }
}

/// The service's tunables.
fn service_config(args: &ServeArgs, request_timeout_secs: u64) -> anyhow::Result<Config> {
    let d = Config::default();
    let (token_types, relay_token_types) = token_types(args)?;
    let mut config = Config {
        token_types,
        relay_token_types,
        rate_limit_per_minute: args.rate_limit.unwrap_or(d.rate_limit_per_minute),
        public_rate_limit_per_minute: args.public_rate_limit.unwrap_or(d.public_rate_limit_per_minute),
        client_rate_limit_per_minute: args.client_rate_limit.unwrap_or(d.client_rate_limit_per_minute),
        relay_rate_limit_per_minute: args.relay_rate_limit.unwrap_or(d.relay_rate_limit_per_minute),
        auth_failure_limit_per_minute: args.auth_failure_limit.unwrap_or(d.auth_failure_limit_per_minute),
        key_refresh_secs: at_least("key-refresh-secs", args.key_refresh_secs, d.key_refresh_secs, 1)?,
        api_key_cache_secs: at_least("api-key-cache-secs", args.api_key_cache_secs, d.api_key_cache_secs, 0)?,
        // Past the request timeout no request is still being answered, so
        // an unfinished idempotency claim belongs to a request that died.
        idempotency_stale_secs: i64::try_from(request_timeout_secs).unwrap_or(i64::MAX),
        relay_lifetime_secs: at_least("relay-lifetime-secs", args.relay_lifetime_secs, d.relay_lifetime_secs, 60)?,
        key_overlap_secs: at_least("key-overlap-secs", args.key_overlap_secs, d.key_overlap_secs, 0)?,
        issuer_name: String::new(),
        key_encryption_key: None,
        require_synchronous_replication: args.require_synchronous_replication.unwrap_or(false),
        ..d
    };
    args.rotation.apply(&mut config)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use clap::FromArgMatches;
    use clap::parser::ValueSource;

    use super::*;

    /// `serve FLAGS` with `file` as its `--config`, through the binary's own
    /// command line and config-file layering.
    fn resolve(flags: &[&str], file: &str) -> anyhow::Result<ServeSettings> {
        resolve_args(flags, file).and_then(|args| ServeSettings::resolve(&args))
    }

    fn resolve_args(flags: &[&str], file: &str) -> anyhow::Result<ServeArgs> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("blindpass.toml");
        std::fs::write(&path, file)?;
        let path = path.to_str().unwrap_or_default().to_owned();
        let argv = ["blindpass", "serve", "--config", &path].iter().chain(flags).map(|s| s.into()).collect();
        let argv = crate::config_file::apply(&crate::command(), argv)?;
        let matches = crate::command().try_get_matches_from(argv)?;
        match crate::Cli::from_arg_matches(&matches)?.command {
            crate::Command::Serve(args) => Ok(*args),
            _ => anyhow::bail!("not serve"),
        }
    }

    /// Every flag of `serve`, set through the file alone, reaches the
    /// command as if given on the command line (with the TLS files every
    /// mTLS option requires beside it).
    #[test]
    fn every_flag_can_be_set_in_the_file() {
        let mut cmd = crate::command();
        cmd.build();
        let serve = cmd.find_subcommand("serve").unwrap().clone();
        let mut checked = 0;
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "config" | "help" | "version") {
                continue;
            }
            let possible: Vec<String> = arg.get_possible_values().iter().map(|v| v.get_name().to_owned()).collect();
            let candidates = possible.iter().map(String::as_str).chain(SAMPLES.iter().copied());
            let set = candidates.into_iter().any(|value| {
                let mut file = format!("{long} = {}\n", toml::Value::String(value.to_owned()));
                for (companion, path) in [("tls-cert", "c.pem"), ("tls-key", "k.pem"), ("client-ca", "ca.pem")] {
                    if companion != long {
                        file.push_str(&format!("{companion} = \"{path}\"\n"));
                    }
                }
                serve_matches(&file)
                    .is_ok_and(|m| m.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine))
            });
            assert!(set, "--{long} cannot be set through the configuration file (or add a sample value to SAMPLES)");
            checked += 1;
        }
        assert!(checked >= 55, "only {checked} options walked");
    }

    /// Values that some option takes, tried in turn.
    const SAMPLES: &[&str] = &["1", "x", "127.0.0.1/32", "2,1,5", "attester.example=sandbox", "30d"];

    fn serve_matches(file: &str) -> anyhow::Result<clap::ArgMatches> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("blindpass.toml");
        std::fs::write(&path, file)?;
        let path = path.to_str().unwrap_or_default().to_owned();
        let argv = ["blindpass", "serve", "--config", &path].iter().map(|s| s.into()).collect();
        let argv = crate::config_file::apply(&crate::command(), argv)?;
        let matches = crate::command().try_get_matches_from(argv)?;
        matches.subcommand_matches("serve").cloned().ok_or_else(|| anyhow::anyhow!("not serve"))
    }

    #[test]
    fn durations_and_sizes_take_units_in_flags_and_in_the_file() {
        let s = resolve(&["--request-timeout-secs", "2m"], "max-body-bytes = \"64KiB\"\nrelay-lifetime-secs = \"1d\"")
            .unwrap();
        assert_eq!(s.limits.request_timeout, Duration::from_secs(120));
        assert_eq!(s.limits.max_body_bytes, 64 * 1024);
        assert_eq!(s.config.relay_lifetime_secs, 86_400);
        let old = resolve(&["--request-timeout-secs", "7"], "max-body-bytes = 4096").unwrap();
        assert_eq!((old.limits.request_timeout, old.limits.max_body_bytes), (Duration::from_secs(7), 4096));
    }

    #[test]
    fn secrets_from_the_file_are_redacted_in_debug() {
        let file = resolve_args(&[], "redis-url = \"redis://:hunter2@h\"").unwrap();
        assert!(!format!("{file:?}").contains("hunter2"));
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        assert!(resolve_args(&[], "listen = \"x\"\nbogus = 1").is_err());
        let c = resolve_args(&[], "rate-limit = 5\norganization-id = \"org_x\"").unwrap();
        assert_eq!(c.rate_limit, Some(5));
    }

    #[test]
    fn a_flag_beats_the_file_which_beats_the_default() {
        let defaults = resolve(&[], "").unwrap();
        assert_eq!(defaults.listen, "127.0.0.1:8080");
        assert_eq!(defaults.config.relay_lifetime_secs, Config::default().relay_lifetime_secs);
        assert_eq!(defaults.limits.request_timeout, Duration::from_secs(30));
        assert!(defaults.redis.is_none());

        let file =
            "listen = \"0.0.0.0:1\"\nrelay-lifetime-secs = 600\nrequest-timeout-secs = 7\nredis-url = \"redis://r\"";
        let from_file = resolve(&[], file).unwrap();
        assert_eq!(from_file.listen, "0.0.0.0:1");
        assert_eq!(from_file.config.relay_lifetime_secs, 600);
        assert_eq!(from_file.config.idempotency_stale_secs, 7, "in-flight claims go stale with the request timeout");
        assert_eq!(from_file.redis.as_ref().map(|r| r.prefix.as_str()), Some("blindpass"));

        let flagged = resolve(&["--listen", "0.0.0.0:2", "--relay-lifetime-secs", "900"], file).unwrap();
        assert_eq!(flagged.listen, "0.0.0.0:2");
        assert_eq!(flagged.config.relay_lifetime_secs, 900);
        assert_eq!(flagged.limits.request_timeout, Duration::from_secs(7), "the file still fills what no flag gave");
    }

    #[test]
    fn out_of_range_values_are_refused_by_name_not_raised() {
        for (flags, named) in [
            (&["--request-timeout-secs", "0"][..], "--request-timeout-secs"),
            (&["--relay-lifetime-secs", "59"], "--relay-lifetime-secs"),
            (&["--key-refresh-secs", "0"], "--key-refresh-secs"),
            (&["--key-overlap-secs=-1"], "--key-overlap-secs"),
            (&["--max-uri-bytes", "10"], "--max-uri-bytes"),
            (&["--max-header-bytes", "100"], "--max-header-bytes"),
            (&["--max-headers", "2"], "--max-headers"),
            (&["--max-in-flight", "0"], "--max-in-flight"),
            (&["--max-connections", "0"], "--max-connections"),
            (&["--header-read-timeout-secs", "0"], "--header-read-timeout-secs"),
            (&["--trusted-proxies", "not-an-address"], "--trusted-proxies"),
            (&["--forwarded-header", "via"], "--forwarded-header"),
            (&["--max-in-flight", "10", "--max-anonymous-in-flight", "11"], "--max-anonymous-in-flight"),
            (&["--max-in-flight-per-client", "0"], "--max-in-flight-per-client"),
            (&["--max-connections-per-client", "0"], "--max-connections-per-client"),
            (&["--body-read-timeout-secs", "0"], "--body-read-timeout-secs"),
            (&["--body-min-rate", "0"], "--body-min-rate"),
            (&["--h2-max-concurrent-streams", "0"], "--h2-max-concurrent-streams"),
        ] {
            let error = resolve(flags, "").expect_err(named).to_string();
            assert!(error.contains(named), "{flags:?}: {error}");
        }
        assert!(resolve(&[], "max-headers = 2").is_err(), "the file is validated too");
        assert!(resolve(&["--max-headers", "lots"], "").is_err(), "not a number");
    }
}
