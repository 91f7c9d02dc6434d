//! Originating mutual TLS to a mesh peer: TCP, the handshake with the workload certificate, and
//! the server's SPIFFE ID checked against the one expected, before a byte of data is sent. The
//! outbound data path and the control channel both connect this way.

use std::net::SocketAddr;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::TlsStore;
use crate::identity::{spiffe_id_from_der, CertIdentity, SpiffeId};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {0}: connection refused")]
    Refused(SocketAddr),
    #[error("connecting to {0}: {1}")]
    Unreachable(SocketAddr, std::io::Error),
    #[error("connecting to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    #[error("TLS with {0}: timed out")]
    HandshakeTimeout(SocketAddr),
    /// The peer's certificate was refused, or it presented an identity other than the one
    /// expected: a security event, not just an outage. After a completed handshake (the identity
    /// compared), what it negotiated; a handshake refused midway tells nothing (tokio-rustls drops
    /// rustls's connection with the error).
    #[error("{0}")]
    Refusal(String, Option<Negotiated>),
    /// The handshake failed short of a certificate: the peer answered with something that is
    /// not TLS, with an alert, or closed. A server without a sidecar, most often.
    #[error("{0}")]
    NoHandshake(String),
}

/// What a completed handshake negotiated, for the event of a refusal that came after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Negotiated {
    /// `1.2` or `1.3`.
    pub version: &'static str,
    /// The cipher suite, as rustls names it (`TLS13_AES_128_GCM_SHA256`).
    pub cipher: Option<&'static str>,
    /// The SPIFFE ID the peer's certificate presented, if any.
    pub presented: Option<String>,
}

impl Negotiated {
    fn of(session: &rustls::ClientConnection, presented: Option<String>) -> Option<Negotiated> {
        let version = match session.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => "1.3",
            rustls::ProtocolVersion::TLSv1_2 => "1.2",
            _ => return None,
        };
        let cipher = session.negotiated_cipher_suite().and_then(|s| s.suite().as_str());
        Some(Negotiated { version, cipher, presented })
    }
}

/// TCP to `addr` within `timeout`, Nagle off: the first step of every connection a sidecar
/// makes, to a peer (then TLS, see [`connect`]) or to its own app.
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Err(ConnectError::Refused(addr)),
        Ok(Err(e)) => return Err(ConnectError::Unreachable(addr, e)),
        Err(_) => return Err(ConnectError::ConnectTimeout(addr)),
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Connects to `addr` and proves both identities; `expected: None` accepts any SPIFFE ID of the
/// trust domain (the verifier checks that much during the handshake). Returns the stream and
/// the SPIFFE ID the server proved.
pub async fn connect(
    store: &TlsStore,
    addr: SocketAddr,
    expected: Option<&SpiffeId>,
    timeout: Duration,
) -> Result<(TlsStream<TcpStream>, SpiffeId), ConnectError> {
    let config = store.current().client_config.clone();
    connect_with(config, addr, expected, timeout).await
}

/// [`connect`], offering HTTP/1.1 instead of HTTP/2, for a request that upgrades its connection;
/// a server that does not agree is refused (it would read the bytes as HTTP/2's preface).
pub async fn connect_http1(
    store: &TlsStore,
    addr: SocketAddr,
    expected: Option<&SpiffeId>,
    timeout: Duration,
) -> Result<(TlsStream<TcpStream>, SpiffeId), ConnectError> {
    let config = store.current().http1_client_config.clone();
    let (tls, id) = connect_with(config, addr, expected, timeout).await?;
    match tls.get_ref().1.alpn_protocol() {
        Some(b"http/1.1") => Ok((tls, id)),
        _ => Err(ConnectError::NoHandshake(format!("{addr} ({id}) did not take HTTP/1.1, which an upgrade needs"))),
    }
}

/// [`connect`] with the client configuration given (HTTP/2's, or a tunnel's).
pub(super) async fn connect_with(
    config: std::sync::Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    expected: Option<&SpiffeId>,
    timeout: Duration,
) -> Result<(TlsStream<TcpStream>, SpiffeId), ConnectError> {
    let tcp = connect_tcp(addr, timeout).await?;
    // SNI is off; the name only satisfies the API, the identity is checked below.
    let handshake = tokio_rustls::TlsConnector::from(config).connect(ServerName::IpAddress(addr.ip().into()), tcp);
    let tls = match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let why = match super::is_plaintext(&e) {
                // The wording for a caller in plaintext (is it outside the mesh?) points the wrong
                // way here: this side is in the mesh, the destination is not.
                true => format!(
                    "not TLS: {addr} answered in plaintext, so it is not in the mesh; to reach it without mutual TLS list \
                     it in outbound.passthrough (in a pod: the palisade.dev/outbound-passthrough annotation) or exclude \
                     its port (palisade.dev/exclude-outbound-ports)"
                ),
                false => super::refusal_reason(&e).unwrap_or_else(|| e.to_string()),
            };
            let reason = format!("handshake with {addr} failed: {why}");
            return Err(match super::is_certificate_refusal(&e) {
                true => ConnectError::Refusal(reason, None),
                false => ConnectError::NoHandshake(reason),
            });
        }
        Err(_) => return Err(ConnectError::HandshakeTimeout(addr)),
    };
    let presented = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| spiffe_id_from_der(c));
    match (expected, presented) {
        (Some(expected), Some(CertIdentity::Spiffe(id))) if id == *expected => Ok((tls, id)),
        (None, Some(CertIdentity::Spiffe(id))) => Ok((tls, id)),
        (Some(expected), Some(CertIdentity::Spiffe(id))) => Err(ConnectError::Refusal(
            format!("{addr} presented {id}, expected {expected}"),
            Negotiated::of(tls.get_ref().1, Some(id.to_string())),
        )),
        _ => Err(ConnectError::Refusal(
            format!("{addr} presented no SPIFFE identity"),
            Negotiated::of(tls.get_ref().1, None),
        )),
    }
}
