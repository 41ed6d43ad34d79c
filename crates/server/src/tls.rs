//! HTTPS for the API listener: rustls (TLS 1.2 and 1.3, aws-lc), HTTP/2
//! by ALPN, and certificates that are renewed without a restart: the files
//! are re-read when they change, and a renewal that does not load (a key that
//! does not match, a half-written file) is logged and the last good pair
//! kept.
//!
//! With `client_ca`, clients may present a certificate from that CA (mTLS;
//! another CA's fails the handshake, none is allowed). A certificate valid
//! for the DNS name of a configured [`Attester`] (a subjectAltName dNSName,
//! checked by webpki) authenticates the attester's requests in place of an
//! API key, as Cloudflare's production issuer authenticates its attesters.
//! The client CA file is followed like the certificate: a changed CA is
//! used for new handshakes, and every open connection whose client
//! certificate the new CA no longer trusts is closed at the reload
//! ([`ReloadingTls::until_untrusted`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use blindpass_service::{Environment, Permission};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;

/// Where the certificate chain and its key are, and how often to look for
/// a renewal.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// How often the files are checked for a change.
    pub reload_every: Duration,
    /// PEM CA whose client certificates are accepted (mTLS), if any.
    pub client_ca: Option<PathBuf>,
    /// Client certificate names that authenticate as an attester.
    pub attesters: Vec<Attester>,
}

/// A client authenticated by its certificate instead of an API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attester {
    /// The DNS name its certificate must be valid for.
    pub name: String,
    /// The environment its requests belong to.
    pub environment: Environment,
    /// What it may do.
    pub permissions: Vec<Permission>,
}

impl Attester {
    /// Checks that `name` is a DNS name a certificate can be valid for.
    pub fn new(name: &str, environment: Environment, permissions: Vec<Permission>) -> Result<Self, TlsError> {
        match ServerName::try_from(name) {
            Ok(ServerName::DnsName(_)) => Ok(Self { name: name.to_owned(), environment, permissions }),
            _ => Err(TlsError(format!("attester name {name:?} is not a DNS name"))),
        }
    }
}

/// When the certificate, the key and the client CA files were last
/// modified.
type Stamps = Option<(SystemTime, SystemTime, Option<SystemTime>)>;

/// A serving configuration and the client verifier inside it.
struct Loaded {
    config: Arc<ServerConfig>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

/// A TLS configuration that follows its files.
pub struct ReloadingTls {
    files: TlsFiles,
    /// The serving configuration, and the files' stamps when last loaded.
    current: RwLock<(Arc<Loaded>, Stamps)>,
    /// Bumped at every reload, so connections re-check their client
    /// certificate.
    generation: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls").field("files", &self.files).finish_non_exhaustive()
    }
}

/// A certificate or key that cannot be used (one line, naming the file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

impl ReloadingTls {
    /// Loads the pair once; an error here stops the server from starting.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        if !files.attesters.is_empty() && files.client_ca.is_none() {
            return Err(TlsError("attesters need a client CA (--client-ca)".into()));
        }
        let loaded = load_config(&files)?;
        let stamp = stamps(&files);
        let (generation, _) = tokio::sync::watch::channel(0);
        Ok(Arc::new(Self { files, current: RwLock::new((Arc::new(loaded), stamp)), generation }))
    }

    /// The configuration new connections use.
    pub fn config(&self) -> Arc<ServerConfig> {
        let current = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(&current.0.config)
    }

    /// Whether the current client CA trusts `chain` (leaf first).
    pub fn trusts(&self, chain: &[CertificateDer<'static>]) -> bool {
        let loaded = Arc::clone(&self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).0);
        let (Some(verifier), Some((leaf, intermediates))) = (&loaded.verifier, chain.split_first()) else {
            return false;
        };
        verifier.verify_client_cert(leaf, intermediates, UnixTime::now()).is_ok()
    }

    /// Resolves once a reload leaves `chain` (a connection's client
    /// certificate) untrusted; the connection is then closed.
    pub async fn until_untrusted(self: Arc<Self>, chain: Vec<CertificateDer<'static>>) {
        let mut reloads = self.generation.subscribe();
        loop {
            if reloads.changed().await.is_err() {
                return std::future::pending().await;
            }
            if !self.trusts(&chain) {
                return;
            }
        }
    }

    /// Reloads when either file changed since the last load; keeps the last
    /// good pair when the new one does not load. Returns true on a reload.
    pub fn reload_if_changed(&self) -> bool {
        let stamp = stamps(&self.files);
        let seen = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).1;
        if stamp.is_none() || stamp == seen {
            return false;
        }
        match load_config(&self.files) {
            Ok(loaded) => {
                *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = (Arc::new(loaded), stamp);
                self.generation.send_modify(|g| *g += 1);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate and client CA reloaded");
                true
            }
            Err(e) => {
                // Remember the stamp so a broken file is reported once, not
                // every tick; a further change is tried again.
                self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner).1 = stamp;
                tracing::error!(error = %e, "TLS certificate renewal does not load; keeping the previous one");
                false
            }
        }
    }

    /// The attester a verified client certificate chain names, if any: the
    /// first configured attester whose DNS name the leaf is valid for. The
    /// chain itself was verified against the client CA in the handshake.
    pub fn attester(&self, peer: Option<&[CertificateDer<'_>]>) -> Option<Attester> {
        let leaf = peer?.first()?;
        let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
        self.files
            .attesters
            .iter()
            .find(|a| {
                ServerName::try_from(a.name.as_str())
                    .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
            })
            .cloned()
    }

    /// Checks the files every `reload_every` until the task is dropped.
    pub fn spawn_reloader(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let tls = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(tls.files.reload_every.max(Duration::from_secs(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                tls.reload_if_changed();
            }
        })
    }
}

fn stamps(files: &TlsFiles) -> Stamps {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let client_ca = match &files.client_ca {
        Some(ca) => Some(modified(ca)?),
        None => None,
    };
    Some((modified(&files.cert)?, modified(&files.key)?, client_ca))
}

fn load_config(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let (cert, key) = (files.cert.as_path(), files.key.as_path());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("reading the TLS certificate {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(TlsError(format!("no certificate in {}", cert.display())));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError(format!("reading the TLS key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError(format!("TLS versions: {e}")))?;
    let mut client_verifier = None;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| TlsError(format!("reading the client CA {}: {e}", ca.display())))?
            {
                roots.add(cert).map_err(|e| TlsError(format!("the client CA {}: {e}", ca.display())))?;
            }
            if roots.is_empty() {
                return Err(TlsError(format!("no certificate in the client CA {}", ca.display())));
            }
            // Optional: API-key clients present no certificate.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError(format!("the client CA {}: {e}", ca.display())))?;
            client_verifier = Some(Arc::clone(&verifier));
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key_der).map_err(|e| {
        TlsError(format!("the TLS key {} does not fit the certificate {}: {e}", key.display(), cert.display()))
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Loaded { config: Arc::new(config), verifier: client_verifier })
}
