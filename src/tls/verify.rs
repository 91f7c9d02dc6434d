//! Certificate checks beyond the chain: a SPIFFE ID in an accepted trust domain, and the TLS
//! usage the certificate was issued for. webpki accepts a certificate without an extended key
//! usage for any purpose; a mesh identity must say what it is for.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::identity::{cert_identity, CertIdentity, SpiffeId};

/// The trust domains whose identities this workload accepts: its own, plus any a policy allows.
#[derive(Debug, Clone)]
pub struct TrustDomains(Arc<[Box<str>]>);

impl TrustDomains {
    pub fn new<I: IntoIterator<Item = S>, S: Into<Box<str>>>(domains: I) -> Self {
        TrustDomains(domains.into_iter().map(Into::into).collect())
    }

    pub fn contains(&self, domain: &str) -> bool {
        self.0.iter().any(|d| &**d == domain)
    }
}

/// Why a certificate that chains to the bundle is still refused. Its `Debug` is its message:
/// rustls shows a verifier's error through `Debug` in the handshake's error text.
#[derive(thiserror::Error, Clone, PartialEq, Eq)]
pub enum LeafError {
    #[error("certificate does not parse")]
    Unparsable,
    #[error("certificate has no SPIFFE ID")]
    NoSpiffeId,
    #[error("certificate identity is malformed: {0}")]
    BadSpiffeId(&'static str),
    #[error("identity {0} is not in an accepted trust domain")]
    ForeignTrustDomain(String),
    #[error("certificate lacks the {0} extended key usage")]
    MissingUsage(&'static str),
    #[error("a workload certificate may not sign certificates or CRLs (keyCertSign, cRLSign)")]
    SigningUsage,
    #[error("a workload certificate must carry the key usage digitalSignature (X509-SVID 4.3)")]
    NoDigitalSignature,
    #[error("intermediate {0} of the chain lacks the key usage keyCertSign (X509-SVID 4.3, RFC 5280 4.2.1.3)")]
    IntermediateCannotSign(usize),
    #[error("a chain of {0} intermediates; at most {MAX_INTERMEDIATES} are taken")]
    LongChain(usize),
}

impl std::fmt::Debug for LeafError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Usage {
    Client,
    Server,
}

/// Checks a leaf that already chains to the bundle; returns its identity.
pub(crate) fn check_leaf(der: &[u8], usage: Usage, domains: &TrustDomains) -> Result<SpiffeId, LeafError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| LeafError::Unparsable)?;
    let eku = cert.extended_key_usage().ok().flatten().map(|e| e.value);
    let (has_usage, name) = match usage {
        Usage::Client => (eku.is_some_and(|e| e.client_auth), "clientAuth"),
        Usage::Server => (eku.is_some_and(|e| e.server_auth), "serverAuth"),
    };
    if !has_usage {
        return Err(LeafError::MissingUsage(name));
    }
    // X509-SVID section 4.3: a leaf's key signs TLS handshakes, never certificates.
    let key_usage = cert.key_usage().ok().flatten().map(|k| k.value);
    if key_usage.is_some_and(|k| k.key_cert_sign() || k.crl_sign()) {
        return Err(LeafError::SigningUsage);
    }
    if !key_usage.is_some_and(|k| k.digital_signature()) {
        return Err(LeafError::NoDigitalSignature);
    }
    match cert_identity(&cert) {
        // A trust domain's own ID (no path) names no workload (X509-SVID section 2), yet would
        // match a pattern such as `spiffe://cluster.local*`.
        CertIdentity::Spiffe(id) if id.path().is_empty() => {
            Err(LeafError::BadSpiffeId("a trust domain's ID names no workload"))
        }
        CertIdentity::Spiffe(id) if domains.contains(id.trust_domain()) => Ok(id),
        CertIdentity::Spiffe(id) => Err(LeafError::ForeignTrustDomain(id.to_string())),
        CertIdentity::None => Err(LeafError::NoSpiffeId),
        CertIdentity::Invalid(why) => Err(LeafError::BadSpiffeId(why)),
    }
}

fn rejected(e: LeafError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

/// Inbound: webpki's chain, validity and usage checks, then the SPIFFE checks.
#[derive(Debug)]
pub(crate) struct SpiffeClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    domains: TrustDomains,
}

impl SpiffeClientVerifier {
    pub fn new(roots: Arc<RootCertStore>, domains: TrustDomains) -> Result<Self, super::TlsError> {
        let webpki = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, super::provider())
            .build()
            .map_err(|e| super::TlsError::Config(format!("client verifier: {e}")))?;
        Ok(SpiffeClientVerifier { webpki, domains })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check_chain_length(intermediates)?;
        self.webpki.verify_client_cert(end_entity, intermediates, now)?;
        check_intermediates(intermediates)?;
        check_leaf(end_entity, Usage::Client, &self.domains).map_err(rejected)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Outbound: the chain and validity as webpki checks them, but the name is the SPIFFE ID in the
/// URI SAN, not a DNS name, so any address works. Whether it is the *expected* identity is
/// checked by the connector once the handshake is done, before a byte of the request is sent.
#[derive(Debug)]
pub(crate) struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    domains: TrustDomains,
}

impl SpiffeServerVerifier {
    pub fn new(roots: Arc<RootCertStore>, domains: TrustDomains) -> Self {
        SpiffeServerVerifier { roots, algorithms: super::provider().signature_verification_algorithms, domains }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check_chain_length(intermediates)?;
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        check_intermediates(intermediates)?;
        check_leaf(end_entity, Usage::Server, &self.domains).map_err(rejected)?;
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

/// Intermediates a peer may present, at most: a mesh CA is a root or one intermediate below
/// one (two with an offline root and an issuing CA), and X.509-SVID chains stop there. webpki
/// tries every presented certificate whose subject fits as it builds a path, up to its budget
/// of signature checks: sixty fakes named as the CA cost ten handshakes' CPU, before the caller
/// has proved anything.
const MAX_INTERMEDIATES: usize = 4;

fn check_chain_length(intermediates: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
    match intermediates.len() > MAX_INTERMEDIATES {
        true => Err(rejected(LeafError::LongChain(intermediates.len()))),
        false => Ok(()),
    }
}

/// X509-SVID section 4.3: a certificate that signs SVIDs carries keyCertSign; webpki does not
/// look. Every presented intermediate is one a chain may be built through.
fn check_intermediates(intermediates: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
    for (i, der) in intermediates.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| rejected(LeafError::Unparsable))?;
        if !cert.key_usage().ok().flatten().is_some_and(|k| k.value.key_cert_sign()) {
            return Err(rejected(LeafError::IntermediateCannotSign(i + 1)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{DevCa, LeafSpec};

    fn der(pem: &str) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
    }

    #[test]
    fn leaf_checks() {
        let ca = DevCa::generate("cluster.local").unwrap();
        let domains = TrustDomains::new(["cluster.local"]);
        let issue = |spec: LeafSpec| der(&ca.issue(&spec).unwrap().0);

        let good = issue(LeafSpec::workload("spiffe://cluster.local/ns/a/sa/b"));
        assert_eq!(check_leaf(&good, Usage::Client, &domains).unwrap().as_str(), "spiffe://cluster.local/ns/a/sa/b");
        assert!(check_leaf(&good, Usage::Server, &domains).is_ok());

        let foreign = issue(LeafSpec::workload("spiffe://other.org/ns/a/sa/b"));
        assert!(matches!(check_leaf(&foreign, Usage::Client, &domains), Err(LeafError::ForeignTrustDomain(_))));

        let no_client =
            issue(LeafSpec { client_auth: false, ..LeafSpec::workload("spiffe://cluster.local/ns/a/sa/b") });
        assert_eq!(check_leaf(&no_client, Usage::Client, &domains), Err(LeafError::MissingUsage("clientAuth")));

        let no_usage = issue(LeafSpec {
            client_auth: false,
            server_auth: false,
            ..LeafSpec::workload("spiffe://cluster.local/ns/a/sa/b")
        });
        assert_eq!(check_leaf(&no_usage, Usage::Server, &domains), Err(LeafError::MissingUsage("serverAuth")));

        let no_id = issue(LeafSpec { spiffe_id: None, dns_names: vec!["b.a.svc".into()], ..LeafSpec::workload("x") });
        assert_eq!(check_leaf(&no_id, Usage::Client, &domains), Err(LeafError::NoSpiffeId));

        // A trust domain's own ID names no workload, yet `spiffe://cluster.local*` would match it.
        let domain_only = issue(LeafSpec::workload("spiffe://cluster.local"));
        assert!(matches!(check_leaf(&domain_only, Usage::Client, &domains), Err(LeafError::BadSpiffeId(_))));
    }

    /// X509-SVID section 4.3: a leaf that may sign certificates or CRLs is refused, whatever else
    /// it says (the check runs on a leaf that already chains: self-signed will do here).
    #[test]
    fn a_leaf_that_may_sign_certificates_is_refused() {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType};
        let domains = TrustDomains::new(["cluster.local"]);
        for usage in [KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign] {
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![SanType::URI("spiffe://cluster.local/ns/a/sa/b".try_into().unwrap())];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature, usage];
            let leaf = params.clone().self_signed(&KeyPair::generate().unwrap()).unwrap();
            assert_eq!(check_leaf(leaf.der(), Usage::Client, &domains), Err(LeafError::SigningUsage), "{usage:?}");
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            let leaf = params.clone().self_signed(&KeyPair::generate().unwrap()).unwrap();
            assert!(check_leaf(leaf.der(), Usage::Client, &domains).is_ok());
        }
    }

    /// X509-SVID section 4.3's other MUSTs (outside tester j3 had all three accepted): a leaf
    /// carries digitalSignature, an intermediate keyCertSign.
    #[test]
    fn a_leaf_without_digital_signature_and_an_intermediate_without_cert_sign_are_refused() {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
        };
        let domains = TrustDomains::new(["cluster.local"]);
        for usages in [vec![], vec![KeyUsagePurpose::KeyAgreement]] {
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![SanType::URI("spiffe://cluster.local/ns/a/sa/b".try_into().unwrap())];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
            params.key_usages = usages.clone();
            let leaf = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
            assert_eq!(
                check_leaf(leaf.der(), Usage::Server, &domains),
                Err(LeafError::NoDigitalSignature),
                "{usages:?}"
            );
        }
        let intermediate = |usages: Vec<KeyUsagePurpose>| {
            let mut params = CertificateParams::default();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = usages;
            params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().clone()
        };
        let signing = intermediate(vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign]);
        assert!(check_intermediates(std::slice::from_ref(&signing)).is_ok());
        for usages in [vec![], vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign]] {
            let chain = [signing.clone(), intermediate(usages)];
            let e = check_intermediates(&chain).unwrap_err().to_string();
            assert!(e.contains("intermediate 2 of the chain lacks the key usage keyCertSign"), "{e}");
        }
    }
}
