//! TLS to apps: the roots an `https://` upstream is checked against (`upstream_ca`'s
//! certificates, else the system's, read once), the rustls client config (the `ring` provider,
//! ALPN), and what a failed handshake says: which check the app's certificate failed.

use std::io;
use std::sync::{Arc, OnceLock};

use rustls::crypto::ring::default_provider;
use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, RootCertStore};

use crate::config::UpstreamTls;

/// ALPN offered to an app: HTTP/2 first, HTTP/1.1 else.
pub(crate) const ALPN_H2_AND_H1: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN offered for SSE streams: HTTP/1.1 only (see `UpstreamClient::send_stream`).
pub(crate) const ALPN_H1: &[&[u8]] = &[b"http/1.1"];

/// The system's trusted root certificates, as read on first use (from the files OpenSSL would
/// read: `SSL_CERT_FILE` and `SSL_CERT_DIR` when set, else the distribution's bundle).
#[derive(Debug)]
pub struct SystemRoots {
    store: Arc<RootCertStore>,
    /// Certificates found and usable.
    pub count: usize,
    /// What could not be read, one sentence each.
    pub errors: Vec<String>,
}

/// The system's roots, read once per process: a change to them takes a restart (`upstream_ca`
/// files are read again on every reload).
pub fn system_roots() -> &'static SystemRoots {
    static ROOTS: OnceLock<SystemRoots> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut store = RootCertStore::empty();
        let (count, _) = store.add_parsable_certificates(found.certs);
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        SystemRoots {
            store: Arc::new(store),
            count,
            errors,
        }
    })
}

/// The rustls config for an app reached over TLS: `tls`'s roots, TLS 1.2 and 1.3 on `ring`,
/// no client certificate, `alpn` offered.
pub(crate) fn client_config(tls: &UpstreamTls, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, rustls::Error> {
    let roots = match &tls.ca {
        Some(ca) => {
            let mut store = RootCertStore::empty();
            // Each one was checked when the config loaded.
            store.add_parsable_certificates(ca.certs.iter().cloned());
            Arc::new(store)
        }
        None => {
            let system = system_roots();
            if system.count == 0 {
                static TOLD: std::sync::Once = std::sync::Once::new();
                TOLD.call_once(|| {
                    tracing::warn!(errors = ?system.errors, "no system root certificates found: the https:// upstreams without upstream_ca will fail every handshake (install the ca-certificates package, or set upstream_ca)");
                });
            }
            system.store.clone()
        }
    };
    let mut config = ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A TLS handshake with an app failed: the message says which check failed (the certificate's
/// issuer, dates or name, or an app that does not speak TLS), then rustls' own words.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake with {name} failed: {what}")]
pub(crate) struct HandshakeError {
    name: String,
    what: String,
}

impl HandshakeError {
    /// The handshake with the app checked for `name` failed with `error` (from tokio-rustls: a
    /// rustls error inside an I/O error, or the connection's own I/O error).
    pub(crate) fn new(name: &ServerName<'_>, error: io::Error) -> HandshakeError {
        let what = match error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(tls) => format!("{} ({tls})", describe(tls)),
            None => format!("the connection failed during the handshake ({error})"),
        };
        HandshakeError {
            name: name.to_str().into_owned(),
            what,
        }
    }
}

/// Which check a handshake failed, in an operator's words.
fn describe(error: &rustls::Error) -> &'static str {
    use rustls::Error as E;
    use CertificateError as C;
    match error {
        E::InvalidCertificate(certificate) => match certificate {
            C::UnknownIssuer => "the app's certificate is not signed by a trusted authority (the route's upstream_ca, or the system's roots without one)",
            C::Expired | C::ExpiredContext { .. } => "the app's certificate has expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "the app's certificate is not valid yet",
            C::NotValidForName | C::NotValidForNameContext { .. } => "the app's certificate is not valid for the name checked (upstream_server_name, or the URL's host)",
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => "the app's certificate is not one for a TLS server",
            C::Revoked => "the app's certificate is revoked",
            C::BadSignature
            | C::UnsupportedSignatureAlgorithmContext { .. }
            | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => "the signature on the app's certificate does not verify (is a trusted authority of its issuer's name another key?)",
            C::BadEncoding => "the app's certificate is malformed",
            // webpki's error, inside rustls' `Other`: what `openssl req -x509` makes by default
            // (basicConstraints CA:TRUE) is a CA certificate, which a server may not present as
            // its own.
            C::Other(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => {
                "the app presents a CA certificate as its own (basicConstraints CA:TRUE, as `openssl req -x509` makes by default); give the app a certificate signed by that CA, or made with basicConstraints CA:FALSE"
            }
            _ => "the app's certificate was refused",
        },
        E::NoCertificatesPresented => "the app presented no certificate",
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            "the app does not answer in TLS (is it a plain http:// app?)"
        }
        E::AlertReceived(_) => "the app refused the handshake",
        E::PeerIncompatible(_) => "the app offers no TLS version or cipher ssegate accepts",
        _ => "the handshake failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_check_is_named() {
        let name = ServerName::try_from("app.internal").expect("name");
        let cases = [
            (
                CertificateError::UnknownIssuer,
                "not signed by a trusted authority",
            ),
            (CertificateError::Expired, "has expired"),
            (
                CertificateError::NotValidForName,
                "not valid for the name checked",
            ),
            (CertificateError::NotValidYet, "not valid yet"),
        ];
        for (certificate, says) in cases {
            let error = io::Error::new(
                io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(certificate),
            );
            let message = HandshakeError::new(&name, error).to_string();
            assert!(
                message.starts_with("TLS handshake with app.internal failed: ") && message.contains(says),
                "{message}"
            );
        }
        let reset = io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer");
        let message = HandshakeError::new(&name, reset).to_string();
        assert!(message.contains("reset by peer"), "{message}");
    }
}
