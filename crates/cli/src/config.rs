//! Where the store is, and the checks every store command shares. The
//! layers — defaults → `--config` TOML file → environment → flags — are
//! merged before clap parses (`config_file`), so the options here are final.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

/// Default data directory (embedded SQLite inside).
pub(crate) const DEFAULT_DATA_DIR: &str = "./blindpass-data";
/// File name of the embedded database inside the data directory.
pub(crate) const SQLITE_FILE: &str = "blindpass.db";

/// A configuration value that may hold a secret (a password inside a URL, an
/// API key): usable as a string, `<redacted>` in `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Where the store is; shared by every store command so the CLI and a running
/// server use one store. Accepted before the subcommand (`blindpass
/// --data-dir D keys list`) and, on store commands only, after it (`blindpass
/// keys list --data-dir D`): see `main::command`. Client commands have none.
#[derive(Debug, Default, Clone, Args)]
pub(crate) struct StoreArgs {
    /// Data directory for the embedded SQLite store.
    #[arg(long, env = "BLINDPASS_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Database URL (`sqlite://PATH`); overrides --data-dir.
    #[arg(long, env = "BLINDPASS_DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: Option<Secret>,
    /// TOML configuration file; every key can also be set by flag or env.
    #[arg(long, env = "BLINDPASS_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// File holding the key-encryption key (64 hex digits or base64 of 32
    /// bytes) that seals issuer private keys and server secrets at rest.
    #[arg(long, env = "BLINDPASS_KEY_ENCRYPTION_KEY_FILE")]
    pub(crate) key_encryption_key_file: Option<PathBuf>,
    /// PostgreSQL: PEM file of the CA that signs the server's certificate
    /// (as `sslrootcert=` in the URL); with it the chain is always checked,
    /// and `sslmode=verify-full` checks the host name too.
    #[arg(long, env = "BLINDPASS_DATABASE_CA_FILE")]
    pub(crate) database_ca_file: Option<PathBuf>,
    /// PostgreSQL: maximum pooled connections.
    #[arg(long, env = "BLINDPASS_DB_POOL_SIZE")]
    pub(crate) db_pool_size: Option<usize>,
    /// PostgreSQL: seconds to wait for a connection before answering 503.
    #[arg(long, value_parser = crate::units::secs, env = "BLINDPASS_DB_TIMEOUT_SECS")]
    pub(crate) db_timeout_secs: Option<u64>,
    /// Where type-2 keys are made and kept (software or a PKCS#11 token).
    #[command(flatten)]
    pub(crate) signer: crate::signer::SignerArgs,
}

impl StoreArgs {
    /// Every option of `self`, else the one in `outer` (the options given
    /// before the subcommand).
    pub(crate) fn or(self, outer: &StoreArgs) -> StoreArgs {
        let outer = outer.clone();
        StoreArgs {
            data_dir: self.data_dir.or(outer.data_dir),
            database_url: self.database_url.or(outer.database_url),
            config: self.config.or(outer.config),
            key_encryption_key_file: self.key_encryption_key_file.or(outer.key_encryption_key_file),
            database_ca_file: self.database_ca_file.or(outer.database_ca_file),
            db_pool_size: self.db_pool_size.or(outer.db_pool_size),
            db_timeout_secs: self.db_timeout_secs.or(outer.db_timeout_secs),
            signer: self.signer.or(&outer.signer),
        }
    }

    /// The ids of the store options (for `main::command`).
    pub(crate) fn ids() -> Vec<String> {
        use clap::CommandFactory as _;
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            store: StoreArgs,
        }
        Only::command().get_arguments().map(|a| a.get_id().to_string()).collect()
    }

    /// The database URL: flag/env, then file, then the data directory.
    pub(crate) fn database_url(&self) -> String {
        if let Some(url) = self.database_url.as_ref() {
            return url.as_str().to_owned();
        }
        let dir = self.data_dir.clone().unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        format!("sqlite://{}", dir.join(SQLITE_FILE).display())
    }

    /// The key-encryption key named by `--key-encryption-key-file`, if any.
    pub(crate) fn kek(&self) -> anyhow::Result<Option<std::sync::Arc<blindpass_service::kek::KeyEncryptionKey>>> {
        let Some(path) = self.key_encryption_key_file.clone() else {
            return Ok(None);
        };
        read_kek(&path).map(|k| Some(std::sync::Arc::new(k)))
    }

    /// Opens the store (and applies migrations).
    pub(crate) async fn open(&self) -> anyhow::Result<std::sync::Arc<dyn blindpass_store::Store>> {
        let url = self.database_url();
        let context = || format!("opening store {}", redact_url(&url));
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let defaults = blindpass_store::postgres::PoolOptions::default();
            let options = blindpass_store::postgres::PoolOptions {
                max_size: self.db_pool_size.unwrap_or(defaults.max_size),
                timeout: self.db_timeout_secs.map_or(defaults.timeout, std::time::Duration::from_secs),
                ca_file: self.database_ca_file.clone(),
            };
            let store = blindpass_store::postgres::PostgresStore::connect(&url, options).await.with_context(context)?;
            warn_unless_verified(&store);
            return Ok(std::sync::Arc::new(store));
        }
        if let Some(dir) = self.data_dir_in_use() {
            secure_data_dir(&dir)?;
        }
        blindpass_store::open(&url).await.with_context(context)
    }

    /// The data directory, when the store lives in it (no explicit URL).
    fn data_dir_in_use(&self) -> Option<PathBuf> {
        if self.database_url.is_some() {
            return None;
        }
        Some(self.data_dir.clone().unwrap_or_else(|| DEFAULT_DATA_DIR.into()))
    }
}

/// Logs the PostgreSQL TLS mode, and warns when the connection to a host
/// that is not this machine is not fully verified.
fn warn_unless_verified(store: &blindpass_store::postgres::PostgresStore) {
    use blindpass_store::postgres::tls::SslMode;
    let (mode, remote) = (store.ssl_mode(), store.connects_to_another_host());
    if remote && mode != SslMode::VerifyFull {
        tracing::warn!(
            sslmode = mode.as_str(),
            "PostgreSQL is on another host and its certificate is not fully checked; use sslmode=verify-full with \
             --database-ca-file"
        );
    } else {
        tracing::info!(sslmode = mode.as_str(), "PostgreSQL connection security");
    }
}

/// Creates the data directory with mode 0700, or tightens an existing one to
/// 0700: it holds the database, which holds the keys. Whatever the umask.
pub(crate) fn secure_data_dir(dir: &Path) -> anyhow::Result<()> {
    blindpass_store::sqlite::create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {} to mode 0700", dir.display()))?;
            tracing::warn!(dir = %dir.display(), was = format!("{:o}", mode & 0o777), "data directory tightened to mode 0700");
        }
    }
    Ok(())
}

/// `value` (or `default`), refused below `min`.
pub(crate) fn at_least<T: PartialOrd + Copy + std::fmt::Display>(
    flag: &str,
    value: Option<T>,
    default: T,
    min: T,
) -> anyhow::Result<T> {
    let value = value.unwrap_or(default);
    if value < min {
        anyhow::bail!("--{flag} must be at least {min} (got {value})");
    }
    Ok(value)
}

/// Reads a key-encryption key file, which only its owner may read: a file
/// that group or others can read is refused with the reason.
pub(crate) fn read_kek(path: &Path) -> anyhow::Result<blindpass_service::kek::KeyEncryptionKey> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading the key-encryption key {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "the key-encryption key {} is readable by group or others (mode {mode:04o}): chmod 600 it",
                path.display()
            );
        }
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("reading the key-encryption key {}", path.display()))?,
    );
    blindpass_service::kek::KeyEncryptionKey::from_text(&text).with_context(|| format!("{}", path.display()))
}

/// A URL with every password replaced by `***`, for messages and logs: the
/// one in its user information (`postgres://user:pw@host`, `redis://:pw@host`)
/// and every `password=` / `sslpassword=` query parameter (libpq takes both
/// forms).
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return url.to_owned() };
    let start = scheme_end + 3;
    let authority_end = url[start..].find(['/', '?', '#']).map_or(url.len(), |i| start + i);
    let authority = &url[start..authority_end];
    let mut out = url[..start].to_owned();
    match authority.rfind('@') {
        Some(at) => {
            match authority[..at].split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(&authority[..at]),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &url[authority_end..];
    let Some((path, query)) = tail.split_once('?') else {
        out.push_str(tail);
        return out;
    };
    out.push_str(path);
    out.push('?');
    let secret = |key: &str| {
        let key = key.to_ascii_lowercase();
        key == "password" || key == "sslpassword" || key.ends_with("_password")
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if secret(key) => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    out.push_str(&pairs.join("&"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("sqlite://./x/blindpass.db"), "sqlite://./x/blindpass.db");
        assert_eq!(redact_url("redis://:hunter2@127.0.0.1:6379/0"), "redis://:***@127.0.0.1:6379/0");
        // libpq's query-parameter password, alone and beside a user-info one.
        assert_eq!(
            redact_url("postgres://h/db?sslmode=verify-full&password=hunter2"),
            "postgres://h/db?sslmode=verify-full&password=***"
        );
        assert_eq!(
            redact_url("postgresql://u:pw@h:5432/db?user=u&PASSWORD=x&sslpassword=y#frag"),
            "postgresql://u:***@h:5432/db?user=u&PASSWORD=***&sslpassword=***"
        );
        // An '@' in the query is not the end of the user information.
        assert_eq!(redact_url("postgres://h/db?password=a@b"), "postgres://h/db?password=***");
        for url in [
            "postgres://u:hunter2@h/db",
            "postgres://h/db?password=hunter2",
            "redis://:hunter2@h",
            "rediss://u:hunter2@h/?x=1&password=hunter2",
        ] {
            assert!(!redact_url(url).contains("hunter2"), "{url}: {}", redact_url(url));
        }
    }

    #[test]
    fn data_dir_gives_sqlite_url() {
        let args = StoreArgs { data_dir: Some("/tmp/d".into()), ..Default::default() };
        assert_eq!(args.database_url(), "sqlite:///tmp/d/blindpass.db");
        let args = StoreArgs { database_url: Some(Secret("sqlite://f.db".into())), ..args };
        assert_eq!(args.database_url(), "sqlite://f.db");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let args = StoreArgs { database_url: Some(Secret("postgres://u:hunter2@h/db".into())), ..Default::default() };
        assert!(!format!("{args:?}").contains("hunter2"));
    }
}
