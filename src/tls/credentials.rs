use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;

use super::TlsError;
use crate::identity::{cert_identity, CertIdentity, SpiffeId};

/// The three files a workload's identity lives in (the layout of cert-manager and SPIRE helpers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trust_bundle: PathBuf,
}

/// One loaded, checked set of credentials.
pub struct Credentials {
    pub id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    pub certified_key: Arc<CertifiedKey>,
    /// The private key as read, for pingora's upstream connector (which takes DER).
    pub key_der: Vec<u8>,
    pub roots: Arc<RootCertStore>,
    /// The trust bundle's certificates as read.
    pub bundle: Vec<CertificateDer<'static>>,
    pub serial: String,
    /// Seconds since the epoch.
    pub not_after: i64,
    /// A stand-in until the control plane's CA signs the real certificate.
    pub placeholder: bool,
}

impl Credentials {
    /// Whether the certificate has ended by `now`: peers refuse it then, whatever its source.
    pub fn expired_at(&self, now: std::time::SystemTime) -> bool {
        self.life_left(now).is_zero()
    }

    /// How long the certificate still lasts at `now` (zero once it has ended).
    pub fn life_left(&self, now: std::time::SystemTime) -> std::time::Duration {
        let now = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        std::time::Duration::from_secs((self.not_after - now).max(0) as u64)
    }

    /// Loads and checks the files: the key matches the certificate, the certificate carries a
    /// SPIFFE ID in `trust_domain`, and the bundle holds at least one certificate.
    pub fn load(files: &IdentityFiles, trust_domain: &str) -> Result<Self, TlsError> {
        let chain = read_certs(&files.cert)?;
        let key_pem = read(&files.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::File {
            path: files.key.clone(),
            reason: format!("no PEM private key found ({e})"),
        })?;
        let bundle = read_certs(&files.trust_bundle)?;
        let origin = Origin { cert: &files.cert, key: &files.key, bundle: &files.trust_bundle };
        Self::from_parts(chain, key, bundle, trust_domain, &origin)
    }

    /// Credentials from memory (a certificate the control plane's CA just signed), checked as
    /// files are; errors name `source`.
    pub fn from_memory(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: Vec<CertificateDer<'static>>,
        trust_domain: &str,
        source: &Path,
    ) -> Result<Self, TlsError> {
        Self::from_parts(chain, key, bundle, trust_domain, &Origin { cert: source, key: source, bundle: source })
    }

    /// The same certificate and key with another trust bundle (a CA rotation's roots).
    pub fn with_bundle(&self, bundle: Vec<CertificateDer<'static>>, source: &Path) -> Result<Self, TlsError> {
        let key = PrivateKeyDer::try_from(self.key_der.clone())
            .map_err(|e| TlsError::File { path: source.to_path_buf(), reason: e.to_string() })?;
        let trust_domain = self.id.trust_domain().to_string();
        Self::from_memory(self.chain.clone(), key, bundle, &trust_domain, source)
    }

    /// What a sidecar presents before its CA answered: a certificate for its own SPIFFE ID that
    /// no root signed, so every peer refuses it (the sidecar is not ready, and says so), beside
    /// the roots it was given, so it can already check the CA.
    pub fn placeholder(id: &SpiffeId, bundle: Vec<CertificateDer<'static>>, source: &Path) -> Result<Self, TlsError> {
        let fail = |e: &dyn std::fmt::Display| TlsError::File { path: source.to_path_buf(), reason: e.to_string() };
        let key = rcgen::KeyPair::generate().map_err(|e| fail(&e))?;
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names =
            vec![rcgen::SanType::URI(id.as_str().try_into().map_err(|e: rcgen::Error| fail(&e))?)];
        let cert = params.self_signed(&key).map_err(|e| fail(&e))?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| fail(&e))?;
        let roots = roots_of(&bundle, source)?;
        let certified_key = CertifiedKey::from_der(vec![cert.der().clone()], key_der.clone_key(), &super::provider())
            .map_err(|e| fail(&e))?;
        Ok(Credentials {
            id: id.clone(),
            serial: "none".into(),
            not_after: 0,
            chain: vec![cert.der().clone()],
            certified_key: Arc::new(certified_key),
            key_der: key_der.secret_der().to_vec(),
            roots: Arc::new(roots),
            bundle,
            placeholder: true,
        })
    }

    fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: Vec<CertificateDer<'static>>,
        trust_domain: &str,
        origin: &Origin<'_>,
    ) -> Result<Self, TlsError> {
        if chain.is_empty() {
            return Err(TlsError::File { path: origin.cert.to_path_buf(), reason: "no certificate".into() });
        }
        let key_der = key.secret_der().to_vec();
        let roots = roots_of(&bundle, origin.bundle)?;
        let certified_key = certified_key(chain.clone(), key, origin.cert, origin.key)?;
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| TlsError::File {
            path: origin.cert.to_path_buf(),
            reason: format!("certificate does not parse: {e}"),
        })?;
        let identity_error = |reason: String| TlsError::Identity { path: origin.cert.to_path_buf(), reason };
        let id = match cert_identity(&leaf) {
            CertIdentity::Spiffe(id) => id,
            CertIdentity::None => return Err(identity_error("certificate has no spiffe:// URI SAN".into())),
            CertIdentity::Invalid(why) => return Err(identity_error(why.into())),
        };
        // A certificate that cannot work with this bundle (say, from a new CA written before the
        // bundle that trusts it) must not replace one that works.
        let parsed = rustls::server::ParsedCertificate::try_from(&chain[0])
            .map_err(|e| identity_error(format!("certificate does not parse: {e}")))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &chain[1..],
            rustls_pki_types::UnixTime::now(),
            super::provider().signature_verification_algorithms.all,
        )
        .map_err(|e| identity_error(format!("certificate does not verify against {}: {e}", origin.bundle.display())))?;
        // Before the leaf's checks, whose words ("not in an accepted trust domain") name neither
        // the setting nor the domain: a tour's certificates under the default trustDomain.
        if id.trust_domain() != trust_domain {
            return Err(identity_error(format!(
                "certificate identity {id} is in trust domain {}, not the configured trustDomain {trust_domain:?} (the default is cluster.local): set trustDomain (or PALISADE_TRUSTDOMAIN, which wins over the file) to {} if that is this mesh's",
                id.trust_domain(),
                id.trust_domain()
            )));
        }
        for usage in [super::verify::Usage::Server, super::verify::Usage::Client] {
            let domains = super::TrustDomains::new([trust_domain]);
            super::verify::check_leaf(&chain[0], usage, &domains).map_err(|e| identity_error(e.to_string()))?;
        }
        Ok(Credentials {
            id,
            serial: leaf.raw_serial_as_string(),
            not_after: leaf.validity().not_after.timestamp(),
            chain,
            certified_key: Arc::new(certified_key),
            key_der,
            roots: Arc::new(roots),
            bundle,
            placeholder: false,
        })
    }
}

/// Where each part came from, for errors.
struct Origin<'a> {
    cert: &'a Path,
    key: &'a Path,
    bundle: &'a Path,
}

fn roots_of(bundle: &[CertificateDer<'static>], path: &Path) -> Result<RootCertStore, TlsError> {
    if bundle.is_empty() {
        return Err(TlsError::File { path: path.to_path_buf(), reason: "no certificate in the trust bundle".into() });
    }
    crate::identity::check_trust_anchor_certs(bundle)
        .map_err(|why| TlsError::File { path: path.to_path_buf(), reason: format!("trust bundle: {why}") })?;
    let mut roots = RootCertStore::empty();
    for cert in bundle.iter().cloned() {
        roots.add(cert).map_err(|e| TlsError::File {
            path: path.to_path_buf(),
            reason: format!("trust bundle holds an unusable certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// The chain and its private key as rustls signs with them; a key that is not the leaf's is
/// said so in words (rustls's own text is `keys may not be consistent: KeyMismatch`).
pub(super) fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsError> {
    CertifiedKey::from_der(chain, key, &super::provider()).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "it is the key of another certificate (the key file and the certificate file are of two different pairs)".to_string()
            }
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown) => {
                "its public half cannot be derived to compare with the certificate's".to_string()
            }
            other => super::in_words(&other.to_string()),
        };
        TlsError::File { path: key_path.to_path_buf(), reason: format!("private key does not match {}: {why}", cert_path.display()) }
    })
}

pub(super) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    crate::files::read_regular(path, crate::files::MAX_KEY_FILE_BYTES)
        .map_err(|e| TlsError::File { path: path.to_path_buf(), reason: e.to_string() })
}

pub(super) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(TlsError::File { path: path.to_path_buf(), reason: "no PEM certificate found".into() }),
        Err(e) => Err(TlsError::File { path: path.to_path_buf(), reason: crate::identity::pem_problem(&e) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{DevCa, LeafSpec};

    /// Certificates of another trust domain than the configured one (the tour's `demo.local`
    /// under the default): the error names both domains and the setting to change.
    #[test]
    fn certificates_of_another_trust_domain_name_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate("demo.local").unwrap();
        let files = ca.issue_to(&LeafSpec::workload("spiffe://demo.local/ns/shop/sa/orders"), dir.path()).unwrap();
        let files = IdentityFiles { cert: files.cert, key: files.key, trust_bundle: files.trust_bundle };
        let e = Credentials::load(&files, "cluster.local").err().expect("refused").to_string();
        assert!(e.contains("trust domain demo.local, not the configured trustDomain \"cluster.local\""), "{e}");
        assert!(e.contains("set trustDomain (or PALISADE_TRUSTDOMAIN, which wins over the file) to demo.local"), "{e}");
        assert!(Credentials::load(&files, "demo.local").is_ok());
    }

    /// A trust bundle given as a full chain (cert-manager's `tls.crt`, leaf then root): the
    /// leaf would be a root, and its key could sign any identity a peer presents (outside
    /// tester j3: a forged `.../sa/payments` signed by a workload's key got 200).
    #[test]
    fn a_trust_bundle_holding_a_workload_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate("demo.local").unwrap();
        let files = ca.issue_to(&LeafSpec::workload("spiffe://demo.local/ns/shop/sa/orders"), dir.path()).unwrap();
        let chain = dir.path().join("chain.crt");
        let leaf = std::fs::read_to_string(&files.cert).unwrap();
        std::fs::write(&chain, format!("{leaf}{}", ca.cert_pem())).unwrap();
        let with_chain = IdentityFiles { cert: files.cert.clone(), key: files.key.clone(), trust_bundle: chain };
        let e = Credentials::load(&with_chain, "demo.local").err().expect("refused").to_string();
        assert!(
            e.contains("chain.crt") && e.contains("trust bundle: certificate 1 is not a CA certificate (the workload certificate of spiffe://demo.local/ns/shop/sa/orders)"),
            "{e}"
        );
        let roots = IdentityFiles { cert: files.cert, key: files.key, trust_bundle: files.trust_bundle };
        assert!(Credentials::load(&roots, "demo.local").is_ok());
    }

    /// A key file of another pair than the certificate's (a half-finished rotation, two Secrets
    /// mixed): said in words on every path that loads a pair, not as rustls's `KeyMismatch`
    /// (outside tester m3 saw that in a reload event).
    #[test]
    fn a_key_of_another_pair_is_said_in_words() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate("demo.local").unwrap();
        let spec = LeafSpec::workload("spiffe://demo.local/ns/shop/sa/orders");
        let one = ca.issue_to(&spec, &dir.path().join("one")).unwrap();
        let other = ca.issue_to(&spec, &dir.path().join("other")).unwrap();
        let mixed = IdentityFiles { cert: one.cert.clone(), key: other.key.clone(), trust_bundle: one.trust_bundle };
        let e = Credentials::load(&mixed, "demo.local").err().expect("refused").to_string();
        assert!(e.contains("private key does not match") && e.contains("the key of another certificate"), "{e}");
        assert!(!e.contains("KeyMismatch"), "{e}");
        let e = crate::tls::ServingCert::load(&one.cert, &other.key).err().expect("refused").to_string();
        assert!(e.contains("the key of another certificate") && !e.contains("KeyMismatch"), "{e}");
    }
}
