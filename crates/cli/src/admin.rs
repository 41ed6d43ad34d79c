//! `blindpass api-keys …` and `blindpass keys …`: administration on the same
//! store a running server uses.

use std::sync::Arc;

use anyhow::{Context, bail};
use blindpass_service::{Config, Environment, Permission, Service, SystemClock};
use clap::{Args, Subcommand};

use crate::config::StoreArgs;

#[derive(Debug, Subcommand)]
pub(crate) enum ApiKeysCommand {
    /// Create an API key; the secret is printed once, alone on the last line.
    Create(CreateApiKey),
    /// List API keys (never their secrets).
    List,
    /// Change an API key's own rate limit.
    Update {
        /// The key id (`api_…`).
        id: String,
        /// Requests per minute this key may make, counted beside its
        /// environment's limit; `none` removes the key's own limit.
        #[arg(long, value_parser = parse_rate_limit)]
        rate_limit: RateLimitArg,
    },
    /// Revoke an API key by id.
    Revoke {
        /// The key id (`api_…`).
        id: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct CreateApiKey {
    /// Environment: sandbox or production.
    #[arg(long = "env", value_parser = parse_environment)]
    environment: Environment,
    /// Permission to grant (repeatable); default privacy_pass.write.
    #[arg(long = "permission", value_parser = parse_permission)]
    permissions: Vec<Permission>,
    /// A label for operators.
    #[arg(long)]
    name: Option<String>,
    /// Requests per minute this key may make, counted beside its
    /// environment's limit (Persona 2026-09-29); default: only the
    /// environment's limit.
    #[arg(long, value_parser = parse_positive)]
    rate_limit: Option<u64>,
}

/// `--rate-limit N` or `--rate-limit none`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateLimitArg(Option<u64>);

fn parse_positive(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if n > 0 && i64::try_from(n).is_ok() => Ok(n),
        _ => Err(format!("expected a number of requests per minute (1 or more), found {text:?}")),
    }
}

fn parse_rate_limit(text: &str) -> Result<RateLimitArg, String> {
    match text {
        "none" => Ok(RateLimitArg(None)),
        n => parse_positive(n).map(|n| RateLimitArg(Some(n))).map_err(|e| format!("{e}, or none")),
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// List issuer keys.
    List {
        /// Only this environment.
        #[arg(long = "env", value_parser = parse_environment)]
        environment: Option<Environment>,
    },
    /// Create a new key; the previous active key becomes verify-only when the
    /// new one takes over (at once, or after --announce-secs).
    Rotate {
        /// Environment to rotate.
        #[arg(long = "env", value_parser = parse_environment)]
        environment: Environment,
        /// Token type of the key: 2 (Blind RSA, the default), 1 (VOPRF
        /// P-384) or 5 (VOPRF ristretto255).
        #[arg(long, default_value_t = 2, value_parser = parse_token_type)]
        token_type: u16,
        /// List the new key in the directory this many seconds before it
        /// starts issuing (its `not-before`).
        #[arg(long)]
        announce_secs: Option<i64>,
    },
    /// Retire a key (by either of its ids): it neither issues nor verifies.
    Retire {
        /// The key id (hex).
        id: String,
        /// Also destroy the key's objects in the PKCS#11 token (needs
        /// --signer pkcs11): the key can then never sign again, anywhere.
        /// Works on a key retired earlier (give its token key id).
        #[arg(long)]
        destroy: bool,
    },
    /// Re-encrypt every issuer private key and server secret from the
    /// current key-encryption key (--key-encryption-key-file, or plaintext)
    /// to a new one, in one transaction.
    Rewrap {
        /// File holding the new key-encryption key.
        #[arg(long, required_unless_present = "to_plaintext")]
        new_key_encryption_key_file: Option<std::path::PathBuf>,
        /// Store the key material unencrypted instead.
        #[arg(long, conflicts_with = "new_key_encryption_key_file")]
        to_plaintext: bool,
    },
    /// Print a fresh random key-encryption key (64 hex digits).
    GenerateKek,
}

fn parse_environment(s: &str) -> Result<Environment, String> {
    s.parse().map_err(|_| format!("unknown environment {s:?} (expected sandbox or production)"))
}

fn parse_token_type(s: &str) -> Result<u16, String> {
    s.parse()
        .ok()
        .filter(|t| blindpass_service::TOKEN_TYPES.contains(t))
        .ok_or_else(|| format!("unknown token type {s:?} (expected 2, 1 or 5)"))
}

fn parse_permission(s: &str) -> Result<Permission, String> {
    s.parse().map_err(|_| format!("unknown permission {s:?} (expected privacy_pass.write or relay.verify)"))
}

/// Runs `f` on a service over the store; `signer`: the command makes or
/// destroys type-2 keys, so `--signer pkcs11` opens the token.
fn with_service<T>(
    store_args: &StoreArgs,
    signer: bool,
    f: impl AsyncFnOnce(Service) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let key_encryption_key = store_args.kek()?;
    let pkcs11 = if signer { store_args.signer.open()? } else { None };
    with_store(store_args, async move |store| {
        let config = Config { key_encryption_key, pkcs11, ..Config::default() };
        f(Service::new(store, Arc::new(SystemClock), config)).await
    })
}

/// Runs `f` on the store alone (no service: nothing is loaded or created).
fn with_store<T>(
    store_args: &StoreArgs,
    f: impl AsyncFnOnce(Arc<dyn blindpass_store::Store>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async { f(store_args.open().await?).await })
}

pub(crate) fn run_api_keys(store_args: &StoreArgs, cmd: ApiKeysCommand) -> anyhow::Result<()> {
    with_service(store_args, false, async move |service| match cmd {
        ApiKeysCommand::Create(args) => create_api_key(&service, args).await,
        ApiKeysCommand::List => list_api_keys(&service).await,
        ApiKeysCommand::Update { id, rate_limit: RateLimitArg(limit) } => {
            if !service.set_api_key_rate_limit(&id, limit).await? {
                bail!("no API key with id {id}");
            }
            match limit {
                Some(n) => println!("{id}: rate limit {n} requests per minute"),
                None => println!("{id}: no rate limit of its own (the environment's applies)"),
            }
            Ok(())
        }
        ApiKeysCommand::Revoke { id } => {
            if !service.revoke_api_key(&id).await? {
                bail!("no API key with id {id}");
            }
            println!("revoked {id}");
            Ok(())
        }
    })
}

/// `api-keys create`: the secret alone on the last line, shown once.
async fn create_api_key(service: &blindpass_service::Service, args: CreateApiKey) -> anyhow::Result<()> {
    let permissions = if args.permissions.is_empty() { vec![Permission::PrivacyPassWrite] } else { args.permissions };
    let created = service.create_api_key_with_limit(args.environment, permissions, args.name, args.rate_limit).await?;
    let key = &created.key;
    println!("id: {}", key.id);
    println!("environment: {}", key.environment);
    println!("permissions: {}", join(&key.permissions));
    if let Some(limit) = key.rate_limit_per_minute {
        println!("rate-limit: {limit} requests per minute");
    }
    if let Some(name) = &key.name {
        println!("name: {name}");
    }
    println!("# the secret below is shown once; store it now");
    println!("{}", created.secret.as_str());
    Ok(())
}

async fn list_api_keys(service: &blindpass_service::Service) -> anyhow::Result<()> {
    println!("{:<38} {:<11} {:<32} {:<8} {:<10} NAME", "ID", "ENV", "PERMISSIONS", "STATUS", "RATE/MIN");
    for key in service.store().list_api_keys().await? {
        let status = if key.revoked_at.is_some() { "revoked" } else { "active" };
        let name = key.name.as_deref().unwrap_or("");
        let rate = key.rate_limit_per_minute.map_or_else(|| "-".to_owned(), |n| n.to_string());
        println!(
            "{:<38} {:<11} {:<32} {:<8} {:<10} {name}",
            key.id,
            key.environment,
            join(&key.permissions),
            status,
            rate
        );
    }
    Ok(())
}

/// `keys list`: every key of `environment` (or both), oldest first.
async fn list_keys(service: &blindpass_service::Service, environment: Option<Environment>) -> anyhow::Result<()> {
    println!(
        "{:<64} {:<64} {:<4} {:<11} {:<11} NOT-BEFORE",
        "TOKEN-KEY-ID (RFC 9578)", "KEY-ID (PERSONA)", "TYPE", "ENV", "STATE"
    );
    for env in environment.map_or(Environment::ALL.to_vec(), |e| vec![e]) {
        let mut keys = service.keys_of(env).await?;
        keys.reverse();
        for key in keys {
            let persona_id = key.blind_rsa().map_or_else(|| "-".to_owned(), |k| k.persona_key_id().to_hex());
            println!(
                "{:<64} {:<64} {:<4} {:<11} {:<11} {}",
                key.token_key_id(),
                persona_id,
                key.token_type(),
                env,
                key.record.state.as_str(),
                blindpass_protocol::time::format_rfc3339(key.record.not_before.max(0) as u64)
            );
        }
    }
    Ok(())
}

pub(crate) fn run_keys(store_args: &StoreArgs, cmd: KeysCommand) -> anyhow::Result<()> {
    if matches!(cmd, KeysCommand::GenerateKek) {
        println!(
            "{}",
            blindpass_service::kek::KeyEncryptionKey::generate_hex(&blindpass_service::SystemEntropy).as_str()
        );
        return Ok(());
    }
    let signer = matches!(cmd, KeysCommand::Rotate { .. } | KeysCommand::Retire { destroy: true, .. });
    with_service(store_args, signer, async move |service| match cmd {
        KeysCommand::GenerateKek => Ok(()),
        KeysCommand::Rewrap { new_key_encryption_key_file, to_plaintext: _ } => {
            let new = new_key_encryption_key_file.as_deref().map(crate::config::read_kek).transpose()?;
            let n = service.rewrap_key_material(new.as_ref()).await?;
            match &new {
                Some(k) => println!("rewrapped {n} values under key-encryption key {}", k.id()),
                None => println!("stored {n} values unencrypted"),
            }
            Ok(())
        }
        KeysCommand::List { environment } => list_keys(&service, environment).await,
        KeysCommand::Rotate { environment, token_type, announce_secs } => {
            let key = service.rotate_key(environment, token_type, announce_secs).await?;
            let kept = if token_type == blindpass_protocol::wire::TOKEN_TYPE_BLIND_RSA
                && let Some(hsm) = &service.config().pkcs11
            {
                format!(", kept in the PKCS#11 {}", hsm.describe())
            } else {
                String::new()
            };
            println!(
                "rotated {environment} type {token_type}: new key {} ({}, issuing from {}{kept})",
                key.id,
                key.state.as_str(),
                blindpass_protocol::time::format_rfc3339(key.not_before.max(0) as u64)
            );
            Ok(())
        }
        KeysCommand::Retire { id, destroy } => {
            let id = match service.retire_key(&id).await {
                Ok(key) => {
                    println!("retired {} ({})", key.id, key.environment);
                    key.id
                }
                // Already retired: its token object may still be destroyed.
                Err(blindpass_service::KeyError::NotFound(_)) if destroy => id.to_ascii_lowercase(),
                Err(e) => return Err(e.into()),
            };
            if destroy {
                let n = service.destroy_key_object(&id).await?;
                println!("destroyed {n} objects of {id} in the PKCS#11 token");
            }
            Ok(())
        }
    })
}

fn join(permissions: &[Permission]) -> String {
    permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(",")
}

/// `blindpass issuer-name …`.
#[derive(Debug, Subcommand)]
pub(crate) enum IssuerNameCommand {
    /// Print the stored issuer name (nothing if no node has started yet).
    Show,
    /// Change the issuer name for every node; restart them all afterwards.
    /// Tokens already issued under the old name stop redeeming.
    Set {
        /// The new name, e.g. the public host name clients reach.
        name: String,
    },
}

pub(crate) fn run_issuer_name(store_args: &StoreArgs, cmd: IssuerNameCommand) -> anyhow::Result<()> {
    with_store(store_args, async move |store| {
        use blindpass_service::identity::{set_issuer_name, stored_issuer_name};
        match cmd {
            IssuerNameCommand::Show => {
                if let Some(name) = stored_issuer_name(&*store).await? {
                    println!("{name}");
                }
            }
            IssuerNameCommand::Set { name } => {
                let old = set_issuer_name(&*store, &name).await?;
                println!("issuer name {old:?} -> {name:?}; restart every node");
            }
        }
        Ok(())
    })
}

pub(crate) fn migrate(store_args: &StoreArgs) -> anyhow::Result<()> {
    // Opening a store applies its migrations, under a lock, exactly once.
    with_service(store_args, false, async move |_service| {
        println!("migrations applied");
        Ok(())
    })
}
