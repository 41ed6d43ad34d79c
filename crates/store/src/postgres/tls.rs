//! TLS to PostgreSQL with rustls, honouring libpq's `sslmode`.
//!
//! `tokio-postgres` knows `disable`, `prefer` and `require` and leaves the
//! certificate to the connector; libpq's `verify-ca` and `verify-full` and
//! the `sslrootcert` parameter are read here, taken out of the URL, and
//! enforced by the rustls verifier this module builds:
//!
//! | `sslmode`     | TLS                        | certificate checked                         |
//! |---------------|----------------------------|---------------------------------------------|
//! | `disable`     | never                      | —                                           |
//! | `prefer` (default) | if the server offers it | chain, when a CA is given; otherwise none |
//! | `require`     | always                     | chain, when a CA is given; otherwise none   |
//! | `verify-ca`   | always                     | chain to the CA (a CA is required)          |
//! | `verify-full` | always                     | chain to the CA and the host name           |
//!
//! As in libpq, giving a CA makes `prefer` and `require` check the chain too.
//! The CA is a PEM file (`sslrootcert=/path` in the URL, or the operator's CA
//! file option), or `sslrootcert=system` for the system's trust store.
//! `allow` is refused: it would try plaintext first.
//!
//! Channel binding (`tls-server-end-point`) is not offered; SCRAM runs
//! without it, which `channel_binding=prefer` (the default) accepts.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::{Cause, StoreError};

/// libpq's `sslmode`, as far as blindpass supports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it (libpq's default).
    Prefer,
    /// TLS always; the certificate is checked only when a CA is given.
    Require,
    /// TLS always; the chain must lead to the CA.
    VerifyCa,
    /// TLS always; the chain must lead to the CA and name the host.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, StoreError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err(StoreError::Other(
                    "sslmode=allow is not supported (it tries plaintext first); use prefer, require, verify-ca or \
                     verify-full"
                        .into(),
                ));
            }
            other => return Err(StoreError::Other(format!("unknown sslmode {other:?}").into())),
        })
    }

    /// The name libpq uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// What `tokio-postgres` is told: it only needs to know whether TLS is
    /// optional; the verifier does the rest.
    fn for_tokio_postgres(self) -> &'static str {
        match self {
            Self::Disable => "sslmode=disable",
            Self::Prefer => "sslmode=prefer",
            Self::Require | Self::VerifyCa | Self::VerifyFull => "sslmode=require",
        }
    }
}

/// Where trust anchors come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    None,
    File(PathBuf),
    System,
}

/// A PostgreSQL URL split into what `tokio-postgres` parses and what this
/// module enforces.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) mode: SslMode,
    pub(crate) tls: MakeRustlsConnect,
}

/// Reads `sslmode` and `sslrootcert` out of `url` (a `postgres://` URL),
/// with `ca_file` as the operator's CA option; both naming a CA is refused.
pub(crate) fn prepare(url: &str, ca_file: Option<&Path>) -> Result<Prepared, StoreError> {
    let (base, query) = match query_start(url) {
        Some(at) => (&url[..at], &url[at + 1..]),
        None => (url, ""),
    };
    let TlsParams { mode, root_param, mut kept } = TlsParams::take(query)?;
    let roots = roots_for(root_param.as_deref(), ca_file)?;
    let mode = mode.unwrap_or(SslMode::Prefer);
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && roots == Roots::None {
        return Err(StoreError::Other(
            format!(
                "sslmode={} needs a CA: the database CA file option, sslrootcert=/path/to/ca.pem or sslrootcert=system",
                mode.as_str()
            )
            .into(),
        ));
    }
    kept.push(mode.for_tokio_postgres());
    let config: tokio_postgres::Config = format!("{base}?{}", kept.join("&"))
        .parse()
        .map_err(|e| StoreError::Other(Cause::while_("invalid PostgreSQL URL", e)))?;
    let tls = MakeRustlsConnect::new(client_config(mode, &roots)?);
    Ok(Prepared { config, mode, tls })
}

/// A URL's query split into the TLS parameters and the rest (kept as given).
struct TlsParams<'a> {
    mode: Option<SslMode>,
    root_param: Option<String>,
    kept: Vec<&'a str>,
}

impl<'a> TlsParams<'a> {
    fn take(query: &'a str) -> Result<Self, StoreError> {
        let mut params = Self { mode: None, root_param: None, kept: Vec::new() };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let twice = || StoreError::Other(format!("{key} is given twice in the database URL").into());
            match key {
                "sslmode" => {
                    if params.mode.replace(SslMode::parse(&decode(key, value)?)?).is_some() {
                        return Err(twice());
                    }
                }
                "sslrootcert" => {
                    if params.root_param.replace(decode(key, value)?).is_some() {
                        return Err(twice());
                    }
                }
                _ => params.kept.push(pair),
            }
        }
        Ok(params)
    }
}

fn decode(key: &str, value: &str) -> Result<String, StoreError> {
    percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| StoreError::Other(format!("invalid percent-encoding in the {key} parameter").into()))
}

/// The trust anchors named by `sslrootcert` or the CA file option (not both).
fn roots_for(root_param: Option<&str>, ca_file: Option<&Path>) -> Result<Roots, StoreError> {
    Ok(match (root_param, ca_file) {
        (Some(_), Some(_)) => {
            return Err(StoreError::Other(
                "the PostgreSQL CA is given twice (sslrootcert in the URL and the CA file option); give it once".into(),
            ));
        }
        (Some("system"), None) => Roots::System,
        (Some(""), None) => return Err(StoreError::Other("sslrootcert is empty".into())),
        (Some(path), None) => Roots::File(PathBuf::from(path)),
        (None, Some(path)) => Roots::File(path.to_owned()),
        (None, None) => Roots::None,
    })
}

/// Where the query string starts: the first `?` after the authority (a
/// password holds no raw `?`; it must be percent-encoded in a URL).
fn query_start(url: &str) -> Option<usize> {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let after_userinfo = url[after_scheme..].rfind('@').map_or(after_scheme, |i| after_scheme + i + 1);
    url[after_userinfo..].find('?').map(|i| after_userinfo + i)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn load_roots(roots: &Roots) -> Result<Option<RootCertStore>, StoreError> {
    let certs: Vec<CertificateDer<'static>> = match roots {
        Roots::None => return Ok(None),
        Roots::File(path) => {
            CertificateDer::pem_file_iter(path).and_then(|iter| iter.collect::<Result<Vec<_>, _>>()).map_err(|e| {
                StoreError::Other(format!("reading the PostgreSQL CA file {}: {e}", path.display()).into())
            })?
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(StoreError::Other(
                    format!(
                        "sslrootcert=system: no certificates in the system trust store ({} errors)",
                        found.errors.len()
                    )
                    .into(),
                ));
            }
            found.certs
        }
    };
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(StoreError::Other("the PostgreSQL CA holds no usable certificate".into()));
    }
    Ok(Some(store))
}

fn client_config(mode: SslMode, roots: &Roots) -> Result<Arc<ClientConfig>, StoreError> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, load_roots(roots)?) {
        (SslMode::VerifyFull, Some(store)) => {
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                .build()
                .map_err(|e| StoreError::Other(Cause::while_("building the PostgreSQL certificate verifier", e)))?
        }
        (_, roots) => Arc::new(ChainVerifier { roots: roots.map(Arc::new), algorithms }),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Other(Cause::while_("TLS configuration", e)))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The certificate check short of the host name: with `roots`, the chain
/// must lead to one of them (`verify-ca`, and `prefer`/`require` with a CA);
/// without, any certificate is taken (`prefer`/`require` alone, libpq's
/// behaviour; a start-up warning says so). Handshake signatures are always
/// verified, so the peer holds the certificate's key.
#[derive(Debug)]
struct ChainVerifier {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The `tokio-postgres` connector over rustls.
#[derive(Clone)]
pub(crate) struct MakeRustlsConnect {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for MakeRustlsConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MakeRustlsConnect")
    }
}

impl MakeRustlsConnect {
    fn new(config: Arc<ClientConfig>) -> Self {
        Self { config }
    }
}

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("PostgreSQL host {domain:?}: {e}")))?;
        Ok(RustlsConnect { connector: tokio_rustls::TlsConnector::from(self.config.clone()), name })
    }
}

/// One TLS handshake to one host.
pub(crate) struct RustlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for RustlsConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RustlsConnect").field("name", &self.name).finish()
    }
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move { self.connector.connect(self.name, stream).await.map(RustlsStream) })
    }
}

/// An established TLS connection to PostgreSQL.
#[derive(Debug)]
pub(crate) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_and_the_rest_is_kept() {
        let p = prepare("postgres://u:p%3Fw@db.example:5433/app?application_name=bp&sslmode=require", None).unwrap();
        assert_eq!(p.mode, SslMode::Require);
        assert_eq!(p.config.get_application_name(), Some("bp"));
        assert_eq!(p.config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(p.config.get_password(), Some(&b"p?w"[..]));

        let p = prepare("postgres://u@h/db?sslmode=verify-full&sslrootcert=system", None).unwrap();
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);

        let p = prepare("postgres://u@h/db", None).unwrap();
        assert_eq!(p.mode, SslMode::Prefer);
        let p = prepare("postgres://u@h/db?sslmode=disable", None).unwrap();
        assert_eq!(p.config.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
    }

    #[test]
    fn verification_without_a_ca_and_ambiguous_settings_are_refused() {
        for url in [
            "postgres://u@h/db?sslmode=verify-full",
            "postgres://u@h/db?sslmode=verify-ca",
            "postgres://u@h/db?sslmode=allow",
            "postgres://u@h/db?sslmode=bogus",
            "postgres://u@h/db?sslmode=require&sslmode=disable",
            "postgres://u@h/db?sslrootcert=",
        ] {
            assert!(prepare(url, None).is_err(), "{url} should be refused");
        }
        let both = prepare("postgres://u@h/db?sslmode=verify-ca&sslrootcert=/a.pem", Some(Path::new("/b.pem")));
        assert!(both.is_err());
        let missing = prepare("postgres://u@h/db?sslmode=verify-ca", Some(Path::new("/nonexistent/ca.pem")));
        assert!(missing.unwrap_err().to_string().contains("/nonexistent/ca.pem"));
    }

    #[test]
    fn the_query_starts_after_the_userinfo() {
        assert_eq!(query_start("postgres://u:pw@h/db?x=1"), Some(20));
        assert_eq!(query_start("postgres://u:a%40b@h/db?x=1"), Some(23));
        assert_eq!(query_start("postgres://h/db"), None);
    }
}
