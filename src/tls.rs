//! TLS for the public listener: certificate loading and checks, the rustls server config (ALPN
//! h2 and http/1.1), and an acceptor a reload can swap without touching open connections.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::{TlsSettings, TlsVersion};

/// Why a certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM.
    #[error("{path}: {what}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The key does not belong to the certificate.
    #[error("{key} does not match the certificate in {cert}")]
    Mismatch {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
    },
    /// The certificate is outside its validity period.
    #[error("{path}: the certificate {when}")]
    Validity {
        /// Certificate file.
        path: PathBuf,
        /// "expired on …" or "is not valid before …".
        when: String,
    },
    /// rustls refused the configuration.
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A loaded, checked certificate with what `ssegate check` shows of it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Certificate chain and signing key.
    pub key: Arc<CertifiedKey>,
    /// The leaf's subject.
    pub subject: String,
    /// The leaf's end of validity (RFC 2822).
    pub not_after: String,
}

fn file_error(path: &Path, what: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// Reads the PEM files of `settings` and checks them: a certificate and a key are there, the key
/// matches the certificate, and the certificate is valid now.
pub fn load(settings: &TlsSettings) -> Result<Loaded, TlsError> {
    let cert_pem =
        std::fs::read(&settings.cert).map_err(|e| file_error(&settings.cert, format!("cannot read: {e}")))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(&settings.cert, format!("not a PEM certificate file: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(file_error(&settings.cert, "holds no certificate"));
    };
    let key_pem =
        std::fs::read(&settings.key).map_err(|e| file_error(&settings.key, format!("cannot read: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| file_error(&settings.key, format!("holds no usable private key: {e}")))?;
    let (subject, not_before, not_after) = match x509_parser::parse_x509_certificate(leaf) {
        Ok((_, cert)) => (
            cert.subject().to_string(),
            cert.validity().not_before.timestamp(),
            cert.validity().not_after,
        ),
        Err(e) => {
            return Err(file_error(
                &settings.cert,
                format!("the certificate cannot be parsed: {e}"),
            ))
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if not_after.timestamp() < now {
        return Err(TlsError::Validity {
            path: settings.cert.clone(),
            when: format!("expired on {not_after}"),
        });
    }
    if not_before > now {
        return Err(TlsError::Validity {
            path: settings.cert.clone(),
            when: "is not valid yet".to_owned(),
        });
    }
    let provider = default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| file_error(&settings.key, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    if certified.keys_match().is_err() {
        return Err(TlsError::Mismatch {
            cert: settings.cert.clone(),
            key: settings.key.clone(),
        });
    }
    Ok(Loaded {
        key: Arc::new(certified),
        subject,
        not_after: not_after.to_string(),
    })
}

/// A rustls server config for `loaded`, offering h2 and http/1.1 by ALPN.
pub(crate) fn server_config(loaded: &Loaded, min_version: TlsVersion) -> Result<Arc<ServerConfig>, TlsError> {
    let versions: &[&rustls::SupportedProtocolVersion] = match min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Single(loaded.key.clone())));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Always the one certificate, whatever the SNI.
#[derive(Debug)]
struct Single(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Single {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The acceptor in force: a reload swaps it; handshakes in progress and open connections keep
/// the one they started with.
#[derive(Clone)]
pub(crate) struct Acceptor {
    current: Arc<RwLock<TlsAcceptor>>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Acceptor")
    }
}

impl Acceptor {
    /// An acceptor for `config`.
    pub(crate) fn new(config: Arc<ServerConfig>) -> Acceptor {
        Acceptor {
            current: Arc::new(RwLock::new(TlsAcceptor::from(config))),
        }
    }

    /// The acceptor for a new connection.
    pub(crate) fn current(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Swaps in `config` for new handshakes.
    pub(crate) fn replace(&self, config: Arc<ServerConfig>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = TlsAcceptor::from(config);
    }
}
