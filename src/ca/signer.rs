//! Signing: the CA's key and certificate, the roots workloads trust, and what a certification
//! request may ask for. A request gets exactly one certificate shape: the SPIFFE ID its token
//! proved as the only name, both TLS usages, no CA bit, a short life.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::Refused;
use crate::identity::SpiffeId;

/// Where the CA's files are (a Kubernetes Secret's keys).
#[derive(Debug, Clone)]
pub struct CaFiles {
    /// The signing certificate, then any intermediates up to (not including) a root.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The roots workloads trust; the signing certificate's own root when not given. During a
    /// rotation it holds the old root and the new one.
    pub trust_bundle: Option<PathBuf>,
}

/// A certificate the CA signed, with what the workload needs beside it.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The leaf, then the CA's chain below the root.
    pub chain: Vec<CertificateDer<'static>>,
    pub trust_bundle: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
    pub serial: String,
}

/// The CA in force: reloaded whole when its files change, like a workload's credentials.
pub struct CaSigner {
    key: KeyPair,
    issuer: rcgen::Certificate,
    /// The signing certificate and its intermediates, as given (DER).
    chain: Vec<CertificateDer<'static>>,
    trust_bundle: Vec<CertificateDer<'static>>,
    trust_domain: String,
    /// The signing certificate's own end: nothing it signs may outlive it.
    not_after: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

fn file_error(path: &Path, reason: impl ToString) -> CaError {
    CaError::File { path: path.to_path_buf(), reason: reason.to_string() }
}

impl CaSigner {
    /// Loads the CA: its certificate must be a CA for `trust_domain` (a `spiffe://` URI SAN of
    /// the trust domain, as the development CA and most SPIFFE CAs carry, or none), and the key
    /// must be its key.
    pub fn load(files: &CaFiles, trust_domain: &str) -> Result<Self, CaError> {
        let chain = read_certs(&files.cert)?;
        let key_pem = crate::files::read_regular(&files.key, crate::files::MAX_KEY_FILE_BYTES)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .map_err(|e| file_error(&files.key, e))?;
        let key = load_key(&key_pem).map_err(|e| file_error(&files.key, e))?;
        let signing = &chain[0];
        let (_, parsed) = x509_parser::parse_x509_certificate(signing).map_err(|e| file_error(&files.cert, e))?;
        if !parsed.is_ca() {
            return Err(file_error(&files.cert, "the first certificate is not a CA certificate (no CA bit)"));
        }
        if parsed.public_key().raw != key.public_key_der().as_slice() {
            return Err(file_error(&files.key, format!("the key is not the key of {}", files.cert.display())));
        }
        if let Some(other) = spiffe_trust_domain(&parsed).filter(|td| td != trust_domain) {
            return Err(file_error(&files.cert, format!("names trust domain {other}, not {trust_domain}")));
        }
        let not_after = to_system_time(parsed.validity().not_after.timestamp());
        // Refused here, at a reload as at start: a CA put in force that signs nothing valid
        // took the mesh's identities with it at their next renewal.
        let now = SystemTime::now();
        if not_after <= now {
            return Err(file_error(
                &files.cert,
                format!(
                    "the CA certificate ended at {}: give a CA certificate valid now, with its key (at a reload, the CA in force stays until then)",
                    parsed.validity().not_after
                ),
            ));
        }
        // A few minutes' grace for a clock behind the one that made it.
        if to_system_time(parsed.validity().not_before.timestamp()) > now + Duration::from_secs(300) {
            return Err(file_error(
                &files.cert,
                format!(
                    "the CA certificate is not valid before {}: check this machine's clock, or the one that made it (at a reload, the CA in force stays until then)",
                    parsed.validity().not_before
                ),
            ));
        }
        let params = CertificateParams::from_ca_cert_der(signing).map_err(|e| file_error(&files.cert, e))?;
        // rcgen signs with a Certificate; one rebuilt from the CA's own fields and key names
        // the same issuer and key identifier as the real one.
        let issuer = params.self_signed(&key).map_err(|e| file_error(&files.cert, e))?;
        let trust_bundle = match &files.trust_bundle {
            Some(path) => {
                let roots = read_certs(path)?;
                check_chains_to(&chain, &roots).map_err(|why| file_error(path, why))?;
                roots
            }
            // A self-signed CA is its own root; an intermediate's root must be given.
            None if parsed.subject() == parsed.issuer() => vec![signing.clone()],
            None => {
                return Err(file_error(
                    &files.cert,
                    "is an intermediate: give the roots workloads trust in ca.trustBundle",
                ))
            }
        };
        Ok(CaSigner { key, issuer, chain, trust_bundle, trust_domain: trust_domain.to_string(), not_after })
    }

    pub fn trust_bundle(&self) -> &[CertificateDer<'static>] {
        &self.trust_bundle
    }

    /// Whether `other` signs with the same certificates and hands out the same roots: a
    /// reload that changes neither changes nothing.
    pub fn same_as(&self, other: &CaSigner) -> bool {
        self.chain == other.chain && self.trust_bundle == other.trust_bundle
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// When the CA's own certificate ends.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Signs `csr` for `identity` (what the token proved), valid for `ttl` from `now` (never
    /// past the CA's own end). The request must be signed by its key and may ask for that one
    /// SPIFFE ID at most; anything more (another name, a CA certificate, other extensions) is
    /// refused, not silently dropped, so a confused or hostile client learns why.
    pub fn sign(&self, csr: &[u8], identity: &SpiffeId, ttl: Duration, now: SystemTime) -> Result<Issued, Refused> {
        check_request(csr, identity)?;
        let request = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr.to_vec()))
            .map_err(|e| Refused::Csr(format!("not a usable certification request: {e}{}", extensions_said(csr))))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, self.trust_domain.clone());
        params.distinguished_name = name;
        params.subject_alt_names =
            vec![SanType::URI(identity.as_str().try_into().map_err(|_| Refused::Csr("bad SPIFFE ID".into()))?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        // A minute of slack for clocks that run behind; the end never past the CA's.
        let not_before = now - Duration::from_secs(60);
        let wanted = now.checked_add(ttl).unwrap_or(self.not_after);
        let not_after = wanted.min(self.not_after);
        // A CA at its end would issue certificates that end before they begin, or so soon that
        // sidecars renew them ever faster; each is refused as unusable, while the CA counted it
        // issued. Refused here instead, as a CA that is unavailable until it is renewed.
        if not_after < now.checked_add(ttl.min(MIN_LEAF_LIFE)).unwrap_or(now) {
            return Err(Refused::CaExpiring(format!(
                "the CA's certificate ends at {}: it cannot issue a certificate that lasts {}; renew the CA (ca.cert)",
                to_offset(self.not_after).format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                crate::config::HumanDuration(ttl.min(MIN_LEAF_LIFE)),
            )));
        }
        params.not_before = to_offset(not_before);
        params.not_after = to_offset(not_after);
        let serial = random_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let leaf = params
            .signed_by(&request.public_key, &self.issuer, &self.key)
            .map_err(|e| Refused::Csr(format!("cannot sign: {e}")))?;
        let mut chain = vec![leaf.der().clone()];
        // Intermediates travel with the leaf; a self-signed CA is in the bundle already.
        chain.extend(self.chain.iter().filter(|c| !self.trust_bundle.contains(c)).cloned());
        Ok(Issued {
            chain,
            trust_bundle: self.trust_bundle.clone(),
            not_after,
            serial: serial.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }
}

impl CaSigner {
    /// A certificate for the control plane itself (or any identity the CA's owner vouches for,
    /// no token involved): a key made here, signed at once.
    pub fn issue_own(&self, identity: &SpiffeId, ttl: Duration) -> Result<crate::tls::Credentials, String> {
        self.issue_own_at(identity, ttl, SystemTime::now())
    }

    fn issue_own_at(
        &self,
        identity: &SpiffeId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<crate::tls::Credentials, String> {
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params = CertificateParams::default();
        params.subject_alt_names =
            vec![SanType::URI(identity.as_str().try_into().map_err(|e: rcgen::Error| e.to_string())?)];
        let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
        // Its own certificate lasts to the CA's end when that comes first: the policy stream and
        // the webhook serve on until then (workloads are refused the last minutes, see `sign`),
        // and a replica restarted in them starts instead of failing.
        let left = self.not_after.duration_since(now).map_err(|_| {
            let end =
                to_offset(self.not_after).format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
            format!("the CA's certificate ended at {end}: renew the CA (ca.cert)")
        })?;
        let issued = self.sign(csr.der(), identity, ttl.min(left), now).map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()));
        crate::tls::Credentials::from_memory(
            issued.chain,
            key,
            issued.trust_bundle,
            &self.trust_domain,
            Path::new("the control plane's own CA"),
        )
        .map_err(|e| e.to_string())
    }
}

/// The keys a workload certificate may carry: those rustls's verifier takes from a peer, so a
/// key it would refuse in every handshake is refused here, in words, rather than as a
/// signature that does not verify.
fn check_key(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<(), Refused> {
    use x509_parser::oid_registry::{OID_EC_P256, OID_NIST_EC_P384, OID_SIG_ED25519};
    use x509_parser::public_key::PublicKey;
    const TAKEN: &str = "the CA takes ECDSA P-256 or P-384, Ed25519, or RSA of 2048 to 8192 bits";
    let refused = |what: String| Err(Refused::Csr(format!("{what}: {TAKEN}")));
    if spki.algorithm.algorithm == OID_SIG_ED25519 {
        return Ok(());
    }
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let modulus = rsa.modulus.iter().position(|&b| b != 0).map_or(&[][..], |at| &rsa.modulus[at..]);
            let bits = modulus.first().map_or(0, |top| (modulus.len() - 1) * 8 + (8 - top.leading_zeros() as usize));
            match bits {
                2048..=8192 => Ok(()),
                _ => refused(format!("an RSA key of {bits} bits")),
            }
        }
        Ok(PublicKey::EC(_)) => {
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
            match curve {
                Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => Ok(()),
                Some(c) => refused(format!("an elliptic-curve key on curve {c}")),
                None => refused("an elliptic-curve key of no named curve".into()),
            }
        }
        _ => refused(format!("a key of algorithm {}", spki.algorithm.algorithm)),
    }
}

/// The extensions a refused request asks for, by name, to say what to take out: OpenSSL's
/// `v3_req` section adds `basicConstraints` and `keyUsage`, which the request parser refuses.
fn extensions_said(csr: &[u8]) -> String {
    let Ok((_, request)) = x509_parser::certification_request::X509CertificationRequest::from_der(csr) else {
        return String::new();
    };
    let names: Vec<&str> = request
        .requested_extensions()
        .into_iter()
        .flatten()
        .filter_map(|e| match e {
            ParsedExtension::BasicConstraints(_) => Some("basicConstraints"),
            ParsedExtension::KeyUsage(_) => Some("keyUsage"),
            ParsedExtension::ExtendedKeyUsage(_) => Some("extendedKeyUsage"),
            _ => None,
        })
        .collect();
    match names.is_empty() {
        true => String::new(),
        false => format!(
            " (it asks for {}: request the SPIFFE ID's URI SAN alone; the CA sets the usages itself)",
            names.join(", ")
        ),
    }
}

/// What a certification request asks for, checked before anything is signed.
fn check_request(csr: &[u8], identity: &SpiffeId) -> Result<(), Refused> {
    let (_, request) = x509_parser::certification_request::X509CertificationRequest::from_der(csr)
        .map_err(|e| Refused::Csr(format!("not a PKCS#10 request: {e}")))?;
    check_key(&request.certification_request_info.subject_pki)?;
    request.verify_signature().map_err(|_| {
        // A well-formed RSA-PSS signature does not verify here either: say which it is.
        let pss = request.signature_algorithm.algorithm.to_id_string() == "1.2.840.113549.1.1.10";
        Refused::Csr(match pss {
            true => "the request is signed with RSA-PSS, which the CA does not take: sign it with PKCS#1 v1.5 (OpenSSL's default for RSA) or ECDSA".into(),
            false => "the request's signature does not verify".into(),
        })
    })?;
    for extension in request.requested_extensions().into_iter().flatten() {
        match extension {
            ParsedExtension::BasicConstraints(bc) if bc.ca => {
                return Err(Refused::Csr("the request asks for a CA certificate".into()));
            }
            ParsedExtension::BasicConstraints(_)
            | ParsedExtension::KeyUsage(_)
            | ParsedExtension::ExtendedKeyUsage(_) => {}
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(uri) if *uri == identity.as_str() => {}
                        GeneralName::URI(uri) => {
                            return Err(Refused::OtherIdentity(format!(
                                "the request asks for {uri}, but the token proves {identity}"
                            )))
                        }
                        other => {
                            return Err(Refused::Csr(format!(
                                "the request asks for {other}; a workload certificate carries its SPIFFE ID only"
                            )))
                        }
                    }
                }
            }
            other => {
                return Err(Refused::Csr(format!(
                    "the request asks for an extension the CA does not grant ({other:?})"
                )))
            }
        }
    }
    Ok(())
}

/// Whether `chain` (the signing certificate, then its intermediates) ends at, or is signed by,
/// one of `roots`. A bundle without the CA's root is a mistake only the workloads would find, at
/// their next renewal, when nothing the CA signs verifies any more: the CA at start refuses it,
/// and a reload keeps the bundle in force (as a rotation's last step that removes the root still
/// signing would).
fn check_chains_to(chain: &[CertificateDer<'static>], roots: &[CertificateDer<'static>]) -> Result<(), String> {
    // Every root must be one a workload's verifier takes: a broken one was refused at start by
    // the control plane's own TLS, but passed at a reload and went to every sidecar.
    let mut parsed = Vec::with_capacity(roots.len());
    for (n, root) in roots.iter().enumerate() {
        match x509_parser::parse_x509_certificate(root) {
            Ok((_, root)) => parsed.push(root),
            Err(e) => return Err(format!("ca.trustBundle: certificate {} does not parse: {e}", n + 1)),
        }
    }
    // A workload certificate here (a full chain given for the roots) went to every sidecar as
    // a root: its key could sign any identity.
    crate::identity::check_trust_anchor_certs(roots).map_err(|why| format!("ca.trustBundle: {why}"))?;
    let top = chain.last().expect("read_certs returns at least one");
    if roots.contains(top) {
        return Ok(());
    }
    let (_, top) = x509_parser::parse_x509_certificate(top).map_err(|e| e.to_string())?;
    // Its issuer by name, and by signature where ring can check it (not RSA-PSS: then the name
    // and the key identifiers decide).
    let signs_it = |root: &x509_parser::certificate::X509Certificate<'_>| {
        root.subject() == top.issuer()
            && match top.verify_signature(Some(root.public_key())) {
                Ok(()) => true,
                Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm) => key_ids_match(&top, root),
                Err(_) => false,
            }
    };
    if parsed.iter().any(signs_it) {
        return Ok(());
    }
    Err(format!(
        "ca.trustBundle: none of its {} certificates is the root the CA certificate chains to ({}); workloads would trust nothing the CA signs: add that root to the bundle (README, \"Rotating the CA\")",
        roots.len(),
        if top.subject() == top.issuer() { format!("itself, {}", top.subject()) } else { format!("issued by {}", top.issuer()) },
    ))
}

/// Whether `issued` names `issuer`'s key as its authority key identifier (RFC 5280 4.2.1.1),
/// or either leaves it out (then the name alone has decided).
fn key_ids_match(
    issued: &x509_parser::certificate::X509Certificate<'_>,
    issuer: &x509_parser::certificate::X509Certificate<'_>,
) -> bool {
    let authority = issued.extensions().iter().find_map(|e| match e.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref().map(|k| k.0),
        _ => None,
    });
    let subject = issuer.extensions().iter().find_map(|e| match e.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(ski) => Some(ski.0),
        _ => None,
    });
    match (authority, subject) {
        (Some(a), Some(s)) => a == s,
        _ => true,
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let pem = crate::files::read_regular(path, crate::files::MAX_KEY_FILE_BYTES).map_err(|e| file_error(path, e))?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>().map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate found"));
    }
    Ok(certs)
}

/// The CA's key: ECDSA or Ed25519 in PKCS#8, or RSA in PKCS#8 or PKCS#1 (what Helm's `genCA`
/// writes; ring signs with it, rcgen alone cannot read it).
fn load_key(pem: &str) -> Result<KeyPair, String> {
    if let Ok(key) = KeyPair::from_pem(pem) {
        return Ok(key);
    }
    match PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| format!("no PEM private key found ({e})"))? {
        PrivateKeyDer::Pkcs1(der) => {
            let key = ring::signature::RsaKeyPair::from_der(der.secret_pkcs1_der())
                .map_err(|e| format!("not a usable RSA key: {e}"))?;
            KeyPair::from_remote(Box::new(RsaPkcs1(key))).map_err(|e| e.to_string())
        }
        // cert-manager writes an ECDSA key as SEC1 unless told PKCS#8; ring reads only the
        // latter, so the key is wrapped as PKCS#8 for its curve.
        PrivateKeyDer::Sec1(der) => [P256_OID, P384_OID]
            .into_iter()
            .find_map(|curve| KeyPair::try_from(sec1_as_pkcs8(der.secret_sec1_der(), curve).as_slice()).ok())
            .ok_or_else(|| "not a usable ECDSA key (P-256 or P-384, with its public key)".into()),
        _ => Err("not a key the CA can sign with (ECDSA P-256/P-384, Ed25519 or RSA)".into()),
    }
}

/// DER of the OIDs of id-ecPublicKey and the two curves ring signs with.
const EC_PUBLIC_KEY_OID: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_OID: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// RFC 5208's PrivateKeyInfo around an RFC 5915 ECPrivateKey, for the curve `curve_oid`.
fn sec1_as_pkcs8(sec1: &[u8], curve_oid: &[u8]) -> Vec<u8> {
    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let len = content.len().to_be_bytes();
        let significant = &len[len.iter().take_while(|&&b| b == 0).count()..];
        let mut out = vec![tag];
        match content.len() {
            0..=127 => out.push(content.len() as u8),
            _ => {
                out.push(0x80 | significant.len() as u8);
                out.extend_from_slice(significant);
            }
        }
        out.extend_from_slice(content);
        out
    }
    let algorithm = der(0x30, &[EC_PUBLIC_KEY_OID, curve_oid].concat());
    der(0x30, &[&[0x02, 0x01, 0x00][..], &algorithm, &der(0x04, sec1)].concat())
}

/// An RSA key in PKCS#1 form, signing with SHA-256.
struct RsaPkcs1(ring::signature::RsaKeyPair);

impl rcgen::RemoteKeyPair for RsaPkcs1 {
    fn public_key(&self) -> &[u8] {
        ring::signature::KeyPair::public_key(&self.0).as_ref()
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let mut signature = vec![0; self.0.public().modulus_len()];
        self.0
            .sign(&ring::signature::RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), msg, &mut signature)
            .map_err(|_| rcgen::Error::RingUnspecified)?;
        Ok(signature)
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

fn spiffe_trust_domain(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    cert.subject_alternative_name().ok().flatten().and_then(|san| {
        san.value.general_names.iter().find_map(|name| match name {
            GeneralName::URI(uri) => {
                uri.strip_prefix("spiffe://").map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
            }
            _ => None,
        })
    })
}

fn random_serial() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("system randomness");
    bytes[0] &= 0x7f; // positive
    bytes
}

/// The shortest certificate the CA issues when its own end is near (a shorter `certTtl` as it is).
pub const MIN_LEAF_LIFE: Duration = Duration::from_secs(600);

fn to_system_time(unix: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64)
}

fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{DevCa, LeafSpec};

    fn ca(dir: &Path) -> CaSigner {
        let dev = DevCa::generate("cluster.local").unwrap();
        let files = dev.write(dir).unwrap();
        CaSigner::load(&CaFiles { cert: files.cert, key: files.key, trust_bundle: None }, "cluster.local").unwrap()
    }

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://cluster.local/ns/shop/sa/{sa}")).unwrap()
    }

    fn request(params: CertificateParams) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        params.serialize_request(&key).unwrap().der().to_vec()
    }

    fn asking_for(names: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = names;
        request(params)
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn a_request_for_the_proven_identity_gets_a_short_lived_workload_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let signer = ca(dir.path());
        let now = SystemTime::now();
        let issued = signer
            .sign(
                &asking_for(vec![uri("spiffe://cluster.local/ns/shop/sa/orders")]),
                &id("orders"),
                Duration::from_secs(3600),
                now,
            )
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&issued.chain[0]).unwrap();
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["URI(spiffe://cluster.local/ns/shop/sa/orders)"]);
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(life, 3600 + 60, "the hour asked for, and a minute of slack before now");
        // It chains to the bundle handed out with it.
        let roots = {
            let mut r = rustls::RootCertStore::empty();
            r.add(issued.trust_bundle[0].clone()).unwrap();
            r
        };
        let parsed = rustls::server::ParsedCertificate::try_from(&issued.chain[0]).unwrap();
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &issued.chain[1..],
            rustls_pki_types::UnixTime::now(),
            rustls::crypto::ring::default_provider().signature_verification_algorithms.all,
        )
        .unwrap();
        // A request naming nothing gets the proven identity too.
        assert!(signer.sign(&asking_for(vec![]), &id("orders"), Duration::from_secs(60), now).is_ok());
    }

    #[test]
    fn requests_for_anything_more_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let signer = ca(dir.path());
        let ttl = Duration::from_secs(60);
        let now = SystemTime::now();
        let refusal = |csr: Vec<u8>| signer.sign(&csr, &id("orders"), ttl, now).unwrap_err().to_string();

        let other = refusal(asking_for(vec![uri("spiffe://cluster.local/ns/shop/sa/payments")]));
        assert!(
            other.contains("asks for spiffe://cluster.local/ns/shop/sa/payments") && other.contains("proves"),
            "{other}"
        );
        let dns = refusal(asking_for(vec![
            uri("spiffe://cluster.local/ns/shop/sa/orders"),
            SanType::DnsName("orders.shop".try_into().unwrap()),
        ]));
        assert!(dns.contains("SPIFFE ID only"), "{dns}");
        // basicConstraints (2.5.29.19) with cA TRUE: SEQUENCE { BOOLEAN TRUE }.
        let mut ca_params = CertificateParams::default();
        ca_params.custom_extensions =
            vec![rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x03, 0x01, 0x01, 0xff])];
        let ca_request = refusal(request(ca_params));
        assert!(ca_request.contains("CA certificate"), "{ca_request}");
        // `CA:FALSE`, as OpenSSL's v3_req section adds it: refused, saying which extension to
        // take out (it said only "Unsupported extension requested in CSR").
        let mut v3_req = CertificateParams::default();
        v3_req.subject_alt_names = vec![uri("spiffe://cluster.local/ns/shop/sa/orders")];
        v3_req.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x00])];
        let not_ca = refusal(request(v3_req));
        assert!(not_ca.contains("basicConstraints") && not_ca.contains("URI SAN alone"), "{not_ca}");
        let mut tampered = asking_for(vec![uri("spiffe://cluster.local/ns/shop/sa/orders")]);
        let at = tampered.len() - 10;
        tampered[at] ^= 0xff;
        let bad = refusal(tampered);
        assert!(bad.contains("signature") || bad.contains("PKCS#10"), "{bad}");
        assert!(refusal(b"not a request".to_vec()).contains("PKCS#10"));
    }

    /// Keys rustls would refuse in every handshake, made with Python's `cryptography` (neither
    /// ring nor rcgen makes them): refused in words, not as a signature that does not verify.
    #[test]
    fn a_request_for_a_key_no_peer_would_take_says_which_keys_the_ca_takes() {
        let dir = tempfile::tempdir().unwrap();
        let signer = ca(dir.path());
        let der = |pem: &str| CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap().as_ref().to_vec();
        let refusal = |csr: Vec<u8>| {
            signer.sign(&csr, &id("orders"), Duration::from_secs(60), SystemTime::now()).unwrap_err().to_string()
        };
        let rsa = refusal(der(include_str!("testdata/csr-rsa1024.pem")));
        assert!(rsa.contains("an RSA key of 1024 bits") && rsa.contains("P-256 or P-384"), "{rsa}");
        let p521 = refusal(der(include_str!("testdata/csr-p521.pem")));
        assert!(p521.contains("curve 1.3.132.0.35") && p521.contains("RSA of 2048"), "{p521}");
    }

    #[test]
    fn certificates_never_outlive_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let signer = ca(dir.path());
        let far = Duration::from_secs(3650 * 24 * 3600 * 2);
        let issued = signer.sign(&asking_for(vec![]), &id("orders"), far, SystemTime::now()).unwrap();
        assert!(issued.not_after <= signer.not_after);
        // No time arithmetic overflows, whatever the TTL.
        assert!(signer.sign(&asking_for(vec![]), &id("orders"), Duration::MAX, SystemTime::now()).is_ok());
    }

    /// The control plane's own certificate lasts to the CA's end when that is nearer than its
    /// TTL, even in the minutes workloads are refused: its policy stream and webhook serve on
    /// (a replica restarted then starts). Once the CA has ended, it is refused too.
    #[test]
    fn the_control_planes_own_certificate_lasts_to_the_cas_end() {
        use rcgen::{BasicConstraints, IsCa};
        let dir = tempfile::tempdir().unwrap();
        let short_ca = |life: time::Duration| {
            let mut params = CertificateParams::default();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
            params.subject_alt_names = vec![SanType::URI("spiffe://cluster.local".try_into().unwrap())];
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::minutes(5);
            params.not_after = now + life;
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            let (cert_path, key_path) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
            std::fs::write(&cert_path, cert.pem()).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            CaSigner::load(&CaFiles { cert: cert_path, key: key_path, trust_bundle: None }, "cluster.local").unwrap()
        };
        let control = SpiffeId::parse("spiffe://cluster.local/ns/palisade-system/sa/palisade-control").unwrap();
        let signer = short_ca(time::Duration::minutes(5));
        let own = signer.issue_own(&control, Duration::from_secs(3600)).unwrap();
        let end = signer.not_after.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert_eq!(own.not_after, end);
        assert!(signer.sign(&asking_for(vec![]), &id("orders"), Duration::from_secs(3600), SystemTime::now()).is_err());
        let after = signer.not_after + Duration::from_secs(1);
        let refused = signer.issue_own_at(&control, Duration::from_secs(3600), after).map(|_| ()).unwrap_err();
        assert!(refused.contains("ended") && refused.contains("renew the CA"), "{refused}");
    }

    /// A CA at its end refuses, as unavailable, rather than issue certificates that end before
    /// they begin (which sidecars refuse, while the CA counted them issued).
    #[test]
    fn a_ca_at_its_end_issues_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let signer = ca(dir.path());
        let day = Duration::from_secs(24 * 3600);
        let sign = |ttl: Duration, now: SystemTime| signer.sign(&asking_for(vec![]), &id("orders"), ttl, now);
        for now in [signer.not_after + Duration::from_secs(3600), signer.not_after - Duration::from_secs(300)] {
            let refused = sign(day, now).unwrap_err();
            assert_eq!((refused.label(), refused.status().code()), ("ca_expiring", tonic::Code::Unavailable));
            assert!(refused.to_string().contains("renew the CA"), "{refused}");
        }
        // A certificate cut short by the CA's end, but still 10 minutes long, is issued.
        let late = signer.not_after - Duration::from_secs(660);
        assert_eq!(sign(day, late).unwrap().not_after, signer.not_after);
        // A certTtl shorter than 10 minutes needs only its own length.
        assert!(sign(Duration::from_secs(5), signer.not_after - Duration::from_secs(10)).is_ok());
    }

    /// A CA made by an independent tool, Python's cryptography, with the key `key` (a Python
    /// expression) written in the "traditional" form: PKCS#1 for RSA (Helm's genCA), SEC1 for
    /// ECDSA (cert-manager's default).
    fn ca_made_by_python(dir: &Path, key: &str) -> CaFiles {
        let script = r#"
import datetime, sys
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
key = eval(sys.argv[2])
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "palisade-ca")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
    .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
    .not_valid_after(now + datetime.timedelta(days=365))
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False,
        decipher_only=False), critical=True)
    .sign(key, hashes.SHA256()))
open(sys.argv[1] + "/ca.crt", "wb").write(cert.public_bytes(serialization.Encoding.PEM))
open(sys.argv[1] + "/ca.key", "wb").write(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
"#;
        let out = std::process::Command::new("python3").arg("-c").arg(script).arg(dir).arg(key).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        CaFiles { cert: dir.join("ca.crt"), key: dir.join("ca.key"), trust_bundle: None }
    }

    #[test]
    fn an_rsa_ca_in_pkcs1_as_helm_writes_it_signs() {
        let dir = tempfile::tempdir().unwrap();
        let files = ca_made_by_python(dir.path(), "rsa.generate_private_key(public_exponent=65537, key_size=2048)");
        let key = std::fs::read_to_string(&files.key).unwrap();
        assert!(key.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "PKCS#1, as genCA writes");
        let signer = CaSigner::load(&files, "cluster.local").unwrap();
        let credentials = signer.issue_own(&id("orders"), Duration::from_secs(600)).unwrap();
        assert_eq!(credentials.id, id("orders"), "checked against the bundle on the way in");
    }

    #[test]
    fn an_ecdsa_ca_in_sec1_as_cert_manager_writes_it_signs() {
        for curve in ["SECP256R1", "SECP384R1"] {
            let dir = tempfile::tempdir().unwrap();
            let files = ca_made_by_python(dir.path(), &format!("ec.generate_private_key(ec.{curve}())"));
            let key = std::fs::read_to_string(&files.key).unwrap();
            assert!(key.starts_with("-----BEGIN EC PRIVATE KEY-----"), "SEC1, as cert-manager writes");
            let signer = CaSigner::load(&files, "cluster.local").unwrap_or_else(|e| panic!("{curve}: {e}"));
            let credentials = signer.issue_own(&id("orders"), Duration::from_secs(600)).unwrap();
            assert_eq!(credentials.id, id("orders"), "{curve}");
        }
        // A P-521 key (ring cannot sign with it) is refused with what it takes.
        let dir = tempfile::tempdir().unwrap();
        let files = ca_made_by_python(dir.path(), "ec.generate_private_key(ec.SECP521R1())");
        let err = CaSigner::load(&files, "cluster.local").err().unwrap().to_string();
        assert!(err.contains("P-256 or P-384"), "{err}");
    }

    #[test]
    fn a_trust_bundle_must_hold_the_root_the_ca_chains_to() {
        let dir = tempfile::tempdir().unwrap();
        let old = DevCa::generate("cluster.local").unwrap().write(&dir.path().join("old")).unwrap();
        let new = DevCa::generate("cluster.local").unwrap().write(&dir.path().join("new")).unwrap();
        let bundle = |name: &str, roots: &[&Path]| {
            let path = dir.path().join(name);
            std::fs::write(&path, roots.iter().map(|r| std::fs::read_to_string(r).unwrap()).collect::<String>())
                .unwrap();
            Some(path)
        };
        // A rotation's second step: the new key signs, both roots are handed out.
        let both = bundle("both.crt", &[&old.cert, &new.cert]);
        let signing_new = CaFiles { cert: new.cert.clone(), key: new.key.clone(), trust_bundle: both };
        assert_eq!(CaSigner::load(&signing_new, "cluster.local").unwrap().trust_bundle().len(), 2);
        // A full chain given for the roots (outside tester j3): the workload's certificate
        // would be a root to every sidecar, and its key could sign any identity.
        let leaf = DevCa::load(&dir.path().join("new"))
            .unwrap()
            .issue_to(&LeafSpec::workload("spiffe://cluster.local/ns/shop/sa/frontend"), &dir.path().join("leaf"))
            .unwrap();
        let chain = CaFiles { trust_bundle: bundle("chain.crt", &[&leaf.cert, &new.cert]), ..signing_new.clone() };
        let err = CaSigner::load(&chain, "cluster.local").err().unwrap().to_string();
        assert!(
            err.contains("chain.crt: ca.trustBundle: certificate 1 is not a CA certificate (the workload certificate of spiffe://cluster.local/ns/shop/sa/frontend)"),
            "{err}"
        );
        // Its last step done too early: the old root alone, while the new key signs.
        let early = CaFiles { trust_bundle: bundle("old.crt", &[&old.cert]), ..signing_new };
        let err = CaSigner::load(&early, "cluster.local").err().unwrap().to_string();
        assert!(err.contains("old.crt: ca.trustBundle: none of its 1 certificates") && err.contains("itself"), "{err}");

        // An intermediate: its issuer's root, not a root of the same name with another key.
        let script = r#"
import datetime, sys
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
now = datetime.datetime.now(datetime.timezone.utc)
def ca(subject, issuer, key, signer):
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False,
        decipher_only=False)
    name = lambda n: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, n)])
    return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer)).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True).sign(signer, hashes.SHA256()))
root_key, impostor_key, key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
pem = lambda c: c.public_bytes(serialization.Encoding.PEM)
open(sys.argv[1] + "/root.crt", "wb").write(pem(ca("mesh root", "mesh root", root_key, root_key)))
open(sys.argv[1] + "/impostor.crt", "wb").write(pem(ca("mesh root", "mesh root", impostor_key, impostor_key)))
open(sys.argv[1] + "/ca.crt", "wb").write(pem(ca("palisade-ca", "mesh root", key, root_key)))
open(sys.argv[1] + "/ca.key", "wb").write(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
# An RSA-PSS root (which ring does not verify in certificates), its intermediate, and an impostor.
from cryptography.hazmat.primitives.asymmetric import rsa, padding
pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
def pss_ca(subject, issuer, key, signer):
    name = lambda n: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, n)])
    return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer)).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
        .sign(signer, hashes.SHA256(), rsa_padding=pss if isinstance(signer, rsa.RSAPrivateKey) else None))
pss_root_key, pss_impostor_key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
pss_key = ec.generate_private_key(ec.SECP256R1())
open(sys.argv[1] + "/pss-root.crt", "wb").write(pem(pss_ca("pss root", "pss root", pss_root_key, pss_root_key)))
open(sys.argv[1] + "/pss-impostor.crt", "wb").write(pem(pss_ca("pss root", "pss root", pss_impostor_key, pss_impostor_key)))
open(sys.argv[1] + "/pss-ca.crt", "wb").write(pem(pss_ca("palisade-ca", "pss root", pss_key, pss_root_key)))
open(sys.argv[1] + "/pss-ca.key", "wb").write(pss_key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
"#;
        let out = std::process::Command::new("python3").arg("-c").arg(script).arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let intermediate = |roots: &str| CaFiles {
            cert: dir.path().join("ca.crt"),
            key: dir.path().join("ca.key"),
            trust_bundle: Some(dir.path().join(roots)),
        };
        assert!(CaSigner::load(&intermediate("root.crt"), "cluster.local").is_ok());
        let err = CaSigner::load(&intermediate("impostor.crt"), "cluster.local").err().unwrap().to_string();
        assert!(err.contains("none of its 1 certificates") && err.contains("issued by CN=mesh root"), "{err}");
        // Under an RSA-PSS root: its name and key identifiers decide, as ring checks no PSS
        // signature in a certificate.
        let pss = |roots: &str| CaFiles {
            cert: dir.path().join("pss-ca.crt"),
            key: dir.path().join("pss-ca.key"),
            trust_bundle: Some(dir.path().join(roots)),
        };
        assert!(CaSigner::load(&pss("pss-root.crt"), "cluster.local").is_ok());
        assert!(CaSigner::load(&pss("pss-impostor.crt"), "cluster.local").is_err(), "another key of the same name");
        // A bundle with a block that is no certificate is refused, whatever else it holds.
        let broken = dir.path().join("broken.crt");
        let good = std::fs::read_to_string(dir.path().join("root.crt")).unwrap();
        std::fs::write(&broken, format!("{good}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
            .unwrap();
        let err = CaSigner::load(&intermediate("broken.crt"), "cluster.local").err().unwrap().to_string();
        assert!(err.contains("certificate 2 does not parse"), "{err}");
    }

    /// A CA certificate past its end, or not yet valid, is refused when the files are read, at
    /// a reload as at start (outside tester j3: an expired one written over `ca.crt` was put in
    /// force at a reload, and every renewal after it failed).
    #[test]
    fn a_ca_certificate_out_of_its_validity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let now = time::OffsetDateTime::now_utc();
        let hours = time::Duration::hours;
        for (name, not_before, not_after, expected) in [
            ("expired", now - hours(48), now - hours(1), "the CA certificate ended at"),
            ("future", now + hours(1), now + hours(48), "the CA certificate is not valid before"),
            ("valid", now - hours(1), now + hours(48), ""),
        ] {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} root"));
            (params.not_before, params.not_after) = (not_before, not_after);
            let cert = params.self_signed(&key).unwrap();
            let files = CaFiles {
                cert: dir.path().join(format!("{name}.crt")),
                key: dir.path().join(format!("{name}.key")),
                trust_bundle: None,
            };
            std::fs::write(&files.cert, cert.pem()).unwrap();
            std::fs::write(&files.key, key.serialize_pem()).unwrap();
            match CaSigner::load(&files, "cluster.local") {
                Ok(_) => assert!(expected.is_empty(), "{name} loaded"),
                Err(e) => assert!(!expected.is_empty() && e.to_string().contains(expected), "{name}: {e}"),
            }
        }
    }

    #[test]
    fn a_key_that_is_not_the_cas_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let one = DevCa::generate("cluster.local").unwrap().write(&dir.path().join("one")).unwrap();
        let two = DevCa::generate("cluster.local").unwrap().write(&dir.path().join("two")).unwrap();
        let files = CaFiles { cert: one.cert, key: two.key, trust_bundle: None };
        let err = CaSigner::load(&files, "cluster.local").err().unwrap().to_string();
        assert!(err.contains("is not the key of"), "{err}");
        let leaf = DevCa::generate("cluster.local").unwrap();
        let leaf_files =
            leaf.issue_to(&LeafSpec::workload("spiffe://cluster.local/ns/a/sa/b"), &dir.path().join("leaf")).unwrap();
        let files = CaFiles { cert: leaf_files.cert, key: leaf_files.key, trust_bundle: None };
        assert!(CaSigner::load(&files, "cluster.local").err().unwrap().to_string().contains("not a CA certificate"));
    }
}
