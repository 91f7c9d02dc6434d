use std::fmt;
use std::sync::Arc;

/// A parsed SPIFFE ID. Cheap to clone: the text is shared.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    text: Arc<str>,
    // byte offsets into `text`
    domain_end: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid SPIFFE ID {value:?}: {reason}")]
pub struct InvalidSpiffeId {
    pub value: String,
    pub reason: &'static str,
}

const SCHEME: &str = "spiffe://";

impl SpiffeId {
    pub fn parse(value: &str) -> Result<Self, InvalidSpiffeId> {
        let bad = |reason| InvalidSpiffeId { value: value.to_string(), reason };
        let rest = value.strip_prefix(SCHEME).ok_or_else(|| bad("must start with spiffe://"))?;
        // The SPIFFE ID standard's limits (section 2.3), which other implementations hold to.
        if value.len() > 2048 {
            return Err(bad("longer than the 2048 bytes a SPIFFE ID may be"));
        }
        let domain_len = rest.find('/').unwrap_or(rest.len());
        let domain = &rest[..domain_len];
        if domain.is_empty() {
            return Err(bad("trust domain is empty"));
        }
        if domain.len() > 255 {
            return Err(bad("trust domain is longer than 255 bytes"));
        }
        if !domain.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)) {
            return Err(bad("trust domain may hold only lowercase letters, digits, '-', '.' and '_'"));
        }
        let path = &rest[domain_len..];
        if path.ends_with('/') {
            return Err(bad("path must not end with '/'"));
        }
        for segment in path.split('/').skip(1) {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(bad("path segments must be non-empty and not '.' or '..'"));
            }
            if !segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
                return Err(bad("path may hold only letters, digits, '-', '.' and '_'"));
            }
        }
        Ok(SpiffeId { text: value.into(), domain_end: SCHEME.len() + domain_len })
    }

    /// The identity Palisade gives a Kubernetes service account.
    pub fn for_workload(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, InvalidSpiffeId> {
        Self::parse(&format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn trust_domain(&self) -> &str {
        &self.text[SCHEME.len()..self.domain_end]
    }

    pub fn path(&self) -> &str {
        &self.text[self.domain_end..]
    }

    /// The namespace of an identity whose path starts `/ns/<ns>/`: a `/ns/<ns>/sa/<sa>` one, and
    /// one an external CA nested deeper, as Istio's `namespaces` (`*/ns/<ns>/*`) reads it.
    pub fn namespace(&self) -> Option<&str> {
        let rest = self.path().strip_prefix("/ns/")?;
        let (namespace, below) = rest.split_once('/')?;
        (!below.is_empty()).then_some(namespace)
    }

    pub fn service_account(&self) -> Option<&str> {
        self.k8s_parts().map(|(_, sa)| sa)
    }

    fn k8s_parts(&self) -> Option<(&str, &str)> {
        let mut parts = self.path().strip_prefix('/')?.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

/// A namespace's name is a DNS-1123 label and a service account's a DNS-1123 subdomain: the API
/// server issues no other. A name holding anything else (a `/` would nest a SPIFFE ID:
/// `ns/sa/orders/x` under `spiffe://.../ns/shop/sa/orders*`) proves no service account, and
/// names no workload.
pub fn is_namespace_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

pub fn is_service_account_name(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_namespace_name)
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.text)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// Where a certificate's SPIFFE identity stands. An X509-SVID carries exactly one URI SAN.
#[derive(Debug, PartialEq, Eq)]
pub enum CertIdentity {
    Spiffe(SpiffeId),
    None,
    Invalid(&'static str),
}

/// What is wrong with PEM text, in words: the parser's own message prints the marker it wanted as
/// a list of byte values (`[67, 69, 82, ...]`), which is what a file cut short in the middle of a
/// rotation shows an operator.
pub fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_string();
    match e {
        Error::MissingSectionEnd { end_marker } => {
            format!("bad PEM: the line \"-----END {}-----\" is missing (a file cut short?)", text(end_marker))
        }
        Error::IllegalSectionStart { line } => format!("bad PEM: the line {:?} starts no section", text(line)),
        other => format!("bad PEM: {other}"),
    }
}

/// Checks that PEM text holds only CA certificates, as trust anchors must ([`check_trust_anchor_certs`]).
pub fn check_trust_anchors(pem: &str) -> Result<(), String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let certs: Vec<CertificateDer<'_>> =
        CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().map_err(|e| pem_problem(&e))?;
    if certs.is_empty() {
        return Err("expected PEM certificates (-----BEGIN CERTIFICATE-----)".into());
    }
    check_trust_anchor_certs(&certs)
}

/// Checks that a trust bundle holds only CA certificates (SPIFFE X509-SVID §6.1). A workload's
/// own certificate given where the mesh's root belongs (`tls.crt`, or a full chain, for
/// `ca.crt`) would be taken as a root: whoever holds that workload's key could then sign any
/// identity, and every sidecar handed only it would wait for an identity it can never get.
pub fn check_trust_anchor_certs(certs: &[rustls::pki_types::CertificateDer<'_>]) -> Result<(), String> {
    for (i, der) in certs.iter().enumerate() {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return Err(format!("certificate {} does not parse", i + 1));
        };
        if !cert.basic_constraints().ok().flatten().is_some_and(|b| b.value.ca) {
            let what = match cert_identity(&cert) {
                CertIdentity::Spiffe(id) => format!("the workload certificate of {id}"),
                _ => format!("{}", cert.subject()),
            };
            return Err(format!(
                "certificate {} is not a CA certificate ({what}); give the mesh's root certificates (ca.crt)",
                i + 1
            ));
        }
    }
    Ok(())
}

/// Reads the SPIFFE ID from a DER certificate's URI SAN.
pub fn spiffe_id_from_der(der: &[u8]) -> CertIdentity {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return CertIdentity::Invalid("certificate does not parse");
    };
    cert_identity(&cert)
}

pub fn cert_identity(cert: &x509_parser::certificate::X509Certificate<'_>) -> CertIdentity {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return CertIdentity::None;
    };
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let Some(first) = uris.next() else {
        return CertIdentity::None;
    };
    if uris.next().is_some() {
        return CertIdentity::Invalid("more than one URI SAN");
    }
    match SpiffeId::parse(first) {
        Ok(id) => CertIdentity::Spiffe(id),
        Err(_) if !first.starts_with(SCHEME) => CertIdentity::None,
        Err(_) => CertIdentity::Invalid("URI SAN is not a valid SPIFFE ID"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_cut_short_says_which_line_is_missing_in_words() {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let ca = crate::identity::DevCa::generate("mesh.test").unwrap();
        let cut = &ca.cert_pem()[..ca.cert_pem().len() - 30];
        let e = CertificateDer::pem_slice_iter(cut.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap_err();
        assert_eq!(pem_problem(&e), "bad PEM: the line \"-----END CERTIFICATE-----\" is missing (a file cut short?)");
    }

    #[test]
    fn trust_anchors_must_be_ca_certificates() {
        let ca = crate::identity::DevCa::generate("mesh.test").unwrap();
        assert_eq!(check_trust_anchors(ca.cert_pem()), Ok(()));
        let (leaf, _) = ca.issue(&crate::identity::LeafSpec::workload("spiffe://mesh.test/ns/shop/sa/orders")).unwrap();
        let err = check_trust_anchors(&leaf).unwrap_err();
        assert!(err.contains("certificate 1 is not a CA certificate (the workload certificate of spiffe://mesh.test/ns/shop/sa/orders)"), "{err}");
        // A bundle is refused for any one certificate in it that is no CA.
        let err = check_trust_anchors(&format!("{}{leaf}", ca.cert_pem())).unwrap_err();
        assert!(err.starts_with("certificate 2 is not"), "{err}");
        assert!(check_trust_anchors("no certificate here").unwrap_err().contains("expected PEM certificates"));
    }

    #[test]
    fn parses_kubernetes_identities() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/orders").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), Some("shop"));
        assert_eq!(id.service_account(), Some("orders"));
        assert_eq!(id.path(), "/ns/shop/sa/orders");
    }

    #[test]
    fn non_kubernetes_paths_have_no_namespace() {
        let id = SpiffeId::parse("spiffe://example.org/payments").unwrap();
        assert_eq!(id.namespace(), None);
        let id = SpiffeId::parse("spiffe://example.org/ns/shop").unwrap();
        assert_eq!(id.namespace(), None);
        let id = SpiffeId::parse("spiffe://example.org/shop/sa/orders").unwrap();
        assert_eq!(id.namespace(), None);
        let id = SpiffeId::parse("spiffe://example.org/ns/shop/sa/orders/x").unwrap();
        assert_eq!((id.namespace(), id.service_account()), (Some("shop"), None));
        let id = SpiffeId::parse("spiffe://example.org").unwrap();
        assert_eq!(id.path(), "");
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "http://cluster.local/ns/a/sa/b",
            "spiffe://",
            "spiffe:///ns/a",
            "spiffe://Cluster.Local/ns/a",
            "spiffe://td/ns/a/",
            "spiffe://td/ns//sa/b",
            "spiffe://td/ns/../sa/b",
            "spiffe://td/ns/a b",
            "spiffe://td:8080/x",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} must be rejected");
        }
    }
}
