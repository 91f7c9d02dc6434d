//! A development PKI: one root per trust domain, and SPIFFE workload certificates signed by it.
//! Good for local meshes, tests and the demo; production uses cert-manager, SPIRE or the
//! control plane's CA.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::SpiffeId;

#[derive(Debug, thiserror::Error)]
pub enum DevCaError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a usable CA certificate or key: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error(transparent)]
    Id(#[from] super::InvalidSpiffeId),
    #[error("DNS name {0:?} is not valid")]
    BadDnsName(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Paths of a CA written by [`DevCa::write`].
#[derive(Debug, Clone)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Paths of a workload's files, named as cert-manager and the sidecar config expect them.
#[derive(Debug, Clone)]
pub struct WorkloadFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trust_bundle: PathBuf,
}

/// What a leaf certificate should say. Defaults follow an X509-SVID: one SPIFFE URI SAN,
/// both TLS usages, 24 hours of validity.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub spiffe_id: Option<String>,
    pub dns_names: Vec<String>,
    pub client_auth: bool,
    pub server_auth: bool,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    pub fn workload(spiffe_id: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            spiffe_id: Some(spiffe_id.to_string()),
            dns_names: Vec::new(),
            client_auth: true,
            server_auth: true,
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::hours(24),
        }
    }
}

pub struct DevCa {
    trust_domain: String,
    /// The end of the CA's own certificate.
    not_after: OffsetDateTime,
    cert_pem: String,
    key: KeyPair,
    // rcgen signs with a `Certificate`; rebuilding it from the stored params keeps subject and key.
    signer: rcgen::Certificate,
}

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";

impl DevCa {
    /// A new root for `trust_domain`, valid for ten years.
    pub fn generate(trust_domain: &str) -> Result<Self, DevCaError> {
        let root = SpiffeId::parse(&format!("spiffe://{trust_domain}"))?;
        // `a/b` parses as the domain `a` with a path: no identity could be issued under it.
        if !root.path().is_empty() {
            return Err(DevCaError::Id(super::InvalidSpiffeId {
                value: trust_domain.to_string(),
                reason: "a trust domain is a name without '/'",
            }));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Palisade development CA");
        dn.push(DnType::CommonName, format!("{trust_domain} root"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.subject_alt_names = vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(3650);
        params.serial_number = Some(random_serial());
        let key = KeyPair::generate()?;
        let not_after = params.not_after;
        let signer = params.self_signed(&key)?;
        Ok(DevCa { trust_domain: trust_domain.to_string(), not_after, cert_pem: signer.pem(), key, signer })
    }

    /// Loads `ca.crt` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, DevCaError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let bad = |path: &Path, reason: String| DevCaError::BadCa { path: path.to_path_buf(), reason };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(&key_path, e.to_string()))?;
        let params = CertificateParams::from_ca_cert_pem(&cert_pem).map_err(|e| bad(&cert_path, e.to_string()))?;
        if !matches!(params.is_ca, rcgen::IsCa::Ca(_)) {
            return Err(bad(
                &cert_path,
                "not a CA certificate (a workload's?): give the directory `ca init` wrote".into(),
            ));
        }
        // What it signs must verify against the certificate: the key must be its own.
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad(&cert_path, e.to_string()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(&cert_path, e.to_string()))?;
        if parsed.public_key().raw != key.public_key_der().as_slice() {
            return Err(bad(&key_path, format!("not the key of {}", cert_path.display())));
        }
        let trust_domain = params
            .subject_alt_names
            .iter()
            .find_map(|san| match san {
                SanType::URI(uri) => uri.as_str().strip_prefix("spiffe://").map(str::to_string),
                _ => None,
            })
            .ok_or_else(|| bad(&cert_path, "no spiffe:// URI SAN naming the trust domain".into()))?;
        let not_after = params.not_after;
        let signer = params.self_signed(&key).map_err(|e| bad(&key_path, e.to_string()))?;
        Ok(DevCa { trust_domain, not_after, cert_pem, key, signer })
    }

    /// Writes `ca.crt` and `ca.key` (mode 0600) into `dir`, creating it.
    pub fn write(&self, dir: &Path) -> Result<CaFiles, DevCaError> {
        create_dir(dir)?;
        let files = CaFiles { cert: dir.join(CA_CERT), key: dir.join(CA_KEY) };
        write(&files.cert, &self.cert_pem, false)?;
        write(&files.key, &self.key.serialize_pem(), true)?;
        Ok(files)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// When the CA's own certificate ends: no certificate it signs is valid after it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Signs a leaf certificate; returns (certificate PEM, private key PEM).
    pub fn issue(&self, spec: &LeafSpec) -> Result<(String, String), DevCaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Palisade workload");
        params.distinguished_name = dn;
        if let Some(id) = &spec.spiffe_id {
            params.subject_alt_names.push(SanType::URI(id.as_str().try_into()?));
        }
        for name in &spec.dns_names {
            if !is_dns_name(name) {
                return Err(DevCaError::BadDnsName(name.clone()));
            }
            let dns = name.as_str().try_into().map_err(|_| DevCaError::BadDnsName(name.clone()))?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        if spec.client_auth {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        if spec.server_auth {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.signer, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues a certificate and writes `tls.crt`, `tls.key` (0600) and `ca.crt` into `dir`.
    pub fn issue_to(&self, spec: &LeafSpec, dir: &Path) -> Result<WorkloadFiles, DevCaError> {
        let (cert, key) = self.issue(spec)?;
        create_dir(dir)?;
        let files =
            WorkloadFiles { cert: dir.join("tls.crt"), key: dir.join("tls.key"), trust_bundle: dir.join("ca.crt") };
        write(&files.cert, &cert, false)?;
        write(&files.key, &key, true)?;
        write(&files.trust_bundle, &self.cert_pem, false)?;
        Ok(files)
    }
}

/// A host name as a certificate may carry it: dot-separated labels of letters, digits and
/// inner hyphens, 1 to 63 characters each and 253 in all, the first label `*` for a wildcard.
fn is_dns_name(name: &str) -> bool {
    let labels = name.strip_prefix("*.").unwrap_or(name);
    name.len() <= 253
        && !labels.is_empty()
        && labels.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("system randomness");
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

fn read(path: &Path) -> Result<String, DevCaError> {
    fs::read_to_string(path).map_err(|source| DevCaError::Io { path: path.to_path_buf(), source })
}

fn create_dir(dir: &Path) -> Result<(), DevCaError> {
    fs::create_dir_all(dir).map_err(|source| DevCaError::Io { path: dir.to_path_buf(), source })
}

/// Writes through a temporary file and a rename, so a watcher never reads half a file.
fn write(path: &Path, contents: &str, secret: bool) -> Result<(), DevCaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| DevCaError::Io { path: path.to_path_buf(), source };
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(if secret { 0o600 } else { 0o644 });
    let mut file = options.open(&tmp).map_err(io)?;
    std::io::Write::write_all(&mut file, contents.as_bytes()).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::spiffe::CertIdentity;
    use crate::identity::spiffe_id_from_der;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    #[test]
    fn issued_certificates_carry_the_spiffe_id() {
        let ca = DevCa::generate("cluster.local").unwrap();
        let (cert, _) = ca.issue(&LeafSpec::workload("spiffe://cluster.local/ns/shop/sa/orders")).unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        match spiffe_id_from_der(&der) {
            CertIdentity::Spiffe(id) => {
                assert_eq!(id.as_str(), "spiffe://cluster.local/ns/shop/sa/orders")
            }
            other => panic!("unexpected identity {other:?}"),
        }
    }

    #[test]
    fn a_written_ca_loads_back_with_its_trust_domain() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate("example.org").unwrap();
        ca.write(dir.path()).unwrap();
        let loaded = DevCa::load(dir.path()).unwrap();
        assert_eq!(loaded.trust_domain(), "example.org");
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
    }

    /// What could never issue a usable certificate is refused where it is given (tester m3):
    /// a trust domain with a `/`, past SPIFFE's 255 bytes; a CA directory whose key is not its
    /// certificate's, or whose certificate is a workload's.
    #[test]
    fn a_ca_that_could_issue_nothing_usable_is_refused() {
        for domain in ["a/b", &"d".repeat(256)] {
            assert!(DevCa::generate(domain).is_err(), "{domain}");
        }
        let dir = tempfile::tempdir().unwrap();
        let (ours, other) = (dir.path().join("ours"), dir.path().join("other"));
        DevCa::generate("example.org").unwrap().write(&ours).unwrap();
        DevCa::generate("example.org").unwrap().write(&other).unwrap();
        fs::copy(other.join(CA_KEY), ours.join(CA_KEY)).unwrap();
        let mismatched = DevCa::load(&ours).err().unwrap().to_string();
        assert!(mismatched.contains("ca.key") && mismatched.contains("not the key of"), "{mismatched}");
        let leaf = dir.path().join("leaf");
        let files = DevCa::generate("example.org")
            .unwrap()
            .issue_to(&LeafSpec::workload("spiffe://example.org/ns/shop/sa/orders"), &leaf)
            .unwrap();
        fs::copy(&files.cert, leaf.join(CA_CERT)).unwrap();
        fs::copy(&files.key, leaf.join(CA_KEY)).unwrap();
        let workload = DevCa::load(&leaf).err().unwrap().to_string();
        assert!(workload.contains("not a CA certificate"), "{workload}");
    }

    #[test]
    fn loading_a_missing_ca_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = DevCa::load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("ca.crt"), "{err}");
    }
}
