//! A server certificate for a listener that is not part of the mesh: the injection webhook,
//! which the Kubernetes API server calls with ordinary TLS (no client certificate, a DNS name).
//! The files are those of a Secret that cert-manager or the chart renews, so they are read again
//! when they change, and the listener's next handshake uses the new pair.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use pingora::listeners::tls::Acceptor;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use super::credentials::{certified_key, read, read_certs};
use super::reload::Reload;
use super::TlsError;

/// A certificate and key read from files, reloaded when they change.
pub struct ServingCert {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<ArcSwap<CertifiedKey>>,
    /// When the certificate in force ends (Unix time).
    not_after: AtomicI64,
    reload: Mutex<Reload<2>>,
}

impl ServingCert {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let pair = load_pair(cert, key)?;
        Ok(ServingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            not_after: AtomicI64::new(not_after(&pair)),
            current: Arc::new(ArcSwap::from_pointee(pair)),
            reload: Mutex::new(Reload::read_now([cert, key])),
        })
    }

    /// When the certificate in force ends (Unix time; 0 if it could not be read).
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
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

    /// Reads the files again when they changed; a pair that does not load is an error, once,
    /// and the old one stays; it is tried again at every look until it loads or changes (a key
    /// written after its certificate is taken when it comes), as the workload store does.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let mut reload = self.reload.lock().expect("reload lock");
        let loaded = reload.look([&self.cert, &self.key], || load_pair(&self.cert, &self.key))?;
        let changed = loaded.is_some();
        if let Some(pair) = loaded {
            self.not_after.store(not_after(&pair), Ordering::Relaxed);
            self.current.store(Arc::new(pair));
        }
        Ok(changed)
    }
}

fn not_after(pair: &CertifiedKey) -> i64 {
    pair.cert
        .first()
        .and_then(|leaf| x509_parser::parse_x509_certificate(leaf).ok())
        .map_or(0, |(_, leaf)| leaf.validity().not_after.timestamp())
}

fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(cert)?;
    let key_pem = read(key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| TlsError::File { path: key.to_path_buf(), reason: format!("no PEM private key found ({e})") })?;
    certified_key(chain, private, cert, key)
}

#[derive(Debug)]
struct Current(Arc<ArcSwap<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{DevCa, LeafSpec};

    /// Replaces `to` with `from`'s contents by a rename, as Kubernetes updates a mounted Secret.
    fn replace(from: &Path, to: &Path) {
        let staged = to.with_extension("new");
        std::fs::copy(from, &staged).unwrap();
        std::fs::rename(&staged, to).unwrap();
    }

    #[test]
    fn a_pair_that_does_not_load_is_reported_once_and_taken_when_it_does() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate("cluster.local").unwrap();
        let spec = LeafSpec::workload("spiffe://cluster.local/ns/palisade-system/sa/palisade-control");
        let first = ca.issue_to(&spec, &dir.path().join("first")).unwrap();
        let second = ca.issue_to(&spec, &dir.path().join("second")).unwrap();
        let serving = ServingCert::load(&first.cert, &first.key).unwrap();
        // The new certificate before its key: not said while the writer may be midway, then
        // refused and said once when the files held still for a look, then tried quietly.
        replace(&second.cert, &first.cert);
        assert!(!serving.reload_if_changed().unwrap());
        assert!(serving.reload_if_changed().is_err());
        assert!(!serving.reload_if_changed().unwrap());
        // Its key follows: taken, with no other change to wait for.
        replace(&second.key, &first.key);
        assert!(serving.reload_if_changed().unwrap());
        assert!(!serving.reload_if_changed().unwrap(), "nothing more to take");
    }
}
