//! A server certificate for a listener that is not part of the mesh: the injection webhook,
//! which the Kubernetes API server calls with ordinary TLS (no client certificate, a DNS name).
//! The files are those of a Secret that cert-manager or the chart renews, so they are read again
//! when they change, and the listener's next handshake uses the new pair.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use pingora::listeners::tls::Acceptor;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use super::credentials::{read, read_certs};
use super::TlsError;

/// A certificate and key read from files, reloaded when they change.
pub struct ServingCert {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<ArcSwap<CertifiedKey>>,
    stamps: Mutex<[(i64, u64, u64); 2]>,
}

impl ServingCert {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let pair = load_pair(cert, key)?;
        Ok(ServingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: Arc::new(ArcSwap::from_pointee(pair)),
            stamps: Mutex::new(stamps(cert, key)),
        })
    }

    /// An acceptor that always presents the pair in force (HTTP/1.1 and HTTP/2 by ALPN).
    pub fn acceptor(&self) -> Result<Acceptor, TlsError> {
        let mut config = ServerConfig::builder_with_provider(super::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Current(self.current.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Acceptor::from_server_config(Arc::new(config)))
    }

    /// Reads the files again when they changed; a pair that does not load is an error and the
    /// old one stays.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.cert, &self.key);
        let mut seen = self.stamps.lock().expect("stamps lock");
        if *seen == now {
            return Ok(false);
        }
        *seen = now;
        self.current.store(Arc::new(load_pair(&self.cert, &self.key)?));
        Ok(true)
    }
}

fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(cert)?;
    let key_pem = read(key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| TlsError::File { path: key.to_path_buf(), reason: format!("no PEM private key found ({e})") })?;
    CertifiedKey::from_der(chain, private, &super::provider()).map_err(|e| TlsError::File {
        path: key.to_path_buf(),
        reason: format!("private key does not match {}: {e}", cert.display()),
    })
}

fn stamps(cert: &Path, key: &Path) -> [(i64, u64, u64); 2] {
    [cert, key].map(|p| std::fs::metadata(p).map(|m| (m.mtime(), m.len(), m.ino())).unwrap_or_default())
}

#[derive(Debug)]
struct Current(Arc<ArcSwap<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}
