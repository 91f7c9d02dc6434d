//! Mutual TLS that carries one TCP connection's bytes between two sidecars (a database's
//! protocol, the app's own TLS): the mesh's answer for traffic that is not HTTP. The tunnel is
//! told apart from HTTP by its ALPN protocol, on the same inbound port and through the same
//! iptables REDIRECT, so the peer learns the port the app addressed as it does for HTTP
//! (`SO_ORIGINAL_DST`), and a workload without a sidecar fails the handshake: no plaintext
//! fallback. Linkerd tells its opaque transport apart by ALPN too (`transport.l5d.io/v1`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::connect::{connect_with, ConnectError};
use super::{TlsState, TlsStore};
use crate::identity::{spiffe_id_from_der, CertIdentity, SpiffeId};

/// The ALPN protocol of a tunnel: both sides offer only this, so a tunnel can never be taken
/// for HTTP/2 (or the other way round) by a sidecar that does not know it.
pub const TUNNEL_ALPN: &[u8] = b"tcp.palisade.dev/v1";

/// Opens a tunnel to the sidecar of the workload at `addr` (its original destination): TCP, then
/// mutual TLS offering [`TUNNEL_ALPN`], the server's SPIFFE ID checked against `expected` as for
/// HTTP. Returns the stream and the ID the peer proved.
pub async fn connect_tunnel(
    store: &TlsStore,
    addr: SocketAddr,
    expected: Option<&SpiffeId>,
    timeout: Duration,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, SpiffeId), ConnectError> {
    let config = store.current().tunnel_client_config.clone();
    let (tls, id) = connect_with(config, addr, expected, timeout).await?;
    // A server of the mesh that did not agree on the tunnel (something other than a sidecar's
    // inbound listener, with a workload certificate) must not be sent the app's bytes: its
    // policy would not have judged them.
    if tls.get_ref().1.alpn_protocol() != Some(TUNNEL_ALPN) {
        return Err(ConnectError::NoHandshake(format!(
            "{addr} ({id}) did not take the tunnel's protocol: its sidecar predates mesh TCP (upgrade it), or \
             the port is not a sidecar's inbound one (list the address in outbound.passthrough if it is outside the mesh)"
        )));
    }
    Ok((tls, id))
}

/// The server side of a tunnel on `io` (its ClientHello offered [`TUNNEL_ALPN`], see
/// [`sort_client_hello`]): the caller's certificate must chain to the trust bundle and carry a SPIFFE
/// ID of an allowed trust domain (the verifier refuses everything else inside the handshake).
/// The error is what the refusal event says.
pub async fn accept_tunnel<S>(state: &TlsState, io: S) -> Result<(tokio_rustls::server::TlsStream<S>, SpiffeId), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(state.tunnel_server_config.clone());
    let tls = acceptor
        .accept(io)
        .await
        .map_err(|e| super::refusal_reason(&e).unwrap_or_else(|| e.to_string().trim().to_string()))?;
    let (_, session) = tls.get_ref();
    // Not resumable (no tickets, no session cache): this chain was verified just now.
    match session.peer_certificates().and_then(|c| c.first()).map(|c| spiffe_id_from_der(c)) {
        Some(CertIdentity::Spiffe(id)) if session.alpn_protocol() == Some(TUNNEL_ALPN) => Ok((tls, id)),
        Some(CertIdentity::Spiffe(_)) => Err("a tunnel handshake that did not agree on its protocol".to_string()),
        _ => Err("client certificate has no SPIFFE identity".to_string()),
    }
}

/// The TLS record header: a handshake record, its version, its length.
pub const RECORD_HEADER: usize = 5;
/// The longest first record the inbound listener reads to sort a ClientHello: this sidecar's
/// are a few hundred bytes (ring has no post-quantum key share). A test holds this sidecar's own
/// to it: were it ever longer, every tunnel would be taken for HTTP and refused.
pub const TUNNEL_HELLO_MAX: usize = 2048;

/// What a connection's first TLS record asks the inbound listener for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloFor {
    /// A tunnel: it offers [`TUNNEL_ALPN`].
    Tunnel,
    /// The mesh's HTTP: it offers `h2` and names no server, as every sidecar's HTTP client does
    /// (SNI off: a sidecar is named by its SPIFFE ID).
    Http,
    /// Anything else that is a whole ClientHello: the app's own TLS from a client without a
    /// sidecar (a Redis or Kafka client's; an HTTPS or gRPC client names the host it dialled),
    /// which only a PERMISSIVE opaque port takes, as the app's bytes.
    App,
    /// Not a whole ClientHello within [`TUNNEL_HELLO_MAX`] (longer, split over records, or
    /// not one at all): never a sidecar's. A PERMISSIVE opaque port takes it as the app's;
    /// anywhere else it goes to the HTTP handshake, which offers HTTP only, so nothing misread
    /// is let in.
    Unknown,
}

/// Sorts `record` (a whole first TLS record: its header and body) by what it offers.
pub fn sort_client_hello(record: &[u8]) -> HelloFor {
    let Some(hello) = read_client_hello(record) else { return HelloFor::Unknown };
    let (mut http, mut tunnel) = (false, false);
    let mut protocols = Reader(hello.alpn.unwrap_or_default());
    // A list that does not parse to its end is read as far as it goes.
    while let Some(p) = protocols.vec8() {
        tunnel |= p == TUNNEL_ALPN;
        http |= p == b"h2";
    }
    match (tunnel, http && !hello.names_server) {
        (true, _) => HelloFor::Tunnel,
        (false, true) => HelloFor::Http,
        (false, false) => HelloFor::App,
    }
}

/// What sorting a ClientHello looks at.
struct ClientHello<'a> {
    /// The ALPN extension's protocol list (each a length byte and the name), when it has one.
    alpn: Option<&'a [u8]>,
    /// Whether it has the server name extension (SNI).
    names_server: bool,
}

/// The ClientHello in `record`, `None` when the record is not a whole one.
fn read_client_hello(record: &[u8]) -> Option<ClientHello<'_>> {
    let mut r = Reader(record);
    // A handshake record, then a ClientHello (type 1) within it.
    if r.u8()? != 0x16 {
        return None;
    }
    r.take(2)?;
    let mut body = Reader(r.vec16()?);
    if body.u8()? != 1 {
        return None;
    }
    let len = body.take(3)?;
    let len = usize::from(len[0]) << 16 | usize::from(len[1]) << 8 | usize::from(len[2]);
    // A ClientHello longer than its record continues in the next one; ALPN comes late in it, so
    // it cannot be sorted (this sidecar's own ClientHello is far shorter).
    let mut hello = Reader(body.take(len)?);
    hello.take(2 + 32)?; // legacy version, random
    hello.vec8()?; // session id
    hello.vec16()?; // cipher suites
    hello.vec8()?; // compression methods
    let mut read = ClientHello { alpn: None, names_server: false };
    if hello.0.is_empty() {
        // No extensions at all (TLS 1.2 allows it).
        return Some(read);
    }
    let mut extensions = Reader(hello.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        match kind {
            0 => read.names_server = true,
            16 => read.alpn = Some(Reader(data).vec16()?),
            _ => {}
        }
    }
    Some(read)
}

/// Reads a TLS message's fields from the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The first record a rustls client offering `alpn` sends, naming `peer.example` (SNI).
    fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
        let mut config = rustls::ClientConfig::builder_with_provider(super::super::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        first_record(Arc::new(config), "peer.example")
    }

    fn first_record(config: Arc<rustls::ClientConfig>, name: &str) -> Vec<u8> {
        let name = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut client = rustls::ClientConnection::new(config, name).unwrap();
        let mut out = Vec::new();
        client.write_tls(&mut out).unwrap();
        out
    }

    /// This sidecar's own client configurations (HTTP/2's, the tunnel's).
    fn sidecar_client_configs() -> (Arc<rustls::ClientConfig>, Arc<rustls::ClientConfig>) {
        let ca = crate::identity::DevCa::generate("cluster.local").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let leaf = crate::identity::LeafSpec::workload("spiffe://cluster.local/ns/a/sa/a");
        let files = ca.issue_to(&leaf, &dir.path().join("a")).unwrap();
        let files = crate::tls::IdentityFiles { cert: files.cert, key: files.key, trust_bundle: files.trust_bundle };
        let store = TlsStore::load(files, "cluster.local", crate::tls::TrustDomains::new(["cluster.local"])).unwrap();
        let state = store.current();
        (state.client_config.clone(), state.tunnel_client_config.clone())
    }

    #[test]
    fn this_sidecars_own_hellos_are_sorted_as_its_http_and_its_tunnel_and_fit() {
        let (http, tunnel) = sidecar_client_configs();
        // As `connect_with` connects: the peer's address as the name, which SNI never carries.
        let http = first_record(http, "10.0.0.7");
        let tunnel = first_record(tunnel, "10.0.0.7");
        assert_eq!(sort_client_hello(&http), HelloFor::Http);
        assert_eq!(sort_client_hello(&tunnel), HelloFor::Tunnel);
        for hello in [http, tunnel] {
            assert!(hello.len() <= RECORD_HEADER + TUNNEL_HELLO_MAX, "{} bytes", hello.len());
            let length = usize::from(u16::from_be_bytes([hello[3], hello[4]]));
            assert_eq!(hello.len(), RECORD_HEADER + length, "one record");
        }
    }

    #[test]
    fn cut_or_foreign_records_are_unknown() {
        let hello = client_hello(&[TUNNEL_ALPN]);
        for cut in [0, 1, RECORD_HEADER, RECORD_HEADER + 4, 60, hello.len() - 1] {
            assert_eq!(sort_client_hello(&hello[..cut]), HelloFor::Unknown, "cut at {cut}");
        }
        let mut not_handshake = hello.clone();
        not_handshake[0] = 0x17;
        assert_eq!(sort_client_hello(&not_handshake), HelloFor::Unknown);
        let mut not_hello = hello.clone();
        not_hello[RECORD_HEADER] = 2;
        assert_eq!(sort_client_hello(&not_hello), HelloFor::Unknown);
        assert_eq!(sort_client_hello(b"GET / HTTP/1.1\r\n\r\n"), HelloFor::Unknown);
    }

    #[test]
    fn a_hello_that_names_its_server_or_offers_no_h2_is_the_apps_own_tls() {
        // What HTTPS and gRPC clients send: h2, and the host they dialled.
        assert_eq!(sort_client_hello(&client_hello(&[b"h2", b"http/1.1"])), HelloFor::App);
        assert_eq!(sort_client_hello(&client_hello(&[b"h2"])), HelloFor::App);
        assert_eq!(sort_client_hello(&client_hello(&[])), HelloFor::App);
        assert_eq!(sort_client_hello(&client_hello(&[b"http/1.1"])), HelloFor::App);
        assert_eq!(sort_client_hello(&client_hello(&[b"postgresql"])), HelloFor::App);
        // A protocol that only starts like the tunnel's.
        assert_eq!(sort_client_hello(&client_hello(&[b"tcp.palisade.dev/v"])), HelloFor::App);
        assert_eq!(sort_client_hello(&client_hello(&[b"h2c", b"h"])), HelloFor::App);
    }

    #[test]
    fn a_tunnel_offer_is_found_alone_or_among_others() {
        assert_eq!(sort_client_hello(&client_hello(&[TUNNEL_ALPN])), HelloFor::Tunnel);
        assert_eq!(sort_client_hello(&client_hello(&[b"h2", TUNNEL_ALPN])), HelloFor::Tunnel);
    }
}
