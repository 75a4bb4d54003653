//! Certificates made in the test (nothing checked in that could expire) and TLS clients.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::within;

/// A certificate and its key, as PEM, and where they were written.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCert {
    /// A self-signed certificate for localhost and 127.0.0.1, valid now.
    pub fn new() -> TestCert {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("certificate");
        TestCert {
            cert_pem: made.cert.pem(),
            key_pem: made.key_pair.serialize_pem(),
            der: made.cert.der().clone(),
        }
    }

    /// A certificate that expired in 2021.
    pub fn expired() -> TestCert {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.self_signed(&key).expect("certificate");
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Writes `cert.pem` and `key.pem` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).expect("dir");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }
}

/// A fresh directory for one test's files.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ssegate-{}-{name}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// Opens TLS to `addr` trusting `roots`, offering `alpn`.
pub async fn tls_connect(addr: SocketAddr, roots: &[&TestCert], alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let mut store = rustls::RootCertStore::empty();
    for cert in roots {
        store.add(cert.der.clone()).expect("root");
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(store)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    within("TLS handshake", connector.connect(name, tcp))
        .await
        .expect("handshake")
}
